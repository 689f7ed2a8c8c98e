"""Measured terms: physical indicators of a slice that bound the network's score.

A network learns what its training images show; on real scans its features can miss what a
physicist measures directly (NOTES.md: on real reconstructions the bare network orders dose
and angle series below chance). The slice score therefore combines the network's calibrated
score ``s`` (1-5) with seven measured indicators ``x_k`` of the whole slice:

* ``noise`` - :func:`tomoqc.metrics.nr.noise_index`, noise in units of the slice's contrast;
* ``blur`` - :func:`tomoqc.metrics.nr.blur_index`, the Gaussian width (px) of the slice's
  strongest step edges, noise and finer structure left out;
* ``ring`` - :func:`tomoqc.metrics.rings.ring_index`, coherent concentric structure about the
  (automatically found) rotation axis;
* ``streak`` - :func:`tomoqc.metrics.nr.streak_index`, the spokes that too few projections
  leave in the power spectrum;
* ``axis`` - :func:`tomoqc.metrics.axis.axis_error`, the rotation-axis error in pixels that
  refocusing the slice finds (measured once per volume: the axis is one for the scan);
* ``wedge`` - :func:`tomoqc.metrics.nr.missing_wedge`, the degrees of the half turn whose
  directions are missing from the spectrum (limited-angle data);
* ``spacing`` - :func:`tomoqc.metrics.nr.view_spacing`, the degrees between the directions of
  a sparse scan whose spokes the spectrum shows apart (0 when it shows none).

The combination works on the logit of the score's position in [1, 5]::

    z     = logit((s - 1) / 4) - sum_k c_k * log((t_k**p_k + x_k**p_k) / (2 t_k**p_k))
    score = 1 + 4 / (1 + exp(-z))

with ``c_k > 0`` and ``t_k > 0`` the typical value of indicator ``k`` on clean slices, so that a
slice whose indicators sit at their clean level keeps the network's score. The power ``p_k``
says how the indicator adds to the clean level: the noise and ring indices are RMS amplitudes
and the blur index a Gaussian width, and independent amplitudes add in power, widths in
quadrature, so theirs is 2 (a noise or ring far below the typical level hardly moves the
score, one far above it counts with twice the slope); the streak index, a spread in excess
of what chance gives, adds as it is (``p = 1``). Cards without powers use 1 for all. The
score falls *strictly* as any of these indicators rises, at every positive value (there is no
threshold below which an indicator does nothing, and no clipping plateau: the logistic
keeps the score inside (1, 5) smoothly). The weights ``c_k`` are fitted (:func:`fit_measured_terms`) so that within series
of the same slice at rising impairment the score falls, on phantoms and on real slices that
were re-projected and scanned again; the fit is recorded in the model card.

An *onset* indicator (``wedge``, ``spacing``) reads exactly 0 on complete data, so it has no
typical clean level: its ``t_k`` is the reading below which it does not count and its term is
``c_k log(1 + max(x_k - t_k, 0) / t_k)``, 0 up to there. Their weights are fitted on series of
their own (:mod:`tomoqc.train.onset_terms`): the series of :func:`fit_measured_terms` hold no
limited-angle data, and none sparser than the angle levels the streak index still follows.

An onset indicator can *hold* absolute indicators it is known to confound: where its reading
is above its onset, each held indicator counts at most its typical value ``t_j`` (readings
above :data:`HOLD_LIMIT` times ``t_j`` still count in full, an impairment the confounder does
not make). The view spacing holds the blur index: the streak fans of a sparse scan lie
tangent to every strong edge and widen its measured profile (HTC2022 discs at 12 degrees
between views read 2.0-2.3 px against 0.76 complete, with the detector unchanged), which
scored 30 views below 20 on every disc. The rule lives in the card (``holds``), written by
the onset term's fit (:mod:`tomoqc.train.onset_terms`).

Each indicator also gives the *severity* of its impairment,
``clip(u_k + v_k * log(x_k), 0, 1)`` (``v_k > 0``), a straight line in ``log(x)`` fitted to
level / 5 of generated series; these replace the network head's severities.
"""

from __future__ import annotations

import math

import numpy as np

from tomoqc.errors import OptionError

__all__ = ["INDICATORS", "ONSET", "HOLD_LIMIT", "MeasuredTerms", "absolute_feature", "measure_indicators", "fit_measured_terms", "fit_severity_line", "LabelFit", "fit_to_labels"]

#: Indicators measured on every slice, in the order of the arrays below.
INDICATORS = ("noise", "blur", "ring", "streak", "axis", "wedge", "spacing")
#: Indicators that read 0 on unimpaired data and count from an onset (module doc).
ONSET = ("wedge", "spacing")
_EPS = 1e-4
#: A held indicator whose reading exceeds this multiple of its typical value counts in full
#: (module doc): sparse-view streaks raised the blur index to at most 2.3 px (2.7 times its
#: typical 0.87) on the real HTC2022 discs and to 1.9 px on the study's phantoms, while a
#: blur the streaks do not make reads far above (a 33 px blur reads 50, the cap).
HOLD_LIMIT = 4.0


def measure_indicators(img, *, ring_center=None, ring_settings=None, axis=None, low_quantile_noise: bool = False) -> dict:
    """The seven indicators of one slice (any dtype and scale).

    The slice is mapped by the robust affine map of
    :func:`tomoqc.preprocess.normalize_slice` but *not clipped* (clipping the tails of a noisy
    slice hides part of its noise); noise, blur and streak indices do not depend on that map,
    and the ring index is then in units of the slice's robust range. ``ring_center`` is the
    rotation axis ``(row, col)`` for the ring index (None: the slice centre; see
    :func:`tomoqc.metrics.rings.resolve_ring_center` for finding it). ``axis`` is the
    volume's axis error (px) when measured elsewhere (None: measured on this slice; NaN:
    not measured). Returns ``{"noise", "blur", "ring", "streak", "axis", "wedge", "spacing"}`` (NaN where
    a measure is undefined, e.g. for a constant slice); with ``low_quantile_noise`` also
    ``"noise_low_quantiles"``, the noise index read through the low quantiles of the same
    bands (:data:`tomoqc.metrics.nr.NOISE_ESTIMATORS`; one sample mask and contrast for both).
    """
    from tomoqc.metrics.axis import axis_error
    from tomoqc.metrics.nr import blur_index, missing_wedge, noise_indices, streak_index, view_spacing
    from tomoqc.metrics.rings import ring_index
    from tomoqc.preprocess import normalize_slice_flagged

    settings = dict(ring_settings or {})
    a, constant = normalize_slice_flagged(np.asarray(img), clip=False)
    extra = ("noise_low_quantiles",) if low_quantile_noise else ()
    if constant:
        return {k: float("nan") for k in (*INDICATORS, *extra)}
    noise = noise_indices(a, estimators=("median", "low_quantiles") if low_quantile_noise else ("median",))
    return {
        **({"noise_low_quantiles": float(noise["low_quantiles"])} if low_quantile_noise else {}),
        "noise": float(noise["median"]),
        "blur": float(blur_index(a)),
        "ring": float(ring_index(a, center=ring_center, normalize=False, **settings)),
        "streak": float(streak_index(a)),
        "axis": float(axis_error(a).px) if axis is None else float(axis),
        # on the slice as given, in float64: the wedge reading is affine-invariant, and the
        # float32 rounding of the normalised copy would fill the band of a noise-free,
        # strongly blurred slice with anisotropic rounding
        "wedge": float(missing_wedge(img)),
        "spacing": float(view_spacing(img)),
    }


def absolute_feature(x, t: float, p: float = 1.0) -> np.ndarray:
    """``log((t**p + x**p) / (2 t**p))`` for ``x >= 0``: 0 at the typical value ``t``, strictly rising.

    Computed as ``log((1 + (x / t)**p) / 2)`` so that small ``t`` does not underflow.
    """
    r = np.asarray(x, np.float64) / float(t)
    return np.log1p(r ** float(p)) - math.log(2.0)


def _logit_score(score):
    q = (np.asarray(score, np.float64) - 1.0) / 4.0
    q = np.clip(q, 1e-3, 1.0 - 1e-3)
    return np.log(q / (1.0 - q))


def _score_of_logit(z):
    """``1 + 4 sigmoid(z)``: the score on the 1-5 scale whose :func:`_logit_score` is ``z``."""
    return 1.0 + 4.0 / (1.0 + np.exp(-z))


class MeasuredTerms:
    """The combination of the network's score with measured indicators (module doc).

    Parameters
    ----------
    weights : dict
        ``{indicator: c_k}``, each > 0.
    typical : dict
        ``{indicator: t_k}``, each > 0: the indicator's value on clean slices.
    severity : dict, optional
        ``{indicator: (u_k, v_k)}`` severity lines, ``v_k > 0``.
    ring_settings : dict, optional
        Options for :func:`tomoqc.metrics.rings.ring_index` (sectors, window, min_radius).
    info : dict, optional
        What the fit recorded (kept in the card).
    power : dict, optional
        ``{indicator: p_k}``, each >= 1 (module doc); 1 where absent.
    relative : iterable of str, optional
        Indicators that are only compared between reconstructions of one scan (``axis``:
        the refocusing estimate reads a content-dependent error on some samples, the same
        for every reconstruction of them, so it orders variants of one scan but must not
        lower the absolute score of a sample). Their terms enter only when asked
        (``relative=True``).
    onset : iterable of str, optional
        Absolute indicators with the onset form (module doc; :data:`ONSET`).
    holds : dict, optional
        ``{onset indicator: [absolute indicators]}``: the indicators each onset reading
        confounds, held at their typical value where it reads above its onset (module doc).
    """

    def __init__(self, weights: dict, typical: dict, *, severity: dict | None = None,
                 ring_settings: dict | None = None, info: dict | None = None, relative=(), power=None, onset=(),
                 holds=None):
        for k in list(weights) + list(typical):
            if k not in INDICATORS:
                raise OptionError(f"unknown indicator {k!r}; choose from {', '.join(INDICATORS)}")
        self.weights = {k: float(weights.get(k, 0.0)) for k in INDICATORS}
        self.typical = {k: float(typical.get(k, 1.0)) for k in INDICATORS}
        for k in INDICATORS:
            if not self.weights[k] >= 0 or not math.isfinite(self.weights[k]):
                raise OptionError(f"weight of {k} must be >= 0, got {self.weights[k]}")
            if not self.typical[k] > 0:
                raise OptionError(f"typical value of {k} must be > 0, got {self.typical[k]}")
        self.power = {k: 1.0 for k in INDICATORS}
        for k, v in (power or {}).items():
            if k not in INDICATORS:
                raise OptionError(f"unknown indicator {k!r} in power")
            if not (math.isfinite(float(v)) and float(v) >= 1.0):
                raise OptionError(f"power of {k} must be >= 1, got {v}")
            self.power[k] = float(v)
        self.severity_lines = {}
        for k, uv in (severity or {}).items():
            u, v = (float(x) for x in uv)
            if not v > 0:
                raise OptionError(f"severity slope of {k} must be > 0, got {v}")
            self.severity_lines[k] = (u, v)
        self.ring_settings = dict(ring_settings or {})
        self.info = dict(info or {})
        self.relative = tuple(k for k in INDICATORS if k in set(relative or ()))
        for k in relative or ():
            if k not in INDICATORS:
                raise OptionError(f"unknown relative indicator {k!r}")
        for k in onset or ():
            if k not in INDICATORS or k in self.relative:
                raise OptionError(f"onset indicator {k!r} must be a known absolute indicator")
        self.onset = tuple(k for k in INDICATORS if k in set(onset or ()))
        self.holds = {}
        for k, held in (holds or {}).items():
            if k not in self.onset:
                raise OptionError(f"only an onset indicator holds others; {k!r} is not one")
            held = tuple(held)
            for j in held:
                if j not in INDICATORS or j in self.onset or j in self.relative:
                    raise OptionError(f"{k} can hold only absolute indicators, not {j!r}")
            if held:
                self.holds[k] = held

    def with_term(self, name: str, weight: float, typical: float | None = None, *, onset: bool = False,
                  info: dict | None = None, holds=None) -> "MeasuredTerms":
        """A copy with indicator ``name``'s weight (and typical value) replaced, ``name`` made an
        onset indicator when ``onset``, the indicators it holds set to ``holds`` when given,
        and ``info`` added to the recorded fit; the rest as is."""
        new_holds = dict(self.holds)
        if holds is not None:
            new_holds[name] = tuple(holds)
        return MeasuredTerms(
            dict(self.weights, **{name: float(weight)}),
            self.typical if typical is None else dict(self.typical, **{name: float(typical)}),
            severity=self.severity_lines, ring_settings=self.ring_settings, info={**self.info, **(info or {})},
            relative=self.relative, power=self.power, onset=(*self.onset, name) if onset else self.onset,
            holds=new_holds)

    def scaled(self, factor: float, *, info: dict | None = None) -> "MeasuredTerms":
        """A copy whose absolute terms (neither relative nor onset) weigh ``factor`` times as much,
        ``info`` added to the recorded fit; the relative and onset terms, typical values,
        powers, holds and severity lines as they are."""
        factor = float(factor)
        if not (math.isfinite(factor) and factor >= 0):
            raise OptionError(f"scale factor must be a finite number >= 0, got {factor}")
        weights = {k: (w if k in self.relative or k in self.onset else w * factor) for k, w in self.weights.items()}
        return MeasuredTerms(weights, self.typical, severity=self.severity_lines, ring_settings=self.ring_settings,
                             info={**self.info, **(info or {})}, relative=self.relative, power=self.power,
                             onset=self.onset, holds=self.holds)

    def held(self, indicators: dict) -> dict:
        """The indicators as the terms count them: where an onset indicator that holds others
        reads above its onset, each held indicator is at most its typical value (unless it
        reads above :data:`HOLD_LIMIT` times that). A new dict; the arrays given are not changed."""
        out = dict(indicators)
        for k, held in self.holds.items():
            if k not in indicators:
                continue
            on = np.asarray(indicators[k], np.float64) > self.typical[k]  # NaN: not on
            for j in held:
                if j not in out:
                    continue
                t = self.typical[j]
                x = np.asarray(out[j], np.float64)
                hold = on & np.isfinite(x) & (x <= HOLD_LIMIT * t)
                out[j] = np.where(hold, np.minimum(x, t), x)
        return out

    def weighs(self, name: str, *, relative: bool = False) -> bool:
        """True when indicator ``name`` has a weight and enters the score (relative ones only with ``relative``)."""
        return self.weights.get(name, 0.0) > 0 and (relative or name not in self.relative)

    def penalty(self, indicators: dict, *, relative: bool = False) -> np.ndarray:
        """``sum_k c_k log((t_k**p_k + x_k**p_k) / (2 t_k**p_k))`` per slice; NaN or absent indicators count as
        typical; the relative indicators count only with ``relative``; held indicators as :meth:`held` says."""
        total = None
        indicators = self.held(indicators)
        for k in INDICATORS:
            if k not in indicators or (k in self.relative and not relative):
                continue
            term = self.weights[k] * self.feature(k, indicators[k])
            total = term if total is None else total + term
        return np.zeros(1) if total is None else total

    def feature(self, name: str, x) -> np.ndarray:
        """``log((t**p + x**p) / (2 t**p))`` of indicator ``name`` (NaN counts as typical).

        A relative indicator only ever lowers the score: its ``t`` is the estimate's
        resolution, readings up to it count as none (a rotation-axis error the refocusing
        cannot resolve is not told apart from none) and the term is ``log(1 + max(x - t, 0) / t)``,
        0 there, so that with no error the score is the absolute one. An onset indicator
        has the same form and counts in the absolute score."""
        t = self.typical[name]
        x = np.asarray(x, np.float64)
        if name in self.relative or name in self.onset:
            x = np.where(np.isfinite(x), np.maximum(x - t, 0.0), 0.0)
            return np.log1p(x / t)
        x = np.where(np.isfinite(x), np.maximum(x, 0.0), t)
        return absolute_feature(x, t, self.power[name])

    def absolute_design(self, indicators: dict, n: int) -> tuple[list[str], np.ndarray, np.ndarray]:
        """What a refit of the absolute terms works on, for ``n`` slices: their names (neither
        relative nor onset), the ``(n, k)`` matrix of their features (:meth:`feature` of the
        :meth:`held` indicators; absent ones count as typical) and the ``(n,)`` penalty of the
        onset terms as the card has them. The absolute penalty is ``features @ weights``."""
        absolute = [k for k in INDICATORS if k not in self.relative and k not in self.onset]
        held = self.held(indicators)
        nan = np.full(int(n), np.nan)
        features = np.stack([self.feature(k, np.asarray(held.get(k, nan), np.float64)) for k in absolute], axis=1)
        fixed = np.broadcast_to(self.scaled(0.0).penalty(indicators), nan.shape).astype(np.float64)
        return absolute, features, fixed

    def combine(self, score, indicators: dict, *, relative: bool = False) -> np.ndarray:
        """Slice scores from the network's calibrated scores and the indicators (with
        ``relative``, also the terms meant for comparing reconstructions of one scan)."""
        z = _logit_score(score) - self.penalty(indicators, relative=relative)
        return np.where(np.isfinite(np.asarray(score, np.float64)), _score_of_logit(z), np.nan)

    def noise_confound_gap(self, score, indicators: dict, noise_low, *, relative: bool = False) -> np.ndarray:
        """How much higher each slice scores when its noise is read by the low quantiles of the
        Haar bands (``noise_low``; :data:`tomoqc.metrics.nr.NOISE_ESTIMATORS`) instead of
        their median (``indicators["noise"]``); ``score`` is the network's.

        For white noise the two readings agree, and the gap is about 0. Where structure fills
        most of a band's coefficients (sharp particles a few pixels across, strong rings) the
        median reads it as noise and the low quantiles do not: the gap says how much of the
        score's loss hinges on that reading. (The terms were fitted on the median reading,
        which counts strong rings partly as noise, so the gap is a bound on the confound, not
        a corrected score.) NaN where either reading or the score is missing.
        """
        low = np.asarray(noise_low, np.float64)
        median = self.combine(score, indicators, relative=relative)
        lifted = self.combine(score, dict(indicators, noise=np.where(np.isfinite(low), low, 0.0)), relative=relative)
        return np.where(np.isfinite(low) & np.isfinite(median), lifted - median, np.nan)

    def severity(self, name: str, x) -> np.ndarray:
        """Measured severity of ``name`` in [0, 1] (NaN where the indicator is)."""
        u, v = self.severity_lines[name]
        x = np.asarray(x, np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            s = u + v * np.log(np.maximum(x, _EPS))
        return np.where(np.isfinite(x), np.clip(s, 0.0, 1.0), np.nan)

    def to_card(self) -> dict:
        return {
            "weights": self.weights,
            "typical": self.typical,
            "severity": {k: list(v) for k, v in self.severity_lines.items()},
            "ring_settings": self.ring_settings,
            "relative": list(self.relative),
            "onset": list(self.onset),
            "power": self.power,
            **({"holds": {k: list(v) for k, v in self.holds.items()}} if self.holds else {}),
            **self.info,
            "form": {"absolute": "c_k log((t_k^p_k + x_k^p_k) / (2 t_k^p_k))",
                     "relative": "c_k log(1 + max(x_k - t_k, 0) / t_k)",
                     "onset": "c_k log(1 + max(x_k - t_k, 0) / t_k)"},
        }

    @classmethod
    def from_card(cls, card: dict | None):
        """The terms stored in a model card (``card["measured_terms"]``), or None."""
        if not isinstance(card, dict):
            return None
        d = card.get("measured_terms")
        if not isinstance(d, dict):
            return None
        info = {k: v for k, v in d.items()
                if k not in ("weights", "typical", "severity", "ring_settings", "relative", "form", "power", "onset",
                             "holds")}
        return cls(d["weights"], d["typical"], severity=d.get("severity"), ring_settings=d.get("ring_settings"),
                   info=info, relative=d.get("relative", ()), power=d.get("power"), onset=d.get("onset", ()),
                   holds=d.get("holds"))


def fit_severity_line(x, level, *, anchor: float | None = None, max_level: int = 5) -> tuple[float, float]:
    """Least-squares line ``level / max_level ~ u + v log(x)``; returns ``(u, v)``, ``v > 0``.

    With ``anchor`` (an indicator's typical clean value) the line is held to 0 there,
    ``u = -v log(anchor)``, and only the slope is fitted: clean slices then read about 0
    whatever the spread of the series' own first levels.
    """
    x = np.asarray(x, np.float64)
    y = np.asarray(level, np.float64) / float(max_level)
    ok = np.isfinite(x) & np.isfinite(y) & (x > 0)
    if ok.sum() < 3:
        raise OptionError("need at least 3 finite, positive indicator values to fit a severity line")
    lx = np.log(np.maximum(x[ok], _EPS))
    if anchor is not None:
        if not anchor > 0:
            raise OptionError(f"anchor must be > 0, got {anchor}")
        d = lx - math.log(max(float(anchor), _EPS))
        v = float(np.sum(d * y[ok]) / max(np.sum(d * d), 1e-12))
        u = -v * math.log(max(float(anchor), _EPS))
    else:
        v, u = np.polyfit(lx, y[ok], 1)
    if not v > 0:
        raise OptionError(f"the severity does not rise with the indicator (slope {v:.3g})")
    return float(u), float(v)


def fit_measured_terms(score, indicators: dict, pairs, *, typical: dict, weights=None, labels=None,
                       label_weight: float = 1.0, tau: float = 0.25, l2: float = 0.05, init: float = 0.5,
                       steps: int = 3000, lr: float = 0.05, power=None) -> dict:
    """Fit the weights ``c_k`` so that the combined score orders known pairs.

    Parameters
    ----------
    score : array (n,)
        The network's calibrated slice scores.
    indicators : dict of arrays (n,)
        Measured indicators.
    pairs : array (m, 2) of int
        ``(better, worse)`` index pairs whose order is known (same slice, rising impairment).
    typical : dict
        ``t_k`` per indicator.
    power : dict, optional
        ``p_k`` per indicator (1 where absent; :class:`MeasuredTerms`).
    weights : array (m,), optional
        Weight of each pair in the loss (default all 1).
    labels : array (n,), optional
        Quality labels (1-5) of the images that have one (NaN elsewhere): the squared error
        of the combined score against them, times ``label_weight``, joins the loss, so that
        the terms keep the score on the label scale where labels exist.
    tau : float
        Temperature of the pairwise logistic loss, in logit units.
    l2 : float
        Ridge penalty on the weights (keeps them finite when the pairs are separable).

    Returns
    -------
    dict
        ``weights``, ``pair_accuracy`` (after), ``pair_accuracy_network`` (before), ``loss``.
    """
    s = _logit_score(score)
    pairs = np.asarray(pairs, np.intp)
    if pairs.ndim != 2 or pairs.shape[1] != 2 or len(pairs) == 0:
        raise OptionError("pairs must be a non-empty (m, 2) array of (better, worse) indices")
    feats = []
    for k in INDICATORS:
        if k not in indicators:  # not measured: a zero feature, its weight held at 0 by the ridge
            feats.append(np.zeros(len(s)))
            continue
        x = np.asarray(indicators[k], np.float64)
        t = float(typical[k])
        x = np.where(np.isfinite(x), np.maximum(x, 0.0), t)
        feats.append(absolute_feature(x, t, float((power or {}).get(k, 1.0))))
    F = np.stack(feats, axis=1)  # (n, K)
    lab = None if labels is None else np.asarray(labels, np.float64)
    if lab is not None and lab.shape != s.shape:
        raise OptionError("labels must hold one value (or NaN) per image")
    has_lab = np.zeros(len(s), bool) if lab is None else (np.isfinite(lab) & np.isfinite(s))
    pw = np.ones(len(pairs)) if weights is None else np.asarray(weights, np.float64)
    if pw.shape != (len(pairs),) or not np.all(pw >= 0):
        raise OptionError("weights must be one non-negative number per pair")
    ok = np.isfinite(s[pairs]).all(axis=1)
    pairs = pairs[ok]
    pw = pw[ok] / pw[ok].mean()
    ds = s[pairs[:, 0]] - s[pairs[:, 1]]
    dF = F[pairs[:, 0]] - F[pairs[:, 1]]  # z_b - z_w = ds - dF @ c
    # c = softplus(w) keeps every weight positive; plain gradient descent with Adam steps
    w = np.full(len(INDICATORS), math.log(math.expm1(init)))
    m = np.zeros_like(w)
    v = np.zeros_like(w)
    for it in range(1, steps + 1):
        c = np.log1p(np.exp(w))
        margin = (ds - dF @ c) / tau
        p = 1.0 / (1.0 + np.exp(margin))  # d loss / d margin = -p for loss = log(1 + e^-margin)
        grad_c = (pw[:, None] * p[:, None] * dF).mean(axis=0) / tau + 2 * l2 * c
        if has_lab.any():
            z = s[has_lab] - F[has_lab] @ c
            sig = 1.0 / (1.0 + np.exp(-z))
            err = 1.0 + 4.0 * sig - lab[has_lab]
            # d score / d c = -4 sig (1 - sig) F
            grad_c += label_weight * (2 * err * (-4 * sig * (1 - sig)))[:, None].__mul__(F[has_lab]).mean(axis=0)
        g = grad_c * (1.0 / (1.0 + np.exp(-w)))
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        w -= lr * (m / (1 - 0.9**it)) / (np.sqrt(v / (1 - 0.999**it)) + 1e-8)
    c = np.log1p(np.exp(w))
    margin = ds - dF @ c
    rmse = None
    if has_lab.any():
        z = s[has_lab] - F[has_lab] @ c
        rmse = float(np.sqrt(np.mean((_score_of_logit(z) - lab[has_lab]) ** 2)))
    return {
        "label_rmse": rmse,
        "weights": {k: float(c[i]) for i, k in enumerate(INDICATORS)},
        "pair_accuracy": float(np.mean((margin > 0) + 0.5 * (margin == 0))),
        "pair_accuracy_network": float(np.mean((ds > 0) + 0.5 * (ds == 0))),
        "loss": float(np.mean(pw * np.logaddexp(0.0, -margin / tau))),
        "pairs": int(len(pairs)),
    }


class LabelFit:
    """Measured terms refitted to the quality labels of one image set (:func:`fit_to_labels`).

    A slice scores ``1 + 4 sigmoid(z)`` with ``z = offset + slope logit(s) - penalty``: ``s``
    the network's calibrated score as the card's terms combine it, ``penalty`` that of
    :attr:`terms` (the absolute terms' weights refitted; the onset, relative and hold
    settings of the card kept). With ``offset`` 0 and ``slope`` 1 it is
    :meth:`MeasuredTerms.combine`.
    """

    def __init__(self, terms: MeasuredTerms, offset: float, slope: float, *, rmse: float, images: int):
        if not (math.isfinite(offset) and math.isfinite(slope) and slope > 0):
            raise OptionError(f"offset must be finite and slope > 0, got {offset}, {slope}")
        self.terms, self.offset, self.slope = terms, float(offset), float(slope)
        self.rmse, self.images = float(rmse), int(images)

    def combine(self, score, indicators: dict) -> np.ndarray:
        z = self.offset + self.slope * _logit_score(score) - self.terms.penalty(indicators)
        return np.where(np.isfinite(np.asarray(score, np.float64)), _score_of_logit(z), np.nan)

    def to_dict(self) -> dict:
        return {"offset": self.offset, "slope": self.slope, "weights": dict(self.terms.weights),
                "label_rmse": self.rmse, "images": self.images}


def fit_to_labels(terms: MeasuredTerms, score, indicators: dict, labels) -> LabelFit:
    """Refit ``terms`` (a card's) to ``labels`` (1-5, one per slice; NaN where none).

    Least squares on the label scale over the offset and slope of the network's logit score
    and the weights (>= 0) of the absolute terms; the onset terms stay as fitted on their
    own series (they read 0 on most images, so labels barely constrain them) and relative
    terms do not count. Images with a NaN label or score are left out. This is the last
    stage of the model adapted to a user's own labels (observers' scores, or projected
    labels of their references), as a baseline is trained on them.
    """
    from scipy.optimize import least_squares

    s = np.asarray(score, np.float64)
    y = np.asarray(labels, np.float64)
    if s.shape != y.shape or s.ndim != 1:
        raise OptionError("score and labels must be 1-D arrays of the same length")
    ok = np.isfinite(s) & np.isfinite(y)
    absolute, F, fixed = terms.absolute_design(indicators, len(s))
    if ok.sum() < len(absolute) + 2:
        raise OptionError(f"{int(ok.sum())} labelled images cannot fit {len(absolute) + 2} parameters")
    F, fixed = F[ok], fixed[ok]
    x = _logit_score(s[ok])

    def resid(p):
        z = p[0] + math.exp(p[1]) * x - F @ p[2:] - fixed
        return _score_of_logit(z) - y[ok]

    p0 = np.r_[0.0, 0.0, [terms.weights[k] for k in absolute]]
    lo = np.r_[-20.0, -5.0, np.zeros(len(absolute))]
    hi = np.r_[20.0, 5.0, np.full(len(absolute), 1e3)]
    fit = least_squares(resid, np.clip(p0, lo, hi), bounds=(lo, hi))
    weights = dict(terms.weights, **{k: float(c) for k, c in zip(absolute, fit.x[2:])})
    new = MeasuredTerms(weights, terms.typical, severity=terms.severity_lines, ring_settings=terms.ring_settings,
                        info=terms.info, relative=terms.relative, power=terms.power, onset=terms.onset,
                        holds=terms.holds)
    return LabelFit(new, float(fit.x[0]), math.exp(float(fit.x[1])),
                    rmse=float(np.sqrt(np.mean(resid(fit.x) ** 2))), images=int(ok.sum()))
