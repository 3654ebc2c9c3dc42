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

Training loop, flags, logs and checkpoints are shared with model B: see p2_engine.py; the
network is p2_common.FCN32s.
Pretrained weights come from the torch cache (`bash hw1_download.sh` fills it).
"""

import cli
import recipes
from p2_engine import add_common_args, train


def get_args_parser():
    parser = recipes.RecipeParser(
        "p2_train_fcn32s", formatter_class=cli.HelpFormatter,
        description="Train VGG16-FCN32s (model A) for 7-class land-cover segmentation. "
                    "Defaults: --recipe report (AdamW 1e-4, weight decay 1e-4 on every "
                    "parameter, clip 1.0, class-weighted CE 1,1,5,1,1,1,2, batch 50, 150 "
                    "epochs, flips, rotation up to 30 degrees, colour).")
    add_common_args(parser)
    g = parser.add_argument_group("model A")
    g.add_argument("--fc-init", choices=["vgg", "fresh"], default="vgg",
                   help="vgg: fc6/fc7 from VGG16's classifier and a zero score layer (the FCN "
                        "paper); fresh: fc6, fc7 and the score layer at PyTorch's default "
                        "initialisation (the report's code)")
    g.add_argument("--upscore-init", choices=["bilinear", "random"], default="bilinear",
                   help="bilinear: the stride-32 up-sampling starts as a bilinear kernel, centred "
                        "on each 32x32 block (the FCN paper); random: the report's code, "
                        "ConvTranspose2d(7, 7, 64, stride 32, padding 16) at PyTorch's default "
                        "initialisation, straight on the score map")
    parser.set_defaults(model_name="fcn32s")
    return parser


def main(args):
    return train(args)


if __name__ == "__main__":
    cli.run(main, get_args_parser())
