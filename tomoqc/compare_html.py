"""The comparison page: ``compare.html`` and the PNGs beside it.

:func:`write_html` draws, from the result of :func:`tomoqc.compare.compare`,

* ``compare_ranking.png``: each variant's median score with its uncertainty, best first,
  and every variant's score along the slices;
* ``compare_sweep.png`` (when at least two variants have parameter values): the median
  score against the parameter with a band of +- the uncertainty of the median, the best
  value and the parabola's peak marked; below it the median paired difference to the
  best (what the ranking uses) with its 95 % interval;
* ``compare_slices.png``: the same slice of every variant side by side, each under its
  score and uncertainty on that slice,

and writes ``compare.html``, which holds the ranking table and shows the three images.
Every file is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import html
import math
import os
from pathlib import Path

import numpy as np

__all__ = ["write_html", "PNG_FILES"]

#: The images written beside compare.html (the sweep plot only for sweeps).
PNG_FILES = ("compare_ranking.png", "compare_sweep.png", "compare_slices.png")

_BEST = "#1e8449"
_TIED = "#d68910"
_OTHER = "#1f5fa8"


def _figure(size):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, png: Path) -> Path:
    tmp = png.with_name(f".{png.name}.tmp.png")
    fig.savefig(tmp, format="png")
    os.replace(tmp, png)
    return png


def _display(img: np.ndarray) -> np.ndarray:
    """An image mapped to [0, 1] between its 0.5 and 99.5 percentiles (NaN: the low end)."""
    a = np.asarray(img, np.float64)
    ok = np.isfinite(a)
    if not ok.any():
        return np.zeros(a.shape)
    lo, hi = np.percentile(a[ok], [0.5, 99.5])
    a = np.where(ok, a, lo)
    return np.clip((a - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros(a.shape)


def _colour(row) -> str:
    if row["rank"] == 1:
        return _BEST
    return _TIED if row["tied_with_best"] else _OTHER


def _ranking_png(ds, s, png: Path) -> Path:
    rows = s["ranking"]
    fig = _figure((11, 4.6))
    gs = fig.add_gridspec(1, 2, width_ratios=[1, 1.6], wspace=0.25, left=0.07, right=0.98, top=0.9, bottom=0.22)
    ax = fig.add_subplot(gs[0, 0])
    x = np.arange(len(rows))
    med = np.array([np.nan if r["median_score"] is None else r["median_score"] for r in rows])
    unc = np.array([0.0 if r["uncertainty"] is None else r["uncertainty"] for r in rows])
    for i, r in enumerate(rows):
        ax.errorbar(x[i], med[i], yerr=unc[i], fmt="o", color=_colour(r), capsize=4, ms=6)
    ax.set_xticks(x)
    ax.set_xticklabels([r["label"] for r in rows], rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("median slice score (1-5)")
    ax.set_title("ranking (green best, orange tied with it)", fontsize=10)
    ax.grid(alpha=0.3)
    ax2 = fig.add_subplot(gs[0, 1])
    z = np.asarray(ds["z"].values)
    labels = [str(v) for v in ds["variant"].values]
    order = [labels.index(r["label"]) for r in rows]
    for k, v in enumerate(order):
        sc = np.asarray(ds["score"].values[v], np.float64)
        ax2.plot(z, sc, "-", marker="o" if len(z) <= 60 else None, ms=3, lw=1.2 if k else 2.0,
                 label=labels[v], color=_BEST if k == 0 else None)
    ax2.set_xlabel(f"slice index along {ds.attrs.get('axis', 'z')}")
    ax2.set_ylabel("slice score")
    ax2.set_title("score of every slice", fontsize=10)
    ax2.grid(alpha=0.3)
    if len(order) <= 12:
        ax2.legend(fontsize=7, ncol=2)
    return _save(fig, png)


def _sweep_png(ds, s, png: Path) -> Path | None:
    params = np.asarray(ds["parameter"].values, np.float64)
    ok = np.isfinite(params)
    if ok.sum() < 2:
        return None
    idx = np.flatnonzero(ok)
    idx = idx[np.argsort(params[idx], kind="stable")]
    x = params[idx]
    med = np.asarray(ds["median_score"].values, np.float64)[idx]
    unc = np.asarray(ds["uncertainty"].values, np.float64)[idx]
    unc = np.where(np.isfinite(unc), unc, 0.0)
    paired = np.asarray(ds["paired"].values, bool)
    sc = np.asarray(ds["score"].values, np.float64)[idx][:, paired]
    q1, q3 = np.percentile(sc, [25, 75], axis=1) if sc.shape[1] else (med, med)
    fig = _figure((8.5, 7.2))
    ax = fig.add_subplot(2, 1, 1)
    fig.subplots_adjust(left=0.1, right=0.97, top=0.94, bottom=0.08, hspace=0.3)
    ax.fill_between(x, q1, q3, color=_OTHER, alpha=0.08, lw=0, label="slice scores, 25-75th percentile")
    ax.fill_between(x, med - unc, med + unc, color=_OTHER, alpha=0.3, lw=0, label="median +- its uncertainty")
    ax.plot(x, med, "-o", color=_OTHER, ms=4, label="median slice score")
    rank = np.asarray(ds["rank"].values)[idx]
    tied = np.asarray(ds["tied_with_best"].values, bool)[idx] & (rank != 1)
    if tied.any():
        ax.plot(x[tied], med[tied], "o", color=_TIED, ms=7, label="tied with the best")
    if (rank == 1).any():
        ax.plot(x[rank == 1], med[rank == 1], "o", color=_BEST, ms=8, label="best")
    bp, pk = s.get("best_parameter"), s.get("peak_parameter")
    if bp is not None:
        ax.axvline(bp, color=_BEST, lw=1.5, label=f"best value {bp:g}")
    if pk is not None and bp is not None and abs(pk - bp) > 1e-12:
        ax.axvline(pk, color=_BEST, lw=1, ls="--", label=f"parabola peak {pk:.3g}")
    name = s.get("parameter_name") or "parameter"
    ax.set_xlabel(name)
    ax.set_ylabel("score (1-5)")
    ax.set_title(f"score against {name}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    # what the ranking uses: the paired difference to the best, with its 95 % interval
    ax2 = fig.add_subplot(2, 1, 2, sharex=ax)
    md = np.asarray(ds["median_difference"].values, np.float64)[idx]
    lo = np.asarray(ds["ci_low"].values, np.float64)[idx]
    hi = np.asarray(ds["ci_high"].values, np.float64)[idx]
    ok = np.isfinite(lo) & np.isfinite(hi)
    ax2.fill_between(x, np.where(ok, lo, md), np.where(ok, hi, md), color=_OTHER, alpha=0.25, lw=0,
                     label="95% interval")
    ax2.plot(x, md, "-o", color=_OTHER, ms=4, label="median paired difference to the best")
    if tied.any():
        ax2.plot(x[tied], md[tied], "o", color=_TIED, ms=7, label="tied with the best")
    if (rank == 1).any():
        ax2.plot(x[rank == 1], md[rank == 1], "o", color=_BEST, ms=8)
    ax2.axhline(0, color="#555", lw=0.8)
    ax2.set_xlabel(name)
    ax2.set_ylabel("score difference")
    ax2.set_title(f"paired difference to the best ({s['best']}), slice by slice", fontsize=10)
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=8)
    return _save(fig, png)


def _slices_png(ds, s, png: Path) -> Path:
    rows = s["ranking"]
    labels = [str(v) for v in ds["variant"].values]
    n = len(rows)
    ncol = min(n, 5)
    nrow = int(math.ceil(n / ncol))
    height = 3.6 * nrow + 0.5
    fig = _figure((3.1 * ncol, height))
    fig.subplots_adjust(left=0.01, right=0.99, top=1 - 0.95 / height, bottom=0.01, wspace=0.05,
                        hspace=0.9 / 3.6 * 1.1)
    zprev = int(ds.attrs.get("preview_z", int(ds["z"].values[0])))
    zi = int(np.flatnonzero(np.asarray(ds["z"].values) == zprev)[0])
    fig.suptitle(f"slice {zprev} of every variant, best first (score +- uncertainty on this slice)", fontsize=10,
                 y=1 - 0.12 / height)
    for k, r in enumerate(rows):
        v = labels.index(r["label"])
        ax = fig.add_subplot(nrow, ncol, k + 1)
        ax.imshow(_display(ds["preview"].values[v]), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        sc = float(ds["score"].values[v, zi])
        u = float(ds["score_uncertainty"].values[v, zi])
        txt = "not scored" if not math.isfinite(sc) else f"{sc:.2f}" + (f" +- {u:.2f}" if math.isfinite(u) else "")
        ax.set_title(f"#{r['rank']} {r['label']}\n{txt}", fontsize=9, color=_colour(r))
        ax.set_xticks([])
        ax.set_yticks([])
        for sp in ax.spines.values():
            sp.set_edgecolor(_colour(r))
            sp.set_linewidth(3 if r["rank"] == 1 or r["tied_with_best"] else 1)
    return _save(fig, png)


def _fmt(x, nd=2) -> str:
    return "" if x is None else f"{x:.{nd}f}"


def _p(x) -> str:
    return "" if x is None else f"{x:.2g}"


def _html(s, pngs) -> str:
    e = html.escape
    rows = []
    has_param = any(r["parameter"] is not None for r in s["ranking"])
    for r in s["ranking"]:
        cls = "best" if r["rank"] == 1 else ("tied" if r["tied_with_best"] else "")
        ci = "" if r["ci_low"] is None or r["rank"] == 1 else f"[{r['ci_low']:+.2f}, {r['ci_high']:+.2f}]"
        rows.append(
            f"<tr class='{cls}'><td>{r['rank']}</td><td class=l>{e(r['label'])}</td>"
            + (f"<td>{'' if r['parameter'] is None else format(r['parameter'], 'g')}</td>" if has_param else "")
            + f"<td>{_fmt(r['median_score'])}</td><td>{_fmt(r['uncertainty'])}</td>"
            f"<td>{'' if r['rank'] == 1 else format(r['median_difference'], '+.2f')}</td><td>{ci}</td>"
            f"<td>{_p(r['p_value'])}</td><td class=l>{e(r['test'])}</td>"
            f"<td>{100 * (r['wins'] or 0):.0f}%</td><td>{'yes' if r['tied_with_best'] else 'no'}</td>"
            f"<td class=l>{e(r['reason'])}</td><td class=l>{e(r['path'])}</td></tr>"
        )
    winner = s.get("winner")
    if winner:
        verdict = f"<b>{e(winner)}</b> is the best variant: no other is tied with it."
    else:
        verdict = ("No single best variant: " + ", ".join(f"<b>{e(t)}</b>" for t in s["tied"])
                   + " are tied (their differences are inside the uncertainty or not significant).")
    imgs = "".join(f"<section><img src='{e(p.name)}' alt='{e(p.stem)}'></section>" for p in pngs)
    css = ("body{font-family:system-ui,Helvetica,Arial,sans-serif;margin:24px;color:#222;max-width:1200px}"
           "h1{font-size:22px} .meta{color:#555;font-size:13px;margin-bottom:14px}"
           "table{border-collapse:collapse;font-size:13px;margin:12px 0 24px 0}"
           "th,td{border:1px solid #ccc;padding:4px 7px;text-align:right} th{background:#f2f2f2} td.l{text-align:left}"
           "tr.best{background:#d5f5e3} tr.tied{background:#fdebd0} img{max-width:100%;border:1px solid #ddd}"
           "section{margin:16px 0}")
    return (
        "<!DOCTYPE html><html lang=en><head><meta charset='utf-8'><title>tomoqc comparison</title>"
        f"<style>{css}</style></head><body><h1>tomoqc comparison of {len(s['ranking'])} variants</h1>"
        f"<p>{verdict}</p>"
        f"<div class=meta>{s['n_paired']} paired slices of {s['n_slices']} compared (slices: {e(str(s['slices']))}); "
        f"paired test: Wilcoxon signed-rank with at least 10 slices, else a paired bootstrap; alpha {s['alpha']:g}. "
        f"Tie rule: {e(s['tie_rule'])}. Model {e(str(s['model_id']))}; created {e(str(s['created']))} by tomoqc "
        f"{e(str(s['tomoqc_version']))}. Scores: 1 terrible - 5 excellent.</div>"
        "<table><tr><th>rank</th><th>variant</th>" + ("<th>parameter</th>" if has_param else "")
        + "<th>median score</th><th>+-</th><th>paired difference to the best</th><th>95% interval</th>"
        "<th>p</th><th>test</th><th>slices won</th><th>tied with best</th><th>why</th><th>path</th></tr>"
        + "".join(rows) + "</table>" + imgs + "</body></html>\n"
    )


def write_html(ds, s: dict, out) -> list[Path]:
    """Write the PNGs and ``compare.html`` for the result ``ds`` and its :func:`tomoqc.compare.summary` ``s``.

    Returns
    -------
    list of Path
        ``compare.html`` first, then the PNGs written.
    """
    out = Path(out)
    pngs = [_ranking_png(ds, s, out / PNG_FILES[0])]
    sw = _sweep_png(ds, s, out / PNG_FILES[1])
    if sw is not None:
        pngs.append(sw)
    elif (out / PNG_FILES[1]).exists():
        (out / PNG_FILES[1]).unlink()  # from an earlier comparison of a sweep in the same folder
    pngs.append(_slices_png(ds, s, out / PNG_FILES[2]))
    page = out / "compare.html"
    tmp = page.with_name(f".{page.name}.tmp")
    tmp.write_text(_html(s, pngs), encoding="utf-8")
    os.replace(tmp, page)
    return [page, *pngs]
