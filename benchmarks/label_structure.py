#!/usr/bin/env python
"""How much of a labelled dataset's labels the distortion level alone explains.

    python benchmarks/label_structure.py [DATASET ...]

Without a DATASET a small labelled phantom set (6 references, both domains) is built first.

For each domain and distortion type (references included) it prints the SROCC between
the labels and the level order (the best any predictor that only orders levels can reach),
the label mean per level and the spread across references at one level. For rings it
adds, at levels 1, 3 and 5, the Spearman correlation across references of the label with
the reference's mean intensity (in the data's own units) and with the ring's visibility
(RMS of the difference from the reference over the reference's mean gradient magnitude,
in the reference's percentile units, :func:`tomoqc.labels.reference_affine`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(1, str(Path(__file__).resolve().parent))


def _spearman(a, b) -> float:
    from tomoqc.metrics.stats import srocc

    return float(srocc(np.asarray(a, float), np.asarray(b, float)))


def main(argv=None) -> int:
    from scipy import ndimage

    from tomoqc.labels import read_manifest_rows, reference_affine

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("datasets", nargs="*", type=Path,
                    help="labelled dataset folders (manifest.csv with label); default: a fresh small set")
    args = ap.parse_args(argv)
    if not args.datasets:
        from _sample import labelled_sample

        args.datasets = [labelled_sample()]
    for data in args.datasets:
        _, rows = read_manifest_rows(data)
        print(f"\n{data}")
        print(f"{'domain':8s} {'type':6s} {'level-only SROCC':>16s}  label mean by level 0-5 (sd across references)")
        for dom in sorted({r["domain"] for r in rows}):
            for t in ("noise", "blur", "ring"):
                sel = [r for r in rows if r["domain"] == dom and r["distortion"] in (t, "none")]
                lab = np.array([float(r["label"]) for r in sel])
                lev = np.array([int(r["level"]) for r in sel])
                cells = " ".join(f"{lab[lev == k].mean():.2f}({lab[lev == k].std():.2f})" for k in range(6))
                print(f"{dom:8s} {t:6s} {_spearman(-lev, lab):16.3f}  {cells}")
        print(f"\n{'domain':8s} {'level':>5s} {'rho(label, mean)':>17s} {'rho(label, visibility)':>23s}")
        refs = {(r["reference"], r["domain"]): r for r in rows if r["distortion"] == "none"}
        for dom in sorted({r["domain"] for r in rows}):
            for level in (1, 3, 5):
                lab, mean, vis = [], [], []
                for r in rows:
                    if r["domain"] != dom or r["distortion"] != "ring" or int(r["level"]) != level:
                        continue
                    ref = np.load(data / refs[(r["reference"], dom)]["file"]).astype(np.float64)
                    dist = np.load(data / r["file"]).astype(np.float64)
                    lo, hi = reference_affine(ref) or (0.0, 1.0)
                    n, dn = (ref - lo) / (hi - lo), (dist - lo) / (hi - lo)
                    grad = np.hypot(ndimage.sobel(n, 0), ndimage.sobel(n, 1)).mean()
                    lab.append(float(r["label"]))
                    mean.append(ref.mean())
                    vis.append(np.sqrt(((dn - n) ** 2).mean()) / (grad + 1e-3))
                print(f"{dom:8s} {level:5d} {_spearman(lab, mean):17.2f} {_spearman(lab, vis):23.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
