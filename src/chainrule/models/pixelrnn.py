"""PixelRNN and PixelCNN (van den Oord, Kalchbrenner & Kavukcuoglu, "Pixel Recurrent Neural
Networks", ICML 2016).

Factorization: raster order, rows top to bottom, pixels left to right, and within a pixel the
colours R, then G, then B:

    log p(x) = sum_{r, c} sum_{k < C} log p(x[k, r, c] | all pixels before (r, c), x[<k, r, c]).

The ordering is fixed (these models have no ``ordering`` option). One pass of the network gives
every conditional at once (teacher forcing); sampling runs it once per (pixel, channel).

The stack (``F = 2 * hidden`` features in the residual stream, split into C colour groups, see
:mod:`chainrule.models.layers`):

    x in [-1, 1] -> 7 x 7 mask-A conv -> F
                 -> ``layers`` x [ Row LSTM | Diagonal BiLSTM (hidden units) -> 1 x 1 mask-B
                                   conv back to F, added (residual) ]
                    or, for PixelCNN, ``layers`` x [ ReLU -> k x k mask-B conv, added ]
                 -> ReLU -> 1 x 1 mask-B conv (out_hidden) -> ReLU -> 1 x 1 mask-B conv
                 -> per channel: one Bernoulli logit (binary) or K softmax logits (K levels).

Presets (:data:`PRESETS`, used by ``chainrule.build(name, **PRESETS[name][preset])`` and the
CLI): ``"paper-mnist"`` is the paper's binarized-MNIST network (7 layers of 16 units for the
recurrent models; 12 layers of 64 feature maps here for PixelCNN, as the issue asks);
``"cpu-small"`` trains in minutes on two CPU cores.

Known limits: the Row LSTM sees a triangle above the pixel (it misses earlier pixels far to the
side); PixelCNN's stacked 3 x 3 masks have the well-known blind spot to the upper right; both
are still strictly causal, which the tests prove.

Sampling: ``sample(n, method="cached")`` (the default) is the library's one sampler
(:mod:`chainrule.sampling`) driving :class:`PixelDecoder`, which computes, for each new (pixel,
channel), only that pixel's column through the stack; each layer type keeps its convolution
inputs and LSTM states in its own cache (defined next to the layer, :mod:`.layers`).
``method="naive"`` runs the whole network once per (pixel, channel) and is the oracle
(:func:`chainrule.sampling.naive_sample`). Both turn the same generator into the same images.

A finding about the paper's Diagonal BiLSTM: written exactly as in the paper (mask-A input
layer, mask-B 1 x 1 input-to-state, right-to-left output shifted down one row), it does *not*
see every previous pixel. The stream never holds a pixel's own (last) colour at that pixel, so
the right-to-left state of row r-1 never receives the last pixel of row r-1, and the pixels of
row r left of the first convolution's reach miss ``(r-1, W-1)`` at any depth
(``tests/test_receptive_field.py`` shows it). ``full_context=True`` (the default) also feeds
the image itself, unmasked, into the right-to-left gates, which is causal because that output is
shifted down a row, and restores the complete context; ``full_context=False`` is the paper's
layer as written.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import sampling
from ..distributions import head_for
from ..orderings import raster_order
from .base import RETIRED_IMPLS, AutoregressiveModel, canonical_impl
from .layers import (
    ConvCache,
    DiagonalBiLSTMLayer,
    MaskedConv2d,
    PixelCNNBlock,
    Residual,
    RowLSTMLayer,
    linear_of,
    pointwise,
)
from .registry import register

#: named option sets: ``chainrule.build("diagonal-bilstm", (1, 28, 28), 2,
#: **PRESETS["diagonal-bilstm"]["paper-mnist"])``
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "pixelcnn": {
        "paper-mnist": {"hidden": 32, "layers": 12},  # 12 layers x 64 feature maps (F = 2 x 32)
        "cpu-small": {"hidden": 16, "layers": 5},
    },
    "row-lstm": {
        "paper-mnist": {"hidden": 16, "layers": 7},
        "cpu-small": {"hidden": 8, "layers": 3},
    },
    "diagonal-bilstm": {
        "paper-mnist": {"hidden": 16, "layers": 7},
        "cpu-small": {"hidden": 8, "layers": 2},
    },
}


def preset_options(model: str, preset: str) -> dict[str, Any]:
    """Options of a named preset (a copy), with a clear error for unknown names."""
    if model not in PRESETS:
        raise ValueError(
            f"model {model!r} has no presets; models with presets: {', '.join(PRESETS)}"
        )
    if preset not in PRESETS[model]:
        raise ValueError(
            f"unknown preset {preset!r} for {model!r}; presets: {', '.join(PRESETS[model])}"
        )
    return dict(PRESETS[model][preset])


@dataclass
class PixelRNNConfig:
    """Options of the three models (``kernel`` is the Row LSTM's k, or PixelCNN's k x k).

    ``preset`` (a key of :data:`PRESETS` for the model, e.g. ``"paper-mnist"``) sets the
    preset's options on every field still at its default value (so ``--preset paper-mnist
    --layers 3`` gives 3 layers; a field given explicitly *at its default value* is overridden
    by the preset).
    """

    @staticmethod
    def model_name() -> str:  # the registry name whose PRESETS apply (a method, not a field)
        return ""

    hidden: int = field(
        default=8,
        metadata={"help": "units per recurrent layer; the residual stream has 2 * hidden features"},
    )
    layers: int = field(
        default=2, metadata={"help": "recurrent (or, for PixelCNN, masked k x k) layers"}
    )
    kernel: int = field(
        default=3,
        metadata={"help": "k of the Row LSTM's 1 x k convolutions, or PixelCNN's k x k (odd)"},
    )
    first_kernel: int = field(
        default=7,
        metadata={
            "help": "size of the mask-A input convolution, first_kernel x first_kernel (odd)"
        },
    )
    out_hidden: int = field(
        default=0, metadata={"help": "features of the 1 x 1 output layer (0: 2 * hidden)"}
    )
    impl: str = field(
        default="auto",
        metadata={
            "help": "computation path: auto, the only one (kept so that saved configs load: their fast, reference or naive are read as auto)"
        },
    )
    # Diagonal BiLSTM only: feed the image, unmasked, into the right-to-left gates, which closes
    # the paper layer's blind spot (the last pixel of the row above; see layers.py). False: the
    # paper's layer exactly as written. Ignored by the other two models.
    full_context: bool = field(
        default=True,
        metadata={
            "help": "Diagonal BiLSTM only: feed the image into the right-to-left gates, closing the paper layer's blind spot (False: the paper's layer as written)"
        },
    )
    preset: str = field(
        default="",
        metadata={
            "help": "named option set (a key of PRESETS for the model, e.g. paper-mnist) applied to fields left at their defaults ('': none)"
        },
    )

    def __post_init__(self) -> None:
        self.impl = canonical_impl(self.impl)  # saved configs: "fast", "reference", "naive"
        if self.preset:
            if not isinstance(self.preset, str):
                raise ValueError(f"preset must be a string, got {self.preset!r}")
            defaults = {f.name: f.default for f in fields(self)}
            for key, value in preset_options(self.model_name(), self.preset).items():
                if getattr(self, key) == defaults[key]:
                    setattr(self, key, value)

    def validate(self) -> None:
        for name in ("hidden", "layers", "kernel", "first_kernel"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        for name in ("kernel", "first_kernel"):
            if getattr(self, name) % 2 == 0:
                raise ValueError(f"{name} must be odd, got {getattr(self, name)}")
        if (
            isinstance(self.out_hidden, bool)
            or not isinstance(self.out_hidden, int)
            or self.out_hidden < 0
        ):
            raise ValueError(
                f"out_hidden must be an int >= 0 (0: 2 * hidden), got {self.out_hidden!r}"
            )
        if not isinstance(self.full_context, bool):
            raise ValueError(f"full_context must be True or False, got {self.full_context!r}")
        if self.impl != "auto":
            raise ValueError(
                f"impl must be one of auto (or its older names {', '.join(RETIRED_IMPLS)}), got {self.impl!r}"
            )


@dataclass
class RowLSTMConfig(PixelRNNConfig):
    @staticmethod
    def model_name() -> str:
        return "row-lstm"


@dataclass
class DiagonalBiLSTMConfig(PixelRNNConfig):
    @staticmethod
    def model_name() -> str:
        return "diagonal-bilstm"


@dataclass
class PixelCNNConfig(PixelRNNConfig):
    @staticmethod
    def model_name() -> str:
        return "pixelcnn"


class _PixelNet(AutoregressiveModel):
    """Shared stack, head, likelihood and sampler of the three models (see module doc)."""

    supports = ("binary", "discrete")
    levels: int  # K: the model is discrete only (``supports``, checked when it is built)
    # measured on digits (the main job's data): lr 5e-3 with a cosine decay over 50 epochs gives
    # PixelCNN 18.9 test nats where lr 1e-3 for 20 epochs stops at 20.6
    train_defaults = {"lr": 5e-3, "lr_schedule": "cosine", "epochs": 50, "patience": 10}
    Config = PixelRNNConfig
    # the per-pixel products are far too small to gain from intra-op threads, and on a busy
    # machine the threads' synchronisation makes them many times slower (measured 20x on 2
    # shared cores): the sampler runs them on one thread
    sample_threads = 1
    supports_cuda_graph = True
    supports_orderings = False  # raster order, channels innermost, is built into the masks

    def __init__(self, event_shape, levels, config: PixelRNNConfig):
        super().__init__(event_shape, levels, config)
        c = self.event_shape[0]
        if config.hidden < c:
            raise ValueError(
                f"hidden must be >= the number of channels ({c}) so that every colour group has "
                f"units, got hidden={config.hidden}"
            )
        self.head = head_for(levels)
        p = self.head.num_params
        f = 2 * config.hidden
        o = config.out_hidden or f
        k0 = config.first_kernel
        self.input_conv = MaskedConv2d(c, f, (k0, k0), "A", c)
        self.blocks = nn.ModuleList(self._make_block(f, c) for _ in range(config.layers))
        self.out_conv1 = MaskedConv2d(f, o, (1, 1), "B", c)
        out_groups = torch.arange(c).repeat_interleave(p)  # logits of channel k: group k
        self.out_conv2 = MaskedConv2d(o, c * p, (1, 1), "B", c, out_groups=out_groups)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.name = cls.Config.model_name()  # the registry name, written once (presets use it)

    def _make_block(self, f: int, c: int) -> Residual | PixelCNNBlock:
        """One layer of the stack: the recurrent layer and its projection back to the stream."""
        return Residual(self._recurrent_layer(f, c), self.config.hidden, f, c)

    def _recurrent_layer(self, f: int, c: int) -> nn.Module:  # pragma: no cover - abstract
        raise NotImplementedError

    # ------------------------------------------------------------------ network
    def _scale(self, x: Tensor) -> Tensor:
        return x * (2.0 / (self.levels - 1)) - 1.0  # whole numbers 0..K-1 -> [-1, 1]

    def _hidden(self, x: Tensor) -> Tensor:
        """``(B, C, H, W)`` values -> ``(B, out_hidden, H, W)`` last hidden features."""
        image = self._scale(x)
        s = self.input_conv(image)
        for block in self.blocks:
            s = block(s, image)  # a layer that takes the image as context uses it
        return F.relu(pointwise(self.out_conv1, F.relu(s)))

    def _params(self, x: Tensor) -> Tensor:
        """Head parameters of every conditional: ``(B, C, H, W, P)``."""
        b, c, h, w = x.shape
        out = pointwise(self.out_conv2, self._hidden(x))  # (B, C*P, H, W)
        return out.view(b, c, -1, h, w).permute(0, 1, 3, 4, 2)

    #: without gradients (evaluation, anomaly scores) a batch runs in chunks whose largest
    #: per-layer buffer stays under this many bytes, below the 32 MiB up to which glibc reuses
    #: freed memory (:mod:`chainrule.allocator`): larger ones are fresh pages every time
    eval_chunk_bytes = 24 << 20

    #: values a pixel of the widest per-layer buffer, per hidden unit (set by each model; 0:
    #: never in chunks)
    buffer_width = 0

    def eval_chunk(self, x: Tensor) -> int:
        """Images per chunk of a batch without gradients (:attr:`eval_chunk_bytes`); the whole
        batch where the model's :attr:`buffer_width` is 0."""
        _, h, w = self.event_shape
        per_image = h * w * self.buffer_width * self.config.hidden * x.element_size()
        return max(1, self.eval_chunk_bytes // per_image) if per_image else x.shape[0]

    def _conditional_log_probs(self, x: Tensor) -> Tensor:
        n = self.eval_chunk(x)
        if x.shape[0] > n and not torch.is_grad_enabled():
            return torch.cat([self._conditional_log_probs(part) for part in x.split(n)])
        params = self._params(x)
        if params.dtype in (torch.bfloat16, torch.float16):  # autocast: the head in float32
            params = params.float()
        return self.head.log_prob(params, x)

    def features(self, x: Tensor) -> Tensor:
        """Last hidden layer average-pooled to at most 4 x 4: ``(B, out_hidden * 16)``."""
        x = self.check_images(x)
        _, _, h, w = x.shape
        return F.adaptive_avg_pool2d(self._hidden(x), (min(h, 4), min(w, 4))).flatten(1)

    # ------------------------------------------------------------------ sampling
    def _sample(self, n, given, mask, generator, *, method: str = "cached", **kwargs):
        """``method="cached"`` (default): the incremental decoder (:class:`PixelDecoder`, one
        pixel column per (pixel, channel) with per-layer caches; also takes
        ``cuda_graph=True``). ``method="naive"``: one network pass per (pixel, channel), the
        oracle (:func:`chainrule.sampling.naive_sample`). Both turn the same generator into the
        same images (one uniform per dimension, raster order with channels innermost)."""
        if method == "cached":
            return super()._sample(n, given, mask, generator, **kwargs)
        if method != "naive":
            raise ValueError(f"method must be 'cached' or 'naive', got {method!r}")
        if kwargs:
            raise ValueError(f"unexpected sample options for {self.name!r}: {sorted(kwargs)}")
        return sampling.naive_sample(self, n, given, mask, generator)

    def decoder_order(self, part: int = 0) -> Tensor:
        return raster_order(self.event_shape).to(self._device)

    def decoder(self, n: int, part: int = 0) -> PixelDecoder:
        return PixelDecoder(self, n)

    def teacher_params(self, xo: Tensor, part: int = 0) -> Tensor:
        """``(n, D)`` values in raster order (channels innermost) -> ``(n, D, P)``."""
        c, h, w = self.event_shape
        x = xo.view(-1, h, w, c).permute(0, 3, 1, 2)
        return self._params(x).permute(0, 2, 3, 1, 4).reshape(xo.shape[0], self.dim, -1)


class PixelDecoder:
    """Incremental decoding of a :class:`_PixelNet` in raster order, channels innermost.

    For each new (pixel, channel) only that pixel's column through the stack is computed; each
    layer keeps what the next pixel needs in its own cache (``block.stack_cache``, defined with
    the layer in :mod:`chainrule.models.layers`):

    * the 7 x 7 mask-A input convolution and PixelCNN's k x k mask-B convolutions: a cache of the
      layer's *input* (padded, channels last); the new pixel's output is one matrix product of
      the causal part of its patch with the masked weight;
    * Row LSTM: the layer's input row and the previous row's ``(h, c)``; the state-to-state
      convolution of the previous row once per row, then one LSTM update per pixel;
    * Diagonal BiLSTM: the left-to-right ``(h, c)`` at every pixel; the right-to-left direction
      only reaches the output shifted down one row, so it runs over each finished row (all
      layers batched), with the row's image for ``full_context``;
    * the residual additions and the 1 x 1 convolutions are per-pixel matrix products.

    Colour: for channel ``k`` the pixel's column is computed with the values told so far
    (channels ``>= k`` still 0); by the channel-group invariant of :mod:`~.layers` the features
    of groups ``<= k`` are then exact. The last pass of a pixel (channel ``C - 1``, or one extra
    pass when the last channels were given and not asked for) leaves every group exact.

    Cost: O(D) small matrix products per image instead of O(D) full passes; memory O(layers * H
    * W) features per image. The parameters agree with a full pass to rounding only (a per-pixel
    product sums in another order than a whole-map convolution).
    """

    def __init__(self, model: _PixelNet, n: int):
        c, h, w = model.event_shape
        self.model, self.n, self.c, self.w = model, n, c, w
        self.order = model.decoder_order()
        like = torch.zeros((), device=model._device, dtype=model._dtype)
        # the scaled value of an unseen pixel is never used (its weights are masked to exact
        # zeros), but keep the cache equal to what a full pass sees: 0 -> scale(0)
        self.input = ConvCache(model.input_conv, n, h, w, like, fill=model._scale(like))
        blocks = [cast(Residual | PixelCNNBlock, b) for b in model.blocks]  # see _make_block
        self.stack = blocks[0].stack_cache(blocks, n, h, w, like)
        self.out1_w, self.out1_b = linear_of(model.out_conv1)
        w2, b2 = linear_of(model.out_conv2)  # (O, C * P): the logits of channel k together
        p = model.head.num_params
        self.out2 = [
            (w2[:, k * p : (k + 1) * p].contiguous(), b2[k * p : (k + 1) * p]) for k in range(c)
        ]
        self.row = -1  # the row begun
        self.last = -1  # the last channel of the current pixel whose pass ran

    def _where(self, i: int) -> tuple[int, int, int]:
        pixel, k = divmod(i, self.c)
        r, col = divmod(pixel, self.w)
        if r != self.row:
            self.input.begin_row(r)
            self.stack.begin_row(r)
            self.row = r
        return r, col, k

    def _column(self, r: int, col: int) -> Tensor:
        """Run pixel ``(r, col)`` through the stack (updating the caches): ``(n, F)``."""
        return self.stack.pixel(r, col, self.input.out(col))

    def params(self, i: int) -> Tensor:
        r, col, k = self._where(i)
        s = self._column(r, col)
        self.last = k
        o = F.relu(torch.addmm(self.out1_b, F.relu(s), self.out1_w))
        w2, b2 = self.out2[k]
        return torch.addmm(b2, o, w2)

    def tell(self, i: int, value: Tensor) -> None:
        r, col, k = self._where(i)
        inp = self.input
        inp.slot[col][:, k] = self.model._scale(value)
        if k == self.c - 1:
            if self.last != k:  # a later channel was given: bring every colour group up to date
                self._column(r, col)
            self.last = -1
            if col == self.w - 1:
                image_row = inp.cur[:, inp.pw : inp.pw + self.w].transpose(0, 1)
                self.stack.end_row(r, image_row)  # (W, n, C)


@register
class RowLSTM(_PixelNet):
    """PixelRNN with Row LSTM layers (context: a triangle above the pixel)."""

    Config = RowLSTMConfig
    buffer_width = 9  # the taps of every pixel: k * 2h inputs and k * h states (k = 3)

    def _recurrent_layer(self, f, c):
        return RowLSTMLayer(f, self.config.hidden, c, self.config.kernel)


@register
class DiagonalBiLSTM(_PixelNet):
    """PixelRNN with Diagonal BiLSTM layers (context: every previous pixel)."""

    Config = DiagonalBiLSTMConfig
    buffer_width = 16  # both directions' 4h gates over the skewed width (2W - 1 columns)

    def _recurrent_layer(self, f, c):
        context = c if self.config.full_context else 0  # the image into the right-to-left gates
        return DiagonalBiLSTMLayer(f, self.config.hidden, c, context)


@register
class PixelCNN(_PixelNet):
    """PixelCNN from the same paper: masked k x k convolutions with residual connections.

    ``impl`` has one value, as for the two recurrent models (there is no recurrence).
    """

    Config = PixelCNNConfig
    # not in chunks: its evaluation at batch 256 ran at 0.92-1.13x in chunks of 125 or 25
    # images over four runs (benchmarks/eval_chunks.py), within this machine's noise
    buffer_width = 0

    def _make_block(self, f, c):
        return PixelCNNBlock(f, self.config.kernel, c)
