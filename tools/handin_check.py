"""Check the hand-in the way the course's grader runs it, on what the grader gets.

    python3 tools/handin_check.py --data-dir hw1_data --student-id r12345678
    python3 tools/handin_check.py --data-dir hw1_data --student-id r12345678 --edition 2024
    python3 tools/handin_check.py --student-id r12345678 --no-run   # the rules alone, quick

What the grader gets is the committed main branch, cloned: this takes the repository's HEAD
into a temporary folder, never the work tree. There, with the grading machine's Python 3.8 and
package list (tools/grader_env.sh --edition), it runs the grader's steps in its order: `bash
hw1_download_ckpt.sh` (a real download from the published URLs, hashes verified), then
`hw1_1.sh` on the validation csv and images and `hw1_2.sh` on the validation images, each with
absolute paths and timed. It scores both (p1_evaluate.py, p2_evaluate.py) against the course's
baselines, scales hw1_2.sh's time to the 313 test images, and checks every rule of the
slides. Each rule prints one line, PASS or FAIL with the fix; a score below a baseline is a
WARN. The exit status is 0 only when every rule passes. Without a GPU the times are the CPU's
(the grader's RTX A4500 is far faster); HW1_P1_URL/HW1_P1_SHA256 (and P2) in the environment
publish a checkpoint for a try, with a warning that the grader will not have them.
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import cli  # noqa: E402

GRADING_SCRIPTS = ("hw1_1.sh", "hw1_2.sh", "hw1_download_ckpt.sh")
FORBIDDEN = ("rm", "cp", "mv", "mkdir", "cd", "pip", "pip3", "sudo", "CUDA_VISIBLE_DEVICES")
LIMIT_S = 600  # each grading script, on the grader's machine
TEST_IMAGES = 313  # Problem 2's private test set
MAX_BYTES = 50 * 1024 ** 2  # larger files only through hw1_download_ckpt.sh
BASELINES = {"p1": (0.36, 0.40), "p2": (0.69, 0.73)}  # simple / strong
OVERRIDES = ("HW1_P1_URL", "HW1_P1_SHA256", "HW1_P2_URL", "HW1_P2_SHA256")


def get_args_parser():
    parser = argparse.ArgumentParser(
        "handin_check", formatter_class=cli.HelpFormatter,
        description="The grader's steps on a clone of HEAD, in the grader's Python 3.8: every "
        "rule of the slides as PASS/FAIL, the scores against the baselines, the times.")
    parser.add_argument("--student-id", required=True, help="the id in hw1_<id>.pdf")
    parser.add_argument("--data-dir", type=Path, default=Path("hw1_data"),
                        help="hw1_data (p1_data/office/val.csv + val/, p2_data/validation/)")
    parser.add_argument("--edition", choices=["2024", "2025"], default="2025",
                        help="the grading machine's package list (tools/grader_env.sh)")
    parser.add_argument("--repo", type=Path, default=ROOT, help="the repository to check")
    parser.add_argument("--output-dir", type=Path, default=None,
                        help="keep the clone's outputs (pred.csv, masks/) here (default: "
                        "a temporary folder, removed)")
    parser.add_argument("--no-run", action="store_true",
                        help="the rules on the committed files only: no download, no scripts")
    return parser


class Report:
    def __init__(self):
        self.failed = 0

    def rule(self, ok, what, fix=""):
        print(f"PASS {what}" if ok else f"FAIL {what}" + (f"; fix: {fix}" if fix else ""),
              flush=True)
        self.failed += not ok
        return ok

    def warn(self, text):
        print(f"WARN {text}", flush=True)


def git(repo, *args):
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                          check=True).stdout


def committed_files(repo):
    """{path: size in bytes} of the files in HEAD."""
    files = {}
    for line in git(repo, "ls-tree", "-r", "-l", "HEAD").splitlines():
        meta, path = line.split("\t", 1)
        size = meta.split()[3]
        files[path] = int(size) if size.isdigit() else 0
    return files


def check_rules(repo, student_id, report):
    """The slides' rules on HEAD and on what is left uncommitted."""
    files = committed_files(repo)
    status = git(repo, "status", "--porcelain").splitlines()
    dirty = [ln[3:] for ln in status if not ln.startswith("??")]
    stray = [ln[3:] for ln in status
             if ln.startswith("??") and ln.endswith((".py", ".sh", ".pdf"))]
    report.rule(not dirty, "every change is committed (the grader clones main)" if not dirty
                else f"{len(dirty)} uncommitted change(s), e.g. {dirty[0]}",
                "commit them (git add, git commit) and push")
    report.rule(not stray, "no script or report left untracked" if not stray else
                f"{len(stray)} untracked file(s) the grader will not get, e.g. {stray[0]}",
                "git add and commit them, or delete them")
    for name in (*GRADING_SCRIPTS, f"hw1_{student_id}.pdf"):
        report.rule(name in files, f"{name} is committed" if name in files else
                    f"{name} is not in HEAD", f"add {name} at the repository root and commit")
    data = [p for p in files if re.search(r"(^|/)(hw1_data|p1_data|p2_data)/", p)]
    report.rule(not data, "no dataset in the repository" if not data else
                f"the dataset is committed ({len(data)} file(s), e.g. {data[0]})",
                "git rm -r --cached it and add it to .gitignore")
    big = sorted((size, path) for path, size in files.items() if size > MAX_BYTES)
    report.rule(not big, "no committed file over 50 MB" if not big else
                f"{big[-1][1]} is {big[-1][0] / 1024 ** 2:.0f} MB, over 50 MB",
                "remove it from git and let hw1_download_ckpt.sh fetch it")
    for name in GRADING_SCRIPTS:
        if name not in files:
            continue
        text = git(repo, "show", f"HEAD:{name}")
        lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
        words = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", " ".join(lines)))
        bad = sorted(words & set(FORBIDDEN))
        paths = re.findall(r"(?<![\w.$])/(?:home|work|Users|tmp|mnt|root)\b\S*", text)
        ok = lines[:1] == ["set -euo pipefail"] and len(lines) == 2 and lines[1].startswith(
            "python3 ")
        report.rule(ok and not bad and not paths,
                    f"{name}: one python3 line, no forbidden command, no hard-coded path"
                    if ok and not bad and not paths else
                    f"{name}: " + ("uses " + ", ".join(bad) if bad else
                                   f"hard-codes {paths[0]}" if paths else
                                   "is not one python3 line after set -euo pipefail"),
                    "keep it to `set -euo pipefail` and one python3 line with \"$1\"...")


def grader_python(edition):
    proc = subprocess.run(["bash", str(ROOT / "tools" / "grader_env.sh"), "--edition", edition],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit("handin_check: " + (proc.stderr.strip().splitlines() or ["no grading "
                                             "environment"])[-1])
    return Path(proc.stdout.strip().splitlines()[-1])


def run_timed(cmd, cwd, env):
    t0 = time.perf_counter()
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True,
                          text=True)
    return proc, time.perf_counter() - t0


def device_name(python, env):
    code = ("import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() "
            "else 'cpu')")
    return subprocess.run([str(python), "-c", code], env=env, capture_output=True,
                          text=True).stdout.strip() or "cpu"


def run_grader_steps(clone, data_dir, out, edition, report):
    """The grader's three commands in the clone, in the grading environment -> scores."""
    python = grader_python(edition)
    env = {**os.environ, "PATH": f"{python.parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("PYTHONPATH", None)
    given = [k for k in OVERRIDES if os.environ.get(k)]
    if given:
        report.warn(f"{', '.join(given)} set here: the grader will not have them; publish "
                    "the URL and hash in hw1_download.py (ITEMS) before handing in")
    proc, _ = run_timed(["bash", "hw1_download_ckpt.sh"], clone, env)
    errors = [ln for ln in proc.stderr.splitlines() if "error" in ln]
    if not report.rule(proc.returncode == 0, "hw1_download_ckpt.sh fetched and verified the "
                       "checkpoints" if proc.returncode == 0 else
                       "hw1_download_ckpt.sh: " + (errors[0] if errors else
                                                   f"exit {proc.returncode}"),
                       "publish each checkpoint's URL and sha256 in hw1_download.py (python3 "
                       "tools/export_checkpoint.py prints them)"):
        return {}
    device = device_name(python, env)
    where = f"on {device}" + ("" if device != "cpu" else " (the grader's GPU is far faster)")
    office = data_dir / "p1_data" / "office"
    office = office if office.is_dir() else data_dir
    pred = out / "pred.csv"
    proc, seconds = run_timed(["bash", "hw1_1.sh", (office / "val.csv").resolve(),
                               (office / "val").resolve(), pred.resolve()], clone, env)
    scores = {}
    if report.rule(proc.returncode == 0 and seconds <= LIMIT_S,
                   f"hw1_1.sh: {seconds:.0f} s {where}, limit {LIMIT_S} s",
                   proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ""):
        import p1_evaluate
        from data import read_office_csv
        correct, total, _ = p1_evaluate.score(p1_evaluate.read_predictions(pred),
                                              read_office_csv(office / "val.csv"))
        scores["p1"] = correct / total
    val = data_dir / "p2_data" / "validation"
    val = val if val.is_dir() else data_dir
    masks = out / "masks"
    n = len(list(val.glob("*_sat.jpg")))
    proc, seconds = run_timed(["bash", "hw1_2.sh", val.resolve(), masks.resolve()], clone, env)
    scaled = seconds * TEST_IMAGES / max(n, 1)
    if report.rule(proc.returncode == 0 and scaled <= LIMIT_S,
                   f"hw1_2.sh: {seconds:.0f} s for {n} images {where}, {scaled:.0f} s for "
                   f"{TEST_IMAGES}, limit {LIMIT_S} s",
                   proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ""):
        import p2_evaluate
        cm, _ = p2_evaluate.evaluate(val, masks)
        scores["p2"] = cm.miou()
    for key, name in (("p1", "setting C accuracy"), ("p2", "mIoU")):
        if key in scores:
            simple, strong = BASELINES[key]
            text = f"{name} {scores[key]:.4f} (baselines {simple} / {strong})"
            print(f"SCORE {text}")
            if scores[key] < simple:
                report.warn(f"{name} {scores[key]:.4f} is below the simple baseline {simple}")
    return scores


def main(args):
    repo = Path(git(args.repo, "rev-parse", "--show-toplevel").strip())
    head = git(repo, "rev-parse", "HEAD").strip()
    print(f"checking {repo} at {head[:12]} (HEAD, as the grader clones it), edition "
          f"{args.edition}")
    report = Report()
    check_rules(repo, args.student_id, report)
    scores = {}
    if not args.no_run:
        work = Path(tempfile.mkdtemp(prefix="handin-"))
        try:
            clone = work / "repo"
            subprocess.run(["git", "clone", "-q", "--no-hardlinks", str(repo), str(clone)],
                           check=True)
            subprocess.run(["git", "-C", str(clone), "checkout", "-q", head], check=True)
            out = args.output_dir or work / "out"
            out.mkdir(parents=True, exist_ok=True)
            scores = run_grader_steps(clone, args.data_dir, out, args.edition, report)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    print(f"{'all rules pass' if not report.failed else f'{report.failed} rule(s) fail'}")
    if report.failed:
        raise SystemExit(1)
    return scores


if __name__ == "__main__":
    cli.run(main, get_args_parser())
