#!/usr/bin/env bash
# Problem 1 grading entry: bash hw1_1.sh <test csv> <image folder> <output csv> (setting C)
set -euo pipefail
python3 "$(dirname "$0")/p1_inference.py" --csv "${1:?usage: bash hw1_1.sh TEST_CSV IMAGE_DIR OUTPUT_CSV}" --image-dir "${2:?usage: bash hw1_1.sh TEST_CSV IMAGE_DIR OUTPUT_CSV}" --output "${3:?usage: bash hw1_1.sh TEST_CSV IMAGE_DIR OUTPUT_CSV}"
