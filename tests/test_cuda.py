"""What only a CUDA GPU can show: the bf16 step agrees with fp32, a training step never makes
the host wait for the GPU, the tuning (channels_last, fused optimizers) is really on, NCCL
under torchrun works, checkpoints trained on the GPU give the CPU's masks, SAM runs under bf16,
and torch.compile gives the eager model's outputs.

Skipped where no GPU is visible (CI, the developers' machines). tools/gpu_check.sh runs this
file first on the lent GPU machine. HW1_TEST_DEVICE=cpu runs the same tests on the CPU, with
the CUDA-only assertions left out, to check the tests themselves without a GPU.
"""

import copy
import os

import numpy as np
import pytest
import torch
from sam_fixtures import tiny_sam
from test_ddp import byol_under_torchrun
from test_p2 import SAMPLE_IDS, assert_masks_are_the_oracles, oracle_masks, shrink_pairs

import bench
import data
import p1_common
import p1_finetune
import p1_pretrain_byol
import p2_common
import p2_engine
import p2_inference
import p2_sam
import p2_train_deeplabv3
import p2_train_fcn32s
import records
import training
import utils

DEVICE = torch.device(os.environ.get("HW1_TEST_DEVICE", "cuda"))
pytestmark = pytest.mark.skipif(DEVICE.type == "cuda" and not torch.cuda.is_available(),
                                reason="needs a CUDA GPU (HW1_TEST_DEVICE=cpu checks the tests)")
CUDA = DEVICE.type == "cuda"


@pytest.fixture(autouse=True)
def fast_math():
    """TF32, cuDNN's autotuner and the tuning switches as every script sets them, undone
    afterwards (bench.py's `ours` settings)."""
    with bench.torch_flags(DEVICE, bench.Variant()):
        yield


def no_host_sync(step, *args):
    """Run step(*args) with CUDA's sync debug mode set to raise on any host synchronisation."""
    if not CUDA:
        return step(*args)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        return step(*args)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def byol_learner(size=64, batch=32, aug="report"):
    args = p1_pretrain_byol.get_args_parser().parse_args(
        ["--data-dir", "unused", "--batch-size", str(batch), "--image-size", str(size),
         "--projection-hidden-size", "512"])
    torch.manual_seed(0)
    learner = p1_pretrain_byol.build_learner(
        args, DEVICE, p1_pretrain_byol.build_views(aug, size, DEVICE))
    return args, learner


@pytest.mark.parametrize("aug", ["report+lib", "byol"])  # the two recipes' views
def test_byol_bf16_loss_matches_fp32_and_the_step_never_syncs(aug):
    args, learner = byol_learner(aug=aug)
    x = torch.randint(0, 256, (32, 3, 72, 72), dtype=torch.uint8, device=DEVICE)
    state = copy.deepcopy(learner.state_dict())
    losses = {}
    for amp in (False, True):  # the same weights and the same augmentation draws
        learner.load_state_dict(state)
        torch.manual_seed(1)
        with torch.no_grad(), utils.autocast(DEVICE, amp):
            losses[amp] = float(learner(x))
    assert 0 < losses[False] < 8  # 2 - 2 cos, both directions
    assert losses[True] == pytest.approx(losses[False], rel=2e-2, abs=1e-2)

    learner.load_state_dict(state)
    optimizer, scheduler = p1_pretrain_byol.build_optimizer(learner, args, 100)
    if CUDA:
        assert all(g["fused"] for g in optimizer.param_groups)
        conv = learner.online_encoder.net.conv1.weight
        assert conv.is_contiguous(memory_format=torch.channels_last)
    def step():
        loss = p1_pretrain_byol.train_step(learner, x, optimizer, args.ema_decay, DEVICE)
        scheduler.step()
        return loss

    for _ in range(2):  # cuDNN's autotuner and lazy initialisation may synchronise
        step()
    target = [p.detach().clone() for p in learner.target_encoder.parameters()]
    loss = no_host_sync(step)
    assert loss.device.type == DEVICE.type and torch.isfinite(loss)
    moved = [not torch.equal(a, b) for a, b in zip(target, learner.target_encoder.parameters())]
    assert any(moved)  # the EMA update ran inside the synchronisation-free step


def test_finetune_step_never_syncs():
    # fine-tuning: augmentation on the device, bf16, fused AdamW
    args = p1_finetune.get_args_parser().parse_args(
        ["--setting", "A", "--data-dir", "unused", "--batch-size", "16", "--image-size", "64",
         "--warmup-epochs", "0", "--num-classes", "5"])
    model = p1_common.Classifier(5).to(DEVICE, memory_format=utils.memory_format(DEVICE))
    optimizer = p1_finetune.build_optimizer(model, args)
    scheduler = training.make_lr_scheduler(optimizer, args.schedule, 100)
    augment, fmt = p1_finetune.build_augment(args), utils.memory_format(DEVICE)
    criterion = p1_finetune.make_criterion(args)
    bank = torch.randint(0, 256, (16, 3, 80, 80), dtype=torch.uint8, device=DEVICE)
    labels = torch.arange(16, device=DEVICE) % 5

    def finetune_step():
        x = augment(bank).contiguous(memory_format=fmt)
        loss = p1_finetune.train_step(model, x, labels, optimizer, criterion, DEVICE)[0]
        scheduler.step()
        return loss

    for _ in range(2):
        finetune_step()
    assert torch.isfinite(no_host_sync(finetune_step))


@pytest.mark.parametrize("module, recipe", [(p2_train_fcn32s, "report"),
                                            (p2_train_deeplabv3, "report"),
                                            (p2_train_deeplabv3, "strong")],
                         ids=["fcn32s-report", "deeplabv3-report", "deeplabv3-strong"])
def test_segmentation_steps_never_sync(tmp_path, samples_dir, module, recipe):
    """The step of p2_engine.train_one_epoch, on the real samples, with each recipe's loss
    (class weights, focal alpha), clipping and precision."""
    seg_args = module.get_args_parser().parse_args(
        ["--data-dir", "unused", "--no-pretrained", "--image-size", "64", "--recipe", recipe])
    net = p2_common.build_model(vars(seg_args), load_pretrained=False)
    net.to(DEVICE, memory_format=utils.memory_format(DEVICE))
    seg_opt = p2_engine.make_optimizer(net, seg_args, DEVICE)
    seg_sched = training.make_lr_scheduler(seg_opt, seg_args.schedule, 100)
    criterion = p2_engine.make_criterion(seg_args, device=DEVICE)
    seg_augment = p2_engine.build_augment(seg_args)
    shrink_pairs(samples_dir, tmp_path, 96)
    _, images, masks = p2_engine.load_split(tmp_path)
    images.to(DEVICE)
    masks.to(DEVICE)
    idx = torch.arange(4, device=images.device)

    def seg_step():
        x, y = seg_augment(images.batch(idx), masks.batch(idx))
        loss = p2_engine.train_step(net, x, y, seg_opt, criterion, DEVICE, seg_args.amp,
                                    seg_args.clip_grad)
        seg_sched.step()
        return loss

    for _ in range(2):
        seg_step()
    assert torch.isfinite(no_host_sync(seg_step))


def test_byol_under_torchrun_with_nccl(tmp_path, repo_root):
    """One rank under torchrun: the NCCL process group, SyncBatchNorm and DDP on the GPU (the
    same run on the CPU, with gloo, is in test_ddp.py)."""
    byol_under_torchrun(tmp_path, repo_root, DEVICE.type)


def test_gpu_checkpoint_gives_the_cpu_masks(tmp_path, samples_dir):
    """Train DeepLabV3-ResNet50 a little on the GPU, then hw1_2's inference from the same
    checkpoint on the CPU (fp32) and on the GPU, in fp32 and in bf16: the masks agree on nearly
    every pixel. The briefly trained model's logits are small (top-2 gap ~0.007 on CPU), so
    bf16's rounding flips more of its near-ties than TF32's."""
    p2_dir = tmp_path / "p2"
    for split in ("train", "validation"):
        shrink_pairs(samples_dir, p2_dir / split, 128)
    run = tmp_path / "run"
    p2_train_deeplabv3.main(p2_train_deeplabv3.get_args_parser().parse_args(
        ["--data-dir", str(p2_dir), "--output-dir", str(run), "--epochs", "3", "--batch-size",
         "4", "--image-size", "128", "--no-pretrained", "--device", DEVICE.type,
         "--snapshot-ids", "0097", "--workers", "2"]))
    masks = {}
    for device, amp in (("cpu", "--no-amp"), (DEVICE.type, "--no-amp"), (DEVICE.type, "--amp")):
        out = tmp_path / f"pred_{device}{amp}"
        p2_inference.main(p2_inference.get_args_parser().parse_args(
            ["--input-dir", str(p2_dir / "validation"), "--output-dir", str(out), "--checkpoint",
             str(run / "best.pth"), "--device", device, "--workers", "2", amp]))
        masks[device, amp] = np.stack([data.read_mask(out / f"{i}_mask.png")
                                       for i in SAMPLE_IDS])
    cpu = masks["cpu", "--no-amp"]
    assert cpu.shape == (4, 128, 128)
    # the CPU's masks are the checkpoint's predictions computed in test_p2's own way (fp32)
    paths = [p2_dir / "validation" / f"{i}_sat.jpg" for i in SAMPLE_IDS]
    assert_masks_are_the_oracles(tmp_path / "pred_cpu--no-amp", paths,
                                 oracle_masks(run / "best.pth", paths), tie=1e-5, max_ties=0.01)
    fp32 = float((masks[DEVICE.type, "--no-amp"] == cpu).mean())
    bf16 = float((masks[DEVICE.type, "--amp"] == cpu).mean())
    assert fp32 > 0.98 and bf16 > 0.95, (fp32, bf16)  # "fp32" on the GPU is TF32


def test_sam_generator_under_bf16_finds_masks(tmp_path, samples_dir):
    args = p2_sam.get_args_parser().parse_args(
        ["--checkpoint", "unused.pth", "--input", str(samples_dir / "0008_sat.jpg"),
         "--output-dir", str(tmp_path / "sam"), "--points-per-side", "8", "--device",
         DEVICE.type, "--pred-iou-thresh", "0", "--stability-score-thresh", "0", "--amp"])
    p2_sam.main(args, model=tiny_sam())
    log = records.read_jsonl(tmp_path / "sam" / "sam_log.jsonl")
    assert len(log) == 1 and log[0]["masks"] > 0 and (tmp_path / "sam" / "0008_sam.png").exists()


def test_compiled_classifier_matches_eager():
    torch.manual_seed(0)
    model = p1_common.Classifier(5).to(DEVICE, memory_format=utils.memory_format(DEVICE))
    model.eval()
    x = torch.randn(8, 3, 64, 64, device=DEVICE).contiguous(
        memory_format=utils.memory_format(DEVICE))
    with torch.no_grad(), utils.autocast(DEVICE):
        eager = model(x).float()
        compiled = torch.compile(model)(x).float()
    torch.testing.assert_close(compiled, eager, rtol=5e-2, atol=5e-2)
