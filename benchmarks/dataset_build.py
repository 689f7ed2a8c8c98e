"""Time to build a phantom dataset per domain, extrapolated to 1000 images.

Builds ``--references`` phantom references in each domain (image, physics) with all
workers, times each build, and prints images per second and the time a 1000-image
dataset of that domain would take on this machine. With ``--previews DIR`` it also
writes a contact sheet per domain (``preview_image.png``, ``preview_physics.png``)::

    nice -n 10 .venv/bin/python benchmarks/dataset_build.py --references 8 --size 256 \\
        --previews docs/img
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from tomoqc.dataset import build_dataset, preview, read_manifest


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--references", type=int, default=8, help="references per domain (default 8)")
    ap.add_argument("--size", type=int, default=256, help="slice side (default 256)")
    ap.add_argument("--workers", type=int, default=None, help="worker processes (default: all cores)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--previews", type=Path, default=None, help="folder for preview PNGs")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="tomoqc-bench-"))
    print(f"{os.cpu_count()} CPU(s), {args.references} references of {args.size}x{args.size} per domain, "
          f"workers={args.workers or 'all'}")
    print(f"{'domain':8s} {'images':>7s} {'seconds':>8s} {'images/s':>9s} {'1000 images':>12s}")
    try:
        for domain in ("image", "physics"):
            out = work / domain
            t0 = time.perf_counter()
            build_dataset(out, references=args.references, domain=domain, size=args.size,
                          seed=args.seed, workers=args.workers, progress=False)
            dt = time.perf_counter() - t0
            n = len(read_manifest(out))
            rate = n / dt
            print(f"{domain:8s} {n:7d} {dt:8.1f} {rate:9.2f} {1000 / rate / 60:9.1f} min")
            if args.previews is not None:
                png = preview(out, args.previews / f"preview_{domain}.png", rows=3)
                print(f"         preview: {png}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
