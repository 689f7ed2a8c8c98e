"""The environment tomoqc gives the worker processes it starts (local or as SLURM jobs).

Set before TensorFlow loads in a worker, these variables cap the threads that
TensorFlow and the BLAS libraries start (so that ``n`` workers use ``n`` cores instead
of ``n * n``) and carry the choice between quiet and verbose native logs
(:func:`tomoqc.logs.native_log_env`).
"""

from __future__ import annotations

import os

from tomoqc.logs import native_log_env

__all__ = ["tf_thread_env", "worker_env"]


def tf_thread_env(threads: int) -> dict[str, str]:
    """Environment that caps the threads TensorFlow and BLAS libraries start.

    Parameters
    ----------
    threads : int
        Threads each worker process may use for its numerical work.

    Returns
    -------
    dict
        Variables to set in a worker's environment before TensorFlow loads.
        ``TOMOQC_TF_THREADS`` is read where the worker configures TensorFlow, which
        also sets TensorFlow's thread pools explicitly before the first model is built.
    """
    t = str(max(1, int(threads)))
    return {
        "OMP_NUM_THREADS": t,
        "OPENBLAS_NUM_THREADS": t,
        "MKL_NUM_THREADS": t,
        "TF_NUM_INTRAOP_THREADS": t,
        "TF_NUM_INTEROP_THREADS": "1",
        "TOMOQC_TF_THREADS": t,
        "KERAS_BACKEND": os.environ.get("KERAS_BACKEND", "tensorflow"),
    }


def worker_env(threads: int) -> dict[str, str]:
    """:func:`tf_thread_env` plus the native-log setting of this process (quiet by default)."""
    return {**tf_thread_env(threads), **native_log_env()}
