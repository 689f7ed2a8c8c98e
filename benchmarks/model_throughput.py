#!/usr/bin/env python
"""Inference throughput of the TIQA network: 224 x 224 patches per second by batch size,
and the time to score one 256 x 256 slice per call.

    python benchmarks/model_throughput.py [--model PATH] [--seconds 3] [--batch-sizes 1 2 4 8 16 32 64]

Runs on the CPU and, when TensorFlow sees one, on the GPU. Each batch size is warmed up
(one traced call) and then timed for about ``--seconds`` seconds through
:meth:`tomoqc.models.tiqa.TiqaModel.predict_patches`, the path ``tomoqc score`` uses.
The slice row times :meth:`~tomoqc.models.tiqa.TiqaModel.score_slices` on one phantom
slice per call (4 patches, two test-time views, measured terms, the model's batch size
of 16): what ``tomoqc score --chunk-slices 1`` pays per slice.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def measure(model, batch: int, seconds: float) -> float:
    import numpy as np

    from tomoqc.models.tiqa import PATCH

    x = np.random.default_rng(0).uniform(0, 1, size=(batch, PATCH, PATCH)).astype(np.float32)
    model.predict_patches(x, batch_size=batch)  # trace and warm up
    n, t0 = 0, time.perf_counter()
    while True:
        model.predict_patches(x, batch_size=batch)
        n += batch
        dt = time.perf_counter() - t0
        if dt >= seconds and n >= 2 * batch:
            return n / dt


def seconds_per_slice(model, seconds: float) -> float:
    import numpy as np

    from tomoqc.phantom import electrode_slice

    img = electrode_slice((256, 256), seed=0)[0].astype(np.float32)
    model.score_slices(img)  # trace and warm up
    n, t0 = 0, time.perf_counter()
    while True:
        model.score_slices(img)
        n += 1
        dt = time.perf_counter() - t0
        if dt >= seconds and n >= 2:
            return dt / n


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=None, help="a .keras TIQA model (default: the bundled one)")
    ap.add_argument("--seconds", type=float, default=3.0, help="timing per batch size")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64])
    args = ap.parse_args(argv)

    import tensorflow as tf

    from tomoqc.models.tiqa import TiqaModel, build_tiqa, load_model

    devices = [("CPU", "/CPU:0")] + [(f"GPU {i}", f"/GPU:{i}") for i, _ in enumerate(tf.config.list_physical_devices("GPU"))]
    print(f"TensorFlow {tf.__version__}, {os.cpu_count()} CPU cores visible")
    print(f"{'device':<8} {'batch':>5} {'patches/s':>10} {'ms/patch':>9}")
    for name, dev in devices:
        with tf.device(dev):
            try:
                model = load_model(args.model)
            except Exception:
                if args.model is not None:
                    raise
                model = TiqaModel(build_tiqa(seed=0))  # no bundled weights: same network, random weights
            for b in args.batch_sizes:
                rate = measure(model, b, args.seconds)
                print(f"{name:<8} {b:>5} {rate:>10.1f} {1000.0 / rate:>9.2f}", flush=True)
            print(f"{name:<8} one 256-px slice per call: {seconds_per_slice(model, args.seconds):.2f} s/slice",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
