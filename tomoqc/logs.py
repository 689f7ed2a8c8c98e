"""Quiet, honest logs: TensorFlow's start-up noise kept off stderr, real errors kept on it.

Importing TensorFlow on a machine without a GPU prints a screenful that says nothing
wrong happened: ``oneDNN custom operations are on``, ``Could not find cuda drivers``,
``failed call to cuInit: ... UNKNOWN ERROR (303)``, ``All log messages before
absl::InitializeLog() is called are written to STDERR``. Most of it comes from native
code while the shared libraries load, before ``TF_CPP_MIN_LOG_LEVEL`` is read, so the
variable alone cannot hide it.

:func:`quiet_native_logs` (called by the command line before anything imports
TensorFlow) therefore sets ``TF_CPP_MIN_LOG_LEVEL=2`` (no native INFO or WARNING lines
later on) and arranges for the first ``import tensorflow`` of the process, and the
device discovery right after it, to run with the process's stderr (file descriptor 2)
captured. When they are done the captured text goes back to stderr without the lines
:func:`filter_native_noise` knows to be noise: native INFO lines, the absl notice, and,
only where this machine has no GPU at all (:func:`gpu_present`), the failed ``cuInit``
that merely says so. Warnings, errors and anything else printed meanwhile are kept.

Worker processes get the same behaviour through their environment
(:func:`native_log_env`, which :mod:`tomoqc.cluster` and :mod:`tomoqc.slurm` add to what
they start): ``import tomoqc`` in a process whose ``TOMOQC_NATIVE_LOGS`` is ``quiet``
installs the import filter. ``--verbose`` (``quiet_native_logs(verbose=True)``) turns
all of it off, in this process and in the workers it starts.
"""

from __future__ import annotations

import contextlib
import glob
import importlib.abc
import os
import re
import subprocess
import sys

__all__ = ["ENV", "filter_native_noise", "gpu_present", "install_import_filter", "native_log_env",
           "quiet_native_logs"]

#: Environment variable carrying the choice to worker processes: ``quiet`` or ``verbose``.
ENV = "TOMOQC_NATIVE_LOGS"

# absl's prefix of a native log line: severity letter, date, time, thread id, file:line]
_ABSL_LINE = re.compile(r"^([IWEF])\d{4} [\d:.]+\s+\d+ [^\s\]]+:\d+\] ")
_ABSL_NOTICE = "All log messages before absl::InitializeLog() is called are written to STDERR"
# follows cpu_feature_guard's INFO line on a line of its own
_CPU_FEATURES = re.compile(r"^To enable the following instructions: .* rebuild TensorFlow with the appropriate compiler flags\.$")
# errors or warnings TensorFlow prints at every start, whatever the machine: plugin
# registrations that another copy of a library already made, an optional TensorRT
_ALWAYS_NOISE = re.compile(
    r"Unable to register cu(?:DNN|FFT|BLAS) factory|computation placer already registered|"
    r"Could not find TensorRT"
)
# the GPU probe failing on a machine that has no GPU
_NO_GPU_NOISE = re.compile(r"failed call to cuInit|cuda_driver\.cc.*CUDA_ERROR_NO_DEVICE|"
                           r"kernel driver does not appear to be running on this host")


def gpu_present() -> bool:
    """True unless this machine truly has no NVIDIA GPU for this process.

    False when ``CUDA_VISIBLE_DEVICES`` hides every device (``""`` or ``-1``) or when
    there is no NVIDIA device node nor driver (``/dev/nvidia*``, ``/proc/driver/nvidia``).
    """
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return False
    return bool(os.path.exists("/proc/driver/nvidia") or glob.glob("/dev/nvidia[0-9]*")
                or os.path.exists("/dev/nvidiactl"))


def filter_native_noise(text: str, *, gpu: bool | None = None) -> str:
    """Drop TensorFlow's start-up noise from captured stderr text; keep everything else.

    Parameters
    ----------
    text : str
        What a process printed on stderr while TensorFlow loaded.
    gpu : bool, optional
        Whether this machine has a GPU (default :func:`gpu_present`). Without one, a
        failed ``cuInit`` only says so and is dropped; with one it is a real error and
        kept.

    Returns
    -------
    str
        ``text`` without native INFO lines, the absl start-up notice, the CPU-features
        advice and the known registration messages.
    """
    if gpu is None:
        gpu = gpu_present()
    kept = []
    for line in text.splitlines(keepends=True):
        body = line.rstrip("\r\n")
        m = _ABSL_LINE.match(body)
        if m and m.group(1) == "I":
            continue
        if body.endswith(_ABSL_NOTICE) or _CPU_FEATURES.match(body):
            continue
        if m and _ALWAYS_NOISE.search(body):
            continue
        if m and not gpu and _NO_GPU_NOISE.search(body):
            continue
        kept.append(line)
    return "".join(kept)


def _filter_pipe(gpu: bool) -> None:
    """Copy stdin to stdout line by line, without the noise (the filter process's main loop)."""
    out = sys.stdout.buffer
    for raw in sys.stdin.buffer:
        kept = filter_native_noise(raw.decode("utf-8", errors="replace"), gpu=gpu)
        if kept:
            out.write(kept.encode("utf-8", errors="replace"))
            out.flush()


@contextlib.contextmanager
def _stderr_filtered():
    """Send file descriptor 2 through :func:`filter_native_noise` for the block.

    The filtering runs in a small child process that writes what it keeps to the real
    stderr as it comes, so that nothing is lost or held back when this process dies
    in the block (a fatal native error aborts it before any clean-up could run).
    """
    try:
        sys.stderr.flush()
    except Exception:
        pass
    try:
        saved = os.dup(2)
    except OSError:  # no stderr at all: nothing to filter
        yield
        return
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p))
    try:
        proc = subprocess.Popen(
            [sys.executable, "-c", "import sys; from tomoqc.logs import _filter_pipe; _filter_pipe(sys.argv[1] == '1')",
             "1" if gpu_present() else "0"],
            stdin=subprocess.PIPE, stdout=saved, stderr=saved, env=env)
    except OSError:  # cannot start a filter: leave stderr as it is
        os.close(saved)
        yield
        return
    try:
        os.dup2(proc.stdin.fileno(), 2)
        try:
            yield
        finally:
            try:
                sys.stderr.flush()
            except Exception:
                pass
            os.dup2(saved, 2)
            proc.stdin.close()
            try:
                # a process started meanwhile may hold the pipe open; the filter then ends after it
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
    finally:
        os.close(saved)


class _QuietLoader(importlib.abc.Loader):
    """Runs TensorFlow's module code, then its device discovery, with stderr filtered."""

    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        with _stderr_filtered():
            try:
                self._loader.exec_module(module)
                # the GPU probe (cuInit) runs here, on first use, rather than later unfiltered
                module.config.list_physical_devices()
            finally:
                module.__loader__ = self._loader
                if getattr(module, "__spec__", None) is not None:
                    module.__spec__.loader = self._loader

    def __getattr__(self, name):
        return getattr(self._loader, name)


class _QuietImport(importlib.abc.MetaPathFinder):
    """Finds ``tensorflow`` with the other finders and wraps its loader, once."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        _remove_import_filter()
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            if find is None:
                continue
            spec = find(name, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _QuietLoader(spec.loader)
                return spec
        return None


def _remove_import_filter() -> None:
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _QuietImport)]


def install_import_filter() -> bool:
    """Filter the noise of this process's first ``import tensorflow`` (see the module notes).

    Returns
    -------
    bool
        False when TensorFlow is already imported (too late to filter anything).
    """
    if "tensorflow" in sys.modules:
        return False
    if not any(isinstance(f, _QuietImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietImport())
    return True


def quiet_native_logs(verbose: bool = False) -> dict[str, str]:
    """Keep TensorFlow's native start-up noise off stderr in this process and its workers.

    Call it before TensorFlow is imported (the command line does so first thing).

    Parameters
    ----------
    verbose : bool
        Show everything instead: native INFO and WARNING lines, the CUDA probe.

    Returns
    -------
    dict
        The environment variables that give worker processes the same behaviour (also
        set in this process's environment, so that child processes inherit them).
    """
    if verbose:
        _remove_import_filter()
        os.environ[ENV] = "verbose"
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
    else:
        os.environ[ENV] = "quiet"
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        install_import_filter()
    return native_log_env()


def native_log_env() -> dict[str, str]:
    """Environment variables that carry this process's choice (quiet by default) to workers."""
    mode = "verbose" if os.environ.get(ENV) == "verbose" else "quiet"
    level = os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0" if mode == "verbose" else "2")
    return {ENV: mode, "TF_CPP_MIN_LOG_LEVEL": level}
