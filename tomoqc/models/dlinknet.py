"""D-LinkNet: the segmentation network of tomoqc (Keras 3).

D-LinkNet [1]_ is LinkNet [2]_ with a ResNet34 encoder [3]_ and a centre of dilated
convolutions in series whose receptive fields reach across the whole downsampled image.
It labels every pixel of a tomography slice: a binary head (one sigmoid channel, the
probability of material against pore or background) or a multi-phase head (softmax over
the classes; for electrodes 0 pore, 1 carbon-binder domain, 2 active material, the labels
of :mod:`tomoqc.phantom`).

The network takes gray slices normalised to [0, 1] by
:func:`tomoqc.preprocess.normalize_slice`, shape ``(batch, H, W, 1)``. It downsamples five
times by two, so H and W must be multiples of :data:`MULTIPLE` (32);
:func:`pad_to_multiple` and :func:`crop_back` (or :func:`predict_any_size`, which does
both) let any slice size through: the slice is reflect-padded at its bottom and right
edges, predicted, and the padding cut off again.

Monte-Carlo dropout [4]_: built with ``dropout > 0``, every decoder block starts with a
:class:`MonteCarloDropout` layer, a spatial (channel-wise) dropout that drops during
training as usual and, after :func:`set_mc_dropout` ``(model, True)``, also at inference.
The switch is a non-trainable variable read inside the graph, so it takes effect for
``model(x, training=False)`` and ``model.predict`` alike, including functions that Keras
traced before the switch. Batch normalisation stays in inference mode throughout; only the
dropout masks change between calls. The switch is a run-time setting: it is not saved, a
loaded model starts with it off.

Saving: the custom layer is registered with Keras (package ``"tomoqc"``), so
``keras.models.load_model(path)`` reads a saved D-LinkNet without ``custom_objects`` once
this module has been imported (``import tomoqc.models.dlinknet``).

Notes
-----
Differences from the authors' PyTorch code, all deliberate:

* Convolutions followed by batch normalisation have no bias (the normalisation's offset
  makes it redundant); the paper's decoder convolutions carry one. The dilated centre and
  the final convolutions, which have no normalisation, keep their biases.
* Batch normalisation uses momentum 0.9 and epsilon 1e-5 (PyTorch's defaults), not
  Keras' 0.99 / 1e-3, so that short training runs get usable moving statistics.
* The encoder is trained from scratch on one input channel: no ImageNet weights are
  downloaded at run time. ``width`` scales every channel count (``round(c * width)``,
  at least 4) so that a narrower network can be trained on a CPU; ``width=1`` is the
  paper's D-LinkNet34, about 31 million parameters for one class.

References
----------
.. [1] L. Zhou, C. Zhang and M. Wu, "D-LinkNet: LinkNet with pretrained encoder and
   dilated convolution for high resolution satellite imagery road extraction", CVPR
   Workshops 2018, doi:10.1109/CVPRW.2018.00034.
.. [2] A. Chaurasia and E. Culurciello, "LinkNet: Exploiting encoder representations for
   efficient semantic segmentation", VCIP 2017, doi:10.1109/VCIP.2017.8305148.
.. [3] K. He, X. Zhang, S. Ren and J. Sun, "Deep residual learning for image
   recognition", CVPR 2016, doi:10.1109/CVPR.2016.90.
.. [4] Y. Gal and Z. Ghahramani, "Dropout as a Bayesian approximation: representing model
   uncertainty in deep learning", ICML 2016, arXiv:1506.02142.
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import layers, ops

from tomoqc.errors import OptionError

__all__ = [
    "MULTIPLE",
    "RESNET34_BLOCKS",
    "ENCODER_CHANNELS",
    "MonteCarloDropout",
    "build_dlinknet",
    "scaled_channels",
    "set_mc_dropout",
    "mc_dropout_layers",
    "pad_to_multiple",
    "crop_back",
    "predict_any_size",
]

#: H and W of the network's input must be multiples of this (five downsamplings by 2).
MULTIPLE = 32
#: Basic blocks per encoder stage of ResNet34.
RESNET34_BLOCKS = (3, 4, 6, 3)
#: Output channels of the four encoder stages at ``width=1``.
ENCODER_CHANNELS = (64, 128, 256, 512)
#: Dilation rates of the centre's convolutions, applied in series.
CENTRE_DILATIONS = (1, 2, 4, 8)

_BN = {"momentum": 0.9, "epsilon": 1e-5}


# --------------------------------------------------------------------------- MC dropout


@keras.saving.register_keras_serializable(package="tomoqc")
class MonteCarloDropout(layers.SpatialDropout2D):
    """Spatial dropout that can stay on at inference (Monte-Carlo dropout).

    During training (``training=True``) it drops whole feature maps like
    :class:`keras.layers.SpatialDropout2D`. At inference it passes its input through
    unchanged unless switched on with :func:`set_mc_dropout`; then every call draws new
    masks, so repeated predictions of one input sample the model's predictive
    distribution.

    The switch is the non-trainable scalar variable ``mc_active`` (1.0 on, 0.0 off). It is
    read inside the computation graph, so a ``tf.function`` traced while it was off (the
    ``predict`` function of a model, for instance) follows a later switch. It is not
    written to saved models.
    """

    def build(self, input_shape):
        super().build(input_shape)
        self.mc_active = self.add_weight(
            shape=(),
            initializer="zeros",
            trainable=False,
            dtype="float32",
            name="mc_active",
        )

    def _drop(self, inputs):
        return layers.SpatialDropout2D.call(self, inputs, training=True)

    def call(self, inputs, training=None):
        if training is True:
            return self._drop(inputs)
        return ops.cond(
            ops.greater(self.mc_active, 0.5),
            lambda: self._drop(inputs),
            lambda: inputs,
        )

    # The switch is a run-time setting, not a weight: keep it out of saved files.
    def save_own_variables(self, store):
        return None

    def load_own_variables(self, store):
        return None


def mc_dropout_layers(model) -> list[MonteCarloDropout]:
    """All :class:`MonteCarloDropout` layers of ``model``, nested models included."""
    found = []
    stack = [model]
    seen = set()
    while stack:
        m = stack.pop()
        for layer in getattr(m, "layers", []):
            if id(layer) in seen:
                continue
            seen.add(id(layer))
            if isinstance(layer, MonteCarloDropout):
                found.append(layer)
            elif hasattr(layer, "layers"):
                stack.append(layer)
    return found


def set_mc_dropout(model, on: bool) -> int:
    """Switch Monte-Carlo dropout on or off at inference.

    Parameters
    ----------
    model : keras.Model
        A network built by :func:`build_dlinknet` (or any model holding
        :class:`MonteCarloDropout` layers).
    on : bool
        True: the dropout layers draw new masks on every inference call
        (``model(x, training=False)``, ``model.predict``). False: they pass their input
        through and predictions are deterministic.

    Returns
    -------
    int
        The number of dropout layers switched.

    Raises
    ------
    OptionError
        When ``on`` is True and the model has no Monte-Carlo dropout layer (it was built
        with ``dropout=0``): uncertainty by MC dropout is impossible with it.
    """
    found = mc_dropout_layers(model)
    if on and not found:
        raise OptionError(
            f"model {getattr(model, 'name', '?')!r} has no Monte-Carlo dropout layers "
            "(it was built with dropout=0); use entropy or TTA uncertainty, or train "
            "a model with --dropout > 0"
        )
    for layer in found:
        if not layer.built:
            continue
        layer.mc_active.assign(1.0 if on else 0.0)
    return len(found)


# --------------------------------------------------------------------------- network


def scaled_channels(c: int, width: float) -> int:
    """Channel count ``c`` scaled by ``width``: ``round(c * width)``, at least 4."""
    return max(4, int(math.floor(c * width + 0.5)))


def _conv_bn_relu(x, filters, kernel, *, strides=1, name):
    x = layers.Conv2D(
        filters,
        kernel,
        strides=strides,
        padding="same",
        use_bias=False,
        kernel_initializer="he_normal",
        name=f"{name}_conv",
    )(x)
    x = layers.BatchNormalization(**_BN, name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def _basic_block(x, filters, *, strides, name):
    """ResNet basic block: two 3x3 conv + BN, identity or projection shortcut, ReLU."""
    shortcut = x
    y = _conv_bn_relu(x, filters, 3, strides=strides, name=f"{name}_1")
    y = layers.Conv2D(
        filters, 3, padding="same", use_bias=False, kernel_initializer="he_normal",
        name=f"{name}_2_conv",
    )(y)
    y = layers.BatchNormalization(**_BN, name=f"{name}_2_bn")(y)
    if strides != 1 or x.shape[-1] != filters:
        shortcut = layers.Conv2D(
            filters, 1, strides=strides, use_bias=False, kernel_initializer="he_normal",
            name=f"{name}_proj_conv",
        )(x)
        shortcut = layers.BatchNormalization(**_BN, name=f"{name}_proj_bn")(shortcut)
    y = layers.Add(name=f"{name}_add")([shortcut, y])
    return layers.ReLU(name=f"{name}_out")(y)


def _dilated_centre(x, *, name="centre"):
    """Dilated convolutions in series; the output adds the input and every stage."""
    filters = x.shape[-1]
    stages = [x]
    y = x
    for d in CENTRE_DILATIONS:
        y = layers.Conv2D(
            filters, 3, padding="same", dilation_rate=d, kernel_initializer="he_normal",
            name=f"{name}_dil{d}_conv",
        )(y)
        y = layers.ReLU(name=f"{name}_dil{d}_relu")(y)
        stages.append(y)
    return layers.Add(name=f"{name}_sum")(stages)


def _decoder_block(x, out_filters, *, dropout, seed, name):
    """LinkNet decoder block: 1x1 to in/4, 3x3 transposed conv x2 up, 1x1 to out."""
    in_filters = x.shape[-1]
    mid = max(4, in_filters // 4)
    if dropout > 0:
        x = MonteCarloDropout(dropout, seed=seed, name=f"{name}_mc_dropout")(x)
    x = _conv_bn_relu(x, mid, 1, name=f"{name}_reduce")
    x = layers.Conv2DTranspose(
        mid, 3, strides=2, padding="same", use_bias=False, kernel_initializer="he_normal",
        name=f"{name}_up_deconv",
    )(x)
    x = layers.BatchNormalization(**_BN, name=f"{name}_up_bn")(x)
    x = layers.ReLU(name=f"{name}_up_relu")(x)
    return _conv_bn_relu(x, out_filters, 1, name=f"{name}_expand")


def build_dlinknet(
    n_classes: int = 1,
    *,
    width: float = 1.0,
    dropout: float = 0.0,
    seed: int | None = None,
    full_res: bool = False,
    name: str = "dlinknet",
) -> keras.Model:
    """Build a D-LinkNet34 segmentation network.

    Parameters
    ----------
    n_classes : int
        1: binary head, one sigmoid channel (probability of the foreground class).
        2 or more: multi-phase head, a softmax over ``n_classes`` channels.
    width : float
        Multiplies every channel count (``round(c * width)``, at least 4). 1.0 is the
        paper's network; 0.25 trains on a CPU.
    dropout : float
        Rate of the :class:`MonteCarloDropout` layer at the start of each of the four
        decoder blocks; 0 builds none (no MC-dropout uncertainty possible).
    seed : int, optional
        Seed of the dropout masks' random generators (weights are initialised from Keras'
        global seed, :func:`keras.utils.set_random_seed`).
    full_res : bool
        Add a full-resolution skip (not in the paper): two 3x3 conv + BN + ReLU layers of
        ``round(64 * width)`` channels on the input image at stride 1, concatenated with
        the image itself and the output of the final transposed convolution before the
        last two convolutions. D-LinkNet's finest encoder features are at 1/4 of the
        input's resolution (stride-2 stem, then a stride-2 pool), so without it the
        head can only interpolate boundaries: thin phases (a carbon-binder film a few
        pixels wide) are lost. False builds the paper's network.
    name : str
        Name of the model.

    Returns
    -------
    keras.Model
        Input ``"image"`` of shape ``(None, None, 1)`` float32 (H and W multiples of
        :data:`MULTIPLE`); output ``"probability"`` of shape ``(batch, H, W, max(1,
        n_classes))`` float32: sigmoid probabilities for one class, softmax
        probabilities (summing to 1 over the last axis) otherwise.

    Notes
    -----
    Architecture (channels at ``width=1``): stem 7x7 conv stride 2 (64) + BN + ReLU, 3x3
    max pool stride 2; ResNet34 basic blocks 3-4-6-3 with 64/128/256/512 channels, the
    first block of stages 2-4 with stride 2 and a 1x1 conv stride 2 + BN projection
    shortcut; centre: 3x3 convs (512, with bias) of dilation 1, 2, 4, 8 in series, each
    followed by ReLU, output ``x + d1 + d2 + d3 + d4``; four decoder blocks (1x1 conv to
    in/4 + BN + ReLU, 3x3 transposed conv stride 2 + BN + ReLU, 1x1 conv to the skip's
    channels + BN + ReLU) whose outputs are added to encoder stages 3, 2, 1 (the last
    block, to 64 channels, has no skip); a 4x4 transposed conv stride 2 (32, with bias) +
    ReLU, a 3x3 conv (32, with bias) + ReLU and a 3x3 conv (``n_classes``, with bias),
    then the activation. With ``full_res`` the 3x3 conv after the transposed conv reads
    ``32 + 64 + 1`` channels (the full-resolution branch and the image joined to it).
    """
    if isinstance(n_classes, bool) or not isinstance(n_classes, (int, np.integer)) or n_classes < 1:
        raise OptionError(f"n_classes must be an integer >= 1, got {n_classes!r}")
    width = float(width)
    if not (math.isfinite(width) and width > 0):
        raise OptionError(f"width must be a positive number, got {width!r}")
    dropout = float(dropout)
    if not (0.0 <= dropout < 1.0):
        raise OptionError(f"dropout must be in [0, 1), got {dropout!r}")

    ch = [scaled_channels(c, width) for c in ENCODER_CHANNELS]
    inp = keras.Input(shape=(None, None, 1), dtype="float32", name="image")

    # encoder: ResNet34
    x = _conv_bn_relu(inp, ch[0], 7, strides=2, name="stem")
    x = layers.MaxPooling2D(3, strides=2, padding="same", name="stem_pool")(x)
    skips = []
    for stage, (n_blocks, filters) in enumerate(zip(RESNET34_BLOCKS, ch), start=1):
        for b in range(n_blocks):
            strides = 2 if (stage > 1 and b == 0) else 1
            x = _basic_block(x, filters, strides=strides, name=f"enc{stage}_block{b}")
        skips.append(x)

    # centre
    x = _dilated_centre(x)

    # decoder: stages 4 -> 1, each output added to the encoder stage below it
    targets = [ch[2], ch[1], ch[0], ch[0]]
    for i, out_filters in enumerate(targets):
        level = 4 - i
        block_seed = None if seed is None else int(seed) + i
        x = _decoder_block(x, out_filters, dropout=dropout, seed=block_seed, name=f"dec{level}")
        if level > 1:
            x = layers.Add(name=f"dec{level}_skip")([x, skips[level - 2]])

    # head
    head = scaled_channels(32, width)
    x = layers.Conv2DTranspose(
        head, 4, strides=2, padding="same", kernel_initializer="he_normal", name="final_deconv"
    )(x)
    x = layers.ReLU(name="final_deconv_relu")(x)
    if full_res:
        fine_ch = scaled_channels(64, width)
        f = _conv_bn_relu(inp, fine_ch, 3, name="fullres_1")
        f = _conv_bn_relu(f, fine_ch, 3, name="fullres_2")
        x = layers.Concatenate(name="fullres_join")([x, f, inp])
    x = layers.Conv2D(head, 3, padding="same", kernel_initializer="he_normal", name="final_conv")(x)
    x = layers.ReLU(name="final_conv_relu")(x)
    n_out = int(n_classes)
    x = layers.Conv2D(n_out, 3, padding="same", name="logits")(x)
    act = "sigmoid" if n_out == 1 else "softmax"
    out = layers.Activation(act, dtype="float32", name="probability")(x)
    return keras.Model(inp, out, name=name)


# --------------------------------------------------------------------------- any size


def _spatial_axes(ndim: int, axes) -> tuple[int, int]:
    if axes is not None:
        ay, ax = (int(a) % ndim for a in axes)
        return ay, ax
    if ndim == 2:
        return 0, 1
    if ndim >= 3:
        return ndim - 3, ndim - 2
    raise OptionError(f"an image needs at least 2 dimensions, got shape with {ndim}")


def pad_to_multiple(img, m: int = MULTIPLE, *, axes=None):
    """Reflect-pad an image at its bottom and right edges to a multiple of ``m``.

    Parameters
    ----------
    img : array_like
        ``(H, W)``, or channels-last ``(..., H, W, C)`` such as ``(H, W, 1)`` or
        ``(B, H, W, 1)``.
    m : int
        The multiple (32 for D-LinkNet).
    axes : pair of int, optional
        The two spatial axes, when the layout is neither of the above.

    Returns
    -------
    padded : ndarray
        The image with ``pad_y`` rows and ``pad_x`` columns mirrored onto its bottom and
        right edges (mirror without repeating the edge pixel, ``numpy.pad`` mode
        ``"reflect"``; images smaller than the padding are mirrored repeatedly).
    (pad_y, pad_x) : tuple of int
        What was added, for :func:`crop_back`.
    """
    arr = np.asarray(img)
    m = int(m)
    if m < 1:
        raise OptionError(f"the multiple must be >= 1, got {m}")
    ay, ax = _spatial_axes(arr.ndim, axes)
    h, w = arr.shape[ay], arr.shape[ax]
    if h < 1 or w < 1:
        raise OptionError(f"cannot pad an empty image of shape {arr.shape}")
    pad_y, pad_x = (-h) % m, (-w) % m
    if pad_y == 0 and pad_x == 0:
        return arr, (0, 0)
    widths = [(0, 0)] * arr.ndim
    widths[ay] = (0, pad_y)
    widths[ax] = (0, pad_x)
    # a single row or column cannot be mirrored: repeat it instead
    mode = "reflect" if min(h, w) > 1 else "edge"
    return np.pad(arr, widths, mode=mode), (pad_y, pad_x)


def crop_back(out, pads, *, axes=None):
    """Cut the padding of :func:`pad_to_multiple` off a prediction.

    Parameters
    ----------
    out : array_like
        A prediction on the padded image, in the same layout as the padded input (the
        channel axis may differ in length).
    pads : tuple of int
        ``(pad_y, pad_x)`` returned by :func:`pad_to_multiple`.
    axes : pair of int, optional
        The two spatial axes, as given to :func:`pad_to_multiple`.
    """
    arr = np.asarray(out)
    ay, ax = _spatial_axes(arr.ndim, axes)
    pad_y, pad_x = (int(p) for p in pads)
    index = [slice(None)] * arr.ndim
    index[ay] = slice(0, arr.shape[ay] - pad_y)
    index[ax] = slice(0, arr.shape[ax] - pad_x)
    return arr[tuple(index)]


def predict_any_size(model, images, *, batch_size: int = 8) -> np.ndarray:
    """Run a D-LinkNet on slices of any size (reflect-pad, predict, crop back).

    Parameters
    ----------
    model : keras.Model
        From :func:`build_dlinknet` or a saved one.
    images : array_like
        One slice ``(H, W)`` or ``(H, W, 1)``, or a channels-last batch
        ``(B, H, W, 1)``, normalised to [0, 1].
    batch_size : int
        Slices per network call.

    Returns
    -------
    ndarray of float32
        Probabilities ``(H, W, K)`` for one slice, ``(B, H, W, K)`` for a batch, with
        ``K = max(1, n_classes)``. Inference mode (``training=False``): deterministic
        unless Monte-Carlo dropout was switched on with :func:`set_mc_dropout`.
    """
    arr = np.asarray(images, dtype="float32")
    single = arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] == 1)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim == 3:
        if arr.shape[-1] != 1:
            raise OptionError(
                f"expected one slice (H, W) or (H, W, 1) or a batch (B, H, W, 1), got shape {arr.shape}"
            )
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] != 1:
        raise OptionError(f"expected a batch of shape (B, H, W, 1), got shape {arr.shape}")
    padded, pads = pad_to_multiple(arr, MULTIPLE)
    bs = max(1, int(batch_size))
    parts = [
        np.asarray(model(padded[i : i + bs], training=False), dtype="float32")
        for i in range(0, padded.shape[0], bs)
    ]
    out = crop_back(np.concatenate(parts, axis=0), pads)
    return out[0] if single else out
