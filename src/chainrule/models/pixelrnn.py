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

Sampling: ``sample(n, method="cached")`` (the default) computes, for each new (pixel, channel),
only that pixel's column through the stack, keeping convolution inputs and LSTM states in
caches (:mod:`chainrule.models.cached`); ``method="naive"`` runs the whole network once per
(pixel, channel) and is the oracle. Both turn the same generator into the same images.

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

from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..distributions import head_for
from ..orderings import raster_order
from .base import AutoregressiveModel, draw_uniforms, warn_if_not_prefix
from .layers import IMPLS, DiagonalBiLSTM, MaskedConv2d, RowLSTM
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

    hidden: int = 8  # units per recurrent layer; the residual stream has 2 * hidden features
    layers: int = 2  # recurrent (or, for PixelCNN, masked k x k) layers
    kernel: int = 3
    first_kernel: int = 7  # the mask-A input convolution is first_kernel x first_kernel
    out_hidden: int = 0  # features of the 1 x 1 output layer; 0 means 2 * hidden
    impl: str = "fast"  # "fast" or "reference" (the plain oracle; same weights)
    # Diagonal BiLSTM only: feed the image, unmasked, into the right-to-left gates, which closes
    # the paper layer's blind spot (the last pixel of the row above; see layers.py). False: the
    # paper's layer exactly as written. Ignored by the other two models.
    full_context: bool = True
    preset: str = ""  # "" or a key of PRESETS[model]

    def __post_init__(self) -> None:
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
        if self.impl not in IMPLS:
            raise ValueError(f"impl must be one of {', '.join(IMPLS)}, got {self.impl!r}")


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
    # measured on digits (the main job's data): lr 5e-3 with a cosine decay over 50 epochs gives
    # PixelCNN 18.9 test nats where lr 1e-3 for 20 epochs stops at 20.6
    train_defaults = {"lr": 5e-3, "lr_schedule": "cosine", "epochs": 50, "patience": 10}
    Config = PixelRNNConfig

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

    def _make_block(self, f: int, c: int) -> nn.Module:  # pragma: no cover - abstract
        raise NotImplementedError

    def _block(self, block: nn.Module, s: Tensor, image: Tensor) -> Tensor:  # pragma: no cover
        """One layer: stream ``s`` ``(B, F, H, W)``, scaled image ``(B, C, H, W)``."""
        raise NotImplementedError

    # ------------------------------------------------------------------ network
    def _scale(self, x: Tensor) -> Tensor:
        return x * (2.0 / (self.levels - 1)) - 1.0  # whole numbers 0..K-1 -> [-1, 1]

    def _hidden(self, x: Tensor) -> Tensor:
        """``(B, C, H, W)`` values -> ``(B, out_hidden, H, W)`` last hidden features."""
        image = self._scale(x)
        s = self.input_conv(image)
        for block in self.blocks:
            s = self._block(block, s, image)
        return F.relu(self.out_conv1(F.relu(s)))

    def _params(self, x: Tensor) -> Tensor:
        """Head parameters of every conditional: ``(B, C, H, W, P)``."""
        b, c, h, w = x.shape
        out = self.out_conv2(self._hidden(x))  # (B, C*P, H, W)
        return out.view(b, c, -1, h, w).permute(0, 1, 3, 4, 2)

    def _conditional_log_probs(self, x: Tensor) -> Tensor:
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
        """``method="cached"`` (default): one pixel column per (pixel, channel) with caches
        (:func:`chainrule.models.cached.sample_cached`, which also takes ``cuda_graph=True``).
        ``method="naive"``: one network pass per (pixel, channel), on the rows up to the
        current one (the oracle).

        One uniform per dimension is drawn up front (``draw_uniforms(n, (D,))``), indexed by the
        step in raster order with channels innermost, so both methods turn the same generator
        into the same images.
        """
        if method == "cached":
            from .cached import sample_cached

            return sample_cached(self, n, given, mask, generator, **kwargs)
        if method != "naive":
            raise ValueError(f"method must be 'cached' or 'naive', got {method!r}")
        if kwargs:
            raise ValueError(f"unexpected sample options for {self.name!r}: {sorted(kwargs)}")
        c, h, w = self.event_shape
        u = draw_uniforms(n, (self.dim,), generator, device=self._device)  # (n, D), step order
        x = torch.zeros(n, c, h, w, device=self._device, dtype=self._dtype)
        if given is not None:
            warn_if_not_prefix(mask.flatten(1), raster_order(self.event_shape).to(mask.device))
        step = 0
        for r in range(h):
            for col in range(w):
                for k in range(c):
                    keep = mask[:, k, r, col] if given is not None else None
                    if keep is not None and bool(keep.all()):
                        x[:, k, r, col] = given[:, k, r, col]
                    else:
                        params = self._params(x[:, :, : r + 1])[:, k, r, col]  # (n, P)
                        value = self.head.sample(params, u[:, step])
                        if keep is not None:
                            value = torch.where(keep, given[:, k, r, col], value)
                        x[:, k, r, col] = value
                    step += 1
        return x


class _Residual(nn.Module):
    """A recurrent layer and its 1 x 1 mask-B projection back to the stream (paper: h -> 2h)."""

    def __init__(self, rnn: nn.Module, units: int, f: int, c: int):
        super().__init__()
        self.rnn = rnn
        self.proj = MaskedConv2d(units, f, (1, 1), "B", c)

    def forward(self, s: Tensor, context: Tensor | None = None) -> Tensor:
        h = self.rnn(s) if context is None else self.rnn(s, context)
        return s + self.proj(h)


@register
class RowLSTMModel(_PixelNet):
    """PixelRNN with Row LSTM layers (context: a triangle above the pixel)."""

    name = "row-lstm"
    Config = RowLSTMConfig

    def _make_block(self, f, c):
        cfg = self.config
        return _Residual(RowLSTM(f, cfg.hidden, c, cfg.kernel, cfg.impl), cfg.hidden, f, c)

    def _block(self, block, s, image):
        return block(s)


@register
class DiagonalBiLSTMModel(_PixelNet):
    """PixelRNN with Diagonal BiLSTM layers (context: every previous pixel)."""

    name = "diagonal-bilstm"
    Config = DiagonalBiLSTMConfig

    def _make_block(self, f, c):
        cfg = self.config
        ctx = c if cfg.full_context else 0
        return _Residual(DiagonalBiLSTM(f, cfg.hidden, c, cfg.impl, ctx), cfg.hidden, f, c)

    def _block(self, block, s, image):
        return block(s, image if self.config.full_context else None)


@register
class PixelCNN(_PixelNet):
    """PixelCNN from the same paper: masked k x k convolutions with residual connections.

    ``impl`` has no effect (there is no recurrence); it is accepted for a uniform config.
    """

    name = "pixelcnn"
    Config = PixelCNNConfig

    def _make_block(self, f, c):
        k = self.config.kernel
        return MaskedConv2d(f, f, (k, k), "B", c)

    def _block(self, block, s, image):
        return s + block(F.relu(s))
