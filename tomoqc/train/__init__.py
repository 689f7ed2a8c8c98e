"""Training of the TIQA network: rank stage (self-supervised), fine-tuning stage (labels).

Heavy libraries are imported by the functions that need them; see
:func:`tomoqc.train.rank.train_rank`, :func:`tomoqc.train.finetune.train_finetune` and
:func:`tomoqc.train.segment.train_segment` (the segmentation network).
"""

from __future__ import annotations

__all__ = ["train_rank", "train_finetune", "train_segment"]


def __getattr__(name):
    if name == "train_rank":
        from tomoqc.train.rank import train_rank

        return train_rank
    if name == "train_finetune":
        from tomoqc.train.finetune import train_finetune

        return train_finetune
    if name == "train_segment":
        from tomoqc.train.segment import train_segment

        return train_segment
    raise AttributeError(f"module 'tomoqc.train' has no attribute {name!r}")
