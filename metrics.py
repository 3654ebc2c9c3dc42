"""The mIoU of the course: a confusion matrix over every pixel of every image of a split.

Torch-free to import: the scorer (p2_evaluate.py) counts NumPy masks in a NumPy matrix; the
training scripts' validation counts on its device (device=...), where torch is loaded anyway.
"""

import math

import numpy as np

from data import CLASS_NAMES, NUM_CLASSES, SCORED_CLASSES, as_numpy


class ConfusionMatrix:
    """Counts (truth, prediction) pairs over every pixel of every image of a split.

    mat[t, p] = number of pixels of truth t predicted as p, (7, 7) int64 (a NumPy array, or a
    tensor on a torch device).
    IoU_c = TP / (TP + FP + FN) with TP = mat[c, c], FP = column c minus TP (Unknown truth
    predicted as c included, as in the course scorer), FN = row c minus TP. The mean runs over
    classes 0..5. A class absent from both truth and prediction has 0/0: the course scorer
    returns NaN for the whole mean then; we report that class's IoU as NaN and average over the
    classes that are defined (on the real validation split every class is present, so both
    agree there).
    """

    def __init__(self, num_classes=NUM_CLASSES, device=None):
        """device None: `mat` is a NumPy array; a torch device: a tensor there (validation
        counts on the GPU, and the ranks all-reduce it)."""
        self.n = num_classes
        if device is None:
            self.mat = np.zeros((num_classes, num_classes), dtype=np.int64)
        else:
            import torch
            self.mat = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    def update(self, target, pred):
        """Add the pixels of (..., H, W) class maps, NumPy arrays or tensors (on the matrix's
        device when it has one); values outside 0..n-1 are not counted."""
        if isinstance(self.mat, np.ndarray):
            t, p = (as_numpy(x).reshape(-1).astype(np.int64) for x in (target, pred))
            bincount = np.bincount
        else:
            import torch
            t = torch.as_tensor(target).to(self.mat.device).reshape(-1).long()
            p = torch.as_tensor(pred).to(self.mat.device).reshape(-1).long()
            bincount = torch.bincount
        if t.shape != p.shape:
            raise ValueError(f"target has {t.shape[0]} pixels, prediction {p.shape[0]}")
        ok = (t >= 0) & (t < self.n) & (p >= 0) & (p < self.n)
        self.mat += bincount(self.n * t[ok] + p[ok], minlength=self.n ** 2).reshape(self.n, self.n)
        return self

    def reset(self):
        self.mat[...] = 0

    def counts(self):
        """The matrix as a float64 NumPy array (copied to the host)."""
        mat = self.mat if isinstance(self.mat, np.ndarray) else self.mat.cpu().numpy()
        return mat.astype(np.float64)

    def iou(self, classes=SCORED_CLASSES):
        """IoU of classes 0..classes-1 as a float64 NumPy array; NaN for a class never seen."""
        mat = self.counts()
        tp = np.diag(mat)
        denom = mat.sum(0) + mat.sum(1) - tp
        iou = np.full_like(tp, np.nan)
        np.divide(tp, denom, out=iou, where=denom > 0)
        return iou[:classes]

    def miou(self, classes=SCORED_CLASSES):
        iou = self.iou(classes)
        defined = ~np.isnan(iou)
        return float(iou[defined].mean()) if defined.any() else float("nan")

    def pixel_accuracy(self):
        mat = self.counts()
        return float(np.trace(mat) / max(mat.sum(), 1.0))

    def per_class(self, classes=SCORED_CLASSES):
        """{class name: IoU or None} for logs (JSON has no NaN)."""
        return {CLASS_NAMES[i]: (None if math.isnan(v) else round(v, 6))
                for i, v in enumerate(self.iou(classes).tolist())}
