"""Each recipe value reaches what the training loop really uses.

test_recipes.py checks that `--recipe NAME` parses to the values of the report's code and of the
strongest public runs. This file checks the next link: every training script is run for real, on
tiny data, through its own main(), up to its first optimizer steps, and the objects its loop
passed to train_one_epoch / train_step are compared with the recipe:
  - the optimizer's class and param groups: lr, betas, weight decay, which parameters decay;
  - the learning rate at chosen steps, against the schedule's formula written out here;
  - the loss on a fixed input, against the formula written out here;
  - the gradient's global norm after clipping; autocast on or off; the augmentation object;
  - the network that was built (architecture, which pretrained tensors it starts from).
Every key of every recipe has a check (RECIPE_CHECKS): a key added to recipes.py without one
fails `test_every_recipe_key_has_a_check`, and a value that stops reaching the loop fails its
check. The batch size is the one value the runs here override (for speed); test_recipes.py
pins it.
"""

import inspect
import math

import pytest
import torch
import torchvision
import torchvision.models._api as tv_api
from test_p1 import make_p1_data
from test_p2 import SAMPLE_IDS, shrink_pairs

import p1_finetune
import p1_pretrain_byol
import p2_common
import p2_engine
import p2_train_deeplabv3
import p2_train_fcn32s
import recipes
import training
import utils

SCRIPTS = {"p1_pretrain_byol": p1_pretrain_byol, "p1_finetune": p1_finetune,
           "p2_train_fcn32s": p2_train_fcn32s, "p2_train_deeplabv3": p2_train_deeplabv3}
LOOPS = {"p1_pretrain_byol": p1_pretrain_byol, "p1_finetune": p1_finetune,
         "p2_train_fcn32s": p2_engine, "p2_train_deeplabv3": p2_engine}
EXEMPT = {"batch_size"}  # overridden below for speed; test_recipes.py pins it
# batches that leave a last partial batch of 2 (12 images, 5 train pairs): --drop-last shows
BATCH = {"p1_pretrain_byol": 5, "p1_finetune": 5, "p2_train_fcn32s": 3, "p2_train_deeplabv3": 3}
N_TRAIN = {"p1_pretrain_byol": 12, "p1_finetune": 12, "p2_train_fcn32s": 5,
           "p2_train_deeplabv3": 5}


def steps_per_epoch(n, batch, drop_last):
    """A DataLoader's count: the full batches, and without drop_last the partial one (the
    loops drop a last batch of one image, which BatchNorm cannot train on)."""
    return n // batch + (0 if drop_last or n % batch < 2 else 1)


class Stop(Exception):
    """Raised by the spy once the loop has made the steps a test needs."""


def run_first_steps(monkeypatch, script, argv, steps=1):
    """Run SCRIPT's main(argv) until `steps` calls of its loop's train_step have returned.

    -> {"epoch": train_one_epoch's arguments, "step": the first train_step's arguments (with
    the defaults the call left out filled in), "before": the model's tensors before the first
    step, "decays": the EMA decay of each step (BYOL), "batches": the sizes of the epoch's
    index batches, "precision": the `amp` the run set its CUDA switches for}."""
    module, loop = SCRIPTS[script], LOOPS[script]
    epoch_fn, step_fn = loop.train_one_epoch, loop.train_step
    seen = {"calls": 0, "decays": []}

    def arguments(fn, args, kwargs):
        bound = inspect.signature(fn).bind(*args, **kwargs)
        bound.apply_defaults()
        return dict(bound.arguments)

    def epoch_spy(*args, **kwargs):
        seen["epoch"] = arguments(epoch_fn, args, kwargs)
        if isinstance(seen["epoch"]["train"][2], int):  # BYOL: (bank, views, steps, ...)
            seen["steps"] = seen["epoch"]["train"][2]
        return epoch_fn(*args, **kwargs)

    def step_spy(*args, **kwargs):
        call = arguments(step_fn, args, kwargs)
        if seen["calls"] == 0:
            model = call.get("model", call.get("learner"))
            seen["step"] = call
            seen["before"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        seen["decays"].append(call.get("decay"))
        out = step_fn(*args, **kwargs)
        seen["calls"] += 1
        if seen["calls"] == steps:
            raise Stop
        return out

    clip_fn = torch.nn.utils.clip_grad_norm_

    def clip_spy(parameters, max_norm, *args, **kwargs):
        parameters = list(parameters)
        norm = clip_fn(parameters, max_norm, *args, **kwargs)
        seen.setdefault("clips", []).append((parameters, max_norm, norm.item()))
        return norm

    batches_fn = training.train_batches

    def batches_spy(*args, **kwargs):
        batches = list(batches_fn(*args, **kwargs))
        seen["batches"] = [len(b) for b in batches]
        return iter(batches)

    def precision_spy(device, amp=True):
        seen["precision"] = amp
        return precision_fn(device, amp)

    precision_fn = utils.setup_precision
    monkeypatch.setattr(loop, "train_one_epoch", epoch_spy)
    monkeypatch.setattr(loop, "train_step", step_spy)
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", clip_spy)
    monkeypatch.setattr(training, "train_batches", batches_spy)
    monkeypatch.setattr(utils, "setup_precision", precision_spy)
    if hasattr(loop, "setup_precision"):
        monkeypatch.setattr(loop, "setup_precision", precision_spy)
    parsed = module.get_args_parser().parse_args([str(a) for a in argv])
    with pytest.raises(Stop):
        module.main(parsed)
    return seen


# ------------------------------------------------------------------------------ formulas
def lr_factor(step, total, warmup, schedule):
    """The schedules of training.lr_multiplier, written out again: linear warm-up from
    1/warmup, then constant, half a cosine to 0, or x0.5 at 10%, 1/3 and 2/3 of the rest."""
    if step < warmup:
        return (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return {"constant": 1.0,
            "cosine": (1 + math.cos(math.pi * t)) / 2,
            "multistep": 0.5 ** sum(t >= m for m in (0.1, 1 / 3, 2 / 3))}[schedule]


def log_probs(logits):
    return logits - torch.logsumexp(logits, dim=1, keepdim=True)


def segmentation_loss_formula(logits, target, weights, gamma, alpha):
    """Cross-entropy (gamma 0): sum_i w_ti (-log p_ti) / sum_i w_ti, nn.CrossEntropyLoss(weight)
    as the report's FCN32s code. Focal: the report's DeepLab code, ce_i = w_ti (-log p_ti),
    pt_i = exp(-ce_i), mean over the pixels of (1 - pt_i)^gamma ce_i, times alpha. w = 1
    without class weights."""
    logp = log_probs(logits.double()).gather(1, target.unsqueeze(1)).squeeze(1)
    w = torch.ones(7, dtype=torch.float64) if weights is None else torch.tensor(
        weights, dtype=torch.float64)
    wt = w[target]
    if gamma == 0:
        return alpha * (wt * -logp).sum() / wt.sum()
    ce = wt * -logp
    return alpha * ((1 - torch.exp(-ce)) ** gamma * ce).mean()


def grad_norm(model):
    grads = [p.grad.double().norm() for p in model.parameters() if p.grad is not None]
    return torch.stack(grads).norm().item()


# ------------------------------------------------------------------------------ checks
def check_optimizer(seen, rec, lrs=None):
    """Class, lr, betas and, per parameter, the weight decay of the loop's optimizer. `lrs`
    maps a parameter-name predicate to the lr its parameters must have (default: rec lr)."""
    opt = seen["step"]["optimizer"]
    cls = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam, "sgd": torch.optim.SGD}
    assert type(opt) is cls[rec.get("optimizer", "adamw")]
    model = seen["step"].get("model", seen["step"].get("learner"))
    group_of = {id(p): g for g in opt.param_groups for p in g["params"]}
    trainable = {n: p for n, p in model.named_parameters() if id(p) in group_of}
    assert trainable, "the optimizer holds none of the model's parameters"
    for name, p in trainable.items():
        group = group_of[id(p)]
        lr = rec["lr"] if lrs is None else next(v for pred, v in lrs if pred(name))
        assert group.get("initial_lr", group["lr"]) == pytest.approx(lr, rel=1e-12), name
        wants = rec["weight_decay"] if (rec.get("decay_all") or p.ndim > 1) else 0.0
        assert group["weight_decay"] == wants, (name, group["weight_decay"], wants)
        if "betas" in group:
            betas = tuple(float(b) for b in rec["betas"].split(",")) if rec.get("betas") else (
                0.9, 0.999)
            assert tuple(group["betas"]) == betas, name
    return trainable


def check_schedule(seen, rec, steps_per_epoch):
    """The lr after k scheduler steps, for chosen k, against lr_factor."""
    scheduler, opt = seen["epoch"]["scheduler"], seen["step"]["optimizer"]
    if rec["schedule"] == "plateau":  # ReduceLROnPlateau on val mIoU: x0.5, patience 5
        lrs = []
        for metric in (0.5, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6):
            scheduler.observe(metric)
            lrs.append(opt.param_groups[0]["lr"])
        assert lrs == pytest.approx([rec["lr"]] * 7 + [rec["lr"] / 2])
        return
    base = [g.get("initial_lr", g["lr"]) for g in opt.param_groups]
    total = rec["epochs"] * steps_per_epoch
    warmup = round(rec["warmup_epochs"] * steps_per_epoch)
    done = seen["calls"] - 1  # the loop stepped the scheduler after each step but the last
    chosen = sorted(k for k in {0, 1, warmup - 1, warmup, warmup + 1, total // 3, total // 2,
                                total - 1} if k >= done)
    for k in chosen:
        for _ in range(k - done):
            scheduler.step()
        done = k
        factor = lr_factor(k, total, warmup, rec["schedule"])
        for group, lr in zip(opt.param_groups, base):
            assert group["lr"] == pytest.approx(lr * factor, rel=1e-9), (k, rec["schedule"])


def check_amp(seen, rec):
    """Autocast on or off in the step, and the CUDA switches set for the same precision
    (without amp: PyTorch's defaults, no TF32 matmuls; test_fp32_keeps_pytorchs_tf32)."""
    assert seen["step"]["amp"] is rec.get("amp", True)
    assert seen["precision"] is rec.get("amp", True)


def check_batches(seen, rec, n, batch):
    """The epoch's index batches: the full ones and, without --drop-last, the partial one; the
    steps the loop counts for an epoch (BYOL's train tuple) are as many."""
    steps = steps_per_epoch(n, batch, rec.get("drop_last", True))
    if "steps" in seen:
        assert seen["steps"] == steps
    assert len(seen["batches"]) == steps, seen["batches"]
    assert seen["batches"][:n // batch] == [batch] * (n // batch)
    assert sum(seen["batches"]) == (n if steps > n // batch else n // batch * batch)


def test_fp32_keeps_pytorchs_tf32_defaults():
    """An fp32 run (no amp, as the report's code) leaves TF32 matmuls off, PyTorch's default;
    the bf16 fast path lets TF32 take its fp32 leftovers. Convolutions keep cuDNN's TF32."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
             torch.backends.cudnn.benchmark)
    try:
        for amp in (True, False):
            utils.setup_precision(torch.device("cuda"), amp)
            assert torch.backends.cuda.matmul.allow_tf32 is amp
            assert torch.backends.cudnn.allow_tf32 is True
    finally:
        (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
         torch.backends.cudnn.benchmark) = saved


# ------------------------------------------------------------------------------ data
@pytest.fixture(scope="module")
def p1_data(tmp_path_factory):
    return make_p1_data(tmp_path_factory.mktemp("p1"), classes=4, train_per_class=3,
                        val_per_class=1, mini=12)


@pytest.fixture(scope="module")
def resnet_file(tmp_path_factory):
    torch.manual_seed(2)
    path = tmp_path_factory.mktemp("sl") / "resnet50.pt"
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), path)
    return path


@pytest.fixture(scope="module")
def p2_data(tmp_path_factory, samples_dir):
    root = tmp_path_factory.mktemp("p2")
    shrink_pairs(samples_dir, root / "train", 32, ids=(*SAMPLE_IDS, "0008"),
                 names=(*SAMPLE_IDS, "0999"))  # 5 pairs: a last partial batch of 2
    shrink_pairs(samples_dir, root / "validation", 32)
    return root


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------------------ BYOL
BYOL_VIEWS = {  # what each recipe's --aug must give the two views, written out
    # one draw of the report's list for both views (test_recipes.py shows the sharing)
    "report+lib": [dict(scale=(0.08, 1.0), p_flip=0.5, jitter=(0.2, 0.2, 0.2, 0.2),
                        p_jitter=1.0, p_gray=0.0, p_blur=0.0, p_solarize=0.0, exact=True)] * 2,
    "byol": [dict(jitter=(0.4, 0.4, 0.2, 0.1), p_jitter=0.8, p_gray=0.2, p_blur=b,
                  p_solarize=s, exact=False) for b, s in ((1.0, 0.0), (0.1, 0.2))],
}


def byol_checks(seen, rec, n_images):
    learner = seen["step"]["learner"]
    bank = seen["epoch"].get("train", [None])[0]
    held = round(rec["holdout"] * n_images) if rec["holdout"] > 0 else 0
    n, batch = n_images - held, BATCH["p1_pretrain_byol"]
    steps = steps_per_epoch(n, batch, rec.get("drop_last", True))
    return {
        ("lr", "weight_decay", "decay_all"): lambda: check_optimizer(seen, rec),
        ("schedule", "warmup_epochs", "epochs"): lambda: check_schedule(seen, rec, steps),
        ("drop_last",): lambda: check_batches(seen, rec, n, batch),
        ("amp",): lambda: check_amp(seen, rec),
        ("bank_size",): lambda: check_equal(tuple(bank.images.shape[-2:]),
                                            (rec["bank_size"],) * 2),
        ("holdout",): lambda: check_equal(len(bank), n_images - held),
        ("aug",): lambda: check_byol_views(learner, rec["aug"]),
        ("target",): lambda: check_equal(learner.use_momentum, rec["target"] == "ema"),
        ("ema_decay", "ema_schedule"): lambda: check_ema(seen, rec, steps),
        # which epoch backbone.pth comes from needs whole epochs: test_p1's
        # test_backbone_is_a_strict_resnet50_state_dict_of_the_best_epoch checks it
        ("export",): lambda: check_equal(seen["epoch"]["args"].export, rec["export"]),
    }


def check_equal(got, want):
    assert got == want


def check_byol_views(learner, aug):
    views = (learner.augment1, learner.augment2)
    shared = aug == "report+lib"
    assert (views[0].augment is views[1].augment) is shared
    for view, want in zip(views, BYOL_VIEWS[aug]):
        per_image = view.augment.augment if shared else view.augment
        got = {k: getattr(per_image, k) for k in want}
        assert got == want, (aug, got)
        assert (view.then is not None) is shared


def check_ema(seen, rec, steps_per_epoch):
    total = rec["epochs"] * steps_per_epoch
    want = [rec["ema_decay"] if rec["ema_schedule"] == "constant" else
            1 - (1 - rec["ema_decay"]) * (math.cos(math.pi * k / total) + 1) / 2
            for k in range(len(seen["decays"]))]
    assert seen["decays"] == pytest.approx(want, rel=0, abs=1e-12)
    assert rec["ema_schedule"] == "constant" or seen["decays"][1] != rec["ema_decay"]


# Each script also runs once with flags that differ from both recipes, where both recipes
# share a value that a bug could replace by a constant unnoticed (e.g. label smoothing 0).
# A cosine schedule on the report's --no-drop-last shows the steps the schedule counts.
OVERRIDES = {"p1_pretrain_byol": dict(target="simsiam"),
             "p1_finetune": dict(label_smoothing=0.1, backbone_lr_scale=0.1, schedule="cosine"),
             "p2_train_deeplabv3": dict(min_scale=0.5, aux_weight=0.4, schedule="cosine")}


@pytest.mark.parametrize("recipe, extra", [("report", {}), ("strong", {}),
                                           ("report", OVERRIDES["p1_pretrain_byol"])],
                         ids=["report", "strong", "flags"])
def test_byol_recipe_reaches_the_loop(recipe, extra, p1_data, tmp_path, monkeypatch):
    rec = {**recipes.settings("p1_pretrain_byol", recipe), **extra}
    n = 12
    seen = run_first_steps(monkeypatch, "p1_pretrain_byol", [
        "--recipe", recipe, "--data-dir", p1_data / "mini" / "train", "--output-dir", tmp_path,
        "--batch-size", BATCH["p1_pretrain_byol"], "--image-size", 32, "--device", "cpu",
        "--projection-hidden-size", 64, *recipes.to_words(extra)], steps=2)
    for check in byol_checks(seen, rec, n).values():
        check()


# ------------------------------------------------------------------------------ fine-tuning
FINETUNE_AUG = {  # the augmentation list each --aug must give, written out
    "report": dict(scale=(0.08, 1.0), p_flip=0.5, degrees=15.0, translate=4 / 128,
                   jitter=(0.2, 0.2, 0.2, 0.2), p_jitter=1.0, p_gray=0.0, p_blur=0.0,
                   exact=True),  # torchvision's steps one by one
    "simclr": dict(scale=(0.08, 1.0), p_flip=0.5, degrees=0.0, translate=0.0,
                   jitter=(0.8, 0.8, 0.8, 0.2), p_jitter=0.8, p_gray=0.2, p_blur=0.5,
                   exact=False),
}


def finetune_checks(seen, rec, setting, n_train):
    model = seen["step"]["model"]
    frozen = setting in "DE"
    batch = BATCH["p1_finetune"]
    steps = steps_per_epoch(n_train, batch, rec.get("drop_last", True))
    head = rec["lr"]
    body = rec["lr"] * rec["backbone_lr_scale"]

    def optimizer():
        trainable = check_optimizer(seen, rec, lrs=[(lambda n: n.startswith("fc."), head),
                                                    (lambda n: True, body)])
        names = set(trainable)
        assert names == {n for n, _ in model.named_parameters()
                         if n.startswith("fc.") or not frozen}

    def loss():
        torch.manual_seed(0)
        logits, y = torch.randn(6, 65), torch.tensor([0, 3, 64, 7, 7, 12])
        eps = rec["label_smoothing"]
        logp = log_probs(logits.double())
        want = (-(1 - eps) * logp.gather(1, y.unsqueeze(1)).squeeze(1)
                - eps * logp.mean(1)).mean()
        got = seen["step"]["criterion"](logits, y)
        assert got.item() == pytest.approx(want.item(), rel=1e-6)

    def unfreeze():  # the first epoch: the head alone under gradual unfreezing, else all
        first = {n.split(".")[0] for n, p in model.named_parameters() if p.grad is not None}
        if rec["unfreeze"] and not frozen:
            assert first == {"fc"}, first
        else:
            assert first == ({"fc"} if frozen else {n.split(".")[0]
                                                    for n, _ in model.named_parameters()})

    def freeze_bn():  # D/E: the frozen backbone's BatchNorm moves only without --freeze-bn
        assert model.bn1.training is (not (frozen and rec["freeze_bn"]))
        moved = not torch.equal(seen["before"]["bn1.running_mean"], model.bn1.running_mean)
        assert moved is (not (frozen and rec["freeze_bn"]))

    def aug():
        augment = seen["epoch"]["train"][2]
        got = {k: getattr(augment, k) for k in FINETUNE_AUG[rec["aug"]]}
        assert got == FINETUNE_AUG[rec["aug"]]

    def sizes():
        x = seen["step"]["x"]
        assert x.shape[-2:] == (rec["image_size"],) * 2
        assert seen["epoch"]["train"][0].images.shape[-1] == rec["bank_size"]

    return {
        ("optimizer", "lr", "backbone_lr_scale", "weight_decay", "decay_all"): optimizer,
        ("schedule", "warmup_epochs", "epochs"): lambda: check_schedule(seen, rec, steps),
        ("drop_last",): lambda: check_batches(seen, rec, n_train, batch),
        ("amp",): lambda: check_amp(seen, rec),
        ("label_smoothing",): loss, ("unfreeze",): unfreeze, ("freeze_bn",): freeze_bn,
        ("aug",): aug, ("image_size", "bank_size"): sizes,
    }


FINETUNE_CASES = [("report", "C", {}), ("report", "D", {}),
                  *[("strong", s, {}) for s in "ABCDE"],
                  ("report", "B", OVERRIDES["p1_finetune"])]


@pytest.mark.parametrize("recipe, setting, extra", FINETUNE_CASES,
                         ids=[f"{r}-{s}{'-flags' if e else ''}" for r, s, e in FINETUNE_CASES])
def test_finetune_recipe_reaches_the_loop(recipe, setting, extra, p1_data, resnet_file,
                                          tmp_path, monkeypatch):
    rec = {**recipes.settings("p1_finetune", recipe),
           **(recipes.STRONG_SETTINGS.get(setting, {}) if recipe == "strong" else {}), **extra}
    seen = run_first_steps(monkeypatch, "p1_finetune", [
        "--recipe", recipe, "--setting", setting, "--data-dir", p1_data / "office",
        "--backbone", resnet_file, "--sl-backbone", resnet_file, "--output-dir", tmp_path,
        "--results-dir", tmp_path, "--batch-size", BATCH["p1_finetune"], "--device", "cpu",
        *recipes.to_words(extra)])
    for check in finetune_checks(seen, rec, setting, N_TRAIN["p1_finetune"]).values():
        check()


# ------------------------------------------------------------------------------ segmentation
def fake_download(state):
    return lambda url, *args, **kwargs: {k: v.clone() for k, v in state.items()}


@pytest.fixture(scope="module")
def fake_vgg16():
    torch.manual_seed(3)
    return torchvision.models.vgg16(weights=None).state_dict()


def segmentation_checks(seen, rec, script, fake):
    model = seen["step"]["model"]
    n, batch = N_TRAIN[script], BATCH[script]
    steps = steps_per_epoch(n, batch, rec.get("drop_last", True))

    def loss():
        torch.manual_seed(0)
        logits, aux = torch.randn(2, 7, 3, 4), torch.randn(2, 7, 3, 4)
        target = torch.arange(24).view(2, 3, 4) % 7
        weights = ([float(w) for w in rec["class_weights"].split(",")]
                   if rec["class_weights"] else None)
        gamma = rec.get("focal_gamma", 2.0) if rec["loss"].endswith("focal") else 0.0
        alpha = rec.get("focal_alpha", 1.0) if gamma else 1.0
        want = segmentation_loss_formula(logits, target, weights, gamma, alpha)
        aux_weight = rec.get("aux_weight", 0.0)
        if aux_weight:
            want = want + aux_weight * segmentation_loss_formula(aux, target, weights, gamma,
                                                                 alpha)
        got = seen["step"]["criterion"]({"out": logits, "aux": aux}, target)
        assert got.item() == pytest.approx(want.item(), rel=1e-5)

    def clip():  # the gradient of every parameter, clipped to that global norm (or not at all)
        clips = seen.get("clips", [])
        if rec["clip_grad"] > 0:
            assert len(clips) == 1 and clips[0][1] == rec["clip_grad"], clips
            params, max_norm, norm_before = clips[0]
            assert {id(p) for p in params} == {id(p) for p in model.parameters()}
            after = grad_norm(model)
            assert after == pytest.approx(min(norm_before, max_norm), rel=1e-4)
        else:
            assert not clips

    def augment():
        aug = seen["epoch"]["train"][2]
        got = (aug.min_scale, aug.p_rot90, aug.degrees, aug.color, aug.p_flip, aug.exact)
        assert got == (rec["min_scale"], rec["rot90"], rec["rotate"], rec["color"], 0.5,
                       rec.get("exact_aug", False))

    checks = {
        ("optimizer", "lr", "weight_decay", "decay_all", "betas"):
            lambda: check_optimizer(seen, rec),
        ("schedule", "warmup_epochs", "epochs"): lambda: check_schedule(seen, rec, steps),
        ("drop_last",): lambda: check_batches(seen, rec, n, batch),
        ("loss", "focal_gamma", "focal_alpha", "class_weights", "aux_weight"): loss,
        ("clip_grad",): clip,
        ("min_scale", "rot90", "rotate", "color", "exact_aug"): augment,
        ("amp",): lambda: check_amp(seen, rec),
    }
    if script == "p2_train_fcn32s":
        def fc_init():  # fc6/fc7 from VGG16's classifier, or PyTorch's default init
            before = seen["before"]
            fc6 = fake["classifier.0.weight"].view(4096, 512, 7, 7)
            assert torch.equal(before["fc6.weight"], fc6) is (rec["fc_init"] == "vgg")
            assert torch.equal(before["features.0.weight"], fake["features.0.weight"])
            if rec["fc_init"] == "fresh":  # kaiming_uniform(a=sqrt(5)): U(+-1/sqrt(fan_in))
                for key, fan_in in (("fc6", 512 * 49), ("fc7", 4096), ("score", 4096)):
                    w = before[f"{key}.weight"]
                    assert w.abs().max() <= fan_in ** -0.5
                    assert w.std().item() == pytest.approx(fan_in ** -0.5 / 3 ** 0.5, rel=0.02)
            else:  # the FCN paper: a zero score layer
                assert before["score.weight"].abs().max() == 0

        def upscore_init():
            up = seen["before"]["upscore.weight"]
            bilinear = torch.zeros_like(up)
            for c in range(7):
                bilinear[c, c] = p2_common.bilinear_kernel(64)
            assert torch.equal(up, bilinear) is (rec["upscore_init"] == "bilinear")
            layer = model.upscore  # the report's: ConvTranspose2d(7, 7, 64, 32, padding 16)
            padding = (16, 16) if rec["upscore_init"] == "random" else (0, 0)
            assert (layer.kernel_size, layer.stride, layer.padding) == ((64, 64), (32, 32),
                                                                         padding)

        checks[("fc_init",)] = fc_init
        checks[("upscore_init",)] = upscore_init
    else:
        def arch_init():
            blocks = {"resnet50": 6, "resnet101": 23}[rec["arch"]]
            assert len(model.backbone.layer3) == blocks
            assert rec["init"] == "coco"
            for key in ("backbone.conv1.weight", "classifier.0.convs.0.0.weight"):
                assert torch.equal(seen["before"][key], fake[key]), key
            assert model.classifier[-1].out_channels == 7
            # an aux head outside the loss is not built (nor does DDP look for its gradients)
            assert (model.aux_classifier is None) is (rec.get("aux_weight", 0.4) == 0)

        checks[("arch", "init")] = arch_init
    return checks


SEGMENTATION_CASES = [(script, recipe, {}) for script in ("p2_train_fcn32s", "p2_train_deeplabv3")
                      for recipe in recipes.NAMES]
SEGMENTATION_CASES.append(("p2_train_deeplabv3", "report", OVERRIDES["p2_train_deeplabv3"]))


@pytest.mark.parametrize("script, recipe, extra", SEGMENTATION_CASES,
                         ids=[f"{s[3:]}-{r}{'-flags' if e else ''}"
                              for s, r, e in SEGMENTATION_CASES])
def test_segmentation_recipe_reaches_the_loop(script, recipe, extra, p2_data, fake_vgg16,
                                              tmp_path, monkeypatch):
    rec = {**recipes.settings(script, recipe), **extra}
    if script == "p2_train_fcn32s":
        fake = fake_vgg16
    else:  # the COCO-VOC file's keys and shapes (21 classes), random values
        torch.manual_seed(4)
        builder = p2_common.ARCHS[rec["arch"]][0]
        fake = builder(weights=None, weights_backbone=None, num_classes=21,
                       aux_loss=True).state_dict()
    monkeypatch.setattr(tv_api, "load_state_dict_from_url", fake_download(fake))
    seen = run_first_steps(monkeypatch, script, [
        "--recipe", recipe, "--data-dir", p2_data, "--output-dir", tmp_path, "--batch-size",
        BATCH[script], "--image-size", 32, "--device", "cpu", "--workers", 2,
        *recipes.to_words(extra), "--snapshot-ids"])
    for check in segmentation_checks(seen, rec, script, fake).values():
        check()


def test_every_recipe_key_has_a_check():
    """A value added to a recipe without a check here fails, so none can silently stay unused.
    The checks are built on stand-in objects, only to read their keys."""
    stub = {"step": {"model": torch.nn.Linear(1, 1), "learner": None}, "epoch": {}}
    keys = {
        "p1_pretrain_byol": byol_checks(stub, {"holdout": 0.0}, 4),
        "p1_finetune": finetune_checks(stub, {"lr": 1.0, "backbone_lr_scale": 1.0}, "C", 4),
        "p2_train_fcn32s": segmentation_checks(stub, {}, "p2_train_fcn32s", {}),
        "p2_train_deeplabv3": segmentation_checks(stub, {}, "p2_train_deeplabv3", {}),
    }
    for script, checks in keys.items():
        covered = set().union(*checks) | EXEMPT
        for recipe in recipes.NAMES:
            missing = set(recipes.settings(script, recipe)) - covered
            assert not missing, (script, recipe, missing)
    strong_cells = set().union(*recipes.STRONG_SETTINGS.values())
    assert strong_cells - EXEMPT <= set().union(*keys["p1_finetune"]), strong_cells
