"""Per-volume summaries, aggregated reports, plots and the QC verdict.

:func:`summarize` turns one quality output (``<volume>.quality.zarr`` written by
:func:`tomoqc.pipeline.score`) into a few numbers a person or a script can act
on; :func:`report` does it for any number of outputs and writes
``report.csv``, ``report.json``, one PNG per volume and an ``index.html`` that
ties them together.

Verdict
-------
In this order:

- *unknown* when no slice could be scored;
- *uncertain* when more than :data:`OOD_SHARE_MAX` (20 %) of the scored slices are
  out of distribution (flag 4: the input is unlike anything the model was trained
  on, so its scores, low or high, are not to be trusted);
- *fail* when the median of the slice scores is below the threshold
  (``fail_below``, or :data:`DEFAULT_THRESHOLD` = 3, "average" on the TIQA 1-5
  scale, when none is given), unless the failure hinges on the noise reading:
  *uncertain* when more than :data:`OOD_SHARE_MAX` of the scored slices are flagged
  noise confounded (flag 6: sharp structure a few pixels across read as noise) and
  their median score plus ``noise_confound_gap`` reaches the threshold;
- *uncertain* when the median ``score_uncertainty`` exceeds
  :data:`UNCERTAINTY_MAX` (0.5 score units: the score could then be a whole grade
  away, as likely as not, from what the model says);
- *pass* otherwise.

Only an explicit ``fail_below`` turns a failure into an error
(:class:`tomoqc.errors.QCFailed`, exit code 3 on the command line); *uncertain*
never does: it asks a person to look. Outputs of earlier versions, without
``score_uncertainty``, are judged on the score alone.
"""

from __future__ import annotations

import csv
import html
import io
import json
import os
import sys
import types
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from tomoqc.errors import InputError, OptionError, QCFailed

__all__ = ["DEFAULT_THRESHOLD", "UNCERTAINTY_MAX", "OOD_SHARE_MAX", "VERDICTS", "summarize", "report",
           "plot_volume", "worst_ranges"]

DEFAULT_THRESHOLD = 3.0
#: median score_uncertainty (score units) above which a volume is ``uncertain``
UNCERTAINTY_MAX = 0.5
#: share of the scored slices out of distribution above which a volume is ``uncertain``
OOD_SHARE_MAX = 0.2
VERDICTS = ("pass", "fail", "uncertain", "unknown")
#: the value of ``flag`` that marks an out-of-distribution slice (tomoqc.pipeline.FLAG_OOD)
_FLAG_OOD = 4
#: the value of ``flag`` that marks a slice whose noise reading may be structure (tomoqc.pipeline)
_FLAG_NOISE_CONFOUNDED = 6
#: a distortion is named dominant only when its median severity reaches this value
SEVERITY_FLOOR = 0.25
#: a measured rotation-axis error (px) from which the report names it
AXIS_WARN_PX = 1.5
#: the lock file a report writer holds inside the report folder (see tomoqc.locks)
REPORT_LOCK = ".tomoqc-report.lock"
MAX_RANGES = 5
N_THUMBNAILS = 4

CSV_FIELDS = [
    "path",
    "output",
    "slices",
    "slices_total",
    "flagged",
    "median_score",
    "p5_score",
    "min_score",
    "median_score_uncertainty",
    "ood_fraction",
    "noise_confounded_fraction",
    "inclusions_filled_fraction",
    "worst_slices",
    "dominant_distortion",
    "severity_noise",
    "severity_blur",
    "severity_ring",
    "median_ring_index",
    "missing_wedge_deg",
    "view_spacing_deg",
    "axis_error_px",
    "verdict",
    "threshold",
    "model_id",
]


def _open(ds_or_path):
    import xarray as xr

    from tomoqc.pipeline import open_quality

    if isinstance(ds_or_path, xr.Dataset):
        if ds_or_path.attrs.get("complete") is not True:
            raise InputError(None, "incomplete quality output (an interrupted run); rerun `tomoqc score`")
        return ds_or_path, ds_or_path.encoding.get("source", "")
    return open_quality(ds_or_path), str(Path(ds_or_path))


def worst_ranges(z, scores, threshold, *, max_ranges: int = MAX_RANGES) -> list[list[int]]:
    """Runs of neighbouring scored slices whose score is below ``threshold``.

    Slices are neighbours when they are consecutive in ``z`` order (with ``--step``
    they are ``step`` apart). When no slice is below ``threshold``, the slices at or
    below the 5th percentile are used instead, so that a report always points at the
    weakest part of a volume.

    Returns
    -------
    list of [first_z, last_z]
        At most ``max_ranges`` runs, worst (lowest minimum score) first.
    """
    z = np.asarray(z)
    s = np.asarray(scores, dtype=np.float64)
    ok = np.isfinite(s)
    if not ok.any():
        return []
    bad = ok & (s < threshold)
    if not bad.any():
        bad = ok & (s <= np.percentile(s[ok], 5))
    runs = []
    i = 0
    n = len(s)
    while i < n:
        if bad[i]:
            j = i
            while j + 1 < n and bad[j + 1]:
                j += 1
            runs.append((float(np.min(s[i : j + 1])), int(z[i]), int(z[j])))
            i = j + 1
        else:
            i += 1
    runs.sort()
    return [[a, b] for _, a, b in runs[:max_ranges]]


def _fmt_ranges(ranges) -> str:
    return " ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in ranges)


def _r(x, nd=3):
    return None if x is None or not np.isfinite(x) else round(float(x), nd)


def summarize(ds_or_path, *, fail_below: float | None = None) -> dict:
    """Summarise one quality output.

    Parameters
    ----------
    ds_or_path : xarray.Dataset or path
        A complete quality output.
    fail_below : float, optional
        The verdict threshold (default :data:`DEFAULT_THRESHOLD`).

    Returns
    -------
    dict
        ``path`` (the scored volume), ``output`` (the quality output), ``slices``
        (slices with a score), ``slices_total``, ``flagged`` (slices with a flag),
        ``median_score``, ``p5_score``, ``min_score``, ``worst_slices`` (list of
        [first, last] slice ranges), ``dominant_distortion`` (``noise``, ``blur``,
        ``ring`` or ``none``: the highest median severity over the slices below the
        threshold, or over all scored slices when none is; ``limited angle`` when those
        slices' median missing wedge is past the wedge term's onset, else ``sparse views``
        when their median view spacing is past the spacing term's,
        :data:`tomoqc.train.onset_terms.ONSET_DEGREES`: the severity head knows neither
        impairment), ``missing_wedge_deg`` (median :func:`tomoqc.metrics.nr.missing_wedge` of
        the scored slices; None for outputs without one), ``view_spacing_deg`` (median
        :func:`tomoqc.metrics.nr.view_spacing`, likewise), ``severity`` (median per distortion),
        ``median_ring_index`` (median :func:`tomoqc.metrics.rings.ring_index` of the scored
        slices; None for outputs without one), ``axis_error_px`` (the volume's rotation-axis
        error measured by refocusing, :mod:`tomoqc.metrics.axis`; None when the model does
        not measure it), ``median_score_uncertainty`` (median
        ``score_uncertainty`` of the scored slices, score units; None for outputs without
        one), ``ood_fraction`` (share of the scored slices flagged out of distribution),
        ``noise_confounded_fraction`` (share flagged noise confounded),
        ``inclusions_filled_fraction`` (share of the scored slices whose dense inclusions were
        filled before scoring, :mod:`tomoqc.inclusions`; None for outputs without
        ``inclusion_fraction``),
        ``verdict`` (``pass``, ``fail``, ``uncertain`` or ``unknown``: see the module
        documentation), ``threshold``, ``model_id``.
    """
    ds, where = _open(ds_or_path)
    threshold = DEFAULT_THRESHOLD if fail_below is None else float(fail_below)
    s = np.asarray(ds["score"].values, dtype=np.float64)
    z = np.asarray(ds["z"].values)
    flag = np.asarray(ds["flag"].values) if "flag" in ds else np.zeros(len(s), np.int8)
    ok = np.isfinite(s)
    # which distortion drives the low scores: severities of the slices below the
    # threshold when there are any, else of every scored slice
    low = ok & (s < threshold)
    focus = low if low.any() else ok
    sev, sev_focus = {}, {}
    if "severity" in ds:
        sv = np.asarray(ds["severity"].values, dtype=np.float64)
        names = [str(d) for d in ds["distortion"].values]
        for j, name in enumerate(names):
            col = sv[:, j][ok & np.isfinite(sv[:, j])]
            sev[name] = _r(np.median(col)) if col.size else None
            colf = sv[:, j][focus & np.isfinite(sv[:, j])]
            sev_focus[name] = float(np.median(colf)) if colf.size else None
    ring = None
    if "ring_index" in ds:  # outputs of earlier versions have none
        ri = np.asarray(ds["ring_index"].values, dtype=np.float64)[ok]
        ri = ri[np.isfinite(ri)]
        ring = round(float(np.median(ri)), 5) if ri.size else None
    dominant = "none"
    valid = {k: v for k, v in sev_focus.items() if v is not None}
    if valid:
        k = max(valid, key=valid.get)
        if valid[k] >= SEVERITY_FLOOR:
            dominant = k
    from tomoqc.train.onset_terms import ONSET_DEGREES

    angular = {}
    # the impairments of the angular sampling past their onsets are named (a limited angle
    # over a sparse one: its term is checked last)
    for var, term, named in (("view_spacing", "spacing", "sparse views"), ("missing_wedge", "wedge", "limited angle")):
        angular[var] = None
        if var not in ds:  # outputs of earlier versions have none
            continue
        mw = np.asarray(ds[var].values, dtype=np.float64)
        w_all, w_focus = mw[ok & np.isfinite(mw)], mw[focus & np.isfinite(mw)]
        angular[var] = round(float(np.median(w_all)), 1) if w_all.size else None
        if w_focus.size and float(np.median(w_focus)) > ONSET_DEGREES[term]:
            dominant = named
    unc = None
    if "score_uncertainty" in ds:  # outputs of earlier versions have none
        u = np.asarray(ds["score_uncertainty"].values, dtype=np.float64)[ok]
        u = u[np.isfinite(u)]
        unc = float(np.median(u)) if u.size else None
    ood = float(np.count_nonzero(flag[ok] == _FLAG_OOD) / ok.sum()) if ok.any() else 0.0
    confounded = float(np.count_nonzero(flag[ok] == _FLAG_NOISE_CONFOUNDED) / ok.sum()) if ok.any() else 0.0
    filled = None
    if "inclusion_fraction" in ds:  # outputs of earlier versions have none
        inc = np.asarray(ds["inclusion_fraction"].values, dtype=np.float64)
        filled = float(np.count_nonzero(ok & (inc > 0)) / ok.sum()) if ok.any() else 0.0
    if ok.any():
        med = float(np.median(s[ok]))
        p5 = float(np.percentile(s[ok], 5))
        mn = float(np.min(s[ok]))
        lifted = med
        if "noise_confound_gap" in ds:  # outputs of earlier versions have none
            gap = np.asarray(ds["noise_confound_gap"].values, dtype=np.float64)[ok]
            lifted = float(np.median(s[ok] + np.where(np.isfinite(gap), np.maximum(gap, 0.0), 0.0)))
        if ood > OOD_SHARE_MAX:
            verdict = "uncertain"
        elif med < threshold:
            # a failure that only the noise reading of sharp structure makes is not a verdict
            verdict = "uncertain" if confounded > OOD_SHARE_MAX and lifted >= threshold else "fail"
        elif unc is not None and unc > UNCERTAINTY_MAX:
            verdict = "uncertain"
        else:
            verdict = "pass"
    else:
        med = p5 = mn = float("nan")
        verdict = "unknown"
    return {
        "path": ds.attrs.get("input", "") or "",
        "output": str(Path(where).resolve()) if where else "",
        "slices": int(ok.sum()),
        "slices_total": int(len(s)),
        "flagged": int(np.count_nonzero(flag)),
        "median_score": _r(med),
        "p5_score": _r(p5),
        "min_score": _r(mn),
        "median_score_uncertainty": None if unc is None else _r(unc),
        "ood_fraction": round(ood, 4),
        "noise_confounded_fraction": round(confounded, 4),
        "inclusions_filled_fraction": None if filled is None else round(filled, 4),
        "worst_slices": worst_ranges(z, s, threshold),
        "dominant_distortion": dominant,
        "severity": sev,
        "median_ring_index": ring,
        "missing_wedge_deg": angular["missing_wedge"],
        "view_spacing_deg": angular["view_spacing"],
        "axis_error_px": _axis_error(ds),
        "verdict": verdict,
        "threshold": threshold,
        "model_id": ds.attrs.get("model_id", ""),
    }


def _axis_error(ds):
    """The volume's rotation-axis error (px) measured by refocusing (attrs; None when not measured)."""
    v = ds.attrs.get("axis_error_px")
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return round(v, 2) if np.isfinite(v) else None


# ----------------------------------------------------------------------------- plots


def _thumbnails(ds, picks):
    """Read the worst slices from the input volume; None where it cannot be read."""
    src = ds.attrs.get("input") or ""
    if not src or not Path(src).exists():
        return None
    try:
        import dask

        from tomoqc.io import open_volume

        vol = open_volume(src, dataset=ds.attrs.get("dataset") or None, axis=ds.attrs.get("axis", "z"), check=False)
        out = []
        with dask.config.set(scheduler="synchronous"):
            for zi in picks:
                out.append(np.asarray(vol.isel(z=int(zi)).values, dtype=np.float32))
        return out
    except Exception:  # a moved or changed input must not stop the report
        return None


def _display(img):
    finite = np.isfinite(img)
    if not finite.any():
        return np.zeros(img.shape, np.float32)
    lo, hi = np.percentile(img[finite], [0.5, 99.5])
    out = np.where(finite, img, lo).astype(np.float32)
    if hi > lo:
        out = np.clip((out - lo) / (hi - lo), 0, 1)
    else:
        out = np.zeros_like(out)
    return out


def plot_volume(ds_or_path, png, *, summary: dict | None = None) -> Path:
    """Plot one volume's quality along its slicing axis into ``png``.

    Top: slice score with a shaded band of +- its ``score_uncertainty`` (when the output
    has one), the threshold and the median; middle: the severity of each distortion;
    bottom: thumbnails of the worst slices read from the input volume (when it is still
    there). Flagged slices are marked on the score axis, out-of-distribution ones apart.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ds, _ = _open(ds_or_path)
    summary = summary or summarize(ds)
    z = np.asarray(ds["z"].values)
    s = np.asarray(ds["score"].values, dtype=np.float64)
    flag = np.asarray(ds["flag"].values) if "flag" in ds else np.zeros(len(s), np.int8)
    ok = np.isfinite(s)
    order = np.argsort(np.where(ok, s, np.inf), kind="stable")
    picks = [int(i) for i in order[: min(N_THUMBNAILS, int(ok.sum()))]]
    thumbs = _thumbnails(ds, [z[i] for i in picks]) if picks else None

    fig = Figure(figsize=(11, 8.5), dpi=100)
    FigureCanvasAgg(fig)
    gs = fig.add_gridspec(3, max(1, N_THUMBNAILS), height_ratios=[3, 2, 2.4], hspace=0.4, wspace=0.15,
                          top=0.95, bottom=0.03, left=0.07, right=0.98)
    ax = fig.add_subplot(gs[0, :])
    thr = summary["threshold"]
    if "score_uncertainty" in ds:
        u = np.asarray(ds["score_uncertainty"].values, dtype=np.float64)
        band = ok & np.isfinite(u)
        if band.any():
            ax.fill_between(z, np.where(band, s - u, np.nan), np.where(band, s + u, np.nan), color="#1f5fa8",
                            alpha=0.2, lw=0, label="score +- uncertainty")
    ax.plot(z, s, "-", color="#1f5fa8", lw=1.5, marker="o" if len(z) <= 80 else None, ms=3, label="slice score")
    ax.axhline(thr, color="#c0392b", ls="--", lw=1, label=f"threshold {thr:g}")
    if summary["median_score"] is not None:
        ax.axhline(summary["median_score"], color="#555", ls=":", lw=1, label=f"median {summary['median_score']:.2f}")
    low = ok & (s < thr)
    if low.any():
        ax.fill_between(z, 1, 5, where=low, color="#c0392b", alpha=0.12, step="mid", label="below threshold")
    oodm = flag == _FLAG_OOD
    flagged = (flag != 0) & ~oodm
    if flagged.any():
        ax.plot(z[flagged], np.full(int(flagged.sum()), 1.1), "x", color="k", ms=6, label="flagged slice")
    if oodm.any():
        ax.plot(z[oodm], np.full(int(oodm.sum()), 1.25), "d", color="#e67e22", ms=5, label="out of distribution")
    ax.set_ylim(1, 5)
    ax.set_xlim(z.min() - 0.5, z.max() + 0.5)
    ax.set_ylabel("score (1-5)")
    name = Path(summary["path"]).name or Path(summary["output"]).name
    unc = summary.get("median_score_uncertainty")
    unc_txt = "" if unc is None else f" +- {unc}"
    ood_txt = f", {100 * summary['ood_fraction']:.0f}% out of distribution" if summary.get("ood_fraction") else ""
    if summary.get("noise_confounded_fraction"):
        ood_txt += f", noise reading confounded by structure on {100 * summary['noise_confounded_fraction']:.0f}%"
    if summary.get("inclusions_filled_fraction"):
        ood_txt += f", dense inclusions filled on {100 * summary['inclusions_filled_fraction']:.0f}%"
    if (summary.get("axis_error_px") or 0.0) >= AXIS_WARN_PX:
        ood_txt += f", rotation axis about {summary['axis_error_px']:.1f} px off"
    if summary.get("dominant_distortion") == "limited angle" and summary.get("missing_wedge_deg") is not None:
        ood_txt += f", about {summary['missing_wedge_deg']:.0f} degrees of views missing"
    if summary.get("dominant_distortion") == "sparse views" and summary.get("view_spacing_deg"):
        ood_txt += f", views about {summary['view_spacing_deg']:.0f} degrees apart"
    ax.set_title(
        f"{name}: median {summary['median_score']}{unc_txt}, 5th pct {summary['p5_score']}, "
        f"verdict {summary['verdict'].upper()}, dominant distortion {summary['dominant_distortion']}{ood_txt}",
        fontsize=10,
    )
    ax.legend(loc="lower right", fontsize=8, ncol=3)
    ax.grid(alpha=0.3)

    ax2 = fig.add_subplot(gs[1, :], sharex=ax)
    colors = {"noise": "#8e44ad", "blur": "#16a085", "ring": "#d35400", "streak": "#2c3e50"}
    if "severity" in ds:
        sv = np.asarray(ds["severity"].values, dtype=np.float64)
        for j, d in enumerate(str(x) for x in ds["distortion"].values):
            ax2.plot(z, sv[:, j], lw=1.3, color=colors.get(d), label=d)
    ax2.set_ylim(0, 1)
    ax2.set_ylabel("severity (0-1)")
    ax2.set_xlabel(f"slice index along {ds.attrs.get('axis', 'z')}")
    ax2.legend(loc="upper right", fontsize=8, ncol=3)
    ax2.grid(alpha=0.3)

    for j in range(max(1, N_THUMBNAILS)):
        axt = fig.add_subplot(gs[2, j])
        axt.set_xticks([])
        axt.set_yticks([])
        if thumbs is not None and j < len(thumbs):
            axt.imshow(_display(thumbs[j]), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            i = picks[j]
            axt.set_title(f"z={int(z[i])}  score {s[i]:.2f}", fontsize=9)
        elif j == 0:
            msg = "no scored slice" if not picks else "input volume not available"
            axt.text(0.5, 0.5, msg, ha="center", va="center", fontsize=9, transform=axt.transAxes)
            for sp in axt.spines.values():
                sp.set_visible(False)
        else:
            axt.set_axis_off()
    png = Path(png)
    tmp = png.with_name(f".{png.name}.tmp.png")
    fig.savefig(tmp, format="png")
    os.replace(tmp, png)
    return png


# ----------------------------------------------------------------------------- report


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8", newline="") as fh:
        fh.write(text)
    os.replace(tmp, path)


def _csv_fields(summaries) -> list[str]:
    """CSV_FIELDS with one ``severity_<name>`` column per distortion the outputs hold
    (noise, blur and ring always, in that order, then any other in order of appearance)."""
    names = []
    for s in summaries:
        for d in s.get("severity") or {}:
            if f"severity_{d}" not in CSV_FIELDS and d not in names:
                names.append(d)
    i = CSV_FIELDS.index("severity_ring") + 1
    return CSV_FIELDS[:i] + [f"severity_{d}" for d in names] + CSV_FIELDS[i:]


def _csv_row(s: dict, fields=CSV_FIELDS) -> dict:
    row = {k: s.get(k) for k in fields}
    row["worst_slices"] = _fmt_ranges(s["worst_slices"])
    for k in fields:
        if k.startswith("severity_"):
            row[k] = s["severity"].get(k[len("severity_"):])
    return {k: ("" if v is None else v) for k, v in row.items()}


def _png_name(out_path: str, used: set) -> str:
    base = Path(out_path).name
    for suffix in (".quality.zarr", ".zarr"):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    base = "".join(c if c.isalnum() or c in "-_." else "_" for c in base) or "volume"
    name, i = f"{base}.png", 1
    while name in used:
        i += 1
        name = f"{base}-{i}.png"
    used.add(name)
    return name


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#222;max-width:1150px}
h1{font-size:22px;margin-bottom:4px} .meta{color:#666;font-size:13px;margin-bottom:16px}
table{border-collapse:collapse;font-size:13px;margin-bottom:24px} th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f2f2f2} td.l{text-align:left}
.pass{background:#d5f5e3;color:#145a32;font-weight:600} .fail{background:#fadbd8;color:#78281f;font-weight:600}
.unknown{background:#eee;color:#555;font-weight:600} .uncertain{background:#fdebd0;color:#7e5109;font-weight:600}
section{margin:18px 0 28px 0} section h2{font-size:16px;margin-bottom:6px} img{max-width:100%;border:1px solid #ddd}
"""


def _num(x) -> str:
    return "" if x is None else f"{x:.2f}"


def _html(summaries, pngs, fail_below, created) -> str:
    from tomoqc import __version__

    e = html.escape
    rows = []
    for s, png in zip(summaries, pngs):
        name = Path(s["path"]).name or Path(s["output"]).name
        rows.append(
            "<tr>"
            f"<td class=l><a href='#{e(png)}'>{e(name)}</a></td>"
            f"<td>{s['slices']} / {s['slices_total']}</td>"
            f"<td>{s['flagged']}</td>"
            f"<td>{_num(s['median_score'])}</td>"
            f"<td>{_num(s.get('median_score_uncertainty'))}</td>"
            f"<td>{100 * (s.get('ood_fraction') or 0):.0f}%</td>"
            f"<td>{_num(s['p5_score'])}</td>"
            f"<td class=l>{e(_fmt_ranges(s['worst_slices']))}</td>"
            f"<td class=l>{e(s['dominant_distortion'])}</td>"
            f"<td class='{e(s['verdict'])}'>{e(s['verdict'])}</td>"
            "</tr>"
        )
    sections = []
    for s, png in zip(summaries, pngs):
        name = Path(s["path"]).name or Path(s["output"]).name
        sections.append(
            f"<section id='{e(png)}'><h2>{e(name)} <span class='{e(s['verdict'])}'>&nbsp;{e(s['verdict'])}&nbsp;</span></h2>"
            f"<div class=meta>volume: {e(s['path'])}<br>quality output: {e(s['output'])}<br>model: {e(str(s['model_id']))}</div>"
            f"<img src='{e(png)}' alt='quality of {e(name)} along the slicing axis'></section>"
        )
    thr = DEFAULT_THRESHOLD if fail_below is None else fail_below
    n_fail = sum(s["verdict"] == "fail" for s in summaries)
    n_unc = sum(s["verdict"] == "uncertain" for s in summaries)
    return (
        "<!DOCTYPE html><html lang=en><head><meta charset='utf-8'><title>tomoqc quality report</title>"
        f"<style>{_CSS}</style></head><body>"
        "<h1>tomoqc quality report</h1>"
        f"<div class=meta>{len(summaries)} volume(s), {n_fail} below the threshold {thr:g} (median slice score), "
        f"{n_unc} uncertain (median score uncertainty above {UNCERTAINTY_MAX:g} or more than "
        f"{100 * OOD_SHARE_MAX:.0f}% of slices out of distribution); "
        f"created {e(created)} by tomoqc {e(__version__)}. Scores: 1 terrible - 5 excellent.</div>"
        "<table><tr><th>volume</th><th>slices scored</th><th>flagged</th><th>median</th><th>+-</th>"
        "<th>out of distribution</th><th>5th pct</th>"
        "<th>worst slices</th><th>dominant distortion</th><th>verdict</th></tr>"
        + "".join(rows)
        + "</table>"
        + "".join(sections)
        + "</body></html>\n"
    )


def report(paths, out, *, fail_below: float | None = None, plots: bool = True) -> dict:
    """Aggregate quality outputs into ``report.csv``, ``report.json``, PNGs and ``index.html``.

    Parameters
    ----------
    paths : path or list of paths or xarray.Dataset
        Complete quality outputs (``*.quality.zarr``).
    out : path
        Folder for the report (created if needed).
    fail_below : float, optional
        QC threshold on the median slice score. When given, a failing volume makes
        this function raise :class:`~tomoqc.errors.QCFailed` *after* the report is
        written.
    plots : bool
        Write the per-volume PNGs (and reference them from ``index.html``).

    Returns
    -------
    dict
        What ``report.json`` holds: ``volumes`` (one :func:`summarize` dict per input,
        with ``plot``, the PNG's file name), ``fail_below``, ``threshold``,
        ``created``, ``tomoqc_version``, and ``files`` (paths written).

    Raises
    ------
    InputError
        A path is missing, not a quality output or incomplete; or another live process
        writes a report into ``out`` (the message names it; nothing is written).
    QCFailed
        ``fail_below`` is given and at least one volume fails; its ``report``
        attribute holds the returned dict.
    """
    if isinstance(paths, (str, os.PathLike)) or hasattr(paths, "data_vars"):
        paths = [paths]
    paths = list(paths)
    if not paths:
        raise OptionError("no quality outputs given")
    if fail_below is not None:
        fail_below = float(fail_below)
        if not np.isfinite(fail_below):
            raise OptionError(f"--fail-below must be a finite number, got {fail_below}")
    opened = [_open(p) for p in paths]  # fails early, before anything is written
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(out, "report destination exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    from tomoqc.locks import OutputLock

    # one report writer per folder; the lock lives inside it (its parent may not be writable)
    with OutputLock(out, lock_file=out / REPORT_LOCK):
        result = _write_report(opened, paths, out, fail_below, plots)
    failed = [s for s in result["volumes"] if s["verdict"] == "fail"]
    if fail_below is not None and failed:
        err = QCFailed(
            f"{len(failed)} of {len(result['volumes'])} volume(s) below --fail-below {fail_below:g}: "
            + ", ".join(Path(s["path"]).name or s["output"] for s in failed)
        )
        err.report = result
        raise err
    return result


def _write_report(opened, paths, out: Path, fail_below, plots: bool) -> dict:
    """Write the report files into ``out`` (whose lock the caller holds); return report.json's dict."""
    from tomoqc import __version__

    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    summaries, pngs, used = [], [], set()
    for (ds, where), p in zip(opened, paths):
        s = summarize(ds, fail_below=fail_below)
        if not s["output"] and isinstance(p, (str, os.PathLike)):
            s["output"] = str(Path(p).resolve())
        png = _png_name(s["output"] or s["path"] or "volume", used)
        if plots:
            plot_volume(ds, out / png, summary=s)
            s["plot"] = png
        summaries.append(s)
        pngs.append(png)
    files = []
    buf = io.StringIO()
    fields = _csv_fields(summaries)
    w = csv.DictWriter(buf, fieldnames=fields)
    w.writeheader()
    for s in summaries:
        w.writerow(_csv_row(s, fields))
    _write_text(out / "report.csv", buf.getvalue())
    files.append(str(out / "report.csv"))
    result = {
        "tomoqc_version": __version__,
        "created": created,
        "fail_below": fail_below,
        "threshold": DEFAULT_THRESHOLD if fail_below is None else fail_below,
        "volumes": summaries,
    }
    _write_text(out / "report.json", json.dumps(result, indent=2) + "\n")
    files.append(str(out / "report.json"))
    _write_text(out / "index.html", _html(summaries, pngs, fail_below, created))
    files.append(str(out / "index.html"))
    files += [str(out / p) for p in pngs] if plots else []
    result["files"] = files
    return result



class _CallableModule(types.ModuleType):
    """Lets ``tomoqc.report(paths, out)`` call :func:`report` while ``tomoqc.report``
    stays this module (so ``tomoqc.report.summarize`` and ``import tomoqc.report`` work)."""

    def __call__(self, paths, out, *, fail_below: float | None = None, plots: bool = True) -> dict:
        return report(paths, out, fail_below=fail_below, plots=plots)


sys.modules[__name__].__class__ = _CallableModule
