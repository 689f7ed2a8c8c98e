"""Full-reference metrics against published test vectors, scikit-image and known properties."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage
from skimage import data as skdata
from skimage.metrics import mean_squared_error, peak_signal_noise_ratio, structural_similarity

from tomoqc.errors import InputError
from tomoqc.metrics import fr

VECTORS = Path(__file__).parent / "data" / "iqa-vectors"
CASES = json.loads((VECTORS / "values.json").read_text())["cases"]
NAMES = ("mse", "psnr", "ssim", "ms_ssim", "gmsd", "mdsi")


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
@pytest.mark.parametrize("name", NAMES)
def test_reference_vectors(case, name):
    ref = np.load(VECTORS / case["reference"])
    dist = np.load(VECTORS / case["distorted"])
    expected = case["values"][name]
    got = getattr(fr, name)(ref, dist, data_range=case["data_range"])
    if name in ("mse", "psnr"):
        assert got == pytest.approx(expected, rel=1e-3)
    else:
        assert got == pytest.approx(expected, abs=1e-3)


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_batched_equals_single(case):
    ref = np.load(VECTORS / case["reference"])
    dist = np.load(VECTORS / case["distorted"])
    stack = np.stack([dist, ref, dist])
    for name in NAMES:
        single = getattr(fr, name)(ref, dist, data_range=case["data_range"])
        batch = getattr(fr, name + "_batch")(ref, stack, data_range=case["data_range"])
        assert batch.shape == (3,)
        assert batch[0] == pytest.approx(single, rel=1e-12, abs=1e-12)
        assert batch[2] == pytest.approx(single, rel=1e-12, abs=1e-12)
        assert batch[1] == fr.OBSERVERS[name].best or batch[1] == pytest.approx(fr.OBSERVERS[name].best, abs=1e-12)
    # pairwise stacks with extra leading dims
    pair = fr.ssim_batch(np.stack([ref, ref])[None], np.stack([dist, ref])[None], data_range=case["data_range"])
    assert pair.shape == (1, 2) and pair[0, 1] == pytest.approx(1.0)


def _skimage_images():
    cam = skdata.camera().astype(np.float64) / 255.0
    coins = skdata.coins().astype(np.float64) / 255.0
    moon = skdata.moon().astype(np.float64) / 255.0
    return {
        "camera_301x259": cam[37:338, 101:360],
        "coins": coins,
        "moon_odd": moon[3:250, 11:210],
    }


@pytest.mark.parametrize("img_name", list(_skimage_images()))
@pytest.mark.parametrize("distortion", ["noise", "blur"])
@pytest.mark.parametrize("as_uint8", [False, True])
def test_agrees_with_skimage(img_name, distortion, as_uint8):
    img = _skimage_images()[img_name]
    rng = np.random.default_rng(7)
    if distortion == "noise":
        dist = np.clip(img + 0.05 * rng.standard_normal(img.shape), 0, 1)
    else:
        dist = ndimage.gaussian_filter(img, 1.7)
    if as_uint8:
        img, dist = np.round(img * 255).astype(np.uint8), np.round(dist * 255).astype(np.uint8)
        dr = 255
    else:
        dr = 1.0
    ref_ssim = structural_similarity(img, dist, data_range=dr, gaussian_weights=True, sigma=1.5,
                                     use_sample_covariance=False)
    assert fr.ssim(img, dist, data_range=dr) == pytest.approx(ref_ssim, abs=1e-6)
    assert fr.psnr(img, dist, data_range=dr) == pytest.approx(peak_signal_noise_ratio(img, dist, data_range=dr), rel=1e-9)
    assert fr.mse(img, dist) == pytest.approx(mean_squared_error(img.astype(float), dist.astype(float)), rel=1e-12)


def test_integer_images_default_to_dtype_range():
    a = skdata.camera()
    b = np.clip(a.astype(int) + 9, 0, 255).astype(np.uint8)
    assert fr.psnr(a, b) == fr.psnr(a, b, data_range=255)
    assert fr.ssim(a, b) == fr.ssim(a, b, data_range=255)
    # uint16 spans 65535
    assert fr.psnr(a.astype(np.uint16), b.astype(np.uint16)) == pytest.approx(
        10 * math.log10(65535**2 / fr.mse(a, b)))


def test_identity_gives_best_values():
    img = skdata.camera()[:200, :190].astype(np.float32) / 255
    assert fr.mse(img, img, data_range=1) == 0.0
    assert fr.psnr(img, img, data_range=1) == math.inf
    assert fr.ssim(img, img, data_range=1) == pytest.approx(1.0, abs=1e-12)
    assert fr.ms_ssim(img, img, data_range=1) == pytest.approx(1.0, abs=1e-12)
    assert fr.gmsd(img, img, data_range=1) == 0.0
    assert fr.mdsi(img, img, data_range=1) == 0.0


def test_psnr_from_known_mse():
    a = np.zeros((32, 32))
    b = np.full((32, 32), 0.1)  # MSE exactly 0.01
    assert fr.mse(a, b, data_range=1) == pytest.approx(0.01)
    assert fr.psnr(a, b, data_range=1.0) == pytest.approx(20.0)
    assert fr.psnr(a, b, data_range=2.0) == pytest.approx(20.0 + 20 * math.log10(2))


def test_ssim_symmetric_and_gmsd_symmetric_mdsi_not():
    rng = np.random.default_rng(1)
    img = skdata.camera()[100:300, 100:300] / 255.0
    dist = ndimage.gaussian_filter(img, 2) + 0.02 * rng.standard_normal(img.shape)
    assert fr.ssim(img, dist, data_range=1) == pytest.approx(fr.ssim(dist, img, data_range=1), abs=1e-14)
    assert fr.ms_ssim(img, dist, data_range=1) == pytest.approx(fr.ms_ssim(dist, img, data_range=1), abs=1e-12)
    assert fr.gmsd(img, dist, data_range=1) == pytest.approx(fr.gmsd(dist, img, data_range=1), abs=1e-14)
    # MDSI pairs the reference with the fused image: the order of the arguments matters
    assert abs(fr.mdsi(img, dist, data_range=1) - fr.mdsi(dist, img, data_range=1)) > 1e-4


def test_scale_invariance_with_matching_data_range():
    img = skdata.camera()[:200, :200] / 255.0
    dist = ndimage.gaussian_filter(img, 1.5)
    for name in ("ssim", "ms_ssim", "gmsd", "mdsi", "psnr"):
        f = getattr(fr, name)
        assert f(img * 1000, dist * 1000, data_range=1000) == pytest.approx(
            f(img, dist, data_range=1), rel=1e-9, abs=1e-9), name


def test_ssim_matlab_downsampling_option():
    img = skdata.camera() / 255.0  # 512 -> factor 2
    dist = ndimage.gaussian_filter(img, 1.0)
    plain = fr.ssim(img, dist, data_range=1)
    down = fr.ssim(img, dist, data_range=1, downsample=True)
    # by hand: 2x2 box with symmetric padding then every 2nd pixel = 2x2 block means
    r = img.reshape(256, 2, 256, 2).mean(axis=(1, 3))
    d = dist.reshape(256, 2, 256, 2).mean(axis=(1, 3))
    assert down == pytest.approx(fr.ssim(r, d, data_range=1), abs=1e-12)
    assert down > plain  # blur is less visible at half resolution
    # small images are left alone (factor 1)
    small = img[:300, :300]
    assert fr.ssim(small, dist[:300, :300], data_range=1, downsample=True) == fr.ssim(small, dist[:300, :300], data_range=1)


def test_matlab_round_half_up():
    assert fr.matlab_round(640 / 256) == 3 and round(640 / 256) == 2
    assert fr.matlab_round(1152 / 256) == 5 and round(1152 / 256) == 4
    assert fr.matlab_round(383 / 256) == 1


def test_mdsi_downsampling_factor_uses_half_up():
    # 640 px: MATLAB's round gives f = 3; f = 2 (Python's round) gives another value
    rng = np.random.default_rng(2)
    img = ndimage.zoom(skdata.camera() / 255.0, 1.25, order=1)[:640, :640]
    dist = np.clip(img + 0.05 * rng.standard_normal(img.shape), 0, 1)
    got = fr.mdsi(img, dist, data_range=1)
    # by hand with f = 3: zero-pad one row/column before and after, 3x3 block means
    p = lambda a: np.pad(a, 1)[:642, :642].reshape(214, 3, 214, 3).mean(axis=(1, 3))
    assert got == pytest.approx(fr.mdsi(p(img), p(dist), data_range=1), abs=1e-12)


def test_ms_ssim_small_image_error():
    img = np.zeros((160, 300))
    with pytest.raises(ValueError, match="161"):
        fr.ms_ssim(img, img, data_range=1)


@pytest.mark.parametrize("name", NAMES)
def test_input_errors(name):
    f = getattr(fr, name)
    a = np.random.default_rng(0).random((170, 170))
    if name != "mse":  # MSE is in the images' own units and needs no range
        with pytest.raises(InputError, match="data_range"):
            f(a, a)
        with pytest.raises(ValueError):  # also a ValueError for library users
            f(a, a)
    with pytest.raises(InputError, match="shape"):
        f(a, a[:-1], data_range=1)
    bad = a.copy()
    bad[3, 4] = np.nan
    with pytest.raises(InputError, match="NaN"):
        f(a, bad, data_range=1)
    bad[3, 4] = np.inf
    with pytest.raises(InputError, match="NaN or Inf"):
        f(bad, a, data_range=1)
    with pytest.raises(InputError, match="2-D"):
        f(a[None], a[None], data_range=1)
    with pytest.raises(InputError, match="data_range"):
        f(a, a, data_range=-1)
