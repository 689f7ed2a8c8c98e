"""Command-line options of the commands that start or join a dask cluster.

Each option is an ``Annotated`` type, so that every such command (``score``, and any
other job run on a cluster) declares the same options in one line each::

    @app.command()
    def score(..., cluster: Cluster = "local", workers: Workers = None, queue: Queue = None,
              insecure: Insecure = False, dashboard: Dashboard = None, verbose: Verbose = False):
        options = cluster_options(cluster, queue=queue, insecure=insecure, dashboard=dashboard, ...)
        with start_cluster(cluster, workers=workers, options=options) as client: ...

:func:`cluster_options` turns the values into the ``options`` of
:func:`tomoqc.cluster.start_cluster`, refusing options that do not apply to the chosen
cluster. ``--dashboard`` takes an optional address (``--dashboard`` alone means the
loopback interface, port 8787); :func:`expand_optional_values` makes that possible.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Optional

import typer

from tomoqc.errors import OptionError

__all__ = [
    "Account", "Cluster", "ClusterConfig", "Cores", "Dashboard", "Gpus", "Insecure", "Interface",
    "LocalDirectory", "Memory", "Processes", "Queue", "TlsCaFile", "TlsCert", "TlsKey", "Verbose", "Walltime",
    "Workers", "cluster_options", "expand_optional_values",
]

_SLURM = "SLURM (--cluster slurm)"
_SECURITY = "Cluster security"

Cluster = Annotated[str, typer.Option(
    "--cluster", help="local | local-cuda | slurm | none | a scheduler address (tls://HOST:PORT).")]
Workers = Annotated[Optional[int], typer.Option(
    "--workers", help="Number of workers (0: no cluster, run in this process).")]
ClusterConfig = Annotated[Optional[Path], typer.Option(
    "--cluster-config", help="YAML file of SLURM options.", rich_help_panel=_SLURM)]
Queue = Annotated[Optional[str], typer.Option("--queue", help="SLURM partition.", rich_help_panel=_SLURM)]
Account = Annotated[Optional[str], typer.Option("--account", help="SLURM account.", rich_help_panel=_SLURM)]
Walltime = Annotated[Optional[str], typer.Option(
    "--walltime", help="Time limit per worker job, e.g. 01:00:00.", rich_help_panel=_SLURM)]
Cores = Annotated[Optional[int], typer.Option("--cores", help="Cores per worker job.", rich_help_panel=_SLURM)]
Memory = Annotated[Optional[str], typer.Option(
    "--memory", help="Memory per worker job, e.g. 16GB.", rich_help_panel=_SLURM)]
Processes = Annotated[Optional[int], typer.Option(
    "--processes", help="Worker processes per job.", rich_help_panel=_SLURM)]
Gpus = Annotated[Optional[int], typer.Option("--gpus", help="GPUs per worker job.", rich_help_panel=_SLURM)]
Interface = Annotated[Optional[str], typer.Option(
    "--interface", help="Network interface, e.g. ib0.", rich_help_panel=_SLURM)]
LocalDirectory = Annotated[Optional[str], typer.Option(
    "--local-directory", help="Node-local scratch folder.", rich_help_panel=_SLURM)]
Insecure = Annotated[bool, typer.Option(
    "--insecure",
    help="No TLS for the cluster tomoqc starts (local or SLURM): anyone who can reach its scheduler could "
         "run code as you. Not recommended.", rich_help_panel=_SECURITY)]
Dashboard = Annotated[Optional[str], typer.Option(
    "--dashboard", metavar="[ADDR]",
    help="Open the dask dashboard (off by default) and print its address. ADDR defaults to "
         "127.0.0.1:8787; a bare PORT or :PORT stays on 127.0.0.1. The dashboard has no login: a public "
         "ADDR shows the run's tasks and file names to everyone who can reach it.", rich_help_panel=_SECURITY)]
TlsCaFile = Annotated[Optional[Path], typer.Option(
    "--tls-ca-file", help="With a tls:// scheduler address: the certificate authority that signed the "
                          "scheduler's certificate.", rich_help_panel=_SECURITY)]
TlsCert = Annotated[Optional[Path], typer.Option(
    "--tls-cert", help="With a tls:// scheduler address: this client's certificate.", rich_help_panel=_SECURITY)]
TlsKey = Annotated[Optional[Path], typer.Option(
    "--tls-key", help="With a tls:// scheduler address: this client's private key (if not in --tls-cert). "
                      "Without --tls-* options, the distributed.comm.tls settings of a dask config file are "
                      "used.", rich_help_panel=_SECURITY)]
Verbose = Annotated[bool, typer.Option(
    "--verbose", help="Show TensorFlow's and CUDA's native start-up messages (hidden by default).")]

#: What ``--dashboard`` without an address means (see tomoqc.security.dashboard_address).
DASHBOARD_DEFAULT = "on"

# an address for --dashboard: PORT, :PORT, HOST:PORT, [IPv6]:PORT, with an optional http:// and switches
_ADDRESS = re.compile(r"^(?:https?://)?(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.\-]*)?:?\d{1,5}$|^(?:on|off)$")


def expand_optional_values(argv: list[str]) -> list[str]:
    """Give ``--dashboard`` its default address when the next argument is not an address.

    ``tomoqc score vol.zarr --dashboard`` and ``tomoqc score --dashboard vol.zarr`` mean
    the dashboard on the loopback interface; ``--dashboard :8799`` and
    ``--dashboard=0.0.0.0:8787`` give the address.
    """
    out: list[str] = []
    args = list(argv)
    for i, arg in enumerate(args):
        if arg == "--":
            out.extend(args[i:])
            break
        out.append(arg)
        if arg == "--dashboard":
            nxt = args[i + 1] if i + 1 < len(args) else None
            if nxt is None or not _ADDRESS.match(nxt):
                out.append(DASHBOARD_DEFAULT)
    return out


def cluster_options(
    cluster: str,
    *,
    cluster_config: Optional[Path] = None,
    queue: Optional[str] = None,
    account: Optional[str] = None,
    walltime: Optional[str] = None,
    cores: Optional[int] = None,
    memory: Optional[str] = None,
    processes: Optional[int] = None,
    gpus: Optional[int] = None,
    interface: Optional[str] = None,
    local_directory: Optional[str] = None,
    insecure: bool = False,
    dashboard: Optional[str] = None,
    tls_ca_file: Optional[Path] = None,
    tls_cert: Optional[Path] = None,
    tls_key: Optional[Path] = None,
) -> dict:
    """The ``options`` of :func:`tomoqc.cluster.start_cluster` for these command-line values.

    Raises
    ------
    OptionError
        An option that does not apply to ``cluster`` (SLURM options without
        ``--cluster slurm``, ``--tls-*`` without a scheduler address, ``--insecure`` or
        ``--dashboard`` when joining a scheduler).
    InputError
        A bad ``--cluster-config`` file (it names the file).
    """
    slurm_cli = dict(queue=queue, account=account, walltime=walltime, cores=cores, memory=memory,
                     processes=processes, gpus=gpus, interface=interface)
    tls = {"tls_ca_file": tls_ca_file, "tls_cert": tls_cert, "tls_key": tls_key}
    is_address = "://" in str(cluster)
    given_tls = [f"--{k.replace('_', '-')}" for k, v in tls.items() if v is not None]
    if given_tls and not is_address:
        raise OptionError(f"{', '.join(given_tls)} need a tls:// scheduler address as --cluster")
    if cluster == "slurm":
        from tomoqc.slurm import slurm_options_from_cli

        extra = {"dashboard": dashboard} if dashboard is not None else {}
        return slurm_options_from_cli(cluster_config, local_directory=local_directory,
                                      insecure=True if insecure else None, **slurm_cli, **extra)
    others = [f"--{k.replace('_', '-')}" for k, v in slurm_cli.items() if v is not None]
    if cluster_config is not None or others:
        raise OptionError(f"{', '.join(['--cluster-config'] * (cluster_config is not None) + others)} "
                          "need --cluster slurm")
    options: dict = {}
    if is_address:
        if insecure or dashboard is not None or local_directory is not None:
            named = [n for n, v in (("--insecure", insecure), ("--dashboard", dashboard is not None),
                                    ("--local-directory", local_directory is not None)) if v]
            raise OptionError(f"{', '.join(named)} apply to a cluster tomoqc starts, not to the scheduler at "
                              f"{cluster}")
        options.update({k: str(v) for k, v in tls.items() if v is not None})
        return options
    if local_directory is not None:
        options["local_directory"] = local_directory
    if insecure:
        options["insecure"] = True
    if dashboard is not None:
        options["dashboard"] = dashboard
    return options
