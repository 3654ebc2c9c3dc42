"""The run skeleton every training script shares (BYOL, fine-tuning, FCN32s, DeepLabV3).

A run: `prepare_output_dir` (refuses a used folder unless --resume/--overwrite, writes args.json),
`print_run_header`, `make_optimizer` + `make_lr_scheduler` (stepped once per optimizer step,
inside the epoch function), `resume_run` (last.pth -> model, optimizer, scheduler, scaler,
epoch, best metric and best epoch), then `run_epochs`, which loops over the epochs, times each
one, appends its record to log.jsonl and writes last.pth / best.pth with the same fields for every
script. `StopOnSignal` turns SIGINT/SIGTERM into a clean stop with a resume hint.
"""

import json
import math
import signal
import sys
import threading
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.distributed as dist

import cli
import data
import distributed
import utils
from errors import UserError, first_line
from records import (
    _jsonable,
    append_jsonl,
    atomic_link,
    git_sha,
    truncate_jsonl,
    writable_dir,
    write_json,
)


def fused_optimizer(device):
    """`fused=` of torch.optim.AdamW/SGD: the fused CUDA kernels, unless switched off."""
    return torch.device(device).type == "cuda" and utils.TUNING["fused_optimizer"]


def make_optimizer(groups, name, lr, weight_decay, device, momentum=0.9, nesterov=False,
                   decay_all=False, betas=None):
    """AdamW, Adam or SGD (momentum) for every training script, fused on CUDA.

    `groups`: parameters, or param-group dicts (their own "lr" kept). Each group is split in
    two: conv/linear weights (ndim > 1) get `weight_decay`, biases and BatchNorm affine
    parameters none, as in the BYOL and ResNet recipes; `decay_all` decays every parameter, as
    `AdamW(model.parameters(), weight_decay=...)` does (the report's code). Frozen parameters
    are left out. "adam" is torch's Adam, whose weight decay is an L2 term in the gradient."""
    groups = list(groups)
    if groups and not isinstance(groups[0], dict):
        groups = [{"params": groups}]
    split = []
    for group in groups:
        params = [p for p in group["params"] if p.requires_grad]
        for decay, part in ((weight_decay, [p for p in params if p.ndim > 1 or decay_all]),
                            (0.0, [p for p in params if p.ndim <= 1 and not decay_all])):
            if part:
                split.append({**group, "params": part, "weight_decay": decay})
    if not split:
        raise ValueError("make_optimizer: no trainable parameters")
    fused = fused_optimizer(device)
    adam = {"lr": lr, "fused": fused, **({"betas": tuple(betas)} if betas else {})}
    if name == "sgd":
        return torch.optim.SGD(split, lr=lr, momentum=momentum, nesterov=nesterov, fused=fused)
    if name == "adamw":
        return torch.optim.AdamW(split, **adam)
    if name == "adam":
        return torch.optim.Adam(split, **adam)
    raise ValueError(f"unknown optimizer {name!r}; known: adamw, adam, sgd")


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


def print_run_header(args, device, batch_size=None, lr=None):
    print(f"git {git_sha()} | device {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
          + (f" | {dist.get_backend()} x {distributed.world_size()}"
             if distributed.in_process_group() else "")
          + (f" | batch {batch_size}" if batch_size is not None else "")
          + (f" | lr {lr:g}" if lr is not None else ""))
    if hasattr(args, "amp"):
        print(f"precision: {utils.precision_name(device, args.amp)}")
    print("args: " + json.dumps({k: _jsonable(v) for k, v in sorted(vars(args).items())}))


class CudaMemory:
    """The GPU memory figures MicroBatch measures with (a test passes a fake with these three)."""

    def __init__(self, device):
        self.device = torch.device(device)

    def start(self):
        """Reset the peak counter; the bytes allocated now (weights, optimizer state)."""
        torch.cuda.reset_peak_memory_stats(self.device)
        return torch.cuda.memory_allocated(self.device)

    def peak(self):
        return torch.cuda.max_memory_allocated(self.device)

    def capacity(self):
        """What this process can hold: free on the card + what PyTorch's allocator keeps."""
        return torch.cuda.mem_get_info(self.device)[0] + torch.cuda.memory_reserved(self.device)


class MicroBatch:
    """--micro-batch: how many images one forward pass takes. A whole number N splits each
    optimizer step into micro-batches of at most N whose gradients accumulate (optimizer_step).
    "auto" on CUDA measures the first step's first images (`probe_size`; their gradient counts)
    and chooses the largest micro-batch that fits (`choose`): the whole batch if it fits, so
    that BatchNorm sees the recipe's batch. A step that still runs out of memory is redone in
    micro-batches of half the size, with one line that says so. "auto" on the CPU: whole batches.
    `memory`: the figures to measure with (default: CudaMemory on CUDA)."""

    MARGIN = 0.9  # the share of the room a micro-batch is planned to fill (fragmentation, cuDNN)

    def __init__(self, value="auto", device="cpu", smallest=1, memory=None):
        self.auto = value in (None, "auto")
        if not self.auto and (not str(value).isdigit() or int(value) < smallest):
            raise UserError(f"--micro-batch {value!r} must be auto or a whole number of at "
                            f"least {smallest}")
        self.size = None if self.auto else int(value)
        self.smallest = smallest
        cuda = torch.device(device).type == "cuda"
        self.halve_on_oom = self.auto and (cuda or memory is not None)
        self.memory = (memory if memory is not None
                       else CudaMemory(device) if self.halve_on_oom else None)
        self.measuring = self.auto and self.memory is not None  # until the first step's probe

    def probe_size(self, batch_size):
        """The images the first step measures: an eighth of the batch, so that the fixed costs
        in their peak (gradients, autocast's weight copies) weigh little per image; 2 or more
        (BatchNorm in training needs 2 values a channel: DeepLabV3's pooled ASPP branch)."""
        return max(2, self.smallest, batch_size // 8)

    def choose(self, batch_size, rows, before, optimizer):
        """After the forward and backward of the first `rows` images, from `before` = the bytes
        allocated when they started: per image = (peak - before) / rows (the fixed costs count
        as if per image: an overestimate); room = capacity - before - pending (`pending`: the
        optimizer state its first step will allocate, Adam's two moments = twice the trainable
        parameters' bytes, while `optimizer` holds none yet); the micro-batch =
        floor(MARGIN * room / per image), or None (whole batches) if that holds the batch."""
        pending = 0 if optimizer.state else 2 * sum(
            p.numel() * p.element_size() for g in optimizer.param_groups for p in g["params"]
            if p.requires_grad)
        per_image = max(1, self.memory.peak() - before) / rows
        room = self.memory.capacity() - before - pending
        fits = max(self.smallest, int(self.MARGIN * room / per_image))
        self.measuring, self.size = False, (None if fits >= batch_size else fits)
        print(f"micro-batch auto: {rows} images took {per_image * rows / 2**30:.2f} "
              f"GiB above the {before / 2**30:.2f} GiB in use, {room / 2**30:.2f} GiB left: "
              + ("whole batches" if self.size is None else f"micro-batches of {fits}")
              + f" (batch {batch_size})", flush=True)
        return self.size or batch_size

    def halved(self, batch_size):
        """After a CUDA out-of-memory error at this size: the next size, or a UserError."""
        now = min(self.probe_size(batch_size) if self.measuring else self.size or batch_size,
                  batch_size)
        if not self.halve_on_oom or now // 2 < self.smallest:
            raise UserError(f"CUDA out of memory with micro-batches of {now} image(s); lower "
                            "--batch-size or --image-size, or free the GPU") from None
        self.size, self.measuring = now // 2, False
        print(f"CUDA out of memory at a micro-batch of {now}: redoing the step in micro-batches "
              f"of {self.size} (the gradients add up to the same step)", flush=True)
        return self.size


def optimizer_step(model, optimizer, batch_size, loss_of, micro=None, clip_grad=0.0,
                   scaler=None):
    """One optimizer step over a batch of `batch_size` rows, in micro-batches (`micro`, a
    MicroBatch; None: all rows at once).

    loss_of(start, stop) runs the forward of rows start:stop and returns (their loss,
    normalised for the WHOLE batch, so that the losses of the micro-batches add up to the
    batch's; anything else, collected into a list). The gradients accumulate (under
    DistributedDataParallel only the last micro-batch synchronises them); clip_grad > 0 clips
    their global norm (of the unscaled gradients); the step goes through `scaler` when given.
    Returns (the summed loss, detached, still on the device; the list of the other values)."""
    no_sync = getattr(model, "no_sync", None)  # DistributedDataParallel's
    while True:
        size = min(micro.size or batch_size, batch_size) if micro is not None else batch_size
        rows = micro.probe_size(batch_size) if micro is not None and micro.measuring else 0
        probe = 0 < rows < batch_size
        try:
            optimizer.zero_grad(set_to_none=True)
            start, total, others = 0, 0.0, []
            if probe:  # the first step's first images, measured
                size, before = rows, micro.memory.start()
            while start < batch_size:
                stop = min(start + size, batch_size)
                with (no_sync() if no_sync is not None and stop < batch_size else nullcontext()):
                    loss, other = loss_of(start, stop)
                    (scaler.scale(loss) if scaler is not None else loss).backward()
                total = total + loss.detach()
                others.append(other)
                if probe and start == 0:
                    size = micro.choose(batch_size, rows, before, optimizer)
                start = stop
            break
        except torch.cuda.OutOfMemoryError:
            if micro is None:
                raise
            optimizer.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
            micro.halved(batch_size)
    if clip_grad > 0:
        if scaler is not None:
            scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    return total, others


def keeps_last_batch(args):
    """Whether an epoch trains on its last partial batch: --no-drop-last, and not under torchrun
    (every rank must take the same number of steps)."""
    return not args.drop_last and distributed.world_size() == 1


def steps_per_epoch(n, batch_size, args):
    """Optimizer steps in one pass over n images (train_batches): the full batches, plus the
    last partial one with --no-drop-last when it holds 2 images or more."""
    return n // batch_size + int(keeps_last_batch(args) and n % batch_size >= 2)


def train_batches(n, batch_size, args, generator, device):
    """This rank's index batches of one training epoch (data.index_batches): --drop-last or,
    without it, the last partial batch too (a batch of one image is dropped: BatchNorm cannot
    train on it). Under torchrun every rank must take the same number of steps, so the last
    partial batch is always dropped there."""
    return data.index_batches(n, distributed.shard_batch(batch_size), generator=generator,
                              device=device, drop_last=not keeps_last_batch(args),
                              rank=distributed.rank(), world_size=distributed.world_size(),
                              min_last=2)


def add_drop_last_arg(group):
    group.add_argument("--drop-last", default=True, action=cli.BooleanFlag,
                       help="drop each epoch's last partial batch; --no-drop-last trains on it "
                       "too, as a DataLoader's default (the report's code) does (not under "
                       "torchrun, and never a last batch of one image: BatchNorm needs two)")
    return group


def check_finite(loss_value, epoch, step):
    """Stop a run whose loss is NaN or infinite before it saves that epoch (dino's check).
    Every training loop calls it; the last.pth on disk is then the last finite epoch."""
    if not math.isfinite(loss_value):
        raise UserError(f"loss became {loss_value} at epoch {epoch}, step {step} (nothing of "
                        "this epoch was saved); start again with a lower --lr and --overwrite")


def add_hardware_args(group, compile_help="torch.compile the model"):
    """The flags every training script spells the same way: --device, --amp, --compile, --seed,
    --deterministic (one argparse group or parser in, the same group out)."""
    group.add_argument("--device", default=None,
                       help="cuda, cuda:1 or cpu (default: cuda if present)")
    group.add_argument("--amp", default=True, action=cli.BooleanFlag,
                       help="autocast on CUDA: bf16 where the card has it natively (compute "
                       "capability 8.0+), else fp16 with a GradScaler; no effect on CPU")
    group.add_argument("--micro-batch", default="auto",
                       help="images per forward pass: each step's gradients accumulate over "
                       "micro-batches of at most N, so the batch, the lr and the loss's "
                       "normalisation stay the recipe's (BatchNorm sees the micro-batches); "
                       "auto: on CUDA the largest that fits the free memory, measured on the "
                       "first step's first images (whole batches if they fit), halved if a step "
                       "still runs out of memory (one line says each); on the CPU whole batches")
    group.add_argument("--compile", default=False, action=cli.BooleanFlag,
                       help=compile_help)
    group.add_argument("--seed", default=0, type=int,
                       help="seeds weights, data order and augmentation")
    group.add_argument("--deterministic", default=False, action=cli.BooleanFlag,
                       help="deterministic kernels: same --seed, bit-identical weights on CPU")
    return group


def lr_multiplier(step, total_steps, warmup_steps=0, schedule="cosine"):
    """Factor of the base learning rate at optimizer step `step` (0-based).

    Linear warm-up from 1/warmup_steps to 1 over the first `warmup_steps`, then
      constant: 1;  cosine: half a cosine from 1 down to 0 at `total_steps`;
      poly: (1 - t)^0.9 (DeepLab's schedule);  step: x0.1 at 1/2 and x0.01 from 3/4 of the
      steps after warm-up;  multistep: x0.5 at 10%, 1/3 and 2/3 of them.
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
    if schedule == "multistep":  # x0.5 at 10%, 1/3 and 2/3: epochs 30, 100, 200 of 300
        return 0.5 ** ((t >= 0.1) + (t >= 1 / 3) + (t >= 2 / 3))
    if schedule == "step":
        return 0.1 ** ((t >= 0.5) + (t >= 0.75))
    raise ValueError(f"unknown schedule {schedule!r}; use constant, cosine, poly or step")


class PlateauScheduler:
    """ReduceLROnPlateau on the validation metric (higher is better: x`factor` after `patience`
    epochs without a new best), behind the per-step `step()` every schedule has (a no-op here):
    Checkpoints.end_epoch calls `observe(metric)` once per epoch."""

    def __init__(self, optimizer, factor=0.5, patience=5):
        self.optimizer = optimizer
        self.plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="max", factor=factor, patience=patience)

    def step(self):
        pass

    def observe(self, metric):
        if metric is not None and not math.isnan(metric):
            self.plateau.step(metric)

    def get_last_lr(self):
        return [group["lr"] for group in self.optimizer.param_groups]

    def state_dict(self):
        return self.plateau.state_dict()

    def load_state_dict(self, state):
        self.plateau.load_state_dict(state)


def make_lr_scheduler(optimizer, schedule, total_steps, warmup_steps=0):
    """A LambdaLR over `lr_multiplier`, stepped once per optimizer step. Its state_dict holds only
    the step count, so a resumed run continues the same curve (rebuilt from the same args).
    schedule="plateau": a PlateauScheduler (the lr follows the validation metric)."""
    if schedule == "plateau":
        return PlateauScheduler(optimizer)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_multiplier(step, total_steps, warmup_steps, schedule))


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
        if distributed.is_main_process():
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


def resume_run(output_dir, model, optimizer=None, scheduler=None, *, kind, scaler=None,
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
        if distributed.is_main_process():  # under torchrun every rank loads, rank 0 alone writes
            truncate_jsonl(out / "log.jsonl", 0)
        return 1, best_metric, 0
    ckpt = utils.load_checkpoint(last, kind=kind)
    saved = ckpt.get("args") or {}
    for key, value in (expect or {}).items():
        if saved.get(key) != value:
            raise UserError(f"{last} holds a run with {key}={saved.get(key)}, not {value}; "
                            "pick another --output-dir")
    try:
        utils.unwrap_model(model).load_state_dict(ckpt["model"])
        for obj, key in ((optimizer, "optimizer"), (scheduler, "scheduler"), (scaler, "scaler")):
            # a scaler saved disabled (bf16 or the CPU) is empty: a resume on an fp16 card
            # starts its scaler afresh instead of refusing the file
            if obj is not None and ckpt.get(key) is not None and (key != "scaler" or ckpt[key]):
                obj.load_state_dict(ckpt[key])
    except (RuntimeError, ValueError, KeyError) as e:
        first = first_line(e, 200)
        raise UserError(f"cannot resume from {last}: it was written with other model or "
                        f"optimizer options ({first}); start again with --overwrite") from None
    if distributed.is_main_process():
        truncate_jsonl(out / "log.jsonl", ckpt["epoch"])
    print(f"resumed from {last} (epoch {ckpt['epoch']})")
    best = ckpt["best_metric"] if ckpt.get("best_metric") is not None else best_metric
    return ckpt["epoch"] + 1, best, ckpt.get("best_epoch") or 0


class Checkpoints:
    """The files of one run and its best epoch, the same for every training script.

        ckpts = Checkpoints(out, args, "p1_classifier", model, optimizer, scheduler, "val_acc")
        start = ckpts.resume() if args.resume else 1
        for epoch in range(start, args.epochs + 1):
            record = {"epoch": epoch, **train_one_epoch(...), "val_acc": ..., "seconds": ...}
            ckpts.end_epoch(epoch, record, keep=epoch == 1)

    end_epoch appends `record` to log.jsonl, then writes best.pth (when `record[metric]` beats
    the best so far: higher with mode="max", lower with "min"), epoch_XXX.pth (when `keep`; a hard
    link to best.pth when this epoch is also the best), and
    last.pth, the only one with the optimizer and scheduler, last of all: until it is replaced,
    --resume restarts this epoch. Every file holds the fields of utils.save_checkpoint, the best
    epoch included. Under torchrun only rank 0 writes; every rank tracks the best.
    """

    def __init__(self, out, args, kind, model, optimizer, scheduler, metric, mode="max",
                 scaler=None):
        self.out, self.args, self.kind, self.metric, self.mode = Path(out), args, kind, metric, mode
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.scaler = scaler
        self.best = -math.inf if mode == "max" else math.inf
        self.best_epoch = 0

    def resume(self, expect=None):
        """Restore last.pth (see resume_run) -> the first epoch to run."""
        start, best, self.best_epoch = resume_run(self.out, self.model, self.optimizer,
                                                  self.scheduler, kind=self.kind,
                                                  scaler=self.scaler, best_metric=self.best,
                                                  expect=expect)
        self.best = self.best if best is None else best
        return start

    def is_better(self, value):
        if value is None or math.isnan(value):
            return False
        return value > self.best if self.mode == "max" else value < self.best

    def save(self, name, epoch, full=False):
        utils.save_checkpoint(self.out / name, self.model, *(
            (self.optimizer, self.scheduler, self.scaler) if full else ()), kind=self.kind,
            epoch=epoch, best_metric=self.best, best_epoch=self.best_epoch, args=self.args)

    def end_epoch(self, epoch, record, keep=False):
        """Log and save epoch `epoch` -> whether it is the best so far."""
        is_best = self.is_better(record.get(self.metric))
        if is_best:
            self.best, self.best_epoch = record[self.metric], epoch
        if hasattr(self.scheduler, "observe"):  # a plateau schedule follows the metric
            self.scheduler.observe(record.get(self.metric))
        if distributed.is_main_process():
            append_jsonl(self.out / "log.jsonl", record)
            if is_best:
                self.save("best.pth", epoch)
            if keep and is_best:  # the very bytes of best.pth: a second name, not a second write
                atomic_link(self.out / "best.pth", self.out / f"epoch_{epoch:03d}.pth")
            elif keep:
                self.save(f"epoch_{epoch:03d}.pth", epoch)
            self.save("last.pth", epoch, full=True)
        return is_best
