"""Independent pixels: the strongest assumption of the ladder.

    p(x) = prod_i p(x_i),   p(x_i = k) = softmax(theta_i)_k

Binary data: one logit per dimension, n parameters for n pixels. K levels: K-1 free logits per
dimension (level 0 is the reference with logit 0), n(K-1) parameters. The maximum-likelihood
fit is closed form: the empirical frequencies (:meth:`IndependentModel.fit`). Orderings do not
matter to this model (every ordering gives the same joint), and completion is always exact.

Limits: it cannot represent any correlation between pixels; samples look like noise shaped by
the mean image.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .base import draw_uniforms
from .ordered import OrderedModel
from .registry import register


@dataclass
class IndependentConfig:
    ordering: str | list[int] = "raster"  # irrelevant to the joint; kept for a uniform interface
    smoothing: float = 0.5  # pseudo-count added to every level by the closed-form fit

    def validate(self) -> None:
        if self.smoothing < 0:
            raise ValueError(f"smoothing must be >= 0, got {self.smoothing}")


def free_logits_to_full(free: Tensor, levels: int) -> Tensor:
    """``(..., K-1)`` free logits -> head parameters: ``(..., 1)`` for binary, ``(..., K)`` with
    a zero logit for level 0 otherwise."""
    if levels == 2:
        return free
    return torch.cat([torch.zeros_like(free[..., :1]), free], dim=-1)


def logits_from_counts(counts: Tensor, smoothing: float, levels: int) -> Tensor:
    """Maximum-likelihood (or smoothed) free logits from counts ``(..., K)``.

    Levels never seen (with smoothing 0) get a log-probability of -100 rather than -inf, so
    that the parameters stay finite; a context never seen at all gets the uniform distribution.
    """
    c = counts.to(torch.float64) + smoothing
    c = torch.where(c.sum(-1, keepdim=True) > 0, c, torch.ones_like(c))  # unseen: uniform
    logp = torch.log(c / c.sum(-1, keepdim=True)).clamp_min(-100.0)
    return logp[..., 1:] - logp[..., :1]


def empirical_counts(values: Tensor, levels: int) -> Tensor:
    """``(N, D)`` whole numbers -> ``(D, K)`` counts."""
    onehot = torch.nn.functional.one_hot(values.long(), levels)
    return onehot.sum(0).to(torch.float64)


@register
class IndependentModel(OrderedModel):
    name = "independent"
    Config = IndependentConfig
    supports = ("binary", "discrete")

    def __init__(self, event_shape, levels, config: IndependentConfig):
        super().__init__(event_shape, levels, config)
        self.logits = nn.Parameter(torch.zeros(self.dim, levels - 1))  # (D, K-1), flat layout

    def _ordered_params(self, xo: Tensor) -> Tensor:
        full = free_logits_to_full(self.logits[self.order], self.levels)  # (D, P)
        return full.unsqueeze(0).expand(xo.shape[0], -1, -1)

    def _step_params(self, xo, i, state):
        full = free_logits_to_full(self.logits[self.order[i]], self.levels)
        return full.unsqueeze(0).expand(xo.shape[0], -1), state

    def _sample(self, n, given, mask, generator, **kwargs):
        # every dimension is independent: draw them all at once
        u = draw_uniforms(n, (self.dim,), generator, device=self._device)
        params = free_logits_to_full(self.logits, self.levels).unsqueeze(0).expand(n, -1, -1)
        x = self.head.sample(params, u).reshape(n, *self.event_shape)
        if given is not None:
            x = torch.where(mask, given, x)
        return x

    @torch.no_grad()
    def fit(self, x: Tensor) -> IndependentModel:
        """Closed-form maximum-likelihood fit (with the config's smoothing): the empirical
        frequency of each level at each pixel. Returns ``self``."""
        x = self.check_images(x)
        counts = empirical_counts(x.flatten(1), self.levels)
        self.logits.copy_(logits_from_counts(counts, self.config.smoothing, self.levels))
        return self
