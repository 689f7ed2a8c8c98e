"""CLI commands (metrics): ``tomoqc label``, ``tomoqc evaluate`` and ``tomoqc rings``."""

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


def _strongest_rings(prof, n: int = 5, spacing: float = 2.0) -> list[dict]:
    """Up to ``n`` radii of largest coherent power (beyond ``min_radius``), ``spacing`` px apart."""
    import numpy as np

    power = np.where(np.isfinite(prof.power) & (prof.radius >= prof.min_radius), prof.power, -np.inf)
    picked: list[int] = []
    for i in np.argsort(power)[::-1]:
        if not power[i] > 0 or len(picked) == n:
            break
        if all(abs(prof.radius[i] - prof.radius[j]) >= spacing for j in picked):
            picked.append(int(i))
    return [{"radius": round(float(prof.radius[i]), 2), "amplitude": round(float(prof.amplitude[i]), 5)}
            for i in picked]


def _ring_png(path: Path, img, prof, rings, title: str) -> None:
    import os

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(11, 4.6), gridspec_kw={"width_ratios": [1, 1.5]})
    ax0.imshow(img, cmap="gray")
    cy, cx = prof.center
    t = np.linspace(0, 2 * np.pi, 361)
    for r in rings:
        ax0.plot(cx + r["radius"] * np.cos(t), cy + r["radius"] * np.sin(t), lw=0.8, color="tab:red")
    ax0.plot([cx], [cy], "+", color="tab:red")
    ax0.set_title("slice, strongest concentric radii in red")
    ax0.axis("off")
    ax1.plot(prof.radius, prof.amplitude, lw=0.8, color="k")
    ax1.axvline(prof.min_radius, ls=":", color="0.5")
    ax1.set_xlabel("radius from the axis (px)")
    ax1.set_ylabel("coherent ring amplitude (signed)")
    ax1.set_title(f"ring index {prof.index:.4f}" if not prof.get("layered") else
                  f"layered sample (layers every {prof.layer_period:g} px): no ring index")
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


@app.command("rings")
def rings_cmd(
    volume: Path = typer.Argument(..., help="Volume or image: zarr, HDF5, TIFF, .npy, PNG."),
    dataset: Optional[str] = typer.Option(None, "--dataset", "-d", help="Array path inside an HDF5 file or zarr group."),
    index: Optional[int] = typer.Option(None, "--slice", help="Slice to measure (default: the middle one)."),
    axis: str = typer.Option("z", "--axis", help="Slicing axis: z, y or x."),
    center: Optional[str] = typer.Option(None, "--center", help="Rotation axis as ROW,COL, or auto to look for it (default: slice centre)."),
    png: Optional[Path] = typer.Option(None, "--png", help="Write the slice and its ring profile to this PNG."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Measure ring artifacts in one slice: the ring index and the radii of strongest concentric structure."""
    import json

    import numpy as np

    from tomoqc.errors import InputError
    from tomoqc.io import open_volume
    from tomoqc.metrics.rings import check_center, ring_profile

    ctr = check_center(center, "--center")
    vol = open_volume(volume, dataset, axis)
    nz = vol.shape[0]
    k = nz // 2 if index is None else int(index)
    if not 0 <= k < nz:
        raise OptionError(f"--slice {k} is outside the volume's {nz} slices (0-{nz - 1})")
    img = np.asarray(vol[k].values)
    if isinstance(ctr, tuple) and not (0 <= ctr[0] < img.shape[0] and 0 <= ctr[1] < img.shape[1]):
        raise OptionError(f"--center {center} is outside the {img.shape[0]} x {img.shape[1]} slice")
    prof = ring_profile(img, center=ctr)
    if not math.isfinite(prof.index) and not prof.layered:
        raise InputError(volume, f"slice {k} cannot be measured (no finite pixels, or no radius of at least "
                                 f"{prof.min_radius:g} px about the axis fits in it)")
    rings = _strongest_rings(prof)
    source = "slice centre" if ctr is None else ("found" if ctr == "auto" else "given")
    result = {"volume": str(volume), "slice": k, "axis": axis, "center": [round(c, 2) for c in prof.center],
              "center_source": source, "ring_index": round(prof.index, 6) if not prof.layered else None,
              "layered": prof.layered, "layering": round(prof.layering, 4),
              "layer_period": round(prof.layer_period, 2) if prof.layered else None, "strongest_radii": rings}
    if png is not None:
        from tomoqc.preprocess import normalize_slice

        _ring_png(png, normalize_slice(img), prof, rings, f"{volume.name}, slice {k}")
        result["png"] = str(png)
    if as_json:
        print(json.dumps(result))
        return
    from rich.console import Console

    con = Console()
    if prof.layered:
        con.print(f"{volume} slice {k}: [bold]no ring index[/bold]: a layered sample (concentric layers every "
                  f"{prof.layer_period:g} px about row {prof.center[0]:.1f}, col {prof.center[1]:.1f}, {source}; "
                  f"layering {prof.layering:.2f}), whose layers cannot be told from rings")
    else:
        con.print(f"{volume} slice {k}: ring index [bold]{prof.index:.4f}[/bold] "
                  f"(axis at row {prof.center[0]:.1f}, col {prof.center[1]:.1f}, {source}; about 0 without rings, "
                  f"below 0.01 on clean test phantoms)")
    con.print("strongest concentric structure (where the rings are, when there are any):")
    for r in rings:
        con.print(f"  radius {r['radius']:7.2f} px, amplitude {r['amplitude']:+.4f}")
    if png is not None:
        con.print(f"wrote {png}")
