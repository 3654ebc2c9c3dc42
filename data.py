"""Data: readers of the exact hw1_data layouts (Office-Home csv, the unlabeled Mini-ImageNet
folder, satellite sat/mask pairs), the one image decoder, the image bank (a folder decoded once
into one uint8 tensor that can live on the training device), and the course scorer's mask codec.

torch is imported only where tensors are made (ImageBank.from_paths, index_batches), so the
decoder and the mask codec load without it: the scorer, p2_evaluate.py, starts in well under a
second instead of the few seconds `import torch` takes.

On the grading path (hw1_1.sh, hw1_2.sh): Python 3.8, torch 2.4, the course's packages.
"""

import csv
import hashlib
import io
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from errors import UserError, first_line
from records import _atomic_write, atomic_write_bytes

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def _require_dir(path, what):
    path = Path(path)
    if not path.is_dir():
        state = "is a file, not a folder" if path.exists() else "does not exist"
        raise UserError(f"{what} folder {path} {state}; run `bash hw1_download.sh` "
                        "or `python make_demo_data.py --output-dir DIR` for demo data")
    return path


def subset(items, max_n=None, seed=0):
    """What --max-images means in every script: a random subset of `max_n` of `items`, drawn
    with `seed` (the same N and seed give the same subset), kept in the items' order; all of
    them when max_n is None or not below their number. A random subset, not the first N:
    Office-Home's files are named {label}_{id}.jpg, so the first N in name order would hold
    a few classes only."""
    items = list(items)
    if max_n is None or max_n >= len(items):
        return items
    import torch

    keep = torch.randperm(len(items), generator=torch.Generator().manual_seed(seed))
    return [items[i] for i in sorted(keep[:max_n].tolist())]


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


def as_hw(size):
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
        resized with PIL's bilinear filter (what torchvision's Resize does to a PIL image, as the
        report's code read them), masks with nearest neighbour. Any mode PIL reads
        becomes RGB (utils.load_rgb). size_flag: the flag that sets `size`, named in the error
        when images of different sizes come without one.
        cache_dir: where `bank-<hash>.npy` is kept; the hash covers the file names, sizes and
        modification times, the target size and the kind, so a changed folder is re-decoded.
        Masks with colours outside the palette are decoded as the course scorer decodes them
        (each channel thresholded at 128, pure red as Unknown) with one warning per call.
        """
        import torch
        paths = [Path(p) for p in paths]
        if not paths:
            raise UserError("no images to load")
        size = as_hw(size)
        cache_file = None
        if cache_dir is not None:
            key = hashlib.sha1(repr((kind, size, "bilinear")).encode())
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
            fn = lambda p: _decode(p, size, Image.BILINEAR)  # noqa: E731
        elif kind == "mask":
            fn = lambda p: _decode_mask(p, size, off_palette)  # noqa: E731
        else:
            raise ValueError(f"kind must be 'image' or 'mask', not {kind!r}")
        workers = workers or min(16, (os.cpu_count() or 2) * 2)
        with ThreadPoolExecutor(workers) as pool:
            it = pool.map(fn, paths)
            if progress:
                try:  # training's progress bar; the 2025 grading machine has no tqdm
                    from tqdm import tqdm
                    it = tqdm(it, total=len(paths), desc=f"decoding {len(paths)} {kind}s",
                              leave=False)
                except ImportError:
                    pass
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
                  rank=0, world_size=1, min_last=1):
    """Yield LongTensor index batches over range(n): one permutation per epoch, shard `rank` of
    `world_size` (each rank takes its own stride of the permutation; `generator` must be seeded
    alike on every rank). With drop_last every rank gets the same number of batches, and step
    s of the ranks together covers exactly the global batch s of a single process with
    batch_size * world_size: rank r holds its positions r, r + world_size, ... The permutation
    goes to `device` once per epoch, so a step does no host-to-device copy. Without drop_last
    the last partial batch comes too (as a DataLoader's), when it holds at least `min_last`
    indices (training passes 2: BatchNorm cannot train on one image)."""
    import torch
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    if drop_last:
        order = order[: len(order) - len(order) % world_size]
    order = order[rank::world_size].to(device, non_blocking=True)
    rest = len(order) % batch_size
    stop = len(order) - (rest if drop_last or rest < min_last else 0)
    for start in range(0, stop, batch_size):
        yield order[start:start + batch_size]


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


def as_numpy(x):
    """x as a NumPy array without importing torch: a tensor (any device, with or without
    grad) is copied to the host, anything else goes through np.asarray."""
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


def classes_to_rgb(classes):
    """(H, W) class indices (numpy or tensor) -> (H, W, 3) uint8 palette image."""
    return PALETTE[as_numpy(classes).astype(np.int64)]


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
