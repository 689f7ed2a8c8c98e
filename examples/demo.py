"""The whole job on an example: volume -> slice scores -> report.

Run with ``make demo`` or ``python examples/demo.py --out demo-out``.

1. Write a synthetic electrode volume whose slices are clean at the start, then
   increasingly noisy, blurred and ring-corrupted along z
   (:func:`tomoqc.example.write_example`).
2. Score every slice with the bundled TIQA model on a local dask cluster
   (:func:`tomoqc.pipeline.score`).
3. Aggregate a report with plots (:func:`tomoqc.report.report`), print a summary
   table, the mean score of each impaired part next to its ground truth, and where
   the plots are.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="demo-out", help="output folder (default: demo-out)")
    ap.add_argument("--model", default=None, help="TIQA model (.keras); default: the bundled one")
    ap.add_argument("--slices", type=int, default=40, help="slices of the example volume (default 40)")
    ap.add_argument("--size", type=int, default=256, help="slice side in pixels (default 256)")
    ap.add_argument("--workers", type=int, default=None, help="dask workers (default: one per core; 0: no cluster)")
    args = ap.parse_args(argv)

    import numpy as np
    import zarr
    from rich.console import Console
    from rich.table import Table

    from tomoqc.errors import TomoqcError
    from tomoqc.example import write_example
    from tomoqc.pipeline import output_path, score
    from tomoqc.report import report

    con = Console()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    vol_path = out / "example.zarr"
    t0 = time.perf_counter()
    try:
        con.print(f"[bold]1/3[/] example volume: {args.slices} slices of {args.size} x {args.size} -> {vol_path}")
        write_example(vol_path, slices=args.slices, size=args.size, overwrite=True, progress=False)
        q = output_path(vol_path, out)
        if q.exists():
            shutil.rmtree(q)
        con.print("[bold]2/3[/] scoring every slice" + (f" with {args.model}" if args.model else " with the bundled model"))
        ds = score(vol_path, model=args.model, out=out, workers=args.workers, overwrite=True)
        con.print("[bold]3/3[/] report")
        rep = report([q], out / "report")
    except TomoqcError as err:
        print(f"demo: error: {err}", file=sys.stderr)
        return 1

    truth = dict(zarr.open_array(str(vol_path), mode="r").attrs).get("example", {})
    segs = truth.get("segments", [])
    s = ds["score"].values
    sev = ds["severity"].values
    names = [str(d) for d in ds["distortion"].values]
    table = Table(title="example volume: mean slice score per part (ground truth from the generator)",
                  title_justify="left")
    for col in ("slices", "true impairment", "mean score", *names):
        table.add_column(col, justify="left" if col in ("slices", "true impairment") else "right")
    for seg in segs:
        sl = slice(int(seg["z_start"]), int(seg["z_stop"]))
        part = s[sl]
        ok = np.isfinite(part)
        mean = f"{part[ok].mean():.2f}" if ok.any() else "-"
        row = [f"{seg['z_start']}-{seg['z_stop'] - 1}", seg["distortion"] + (" (levels 1->5)" if seg["distortion"] != "none" else ""), mean]
        row += [f"{np.nanmean(sev[sl, j]):.2f}" for j in range(len(names))]
        table.add_row(*row)
    con.print(table)

    v = rep["volumes"][0]
    con.print(
        f"volume median score {v['median_score']}, 5th percentile {v['p5_score']}, worst slices "
        f"{' '.join(f'{a}-{b}' if a != b else str(a) for a, b in v['worst_slices'])}, "
        f"dominant distortion {v['dominant_distortion']}, verdict {v['verdict']} (threshold {v['threshold']})"
    )
    con.print(f"model: {ds.attrs.get('model_id')}")
    con.print(f"quality output: {q}")
    con.print(f"plots:          {', '.join(str(out / 'report' / p) for p in [v['plot']])}")
    con.print(f"report:         {out / 'report' / 'index.html'}  (also report.csv, report.json)")
    con.print(f"done in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
