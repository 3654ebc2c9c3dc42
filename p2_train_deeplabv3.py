"""Train model B of Problem 2: torchvision DeepLabV3 (ResNet50 by default) on p2_data.

    python p2_train_deeplabv3.py --data-dir hw1_data/p2_data --output-dir runs/p2_deeplabv3
    python p2_train_deeplabv3.py --data-dir hw1_data/p2_data --output-dir runs/p2_deeplabv3_r101 \
        --arch resnet101
    python p2_train_deeplabv3.py --data-dir hw1_data/p2_data --output-dir runs/p2_deeplabv3 --resume
    python p2_train_deeplabv3.py --data-dir demo_data/p2_data --output-dir /tmp/dl_smoke \
        --overwrite --arch mobilenet_v3_large --no-pretrained --epochs 2 --image-size 64

Network: torchvision's deeplabv3_<arch> (output stride 8 for ResNets, 16 for MobileNetV3) with
its auxiliary FCN head on the stage before last; both heads predict the 7 classes (Unknown is
a real class: the scorer counts Unknown-truth pixels predicted as class i as false positives
of i, so the model must learn to say Unknown). The loss is main + --aux-weight x aux.
Initialisation (--init): coco = torchvision's COCO-with-VOC-labels segmentation weights with the
last 1x1 layer of both heads replaced for 7 classes (default); imagenet = backbone only;
--no-pretrained = random. Nothing is downloaded unless asked for: weights_backbone is None
whenever ImageNet backbone weights are not the chosen start.

Defaults aim at the public best (0.762 val mIoU): AdamW lr 1e-4, weight decay 1e-2, cosine
schedule with a one-epoch warm-up, focal loss (gamma 2), flips, 90-degree rotations and
scale-crops, 100 epochs of batch 8 at 512 px. Loop, flags and outputs: see p2_common.py.
"""

import argparse

from torch import nn
from torchvision.models import MobileNet_V3_Large_Weights, ResNet50_Weights, ResNet101_Weights
from torchvision.models.segmentation import (
    DeepLabV3_MobileNet_V3_Large_Weights,
    DeepLabV3_ResNet50_Weights,
    DeepLabV3_ResNet101_Weights,
    deeplabv3_mobilenet_v3_large,
    deeplabv3_resnet50,
    deeplabv3_resnet101,
)

from p2_common import add_common_args, pretrained_download, train
from utils import NUM_CLASSES

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


def get_args_parser():
    parser = argparse.ArgumentParser(
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Train torchvision DeepLabV3 (model B) for 7-class land-cover segmentation. "
                    "Defaults: ResNet50 from COCO-VOC weights, AdamW lr 1e-4, cosine schedule "
                    "with a one-epoch warm-up, focal loss, aux loss 0.4, batch 8 at 512 px, "
                    "100 epochs.")
    add_common_args(parser)
    g = parser.add_argument_group("model B")
    g.add_argument("--arch", choices=sorted(ARCHS), default="resnet50",
                   help="backbone; mobilenet_v3_large is for quick smoke runs")
    g.add_argument("--init", choices=["coco", "imagenet"], default="coco",
                   help="coco: the whole network from COCO-VOC segmentation weights (new last "
                        "layers); imagenet: backbone only. --no-pretrained overrides both")
    g.add_argument("--aux-weight", type=float, default=0.4,
                   help="weight of the auxiliary head's loss (torchvision's reference uses 0.5)")
    parser.set_defaults(model_name="deeplabv3", optimizer="adamw", lr=1e-4, weight_decay=1e-2,
                        schedule="cosine", loss="focal", epochs=100)
    return parser


def replace_last_layer(head, num_classes):
    """Swap the final 1x1 conv of a torchvision DeepLabHead/FCNHead for a `num_classes` one."""
    old = head[-1]
    head[-1] = nn.Conv2d(old.in_channels, num_classes, 1)
    return head


def build_model(cfg, load_pretrained=True):
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
        return model
    if init == "imagenet":
        with pretrained_download(f"ImageNet {arch}"):
            return builder(weights=None, weights_backbone=backbone_weights,
                           num_classes=NUM_CLASSES, aux_loss=True)
    return builder(weights=None, weights_backbone=None, num_classes=NUM_CLASSES, aux_loss=True)


def main(args):
    return train(args, build_model)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
