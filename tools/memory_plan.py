"""How much GPU memory each recipe's training step needs, and the --micro-batch that fits a card.

    python3 tools/memory_plan.py                      # every script x recipe, at its own sizes
    python3 tools/memory_plan.py --only p2_train_deeplabv3 --json results/memory_plan.json
    python3 tools/memory_plan.py --check              # on a GPU: one real step per row, measured

For each training script and recipe (recipes.py: its batch, image size, optimizer, precision)
the prediction adds up what a training step holds on the device:
  weights, gradients   4 bytes per parameter (fp32 master weights; gradients of what trains)
  optimizer state      AdamW/Adam: 2 x 4 bytes per trained parameter; SGD: 1 x 4
  data bank            the whole training split as uint8 on the device (the scripts keep it
                       there: data.ImageBank), at the real data's size (HW1_SPEC.md)
  activations          the tensors the forward pass saves for the backward pass, counted on the
                       CPU with torch.autograd.graph.saved_tensors_hooks (each storage once, the
                       weights left out), in the recipe's precision (bf16 autocast on the CPU
                       for --amp recipes), at batches of 2 and 4 so that what grows with the
                       batch (x the micro-batch) is told from what does not (autocast's bf16
                       copies of the weights), at a quarter of the segmentation side, scaled
                       by the pixel count
and allows 10 % of the card for the CUDA context, cuDNN's workspaces and fragmentation. The
micro-batch for a card is the largest that fits; "none" means the weights, optimizer state and
data bank alone do not fit. --check (CUDA only) runs one real step at the full batch, or at the
card's micro-batch, and prints torch.cuda.max_memory_allocated beside the prediction.
"""

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import cli  # noqa: E402
import recipes  # noqa: E402

GB = 1024 ** 3
CARDS = (8, 12, 16, 24, 40, 80)  # GB
HEADROOM = 0.9  # of a card: the rest for the CUDA context, cuDNN workspaces, fragmentation
# the real data's training banks (HW1_SPEC.md), uint8 on the device: (images, channels, side)
BANKS = {"p1_pretrain_byol": (38_400, 3), "p1_finetune": (3_951 + 406, 3),
         "p2_train_fcn32s": (2_000 + 257, 4), "p2_train_deeplabv3": (2_000 + 257, 4)}
OPTIMIZER_STATES = {"adamw": 2, "adam": 2, "sgd": 1}


def get_args_parser():
    parser = argparse.ArgumentParser(
        "memory_plan", formatter_class=cli.HelpFormatter,
        description="Predicted GPU memory of each recipe's training step, and the --micro-batch "
        "that fits 8-80 GB cards.")
    parser.add_argument("--only", nargs="*", default=sorted(recipes.RECIPES),
                        choices=sorted(recipes.RECIPES), help="scripts to plan")
    parser.add_argument("--recipes", nargs="*", default=list(recipes.NAMES),
                        choices=recipes.NAMES, help="recipes to plan")
    # --scale is the old name (reproduce.sh's --scale is the demo's size, another thing)
    cli.old_name(parser, "--scale", parser.add_argument(
        "--downscale", type=int, default=4,
        help="segmentation activations are counted at side / DOWNSCALE and scaled by the "
        "pixel count (1: at the full side, slower)"))
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    parser.add_argument("--check", action="store_true",
                        help="CUDA: run one real step per row and print the measured peak")
    return parser


def script_args(script, recipe):
    """The script's own parser, with the recipe: what its run would use."""
    module = __import__(script)
    argv = ["--recipe", recipe, "--device", "cpu"]
    if script == "p1_finetune":
        argv += ["--setting", "C", "--data-dir", "unused"]
    elif script == "p1_pretrain_byol":
        argv += ["--data-dir", "unused"]
    else:
        argv += ["--no-pretrained"]  # the same layers, nothing downloaded
    return module.get_args_parser().parse_args(argv)


def build(script, args):
    """(module on the CPU, trainable parameters, a function running one training forward on a
    CPU batch of n images at side s and returning its loss, side of its images)."""
    if script == "p1_pretrain_byol":
        import p1_pretrain_byol
        views = p1_pretrain_byol.build_views(args.aug, args.image_size, torch.device("cpu"))
        learner = p1_pretrain_byol.build_learner(args, torch.device("cpu"), views)
        params = [p for p in learner.parameters() if p.requires_grad]
        bank = args.bank_size or 84
        return (learner, params,
                lambda n, s: learner(torch.randint(0, 256, (n, 3, bank, bank),
                                                   dtype=torch.uint8)), args.image_size)
    if script == "p1_finetune":
        import p1_common
        model = p1_common.Classifier(args.num_classes)
        return (model, list(model.parameters()),
                lambda n, s: model(torch.randn(n, 3, s, s)).logsumexp(1).mean(),
                args.image_size)
    import p2_common
    model = p2_common.build_model(vars(args), load_pretrained=False)
    return (model, list(model.parameters()),
            lambda n, s: p2_common.main_logits(model(torch.randn(n, 3, s, s))).mean(),
            args.image_size)


def saved_bytes(model, forward, n, side, amp):
    """Bytes of the tensors the forward pass saves for backward, each storage counted once,
    the model's own weights and buffers left out (they are counted as weights)."""
    own = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}
    seen = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in own:
            seen[storage.data_ptr()] = max(seen.get(storage.data_ptr(), 0), storage.nbytes())
        return t

    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if amp else torch.autocast(
        "cpu", enabled=False)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), ctx:
        forward(n, side)
    return sum(seen.values())


def plan(script, recipe, scale=4):
    """One row: the recipe's sizes, each part in GB, the predicted peak, the micro-batch per
    card."""
    args = script_args(script, recipe)
    torch.manual_seed(0)
    model, trained, forward, side = build(script, args)
    model.train()
    amp = bool(getattr(args, "amp", True))
    params = sum(p.numel() for p in model.parameters())
    buffers = sum(b.numel() for b in model.buffers())
    n_trained = sum(p.numel() for p in trained)
    optimizer = getattr(args, "optimizer", "adamw")
    weights = 4 * (params + buffers)
    grads = 4 * n_trained
    states = 4 * n_trained * OPTIMIZER_STATES[optimizer]
    images, channels = BANKS[script]
    bank_side = args.bank_size if script.startswith("p1") else 512
    bank = images * channels * (bank_side or 84) ** 2
    # BatchNorm in train mode needs 2 images; the segmentation side is counted smaller
    small = max(32, side // scale) if script.startswith("p2") else side
    # two batch sizes split what grows with the batch from what does not (autocast's bf16
    # copies of the weights); what grows is counted at side `small` and scaled by the pixels
    two, four = (saved_bytes(model, forward, n, small, amp) for n in (2, 4))
    per_image = (four - two) / 2 * (side / small) ** 2
    casts = max(0.0, two - (four - two))
    static = weights + grads + states + bank + casts
    fits = {}
    for card in CARDS:
        room = card * GB * HEADROOM - static
        fits[card] = 0 if room < per_image else min(args.batch_size, int(room // per_image))
    return {"script": script, "recipe": recipe, "batch": args.batch_size, "side": side,
            "precision": "bf16 autocast" if amp else "fp32", "optimizer": optimizer,
            "weights_gb": weights / GB, "grads_gb": grads / GB, "optimizer_gb": states / GB,
            "weight_casts_gb": casts / GB,
            "bank_gb": bank / GB, "activations_per_image_gb": per_image / GB,
            "peak_gb": (static + per_image * args.batch_size) / GB,
            "micro_batch": {str(card): fits[card] for card in CARDS}}


def table(rows):
    head = ("| script | recipe | batch x side | precision | weights, grads, optimizer, casts | "
            "data bank | activations / image | peak at the full batch | "
            + " | ".join(f"{c} GB" for c in CARDS) + " |")
    lines = [head, "|" + "---|" * (8 + len(CARDS))]
    for r in rows:
        fixed = r["weights_gb"] + r["grads_gb"] + r["optimizer_gb"] + r["weight_casts_gb"]
        cells = [("all" if m >= r["batch"] else str(m) if m else "none")
                 for m in r["micro_batch"].values()]
        lines.append(f"| {r['script']} | {r['recipe']} | {r['batch']} x {r['side']} | "
                     f"{r['precision']} | {fixed:.2f} GB | {r['bank_gb']:.2f} GB | "
                     f"{r['activations_per_image_gb'] * 1024:.0f} MB | {r['peak_gb']:.1f} GB | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def check(row):
    """CUDA: one real training step of the row's model at its card's micro-batch, measured."""
    device = torch.device("cuda")
    args = script_args(row["script"], row["recipe"])
    total = torch.cuda.get_device_properties(device).total_memory / GB
    fit = [m for c, m in row["micro_batch"].items() if float(c) <= total]
    micro = min(row["batch"], fit[-1] if fit and fit[-1] else row["batch"])
    model, trained, forward, side = build(row["script"], args)
    model.to(device).train()
    optimizer = torch.optim.AdamW(trained, lr=0.0)
    torch.cuda.reset_peak_memory_stats(device)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bool(args.amp)):
        x = torch.randn(micro, 3, side, side, device=device)
        if row["script"] == "p1_pretrain_byol":
            loss = model(x)
        else:
            import p2_common
            loss = p2_common.main_logits(model(x)).float().mean()
    loss.backward()
    optimizer.step()
    torch.cuda.synchronize()
    measured = torch.cuda.max_memory_allocated(device) / GB
    bank = row["bank_gb"]  # not allocated here
    predicted = row["peak_gb"] - bank - row["activations_per_image_gb"] * (row["batch"] - micro)
    return micro, measured, predicted


def main(args):
    rows = []
    for script in args.only:
        for recipe in args.recipes:
            rows.append(plan(script, recipe, args.downscale))
            print(f"{script} {recipe}: peak {rows[-1]['peak_gb']:.1f} GB", file=sys.stderr)
    print(table(rows))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    if args.check:
        if not torch.cuda.is_available():
            raise SystemExit("--check needs a CUDA GPU")
        print(f"\n{torch.cuda.get_device_name(0)}: measured peak of one step (no data bank)")
        for row in rows:
            micro, measured, predicted = check(row)
            print(f"{row['script']} {row['recipe']} micro-batch {micro}: measured "
                  f"{measured:.2f} GB, predicted {predicted:.2f} GB "
                  f"({'%+.0f' % (100 * (predicted / measured - 1))} %)")
    return rows


if __name__ == "__main__":
    cli.run(main, get_args_parser())
