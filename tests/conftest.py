"""Shared test fixtures: where the repository and the real satellite samples are.

The scripts live at the repository root, so the root goes on sys.path (plain `pytest` does not
put it there). The four real samples live in tests/data/ (sources and
licences in tests/data/SOURCES.md); HW1_SAMPLES_DIR points the tests at another copy.
"""

import gc
import os
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@pytest.fixture(scope="session")
def repo_root():
    return ROOT


@pytest.fixture(autouse=True, scope="module")
def _free_module_temp(request, tmp_path_factory):
    """Deletes the folders a test file's module fixtures made, once the file has passed.

    The suite writes ResNet50/DeepLabV3 checkpoints of 100-600 MB; kept to the end, they add up
    to about 10 GB, more than a CI machine's free disk beside its 6 GB virtual environment.
    Each test's own tmp_path goes when it passes (pytest.ini: tmp_path_retention_policy);
    this does the same for tmp_path_factory folders, file by file (files are not shared
    between workers: --dist loadfile). A file with a failure keeps its folders."""
    base = tmp_path_factory.getbasetemp()
    before, failed = set(base.iterdir()), request.session.testsfailed
    yield
    if request.session.testsfailed == failed:
        for path in set(base.iterdir()) - before:
            shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def samples_dir():
    path = Path(os.environ.get("HW1_SAMPLES_DIR") or ROOT / "tests" / "data")
    if not path.is_dir():
        pytest.fail(f"real satellite samples not found at {path}; they ship in "
                    "tests/data/ (or set HW1_SAMPLES_DIR)")
    return path


# ------------------------------------------------------------------- parallel runs (xdist)
# The README's command is `python -m pytest -q -n auto`: one worker per CPU core (at most 4:
# each holds models of up to ~3 GB), test files dealt out whole (pytest.ini: --dist loadfile,
# so a module's shared fixtures run once) and longest first (SLOW_FIRST), so that the last file
# to start is a short one.
SLOW_FIRST = ("test_reproduce.py", "test_bench.py", "test_grader.py", "test_interrupt.py",
              "test_ddp.py", "test_p1.py", "test_reliability.py", "test_p2.py",
              "test_recipe_effects.py")


def pytest_xdist_auto_num_workers(config):
    return min(4, os.cpu_count() or 1)


def pytest_configure(config):
    """Under N workers, each worker and what it starts gets cores/N torch threads: with
    torch's default of one thread per core the workers' threads fight over the cores (the
    suite took 7m44s that way on 2 cores, 7m05s with one thread per worker; 2026-11-30). Each
    worker then freezes what its imports built, as cli.run does in the scripts."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        threads = max(1, (os.cpu_count() or 1) // workers)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        import torch
        import torchvision  # noqa: F401  (imported here once, so that the freeze covers it)
        torch.set_num_threads(threads)
        gc.freeze()  # as cli.run does for the scripts: full collections skip torch's objects


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: order kept within
