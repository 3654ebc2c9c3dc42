"""One name per concept on every command line: each entry point's parser (every script and
tool with get_args_parser()), `bash reproduce.sh --help`, `bash tools/gpu_check.sh --help` and
`python3 recipes.py --help` show the same flag for the same thing, and the old names are
accepted for one release but documented nowhere."""

import argparse
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

import data

REPO = Path(__file__).resolve().parents[1]

# the name of each concept, and the other names it must not be shown under (old names, and the
# usual spellings of other projects)
CONCEPTS = {
    "--data-dir": ("--data", "--data-root", "--data-path", "--dataset", "--dataset-dir",
                   "--data-folder", "--root"),
    "--output-dir": ("--out", "--out-dir", "--outdir", "--output-folder", "--save-dir",
                     "--save-path", "--work-dir"),
    "--overwrite": ("--force", "--force-run", "--clobber", "--fresh", "--restart"),
    "--resume": ("--continue", "--resume-from", "--auto-resume"),
    "--device": ("--gpu", "--gpus", "--cuda", "--device-id"),
    "--batch-size": ("--bs", "--batch", "--train-batch-size"),
    "--eval-batch-size": ("--val-batch-size", "--test-batch-size", "--valid-batch-size",
                          "--eval-bs"),
    "--max-images": ("--max-samples", "--num-images", "--n-images", "--limit", "--subset"),
    "--checkpoint": ("--ckpt", "--ckpt-path", "--checkpoint-path", "--weights", "--model-path"),
    # what the scorers compare (the course scorer's names)
    "--labels": ("--gt-dir", "--gt", "--ground-truth", "--truth"),
    "--pred": ("--pred-dir", "--preds", "--predictions", "--prediction-dir"),
}
OTHER_NAMES = {other: name for name, others in CONCEPTS.items() for other in others}
# what each concept's flag stores (argparse's dest): another flag storing there is a second name
DESTS = {name[2:].replace("-", "_"): name for name in CONCEPTS}
# old names that still parse (hidden), per entry point: (argv, dest, value they give)
OLD_NAMES = {
    "make_demo_data": [(["--out", "x"], "output_dir", Path("x"))],
    "results_report": [(["--out", "x"], "output_dir", Path("x")),
                       (["--data-root", "d"], "data_dir", "d"),
                       (["--force-run", "1"], "overwrite", 1)],
    "p2_train_deeplabv3": [(["--val-batch-size", "3"], "eval_batch_size", 3)],
    "p2_train_fcn32s": [(["--val-batch-size", "3"], "eval_batch_size", 3)],
    "p2_evaluate": [(["--gt-dir", "g"], "labels", Path("g")),
                    (["--pred-dir", "p"], "pred", Path("p"))],
    "memory_plan": [(["--scale", "2"], "downscale", 2)],
    "p1_pretrain_byol": [(["--knn-data", "o"], "knn_data", Path("o"))],
}
REQUIRED = {"p1_pretrain_byol": ["--data-dir", "m"]}  # what those parsers need besides


def normalised(name):
    return name.lstrip("-").replace("-", "").replace("_", "").lower()


def entry_points():
    """{name: path} of every script and tool that has get_args_parser()."""
    paths = sorted(REPO.glob("*.py")) + sorted((REPO / "tools").glob("*.py"))
    return {p.stem: p for p in paths if "def get_args_parser(" in p.read_text()}


def load(name, path):
    if path.parent == REPO:
        return importlib.import_module(name)
    spec = importlib.util.spec_from_file_location(f"tools_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def parsers():
    return {name: load(name, path).get_args_parser() for name, path in entry_points().items()}


def visible(parser):
    """[(long option names shown in --help, dest)] of every action that --help shows."""
    return [([s for s in a.option_strings if s.startswith("--")], a.dest)
            for a in parser._actions if a.help != argparse.SUPPRESS and a.option_strings]


def shell_help(*argv):
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def names_in(text):
    return set(re.findall(r"(?<![\w-])--[A-Za-z][\w-]*", text))


def name_problems(where, names):
    """The names of one command line that break the rule, as readable lines."""
    problems = []
    for name in sorted(names):
        if name in OTHER_NAMES:
            problems.append(f"{where}: {name} is shown; the name is {OTHER_NAMES[name]}")
        for canonical in CONCEPTS:
            if name != canonical and normalised(name) == normalised(canonical):
                problems.append(f"{where}: {name} is {canonical} spelled differently")
    return problems


def test_every_entry_point_is_read(parsers):
    """The discovery finds the scripts and tools, not an empty list that passes."""
    assert {"make_demo_data", "results_report", "bench", "hw1_download", "p1_pretrain_byol",
            "p1_finetune", "p1_tsne", "p1_inference", "p1_evaluate", "p2_train_fcn32s",
            "p2_train_deeplabv3", "p2_inference", "p2_evaluate", "p2_sam", "export_checkpoint",
            "handin_check", "memory_plan"} <= set(parsers)


def test_one_visible_name_per_concept_in_every_parser(parsers):
    problems = []
    for script, parser in parsers.items():
        shown = visible(parser)
        problems += name_problems(script, {n for names, _ in shown for n in names})
        for names, dest in shown:
            pair = len(names) == 2 and names[1] == "--no-" + names[0][2:]  # --x/--no-x
            if len(names) > 1 and not pair:
                problems.append(f"{script}: one option shown under {len(names)} names {names}")
            if dest in DESTS and DESTS[dest] not in names:
                problems.append(f"{script}: {names} stores {dest}; its name is {DESTS[dest]}")
    assert problems == []


def test_one_name_per_concept_in_the_shell_entry_points():
    reproduce = names_in(shell_help("bash", "reproduce.sh", "--help"))
    assert {"--data-dir", "--output-dir", "--runs-dir", "--overwrite", "--demo",
            "--sam-checkpoint"} <= reproduce  # the parsing below reads the real options
    gpu_check = names_in(shell_help("bash", "tools/gpu_check.sh", "--help"))
    assert "--output-dir" in gpu_check
    recipes = names_in(shell_help(sys.executable, "recipes.py", "--help"))
    problems = (name_problems("reproduce.sh", reproduce)
                + name_problems("tools/gpu_check.sh", gpu_check)
                + name_problems("recipes.py", recipes))
    assert problems == []


@pytest.mark.parametrize("script", sorted(OLD_NAMES))
def test_old_names_still_parse_and_stay_hidden(parsers, script):
    parser = parsers[script]
    text = parser.format_help() + parser.format_usage()
    for argv, dest, value in OLD_NAMES[script]:
        assert getattr(parser.parse_args(argv + REQUIRED.get(script, [])), dest) == value
        assert argv[0] not in names_in(text), argv[0]


def test_a_flag_with_an_old_name_is_still_required(parsers):
    """p2_evaluate.py's -g and -p cannot be argparse-required (the old names could not stand in
    for them): main asks for both, in one line."""
    import p2_evaluate
    from errors import UserError

    for argv in (["-p", "x"], ["-g", "x"], ["--gt-dir", "x"]):
        with pytest.raises(UserError) as e:
            p2_evaluate.main(parsers["p2_evaluate"].parse_args(argv))
        assert e.value.message == "give both folders: python3 p2_evaluate.py -g GT_DIR -p PRED_DIR"


def test_reproduce_accepts_its_old_names_silently(tmp_path):
    """--out, --runs and --force: what --output-dir, --runs-dir and --overwrite do."""
    proc = subprocess.run(["bash", "reproduce.sh", "--dry-run", "--scale", "smoke", "--out",
                           str(tmp_path / "o"), "--runs", str(tmp_path / "r"), "--force"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    commands = [ln for ln in proc.stdout.splitlines() if ln.startswith("+ ")]
    assert f"make_demo_data.py --output-dir {tmp_path / 'o' / 'demo_data'} --overwrite" in \
        commands[0]
    byol = next(c for c in commands if "p1_pretrain_byol.py" in c)
    assert f"--output-dir {tmp_path / 'r' / 'byol'} --overwrite" in byol


def documented_old_names(path):
    """Lines of `path` that show an old name, except where the name is declared as old."""
    old = sorted(set(OTHER_NAMES) | {"--runs", "--knn-data"}, key=len, reverse=True)
    pattern = re.compile(r"(?<![\w-])(" + "|".join(map(re.escape, old)) + r")(?![\w-])")
    declared = re.compile(r"old_name\(|argparse\.SUPPRESS|^\s*--[\w-]+\|--[\w-]+\)")
    return [f"{path.relative_to(REPO)}:{i}: {line.strip()}"
            for i, line in enumerate(path.read_text().splitlines(), 1)
            if pattern.search(line) and not declared.search(line)]


def test_old_names_are_documented_nowhere():
    files = [p for pattern in ("*.py", "*.sh", "*.md", "tools/*", "docs/*.md")
             for p in sorted(REPO.glob(pattern)) if p.is_file()]
    assert len(files) > 30
    assert [line for p in files for line in documented_old_names(p)] == []


def test_max_images_means_one_thing_everywhere(parsers, tmp_path, monkeypatch):
    """--max-images: a random subset of N drawn with --seed, in both problems, and each --help
    says so."""
    import p1_pretrain_byol
    import p2_engine

    helps = {script: next(a.help for a in parser._actions if "--max-images" in a.option_strings)
             for script, parser in parsers.items()
             if any("--max-images" in a.option_strings for a in parser._actions)}
    assert {"p1_pretrain_byol", "p1_finetune", "p1_tsne", "p2_train_fcn32s",
            "p2_train_deeplabv3"} <= set(helps)
    for script, text in helps.items():
        assert "random subset" in text and "--seed" in text, (script, text)

    items = [f"{i:04d}" for i in range(40)]
    picked = data.subset(items, 7, seed=3)
    assert picked == sorted(picked) and len(set(picked)) == 7
    assert picked != items[:7] and picked == data.subset(items, 7, seed=3)
    assert picked != data.subset(items, 7, seed=4)
    assert data.subset(items, None) == items == data.subset(items, 40)

    # Problem 1 (the mini folder) and Problem 2 (sat/mask pairs) pick those very items
    mini, pairs = tmp_path / "mini", tmp_path / "pairs"
    mini.mkdir()
    pairs.mkdir()
    for i in items:
        (mini / f"{i}.jpg").write_bytes(b"")
        (pairs / f"{i}_sat.jpg").write_bytes(b"")
        (pairs / f"{i}_mask.png").write_bytes(b"")
    args = argparse.Namespace(data_dir=mini, max_images=7, seed=3)
    assert [p.stem for p in p1_pretrain_byol.mini_paths(args)] == picked

    class Chosen(Exception):
        pass

    def bank(paths, **_):  # stops load_split at the files it would decode
        raise Chosen([Path(p).name[:4] for p in paths])

    monkeypatch.setattr(p2_engine.ImageBank, "from_paths", bank)
    with pytest.raises(Chosen) as chosen:
        p2_engine.load_split(pairs, 7, seed=3)
    assert chosen.value.args[0] == picked
