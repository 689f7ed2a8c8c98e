"""Scoring on GPUs with ``--cluster local-cuda`` (one dask worker per GPU).

Selected with ``pytest -m gpu``; skipped where TensorFlow sees no GPU or dask-cuda is not
installed (``pip install 'tomoqc[gpu]'``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.gpu

TOMOQC = str(Path(sys.executable).parent / "tomoqc")


@pytest.fixture(scope="module")
def gpus():
    pytest.importorskip("dask_cuda", reason="dask-cuda is not installed (pip install 'tomoqc[gpu]')")
    import tensorflow as tf

    found = tf.config.list_physical_devices("GPU")
    if not found:
        pytest.skip("TensorFlow sees no GPU")
    return found


def _score(volume, out, *args, env=None):
    t0 = time.perf_counter()
    proc = subprocess.run([TOMOQC, "score", str(volume), "--out", str(out), "--quiet", *args], capture_output=True,
                          text=True, env=env, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return time.perf_counter() - t0


def test_local_cuda_scores_match_cpu_scores(gpus, tmp_path):
    from tomoqc.pipeline import open_quality

    n_slices = 64
    vol = tmp_path / "vol.zarr"
    subprocess.run([TOMOQC, "example", str(vol), "--slices", str(n_slices), "--size", "448", "--no-progress"],
                   check=True, capture_output=True)
    gpu_s = _score(vol, tmp_path / "gpu", "--cluster", "local-cuda")
    cpu_env = dict(os.environ, CUDA_VISIBLE_DEVICES="-1")
    cpu_s = _score(vol, tmp_path / "cpu", "--cluster", "local", env=cpu_env)
    a = open_quality(tmp_path / "gpu" / "vol.zarr.quality.zarr")
    b = open_quality(tmp_path / "cpu" / "vol.zarr.quality.zarr")
    # different kernels (cuDNN vs oneDNN) round differently; scores live in [1, 5]
    np.testing.assert_allclose(a["score"].values, b["score"].values, rtol=0, atol=0.02)
    np.testing.assert_allclose(a["severity"].values, b["severity"].values, rtol=0, atol=0.02)
    sys.stderr.write(f"\n{len(gpus)} GPU(s): {n_slices / gpu_s:.1f} slices/s (448 px, wall time with start-up); "
                     f"CPU: {n_slices / cpu_s:.1f} slices/s\n")
