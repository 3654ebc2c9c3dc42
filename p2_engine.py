"""The one training loop of Problem 2 (validation, losses, figures), run by both training scripts.

p2_train_fcn32s.py (model A) and p2_train_deeplabv3.py (model B) hold only their model, their
own flags and a call to `train(args)`; the models are in p2_common.py. Commands:

    python p2_train_fcn32s.py --data-dir hw1_data/p2_data --output-dir runs/p2_fcn32s
    python p2_train_deeplabv3.py --data-dir hw1_data/p2_data --output-dir runs/p2_deeplabv3
    python p2_train_deeplabv3.py --data-dir hw1_data/p2_data --output-dir runs/p2_deeplabv3 --resume
    python p2_train_deeplabv3.py --data-dir hw1_data/p2_data --output-dir /tmp/smoke \
        --overwrite --arch mobilenet_v3_large --no-pretrained --epochs 2 --max-train 16 \
        --max-val 8 --image-size 128
    # 4 GPUs: --batch-size stays the global batch (4 x 4 here), BatchNorm is synchronised,
    # validation is sharded and summed, rank 0 writes (utils.py, "distributed")
    torchrun --nproc_per_node=4 p2_train_deeplabv3.py --data-dir hw1_data/p2_data \
        --output-dir runs/p2_deeplabv3 --batch-size 16

Ctrl-C or SIGTERM stops a run after the current step (exit 130 / 143, one line on how to
resume); last.pth holds the last completed epoch and --resume redoes the interrupted one with
the same data order and augmentations (training.StopOnSignal, distributed.epoch_generators).

A run directory holds:
    args.json, log.jsonl      the flags; one JSON line per epoch (train_loss, val_miou, val_iou
                              per class, lr, images_per_s, seconds)
    curves.png                train loss, val mIoU and lr against epoch
    snapshots.png             validation images --snapshot-ids: image, truth, prediction at
                              epochs 1, n//2 and n (redrawn from snapshots/epoch_XXX.npz, which
                              every epoch writes, so a resumed run draws the same figure)
    best.pth                  the model of the best val mIoU (model + args, no optimizer)
    epoch_XXX.pth             the model at epochs 1, n//2 and n (model + args)
    last.pth                  model, optimizer, scheduler of the last epoch: what --resume reads

Training data live on the training device as uint8 ImageBanks (2,000 x 512 x 512 images + masks
are 2.1 GB); each step indexes a batch there and augments it there (augment.SegmentationAugment),
so no DataLoader and no host copy sits in the step.
"""

import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

import cli
import p2_common
import training
from augment import SegmentationAugment
from data import (
    CLASS_NAMES,
    NUM_CLASSES,
    PALETTE,
    SCORED_CLASSES,
    ImageBank,
    index_batches,
    list_sat_pairs,
    subset,
)
from distributed import (
    all_reduce,
    distribute_model,
    epoch_generators,
    init_distributed,
    is_main_process,
    merge_across_ranks,
    on_main_process,
    rank,
    shard_batch,
    world_size,
)
from errors import UserError
from metrics import ConfusionMatrix
from p2_common import main_logits, predict
from records import LiveCurves, save_figure
from training import (
    Checkpoints,
    StopOnSignal,
    add_hardware_args,
    check_finite,
    make_lr_scheduler,
    prepare_output_dir,
    print_run_header,
)
from utils import (
    autocast,
    get_device,
    grad_scaler,
    memory_format,
    seed_everything,
    setup_precision,
)


def add_common_args(parser):
    """Flags of both training scripts; each script sets its own defaults with set_defaults."""
    g = parser.add_argument_group("data and run")
    g.add_argument("--data-dir", type=Path, default=Path("hw1_data/p2_data"),
                   help="the p2_data folder holding train/ and validation/ (xxxx_sat.jpg + "
                        "xxxx_mask.png)")
    g.add_argument("--output-dir", type=Path, default=None,
                   help="run directory (default runs/p2_<model>); refused if it holds a run, "
                        "unless --resume or --overwrite")
    g.add_argument("--resume", action="store_true",
                   help="continue the run in --output-dir from its last.pth (epoch, optimizer, "
                        "scheduler, best mIoU); --epochs may be raised")
    g.add_argument("--overwrite", action="store_true", help="start again in a used --output-dir")
    g.add_argument("--max-images", type=int, default=None,
                   help="a random subset of N training and N validation pairs, drawn with "
                        "--seed (the same N and seed give the same pairs), as in every "
                        "script; for smoke runs. --max-train / --max-val set one split alone")
    g.add_argument("--max-train", type=int, default=None,
                   help="--max-images for the training split only")
    g.add_argument("--max-val", type=int, default=None,
                   help="--max-images for the validation split only")
    g.add_argument("--cache-dir", type=Path, default=None,
                   help="keep the decoded image banks here (.npy) so the next run starts at once")
    g.add_argument("--workers", type=int, default=None, help="threads decoding images")
    g.add_argument("--snapshot-ids", nargs="*", default=["0013", "0062", "0104"],
                   help="validation ids drawn in snapshots.png (ids missing from the set are "
                        "skipped)")

    g = parser.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=100, help="training epochs (passes over train/)")
    g.add_argument("--batch-size", type=int, default=8, help="training images per step")
    training.add_drop_last_arg(g)
    cli.old_name(g, "--val-batch-size", g.add_argument(
        "--eval-batch-size", type=int, default=16,
        help="validation images per forward, at full resolution"))
    g.add_argument("--image-size", type=int, default=512,
                   help="side the training crops are resized to (validation runs at the "
                        "images' own size, so a value below it also shrinks the training scale)")
    g.add_argument("--min-scale", type=float, default=0.5,
                   help="random crops cover [min-scale, 1] of the image side, resized to "
                        "--image-size; 1 turns the scale-crop off")
    g.add_argument("--augment", action=cli.BooleanFlag, default=True,
                   help="the augmentations below, image and mask jointly (--no-augment: none)")
    g.add_argument("--rot90", type=float, default=0.75,
                   help="probability of a quarter turn, 90, 180 or 270 degrees alike (the "
                        "report's code turns by one of 0/90/180/270 with p 0.5: 0.375)")
    g.add_argument("--rotate", type=float, default=0.0,
                   help="random rotation in [-DEG, DEG]; uncovered corners are black / Unknown")
    g.add_argument("--color", type=float, default=0.0,
                   help="with p 0.5, brightness/contrast/saturation factors in [1-C, 1+C]")
    g.add_argument("--exact-aug", action=cli.BooleanFlag, default=False,
                   help="the report's code exactly: whole-degree rotation angles and the image "
                        "rotated by nearest neighbour (slower on a GPU: the recipes' report "
                        "turns it on, strong keeps the fast bilinear path)")
    g.add_argument("--optimizer", choices=["sgd", "adamw", "adam"], default="sgd",
                   help="fused on CUDA; adam's weight decay is an L2 term in the gradient")
    g.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (after warm-up)")
    g.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    g.add_argument("--betas", type=str, default="",
                   help="Adam(W) betas as B1,B2 (empty: torch's 0.9,0.999)")
    g.add_argument("--weight-decay", type=float, default=5e-4,
                   help="on weights only, unless --decay-all")
    g.add_argument("--decay-all", action=cli.BooleanFlag, default=False,
                   help="weight decay on biases and norm parameters too, as "
                        "AdamW(model.parameters()) does")
    g.add_argument("--clip-grad", type=float, default=0.0,
                   help="clip the gradient's global norm to this (0: off)")
    g.add_argument("--schedule", choices=["poly", "cosine", "constant", "plateau"], default="poly",
                   help="per-step decay after warm-up: poly (1-t)^0.9 or half a cosine, to 0; "
                        "constant; plateau: x0.5 once 6 epochs in a row bring no new best val "
                        "mIoU (ReduceLROnPlateau: patience 5, relative threshold 1e-4)")
    g.add_argument("--warmup-epochs", type=float, default=1.0,
                   help="linear warm-up from lr/warmup_steps to lr over this many epochs")
    g.add_argument("--loss", choices=["ce", "weighted-ce", "focal", "weighted-focal"], default="ce",
                   help="weighted-*: median-frequency class weights from the train masks "
                        "(lifts rare classes such as Rangeland); focal: (1 - exp(-ce))^gamma * "
                        "ce with ce the class-weighted cross-entropy of each pixel, averaged "
                        "over the pixels (the report's code; without weights the usual focal "
                        "loss)")
    g.add_argument("--focal-gamma", type=float, default=2.0,
                   help="focusing exponent of the focal losses")
    g.add_argument("--focal-alpha", type=float, default=1.0,
                   help="a constant factor of the whole focal loss, the same for every class "
                        "(Bob08082002's run: 0.25); per-class factors are --class-weights")
    g.add_argument("--class-weights", type=str, default="",
                   help="fixed per-class loss weights W0,...,W6 (e.g. 1,1,5,1,1,1,2 lifts "
                        "Rangeland); empty: none, or median frequency with --loss weighted-*")

    g = add_hardware_args(parser.add_argument_group("hardware"),
                          "torch.compile the model (first epoch slower, later ones faster)")
    g.add_argument("--pretrained", action=cli.BooleanFlag, default=True,
                   help="start from pretrained weights (from the torch cache, filled by "
                        "`bash hw1_download.sh`); --no-pretrained: random init, nothing downloads")
    return parser


def load_split(folder, max_n=None, cache_dir=None, workers=None, seed=0):
    """ids, image bank (N, 3, H, W) uint8 and mask bank (N, H, W) class indices of one split;
    max_n: a random subset drawn with `seed` (--max-images, data.subset)."""
    pairs = subset(list_sat_pairs(folder), max_n, seed)
    ids = [i for i, _, _ in pairs]
    images = ImageBank.from_paths([s for _, s, _ in pairs], kind="image", cache_dir=cache_dir,
                                  workers=workers, progress=True)
    masks = ImageBank.from_paths([m for _, _, m in pairs], kind="mask", cache_dir=cache_dir,
                                 workers=workers, progress=True)
    if images.images.shape[-2:] != masks.images.shape[-2:]:
        raise UserError(f"{folder}: images are {tuple(images.images.shape[-2:])} but masks "
                        f"{tuple(masks.images.shape[-2:])}; each mask must match its image")
    return ids, images, masks


def median_frequency_weights(masks, num_classes=NUM_CLASSES, scored=SCORED_CLASSES):
    """Class weights by median-frequency balancing (Eigen & Fergus 2015), from (N, H, W) masks.

    freq_c = pixels of class c / pixels of the images in which c occurs;
    w_c = median(freq over the scored classes present) / freq_c, clamped to [0.1, 10].
    Unknown (not scored) and classes absent from the masks get weight 1: lifting Unknown would
    only move pixels away from the scored classes. Returns a float32 (num_classes,) tensor.
    """
    counts = torch.zeros(num_classes, dtype=torch.float64, device=masks.device)
    present = torch.zeros(num_classes, dtype=torch.float64, device=masks.device)
    for start in range(0, masks.shape[0], 16):  # per-image counts, 16 images at a time
        m = masks[start:start + 16].reshape(min(16, masks.shape[0] - start), -1).long()
        offset = torch.arange(m.shape[0], device=m.device).unsqueeze(1) * num_classes
        per_image = torch.bincount((m + offset).reshape(-1),
                                   minlength=m.shape[0] * num_classes).view(-1, num_classes)
        counts += per_image.sum(0).double()
        present += (per_image > 0).double().sum(0) * m.shape[1]
    freq = (counts / present.clamp(min=1)).cpu()
    weights = torch.ones(num_classes, dtype=torch.float64)
    seen = freq[:scored] > 0
    if seen.any():
        median = freq[:scored][seen].quantile(0.5)  # mean of the middle two for an even count
        weights[:scored] = torch.where(seen, median / freq[:scored].clamp(min=1e-12),
                                       torch.ones(scored, dtype=torch.float64))
    return weights.clamp(0.1, 10.0).float()


def segmentation_loss(logits, target, weight=None, gamma=0.0, total=None):
    """Pixel-wise cross-entropy (gamma=0) or focal loss (gamma > 0), computed in fp32.

    logits (B, C, H, W) any dtype, target (B, H, W) int64, weight (C,) on the logits' device.
    Cross-entropy is F.cross_entropy's: with class weights a weighted mean, sum(w_t * l) /
    sum(w_t), the sum of the weights taken over the global batch under torchrun. Focal loss is
    the report's code (stann37 p2_DeepLab.py): ce = w_t * (-log p_t) (F.cross_entropy with
    weight=, reduction="none"), pt = exp(-ce), mean of (1 - pt)^gamma * ce over every pixel;
    the class weight sits inside pt, and the mean is not divided by the weights. Without class
    weights that is the usual focal loss, (1 - p_t)^gamma * (-log p_t). `total`: the normaliser
    of the whole step when the step is split into micro-batches (loss_normaliser).
    """
    logp = F.log_softmax(logits.float(), dim=1)                      # (B, C, H, W)
    ce = -logp.gather(1, target.unsqueeze(1)).squeeze(1)             # (B, H, W)
    if gamma > 0:
        if weight is not None:
            ce = ce * weight[target]
        focal = (1 - torch.exp(-ce)).clamp(min=0) ** gamma * ce
        return focal.mean() if total is None else focal.sum() / total
    if weight is None:
        return ce.mean() if total is None else ce.sum() / total
    if total is None:
        total = loss_normaliser(target, weight, gamma)
    return (ce * weight[target]).sum() / total.clamp(min=1e-12)


def loss_normaliser(target, weight=None, gamma=0.0):
    """What segmentation_loss divides by, for the targets of a whole optimizer step (a step
    split into micro-batches passes it as `total`, so that their losses add up to the step's):
    the number of pixels, or with class weights and gamma 0 the sum of the pixels' weights,
    summed over the global batch under torchrun (each rank then divides by W / ranks, which
    DDP's averaging of the gradients turns into the global weighted mean)."""
    if gamma > 0 or weight is None:
        return target.numel()
    total = weight[target].sum()
    if world_size() > 1:
        total = all_reduce(total.detach().clone(), mean=True)
    return total


def parse_floats(text, n, flag):
    """'1,1,5' -> [1.0, 1.0, 5.0] of length n ('' -> None); a wrong count is one line."""
    if not text:
        return None
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != n:
        raise UserError(f"{flag} {text!r} must be {n} comma-separated numbers")
    return values


def make_criterion(args, class_weight=None, device="cpu"):
    """loss(model output, target): main head, plus --aux-weight x the aux head when present.
    Class weights: --class-weights when given, else `class_weight` for --loss weighted-*; they
    are put on `device` here, once, so that no step copies them (a host sync on a GPU)."""
    gamma = args.focal_gamma if args.loss.endswith("focal") else 0.0
    fixed = parse_floats(getattr(args, "class_weights", ""), NUM_CLASSES, "--class-weights")
    weight = (torch.tensor(fixed) if fixed else
              class_weight if args.loss.startswith("weighted") else None)
    if weight is not None:
        weight = weight.to(device)
    alpha = getattr(args, "focal_alpha", 1.0) if gamma else 1.0
    aux_weight = getattr(args, "aux_weight", 0.0)

    def criterion(out, target, total=None):
        loss = segmentation_loss(main_logits(out), target, weight, gamma, total)
        if isinstance(out, dict) and out.get("aux") is not None and aux_weight > 0:
            loss = loss + aux_weight * segmentation_loss(out["aux"], target, weight, gamma,
                                                         total)
        return alpha * loss

    criterion.total = lambda target: loss_normaliser(target, weight, gamma)
    return criterion


def make_optimizer(model, args, device):
    """SGD (momentum), AdamW or Adam; weight decay on conv/linear weights only unless
    --decay-all; fused kernels on CUDA."""
    return training.make_optimizer(model.parameters(), args.optimizer, args.lr, args.weight_decay,
                                   device, momentum=args.momentum, decay_all=args.decay_all,
                                   betas=parse_floats(args.betas, 2, "--betas"))


@torch.no_grad()
def evaluate(model, images, masks, batch_size, device, amp=True, keep=()):
    """Confusion matrix over a whole split (on `device`), and the uint8 CPU predictions of the
    rows `keep` (for the snapshot figure) as {row: (H, W)}.

    Under torchrun each rank predicts its share of the rows (rank, rank + N, ...) with the plain
    model, then the matrices are summed and the kept predictions gathered: every rank returns
    the whole split's numbers."""
    model.eval()
    cm = ConfusionMatrix(device=device)
    kept = {}
    for idx in index_batches(len(images), batch_size, shuffle=False, drop_last=False,
                             rank=rank(), world_size=world_size()):  # CPU row numbers
        pred = predict(model, images.batch(idx), device, amp)        # (b, H, W)
        cm.update(masks.batch(idx), pred)
        for i, row in enumerate(idx.tolist()):
            if row in keep:
                kept[row] = pred[i].to(torch.uint8).cpu()
    all_reduce(cm.mat)
    return cm, merge_across_ranks(kept)


def kept_epochs(n):
    """The epochs whose model and snapshot are kept: first, middle (n//2, at least 1), last."""
    return sorted({1, max(1, n // 2), n})


def draw_snapshots(path, ids, images, truths, preds):
    """One PNG: a row per image; columns image, ground truth, then the prediction of each epoch.

    images (K, 3, H, W) uint8, truths (K, H, W) class indices, preds {epoch: (K, H, W)}.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    epochs = sorted(preds)
    cols = 2 + len(epochs)
    fig, axes = plt.subplots(len(ids), cols, figsize=(2.4 * cols, 2.4 * len(ids) + 0.9),
                             squeeze=False)
    titles = ["image", "ground truth"] + [f"epoch {e}" for e in epochs]
    for r, image_id in enumerate(ids):
        panels = [np.asarray(images[r]).transpose(1, 2, 0), PALETTE[np.asarray(truths[r], int)]]
        panels += [PALETTE[np.asarray(preds[e][r], dtype=np.int64)] for e in epochs]
        for c, (ax, panel) in enumerate(zip(axes[r], panels)):
            ax.imshow(panel, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(titles[c], fontsize=10)
        axes[r, 0].set_ylabel(image_id, fontsize=10)
    legend = [Patch(facecolor=PALETTE[c] / 255.0, edgecolor="black", label=CLASS_NAMES[c])
              for c in range(NUM_CLASSES)]
    fig.legend(handles=legend, loc="lower center", ncol=NUM_CLASSES, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.5 / (2.4 * len(ids) + 0.9), 1, 1))
    return save_figure(fig, path, dpi=150)


def redraw_snapshots(out, ids, images, truths, last_epoch, n_epochs):
    """Draw snapshots.png from the saved predictions of the kept epochs up to `last_epoch`."""
    preds = {}
    for e in kept_epochs(n_epochs):
        f = out / "snapshots" / f"epoch_{e:03d}.npz"
        if e <= last_epoch and f.exists():
            saved = np.load(f)
            if list(saved["ids"]) == list(ids):
                preds[e] = saved["preds"]
    if ids and preds:
        draw_snapshots(out / "snapshots.png", ids, images, truths, preds)


def build_augment(args):
    """Joint image/mask augmentation (flips, quarter turns, rotations, scale-crops to
    --image-size, colour); under torchrun each rank keeps its share of the global batch's
    draws."""
    on = args.augment
    augment = SegmentationAugment(size=args.image_size, min_scale=args.min_scale if on else 1.0,
                                  p_flip=0.5 if on else 0.0, p_rot90=args.rot90 if on else 0.0,
                                  degrees=args.rotate if on else 0.0,
                                  color=args.color if on else 0.0, exact=args.exact_aug)
    augment.shard = (rank(), world_size())
    return augment


LOG_EVERY = 20  # steps between the host reads of the running loss (each one syncs)


def train_step(model, x, y, optimizer, criterion, device, amp=True, clip_grad=0.0, scaler=None,
               micro=None):
    """One optimizer step on a prepared batch; returns the loss as a device tensor (no sync).
    clip_grad > 0 clips the gradients' global norm first; `micro` (training.MicroBatch) splits
    the step into micro-batches whose losses are normalised for the whole batch."""
    total = criterion.total(y) if micro is not None else None  # the whole batch's normaliser

    def loss_of(start, stop):
        with autocast(device, amp):
            out = model(x[start:stop].contiguous(memory_format=memory_format(device)))
        return criterion(out, y[start:stop], total), None  # fp32 on the fp32 view of the logits

    loss, _ = training.optimizer_step(model, optimizer, len(x), loss_of, micro, clip_grad,
                                      scaler)
    return loss


def train_one_epoch(model, optimizer, scheduler, train, args, device, epoch, stop=None):
    """One epoch over train = (images, masks, augment, criterion, GradScaler, MicroBatch) ->
    {train_loss} (mean over all ranks); the host reads the loss only every LOG_EVERY steps.
    The data order and the augmentations come from (seed, epoch) alone, so --resume replays the
    epoch; under torchrun each rank takes its share of the global --batch-size."""
    images, masks, augment, criterion, scaler, micro = train
    model.train()
    batch_size = min(args.batch_size, len(images))  # the global batch
    order, augment.generator = epoch_generators(args.seed, epoch, images.device)
    steps = training.steps_per_epoch(len(images), batch_size, args)
    total = torch.zeros((), device=device)
    batches = training.train_batches(len(images), batch_size, args, order, images.device)
    bar = tqdm(batches, total=steps, desc=f"epoch {epoch}/{args.epochs}", leave=False,
               dynamic_ncols=True, disable=not is_main_process())
    for step, idx in enumerate(bar, 1):
        x, y = augment(images.batch(idx), masks.batch(idx))   # (B, 3, S, S) float, (B, S, S) int64
        total += train_step(model, x, y, optimizer, criterion, device, args.amp, args.clip_grad,
                            scaler, micro)
        scheduler.step()
        if stop:
            stop.check(epoch - 1)
        if step % LOG_EVERY == 0:
            value = (total / step).item()
            check_finite(value, epoch, step)
            bar.set_postfix(loss=f"{value:.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
    bar.close()
    loss = all_reduce(total / max(1, steps), mean=True).item()
    check_finite(loss, epoch, steps)
    return {"train_loss": loss}


def train(args, build_model=p2_common.build_model):
    """The whole run: data, model, optimizer, resume, then per epoch train, validate, log, save.

    args must carry model_name; build_model(cfg, load_pretrained) builds the network it names
    (tests pass their own factory).
    """
    device = init_distributed(get_device(args.device))  # this rank's device under torchrun
    setup_precision(device, args.amp)
    seed_everything(args.seed, getattr(args, "deterministic", False))
    if args.output_dir is None:
        args.output_dir = Path("runs") / f"p2_{args.model_name}"
    if args.epochs < 1:
        raise UserError(f"--epochs must be at least 1, not {args.epochs}")
    out = on_main_process(prepare_output_dir, args.output_dir, args, resume=args.resume,
                          overwrite=args.overwrite)
    resuming = args.resume and (out / "last.pth").exists()

    # ---- data: both splits as uint8 banks on the training device -----------------------------
    data_dir = Path(args.data_dir)
    max_train = args.max_train if args.max_train is not None else args.max_images
    max_val = args.max_val if args.max_val is not None else args.max_images
    train_ids, train_x, train_y = load_split(data_dir / "train", max_train, args.cache_dir,
                                             args.workers, args.seed)
    val_ids, val_x, val_y = load_split(data_dir / "validation", max_val, args.cache_dir,
                                       args.workers, args.seed)
    for bank in (train_x, train_y, val_x, val_y):
        bank.to(device)
    batch_size = min(args.batch_size, len(train_ids))
    if batch_size < 2:
        raise UserError(f"{data_dir / 'train'} gives batches of {batch_size} image(s); BatchNorm "
                        "needs at least 2 (raise --max-train or --batch-size)")
    rank_batch = shard_batch(batch_size)  # under torchrun batch_size is the global batch
    steps_per_epoch = training.steps_per_epoch(len(train_ids), batch_size, args)
    missing = [i for i in args.snapshot_ids if i not in val_ids]
    if missing:
        print(f"snapshot ids {', '.join(missing)} are not in the validation set; skipped")
    snap_ids = [i for i in args.snapshot_ids if i in val_ids]
    snap_rows = [val_ids.index(i) for i in snap_ids]
    snap_images = val_x.images[snap_rows].cpu() if snap_rows else None
    snap_truths = val_y.images[snap_rows].cpu() if snap_rows else None

    # ---- loss ----------------------------------------------------------------------------------
    class_weight = None
    if args.loss.startswith("weighted"):
        class_weight = median_frequency_weights(train_y.images).to(device)
        print("class weights (median frequency): " + ", ".join(
            f"{CLASS_NAMES[c]} {w:.3f}" for c, w in enumerate(class_weight.tolist())))
    criterion = make_criterion(args, class_weight, device)

    # ---- model, optimizer, schedule ------------------------------------------------------------
    model = build_model(vars(args), load_pretrained=not resuming)  # resume: no download
    model = model.to(device, memory_format=memory_format(device))
    optimizer = make_optimizer(model, args, device)
    scheduler = make_lr_scheduler(optimizer, args.schedule, args.epochs * steps_per_epoch,
                                  round(args.warmup_epochs * steps_per_epoch))

    # ---- resume --------------------------------------------------------------------------------
    scaler = grad_scaler(device, args.amp)
    ckpts = Checkpoints(out, args, "p2_segmenter", model, optimizer, scheduler, "val_miou",
                        scaler=scaler)
    start_epoch = ckpts.resume(expect={"model_name": args.model_name}) if args.resume else 1
    print_run_header(args, device, batch_size, args.lr)
    print(f"{len(train_ids)} train / {len(val_ids)} val pairs, {steps_per_epoch} steps per epoch, "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters"
          + (f", {world_size()} processes x {rank_batch} images" if world_size() > 1 else ""))
    # DistributedDataParallel under torchrun; an aux head outside the loss gets no gradient
    unused_aux = (getattr(model, "aux_classifier", None) is not None
                  and getattr(args, "aux_weight", 0.0) <= 0)
    ddp_model = distribute_model(model, device, find_unused_parameters=unused_aux)
    step_model = torch.compile(ddp_model) if args.compile else ddp_model
    eval_model = step_model if world_size() == 1 else model  # sharded validation: no collectives
    # BatchNorm (DeepLabV3's, its pooled ASPP branch included) needs 2 images or more
    has_bn = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    micro = training.MicroBatch(args.micro_batch, device, smallest=2 if has_bn else 1)
    train = (train_x, train_y, build_augment(args), criterion, scaler, micro)
    snapshot = (snap_ids, snap_images, snap_truths)
    curves = LiveCurves(out / "log.jsonl", out / "curves.png", ["train_loss", "val_miou", "lr"],
                        title=f"{args.model_name}: {out}")

    # ---- loop: train, validate, then rank 0 logs and saves; a signal stops after a step -------
    with StopOnSignal(out) as stop, curves:
        for epoch in range(start_epoch, args.epochs + 1):
            t0 = time.perf_counter()
            stats = train_one_epoch(step_model, optimizer, scheduler, train, args, device, epoch,
                                    stop)
            train_seconds = time.perf_counter() - t0  # .item() above synchronised the device
            cm, kept = evaluate(eval_model, val_x, val_y, args.eval_batch_size, device, args.amp,
                                snap_rows)
            miou = cm.miou()
            record = {"epoch": epoch, "train_loss": round(stats["train_loss"], 6),
                      "val_miou": None if math.isnan(miou) else round(miou, 6),
                      "val_pixel_acc": round(cm.pixel_accuracy(), 6),
                      "val_iou": cm.per_class(), "lr": scheduler.get_last_lr()[0],
                      "images_per_s": round(min(len(train_ids), steps_per_epoch * batch_size)
                                            / train_seconds, 2),
                      "seconds": round(time.perf_counter() - t0, 1),
                      "micro_batch": micro.size}  # None: the whole batch per forward
            if is_main_process() and snap_ids:  # before last.pth: a resumed run has them all
                (out / "snapshots").mkdir(exist_ok=True)
                np.savez_compressed(out / "snapshots" / f"epoch_{epoch:03d}.npz",
                                    ids=np.array(snap_ids),
                                    preds=torch.stack([kept[r] for r in snap_rows]).numpy())
            is_best = ckpts.end_epoch(epoch, record, keep=epoch in kept_epochs(args.epochs))
            if is_main_process():
                report_epoch(out, args, epoch, record, is_best, snapshot, curves)
            stop.check(epoch)
    if is_main_process() and snap_rows and start_epoch > args.epochs:
        redraw_snapshots(out, snap_ids, snap_images, snap_truths, args.epochs, args.epochs)
    print(f"best val mIoU {ckpts.best:.4f} (epoch {ckpts.best_epoch}); checkpoints in {out}")
    return ckpts.best


def report_epoch(out, args, epoch, record, is_best, snapshot, curves):
    """Rank 0's end of an epoch after Checkpoints.end_epoch: the printed line, the curves
    (LiveCurves) and the snapshot figure."""
    snap_ids, snap_images, snap_truths = snapshot
    print(f"epoch {epoch}/{args.epochs} | loss {record['train_loss']:.4f} | val mIoU "
          f"{record['val_miou'] if record['val_miou'] is not None else float('nan'):.4f}"
          f"{' (best)' if is_best else ''} | "
          + " ".join(f"{k[:5]} {v if v is None else round(v, 3)}"
                     for k, v in record["val_iou"].items())
          + f" | lr {record['lr']:.2e} | {record['images_per_s']:.1f} train img/s"
          f" | {record['seconds']:.0f} s")
    curves.epoch_done()
    if epoch in kept_epochs(args.epochs) and snap_ids:
        redraw_snapshots(out, snap_ids, snap_images, snap_truths, epoch, args.epochs)
