"""The short-batch padding shared by the quality network and the segmenter."""

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from tomoqc.models.batching import pad_batch, padded_batch_size


def test_padded_batch_sizes():
    assert [padded_batch_size(m, 16) for m in (1, 2, 3, 4, 5, 9, 15, 16, 20)] == [1, 2, 4, 4, 8, 16, 16, 16, 20]
    assert [padded_batch_size(m, 6) for m in (3, 5, 6)] == [4, 6, 6]


@given(st.integers(1, 70), st.integers(1, 64))
def test_padding_bounds(m, bs):
    p = padded_batch_size(m, bs)
    if m >= bs:
        assert p == m
    else:
        # never short, never past the batch, less than twice the items, and one of few shapes
        assert m <= p <= bs and p < 2 * m
        assert p == bs or (p & (p - 1)) == 0


def test_pad_batch_keeps_items_and_appends_zeros():
    x = np.arange(3 * 2 * 2, dtype=np.float64).reshape(3, 2, 2) + 1
    y = pad_batch(x, 8)
    assert y.dtype == np.float32 and y.shape == (4, 2, 2) and y.flags.c_contiguous
    np.testing.assert_array_equal(y[:3], x.astype(np.float32))
    assert not y[3].any()
    assert pad_batch(x, 2).shape == (3, 2, 2)
