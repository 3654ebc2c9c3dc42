"""reproduce.sh and results_report.py: the report's exact lines from hand-made step outputs, the
architecture tables against the models, and the whole demo chain at its smallest scale (run
twice: the second call must skip every finished step)."""

import json
import os
import re
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

import p2_common
import results_report
from results_report import record_run, record_step, write_report

STEPS = ("data", "byol", "finetune", "tsne", "fcn32s", "deeplabv3", "eval_A", "eval_B", "sam")
CLASSES = ("Urban", "Agriculture", "Rangeland", "Forest", "Water", "Barren")


def write(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def write_jsonl(path, records):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def table_rows(text, first_cell):
    """Cells of the markdown table rows whose first cell matches `first_cell` (a regex)."""
    rows = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and re.fullmatch(first_cell, cells[0]):
            rows.append(cells)
    return rows


# ---------------------------------------------------------------------------------------------
# results_report.py on hand-made inputs
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def handmade(tmp_path):
    out, runs = tmp_path / "results", tmp_path / "runs"
    record_run(out, "demo", "smoke", "demo_data", runs, reason="the real data is missing")
    table = {s: {"setting": s, "pretraining": p, "fine_tuning": f, "best_val_acc": best,
                 "best_epoch": 3, "last_val_acc": 0.4, "epochs": 5}
             for s, p, f, best in (("A", "none", "full model", 0.4567),
                                   ("B", "supervised (pretrain_model_SL.pt)", "full model", 0.5),
                                   ("C", "own BYOL backbone", "full model", 0.25),
                                   ("D", "supervised (pretrain_model_SL.pt)", "head only", 0.125),
                                   ("E", "own BYOL backbone", "head only", 0.0))}
    write(out / "p1_table.json", table)
    iou = dict(zip(CLASSES, (0.1, 0.2, None, 0.4, 0.5, 0.6)))
    write(out / "p2_A_scores.json", {"images": 4, "mean_iou": 0.36, "iou": iou})
    write(out / "p2_B_scores.json", {"images": 4, "mean_iou": 0.5, "iou": dict.fromkeys(CLASSES,
                                                                                         0.5)})
    for run, mious in (("p2_fcn32s", (0.2, 0.36, 0.3)), ("p2_deeplabv3", (0.5, None))):
        (runs / run).mkdir(parents=True)
        (runs / run / "log.jsonl").write_text("".join(
            json.dumps({"epoch": e, "val_miou": m}) + "\n" for e, m in enumerate(mious, 1)))
    (runs / "byol").mkdir()
    (runs / "byol" / "log.jsonl").write_text('{"epoch": 1, "loss": 2.5}\n{"epoch": 2, "loss": 2}\n')
    (runs / "byol" / "loss.png").write_bytes(b"png")
    record_step(out, "byol", "ran", 12.34, "python3 p1_pretrain_byol.py --epochs 2")
    record_step(out, "byol", "skipped", 0, "", "runs/byol finished all its epochs")
    record_step(out, "fcn32s", "ran", 100.0, "python3 a.py | tee x")
    record_step(out, "sam", "skipped", 0, "", "SAM checkpoint ckpt.pth not found")
    return out, runs


def test_report_lines_from_handmade_json(handmade):
    out, runs = handmade
    text = write_report(out, arch=False)
    assert (out / "RESULTS.md").read_text() == text
    lines = text.splitlines()
    # ours, then the report's number and the best valid public one (HW1_SPEC.md)
    assert "| A | none | full model | 45.7 (epoch 3) | 40.0 | 5 | 45.8 | 52.7 |" in lines
    assert "| E | own BYOL backbone | head only | 0.0 (epoch 3) | 40.0 | 5 | 16.7 | 43.8 |" in lines
    assert ("| A: VGG16-FCN32s | 0.3600 | 0.1000 | 0.2000 | n/a | 0.4000 | 0.5000 | 0.6000 | 4 "
            "| 2 (0.3600) | 73.4 | 73.4 |") in lines
    assert ("| B: DeepLabV3-ResNet50 | 0.5000 | 0.5000 | 0.5000 | 0.5000 | 0.5000 | 0.5000 | "
            "0.5000 | 4 | 1 (0.5000) | 75.9 | 76.2 |") in lines
    assert "Recipe: **report**" in text
    assert "| sam_vs_model_b | skipped: SAM checkpoint ckpt.pth not found |" in lines
    # a skipped step keeps the time and command of the call that ran it; pipes are escaped
    assert ("| byol | BYOL pre-training (p1_pretrain_byol.py) | skipped (runs/byol finished all "
            "its epochs) | 12.3 | `python3 p1_pretrain_byol.py --epochs 2` |") in lines
    assert ("| fcn32s | model A: FCN32s training (p2_train_fcn32s.py) | ran | 100.0 | "
            "`python3 a.py \\| tee x` |") in lines
    assert "| sam | SAM automatic masks vs model B (p2_sam.py, p2_sam_vs_model_b.py) | " \
           "skipped (SAM checkpoint " \
           "ckpt.pth not found) | n/a |  |" in lines
    assert "Total of the steps: 112 s (1.9 min)." in lines
    assert "BYOL: 2 epoch(s), lowest loss 2.0000 at epoch 2 (backbone.pth is taken there)." in lines
    assert "- BYOL loss curve: [../runs/byol/loss.png](../runs/byol/loss.png)" in lines
    assert "- t-SNE of setting C (train set, first vs last epoch): `p1_tsne_C.png` (missing)" \
        in lines
    assert "**DEMO RUN.** The real data is missing." in text
    assert "Not generated (results_report.py --no-arch)." in lines


def test_report_sam_table(handmade):
    """RESULTS.md includes the table p2_sam_vs_model_b.py wrote (sam_vs_model_b.md) as it is."""
    out, runs = handmade
    table = ("| prediction | mIoU | Urban |\n|---|---|---|\n| model B | 0.5000 | 0.5000 |\n\n"
             "3 image(s), 42 SAM masks; mask class purity against ground truth 0.9000.\n\n"
             "- purity: Class purity of SAM's masks against ground truth: ...\n")
    (runs / "sam_vs_b").mkdir(parents=True)
    (runs / "sam_vs_b" / "sam_vs_model_b.md").write_text(table)
    record_step(out, "sam", "ran", 30.0, "python3 p2_sam.py")
    text = write_report(out, arch=False)
    assert table.strip() in text
    assert "| sam_vs_model_b | skipped" not in text


def test_learning_table_compares_best_with_first_epoch_and_chance(tmp_path):
    # majority baseline, by hand: truth has 60 Urban, 30 Agriculture, 10 Unknown pixels; Urban
    # everywhere scores IoU 60/100 for Urban and 0 for Agriculture: mIoU (0.6 + 0) / 2 = 0.3
    confusion = [[0] * 7 for _ in range(7)]
    confusion[0][1], confusion[1][1], confusion[6][0] = 60, 30, 10
    assert results_report.majority_miou(confusion) == pytest.approx(0.3)
    out, runs, data = tmp_path / "out", tmp_path / "runs", tmp_path / "data"
    (data / "p1_data" / "office").mkdir(parents=True)
    (data / "p1_data" / "office" / "val.csv").write_text(
        "id,filename,label\n0,0_0.jpg,0\n1,1_1.jpg,1\n2,2_2.jpg,2\n3,3_3.jpg,3\n")
    for s, accs in zip("ABCDE", ([0.25, 0.5, 0.375], [0.5, 0.25], [0.1, 0.2], [0.3],
                                 [0.25, 0.75])):
        write_jsonl(runs / "p1_finetune" / s / "log.jsonl",
                    [{"epoch": e, "val_acc": a} for e, a in enumerate(accs, 1)])
    write_jsonl(runs / "p2_fcn32s" / "log.jsonl", [{"epoch": 1, "val_miou": 0.2},
                                                   {"epoch": 2, "val_miou": 0.25}])
    write_jsonl(runs / "p2_deeplabv3" / "log.jsonl", [{"epoch": 1, "val_miou": 0.2},
                                                      {"epoch": 2, "val_miou": 0.4}])
    write(out / "p2_B_scores.json", {"confusion": confusion})
    write(out / "p2_A_scores.json", {"confusion": confusion})
    lines = results_report.learning_section(out, runs, {"data_root": str(data)})
    rows = {ln.split(" | ")[0][2:]: ln for ln in lines if ln.startswith("| P")}
    # chance, first, best, last epoch
    assert rows["P1 setting A"] == "| P1 setting A | 25.0 | 25.0 | 50.0 | 37.5 | yes |"
    assert rows["P1 setting B"] == "| P1 setting B | 25.0 | 50.0 | 50.0 | 25.0 | **no** |"  # fell
    assert rows["P1 setting C"] == "| P1 setting C | 25.0 | 10.0 | 20.0 | 20.0 | **no** |"
    assert rows["P1 setting D"] == "| P1 setting D | 25.0 | 30.0 | 30.0 | 30.0 | **no** |"
    assert rows["P1 setting E"].endswith("| 75.0 | 75.0 | yes |")
    assert rows["P2 model A: VGG16-FCN32s"] == (
        "| P2 model A: VGG16-FCN32s | 0.3000 | 0.2000 | 0.2500 | 0.2500 | **no** |")  # < chance
    assert rows["P2 model B: DeepLabV3-ResNet50"].endswith(
        "| 0.3000 | 0.2000 | 0.4000 | 0.4000 | yes |")
    assert not any("bars" in ln for ln in lines)  # the demo's bars: a demo's RESULTS.md only

    # a demo: model B named by the backbone its run used, and the bars checked (chance 25.0)
    write(runs / "p2_deeplabv3" / "args.json", {"arch": "mobilenet_v3_large"})
    lines = results_report.learning_section(out, runs, {"data_root": str(data), "mode": "demo"})
    assert any(ln.startswith("| P2 model B: DeepLabV3-mobilenet_v3_large | 0.3000 |")
               for ln in lines)
    assert ("The demo's bars, best validation score: P1 A-C at least 2x chance, D-E 1.5x, "
            "model B mIoU at least 0.2500: **missed** by C (20.0 < 50.0), D (30.0 < 37.5).") \
        in lines  # A (50.0) and B (50.0) meet 2x exactly, E (75.0) 1.5x, model B 0.4 > 0.25
    write_jsonl(runs / "p2_deeplabv3" / "log.jsonl", [{"epoch": 1, "val_miou": 0.2}])
    write_jsonl(runs / "p1_finetune" / "C" / "log.jsonl", [{"epoch": 1, "val_acc": 0.5}])
    write_jsonl(runs / "p1_finetune" / "D" / "log.jsonl", [{"epoch": 1, "val_acc": 0.375}])
    lines = results_report.learning_section(out, runs, {"data_root": str(data), "mode": "demo"})
    assert lines[-3].endswith("**missed** by model B (0.2000 < 0.2500).")


def test_demo_warning_names_the_networks_the_runs_trained(tmp_path):
    runs, demo = tmp_path / "runs", tmp_path / "demo_data"
    write(runs / "p1_finetune" / "C" / "args.json",
          {"arch": "resnet18", "image_size": 32, "data_dir": str(demo / "p1_data" / "office")})
    write(runs / "p2_deeplabv3" / "args.json", {"arch": "mobilenet_v3_large", "pretrained": False})
    write(demo / "make_demo_data.json", {"settings": {"sl_arch": "resnet18", "sl_steps": 150}})
    assert results_report.demo_networks(runs) == (
        "P1 on a resnet18 at 32 px; its `pretrain_model_SL.pt` a resnet18 trained with labels "
        "for 150 steps on the demo's mini images; model B a DeepLabV3-mobilenet_v3_large from "
        "random weights")
    (demo / "make_demo_data.json").unlink()  # no record: nothing is claimed of it
    assert "a resnet50 with random weights, so B/D start like A" in \
        results_report.demo_networks(runs)


def test_seg_classes_are_the_scored_classes_of_the_codec():
    import data
    assert results_report.SEG_CLASSES == data.CLASS_NAMES[:data.SCORED_CLASSES]


def test_record_run_refuses_another_scale(tmp_path):
    record_run(tmp_path, "demo", "smoke", "d", "r")
    with pytest.raises(SystemExit, match="holds a demo run at scale smoke"):
        record_run(tmp_path, "demo", "demo", "d", "r")
    assert record_run(tmp_path, "demo", "demo", "d", "r", overwrite=True)["scale"] == "demo"


def architecture_totals(text):
    """{model letter: (total shown, sum of the listed rows)} from the architecture tables."""
    totals, letter, rows = {}, None, 0
    for line in text.splitlines():
        m = re.match(r"### Model ([AB]):", line)
        if m:
            letter, rows = m.group(1), 0
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if letter and line.startswith("| ") and re.fullmatch(r"[\d,]+", cells[-1]):
            rows += int(cells[-1].replace(",", ""))
        elif letter and cells[0] == "**total**":
            totals[letter] = (int(cells[-1].strip("*").replace(",", "")), rows)
            letter = None
    return totals


@pytest.fixture(scope="module")
def param_counts():
    """sum(p.numel()) of models A and B built for real on the CPU (not on the meta device)."""
    return {"A": sum(p.numel() for p in p2_common.build_fcn32s(
                {}, load_pretrained=False).parameters()),
            "B": sum(p.numel() for p in p2_common.build_deeplabv3(
                {"arch": "resnet50"}, load_pretrained=False).parameters())}


def test_architecture_tables(param_counts):
    text = results_report.architecture_markdown(512)
    assert architecture_totals(text) == {k: (v, v) for k, v in param_counts.items()}
    lines = text.splitlines()
    assert "| fc6 | conv7x7 4096 (fully connected as a conv) + ReLU + dropout | 1x4096x16x16 | " \
           "102,764,544 |" in lines
    assert "| crop (output) | crop back to the input size | 1x7x512x512 | 0 |" in lines
    assert "| backbone: layer4 | 3 bottlenecks, 2048 ch, stride 1, dilation 4 | 1x2048x64x64 | " \
           "14,964,736 |" in lines
    assert "| upsample (output 'out') | bilinear to the input size | 1x7x512x512 | 0 |" in lines


# ---------------------------------------------------------------------------------------------
# the whole chain: bash reproduce.sh --demo --scale smoke, twice
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def smoke_out(tmp_path):
    out = tmp_path / "smoke"
    yield out
    shutil.rmtree(out / "runs", ignore_errors=True)  # ~1.8 GB of checkpoints; pytest keeps tmp


def reproduce(repo_root, out, timeout):
    env = {**os.environ, "PYTHON": sys.executable, "MPLBACKEND": "Agg",
           "CUDA_VISIBLE_DEVICES": ""}  # the demo's figures are the CPU's, on a GPU machine too
    t0 = time.time()
    # a SAM checkpoint that cannot exist, whatever checkpoints/ of this machine holds
    proc = subprocess.run(["bash", str(repo_root / "reproduce.sh"), "--demo", "--scale", "smoke",
                           "--output-dir", str(out), "--sam-checkpoint", str(out / "no_sam.pth")],
                          env=env, cwd=repo_root, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout, time.time() - t0


def test_reproduce_smoke_chain_then_skip(repo_root, smoke_out, param_counts):
    out = smoke_out
    stdout, _ = reproduce(repo_root, out, timeout=900)
    assert "== DEMO: the demo was asked for (--demo or --scale)." in stdout
    text = (out / "RESULTS.md").read_text()

    acc = table_rows(text, "[A-E]")
    assert [r[0] for r in acc] == list("ABCDE")
    for r in acc:  # val acc (best epoch) | val acc (last epoch) | epochs, from the run's log
        log = [json.loads(ln) for ln in (out / "runs" / "p1_finetune" / r[0] / "log.jsonl")
               .read_text().splitlines()]
        accs = [e["val_acc"] for e in log]
        assert len(log) == 1 and all(a * 8 == round(a * 8) for a in accs)  # 8 val images
        assert r[3:6] == [f"{100 * max(accs):.1f} (epoch {accs.index(max(accs)) + 1})",
                          f"{100 * accs[-1]:.1f}", "1"], (r, accs)

    # mIoU and per-class IoU counted here with numpy from the masks the chain wrote (course
    # rule, HW1_SPEC.md: channels >= 128, code 4R+2G+B, codes 3,6,5,2,1,7,0 -> classes 0..6;
    # TP/FP/FN summed over all pixels of all images, Unknown truth predicted i is an FP of i,
    # a class absent from both is n/a and out of the mean)
    code_to_class = np.full(8, -1)
    code_to_class[[3, 6, 5, 2, 1, 7, 0]] = np.arange(7)

    def classes(path):
        rgb = np.asarray(Image.open(path).convert("RGB")) >= 128
        return code_to_class[rgb @ np.array([4, 2, 1])].ravel()

    val = out / "demo_data" / "p2_data" / "validation"
    names = sorted(p.name for p in val.glob("*_mask.png"))
    seg = table_rows(text, "[AB]: .*")
    assert [r[0] for r in seg] == ["A: VGG16-FCN32s", "B: DeepLabV3-ResNet50"]
    for r, letter, run in zip(seg, "AB", ("p2_fcn32s", "p2_deeplabv3")):
        assert sorted(p.name for p in (out / f"p2_{letter}").glob("*_mask.png")) == names
        tp, fp, fn = np.zeros(6), np.zeros(6), np.zeros(6)
        for name in names:
            truth, guess = classes(val / name), classes(out / f"p2_{letter}" / name)
            assert truth.min() >= 0 and guess.min() >= 0  # no pure red (no class)
            for c in range(6):
                tp[c] += np.sum((truth == c) & (guess == c))
                fp[c] += np.sum((truth != c) & (guess == c))
                fn[c] += np.sum((truth == c) & (guess != c))
        seen = tp + fp + fn > 0
        iou = np.divide(tp, tp + fp + fn, out=np.full(6, np.nan), where=seen)
        # mIoU, six per-class IoUs (4 decimals), images, the training log's best epoch
        expected = [iou[seen].mean(), *iou]
        for cell, v in zip(r[1:8], expected):
            if np.isnan(v):
                assert cell == "n/a", (r, expected)
            else:
                assert float(cell) == pytest.approx(v, abs=6e-5), (r, expected)
        log = [json.loads(ln) for ln in (out / "runs" / run / "log.jsonl").read_text()
               .splitlines()]
        best = max(log, key=lambda e: e["val_miou"])
        assert r[8:10] == [str(len(names)), f"{best['epoch']} ({best['val_miou']:.4f})"], r

    sam = table_rows(text, "sam_vs_model_b")
    assert sam == [["sam_vs_model_b", f"skipped: SAM checkpoint {out / 'no_sam.pth'} not found; "
                                      "bash hw1_download.sh sam fetches it"]]
    timing = {r[0]: r for r in table_rows(text, "|".join(STEPS))}
    assert list(timing) == list(STEPS)
    for step in STEPS[:-1]:
        assert timing[step][2] == "ran" and float(timing[step][3]) > 0, timing[step]
    assert timing["sam"][2].startswith("skipped (SAM checkpoint") and timing["sam"][3] == "n/a"

    assert architecture_totals(text) == {k: (v, v) for k, v in param_counts.items()}
    for figure in ("runs/byol/loss.png", "p1_tsne_C.png", "runs/p2_fcn32s/snapshots.png",
                   "runs/p2_deeplabv3/snapshots.png", "runs/p2_deeplabv3/curves.png"):
        assert f"[{figure}]({figure})" in text and (out / figure).stat().st_size > 1000

    # second call: every step finds its output and skips; the report keeps the first times
    first_seconds = json.loads((out / "timings.json").read_text())
    stdout, seconds = reproduce(repo_root, out, timeout=300)
    for step in STEPS:
        assert re.search(rf"^== \[{step}\] skip: ", stdout, re.M), stdout
    assert "+ " + sys.executable not in stdout.replace(
        f"+ {sys.executable} results_report.py", "")  # nothing but the report ran
    assert seconds < 60
    timings = json.loads((out / "timings.json").read_text())
    assert {s: t["status"] for s, t in timings.items()} == dict.fromkeys(STEPS, "skipped")
    assert {s: t["seconds"] for s, t in timings.items()} == {
        s: t["seconds"] for s, t in first_seconds.items()}


def test_results_say_which_runs_used_micro_batches(tmp_path):
    """Only a micro-batch smaller than the run's batch (args.json) split its steps: an explicit
    --micro-batch 30 or 64 at batch 30 did not."""
    from records import append_jsonl, write_json
    for run, batch, sizes in (("byol", 256, [None, None]), ("p2_deeplabv3", 30, [None, 8, 4]),
                              ("p1_finetune/C", 64, []), ("p2_fcn32s", 30, [30, 64]),
                              ("p1_finetune/D", None, [16])):
        (tmp_path / run).mkdir(parents=True)
        if batch is not None:
            write_json(tmp_path / run / "args.json", {"batch_size": batch})
        for epoch, size in enumerate(sizes, 1):
            append_jsonl(tmp_path / run / "log.jsonl", {"epoch": epoch, "micro_batch": size})
    lines = results_report.micro_batch_lines(tmp_path)
    assert lines == ["Micro-batches:", "",
                     f"- `{tmp_path / 'p1_finetune/D'}`: BatchNorm saw micro-batches of 16 "
                     "image(s), not the batch (the gradients of each step accumulated over "
                     "them)",
                     f"- `{tmp_path / 'p2_deeplabv3'}`: BatchNorm saw micro-batches of 4, 8 "
                     "image(s), not the batch of 30 (the gradients of each step accumulated "
                     "over them)", ""]
    assert results_report.micro_batch_lines(tmp_path / "byol") == []
