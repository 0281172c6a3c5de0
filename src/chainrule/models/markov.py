"""Markov chain of order k over the pixels, in the model's ordering.

    p(x) = prod_i p(x_{o(i)} | x_{o(i-k)}, ..., x_{o(i-1)})

Each conditional is a table: for every step i and every configuration of its (at most k)
predecessors, K-1 free logits. With binary pixels and k = 1 that is 1 + 2(n-1) = 2n-1
parameters; in general sum_i (K-1) K^min(i, k). The maximum-likelihood fit is closed form
(transition counts, with optional additive smoothing): :meth:`Markov.fit`.

Limits: the chain only sees the k pixels just before in the ordering. In raster order with
k = 1 that is the pixel to the left (or the end of the previous row), so vertical structure is
invisible; the table grows as K^k and is refused when it would not fit in memory.

Memory: the fit counts in chunks of images into an ``int64`` table of the parameters' size
(see :mod:`.independent`). With K > 2 levels and a batch of at least K^k images, the
log-likelihood looks each step's log-probability up in the log-softmax of the whole table
rather than building a ``(batch, D, K)`` tensor; smaller batches gather their rows as before.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..orderings import check_ordering_spec
from . import independent  # the closed-form fit's counting helpers
from .options import check_int, check_nonnegative, ordering_field, smoothing_field
from .ordered import DiscreteOrderedModel, check_table_size
from .registry import register


@dataclass
class MarkovConfig:
    order: int = field(
        default=1,
        metadata={
            "help": "k, how many previous pixels in the ordering each pixel depends on (1: the previous one)"
        },
    )
    ordering: str | list[int] = ordering_field()
    smoothing: float = smoothing_field("transition count")

    def validate(self) -> None:
        check_int(self.order, "order", 1)
        check_nonnegative(self.smoothing, "smoothing")
        check_ordering_spec(self.ordering)


def _markov_count(d: int, levels: int, k: int) -> int:
    return sum((levels - 1) * levels ** min(i, k) for i in range(d))


@register
class Markov(DiscreteOrderedModel):
    name = "markov"
    Config = MarkovConfig
    powers: Tensor  # K^j, the weight of the j-th previous value in the context index
    input_differentiable = False

    def __init__(self, event_shape, levels, config: MarkovConfig):
        super().__init__(event_shape, levels, config)
        d, K = self.dim, levels
        self.k = k = min(config.order, d - 1) if d > 1 else 0
        check_table_size(
            _markov_count(d, K, config.order),
            f"a Markov chain of order {config.order} with {K} levels over {d} pixels",
        )
        # steps 0..k-1 have fewer predecessors (K^i contexts); steps k.. share one tensor
        self.first_logits = nn.ParameterList(
            [nn.Parameter(torch.zeros(K**i, K - 1)) for i in range(k)]
        )
        self.logits = nn.Parameter(torch.zeros(d - k, K**k, K - 1))  # (D-k, K^k, K-1)
        self.register_buffer(
            "powers", torch.tensor([K**j for j in range(k)], dtype=torch.int64), persistent=False
        )

    @classmethod
    def count_parameters(cls, event_shape, levels, config) -> int:
        c, h, w = event_shape
        return _markov_count(c * h * w, levels, config.order)

    def _table(self) -> Tensor:
        """All steps' logits in one ``(D, K^k, K-1)`` tensor (unreachable contexts zero)."""
        K, k = self.levels, self.k
        rows = [F.pad(p, (0, 0, 0, K**k - p.shape[0])) for p in self.first_logits]
        return torch.cat([torch.stack(rows)] + [self.logits], 0) if rows else self.logits

    def _contexts(self, xo: Tensor) -> Tensor:
        """``(B, D)`` -> ``(B, D)`` context index of each step: sum_j x_{i-j} K^(j-1), with the
        missing predecessors of the first steps read as 0 (so the index stays < K^i)."""
        if self.k == 0:
            return torch.zeros_like(xo, dtype=torch.int64)
        padded = F.pad(xo.long(), (self.k, 0))  # (B, D+k)
        windows = padded.unfold(1, self.k, 1)[:, :-1]  # (B, D, k): x_{i-k} .. x_{i-1}
        return (windows.flip(-1) * self.powers).sum(-1)

    def _ordered_params(self, xo: Tensor) -> Tensor:
        ctx = self._contexts(xo)  # (B, D)
        table = self._table()  # (D, K^k, K-1)
        steps = torch.arange(self.dim, device=xo.device)
        free = table[steps.unsqueeze(0), ctx]  # (B, D, K-1)
        return independent.free_logits_to_full(free, self.levels)

    def _conditional_log_probs(self, x: Tensor) -> Tensor:
        K, k, d = self.levels, self.k, self.dim
        if K == 2 or x.shape[0] < K**k:  # (B, D, K) is no bigger than the table
            return super()._conditional_log_probs(x)
        xo = self.to_ordered(x)
        # log p of every (step, context, level), then one lookup per value: the same numbers
        # as Categorical.log_prob on the gathered rows, without a (B, D, K) tensor
        logp = F.log_softmax(
            independent.free_logits_to_full(self._table(), K), dim=-1
        )  # (D, K^k, K)
        steps = torch.arange(d, device=xo.device).unsqueeze(0) * K**k
        flat = (steps + self._contexts(xo)) * K + xo.long()  # (B, D)
        return self.from_ordered(logp.reshape(-1)[flat])

    def _step_params(self, xo, i):
        k = min(self.k, i)
        prev = xo[:, i - k : i].long().flip(-1) if k else xo[:, :0].long()
        ctx = (prev * self.powers[:k]).sum(-1)  # (B,)
        free = self.first_logits[i][ctx] if i < self.k else self.logits[i - self.k][ctx]
        return independent.free_logits_to_full(free, self.levels)

    @torch.no_grad()
    def fit(self, x: Tensor, chunk_size: int | None = None) -> Markov:
        """Closed-form fit: smoothed transition frequencies. Counts ``chunk_size`` images at a
        time (default from ``FIT_CHUNK_VALUES``); the result does not depend on it. Returns
        ``self``."""
        K, k, d = self.levels, self.k, self.dim
        device = self._device
        counts = torch.zeros(d, K**k, K, dtype=torch.int64, device=device)
        steps = torch.arange(d, device=device).unsqueeze(0) * K**k
        for xc in independent.fit_chunks(self, x, chunk_size):
            xo = self.to_ordered(xc)
            independent.add_counts(counts, (steps + self._contexts(xo)) * K + xo.long())  # (n, D)
        # counts -> logits a block of steps at a time (row by row, so the same numbers)
        block = independent.rows_per_block(K**k * K)
        for a in range(0, d, block):
            b = min(d, a + block)
            logits = independent.logits_from_counts(counts[a:b], self.config.smoothing, K)
            for i in range(a, min(b, k)):
                self.first_logits[i].copy_(logits[i - a, : K**i])
            if b > k:
                self.logits[max(a, k) - k : b - k].copy_(logits[max(a, k) - a :])
        return self
