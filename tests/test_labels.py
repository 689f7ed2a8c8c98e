"""Label projection on a small phantom dataset built here, and the calibrated mode."""

import csv
import json

import numpy as np
import pytest

from tomoqc import labels
from tomoqc.errors import InputError, OptionError


def _phantom_images(n_refs, size, seed=0):
    try:
        from tomoqc.phantom import electrode_slice

        return [electrode_slice((size, size), seed=seed + k)[0] for k in range(n_refs)]
    except ImportError:  # pragma: no cover - fallback when the phantom module is absent
        from scipy import ndimage

        rng = np.random.default_rng(seed)
        out = []
        for _ in range(n_refs):
            f = ndimage.gaussian_filter(rng.random((size, size)), 3)
            out.append(((f - f.min()) / np.ptp(f)).astype(np.float32))
        return out


def _distort(img, distortion, level, seed):
    from tomoqc.distort.image import apply

    # the same generator seed at every level: noise and ring radii differ only in strength
    return apply(img, distortion, level, rng=np.random.default_rng(seed))


def make_dataset(root, *, n_refs=2, size=96, distortions=("noise", "blur", "ring")):
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for r, img in enumerate(_phantom_images(n_refs, size)):
        ref = f"ref{r:03d}"
        name = f"{ref}.npy"
        np.save(root / name, img.astype(np.float32))
        rows.append(dict(reference=ref, domain="image", distortion="none", level=0, file=name,
                         label_file="", params="{}", seed=r))
        for d in distortions:
            for lv in range(1, 6):
                name = f"{ref}_{d}_{lv}.npy"
                np.save(root / name, _distort(img, d, lv, 100 + r).astype(np.float32))
                rows.append(dict(reference=ref, domain="image", distortion=d, level=lv, file=name,
                                 label_file="", params="{}", seed=r))
    write(root, rows)
    return rows


def write(root, rows):
    with open(root / "manifest.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def read(root):
    with open(root / "manifest.csv", newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    root = tmp_path_factory.mktemp("ds")
    make_dataset(root, n_refs=2, size=176)
    summary = labels.project_dataset(root, reference_score=4.5, progress=False)
    return root, summary, read(root)


def test_labels_written_with_observer_columns(labelled):
    root, summary, rows = labelled
    assert summary["observers"] == list(labels.DEFAULT_OBSERVERS)
    assert summary["skipped"] == {}
    for name in labels.DEFAULT_OBSERVERS:
        assert f"obs_{name}" in rows[0] and f"proj_{name}" in rows[0]
    # the dataset's own columns survive unchanged
    assert [r["file"] for r in rows][:2] == ["ref000.npy", "ref000_noise_1.npy"]
    assert json.loads((root / "labels.json").read_text())["n_images"] == len(rows)


def test_references_get_reference_score_and_worst_gets_one(labelled):
    _, summary, rows = labelled
    for r in rows:
        lab = float(r["label"])
        assert 1.0 <= lab <= 4.5
        if r["distortion"] == "none":
            assert lab == pytest.approx(4.5)
            assert float(r["obs_ssim"]) == 1.0 and float(r["obs_mse"]) == 0.0
    # each observer's worst image over the whole dataset projects to exactly 1
    for name in labels.DEFAULT_OBSERVERS:
        assert min(float(r[f"proj_{name}"]) for r in rows) == pytest.approx(1.0)


def test_labels_fall_monotonically_with_level(labelled):
    _, _, rows = labelled
    for ref in {r["reference"] for r in rows}:
        for d in ("noise", "blur", "ring"):
            series = sorted(
                (int(r["level"]), r) for r in rows
                if r["reference"] == ref and (r["distortion"] == d or r["distortion"] == "none")
            )
            assert [lv for lv, _ in series] == [0, 1, 2, 3, 4, 5]
            for col in ["label"] + [f"proj_{n}" for n in labels.DEFAULT_OBSERVERS]:
                vals = [float(r[col]) for _, r in series]
                if col == "proj_mdsi" and d == "noise":
                    # MDSI's deviation pooling saturates under strong noise (the report's
                    # levels 2-5 reach a noise variance of 1 on [0, 1] images): its value
                    # no longer grows with the level (measured on skimage's camera as well,
                    # 0.38 at sigma 0.15 ... 0.385 at sigma 1). It still ranks every
                    # noisy image below the reference, and level 1 above level 5.
                    assert all(v < vals[0] for v in vals[1:]) and vals[1] > vals[5], vals
                    continue
                assert all(a > b for a, b in zip(vals, vals[1:])), (ref, d, col, vals)


def test_label_is_mean_of_projections(labelled):
    _, _, rows = labelled
    for r in rows:
        mean = np.mean([float(r[f"proj_{n}"]) for n in labels.DEFAULT_OBSERVERS])
        assert float(r["label"]) == pytest.approx(mean, abs=1e-12)


def test_ms_ssim_skipped_on_small_images_and_said(tmp_path):
    make_dataset(tmp_path, n_refs=1, size=64, distortions=("blur",))
    summary = labels.project_dataset(tmp_path, progress=False)
    assert "ms_ssim" in summary["skipped"] and "161" in summary["skipped"]["ms_ssim"]
    assert "ms_ssim" not in summary["observers"]
    rows = read(tmp_path)
    assert "obs_ms_ssim" not in rows[0]
    # a rerun replaces the earlier columns instead of duplicating them
    labels.project_dataset(tmp_path, progress=False, observers=("ssim", "gmsd"))
    cols = list(read(tmp_path)[0])
    assert "obs_mse" not in cols and cols.count("label") == 1


def test_reference_mos_replaces_default(tmp_path):
    make_dataset(tmp_path, n_refs=2, size=64, distortions=("noise",))
    (tmp_path / "ann.csv").write_text("image,mos,std,n\nref001.npy,3.5,0.5,10\n")
    labels.project_dataset(tmp_path, annotations=tmp_path / "ann.csv", progress=False,
                           observers=("ssim", "psnr"))
    rows = read(tmp_path)
    by = {r["file"]: r for r in rows}
    assert float(by["ref001.npy"]["label"]) == pytest.approx(3.5)
    assert float(by["ref000.npy"]["label"]) == pytest.approx(5.0)
    assert all(float(r["label"]) <= 3.5 for r in rows if r["reference"] == "ref001")
    assert by["ref001.npy"]["mos"] != "" and by["ref000.npy"]["mos"] == ""


def test_bad_inputs(tmp_path):
    with pytest.raises(InputError, match="manifest not found"):
        labels.project_dataset(tmp_path, progress=False)
    make_dataset(tmp_path, n_refs=1, size=32, distortions=("blur",))
    with pytest.raises(OptionError):
        labels.project_dataset(tmp_path, reference_score=7, progress=False)
    with pytest.raises(OptionError, match="unknown observer"):
        labels.project_dataset(tmp_path, observers=("vif",), progress=False)
    (tmp_path / "ref000_blur_3.npy").unlink()
    with pytest.raises(InputError, match="not found"):
        labels.project_dataset(tmp_path, progress=False)


# ---------------------------------------------------------------------------------------
# isotonic regression and calibration
# ---------------------------------------------------------------------------------------

def test_pav_hand_example():
    m = labels.isotonic_fit([1, 2, 3, 4], [1, 3, 2, 4])
    np.testing.assert_allclose(m.y, [1, 2.5, 2.5, 4])
    m = labels.isotonic_fit([1, 2, 3], [3, 2, 1])
    np.testing.assert_allclose(m.y, [2, 2, 2])
    # weights: the heavier point pulls the pooled block towards itself
    m = labels.isotonic_fit([1, 2], [2, 0], weights=[3, 1])
    np.testing.assert_allclose(m.y, [1.5, 1.5])
    # monotone data is returned unchanged; decreasing fit mirrors it
    np.testing.assert_allclose(labels.isotonic_fit([0, 1, 2], [0, 1, 5]).y, [0, 1, 5])
    np.testing.assert_allclose(labels.isotonic_fit([0, 1, 2], [5, 1, 0], increasing=False).y, [5, 1, 0])


def test_pav_is_least_squares_monotone():
    rng = np.random.default_rng(3)
    x = rng.random(60)
    y = x + 0.3 * rng.standard_normal(60)
    m = labels.isotonic_fit(x, y)
    assert np.all(np.diff(m.y) >= -1e-12)
    order = np.argsort(x)
    fit_sse = np.sum((m(x) - y) ** 2)
    # no random monotone sequence does better
    for _ in range(200):
        cand = np.sort(rng.normal(np.mean(y), np.std(y), 60))
        other = np.empty(60)
        other[order] = cand
        assert fit_sse <= np.sum((other - y) ** 2) + 1e-9


@pytest.mark.parametrize("method", ["isotonic", "logistic"])
def test_calibrated_mode_recovers_known_map(tmp_path, method):
    rows = make_dataset(tmp_path, n_refs=3, size=96, distortions=("noise", "blur"))
    # first label without annotations to get the observers' raw values
    labels.project_dataset(tmp_path, progress=False, observers=("ssim", "gmsd"))
    first = read(tmp_path)

    def true_map(ssim):  # a known monotone map from SSIM to opinion scores
        return 1.2 + 3.6 / (1.0 + np.exp(-8.0 * (ssim - 0.45)))

    rng = np.random.default_rng(0)
    lines = ["image,rater,score"]
    for r in first:
        mos = true_map(float(r["obs_ssim"]))
        for k in range(25):
            s = float(np.clip(mos + 0.4 * rng.standard_normal(), 1, 5))
            lines.append(f"{r['file']},rater{k},{s:.4f}")
    (tmp_path / "ratings.csv").write_text("\n".join(lines) + "\n")
    summary = labels.project_dataset(tmp_path, annotations=tmp_path / "ratings.csv",
                                     calibrate_method=method, progress=False, observers=("ssim", "gmsd"))
    out = read(tmp_path)
    truth = np.array([true_map(float(r["obs_ssim"])) for r in out])
    cal = np.array([float(r["cal_ssim"]) for r in out])
    assert np.mean(np.abs(cal - truth)) < 0.15
    fit = summary["calibration"]["observers"]["ssim"]
    assert fit["n"] == len(rows) and fit["srocc"] > 0.95
    assert summary["calibration"]["label"]["srocc"] > 0.9


def test_label_cli(tmp_path, capsys):
    from tomoqc.cli import main

    make_dataset(tmp_path, n_refs=1, size=64, distortions=("noise", "blur"))
    assert main(["label", str(tmp_path), "--reference-score", "4", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "labelled 11 images" in out and "skipped ms_ssim" in out
    rows = read(tmp_path)
    assert max(float(r["label"]) for r in rows) == pytest.approx(4.0)
    assert main(["label", str(tmp_path / "nope")]) == 1
    assert "tomoqc: error:" in capsys.readouterr().err
    assert main(["label", str(tmp_path), "--observers", "ssim,foo", "--quiet"]) == 1


# ---------------------------------------------------------------------------------------
# intensity scale: labels in the units of the reference's robust percentiles
# ---------------------------------------------------------------------------------------

def _relabel(root, intensity):
    labels.project_dataset(root, intensity=intensity, progress=False)
    return {r["file"]: float(r["label"]) for r in read(root)}


def test_reference_intensity_labels_ignore_gain_and_offset(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    make_dataset(a, n_refs=2, size=64, distortions=("noise", "blur", "ring"))
    b.mkdir()
    (b / "manifest.csv").write_text((a / "manifest.csv").read_text())
    for f in a.glob("*.npy"):  # the same images in other units: gain 7.5, offset -120
        np.save(b / f.name, (7.5 * np.load(f).astype(np.float64) - 120.0).astype(np.float32))
    la, lb = _relabel(a, "reference"), _relabel(b, "reference")
    assert la.keys() == lb.keys()
    np.testing.assert_allclose([la[k] for k in la], [lb[k] for k in la], atol=1e-4)
    assert json.loads((a / "labels.json").read_text())["intensity"] == "reference"
    # absolute units see the change of units (MSE and PSNR against a data range of 1 vs max - min)
    aa, ab = _relabel(a, "absolute"), _relabel(b, "absolute")
    assert max(abs(aa[k] - ab[k]) for k in aa) > 0.05


def test_reference_mode_is_absolute_mode_when_percentiles_are_0_and_1():
    rng = np.random.default_rng(3)
    ref = rng.random((96, 96))
    ref[:4] = 0.0   # 4 % of the pixels at 0 and at 1: the 0.5 / 99.5 percentiles are 0 and 1
    ref[-4:] = 1.0
    dist = np.stack([ref + rng.normal(0, 0.05, ref.shape), ref * 0.8])
    assert labels.reference_affine(ref) == (0.0, 1.0)
    a = labels.observe(ref, dist, observers=("mse", "psnr", "ssim", "gmsd", "mdsi"))
    r = labels.observe(ref, dist, observers=("mse", "psnr", "ssim", "gmsd", "mdsi"), intensity="reference")
    for n in a:
        np.testing.assert_allclose(r[n], a[n], rtol=1e-9, atol=1e-12)


def test_reference_mode_maps_percentiles_to_unit_range():
    ref = np.linspace(10.0, 30.0, 64 * 64).reshape(64, 64)
    lo, hi = labels.reference_affine(ref)
    assert lo == pytest.approx(10.0 + 0.005 * 20.0) and hi == pytest.approx(30.0 - 0.005 * 20.0)
    # an offset of 1 % of the percentile span: MSE 1e-4 in reference units, PSNR 40 dB
    v = labels.observe(ref, (ref + 0.01 * (hi - lo))[None], observers=("mse", "psnr"), intensity="reference")
    assert v["mse"][0] == pytest.approx(1e-4, rel=1e-9)
    assert v["psnr"][0] == pytest.approx(40.0, abs=1e-6)
    # a reference without spread is compared in absolute units
    flat = np.full((32, 32), 0.3)
    assert labels.reference_affine(flat) is None
    d = (flat + 0.1)[None]
    assert labels.observe(flat, d, observers=("mse",), intensity="reference")["mse"][0] == pytest.approx(0.01)


def test_intensity_option_checked_and_in_cli(tmp_path, capsys):
    from tomoqc.cli import main

    make_dataset(tmp_path, n_refs=1, size=64, distortions=("noise",))
    with pytest.raises(OptionError, match="intensity"):
        labels.project_dataset(tmp_path, intensity="relative", progress=False)
    assert not (tmp_path / "labels.json").exists()
    assert main(["label", str(tmp_path), "--intensity", "reference", "--quiet"]) == 0
    assert json.loads((tmp_path / "labels.json").read_text())["intensity"] == "reference"
    capsys.readouterr()
    assert main(["label", str(tmp_path), "--intensity", "gain", "--quiet"]) == 1
    assert "intensity" in capsys.readouterr().err


def _ring_label_ceiling(root, make, n_refs=6, size=128):
    """Level-only SROCC of ring labels (references included) and mean label per level 0-5.

    ``make(img, seed)`` gives ``(reference, [noise levels 1-5], [ring levels 1-5])`` for a
    fresh domain-randomised phantom. Noise levels are in the set so that the worst anchors
    (noise level 5) do not depend on the ring table.
    """
    from tomoqc.metrics.stats import srocc
    from tomoqc.phantom import electrode_slice

    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for r in range(n_refs):
        img = electrode_slice((size, size), seed=40 + r, randomize=True)[0]
        ref_img, noisy, ringed = make(img, 100 + r)
        ref = f"ref{r:03d}"
        np.save(root / f"{ref}.npy", np.asarray(ref_img, np.float32))
        rows.append(dict(reference=ref, domain="image", distortion="none", level=0, file=f"{ref}.npy",
                         label_file="", params="{}", seed=r))
        for d, images in (("noise", noisy), ("ring", ringed)):
            for lv, out in enumerate(images, start=1):
                name = f"{ref}_{d}_{lv}.npy"
                np.save(root / name, np.asarray(out, np.float32))
                rows.append(dict(reference=ref, domain="image", distortion=d, level=lv, file=name,
                                 label_file="", params="{}", seed=r))
    write(root, rows)
    labels.project_dataset(root, progress=False)
    sel = [r for r in read(root) if r["distortion"] in ("ring", "none")]
    lev = np.array([int(r["level"]) for r in sel], float)
    lab = np.array([float(r["label"]) for r in sel])
    means = [lab[lev == k].mean() for k in range(6)]
    return float(srocc(-lev, lab)), means


def _image_domain(ring_coeffs):
    from tomoqc.distort.image import ring_artifact

    def make(img, seed):
        noisy = [_distort(img, "noise", lv, seed) for lv in range(1, 6)]
        ringed = [ring_artifact(img, c, rng=np.random.default_rng(seed)) for c in ring_coeffs]
        return img, noisy, ringed

    return make


def test_ring_levels_spread_the_labels_beyond_the_reports_table(tmp_path):
    # with domain-randomised references a ring's label depends on the content as much as on a
    # small change of amplitude: the report's five coefficients (0.1 to 0.2) leave the levels
    # hard to tell apart by label, the doubling table does not
    from tomoqc.distort.image import REPORT_RING_COEFF, RING_COEFF

    ours, means = _ring_label_ceiling(tmp_path / "ours", _image_domain(RING_COEFF))
    report, report_means = _ring_label_ceiling(tmp_path / "report", _image_domain(REPORT_RING_COEFF))
    assert all(a > b for a, b in zip(means, means[1:])), means
    assert all(a > b for a, b in zip(report_means, report_means[1:])), report_means
    assert ours >= 0.9, ours
    assert ours > report + 0.1, (ours, report, means, report_means)
    assert means[1] - means[5] > 2 * (report_means[1] - report_means[5])


def test_sinogram_ring_levels_spread_the_labels(tmp_path):
    from tomoqc.distort import physics

    def make(img, seed):
        specs = [{"noise": lv} for lv in range(1, 6)] + [{"ring": lv} for lv in range(1, 6)]
        ref, out = physics.apply_many(img, specs, rng=seed)
        return ref, out[:5], out[5:]

    ceiling, means = _ring_label_ceiling(tmp_path, make)
    assert all(a > b for a, b in zip(means, means[1:])), means
    assert ceiling >= 0.9, (ceiling, means)


def test_project_labels_with_a_datasets_anchors_gives_its_labels(tiny, tmp_path):
    # the per-image projection with fixed anchors is project_dataset's own, once its anchors are known
    import shutil

    from tomoqc.dataset import read_manifest

    d = tmp_path / "data"
    shutil.copytree(tiny, d)
    summary = labels.project_dataset(d, progress=False)
    worst = {n: a["worst"] for n, a in summary["anchors"].items()}
    rows = read_manifest(d)
    ref_row = next(r for r in rows if r["distortion"] == "none")
    mine = [r for r in rows if r["reference"] == ref_row["reference"] and r["distortion"] != "none"]
    got, used = labels.project_labels(np.load(d / ref_row["file"]), np.stack([np.load(d / r["file"]) for r in mine]),
                                      worst=worst)
    assert used == summary["observers"]
    np.testing.assert_allclose(got, [r["label"] for r in mine], atol=1e-6)
    same, _ = labels.project_labels(np.load(d / ref_row["file"]), np.load(d / ref_row["file"])[None], worst=worst)
    assert same[0] == pytest.approx(5.0)
