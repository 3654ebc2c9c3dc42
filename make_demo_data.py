"""Write a small, procedurally generated stand-in for the course's `hw1_data` tree.

The real archive (about 1 GB) cannot be fetched everywhere, yet every training script
needs data of the right layout to be run end to end. This script writes a tree with the
same folders, file names, csv columns and mask palette as `hw1_data` (see the README's
"Data"), filled with images a model can really learn, so demo runs
give better-than-chance numbers instead of merely not crashing.

    python3 make_demo_data.py                                   # -> demo_data/
    python3 make_demo_data.py --output-dir demo_data --overwrite --seed 1
    python3 make_demo_data.py --output-dir /tmp/tiny --mini-classes 4 --mini-per-class 2 \
        --office-classes 65 --office-train-per-class 2 --office-val-per-class 1 \
        --seg-train 2 --seg-val 1 --seg-size 64
    python3 make_demo_data.py --overwrite --sl-steps 200 --device cuda

--overwrite replaces only a tree this script wrote: it writes `make_demo_data.json` (its
settings) into the output folder before anything else and deletes p1_data/ and p2_data/ only
beside that file; it refuses any other p1_data/ or p2_data/ (the real data, say), and leaves
every other file of the folder alone.

What is in the tree:

- `p1_data/mini/train/{idx:05d}.jpg`: unlabeled RGB images (`--mini-size`, 84 px by
  default) of `--mini-classes` object classes, written in shuffled order so the name
  carries no label.
- `p1_data/office/{train,val}/{label}_{id}.jpg` and `{train,val}.csv` (header
  `id,filename,label`): `--office-classes` classes (65 by default), images of varied,
  non-square sizes (60-140 px a side).
- `p1_data/pretrain_model_SL.pt`: a torchvision `resnet50(weights=None)` state_dict
  (`--sl-arch resnet18`: a resnet18, for P1 runs with `--arch resnet18`). By default
  (`--sl-steps 0`) it is randomly initialised (seeded), a stand-in for the FORMAT of the
  course's supervised checkpoint only, so settings B and D run on it like setting A.
  `--sl-steps N` trains it with the labels of the generated mini images for N steps (batch
  64, ImageNet mean/std, `--sl-size` px: 128 like the real file by default), so that B/D
  start from a supervised backbone, as in the report; the demo (reproduce.sh) trains a
  resnet18 at 32 px for 120 steps.
- `p2_data/{train,validation}/{id:04d}_sat.jpg` + `{id:04d}_mask.png`: `--seg-size`
  square land-cover scenes (512 px by default). Train ids are 0000..N-1; validation ids
  are 0000..N-1 plus 0013, 0062 and 0104, the images the report shows. Masks use exactly
  the seven palette colours; every scene contains all six scored classes.

How the images are made (so the learnable signal is known):

- Classification: class c is the unique combination shape = c % 5 (disc, square,
  triangle, cross, ring), texture = c % 3 (solid, stripes, checker), shade = c % 2
  (bright/dark) and hue band = (c % 5 + c // 30) % 5, drawn at a random position, scale and
  rotation over a desaturated, noisy background; neighbouring labels differ in every
  attribute, so the demo's 8 classes differ in colour, shape, texture and shade. Mini and
  Office share this attribute space, so features pre-trained on mini transfer. At most 150
  classes.
- Segmentation: a randomly warped Voronoi partition; each region gets a class and a
  class-specific texture (Urban grey blocks and roads, Agriculture striped yellow-green
  fields, Rangeland brown noise, Forest dark blobby green, Water smooth dark blue, Barren
  light speckled beige, Unknown near-black), then illumination and pixel noise.

Output is deterministic: the same arguments and `--seed` give byte-identical files
(with `--sl-steps > 0` only on the same machine, device and thread count). Every image is
drawn from its own random stream keyed by (seed, split, index), so changing one count
does not change the other images.
"""

import argparse
import colorsys
import json
import os
import shutil
import time
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

import cli

# Mask palette of HW1_SPEC.md; row i is the colour of class i.
PALETTE = np.array(
    [
        [0, 255, 255],  # 0 Urban
        [255, 255, 0],  # 1 Agriculture
        [255, 0, 255],  # 2 Rangeland
        [0, 255, 0],  # 3 Forest
        [0, 0, 255],  # 4 Water
        [255, 255, 255],  # 5 Barren
        [0, 0, 0],  # 6 Unknown
    ],
    dtype=np.uint8,
)
SEG_CLASS_NAMES = ("Urban", "Agriculture", "Rangeland", "Forest", "Water", "Barren", "Unknown")
# Ids of the validation images the report shows; they must exist in every tree.
REPORT_VAL_IDS = (13, 62, 104)

SHAPES = ("disc", "square", "triangle", "cross", "ring")
TEXTURES = ("solid", "stripes", "checker")
N_HUES = 5
N_SHADES = 2
MAX_CLASSES = len(SHAPES) * len(TEXTURES) * N_HUES * N_SHADES  # 150 unique combinations

# Random-stream ids, so that each split draws from its own generator (see _rng).
_STREAM_MINI_ORDER, _STREAM_MINI, _STREAM_OFFICE_TRAIN, _STREAM_OFFICE_VAL = 0, 1, 2, 3
_STREAM_SEG_TRAIN, _STREAM_SEG_VAL, _STREAM_SL = 4, 5, 6

# What --overwrite may replace: the folders of a tree whose MARKER says this script wrote it.
TREE = ("p1_data", "p2_data")
MARKER = "make_demo_data.json"

# Office image sides are drawn from this range, like the varied sizes of Office-Home.
OFFICE_SIDE_RANGE = (60, 140)
JPEG_QUALITY = 90

DEFAULTS = dict(
    seed=0,
    mini_classes=64,
    mini_per_class=10,
    mini_size=84,
    office_classes=65,
    office_train_per_class=6,
    office_val_per_class=2,
    seg_train=24,
    seg_val=8,
    seg_size=512,
    sl_steps=0,
    sl_arch="resnet50",
    sl_size=128,
    device="cpu",
    overwrite=False,
)


def get_args_parser():
    parser = argparse.ArgumentParser(
        "make_demo_data", formatter_class=cli.HelpFormatter,
        description=(
            "Write a small procedural hw1_data-format tree (p1_data + p2_data) whose images "
            "are learnable, for end-to-end demo runs. pretrain_model_SL.pt in it is a "
            "randomly initialised resnet50 state_dict (format stand-in, NOT a supervised "
            "model) unless --sl-steps > 0."
        ),
        add_help=True,
    )
    cli.old_name(parser, "--out", parser.add_argument(
        "--output-dir", default=Path("demo_data"), type=Path,
        help="output folder; receives p1_data/, p2_data/ and make_demo_data.json"))
    parser.add_argument("--seed", default=DEFAULTS["seed"], type=int,
                        help="random seed; the same seed and sizes give byte-identical files")
    parser.add_argument("--overwrite", action="store_true",
                        help="allow a non-empty --output-dir: a tree this script wrote "
                             "there (p1_data/ and p2_data/ beside its make_demo_data.json) is "
                             "deleted first; any other p1_data/ or p2_data/ is refused, other "
                             "files are left alone")

    p1 = parser.add_argument_group("problem 1 (classification)")
    p1.add_argument("--mini-classes", default=DEFAULTS["mini_classes"], type=int,
                    help=f"classes in the unlabeled mini set (real: 64; at most {MAX_CLASSES})")
    p1.add_argument("--mini-per-class", default=DEFAULTS["mini_per_class"], type=int,
                    help="mini images per class (real: 600); a few hundred make BYOL "
                         "demo runs meaningful, 10 only exercise the code")
    p1.add_argument("--mini-size", default=DEFAULTS["mini_size"], type=int,
                    help="side of the square mini images in pixels (real: 84)")
    p1.add_argument("--office-classes", default=DEFAULTS["office_classes"], type=int,
                    help=f"Office classes, labels 0..N-1 (real: 65; at most {MAX_CLASSES})")
    p1.add_argument("--office-train-per-class", default=DEFAULTS["office_train_per_class"],
                    type=int, help="Office train images per class (real: about 61)")
    p1.add_argument("--office-val-per-class", default=DEFAULTS["office_val_per_class"],
                    type=int, help="Office val images per class (real: about 6)")
    p1.add_argument("--sl-steps", default=DEFAULTS["sl_steps"], type=int,
                    help="supervised training steps (batch 64, 128 px) of the stand-in "
                         "pretrain_model_SL.pt on the labelled mini images; 0 keeps it "
                         "random. About 4 s a step on a 2-core CPU; use --device cuda for "
                         "a few hundred steps")
    p1.add_argument("--sl-arch", default=DEFAULTS["sl_arch"], choices=["resnet50", "resnet18"],
                    help="network of pretrain_model_SL.pt: the real file's resnet50, or the "
                         "resnet18 of the demo's P1 runs (p1_*.py --arch resnet18)")
    p1.add_argument("--sl-size", default=DEFAULTS["sl_size"], type=int,
                    help="image side of the --sl-steps training (the real file's 128; the "
                         "demo trains at the side its P1 runs use)")
    p1.add_argument("--device", default=DEFAULTS["device"],
                    help="device for --sl-steps training (cpu, cuda); unused when 0")

    p2 = parser.add_argument_group("problem 2 (segmentation)")
    p2.add_argument("--seg-train", default=DEFAULTS["seg_train"], type=int,
                    help="training scenes, ids 0000..N-1 (real: 2000)")
    p2.add_argument("--seg-val", default=DEFAULTS["seg_val"], type=int,
                    help="validation scenes with ids 0000..N-1; ids 0013, 0062 and 0104 "
                         "are always added (real: 257)")
    p2.add_argument("--seg-size", default=DEFAULTS["seg_size"], type=int,
                    help="side of the square scenes in pixels (real: 512; at least 32)")
    return parser


# ---------------------------------------------------------------------------- helpers


def _rng(seed, stream, *index):
    # One generator per image keyed by (seed, split, index): output does not depend on
    # generation order or on the sizes of the other splits.
    return np.random.default_rng([seed, stream, *index])


def _smooth_noise(rng, height, width, cells, channels=None):
    """Zero-mean, unit-ish noise varying over about `cells` blobs per side, (H, W[, C])."""
    shape = (cells + 1, cells + 1) if channels is None else (cells + 1, cells + 1, channels)
    coarse = rng.standard_normal(shape).astype(np.float32)
    # cv2.resize is deterministic and bicubic keeps the blobs round.
    out = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    return out if channels is None or channels > 1 else out[..., None]


def _hsv(h, s, v):
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), dtype=np.float32) * 255.0


def _save_jpeg(array, path):
    Image.fromarray(array).save(path, quality=JPEG_QUALITY)


def class_attributes(label):
    """(shape, texture, hue band, shade) indices of a classification class; unique below 150.

    Every attribute changes from one label to the next (shape c % 5, texture c % 3, shade c % 2
    fix c % 30; the hue band adds c // 30), so that a few classes, as in the demo, differ in
    colour, shape, texture and shade at once instead of in shape alone."""
    return (label % 5, label % 3, (label % 5 + label // 30) % N_HUES, label % 2)


# ------------------------------------------------------------- classification images


def render_object(rng, label, height, width):
    """One class-`label` object on a noisy background, (height, width, 3) uint8."""
    shape, texture, hue_band, shade = class_attributes(label)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)

    # Random placement: radius 45-80% of the half side, kept mostly inside the frame,
    # any rotation, so the classifier must be position/scale/rotation invariant.
    radius = rng.uniform(0.45, 0.8) * min(height, width) / 2
    cx = rng.uniform(min(0.75 * radius, width / 2), max(width - 0.75 * radius, width / 2))
    cy = rng.uniform(min(0.75 * radius, height / 2), max(height - 0.75 * radius, height / 2))
    theta = rng.uniform(0, 2 * np.pi)
    dx, dy = (xx - cx) / radius, (yy - cy) / radius
    u = np.cos(theta) * dx + np.sin(theta) * dy  # object-local coordinates, radius 1
    v = -np.sin(theta) * dx + np.cos(theta) * dy

    r = np.hypot(u, v)
    if SHAPES[shape] == "disc":
        mask = r < 1.0
    elif SHAPES[shape] == "square":
        mask = np.maximum(np.abs(u), np.abs(v)) < 0.78
    elif SHAPES[shape] == "triangle":  # equilateral, inscribed in the unit circle
        mask = (v > -0.5) & (v < 1.0 - np.sqrt(3.0) * np.abs(u))
    elif SHAPES[shape] == "cross":
        mask = ((np.abs(u) < 0.3) & (np.abs(v) < 0.95)) | ((np.abs(v) < 0.3) & (np.abs(u) < 0.95))
    else:  # ring
        mask = (r > 0.55) & (r < 1.0)

    # Texture in object coordinates, so it turns with the object; 2-3.5 periods per radius.
    freq = rng.uniform(2.0, 3.5) * np.pi
    phase = rng.uniform(0, 2 * np.pi)
    if TEXTURES[texture] == "stripes":
        bright = np.sin(freq * u + phase) > 0
    elif TEXTURES[texture] == "checker":
        bright = np.sin(freq * u + phase) * np.sin(freq * v) > 0
    else:
        bright = np.ones_like(mask)

    hue = hue_band / N_HUES + rng.uniform(-0.03, 0.03)
    value = rng.uniform(0.75, 1.0) if shade == 0 else rng.uniform(0.42, 0.55)
    fg_bright = _hsv(hue, rng.uniform(0.65, 1.0), value)
    fg_dark = fg_bright * 0.45
    foreground = np.where(bright[..., None], fg_bright, fg_dark)

    # Desaturated background of any hue with blotches; saturated colour stays the cue.
    bg = _hsv(rng.uniform(), rng.uniform(0.0, 0.3), rng.uniform(0.3, 0.9))
    background = bg + 30.0 * _smooth_noise(rng, height, width, 3, channels=3)

    image = np.where(mask[..., None], foreground, background)
    # Illumination gradient and sensor noise, applied to object and background alike.
    image = image * (1.0 + 0.12 * _smooth_noise(rng, height, width, 2, channels=1))
    image = image + rng.normal(0.0, 8.0, image.shape).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8)


# ---------------------------------------------------------------- segmentation scenes

# Class frequencies of the regions beyond the first six (which take classes 0..5 once
# each); Agriculture dominates and Unknown is rare, as in the real data.
_REGION_CLASS_P = np.array([0.16, 0.30, 0.12, 0.16, 0.10, 0.12, 0.04])


def _texture(rng, cls, size, yy, xx, region, n_regions):
    """Full-frame float texture of land-cover class `cls`, (size, size, 3)."""
    if cls == 0:  # Urban: grey blocks of random brightness separated by darker roads
        period = int(rng.integers(14, 26))
        nb = size // period + 2
        blocks = rng.uniform(95, 175, (nb, nb)).astype(np.float32)
        grey = blocks[(yy // period).astype(int), (xx // period).astype(int)]
        road = ((yy % period) < 3) | ((xx % period) < 3)
        grey = np.where(road, 70.0, grey)
        out = grey[..., None] * np.array([1.0, 1.0, 0.95], np.float32)
        return out + rng.normal(0, 10, out.shape).astype(np.float32)
    if cls == 1:  # Agriculture: striped fields, direction and tint differ per region
        angle = rng.uniform(0, np.pi, n_regions).astype(np.float32)[region]
        period = rng.uniform(6, 12, n_regions).astype(np.float32)[region]
        tint = rng.uniform(0, 1, n_regions).astype(np.float32)[region][..., None]
        stripes = np.sin(2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / period)
        base = (1 - tint) * np.array([150, 140, 70], np.float32) + tint * np.array(
            [115, 135, 60], np.float32)
        return base + stripes[..., None] * np.array([20, 20, 10], np.float32)
    if cls == 2:  # Rangeland: brownish, medium-grain noise
        noise = _smooth_noise(rng, size, size, max(size // 16, 2), channels=1)
        return np.array([118, 104, 72], np.float32) + 16 * noise
    if cls == 3:  # Forest: dark green canopy blobs
        blobs = _smooth_noise(rng, size, size, max(size // 10, 2), channels=1)
        return np.array([52, 74, 42], np.float32) + 14 * blobs
    if cls == 4:  # Water: smooth dark blue with slow variation
        return np.array([45, 62, 100], np.float32) + 6 * _smooth_noise(rng, size, size, 3, 1)
    if cls == 5:  # Barren: light beige with fine speckle
        speckle = rng.normal(0, 18, (size, size, 1)).astype(np.float32)
        return np.array([185, 168, 140], np.float32) + speckle
    return np.full((size, size, 3), 12.0, np.float32)  # Unknown: near black


def render_scene(rng, size):
    """A land-cover scene: (sat (size, size, 3) uint8, class map (size, size) uint8)."""
    n_regions = int(rng.integers(10, 19))
    # The first six regions take classes 0..5 once each, so every scored class appears.
    classes = np.concatenate([
        rng.permutation(6),
        rng.choice(7, n_regions - 6, p=_REGION_CLASS_P),
    ]).astype(np.uint8)
    centres = rng.uniform(0, size, (n_regions, 2)).astype(np.float32)

    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    # Warping the coordinates bends straight Voronoi edges into natural-looking borders.
    wy = yy + 0.06 * size * _smooth_noise(rng, size, size, 5)
    wx = xx + 0.06 * size * _smooth_noise(rng, size, size, 5)
    dist = (wy[..., None] - centres[:, 0]) ** 2 + (wx[..., None] - centres[:, 1]) ** 2
    region = dist.argmin(axis=-1)  # (size, size) region index
    label = classes[region]

    # A warped cell can vanish; paint a disc of any missing scored class so the promise
    # "every scene has classes 0..5" holds.
    for cls in range(6):
        if not (label == cls).any():
            cy, cx = rng.uniform(0.15 * size, 0.85 * size, 2)
            disc = (yy - cy) ** 2 + (xx - cx) ** 2 < (size / 10) ** 2
            label = np.where(disc, cls, label).astype(np.uint8)

    sat = np.zeros((size, size, 3), np.float32)
    for cls in np.unique(label):
        tex = _texture(rng, int(cls), size, yy, xx, region, n_regions)
        # Region-level brightness jitter, so one colour per class is not the whole story.
        gain = rng.uniform(0.88, 1.12, n_regions).astype(np.float32)[region][..., None]
        sat = np.where((label == cls)[..., None], tex * gain, sat)

    sat = cv2.GaussianBlur(sat, (3, 3), 0)  # soften razor-sharp region edges
    sat = sat * (1.0 + 0.08 * _smooth_noise(rng, size, size, 2, channels=1))
    sat = sat + rng.normal(0, 6, sat.shape).astype(np.float32)
    return np.clip(sat, 0, 255).astype(np.uint8), label


def validation_ids(n_val):
    """Validation scene ids: 0..n_val-1 plus the ids the report shows (13, 62, 104)."""
    return sorted(set(range(n_val)) | set(REPORT_VAL_IDS))


# ------------------------------------------------------------------ tree writers


def _write_mini(root, seed, n_classes, per_class, side):
    images, labels = [], []
    for c in range(n_classes):
        for j in range(per_class):
            images.append(render_object(_rng(seed, _STREAM_MINI, c, j), c, side, side))
            labels.append(c)
    # Shuffled names so the file order says nothing about the class.
    order = _rng(seed, _STREAM_MINI_ORDER).permutation(len(images))
    folder = root / "mini" / "train"
    folder.mkdir(parents=True)
    for name_idx, k in enumerate(order):
        _save_jpeg(images[k], folder / f"{name_idx:05d}.jpg")
    return np.stack(images), np.array(labels)


def _write_office_split(root, split, seed, n_classes, per_class, id_offset, stream):
    folder = root / "office" / split
    folder.mkdir(parents=True)
    rows = []
    for c in range(n_classes):
        for j in range(per_class):
            rng = _rng(seed, stream, c, j)
            h, w = rng.integers(OFFICE_SIDE_RANGE[0], OFFICE_SIDE_RANGE[1] + 1, 2)
            # Val ids continue after train ids, so a file name is unique across splits.
            name = f"{c}_{id_offset + j}.jpg"
            _save_jpeg(render_object(rng, c, int(h), int(w)), folder / name)
            rows.append(f"{len(rows)},{name},{c}\n")
    (root / "office" / f"{split}.csv").write_text("id,filename,label\n" + "".join(rows))
    return len(rows)


def _write_sl_model(path, seed, mini_images, mini_labels, steps, device, arch="resnet50",
                    size=128):
    # torch is imported here so that importing this module and writing images stay light.
    import torch
    import torch.nn.functional as F
    import torchvision

    with torch.random.fork_rng(devices=[]):  # leave the caller's global RNG untouched
        torch.manual_seed(seed)
        model = getattr(torchvision.models, arch)(weights=None)
    if steps > 0:
        model.to(device).train()
        # Same preprocessing as the real checkpoint: ImageNet mean/std, 128 px by default.
        mean = torch.tensor([0.485, 0.456, 0.406], device=device).view(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225], device=device).view(1, 3, 1, 1)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
        gen = torch.Generator().manual_seed(seed * 1000 + _STREAM_SL)
        images = torch.from_numpy(mini_images)  # (N, S, S, 3) uint8, kept small on the host
        labels = torch.from_numpy(mini_labels).long()
        for step in range(steps):
            idx = torch.randint(len(images), (64,), generator=gen)
            x = images[idx].to(device).permute(0, 3, 1, 2).float().div(255)  # (64, 3, S, S)
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            flip = torch.rand(len(idx), generator=gen) < 0.5
            x = torch.where(flip.to(device).view(-1, 1, 1, 1), x.flip(3), x)
            loss = F.cross_entropy(model((x - mean) / std), labels[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if step % 20 == 0 or step == steps - 1:
                print(f"  sl step {step + 1}/{steps}  loss {loss.item():.3f}")
        model.eval().cpu()
    torch.save(model.state_dict(), path)


# ---------------------------------------------------------------------------- main


def _check_sizes(cfg):
    for key in ("mini_classes", "mini_per_class", "office_classes", "office_train_per_class",
                "office_val_per_class", "seg_train", "seg_val"):
        if cfg[key] < 1:
            raise SystemExit(f"error: --{key.replace('_', '-')} must be >= 1, got {cfg[key]}")
    for key in ("mini_classes", "office_classes"):
        if cfg[key] > MAX_CLASSES:
            raise SystemExit(f"error: --{key.replace('_', '-')} must be <= {MAX_CLASSES} "
                             f"(unique shape/texture/colour combinations), got {cfg[key]}")
    if cfg["mini_size"] < 16 or cfg["seg_size"] < 32:
        raise SystemExit("error: --mini-size must be >= 16 and --seg-size >= 32")
    if cfg["sl_steps"] < 0:
        raise SystemExit(f"error: --sl-steps must be >= 0, got {cfg['sl_steps']}")
    if cfg["sl_steps"] > 0 and str(cfg["device"]).startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("error: --device cuda asked for --sl-steps but no CUDA device is "
                             "visible; use --device cpu (slow) or --sl-steps 0")


def _remove_own_tree(out):
    """--overwrite: delete the p1_data/ and p2_data/ of a tree this script wrote (MARKER beside
    them); refuse, deleting nothing, when either is there without it."""
    found = [sub for sub in TREE if os.path.lexists(out / sub)]
    if found and not (out / MARKER).is_file():
        raise SystemExit(f"error: {out} holds {' and '.join(s + '/' for s in found)} that "
                         f"make_demo_data.py did not write (no {MARKER} beside them; the real "
                         "data, perhaps), so --overwrite leaves them alone: choose another "
                         "--output-dir, or delete them yourself")
    for sub in found:
        if (out / sub).is_dir() and not (out / sub).is_symlink():
            shutil.rmtree(out / sub)
        else:
            os.remove(out / sub)


def make_demo_data(out, **sizes):
    """Write the demo tree under `out`; keyword arguments as in DEFAULTS. Returns counts."""
    unknown = set(sizes) - set(DEFAULTS)
    if unknown:
        raise TypeError(f"make_demo_data() got unknown arguments {sorted(unknown)}")
    cfg = {**DEFAULTS, **sizes}
    _check_sizes(cfg)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SystemExit(f"error: --output-dir {out} is a file; give a folder path")
    if out.is_dir() and any(out.iterdir()):
        if not cfg["overwrite"]:
            raise SystemExit(f"error: output folder {out} is not empty; pass --overwrite to "
                             "replace the demo tree this script wrote there, or choose another "
                             "--output-dir")
        _remove_own_tree(out)
    out.mkdir(parents=True, exist_ok=True)
    # the mark of a tree of ours, written first: an interrupted run is still ours to replace
    (out / MARKER).write_text(json.dumps(
        {"written_by": "make_demo_data.py", "folders": list(TREE),
         "settings": {k: v for k, v in cfg.items() if k != "overwrite"}}, indent=1) + "\n")
    seed = cfg["seed"]
    start = time.time()

    p1 = out / "p1_data"
    mini_images, mini_labels = _write_mini(p1, seed, cfg["mini_classes"], cfg["mini_per_class"],
                                           cfg["mini_size"])
    n_office_train = _write_office_split(p1, "train", seed, cfg["office_classes"],
                                         cfg["office_train_per_class"], 0, _STREAM_OFFICE_TRAIN)
    n_office_val = _write_office_split(p1, "val", seed, cfg["office_classes"],
                                       cfg["office_val_per_class"],
                                       cfg["office_train_per_class"], _STREAM_OFFICE_VAL)
    _write_sl_model(p1 / "pretrain_model_SL.pt", seed, mini_images, mini_labels,
                    cfg["sl_steps"], cfg["device"], cfg["sl_arch"], cfg["sl_size"])

    p2 = out / "p2_data"
    splits = {"train": (range(cfg["seg_train"]), _STREAM_SEG_TRAIN),
              "validation": (validation_ids(cfg["seg_val"]), _STREAM_SEG_VAL)}
    seg_counts = {}
    for split, (ids, stream) in splits.items():
        folder = p2 / split
        folder.mkdir(parents=True)
        for i in ids:
            sat, label = render_scene(_rng(seed, stream, i), cfg["seg_size"])
            _save_jpeg(sat, folder / f"{i:04d}_sat.jpg")
            Image.fromarray(PALETTE[label]).save(folder / f"{i:04d}_mask.png")
        seg_counts[split] = len(ids)

    counts = {"mini": len(mini_labels), "office_train": n_office_train,
              "office_val": n_office_val, "seg_train": seg_counts["train"],
              "seg_val": seg_counts["validation"]}
    print(f"wrote {out}: mini {counts['mini']} images ({cfg['mini_classes']} hidden classes), "
          f"office {n_office_train} train / {n_office_val} val ({cfg['office_classes']} classes), "
          f"seg {counts['seg_train']} train / {counts['seg_val']} validation "
          f"({cfg['seg_size']} px), pretrain_model_SL.pt "
          f"({cfg['sl_arch']}, "
          f"{'random init' if cfg['sl_steps'] == 0 else str(cfg['sl_steps']) + ' SL steps'}) "
          f"in {time.time() - start:.1f} s")
    return counts


def main(args):
    cfg = vars(args).copy()
    out = cfg.pop("output_dir")
    return make_demo_data(out, **cfg)


if __name__ == "__main__":
    cli.run(main, get_args_parser())
