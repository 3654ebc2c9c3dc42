"""The two named recipes of every training script, in one place: `--recipe report|strong`.

report  what the report says, and where it is silent what its code did (stann37/DLCV, HW1/),
        quirks included, so the run reproduces the report's numbers rather than a corrected
        variant. It is what every script does with no --recipe flag.
strong  per cell, the settings of the strongest valid public run of this homework, corrected
        where its code was wrong, plus what the BYOL and linear-probing literature recommends.

A recipe only sets defaults: any flag given on the command line wins over it. `WHY` says, per
script, what `strong` changes and why, with its source. Torch-free, so the tests and
reproduce.sh's --dry-run can read it without building anything.
"""

import argparse
import sys

NAMES = ("report", "strong")

RECIPES = {
    "p1_pretrain_byol": {
        "report": dict(  # stann37 p1_resnet50.py
            epochs=300, batch_size=256, bank_size=128, lr=1e-3, weight_decay=0.01,
            decay_all=True,            # AdamW(learner.parameters(), weight_decay=0.01)
            schedule="constant", warmup_epochs=0.0,
            aug="report+lib",          # the report's list per sample, then byol-pytorch's
                                       # default augmentation drawn once per batch on top
            target="ema", ema_decay=0.99, ema_schedule="constant", export="best",
            holdout=0.0,               # the best epoch by the training loss
            amp=False,                 # fp32: the report's code has no autocast
            drop_last=False),          # DataLoader's default (38,400 = 150 x 256: no change)
        "strong": dict(
            epochs=1000, batch_size=512, bank_size=128, lr=1e-4, weight_decay=0.0,
            decay_all=False, schedule="cosine",
            warmup_epochs=15.0,  # 1,005 steps: 34,560 images after the hold-out / 512 = 67 a epoch
            aug="byol", target="ema", ema_decay=0.99, ema_schedule="cosine", export="best",
            holdout=0.1),
    },
    "p1_finetune": {
        "report": dict(  # stann37 p1_finetune.py
            epochs=300, batch_size=64, bank_size=128, image_size=128, optimizer="adamw",
            lr=3e-4, backbone_lr_scale=1.0, weight_decay=1e-5, decay_all=True,
            schedule="constant", warmup_epochs=0.0, label_smoothing=0.0, aug="report",
            unfreeze="8:layer4,12:all",  # A/B/C: head only for epochs 1-8, then layer4, then all
            freeze_bn=False,             # D/E: requires_grad off under model.train(): BN moves
            amp=False, drop_last=False),  # 3,951 = 61 x 64 + 47: the 47 train too
        "strong": dict(  # pha123661 HW4/P2_finetuning.py (C 59.9), frozen BN for D/E
            epochs=300, batch_size=64, bank_size=128, image_size=128, optimizer="adamw",
            lr=5e-4, backbone_lr_scale=1.0, weight_decay=0.0, decay_all=False,
            schedule="cosine", warmup_epochs=1.6, label_smoothing=0.0, aug="simclr",
            unfreeze="", freeze_bn=True),
    },
    "p2_train_fcn32s": {
        "report": dict(  # stann37 p2_VGG16_FCN32s.py (73.4)
            epochs=150, batch_size=50, optimizer="adamw", lr=1e-4, weight_decay=1e-4,
            decay_all=True, clip_grad=1.0, schedule="constant", warmup_epochs=0.0,
            loss="ce", class_weights="1,1,5,1,1,1,2", fc_init="fresh", upscore_init="random",
            min_scale=1.0, rot90=0.0, rotate=30.0, color=0.2, amp=False, drop_last=False,
            exact_aug=True),  # randint(-30, 30) degrees, TF.rotate's nearest neighbour
        "strong": dict(  # stann37 is the strongest FCN32s; the FCN paper's initialisation
            epochs=150, batch_size=50, optimizer="adamw", lr=1e-4, weight_decay=1e-4,
            decay_all=True, clip_grad=1.0, schedule="constant", warmup_epochs=0.0,
            loss="ce", class_weights="1,1,5,1,1,1,2", fc_init="vgg", upscore_init="bilinear",
            min_scale=1.0, rot90=0.0, rotate=30.0, color=0.2),
    },
    "p2_train_deeplabv3": {
        "report": dict(  # stann37 p2_DeepLab.py (R50, 75.9)
            arch="resnet50", init="coco", epochs=100, batch_size=30, optimizer="adamw",
            lr=3e-4, weight_decay=1e-5, decay_all=True, clip_grad=0.0, schedule="constant",
            warmup_epochs=0.0, loss="focal", focal_gamma=2.0, class_weights="2,1,5,1,1,1,1",
            min_scale=1.0,
            rot90=0.375,  # `if random() > .5: angle = choice([0, 90, 180, 270])`: 1/8 each turn
            rotate=0.0, color=0.1, aux_weight=0.0, amp=False,
            drop_last=False,  # 2,000 = 66 x 30 + 20: the 20 train too
            exact_aug=True),
        "strong": dict(  # Bob08082002 P2_B_train_deeplabv3.ipynb (R101, 76.2)
            arch="resnet101", init="coco", epochs=100, batch_size=8, optimizer="adam",
            lr=1e-4, betas="0.8,0.999", weight_decay=1e-5, decay_all=True, clip_grad=0.0,
            schedule="plateau", warmup_epochs=0.0, loss="focal", focal_gamma=2.0,
            focal_alpha=0.25, class_weights="", min_scale=1.0, rot90=0.0, rotate=0.0,
            color=0.0, aux_weight=0.0, amp=True),
    },
}

# Strong fine-tuning per setting: the cells whose strongest valid run is not C's (pha123661).
# Applied by p1_finetune.py on top of RECIPES["p1_finetune"]["strong"], except to flags given on
# the command line.
STRONG_SETTINGS = {
    # JustinKai SSL_model_evaluation.py (A 52.7): Adam 5e-4, no decay, 150 epochs, no schedule
    "A": dict(epochs=150, lr=5e-4, weight_decay=0.0, schedule="constant", warmup_epochs=0.0),
    # Lucashien 2_B/main.py (B 59.5): Adam 1e-3 held constant, batch 256, 600 epochs
    # (TrivialAugmentWide there; SimCLR's list here, augment.py has no TrivialAugment)
    "B": dict(epochs=600, batch_size=256, lr=1e-3, weight_decay=0.0, schedule="constant",
              warmup_epochs=0.0),
    # the best valid D is the report's own run (37.2; Lucashien's 53.9 trained the whole model):
    # its settings, with the backbone's BatchNorm statistics frozen as linear probing does
    "D": dict(lr=3e-4, weight_decay=1e-5, decay_all=True, schedule="constant",
              warmup_epochs=0.0, aug="report"),
    # JackChen hw1-2 (E 43.8): Adam 5e-4 with weight decay 1e-3, MultiStep(30, 100, 200; x0.5)
    "E": dict(optimizer="adam", lr=5e-4, weight_decay=1e-3, schedule="multistep",
              warmup_epochs=0.0),
}

WHY = {  # what `strong` changes, and why (source)
    "p1_pretrain_byol": (
        "BYOL paper's asymmetric views (blur 1.0/0.1, solarize 0/0.2) and EMA decay rising to 1 "
        "(Grill et al. 2020); 1000 epochs, batch 512, Adam 1e-4 with a 1000-step warm-up (15 "
        "epochs of 67 steps, the 10% hold-out taken out) and cosine, the best epoch by the loss "
        "of 10% held-out images (pha123661 HW4/P2_training.py, whose backbone gave the best C, "
        "59.9); no decay on biases and BatchNorm. That C came from a SimSiam-style target "
        "(byol-pytorch use_momentum=False, no EMA); strong keeps BYOL's EMA target, the "
        "paper's, and --target simsiam is that run's."),
    "p1_finetune": (
        "pha123661 HW4/P2_finetuning.py (C 59.9): Adam 5e-4 without decay, 100-step warm-up "
        "and cosine, SimCLR augmentation, the whole model trained from the first step; D and E "
        "keep the backbone's BatchNorm statistics frozen, as linear probing does (moco "
        "main_lincls.py), instead of letting them drift under model.train(). A, B, D and E "
        "take the optimizer and schedule of their own strongest valid run (STRONG_SETTINGS), "
        "not the rest of it: E takes JackChen's Adam 5e-4 with weight decay 1e-3 (on weights "
        "only) and MultiStep schedule, but not his augmentation, his lowest-val-loss "
        "selection, his 1000-d head or BatchNorm in train mode."),
    "p2_train_fcn32s": (
        "stann37's own run is the strongest FCN32s (73.4; next wuweilun 72.5): its optimizer, "
        "loss and augmentation are kept; fc6/fc7 start from VGG16's classifier and the "
        "up-sampling from a bilinear kernel, as in the FCN paper (Long et al. 2015)."),
    "p2_train_deeplabv3": (
        "Bob08082002 (76.2): DeepLabV3-ResNet101 from COCO-VOC weights, focal loss alpha 0.25 "
        "gamma 2 without class weights, Adam 1e-4 betas (0.8, 0.999) weight decay 1e-5, "
        "ReduceLROnPlateau on val mIoU (x0.5, patience 5), batch 8, 100 epochs, flips only. "
        "Corrected: ImageNet normalisation (the COCO weights were trained with it) instead of "
        "that run's train-set statistics."),
}


# What the report's code did, step by step, and what --recipe report does with it. Two things
# of that code are deliberately not copied ("decided"); RESULTS.md prints these notes.
REPORT_NOTES = {
    "p1_pretrain_byol": (
        "Views: the report's Dataset ran Resize((128, 128)) (bilinear), RandomResizedCrop(128), "
        "HFlip, ColorJitter(0.2 x 4) (its factors in a random order) and Normalize once per "
        "image; BYOL.forward then made both views from that one tensor with byol-pytorch's "
        "default augmentation, drawn once per batch, a second Normalize included. So both "
        "views share the list's crop, flip and jitter (SharedDraw, then lib_augment). AdamW "
        "1e-3, weight decay 0.01 on every parameter, batch 256 (the last partial batch kept: "
        "there is none at 38,400), 300 epochs, fp32, backbone of the lowest epoch loss."),
    "p1_finetune": (
        "Resize((128, 128)) bilinear; RandomResizedCrop, HFlip, RandomRotation(15) by nearest "
        "neighbour, RandomCrop(128, padding 4, reflect) at a whole-pixel offset, ColorJitter "
        "in a random order per image (the exact path; its colour steps stay in float where "
        "PIL rounds each to 8 bits). AdamW 3e-4, weight decay 1e-5 on every parameter, batch "
        "64 with the last partial batch of 47 trained, 300 epochs, fp32, gradual unfreezing, "
        "D/E BatchNorm moving, the best epoch by exact val accuracy. The t-SNE panels are "
        "epochs 1 and 100 (the report's figure; its code saved epochs 1 and 300 only)."),
    "p2_train_fcn32s": (
        "fc6, fc7 and the score layer at PyTorch's default initialisation; the up-sampling is "
        "ConvTranspose2d(7, 7, 64, stride 32, padding 16) at its default initialisation, "
        "straight on the score map; cross-entropy weighted 1,1,5,1,1,1,2 (a weighted mean); "
        "AdamW 1e-4 on every parameter, clipping at 1.0, batch 50, 150 epochs, fp32; H/V flips, "
        "random.randint(-30, 30) degrees by nearest neighbour (corners Unknown), colour "
        "0.8-1.2 with p 0.5. Decided: the report's code kept the checkpoint of the best "
        "per-batch mean of a 7-class IoU (Unknown included, classes absent from a batch left "
        "out), not the course's mIoU; best.pth here is the epoch of the best course mIoU over "
        "the whole validation set, the number the report's table and the grader use, so that "
        "the kept model is the one that number describes."),
    "p2_train_deeplabv3": (
        "DeepLabV3-ResNet50 from COCO-VOC weights with a new 7-class last layer, aux head "
        "unused; focal loss ce = CE with weights 2,1,5,1,1,1,1 per pixel, mean of "
        "(1 - exp(-ce))^2 ce; AdamW 3e-4 on every parameter, batch 30 with the last partial "
        "batch of 20 trained, 100 epochs, fp32; H/V flips, a turn of 0/90/180/270 degrees "
        "with p 0.5 (so 90, 180, 270 with 1/8 each), with p 0.5 PIL's Brightness, Contrast, "
        "Color in that order with factors 0.9-1.1 (in float here; PIL rounds each step to 8 "
        "bits and the contrast mean to an integer). Decided: the report's code oversampled x6 "
        "the images whose mask holds the colour (128, 0, 128) and gave them stronger jitter, "
        "noise and shifts; no mask holds that colour (Rangeland is (255, 0, 255)), so none of "
        "it ran in the report's run, and the report recipe leaves it out too."),
}


class RecipeParser(argparse.ArgumentParser):
    """An ArgumentParser with `--recipe report|strong`: the chosen recipe's values become the
    defaults before the command line is parsed, so explicit flags still win, and
    `--recipe strong --help` shows the strong defaults."""

    def __init__(self, script, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)  # explicit_flags reads the exact flag names
        super().__init__(*args, **kwargs)
        self.script = script
        self.add_argument("--recipe", choices=NAMES, default="report",
                          help="report: the report's run, quirks included; strong: the strongest "
                          "known run per cell (recipes.py says what changes and why)")

    def parse_known_args(self, args=None, namespace=None):
        argv = sys.argv[1:] if args is None else [str(a) for a in args]
        pre = argparse.ArgumentParser(add_help=False)
        pre.add_argument("--recipe", choices=NAMES, default="report")
        chosen, _ = pre.parse_known_args(argv)
        self.set_defaults(**settings(self.script, chosen.recipe))
        parsed, rest = super().parse_known_args(argv, namespace)
        # the flags the command line set to a value of its own: a recipe's per-setting values
        # never replace them (one equal to the recipe's value, as reproduce.sh writes them all
        # out, counts as the recipe's)
        base = settings(self.script, chosen.recipe)
        given = {action.dest for action in self._actions for flag in action.option_strings
                 for word in argv if word == flag or word.startswith(flag + "=")}
        parsed.explicit_flags = sorted(d for d in given - {"recipe"}
                                       if d not in base or getattr(parsed, d) != base[d])
        return parsed, rest


def settings(script, recipe="report"):
    """The defaults `recipe` gives `script` (a copy)."""
    if recipe not in NAMES:
        raise ValueError(f"unknown recipe {recipe!r}; choose from {', '.join(NAMES)}")
    return dict(RECIPES[script][recipe])


def for_setting(args, setting):
    """p1_finetune: the values `setting` changes in the chosen recipe (STRONG_SETTINGS for
    strong), leaving out every flag given on the command line."""
    if getattr(args, "recipe", "report") != "strong":
        return {}
    given = set(getattr(args, "explicit_flags", ()))
    return {k: v for k, v in STRONG_SETTINGS.get(setting, {}).items() if k not in given}


def to_words(values):
    """{dest: value} as command-line words: ['--epochs', '300', '--decay-all', ...]."""
    words = []
    for key, value in values.items():
        name = "--" + key.replace("_", "-")
        if isinstance(value, bool):  # a --x/--no-x pair (cli.BooleanFlag)
            words.append(name if value else "--no-" + name[2:])
        else:
            words += [name, str(value)]
    return words


def flags(script, recipe="report"):
    """The recipe as command-line words."""
    return to_words(settings(script, recipe))


def shown(words):
    """Words as reproduce.sh prints a command: '' for an empty one."""
    return " ".join(w if w else "''" for w in words)


USAGE = """usage: python3 recipes.py SCRIPT [RECIPE]   the recipe's flags, one word a line
       python3 recipes.py --cells               strong fine-tuning's values per setting
SCRIPT: {scripts}; RECIPE: {names} (default report)"""


def main(argv):
    """The command line of reproduce.sh's look-ups -> exit status."""
    usage = USAGE.format(scripts=", ".join(RECIPES), names=" or ".join(NAMES))
    if argv in (["-h"], ["--help"]):
        print(usage)
        return 0
    if argv == ["--cells"]:
        print("\n".join(f"{s}: {' '.join(to_words(v))}" for s, v in STRONG_SETTINGS.items()))
        return 0
    if not 1 <= len(argv) <= 2 or argv[0] not in RECIPES or (argv[1:] and argv[1] not in NAMES):
        print(usage, file=sys.stderr)
        return 2
    print("\n".join(flags(*argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
