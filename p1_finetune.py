"""Fine-tune a ResNet50 + the report's head on Office-Home, settings A-E (Problem 1, step 2).

| setting | backbone starts from                  | trained            |
|---------|---------------------------------------|--------------------|
| A       | random weights                        | full model         |
| B       | supervised  (--sl-backbone, pretrain_model_SL.pt) | full model |
| C       | own BYOL    (--backbone, backbone.pth of p1_pretrain_byol.py) | full model |
| D       | supervised  (--sl-backbone)           | head only (frozen) |
| E       | own BYOL    (--backbone)              | head only (frozen) |

Every setting uses the report's head (2048-1024-512-65, BatchNorm, Dropout 0.4/0.3, ReLU) in
place of the ResNet's `fc`. A frozen backbone (D, E) has requires_grad off; with --freeze-bn
(the strong recipe) its BatchNorm layers are also held in eval mode, so their running
statistics do not move; at the end a moco-style sanity_check asserts every backbone parameter
(and, with --freeze-bn, every BatchNorm buffer) is bit-identical to the file it was loaded from.

    # one setting, the report's recipe (runs/p1_finetune/C/; the accuracy table into
    # runs/p1_finetune/p1_table.*)
    python3 p1_finetune.py --setting C --data-dir hw1_data/p1_data/office \\
        --backbone runs/byol/backbone.pth
    # all five in sequence with the strongest known recipe -> runs/p1_finetune/p1_table.{md,json}
    python3 p1_finetune.py --setting all --data-dir hw1_data/p1_data/office \\
        --backbone runs/byol/backbone.pth --sl-backbone hw1_data/p1_data/pretrain_model_SL.pt \\
        --recipe strong
    # continue an interrupted run (from runs/p1_finetune/C/last.pth); Ctrl-C or SIGTERM stops
    # after the current step with exit 130 / 143 and last.pth = the last completed epoch
    python3 p1_finetune.py --setting C ... --resume
    # 2 GPUs: the global --batch-size is split over the ranks (see utils.py, "distributed")
    torchrun --nproc_per_node=2 p1_finetune.py --setting C ...
    # smoke test on CPU in seconds
    python3 p1_finetune.py --setting A --data-dir demo_data/p1_data/office --epochs 2 \\
        --batch-size 8 --image-size 32 --bank-size 40 --max-images 32 --output-dir /tmp/ft

Outputs per setting (in --output-dir/SETTING): args.json, log.jsonl (one line per epoch),
curves.png (train loss, train acc, val acc), best.pth (best val acc; what hw1_1.sh uses as
checkpoints/p1_C.pth), epoch_001.pth and epoch_100.pth (--keep-epochs: the report's t-SNE
panels are epochs 1 and 100; an epoch past --epochs means the last one), last.pth (the last
epoch, with the optimizer for --resume). Checkpoints carry args (setting, num_classes,
image_size, bank_size) so p1_inference.py and p1_tsne.py rebuild the model from them alone.

Recipes (recipes.py): `--recipe report`, the default, is the report's code: AdamW 3e-4 with
weight decay 1e-5 on every parameter, batch 64, 300 epochs at a constant lr, plain
cross-entropy, gradual unfreezing in A/B/C (the head alone for 8 epochs, then layer4, then all
from epoch 13), D/E with moving BatchNorm statistics, and its augmentation list
(RandomResizedCrop, flip, rotation 15, a 4-px shift, colour jitter 0.2). `--recipe strong`:
Adam 5e-4, warm-up and cosine, SimCLR augmentation, frozen BatchNorm statistics in D/E. Images
are kept as a 128 px uint8 bank (squashed to a square, as Resize((128, 128))) and augmented per
sample on the training device; the evaluation view is the bank image at --image-size.
"""

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

import cli
import distributed
import errors
import p1_common
import recipes
import training
import utils
from augment import ClassificationAugment
from records import LiveCurves, atomic_write_bytes, read_jsonl, write_json

SETTINGS = {  # setting: (where the backbone starts, is it frozen)
    "A": ("random", False),
    "B": ("supervised", False),
    "C": ("ssl", False),
    "D": ("supervised", True),
    "E": ("ssl", True),
}
DESCRIPTION = {"random": "none", "supervised": "supervised (pretrain_model_SL.pt)",
               "ssl": "own BYOL backbone"}


def get_args_parser():
    parser = recipes.RecipeParser(
        "p1_finetune", "p1_finetune", formatter_class=cli.HelpFormatter,
        description="Fine-tune ResNet50 + the report's head on Office-Home, "
        "settings A-E (see the module docstring for the table).")
    parser.add_argument("--setting", required=True, choices=[*SETTINGS, "all"],
                        help="A-E, or 'all' to run the five in sequence and write the table")
    parser.add_argument("--data-dir", required=True, type=Path,
                        help="Office-Home folder holding train.csv, val.csv, train/ and val/ "
                        "(the p1_data folder above it is accepted too)")
    parser.add_argument("--backbone", type=Path,
                        help="own SSL backbone for C and E: backbone.pth of p1_pretrain_byol.py")
    parser.add_argument("--sl-backbone", type=Path,
                        help="supervised backbone for B and D: p1_data/pretrain_model_SL.pt")
    parser.add_argument("--output-dir", default=Path("runs/p1_finetune"), type=Path,
                        help="runs go to OUTPUT_DIR/SETTING/")
    parser.add_argument("--results-dir", default=None, type=Path,
                        help="where p1_table.md / p1_table.json are written, merged per setting "
                        "(default: --output-dir)")
    parser.add_argument("--num-classes", default=65, type=int, help="Office-Home has 65")
    parser.add_argument("--arch", default="resnet50", choices=list(p1_common.ARCHS),
                        help=p1_common.ARCH_HELP)

    train = parser.add_argument_group("training")
    train.add_argument("--epochs", default=100, type=int,
                       help="training epochs (the report's recipe: 300)")
    train.add_argument("--batch-size", default=64, type=int, help="images per step")
    train.add_argument("--image-size", default=128, type=int, help="side the network sees")
    train.add_argument("--bank-size", default=144, type=int,
                       help="side images are stored at (square) before the random crop")
    train.add_argument("--aug", default="report", choices=sorted(AUGMENTS),
                       help="report: RandomResizedCrop, flip, rotation 15, shift 4 px, colour "
                       "jitter 0.2 (the report's list); simclr: SimCLR's list; light: crop of "
                       "--min-scale..1, flip, mild jitter")
    train.add_argument("--min-scale", default=0.25, type=float,
                       help="smallest area fraction of the random-resized crop (--aug light)")
    train.add_argument("--optimizer", default="adamw", choices=["adamw", "adam", "sgd"],
                       help="sgd uses Nesterov momentum 0.9; try --lr 0.01 with it; adam's "
                       "weight decay is an L2 term in the gradient")
    train.add_argument("--lr", default=1e-3, type=float, help="learning rate of the head")
    train.add_argument("--backbone-lr-scale", default=None, type=float,
                       help="backbone lr = lr x this (both recipes: 1.0, one lr for the whole "
                       "model, as the report's code; try 0.1 for B and C to keep more of the "
                       "pre-trained features); unused for D, E")
    train.add_argument("--weight-decay", default=0.01, type=float,
                       help="decoupled (AdamW); conv/linear weights only, unless --decay-all")
    train.add_argument("--decay-all", action=cli.BooleanFlag, default=False,
                       help="weight decay on biases and BatchNorm too, as "
                       "AdamW(model.parameters()) does (the report's code)")
    train.add_argument("--unfreeze", default="", type=str,
                       help="A/B/C: gradual unfreezing EPOCH:PART,...: the head alone until "
                       "0-based epoch EPOCH, then PART (a ResNet stage such as layer4, or all); "
                       "the report's code: 8:layer4,12:all; empty: everything from the start")
    train.add_argument("--freeze-bn", action=cli.BooleanFlag, default=True,
                       help="D/E: the frozen backbone's BatchNorm statistics stay fixed; "
                       "--no-freeze-bn lets them move under model.train() (the report's code)")
    train.add_argument("--schedule", default="cosine",
                       choices=["cosine", "constant", "step", "multistep"],
                       help="step: x0.1 at 1/2 and 3/4 of training; multistep: x0.5 at 10%%, "
                       "1/3 and 2/3 (epochs 30, 100, 200 of 300)")
    train.add_argument("--warmup-epochs", default=5, type=float,
                       help="linear lr warm-up before the schedule")
    train.add_argument("--label-smoothing", default=0.1, type=float,
                       help="of the cross-entropy loss")
    training.add_drop_last_arg(train)

    run = parser.add_argument_group("run")
    run.add_argument("--resume", action="store_true", help="continue from SETTING/last.pth")
    run.add_argument("--overwrite", action="store_true", help="start again in a used folder")
    training.add_hardware_args(run)
    run.add_argument("--max-images", default=None, type=int,
                     help="a random subset of N train and N val images, drawn with --seed "
                     "(the same N and seed give the same images), as in every script; for "
                     "smoke runs")
    run.add_argument("--cache-dir", default=None, type=Path,
                     help="keep decoded image banks here (re-decoded when files change)")
    run.add_argument("--eval-batch-size", default=256, type=int, help="for validation")
    run.add_argument("--keep-epochs", default="1,100", type=str,
                     help="epochs whose model is kept as epoch_XXX.pth, for p1_tsne.py (the "
                     "report's t-SNE panels: epochs 1 and 100); one past --epochs keeps the last")
    return parser


# ---------------------------------------------------------------------------------------------
# model
# ---------------------------------------------------------------------------------------------


def sanity_check(model, source, buffers=True):
    """moco's check: after a frozen-backbone run, every backbone tensor (weights AND, with
    `buffers`, the BatchNorm statistics) must be bit-identical to the file the backbone was
    loaded from. --no-freeze-bn lets the statistics move on purpose: buffers=False then."""
    state = utils.load_checkpoint(source, expect_keys=())
    state = utils.strip_prefixes(state["model"] if "model" in state else state)
    backbone = p1_common.backbone_state(model)
    if not buffers:
        weights = {name for name, _ in model.named_parameters()}
        backbone = {k: v for k, v in backbone.items() if k in weights}
    for k, v in backbone.items():
        assert k in state, f"{k} is not in {source}: the frozen backbone kept a random tensor"
        assert torch.equal(v.cpu(), state[k].cpu()), f"{k} changed in a frozen-backbone run"
    print(f"sanity check passed: {len(backbone)} backbone tensors unchanged")


# ---------------------------------------------------------------------------------------------
# data and evaluation (shared with p1_pretrain_byol.py, p1_tsne.py and p1_inference.py)
# ---------------------------------------------------------------------------------------------


def evaluate(model, bank, labels, args, device):
    """Top-1 accuracy over the whole split. Under torchrun each rank scores its share of the
    images (with the plain model: no collective inside) and the counts are summed."""
    model.eval()
    view = ClassificationAugment(args.image_size, train=False)
    shard = (distributed.rank(), distributed.world_size())
    logits = p1_common.run_batches(model, bank, view, args.eval_batch_size, device, args.amp, shard)
    correct = (logits.argmax(1) == labels[shard[0]::shard[1]].to(logits.device)).sum()
    return distributed.all_reduce(correct).item() / len(labels)


# ---------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------
AUGMENTS = {  # --aug: keyword arguments of augment.ClassificationAugment (size and scale aside)
    # Resize(128,128) is the bank; RRC(128), flip, Rot(15), RandomCrop(128, pad 4), CJ(0.2 x 4),
    # step by step as torchvision runs them (exact)
    "report": dict(jitter=(0.2, 0.2, 0.2, 0.2), p_jitter=1.0, degrees=15.0, translate=4 / 128,
                   exact=True),
    # SimCLR's list: RRC, flip, CJ(0.8, 0.8, 0.8, 0.2) p 0.8, grayscale 0.2, blur p 0.5
    "simclr": dict(jitter=(0.8, 0.8, 0.8, 0.2), p_jitter=0.8, p_gray=0.2, p_blur=0.5),
    "light": dict(jitter=(0.2, 0.2, 0.2, 0.05), p_jitter=0.8),
}


def build_augment(args):
    """The training views of --aug; under torchrun each rank keeps its share of the global
    batch's draws."""
    scale = (args.min_scale, 1.0) if args.aug == "light" else (0.08, 1.0)
    augment = ClassificationAugment(args.image_size, scale=scale, **AUGMENTS[args.aug])
    augment.shard = (distributed.rank(), distributed.world_size())
    return augment


def make_criterion(args):
    """loss(logits (B, C), labels (B,)): cross-entropy with --label-smoothing, in fp32."""
    return lambda logits, y: F.cross_entropy(logits.float(), y,
                                             label_smoothing=args.label_smoothing)


def train_step(model, x, y, optimizer, criterion, device, amp=True, scaler=None, micro=None):
    """One optimizer step on a prepared batch x (B, 3, S, S), y (B,) -> (loss, number of correct
    predictions), both still on the device (no host sync). `micro` (training.MicroBatch) splits
    it into micro-batches; each one's mean loss counts for its share of the batch."""
    def loss_of(start, stop):
        with utils.autocast(device, amp):
            logits = model(x[start:stop])  # (b, num_classes)
        loss = criterion(logits, y[start:stop]) * ((stop - start) / len(x))
        return loss, (logits.argmax(1) == y[start:stop]).sum()

    loss, right = training.optimizer_step(model, optimizer, len(x), loss_of, micro,
                                          scaler=scaler)
    return loss, sum(right)


def train_one_epoch(model, optimizer, scheduler, train, args, device, epoch, stop=None):
    """One epoch over train = (bank, labels, augment, criterion, GradScaler, MicroBatch) ->
    {train_loss, train_acc, images} over all ranks. Data order and augmentations come from
    (seed, epoch) alone, so --resume replays the epoch; under torchrun each rank takes its
    share of the global --batch-size."""
    bank, labels, augment, criterion, scaler, micro = train
    model.train()
    fmt = utils.memory_format(device)
    # summed on the device; one host sync per epoch instead of one per step
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    seen = 0
    order, augment.generator = distributed.epoch_generators(args.seed, epoch, bank.device)
    batches = training.train_batches(len(bank), args.batch_size, args, order, bank.device)
    for idx in tqdm(batches, total=training.steps_per_epoch(len(bank), args.batch_size, args),
                    leave=False,
                    desc=f"{args.setting} epoch {epoch}",
                    disable=not distributed.is_main_process()):
        x = augment(bank.batch(idx)).to(device).contiguous(memory_format=fmt)  # (B, 3, S, S)
        loss, right = train_step(model, x, labels[idx].to(device), optimizer, criterion, device,
                                 args.amp, scaler, micro)
        scheduler.step()
        loss_sum += loss * len(idx)
        correct += right
        seen += len(idx)
        if stop:
            stop.check(epoch - 1)
    totals = torch.stack([loss_sum.double(), correct.double(),
                          torch.tensor(float(seen), dtype=torch.float64, device=device)])
    loss_sum, correct, seen = distributed.all_reduce(totals).tolist()
    loss = loss_sum / max(seen, 1)
    training.check_finite(loss, epoch, "end")
    return {"train_loss": loss, "train_acc": correct / max(seen, 1), "images": int(seen)}


def backbone_source(args):
    init = SETTINGS[args.setting][0]
    if init == "random":
        return None
    path, flag = ((args.sl_backbone, "--sl-backbone") if init == "supervised"
                  else (args.backbone, "--backbone"))
    if path is None:
        raise errors.UserError(f"setting {args.setting} starts from the {DESCRIPTION[init]}: "
                              f"pass {flag} PATH")
    if not Path(path).is_file():
        raise errors.UserError(f"{flag} {path} does not exist")
    return Path(path)


def kept_epochs(text, epochs):
    """'1,100' -> {1, 100}; an epoch past `epochs` is the last one; a bad entry is one line."""
    try:
        wanted = [int(e) for e in text.split(",") if e.strip()]
    except ValueError:
        wanted = [0]
    if any(e < 1 for e in wanted):
        raise errors.UserError(f"--keep-epochs {text!r} must be epochs (1, 2, ...) separated by "
                               "commas, e.g. 1,100")
    return {min(e, epochs) for e in wanted}


def parse_unfreeze(text):
    """'8:layer4,12:all' -> [(8, 'layer4'), (12, 'all')]; a bad entry is one line."""
    steps = []
    for item in filter(None, (t.strip() for t in text.split(","))):
        epoch, _, part = item.partition(":")
        if not epoch.isdigit() or part not in ("layer1", "layer2", "layer3", "layer4", "all"):
            raise errors.UserError(f"--unfreeze entry {item!r} is not EPOCH:PART with PART one "
                                   "of layer1..layer4 or all, e.g. 8:layer4,12:all")
        steps.append((int(epoch), part))
    return steps


def unfreeze(model, steps, epoch):
    """Gradual unfreezing before 1-based `epoch`: the head always; each PART once epoch - 1
    reaches its EPOCH. No-op without steps (everything trains from the start)."""
    if not steps:
        return
    open_parts = {part for start, part in steps if epoch - 1 >= start}
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("fc.") or "all" in open_parts
                         or name.split(".")[0] in open_parts)


def build_optimizer(model, args):
    """The head at --lr, the backbone (when trained) at --lr x --backbone-lr-scale; no weight
    decay on biases and BatchNorm unless --decay-all; fused on CUDA. Built before any gradual
    unfreezing, so it holds every parameter that will ever train."""
    scale = args.backbone_lr_scale
    if scale is None:
        scale = 1.0 if args.setting == "A" else 0.1
    head = [p for n, p in model.named_parameters() if n.startswith("fc.")]
    body = [p for n, p in model.named_parameters() if not n.startswith("fc.")]
    groups = [{"params": head, "lr": args.lr}, {"params": body, "lr": args.lr * scale}]
    return training.make_optimizer(groups, args.optimizer, args.lr, args.weight_decay,
                                   head[0].device, nesterov=args.optimizer == "sgd",
                                   decay_all=args.decay_all)


def run_setting(args, banks=None):
    """Train one setting; returns its row of the results table (None on ranks other than 0).
    `banks`: a dict that keeps the decoded splits between settings (--setting all)."""
    # this rank's device under torchrun
    device = distributed.init_distributed(utils.get_device(args.device))
    utils.setup_precision(device, args.amp)
    utils.seed_everything(args.seed, args.deterministic)
    out = distributed.on_main_process(training.prepare_output_dir,
                                      args.output_dir / args.setting, args, args.resume,
                                      args.overwrite)
    init, frozen = SETTINGS[args.setting]
    source = backbone_source(args)
    print(f"== setting {args.setting}: backbone {DESCRIPTION[init]}"
          f"{f' from {source}' if source else ''}, {'head only' if frozen else 'full model'}")

    # ---- data
    banks = {} if banks is None else banks
    for split in ("train", "val"):
        if split not in banks:
            banks[split] = p1_common.load_office(args.data_dir, split, args.bank_size, device,
                                       args.cache_dir, args.max_images, args.seed)
    (train_bank, train_y), (val_bank, val_y) = banks["train"], banks["val"]
    top = int(max(train_y.max(), val_y.max()))
    if top >= args.num_classes:
        raise errors.UserError(f"labels go up to {top} but --num-classes is {args.num_classes}")
    if len(train_bank) < args.batch_size:
        raise errors.UserError(f"only {len(train_bank)} training images for --batch-size "
                              f"{args.batch_size}; lower it")
    augment = build_augment(args)

    # ---- model, optimizer, schedule
    model = p1_common.Classifier(args.num_classes, freeze_backbone=frozen,
                                 freeze_bn=args.freeze_bn, arch=args.arch)
    steps = [] if frozen else parse_unfreeze(args.unfreeze)
    if source is not None:
        utils.load_resnet_weights(model, source)
    model.to(device, memory_format=utils.memory_format(device))
    optimizer = build_optimizer(model, args)
    steps_per_epoch = training.steps_per_epoch(len(train_bank), args.batch_size, args)
    scheduler = training.make_lr_scheduler(optimizer, args.schedule, args.epochs * steps_per_epoch,
                                        round(args.warmup_epochs * steps_per_epoch))
    training.print_run_header(args, device, args.batch_size, args.lr)

    # ---- resume
    scaler = utils.grad_scaler(device, args.amp)
    ckpts = training.Checkpoints(out, args, "p1_classifier", model, optimizer, scheduler,
                                 "val_acc", scaler=scaler)
    start_epoch = ckpts.resume() if args.resume else 1
    kept = kept_epochs(args.keep_epochs, args.epochs)
    micro = training.MicroBatch(args.micro_batch, device, smallest=2)  # BatchNorm: 2 or more
    if args.compile:
        model.compile()
    # DistributedDataParallel under torchrun (validation uses the plain model)
    # (a parameter frozen for the first epochs gets no gradient then: let DDP expect that)
    step_model = distributed.distribute_model(model, device, find_unused_parameters=bool(steps))

    # ---- loop: train, validate, then rank 0 logs and saves; a signal stops after a step
    curves = LiveCurves(out / "log.jsonl", out / "curves.png",
                        ["train_loss", "train_acc", "val_acc"], title=f"setting {args.setting}")
    with training.StopOnSignal(out) as stop, curves:
        for epoch in range(start_epoch, args.epochs + 1):
            unfreeze(model, steps, epoch)
            t0 = time.perf_counter()
            stats = train_one_epoch(step_model, optimizer, scheduler,
                                    (train_bank, train_y, augment, make_criterion(args), scaler,
                                     micro), args, device, epoch, stop)
            seconds = time.perf_counter() - t0
            record = {"epoch": epoch, "train_loss": stats["train_loss"],
                      "train_acc": stats["train_acc"],
                      "val_acc": evaluate(model, val_bank, val_y, args, device),
                      "lr": optimizer.param_groups[0]["lr"],
                      "images_per_s": stats["images"] / seconds, "seconds": seconds,
                      "micro_batch": micro.size}  # None: the whole batch per forward
            ckpts.end_epoch(epoch, record, keep=epoch in kept)  # the t-SNE's panels
            if distributed.is_main_process():
                print(f"[{args.setting}] epoch {epoch}/{args.epochs} loss "
                      f"{record['train_loss']:.4f} train acc {record['train_acc']:.4f} val acc "
                      f"{record['val_acc']:.4f} | {record['images_per_s']:.0f} img/s")
                curves.epoch_done()
            stop.check(epoch)
    if frozen:
        sanity_check(model, source, buffers=args.freeze_bn)
    if not distributed.is_main_process():
        return None
    records = read_jsonl(out / "log.jsonl")
    if not records:
        raise errors.UserError(f"{out} has no finished epoch; is --epochs 0?")
    best = max(records, key=lambda r: r["val_acc"])
    return {"setting": args.setting, "pretraining": DESCRIPTION[init],
            "fine_tuning": "head only" if frozen else "full model",
            "best_val_acc": best["val_acc"], "best_epoch": best["epoch"],
            "last_val_acc": records[-1]["val_acc"], "epochs": records[-1]["epoch"],
            "run_dir": str(out)}


def update_results_table(results_dir, row):
    """Merge one setting's row into p1_table.json and re-render p1_table.md."""
    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    table = {}
    if (results_dir / "p1_table.json").exists():
        table = json.loads((results_dir / "p1_table.json").read_text())
    table[row["setting"]] = row
    table = dict(sorted(table.items()))
    write_json(results_dir / "p1_table.json", table)
    lines = ["| setting | backbone pre-training | fine-tuning | val acc (best epoch) | "
             "val acc (last epoch) | epochs |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['setting']} | {r['pretraining']} | {r['fine_tuning']} | "
              f"{100 * r['best_val_acc']:.1f}% (epoch {r['best_epoch']}) | "
              f"{100 * r['last_val_acc']:.1f}% | {r['epochs']} |" for r in table.values()]
    atomic_write_bytes(results_dir / "p1_table.md", ("\n".join(lines) + "\n").encode())
    return table


def main(args):
    if args.epochs < 1:
        raise errors.UserError(f"--epochs must be at least 1, not {args.epochs}")
    settings = list(SETTINGS) if args.setting == "all" else [args.setting]
    for setting in settings:  # check every needed backbone before hours of training
        backbone_source(argparse.Namespace(**{**vars(args), "setting": setting}))
    results_dir = args.results_dir or args.output_dir  # the table stays beside its runs
    table, banks = None, {}  # Office-Home is decoded once for all the settings
    for setting in settings:
        # --recipe strong: A, B, D and E take their own strongest run's values (recipes.py)
        cell = {**vars(args), "setting": setting, **recipes.for_setting(args, setting)}
        row = run_setting(argparse.Namespace(**cell), banks)
        if row is not None:  # rank 0 (all of them in one process) writes the table
            table = update_results_table(results_dir, row)
    if table is not None:
        print((results_dir / "p1_table.md").read_text())
    return table


if __name__ == "__main__":
    cli.run(main, get_args_parser())
