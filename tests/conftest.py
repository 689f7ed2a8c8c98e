import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")


def make_test_model(path: Path) -> Path:
    """A randomly initialised TIQA network (the ``small-cnn`` backbone: the tests check the
    scoring machinery, not the network, and it runs ~20x faster than EfficientNet-B0 on a
    CPU) whose score head is rescaled so that electrode slices get scores spread inside
    (1, 5) instead of all clipped to one end."""
    if path.exists():
        return path
    import keras

    from tomoqc.models.tiqa import build_tiqa
    from tomoqc.phantom import electrode_slice

    keras.utils.set_random_seed(0)
    m = build_tiqa(seed=0, backbone="small-cnn")
    rng = np.random.default_rng(0)
    x = np.stack([electrode_slice((224, 224), seed=i)[0] for i in range(6)])
    x = x + rng.normal(0, 1, x.shape) * (0.05 * np.arange(6))[:, None, None]
    x = (x - x.min(axis=(1, 2), keepdims=True)) / np.ptp(x, axis=(1, 2), keepdims=True)
    s = np.asarray(m(x[..., None].astype("float32"), training=False)["score"])[:, 0]
    w, b = m.get_layer("score").get_weights()
    a = 0.5 / max(float(s.std()), 1e-9)  # scores about 3 +- 0.5 on these slices
    m.get_layer("score").set_weights([w * a, (b - s.mean()) * a + 3.0])
    tmp = path.with_name(path.stem + ".tmp.keras")
    m.save(tmp)
    os.replace(tmp, path)
    return path


@pytest.fixture(scope="session")
def model_path(tmp_path_factory):
    return make_test_model(tmp_path_factory.getbasetemp() / "tiqa-test-model.keras")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Six 96-px phantom references, image-domain distortions at levels 1-5, no mixtures."""
    from tomoqc.dataset import build_dataset

    d = tmp_path_factory.mktemp("tiny") / "data"
    build_dataset(d, references=6, domain="image", size=96, seed=11, mixtures=False, workers=1, progress=False)
    return d


@pytest.fixture(scope="module")
def tiny_labelled(tiny, tmp_path_factory):
    """The tiny set with a label column: a simple decreasing function of the level."""
    import csv
    import shutil

    d = tmp_path_factory.mktemp("lab") / "data"
    shutil.copytree(tiny, d)
    with open(d / "manifest.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        r["label"] = f"{5.0 - 0.8 * int(r['level']):.3f}"
    with open(d / "manifest.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return d


@pytest.fixture(scope="session")
def small_tiqa(tmp_path_factory):
    """A new, untrained TIQA network with the ``small-cnn`` backbone, as a .keras file: the
    starting point of the training tests (they check the training machinery; training
    EfficientNet-B0 itself is the slow opt-in suite's job)."""
    import keras

    from tomoqc.models.tiqa import build_tiqa

    path = tmp_path_factory.getbasetemp() / "small-tiqa-untrained.keras"
    keras.utils.set_random_seed(0)
    build_tiqa(input_size=None, seed=0, backbone="small-cnn").save(path)
    return path


def _disc_texture(n: int = 256, seed: int = 0, sigma: float = 2.0) -> np.ndarray:
    """An isotropic random texture (white noise smoothed by a Gaussian of ``sigma`` px) in a
    disc of radius 0.45 n, in [0, 1]: no preferred direction, for the angular-sampling tests."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    t = ndimage.gaussian_filter(rng.normal(size=(n, n)), sigma)
    t = (t - t.min()) / (t.max() - t.min())
    yy, xx = np.mgrid[:n, :n] - (n - 1) / 2
    return np.where(np.hypot(yy, xx) < 0.45 * n, t, 0.0)


@pytest.fixture(scope="session")
def disc_texture():
    """:func:`_disc_texture`, called as ``disc_texture(n=..., seed=..., sigma=...)``."""
    return _disc_texture


def _dense_particles(n=256, radius=2.5, cover=0.45, seed=0):
    """Sharp discs of ``radius`` px at random places, drawn until about ``cover`` of the area is hit."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:n, :n]
    m = np.zeros((n, n), bool)
    for y, x in rng.uniform(0, n, (int(cover * n * n / (np.pi * radius**2)), 2)):
        m |= (yy - y) ** 2 + (xx - x) ** 2 <= radius**2
    return m.astype(np.float64)


@pytest.fixture(scope="session")
def dense_particles():
    """:func:`_dense_particles`: a slice of sharp discs dense enough to fill the Haar bands."""
    return _dense_particles
