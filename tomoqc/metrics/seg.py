"""Segmentation agreement: confusion matrix, per-class F1 (Dice) and IoU, and IoU maps.

For a class ``c`` with ``TP`` pixels labelled ``c`` in both prediction and truth, ``FP``
labelled ``c`` only in the prediction and ``FN`` only in the truth:

* IoU (Jaccard index) ``= TP / (TP + FP + FN)``, the overlap over the union;
* F1 (Dice coefficient) ``= 2 TP / (2 TP + FP + FN)``, twice the overlap over the pixels
  of the class in both maps together (the report's IV.2).

A class absent from both maps has no defined score (``nan``); means skip such classes.

The Matthews correlation coefficient (Matthews 1975; Gorodkin 2004 for more than two
classes) scores the whole map at once from the confusion matrix ``C`` (rows truth, columns
prediction, ``n`` pixels, ``t_k``/``p_k`` the truth's/prediction's count of class ``k``)::

    MCC = (n * trace(C) - sum_k t_k p_k) / sqrt((n^2 - sum_k p_k^2) (n^2 - sum_k t_k^2))

For two classes it is the correlation of the two binary maps. It is 1 for a perfect map, 0
for one no better than chance, and (unlike F1) it counts the background's agreement too:
HTC2022 ranked its entries' segmentations by it.

The IoU map (the report's IV.6, Figure 5) colours, for one class, the pixels correctly
predicted green, the missed ones (class in the truth, not in the prediction) blue and the
wrongly predicted ones (class in the prediction, not in the truth) red.

References
----------
P. Jaccard, "The distribution of the flora in the alpine zone", New Phytologist 11(2),
37-50, 1912. https://doi.org/10.1111/j.1469-8137.1912.tb05611.x

L. R. Dice, "Measures of the amount of ecologic association between species", Ecology
26(3), 297-302, 1945. https://doi.org/10.2307/1932409

B. W. Matthews, "Comparison of the predicted and observed secondary structure of T4 phage
lysozyme", Biochim. Biophys. Acta 405(2), 442-451, 1975.
https://doi.org/10.1016/0005-2795(75)90109-9

J. Gorodkin, "Comparing two K-category assignments by a K-category correlation
coefficient", Comput. Biol. Chem. 28(5-6), 367-374, 2004.
https://doi.org/10.1016/j.compbiolchem.2004.09.006
"""

from __future__ import annotations

import numpy as np

from tomoqc.metrics.fr import MetricInputError

__all__ = ["confusion_matrix", "f1_per_class", "iou_per_class", "matthews_corrcoef", "segmentation_scores",
           "iou_map", "COLORS"]

#: Colours of the IoU map (RGB, uint8).
COLORS = {"correct": (0, 200, 0), "missed": (0, 0, 255), "wrong": (255, 0, 0)}


def _labels(pred, truth):
    p = np.asarray(pred)
    t = np.asarray(truth)
    if p.shape != t.shape:
        raise MetricInputError(f"prediction and truth differ in shape: {p.shape} vs {t.shape}")
    if p.size == 0:
        raise MetricInputError("label maps are empty")
    for a, what in ((p, "prediction"), (t, "truth")):
        if a.dtype.kind == "f":
            if not np.isfinite(a).all() or not np.all(a == np.round(a)):
                raise MetricInputError(f"{what} must hold integer class labels")
        elif a.dtype.kind not in "uib":
            raise MetricInputError(f"{what} must hold integer class labels, got dtype {a.dtype}")
        if a.dtype.kind != "b" and a.min() < 0:
            raise MetricInputError(f"{what} holds negative class labels")
    return p.astype(np.int64).ravel(), t.astype(np.int64).ravel()


def confusion_matrix(pred, truth, n_classes: int | None = None) -> np.ndarray:
    """Counts ``M[i, j]`` of pixels of true class ``i`` predicted as class ``j``."""
    p, t = _labels(pred, truth)
    k = int(max(p.max(), t.max())) + 1
    if n_classes is None:
        n_classes = k
    elif k > n_classes:
        raise MetricInputError(f"labels go up to {k - 1} but n_classes is {n_classes}")
    return np.bincount(t * n_classes + p, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def _tp_fp_fn(m):
    tp = np.diag(m).astype(np.float64)
    fp = m.sum(axis=0) - tp
    fn = m.sum(axis=1) - tp
    return tp, fp, fn


def f1_per_class(pred, truth, n_classes: int | None = None) -> np.ndarray:
    """F1 (Dice) of each class, ``nan`` for classes in neither map."""
    tp, fp, fn = _tp_fp_fn(confusion_matrix(pred, truth, n_classes))
    den = 2 * tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, 2 * tp / den, np.nan)


def iou_per_class(pred, truth, n_classes: int | None = None) -> np.ndarray:
    """IoU (Jaccard) of each class, ``nan`` for classes in neither map."""
    tp, fp, fn = _tp_fp_fn(confusion_matrix(pred, truth, n_classes))
    den = tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, tp / den, np.nan)


def matthews_corrcoef(pred, truth, n_classes: int | None = None) -> float:
    """Matthews correlation coefficient of a label map against the truth (module doc).

    0 where it is undefined: both maps hold a single class, or one of them does (a constant
    map is no better than chance, whatever it gets right).
    """
    m = confusion_matrix(pred, truth, n_classes).astype(np.float64)
    n = m.sum()
    t, p = m.sum(axis=1), m.sum(axis=0)
    den = (n * n - float(p @ p)) * (n * n - float(t @ t))
    return float((n * np.trace(m) - float(t @ p)) / np.sqrt(den)) if den > 0 else 0.0


def segmentation_scores(pred, truth, n_classes: int | None = None) -> dict:
    """Per-class and mean F1 and IoU, pixel accuracy and the confusion matrix."""
    m = confusion_matrix(pred, truth, n_classes)
    f1 = f1_per_class(pred, truth, m.shape[0])
    iou = iou_per_class(pred, truth, m.shape[0])
    return {
        "f1": f1.tolist(),
        "iou": iou.tolist(),
        "mean_f1": float(np.nanmean(f1)) if np.isfinite(f1).any() else float("nan"),
        "mean_iou": float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan"),
        "accuracy": float(np.trace(m) / m.sum()),
        "confusion": m.tolist(),
    }


def iou_map(pred, truth, cls: int = 1, *, background=None) -> np.ndarray:
    """RGB image of the agreement for class ``cls``: correct green, missed blue, wrong red.

    Parameters
    ----------
    pred, truth : (H, W) integer arrays
    cls : int
        The class shown.
    background : (H, W) array, optional
        Gray image drawn (scaled to its own min-max) where neither map has the class;
        black otherwise.

    Returns
    -------
    ndarray of uint8, shape ``(H, W, 3)``
    """
    p = np.asarray(pred)
    t = np.asarray(truth)
    _labels(p, t)
    if p.ndim != 2:
        raise MetricInputError(f"expected 2-D label maps, got shape {p.shape}")
    in_p = p == cls
    in_t = t == cls
    out = np.zeros(p.shape + (3,), dtype=np.uint8)
    if background is not None:
        b = np.asarray(background, dtype=np.float64)
        if b.shape != p.shape:
            raise MetricInputError(f"background shape {b.shape} differs from the maps {p.shape}")
        span = np.ptp(b)
        g = ((b - b.min()) / span * 255 if span > 0 else np.zeros_like(b)).astype(np.uint8)
        out[...] = g[..., None]
    out[in_p & in_t] = COLORS["correct"]
    out[in_t & ~in_p] = COLORS["missed"]
    out[in_p & ~in_t] = COLORS["wrong"]
    return out
