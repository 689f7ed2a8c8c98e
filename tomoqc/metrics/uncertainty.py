"""Uncertainty of class probabilities: entropy, its Monte-Carlo decomposition, calibration.

A segmentation network gives, per pixel, a distribution ``p`` over ``C`` classes. Its
Shannon entropy ``H(p) = -sum_c p_c log2 p_c`` (bits, with ``0 log 0 = 0``) is 0 for a
certain pixel and ``log2 C`` for a uniform one. A binary network gives one channel, the
foreground probability ``q``; it stands for the two-class distribution ``(1 - q, q)``
(:func:`as_class_probabilities`), whose entropy is at most 1 bit.

Given ``S`` samples ``p_1 .. p_S`` of the same pixel (Monte-Carlo dropout passes or
test-time augmentations), the predictive entropy splits into two parts [1]_ [2]_:

* total ``= H(mean_s p_s)``, the entropy of the averaged prediction;
* aleatoric ``= mean_s H(p_s)``, what each sample is unsure of on its own (ambiguity of the
  data: a blurred boundary, noise);
* epistemic ``= total - aleatoric``, the mutual information between the prediction and
  the sampled model: how much the samples disagree. Entropy is concave, so this is
  never negative (Jensen); tiny negative values from rounding are clipped to 0.

The expected calibration error [3]_ compares the confidence of the predicted class (the
largest probability) with how often that class is right, in bins of confidence.

This module needs only NumPy.

References
----------
.. [1] Y. Gal, "Uncertainty in Deep Learning", PhD thesis, University of Cambridge, 2016,
   section 3.3.1.
.. [2] S. Depeweg, J. M. Hernandez-Lobato, F. Doshi-Velez, S. Udluft, "Decomposition of
   uncertainty in Bayesian deep learning for efficient and risk-sensitive learning",
   ICML 2018. https://proceedings.mlr.press/v80/depeweg18a.html
.. [3] C. Guo, G. Pleiss, Y. Sun, K. Q. Weinberger, "On calibration of modern neural
   networks", ICML 2017. https://proceedings.mlr.press/v70/guo17a.html
"""

from __future__ import annotations

import numpy as np

from tomoqc.errors import OptionError
from tomoqc.metrics.fr import MetricInputError

__all__ = [
    "as_class_probabilities",
    "entropy_bits",
    "predictive_decomposition",
    "reliability_table",
    "expected_calibration_error",
]

#: Probabilities may stray this far outside [0, 1] (float32 rounding of a softmax) before
#: they are taken for an error.
_PROB_TOLERANCE = 1e-4


def _float_array(prob, what: str = "probabilities") -> np.ndarray:
    """``prob`` as a float array (float32 stays float32, anything else becomes float64)."""
    a = np.asarray(prob)
    if a.dtype.kind not in "fiub" or np.iscomplexobj(a):
        raise MetricInputError(f"{what} must be real numbers, got dtype {a.dtype}")
    if a.dtype != np.float32:
        a = a.astype(np.float64)
    if a.size and not np.isfinite(a).all():
        raise MetricInputError(f"{what} contain NaN or infinite values")
    if a.size and (a.min() < -_PROB_TOLERANCE or a.max() > 1 + _PROB_TOLERANCE):
        raise MetricInputError(
            f"{what} must lie in [0, 1], got values in [{float(a.min()):.4g}, {float(a.max()):.4g}]"
        )
    return a


def _axis(axis: int, ndim: int, what: str = "axis") -> int:
    """A non-negative axis index, or an OptionError naming the bad ``axis``."""
    try:
        ax = int(axis)
    except (TypeError, ValueError):
        raise OptionError(f"{what} must be an integer, got {axis!r}") from None
    if not -ndim <= ax < ndim:
        raise OptionError(f"{what}={axis} is out of range for an array with {ndim} dimensions")
    return ax % ndim


def as_class_probabilities(prob, binary: bool, *, axis: int = -1) -> np.ndarray:
    """The full class distribution of a probability map.

    Parameters
    ----------
    prob : array_like
        Probabilities in [0, 1]. With ``binary``, the class axis has length 1 and holds
        the foreground probability ``q``; otherwise it holds every class.
    binary : bool
        True: ``prob`` is a one-channel foreground map, returned as the two classes
        ``(1 - q, q)`` (background first) along ``axis``. False: ``prob`` is returned as
        it is (as a float array).
    axis : int
        The class axis.

    Returns
    -------
    ndarray
        float32 for float32 input, else float64.

    Examples
    --------
    >>> as_class_probabilities([[0.25]], True).tolist()
    [[0.75, 0.25]]
    """
    p = _float_array(prob)
    if p.ndim == 0:
        raise MetricInputError("probabilities need a class axis, got a scalar")
    ax = _axis(axis, p.ndim)
    if not binary:
        return p
    if p.shape[ax] != 1:
        raise MetricInputError(
            f"a binary probability map has one channel (the foreground) along axis {axis}, "
            f"got {p.shape[ax]} channels; pass binary=False for a map of every class"
        )
    return np.concatenate([1 - p, p], axis=ax)


def _entropy(p: np.ndarray, ax: int) -> np.ndarray:
    """Entropy in bits along ``ax`` of an already checked float array (0 log 0 = 0)."""
    q = np.clip(p, 0.0, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(q > 0, q * np.log2(np.where(q > 0, q, 1)), 0)
    h = -terms.sum(axis=ax)
    # rounding of probabilities that do not quite sum to 1 can give -0 or -1e-8
    return np.maximum(h, 0).astype(p.dtype, copy=False)


def entropy_bits(prob, *, axis: int = -1, binary: bool = False) -> np.ndarray:
    """Shannon entropy of a class distribution, in bits.

    ``H(p) = -sum_c p_c log2 p_c`` along ``axis`` with ``0 log 0 = 0``: 0 for a one-hot
    distribution, ``log2 C`` for the uniform distribution over ``C`` classes.

    Parameters
    ----------
    prob : array_like
        Probabilities in [0, 1] along ``axis`` (each distribution should sum to 1).
    axis : int
        The class axis; it is reduced.
    binary : bool
        ``prob`` holds one channel, the foreground probability ``q`` (see
        :func:`as_class_probabilities`); its entropy is that of ``(1 - q, q)``.

    Returns
    -------
    ndarray
        The entropy, shape of ``prob`` without ``axis``; float32 for float32 input.

    Examples
    --------
    >>> float(entropy_bits([0.25, 0.25, 0.25, 0.25]))
    2.0
    >>> float(entropy_bits([0.5], binary=True))
    1.0
    """
    p = as_class_probabilities(prob, binary, axis=axis)
    return _entropy(p, _axis(axis, p.ndim))


def predictive_decomposition(samples, *, axis: int = 0, class_axis: int = -1, binary: bool = False) -> dict:
    """Split the predictive entropy of sampled predictions into aleatoric and epistemic parts.

    Parameters
    ----------
    samples : array_like
        Probabilities of ``S`` samples (Monte-Carlo dropout passes, test-time
        augmentations) stacked along ``axis``, classes along ``class_axis``.
    axis : int
        The sample axis.
    class_axis : int
        The class axis, counted in ``samples`` (before the sample axis is reduced).
    binary : bool
        The class axis has length 1 and holds the foreground probability.

    Returns
    -------
    dict of ndarray
        ``total`` (entropy of the mean prediction), ``aleatoric`` (mean entropy of the
        samples) and ``epistemic`` (their difference, the mutual information, clipped at
        0), each in bits, shaped like ``samples`` without the two axes; and ``mean``, the
        mean probabilities (``samples`` without the sample axis, classes as given).

    Examples
    --------
    Two confident samples that disagree: no aleatoric, one bit of epistemic uncertainty.

    >>> d = predictive_decomposition([[1.0, 0.0], [0.0, 1.0]])
    >>> float(d["total"]), float(d["aleatoric"]), float(d["epistemic"])
    (1.0, 0.0, 1.0)
    """
    s = _float_array(samples, "sampled probabilities")
    if s.ndim < 2:
        raise MetricInputError(f"samples need a sample axis and a class axis, got shape {s.shape}")
    ax = _axis(axis, s.ndim)
    cax = _axis(class_axis, s.ndim, "class_axis")
    if ax == cax:
        raise OptionError(f"the sample axis and the class axis must differ, both are {axis}")
    if s.shape[ax] == 0:
        raise MetricInputError("no samples along the sample axis")
    full = as_class_probabilities(s, binary, axis=cax)
    per_sample = _entropy(full, cax)  # class axis gone
    aleatoric = per_sample.mean(axis=ax if ax < cax else ax - 1)
    mean_full = full.mean(axis=ax)
    cax_after = cax if cax < ax else cax - 1
    total = _entropy(mean_full, cax_after)
    epistemic = np.maximum(total - aleatoric, 0)
    dtype = s.dtype
    return {
        "total": total.astype(dtype, copy=False),
        "aleatoric": aleatoric.astype(dtype, copy=False),
        "epistemic": epistemic.astype(dtype, copy=False),
        "mean": s.mean(axis=ax).astype(dtype, copy=False),
    }


def _confidence_and_correct(prob, labels, axis: int, binary: bool):
    p = as_class_probabilities(prob, binary, axis=axis)
    ax = _axis(axis, p.ndim)
    lab = np.asarray(labels)
    expected = p.shape[:ax] + p.shape[ax + 1 :]
    if lab.shape != expected:
        raise MetricInputError(f"labels have shape {lab.shape}, the probabilities need {expected}")
    if lab.dtype.kind not in "uib":
        if lab.dtype.kind != "f" or not np.all(np.isfinite(lab)) or not np.all(lab == np.round(lab)):
            raise MetricInputError(f"labels must be integer class numbers, got dtype {lab.dtype}")
    lab = lab.astype(np.int64)
    n_classes = p.shape[ax]
    if lab.size and (lab.min() < 0 or lab.max() >= n_classes):
        raise MetricInputError(f"labels must lie in 0..{n_classes - 1}, got {lab.min()}..{lab.max()}")
    confidence = p.max(axis=ax).astype(np.float64).ravel()
    correct = (p.argmax(axis=ax) == lab).ravel()
    return confidence, correct


def reliability_table(prob, labels, *, n_bins: int = 15, axis: int = -1, binary: bool = False) -> dict:
    """Confidence against accuracy in equal-width bins of confidence.

    The confidence of a pixel (or sample) is its largest class probability, its prediction
    the class that has it (the argmax; ties go to the lower class). Bin ``b`` holds the
    confidences in ``(b / n_bins, (b + 1) / n_bins]``; a confidence of exactly 0 (possible
    only for an all-zero distribution) goes to the first bin.

    Parameters
    ----------
    prob : array_like
        Probabilities, classes along ``axis`` (with ``binary``: one foreground channel).
    labels : array_like of int
        True classes, the shape of ``prob`` without ``axis``.
    n_bins : int
        Number of bins over [0, 1].
    axis : int
        The class axis of ``prob``.
    binary : bool
        ``prob`` holds one channel, the foreground probability; labels are 0 or 1.

    Returns
    -------
    dict of ndarray
        ``lower``, ``upper`` (bin edges), ``count`` (int64), ``confidence`` (mean
        confidence in the bin) and ``accuracy`` (fraction correct), the last two NaN for
        empty bins.
    """
    try:
        nb = int(n_bins)
    except (TypeError, ValueError):
        raise OptionError(f"n_bins must be a positive integer, got {n_bins!r}") from None
    if nb < 1 or nb != n_bins:
        raise OptionError(f"n_bins must be a positive integer, got {n_bins!r}")
    confidence, correct = _confidence_and_correct(prob, labels, axis, binary)
    edges = np.linspace(0.0, 1.0, nb + 1)
    # right-closed bins (b/n, (b+1)/n]: ceil(c * n) - 1, with 0 in the first bin
    idx = np.clip(np.ceil(confidence * nb).astype(np.int64) - 1, 0, nb - 1)
    count = np.bincount(idx, minlength=nb)
    conf_sum = np.bincount(idx, weights=confidence, minlength=nb)
    acc_sum = np.bincount(idx, weights=correct.astype(np.float64), minlength=nb)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.where(count > 0, conf_sum / np.maximum(count, 1), np.nan)
        accuracy = np.where(count > 0, acc_sum / np.maximum(count, 1), np.nan)
    return {"lower": edges[:-1], "upper": edges[1:], "count": count,
            "confidence": mean_conf, "accuracy": accuracy}


def expected_calibration_error(prob, labels, *, n_bins: int = 15, axis: int = -1, binary: bool = False) -> float:
    """Expected calibration error: the count-weighted mean gap between confidence and accuracy.

    ``ECE = sum_b (n_b / N) |accuracy_b - confidence_b|`` over the bins of
    :func:`reliability_table` (Guo et al. 2017, eq. 3). 0 for a calibrated predictor; a
    predictor that always claims confidence ``c`` and is right a fraction ``a`` of the
    time has ``ECE = |c - a|``.

    Parameters
    ----------
    prob, labels, n_bins, axis, binary
        As for :func:`reliability_table`.

    Returns
    -------
    float
        In [0, 1]; NaN when there are no samples.

    Examples
    --------
    >>> import numpy as np
    >>> p = np.tile([0.9, 0.1], (10, 1))         # always 90 % sure of class 0 ...
    >>> y = np.array([0] * 6 + [1] * 4)           # ... and right 6 times out of 10
    >>> round(expected_calibration_error(p, y), 6)
    0.3
    """
    t = reliability_table(prob, labels, n_bins=n_bins, axis=axis, binary=binary)
    n = int(t["count"].sum())
    if n == 0:
        return float("nan")
    used = t["count"] > 0
    gaps = np.abs(t["accuracy"][used] - t["confidence"][used])
    return float(np.sum(t["count"][used] * gaps) / n)
