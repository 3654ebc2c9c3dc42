"""Train model A of Problem 2: VGG16-FCN32s (Long, Shelhamer & Darrell 2015) on p2_data.

    python p2_train_fcn32s.py --data-dir hw1_data/p2_data --output-dir runs/p2_fcn32s
    python p2_train_fcn32s.py --data-dir hw1_data/p2_data --output-dir runs/p2_fcn32s --resume
    python p2_train_fcn32s.py --data-dir demo_data/p2_data --output-dir /tmp/fcn_smoke \
        --overwrite --no-pretrained --epochs 2 --max-train 8 --max-val 4 --image-size 64

Network: VGG16's 13 conv layers (pool5 at stride 32), fc6 (7x7 conv, 4096) and fc7 (1x1 conv,
4096) with dropout, a 1x1 score layer for the 7 classes (Unknown included) and ONE transposed
convolution (kernel 64, stride 32, bilinear at initialisation, one filter per class) back to
the input size. With ImageNet weights (default) the conv layers are VGG16's and fc6/fc7 are
VGG16's classifier layers reshaped into convolutions; the score layer starts at zero, as in the
original FCN.

Any input size: the input is padded (replicating its border) to a multiple of 32; fc6 pads by
3 so the score map keeps one cell per 32x32 block; the score map is padded by one cell so every
kept output pixel lies between two coarse cells (as the classic pad-100-then-crop does, at
about half its cost at 512 px); after upsampling, the crop that centres each block's value on
its block gives back exactly the input's H x W.

Training loop, flags, logs and checkpoints are shared with model B: see p2_common.py.
Pretrained weights come from the torch cache (`bash hw1_download.sh` fills it).
"""

import argparse

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import VGG16_Weights
from torchvision.models.vgg import cfgs, make_layers

from p2_common import add_common_args, pretrained_download, train
from utils import NUM_CLASSES

STRIDE = 32


def get_args_parser():
    parser = argparse.ArgumentParser(
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Train VGG16-FCN32s (model A) for 7-class land-cover segmentation. "
                    "Defaults: SGD lr 1e-3, momentum 0.9, weight decay 5e-4, poly schedule "
                    "with a one-epoch warm-up, batch 8 of 512-px crops, 100 epochs.")
    add_common_args(parser)
    parser.set_defaults(model_name="fcn32s", optimizer="sgd", lr=1e-3, weight_decay=5e-4,
                        schedule="poly", loss="ce", epochs=100)
    return parser


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
    def __init__(self, num_classes=NUM_CLASSES):
        super().__init__()
        self.features = make_layers(cfgs["D"])  # VGG16 conv1_1 .. pool5, stride 32
        self.fc6 = nn.Conv2d(512, 4096, 7, padding=3)
        self.fc7 = nn.Conv2d(4096, 4096, 1)
        self.drop = nn.Dropout2d(0.5)
        self.score = nn.Conv2d(4096, num_classes, 1)
        self.upscore = bilinear_upsampler(num_classes)
        # torchvision's VGG initialisation for a random start (--no-pretrained)
        for m in self.features.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
        for m in (self.fc6, self.fc7):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)
        nn.init.zeros_(self.score.weight)
        nn.init.zeros_(self.score.bias)

    def forward(self, x):
        h, w = x.shape[-2:]
        x = F.pad(x, (0, -w % STRIDE, 0, -h % STRIDE), mode="replicate")  # (B, 3, H', W'), /32
        f = self.features(x)                                  # (B, 512, H'/32, W'/32)
        f = self.drop(F.relu(self.fc6(f), inplace=True))     # (B, 4096, H'/32, W'/32)
        f = self.drop(F.relu(self.fc7(f), inplace=True))
        return self.upsample(self.score(f), h, w)             # (B, 7, H, W)

    def upsample(self, score, h, w):
        """(B, 7, h', w') scores, one per 32 x 32 block -> (B, 7, h, w), block-centred."""
        s = F.pad(score, (1, 1, 1, 1), mode="replicate")     # (B, 7, h' + 2, w' + 2)
        up = self.upscore(s)                                  # (B, 7, 32 h' + 96, 32 w' + 96)
        # padded cell j has its bilinear peak at 32 j + 31.5, i.e. input cell i = j - 1 at
        # 32 i + 63.5; shifting by 48 puts it at 32 i + 15.5, the centre of its 32 x 32 block
        return up[:, :, 48:48 + h, 48:48 + w]

    @torch.no_grad()
    def load_vgg16(self, state):
        """Copy torchvision's VGG16 state_dict: conv layers, and fc6/fc7 from classifier.0/3."""
        self.features.load_state_dict({k[len("features."):]: v for k, v in state.items()
                                       if k.startswith("features.")})
        self.fc6.weight.copy_(state["classifier.0.weight"].view(4096, 512, 7, 7))
        self.fc6.bias.copy_(state["classifier.0.bias"])
        self.fc7.weight.copy_(state["classifier.3.weight"].view(4096, 4096, 1, 1))
        self.fc7.bias.copy_(state["classifier.3.bias"])


def build_model(cfg, load_pretrained=True):
    """FCN32s from a run's args (dict or Namespace); ImageNet VGG16 weights when the run used
    them and `load_pretrained` (inference and --resume pass False: the checkpoint has all)."""
    cfg = cfg if isinstance(cfg, dict) else vars(cfg)
    state = None
    if load_pretrained and cfg.get("pretrained", True):
        with pretrained_download("ImageNet VGG16"):  # fetched first: fails before the build
            state = VGG16_Weights.IMAGENET1K_V1.get_state_dict(progress=True, check_hash=True)
    model = FCN32s(NUM_CLASSES)
    if state is not None:
        model.load_vgg16(state)
    return model


def main(args):
    return train(args, build_model)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
