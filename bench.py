"""Throughput of this repository's training and inference pipelines against a seed-style
baseline, measured in one run on one device.

    # CI-sized run on the CPU (tiny images, 2 timed steps; about 1-2 minutes on 2 cores)
    python3 bench.py --device cpu --json results/bench_cpu.json
    # the full sizes on a GPU (within 8 minutes on one H100), then each tuning switch off in turn
    python3 bench.py --device cuda --json results/bench_cuda.json
    python3 bench.py --device cuda --only byol deeplabv3 --ablate
    # with torch.compile rows, and on the real files instead of generated ones
    python3 bench.py --device cuda --compile --data-dir hw1_data

Workloads (the same model, batch and image size on both sides; sizes in CONFIGS):
  byol       a BYOL step of p1_pretrain_byol.py (ResNet50, two views, EMA target)
  finetune   a step of p1_finetune.py (ResNet50 + the report's head)
  fcn32s     a training step of p2_train_fcn32s.py (VGG16-FCN32s)
  deeplabv3  a training step of p2_train_deeplabv3.py (DeepLabV3-ResNet50)
  infer_p1   hw1_1.sh's model time: p1_common.run_batches on decoded images (setting C model)
  infer_p2   hw1_2.sh's model time: p2_common.predict on decoded images (model B)
  sam        p2_sam.py's SamAutomaticMaskGenerator at the report's settings, seconds per image
             (CPU: a tiny random SAM; CUDA: ViT-H from --sam-checkpoint, random weights without it)

ours:  uint8 image banks decoded once and kept on the device, per-sample augmentation on the
       device, bf16 autocast, channels_last, fused optimizers, cuDNN autotuner, no host sync in
       a step (the repository's code, with utils.TUNING all on);
seed:  what the homework's seed code does: PIL decoding and torchvision transforms in
       DataLoader workers every step (byol-pytorch's own augmentation for BYOL), fp32 with
       PyTorch's default flags, contiguous tensors, plain optimizers, loss.item() every step.
       For inference both sides get the same decoded images (model time only): fp32 vs ours.
       SAM: upstream's generator in fp32 with 64 points per batch vs p2_sam.py's.

Printed per workload: images/s of both, their ratio, peak memory (CUDA: max_memory_allocated;
CPU: the process's peak RSS, reset per pipeline, DataLoader workers not included), GFLOP per
image (torch.utils.flop_counter on one step of ours; BYOL at 128 px is ~21.5: two views through
the online network forward and backward and the target forward), and on CUDA the fraction of
the GPU's dense bf16 peak reached (--peak-tflops; 989 is assumed for an H100/H200) and host
syncs per step (torch.cuda.set_sync_debug_mode). --ablate prints, for BYOL and DeepLabV3,
images/s with each tuning switch off in turn and its ratio to all switches on.
"""

import argparse
import contextlib
import gc
import itertools
import math
import os
import random
import resource
import signal
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from PIL import Image
from segment_anything import SamAutomaticMaskGenerator
from torch.utils.flop_counter import FlopCounterMode

import cli
import p1_common
import p1_finetune
import p1_pretrain_byol
import p2_common
import p2_engine
import p2_sam
import p2_train_deeplabv3
import p2_train_fcn32s
import utils
from augment import IMAGENET_MEAN, IMAGENET_STD, ClassificationAugment
from data import (
    ImageBank,
    index_batches,
    list_images,
    list_sat_pairs,
    load_rgb,
    read_mask,
    read_office_csv,
)
from errors import UserError
from records import atomic_write_bytes, write_json
from training import make_lr_scheduler

WORKLOADS = ("byol", "finetune", "fcn32s", "deeplabv3", "infer_p1", "infer_p2", "sam")
TRAINING = ("byol", "finetune", "fcn32s", "deeplabv3")
# (batch, image side) per workload; sam: (images timed, points per side)
CONFIGS = {
    "cuda": {"byol": (256, 128), "finetune": (256, 128), "fcn32s": (16, 512),
             "deeplabv3": (16, 512), "infer_p1": (256, 128), "infer_p2": (32, 512),
             "sam": (3, 32), "steps": 20, "warmup": 3},
    "cpu": {"byol": (8, 32), "finetune": (8, 32), "fcn32s": (2, 64), "deeplabv3": (2, 64),
            "infer_p1": (16, 32), "infer_p2": (4, 64), "sam": (2, 8), "steps": 2, "warmup": 1},
}
# generated data (make_demo_data.py) per device type: enough images for a few batches
DEMO_DATA = {
    "cuda": dict(mini_classes=64, mini_per_class=8, mini_size=84, office_classes=65,
                 office_train_per_class=4, office_val_per_class=1, seg_train=32, seg_val=1,
                 seg_size=512),
    "cpu": dict(mini_classes=4, mini_per_class=4, mini_size=40, office_classes=4,
                office_train_per_class=4, office_val_per_class=1, seg_train=4, seg_val=1,
                seg_size=64),
}
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0}  # dense, SXM
ABLATIONS = ("amp", "channels_last", "fused_optimizer", "cudnn_benchmark", "bank_on_device",
             "no_host_sync")


def get_args_parser():
    parser = argparse.ArgumentParser(
        "bench", formatter_class=cli.HelpFormatter,
        description="Images/s, peak memory and FLOP use of our training and inference "
        "pipelines against a seed-style baseline, on one device.")
    parser.add_argument("--device", default=None, help="cuda, cpu (default: cuda if any); the "
                        "CPU runs the small configuration, CUDA the full one")
    parser.add_argument("--only", nargs="+", choices=WORKLOADS, default=list(WORKLOADS),
                        metavar="WORKLOAD", help=f"a subset of {', '.join(WORKLOADS)}")
    parser.add_argument("--steps", type=int, default=None,
                        help="timed steps per pipeline (default: 20 on CUDA, 2 on CPU)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="untimed steps first (default: 3 on CUDA, 1 on CPU)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--compile", action="store_true",
                        help="also time our training steps under torch.compile")
    parser.add_argument("--ablate", action="store_true",
                        help="BYOL and DeepLabV3 with each tuning switch off in turn")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="the GPU's dense bf16 peak for the %%-of-peak column (default: 989 "
                        "on H100/H200, else none)")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="an hw1_data folder (p1_data/, p2_data/) to read instead of a "
                        "generated one (make_demo_data.py)")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                        help="DataLoader workers of the seed-style pipelines")
    parser.add_argument("--sam-checkpoint", type=Path,
                        default=Path(__file__).resolve().parent / "checkpoints" /
                        "sam_vit_h_4b8939.pth",
                        help="ViT-H weights for the CUDA SAM row (random weights if missing)")
    parser.add_argument("--profile", type=Path, default=None,
                        help="also write torch.profiler's table of the top operators of a few "
                        "steps of ours, per workload, to this text file")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's; 1 keeps a shared CI "
                        "machine's timings steadier)")
    parser.add_argument("--seed", type=int, default=0, help="weights and data order")
    return parser


# ---------------------------------------------------------------------------------------------
# settings of the two sides, variants for the ablation
# ---------------------------------------------------------------------------------------------
@contextlib.contextmanager
def tuning(**switches):
    """Set some utils.TUNING switches inside a `with` block (bench.py's baselines and ablations)."""
    unknown = set(switches) - set(utils.TUNING)
    if unknown:
        raise ValueError(f"unknown tuning switches {sorted(unknown)}; "
                         f"known: {sorted(utils.TUNING)}")
    saved = dict(utils.TUNING)
    utils.TUNING.update(switches)
    try:
        yield utils.TUNING
    finally:
        utils.TUNING.update(saved)


class ImageListDataset(torch.utils.data.Dataset):
    """A plain map-style data set over image files (PIL RGB), for seed-style DataLoader baselines
    and for anything that must stream rather than hold a bank in memory."""

    def __init__(self, paths, labels=None, transform=None):
        self.paths, self.labels, self.transform = list(paths), labels, transform

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        image = load_rgb(self.paths[i])
        if self.transform is not None:
            image = self.transform(image)
        return image if self.labels is None else (image, int(self.labels[i]))


@dataclass(frozen=True)
class Variant:
    """How `ours` runs; each field off is one ablation."""
    amp: bool = True
    bank_on_device: bool = True
    host_sync: bool = False
    compile: bool = False
    channels_last: bool = True
    fused_optimizer: bool = True
    cudnn_benchmark: bool = True

    def off(self, switch):
        if switch == "no_host_sync":
            return replace(self, host_sync=True)
        return replace(self, **{switch: False})


@contextlib.contextmanager
def torch_flags(device, variant=None):
    """ours (a Variant): utils.TUNING and setup_precision as the scripts run; None: the seed's
    PyTorch defaults (no TF32 matmul, no cuDNN autotuner, contiguous, plain optimizers)."""
    saved = (torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32,
             torch.backends.cudnn.allow_tf32)
    switches = dict(channels_last=False, fused_optimizer=False, cudnn_benchmark=False)
    if variant is not None:
        switches = dict(channels_last=variant.channels_last,
                        fused_optimizer=variant.fused_optimizer,
                        cudnn_benchmark=variant.cudnn_benchmark)
    with tuning(**switches):
        if variant is not None:
            utils.setup_precision(device, variant.amp)
        else:
            torch.backends.cudnn.benchmark = False
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = True  # PyTorch's default for convolutions
        try:
            yield
        finally:
            (torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32,
             torch.backends.cudnn.allow_tf32) = saved


# ---------------------------------------------------------------------------------------------
# measuring
# ---------------------------------------------------------------------------------------------
def forever(make_batches):
    while True:
        yield from make_batches()


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def peak_memory(device, result):
    """result["peak_mem_mib"] = the peak memory inside the block: CUDA max_memory_allocated, or
    on the CPU the process's peak RSS (Linux resets it through /proc/self/clear_refs)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        with contextlib.suppress(OSError):
            Path("/proc/self/clear_refs").write_text("5")
    yield
    if device.type == "cuda":
        result["peak_mem_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        result["peak_mem_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def host_syncs(step, batch, device):
    """How many times one step makes the host wait for the GPU (sync debug mode warnings)."""
    if device.type != "cuda":
        return None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step(batch)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def profile_steps(step, batches, device, steps=3, rows=25):
    """The operators that take the time in a few steps, as torch.profiler's table: by their own
    GPU time on CUDA (kernels), by their own CPU time elsewhere."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(steps):
            step(next(batches))
        synchronize(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=rows)


def time_pipeline(build, device, steps, warmup, count_flops=False, profile=False):
    """build() -> (step, batches, images per step). Warm up, count FLOPs and host syncs on one
    step each, then time `steps` steps between two device synchronisations; with `profile`,
    then result["profile"] is profile_steps' table of a few more steps."""
    result = {}
    with peak_memory(device, result):
        step, batches, per_step = build()
        for _ in range(warmup):
            step(next(batches))
        if count_flops:
            with FlopCounterMode(display=False) as counter:
                step(next(batches))
            result["gflop_per_image"] = counter.get_total_flops() / per_step / 1e9
        result["host_syncs_per_step"] = host_syncs(step, next(batches), device)
        synchronize(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            step(next(batches))
        synchronize(device)
        seconds = time.perf_counter() - t0
        if profile:
            result["profile"] = profile_steps(step, batches, device)
    result["images_per_s"] = steps * per_step / seconds
    result["seconds_per_image"] = seconds / (steps * per_step)
    del step, batches
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------
@dataclass
class Data:
    mini: list
    office: Path
    seg_train: Path
    source: str


def prepare_data(args, device, workdir):
    if args.data_dir is not None:
        root, source = Path(args.data_dir), str(args.data_dir)
    else:
        import make_demo_data

        root = workdir / "data"
        make_demo_data.make_demo_data(root, **DEMO_DATA[device.type])
        source = f"generated by make_demo_data.py ({DEMO_DATA[device.type]})"
    mini = list_images(root / "p1_data" / "mini" / "train")
    batch = CONFIGS[device.type]["byol"][0]
    return Data(mini[: 4 * batch], root / "p1_data" / "office", root / "p2_data" / "train",
                source)


SEED_EPOCH_BATCHES = 64  # a seed epoch long enough that no epoch boundary falls in the timing


def seed_loader(dataset, batch_size, workers, device):
    """The seed's DataLoader (shuffled, workers, pinned memory on CUDA), over the small bench
    folder repeated so that one epoch holds SEED_EPOCH_BATCHES batches: on the real data an
    epoch is long and the workers' prefetching is never cut short by its end."""
    repeats = max(1, math.ceil(SEED_EPOCH_BATCHES * batch_size / len(dataset)))
    return torch.utils.data.DataLoader(
        torch.utils.data.ConcatDataset([dataset] * repeats), batch_size=batch_size,
        shuffle=True, num_workers=workers, drop_last=True, pin_memory=device.type == "cuda",
        persistent_workers=workers > 0)


class SeedSegmentation(torch.utils.data.Dataset):
    """The seed's per-item segmentation pipeline: PIL decode of the image and the mask, random
    horizontal and vertical flips of both, ToTensor + Normalize, the mask as class indices."""

    def __init__(self, folder, size):
        self.pairs, self.size = list_sat_pairs(folder), size

    def __len__(self):
        return len(self.pairs)

    def __getitem__(self, i):
        _, sat, mask = self.pairs[i]
        image = load_rgb(sat).resize((self.size, self.size), Image.BILINEAR)
        classes = Image.fromarray(read_mask(mask)).resize((self.size, self.size),
                                                                Image.NEAREST)
        for flip in (Image.FLIP_LEFT_RIGHT, Image.FLIP_TOP_BOTTOM):
            if random.random() < 0.5:
                image, classes = image.transpose(flip), classes.transpose(flip)
        x = TF.normalize(TF.to_tensor(image), IMAGENET_MEAN, IMAGENET_STD)
        return x, torch.from_numpy(np.asarray(classes, dtype=np.int64).copy())


# ---------------------------------------------------------------------------------------------
# workloads: each builder returns (step, batches, images per step)
# ---------------------------------------------------------------------------------------------
def step_result(loss, variant):
    """What a step hands back: the loss tensor, or (ablation) its value, which waits."""
    return float(loss) if variant.host_sync else loss


def byol_ours(data, size, batch, device, variant):
    args = p1_pretrain_byol.get_args_parser().parse_args(
        ["--data-dir", str(data.mini[0].parent), "--batch-size", str(batch),
         "--image-size", str(size)])
    bank = ImageBank.from_paths(data.mini)
    bank.to(device if variant.bank_on_device else "cpu")
    learner = p1_pretrain_byol.build_learner(
        args, device, p1_pretrain_byol.build_views(args.aug, size, device))
    if variant.compile:
        for module in (learner.online_encoder, learner.target_encoder, learner.online_predictor):
            module.compile()
    optimizer, scheduler = p1_pretrain_byol.build_optimizer(learner, args, 10_000)

    def step(idx):
        x = bank.batch(idx).to(device, non_blocking=True)  # (B, 3, H, W) uint8
        loss = p1_pretrain_byol.train_step(learner, x, optimizer, args.ema_decay, device,
                                           variant.amp)
        scheduler.step()
        return step_result(loss, variant)

    return step, forever(lambda: index_batches(len(bank), batch, device=bank.device)), batch


def byol_seed(data, size, batch, device, workers):
    args = p1_pretrain_byol.get_args_parser().parse_args(
        ["--data-dir", str(data.mini[0].parent), "--batch-size", str(batch),
         "--image-size", str(size)])
    transform = T.Compose([T.Resize((size, size)), T.RandomResizedCrop(size),
                           T.RandomHorizontalFlip(), T.ColorJitter(0.2, 0.2, 0.2, 0.2),
                           T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    loader = seed_loader(ImageListDataset(data.mini, transform=transform), batch, workers,
                         device)
    learner = p1_pretrain_byol.build_learner(args, device)  # byol-pytorch's own augmentation
    optimizer = torch.optim.AdamW(learner.parameters(), lr=args.lr,
                                  weight_decay=args.weight_decay)

    def step(x):
        loss = learner(x.to(device))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        learner.update_moving_average()
        return loss.item()

    return step, forever(lambda: iter(loader)), batch


def finetune_args(data, size, batch, amp=True):
    return p1_finetune.get_args_parser().parse_args(
        ["--setting", "A", "--data-dir", str(data.office), "--batch-size", str(batch),
         "--image-size", str(size), "--warmup-epochs", "0"] + ([] if amp else ["--no-amp"]))


def classifier_and_optimizer(args, device):
    model = p1_common.Classifier(args.num_classes)
    model.to(device, memory_format=utils.memory_format(device))
    optimizer = p1_finetune.build_optimizer(model, args)
    return model, optimizer, make_lr_scheduler(optimizer, args.schedule, 10_000)


def finetune_ours(data, size, batch, device, variant):
    args = finetune_args(data, size, batch, variant.amp)
    bank, labels = p1_common.load_office(data.office, "train", args.bank_size,
                                           device if variant.bank_on_device else "cpu")
    model, optimizer, scheduler = classifier_and_optimizer(args, device)
    if variant.compile:
        model.compile()
    augment, fmt = p1_finetune.build_augment(args), utils.memory_format(device)
    criterion = p1_finetune.make_criterion(args)

    def step(idx):
        x = augment(bank.batch(idx).to(device, non_blocking=True)).contiguous(memory_format=fmt)
        loss, _ = p1_finetune.train_step(model, x, labels[idx].to(device), optimizer,
                                         criterion, device, args.amp)
        scheduler.step()
        return step_result(loss, variant)

    return step, forever(lambda: index_batches(len(bank), batch, device=bank.device)), batch


def finetune_seed(data, size, batch, device, workers):
    args = finetune_args(data, size, batch, amp=False)
    rows = read_office_csv(data.office / "train.csv", data.office / "train")
    transform = T.Compose([T.Resize((args.bank_size, args.bank_size)),
                           T.RandomResizedCrop(size, scale=(args.min_scale, 1.0)),
                           T.RandomHorizontalFlip(), T.ColorJitter(0.2, 0.2, 0.2, 0.05),
                           T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    dataset = ImageListDataset([r["path"] for r in rows], [r["label"] for r in rows],
                                     transform)
    loader = seed_loader(dataset, batch, workers, device)
    model, optimizer, scheduler = classifier_and_optimizer(args, device)
    criterion = p1_finetune.make_criterion(args)

    def step(xy):
        loss, _ = p1_finetune.train_step(model, xy[0].to(device), xy[1].to(device), optimizer,
                                         criterion, device, args.amp)
        scheduler.step()
        return loss.item()

    return step, forever(lambda: iter(loader)), batch


SEGMENTATION = {"fcn32s": p2_train_fcn32s, "deeplabv3": p2_train_deeplabv3}


def segmentation_parts(name, data, size, batch, device, amp=True):
    """args, model, optimizer, scheduler and criterion of one p2 training script (random init)."""
    module = SEGMENTATION[name]
    args = module.get_args_parser().parse_args(
        ["--data-dir", str(data.seg_train.parent), "--batch-size", str(batch), "--image-size",
         str(size), "--no-pretrained"] + ([] if amp else ["--no-amp"]))
    model = p2_common.build_model(vars(args), load_pretrained=False)
    model.to(device, memory_format=utils.memory_format(device))
    optimizer = p2_engine.make_optimizer(model, args, device)
    scheduler = make_lr_scheduler(optimizer, args.schedule, 10_000)
    return args, model, optimizer, scheduler, p2_engine.make_criterion(args, device=device)


def segmentation_ours(name, data, size, batch, device, variant):
    args, model, optimizer, scheduler, criterion = segmentation_parts(name, data, size, batch,
                                                                      device, variant.amp)
    _, images, masks = p2_engine.load_split(data.seg_train)
    for bank in (images, masks):
        bank.to(device if variant.bank_on_device else "cpu")
    step_model = torch.compile(model) if variant.compile else model
    augment = p2_engine.build_augment(args)

    def step(idx):
        x, y = augment(images.batch(idx).to(device, non_blocking=True),
                       masks.batch(idx).to(device, non_blocking=True))
        loss = p2_engine.train_step(step_model, x, y, optimizer, criterion, device, args.amp)
        scheduler.step()
        return step_result(loss, variant)

    return (step, forever(lambda: index_batches(len(images), batch, device=images.device)),
            batch)


def segmentation_seed(name, data, size, batch, device, workers):
    args, model, optimizer, scheduler, criterion = segmentation_parts(name, data, size, batch,
                                                                      device, amp=False)
    loader = seed_loader(SeedSegmentation(data.seg_train, size), batch, workers, device)

    def step(xy):
        loss = p2_engine.train_step(model, xy[0].to(device), xy[1].to(device), optimizer,
                                    criterion, device, amp=False)
        scheduler.step()
        return loss.item()

    return step, forever(lambda: iter(loader)), batch


def repeat_to(bank_images, n):
    """The first n rows of a bank's tensor, cycling when it holds fewer."""
    return bank_images[torch.arange(n) % bank_images.shape[0]]


def infer_p1(data, size, batch, device, amp, workdir):
    """hw1_1.sh's model time: a setting-C checkpoint loaded as p1_inference.py does, then
    p1_common.run_batches on one batch of decoded images (bank size -> image size)."""
    args = finetune_args(data, size, batch)
    path = workdir / "p1_C.pth"
    if not path.exists():
        torch.manual_seed(0)
        utils.save_checkpoint(path, p1_common.Classifier(args.num_classes), kind="p1_classifier",
                              args={**vars(args), "setting": "C"})
    model, margs, _ = p1_common.load_classifier(path, device)
    bank, _ = p1_common.load_office(data.office, "train", margs["bank_size"], device)
    bank = ImageBank(repeat_to(bank.images, batch))
    view = ClassificationAugment(margs["image_size"], train=False)

    def step(_):
        return p1_common.run_batches(model, bank, view, batch, device, amp).argmax(1)

    return step, itertools.repeat(None), batch


def infer_p2(data, size, batch, device, amp, workdir):
    """hw1_2.sh's model time: a model-B checkpoint loaded by p2_common.load_segmenter, then
    p2_common.predict on one batch of decoded images."""
    path = workdir / "p2_B.pth"
    if not path.exists():
        args = p2_train_deeplabv3.get_args_parser().parse_args(
            ["--no-pretrained", "--image-size", str(size)])
        torch.manual_seed(0)
        utils.save_checkpoint(path, p2_common.build_deeplabv3(vars(args), False),
                              kind="p2_segmenter", args=args)
    model, _ = p2_common.load_segmenter(path, device)
    _, images, _ = p2_engine.load_split(data.seg_train)
    x = repeat_to(images.images, batch).to(device)  # (B, 3, H, W) uint8

    def step(_):
        return p2_common.predict(model, x, device, amp)

    return step, itertools.repeat(None), batch


def sam_parts(data, points, device, checkpoint):
    """(model, its description, images) for the SAM row."""
    if device.type == "cuda":
        weights = checkpoint if checkpoint and Path(checkpoint).is_file() else None
        model = p2_sam.build_sam_model("vit_h", weights, device)
        name = f"SAM vit_h ({Path(weights).name if weights else 'random weights'})"
    else:  # the tests' CPU-sized random SAM: ViT-H would take minutes per image here
        from tests.sam_fixtures import tiny_sam
        model, name = tiny_sam().to(device), "tiny random SAM (2-block ViT, 64 px)"
    images = [np.asarray(load_rgb(p)) for _, p, _ in list_sat_pairs(data.seg_train)]
    return model.requires_grad_(False), name, images  # inference only (and FLOP counting)


def sam_pipeline(model, images, points, device, ours):
    """ours: p2_sam.py's generator (bf16 SAM networks on CUDA, its points per batch); seed:
    upstream's in fp32 with 64 points per batch. Both at the report's thresholds."""
    sam_args = p2_sam.get_args_parser().parse_args(
        ["--checkpoint", "-", "--input", "-", "--output-dir", "-", "--points-per-side",
         str(points)])
    if ours:
        p2_sam.autocast_sam(model, lambda: utils.autocast(device, True))
        generator = SamAutomaticMaskGenerator(model, output_mode="binary_mask",
                                              **p2_sam.amg_kwargs(sam_args, device))
    else:
        generator = SamAutomaticMaskGenerator(
            model, points_per_side=points, pred_iou_thresh=sam_args.pred_iou_thresh,
            min_mask_region_area=sam_args.min_mask_region_area)
    return (lambda image: p2_sam.generate_masks(generator, image)), itertools.cycle(images), 1


# ---------------------------------------------------------------------------------------------
# running
# ---------------------------------------------------------------------------------------------
def build_training(name, data, cfg, device, variant=None, workers=0):
    """The (step, batches, per step) builder of a training workload; variant None: seed."""
    batch, size = cfg[name]
    if name == "byol":
        return (lambda: byol_ours(data, size, batch, device, variant)) if variant else (
            lambda: byol_seed(data, size, batch, device, workers))
    if name == "finetune":
        return (lambda: finetune_ours(data, size, batch, device, variant)) if variant else (
            lambda: finetune_seed(data, size, batch, device, workers))
    return (lambda: segmentation_ours(name, data, size, batch, device, variant)) if variant else (
        lambda: segmentation_seed(name, data, size, batch, device, workers))


def run_workload(name, data, cfg, device, args, workdir):
    """{"ours": ..., "seed": ..., "ratio": ..., "gflop_per_image": ...} of one workload."""
    steps, warmup = cfg["steps"], cfg["warmup"]
    row = {"batch": cfg[name][0], "image_size": cfg[name][1]}
    ours, profile = Variant(), args.profile is not None
    if name in TRAINING:
        with torch_flags(device, ours):
            row["ours"] = time_pipeline(build_training(name, data, cfg, device, ours), device,
                                        steps, warmup, count_flops=True, profile=profile)
            if args.compile:
                row["ours_compiled"] = time_pipeline(
                    build_training(name, data, cfg, device, replace(ours, compile=True)),
                    device, steps, warmup)
        with torch_flags(device, None):
            row["seed"] = time_pipeline(build_training(name, data, cfg, device, None,
                                                       args.workers), device, steps, warmup)
    elif name in ("infer_p1", "infer_p2"):
        batch, size = cfg[name]
        fn = infer_p1 if name == "infer_p1" else infer_p2
        with torch_flags(device, ours):
            row["ours"] = time_pipeline(lambda: fn(data, size, batch, device, True, workdir),
                                        device, steps, warmup, count_flops=True,
                                        profile=profile)
        with torch_flags(device, None):
            row["seed"] = time_pipeline(lambda: fn(data, size, batch, device, False, workdir),
                                        device, steps, warmup)
    else:  # sam: the seed first, since ours patches the model's forward for bf16
        images_timed, points = cfg["sam"]
        model, row["model"], images = sam_parts(data, points, device, args.sam_checkpoint)
        row.update(batch=1, image_size=list(images[0].shape[:2]), points_per_side=points)
        with torch_flags(device, None):
            row["seed"] = time_pipeline(lambda: sam_pipeline(model, images, points, device, False),
                                        device, images_timed, 1)
        with torch_flags(device, ours):
            row["ours"] = time_pipeline(lambda: sam_pipeline(model, images, points, device, True),
                                        device, images_timed, 1, count_flops=True,
                                        profile=profile)
        del model
    row["gflop_per_image"] = row["ours"].pop("gflop_per_image", None)
    row["profile"] = row["ours"].pop("profile", None)
    row["ratio"] = row["ours"]["images_per_s"] / row["seed"]["images_per_s"]
    return row


def run_ablation(name, data, cfg, device, args):
    """images/s of ours with every switch on, then with each off in turn (and the ratio)."""
    base = Variant(compile=args.compile)
    results = {}
    for switch in (None, *ABLATIONS):
        variant = base if switch is None else base.off(switch)
        with torch_flags(device, variant):
            r = time_pipeline(build_training(name, data, cfg, device, variant), device,
                              cfg["steps"], cfg["warmup"])
        results["all on" if switch is None else f"{switch} off"] = r["images_per_s"]
    return {k: {"images_per_s": v, "ratio_to_all_on": v / results["all on"]}
            for k, v in results.items()}


def add_flop_use(row, peak_tflops):
    for side in ("ours", "seed", "ours_compiled"):
        r = row.get(side)
        if r is None:
            continue
        gflop = row["gflop_per_image"]
        r["tflops"] = r["images_per_s"] * gflop / 1e3 if gflop else None
        r["peak_fraction"] = (r["tflops"] / peak_tflops if r["tflops"] and peak_tflops
                              else None)


def detect_peak_tflops(device, given):
    if given is not None or device.type != "cuda":
        return given
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


# ---------------------------------------------------------------------------------------------
# printing
# ---------------------------------------------------------------------------------------------
def _fmt(value, spec=".1f", missing="-"):
    return missing if value is None else format(value, spec)


def format_table(results):
    cuda = results["device"] == "cuda"
    head = (f"{'workload':<10} {'batch':>5} {'size':>5} | {'ours img/s':>10} {'seed img/s':>10}"
            f" {'ratio':>6} | {'ours MiB':>9} {'seed MiB':>9} | {'GFLOP/img':>9}")
    if cuda:
        head += f" | {'ours %peak':>10} {'seed %peak':>10} | {'syncs ours/seed':>15}"
    lines = [head, "-" * len(head)]
    for name, row in results["workloads"].items():
        ours, seed = row["ours"], row["seed"]
        size = row["image_size"] if isinstance(row["image_size"], int) else row["image_size"][0]
        line = (f"{name:<10} {row['batch']:>5} {size:>5} | {ours['images_per_s']:>10.2f} "
                f"{seed['images_per_s']:>10.2f} {row['ratio']:>6.2f} | "
                f"{ours['peak_mem_mib']:>9.0f} {seed['peak_mem_mib']:>9.0f} | "
                f"{_fmt(row['gflop_per_image'], '.2f'):>9}")
        if cuda:
            pct = lambda r: _fmt(r["peak_fraction"] and 100 * r["peak_fraction"], ".1f")  # noqa
            line += (f" | {pct(ours):>10} {pct(seed):>10} | "
                     f"{_fmt(ours['host_syncs_per_step'], 'd')}/"
                     f"{_fmt(seed['host_syncs_per_step'], 'd')}".rjust(15))
        lines.append(line)
        if "ours_compiled" in row:
            c = row["ours_compiled"]
            lines.append(f"{'  +compile':<22} | {c['images_per_s']:>10.2f} {'':>10} "
                         f"{c['images_per_s'] / seed['images_per_s']:>6.2f} | "
                         f"{c['peak_mem_mib']:>9.0f}")
    if "sam" in results["workloads"]:
        s = results["workloads"]["sam"]
        lines.append(f"sam: {s['model']}, {s['points_per_side']} points per side: ours "
                     f"{s['ours']['seconds_per_image']:.3f} s/image, seed "
                     f"{s['seed']['seconds_per_image']:.3f} s/image")
    for name, table in results.get("ablation", {}).items():
        lines.append(f"ablation {name}: " + ", ".join(
            f"{k} {v['images_per_s']:.2f} img/s ({v['ratio_to_all_on']:.2f}x)"
            for k, v in table.items()))
    return "\n".join(lines)


def main(args):
    # Ctrl-C (or `timeout --signal=INT`) stops the run with what is saved so far, even where
    # the shell that started it ignores SIGINT (a background job)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    device = utils.get_device(args.device)
    cfg = dict(CONFIGS[device.type])
    cfg["steps"] = args.steps or cfg["steps"]
    cfg["warmup"] = cfg["warmup"] if args.warmup is None else args.warmup
    if cfg["steps"] < 1:
        raise UserError("--steps must be at least 1")
    peak = detect_peak_tflops(device, args.peak_tflops)
    if args.threads:
        torch.set_num_threads(args.threads)
    utils.seed_everything(args.seed)
    results = {"device": device.type, "device_name": (torch.cuda.get_device_name(device)
                                                      if device.type == "cuda" else "cpu"),
               "cpu_threads": torch.get_num_threads(), "torch": torch.__version__,
               "peak_bf16_tflops": peak, "steps": cfg["steps"], "warmup": cfg["warmup"],
               "workers": args.workers, "workloads": {}}
    print(f"bench on {results['device_name']} | torch {torch.__version__} | "
          f"{cfg['steps']} timed steps after {cfg['warmup']} | bf16 peak "
          f"{_fmt(peak, '.0f', 'unknown (pass --peak-tflops)')} TFLOP/s", flush=True)
    for path in (args.json, args.profile):
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)

    profiles = {}

    def save():  # after every workload, so a run cut short keeps what it measured
        if args.json is not None:
            write_json(args.json, results)
        if args.profile is not None and profiles:
            text = "".join(f"== {name} (ours, {results['device_name']})\n{table}\n"
                           for name, table in profiles.items())
            atomic_write_bytes(args.profile, text.encode())

    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        workdir = Path(tmp)
        data = prepare_data(args, device, workdir)
        results["data"] = data.source
        for name in [w for w in WORKLOADS if w in args.only]:
            t0 = time.perf_counter()
            row = run_workload(name, data, cfg, device, args, workdir)
            add_flop_use(row, peak)
            table = row.pop("profile")
            if table is not None:
                profiles[name] = table
            results["workloads"][name] = row
            save()
            print(f"  {name}: ours {row['ours']['images_per_s']:.2f} img/s, seed "
                  f"{row['seed']['images_per_s']:.2f} img/s ({row['ratio']:.2f}x) in "
                  f"{time.perf_counter() - t0:.0f} s", flush=True)
        if args.ablate:
            results["ablation"] = {}
            for name in ("byol", "deeplabv3"):
                results["ablation"][name] = run_ablation(name, data, cfg, device, args)
                save()
    print(format_table(results))
    bad = [n for n, r in results["workloads"].items()
           if not all(math.isfinite(v) and v > 0 for v in (r["ours"]["images_per_s"],
                                                           r["seed"]["images_per_s"]))]
    if args.json is not None:
        save()
        print(f"wrote {args.json}")
    if bad:
        print(f"non-finite timings in {', '.join(bad)}", file=sys.stderr)
    return results


if __name__ == "__main__":
    cli.run(main, get_args_parser())
