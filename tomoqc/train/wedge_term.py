"""Fitting the limited-angle (missing-wedge) term of a TIQA model's measured terms.

A scan whose views cover less than the half turn leaves a wedge of directions without data
(:func:`tomoqc.metrics.nr.missing_wedge`): its reconstruction smears edges along the
missing directions and adds curved streaks at the ends of the arc. The network was never
shown such data, and on real limited-angle reconstructions it reads them as good: HTC2022
discs reconstructed from 60 of 180 degrees scored 3.4-4.0, above their complete-data scores
(``tomoqc study``, Table 3). The series of :func:`tomoqc.train.measured.fit_card_terms` hold
no limited-angle data either, so the term's weight is fitted here, on series of its own, the
same way every other label of the project is made:

* phantom slices (:func:`tomoqc.phantom.electrode_slice`, domain-randomised, seeded) are
  scanned without noise (:mod:`tomoqc.distort.physics`: parallel beam, ramp FBP) over the
  full half turn (the reference) and over arcs of :data:`ARCS` degrees, starting at a random
  angle (the wedge's direction must not matter);
* each is labelled by full-reference label projection against its reference on the model
  card's own anchors (:func:`tomoqc.labels.observe`, :func:`tomoqc.labels.project`: the
  mean of the projected observers, as the training labels were);
* the term must carry the impairment by itself: the network's own response to limited-angle
  data does not carry over (on these phantoms it lowers the score, though not in order of
  the arc; on the real HTC2022 discs it does not lower it at all). So the target of each
  arc is its label on the scale of the model's score of the *complete* scan ``s0``,
  ``1 + (s0 - 1) (label - 1) / 4`` (the reference's label is 5), and the one weight ``c`` of
  the onset term ``c log(1 + max(x - t, 0) / t)``
  (:class:`tomoqc.models.measured.MeasuredTerms`, ``t`` = :data:`ONSET_DEGREES`), applied
  to ``s0`` with the arc's reading ``x``, is the one that brings it closest to those targets
  (least squares, bounded scalar search).

Nothing of the HTC2022 discs or of any real series is used: they are where the term is
checked (``tomoqc study`` Table 3's limited-angle rows).
"""

from __future__ import annotations

import math
import time

import numpy as np

from tomoqc.errors import OptionError

__all__ = ["ARCS", "ONSET_DEGREES", "WEDGE_SEED", "limited_angle_scans", "projected_labels", "fit_onset_weight",
           "fit_wedge_term"]

#: Degrees of the half turn the views cover, levels 1-5.
ARCS = (165.0, 150.0, 120.0, 90.0, 60.0)
#: ``t`` of the onset term: readings up to it do not count. Complete scans read 0 (real
#: reconstructions of every source of the benchmark series, phantoms with every impairment,
#: sparse views included); a wedge of 15 degrees reads 0-13 (its walls are only a few
#: bins apart after the closing), so the term starts where readings are sure.
ONSET_DEGREES = 10.0
#: Seed of the phantoms the term is fitted on (disjoint from the study's and the training sets').
WEDGE_SEED = 20261202


def limited_angle_scans(img, arcs, *, start: float = 0.0) -> tuple[np.ndarray, list[np.ndarray]]:
    """Noise-free parallel-beam scans of ``img`` (a ``[0, 1]`` slice read as attenuation).

    Returns the complete-data reconstruction and one filtered back-projection per arc (degrees),
    each from the views whose angle lies within ``arc`` degrees after ``start`` (degrees,
    modulo 180). The views keep the complete scan's spacing, so each reconstruction is the
    complete one's sum restricted to its views (the Fourier slice theorem's missing wedge).
    """
    from tomoqc.distort import physics

    a = np.asarray(img, np.float64)
    if a.ndim != 2:
        raise OptionError(f"expected a 2-D slice, got shape {a.shape}")
    sc = physics.scanner(a.shape)
    k = physics.ATTENUATION / max(a.shape)
    p = sc.project(a) * k
    reference = (sc.reconstruct(p) / k).astype(np.float32)
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


def fit_onset_weight(score, x, labels, *, t: float = ONSET_DEGREES, upper: float = 20.0) -> dict:
    """The weight ``c >= 0`` of the onset term that brings ``score`` (without the term), lowered
    by ``c log(1 + max(x - t, 0) / t)`` in logit units, closest to ``labels`` (least squares)."""
    from scipy.optimize import minimize_scalar

    from tomoqc.models.measured import MeasuredTerms

    s = np.asarray(score, np.float64)
    xv = np.asarray(x, np.float64)
    lab = np.asarray(labels, np.float64)
    ok = np.isfinite(s) & np.isfinite(xv) & np.isfinite(lab)
    if ok.sum() < 3:
        raise OptionError("need at least 3 finite (score, indicator, label) triples")
    s, xv, lab = s[ok], xv[ok], lab[ok]

    def combined(c):
        terms = MeasuredTerms({"wedge": c}, {"wedge": t}, onset=("wedge",))
        return terms.combine(s, {"wedge": xv})

    def loss(c):
        return float(np.mean((combined(c) - lab) ** 2))

    res = minimize_scalar(loss, bounds=(0.0, float(upper)), method="bounded", options={"xatol": 1e-4})
    c = float(res.x)
    return {"weight": c, "rmse_before": math.sqrt(loss(0.0)), "rmse_after": math.sqrt(loss(c)), "images": int(ok.sum())}


def fit_wedge_term(model, *, references: int = 12, size: int = 256, seed: int = WEDGE_SEED, log=print) -> dict:
    """Fit the wedge term of ``model`` (:class:`tomoqc.models.tiqa.TiqaModel`) on limited-angle
    phantom series (module doc). Returns ``{"weight", "typical", "fit": {...}}``; the fit
    records the series, the errors before and after and the mean score per level."""
    from tomoqc.phantom import electrode_slice

    if int(references) < 2:
        raise OptionError(f"references must be >= 2, got {references}")
    from tomoqc.models.measured import MeasuredTerms

    # scores without any wedge term the card may already hold (a refit starts from the same place)
    held = getattr(model, "measured_terms", None)
    no_wedge = None if held is None else held.with_term("wedge", 0.0)
    rng = np.random.default_rng(seed)
    rows = []
    t0 = time.monotonic()
    for i in range(int(references)):
        img, _ = electrode_slice((int(size), int(size)), seed=[int(seed), i], randomize=True)
        img = np.clip(img, 0.0, None)
        start = float(rng.uniform(0.0, 180.0))
        ref, scans = limited_angle_scans(img, ARCS, start=start)
        labels = projected_labels(ref, np.stack(scans), model.card)
        for level, (arc, rec, lab) in enumerate(zip((180.0, *ARCS), [ref, *scans], [5.0, *labels])):
            res = model.score_slices(rec[None], tta=1, ood=False, measure=True)
            score = res["score"] if no_wedge is None else no_wedge.combine(res["network_score"], res["indicators"])
            rows.append({"reference": i, "level": level, "arc": arc, "label": float(lab),
                         "score": float(score[0]), "wedge": float(res["indicators"]["wedge"][0])})
        log(f"wedge series {i + 1}/{references}: wedge readings "
            f"{[round(r['wedge']) for r in rows[-len(ARCS) - 1:]]}, labels "
            f"{[round(r['label'], 2) for r in rows[-len(ARCS) - 1:]]} ({time.monotonic() - t0:.0f} s)")
    score = np.array([r["score"] for r in rows])
    x = np.array([r["wedge"] for r in rows])
    lab = np.array([r["label"] for r in rows])
    s0 = np.array([rows[j - r["level"]]["score"] for j, r in enumerate(rows)])  # the complete scan's score
    arc_rows = np.array([r["level"] > 0 for r in rows])
    target = 1.0 + (s0 - 1.0) * (lab - 1.0) / 4.0
    fit = fit_onset_weight(s0[arc_rows], x[arc_rows], target[arc_rows])

    after = MeasuredTerms({"wedge": fit["weight"]}, {"wedge": ONSET_DEGREES}, onset=("wedge",)).combine(score, {"wedge": x})
    levels = np.array([r["level"] for r in rows])
    per_level = {str(int(lv)): {"arc": float((180.0, *ARCS)[lv]), "label": round(float(lab[levels == lv].mean()), 3),
                                "score_before": round(float(score[levels == lv].mean()), 3),
                                "score_after": round(float(after[levels == lv].mean()), 3),
                                "wedge_degrees": round(float(np.nanmean(x[levels == lv])), 1)}
                 for lv in range(len(ARCS) + 1)}
    log(f"wedge term: weight {fit['weight']:.3f}, target RMSE {fit['rmse_before']:.3f} -> {fit['rmse_after']:.3f}")
    return {"weight": fit["weight"], "typical": ONSET_DEGREES,
            "fit": {"fitted_on": (f"{references} domain-randomised phantom slices ({size} px, seed {seed}) scanned "
                                  f"without noise over the half turn and over arcs of {', '.join(f'{a:g}' for a in ARCS)} "
                                  "degrees from a random start, labelled by projection on the card's anchors"),
                    "seed": int(seed), "references": int(references), "size": int(size), "arcs": list(ARCS),
                    "target": "1 + (s0 - 1) (label - 1) / 4, s0 the complete scan's score; the term applied to s0",
                    "target_rmse_before": round(fit["rmse_before"], 4), "target_rmse_after": round(fit["rmse_after"], 4),
                    "images": fit["images"], "max_reading": round(float(np.nanmax(x)), 1),
                    "per_level": per_level}}
