"""Self-supervised pre-training of a ResNet50 on Mini-ImageNet with BYOL (Problem 1, step 1).

A torchvision resnet50(weights=None) is wrapped in byol-pytorch's BYOL (hidden layer `avgpool`,
simplicial embeddings off). The defaults are the report's run: AdamW lr 1e-3, weight decay
0.01 (on conv/linear weights only; biases and BatchNorm get none, as in the BYOL paper), batch
256, 300 epochs, 128 px, the report's augmentation list (RandomResizedCrop(128) scale 0.08-1,
horizontal flip, ColorJitter(0.2, 0.2, 0.2, 0.2) always, ImageNet normalisation). Images live
in one uint8 bank on the training device and each view is augmented per sample there
(utils.ClassificationAugment), so no DataLoader workers are involved.

    # the report's recipe
    python3 p1_pretrain_byol.py --data-dir hw1_data/p1_data/mini/train --output-dir runs/byol
    # what the strongest public runs did: longer, warm-up + cosine, BYOL's asymmetric views,
    # EMA decay 0.99 -> 1, with a k-NN probe on Office-Home every 20 epochs
    python3 p1_pretrain_byol.py --data-dir hw1_data/p1_data/mini/train --output-dir runs/byol800 \\
        --epochs 800 --lr 3e-4 --warmup-epochs 10 --schedule cosine --aug byol \\
        --ema-schedule cosine --knn-every 20 --knn-data hw1_data/p1_data/office
    # continue an interrupted run from runs/byol/last.pth
    python3 p1_pretrain_byol.py --data-dir hw1_data/p1_data/mini/train --output-dir runs/byol \\
        --resume
    # smoke test on CPU in seconds
    python3 p1_pretrain_byol.py --data-dir demo_data/p1_data/mini/train --output-dir /tmp/byol \\
        --epochs 2 --batch-size 8 --image-size 32 --max-images 32 --projection-hidden-size 256
    # on 4 GPUs (global batch 256 = 4 x 64, SyncBatchNorm; see utils.py "distributed")
    torchrun --nproc_per_node=4 p1_pretrain_byol.py --data-dir hw1_data/p1_data/mini/train \
        --output-dir runs/byol
    # throughput of this pipeline against a seed-style one: bench.py --only byol

Outputs in --output-dir: args.json; log.jsonl (per epoch: loss, lr, ema_decay, images_per_s,
seconds, knn_acc when probed); loss.png; last.pth (learner incl. target encoder and predictor,
optimizer, scheduler, epoch, best loss: what --resume reads); best.pth (learner at the lowest
epoch loss); backbone.pth = the bare torchvision ResNet50 state_dict (format of
pretrain_model_SL.pt, loads into resnet50() with strict=True), taken at the lowest-loss epoch
as the report did (--export last takes the final epoch instead).

EMA: the target is updated in place, target = d * target + (1 - d) * online, over the
parameters of the online encoder (ResNet + projector) with one torch._foreach_lerp_, instead of
byol-pytorch's per-parameter re-allocation. Like byol-pytorch, BatchNorm buffers are NOT
averaged: the target runs in train mode, normalises with batch statistics, and its running
stats only track its own inputs; they are never used for the loss, and backbone.pth comes
from the online network. d is --ema-decay, or with --ema-schedule cosine it rises from
--ema-decay to 1 over training (BYOL paper: 1 - (1 - d0)(cos(pi k / K) + 1) / 2). Under
torchrun every rank applies the same update to the same (DDP-synchronised) online weights, so
the targets stay identical without any communication.

Ctrl-C or SIGTERM stops after the current step (exit 130 / 143); last.pth holds the last
completed epoch and --resume redoes the interrupted one (utils.StopOnSignal).
"""

import argparse
import contextlib
import io
import math
import time
from pathlib import Path

import byol_pytorch.byol_pytorch as byol_lib
import torch
import torch.nn.functional as F
import torchvision
from byol_pytorch import BYOL
from tqdm import tqdm

import utils
from p1_finetune import load_office, run_batches

BYOL_JITTER = dict(jitter=(0.4, 0.4, 0.2, 0.1), p_jitter=0.8, p_gray=0.2)
VIEWS = {  # --aug: keyword arguments of utils.ClassificationAugment for view 1 and view 2
    "report": ({}, {}),  # ClassificationAugment's defaults are the report's list
    "byol": ({**BYOL_JITTER, "p_blur": 1.0, "p_solarize": 0.0},  # BYOL paper, table 6
             {**BYOL_JITTER, "p_blur": 0.1, "p_solarize": 0.2}),
}


def get_args_parser():
    parser = argparse.ArgumentParser(
        "p1_pretrain_byol", formatter_class=utils.HelpFormatter,
        description="BYOL pre-training of a ResNet50 on unlabeled "
        "Mini-ImageNet (defaults: the report's run). Writes backbone.pth for p1_finetune.py.")
    parser.add_argument("--data-dir", required=True, type=Path,
                        help="folder of unlabeled images (p1_data/mini/train; the p1_data "
                        "folder is accepted too)")
    parser.add_argument("--output-dir", default=Path("runs/byol"), type=Path,
                        help="run folder (checkpoints, log, backbone.pth)")

    train = parser.add_argument_group("training")
    train.add_argument("--epochs", default=300, type=int,
                       help="report 300; the strongest public runs 800-1000")
    train.add_argument("--batch-size", default=256, type=int,
                       help="images per step (each seen in two views)")
    train.add_argument("--image-size", default=128, type=int, help="side of each view")
    train.add_argument("--bank-size", default=None, type=int,
                       help="resize images to this square side when loading (default: keep "
                       "the native size; mini images are all 84x84)")
    train.add_argument("--lr", default=1e-3, type=float,
                       help="AdamW learning rate (report 1e-3; long public runs used ~3e-4)")
    train.add_argument("--weight-decay", default=0.01, type=float,
                       help="AdamW weight decay, on conv/linear weights only")
    train.add_argument("--schedule", default="constant", choices=["constant", "cosine"],
                       help="lr after warm-up: constant (report) or cosine to 0")
    train.add_argument("--warmup-epochs", default=0, type=float,
                       help="linear lr warm-up; 10 is typical with --schedule cosine")
    train.add_argument("--aug", default="report", choices=list(VIEWS),
                       help="report: the report's list for both views; byol: the BYOL paper's "
                       "asymmetric views (blur 1.0/0.1, solarize 0/0.2, jitter 0.4,0.4,0.2,0.1 "
                       "p=0.8, grayscale 0.2)")
    train.add_argument("--ema-decay", default=0.99, type=float,
                       help="target EMA decay (byol-pytorch's default 0.99; the paper's 0.996 "
                       "is for ~4000-image batches)")
    train.add_argument("--ema-schedule", default="constant", choices=["constant", "cosine"],
                       help="cosine: decay rises from --ema-decay to 1 over training")
    train.add_argument("--projection-size", default=256, type=int,
                       help="BYOL projector/predictor output (byol-pytorch default)")
    train.add_argument("--projection-hidden-size", default=4096, type=int,
                       help="hidden width of projector and predictor (byol-pytorch default)")
    train.add_argument("--export", default="best", choices=["best", "last"],
                       help="backbone.pth from the lowest-loss epoch (report) or the last one")

    probe = parser.add_argument_group("k-NN probe (optional)")
    probe.add_argument("--knn-every", default=0, type=int,
                       help="every N epochs (and at the end), k-NN accuracy of frozen avgpool "
                       "features, Office-Home train -> val; 0 = off")
    probe.add_argument("--knn-data", default=None, type=Path,
                       help="Office-Home folder with train.csv/val.csv for the probe")
    probe.add_argument("--knn-k", default=20, type=int, help="neighbours that vote")

    run = parser.add_argument_group("run")
    run.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR/last.pth")
    run.add_argument("--overwrite", action="store_true", help="start again in a used folder")
    utils.add_hardware_args(run, compile_help="torch.compile the encoders and the predictor")
    run.add_argument("--max-images", default=None, type=int,
                     help="a random subset of this many images, for smoke runs")
    run.add_argument("--cache-dir", default=None, type=Path,
                     help="keep decoded image banks here (re-decoded when files change)")
    run.add_argument("--log-every", default=50, type=int,
                     help="show the running loss every N steps (one host sync each)")
    return parser


# ---------------------------------------------------------------------------------------------
# data, views, learner
# ---------------------------------------------------------------------------------------------
def mini_paths(args):
    data_dir = Path(args.data_dir)
    if (data_dir / "mini" / "train").is_dir():
        data_dir = data_dir / "mini" / "train"
    paths = utils.list_images(data_dir)
    if args.max_images is not None and args.max_images < len(paths):
        keep = torch.randperm(len(paths), generator=torch.Generator().manual_seed(args.seed))
        paths = [paths[i] for i in sorted(keep[:args.max_images].tolist())]
    return paths


class View:
    """One BYOL view: per-sample augmentation of a uint8 batch (B, 3, H, W) on its device, in fp32
    even inside the bf16 autocast of the step, returned in the model's memory format."""

    def __init__(self, augment, memory_format):
        self.augment, self.memory_format = augment, memory_format

    def __call__(self, x):
        with torch.autocast(x.device.type, enabled=False):
            return self.augment(x).contiguous(memory_format=self.memory_format)  # (B, 3, S, S)


def build_views(aug, image_size, device):
    fmt = utils.memory_format(device)
    return tuple(View(utils.ClassificationAugment(image_size, **kw), fmt) for kw in VIEWS[aug])


@contextlib.contextmanager
def plain_batchnorm():
    """byol-pytorch makes the BatchNorm of its projector and predictor an nn.SyncBatchNorm by
    itself whenever a process group exists, and runs a forward inside BYOL.__init__, which
    nn.SyncBatchNorm refuses on CPU. Build with plain BatchNorm1d instead; under torchrun
    utils.distribute_model then converts every BatchNorm of the learner (ResNet, projector,
    predictor, target) the same way on CPU and CUDA."""
    saved = byol_lib.MaybeSyncBatchnorm
    byol_lib.MaybeSyncBatchnorm = lambda is_distributed=None: torch.nn.BatchNorm1d
    try:
        yield
    finally:
        byol_lib.MaybeSyncBatchnorm = saved


def build_learner(args, device, views=None):
    """BYOL around resnet50(weights=None); views=None keeps byol-pytorch's default augmentation.
    BYOL's __init__ runs one mock forward (2 random images), which also creates the target.

    The ResNet's fc is not on BYOL's path (the hidden layer is avgpool), so it never gets a
    gradient: it is frozen, which lets DistributedDataParallel expect none (AdamW skipped it
    anyway; backbone.pth still holds it, at its initial values)."""
    net = torchvision.models.resnet50(weights=None).to(device)
    net.fc.requires_grad_(False)
    with plain_batchnorm():
        learner = BYOL(net, image_size=args.image_size, hidden_layer="avgpool",
                       projection_size=args.projection_size,
                       projection_hidden_size=args.projection_hidden_size,
                       augment_fn=views[0] if views else None,
                       augment_fn2=views[1] if views else None,
                       moving_average_decay=args.ema_decay, use_simplicial_embeddings=False)
    return learner.to(device, memory_format=utils.memory_format(device))


def build_optimizer(learner, args, steps_per_epoch):
    # the target has no trainable parameters; no decay on biases/BatchNorm; fused on CUDA
    optimizer = utils.make_optimizer(learner.parameters(), "adamw", args.lr, args.weight_decay,
                                     next(learner.parameters()).device)
    scheduler = utils.make_lr_scheduler(optimizer, args.schedule, args.epochs * steps_per_epoch,
                                        round(args.warmup_epochs * steps_per_epoch))
    return optimizer, scheduler


# ---------------------------------------------------------------------------------------------
# EMA target and the training step
# ---------------------------------------------------------------------------------------------
def ema_decay(step, total_steps, base, schedule):
    if schedule == "constant":
        return base
    return 1.0 - (1.0 - base) * (math.cos(math.pi * min(step / max(total_steps, 1), 1.0)) + 1) / 2


@torch.no_grad()
def update_target(learner, decay):
    """target <- decay * target + (1 - decay) * online, parameters only, in place (see the
    module docstring for why BatchNorm buffers are left to the target's own forward)."""
    online = list(learner.online_encoder.parameters())
    target = list(learner.target_encoder.parameters())
    torch._foreach_lerp_(target, online, 1.0 - decay)


def train_step(learner, x, optimizer, scheduler, decay, device, amp=True):
    """One BYOL step on a uint8 batch (B, 3, H, W) on the device -> the loss, still on the device.
    BYOL.forward augments x twice itself and runs 2B images through each encoder. `learner` may
    be wrapped in DistributedDataParallel; the EMA acts on the plain learner."""
    with utils.autocast(device, amp):
        loss = learner(x)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    scheduler.step()
    update_target(utils.unwrap_model(learner), decay)
    return loss.detach()


def save_backbone(net, path):
    """The bare torchvision ResNet50 state_dict (format of pretrain_model_SL.pt), CPU and
    contiguous (channels_last undone), written atomically."""
    state = utils.unwrap_model(net).state_dict()
    state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    buf = io.BytesIO()
    torch.save(state, buf)
    utils.atomic_write_bytes(path, buf.getvalue())


# ---------------------------------------------------------------------------------------------
# k-NN probe
# ---------------------------------------------------------------------------------------------
def knn_accuracy(train_f, train_y, val_f, val_y, k=20, temperature=0.07):
    """Weighted k-NN (as in DINO): each val feature takes its k most cosine-similar train
    features, which vote for their class with weight exp(similarity / temperature)."""
    train_f, val_f = F.normalize(train_f, dim=1), F.normalize(val_f, dim=1)
    sim, idx = (val_f @ train_f.T).topk(min(k, len(train_f)), dim=1)  # (Nv, k)
    votes = torch.zeros(len(val_f), int(train_y.max()) + 1, device=val_f.device)
    votes.scatter_add_(1, train_y.to(val_f.device)[idx], (sim / temperature).exp())
    return (votes.argmax(1) == val_y.to(val_f.device)).float().mean().item()


def knn_probe(learner, banks, args, device):
    """k-NN accuracy of the online avgpool features (B, 2048) at the evaluation view."""
    learner.eval()
    view = utils.ClassificationAugment(args.image_size, train=False)
    embed = lambda x: learner(x, return_embedding=True, return_projection=False)
    feats = [run_batches(embed, bank, view, 256, device, args.amp) for bank, _ in banks]
    learner.train()
    return knn_accuracy(feats[0], banks[0][1], feats[1], banks[1][1], args.knn_k)


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------
def main(args):
    if args.epochs < 1:
        raise utils.UserError(f"--epochs must be at least 1, not {args.epochs}")
    if args.batch_size < 2:
        raise utils.UserError("--batch-size must be at least 2 (BatchNorm in the projector)")
    if args.knn_every and args.knn_data is None:
        raise utils.UserError("--knn-every needs --knn-data OFFICE_DIR (train.csv + val.csv)")
    device = utils.init_distributed(utils.get_device(args.device))  # this rank's, under torchrun
    rank_batch = utils.shard_batch(args.batch_size)  # --batch-size is the global batch
    utils.setup_precision(device)
    utils.seed_everything(args.seed, args.deterministic)
    out = utils.on_main_process(utils.prepare_output_dir, args.output_dir, args, args.resume,
                                args.overwrite)

    # ---- data: the whole folder as one uint8 bank on the training device
    bank = utils.ImageBank.from_paths(mini_paths(args), size=args.bank_size,
                                      cache_dir=args.cache_dir, progress=True,
                                      size_flag="--bank-size").to(device)
    if len(bank) < args.batch_size:
        raise utils.UserError(f"{len(bank)} images for --batch-size {args.batch_size}; lower it")
    steps_per_epoch = len(bank) // args.batch_size
    total_steps = args.epochs * steps_per_epoch
    banks = None
    if args.knn_every and utils.is_main_process():  # rank 0 alone probes and logs
        banks = [load_office(args.knn_data, split, args.image_size, device, args.cache_dir)
                 for split in ("train", "val")]

    # ---- learner, optimizer
    views = build_views(args.aug, args.image_size, device)
    learner = build_learner(args, device, views)
    for view in views:  # after BYOL's mock forward, which must draw as in one process (the
        view.augment.shard = (utils.rank(), utils.world_size())  # projector is made after it)
    optimizer, scheduler = build_optimizer(learner, args, steps_per_epoch)
    print(f"{len(bank)} images of {tuple(bank.images.shape[1:])}, {steps_per_epoch} steps/epoch")
    utils.print_run_header(args, device, args.batch_size, args.lr)

    # ---- resume
    start_epoch, best_loss, best_epoch = 1, math.inf, 0
    if args.resume:
        start_epoch, best_loss, best_epoch = utils.resume_run(out, learner, optimizer, scheduler,
                                                              best_metric=best_loss)
    if args.compile:  # in place: state_dict keys and the avgpool hook stay as they are
        for module in (learner.online_encoder, learner.target_encoder, learner.online_predictor):
            module.compile()
    model = utils.distribute_model(learner, device)  # DDP + SyncBatchNorm under torchrun

    # ---- loop: a signal stops after the current step (last.pth = last completed epoch)
    with utils.StopOnSignal(out) as stop:
        for epoch in range(start_epoch, args.epochs + 1):
            model.train()
            order, views_rng = utils.epoch_generators(args.seed, epoch, device)  # replayable
            for view in views:
                view.augment.generator = views_rng
            batches = utils.index_batches(len(bank), rank_batch, generator=order,
                                          device=bank.device, rank=utils.rank(),
                                          world_size=utils.world_size())
            loss_sum = torch.zeros((), device=device)  # summed on the device, synced once an epoch
            t0 = time.perf_counter()
            bar = tqdm(batches, total=steps_per_epoch, leave=False, desc=f"epoch {epoch}",
                       disable=not utils.is_main_process())
            for step, idx in enumerate(bar):
                decay = ema_decay((epoch - 1) * steps_per_epoch + step, total_steps,
                                  args.ema_decay, args.ema_schedule)
                loss_sum += train_step(model, bank.batch(idx), optimizer, scheduler, decay,
                                       device, args.amp)
                if stop:
                    stop.check(epoch - 1)
                if args.log_every and (step + 1) % args.log_every == 0:
                    bar.set_postfix(loss=f"{loss_sum.item() / (step + 1):.4f}")
            loss = utils.all_reduce(loss_sum, mean=True).item() / steps_per_epoch
            seconds = time.perf_counter() - t0
            utils.check_finite(loss, epoch, steps_per_epoch)
            is_best = loss < best_loss
            if is_best:
                best_loss, best_epoch = loss, epoch
            if utils.is_main_process():
                record = {"epoch": epoch, "loss": loss, "lr": optimizer.param_groups[0]["lr"],
                          "ema_decay": decay,
                          "images_per_s": steps_per_epoch * args.batch_size / seconds,
                          "seconds": seconds}
                if banks and (epoch % args.knn_every == 0 or epoch == args.epochs):
                    record["knn_acc"] = knn_probe(learner, banks, args, device)
                utils.append_jsonl(out / "log.jsonl", record)
                print(f"epoch {epoch}/{args.epochs} loss {loss:.4f} lr {record['lr']:.2e} "
                      f"ema {decay:.4f} | {record['images_per_s']:.1f} img/s, {seconds:.1f} s"
                      + (f" | knn acc {record['knn_acc']:.4f}" if "knn_acc" in record else ""))
                if is_best:
                    utils.save_checkpoint(out / "best.pth", learner, epoch=epoch,
                                          best_metric=loss, args=args)
                    if args.export == "best":
                        save_backbone(learner.net, out / "backbone.pth")
                utils.save_checkpoint(out / "last.pth", learner, optimizer, scheduler,
                                      epoch=epoch, best_metric=best_loss, args=args,
                                      best_epoch=best_epoch)
                utils.plot_curves(utils.read_jsonl(out / "log.jsonl"), ["loss", "knn_acc"],
                                  out / "loss.png", title="BYOL pre-training")
            stop.check(epoch)

    if not utils.is_main_process():
        return out
    if args.export == "last" or not (out / "backbone.pth").exists():
        save_backbone(learner.net, out / "backbone.pth")
    print(f"lowest loss {best_loss:.4f} at epoch {best_epoch}; backbone.pth is the "
          f"{args.export} epoch's -> {out / 'backbone.pth'}")
    return out


if __name__ == "__main__":
    main(get_args_parser().parse_args())
