"""Fitting the measured terms of a TIQA model (:mod:`tomoqc.models.measured`) on series of known order.

Training series, each of known order:

* reference slices - real reconstructions of the real-data folder (``TRAIN_SAMPLES``) and
  electrode phantoms - re-projected and scanned again (:mod:`tomoqc.distort.physics`) with
  rising dose loss, fewer projections, detector blur and miscalibrated detector columns; the
  phantoms also get the image-domain recipes;
* real measured data degraded directly (:func:`tomoqc.realdata.degraded_series`,
  ``TRAIN_SERIES``: Savu rows and HTC2022 discs): thinned counts / dose noise, fewer
  projections, detector blur, column gain mismatch, stripe removal on and off, the rotation
  axis 0-8 px off - each as the float reconstruction and as 8-bit PNG and JPEG exports (the
  way images reach users).

No sample of ``benchmarks/real_orderings.py`` is used: its HTC2022 discs, Savu rows and
re-projected slices are all left out (the Savu rows here are other rows of the same scan, the
only raw synchrotron scan of the folder).

:func:`fit_card_terms` scores every image with the network alone, measures the indicators,
takes each indicator's typical clean value, fits the weights so that the combined score
orders the series' pairs (the real series weigh as much as the simulated ones together) and
the severity lines, and returns the card entry. Scored tables are cached in its work folder
(:func:`fit_tables`).

:func:`term_strength_table` measures what the terms' overall strength does: the pairs fix
their ratios but reward any strength above what orders them, while labelled phantoms ask
for weaker terms (``benchmarks/term_strength.py``).
"""

from __future__ import annotations

import csv
import math
import os
import time
from pathlib import Path

import numpy as np

from tomoqc.errors import OptionError

__all__ = ["TRAIN_SAMPLES", "TRAIN_SERIES", "fit_card_terms", "fit_tables", "term_strength_table", "pair_set", "series_groups",
           "series_pairs", "reference_slices", "series_for", "image_series",
           "real_series_rows", "export_roundtrip"]

#: Real samples used for fitting (kept apart from the real-orderings benchmark's samples).
TRAIN_SAMPLES = (
    ("qim3d/NT_128x128x128.tif", (40, 90)),
    ("qim3d/fibers_150x150x150.tif", (50, 100)),
    ("qim3d/fly_150x256x256.tif", (60, 100)),
    ("qim3d/shell_225x128x128.tif", (80, 150)),
    ("qbi/wood.tif", None),
    ("qbi/asphalt_gray.tif", None),
    ("qbi/NMC_90wt_2000bar_115.tif", None),
    ("battery_xct/cell_vol/im046.tif", None),
    ("battery_xct/cell_vol/im091.tif", None),
    ("imars3d/expected_slice_300.npy", None),
)
#: Series of real measured data (kind, sample) for the fit; disjoint from the benchmark's.
TRAIN_SERIES = (
    *[("dose", s) for s in ("savu:80", "savu:112", "htc:01c", "htc:03a", "htc:04c", "htc:06b")],
    *[("angles", s) for s in ("savu:96", "htc:02c", "htc:05b", "htc:07b")],
    *[("stripes", s) for s in ("savu:80", "savu:112", "htc:03c", "htc:06c")],
    *[("blur", s) for s in ("savu:96", "htc:04a", "htc:tc")],
    *[("gain", s) for s in ("savu:80", "htc:07c", "htc:td")],
    # rows and discs apart from benchmarks/compare_real.py's centre-of-rotation sweeps too
    *[("center", s) for s in ("savu:80", "savu:112", "htc:01c", "htc:03a", "htc:04c", "htc:06b", "htc:07b")],
)
EXPORTS = ("png", "jpeg")
SIZE = 256
FLUX_SERIES = (1e5, 2e4, 5e3, 1.5e3, 500.0, 150.0)
ANGLE_FRACTIONS = (1.0, 1 / 2, 1 / 4, 1 / 8, 1 / 16)
BLUR_SERIES = (0.0, 1.0, 2.0, 4.0, 8.0)
BASE_FLUX = 2e4
#: Ridge penalty and temperature of the pairwise fit (chosen on the fit's own series; a
#: stronger ridge left the noise weight too small to overrule the network on real dose series)
L2 = 0.002
TAU = 0.25
#: Weight of the real series' pairs (together) against the simulated ones (together).
REAL_WEIGHT = 1.0
#: How pairs are weighed inside the real and inside the simulated half (:func:`pair_weights`).
BALANCES = ("pairs", "kinds")
BALANCE = "pairs"
#: Weight of the squared error against labels (labelled sets) in the fit: small, so that the
#: labels keep the terms on the label scale without undoing what the real series ask for.
LABEL_WEIGHT = 0.03


#: How each indicator adds to its typical clean level in the terms
#: (:class:`tomoqc.models.measured.MeasuredTerms`): noise and ring indices are RMS amplitudes
#: and add in power, the blur index is a Gaussian width and adds in quadrature; the streak
#: index (a spread in excess of chance) adds as it is. On the fit's own series the powers
#: order as many pairs as the linear form did (0.979 against 0.978 of 1570).
POWER = {"noise": 2.0, "blur": 2.0, "ring": 2.0, "streak": 1.0}
#: Indicators fitted and applied only between reconstructions of one scan (see
#: :class:`tomoqc.models.measured.MeasuredTerms`), and the series kind that fits them.
RELATIVE = ("axis",)
RELATIVE_KIND = "real_center"
#: The axis term's typical value: errors below the refocusing estimate's resolution (about
#: 1 px: a 1 px offset reads 0-2 px on real slices) count as none.
AXIS_RESOLUTION = 1.0


def fit_relative_weight(terms, rows: list, name: str, *, l2: float = L2, tau: float = TAU,
                        grid=np.linspace(0.0, 3.0, 601)) -> dict:
    """The weight of relative indicator ``name`` on series of one scan (``rows``: reference,
    level, network and the indicators), the other terms held as they are.

    Pairs are the series' (better, worse) levels; the weight minimises the mean logistic
    pair loss of the combined score (temperature ``tau``) plus ``l2`` times its square, over
    ``grid``. Returns ``weight``, ``pairs``, ``pair_accuracy`` with and without the term.
    """
    from tomoqc.models.measured import MeasuredTerms, _logit_score

    if not rows:
        return {"weight": 0.0, "pairs": 0, "pair_accuracy": None, "pair_accuracy_without": None}
    s = _logit_score(np.array([r["network"] for r in rows], np.float64))
    ind = {k: np.array([r[k] for r in rows], np.float64) for k in terms.weights}
    base = s - terms.penalty(ind)  # the absolute terms only
    f = MeasuredTerms(terms.weights, terms.typical, relative=(name,)).feature(name, ind[name])
    groups: dict = {}
    for i, r in enumerate(rows):
        groups.setdefault(r["reference"], []).append(i)
    pairs = np.array([(a, b) for idx in groups.values() for a in idx for b in idx
                      if rows[a]["level"] < rows[b]["level"]], np.intp)
    db = base[pairs[:, 0]] - base[pairs[:, 1]]
    df = f[pairs[:, 0]] - f[pairs[:, 1]]
    loss = [float(np.mean(np.logaddexp(0.0, -(db - c * df) / tau)) + l2 * c * c) for c in grid]
    c = float(grid[int(np.argmin(loss))])
    return {"weight": c, "pairs": int(len(pairs)),
            "pair_accuracy": float(np.mean((db - c * df) > 0)), "pair_accuracy_without": float(np.mean(db > 0))}


def _log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def read_image(path: Path) -> np.ndarray:
    """A 2-D or 3-D array from .npy, or a TIFF (tifffile, else Pillow for codecs it lacks)."""
    if path.suffix == ".npy":
        return np.load(path)
    try:
        import tifffile

        return tifffile.imread(path)
    except Exception:
        from PIL import Image

        return np.asarray(Image.open(path))


def reference_slices(realdata: Path, phantoms: int, seed: int):
    """``[(name, slice in [0, 1], SIZE x SIZE)]``: real samples and phantoms."""
    from skimage.transform import resize

    from tomoqc.phantom import electrode_slice
    from tomoqc.preprocess import normalize_slice

    out = []
    for rel, zs in TRAIN_SAMPLES:
        p = realdata / rel
        if not p.is_file():
            _log(f"skipping missing {p}")
            continue
        a = read_image(p)
        if a.ndim == 3 and a.shape[-1] in (3, 4):
            a = a[..., 0]
        slices = [a[z] for z in zs] if a.ndim == 3 else [a]
        for i, s in enumerate(slices):
            s = np.asarray(s, np.float64)
            h, w = s.shape
            n = min(h, w)
            s = s[(h - n) // 2 : (h - n) // 2 + n, (w - n) // 2 : (w - n) // 2 + n]
            s = resize(s, (SIZE, SIZE), anti_aliasing=True, preserve_range=True)
            out.append((f"{Path(rel).stem}#{i}", normalize_slice(s).astype(np.float64)))
    for k in range(phantoms):
        img = electrode_slice((SIZE, SIZE), seed=seed + k, randomize=True)[0]
        out.append((f"phantom#{k}", normalize_slice(img).astype(np.float64)))
    return out


def series_for(img: np.ndarray, rng: np.random.Generator):
    """``{kind: [images, best first]}`` of one reference, from one re-projection."""
    from tomoqc.distort import physics

    k = physics.ATTENUATION / SIZE
    sc = physics.scanner(img.shape)
    p = sc.project(img) * k
    out = {}
    out["dose"] = [sc.reconstruct(physics._measure(p, flux=f, rng=rng)) / k for f in FLUX_SERIES]
    out["blur"] = [sc.reconstruct(physics._measure(p, flux=BASE_FLUX, psf_sigma=s, rng=rng)) / k for s in BLUR_SERIES]
    half = SIZE / 2.0
    ax = (sc.n_det - 1) / 2.0
    rings = [sc.reconstruct(physics._measure(p, flux=BASE_FLUX, rng=rng)) / k]
    for lv in range(1, 6):
        d = physics.stripe_gains(sc.n_det, rng=rng, extent=(ax - half, ax + half + 1), **physics.RING_DEFECTS[lv - 1])
        rings.append(sc.reconstruct(physics._measure(p, flux=BASE_FLUX, defects=d, rng=rng)) / k)
    out["ring"] = rings
    angles = []
    for frac in ANGLE_FRACTIONS:
        na = max(8, int(round(sc.n_angles * frac)))
        s2 = physics.scanner(img.shape, na)
        # the same photons per projection: fewer projections also means less dose
        angles.append(s2.reconstruct(physics._measure(s2.project(img) * k, flux=BASE_FLUX, rng=rng)) / k)
    out["streak"] = angles
    return {kind: [a.astype(np.float32) for a in imgs] for kind, imgs in out.items()}


def image_series(img: np.ndarray, rng: np.random.Generator, kinds=("noise", "blur", "ring")):
    """The report's image-domain recipes ``kinds`` at levels 0..5 (here for the phantoms;
    :func:`tomoqc.train.score_head.image_ring_series` draws rings on the real slices)."""
    from tomoqc.distort import image as idist

    return {f"img_{d}": [img.astype(np.float32)] + [idist.apply(img, d, lv, rng=rng).astype(np.float32)
                                                    for lv in range(1, 6)] for d in kinds}


def export_roundtrip(img: np.ndarray, window, fmt: str) -> np.ndarray:
    """``img`` as an 8-bit PNG or JPEG (quality 90) export with display window ``window``, read back."""
    import io

    from PIL import Image

    lo, hi = window
    u8 = (np.clip((img - lo) / (hi - lo), 0, 1) * 255 + 0.5).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(u8).save(buf, format="PNG" if fmt == "png" else "JPEG", **({} if fmt == "png" else {"quality": 90}))
    buf.seek(0)
    return np.asarray(Image.open(buf), np.float32)


def real_series_rows(realdata: Path, model, seed: int):
    """Scored rows of the real-data series (``TRAIN_SERIES``), float and exports."""
    from tomoqc.models.measured import measure_indicators
    from tomoqc.realdata import RealSources, degraded_series

    src = RealSources(realdata)
    rows = []
    t0 = time.time()
    for j, (kind, sample) in enumerate(TRAIN_SERIES):
        series = degraded_series(src, kind, sample, seed + j)
        imgs = [np.asarray(a, np.float32) for _, a in series]
        lo, hi = np.percentile(imgs[0], [0.5, 99.5])
        window = (float(lo), float(hi if hi > lo else lo + 1))
        for fmt in ("float",) + EXPORTS:
            stack = imgs if fmt == "float" else [export_roundtrip(a, window, fmt) for a in imgs]
            res = model.score_slices(np.stack(stack), measured_terms=False, tta=1, ood=False, measure=False)
            for lv, a in enumerate(stack):
                n = a
                c = ((n.shape[0] - 1) / 2.0, (n.shape[1] - 1) / 2.0)
                rows.append({"reference": f"{sample}/{fmt}", "kind": f"real_{kind}", "level": lv,
                             "network": float(res["score"][lv]), **measure_indicators(n, ring_center=c)})
        _log(f"{kind} {sample}: done ({time.time() - t0:.0f} s)")
    return rows


def read_rows(path: Path) -> list:
    """Rows of a scored table written by :func:`write_rows` (numbers as floats)."""
    with open(path, newline="") as fh:
        return [{k: (v if k in ("reference", "kind") else float(v)) for k, v in r.items()} for r in csv.DictReader(fh)]


def _has_indicators(path: Path) -> bool:
    """True when ``path`` is a cached table holding every indicator (an older table lacks the newer ones)."""
    from tomoqc.models.measured import INDICATORS

    if not path.is_file():
        return False
    with open(path, newline="") as fh:
        header = next(csv.reader(fh), [])
    return all(k in header for k in INDICATORS)


def write_rows(path: Path, rows: list) -> None:
    """Write a scored table (one dict per image) as CSV, atomically (temporary name, then renamed)."""
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)


def labelled_rows(model, directories, log=_log) -> list:
    """Scored rows of labelled datasets (manifest with ``label``): network score, indicators, label."""
    from tomoqc.dataset import read_manifest
    from tomoqc.models.measured import measure_indicators

    rows = []
    t0 = time.time()
    for d in directories:
        d = Path(d)
        table = [r for r in read_manifest(d) if r.get("label") not in (None, "")]
        by_ref: dict = {}
        for r in table:
            by_ref.setdefault((r["reference"], r.get("domain") or "image"), []).append(r)
        for (ref, domain), rr in by_ref.items():
            imgs = [np.load(d / r["file"]).astype(np.float32) for r in rr]
            res = model.score_slices(np.stack(imgs), measured_terms=False, tta=1, ood=False, measure=False)
            for r, a, sc in zip(rr, imgs, res["score"]):
                n = a
                c = ((n.shape[0] - 1) / 2.0, (n.shape[1] - 1) / 2.0)
                rows.append({"reference": f"{d.name}/{ref}/{domain}", "kind": f"lab_{r['distortion']}",
                             "level": int(r["level"]), "network": float(sc), "label": float(r["label"]),
                             **measure_indicators(n, ring_center=c)})
        log(f"labelled {d}: {len(table)} images ({time.time() - t0:.0f} s)")
    return rows


def pair_weights(kinds, *, balance: str = BALANCE, real_weight: float = REAL_WEIGHT) -> np.ndarray:
    """Weight of each pair in the fit, from its series kind (``real_*`` for real measured data).

    The real pairs together weigh ``real_weight`` times the simulated ones together.
    ``balance="pairs"``: within each half every pair weighs the same (a kind with many
    series pulls the weights its way); ``"kinds"``: within each half every kind weighs the
    same in total (an impairment with few series, such as stripe removal, counts as much as
    one with many). Weights have mean 1.
    """
    if balance not in BALANCES:
        from tomoqc.errors import OptionError

        raise OptionError(f"balance must be one of {', '.join(BALANCES)}, got {balance!r}")
    kinds = np.asarray(list(kinds), dtype=object)
    if kinds.size == 0:
        return np.ones(0)
    is_real = np.array([str(k).startswith("real_") for k in kinds])
    w = np.zeros(len(kinds))
    for sel, hw in ((is_real, float(real_weight)), (~is_real, 1.0)):
        if not sel.any():
            continue
        if balance == "pairs":
            w[sel] = hw / sel.sum()
        else:
            names = sorted(set(kinds[sel]))
            for k in names:
                m = sel & (kinds == k)
                w[m] = hw / (len(names) * m.sum())
    return w / w.mean()


def fit_tables(model, realdata, work, *, labelled=(), phantoms: int = 6, seed: int = 20261130,
               log=_log) -> tuple[list, list, list]:
    """The scored tables the fits use: the simulated series (``series.csv``), the real measured
    series (``series_real.csv``) and the labelled sets' images (``labelled.csv``, empty without
    ``labelled``), each row holding the network's score, the indicators, ``reference``,
    ``kind``, ``level`` and ``label`` (NaN where there is none). Cached in ``work``: a rerun
    reads them instead of scoring again.
    """
    from tomoqc.models.measured import measure_indicators

    realdata, work = Path(realdata), Path(work)
    work.mkdir(parents=True, exist_ok=True)
    table_path = work / "series.csv"
    if _has_indicators(table_path):
        rows = read_rows(table_path)
        log(f"read {len(rows)} scored images from {table_path}")
    else:
        refs = reference_slices(realdata, phantoms, seed)
        log(f"{len(refs)} references")
        rows = []
        rng = np.random.default_rng(seed)
        t0 = time.time()
        centre = ((SIZE - 1) / 2.0, (SIZE - 1) / 2.0)
        for name, img in refs:
            ser = series_for(img, rng)
            if name.startswith("phantom"):
                ser.update(image_series(img, rng))
            for kind, imgs in ser.items():
                res = model.score_slices(np.stack(imgs), measured_terms=False, tta=1, ood=False, measure=False)
                for lv, a in enumerate(imgs):
                    ind = measure_indicators(a, ring_center=centre)
                    rows.append({"reference": name, "kind": kind, "level": lv,
                                 "network": float(res["score"][lv]), **ind})
            log(f"{name}: done ({time.time() - t0:.0f} s)")
        write_rows(table_path, rows)
    real_path = work / "series_real.csv"
    if _has_indicators(real_path):
        real_rows = read_rows(real_path)
    else:
        real_rows = real_series_rows(realdata, model, seed)
        write_rows(real_path, real_rows)
    lab_rows = []
    if labelled:
        lab_path = work / "labelled.csv"
        if _has_indicators(lab_path):
            lab_rows = read_rows(lab_path)
        else:
            lab_rows = labelled_rows(model, labelled, log=log)
            write_rows(lab_path, lab_rows)
    for r in rows + real_rows:
        r.setdefault("label", float("nan"))
    return rows, real_rows, lab_rows


def series_groups(rows: list) -> dict:
    """``{(reference, kind): [row indices]}`` of the series whose levels are in known order.

    A labelled reference's single impairments (``lab_noise``, ...) each form a series that
    starts at that reference's clean image; its mixtures and clean image form none of their own.
    """
    groups: dict = {}
    for i, r in enumerate(rows):
        if r["kind"] in ("lab_none", "lab_mixed"):
            continue
        groups.setdefault((r["reference"], r["kind"]), []).append(i)
    clean_of = {r["reference"]: i for i, r in enumerate(rows) if r["kind"] == "lab_none"}
    for key, idx in groups.items():
        if key[0] in clean_of and key[1].startswith("lab_"):
            idx.insert(0, clean_of[key[0]])
    return groups


def series_pairs(rows: list, groups: dict | None = None) -> list:
    """Every ``(better, worse)`` pair of row indices inside one series (lower level better)."""
    groups = series_groups(rows) if groups is None else groups
    return [(a, b) for idx in groups.values() for a in idx for b in idx if rows[a]["level"] < rows[b]["level"]]


#: The sets of pairs :func:`term_strength_table` reports, from a row's ``kind`` and ``reference``.
PAIR_SETS = ("measured real", "real slices, simulated", "phantoms, simulated")


def pair_set(row: dict) -> str | None:
    """Which of :data:`PAIR_SETS` a series row belongs to (None for labelled sets' rows):
    real measured data degraded directly (``real_*``), real slices scanned again or impaired in
    the image domain, or phantoms."""
    kind, ref = row["kind"], str(row["reference"])
    if kind.startswith("lab_"):
        return None
    if kind.startswith("real_"):
        return PAIR_SETS[0]
    return PAIR_SETS[2] if ref.startswith("phantom") else PAIR_SETS[1]


def _pair_accuracy(score: np.ndarray, pairs: list) -> float:
    if not pairs:
        return float("nan")
    p = np.asarray(pairs, np.intp)
    a, b = score[p[:, 0]], score[p[:, 1]]
    return float(np.mean((a > b) + 0.5 * (a == b)))


def term_strength_table(terms, rows: list, factors) -> list[dict]:
    """How the measured terms' overall strength trades real orderings against labels.

    The pair fit (:func:`fit_card_terms`) fixes how the absolute terms weigh against each
    other; ordering pairs asks only that they be strong enough, not how strong. For each
    factor ``f`` the score is the network's combined with ``terms.scaled(f)`` (the absolute
    terms ``f`` times as strong; relative and onset terms as they are), and each entry holds
    ``factor``, the pair accuracy (ties count half) within each of :data:`PAIR_SETS` and per
    ``kind`` of series (``pairs_by_kind``), and the SROCC and PLCC against the labels of the
    labelled rows (NaN without any). ``rows``: the rows of :func:`fit_tables`, with any
    other series of known order; the rotation-axis series are left out (their term is relative).
    """
    from tomoqc.metrics.stats import plcc, srocc
    from tomoqc.models.measured import INDICATORS

    rows = [r for r in rows if r["kind"] != RELATIVE_KIND]
    if not rows:
        raise OptionError("no rows to measure the measured terms' strength on")
    factors = [float(f) for f in factors]
    if not factors or any(not (math.isfinite(f) and f >= 0) for f in factors):
        raise OptionError("the factors must be finite numbers >= 0")
    network = np.array([r["network"] for r in rows], np.float64)
    ind = {k: np.array([r.get(k, np.nan) for r in rows], np.float64) for k in INDICATORS}
    label = np.array([r.get("label", np.nan) for r in rows], np.float64)
    has_label = np.isfinite(label) & np.isfinite(network)
    pairs = series_pairs(rows)
    by_set = {name: [p for p in pairs if pair_set(rows[p[0]]) == name] for name in PAIR_SETS}
    kinds: dict = {}
    for p in pairs:
        if pair_set(rows[p[0]]) is not None:
            kinds.setdefault(rows[p[0]]["kind"], []).append(p)
    table = []
    for f in factors:
        score = terms.scaled(f).combine(network, ind)
        entry = {"factor": f, **{name: _pair_accuracy(score, pp) for name, pp in by_set.items()},
                 "label_srocc": srocc(score[has_label], label[has_label]) if has_label.sum() >= 3 else float("nan"),
                 "label_plcc": plcc(score[has_label], label[has_label]) if has_label.sum() >= 3 else float("nan"),
                 "pairs_by_kind": {k: _pair_accuracy(score, pp) for k, pp in sorted(kinds.items())}}
        table.append(entry)
    return table


def fit_card_terms(model, realdata, work, *, labelled=(), phantoms: int = 6, seed: int = 20261130,
                   balance: str = BALANCE, log=_log) -> dict:
    """Fit the measured terms of ``model`` (a :class:`tomoqc.models.tiqa.TiqaModel`); return the card entry.

    ``realdata`` is the real-data folder; ``labelled`` optional dataset folders with labels
    (``tomoqc label``): their images join the pairs (levels of one reference) and the label
    term of :func:`tomoqc.models.measured.fit_measured_terms`, and give the severity lines.
    ``work`` caches the scored tables (:func:`fit_tables`) so that a rerun only refits.
    """
    from tomoqc.models.measured import INDICATORS, ONSET, MeasuredTerms, fit_measured_terms, fit_severity_line

    rows, real_rows, lab_rows = fit_tables(model, realdata, work, labelled=labelled, phantoms=phantoms, seed=seed,
                                           log=log)
    refs = list(dict.fromkeys(r["reference"] for r in rows))  # the reference slices, in the order scored
    rows = rows + real_rows + lab_rows
    # the rotation-axis series only fit the relative term (below); the absolute terms are
    # fitted without them and without the relative indicators
    center_rows = [r for r in rows if r["kind"] == RELATIVE_KIND]
    rows = [r for r in rows if r["kind"] != RELATIVE_KIND]
    # the onset indicators (limited angle, sparse views) have their own series and fits (tomoqc.train.onset_terms)
    absolute = [k for k in INDICATORS if k not in RELATIVE and k not in ONSET]
    score = np.array([r["network"] for r in rows])
    labels = np.array([r["label"] for r in rows], np.float64)
    ind = {k: np.array([r[k] for r in rows], np.float64) for k in absolute}
    clean = np.array([r["level"] == 0 and not r["kind"].startswith(("img_", "real_stripes")) for r in rows])
    typical = {k: float(np.nanmedian(ind[k][clean])) for k in absolute}
    typical.update({k: AXIS_RESOLUTION for k in RELATIVE})
    groups = series_groups(rows)
    pairs = series_pairs(rows, groups)
    pw = pair_weights([rows[a]["kind"] for a, _ in pairs], balance=balance)
    fit = fit_measured_terms(score, ind, np.array(pairs), typical=typical, weights=pw, labels=labels,
                             label_weight=LABEL_WEIGHT, l2=L2, tau=TAU, power=POWER)
    log(f"typical {typical}")
    log(f"fit {fit}")
    sev = {}
    levels = np.array([r["level"] for r in rows])
    # severities read 0 up to where clean slices reach: the line is anchored at the 90th
    # percentile of the indicator over the clean slices (truly clean phantoms included)
    clean_all = np.array([r["level"] == 0 and r["kind"] != "real_stripes" for r in rows])
    anchors = {k: float(np.nanquantile(ind[k][clean_all], 0.9)) for k in absolute}
    for k, kinds in (("noise", ("dose", "lab_noise")), ("blur", ("blur", "lab_blur")), ("ring", ("ring", "lab_ring")),
                     ("streak", ("streak", "lab_streak"))):
        # the indicator's own series and, where labelled sets exist, their clean images as level 0
        sel = np.array([r["kind"] in kinds or r["kind"] == "lab_none" for r in rows])
        sev[k] = fit_severity_line(ind[k][sel], levels[sel], anchor=anchors[k])
    log(f"severity lines {sev}")
    weights = {k: (0.0 if k in RELATIVE or k in ONSET else v) for k, v in fit["weights"].items()}
    rel = fit_relative_weight(MeasuredTerms(weights, typical, power=POWER), center_rows, "axis", l2=L2, tau=TAU)
    log(f"relative axis term: {rel}")
    weights["axis"] = rel["weight"]
    # the model's own onset terms, fitted on their own series, are kept as they are
    kept = getattr(model, "measured_terms", None)
    onset = [k for k in (kept.onset if kept is not None else ()) if kept.weights.get(k, 0.0) > 0]
    for k in onset:
        weights[k], typical[k] = kept.weights[k], kept.typical[k]
    terms = MeasuredTerms(weights, typical, severity=sev, relative=RELATIVE, power=POWER, onset=onset,
                          info={f"{k}_fit": kept.info[f"{k}_fit"] for k in onset if f"{k}_fit" in kept.info},
                          holds={k: kept.holds[k] for k in onset if k in kept.holds})
    comb = terms.combine(score, ind)
    table = {}
    for (_, kind), idx in groups.items():
        t = table.setdefault(kind, [0, 0, 0])
        for a in idx:
            for b in idx:
                if rows[a]["level"] < rows[b]["level"]:
                    t[0] += 1
                    t[1] += score[a] > score[b]
                    t[2] += comb[a] > comb[b]
    by_kind = {kind: {"pairs": n, "network": round(net / n, 4), "combined": round(c / n, 4)}
               for kind, (n, net, c) in sorted(table.items())}
    for kind, v in by_kind.items():
        log(f"{kind:12s} pairs {v['pairs']:4d}  network {v['network']:.3f}  combined {v['combined']:.3f}")
    entry = terms.to_card()
    entry.update({
        "fitted_on": (f"series of {len(refs)} references ({sum(not r.startswith('phantom') for r in refs)} real "
                      f"slices of {{{', '.join(s for s, _ in TRAIN_SAMPLES)}}} and {phantoms} phantoms) "
                      "re-projected and scanned with rising dose loss, fewer projections, detector blur and "
                      "detector-gain defects, phantoms also image-domain; and real measured data degraded "
                      f"directly ({', '.join(f'{k} {s}' for k, s in TRAIN_SERIES)}), float and 8-bit exports"),
        "pairs": fit["pairs"], "pair_accuracy": fit["pair_accuracy"],
        "pair_accuracy_network": fit["pair_accuracy_network"], "label_rmse": fit["label_rmse"],
        "labelled": [str(Path(d).name) for d in labelled], "by_kind": by_kind, "seed": seed, "balance": balance,
        "relative_fit": rel,
    })
    return entry
