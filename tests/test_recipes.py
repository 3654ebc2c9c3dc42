"""The two named recipes against the table (the project's RECIPES.md, written here by hand).

Each script's parser is built for each recipe and the values that decide a result are compared
with the numbers of the report's code (stann37/DLCV HW1) and of the strongest public runs:
optimizer, learning rate, weight decay and which parameters get it, batch, epochs, schedule,
loss and class weights, augmentation, what is frozen and whether BatchNorm statistics move.
"""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import augment
import p1_common
import p1_finetune
import p1_pretrain_byol
import p2_engine
import p2_train_deeplabv3
import p2_train_fcn32s
import recipes
import results_report

REPO = Path(__file__).resolve().parents[1]


def parse(module, *argv):
    return module.get_args_parser().parse_args([str(a) for a in argv])


def byol(recipe):
    return parse(p1_pretrain_byol, "--data-dir", "mini", "--recipe", recipe)


def finetune(recipe, setting="C"):
    return parse(p1_finetune, "--setting", setting, "--data-dir", "office", "--recipe", recipe)


@pytest.mark.parametrize("script", sorted(recipes.RECIPES))
def test_every_recipe_value_is_a_flag_of_its_script(script):
    module = {"p1_pretrain_byol": p1_pretrain_byol, "p1_finetune": p1_finetune,
              "p2_train_fcn32s": p2_train_fcn32s, "p2_train_deeplabv3": p2_train_deeplabv3}[script]
    dests = {a.dest for a in module.get_args_parser()._actions}
    for recipe in recipes.NAMES:
        assert set(recipes.settings(script, recipe)) <= dests, script


def test_byol_report_is_the_reports_code():
    a = byol("report")
    assert (a.epochs, a.batch_size, a.lr, a.weight_decay) == (300, 256, 1e-3, 0.01)
    assert a.decay_all  # AdamW(learner.parameters(), weight_decay=0.01): biases and BN too
    assert (a.schedule, a.warmup_epochs) == ("constant", 0.0)
    assert (a.target, a.ema_decay, a.ema_schedule) == ("ema", 0.99, "constant")
    assert a.aug == "report+lib" and a.bank_size == 128 and (a.export, a.holdout) == ("best", 0.0)
    assert (a.amp, a.drop_last) == (False, False)  # no autocast; DataLoader's default
    views = p1_pretrain_byol.build_views(a.aug, 128, torch.device("cpu"))
    # the report's list: RRC(128), flip, ColorJitter(0.2 x 4) always, once for both views
    assert views[0].augment is views[1].augment
    first = views[0].augment.augment
    assert (first.scale, first.p_flip, first.jitter, first.p_jitter) == (
        (0.08, 1.0), 0.5, (0.2, 0.2, 0.2, 0.2), 1.0)
    lib = [type(m).__name__ for m in views[0].then]  # then byol-pytorch's default, per batch
    assert lib == ["RandomApply", "RandomGrayscale", "RandomHorizontalFlip", "RandomApply",
                   "RandomResizedCrop", "Normalize"]


def test_byol_strong_is_the_long_warm_cosine_asymmetric_run():
    a = byol("strong")
    assert (a.epochs, a.batch_size, a.lr, a.weight_decay) == (1000, 512, 1e-4, 0.0)
    # 1,000 steps: 34,560 images after the 10% hold-out / 512 = 67 steps an epoch -> 15 epochs
    assert (a.schedule, a.warmup_epochs) == ("cosine", 15.0)
    assert (a.aug, a.ema_schedule, a.target, a.holdout) == ("byol", "cosine", "ema", 0.1)
    views = p1_pretrain_byol.build_views(a.aug, 128, torch.device("cpu"))
    assert [(v.augment.p_blur, v.augment.p_solarize) for v in views] == [(1.0, 0.0), (0.1, 0.2)]
    assert all(v.then is None for v in views)
    assert parse(p1_pretrain_byol, "--data-dir", "m", "--recipe", "strong",
                 "--target", "simsiam").target == "simsiam"  # the option the issue asks for


def decayed(optimizer):
    """{number of parameters with weight decay > 0, without}."""
    on = sum(len(g["params"]) for g in optimizer.param_groups if g["weight_decay"] > 0)
    off = sum(len(g["params"]) for g in optimizer.param_groups if g["weight_decay"] == 0)
    return on, off


def test_finetune_report_is_the_reports_code():
    a = finetune("report")
    assert (a.optimizer, a.lr, a.weight_decay, a.batch_size, a.epochs) == (
        "adamw", 3e-4, 1e-5, 64, 300)
    assert (a.schedule, a.warmup_epochs, a.label_smoothing) == ("constant", 0.0, 0.0)
    assert (a.bank_size, a.image_size, a.backbone_lr_scale) == (128, 128, 1.0)
    assert (a.amp, a.drop_last, a.keep_epochs) == (False, False, "1,100")  # t-SNE: 1 and 100
    model = p1_common.Classifier(65)
    optimizer = p1_finetune.build_optimizer(model, a)
    n = len(list(model.parameters()))
    assert decayed(optimizer) == (n, 0)  # every parameter decays, biases and BN included
    assert {g["lr"] for g in optimizer.param_groups} == {3e-4}  # one lr for head and backbone
    aug = p1_finetune.build_augment(a)  # RRC, flip, rotation 15, RandomCrop pad 4, CJ 0.2 x 4
    assert (aug.scale, aug.degrees, aug.translate, aug.jitter, aug.p_jitter) == (
        (0.08, 1.0), 15.0, 4 / 128, (0.2, 0.2, 0.2, 0.2), 1.0)
    # gradual unfreezing: head only for 0-based epochs 0-7, + layer4 from 8, all from 12
    steps = p1_finetune.parse_unfreeze(a.unfreeze)
    trainable = {}
    for epoch in (1, 8, 9, 12, 13):  # 1-based, as the loop counts
        p1_finetune.unfreeze(model, steps, epoch)
        trainable[epoch] = {n.split(".")[0] for n, p in model.named_parameters()
                            if p.requires_grad}
    assert trainable[1] == trainable[8] == {"fc"}
    assert trainable[9] == trainable[12] == {"fc", "layer4"}
    assert "conv1" in trainable[13] and "layer1" in trainable[13]
    # D/E: the backbone is frozen, but model.train() still moves its BatchNorm statistics
    d = finetune("report", "D")
    frozen = p1_common.Classifier(65, freeze_backbone=True, freeze_bn=d.freeze_bn).train()
    assert frozen.bn1.training and not frozen.conv1.weight.requires_grad


def test_finetune_strong_trains_all_at_once_and_freezes_bn_in_d_and_e():
    a = finetune("strong")
    assert (a.optimizer, a.lr, a.weight_decay, a.batch_size, a.epochs) == (
        "adamw", 5e-4, 0.0, 64, 300)
    assert (a.schedule, a.warmup_epochs, a.unfreeze, a.aug) == ("cosine", 1.6, "", "simclr")
    aug = p1_finetune.build_augment(a)
    assert (aug.jitter, aug.p_jitter, aug.p_gray, aug.p_blur) == ((0.8, 0.8, 0.8, 0.2), 0.8,
                                                                   0.2, 0.5)
    frozen = p1_common.Classifier(65, freeze_backbone=True,
                                  freeze_bn=finetune("strong", "E").freeze_bn).train()
    assert not frozen.bn1.training and frozen.fc[1].training  # backbone BN held, head BN trains


def test_strong_fine_tuning_takes_each_cells_own_run_unless_a_flag_says_otherwise(tmp_path,
                                                                                 monkeypatch):
    backbone = tmp_path / "backbone.pth"
    backbone.write_bytes(b"checked for existence only")
    seen = {}
    monkeypatch.setattr(p1_finetune, "run_setting",
                        lambda a, banks: seen.setdefault(a.setting, a) and None)
    p1_finetune.main(parse(p1_finetune, "--setting", "all", "--data-dir", tmp_path, "--recipe",
                           "strong", "--backbone", backbone, "--sl-backbone", backbone,
                           "--batch-size", 16, "--lr", 5e-4))  # 5e-4 is the recipe's own lr
    cell = {s: (a.optimizer, a.lr, a.weight_decay, a.batch_size, a.epochs, a.schedule, a.aug)
            for s, a in seen.items()}
    assert cell == {  # JustinKai A, Lucashien B, pha123661 C, stann37 D, JackChen E
        "A": ("adamw", 5e-4, 0.0, 16, 150, "constant", "simclr"),
        "B": ("adamw", 1e-3, 0.0, 16, 600, "constant", "simclr"),  # batch 256 lost to the flag
        "C": ("adamw", 5e-4, 0.0, 16, 300, "cosine", "simclr"),
        "D": ("adamw", 3e-4, 1e-5, 16, 300, "constant", "report"),
        "E": ("adam", 5e-4, 1e-3, 16, 300, "multistep", "simclr")}
    assert seen["D"].decay_all and seen["D"].freeze_bn and seen["E"].freeze_bn
    assert seen["A"].explicit_flags == ["backbone", "batch_size", "data_dir", "setting",
                                        "sl_backbone"]
    report = parse(p1_finetune, "--setting", "all", "--data-dir", "x")
    assert recipes.for_setting(report, "B") == {}  # the report recipe is one run for all


def test_multistep_halves_at_epochs_30_100_200_of_300():
    from training import lr_multiplier
    steps = [lr_multiplier(e, 300, 0, "multistep") for e in (0, 29, 30, 99, 100, 199, 200, 299)]
    assert steps == [1, 1, 0.5, 0.5, 0.25, 0.25, 0.125, 0.125]


def seg(module, recipe):
    return parse(module, "--recipe", recipe)


def test_fcn32s_report_is_the_reports_code():
    a = seg(p2_train_fcn32s, "report")
    assert (a.optimizer, a.lr, a.weight_decay, a.decay_all, a.clip_grad) == (
        "adamw", 1e-4, 1e-4, True, 1.0)
    assert (a.batch_size, a.epochs, a.schedule, a.warmup_epochs) == (50, 150, "constant", 0.0)
    assert a.loss == "ce" and p2_engine.parse_floats(a.class_weights, 7, "") == [1, 1, 5, 1, 1,
                                                                                  1, 2]
    assert (a.fc_init, a.upscore_init) == ("fresh", "random")
    assert (a.amp, a.drop_last) == (False, False)
    aug = p2_engine.build_augment(a)  # H/V flips, rotation up to 30 (fill Unknown), colour
    assert (aug.p_flip, aug.p_rot90, aug.degrees, aug.color, aug.min_scale) == (
        0.5, 0.0, 30.0, 0.2, 1.0)


def test_fcn32s_strong_keeps_the_recipe_with_the_fcn_papers_initialisation():
    r, s = seg(p2_train_fcn32s, "report"), seg(p2_train_fcn32s, "strong")
    assert (s.fc_init, s.upscore_init) == ("vgg", "bilinear")
    differ = {k for k in vars(r) if getattr(r, k) != getattr(s, k)}
    assert differ == {"recipe", "fc_init", "upscore_init", "amp", "drop_last", "exact_aug"}


def test_deeplabv3_report_is_the_reports_code():
    a = seg(p2_train_deeplabv3, "report")
    assert (a.arch, a.init, a.optimizer, a.lr, a.weight_decay, a.decay_all) == (
        "resnet50", "coco", "adamw", 3e-4, 1e-5, True)
    assert (a.batch_size, a.epochs, a.schedule, a.amp, a.aux_weight, a.drop_last) == (
        30, 100, "constant", False, 0.0, False)
    assert (a.loss, a.focal_gamma) == ("focal", 2.0)
    assert p2_engine.parse_floats(a.class_weights, 7, "") == [2, 1, 5, 1, 1, 1, 1]
    # flips; `if random() > .5: angle = choice([0, 90, 180, 270])`, a turn with p 0.375;
    # p 0.5 colour 0.9-1.1
    aug = p2_engine.build_augment(a)
    assert (aug.p_flip, aug.p_rot90, aug.degrees, aug.color, aug.min_scale) == (
        0.5, 0.375, 0.0, 0.1, 1.0)


def test_deeplabv3_strong_is_the_best_public_run():
    a = seg(p2_train_deeplabv3, "strong")
    assert (a.arch, a.init, a.optimizer, a.lr, a.weight_decay) == (
        "resnet101", "coco", "adam", 1e-4, 1e-5)
    assert p2_engine.parse_floats(a.betas, 2, "") == [0.8, 0.999]
    assert (a.batch_size, a.epochs, a.schedule) == (8, 100, "plateau")
    assert (a.loss, a.focal_gamma, a.focal_alpha, a.class_weights) == ("focal", 2.0, 0.25, "")
    aug = p2_engine.build_augment(a)  # flips only
    assert (aug.p_flip, aug.p_rot90, aug.degrees, aug.color) == (0.5, 0.0, 0.0, 0.0)


def test_a_flag_wins_over_its_recipe():
    a = parse(p2_train_deeplabv3, "--recipe", "strong", "--batch-size", "4", "--lr", "0.01")
    assert (a.batch_size, a.lr, a.arch) == (4, 0.01, "resnet101")


def test_plateau_schedule_halves_the_lr_after_five_epochs_without_a_new_best():
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.Adam([param], lr=1e-4)
    scheduler = p2_engine.make_lr_scheduler(optimizer, "plateau", 100)
    lrs = []
    for metric in (0.5, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6):
        scheduler.step()  # per step: no change
        scheduler.observe(metric)
        lrs.append(optimizer.param_groups[0]["lr"])
    # best 0.6 at call 2; calls 3-7 are 5 bad epochs (patience 5), the 6th (call 8) halves it
    assert lrs == [1e-4] * 7 + [5e-5]


def test_reproduce_dry_run_prints_each_recipe():
    """Each training command carries its recipe written out (the demo's own flags follow)."""
    out = {}
    for recipe in recipes.NAMES:
        proc = subprocess.run(["bash", "reproduce.sh", "--dry-run", "--recipe", recipe],
                              cwd=REPO, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        out[recipe] = proc.stdout
    expect = {  # a few of the values the table sets apart, as the command line spells them
        "p1_pretrain_byol.py": ({"--epochs 300", "--aug report+lib", "--decay-all"},
                                {"--epochs 1000", "--aug byol", "--ema-schedule cosine"}),
        "p1_finetune.py": ({"--lr 0.0003", "--unfreeze 8:layer4,12:all", "--no-freeze-bn"},
                           {"--lr 0.0005", "--aug simclr", "--freeze-bn"}),
        "p2_train_fcn32s.py": ({"--fc-init fresh", "--class-weights 1,1,5,1,1,1,2"},
                               {"--fc-init vgg", "--upscore-init bilinear"}),
        "p2_train_deeplabv3.py": ({"--arch resnet50", "--batch-size 30", "--no-amp"},
                                  {"--arch resnet101", "--schedule plateau", "--betas 0.8,0.999"}),
    }
    for script, wanted in expect.items():
        for recipe, words in zip(recipes.NAMES, wanted):
            lines = [ln for ln in out[recipe].splitlines() if ln.startswith("+ ") and script in ln]
            assert len(lines) == 1 and f"--recipe {recipe} " in lines[0], (recipe, lines)
            assert all(f" {w} " in lines[0] for w in words), (recipe, script, lines[0])
            # every value of the recipe, in its order, as RESULTS.md's recipe table shows it
            every = recipes.shown(recipes.flags(script[:-3], recipe))
            assert f" {every} " in lines[0], (recipe, script, lines[0])
            table = "\n".join(results_report.recipe_section(recipe))
            assert f"| `{script}` | `{every}` |" in table


def test_byol_report_views_share_the_per_image_draw():
    """The report's code drew its list once per image and made both views from that tensor:
    with byol-pytorch's per-batch augmentation taken out, its two views are equal, yet each
    image of the batch has its own draw. --aug report draws each view on its own."""
    batch = torch.randint(0, 256, (1, 3, 40, 40), dtype=torch.uint8).expand(6, -1, -1, -1)
    batch = batch.contiguous()
    shared = p1_pretrain_byol.build_views("report+lib", 32, torch.device("cpu"))
    for view in shared:
        view.then = None  # byol-pytorch's per-batch augmentation, drawn apart for each view
    one, two = shared[0](batch), shared[1](batch)
    assert torch.equal(one, two)
    assert not torch.allclose(one[0], one[1], atol=1e-3)  # per image
    assert not torch.equal(shared[0](batch.clone()), one)  # a new batch, a new draw
    again = shared[1](batch)  # ... and a new forward on the same tensor draws again too
    assert torch.equal(shared[0](batch), again) and not torch.equal(again, one)
    apart = p1_pretrain_byol.build_views("report", 32, torch.device("cpu"))
    assert not torch.allclose(apart[0](batch), apart[1](batch), atol=1e-3)


def test_deeplabv3_report_turns_a_quarter_as_often_as_the_reports_code():
    """`if random() > .5: angle = choice([0, 90, 180, 270])`: no turn with p 0.625, each of
    90, 180 and 270 degrees with p 0.125, counted over 4,000 draws of the recipe's
    augmentation (flips off, to read the turn off the image)."""
    a = seg(p2_train_deeplabv3, "report")
    aug = p2_engine.build_augment(a)
    aug.p_flip, aug.color, aug.generator = 0.0, 0.0, torch.Generator().manual_seed(0)
    aug.size = (4, 4)  # not the recipe's 512: 4,000 draws of a 4 x 4 image
    image = torch.arange(16, dtype=torch.uint8).view(1, 1, 4, 4).expand(4000, 3, 4, 4) * 10
    out, _ = aug(image.contiguous(), torch.zeros(4000, 4, 4, dtype=torch.uint8))
    out = out[:, 0]
    ref = augment.normalize(augment.to_float(image[:1]))[:, 0]  # (1, 4, 4)
    turns = torch.stack([torch.isclose(out, ref.rot90(k, (1, 2))).flatten(1).all(1)
                         for k in range(4)], 1)  # (4000, 4): which turn each sample took
    assert turns.sum(1).eq(1).all()
    share = turns.float().mean(0).tolist()
    assert share == pytest.approx([0.625, 0.125, 0.125, 0.125], abs=0.02), share


def test_reproduce_runs_the_tsne_on_epochs_1_and_100(tmp_path):
    """The report's t-SNE panels are epochs 1 and 100 of setting C: p1_finetune.py keeps them
    (--keep-epochs 1,100) and reproduce.sh draws from them on real data."""
    for d in ("p1_data/mini/train", "p1_data/office", "p2_data/train", "p2_data/validation"):
        (tmp_path / d).mkdir(parents=True)
    proc = subprocess.run(["bash", "reproduce.sh", "--dry-run", "--data-dir", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    tsne = [ln for ln in proc.stdout.splitlines() if ln.startswith("+ ") and "p1_tsne.py" in ln]
    assert len(tsne) == 1
    assert "--first runs/p1_finetune/C/epoch_001.pth" in tsne[0]
    assert "--last runs/p1_finetune/C/epoch_100.pth" in tsne[0]
    assert p1_finetune.kept_epochs("1,100", 300) == {1, 100}
    assert p1_finetune.kept_epochs("1,100", 12) == {1, 12}  # past --epochs: the last


def help_of(module, flag, recipe="report"):
    """The --help text of one flag, its shown default included, under a recipe."""
    parser = module.get_args_parser()
    parser.set_defaults(**recipes.settings(module.__name__, recipe))  # as --recipe does
    action = next(a for a in parser._actions if flag in a.option_strings)
    return " ".join(parser._get_formatter()._expand_help(action).split())


def test_help_texts_say_what_the_code_does():
    # one lr for the whole model in both recipes, as the help says
    assert {recipes.settings("p1_finetune", r)["backbone_lr_scale"] for r in recipes.NAMES} == {
        1.0}
    assert "both recipes: 1.0" in help_of(p1_finetune, "--backbone-lr-scale")
    # the banks are 128 px in both recipes (the report's Resize((128, 128)))
    assert {recipes.settings("p1_pretrain_byol", r)["bank_size"] for r in recipes.NAMES} == {128}
    assert "both recipes: 128" in help_of(p1_pretrain_byol, "--bank-size")
    # a --x/--no-x default is shown, False included
    assert "(default: --no-amp)" in help_of(p2_train_deeplabv3, "--amp", "report")
    assert "(default: --amp)" in help_of(p2_train_deeplabv3, "--amp", "strong")
    # plateau: what ReduceLROnPlateau is given
    assert "6 epochs in a row" in help_of(p2_train_deeplabv3, "--schedule")
    assert "patience 5, relative threshold 1e-4" in help_of(p2_train_deeplabv3, "--schedule")
    plateau = p2_engine.make_lr_scheduler(
        torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), "plateau", 10).plateau
    assert (plateau.patience, plateau.threshold, plateau.threshold_mode, plateau.factor) == (
        5, 1e-4, "rel", 0.5)
    # focal alpha is one factor for every class; per-class weights are --class-weights
    assert "the same for every class" in help_of(p2_train_deeplabv3, "--focal-alpha")
    assert "PyTorch's default initialisation (the report's code)" in help_of(
        p2_train_fcn32s, "--fc-init")


FETCH = "bash hw1_download.sh data fetches it into hw1_data/"


def reproduce_sh(*argv, repo=REPO, timeout=60):
    return subprocess.run(["bash", str(repo / "reproduce.sh"), *map(str, argv)], cwd=repo,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHON": sys.executable})


def test_a_named_data_dir_that_is_not_there_stops_reproduce_at_once(tmp_path):
    """A typo in --data-dir is an error, not the 16-minute demo: one line on stderr, nothing on
    stdout, before any Python starts. --data is the old name."""
    for flag in ("--data-dir", "--data"):
        t0 = time.time()
        proc = reproduce_sh(flag, tmp_path / "typo")
        assert time.time() - t0 < 5
        assert proc.returncode == 2 and proc.stdout == ""
        assert proc.stderr.splitlines() == [
            f"error: --data-dir {tmp_path / 'typo'} does not exist; pass the folder that holds "
            f"p1_data/ and p2_data/ ({FETCH}), or --demo for the procedural demo"]
    (tmp_path / "half" / "p1_data" / "mini" / "train").mkdir(parents=True)
    proc = reproduce_sh("--data-dir", tmp_path / "half")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.splitlines() == [
        f"error: --data-dir {tmp_path / 'half'} has no p1_data/office; pass the folder that "
        f"holds p1_data/ and p2_data/ ({FETCH}), or --demo for the procedural demo"]
    proc = reproduce_sh("--demo", "--data-dir", tmp_path / "half")
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1
    assert "--data-dir and --demo (or --scale) exclude each other" in proc.stderr


def test_the_demo_runs_only_without_data_dir_and_hw1_data_and_says_so(tmp_path):
    """No --data-dir and no hw1_data/ beside reproduce.sh (a copy here, whatever this checkout
    holds): the demo, announced on the first line. An hw1_data/ that is there but incomplete
    is an error, not the demo."""
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("reproduce.sh", "recipes.py"):
        shutil.copy(REPO / name, repo / name)
    proc = reproduce_sh("--dry-run", repo=repo)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == (f"== DEMO: no --data-dir was given and hw1_data/ is not there ({FETCH}; "
                        "--data-dir DIR names another folder).")
    data = [ln for ln in lines if ln.startswith("+ ") and "make_demo_data.py" in ln]
    assert len(data) == 1
    assert "make_demo_data.py --output-dir results/demo-demo/demo_data --overwrite " in data[0]
    (repo / "hw1_data" / "p1_data" / "mini" / "train").mkdir(parents=True)
    proc = reproduce_sh("--dry-run", repo=repo)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.splitlines() == [
        "error: hw1_data has no p1_data/office (a download that did not finish?); bash "
        "hw1_download.sh data completes it, --data-dir DIR names another folder, --demo runs "
        "the procedural demo"]


def test_recipes_py_has_a_help_and_refuses_what_it_does_not_know():
    def run(*argv):
        return subprocess.run([sys.executable, "recipes.py", *argv], cwd=REPO,
                              capture_output=True, text=True, timeout=60)
    shown = run("--help")
    assert shown.returncode == 0 and shown.stdout.startswith("usage: python3 recipes.py")
    assert "Traceback" not in shown.stderr
    assert run("p1_finetune", "strong").stdout.splitlines() == recipes.flags("p1_finetune",
                                                                             "strong")
    for argv in ((), ("nope",), ("p1_finetune", "best")):
        bad = run(*argv)
        assert bad.returncode == 2 and bad.stderr.startswith("usage:") and not bad.stdout


def test_the_fine_tuning_table_lands_under_the_output_dir(tmp_path, monkeypatch):
    """Without --results-dir, p1_table.* go into --output-dir, not into the folder the command
    runs from; --results-dir still names another folder."""
    row = {"setting": "A", "pretraining": "none", "fine_tuning": "full model",
           "best_val_acc": 0.5, "best_epoch": 1, "last_val_acc": 0.5, "epochs": 1}
    monkeypatch.setattr(p1_finetune, "run_setting", lambda a, banks: dict(row))
    monkeypatch.chdir(tmp_path)
    p1_finetune.main(parse(p1_finetune, "--setting", "A", "--data-dir", tmp_path,
                           "--output-dir", tmp_path / "runs"))
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["p1_table.json",
                                                                      "p1_table.md"]
    assert not (tmp_path / "results").exists()
    p1_finetune.main(parse(p1_finetune, "--setting", "A", "--data-dir", tmp_path,
                           "--output-dir", tmp_path / "runs", "--results-dir", tmp_path / "t"))
    assert (tmp_path / "t" / "p1_table.md").exists()
