"""The mIoU of the course: a confusion matrix over every pixel of every image of a split."""

import math

import torch

from data import CLASS_NAMES, NUM_CLASSES, SCORED_CLASSES


class ConfusionMatrix:
    """Counts (truth, prediction) pairs over every pixel of every image of a split.

    mat[t, p] = number of pixels of truth t predicted as p, (7, 7) int64, on any device.
    IoU_c = TP / (TP + FP + FN) with TP = mat[c, c], FP = column c minus TP (Unknown truth
    predicted as c included, as in the course scorer), FN = row c minus TP. The mean runs over
    classes 0..5. A class absent from both truth and prediction has 0/0: the course scorer
    returns NaN for the whole mean then; we report that class's IoU as NaN and average over the
    classes that are defined (on the real validation split every class is present, so both
    agree there).
    """

    def __init__(self, num_classes=NUM_CLASSES, device="cpu"):
        self.n = num_classes
        self.mat = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    def update(self, target, pred):
        t = torch.as_tensor(target).to(self.mat.device).reshape(-1).long()
        p = torch.as_tensor(pred).to(self.mat.device).reshape(-1).long()
        if t.shape != p.shape:
            raise ValueError(f"target has {t.numel()} pixels, prediction {p.numel()}")
        ok = (t >= 0) & (t < self.n) & (p >= 0) & (p < self.n)
        counts = torch.bincount(self.n * t[ok] + p[ok], minlength=self.n ** 2)
        self.mat += counts.view(self.n, self.n)
        return self

    def reset(self):
        self.mat.zero_()

    def iou(self, classes=SCORED_CLASSES):
        """IoU of classes 0..classes-1 as a float64 CPU tensor; NaN for a class never seen."""
        mat = self.mat.double().cpu()
        tp = mat.diag()
        denom = mat.sum(0) + mat.sum(1) - tp
        iou = torch.where(denom > 0, tp / denom.clamp(min=1), torch.full_like(tp, float("nan")))
        return iou[:classes]

    def miou(self, classes=SCORED_CLASSES):
        iou = self.iou(classes)
        defined = ~torch.isnan(iou)
        return float(iou[defined].mean()) if defined.any() else float("nan")

    def pixel_accuracy(self):
        mat = self.mat.double()
        return float(mat.diag().sum() / mat.sum().clamp(min=1))

    def per_class(self, classes=SCORED_CLASSES):
        """{class name: IoU or None} for logs (JSON has no NaN)."""
        return {CLASS_NAMES[i]: (None if math.isnan(v) else round(v, 6))
                for i, v in enumerate(self.iou(classes).tolist())}
