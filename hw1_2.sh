#!/usr/bin/env bash
# Problem 2 grading entry: bash hw1_2.sh <folder of xxxx_sat.jpg> <output folder of xxxx_mask.png>
set -euo pipefail
python3 "$(dirname "$0")/p2_inference.py" --input-dir "${1:?usage: bash hw1_2.sh INPUT_DIR OUTPUT_DIR}" --output-dir "${2:?usage: bash hw1_2.sh INPUT_DIR OUTPUT_DIR}"
