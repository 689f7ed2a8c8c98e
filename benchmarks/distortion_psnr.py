"""Mean PSNR of each distortion level against its clean reference, both domains.

Prints a table (mean and standard deviation over phantoms) for the image-domain
recipes (reference = the phantom slice) and the sinogram-domain physics (reference =
the clean reconstruction of the same slice)::

    .venv/bin/python benchmarks/distortion_psnr.py --n 20 --size 256
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from tomoqc import distort
from tomoqc.distort import physics
from tomoqc.phantom import electrode_slice


def psnr(ref, img, data_range=1.0):
    mse = float(np.mean((np.asarray(ref, np.float64) - img) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(data_range**2 / mse)


def measure(n=20, size=256, seed=0, domains=("image", "physics")):
    """Return ``{domain: {distortion: array (n, 5) of PSNR}}``."""
    out = {d: {k: np.zeros((n, 5)) for k in distort.DISTORTIONS} for d in domains}
    specs = [{k: lv} for k in distort.DISTORTIONS for lv in distort.LEVELS]
    for i, ss in enumerate(np.random.SeedSequence(seed).spawn(n)):
        s_ph, s_im, s_phy = ss.spawn(3)
        img, _ = electrode_slice((size, size), seed=s_ph, randomize=True)
        if "image" in domains:
            rng = np.random.default_rng(s_im)
            for spec in specs:
                ((k, lv),) = spec.items()
                out["image"][k][i, lv - 1] = psnr(img, distort.apply(img, k, lv, rng=rng))
        if "physics" in domains:
            ref, dist = physics.apply_many(img, specs, rng=s_phy)
            for spec, d in zip(specs, dist):
                ((k, lv),) = spec.items()
                out["physics"][k][i, lv - 1] = psnr(ref, d)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20, help="phantoms (default 20)")
    ap.add_argument("--size", type=int, default=256, help="slice side (default 256)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    res = measure(args.n, args.size, args.seed)
    print(f"PSNR (dB) vs clean reference, mean +- sd over {args.n} random phantoms, "
          f"{args.size}x{args.size}")
    print(f"{'domain':8s} {'distortion':10s} " + " ".join(f"{'level ' + str(lv):>13s}" for lv in distort.LEVELS))
    for dom, table in res.items():
        for k, arr in table.items():
            cells = " ".join(f"{m:6.2f} +- {s:4.2f}" for m, s in zip(arr.mean(0), arr.std(0)))
            print(f"{dom:8s} {k:10s} {cells}")
    print(f"({time.perf_counter() - t0:.1f} s)")


if __name__ == "__main__":
    main()
