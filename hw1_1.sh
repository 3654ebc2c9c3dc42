#!/usr/bin/env bash
# Problem 1 grading entry: bash hw1_1.sh <test csv> <image folder> <output csv> (setting C)
set -euo pipefail
python3 p1_inference.py --csv "$1" --image-dir "$2" --output "$3"
