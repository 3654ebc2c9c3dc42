#!/usr/bin/env bash
# Prepares .gpu/, the folder that travels with the repository to a lent GPU machine (named in
# the device tool's `carry`): wheels of the packages that machine lacks (it has torch 2.11,
# torchvision 0.26, opencv, scikit-learn, matplotlib, tqdm, accelerate and einops, but not
# byol-pytorch, segment-anything or beartype); the tests' real samples travel in tests/data/.
# Run here, with network access to PyPI; then on the GPU machine: bash tools/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
[[ -d .gpu ]] && chmod -R u+w .gpu
rm -rf .gpu
mkdir -p .gpu/whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .gpu/whl \
    byol-pytorch==0.9.1 segment-anything==1.0 beartype
du -sh .gpu
ls .gpu/whl
