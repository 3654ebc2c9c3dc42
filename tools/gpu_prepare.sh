#!/usr/bin/env bash
# Prepares .gpu/, the folder that travels with the repository to a lent GPU machine (named in
# the device tool's `carry`): wheels of the packages that machine lacks (it has torch 2.11,
# torchvision 0.26, opencv, scikit-learn, matplotlib, tqdm, accelerate and einops, but not
# byol-pytorch, segment-anything or beartype) and the four real satellite samples the tests
# read. Run here, with network access to PyPI; then on the GPU machine: bash tools/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
samples=${HW1_SAMPLES_DIR:-../shared/data/p2_samples}
[[ -d $samples ]] || { echo "gpu_prepare: no samples at $samples (set HW1_SAMPLES_DIR)" >&2; exit 1; }
[[ -d .gpu ]] && chmod -R u+w .gpu
rm -rf .gpu
mkdir -p .gpu/whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .gpu/whl \
    byol-pytorch==0.9.1 segment-anything==1.0 beartype
cp -r --no-preserve=mode "$samples" .gpu/p2_samples
du -sh .gpu
ls .gpu/whl .gpu/p2_samples
