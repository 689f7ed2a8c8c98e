"""BRISQUE features and the support-vector regressor (tomoqc.metrics.brisque).

The features are checked against OpenCV contrib's independent implementation on
scikit-image's sample images, the parameter fits against samples of known distributions and
closed-form moments, and the rest against invariances that follow from the definition.
"""

import json

import numpy as np
import pytest
from scipy import special, stats
from skimage import color, data

from tomoqc.errors import InputError, OptionError
from tomoqc.metrics import brisque as bq
from tomoqc.metrics.brisque import FEATURE_NAMES, BrisqueSVR, brisque_feature_matrix, brisque_features

N_FEATURES = 36


def _grey_astronaut():
    return np.round(color.rgb2gray(data.astronaut()) * 255).astype(np.uint8)


SAMPLES = {
    "camera": data.camera,
    "astronaut": _grey_astronaut,
    "coins": data.coins,  # 303 x 384: an odd number of rows
    "moon": data.moon,
    "text": data.text,
    "brick": data.brick,
    "grass": data.grass,
    "clock": data.clock,
    "camera_odd_crop": lambda: data.camera()[13:214, 40:197],  # 201 x 157
    "camera_224": lambda: data.camera()[100:324, 150:374],
}


# ---- agreement with an independent implementation ---------------------------------------


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_features_match_opencv_quality_brisque(name):
    """All 36 features agree with cv2.quality to 1e-3 (absolute) under OpenCV's conventions.

    What is left is OpenCV's own rounding: it searches the shapes on a 0.001 grid (up to
    5e-4 from the exact root solved here) and computes in float32, which costs about 1e-4
    relative in the MSCN statistics of smooth images (the local variance is a difference of
    nearly equal numbers); the shape, at large values, magnifies that (moon: 8.8e-4 in all).
    Images with windows of exactly equal grey levels (binary or saturated, e.g. skimage's
    horse and page) are left out: there OpenCV's float32 residues of random sign are
    counted as negative or positive coefficients where the exact ones are 0.
    """
    cv2 = pytest.importorskip("cv2")
    if not hasattr(cv2, "quality"):
        pytest.skip("OpenCV without the contrib quality module")
    img = SAMPLES[name]()
    assert img.dtype == np.uint8 and img.ndim == 2
    ref = np.asarray(cv2.quality.QualityBRISQUE_computeFeatures(img), dtype=np.float64).ravel()
    ours = brisque_features(img, convention="opencv")
    assert ref.shape == ours.shape == (N_FEATURES,)
    diff = np.abs(ours - ref)
    worst = int(diff.argmax())
    assert diff.max() <= 1e-3, f"{FEATURE_NAMES[worst]}: ours {ours[worst]}, OpenCV {ref[worst]}"
    # the features other than the shapes carry no grid error: tighter
    others = [i for i, n in enumerate(FEATURE_NAMES) if not n.endswith("_shape")]
    assert diff[others].max() <= 1e-4


def test_opencv_convention_second_scale_is_cv2_resize_cubic():
    """The "opencv" downsampling is cv2.resize INTER_CUBIC to floor(n/2), odd sizes included."""
    cv2 = pytest.importorskip("cv2")
    img = data.camera()[:201, :157].astype(np.float32)
    ref = cv2.resize(img, (157 // 2, 201 // 2), interpolation=cv2.INTER_CUBIC)
    ours = bq._halve(img.astype(np.float64), "opencv")
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, atol=1e-3)  # float32 output of 0-255 values


def test_paper_second_scale_is_antialiased_bicubic_like_pillow():
    """The paper's downsampling (MATLAB imresize 0.5) equals Pillow's reducing bicubic
    (a = -0.5 kernel stretched by the scale) away from the borders, where only the border
    rule differs (mirror here, renormalised truncation in Pillow)."""
    from PIL import Image

    img = data.camera()[:200, :160].astype(np.float32)
    ref = np.asarray(Image.fromarray(img, mode="F").resize((80, 100), Image.Resampling.BICUBIC), dtype=np.float64)
    ours = bq._halve(img.astype(np.float64), "paper")
    assert ours.shape == (100, 80)
    inner = (slice(2, -2), slice(2, -2))  # outputs whose 8 taps lie inside the image
    np.testing.assert_allclose(ours[inner], ref[inner], atol=1e-3)
    # odd sizes give ceil(n / 2) pixels, as imresize does
    assert bq._halve(np.ones((201, 157)), "paper").shape == (101, 79)
    np.testing.assert_allclose(bq._halve(np.full((201, 157), 7.0), "paper"), 7.0)


# ---- the parameter fits -------------------------------------------------------------------


def test_moment_ratio_inversion_at_closed_form_points():
    # Laplace: Gamma(2)^2 / (Gamma(1) Gamma(3)) = 1/2 ; Gaussian: Gamma(1)^2 / (Gamma(1/2) Gamma(3/2)) = 2/pi
    np.testing.assert_allclose(bq._shape_from_ratio(0.5), 1.0, rtol=1e-10)
    np.testing.assert_allclose(bq._shape_from_ratio(2.0 / np.pi), 2.0, rtol=1e-10)
    shapes = np.array([0.3, 0.7, 1.5, 3.0, 8.0])
    ratios = special.gamma(2 / shapes) ** 2 / (special.gamma(1 / shapes) * special.gamma(3 / shapes))
    np.testing.assert_allclose(bq._shape_from_ratio(ratios), shapes, rtol=1e-9)


def test_ggd_fit_recovers_known_shapes():
    rng = np.random.default_rng(1)
    shape, var = bq._ggd_fit(rng.normal(0.0, 1.5, 1_000_000))
    assert abs(shape - 2.0) < 0.02 and abs(var - 2.25) < 0.01
    shape, _ = bq._ggd_fit(rng.laplace(0.0, 1.0, 1_000_000))
    assert abs(shape - 1.0) < 0.02
    shape, var = bq._ggd_fit(stats.gennorm.rvs(0.6, size=1_000_000, random_state=rng))
    assert abs(shape - 0.6) < 0.02
    # gennorm(beta) has variance Gamma(3/beta) / Gamma(1/beta)
    assert abs(var / (special.gamma(3 / 0.6) / special.gamma(1 / 0.6)) - 1) < 0.05


def test_aggd_fit_recovers_known_parameters():
    rng = np.random.default_rng(2)
    nu, beta_l, beta_r, n = 1.3, 0.6, 1.4, 1_000_000
    # AGGD sample: side with probability beta_side / (beta_l + beta_r), magnitude beta * G^(1/nu)
    left = rng.random(n) < beta_l / (beta_l + beta_r)
    mag = rng.gamma(1.0 / nu, 1.0, n) ** (1.0 / nu)
    x = np.where(left, -beta_l * mag, beta_r * mag)
    shape, mean, left_var, right_var = bq._aggd_fit(x)
    moment = special.gamma(3 / nu) / special.gamma(1 / nu)
    assert abs(shape - nu) < 0.02
    assert abs(left_var / (beta_l**2 * moment) - 1) < 0.01
    assert abs(right_var / (beta_r**2 * moment) - 1) < 0.01
    # the fitted mean is the distribution's mean: compare with the closed form and the sample
    expected_mean = (beta_r - beta_l) * special.gamma(2 / nu) / special.gamma(1 / nu)
    assert abs(mean - expected_mean) < 0.01
    assert abs(mean - x.mean()) < 0.01


def test_aggd_of_symmetric_data_has_equal_sides_and_zero_mean():
    s = np.random.default_rng(3).standard_t(5, 50_000)
    shape, mean, left_var, right_var = bq._aggd_fit(np.concatenate([s, -s]))
    assert left_var == pytest.approx(right_var, rel=1e-12)
    assert mean == pytest.approx(0.0, abs=1e-12)
    # and then the AGGD shape equals the GGD shape
    assert shape == pytest.approx(bq._ggd_fit(np.concatenate([s, -s]))[0], rel=1e-9)


# ---- invariances of the features ------------------------------------------------------------


def test_shape_and_names():
    f = brisque_features(data.camera()[:224, :224])
    assert f.shape == (N_FEATURES,) and f.dtype == np.float64 and np.isfinite(f).all()
    assert len(FEATURE_NAMES) == N_FEATURES == len(set(FEATURE_NAMES))
    variances = [i for i, n in enumerate(FEATURE_NAMES) if n.endswith("_var")]
    assert (f[variances] > 0).all()


@pytest.mark.parametrize("convention", ["paper", "opencv"])
def test_eight_bit_features_do_not_change_with_a_constant_offset(convention):
    img = (data.camera()[:224, :224].astype(np.int32) * 200 // 255).astype(np.uint8)  # 0..200
    shifted = img + np.uint8(55)
    np.testing.assert_allclose(
        brisque_features(shifted, convention=convention), brisque_features(img, convention=convention), atol=1e-8
    )


def test_float_features_do_not_change_with_gain_and_offset():
    img = data.moon()[:224, :224].astype(np.float64) * 0.013 + 0.2
    a = brisque_features(img)
    b = brisque_features(img * 37.5 - 1.0e4)
    np.testing.assert_allclose(a, b, atol=1e-4)
    # and the dtype of storage does not matter either
    np.testing.assert_allclose(a, brisque_features(img.astype(np.float32)), atol=1e-4)


def test_eight_bit_features_do_change_with_gain():
    # C = 1 grey level makes BRISQUE depend on contrast (flat regions' noise is damped)
    img = (data.camera()[:224, :224] // 4).astype(np.uint8)
    assert np.abs(brisque_features(img) - brisque_features(img * np.uint8(4))).max() > 1e-3


def _block(f, kind):
    """The four AGGD features of one orientation at both scales."""
    return f[[i for i, n in enumerate(FEATURE_NAMES) if n[3:].startswith(f"{kind}_")]]


def test_transposing_swaps_horizontal_and_vertical():
    img = data.camera()[100:324, 150:374]
    f, t = brisque_features(img), brisque_features(img.T)
    np.testing.assert_allclose(_block(t, "h"), _block(f, "v"), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(_block(t, "v"), _block(f, "h"), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(_block(t, "d1"), _block(f, "d1"), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(_block(t, "d2"), _block(f, "d2"), rtol=1e-9, atol=1e-12)


def test_mirroring_swaps_the_diagonals():
    img = data.camera()[100:324, 150:374]
    f, m = brisque_features(img), brisque_features(img[:, ::-1])
    np.testing.assert_allclose(_block(m, "d1"), _block(f, "d2"), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(_block(m, "d2"), _block(f, "d1"), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(_block(m, "h"), _block(f, "h"), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("convention", ["paper", "opencv"])
def test_negating_the_image_changes_nothing(convention):
    # 255 - I negates every MSCN coefficient: the GGD (and the MSCN AGGD's shape and mean
    # variance) are even in it, and the neighbour products do not change at all
    img = data.coins()
    np.testing.assert_allclose(
        brisque_features(255 - img, convention=convention), brisque_features(img, convention=convention),
        rtol=1e-9, atol=1e-12,
    )


def test_feature_matrix_stacks_rows():
    imgs = [data.camera()[:64, :64], data.coins()[:80, :70].astype(np.float32)]
    mat = brisque_feature_matrix(imgs)
    assert mat.shape == (2, N_FEATURES)
    np.testing.assert_array_equal(mat[1], brisque_features(imgs[1]))
    np.testing.assert_array_equal(brisque_feature_matrix(np.stack([imgs[0], imgs[0]])), np.stack([mat[0], mat[0]]))


# ---- bad input ------------------------------------------------------------------------------


def _one_line(err):
    text = str(err.value)
    assert "\n" not in text and text
    return text


@pytest.mark.parametrize(
    "img, words",
    [
        (np.zeros((16, 16, 3), np.uint8), "2-D"),
        (np.zeros((0, 0)), "at least"),
        (np.zeros((4, 64)), "at least"),
        (np.full((32, 32), 9, np.uint8), "flat"),
        (np.ones((32, 32), np.complex64), "real"),
    ],
)
def test_bad_images_raise_one_clear_line(img, words):
    with pytest.raises(InputError) as err:
        brisque_features(img)
    assert words in _one_line(err)


def test_bad_options_raise_option_error():
    with pytest.raises(OptionError) as err:
        brisque_features(data.camera(), convention="matlab")
    assert "matlab" in _one_line(err)
    with pytest.raises(OptionError):
        BrisqueSVR(C=-1)
    with pytest.raises(OptionError):
        BrisqueSVR(gamma="auto")
    with pytest.raises(OptionError):
        BrisqueSVR(param_grid={"kernel": ["linear"]})


def test_bad_batches_name_the_image():
    with pytest.raises(InputError) as err:
        brisque_feature_matrix([data.camera()[:32, :32], np.zeros((3, 3, 3))])
    assert "image 1 of 2" in _one_line(err)
    with pytest.raises(OptionError):
        brisque_feature_matrix([])
    with pytest.raises(OptionError) as err:
        BrisqueSVR().fit(data.camera(), [1.0])  # one 2-D array, not a list of images
    assert "sequence" in _one_line(err)


# ---- the regressor ----------------------------------------------------------------------------

NOISE_LEVELS = (0.0, 3.0, 6.0, 10.0, 15.0, 22.0)


def _references(n, size=80, seed=10):
    """Distinct smooth textures in 40..215 grey levels (structure at several scales)."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    refs = []
    for k in range(n):
        field = sum(ndimage.gaussian_filter(rng.normal(size=(size, size)), s) * s for s in (1.0 + k % 3, 4.0, 9.0))
        field = (field - field.min()) / np.ptp(field)
        refs.append(40.0 + 175.0 * field)
    return refs


def _noisy_set(refs, seed):
    rng = np.random.default_rng(seed)
    images, labels, groups = [], [], []
    for g, ref in enumerate(refs):
        for level in NOISE_LEVELS:
            images.append(np.clip(np.round(ref + rng.normal(0.0, level, ref.shape)), 0, 255).astype(np.uint8))
            labels.append(level)
            groups.append(g)
    return images, np.array(labels), np.array(groups)


@pytest.fixture(scope="module")
def noise_data():
    refs = _references(12)
    train = _noisy_set(refs[:8], seed=20)
    test = _noisy_set(refs[8:], seed=21)
    return (brisque_feature_matrix(train[0]), *train[1:]), (brisque_feature_matrix(test[0]), *test[1:]), train, test


def test_svr_learns_noise_level_on_held_out_references(noise_data):
    (_xtr, _ytr, _gtr), (_xte, yte, _gte), train, test = noise_data
    model = BrisqueSVR(seed=0).fit(train[0], train[1], groups=train[2])
    pred = model.predict(test[0])
    assert pred.shape == yte.shape
    assert stats.spearmanr(pred, yte).statistic > 0.9


def test_grouped_search_keeps_references_together(noise_data):
    (xtr, ytr, gtr), (xte, yte, _), _, _ = noise_data
    model = BrisqueSVR(search=True, n_splits=4, seed=0).fit_features(xtr, ytr, groups=gtr)
    assert len(model.cv_folds_) == 4
    for train_idx, test_idx in model.cv_folds_:
        assert not set(gtr[train_idx]) & set(gtr[test_idx])
        assert len(train_idx) + len(test_idx) == len(ytr)
    assert len(model.cv_results_) == 9  # 3 C x 3 gamma
    best = min(model.cv_results_, key=lambda r: r["mse"])
    assert model.params_["C"] == best["C"]
    assert stats.spearmanr(model.predict_features(xte), yte).statistic > 0.9


def test_prediction_equals_scikit_learn(noise_data):
    """predict_features evaluates the support-vector expansion itself: it must equal
    scikit-learn's SVR prediction mapped back to the label scale."""
    (xtr, ytr, _), (xte, _, _), _, _ = noise_data
    model = BrisqueSVR(C=3.0, gamma=0.2, epsilon=0.05).fit_features(xtr, ytr)
    sk = model.pipeline_.predict(xte) * ytr.std() + ytr.mean()
    np.testing.assert_allclose(model.predict_features(xte), sk, rtol=1e-9, atol=1e-9)


def test_save_load_round_trip(noise_data, tmp_path):
    (xtr, ytr, gtr), (xte, _, _), _, test = noise_data
    model = BrisqueSVR(seed=0).fit_features(xtr, ytr, groups=gtr)
    path = tmp_path / "brisque.json"
    model.save(path)
    doc = json.loads(path.read_text())
    assert doc["format"] == "tomoqc-brisque-svr" and len(doc["support_vectors"][0]) == N_FEATURES
    loaded = BrisqueSVR.load(path)
    np.testing.assert_array_equal(loaded.predict_features(xte), model.predict_features(xte))
    np.testing.assert_array_equal(loaded.predict(test[0][:3]), model.predict(test[0][:3]))
    assert loaded.params_ == model.params_ and loaded.convention == model.convention
    assert [p.name for p in tmp_path.iterdir()] == ["brisque.json"]  # no temporary left


def test_model_file_errors_name_the_file(tmp_path, noise_data):
    (xtr, ytr, _), _, _, _ = noise_data
    missing = tmp_path / "nope.json"
    with pytest.raises(InputError) as err:
        BrisqueSVR.load(missing)
    assert str(missing) in _one_line(err)
    junk = tmp_path / "junk.json"
    junk.write_text("{not json")
    with pytest.raises(InputError) as err:
        BrisqueSVR.load(junk)
    assert str(junk) in _one_line(err)
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(InputError) as err:
        BrisqueSVR.load(other)
    assert "not a BRISQUE SVR model" in _one_line(err)
    with pytest.raises(InputError) as err:
        BrisqueSVR().fit_features(xtr, ytr).save(tmp_path / "no_such_dir" / "m.json")
    assert "folder" in _one_line(err)
    assert not (tmp_path / "no_such_dir").exists()


def test_regressor_usage_errors(noise_data):
    (xtr, ytr, _), _, _, _ = noise_data
    with pytest.raises(OptionError) as err:
        BrisqueSVR().predict_features(xtr)
    assert "not fitted" in _one_line(err)
    with pytest.raises(OptionError):
        BrisqueSVR().fit_features(xtr, ytr[:-1])
    with pytest.raises(OptionError):
        BrisqueSVR().fit_features(xtr, np.zeros_like(ytr))
    with pytest.raises(OptionError):
        BrisqueSVR().fit_features(xtr[:, :10], ytr)
    with pytest.raises(OptionError):
        BrisqueSVR(search=True).fit_features(xtr, ytr, groups=np.zeros(len(ytr)))
