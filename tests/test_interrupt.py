"""Interruption: SIGTERM/SIGINT stop a run cleanly, kill -9 leaves a resumable one, --resume
finishes the planned epochs with each epoch logged exactly once (training.StopOnSignal).

A real training run in a subprocess (DeepLabV3-MobileNetV3 at 32 px on the real samples) is
killed once it has logged an epoch; the in-process runs send the signal from inside their
own training step, so it lands mid-epoch at a known step."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_p1 import make_p1_data, parse
from test_p2 import SAMPLE_IDS, shrink_pairs

import p1_finetune
import p1_pretrain_byol
import records
import utils

REPO = Path(__file__).resolve().parents[1]
EPOCHS = 4


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors: on a shared 2-core machine a second OpenMP thread mostly waits (the
    in-process runs took 50 s each with 2 threads in a busy full-suite run, 6 s with 1)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def seg_data(tmp_path_factory, samples_dir):
    """p2_data: train/ holds the 4 real samples 3 times (12 pairs, 6 steps of 2 per epoch)."""
    root = tmp_path_factory.mktemp("p2_interrupt")
    for split, copies in (("train", 3), ("validation", 1)):
        for c in range(copies):
            shrink_pairs(samples_dir, root / split, 64, names=[f"{c}{i}" for i in SAMPLE_IDS])
    return root


def seg_command(data, out, *extra):
    return [sys.executable, str(REPO / "p2_train_deeplabv3.py"), "--data-dir", str(data),
            "--output-dir", str(out), "--arch", "mobilenet_v3_large", "--no-pretrained",
            "--epochs", str(EPOCHS), "--batch-size", "2", "--image-size", "32",
            "--workers", "1", "--snapshot-ids", "00008", "--device", "cpu", *extra]


def start_and_kill(command, out, sig):
    """Start a run, wait until it has logged an epoch, send `sig` -> (exit code, stderr)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    log = out / "log.jsonl"
    deadline = time.time() + 120
    while not (log.exists() and log.read_text().strip()):
        assert proc.poll() is None, proc.stderr.read()
        assert time.time() < deadline, "no epoch logged in 120 s"
        time.sleep(0.05)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err


def assert_finished(out):
    """The run is complete: epochs 1..EPOCHS logged once each, in order; last.pth loads."""
    assert [r["epoch"] for r in records.read_jsonl(out / "log.jsonl")] == list(range(1, EPOCHS + 1))
    last = utils.load_checkpoint(out / "last.pth")
    assert last["epoch"] == EPOCHS and last["optimizer"] is not None
    return last


def resume(command):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([*command, "--resume"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def test_sigkill_mid_run_then_resume_finishes_every_epoch_once(seg_data, tmp_path):
    command = seg_command(seg_data, tmp_path)
    code, _ = start_and_kill(command, tmp_path, signal.SIGKILL)
    assert code == -signal.SIGKILL
    if (tmp_path / "last.pth").exists():  # killed after its first save: it must load
        assert utils.load_checkpoint(tmp_path / "last.pth")["epoch"] >= 1
    resume(command)
    assert_finished(tmp_path)


def test_sigterm_exits_cleanly_with_a_resume_hint(seg_data, tmp_path):
    command = seg_command(seg_data, tmp_path)
    code, err = start_and_kill(command, tmp_path, signal.SIGTERM)
    assert code == 128 + signal.SIGTERM, err[-2000:]
    assert "Traceback" not in err
    line = re.search(r"stopped by SIGTERM: (\S+) holds epoch (\d+) .*--resume", err)
    assert line and Path(line.group(1)) == tmp_path / "last.pth", err[-2000:]
    saved = int(line.group(2))
    assert 1 <= saved < EPOCHS
    assert utils.load_checkpoint(tmp_path / "last.pth")["epoch"] == saved
    assert [r["epoch"] for r in records.read_jsonl(tmp_path / "log.jsonl")][-1] == saved
    done = resume(command)
    assert f"(epoch {saved})" in done.stdout  # resumed from the saved epoch, not from scratch
    assert_finished(tmp_path)


def signal_at_step(monkeypatch, module, name, sig, at):
    """Make module.name (a training step) send `sig` to this process during call number `at`."""
    step, calls = getattr(module, name), []

    def step_then_signal(*args, **kwargs):
        calls.append(1)
        if len(calls) == at:
            os.kill(os.getpid(), sig)
        return step(*args, **kwargs)

    monkeypatch.setattr(module, name, step_then_signal)


@pytest.fixture(scope="module")
def p1_data(tmp_path_factory):
    return make_p1_data(tmp_path_factory.mktemp("p1_interrupt"), classes=2, train_per_class=8,
                        val_per_class=2, mini=16)


def test_sigint_mid_epoch_of_finetuning_then_resume(monkeypatch, p1_data, tmp_path):
    argv = ["--setting", "A", "--data-dir", p1_data / "office", "--output-dir", tmp_path,
            "--results-dir", tmp_path / "results", "--epochs", 3, "--batch-size", 8,
            "--image-size", 32, "--bank-size", 40, "--num-classes", 2, "--warmup-epochs", 0,
            "--device", "cpu"]
    handler = signal.getsignal(signal.SIGINT)
    with monkeypatch.context() as m:  # 2 steps per epoch: the 3rd step is epoch 2's first
        signal_at_step(m, p1_finetune, "train_step", signal.SIGINT, at=3)
        with pytest.raises(SystemExit) as stopped:
            p1_finetune.main(parse(p1_finetune, *argv))
    assert stopped.value.code == 128 + signal.SIGINT
    assert signal.getsignal(signal.SIGINT) is handler  # the run's handlers are gone
    assert [r["epoch"] for r in records.read_jsonl(tmp_path / "A" / "log.jsonl")] == [1]
    assert utils.load_checkpoint(tmp_path / "A" / "last.pth")["epoch"] == 1
    table = p1_finetune.main(parse(p1_finetune, *argv, "--resume"))
    assert table["A"]["epochs"] == 3
    assert [r["epoch"] for r in records.read_jsonl(tmp_path / "A" / "log.jsonl")] == [1, 2, 3]


def test_sigterm_mid_epoch_of_byol_then_resume(monkeypatch, p1_data, tmp_path):
    argv = ["--data-dir", p1_data / "mini" / "train", "--output-dir", tmp_path, "--epochs", 2,
            "--batch-size", 8, "--image-size", 32, "--projection-hidden-size", 64,
            "--device", "cpu"]
    with monkeypatch.context() as m:  # 2 steps per epoch: the 3rd step is epoch 2's first
        signal_at_step(m, p1_pretrain_byol, "train_step", signal.SIGTERM, at=3)
        with pytest.raises(SystemExit) as stopped:
            p1_pretrain_byol.main(parse(p1_pretrain_byol, *argv))
    assert stopped.value.code == 128 + signal.SIGTERM
    assert utils.load_checkpoint(tmp_path / "last.pth")["epoch"] == 1
    p1_pretrain_byol.main(parse(p1_pretrain_byol, *argv, "--resume"))
    log = records.read_jsonl(tmp_path / "log.jsonl")
    assert [r["epoch"] for r in log] == [1, 2]
    assert utils.load_checkpoint(tmp_path / "last.pth")["epoch"] == 2
    state = torch.load(tmp_path / "backbone.pth", weights_only=True)
    assert "conv1.weight" in state
