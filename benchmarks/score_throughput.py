"""Scoring throughput: the network alone vs the whole pipeline, and its memory.

Prints a table with

- *raw*: patches/s of the TIQA network on in-memory batches of normalised 224 x 224
  patches (one process, TensorFlow's default threads, no I/O), the ceiling for any
  pipeline on this machine;
- *end-to-end*: patches/s (and slices/s) of ``tomoqc.pipeline.score`` on a zarr volume
  on a local dask cluster with 1 and with 2 workers (reading, normalising, cutting
  patches, inference, writing the zarr output, scheduling), measured after the
  workers have loaded the model. One worker is measured twice: with TensorFlow using
  every core (what ``--workers 1`` does) and with one thread, the unit that the
  2-worker cluster (one thread per worker on 2 cores) is made of, for the scaling line;
- peak resident memory (client and workers together) for two volume lengths.

and ends with the line ``end-to-end/raw: <ratio>`` (the default cluster, one worker per
core, against the raw figure).

Usage: ``python benchmarks/score_throughput.py [--model PATH] [--size 448] [--slices 128]``.
Each measurement runs in a fresh process and is the median of ``--repeats`` runs (3).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _write_volume(path: Path, slices: int, size: int, seed: int = 0) -> None:
    import numpy as np
    import zarr

    from tomoqc.phantom import electrode_slice

    rng = np.random.default_rng(seed)
    z = zarr.create_array(str(path), shape=(slices, size, size), chunks=(1, size, size), dtype="float32")
    base = [electrode_slice((size, size), seed=seed + i)[0] for i in range(4)]
    for i in range(slices):
        z[i] = (base[i % 4] + rng.normal(0, 0.02 * (i % 5), (size, size))).astype(np.float32)


def _child_raw(args) -> dict:
    import numpy as np

    from tomoqc.models.tiqa import load_model

    model = load_model(args.model, batch_size=args.batch_size)
    rng = np.random.default_rng(0)
    patches = rng.random((args.batch_size * 4, 224, 224), dtype=np.float32)
    model.predict_patches(patches)  # trace and warm up
    rates, cpu_rates = [], []
    for _ in range(args.repeats):  # the median of several windows: robust to a busy neighbour
        n, t0, c0 = 0, time.perf_counter(), _cpu_seconds()
        while time.perf_counter() - t0 < args.seconds / args.repeats:
            model.predict_patches(patches)
            n += len(patches)
        dt, cpu = time.perf_counter() - t0, _cpu_seconds() - c0
        rates.append(n / dt)
        cpu_rates.append(n / cpu)
    return {"patches_per_s": float(np.median(rates)), "patches_per_cpu_s": float(np.median(cpu_rates))}


def _cpu_seconds() -> float:
    """CPU time (user + system) of this process and its children, alive ones included."""
    import psutil

    me = psutil.Process()
    total = sum(me.cpu_times()[:2])
    for p in me.children(recursive=True):
        try:
            total += sum(p.cpu_times()[:2])
        except psutil.Error:
            pass
    return total


class _PeakRSS:
    """Sum of the resident memory of this process and its children, sampled every 50 ms."""

    def __init__(self):
        import psutil

        self.proc = psutil.Process()
        self.peak = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _sample(self):
        import psutil

        total = 0
        for p in [self.proc] + self.proc.children(recursive=True):
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        self.peak = max(self.peak, total)

    def _run(self):
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(0.05)

    def __enter__(self):
        self.peak = 0
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self._sample()


def _child_e2e(args) -> dict:
    import numpy as np

    from tomoqc.cluster import start_cluster
    from tomoqc.pipeline import score

    work = Path(args.work)
    with start_cluster("local", workers=args.workers, threads_per_worker=args.threads or None) as client:
        # load the model in every worker first (a short warm-up volume)
        score(work / "warm.zarr", model=args.model, out=work / f"warm-{args.workers}-{args.slices}", client=client,
              chunk_slices=1, batch_size=args.batch_size, progress=False, overwrite=True)
        vol = work / f"vol{args.slices}.zarr"
        runs = []
        with _PeakRSS() as rss:
            for _ in range(args.repeats):  # the whole volume scored again; the median run is reported
                t0, c0 = time.perf_counter(), _cpu_seconds()
                ds = score(vol, model=args.model, out=work / f"out-{args.workers}-{args.slices}", client=client,
                           batch_size=args.batch_size, progress=False, overwrite=True)
                runs.append((time.perf_counter() - t0, _cpu_seconds() - c0))
        dt = float(np.median([r[0] for r in runs]))
        cpu = float(np.median([r[1] for r in runs]))
        n_patches = float(np.nansum(ds["valid_fraction"].values)) * ds.sizes["py"] * ds.sizes["px"]
    return {"slices": int(ds.sizes["z"]), "patches": n_patches, "seconds": dt, "slices_per_s": ds.sizes["z"] / dt,
            "patches_per_s": n_patches / dt, "patches_per_cpu_s": n_patches / cpu, "peak_rss_mb": rss.peak / 2**20}


def _run_child(mode: str, args, **extra) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--size", str(args.size), "--batch-size", str(args.batch_size),
           "--seconds", str(args.seconds), "--repeats", str(args.repeats), "--work", str(args.work)]
    if args.model:
        cmd += ["--model", args.model]
    for k, v in extra.items():
        cmd += [f"--{k}", str(v)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        sys.stderr.write(res.stderr[-3000:])
        raise SystemExit(f"benchmark step {mode} {extra} failed")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="scoring throughput and memory")
    ap.add_argument("--model", default=None, help="TIQA model (.keras); default: the bundled one")
    ap.add_argument("--size", type=int, default=448, help="slice side (448: a 2 x 2 grid of patches)")
    ap.add_argument("--slices", type=int, default=128, help="slices of the shorter volume (the longer has 4x)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=9.0, help="duration of the raw measurement")
    ap.add_argument("--repeats", type=int, default=3,
                    help="runs per measurement (raw: windows); the median is reported")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--work", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--workers", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.child == "raw":
        print(json.dumps(_child_raw(args)))
        return 0
    if args.child == "e2e":
        print(json.dumps(_child_e2e(args)))
        return 0

    from tomoqc.cluster import available_cores

    cores = available_cores()
    with tempfile.TemporaryDirectory(prefix="tomoqc-bench-") as work:
        args.work = work
        short, long_ = args.slices, 4 * args.slices
        _write_volume(Path(work) / "warm.zarr", 4, args.size, seed=100)
        _write_volume(Path(work) / f"vol{short}.zarr", short, args.size)
        _write_volume(Path(work) / f"vol{long_}.zarr", long_, args.size)
        # raw before and after the pipeline runs, so that both see the same machine load
        raw_a = _run_child("raw", args)
        e1 = _run_child("e2e", args, workers=1, slices=short)
        e1t = _run_child("e2e", args, workers=1, threads=1, slices=short)
        e2 = _run_child("e2e", args, workers=2, slices=short)
        default_workers = cores
        e_long = _run_child("e2e", args, workers=default_workers, slices=long_)
        raw_b = _run_child("raw", args)
    raw = {k: 0.5 * (raw_a[k] + raw_b[k]) for k in ("patches_per_s", "patches_per_cpu_s")}
    e_default = e2 if default_workers == 2 else (e1 if default_workers == 1 else e_long)

    try:
        load = " load average %.1f %.1f %.1f;" % os.getloadavg()
    except OSError:
        load = ""
    print(f"machine: {cores} cores;{load} slices {args.size} x {args.size} (2 x 2 patches of 224); batch {args.batch_size}")
    print(f"{'measurement':<46}{'patches/s':>10}{'slices/s':>10}{'patches/CPU-s':>15}{'peak RSS MB':>13}")
    print(f"{'raw network, in-memory batches':<46}{raw['patches_per_s']:>10.1f}{'':>10}"
          f"{raw['patches_per_cpu_s']:>15.1f}{'':>13}"
          f"   (before {raw_a['patches_per_s']:.1f}, after {raw_b['patches_per_s']:.1f} patches/s)")
    for name, e in ((f"end-to-end, 1 worker, {short} slices", e1),
                    (f"end-to-end, 1 worker of 1 thread, {short} slices", e1t),
                    (f"end-to-end, 2 workers, {short} slices", e2),
                    (f"end-to-end, {default_workers} workers, {long_} slices", e_long)):
        print(f"{name:<46}{e['patches_per_s']:>10.1f}{e['slices_per_s']:>10.2f}{e['patches_per_cpu_s']:>15.1f}"
              f"{e['peak_rss_mb']:>13.0f}")
    print(f"end-to-end/raw per CPU-second (independent of other load): "
          f"{e_default['patches_per_cpu_s'] / raw['patches_per_cpu_s']:.2f}")
    print(f"2 workers / 1 worker (both using all {cores} cores): {e2['patches_per_s'] / e1['patches_per_s']:.2f}")
    print(f"2 workers / 1 worker (1 thread per worker): {e2['patches_per_s'] / e1t['patches_per_s']:.2f}")
    print(f"peak RSS {long_} / {short} slices: {e_long['peak_rss_mb'] / e_default['peak_rss_mb']:.2f}")
    print(f"end-to-end/raw: {e_default['patches_per_s'] / raw['patches_per_s']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
