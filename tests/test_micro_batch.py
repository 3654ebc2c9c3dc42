"""--micro-batch auto on CUDA: the first step measures its first images and chooses the largest
micro-batch that fits (training.MicroBatch.choose). The GPU's memory figures come from a fake
here, so the choice is checked on the CPU against the formula written out in each test."""

import math

import pytest
import torch

import errors
import training

BATCH = 32


class FakeMemory:
    """MicroBatch's memory interface: `before` bytes allocated when the probe starts, a peak of
    `before + probe_bytes` during it, and `capacity` bytes the process could hold."""

    def __init__(self, before, probe_bytes, capacity):
        self.before, self.probe_bytes, self.capacity_bytes = before, probe_bytes, capacity
        self.starts = 0

    def start(self):
        self.starts += 1
        return self.before

    def peak(self):
        return self.before + self.probe_bytes

    def capacity(self):
        return self.capacity_bytes


def make_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))


def data():
    torch.manual_seed(1)
    return torch.randn(BATCH, 3), torch.randn(BATCH, 1)


def whole_batch_grads(x, y):
    model = make_model()
    ((model(x) - y) ** 2).mean().backward()
    return [p.grad.clone() for p in model.parameters()]


def steps(micro, n=2, out_of_memory_above=None):
    """`n` optimizer steps (lr 0: the same weights each time) on the same batch; returns the rows
    of each forward per step and the gradients of the last step."""
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    x, y = data()
    sizes, calls = [], []

    def loss_of(start, stop):
        calls.append(stop - start)
        assert len(calls) < 200, "the step is redone again and again"
        if out_of_memory_above is not None and stop - start > out_of_memory_above:
            raise torch.cuda.OutOfMemoryError("simulated")
        sizes[-1].append(stop - start)
        return ((model(x[start:stop]) - y[start:stop]) ** 2).sum() / BATCH, None

    for _ in range(n):
        sizes.append([])
        training.optimizer_step(model, optimizer, BATCH, loss_of, micro)
    return sizes, [p.grad.clone() for p in model.parameters()]


def state_bytes():
    """Adam's two moments of the model's fp32 parameters: 2 x 4 bytes x (12 + 4 + 4 + 1)."""
    return 2 * 4 * (3 * 4 + 4 + 4 + 1)


def test_auto_chooses_the_largest_micro_batch_that_fits_and_keeps_the_steps_gradient(capsys):
    """The first 32 / 8 = 4 images take 1200 bytes above the 1000 in use: 300 an image. Of the
    5100 bytes beyond those, the optimizer state the first step will allocate (168 bytes) is
    kept free, and 90 % of the rest is planned for: floor(0.9 * (5100 - 168) / 300) = 14 images
    (15 if less were kept free). The step's gradient is the whole batch's."""
    memory = FakeMemory(before=1000, probe_bytes=1200, capacity=1000 + 5100)
    micro = training.MicroBatch("auto", "cpu", memory=memory)
    expected = math.floor(0.9 * (5100 - state_bytes()) / (1200 / 4))
    assert expected == 14
    sizes, grads = steps(micro)
    assert micro.size == expected and memory.starts == 1  # measured once, on the first step
    assert sizes == [[4, 14, 14], [14, 14, 4]]
    assert capsys.readouterr().out == (
        "micro-batch auto: 4 images took 0.00 GiB above the 0.00 GiB in use, 0.00 GiB left: "
        "micro-batches of 14 (batch 32)\n")
    for got, want in zip(grads, whole_batch_grads(*data())):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


def test_auto_keeps_whole_batches_when_the_batch_fits(capsys):
    """Room for just the batch, floor(0.9 * 3600 / 100) = 32 images: the probe's step finishes
    in one piece, then whole batches (BatchNorm sees the recipe's batch); the gradient of the
    split step is the batch's."""
    assert math.floor(0.9 * 3600 / (400 / 4)) == BATCH
    memory = FakeMemory(0, 400, state_bytes() + 3600)
    micro = training.MicroBatch("auto", "cpu", memory=memory)
    sizes, grads = steps(micro, n=3)
    assert sizes == [[4, 28], [32], [32]] and micro.size is None
    assert "whole batches (batch 32)" in capsys.readouterr().out
    for got, want in zip(grads, whole_batch_grads(*data())):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


def test_out_of_memory_after_the_choice_still_halves_and_redoes_the_step(capsys):
    """The measurement said 14, but more than 8 rows run out of memory: the first step is redone
    in 7s, without a second measurement, and still gives the whole batch's gradient."""
    memory = FakeMemory(before=1000, probe_bytes=1200, capacity=1000 + 5100)
    micro = training.MicroBatch("auto", "cpu", memory=memory)
    sizes, grads = steps(micro, out_of_memory_above=8)
    assert sizes == [[4, 7, 7, 7, 7, 4], [7, 7, 7, 7, 4]] and micro.size == 7  # 4: undone
    assert memory.starts == 1
    assert capsys.readouterr().out.splitlines()[1:] == [
        "CUDA out of memory at a micro-batch of 14: redoing the step in micro-batches of 7 "
        "(the gradients add up to the same step)"]
    for got, want in zip(grads, whole_batch_grads(*data())):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


def test_out_of_memory_in_the_probe_halves_it_or_stops_with_one_line(capsys):
    """The 4 measured images already run out of memory: halves from 4, no measurement; with two
    images the least (BatchNorm), a one-line error once 2 do not fit."""
    memory = FakeMemory(0, 1, 10 ** 6)
    micro = training.MicroBatch("auto", "cpu", memory=memory)
    sizes, _ = steps(micro, n=1, out_of_memory_above=1)
    assert sizes == [[1] * BATCH] and micro.size == 1 and not micro.measuring
    assert capsys.readouterr().out.splitlines() == [
        f"CUDA out of memory at a micro-batch of {now}: redoing the step in micro-batches of "
        f"{now // 2} (the gradients add up to the same step)" for now in (4, 2)]
    micro = training.MicroBatch("auto", "cpu", smallest=2, memory=memory)
    with pytest.raises(errors.UserError, match="out of memory with micro-batches of 2 image"):
        steps(micro, n=1, out_of_memory_above=1)


def test_only_auto_on_cuda_measures_and_it_reads_free_plus_cached_memory(monkeypatch):
    assert training.MicroBatch("auto", "cuda").measuring
    assert not training.MicroBatch("auto", "cpu").measuring
    assert not training.MicroBatch("8", "cuda").measuring
    calls = []
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda d: calls.append(d))
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda d: 100)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda d: 700)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda d: (5000, 8000))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda d: 900)
    memory = training.MicroBatch("auto", "cuda:1").memory
    assert (memory.start(), memory.peak(), memory.capacity()) == (100, 700, 5000 + 900)
    assert calls == [torch.device("cuda:1")]
