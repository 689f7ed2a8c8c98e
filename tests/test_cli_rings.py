"""``tomoqc rings``: the ring index of one slice of a volume on disk, its strongest rings and a PNG."""

import json

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from tomoqc.cli import main

RADII = (40, 55)


@pytest.fixture(scope="module")
def volume(tmp_path_factory):
    """Three 160 px textured slices; the middle one has a bright ring at radius 40 and a dark one at 55."""
    rng = np.random.default_rng(0)
    vol = np.empty((3, 160, 160), np.float32)
    yy, xx = np.indices((160, 160))
    r = np.hypot(yy - 79.5, xx - 79.5)
    for i in range(3):
        t = ndimage.gaussian_filter(rng.normal(size=(160, 160)), 2.0)
        vol[i] = 100 + 20 * t / t.std()
    vol[1][np.abs(r - RADII[0]) < 1] += 15
    vol[1][np.abs(r - RADII[1]) < 1] -= 15
    path = tmp_path_factory.mktemp("rings") / "vol.npy"
    np.save(path, vol)
    return path


def test_rings_json_finds_the_rings_and_writes_a_png(volume, tmp_path, capsys):
    png = tmp_path / "plots" / "rings.png"
    assert main(["rings", str(volume), "--json", "--png", str(png)]) == 0  # default: the middle slice
    out = json.loads(capsys.readouterr().out)
    assert out["slice"] == 1 and out["center"] == [79.5, 79.5]
    # the two strongest lie on the two rings (each 2 px wide: within 1 px of its radius), with their signs
    top = sorted(out["strongest_radii"][:2], key=lambda r: r["radius"])
    assert [abs(r["radius"] - R) < 1 for r, R in zip(top, RADII)] == [True, True], top
    assert [np.sign(r["amplitude"]) for r in top] == [1.0, -1.0]
    assert main(["rings", str(volume), "--slice", "0", "--json"]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert plain["ring_index"] < 0.3 * out["ring_index"]
    img = np.asarray(Image.open(png).convert("L"), float)
    assert img.std() > 10  # a picture, not a blank canvas
    assert sorted(p.name for p in png.parent.iterdir()) == ["rings.png"]


def test_rings_bad_input_one_line_and_nothing_written(volume, tmp_path, capsys):
    png = tmp_path / "r.png"
    cases = [
        (["--slice", "7"], "outside the volume"),
        (["--center", "a,b"], "ROW,COL"),
        (["--center", "500,10"], "outside the 160 x 160 slice"),
    ]
    for extra, words in cases:
        assert main(["rings", str(volume), "--png", str(png), *extra]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0], err
    assert main(["rings", str(tmp_path / "missing.zarr")]) == 1
    assert "missing.zarr" in capsys.readouterr().err
    assert not png.exists()


def test_rings_reports_the_centre_used(volume, capsys):
    assert main(["rings", str(volume), "--json", "--center", "79.5,79.5"]) == 0
    given = json.loads(capsys.readouterr().out)
    assert given["center"] == [79.5, 79.5] and given["center_source"] == "given"
    assert main(["rings", str(volume), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["center_source"] == "slice centre"
    assert main(["rings", str(volume), "--json", "--center", "auto"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert found["center_source"] == "found" and len(found["center"]) == 2
    assert main(["rings", str(volume), "--center", "auto"]) == 0
    assert "found" in capsys.readouterr().out


def test_rings_on_a_layered_sample_says_so_instead_of_a_ring_index(tmp_path, capsys):
    """The real wound-cell crop of tests/data/real: no ring index, the layers' period instead."""
    from pathlib import Path

    src = Path(__file__).parent / "data" / "real" / "battery_cellvol_im076_crop320.npy"
    path = tmp_path / "cell.npy"
    np.save(path, np.load(src)[None])
    png = tmp_path / "cell.png"
    assert main(["rings", str(path), "--json", "--png", str(png)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["layered"] is True and out["ring_index"] is None
    assert 4.0 <= out["layer_period"] <= 13.0  # the winding pitch is 11-12 px, its half a harmonic
    assert png.is_file()
    assert main(["rings", str(path)]) == 0
    assert "layered sample" in capsys.readouterr().out
