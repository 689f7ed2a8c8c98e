"""Segmentation metrics on small arrays counted by hand."""

import math

import numpy as np
import pytest

from tomoqc.metrics import seg

TRUTH = np.array([[0, 0, 1, 1],
                  [0, 1, 1, 1],
                  [2, 2, 1, 0]])
PRED = np.array([[0, 1, 1, 1],
                 [0, 0, 1, 1],
                 [2, 1, 1, 0]])
# by hand: class 0: truth at 4 pixels, pred at 4, overlap 3 -> TP 3, FP 1, FN 1
#          class 1: truth 6, pred 7, overlap 5 -> TP 5, FP 2, FN 1
#          class 2: truth 2, pred 1, overlap 1 -> TP 1, FP 0, FN 1


def test_confusion_matrix():
    m = seg.confusion_matrix(PRED, TRUTH)
    np.testing.assert_array_equal(m, [[3, 1, 0], [1, 5, 0], [0, 1, 1]])
    assert m.sum() == TRUTH.size


def test_f1_and_iou_by_hand():
    np.testing.assert_allclose(seg.f1_per_class(PRED, TRUTH), [6 / 8, 10 / 13, 2 / 3])
    np.testing.assert_allclose(seg.iou_per_class(PRED, TRUTH), [3 / 5, 5 / 8, 1 / 2])
    s = seg.segmentation_scores(PRED, TRUTH)
    assert s["accuracy"] == pytest.approx(9 / 12)
    assert s["mean_iou"] == pytest.approx((3 / 5 + 5 / 8 + 1 / 2) / 3)


def test_dice_iou_relation_and_perfect():
    f1 = seg.f1_per_class(PRED, TRUTH)
    iou = seg.iou_per_class(PRED, TRUTH)
    np.testing.assert_allclose(f1, 2 * iou / (1 + iou))
    np.testing.assert_allclose(seg.f1_per_class(TRUTH, TRUTH), [1, 1, 1])


def test_absent_class_is_nan():
    f1 = seg.f1_per_class(np.zeros((2, 2), int), np.zeros((2, 2), int), n_classes=2)
    assert f1[0] == 1.0 and math.isnan(f1[1])


def test_iou_map_colours():
    img = seg.iou_map(PRED, TRUTH, cls=1)
    assert img.dtype == np.uint8 and img.shape == (3, 4, 3)
    green, blue, red = seg.COLORS["correct"], seg.COLORS["missed"], seg.COLORS["wrong"]
    assert tuple(img[0, 2]) == green          # 1 in both
    assert tuple(img[1, 1]) == blue           # truth 1, predicted 0: missed
    assert tuple(img[0, 1]) == red            # predicted 1, truth 0: wrong
    assert tuple(img[2, 1]) == red            # predicted 1, truth 2: wrong
    assert tuple(img[0, 0]) == (0, 0, 0)      # neither
    counts = {c: int(np.all(img == c, axis=-1).sum()) for c in (green, blue, red)}
    assert counts == {green: 5, blue: 1, red: 2}
    bg = seg.iou_map(PRED, TRUTH, cls=1, background=np.arange(12.0).reshape(3, 4))
    assert tuple(bg[2, 3]) == (255, 255, 255)


def test_errors():
    with pytest.raises(ValueError, match="shape"):
        seg.confusion_matrix(PRED, TRUTH[:2])
    with pytest.raises(ValueError, match="integer"):
        seg.confusion_matrix(PRED + 0.5, TRUTH)
    with pytest.raises(ValueError, match="n_classes"):
        seg.confusion_matrix(PRED, TRUTH, n_classes=2)


def test_matthews_by_hand_and_against_scikit_learn():
    # confusion above: n 12, trace 9, truth counts (4, 6, 2), prediction counts (4, 7, 1)
    want = (12 * 9 - (16 + 42 + 2)) / math.sqrt((144 - (16 + 49 + 1)) * (144 - (16 + 36 + 4)))
    assert seg.matthews_corrcoef(PRED, TRUTH) == pytest.approx(want)
    from sklearn.metrics import matthews_corrcoef

    rng = np.random.default_rng(3)
    for k in (2, 3, 5):
        t = rng.integers(0, k, (40, 30))
        p = np.where(rng.random(t.shape) < 0.7, t, rng.integers(0, k, t.shape))
        assert seg.matthews_corrcoef(p, t) == pytest.approx(matthews_corrcoef(t.ravel(), p.ravel()), abs=1e-12)


def test_matthews_binary_is_the_correlation_of_the_maps():
    rng = np.random.default_rng(4)
    t = rng.random((50, 50)) < 0.3
    p = t ^ (rng.random(t.shape) < 0.1)  # a tenth of the pixels flipped
    assert seg.matthews_corrcoef(p, t) == pytest.approx(np.corrcoef(p.ravel(), t.ravel())[0, 1])
    assert seg.matthews_corrcoef(t, t) == pytest.approx(1.0)
    assert seg.matthews_corrcoef(~t, t) == pytest.approx(-1.0)
    # a constant map is no better than chance, however many pixels it gets right
    assert seg.matthews_corrcoef(np.zeros_like(t), t) == 0.0
