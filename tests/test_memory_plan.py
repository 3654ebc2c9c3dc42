"""tools/memory_plan.py: the parts of a training step's GPU memory, counted independently here."""

import sys
from pathlib import Path

import pytest
import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import memory_plan  # noqa: E402

GB = 1024 ** 3


def test_saved_tensors_are_what_backward_keeps_and_not_the_weights():
    """Linear -> ReLU -> Linear saves the input (for the first weight's gradient) and the ReLU
    output (for its own backward and the second weight's gradient: one storage); the weights
    are left out."""
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    for n in (2, 5):
        got = memory_plan.saved_bytes(model, lambda n, s: model(torch.randn(n, 4)).sum(), n,
                                      None, amp=False)
        assert got == n * 4 * 4 + n * 8 * 4


def test_the_fine_tuning_row_adds_up():
    row = memory_plan.plan("p1_finetune", "report")
    resnet = torchvision.models.resnet50(weights=None)
    head = 2048 * 1024 + 1024 + 2 * 1024 + 1024 * 512 + 512 + 2 * 512 + 512 * 65 + 65
    params = sum(p.numel() for p in resnet.parameters()) - (2048 * 1000 + 1000) + head
    buffers = (sum(b.numel() for b in resnet.buffers()) + 2 * 1024 + 1 + 2 * 512 + 1)
    assert row["weights_gb"] * GB == 4 * (params + buffers)
    assert row["grads_gb"] * GB == 4 * params and row["optimizer_gb"] * GB == 8 * params
    assert row["bank_gb"] * GB == (3_951 + 406) * 3 * 128 * 128  # Office-Home at 128 px, uint8
    assert (row["batch"], row["side"], row["precision"]) == (64, 128, "fp32")
    static = sum(row[k] for k in ("weights_gb", "grads_gb", "optimizer_gb", "weight_casts_gb",
                                  "bank_gb"))
    per_image = row["activations_per_image_gb"]
    assert 5e-3 < per_image < 0.2  # ResNet50 at 128 px, fp32: tens of MB
    assert row["peak_gb"] == pytest.approx(static + 64 * per_image)
    for card, micro in row["micro_batch"].items():
        room = float(card) * 0.9 - static
        assert micro == min(64, int(room // per_image))
