"""Predict a land-cover mask for every xxxx_sat.jpg of a folder (Problem 2's grading entry point).

    bash hw1_2.sh INPUT_DIR OUTPUT_DIR    # runs: python3 p2_inference.py --input-dir $1 ...
    python p2_inference.py --input-dir hw1_data/p2_data/validation --output-dir results/p2_B
    python p2_inference.py --input-dir IN --output-dir OUT --checkpoint runs/p2_fcn32s/best.pth
    python p2_evaluate.py -g hw1_data/p2_data/validation -p results/p2_B

Writes OUTPUT_DIR/xxxx_mask.png (created when missing) for each input, in the exact palette of
the course, at the input's own size, each file atomically. The checkpoint (default
checkpoints/p2_B.pth beside this script, or $HW1_P2_CHECKPOINT when set; `--checkpoint` wins)
is any best.pth / last.pth / epoch_XXX.pth of p2_train_fcn32s.py or p2_train_deeplabv3.py: it
names its model and carries the flags it was trained with, so the network is rebuilt from it
with no weight download. Images are decoded in threads a few batches ahead, grouped by size
and predicted in batches (on a GPU in the precision the checkpoint's run validated in). Any
size works (the mask has the input's size) and any mode PIL reads (grayscale, CMYK, 16-bit) is
read as RGB. An unreadable image is reported and
skipped: the others are still written, then each failure is listed and the run exits with
status 1. Nothing in OUTPUT_DIR is touched but the xxxx_mask.png files of the inputs.
Mistakes (missing folder, wrong checkpoint, unwritable output) end in one line naming the
path; HW1_DEBUG=1 adds the traceback.
"""

import argparse
import collections
import itertools
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

import cli
from data import load_rgb, write_mask
from errors import UserError, first_line
from p2_common import load_segmenter, predict
from records import writable_dir
from utils import get_device, setup_precision

ROOT = Path(__file__).resolve().parent


def get_args_parser():
    parser = argparse.ArgumentParser(
        formatter_class=cli.HelpFormatter,
        description="Write xxxx_mask.png (course palette, input size) for every xxxx_sat.jpg of "
                    "--input-dir into --output-dir, with a trained Problem 2 checkpoint.")
    parser.add_argument("--input-dir", type=Path, required=True, help="folder of *_sat.jpg")
    parser.add_argument("--output-dir", type=Path, required=True,
                        help="where the masks go (created when missing)")
    parser.add_argument("--checkpoint", type=Path,
                        default=Path(os.environ.get("HW1_P2_CHECKPOINT",
                                                    ROOT / "checkpoints" / "p2_B.pth")),
                        help="a checkpoint of p2_train_*.py (default: $HW1_P2_CHECKPOINT, else "
                             "checkpoints/p2_B.pth, fetched by `bash hw1_download.sh`)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per forward pass")
    parser.add_argument("--tta", action=cli.BooleanFlag, default=False,
                        help="average the softmax over the image and its h/v flips (3x slower)")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda if present)")
    parser.add_argument("--amp", action=cli.BooleanFlag, default=None,
                        help="autocast on CUDA (bf16, fp16 before compute capability 8.0); by "
                             "default as the checkpoint's run validated (its --amp): fp32 for "
                             "the report recipe")
    parser.add_argument("--workers", type=int, default=8, help="threads decoding and writing")
    return parser




def read_sat(path):
    """(path, (H, W, 3) uint8 array or None, error message or None)."""
    try:
        return path, np.asarray(load_rgb(path)), None
    except UserError as e:
        return path, None, e.message


def decoded(pool, paths, ahead):
    """Yield read_sat results in order, keeping `ahead` decodes running in the thread pool."""
    it = iter(paths)
    queue = collections.deque(pool.submit(read_sat, p) for p in itertools.islice(it, ahead))
    while queue:
        result = queue.popleft().result()
        queue.extend(pool.submit(read_sat, p) for p in itertools.islice(it, 1))
        yield result


def main(args):
    device = get_device(args.device)
    in_dir, out_dir = Path(args.input_dir), Path(args.output_dir)
    if not in_dir.is_dir():
        raise UserError(f"input folder {in_dir} does not exist; pass the folder of the "
                        "xxxx_sat.jpg images")
    paths = sorted(in_dir.glob("*_sat.jpg"))
    if not paths:
        raise UserError(f"no *_sat.jpg images in {in_dir}; inputs must be named xxxx_sat.jpg")
    writable_dir(out_dir, "--output-dir")
    model, run_args = load_segmenter(args.checkpoint, device)
    amp = run_args.get("amp", True) if args.amp is None else args.amp
    setup_precision(device, amp)

    failures, writes, done = [], [], 0
    t0 = time.time()
    with ThreadPoolExecutor(max(1, args.workers)) as pool:

        def run(batch):  # batch: [(path, (H, W, 3) uint8)] of one size
            x = torch.from_numpy(np.stack([a for _, a in batch])).permute(0, 3, 1, 2)  # (B,3,H,W)
            pred = predict(model, x, device, amp, args.tta).to(torch.uint8).cpu().numpy()
            for (path, _), mask in zip(batch, pred):
                target = out_dir / (path.name[: -len("_sat.jpg")] + "_mask.png")
                writes.append((path, pool.submit(write_mask, target, mask)))

        groups = collections.defaultdict(list)  # (H, W) -> images waiting for a full batch
        for path, array, error in decoded(pool, paths, ahead=4 * args.batch_size):
            if error is not None:
                failures.append((path, error))
                continue
            group = groups[array.shape[:2]]
            group.append((path, array))
            if len(group) == args.batch_size:
                run(group)
                groups[array.shape[:2]] = []
        for group in groups.values():
            if group:
                run(group)
        for path, future in writes:
            try:
                future.result()
                done += 1
            except OSError as e:
                failures.append((path, f"cannot write the mask of {path} ({first_line(e)})"))
    seconds = time.time() - t0
    print(f"wrote {done} masks to {out_dir} in {seconds:.1f} s ({done / seconds:.1f} images/s"
          f"{', TTA' if args.tta else ''}, {device})")
    if failures:
        for _, reason in failures:
            print(f"skipped: {reason}", file=sys.stderr)
        names = ", ".join(p.name for p, _ in failures[:3]) + (", ..." if len(failures) > 3 else "")
        raise UserError(f"{len(failures)} of {len(paths)} image(s) failed (listed above: "
                        f"{names}); the masks of the other {done} are in {out_dir}")
    return done


if __name__ == "__main__":
    cli.run(main, get_args_parser())
