#!/usr/bin/env bash
set -euo pipefail
python3 p2_inference.py --input-dir "$1" --output-dir "$2"
