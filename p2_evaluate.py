"""Score predicted land-cover masks against ground truth with the course's mIoU.

    python p2_evaluate.py -g hw1_data/p2_data/validation -p runs/pred_val
    python p2_evaluate.py -g GT_DIR -p PRED_DIR --json scores.json

Every `xxxx_mask.png` of GT_DIR (satellite `*_sat.jpg` files beside them are ignored) is paired
BY NAME with `xxxx_mask.png` in PRED_DIR. Masks are decoded as the course scorer does (each
channel >= 128, code 4R+2G+B, codes 3,6,5,2,1,7,0 -> classes 0..6; pure red, which is no
class, reads as Unknown). Counts are summed over all pixels of all images before the IoU of
classes 0..5 is taken; a pixel of Unknown truth predicted as class i is a false positive of i.

Differences from the course's mean_iou_evaluate.py, all on inputs it cannot handle: files are
paired by name, not by sort order; any image size is accepted (pairs must match each other); a
missing or extra prediction stops with an error naming it; and a class absent from both truth
and prediction (0/0, where the course scorer's mean becomes NaN) prints as `absent` and is left
out of the mean. On inputs the course scorer accepts, the value printed is the same.

Masks in any mode PIL reads (grayscale, palette, RGBA, 16-bit) are read as RGB first; colours
outside the palette are decoded exactly as the course scorer decodes them (no warning: that is
the contract). Mistakes end in one line naming the path (HW1_DEBUG=1 adds the traceback).
"""

import argparse
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

import cli
from data import CLASS_NAMES, SCORED_CLASSES, read_mask
from errors import UserError
from metrics import ConfusionMatrix
from records import writable_dir, write_json


def get_args_parser():
    parser = argparse.ArgumentParser(
        formatter_class=cli.HelpFormatter,
        description="mIoU of predicted masks (xxxx_mask.png) against ground truth, as the "
                    "course scorer computes it, with files paired by name.")
    # the course scorer's names (-g/--labels, -p/--pred); the old ones are accepted for one
    # more release, hence no required=True: argparse would still ask for the new name
    cli.old_name(parser, "--gt-dir", parser.add_argument(
        "-g", "--labels", type=Path, default=None, metavar="GT_DIR",
        help="required: folder with ground-truth xxxx_mask.png (e.g. p2_data/validation)"))
    cli.old_name(parser, "--pred-dir", parser.add_argument(
        "-p", "--pred", type=Path, default=None, metavar="PRED_DIR",
        help="required: folder with predicted xxxx_mask.png, one per ground-truth mask"))
    parser.add_argument("--json", type=Path, default=None,
                        help="also write per-class IoU and the mean to this JSON file")
    parser.add_argument("--workers", type=int, default=8, help="threads decoding PNGs")
    return parser


def mask_ids(folder, what):
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{what} folder {folder} does not exist; pass the folder of its "
                        "xxxx_mask.png files")
    ids = {p.name[: -len("_mask.png")]: p for p in folder.glob("*_mask.png")}
    if not ids:
        raise UserError(f"no *_mask.png files in {what} folder {folder}; masks must be named "
                        "xxxx_mask.png")
    return ids


def pair_masks(gt_dir, pred_dir):
    """[(id, gt_path, pred_path)] by name; a prediction missing or extra is an error."""
    gt, pred = mask_ids(gt_dir, "ground-truth"), mask_ids(pred_dir, "prediction")
    missing, extra = sorted(set(gt) - set(pred)), sorted(set(pred) - set(gt))
    if missing:
        raise UserError(f"no prediction {pred_dir}/{missing[0]}_mask.png for ground truth "
                        f"{gt[missing[0]]} ({len(missing)} missing in all)")
    if extra:
        raise UserError(f"prediction {pred[extra[0]]} has no ground truth {gt_dir}/"
                        f"{extra[0]}_mask.png ({len(extra)} extra in all)")
    return [(i, gt[i], pred[i]) for i in sorted(gt)]


def evaluate(gt_dir, pred_dir, workers=8):
    """ConfusionMatrix over every pixel of every pair."""
    pairs = pair_masks(gt_dir, pred_dir)
    cm = ConfusionMatrix()

    def load(pair):
        i, g, p = pair
        gt, pr = read_mask(g), read_mask(p)
        if gt.shape != pr.shape:
            raise UserError(f"{p} is {pr.shape[1]}x{pr.shape[0]} but its ground truth {g} is "
                            f"{gt.shape[1]}x{gt.shape[0]}; predictions must keep the input size")
        return gt, pr

    with ThreadPoolExecutor(max(1, workers)) as pool:
        for gt, pr in pool.map(load, pairs):
            cm.update(np.asarray(gt), np.asarray(pr))
    return cm, len(pairs)


def main(args):
    if args.labels is None or args.pred is None:
        raise UserError("give both folders: python3 p2_evaluate.py -g GT_DIR -p PRED_DIR")
    if args.json is not None:  # before the scoring, not after it
        if args.json.is_dir():
            raise UserError(f"--json {args.json} is a folder; pass a file path, e.g. "
                            f"{args.json / 'scores.json'}")
        writable_dir(args.json.parent, "--json path")
    cm, n = evaluate(args.labels, args.pred, args.workers)
    iou = cm.iou().tolist()
    for c, v in enumerate(iou):
        shown = "absent" if np.isnan(v) else f"{v:.5f}"
        print(f"class #{c} ({CLASS_NAMES[c]}) : {shown}")
    miou = cm.miou()
    print(f"images: {n}")
    if args.json is not None:
        write_json(args.json, {"images": n, "mean_iou": miou, "iou": cm.per_class(SCORED_CLASSES),
                               "confusion": cm.mat.tolist()})  # rows: truth, columns: prediction
    print(f"mean_iou: {miou:.6f}")
    sys.stdout.flush()
    return miou


if __name__ == "__main__":
    cli.run(main, get_args_parser())
