"""What every script needs: the device and precision set-up, the command-line conventions, and
checkpoints (atomic save, one-line-error load that checks what a file is, ResNet50 weights).

It is on the grading path (hw1_1.sh, hw1_2.sh): Python 3.8, torch 2.4, the course's packages.
The rest lives in modules named for what they hold:
  errors.py       UserError, the one-line exit (torch-free)
  records.py      atomic writes, a writable-folder check, JSON / JSONL logs, figures, git SHA
                  (torch-free)
  data.py         readers of the hw1_data layouts, the image bank, the course's mask codec
                  (torch-free to import)
  augment.py      per-sample augmentation of whole batches on the training device
  metrics.py      the mIoU confusion matrix (torch-free to import)
  training.py     the run skeleton of every training script: run folder, optimizer, schedule,
                  epochs, resume, clean stop on a signal
  distributed.py  torchrun / DistributedDataParallel
"""

import contextlib
import os
import random
import sys
from pathlib import Path

import numpy as np
import torch

from errors import UserError, first_line
from records import _atomic_write, _jsonable


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


def setup_precision(device, amp=True):
    """Global CUDA switches, set once per run. With `amp` (the bf16 fast path) TF32 takes the
    fp32 leftovers; without it (an fp32 run, as the report's code ran) PyTorch's own defaults
    stand: TF32 off for matmuls, on for cuDNN convolutions."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = TUNING["cudnn_benchmark"]
        torch.backends.cuda.matmul.allow_tf32 = bool(amp)
        torch.backends.cudnn.allow_tf32 = True


def amp_dtype(device):
    """The autocast dtype of a CUDA device: bf16 where the card computes it natively (compute
    capability 8.0 or more: A100, RTX 30xx/40xx, H100), fp16 before (T4, V100, RTX 20xx, where
    PyTorch runs bf16 convolutions without cuDNN, slower than fp32). None off CUDA."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.get_device_capability(device)[0] >= 8 else torch.float16


def autocast(device, enabled=True):
    """bf16 (fp16 before Ampere) autocast on CUDA, a no-op elsewhere: the one precision path of
    every training step."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=amp_dtype(device))
    return contextlib.nullcontext()


def grad_scaler(device, enabled=True):
    """A GradScaler where autocast runs in fp16 (its gradients would underflow unscaled), a
    disabled one (which passes everything through) elsewhere."""
    on = bool(enabled) and amp_dtype(device) == torch.float16
    return torch.amp.GradScaler("cuda", enabled=on)


def precision_name(device, enabled=True):
    """What a run computes in, for its first lines: fp32, bf16 autocast or fp16 autocast with a
    GradScaler, and why."""
    dtype = amp_dtype(device) if enabled else None
    if dtype is None:
        return "fp32" + ("" if enabled else " (--no-amp)")
    major, minor = torch.cuda.get_device_capability(torch.device(device))
    if dtype == torch.bfloat16:
        return f"bf16 autocast (compute capability {major}.{minor})"
    return (f"fp16 autocast + GradScaler (compute capability {major}.{minor}: no native bf16 "
            "before 8.0)")


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


# What a checkpoint is: the script that saves one writes its kind into it (save_checkpoint), and
# every loader names the kind it expects (load_checkpoint), so a wrong file is one clear line.
# kind: (what it is, what to pass instead)
CHECKPOINT_KINDS = {
    "byol": ("a BYOL pre-training checkpoint of p1_pretrain_byol.py",
             "a last.pth of p1_pretrain_byol.py"),
    "p1_classifier": ("a Problem 1 classifier of p1_finetune.py",
                      "a best.pth of p1_finetune.py (e.g. checkpoints/p1_C.pth)"),
    "p2_segmenter": ("a Problem 2 model of p2_train_fcn32s.py or p2_train_deeplabv3.py",
                     "a best.pth of p2_train_fcn32s.py or p2_train_deeplabv3.py "
                     "(e.g. checkpoints/p2_B.pth)"),
}


def save_checkpoint(path, model, optimizer=None, scheduler=None, scaler=None, *, kind, epoch=0,
                    best_metric=None, best_epoch=None, args=None):
    """Write {kind, model, optimizer, scheduler, scaler, epoch, best_metric, best_epoch, args}
    atomically; every script writes these same fields (None where they do not apply).

    The model is unwrapped first (no `module.`/`_orig_mod.` prefixes). The file appears under its
    name only once fully written and synced, so a crash mid-save leaves the previous one intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind not in CHECKPOINT_KINDS:
        raise ValueError(f"unknown checkpoint kind {kind!r}; known: {sorted(CHECKPOINT_KINDS)}")
    state = {
        "kind": kind,
        "model": unwrap_model(model).state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "epoch": epoch,
        "best_metric": best_metric,
        "best_epoch": best_epoch,
        "args": args_dict(args),
    }
    return _atomic_write(path, lambda f: torch.save(state, f))


def args_dict(args):
    """argparse.Namespace (or dict, or None) -> a plain dict that pickles without our classes."""
    if args is None:
        return None
    items = args.items() if isinstance(args, dict) else vars(args).items()
    return {k: _jsonable(v) for k, v in items}


def load_checkpoint(path, kind=None, map_location="cpu", expect_keys=("model",)):
    """torch.load with one-line errors for a missing, truncated or foreign file; with `kind`,
    also for a checkpoint of another kind (CHECKPOINT_KINDS), naming what it is and what to
    pass instead."""
    path = Path(path)
    if not path.is_file():
        from hw1_download import fix_for_missing  # standard library only: stays quick

        state = "is a folder, not a file" if path.is_dir() else "does not exist"
        fix = fix_for_missing(path) or "check the path: " + (
            f"it should be {CHECKPOINT_KINDS[kind][1]}" if kind else
            "a training run writes its best.pth and last.pth into its --output-dir")
        raise UserError(f"checkpoint {path} {state}; {fix}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # torch raises RuntimeError, EOFError, UnpicklingError, ...
        raise UserError(f"checkpoint {path} cannot be read ({type(e).__name__}: "
                        f"{first_line(e, 100)}); it is truncated or not a PyTorch file - "
                        "download or train it again") from None
    found = ckpt.get("kind") if isinstance(ckpt, dict) else None
    bare = isinstance(ckpt, dict) and bool(ckpt) and all(torch.is_tensor(v) for v in ckpt.values())
    if kind is not None and found != kind:
        if found in CHECKPOINT_KINDS:
            what = CHECKPOINT_KINDS[found][0]
        elif bare:
            what = "a bare state_dict (weights only, such as backbone.pth or pretrain_model_SL.pt)"
        else:
            what = "a file that records no checkpoint kind (not written by this repository)"
        raise UserError(f"{path} is {what}, not {CHECKPOINT_KINDS[kind][0]}; pass "
                        f"{CHECKPOINT_KINDS[kind][1]}")
    if expect_keys and not (isinstance(ckpt, dict) and all(k in ckpt for k in expect_keys)):
        what = "a bare state_dict" if bare else "another file"
        raise UserError(f"{path} is not a checkpoint of this repository's training scripts "
                        f"(no {', '.join(expect_keys)} entries: {what}); pass a best.pth or "
                        "last.pth they wrote")
    return ckpt


def build_loaded(build, state_dict):
    """build() on the meta device, then `state_dict`'s tensors become its weights
    (load_state_dict(assign=True), torch >= 2.1): no random initialisation that the checkpoint
    would overwrite (1.2 s for FCN32s, 0.7 s for DeepLabV3-ResNet50 on a CPU core) and no second
    copy of the weights in memory. Strict as load_state_dict: a missing, unexpected or
    misshapen tensor raises RuntimeError. Floating tensors end as float32, what a plain build
    and load gives whatever the file holds."""
    with torch.device("meta"):
        model = build()
    model.load_state_dict(state_dict, assign=True)
    left = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:  # a tensor a state_dict does not hold (a non-persistent buffer) has no value
        raise RuntimeError(f"no value for {', '.join(left[:3])}")
    return model.float()


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
        raise UserError(f"{name}: {len(shape_bad)} tensor(s) have the wrong shape for this "
                        f"{type(model).__name__} ({getattr(model, 'arch', 'ResNet50')}), e.g. "
                        f"{shape_bad[0]}; is it that network's state_dict (--arch)?")
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not (skip_fc and k.startswith("fc."))]
    loaded = len(state) - len(result.unexpected_keys)
    if loaded == 0:
        raise UserError(f"{name} shares no weight with this network "
                        f"({getattr(model, 'arch', 'ResNet50')}); wrong file or --arch?")
    if verbose:
        print(f"loaded {loaded} tensors from {name}; missing {len(missing)}"
              + (f" (e.g. {missing[:3]})" if missing else "")
              + f"; unexpected {len(result.unexpected_keys)}"
              + (f" (e.g. {result.unexpected_keys[:3]})" if result.unexpected_keys else ""),
              file=sys.stderr)
    return missing, list(result.unexpected_keys)
