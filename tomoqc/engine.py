"""The slice-wise engine that every volume job runs on (``score``, ``segment``).

A *job* (a :class:`SliceJob`) says what happens to a block of consecutive slices and
what its output looks like; the engine does everything else, the same way for every job:

1. The selected slices of the volume are cut into *chunks* of consecutive slices. Each
   chunk is one dask task: the worker reads its slices from the input itself (never the
   whole volume), loads the job's model once per worker process (a cache keyed by the
   job's resource key, e.g. the weights file and its SHA-256), runs the job on the block
   and returns the per-slice results.
2. The client holds the output's lock (:class:`tomoqc.locks.OutputLock`: one writer per
   output; a second run on the same output is refused with the holder named) and writes each finished chunk into its own, chunk-aligned region of the output
   zarr as soon as it arrives and then drops a *done* marker for it. The output is built
   under a temporary name (``.<name>.partial`` beside the final path); a killed run
   resumes where it stopped (a rerun with the same parameters skips the chunks already
   written and gives identical outputs).
3. When every chunk is written, the output is marked ``complete`` in its attributes and
   renamed to its final name. An output that looks complete therefore always is.

Tasks run on any dask client (:func:`tomoqc.cluster.start_cluster`: a local cluster, SLURM,
an existing scheduler) or, with no cluster, in this process one chunk after another. At
most a bounded number of chunks is submitted at once, so that memory stays bounded on
the workers and the scheduler however large the volume is.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from tomoqc.errors import InputError, TomoqcError

__all__ = ["SliceJob", "EngineRun", "run_job", "partial_path", "read_slices", "cached_resource",
           "prepare_output", "progress_bar", "RESOURCE_LOADS"]

#: Name of the folder of done markers inside a partial output.
DONE_DIR = "_done"

_CACHE_LOCK = threading.Lock()
_RESOURCES: dict[tuple, object] = {}
_VOLUMES: dict[tuple, object] = {}
#: How many times this process loaded a job's resource (read by tests through ``Client.run``).
RESOURCE_LOADS = 0


class SliceJob:
    """What a volume job does to a block of slices, and the layout of its output.

    Subclasses are small, picklable objects (they travel to the dask workers with every
    task) that hold the job's options and the path of its model, never the model itself.

    Attributes
    ----------
    kind : str
        The job's name (``"score"``, ``"segment"``), used in task keys.
    verb : str
        What the progress bar says (``"scoring"``).
    """

    kind = "job"
    verb = "processing"

    # -- worker side -----------------------------------------------------------------
    def resource_key(self) -> tuple:
        """Identifies the resource (model) this job needs; equal keys share one load per process."""
        return ()

    def load_resource(self):
        """Load the job's resource (e.g. a network) in this process. Called once per key."""
        return None

    def process(self, resource, block: np.ndarray) -> dict:
        """Run the job on ``block`` (n, H, W) of raw slices; every value has n along axis 0."""
        raise NotImplementedError

    # -- output layout -----------------------------------------------------------------
    def create_store(self, path: Path, zsel: np.ndarray, chunk: int, attrs: dict) -> None:
        """Create the empty output group at ``path`` for the slices ``zsel`` (``chunk``
        slices per chunk) with the group attributes ``attrs``."""
        raise NotImplementedError

    def store_arrays(self, path: Path) -> dict:
        """``{result name: (zarr array, axis of the slices)}`` of an output made by
        :meth:`create_store`; a missing array raises ``KeyError`` or ``FileNotFoundError``."""
        raise NotImplementedError

    def memory_arrays(self, n: int) -> dict:
        """``{result name: (ndarray, axis of the slices)}`` to collect an in-memory run."""
        raise NotImplementedError


# ----------------------------------------------------------------------------- worker side


def configure_tensorflow() -> None:
    """Apply the thread and GPU settings a cluster put in this worker's environment."""
    threads = os.environ.get("TOMOQC_TF_THREADS")
    growth = os.environ.get("TOMOQC_TF_GPU_GROWTH")
    if not threads and not growth:
        return
    import tensorflow as tf

    try:
        if threads:
            tf.config.threading.set_intra_op_parallelism_threads(int(threads))
            tf.config.threading.set_inter_op_parallelism_threads(1)
        if growth:
            for gpu in tf.config.list_physical_devices("GPU"):
                tf.config.experimental.set_memory_growth(gpu, True)
    except RuntimeError:
        pass  # TensorFlow already initialised in this process: keep its settings


def cached_resource(job: SliceJob):
    """The job's resource in this process, loaded on first use only."""
    global RESOURCE_LOADS
    key = (type(job).__name__, *job.resource_key())
    res = _RESOURCES.get(key)
    if res is not None:
        return res
    with _CACHE_LOCK:
        res = _RESOURCES.get(key)
        if res is None:
            configure_tensorflow()
            res = job.load_resource()
            _RESOURCES[key] = res
            RESOURCE_LOADS += 1
    return res


def _get_volume(path: str, dataset: str | None, axis: str, depth: int = 1):
    """The volume at ``path`` opened in this process with dask chunks of ``depth`` slices."""
    key = (path, dataset or "", axis, int(depth))
    vol = _VOLUMES.get(key)
    if vol is None:
        from tomoqc.io import open_volume

        vol = open_volume(path, dataset=dataset or None, axis=axis, chunk_slices=int(depth), check=False)
        with _CACHE_LOCK:
            _VOLUMES[key] = vol
    return vol


def read_slices(vol, indices) -> np.ndarray:
    """Read the slices ``indices`` of a lazily opened volume in this thread.

    Consecutive indices are read as one range, which is one read of the file when the
    volume was opened with dask chunks aligned on the engine's chunks.
    """
    import dask

    idx = np.asarray(indices, dtype=np.int64)
    if len(idx) and np.array_equal(idx, np.arange(idx[0], idx[0] + len(idx))):
        sel = slice(int(idx[0]), int(idx[0]) + len(idx))
    else:
        sel = idx
    with dask.config.set(scheduler="synchronous"):
        return np.asarray(vol.data[sel].compute())


def run_chunk(source, k: int, indices, job: SliceJob) -> dict:
    """One dask task: read chunk ``k`` (slices ``indices``), run the job on it, return the results.

    ``source`` is either ``("path", path, dataset, axis, depth)``, read here on the worker
    (``depth``: slices per read), or an in-memory block of slices. Errors caused by the
    input come back as a record (``{"error": ...}``) so that the client raises them with the
    file's name instead of a worker traceback.
    """
    t0 = time.perf_counter()
    try:
        if isinstance(source, tuple) and source and source[0] == "path":
            _, vpath, dataset, axis, depth = source
            block = read_slices(_get_volume(vpath, dataset, axis, depth), indices)
        else:
            block = np.asarray(source)
        out = job.process(cached_resource(job), block)
    except TomoqcError as err:
        return {"k": k, "error": str(err), "path": getattr(err, "path", None),
                "problem": getattr(err, "problem", str(err))}
    out["k"] = k
    out["seconds"] = time.perf_counter() - t0
    out["pid"] = os.getpid()
    return out


# ----------------------------------------------------------------------------- output side


def partial_path(final: Path) -> Path:
    """The temporary name an output is built under."""
    final = Path(final)
    return final.parent / f".{final.name}.partial"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    else:
        p.unlink()


def _same_or_inside(child: Path, parent: Path) -> bool:
    try:
        child.resolve().relative_to(parent.resolve())
        return parent.resolve().is_dir() or child.resolve() == parent.resolve()
    except ValueError:
        return False


def prepare_output(final: Path, src_path: str | None, overwrite: bool) -> Path:
    """Check that ``final`` may be written (not inside the input; not existing unless
    ``overwrite``) and create its folder."""
    final = Path(final)
    if src_path is not None and _same_or_inside(final, Path(src_path)):
        raise InputError(final, "the output would be written inside the input volume")
    if final.exists() and not overwrite:
        raise InputError(final, "output already exists (use --overwrite to replace it)")
    final.parent.mkdir(parents=True, exist_ok=True)
    return final


def _read_attrs(path: Path) -> dict:
    import zarr

    try:
        return dict(zarr.open_group(str(path), mode="r").attrs)
    except Exception:
        return {}


def _consolidate(path: Path) -> None:
    """Write consolidated metadata so that ``xarray.open_zarr(path)`` opens it quietly."""
    import warnings

    import zarr

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            zarr.consolidate_metadata(str(path))
        except Exception:  # optional: the output is complete without it
            pass


def _region(arr_ndim: int, axis: int, lo: int, hi: int) -> tuple:
    key = [slice(None)] * arr_ndim
    key[axis] = slice(lo, hi)
    return tuple(key)


class _Sink:
    """Where finished chunks go: arrays (on disk or in memory) and the done markers."""

    def __init__(self, arrays: dict, done_dir: Path | None = None):
        self.arrays = arrays
        self.done_dir = done_dir
        self._done: set[int] = set()
        if done_dir is not None:
            done_dir.mkdir(exist_ok=True)

    def done(self) -> set[int]:
        if self.done_dir is None:
            return set(self._done)
        out = set()
        for f in self.done_dir.iterdir():
            if f.name.startswith("chunk-") and not f.name.endswith(".tmp"):
                try:
                    out.add(int(f.name[6:]))
                except ValueError:
                    pass
        return out

    def write(self, k: int, lo: int, hi: int, res: dict, run_id: str) -> None:
        for name, (arr, axis) in self.arrays.items():
            value = np.asarray(res[name])
            if axis:
                value = np.moveaxis(value, 0, axis)
            arr[_region(len(arr.shape), axis, lo, hi)] = value
        if self.done_dir is None:
            self._done.add(k)
            return
        marker = self.done_dir / f"chunk-{k:06d}"
        tmp = marker.with_name(marker.name + f".{os.getpid()}.tmp")
        with open(tmp, "w") as fh:
            json.dump({"run": run_id, "slices": [lo, hi], "seconds": res.get("seconds")}, fh)
        os.replace(tmp, marker)


# ----------------------------------------------------------------------------- progress


def progress_bar(total: int, label: str, enabled: bool):
    """A rich progress bar on stderr counting slices, with slices/s; None when disabled."""
    if not enabled:
        return None
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeRemainingColumn
    from rich.text import Text

    class _Rate(ProgressColumn):
        def render(self, task):
            speed = task.finished_speed or task.speed
            return Text("  -- slices/s" if speed is None else f"{speed:6.1f} slices/s")

    prog = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        _Rate(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=False,
    )
    prog.start()
    task = prog.add_task(label, total=total)
    return prog, task


# ----------------------------------------------------------------------------- running


@dataclass
class EngineRun:
    """What :func:`run_job` did.

    ``arrays`` holds the in-memory results (``{name: ndarray}``) of a run without an
    output path; ``path`` is the final output otherwise.
    """

    chunk: int
    chunks_total: int
    chunks_resumed: int
    seconds: float
    path: Path | None = None
    arrays: dict = field(default_factory=dict)


def _write_result(sink, k, lo, hi, res, run_id, bar):
    if "error" in res:
        raise InputError(res.get("path"), res.get("problem") or res["error"])
    sink.write(k, lo, hi, res, run_id)
    if bar is not None:
        bar[0].advance(bar[1], hi - lo)


def _run_inprocess(todo, zsel, source_for, job, sink, run_id, bar):
    for k, lo, hi in todo:
        res = None  # the previous chunk's results go before the next chunk's are made
        res = run_chunk(source_for(lo, hi), k, zsel[lo:hi], job)
        _write_result(sink, k, lo, hi, res, run_id, bar)


def in_flight_limit(client, given):
    """Chunks to keep submitted: twice the workers plus one, counting the workers an
    adaptive cluster (e.g. SLURM) may still start, so that it sees enough work to scale up."""
    if given is not None:
        return max(1, int(given))
    from tomoqc.cluster import worker_count

    n = worker_count(client)
    adaptive = getattr(getattr(client, "cluster", None), "_adaptive", None)
    maximum = getattr(adaptive, "maximum", None)
    if maximum is not None and np.isfinite(maximum):
        n = max(n, int(maximum))
    return 2 * max(1, n) + 1


def _run_distributed(client, todo, zsel, source_for, job, sink, run_id, bar, max_in_flight):
    from distributed import as_completed

    if not todo:
        return
    queue = list(todo)
    where = {}
    ac = as_completed()

    def submit_next():
        k, lo, hi = queue.pop(0)
        fut = client.submit(run_chunk, source_for(lo, hi), k, zsel[lo:hi], job, pure=False,
                            key=f"tomoqc-{job.kind}-{run_id}-{k}")
        where[fut.key] = (k, lo, hi)
        ac.add(fut)

    for _ in range(min(in_flight_limit(client, max_in_flight), len(queue))):
        submit_next()
    try:
        for fut in ac:
            k, lo, hi = where.pop(fut.key)
            res = fut.result()
            fut.release()
            _write_result(sink, k, lo, hi, res, run_id, bar)
            # top up to the limit (it grows when an adaptive cluster gains workers)
            while queue and len(where) < in_flight_limit(client, max_in_flight):
                submit_next()
    except BaseException:
        for f in list(ac.futures):
            f.cancel()
        raise


def _store_ready(job: SliceJob, part: Path) -> bool:
    try:
        job.store_arrays(part)
    except Exception:
        return False
    return True


def run_job(
    job: SliceJob,
    vol,
    zsel: np.ndarray,
    *,
    src_path: str | None,
    dataset: str | None,
    axis: str,
    final: Path | None,
    params: dict,
    attrs: dict,
    chunk: int,
    contiguous: bool,
    client=None,
    cluster="local",
    workers: int | None = None,
    cluster_options: dict | None = None,
    max_in_flight: int | None = None,
    progress: bool = True,
    label: str = "volume",
    overwrite: bool = False,
) -> EngineRun:
    """Run ``job`` on the slices ``zsel`` of ``vol`` and write (or collect) its results.

    Parameters
    ----------
    job : SliceJob
    vol : xarray.DataArray
        The volume (z, y, x), lazily opened; read on the workers from ``src_path`` when
        given, else sent to them block by block.
    zsel : ndarray of int
        Indices of the slices to process, in output order.
    src_path, dataset, axis
        Where the workers read the volume from (None: in memory).
    final : Path or None
        The final output path (checked with :func:`prepare_output` by the caller), or
        None to keep the results in memory.
    params : dict
        Everything that determines the output; a partial output resumes only when its
        parameters are equal.
    attrs : dict
        The output group's attributes (the engine adds ``tomoqc_params``,
        ``chunk_slices``, ``complete`` and, when done, ``created``, ``chunks_total``,
        ``chunks_resumed`` and ``seconds``).
    chunk : int
        Slices per task for a new output (a resumed one keeps its own).
    contiguous : bool
        Whether ``zsel`` holds consecutive slices: the workers then read each chunk in
        one go, else slice by slice.
    client, cluster, workers, cluster_options, max_in_flight
        Where to run (see :func:`tomoqc.cluster.start_cluster`); ``client`` wins.
    progress : bool
        Show a progress bar on stderr.
    label : str
        The name shown in the progress bar.
    overwrite : bool
        Whether an existing final output may be replaced (checked again once the output's
        lock is held, since another run may have finished it meanwhile).
    """
    from tomoqc.locks import OutputLock

    with contextlib.ExitStack() as stack:
        lock = None
        if final is not None:
            # one writer per output, from the first write until it is renamed into place
            lock = stack.enter_context(OutputLock(final))
            if final.exists() and not overwrite:  # finished by another run since the caller looked
                raise InputError(final, "output already exists (use --overwrite to replace it)")
        n = len(zsel)
        params_json = json.dumps(params, sort_keys=True)
        part = None
        if final is not None:
            part = partial_path(final)
            old = _read_attrs(part) if part.exists() else {}
            # resumed only when made for the same job, with every output array there
            if part.exists() and old.get("tomoqc_params") == params_json and _store_ready(job, part):
                chunk = int(old.get("chunk_slices", chunk))
            else:
                if part.exists():
                    shutil.rmtree(part)
                job.create_store(part, zsel, int(chunk),
                                 {**attrs, "chunk_slices": int(chunk), "tomoqc_params": params_json, "complete": False})
            sink = _Sink(job.store_arrays(part), part / DONE_DIR)
        else:
            sink = _Sink(job.memory_arrays(n))

        bounds = [(k, lo, min(lo + chunk, n)) for k, lo in enumerate(range(0, n, chunk))]
        done = sink.done()
        resumed = len(done & {k for k, _, _ in bounds})
        todo = [b for b in bounds if b[0] not in done]
        run_id = uuid.uuid4().hex[:12]

        def source_for(lo, hi):
            if src_path is not None:
                return ("path", src_path, dataset or None, axis, chunk if contiguous else 1)
            import dask

            with dask.config.set(scheduler="synchronous"):
                return np.asarray(vol.isel(z=zsel[lo:hi]).values)

        bar = progress_bar(n, f"{job.verb} {label}", progress)
        if bar is not None and resumed:
            bar[0].reset(bar[1], completed=sum(hi - lo for k, lo, hi in bounds if k in done))
        t0 = time.perf_counter()
        try:
            if client is not None:
                _run_distributed(client, todo, zsel, source_for, job, sink, run_id, bar, max_in_flight)
            elif todo:
                from tomoqc.cluster import start_cluster

                opts = dict(cluster_options or {})
                if cluster == "slurm":
                    opts.setdefault("n_chunks", len(todo))
                with start_cluster(cluster, workers=workers, options=opts) as cl:
                    if cl is None:
                        _run_inprocess(todo, zsel, source_for, job, sink, run_id, bar)
                    else:
                        _run_distributed(cl, todo, zsel, source_for, job, sink, run_id, bar, max_in_flight)
        finally:
            if bar is not None:
                bar[0].stop()
        elapsed = time.perf_counter() - t0

        missing = [k for k, _, _ in bounds if k not in sink.done()]
        if missing:  # pragma: no cover - every path above either writes or raises
            raise TomoqcError(f"{len(missing)} chunks were not processed")
        run = EngineRun(chunk=int(chunk), chunks_total=len(bounds), chunks_resumed=resumed, seconds=elapsed)
        if final is None:
            run.arrays = {name: arr for name, (arr, _) in sink.arrays.items()}
            return run

        # -- finish: mark complete, drop the markers, rename -----------------------------
        import zarr

        g = zarr.open_group(str(part), mode="r+")
        g.attrs.update({"created": _now(), "complete": True, "chunks_total": len(bounds),
                        "chunks_resumed": resumed, "seconds": round(elapsed, 3)})
        shutil.rmtree(part / DONE_DIR, ignore_errors=True)
        _consolidate(part)
        lock.check()  # still this run's output: rename it into place
        if final.exists():
            _remove(final)
        os.replace(part, final)
        run.path = final
        return run
