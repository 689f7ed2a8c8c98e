import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from tomoqc.train.data import Block, block_batch, rank_pairs
from tomoqc.train.rank import rank_loss


def _loop_loss(scores, n_blocks, levels, margin):
    """The rank loss written out as a plain double loop over pairs."""
    total, count = 0.0, 0
    L = len(levels)
    for b in range(n_blocks):
        for i in range(L):
            for j in range(L):
                if levels[i] < levels[j]:  # image i less distorted: should score higher
                    d = scores[b * L + i] - scores[b * L + j]
                    total += max(0.0, margin - d)
                    count += 1
    return total / count


@settings(max_examples=40, deadline=None)
@given(
    n_blocks=st.integers(1, 5),
    levels=st.lists(st.integers(0, 5), min_size=2, max_size=7).filter(lambda v: len(set(v)) > 1),
    margin=st.floats(0.1, 12.0),
    seed=st.integers(0, 2**31 - 1),
)
def test_vectorised_loss_equals_double_loop(n_blocks, levels, margin, seed):
    rng = np.random.default_rng(seed)
    scores = rng.normal(0, 5, size=n_blocks * len(levels)).astype(np.float64)
    better, worse = rank_pairs(n_blocks, levels)
    got = float(rank_loss(scores, better, worse, margin))
    want = _loop_loss(scores, n_blocks, levels, margin)
    assert np.isclose(got, want, rtol=1e-5, atol=1e-5)


def test_pairs_skip_equal_levels_and_count():
    better, worse = rank_pairs(3, [0, 1, 2, 3, 4, 5])
    assert len(better) == 3 * 15
    # never a pair across blocks, always better = lower level
    assert ((better // 6) == (worse // 6)).all()
    assert ((better % 6) < (worse % 6)).all()
    b2, w2 = rank_pairs(1, [0, 2, 2, 5])
    pairs = set(zip(b2.tolist(), w2.tolist()))
    assert (1, 2) not in pairs and (2, 1) not in pairs
    assert pairs == {(0, 1), (0, 2), (0, 3), (1, 3), (2, 3)}


def test_perfect_ordering_with_margin_gap_has_zero_loss():
    levels = list(range(6))
    s = np.array([50.0 - 7 * lv for lv in levels] * 2)
    b, w = rank_pairs(2, levels)
    assert float(rank_loss(s, b, w, 6.0)) == 0.0
    assert float(rank_loss(s, b, w, 10.0)) > 0.0


def test_block_order_survives_shuffling():
    """Batches keep each block's images together and in level order, whatever block order."""

    class Store(dict):
        dir = "."

    store = Store()
    blocks = []
    for r in range(5):
        files = []
        for lv in range(6):
            name = f"r{r}l{lv}"
            store[name] = np.full((40, 40), r * 10 + lv, np.float32) + np.eye(40, dtype=np.float32)
            files.append(name)
        blocks.append(Block(f"r{r}", "image", "noise", files, list(range(6))))
    rng = np.random.default_rng(0)
    for _ in range(3):
        order = rng.permutation(5)[:3]
        x = block_batch([blocks[i] for i in order], store, 16, rng)
        vals = np.round(np.median(x[..., 0], axis=(1, 2))).astype(int).reshape(3, 6)
        for k, i in enumerate(order):
            assert vals[k].tolist() == [i * 10 + lv for lv in range(6)]
