"""Throughput of the full-reference observers, single pairs and batched stacks.

Prints megapixels per second of each metric at 224x224 and 512x512, single-pair calls
and one batched call over a stack, next to scikit-image's SSIM with the paper's settings
on the same images, and the time of the whole observer set on one 224x224 pair.

    python benchmarks/metrics_speed.py [--batch 32] [--repeat 5]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from rich.console import Console
from rich.table import Table
from skimage import data as skdata
from skimage.metrics import structural_similarity
from skimage.transform import resize

from tomoqc.metrics import fr


def best_times(fns: dict, repeat: int, number: int) -> dict:
    """Best time per call of each function; the functions take turns within every round,
    so that load from other processes affects them alike."""
    best = {k: float("inf") for k in fns}
    for fn in fns.values():
        fn()
    for _ in range(repeat):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(number):
                fn()
            best[k] = min(best[k], (time.perf_counter() - t0) / number)
    return best


def images(size: int, batch: int, seed: int = 0):
    base = resize(skdata.camera() / 255.0, (size, size), anti_aliasing=True)
    rng = np.random.default_rng(seed)
    stack = np.clip(base[None] + 0.05 * rng.standard_normal((batch, size, size)), 0, 1)
    return base.astype(np.float32), stack.astype(np.float32)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args(argv)
    con = Console()
    table = Table(title="full-reference metrics: megapixels/s (best of runs, one process)")
    for col in ("size", "metric", "single Mpx/s", "ms/pair", f"batched x{args.batch} Mpx/s", "ms/pair (batched)"):
        table.add_column(col, justify="right")
    for size in (224, 512):
        ref, stack = images(size, args.batch)
        mpx = size * size / 1e6
        number = max(1, int(2e6 / (size * size)))

        def sk():
            return structural_similarity(ref, stack[0], data_range=1.0, gaussian_weights=True,
                                         sigma=1.5, use_sample_covariance=False)

        single = {"skimage SSIM": sk}
        batched = {}
        for name, obs in fr.OBSERVERS.items():
            if min(ref.shape) < obs.min_side:
                continue
            single[name] = (lambda o: lambda: o.func(ref, stack[0], data_range=1.0))(obs)
            batched[name] = (lambda o: lambda: o.batch(ref, stack, data_range=1.0))(obs)
        ts = best_times(single, args.repeat, number)
        tb = best_times(batched, args.repeat, 1)
        for name, t in ts.items():
            if name in tb:
                b = tb[name] / args.batch
                table.add_row(str(size), name, f"{mpx / t:.1f}", f"{t * 1e3:.2f}", f"{mpx / b:.1f}", f"{b * 1e3:.2f}")
            else:
                table.add_row(str(size), name, f"{mpx / t:.1f}", f"{t * 1e3:.2f}", "-", "-")
        table.add_section()
    con.print(table)
    ref, stack = images(224, 1)

    def all_observers():
        return [obs.func(ref, stack[0], data_range=1.0) for obs in fr.OBSERVERS.values()]

    t = best_times({"all": all_observers}, args.repeat, 20)["all"]
    con.print(f"whole observer set ({', '.join(fr.OBSERVERS)}) on one 224x224 pair: {t * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
