"""Paired statistics for ranking variants of the same slices.

Several variants of one volume (processing choices, parameter values) are scored slice
by slice; slice ``j`` of every variant shows the same part of the sample, so variants
are compared on their *paired* differences ``d_j = s_v[j] - s_best[j]``. Content that
makes some slices score low and others high then cancels, and a small but consistent
lead is found where the spread of the slice scores would hide it.

:func:`rank_variants` picks the best variant (:func:`choose_best`: the one that trails
its strongest rival least in median paired difference, i.e. the one that leads every
other when one does), ranks the others by their median paired difference to it, tests
each difference (:func:`paired_difference`), says which variants are *tied* with the
best and which share of the slices each variant wins (:func:`slice_wins`).

The tie rule
------------
A variant ``v`` is tied with the best ``b`` when either

1. its median paired difference lies inside their combined uncertainty,
   ``|median(d)| <= k * u_d`` with ``k = 1`` by default, where ``u_d`` is the standard
   uncertainty of the median of ``n`` paired differences whose slices carry score
   uncertainties ``u_v[j]`` and ``u_b[j]`` (:func:`median_uncertainty` of
   ``sqrt(u_v[j]**2 + u_b[j]**2)``: ``c_n * RMS / sqrt(n)`` with ``c_n = sqrt(pi / 2)``
   for ``n >= 3`` and 1 below); or
2. the paired test does not reject "no difference": ``p > alpha`` (``alpha = 0.05``).

With a single slice there is no test and only the first rule applies. Treating the
slice uncertainties as independent between variants overstates ``u_d`` when their
errors are shared (same content): the rule errs towards calling variants tied.

The paired test
---------------
With at least :data:`MIN_WILCOXON` (10) paired slices, the Wilcoxon signed-rank test of
:func:`scipy.stats.wilcoxon` (two-sided, zero differences dropped: ``zero_method=
"wilcox"``; exact null distribution for up to 50 slices without ties, else the normal
approximation). With 2-9 slices (too few for a signed-rank test to reach p < 0.05 below
6 slices) a paired bootstrap: the slices are resampled with replacement
:data:`N_BOOTSTRAP` times; the two-sided p-value is twice the smaller share of
resampled medians on either side of 0 (at least ``1 / (B + 1)``, at most 1). In both
cases the 95 % confidence interval of the median difference is the percentile interval
of the bootstrap. All differences zero give ``p = 1``.

References
----------
Wilcoxon, F. (1945). Individual comparisons by ranking methods. *Biometrics Bulletin*
1(6), 80-83. doi:10.2307/3001968
Efron, B., Tibshirani, R. J. (1993). *An Introduction to the Bootstrap*. Chapman & Hall,
ch. 13 (percentile intervals). doi:10.1201/9780429246593
Kenney, J. F., Keeping, E. S. (1962). *Mathematics of Statistics*, part 1, 3rd ed., sec.
13.13: the standard error of the median of ``n`` normal values is ``sqrt(pi / 2)``
times that of the mean.
"""

from __future__ import annotations

import math

import numpy as np

from tomoqc.errors import OptionError

__all__ = [
    "ALPHA",
    "MIN_WILCOXON",
    "N_BOOTSTRAP",
    "median_uncertainty",
    "slice_wins",
    "paired_difference",
    "choose_best",
    "rank_variants",
]

#: Significance level of the paired test.
ALPHA = 0.05
#: Fewest paired slices for the Wilcoxon signed-rank test; fewer use the bootstrap.
MIN_WILCOXON = 10
#: Bootstrap resamples.
N_BOOTSTRAP = 9999
#: Most resampled values held in memory at once by the bootstrap.
_BOOT_BLOCK = 4_000_000


def median_uncertainty(u) -> float:
    """Standard uncertainty of the median of values with standard uncertainties ``u``.

    ``c_n * sqrt(mean(u**2)) / sqrt(n)`` with ``c_n = sqrt(pi / 2)`` (the large-sample
    efficiency of the median of normal values) for ``n >= 3`` and ``c_n = 1`` for
    ``n <= 2`` (the median of one or two values is their mean). NaN entries of ``u``
    count as 0 (an output without uncertainties); an empty ``u`` gives NaN.

    Parameters
    ----------
    u : array_like
        Per-value standard uncertainties (>= 0).

    Returns
    -------
    float
    """
    a = np.asarray(u, np.float64).ravel()
    n = a.size
    if n == 0:
        return float("nan")
    a = np.where(np.isfinite(a), a, 0.0)
    c = math.sqrt(math.pi / 2) if n >= 3 else 1.0
    return float(c * math.sqrt(float(np.mean(a * a))) / math.sqrt(n))


def slice_wins(scores) -> np.ndarray:
    """Share of the slices on which each variant has the highest score.

    Parameters
    ----------
    scores : array_like, shape (n_variants, n_slices)
        Finite scores.

    Returns
    -------
    ndarray, shape (n_variants,)
        On each slice the variants sharing the highest score split it equally (``k``
        variants tied on top get ``1 / k`` each), so the shares sum to 1.
    """
    s = np.asarray(scores, np.float64)
    if s.ndim != 2 or s.shape[1] == 0:
        raise OptionError(f"scores must be (variants, slices) with at least one slice, got shape {s.shape}")
    top = s == s.max(axis=0, keepdims=True)
    return (top / top.sum(axis=0, keepdims=True)).mean(axis=1)


def _bootstrap_medians(d: np.ndarray, n_boot: int, seed) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = d.size
    out = np.empty(n_boot)
    per = max(1, _BOOT_BLOCK // n)
    for a in range(0, n_boot, per):
        b = min(n_boot, a + per)
        out[a:b] = np.median(d[rng.integers(0, n, size=(b - a, n))], axis=1)
    return out


def paired_difference(a, b, *, alpha: float = ALPHA, min_wilcoxon: int = MIN_WILCOXON,
                      n_boot: int = N_BOOTSTRAP, seed=0) -> dict:
    """Median paired difference ``a - b``, its confidence interval and a paired test.

    Parameters
    ----------
    a, b : array_like, shape (n,)
        Paired scores (slice ``j`` of ``a`` with slice ``j`` of ``b``), finite.
    alpha : float
        1 - confidence level of the interval.
    min_wilcoxon : int
        Fewest pairs for the Wilcoxon signed-rank test; fewer use the paired bootstrap.
    n_boot : int
        Bootstrap resamples (interval, and the p-value below ``min_wilcoxon`` pairs).
    seed : int or Generator
        Seeds the bootstrap.

    Returns
    -------
    dict
        ``n``, ``median_difference``, ``ci_low``, ``ci_high`` (NaN for one pair),
        ``p_value`` (NaN for one pair), ``test`` (``"wilcoxon"``, ``"bootstrap"`` or
        ``"none"``).
    """
    x = np.asarray(a, np.float64).ravel()
    y = np.asarray(b, np.float64).ravel()
    if x.shape != y.shape:
        raise OptionError(f"paired samples must have the same length, got {x.size} and {y.size}")
    if x.size == 0:
        raise OptionError("no pairs to compare")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise OptionError("paired samples must be finite")
    if not 0 < float(alpha) < 1:
        raise OptionError(f"alpha must be in (0, 1), got {alpha}")
    if int(n_boot) < 1:
        raise OptionError(f"n_boot must be >= 1, got {n_boot}")
    d = x - y
    n = d.size
    out = {"n": int(n), "median_difference": float(np.median(d)), "ci_low": float("nan"),
           "ci_high": float("nan"), "p_value": float("nan"), "test": "none"}
    if n == 1:
        return out
    meds = _bootstrap_medians(d, int(n_boot), seed)
    lo, hi = np.percentile(meds, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    out["ci_low"], out["ci_high"] = float(lo), float(hi)
    if n >= int(min_wilcoxon):
        out["test"] = "wilcoxon"
        if not np.any(d != 0):
            out["p_value"] = 1.0
        else:
            from scipy.stats import wilcoxon

            out["p_value"] = float(wilcoxon(d, zero_method="wilcox", alternative="two-sided").pvalue)
    else:
        out["test"] = "bootstrap"
        if not np.any(d != 0):
            out["p_value"] = 1.0
        else:
            below = float(np.mean(meds <= 0))
            above = float(np.mean(meds >= 0))
            out["p_value"] = float(min(1.0, max(2 * min(below, above), 1.0 / (n_boot + 1))))
    return out


def choose_best(scores) -> int:
    """Index of the best variant: the one whose worst median paired difference is highest.

    ``best = argmax_v min_{w != v} median(s_v - s_w)`` (maximin over the pairwise median
    differences; ties go to the higher median score, then the first). A variant that
    leads or equals every other in pairs (all its median paired differences >= 0) is
    always chosen. Paired medians need not be transitive (A ahead of B, B of C, C of A);
    then the variant that trails its strongest rival least is chosen.

    Parameters
    ----------
    scores : array_like, shape (n_variants, n_slices)
    """
    s = np.asarray(scores, np.float64)
    nv = s.shape[0]
    if nv == 1:
        return 0
    worst = np.array([min(float(np.median(s[v] - s[w])) for w in range(nv) if w != v) for v in range(nv)])
    med = np.median(s, axis=1)
    cands = np.flatnonzero(worst == worst.max())
    return int(cands[np.argmax(med[cands])])


def rank_variants(scores, uncertainties=None, *, alpha: float = ALPHA, k: float = 1.0,
                  min_wilcoxon: int = MIN_WILCOXON, n_boot: int = N_BOOTSTRAP, seed=0) -> dict:
    """Rank variants of the same slices by their median paired difference to the best.

    Parameters
    ----------
    scores : array_like, shape (n_variants, n_slices)
        Finite slice scores, slice ``j`` of every variant showing the same slice.
    uncertainties : array_like, shape (n_variants, n_slices), optional
        Standard uncertainties of the slice scores (NaN or None: 0).
    alpha : float
        Significance level of the paired test (tie rule 2).
    k : float
        Coverage factor of tie rule 1 (``|median d| <= k u_d``).
    min_wilcoxon, n_boot, seed
        As :func:`paired_difference`.

    Returns
    -------
    dict of ndarrays (one entry per variant unless said)
        ``best`` (int), ``order`` (variant indices, best first), ``rank`` (1 = best),
        ``median_score``, ``score_uncertainty`` (:func:`median_uncertainty` of the slice
        uncertainties: that of the median score), ``median_difference`` (to the best; 0
        for it), ``ci_low``, ``ci_high``, ``difference_uncertainty`` (``u_d``),
        ``p_value`` (NaN for the best), ``test`` (str), ``wins`` (:func:`slice_wins`),
        ``tied_with_best`` (bool; True for the best itself) and ``n_slices`` (int).
    """
    s = np.asarray(scores, np.float64)
    if s.ndim != 2 or s.shape[0] < 1 or s.shape[1] < 1:
        raise OptionError(f"scores must be (variants, slices) with at least one of each, got shape {s.shape}")
    if not np.isfinite(s).all():
        raise OptionError("scores must be finite (drop slices that were not scored in every variant)")
    nv, n = s.shape
    u = np.zeros_like(s) if uncertainties is None else np.asarray(uncertainties, np.float64)
    if u.shape != s.shape:
        raise OptionError(f"uncertainties {u.shape} do not match scores {s.shape}")
    u = np.where(np.isfinite(u), u, 0.0)
    best = choose_best(s)
    med_d = np.zeros(nv)
    lo, hi, p = np.full(nv, np.nan), np.full(nv, np.nan), np.full(nv, np.nan)
    u_d = np.zeros(nv)
    tests = np.array(["best"] * nv, dtype=object)
    tied = np.zeros(nv, bool)
    rng = np.random.default_rng(seed)
    for v in range(nv):
        if v == best:
            tied[v] = True
            lo[v] = hi[v] = 0.0
            continue
        r = paired_difference(s[v], s[best], alpha=alpha, min_wilcoxon=min_wilcoxon, n_boot=n_boot, seed=rng)
        med_d[v], lo[v], hi[v], p[v], tests[v] = (r["median_difference"], r["ci_low"], r["ci_high"],
                                                  r["p_value"], r["test"])
        u_d[v] = median_uncertainty(np.sqrt(u[v] ** 2 + u[best] ** 2))
        within = abs(med_d[v]) <= k * u_d[v]
        not_significant = bool(np.isfinite(p[v]) and p[v] > alpha)
        tied[v] = bool(within or not_significant)
    median_score = np.median(s, axis=1)
    others = sorted((v for v in range(nv) if v != best), key=lambda v: (-med_d[v], -median_score[v], v))
    order = np.array([best, *others], dtype=np.int64)
    rank = np.empty(nv, np.int64)
    rank[order] = np.arange(1, nv + 1)
    return {
        "best": best,
        "order": order,
        "rank": rank,
        "median_score": median_score,
        "score_uncertainty": np.array([median_uncertainty(u[v]) for v in range(nv)]),
        "median_difference": med_d,
        "ci_low": lo,
        "ci_high": hi,
        "difference_uncertainty": u_d,
        "p_value": p,
        "test": tests.astype(str),
        "wins": slice_wins(s),
        "tied_with_best": tied,
        "n_slices": int(n),
    }
