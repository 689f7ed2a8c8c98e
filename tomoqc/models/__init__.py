"""Neural networks of tomoqc: the TIQA quality network and its bundled default weights."""

from __future__ import annotations

__all__ = ["build_tiqa", "load_model", "TiqaModel", "patch_grid"]


def __getattr__(name):
    # TensorFlow is imported only when a model is actually needed.
    if name in __all__:
        from tomoqc.models import tiqa

        return getattr(tiqa, name)
    raise AttributeError(f"module 'tomoqc.models' has no attribute {name!r}")
