"""Per-sample random augmentation of whole uint8 batches on the training device.

Problem 1: crop / flip / colour jitter / grayscale / blur / solarize (ClassificationAugment, whose
train=False view is also the inference transform); Problem 2: flips, 90-degree rotations and a
scale crop applied jointly to image and mask (SegmentationAugment). Every draw is per sample,
from a generator that can be seeded per epoch, so a resumed or multi-process run replays them.
"""

import functools
import math

import torch
import torch.nn.functional as F

from data import UNKNOWN, as_hw

IMAGENET_MEAN = (0.485, 0.456, 0.406)


IMAGENET_STD = (0.229, 0.224, 0.225)


def to_float(x):
    """uint8 (B, 3, H, W) in 0..255 -> float in 0..1; a float tensor passes unchanged."""
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()


@functools.lru_cache(maxsize=32)
def _channel_constants(values, device, dtype):
    """A (1, C, 1, 1) constant on `device`, made once: building it at every call would copy it
    from the host and so wait for the GPU in the middle of each training step."""
    with torch.inference_mode(False):
        return torch.tensor(values, dtype=dtype).view(1, -1, 1, 1).to(device)


def normalize(x, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    m = _channel_constants(tuple(mean), x.device, x.dtype)
    s = _channel_constants(tuple(std), x.device, x.dtype)
    return (x - m) / s


def _rand(n, device, generator=None, low=0.0, high=1.0, shard=(0, 1)):
    """U(low, high) draws for n samples (n: an int, or a shape whose first entry is the batch).
    shard = (rank, world_size): draw for the global batch (n * world_size samples) and keep this
    rank's rows rank, rank + world_size, ... (the samples index_batches gives it), so that with
    one generator seeded alike on every rank, N ranks draw what one process would."""
    r, world = shard
    shape = (n,) if isinstance(n, int) else tuple(n)
    u = torch.rand((shape[0] * world, *shape[1:]), device=device, generator=generator)
    return u[r::world] * (high - low) + low


def random_crop_boxes(n, scale, ratio, device, generator=None, attempts=10, shard=(0, 1)):
    """RandomResizedCrop boxes for n images at once, as (width, height, cx, cy) fractions of
    the source image. Same law as torchvision's: area ~ U(scale), log-ratio ~ U(log ratio), up to
    `attempts` rejections, then the whole image (torchvision falls back to a centre crop)."""
    area = _rand((n, attempts), device, generator, *scale, shard=shard)
    log_r = _rand((n, attempts), device, generator, math.log(ratio[0]), math.log(ratio[1]),
                  shard=shard)
    r = torch.exp(log_r)
    w = torch.sqrt(area * r)
    h = torch.sqrt(area / r)
    ok = (w <= 1) & (h <= 1)
    first = torch.where(ok.any(1), ok.float().argmax(1), torch.full((n,), -1, device=device))
    idx = first.clamp(min=0).unsqueeze(1)
    w = torch.where(first >= 0, w.gather(1, idx).squeeze(1), torch.ones(n, device=device))
    h = torch.where(first >= 0, h.gather(1, idx).squeeze(1), torch.ones(n, device=device))
    cx = (1 - w) * _rand(n, device, generator, shard=shard) + w / 2
    cy = (1 - h) * _rand(n, device, generator, shard=shard) + h / 2
    return w, h, cx, cy


def crop_theta(w, h, cx, cy, flip_x=None, flip_y=None, rot90=None):
    """Affine matrices (B, 2, 3) for F.affine_grid that take the box (w, h, cx, cy) of each source
    image to the whole output, with optional per-sample flips and quarter turns (k in 0..3).

    In normalised coordinates (-1..1) a box of width w centred at cx is x_in = w * x_out +
    (2 cx - 1). Flips negate a column; a quarter turn maps (x, y) -> (-y, x). With
    align_corners=False these maps send pixel centres to pixel centres whenever the box is the
    whole image, so flips and rotations of a square image are exact (masks stay exact too)."""
    b = w.shape[0]
    # rows act on output (x, y); start with the rotation/flip part R (B, 2, 2), then scale
    rot = torch.eye(2, device=w.device).repeat(b, 1, 1)
    if rot90 is not None:  # cos and sin of k quarter turns, exactly 1, 0 or -1 (no host copy)
        cos = torch.cos(rot90.float() * (math.pi / 2)).round()
        sin = torch.sin(rot90.float() * (math.pi / 2)).round()
        rot = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], 1)
    if flip_x is not None:
        rot[:, :, 0] = torch.where(flip_x.unsqueeze(1), -rot[:, :, 0], rot[:, :, 0])
    if flip_y is not None:
        rot[:, :, 1] = torch.where(flip_y.unsqueeze(1), -rot[:, :, 1], rot[:, :, 1])
    theta = torch.zeros(b, 2, 3, device=w.device)
    theta[:, 0, :2] = rot[:, 0] * w.unsqueeze(1)
    theta[:, 1, :2] = rot[:, 1] * h.unsqueeze(1)
    theta[:, 0, 2] = 2 * cx - 1
    theta[:, 1, 2] = 2 * cy - 1
    return theta


def rotate_theta(theta, angle):
    """theta (B, 2, 3), output -> source, followed on the output by a rotation of `angle`
    radians (B,) about the centre (torchvision's rotate): out(p) = src(theta(R(-angle) p))."""
    cos, sin = torch.cos(angle), torch.sin(angle)
    rot = torch.stack([torch.stack([cos, sin], -1), torch.stack([-sin, cos], -1)], 1)  # R(-a)
    out = theta.clone()
    out[:, :, :2] = theta[:, :, :2] @ rot
    return out


def warp(x, theta, out_hw, mode="bilinear", padding="reflection"):
    """Resample each image of x (B, C, H, W) float through its own affine map -> (B, C, h, w)."""
    grid = F.affine_grid(theta.to(x.dtype), (x.shape[0], x.shape[1], *out_hw), align_corners=False)
    return F.grid_sample(x, grid, mode=mode, padding_mode=padding, align_corners=False)


def shift_reflect(x, top, left, pad):
    """torchvision's RandomCrop(size, padding=pad, padding_mode="reflect") with the crop of each
    image at its own whole-pixel offset: x (B, C, H, W), top/left (B,) int64 in 0..2 pad."""
    b, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")            # (B, C, H + 2p, W + 2p)
    rows = torch.arange(h, device=x.device).view(1, h, 1) + top.view(b, 1, 1)   # (B, H, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w) + left.view(b, 1, 1)  # (B, 1, W)
    batch = torch.arange(b, device=x.device).view(b, 1, 1)
    return padded[batch, :, rows, cols].permute(0, 3, 1, 2)            # (B, H, W, C) -> NCHW


def rgb_to_gray(x):
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])


def rgb_to_hsv(x):
    r, g, b = x.unbind(1)
    maxc, _ = x.max(1)
    minc, _ = x.min(1)
    v = maxc
    delta = maxc - minc
    s = torch.where(maxc > 0, delta / maxc.clamp(min=1e-8), torch.zeros_like(maxc))
    d = delta.clamp(min=1e-8)
    h = torch.where(maxc == r, ((g - b) / d) % 6,
                    torch.where(maxc == g, (b - r) / d + 2, (r - g) / d + 4))
    h = torch.where(delta > 0, h / 6.0, torch.zeros_like(h))
    return torch.stack([h % 1.0, s, v], 1)


def hsv_to_rgb(x):
    h, s, v = x.unbind(1)
    k = torch.stack([(5 + h * 6) % 6, (3 + h * 6) % 6, (1 + h * 6) % 6], 1)
    return v.unsqueeze(1) - (v * s).unsqueeze(1) * torch.clamp(torch.minimum(k, 4 - k), 0, 1)


def gaussian_blur(x, sigma, kernel_size):
    """Blur each image with its own sigma (B,) using one grouped separable convolution."""
    b, c, h, w = x.shape
    half = kernel_size // 2
    t = torch.arange(-half, half + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-(t.view(1, -1) ** 2) / (2 * sigma.view(-1, 1).to(x.dtype) ** 2))  # (B, K)
    k = k / k.sum(1, keepdim=True)
    k = k.repeat_interleave(c, 0)  # one kernel per (image, channel) group
    y = x.reshape(1, b * c, h, w)
    g = b * c
    y = F.conv2d(F.pad(y, (half, half, 0, 0), mode="reflect"), k.view(g, 1, 1, -1), groups=g)
    y = F.conv2d(F.pad(y, (0, 0, half, half), mode="reflect"), k.view(g, 1, -1, 1), groups=g)
    return y.view(b, c, h, w)


class _BatchAugment:
    """What both augmentations share: `generator` (None: torch's global RNG) and `shard`
    (rank, world_size) under torchrun (see _rand); the training loops set both per epoch."""

    generator = None
    shard = (0, 1)

    def _uniform(self, x):
        """U(low=0, high=1) draws, one per sample of the batch x: self._uniform(x)(low, high)."""
        return functools.partial(_rand, x.shape[0], x.device, self.generator, shard=self.shard)


class ClassificationAugment(_BatchAugment):
    """Per-sample random augmentation of a uint8 batch on its own device (Problem 1).

    out = normalize(solarize?(blur?(gray?(jitter?(shift(rotate(flip?(random_resized_crop(x))))))))),
    each "?" an independent coin per image, each image with its own crop box, rotation angle in
    [-degrees, degrees] (uncovered corners black, as torchvision's rotate), shift of up to
    `translate` (a fraction of the side: a random crop of an image padded by translate x side,
    reflected), jitter factors and blur sigma.
    Defaults are the report's list (RandomResizedCrop(128), flip, ColorJitter(0.2 x 4), always);
    BYOL's paper views set p_jitter=0.8, jitter=(0.4, 0.4, 0.2, 0.1), p_gray=0.2, p_blur and
    p_solarize. Jitter factors follow torchvision (brightness/contrast/saturation in
    [1-s, 1+s], hue shift in [-s, s]), in a fixed order: one warp does crop, flip and rotation.
    `exact=True` runs the report's torchvision steps one by one instead: the crop and flip
    (bilinear), the rotation by nearest neighbour (RandomRotation's default), the shift as a
    crop of the reflect-padded image at a whole-pixel offset (RandomCrop(padding=4,
    padding_mode="reflect")), and the jitter's four factors in a random order per image
    (ColorJitter); slower on a GPU (three resamplings, 16 colour passes instead of 4). The
    colour steps stay in float where PIL rounds each step to 8 bits.
    `train=False` gives the evaluation view: resize to `size` (no crop, no colour change).
    """

    def __init__(self, size=128, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), p_flip=0.5,
                 jitter=(0.2, 0.2, 0.2, 0.2), p_jitter=1.0, p_gray=0.0, p_blur=0.0,
                 blur_sigma=(0.1, 2.0), p_solarize=0.0, degrees=0.0, translate=0.0, train=True,
                 generator=None, exact=False):
        self.size = as_hw(size)
        self.degrees, self.translate = degrees, translate
        self.scale, self.ratio, self.p_flip = scale, ratio, p_flip
        self.jitter, self.p_jitter, self.p_gray = jitter, p_jitter, p_gray
        self.p_blur, self.blur_sigma, self.p_solarize = p_blur, blur_sigma, p_solarize
        self.train, self.generator, self.exact = train, generator, exact
        # a 23-px kernel at 224 px is BYOL's 10%; keep that fraction, odd, at least 3
        self.kernel_size = max(3, int(0.1 * self.size[0]) // 2 * 2 + 1)

    def __call__(self, x):
        x = to_float(x)
        if not self.train:
            if x.shape[-2:] != self.size:
                x = F.interpolate(x, size=self.size, mode="bilinear", antialias=True,
                                  align_corners=False)
            return normalize(x)
        rand, coin = self._uniform(x), (-1, 1, 1, 1)
        w, h, cx, cy = random_crop_boxes(x.shape[0], self.scale, self.ratio, x.device,
                                         self.generator, shard=self.shard)
        flip = rand() < self.p_flip
        theta = crop_theta(w, h, cx, cy, flip_x=flip)
        if self.exact:
            x = self._exact_geometry(x, theta, rand)
        else:
            if self.degrees:  # torchvision's rotate: the corners it uncovers are black (fill 0)
                theta = rotate_theta(theta, rand(-self.degrees, self.degrees) * (math.pi / 180))
            x = warp(x, theta, self.size, padding="zeros" if self.degrees else "reflection")
            if self.translate:  # a random crop of the image padded by `translate`, reflected
                t = 2 * self.translate  # normalised coordinates span 2
                theta = torch.eye(2, 3, device=x.device).repeat(x.shape[0], 1, 1)
                theta[:, :, 2] = torch.stack([rand(-t, t), rand(-t, t)], 1)  # a pure shift
                x = warp(x, theta, self.size)
        if self.p_jitter > 0 and any(self.jitter):
            order = None
            if self.exact:  # ColorJitter's randperm(4), one per image
                order = _rand((x.shape[0], 4), x.device, self.generator,
                              shard=self.shard).argsort(1)
            x = torch.where((rand() < self.p_jitter).view(coin), self._jitter(x, order), x)
        if self.p_gray > 0:
            x = torch.where((rand() < self.p_gray).view(coin), rgb_to_gray(x).expand_as(x), x)
        if self.p_blur > 0:
            sigma = rand(*self.blur_sigma)
            x = torch.where((rand() < self.p_blur).view(coin),
                            gaussian_blur(x, sigma, self.kernel_size), x)
        if self.p_solarize > 0:
            x = torch.where((rand() < self.p_solarize).view(coin),
                            torch.where(x < 0.5, x, 1.0 - x), x)
        return normalize(x)

    def _exact_geometry(self, x, theta, rand):
        """The report's steps one by one (exact=True): crop + flip, rotation, shift."""
        x = warp(x, theta, self.size)  # RandomResizedCrop (bilinear) and the flip
        if self.degrees:  # RandomRotation: nearest neighbour, uncovered corners black
            angle = rand(-self.degrees, self.degrees) * (math.pi / 180)
            identity = torch.eye(2, 3, device=x.device).repeat(x.shape[0], 1, 1)
            x = warp(x, rotate_theta(identity, angle), self.size, mode="nearest",
                     padding="zeros")
        if self.translate:  # RandomCrop(size, padding=p, reflect): offsets 0..2p, whole pixels
            pad = round(self.translate * self.size[0])
            top, left = (rand(0, 2 * pad + 1).floor().long().clamp(max=2 * pad)
                         for _ in range(2))
            x = shift_reflect(x, top, left, pad)
        return x

    def _jitter(self, x, order=None):
        """Brightness, contrast, saturation, hue with per-sample factors; `order` (B, 4): each
        image's permutation of the four (ColorJitter's randperm), else that fixed order."""
        rand = self._uniform(x)
        b, c, s, hue = self.jitter
        view = (-1, 1, 1, 1)
        # the factors, drawn in one order whatever the order they are applied in
        factors = [rand(1 - b, 1 + b) if b else None, rand(1 - c, 1 + c) if c else None,
                   rand(1 - s, 1 + s) if s else None, rand(-hue, hue) if hue else None]

        def brightness(x, f):
            return (x * f.view(view)).clamp(0, 1)

        def contrast(x, f):
            mean = rgb_to_gray(x).mean((1, 2, 3), keepdim=True)
            return ((x - mean) * f.view(view) + mean).clamp(0, 1)

        def saturation(x, f):
            gray = rgb_to_gray(x)
            return ((x - gray) * f.view(view) + gray).clamp(0, 1)

        def shift_hue(x, f):
            hsv = rgb_to_hsv(x)
            hsv[:, 0] = (hsv[:, 0] + f.view(-1, 1, 1)) % 1.0
            return hsv_to_rgb(hsv).clamp(0, 1)

        ops = list(zip((brightness, contrast, saturation, shift_hue), factors))
        if order is None:
            for op, f in ops:
                if f is not None:
                    x = op(x, f)
            return x
        for position in range(4):  # at each position, each image applies its own op
            step = order[:, position]
            for k, (op, f) in enumerate(ops):
                if f is not None:
                    x = torch.where((step == k).view(view), op(x, f), x)
        return x


class SegmentationAugment(_BatchAugment):
    """Joint per-sample augmentation of (image uint8 (B,3,H,W), mask uint8 (B,H,W)) (Problem 2).

    Each sample draws a horizontal flip, a vertical flip, with probability `p_rot90` a quarter
    turn k in 1..3 (square inputs only), a rotation in [-degrees, degrees] (the corners it
    uncovers are black in the image and Unknown in the mask, as the report's code fills them),
    a crop of side `s` in [min_scale, 1] of the image resized back to `size`, and with
    probability 0.5 brightness, contrast and saturation factors in [1 - color, 1 + color].
    Image and mask go through the SAME affine map: bilinear for the image, nearest for the mask,
    so the labels stay exact class indices. Returns (normalised float image, int64 mask).
    `exact=True` is the report's code: whole-degree angles (random.randint(-D, D)) and the
    image resampled by nearest neighbour too (TF.rotate's default), which flips and quarter
    turns leave exact anyway; meant for min_scale=1, where no scale-crop resamples.
    """

    def __init__(self, size=None, min_scale=0.5, p_flip=0.5, p_rot90=0.75, degrees=0.0,
                 color=0.0, generator=None, exact=False):
        self.size = as_hw(size)
        self.min_scale, self.p_flip, self.p_rot90 = min_scale, p_flip, p_rot90
        self.degrees, self.color = degrees, color
        self.generator, self.exact = generator, exact

    def __call__(self, image, mask):
        x = to_float(image)
        rand = self._uniform(x)
        size = self.size or tuple(x.shape[-2:])
        s = rand(self.min_scale, 1.0)  # crop side, a fraction of the image side
        cx = (1 - s) * rand() + s / 2
        cy = (1 - s) * rand() + s / 2
        square = x.shape[-1] == x.shape[-2] and size[0] == size[1]
        k = None
        if self.p_rot90 > 0 and square:  # a quarter turn k in 1..3 with probability p_rot90
            turn = rand() < self.p_rot90
            k = torch.where(turn, rand(1, 4).floor().long().clamp(max=3), torch.zeros_like(turn,
                            dtype=torch.long))
        theta = crop_theta(s, s, cx, cy, flip_x=rand() < self.p_flip,
                           flip_y=rand() < self.p_flip, rot90=k)
        if self.degrees:
            angle = rand(-self.degrees, self.degrees)
            if self.exact:  # random.randint(-D, D): whole degrees, both ends included
                angle = rand(-self.degrees, self.degrees + 1).floor().clamp(max=self.degrees)
            theta = rotate_theta(theta, angle * (math.pi / 180))
        x = warp(x, theta, size, mode="nearest" if self.exact else "bilinear")
        m = warp(mask.unsqueeze(1).float(), theta, size, mode="nearest")
        if self.degrees:  # what the rotation brings in from outside: black, Unknown
            inside = warp(torch.ones_like(x[:, :1]), theta, size, mode="nearest",
                          padding="zeros") > 0.5
            x = x * inside
            m = torch.where(inside, m, torch.full_like(m, UNKNOWN))
        if self.color:
            c, view = self.color, (-1, 1, 1, 1)
            jittered = (x * rand(1 - c, 1 + c).view(view)).clamp(0, 1)
            mean = rgb_to_gray(jittered).mean((1, 2, 3), keepdim=True)
            jittered = ((jittered - mean) * rand(1 - c, 1 + c).view(view) + mean).clamp(0, 1)
            gray = rgb_to_gray(jittered)
            jittered = ((jittered - gray) * rand(1 - c, 1 + c).view(view) + gray).clamp(0, 1)
            x = torch.where((rand() < 0.5).view(view), jittered, x)
        return normalize(x), m.squeeze(1).round().long()
