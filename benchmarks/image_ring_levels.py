#!/usr/bin/env python
"""Does the network read the report's image-domain rings on real slices no training stage used?

Usage::

    python benchmarks/image_ring_levels.py [--model M.keras ...] [--realdata ../shared/realdata]

For each real slice below it draws the report's image-domain rings at levels 1-5
(:func:`tomoqc.distort.image.apply`, seeded per level) and scores the six images with the
**network alone** (its calibrated score, no measured terms, one view), then prints the scores
by level and the share of the 15 ordered pairs the network orders (a tie counts half):

* pydicom's ``CT_small`` (the slice of ``tests/test_bundled_model.py``), when pydicom is
  installed;
* the real slices of ``tests/data/real``;
* with ``--realdata``: the middle slice of the qim3d ``bone`` and ``cement`` volumes (in no
  training set) and slices of the ``NT``, ``fibers`` and ``shell`` volumes that
  :data:`tomoqc.train.measured.TRAIN_SAMPLES` does not take (other z of volumes that are).

Slices smaller than 256 px are resized to 256 px so that a 224 px patch grid fits. Several
``--model`` files give one column each. About 20 s per model on 2 cores.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

#: qim3d volumes and the z of the slice taken (see the module text).
QIM3D_SLICES = (("bone_128x128x128.tif", 64), ("cement_128x128x128.tif", 64), ("NT_128x128x128.tif", 110),
                ("fibers_150x150x150.tif", 20), ("shell_225x128x128.tif", 30))
LEVELS = (1, 2, 3, 4, 5)


def real_slices(realdata: Path | None) -> list[tuple[str, np.ndarray]]:
    from _real_slices import real_slices as test_and_named

    out = []
    try:
        import pydicom
        from pydicom.data import get_testdata_file

        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        out.append(("CT_small", ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope)))
    except ImportError:
        print("pydicom not installed: CT_small left out")
    named = [(f"qim3d/{name}", z, f"qim3d/{name.split('_')[0]} z{z}") for name, z in QIM3D_SLICES]
    return out + test_and_named(realdata, named)


def ring_series(img: np.ndarray) -> np.ndarray:
    from skimage.transform import resize

    from tomoqc.distort.image import apply
    from tomoqc.preprocess import normalize_slice

    img = normalize_slice(img).astype(np.float32)
    if min(img.shape) < 256:
        img = resize(img, (256, 256), preserve_range=True, anti_aliasing=False).astype(np.float32)
    return np.stack([img] + [apply(img, "ring", lv, rng=np.random.default_rng(lv)) for lv in LEVELS]).astype(
        np.float32)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, nargs="*", default=[None], help="TIQA models (default the bundled one)")
    ap.add_argument("--realdata", type=Path, default=None)
    a = ap.parse_args(argv)

    from tomoqc.logs import quiet_native_logs
    from tomoqc.models.tiqa import load_model
    from tomoqc.study import pair_accuracy

    quiet_native_logs()
    slices = [(n, ring_series(img)) for n, img in real_slices(a.realdata)]
    shares = {}
    for path in a.model:
        model = load_model(path, tta_views=1)
        label = "bundled" if path is None else str(path)
        print(f"\n{label}: network score by ring level 0-5, share of ordered pairs")
        print("| slice | " + " | ".join(f"L{lv}" for lv in (0,) + LEVELS) + " | pairs |")
        print("|---" * (len(LEVELS) + 3) + "|")
        shares[label] = []
        for name, stack in slices:
            s = model.score_slices(stack, measured_terms=False, tta=1, ood=False)["score"]
            shares[label].append(pair_accuracy(s, range(len(s)), [name] * len(s))[0])
            print(f"| {name} | " + " | ".join(f"{v:.2f}" for v in s) + f" | {shares[label][-1]:.3f} |")
        print("| mean | " + " | " * len(LEVELS) + f" | {np.mean(shares[label]):.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
