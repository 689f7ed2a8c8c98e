"""CLI commands (metrics): ``tomoqc label`` and ``tomoqc evaluate``."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import typer

from tomoqc.cli import app
from tomoqc.errors import OptionError


def _f(v, fmt="{:.3f}"):
    if v is None or (isinstance(v, float) and (math.isnan(v))):
        return "-"
    return fmt.format(v)


@app.command("label")
def label_cmd(
    dataset: Path = typer.Argument(..., help="Dataset folder with manifest.csv."),
    annotations: Optional[Path] = typer.Option(
        None, "--annotations", help="Human ratings CSV (image,rater,score or image,mos,std,n)."
    ),
    reference_score: float = typer.Option(
        5.0, "--reference-score", help="Score of references without a human MOS (1 < s <= 5)."
    ),
    calibrate: Optional[str] = typer.Option(
        None, "--calibrate", help="Fit each observer to the human MOS: isotonic or logistic."
    ),
    observers: str = typer.Option(
        "mse,psnr,ssim,ms_ssim,gmsd,mdsi", "--observers", help="Comma-separated observers."
    ),
    intensity: str = typer.Option(
        "absolute", "--intensity",
        help="absolute: compare in the images' units; reference: map both images by the reference's "
             "0.5/99.5 percentiles first (labels ignore gain and offset).",
    ),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Label a dataset's images with full-reference observers (label projection)."""
    from rich.console import Console
    from rich.table import Table

    from tomoqc.labels import project_dataset

    names = [n.strip() for n in observers.split(",") if n.strip()]
    if calibrate is not None and calibrate not in ("isotonic", "logistic"):
        raise OptionError(f"--calibrate must be isotonic or logistic, got {calibrate!r}")
    summary = project_dataset(
        dataset,
        reference_score=reference_score,
        annotations=annotations,
        observers=names,
        calibrate_method=calibrate,
        intensity=intensity,
        progress=not quiet,
    )
    con = Console()
    con.print(
        f"labelled {summary['n_images']} images of {summary['n_references']} references "
        f"in {dataset}/manifest.csv"
    )
    for name, why in summary["skipped"].items():
        con.print(f"[yellow]skipped {name}[/yellow]: {why}")
    t = Table(title="observer anchors (goodness: identity -> s_ref, worst -> 1)")
    t.add_column("observer")
    t.add_column("best", justify="right")
    t.add_column("worst", justify="right")
    for n, a in summary["anchors"].items():
        t.add_row(n, _f(a["best"], "{:.4g}"), _f(a["worst"], "{:.4g}"))
    con.print(t)
    cal = summary.get("calibration")
    if cal:
        c = Table(title=f"calibration ({cal['method']}) against human MOS, n = {cal['n']}")
        for col in ("map", "n", "SROCC", "PLCC", "RMSE"):
            c.add_column(col, justify="right" if col != "map" else "left")
        for n, fit in cal["observers"].items():
            c.add_row(n, str(fit["n"]), _f(fit["srocc"]), _f(fit["plcc"]), _f(fit["rmse"]))
        for key in ("label_projected", "label"):
            v = cal[key]
            c.add_row(key, str(cal["n"]), _f(v["srocc"]), _f(v["plcc"]), _f(v["rmse"]))
        con.print(c)


@app.command("evaluate")
def evaluate_cmd(
    predictions: Path = typer.Argument(..., help="Predictions CSV: file,score."),
    truth: Path = typer.Argument(
        ..., help="Labelled dataset folder/manifest, or CSV file,score[,distortion]."
    ),
    out: Optional[Path] = typer.Option(None, "--out", help="Scatter plot PNG with the logistic fit."),
    truth_column: Optional[str] = typer.Option(
        None, "--truth-column", help="Truth score column (default: score, else label, else mos)."
    ),
) -> None:
    """Agreement of predicted scores with the truth per distortion and ALL (Table 1/2 style)."""
    from rich.console import Console
    from rich.table import Table

    from tomoqc.evaluate import evaluate, format_rows

    rows = evaluate(predictions, truth, out_png=out, truth_column=truth_column)
    t = Table(title=f"{predictions.name} vs {truth.name}")
    for col in ("distortion", "n", "SROCC", "KROCC", "PLCC", "PLCC (logistic)", "RMSE (logistic)"):
        t.add_column(col, justify="left" if col == "distortion" else "right")
    for r in format_rows(rows):
        t.add_row(*r, end_section=r[0] == rows[-2]["distortion"] if len(rows) > 1 else False)
    con = Console()
    con.print(t)
    if out is not None:
        con.print(f"wrote {out}")
