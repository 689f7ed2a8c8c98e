"""How far an input is from the model's experience: the out-of-distribution tests of a score.

A network trained on phantoms and a few real reconstructions still outputs a number for a
natural photograph, a page of text or pure noise; that number means nothing. Two tests say
when an input is unlike what the model was trained on:

(a) **raw score range**: the network's raw slice score (before the calibration map and the
    clipping to 1-5) falls outside the range it gave its training data (the model card's
    ``trust.raw_score_range``, else ``score_calibration.range``);
(b) **feature distance**: the pooled backbone features of the slice's patches (the
    ``pool`` layer, 1280 values for EfficientNet-B0) lie far from the features of
    in-distribution slices. The distance is measured in the space of the leading principal
    components of those features, whitened, plus the residual outside that space:

        m = sqrt(mean_k (z_k / sigma_k)^2),  r = ||x - mean - sum_k z_k c_k|| / rho
        d = sqrt((m^2 + r^2) / 2)

    with ``z_k`` the projections on the components ``c_k``, ``sigma_k`` their standard
    deviations and ``rho`` the root-mean-square residual norm of the fitted features, so
    that ``d`` is about 1 for a typical in-distribution patch (a Mahalanobis distance in
    the whitened principal subspace, per component, with the residual as one more term).
    A slice's distance is the median over its scored patches (and test-time views), and
    the slice is out of distribution when it exceeds ``threshold``: the ``quantile``
    (0.99) of the slice distances of *held-out* in-distribution slices, never seen by the
    fit.

(c) **domain classifier**: tests (a) and (b) miss natural photographs (the network was
    fine-tuned on crops of some, and their features are as close to the training features
    as a real reconstruction's). A logistic regression of the same pooled features, trained
    with in-distribution slices and their 8-bit PNG/JPEG exports against photographs,
    rendered text and flat cartoons, gives each patch a probability of *not* being
    tomography; the slice is out of distribution when the mean over its patches exceeds
    ``threshold`` (set so that essentially no in-distribution slice, each predicted by a
    classifier fitted without its source, is flagged). :class:`DomainClassifier`, the card's
    ``trust.domain``.

:func:`fit_feature_distance` fits (b) from features; :class:`FeatureDistance` tests it;
:func:`fit_domain_classifier` and :class:`DomainClassifier` do the same for (c);
``scripts/fit_trust.py`` measures both on generated phantoms and real reconstructions and
writes them into the model card under ``trust``. :meth:`tomoqc.models.tiqa.TiqaModel.score_slices`
sets ``FLAG_OOD`` and inflates the score uncertainty of a slice that fails any test.

References
----------
.. [1] K. Lee, K. Lee, H. Lee and J. Shin, "A simple unified framework for detecting
   out-of-distribution samples and adversarial attacks", NeurIPS 2018, arXiv:1807.03888
   (Mahalanobis distance of network features).
"""

from __future__ import annotations

import base64

import numpy as np

from tomoqc.errors import InputError, OptionError

__all__ = ["FeatureDistance", "fit_feature_distance", "DomainClassifier", "fit_domain_classifier",
           "raw_range_from_card", "CARD_KEY"]

#: The model card entry that holds the statistics.
CARD_KEY = "trust"


def _encode(a, dtype) -> str:
    return base64.b64encode(np.ascontiguousarray(a, dtype=np.dtype(dtype).newbyteorder("<")).tobytes()).decode()


def _decode(text: str, dtype, shape) -> np.ndarray:
    a = np.frombuffer(base64.b64decode(text), dtype=np.dtype(dtype).newbyteorder("<"))
    return a.astype(np.float32).reshape(shape)



def _feature_rows(features, dim: int, owner: str) -> np.ndarray:
    """Features as float32 rows of width ``dim`` (one row may come 1-D), or one error line
    ending in ``owner`` and ``dim`` (e.g. "the statistics have 1280")."""
    x = np.asarray(features, np.float32)
    if x.ndim == 1:
        x = x[None]
    if x.shape[-1] != dim:
        raise InputError(None, f"features of width {x.shape[-1]}, {owner} {dim}")
    return x

class FeatureDistance:
    """The distance of pooled network features from an in-distribution set (test (b)).

    Parameters
    ----------
    mean : array (D,)
    components : array (K, D)
        Orthonormal principal directions of the in-distribution features.
    scales : array (K,)
        Standard deviation of the features along each direction.
    residual_scale : float
        Root-mean-square norm of the fitted features' residual outside the K directions.
    threshold : float
        Slice distance above which a slice is out of distribution.
    """

    def __init__(self, mean, components, scales, residual_scale, threshold, *, quantile=None, n=None):
        self.mean = np.asarray(mean, np.float32)
        self.components = np.asarray(components, np.float32)
        self.scales = np.maximum(np.asarray(scales, np.float32), 1e-6)
        self.residual_scale = max(float(residual_scale), 1e-6)
        self.threshold = float(threshold)
        self.quantile = quantile
        self.n = n
        if self.components.ndim != 2 or self.components.shape[1] != self.mean.shape[0]:
            raise InputError(None, "feature statistics: components and mean do not agree")

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    def distance(self, features) -> np.ndarray:
        """Per-row distance ``d`` (about 1 for typical in-distribution features)."""
        x = _feature_rows(features, self.dim, "the statistics have")
        c = x - self.mean
        z = c @ self.components.T
        m2 = np.mean((z / self.scales) ** 2, axis=1)
        r = c - z @ self.components
        r2 = np.sum(r * r, axis=1) / self.residual_scale**2
        return np.sqrt(0.5 * (m2 + r2)).astype(np.float32)

    def slice_distance(self, features) -> float:
        """The median distance of one slice's patch features (NaN without any)."""
        x = np.asarray(features, np.float32)
        if x.size == 0:
            return float("nan")
        return float(np.median(self.distance(x)))

    # -- the model card ------------------------------------------------------
    def to_card(self) -> dict:
        return {
            "kind": "pca-whitened feature distance",
            "layer": "pool",
            "dim": self.dim,
            "n_components": int(self.components.shape[0]),
            "mean": _encode(self.mean, np.float32),
            "components": _encode(self.components, np.float16),
            "scales": [float(v) for v in self.scales],
            "residual_scale": self.residual_scale,
            "threshold": self.threshold,
            "quantile": self.quantile,
            "n": self.n,
            "encoding": "base64 little-endian: mean float32 (dim,), components float16 (n_components, dim)",
        }

    @classmethod
    def from_card(cls, entry) -> "FeatureDistance | None":
        """The statistics of a card's ``trust.features`` entry, or None when absent or unreadable."""
        if not isinstance(entry, dict):
            return None
        try:
            dim, k = int(entry["dim"]), int(entry["n_components"])
            return cls(
                _decode(entry["mean"], np.float32, (dim,)),
                _decode(entry["components"], np.float16, (k, dim)),
                np.asarray(entry["scales"], np.float32),
                float(entry["residual_scale"]),
                float(entry["threshold"]),
                quantile=entry.get("quantile"),
                n=entry.get("n"),
            )
        except (KeyError, TypeError, ValueError, InputError):
            return None


def fit_feature_distance(
    features,
    groups,
    *,
    n_components: int = 64,
    quantile: float = 0.99,
    holdout: float = 0.3,
    seed: int = 0,
) -> tuple[FeatureDistance, dict]:
    """Fit test (b) on the pooled features of in-distribution patches.

    Parameters
    ----------
    features : array (n, D)
        One row per scored patch (and view).
    groups : array (n,)
        The slice each row belongs to. Slices, not rows, are split into fit and held-out
        sets, and a slice's distance is the median over its rows, as at inference.
    n_components : int
        Principal directions kept (64: a 4 k-value card entry plus 64 x 1280 float16).
    quantile : float
        Quantile of the held-out slice distances taken as the threshold.
    holdout : float
        Share of slices held out of the fit to set the threshold.
    seed : int
        Seed of the split.

    Returns
    -------
    FeatureDistance, dict
        The statistics, and a summary (``n_fit``, ``n_holdout`` slices, held-out distance
        quantiles).
    """
    x = np.asarray(features, np.float64)
    g = np.asarray(groups)
    if x.ndim != 2 or len(g) != len(x):
        raise OptionError("features must be (n, D) with one group per row")
    if not 0.0 < quantile < 1.0 or not 0.0 < holdout < 1.0:
        raise OptionError("quantile and holdout must be in (0, 1)")
    ids = np.unique(g)
    rng = np.random.default_rng(seed)
    ids = rng.permutation(ids)
    n_hold = max(1, int(round(holdout * len(ids))))
    hold_ids = set(ids[:n_hold].tolist())
    hold = np.array([v in hold_ids for v in g])
    fit = x[~hold]
    k = int(min(n_components, fit.shape[0] - 1, fit.shape[1]))
    if k < 2:
        raise InputError(None, f"need more in-distribution patches to fit {n_components} components, got {len(fit)}")
    mean = fit.mean(axis=0)
    c = fit - mean
    _, sv, vt = np.linalg.svd(c, full_matrices=False)
    comps = vt[:k]
    scales = sv[:k] / np.sqrt(max(1, len(fit) - 1))
    z = c @ comps.T
    res = c - z @ comps
    rho = float(np.sqrt(np.mean(np.sum(res * res, axis=1))))
    fd = FeatureDistance(mean, comps, scales, rho, np.inf, quantile=quantile, n=int(len(ids)))
    d_rows = fd.distance(x[hold])
    gh = g[hold]
    d_slices = np.array([np.median(d_rows[gh == v]) for v in np.unique(gh)])
    thr = float(np.quantile(d_slices, quantile))
    fd.threshold = thr
    summary = {
        "n_fit_slices": int(len(ids) - n_hold),
        "n_holdout_slices": int(n_hold),
        "n_fit_rows": int(len(fit)),
        "holdout_distance_quantiles": {str(q): round(float(np.quantile(d_slices, q)), 4)
                                       for q in (0.5, 0.9, 0.99, 1.0)},
    }
    return fd, summary


def raw_range_from_card(card) -> tuple[float, float] | None:
    """The raw-score range of test (a): ``trust.raw_score_range``, else ``score_calibration.range``."""
    if not isinstance(card, dict):
        return None
    for entry, key in ((card.get(CARD_KEY), "raw_score_range"), (card.get("score_calibration"), "range")):
        if isinstance(entry, dict):
            r = entry.get(key)
            if isinstance(r, (list, tuple)) and len(r) == 2:
                try:
                    lo, hi = float(r[0]), float(r[1])
                except (TypeError, ValueError):
                    continue
                if np.isfinite(lo) and np.isfinite(hi) and hi > lo:
                    return lo, hi
    return None


# ----------------------------------------------------------------------------- test (c)


def _sigmoid(t):
    t = np.clip(np.asarray(t, np.float64), -60.0, 60.0)
    return 1.0 / (1.0 + np.exp(-t))


class DomainClassifier:
    """Test (c): is a slice's content tomography at all? A linear classifier of the pooled
    features of a slice's patches.

    Tests (a) and (b) miss natural photographs: the network was fine-tuned on crops of some
    of them and their features lie as close to the training features as a real
    reconstruction's. A logistic regression trained with in-distribution slices (phantoms,
    real reconstructions, and their 8-bit PNG/JPEG exports) as one class and natural
    photographs, rendered text and flat cartoons as the other gives each patch a
    probability ``p`` of *not* being tomography,

        p = 1 / (1 + exp(-(w . x + b)))

    (``x`` the patch's pooled features; the standardisation of the fit is folded into ``w``
    and ``b``). A slice's probability is the mean over its patches, and the slice is out of
    distribution when it exceeds ``threshold``, set on out-of-fold in-distribution slices
    (each predicted by a classifier fitted without its source) so that essentially none of
    them is flagged.

    Parameters
    ----------
    weights : array (D,)
    bias : float
    threshold : float
        Slice probability above which a slice is out of distribution.
    """

    def __init__(self, weights, bias, threshold, *, info=None):
        self.weights = np.asarray(weights, np.float32).reshape(-1)
        self.bias = float(bias)
        self.threshold = float(threshold)
        self.info = dict(info or {})
        if not np.all(np.isfinite(self.weights)) or not np.isfinite(self.bias):
            raise InputError(None, "domain classifier: weights are not finite")

    @property
    def dim(self) -> int:
        return int(self.weights.shape[0])

    def patch_probability(self, features) -> np.ndarray:
        """Per-row probability of *not* being tomography."""
        x = _feature_rows(features, self.dim, "the classifier has")
        return _sigmoid(x.astype(np.float64) @ self.weights.astype(np.float64) + self.bias).astype(np.float32)

    def slice_probability(self, features) -> float:
        """The mean patch probability of one slice's patch features (NaN without any)."""
        x = np.asarray(features, np.float32)
        if x.size == 0:
            return float("nan")
        return float(np.mean(self.patch_probability(x)))

    def is_out(self, features) -> bool:
        p = self.slice_probability(features)
        return bool(np.isfinite(p) and p > self.threshold)

    # -- the model card ------------------------------------------------------
    def to_card(self) -> dict:
        return {
            "kind": "logistic regression of pooled features: probability of not tomography",
            "layer": "pool",
            "dim": self.dim,
            "weights": _encode(self.weights, np.float32),
            "bias": self.bias,
            "threshold": self.threshold,
            "encoding": "base64 little-endian float32 (dim,); p = sigmoid(features . weights + bias), "
                        "slice probability = mean over patches",
            **({"fit": self.info} if self.info else {}),
        }

    @classmethod
    def from_card(cls, entry) -> "DomainClassifier | None":
        """The classifier of a card's ``trust.domain`` entry, or None when absent or unreadable."""
        if not isinstance(entry, dict):
            return None
        try:
            dim = int(entry["dim"])
            return cls(_decode(entry["weights"], np.float32, (dim,)), float(entry["bias"]),
                       float(entry["threshold"]), info=entry.get("fit"))
        except (KeyError, TypeError, ValueError, InputError):
            return None


def _logistic_fit(x, y, w_row, l2):
    """Weighted L2-regularised logistic regression (L-BFGS) on standardised rows; returns (w, b)."""
    from scipy.optimize import minimize

    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    w_row = np.asarray(w_row, np.float64)
    w_row = w_row / w_row.sum()

    def f(theta):
        w, b = theta[:-1], theta[-1]
        t = x @ w + b
        # log(1 + exp(-t)) for y = 1, log(1 + exp(t)) for y = 0
        loss = np.sum(w_row * (np.logaddexp(0.0, t) - y * t)) + 0.5 * l2 * np.dot(w, w)
        g_t = w_row * (_sigmoid(t) - y)
        return loss, np.concatenate([x.T @ g_t + l2 * w, [g_t.sum()]])

    res = minimize(f, np.zeros(x.shape[1] + 1), jac=True, method="L-BFGS-B", options={"maxiter": 500})
    return res.x[:-1], float(res.x[-1])


def _fit_standardised(x, y, groups, l2):
    """Fit on rows standardised by their own mean and spread; each slice (group) weighs the
    same within its class, and the two classes the same in all. Returns (weights, bias) for
    unstandardised features."""
    mu = x.mean(axis=0)
    sd = x.std(axis=0) + 1e-3 * (x.std() + 1e-12)
    xs = (x - mu) / sd
    _, inv, cnt = np.unique(groups, return_inverse=True, return_counts=True)
    w_row = 1.0 / cnt[inv]
    for c in (0, 1):
        m = y == c
        w_row[m] /= w_row[m].sum()
    w, b = _logistic_fit(xs, y, w_row, l2)
    return w / sd, b - float(np.dot(mu / sd, w))


def fit_domain_classifier(
    features,
    labels,
    groups,
    sources,
    *,
    l2: float = 1e-2,
    max_flagged: float = 0.01,
    margin: float = 0.05,
    min_threshold: float = 0.5,
) -> tuple[DomainClassifier, dict]:
    """Fit test (c): a logistic regression of pooled patch features, tomography vs not.

    Parameters
    ----------
    features : array (n, D)
        One row per scored patch.
    labels : array (n,)
        1 for a patch of something that is *not* tomography (a photograph, text...), 0 for
        an in-distribution slice.
    groups : array (n,)
        The slice each row belongs to (a slice's probability is the mean over its rows).
    sources : array (n,)
        The source of each row's slice (e.g. ``qim3d``, ``phantom``, ``photo/chelsea``):
        the threshold is set on *out-of-fold* probabilities, each in-distribution slice
        predicted by a classifier fitted without any slice of its source, so that it says
        how a reconstruction of a kind never seen is judged.
    l2 : float
        Ridge penalty on the standardised weights.
    max_flagged : float
        Share of out-of-fold in-distribution slices allowed above the threshold.
    margin : float
        Added to that quantile of the out-of-fold probabilities.
    min_threshold : float
        The threshold is at least this.

    Returns
    -------
    DomainClassifier, dict
        The classifier fitted on all rows, and a summary (out-of-fold probabilities of the
        in-distribution and negative slices, per source).
    """
    x = np.asarray(features, np.float64)
    y = np.asarray(labels).astype(np.float64)
    g = np.asarray(groups)
    s = np.asarray(sources).astype(str)
    if x.ndim != 2 or not len(x) == len(y) == len(g) == len(s):
        raise OptionError("features must be (n, D) with one label, group and source per row")
    if not (y == 0).any() or not (y == 1).any():
        raise InputError(None, "the domain classifier needs rows of both classes")
    # out-of-fold slice probabilities: leave one source out
    oof = {}
    for src in np.unique(s):
        hold = s == src
        if (y[~hold] == 0).sum() == 0 or (y[~hold] == 1).sum() == 0:
            continue
        w, b = _fit_standardised(x[~hold], y[~hold], g[~hold], l2)
        p = _sigmoid(x[hold] @ w + b)
        gh = g[hold]
        for v in np.unique(gh):
            m = gh == v
            oof[v] = (str(src), int(y[hold][m][0]), float(p[m].mean()))
    pos = np.array([p for _, lab, p in oof.values() if lab == 0])
    neg = np.array([p for _, lab, p in oof.values() if lab == 1])
    q = float(np.quantile(pos, 1.0 - max_flagged)) if len(pos) else 0.0
    thr = float(min(0.99, max(min_threshold, q + margin)))
    w, b = _fit_standardised(x, y, g, l2)
    by_source = {}
    for src, lab, p in oof.values():
        by_source.setdefault(src, []).append(p)
    summary = {
        "n_slices": {"tomography": int(len(np.unique(g[y == 0]))), "not_tomography": int(len(np.unique(g[y == 1])))},
        "n_rows": int(len(x)),
        "l2": l2,
        "threshold_rule": f"max({min_threshold}, {1 - max_flagged:g} quantile of out-of-fold tomography slices + {margin})",
        "oof_tomography_quantiles": {str(qq): round(float(np.quantile(pos, qq)), 4) for qq in (0.5, 0.9, 0.99, 1.0)}
        if len(pos) else {},
        "oof_tomography_flagged": float(np.mean(pos > thr)) if len(pos) else None,
        "oof_not_tomography_detected": float(np.mean(neg > thr)) if len(neg) else None,
        "oof_by_source": {k: [round(float(min(v)), 3), round(float(np.median(v)), 3), round(float(max(v)), 3)]
                          for k, v in sorted(by_source.items())},
    }
    return DomainClassifier(w.astype(np.float32), b, thr, info={
        k: summary[k] for k in ("n_slices", "n_rows", "l2", "threshold_rule", "oof_tomography_quantiles",
                                "oof_tomography_flagged", "oof_not_tomography_detected")}), summary
