"""CLI command ``tomoqc segment``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from tomoqc.cli import app
from tomoqc.cli.cluster_opts import (
    Account, Cluster, ClusterConfig, Cores, Dashboard, Gpus, Insecure, Interface, LocalDirectory, Memory,
    Processes, Queue, TlsCaFile, TlsCert, TlsKey, Verbose, Walltime, Workers, cluster_options,
)


def segmentation_summary(ds) -> dict:
    """Per-volume numbers of a segmentation: phase fractions and uncertainty (bits)."""
    import numpy as np

    labels = np.asarray(ds["label"].values)
    names = [str(c) for c in ds.attrs.get("class_names", [])] or [str(i) for i in range(int(labels.max()) + 1)]
    counts = np.bincount(labels.ravel(), minlength=len(names))[: len(names)]
    unc = np.asarray(ds["uncertainty"].values, dtype=np.float64)
    finite = unc[np.isfinite(unc)]
    per_slice = np.nanmean(unc.reshape(unc.shape[0], -1), axis=1) if unc.size else np.array([])
    worst = int(np.nanargmax(per_slice)) if per_slice.size and np.isfinite(per_slice).any() else None
    return {
        "output": ds.encoding.get("source", ""),
        "input": ds.attrs.get("input", ""),
        "slices": int(labels.shape[0]),
        "fractions": {n: round(float(c) / max(1, labels.size), 4) for n, c in zip(names, counts)},
        "mean_uncertainty_bits": round(float(finite.mean()), 4) if finite.size else None,
        "p95_uncertainty_bits": round(float(np.percentile(finite, 95)), 4) if finite.size else None,
        "most_uncertain_slice": worst,
        "model_id": ds.attrs.get("model_id"),
    }


@app.command()
def segment(
    volumes: List[Path] = typer.Argument(..., help="Volumes to segment (zarr, HDF5, TIFF, .npy)."),
    model: Optional[Path] = typer.Option(None, "--model", "-m",
                                         help="D-LinkNet weights (.keras, card beside it); default: the bundled one."),
    kind: str = typer.Option("phases", "--kind",
                             help="Bundled model when no --model: phases (pore / carbon-binder / active material) "
                                  "or binary (material vs void)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Folder for <volume>.seg.zarr (default: beside each input)."),
    dataset: Optional[str] = typer.Option(None, "--dataset", "-d", help="Array path inside an HDF5 file or zarr group."),
    axis: str = typer.Option("z", "--axis", help="Axis to slice along: z, y or x."),
    tile: int = typer.Option(512, "--tile", help="Tile side for large slices (a multiple of 32)."),
    overlap: int = typer.Option(64, "--overlap", help="Least overlap of neighbouring tiles, blended without seams."),
    uncertainty: str = typer.Option(
        "entropy", "--uncertainty",
        help="entropy (one pass), mc (Monte-Carlo dropout, --samples passes) or tta (8 flips/rotations); "
             "mc and tta add aleatoric and epistemic maps."),
    samples: int = typer.Option(8, "--samples", help="Passes for --uncertainty mc."),
    batch_size: int = typer.Option(4, "--batch-size", help="Tiles per network call."),
    chunk_slices: Optional[int] = typer.Option(None, "--chunk-slices", help="Slices per task and output chunk."),
    cluster: Cluster = "local",
    workers: Workers = None,
    cluster_config: ClusterConfig = None,
    queue: Queue = None,
    account: Account = None,
    walltime: Walltime = None,
    cores: Cores = None,
    memory: Memory = None,
    processes: Processes = None,
    gpus: Gpus = None,
    interface: Interface = None,
    local_directory: LocalDirectory = None,
    insecure: Insecure = False,
    dashboard: Dashboard = None,
    tls_ca_file: TlsCaFile = None,
    tls_cert: TlsCert = None,
    tls_key: TlsKey = None,
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing segmentation outputs."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object per volume per line."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    verbose: Verbose = False,
) -> None:
    """Segment every slice of each volume; write <volume>.seg.zarr (OME-Zarr 0.5) and print a summary.

    The output holds the label image (under labels/), the class probabilities and the per-pixel
    uncertainty in bits (entropy; with mc or tta also its aleatoric and epistemic parts). It opens
    in napari and other OME-Zarr readers, and with `tomoqc.open_segmentation` as one xarray Dataset.
    A run that is interrupted resumes where it stopped when started again.
    """
    from tomoqc.errors import InputError, OptionError
    from tomoqc.logs import quiet_native_logs

    quiet_native_logs(verbose=verbose)
    options = cluster_options(
        cluster, cluster_config=cluster_config, queue=queue, account=account, walltime=walltime, cores=cores,
        memory=memory, processes=processes, gpus=gpus, interface=interface, local_directory=local_directory,
        insecure=insecure, dashboard=dashboard, tls_ca_file=tls_ca_file, tls_cert=tls_cert, tls_key=tls_key)
    if not volumes:
        raise OptionError("no volume given")
    if kind not in ("phases", "binary"):
        raise OptionError(f"--kind must be 'phases' or 'binary', got {kind!r}")
    for v in volumes:  # fail on a missing input before starting any cluster
        if not Path(v).exists():
            raise InputError(v, "no such file or folder")

    from tomoqc.cluster import start_cluster
    from tomoqc.segmentation import segment as segment_volume

    rows = []
    with start_cluster(cluster, workers=workers, options=options) as client:
        for v in volumes:
            kwargs = dict(model=model, kind=kind, out=out, dataset=dataset, axis=axis, tile=tile, overlap=overlap,
                          uncertainty=uncertainty, samples=samples, batch_size=batch_size, overwrite=overwrite,
                          chunk_slices=chunk_slices, progress=not quiet)
            if client is None:
                ds = segment_volume(v, cluster="none", **kwargs)
            else:
                ds = segment_volume(v, client=client, **kwargs)
            row = segmentation_summary(ds)
            rows.append(row)
            if as_json:
                print(json.dumps(row), flush=True)
    if as_json:
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="segmentation (uncertainty: entropy in bits, 0 = certain)", title_justify="left")
    for col in ("volume", "slices", "phase fractions", "mean unc.", "95th pct", "most uncertain slice", "output"):
        table.add_column(col, justify="left" if col in ("volume", "phase fractions", "output") else "right")
    for r in rows:
        table.add_row(Path(r["input"]).name, str(r["slices"]),
                      "  ".join(f"{k} {100 * v:.1f}%" for k, v in r["fractions"].items()),
                      "-" if r["mean_uncertainty_bits"] is None else f"{r['mean_uncertainty_bits']:.3f}",
                      "-" if r["p95_uncertainty_bits"] is None else f"{r['p95_uncertainty_bits']:.3f}",
                      "-" if r["most_uncertain_slice"] is None else str(r["most_uncertain_slice"]),
                      r["output"])
    Console().print(table)
