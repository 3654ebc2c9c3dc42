"""The README and docs/ as a newcomer reads them: short, in the present tense, and naming only
what a clone has.

- README.md is at most 15,000 bytes, and docs/ holds at most three files;
- no line names a commit id, "stale" rows or a session (git log holds the history);
- no .py/.md/.sh file outside tests/data points into a `shared/` folder beside the repository;
- every link to another file of the repository leads to a file that exists.
"""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
COMMIT_ID = re.compile(r"\b(?=[0-9a-f]*[a-f])(?=[0-9a-f]*[0-9])[0-9a-f]{7,40}\b")


def test_readme_is_short_and_docs_has_at_most_three_files():
    assert (ROOT / "README.md").stat().st_size <= 15_000
    assert len(list((ROOT / "docs").iterdir())) <= 3


def test_no_commit_ids_stale_rows_or_sessions():
    for path in DOCS:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            where = f"{path.name}:{number}: {line}"
            assert not COMMIT_ID.search(line), where
            assert not re.search(r"\bstale\b|\bsession", line, re.IGNORECASE), where


def test_no_file_names_a_shared_folder_beside_the_repository():
    tracked = [p for ext in ("*.py", "*.md", "*.sh") for p in ROOT.rglob(ext)
               if not any(part.startswith(".") for part in p.relative_to(ROOT).parts)
               and p.relative_to(ROOT).parts[:2] != ("tests", "data")
               and p.name != "test_docs.py"]
    assert len(tracked) > 30
    for path in tracked:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            assert "shared/" not in line, f"{path.relative_to(ROOT)}:{number}: {line}"


def test_relative_links_lead_to_files_that_exist():
    for path in DOCS:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text()):
            if "://" not in target:
                assert (path.parent / target).exists(), f"{path.name}: {target}"
