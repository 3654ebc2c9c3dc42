"""Pieces shared by two or more scripts of this repository, and nothing else.

Sections (in file order):
  errors       UserError: a one-line, traceback-free exit for mistakes a user can make
  run setup    device / seed / precision (one code path for CPU and CUDA), run directories,
               log.jsonl, args.json, curve plots
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
import contextlib
import hashlib
import json
import math
import os
import random
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


# ---------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------
class UserError(SystemExit):
    """A mistake the user can fix (bad path, bad file, wrong checkpoint).

    Subclassing SystemExit means an uncaught UserError prints its one-line message to stderr
    and exits with status 1, with no traceback, while tests can still catch it.
    """

    def __init__(self, message):
        super().__init__(f"error: {message}")
        self.message = message


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
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def setup_precision(device):
    """Global fast-math switches, set once per run. TF32 only matters for the fp32 leftovers."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def autocast(device, enabled=True):
    """bf16 autocast on CUDA, a no-op elsewhere: the one precision path of every training step."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def memory_format(device):
    """channels_last pays on CUDA tensor cores; on CPU it only costs copies."""
    return torch.channels_last if device.type == "cuda" else torch.contiguous_format


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
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if (out / marker).exists() and not (resume or overwrite):
        raise UserError(f"{out} already holds a run ({marker}); pass --resume to continue it "
                        "or --overwrite to start again")
    if overwrite and not resume and (out / marker).exists():
        (out / marker).unlink()
    if not os.access(out, os.W_OK):
        raise UserError(f"cannot write to {out}; choose another --output-dir")
    record = dict(sorted(vars(args).items())) if args is not None else {}
    record["git_sha"] = git_sha()
    write_json(out / "args.json", record)
    return out


def print_run_header(args, device, batch_size=None, lr=None):
    print(f"git {git_sha()} | device {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
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
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


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
    tmp = Path(path).with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def check_finite(loss_value, epoch, step):
    if not math.isfinite(loss_value):
        raise UserError(f"loss became {loss_value} at epoch {epoch}, step {step}; lower --lr or "
                        "resume from the last good checkpoint with --resume")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """--help shows every default, except None/False ones and where the help text already
    says what the default means."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


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
# data sets
# ---------------------------------------------------------------------------------------------
def _require_dir(path, what):
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"{what} folder {path} does not exist; run `bash hw1_download.sh` "
                        "or `python make_demo_data.py --out DIR` for demo data")
    return path


def list_images(folder):
    """Sorted image files of an unlabeled folder (the Mini-ImageNet layout: mini/train/*.jpg)."""
    folder = _require_dir(folder, "image")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise UserError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {folder}")
    return files


def read_office_csv(csv_path, image_dir=None, require_labels=True):
    """Office-Home csv (header `id,filename,label`) -> list of dicts with id, filename, path, label.

    A test csv has `None` (or an empty field) as label: label is then -1, which is only allowed
    when `require_labels` is False. When `image_dir` is given, every listed file must exist.
    """
    import csv

    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise UserError(f"csv file {csv_path} does not exist")
    with open(csv_path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise UserError(f"{csv_path} is empty; expected the header id,filename,label")
        header = [h.strip() for h in header]
        if "filename" not in header:
            raise UserError(f"{csv_path} has header {','.join(header)}; expected id,filename,label")
        col = {name: header.index(name) for name in ("id", "filename", "label") if name in header}
        rows, seen = [], set()
        for line_no, row in enumerate(reader, start=2):
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) < len(header):
                raise UserError(f"{csv_path}:{line_no} has {len(row)} fields, "
                                f"expected {len(header)}")
            filename = row[col["filename"]].strip()
            if filename in seen:
                raise UserError(f"{csv_path}:{line_no} lists {filename} a second time")
            seen.add(filename)
            raw_label = row[col["label"]].strip() if "label" in col else ""
            if raw_label in ("", "None", "none", "nan"):
                label = -1
            else:
                try:
                    label = int(raw_label)
                except ValueError:
                    raise UserError(f"{csv_path}:{line_no} has label {raw_label!r}, "
                                    "expected an integer or None") from None
            if label < 0 and require_labels:
                raise UserError(f"{csv_path}:{line_no} has no label but this run needs labels")
            row_id = row[col["id"]].strip() if "id" in col else str(line_no - 2)
            rows.append({"id": row_id, "filename": filename, "label": label,
                         "path": Path(image_dir) / filename if image_dir is not None else None})
    if not rows:
        raise UserError(f"{csv_path} lists no images")
    if image_dir is not None:
        _require_dir(image_dir, "image")
        missing = [r["filename"] for r in rows if not r["path"].is_file()]
        if missing:
            raise UserError(f"{len(missing)} file(s) listed in {csv_path} are missing from "
                            f"{image_dir}, e.g. {missing[0]}")
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
        raise UserError(f"no *_sat.jpg images in {folder}")
    if require_masks:
        lonely = sorted(set(sats) ^ set(masks))
        if lonely:
            i = lonely[0]
            have, lack = f"{i}_sat.jpg", f"{i}_mask.png"
            if i not in sats:
                have, lack = lack, have
            raise UserError(f"{folder}/{have} has no partner {lack} "
                            f"({len(lonely)} unpaired file(s))")
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
    """Any image PIL can read (grayscale, RGBA, 16-bit, CMYK, palette) -> RGB PIL image."""
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                # 16-bit: scale to 8 bits instead of PIL's clipping conversion
                arr = np.asarray(im, dtype=np.float64)
                arr = (arr / max(arr.max(), 1.0) * 255.0).round().astype(np.uint8)
                im = Image.fromarray(arr)
            return im.convert("RGB")
    except FileNotFoundError:
        raise UserError(f"{path} does not exist") from None
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise UserError(f"cannot read image {path} ({e}); re-download or remove it") from None


def _decode(path, size, interpolation):
    image = load_rgb(path)
    if size is not None and image.size != (size[1], size[0]):
        image = image.resize((size[1], size[0]), interpolation)
    return np.asarray(image)


def _decode_mask(path, size):
    classes = mask_to_classes(np.asarray(load_rgb(path)))
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
                   progress=False):
        """Decode `paths` in parallel threads (PIL releases the GIL while decoding).

        size: None (all images must share one size), an int (square) or (H, W); images are
        resized with antialiased bicubic, masks with nearest neighbour.
        cache_dir: where `bank-<hash>.npy` is kept; the hash covers the file names, sizes and
        modification times, the target size and the kind, so a changed folder is re-decoded.
        """
        paths = [Path(p) for p in paths]
        if not paths:
            raise UserError("no images to load")
        size = _pair(size)
        cache_file = None
        if cache_dir is not None:
            key = hashlib.sha1(repr((kind, size)).encode())
            for p in paths:
                st = p.stat()
                key.update(f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
            cache_file = Path(cache_dir) / f"bank-{kind}-{key.hexdigest()[:16]}.npy"
            if cache_file.exists():
                try:
                    arr = np.load(cache_file)
                    if arr.shape[0] == len(paths):
                        return cls(torch.from_numpy(arr), paths)
                except (OSError, ValueError):
                    pass  # a broken cache is rebuilt below
        if kind == "image":
            fn = lambda p: _decode(p, size, Image.BICUBIC)  # noqa: E731
        elif kind == "mask":
            fn = lambda p: _decode_mask(p, size)  # noqa: E731
        else:
            raise ValueError(f"kind must be 'image' or 'mask', not {kind!r}")
        workers = workers or min(16, (os.cpu_count() or 2) * 2)
        with ThreadPoolExecutor(workers) as pool:
            it = pool.map(fn, paths)
            if progress:
                from tqdm import tqdm
                it = tqdm(it, total=len(paths), desc=f"decoding {len(paths)} {kind}s", leave=False)
            arrays = list(it)
        shapes = {a.shape for a in arrays}
        if len(shapes) > 1:
            raise UserError(f"images of different sizes {sorted(shapes)[:3]}...; pass a size "
                            "(--image-size) so they are resized when loaded")
        arr = np.stack(arrays)
        if kind == "image":
            arr = np.ascontiguousarray(arr.transpose(0, 3, 1, 2))  # (N, H, W, 3) -> (N, 3, H, W)
        if cache_file is not None:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=cache_file.parent, suffix=".npy",
                                             delete=False) as f:
                np.save(f, arr)
            os.replace(f.name, cache_file)
        return cls(torch.from_numpy(arr), paths)


def index_batches(n, batch_size, generator=None, device="cpu", drop_last=True, shuffle=True,
                  rank=0, world_size=1):
    """Yield LongTensor index batches over range(n): one permutation per epoch, shard `rank` of
    `world_size` (each rank takes its own stride of the permutation)."""
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    order = order[rank::world_size]
    stop = len(order) - (len(order) % batch_size if drop_last else 0)
    for start in range(0, stop, batch_size):
        yield order[start:start + batch_size].to(device, non_blocking=True)


# ---------------------------------------------------------------------------------------------
# augmentation on the training device, per-sample random parameters
# ---------------------------------------------------------------------------------------------
def to_float(x):
    """uint8 (B, 3, H, W) in 0..255 -> float in 0..1; a float tensor passes unchanged."""
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()


def normalize(x, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    m = torch.tensor(mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - m) / s


def _rand(n, device, generator=None, low=0.0, high=1.0):
    return torch.rand(n, device=device, generator=generator) * (high - low) + low


def random_crop_boxes(n, scale, ratio, device, generator=None, attempts=10):
    """RandomResizedCrop boxes for n images at once, as (width, height, cx, cy) fractions of
    the source image. Same law as torchvision's: area ~ U(scale), log-ratio ~ U(log ratio), up to
    `attempts` rejections, then the whole image (torchvision falls back to a centre crop)."""
    area = _rand((n, attempts), device, generator, *scale)
    log_r = _rand((n, attempts), device, generator, math.log(ratio[0]), math.log(ratio[1]))
    r = torch.exp(log_r)
    w = torch.sqrt(area * r)
    h = torch.sqrt(area / r)
    ok = (w <= 1) & (h <= 1)
    first = torch.where(ok.any(1), ok.float().argmax(1), torch.full((n,), -1, device=device))
    idx = first.clamp(min=0).unsqueeze(1)
    w = torch.where(first >= 0, w.gather(1, idx).squeeze(1), torch.ones(n, device=device))
    h = torch.where(first >= 0, h.gather(1, idx).squeeze(1), torch.ones(n, device=device))
    cx = (1 - w) * _rand(n, device, generator) + w / 2
    cy = (1 - h) * _rand(n, device, generator) + h / 2
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
    if rot90 is not None:
        cos = torch.tensor([1.0, 0.0, -1.0, 0.0], device=w.device)[rot90]
        sin = torch.tensor([0.0, 1.0, 0.0, -1.0], device=w.device)[rot90]
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


class ClassificationAugment:
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
        n, dev, g = x.shape[0], x.device, self.generator
        if not self.train:
            if x.shape[-2:] != self.size:
                x = F.interpolate(x, size=self.size, mode="bilinear", antialias=True,
                                  align_corners=False)
            return normalize(x)
        w, h, cx, cy = random_crop_boxes(n, self.scale, self.ratio, dev, g)
        flip = _rand(n, dev, g) < self.p_flip
        x = warp(x, crop_theta(w, h, cx, cy, flip_x=flip), self.size)  # (B, 3, S, S)
        if self.p_jitter > 0 and any(self.jitter):
            x = torch.where((_rand(n, dev, g) < self.p_jitter).view(-1, 1, 1, 1),
                            self._jitter(x), x)
        if self.p_gray > 0:
            x = torch.where((_rand(n, dev, g) < self.p_gray).view(-1, 1, 1, 1),
                            rgb_to_gray(x).expand_as(x), x)
        if self.p_blur > 0:
            sigma = _rand(n, dev, g, *self.blur_sigma)
            x = torch.where((_rand(n, dev, g) < self.p_blur).view(-1, 1, 1, 1),
                            gaussian_blur(x, sigma, self.kernel_size), x)
        if self.p_solarize > 0:
            x = torch.where((_rand(n, dev, g) < self.p_solarize).view(-1, 1, 1, 1),
                            torch.where(x < 0.5, x, 1.0 - x), x)
        return normalize(x)

    def _jitter(self, x):
        n, dev, g = x.shape[0], x.device, self.generator
        b, c, s, hue = self.jitter
        view = (-1, 1, 1, 1)
        if b:
            x = (x * _rand(n, dev, g, 1 - b, 1 + b).view(view)).clamp(0, 1)
        if c:
            mean = rgb_to_gray(x).mean((1, 2, 3), keepdim=True)
            x = ((x - mean) * _rand(n, dev, g, 1 - c, 1 + c).view(view) + mean).clamp(0, 1)
        if s:
            gray = rgb_to_gray(x)
            x = ((x - gray) * _rand(n, dev, g, 1 - s, 1 + s).view(view) + gray).clamp(0, 1)
        if hue:
            hsv = rgb_to_hsv(x)
            hsv[:, 0] = (hsv[:, 0] + _rand(n, dev, g, -hue, hue).view(-1, 1, 1)) % 1.0
            x = hsv_to_rgb(hsv).clamp(0, 1)
        return x


class SegmentationAugment:
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
        n, dev, g = x.shape[0], x.device, self.generator
        size = self.size or tuple(x.shape[-2:])
        s = _rand(n, dev, g, self.min_scale, 1.0)  # crop side, a fraction of the image side
        cx = (1 - s) * _rand(n, dev, g) + s / 2
        cy = (1 - s) * _rand(n, dev, g) + s / 2
        square = x.shape[-1] == x.shape[-2] and size[0] == size[1]
        k = (torch.randint(0, 4, (n,), device=dev, generator=g) if self.rotate and square else None)
        theta = crop_theta(s, s, cx, cy, flip_x=_rand(n, dev, g) < self.p_flip,
                           flip_y=_rand(n, dev, g) < self.p_flip, rot90=k)
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
    path = Path(path)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".png", delete=False) as f:
        Image.fromarray(classes_to_rgb(classes), mode="RGB").save(f, format="PNG")
    os.replace(f.name, path)


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
def atomic_write_bytes(path, data):
    path = Path(path)
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", delete=False) as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(f.name, path)


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
    tmp = None
    try:
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.",
                                         delete=False) as f:
            tmp = f.name
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
    return path


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
        raise UserError(f"checkpoint {path} does not exist; run `bash hw1_download.sh` or train "
                        "one first")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # torch raises RuntimeError, EOFError, UnpicklingError, ...
        raise UserError(f"checkpoint {path} cannot be read ({type(e).__name__}: {e}); it is "
                        "truncated or not a PyTorch file - download or train it again") from None
    if expect_keys and not (isinstance(ckpt, dict) and all(k in ckpt for k in expect_keys)):
        raise UserError(f"{path} is not a checkpoint of this repository (no "
                        f"{', '.join(expect_keys)} entries)")
    return ckpt


def resume_run(output_dir, model, optimizer=None, scheduler=None, scaler=None,
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
        first = str(e).strip().splitlines()[0][:200]
        raise UserError(f"cannot resume from {last}: it was written with other model or "
                        f"optimizer options ({first}); start again with --overwrite") from None
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
