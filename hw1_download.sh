#!/usr/bin/env bash
# Fetch the data, the SAM checkpoint, initialisation weights and our trained checkpoints.
# Usage: bash hw1_download.sh [data] [sam] [torchvision] [p1] [p2]   (default: all)
set -euo pipefail
python3 hw1_download.py "$@"
