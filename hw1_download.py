"""Fetch everything the experiments and the grading entry points need (run via hw1_download.sh).

    bash hw1_download.sh                 # everything that is missing
    bash hw1_download.sh data sam        # only some items
    python hw1_download.py --list        # what would be fetched, and where

Items (all addresses are in ITEMS below, the one place that knows them):
  data         hw1_data.zip from Google Drive (gdown), unpacked to hw1_data/
  sam          the SAM ViT-H checkpoint -> checkpoints/sam_vit_h_4b8939.pth (sha256 checked)
  torchvision  the ImageNet/COCO initialisation weights of FCN32s (VGG16) and DeepLabV3 into
               the torch hub cache, where the training scripts look for them
  p1 / p2      our trained checkpoints for hw1_1.sh / hw1_2.sh -> checkpoints/p1_C.pth,
               checkpoints/p2_B.pth

Idempotent: an item already in place (right size or hash) is skipped. Without a network every
missing item fails with one line saying what to do, the others still run, and the exit status
is non-zero.
"""

import argparse
import hashlib
import os
import shutil
import sys
import urllib.request
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent

ITEMS = {
    "data": {
        "gdrive_id": "1x77fyA9BONMHnQXhvxP-87hFTCFwGm9a",
        "zip": ROOT / "hw1_data.zip",
        "dest": ROOT / "hw1_data",
        "check": ["p1_data/mini/train", "p1_data/office/train.csv", "p2_data/train",
                  "p2_data/validation"],
    },
    "sam": {
        "url": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
        "dest": ROOT / "checkpoints" / "sam_vit_h_4b8939.pth",
        "sha256_prefix": "4b8939",  # SAM names its files after their hash
        "size": 2564550879,
    },
    "torchvision": {
        "weights": ["VGG16_Weights.IMAGENET1K_V1",
                    "DeepLabV3_ResNet50_Weights.COCO_WITH_VOC_LABELS_V1",
                    "DeepLabV3_ResNet101_Weights.COCO_WITH_VOC_LABELS_V1",
                    "ResNet50_Weights.IMAGENET1K_V1"],
    },
    # Our trained checkpoints. The URLs stay empty until a trained model is published; until
    # then the item tells the user which command trains it.
    "p1": {"url": os.environ.get("HW1_P1_URL", ""), "dest": ROOT / "checkpoints" / "p1_C.pth",
           "train": "python p1_finetune.py --setting C ... (see README, Problem 1)"},
    "p2": {"url": os.environ.get("HW1_P2_URL", ""), "dest": ROOT / "checkpoints" / "p2_B.pth",
           "train": "python p2_train_deeplabv3.py ... (see README, Problem 2)"},
}


class Failed(Exception):
    pass


def _download(url, dest):
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=30) as r, open(tmp, "wb") as f:
            shutil.copyfileobj(r, f, length=1 << 22)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise Failed(f"cannot download {url} ({e}); check the network and run again") from None
    os.replace(tmp, dest)


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def get_data(item):
    dest = item["dest"]
    if all((dest / c).exists() for c in item["check"]):
        return f"{dest} already holds the data"
    if not item["zip"].exists():
        try:
            import gdown
        except ImportError:
            raise Failed("the data archive needs gdown: pip install gdown") from None
        try:
            out = gdown.download(id=item["gdrive_id"], output=str(item["zip"]), quiet=False)
        except Exception:  # gdown raises requests' errors, its own, or plain RuntimeError
            out = None
        if out is None or not item["zip"].exists():
            raise Failed(f"cannot download the data archive (Google Drive id "
                         f"{item['gdrive_id']}); check the network or fetch hw1_data.zip by "
                         f"hand into {item['zip'].parent}")
    try:
        with zipfile.ZipFile(item["zip"]) as z:
            top = {n.split("/")[0] for n in z.namelist()}
            z.extractall(dest.parent if top == {"hw1_data"} else dest)
    except zipfile.BadZipFile:
        item["zip"].unlink()
        raise Failed(f"{item['zip']} was incomplete and has been removed; run again") from None
    missing = [c for c in item["check"] if not (dest / c).exists()]
    if missing:
        raise Failed(f"the archive unpacked without {dest / missing[0]}")
    return f"unpacked to {dest}"


def get_sam(item):
    dest = item["dest"]
    if not (dest.exists() and dest.stat().st_size == item["size"]):
        _download(item["url"], dest)
    if not _sha256(dest).startswith(item["sha256_prefix"]):
        dest.unlink()
        raise Failed(f"{dest} failed its sha256 check and was removed; run again")
    return f"{dest} ok"


def get_torchvision(item):
    try:
        import torchvision.models as tvm
    except ImportError:
        raise Failed("torchvision is not installed: pip install -r requirements.txt") from None

    for name in item["weights"]:
        enum, member = name.split(".")
        weights = getattr(tvm, enum)[member]
        try:
            weights.get_state_dict(progress=True, check_hash=True)  # cached after the first time
        except (OSError, RuntimeError) as e:
            raise Failed(f"cannot fetch torchvision weights {name} ({e}); check the network, "
                         "or train with --no-pretrained") from None
    return "torchvision weights in " + str(Path(os.environ.get("TORCH_HOME", "~/.cache/torch")))


def get_checkpoint(item):
    if item["dest"].exists():
        return f"{item['dest']} already there"
    if not item["url"]:
        raise Failed(f"no published URL for {item['dest'].name} yet; train it with "
                     f"`{item['train']}` and save it as {item['dest']}")
    _download(item["url"], item["dest"])
    return f"{item['dest']} downloaded"


GETTERS = {"data": get_data, "sam": get_sam, "torchvision": get_torchvision,
           "p1": get_checkpoint, "p2": get_checkpoint}


def get_args_parser():
    parser = argparse.ArgumentParser(description="Download the data, SAM and initialisation "
                                     "weights, and our trained checkpoints (idempotent).")
    parser.add_argument("items", nargs="*", default=[],
                        help=f"items to fetch (default: all of {', '.join(GETTERS)})")
    parser.add_argument("--list", action="store_true", help="print the items and exit")
    return parser


def main(args):
    items = args.items or list(GETTERS)
    unknown = [i for i in items if i not in GETTERS]
    if unknown:
        print(f"error: unknown item {unknown[0]!r}; choose from {', '.join(GETTERS)}",
              file=sys.stderr)
        return 2
    if args.list:
        for name in items:
            item = ITEMS[name]
            print(f"{name:12s} {item.get('url') or item.get('gdrive_id') or item.get('weights')}"
                  f" -> {item.get('dest', 'torch hub cache')}")
        return 0
    failed = []
    for name in items:
        try:
            print(f"[{name}] {GETTERS[name](ITEMS[name])}")
        except Failed as e:
            print(f"[{name}] error: {e}", file=sys.stderr)
            failed.append(name)
    if failed:
        print(f"{len(failed)} item(s) not fetched: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
