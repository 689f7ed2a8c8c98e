"""Agreement between predicted and true quality scores: PLCC, SROCC, KROCC, RMSE.

These are the criteria of the VQEG reports and of the IQA literature: SROCC and KROCC
measure prediction monotonicity, PLCC and RMSE prediction accuracy, the latter two
usually after a monotone logistic map from the objective scores to the subjective scale
(:func:`logistic_fit`, :func:`plcc_logistic`). :func:`bootstrap_ci` puts a percentile
confidence interval on any of them; :func:`cluster_bootstrap` does so when the samples come
in dependent groups (images of one reference, pairs of one series) and compares two methods
on the same resamples.

Degenerate input (a constant vector) has no correlation: the functions return ``nan``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from tomoqc.metrics.fr import MetricInputError

__all__ = [
    "srocc",
    "krocc",
    "plcc",
    "rmse",
    "rankdata",
    "logistic4",
    "logistic5",
    "LogisticFit",
    "logistic_fit",
    "plcc_logistic",
    "bootstrap_ci",
    "ClusterBootstrap",
    "cluster_bootstrap",
    "cluster_index",
]


def _pair(x, y, *, min_n: int = 2):
    a = np.asarray(x, dtype=np.float64).ravel()
    b = np.asarray(y, dtype=np.float64).ravel()
    if a.size != b.size:
        raise MetricInputError(f"x and y differ in length: {a.size} vs {b.size}")
    if a.size < min_n:
        raise MetricInputError(f"need at least {min_n} pairs, got {a.size}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise MetricInputError("x or y contains NaN or Inf values")
    return a, b


def rankdata(a) -> np.ndarray:
    """Ranks 1..n with ties given the mean of the ranks they span ("fractional" ranking)."""
    a = np.asarray(a, dtype=np.float64).ravel()
    order = np.argsort(a, kind="mergesort")
    sorted_a = a[order]
    # boundaries of runs of equal values
    new = np.empty(a.size, dtype=bool)
    new[:1] = True
    new[1:] = sorted_a[1:] != sorted_a[:-1]
    starts = np.flatnonzero(new)
    ends = np.append(starts[1:], a.size)
    mean_rank = (starts + ends + 1) / 2.0  # mean of the 1-based ranks starts+1 .. ends
    run_id = np.cumsum(new) - 1
    ranks = np.empty(a.size, dtype=np.float64)
    ranks[order] = mean_rank[run_id]
    return ranks


def _pearson(a, b) -> float:
    da = a - a.mean()
    db = b - b.mean()
    saa = float(np.dot(da, da))
    sbb = float(np.dot(db, db))
    if saa == 0.0 or sbb == 0.0:
        return math.nan
    r = float(np.dot(da, db)) / math.sqrt(saa * sbb)
    return max(-1.0, min(1.0, r))


def plcc(x, y) -> float:
    """Pearson linear correlation coefficient (no fitting), as in the report's IV.2."""
    a, b = _pair(x, y)
    return _pearson(a, b)


def srocc(x, y) -> float:
    """Spearman rank-order correlation: the Pearson correlation of the fractional ranks.

    With ties this equals ``scipy.stats.spearmanr``; without ties it equals
    ``1 - 6 sum d_i^2 / (n (n^2 - 1))``.
    """
    a, b = _pair(x, y)
    return _pearson(rankdata(a), rankdata(b))


def krocc(x, y) -> float:
    """Kendall rank-order correlation, tau-b (ties counted as in ``scipy.stats.kendalltau``).

    ``tau_b = (C - D) / sqrt((P - T_x) (P - T_y))`` with ``C``/``D`` the concordant and
    discordant pairs, ``P = n (n-1) / 2`` and ``T_x``, ``T_y`` the pairs tied in x or y.
    Computed exactly over all pairs, in blocks, so memory stays bounded.
    """
    a, b = _pair(x, y)
    n = a.size
    s = 0.0  # C - D
    nx = 0.0  # pairs not tied in x
    ny = 0.0  # pairs not tied in y
    block = max(1, 4_000_000 // max(n, 1))
    for i0 in range(0, n - 1, block):
        i1 = min(n - 1, i0 + block)
        rows = np.arange(i0, i1)
        sx = np.sign(a[None, :] - a[rows, None])
        sy = np.sign(b[None, :] - b[rows, None])
        mask = np.arange(n)[None, :] > rows[:, None]  # j > i only
        sx *= mask
        sy *= mask
        s += float(np.sum(sx * sy))
        nx += float(np.sum(np.abs(sx)))
        ny += float(np.sum(np.abs(sy)))
    if nx == 0.0 or ny == 0.0:
        return math.nan
    return max(-1.0, min(1.0, s / math.sqrt(nx * ny)))


def rmse(x, y) -> float:
    """Root mean squared difference between two score vectors."""
    a, b = _pair(x, y, min_n=1)
    return float(np.sqrt(np.mean((a - b) ** 2)))


# ---------------------------------------------------------------------------------------
# logistic mapping
# ---------------------------------------------------------------------------------------

def logistic5(x, b1, b2, b3, b4, b5):
    """Five-parameter logistic of Sheikh, Sabir and Bovik (2006):
    ``b1 (1/2 - 1 / (1 + exp(b2 (x - b3)))) + b4 x + b5``."""
    x = np.asarray(x, dtype=np.float64)
    z = np.clip(b2 * (x - b3), -500.0, 500.0)
    return b1 * (0.5 - 1.0 / (1.0 + np.exp(z))) + b4 * x + b5


def logistic4(x, b1, b2, b3, b4):
    """Four-parameter logistic of the VQEG FR-TV Phase II report:
    ``(b1 - b2) / (1 + exp(-(x - b3) / |b4|)) + b2``."""
    x = np.asarray(x, dtype=np.float64)
    z = np.clip(-(x - b3) / max(abs(b4), 1e-12), -500.0, 500.0)
    return (b1 - b2) / (1.0 + np.exp(z)) + b2


@dataclass
class LogisticFit:
    """A fitted logistic map from objective scores to the subjective scale.

    Attributes
    ----------
    kind : int
        4 or 5 parameters.
    params : numpy.ndarray
    plcc, rmse, srocc : float
        Agreement of the mapped scores with the subjective scores.
    converged : bool
        False when the optimiser did not converge (the linear fit is used instead).
    """

    kind: int
    params: np.ndarray
    plcc: float
    rmse: float
    srocc: float
    converged: bool = True
    mapped: np.ndarray = field(default=None, repr=False)

    def __call__(self, x) -> np.ndarray:
        f = logistic5 if self.kind == 5 else logistic4
        return f(x, *self.params)


def _initial(a, b, kind):
    span_b = float(b.max() - b.min()) or 1.0
    mid = float(np.median(a))
    scale = float(np.std(a)) or 1.0
    sign = 1.0 if _pearson(a, b) >= 0 or math.isnan(_pearson(a, b)) else -1.0
    if kind == 5:
        return [sign * span_b, 1.0 / scale, mid, 0.0, float(np.mean(b))]
    hi, lo = float(b.max()), float(b.min())
    if sign < 0:
        hi, lo = lo, hi
    return [hi, lo, mid, scale]


def logistic_fit(x, y, *, kind: int = 5) -> LogisticFit:
    """Fit the 4- or 5-parameter logistic from objective scores ``x`` to subjective ``y``.

    Parameters
    ----------
    x, y : array_like
        Objective (predicted) and subjective (true) scores, same length (at least
        ``kind + 1`` pairs).
    kind : {5, 4}
        Five-parameter logistic of Sheikh et al. (2006) or four-parameter logistic of the
        VQEG (2003) report.

    Returns
    -------
    LogisticFit
        The parameters, and PLCC, RMSE, SROCC between the mapped ``x`` and ``y``.

    Notes
    -----
    Nonlinear least squares (``scipy.optimize.curve_fit``, Levenberg-Marquardt) from a
    data-driven start. If it does not converge, a straight line is fitted instead
    (``converged=False``), which keeps PLCC equal to the raw PLCC.

    References
    ----------
    H. R. Sheikh, M. F. Sabir and A. C. Bovik, "A statistical evaluation of recent full
    reference image quality assessment algorithms", IEEE Trans. Image Process. 15(11),
    3440-3451, 2006. https://doi.org/10.1109/TIP.2006.881959

    VQEG, "Final report from the Video Quality Experts Group on the validation of objective
    models of video quality assessment, Phase II", 2003.
    """
    from scipy.optimize import curve_fit

    if kind not in (4, 5):
        raise MetricInputError(f"kind must be 4 or 5, got {kind!r}")
    a, b = _pair(x, y, min_n=kind + 1)
    func = logistic5 if kind == 5 else logistic4
    converged = True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            params, _ = curve_fit(func, a, b, p0=_initial(a, b, kind), maxfev=20000)
        mapped = func(a, *params)
        if not np.isfinite(mapped).all():
            raise RuntimeError("non-finite fit")
    except (RuntimeError, ValueError, FloatingPointError):
        converged = False
        slope, intercept = np.polyfit(a, b, 1) if np.ptp(a) > 0 else (0.0, float(b.mean()))
        # express the line in the logistic family's linear term (5-parameter form)
        params = np.array([0.0, 0.0, 0.0, slope, intercept])
        kind = 5
        mapped = slope * a + intercept
    params = np.asarray(params, dtype=np.float64)
    return LogisticFit(
        kind=kind,
        params=params,
        plcc=_pearson(mapped, b),
        rmse=float(np.sqrt(np.mean((mapped - b) ** 2))),
        srocc=_pearson(rankdata(mapped), rankdata(b)),
        converged=converged,
        mapped=mapped,
    )


def plcc_logistic(x, y, *, kind: int = 5) -> tuple[float, float, np.ndarray]:
    """PLCC and RMSE after the logistic map of :func:`logistic_fit`.

    Returns
    -------
    (plcc, rmse, params)
    """
    fit = logistic_fit(x, y, kind=kind)
    return fit.plcc, fit.rmse, fit.params


# ---------------------------------------------------------------------------------------
# bootstrap
# ---------------------------------------------------------------------------------------

def bootstrap_ci(
    stat: Callable, x, y, n: int = 1000, seed: int | None = 0, *, level: float = 0.95
) -> tuple[float, float, float]:
    """Percentile bootstrap confidence interval of ``stat(x, y)``.

    Pairs ``(x_i, y_i)`` are resampled with replacement ``n`` times; resamples on which the
    statistic is undefined (``nan``, e.g. all values equal) are dropped.

    Returns
    -------
    (estimate, low, high)
        ``stat`` on the full data and the ``(1 - level)/2`` and ``(1 + level)/2`` quantiles
        of its bootstrap distribution.

    References
    ----------
    B. Efron and R. J. Tibshirani, "An Introduction to the Bootstrap", Chapman & Hall, 1993.
    https://doi.org/10.1201/9780429246593
    """
    a, b = _pair(x, y)
    if n < 1:
        raise MetricInputError(f"n must be at least 1, got {n}")
    if not 0.0 < level < 1.0:
        raise MetricInputError(f"level must be in (0, 1), got {level}")
    rng = np.random.default_rng(seed)
    estimate = float(stat(a, b))
    values = []
    for _ in range(n):
        idx = rng.integers(0, a.size, a.size)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                v = float(stat(a[idx], b[idx]))
            except MetricInputError:
                continue
        if math.isfinite(v):
            values.append(v)
    if not values:
        return estimate, math.nan, math.nan
    lo, hi = np.quantile(values, [(1.0 - level) / 2.0, (1.0 + level) / 2.0])
    return estimate, float(lo), float(hi)


def cluster_index(clusters) -> np.ndarray:
    """Each sample's cluster as a number: the position of its label among the labels sorted
    as strings (the ``group`` argument :func:`cluster_bootstrap` gives ``stat`` for the
    estimate on all samples)."""
    labels = list(clusters)
    number = {g: k for k, g in enumerate(sorted(set(labels), key=str))}
    return np.asarray([number[g] for g in labels], np.intp)


@dataclass(frozen=True)
class ClusterBootstrap:
    """Result of :func:`cluster_bootstrap`: the statistic on all samples, the percentile
    interval of its resamples, and the share of resamples above zero (for a difference of
    two methods: how often the first one wins)."""

    estimate: float
    low: float
    high: float
    share_positive: float
    resamples: int


def cluster_bootstrap(
    stat: Callable[[np.ndarray, np.ndarray], float], clusters, n: int = 1000, seed: int | None = 0, *,
    level: float = 0.95,
) -> ClusterBootstrap:
    """Percentile bootstrap that resamples whole clusters of samples.

    Samples of one cluster (the distorted images of one reference, the images of one
    series) are not independent; resampling them one by one gives intervals that are too
    narrow. Here each resample draws as many clusters as there are, with replacement, and
    keeps every sample of each drawn cluster.

    Parameters
    ----------
    stat : callable ``stat(index, group) -> float``
        The statistic on the samples ``index`` (an int array into the data, with repeats);
        ``group`` gives each of them its drawn cluster's position in the resample, so that a
        cluster drawn twice counts as two (e.g. as two series for pair counts). Called once
        on all samples (``group`` = each sample's cluster number) for the estimate. To compare
        two methods, return the difference of their statistics: both then see the same
        resamples (a paired comparison).
    clusters : sequence of hashable
        Cluster of each sample.
    n : int
        Number of resamples; those on which ``stat`` is not finite are dropped.
    level : float
        Coverage of the interval.

    Returns
    -------
    ClusterBootstrap

    References
    ----------
    A. C. Davison and D. V. Hinkley, "Bootstrap Methods and their Application", Cambridge
    University Press, 1997, section 3.8 (the cluster, or two-stage, bootstrap).
    https://doi.org/10.1017/CBO9780511802843
    """
    if n < 1:
        raise MetricInputError(f"n must be at least 1, got {n}")
    if not 0.0 < level < 1.0:
        raise MetricInputError(f"level must be in (0, 1), got {level}")
    number = cluster_index(clusters)
    if not number.size:
        raise MetricInputError("cluster_bootstrap needs at least one sample")
    n_clusters = int(number.max()) + 1
    members = [np.flatnonzero(number == c) for c in range(n_clusters)]
    estimate = float(stat(np.arange(number.size, dtype=np.intp), number))
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n):
        pick = rng.integers(0, n_clusters, n_clusters)
        idx = np.concatenate([members[g] for g in pick])
        group = np.concatenate([np.full(members[g].size, k, np.intp) for k, g in enumerate(pick)])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                v = float(stat(idx, group))
            except MetricInputError:
                continue
        if math.isfinite(v):
            values.append(v)
    if not values:
        return ClusterBootstrap(estimate, math.nan, math.nan, math.nan, 0)
    vals = np.asarray(values)
    lo, hi = np.quantile(vals, [(1.0 - level) / 2.0, (1.0 + level) / 2.0])
    return ClusterBootstrap(estimate, float(lo), float(hi), float(np.mean(vals > 0)), int(vals.size))
