"""Batches for the networks' compiled inference: a short last batch is padded, but only a little.

A compiled (``tf.function``) network is traced again for every new input shape, so a last
batch shorter than the others is padded with zeros. Padding it to the full batch costs a
whole batch's work for one tile or patch; padding it to the next power of two (at most the
full batch) keeps the number of shapes small (log2 of the batch) and the waste below half.
Both the quality network (:mod:`tomoqc.models.tiqa`) and the segmenter
(:mod:`tomoqc.models.segmenter`) batch through here.
"""

from __future__ import annotations

import numpy as np


def padded_batch_size(m: int, batch_size: int) -> int:
    """The size a batch of ``m`` items is padded to: ``m`` itself when ``m >= batch_size``,
    else the next power of two that is at least ``m``, capped at ``batch_size``."""
    if m >= batch_size:
        return m
    return min(batch_size, 1 << (m - 1).bit_length())


def pad_batch(x: np.ndarray, batch_size: int) -> np.ndarray:
    """``x`` (m, ...) as float32, with zero items appended up to :func:`padded_batch_size`.
    The caller keeps the first ``m`` outputs."""
    x = np.asarray(x, np.float32)
    m = x.shape[0]
    padded = padded_batch_size(m, batch_size)
    if padded > m:
        x = np.concatenate([x, np.zeros((padded - m,) + x.shape[1:], np.float32)])
    return np.ascontiguousarray(x)
