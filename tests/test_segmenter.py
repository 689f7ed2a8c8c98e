"""Segmentation of blocks of slices: tiling, seamless blending, uncertainty, loading.

The networks here are tiny and untrained; what is tested holds for any network with the
D-LinkNet contract: equalities that follow from the structure of a model (a pointwise model
is equivariant to flips and rotations, a model with a small receptive field predicts each
pixel from its neighbourhood only), invariants (probabilities sum to 1, labels are the
argmax), and round trips (save, load, same predictions).
"""

import hashlib
import json
import os
import zipfile

import numpy as np
import pytest

keras = pytest.importorskip("keras")
from keras import layers  # noqa: E402

from tomoqc.errors import InputError, OptionError  # noqa: E402
from tomoqc.metrics.uncertainty import entropy_bits  # noqa: E402
from tomoqc.models.dlinknet import MonteCarloDropout, build_dlinknet, mc_dropout_layers  # noqa: E402
from tomoqc.models.segmenter import (  # noqa: E402
    SegmentModel,
    blend_weights,
    blend_window,
    default_segment_weights,
    load_segment_model,
    tile_starts,
)
from tomoqc.phantom import electrode_slice  # noqa: E402
from tomoqc.preprocess import normalize_slice  # noqa: E402


def _pointwise(n_out: int, seed: int = 0):
    """A per-pixel network (1x1 convolutions): equivariant to every flip and rotation."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input((None, None, 1))
    x = layers.Conv2D(8, 1, activation="tanh")(inp)
    x = layers.Conv2D(n_out, 1)(layers.Rescaling(6.0)(x))
    out = layers.Activation("sigmoid" if n_out == 1 else "softmax")(x)
    return keras.Model(inp, out, name="pointwise")


def _local(n_out: int, seed: int = 1):
    """Two 3x3 convolutions: each output pixel sees only the 5x5 pixels around it."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input((None, None, 1))
    x = layers.Conv2D(8, 3, padding="same", activation="tanh")(inp)
    x = layers.Conv2D(n_out, 3, padding="same")(layers.Rescaling(4.0)(x))
    out = layers.Activation("sigmoid" if n_out == 1 else "softmax")(x)
    return keras.Model(inp, out, name="local")


def _wide_smooth(seed: int = 2):
    """A smooth network whose receptive field (about 40 px) reaches past the blending
    margin, so that tiles cut from one slice predict their shared pixels differently."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input((None, None, 1))
    x = layers.AveragePooling2D(8)(inp)
    x = layers.Conv2D(8, 5, padding="same", activation="tanh")(x)
    x = layers.Conv2D(3, 5, padding="same")(x)
    x = layers.UpSampling2D(8, interpolation="bilinear")(x)
    out = layers.Softmax()(layers.Rescaling(4.0)(x))
    return keras.Model(inp, out, name="wide")


@pytest.fixture(scope="module")
def phases_net():
    """A tiny 3-class D-LinkNet with Monte-Carlo dropout."""
    keras.utils.set_random_seed(3)
    return build_dlinknet(3, width=0.125, dropout=0.3, seed=5)


@pytest.fixture(scope="module")
def phases_sm(phases_net):
    """One SegmentModel for the module: its compiled network call is traced once per tile shape."""
    return SegmentModel(phases_net)


@pytest.fixture(scope="module")
def slice_192():
    return electrode_slice((192, 192), seed=4)[0]


# --------------------------------------------------------------------------- tiles


@pytest.mark.parametrize("length,tile,overlap", [(320, 128, 32), (256, 96, 32), (544, 512, 64),
                                                 (1024, 512, 64), (96, 64, 0), (4096, 512, 480)])
def test_tile_starts_cover_with_the_requested_overlap(length, tile, overlap):
    starts, size = tile_starts(length, tile, overlap)
    assert size == tile
    assert starts[0] == 0 and starts[-1] + size == length
    assert np.all(starts % 32 == 0)
    assert np.all(np.diff(starts) > 0)
    assert np.all(size - np.diff(starts) >= overlap)  # consecutive tiles overlap enough


def test_short_side_is_one_tile():
    starts, size = tile_starts(96, 512, 64)
    assert starts.tolist() == [0] and size == 96


def test_blend_weights_positive_and_flat_at_the_slice_border():
    tiles, (th, tw), weights, total = blend_weights((320, 256), 128, 32)
    assert (total > 0).all()
    # a tile edge on the slice border keeps weight 1 there; an inner edge is not used
    for (y, x), w in weights.items():
        mid_row, mid_col = w[th // 2], w[:, tw // 2]
        assert mid_col[0] == (1.0 if y == 0 else 0.0)
        assert mid_col[-1] == (1.0 if y + th == 320 else 0.0)
        assert mid_row[0] == (1.0 if x == 0 else 0.0)
        assert mid_row[-1] == (1.0 if x + tw == 256 else 0.0)
    # the summed weights at the four slice corners come from one tile with weight 1
    assert total[0, 0] == total[-1, -1] == total[0, -1] == total[-1, 0] == 1.0


def test_blend_window_shape():
    w = blend_window(128, 32, ramp_before=True, ramp_after=False)
    assert np.all(w[:8] == 0)  # outer quarter of the overlap unused
    assert np.all(np.diff(w[:32]) >= 0) and w[40:].min() == 1.0
    np.testing.assert_array_equal(blend_window(64, 32, ramp_before=False, ramp_after=False), 1.0)


# --------------------------------------------------------------------------- blending


@pytest.mark.parametrize("n_out", [1, 3])
def test_tiled_equals_untiled_for_a_local_network(n_out, slice_192):
    """Receptive radius 2 px < overlap // 4: blending must reproduce the whole-slice prediction."""
    sm = SegmentModel(_local(n_out))
    img = np.pad(slice_192, ((0, 7), (0, 41)))  # 199 x 233: padded to 224 x 256
    tiled = sm.segment_slices(img[None], tile=64, overlap=32, batch_size=3)
    whole = sm.segment_slices(img[None], tile=512, overlap=64)
    np.testing.assert_allclose(tiled["probability"], whole["probability"], atol=2e-6)
    np.testing.assert_allclose(tiled["uncertainty"], whole["uncertainty"], atol=2e-5)


def test_no_seam_where_tiles_meet():
    """A network with a wide receptive field predicts the shared pixels of two tiles
    differently; cutting between tiles shows it as a jump, blending must not."""
    model = _wide_smooth()
    img = electrode_slice((320, 320), seed=6)[0]
    tile, overlap = 128, 32
    blended = SegmentModel(model).segment_slices(img[None], tile=tile, overlap=overlap)["probability"][0]

    starts, size = tile_starts(320, tile, overlap)
    norm = normalize_slice(img)
    # the same tiles cut in the middle of each overlap and stitched without blending
    pred = {(y, x): np.asarray(model(norm[None, y:y + size, x:x + size, None]))[0]
            for y in starts for x in starts}
    cuts = [0] + [(a + size + b) // 2 for a, b in zip(starts[:-1], starts[1:])] + [320]
    hard = np.zeros((320, 320, 3), np.float32)
    for i, y in enumerate(starts):
        for j, x in enumerate(starts):
            hard[cuts[i]:cuts[i + 1], cuts[j]:cuts[j + 1]] = pred[(y, x)][
                cuts[i] - y:cuts[i + 1] - y, cuts[j] - x:cuts[j + 1] - x]
    hard = np.moveaxis(hard, -1, 0)

    # pixels covered by two tiles, and pixels covered by one only (along x)
    in_overlap = np.zeros(319, bool)
    for a, b in zip(starts[:-1], starts[1:]):
        in_overlap[b - 1:a + size] = True

    def jumps(p, axis):
        d = np.abs(np.diff(p, axis=axis + 1)).max(axis=(0, 2 - axis))  # per line between pixels
        return d

    for axis in (0, 1):
        hj = jumps(hard, axis)
        bj = jumps(blended, axis)
        # the control: the stitched map jumps at its cuts more than anywhere in one tile
        cut_lines = [c - 1 for c in cuts[1:-1]]
        assert hj[cut_lines].min() > 1.5 * hj[~in_overlap].max()
        # blended: no step inside the overlaps larger than the variation inside single tiles
        assert bj[in_overlap].max() <= bj[~in_overlap].max()


# --------------------------------------------------------------------------- outputs


@pytest.mark.parametrize("mode", ["entropy", "tta"])
def test_outputs_for_an_odd_slice_size(phases_sm, mode):
    rng = np.random.default_rng(0)
    block = np.stack([electrode_slice((97, 131), seed=s)[0] for s in (1, 2)]) + rng.normal(0, 0.02, (2, 97, 131))
    out = phases_sm.segment_slices(block, tile=64, overlap=32, uncertainty=mode, batch_size=3)
    assert out["label"].shape == (2, 97, 131) and out["label"].dtype == np.uint8
    assert out["probability"].shape == (2, 3, 97, 131) and out["probability"].dtype == np.float32
    assert out["uncertainty"].shape == (2, 97, 131) and out["uncertainty"].dtype == np.float32
    np.testing.assert_allclose(out["probability"].sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(out["label"], out["probability"].argmax(axis=1))
    np.testing.assert_allclose(out["uncertainty"], entropy_bits(out["probability"], axis=1), atol=1e-5)
    assert out["uncertainty"].min() >= 0 and out["uncertainty"].max() <= np.log2(3) + 1e-5
    if mode == "tta":
        for k in ("aleatoric", "epistemic"):
            assert out[k].shape == (2, 97, 131) and out[k].dtype == np.float32
        np.testing.assert_allclose(out["aleatoric"] + out["epistemic"], out["uncertainty"], atol=1e-5)
    else:
        assert "aleatoric" not in out and "epistemic" not in out


def test_binary_network_gives_the_foreground_channel():
    sm = SegmentModel(_local(1))
    assert sm.binary and sm.n_classes == 1 and sm.n_channels == 1
    assert sm.class_names == ["background", "foreground"]
    img = electrode_slice((70, 45), seed=2)[0]
    out = sm.segment_slices(img[None], tile=32, overlap=0)
    q = out["probability"][:, 0]
    assert out["probability"].shape == (1, 1, 70, 45)
    np.testing.assert_array_equal(out["label"], (q >= 0.5).astype(np.uint8))
    h = -(q * np.log2(np.maximum(q, 1e-30)) + (1 - q) * np.log2(np.maximum(1 - q, 1e-30)))
    np.testing.assert_allclose(out["uncertainty"], h, atol=1e-5)
    assert out["uncertainty"].max() <= 1.0 + 1e-6


def test_scale_and_dtype_do_not_change_labels(phases_sm, slice_192):
    as_uint16 = np.round(slice_192 * 40000 + 1000).astype(np.uint16)
    as_float = as_uint16.astype(np.float64) * 0.0371 - 12.5  # same image, another scale and offset
    sm = phases_sm
    a = sm.segment_slices(as_uint16[None], tile=128, overlap=32)
    b = sm.segment_slices(as_float[None], tile=128, overlap=32)
    np.testing.assert_array_equal(a["label"], b["label"])
    np.testing.assert_allclose(a["probability"], b["probability"], atol=1e-4)


def test_nan_counts_as_zero_after_normalising():
    sm = SegmentModel(_pointwise(3))
    img = electrode_slice((64, 96), seed=8)[0].astype(np.float32)
    with_nan = img.copy()
    with_nan[:10, :10] = np.nan
    out = sm.segment_slices(with_nan[None], tile=64, overlap=0)
    assert np.isfinite(out["probability"]).all()
    # the NaN pixels get the prediction of a normalised value of 0 (pointwise network)
    zero = sm.segment_slices(np.array([[[0.0, 1.0]]]), tile=32, overlap=0)["probability"][0, :, 0, 0]
    np.testing.assert_allclose(out["probability"][0, :, :10, :10], zero[:, None, None].repeat(10, 1).repeat(10, 2),
                               atol=1e-6)


def test_many_slices_are_independent(phases_sm, slice_192):
    sm = phases_sm
    other = electrode_slice((192, 192), seed=9)[0]
    both = sm.segment_slices(np.stack([slice_192, other]), tile=128, overlap=32)
    alone = sm.segment_slices(other[None], tile=128, overlap=32)
    np.testing.assert_allclose(both["probability"][1], alone["probability"][0], atol=1e-5)


def test_empty_block():
    out = SegmentModel(_pointwise(3)).segment_slices(np.zeros((0, 50, 60)), uncertainty="tta")
    assert out["label"].shape == (0, 50, 60) and out["probability"].shape == (0, 3, 50, 60)
    assert out["epistemic"].shape == (0, 50, 60)


# --------------------------------------------------------------------------- uncertainty


@pytest.mark.parametrize("n_out", [1, 3])
def test_tta_of_a_pointwise_network_has_no_epistemic_uncertainty(n_out):
    """Every flip and rotation of a per-pixel network's prediction, mapped back, is the
    same prediction; a wrong inverse transform would misplace it on this asymmetric slice."""
    sm = SegmentModel(_pointwise(n_out))
    img = electrode_slice((97, 131), seed=3)[0]  # padded to 128 x 160: non-square tiles
    one = sm.segment_slices(img[None], tile=64, overlap=32)
    tta = sm.segment_slices(img[None], tile=64, overlap=32, uncertainty="tta")
    np.testing.assert_allclose(tta["probability"], one["probability"], atol=1e-6)
    np.testing.assert_allclose(tta["epistemic"], 0, atol=1e-5)
    np.testing.assert_allclose(tta["aleatoric"], tta["uncertainty"], atol=1e-5)
    assert tta["uncertainty"].max() > 0.1  # not a trivially certain network


def test_tta_of_a_non_equivariant_network_disagrees(slice_192):
    tta = SegmentModel(_local(3)).segment_slices(slice_192[None], uncertainty="tta")
    assert tta["epistemic"].max() > 1e-3


def test_mc_dropout_samples_and_is_switched_off_afterwards(phases_sm, phases_net, slice_192):
    sm = phases_sm
    before = sm.segment_slices(slice_192[None], tile=128, overlap=32)
    mc = sm.segment_slices(slice_192[None], tile=128, overlap=32, uncertainty="mc", samples=4)
    assert mc["epistemic"].mean() > 1e-3
    assert (mc["epistemic"] >= 0).all()
    np.testing.assert_allclose(mc["aleatoric"] + mc["epistemic"], mc["uncertainty"], atol=1e-5)
    assert all(float(layer.mc_active.numpy()) == 0.0 for layer in mc_dropout_layers(phases_net))
    after = sm.segment_slices(slice_192[None], tile=128, overlap=32)
    np.testing.assert_array_equal(after["probability"], before["probability"])


def test_mc_dropout_is_switched_off_after_a_failure():
    """A network with MC dropout whose output is not a probability fails mid-run."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((None, None, 1))
    x = MonteCarloDropout(0.5)(layers.Conv2D(4, 1)(inp))
    out = layers.Conv2D(1, 1, kernel_initializer="ones", bias_initializer=keras.initializers.Constant(3.0))(x)
    net = keras.Model(inp, out)
    sm = SegmentModel(net)
    with pytest.raises(InputError, match="not probabilities"):
        sm.segment_slices(np.random.default_rng(0).random((1, 32, 32)), uncertainty="mc", samples=2)
    assert [float(layer.mc_active.numpy()) for layer in mc_dropout_layers(net)] == [0.0]


def test_threads_sharing_a_model_take_turns():
    """While one thread samples with MC dropout, another's plain predictions stay deterministic."""
    import threading

    keras.utils.set_random_seed(0)
    inp = keras.Input((None, None, 1))
    x = MonteCarloDropout(0.5)(layers.Conv2D(8, 1, activation="tanh")(inp))
    out = layers.Activation("softmax")(layers.Conv2D(3, 1)(layers.Rescaling(6.0)(x)))
    sm = SegmentModel(keras.Model(inp, out))
    img = np.random.default_rng(1).random((1, 64, 64))
    reference = sm.segment_slices(img)["probability"]
    plain, errors = [], []

    def sample():
        try:
            for _ in range(3):
                sm.segment_slices(img, uncertainty="mc", samples=6)
        except Exception as err:  # pragma: no cover - reported below
            errors.append(err)

    t = threading.Thread(target=sample)
    t.start()
    while t.is_alive():
        plain.append(sm.segment_slices(img)["probability"])
    t.join()
    assert not errors and plain
    for p in plain:
        np.testing.assert_array_equal(p, reference)


def test_mc_without_dropout_is_an_option_error(slice_192):
    with pytest.raises(OptionError, match="dropout"):
        SegmentModel(_pointwise(3)).segment_slices(slice_192[None], uncertainty="mc")


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("block,match", [
    (np.zeros((32, 32)), "shape"),
    (np.zeros((1, 1, 32, 32)), "shape"),
    (np.zeros((1, 32, 32), np.complex64), "dtype"),
    (np.array([[["a", "b"]]]), "dtype"),
    (np.zeros((1, 0, 32)), "empty"),
])
def test_bad_blocks_are_input_errors(block, match):
    with pytest.raises(InputError, match=match) as err:
        SegmentModel(_pointwise(3)).segment_slices(block, source="scan.zarr")
    assert str(err.value).startswith("scan.zarr: ")


@pytest.mark.parametrize("kw,match", [
    ({"tile": 100}, "multiple of 32"),
    ({"tile": 0}, "tile"),
    ({"tile": 64, "overlap": 40}, "overlap"),
    ({"overlap": -1}, "overlap"),
    ({"uncertainty": "bayes"}, "uncertainty"),
    ({"samples": 0}, "samples"),
    ({"batch_size": 0}, "batch_size"),
])
def test_bad_options_are_option_errors(kw, match):
    with pytest.raises(OptionError, match=match):
        SegmentModel(_pointwise(3)).segment_slices(np.zeros((1, 32, 32)), **kw)


# --------------------------------------------------------------------------- loading


def _save(model, folder, card, name="seg.keras"):
    path = folder / name
    model.save(path)
    if card is not None:
        (folder / (path.stem + ".json")).write_text(json.dumps(card))
    return path


@pytest.fixture(scope="module")
def saved_phases(phases_net, tmp_path_factory):
    card = {"kind": "dlinknet", "n_classes": 3, "class_names": ["pore", "carbon-binder", "active material"],
            "width": 0.125, "dropout": 0.3, "tile": 256}
    return _save(phases_net, tmp_path_factory.mktemp("w"), card)


def test_load_round_trip(saved_phases, phases_sm, slice_192):
    sm = load_segment_model(saved_phases)
    assert sm.n_classes == 3 and not sm.binary
    assert sm.class_names == ["pore", "carbon-binder", "active material"]
    assert sm.card["tile"] == 256 and sm.path == saved_phases
    assert sm.sha256 == hashlib.sha256(saved_phases.read_bytes()).hexdigest()
    assert sm.model_id == f"seg-{sm.sha256[:12]}"
    a = sm.segment_slices(slice_192[None], tile=128, overlap=32)
    b = phases_sm.segment_slices(slice_192[None], tile=128, overlap=32)
    np.testing.assert_allclose(a["probability"], b["probability"], atol=1e-5)
    # the loaded network keeps its Monte-Carlo dropout
    mc = sm.segment_slices(slice_192[None], tile=128, overlap=32, uncertainty="mc", samples=2)
    assert mc["epistemic"].max() > 0


def test_load_errors(tmp_path, saved_phases):
    with pytest.raises(InputError, match="not found") as err:
        load_segment_model(tmp_path / "missing.keras")
    assert str(tmp_path / "missing.keras") in str(err.value)
    with pytest.raises(InputError, match="folder"):
        load_segment_model(tmp_path)
    junk = tmp_path / "junk.keras"
    junk.write_bytes(b"not a zip archive")
    with pytest.raises(InputError, match="not a Keras model file"):
        load_segment_model(junk)

    # a real archive without a card, with a card of another kind, with a card that lies
    bare = tmp_path / "bare.keras"
    bare.write_bytes(saved_phases.read_bytes())
    with pytest.raises(InputError, match="no model card bare.json"):
        load_segment_model(bare)
    (tmp_path / "bare.json").write_text(json.dumps({"kind": "tiqa", "n_classes": 3}))
    with pytest.raises(InputError, match="not a D-LinkNet model card"):
        load_segment_model(bare)
    (tmp_path / "bare.json").write_text(json.dumps({"kind": "dlinknet", "n_classes": 4}))
    with pytest.raises(InputError, match="n_classes 4 but the network gives 3") as err:
        load_segment_model(bare)
    assert str(err.value).startswith(str(bare))
    (tmp_path / "bare.json").write_text(json.dumps({"kind": "dlinknet", "n_classes": 3, "class_names": ["a"]}))
    with pytest.raises(InputError, match="class_names"):
        load_segment_model(bare)
    (tmp_path / "bare.json").write_text("{broken")
    with pytest.raises(InputError, match="cannot read the model card"):
        load_segment_model(bare)
    # a zip archive that is not a Keras model, with a valid card
    fake = tmp_path / "fake.keras"
    with zipfile.ZipFile(fake, "w") as zf:
        zf.writestr("hello.txt", "hi")
    (tmp_path / "fake.json").write_text(json.dumps({"kind": "dlinknet", "n_classes": 3}))
    with pytest.raises(InputError, match="cannot load the network"):
        load_segment_model(fake)
    assert os.path.getsize(fake) > 0  # input untouched


def test_binary_card_may_name_only_the_foreground(tmp_path):
    path = _save(_local(1), tmp_path, {"kind": "dlinknet", "n_classes": 1, "class_names": ["material"]}, "b.keras")
    sm = load_segment_model(path)
    assert sm.binary and sm.class_names == ["background", "material"]


def test_default_weights_paths():
    p = default_segment_weights()
    assert p.name == "dlinknet_phases.keras" and p.parent.name == "weights"
    assert default_segment_weights("binary").name == "dlinknet_binary.keras"
    with pytest.raises(OptionError, match="kind"):
        default_segment_weights("tiqa")
    if p.exists():
        sm = load_segment_model()
        assert sm.n_classes == 3 and len(sm.class_names) == 3
    else:
        with pytest.raises(InputError, match="not installed"):
            load_segment_model()
