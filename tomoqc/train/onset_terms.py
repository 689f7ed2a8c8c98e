"""Fitting the onset terms of a TIQA model's measured terms: limited angle and sparse views.

Two impairments of the angular sampling have an indicator that reads exactly 0 on complete
data (:data:`tomoqc.models.measured.ONSET`), and a weight fitted here, on series of their own:

* **limited angle** (``wedge``, :func:`tomoqc.metrics.nr.missing_wedge`): a scan whose views
  cover less than the half turn leaves a wedge of directions without data; its
  reconstruction smears edges along the missing directions. The network was never shown such
  data, and on real limited-angle reconstructions it reads them as good: HTC2022 discs
  reconstructed from 60 of 180 degrees scored 3.4-4.0, above their complete-data scores
  (``tomoqc study``, Table 3).
* **sparse views** (``spacing``, :func:`tomoqc.metrics.nr.view_spacing`): past about 10 degrees
  between views the streak index stops rising (the gaps between the spectrum's spokes grow
  wider than its angular trend) and the network, on real data, hardly responds at all: HTC2022
  discs scored 1.10 from 15 directions and 1.49, 1.66, 1.86 from 10, 6 and 4.

The series of :func:`tomoqc.train.measured.fit_card_terms` hold neither, so each weight is
fitted on series of its own, labelled the way every label of the project is made:

* phantom slices (:func:`tomoqc.phantom.electrode_slice`, domain-randomised, seeded) are
  scanned without noise (:mod:`tomoqc.distort.physics`: parallel beam, ramp FBP) over the
  full half turn (the reference) and at the term's five levels (:data:`ARCS`, :data:`VIEWS`),
  from a random start angle (the direction must not matter);
* each is labelled by full-reference label projection against its reference on the model
  card's own anchors (:func:`tomoqc.labels.observe`, :func:`tomoqc.labels.project`: the
  mean of the projected observers, as the training labels were);
* **limited angle** is fitted to the labels: the term must carry the impairment by itself,
  since the network's own response to these data does not carry over to real scans (on the
  phantoms it lowers the score, though not in order of the arc; on the real HTC2022 discs it
  does not). So the target of each arc is its label on the scale of the model's score of the
  *complete* scan ``s0``, ``1 + (s0 - 1) (label - 1) / 4`` (the reference's label is 5), and
  the one weight ``c`` of the onset term ``c log(1 + max(x - t, 0) / t)``
  (:class:`tomoqc.models.measured.MeasuredTerms`, ``t`` = :data:`ONSET_DEGREES`), applied to
  ``s0`` with the arc's reading ``x``, is the one that brings it closest to those targets
  (least squares, bounded scalar search);
* **sparse views** are fitted to the order of each series: their scores already lie far
  below their labels (the noise index reads the streaks as noise: phantoms labelled 2.0-2.8
  score 1.3-1.5), but past the onset no longer in order of the spacing (1.50, 1.39, 1.35,
  1.39, 1.46 from 18, 12, 9, 6 and 4 views). The weight is the least that orders each series'
  levels by a margin of :data:`ORDER_MARGIN` in logit units (mean hinge over the pairs,
  :func:`fit_onset_order_weight`), applied to the score the model gives with its other terms.

Where the view spacing reads above its onset, the blur term is held at its clean level
(:data:`HOLDS`): the streak fans of sparse views widen every edge's measured profile. The
sparse-view weight is fitted with the hold in place.

With real data, the sparse-view fit also orders measured series: HTC2022 discs without
ground truth (:data:`HTC_FIT_DISCS`) from ever fewer of their views. The discs with ground
truth, and every limited-angle series, are where the terms are checked (``tomoqc study``
Table 3, ``benchmarks/angular_sampling.py``); the wedge term uses no real data.
"""

from __future__ import annotations

import math
import time

import numpy as np

from tomoqc.errors import OptionError

__all__ = ["ARCS", "VIEWS", "ONSET_DEGREES", "ONSET_SEED", "HOLDS", "HTC_FIT_DISCS", "HTC_STRIDES", "htc_sparse_series", "limited_angle_scans", "sparse_view_scans",
           "projected_labels", "fit_onset_weight", "fit_onset_order_weight", "fit_onset_term", "ORDER_MARGIN"]

#: Degrees of the half turn the views cover, levels 1-5.
ARCS = (165.0, 150.0, 120.0, 90.0, 60.0)
#: Directions measured over the half turn, levels 1-5 (10, 15, 20, 30 and 45 degrees apart).
VIEWS = (18, 12, 9, 6, 4)
#: ``t`` of each onset term: readings up to it do not count.
#:
#: * ``wedge``: complete scans read 0 (real reconstructions of every source of the benchmark
#:   series, phantoms with every impairment, sparse views included); a wedge of 15 degrees
#:   reads 0-13 (its walls are only a few bins apart after the closing), so the term starts
#:   where readings are sure.
#: * ``spacing``: complete scans read 0, a real raw scan of 91 views 2 degrees; the angle levels
#:   the streak index follows (``benchmarks/real_orderings.py``'s sparsest, 4 degrees on the
#:   HTC2022 discs; the study's third streak level, 5.3) stay below, so the term starts where
#:   that index stops rising.
ONSET_DEGREES = {"wedge": 10.0, "spacing": 8.0}
#: Margin (logit units) by which the order fit asks each pair apart (the pair fit's
#: temperature, :data:`tomoqc.train.measured.TAU`).
ORDER_MARGIN = 0.25
#: Seed of the phantoms the terms are fitted on (disjoint from the study's and the training sets').
ONSET_SEED = 20261202


def _complete_scan(img):
    """The noise-free parallel-beam scan of ``img`` over the half turn: ``(scanner, sinogram,
    attenuation scale, reconstruction)``; a view subset of the sinogram, reconstructed and
    divided by the scale, is a scan from those views alone."""
    from tomoqc.distort import physics

    a = np.asarray(img, np.float64)
    if a.ndim != 2:
        raise OptionError(f"expected a 2-D slice, got shape {a.shape}")
    sc = physics.scanner(a.shape)
    k = physics.ATTENUATION / max(a.shape)
    p = sc.project(a) * k
    return sc, p, k, (sc.reconstruct(p) / k).astype(np.float32)


def limited_angle_scans(img, arcs, *, start: float = 0.0) -> tuple[np.ndarray, list[np.ndarray]]:
    """Noise-free parallel-beam scans of ``img`` (a ``[0, 1]`` slice read as attenuation).

    Returns the complete-data reconstruction and one filtered back-projection per arc (degrees),
    each from the views whose angle lies within ``arc`` degrees after ``start`` (degrees,
    modulo 180). The views keep the complete scan's spacing, so each reconstruction is the
    complete one's sum restricted to its views (the Fourier slice theorem's missing wedge).
    """
    sc, p, k, reference = _complete_scan(img)
    rel = np.mod(np.degrees(sc.angles) - float(start), 180.0)
    out = []
    for arc in arcs:
        arc = float(arc)
        if not 0.0 < arc <= 180.0:
            raise OptionError(f"arc must be in (0, 180] degrees, got {arc}")
        keep = rel < arc - 1e-9
        if not keep.any():
            raise OptionError(f"no view within an arc of {arc} degrees")
        out.append((sc.reconstruct(np.where(keep[:, None], p, 0.0)) / k).astype(np.float32))
    return reference, out


def sparse_view_scans(img, views, *, start: float = 0.0) -> tuple[np.ndarray, list[np.ndarray]]:
    """Noise-free parallel-beam scans of ``img`` (a ``[0, 1]`` slice read as attenuation).

    Returns the complete-data reconstruction and one filtered back-projection per count in
    ``views``, each from that many directions evenly spaced over the half turn from ``start``
    (degrees): the complete scan's views nearest to them (its spacing is under half a degree
    for a slice of 200 px or more), each weighted as one of ``v`` views.
    """
    sc, p, k, reference = _complete_scan(img)
    full = np.degrees(sc.angles)
    out = []
    for v in views:
        v = int(v)
        if not 2 <= v <= len(full) // 2:
            raise OptionError(f"views must be in [2, {len(full) // 2}], got {v}")
        want = np.mod(float(start) + np.arange(v) * 180.0 / v, 180.0)
        # nearest view of the complete set, around the circle of directions
        d = np.abs(((want[:, None] - full[None, :]) + 90.0) % 180.0 - 90.0)
        keep = np.zeros(len(full), bool)
        keep[np.argmin(d, axis=1)] = True
        out.append((sc.reconstruct(np.where(keep[:, None], p, 0.0)) * (len(full) / v) / k).astype(np.float32))
    return reference, out


def projected_labels(reference, distorted, card: dict) -> np.ndarray:
    """Labels (1-5) of ``distorted`` (n, H, W) against ``reference``: the mean of the projected
    observers on the card's anchors and intensity mode (``card["data"]["labels"]``)."""
    from tomoqc.labels import DEFAULT_OBSERVERS, data_range_of, observe, project

    lab = ((card or {}).get("data") or {}).get("labels") or {}
    anchors = (lab.get("anchors") or {}).get("worst_goodness")
    if not anchors:
        raise OptionError("the model card has no label anchors (data.labels.anchors.worst_goodness)")
    intensity = lab.get("intensity", "absolute")
    ref = np.asarray(reference, np.float64)
    stack = np.asarray(distorted, np.float64)
    names = [n for n in DEFAULT_OBSERVERS if n in anchors and not (n == "ms_ssim" and min(ref.shape) < 161)]
    dr = data_range_of(ref) if intensity == "absolute" else 1.0
    raw = observe(ref, stack, observers=names, intensity=intensity)
    return np.mean([project(n, raw[n], 5.0, worst=float(anchors[n]), data_range=dr) for n in names], axis=0)


def fit_onset_weight(score, x, labels, *, t: float, upper: float = 20.0) -> dict:
    """The weight ``c >= 0`` of an onset term that brings ``score`` (without the term), lowered
    by ``c log(1 + max(x - t, 0) / t)`` in logit units, closest to ``labels`` (least squares)."""
    from scipy.optimize import minimize_scalar

    from tomoqc.models.measured import MeasuredTerms

    s = np.asarray(score, np.float64)
    xv = np.asarray(x, np.float64)
    lab = np.asarray(labels, np.float64)
    ok = np.isfinite(s) & np.isfinite(xv) & np.isfinite(lab)
    if ok.sum() < 3:
        raise OptionError("need at least 3 finite (score, indicator, label) triples")
    if not t > 0:
        raise OptionError(f"the onset t must be > 0, got {t}")
    s, xv, lab = s[ok], xv[ok], lab[ok]

    def combined(c):
        # the form is the same for every onset indicator; "wedge" only names it
        terms = MeasuredTerms({"wedge": c}, {"wedge": t}, onset=("wedge",))
        return terms.combine(s, {"wedge": xv})

    def loss(c):
        return float(np.mean((combined(c) - lab) ** 2))

    res = minimize_scalar(loss, bounds=(0.0, float(upper)), method="bounded", options={"xatol": 1e-4})
    c = float(res.x)
    return {"weight": c, "rmse_before": math.sqrt(loss(0.0)), "rmse_after": math.sqrt(loss(c)), "images": int(ok.sum())}


def fit_onset_order_weight(score, x, series, level, *, t: float, margin: float = ORDER_MARGIN,
                           l2: float = 1e-3, upper: float = 20.0) -> dict:
    """The weight ``c >= 0`` of an onset term that orders each series of ``score`` (without the
    term) by ``level``: the least ``c`` for which the mean hinge ``max(0, margin - (z_a - z_b))``
    over the pairs of one series with ``level_a < level_b`` is least, ``z`` the score's logit
    lowered by ``c log(1 + max(x - t, 0) / t)`` (a small ``l2 c**2`` picks the least ``c``)."""
    from scipy.optimize import minimize_scalar

    from tomoqc.models.measured import MeasuredTerms, _logit_score

    s = np.asarray(score, np.float64)
    xv = np.asarray(x, np.float64)
    ser = np.asarray(series)
    lv = np.asarray(level)
    if not (s.shape == xv.shape == ser.shape == lv.shape):
        raise OptionError("score, x, series and level must have one shape")
    if not t > 0:
        raise OptionError(f"the onset t must be > 0, got {t}")
    ok = np.isfinite(s)
    xv = np.where(np.isfinite(xv), xv, 0.0)
    a, b = np.nonzero((ser[:, None] == ser[None, :]) & (lv[:, None] < lv[None, :]) & ok[:, None] & ok[None, :])
    if a.size < 3:
        raise OptionError("need at least 3 ordered pairs")
    z0 = _logit_score(s)
    feat = MeasuredTerms({"wedge": 1.0}, {"wedge": t}, onset=("wedge",)).feature("wedge", xv)

    def hinge(c):
        z = z0 - c * feat
        return float(np.mean(np.maximum(0.0, float(margin) - (z[a] - z[b]))))

    res = minimize_scalar(lambda c: hinge(c) + float(l2) * c * c, bounds=(0.0, float(upper)), method="bounded",
                          options={"xatol": 1e-4})
    c = float(res.x)

    def ordered(c):
        z = z0 - c * feat
        return float(np.mean(z[a] > z[b]))

    return {"weight": c, "pairs": int(a.size), "hinge_before": hinge(0.0), "hinge_after": hinge(c),
            "pair_accuracy_before": ordered(0.0), "pair_accuracy_after": ordered(c)}


#: Each onset term's series: (levels, the scans of a slice at them, the level's unit, what the
#: fit record says of the scans, what the weight is fitted to: ``"labels"`` or ``"order"``).
#: The wedge term carries the impairment by itself (on real discs nothing else sees it), so it
#: is fitted to the labels; sparse views already lower the score far below their labels (the
#: noise index reads the streaks), but past the onset no longer in order of the spacing
#: (phantoms: 1.50, 1.39, 1.35, 1.39, 1.46 from 18, 12, 9, 6 and 4 views), so that term is
#: fitted to order the series.
_SERIES = {
    "wedge": (ARCS, limited_angle_scans, "arc", "over arcs of {levels} degrees", "labels"),
    "spacing": (VIEWS, sparse_view_scans, "views", "from {levels} directions evenly spaced over the half turn",
                "order"),
}
#: Indicators each onset reading confounds, held at their typical value where it reads above
#: its onset (:meth:`tomoqc.models.measured.MeasuredTerms.held`). The streak fans of sparse
#: views widen every strong edge's profile, so the blur index reads them as blur: HTC2022 discs
#: read 2.0-2.3 px at 12 degrees between views (0.76 complete), the study's phantom streak
#: levels past the onset 1.0-1.9 px; the blur term then scored 30 views below 20 on every
#: disc. The term's weight is fitted with the hold in place.
HOLDS = {"spacing": ("blur",)}
#: Real series of the sparse-view fit: HTC2022 discs *without* ground truth, one of each
#: numbered sample (the discs with ground truth are where ``benchmarks/angular_sampling.py``
#: and ``tomoqc study`` check the term), reconstructed from every k-th of the 721 views of the
#: full turn (:func:`tomoqc.train.segdata.htc2022_recon`): 360 views (complete), then 45, 30,
#: 20, 12 and 8 views, 4, 12, 18, 30 and 45 degrees between directions.
HTC_FIT_DISCS = ("01a", "02b", "03c", "04a", "05b", "06c", "07a")
HTC_STRIDES = (1, 16, 24, 36, 60, 90)


def htc_sparse_series(realdata, discs=HTC_FIT_DISCS, strides=HTC_STRIDES):
    """Yield ``(disc, level, stride, reconstruction)`` of the HTC2022 discs ``discs`` under
    ``realdata`` (or its ``htc2022/``) from every ``stride``-th view of the full turn (level
    0 the first stride; :data:`HTC_STRIDES`). One clear error when a disc's file is missing."""
    from pathlib import Path

    from tomoqc.errors import InputError
    from tomoqc.train.segdata import htc2022_recon

    root = Path(realdata)
    folder = root / "htc2022" if (root / "htc2022").is_dir() else root
    for disc in discs:
        path = folder / f"htc2022_{disc}_full.mat"
        if not path.is_file():
            raise InputError(path, "HTC2022 disc not found (the sparse-view fit's real series)")
        for level, k in enumerate(strides):
            yield disc, level, int(k), htc2022_recon(path, angles=int(k))


def fit_onset_term(model, name: str, *, references: int = 12, size: int = 256, seed: int = ONSET_SEED,
                   realdata=None, log=print) -> dict:
    """Fit the onset term ``name`` (``"wedge"`` or ``"spacing"``) of ``model``
    (:class:`tomoqc.models.tiqa.TiqaModel`) on its phantom series (module doc). Returns
    ``{"weight", "typical", "fit": {...}, "rows": [...]}``; the fit records the series, the
    errors before and after and the mean score per level (it goes into the card), ``rows``
    every image's level, label, score without the term and reading."""
    from tomoqc.models.measured import MeasuredTerms
    from tomoqc.phantom import electrode_slice

    if name not in _SERIES:
        raise OptionError(f"unknown onset term {name!r}; choose from {', '.join(_SERIES)}")
    if int(references) < 2:
        raise OptionError(f"references must be >= 2, got {references}")
    levels, scans_of, unit, described, fit_to = _SERIES[name]
    t = ONSET_DEGREES[name]
    # scores without this term, if the card already holds it (a refit starts from the same place)
    # and with the indicators this one holds held (HOLDS), as the card will count them
    kept = getattr(model, "measured_terms", None)
    holds = HOLDS.get(name, ())
    without = None if kept is None else kept.with_term(name, 0.0, typical=t, onset=name not in kept.onset,
                                                       holds=holds)
    rng = np.random.default_rng(seed)
    rows = []
    t0 = time.monotonic()
    for i in range(int(references)):
        img, _ = electrode_slice((int(size), int(size)), seed=[int(seed), i], randomize=True)
        img = np.clip(img, 0.0, None)
        start = float(rng.uniform(0.0, 180.0))
        ref, scans = scans_of(img, levels, start=start)
        labels = projected_labels(ref, np.stack(scans), model.card)
        for level, (rec, lab) in enumerate(zip([ref, *scans], [5.0, *labels])):
            res = model.score_slices(rec[None], tta=1, ood=False, measure=True)
            score = res["score"] if without is None else without.combine(res["network_score"], res["indicators"])
            rows.append({"reference": i, "level": level, unit: (None, *levels)[level], "label": float(lab),
                         "score": float(score[0]), name: float(res["indicators"][name][0])})
        log(f"{name} series {i + 1}/{references}: readings "
            f"{[round(r[name], 1) for r in rows[-len(levels) - 1:]]}, labels "
            f"{[round(r['label'], 2) for r in rows[-len(levels) - 1:]]} ({time.monotonic() - t0:.0f} s)")
    real_rows = []
    if realdata is not None and fit_to == "order":
        # measured sparse-view series join the order fit (they have no labels)
        for disc, level, stride, rec in htc_sparse_series(realdata):
            res = model.score_slices(rec[None], tta=1, ood=False, measure=True)
            score = res["score"] if without is None else without.combine(res["network_score"], res["indicators"])
            real_rows.append({"reference": f"htc:{disc}", "level": level, "stride": stride, "label": math.nan,
                              "score": float(score[0]), name: float(res["indicators"][name][0])})
            if level == len(HTC_STRIDES) - 1:
                log(f"{name} series htc:{disc}: readings {[round(r[name], 1) for r in real_rows[-len(HTC_STRIDES):]]} "
                    f"({time.monotonic() - t0:.0f} s)")
    score = np.array([r["score"] for r in rows])
    x = np.array([r[name] for r in rows])
    lab = np.array([r["label"] for r in rows])
    s0 = np.array([rows[j - r["level"]]["score"] for j, r in enumerate(rows)])  # the complete scan's score
    impaired = np.array([r["level"] > 0 for r in rows])
    target = 1.0 + (s0 - 1.0) * (lab - 1.0) / 4.0
    if fit_to == "labels":
        fit = fit_onset_weight(s0[impaired], x[impaired], target[impaired], t=t)
    else:
        both = rows + real_rows
        fit = fit_onset_order_weight(np.array([r["score"] for r in both]), np.array([r[name] for r in both]),
                                     np.array([str(r["reference"]) for r in both]),
                                     np.array([r["level"] for r in both]), t=t)

    after = MeasuredTerms({name: fit["weight"]}, {name: t}, onset=(name,)).combine(score, {name: x})
    lv = np.array([r["level"] for r in rows])
    per_level = {str(k): {unit: (None, *levels)[k], "label": round(float(lab[lv == k].mean()), 3),
                          "score_before": round(float(score[lv == k].mean()), 3),
                          "score_after": round(float(after[lv == k].mean()), 3),
                          f"{name}_degrees": round(float(np.nanmean(x[lv == k])), 1)}
                 for k in range(len(levels) + 1)}
    if fit_to == "labels":
        log(f"{name} term: weight {fit['weight']:.3f}, target RMSE {fit['rmse_before']:.3f} -> {fit['rmse_after']:.3f}")
        record = {"target": "1 + (s0 - 1) (label - 1) / 4, s0 the complete scan's score; the term applied to s0",
                  "target_rmse_before": round(fit["rmse_before"], 4), "target_rmse_after": round(fit["rmse_after"], 4),
                  "images": fit["images"]}
    else:
        log(f"{name} term: weight {fit['weight']:.3f}, pairs in order {fit['pair_accuracy_before']:.3f} -> "
            f"{fit['pair_accuracy_after']:.3f}, hinge {fit['hinge_before']:.3f} -> {fit['hinge_after']:.3f}")
        record = {"target": (f"the order of each series' levels: the least weight minimising the mean hinge "
                             f"max(0, {ORDER_MARGIN} - (z_a - z_b)) over its pairs, z the score's logit with the term"),
                  "pairs": fit["pairs"], "pair_accuracy_before": round(fit["pair_accuracy_before"], 4),
                  "pair_accuracy_after": round(fit["pair_accuracy_after"], 4),
                  "hinge_before": round(fit["hinge_before"], 4), "hinge_after": round(fit["hinge_after"], 4)}
    return {"weight": fit["weight"], "typical": t, "holds": list(holds),
            "fit": {"fitted_on": (f"{references} domain-randomised phantom slices ({size} px, seed {seed}) scanned "
                                  "without noise over the half turn and "
                                  + described.format(levels=", ".join(f"{v:g}" for v in levels))
                                  + " from a random start, labelled by projection on the card's anchors"),
                    "seed": int(seed), "references": int(references), "size": int(size), unit: list(levels),
                    **record, "holds": list(holds),
                    "max_reading": round(float(np.nanmax([r[name] for r in rows + real_rows])), 1),
                    "per_level": per_level, **_real_record(real_rows, name, t, fit["weight"])},
            "rows": rows + real_rows}


def _real_record(real_rows: list[dict], name: str, t: float, weight: float) -> dict:
    """What the fit record says of the real series: the discs, the strides and the mean
    score per level without and with the term."""
    from tomoqc.models.measured import MeasuredTerms

    if not real_rows:
        return {}
    score = np.array([r["score"] for r in real_rows])
    x = np.array([r[name] for r in real_rows])
    after = MeasuredTerms({name: weight}, {name: t}, onset=(name,)).combine(score, {name: x})
    lv = np.array([r["level"] for r in real_rows])
    discs = sorted({r["reference"] for r in real_rows})
    return {"real_series": (f"{len(discs)} measured HTC2022 discs without ground truth ({', '.join(discs)}), "
                            f"every k-th of the 721 views of the full turn, k = "
                            f"{', '.join(str(k) for k in HTC_STRIDES)}"),
            "real_per_level": {str(k): {"stride": HTC_STRIDES[k],
                                        "score_before": round(float(score[lv == k].mean()), 3),
                                        "score_after": round(float(after[lv == k].mean()), 3),
                                        f"{name}_degrees": round(float(np.nanmean(x[lv == k])), 1)}
                               for k in range(len(HTC_STRIDES))}}
