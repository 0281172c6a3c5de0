"""The full chain-rule table: no assumption at all.

    p(x) = prod_i p(x_{o(i)} | x_{o(1)}, ..., x_{o(i-1)})

with every conditional a table over *all* configurations of the previous pixels: step i has
K^i contexts of K-1 free logits, sum_i (K-1) K^i = K^n - 1 parameters in all, exactly the
number of free parameters of an arbitrary distribution over K^n states. It is the exact
reference for tiny n and a lesson in why the rest of the ladder exists: for a 28 x 28 binary
image it would need 2^784 - 1 parameters. :meth:`Table.count_parameters` gives that count
as an exact integer; building such a model is refused with a message naming the size.

The closed-form fit (:meth:`Table.fit`) recovers the empirical distribution exactly. It
counts in chunks of images into ``int64`` tables of the parameters' size (see
:mod:`.independent`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..orderings import check_ordering_spec
from . import independent  # the closed-form fit's counting helpers
from .base import check_event_shape, check_levels
from .options import check_nonnegative, ordering_field, smoothing_field
from .ordered import DiscreteOrderedModel, check_table_size
from .registry import register


@dataclass
class TableConfig:
    ordering: str | list[int] = ordering_field()
    smoothing: float = smoothing_field("count")

    def validate(self) -> None:
        check_nonnegative(self.smoothing, "smoothing")
        check_ordering_spec(self.ordering)


@register
class Table(DiscreteOrderedModel):
    name = "table"
    Config = TableConfig
    input_differentiable = False

    def __init__(self, event_shape, levels, config: TableConfig):
        c, h, w = check_event_shape(event_shape)
        check_levels(levels, type(self))  # before levels ** n below
        check_table_size(
            levels ** (c * h * w) - 1,
            f"the full table for {c}x{h}x{w} images with {levels} levels",
        )
        super().__init__(event_shape, levels, config)
        K = levels
        # step i: one row of K-1 free logits per configuration of the i previous values
        self.logits = nn.ParameterList(
            [nn.Parameter(torch.zeros(K**i, K - 1)) for i in range(self.dim)]
        )

    @classmethod
    def count_parameters(cls, event_shape, levels, config) -> int:
        c, h, w = event_shape
        return levels ** (c * h * w) - 1

    def _ordered_params(self, xo: Tensor) -> Tensor:
        ctx = torch.zeros(xo.shape[0], dtype=torch.int64, device=xo.device)
        out = []
        for i in range(self.dim):
            out.append(independent.free_logits_to_full(self.logits[i][ctx], self.levels))
            ctx = ctx * self.levels + xo[:, i].long()  # mixed-radix index of x_<=i
        return torch.stack(out, 1)  # (B, D, P)

    def _step_params(self, xo, i):
        ctx = torch.zeros(xo.shape[0], dtype=torch.int64, device=xo.device)
        for j in range(i):  # mixed-radix index of x_<i (i is at most log2 of the table size)
            ctx = ctx * self.levels + xo[:, j].long()
        return independent.free_logits_to_full(self.logits[i][ctx], self.levels)

    @torch.no_grad()
    def fit(self, x: Tensor, chunk_size: int | None = None) -> Table:
        """Closed-form fit: smoothed frequencies of every conditional. With ``smoothing=0`` the
        model's joint equals the empirical distribution of ``x``. Counts ``chunk_size`` images
        at a time (default from ``FIT_CHUNK_VALUES``); the result does not depend on it.
        Returns ``self``."""
        K, device = self.levels, self._device
        counts = [torch.zeros(K**i, K, dtype=torch.int64, device=device) for i in range(self.dim)]
        for xc in independent.fit_chunks(self, x, chunk_size):
            xo = self.to_ordered(xc).long()
            ctx = torch.zeros(xo.shape[0], dtype=torch.int64, device=device)
            for i in range(self.dim):
                independent.add_counts(counts[i], ctx * K + xo[:, i])
                ctx = ctx * K + xo[:, i]
        block = independent.rows_per_block(K)  # counts -> logits a block of contexts at a time
        for i in range(self.dim):
            c = counts.pop(0)  # each step's counts are freed once turned into logits
            for a in range(0, K**i, block):
                rows = independent.logits_from_counts(c[a : a + block], self.config.smoothing, K)
                self.logits[i][a : a + block].copy_(rows)
        return self
