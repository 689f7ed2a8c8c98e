"""Human quality annotations: rating CSV files read into mean opinion scores (MOS).

Two CSV formats are accepted (comma separated, a header row, UTF-8; column names are
case-insensitive and surrounding spaces are ignored; extra columns are ignored):

Per rating, one row per (image, rater)::

    image,rater,score
    ref000_noise_3.npy,alice,2
    ref000_noise_3.npy,bob,3

``score`` is an opinion on the five-level scale of the report's surveys (IV.1):
1 terrible, 2 bad, 3 average, 4 good, 5 excellent; non-integer scores within [1, 5] are
accepted. A rater who rated the same image twice counts twice.

Per image, as a survey summary::

    image,mos,std,n
    ref000_noise_3.npy,2.47,0.64,15

``mos`` in [1, 5], ``std`` the sample standard deviation of the ratings (N - 1
normalisation, >= 0), ``n`` the number of ratings (integer >= 1).

``image`` names the image as the dataset manifest's ``file`` column does (a path
relative to the dataset folder); matching also accepts the bare file name or its stem
when that is unambiguous (see :func:`match_images`).

The 95 % confidence interval of a MOS is ``mos +- t_{0.975, n-1} * std / sqrt(n)``
(Student's t), as in ITU-R BT.500; with a single rating it is undefined (``nan``).
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from pathlib import Path

from tomoqc.errors import InputError

__all__ = ["Mos", "read_annotations", "mos_from_ratings", "match_images", "SCORE_MIN", "SCORE_MAX"]

SCORE_MIN, SCORE_MAX = 1.0, 5.0


@dataclass(frozen=True)
class Mos:
    """Mean opinion score of one image with its spread and 95 % confidence interval."""

    image: str
    mos: float
    std: float
    n: int
    ci_low: float
    ci_high: float

    @property
    def ci_half_width(self) -> float:
        return (self.ci_high - self.ci_low) / 2.0


def _t975(dof: int) -> float:
    from scipy.stats import t

    return float(t.ppf(0.975, dof))


def _make(image: str, mos: float, std: float, n: int) -> Mos:
    if n >= 2:
        half = _t975(n - 1) * std / math.sqrt(n)
        return Mos(image, mos, std, n, mos - half, mos + half)
    return Mos(image, mos, std, n, math.nan, math.nan)


def mos_from_ratings(ratings: dict[str, list[float]]) -> dict[str, Mos]:
    """MOS, sample standard deviation and 95 % interval from ``{image: [scores...]}``."""
    out = {}
    for image, scores in ratings.items():
        n = len(scores)
        if n == 0:
            continue
        mean = sum(scores) / n
        std = math.sqrt(sum((s - mean) ** 2 for s in scores) / (n - 1)) if n > 1 else math.nan
        out[image] = _make(image, mean, std, n)
    return out


def _number(path, line, column, text, *, integer=False):
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise InputError(path, f"line {line}: {column} {text!r} is not a number") from None
    if not math.isfinite(value):
        raise InputError(path, f"line {line}: {column} {text!r} is not a finite number")
    if integer:
        if value != int(value):
            raise InputError(path, f"line {line}: {column} {text!r} is not a whole number")
        return int(value)
    return value


def read_annotations(path: str | os.PathLike) -> dict[str, Mos]:
    """Read a rating CSV (either format, see the module doc) into ``{image: Mos}``.

    Raises
    ------
    InputError
        Missing file, no header, missing columns, empty image name, a score or MOS outside
        [1, 5], a negative std, n < 1, or an image listed twice in the per-image format;
        the message names the file and the line.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(p, "annotation file not found")
    try:
        fh = open(p, newline="", encoding="utf-8-sig")
    except OSError as err:
        raise InputError(p, f"cannot read: {err.strerror or err}") from None
    with fh:
        reader = csv.reader(fh)
        try:
            header = next(reader)
        except StopIteration:
            raise InputError(p, "file is empty (expected a header row)") from None
        except csv.Error as err:
            raise InputError(p, f"line 1: not a CSV file ({err})") from None
        cols = {name.strip().lower(): i for i, name in enumerate(header)}
        per_rating = {"image", "rater", "score"}
        per_image = {"image", "mos", "std", "n"}
        if per_rating <= cols.keys():
            kind = "rating"
        elif per_image <= cols.keys():
            kind = "image"
        else:
            have = ", ".join(c for c in cols if c) or "none"
            want_r = sorted(per_rating - cols.keys())
            want_i = sorted(per_image - cols.keys())
            raise InputError(
                p,
                f"line 1: missing columns: need image,rater,score (missing {', '.join(want_r)}) "
                f"or image,mos,std,n (missing {', '.join(want_i)}); found {have}",
            )
        ratings: dict[str, list[float]] = {}
        summary: dict[str, Mos] = {}
        try:
            for row in reader:
                line = reader.line_num
                if not row or all(not c.strip() for c in row):
                    continue
                if len(row) < len(header):
                    raise InputError(p, f"line {line}: expected {len(header)} fields, got {len(row)}")
                image = row[cols["image"]].strip()
                if not image:
                    raise InputError(p, f"line {line}: empty image name")
                if kind == "rating":
                    score = _number(p, line, "score", row[cols["score"]].strip())
                    if not SCORE_MIN <= score <= SCORE_MAX:
                        raise InputError(p, f"line {line}: score {score:g} is outside 1-5")
                    ratings.setdefault(image, []).append(score)
                else:
                    mos = _number(p, line, "mos", row[cols["mos"]].strip())
                    std_text = row[cols["std"]].strip()
                    n = _number(p, line, "n", row[cols["n"]].strip(), integer=True)
                    std = math.nan if std_text.lower() in ("", "nan") and n == 1 else _number(p, line, "std", std_text)
                    if not SCORE_MIN <= mos <= SCORE_MAX:
                        raise InputError(p, f"line {line}: mos {mos:g} is outside 1-5")
                    if std < 0:
                        raise InputError(p, f"line {line}: std {std:g} is negative")
                    if n < 1:
                        raise InputError(p, f"line {line}: n {n} must be at least 1")
                    if image in summary:
                        raise InputError(p, f"line {line}: image {image!r} is listed twice")
                    summary[image] = _make(image, mos, std, n)
        except csv.Error as err:
            raise InputError(p, f"line {reader.line_num}: malformed CSV ({err})") from None
    result = mos_from_ratings(ratings) if kind == "rating" else summary
    if not result:
        raise InputError(p, "no ratings found")
    return result


def match_images(annotations: dict[str, Mos], files: list[str]) -> dict[str, Mos]:
    """Map dataset files (manifest ``file`` values) to their annotations.

    An annotation's ``image`` matches a file when it equals the file's relative path
    (``/`` or ``\\`` separators), else its base name, else its base name without suffix,
    provided that name identifies a single file.
    """
    def norm(s):
        s = s.strip().replace("\\", "/")
        while s.startswith("./"):
            s = s[2:]
        return s

    by_path = {norm(f): f for f in files}
    by_name: dict[str, list[str]] = {}
    by_stem: dict[str, list[str]] = {}
    for f in files:
        name = norm(f).rsplit("/", 1)[-1]
        by_name.setdefault(name, []).append(f)
        by_stem.setdefault(name.rsplit(".", 1)[0], []).append(f)
    out: dict[str, Mos] = {}
    for key, m in annotations.items():
        k = norm(key)
        if k in by_path:
            out[by_path[k]] = m
            continue
        name = k.rsplit("/", 1)[-1]
        if len(by_name.get(name, [])) == 1:
            out[by_name[name][0]] = m
            continue
        stem = name.rsplit(".", 1)[0]
        if len(by_stem.get(stem, [])) == 1:
            out[by_stem[stem][0]] = m
    return out
