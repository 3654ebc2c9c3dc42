"""Fetch everything the experiments and the grading entry points need.

    bash hw1_download.sh                 # everything that is missing
    bash hw1_download.sh data sam        # only some items
    bash hw1_download_ckpt.sh            # the grader's entry: only p1 and p2
    python hw1_download.py --list        # what would be fetched, and where

Items (all addresses and hashes are in ITEMS below, the one place that knows them). Each is
checked with the hash its publisher uses:
  data         hw1_data.zip from Google Drive (gdown), unpacked to hw1_data/ (checked by the
               folders it must contain)
  sam          the SAM ViT-H checkpoint -> checkpoints/sam_vit_h_4b8939.pth, checked against
               Meta's full MD5 (and its size, as a quick pre-check)
  torchvision  the ImageNet/COCO initialisation weights of FCN32s (VGG16) and DeepLabV3 into
               the torch hub cache, where the training scripts look for them; checked as
               torch.hub does, against the sha256 prefix in each file's name
  p1 / p2      our trained checkpoints for hw1_1.sh / hw1_2.sh -> checkpoints/p1_C.pth,
               checkpoints/p2_B.pth, checked against the full sha256 recorded next to their URL
               ($HW1_P1_URL / $HW1_P1_SHA256 and $HW1_P2_URL / $HW1_P2_SHA256 override them).
               `bash hw1_download_ckpt.sh` (run by the course's grader before inference) fetches
               exactly these two.

Idempotent: an item already in place whose hash matches is not fetched again; one whose hash
does not match is reported and fetched again; a checkpoint in place with no hash recorded (your
own model) is kept and reported as unverified. A download goes to a temporary file beside its
destination and takes the final name only once its size and hash check out, so an interrupted or
corrupt download leaves nothing behind. Without a network every missing item fails with one line
on stderr saying what to do, the others still run, and the exit status is non-zero.

Python 3.8, standard library only (gdown for the data and torchvision for its weights are
imported only by those items).
"""

import argparse
import hashlib
import http.client
import os
import re
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent
TIMEOUT = 30  # seconds without progress before a download counts as failed
CHUNK = 1 << 22
HASH_KINDS = ("md5", "sha256")  # the keys an item may record its digest under


def _env(name):
    return os.environ.get(name, "").strip()


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
        "md5": "4b8939a88964f0f4ff5f5b2642c598a6",  # Meta publishes the MD5; its name holds 6
        "size": 2564550879,
        "hint": "download it by hand from the URL above into checkpoints/",
    },
    "torchvision": {
        "weights": ["VGG16_Weights.IMAGENET1K_V1",
                    "DeepLabV3_ResNet50_Weights.COCO_WITH_VOC_LABELS_V1",
                    "DeepLabV3_ResNet101_Weights.COCO_WITH_VOC_LABELS_V1",
                    "ResNet50_Weights.IMAGENET1K_V1"],
    },
    # Our trained checkpoints: url and sha256 (and optionally size) are filled in once a trained
    # model is published; until then the item tells the user which command trains it.
    "p1": {"url": _env("HW1_P1_URL"), "sha256": _env("HW1_P1_SHA256"),
           "dest": ROOT / "checkpoints" / "p1_C.pth",
           "hint": "train setting C (python3 p1_pretrain_byol.py --data-dir "
                   "hw1_data/p1_data/mini/train, then python3 p1_finetune.py --setting C "
                   "--data-dir hw1_data/p1_data/office --backbone runs/byol/backbone.pth) and "
                   "export it (python3 tools/export_checkpoint.py p1 "
                   "runs/p1_finetune/C/best.pth), or set HW1_P1_URL (and HW1_P1_SHA256) to "
                   "fetch a published one"},
    "p2": {"url": _env("HW1_P2_URL"), "sha256": _env("HW1_P2_SHA256"),
           "dest": ROOT / "checkpoints" / "p2_B.pth",
           "hint": "train model B (python3 p2_train_deeplabv3.py --data-dir "
                   "hw1_data/p2_data) and export it (python3 tools/export_checkpoint.py p2 "
                   "runs/p2_deeplabv3/best.pth), or set HW1_P2_URL (and HW1_P2_SHA256) to "
                   "fetch a published one"},
}


class Failed(Exception):
    pass


class Unpublished(Failed):
    """A checkpoint with no file in place and no URL published yet: an error when asked for by
    name (hw1_download_ckpt.sh, where the grader needs it), a note in the default download."""


def fix_for_missing(path):
    """What makes a missing checkpoint appear, for an error message: for checkpoints/p1_C.pth
    or p2_B.pth, the download when its URL is published, else how to train and export it;
    None for any other path."""
    path = Path(path).resolve()
    for name in ("p1", "p2", "sam"):
        item = ITEMS[name]
        if path == Path(item["dest"]).resolve():
            if item.get("url"):
                return f"`bash hw1_download.sh {name}` fetches it"
            return item["hint"]
    return None


def expected_hash(item):
    """(kind, lower-case hex digest) recorded for the item, or (None, None) when none is."""
    for kind in HASH_KINDS:
        if item.get(kind):
            return kind, item[kind].strip().lower()
    return None, None


def file_digest(path, kind):
    h = hashlib.new(kind)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def verify(path, kind, expected):
    """(ok, actual digest) of the file at path against the full hex digest expected."""
    actual = file_digest(path, kind)
    return actual == expected.strip().lower(), actual


DRIVE_LINK = re.compile(r"drive\.google\.com/(?:file/d/|open\?id=|uc\?(?:export=download&)?id=)"
                        r"([\w-]{20,})")


def source_of(url):
    """Where a checkpoint's published address points: ("gdrive", file id) for a Google Drive
    share link or a bare Drive id (fetched with gdown, which the grader installs), else ("url",
    a direct URL), a Dropbox share link turned into its direct download (dl=1)."""
    url = url.strip()
    found = DRIVE_LINK.search(url)
    if found:
        return "gdrive", found.group(1)
    if "://" not in url and re.fullmatch(r"[\w-]{20,}", url):
        return "gdrive", url
    if "dropbox.com" in url:
        url = re.sub(r"([?&])dl=0\b", r"\1dl=1", url)
        if "dl=1" not in url:
            url += ("&" if "?" in url else "?") + "dl=1"
    return "url", url


def _fetch_gdrive(file_id, dest):
    """A Google Drive file into dest with gdown (the confirmation page of large files included)."""
    try:
        import gdown
    except ImportError:
        raise Failed("a Google Drive checkpoint needs gdown: pip install gdown") from None
    try:
        out = gdown.download(id=file_id, output=str(dest), quiet=True)
    except Exception as e:  # gdown raises requests' errors, its own, or plain RuntimeError
        raise Failed(f"cannot download Google Drive file {file_id} ({type(e).__name__}: "
                     f"{e}); check that it is shared with anyone with the link") from None
    if not out or not dest.is_file():
        raise Failed(f"cannot download Google Drive file {file_id}; check that it is shared "
                     "with anyone with the link")


def _check_and_place(tmp, dest, url, got, length, size, kind, expected, digest):
    """A downloaded temporary file takes the name dest only once its byte count (Content-Length,
    the recorded size) and its hash check out; otherwise a Failed that says what was wrong."""
    if length is not None and length.isdigit() and got != int(length):
        raise Failed(f"download of {dest} from {url} was cut short ({got} of {length} bytes) "
                     "and was discarded; run again")
    if size is not None and got != size:
        raise Failed(f"download of {dest} from {url} has {got} bytes, expected {size}, and "
                     "was discarded; check the URL")
    if digest is not None and digest != expected:
        raise Failed(f"download of {dest} failed its {kind} check (expected {expected}, got "
                     f"{digest}) and was discarded; run again, or check the URL")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(str(tmp), 0o666 & ~umask)  # mkstemp made it private; give it the usual mode
    os.replace(str(tmp), str(dest))


def _download(url, dest, kind=None, expected=None, size=None):
    """Stream url into a temporary file beside dest, hashing as it goes; the file takes the name
    dest only once the byte count (Content-Length, and the recorded size when there is one) and
    the hash check out. Whatever happens, no temporary file is left behind."""
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=str(dest.parent), prefix="." + dest.name + ".",
                                        suffix=".part")
    except OSError as e:
        raise Failed(f"cannot write into {dest.parent} ({e})") from None
    tmp = Path(tmp_name)
    h = hashlib.new(kind) if kind else None
    where, address = source_of(url)
    try:
        if where == "gdrive":  # fetched whole by gdown, then checked as any other
            os.close(fd)
            _fetch_gdrive(address, tmp)
            got = tmp.stat().st_size
            digest = file_digest(tmp, kind) if kind else None
            _check_and_place(tmp, dest, url, got, None, size, kind, expected, digest)
            return
        url = address
        with os.fdopen(fd, "wb") as f:
            try:
                with urllib.request.urlopen(url, timeout=TIMEOUT) as r:
                    length = r.headers.get("Content-Length")
                    got = 0
                    for chunk in iter(lambda: r.read(CHUNK), b""):
                        f.write(chunk)
                        got += len(chunk)
                        if h is not None:
                            h.update(chunk)
            except urllib.error.URLError as e:
                raise Failed(f"cannot download {url} ({getattr(e, 'reason', e)}); check the "
                             "network and run again") from None
            except (OSError, http.client.HTTPException, ValueError) as e:
                raise Failed(f"cannot download {url} ({type(e).__name__}: {e}); check the "
                             "network and run again") from None
        _check_and_place(tmp, dest, url, got, length, size, kind, expected,
                         h.hexdigest() if h is not None else None)
    finally:
        if tmp.exists():
            tmp.unlink()


def get_file(item):
    """A single file with a URL and (normally) a recorded hash: SAM, p1, p2."""
    dest = item["dest"]
    kind, expected = expected_hash(item)
    size = item.get("size")
    url = item.get("url")
    if kind is not None and (len(expected) != 2 * hashlib.new(kind).digest_size
                             or any(c not in "0123456789abcdef" for c in expected)):
        raise Failed(f"the {kind} recorded for {dest.name} ({expected!r}) is not a full "
                     f"{2 * hashlib.new(kind).digest_size}-digit hex digest")
    if dest.is_file():
        if kind is None:
            return f"{dest} in place (no hash recorded, so unverified)"
        have = dest.stat().st_size
        if size is not None and have != size:
            problem = f"has {have} bytes, expected {size}"
        else:
            ok, actual = verify(dest, kind, expected)
            if ok:
                return f"{dest} already in place ({kind} matches)"
            problem = f"fails its {kind} check (expected {expected}, got {actual})"
        if not url:
            raise Failed(f"{dest} {problem}, and no URL is published to fetch it again; "
                         f"{item.get('hint', 'replace it')}")
        print(f"{dest} {problem}; fetching it again", flush=True)
    elif not url:
        raise Unpublished(f"{dest} is missing and no URL is published for it yet; "
                          f"{item.get('hint', 'put it there by hand')}")
    _download(url, dest, kind, expected, size)
    return f"{dest} downloaded" + (f" ({kind} matches)" if kind else
                                   " (no hash recorded, so unverified)")


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


def get_torchvision(item):
    try:
        import torchvision.models as tvm
    except ImportError:
        raise Failed("torchvision is not installed: pip install -r requirements.txt") from None

    for name in item["weights"]:
        enum, member = name.split(".")
        weights = getattr(tvm, enum)[member]
        try:
            # torch.hub checks the sha256 prefix in the file name; cached after the first time
            weights.get_state_dict(progress=True, check_hash=True)
        except (OSError, RuntimeError) as e:
            raise Failed(f"cannot fetch torchvision weights {name} ({e}); check the network, "
                         "or train with --no-pretrained") from None
    return "torchvision weights in " + str(Path(os.environ.get("TORCH_HOME", "~/.cache/torch")))


GETTERS = {"data": get_data, "sam": get_file, "torchvision": get_torchvision,
           "p1": get_file, "p2": get_file}


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
            kind, expected = expected_hash(item)
            check = f"{kind} {expected}" if kind else (
                "sha256 prefix in the file name" if name == "torchvision" else
                "folders present" if name == "data" else "no hash recorded")
            source = item.get("url") or item.get("gdrive_id") or item.get("weights") or \
                "(no URL published yet)"
            print(f"{name:12s} {source} -> {item.get('dest', 'torch hub cache')} [{check}]")
        return 0
    failed = []
    for name in items:
        try:
            print(f"[{name}] {GETTERS[name](ITEMS[name])}", flush=True)
        except Unpublished as e:
            if args.items:  # asked for by name (hw1_download_ckpt.sh): it must be had
                print(f"[{name}] error: {e}", file=sys.stderr, flush=True)
                failed.append(name)
            else:  # the default "everything": what cannot be had yet is no failure
                print(f"[{name}] not published yet, skipped: {e}", flush=True)
        except Failed as e:
            print(f"[{name}] error: {e}", file=sys.stderr, flush=True)
            failed.append(name)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
