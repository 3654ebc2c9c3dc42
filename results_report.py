"""Write RESULTS.md from what reproduce.sh's steps left behind, and summarise models A and B.

    # the report of a reproduce.sh run (reads OUT/reproduce.json, OUT/timings.json and the
    # files of every step; missing ones are reported as missing)
    python3 results_report.py --output-dir results
    # only the architecture tables of models A (FCN32s) and B (DeepLabV3-ResNet50), as markdown
    python3 results_report.py --arch-only
    python3 results_report.py --arch-only --input-size 256 --output results/architectures.md
    # what reproduce.sh calls: remember the run's settings, then each step's time
    python3 results_report.py --output-dir results --record-run --mode real --scale full \\
        --data-dir hw1_data --runs-dir runs
    python3 results_report.py --output-dir results --record byol --status ran --seconds 12.3 \\
        --command "python3 p1_pretrain_byol.py ..."

Inputs, relative to --output-dir (OUT) and the run folder (RUNS, from reproduce.json or --runs-dir):
    OUT/p1_table.json                 p1_finetune.py's settings A-E
    OUT/p2_{A,B}_scores.json          p2_evaluate.py --json on the written validation masks
    RUNS/p2_{fcn32s,deeplabv3}/log.jsonl   the best epoch's val mIoU and per-class IoU
    RUNS/sam_vs_b/sam_vs_model_b.md   p2_sam_vs_model_b.py's SAM-vs-model-B table, as it is
    OUT/timings.json                  {step: {status, seconds, command, note, finished}}
    figures: RUNS/byol/loss.png, OUT/p1_tsne_C.png, RUNS/p1_finetune/*/curves.png,
             RUNS/p2_*/{curves,snapshots}.png, RUNS/sam_vs_b/{sam_figure,sam_vs_model_b}.png

Architecture tables: each model is built by its training script's build_model(cfg,
load_pretrained=False) and run once on a 1x3xSxS input (S = --input-size, default 512) on
PyTorch's "meta" device, so forward hooks see every output shape without any arithmetic (about
a second for both models). The layers listed partition the model's parameters: the rows add up
to sum(p.numel() for p in model.parameters()), which the total row shows.

Only json/argparse are imported at the top: --record runs once per step and stays instant;
torch and the model scripts are imported when the architecture tables are built.
"""

import argparse
import csv
import datetime
import math
import os
import platform
from pathlib import Path

import cli
import recipes
from records import git_sha, read_json, read_jsonl, write_json

ROOT = Path(__file__).resolve().parent
# the scored classes of data.CLASS_NAMES, kept here so that this script never imports torch
# (reproduce.sh calls it after every step); tests/test_reproduce.py checks that they agree
SETTINGS = ("A", "B", "C", "D", "E")
SEG_CLASSES = ("Urban", "Agriculture", "Rangeland", "Forest", "Water", "Barren")  # scored 0..5
# The report's own validation numbers, percent (README, "Results").
REPORT_ACC = {"A": 45.8, "B": 52.0, "C": 48.5, "D": 37.2, "E": 16.7}
REPORT_MIOU = {"A": 73.4, "B": 75.9}
# The best valid public result per cell, validation, percent (README, "Results").
BEST_ACC = {"A": 52.7, "B": 59.5, "C": 59.9, "D": 37.2, "E": 43.8}
BEST_MIOU = {"A": 73.4, "B": 76.2}
MODELS = {  # model letter: (name, run folder under RUNS, training script)
    "A": ("VGG16-FCN32s", "p2_fcn32s", "p2_train_fcn32s.py"),
    "B": ("DeepLabV3-ResNet50", "p2_deeplabv3", "p2_train_deeplabv3.py"),
}
# The demo's bars (reproduce.sh's demo scale): best P1 accuracy against chance, model B's mIoU.
DEMO_BARS = {"A": 2.0, "B": 2.0, "C": 2.0, "D": 1.5, "E": 1.5}
DEMO_MIOU_BAR = 0.25


def model_names(runs):
    """MODELS' letter -> name, with the backbone model B's run really used (args.json)."""
    arch = (read_json(runs / MODELS["B"][1] / "args.json") or {}).get("arch", "resnet50")
    names = {letter: name for letter, (name, _, _) in MODELS.items()}
    if arch != "resnet50":
        names["B"] = f"DeepLabV3-{arch}"
    return names


# Pipeline order of reproduce.sh's steps, and what each produces (for the timing table).
STEPS = {
    "data": "demo data (make_demo_data.py)",
    "byol": "BYOL pre-training (p1_pretrain_byol.py)",
    "finetune": "fine-tuning A-E (p1_finetune.py --setting all)",
    "tsne": "t-SNE of setting C (p1_tsne.py)",
    "fcn32s": "model A: FCN32s training (p2_train_fcn32s.py)",
    "deeplabv3": "model B: DeepLabV3 training (p2_train_deeplabv3.py)",
    "eval_A": "model A: validation masks + mIoU (p2_inference.py, p2_evaluate.py)",
    "eval_B": "model B: validation masks + mIoU (p2_inference.py, p2_evaluate.py)",
    "sam": "SAM automatic masks vs model B (p2_sam.py, p2_sam_vs_model_b.py)",
}
DEMO_WARNING = (
    "**DEMO RUN.** {reason}. Every number below comes from a small run on procedural images "
    "written by `make_demo_data.py` (scale `{scale}`; {networks}), for a few CPU epochs. The "
    "numbers show that each model learns and the chain runs end to end; they say nothing "
    "about the real task, whose commands keep the report's networks.")


def demo_networks(runs):
    """What the demo's runs trained (their args.json), in words, for DEMO_WARNING."""
    c = read_json(runs / "p1_finetune" / "C" / "args.json") or {}
    b = read_json(runs / MODELS["B"][1] / "args.json") or {}
    data_dir = Path(c.get("data_dir", "")).resolve()  # .../demo_data/p1_data[/office]
    marks = [read_json(d / "make_demo_data.json") for d in list(data_dir.parents)[:3]]
    sl = next((m for m in marks if m), {}).get("settings", {})
    parts = [f"P1 on a {c.get('arch', 'resnet50')} at {c.get('image_size', '?')} px",
             f"its `pretrain_model_SL.pt` a {sl.get('sl_arch', 'resnet50')} "
             + (f"trained with labels for {sl['sl_steps']} steps on the demo's mini images"
                if sl.get("sl_steps") else "with random weights, so B/D start like A"),
             f"model B a {model_names(runs)['B']}"
             + (" from random weights" if b.get("pretrained") is False else "")]
    return "; ".join(parts)


def get_args_parser():
    parser = argparse.ArgumentParser(
        "results_report", formatter_class=cli.HelpFormatter,
        description="Write OUT/RESULTS.md from the outputs of reproduce.sh's steps (tables, "
                    "figure paths, timings, architecture summaries); or print only the "
                    "architecture tables (--arch-only); or record a step (--record, "
                    "--record-run; used by reproduce.sh).")
    cli.old_name(parser, "--out", parser.add_argument(
        "--output-dir", type=Path, default=Path("results"),
        help="results folder of reproduce.sh (RESULTS.md is written there)"))
    parser.add_argument("--runs-dir", type=Path, default=None,
                        help="run folder (default: the one in OUT/reproduce.json, else runs)")
    parser.add_argument("--input-size", type=int, default=512,
                        help="side of the dummy input of the architecture tables")
    parser.add_argument("--no-arch", dest="arch", action="store_false",
                        help="leave the architecture tables out of RESULTS.md")

    g = parser.add_argument_group("architecture tables only")
    g.add_argument("--arch-only", action="store_true",
                   help="print the tables of models A and B (or write them to --output)")
    g.add_argument("--output", type=Path, default=None, help="markdown file for --arch-only")

    g = parser.add_argument_group("recording (reproduce.sh)")
    g.add_argument("--record", metavar="STEP", default=None,
                   help="add STEP's status/time/command to OUT/timings.json and exit")
    g.add_argument("--status", choices=["ran", "skipped"], default="ran",
                   help="ran: it ran now (its time is kept); skipped: its output was there")
    g.add_argument("--seconds", type=float, default=0.0, help="wall time of the step")
    g.add_argument("--command", default="", help="the command line(s) the step ran")
    g.add_argument("--note", default="", help="why it was skipped, or a remark")
    g.add_argument("--record-run", action="store_true",
                   help="write OUT/reproduce.json (mode, scale, data, runs) and exit; refuses "
                        "an OUT of another mode/scale/recipe unless --overwrite")
    g.add_argument("--mode", choices=["real", "demo"], default="real", help="for --record-run")
    g.add_argument("--scale", default="full", help="for --record-run: full, smoke or demo")
    g.add_argument("--recipe", default="report", help="for --record-run: report or strong")
    cli.old_name(g, "--data-root", g.add_argument(
        "--data-dir", default="hw1_data", help="for --record-run: the data the run reads"))
    g.add_argument("--reason", default="", help="for --record-run: why the demo runs")
    g.add_argument("--overwrite", action="store_true",
                   help="for --record-run: take OUT over from a run of another mode, scale or "
                        "recipe (bash reproduce.sh --overwrite)")
    g.add_argument("--force-run", type=int, dest="overwrite", default=argparse.SUPPRESS,
                   help=argparse.SUPPRESS)  # its old name took a value: --force-run 1
    return parser


# ---------------------------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------------------------
def pct(v):
    """0.4567 -> '45.7'; missing/NaN -> 'n/a'."""
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}"


def iou(v):
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"


def link(path, base):
    """Markdown link to `path` relative to RESULTS.md's folder, or a note that it is missing."""
    path, base = Path(path), Path(base)
    rel = os.path.relpath(path, base)
    return f"[{rel}]({rel})" if path.exists() else f"`{rel}` (missing)"




# ---------------------------------------------------------------------------------------------
# recording (called by reproduce.sh)
# ---------------------------------------------------------------------------------------------
def record_step(out, step, status, seconds, command="", note=""):
    """Merge one step into OUT/timings.json. A skipped step keeps the time and command of the
    run that produced its output, so the table still says what the result cost."""
    path = Path(out) / "timings.json"
    timings = read_json(path) or {}
    old = timings.get(step, {})
    entry = {"status": status, "seconds": round(seconds, 1), "command": command, "note": note,
             "finished": datetime.datetime.now().isoformat(timespec="seconds")}
    if status == "skipped":
        entry.update(seconds=old.get("seconds"), command=old.get("command") or command,
                     ran_at=old.get("finished") if old.get("status") == "ran"
                     else old.get("ran_at"))
    timings[step] = entry
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, timings)
    return timings


def record_run(out, mode, scale, data_root, runs_dir, reason="", overwrite=False,
               recipe="report"):
    """OUT/reproduce.json; an OUT holding a run of another mode, scale or recipe is refused (its
    checkpoints would be resumed with other flags) unless overwrite."""
    path = Path(out) / "reproduce.json"
    old = read_json(path)
    if old and not overwrite and (old.get("mode"), old.get("scale"),
                              old.get("recipe", "report")) != (mode, scale, recipe):
        raise SystemExit(f"error: {out} holds a {old.get('mode')} run at scale "
                         f"{old.get('scale')} (recipe {old.get('recipe', 'report')}), not "
                         f"{mode}/{scale} (recipe {recipe}); pass --overwrite to redo it there, "
                         "or choose another --output-dir")
    info = {"mode": mode, "scale": scale, "recipe": recipe, "data_root": str(data_root),
            "runs_dir": str(runs_dir),
            "reason": reason, "started": datetime.datetime.now().isoformat(timespec="seconds"),
            "git_sha": git_sha()}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, info)
    return info


# ---------------------------------------------------------------------------------------------
# architecture tables
# ---------------------------------------------------------------------------------------------
def _params(modules):
    return sum(p.numel() for m in modules for p in m.parameters())


def _conv_text(conv):
    k, s, d = conv.kernel_size[0], conv.stride[0], conv.dilation[0]
    text = f"conv{k}x{k} {conv.out_channels}"
    if s > 1:
        text += f" /{s}"
    if d > 1:
        text += f" dil {d}"
    return text


def fcn32s_rows(model):
    """[(layer, description, [modules], module whose output shape is shown)] of FCN32s."""
    from torch import nn

    rows, block, stage = [], [], 1
    for m in model.features:  # VGG16: 5 stages of 3x3 convs, each closed by a 2x2 max-pool
        block.append(m)
        if isinstance(m, nn.MaxPool2d):
            convs = [c for c in block if isinstance(c, nn.Conv2d)]
            rows.append((f"features: conv{stage} + pool{stage}",
                         f"{len(convs)} x {_conv_text(convs[0])} + ReLU, max-pool /2",
                         block, m))
            block, stage = [], stage + 1
    up = model.upscore
    rows += [
        ("fc6", f"{_conv_text(model.fc6)} (fully connected as a conv) + ReLU + dropout",
         [model.fc6], model.fc6),
        ("fc7", f"{_conv_text(model.fc7)} + ReLU + dropout", [model.fc7, model.drop], model.fc7),
        ("score", f"{_conv_text(model.score)}: one score per class per 32x32 block",
         [model.score], model.score),
        ("upscore", f"transposed conv{up.kernel_size[0]}x{up.kernel_size[0]} stride "
         f"{up.stride[0]} (bilinear init), on the score map padded by one cell",
         [up], up),
        ("crop (output)", "crop back to the input size", [], model),
    ]
    return rows


def deeplabv3_rows(model):
    """Rows of torchvision's DeepLabV3 (ResNet backbone): stem, 4 stages, ASPP head, aux head."""
    bb, head, aux = model.backbone, model.classifier, model.aux_classifier
    rows = [("backbone: stem", f"{_conv_text(bb.conv1)} + BN + ReLU", [bb.conv1, bb.bn1], bb.bn1),
            ("backbone: maxpool", "max-pool 3x3 /2", [bb.maxpool], bb.maxpool)]
    for name in ("layer1", "layer2", "layer3", "layer4"):
        layer = getattr(bb, name)
        conv2 = layer[0].conv2  # the 3x3 conv of the first bottleneck carries stride/dilation
        last_conv2 = layer[-1].conv2
        rows.append((f"backbone: {name}",
                     f"{len(layer)} bottlenecks, {layer[-1].conv3.out_channels} ch, stride "
                     f"{conv2.stride[0]}, dilation {last_conv2.dilation[0]}", [layer], layer))
    aspp = head[0]
    rates = [branch[0].dilation[0] for branch in aspp.convs[1:-1]]
    rows += [
        ("classifier[0]: ASPP", f"1x1 + 3x3 convs at rates {', '.join(map(str, rates))} + image "
         f"pooling, {aspp.project[0].out_channels} ch each, projected", [aspp], aspp),
        ("classifier[1:4]", f"{_conv_text(head[1])} + BN + ReLU", [head[1], head[2], head[3]],
         head[3]),
        ("classifier[4]", f"{_conv_text(head[4])}: class scores", [head[4]], head[4]),
        ("upsample (output 'out')", "bilinear to the input size", [], "out"),
    ]
    if aux is not None:
        rows.append(("aux_classifier (training only)",
                     f"FCN head on layer3: {_conv_text(aux[0])} + BN + ReLU + dropout, "
                     f"{_conv_text(aux[4])}; its loss x --aux-weight, built only when that "
                     "is above 0 (both recipes: 0)", [aux], aux))
    return rows


def summarize(model, rows, input_size, device="meta"):
    """Run the model once on (1, 3, S, S) with forward hooks on each row's module; return
    [(layer, description, output shape, parameters)] with a row for parameters no row covers
    (none for these two models) and the total = sum(p.numel() for p in model.parameters())."""
    import torch

    shapes, hooks = {}, []

    def hook(key):
        def fn(module, inputs, output):
            if key not in shapes:  # a module called twice (dropout) keeps its first output
                shapes[key] = output
        return fn

    for i, (_, _, _, target) in enumerate(rows):
        if isinstance(target, torch.nn.Module):
            hooks.append(target.register_forward_hook(hook(i)))
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(1, 3, input_size, input_size, device=device))
    finally:
        for h in hooks:
            h.remove()

    def shape_of(value):
        if isinstance(value, dict):
            value = value["out"]
        return "x".join(str(n) for n in value.shape)

    table, covered = [], set()
    for i, (layer, text, modules, target) in enumerate(rows):
        value = out[target] if isinstance(target, str) else shapes.get(i)
        covered |= {id(p) for m in modules for p in m.parameters()}
        table.append((layer, text, "?" if value is None else shape_of(value), _params(modules)))
    total = sum(p.numel() for p in model.parameters())
    rest = sum(p.numel() for p in model.parameters() if id(p) not in covered)
    if rest:
        table.append(("(other)", "parameters of no listed layer", "", rest))
    assert sum(r[3] for r in table) == total, "the listed layers double-count parameters"
    return table, total


def build_models(device="meta"):
    """{letter: (name, model)} built by the training scripts with no pretrained weights."""
    import torch

    import p2_common

    with torch.device(device):
        return {"A": (MODELS["A"][0], p2_common.build_fcn32s({}, load_pretrained=False)),
                "B": (MODELS["B"][0], p2_common.build_deeplabv3(
                    {"arch": "resnet50"}, load_pretrained=False))}


def architecture_markdown(input_size=512):
    """Markdown tables of models A and B (layer, output shape, parameters)."""
    lines = [f"Generated by `results_report.py` from the models themselves: each is built by its "
             f"`p2_common.build_model(cfg, load_pretrained=False)` and run on a "
             f"1x3x{input_size}x{input_size} input on PyTorch's meta device (shapes only); "
             "the rows partition the parameters, so they add up to the total "
             "(`sum(p.numel() for p in model.parameters())`). Shapes are N x C x H x W.", ""]
    for letter, (name, model) in build_models().items():
        rows = fcn32s_rows(model) if letter == "A" else deeplabv3_rows(model)
        table, total = summarize(model, rows, input_size)
        lines += [f"### Model {letter}: {name} ({MODELS[letter][2]})", "",
                  "| layer | what | output shape | parameters |", "|---|---|---|---:|",
                  f"| input | RGB image | 1x3x{input_size}x{input_size} | 0 |"]
        lines += [f"| {layer} | {text} | {shape} | {n:,} |" for layer, text, shape, n in table]
        lines += [f"| **total** | | | **{total:,}** |", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# RESULTS.md sections
# ---------------------------------------------------------------------------------------------
def p1_section(out, runs):
    table = read_json(out / "p1_table.json") or {}
    lines = ["## Problem 1: BYOL pre-training, fine-tuning A-E", "",
             "Validation accuracy on Office-Home (%), from `p1_table.json` (p1_finetune.py).", "",
             "| setting | backbone pre-training | fine-tuning | val acc, best epoch | "
             "val acc, last epoch | epochs | report | best public |",
             "|---|---|---|---|---|---|---|---|"]
    for s in SETTINGS:
        r = table.get(s)
        if r is None:
            lines.append(f"| {s} | | | not run | not run | | {REPORT_ACC[s]} | {BEST_ACC[s]} |")
            continue
        lines.append(f"| {s} | {r['pretraining']} | {r['fine_tuning']} | "
                     f"{pct(r['best_val_acc'])} (epoch {r['best_epoch']}) | "
                     f"{pct(r['last_val_acc'])} | {r['epochs']} | {REPORT_ACC[s]} | "
                     f"{BEST_ACC[s]} |")
    byol = read_jsonl(runs / "byol" / "log.jsonl")
    if byol:
        best = min(byol, key=lambda r: r["loss"])
        lines += ["", f"BYOL: {len(byol)} epoch(s), lowest loss {best['loss']:.4f} at epoch "
                  f"{best['epoch']} (backbone.pth is taken there)."]
    lines += ["", "Figures:", "",
              f"- BYOL loss curve: {link(runs / 'byol' / 'loss.png', out)}",
              f"- t-SNE of setting C (train set, first vs last epoch): "
              f"{link(out / 'p1_tsne_C.png', out)}"]
    lines += [f"- setting {s} curves: {link(runs / 'p1_finetune' / s / 'curves.png', out)}"
              for s in SETTINGS]
    return lines


def best_epoch(log):
    scored = [r for r in log if r.get("val_miou") is not None]
    return max(scored, key=lambda r: r["val_miou"]) if scored else None


def p2_section(out, runs):
    lines = ["## Problem 2: semantic segmentation", "",
             "Validation mIoU of the masks written by `p2_inference.py` (best.pth), scored by "
             "`p2_evaluate.py` (the course's mIoU: classes 0-5 over all pixels at once), with "
             "per-class IoU; the last column is the training log's best epoch.", "",
             "| model | mIoU | " + " | ".join(SEG_CLASSES) + " | images | training log: best "
             "epoch (val mIoU) | report mIoU | best public mIoU |",
             "|---|---|" + "---|" * len(SEG_CLASSES) + "---|---|---|---|"]
    names = model_names(runs)
    for letter, (_, run, _) in MODELS.items():
        name = names[letter]
        score = read_json(out / f"p2_{letter}_scores.json")
        best = best_epoch(read_jsonl(runs / run / "log.jsonl"))
        log_text = "not run" if best is None else f"{best['epoch']} ({iou(best['val_miou'])})"
        if score is None:
            cells = ["not scored"] + ["n/a"] * len(SEG_CLASSES) + [""]
        else:
            cells = ([iou(score["mean_iou"])] + [iou(score["iou"].get(c)) for c in SEG_CLASSES]
                     + [str(score["images"])])
        lines.append(f"| {letter}: {name} | " + " | ".join(cells)
                     + f" | {log_text} | {REPORT_MIOU[letter]} | {BEST_MIOU[letter]} |")
    lines += ["", "A class absent from both truth and prediction would show as n/a and be left "
              "out of the mean (the course scorer gives NaN there).", "", "Figures:", ""]
    for letter, (_, run, _) in MODELS.items():
        lines += [f"- model {letter} ({names[letter]}) curves: "
                  f"{link(runs / run / 'curves.png', out)}; "
                  f"snapshots (validation 0013, 0062, 0104 at the first, middle and last "
                  f"epoch): {link(runs / run / 'snapshots.png', out)}"]
    return lines


def p1_chance(data_root):
    """1 / the number of classes in the validation csv (None when it cannot be read)."""
    try:
        with open(Path(data_root) / "p1_data" / "office" / "val.csv", newline="") as f:
            labels = {row["label"] for row in csv.DictReader(f)}
        return 1.0 / len(labels) if labels else None
    except (OSError, KeyError):
        return None


def majority_miou(confusion):
    """The mIoU of predicting the most frequent scored class everywhere, from a confusion matrix
    (rows: truth): that class gets IoU = its pixels / all pixels, the other scored classes present
    in the truth 0, the absent ones are left out (as the scorer does)."""
    truth = [sum(row) for row in confusion]
    total = sum(truth)
    scored = truth[:len(SEG_CLASSES)]
    present = [c for c in scored if c > 0]
    return (max(scored) / total) / len(present) if total and present else None


def learning_section(out, runs, info):
    """Does each model learn? Its best validation score against chance and its first epoch."""
    lines = ["## Does each model learn?", "",
             "Best validation score against its first epoch and chance (P1: 1 / classes; P2: "
             "the mIoU of predicting the most frequent class everywhere).", "",
             "| model | chance | first epoch | best epoch | last epoch | learns |",
             "|---|---|---|---|---|---|"]
    root = Path(info.get("data_root", "hw1_data"))
    chance = p1_chance(root if root.is_absolute() else ROOT / root)
    rows = [(s, f"P1 setting {s}", runs / "p1_finetune" / s / "log.jsonl", "val_acc", chance,
             pct) for s in SETTINGS]
    names = model_names(runs)
    for letter, (_, run, _) in MODELS.items():
        score = read_json(out / f"p2_{letter}_scores.json") or {}
        base = majority_miou(score["confusion"]) if "confusion" in score else None
        rows.append((f"model {letter}", f"P2 model {letter}: {names[letter]}",
                     runs / run / "log.jsonl", "val_miou", base, iou))
    bests, missed = {}, []  # bests: "A".."E", "model A", "model B" -> best validation score
    for row, label, log_path, key, base, fmt in rows:
        log = [r for r in read_jsonl(log_path) if r.get(key) is not None]
        if not log:
            lines.append(f"| {label} | {fmt(base)} | not run | not run | not run | |")
            continue
        first, best = log[0][key], max(r[key] for r in log)
        bests[row] = best
        learns = best > first and (base is None or best > base)
        lines.append(f"| {label} | {fmt(base)} | {fmt(first)} | {fmt(best)} | "
                     f"{fmt(log[-1][key])} | {'yes' if learns else '**no**'} |")
    if info.get("mode") == "demo":
        for s, times in DEMO_BARS.items():
            best = bests.get(s)
            if chance is None or best is None or best < times * chance:
                missed.append(f"{s} ({pct(best)} < {pct(times * chance) if chance else '?'})")
        best_b = bests.get("model B")
        if best_b is None or best_b < DEMO_MIOU_BAR:
            missed.append(f"model B ({iou(best_b)} < {iou(DEMO_MIOU_BAR)})")
        lines += ["", "The demo's bars, best validation score: P1 A-C at least 2x chance, D-E "
                  f"1.5x, model B mIoU at least {iou(DEMO_MIOU_BAR)}: "
                  + ("all met." if not missed else "**missed** by " + ", ".join(missed) + ".")]
        lines += ["", "At the demo's scale FCN32s is not expected to learn: it predicts one score "
                  "per 32 x 32 block and up-samples it, so a 128-px demo image is 4 x 4 cells, "
                  "trained from random weights (`--no-pretrained`) for a few steps (its 134 M "
                  "parameters cost seconds a step on a CPU). It needs the real 512-px images "
                  "and ImageNet VGG16 weights, which the demo does without."]
    return lines


def sam_section(out, runs, timings):
    """The table p2_sam_vs_model_b.py wrote (sam_vs_model_b.md, with the definitions of its
    numbers), included as it is, and links to the SAM figures."""
    lines = ["## SAM (segment-anything ViT-H) against model B", ""]
    sam_dir = runs / "sam_vs_b"
    entry = timings.get("sam", {})
    try:
        table = (sam_dir / "sam_vs_model_b.md").read_text()
    except OSError:
        reason = entry.get("note") or "the SAM step has not run"
        lines += ["| SAM | status |", "|---|---|", f"| sam_vs_model_b | skipped: {reason} |"]
        return lines
    if entry.get("status") == "skipped" and entry.get("note"):
        lines += [f"(This run skipped SAM: {entry['note']}; the table is from the earlier run "
                  "in the same folder.)", ""]
    lines += [f"As p2_sam_vs_model_b.py wrote it in "
              f"{link(sam_dir / 'sam_vs_model_b.md', out)}:", "",
              *table.strip().splitlines(), "",
              f"- SAM figure: {link(sam_dir / 'sam_figure.png', out)}",
              f"- SAM vs model B figure: {link(sam_dir / 'sam_vs_model_b.png', out)}"]
    return lines


def timing_section(timings):
    lines = ["## Steps and wall time", "",
             "Time of the run that produced each step's output (a step skipped in the latest "
             "call keeps the time of the call that ran it).", "",
             "| step | what | latest call | seconds | command |", "|---|---|---|---:|---|"]
    total = 0.0
    for step, what in STEPS.items():
        t = timings.get(step)
        if t is None:
            continue
        status = t["status"]
        if status == "skipped":
            status = "skipped" + (f" ({t['note']})" if t.get("note") else "")
        secs = t.get("seconds")
        total += secs or 0.0
        command = (t.get("command") or "").replace("|", "\\|")
        lines.append(f"| {step} | {what} | {status} | "
                     f"{'n/a' if secs is None else f'{secs:.1f}'} | "
                     f"{f'`{command}`' if command else ''} |")
    lines += ["", f"Total of the steps: {total:.0f} s ({total / 60:.1f} min)."]
    return lines


def machine_line():
    line = f"{platform.node()}: {platform.machine()}, {os.cpu_count()} CPU cores"
    try:
        import torch

        line += f", torch {torch.__version__}"
        if torch.cuda.is_available():
            line += f", {torch.cuda.get_device_name(0)}"
        else:
            line += ", no GPU"
    except ImportError:
        pass
    return line


def micro_batch_lines(runs):
    """One line per training run whose log.jsonl shows micro-batches smaller than its batch
    (args.json's; --micro-batch N, or auto on a GPU short of memory): BatchNorm then saw the
    micro-batches, not the recipe's batch. Nothing when every step ran whole."""
    lines = []
    for log in sorted(Path(runs).glob("**/log.jsonl")):
        batch = (read_json(log.parent / "args.json") or {}).get("batch_size")
        sizes = sorted({r["micro_batch"] for r in read_jsonl(log) if r.get("micro_batch")
                        and (batch is None or r["micro_batch"] < batch)})
        if sizes:
            lines.append(f"- `{log.parent}`: BatchNorm saw micro-batches of "
                         f"{', '.join(map(str, sizes))} image(s), not the batch"
                         + (f" of {batch}" if batch else "")
                         + " (the gradients of each step accumulated over them)")
    return ["Micro-batches:", "", *lines, ""] if lines else []


def recipe_section(recipe):
    """The recipe's flags per training script, as reproduce.sh writes them into each command
    (recipes.flags), and what they reproduce (REPORT_NOTES) or change (WHY)."""
    lines = ["## The recipe", "",
             f"`--recipe {recipe}` (recipes.py). Each training command of `reproduce.sh` "
             "carries these flags, written out; in the demo its smaller sizes follow them and "
             "win.", "", "| script | flags |", "|---|---|"]
    lines += [f"| `{script}.py` | `{recipes.shown(recipes.flags(script, recipe))}` |"
              for script in recipes.RECIPES]
    notes = recipes.REPORT_NOTES if recipe == "report" else recipes.WHY
    what = "what the report's code did" if recipe == "report" else "what strong changes, and why"
    lines += ["", f"In words ({what}):", ""]
    lines += [f"- `{script}.py`: {notes[script]}" for script in recipes.RECIPES]
    return lines


def write_report(out, runs_dir=None, arch=True, input_size=512):
    """Write OUT/RESULTS.md; returns its text."""
    out = Path(out)
    info = read_json(out / "reproduce.json") or {}
    if runs_dir is not None:
        runs = Path(runs_dir)
    else:  # reproduce.sh stores paths relative to the repository root when inside it
        runs = Path(info.get("runs_dir") or "runs")
        runs = runs if runs.is_absolute() else ROOT / runs
    timings = read_json(out / "timings.json") or {}
    mode = info.get("mode", "real")
    lines = ["# Results", "",
             f"Written by `results_report.py` on "
             f"{datetime.datetime.now().isoformat(timespec='seconds')}, git {git_sha()}; "
             f"machine {machine_line()}.",
             f"Recipe: **{info.get('recipe', 'report')}** (recipes.py; `bash reproduce.sh "
             f"--recipe report|strong`). The report's number and the best valid public number "
             "stand beside ours in every table.",
             f"Mode: **{mode}**, scale `{info.get('scale', 'full')}`, data "
             f"`{info.get('data_root', 'hw1_data')}`, runs `{runs}`.", ""]
    if mode == "demo":
        reason = (info.get("reason") or "the demo was asked for").rstrip(".")
        lines += [DEMO_WARNING.format(reason=reason[:1].upper() + reason[1:],
                                      scale=info.get("scale", "?"),
                                      networks=demo_networks(runs)), ""]
    else:
        lines += ["To grade with these runs: `python3 tools/export_checkpoint.py p1 "
                  "RUNS/p1_finetune/C/best.pth` and `python3 tools/export_checkpoint.py p2 "
                  "RUNS/p2_deeplabv3/best.pth` (hw1_1.sh / hw1_2.sh read checkpoints/).", ""]
    lines += p1_section(out, runs) + [""]
    lines += p2_section(out, runs) + [""]
    lines += recipe_section(info.get("recipe", "report")) + [""]
    lines += micro_batch_lines(runs)
    lines += learning_section(out, runs, info) + [""]
    lines += sam_section(out, runs, timings) + [""]
    lines += ["## Architectures of models A and B", ""]
    lines += ([architecture_markdown(input_size)] if arch
              else ["Not generated (results_report.py --no-arch).", ""])
    lines += timing_section(timings) + [""]
    text = "\n".join(lines)
    (out / "RESULTS.md").write_text(text)
    return text


def main(args):
    if args.record:
        record_step(args.output_dir, args.record, args.status, args.seconds, args.command,
                    args.note)
        return None
    if args.record_run:
        return record_run(args.output_dir, args.mode, args.scale, args.data_dir,
                          args.runs_dir or Path("runs"), args.reason, bool(args.overwrite),
                          args.recipe)
    if args.arch_only:
        text = architecture_markdown(args.input_size)
        if args.output is None:
            print(text)
        else:
            args.output.parent.mkdir(parents=True, exist_ok=True)
            args.output.write_text(text)
            print(f"wrote {args.output}")
        return text
    if not args.output_dir.is_dir():
        raise SystemExit(f"error: --output-dir {args.output_dir} is not a folder; run "
                         "reproduce.sh first")
    text = write_report(args.output_dir, args.runs_dir, args.arch, args.input_size)
    print(f"wrote {args.output_dir / 'RESULTS.md'}")
    return text


if __name__ == "__main__":
    cli.run(main, get_args_parser())
