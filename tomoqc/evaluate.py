"""Agreement of predicted quality scores with true scores, per distortion (Tables 1-2 style).

Input formats (CSV with a header row, comma separated):

Predictions
    ``file,score`` - one row per image; ``image`` is accepted for ``file``; an optional
    ``distortion`` column is used when the truth has none.

Truth, either
    * a dataset manifest (the folder, or its ``manifest.csv``) labelled by
      ``tomoqc label``: columns ``file``, ``distortion`` and the score column ``label``
      (or any column named with ``truth_column``, e.g. ``mos``); rows with an empty score
      are left out;
    * or ``file,score[,distortion]`` (``image``/``mos`` accepted for ``file``/``score``).

Rows are joined on the file key (relative path with ``/`` separators; when that does not
match, the bare file name if it identifies one row). For each distortion and for ALL the
table gives n, SROCC, KROCC, PLCC, and PLCC and RMSE after the four-parameter VQEG
logistic (:func:`tomoqc.metrics.stats.logistic_fit`; needs at least 5 images).
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

import numpy as np

from tomoqc.errors import InputError, OptionError
from tomoqc.metrics import stats

__all__ = ["evaluate", "read_scores", "plot_scatter", "format_rows"]


def _norm_key(s: str) -> str:
    s = s.strip().replace("\\", "/")
    while s.startswith("./"):
        s = s[2:]
    return s


def read_scores(path, *, score_column: str | None = None, role: str = "scores") -> dict[str, dict]:
    """Read a score CSV (or a dataset folder's manifest) into ``{file: {score, distortion}}``."""
    p = Path(path)
    if p.is_dir():
        p = p / "manifest.csv"
    if not p.is_file():
        raise InputError(p, f"{role} file not found")
    with open(p, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        fields = [f.strip() for f in (reader.fieldnames or [])]
        lower = {f.lower(): f for f in fields}
        key_col = lower.get("file") or lower.get("image")
        if key_col is None:
            raise InputError(p, f"line 1: no file (or image) column; found {', '.join(fields) or 'none'}")
        if score_column is not None:
            col = lower.get(score_column.lower())
            if col is None:
                raise InputError(p, f"line 1: no column {score_column!r}; found {', '.join(fields)}")
        else:
            col = lower.get("score") or lower.get("label") or lower.get("mos")
            if col is None:
                raise InputError(p, "line 1: no score column (score, label or mos)")
        dist_col = lower.get("distortion")
        out: dict[str, dict] = {}
        for row in reader:
            line = reader.line_num
            row = {(k or "").strip(): (v or "") for k, v in row.items()}
            key = _norm_key(row.get(key_col, ""))
            text = row.get(col, "").strip()
            if not key:
                raise InputError(p, f"line {line}: empty {key_col}")
            if text == "":
                continue  # unlabelled row
            try:
                value = float(text)
            except ValueError:
                raise InputError(p, f"line {line}: {col} {text!r} is not a number") from None
            if not math.isfinite(value):
                raise InputError(p, f"line {line}: {col} {text!r} is not finite")
            if key in out:
                raise InputError(p, f"line {line}: {key!r} is listed twice")
            out[key] = {"score": value, "distortion": row.get(dist_col, "").strip() if dist_col else ""}
    if not out:
        raise InputError(p, f"no {role} found (column {col!r} is empty)")
    return out


def _join(pred: dict, truth: dict):
    by_name: dict[str, list[str]] = {}
    for k in truth:
        by_name.setdefault(k.rsplit("/", 1)[-1], []).append(k)
    pairs = []
    for k, v in pred.items():
        t = truth.get(k)
        if t is None:
            cands = by_name.get(k.rsplit("/", 1)[-1], [])
            t = truth[cands[0]] if len(cands) == 1 else None
        if t is not None:
            pairs.append((k, v["score"], t["score"], t["distortion"] or v["distortion"] or "all"))
    return pairs


def _row(name, p, t) -> dict:
    n = p.size
    row = {"distortion": name, "n": int(n), "srocc": math.nan, "krocc": math.nan, "plcc": math.nan,
           "plcc_logistic": math.nan, "rmse_logistic": math.nan, "rmse": math.nan}
    if n >= 1:
        row["rmse"] = stats.rmse(p, t)
    if n >= 3:
        row["srocc"] = stats.srocc(p, t)
        row["krocc"] = stats.krocc(p, t)
        row["plcc"] = stats.plcc(p, t)
    if n >= 5 and np.ptp(p) > 0 and np.ptp(t) > 0:
        fit = stats.logistic_fit(p, t, kind=4)
        row["plcc_logistic"] = fit.plcc
        row["rmse_logistic"] = fit.rmse
    return row


def evaluate(predictions_csv, truth_csv, *, out_png=None, truth_column: str | None = None) -> list[dict]:
    """Per-distortion and overall agreement of predictions with the truth.

    Returns
    -------
    list of dict
        One row per distortion (sorted by name) and a last row ``ALL``, each with ``n``,
        ``srocc``, ``krocc``, ``plcc`` (raw), ``plcc_logistic`` and ``rmse_logistic``
        (after the 4-parameter logistic), ``rmse`` (raw); ``nan`` where too few images.
    """
    pred = read_scores(predictions_csv, role="predictions")
    truth = read_scores(truth_csv, score_column=truth_column, role="true scores")
    pairs = _join(pred, truth)
    if not pairs:
        raise InputError(predictions_csv, f"no file matches a file of {truth_csv}")
    groups: dict[str, list] = {}
    for _, p, t, d in pairs:
        groups.setdefault(d, []).append((p, t))
    rows = []
    for name in sorted(groups):
        a = np.array(groups[name])
        rows.append(_row(name, a[:, 0], a[:, 1]))
    a = np.array([(p, t) for _, p, t, _ in pairs])
    rows.append(_row("ALL", a[:, 0], a[:, 1]))
    if out_png is not None:
        plot_scatter(pairs, out_png)
    return rows


def plot_scatter(pairs, out_png) -> Path:
    """Scatter of predicted vs true scores by distortion, with the logistic fit over all."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_png)
    if out.suffix.lower() != ".png":
        raise OptionError(f"the plot is written as PNG; give a .png name, got {out.name}")
    out.parent.mkdir(parents=True, exist_ok=True)
    p_all = np.array([p for _, p, _, _ in pairs])
    t_all = np.array([t for _, _, t, _ in pairs])
    fig, ax = plt.subplots(figsize=(5.5, 4.5), dpi=120)
    for d in sorted({d for *_, d in pairs}):
        sel = np.array([dd == d for *_, dd in pairs])
        ax.scatter(p_all[sel], t_all[sel], s=14, alpha=0.75, label=f"{d} (n={int(sel.sum())})")
    title = f"ALL: n={p_all.size}"
    if p_all.size >= 5 and np.ptp(p_all) > 0 and np.ptp(t_all) > 0:
        fit = stats.logistic_fit(p_all, t_all, kind=4)
        xs = np.linspace(p_all.min(), p_all.max(), 200)
        ax.plot(xs, fit(xs), "k-", lw=1.5, label="4-parameter logistic fit")
        title += f", SROCC={stats.srocc(p_all, t_all):.3f}, PLCC (logistic)={fit.plcc:.3f}"
    ax.set_xlabel("predicted score")
    ax.set_ylabel("true score")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    tmp = out.with_name(f".{out.stem}.tmp-{os.getpid()}.png")
    try:
        fig.savefig(tmp)
        os.replace(tmp, out)
    finally:
        plt.close(fig)
        if tmp.exists():
            tmp.unlink()
    return out


def format_rows(rows: list[dict]) -> list[list[str]]:
    """Rows as strings for a table: distortion, n, SROCC, KROCC, PLCC, PLCC (logistic), RMSE (logistic)."""
    def f(v):
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"

    return [[r["distortion"], str(r["n"]), f(r["srocc"]), f(r["krocc"]), f(r["plcc"]),
             f(r["plcc_logistic"]), f(r["rmse_logistic"])] for r in rows]
