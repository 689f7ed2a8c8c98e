"""CLI command ``tomoqc compare``: rank processing variants of the same slices."""

from __future__ import annotations

import json
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

_SWEEP_HELP = ("A parameter sweep: a folder with one entry per value (volumes, images or image folders named with "
               "the value, e.g. center_101.5.tif), or an HDF5/zarr file with a parameter axis (values in the "
               "attribute parameter_values) or a group of one array per value. Its entries come first.")


def _table(s: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    # a parameter column only where the labels do not already say the value (sweep entries do)
    has_param = any(r["parameter"] is not None and not r["label"].endswith(f"{r['parameter']:g}")
                    for r in s["ranking"])
    t = Table(title=f"variants ranked on {s['n_paired']} paired slices (score 1 terrible - 5 excellent)",
              title_justify="left")
    cols = ["#", "variant"] + (["parameter"] if has_param else []) + ["median", "diff", "95% CI", "p", "wins",
                                                                       "tied"]
    width = min(28, max(len(r["label"]) for r in s["ranking"]))
    for c in cols:
        t.add_column(c, justify="left" if c in ("variant", "tied") else "right", no_wrap=True,
                     min_width=width if c == "variant" else None)
    for r in s["ranking"]:
        best = r["rank"] == 1
        colour = "green" if best else ("yellow" if r["tied_with_best"] else "")
        cells = [str(r["rank"]), f"[{colour}]{r['label']}[/]" if colour else r["label"]]
        if has_param:
            cells.append("" if r["parameter"] is None else f"{r['parameter']:g}")
        cells += [
            "-" if r["median_score"] is None else f"{r['median_score']:.2f}±{r['uncertainty'] or 0:.2f}",
            "" if best else f"{r['median_difference']:+.2f}",
            "" if best or r["ci_low"] is None else f"{r['ci_low']:+.2f}..{r['ci_high']:+.2f}",
            "" if r["p_value"] is None else f"{r['p_value']:.2g}",
            f"{100 * (r['wins'] or 0):.0f}%",
            "best" if best else ("tied" if r["tied_with_best"] else "no"),
        ]
        t.add_row(*cells)
    con = Console()
    con.print(t)
    for r in s["ranking"][1:]:
        con.print(f"  {r['label']}: {r['reason']}", highlight=False)
    if s["winner"]:
        con.print(f"best: [green]{s['winner']}[/]")
    else:
        con.print(f"no single best: {', '.join(s['tied'])} are tied")
    if s.get("best_parameter") is not None:
        con.print(f"best {s.get('parameter_name') or 'parameter'}: {s['best_parameter']:g} "
                  f"(parabola peak {s['peak_parameter']:.4g})")


@app.command()
def compare(
    variants: Optional[List[str]] = typer.Argument(
        None, help="Variants: volumes or single slices (zarr, HDF5, TIFF, .npy, PNG), or PATH::VALUE for one "
                   "entry of a sweep."),
    sweep: Optional[Path] = typer.Option(None, "--sweep", help=_SWEEP_HELP),
    labels: Optional[str] = typer.Option(None, "--labels", help="Comma-separated labels, one per variant."),
    slices: Optional[str] = typer.Option(
        None, "--slices", help="Slices to compare: START:STOP[:STEP] (e.g. ::4) or a list like 3,8,20-25."),
    out: Optional[Path] = typer.Option(
        None, "--out", "-o", help="Folder for compare.json, compare.csv, compare.html and the variants' quality "
                                  "outputs (reused by a rerun). Without it nothing is written."),
    as_json: bool = typer.Option(False, "--json", help="Print compare.json's content instead of the table."),
    model: Optional[Path] = typer.Option(None, "--model", "-m", help="TIQA model (.keras); default: the bundled one."),
    dataset: Optional[str] = typer.Option(None, "--dataset", "-d", help="Array inside HDF5/zarr variants."),
    sweep_dataset: Optional[str] = typer.Option(
        None, "--sweep-dataset", help="Array or group inside an HDF5/zarr sweep."),
    axis: str = typer.Option("z", "--axis", help="Axis to slice along: z, y or x."),
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
    no_measured_terms: bool = typer.Option(False, "--no-measured-terms", help="Score with the network alone."),
    ring_center: Optional[str] = typer.Option(None, "--ring-center", help="Rotation axis ROW,COL for the ring index."),
    tta_views: int = typer.Option(2, "--tta-views", help="Test-time views for the score uncertainty: 1, 2, 4 or 8."),
    keep_inclusions: bool = typer.Option(False, "--keep-inclusions",
                                         help="Score slices as they are, without filling dense inclusions first."),
    alpha: float = typer.Option(0.05, "--alpha", help="Significance level of the paired tests."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
    verbose: Verbose = False,
) -> None:
    """Rank variants of the same slices (processing choices, parameter values) with paired statistics.

    Every variant is scored slice by slice on one dask cluster; slice j of each variant is paired
    with slice j of the others. Variants are ranked by their median paired difference to the best,
    with a Wilcoxon signed-rank test over the slices (a paired bootstrap with fewer than 10) and the
    share of slices each one wins. A variant whose distance to the best is inside the combined
    uncertainty, or not significant (p > alpha), is reported as tied with it, not beaten.
    """
    from tomoqc.errors import OptionError
    from tomoqc.logs import quiet_native_logs

    quiet_native_logs(verbose=verbose)
    options = cluster_options(
        cluster, cluster_config=cluster_config, queue=queue, account=account, walltime=walltime, cores=cores,
        memory=memory, processes=processes, gpus=gpus, interface=interface, local_directory=local_directory,
        insecure=insecure, dashboard=dashboard, tls_ca_file=tls_ca_file, tls_cert=tls_cert, tls_key=tls_key)
    if tta_views not in (1, 2, 4, 8):
        raise OptionError(f"--tta-views must be 1, 2, 4 or 8, got {tta_views}")
    if not (0.0 < alpha < 1.0):
        raise OptionError(f"--alpha must be between 0 and 1, got {alpha}")
    from tomoqc.metrics.rings import check_center

    center = check_center(ring_center, "--ring-center")
    names = None if labels is None else [x.strip() for x in labels.split(",")]
    from tomoqc.compare import compare as run_compare
    from tomoqc.compare import summary

    ds = run_compare(list(variants or []), sweep=sweep, labels=names, slices=slices, dataset=dataset,
                     sweep_dataset=sweep_dataset, axis=axis, model=model, out=out, cluster=cluster, workers=workers,
                     cluster_options=options, measured_terms=not no_measured_terms, ring_center=center,
                     tta=tta_views, fill_inclusions=not keep_inclusions, alpha=alpha, progress=not quiet)
    s = summary(ds)
    if as_json:
        print(json.dumps(s), flush=True)
        return
    _table(s)
    if out is not None:
        print(f"comparison: {Path(out) / 'compare.html'}")
