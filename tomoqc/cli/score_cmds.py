"""CLI commands ``tomoqc score`` and ``tomoqc report``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer

from tomoqc.cli import app
from tomoqc.cli.cluster_opts import (
    Account,
    Cluster,
    ClusterConfig,
    Cores,
    Dashboard,
    Gpus,
    Insecure,
    Interface,
    LocalDirectory,
    Memory,
    Processes,
    Queue,
    TlsCaFile,
    TlsCert,
    TlsKey,
    Verbose,
    Walltime,
    Workers,
    cluster_options,
)

_FAIL_HELP = ("Exit 3 when a volume's verdict is 'fail' (median score below S). A volume whose score is "
              "'uncertain' (median score uncertainty above 0.5, or more than 20% of its slices unlike the "
              "model's training data, or a failure that hinges on reading sharp structure as noise) does not exit 3: "
              "look at it.")


def _small_slice_note(ds, path) -> str | None:
    """A line saying why every slice of ``ds`` is out of distribution when they are all too small
    for the model's patch (:data:`tomoqc.models.tiqa.PADDED_OOD_SHARE`), else None."""
    from tomoqc.models.tiqa import PADDED_OOD_SHARE, padded_share

    shape, axis, patch = ds.attrs.get("input_shape"), ds.attrs.get("axis"), ds.attrs.get("patch_size")
    if not shape or len(shape) != 3 or axis not in ("z", "y", "x") or not patch:
        return None
    side = [int(n) for k, n in zip("zyx", shape) if k != axis]
    if padded_share(side, int(patch)) <= PADDED_OOD_SHARE:
        return None
    return (f"note: {path}: slices of {side[0]} x {side[1]} px fill less than three quarters of the model's "
            f"{int(patch)} px patch; they are scored padded by reflection and flagged out of distribution")


def _print_summaries(summaries, as_json: bool) -> None:
    if as_json:
        for s in summaries:
            row = {k: s[k] for k in ("path", "output", "slices", "median_score", "p5_score",
                                     "dominant_distortion", "verdict")}
            row.update({k: s[k] for k in ("slices_total", "flagged", "min_score", "worst_slices",
                                          "severity", "median_ring_index", "threshold", "model_id")})
            row.update({k: s.get(k) for k in ("median_score_uncertainty", "ood_fraction", "noise_confounded_fraction",
                                              "inclusions_filled_fraction", "axis_error_px")})
            print(json.dumps(row), flush=True)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="slice quality (1 terrible - 5 excellent)", title_justify="left")
    for col in ("volume", "slices", "median", "5th pct", "worst slices", "dominant", "verdict"):
        table.add_column(col, justify="left" if col in ("volume", "worst slices", "dominant") else "right")
    colours = {"pass": "green", "fail": "bold red", "uncertain": "bold yellow", "unknown": "yellow"}
    for s in summaries:
        worst = " ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in s["worst_slices"])
        table.add_row(
            Path(s["path"]).name or s["output"],
            f"{s['slices']}/{s['slices_total']}",
            ("-" if s["median_score"] is None else f"{s['median_score']:.2f}")
            + ("" if s.get("median_score_uncertainty") is None else f"±{s['median_score_uncertainty']:.2f}"),
            "-" if s["p5_score"] is None else f"{s['p5_score']:.2f}",
            worst,
            s["dominant_distortion"],
            f"[{colours.get(s['verdict'], 'yellow')}]{s['verdict']}[/]"
            + (f" ({100 * s['ood_fraction']:.0f}% OOD)" if s.get("ood_fraction") else "")
            + (f" ({100 * s['noise_confounded_fraction']:.0f}% noise confounded)"
               if s.get("noise_confounded_fraction") else ""),
        )
    Console().print(table)


def _fail_if_needed(summaries, fail_below) -> None:
    from tomoqc.errors import QCFailed

    if fail_below is None:
        return
    failed = [s for s in summaries if s["verdict"] == "fail"]
    if failed:
        names = ", ".join(Path(s["path"]).name or s["output"] for s in failed)
        raise QCFailed(f"{len(failed)} of {len(summaries)} volume(s) below --fail-below {fail_below:g}: {names}")


@app.command()
def score(
    volumes: List[Path] = typer.Argument(..., help="Volumes to score (zarr, HDF5, TIFF, .npy)."),
    model: Optional[Path] = typer.Option(None, "--model", "-m", help="TIQA model (.keras); default: the bundled one."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Folder for <volume>.quality.zarr (default: beside each input)."),
    dataset: Optional[str] = typer.Option(None, "--dataset", "-d", help="Array path inside an HDF5 file or zarr group."),
    axis: str = typer.Option("z", "--axis", help="Axis to slice along: z, y or x."),
    step: int = typer.Option(1, "--step", help="Score every N-th slice."),
    batch_size: int = typer.Option(16, "--batch-size", help="Patches per network call."),
    chunk_slices: Optional[int] = typer.Option(None, "--chunk-slices", help="Slices per task and output chunk (default 8)."),
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
    no_measured_terms: bool = typer.Option(
        False, "--no-measured-terms", "--no-ring-term",
        help="Score with the network alone, without the measured noise, blur, ring and streak terms (for "
             "samples with thin concentric structure of their own centred on the axis, such as a holder's wall). "
             "The indicators are written either way."),
    ring_center: Optional[str] = typer.Option(
        None, "--ring-center",
        help="Rotation axis in the slices as ROW,COL for the ring index (default: found once per volume; "
             "'auto' says so explicitly)."),
    tta_views: int = typer.Option(
        2, "--tta-views",
        help="Test-time views of up to 2 patches per slice for the score uncertainty: 1, 2 (identity and "
             "transpose), 4 or 8 (every flip and rotation). Scores do not depend on it."),
    keep_inclusions: bool = typer.Option(
        False, "--keep-inclusions",
        help="Score each slice as it is, without filling its dense inclusions (small regions far denser "
             "than the sample, such as metal particles) with their surroundings first. The share filled is "
             "written as inclusion_fraction."),
    fail_below: Optional[float] = typer.Option(None, "--fail-below", help=_FAIL_HELP),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing quality outputs."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object per volume per line."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    verbose: Verbose = False,
) -> None:
    """Score every slice of each volume; write <volume>.quality.zarr and print a summary.

    Each slice gets a score (1-5), a score uncertainty (about one standard deviation, in score
    units) and a flag (4: out of distribution, the input is unlike the model's training data, the
    slice fills less than three quarters of the 224-px patch, or a dense minority of its pixels
    sets its intensity range).
    Verdicts: pass; fail (median score below the threshold, 3 or --fail-below); uncertain (the
    median uncertainty is above 0.5 or more than 20% of the slices are out of distribution: the
    score is not to be trusted, look at the volume); unknown (nothing could be scored).

    A run that is interrupted resumes where it stopped when started again.
    """
    from tomoqc.errors import OptionError
    from tomoqc.logs import quiet_native_logs

    quiet_native_logs(verbose=verbose)
    options = cluster_options(
        cluster, cluster_config=cluster_config, queue=queue, account=account, walltime=walltime, cores=cores,
        memory=memory, processes=processes, gpus=gpus, interface=interface, local_directory=local_directory,
        insecure=insecure, dashboard=dashboard, tls_ca_file=tls_ca_file, tls_cert=tls_cert, tls_key=tls_key)
    if fail_below is not None and not (1.0 <= fail_below <= 5.0):
        raise OptionError(f"--fail-below must be between 1 and 5, got {fail_below}")
    if tta_views not in (1, 2, 4, 8):
        raise OptionError(f"--tta-views must be 1, 2, 4 or 8, got {tta_views}")
    if not volumes:
        raise OptionError("no volume given")
    from tomoqc.metrics.rings import check_center

    center = check_center(ring_center, "--ring-center")

    from tomoqc.cluster import start_cluster
    from tomoqc.pipeline import score as score_volume
    from tomoqc.report import summarize

    for v in volumes:  # fail on a missing input before starting any cluster
        if not Path(v).exists():
            from tomoqc.errors import InputError

            raise InputError(v, "no such file or folder")
    summaries = []
    with start_cluster(cluster, workers=workers, options=options) as client:
        for v in volumes:
            kwargs = dict(model=model, out=out, dataset=dataset, axis=axis, step=step, batch_size=batch_size,
                          overwrite=overwrite, chunk_slices=chunk_slices, progress=not quiet,
                          measured_terms=not no_measured_terms, ring_center=center, tta=tta_views,
                          fill_inclusions=not keep_inclusions)
            if client is None:
                ds = score_volume(v, cluster="none", **kwargs)
            else:
                ds = score_volume(v, client=client, **kwargs)
            s = summarize(ds, fail_below=fail_below)
            summaries.append(s)
            note = _small_slice_note(ds, v)
            if note:
                print(note, file=sys.stderr, flush=True)
            if as_json:
                _print_summaries([s], True)
    if not as_json:
        _print_summaries(summaries, False)
    _fail_if_needed(summaries, fail_below)


@app.command()
def report(
    paths: List[Path] = typer.Argument(..., help="Quality outputs (*.quality.zarr) to aggregate."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for report.csv, report.json, PNGs and index.html."),
    fail_below: Optional[float] = typer.Option(None, "--fail-below", help=_FAIL_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object per volume per line."),
) -> None:
    """Aggregate quality outputs into a report (CSV, JSON, PNG plots and index.html)."""
    from tomoqc.errors import OptionError, QCFailed
    from tomoqc.report import report as make_report

    if fail_below is not None and not (1.0 <= fail_below <= 5.0):
        raise OptionError(f"--fail-below must be between 1 and 5, got {fail_below}")
    try:
        result = make_report(paths, out, fail_below=fail_below)
        failure = None
    except QCFailed as err:
        result, failure = err.report, err
    _print_summaries(result["volumes"], as_json)
    if not as_json:
        print(f"report: {Path(out) / 'index.html'}")
    if failure is not None:
        raise failure
