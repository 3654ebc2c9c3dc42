"""Self-supervised pre-training of a ResNet50 on Mini-ImageNet with BYOL (Problem 1, step 1).

A torchvision resnet50(weights=None) is wrapped in byol-pytorch's BYOL (hidden layer `avgpool`,
simplicial embeddings off). `--recipe report` (the default, recipes.py) is the report's run:
AdamW lr 1e-3 with weight decay 0.01 on every parameter, batch 256, 300 epochs at a constant
lr, fp32, 128 px, and its views: the report's augmentation list (RandomResizedCrop(128) scale
0.08-1, horizontal flip, ColorJitter(0.2, 0.2, 0.2, 0.2) always, ImageNet normalisation) drawn
once per image, so that both views share it, then byol-pytorch's default augmentation drawn
once per batch for each view on top, as its code did (its Dataset ran the list, BYOL.forward
made both views from that one tensor). `--recipe
strong`: 1000 epochs of batch 512, Adam 1e-4 with warm-up and cosine, the BYOL paper's
asymmetric views and an EMA decay rising to 1 (`--target simsiam` for a stop-gradient target).
Images live in one uint8 bank on the training device and each view is augmented per sample
there (augment.ClassificationAugment), so no DataLoader workers are involved.

    # the report's recipe
    python3 p1_pretrain_byol.py --data-dir hw1_data/p1_data/mini/train --output-dir runs/byol
    # the strongest known run, with a k-NN probe on Office-Home every 20 epochs
    python3 p1_pretrain_byol.py --data-dir hw1_data/p1_data/mini/train --output-dir runs/byol \\
        --recipe strong --knn-every 20 --knn-data-dir hw1_data/p1_data/office
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
completed epoch and --resume redoes the interrupted one (training.StopOnSignal).
"""

import contextlib
import io
import math
import time
from pathlib import Path

import byol_pytorch.byol_pytorch as byol_lib
import torch
import torch.nn.functional as F
import torchvision
import torchvision.transforms as T
from byol_pytorch import BYOL
from tqdm import tqdm

import augment
import cli
import data
import distributed
import errors
import recipes
import records
import training
import utils
from p1_common import ARCH_HELP, ARCHS, load_office, run_batches

BYOL_JITTER = dict(jitter=(0.4, 0.4, 0.2, 0.1), p_jitter=0.8, p_gray=0.2)
VIEWS = {  # --aug: keyword arguments of augment.ClassificationAugment for view 1 and view 2
    "report": ({}, {}),  # ClassificationAugment's defaults are the report's list
    # the report's list drawn ONCE per image for both views (SharedDraw), its ColorJitter in a
    # random order per image (exact), then byol-pytorch's default augmentation (lib_augment)
    # drawn per batch for each view
    "report+lib": ({"exact": True}, {"exact": True}),
    "byol": ({**BYOL_JITTER, "p_blur": 1.0, "p_solarize": 0.0},  # BYOL paper, table 6
             {**BYOL_JITTER, "p_blur": 0.1, "p_solarize": 0.2}),
}


def get_args_parser():
    parser = recipes.RecipeParser(
        "p1_pretrain_byol", "p1_pretrain_byol", formatter_class=cli.HelpFormatter,
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
    train.add_argument("--arch", default="resnet50", choices=list(ARCHS), help=ARCH_HELP)
    train.add_argument("--bank-size", default=None, type=int,
                       help="resize images to this square side when loading (both recipes: 128, "
                       "the report's Resize((128, 128)); unset: the native size, 84x84 for mini)")
    train.add_argument("--lr", default=1e-3, type=float,
                       help="AdamW learning rate (report 1e-3; long public runs used ~3e-4)")
    train.add_argument("--weight-decay", default=0.01, type=float,
                       help="AdamW weight decay, on conv/linear weights only, unless --decay-all")
    train.add_argument("--decay-all", action=cli.BooleanFlag, default=False,
                       help="weight decay on biases and BatchNorm too, as "
                       "AdamW(learner.parameters()) does (the report's code)")
    train.add_argument("--schedule", default="constant", choices=["constant", "cosine"],
                       help="lr after warm-up: constant (report) or cosine to 0")
    train.add_argument("--warmup-epochs", default=0, type=float,
                       help="linear lr warm-up; 10 is typical with --schedule cosine")
    train.add_argument("--aug", default="report", choices=list(VIEWS),
                       help="report: the report's list drawn independently for each view, per "
                       "sample; report+lib: what the report's code did: the list drawn once per "
                       "image (both views share its crop, flip and jitter), then byol-pytorch's "
                       "default augmentation drawn once per batch for each view; byol: the BYOL "
                       "paper's "
                       "asymmetric views (blur 1.0/0.1, solarize 0/0.2, jitter 0.4,0.4,0.2,0.1 "
                       "p=0.8, grayscale 0.2)")
    train.add_argument("--target", default="ema", choices=["ema", "simsiam"],
                       help="ema: BYOL's moving-average target; simsiam: the online network "
                       "under stop-gradient (byol-pytorch use_momentum=False)")
    train.add_argument("--ema-decay", default=0.99, type=float,
                       help="target EMA decay (byol-pytorch's default 0.99; the paper's 0.996 "
                       "is for ~4000-image batches)")
    train.add_argument("--ema-schedule", default="constant", choices=["constant", "cosine"],
                       help="cosine: decay rises from --ema-decay to 1 over training")
    train.add_argument("--projection-size", default=256, type=int,
                       help="BYOL projector/predictor output (byol-pytorch default)")
    train.add_argument("--projection-hidden-size", default=4096, type=int,
                       help="hidden width of projector and predictor (byol-pytorch default)")
    training.add_drop_last_arg(train)
    train.add_argument("--export", default="best", choices=["best", "last"],
                       help="backbone.pth from the lowest-loss epoch (report) or the last one")
    train.add_argument("--holdout", default=0.0, type=float,
                       help="keep this fraction of the images out of training and pick the best "
                       "epoch by their BYOL loss (pha123661's run: 0.1); 0: by the training loss")

    probe = parser.add_argument_group("k-NN probe (optional)")
    probe.add_argument("--knn-every", default=0, type=int,
                       help="every N epochs (and at the end), k-NN accuracy of frozen avgpool "
                       "features, Office-Home train -> val; 0 = off")
    cli.old_name(probe, "--knn-data", probe.add_argument(
        "--knn-data-dir", dest="knn_data", default=None, type=Path,
        help="Office-Home folder with train.csv/val.csv for the probe"))
    probe.add_argument("--knn-k", default=20, type=int, help="neighbours that vote")

    run = parser.add_argument_group("run")
    run.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR/last.pth")
    run.add_argument("--overwrite", action="store_true", help="start again in a used folder")
    training.add_hardware_args(run, compile_help="torch.compile the encoders and the predictor")
    run.add_argument("--max-images", default=None, type=int,
                     help="a random subset of N images, drawn with --seed (the same N and "
                     "seed give the same images), as in every script; for smoke runs")
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
    paths = data.list_images(data_dir)
    if args.max_images is not None and args.max_images < len(paths):
        keep = torch.randperm(len(paths), generator=torch.Generator().manual_seed(args.seed))
        paths = [paths[i] for i in sorted(keep[:args.max_images].tolist())]
    return paths


class SharedDraw:
    """One per-sample augmentation drawn once for both views of a batch: the report's Dataset ran
    its list once per image, and byol-pytorch's BYOL.forward made both views from that one tensor
    (augment1(x), augment2(x) on the same x). The first view to see a batch draws; the second
    gets the same tensor, once: the next forward draws again, even on the same tensor.
    `generator` and `shard` are the wrapped augmentation's."""

    def __init__(self, augment):
        self.augment = augment
        self._pending = None  # (input batch, its draw), until the second view has taken it

    def __call__(self, x):
        if self._pending is not None and self._pending[0] is x:
            out, self._pending = self._pending[1], None  # the second view: the same draw
            return out
        out = self.augment(x)  # the first view of a batch draws; a new forward draws again
        self._pending = (x, out)
        return out

    generator = property(lambda self: self.augment.generator,
                         lambda self, value: setattr(self.augment, "generator", value))
    shard = property(lambda self: self.augment.shard,
                     lambda self, value: setattr(self.augment, "shard", value))


class View:
    """One BYOL view: per-sample augmentation of a uint8 batch (B, 3, H, W) on its device, in fp32
    even inside the bf16 autocast of the step, returned in the model's memory format."""

    then = None  # a batch-level augmentation applied after the per-sample one (--aug report+lib)

    def __init__(self, augment, memory_format):
        self.augment, self.memory_format = augment, memory_format

    def __call__(self, x):
        with torch.autocast(x.device.type, enabled=False):
            x = self.augment(x)  # (B, 3, S, S), normalised
            if self.then is not None:
                x = self.then(x)
            return x.contiguous(memory_format=self.memory_format)


def lib_augment(image_size, device="cpu"):
    """byol-pytorch 0.9.1's default augmentation (BYOL.__init__'s DEFAULT_AUG, built here as it
    builds it): torchvision transforms on the whole batch tensor, so one random draw per batch.
    The report's code applied it on top of its own, already normalised, dataset views. Its
    Normalize constants live on `device`: CPU ones would be copied over at every call, each
    copy a wait for the GPU."""
    return torch.nn.Sequential(
        byol_lib.RandomApply(T.ColorJitter(0.8, 0.8, 0.8, 0.2), p=0.3),
        T.RandomGrayscale(p=0.2),
        T.RandomHorizontalFlip(),
        byol_lib.RandomApply(T.GaussianBlur((3, 3), (1.0, 2.0)), p=0.2),
        T.RandomResizedCrop((image_size, image_size)),
        T.Normalize(mean=torch.tensor(augment.IMAGENET_MEAN, device=device),
                    std=torch.tensor(augment.IMAGENET_STD, device=device)))


def build_views(aug, image_size, device):
    """The two views of --aug; with report+lib both start from one SharedDraw."""
    fmt = utils.memory_format(device)
    if aug == "report+lib":
        shared = SharedDraw(augment.ClassificationAugment(image_size, **VIEWS[aug][0]))
        views = [View(shared, fmt), View(shared, fmt)]
        for view in views:
            view.then = lib_augment(image_size, device)
        return tuple(views)
    return tuple(View(augment.ClassificationAugment(image_size, **kw), fmt) for kw in VIEWS[aug])


@contextlib.contextmanager
def plain_batchnorm():
    """byol-pytorch makes the BatchNorm of its projector and predictor an nn.SyncBatchNorm by
    itself whenever a process group exists, and runs a forward inside BYOL.__init__, which
    nn.SyncBatchNorm refuses on CPU. Build with plain BatchNorm1d instead; under torchrun
    distributed.distribute_model then converts every BatchNorm of the learner (ResNet, projector,
    predictor, target) the same way on CPU and CUDA."""
    saved = byol_lib.MaybeSyncBatchnorm
    byol_lib.MaybeSyncBatchnorm = lambda is_distributed=None: torch.nn.BatchNorm1d
    try:
        yield
    finally:
        byol_lib.MaybeSyncBatchnorm = saved


def build_learner(args, device, views=None):
    """BYOL around resnet50(weights=None) (--arch); views=None keeps byol-pytorch's default
    augmentation.
    BYOL's __init__ runs one mock forward (2 random images), which also creates the target.

    The ResNet's fc is not on BYOL's path (the hidden layer is avgpool), so it never gets a
    gradient: it is frozen, which lets DistributedDataParallel expect none (AdamW skipped it
    anyway; backbone.pth still holds it, at its initial values)."""
    net = getattr(torchvision.models, args.arch)(weights=None).to(device)
    net.fc.requires_grad_(False)
    with plain_batchnorm():
        learner = BYOL(net, image_size=args.image_size, hidden_layer="avgpool",
                       projection_size=args.projection_size,
                       projection_hidden_size=args.projection_hidden_size,
                       augment_fn=views[0] if views else None,
                       augment_fn2=views[1] if views else None,
                       moving_average_decay=args.ema_decay, use_simplicial_embeddings=False,
                       use_momentum=args.target == "ema")
    return learner.to(device, memory_format=utils.memory_format(device))


def build_optimizer(learner, args, steps_per_epoch):
    # the target has no trainable parameters; no decay on biases/BatchNorm; fused on CUDA
    optimizer = training.make_optimizer(learner.parameters(), "adamw", args.lr, args.weight_decay,
                                        next(learner.parameters()).device,
                                        decay_all=args.decay_all)
    scheduler = training.make_lr_scheduler(optimizer, args.schedule, args.epochs * steps_per_epoch,
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
    if not getattr(learner, "use_momentum", True):  # --target simsiam: the online network is it
        return
    online = list(learner.online_encoder.parameters())
    target = list(learner.target_encoder.parameters())
    torch._foreach_lerp_(target, online, 1.0 - decay)


def train_step(learner, x, optimizer, decay, device, amp=True, scaler=None, micro=None):
    """One BYOL step on a uint8 batch (B, 3, H, W) on the device -> the loss, still on the device.
    BYOL.forward augments x twice itself and runs 2B images through each encoder. `learner` may
    be wrapped in DistributedDataParallel; the EMA acts on the plain learner, once per step.
    `micro` (training.MicroBatch) splits the step; each micro-batch's mean loss counts for its
    share of the batch (the projector's BatchNorm then sees the micro-batches)."""
    def loss_of(start, stop):
        with utils.autocast(device, amp):
            return learner(x[start:stop]) * ((stop - start) / len(x)), None

    loss, _ = training.optimizer_step(learner, optimizer, len(x), loss_of, micro, scaler=scaler)
    update_target(utils.unwrap_model(learner), decay)
    return loss


def train_one_epoch(model, optimizer, scheduler, train, args, device, epoch, stop=None):
    """One epoch over train = (bank, views, steps per epoch, total steps, GradScaler,
    MicroBatch) -> {loss, ema_decay}.
    Data order and both views' augmentations come from (seed, epoch) alone, so --resume replays
    the epoch; under torchrun each rank takes its share of the global --batch-size."""
    bank, views, steps_per_epoch, total_steps, scaler, micro = train
    model.train()
    order, views_rng = distributed.epoch_generators(args.seed, epoch, device)  # replayable
    for view in views:
        view.augment.generator = views_rng
    batches = training.train_batches(len(bank), args.batch_size, args, order, bank.device)
    loss_sum = torch.zeros((), device=device)  # summed on the device, synced once an epoch
    bar = tqdm(batches, total=steps_per_epoch, leave=False, desc=f"epoch {epoch}",
               disable=not distributed.is_main_process())
    decay = args.ema_decay
    for step, idx in enumerate(bar):
        decay = ema_decay((epoch - 1) * steps_per_epoch + step, total_steps, args.ema_decay,
                          args.ema_schedule)
        loss_sum += train_step(model, bank.batch(idx), optimizer, decay, device, args.amp,
                               scaler, micro)
        scheduler.step()
        if stop:
            stop.check(epoch - 1)
        if args.log_every and (step + 1) % args.log_every == 0:
            bar.set_postfix(loss=f"{loss_sum.item() / (step + 1):.4f}")
    loss = distributed.all_reduce(loss_sum, mean=True).item() / steps_per_epoch
    training.check_finite(loss, epoch, steps_per_epoch)
    return {"loss": loss, "ema_decay": decay}


def save_backbone(net, path):
    """The bare torchvision ResNet50 state_dict (format of pretrain_model_SL.pt), CPU and
    contiguous (channels_last undone), written atomically."""
    state = utils.unwrap_model(net).state_dict()
    state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    buf = io.BytesIO()
    torch.save(state, buf)
    records.atomic_write_bytes(path, buf.getvalue())


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


@torch.no_grad()
def holdout_loss(model, bank, args, device):
    """The BYOL loss of the held-out images (mean over all ranks), in eval mode (BatchNorm's
    running statistics; nothing is updated), with the same view draws at every epoch (seeded
    by --seed), so that epochs are compared on the same views."""
    learner = utils.unwrap_model(model)
    generator = torch.Generator(bank.device).manual_seed(args.seed)
    for view in (learner.augment1, learner.augment2):
        view.augment.generator = generator
    learner.eval()
    total, count = torch.zeros((), device=device), 0
    batch = distributed.shard_batch(min(args.batch_size, len(bank)))
    for idx in data.index_batches(len(bank), batch, shuffle=False, drop_last=False,
                                  device=bank.device, rank=distributed.rank(),
                                  world_size=distributed.world_size()):
        with utils.autocast(device, args.amp):
            total += learner(bank.batch(idx)).float() * len(idx)
        count += len(idx)
    learner.train()
    sums = distributed.all_reduce(torch.stack([total.double(),
                                               torch.tensor(float(count), device=device,
                                                            dtype=torch.float64)]))
    return (sums[0] / sums[1].clamp(min=1)).item()


def knn_probe(learner, banks, args, device):
    """k-NN accuracy of the online avgpool features (B, 2048; 512 for resnet18) at the
    evaluation view."""
    learner.eval()
    view = augment.ClassificationAugment(args.image_size, train=False)
    embed = lambda x: learner(x, return_embedding=True, return_projection=False)
    feats = [run_batches(embed, bank, view, 256, device, args.amp) for bank, _ in banks]
    learner.train()
    return knn_accuracy(feats[0], banks[0][1], feats[1], banks[1][1], args.knn_k)


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------
def main(args):
    if args.epochs < 1:
        raise errors.UserError(f"--epochs must be at least 1, not {args.epochs}")
    if args.batch_size < 2:
        raise errors.UserError("--batch-size must be at least 2 (BatchNorm in the projector)")
    if args.knn_every and args.knn_data is None:
        raise errors.UserError("--knn-every needs --knn-data-dir OFFICE_DIR (train.csv + val.csv)")
    # this rank's device under torchrun
    device = distributed.init_distributed(utils.get_device(args.device))
    distributed.shard_batch(args.batch_size)  # the global --batch-size must split over ranks
    utils.setup_precision(device, args.amp)
    utils.seed_everything(args.seed, args.deterministic)
    out = distributed.on_main_process(training.prepare_output_dir, args.output_dir, args,
                                      args.resume, args.overwrite)

    # ---- data: the whole folder as one uint8 bank on the training device
    bank = data.ImageBank.from_paths(mini_paths(args), size=args.bank_size,
                                      cache_dir=args.cache_dir, progress=True,
                                      size_flag="--bank-size").to(device)
    holdout = None
    if args.holdout > 0:  # a seeded split: the same images are held out on every rank and resume
        order = torch.randperm(len(bank), generator=torch.Generator().manual_seed(args.seed))
        cut = max(1, round(args.holdout * len(bank)))
        held, kept = order[:cut].sort().values, order[cut:].sort().values
        holdout = data.ImageBank(bank.images[held.to(bank.device)])
        bank = data.ImageBank(bank.images[kept.to(bank.device)])
    if len(bank) < args.batch_size:
        raise errors.UserError(f"{len(bank)} images for --batch-size {args.batch_size}; lower it")
    steps_per_epoch = training.steps_per_epoch(len(bank), args.batch_size, args)
    total_steps = args.epochs * steps_per_epoch
    banks = None
    if args.knn_every and distributed.is_main_process():  # rank 0 alone probes and logs
        banks = [load_office(args.knn_data, split, args.image_size, device, args.cache_dir)
                 for split in ("train", "val")]

    # ---- learner, optimizer
    views = build_views(args.aug, args.image_size, device)
    learner = build_learner(args, device, views)
    # after BYOL's mock forward, which must draw as in one process (the projector is made then)
    for view in views:
        view.augment.shard = (distributed.rank(), distributed.world_size())
    optimizer, scheduler = build_optimizer(learner, args, steps_per_epoch)
    print(f"{len(bank)} images of {tuple(bank.images.shape[1:])}, {steps_per_epoch} steps/epoch")
    training.print_run_header(args, device, args.batch_size, args.lr)

    # ---- resume
    scaler = utils.grad_scaler(device, args.amp)
    ckpts = training.Checkpoints(out, args, "byol", learner, optimizer, scheduler,
                                 "holdout_loss" if holdout is not None else "loss", mode="min",
                                 scaler=scaler)
    start_epoch = ckpts.resume() if args.resume else 1
    if args.compile:  # in place: state_dict keys and the avgpool hook stay as they are
        for module in (learner.online_encoder, learner.target_encoder, learner.online_predictor):
            module.compile()
    model = distributed.distribute_model(learner, device)  # DDP + SyncBatchNorm under torchrun
    micro = training.MicroBatch(args.micro_batch, device, smallest=2)  # BatchNorm: 2 or more
    train = (bank, views, steps_per_epoch, total_steps, scaler, micro)

    # ---- loop: a signal stops after the current step (last.pth = last completed epoch)
    curves = records.LiveCurves(out / "log.jsonl", out / "loss.png", ["loss", "knn_acc"],
                                title="BYOL pre-training")
    with training.StopOnSignal(out) as stop, curves:
        for epoch in range(start_epoch, args.epochs + 1):
            t0 = time.perf_counter()
            stats = train_one_epoch(model, optimizer, scheduler, train, args, device, epoch,
                                    stop)
            seconds = time.perf_counter() - t0
            record = {"epoch": epoch, **stats, "lr": optimizer.param_groups[0]["lr"],
                      "images_per_s": min(len(bank), steps_per_epoch * args.batch_size)
                                      / seconds,
                      "seconds": seconds, "micro_batch": micro.size}  # None: whole batches
            if holdout is not None:
                record["holdout_loss"] = holdout_loss(model, holdout, args, device)
            if banks and (epoch % args.knn_every == 0 or epoch == args.epochs):
                record["knn_acc"] = knn_probe(learner, banks, args, device)
            is_best = ckpts.end_epoch(epoch, record)
            if distributed.is_main_process():
                print(f"epoch {epoch}/{args.epochs} loss {record['loss']:.4f} lr "
                      f"{record['lr']:.2e} ema {record['ema_decay']:.4f} | "
                      f"{record['images_per_s']:.1f} img/s, {seconds:.1f} s"
                      + (f" | knn acc {record['knn_acc']:.4f}" if "knn_acc" in record else ""))
                if is_best and args.export == "best":
                    save_backbone(learner.net, out / "backbone.pth")
                curves.epoch_done()
            stop.check(epoch)
    best_loss, best_epoch = ckpts.best, ckpts.best_epoch

    if not distributed.is_main_process():
        return out
    if args.export == "last" or not (out / "backbone.pth").exists():
        save_backbone(learner.net, out / "backbone.pth")
    print(f"lowest loss {best_loss:.4f} at epoch {best_epoch}; backbone.pth is the "
          f"{args.export} epoch's -> {out / 'backbone.pth'}")
    return out


if __name__ == "__main__":
    cli.run(main, get_args_parser())
