"""`tomoqc score` on the command line: outputs, JSON lines, QC exit codes, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import zarr

from tomoqc.cli import main


@pytest.fixture(scope="module")
def volumes(tmp_path_factory):
    from tomoqc.phantom import electrode_volume

    d = tmp_path_factory.mktemp("cli")
    paths = []
    for i in range(2):
        vol, _ = electrode_volume((8, 224, 224), seed=10 + i)
        p = d / f"vol{i}.zarr"
        z = zarr.create_array(str(p), shape=vol.shape, chunks=(1, 224, 224), dtype="float32")
        z[:] = vol.astype(np.float32)
        paths.append(p)
    return paths


def test_score_two_volumes_json_lines(volumes, model_path, tmp_path, capsys):
    rc = main(["score", *map(str, volumes), "--model", str(model_path), "--out", str(tmp_path), "--workers", "0",
               "--json", "--quiet", "--step", "2"])
    assert rc == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
    assert len(lines) == 2
    for line, vol in zip(lines, volumes):
        assert line["path"] == str(vol.resolve())
        assert line["output"] == str((tmp_path / f"{vol.name}.quality.zarr").resolve())
        assert Path(line["output"]).is_dir()
        assert line["slices"] == 4  # slices 0, 2, 4, 6
        assert 1 <= line["p5_score"] <= line["median_score"] <= 5
        assert line["dominant_distortion"] in ("noise", "blur", "ring", "none")
        assert line["verdict"] in ("pass", "fail", "uncertain")
        assert line["median_score_uncertainty"] >= 0 and 0 <= line["ood_fraction"] <= 1
        import xarray as xr

        ds = xr.open_zarr(line["output"], consolidated=False)
        assert float(np.nanmedian(ds["score"].values)) == pytest.approx(line["median_score"], abs=1e-3)
        assert float(np.nanmedian(ds["ring_index"].values)) == pytest.approx(line["median_ring_index"], abs=1e-5)


def test_fail_below_exit_codes(volumes, model_path, tmp_path, capsys):
    base = ["score", str(volumes[0]), "--model", str(model_path), "--workers", "0", "--json", "--quiet"]
    assert main(base + ["--out", str(tmp_path / "a"), "--fail-below", "1"]) == 0  # no median is below 1
    median = json.loads(capsys.readouterr().out.splitlines()[0])["median_score"]
    assert median < 4.99
    rc = main(base + ["--out", str(tmp_path / "b"), "--fail-below", f"{min(5.0, median + 0.01):.3f}"])
    out, err = capsys.readouterr()
    assert rc == 3
    assert json.loads(out.splitlines()[0])["verdict"] == "fail"  # the result is still printed
    assert err.strip().startswith("tomoqc: error: 1 of 1 volume(s) below --fail-below")
    assert (tmp_path / "b" / f"{volumes[0].name}.quality.zarr").is_dir()  # and written


def test_errors_are_one_line_exit_1(volumes, model_path, tmp_path, capsys):
    assert main(["score", str(tmp_path / "missing.zarr"), "--model", str(model_path), "--workers", "0"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tomoqc: error: ") and "missing.zarr" in err[0]
    assert main(["score", str(volumes[0]), "--model", str(model_path), "--workers", "0", "--step", "0"]) == 1
    assert main(["score", str(volumes[0]), "--queue", "gpu", "--workers", "0"]) == 1
    assert "--cluster slurm" in capsys.readouterr().err
    assert main(["score", str(volumes[0]), "--fail-below", "7", "--workers", "0"]) == 1
    assert main(["score", str(volumes[0]), "--tta-views", "3", "--workers", "0"]) == 1
    assert "--tta-views" in capsys.readouterr().err
    import importlib.util

    if importlib.util.find_spec("dask_cuda") is None:
        assert main(["score", str(volumes[0]), "--cluster", "local-cuda", "--model", str(model_path),
                     "--out", str(tmp_path)]) == 1
        assert "tomoqc[gpu]" in capsys.readouterr().err


def test_score_then_report_cli(volumes, model_path, tmp_path, capsys):
    assert main(["score", str(volumes[1]), "--model", str(model_path), "--out", str(tmp_path / "q"), "--workers", "0",
                 "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "vol1.zarr" in out and "verdict" in out  # the summary table
    q = tmp_path / "q" / "vol1.zarr.quality.zarr"
    assert main(["report", str(q), "--out", str(tmp_path / "r")]) == 0
    assert (tmp_path / "r" / "index.html").is_file()
    assert main(["score", str(volumes[1]), "--model", str(model_path), "--out", str(tmp_path / "q"), "--workers", "0",
                 "--quiet"]) == 1  # exists
    assert main(["score", str(volumes[1]), "--model", str(model_path), "--out", str(tmp_path / "q"), "--workers", "0",
                 "--quiet", "--overwrite"]) == 0


def test_ring_options(volumes, model_path, tmp_path, capsys):
    assert main(["score", str(volumes[0]), "--model", str(model_path), "--out", str(tmp_path), "--workers", "0",
                 "--quiet", "--json", "--no-measured-terms", "--ring-center", "100,120"]) == 0
    import xarray as xr

    line = json.loads(capsys.readouterr().out.strip().splitlines()[0])
    ds = xr.open_zarr(line["output"], consolidated=False)
    assert ds.attrs["measured_terms"] is False and ds.attrs["ring_center"] == "[100.0, 120.0]"
    assert ds.attrs["ring_center_source"] == "given"
    for bad in ("100", "a,b", "1,2,3"):
        assert main(["score", str(volumes[0]), "--model", str(model_path), "--out", str(tmp_path / "bad"),
                     "--workers", "0", "--quiet", "--ring-center", bad]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "--ring-center" in err[0], err
    assert not (tmp_path / "bad").exists()


def test_slices_too_small_for_the_patch_are_uncertain_and_say_why(model_path, tmp_path, capsys):
    # 150 x 150 px slices leave 55 % of the 224 px patch to reflection padding: every slice is
    # flagged out of distribution, the verdict is uncertain and one line says why; a slice of a
    # whole patch gets no such line
    from tomoqc.phantom import electrode_volume

    vol, _ = electrode_volume((8, 224, 224), seed=31)
    vol = vol[:3]
    small, whole = tmp_path / "small.npy", tmp_path / "whole.npy"
    np.save(small, vol[:, 37:187, 37:187].astype(np.float32))
    np.save(whole, vol.astype(np.float32))
    base = ["--model", str(model_path), "--out", str(tmp_path / "q"), "--workers", "0", "--json", "--quiet"]
    assert main(["score", str(small), *base, "--fail-below", "1"]) == 0
    out, err = capsys.readouterr()
    line = json.loads(out.splitlines()[0])
    assert line["ood_fraction"] == 1.0 and line["verdict"] == "uncertain"
    notes = [x for x in err.splitlines() if x.startswith("note:")]
    assert len(notes) == 1 and str(small) in notes[0] and "150 x 150 px" in notes[0] and "224 px" in notes[0]
    import xarray as xr

    ds = xr.open_zarr(line["output"], consolidated=False)
    assert (ds["flag"].values == 4).all() and (ds["score_uncertainty"].values >= 1.0).all()
    assert main(["score", str(whole), *base, "--fail-below", "1"]) == 0
    out, err = capsys.readouterr()
    assert not [x for x in err.splitlines() if x.startswith("note:")]
