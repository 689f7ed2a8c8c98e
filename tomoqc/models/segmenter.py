"""Segmentation of blocks of slices with a D-LinkNet: tiles, seamless blending, uncertainty.

:func:`load_segment_model` reads a D-LinkNet (:mod:`tomoqc.models.dlinknet`) and the JSON
model card beside it; :meth:`SegmentModel.segment_slices` labels a block of raw slices,
the unit of work of the ``segment`` job on the volume engine.

How a block is segmented
------------------------
1. Every slice is normalised on its own by :func:`tomoqc.preprocess.normalize_slice`
   (robust percentiles to [0, 1]; NaN and infinite pixels become 0), so the labels do not
   depend on the storage dtype or the intensity scale.
2. The slice is reflect-padded at its bottom and right edges to a multiple of 32
   (:func:`tomoqc.models.dlinknet.pad_to_multiple`), the network's downsampling factor;
   the padding is cut off the outputs at the end.
3. A padded side longer than ``tile`` is cut into tiles of ``tile`` pixels that overlap by
   at least ``overlap`` (:func:`tile_starts`); tile origins lie on the network's 32-pixel
   grid, so neighbouring tiles see the image with the same phase of downsampling. A side
   no longer than ``tile`` is one tile.
4. Tile predictions are blended with separable weights (:func:`blend_window`): 1 inside
   the tile and along every tile edge that lies on the slice border (so the border is
   never down-weighted), and along an edge inside the slice a raised-cosine ramp over
   ``overlap`` pixels whose outer quarter is 0 (the pixels nearest a cut, whose
   receptive field is truncated, are not used). The blended prediction is the weighted
   sum divided by the summed weights, so it varies smoothly across tile borders and,
   for a network whose receptive field reaches less than ``overlap // 4`` pixels, equals
   the prediction of the untiled slice.

Uncertainty
-----------
``uncertainty`` selects what the per-pixel uncertainty is made of (all in bits, see
:mod:`tomoqc.metrics.uncertainty`):

* ``"entropy"``: one deterministic pass; ``uncertainty`` is the entropy of the predicted
  class distribution.
* ``"mc"``: ``samples`` passes with Monte-Carlo dropout switched on
  (:func:`tomoqc.models.dlinknet.set_mc_dropout`; batch normalisation stays in inference
  mode), switched off again afterwards even when a pass fails.
* ``"tta"``: the 8 symmetries of the square (identity, three rotations by 90 degrees, and
  the four reflections: left-right flip followed by each rotation), each prediction
  mapped back to the slice before averaging. A non-square tile rotated by 90 degrees is
  simply a tile of transposed shape; the network is fully convolutional and both sides
  stay multiples of 32, so no square padding is needed.

For ``"mc"`` and ``"tta"``, ``probability`` is the mean over the samples,
``uncertainty`` the total entropy ``H(mean p)``, ``aleatoric`` the mean entropy of the
samples and ``epistemic`` their difference (the mutual information). Blending tiles is a
weighted average, as is the mean over samples, so the blended aleatoric part is the
weighted mean of the tiles' parts and the decomposition holds for the blended maps too.

Binary networks (one sigmoid channel) give ``probability`` with one channel, the
foreground probability ``q``, and labels ``q >= 0.5``; their entropy is that of
``(1 - q, q)``.

Thread safety: the Monte-Carlo switch is a state of the network, so one
:class:`SegmentModel` runs one block at a time (a lock); threads of a dask worker that
share a model take turns.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import threading
import zipfile
from pathlib import Path

import numpy as np

from tomoqc.errors import InputError, OptionError
from tomoqc.metrics.uncertainty import entropy_bits
from tomoqc.models.batching import pad_batch

__all__ = [
    "SegmentModel",
    "load_segment_model",
    "default_segment_weights",
    "card_path_for",
    "tile_starts",
    "blend_window",
    "blend_weights",
    "DIHEDRAL",
    "UNCERTAINTY_MODES",
    "BUNDLED",
]

#: The network's input sides must be multiples of this (five downsamplings by 2).
GRID = 32
#: What ``uncertainty`` may be.
UNCERTAINTY_MODES = ("entropy", "mc", "tta")
#: Bundled default weights by kind.
BUNDLED = {"phases": "dlinknet_phases.keras", "binary": "dlinknet_binary.keras"}
#: The 8 symmetries of the square used for test-time augmentation: (rotations by 90
#: degrees, left-right flip first).
DIHEDRAL = tuple((r, f) for f in (False, True) for r in range(4))

_WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
#: Probabilities may stray this far outside [0, 1] (float32 rounding) before a network's
#: output is taken for something else.
_PROB_SLACK = 1e-3


# --------------------------------------------------------------------------- files


def default_segment_weights(kind: str = "phases") -> Path:
    """Path of a bundled D-LinkNet.

    Parameters
    ----------
    kind : {"phases", "binary"}
        ``"phases"``: three electrode phases (0 pore, 1 carbon-binder, 2 active material);
        ``"binary"``: material against void.

    Returns
    -------
    Path
        ``tomoqc/models/weights/dlinknet_<kind>.keras`` (whether or not it is installed;
        :func:`load_segment_model` says when it is not).
    """
    if kind not in BUNDLED:
        raise OptionError(f"kind must be one of {', '.join(map(repr, BUNDLED))}, got {kind!r}")
    return _WEIGHTS_DIR / BUNDLED[kind]


def card_path_for(weights) -> Path:
    """The model card of a weights file: ``<name>.json`` beside ``<name>.keras``.

    ``<name>.keras.json`` is accepted too when only that one exists.
    """
    p = Path(weights)
    plain = p.with_suffix(".json")
    if plain.is_file():
        return plain
    appended = p.with_name(p.name + ".json")
    return appended if appended.is_file() else plain


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _class_count(value, where, source) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 1 <= int(value) <= 255:
        raise InputError(source, f"{where} must be an integer from 1 to 255, got {value!r}")
    return int(value)


def _class_names(names, n_classes: int, source) -> list[str]:
    """Names of every label value: 2 for a binary network, ``n_classes`` otherwise."""
    n_labels = 2 if n_classes == 1 else n_classes
    if names is None:
        if n_classes == 1:
            return ["background", "foreground"]
        return [f"class {i}" for i in range(n_labels)]
    if not isinstance(names, (list, tuple)) or not all(isinstance(s, str) for s in names):
        raise InputError(source, f"class_names must be a list of strings, got {names!r}")
    names = list(names)
    if n_classes == 1 and len(names) == 1:
        # a binary card may name only its foreground
        return ["background", names[0]]
    if len(names) != n_labels:
        raise InputError(
            source,
            f"class_names has {len(names)} names but the network gives {n_labels} label values "
            f"(n_classes {n_classes})",
        )
    return names


def _read_card(card_path: Path, weights: Path) -> dict:
    if not card_path.is_file():
        raise InputError(
            weights,
            f"no model card {card_path.name} beside the weights; a D-LinkNet needs a JSON card "
            'such as {"kind": "dlinknet", "n_classes": 3, "class_names": ["pore", "carbon-binder", '
            '"active material"]}',
        )
    try:
        with open(card_path, encoding="utf-8") as fh:
            card = json.load(fh)
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise InputError(card_path, f"cannot read the model card: {err}".splitlines()[0][:300]) from None
    if not isinstance(card, dict):
        raise InputError(card_path, "the model card is not a JSON object")
    if card.get("kind") != "dlinknet":
        raise InputError(card_path, f"not a D-LinkNet model card: kind is {card.get('kind')!r}, expected 'dlinknet'")
    if "n_classes" not in card:
        raise InputError(card_path, "the model card has no n_classes")
    # checked here, before the (slower) network is read
    n = _class_count(card["n_classes"], "n_classes of the model card", card_path)
    _class_names(card.get("class_names"), n, card_path)
    return card


# --------------------------------------------------------------------------- tiles


def tile_starts(length: int, tile: int, overlap: int, *, grid: int = GRID) -> tuple[np.ndarray, int]:
    """Origins of the tiles that cover one side of a (padded) slice.

    Parameters
    ----------
    length : int
        The side, a multiple of ``grid``.
    tile : int
        The largest tile side, a multiple of ``grid``.
    overlap : int
        Neighbouring tiles overlap by at least this many pixels; at most ``tile - grid``.
    grid : int
        Origins are multiples of it.

    Returns
    -------
    starts : ndarray of int64
        Increasing origins; the first is 0 and the last ``length - size``.
    size : int
        The tile side along this axis: ``min(tile, length)``.

    Examples
    --------
    >>> tile_starts(320, 128, 32)
    (array([  0,  96, 192]), 128)
    """
    if length <= tile:
        return np.zeros(1, np.int64), int(length)
    step_max = ((tile - overlap) // grid) * grid  # >= grid by the option check
    span_units = (length - tile) // grid
    n = math.ceil(span_units * grid / step_max) + 1
    units = np.rint(np.arange(n) * (span_units / (n - 1))).astype(np.int64)
    return np.unique(units) * grid, int(tile)


def blend_window(size: int, overlap: int, *, ramp_before: bool, ramp_after: bool) -> np.ndarray:
    """One-dimensional blending weights of a tile side.

    Parameters
    ----------
    size : int
        The tile side.
    overlap : int
        Length of the ramp at an edge inside the slice.
    ramp_before, ramp_after : bool
        Whether the edge at the start / end of the side lies inside the slice (another
        tile continues there). An edge on the slice border keeps weight 1.

    Returns
    -------
    ndarray of float64, shape (size,)
        1 in the middle; at an inner edge, 0 over the outermost ``overlap // 4`` pixels,
        then a raised cosine rising from near 0 to 1 over the rest of ``overlap``.
    """
    w = np.ones(size, np.float64)
    if overlap <= 0:
        return w
    margin = overlap // 4
    d = np.arange(size, dtype=np.float64)
    rise = overlap - margin
    ramp = np.where(d < margin, 0.0, 0.5 - 0.5 * np.cos(np.pi * np.clip(d - margin + 0.5, 0, rise) / rise))
    if ramp_before:
        w = np.minimum(w, ramp)
    if ramp_after:
        w = np.minimum(w, ramp[::-1])
    return w


def blend_weights(shape: tuple[int, int], tile: int, overlap: int):
    """The tiles of a padded slice and their blending weights.

    Parameters
    ----------
    shape : (int, int)
        The padded slice's shape (multiples of 32).
    tile, overlap : int
        As for :meth:`SegmentModel.segment_slices`.

    Returns
    -------
    tiles : list of (y0, x0)
        Tile origins.
    size : (int, int)
        The common tile shape.
    weights : dict
        ``(y0, x0)`` -> the 2-D weights of that tile (float32).
    total : ndarray of float32
        The summed weights over the slice (positive everywhere).
    """
    hp, wp = shape
    ys, th = tile_starts(hp, tile, overlap)
    xs, tw = tile_starts(wp, tile, overlap)
    wy = {int(y): blend_window(th, overlap, ramp_before=y > 0, ramp_after=y + th < hp) for y in ys}
    wx = {int(x): blend_window(tw, overlap, ramp_before=x > 0, ramp_after=x + tw < wp) for x in xs}
    total = np.zeros((hp, wp), np.float64)
    weights = {}
    for y in wy:
        for x in wx:
            w2 = np.outer(wy[y], wx[x])
            weights[(y, x)] = w2.astype(np.float32)
            total[y : y + th, x : x + tw] += w2
    if not (total > 0).all():  # guaranteed by tile_starts and blend_window; checked anyway
        raise RuntimeError(f"tiles of {tile} px with overlap {overlap} leave pixels of a {hp} x {wp} slice uncovered")
    return [(y, x) for y in wy for x in wx], (th, tw), weights, total.astype(np.float32)


def _dihedral(x: np.ndarray, rot: int, flip: bool) -> np.ndarray:
    """Apply a symmetry of the square to the spatial axes (1, 2) of a batch."""
    if flip:
        x = x[:, :, ::-1]
    return np.rot90(x, rot, axes=(1, 2))


def _dihedral_inverse(y: np.ndarray, rot: int, flip: bool) -> np.ndarray:
    """Undo :func:`_dihedral` on a prediction (spatial axes 1, 2)."""
    y = np.rot90(y, -rot, axes=(1, 2))
    if flip:
        y = y[:, :, ::-1]
    return y


# --------------------------------------------------------------------------- model


class SegmentModel:
    """A D-LinkNet ready to segment blocks of slices.

    Parameters
    ----------
    keras_model : keras.Model
        Maps ``(B, H, W, 1)`` float32 in [0, 1] (H, W multiples of 32) to probabilities
        ``(B, H, W, K)``: one sigmoid channel (binary) or a softmax over ``K >= 2``
        classes (see :func:`tomoqc.models.dlinknet.build_dlinknet`).
    card : dict, optional
        The model card; ``n_classes`` and ``class_names`` are read from it. Without one
        they follow the network's output.
    path : path, optional
        The weights file the network came from.

    Attributes
    ----------
    model : keras.Model
    n_classes : int
        As in the card and :func:`~tomoqc.models.dlinknet.build_dlinknet`: 1 for a binary
        network, else the number of classes.
    binary : bool
        ``n_classes == 1``.
    n_channels : int
        Channels of ``probability``: 1 (foreground) for a binary network, else
        ``n_classes``.
    class_names : list of str
        The name of every label value (two for a binary network: background first).
    card : dict
    path : Path or None
    sha256 : str or None
        Of the weights file.
    model_id : str
        The card's ``model_id``, else ``<file stem>-<first 12 hex of sha256>``.
    """

    def __init__(self, keras_model, *, card: dict | None = None, path=None):
        self.model = keras_model
        self.path = None if path is None else Path(path)
        self.sha256 = _file_sha256(self.path) if self.path is not None and self.path.is_file() else None
        self.card = dict(card or {})
        source = self.path
        channels = _output_channels(keras_model, source)
        if "n_classes" in self.card:
            n = _class_count(self.card["n_classes"], "n_classes of the model card", source)
        else:
            n = channels
        if max(1, n) != channels:
            raise InputError(
                source, f"the model card says n_classes {n} but the network gives {channels} output channels"
            )
        self.n_classes = n
        self.binary = n == 1
        self.n_channels = channels
        self.class_names = _class_names(self.card.get("class_names"), n, source)
        model_id = self.card.get("model_id")
        if not isinstance(model_id, str) or not model_id:
            stem = self.path.stem if self.path is not None else getattr(keras_model, "name", "dlinknet")
            model_id = f"{stem}-{self.sha256[:12]}" if self.sha256 else stem
        self.model_id = model_id
        self._fn = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        where = str(self.path) if self.path is not None else None
        return f"SegmentModel(model_id={self.model_id!r}, n_classes={self.n_classes}, path={where!r})"

    # -- network calls -----------------------------------------------------------------
    def _predict_fn(self):
        """The network call in inference mode, compiled once per model and traced once
        per tile shape (static shapes: a block has one tile shape, and its transpose for
        TTA). The Monte-Carlo switch is a variable read inside the graph, so one function
        serves every mode."""
        if self._fn is None:
            import tensorflow as tf

            model = self.model

            @tf.function
            def fn(x):
                out = model(x, training=False)
                if isinstance(out, dict):
                    out = out["probability"]
                return out

            self._fn = fn
        return self._fn

    def _predict(self, x: np.ndarray, batch_size: int) -> np.ndarray:
        """Probabilities ``(b, h, w, K)`` of tiles ``x`` ``(b, h, w)``; a short batch is padded
        (:func:`tomoqc.models.batching.pad_batch`) so that few shapes are traced."""
        b = x.shape[0]
        out = np.asarray(self._predict_fn()(pad_batch(x, batch_size)[..., None]), np.float32)[:b]
        lo, hi = (float(out.min()), float(out.max())) if out.size else (0.0, 1.0)
        if not (np.isfinite(lo) and np.isfinite(hi) and lo >= -_PROB_SLACK and hi <= 1 + _PROB_SLACK):
            raise InputError(
                self.path, f"the network's output is not probabilities (values from {lo:.4g} to {hi:.4g})"
            )
        if not self.binary:
            s = out.sum(axis=-1)
            if s.size and float(np.abs(s - 1).max()) > 1e-2:
                raise InputError(self.path, "the network's output channels do not sum to 1 (not a softmax)")
        return np.clip(out, 0.0, 1.0)

    def _sampled(self, x: np.ndarray, mode: str, samples: int, batch_size: int):
        """Mean probabilities ``(b, h, w, K)`` of tiles and, unless ``mode`` is
        ``"entropy"``, the mean entropy of the samples ``(b, h, w)``."""
        if mode == "entropy":
            return self._predict(x, batch_size), None
        mean = None
        ent = None
        if mode == "tta":
            views = [(lambda t, r=r, f=f: _dihedral(t, r, f), lambda t, r=r, f=f: _dihedral_inverse(t, r, f))
                     for r, f in DIHEDRAL]
        else:
            views = [(lambda t: t, lambda t: t)] * samples
        for forward, back in views:
            p = back(self._predict(np.ascontiguousarray(forward(x)), batch_size))
            h = entropy_bits(p, axis=-1, binary=self.binary)
            mean = p.astype(np.float64) if mean is None else mean + p
            ent = h.astype(np.float64) if ent is None else ent + h
        k = len(views)
        return (mean / k).astype(np.float32), (ent / k).astype(np.float32)

    # -- the public call ---------------------------------------------------------------
    def segment_slices(
        self,
        block,
        *,
        tile: int = 512,
        overlap: int = 64,
        uncertainty: str = "entropy",
        samples: int = 8,
        batch_size: int = 4,
        source=None,
    ) -> dict:
        """Label a block of slices, with probabilities and per-pixel uncertainty.

        Parameters
        ----------
        block : array_like, shape (n, H, W)
            Raw slices of any real dtype and intensity scale (NaN and infinite values
            allowed; they count as 0 after normalisation). Any H, W >= 1.
        tile : int
            Largest tile side in pixels, a multiple of 32 (see the module notes).
        overlap : int
            Least overlap of neighbouring tiles, from 0 to ``tile - 32``.
        uncertainty : {"entropy", "mc", "tta"}
            One pass; ``samples`` Monte-Carlo dropout passes; the 8 symmetries of the
            square.
        samples : int
            Passes for ``"mc"`` (at least 2); ignored otherwise.
        batch_size : int
            Tiles per network call.
        source : path, optional
            The file the block came from, named in errors about the block.

        Returns
        -------
        dict of ndarray
            ``label`` (n, H, W) uint8: the most probable class (binary: ``q >= 0.5``);
            ``probability`` (n, C', H, W) float32: every class, or for a binary network
            (C' = 1) the foreground probability; ``uncertainty`` (n, H, W) float32: the
            entropy of the (mean) prediction in bits; with ``"mc"`` or ``"tta"`` also
            ``aleatoric`` and ``epistemic`` (n, H, W) float32 in bits.

        Raises
        ------
        InputError
            The block is not a stack of real-valued slices.
        OptionError
            A bad option, or ``"mc"`` for a network without Monte-Carlo dropout layers.
        """
        tile, overlap, samples, batch_size = _check_options(tile, overlap, uncertainty, samples, batch_size)
        arr = _check_block(block, source)
        n, h, w = arr.shape
        sampled = uncertainty != "entropy"
        if n == 0:
            out = {
                "label": np.zeros((0, h, w), np.uint8),
                "probability": np.zeros((0, self.n_channels, h, w), np.float32),
                "uncertainty": np.zeros((0, h, w), np.float32),
            }
            if sampled:
                out["aleatoric"] = np.zeros((0, h, w), np.float32)
                out["epistemic"] = np.zeros((0, h, w), np.float32)
            return out

        from tomoqc.models.dlinknet import pad_to_multiple, set_mc_dropout
        from tomoqc.preprocess import normalize_slice

        if uncertainty == "mc":
            from tomoqc.models.dlinknet import mc_dropout_layers

            if not any(float(getattr(layer, "rate", 0.0)) > 0 for layer in mc_dropout_layers(self.model)):
                raise OptionError(
                    f"model {self.model_id!r} has no Monte-Carlo dropout (it was built with dropout=0); "
                    "use uncertainty 'entropy' or 'tta'"
                )

        norm = np.stack([normalize_slice(s) for s in arr])
        padded, _ = pad_to_multiple(norm, GRID, axes=(1, 2))
        hp, wp = padded.shape[1:]
        tiles, (th, tw), weights, total = blend_weights((hp, wp), tile, overlap)
        prob = np.zeros((n, hp, wp, self.n_channels), np.float32)
        ale = np.zeros((n, hp, wp), np.float32) if sampled else None
        jobs = [(i, y, x) for i in range(n) for (y, x) in tiles]

        with self._lock:
            if uncertainty == "mc":
                set_mc_dropout(self.model, True)
            try:
                for start in range(0, len(jobs), batch_size):
                    part = jobs[start : start + batch_size]
                    x_tiles = np.stack([padded[i, y : y + th, x : x + tw] for i, y, x in part])
                    mean, ent = self._sampled(x_tiles, uncertainty, samples, batch_size)
                    for k, (i, y, x) in enumerate(part):
                        w2 = weights[(y, x)]
                        prob[i, y : y + th, x : x + tw] += mean[k] * w2[..., None]
                        if sampled:
                            ale[i, y : y + th, x : x + tw] += ent[k] * w2
            finally:
                if uncertainty == "mc":
                    set_mc_dropout(self.model, False)

        prob /= total[None, :, :, None]
        prob = np.ascontiguousarray(np.moveaxis(prob[:, :h, :w], -1, 1))  # (n, C', h, w)
        np.clip(prob, 0.0, 1.0, out=prob)
        if self.binary:
            label = (prob[:, 0] >= 0.5).astype(np.uint8)
        else:
            label = prob.argmax(axis=1).astype(np.uint8)
        total_entropy = entropy_bits(prob, axis=1, binary=self.binary).astype(np.float32)
        out = {"label": label, "probability": prob, "uncertainty": total_entropy}
        if sampled:
            aleatoric = (ale[:, :h, :w] / total[None, :h, :w]).astype(np.float32)
            aleatoric = np.minimum(aleatoric, total_entropy)  # rounding only: entropy is concave
            out["aleatoric"] = aleatoric
            out["epistemic"] = np.maximum(total_entropy - aleatoric, 0).astype(np.float32)
        return out


def _output_channels(keras_model, source) -> int:
    out = keras_model.output
    if isinstance(out, dict):
        out = out.get("probability")
    shape = getattr(out, "shape", None)
    if shape is None or len(shape) != 4 or shape[-1] is None:
        raise InputError(source, f"a segmentation network must output (batch, H, W, classes), got shape {shape}")
    return int(shape[-1])


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise OptionError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _check_options(tile, overlap, uncertainty, samples, batch_size):
    tile = _positive_int(tile, "tile")
    if tile % GRID:
        raise OptionError(f"tile must be a multiple of {GRID}, got {tile}")
    if isinstance(overlap, bool) or not isinstance(overlap, (int, np.integer)) or not 0 <= overlap <= tile - GRID:
        raise OptionError(f"overlap must be an integer from 0 to tile - {GRID} = {tile - GRID}, got {overlap!r}")
    if uncertainty not in UNCERTAINTY_MODES:
        raise OptionError(f"uncertainty must be one of {', '.join(UNCERTAINTY_MODES)}, got {uncertainty!r}")
    samples = _positive_int(samples, "samples")
    if uncertainty == "mc" and samples < 2:
        raise OptionError(f"Monte-Carlo dropout needs at least 2 samples, got {samples}")
    return tile, int(overlap), samples, _positive_int(batch_size, "batch_size")


def _check_block(block, source) -> np.ndarray:
    arr = np.asarray(block)
    if arr.ndim != 3:
        raise InputError(source, f"expected a block of slices of shape (n, H, W), got an array of shape {arr.shape}")
    if np.iscomplexobj(arr) or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise InputError(source, f"expected real-valued slices, got dtype {arr.dtype}")
    if arr.shape[1] < 1 or arr.shape[2] < 1:
        raise InputError(source, f"slices are empty (block of shape {arr.shape})")
    return arr


# --------------------------------------------------------------------------- loading


def load_segment_model(path=None, *, kind: str = "phases") -> SegmentModel:
    """Load a D-LinkNet and its model card.

    Parameters
    ----------
    path : path, optional
        A ``.keras`` weights file with its JSON card beside it (``<name>.json``, at least
        ``{"kind": "dlinknet", "n_classes": ...}``; ``class_names`` optional). None loads
        the bundled default of ``kind``.
    kind : {"phases", "binary"}
        Which bundled default, when ``path`` is None.

    Returns
    -------
    SegmentModel
        A new one on every call: this function caches nothing.

    Raises
    ------
    InputError
        The file is missing, is not a Keras archive, has no D-LinkNet card, or holds a
        network that does not match its card.
    """
    p = default_segment_weights(kind) if path is None else Path(path)
    if not p.exists():
        hint = " (the bundled default segmentation model is not installed)" if path is None else ""
        raise InputError(p, f"segmentation weights file not found{hint}")
    if p.is_dir():
        raise InputError(p, "expected a .keras weights file, got a folder")
    if not zipfile.is_zipfile(p):
        raise InputError(p, "not a Keras model file (.keras archive); the file is corrupt or of another type")
    card = _read_card(card_path_for(p), p)
    import keras

    from tomoqc.models.dlinknet import MonteCarloDropout

    try:
        km = keras.saving.load_model(
            os.fspath(p), compile=False, custom_objects={"MonteCarloDropout": MonteCarloDropout}
        )
    except Exception as err:  # a broken archive raises many different types
        raise InputError(p, f"cannot load the network: {type(err).__name__}: {err}".splitlines()[0][:300]) from None
    shape = getattr(km.inputs[0], "shape", None) if getattr(km, "inputs", None) else None
    if shape is None or len(shape) != 4 or shape[-1] != 1:
        raise InputError(p, f"not a D-LinkNet: expected one gray input (batch, H, W, 1), got {shape}")
    try:
        return SegmentModel(km, card=card, path=p)
    except InputError as err:
        raise InputError(p, err.problem) from None
