"""Fine-tune a ResNet50 + the report's head on Office-Home, settings A-E (Problem 1, step 2).

| setting | backbone starts from                  | trained            |
|---------|---------------------------------------|--------------------|
| A       | random weights                        | full model         |
| B       | supervised  (--sl-backbone, pretrain_model_SL.pt) | full model |
| C       | own BYOL    (--backbone, backbone.pth of p1_pretrain_byol.py) | full model |
| D       | supervised  (--sl-backbone)           | head only (frozen) |
| E       | own BYOL    (--backbone)              | head only (frozen) |

Every setting uses the report's head (2048-1024-512-65, BatchNorm, Dropout 0.4/0.3, ReLU) in
place of the ResNet's `fc`. A frozen backbone (D, E) has requires_grad off AND its BatchNorm
layers held in eval mode, so its running statistics do not move either; at the end a moco-style
sanity_check asserts every backbone tensor (parameters and buffers) is bit-identical to the file
it was loaded from.

    # one setting (output in runs/p1_finetune/C/, accuracy merged into results/p1_table.*)
    python3 p1_finetune.py --setting C --data-dir hw1_data/p1_data/office \\
        --backbone runs/byol/backbone.pth
    # all five in sequence -> results/p1_table.md and results/p1_table.json
    python3 p1_finetune.py --setting all --data-dir hw1_data/p1_data/office \\
        --backbone runs/byol/backbone.pth --sl-backbone hw1_data/p1_data/pretrain_model_SL.pt
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
checkpoints/p1_C.pth), epoch_first.pth and last.pth (first and last epoch, for p1_tsne.py;
last.pth also holds the optimizer for --resume). Checkpoints carry args (setting, num_classes,
image_size, bank_size) so p1_inference.py and p1_tsne.py rebuild the model from them alone.

Defaults (chosen, not measured on the real data): 100 epochs, batch 64, AdamW lr 1e-3, weight
decay 0.01, 5 warm-up epochs then cosine, label smoothing 0.1; the backbone of B and C trains at
0.1x the head's lr so the pre-trained features are adjusted rather than overwritten, A at 1x.
Images are kept as a 144 px uint8 bank (squashed to a square) and augmented per sample on the
training device: random-resized crop to 128 (scale 0.25-1), flip, colour jitter p=0.8; the
evaluation view is the whole 144 px image resized to 128.
"""

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import Bottleneck, ResNet
from tqdm import tqdm

import utils

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
    parser = argparse.ArgumentParser(
        "p1_finetune", formatter_class=utils.HelpFormatter,
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
    parser.add_argument("--results-dir", default=Path("results"), type=Path,
                        help="where p1_table.md / p1_table.json are written (merged per setting)")
    parser.add_argument("--num-classes", default=65, type=int, help="Office-Home has 65")

    train = parser.add_argument_group("training")
    train.add_argument("--epochs", default=100, type=int, help="the report's t-SNE is at 100")
    train.add_argument("--batch-size", default=64, type=int, help="images per step")
    train.add_argument("--image-size", default=128, type=int, help="side the network sees")
    train.add_argument("--bank-size", default=144, type=int,
                       help="side images are stored at (square) before the random crop")
    train.add_argument("--min-scale", default=0.25, type=float,
                       help="smallest area fraction of the random-resized crop")
    train.add_argument("--optimizer", default="adamw", choices=["adamw", "sgd"],
                       help="sgd uses Nesterov momentum 0.9; try --lr 0.01 with it")
    train.add_argument("--lr", default=1e-3, type=float, help="learning rate of the head")
    train.add_argument("--backbone-lr-scale", default=None, type=float,
                       help="backbone lr = lr x this; default 1.0 for A (nothing to keep), "
                       "0.1 for B and C (keep the pre-trained features); unused for D, E")
    train.add_argument("--weight-decay", default=0.01, type=float,
                       help="decoupled (AdamW); conv/linear weights only")
    train.add_argument("--schedule", default="cosine", choices=["cosine", "constant", "step"],
                       help="step: x0.1 at 1/2 and 3/4 of training")
    train.add_argument("--warmup-epochs", default=5, type=float,
                       help="linear lr warm-up before the schedule")
    train.add_argument("--label-smoothing", default=0.1, type=float,
                       help="of the cross-entropy loss")

    run = parser.add_argument_group("run")
    run.add_argument("--resume", action="store_true", help="continue from SETTING/last.pth")
    run.add_argument("--overwrite", action="store_true", help="start again in a used folder")
    utils.add_hardware_args(run)
    run.add_argument("--max-images", default=None, type=int,
                     help="use only this many train (and val) images, for smoke runs")
    run.add_argument("--cache-dir", default=None, type=Path,
                     help="keep decoded image banks here (re-decoded when files change)")
    run.add_argument("--eval-batch-size", default=256, type=int, help="for validation")
    return parser


# ---------------------------------------------------------------------------------------------
# model
# ---------------------------------------------------------------------------------------------
class Classifier(ResNet):
    """torchvision resnet50(weights=None) whose `fc` is the report's head.

    Subclassing ResNet keeps resnet50()'s state_dict keys (conv1.weight, layer1.0..., fc.N.*),
    so pretrain_model_SL.pt and backbone.pth load as they are, and "backbone" means every
    tensor whose name does not start with "fc.".
    """

    def __init__(self, num_classes=65, freeze_backbone=False):
        super().__init__(Bottleneck, [3, 4, 6, 3])
        self.fc = nn.Sequential(  # the report's head, layer order as in the report
            nn.Linear(2048, 1024), nn.BatchNorm1d(1024), nn.Dropout(0.4), nn.ReLU(),
            nn.Linear(1024, 512), nn.BatchNorm1d(512), nn.Dropout(0.3), nn.ReLU(),
            nn.Linear(512, num_classes))
        self.freeze_backbone = freeze_backbone
        for name, p in self.named_parameters():
            p.requires_grad_(name.startswith("fc.") or not freeze_backbone)

    def train(self, mode=True):
        # a frozen backbone stays in eval mode whatever the loop asks: its BatchNorm layers then
        # normalise with the loaded running stats and never update them
        super().train(mode)
        if self.freeze_backbone:
            for name, child in self.named_children():
                if name != "fc":
                    child.train(False)
        return self

    def embed(self, x):
        """(B, 3, S, S) -> (B, 2048): the avgpool output, what the head sees."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (B, 64, S/4, S/4)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))  # (B, 2048, S/32, S/32)
        return torch.flatten(self.avgpool(x), 1)

    def penultimate(self, x):
        """(B, 512): output of the head's second ReLU = the input of its last Linear (the
        "second-to-last layer" features of the t-SNE; Dropout is inactive in eval mode)."""
        return self.fc[:-1](self.embed(x))

    def forward(self, x):
        return self.fc(self.embed(x))  # (B, num_classes) logits


def backbone_state(model):
    return {k: v for k, v in utils.unwrap_model(model).state_dict().items()
            if not k.startswith("fc.")}


def sanity_check(model, source):
    """moco's check: after a frozen-backbone run, every backbone tensor (weights AND BatchNorm
    buffers) must be bit-identical to the file the backbone was loaded from."""
    state = utils.load_checkpoint(source, expect_keys=())
    state = utils.strip_prefixes(state["model"] if "model" in state else state)
    backbone = backbone_state(model)
    for k, v in backbone.items():
        assert k in state, f"{k} is not in {source}: the frozen backbone kept a random tensor"
        assert torch.equal(v.cpu(), state[k].cpu()), f"{k} changed in a frozen-backbone run"
    print(f"sanity check passed: {len(backbone)} backbone tensors unchanged")


def load_classifier(path, device):
    """Rebuild a Classifier from a checkpoint of this script alone
    -> (model in eval mode, the run's args, the checkpoint's epoch)."""
    ckpt = utils.load_checkpoint(path, expect_keys=())
    args = (ckpt.get("args") if isinstance(ckpt, dict) else None) or {}
    if not (isinstance(ckpt, dict) and "model" in ckpt and "num_classes" in args
            and "setting" in args):
        if isinstance(ckpt, dict) and ckpt and all(torch.is_tensor(v) for v in ckpt.values()):
            kind = "a bare state_dict (a backbone such as backbone.pth or pretrain_model_SL.pt)"
        elif "ema_decay" in args or "projection_size" in args:
            kind = "a BYOL pre-training checkpoint of p1_pretrain_byol.py (no classifier head)"
        elif "model_name" in args:
            kind = f"a Problem 2 {args['model_name']} checkpoint"
        else:
            kind = "a file whose args have no setting/num_classes"
        raise utils.UserError(f"{path} is not a p1_finetune.py checkpoint but {kind}; pass a "
                              "best.pth of p1_finetune.py (e.g. checkpoints/p1_C.pth)")
    model = Classifier(args["num_classes"])
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise utils.UserError(f"{path} does not fit the classifier its args describe "
                              f"({utils.first_line(e, 120)}); train or download it again"
                              ) from None
    device = torch.device(device)
    model.to(device, memory_format=utils.memory_format(device)).eval()
    return model, args, ckpt.get("epoch")


# ---------------------------------------------------------------------------------------------
# data and evaluation (shared with p1_pretrain_byol.py, p1_tsne.py and p1_inference.py)
# ---------------------------------------------------------------------------------------------
def office_dir(data_dir):
    data_dir = Path(data_dir)
    return data_dir / "office" if (data_dir / "office" / "train.csv").exists() else data_dir


def load_office(data_dir, split, bank_size, device, cache_dir=None, max_images=None, seed=0):
    """Office-Home split -> (ImageBank (N, 3, s, s) uint8 on `device`, labels (N,) int64)."""
    data_dir = office_dir(data_dir)
    if not (data_dir / f"{split}.csv").is_file():
        raise utils.UserError(f"{data_dir} has no {split}.csv; --data-dir must be the "
                              "Office-Home folder with train.csv, val.csv, train/ and val/ "
                              "(run `bash hw1_download.sh`)")
    rows = utils.read_office_csv(data_dir / f"{split}.csv", data_dir / split)
    if max_images is not None and max_images < len(rows):
        keep = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed))
        rows = [rows[i] for i in sorted(keep[:max_images].tolist())]
    bank = utils.ImageBank.from_paths([r["path"] for r in rows], size=bank_size,
                                      cache_dir=cache_dir, progress=True).to(device)
    return bank, torch.tensor([r["label"] for r in rows], device=device)


@torch.no_grad()
def run_batches(fn, bank, transform, batch_size, device, amp=True, shard=(0, 1)):
    """fn(transform(images)) over a whole bank in order, batch by batch -> (N, ...) float32.
    shard=(rank, world_size): only the rows rank, rank + world_size, ... (sharded validation)."""
    outs = []
    for idx in utils.index_batches(len(bank), batch_size, shuffle=False, drop_last=False,
                                   device=bank.device, rank=shard[0], world_size=shard[1]):
        x = transform(bank.batch(idx).to(device, non_blocking=True))
        with utils.autocast(device, amp):
            outs.append(fn(x.contiguous(memory_format=utils.memory_format(device))).float())
    return torch.cat(outs)


def evaluate(model, bank, labels, args, device):
    """Top-1 accuracy over the whole split. Under torchrun each rank scores its share of the
    images (with the plain model: no collective inside) and the counts are summed."""
    model.eval()
    view = utils.ClassificationAugment(args.image_size, train=False)
    shard = (utils.rank(), utils.world_size())
    logits = run_batches(model, bank, view, args.eval_batch_size, device, args.amp, shard)
    correct = (logits.argmax(1) == labels[shard[0]::shard[1]].to(logits.device)).sum()
    return utils.all_reduce(correct).item() / len(labels)


# ---------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------
def build_augment(args):
    """Training views: random-resized crop (area min_scale..1) to image_size, flip, colour
    jitter with p=0.8; under torchrun each rank keeps its share of the global batch's draws."""
    augment = utils.ClassificationAugment(args.image_size, scale=(args.min_scale, 1.0),
                                          jitter=(0.2, 0.2, 0.2, 0.05), p_jitter=0.8)
    augment.shard = (utils.rank(), utils.world_size())
    return augment


def train_step(model, x, y, optimizer, scheduler, args, device):
    """One optimizer step on a prepared batch x (B, 3, S, S), y (B,) -> (loss, number of correct
    predictions), both still on the device (no host sync)."""
    with utils.autocast(device, args.amp):
        logits = model(x)  # (B, num_classes)
    loss = F.cross_entropy(logits.float(), y, label_smoothing=args.label_smoothing)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    scheduler.step()
    return loss.detach(), (logits.argmax(1) == y).sum()


def train_one_epoch(model, bank, labels, augment, optimizer, scheduler, args, device, epoch,
                    stop=None):
    """-> (mean loss, accuracy, images seen) of one epoch over all ranks. Data order and
    augmentations come from (seed, epoch) alone, so --resume replays the epoch; under torchrun
    each rank takes its share of the global --batch-size."""
    model.train()
    fmt = utils.memory_format(device)
    # summed on the device; one host sync per epoch instead of one per step
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    seen = 0
    order, augment.generator = utils.epoch_generators(args.seed, epoch, bank.device)
    batches = utils.index_batches(len(bank), utils.shard_batch(args.batch_size), generator=order,
                                  device=bank.device, rank=utils.rank(),
                                  world_size=utils.world_size())
    for idx in tqdm(batches, total=len(bank) // args.batch_size, leave=False,
                    desc=f"{args.setting} epoch {epoch}", disable=not utils.is_main_process()):
        x = augment(bank.batch(idx)).to(device).contiguous(memory_format=fmt)  # (B, 3, S, S)
        loss, right = train_step(model, x, labels[idx].to(device), optimizer, scheduler, args,
                                 device)
        loss_sum += loss * len(idx)
        correct += right
        seen += len(idx)
        if stop:
            stop.check(epoch - 1)
    totals = torch.stack([loss_sum.double(), correct.double(),
                          torch.tensor(float(seen), dtype=torch.float64, device=device)])
    loss_sum, correct, seen = utils.all_reduce(totals).tolist()
    loss = loss_sum / max(seen, 1)
    utils.check_finite(loss, epoch, "end")
    return loss, correct / max(seen, 1), int(seen)


def backbone_source(args):
    init = SETTINGS[args.setting][0]
    if init == "random":
        return None
    path, flag = ((args.sl_backbone, "--sl-backbone") if init == "supervised"
                  else (args.backbone, "--backbone"))
    if path is None:
        raise utils.UserError(f"setting {args.setting} starts from the {DESCRIPTION[init]}: "
                              f"pass {flag} PATH")
    if not Path(path).is_file():
        raise utils.UserError(f"{flag} {path} does not exist")
    return Path(path)


def build_optimizer(model, args):
    """The head at --lr, the backbone (when trained) at --lr x --backbone-lr-scale; no weight
    decay on biases and BatchNorm; fused on CUDA."""
    scale = args.backbone_lr_scale
    if scale is None:
        scale = 1.0 if args.setting == "A" else 0.1
    head = [p for n, p in model.named_parameters() if n.startswith("fc.")]
    body = [p for n, p in model.named_parameters() if not n.startswith("fc.")]
    groups = [{"params": head, "lr": args.lr}, {"params": body, "lr": args.lr * scale}]
    return utils.make_optimizer(groups, args.optimizer, args.lr, args.weight_decay,
                                head[0].device, nesterov=args.optimizer == "sgd")


def run_setting(args, banks=None):
    """Train one setting; returns its row of the results table (None on ranks other than 0).
    `banks`: a dict that keeps the decoded splits between settings (--setting all)."""
    device = utils.init_distributed(utils.get_device(args.device))  # this rank's, under torchrun
    utils.setup_precision(device)
    utils.seed_everything(args.seed, args.deterministic)
    out = utils.on_main_process(utils.prepare_output_dir, args.output_dir / args.setting, args,
                                args.resume, args.overwrite)
    init, frozen = SETTINGS[args.setting]
    source = backbone_source(args)
    print(f"== setting {args.setting}: backbone {DESCRIPTION[init]}"
          f"{f' from {source}' if source else ''}, {'head only' if frozen else 'full model'}")

    # ---- data
    banks = {} if banks is None else banks
    for split in ("train", "val"):
        if split not in banks:
            banks[split] = load_office(args.data_dir, split, args.bank_size, device,
                                       args.cache_dir, args.max_images, args.seed)
    (train_bank, train_y), (val_bank, val_y) = banks["train"], banks["val"]
    top = int(max(train_y.max(), val_y.max()))
    if top >= args.num_classes:
        raise utils.UserError(f"labels go up to {top} but --num-classes is {args.num_classes}")
    if len(train_bank) < args.batch_size:
        raise utils.UserError(f"only {len(train_bank)} training images for --batch-size "
                              f"{args.batch_size}; lower it")
    augment = build_augment(args)

    # ---- model, optimizer, schedule
    model = Classifier(args.num_classes, freeze_backbone=frozen)
    if source is not None:
        utils.load_resnet_weights(model, source)
    model.to(device, memory_format=utils.memory_format(device))
    optimizer = build_optimizer(model, args)
    steps_per_epoch = len(train_bank) // args.batch_size
    scheduler = utils.make_lr_scheduler(optimizer, args.schedule, args.epochs * steps_per_epoch,
                                        round(args.warmup_epochs * steps_per_epoch))
    utils.print_run_header(args, device, args.batch_size, args.lr)

    # ---- resume
    start_epoch, best_acc, best_epoch = 1, -1.0, 0
    if args.resume:
        start_epoch, best_acc, best_epoch = utils.resume_run(out, model, optimizer, scheduler,
                                                             best_metric=best_acc)
    if args.compile:
        model.compile()
    # DistributedDataParallel under torchrun (validation uses the plain model)
    step_model = utils.distribute_model(model, device)

    # ---- loop: train, validate, then rank 0 logs and saves; a signal stops after a step
    with utils.StopOnSignal(out) as stop:
        for epoch in range(start_epoch, args.epochs + 1):
            t0 = time.perf_counter()
            loss, train_acc, seen = train_one_epoch(step_model, train_bank, train_y, augment,
                                                    optimizer, scheduler, args, device, epoch,
                                                    stop)
            seconds = time.perf_counter() - t0
            val_acc = evaluate(model, val_bank, val_y, args, device)
            is_best = val_acc > best_acc
            if is_best:
                best_acc, best_epoch = val_acc, epoch
            if utils.is_main_process():
                record = {"epoch": epoch, "train_loss": loss, "train_acc": train_acc,
                          "val_acc": val_acc, "lr": optimizer.param_groups[0]["lr"],
                          "images_per_s": seen / seconds, "seconds": seconds}
                utils.append_jsonl(out / "log.jsonl", record)
                print(f"[{args.setting}] epoch {epoch}/{args.epochs} loss {loss:.4f} train acc "
                      f"{train_acc:.4f} val acc {val_acc:.4f} | {seen / seconds:.0f} img/s")
                if is_best:
                    utils.save_checkpoint(out / "best.pth", model, epoch=epoch,
                                          best_metric=val_acc, args=args)
                if epoch == 1:
                    utils.save_checkpoint(out / "epoch_first.pth", model, epoch=epoch, args=args)
                utils.save_checkpoint(out / "last.pth", model, optimizer, scheduler, epoch=epoch,
                                      best_metric=best_acc, args=args, best_epoch=best_epoch)
                utils.plot_curves(utils.read_jsonl(out / "log.jsonl"), ["train_loss",
                                  "train_acc", "val_acc"], out / "curves.png",
                                  title=f"setting {args.setting}")
            stop.check(epoch)

    if frozen:
        sanity_check(model, source)
    if not utils.is_main_process():
        return None
    records = utils.read_jsonl(out / "log.jsonl")
    if not records:
        raise utils.UserError(f"{out} has no finished epoch; is --epochs 0?")
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
    utils.write_json(results_dir / "p1_table.json", table)
    lines = ["| setting | backbone pre-training | fine-tuning | val acc (best epoch) | "
             "val acc (last epoch) | epochs |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['setting']} | {r['pretraining']} | {r['fine_tuning']} | "
              f"{100 * r['best_val_acc']:.1f}% (epoch {r['best_epoch']}) | "
              f"{100 * r['last_val_acc']:.1f}% | {r['epochs']} |" for r in table.values()]
    utils.atomic_write_bytes(results_dir / "p1_table.md", ("\n".join(lines) + "\n").encode())
    return table


def main(args):
    if args.epochs < 1:
        raise utils.UserError(f"--epochs must be at least 1, not {args.epochs}")
    settings = list(SETTINGS) if args.setting == "all" else [args.setting]
    for setting in settings:  # check every needed backbone before hours of training
        backbone_source(argparse.Namespace(**{**vars(args), "setting": setting}))
    table, banks = None, {}  # Office-Home is decoded once for all the settings
    for setting in settings:
        row = run_setting(argparse.Namespace(**{**vars(args), "setting": setting}), banks)
        if row is not None:  # rank 0 (all of them in one process) writes the table
            table = update_results_table(args.results_dir, row)
    if table is not None:
        print((args.results_dir / "p1_table.md").read_text())
    return table


if __name__ == "__main__":
    main(get_args_parser().parse_args())
