"""Which no-reference measure of ONE reconstructed slice tells a wrong centre of rotation?

Real slices (Diamond I13 scan 24737 detector rows from raw projections; HTC2022 acrylic
discs rebinned to parallel beam) are reconstructed by FBP with the axis found by
:func:`tomoqc.realdata.find_center` and with the axis moved by -8 ... +8 detector pixels,
and, at the found axis, with the other real degradations of :mod:`tomoqc.realdata` (fewer
photons, fewer angles, detector blur, gain-mismatched columns). Candidate indicators are
computed from the reconstructed slice alone, on the float slice and on an 8-bit export of
it made by percentile clipping; the script prints, for each, whether its best value sits
at the found axis, how it ranks with |offset|, and how it answers the other impairments.

Run (about 20 minutes on 2 busy cores the first time, 15 of them for the indicators;
reconstructions are cached under bench-out/center_indicators/recons, the indicator values
in bench-out/center_indicators/summary.json; ``--tables-only`` reprints from the latter)::

    nice -n 5 .venv/bin/python benchmarks/center_indicators.py --realdata ../shared/realdata

Why the obvious measures fail, and what the physics offers
----------------------------------------------------------
With parallel projections over ``[0, pi)`` an axis error of ``d`` detector pixels shifts
every projection by ``d``; by the Fourier-slice theorem the slice spectrum is multiplied by
``exp(-2 pi i d |k| sgn(k_y))`` (``k`` in cycles per detector pixel, ``k_y`` its component
along the rays of the first projection: the detector normals ``(cos t, sin t)``, ``t`` in
``[0, pi)``, cover only the half-plane ``k_y >= 0``, the other half is its mirror). That is
an **all-pass** filter: the power spectrum, hence any second-order statistic (noise power,
gradient energy, autocorrelation, blur measured from spectra) does not change, to first
order. Only higher-order statistics (the phase) see it: histogram entropy and negative
values (Donath et al. 2006), total variation / gradient sparsity (the L2 norm of the
gradient is fixed, the L1 norm grows as edges split into arcs), kurtosis of detail
coefficients (phase scrambling makes an image look more Gaussian; Field 1987, Simoncelli &
Olshausen 2001). A sharper idea follows from the same formula: **refocusing**. Apply the
inverse phase filter for trial offsets to the slice itself and find the one that makes it
sparsest; its magnitude estimates the axis error in pixels, with no content-dependent
scale (the indicator ``refocus_px`` below). Noise, blur and rings are symmetric in the
trial offset, so they should not bias it.

References
----------
Donath, T., Beckmann, F., Schreyer, A. (2006). Automated determination of the center of
rotation in tomography data. *J. Opt. Soc. Am. A* 23(5), 1048-1057.
doi:10.1364/JOSAA.23.001048 (image metrics: histogram entropy, integral of negative
values, total variation/gradient).
Kak, A. C., Slaney, M. (1988). *Principles of Computerized Tomographic Imaging*, ch. 3
(Fourier-slice theorem). doi:10.1137/1.9780898719277
Hoyer, P. O. (2004). Non-negative matrix factorization with sparseness constraints.
*J. Mach. Learn. Res.* 5, 1457-1469 (the L1/L2 sparseness measure).
Field, D. J. (1987). Relations between the statistics of natural images and the response
properties of cortical cells. *J. Opt. Soc. Am. A* 4(12), 2379. doi:10.1364/JOSAA.4.002379
(sparse, high-kurtosis filter responses of natural images).
Vo, N. T. et al. (2014). *Opt. Express* 22(16), 19078. doi:10.1364/OE.22.019078 (the
doubled/"tuning-fork" arcs of a wrong axis in 180-degree scans).
Data: Diamond Light Source Savu test data (scan 24737, Apache-2.0/GPL-3.0); Meaney et al.
(2022), HTC 2022, doi:10.5281/zenodo.6984868 (CC-BY-4.0).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi
from scipy import stats

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tomoqc import realdata as rd  # noqa: E402
from tomoqc.metrics import nr  # noqa: E402
from tomoqc.metrics.axis import REACH as AXIS_REACH, STEP as AXIS_STEP, axis_error  # noqa: E402
from tomoqc.preprocess import normalize_slice  # noqa: E402

OFFSETS = (-8, -4, -2, -1, 0, 1, 2, 4, 8)
SAVU_ROWS = (66, 76, 86, 96, 106, 116, 126, 134)
HTC_DISCS = ("01a", "02b", "03c", "05b", "07a", "ta")
#: the other impairments at the found axis: (label, kind, parameter)
DEGRADATIONS = (("dose/4", "dose", 0.25), ("angles/4", "angles", 4), ("blur2", "blur", 2.0),
                ("gain2", "gain", 2.0))
HTC_SIZE = 512


# ------------------------------------------------------------------ reconstructions
def _savu_series(src: rd.RealSources, row: int, seed: int) -> tuple[dict, float]:
    """Reconstructions of Savu detector ``row``: offsets and degradations (pixel 0.5 grid)."""
    d = src.savu()
    th = d["angles"]
    base = rd.savu_sinogram(d, row)
    c0 = rd.find_center(base, th)
    nd = base.shape[1]
    size = int(nd / rd.SAVU_PIXEL)

    def rec(s, a=th, c=c0):
        return rd.fbp(s, a, center=c, size=size, pixel=rd.SAVU_PIXEL)

    out = {f"off{o:+d}": rec(base, c=c0 + o) for o in OFFSETS}
    for label, kind, par in DEGRADATIONS:
        if kind == "dose":
            cnt = rd.thin_counts(d["counts"][:, row], par, seed, dark=d["dark"][row])
            out[label] = rec(rd.savu_sinogram(d, row, counts=cnt, fraction=par))
        elif kind == "angles":
            s, a = rd.subsample_angles(base, th, int(par))
            out[label] = rec(s, a)
        elif kind == "blur":
            out[label] = rec(rd.detector_blur(base, par))
        elif kind == "gain":
            out[label] = rec(rd.gain_mismatch(base, par, seed, extent=(20, 140)))
    return out, c0


def _htc_series(src: rd.RealSources, name: str, seed: int) -> tuple[dict, float]:
    """Reconstructions of HTC2022 disc ``name`` (parallel rebinning, 512 px)."""
    sino, th, _ = src.htc(name)
    c0 = rd.find_center(sino, th)
    nd = sino.shape[1]
    ext = (nd // 2 - 230, nd // 2 + 230)

    def rec(s, a=th, c=c0):
        return rd.fbp(s, a, center=c, size=HTC_SIZE)

    out = {f"off{o:+d}": rec(sino, c=c0 + o) for o in OFFSETS}
    for label, kind, par in DEGRADATIONS:
        if kind == "dose":
            out[label] = rec(rd.add_dose_noise(sino, par, rd.HTC2022_COUNTS, seed))
        elif kind == "angles":
            s, a = rd.subsample_angles(sino, th, int(par))
            out[label] = rec(s, a)
        elif kind == "blur":
            out[label] = rec(rd.detector_blur(sino, par))
        elif kind == "gain":
            out[label] = rec(rd.gain_mismatch(sino, par, seed, kind="partial", extent=ext))
    return out, c0


def load_series(src, sample: str, cache: Path, seed: int = 0) -> tuple[dict, float, float]:
    """``(recons by label, found centre, image pixels per detector pixel)``, cached as npz."""
    fam, _, name = sample.partition(":")
    f = cache / f"{fam}_{name}.npz"
    if f.exists():
        z = np.load(f)
        recs = {k: z[k] for k in z.files if not k.startswith("_")}
        return recs, float(z["_center"]), float(z["_scale"])
    if fam == "savu":
        recs, c0 = _savu_series(src, int(name), seed)
        scale = 1.0 / rd.SAVU_PIXEL
    else:
        recs, c0 = _htc_series(src, name, seed)
        scale = 1.0
    cache.mkdir(parents=True, exist_ok=True)
    tmp = f.with_suffix(".tmp.npz")
    np.savez(tmp, _center=c0, _scale=scale, **recs)
    tmp.replace(f)
    return recs, c0, scale


def export_8bit(img) -> np.ndarray:
    """The 8-bit export a user would make: 0.5-99.5 percentile clip to 0..255, rounded."""
    return np.rint(normalize_slice(img) * 255.0).astype(np.uint8)


# ------------------------------------------------------------------------ indicators
def _inner(a: np.ndarray, margin: float = 2.0) -> np.ndarray:
    """The disc inscribed in the square slice (FBP support) less ``margin`` px, as a mask."""
    h, w = a.shape
    yy, xx = np.mgrid[:h, :w]
    r = min(h, w) / 2.0 - margin
    return (yy - (h - 1) / 2) ** 2 + (xx - (w - 1) / 2) ** 2 <= r * r


def _grad(u: np.ndarray):
    gy = np.diff(u, axis=0)[:, :-1]
    gx = np.diff(u, axis=1)[:-1, :]
    return np.hypot(gx, gy)


def histogram_entropy(img) -> float:
    """Shannon entropy (bits) of the 256-bin histogram of the robustly normalised slice.

    Donath et al. 2006: a correct axis concentrates grey values into few phases (lower).
    """
    u = normalize_slice(img)[_inner(np.asarray(img))]
    p = np.bincount(np.minimum((u * 256).astype(np.int64), 255), minlength=256).astype(float)
    p = p[p > 0] / p.sum()
    return float(-(p * np.log2(p)).sum())


def negativity(img) -> float:
    """Integral of negative values over the integral of |values| (Donath et al. 2006).

    Meaningful for float reconstructions only (an 8-bit export has no negative values).
    """
    a = np.asarray(img, np.float64)[_inner(np.asarray(img))]
    tot = np.abs(a).sum()
    return float(np.clip(-a, 0, None).sum() / tot) if tot > 0 else 0.0


def air_undershoot(img) -> float:
    """Mean depth of values below the air (background) peak, over the air-to-material range.

    The air level is the mode of the lower half of the 256-bin histogram of the normalised
    slice; undershoot ``mean(max(air - u, 0))`` is then divided by ``(1 - air)``. Works on
    8-bit exports where no value is negative (the percentile clip keeps the 0.5 % tail).
    Noise widens the air peak symmetrically and raises it too (a known confound).
    """
    u = normalize_slice(img)[_inner(np.asarray(img))].astype(np.float64)
    h, e = np.histogram(u, bins=256, range=(0, 1))
    h = ndi.uniform_filter1d(h.astype(float), 5)
    air = (e[np.argmax(h[:128])] + e[np.argmax(h[:128]) + 1]) / 2
    return float(np.clip(air - u, 0, None).mean() / max(1.0 - air, 1e-6))


def total_variation(img) -> float:
    """Mean gradient magnitude of the normalised slice (Donath et al. 2006: TV)."""
    u = normalize_slice(img).astype(np.float64)
    g = _grad(u)[_inner(u)[:-1, :-1]]
    return float(g.mean())


def gradient_sparsity(img) -> float:
    """``mean|grad| / rms|grad|`` (Hoyer 2004's L1/L2, in [0, 1]; lower is sparser).

    Scale-free. The L2 norm is fixed by the power spectrum, which an axis error (an
    all-pass phase filter) leaves unchanged, so the ratio sees only the phase.
    """
    u = normalize_slice(img).astype(np.float64)
    g = _grad(u)[_inner(u)[:-1, :-1]]
    rms = math.sqrt(float((g * g).mean()))
    return float(g.mean() / rms) if rms > 0 else 1.0


def detail_kurtosis(img) -> float:
    """Excess kurtosis of the finest Haar-like details (x and y differences, pooled).

    Sparse edges give heavy tails; an axis error scrambles phase and lowers it (higher is
    better, like natural-image sparsity, Field 1987).
    """
    u = normalize_slice(img).astype(np.float64)
    m = _inner(u)[:-1, :-1]
    dx = np.diff(u, axis=1)[:-1, :][m]
    dy = np.diff(u, axis=0)[:, :-1][m]
    return float(stats.kurtosis(np.concatenate([dx, dy]), fisher=True))


def refocus(img) -> tuple[float, float, float]:
    """``(|d|, d, gain)``: the refocusing estimate of :func:`tomoqc.metrics.axis.axis_error`
    (image pixels), ``|d|`` even where the search ended at its limit (no answer)."""
    est = axis_error(img)
    return abs(est.signed), est.signed, est.gain


def tomoqc_indicators(img) -> dict:
    """tomoqc's own measured indicators, for the record of how they answer an axis error."""
    return {"noise_index": nr.noise_index(img), "blur_index": nr.blur_index(img)}


#: name -> (function, orientation: +1 when higher means worse, float_only)
INDICATORS = {
    "entropy": (histogram_entropy, +1, False),
    "negativity": (negativity, +1, True),
    "air_undershoot": (air_undershoot, +1, False),
    "tv": (total_variation, +1, False),
    "grad_L1/L2": (gradient_sparsity, +1, False),
    "detail_kurt": (detail_kurtosis, -1, False),
    "refocus_px_guard": (None, +1, False),
    "refocus_px": (None, +1, False),
    "refocus_gain": (None, +1, False),
    "noise_index": (None, +1, False),
    "blur_index": (None, +1, False),
}


def evaluate(img, *, scale: float) -> dict:
    """All indicators of one slice (``scale``: image pixels per detector pixel)."""
    out = {}
    for name, (fn, _, float_only) in INDICATORS.items():
        if fn is not None:
            if float_only and np.asarray(img).dtype == np.uint8:
                continue
            out[name] = fn(img)
    mag, d, gain = refocus(img)
    out["refocus_px"] = mag / scale  # in detector pixels, like the offsets
    # a minimum at the end of the search is no estimate (noise- or streak-dominated slice)
    out["refocus_px_guard"] = 0.0 if mag >= AXIS_REACH - AXIS_STEP else mag / scale
    out["refocus_signed"] = d / scale
    out["refocus_gain"] = gain
    out.update(tomoqc_indicators(img))
    return out


# ----------------------------------------------------------------------- the table
def summarise(results: dict, names, variant: str) -> list[dict]:
    """Per indicator: share with best at |offset| <= 1, Spearman with |offset|, misfires."""
    rows = []
    offs = np.array(OFFSETS, float)
    for name in names:
        sign = INDICATORS[name][1]
        near, rhos, mono, pooled_x, pooled_y, effects = 0, [], 0, [], [], []
        misfire = {lab: [] for lab, _, _ in DEGRADATIONS}
        n = 0
        base0 = []
        for sample, r in results.items():
            v = r[variant]
            if name not in v["off+0"]:
                continue
            n += 1
            y = sign * np.array([v[f"off{o:+d}"][name] for o in OFFSETS])
            best = offs[np.argmin(y)]
            near += abs(best) <= 1
            rho = stats.spearmanr(np.abs(offs), y).statistic
            rhos.append(0.0 if np.isnan(rho) else rho)
            # monotone: non-decreasing outward on both sides of 0
            i0 = OFFSETS.index(0)
            right, left = y[i0:], y[i0::-1]
            mono += bool(np.all(np.diff(right) >= 0) and np.all(np.diff(left) >= 0))
            pooled_x.extend(np.abs(offs))
            pooled_y.extend(y - y[i0])
            step4 = 0.5 * (y[OFFSETS.index(4)] + y[OFFSETS.index(-4)]) - y[i0]
            effects.append(step4)
            base0.append(y[i0])
            for lab in misfire:
                misfire[lab].append((sign * v[lab][name] - y[i0]) / step4 if step4 != 0 else np.nan)
        if n == 0:
            continue
        spread = float(np.std(base0))
        rows.append({
            "indicator": name, "n": n, "best_within_1px": near / n,
            "rho_median": float(np.median(rhos)),
            "rho_pooled": float(stats.spearmanr(pooled_x, pooled_y).statistic),
            "monotone": mono / n,
            "effect4_over_spread": float(np.median(effects) / spread) if spread > 0 else np.inf,
            **{f"mis_{lab}": float(np.nanmedian(misfire[lab])) for lab in misfire},
            # the worst slice: the largest move either way, in the same units
            **{f"worst_{lab}": float(np.asarray(misfire[lab])[np.nanargmax(np.abs(misfire[lab]))])
               for lab in misfire},
        })
    return rows


def print_table(rows, title):
    labs = [lab for lab, _, _ in DEGRADATIONS]
    print(f"\n== {title}")
    print("  oriented so that higher = worse. best<=1px: share of slices whose best value is at |offset| <= 1;"
          " rho_med: median per-slice Spearman with |offset|;\n  rho_pool: Spearman of (ind - ind(0)) with"
          " |offset| pooled over slices; monot: share rising on both sides; eff4/sprd: median (ind(+-4) - ind(0))"
          " over the spread of ind(0) across slices;\n  X median/worst: (ind(X) - ind(0)) / (ind(+-4px) - ind(0))"
          " over slices, 0 flat, > 0 reads X as worse, < 0 reads X as better")
    head = f"{'indicator':16s} {'n':>3s} {'best<=1px':>9s} {'rho_med':>7s} {'rho_pool':>8s} {'monot':>6s} " \
           f"{'eff4/sprd':>9s} " + " ".join(f"{lab + ' med/worst':>13s}" for lab in labs)
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['indicator']:16s} {r['n']:3d} {r['best_within_1px']:9.2f} {r['rho_median']:7.2f} "
              f"{r['rho_pooled']:8.2f} {r['monotone']:6.2f} {r['effect4_over_spread']:9.2f} "
              + " ".join(f"{r['mis_' + lab]:6.2f}/{r['worst_' + lab]:<6.2f}" for lab in labs))


def plot(results, names, variant, path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(names), figsize=(6 * len(names), 4.5))
    for ax, name in zip(np.atleast_1d(axes), names):
        for sample, r in results.items():
            v = r[variant]
            if name not in v["off+0"]:
                continue
            y = [v[f"off{o:+d}"][name] for o in OFFSETS]
            ax.plot(OFFSETS, y, "-o", ms=3, label=sample,
                    color="C0" if sample.startswith("savu") else "C3", alpha=0.7)
        ax.set_xlabel("axis offset from find_center (detector px)")
        ax.set_ylabel(name)
        ax.set_title(f"{name} ({variant}); blue Savu rows, red HTC2022 discs")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--realdata", default=str(ROOT.parent / "shared" / "realdata"))
    ap.add_argument("--out", default=str(ROOT / "bench-out" / "center_indicators"))
    ap.add_argument("--savu-rows", default=",".join(map(str, SAVU_ROWS)))
    ap.add_argument("--htc", default=",".join(HTC_DISCS))
    ap.add_argument("--tables-only", action="store_true",
                    help="print the tables and redraw the plot from OUT/summary.json")
    a = ap.parse_args(argv)
    out = Path(a.out)
    cache = out / "recons"
    src = rd.RealSources(Path(a.realdata))
    samples = [f"savu:{r}" for r in a.savu_rows.split(",") if r] + [f"htc:{h}" for h in a.htc.split(",") if h]
    results, centres = {}, {}
    if a.tables_only:
        saved = json.loads((out / "summary.json").read_text())
        results, centres = saved["results"], saved["centres"]
        samples = []
    for s in samples:
        recs, c0, scale = load_series(src, s, cache)
        centres[s] = c0
        res = {"float": {}, "8bit": {}}
        for lab, img in recs.items():
            res["float"][lab] = evaluate(img, scale=scale)
            res["8bit"][lab] = evaluate(export_8bit(img), scale=scale)
        results[s] = res
        sr = [res["float"][f"off{o:+d}"]["refocus_signed"] for o in OFFSETS]
        print(f"{s}: centre {c0:.2f}; refocus signed (det px) at offsets {OFFSETS}: "
              + " ".join(f"{x:+.1f}" for x in sr), flush=True)
    names = list(INDICATORS)
    all_rows = {}
    for variant in ("float", "8bit"):
        rows = summarise(results, names, variant)
        all_rows[variant] = rows
        print_table(rows, f"{variant} slices ({len(results)}: {', '.join(results)})")
    # rank: share within 1 px, then pooled rho, on 8-bit (the harder case)
    ranked = sorted(all_rows["8bit"], key=lambda r: (-r["best_within_1px"], -r["rho_pooled"]))
    best2, families = [], set()
    for r in ranked:  # one per idea: refocus_px, refocus_px_guard and refocus_gain are one
        fam = r["indicator"].split("_")[0]
        if r["indicator"] in ("noise_index", "blur_index") or fam in families:
            continue
        families.add(fam)
        best2.append(r["indicator"])
    best2 = best2[:2]
    png = out / "center_indicators.png"
    plot(results, best2, "8bit", png)
    # the refocus estimate against the true offset (calibration)
    est, true = [], []
    for s, r in results.items():
        for o in OFFSETS:
            est.append(r["float"][f"off{o:+d}"]["refocus_signed"])
            true.append(o)
    slope = np.polyfit(true, est, 1)
    print(f"\nrefocus_signed vs offset (float, all slices): slope {slope[0]:+.3f}, intercept {slope[1]:+.3f}, "
          f"Pearson r {np.corrcoef(true, est)[0, 1]:+.3f}")
    (out / "summary.json").write_text(json.dumps({"centres": centres, "rows": all_rows, "results": results},
                                                 indent=1, default=float))
    print(f"best two (8-bit): {best2}; plot {png}; numbers {out / 'summary.json'}")


if __name__ == "__main__":
    main()
