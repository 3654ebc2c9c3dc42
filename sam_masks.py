"""SAM's masks as files and pictures: what p2_sam.py writes and p2_sam_vs_model_b.py reads.

A p2_sam.py run folder holds, for each input `{id}` (its file name without `_sat.jpg` /
extension), the overlay `{id}_sam.png` (the input's size) and, with --save-masks, `masks/{id}/`:
one `{i}.png` (0/255) per mask, largest first, and `metadata.csv`, the layout of
segment-anything's scripts/amg.py; for the whole run, `sam_log.jsonl` (one line per image: id,
file, masks, seconds) and `sam_settings.json` (the mask generator as it ran). Also here: an
image read as the report's SAM run read it, the largest-first order, and the captioned grid
that both scripts draw their figures with.
"""

import csv
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

import data
from errors import UserError

LOG_FILE = "sam_log.jsonl"
SETTINGS_FILE = "sam_settings.json"
MASKS_DIR = "masks"
METADATA_HEADER = ("id,area,bbox_x0,bbox_y0,bbox_w,bbox_h,point_input_x,point_input_y,"
                   "predicted_iou,stability_score,crop_box_x0,crop_box_y0,crop_box_w,crop_box_h")


def read_image(path):
    """(H, W, 3) uint8 RGB, read with OpenCV as the report's SAM run read its images (and as
    SAM's own amg.py does: cv2.imread, then BGR -> RGB); a file OpenCV cannot read (16-bit,
    CMYK, a palette PNG with alpha...) goes through data.load_rgb, which reads any mode."""
    import cv2
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None or bgr.dtype != np.uint8:
        return np.asarray(data.load_rgb(path))
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def paint_order(masks):
    """Indices of `masks` by area, largest first; equal areas keep their input order."""
    areas = [int(np.count_nonzero(m)) for m in masks]
    return sorted(range(len(masks)), key=lambda i: -areas[i])


# ---------------------------------------------------------------------------------------------
# masks/{id}/ (as segment-anything's scripts/amg.py)
# ---------------------------------------------------------------------------------------------
def write_masks_to_folder(records, folder):
    """`{i}.png` (0/255) per mask and metadata.csv, the layout of upstream's amg.py."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "metadata.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(METADATA_HEADER.split(","))
        for i, r in enumerate(records):
            Image.fromarray(np.asarray(r["segmentation"], np.uint8) * 255).save(folder / f"{i}.png")
            writer.writerow([i, r["area"], *r["bbox"], *r["point_coords"][0], r["predicted_iou"],
                             r["stability_score"], *r["crop_box"]])


def read_masks_from_folder(folder):
    """The boolean (H, W) masks write_masks_to_folder wrote, in its order (largest first)."""
    folder = Path(folder)
    try:
        with open(folder / "metadata.csv", newline="") as f:
            ids = [row[0] for row in list(csv.reader(f))[1:] if row]
    except OSError:
        raise UserError(f"no {folder / 'metadata.csv'}; run p2_sam.py with --save-masks, which "
                        "writes the masks compared here") from None
    masks = []
    for i in ids:
        try:
            with Image.open(folder / f"{i}.png") as im:
                masks.append(np.asarray(im.convert("L")) > 0)
        except OSError:
            raise UserError(f"{folder / f'{i}.png'} cannot be read; run p2_sam.py with "
                            "--save-masks again") from None
    return masks


# ---------------------------------------------------------------------------------------------
# figures
# ---------------------------------------------------------------------------------------------
def count(n, noun):
    """`1 mask`, `3 masks`: the figures' captions."""
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _font(size):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one bitmap font size
        return ImageFont.load_default()


def tile_figure(rows, path, max_height=512):
    """Grid of captioned images: `rows` is a list of rows of (caption, (H, W, 3) uint8 array).

    Every cell is scaled to one height (the tallest cell's, at most `max_height`), keeping its
    aspect ratio; drawn and written as PNG with PIL alone.
    """
    height = min(max_height, max(a.shape[0] for row in rows for _, a in row))
    font, pad, caption_h = _font(max(12, height // 24)), 8, max(16, height // 14)
    cells = [[(c, Image.fromarray(a).resize((max(1, round(a.shape[1] * height / a.shape[0])),
                                             height), Image.LANCZOS)
               if a.shape[0] != height else Image.fromarray(a)) for c, a in row] for row in rows]
    widths = [sum(im.width for _, im in row) + pad * (len(row) + 1) for row in cells]
    canvas = Image.new("RGB", (max(widths), len(cells) * (height + caption_h + pad) + pad),
                       "white")
    draw = ImageDraw.Draw(canvas)
    y = pad
    for row in cells:
        x = pad
        for caption, im in row:
            draw.text((x, y), caption, fill="black", font=font)
            canvas.paste(im, (x, y + caption_h))
            x += im.width + pad
        y += height + caption_h + pad
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data.save_image(path, canvas)
    return path
