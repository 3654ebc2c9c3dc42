"""Train model B of Problem 2: torchvision DeepLabV3 (ResNet50 by default) on p2_data.

    python p2_train_deeplabv3.py --data-dir hw1_data/p2_data --output-dir runs/p2_deeplabv3
    python p2_train_deeplabv3.py --data-dir hw1_data/p2_data --output-dir runs/p2_deeplabv3_r101 \
        --recipe strong
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

Two recipes (recipes.py): `--recipe report` (the default) is the report's run, ResNet50 from
COCO-VOC weights, focal loss with class weights 2,1,5,1,1,1,1, AdamW 3e-4, batch 30, 100
epochs, flips, quarter turns and colour, fp32; `--recipe strong` is the best public run
(ResNet101, focal alpha 0.25, Adam 1e-4, plateau schedule, batch 8, flips). Any flag overrides
its recipe. Loop, flags and outputs: see p2_engine.py; the network is built by
p2_common.build_deeplabv3.
"""

import cli
import recipes
from p2_common import ARCHS
from p2_engine import add_common_args, train


def get_args_parser():
    parser = recipes.RecipeParser(
        "p2_train_deeplabv3", formatter_class=cli.HelpFormatter,
        description="Train torchvision DeepLabV3 (model B) for 7-class land-cover segmentation. "
                    "Defaults: --recipe report (ResNet50 from COCO-VOC weights, focal loss "
                    "gamma 2 with class weights 2,1,5,1,1,1,1, AdamW 3e-4, weight decay 1e-5, "
                    "batch 30, 100 epochs, flips, quarter turns, colour, fp32).")
    add_common_args(parser)
    g = parser.add_argument_group("model B")
    g.add_argument("--arch", choices=sorted(ARCHS), default="resnet50",
                   help="backbone; mobilenet_v3_large is for quick smoke runs")
    g.add_argument("--init", choices=["coco", "imagenet"], default="coco",
                   help="coco: the whole network from COCO-VOC segmentation weights (new last "
                        "layers); imagenet: backbone only. --no-pretrained overrides both")
    g.add_argument("--bn-momentum", type=float, default=None,
                   help="BatchNorm's running-statistics momentum (default: the network's own, "
                        "0.1 for ResNet, 0.01 for MobileNetV3). From random weights for a few "
                        "hundred steps, MobileNetV3's 0.01 leaves the statistics that "
                        "validation uses far behind the network: pass 0.1")
    g.add_argument("--aux-weight", type=float, default=0.4,
                   help="weight of the auxiliary head's loss (torchvision's reference uses 0.5)")
    parser.set_defaults(model_name="deeplabv3")
    return parser


def main(args):
    return train(args)


if __name__ == "__main__":
    cli.run(main, get_args_parser())
