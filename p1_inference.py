"""Predict Office-Home classes for a csv of images with a setting-C model (hw1_1.sh runs this).

    python3 p1_inference.py --csv test.csv --image-dir test_images/ --output pred.csv
    python3 p1_inference.py --csv hw1_data/p1_data/office/val.csv \\
        --image-dir hw1_data/p1_data/office/val --output results/p1_val_pred.csv \\
        --checkpoint runs/p1_finetune/C/best.pth

Input: a csv with header id,filename,label (label may be `None` or empty, file names need not
carry a label, e.g. 0000.jpg; a row listed twice is predicted twice, with a warning). Output:
the course's format, header `filename,label` (no space), then one row per input row in the
input's order: the bare file name and the predicted integer label; its folder is created if
missing, and nothing else in it is touched. The csv is written atomically (temp file +
os.replace): it is whole or absent.

The model is rebuilt from the checkpoint's args alone (p1_finetune.py checkpoints): by default
checkpoints/p1_C.pth (fetched by hw1_download.sh), or $HW1_P1_CHECKPOINT when set, or
--checkpoint. Every setting (A-E) shares the model, so any setting's checkpoint works (a note
says which one it is); a BYOL checkpoint (pre-training only) or a Problem 2 one is refused.
Images are loaded exactly as at validation during training: any mode (grayscale, RGBA,
16-bit, CMYK) as RGB, resized to the run's --bank-size square, then to its --image-size,
ImageNet normalisation; on a GPU batches run in the precision the checkpoint's run validated
in (its --amp; --amp/--no-amp choose). Nothing is downloaded.

An image that cannot be read (missing, truncated, not an image) does not stop the others: the
rows of every readable image are written, the unreadable ones are listed at the end and the
exit status is 1, so a caller sees that the output is incomplete rather than finding made-up
labels in it. Mistakes (missing csv, folder or checkpoint, unwritable output) end in one
line naming the path; HW1_DEBUG=1 adds the traceback.
"""

import argparse
import csv
import io
import os
import sys
from pathlib import Path

import torch

import augment
import cli
import data
import errors
import records
import utils
from p1_common import load_classifier, run_batches

DEFAULT_CHECKPOINT = Path(__file__).resolve().parent / "checkpoints" / "p1_C.pth"


def get_args_parser():
    parser = argparse.ArgumentParser(
        "p1_inference", formatter_class=cli.HelpFormatter,
        description="Office-Home predictions (filename,label) for a csv of "
        "images, with the setting-C checkpoint.")
    parser.add_argument("--csv", required=True, type=Path, help="input csv (id,filename,label)")
    parser.add_argument("--image-dir", required=True, type=Path, help="folder of the images")
    parser.add_argument("--output", required=True, type=Path, help="output csv")
    parser.add_argument("--checkpoint", type=Path,
                        default=Path(os.environ.get("HW1_P1_CHECKPOINT", DEFAULT_CHECKPOINT)),
                        help="a p1_finetune.py checkpoint (default: $HW1_P1_CHECKPOINT, else "
                        "checkpoints/p1_C.pth next to this script)")
    parser.add_argument("--batch-size", default=256, type=int, help="images per forward")
    parser.add_argument("--device", default=None, help="cuda, cpu (default: cuda if any)")
    parser.add_argument("--amp", default=None, action=cli.BooleanFlag,
                        help="autocast on CUDA (bf16, fp16 before compute capability 8.0); by "
                        "default as the checkpoint's run validated (its --amp): fp32 for the "
                        "report recipe")
    return parser


def load_images(paths, size):
    """Decode `paths` into one bank, skipping unreadable files.
    -> (ImageBank of the readable ones, their positions in `paths`, [(path, reason)])."""
    try:  # the usual case: every image reads, decoded in parallel at once
        return data.ImageBank.from_paths(paths, size=size), list(range(len(paths))), []
    except errors.UserError:
        pass
    images, good, bad = [], [], []
    for i, path in enumerate(paths):  # find the culprits one by one
        try:
            images.append(data.ImageBank.from_paths([path], size=size, workers=1).images)
            good.append(i)
        except errors.UserError as e:
            bad.append((path, e.message))
    bank = data.ImageBank(torch.cat(images) if images else torch.empty(0, 3, size, size,
                                                                        dtype=torch.uint8))
    return bank, good, bad


def write_predictions(path, rows):
    """rows: (filename, label) -> csv with the course's header `filename,label`, atomically."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["filename", "label"])
    writer.writerows(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    records.atomic_write_bytes(path, buf.getvalue().encode())


def main(args):
    device = utils.get_device(args.device)
    # the inputs and the output first: a mistake there costs no model loading
    rows = data.read_office_csv(args.csv, require_labels=False, duplicates="warn")
    if not args.image_dir.is_dir():
        raise errors.UserError(f"image folder {args.image_dir} does not exist; pass the folder "
                              f"that holds the images listed in {args.csv}")
    if args.output.is_dir():
        raise errors.UserError(f"--output {args.output} is a folder; pass the path of the csv "
                              f"file to write, e.g. {args.output / 'pred.csv'}")
    records.writable_dir(args.output.parent, "--output")
    model, margs, _ = load_classifier(args.checkpoint, device)
    amp = margs.get("amp", True) if args.amp is None else args.amp
    utils.setup_precision(device, amp)
    if margs["setting"] != "C":
        print(f"note: {args.checkpoint} is a setting {margs['setting']} checkpoint (every "
              "setting has the same model; hw1_1.sh is meant for setting C)", file=sys.stderr)
    bank, good, bad = load_images([args.image_dir / r["filename"] for r in rows],
                                  margs["bank_size"])
    preds = []
    if good:
        view = augment.ClassificationAugment(margs["image_size"], train=False)
        logits = run_batches(model, bank.to(device), view, args.batch_size, device, amp)
        preds = logits.argmax(1).tolist()
    write_predictions(args.output, [(Path(rows[i]["filename"]).name, p)
                                    for i, p in zip(good, preds)])
    print(f"wrote {len(good)} predictions to {args.output} (setting {margs['setting']}, "
          f"{args.checkpoint})")
    if bad:
        for _, reason in bad:
            print(f"skipped: {reason}", file=sys.stderr)
        raise errors.UserError(f"{len(bad)} of {len(rows)} image(s) could not be read (listed "
                              f"above, e.g. {bad[0][0].name}); {args.output} holds the other "
                              f"{len(good)} rows")
    return args.output


if __name__ == "__main__":
    cli.run(main, get_args_parser())
