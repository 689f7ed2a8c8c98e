"""CLI commands for data: ``tomoqc dataset build|preview`` and ``tomoqc example``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from tomoqc.cli import app
from tomoqc.errors import OptionError

dataset_app = typer.Typer(
    help="Build training datasets of reference and distorted slices, and preview them.",
    no_args_is_help=True,
)
app.add_typer(dataset_app, name="dataset")


@dataset_app.command("build")
def dataset_build(
    source: str = typer.Option("phantom", "--source", help="'phantom' or a volume (zarr, HDF5, TIFF, .npy)."),
    references: int = typer.Option(10, "--references", "-n", help="Number of reference slices."),
    domain: str = typer.Option("both", "--domain", help="image, physics or both."),
    out: Path = typer.Option(..., "--out", "-o", help="Dataset folder to create."),
    seed: int = typer.Option(0, "--seed", help="Dataset seed (same seed, same dataset)."),
    size: Optional[int] = typer.Option(None, "--size", help="Phantom side (default 256), or crop side for volume sources (default 224, as in the report)."),
    fit: str = typer.Option("report", "--fit", help="Volume sources: 'report' (short side 255, random crop) or 'full'."),
    dataset: Optional[str] = typer.Option(None, "--dataset", "-d", help="Array path inside an HDF5 file or zarr group."),
    mixtures: bool = typer.Option(True, "--mixtures/--no-mixtures", help="Also write random mixtures of impairments."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Worker processes (default: all cores)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output folder."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Write reference slices, their distorted versions and a manifest.csv."""
    from tomoqc.dataset import build_dataset, read_manifest

    if domain not in ("image", "physics", "both"):
        raise OptionError(f"--domain must be image, physics or both, not {domain!r}")
    path = build_dataset(
        out,
        source=source,
        references=references,
        domain=domain,
        size=size,
        seed=seed,
        mixtures=mixtures,
        workers=workers,
        progress=progress,
        dataset=dataset,
        fit=fit,
        overwrite=overwrite,
    )
    rows = read_manifest(path)
    print(f"{path}: {len(rows)} images from {references} reference(s) ({domain})")


@dataset_app.command("preview")
def dataset_preview(
    directory: Path = typer.Argument(..., help="Dataset folder (with manifest.csv)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="PNG to write (default DIR/preview.png)."),
    rows: int = typer.Option(4, "--rows", help="References shown."),
    domain: Optional[str] = typer.Option(None, "--domain", help="Show only image or physics."),
) -> None:
    """Contact sheet: references by rows, distortion levels by columns."""
    from tomoqc.dataset import preview

    print(preview(directory, out, rows=rows, domain=domain))


@app.command("example")
def example(
    out: Path = typer.Argument(..., help="zarr folder to create, e.g. example.zarr."),
    slices: int = typer.Option(48, "--slices", help="Number of slices (at least 8)."),
    size: int = typer.Option(256, "--size", help="Slice side in pixels."),
    seed: int = typer.Option(0, "--seed", help="Seed (same seed, same volume)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Write a phantom volume whose slices go clean -> noise -> blur -> rings along z."""
    from tomoqc.example import example_plan, write_example

    if size < 16:
        raise OptionError(f"--size must be at least 16, not {size}")
    path = write_example(out, slices=slices, size=size, seed=seed, overwrite=overwrite, progress=progress)
    _, _, segments = example_plan(slices)
    parts = ", ".join(f"{s['distortion']} z={s['z_start']}-{s['z_stop'] - 1}" for s in segments)
    print(f"{path}: {slices} x {size} x {size} float32 ({parts})")
