"""Dask clusters whose workers are SLURM jobs.

Scoring many slices fans out over a :mod:`dask.distributed` cluster. On a machine
managed by SLURM the workers are batch jobs submitted through
:class:`dask_jobqueue.SLURMCluster`: each job runs ``processes`` dask workers that
share ``cores`` CPUs, ``memory`` and optionally one GPU.  The number of jobs follows the
work: the cluster scales adaptively between ``min_jobs`` and ``max_jobs`` (never more
jobs than there are chunks to score) and gives every job back when the work is done.

Options come from a YAML file (:func:`load_cluster_config`), from command-line
options (:func:`slurm_options_from_cli`), or from a plain ``dict``; all three are
checked by :func:`validate_slurm_options` so that a typo fails before any job is
submitted.  A configuration file looks like::

    # cluster.yaml
    queue: gpu            # the SLURM partition ("partition" is accepted too)
    account: my-project
    walltime: "02:00:00"
    cores: 8
    memory: 32GB
    processes: 1
    gpus: 1
    max_jobs: 4
    interface: ib0
    local_directory: $TMPDIR
    job_script_prologue:
      - module load cuda

The keys may also be nested under ``slurm:`` (or ``jobqueue: slurm:`` as in dask's
own configuration) and may be spelled with hyphens (``local-directory``).

Security
--------
The scheduler runs in this process and the workers connect to it from the compute
nodes, so it must listen on the network. It accepts TLS connections only, with
credentials made for this run (:func:`tomoqc.security.temporary_security`): anyone
else who can reach it is refused before any code runs. The worker jobs read the
certificate and key from files in a folder that only you can read (mode 0700), made
inside ``shared_temp_directory`` (default ``~/.cache/tomoqc/credentials``; it must be
on a file system the compute nodes share) and removed when the cluster closes
(:func:`close_slurm_cluster`). ``insecure: true`` turns TLS off, with a warning. The
dashboard is off unless ``dashboard`` gives an address (loopback unless a host is
named); the workers' own HTTP servers listen on their node's loopback interface.

References
----------
dask-jobqueue: https://jobqueue.dask.org ; SLURM ``sbatch`` options:
https://slurm.schedmd.com/sbatch.html
"""

from __future__ import annotations

import contextlib
import difflib
import math
import os
import re
import sys
import weakref
from typing import Any, Iterator

from tomoqc.errors import InputError, OptionError
from tomoqc.security import (
    LOOPBACK,
    credential_folder,
    dashboard_address,
    http_config,
    remove_credential_folder,
    temporary_security,
    warn,
)
from tomoqc.worker_env import worker_env

__all__ = [
    "DEFAULTS",
    "OPTIONS",
    "adapt_to_chunks",
    "close_slurm_cluster",
    "load_cluster_config",
    "make_slurm_cluster",
    "max_jobs_for",
    "slurm_client",
    "slurm_options_from_cli",
    "validate_slurm_options",
]

#: Every option understood here, with a short description (also used in error messages).
OPTIONS: dict[str, str] = {
    "queue": "SLURM partition (sbatch --partition)",
    "account": "SLURM account to charge (sbatch --account)",
    "walltime": "time limit of each worker job, e.g. '01:30:00' or '2-00:00:00'",
    "cores": "CPU cores per worker job",
    "memory": "memory per worker job, e.g. '16GB'",
    "processes": "dask worker processes per job (they share the job's cores)",
    "gpus": "GPUs per worker job (0 or 1: one dask worker per GPU)",
    "gpu_type": "GPU type for --gres=gpu:TYPE:N (optional)",
    "interface": "network interface the scheduler and workers talk on, e.g. 'ib0'",
    "local_directory": "node-local scratch folder for the workers",
    "log_directory": "folder for the worker jobs' SLURM logs",
    "min_jobs": "jobs kept running while idle",
    "max_jobs": "most worker jobs at once",
    "job_extra_directives": "extra '#SBATCH' directives, e.g. ['--qos=high']",
    "job_script_prologue": "shell lines run before each worker starts, e.g. ['module load cuda']",
    "worker_extra_args": "extra arguments for each dask worker",
    "python": "python executable on the compute nodes (default: this one)",
    "death_timeout": "seconds a worker waits for an unreachable scheduler",
    "job_name": "SLURM job name of the workers",
    "dashboard": "address of the dask dashboard, e.g. ':8787' (loopback; ':0' picks a free port); "
                 "default: no dashboard",
    "insecure": "true: no TLS between scheduler and workers (anyone who can reach the scheduler could "
                "run code as you)",
    "shared_temp_directory": "folder on a file system the compute nodes share, for the run's TLS "
                             "credentials (default ~/.cache/tomoqc/credentials)",
    "n_chunks": "number of chunks to process: caps the number of jobs",
}

#: Values used for options that are not given.
DEFAULTS: dict[str, Any] = {
    "queue": None,
    "account": None,
    "walltime": "01:00:00",
    "cores": 1,
    "memory": "4GB",
    "processes": 1,
    "gpus": 0,
    "gpu_type": None,
    "interface": None,
    "local_directory": None,
    "log_directory": None,
    "min_jobs": 0,
    "max_jobs": 4,
    "job_extra_directives": [],
    "job_script_prologue": [],
    "worker_extra_args": [],
    "python": None,
    "death_timeout": 60,
    "job_name": "tomoqc-worker",
    "dashboard": None,
    "insecure": False,
    "shared_temp_directory": None,
    "n_chunks": None,
}

_ALIASES = {"partition": "queue", "time": "walltime", "mem": "memory", "gres_gpus": "gpus",
            "dashboard_address": "dashboard"}

# sbatch --time formats: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S
_WALLTIME = re.compile(r"^(\d+|\d+:\d{1,2}|\d+:\d{1,2}:\d{1,2}|\d+-\d+|\d+-\d+:\d{1,2}|\d+-\d+:\d{1,2}:\d{1,2})$")


def _fail(source: str | None, problem: str):
    """Raise the right error: InputError naming the file, or OptionError."""
    if source is not None:
        raise InputError(source, problem)
    raise OptionError(problem)


def _int(value: Any, key: str, source: str | None, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        _fail(source, f"{key}: expected an integer >= {minimum}, got {value!r}")
    try:
        number = int(value)
    except ValueError:
        _fail(source, f"{key}: expected an integer >= {minimum}, got {value!r}")
    if number < minimum:
        _fail(source, f"{key}: expected an integer >= {minimum}, got {number}")
    return number


def _str(value: Any, key: str, source: str | None) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        _fail(source, f"{key}: expected a string, got {value!r}")
    text = str(value).strip()
    if not text:
        _fail(source, f"{key}: must not be empty")
    return text


def _str_list(value: Any, key: str, source: str | None) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        _fail(source, f"{key}: expected a list of strings, got {value!r}")
    return [v for v in value]


def _memory(value: Any, key: str, source: str | None) -> str:
    from dask.utils import format_bytes, parse_bytes

    if isinstance(value, bool):
        _fail(source, f"{key}: expected a size such as '16GB', got {value!r}")
    if isinstance(value, (int, float)):
        nbytes = int(value)
    elif isinstance(value, str):
        try:
            nbytes = parse_bytes(value.strip().replace(" ", ""))
        except (ValueError, TypeError):
            _fail(source, f"{key}: expected a size such as '16GB' or '500MiB', got {value!r}")
    else:
        _fail(source, f"{key}: expected a size such as '16GB', got {value!r}")
    if nbytes < 2**20:
        _fail(source, f"{key}: {value!r} is less than 1 MiB; give a unit, e.g. '16GB'")
    return value.strip().replace(" ", "") if isinstance(value, str) else format_bytes(nbytes).replace(" ", "")


def _unknown_key(key: str, source: str | None):
    known = sorted(OPTIONS)
    close = difflib.get_close_matches(key, known + sorted(_ALIASES), n=1)
    hint = f"; did you mean '{_ALIASES.get(close[0], close[0])}'?" if close else ""
    _fail(source, f"unknown option '{key}'{hint} (known: {', '.join(known)})")


def validate_slurm_options(options: dict | None, *, source: str | os.PathLike | None = None) -> dict:
    """Check SLURM cluster options and fill in defaults.

    Parameters
    ----------
    options : dict or None
        Options by name (see :data:`OPTIONS`); hyphens and the aliases ``partition``,
        ``time`` and ``mem`` are accepted. ``None`` values mean "use the default".
    source : path, optional
        The file the options came from; errors then name it.

    Returns
    -------
    dict
        Every key of :data:`OPTIONS`, with checked and normalised values.

    Raises
    ------
    InputError
        When ``source`` is given and an option is unknown or has a bad value.
    OptionError
        The same, for options that did not come from a file.
    """
    src = None if source is None else os.fspath(source)
    if options is None:
        options = {}
    if not isinstance(options, dict):
        _fail(src, f"expected a mapping of option names to values, got {type(options).__name__}")
    given: dict[str, Any] = {}
    for raw_key, value in options.items():
        if not isinstance(raw_key, str):
            _fail(src, f"option names must be strings, got {raw_key!r}")
        key = raw_key.strip().replace("-", "_").lower()
        key = _ALIASES.get(key, key)
        if key not in OPTIONS:
            _unknown_key(raw_key, src)
        if key in given and value is not None and given[key] is not None:
            _fail(src, f"option '{key}' is given twice")
        if value is not None or key not in given:
            given[key] = value

    out = dict(DEFAULTS)
    out["job_extra_directives"] = []
    out["job_script_prologue"] = []
    out["worker_extra_args"] = []
    for key, value in given.items():
        if value is None:
            continue
        if key in ("cores", "processes", "max_jobs"):
            out[key] = _int(value, key, src, minimum=1)
        elif key in ("gpus", "min_jobs"):
            out[key] = _int(value, key, src, minimum=0)
        elif key == "n_chunks":
            out[key] = _int(value, key, src, minimum=0)
        elif key == "death_timeout":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                _fail(src, f"death_timeout: expected a positive number of seconds, got {value!r}")
            out[key] = float(value)
        elif key == "memory":
            out[key] = _memory(value, key, src)
        elif key == "walltime":
            text = _str(value, key, src)
            if not _WALLTIME.match(text):
                _fail(src, f"walltime: {text!r} is not a SLURM time; use 'HH:MM:SS', 'MM' or 'D-HH:MM:SS'")
            out[key] = text
        elif key in ("job_extra_directives", "job_script_prologue", "worker_extra_args"):
            out[key] = _str_list(value, key, src)
        elif key in ("local_directory", "log_directory", "python", "shared_temp_directory"):
            out[key] = os.path.expanduser(_str(value, key, src))
        elif key == "insecure":
            if not isinstance(value, bool):
                _fail(src, f"insecure: expected true or false, got {value!r}")
            out[key] = value
        elif key == "dashboard":
            if not isinstance(value, (bool, str, int)):
                _fail(src, f"dashboard: expected an address such as ':8787', got {value!r}")
            try:
                dashboard_address(value, warn_public=False)
            except OptionError as err:
                _fail(src, f"dashboard: {err}")
            out[key] = value
        else:
            out[key] = _str(value, key, src)

    if out["processes"] > out["cores"]:
        _fail(src, f"processes ({out['processes']}) cannot exceed cores ({out['cores']}): "
                   "each worker process needs at least one core")
    if out["min_jobs"] > out["max_jobs"]:
        _fail(src, f"min_jobs ({out['min_jobs']}) cannot exceed max_jobs ({out['max_jobs']})")
    if out["gpus"] > 1:
        _fail(src, f"gpus: {out['gpus']} GPUs per job; request 1 GPU per job (one dask worker "
                   "per GPU) and raise max_jobs to use more GPUs")
    if out["gpus"] and out["processes"] != 1:
        _fail(src, f"with a GPU per job, processes must be 1 (got {out['processes']}): "
                   "several workers would share one GPU")
    if out["gpu_type"] is not None and not out["gpus"]:
        _fail(src, "gpu_type is set but gpus is 0")
    for line in out["job_extra_directives"]:
        if not line.startswith("-"):
            _fail(src, f"job_extra_directives: {line!r} should be an sbatch option such as '--qos=high'")
    if out["interface"] is not None:
        _check_interface(out["interface"], src)
    return out


def _check_interface(name: str, source: str | None) -> None:
    """Fail early when the network interface does not exist on this (the scheduler's) host."""
    import psutil

    available = sorted(psutil.net_if_addrs())
    if available and name not in available:
        _fail(source, f"interface: no network interface {name!r} on this host "
                      f"(available: {', '.join(available)})")


def load_cluster_config(path: str | os.PathLike) -> dict:
    """Read SLURM cluster options from a YAML file and check them.

    Parameters
    ----------
    path : path
        A YAML file holding a mapping of options (see the module docstring), either at
        the top level or under ``slurm:`` or ``jobqueue: slurm:``.

    Returns
    -------
    dict
        The checked options with defaults filled in (see :func:`validate_slurm_options`).

    Raises
    ------
    InputError
        The file is missing, unreadable, not YAML, not a mapping, or holds an unknown
        option or a bad value; the message names the file and the option.
    """
    import yaml

    path = os.fspath(path)
    if not os.path.exists(path):
        raise InputError(path, "no such file")
    if os.path.isdir(path):
        raise InputError(path, "is a folder; expected a YAML file")
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except yaml.YAMLError as err:
        where = ""
        mark = getattr(err, "problem_mark", None)
        if mark is not None:
            where = f" at line {mark.line + 1}, column {mark.column + 1}"
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise InputError(path, f"not valid YAML{where}: {problem}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(path, f"cannot read: {err}") from None
    if data is None:
        raise InputError(path, "is empty; expected a mapping of SLURM options such as 'queue: batch'")
    if not isinstance(data, dict):
        raise InputError(path, f"expected a mapping of SLURM options, got a YAML {type(data).__name__}")
    if set(data) == {"jobqueue"} and isinstance(data["jobqueue"], dict):
        data = data["jobqueue"]
    if set(data) == {"slurm"}:
        if not isinstance(data["slurm"], dict):
            raise InputError(path, "'slurm' must hold a mapping of options")
        data = data["slurm"]
    return validate_slurm_options(data, source=path)


def slurm_options_from_cli(
    config: str | os.PathLike | None = None,
    *,
    queue: str | None = None,
    account: str | None = None,
    walltime: str | None = None,
    cores: int | None = None,
    memory: str | None = None,
    processes: int | None = None,
    gpus: int | None = None,
    interface: str | None = None,
    local_directory: str | None = None,
    log_directory: str | None = None,
    max_jobs: int | None = None,
    **extra: Any,
) -> dict:
    """Merge a YAML configuration file with command-line options.

    Options given on the command line (not ``None``) win over the file; the file wins
    over :data:`DEFAULTS`.

    Parameters
    ----------
    config : path, optional
        YAML file read with :func:`load_cluster_config`.
    queue, account, walltime, cores, memory, processes, gpus, interface, local_directory, log_directory, max_jobs
        Command-line values (see :data:`OPTIONS`); ``None`` means "not given".
    **extra
        Any other option of :data:`OPTIONS`.

    Returns
    -------
    dict
        Checked options for :func:`make_slurm_cluster`.
    """
    base = load_cluster_config(config) if config is not None else validate_slurm_options({})
    cli = dict(queue=queue, account=account, walltime=walltime, cores=cores, memory=memory,
               processes=processes, gpus=gpus, interface=interface, local_directory=local_directory,
               log_directory=log_directory, max_jobs=max_jobs, **extra)
    merged = dict(base)
    for key, value in cli.items():
        if value is not None:
            merged[key] = value
    # a file value that is only a default must not collide with an alias given on the CLI
    return validate_slurm_options(merged)


def max_jobs_for(options: dict, n_chunks: int | None = None) -> int:
    """The most worker jobs worth starting: ``max_jobs``, but no more than the chunks need.

    Each job runs ``processes`` workers; ``ceil(n_chunks / processes)`` jobs already give
    every chunk its own worker.
    """
    n_chunks = options.get("n_chunks") if n_chunks is None else n_chunks
    limit = int(options.get("max_jobs") or DEFAULTS["max_jobs"])
    if n_chunks is None:
        return limit
    per_job = int(options.get("processes") or 1)
    return max(1, min(limit, math.ceil(int(n_chunks) / per_job)))


def _cache_directory() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "tomoqc")


def _default_log_directory() -> str:
    return os.path.join(_cache_directory(), "slurm-logs")


def _default_credential_parent() -> str:
    return os.path.join(_cache_directory(), "credentials")


def _import_slurm_cluster():
    """Import :class:`dask_jobqueue.SLURMCluster`, keeping Ctrl-C a KeyboardInterrupt.

    Importing ``dask_jobqueue`` (its ``runner`` module) replaces the process-wide SIGINT
    handler by one that calls ``sys.exit()``, which would turn Ctrl-C into a silent,
    successful exit (status 0). The handler in place before the import is put back.
    """
    import signal
    import threading

    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGINT) if main_thread else None
    try:
        from dask_jobqueue import SLURMCluster
    except ImportError as err:  # pragma: no cover - depends on the installation
        raise OptionError("--cluster slurm needs dask-jobqueue: pip install 'tomoqc[slurm]'") from err
    finally:
        if main_thread and previous is not None and signal.getsignal(signal.SIGINT) is not previous:
            signal.signal(signal.SIGINT, previous)
    return SLURMCluster


def make_slurm_cluster(options: dict | None = None):
    """Start a dask scheduler here whose workers are SLURM batch jobs.

    Parameters
    ----------
    options : dict, optional
        SLURM options (see :data:`OPTIONS`), checked with :func:`validate_slurm_options`.
        ``n_chunks``, when given, caps the number of jobs at the number the work needs.

    Returns
    -------
    dask_jobqueue.SLURMCluster
        An adaptive cluster: it submits jobs while there are tasks (up to
        :func:`max_jobs_for` jobs) and cancels them when idle. Close it with
        :func:`close_slurm_cluster`, or use :func:`slurm_client`, to cancel every job it
        submitted and delete its credentials.

    Notes
    -----
    GPUs are requested with ``--gres=gpu[:TYPE]:N`` through ``job_extra_directives``.
    The workers run ``python`` (by default the interpreter running this function, so a
    shared virtual environment is used as is).

    Unless ``insecure`` is set, scheduler and workers talk TLS with credentials made for
    this cluster; the worker jobs' copies live in a new 0700 folder inside
    ``shared_temp_directory`` (``cluster.tomoqc_credentials``), removed by
    :func:`close_slurm_cluster` (or, failing that, when the cluster object is
    collected or the interpreter exits).
    """
    opts = validate_slurm_options(options)
    SLURMCluster = _import_slurm_cluster()
    import dask

    directives = list(opts["job_extra_directives"])
    if opts["gpus"]:
        gres = f"gpu:{opts['gpu_type']}:{opts['gpus']}" if opts["gpu_type"] else f"gpu:{opts['gpus']}"
        directives.append(f"--gres={gres}")
    log_directory = opts["log_directory"] or _default_log_directory()
    os.makedirs(log_directory, exist_ok=True)

    # each worker process gets its share of the job's cores, not the whole node's
    threads = max(1, opts["cores"] // opts["processes"])
    prologue = [f"export {k}={v}" for k, v in worker_env(threads).items()]
    if opts["gpus"]:
        # TensorFlow takes GPU memory as it needs it instead of all of it at start-up
        prologue += ["export TF_FORCE_GPU_ALLOW_GROWTH=true", "export TOMOQC_TF_GPU_GROWTH=1"]
    prologue += list(opts["job_script_prologue"])
    dash = dashboard_address(opts["dashboard"])
    # dask starts an HTTP server either way: keep it on loopback, serving a health check only
    scheduler_options = {"dashboard_address": dash or f"{LOOPBACK}:0", "dashboard": dash is not None}
    # the workers' own HTTP servers: on their node's loopback interface, no dashboard
    worker_args = ["--dashboard-address", f"{LOOPBACK}:0", "--no-dashboard", *opts["worker_extra_args"]]

    kwargs: dict[str, Any] = dict(
        queue=opts["queue"],
        account=opts["account"],
        walltime=opts["walltime"],
        cores=opts["cores"],
        memory=opts["memory"],
        processes=opts["processes"],
        interface=opts["interface"],
        local_directory=opts["local_directory"],
        log_directory=log_directory,
        job_extra_directives=directives,
        job_script_prologue=prologue,
        worker_extra_args=worker_args,
        python=opts["python"] or sys.executable,
        death_timeout=opts["death_timeout"],
        job_name=opts["job_name"],
        scheduler_options=scheduler_options,
    )
    folder = None
    if opts["insecure"]:
        warn("insecure: the SLURM cluster's scheduler accepts connections without authentication or "
             "encryption; anyone who can reach this machine could run code as you")
    else:
        kwargs["security"] = temporary_security()
        folder = credential_folder(opts["shared_temp_directory"] or _default_credential_parent())
        kwargs["shared_temp_directory"] = str(folder)
    try:
        with dask.config.set(http_config(dash is not None)):
            cluster = SLURMCluster(**kwargs)
    except BaseException:
        remove_credential_folder(folder)
        raise
    cluster.tomoqc_credentials = folder
    cluster.tomoqc_dashboard = dash is not None
    # the open files dask-jobqueue wrote the worker credentials to (removed with the folder)
    handles = [v for k, v in vars(cluster).items() if k.startswith("_job_") and hasattr(v, "close")]
    cluster.tomoqc_cleanup = weakref.finalize(cluster, _remove_credentials, folder, handles)
    try:
        cluster.adapt(minimum_jobs=opts["min_jobs"], maximum_jobs=max_jobs_for(opts))
    except BaseException:
        close_slurm_cluster(cluster)
        raise
    return cluster


def _remove_credentials(folder, handles) -> None:
    for handle in handles:
        with contextlib.suppress(OSError):
            handle.close()
    remove_credential_folder(folder)


def close_slurm_cluster(cluster) -> None:
    """Close a cluster of :func:`make_slurm_cluster`: cancel its jobs, delete its credentials."""
    try:
        cluster.close()
    finally:
        cleanup = getattr(cluster, "tomoqc_cleanup", None)
        if cleanup is not None:
            cleanup()


def adapt_to_chunks(cluster, n_chunks: int, options: dict | None = None) -> None:
    """Re-bound an adaptive SLURM cluster once the number of chunks is known."""
    opts = validate_slurm_options(options)
    cluster.adapt(minimum_jobs=opts["min_jobs"], maximum_jobs=max_jobs_for(opts, n_chunks))


@contextlib.contextmanager
def slurm_client(options: dict | None = None) -> Iterator[Any]:
    """A :class:`distributed.Client` on a new :func:`make_slurm_cluster`, closed on exit.

    The client and then the cluster are closed however the block ends (normally, on an
    error, or on Ctrl-C), which cancels every SLURM job the cluster submitted and
    deletes the run's TLS credentials.

    Examples
    --------
    >>> with slurm_client({"queue": "batch", "cores": 4, "memory": "8GB"}) as client:  # doctest: +SKIP
    ...     client.submit(sum, [1, 2]).result()
    """
    from distributed import Client

    cluster = make_slurm_cluster(options)
    client = None
    try:
        client = Client(cluster)
        yield client
    finally:
        with contextlib.suppress(Exception):
            if client is not None:
                client.close()
        with contextlib.suppress(Exception):
            close_slurm_cluster(cluster)
