"""Fit the out-of-distribution statistics of a TIQA model and write them into its model card.

The statistics (:mod:`tomoqc.models.trust`) describe what the model has seen: the pooled
backbone features of in-distribution slices (PCA-whitened, with a distance threshold at a
high quantile of held-out slices) and the range of its raw slice scores. In-distribution
slices are, seeded:

- generated electrode phantoms (:mod:`tomoqc.phantom`, domain-randomised), clean and with
  one distortion of :mod:`tomoqc.distort` at a random level in either domain;
- real reconstructions of ``--realdata`` (``../shared/realdata``): the qim3d volumes,
  battery_xct, psi_shell, qbi, imars3d and HTC2022 discs (sinograms rebinned from fan to
  parallel beam and reconstructed by filtered back-projection; ``--htc 0`` skips them).

It also fits test (c), the domain classifier: those slices, 8-bit PNG/JPEG round trips of
them and more views of the real volumes (tomography) against scikit-image's photographs
(:data:`TRAIN_PHOTOS`, whole, cropped, rescaled, inverted) and procedurally rendered text,
flat cartoons and edged gradients (not tomography). The photographs of
:data:`HELDOUT_PHOTOS` are never fitted: they are the probes of ``tests/test_trust.py``.

It prints the distances and probabilities of probes that must be flagged: scikit-image's
camera, astronaut and coffee (gray, fitted in (c)), the held-out photographs, and pure
noise. Test (c) is fitted only with ``--domain``. ``--cache FILE`` keeps the features by slice name so that a second run only fits
(delete it when the model changes).

Usage::

    python scripts/fit_trust.py --realdata ../shared/realdata --out tomoqc/models/weights/tiqa_default.json

``--out`` is loaded, given a ``trust`` entry, and saved (every other key is kept).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np


def phantom_slices(n: int, seed: int, size: int = 256):
    from tomoqc.distort import apply
    from tomoqc.phantom import electrode_slice

    rng = np.random.default_rng(seed)
    for i in range(n):
        img = electrode_slice((size, size), seed=seed + i, randomize=True)[0].astype(np.float32)
        yield f"phantom-{i}-clean", img
        dist = ("noise", "blur", "ring")[i % 3]
        domain = ("image", "physics")[(i // 3) % 2]
        level = int(rng.integers(1, 6))
        try:
            out = apply(img, dist, level, domain=domain, rng=rng)
        except Exception:  # a recipe that does not apply to this size: the image domain
            out = apply(img, dist, level, domain="image", rng=rng)
        yield f"phantom-{i}-{domain}-{dist}{level}", np.asarray(out, np.float32)


def _pick(n_total: int, k: int):
    k = min(k, n_total)
    return np.unique(np.round(np.linspace(0.15 * (n_total - 1), 0.85 * (n_total - 1), k)).astype(int))


def htc_recon(path: Path, size: int = 512):
    """FBP of an HTC2022 fan-beam sinogram after rebinning to parallel beam (NOTES.md geometry)."""
    import scipy.io
    from scipy.interpolate import RegularGridInterpolator
    from skimage.transform import iradon

    m = scipy.io.loadmat(str(path), squeeze_me=True, struct_as_record=False)
    key = [k for k in m if not k.startswith("__")][0]
    sino = np.asarray(m[key].sinogram, np.float64)  # (angles, detector)
    n_ang, n_det = sino.shape
    sod, sdd, pix = 410.66, 553.74, 0.2
    theta = np.deg2rad(np.arange(n_ang) * 0.5)
    u = (np.arange(n_det) - (n_det - 1) / 2) * pix  # detector coordinate (mm)
    s_max = sod * np.sin(np.arctan(u.max() / sdd))
    s = np.linspace(-s_max, s_max, n_det)  # parallel-beam offsets (mm, at the axis)
    gamma = np.arcsin(s / sod)
    uu = sdd * np.tan(gamma)
    # 360 degrees of fan data, parallel angles 0-180: beta = theta + gamma
    betas = np.deg2rad(np.arange(0, 180, 0.5))
    tt = (betas[:, None] - gamma[None, :]) % (2 * np.pi)
    if theta[-1] < 2 * np.pi - 1e-9:  # close the circle for the interpolation
        ext_theta, ext_sino = np.concatenate([theta, [2 * np.pi]]), np.concatenate([sino, sino[:1]], axis=0)
    else:
        ext_theta, ext_sino = theta, sino
    f = RegularGridInterpolator((ext_theta, u), ext_sino, bounds_error=False, fill_value=0.0)
    par = f(np.stack([tt.ravel(), np.broadcast_to(uu, tt.shape).ravel()], axis=1)).reshape(tt.shape)
    rec = iradon(par.T, theta=np.rad2deg(betas), circle=True, output_size=n_det, filter_name="ramp")
    c0 = (n_det - size) // 2
    return rec[c0 : c0 + size, c0 : c0 + size].astype(np.float32)


def _imread(path):
    """A TIFF image or stack; PIL for compressions tifffile needs imagecodecs for (LZW)."""
    import tifffile

    try:
        return tifffile.imread(path)
    except ValueError:
        from PIL import Image

        return np.asarray(Image.open(path))


def real_slices(root: Path, *, per_volume: int = 4, htc: int = 4):
    root = Path(root)
    for p in sorted((root / "qim3d").glob("*.tif")):
        vol = _imread(p)
        for k in _pick(vol.shape[0], per_volume):
            yield f"qim3d/{p.stem}[{k}]", vol[k]
    bx = root / "battery_xct"
    for name in ("im_1.tif", "im_2.tif"):
        if (bx / name).is_file():
            yield f"battery_xct/{name}", _imread(bx / name)
    cells = sorted((bx / "cell_vol").glob("*.tif"))
    for k in _pick(len(cells), per_volume) if cells else []:
        yield f"battery_xct/cell_vol/{cells[k].name}", _imread(cells[k])
    for p in sorted((root / "psi_shell").glob("*.npy")):
        yield f"psi_shell/{p.name}", np.load(p)
    for p in sorted((root / "qbi").glob("*.tif")):
        a = _imread(p)
        if a.ndim == 3:
            a = a[..., 0] if a.shape[-1] in (3, 4) else a[0]
        yield f"qbi/{p.name}", a
    for p in sorted((root / "imars3d").glob("*.npy")):
        yield f"imars3d/{p.name}", np.load(p)
    files = sorted(p for p in (root / "htc2022").glob("htc2022_*_full.mat"))
    for k in _pick(len(files), htc) if htc and files else []:
        try:
            yield f"htc2022/{files[k].name}", htc_recon(files[k])
        except Exception as err:  # pragma: no cover - reported, not fatal
            print(f"  skipped {files[k].name}: {type(err).__name__}: {err}", file=sys.stderr)


# ----------------------------------------------------------------------------- test (c)
#: scikit-image photographs kept out of the domain classifier's fit: the test's probes
HELDOUT_PHOTOS = ("moon", "text", "page", "hubble_deep_field", "immunohistochemistry", "retina")
#: scikit-image photographs the domain classifier learns "not tomography" from
TRAIN_PHOTOS = ("chelsea", "rocket", "coffee", "astronaut", "camera", "clock", "coins", "brick", "gravel",
                "grass", "logo", "colorwheel", "horse", "checkerboard", "cell")


def gray_photo(name: str) -> np.ndarray:
    """A scikit-image photograph as a gray uint8 image (alpha dropped, RGB to luminance)."""
    from skimage import color, data

    a = np.asarray(getattr(data, name)())
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    if a.ndim == 3:
        a = color.rgb2gray(a[..., :3])
        a = (a * 255).round().astype(np.uint8)
    return a


def export_8bit(img, fmt: str = "png", quality: int = 90) -> np.ndarray:
    """The round trip of an 8-bit PNG or JPEG export (min-max to 0-255, as a viewer saves)."""
    import io

    from PIL import Image

    a = np.asarray(img, np.float64)
    fin = a[np.isfinite(a)]
    lo, hi = (float(fin.min()), float(fin.max())) if fin.size else (0.0, 1.0)
    u8 = np.clip((a - lo) / max(hi - lo, 1e-12) * 255.0, 0, 255).round().astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(u8).save(buf, format="JPEG" if fmt == "jpeg" else "PNG",
                             **({"quality": int(quality)} if fmt == "jpeg" else {}))
    buf.seek(0)
    return np.asarray(Image.open(buf).convert("L"))


def exports(items, every: int = 1):
    """8-bit PNG and JPEG (quality 95, 75) round trips of every ``every``-th slice."""
    for j, (name, img) in enumerate(items):
        if j % every:
            continue
        fmt, q = (("png", 0), ("jpeg", 95), ("jpeg", 75))[j % 3]
        yield f"{name}#{fmt}{q or ''}", export_8bit(img, fmt, q)


def extra_real_views(root: Path, per_volume: int = 2):
    """More real reconstructions for the domain classifier: slices of the qim3d volumes along
    their other two axes, and half-size versions of a few slices."""
    from skimage.transform import rescale

    for p in sorted((Path(root) / "qim3d").glob("*.tif")):
        vol = _imread(p)
        for axis in (1, 2):
            for k in _pick(vol.shape[axis], per_volume):
                yield f"qim3d/{p.stem}[axis{axis}:{k}]", np.take(vol, k, axis=axis)
    for name, img in real_slices(root, per_volume=1, htc=0):
        a = np.asarray(img, np.float32)
        if min(a.shape[:2]) >= 300 and a.ndim == 2:
            yield f"{name}@0.5", rescale(a, 0.5, anti_aliasing=True, preserve_range=True).astype(np.float32)


def photo_negatives(seed: int, names=TRAIN_PHOTOS):
    """Training photographs (gray), each whole, as random crops, rescaled, inverted and JPEG'd."""
    from skimage.transform import rescale

    rng = np.random.default_rng(seed)
    for name in names:
        a = gray_photo(name)
        yield f"photo/{name}", a
        h, w = a.shape
        for k in range(2):
            ch, cw = int(h * rng.uniform(0.4, 0.7)), int(w * rng.uniform(0.4, 0.7))
            y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
            crop = a[y0:y0 + ch, x0:x0 + cw]
            f = rng.uniform(1.2, 2.0) if k == 0 else rng.uniform(0.6, 0.9)
            yield f"photo/{name}/crop{k}", rescale(crop.astype(np.float32), f, anti_aliasing=f < 1,
                                                    preserve_range=True).astype(np.float32)
        yield f"photo/{name}/inverted-jpeg", export_8bit(255 - a.astype(np.float32), "jpeg", 70)


def procedural_negatives(seed: int, n: int = 6, size: int = 384):
    """Cheap "not tomography": rendered text, flat cartoons (no noise) and gradients with
    sharp edges."""
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.default_rng(seed)
    words = ("quality", "tomography", "sample", "report", "the", "of", "and", "2026", "scan", "figure",
             "Lorem", "ipsum", "dolor", "sit", "amet", "x-ray", "slice", "page", "text", "(a)")
    for i in range(n):
        bg, fg = (255, 0) if i % 2 == 0 else (int(rng.integers(150, 256)), int(rng.integers(0, 90)))
        im = Image.new("L", (size, size), bg)
        d = ImageDraw.Draw(im)
        try:
            font = ImageFont.load_default(size=int(rng.integers(10, 28)))
        except TypeError:  # Pillow < 10.1
            font = ImageFont.load_default()
        y = int(rng.integers(2, 20))
        while y < size - 10:
            line = " ".join(rng.choice(words, int(rng.integers(3, 10))))
            d.text((int(rng.integers(2, 30)), y), line, fill=fg, font=font)
            y += int(rng.integers(14, 40))
        yield f"procedural/text{i}", np.asarray(im)
    for i in range(n):
        im = Image.new("L", (size, size), int(rng.integers(0, 256)))
        d = ImageDraw.Draw(im)
        for _ in range(int(rng.integers(4, 14))):
            x0, y0 = (int(v) for v in rng.integers(-50, size, 2))
            x1, y1 = (int(v) for v in np.array([x0, y0]) + rng.integers(20, 200, 2))
            shape = int(rng.integers(0, 3))
            fill = int(rng.integers(0, 256))
            if shape == 0:
                d.rectangle([int(x0), int(y0), int(x1), int(y1)], fill=fill, outline=0, width=int(rng.integers(0, 4)))
            elif shape == 1:
                d.ellipse([int(x0), int(y0), int(x1), int(y1)], fill=fill, outline=0, width=int(rng.integers(0, 4)))
            else:
                pts = [tuple(int(v) for v in rng.integers(0, size, 2)) for _ in range(int(rng.integers(3, 7)))]
                d.polygon(pts, fill=fill)
        yield f"procedural/cartoon{i}", np.asarray(im)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for i in range(n):
        a = rng.uniform(-1, 1) * xx + rng.uniform(-1, 1) * yy
        k = int(rng.integers(2, 6))
        edges = np.floor(((xx * rng.uniform(1, 4) + yy * rng.uniform(-2, 2)) * k)) % 2
        yield f"procedural/gradient{i}", ((a - a.min()) / (np.ptp(a) + 1e-9) * 180 + 60 * edges).astype(np.float32)


def heldout_probes():
    for name in HELDOUT_PHOTOS:
        yield f"photo/{name}", gray_photo(name)


def probes(seed: int = 0):
    from skimage import color, data

    rng = np.random.default_rng(seed)
    yield "photo/camera", data.camera()
    yield "photo/astronaut", (color.rgb2gray(data.astronaut()) * 255).astype(np.uint8)
    yield "photo/coffee", (color.rgb2gray(data.coffee()) * 255).astype(np.uint8)
    yield "noise/uniform", rng.random((512, 512)).astype(np.float32)
    yield "noise/gaussian", rng.normal(size=(448, 448)).astype(np.float32)


def source_of(name: str) -> str:
    """The source a slice is held out with: ``qim3d``, ``phantom``, ``photo/chelsea``,
    ``procedural/text``... (exports and views go with their original)."""
    name = name.split("#")[0].split("@")[0]
    if name.startswith("phantom"):
        return "phantom"
    parts = name.split("/")
    if parts[0] in ("photo", "procedural", "noise"):
        return parts[0] + "/" + parts[1].rstrip("0123456789")
    return parts[0]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--realdata", type=Path, default=Path("../shared/realdata"))
    ap.add_argument("--out", type=Path, required=True, help="model card (JSON) to add the 'trust' entry to")
    ap.add_argument("--model", type=Path, default=None, help=".keras file (default: the bundled model)")
    ap.add_argument("--phantoms", type=int, default=60, help="phantom references (each clean and distorted)")
    ap.add_argument("--per-volume", type=int, default=4, help="slices taken from each real volume")
    ap.add_argument("--htc", type=int, default=4, help="HTC2022 discs to reconstruct (0: none)")
    ap.add_argument("--components", type=int, default=64)
    ap.add_argument("--quantile", type=float, default=0.9,
                    help="held-out quantile taken as the threshold (0.99 is set by level-5 distorted phantoms)")
    ap.add_argument("--tta", type=int, default=2)
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--domain", action="store_true",
                    help="also fit the domain classifier (test (c)) and write it as trust.domain; off by default: "
                         "on the pooled features of the bundled model it does not separate photographs from "
                         "real reconstructions (leave-one-source-out AUC about 0.75)")
    ap.add_argument("--l2", type=float, default=1e-2, help="ridge penalty of the domain classifier")
    ap.add_argument("--max-flagged", type=float, default=0.01,
                    help="share of out-of-fold in-distribution slices allowed above the domain threshold")
    ap.add_argument("--cache", type=Path, default=None,
                    help="pickle of the features by slice name, read and extended (delete it when the model changes)")
    ap.add_argument("--dry-run", action="store_true", help="print, do not write the card")
    args = ap.parse_args(argv)

    import pickle

    from tomoqc.models.trust import (CARD_KEY, DomainClassifier, FeatureDistance, fit_domain_classifier,
                                     fit_feature_distance)
    from tomoqc.models.tiqa import load_model
    from tomoqc.train.common import atomic_write_text

    model = load_model(args.model)
    model.trust = None  # the statistics being fitted must not be used while fitting them
    cache = {}
    if args.cache is not None and args.cache.is_file():
        cache = pickle.loads(args.cache.read_bytes())
    key = (str(args.model), args.tta)

    def collect(items, keep=None):
        """Features, raw scores and flags of each slice; with ``keep``, the images are also
        appended to that list."""
        names, feats, groups, raws, flags = [], [], [], [], []
        for name, img in items:
            if keep is not None:
                keep.append((name, img))
            if (key, name) in cache:
                f, r, fl = cache[(key, name)]
            else:
                res = model.score_slices(np.asarray(img), features=True, ood=False, tta=args.tta, measure=False)
                f, r, fl = res["features"][0], float(res["raw_score"][0]), int(res["flags"][0])
                cache[(key, name)] = (f, r, fl)
            names.append(name)
            raws.append(r)
            flags.append(fl)
            feats.append(f)
            groups.append(np.full(len(f), len(names) - 1))
        return names, feats, groups, np.array(raws), flags

    t0 = time.perf_counter()
    ph_img, rl_img = [], []
    ph = collect(phantom_slices(args.phantoms, args.seed), keep=ph_img)
    rl = collect(real_slices(args.realdata, per_volume=args.per_volume, htc=args.htc), keep=rl_img)
    print(f"collected {len(ph[0])} phantom and {len(rl[0])} real slices in {time.perf_counter() - t0:.0f} s")
    names = ph[0] + rl[0]
    feats = ph[1] + rl[1]
    groups = [g for g in ph[2]] + [g + len(ph[0]) for g in rl[2]]
    keep = [i for i, f in enumerate(feats) if len(f)]
    X = np.concatenate([feats[i] for i in keep])
    G = np.concatenate([groups[i] for i in keep])
    fd, summary = fit_feature_distance(X, G, n_components=args.components, quantile=args.quantile, seed=args.seed)
    print(f"feature distance: threshold {fd.threshold:.3f}; {json.dumps(summary)}")

    raws = np.concatenate([ph[3], rl[3]])
    card = json.loads(args.out.read_text()) if args.out.is_file() else {}
    cal = (card.get("score_calibration") or {}).get("range")
    fin = raws[np.isfinite(raws)]
    lo, hi = float(fin.min()), float(fin.max())
    # the range seen in training: the calibration's (training phantoms) joined with the
    # in-distribution slices measured here
    if cal:
        lo, hi = min(lo, float(cal[0])), max(hi, float(cal[1]))
    print(f"raw slice scores: phantoms {ph[3].min():.2f}..{ph[3].max():.2f}, real {np.nanmin(rl[3]):.2f}.."
          f"{np.nanmax(rl[3]):.2f}; calibration range {cal}; range kept [{lo:.3f}, {hi:.3f}]")

    # test (c): tomography (the slices above, their 8-bit exports, more real views) against
    # photographs, text and cartoons
    dom, dom_summary = None, None
    if args.domain:
        t1 = time.perf_counter()
        pos = [collect(exports(rl_img)), collect(exports(ph_img, every=4)),
               collect(extra_real_views(args.realdata))]
        neg = [collect(photo_negatives(args.seed)), collect(procedural_negatives(args.seed))]
        rows, labs, grps, srcs = [], [], [], []
        n_slices = 0
        for lab, sets in ((0, [ph, rl] + pos), (1, neg)):
            for nm, fs, *_ in sets:
                for name, f in zip(nm, fs):
                    if len(f):
                        rows.append(f)
                        labs.append(np.full(len(f), lab))
                        grps.append(np.full(len(f), n_slices))
                        srcs.append(np.full(len(f), source_of(name), dtype=object))
                    n_slices += 1
        print(f"domain classifier: {sum(len(c[0]) for c in pos)} more tomography and "
              f"{sum(len(c[0]) for c in neg)} other slices in {time.perf_counter() - t1:.0f} s")
        dom, dom_summary = fit_domain_classifier(np.concatenate(rows), np.concatenate(labs), np.concatenate(grps),
                                                 np.concatenate(srcs), l2=args.l2, max_flagged=args.max_flagged)
        print(f"domain classifier: threshold {dom.threshold:.3f}; " + json.dumps(
            {k: v for k, v in dom_summary.items() if k != "oof_by_source"}))
        print("  out-of-fold slice probability by source (min, median, max):")
        for k, v in dom_summary["oof_by_source"].items():
            print(f"    {k:28s} {v}")
    if args.cache is not None:
        args.cache.write_bytes(pickle.dumps(cache))

    def dist(fs):
        return [fd.slice_distance(f) / fd.threshold if len(f) else float("nan") for f in fs]

    def prob(fs):
        return [dom.slice_probability(f) if dom is not None and len(f) else float("nan") for f in fs]

    def verdict(d, p, r):
        return d > 1 or not lo <= r <= hi or (dom is not None and p > dom.threshold)

    print("\nreal slices (distance / threshold, domain probability, raw score, flags):")
    for n_, d, p, r, fl in zip(rl[0], dist(rl[1]), prob(rl[1]), rl[3], rl[4]):
        print(f"  {n_:42s} {d:6.2f}  {p:6.3f}  {r:6.2f}  {fl}  {'OOD (!)' if verdict(d, p, r) else ''}")
    pr = collect(list(probes(args.seed)) + list(heldout_probes()))
    print("\nprobes that must be flagged (photo/camera, astronaut, coffee were fitted; the other photographs are "
          "held out):")
    for n_, d, p, r, fl in zip(pr[0], dist(pr[1]), prob(pr[1]), pr[3], pr[4]):
        print(f"  {n_:42s} {d:6.2f}  {p:6.3f}  {r:6.2f}  {fl}  "
              f"{'OOD' if verdict(d, p, r) else 'in distribution (!)'}")

    entry = {
        "raw_score_range": [round(lo, 4), round(hi, 4)],
        "features": fd.to_card(),
        "fit": {
            **summary,
            "slices": {"phantoms": len(ph[0]), "real": len(rl[0])},
            "sources": sorted({n_.split("/")[0] for n_ in rl[0]}) + ["tomoqc.phantom + tomoqc.distort"],
            "tta_views": args.tta,
            "seed": args.seed,
            "command": "python scripts/fit_trust.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        },
    }
    if dom is not None:
        entry["domain"] = dom.to_card()
        entry["domain"]["heldout_photos"] = list(HELDOUT_PHOTOS)
    if args.dry_run:
        print("\n--dry-run: card not written")
        return 0
    # another process may have written other keys meanwhile: re-read, replace only ours
    card = json.loads(args.out.read_text()) if args.out.is_file() else {}
    note = ((card.get(CARD_KEY) or {}).get("fit") or {}).get("note")
    if note and args.quantile == 0.9:
        entry["fit"]["note"] = note
    card[CARD_KEY] = entry
    atomic_write_text(args.out, json.dumps(card, indent=2) + "\n")
    assert FeatureDistance.from_card(card[CARD_KEY]["features"]) is not None
    assert dom is None or DomainClassifier.from_card(card[CARD_KEY]["domain"]) is not None
    print(f"\nwrote '{CARD_KEY}' into {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
