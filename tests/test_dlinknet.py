"""D-LinkNet: architecture size, any input size, probabilities, MC dropout, save/load."""

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from tomoqc.errors import OptionError  # noqa: E402
from tomoqc.models.dlinknet import (  # noqa: E402
    MonteCarloDropout,
    build_dlinknet,
    crop_back,
    pad_to_multiple,
    predict_any_size,
    set_mc_dropout,
)


def _ch(c, width):
    return max(4, int(np.floor(c * width + 0.5)))


def expected_parameters(width=1.0, n_classes=1):
    """Parameters of D-LinkNet34 counted layer by layer from the paper's architecture.

    conv k x k, cin -> cout: k*k*cin*cout (+ cout when it has a bias: only the layers
    without batch normalisation after them); batch norm on c channels: 4c (gamma, beta,
    moving mean, moving variance). Returns (total, non-trainable).
    """
    conv = lambda k, cin, cout, bias=False: k * k * cin * cout + (cout if bias else 0)  # noqa: E731
    bn = lambda c: 4 * c  # noqa: E731
    total = 0
    moving = 0  # moving mean + variance: the non-trainable part
    c = [_ch(v, width) for v in (64, 128, 256, 512)]

    total += conv(7, 1, c[0]) + bn(c[0])  # stem
    moving += 2 * c[0]
    cin = c[0]
    for n_blocks, cout in zip((3, 4, 6, 3), c):  # ResNet34 basic blocks
        for b in range(n_blocks):
            total += conv(3, cin, cout) + bn(cout) + conv(3, cout, cout) + bn(cout)
            moving += 4 * cout
            if cin != cout:  # first block of stages 2-4: 1x1 stride-2 projection
                total += conv(1, cin, cout) + bn(cout)
                moving += 2 * cout
            cin = cout
    total += 4 * conv(3, c[3], c[3], bias=True)  # dilated centre, dilations 1, 2, 4, 8
    for din, dout in ((c[3], c[2]), (c[2], c[1]), (c[1], c[0]), (c[0], c[0])):  # decoder
        mid = max(4, din // 4)
        total += conv(1, din, mid) + bn(mid) + conv(3, mid, mid) + bn(mid) + conv(1, mid, dout) + bn(dout)
        moving += 2 * (mid + mid + dout)
    h = _ch(32, width)
    total += conv(4, c[0], h, bias=True) + conv(3, h, h, bias=True) + conv(3, h, n_classes, bias=True)
    return total, moving


def test_full_model_has_the_architecture_parameter_count():
    m = build_dlinknet(1)  # width 1, binary: the paper's D-LinkNet34 on one channel
    total, moving = expected_parameters(1.0, 1)
    assert 30_000_000 < total < 32_000_000  # "about 31 M"
    assert m.count_params() == total
    non_trainable = sum(int(np.prod(w.shape)) for w in m.non_trainable_weights)
    assert non_trainable == moving
    dil = sorted(
        layer.dilation_rate[0]
        for layer in m.layers
        if isinstance(layer, keras.layers.Conv2D) and layer.name.startswith("centre_dil")
    )
    assert dil == [1, 2, 4, 8]
    assert m.input_shape == (None, None, None, 1) and m.output_shape == (None, None, None, 1)


def test_width_scales_every_stage():
    m = build_dlinknet(3, width=0.125)
    assert m.count_params() == expected_parameters(0.125, 3)[0]
    assert m.output_shape[-1] == 3


def test_full_res_skip_adds_a_stride_one_branch_to_the_head():
    width, k = 0.125, 3
    plain = build_dlinknet(k, width=width)
    m = build_dlinknet(k, width=width, full_res=True)
    f, h = _ch(64, width), _ch(32, width)
    # two 3x3 conv + BN on the image (1 -> f -> f), and the head's 3x3 conv reads f + 1 more channels
    extra = 9 * 1 * f + 4 * f + 9 * f * f + 4 * f + 9 * (f + 1) * h
    assert m.count_params() - plain.count_params() == extra
    assert m.count_params() - expected_parameters(width, k)[0] == extra
    x = np.random.default_rng(0).random((2, 64, 96, 1)).astype(np.float32)
    branch = keras.Model(m.input, m.get_layer("fullres_2_relu").output)
    assert branch(x).shape == (2, 64, 96, f)  # full resolution, no striding
    y = np.asarray(m(x, training=False))
    assert y.shape == (2, 64, 96, k) and np.allclose(y.sum(-1), 1.0, atol=1e-5)


@pytest.fixture(scope="module")
def small():
    keras.utils.set_random_seed(3)
    return build_dlinknet(3, width=0.125, dropout=0.3, seed=5)


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    return rng.random((2, 64, 64, 1)).astype("float32")


def test_pad_and_crop_round_trip():
    rng = np.random.default_rng(1)
    img = rng.random((100, 75))
    padded, (py, px) = pad_to_multiple(img, 32)
    assert padded.shape == (128, 96) and (py, px) == (28, 21)
    np.testing.assert_array_equal(padded[:100, :75], img)
    # reflect: the mirror image about the last row/column, edge not repeated
    np.testing.assert_array_equal(padded[100 + 3, :75], img[100 - 2 - 3])
    np.testing.assert_array_equal(padded[:100, 75 + 5], img[:, 75 - 2 - 5])
    np.testing.assert_array_equal(crop_back(padded, (py, px)), img)
    # channels-last batches pad H and W only
    b, pads = pad_to_multiple(rng.random((3, 40, 33, 2)), 32)
    assert b.shape == (3, 64, 64, 2) and crop_back(b, pads).shape == (3, 40, 33, 2)
    # a multiple already: untouched
    same, pads = pad_to_multiple(img[:64, :32], 32)
    assert pads == (0, 0) and same.shape == (64, 32)


def test_any_input_size_gives_same_size_output(small):
    img = np.random.default_rng(2).random((100, 75)).astype("float32")
    out = predict_any_size(small, img)
    assert out.shape == (100, 75, 3)
    bout = predict_any_size(small, np.stack([img, img[::-1]])[..., None], batch_size=1)
    assert bout.shape == (2, 100, 75, 3)
    np.testing.assert_allclose(bout[0], out, atol=1e-5)


def test_probabilities(small, batch):
    p = np.asarray(small(batch, training=False))
    assert p.shape == (2, 64, 64, 3)
    np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-5)
    assert (p >= 0).all()
    keras.utils.set_random_seed(0)
    b = np.asarray(build_dlinknet(1, width=0.125)(batch, training=False))
    assert b.shape == (2, 64, 64, 1) and ((b >= 0) & (b <= 1)).all()


def _bn_state(model):
    return [
        np.array(w)
        for layer in model.layers
        if isinstance(layer, keras.layers.BatchNormalization)
        for w in (layer.moving_mean, layer.moving_variance)
    ]


def test_mc_dropout_switch(small, batch):
    before_bn = _bn_state(small)
    set_mc_dropout(small, False)
    off1 = np.asarray(small(batch, training=False))
    off2 = np.asarray(small(batch, training=False))
    np.testing.assert_array_equal(off1, off2)
    p_off = small.predict(batch, verbose=0)  # traces the predict function while off
    np.testing.assert_allclose(p_off, off1, atol=1e-5)

    assert set_mc_dropout(small, True) == 4  # one per decoder block
    on1 = np.asarray(small(batch, training=False))
    on2 = np.asarray(small(batch, training=False))
    assert np.abs(on1 - on2).max() > 1e-3
    p1 = small.predict(batch, verbose=0)  # the traced function follows the switch
    p2 = small.predict(batch, verbose=0)
    assert np.abs(p1 - p2).max() > 1e-3 and np.abs(p1 - p_off).max() > 1e-3
    np.testing.assert_allclose(on1.sum(-1), 1.0, atol=1e-5)

    set_mc_dropout(small, False)
    np.testing.assert_allclose(small.predict(batch, verbose=0), p_off, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(small(batch, training=False)), off1)
    # inference never updated batch-norm statistics
    for a, b in zip(before_bn, _bn_state(small)):
        np.testing.assert_array_equal(a, b)


def test_mc_dropout_needs_dropout_layers():
    m = build_dlinknet(1, width=0.125, dropout=0.0)
    assert not any(isinstance(layer, MonteCarloDropout) for layer in m.layers)
    with pytest.raises(OptionError, match="no Monte-Carlo dropout"):
        set_mc_dropout(m, True)
    assert set_mc_dropout(m, False) == 0


@pytest.mark.parametrize("kw", [{"n_classes": 0}, {"width": 0}, {"width": float("nan")}, {"dropout": 1.0}])
def test_bad_options(kw):
    with pytest.raises(OptionError):
        build_dlinknet(**kw)


def test_save_load_round_trip(small, batch, tmp_path):
    set_mc_dropout(small, False)
    ref = np.asarray(small(batch, training=False))
    set_mc_dropout(small, True)  # the switch is not saved: a loaded model starts off
    path = tmp_path / "dl.keras"
    small.save(path)
    set_mc_dropout(small, False)
    loaded = keras.models.load_model(path)  # no custom_objects: the layer is registered
    out = np.asarray(loaded(batch, training=False))
    np.testing.assert_array_equal(out, ref)
    assert set_mc_dropout(loaded, True) == 4
    a = np.asarray(loaded(batch, training=False))
    b = np.asarray(loaded(batch, training=False))
    assert np.abs(a - b).max() > 1e-3
