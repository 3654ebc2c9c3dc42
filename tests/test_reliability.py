"""Bad inputs, no silent loss, determinism (issue 8).

Every mistake a user can make (missing or empty folder, broken image, bad csv, unpaired
satellite files, wrong or broken checkpoint, unwritable output, a loss that turns NaN) must end
in ONE line `error: ...` naming the path and the fix, exit status 1 and no traceback (unless
HW1_DEBUG=1); odd but valid inputs (grayscale, RGBA, 16-bit, CMYK, palette images, any size)
must simply work. The grading scripts keep going past one bad image, list it, exit non-zero,
and touch nothing in the output folder but their own outputs, each written whole or not at all.

CPU only, tiny data (16-64 px), checkpoints built by the real model factories (ResNet50
classifier, DeepLabV3-MobileNetV3); the BYOL checkpoint is a stand-in carrying the real
parser's args (its args are what identify it). CLI checks run the scripts in subprocesses.
"""

import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import errors
import p1_common
import p1_finetune
import p1_inference
import p1_pretrain_byol
import p2_common
import p2_evaluate
import p2_inference
import p2_sam
import p2_train_deeplabv3
import records
import training
import utils
from data import (
    PALETTE,
    ImageBank,
    list_images,
    list_sat_pairs,
    load_rgb,
    read_mask,
    read_office_csv,
)
from errors import UserError

REPO = Path(__file__).resolve().parents[1]
SAMPLE_IDS = ("0008", "0097", "0107", "0128")
TINY_P2 = ["--arch", "mobilenet_v3_large", "--no-pretrained", "--batch-size", "2",
           "--image-size", "32", "--eval-batch-size", "4", "--workers", "1", "--epochs", "1",
           "--device", "cpu", "--snapshot-ids"]  # no snapshot figure


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors on a shared 2-core machine: a second OpenMP thread only waits (see
    test_p2.py)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def env(**extra):
    """The environment of a CLI run: the venv's python3 first on PATH (the grading scripts call
    `python3`), one OpenMP thread, and no HW1_DEBUG unless asked for."""
    e = {k: v for k, v in os.environ.items() if k != errors.DEBUG_ENV}
    e.update(PATH=os.path.dirname(sys.executable) + os.pathsep + e.get("PATH", ""),
             OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="",  # the CPU, on a GPU machine too
             **{k: str(v) for k, v in extra.items()})
    return e


def run_cli(*argv, **extra_env):
    cmd = ["bash", *map(str, argv)] if str(argv[0]).endswith(".sh") else [
        sys.executable, *map(str, argv)]
    return subprocess.run(cmd, cwd=REPO, env=env(**extra_env), capture_output=True, text=True,
                          timeout=300)


def last_line(proc):
    return proc.stderr.strip().splitlines()[-1]  # splitlines also cuts tqdm's \r


def assert_one_line_error(proc, *fragments):
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    line = last_line(proc)
    assert line.startswith("error: "), proc.stderr[-3000:]
    for fragment in fragments:
        assert str(fragment) in line, (fragment, line)
    return line


def one_line(excinfo, *fragments):
    message = excinfo.value.message
    assert "\n" not in message and str(excinfo.value) == f"error: {message}"
    for fragment in fragments:
        assert str(fragment) in message, (fragment, message)
    return message


# ------------------------------------------------------------------------------ tiny inputs
def rgb_array(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def write_odd_images(folder, suffix=""):
    """One image per mode that must load as RGB: {file name: (width, height)}."""
    folder.mkdir(parents=True, exist_ok=True)
    base = Image.fromarray(rgb_array(20, 24))
    gray16 = (np.asarray(base.convert("L"), dtype=np.uint16) * 257)
    images = {
        f"gray{suffix}.jpg": base.convert("L"),
        f"rgba{suffix}.png": base.convert("RGBA"),
        f"cmyk{suffix}.jpg": base.convert("CMYK"),
        f"palette{suffix}.png": base.convert("P"),
        f"bilevel{suffix}.png": base.convert("1"),
        f"gray16{suffix}.png": Image.fromarray(gray16),  # mode I;16
        f"rgb{suffix}.jpg": Image.fromarray(rgb_array(53, 37, seed=1)),  # 37x53, not square
    }
    for name, image in images.items():
        image.save(folder / name)
    return {name: image.size for name, image in images.items()}


def write_broken_images(folder):
    """Files with image names that cannot be decoded: {file name: what is wrong}."""
    folder.mkdir(parents=True, exist_ok=True)
    jpg, png = folder / ".whole.jpg", folder / ".whole.png"
    Image.fromarray(rgb_array(32, 32)).save(jpg)
    Image.fromarray(rgb_array(32, 32)).save(png)
    broken = {"truncated.jpg": jpg.read_bytes()[:300], "truncated.png": png.read_bytes()[:200],
              "empty.jpg": b"", "text.png": b"just some text\n"}
    for name, data in broken.items():
        (folder / name).write_bytes(data)
    jpg.unlink()
    png.unlink()
    return sorted(broken)


# ------------------------------------------------------------------------------ checkpoints
P1_ARGS = {"setting": "C", "num_classes": 4, "image_size": 32, "bank_size": 40}


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """Checkpoints of every kind, as the training scripts write them (utils.save_checkpoint)."""
    d = tmp_path_factory.mktemp("ckpts")
    torch.manual_seed(0)
    classifier = p1_common.Classifier(4)
    utils.save_checkpoint(d / "p1_C.pth", classifier, kind="p1_classifier", epoch=1,
                          best_metric=0.5, args=P1_ARGS)
    state = torch.load(d / "p1_C.pth", weights_only=False)
    state["args"] = {**P1_ARGS, "setting": "D"}
    torch.save(state, d / "p1_D.pth")
    torch.save(p1_common.backbone_state(classifier), d / "backbone.pth")  # bare state_dict
    del state, classifier

    cfg = {"model_name": "deeplabv3", "arch": "mobilenet_v3_large", "pretrained": False}
    utils.save_checkpoint(d / "p2.pth", p2_common.build_deeplabv3(cfg, load_pretrained=False),
                          kind="p2_segmenter",
                          epoch=1, args=cfg)
    # a BYOL checkpoint is recognised by its args: those of p1_pretrain_byol's own parser
    byol_args = p1_pretrain_byol.get_args_parser().parse_args(["--data-dir", "mini"])
    utils.save_checkpoint(d / "byol_last.pth", torch.nn.Linear(2, 2), kind="byol", epoch=3,
                          args=byol_args)

    data = (d / "p2.pth").read_bytes()
    (d / "truncated.pth").write_bytes(data[: len(data) // 3])
    (d / "text.pth").write_text("not a checkpoint\n")
    return d


# ================================================================================ images
def test_odd_image_modes_load_as_rgb_in_training_banks_and_exactly(tmp_path):
    sizes = write_odd_images(tmp_path)
    paths = [tmp_path / name for name in sizes]
    for path in paths:
        image = load_rgb(path)
        assert image.mode == "RGB" and image.size == sizes[path.name]
    bank = ImageBank.from_paths(paths, size=16)  # what every training script does
    assert bank.images.shape == (len(paths), 3, 16, 16) and bank.images.dtype == torch.uint8
    # 16 bits: an 8-bit image saved x257 comes back exactly, the same in all three channels
    gray16 = np.asarray(load_rgb(tmp_path / "gray16.png"))
    gray8 = np.asarray(Image.fromarray(rgb_array(20, 24)).convert("L"))
    assert gray16.shape == (20, 24, 3)
    assert all(np.array_equal(gray16[..., c], gray8) for c in range(3))
    # CMYK and RGBA: PIL's own conversion (alpha dropped)
    cmyk = Image.open(tmp_path / "cmyk.jpg")
    assert np.array_equal(np.asarray(load_rgb(tmp_path / "cmyk.jpg")),
                          np.asarray(cmyk.convert("RGB")))
    assert np.array_equal(np.asarray(load_rgb(tmp_path / "rgba.png")), rgb_array(20, 24))


def test_broken_images_are_one_line_naming_the_file(tmp_path):
    names = write_broken_images(tmp_path)
    for name in names:
        with pytest.raises(UserError) as e:
            load_rgb(tmp_path / name)
        one_line(e, tmp_path / name, "cannot read image", "replace or remove it")
    with pytest.raises(UserError) as e:
        load_rgb(tmp_path / "missing.jpg")
    one_line(e, tmp_path / "missing.jpg", "does not exist")
    # a training bank stops at the first broken file, naming it
    good = tmp_path / "good.png"
    Image.fromarray(rgb_array(16, 16)).save(good)
    with pytest.raises(UserError) as e:
        ImageBank.from_paths([good, tmp_path / "truncated.png"], size=8, workers=1)
    one_line(e, tmp_path / "truncated.png")


def test_images_of_different_sizes_name_two_files_and_the_flag(tmp_path):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    Image.fromarray(rgb_array(8, 8)).save(a)
    Image.fromarray(rgb_array(8, 10)).save(b)
    with pytest.raises(UserError) as e:
        ImageBank.from_paths([a, b], size_flag="--bank-size")
    one_line(e, a, "is 8x8", b, "is 10x8", "pass --bank-size N")


# ================================================================================ folders
def test_missing_empty_or_file_data_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "file.txt").write_text("x")
    for folder, fragment in ((tmp_path / "nope", "does not exist"),
                             (tmp_path / "file.txt", "is a file, not a folder"),
                             (tmp_path / "empty", "no images")):
        with pytest.raises(UserError) as e:
            list_images(folder)  # p1_pretrain_byol
        one_line(e, folder, fragment)
    for folder, fragment in ((tmp_path / "nope", "hw1_download.sh"),
                             (tmp_path / "empty", "no *_sat.jpg")):
        with pytest.raises(UserError) as e:
            list_sat_pairs(folder)  # p2 training
        one_line(e, folder, fragment)
    with pytest.raises(UserError) as e:  # p1_finetune
        p1_common.load_office(tmp_path / "empty", "train", 16, "cpu")
    one_line(e, tmp_path / "empty", "train.csv", "--data-dir")


def test_unpaired_satellite_files_name_the_lonely_one(tmp_path):
    for name in ("0001_sat.jpg", "0002_sat.jpg"):
        Image.fromarray(rgb_array(4, 4)).save(tmp_path / name)
    for name in ("0001_mask.png", "0002_mask.png", "0003_mask.png"):
        Image.fromarray(rgb_array(4, 4)).save(tmp_path / name)
    with pytest.raises(UserError) as e:
        list_sat_pairs(tmp_path)
    one_line(e, tmp_path / "0003_mask.png", "has no partner 0003_sat.jpg", "1 unpaired")


# ================================================================================ csv
CSV_CASES = {  # csv text -> fragments of the error when training reads it
    "no_header": ("0,0_0.jpg,0\n", ["header '0,0_0.jpg,0'", "expected id,filename,label"]),
    "no_label_column": ("id,filename\n0,0_0.jpg\n", ["no label column"]),
    "none_label": ("id,filename,label\n0,0_0.jpg,None\n", [":2 has no label (None)"]),
    "bad_label": ("id,filename,label\n0,0_0.jpg,cat\n", [":2 has label 'cat'"]),
    "negative_label": ("id,filename,label\n0,0_0.jpg,-1\n", [":2 has label '-1'"]),
    "short_row": ("id,filename,label\n0,0_0.jpg\n", [":2 has 2 fields, expected 3"]),
    "duplicate": ("id,filename,label\n0,0_0.jpg,0\n1,0_0.jpg,0\n",
                  [":3 lists 0_0.jpg a second time", "remove the repeated row"]),
    "missing_file": ("id,filename,label\n0,0_0.jpg,0\n1,9_9.jpg,9\n",
                     ["1 file(s) listed", "missing from", "e.g. 9_9.jpg"]),
    "empty": ("", ["is empty"]),
    "only_header": ("id,filename,label\n", ["lists no images"]),
}


@pytest.mark.parametrize("case", sorted(CSV_CASES))
def test_bad_training_csv_is_one_line_naming_the_file(tmp_path, case):
    text, fragments = CSV_CASES[case]
    (tmp_path / "img").mkdir()
    Image.fromarray(rgb_array(4, 4)).save(tmp_path / "img" / "0_0.jpg")
    (tmp_path / "train.csv").write_text(text)
    with pytest.raises(UserError) as e:
        read_office_csv(tmp_path / "train.csv", tmp_path / "img")
    one_line(e, tmp_path / "train.csv", *fragments)


def test_inference_csv_accepts_none_labels_duplicates_bom_and_any_column_order(tmp_path,
                                                                                 capsys):
    path = tmp_path / "test.csv"
    path.write_text("\ufeffLabel,FileName,ID\nNone,0000.jpg,7\n,0001.jpg,8\nNone,0000.jpg,9\n",
                    encoding="utf-8")
    rows = read_office_csv(path, require_labels=False, duplicates="warn")
    assert [(r["id"], r["filename"], r["label"]) for r in rows] == [
        ("7", "0000.jpg", -1), ("8", "0001.jpg", -1), ("9", "0000.jpg", -1)]
    assert "lists 1 file(s) more than once (e.g. 0000.jpg)" in capsys.readouterr().err
    path.write_bytes(b"\xff\xd8\xff\xe0 a jpeg, not a csv")
    with pytest.raises(UserError) as e:
        read_office_csv(path, require_labels=False)
    one_line(e, path, "not a text csv")
    with pytest.raises(UserError) as e:
        read_office_csv(tmp_path, require_labels=False)
    one_line(e, tmp_path, "is a folder, not a file")


# ================================================================================ masks
def test_off_palette_masks_decode_as_the_scorer_with_one_warning(tmp_path, capsys):
    rgb = np.zeros((2, 3, 3), np.uint8)
    rgb[0] = [(255, 0, 0), (200, 100, 50), (130, 130, 10)]   # codes 4, 4, 6 -> 6, 6, 1
    rgb[1] = [PALETTE[0], PALETTE[3], (30, 240, 250)]        # exact 0, 3; near-cyan -> 0
    Image.fromarray(rgb).save(tmp_path / "0001_mask.png")
    Image.fromarray(PALETTE[np.zeros((2, 3), int)]).save(tmp_path / "0002_mask.png")
    expected = np.array([[6, 6, 1], [0, 3, 0]])
    assert np.array_equal(read_mask(tmp_path / "0001_mask.png"), expected)  # p2_evaluate
    bank = ImageBank.from_paths([tmp_path / "0001_mask.png", tmp_path / "0002_mask.png"],
                                      kind="mask")  # training
    assert np.array_equal(bank.images[0].numpy(), expected)
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and "1 of 2 masks hold colours outside the palette" in err
    assert str(tmp_path / "0001_mask.png") in err
    ImageBank.from_paths([tmp_path / "0002_mask.png"], kind="mask")
    assert capsys.readouterr().err == ""  # palette-only masks: no warning


# ================================================================================ checkpoints
def test_missing_truncated_or_foreign_checkpoints_are_one_line(ckpts, tmp_path):
    for name, fragment in (("nope.pth", "does not exist; check the path: a training run "
                                        "writes its best.pth and last.pth into its --output-dir"),
                           ("truncated.pth", "cannot be read"),
                           ("text.pth", "cannot be read")):
        with pytest.raises(UserError) as e:
            utils.load_checkpoint(ckpts / name)
        one_line(e, ckpts / name, fragment)
    with pytest.raises(UserError) as e:
        utils.load_checkpoint(ckpts)
    one_line(e, ckpts, "is a folder")
    # Problem 1 inference: only p1_finetune.py checkpoints; any setting
    for name, kind in (("p2.pth", "is a Problem 2 model of p2_train_fcn32s.py"),
                       ("byol_last.pth", "is a BYOL pre-training checkpoint"),
                       ("backbone.pth", "is a bare state_dict")):
        with pytest.raises(UserError) as e:
            p1_common.load_classifier(ckpts / name, "cpu")
        one_line(e, ckpts / name, kind, "not a Problem 1 classifier of p1_finetune.py",
                 "pass a best.pth of p1_finetune.py")
    _, args, _ = p1_common.load_classifier(ckpts / "p1_D.pth", "cpu")
    assert args["setting"] == "D"
    # Problem 2 inference: only p2_train_*.py checkpoints
    for name, fragment in (("p1_C.pth", "is a Problem 1 classifier of p1_finetune.py, not a "
                                        "Problem 2 model"),
                           ("backbone.pth", "is a bare state_dict (weights only")):
        with pytest.raises(UserError) as e:
            p2_common.load_segmenter(ckpts / name, "cpu")
        one_line(e, ckpts / name, fragment)
    # SAM: a Problem 2 checkpoint is not SAM
    with pytest.raises(UserError) as e:
        p2_sam.load_sam_state_dict(ckpts / "p2.pth", "vit_h")
    one_line(e, ckpts / "p2.pth", "is not a SAM checkpoint", "hw1_download.sh sam")


def test_a_missing_grading_checkpoint_names_the_fix_that_works(monkeypatch, tmp_path):
    """checkpoints/p2_B.pth (p1_C.pth) missing: with no URL published, the download cannot
    fetch it, so the message says how to train and export it; once one is published, the
    download. Any other missing path: check it."""
    import hw1_download

    for item, load, train, export in (
            ("p2", p2_common.load_segmenter,
             "train model B (python3 p2_train_deeplabv3.py --data-dir hw1_data/p2_data)",
             "python3 tools/export_checkpoint.py p2 runs/p2_deeplabv3/best.pth"),
            ("p1", p1_common.load_classifier,
             "python3 p1_finetune.py --setting C --data-dir hw1_data/p1_data/office --backbone "
             "runs/byol/backbone.pth",
             "python3 tools/export_checkpoint.py p1 runs/p1_finetune/C/best.pth")):
        dest = tmp_path / f"{item}.pth"  # stands for checkpoints/p2_B.pth: never there
        monkeypatch.setitem(hw1_download.ITEMS, item, {**hw1_download.ITEMS[item], "dest": dest,
                                                       "url": ""})
        with pytest.raises(UserError) as e:
            load(dest, "cpu")
        message = one_line(e, dest, "does not exist", train, export)
        assert "hw1_download.sh" not in message  # it cannot fetch what is not published
        monkeypatch.setitem(hw1_download.ITEMS[item], "url", "https://example.com/b.pth")
        with pytest.raises(UserError) as e:
            load(dest, "cpu")
        one_line(e, f"checkpoint {dest} does not exist; `bash hw1_download.sh {item}` fetches it")
    with pytest.raises(UserError) as e:
        p2_common.load_segmenter(tmp_path / "typo.pth", "cpu")
    one_line(e, f"checkpoint {tmp_path / 'typo.pth'} does not exist; check the path: it should "
                "be a best.pth of p2_train_fcn32s.py or p2_train_deeplabv3.py")


# ================================================================================ outputs
def test_unwritable_output_folders_are_one_line(tmp_path):
    blocker = tmp_path / "file.txt"  # tests run as root: only a file in the way is unwritable
    blocker.write_text("x")
    with pytest.raises(UserError) as e:
        training.prepare_output_dir(blocker / "run", None)  # every training script
    one_line(e, blocker / "run", f"{blocker} is a file, not a folder", "--output-dir")
    with pytest.raises(UserError) as e:
        p2_evaluate.main(p2_evaluate.get_args_parser().parse_args(
            ["-g", str(tmp_path), "-p", str(tmp_path), "--json", str(blocker / "s.json")]))
    one_line(e, blocker, "--json")
    out = records.writable_dir(tmp_path / "new" / "deeper")  # a missing folder is created
    assert out.is_dir() and list(out.iterdir()) == []


def test_failed_atomic_write_leaves_the_old_file_and_no_temp(tmp_path):
    target = tmp_path / "pred.csv"
    records.atomic_write_bytes(target, b"old\n")

    def crash(f):
        f.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        records._atomic_write(target, crash)
    assert target.read_bytes() == b"old\n" and sorted(os.listdir(tmp_path)) == ["pred.csv"]
    assert (target.stat().st_mode & 0o777) == 0o666 & ~records._umask()  # not the temp's 0600


# ================================================================================ CLIs
def test_hw1_1_sh_skips_bad_images_lists_them_and_keeps_other_files(ckpts, tmp_path):
    images = tmp_path / "images"
    sizes = write_odd_images(images)
    broken = write_broken_images(images)
    names = [*sizes, broken[0], "missing.jpg", broken[2]]
    rows = [(i, name, "None") for i, name in enumerate(names)]
    rows.append((len(rows), "gray.jpg", "None"))  # a duplicated row is predicted twice
    with open(tmp_path / "test.csv", "w", newline="") as f:
        csv.writer(f).writerows([("id", "filename", "label"), *rows])
    out = tmp_path / "out"
    out.mkdir()
    (out / "foreign.txt").write_text("keep me")
    (out / "old").mkdir()

    proc = run_cli("hw1_1.sh", tmp_path / "test.csv", images, out / "pred.csv",
                   HW1_P1_CHECKPOINT=ckpts / "p1_C.pth")
    line = assert_one_line_error(proc, "3 of 11 image(s) could not be read", out / "pred.csv")
    skipped = [ln for ln in proc.stderr.splitlines() if ln.startswith("skipped: ")]
    for bad in (broken[0], "missing.jpg", broken[2]):
        assert sum(str(images / bad) in ln for ln in skipped) == 1, bad
    assert "e.g. empty.jpg" in line
    with open(out / "pred.csv", newline="") as f:
        got = list(csv.reader(f))
    assert got[0] == ["filename", "label"]
    assert [r[0] for r in got[1:]] == [name for _, name, _ in rows if name in sizes]
    assert all(0 <= int(r[1]) < 4 for r in got[1:])
    assert (out / "foreign.txt").read_text() == "keep me" and (out / "old").is_dir()
    assert sorted(os.listdir(out)) == ["foreign.txt", "old", "pred.csv"]  # no temp file left


def test_hw1_2_sh_any_size_and_mode_skips_bad_images_and_keeps_other_files(ckpts, tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    out.mkdir()
    Image.fromarray(rgb_array(53, 37)).save(inp / "0001_sat.jpg")              # 37x53
    Image.fromarray(rgb_array(48, 64)).convert("L").save(inp / "0002_sat.jpg")  # gray 64x48
    Image.fromarray(rgb_array(20, 20)).convert("CMYK").save(inp / "0003_sat.jpg")
    gray16 = (np.asarray(Image.fromarray(rgb_array(16, 24)).convert("L"), np.uint16) * 257)
    Image.fromarray(gray16).save(inp / "0004_sat.jpg", format="PNG")  # decoded by content
    (inp / "0005_sat.jpg").write_bytes((inp / "0001_sat.jpg").read_bytes()[:200])
    Image.fromarray(rgb_array(8, 8)).save(inp / "0001_mask.png")  # ground truth: not an input
    (out / "foreign.txt").write_text("keep me")
    Image.fromarray(rgb_array(4, 4)).save(out / "9999_mask.png")  # not one of the inputs
    stale = (out / "9999_mask.png").read_bytes()

    proc = run_cli("hw1_2.sh", inp, out, HW1_P2_CHECKPOINT=ckpts / "p2.pth")
    assert_one_line_error(proc, "1 of 5 image(s) failed", "0005_sat.jpg",
                          f"the masks of the other 4 are in {out}")
    assert f"skipped: cannot read image {inp / '0005_sat.jpg'}" in proc.stderr
    for i, size in (("0001", (37, 53)), ("0002", (64, 48)), ("0003", (20, 20)),
                    ("0004", (24, 16))):
        mask = Image.open(out / f"{i}_mask.png")
        assert mask.mode == "RGB" and mask.size == size, i
        colours = {tuple(c) for c in np.asarray(mask).reshape(-1, 3)}
        assert colours <= {tuple(c) for c in PALETTE}
    assert (out / "foreign.txt").read_text() == "keep me"
    assert (out / "9999_mask.png").read_bytes() == stale
    assert sorted(os.listdir(out)) == ["0001_mask.png", "0002_mask.png", "0003_mask.png",
                                       "0004_mask.png", "9999_mask.png", "foreign.txt"]


def test_inference_clis_refuse_the_other_problems_checkpoint_in_one_line(ckpts, tmp_path):
    images = tmp_path / "images"
    write_odd_images(images)
    (tmp_path / "t.csv").write_text("id,filename,label\n0,gray.jpg,None\n")
    proc = run_cli("p1_inference.py", "--csv", tmp_path / "t.csv", "--image-dir", images,
                   "--output", tmp_path / "out" / "pred.csv",
                   "--checkpoint", ckpts / "byol_last.pth")
    assert_one_line_error(proc, ckpts / "byol_last.pth", "BYOL pre-training checkpoint",
                          "pass a best.pth of p1_finetune.py")
    assert not (tmp_path / "out" / "pred.csv").exists()

    Image.fromarray(rgb_array(8, 8)).save(images / "0001_sat.jpg")
    proc = run_cli("p2_inference.py", "--input-dir", images, "--output-dir", tmp_path / "p2",
                   "--checkpoint", ckpts / "p1_C.pth")
    assert_one_line_error(proc, ckpts / "p1_C.pth", "not a Problem 2 model",
                          "pass a best.pth of p2_train_fcn32s.py or p2_train_deeplabv3.py")
    assert list((tmp_path / "p2").iterdir()) == []


def test_inference_cli_mistakes_in_process(ckpts, tmp_path):
    """The remaining one-line errors of both inference scripts, without a process each."""
    images = tmp_path / "images"
    write_odd_images(images)
    (tmp_path / "t.csv").write_text("id,filename,label\n0,gray.jpg,None\n")
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")

    def p1(**kw):
        argv = {"--csv": tmp_path / "t.csv", "--image-dir": images,
                "--output": tmp_path / "o" / "pred.csv", "--checkpoint": ckpts / "p1_C.pth",
                "--device": "cpu"}
        argv.update({f"--{k.replace('_', '-')}": v for k, v in kw.items()})
        args = p1_inference.get_args_parser().parse_args(
            [str(x) for kv in argv.items() for x in kv])
        with pytest.raises(UserError) as e:
            p1_inference.main(args)
        return e

    one_line(p1(image_dir=tmp_path / "nope"), tmp_path / "nope", "does not exist")
    one_line(p1(csv=tmp_path / "nope.csv"), tmp_path / "nope.csv", "does not exist")
    one_line(p1(output=blocker / "pred.csv"), blocker, "is a file, not a folder", "--output")
    one_line(p1(output=tmp_path), tmp_path, "is a folder; pass the path of the csv file")
    one_line(p1(checkpoint=ckpts / "truncated.pth"), ckpts / "truncated.pth", "cannot be read")

    def p2(inp, out=tmp_path / "p2out", ckpt=ckpts / "p2.pth"):
        args = p2_inference.get_args_parser().parse_args(
            ["--input-dir", str(inp), "--output-dir", str(out), "--checkpoint", str(ckpt),
             "--device", "cpu"])
        with pytest.raises(UserError) as e:
            p2_inference.main(args)
        return e

    one_line(p2(tmp_path / "nope"), tmp_path / "nope", "does not exist")
    one_line(p2(images), images, "no *_sat.jpg images")  # a folder of other images
    Image.fromarray(rgb_array(8, 8)).save(images / "0001_sat.jpg")
    one_line(p2(images, out=blocker / "x"), blocker, "is a file, not a folder", "--output-dir")
    one_line(p2(images, ckpt=ckpts / "nope.pth"), ckpts / "nope.pth", "does not exist")


def test_setting_d_checkpoint_works_with_a_note(ckpts, tmp_path, capsys):
    images = tmp_path / "images"
    write_odd_images(images)
    (tmp_path / "t.csv").write_text("id,filename,label\n0,cmyk.jpg,None\n1,gray16.png,None\n")
    args = p1_inference.get_args_parser().parse_args(
        ["--csv", str(tmp_path / "t.csv"), "--image-dir", str(images), "--output",
         str(tmp_path / "pred.csv"), "--checkpoint", str(ckpts / "p1_D.pth"), "--device", "cpu"])
    p1_inference.main(args)
    assert "is a setting D checkpoint" in capsys.readouterr().err
    assert len((tmp_path / "pred.csv").read_text().splitlines()) == 3


def test_debug_variable_adds_the_traceback_and_keeps_the_last_line(tmp_path):
    argv = ("p2_evaluate.py", "-g", tmp_path / "nope", "-p", tmp_path)
    plain = run_cli(*argv)
    line = assert_one_line_error(plain, tmp_path / "nope")
    assert plain.stderr.strip() == line
    debug = run_cli(*argv, HW1_DEBUG=1)
    assert debug.returncode == 1 and last_line(debug) == line
    assert "HW1_DEBUG" in debug.stderr and 'File "' in debug.stderr
    assert "p2_evaluate.py" in debug.stderr  # the frame that raised


# ================================================================================ training
def test_training_scripts_refuse_a_used_folder_before_any_work(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "log.jsonl").write_text('{"epoch": 1}\n')
    (run / "A").mkdir()
    (run / "A" / "log.jsonl").write_text('{"epoch": 1}\n')
    # the data folders do not exist: the used folder must be caught first
    for argv in (["p1_finetune.py", "--setting", "A", "--data-dir", tmp_path / "none",
                  "--output-dir", run],
                 ["p2_train_fcn32s.py", "--data-dir", tmp_path / "none", "--output-dir", run,
                  "--no-pretrained"]):
        proc = run_cli(*argv)
        assert_one_line_error(proc, "already holds a run (log.jsonl)", "--resume",
                              "--overwrite")
    with pytest.raises(UserError, match="already holds a run"):
        p1_pretrain_byol.main(p1_pretrain_byol.get_args_parser().parse_args(
            ["--data-dir", str(tmp_path / "none"), "--output-dir", str(run), "--device", "cpu"]))
    assert (run / "log.jsonl").read_text() == '{"epoch": 1}\n'
    assert sorted(os.listdir(run)) == ["A", "log.jsonl"]  # not even args.json was written


def test_every_training_script_guards_its_folder_checks_the_loss_and_has_the_flags():
    for script in ("p1_pretrain_byol.py", "p1_finetune.py", "p2_engine.py"):
        text = (REPO / script).read_text()
        assert "prepare_output_dir" in text and "check_finite(" in text, script
        assert re.search(r"seed_everything\(args\.seed, [^)]*deterministic", text), script
    for module in (p1_pretrain_byol, p1_finetune, p2_train_deeplabv3):
        flags = {a for action in module.get_args_parser()._actions for a in action.option_strings}
        assert {"--resume", "--overwrite", "--seed", "--deterministic"} <= flags, module


@pytest.fixture(scope="module")
def p2_data(tmp_path_factory, samples_dir):
    root = tmp_path_factory.mktemp("p2_data")
    for split in ("train", "validation"):
        (root / split).mkdir()
        for i in SAMPLE_IDS:
            Image.open(samples_dir / f"{i}_sat.jpg").convert("RGB").resize((32, 32)).save(
                root / split / f"{i}_sat.jpg", quality=95)
            Image.open(samples_dir / f"{i}_mask.png").convert("RGB").resize(
                (32, 32), Image.NEAREST).save(root / split / f"{i}_mask.png")
    return root


@pytest.fixture
def restore_determinism():
    yield
    torch.use_deterministic_algorithms(False)


def test_a_nan_loss_stops_the_run_before_it_saves(p2_data, tmp_path, restore_determinism):
    with pytest.raises(UserError) as e:
        p2_train_deeplabv3.main(p2_train_deeplabv3.get_args_parser().parse_args(
            ["--data-dir", str(p2_data), "--output-dir", str(tmp_path / "run"), *TINY_P2,
             "--optimizer", "sgd", "--lr", "1e30"]))
    one_line(e, "loss became nan at epoch 1", "lower --lr")
    assert not (tmp_path / "run" / "last.pth").exists()
    assert not (tmp_path / "run" / "log.jsonl").exists()
    with pytest.raises(UserError, match="loss became inf at epoch 3, step 7"):
        training.check_finite(float("inf"), 3, 7)
    training.check_finite(1.5, 1, 1)


def test_deterministic_runs_give_bit_identical_weights(p2_data, tmp_path, restore_determinism):
    states = []
    for k in range(2):
        p2_train_deeplabv3.main(p2_train_deeplabv3.get_args_parser().parse_args(
            ["--data-dir", str(p2_data), "--output-dir", str(tmp_path / f"run{k}"), *TINY_P2,
             "--seed", "3", "--deterministic"]))
        assert torch.are_deterministic_algorithms_enabled()
        states.append(utils.load_checkpoint(tmp_path / f"run{k}" / "last.pth")["model"])
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    # and training did move the weights: the runs are equal, not two copies of the init
    torch.manual_seed(3)
    init = p2_common.build_deeplabv3({"arch": "mobilenet_v3_large", "pretrained": False,
                                      "aux_weight": 0.0},  # the recipe's: no aux head
                                     load_pretrained=False)
    moved = [k for k, v in init.named_parameters() if not torch.equal(states[0][k], v)]
    assert len(moved) > 0.9 * len(list(init.parameters()))
    # a later plain run switches deterministic kernels off again
    utils.seed_everything(0)
    assert not torch.are_deterministic_algorithms_enabled()
