"""Which dask cluster to start or join for slice-wise work.

:func:`start_cluster` is a context manager that yields a
:class:`distributed.Client` (or ``None`` for in-process work) and shuts
everything it started down on exit, also on Ctrl-C.

Kinds
-----
``"local"`` (default)
    A :class:`distributed.LocalCluster` of worker *processes* with one dask
    thread each, as many as the cores this process may use. Every worker gets
    ``OMP_NUM_THREADS`` and TensorFlow's intra/inter-op thread counts in its
    environment before TensorFlow is imported, so that ``n`` workers use ``n``
    cores instead of ``n * n``. Two dask defaults that cost a CPU-bound network
    time are turned off for these workers (measured by
    ``benchmarks/score_throughput.py``): the statistical profiler that samples
    every worker thread 100 times a second, and ``MALLOC_TRIM_THRESHOLD_=65536``,
    which makes glibc hand TensorFlow's large temporary buffers back to the
    system after every call only to map them again on the next.
``"local-cuda"``
    :class:`dask_cuda.LocalCUDACluster`, one worker per visible GPU, with
    TensorFlow's GPU memory growth enabled so that workers never fight over one
    device's memory. Needs the ``gpu`` extra (``pip install tomoqc[gpu]``).
``"slurm"``
    Workers submitted as SLURM jobs through dask-jobqueue
    (:func:`tomoqc.slurm.make_slurm_cluster`), options from ``options``.
``"tls://HOST:PORT"``, ``"tcp://HOST:PORT"`` (any scheduler address)
    Join a running scheduler; nothing is started or stopped.
``"none"`` (or ``workers=0``)
    No cluster: the work runs in this process, one chunk after another.
    Handy for tiny volumes, tests and notebooks.

Security (see :mod:`tomoqc.security`)
-------------------------------------
Local clusters listen on 127.0.0.1 only and use TLS with credentials made for the
run, so that neither other machines nor other users of this one can send them work;
SLURM clusters use TLS the same way. The dashboard is off unless ``options`` holds
``dashboard`` (an address, loopback by default); its address is printed on stderr.
``insecure=True`` turns TLS off, with a warning. Joining a ``tls://`` scheduler uses
``tls_ca_file``, ``tls_cert`` and ``tls_key`` (or dask's configuration); joining a
plain ``tcp://`` scheduler on another host warns that the connection is
unauthenticated.

This module imports :mod:`tomoqc.slurm`, never the reverse.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

from tomoqc.errors import OptionError
from tomoqc.security import (
    LOOPBACK,
    client_security,
    dashboard_address,
    http_config,
    temporary_security,
    warn,
    warn_if_unauthenticated,
)
from tomoqc.worker_env import tf_thread_env, worker_env

__all__ = ["KINDS", "OPTIONS", "available_cores", "start_cluster", "tf_thread_env", "worker_count"]

KINDS = ("local", "local-cuda", "slurm", "none")

#: Options of ``start_cluster(..., options=...)`` for the kinds other than ``slurm``
#: (whose options are :data:`tomoqc.slurm.OPTIONS`), and the kinds each applies to.
OPTIONS: dict[str, tuple[str, ...]] = {
    "memory_limit": ("local",),
    "local_directory": ("local", "local-cuda"),
    "devices": ("local-cuda",),
    "threads": ("local-cuda",),
    "dashboard": ("local", "local-cuda"),
    "insecure": ("local", "local-cuda"),
    "timeout": ("address",),
    "tls_ca_file": ("address",),
    "tls_cert": ("address",),
    "tls_key": ("address",),
    "n_chunks": ("local", "local-cuda", "address"),  # sizes SLURM clusters only; accepted everywhere
}
_ALIASES = {"dashboard_address": "dashboard"}

#: dask settings for the worker processes tomoqc starts on this machine (see above).
_WORKER_CONFIG = {
    "distributed.worker.profile.enabled": False,
    "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
}


def available_cores() -> int:
    """Number of CPU cores this process may run on (respects CPU affinity)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


def _is_address(kind: str) -> bool:
    return "://" in kind


def worker_count(client) -> int:
    """Number of workers currently connected to ``client``'s scheduler (0 for in-process)."""
    if client is None:
        return 0
    try:
        return len(client.scheduler_info(n_workers=-1).get("workers", {}))
    except TypeError:  # older distributed without n_workers
        return len(client.scheduler_info().get("workers", {}))


def _checked_options(kind: str, options: dict | None) -> dict:
    """Options for a non-SLURM kind, with aliases resolved; unknown or misplaced ones fail."""
    out: dict = {}
    where = "address" if _is_address(kind) else kind
    for raw, value in dict(options or {}).items():
        key = _ALIASES.get(str(raw).replace("-", "_"), str(raw).replace("-", "_"))
        if key not in OPTIONS:
            raise OptionError(f"unknown cluster option {raw!r} for --cluster {kind} "
                              f"(known: {', '.join(sorted(OPTIONS))})")
        if value is None or value is False:
            continue
        if where not in OPTIONS[key]:
            applies = " or ".join("a scheduler address" if k == "address" else f"--cluster {k}" for k in OPTIONS[key])
            raise OptionError(f"cluster option {key!r} applies to {applies}, not to --cluster {kind}")
        out[key] = value
    return out


@contextlib.contextmanager
def start_cluster(
    kind: str = "local",
    *,
    workers: int | None = None,
    threads_per_worker: int | None = None,
    options: dict | None = None,
) -> Iterator["object | None"]:
    """Start (or join) a dask cluster and yield a client.

    Parameters
    ----------
    kind : str
        ``"local"``, ``"local-cuda"``, ``"slurm"``, ``"none"`` or a scheduler
        address such as ``"tls://10.0.0.5:8786"``.
    workers : int, optional
        Number of workers. ``local``: default one per available core;
        ``local-cuda``: ignored (one per visible GPU); ``slurm``: fixed number
        of worker jobs (default: adaptive scaling, see
        :func:`tomoqc.slurm.make_slurm_cluster`). ``0`` means in-process work
        (same as ``kind="none"``).
    threads_per_worker : int, optional
        Threads per worker for TensorFlow (``local``: default 1, or the cores
        left per worker when fewer workers than cores are asked for).
    options : dict, optional
        For ``slurm``: :data:`tomoqc.slurm.OPTIONS` (queue, account, walltime, cores,
        memory, gpus, ..., ``insecure``, ``dashboard``, ``shared_temp_directory``).
        For the other kinds: :data:`OPTIONS`: ``dashboard`` (None: off; True or an
        address such as ``":8787"``, loopback unless a host is given), ``insecure``
        (no TLS, with a warning), ``memory_limit``, ``local_directory``, ``devices``,
        ``threads``; and for an address ``timeout``, ``tls_ca_file``, ``tls_cert``,
        ``tls_key``.

    Yields
    ------
    distributed.Client or None
        ``None`` when the work should run in this process.

    Raises
    ------
    OptionError
        Unknown kind or option, bad worker count, or a missing optional dependency.
    InputError
        A credential file that does not exist.
    """
    if workers is not None and int(workers) < 0:
        raise OptionError(f"--workers must be >= 0, got {workers}")
    if threads_per_worker is not None and int(threads_per_worker) < 1:
        raise OptionError(f"threads per worker must be >= 1, got {threads_per_worker}")
    if kind is None:
        kind = "local"
    kind = str(kind).strip()
    if kind in ("none", "sync", "synchronous") or (workers == 0 and not _is_address(kind)):
        yield None
        return
    if kind == "slurm":
        yield from _slurm(workers, dict(options or {}))
        return
    if kind not in ("local", "local-cuda") and not _is_address(kind):
        raise OptionError(
            f"unknown cluster {kind!r}; use one of local, local-cuda, slurm, none or a scheduler "
            "address such as tls://HOST:8786"
        )
    opts = _checked_options(kind, options)
    if _is_address(kind):
        yield from _join(kind, opts)
    elif kind == "local":
        yield from _local(workers, threads_per_worker, opts)
    else:
        yield from _local_cuda(opts)


def _join(address: str, options: dict):
    from distributed import Client

    security = client_security(address, tls_ca_file=options.get("tls_ca_file"),
                               tls_cert=options.get("tls_cert"), tls_key=options.get("tls_key"))
    warn_if_unauthenticated(address)
    import dask

    # dask's own setting for how long to try, unless the caller says
    kwargs = {"timeout": options.get("timeout") or dask.config.get("distributed.comm.timeouts.connect")}
    if security is not None:
        kwargs["security"] = security
    try:
        client = Client(address, **kwargs)
    except (OSError, TimeoutError) as err:
        raise OptionError(f"cannot connect to the dask scheduler at {address}: {err}") from None
    try:
        yield client
    finally:
        client.close()


def _client_of(cluster, dashboard: bool = False):
    """Yield a client of ``cluster``; close the client, then the cluster, however the block ends."""
    from distributed import Client

    try:
        client = Client(cluster)
        try:
            if dashboard:
                print(f"tomoqc: dask dashboard at {client.dashboard_link}", file=sys.stderr, flush=True)
            yield client
        finally:
            client.close()
    finally:
        cluster.close()


def _security(options: dict, what: str):
    """TLS credentials for a cluster started here, or None with a warning when ``insecure``."""
    if options.get("insecure"):
        warn(f"--insecure: the {what} accepts connections without authentication from every user of "
             "this machine (on 127.0.0.1), who could run code as you")
        return None
    return temporary_security()


def _loopback_kwargs(options: dict) -> dict:
    """Scheduler, workers and dashboard on the loopback interface; the dashboard only when asked for."""
    dash = dashboard_address(options.get("dashboard"))
    return dict(
        host=LOOPBACK,
        # dask starts an HTTP server either way: keep it on loopback, serving a health check only
        dashboard_address=dash or f"{LOOPBACK}:0",
        scheduler_kwargs={"dashboard": dash is not None},
    )


def _local(workers, threads_per_worker, options):
    import dask
    from distributed import LocalCluster

    cores = available_cores()
    n = int(workers) if workers else cores
    threads = int(threads_per_worker) if threads_per_worker else max(1, cores // n)
    kwargs = dict(
        n_workers=n,
        threads_per_worker=1,
        processes=True,
        memory_limit=options.get("memory_limit", "auto"),
        env=worker_env(threads),
        security=_security(options, "local dask cluster"),
        **_loopback_kwargs(options),
    )
    if options.get("local_directory"):
        kwargs["local_directory"] = options["local_directory"]
    dashboard = kwargs["scheduler_kwargs"]["dashboard"]
    with dask.config.set({**_WORKER_CONFIG, **http_config(dashboard)}):
        cluster = LocalCluster(**kwargs)
    yield from _client_of(cluster, dashboard)


def _local_cuda(options):
    import dask

    try:
        from dask_cuda import LocalCUDACluster
    except ImportError:
        raise OptionError(
            "--cluster local-cuda needs dask-cuda and TensorFlow with CUDA: install tomoqc[gpu]"
        ) from None

    env = worker_env(options.get("threads", 2))
    env["TF_FORCE_GPU_ALLOW_GROWTH"] = "true"
    env["TOMOQC_TF_GPU_GROWTH"] = "1"
    kwargs = dict(threads_per_worker=1, env=env, security=_security(options, "local dask cluster"),
                  **_loopback_kwargs(options))
    if options.get("devices"):
        kwargs["CUDA_VISIBLE_DEVICES"] = options["devices"]
    if options.get("local_directory"):
        kwargs["local_directory"] = options["local_directory"]
    dashboard = kwargs["scheduler_kwargs"]["dashboard"]
    try:
        with dask.config.set({**_WORKER_CONFIG, **http_config(dashboard)}):
            cluster = LocalCUDACluster(**kwargs)
    except Exception as err:  # no GPU, no driver
        raise OptionError(f"--cluster local-cuda could not start: {err}") from None
    yield from _client_of(cluster, dashboard)


def _slurm(workers, options):
    try:
        from tomoqc.slurm import close_slurm_cluster, make_slurm_cluster
    except ImportError as err:
        raise OptionError(f"--cluster slurm needs dask-jobqueue: install tomoqc[slurm] ({err})") from None
    from distributed import Client

    opts = dict(options)
    if workers:
        opts["max_jobs"] = int(workers)
    cluster = make_slurm_cluster(opts)  # adaptive: jobs come and go with the tasks
    try:
        client = Client(cluster)
        try:
            if cluster.tomoqc_dashboard:
                print(f"tomoqc: dask dashboard at {client.dashboard_link}", file=sys.stderr, flush=True)
            yield client
        finally:
            client.close()
    finally:
        close_slurm_cluster(cluster)
