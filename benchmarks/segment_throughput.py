"""Throughput of segmentation: the network per uncertainty mode, the whole ``segment`` job, its memory.

Prints three tables.

1. Per uncertainty mode (:meth:`tomoqc.models.segmenter.SegmentModel.segment_slices`):
   an untrained D-LinkNet (weights do not change the time a pass takes) segments a block
   of phantom slices once to trace the network, then each mode is timed on the same
   block; one row per mode: seconds per slice, megapixels per second, network passes per
   slice, and the tiling overhead (pixels the network sees over pixels of the slice, for
   one pass).
2. End to end, for each slice side of ``--e2e-sizes``: a uint16 zarr volume of
   ``--slices`` slices is written to a temporary folder, and the same D-LinkNet, saved
   with its card, is timed (a) *raw*: ``segment_slices`` on the whole volume held in
   memory, the model already loaded and traced; (b) *end to end*:
   :func:`tomoqc.segmentation.segment` on the zarr file with ``workers=0`` (in this
   process: read, normalise, tile, predict, blend, write the OME-Zarr, rename). (b) is
   timed warm (the engine has already loaded and traced the model in an earlier run,
   whose time is shown as *cold*); each figure is the best of ``--repeats`` runs. The
   issue's goal is (b)/(a) >= 85 %.
3. Peak resident memory against the volume's length: ``segment`` runs in a fresh
   process on volumes of N and 4N slices (``--rss-slices N``, side ``--rss-size``, in
   chunks of ``--rss-chunk`` slices, so that both runs reach the same steady state) and
   each process reports its peak RSS (``VmHWM``), and its peak after importing
   TensorFlow and loading the model. The goal: flat, bounded by the chunk, not the
   volume (the 3N extra slices add less than the output of one slice).

Each table ends with a one-line verdict where it has a goal. ``--profile`` adds, per
size, the functions that take the most time in one warm end-to-end run (cProfile).

Usage::

    python benchmarks/segment_throughput.py [--size 1024] [--slices 4] [--width 0.25]
        [--tile 512] [--overlap 64] [--samples 8] [--batch-size 4] [--modes entropy tta mc]
        [--e2e-sizes 512 2048] [--repeats 2] [--rss-size 2048] [--rss-slices 4] [--rss-chunk 2]
        [--profile]

``--modes`` with no mode, ``--e2e-sizes`` with no size or ``--rss-slices 0`` skip a table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

#: The issue's goal: end-to-end throughput at least this share of the raw network's.
E2E_GOAL = 0.85
_MIB = 2**20


def _write_volume(path: Path, slices: int, size: int, seed: int = 0):
    """A uint16 zarr volume of phantom slices, stored one slice per chunk; returns the array.

    One phantom slice (slow to make at large sizes) is drawn per volume; the others are
    shifted copies with their own detector noise, so that no two slices are equal.
    """
    import numpy as np
    import zarr

    from tomoqc.phantom import electrode_slice

    rng = np.random.default_rng(seed)
    base = electrode_slice((size, size), seed=seed)[0]
    z = zarr.create_array(str(path), shape=(slices, size, size), chunks=(1, size, size), dtype="uint16")
    out = np.empty((slices, size, size), np.uint16)
    for i in range(slices):
        img = np.roll(base, (37 * i, 91 * i), axis=(0, 1)) + rng.normal(0, 0.03, (size, size))
        out[i] = np.clip(img * 20000 + 8000, 0, 65535).astype(np.uint16)
        z[i] = out[i]
    return out


def _save_model(net, folder: Path, n_classes: int, width: float, dropout: float) -> Path:
    path = folder / "dlinknet.keras"
    net.save(path)
    card = {"kind": "dlinknet", "n_classes": n_classes, "width": width, "dropout": dropout,
            "class_names": [f"class {i}" for i in range(n_classes)] if n_classes > 1 else ["foreground"]}
    (folder / "dlinknet.json").write_text(json.dumps(card))
    return path


def _output_bytes_per_pixel(n_classes: int) -> int:
    """Bytes a segmentation output holds per pixel (entropy mode): label, probability, uncertainty."""
    channels = 1 if n_classes == 1 else n_classes
    return 1 + 4 * channels + 4


# ----------------------------------------------------------------------------- table 1


def _modes_table(args) -> None:
    import keras
    import numpy as np

    from tomoqc.models.dlinknet import build_dlinknet
    from tomoqc.models.segmenter import SegmentModel, blend_weights
    from tomoqc.phantom import electrode_slice

    keras.utils.set_random_seed(0)
    net = build_dlinknet(args.classes, width=args.width, dropout=0.2 if "mc" in args.modes else 0.0, seed=0,
                         full_res=args.full_res)
    sm = SegmentModel(net)
    block = np.stack([electrode_slice((args.size, args.size), seed=i)[0] for i in range(args.slices)])
    side = -(-args.size // 32) * 32
    tiles, (th, tw), _, _ = blend_weights((side, side), args.tile, args.overlap)
    overhead = len(tiles) * th * tw / args.size**2
    kw = {"tile": args.tile, "overlap": args.overlap, "batch_size": args.batch_size, "samples": args.samples}

    print(f"D-LinkNet width {args.width} ({net.count_params():,} parameters), {args.classes} classes; "
          f"{args.slices} slices of {args.size} x {args.size}; tile {args.tile}, overlap {args.overlap}: "
          f"{len(tiles)} tiles per slice")
    print(f"{'mode':<8} {'passes':>6} {'s/slice':>9} {'Mpx/s':>8} {'overhead':>9}")
    for mode in args.modes:
        sm.segment_slices(block[:1], uncertainty=mode, **kw)  # trace the shapes this mode uses
        t0 = time.perf_counter()
        sm.segment_slices(block, uncertainty=mode, **kw)
        dt = time.perf_counter() - t0
        passes = {"entropy": 1, "tta": 8, "mc": args.samples}[mode]
        print(f"{mode:<8} {passes:>6} {dt / args.slices:>9.2f} {args.slices * args.size**2 / dt / 1e6:>8.3f} "
              f"{overhead:>9.2f}")


# ----------------------------------------------------------------------------- table 2


def _timed(fn):
    """(wall seconds, CPU seconds of this process, all threads, fn's result)."""
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - t0, time.process_time() - c0, out


def _e2e_table(args, work: Path, model_path: Path) -> list[float]:
    """Raw vs end-to-end rates per slice side; returns the ratios (b)/(a)."""
    from tomoqc.models.segmenter import load_segment_model
    from tomoqc.segmentation import segment

    kw = {"tile": args.tile, "overlap": args.overlap, "batch_size": args.batch_size}
    sm = load_segment_model(model_path)
    rows, profiles = [], {}
    for size in args.e2e_sizes:
        vpath = work / f"vol{size}.zarr"
        block = _write_volume(vpath, args.slices, size, seed=size)
        mpx = args.slices * size * size / 1e6
        sm.segment_slices(block[:1], **kw)  # trace the tile shape

        def end_to_end(tag):
            out = work / f"out{size}-{tag}"
            dt, cpu, ds = _timed(lambda: segment(vpath, model=model_path, out=out, workers=0, progress=False,
                                                 **kw))
            chunk = int(ds.attrs["chunk_slices"])
            del ds
            shutil.rmtree(out, ignore_errors=True)
            return dt, cpu, chunk

        cold, _, chunk = end_to_end("cold")  # loads and traces the model in the engine's cache
        raw, e2e = [], []
        for r in range(args.repeats):  # interleaved, so that a busy neighbour hurts both alike
            raw.append(_timed(lambda: sm.segment_slices(block, **kw))[:2])
            e2e.append(end_to_end(f"warm{r}")[:2])
        if args.profile:
            profiles[size] = _profile(lambda: end_to_end("profile"))
        a, b = min(t for t, _ in raw), min(t for t, _ in e2e)
        a_cpu, b_cpu = min(c for _, c in raw), min(c for _, c in e2e)
        rows.append((size, chunk, mpx / a, mpx / b, mpx / cold, a / b, mpx / a_cpu, mpx / b_cpu, a_cpu / b_cpu))
        shutil.rmtree(vpath, ignore_errors=True)

    print()
    print(f"end to end: {args.slices} slices per volume, uint16 zarr (one slice per stored chunk), entropy mode, "
          f"best of {args.repeats}; (a) raw = segment_slices on the block in memory, (b) = tomoqc.segmentation."
          "segment(workers=0) on the zarr")
    print("per wall second (the goal) and per CPU second of the process (all threads: less sensitive to other "
          "programs on the machine); cold = the first end-to-end run, which loads and traces the model")
    print(f"{'side':>6} {'chunk':>6} {'(a) raw Mpx/s':>14} {'(b) e2e Mpx/s':>14} {'cold e2e':>9} {'(b)/(a)':>8}"
          f" {'(a) Mpx/CPU-s':>14} {'(b) Mpx/CPU-s':>14} {'(b)/(a) CPU':>12}")
    for size, chunk, ra, rb, rc, ratio, ca, cb, cratio in rows:
        print(f"{size:>6} {chunk:>6} {ra:>14.3f} {rb:>14.3f} {rc:>9.3f} {100 * ratio:>7.1f}%"
              f" {ca:>14.3f} {cb:>14.3f} {100 * cratio:>11.1f}%")
    ratios = [r[5] for r in rows]
    ok = all(r >= E2E_GOAL for r in ratios)
    print(f"verdict: end-to-end >= {100 * E2E_GOAL:.0f}% of raw: {'PASS' if ok else 'FAIL'} "
          f"({', '.join(f'{s} px {100 * r:.1f}%' for s, r in zip(args.e2e_sizes, ratios))})")
    for size, text in profiles.items():
        print(f"\nprofile of one warm end-to-end run, {size} px (top functions by own time):")
        print(text)
    return ratios


def _profile(fn, top: int = 14) -> str:
    import cProfile
    import io
    import pstats

    prof = cProfile.Profile()
    prof.enable()
    fn()
    prof.disable()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(top)
    lines = [ln for ln in buf.getvalue().splitlines() if ln.strip()]
    start = next((i for i, ln in enumerate(lines) if ln.lstrip().startswith("ncalls")), 0)
    head = [ln for ln in lines[:start] if "function calls" in ln]
    return "\n".join(head + lines[start:])


# ----------------------------------------------------------------------------- table 3


def _peak_rss_kib() -> int:
    """This process's peak resident memory so far, in KiB.

    Linux: ``VmHWM`` of ``/proc/self/status``, the high-water mark of this program's own
    memory. (``getrusage``'s ``ru_maxrss`` survives ``exec``: a child started by a large
    parent would report the parent's size at the fork.) Elsewhere: ``ru_maxrss``.
    """
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak // 1024 if sys.platform == "darwin" else peak  # bytes on macOS, KiB elsewhere


def _rss_child(args) -> int:
    """Run in a fresh process: segment one volume in-process and print the memory it took."""
    from tomoqc.models.segmenter import load_segment_model
    from tomoqc.segmentation import segment

    load_segment_model(args.model)
    base = _peak_rss_kib()
    t0 = time.perf_counter()
    ds = segment(args.rss_child, model=args.model, out=args.out, workers=0, progress=False, tile=args.tile,
                 overlap=args.overlap, batch_size=args.batch_size, chunk_slices=args.rss_chunk or None)
    seconds = time.perf_counter() - t0
    peak = _peak_rss_kib()
    print(json.dumps({"baseline_kib": base, "peak_kib": peak, "seconds": seconds,
                      "chunk": int(ds.attrs["chunk_slices"]), "slices": int(ds.sizes["z"])}))
    return 0


def _rss_table(args, work: Path, model_path: Path) -> bool:
    size, n = args.rss_size, args.rss_slices
    runs = []
    for slices in (n, 4 * n):
        vpath = work / f"rss{slices}.zarr"
        _write_volume(vpath, slices, size, seed=slices)
        out = work / f"rss-out{slices}"
        cmd = [sys.executable, os.path.abspath(__file__), "--rss-child", str(vpath), "--model", str(model_path),
               "--out", str(out), "--tile", str(args.tile), "--overlap", str(args.overlap),
               "--batch-size", str(args.batch_size), "--rss-chunk", str(args.rss_chunk)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
        if proc.returncode != 0:
            raise SystemExit(f"the memory run on {slices} slices failed:\n{proc.stderr[-3000:]}")
        runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        shutil.rmtree(vpath, ignore_errors=True)
        shutil.rmtree(out, ignore_errors=True)

    per_slice_out = size * size * _output_bytes_per_pixel(args.classes)
    print()
    print(f"peak memory: tomoqc.segmentation.segment(workers=0) in a fresh process, slices of {size} x {size} "
          f"uint16; the output of one slice is {per_slice_out / _MIB:.0f} MiB")
    print(f"{'slices':>7} {'chunk':>6} {'volume in MiB':>14} {'output MiB':>11} {'peak after load':>15} "
          f"{'peak RSS MiB':>13} {'peak - load':>12} {'s':>7}")
    for r in runs:
        vol_mib = r["slices"] * size * size * 2 / _MIB
        print(f"{r['slices']:>7} {r['chunk']:>6} {vol_mib:>14.0f} {r['slices'] * per_slice_out / _MIB:>11.0f} "
              f"{r['baseline_kib'] / 1024:>15.0f} {r['peak_kib'] / 1024:>13.0f} "
              f"{(r['peak_kib'] - r['baseline_kib']) / 1024:>12.0f} {r['seconds']:>7.1f}")
    growth = (runs[1]["peak_kib"] - runs[0]["peak_kib"]) * 1024
    flat = growth < per_slice_out
    chunk = runs[0]["chunk"]
    if n < 2 * chunk or n % chunk:
        print(f"note: N = {n} is not a multiple of at least 2 chunks of {chunk} slices: the two runs do not reach "
              "the same steady state (a chunk is computed while the previous one is still held), so their peaks "
              "may differ by a chunk's work memory for that reason alone")
    print(f"verdict: peak RSS flat in volume length: {'PASS' if flat else 'FAIL'} ({n} -> {4 * n} slices: "
          f"{growth / _MIB:+.0f} MiB; a run holding the volume's output would add "
          f"{3 * n * per_slice_out / _MIB:.0f} MiB)")
    return flat


# ----------------------------------------------------------------------------- main


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=1024, help="slice side of the per-mode table, in pixels")
    ap.add_argument("--slices", type=int, default=4, help="slices per block (table 1) and per volume (table 2)")
    ap.add_argument("--width", type=float, default=0.25, help="D-LinkNet width multiplier")
    ap.add_argument("--classes", type=int, default=3)
    ap.add_argument("--full-res", action=argparse.BooleanOptionalAction, default=True,
                    help="with the full-resolution skip, as the bundled phases segmenter (default on)")
    ap.add_argument("--tile", type=int, default=512)
    ap.add_argument("--overlap", type=int, default=64)
    ap.add_argument("--samples", type=int, default=8, help="Monte-Carlo dropout passes")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--modes", nargs="*", default=["entropy", "tta", "mc"])
    ap.add_argument("--e2e-sizes", nargs="*", type=int, default=[512, 2048], help="slice sides of table 2")
    ap.add_argument("--repeats", type=int, default=2, help="timed runs of table 2 (the best counts)")
    ap.add_argument("--rss-size", type=int, default=2048, help="slice side of table 3")
    ap.add_argument("--rss-slices", type=int, default=4, help="N of table 3 (volumes of N and 4N slices; 0: skip)")
    ap.add_argument("--rss-chunk", type=int, default=2,
                    help="slices per task in table 3 (0: the engine's default); N should hold at least 2 chunks")
    ap.add_argument("--profile", action="store_true", help="profile one warm end-to-end run per size")
    ap.add_argument("--work-dir", type=Path, default=None, help="where the temporary volumes go (default: TMPDIR)")
    ap.add_argument("--rss-child", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.rss_child:
        return _rss_child(args)
    if args.slices < 1 or args.repeats < 1 or args.rss_slices < 0:
        ap.error("--slices and --repeats must be >= 1, --rss-slices >= 0")

    if args.modes:
        _modes_table(args)
    if not args.e2e_sizes and not args.rss_slices:
        return 0

    import keras

    from tomoqc.models.dlinknet import build_dlinknet

    keras.utils.set_random_seed(0)
    with tempfile.TemporaryDirectory(prefix="segbench-", dir=args.work_dir) as tmp:
        work = Path(tmp)
        net = build_dlinknet(args.classes, width=args.width, dropout=0.2, seed=0, full_res=args.full_res)
        model_path = _save_model(net, work, args.classes, args.width, 0.2)
        print(f"\nD-LinkNet width {args.width}{' + full-resolution skip' if args.full_res else ''} "
              f"({net.count_params():,} parameters), {args.classes} classes, "
              f"tile {args.tile}, overlap {args.overlap}, batch {args.batch_size}")
        if args.e2e_sizes:
            _e2e_table(args, work, model_path)
        if args.rss_slices:
            _rss_table(args, work, model_path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
