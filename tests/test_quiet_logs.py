"""Quiet, honest logs: no TensorFlow/CUDA start-up noise on a CPU-only run, real errors kept."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tomoqc.logs import filter_native_noise, gpu_present

REPO = Path(__file__).resolve().parents[1]
TOMOQC = str(Path(sys.executable).parent / "tomoqc")
NOISE = re.compile(r"cuda|cuinit|onednn|absl", re.IGNORECASE)

# What TensorFlow 2.21 prints on stderr when it loads on a machine without a GPU
# (copied from such a run), and lines that must survive the filter.
STARTUP = """\
WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
I0000 00:00:1796044210.656676   27977 port.cc:153] oneDNN custom operations are on. You may see slightly different numerical results due to floating-point round-off errors from different computation orders. To turn them off, set the environment variable `TF_ENABLE_ONEDNN_OPTS=0`.
I0000 00:00:1796044210.657304   27977 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will not be used.
I0000 00:00:1796044279.631683   28867 cpu_feature_guard.cc:227] This TensorFlow binary is optimized to use available CPU instructions in performance-critical operations.
To enable the following instructions: AVX2 AVX512F AVX512_VNNI FMA, in other operations, rebuild TensorFlow with the appropriate compiler flags.
E0000 00:00:1796045225.770111   28344 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)
"""
REAL = [
    "E0000 00:00:1796045225.770111   28344 bfc_allocator.cc:429] Allocator ran out of memory trying to allocate 2.0GiB\n",
    "W0000 00:00:1796045225.770111   28344 op_level_cost_estimator.cc:699] Error in PredictCost() for the op\n",
    "F0000 00:00:1796045225.770111   28344 tensor_shape.cc:50] Check failed: dims() == 4\n",
    "Traceback (most recent call last):\n",
    "UserWarning: something a user should see\n",
]


def test_filter_drops_the_startup_noise_and_keeps_real_messages():
    text = STARTUP + "".join(REAL)
    assert filter_native_noise(text, gpu=False) == "".join(REAL)


def test_a_failed_cuinit_is_an_error_where_there_is_a_gpu():
    kept = filter_native_noise(STARTUP, gpu=True)
    assert kept.splitlines() == [STARTUP.splitlines()[-1]]  # only the cuInit failure


def test_hidden_devices_mean_no_gpu(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert gpu_present() is False
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    assert gpu_present() is False


def test_a_fatal_native_error_while_filtering_still_reaches_stderr():
    """The filter runs in a child process: a process that aborts mid-import loses nothing."""
    code = ("import os; from tomoqc.logs import _stderr_filtered\n"
            "with _stderr_filtered():\n"
            "    os.write(2, b'I0000 00:00:1.5   1 port.cc:153] oneDNN custom operations are on.\\n')\n"
            "    os.write(2, b'F0000 00:00:1.5   1 x.cc:1] Check failed: something real\\n')\n"
            "    os.abort()\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode != 0
    assert "Check failed: something real" in proc.stderr
    assert "oneDNN" not in proc.stderr


def _clean_env():
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "TOMOQC_NATIVE_LOGS")}
    env["PYTHONPATH"] = str(REPO)
    return env


def _import_tensorflow(mode: str) -> subprocess.CompletedProcess:
    code = ("import sys; from tomoqc.logs import quiet_native_logs; quiet_native_logs(verbose=sys.argv[1] == 'verbose')\n"
            "import keras, tensorflow as tf; tf.config.threading.set_intra_op_parallelism_threads(2)\n"
            "print(float(keras.layers.Dense(1, kernel_initializer='ones')(tf.ones((1, 3)))[0, 0]))\n")
    return subprocess.run([sys.executable, "-c", code, mode], capture_output=True, text=True, env=_clean_env(),
                          timeout=300)


@pytest.mark.skipif(gpu_present(), reason="checks a CPU-only machine")
def test_this_process_imports_tensorflow_quietly():
    proc = _import_tensorflow("quiet")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "3.0"  # TensorFlow works, and its thread settings could still be made
    assert [line for line in proc.stderr.splitlines() if NOISE.search(line)] == []


@pytest.mark.slow  # the control of the test above
@pytest.mark.skipif(gpu_present(), reason="checks a CPU-only machine")
def test_verbose_shows_tensorflow_startup_messages():
    proc = _import_tensorflow("verbose")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert any("oneDNN" in line for line in proc.stderr.splitlines())
    assert any("cuInit" in line for line in proc.stderr.splitlines())


# A local cluster whose worker imports tomoqc, then TensorFlow, as a scoring task does.
WORKER = """
import sys
from tomoqc.cluster import start_cluster
from tomoqc.logs import quiet_native_logs

def probe():
    import tomoqc  # noqa: F401  (the task's own module comes first)
    import tensorflow as tf
    return len(tf.config.list_physical_devices("CPU"))

if __name__ == "__main__":
    quiet_native_logs(verbose=sys.argv[1] == "verbose")
    with start_cluster("local", workers=1) as client:
        assert client.submit(probe, pure=False).result() >= 1
        main_has_tf = "tensorflow" in sys.modules
    print("main imported tensorflow:", main_has_tf)
"""


@pytest.mark.slow  # ~20 s; the default suite checks a worker through `tomoqc score --workers 1` below
@pytest.mark.skipif(gpu_present(), reason="checks a CPU-only machine")
def test_workers_print_no_tensorflow_noise_unless_verbose(tmp_path):
    script = tmp_path / "worker_probe.py"
    script.write_text(WORKER)
    env = _clean_env()
    runs = {}
    for mode in ("quiet", "verbose"):
        proc = subprocess.run([sys.executable, str(script), mode], capture_output=True, text=True, env=env,
                              timeout=300, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "main imported tensorflow: False" in proc.stdout  # TensorFlow ran in the worker only
        runs[mode] = [line for line in proc.stderr.splitlines() if NOISE.search(line)]
    assert runs["quiet"] == []
    assert any("oneDNN" in line for line in runs["verbose"])  # the same run, verbose: the noise is there


@pytest.mark.skipif(gpu_present(), reason="checks a CPU-only machine")
def test_score_on_cpu_prints_no_cuda_onednn_or_absl_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "TOMOQC_NATIVE_LOGS")}
    vol = tmp_path / "v.zarr"
    made = subprocess.run([TOMOQC, "example", str(vol), "--slices", "8", "--size", "224", "--no-progress"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert made.returncode == 0, made.stderr
    # one worker process: TensorFlow loads there, as in `make demo`
    proc = subprocess.run([TOMOQC, "score", str(vol), "--workers", "1", "--quiet"], capture_output=True,
                          text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "v.zarr" in proc.stdout  # the summary table
    noisy = [line for line in proc.stderr.splitlines() if NOISE.search(line)]
    assert noisy == [], noisy
