"""SAM (segment-anything) automatic masks on satellite images: overlays, mask files, figure.

Report section 2.5: SAM ViT-H, SamAutomaticMaskGenerator with 32 points per side, predicted-IoU
threshold 0.88 and min mask region area 100; masks overlaid in random colours, largest first.
Laid out as segment-anything's scripts/amg.py: required inputs and outputs, the generator's
knobs in one argument group, and a main that loads SAM, loops over the images and writes.

    bash hw1_download.sh sam     # -> checkpoints/sam_vit_h_4b8939.pth
    # the report's figure: three validation images side by side
    python3 p2_sam.py --checkpoint checkpoints/sam_vit_h_4b8939.pth --model-type vit_h \\
        --input hw1_data/p2_data/validation --ids 0013 0062 0104 --output-dir runs/sam
    # single files, per-mask PNGs + metadata.csv (as segment-anything's scripts/amg.py) and
    # COCO RLE json
    python3 p2_sam.py --checkpoint checkpoints/sam_vit_h_4b8939.pth --model-type vit_h \\
        --input a_sat.jpg b.png --output-dir runs/sam_files --save-masks --json
    # the masks of the whole validation split, for p2_sam_vs_model_b.py (SAM against model B);
    # the figure shows 0013 0062 0104
    python3 p2_sam.py --checkpoint checkpoints/sam_vit_h_4b8939.pth --model-type vit_h \\
        --input hw1_data/p2_data/validation --output-dir runs/sam_vs_b --save-masks \\
        --figure-ids 0013 0062 0104

Outputs in --output-dir: `{id}_sam.png` (the overlay, same size as the input; id is the file
name without `_sat.jpg` / extension), `sam_figure.png` (or --figure), `args.json`,
`sam_log.jsonl` (one line per image: id, file, masks, seconds), `sam_settings.json` (the mask
generator as it ran: model, AMG settings, precision, device); with --save-masks
`masks/{id}/{i}.png` + `metadata.csv` (what p2_sam_vs_model_b.py reads); with --json
`{id}_sam.json`. sam_masks.py holds the layout that both scripts share.

Mask order. Masks are sorted by area, largest first (stable), once, right after generation;
that order is the drawing order (smaller masks are painted over larger ones and stay visible),
the numbering of --save-masks / --json, and the order of p2_sam_vs_model_b.py's relabelling.

Precision: fp32 by default, as the report ran SAM; with --amp, on CUDA, SAM's image encoder and
mask decoder run under bf16 autocast (faster, but it moves which masks pass the 0.88 / 0.95
thresholds) and hand float32 to the mask generator, whose thresholding, stability scores, NMS and
resizing of mask logits stay in float32, as upstream. The default --points-per-batch is 256 on
CUDA (upstream: 64, kept on CPU).
"""

import argparse
import json
import pickle
import sys
import time
from pathlib import Path

import numpy as np
import torch
from segment_anything import SamAutomaticMaskGenerator, sam_model_registry
from segment_anything.utils.amg import coco_encode_rle, mask_to_rle_pytorch

import cli
import data
import training
import utils
from data import IMAGE_EXTENSIONS
from errors import UserError
from records import append_jsonl, writable_dir, write_json
from sam_masks import (
    LOG_FILE,
    MASKS_DIR,
    SETTINGS_FILE,
    count,
    paint_order,
    read_image,
    tile_figure,
    write_masks_to_folder,
)

MODEL_TYPES = ("vit_h", "vit_l", "vit_b")
# The official file of each model type (https://github.com/facebookresearch/segment-anything).
CHECKPOINT_NAMES = {"vit_h": "sam_vit_h_4b8939.pth", "vit_l": "sam_vit_l_0b3195.pth",
                    "vit_b": "sam_vit_b_01ec64.pth"}
# The ViT width tells the model type apart: image_encoder.patch_embed.proj.weight is (D, 3, 16, 16).
PATCH_KEY = "image_encoder.patch_embed.proj.weight"
EMBED_DIM_TO_TYPE = {1280: "vit_h", 1024: "vit_l", 768: "vit_b"}
GPU_POINTS_PER_BATCH, CPU_POINTS_PER_BATCH = 256, 64


def get_args_parser():
    parser = argparse.ArgumentParser(
        formatter_class=cli.HelpFormatter,
        description="SAM automatic masks overlaid in random colours (largest first): one "
                    "overlay PNG per input and one side-by-side figure; optionally the masks "
                    "themselves (--save-masks: PNGs + metadata.csv, as segment-anything's amg.py; "
                    "--json: COCO RLE). p2_sam_vs_model_b.py scores a --save-masks run against "
                    "model B.",
        epilog="Exact commands are in the module docstring (head -20 p2_sam.py).")
    parser.add_argument("--checkpoint", required=True, type=Path, metavar="PATH",
                        help="SAM weights, e.g. checkpoints/sam_vit_h_4b8939.pth "
                             "(bash hw1_download.sh sam)")
    parser.add_argument("--model-type", default="vit_h", choices=MODEL_TYPES,
                        help="must match the checkpoint (default: %(default)s, the report's)")
    parser.add_argument("--input", required=True, nargs="+", type=Path, metavar="FILE_OR_DIR",
                        help="images and/or folders; a folder gives its *_sat.jpg files (all its "
                             "images if it has none), or the --ids ones")
    parser.add_argument("--ids", nargs="+", default=None, metavar="ID",
                        help="take {ID}_sat.jpg from the --input folders, e.g. 0013 0062 0104")
    parser.add_argument("--output-dir", required=True, type=Path, metavar="DIR",
                        help="where overlays, figures and logs go (created); one that holds a "
                        "run (sam_log.jsonl) is refused unless --overwrite")
    parser.add_argument("--overwrite", action="store_true",
                        help="segment again into a used --output-dir")
    parser.add_argument("--figure", type=Path, default=None, metavar="PATH",
                        help="the side-by-side figure (default: OUTPUT_DIR/sam_figure.png)")
    parser.add_argument("--figure-ids", nargs="+", default=None, metavar="ID",
                        help="images shown in the figure (default: --ids, else the first 3)")
    parser.add_argument("--save-masks", action="store_true",
                        help="also write masks/{id}/{i}.png and metadata.csv, as amg.py does "
                             "(p2_sam_vs_model_b.py reads them)")
    parser.add_argument("--json", action="store_true",
                        help="also write {id}_sam.json: the mask records with COCO RLE "
                             "segmentations (compressed with pycocotools if installed, else "
                             "COCO's uncompressed form)")
    parser.add_argument("--alpha", type=float, default=0.35,
                        help="opacity of the mask colours (default: %(default)s, SAM's notebooks)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the mask colours")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda if present)")
    parser.add_argument("--amp", action=cli.BooleanFlag, default=False,
                        help="bf16 autocast of SAM's networks on CUDA (no effect on CPU); off "
                        "by default: the report ran fp32, and bf16 moves which masks pass the "
                        "0.88 / 0.95 thresholds")

    amg = parser.add_argument_group(
        "AMG settings", "SamAutomaticMaskGenerator's knobs; defaults are the report's (32 points "
                        "per side, predicted-IoU threshold 0.88, min mask region area 100), the "
                        "rest upstream's")
    amg.add_argument("--points-per-side", type=int, default=32,
                     help="prompt grid of N x N points over the image (default: %(default)s)")
    amg.add_argument("--points-per-batch", type=int, default=None,
                     help=f"prompts decoded at once: more is faster and needs more memory "
                          f"(default: {GPU_POINTS_PER_BATCH} on CUDA, {CPU_POINTS_PER_BATCH} "
                          f"on CPU)")
    amg.add_argument("--pred-iou-thresh", type=float, default=0.88,
                     help="drop masks whose predicted IoU is below this (default: %(default)s)")
    amg.add_argument("--stability-score-thresh", type=float, default=0.95,
                     help="drop masks whose stability score is below this (default: %(default)s)")
    amg.add_argument("--stability-score-offset", type=float, default=1.0,
                     help="logit shift used to measure stability (default: %(default)s)")
    amg.add_argument("--box-nms-thresh", type=float, default=0.7,
                     help="box IoU above which a duplicate mask is dropped (default: %(default)s)")
    amg.add_argument("--crop-n-layers", type=int, default=0,
                     help="if > 0, also run on 4^k crops for k = 1..N (default: %(default)s)")
    amg.add_argument("--crop-nms-thresh", type=float, default=0.7,
                     help="box IoU for duplicates across crops (default: %(default)s)")
    amg.add_argument("--crop-overlap-ratio", type=float, default=512 / 1500,
                     help="overlap of neighbouring crops, fraction of the image side "
                          "(default: 512/1500)")
    amg.add_argument("--crop-n-points-downscale-factor", type=int, default=1,
                     help="points per side in crop layer k divided by this^k "
                          "(default: %(default)s)")
    amg.add_argument("--min-mask-region-area", type=int, default=100,
                     help="remove islands and holes smaller than this many pixels "
                          "(default: %(default)s)")
    return parser


def check_args(args):
    if args.points_per_side < 1:
        raise UserError(f"--points-per-side must be >= 1, got {args.points_per_side}")
    if args.points_per_batch is not None and args.points_per_batch < 1:
        raise UserError(f"--points-per-batch must be >= 1, got {args.points_per_batch}")
    if args.min_mask_region_area < 0 or args.crop_n_layers < 0:
        raise UserError("--min-mask-region-area and --crop-n-layers must be >= 0")
    if not 0.0 <= args.alpha <= 1.0:
        raise UserError(f"--alpha must be in [0, 1], got {args.alpha}")


# ---------------------------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------------------------
def image_id(path):
    """`0013_sat.jpg` -> `0013`; any other file -> its name without extension."""
    stem = Path(path).stem
    return stem[: -len("_sat")] if stem.endswith("_sat") else stem


def list_inputs(inputs, ids=None):
    """Files to segment, in the order given: files as they are, folders expanded.

    A folder gives its `{id}_sat.jpg` for each of `ids`, else all its `*_sat.jpg` (so the
    `*_mask.png` beside them are not segmented), else all its images. A path that does not exist
    is an error; an existing file that cannot be decoded is skipped later, with a message.
    """
    files, folders = [], []
    for p in map(Path, inputs):
        if p.is_dir():
            folders.append(p)
            if ids:
                files += [p / f"{i}_sat.jpg" for i in ids if (p / f"{i}_sat.jpg").is_file()]
            else:
                files += sorted(p.glob("*_sat.jpg")) or sorted(
                    q for q in p.iterdir() if q.is_file() and q.suffix.lower() in IMAGE_EXTENSIONS)
        elif p.exists():
            files.append(p)
        else:
            raise UserError(f"--input {p} does not exist")
    if ids:
        if not folders:
            raise UserError("--ids picks {id}_sat.jpg files from folders; give a folder to --input")
        found = {image_id(f) for f in files}
        missing = [i for i in ids if i not in found]
        if missing:
            raise UserError(f"no {missing[0]}_sat.jpg in {', '.join(map(str, folders))} "
                            f"({len(missing)} of the --ids missing)")
    if not files:
        raise UserError(f"no images in {', '.join(map(str, inputs))}")
    seen = {}
    for f in files:
        if image_id(f) in seen:
            raise UserError(f"{seen[image_id(f)]} and {f} would both write {image_id(f)}_sam.png; "
                            "segment them in separate runs")
        seen[image_id(f)] = f
    return files


# ---------------------------------------------------------------------------------------------
# model
# ---------------------------------------------------------------------------------------------
def infer_model_type(state_dict):
    """vit_h / vit_l / vit_b from the width of the patch embedding, or None."""
    weight = state_dict.get(PATCH_KEY) if isinstance(state_dict, dict) else None
    if not isinstance(weight, torch.Tensor) or weight.ndim != 4:
        return None
    return EMBED_DIM_TO_TYPE.get(weight.shape[0])


def load_sam_state_dict(checkpoint, model_type, map_location="cpu"):
    """The state_dict of a SAM checkpoint on `map_location`, with one-line errors.

    segment_anything's build_sam calls torch.load(f) with no map_location (a GPU-saved file
    fails on a CPU machine) and unpickles arbitrary objects; here the official files (plain
    tensor dicts) load with weights_only=True. Only a file that needs more is fully unpickled.
    """
    path = Path(checkpoint)
    fetch = (f"run `bash hw1_download.sh sam` (it writes checkpoints/{CHECKPOINT_NAMES['vit_h']})"
             if model_type == "vit_h" else
             f"`bash hw1_download.sh sam` fetches only ViT-H ({CHECKPOINT_NAMES['vit_h']}); get "
             f"{CHECKPOINT_NAMES[model_type]} from the segment-anything README")
    if not path.is_file():
        raise UserError(f"SAM checkpoint {path} does not exist; {fetch}")
    state = None
    for weights_only in (True, False):
        try:
            state = torch.load(path, map_location=map_location, weights_only=weights_only)
            break
        except pickle.UnpicklingError:
            if not weights_only:
                raise UserError(f"SAM checkpoint {path} cannot be unpickled; {fetch}") from None
        except Exception as e:  # RuntimeError, EOFError, ... from a truncated or foreign file
            raise UserError(f"SAM checkpoint {path} cannot be read ({type(e).__name__}); it is "
                            f"truncated or not a PyTorch file; {fetch}") from None
    if isinstance(state, dict) and PATCH_KEY not in state:
        for key in ("model", "state_dict"):  # a training checkpoint that wraps the weights
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict):
        raise UserError(f"{path} is not a SAM state_dict; {fetch}")
    state = utils.strip_prefixes(state, ("module.", "_orig_mod."))
    found = infer_model_type(state)
    if found is None:
        raise UserError(f"{path} is not a SAM checkpoint (no {PATCH_KEY} of width "
                        f"{'/'.join(map(str, EMBED_DIM_TO_TYPE))}); {fetch}")
    if found != model_type:
        raise UserError(f"{path} holds SAM {found} weights (width "
                        f"{state[PATCH_KEY].shape[0]}), not {model_type}: pass --model-type "
                        f"{found}, or {fetch}")
    return state


def build_sam_model(model_type="vit_h", checkpoint=None, device="cpu"):
    """SAM of `model_type` in eval mode on `device`; weights from `checkpoint` (None: random).

    The architecture comes from segment_anything's registry built with checkpoint=None; the
    weights are loaded here (load_sam_state_dict), so the file maps to `device` directly and a
    wrong file is one line, not a traceback.
    """
    if model_type not in MODEL_TYPES:
        raise UserError(f"unknown --model-type {model_type}; choose from {', '.join(MODEL_TYPES)}")
    device = torch.device(device)
    state = load_sam_state_dict(checkpoint, model_type, device) if checkpoint else None
    model = sam_model_registry[model_type](checkpoint=None).to(device)
    if state is not None:
        target = model.state_dict()
        missing = [k for k in target if k not in state]
        unexpected = [k for k in state if k not in target]
        wrong = [k for k in state if k in target and state[k].shape != target[k].shape]
        if missing or unexpected or wrong:
            k = (missing or unexpected or wrong)[0]
            raise UserError(f"{checkpoint} does not fit SAM {model_type}: {len(missing)} missing, "
                            f"{len(unexpected)} unexpected, {len(wrong)} wrongly shaped tensors "
                            f"(e.g. {k}); run `bash hw1_download.sh sam` for the official file")
        model.load_state_dict(state)
        del state
    return model.eval()


def autocast_sam(model, context):
    """Run SAM's image encoder and mask decoder under `context()` and return float32 from both.

    `context` is a zero-argument callable giving a context manager: utils.autocast(device, amp)
    (bf16 on CUDA, a no-op on CPU). Nearly all of the compute is in these two networks (the
    decoder runs once per prompt point, 1024 times per image at 32 points per side). The mask
    generator then thresholds logits, computes stability scores, runs torchvision NMS (which
    wants float boxes and scores of one dtype) and converts to numpy (which has no bf16), so
    both networks hand back float32; SamPredictor's upsampling of the mask logits to the image
    size runs outside the context, in float32, as upstream. Patches the two modules' `forward`
    on this instance only (the state_dict keys stay upstream's); calling it again is a no-op.
    """
    for module in (model.image_encoder, model.mask_decoder):
        if getattr(module, "_p2_sam_autocast", False):
            continue
        forward = module.forward

        def wrapped(*args, _forward=forward, **kwargs):
            with context():
                out = _forward(*args, **kwargs)
            if isinstance(out, tuple):  # mask decoder: (low-res mask logits, IoU predictions)
                return tuple(o.float() for o in out)
            return out.float()  # image encoder: (1, 256, 64, 64) embedding

        module.forward = wrapped
        module._p2_sam_autocast = True
    return model


def amg_kwargs(args, device):
    """SamAutomaticMaskGenerator keyword arguments from the AMG flags."""
    per_batch = args.points_per_batch or (
        GPU_POINTS_PER_BATCH if torch.device(device).type == "cuda" else CPU_POINTS_PER_BATCH)
    return {
        "points_per_side": args.points_per_side,
        "points_per_batch": per_batch,
        "pred_iou_thresh": args.pred_iou_thresh,
        "stability_score_thresh": args.stability_score_thresh,
        "stability_score_offset": args.stability_score_offset,
        "box_nms_thresh": args.box_nms_thresh,
        "crop_n_layers": args.crop_n_layers,
        "crop_nms_thresh": args.crop_nms_thresh,
        "crop_overlap_ratio": args.crop_overlap_ratio,
        "crop_n_points_downscale_factor": args.crop_n_points_downscale_factor,
        "min_mask_region_area": args.min_mask_region_area,
    }


def load_generator(args, device, model=None):
    """SamAutomaticMaskGenerator at the AMG flags, and the settings recorded with the comparison.

    `model` (a segment_anything Sam) replaces the checkpoint (tests). SAM's two networks run
    under bf16 autocast on CUDA with --amp (autocast_sam).
    """
    if model is None:
        model = build_sam_model(args.model_type, args.checkpoint, device)
        name = f"SAM {args.model_type} ({Path(args.checkpoint).name})"
    else:
        model = model.to(device).eval()
        name = f"SAM given by the caller ({type(model).__name__})"
    autocast_sam(model, lambda: utils.autocast(device, args.amp))
    kwargs = amg_kwargs(args, device)
    settings = {"model": name, **kwargs, "amp": args.amp and device.type == "cuda",
                "device": str(device)}
    return SamAutomaticMaskGenerator(model, output_mode="binary_mask", **kwargs), settings


def generate_masks(generator, image):
    """Mask records of an (H, W, 3) uint8 image, largest area first (stable)."""
    records = generator.generate(image)
    records.sort(key=lambda r: r["area"], reverse=True)
    return records


def timed_masks(generator, image, path, device):
    """(generate_masks of `image`, seconds); running out of GPU memory is one line."""
    t0 = time.perf_counter()
    try:
        found = generate_masks(generator, image)
    except torch.OutOfMemoryError:
        raise UserError(f"out of GPU memory on {path}; lower --points-per-batch "
                        f"(now {generator.points_per_batch})") from None
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # the time of the work, not of its launch
    return found, time.perf_counter() - t0


# ---------------------------------------------------------------------------------------------
# drawing
# ---------------------------------------------------------------------------------------------
def mask_colours(n, seed=0):
    """(n, 3) uint8 random colours; the k-th goes to the k-th mask painted (largest first)."""
    return (np.random.default_rng(seed).random((n, 3)) * 255).round().astype(np.uint8)


def draw_overlay(image, masks, alpha=0.35, seed=0):
    """(H, W, 3) uint8 image with boolean (H, W) masks blended in random colours.

    Masks are painted largest first, so a small mask inside a large one keeps its own colour;
    each pixel shows the colour of the smallest mask covering it at opacity `alpha` (SAM's
    notebook `show_anns`), pixels under no mask are the image unchanged.
    """
    image = np.asarray(image, dtype=np.uint8)
    canvas = np.zeros_like(image)
    covered = np.zeros(image.shape[:2], dtype=bool)
    colours = mask_colours(len(masks), seed)
    for rank, i in enumerate(paint_order(masks)):
        m = np.asarray(masks[i], dtype=bool)
        if m.shape != image.shape[:2]:
            raise ValueError(f"mask {i} is {m.shape}, the image {image.shape[:2]}")
        canvas[m] = colours[rank]
        covered |= m
    out = image.astype(np.float32)
    out[covered] = (1 - alpha) * out[covered] + alpha * canvas[covered]
    return out.round().clip(0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# writing masks (as segment-anything's scripts/amg.py)
# ---------------------------------------------------------------------------------------------
def encode_rle(masks):
    """COCO RLE of each boolean (H, W) mask: compressed (counts a string) when pycocotools is
    installed, else COCO's uncompressed form ({"size": [H, W], "counts": [run lengths]}, column
    major), which pycocotools.mask.frPyObjects and segment_anything's rle_to_mask both read."""
    if not len(masks):
        return []
    rles = mask_to_rle_pytorch(torch.from_numpy(np.stack([np.asarray(m, bool) for m in masks])))
    try:
        return [coco_encode_rle(r) for r in rles]
    except ImportError:  # pycocotools is optional, as in upstream
        return rles


def mask_records_json(records):
    """Upstream's mask records with the segmentation as COCO RLE (JSON-ready)."""
    rles = encode_rle([r["segmentation"] for r in records])
    return [{**{k: v for k, v in r.items() if k != "segmentation"}, "segmentation": rle}
            for r, rle in zip(records, rles)]


def write_image_outputs(out, i, image, found, args):
    """`{i}_sam.png`, and with --save-masks / --json the masks as amg.py writes them; returns
    the overlay."""
    overlay = draw_overlay(image, [r["segmentation"] for r in found], args.alpha, args.seed)
    data.save_image(out / f"{i}_sam.png", overlay)
    if args.save_masks:
        write_masks_to_folder(found, out / MASKS_DIR / i)
    if args.json:
        write_json(out / f"{i}_sam.json", mask_records_json(found))
    return overlay


def write_figure(figure, shown):
    """The overlays of `shown` ({id: view}, in figure order) side by side at `figure`."""
    if not shown:
        return
    tile_figure([[(f"{i} ({count(v['masks'], 'mask')})", v["overlay"])
                  for i, v in shown.items()]], figure)
    print(f"figure: {figure}")


def print_speed(seconds, device):
    if seconds:
        msg = f"{len(seconds)} image(s), {sum(seconds) / len(seconds):.2f} s/image on {device}"
        if len(seconds) > 1:
            msg += f" ({sum(seconds[1:]) / (len(seconds) - 1):.2f} s/image without the first)"
        print(msg)


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------
def main(args, model=None):
    """Segment every input; `model` (a segment_anything Sam) replaces the checkpoint (tests)."""
    check_args(args)
    device = utils.get_device(args.device)
    utils.seed_everything(args.seed)
    utils.setup_precision(device, args.amp)
    files = list_inputs(args.input, args.ids)
    figure_ids = args.figure_ids or args.ids or [image_id(f) for f in files[:3]]
    out = training.prepare_output_dir(args.output_dir, args, overwrite=args.overwrite,
                                      marker=LOG_FILE)
    if args.figure is not None:  # checked now, not after every image is segmented
        writable_dir(Path(args.figure).parent, "--figure")
    generator, settings = load_generator(args, device, model)
    write_json(out / SETTINGS_FILE, settings)  # quoted by p2_sam_vs_model_b.py
    training.print_run_header(args, device, batch_size=settings["points_per_batch"])
    print(f"{settings['model']} | {'bf16 autocast' if settings['amp'] else 'fp32'} | "
          f"{len(files)} image(s)")

    views, failed, seconds = {}, [], []
    for k, path in enumerate(files, 1):
        i = image_id(path)
        try:
            image = read_image(path)  # (H, W, 3) uint8 RGB
        except UserError as e:
            print(f"[{k}/{len(files)}] skipping {path}: {e.message}", file=sys.stderr)
            failed.append(str(path))
            continue
        found, dt = timed_masks(generator, image, path, device)
        masks = [r["segmentation"] for r in found]  # (H, W) bool each, largest first
        view = {"masks": len(masks), "overlay": write_image_outputs(out, i, image, found, args)}
        line = {"id": i, "file": str(path), "masks": len(masks), "seconds": round(dt, 4)}
        print(f"[{k}/{len(files)}] {path.name}: {count(len(masks), 'mask')} in {dt:.2f} s")
        seconds.append(dt)
        append_jsonl(out / LOG_FILE, line)
        if i in figure_ids:
            views[i] = view

    write_figure(args.figure or out / "sam_figure.png",
                 {i: views[i] for i in figure_ids if i in views})
    print_speed(seconds, device)
    print(json.dumps({"output_dir": str(out), "images": len(seconds), "skipped": len(failed)}))
    if failed:
        raise UserError(f"{len(failed)} input(s) could not be read and were skipped: "
                        + ", ".join(failed))
    return out


if __name__ == "__main__":
    cli.run(main, get_args_parser())
