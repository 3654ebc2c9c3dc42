"""Write a trained run's checkpoint in the form the grading scripts read, and print its hash.

    python3 tools/export_checkpoint.py p1 runs/p1_finetune/C/best.pth   # -> checkpoints/p1_C.pth
    python3 tools/export_checkpoint.py p2 runs/p2_deeplabv3/best.pth    # -> checkpoints/p2_B.pth

The exported file keeps what inference needs (kind, weights, args, epoch, best metric and best
epoch) and drops what only resuming needs (optimizer, scheduler, scaler), so a last.pth shrinks
to the size of its weights. The checkpoint's kind is checked first: p1 takes a p1_finetune.py
checkpoint, p2 one of p2_train_fcn32s.py / p2_train_deeplabv3.py. Then it prints the sha256 and
size, and the lines that make `bash hw1_download_ckpt.sh` fetch and verify the file once it is
published (hw1_download.py, ITEMS, or the HW1_P1_URL / HW1_P1_SHA256 variables).
"""

import argparse
import hashlib
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import cli  # noqa: E402
import utils  # noqa: E402
from records import _atomic_write, writable_dir  # noqa: E402

TARGETS = {  # item of hw1_download.py: (checkpoint kind, where the grading script reads it)
    "p1": ("p1_classifier", ROOT / "checkpoints" / "p1_C.pth"),
    "p2": ("p2_segmenter", ROOT / "checkpoints" / "p2_B.pth"),
}
KEEP = ("kind", "model", "args", "epoch", "best_metric", "best_epoch")


def get_args_parser():
    parser = argparse.ArgumentParser(
        "export_checkpoint", formatter_class=cli.HelpFormatter,
        description="Export a trained checkpoint for hw1_1.sh / hw1_2.sh and print its hash.")
    parser.add_argument("item", choices=sorted(TARGETS),
                        help="p1: setting C classifier for hw1_1.sh; p2: model B for hw1_2.sh")
    parser.add_argument("checkpoint", type=Path, help="a best.pth or last.pth of the run")
    parser.add_argument("--output", type=Path, default=None,
                        help="where to write it (default: checkpoints/p1_C.pth or p2_B.pth)")
    parser.add_argument("--url", default=None,
                        help="where the file will be published: any https URL, a Dropbox share "
                        "link or a Google Drive share link or id (fetched with gdown)")
    parser.add_argument("--write", action="store_true",
                        help="with --url: write the URL and sha256 into hw1_download.py's ITEMS "
                        "(commit it afterwards); without: print the lines to paste")
    parser.add_argument("--download-script", type=Path, default=ROOT / "hw1_download.py",
                        help=argparse.SUPPRESS)  # tests write into a copy
    return parser


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def main(args):
    kind, default = TARGETS[args.item]
    ckpt = utils.load_checkpoint(args.checkpoint, kind=kind)
    slim = {k: ckpt.get(k) for k in KEEP}
    out = Path(args.output or default)
    writable_dir(out.parent, "--output")
    _atomic_write(out, lambda f: torch.save(slim, f))
    digest, size = sha256(out), out.stat().st_size
    var = f"HW1_{args.item.upper()}"
    print(f"wrote {out} ({size / 1e6:.1f} MB, {kind}, epoch {slim['epoch']}) from "
          f"{args.checkpoint}")
    print(f"sha256 {digest}")
    url = args.url or f"https://YOUR/HOST/{out.name}"
    if args.url and args.write:
        publish(args.download_script, var, args.url, digest)
        print(f"wrote the URL and sha256 of {args.item} into {args.download_script}; upload "
              f"{out} there, commit it, then: python3 tools/handin_check.py")
    else:
        print(f"Publish it, then put into hw1_download.py, ITEMS[\"{args.item}\"]:\n"
              f"    \"url\": _env(\"{var}_URL\") or \"{url}\",\n"
              f"    \"sha256\": _env(\"{var}_SHA256\") or \"{digest}\", \"size\": {size},\n"
              f"or set {var}_URL={url} {var}_SHA256={digest}"
              + ("" if args.url else "; --url URL --write writes them in"))
    return out, digest


def publish(script, var, url, digest):
    """Set the published URL and sha256 of one item in hw1_download.py: `_env("VAR_URL")`
    (followed or not by `or "..."`) becomes `_env("VAR_URL") or "url"`, the same for
    VAR_SHA256; the environment variables still win."""
    text = Path(script).read_text()
    for name, value in ((f"{var}_URL", url), (f"{var}_SHA256", digest)):
        pattern = re.compile(r'_env\("' + name + r'"\)(?: or "[^"]*")?')
        if len(pattern.findall(text)) != 1:
            raise SystemExit(f"export_checkpoint: {script} has no single _env(\"{name}\") to "
                             "fill in; edit ITEMS by hand")
        text = pattern.sub(lambda m: f'_env("{name}") or "{value}"', text)
    _atomic_write(Path(script), lambda f: f.write(text.encode()))


if __name__ == "__main__":
    cli.run(main, get_args_parser())
