#!/usr/bin/env python
"""How the ring index (tomoqc.metrics.rings) reads on a labelled dataset, and what it costs.

    python benchmarks/ring_index.py [DATASET] [--png ring_index.png] [--sizes 256 1024 2048]

Without DATASET a small labelled phantom set (6 references, both domains) is built first.

For each domain and distortion type it prints the range and median of the ring index per
level (references as level 0), then for the images that hold rings alone the Spearman
correlation of the index with the generated label and with the level. Last, the time of
one :func:`tomoqc.metrics.rings.ring_index` call on random slices of each ``--sizes`` side
(the first call of a shape builds its pixel geometry, later calls reuse it). With
``--png`` the per-level index is plotted (log scale), one panel per domain.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(1, str(Path(__file__).resolve().parent))


def main(argv=None) -> int:
    from tomoqc.labels import read_manifest_rows
    from tomoqc.metrics.rings import ring_index
    from tomoqc.metrics.stats import srocc

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset", type=Path, nargs="?", default=None,
                    help="dataset folder (manifest.csv; a label column adds the correlations); default: a fresh small set")
    ap.add_argument("--png", type=Path, default=None, help="plot of the index per level")
    ap.add_argument("--sizes", type=int, nargs="*", default=[256, 1024, 2048], help="slice sides to time")
    args = ap.parse_args(argv)
    if args.dataset is None:
        from _sample import labelled_sample

        args.dataset = labelled_sample()

    _, rows = read_manifest_rows(args.dataset)
    t0 = time.perf_counter()
    for r in rows:
        r["_ri"] = ring_index(np.load(args.dataset / r["file"]))
    dt = time.perf_counter() - t0
    print(f"{args.dataset}: {len(rows)} images, ring index in {dt:.1f} s ({1e3 * dt / max(len(rows), 1):.1f} ms each)")
    print(f"{'domain':8s} {'distortion':10s} {'level':>5s} {'n':>4s} {'min':>8s} {'median':>8s} {'max':>8s}")
    domains = sorted({r.get("domain") or "image" for r in rows})
    per_level = {}
    for dom in domains:
        refs = [r for r in rows if (r.get("domain") or "image") == dom and r["distortion"] == "none"]
        for dist in ("noise", "blur", "ring"):
            for lv in range(0, 6):
                sel = refs if lv == 0 else [r for r in rows if (r.get("domain") or "image") == dom
                                            and r["distortion"] == dist and int(r["level"]) == lv]
                v = np.array([r["_ri"] for r in sel], float)
                v = v[np.isfinite(v)]
                if not v.size or (lv == 0 and dist != "noise"):
                    continue
                name = "none" if lv == 0 else dist
                per_level[(dom, name, lv)] = v
                print(f"{dom:8s} {name:10s} {lv:5d} {v.size:4d} {v.min():8.4f} {np.median(v):8.4f} {v.max():8.4f}")
    labelled = any(r.get("label") not in (None, "") for r in rows)
    for dom in domains:
        ring = [r for r in rows if (r.get("domain") or "image") == dom and r["distortion"] == "ring"
                and np.isfinite(r["_ri"])]
        if len(ring) < 3:
            continue
        ri = [r["_ri"] for r in ring]
        line = f"{dom}: rings alone, Spearman of the index with the level {srocc(ri, [int(r['level']) for r in ring]):+.3f}"
        if labelled:
            lab = [float(r["label"]) for r in ring]
            line += f", with the label {srocc(ri, lab):+.3f}"
        print(line)
    print(f"{'side':>6s} {'first call (s)':>15s} {'later calls (s)':>16s}")
    rng = np.random.default_rng(0)
    for side in args.sizes:
        img = rng.random((side, side), dtype=np.float32)
        t = time.perf_counter()
        ring_index(img)
        first = time.perf_counter() - t
        reps = []
        for _ in range(3):
            t = time.perf_counter()
            ring_index(img)
            reps.append(time.perf_counter() - t)
        print(f"{side:6d} {first:15.3f} {np.median(reps):16.3f}")
    if args.png:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, len(domains), figsize=(5 * len(domains), 4), squeeze=False, sharey=True)
        colours = {"none": "k", "noise": "tab:blue", "blur": "tab:green", "ring": "tab:red"}
        for ax, dom in zip(axes[0], domains):
            for (d, name, lv), v in per_level.items():
                if d != dom:
                    continue
                off = {"none": 0.0, "noise": -0.2, "blur": 0.0, "ring": 0.2}[name]
                ax.scatter(np.full(v.size, lv + off), np.maximum(v, 1e-4), s=8, c=colours[name], alpha=0.6,
                           label=name if lv in (0, 1) else None)
            ax.set_yscale("log")
            ax.set_xlabel("distortion level (0: clean reference)")
            ax.set_title(f"{dom} domain")
        axes[0][0].set_ylabel("ring index (0 shown at 1e-4)")
        axes[0][0].legend(loc="upper left")
        fig.tight_layout()
        args.png.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.png, dpi=110)
        print(f"wrote {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
