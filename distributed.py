"""torchrun / DistributedDataParallel for the training scripts: the process group, rank helpers,
all-reduce, SyncBatchNorm that also runs on the CPU (gloo), the per-epoch random streams.
"""

import atexit
import builtins
import inspect
import os

import torch
import torch.distributed as dist

from errors import UserError


# Design (every training script): `torchrun --nproc_per_node=N script.py ...` runs N ranks.
#   batch       --batch-size stays the GLOBAL batch (so --lr keeps its meaning); each rank takes
#               batch_size / N of it (shard_batch), drawn from one shared permutation per epoch
#               (index_batches with rank/world_size), so every step sees the same images as a
#               single-process step would.
#   BatchNorm   synchronised (nn.SyncBatchNorm; CPUSyncBatchNorm under gloo): statistics over
#               the global batch, as in one process.
#   random      augmentations draw from a generator seeded by (seed, epoch), the same on every
#               rank, for the whole global batch, and keep their rank's samples (the `shard`
#               of the augmentations), so N ranks apply the same views as one process; torch's
#               global RNG (dropout) is seeded per rank.
#   writes      only rank 0 writes (args.json, log.jsonl, checkpoints, plots, tables); the
#               other ranks print nothing. Checkpoints hold the unwrapped model and load on any
#               number of ranks. Validation is sharded and its counts are summed (all_reduce).
def init_distributed(device):
    """Join the process group torchrun describes in the environment (WORLD_SIZE, RANK,
    LOCAL_RANK, MASTER_ADDR, MASTER_PORT) and return this rank's device: cuda:LOCAL_RANK with
    NCCL, or the CPU with gloo. Anything torchrun starts joins one, `--nproc_per_node=1`
    included (so one GPU runs the NCCL/DDP path); a plain `python3 script.py` gets `device`
    back and starts nothing. Ranks other than 0 print nothing from then on (builtins.print is
    silenced there, as in DINO; print(..., force=True) still prints)."""
    under_torchrun = "TORCHELASTIC_RUN_ID" in os.environ
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 and not under_torchrun:
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        atexit.register(leave_process_group)  # NCCL warns at exit about a group left open
        if dist.get_rank() != 0:
            quiet = builtins.print

            def print_on_main(*args, force=False, **kwargs):
                if force:
                    quiet(*args, **kwargs)

            builtins.print = print_on_main
    return device


def leave_process_group():
    """Destroy this process's group, if it still has one (at exit, after the run)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def in_process_group():
    """Whether this process is in a process group (torchrun), at any number of ranks."""
    return dist.is_available() and dist.is_initialized()


def world_size():
    return dist.get_world_size() if in_process_group() else 1


def rank():
    return dist.get_rank() if in_process_group() else 0


def is_main_process():
    return rank() == 0


def all_reduce(tensor, mean=False):
    """Sum (or mean) of `tensor` over the ranks, in place and returned; as is in one process."""
    if world_size() > 1:
        dist.all_reduce(tensor)
        if mean:
            tensor /= world_size()
    return tensor


def merge_across_ranks(mapping):
    """The union of every rank's dict, on every rank (small objects only: all_gather_object)."""
    if world_size() == 1:
        return mapping
    parts = [None] * world_size()
    dist.all_gather_object(parts, mapping)
    return {k: v for part in parts for k, v in part.items()}


def on_main_process(fn, *args, **kwargs):
    """fn(*args, **kwargs) on rank 0 only (e.g. prepare_output_dir: checks, then writes), its
    result handed to every rank. A UserError there is raised on every rank, so no rank is left
    waiting for one that stopped."""
    result, error = None, None
    if is_main_process():
        try:
            result = fn(*args, **kwargs)
        except UserError as e:
            error = e.message
    if world_size() > 1:
        box = [result, error]
        dist.broadcast_object_list(box, src=0)
        result, error = box
    if error is not None:
        raise UserError(error)
    return result


def shard_batch(batch_size):
    """This rank's part of the global --batch-size (all of it in one process)."""
    n = world_size()
    if batch_size % n:
        raise UserError(f"--batch-size {batch_size} is the global batch and must split evenly "
                        f"over the {n} processes; use a multiple of {n}")
    return batch_size // n


class CPUSyncBatchNorm(torch.nn.modules.batchnorm._BatchNorm):
    """BatchNorm over the global batch for multi-process CPU runs (gloo; the CI test of
    DistributedDataParallel): torch.nn.SyncBatchNorm, which CUDA runs use, refuses CPU tensors.
    In training under a process group it normalises with the statistics of all ranks' samples,
    from one differentiable all-reduce of the per-channel sum, sum of squares and count (its
    backward sums the gradients of the statistics over the ranks, as torch's does); otherwise
    it is a plain BatchNorm. Two all-reduces (the mean, then the squared deviations) keep the
    variance as exact as BatchNorm's own."""

    def _check_input_dim(self, x):
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {x.dim()}D input)")

    def forward(self, x):
        if not (self.training and in_process_group()):
            return super().forward(x)
        from torch.distributed._functional_collectives import all_reduce as reduce

        def all_reduce_with_grad(t):  # summed over the ranks; its backward sums the gradients
            return reduce(t, "sum", dist.group.WORLD)

        self._check_input_dim(x)
        c = x.shape[1]
        dims = [0, *range(2, x.dim())]
        shape = (1, c) + (1,) * (x.dim() - 2)
        stats = all_reduce_with_grad(torch.cat([x.sum(dims), x.new_full((1,), x.numel() // c)]))
        n = stats[-1]  # samples x pixels of all ranks
        mean = stats[:c] / n
        var = all_reduce_with_grad(((x - mean.view(shape)) ** 2).sum(dims)) / n  # biased, as BN
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = (self.momentum if self.momentum is not None
                            else 1.0 / float(self.num_batches_tracked))
                self.running_mean.lerp_(mean, momentum)
                self.running_var.lerp_(var * n / (n - 1).clamp(min=1), momentum)
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


def convert_sync_batchnorm(module, device):
    """Every BatchNorm layer of `module` made synchronised, in place: torch's
    nn.SyncBatchNorm on CUDA, CPUSyncBatchNorm on the CPU. Both keep the Parameter and buffer
    objects (an optimizer built before still holds them), the train/eval mode and the
    state_dict keys (checkpoints load either way)."""
    if device.type == "cuda":
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if (isinstance(child, torch.nn.modules.batchnorm._BatchNorm)
                    and not isinstance(child, CPUSyncBatchNorm)):
                sync = CPUSyncBatchNorm(child.num_features, child.eps, child.momentum,
                                        child.affine, child.track_running_stats)
                if child.affine:
                    sync.weight, sync.bias = child.weight, child.bias
                if child.track_running_stats:
                    sync.running_mean, sync.running_var = child.running_mean, child.running_var
                    sync.num_batches_tracked = child.num_batches_tracked
                sync.train(child.training)
                setattr(parent, name, sync)
    return module


def distribute_model(model, device, find_unused_parameters=False):
    """Under torchrun: BatchNorm -> SyncBatchNorm, then DistributedDataParallel (gradients
    averaged over the ranks in the backward). Without a process group: `model` itself.

    Buffers are synchronised once, at the start, and not re-broadcast at every forward: with
    synchronised BatchNorm every rank computes the same running statistics itself."""
    if not in_process_group():
        return model
    model = convert_sync_batchnorm(model, device)
    ddp = torch.nn.parallel.DistributedDataParallel
    # newer torch calls it forward_sync_buffers (broadcast_buffers deprecated); 2.11 knows only
    # broadcast_buffers
    no_sync = ({"forward_sync_buffers": False}
               if "forward_sync_buffers" in inspect.signature(ddp.__init__).parameters
               else {"broadcast_buffers": False})
    return ddp(model, device_ids=[device.index] if device.type == "cuda" else None,
               find_unused_parameters=find_unused_parameters, gradient_as_bucket_view=True,
               **no_sync)


def epoch_generators(seed, epoch, device):
    """The random streams of one epoch, rebuilt from (seed, epoch) so that --resume replays
    them: (data-order generator on the CPU, augmentation generator on `device`), both the same
    on every rank; torch's global RNG (dropout) is reseeded per rank, so ranks drop different
    units."""
    key = seed * 100_003 + epoch
    torch.manual_seed(key * 1_009 + rank())
    return torch.Generator().manual_seed(key), torch.Generator(device).manual_seed(key)
