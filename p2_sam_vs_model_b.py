"""SAM's automatic masks against model B: class purity, coverage, and model B relabelled by them.

Report section 2.5. Reads a p2_sam.py run made with --save-masks (its masks/{id}/, overlays,
sam_log.jsonl and sam_settings.json), the ground truth and model B's masks; needs neither SAM's
weights nor a GPU, so it can be rerun at will on the masks SAM wrote once.

    bash hw1_2.sh "$PWD/hw1_data/p2_data/validation" "$PWD/results/p2_B"   # model B's masks
    python3 p2_sam.py --checkpoint checkpoints/sam_vit_h_4b8939.pth --model-type vit_h \\
        --input hw1_data/p2_data/validation --output-dir runs/sam_vs_b --save-masks \\
        --figure-ids 0013 0062 0104
    python3 p2_sam_vs_model_b.py --sam-dir runs/sam_vs_b \\
        --labels hw1_data/p2_data/validation --pred results/p2_B

Outputs in --output-dir (default: --sam-dir): `sam_vs_model_b.json` (pooled and per-image
numbers, the SAM run's settings, the definitions), `sam_vs_model_b.md` (the table RESULTS.md
includes) and `sam_vs_model_b.png` (rows of image / ground truth / model B / SAM / relabelled,
for --figure-ids, by default the images of the SAM run's sam_figure.png).

The images of the SAM run that have a ground-truth `xxxx_mask.png` in --labels are scored;
model B's `xxxx_mask.png` in --pred must exist for each of them (class indices 0..6, read as
the course scorer reads them). Each number is defined once, by the docstring of the code that
computes it (mask_purity, covered_pixels, relabel_with_masks, metrics.ConfusionMatrix);
`definitions()` quotes those into sam_vs_model_b.json and sam_vs_model_b.md.
"""

import argparse
import inspect
import math
import sys
from pathlib import Path

import numpy as np
from PIL import Image

import cli
import data
from data import CLASS_NAMES, NUM_CLASSES, SCORED_CLASSES
from errors import UserError
from metrics import ConfusionMatrix
from records import atomic_write_bytes, read_json, read_jsonl, writable_dir, write_json
from sam_masks import (
    LOG_FILE,
    MASKS_DIR,
    SETTINGS_FILE,
    count,
    paint_order,
    read_image,
    read_masks_from_folder,
    tile_figure,
)

# The two rows of the comparison table: key in sam_vs_model_b.json -> label
ROWS = {"model_b": "model B", "sam_relabelled": "model B relabelled by SAM masks"}


def get_args_parser():
    parser = argparse.ArgumentParser(
        formatter_class=cli.HelpFormatter,
        description="SAM's automatic masks (a p2_sam.py --save-masks run) against ground truth "
                    "and model B's predictions: mask class purity, coverage, model B relabelled "
                    "by each mask's majority class, and the mIoU of both; writes "
                    "sam_vs_model_b.json, .md and .png. Needs no SAM weights and no GPU.",
        epilog="Exact commands are in the module docstring (head -12 p2_sam_vs_model_b.py).")
    parser.add_argument("--sam-dir", required=True, type=Path, metavar="DIR",
                        help="the --output-dir of a p2_sam.py run made with --save-masks")
    parser.add_argument("-g", "--labels", required=True, type=Path, metavar="GT_DIR",
                        help="ground-truth xxxx_mask.png (e.g. hw1_data/p2_data/validation); "
                             "images of the SAM run without one are left out")
    parser.add_argument("-p", "--pred", required=True, type=Path, metavar="PRED_DIR",
                        help="model B's xxxx_mask.png for the same ids (written by hw1_2.sh)")
    parser.add_argument("--output-dir", type=Path, default=None, metavar="DIR",
                        help="where sam_vs_model_b.json, .md and .png go (default: --sam-dir)")
    parser.add_argument("--figure-ids", nargs="+", default=None, metavar="ID",
                        help="images shown in sam_vs_model_b.png (default: those of the SAM "
                             "run's sam_figure.png)")
    return parser


# ---------------------------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------------------------
def read_sam_run(sam_dir):
    """(sam_log.jsonl of a p2_sam.py run: one {id, file, masks, seconds} per image; its
    sam_settings.json), or one line saying how to make them."""
    sam_dir = Path(sam_dir)
    log, settings = read_jsonl(sam_dir / LOG_FILE), read_json(sam_dir / SETTINGS_FILE)
    if not log or settings is None:
        raise UserError(f"{sam_dir} holds no p2_sam.py run (no {LOG_FILE} with images, or no "
                        f"{SETTINGS_FILE}); run `p2_sam.py ... --save-masks --output-dir "
                        f"{sam_dir}` first")
    return log, settings


def default_figure_ids(sam_dir, log):
    """The images of the SAM run's sam_figure.png: its --figure-ids, else its --ids, else its
    first 3 images."""
    sam_args = read_json(Path(sam_dir) / "args.json") or {}
    return sam_args.get("figure_ids") or sam_args.get("ids") or [r["id"] for r in log[:3]]


def comparison_pairs(ids, gt_dir, pred_dir):
    """{id: (gt_path, pred_path)} for the `ids` (of the SAM run) that have ground truth.

    A missing prediction for an image with ground truth stops the run before anything is scored.
    """
    for folder, what in ((gt_dir, "--labels"), (pred_dir, "--pred")):
        if not Path(folder).is_dir():
            raise UserError(f"{what} {folder} does not exist")
    pairs, no_gt = {}, []
    for i in ids:
        gt = Path(gt_dir) / f"{i}_mask.png"
        if gt.is_file():
            pairs[i] = (gt, Path(pred_dir) / f"{i}_mask.png")
        else:
            no_gt.append(i)
    if not pairs:
        raise UserError(f"no image of the SAM run has a ground-truth mask in {gt_dir} (looked "
                        f"for e.g. {Path(gt_dir) / (ids[0] + '_mask.png')})")
    no_pred = [i for i, (_, p) in pairs.items() if not p.is_file()]
    if no_pred:
        raise UserError(f"no model B prediction {pairs[no_pred[0]][1]} ({len(no_pred)} missing); "
                        "write them with `bash hw1_2.sh IMAGE_DIR PRED_DIR`")
    if no_gt:
        print(f"{len(no_gt)} image(s) without ground truth in {gt_dir} (e.g. {no_gt[0]}): "
              "not scored")
    return pairs


# ---------------------------------------------------------------------------------------------
# SAM against model B: each number is defined by the first paragraph of the docstring of the
# code computing it; definitions() hands that text to the JSON and the markdown
# ---------------------------------------------------------------------------------------------
def mask_purity(masks, gt, return_counts=False):
    """Class purity of SAM's masks against ground truth: sum_m max_c |m & GT_c| / sum_m |m| over
    all masks m of all scored images, c over the 7 classes (Unknown included: a mask lying on
    Unknown ground truth is pure); overlapping masks each count in full. 1.0 means that no mask
    straddles a class border.

    For one (H, W) class map `gt`; NaN when the masks cover nothing. With `return_counts`, the
    (numerator, denominator) pixel counts, which the summary adds up over images.
    """
    gt = np.asarray(gt)
    pure = total = 0
    for m in masks:
        m = np.asarray(m, dtype=bool)
        if m.shape != gt.shape:
            raise ValueError(f"mask is {m.shape}, the class map {gt.shape}")
        inside = gt[m]
        if inside.size:
            pure += int(np.bincount(inside.ravel(), minlength=NUM_CLASSES).max())
            total += int(inside.size)
    if return_counts:
        return pure, total
    return _ratio(pure, total)


def covered_pixels(masks, shape):
    """Coverage: the fraction of pixels under at least one SAM mask, over all pixels of all
    scored images.

    Returns the count of one image of (H, W) `shape`; the summary divides the sum by the pixels.
    """
    covered = np.zeros(shape, dtype=bool)
    for m in masks:
        covered |= np.asarray(m, dtype=bool)
    return int(covered.sum())


def relabel_with_masks(masks, pred):
    """Model B relabelled by SAM masks: each SAM mask takes model B's majority class over the
    whole mask (ties -> the lower class index); masks are painted largest first, so where masks
    overlap the smallest one wins (as in the overlay); pixels under no mask keep model B's class.

    `pred` is model B's (H, W) class map; every majority is taken in the original `pred`.
    Returns the relabelled copy.
    """
    pred = np.asarray(pred)
    out = pred.copy()
    for i in paint_order(masks):
        m = np.asarray(masks[i], dtype=bool)
        if m.shape != pred.shape:
            raise ValueError(f"mask {i} is {m.shape}, the class map {pred.shape}")
        if m.any():
            out[m] = np.bincount(pred[m].ravel(), minlength=NUM_CLASSES).argmax()
    return out


def definitions():
    """{key of sam_vs_model_b.json: its definition}, quoted from the docstring of the code that
    computes it (its first paragraph; all of metrics.ConfusionMatrix's for the mIoU)."""
    return {"purity": _doc(mask_purity), "coverage": _doc(covered_pixels),
            "sam_relabelled": _doc(relabel_with_masks), "miou": _doc(ConfusionMatrix, None)}


def _doc(obj, paragraphs=1):
    text = inspect.cleandoc(obj.__doc__ or "")  # empty under python -OO
    return " ".join(" ".join(text.split("\n\n")[:paragraphs]).split())


class Comparison:
    """SAM's masks against model B, added up image by image; summary() is sam_vs_model_b.json."""

    def __init__(self):
        self.cm_b, self.cm_sam = ConfusionMatrix(), ConfusionMatrix()  # model B, relabelled
        self.pure = self.total = 0  # mask_purity's counts
        self.per_image = []

    def add(self, i, masks, gt, pred):
        """Score image `i`: (its row of per_image, model B's `pred` relabelled by `masks`)."""
        gt, pred = np.asarray(gt), np.asarray(pred)  # (H, W) class indices each
        relabelled = relabel_with_masks(masks, pred)
        self.cm_b.update(gt, pred)
        self.cm_sam.update(gt, relabelled)
        pure, total = mask_purity(masks, gt, return_counts=True)
        self.pure, self.total = self.pure + pure, self.total + total
        row = {"id": i, "masks": len(masks), "purity": _num(_ratio(pure, total)),
               "pixels": int(gt.size), "covered_pixels": covered_pixels(masks, gt.shape),
               "changed_pixels": int((relabelled != pred).sum())}
        self.per_image.append(row)
        return row, relabelled

    def summary(self, settings):
        rows = self.per_image
        scores = {key: {"miou": _num(cm.miou()), "iou": cm.per_class(SCORED_CLASSES),
                        "pixel_accuracy": _num(cm.pixel_accuracy())}
                  for key, cm in (("model_b", self.cm_b), ("sam_relabelled", self.cm_sam))}
        return {"images": len(rows), "masks": sum(r["masks"] for r in rows),
                "purity": _num(_ratio(self.pure, self.total)),
                "coverage": _num(_ratio(sum(r["covered_pixels"] for r in rows),
                                        sum(r["pixels"] for r in rows))),
                **scores, "definitions": definitions(), "settings": settings, "per_image": rows}


def score_image(comparison, i, masks, pair, image_path, shape):
    """Add image `i` to `comparison`; returns (its row of per_image, its class maps for the figure),
    or None when its ground truth or model B's mask cannot be read (said, and the run goes on).
    A class map of another size than its image stops the run."""
    try:
        gt, pred = (data.read_mask(p) for p in pair)
    except UserError as e:
        print(f"{image_path.name} not scored: {e.message}", file=sys.stderr)
        return None
    for name, arr in zip(pair, (gt, pred)):
        if arr.shape != shape:
            raise UserError(f"{name} is {arr.shape[1]}x{arr.shape[0]}, its image {image_path} "
                            f"{shape[1]}x{shape[0]}")
    row, relabelled = comparison.add(i, masks, gt, pred)
    return row, {"gt": gt, "pred": pred, "relabelled": relabelled}


def comparison_markdown(summary):
    """sam_vs_model_b.md: the mIoU table, the pooled numbers and their definitions, as
    RESULTS.md includes it."""
    names = CLASS_NAMES[:SCORED_CLASSES]
    lines = ["| prediction | mIoU | " + " | ".join(names) + " |",
             "|---|---|" + "---|" * len(names)]
    for key, label in ROWS.items():
        s = summary[key]
        lines.append(f"| {label} | {_fmt(s['miou'])} | "
                     + " | ".join(_fmt(s["iou"][n]) for n in names) + " |")
    st = summary["settings"]
    lines += ["",
              f"{summary['images']} image(s), {summary['masks']} SAM masks ({st['model']}, "
              f"points per side {st['points_per_side']}, pred IoU thresh "
              f"{st['pred_iou_thresh']}, min mask region area {st['min_mask_region_area']}); "
              f"mask class purity against ground truth {_fmt(summary['purity'])}, pixels under "
              f"a mask {_fmt(summary['coverage'])}.",
              "", "Definitions (from the code, as in sam_vs_model_b.json):", ""]
    lines += [f"- {key}: {text}" for key, text in summary["definitions"].items()]
    return "\n".join(lines) + "\n"


def write_comparison(out, summary):
    write_json(out / "sam_vs_model_b.json", summary)
    atomic_write_bytes(out / "sam_vs_model_b.md", comparison_markdown(summary).encode())
    print(f"SAM vs model B on {summary['images']} image(s): purity {summary['purity']}, "
          f"mIoU model B {summary['model_b']['miou']}, relabelled "
          f"{summary['sam_relabelled']['miou']} -> {out / 'sam_vs_model_b.md'}")


def _ratio(a, b):
    return a / b if b else float("nan")


def _num(x, digits=6):
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(x, digits)


def _fmt(v):
    return "n/a" if v is None else f"{v:.4f}"


def write_figure(path, shown):
    """Rows of image / ground truth / model B / SAM / relabelled for `shown` ({id: view}, in
    figure order) at `path`."""
    rows = [[(f"{i} image", v["image"]),
             ("ground truth", data.classes_to_rgb(v["gt"])),
             ("model B", data.classes_to_rgb(v["pred"])),
             (f"SAM ({count(v['masks'], 'mask')})", v["overlay"]),
             ("model B relabelled by SAM", data.classes_to_rgb(v["relabelled"]))]
            for i, v in shown.items()]
    if rows:
        tile_figure(rows, path)


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------
def main(args):
    """Score every image of the SAM run in --sam-dir that has ground truth."""
    log, settings = read_sam_run(args.sam_dir)
    pairs = comparison_pairs([r["id"] for r in log], args.labels, args.pred)
    out = writable_dir(args.output_dir or args.sam_dir, "--output-dir")
    figure_ids = args.figure_ids or default_figure_ids(args.sam_dir, log)
    scored = [r for r in log if r["id"] in pairs]
    print(f"{settings['model']} | {len(scored)} image(s) with ground truth in {args.labels}")

    comparison, views, failed = Comparison(), {}, []
    for k, r in enumerate(scored, 1):
        i, image_path = r["id"], Path(r["file"])
        masks = read_masks_from_folder(Path(args.sam_dir) / MASKS_DIR / i)  # (H, W) bool each
        if len(masks) != r["masks"]:
            raise UserError(f"{Path(args.sam_dir) / MASKS_DIR / i} holds {len(masks)} masks, "
                            f"{LOG_FILE} says {r['masks']}: masks of another run; run p2_sam.py "
                            "with --save-masks again")
        overlay_path = Path(args.sam_dir) / f"{i}_sam.png"
        try:
            with Image.open(overlay_path) as im:
                overlay = np.asarray(im.convert("RGB"))  # (H, W, 3): the input's size
        except OSError:
            raise UserError(f"{overlay_path} cannot be read; run p2_sam.py again") from None
        scored_image = score_image(comparison, i, masks, pairs[i], image_path, overlay.shape[:2])
        if scored_image is None:
            failed.append(" / ".join(map(str, pairs[i])))
            continue
        row, maps = scored_image
        print(f"[{k}/{len(scored)}] {i}: {count(len(masks), 'mask')}, purity {row['purity']}, "
              f"{row['changed_pixels']} pixel(s) relabelled")
        if i in figure_ids:
            views[i] = {"image": read_image(image_path), "overlay": overlay,
                        "masks": len(masks), **maps}

    write_figure(out / "sam_vs_model_b.png", {i: views[i] for i in figure_ids if i in views})
    if comparison.per_image:
        write_comparison(out, comparison.summary(settings))
    if failed:
        raise UserError(f"{len(failed)} pair(s) could not be read and were not scored: "
                        + ", ".join(failed))
    return out


if __name__ == "__main__":
    cli.run(main, get_args_parser())
