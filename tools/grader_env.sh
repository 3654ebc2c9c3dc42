#!/usr/bin/env bash
# Build (once) the grading machine's environment: Python 3.8 + the course's package list, and
# print its python's path on the last line of stdout. The environment is cached outside the
# repository, keyed on the requirement file's hash, so a second call returns at once.
#
#   bash tools/grader_env.sh [--edition 2024|2025]   (default: $HW1_GRADER_EDITION, else 2025)
#     2024: requirements-grader.txt (the 2024 slides); 2025: requirements-grader-2025.txt
#   HW1_PYTHON38   a Python 3.8 interpreter (default: python3.8 on PATH, then pyenv's 3.8.x)
#   HW1_GRADER_CACHE  where environments are kept (default: ~/.cache/hw1-grader)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
edition=${HW1_GRADER_EDITION:-2025}
if [ "${1:-}" = "--edition" ]; then edition=${2:?--edition needs 2024 or 2025}; fi
case "$edition" in
  2024) req="$root/requirements-grader.txt" ;;
  2025) req="$root/requirements-grader-2025.txt" ;;
  *) echo "grader_env: --edition must be 2024 or 2025, not $edition" >&2; exit 2 ;;
esac

find_py38() {
  local c
  for c in "${HW1_PYTHON38:-}" "$(command -v python3.8 || true)" \
           "$(pyenv prefix 3.8 2>/dev/null || true)/bin/python3.8" \
           "$HOME"/.pyenv/versions/3.8*/bin/python3.8; do
    if [ -n "$c" ] && [ -x "$c" ] && "$c" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 8))' 2>/dev/null; then
      echo "$c"; return 0
    fi
  done
  return 1
}

py38=$(find_py38) || {
  echo "grader_env: no Python 3.8 found; install one (pyenv install 3.8.18) or set HW1_PYTHON38=/path/to/python3.8" >&2
  exit 3
}
key=$( (cat "$req"; "$py38" -V) | sha256sum | cut -c1-16)
cache=${HW1_GRADER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/hw1-grader}
env="$cache/env-$key"
if [ -f "$env/.complete" ]; then echo "$env/bin/python"; exit 0; fi

mkdir -p "$cache"
tmp=$(mktemp -d "$cache/building-XXXXXX")
trap 'rm -rf "$tmp"' EXIT
echo "grader_env: building $env with $py38 (torch 2.4.0 with its CUDA wheels: about 5 GB, 3-10 minutes)" >&2
"$py38" -m venv "$tmp"
log="$tmp/pip.log"
pins=$(grep -E '^(torch|torchvision)==' "$req")
# torch first, then the rest: one combined install sends pip backtracking through urllib3.
# shellcheck disable=SC2086
if ! { "$tmp/bin/python" -m pip install -q --upgrade pip &&
       "$tmp/bin/python" -m pip install -q $pins &&
       "$tmp/bin/python" -m pip install -q -r "$req"; } >"$log" 2>&1; then
  grep -v "^WARNING: Location" "$log" | tail -30 >&2
  echo "grader_env: pip install failed (log above)" >&2
  exit 1
fi
# We only ever run "$env/bin/python -m ...", which works from the moved folder.
touch "$tmp/.complete"
rm -rf "$env"
mv "$tmp" "$env"
trap - EXIT
echo "grader_env: ready" >&2
echo "$env/bin/python"
