"""bench.py: the CPU configuration runs end to end as one command (the way CI runs it) and
reports, for every workload, positive finite images/s, ratio and peak memory, in the printed
table and in the JSON; FLOP counts agree with the hand-computed ResNet50 ones; the tuning
switches of the ablation reach the code they are meant to turn off."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import bench
import training
import utils


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "bench_cpu.json"
    # one timed step and no warm-up: the numbers only have to exist, not to be steady
    done = subprocess.run([sys.executable, "bench.py", "--device", "cpu", "--threads", "1",
                           "--workers", "1", "--steps", "1", "--warmup", "0", "--json", str(out)],
                          cwd=Path(bench.__file__).parent, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout, json.loads(out.read_text())


def test_table_has_every_workload_with_positive_finite_numbers(cpu_run):
    stdout, _ = cpu_run
    rows = {line.split()[0]: line for line in stdout.splitlines()
            if line.split() and line.split()[0] in bench.WORKLOADS and "|" in line}
    assert sorted(rows) == sorted(bench.WORKLOADS)
    for line in rows.values():
        cells = line.replace("|", " ").split()[1:]
        # batch, size, ours img/s, seed img/s, ratio, ours MiB, seed MiB, GFLOP/img
        values = [float(c) for c in cells]
        assert len(values) == 8, line
        assert all(math.isfinite(v) and v > 0 for v in values), line
    assert "s/image" in stdout  # SAM in seconds per image too


def test_json_holds_the_same_measurements(cpu_run):
    _, results = cpu_run
    assert results["device"] == "cpu" and results["steps"] == 1
    assert list(results["workloads"]) == list(bench.WORKLOADS)
    for name, row in results["workloads"].items():
        for side in ("ours", "seed"):
            r = row[side]
            assert r["images_per_s"] > 0 and math.isfinite(r["images_per_s"]), name
            assert r["seconds_per_image"] == pytest.approx(1 / r["images_per_s"])
            assert 100 < r["peak_mem_mib"] < 64_000, name  # a process RSS, in MiB
            assert r["peak_fraction"] is None  # no bf16 peak on a CPU
        assert row["ratio"] == pytest.approx(row["ours"]["images_per_s"]
                                             / row["seed"]["images_per_s"])
        assert row["gflop_per_image"] > 0


def test_flop_counts_match_resnet50_arithmetic(cpu_run):
    """ResNet50 is ~2.7 GFLOP per 128-px forward, so at 32 px (1/16 of the pixels) a fine-tune
    step is ~3 x 2.7 / 16 = 0.51 and a BYOL image (2 views x (online fwd + bwd + target fwd))
    ~21.5 / 16 = 1.34, plus the projector and predictor MLPs (2048-4096-256, 256-4096-256)."""
    _, results = cpu_run
    w = results["workloads"]
    assert w["finetune"]["gflop_per_image"] == pytest.approx(3 * 2.7 / 16, rel=0.1)
    mlp = 2 * 2 * (2048 * 4096 + 4096 * 256 + 2 * 256 * 4096) * 4 / 1e9  # ~0.15
    assert w["byol"]["gflop_per_image"] == pytest.approx(21.5 / 16 + mlp, rel=0.1)
    assert w["infer_p1"]["gflop_per_image"] == pytest.approx(2.7 / 16, rel=0.1)


def test_each_ablation_switch_reaches_its_target():
    device = torch.device("cpu")
    base = bench.Variant()
    assert base.off("amp").amp is False and base.off("no_host_sync").host_sync is True
    assert base.off("bank_on_device").bank_on_device is False
    for switch in ("channels_last", "fused_optimizer", "cudnn_benchmark"):
        with bench.torch_flags(device, base.off(switch)):
            assert utils.TUNING[switch] is False
            assert all(v for k, v in utils.TUNING.items() if k != switch)
    assert all(utils.TUNING.values())  # restored
    with bench.torch_flags(device, None):  # the seed: PyTorch's defaults, nothing tuned
        assert not any(utils.TUNING.values())
        assert not torch.backends.cuda.matmul.allow_tf32
    cuda = torch.device("cuda")
    with bench.tuning(channels_last=False, fused_optimizer=False):
        assert utils.memory_format(cuda) == torch.contiguous_format
        assert training.fused_optimizer(cuda) is False
    assert utils.memory_format(cuda) == torch.channels_last and training.fused_optimizer(cuda)
    assert utils.memory_format(device) == torch.contiguous_format


def test_profile_table_and_json_kept_when_cut_short(tmp_path, monkeypatch):
    """--profile writes the top operators of ours per workload; a run stopped after its first
    workload (Ctrl-C, or gpu_check.sh's time limit) has already saved that workload's row."""
    real = bench.run_workload

    def run_workload(name, *args, **kwargs):
        if name == "infer_p1":
            raise KeyboardInterrupt
        return real(name, *args, **kwargs)

    monkeypatch.setattr(bench, "run_workload", run_workload)
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)  # leave the suite's as it is
    out, profile = tmp_path / "b.json", tmp_path / "profile.txt"
    argv = ["--device", "cpu", "--threads", "1", "--workers", "0", "--only", "finetune",
            "infer_p1", "--steps", "1", "--warmup", "0", "--json", str(out), "--profile",
            str(profile)]
    with pytest.raises(KeyboardInterrupt):
        bench.main(bench.get_args_parser().parse_args(argv))
    saved = json.loads(out.read_text())
    assert list(saved["workloads"]) == ["finetune"]
    assert saved["workloads"]["finetune"]["ours"]["images_per_s"] > 0
    text = profile.read_text()
    assert text.startswith("== finetune (ours, cpu)\n") and "Self CPU" in text
    assert "aten::convolution_backward" in text  # ResNet50's backward is among the top ops
