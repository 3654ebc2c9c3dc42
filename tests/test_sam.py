"""p2_sam.py and p2_sam_vs_model_b.py: overlay order, purity and relabelling against
hand-computed values, the whole SAM-vs-model-B summary of a masks run against numbers worked out
by hand, checkpoint errors, bf16 autocast of SAM's networks, and end-to-end runs of
SamAutomaticMaskGenerator with a tiny randomly initialised SAM on the real satellite samples
(CPU, no checkpoint needed)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sam_fixtures import tiny_sam  # a 2-block ViT SAM on 64 px, random weights
from segment_anything import SamAutomaticMaskGenerator
from segment_anything.utils.amg import rle_to_mask

import data
import errors
import metrics
import p2_sam
import p2_sam_vs_model_b
import results_report
import sam_masks
from records import read_jsonl

REPO = Path(__file__).resolve().parents[1]
SAMPLES = Path(__file__).resolve().parent / "data"
SAMPLE_IDS = ("0008", "0097", "0107", "0128")
# thresholds that let a random SAM's masks through (the report's 0.88 would keep none)
# and keep every proposal (box NMS at IoU 1): 3x3 points x 3 outputs = 27 masks of varied areas
LOOSE = ["--points-per-side", "3", "--pred-iou-thresh", "0", "--stability-score-thresh", "0",
         "--box-nms-thresh", "1", "--min-mask-region-area", "0"]


def parse(*argv):
    return p2_sam.get_args_parser().parse_args(["--checkpoint", "unused.pth", *map(str, argv)])


def parse_vs(*argv):
    return p2_sam_vs_model_b.get_args_parser().parse_args(list(map(str, argv)))


def small_sample(sample_id, size):
    """A real sample image resized to `size` (W, H) as uint8 RGB, and its mask (nearest)."""
    image = data.load_rgb(SAMPLES / f"{sample_id}_sat.jpg").resize(size, Image.BILINEAR)
    mask = Image.fromarray(data.read_mask(SAMPLES / f"{sample_id}_mask.png")).resize(
        size, Image.NEAREST)
    return np.asarray(image), np.asarray(mask)


# ------------------------------------------------------------------------------ parser
def test_defaults_are_the_reports_settings_and_help_lists_every_knob():
    args = parse("--input", "x", "--output-dir", "y")
    assert (args.points_per_side, args.pred_iou_thresh, args.min_mask_region_area) == (32, 0.88,
                                                                                      100)
    assert args.model_type == "vit_h" and args.amp is False  # the report ran SAM in fp32
    assert abs(args.crop_overlap_ratio - 512 / 1500) < 1e-12  # a float, not amg.py's type=int
    text = p2_sam.get_args_parser().format_help()
    for flag in ("--points-per-side", "--points-per-batch", "--pred-iou-thresh",
                 "--stability-score-thresh", "--stability-score-offset", "--box-nms-thresh",
                 "--crop-n-layers", "--crop-nms-thresh", "--crop-overlap-ratio",
                 "--crop-n-points-downscale-factor", "--min-mask-region-area", "--save-masks",
                 "--json", "--figure", "--ids", "--seed"):
        assert flag in text
    text = p2_sam_vs_model_b.get_args_parser().format_help()
    for flag in ("--sam-dir", "--labels", "--pred", "--output-dir", "--figure-ids"):
        assert flag in text
    assert p2_sam.amg_kwargs(args, torch.device("cpu"))["points_per_batch"] == 64
    assert p2_sam.amg_kwargs(args, torch.device("cuda"))["points_per_batch"] == 256
    assert p2_sam.amg_kwargs(parse("--input", "x", "--output-dir", "y", "--points-per-batch",
                                   "8"), torch.device("cuda"))["points_per_batch"] == 8


def test_list_inputs_takes_sat_images_or_ids_and_refuses_missing(tmp_path):
    assert [f.name for f in p2_sam.list_inputs([SAMPLES])] == [f"{i}_sat.jpg" for i in SAMPLE_IDS]
    picked = p2_sam.list_inputs([SAMPLES], ids=["0128", "0008"])
    assert [p2_sam.image_id(f) for f in picked] == ["0128", "0008"]
    with pytest.raises(SystemExit, match="0013_sat.jpg"):
        p2_sam.list_inputs([SAMPLES], ids=["0008", "0013"])
    with pytest.raises(SystemExit, match="nowhere"):
        p2_sam.list_inputs([tmp_path / "nowhere"])
    Image.new("RGB", (8, 8)).save(tmp_path / "plain.png")  # a folder without *_sat.jpg
    assert [f.name for f in p2_sam.list_inputs([tmp_path])] == ["plain.png"]


# ------------------------------------------------------------------------------ drawing
def test_overlay_draws_largest_first_so_a_small_mask_inside_stays_visible():
    image = np.full((6, 8, 3), 100, np.uint8)
    large = np.zeros((6, 8), bool)
    large[1:5, 1:7] = True  # 24 px
    small = np.zeros((6, 8), bool)
    small[2:4, 2:4] = True  # 4 px, inside `large`
    alpha = 0.5
    # given small first: the painting order must still be large, then small
    overlay = p2_sam.draw_overlay(image, [small, large], alpha=alpha, seed=3)
    assert overlay.shape == image.shape and overlay.dtype == np.uint8
    colours = p2_sam.mask_colours(2, seed=3).astype(np.float32)  # rank 0 = large, 1 = small
    blend = lambda c: np.round(0.5 * 100 + alpha * c).astype(np.uint8)
    assert not np.array_equal(colours[0], colours[1])
    np.testing.assert_array_equal(overlay[2, 2], blend(colours[1]))   # small's own colour
    np.testing.assert_array_equal(overlay[1, 1], blend(colours[0]))   # large only
    np.testing.assert_array_equal(overlay[0], image[0])               # under no mask: unchanged
    assert sam_masks.paint_order([small, large]) == [1, 0]
    # same seed, same picture; no masks, the image itself
    np.testing.assert_array_equal(overlay, p2_sam.draw_overlay(image, [large, small], alpha, 3))
    np.testing.assert_array_equal(p2_sam.draw_overlay(image, []), image)


# ------------------------------------------------------------------------------ SAM vs model B
GT = np.array([[0, 0, 0, 0],
               [0, 0, 1, 1],
               [2, 2, 1, 1],
               [2, 2, 6, 6]], np.uint8)


def _mask(rows, cols, shape=(4, 4)):
    m = np.zeros(shape, bool)
    m[rows, cols] = True
    return m


def test_purity_hand_computed():
    top = _mask(slice(0, 2), slice(0, 4))      # GT 0 x6, 1 x2 -> 6 of 8
    bottom_left = _mask(slice(2, 4), slice(0, 2))  # GT 2 x4 -> 4 of 4
    right = _mask(slice(1, 4), slice(2, 4))    # GT 1 x4, 6 x2 -> 4 of 6 (overlaps `top`)
    purity = p2_sam_vs_model_b.mask_purity
    assert purity([top], GT) == pytest.approx(6 / 8)
    assert purity([top, bottom_left, right], GT) == pytest.approx((6 + 4 + 4) / 18)
    assert purity([top, bottom_left, right], GT, return_counts=True) == (14, 18)
    unknown = _mask(3, slice(2, 4))            # lies on Unknown only: pure
    assert purity([unknown], GT) == 1.0
    assert np.isnan(purity([], GT))
    assert np.isnan(purity([np.zeros((4, 4), bool)], GT))


def test_relabelling_and_its_miou_hand_computed():
    pred = np.array([[0, 0, 0, 3],
                     [0, 0, 3, 3],
                     [2, 1, 1, 1],
                     [2, 2, 6, 6]], np.uint8)
    big = _mask(slice(0, 2), slice(0, 4))     # pred 0 x5, 3 x3 -> 0
    inner = _mask(1, slice(2, 4))             # pred 3 x2 -> 3, painted over `big`
    left = _mask(slice(2, 4), slice(0, 2))    # pred 2 x3, 1 x1 -> 2
    tie = _mask(2, slice(1, 3))               # pred 1 x2 -> 1 (painted last: smallest, 2 px)
    relabel = p2_sam_vs_model_b.relabel_with_masks
    out = relabel([inner, tie, big, left], pred)
    expected = np.array([[0, 0, 0, 0],
                         [0, 0, 3, 3],
                         [2, 1, 1, 1],
                         [2, 2, 6, 6]], np.uint8)
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(pred[3], out[3])  # pixels under no mask keep model B's class
    # a tie takes the lower class index
    tie_pred = np.array([[4, 5], [5, 4]], np.uint8)
    np.testing.assert_array_equal(relabel([np.ones((2, 2), bool)], tie_pred), np.full((2, 2), 4))
    # the mIoU of the relabelled map, by hand against GT:
    # 0: TP 6, FP 0, FN 0 -> 1; 1: TP 2, FP 1 (2,1), FN 2 (1,2),(1,3) -> 2/5;
    # 2: TP 3, FP 0, FN 1 (2,1) -> 3/4; 3: TP 0, FP 2 -> 0; 4, 5 absent -> left out.
    cm = metrics.ConfusionMatrix().update(GT, out)
    assert cm.miou() == pytest.approx((1 + 2 / 5 + 3 / 4 + 0) / 4)


# ------------------------------------------------------------------------------ checkpoints
def test_missing_or_unreadable_checkpoint_is_one_line_naming_the_file(tmp_path):
    missing = tmp_path / "sam_vit_h_4b8939.pth"
    with pytest.raises(errors.UserError) as e:
        p2_sam.build_sam_model("vit_h", missing)
    assert str(missing) in e.value.message and "bash hw1_download.sh" in e.value.message
    assert "\n" not in e.value.message
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint at all" * 10)
    with pytest.raises(errors.UserError) as e:
        p2_sam.build_sam_model("vit_h", garbage)
    assert str(garbage) in e.value.message and "hw1_download.sh" in e.value.message


def test_checkpoint_of_another_model_type_suggests_the_right_one(tmp_path):
    path = tmp_path / "sam_vit_b_01ec64.pth"
    torch.save({"image_encoder.patch_embed.proj.weight": torch.zeros(768, 3, 16, 16),
                "image_encoder.pos_embed": torch.zeros(1, 64, 64, 768),
                "mask_decoder.iou_token.weight": torch.zeros(1, 256)}, path)
    with pytest.raises(errors.UserError) as e:
        p2_sam.build_sam_model("vit_h", path)
    msg = e.value.message
    assert str(path) in msg and "--model-type vit_b" in msg and "hw1_download.sh" in msg
    # wrapped in a training checkpoint, with a DataParallel prefix: still recognised
    torch.save({"model": {"module.image_encoder.patch_embed.proj.weight":
                          torch.zeros(1024, 3, 16, 16)}}, path)
    with pytest.raises(errors.UserError, match="--model-type vit_l"):
        p2_sam.build_sam_model("vit_h", path)
    torch.save({"conv.weight": torch.zeros(3, 3)}, path)
    with pytest.raises(errors.UserError, match="not a SAM checkpoint"):
        p2_sam.build_sam_model("vit_b", path)


def test_matching_checkpoint_loads_on_the_device_and_a_partial_one_is_refused(tmp_path,
                                                                             monkeypatch):
    # a vit_b-wide (768) but one-block SAM stands in for the registry's vit_b: same code path
    monkeypatch.setitem(p2_sam.sam_model_registry, "vit_b",
                        lambda checkpoint=None: tiny_sam(embed_dim=768, seed=1))
    state = tiny_sam(embed_dim=768, seed=2).state_dict()
    path = tmp_path / "sam_vit_b_01ec64.pth"
    torch.save(state, path)
    model = p2_sam.build_sam_model("vit_b", path, device="cpu")
    assert not model.training
    for key in (p2_sam.PATCH_KEY, "mask_decoder.iou_token.weight"):
        torch.testing.assert_close(model.state_dict()[key], state[key])  # seed 2, not seed 1
    del state["mask_decoder.iou_token.weight"]
    torch.save(state, path)
    with pytest.raises(errors.UserError, match="1 missing.*iou_token"):
        p2_sam.build_sam_model("vit_b", path)


def test_cli_error_is_one_line_without_traceback(tmp_path):
    missing = tmp_path / "nope.pth"
    run = subprocess.run([sys.executable, str(REPO / "p2_sam.py"), "--checkpoint", str(missing),
                          "--input", str(SAMPLES), "--ids", "0008", "--output-dir",
                          str(tmp_path / "out")], capture_output=True, text=True, cwd=REPO,
                         timeout=120)
    assert run.returncode == 1
    assert "Traceback" not in run.stderr
    assert run.stderr.strip().count("\n") == 0 and str(missing) in run.stderr


# ------------------------------------------------------------------------------ precision
def test_bf16_autocast_runs_the_networks_in_bf16_and_hands_float_to_the_generator():
    model = tiny_sam()
    seen = []
    model.image_encoder.blocks[0].attn.qkv.register_forward_hook(
        lambda mod, inp, out: seen.append(out.dtype))
    p2_sam.autocast_sam(model, lambda: torch.autocast("cpu", dtype=torch.bfloat16))
    p2_sam.autocast_sam(model, lambda: torch.autocast("cpu", dtype=torch.bfloat16))  # no-op
    image, _ = small_sample("0097", (64, 48))
    generator = SamAutomaticMaskGenerator(model, points_per_side=3, pred_iou_thresh=0,
                                          stability_score_thresh=0, box_nms_thresh=1.0)
    records = p2_sam.generate_masks(generator, image)
    assert seen == [torch.bfloat16]  # the encoder ran once, under autocast
    assert len(records) == 27  # 3 x 3 points x 3 masks, nothing filtered
    assert all(r["segmentation"].shape == (48, 64) for r in records)
    assert all(isinstance(r["predicted_iou"], float) for r in records)
    areas = [r["area"] for r in records]
    assert areas == sorted(areas, reverse=True)
    emb = model.image_encoder(torch.zeros(1, 3, 64, 64))
    assert emb.dtype == torch.float32 and emb.shape == (1, 32, 4, 4)


# ------------------------------------------------------------------------------ end to end
def test_end_to_end_overlays_figure_masks_json_and_skipped_inputs(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    image, _ = small_sample("0008", (64, 48))
    Image.fromarray(image).save(src / "0008_sat.jpg")
    Image.fromarray(image.mean(2).astype(np.uint8)).save(src / "gray.png")  # grayscale
    (src / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    out = tmp_path / "out"
    args = parse("--input", src / "0008_sat.jpg", src / "gray.png", src / "broken.jpg",
                 "--output-dir", out, "--save-masks", "--json", "--device", "cpu", *LOOSE)
    with pytest.raises(SystemExit) as e:
        p2_sam.main(args, model=tiny_sam())
    assert "broken.jpg" in e.value.message and "1 input(s)" in e.value.message
    for i in ("0008", "gray"):
        with Image.open(out / f"{i}_sam.png") as im:
            assert im.size == (64, 48) and im.mode == "RGB"
    assert not (out / "broken_sam.png").exists()
    with Image.open(out / "sam_figure.png") as im:  # two images side by side
        assert im.width > 2 * 64 and im.height > 48
    log = read_jsonl(out / "sam_log.jsonl")
    assert [r["id"] for r in log] == ["0008", "gray"] and all(r["seconds"] > 0 for r in log)
    assert json.loads((out / "args.json").read_text())["points_per_side"] == 3
    # --save-masks: one PNG per mask + metadata rows, largest first; --json: the same masks
    n = log[0]["masks"]
    assert n == 27
    rows = (out / "masks" / "0008" / "metadata.csv").read_text().strip().splitlines()
    assert rows[0].startswith("id,area,bbox_x0") and len(rows) == n + 1
    areas = [int(r.split(",")[1]) for r in rows[1:]]
    assert areas == sorted(areas, reverse=True)
    records = json.loads((out / "0008_sam.json").read_text())
    assert len(records) == n
    for k, rec in enumerate(records):
        png = np.asarray(Image.open(out / "masks" / "0008" / f"{k}.png")) > 0
        rle = rec["segmentation"]
        if isinstance(rle["counts"], list):
            decoded = rle_to_mask(rle)
        else:  # compressed, when pycocotools is installed
            from pycocotools import mask as mask_utils
            decoded = mask_utils.decode(rle).astype(bool)
        np.testing.assert_array_equal(decoded, png)
        assert rec["area"] == int(png.sum()) == areas[k]
    # the overlay is exactly draw_overlay of the saved masks
    masks = [np.asarray(Image.open(out / "masks" / "0008" / f"{k}.png")) > 0 for k in range(n)]
    np.testing.assert_array_equal(np.asarray(Image.open(out / "0008_sam.png")),
                                  p2_sam.draw_overlay(image_at(src / "0008_sat.jpg"), masks,
                                                      0.35, 0))


def image_at(path):
    return np.asarray(data.load_rgb(path))


def test_sam_against_model_b_with_a_tiny_sam_writes_the_table_and_figures(tmp_path):
    val, pred_dir, out = tmp_path / "val", tmp_path / "model_b", tmp_path / "out"
    val.mkdir()
    pred_dir.mkdir()
    for k, i in enumerate(SAMPLE_IDS):
        image, gt = small_sample(i, (48, 48))
        Image.fromarray(image).save(val / f"{i}_sat.jpg")
        data.write_mask(val / f"{i}_mask.png", gt)
        pred = gt.copy()
        pred[: 8 + 4 * k] = (pred[: 8 + 4 * k] + 1) % 6  # model B errs on a top band
        data.write_mask(pred_dir / f"{i}_mask.png", pred)
    ids = ["0107", "0008", "0097"]
    args = parse("--input", val, "--ids", *ids, "--output-dir", out, "--save-masks", "--device",
                 "cpu", *LOOSE)
    p2_sam.main(args, model=tiny_sam())
    p2_sam_vs_model_b.main(parse_vs("--sam-dir", out, "--labels", val, "--pred", pred_dir))
    summary = json.loads((out / "sam_vs_model_b.json").read_text())
    assert summary["images"] == 3 and [r["id"] for r in summary["per_image"]] == ids
    assert not (out / "0128_sam.png").exists()  # not among --ids
    # model B's own mIoU does not depend on SAM: the confusion matrix of its masks
    cm_b = metrics.ConfusionMatrix()
    for i in ids:
        cm_b.update(data.read_mask(val / f"{i}_mask.png"),
                    data.read_mask(pred_dir / f"{i}_mask.png"))
    assert summary["model_b"]["miou"] == pytest.approx(cm_b.miou(), abs=1e-6)
    assert summary["model_b"]["miou"] < 1.0  # the injected errors are seen
    for r in summary["per_image"]:  # the masks counted are the ones --save-masks wrote
        assert r["masks"] == len(list((out / "masks" / r["id"]).glob("*.png")))
        assert r["pixels"] == 48 * 48 and 0 <= r["covered_pixels"] <= r["pixels"]
    assert summary["masks"] == sum(r["masks"] for r in summary["per_image"])
    assert (out / "sam_vs_model_b.md").read_text() == p2_sam_vs_model_b.comparison_markdown(summary)
    with Image.open(out / "sam_vs_model_b.png") as im:  # 3 rows x 5 columns of 48 px
        assert im.width > 5 * 48 and im.height > 3 * 48
        figure = np.asarray(im)
    # the cells of the second row (0008), unscaled at 48 px; tile_figure's layout at this size:
    # 8 px padding around cells, a 16 px caption above each
    cell = lambda row, col: figure[8 + row * 72 + 16:][:48, 8 + col * 56:][:, :48]
    gt, pred = data.read_mask(val / "0008_mask.png"), data.read_mask(pred_dir / "0008_mask.png")
    np.testing.assert_array_equal(cell(1, 0), sam_masks.read_image(val / "0008_sat.jpg"))
    np.testing.assert_array_equal(cell(1, 1), data.classes_to_rgb(gt))
    np.testing.assert_array_equal(cell(1, 2), data.classes_to_rgb(pred))
    np.testing.assert_array_equal(cell(1, 3), np.asarray(Image.open(out / "0008_sam.png")))
    masks = sam_masks.read_masks_from_folder(out / "masks" / "0008")
    np.testing.assert_array_equal(
        cell(1, 4), data.classes_to_rgb(p2_sam_vs_model_b.relabel_with_masks(masks, pred)))


# Two hand-made images and SAM masks, with every number of the summary worked out by hand.
# Image 0001 (4 x 4): ground truth, model B, and SAM's masks m1 (6 px), m2 (4 px), m3 (8 px)
GT_A = np.array([[0, 0, 1, 1],          # m1 = rows 0-2, cols 0-1
                 [0, 0, 1, 1],          # m2 = rows 0-1, cols 2-3
                 [2, 2, 2, 2],          # m3 = rows 2-3 (overlaps m1 on (2, 0), (2, 1))
                 [2, 2, 6, 6]], np.uint8)
PRED_A = np.array([[0, 0, 0, 1],
                   [0, 1, 1, 1],
                   [2, 2, 2, 1],
                   [2, 2, 2, 2]], np.uint8)
# Image 0002 (2 x 4): n1 = every pixel but (1, 3) (7 px), n2 = (0, 1), (0, 2) (2 px)
GT_B = np.array([[0, 6, 6, 1],
                 [1, 1, 1, 1]], np.uint8)
PRED_B = np.array([[1, 1, 0, 1],
                   [1, 1, 1, 1]], np.uint8)


def hand_made_masks():
    """{(H, W): SAM's masks of the image of that size}, not in area order."""
    m1, m2, m3 = _mask(slice(0, 3), slice(0, 2)), _mask(slice(0, 2), slice(2, 4)), _mask(
        slice(2, 4), slice(0, 4))
    n1 = np.ones((2, 4), bool)
    n1[1, 3] = False
    n2 = _mask(0, slice(1, 3), shape=(2, 4))
    return {(4, 4): [m2, m1, m3], (2, 4): [n2, n1]}


def mask_record(m):
    """A record as SamAutomaticMaskGenerator gives it, for the mask `m`."""
    h, w = m.shape
    return {"segmentation": m, "area": int(m.sum()), "bbox": [0, 0, w, h],
            "point_coords": [[0.0, 0.0]], "predicted_iou": 1.0, "stability_score": 1.0,
            "crop_box": [0, 0, w, h]}


def test_sam_against_model_b_summary_equals_hand_computed_numbers(tmp_path, monkeypatch):
    masks = hand_made_masks()
    monkeypatch.setattr(p2_sam.SamAutomaticMaskGenerator, "generate", lambda self, image: [
        mask_record(m) for m in masks[image.shape[:2]]])
    val, pred_dir, runs = tmp_path / "val", tmp_path / "model_b", tmp_path / "runs"
    val.mkdir()
    pred_dir.mkdir()
    for i, gt, pred in (("0001", GT_A, PRED_A), ("0002", GT_B, PRED_B)):
        data.save_image(val / f"{i}_sat.png", np.zeros((*gt.shape, 3), np.uint8))
        data.write_mask(val / f"{i}_mask.png", gt)
        data.write_mask(pred_dir / f"{i}_mask.png", pred)
    out = runs / "sam_vs_b"
    p2_sam.main(parse("--input", val / "0001_sat.png", val / "0002_sat.png", "--output-dir", out,
                      "--save-masks", "--figure-ids", "0002", "--device", "cpu"), model=tiny_sam())
    p2_sam_vs_model_b.main(parse_vs("--sam-dir", out, "--labels", val, "--pred", pred_dir))
    s = json.loads((out / "sam_vs_model_b.json").read_text())
    # Purity, max_c |m & GT_c| / |m|. 0001: m1 GT 0,0,0,0,2,2 -> 4/6; m2 GT 1 x4 -> 4/4;
    # m3 GT 2 x6, Unknown x2 -> 6/8; sum 14/18. 0002: n1 GT 0, Unknown x2, 1 x4 -> 4/7; n2 GT
    # Unknown x2 -> 2/2 (Unknown is a class here); sum 6/9. Pooled (14 + 6) / (18 + 9) = 20/27.
    # Relabelled, largest first (m3 -> 2 (pred 2 x7, 1 x1), m1 -> 0 (pred 0 x3, 2 x2, 1 x1) over
    # m3 on (2, 0), (2, 1), m2 -> 1 (pred 1 x3, 0 x1); n1 -> 1 (pred 1 x6), n2: pred 1, 0 is a
    # tie -> 0; (1, 3) of 0002 is under no mask and keeps model B's 1):
    #   0001: [[0,0,1,1],[0,0,1,1],[0,0,2,2],[2,2,2,2]], 5 pixels changed: (0,2) (1,1) (2,0)
    #         (2,1) (2,3);  0002: [[1,0,0,1],[1,1,1,1]], 1 changed: (0,1)
    assert s["per_image"] == [
        {"id": "0001", "masks": 3, "purity": 0.777778, "pixels": 16, "covered_pixels": 16,
         "changed_pixels": 5},
        {"id": "0002", "masks": 2, "purity": 0.666667, "pixels": 8, "covered_pixels": 7,
         "changed_pixels": 1}]
    assert (s["images"], s["masks"], s["purity"]) == (2, 5, 0.740741)  # 20/27
    assert s["coverage"] == 0.958333  # (16 + 7) / (16 + 8) = 23/24
    # model B over both images (24 px; an Unknown-truth pixel predicted c is a false positive
    # of c): Urban TP 3 FP 2 ((0,2) of both) FN 2 -> 3/7; Agriculture TP 8 FP 4 FN 1 -> 8/13;
    # Rangeland TP 5 FP 2 (0001's Unknown) FN 1 -> 5/8; Forest, Water, Barren absent -> left out.
    # mIoU (3/7 + 8/13 + 5/8) / 3 = (0.428571 + 0.615385 + 0.625) / 3 = 0.556319; accuracy 16/24
    absent = {"Forest": None, "Water": None, "Barren": None}
    assert s["model_b"] == {"miou": 0.556319, "pixel_accuracy": 0.666667, "iou": {
        "Urban": 0.428571, "Agriculture": 0.615385, "Rangeland": 0.625, **absent}}
    # relabelled: Urban TP 4 FP 4 (0001's (2,0), (2,1); 0002's Unknown (0,1), (0,2)) FN 1 -> 4/9;
    # Agriculture TP 9 FP 1 FN 0 -> 9/10; Rangeland TP 4 FP 2 FN 2 -> 4/8.
    # mIoU (0.444444 + 0.9 + 0.5) / 3 = 0.614815; accuracy (4 + 9 + 4) / 24 = 17/24
    assert s["sam_relabelled"] == {"miou": 0.614815, "pixel_accuracy": 0.708333, "iou": {
        "Urban": 0.444444, "Agriculture": 0.9, "Rangeland": 0.5, **absent}}
    # the masks run that was scored: its log and its generator's settings, quoted as they are
    log = read_jsonl(out / "sam_log.jsonl")
    assert [(r["id"], r["masks"]) for r in log] == [("0001", 3), ("0002", 2)]
    assert s["settings"] == json.loads((out / "sam_settings.json").read_text())
    assert (s["settings"]["model"], s["settings"]["points_per_side"]) == (
        "SAM given by the caller (Sam)", 32)

    # the table: these numbers; the definitions: the docstrings, quoted in the JSON and the table
    table = (out / "sam_vs_model_b.md").read_text()
    assert "| model B | 0.5563 | 0.4286 | 0.6154 | 0.6250 | n/a | n/a | n/a |" in table
    assert ("| model B relabelled by SAM masks | 0.6148 | 0.4444 | 0.9000 | 0.5000 | n/a | n/a | "
            "n/a |") in table
    assert "5 SAM masks" in table and "purity against ground truth 0.7407" in table
    assert "pixels under a mask 0.9583." in table
    assert s["definitions"] == p2_sam_vs_model_b.definitions()
    assert s["definitions"]["purity"].startswith(
        "Class purity of SAM's masks against ground truth: sum_m max_c |m & GT_c| / sum_m |m|")
    assert s["definitions"]["sam_relabelled"].startswith("Model B relabelled by SAM masks:")
    assert "IoU_c = TP / (TP + FP + FN)" in s["definitions"]["miou"]
    for key, text in s["definitions"].items():
        assert f"- {key}: {text}" in table.splitlines()
    # RESULTS.md includes the table as p2_sam_vs_model_b.py wrote it
    section = "\n".join(results_report.sam_section(tmp_path, runs, {}))
    assert table.strip() in section and "sam_vs_model_b.png" in section
    # the figure shows the images of the SAM run's figure (its --figure-ids), as if given here
    p2_sam_vs_model_b.main(parse_vs("--sam-dir", out, "--labels", val, "--pred", pred_dir,
                                    "--output-dir", tmp_path / "given", "--figure-ids", "0002"))
    assert (out / "sam_vs_model_b.png").read_bytes() == (
        tmp_path / "given" / "sam_vs_model_b.png").read_bytes()


def test_the_comparison_refuses_a_missing_prediction_or_masks_run_in_one_line(tmp_path):
    """Each mistake stops before anything is scored or written, naming the path to fix: no
    model B mask for an image with ground truth, no SAM run, a run without --save-masks, and
    masks left by another run (a later --overwrite run without --save-masks)."""
    src, pred_dir, out = tmp_path / "in", tmp_path / "model_b", tmp_path / "sam"
    src.mkdir()
    pred_dir.mkdir()
    image, gt = small_sample("0008", (64, 48))
    Image.fromarray(image).save(src / "0008_sat.jpg")
    data.write_mask(src / "0008_mask.png", gt)
    sam_argv = ["--input", src, "--output-dir", out, "--device", "cpu", *LOOSE]
    p2_sam.main(parse(*sam_argv, "--save-masks"), model=tiny_sam())  # 27 masks
    compare = parse_vs("--sam-dir", out, "--labels", src, "--pred", pred_dir)
    with pytest.raises(errors.UserError, match="0008_mask.png.*hw1_2.sh"):
        p2_sam_vs_model_b.main(compare)
    data.write_mask(pred_dir / "0008_mask.png", gt)
    # 2 x 2 points: 12 masks, none saved; masks/0008/ still holds the 27 of the first run
    p2_sam.main(parse(*sam_argv, "--overwrite", "--points-per-side", "2"), model=tiny_sam())
    with pytest.raises(errors.UserError, match="holds 27 masks, sam_log.jsonl says 12"):
        p2_sam_vs_model_b.main(compare)
    p2_sam.main(parse(*sam_argv, "--output-dir", tmp_path / "unsaved"), model=tiny_sam())
    with pytest.raises(errors.UserError) as e:
        p2_sam_vs_model_b.main(parse_vs("--sam-dir", tmp_path / "unsaved", "--labels", src,
                                        "--pred", pred_dir))
    assert str(tmp_path / "unsaved" / "masks" / "0008" / "metadata.csv") in e.value.message
    assert "--save-masks" in e.value.message and "\n" not in e.value.message
    with pytest.raises(errors.UserError, match="holds no p2_sam.py run"):
        p2_sam_vs_model_b.main(parse_vs("--sam-dir", src, "--labels", src, "--pred",
                                        pred_dir))
    assert not list(tmp_path.glob("*/sam_vs_model_b.*"))
    with pytest.raises(SystemExit) as e:  # ground truth and model B's masks go together
        parse_vs("--sam-dir", out, "--labels", src)
    assert e.value.code == 2


def test_images_are_read_with_opencv_as_the_report_did(tmp_path):
    """The report's SAM run read its images with OpenCV (cv2.imread, BGR -> RGB), as SAM's own
    amg.py does; sam_masks.read_image gives exactly that, and goes through data.load_rgb for a file
    OpenCV cannot read as 8-bit colour (a 16-bit grayscale PNG)."""
    import cv2
    path = REPO / "tests" / "data" / "0008_sat.jpg"
    want = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    got = sam_masks.read_image(path)
    assert got.dtype == np.uint8 and got.shape == (512, 512, 3)
    assert np.array_equal(got, want)
    sixteen = tmp_path / "gray16.png"
    Image.fromarray(np.full((8, 8), 257 * 200, dtype=np.uint16)).save(sixteen)
    assert np.array_equal(sam_masks.read_image(sixteen), np.full((8, 8, 3), 200, np.uint8))


def test_the_run_reads_each_image_with_opencv(tmp_path, monkeypatch):
    import cv2
    reads, imread = [], cv2.imread
    monkeypatch.setattr(cv2, "imread", lambda *a, **k: reads.append(str(a[0])) or imread(*a, **k))
    args = parse("--input", REPO / "tests" / "data" / "0008_sat.jpg", "--output-dir",
                 tmp_path / "out", "--device", "cpu", *LOOSE)
    p2_sam.main(args, model=tiny_sam())
    assert reads == [str(REPO / "tests" / "data" / "0008_sat.jpg")]


def test_a_used_output_dir_is_refused_unless_overwrite(tmp_path):
    """As every training script: a folder that holds a run (sam_log.jsonl) is not written over
    by a typo; --overwrite segments again there, with a fresh log."""
    argv = ["--input", REPO / "tests" / "data" / "0008_sat.jpg", "--output-dir", tmp_path / "o",
            "--device", "cpu", *LOOSE]
    p2_sam.main(parse(*argv), model=tiny_sam())
    with pytest.raises(errors.UserError, match="already holds a run.*--overwrite"):
        p2_sam.main(parse(*argv), model=tiny_sam())
    p2_sam.main(parse(*argv, "--overwrite"), model=tiny_sam())
    assert len(read_jsonl(tmp_path / "o" / "sam_log.jsonl")) == 1
