"""Reading human ratings into MOS with confidence intervals."""

import math

import numpy as np
import pytest
from scipy import stats as ss

from tomoqc.annotations import match_images, read_annotations
from tomoqc.errors import InputError


def test_per_rating_mos_and_ci(tmp_path):
    p = tmp_path / "r.csv"
    p.write_text("Image, Rater, Score\na.npy,r1,2\na.npy,r2,3\na.npy,r3,4\nb.npy,r1,5\n\n")
    m = read_annotations(p)
    a = m["a.npy"]
    assert a.mos == 3 and a.n == 3 and a.std == pytest.approx(1.0)
    half = ss.t.ppf(0.975, 2) * 1.0 / math.sqrt(3)  # 2.484
    assert (a.ci_low, a.ci_high) == pytest.approx((3 - half, 3 + half))
    # independent check: scipy's t interval of the mean
    lo, hi = ss.t.interval(0.95, 2, loc=3, scale=ss.sem([2, 3, 4]))
    assert a.ci_low == pytest.approx(lo) and a.ci_high == pytest.approx(hi)
    assert m["b.npy"].n == 1 and math.isnan(m["b.npy"].ci_low)


def test_per_image_format(tmp_path):
    p = tmp_path / "s.csv"
    p.write_text("image,mos,std,n\nx.tif,2.5,0.8,16\n")
    x = read_annotations(p)["x.tif"]
    assert x.ci_half_width == pytest.approx(ss.t.ppf(0.975, 15) * 0.8 / 4)


@pytest.mark.parametrize("text, msg", [
    ("image,rater,score\na,r,6\n", "line 2: score 6 is outside 1-5"),
    ("image,rater,score\na,r,1\na,s,0.5\n", "line 3: score 0.5 is outside 1-5"),
    ("image,rater,score\na,r,good\n", "line 2: score 'good' is not a number"),
    ("image,score\na,3\n", "missing columns"),
    ("image,mos,std,n\na,3,0.2,0\n", "line 2: n 0 must be at least 1"),
    ("image,mos,std,n\na,3,-1,4\n", "std -1 is negative"),
    ("image,mos,std,n\na,3,1,4\na,3,1,4\n", "listed twice"),
    ("image,rater,score\n,r,3\n", "empty image name"),
    ("", "empty"),
])
def test_bad_rows_name_file_and_line(tmp_path, text, msg):
    p = tmp_path / "bad.csv"
    p.write_text(text)
    with pytest.raises(InputError, match=msg) as err:
        read_annotations(p)
    assert str(err.value).startswith(str(p))


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_annotations(tmp_path / "nope.csv")


def test_match_images():
    p = {"ref0.npy": 1, "sub/ref1.npy": 2, "ref2": 3, "dup.npy": 4}
    files = ["sub/ref0.npy", "./sub/ref1.npy", "a/ref2.npy", "a/dup.npy", "b/dup.npy"]
    out = match_images(p, files)
    assert out == {"sub/ref0.npy": 1, "./sub/ref1.npy": 2, "a/ref2.npy": 3}
