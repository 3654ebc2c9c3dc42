"""DistributedDataParallel on 2 CPU processes (gloo), as `torchrun --nproc_per_node=2` runs it.

Each training loop runs a few steps on 2 ranks and once in a single process with the same
global batch and seed. What must hold (see utils.py, "distributed"):
  - the ranks end with bit-identical weights (DDP averages the gradients; the BYOL target is
    an EMA of identical online weights, so it needs no communication either);
  - the logged losses and the final weights match the single-process run: every step covers
    the same images (index_batches shards one permutation), the augmentations draw for the
    global batch and keep the rank's samples, and BatchNorm is synchronised (utils.SyncBatchNorm,
    the CPU path of the same all-reduce). Dropout draws cannot match (each rank has its own
    stream), so the DeepLabV3 run turns dropout off; the tolerance covers float summation order
    (all-reduced sums, E[x^2] - E[x]^2 instead of BatchNorm's two-pass variance);
  - rank 0 alone writes: log.jsonl has one line per epoch, and the checkpoint loads.
The ranks are started with torch.multiprocessing (spawn) and the environment torchrun sets
(RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), calling main(args) in each.
"""

import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.multiprocessing as mp
from test_p1 import make_p1_data
from test_p2 import SAMPLE_IDS, shrink_pairs

import data
import distributed
import errors
import p1_pretrain_byol
import p2_common
import p2_engine
import p2_train_deeplabv3
import records
import utils
from augment import ClassificationAugment, SegmentationAugment

WORLD = 2


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_mini(root):
    """A generated mini/train folder of 16 images."""
    return make_p1_data(root, classes=2, train_per_class=1, val_per_class=1,
                        mini=16) / "mini" / "train"


def byol_argv(data, out):  # 8 images, 1 step per epoch: epoch 1's loss is the first forward
    return ["--data-dir", str(data), "--output-dir", str(out), "--epochs", "2",
            "--batch-size", "8", "--max-images", "8", "--image-size", "32",
            "--projection-hidden-size", "64", "--lr", "1e-4", "--seed", "3", "--device", "cpu",
            "--aug", "report"]  # per-sample views (report+lib draws once per rank's batch)


def deeplab_argv(data, out):
    return ["--data-dir", str(data), "--output-dir", str(out), "--epochs", "2",
            "--batch-size", "4", "--image-size", "32", "--eval-batch-size", "2", "--no-pretrained",
            "--arch", "mobilenet_v3_large", "--lr", "1e-4", "--seed", "3",
            "--snapshot-ids", "0097", "--device", "cpu"]  # gloo, also on a GPU machine


def snapshot(model):
    return {k: v.detach().clone() for k, v in utils.unwrap_model(model).state_dict().items()}


def run_training(kind, argv):
    """Run one training in this process -> (initial, final) state_dict of its model."""
    built, initial = [], []
    if kind == "byol":
        build = p1_pretrain_byol.build_learner

        def build_learner(*args, **kwargs):
            built.append(build(*args, **kwargs))
            initial.append(snapshot(built[-1]))
            return built[-1]

        p1_pretrain_byol.build_learner = build_learner
        try:
            p1_pretrain_byol.main(p1_pretrain_byol.get_args_parser().parse_args(argv))
        finally:
            p1_pretrain_byol.build_learner = build
    else:
        def build_model(cfg, load_pretrained=True):  # dropout off: see the module docstring
            model = p2_common.build_deeplabv3(cfg, load_pretrained)
            for m in model.modules():
                if isinstance(m, torch.nn.Dropout):
                    m.p = 0.0
            built.append(model)
            initial.append(snapshot(model))
            return model

        p2_engine.train(p2_train_deeplabv3.get_args_parser().parse_args(argv), build_model)
    return initial[-1], snapshot(built[-1])


def rank_main(rank, kind, argv, port, result_dir):
    """One rank, started by mp.spawn: the environment torchrun would set, then main(args)."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)  # torchrun's default for several processes (OMP_NUM_THREADS=1)
    torch.save(run_training(kind, argv), os.path.join(result_dir, f"rank{rank}.pt"))
    torch.distributed.destroy_process_group()


def run_both(kind, data, tmp_path):
    """-> ((initial, final) states of rank 0 and 1, log of the 2-process run, (initial, final)
    state and log of the 1-process run)."""
    make_argv = byol_argv if kind == "byol" else deeplab_argv
    mp.spawn(rank_main, args=(kind, make_argv(data, tmp_path / "ddp"), free_port(), str(tmp_path)),
             nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each rank; also the fastest on a shared 2-core machine
    try:
        single = run_training(kind, make_argv(data, tmp_path / "single"))
    finally:
        torch.set_num_threads(threads)
    return (ranks, records.read_jsonl(tmp_path / "ddp" / "log.jsonl"), single,
            records.read_jsonl(tmp_path / "single" / "log.jsonl"))


def assert_same_run(ranks, ddp_log, single, single_log, loss_key):
    """The ranks agree exactly; the 2-process run is the 1-process run up to float noise.

    Float noise: convolutions on 4 images instead of 8 sum in another order (about 1e-4 of an
    activation after 50 layers), and AdamW's first steps move each weight by about +-lr
    whatever the gradient's size, so a weight whose gradient is ~0 can step either way. Hence
    the first loss (before any update) must agree to 1e-3, later ones to 1e-2, and the two
    runs' weights must differ by under 10% of what training changed them by - a wrong shard,
    a missing gradient average or unsynchronised BatchNorm moves them by about 100%."""
    (init0, final0), (init1, final1) = ranks
    for k, v in final0.items():
        assert torch.equal(v, final1[k]), f"{k} differs between the ranks"
        assert torch.equal(init0[k], init1[k]), k
    assert [r["epoch"] for r in ddp_log] == [r["epoch"] for r in single_log]  # rank 0 wrote once
    for epoch, (a, b) in enumerate(zip(ddp_log, single_log), 1):
        assert a[loss_key] == pytest.approx(b[loss_key], rel=1e-3 if epoch == 1 else 1e-2)
    init, final = single
    moved = sum(float((final[k] - init[k]).abs().sum()) for k in final
                if final[k].is_floating_point())
    apart = sum(float((final0[k] - final[k]).abs().sum()) for k in final
                if final[k].is_floating_point())
    assert moved > 0 and apart < 0.1 * moved, (apart, moved)
    for k, v in final.items():
        if not v.is_floating_point():  # BatchNorm step counters
            assert torch.equal(final0[k], v), k


@pytest.fixture(scope="module")
def p2_data(tmp_path_factory, samples_dir):
    """p2_data with the 4 real samples at 64 px as train/ and 2 of them as validation/."""
    root = tmp_path_factory.mktemp("p2_ddp")
    shrink_pairs(samples_dir, root / "train", 64)
    shrink_pairs(samples_dir, root / "validation", 64, ids=SAMPLE_IDS[:2])
    return root


def test_byol_on_two_processes_equals_one_process(tmp_path):
    data = tiny_mini(tmp_path / "data")
    ranks, ddp_log, single, single_log = run_both("byol", data, tmp_path)
    # same augmentation draws and SyncBatchNorm: the 2 x 4 run is the 1 x 8 run
    assert_same_run(ranks, ddp_log, single, single_log, "loss")
    ckpt = utils.load_checkpoint(tmp_path / "ddp" / "last.pth")
    assert not any(k.startswith("module.") for k in ckpt["model"])
    assert (tmp_path / "ddp" / "backbone.pth").exists()


def test_deeplabv3_on_two_processes_equals_one_process(tmp_path, p2_data):
    ranks, ddp_log, single, single_log = run_both("deeplabv3", p2_data, tmp_path)
    assert_same_run(ranks, ddp_log, single, single_log, "train_loss")
    # rank 0 logged the whole validation split (sharded, confusion matrices summed; a random
    # network's near-tied predictions may flip with the float noise, hence no exact equality)
    for a, b in zip(ddp_log, single_log):
        assert a["val_pixel_acc"] == pytest.approx(b["val_pixel_acc"], abs=0.02)
    assert (tmp_path / "ddp" / "snapshots" / "epoch_002.npz").exists()


def byol_under_torchrun(tmp_path, repo_root, device):
    """`torchrun --standalone --nproc_per_node=1 p1_pretrain_byol.py` on `device`: one rank
    still joins a process group (nccl on CUDA, gloo on the CPU) and trains through DDP and
    synchronised BatchNorm; the run header says so, and its files are complete."""
    data = tiny_mini(tmp_path / "data")
    out = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
         "p1_pretrain_byol.py", "--data-dir", str(data), "--output-dir", str(out),
         "--epochs", "1", "--batch-size", "8", "--image-size", "32", "--device", device,
         "--projection-hidden-size", "64"],
        cwd=repo_root, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    backend = "nccl" if device == "cuda" else "gloo"
    assert f"| {backend} x 1" in done.stdout, done.stdout[:2000]
    assert len(records.read_jsonl(out / "log.jsonl")) == 1
    state = torch.load(out / "backbone.pth", map_location="cpu", weights_only=True)
    assert "conv1.weight" in state and state["conv1.weight"].is_contiguous()


def test_torchrun_with_one_process_runs_the_distributed_path(tmp_path, repo_root):
    byol_under_torchrun(tmp_path, repo_root, "cpu")


def test_sharded_validation_sums_to_the_whole_split(monkeypatch, p2_data):
    """p2_engine.evaluate on rank 0 and 1 of 2 (simulated): the two confusion matrices add up
    to the single-process one and the kept predictions are the same."""
    _, images, masks = p2_engine.load_split(p2_data / "train")
    torch.manual_seed(0)
    model = torch.nn.Conv2d(3, 7, 3, padding=1)  # any (B, 7, H, W) network will do
    device = torch.device("cpu")
    whole, kept = p2_engine.evaluate(model, images, masks, 3, device, keep=(1, 2))
    monkeypatch.setattr(p2_engine, "world_size", lambda: 2)
    monkeypatch.setattr(p2_engine, "merge_across_ranks", lambda d: d)
    monkeypatch.setattr(p2_engine, "all_reduce", lambda t: t)
    total, parts = 0, {}
    for r in range(2):
        monkeypatch.setattr(p2_engine, "rank", lambda r=r: r)
        cm, part = p2_engine.evaluate(model, images, masks, 3, device, keep=(1, 2))
        total, parts = total + cm.mat, {**parts, **part}
    assert torch.equal(total, whole.mat) and int(total.sum()) == 4 * 64 * 64
    assert sorted(parts) == [1, 2] and all(torch.equal(parts[k], kept[k]) for k in kept)


def test_global_batch_must_split_evenly(monkeypatch):
    monkeypatch.setattr(distributed, "world_size", lambda: 3)
    assert distributed.shard_batch(12) == 4
    with pytest.raises(errors.UserError, match="multiple of 3"):
        distributed.shard_batch(8)


def test_index_batches_shards_cover_the_single_process_batches():
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    single = list(data.index_batches(11, 4, generator=gen()))
    shards = [list(data.index_batches(11, 2, generator=gen(), rank=r, world_size=2))
              for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == len(single) == 2
    for step, batch in enumerate(single):
        assert sorted(batch.tolist()) == sorted(shards[0][step].tolist()
                                                + shards[1][step].tolist())
        assert shards[0][step].tolist() == batch[0::2].tolist()  # positions 0, 2 of the batch


def test_sharded_augmentation_draws_what_one_process_draws():
    x = torch.randint(0, 256, (4, 3, 24, 24), dtype=torch.uint8)
    augment = ClassificationAugment(16, p_gray=0.5, p_blur=0.5, p_solarize=0.5)
    augment.generator = torch.Generator().manual_seed(1)
    whole = augment(x)
    for r in range(2):
        augment.generator, augment.shard = torch.Generator().manual_seed(1), (r, 2)
        torch.testing.assert_close(augment(x[r::2]), whole[r::2])
    seg = SegmentationAugment(16)
    seg.generator = torch.Generator().manual_seed(1)
    masks = torch.randint(0, 7, (4, 24, 24), dtype=torch.uint8)
    whole_x, whole_y = seg(x, masks)
    seg.generator, seg.shard = torch.Generator().manual_seed(1), (1, 2)
    part_x, part_y = seg(x[1::2], masks[1::2])
    torch.testing.assert_close(part_x, whole_x[1::2])
    assert torch.equal(part_y, whole_y[1::2])
