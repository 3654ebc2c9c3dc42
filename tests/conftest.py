"""Shared test fixtures: where the repository and the real satellite samples are.

The scripts live at the repository root, so the root goes on sys.path (plain `pytest` does not
put it there). The four real samples live in tests/data/ (sources and
licences in tests/data/SOURCES.md); HW1_SAMPLES_DIR points the tests at another copy.
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
    path = Path(os.environ.get("HW1_SAMPLES_DIR") or ROOT / "tests" / "data")
    if not path.is_dir():
        pytest.fail(f"real satellite samples not found at {path}; they ship in "
                    "tests/data/ (or set HW1_SAMPLES_DIR)")
    return path
