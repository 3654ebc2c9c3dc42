"""Shared test fixtures: where the repository and the real satellite samples are.

The scripts live at the repository root, so the root goes on sys.path (plain `pytest` does not
put it there). The samples sit in the `shared` folder beside the repository root, wherever the
repository is cloned (CI clones it elsewhere with shared/ beside it), or where HW1_SAMPLES_DIR
says (tools/gpu_check.sh, on a machine without shared/).
"""

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@pytest.fixture(scope="session")
def repo_root():
    return ROOT


@pytest.fixture(scope="session")
def samples_dir():
    path = Path(os.environ.get("HW1_SAMPLES_DIR") or ROOT.parent / "shared" / "data" / "p2_samples")
    if not path.is_dir():
        pytest.fail(f"real satellite samples not found at {path}; the tests expect the "
                    "shared/ folder beside the repository root, or HW1_SAMPLES_DIR")
    return path
