"""tomoqc: objective, no-reference image quality assessment for X-ray tomography volumes."""


import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
if os.environ.get("TOMOQC_NATIVE_LOGS") == "quiet":  # a worker started by tomoqc (see tomoqc.logs)
    from tomoqc.logs import install_import_filter

    install_import_filter()

__version__ = "0.1.0"

# The public API, imported lazily so that `import tomoqc` stays light (no TensorFlow, no dask
# cluster) until a function that needs them is used.
_API = {
    "open_volume": "tomoqc.io",
    "volume_info": "tomoqc.io",
    "write_zarr": "tomoqc.io",
    "score": "tomoqc.pipeline",
    "segment": "tomoqc.segmentation",
    "open_segmentation": "tomoqc.segmentation",
    "load_model": "tomoqc.models.tiqa",
    "electrode_slice": "tomoqc.phantom",
    "electrode_volume": "tomoqc.phantom",
    "make_example_volume": "tomoqc.example",
    "build_dataset": "tomoqc.dataset",
    "project_dataset": "tomoqc.labels",
}

__all__ = ["__version__", "report", "compare", *_API]


def __getattr__(name: str):
    if name in ("report", "compare"):
        # these submodules are themselves callable (report(paths, out, ...), compare(variants,
        # ...)), so the module and the function never shadow each other
        import importlib

        return importlib.import_module(f"tomoqc.{name}")
    if name in _API:
        import importlib

        value = getattr(importlib.import_module(_API[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'tomoqc' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
