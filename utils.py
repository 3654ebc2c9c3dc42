"""Pieces shared by two or more scripts of this repository, and nothing else.

Sections (in file order):
  errors       UserError: a one-line, traceback-free exit for mistakes a user can make
               (HW1_DEBUG=1 in the environment adds the Python traceback)
  run setup    device / seed / precision (one code path for CPU and CUDA), the GPU tuning
               switches (TUNING), run directories, log.jsonl, args.json, curve plots
  distributed  torchrun / DistributedDataParallel: process group, rank helpers, all-reduce,
               SyncBatchNorm that also runs on CPU (gloo), the per-epoch random streams
  interruption SIGINT/SIGTERM stop a run at the next step with a clean exit and a resume hint
  data sets    readers for the exact layouts of hw1_data (Office-Home csv, the unlabeled
               Mini-ImageNet folder, satellite sat/mask pairs)
  image bank   decode a folder once (in parallel), keep it as one uint8 tensor that can live on
               the training device, cache it on disk
  augmentation per-sample random augmentation of whole batches on the training device
               (Problem 1: crop/flip/jitter/grayscale/blur/solarize; Problem 2: flips, 90-degree
               rotations and scale-crop applied jointly to image and mask)
  masks        the course scorer's mask codec and the palette for predictions
  mIoU         a confusion matrix accumulated over a whole split (torch.bincount, GPU or CPU)
  checkpoints  atomic save, clear-error load, loading bare ResNet50 state_dicts
"""

import argparse
import builtins
import contextlib
import functools
import hashlib
import inspect
import io
import json
import math
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


# ---------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------
DEBUG_ENV = "HW1_DEBUG"


class UserError(SystemExit):
    """A mistake the user can fix (bad path, bad file, wrong checkpoint).

    Subclassing SystemExit means an uncaught UserError prints its one-line message to stderr
    and exits with status 1, with no traceback, while tests can still catch it.

    Debugging: with HW1_DEBUG=1 in the environment (every script, hw1_1.sh and hw1_2.sh too),
    each UserError also prints, when raised, the traceback of the exception being handled (the
    original error of PIL, torch, the file system, ...) and the stack that raised it; the last
    line and the exit status stay the same.
    """

    def __init__(self, message):
        super().__init__(f"error: {message}")
        self.message = message
        if os.environ.get(DEBUG_ENV, "") not in ("", "0"):
            _print_debug_traceback(f"error: {message}")


def _print_debug_traceback(message):
    cause = sys.exc_info()[1]
    lines = [f"--- {DEBUG_ENV}: traceback of `{message}`\n"]
    if cause is not None:
        lines += ["while handling:\n", *traceback.format_exception(cause)]
    # the frames up to the `raise UserError(...)`, without this helper and __init__
    lines += ["raised at:\n", *traceback.format_stack(sys._getframe(2))]
    sys.stderr.write("".join(lines))
    sys.stderr.flush()


def first_line(error, limit=160):
    """The first line (or sentence) of an exception's message, shortened: torch and PIL write
    paragraphs, a UserError is one line."""
    text = str(error).strip()
    line = text.splitlines()[0] if text else type(error).__name__
    if len(line) > limit and ". " in line:
        line = line.split(". ")[0]
    return line if len(line) <= limit else line[: limit - 3] + "..."


# ---------------------------------------------------------------------------------------------
# run setup: device, seed, precision, run directory, logs, plots
# ---------------------------------------------------------------------------------------------
def get_device(name=None):
    """None/'auto' -> CUDA when present, else CPU. Asking for CUDA without one is an error."""
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name} was asked for but no CUDA GPU is visible; "
                        "use --device cpu")
    return device


def seed_everything(seed, deterministic=False):
    """Seed Python, NumPy and torch. `deterministic` (the scripts' --deterministic) also asks
    torch for deterministic kernels (a warning names any op that has none) and turns off cuDNN's
    autotuner: on CPU two runs with the same seed then give bit-identical weights; on CUDA
    nearly so, at some speed. Set both ways, so one process can run both kinds."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(bool(deterministic), warn_only=True)
    if deterministic:
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


# GPU tuning switches, all on; bench.py --ablate turns each off in turn to measure what it gives.
# They only act on CUDA (on CPU channels_last only costs copies and there is no fused optimizer).
TUNING = {
    "channels_last": True,    # activations and weights in NHWC for the tensor cores
    "fused_optimizer": True,  # one kernel for the whole AdamW/SGD update
    "cudnn_benchmark": True,  # cuDNN times its algorithms on the first batch of each shape
}


@contextlib.contextmanager
def tuning(**switches):
    """Set some TUNING switches inside a `with` block (bench.py's baselines and ablations)."""
    unknown = set(switches) - set(TUNING)
    if unknown:
        raise ValueError(f"unknown tuning switches {sorted(unknown)}; known: {sorted(TUNING)}")
    saved = dict(TUNING)
    TUNING.update(switches)
    try:
        yield TUNING
    finally:
        TUNING.update(saved)


def fused_optimizer(device):
    """`fused=` of torch.optim.AdamW/SGD: the fused CUDA kernels, unless switched off."""
    return torch.device(device).type == "cuda" and TUNING["fused_optimizer"]


def make_optimizer(groups, name, lr, weight_decay, device, momentum=0.9, nesterov=False):
    """AdamW or SGD (momentum) for every training script, fused on CUDA.

    `groups`: parameters, or param-group dicts (their own "lr" kept). Each group is split in
    two: conv/linear weights (ndim > 1) get `weight_decay`, biases and BatchNorm affine
    parameters none, as in the BYOL and ResNet recipes. Frozen parameters are left out."""
    groups = list(groups)
    if groups and not isinstance(groups[0], dict):
        groups = [{"params": groups}]
    split = []
    for group in groups:
        params = [p for p in group["params"] if p.requires_grad]
        for decay, part in ((weight_decay, [p for p in params if p.ndim > 1]),
                            (0.0, [p for p in params if p.ndim <= 1])):
            if part:
                split.append({**group, "params": part, "weight_decay": decay})
    if not split:
        raise ValueError("make_optimizer: no trainable parameters")
    fused = fused_optimizer(device)
    if name == "sgd":
        return torch.optim.SGD(split, lr=lr, momentum=momentum, nesterov=nesterov, fused=fused)
    if name == "adamw":
        return torch.optim.AdamW(split, lr=lr, fused=fused)
    raise ValueError(f"unknown optimizer {name!r}; known: adamw, sgd")


def setup_precision(device):
    """Global fast-math switches, set once per run. TF32 only matters for the fp32 leftovers."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = TUNING["cudnn_benchmark"]
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def autocast(device, enabled=True):
    """bf16 autocast on CUDA, a no-op elsewhere: the one precision path of every training step."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def memory_format(device):
    """channels_last pays on CUDA tensor cores; on CPU it only costs copies."""
    if torch.device(device).type == "cuda" and TUNING["channels_last"]:
        return torch.channels_last
    return torch.contiguous_format


def unwrap_model(model):
    """The plain nn.Module under DistributedDataParallel and/or torch.compile."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def git_sha():
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, cwd=Path(__file__).resolve().parent, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def prepare_output_dir(output_dir, args, resume=False, overwrite=False, marker="log.jsonl"):
    """Create the run directory and write args.json.

    A directory that already holds a run (its `marker` file) is refused unless the user resumes
    it or explicitly overwrites it, so a typo in a command never clobbers a night of training.
    """
    out = writable_dir(output_dir, "--output-dir")
    if (out / marker).exists() and not (resume or overwrite):
        raise UserError(f"{out} already holds a run ({marker}); pass --resume to continue it "
                        "or --overwrite to start again")
    if overwrite and not resume and (out / marker).exists():
        (out / marker).unlink()
    record = dict(sorted(vars(args).items())) if args is not None else {}
    record["git_sha"] = git_sha()
    write_json(out / "args.json", record)
    return out


def writable_dir(path, flag="--output-dir"):
    """Create the folder `path` if needed and check that a file can be written in it (by
    writing and deleting a temporary one: os.access says yes to root on any folder).
    Returns it as a Path; a file in the way or a read-only place is one line naming it."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        blocker = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
        reason = (f"{blocker} is a file, not a folder" if blocker is not None
                  else e.strerror or first_line(e))
        raise UserError(f"cannot write into {path} ({reason}); choose another {flag}") from None
    return path


def print_run_header(args, device, batch_size=None, lr=None):
    print(f"git {git_sha()} | device {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
          + (f" | {dist.get_backend()} x {world_size()}" if in_process_group() else "")
          + (f" | batch {batch_size}" if batch_size is not None else "")
          + (f" | lr {lr:g}" if lr is not None else ""))
    print("args: " + json.dumps({k: _jsonable(v) for k, v in sorted(vars(args).items())}))


def _jsonable(value):
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def write_json(path, obj):
    atomic_write_bytes(path, (json.dumps(obj, indent=2, default=_jsonable) + "\n").encode())


def append_jsonl(path, record):
    with open(path, "a") as f:
        f.write(json.dumps(record, default=_jsonable) + "\n")


def read_jsonl(path):
    """The records of a .jsonl file. A last line cut short (a kill -9 while it was appended) is
    skipped, so a killed run can still be resumed; a broken line before it is an error."""
    path = Path(path)
    if not path.exists():
        return []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    records = []
    for i, line in enumerate(lines):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i < len(lines) - 1:
                raise UserError(f"{path}:{i + 1} is not a JSON line; repair or delete it") from None
    return records


def truncate_jsonl(path, last_epoch):
    """Drop log lines past `last_epoch`, so a resumed run never logs an epoch twice."""
    records = [r for r in read_jsonl(path) if r.get("epoch", 0) <= last_epoch]
    atomic_write_bytes(path, "".join(json.dumps(r) + "\n" for r in records).encode())
    return records


def plot_curves(records, keys, path, title=None):
    """One PNG with one panel per key of `keys` against epoch (keys absent from the log skipped)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in keys if any(k in r for r in records)]
    if not keys:
        return None
    fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.5), squeeze=False)
    for ax, key in zip(axes[0], keys):
        pts = [(r["epoch"], r[key]) for r in records if key in r and r[key] is not None]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o" if len(pts) < 30 else None)
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)


def save_figure(fig, path, **savefig_kwargs):
    """Write a matplotlib figure as PNG atomically (whole or absent) and close it."""
    import matplotlib.pyplot as plt

    try:
        return _atomic_write(path, lambda f: fig.savefig(f, format="png", **savefig_kwargs),
                             sync=False)
    finally:
        plt.close(fig)


def check_finite(loss_value, epoch, step):
    """Stop a run whose loss is NaN or infinite before it saves that epoch (dino's check).
    Every training loop calls it; the last.pth on disk is then the last finite epoch."""
    if not math.isfinite(loss_value):
        raise UserError(f"loss became {loss_value} at epoch {epoch}, step {step} (nothing of "
                        "this epoch was saved); start again with a lower --lr and --overwrite")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """--help shows every default, except None/False ones and where the help text already
    says what the default means."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def add_hardware_args(group, compile_help="torch.compile the model"):
    """The flags every training script spells the same way: --device, --amp, --compile, --seed,
    --deterministic (one argparse group or parser in, the same group out)."""
    group.add_argument("--device", default=None,
                       help="cuda, cuda:1 or cpu (default: cuda if present)")
    group.add_argument("--amp", default=True, action=argparse.BooleanOptionalAction,
                       help="bf16 autocast on CUDA (no effect on CPU)")
    group.add_argument("--compile", default=False, action=argparse.BooleanOptionalAction,
                       help=compile_help)
    group.add_argument("--seed", default=0, type=int,
                       help="seeds weights, data order and augmentation")
    group.add_argument("--deterministic", default=False, action=argparse.BooleanOptionalAction,
                       help="deterministic kernels: same --seed, bit-identical weights on CPU")
    return group


def lr_multiplier(step, total_steps, warmup_steps=0, schedule="cosine"):
    """Factor of the base learning rate at optimizer step `step` (0-based).

    Linear warm-up from 1/warmup_steps to 1 over the first `warmup_steps`, then
      constant: 1;  cosine: half a cosine from 1 down to 0 at `total_steps`;
      poly: (1 - t)^0.9 (DeepLab's schedule);  step: x0.1 at 1/2 and x0.01 from 3/4 of the
      steps after warm-up.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    t = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * t))
    if schedule == "poly":
        return (1.0 - t) ** 0.9
    if schedule == "step":
        return 0.1 ** ((t >= 0.5) + (t >= 0.75))
    raise ValueError(f"unknown schedule {schedule!r}; use constant, cosine, poly or step")


def make_lr_scheduler(optimizer, schedule, total_steps, warmup_steps=0):
    """A LambdaLR over `lr_multiplier`, stepped once per optimizer step. Its state_dict holds only
    the step count, so a resumed run continues the same curve (rebuilt from the same args)."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_multiplier(step, total_steps, warmup_steps, schedule))


# ---------------------------------------------------------------------------------------------
# distributed: torchrun, DistributedDataParallel, SyncBatchNorm, random streams
# ---------------------------------------------------------------------------------------------
# Design (every training script): `torchrun --nproc_per_node=N script.py ...` runs N ranks.
#   batch       --batch-size stays the GLOBAL batch (so --lr keeps its meaning); each rank takes
#               batch_size / N of it (shard_batch), drawn from one shared permutation per epoch
#               (index_batches with rank/world_size), so every step sees the same images as a
#               single-process step would.
#   BatchNorm   synchronised (nn.SyncBatchNorm; CPUSyncBatchNorm under gloo): statistics over
#               the global batch, as in one process.
#   random      augmentations draw from a generator seeded by (seed, epoch), the same on every
#               rank, for the whole global batch, and keep their rank's samples (the `shard`
#               of the augmentations), so N ranks apply the same views as one process; torch's
#               global RNG (dropout) is seeded per rank.
#   writes      only rank 0 writes (args.json, log.jsonl, checkpoints, plots, tables); the
#               other ranks print nothing. Checkpoints hold the unwrapped model and load on any
#               number of ranks. Validation is sharded and its counts are summed (all_reduce).
def init_distributed(device):
    """Join the process group torchrun describes in the environment (WORLD_SIZE, RANK,
    LOCAL_RANK, MASTER_ADDR, MASTER_PORT) and return this rank's device: cuda:LOCAL_RANK with
    NCCL, or the CPU with gloo. Anything torchrun starts joins one, `--nproc_per_node=1`
    included (so one GPU runs the NCCL/DDP path); a plain `python3 script.py` gets `device`
    back and starts nothing. Ranks other than 0 print nothing from then on (builtins.print is
    silenced there, as in DINO; print(..., force=True) still prints)."""
    under_torchrun = "TORCHELASTIC_RUN_ID" in os.environ
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 and not under_torchrun:
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        if dist.get_rank() != 0:
            quiet = builtins.print

            def print_on_main(*args, force=False, **kwargs):
                if force:
                    quiet(*args, **kwargs)

            builtins.print = print_on_main
    return device


def in_process_group():
    """Whether this process is in a process group (torchrun), at any number of ranks."""
    return dist.is_available() and dist.is_initialized()


def world_size():
    return dist.get_world_size() if in_process_group() else 1


def rank():
    return dist.get_rank() if in_process_group() else 0


def is_main_process():
    return rank() == 0


def all_reduce(tensor, mean=False):
    """Sum (or mean) of `tensor` over the ranks, in place and returned; as is in one process."""
    if world_size() > 1:
        dist.all_reduce(tensor)
        if mean:
            tensor /= world_size()
    return tensor


def merge_across_ranks(mapping):
    """The union of every rank's dict, on every rank (small objects only: all_gather_object)."""
    if world_size() == 1:
        return mapping
    parts = [None] * world_size()
    dist.all_gather_object(parts, mapping)
    return {k: v for part in parts for k, v in part.items()}


def on_main_process(fn, *args, **kwargs):
    """fn(*args, **kwargs) on rank 0 only (e.g. prepare_output_dir: checks, then writes), its
    result handed to every rank. A UserError there is raised on every rank, so no rank is left
    waiting for one that stopped."""
    result, error = None, None
    if is_main_process():
        try:
            result = fn(*args, **kwargs)
        except UserError as e:
            error = e.message
    if world_size() > 1:
        box = [result, error]
        dist.broadcast_object_list(box, src=0)
        result, error = box
    if error is not None:
        raise UserError(error)
    return result


def shard_batch(batch_size):
    """This rank's part of the global --batch-size (all of it in one process)."""
    n = world_size()
    if batch_size % n:
        raise UserError(f"--batch-size {batch_size} is the global batch and must split evenly "
                        f"over the {n} processes; use a multiple of {n}")
    return batch_size // n


class CPUSyncBatchNorm(torch.nn.modules.batchnorm._BatchNorm):
    """BatchNorm over the global batch for multi-process CPU runs (gloo; the CI test of
    DistributedDataParallel): torch.nn.SyncBatchNorm, which CUDA runs use, refuses CPU tensors.
    In training under a process group it normalises with the statistics of all ranks' samples,
    from one differentiable all-reduce of the per-channel sum, sum of squares and count (its
    backward sums the gradients of the statistics over the ranks, as torch's does); otherwise
    it is a plain BatchNorm. Two all-reduces (the mean, then the squared deviations) keep the
    variance as exact as BatchNorm's own."""

    def _check_input_dim(self, x):
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {x.dim()}D input)")

    def forward(self, x):
        if not (self.training and in_process_group()):
            return super().forward(x)
        from torch.distributed._functional_collectives import all_reduce as reduce

        def all_reduce_with_grad(t):  # summed over the ranks; its backward sums the gradients
            return reduce(t, "sum", dist.group.WORLD)

        self._check_input_dim(x)
        c = x.shape[1]
        dims = [0, *range(2, x.dim())]
        shape = (1, c) + (1,) * (x.dim() - 2)
        stats = all_reduce_with_grad(torch.cat([x.sum(dims), x.new_full((1,), x.numel() // c)]))
        n = stats[-1]  # samples x pixels of all ranks
        mean = stats[:c] / n
        var = all_reduce_with_grad(((x - mean.view(shape)) ** 2).sum(dims)) / n  # biased, as BN
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = (self.momentum if self.momentum is not None
                            else 1.0 / float(self.num_batches_tracked))
                self.running_mean.lerp_(mean, momentum)
                self.running_var.lerp_(var * n / (n - 1).clamp(min=1), momentum)
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


def convert_sync_batchnorm(module, device):
    """Every BatchNorm layer of `module` made synchronised, in place: torch's
    nn.SyncBatchNorm on CUDA, CPUSyncBatchNorm on the CPU. Both keep the Parameter and buffer
    objects (an optimizer built before still holds them), the train/eval mode and the
    state_dict keys (checkpoints load either way)."""
    if device.type == "cuda":
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if (isinstance(child, torch.nn.modules.batchnorm._BatchNorm)
                    and not isinstance(child, CPUSyncBatchNorm)):
                sync = CPUSyncBatchNorm(child.num_features, child.eps, child.momentum,
                                        child.affine, child.track_running_stats)
                if child.affine:
                    sync.weight, sync.bias = child.weight, child.bias
                if child.track_running_stats:
                    sync.running_mean, sync.running_var = child.running_mean, child.running_var
                    sync.num_batches_tracked = child.num_batches_tracked
                sync.train(child.training)
                setattr(parent, name, sync)
    return module


def distribute_model(model, device, find_unused_parameters=False):
    """Under torchrun: BatchNorm -> SyncBatchNorm, then DistributedDataParallel (gradients
    averaged over the ranks in the backward). Without a process group: `model` itself.

    Buffers are synchronised once, at the start, and not re-broadcast at every forward: with
    synchronised BatchNorm every rank computes the same running statistics itself."""
    if not in_process_group():
        return model
    model = convert_sync_batchnorm(model, device)
    ddp = torch.nn.parallel.DistributedDataParallel
    # newer torch calls it forward_sync_buffers (broadcast_buffers deprecated); 2.11 knows only
    # broadcast_buffers
    no_sync = ({"forward_sync_buffers": False}
               if "forward_sync_buffers" in inspect.signature(ddp.__init__).parameters
               else {"broadcast_buffers": False})
    return ddp(model, device_ids=[device.index] if device.type == "cuda" else None,
               find_unused_parameters=find_unused_parameters, gradient_as_bucket_view=True,
               **no_sync)


def epoch_generators(seed, epoch, device):
    """The random streams of one epoch, rebuilt from (seed, epoch) so that --resume replays
    them: (data-order generator on the CPU, augmentation generator on `device`), both the same
    on every rank; torch's global RNG (dropout) is reseeded per rank, so ranks drop different
    units."""
    key = seed * 100_003 + epoch
    torch.manual_seed(key * 1_009 + rank())
    return torch.Generator().manual_seed(key), torch.Generator(device).manual_seed(key)


# ---------------------------------------------------------------------------------------------
# interruption: SIGINT / SIGTERM
# ---------------------------------------------------------------------------------------------
class StopOnSignal:
    """`with StopOnSignal(output_dir) as stop:` around a training loop. SIGINT (Ctrl-C) and
    SIGTERM (kill, a batch scheduler's time limit) then only set a flag; the loop calls
    `stop.check(completed)` after every step and after each epoch's checkpoint, and the run
    stops there, cleanly, with 128 + the signal number (130 for SIGINT, 143 for SIGTERM) and one
    line saying how to resume.

    Nothing is saved on the way out: last.pth (written atomically at the end of every epoch)
    holds the last completed epoch, and --resume redoes the interrupted epoch from its start
    (its data order and augmentations are replayed from (seed, epoch)). A kill -9 leaves the
    same state. A second signal stops at once (through the same exit). Under torchrun every rank
    gets the signal; a rank left waiting in a collective for one that already stopped fails
    there, and that failure, once a signal was received, ends in the same clean exit.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, output_dir=None):
        self.output_dir = output_dir
        self.signum = None
        self.completed = None
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signum is not None:  # a second signal: stop now
            raise KeyboardInterrupt
        self.signum = signum

    def __bool__(self):
        return self.signum is not None

    def check(self, completed):
        """Stop here if a signal came; `completed` = the last epoch saved in last.pth."""
        self.completed = completed
        if self.signum is not None:
            raise SystemExit(self._exit_code())

    def _exit_code(self):
        if is_main_process():
            where = Path(self.output_dir or ".") / "last.pth"
            held = (f"{where} holds epoch {self.completed}" if self.completed
                    else "no epoch was completed yet")
            print(f"stopped by {signal.Signals(self.signum).name}: {held} and the partial epoch "
                  "is dropped; continue with the same command and --resume", file=sys.stderr,
                  flush=True)
        return 128 + self.signum

    def __exit__(self, exc_type, exc, tb):
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}
        if self.signum is not None and exc_type is not None and not issubclass(exc_type,
                                                                                 SystemExit):
            raise SystemExit(self._exit_code()) from None  # a second signal, or a peer left
        return False


# ---------------------------------------------------------------------------------------------
# data sets
# ---------------------------------------------------------------------------------------------
def _require_dir(path, what):
    path = Path(path)
    if not path.is_dir():
        state = "is a file, not a folder" if path.exists() else "does not exist"
        raise UserError(f"{what} folder {path} {state}; run `bash hw1_download.sh` "
                        "or `python make_demo_data.py --out DIR` for demo data")
    return path


def list_images(folder):
    """Sorted image files of an unlabeled folder (the Mini-ImageNet layout: mini/train/*.jpg)."""
    folder = _require_dir(folder, "image")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise UserError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {folder}; pass the "
                        "folder that holds them")
    return files


def read_office_csv(csv_path, image_dir=None, require_labels=True, duplicates="error"):
    """Office-Home csv (header `id,filename,label`) -> list of dicts with id, filename, path, label.

    A test csv has `None` (or an empty field) as label: label is then -1, which is only allowed
    when `require_labels` is False. When `image_dir` is given, every listed file must exist.
    The header may come in any column order and letter case (a UTF-8 byte-order mark, as Excel
    writes, is ignored); without an `id` column the id is the row number, without a `label`
    column every label is -1. A file listed twice is an error with duplicates="error" (training:
    it would count twice), kept with one warning with duplicates="warn" (inference: one output
    row per input row).
    """
    import csv

    csv_path = Path(csv_path)
    if not csv_path.is_file():
        state = "is a folder, not a file" if csv_path.is_dir() else "does not exist"
        raise UserError(f"csv file {csv_path} {state}; pass the csv with header "
                        "id,filename,label")
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            table = list(csv.reader(f))
    except UnicodeDecodeError:
        raise UserError(f"{csv_path} is not a text csv (not UTF-8); pass the csv with header "
                        "id,filename,label") from None
    except (OSError, csv.Error) as e:
        raise UserError(f"cannot read csv file {csv_path} ({first_line(e)})") from None
    if not table:
        raise UserError(f"{csv_path} is empty; expected the header id,filename,label")
    header = [h.strip().lower() for h in table[0]]
    if "filename" not in header:
        raise UserError(f"{csv_path} has header {','.join(table[0])!r}; expected "
                        "id,filename,label as its first line")
    if require_labels and "label" not in header:
        raise UserError(f"{csv_path} has no label column but this run needs labels; "
                        "a training csv has the header id,filename,label")
    col = {name: header.index(name) for name in ("id", "filename", "label") if name in header}
    rows, seen, repeated = [], set(), []
    for line_no, row in enumerate(table[1:], start=2):
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) < len(header):
            raise UserError(f"{csv_path}:{line_no} has {len(row)} fields, "
                            f"expected {len(header)} ({','.join(header)})")
        filename = row[col["filename"]].strip()
        if not filename:
            raise UserError(f"{csv_path}:{line_no} has an empty filename")
        if filename in seen:
            if duplicates == "error":
                raise UserError(f"{csv_path}:{line_no} lists {filename} a second time; "
                                "remove the repeated row")
            repeated.append(filename)
        seen.add(filename)
        raw_label = row[col["label"]].strip() if "label" in col else ""
        if raw_label in ("", "None", "none", "nan"):
            label = -1
        else:
            try:
                label = int(raw_label)
            except ValueError:
                label = -2
            if label < 0:
                raise UserError(f"{csv_path}:{line_no} has label {raw_label!r}, "
                                "expected an integer >= 0 or None")
        if label < 0 and require_labels:
            raise UserError(f"{csv_path}:{line_no} has no label ({raw_label or 'empty'}) but "
                            "this run needs labels; train on a labelled csv")
        row_id = row[col["id"]].strip() if "id" in col else str(line_no - 2)
        rows.append({"id": row_id, "filename": filename, "label": label,
                     "path": Path(image_dir) / filename if image_dir is not None else None})
    if not rows:
        raise UserError(f"{csv_path} lists no images")
    if repeated:
        print(f"warning: {csv_path} lists {len(repeated)} file(s) more than once (e.g. "
              f"{repeated[0]}); each row gets its own prediction", file=sys.stderr)
    if image_dir is not None:
        _require_dir(image_dir, "image")
        missing = [r["filename"] for r in rows if not r["path"].is_file()]
        if missing:
            raise UserError(f"{len(missing)} file(s) listed in {csv_path} are missing from "
                            f"{image_dir}, e.g. {missing[0]}; fix the csv or the folder")
    return rows


def list_sat_pairs(folder, require_masks=True):
    """Satellite pairs `xxxx_sat.jpg` + `xxxx_mask.png`, paired by id (never by sort order).

    Returns a sorted list of (id, sat_path, mask_path or None). With `require_masks`, a sat image
    without a mask or a mask without a sat image is an error naming the file.
    """
    folder = _require_dir(folder, "satellite image")
    sats = {p.name[: -len("_sat.jpg")]: p for p in folder.glob("*_sat.jpg")}
    masks = {p.name[: -len("_mask.png")]: p for p in folder.glob("*_mask.png")}
    if not sats:
        raise UserError(f"no *_sat.jpg images in {folder}; it should hold xxxx_sat.jpg + "
                        "xxxx_mask.png pairs")
    if require_masks:
        lonely = sorted(set(sats) ^ set(masks))
        if lonely:
            i = lonely[0]
            have, lack = f"{i}_sat.jpg", f"{i}_mask.png"
            if i not in sats:
                have, lack = lack, have
            raise UserError(f"{folder}/{have} has no partner {lack} "
                            f"({len(lonely)} unpaired file(s)); add the partner or remove it")
    return [(i, sats[i], masks.get(i)) for i in sorted(sats)]


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


# ---------------------------------------------------------------------------------------------
# image bank
# ---------------------------------------------------------------------------------------------
def load_rgb(path):
    """Any image PIL can read -> 8-bit RGB PIL image, the one decoder of training banks, both
    inference scripts, the scorer and SAM.

    Grayscale (L, 1), palette (P), RGBA/LA (alpha dropped, as torchvision's ImageReadMode.RGB),
    CMYK and YCbCr convert with PIL. 16-bit grayscale (I;16*) is mapped to 8 bits by a fixed
    v / 257 (65535 -> 255, an 8-bit image saved as 16 bits comes back exactly), not by PIL's
    clipping, nor by a per-image stretch that would change brightness from file to file.
    32-bit integer (I) images use the same map when their values fit 16 bits, else their max.
    A missing, empty, truncated or non-image file is a UserError naming it.
    """
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode.startswith("I"):
                arr = np.asarray(im, dtype=np.float64)
                top = arr.max(initial=0.0)
                scale = 255.0 / 65535.0 if im.mode.startswith("I;16") or top <= 65535 else (
                    255.0 / top)
                im = Image.fromarray((arr * scale).clip(0, 255).round().astype(np.uint8))
            return im.convert("RGB")
    except FileNotFoundError:
        raise UserError(f"image {path} does not exist; fix the path or add the file") from None
    except Image.UnidentifiedImageError:
        raise UserError(f"cannot read image {path} (not an image file PIL can decode); "
                        "replace or remove it") from None
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as e:
        raise UserError(f"cannot read image {path} ({first_line(e)}); replace or remove it"
                        ) from None


def _decode(path, size, interpolation):
    image = load_rgb(path)
    if size is not None and image.size != (size[1], size[0]):
        image = image.resize((size[1], size[0]), interpolation)
    return np.asarray(image)


def _decode_mask(path, size, off_palette=None):
    """Class indices of a mask, decoded as the course scorer does (any colour has a class).
    Paths with pixels outside the exact palette are appended to `off_palette`, if given."""
    rgb = np.asarray(load_rgb(path))
    classes = mask_to_classes(rgb)
    if off_palette is not None and not np.array_equal(PALETTE[classes], rgb):
        off_palette.append(path)  # list.append is atomic: safe from the decoding threads
    if size is not None and classes.shape != tuple(size):
        classes = np.asarray(Image.fromarray(classes).resize((size[1], size[0]), Image.NEAREST))
    return classes


def _pair(size):
    if size is None:
        return None
    return (size, size) if isinstance(size, int) else tuple(size)


class ImageBank:
    """A whole image folder as ONE uint8 tensor, decoded once and optionally cached on disk.

    `images`: (N, 3, H, W) uint8 for kind="image"; (N, H, W) uint8 class indices for kind="mask".
    Keeping the data set as uint8 on the training device (38,400 mini images at 84 px are 0.8 GB,
    2,000 satellite images at 512 px 1.6 GB) lets each step index a batch and augment it on the
    GPU with no DataLoader workers and no host round trip.
    """

    def __init__(self, images, paths=()):
        self.images = images
        self.paths = list(paths)

    def __len__(self):
        return self.images.shape[0]

    def to(self, device):
        self.images = self.images.to(device, non_blocking=True)
        return self

    @property
    def device(self):
        return self.images.device

    def batch(self, index):
        """Rows `index` (a LongTensor on any device) as a tensor on the bank's device."""
        return self.images[index.to(self.images.device)]

    @classmethod
    def from_paths(cls, paths, size=None, kind="image", cache_dir=None, workers=None,
                   progress=False, size_flag=None):
        """Decode `paths` in parallel threads (PIL releases the GIL while decoding).

        size: None (all images must share one size), an int (square) or (H, W); images are
        resized with antialiased bicubic, masks with nearest neighbour. Any mode PIL reads
        becomes RGB (utils.load_rgb). size_flag: the flag that sets `size`, named in the error
        when images of different sizes come without one.
        cache_dir: where `bank-<hash>.npy` is kept; the hash covers the file names, sizes and
        modification times, the target size and the kind, so a changed folder is re-decoded.
        Masks with colours outside the palette are decoded as the course scorer decodes them
        (each channel thresholded at 128, pure red as Unknown) with one warning per call.
        """
        paths = [Path(p) for p in paths]
        if not paths:
            raise UserError("no images to load")
        size = _pair(size)
        cache_file = None
        if cache_dir is not None:
            key = hashlib.sha1(repr((kind, size)).encode())
            for p in paths:
                try:
                    st = p.stat()
                except OSError:
                    raise UserError(f"image {p} does not exist; fix the path or add the "
                                    "file") from None
                key.update(f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
            cache_file = Path(cache_dir) / f"bank-{kind}-{key.hexdigest()[:16]}.npy"
            if cache_file.exists():
                try:
                    arr = np.load(cache_file)
                    if arr.shape[0] == len(paths):
                        return cls(torch.from_numpy(arr), paths)
                except (OSError, ValueError):
                    pass  # a broken cache is rebuilt below
        off_palette = []
        if kind == "image":
            fn = lambda p: _decode(p, size, Image.BICUBIC)  # noqa: E731
        elif kind == "mask":
            fn = lambda p: _decode_mask(p, size, off_palette)  # noqa: E731
        else:
            raise ValueError(f"kind must be 'image' or 'mask', not {kind!r}")
        workers = workers or min(16, (os.cpu_count() or 2) * 2)
        with ThreadPoolExecutor(workers) as pool:
            it = pool.map(fn, paths)
            if progress:
                from tqdm import tqdm
                it = tqdm(it, total=len(paths), desc=f"decoding {len(paths)} {kind}s", leave=False)
            arrays = list(it)
        if off_palette:
            print(f"warning: {len(off_palette)} of {len(paths)} masks hold colours outside the "
                  f"palette (e.g. {sorted(off_palette)[0]}); read as the course scorer reads "
                  "them: each channel >= 128 is on, pure red is Unknown", file=sys.stderr)
        if len({a.shape for a in arrays}) > 1:
            k = next(k for k, arr in enumerate(arrays) if arr.shape != arrays[0].shape)
            fix = (f"pass {size_flag} N to resize them when loaded" if size_flag
                   else "resize them to one size")
            raise UserError(f"images of different sizes: {paths[0]} is {arrays[0].shape[1]}x"
                            f"{arrays[0].shape[0]} but {paths[k]} is {arrays[k].shape[1]}x"
                            f"{arrays[k].shape[0]}; {fix}")
        arr = np.stack(arrays)
        if kind == "image":
            arr = np.ascontiguousarray(arr.transpose(0, 3, 1, 2))  # (N, H, W, 3) -> (N, 3, H, W)
        if cache_file is not None:
            try:
                cache_file.parent.mkdir(parents=True, exist_ok=True)
                _atomic_write(cache_file, lambda f: np.save(f, arr), sync=False)
            except OSError as e:  # the cache only saves time: go on without it
                print(f"warning: cannot write the image cache {cache_file} ({first_line(e)}); "
                      "continuing without it", file=sys.stderr)
        return cls(torch.from_numpy(arr), paths)


def index_batches(n, batch_size, generator=None, device="cpu", drop_last=True, shuffle=True,
                  rank=0, world_size=1):
    """Yield LongTensor index batches over range(n): one permutation per epoch, shard `rank` of
    `world_size` (each rank takes its own stride of the permutation; `generator` must be seeded
    alike on every rank). With drop_last every rank gets the same number of batches, and step
    s of the ranks together covers exactly the global batch s of a single process with
    batch_size * world_size: rank r holds its positions r, r + world_size, ... The permutation
    goes to `device` once per epoch, so a step does no host-to-device copy."""
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    if drop_last:
        order = order[: len(order) - len(order) % world_size]
    order = order[rank::world_size].to(device, non_blocking=True)
    stop = len(order) - (len(order) % batch_size if drop_last else 0)
    for start in range(0, stop, batch_size):
        yield order[start:start + batch_size]


# ---------------------------------------------------------------------------------------------
# augmentation on the training device, per-sample random parameters
# ---------------------------------------------------------------------------------------------
def to_float(x):
    """uint8 (B, 3, H, W) in 0..255 -> float in 0..1; a float tensor passes unchanged."""
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()


@functools.lru_cache(maxsize=32)
def _channel_constants(values, device, dtype):
    """A (1, C, 1, 1) constant on `device`, made once: building it at every call would copy it
    from the host and so wait for the GPU in the middle of each training step."""
    with torch.inference_mode(False):
        return torch.tensor(values, dtype=dtype).view(1, -1, 1, 1).to(device)


def normalize(x, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    m = _channel_constants(tuple(mean), x.device, x.dtype)
    s = _channel_constants(tuple(std), x.device, x.dtype)
    return (x - m) / s


def _rand(n, device, generator=None, low=0.0, high=1.0, shard=(0, 1)):
    """U(low, high) draws for n samples (n: an int, or a shape whose first entry is the batch).
    shard = (rank, world_size): draw for the global batch (n * world_size samples) and keep this
    rank's rows rank, rank + world_size, ... (the samples index_batches gives it), so that with
    one generator seeded alike on every rank, N ranks draw what one process would."""
    r, world = shard
    shape = (n,) if isinstance(n, int) else tuple(n)
    u = torch.rand((shape[0] * world, *shape[1:]), device=device, generator=generator)
    return u[r::world] * (high - low) + low


def random_crop_boxes(n, scale, ratio, device, generator=None, attempts=10, shard=(0, 1)):
    """RandomResizedCrop boxes for n images at once, as (width, height, cx, cy) fractions of
    the source image. Same law as torchvision's: area ~ U(scale), log-ratio ~ U(log ratio), up to
    `attempts` rejections, then the whole image (torchvision falls back to a centre crop)."""
    area = _rand((n, attempts), device, generator, *scale, shard=shard)
    log_r = _rand((n, attempts), device, generator, math.log(ratio[0]), math.log(ratio[1]),
                  shard=shard)
    r = torch.exp(log_r)
    w = torch.sqrt(area * r)
    h = torch.sqrt(area / r)
    ok = (w <= 1) & (h <= 1)
    first = torch.where(ok.any(1), ok.float().argmax(1), torch.full((n,), -1, device=device))
    idx = first.clamp(min=0).unsqueeze(1)
    w = torch.where(first >= 0, w.gather(1, idx).squeeze(1), torch.ones(n, device=device))
    h = torch.where(first >= 0, h.gather(1, idx).squeeze(1), torch.ones(n, device=device))
    cx = (1 - w) * _rand(n, device, generator, shard=shard) + w / 2
    cy = (1 - h) * _rand(n, device, generator, shard=shard) + h / 2
    return w, h, cx, cy


def crop_theta(w, h, cx, cy, flip_x=None, flip_y=None, rot90=None):
    """Affine matrices (B, 2, 3) for F.affine_grid that take the box (w, h, cx, cy) of each source
    image to the whole output, with optional per-sample flips and quarter turns (k in 0..3).

    In normalised coordinates (-1..1) a box of width w centred at cx is x_in = w * x_out +
    (2 cx - 1). Flips negate a column; a quarter turn maps (x, y) -> (-y, x). With
    align_corners=False these maps send pixel centres to pixel centres whenever the box is the
    whole image, so flips and rotations of a square image are exact (masks stay exact too)."""
    b = w.shape[0]
    # rows act on output (x, y); start with the rotation/flip part R (B, 2, 2), then scale
    rot = torch.eye(2, device=w.device).repeat(b, 1, 1)
    if rot90 is not None:  # cos and sin of k quarter turns, exactly 1, 0 or -1 (no host copy)
        cos = torch.cos(rot90.float() * (math.pi / 2)).round()
        sin = torch.sin(rot90.float() * (math.pi / 2)).round()
        rot = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], 1)
    if flip_x is not None:
        rot[:, :, 0] = torch.where(flip_x.unsqueeze(1), -rot[:, :, 0], rot[:, :, 0])
    if flip_y is not None:
        rot[:, :, 1] = torch.where(flip_y.unsqueeze(1), -rot[:, :, 1], rot[:, :, 1])
    theta = torch.zeros(b, 2, 3, device=w.device)
    theta[:, 0, :2] = rot[:, 0] * w.unsqueeze(1)
    theta[:, 1, :2] = rot[:, 1] * h.unsqueeze(1)
    theta[:, 0, 2] = 2 * cx - 1
    theta[:, 1, 2] = 2 * cy - 1
    return theta


def warp(x, theta, out_hw, mode="bilinear"):
    """Resample each image of x (B, C, H, W) float through its own affine map -> (B, C, h, w)."""
    grid = F.affine_grid(theta.to(x.dtype), (x.shape[0], x.shape[1], *out_hw), align_corners=False)
    return F.grid_sample(x, grid, mode=mode, padding_mode="reflection", align_corners=False)


def rgb_to_gray(x):
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])


def rgb_to_hsv(x):
    r, g, b = x.unbind(1)
    maxc, _ = x.max(1)
    minc, _ = x.min(1)
    v = maxc
    delta = maxc - minc
    s = torch.where(maxc > 0, delta / maxc.clamp(min=1e-8), torch.zeros_like(maxc))
    d = delta.clamp(min=1e-8)
    h = torch.where(maxc == r, ((g - b) / d) % 6,
                    torch.where(maxc == g, (b - r) / d + 2, (r - g) / d + 4))
    h = torch.where(delta > 0, h / 6.0, torch.zeros_like(h))
    return torch.stack([h % 1.0, s, v], 1)


def hsv_to_rgb(x):
    h, s, v = x.unbind(1)
    k = torch.stack([(5 + h * 6) % 6, (3 + h * 6) % 6, (1 + h * 6) % 6], 1)
    return v.unsqueeze(1) - (v * s).unsqueeze(1) * torch.clamp(torch.minimum(k, 4 - k), 0, 1)


def gaussian_blur(x, sigma, kernel_size):
    """Blur each image with its own sigma (B,) using one grouped separable convolution."""
    b, c, h, w = x.shape
    half = kernel_size // 2
    t = torch.arange(-half, half + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-(t.view(1, -1) ** 2) / (2 * sigma.view(-1, 1).to(x.dtype) ** 2))  # (B, K)
    k = k / k.sum(1, keepdim=True)
    k = k.repeat_interleave(c, 0)  # one kernel per (image, channel) group
    y = x.reshape(1, b * c, h, w)
    g = b * c
    y = F.conv2d(F.pad(y, (half, half, 0, 0), mode="reflect"), k.view(g, 1, 1, -1), groups=g)
    y = F.conv2d(F.pad(y, (0, 0, half, half), mode="reflect"), k.view(g, 1, -1, 1), groups=g)
    return y.view(b, c, h, w)


class _BatchAugment:
    """What both augmentations share: `generator` (None: torch's global RNG) and `shard`
    (rank, world_size) under torchrun (see _rand); the training loops set both per epoch."""

    generator = None
    shard = (0, 1)

    def _uniform(self, x):
        """U(low=0, high=1) draws, one per sample of the batch x: self._uniform(x)(low, high)."""
        return functools.partial(_rand, x.shape[0], x.device, self.generator, shard=self.shard)


class ClassificationAugment(_BatchAugment):
    """Per-sample random augmentation of a uint8 batch on its own device (Problem 1).

    out = normalize(solarize?(blur?(gray?(jitter?(flip?(random_resized_crop(x))))))), each "?" an
    independent coin per image, each image with its own crop box, jitter factors and blur sigma.
    Defaults are the report's list (RandomResizedCrop(128), flip, ColorJitter(0.2 x 4), always);
    BYOL's paper views set p_jitter=0.8, jitter=(0.4, 0.4, 0.2, 0.1), p_gray=0.2, p_blur and
    p_solarize. Jitter factors follow torchvision (brightness/contrast/saturation in
    [1-s, 1+s], hue shift in [-s, s]) in a fixed order rather than a random one.
    `train=False` gives the evaluation view: resize to `size` (no crop, no colour change).
    """

    def __init__(self, size=128, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), p_flip=0.5,
                 jitter=(0.2, 0.2, 0.2, 0.2), p_jitter=1.0, p_gray=0.0, p_blur=0.0,
                 blur_sigma=(0.1, 2.0), p_solarize=0.0, train=True, generator=None):
        self.size = _pair(size)
        self.scale, self.ratio, self.p_flip = scale, ratio, p_flip
        self.jitter, self.p_jitter, self.p_gray = jitter, p_jitter, p_gray
        self.p_blur, self.blur_sigma, self.p_solarize = p_blur, blur_sigma, p_solarize
        self.train, self.generator = train, generator
        # a 23-px kernel at 224 px is BYOL's 10%; keep that fraction, odd, at least 3
        self.kernel_size = max(3, int(0.1 * self.size[0]) // 2 * 2 + 1)

    def __call__(self, x):
        x = to_float(x)
        if not self.train:
            if x.shape[-2:] != self.size:
                x = F.interpolate(x, size=self.size, mode="bilinear", antialias=True,
                                  align_corners=False)
            return normalize(x)
        rand, coin = self._uniform(x), (-1, 1, 1, 1)
        w, h, cx, cy = random_crop_boxes(x.shape[0], self.scale, self.ratio, x.device,
                                         self.generator, shard=self.shard)
        flip = rand() < self.p_flip
        x = warp(x, crop_theta(w, h, cx, cy, flip_x=flip), self.size)  # (B, 3, S, S)
        if self.p_jitter > 0 and any(self.jitter):
            x = torch.where((rand() < self.p_jitter).view(coin), self._jitter(x), x)
        if self.p_gray > 0:
            x = torch.where((rand() < self.p_gray).view(coin), rgb_to_gray(x).expand_as(x), x)
        if self.p_blur > 0:
            sigma = rand(*self.blur_sigma)
            x = torch.where((rand() < self.p_blur).view(coin),
                            gaussian_blur(x, sigma, self.kernel_size), x)
        if self.p_solarize > 0:
            x = torch.where((rand() < self.p_solarize).view(coin),
                            torch.where(x < 0.5, x, 1.0 - x), x)
        return normalize(x)

    def _jitter(self, x):
        rand = self._uniform(x)
        b, c, s, hue = self.jitter
        view = (-1, 1, 1, 1)
        if b:
            x = (x * rand(1 - b, 1 + b).view(view)).clamp(0, 1)
        if c:
            mean = rgb_to_gray(x).mean((1, 2, 3), keepdim=True)
            x = ((x - mean) * rand(1 - c, 1 + c).view(view) + mean).clamp(0, 1)
        if s:
            gray = rgb_to_gray(x)
            x = ((x - gray) * rand(1 - s, 1 + s).view(view) + gray).clamp(0, 1)
        if hue:
            hsv = rgb_to_hsv(x)
            hsv[:, 0] = (hsv[:, 0] + rand(-hue, hue).view(-1, 1, 1)) % 1.0
            x = hsv_to_rgb(hsv).clamp(0, 1)
        return x


class SegmentationAugment(_BatchAugment):
    """Joint per-sample augmentation of (image uint8 (B,3,H,W), mask uint8 (B,H,W)) (Problem 2).

    Each sample draws a horizontal flip, a vertical flip, a quarter turn k in 0..3 (square
    inputs only) and a crop of side `s` in [min_scale, 1] of the image, resized back to `size`.
    Image and mask go through the SAME affine map: bilinear for the image, nearest for the mask,
    so the labels stay exact class indices. Returns (normalised float image, int64 mask).
    """

    def __init__(self, size=None, min_scale=0.5, p_flip=0.5, rotate=True, generator=None):
        self.size = _pair(size)
        self.min_scale, self.p_flip, self.rotate = min_scale, p_flip, rotate
        self.generator = generator

    def __call__(self, image, mask):
        x = to_float(image)
        rand = self._uniform(x)
        size = self.size or tuple(x.shape[-2:])
        s = rand(self.min_scale, 1.0)  # crop side, a fraction of the image side
        cx = (1 - s) * rand() + s / 2
        cy = (1 - s) * rand() + s / 2
        square = x.shape[-1] == x.shape[-2] and size[0] == size[1]
        k = rand(0, 4).floor().long().clamp(max=3) if self.rotate and square else None
        theta = crop_theta(s, s, cx, cy, flip_x=rand() < self.p_flip,
                           flip_y=rand() < self.p_flip, rot90=k)
        x = warp(x, theta, size, mode="bilinear")
        m = warp(mask.unsqueeze(1).float(), theta, size, mode="nearest")
        return normalize(x), m.squeeze(1).round().long()


# ---------------------------------------------------------------------------------------------
# masks: the course scorer's codec and the palette
# ---------------------------------------------------------------------------------------------
NUM_CLASSES = 7  # six land-cover classes + Unknown; models predict all seven
SCORED_CLASSES = 6  # mIoU averages classes 0..5; Unknown (6) is left out of the mean
UNKNOWN = 6
CLASS_NAMES = ("Urban", "Agriculture", "Rangeland", "Forest", "Water", "Barren", "Unknown")
PALETTE = np.array([(0, 255, 255), (255, 255, 0), (255, 0, 255), (0, 255, 0), (0, 0, 255),
                    (255, 255, 255), (0, 0, 0)], dtype=np.uint8)
# The scorer reads each pixel as code = 4*(R>=128) + 2*(G>=128) + (B>=128) and maps codes
# 3,6,5,2,1,7,0 to classes 0..6. Code 4 (pure red) is no class: the course scorer leaves such
# pixels uninitialised (np.empty), so their class is undefined there; we decode it as Unknown (6),
# which keeps it out of every class's true positives and false negatives.
CODE_TO_CLASS = np.array([6, 4, 3, 0, 6, 2, 1, 5], dtype=np.uint8)


def mask_to_classes(rgb):
    """(H, W, 3) uint8 RGB mask -> (H, W) uint8 class indices, exactly as the course scorer."""
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] < 3:
        raise ValueError(f"expected an (H, W, 3) RGB mask, got shape {rgb.shape}")
    bits = rgb[..., :3] >= 128
    code = 4 * bits[..., 0].astype(np.uint8) + 2 * bits[..., 1] + bits[..., 2]
    return CODE_TO_CLASS[code]


def classes_to_rgb(classes):
    """(H, W) class indices (numpy or tensor) -> (H, W, 3) uint8 palette image."""
    if isinstance(classes, torch.Tensor):
        classes = classes.cpu().numpy()
    return PALETTE[np.asarray(classes, dtype=np.int64)]


def read_mask(path):
    return mask_to_classes(np.asarray(load_rgb(path)))


def write_mask(path, classes):
    """Write a prediction as an RGB palette PNG atomically (temp file + os.replace)."""
    save_image(path, Image.fromarray(classes_to_rgb(classes), mode="RGB"))


def save_image(path, image):
    """Save a PIL image (or an (H, W[, C]) uint8 array) atomically: whole or absent. The format
    follows the file's extension (PNG when it has none PIL knows)."""
    if not isinstance(image, Image.Image):
        image = Image.fromarray(np.asarray(image))
    buf = io.BytesIO()
    image.save(buf, format=Image.registered_extensions().get(Path(path).suffix.lower(), "PNG"))
    return atomic_write_bytes(path, buf.getvalue(), sync=False)


# ---------------------------------------------------------------------------------------------
# mIoU
# ---------------------------------------------------------------------------------------------
class ConfusionMatrix:
    """Counts (truth, prediction) pairs over every pixel of every image of a split.

    mat[t, p] = number of pixels of truth t predicted as p, (7, 7) int64, on any device.
    IoU_c = TP / (TP + FP + FN) with TP = mat[c, c], FP = column c minus TP (Unknown truth
    predicted as c included, as in the course scorer), FN = row c minus TP. The mean runs over
    classes 0..5. A class absent from both truth and prediction has 0/0: the course scorer
    returns NaN for the whole mean then; we report that class's IoU as NaN and average over the
    classes that are defined (on the real validation split every class is present, so both
    agree there).
    """

    def __init__(self, num_classes=NUM_CLASSES, device="cpu"):
        self.n = num_classes
        self.mat = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    def update(self, target, pred):
        t = torch.as_tensor(target).to(self.mat.device).reshape(-1).long()
        p = torch.as_tensor(pred).to(self.mat.device).reshape(-1).long()
        if t.shape != p.shape:
            raise ValueError(f"target has {t.numel()} pixels, prediction {p.numel()}")
        ok = (t >= 0) & (t < self.n) & (p >= 0) & (p < self.n)
        counts = torch.bincount(self.n * t[ok] + p[ok], minlength=self.n ** 2)
        self.mat += counts.view(self.n, self.n)
        return self

    def reset(self):
        self.mat.zero_()

    def iou(self, classes=SCORED_CLASSES):
        """IoU of classes 0..classes-1 as a float64 CPU tensor; NaN for a class never seen."""
        mat = self.mat.double().cpu()
        tp = mat.diag()
        denom = mat.sum(0) + mat.sum(1) - tp
        iou = torch.where(denom > 0, tp / denom.clamp(min=1), torch.full_like(tp, float("nan")))
        return iou[:classes]

    def miou(self, classes=SCORED_CLASSES):
        iou = self.iou(classes)
        defined = ~torch.isnan(iou)
        return float(iou[defined].mean()) if defined.any() else float("nan")

    def pixel_accuracy(self):
        mat = self.mat.double()
        return float(mat.diag().sum() / mat.sum().clamp(min=1))

    def per_class(self, classes=SCORED_CLASSES):
        """{class name: IoU or None} for logs (JSON has no NaN)."""
        return {CLASS_NAMES[i]: (None if math.isnan(v) else round(v, 6))
                for i, v in enumerate(self.iou(classes).tolist())}


# ---------------------------------------------------------------------------------------------
# checkpoints
# ---------------------------------------------------------------------------------------------
_UMASK = []
_UMASK_LOCK = threading.Lock()


def _umask():
    """The process umask, read once (reading it means setting it: a lock keeps the decoding
    and writing threads from seeing each other's temporary value)."""
    with _UMASK_LOCK:
        if not _UMASK:
            _UMASK.append(os.umask(0o022))
            os.umask(_UMASK[0])
        return _UMASK[0]


def _atomic_write(path, write, sync=True):
    """Write `path` through `write(file)` into a hidden temp file beside it, then os.replace:
    readers see the old file or the whole new one, never a part; a failed write leaves no temp
    file behind. The result gets the usual permissions (0666 minus the umask; temp files are
    0600)."""
    path = Path(path)
    tmp = None
    try:
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.",
                                         delete=False) as f:
            tmp = f.name
            write(f)
            f.flush()
            if sync:
                os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
        tmp = None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
    return path


def atomic_write_bytes(path, data, sync=True):
    return _atomic_write(path, lambda f: f.write(data), sync)


def save_checkpoint(path, model, optimizer=None, scheduler=None, scaler=None, epoch=0,
                    best_metric=None, args=None, **extra):
    """Write {model, optimizer, scheduler, scaler, epoch, best_metric, args, ...} atomically.

    The model is unwrapped first (no `module.`/`_orig_mod.` prefixes). The file appears under its
    name only once fully written and synced, so a crash mid-save leaves the previous one intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "model": unwrap_model(model).state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "epoch": epoch,
        "best_metric": best_metric,
        "args": args_dict(args),
        **extra,
    }
    return _atomic_write(path, lambda f: torch.save(state, f))


def args_dict(args):
    """argparse.Namespace (or dict, or None) -> a plain dict that pickles without our classes."""
    if args is None:
        return None
    items = args.items() if isinstance(args, dict) else vars(args).items()
    return {k: _jsonable(v) for k, v in items}


def load_checkpoint(path, map_location="cpu", expect_keys=("model",)):
    """torch.load with one-line errors for a missing, truncated or foreign file."""
    path = Path(path)
    if not path.is_file():
        state = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise UserError(f"checkpoint {path} {state}; run `bash hw1_download.sh` or train "
                        "one first")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # torch raises RuntimeError, EOFError, UnpicklingError, ...
        raise UserError(f"checkpoint {path} cannot be read ({type(e).__name__}: "
                        f"{first_line(e, 100)}); it is truncated or not a PyTorch file - "
                        "download or train it again") from None
    if expect_keys and not (isinstance(ckpt, dict) and all(k in ckpt for k in expect_keys)):
        what = ("a bare state_dict" if isinstance(ckpt, dict) and ckpt
                and all(isinstance(v, torch.Tensor) for v in ckpt.values()) else "another file")
        raise UserError(f"{path} is not a checkpoint of this repository's training scripts "
                        f"(no {', '.join(expect_keys)} entries: {what}); pass a best.pth or "
                        "last.pth they wrote")
    return ckpt


def resume_run(output_dir, model, optimizer=None, scheduler=None, *, scaler=None,
               best_metric=None, expect=None):
    """--resume: restore model/optimizer/scheduler/scaler from output_dir/last.pth (written by
    save_checkpoint) and drop log.jsonl lines past its epoch, so no epoch is logged twice.

    Returns (first epoch to run, best_metric, best_epoch). A folder without last.pth (a run
    stopped in its first epoch) starts again at epoch 1 with an empty log. A file written with
    other model options ends in one line instead of a state_dict dump. `expect` ({arg: value})
    names the saved args that must match, e.g. {"model_name": "fcn32s"}.
    """
    out = Path(output_dir)
    last = out / "last.pth"
    if not last.exists():
        print(f"no {last} to resume from; starting at epoch 1")
        if is_main_process():  # under torchrun every rank loads, rank 0 alone writes
            truncate_jsonl(out / "log.jsonl", 0)
        return 1, best_metric, 0
    ckpt = load_checkpoint(last)
    saved = ckpt.get("args") or {}
    for key, value in (expect or {}).items():
        if saved.get(key) != value:
            raise UserError(f"{last} holds a run with {key}={saved.get(key)}, not {value}; "
                            "pick another --output-dir")
    try:
        unwrap_model(model).load_state_dict(ckpt["model"])
        for obj, key in ((optimizer, "optimizer"), (scheduler, "scheduler"), (scaler, "scaler")):
            if obj is not None and ckpt.get(key) is not None:
                obj.load_state_dict(ckpt[key])
    except (RuntimeError, ValueError, KeyError) as e:
        first = first_line(e, 200)
        raise UserError(f"cannot resume from {last}: it was written with other model or "
                        f"optimizer options ({first}); start again with --overwrite") from None
    if is_main_process():
        truncate_jsonl(out / "log.jsonl", ckpt["epoch"])
    print(f"resumed from {last} (epoch {ckpt['epoch']})")
    return ckpt["epoch"] + 1, ckpt.get("best_metric", best_metric), ckpt.get("best_epoch", 0)


_PREFIXES = ("module.", "_orig_mod.", "backbone.", "online_encoder.net.", "net.", "encoder.")


def strip_prefixes(state_dict, prefixes=_PREFIXES):
    out = {}
    for k, v in state_dict.items():
        changed = True
        while changed:
            changed = False
            for p in prefixes:
                if k.startswith(p):
                    k, changed = k[len(p):], True
        out[k] = v
    return out


def load_resnet_weights(model, source, skip_fc=True, verbose=True):
    """Load a bare ResNet50 state_dict (the format of pretrain_model_SL.pt and of our
    backbone.pth) or a checkpoint holding one under "model" into a torchvision ResNet.

    Wrapper prefixes (module., backbone., ...) are stripped; with `skip_fc` the classifier
    weights of the source are dropped (a new head is trained). Prints and returns the missing
    and unexpected keys instead of failing on them, so a wrong file is visible at a glance.
    """
    if isinstance(source, (str, Path)):
        state = load_checkpoint(source, expect_keys=())
        name = str(source)
    else:
        state, name = source, "state_dict"
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{name} is not a ResNet state_dict")
    state = strip_prefixes(state)
    if skip_fc:
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    target = model.state_dict()
    shape_bad = [k for k, v in state.items() if k in target and target[k].shape != v.shape]
    if shape_bad:
        raise UserError(f"{name}: {len(shape_bad)} tensor(s) have the wrong shape for a "
                        f"ResNet50, e.g. {shape_bad[0]}; is it a ResNet50 state_dict?")
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not (skip_fc and k.startswith("fc."))]
    loaded = len(state) - len(result.unexpected_keys)
    if loaded == 0:
        raise UserError(f"{name} shares no weight with a ResNet50; wrong file?")
    if verbose:
        print(f"loaded {loaded} tensors from {name}; missing {len(missing)}"
              + (f" (e.g. {missing[:3]})" if missing else "")
              + f"; unexpected {len(result.unexpected_keys)}"
              + (f" (e.g. {result.unexpected_keys[:3]})" if result.unexpected_keys else ""),
              file=sys.stderr)
    return missing, list(result.unexpected_keys)
