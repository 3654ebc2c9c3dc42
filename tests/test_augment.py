"""Every random transform of both problems draws per sample, and does what it says.

Each test switches ONE transform on (everything else off, so nothing else can make two outputs
differ), feeds a batch of 16 copies of one image, and checks the outputs against what that
transform can produce, written out here: a flip is the image or its mirror, a brightness change
is clamp(x * f) with one f per image, and so on. A draw made once per batch instead of once per
sample makes all 16 outputs equal, which each test rules out. Problem 2's transforms also carry
the mask: wherever the augmented image shows a class's colour exactly, the augmented mask holds
that class.
"""

import numpy as np
import pytest
import torch

import augment
from data import PALETTE, UNKNOWN

B = 16
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def unnormalize(x):
    return x * STD + MEAN


def batch_of_one(size=32, seed=0):
    """(B, 3, size, size) uint8: 16 copies of one textured, asymmetric image."""
    g = torch.Generator().manual_seed(seed)
    image = torch.randint(20, 236, (1, 3, size, size), generator=g, dtype=torch.uint8)
    image[:, :, : size // 3, : size // 4] = 250  # a bright corner: no symmetry
    return image.expand(B, -1, -1, -1).contiguous()


def distinct(outputs, atol=1e-4):
    """How many different tensors are among outputs (B, ...)."""
    kinds = []
    for out in outputs:
        if not any(torch.allclose(out, k, atol=atol) for k in kinds):
            kinds.append(out)
    return len(kinds)


# ------------------------------------------------------------------------------ Problem 1
OFF = dict(scale=(1.0, 1.0), ratio=(1.0, 1.0), p_flip=0.0, jitter=(0.0, 0.0, 0.0, 0.0),
           p_jitter=0.0, p_gray=0.0, p_blur=0.0, p_solarize=0.0, degrees=0.0, translate=0.0)


def classify(seed=0, **on):
    aug = augment.ClassificationAugment(32, **{**OFF, **on},
                                        generator=torch.Generator().manual_seed(seed))
    x = batch_of_one()
    return x.float() / 255, unnormalize(aug(x))  # input in 0..1, (B, 3, 32, 32) output in 0..1


def test_everything_off_is_the_identity():
    x, out = classify()
    torch.testing.assert_close(out, x, atol=1e-5, rtol=0)


@pytest.mark.parametrize("on", [dict(scale=(0.08, 1.0)), dict(degrees=30.0),
                                dict(translate=0.1), dict(jitter=(0.0, 0.0, 0.0, 0.2),
                                                          p_jitter=1.0),
                                dict(p_blur=1.0, blur_sigma=(1.0, 2.0))],
                         ids=["crop", "rotation", "shift", "hue", "blur"])
def test_geometric_hue_and_blur_draws_differ_per_sample(on):
    x, out = classify(**on)
    assert distinct(out, atol=1e-6) == B  # each sample its own box / angle / shift / hue / sigma
    assert not torch.allclose(out[0], x[0], atol=1e-3)


def ramp_batch(size=64):
    """16 copies of an image whose red channel is x / (size - 1) and green y / (size - 1)."""
    t = torch.arange(size, dtype=torch.float64) / (size - 1)
    image = torch.stack([t.view(1, -1).expand(size, size), t.view(-1, 1).expand(size, size),
                         torch.full((size, size), 0.5, dtype=torch.float64)])
    return (image * 255).round().to(torch.uint8).unsqueeze(0).expand(B, -1, -1, -1).contiguous()


def crop_boxes(out):
    """(width, centre x, height, centre y) of the source box each output shows, as fractions of
    the source image, read off the ramps: the source coordinate of each output column (row) is
    a line in the output coordinate, of slope `width` through the box's centre."""
    size = out.shape[-1]
    centres = (torch.arange(size, dtype=torch.float64) + 0.5) / size  # output pixel centres
    design = torch.stack([centres - 0.5, torch.ones_like(centres)], 1)
    boxes = []
    for o in out.double():
        box = []
        for ramp in (o[0].mean(0), o[1].mean(1)):  # red along x, green along y
            source = (ramp * (size - 1) + 0.5) / size  # the source pixel centre it came from
            box += torch.linalg.lstsq(design, source[:, None]).solution.flatten().tolist()
        boxes.append(box)
    return torch.tensor(boxes).T  # (4, B)


def place(centre, side):
    """Where a box of `side` sits in its room: 0 at the left (top) edge, 1 at the right."""
    return (centre - side / 2) / (1 - side)


def many(values, digits=2):
    return len({round(v, digits) for v in values.tolist()}) >= B // 2


@pytest.mark.parametrize("scale", [(0.08, 1.0), (0.25, 0.25)], ids=["size", "position"])
def test_each_sample_draws_its_own_crop_box(scale):
    """Each sample draws its own area, aspect ratio and place in the image; with a fixed area
    (0.25) the aspect and the place must still differ."""
    aug = augment.ClassificationAugment(64, **{**OFF, "scale": scale, "ratio": (3 / 4, 4 / 3)},
                                        generator=torch.Generator().manual_seed(0))
    w, cx, h, cy = crop_boxes(unnormalize(aug(ramp_batch())))
    assert many(w / h), w / h
    if scale[0] == scale[1]:
        torch.testing.assert_close(w * h, torch.full_like(w, scale[0]), atol=2e-2, rtol=0)
    else:
        assert many(w * h), w * h
    inner = (w < 0.9) & (h < 0.9)  # a box nearly the whole image has no room to move
    assert inner.sum() >= B // 2
    assert many(place(cx, w)[inner]) and many(place(cy, h)[inner]), (cx, cy)


def test_each_sample_draws_its_own_segmentation_crop():
    aug = augment.SegmentationAugment(**{**SEG_OFF, "min_scale": 0.5},
                                      generator=torch.Generator().manual_seed(0))
    image = ramp_batch()
    out, _ = aug(image, torch.zeros(B, 64, 64, dtype=torch.uint8))
    w, cx, h, cy = crop_boxes(unnormalize(out))
    torch.testing.assert_close(w, h, atol=1e-2, rtol=0)  # square crops of side in [0.5, 1]
    assert ((w > 0.49) & (w < 1.01)).all(), w
    inner = w < 0.9
    assert many(w) and inner.sum() >= B // 2
    assert many(place(cx, w)[inner]) and many(place(cy, h)[inner]), (cx, cy)


def test_each_sample_flips_or_not():
    x, out = classify(p_flip=0.5)
    flipped = [torch.allclose(o, x[0].flip(-1), atol=1e-5) for o in out]
    same = [torch.allclose(o, x[0], atol=1e-5) for o in out]
    assert all(f or s for f, s in zip(flipped, same))
    assert 0 < sum(flipped) < B


@pytest.mark.parametrize("which", ["brightness", "contrast", "saturation"])
def test_each_colour_factor_is_drawn_per_sample(which):
    s = 0.2
    jitter = {"brightness": (s, 0, 0, 0), "contrast": (0, s, 0, 0),
              "saturation": (0, 0, s, 0)}[which]
    x, out = classify(jitter=jitter, p_jitter=1.0)
    gray = 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]  # (B, 1, H, W)
    # out = clamp(a + f * d): brightness a = 0, d = x; contrast a = mean gray (one number an
    # image), d = x - a; saturation a = the pixel's gray, d = x - a
    a = {"brightness": torch.zeros_like(x), "contrast": gray.mean((1, 2, 3), keepdim=True)
         .expand_as(x), "saturation": gray.expand_as(x)}[which]
    d = x - a
    inside = (out > 1e-3) & (out < 1 - 1e-3) & (d.abs() > 0.05)  # unclamped, informative
    factors = []
    for i in range(B):
        f = ((out[i] - a[i])[inside[i]] / d[i][inside[i]])
        assert f.numel() > 100
        assert f.max() - f.min() < 1e-3, (which, i)  # one factor for the whole image
        factors.append(f.mean().item())
        torch.testing.assert_close(out[i], (a[i] + factors[-1] * d[i]).clamp(0, 1), atol=2e-3,
                                   rtol=0)
    assert all(1 - s - 1e-3 <= f <= 1 + s + 1e-3 for f in factors), factors
    assert len({round(f, 4) for f in factors}) == B, factors  # one draw per sample


@pytest.mark.parametrize("on, changed", [
    (dict(p_gray=0.5), lambda o, x: torch.allclose(o[0], o[1]) and torch.allclose(o[1], o[2])),
    (dict(p_solarize=0.5), lambda o, x: torch.allclose(o, torch.where(x < 0.5, x, 1 - x),
                                                       atol=1e-5)),
    (dict(jitter=(0.2, 0, 0, 0), p_jitter=0.5), lambda o, x: not torch.allclose(o, x)),
    (dict(p_blur=0.5), lambda o, x: not torch.allclose(o, x, atol=1e-3))],
    ids=["grayscale", "solarize", "jitter coin", "blur coin"])
def test_each_coin_is_tossed_per_sample(on, changed):
    x, out = classify(**on)
    applied = [changed(o, x[0]) for o in out]
    kept = [torch.allclose(o, x[0], atol=1e-5) for o in out]
    assert all(a != k for a, k in zip(applied, kept))  # each output is one of the two
    assert 0 < sum(applied) < B, applied


def test_validation_view_is_deterministic_and_has_no_augmentation():
    view = augment.ClassificationAugment(32, train=False)
    x = batch_of_one()
    torch.testing.assert_close(unnormalize(view(x)), x.float() / 255, atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------ Problem 2
SEG_OFF = dict(min_scale=1.0, p_flip=0.0, p_rot90=0.0, degrees=0.0, color=0.0)
COLOURS = torch.tensor(PALETTE, dtype=torch.float32) / 255  # class c's colour, Unknown black


def seg_batch(size=32, cell=8, classes=7):
    """16 copies of one mask of cell x cell blocks of classes 0..classes-1 and its image, each
    block painted in its class's palette colour (Unknown black)."""
    g = torch.Generator().manual_seed(1)
    n = size // cell
    blocks = torch.randint(0, classes, (n, n), generator=g)
    blocks[0, 0], blocks[0, 1] = 2, 4  # asymmetric
    mask = blocks.repeat_interleave(cell, 0).repeat_interleave(cell, 1).to(torch.uint8)
    image = (COLOURS[mask.long()].permute(2, 0, 1) * 255).round().to(torch.uint8)
    return (image.unsqueeze(0).expand(B, -1, -1, -1).contiguous(),
            mask.unsqueeze(0).expand(B, -1, -1).contiguous())


def segment(seed=0, classes=7, **on):
    aug = augment.SegmentationAugment(**{**SEG_OFF, **on},
                                      generator=torch.Generator().manual_seed(seed))
    image, mask = seg_batch(classes=classes)
    out, out_mask = aug(image, mask)
    return image.float() / 255, mask.long(), unnormalize(out), out_mask


def assert_mask_follows_image(out, out_mask, min_share=0.6):
    """Where the augmented image shows a class colour exactly, the mask holds that class."""
    diff = (out.permute(0, 2, 3, 1).unsqueeze(3) - COLOURS.view(1, 1, 1, 7, 3)).abs().amax(-1)
    close, cls = diff.min(-1)  # (B, H, W) distance to the nearest class colour, which class
    exact = close < 2e-3
    assert exact.float().mean() > min_share
    assert torch.equal(out_mask[exact], cls[exact])


def test_segmentation_off_is_the_identity():
    x, m, out, out_mask = segment()
    torch.testing.assert_close(out, x, atol=1e-5, rtol=0)
    assert torch.equal(out_mask, m)


def test_flips_are_drawn_per_sample_and_carry_the_mask():
    x, m, out, out_mask = segment(p_flip=0.5)
    versions = {(): (x[0], m[0]), (-1,): (x[0].flip(-1), m[0].flip(-1)),
                (-2,): (x[0].flip(-2), m[0].flip(-2)), (-2, -1): (x[0].flip(-2, -1),
                                                                  m[0].flip(-2, -1))}
    seen = set()
    for o, om in zip(out, out_mask):
        match = [k for k, (vx, vm) in versions.items() if torch.allclose(o, vx, atol=1e-5)]
        assert len(match) == 1 and torch.equal(om, versions[match[0]][1])
        seen.add(match[0])
    assert len(seen) == 4  # no flip, horizontal, vertical, both: each sample its own coins


def test_quarter_turns_are_drawn_per_sample_and_carry_the_mask():
    x, m, out, out_mask = segment(p_rot90=0.75)
    turns = set()
    for o, om in zip(out, out_mask):
        k = [k for k in range(4) if torch.allclose(o, x[0].rot90(k, (-2, -1)), atol=1e-5)]
        assert len(k) == 1, "not a quarter turn of the image"
        assert torch.equal(om, m[0].rot90(k[0], (-2, -1)))
        turns.add(k[0])
    assert turns == {0, 1, 2, 3}


def test_rotation_fills_unknown_and_black_per_sample():
    x, m, out, out_mask = segment(degrees=30.0)
    assert distinct(out) == B
    assert_mask_follows_image(out, out_mask)
    # without Unknown in the source, every Unknown pixel was brought in by the rotation
    x, m, out, out_mask = segment(degrees=30.0, classes=6)
    filled = out_mask == UNKNOWN
    assert filled[:, 0, 0].sum() > B // 2  # the corners come from outside for most angles
    assert out.permute(0, 2, 3, 1)[filled].abs().max() < 1e-5  # black exactly there
    assert_mask_follows_image(out, out_mask)


def test_scale_crops_are_drawn_per_sample_and_carry_the_mask():
    x, m, out, out_mask = segment(min_scale=0.5)
    assert distinct(out) == B
    assert_mask_follows_image(out, out_mask, min_share=0.4)


def test_colour_factors_are_drawn_per_sample_and_leave_the_mask():
    """Brightness b, contrast c and saturation s, in that order, each image its own three
    factors and its own coin (p 0.5). The image's left half is gray (equal channels), where
    out = b * (c * (v - mu) + mu) with mu the image's mean gray, which gives b and c; its right
    half is coloured, where the saturation blend with the pixel's gray gives s."""
    g = torch.Generator().manual_seed(2)
    image = torch.randint(60, 190, (1, 3, 32, 32), generator=g, dtype=torch.uint8)
    image[:, :, :, :16] = image[:, :1, :, :16]  # gray left half
    x = image.expand(B, -1, -1, -1).contiguous()
    mask = torch.randint(0, 7, (B, 32, 32), generator=g, dtype=torch.uint8)
    aug = augment.SegmentationAugment(**{**SEG_OFF, "color": 0.1},
                                      generator=torch.Generator().manual_seed(0))
    out, out_mask = aug(x, mask)
    out, x = unnormalize(out).double(), x.double() / 255
    assert torch.equal(out_mask, mask.long())
    gray = lambda t: 0.299 * t[0] + 0.587 * t[1] + 0.114 * t[2]  # (3, H, W) -> (H, W)  # noqa: E731
    mu = gray(x[0]).mean()
    factors, kept = [], 0
    for o in out:
        if torch.allclose(o, x[0], atol=1e-5):
            kept += 1
            continue
        v, w = x[0, 0, :, :16].flatten(), o[0, :, :16].flatten()  # gray half: w = p v + q
        p, q = torch.linalg.lstsq(torch.stack([v, torch.ones_like(v)], 1), w[:, None]
                                  ).solution.flatten().tolist()
        b = p + q / mu.item()  # p = b c, q = b mu (1 - c)
        c = p / b
        y = (b * (c * (x[0] - mu) + mu))[:, :, 16:]  # the coloured half after b and c
        yg = gray(y)
        sat = ((o[:, :, 16:] - yg) / (y - yg))[(y - yg).abs() > 0.05]
        assert sat.max() - sat.min() < 1e-3  # one saturation factor for the image
        torch.testing.assert_close(o[:, :, :16], (b * (c * (x[0, :, :, :16] - mu) + mu)),
                                   atol=1e-5, rtol=0)
        factors.append((b, c, sat.mean().item()))
    assert 0 < kept < B  # the coin is tossed per sample
    for k, name in enumerate(("brightness", "contrast", "saturation")):
        values = [f[k] for f in factors]
        assert all(0.9 - 1e-3 < v < 1.1 + 1e-3 for v in values), (name, values)
        assert len({round(v, 4) for v in values}) == len(values), (name, values)


def test_exact_report_steps_rotate_by_nearest_and_shift_by_whole_pixels():
    """ClassificationAugment(exact=True), the report's torchvision steps: RandomRotation
    samples (nearest neighbour: every output value is an input value, or the black fill), and
    RandomCrop(padding=4, reflect) moves each image by its own whole-pixel offset in -4..4,
    the border reflected (numpy's "reflect", as torch's)."""
    x, out = classify(degrees=15.0, exact=True)
    values = set((x[0] * 255).round().flatten().tolist()) | {0.0}
    assert set((out * 255).round().flatten().tolist()) <= values
    assert distinct(out) == B
    x, out = classify(translate=4 / 32, exact=True)
    padded = np.pad(x[0].numpy(), ((0, 0), (4, 4), (4, 4)), mode="reflect")
    offsets = []
    for o in out.numpy():
        match = [(dy, dx) for dy in range(9) for dx in range(9)
                 if np.allclose(o, padded[:, dy:dy + 32, dx:dx + 32], atol=1e-5)]
        assert len(match) == 1, "not a whole-pixel shift of the reflect-padded image"
        offsets.append(match[0])
    assert len(set(offsets)) >= B // 2  # each image its own offset


def test_exact_segmentation_rotation_resamples_by_nearest():
    """SegmentationAugment(exact=True), the report's FCN32s code: TF.rotate's nearest
    neighbour for the image, whole-degree angles; the mask still follows the image."""
    x, m, out, out_mask = segment(degrees=30.0, exact=True)
    colours = {tuple(c) for c in (COLOURS * 255).round().tolist()}
    pixels = {tuple(p) for p in (out.permute(0, 2, 3, 1) * 255).round().reshape(-1, 3).tolist()}
    assert pixels <= colours  # no blend of two blocks anywhere
    assert distinct(out) >= B // 2  # 61 whole angles: two images may draw the same one
    assert_mask_follows_image(out, out_mask, min_share=0.99)


def test_exact_jitter_applies_its_factors_in_each_images_own_order(monkeypatch):
    """ColorJitter's randperm(4), per image: with the same factors (the same generator), the
    order [0, 1, 2, 3] gives the fixed order's result, the reverse another one where clamping
    makes the order matter, and each image follows its own row of `order`; exact=True draws a
    permutation per image."""
    image = torch.full((B, 3, 8, 8), 230, dtype=torch.uint8)
    image[:, 0] = 40  # a bright, saturated colour: brightness clamps, hue moves it
    x = image.float() / 255

    def jitter(order):
        aug = augment.ClassificationAugment(8, **{**OFF, "jitter": (0.3, 0.3, 0.3, 0.2),
                                                  "p_jitter": 1.0},
                                            generator=torch.Generator().manual_seed(0))
        return aug._jitter(x.clone(), order)

    fixed = jitter(None)
    forward = torch.arange(4).repeat(B, 1)
    torch.testing.assert_close(jitter(forward), fixed, rtol=0, atol=0)
    backward = forward.flip(1)
    reversed_ = jitter(backward)
    assert not torch.allclose(reversed_, fixed, atol=1e-3)
    mixed = torch.where(torch.arange(B).view(-1, 1) < B // 2, forward, backward)
    both = jitter(mixed)
    torch.testing.assert_close(both[:B // 2], fixed[:B // 2], rtol=0, atol=0)
    torch.testing.assert_close(both[B // 2:], reversed_[B // 2:], rtol=0, atol=0)

    orders = []
    aug = augment.ClassificationAugment(8, **{**OFF, "jitter": (0.3, 0.3, 0.3, 0.2),
                                              "p_jitter": 1.0}, exact=True,
                                        generator=torch.Generator().manual_seed(0))
    real = aug._jitter
    monkeypatch.setattr(aug, "_jitter", lambda x, order: orders.append(order) or real(x, order))
    aug(image)
    order = orders[0]
    assert order.shape == (B, 4)
    assert torch.equal(order.sort(1).values, forward)  # each row a permutation of 0..3
    assert len({tuple(r) for r in order.tolist()}) >= B // 2  # drawn per image
