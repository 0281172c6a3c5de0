"""Shared machinery for models that visit the flattened image in an ordering.

Independent pixels, Markov chains, the full table, FVSBN, NADE and RNADE all work on the
vector ``x_o = x.flatten(1)[:, order]`` (``(B, D)``): step ``i`` of the chain rule predicts
``x_o[:, i]`` from ``x_o[:, :i]``. A subclass provides

* ``_ordered_params(xo)``: the output-head parameters of every step at once (teacher forcing),
  ``(B, D, P)``, where step ``i`` may depend on ``xo[:, :i]`` only;
* optionally ``_step_params(xo, i)``: the parameters of step ``i`` alone from ``xo[:, :i]``,
  for a decoder faster than recomputing everything at every step (:class:`PrefixDecoder`), or
  its own ``decoder`` (NADE, RNADE).

This module turns those into exact log-likelihoods laid out like the image, and into the
decoding protocol of :mod:`chainrule.sampling` (the one sampler, with completion).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import sampling
from ..distributions import head_for
from ..orderings import inverse, resolve_ordering
from .base import AutoregressiveModel

#: refuse tabular models with more entries than this (2^27 floats: 0.5 GiB in float32)
MAX_TABLE_ENTRIES = 2**27


def check_table_size(entries: int, what: str) -> None:
    """Refuse a table that would not fit in memory, naming its size."""
    if entries > MAX_TABLE_ENTRIES:
        gib = entries * 4 / 2**30
        size = (
            f"{gib:,.1f} GiB" if entries < 10**30 else f"about 2^{entries.bit_length() - 1} floats"
        )
        raise ValueError(
            f"{what} needs {entries:,} parameters ({size} in float32), more than this library "
            f"allocates ({MAX_TABLE_ENTRIES:,}); use fewer pixels, fewer levels or a lower order"
            if entries < 10**30
            else f"{what} needs {entries} parameters ({size}); it cannot be allocated. "
            f"Use `chainrule params` to count it, or a smaller image"
        )


class OrderedModel(AutoregressiveModel):
    """An autoregressive model over an ordering of the flattened image (see module doc).

    The subclass's config must have an ``ordering`` field (``"raster"``, ``"random:SEED"`` or a
    permutation list).
    """

    order: Tensor
    inv_order: Tensor

    def __init__(self, event_shape, levels, config, *, head=None):
        super().__init__(event_shape, levels, config)
        order = resolve_ordering(getattr(config, "ordering", "raster"), self.event_shape)
        self.register_buffer("order", order, persistent=False)
        self.register_buffer("inv_order", inverse(order), persistent=False)
        self.head = head if head is not None else head_for(levels)

    # ------------------------------------------------------------------ layout
    def to_ordered(self, x: Tensor) -> Tensor:
        """``(B, C, H, W)`` -> ``(B, D)`` in visiting order."""
        return x.flatten(1)[:, self.order]

    def from_ordered(self, v: Tensor) -> Tensor:
        """``(B, D)`` in visiting order -> ``(B, C, H, W)``."""
        return v[:, self.inv_order].reshape(v.shape[0], *self.event_shape)

    # ------------------------------------------------------------------ to implement
    def _ordered_params(self, xo: Tensor) -> Tensor:  # pragma: no cover - abstract
        """``(B, D)`` ordered values -> ``(B, D, P)`` head parameters of every step."""
        raise NotImplementedError

    def _step_params(self, xo: Tensor, i: int) -> Tensor:
        """Parameters ``(B, P)`` of step ``i`` given ``xo[:, :i]``. The default recomputes
        every step (correct for any model, O(D) slower)."""
        return self._ordered_params(xo)[:, i]

    # ------------------------------------------------------------------ decoding protocol
    def decoder_order(self, part: int = 0) -> Tensor:
        return self.order

    def decoder(self, n: int, part: int = 0) -> sampling.Decoder:
        return PrefixDecoder(self, n)

    def teacher_params(self, xo: Tensor, part: int = 0) -> Tensor:
        return self._ordered_params(xo)

    # ------------------------------------------------------------------ the chain rule
    def _conditional_log_probs(self, x: Tensor) -> Tensor:
        xo = self.to_ordered(x)
        params = self._ordered_params(xo)  # (B, D, P)
        return self.from_ordered(self.head.log_prob(params, xo))


class DiscreteOrderedModel(OrderedModel):
    """An :class:`OrderedModel` of discrete data only: binary or K levels."""

    supports = ("binary", "discrete")
    levels: int  # K (checked against ``supports`` when the model is built)


class PrefixDecoder:
    """Decoder of a model whose step ``i`` reads the earlier values directly
    (``model._step_params(xo, i)``): it keeps the values told so far, ``(n, D)``."""

    def __init__(self, model: OrderedModel, n: int):
        self.model, self.order = model, model.decoder_order()
        self.xo = torch.zeros(n, model.dim, device=model._device, dtype=model._dtype)

    def params(self, i: int) -> Tensor:
        return self.model._step_params(self.xo, i)

    def tell(self, i: int, value: Tensor) -> None:
        self.xo[:, i] = value
