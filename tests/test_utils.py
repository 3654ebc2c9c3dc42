"""Foundation tests: mask codec, mIoU, scorer, data readers, image bank, augmentation,
checkpoints. All on CPU, on the four real satellite pairs and tiny generated files."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

import augment
import data
import errors
import metrics
import p2_evaluate
import records
import training
import utils

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "tests" / "data"
SAMPLE_IDS = ("0008", "0097", "0107", "0128")
# class pixel counts of the real samples, from tests/data/SOURCES.md
SAMPLE_COUNTS = {
    "0008": {"Water": 64849, "Rangeland": 80787, "Agriculture": 116508},
    "0097": {"Water": 7522, "Forest": 167706, "Urban": 1856, "Rangeland": 20023,
             "Agriculture": 65037},
    "0107": {"Water": 1961, "Urban": 129904, "Rangeland": 110004, "Barren": 20275},
    "0128": {"Water": 2032, "Forest": 170825, "Urban": 1475, "Rangeland": 24525,
             "Agriculture": 63287},
}


# --------------------------------------------------------------------------------- mask codec
@pytest.mark.parametrize("mask_id", SAMPLE_IDS)
def test_codec_on_real_masks_matches_published_counts(mask_id):
    classes = data.read_mask(SAMPLES / f"{mask_id}_mask.png")
    assert classes.shape == (512, 512)
    values, counts = np.unique(classes, return_counts=True)
    got = {data.CLASS_NAMES[v]: int(c) for v, c in zip(values, counts)}
    assert got == SAMPLE_COUNTS[mask_id]


def test_codec_thresholds_each_channel_at_128_and_red_is_unknown():
    rgb = np.array([[[0, 255, 255], [127, 128, 200], [255, 200, 0], [200, 10, 130],
                     [10, 250, 5], [0, 0, 128], [130, 129, 128], [40, 40, 40], [255, 0, 0]]],
                   dtype=np.uint8)
    # cyan, noisy cyan, yellow, noisy magenta, green, blue, white at threshold, black, red
    assert data.mask_to_classes(rgb).tolist() == [[0, 0, 1, 2, 3, 4, 5, 6, 6]]


def test_palette_round_trip_through_png(tmp_path):
    classes = np.arange(7, dtype=np.uint8).repeat(3).reshape(3, 7)
    data.write_mask(tmp_path / "0001_mask.png", classes)
    rgb = np.asarray(Image.open(tmp_path / "0001_mask.png"))
    assert rgb.dtype == np.uint8 and rgb.shape == (3, 7, 3)
    assert {tuple(p) for p in rgb.reshape(-1, 3)} == {tuple(p) for p in data.PALETTE}
    assert np.array_equal(data.read_mask(tmp_path / "0001_mask.png"), classes)


# --------------------------------------------------------------------------------- mIoU
def test_confusion_matrix_iou_by_hand():
    # truth:  0 0 1 1 6 6 2
    # pred :  0 1 1 1 0 3 3
    cm = metrics.ConfusionMatrix().update(torch.tensor([0, 0, 1, 1, 6, 6, 2]),
                                        torch.tensor([0, 1, 1, 1, 0, 3, 3]))
    iou = cm.iou()
    # class 0: TP 1, FP 1 (the Unknown pixel), FN 1 -> 1/3
    # class 1: TP 2, FP 1, FN 0 -> 2/3;  class 2: TP 0, FN 1 -> 0
    # class 3: TP 0, FP 2 (Unknown and class-2 pixels) -> 0;  classes 4, 5 absent -> NaN
    assert iou[:4].tolist() == pytest.approx([1 / 3, 2 / 3, 0.0, 0.0])
    assert np.isnan(iou[4]) and np.isnan(iou[5])
    assert cm.miou() == pytest.approx((1 / 3 + 2 / 3 + 0 + 0) / 4)
    assert cm.per_class()["Water"] is None


def test_confusion_matrix_counts_the_same_in_numpy_and_on_a_torch_device():
    rng = np.random.default_rng(0)
    truth = rng.integers(-1, 8, size=(3, 17, 19))  # -1 and 7: outside 0..6, not counted
    guess = rng.integers(0, 9, size=(3, 17, 19))
    host = metrics.ConfusionMatrix()
    device = metrics.ConfusionMatrix(device="cpu")
    for t, p in zip(truth, guess):
        host.update(t, p)
        device.update(torch.from_numpy(t), torch.from_numpy(p))
    assert isinstance(host.mat, np.ndarray) and isinstance(device.mat, torch.Tensor)
    ok = (truth >= 0) & (truth < 7) & (guess < 7)
    expected = np.zeros((7, 7), np.int64)
    np.add.at(expected, (truth[ok], guess[ok]), 1)
    assert np.array_equal(host.mat, expected) and np.array_equal(device.mat.numpy(), expected)
    assert np.array_equal(host.iou(), device.iou(), equal_nan=True)
    assert host.pixel_accuracy() == device.pixel_accuracy() == pytest.approx(
        np.trace(expected) / expected.sum())
    host.reset()
    device.reset()
    assert not host.mat.any() and not device.mat.any()


def test_the_scorer_starts_without_torch(repo_root):
    """p2_evaluate.py (and the data and metrics modules it reads masks with) import no torch:
    the scorer starts in well under a second."""
    code = ("import sys, p2_evaluate; print(sorted(m for m in sys.modules "
            "if m.split('.')[0] in ('torch', 'torchvision')))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=repo_root, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_confusion_matrix_sums_over_images_not_per_image_mean():
    cm = metrics.ConfusionMatrix()
    cm.update(torch.zeros(4, dtype=torch.long), torch.zeros(4, dtype=torch.long))  # IoU_0 = 1
    cm.update(torch.tensor([0]), torch.tensor([5]))  # IoU_0 = 0 on this image alone
    # over all pixels: TP 4, FN 1 -> 0.8 (a per-image mean would give 0.5)
    assert cm.iou()[0].item() == pytest.approx(0.8)


# --------------------------------------------------------------------------------- scorer
def _copy_masks(dst, ids=SAMPLE_IDS):
    dst.mkdir(parents=True, exist_ok=True)
    for i in ids:
        shutil.copy(SAMPLES / f"{i}_mask.png", dst / f"{i}_mask.png")
    return dst


def test_evaluate_perfect_prediction_is_one(tmp_path):
    pred = _copy_masks(tmp_path / "pred")
    cm, n = p2_evaluate.evaluate(SAMPLES, pred)
    assert n == 4 and cm.miou() == 1.0


def test_evaluate_known_corruption_by_hand(tmp_path, capsys):
    pred = _copy_masks(tmp_path / "pred")
    # in 0008 every Water pixel is predicted Agriculture
    classes = data.read_mask(SAMPLES / "0008_mask.png")
    classes[classes == 4] = 1
    data.write_mask(pred / "0008_mask.png", classes)
    water = 11515 / (11515 + 64849)  # TP = water of 0097, 0107, 0128; FN = water of 0008
    agri = 244832 / (244832 + 64849)  # TP = all agriculture; FP = the relabelled water
    expected = (1 + agri + 1 + 1 + water + 1) / 6
    miou = p2_evaluate.main(p2_evaluate.get_args_parser().parse_args(
        ["-g", str(SAMPLES), "-p", str(pred)]))
    assert miou == pytest.approx(expected, abs=1e-12)
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1] == f"mean_iou: {expected:.6f}"
    assert out[4] == f"class #4 (Water) : {water:.5f}"


def test_evaluate_names_missing_and_extra_predictions(tmp_path):
    pred = _copy_masks(tmp_path / "pred", SAMPLE_IDS[:3])
    with pytest.raises(SystemExit, match="0128_mask.png"):
        p2_evaluate.evaluate(SAMPLES, pred)
    _copy_masks(pred, SAMPLE_IDS)
    shutil.copy(SAMPLES / "0008_mask.png", pred / "9999_mask.png")
    with pytest.raises(SystemExit, match="9999_mask.png"):
        p2_evaluate.evaluate(SAMPLES, pred)


def test_evaluate_cli_exits_with_one_line_on_missing_folder(tmp_path):
    proc = subprocess.run([sys.executable, "p2_evaluate.py", "-g", str(SAMPLES), "-p",
                           str(tmp_path / "nope")], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"error: prediction folder {tmp_path / 'nope'} does not exist; pass the folder of its "
        "xxxx_mask.png files"]


# --------------------------------------------------------------------------------- data sets
def test_read_office_test_csv_with_none_labels(tmp_path):
    (tmp_path / "img").mkdir()
    for name in ("0000.jpg", "0001.jpg"):
        Image.new("RGB", (5, 4)).save(tmp_path / "img" / name)
    csv = tmp_path / "test.csv"
    csv.write_text("id,filename,label\n0,0000.jpg,None\n1,0001.jpg,\n")
    rows = data.read_office_csv(csv, tmp_path / "img", require_labels=False)
    assert [(r["id"], r["filename"], r["label"]) for r in rows] == [("0", "0000.jpg", -1),
                                                                   ("1", "0001.jpg", -1)]
    with pytest.raises(SystemExit, match="no label"):
        data.read_office_csv(csv, tmp_path / "img", require_labels=True)
    csv.write_text("id,filename,label\n0,13_15.jpg,13\n")
    with pytest.raises(SystemExit, match="13_15.jpg"):
        data.read_office_csv(csv, tmp_path / "img")
    csv.write_text("id,label\n0,13\n")
    with pytest.raises(SystemExit, match="expected id,filename,label"):
        data.read_office_csv(csv)


def test_sat_pairs_by_id_and_unpaired_error(tmp_path):
    for i in ("0002", "0001"):
        Image.new("RGB", (4, 4)).save(tmp_path / f"{i}_sat.jpg")
        Image.new("RGB", (4, 4)).save(tmp_path / f"{i}_mask.png")
    pairs = data.list_sat_pairs(tmp_path)
    assert [(i, s.name, m.name) for i, s, m in pairs] == [
        ("0001", "0001_sat.jpg", "0001_mask.png"), ("0002", "0002_sat.jpg", "0002_mask.png")]
    Image.new("RGB", (4, 4)).save(tmp_path / "0003_sat.jpg")
    with pytest.raises(SystemExit, match="0003_sat.jpg has no partner 0003_mask.png"):
        data.list_sat_pairs(tmp_path)
    assert len(data.list_sat_pairs(tmp_path, require_masks=False)) == 3


# --------------------------------------------------------------------------------- image bank
def test_image_bank_decodes_resizes_and_reuses_its_cache(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    paths = []
    for i, (w, h) in enumerate([(20, 10), (12, 12), (7, 30)]):
        arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(arr).save(paths[-1])
    with pytest.raises(SystemExit, match="different sizes"):
        data.ImageBank.from_paths(paths)
    bank = data.ImageBank.from_paths(paths, size=8, cache_dir=tmp_path / "cache")
    assert bank.images.shape == (3, 3, 8, 8) and bank.images.dtype == torch.uint8
    expected = np.asarray(Image.open(paths[2]).convert("RGB").resize((8, 8), Image.BILINEAR))
    assert np.array_equal(bank.images[2].permute(1, 2, 0).numpy(), expected)
    assert len(list((tmp_path / "cache").glob("bank-image-*.npy"))) == 1

    # the second load must come from the cache: decoding now fails loudly
    monkeypatch.setattr(data, "_decode", lambda *a: (_ for _ in ()).throw(AssertionError))
    again = data.ImageBank.from_paths(paths, size=8, cache_dir=tmp_path / "cache")
    assert torch.equal(again.images, bank.images)
    batch = again.batch(torch.tensor([2, 0]))
    assert torch.equal(batch[0], bank.images[2])


def test_mask_bank_holds_class_indices():
    bank = data.ImageBank.from_paths([SAMPLES / "0107_mask.png"], kind="mask")
    assert bank.images.shape == (1, 512, 512)
    assert int((bank.images == 0).sum()) == 129904  # Urban pixels of 0107


# --------------------------------------------------------------------------------- augmentation
def test_classification_augment_draws_per_sample():
    torch.manual_seed(0)
    same = torch.randint(0, 256, (1, 3, 40, 40), dtype=torch.uint8).repeat(8, 1, 1, 1)
    aug = augment.ClassificationAugment(size=32, p_jitter=0.8, jitter=(0.4, 0.4, 0.2, 0.1),
                                      p_gray=0.2, p_blur=0.5, p_solarize=0.2)
    out = aug(same)
    assert out.shape == (8, 3, 32, 32)
    flat = out.flatten(1)
    # eight copies of one image give eight different views
    assert torch.cdist(flat, flat).add(torch.eye(8) * 1e9).min() > 1e-3
    ev = augment.ClassificationAugment(size=32, train=False)(same)
    assert torch.allclose(ev[0], ev[7])


def test_segmentation_augment_is_joint_and_exact():
    torch.manual_seed(1)
    x = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8)
    m = torch.randint(0, 7, (6, 8, 8), dtype=torch.uint8)
    img, mask = augment.SegmentationAugment(min_scale=1.0)(x, m)
    xf = augment.normalize(augment.to_float(x))
    seen = set()
    for i in range(6):
        # with no crop, each output is one of the 8 flips/rotations of its input,
        # the SAME one for image and mask
        found = [k for k in range(8)
                 if torch.equal(mask[i], _dihedral(m[i], k).long())
                 and torch.allclose(img[i], _dihedral(xf[i], k), atol=1e-5)]
        assert found
        seen.add(found[0])
    assert len(seen) > 1


def _dihedral(a, k):
    r = torch.rot90(a, k // 2, (-2, -1))
    return r.flip(-1) if k % 2 else r


def test_gaussian_blur_per_sample_sigma():
    x = torch.zeros(2, 1, 21, 21)  # wide enough that the reflected border stays zero
    x[:, :, 10, 10] = 1.0
    y = augment.gaussian_blur(x, torch.tensor([0.5, 2.0]), kernel_size=9)
    assert y.sum((1, 2, 3)).tolist() == pytest.approx([1.0, 1.0], abs=1e-5)
    assert y[0, 0, 10, 10] > y[1, 0, 10, 10]  # the narrower kernel keeps more in the centre
    t = torch.arange(-4, 5, dtype=torch.float32)
    k = torch.exp(-t ** 2 / 8)
    k = k / k.sum()
    assert y[1, 0, 10, 10].item() == pytest.approx((k[4] * k[4]).item(), rel=1e-5)


# --------------------------------------------------------------------------------- checkpoints
def test_checkpoint_round_trip_and_failed_save_keeps_the_old_one(tmp_path, monkeypatch):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    path = tmp_path / "ckpt.pth"
    utils.save_checkpoint(path, model, opt, kind="byol", epoch=3, best_metric=0.5,
                          args={"lr": 1e-3})
    ckpt = utils.load_checkpoint(path)
    assert ckpt["epoch"] == 3 and ckpt["best_metric"] == 0.5 and ckpt["args"] == {"lr": 1e-3}
    assert torch.equal(ckpt["model"]["weight"], model.weight)
    assert ckpt["optimizer"]["state"][0]["step"] == 1

    real_save = torch.save

    def crash_midway(obj, f):
        real_save(obj, f)
        f.truncate(10)
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash_midway)
    with pytest.raises(KeyboardInterrupt):
        utils.save_checkpoint(path, model, opt, kind="byol", epoch=4)
    monkeypatch.undo()
    assert utils.load_checkpoint(path)["epoch"] == 3
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pth"]  # no temp file left behind


def test_a_kept_epoch_that_is_the_best_is_a_second_name_for_best_pth(tmp_path, monkeypatch):
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ckpts = training.Checkpoints(tmp_path, {"lr": 0.1}, "byol", model, opt, None, "acc")
    weights = {}
    for epoch, acc in ((1, 0.5), (2, 0.7), (3, 0.6)):
        with torch.no_grad():
            model.weight.fill_(epoch)
        weights[epoch] = model.weight.detach().clone()
        assert ckpts.end_epoch(epoch, {"epoch": epoch, "acc": acc}, keep=True) == (acc != 0.6)
        if epoch == 1:  # best and kept: one file under two names, no second write
            assert (tmp_path / "epoch_001.pth").samefile(tmp_path / "best.pth")
    # best.pth was replaced at epoch 2 (a new file), so epoch_001.pth still holds epoch 1
    for name, epoch, best_epoch in (("epoch_001.pth", 1, 1), ("epoch_002.pth", 2, 2),
                                    ("best.pth", 2, 2), ("epoch_003.pth", 3, 2),
                                    ("last.pth", 3, 2)):
        ckpt = utils.load_checkpoint(tmp_path / name)
        assert (ckpt["epoch"], ckpt["best_epoch"]) == (epoch, best_epoch), name
        assert torch.equal(ckpt["model"]["weight"], weights[epoch]), name
    assert not (tmp_path / "epoch_003.pth").samefile(tmp_path / "best.pth")
    assert sorted(p.name for p in tmp_path.iterdir()) == [  # no temp file left behind
        "best.pth", "epoch_001.pth", "epoch_002.pth", "epoch_003.pth", "last.pth", "log.jsonl"]

    # a file system without hard links: the same bytes, copied
    def no_links(src, dst):
        raise OSError("hard links not supported")

    monkeypatch.setattr(os, "link", no_links)
    records.atomic_link(tmp_path / "best.pth", tmp_path / "copy.pth")
    assert (tmp_path / "copy.pth").read_bytes() == (tmp_path / "best.pth").read_bytes()
    assert not (tmp_path / "copy.pth").samefile(tmp_path / "best.pth")


def test_load_checkpoint_errors_name_the_file(tmp_path):
    with pytest.raises(SystemExit, match=r"nope.pth does not exist; check the path"):
        utils.load_checkpoint(tmp_path / "nope.pth")
    (tmp_path / "bad.pth").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(SystemExit, match="bad.pth cannot be read"):
        utils.load_checkpoint(tmp_path / "bad.pth")


def test_every_checkpoint_records_its_kind_and_loaders_name_a_wrong_one(tmp_path):
    model = torch.nn.Linear(2, 2)
    utils.save_checkpoint(tmp_path / "byol.pth", model, kind="byol", epoch=1)
    ckpt = utils.load_checkpoint(tmp_path / "byol.pth", kind="byol")
    assert set(ckpt) == {"kind", "model", "optimizer", "scheduler", "scaler", "epoch",
                         "best_metric", "best_epoch", "args"} and ckpt["kind"] == "byol"
    with pytest.raises(SystemExit) as e:
        utils.load_checkpoint(tmp_path / "byol.pth", kind="p2_segmenter")
    assert str(e.value) == (
        f"error: {tmp_path / 'byol.pth'} is a BYOL pre-training checkpoint of "
        "p1_pretrain_byol.py, not a Problem 2 model of p2_train_fcn32s.py or "
        "p2_train_deeplabv3.py; pass a best.pth of p2_train_fcn32s.py or p2_train_deeplabv3.py "
        "(e.g. checkpoints/p2_B.pth)")
    torch.save(model.state_dict(), tmp_path / "bare.pth")
    with pytest.raises(SystemExit, match=r"bare.pth is a bare state_dict .* not a Problem 1 "):
        utils.load_checkpoint(tmp_path / "bare.pth", kind="p1_classifier", expect_keys=())
    with pytest.raises(ValueError, match="unknown checkpoint kind"):
        utils.save_checkpoint(tmp_path / "x.pth", model, kind="p3")


def test_build_loaded_is_a_plain_build_and_load_without_the_random_start():
    class Net(torch.nn.Module):
        def __init__(self, persistent=True):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)
            self.bn = torch.nn.BatchNorm2d(4)
            self.register_buffer("scale", torch.full((4,), 2.0), persistent=persistent)

        def forward(self, x):
            return self.bn(self.conv(x)) * self.scale.view(1, -1, 1, 1)

    torch.manual_seed(0)
    trained = Net()
    trained.bn.running_mean.uniform_()
    state = {k: v.clone() for k, v in trained.state_dict().items()}
    state["conv.weight"] = state["conv.weight"].bfloat16()  # a file may hold another precision
    plain = Net()
    plain.load_state_dict(state)
    built = utils.build_loaded(Net, state)
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(built.eval()(x), plain.eval()(x))
    assert built.conv.weight.dtype == torch.float32 and built.conv.weight.requires_grad
    assert built.bn.num_batches_tracked.dtype == torch.int64
    assert all(not t.is_meta for t in [*built.parameters(), *built.buffers()])
    with pytest.raises(RuntimeError, match="Missing key.*bn.running_var"):
        utils.build_loaded(Net, {k: v for k, v in state.items() if k != "bn.running_var"})
    with pytest.raises(RuntimeError, match="size mismatch for conv.bias"):
        utils.build_loaded(Net, {**state, "conv.bias": torch.zeros(5)})
    # a buffer no state_dict holds would stay without a value: refused, not left on "meta"
    with pytest.raises(RuntimeError, match="no value for scale"):
        utils.build_loaded(lambda: Net(persistent=False),
                           {k: v for k, v in state.items() if k != "scale"})


def test_load_resnet_weights_reports_missing_and_unexpected(tmp_path, capsys):
    src = torchvision.models.resnet18(weights=None)
    state = {f"module.{k}": v for k, v in src.state_dict().items()}
    del state["module.layer1.0.conv1.weight"]
    state["module.extra.weight"] = torch.zeros(1)
    dst = torchvision.models.resnet18(weights=None)
    missing, unexpected = utils.load_resnet_weights(dst, state)
    assert missing == ["layer1.0.conv1.weight"] and unexpected == ["extra.weight"]
    assert torch.equal(dst.layer4[1].bn2.running_var, src.layer4[1].bn2.running_var)
    assert "missing 1" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="wrong shape"):
        utils.load_resnet_weights(torchvision.models.resnet50(weights=None), src.state_dict())


def test_resume_run_without_last_checkpoint_keeps_the_best_metric(tmp_path, capsys):
    (tmp_path / "log.jsonl").write_text('{"epoch": 1}\n')
    model = torch.nn.Linear(2, 2)
    assert training.resume_run(tmp_path, model, kind="p2_segmenter",
                               best_metric=0.25) == (1, 0.25, 0)
    assert (tmp_path / "log.jsonl").read_text() == ""  # nothing of the lost run is kept
    assert "starting at epoch 1" in capsys.readouterr().out
    utils.save_checkpoint(tmp_path / "last.pth", model, kind="p2_segmenter", epoch=3,
                          best_metric=0.5, best_epoch=2, args={"model_name": "fcn32s"})
    assert training.resume_run(tmp_path, model, kind="p2_segmenter",
                               best_metric=0.25) == (4, 0.5, 2)
    with pytest.raises(SystemExit, match="model_name=fcn32s, not deeplabv3"):
        training.resume_run(tmp_path, model, kind="p2_segmenter",
                            expect={"model_name": "deeplabv3"})


def test_make_optimizer_decays_weights_only_and_keeps_group_lrs():
    torch.manual_seed(0)
    head, body = torch.nn.Linear(3, 2), torch.nn.Sequential(torch.nn.Conv2d(3, 3, 1),
                                                            torch.nn.BatchNorm2d(3))
    body[0].bias.requires_grad_(False)  # frozen: left out
    opt = training.make_optimizer([{"params": head.parameters(), "lr": 0.5},
                                {"params": body.parameters(), "lr": 0.05}],
                               "adamw", 1.0, 0.1, "cpu")
    got = [(g["lr"], g["weight_decay"], [tuple(p.shape) for p in g["params"]])
           for g in opt.param_groups]
    assert got == [(0.5, 0.1, [(2, 3)]), (0.5, 0.0, [(2,)]),
                   (0.05, 0.1, [(3, 3, 1, 1)]), (0.05, 0.0, [(3,), (3,)])]
    # with zero gradients AdamW's only change is the decoupled decay: w <- w (1 - lr wd)
    w0, b0 = head.weight.detach().clone(), head.bias.detach().clone()
    for p in (*head.parameters(), body[0].weight, *body[1].parameters()):
        p.grad = torch.zeros_like(p)
    opt.step()
    torch.testing.assert_close(head.weight.detach(), w0 * (1 - 0.5 * 0.1))
    assert torch.equal(head.bias.detach(), b0)
    sgd = training.make_optimizer(head.parameters(), "sgd", 0.1, 1e-4, "cpu", nesterov=True)
    assert [g["nesterov"] and g["momentum"] for g in sgd.param_groups] == [0.9, 0.9]
    with pytest.raises(ValueError, match="unknown optimizer"):
        training.make_optimizer(head.parameters(), "lamb", 0.1, 0.0, "cpu")


def test_rotation_uncovers_black_corners_and_the_shift_reflects():
    torch.manual_seed(0)
    white = torch.full((8, 3, 32, 32), 255, dtype=torch.uint8)
    black = -torch.tensor(augment.IMAGENET_MEAN) / torch.tensor(augment.IMAGENET_STD)  # (3,)
    rotated = augment.ClassificationAugment(32, scale=(1.0, 1.0), ratio=(1.0, 1.0), p_jitter=0.0,
                                            degrees=15.0)(white)
    is_black = (rotated - black.view(1, 3, 1, 1)).abs().amax(1) < 1e-4  # (8, 32, 32)
    assert is_black[:, 0, 0].sum() + is_black[:, -1, -1].sum() > 0  # some corner turned black
    assert not is_black[:, 16, 16].any()  # the centre stays white
    shifted = augment.ClassificationAugment(32, scale=(1.0, 1.0), ratio=(1.0, 1.0),
                                            p_jitter=0.0, translate=4 / 32)(white)
    torch.testing.assert_close(shifted, augment.normalize(torch.ones(8, 3, 32, 32)))  # reflected


def test_live_curves_redraw_after_the_interval_and_on_leaving_except_after_a_crash(
        tmp_path, monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(records.time, "monotonic", lambda: clock[0])
    log, png = tmp_path / "log.jsonl", tmp_path / "curves.png"

    def epoch(curves, n, seconds):
        records.append_jsonl(log, {"epoch": n, "loss": 1.0 / n})
        clock[0] += seconds
        return curves.epoch_done()

    with records.LiveCurves(log, png, ["loss"], every=30.0) as curves:
        assert epoch(curves, 1, 10) is None and not png.exists()  # 10 s after the start
        assert epoch(curves, 2, 25) == png and png.stat().st_size > 0  # 35 s after the start
        drawn = png.read_bytes()
        assert epoch(curves, 3, 29) is None and png.read_bytes() == drawn  # 29 s after it
        assert epoch(curves, 4, 30) == png  # 30 s after the last drawing
        drawn = png.read_bytes()
        assert epoch(curves, 5, 1) is None and png.read_bytes() == drawn
    with_five = png.read_bytes()
    assert with_five != drawn  # the run's end drew epoch 5

    def run(error):
        with records.LiveCurves(log, png, ["loss"], every=30.0) as curves:
            epoch(curves, 6, 1)
            raise error

    with pytest.raises(SystemExit):  # a clean stop (signal, UserError): the epochs are drawn
        run(SystemExit(143))
    assert png.read_bytes() != with_five
    png.unlink()
    with pytest.raises(RuntimeError):  # a crash: nothing more, its own error stays the last
        run(RuntimeError("boom"))
    assert not png.exists()
    with records.LiveCurves(log, png, ["loss"]):  # no epoch done: nothing to draw
        pass
    assert not png.exists()


def test_micro_batches_halve_after_out_of_memory_and_redo_the_step(capsys):
    """--micro-batch auto on CUDA: a step that runs out of memory is redone in halves, with one
    line that says so, and gives the gradient of the whole batch; an explicit size that runs
    out of memory, or one image, is a one-line error. (Out of memory is simulated here: any
    forward of more than 2 rows raises it.)"""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    x, y = torch.randn(8, 3), torch.randn(8, 1)

    def step(micro):
        optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
        sizes = []

        def loss_of(start, stop):
            if stop - start > 2:
                raise torch.cuda.OutOfMemoryError("simulated")
            sizes.append(stop - start)
            return ((model(x[start:stop]) - y[start:stop]) ** 2).sum() / len(x), None

        training.optimizer_step(model, optimizer, len(x), loss_of, micro)
        return sizes, model.weight.grad.clone()

    micro = training.MicroBatch("auto", "cpu")
    micro.halve_on_oom = True  # as on CUDA
    sizes, grad = step(micro)
    assert sizes == [2, 2, 2, 2] and micro.size == 2
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["CUDA out of memory at a micro-batch of 8: redoing the step in "
                     "micro-batches of 4 (the gradients add up to the same step)",
                     "CUDA out of memory at a micro-batch of 4: redoing the step in "
                     "micro-batches of 2 (the gradients add up to the same step)"]
    model.zero_grad()
    ((model(x) - y) ** 2).mean().backward()
    torch.testing.assert_close(grad, model.weight.grad)
    with pytest.raises(errors.UserError, match="out of memory with micro-batches of 4"):
        step(training.MicroBatch("4", "cuda"))  # an explicit size is not changed
    with pytest.raises(errors.UserError, match="--micro-batch 'x' must be auto or a whole"):
        training.MicroBatch("x")


def test_autocast_is_bf16_from_compute_capability_8_and_fp16_with_a_scaler_before(monkeypatch):
    """T4, V100, RTX 20xx (compute capability 7.x) run bf16 convolutions without cuDNN: those
    cards get fp16 autocast and a GradScaler; 8.0 and later bf16 and no scaler; the CPU fp32.
    The first lines of a run name the choice."""
    scalers = []
    monkeypatch.setattr(torch.amp, "GradScaler",
                        lambda device, enabled=True: scalers.append((device, enabled)))
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    for capability, dtype in (((7, 5), torch.float16), ((8, 0), torch.bfloat16),
                              ((9, 0), torch.bfloat16)):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: capability)
        assert utils.amp_dtype(cuda) is dtype
        assert utils.autocast(cuda).fast_dtype is dtype
        utils.grad_scaler(cuda)
        utils.grad_scaler(cuda, enabled=False)
        assert scalers[-2:] == [("cuda", dtype is torch.float16), ("cuda", False)]
    assert utils.precision_name(cuda) == "bf16 autocast (compute capability 9.0)"
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: (7, 5))
    assert utils.precision_name(cuda).startswith("fp16 autocast + GradScaler (compute "
                                                 "capability 7.5")
    assert utils.precision_name(cuda, enabled=False) == "fp32 (--no-amp)"
    assert utils.amp_dtype(cpu) is None and utils.precision_name(cpu) == "fp32"
    utils.grad_scaler(cpu)
    assert scalers[-1] == ("cuda", False)


def test_a_resume_on_another_card_starts_an_empty_saved_scaler_afresh(tmp_path, monkeypatch):
    """A run saved where no GradScaler ran (bf16 card, CPU: an empty state) resumes on an fp16
    card, whose enabled scaler would refuse an empty state; a saved state is restored."""
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loaded = []

    class Scaler:
        def state_dict(self):
            return {}

        def load_state_dict(self, state):
            if not state:
                raise RuntimeError("The source state dict is empty")
            loaded.append(state)

    args = {"epochs": 2}
    ckpts = training.Checkpoints(tmp_path, args, "p1_classifier", model, optimizer, None,
                                 "val_acc", scaler=Scaler())
    ckpts.end_epoch(1, {"epoch": 1, "val_acc": 0.5})
    assert ckpts.resume() == 2 and loaded == []
    saved = utils.load_checkpoint(tmp_path / "last.pth")
    saved["scaler"] = {"scale": 1024.0}
    torch.save(saved, tmp_path / "last.pth")
    assert ckpts.resume() == 2 and loaded == [{"scale": 1024.0}]
