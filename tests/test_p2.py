"""Problem 2 training and inference: FCN32s geometry, losses, schedule, the shared training loop
(run, resume), inference and the grading script. CPU only, random init (--no-pretrained), on
the four real satellite samples shrunk to 64 px; the small DeepLabV3-MobileNetV3 stands in for
the big networks wherever a whole run is needed."""

import argparse
import os
import re
import subprocess
import sys
import urllib.error

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
import torchvision.models._api as tv_api
from PIL import Image

import augment
import p2_common
import p2_engine
import p2_evaluate
import p2_inference
import p2_train_deeplabv3
import training
from data import PALETTE
from errors import UserError
from records import read_jsonl
from training import lr_multiplier
from utils import load_checkpoint, save_checkpoint

SAMPLE_IDS = ("0008", "0097", "0107", "0128")
VAL_IDS = ("0013", "0062", "0104", "0107")  # the samples renamed so the snapshot ids exist
SMALL = ["--arch", "mobilenet_v3_large", "--no-pretrained", "--batch-size", "2",
         "--image-size", "32", "--eval-batch-size", "4", "--workers", "2", "--seed", "0",
         "--device", "cpu"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These tensors are tiny: a second thread gains little, and on a shared 2-core machine
    OpenMP's waiting threads made this file 5x slower (114 s with 2 threads, 20 s with 1)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def shrink(src, dst, size, mask=False):
    image = Image.open(src).convert("RGB")
    image = image.resize(size, Image.NEAREST if mask else Image.BILINEAR)
    image.save(dst, **({} if mask else {"quality": 95}))


def shrink_pairs(samples_dir, folder, size, ids=SAMPLE_IDS, names=None):
    """Write the samples `ids` (sat + mask) shrunk to size x size into `folder` (created), each
    under its name from `names` (default: its own id)."""
    folder.mkdir(parents=True, exist_ok=True)
    for src, dst in zip(ids, names or ids):
        shrink(samples_dir / f"{src}_sat.jpg", folder / f"{dst}_sat.jpg", (size, size))
        shrink(samples_dir / f"{src}_mask.png", folder / f"{dst}_mask.png", (size, size),
               mask=True)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory, samples_dir):
    """p2_data layout with the real samples at 64 px: train/ as they are, validation/ renamed."""
    root = tmp_path_factory.mktemp("p2_data")
    shrink_pairs(samples_dir, root / "train", 64)
    shrink_pairs(samples_dir, root / "validation", 64, names=VAL_IDS)
    return root


def deeplab_args(*argv):
    return p2_train_deeplabv3.get_args_parser().parse_args([*argv])


# ------------------------------------------------------------------------------ FCN32s geometry
@pytest.fixture(scope="module")
def fcn():
    # built the way inference rebuilds a checkpoint's model: no download, from args alone
    return p2_common.build_fcn32s({"model_name": "fcn32s"}, load_pretrained=False).eval()


@pytest.mark.parametrize("hw", [(64, 64), (96, 96), (512, 512), (75, 100), (33, 47)])
def test_fcn32s_output_has_input_size(fcn, hw):
    with torch.no_grad():
        out = fcn(torch.randn(1, 3, *hw))
    assert out.shape == (1, 7, *hw)


def test_fcn32s_cpu_fc6_is_the_convolution(fcn):
    torch.manual_seed(0)
    f = torch.randn(2, 512, 3, 5)
    with torch.no_grad():
        torch.testing.assert_close(fcn.apply_fc6(f), fcn.fc6(f), rtol=1e-4, atol=1e-4)


def test_fcn32s_upsampling_is_bilinear_at_init(fcn):
    w = fcn.upscore.weight  # (7, 7, 64, 64): one bilinear filter per class, nothing across
    assert w.shape == (7, 7, 64, 64) and fcn.upscore.stride == (32, 32)
    k1 = 1 - np.abs(np.arange(64) - 31.5) / 32  # 1D bilinear taps, factor 32
    assert k1[0] == pytest.approx(1 / 64) and k1[31] == pytest.approx(63 / 64)
    for c in range(7):
        assert torch.allclose(w[c, c].double(), torch.from_numpy(np.outer(k1, k1)), atol=1e-7)
    off_diagonal = w.sum((2, 3)) - torch.diag(torch.diagonal(w.sum((2, 3))))
    assert off_diagonal.abs().max() == 0
    with torch.no_grad():
        # a constant map stays constant, edges included (the score map is border-padded)
        flat = fcn.upsample(torch.full((1, 7, 3, 4), 2.5), 96, 128)
        assert flat.shape == (1, 7, 96, 128)
        assert torch.allclose(flat, torch.full_like(flat, 2.5), atol=1e-5)
        # each cell's value sits on its own 32x32 block: pixel 32i+15 is 63/64 of cell i and
        # 1/64 of cell i-1, pixel 32i+16 63/64 of cell i and 1/64 of cell i+1
        ramp = torch.tensor([0.0, 64.0, 128.0]).view(1, 1, 1, 3).expand(1, 7, 1, 3)
        row = fcn.upsample(ramp, 32, 96)[0, 0, 16]
    assert row[47].item() == pytest.approx(64 * 63 / 64 + 0 * 1 / 64, abs=1e-4)
    assert row[48].item() == pytest.approx(64 * 63 / 64 + 128 * 1 / 64, abs=1e-4)
    assert row[0].item() == pytest.approx(0.0, abs=1e-4) and row[95].item() == pytest.approx(128)


# --------------------------------------------------------------------------- pretrained weights
def fake_download(state):
    return lambda url, *args, **kwargs: dict(state)


def test_fcn32s_imagenet_init_reshapes_vgg16_classifier(monkeypatch):
    # a stand-in for the VGG16 ImageNet file: its keys and shapes, random values
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in torchvision.models.vgg16().state_dict().items()}
    state = {k: torch.randn(shape) for k, shape in shapes.items()}
    monkeypatch.setattr(tv_api, "load_state_dict_from_url", fake_download(state))
    model = p2_common.build_fcn32s({"pretrained": True})
    assert torch.equal(model.features[28].weight, state["features.28.weight"])
    # fc6 as a 7x7 conv over pool5 equals the Linear layer over the flattened (512, 7, 7) map
    pool5 = torch.randn(1, 512, 7, 7)
    linear = F.linear(pool5.flatten(1), state["classifier.0.weight"], state["classifier.0.bias"])
    conv = F.conv2d(pool5, model.fc6.weight, model.fc6.bias)  # no padding: the 1x1 centre
    assert torch.allclose(conv.flatten(1), linear, rtol=1e-4, atol=1e-3)
    assert torch.equal(model.fc7.weight.flatten(1), state["classifier.3.weight"])
    assert model.score.weight.abs().max() == 0  # zero-initialised score layer, as in FCN


def test_fcn32s_report_upsampling_is_the_reports_layer():
    """--upscore-init random: the report's ConvTranspose2d(7, 7, 64, stride 32, padding 16,
    bias False), straight on the score map; the same weights in a plain layer give the same
    (B, 7, 512, 512) output from a 16 x 16 map, and other sizes are its top-left crop."""
    torch.manual_seed(0)
    model = p2_common.build_fcn32s({"pretrained": False, "upscore_init": "random",
                                    "fc_init": "fresh"})
    ref = torch.nn.ConvTranspose2d(7, 7, 64, stride=32, padding=16, bias=False)
    ref.load_state_dict(model.upscore.state_dict())
    score = torch.randn(2, 7, 16, 16)
    with torch.no_grad():
        want = ref(score)
        assert want.shape == (2, 7, 512, 512)
        torch.testing.assert_close(model.upsample(score, 512, 512), want, rtol=0, atol=0)
        torch.testing.assert_close(model.upsample(score, 500, 490), want[:, :, :500, :490])
        out = model.eval()(torch.randn(1, 3, 75, 100))
    assert out.shape == (1, 7, 75, 100)


def test_fcn32s_random_start_is_vggs_initialisation():
    """--no-pretrained: fc6/fc7 (built with skip_init) are N(0, 0.01) with zero bias, the
    convolutions kaiming-normal (fan_out), the score layer zero, upscore bilinear."""
    torch.manual_seed(0)
    model = p2_common.build_fcn32s({"pretrained": False})
    for layer in (model.fc6, model.fc7):
        assert layer.weight.mean().abs() < 1e-4
        assert layer.weight.std().item() == pytest.approx(0.01, rel=0.01)
        assert layer.bias.abs().max() == 0
    conv = model.features[28]  # 512 -> 512, 3x3: fan_out std sqrt(2 / (512 * 9))
    assert conv.weight.std().item() == pytest.approx((2 / (512 * 9)) ** 0.5, rel=0.02)
    assert model.score.weight.abs().max() == 0
    assert torch.equal(model.upscore.weight[0, 0], p2_common.bilinear_kernel(64))
    with torch.device("meta"):  # results_report.py's shape-only build: nothing on the CPU
        shapes_only = p2_common.build_fcn32s({"pretrained": False})
    assert {p.device.type for p in shapes_only.parameters()} == {"meta"}


def test_deeplabv3_coco_init_replaces_last_layers(monkeypatch):
    coco = p2_common.ARCHS["mobilenet_v3_large"][0](
        weights=None, weights_backbone=None, num_classes=21, aux_loss=True).state_dict()
    monkeypatch.setattr(tv_api, "load_state_dict_from_url", fake_download(coco))
    model = p2_common.build_deeplabv3({"arch": "mobilenet_v3_large", "init": "coco"})
    assert model.classifier[-1].out_channels == 7 and model.aux_classifier[-1].out_channels == 7
    assert torch.equal(model.state_dict()["backbone.4.block.0.0.weight"],
                       coco["backbone.4.block.0.0.weight"])
    assert torch.equal(model.state_dict()["classifier.0.convs.0.0.weight"],
                       coco["classifier.0.convs.0.0.weight"])


def test_bn_momentum_sets_every_batchnorms_running_statistics_step():
    """--bn-momentum 0.1: one training forward moves each running mean a tenth of the way to
    the batch's mean (MobileNetV3's own 0.01 moves it a hundredth)."""
    for flags, momentum in (([], 0.01), (["--bn-momentum", "0.1"], 0.1)):
        args = p2_train_deeplabv3.get_args_parser().parse_args(
            ["--data-dir", "x", "--arch", "mobilenet_v3_large", "--no-pretrained", *flags])
        model = p2_common.build_deeplabv3(vars(args), load_pretrained=args.pretrained).train()
        norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        backbone = [m for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        assert {m.momentum for m in backbone} == {momentum}  # the head's own are 0.1
        assert {m.momentum for m in norms} == ({0.01, 0.1} if not flags else {0.1})
        first = model.backbone["0"][1]  # the stem's BatchNorm, right after its convolution
        x = torch.rand(2, 3, 64, 64) + 1.0
        with torch.no_grad():
            batch_mean = model.backbone["0"][0](x).mean((0, 2, 3))
            model(x)
        torch.testing.assert_close(first.running_mean, momentum * batch_mean)


@pytest.mark.parametrize("build, cfg", [
    (p2_common.build_fcn32s, {}),
    (p2_common.build_deeplabv3, {"arch": "mobilenet_v3_large", "init": "coco"}),
    (p2_common.build_deeplabv3, {"arch": "resnet50", "init": "imagenet"})])
def test_offline_pretrained_stops_with_one_line(monkeypatch, build, cfg):
    def offline(url, *args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(tv_api, "load_state_dict_from_url", offline)
    with pytest.raises(UserError) as err:
        build(cfg)
    assert "bash hw1_download.sh" in err.value.message and "--no-pretrained" in err.value.message
    assert "\n" not in err.value.message


# ------------------------------------------------------------------- class weights, loss, lr
def test_median_frequency_weights_by_hand():
    masks = torch.tensor([[[0, 0, 0, 1], [1, 1, 1, 1]],      # Urban 3, Agriculture 5
                          [[0, 2, 2, 2], [2, 3, 6, 6]]],     # Urban 1, Rangeland 4, Forest 1
                         dtype=torch.uint8)
    # freq: Urban 4/16, Agriculture 5/8, Rangeland 4/8, Forest 1/8 -> median 0.375;
    # Water and Barren absent and Unknown (unscored) keep 1
    expected = [0.375 / 0.25, 0.375 / 0.625, 0.375 / 0.5, 0.375 / 0.125, 1, 1, 1]
    got = p2_engine.median_frequency_weights(masks)
    assert got.tolist() == pytest.approx(expected)


def test_losses_match_their_definitions():
    torch.manual_seed(0)
    logits, target = torch.randn(2, 7, 5, 6), torch.randint(0, 7, (2, 5, 6))
    weight = torch.rand(7) + 0.5
    loss = p2_engine.segmentation_loss
    assert loss(logits, target).item() == pytest.approx(F.cross_entropy(logits, target).item())
    assert loss(logits, target, weight).item() == pytest.approx(
        F.cross_entropy(logits, target, weight=weight).item(), rel=1e-5)
    ce = F.cross_entropy(logits, target, reduction="none")
    focal = ((1 - torch.exp(-ce)) ** 2 * ce).mean()
    assert loss(logits, target, gamma=2.0).item() == pytest.approx(focal.item(), rel=1e-5)
    # the criterion adds the aux head with --aux-weight
    crit = p2_engine.make_criterion(argparse.Namespace(loss="ce", focal_gamma=2.0, aux_weight=0.4))
    aux = torch.randn(2, 7, 5, 6)
    both = crit({"out": logits, "aux": aux}, target).item()
    assert both == pytest.approx(F.cross_entropy(logits, target).item()
                                 + 0.4 * F.cross_entropy(aux, target).item(), rel=1e-5)


def test_lr_schedule_warmup_then_poly_or_cosine():
    f = lr_multiplier
    assert [f(s, 10, 2, "poly") for s in (0, 1, 2)] == [0.5, 1.0, 1.0]
    assert f(6, 10, 2, "poly") == pytest.approx(0.5 ** 0.9)
    assert f(6, 10, 2, "cosine") == pytest.approx(0.5)
    assert f(10, 10, 2, "poly") == 0 and f(10, 10, 2, "cosine") == pytest.approx(0)


# ----------------------------------------------------------------------------------- training
def test_training_steps_lower_the_loss(tiny_data):
    torch.manual_seed(0)
    _, images, masks = p2_engine.load_split(tiny_data / "train")     # 4 real samples at 64 px
    x = augment.normalize(augment.to_float(images.images))       # (4, 3, 64, 64)
    y = masks.images.long()                                          # (4, 64, 64)
    args = deeplab_args(*SMALL)
    model = p2_common.build_deeplabv3(vars(args))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    criterion = p2_engine.make_criterion(args)
    model.train()
    losses = [p2_engine.train_step(model, x, y, optimizer, criterion, torch.device("cpu")).item()
              for _ in range(8)]
    assert np.mean(losses[-2:]) < 0.7 * np.mean(losses[:2]), losses


@pytest.fixture(scope="module")
def run(tiny_data, tmp_path_factory):
    """A two-epoch run; returns its folder and what it held right after those two epochs."""
    out = tmp_path_factory.mktemp("runs") / "dl"
    p2_train_deeplabv3.main(deeplab_args("--data-dir", str(tiny_data), "--output-dir", str(out),
                                         "--epochs", "2", "--loss", "weighted-focal", *SMALL))
    return out, sorted(p.name for p in out.iterdir()), read_jsonl(out / "log.jsonl")


def test_a_micro_batch_of_one_is_refused_where_batchnorm_needs_two(tiny_data, tmp_path):
    """DeepLabV3's BatchNorm (its pooled ASPP branch sees one value per image) cannot train on
    one image: --micro-batch 1 is a one-line error before any step; FCN32s (no BatchNorm)
    takes it."""
    with pytest.raises(UserError, match="--micro-batch '1' must be auto or a whole number of "
                                        "at least 2"):
        p2_train_deeplabv3.main(deeplab_args("--data-dir", str(tiny_data), "--output-dir",
                                             str(tmp_path / "dl"), "--epochs", "1",
                                             "--micro-batch", "1", *SMALL))
    assert not (tmp_path / "dl" / "log.jsonl").exists()


def test_two_epoch_run_writes_everything(run):
    out, names, log = run
    for name in ("best.pth", "epoch_001.pth", "epoch_002.pth", "last.pth", "snapshots.png",
                 "curves.png", "log.jsonl", "args.json"):
        assert name in names
    assert [r["epoch"] for r in log] == [1, 2]
    for r in log:
        assert 0 <= r["val_miou"] <= 1 and r["images_per_s"] > 0
        assert list(r["val_iou"]) == ["Urban", "Agriculture", "Rangeland", "Forest", "Water",
                                      "Barren"]
    ckpt = load_checkpoint(out / "best.pth")
    assert (ckpt["args"]["model_name"], ckpt["args"]["arch"]) == ("deeplabv3", "mobilenet_v3_large")
    assert ckpt["best_metric"] == pytest.approx(max(r["val_miou"] for r in log), abs=1e-6)
    figure = Image.open(out / "snapshots.png")  # 3 rows x (image, truth, epochs 1 and 2)
    assert figure.width > figure.height
    saved = np.load(out / "snapshots" / "epoch_002.npz")
    assert list(saved["ids"]) == ["0013", "0062", "0104"] and saved["preds"].shape == (3, 64, 64)


def test_used_output_dir_is_refused_then_resume_continues(run, tiny_data):
    out, _, _ = run
    with pytest.raises(UserError, match="--resume"):
        p2_train_deeplabv3.main(deeplab_args("--data-dir", str(tiny_data), "--output-dir",
                                             str(out), "--epochs", "3", *SMALL))
    p2_train_deeplabv3.main(deeplab_args("--data-dir", str(tiny_data), "--output-dir", str(out),
                                         "--epochs", "3", "--resume", "--loss", "weighted-focal",
                                         *SMALL))
    assert [r["epoch"] for r in read_jsonl(out / "log.jsonl")] == [1, 2, 3]
    last = load_checkpoint(out / "last.pth")
    assert last["epoch"] == 3 and last["scheduler"]["last_epoch"] == 3 * 2  # 2 steps per epoch
    assert (out / "epoch_003.pth").exists()


# ---------------------------------------------------------------------------------- inference
def palette_only(path):
    rgb = np.asarray(Image.open(path).convert("RGB")).reshape(-1, 3)
    colours = {tuple(c) for c in np.unique(rgb, axis=0)}
    return colours <= {tuple(c) for c in PALETTE}


def test_inference_writes_one_palette_mask_per_image_and_scores(run, samples_dir, tmp_path,
                                                                repo_root):
    checkpoint = run[0] / "best.pth"
    inp, gt, pred = tmp_path / "in", tmp_path / "gt", tmp_path / "pred"
    inp.mkdir()
    gt.mkdir()
    for i in SAMPLE_IDS:  # the real 512 px samples, and one 100x75 copy of 0008
        Image.open(samples_dir / f"{i}_sat.jpg").save(inp / f"{i}_sat.jpg", quality=95)
        Image.open(samples_dir / f"{i}_mask.png").save(gt / f"{i}_mask.png")
    shrink(samples_dir / "0008_sat.jpg", inp / "0999_sat.jpg", (100, 75))
    shrink(samples_dir / "0008_mask.png", gt / "0999_mask.png", (100, 75), mask=True)
    (inp / "0666_sat.jpg").write_bytes(b"not a jpeg")  # must not stop the others

    argv = ["--input-dir", str(inp), "--output-dir", str(pred), "--checkpoint", str(checkpoint),
            "--batch-size", "2", "--workers", "2", "--device", "cpu"]
    with pytest.raises(UserError, match="1 of 6 image.*0666_sat.jpg"):
        p2_inference.main(p2_inference.get_args_parser().parse_args(argv))
    names = sorted(p.name for p in pred.iterdir())
    assert names == [f"{i}_mask.png" for i in (*SAMPLE_IDS, "0999")]
    for name in names:
        sat = Image.open(inp / name.replace("_mask.png", "_sat.jpg"))
        assert Image.open(pred / name).size == sat.size and palette_only(pred / name)

    # what is scored: the truth with Barren (white) repainted Unknown (black), and the model's
    # masks with their left half replaced by that truth 40 rows lower, so that classes overlap
    # in part, Unknown truth meets class predictions and Barren is absent from both
    truth_dir, guess_dir = tmp_path / "truth", tmp_path / "guess"
    truth_dir.mkdir()
    guess_dir.mkdir()
    for name in names:
        truth = np.array(Image.open(gt / name).convert("RGB"))
        guess = np.array(Image.open(pred / name).convert("RGB"))
        guess[:, :truth.shape[1] // 2] = np.roll(truth, 40, axis=0)[:, :truth.shape[1] // 2]
        for mask, folder in ((truth, truth_dir), (guess, guess_dir)):
            mask[(mask >= 128).all(-1)] = 0
            Image.fromarray(mask).save(folder / name)
    # the course's mIoU counted here with numpy, not the repository's metric (HW1_SPEC.md,
    # "Segmentation masks"): each channel >= 128 is a bit, code 4R+2G+B, codes 3,6,5,2,1,7,0
    # are classes 0..6; TP/FP/FN of classes 0..5 summed over all pixels of all images
    code_to_class = np.full(8, -1)
    code_to_class[[3, 6, 5, 2, 1, 7, 0]] = np.arange(7)
    tp, fp, fn, unknown_fp = np.zeros(6), np.zeros(6), np.zeros(6), 0
    for name in names:
        truth, guess = (code_to_class[(np.asarray(Image.open(d / name).convert("RGB")) >= 128)
                                      @ np.array([4, 2, 1])].ravel()
                        for d in (truth_dir, guess_dir))
        assert truth.min() >= 0 and guess.min() >= 0  # no pure red (code 4, no class) here
        for c in range(6):
            tp[c] += np.sum((truth == c) & (guess == c))
            fp[c] += np.sum((truth != c) & (guess == c))  # Unknown truth counts here too
            fn[c] += np.sum((truth == c) & (guess != c))
        unknown_fp += np.sum((truth == 6) & (guess < 6))
    seen = tp + fp + fn > 0  # a class absent from both truth and prediction is left out
    iou = np.divide(tp, tp + fp + fn, out=np.full(6, np.nan), where=seen)
    # the cases the rules are about do occur: 5 classes scored, Barren absent, Unknown FPs
    assert seen.tolist() == [True] * 5 + [False] and unknown_fp > 0 and tp[:5].min() > 0
    scored = subprocess.run([sys.executable, "p2_evaluate.py", "-g", str(truth_dir), "-p",
                             str(guess_dir)], cwd=repo_root, capture_output=True, text=True,
                            timeout=120)
    assert scored.returncode == 0, scored.stderr
    value = float(re.search(r"^mean_iou: (\S+)$", scored.stdout, re.M).group(1))
    assert value == pytest.approx(iou[seen].mean(), abs=1e-6)
    shown = re.findall(r"^class #(\d) \(\w+\) : (\S+)$", scored.stdout, re.M)
    assert [int(c) for c, _ in shown] == list(range(6)), scored.stdout
    for (_, text), v in zip(shown, iou):  # printed with 5 decimals
        if np.isnan(v):
            assert text == "absent"
        else:
            assert float(text) == pytest.approx(v, abs=6e-6)
    assert re.search(r"^images: 5$", scored.stdout, re.M)

    # TTA (three views averaged) on the small image alone: same file, same size, palette only
    small, tta = tmp_path / "small", tmp_path / "tta"
    small.mkdir()
    (inp / "0999_sat.jpg").rename(small / "0999_sat.jpg")
    argv = ["--input-dir", str(small), "--output-dir", str(tta), *argv[4:], "--tta"]
    assert p2_inference.main(p2_inference.get_args_parser().parse_args(argv)) == 1
    assert Image.open(tta / "0999_mask.png").size == (100, 75)
    assert palette_only(tta / "0999_mask.png")


def test_hw1_2_sh_is_one_python3_line_and_writes_masks(run, samples_dir, tmp_path, repo_root):
    text = (repo_root / "hw1_2.sh").read_text()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("# ")]
    usage = "usage: bash hw1_2.sh INPUT_DIR OUTPUT_DIR"
    assert lines[0].startswith("#!") and lines[1] == "set -euo pipefail"
    assert lines[2:] == [f'python3 "$(dirname "$0")/p2_inference.py" --input-dir '
                         f'"${{1:?{usage}}}" --output-dir "${{2:?{usage}}}"']
    for argv in ([], ["in"]):  # a missing argument: the usage line, nothing run
        proc = subprocess.run(["bash", "hw1_2.sh", *argv], cwd=repo_root, capture_output=True,
                              text=True, timeout=60)
        assert proc.returncode != 0 and proc.stdout == ""
        assert proc.stderr.splitlines() == [f"hw1_2.sh: line 4: {len(argv) + 1}: {usage}"]
    assert not re.search(r"\b(rm|cp|mv|mkdir|cd|pip|sudo|CUDA_VISIBLE_DEVICES)\b", text)

    inp, out = tmp_path / "in", tmp_path / "missing" / "out"  # output folder created on demand
    inp.mkdir()
    shrink(samples_dir / "0107_sat.jpg", inp / "0107_sat.jpg", (96, 96))
    shrink(samples_dir / "0128_sat.jpg", inp / "0128_sat.jpg", (100, 75))
    env = dict(os.environ, HW1_P2_CHECKPOINT=str(run[0] / "best.pth"), OMP_NUM_THREADS="1",
               CUDA_VISIBLE_DEVICES="",  # the grading script picks the GPU when there is one
               PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    # from another folder: the script finds p2_inference.py beside itself
    done = subprocess.run(["bash", str(repo_root / "hw1_2.sh"), str(inp), str(out)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "images/s" in done.stdout
    assert sorted(p.name for p in out.iterdir()) == ["0107_mask.png", "0128_mask.png"]
    assert Image.open(out / "0128_mask.png").size == (100, 75)


def test_max_images_limits_both_splits_unless_one_is_given(monkeypatch, tmp_path):
    asked = []

    def load_split(folder, max_n=None, cache_dir=None, workers=None, seed=0):
        asked.append((folder.name, max_n, seed))
        if len(asked) == 2:
            raise RuntimeError("stop after the data")
        return None, None, None

    monkeypatch.setattr(p2_engine, "load_split", load_split)
    for extra, want in ((["--max-images", "3"], [("train", 3, 0), ("validation", 3, 0)]),
                        (["--max-images", "3", "--max-val", "1", "--seed", "5"],
                         [("train", 3, 5), ("validation", 1, 5)])):
        asked.clear()
        args = deeplab_args("--data-dir", str(tmp_path), "--output-dir", str(tmp_path / "run"),
                            "--overwrite", "--device", "cpu", *extra)
        with pytest.raises(RuntimeError, match="stop after the data"):
            p2_engine.train(args)
        assert asked == want


# ------------------------------------------------------------------------ prediction oracles
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)  # ImageNet's, as torchvision's
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
ODD_SIZES = {"0008": (100, 75), "0097": (64, 64), "0107": (100, 75), "0128": (90, 60)}  # (W, H)


def read_normalised(path):
    """An image file -> (1, 3, H, W): RGB, 0..1, ImageNet normalisation (written out here)."""
    rgb = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255
    return (torch.from_numpy(rgb).permute(2, 0, 1)[None] - MEAN) / STD


def oracle_masks(checkpoint, paths, tta=False):
    """What a checkpoint predicts for each image, computed here image by image: the network its
    args name with the file's weights, the image read by read_normalised, the argmax of the
    logits (with `tta`, of the summed softmax of the image and its horizontal and vertical
    flips, each flipped back). -> [(class map (H, W), gap between the two best scores)]."""
    ckpt = torch.load(checkpoint, weights_only=False, map_location="cpu")
    model = p2_common.build_model(ckpt["args"], load_pretrained=False)
    model.load_state_dict(ckpt["model"])
    model.eval()
    out = []
    with torch.no_grad():
        for path in paths:
            x = read_normalised(path)
            if tta:
                score = sum(model(x.flip(d) if d else x)["out"].flip(d if d else ()).softmax(1)
                            for d in (None, (3,), (2,)))
            else:
                score = model(x)["out"]
            top2 = score[0].topk(2, dim=0).values
            out.append((score[0].argmax(0).numpy(), (top2[0] - top2[1]).numpy()))
    return out


def assert_masks_are_the_oracles(folder, paths, oracle, tie=1e-4, max_ties=1e-3):
    """Each written mask is the oracle's prediction in the palette, pixel for pixel, except
    where the oracle's two best scores are within `tie` (no order of float operations can
    decide those; they must stay rare: at most a `max_ties` share of the pixels)."""
    ties = total = 0
    for path, (want, gap) in zip(paths, oracle):
        got = np.asarray(Image.open(folder / path.name.replace("_sat.jpg", "_mask.png")))
        assert got.shape == (*want.shape, 3)
        decided = gap >= tie
        assert np.array_equal(got[decided], PALETTE[want][decided]), path.name
        ties += int((~decided).sum())
        total += decided.size
    assert ties <= total * max_ties, (ties, total)


@pytest.fixture(scope="module")
def varied_checkpoint(tmp_path_factory, samples_dir):
    """A DeepLabV3-MobileNetV3 checkpoint whose masks hold several classes: seeded random
    weights whose BatchNorm statistics are those of the real samples (with the initial ones a
    random network paints one class everywhere), the last layer scaled so that ties are rare."""
    torch.manual_seed(0)
    args = {"model_name": "deeplabv3", "arch": "mobilenet_v3_large", "pretrained": False}
    model = p2_common.build_model(args, load_pretrained=False)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # a plain average over the calibration batch
    x = torch.cat([read_normalised(samples_dir / f"{i}_sat.jpg") for i in SAMPLE_IDS])
    with torch.no_grad():
        model.train()(F.interpolate(x, size=128, mode="bilinear"))
        model.classifier[-1].weight.mul_(100)
        model.classifier[-1].bias.mul_(100)
    path = tmp_path_factory.mktemp("varied") / "best.pth"
    save_checkpoint(path, model, kind="p2_segmenter", epoch=1, args=args)
    return path


@pytest.fixture(scope="module")
def odd_images(tmp_path_factory, samples_dir):
    """The four samples at sizes that are not square and not all alike (two share one)."""
    folder = tmp_path_factory.mktemp("odd")
    for i, size in ODD_SIZES.items():
        shrink(samples_dir / f"{i}_sat.jpg", folder / f"{i}_sat.jpg", size)
    return folder, sorted(folder.glob("*_sat.jpg"))


@pytest.mark.parametrize("options", [[], ["--batch-size", "1", "--workers", "1"],
                                     ["--batch-size", "3"], ["--tta"], ["--no-amp"]],
                         ids=["default", "batch-1", "batch-3", "tta", "no-amp"])
def test_written_masks_are_the_checkpoints_predictions(varied_checkpoint, odd_images, tmp_path,
                                                        options):
    folder, paths = odd_images
    out = tmp_path / "pred"
    p2_inference.main(p2_inference.get_args_parser().parse_args(
        ["--input-dir", str(folder), "--output-dir", str(out), "--checkpoint",
         str(varied_checkpoint), "--device", "cpu", *options]))
    oracle = oracle_masks(varied_checkpoint, paths, tta="--tta" in options)
    classes = set().union(*(np.unique(want).tolist() for want, _ in oracle))
    assert len(classes) >= 3, classes  # a prediction that depends on the input
    assert_masks_are_the_oracles(out, paths, oracle)


def test_logged_best_miou_is_the_score_of_hw1_2s_masks(run, tiny_data, tmp_path):
    """p2_inference.py with a run's best.pth on the validation images the run scored, then
    p2_evaluate.py on those masks: the run's logged best val mIoU."""
    out, _, _ = run
    ckpt = load_checkpoint(out / "best.pth")
    log = read_jsonl(out / "log.jsonl")
    best = max(log, key=lambda r: r["val_miou"])
    assert ckpt["epoch"] == best["epoch"]
    pred = tmp_path / "pred"
    p2_inference.main(p2_inference.get_args_parser().parse_args(
        ["--input-dir", str(tiny_data / "validation"), "--output-dir", str(pred),
         "--checkpoint", str(out / "best.pth"), "--device", "cpu", "--workers", "2"]))
    score = p2_evaluate.main(p2_evaluate.get_args_parser().parse_args(
        ["-g", str(tiny_data / "validation"), "-p", str(pred)]))
    assert score == pytest.approx(best["val_miou"], abs=1e-6)
    assert ckpt["best_metric"] == pytest.approx(score, abs=1e-6)  # the log keeps 6 decimals


class Recorder(torch.nn.Module):
    """Runs a model and keeps every input it was given."""

    def __init__(self, model):
        super().__init__()
        self.model, self.inputs = model, []

    def forward(self, x):
        self.inputs.append(x.detach().clone())
        return self.model(x)


def test_validation_and_inference_feed_the_model_the_same_tensor(varied_checkpoint, tiny_data,
                                                                 tmp_path, monkeypatch):
    """One preprocessing: for the same images, p2_engine's validation and p2_inference.py
    (hw1_2.sh) give the network identical tensors, equal to read_normalised's."""
    model, run_args = p2_common.load_segmenter(varied_checkpoint, torch.device("cpu"))
    folder = tiny_data / "validation"
    _, images, masks = p2_engine.load_split(folder)
    in_validation = Recorder(model)
    p2_engine.evaluate(in_validation, images, masks, 3, torch.device("cpu"))
    in_inference = Recorder(model)
    monkeypatch.setattr(p2_inference, "load_segmenter",
                        lambda path, device: (in_inference, run_args))
    p2_inference.main(p2_inference.get_args_parser().parse_args(
        ["--input-dir", str(folder), "--output-dir", str(tmp_path / "pred"), "--checkpoint",
         str(varied_checkpoint), "--device", "cpu", "--batch-size", "2", "--workers", "2"]))
    validation, inference = torch.cat(in_validation.inputs), torch.cat(in_inference.inputs)
    assert validation.shape == inference.shape == (4, 3, 64, 64)
    assert torch.equal(validation, inference)
    expected = torch.cat([read_normalised(p) for p in sorted(folder.glob("*_sat.jpg"))])
    torch.testing.assert_close(inference, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("micro_batch, loss", [(2, "ce"), (3, "focal")])
def test_micro_batches_give_the_steps_gradient_and_weights(tiny_data, micro_batch, loss):
    """One FCN32s step at batch 4 in micro-batches of 2 (or 3 + 1) accumulates the gradient of
    the whole step and takes the same AdamW step (clipped at 1.0), the class-weighted losses
    normalised for the whole batch: the report's weighted CE and its weighted focal loss.
    Dropout off (eval mode) so that both see the same network."""
    torch.manual_seed(0)
    _, images, masks = p2_engine.load_split(tiny_data / "train")
    x = augment.normalize(augment.to_float(images.images))            # (4, 3, 64, 64)
    y = masks.images.long()
    args = argparse.Namespace(loss=loss, focal_gamma=2.0, class_weights="1,1,5,1,1,1,2",
                              aux_weight=0.0)
    criterion = p2_engine.make_criterion(args)
    results = []
    for micro in (None, training.MicroBatch(str(micro_batch))):
        torch.manual_seed(1)
        model = p2_common.build_fcn32s({"pretrained": False, "fc_init": "fresh",
                                        "upscore_init": "random"}).eval()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-4)
        loss_value = p2_engine.train_step(model, x, y, optimizer, criterion,
                                          torch.device("cpu"), clip_grad=1.0, micro=micro)
        results.append((loss_value, [p.grad.clone() for p in model.parameters()],
                        [p.detach().clone() for p in model.parameters()]))
    (loss_a, grads_a, weights_a), (loss_b, grads_b, weights_b) = results
    assert loss_b.item() == pytest.approx(loss_a.item(), rel=1e-5)
    assert max(g.abs().max().item() for g in grads_a) > 1e-5  # gradients worth comparing
    for ga, gb in zip(grads_a, grads_b):
        torch.testing.assert_close(gb, ga, rtol=1e-4, atol=1e-7)
    for wa, wb in zip(weights_a, weights_b):
        torch.testing.assert_close(wb, wa, rtol=0, atol=1e-5)


def test_inference_runs_in_the_precision_the_checkpoint_was_validated_in(varied_checkpoint,
                                                                         odd_images, tmp_path,
                                                                         monkeypatch):
    """hw1_2.sh's default precision is the run's own (--amp of its args: the report recipe
    validates in fp32); --amp / --no-amp choose."""
    ckpt = torch.load(varied_checkpoint, weights_only=False)
    folder, _ = odd_images
    for saved, flag, want in ((False, [], False), (True, [], True), (False, ["--amp"], True),
                              (True, ["--no-amp"], False)):
        ckpt["args"]["amp"] = saved
        path = tmp_path / f"run_{saved}.pth"
        torch.save(ckpt, path)
        used = []
        monkeypatch.setattr(p2_inference, "setup_precision", lambda d, amp: used.append(amp))
        predict = p2_common.predict
        monkeypatch.setattr(p2_inference, "predict",
                            lambda m, x, d, amp, tta: used.append(amp) or predict(m, x, d, amp,
                                                                                  tta))
        p2_inference.main(p2_inference.get_args_parser().parse_args(
            ["--input-dir", str(folder), "--output-dir", str(tmp_path / "out"),
             "--checkpoint", str(path), "--device", "cpu", "--batch-size", "4", *flag]))
        assert used and set(used) == {want}, (saved, flag, used)
