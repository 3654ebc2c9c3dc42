"""What the Problem 2 scripts share: the two models (VGG16-FCN32s, torchvision DeepLabV3),
rebuilding one from a checkpoint, and prediction (optionally with flip test-time augmentation).

On the grading path (hw1_2.sh -> p2_inference.py): Python 3.8, torch 2.4, the course's packages.
The training loop that both training scripts run lives in p2_engine.py.
"""

import contextlib

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import (
    MobileNet_V3_Large_Weights,
    ResNet50_Weights,
    ResNet101_Weights,
    VGG16_Weights,
)
from torchvision.models.segmentation import (
    DeepLabV3_MobileNet_V3_Large_Weights,
    DeepLabV3_ResNet50_Weights,
    DeepLabV3_ResNet101_Weights,
    deeplabv3_mobilenet_v3_large,
    deeplabv3_resnet50,
    deeplabv3_resnet101,
)
from torchvision.models.vgg import cfgs, make_layers

import utils
from augment import normalize, to_float
from data import NUM_CLASSES
from errors import UserError, first_line

# ------------------------------------------------------------------------------ model A: FCN32s
STRIDE = 32


def bilinear_kernel(size):
    """(size, size) bilinear interpolation kernel, as in the FCN code (upsample factor
    (size+1)//2): 1D weights 1 - |k - c| / f with centre c = f - 0.5 for even sizes."""
    factor = (size + 1) // 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    k = 1 - (torch.arange(size, dtype=torch.float64) - center).abs() / factor
    return (k[:, None] * k[None, :]).float()


def bilinear_upsampler(num_classes, stride=STRIDE):
    """ConvTranspose2d(kernel 2*stride, stride) whose class c -> class c filter is bilinear
    and whose cross-class filters are zero: plain bilinear upsampling, until training moves it."""
    up = nn.ConvTranspose2d(num_classes, num_classes, 2 * stride, stride=stride, bias=False)
    with torch.no_grad():
        up.weight.zero_()
        for c in range(num_classes):
            up.weight[c, c] = bilinear_kernel(2 * stride)
    return up


class FCN32s(nn.Module):
    """VGG16-FCN32s. fc_init="vgg": fc6/fc7 N(0, 0.01) until load_vgg16 copies VGG16's classifier
    into them, and a zero score layer (the FCN paper); "fresh": fc6, fc7 and the score layer at
    PyTorch's own initialisation (the report's code). upscore_init="bilinear": the up-sampling
    starts as a bilinear kernel and is centred on each 32 x 32 block (`upsample`); "random": the
    report's code, ConvTranspose2d(7, 7, 64, stride 32, padding 16, bias False) at PyTorch's
    initialisation, straight on the score map."""

    def __init__(self, num_classes=NUM_CLASSES, upscore_init="bilinear", fc_init="vgg"):
        super().__init__()
        self.features = make_layers(cfgs["D"])  # VGG16 conv1_1 .. pool5, stride 32
        # fc6/fc7 hold 119M of the 134M weights: built without PyTorch's default init, which
        # the normal_ below would overwrite anyway (it took ~1 s of every build on a CPU), on
        # the device the rest was built on (skip_init's own default is the CPU, whatever
        # `with torch.device(...)` surrounds the build: results_report.py builds on "meta")
        device = self.features[0].weight.device
        self.fc6 = nn.utils.skip_init(nn.Conv2d, 512, 4096, 7, padding=3, device=device)
        self.fc7 = nn.utils.skip_init(nn.Conv2d, 4096, 4096, 1, device=device)
        self.drop = nn.Dropout2d(0.5)
        self.score = nn.Conv2d(4096, num_classes, 1)
        self.upscore_init = upscore_init
        if upscore_init == "random":
            self.upscore = nn.ConvTranspose2d(num_classes, num_classes, 2 * STRIDE, stride=STRIDE,
                                              padding=STRIDE // 2, bias=False)
        else:
            self.upscore = bilinear_upsampler(num_classes)
        # torchvision's VGG initialisation for a random start (--no-pretrained)
        for m in self.features.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
        if fc_init == "fresh":  # PyTorch's default initialisation, as the report's code
            for m in (self.fc6, self.fc7):
                m.reset_parameters()
        else:
            for m in (self.fc6, self.fc7):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)
            nn.init.zeros_(self.score.weight)
            nn.init.zeros_(self.score.bias)

    def forward(self, x):
        h, w = x.shape[-2:]
        x = F.pad(x, (0, -w % STRIDE, 0, -h % STRIDE), mode="replicate")  # (B, 3, H', W'), /32
        f = self.features(x)                                  # (B, 512, H'/32, W'/32)
        f = self.drop(F.relu(self.apply_fc6(f), inplace=True))  # (B, 4096, H'/32, W'/32)
        f = self.drop(F.relu(self.fc7(f), inplace=True))
        return self.upsample(self.score(f), h, w)             # (B, 7, H, W)

    def apply_fc6(self, f):
        """fc6 on (B, 512, h, w) features. On the CPU it runs as im2col + one matmul: oneDNN's
        weight gradient of a 7x7 convolution over a map of a few cells is about 20x slower
        (measured: 23 s against 1 s, batch 4 at 128 px). Same numbers; CUDA keeps cuDNN."""
        if f.device.type != "cpu":
            return self.fc6(f)
        b, _, h, w = f.shape
        cols = F.unfold(f, 7, padding=3)                         # (B, 512 * 49, h * w)
        out = self.fc6.weight.flatten(1) @ cols                  # (B, 4096, h * w)
        return out.view(b, -1, h, w) + self.fc6.bias.view(1, -1, 1, 1)

    def upsample(self, score, h, w):
        """(B, 7, h', w') scores, one per 32 x 32 block -> (B, 7, h, w), block-centred; the
        report's layer (upscore_init="random") runs straight on the map: (B, 7, 32 h', 32 w')."""
        if self.upscore_init == "random":
            return self.upscore(score)[:, :, :h, :w]
        s = F.pad(score, (1, 1, 1, 1), mode="replicate")     # (B, 7, h' + 2, w' + 2)
        up = self.upscore(s)                                  # (B, 7, 32 h' + 96, 32 w' + 96)
        # padded cell j has its bilinear peak at 32 j + 31.5, i.e. input cell i = j - 1 at
        # 32 i + 63.5; shifting by 48 puts it at 32 i + 15.5, the centre of its 32 x 32 block
        return up[:, :, 48:48 + h, 48:48 + w]

    @torch.no_grad()
    def load_vgg16(self, state, fc=True):
        """Copy torchvision's VGG16 state_dict: conv layers, and (with `fc`) fc6/fc7 from
        classifier.0/3; without, fc6/fc7 keep their fresh initialisation (the report's code)."""
        self.features.load_state_dict({k[len("features."):]: v for k, v in state.items()
                                       if k.startswith("features.")})
        if not fc:
            return
        self.fc6.weight.copy_(state["classifier.0.weight"].view(4096, 512, 7, 7))
        self.fc6.bias.copy_(state["classifier.0.bias"])
        self.fc7.weight.copy_(state["classifier.3.weight"].view(4096, 4096, 1, 1))
        self.fc7.bias.copy_(state["classifier.3.bias"])


def build_fcn32s(cfg, load_pretrained=True):
    """FCN32s from a run's args (dict or Namespace); ImageNet VGG16 weights when the run used
    them and `load_pretrained` (inference and --resume pass False: the checkpoint has all)."""
    cfg = cfg if isinstance(cfg, dict) else vars(cfg)
    state = None
    if load_pretrained and cfg.get("pretrained", True):
        with pretrained_download("ImageNet VGG16"):  # fetched first: fails before the build
            state = VGG16_Weights.IMAGENET1K_V1.get_state_dict(progress=True, check_hash=True)
    model = FCN32s(NUM_CLASSES, upscore_init=cfg.get("upscore_init", "bilinear"),
                   fc_init=cfg.get("fc_init", "vgg"))
    if state is not None:
        model.load_vgg16(state, fc=cfg.get("fc_init", "vgg") == "vgg")
    return model


# ------------------------------------------------------------------------------ model B: DeepLabV3
# arch -> (builder, COCO-VOC segmentation weights, ImageNet backbone weights)
ARCHS = {
    "resnet50": (deeplabv3_resnet50, DeepLabV3_ResNet50_Weights.COCO_WITH_VOC_LABELS_V1,
                 ResNet50_Weights.IMAGENET1K_V1),
    "resnet101": (deeplabv3_resnet101, DeepLabV3_ResNet101_Weights.COCO_WITH_VOC_LABELS_V1,
                  ResNet101_Weights.IMAGENET1K_V1),
    "mobilenet_v3_large": (deeplabv3_mobilenet_v3_large,
                           DeepLabV3_MobileNet_V3_Large_Weights.COCO_WITH_VOC_LABELS_V1,
                           MobileNet_V3_Large_Weights.IMAGENET1K_V1),
}


def replace_last_layer(head, num_classes):
    """Swap the final 1x1 conv of a torchvision DeepLabHead/FCNHead for a `num_classes` one."""
    old = head[-1]
    head[-1] = nn.Conv2d(old.in_channels, num_classes, 1)
    return head


def build_deeplabv3(cfg, load_pretrained=True):
    """DeepLabV3 from a run's args (dict or Namespace). `load_pretrained` False (inference,
    --resume) builds the same layers with no weights fetched: the checkpoint has them all."""
    cfg = cfg if isinstance(cfg, dict) else vars(cfg)
    arch = cfg.get("arch", "resnet50")
    if arch not in ARCHS:
        raise ValueError(f"unknown DeepLabV3 arch {arch!r}")
    builder, seg_weights, backbone_weights = ARCHS[arch]
    init = cfg.get("init", "coco") if load_pretrained and cfg.get("pretrained", True) else None
    if init == "coco":
        with pretrained_download(f"COCO-VOC DeepLabV3-{arch}"):
            model = builder(weights=seg_weights, weights_backbone=None, aux_loss=True)
        replace_last_layer(model.classifier, NUM_CLASSES)
        replace_last_layer(model.aux_classifier, NUM_CLASSES)
    elif init == "imagenet":
        with pretrained_download(f"ImageNet {arch}"):
            model = builder(weights=None, weights_backbone=backbone_weights,
                            num_classes=NUM_CLASSES, aux_loss=True)
    else:
        model = builder(weights=None, weights_backbone=None, num_classes=NUM_CLASSES,
                        aux_loss=True)
    if cfg.get("aux_weight") == 0:  # a head outside the loss: neither computed nor saved
        model.aux_classifier = None
    if cfg.get("bn_momentum") is not None:  # --bn-momentum
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.momentum = cfg["bn_momentum"]
    return model


BUILDERS = {"fcn32s": build_fcn32s, "deeplabv3": build_deeplabv3}


def build_model(cfg, load_pretrained=True):
    """The network a run's args (dict or Namespace) name in `model_name`."""
    cfg = cfg if isinstance(cfg, dict) else vars(cfg)
    return BUILDERS[cfg["model_name"]](cfg, load_pretrained)


# ------------------------------------------------------------------------------ weights, prediction
@contextlib.contextmanager
def pretrained_download(name):
    """Turn a failed torchvision weight download (offline, broken file) into one clear line."""
    try:
        yield
    except (OSError, RuntimeError, ValueError) as e:
        reason = str(e).strip().splitlines()[0][:160] if str(e).strip() else ""
        raise UserError(f"cannot load the pretrained {name} weights ({type(e).__name__}: "
                        f"{reason}); run `bash hw1_download.sh` (puts them into "
                        f"{torch.hub.get_dir()}/checkpoints) or pass --no-pretrained") from None


def main_logits(out):
    """torchvision segmentation models return {"out", "aux"}; FCN32s returns the logits."""
    return out["out"] if isinstance(out, dict) else out


@torch.no_grad()
def predict(model, images, device, amp=True, tta=False):
    """uint8 (B, 3, H, W) images -> (B, H, W) int64 class indices on `device`.

    The model must be in eval mode. With `tta` the softmax of the image, its horizontal flip and
    its vertical flip are averaged (each flipped back first); without, the argmax of the logits.
    """
    x = normalize(to_float(images.to(device, non_blocking=True)))
    x = x.contiguous(memory_format=utils.memory_format(device))           # (B, 3, H, W) float32
    flips = [None, (3,), (2,)] if tta else [None]
    score = None
    for dims in flips:
        xi = x if dims is None else x.flip(dims)
        with utils.autocast(device, amp):
            out = main_logits(model(xi)).float()                     # (B, 7, H, W)
        out = out if dims is None else out.flip(dims)
        out = out.softmax(1) if tta else out
        score = out if score is None else score + out
    return score.argmax(1)


def load_segmenter(path, device):
    """Rebuild the network named in a checkpoint's args and load its weights
    -> (model in eval mode, the run's args)."""
    ckpt = utils.load_checkpoint(path, kind="p2_segmenter")
    cfg = ckpt["args"]
    name = cfg["model_name"]
    state = ckpt["model"]
    if cfg.get("aux_weight") == 0:  # an older file may still hold the unused aux head
        state = {k: v for k, v in state.items() if not k.startswith("aux_classifier.")}
    try:
        model = utils.build_loaded(lambda: BUILDERS[name](cfg, load_pretrained=False), state)
    except (RuntimeError, ValueError, KeyError) as e:
        raise UserError(f"{path}: weights do not fit a {name} built from its own args "
                        f"({first_line(e, 120)}); train or download it again") from None
    if getattr(model, "aux_classifier", None) is not None:
        model.aux_classifier = None  # the aux head only helps training; skip its compute
    metric = ckpt.get("best_metric")
    print(f"{path}: {name}, epoch {ckpt.get('epoch')}"
          + (f", best val mIoU {metric:.4f}" if isinstance(metric, float) else ""))
    return model.to(device, memory_format=utils.memory_format(device)).eval(), cfg
