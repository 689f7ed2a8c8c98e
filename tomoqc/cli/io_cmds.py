"""CLI commands for volumes: ``tomoqc info`` and ``tomoqc convert``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from tomoqc.cli import app


def _human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover


def _fmt_num(v) -> str:
    if v is None:
        return "-"
    return f"{v:.6g}"


@app.command()
def info(
    volume: Path = typer.Argument(..., help="Volume: zarr, HDF5, TIFF file or folder, .npy, or a 2-D image."),
    dataset: Optional[str] = typer.Option(None, "--dataset", "-d", help="Array path inside an HDF5 file or zarr group."),
    sample: int = typer.Option(8, "--sample", min=1, help="Slices read, evenly spaced, for the value statistics."),
    as_json: bool = typer.Option(False, "--json", help="Print the information as JSON."),
) -> None:
    """Show a volume's shape, dtype, chunks, format and value range (from a sample of slices)."""
    from tomoqc.io import volume_info

    meta = volume_info(volume, dataset, sample=sample)
    if as_json:
        print(json.dumps(meta, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=str(volume), show_header=False, title_justify="left")
    table.add_column("field", style="bold")
    table.add_column("value")
    table.add_row("format", meta["format"])
    if meta["dataset"]:
        table.add_row("dataset", meta["dataset"])
    table.add_row("shape (z, y, x)", " x ".join(str(s) for s in meta["shape"]))
    table.add_row("dtype", meta["dtype"])
    table.add_row("size", _human_bytes(meta["nbytes"]))
    table.add_row(
        "storage chunks",
        " x ".join(str(c) for c in meta["storage_chunks"]) if meta["storage_chunks"] else "none (contiguous)",
    )
    table.add_row("slices per dask chunk", str(meta["chunks"][0]))
    if meta["voxel_size"]:
        table.add_row("voxel size (z, y, x)", ", ".join(_fmt_num(v) for v in meta["voxel_size"]))
    n = len(meta["sample_slices"])
    table.add_row(f"value range ({n} slice{'s' if n != 1 else ''})", f"{_fmt_num(meta['min'])} .. {_fmt_num(meta['max'])}")
    table.add_row("mean +- std", f"{_fmt_num(meta['mean'])} +- {_fmt_num(meta['std'])}")
    if meta["nonfinite"]:
        table.add_row("non-finite values", f"[red]{meta['nonfinite']}[/red] in the sample")
    Console().print(table)


@app.command()
def convert(
    volume: Path = typer.Argument(..., help="Input volume (any format `tomoqc info` reads)."),
    out: Path = typer.Argument(..., help="Output zarr v3 folder, e.g. volume.zarr."),
    dataset: Optional[str] = typer.Option(None, "--dataset", "-d", help="Array path inside an HDF5 file or zarr group."),
    axis: str = typer.Option("z", "--axis", "-a", help="Slicing axis of the output: z, y or x (of the input)."),
    chunks: Optional[int] = typer.Option(
        None, "--chunks", help="Slices per output chunk (default: about 8 MiB of whole slices)."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT if it exists (only once the new one is complete)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Copy a volume into a zarr v3 array, chunk by chunk, with bounded memory.

    The output is written under a temporary name next to OUT and renamed when complete,
    so an interrupted conversion leaves no OUT behind.
    """
    from tomoqc.errors import OptionError
    from tomoqc.io import check_output_path, open_volume, write_zarr

    if chunks is not None and chunks < 1:
        raise OptionError(f"--chunks must be at least 1, not {chunks}")
    vol = open_volume(volume, dataset, axis=axis)
    check_output_path(out, sources=[volume], overwrite=overwrite)
    final = write_zarr(vol, out, chunks=chunks, overwrite=overwrite, progress=not quiet)
    shape = " x ".join(str(s) for s in vol.shape)
    print(f"wrote {final} ({shape}, {vol.dtype}, slicing axis {axis})")
