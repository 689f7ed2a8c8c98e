"""Score a volume from Python and act on the result, as a notebook user would.

Usage::

    python examples/score_volume.py VOLUME [--model PATH] [--out DIR] [--workers N]

Without VOLUME, a small example volume is written first. The script scores every
slice on a local dask cluster, prints the five worst slices with their dominant
distortion, and writes a report next to the quality output.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="score a volume with the tomoqc API")
    ap.add_argument("volume", nargs="?", default=None)
    ap.add_argument("--model", default=None, help="TIQA model (.keras); default: the bundled one")
    ap.add_argument("--out", default="score-out")
    ap.add_argument("--workers", type=int, default=None, help="dask workers (0: in this process)")
    args = ap.parse_args(argv)

    import tomoqc.api as qc

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    volume = args.volume
    if volume is None:
        from tomoqc.example import write_example

        volume = write_example(out / "example.zarr", slices=16, size=256, overwrite=True, progress=False)

    # one cluster for as many volumes as you like; the model is loaded once per worker
    with qc.start_cluster("local", workers=args.workers) as client:
        kw = {"client": client} if client is not None else {"cluster": "none"}
        ds = qc.score(volume, model=args.model, out=out, overwrite=True, **kw)

    scores = ds["score"].values
    order = np.argsort(np.where(np.isfinite(scores), scores, np.inf))[:5]
    names = [str(d) for d in ds["distortion"].values]
    print("worst slices:")
    for i in order:
        if not np.isfinite(scores[i]):
            continue
        sev = ds["severity"].values[i]
        print(f"  z={int(ds['z'][i]):4d}  score {scores[i]:.2f}  most severe: {names[int(np.argmax(sev))]} "
              f"({sev.max():.2f})")
    summary = qc.summarize(ds)
    print(f"median {summary['median_score']}, 5th percentile {summary['p5_score']}, verdict {summary['verdict']}")
    rep = qc.report([qc.output_path(volume, out)], out / "report")
    print(f"report: {out / 'report' / 'index.html'} ({len(rep['volumes'])} volume)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
