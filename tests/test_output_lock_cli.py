"""One writer per output, end to end: two real `tomoqc score` processes on the same output."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

TOMOQC = str(Path(sys.executable).parent / "tomoqc")


def test_second_score_run_on_the_same_output_names_the_first_and_leaves_it_alone(tmp_path):
    from tomoqc.locks import lock_path
    from tomoqc.pipeline import open_quality

    vol = tmp_path / "v.zarr"
    made = subprocess.run([TOMOQC, "example", str(vol), "--slices", "16", "--size", "224", "--no-progress"],
                          capture_output=True, text=True, timeout=300)
    assert made.returncode == 0, made.stderr
    out = tmp_path / "q"
    final = out / "v.zarr.quality.zarr"
    cmd = [TOMOQC, "score", str(vol), "--out", str(out), "--workers", "0", "--chunk-slices", "2", "--quiet"]
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        while not lock_path(final).exists():  # the first run holds the output
            assert first.poll() is None, first.communicate()
            assert time.monotonic() < deadline, "the first run never locked its output"
            time.sleep(0.05)
        second = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert first.poll() is None, "the first run ended before the second one started: nothing was tested"
        out1, err1 = first.communicate(timeout=600)
    finally:
        if first.poll() is None:
            first.kill()
    # the second run: one line naming the holder, exit 1, no traceback
    lines = second.stderr.strip().splitlines()
    assert second.returncode == 1, second.stderr
    assert len(lines) == 1, second.stderr
    assert lines[0].startswith(f"tomoqc: error: {final}: is being written by tomoqc pid {first.pid} "
                               f"on host {socket.gethostname()} since ")
    assert lines[0].endswith("; wait for it or stop it")
    # the first run: finished, complete, and nothing else left beside its output
    assert first.returncode == 0, err1[-3000:]
    ds = open_quality(final)
    assert ds.attrs["complete"] is True
    score = ds["score"].values
    assert score.shape == (16,) and np.all(np.isfinite(score)) and np.all((score >= 1) & (score <= 5))
    assert sorted(os.listdir(out)) == ["v.zarr.quality.zarr"]
