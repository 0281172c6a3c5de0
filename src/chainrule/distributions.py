"""Output heads: the distribution of one dimension given its parameters.

Every head works in log space (``logsigmoid``, ``log_softmax``, ``logsumexp``): no log is ever
taken of a probability that was computed first. Each head can

* ``log_prob(params, x)``: log p(x) elementwise, in nats;
* ``sample(params, u)``: an *inverse-CDF* draw from one uniform ``u`` in [0, 1) per value, so
  that two samplers fed the same uniforms give the same values bit for bit;
* ``num_params``: how many numbers parameterize one dimension (the trailing size of ``params``).

Shapes: ``params`` is ``(..., P)`` with ``P = num_params``; ``x`` and ``u`` are ``(...)``.
For the binary head ``P = 1`` (one logit).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


class Bernoulli:
    """A coin: p(x=1) = sigmoid(logit). Parameters: one logit per dimension."""

    num_params = 1
    levels = 2

    @staticmethod
    def log_prob(params: Tensor, x: Tensor) -> Tensor:
        logit = params[..., 0]
        # x*logsigmoid(l) + (1-x)*logsigmoid(-l) = -softplus(-(2x-1) l)
        return -F.softplus(-(2.0 * x - 1.0) * logit)

    @staticmethod
    def sample(params: Tensor, u: Tensor) -> Tensor:
        logit = params[..., 0]
        # x = 1 iff u < sigmoid(l)  <=>  log u < logsigmoid(l); compared in log space
        return (torch.log(u.to(logit.dtype)) < F.logsigmoid(logit)).to(logit.dtype)

    @staticmethod
    def probs(params: Tensor) -> Tensor:
        """``(..., 2)`` probabilities of 0 and 1."""
        logit = params[..., 0]
        return torch.stack([torch.sigmoid(-logit), torch.sigmoid(logit)], dim=-1)


class Categorical:
    """An m-sided die over the levels 0..K-1: p(x=k) = softmax(logits)_k."""

    def __init__(self, levels: int):
        if levels < 2:
            raise ValueError(f"Categorical needs levels >= 2, got {levels}")
        self.levels = levels
        self.num_params = levels

    def log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        logp = F.log_softmax(params, dim=-1)
        return logp.gather(-1, x.long().unsqueeze(-1)).squeeze(-1)

    def sample(self, params: Tensor, u: Tensor) -> Tensor:
        # inverse CDF: the number of levels whose cumulative probability is <= u
        cdf = torch.softmax(params.to(torch.float64), dim=-1).cumsum(-1)
        k = (cdf[..., :-1] <= u.to(torch.float64).unsqueeze(-1)).sum(-1)
        return k.to(params.dtype)

    def probs(self, params: Tensor) -> Tensor:
        return torch.softmax(params, dim=-1)


class MixtureOfGaussians:
    """Mixture of ``components`` Gaussians on the real line (RNADE's output).

    Parameters per dimension, in this order along the last axis: ``components`` mixing logits,
    ``components`` means, ``components`` log standard deviations.
    """

    def __init__(self, components: int):
        if components < 1:
            raise ValueError(f"MixtureOfGaussians needs components >= 1, got {components}")
        self.components = components
        self.num_params = 3 * components
        self.levels = None

    def split(self, params: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        k = self.components
        return params[..., :k], params[..., k : 2 * k], params[..., 2 * k :]

    def log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        logit_w, mu, log_sigma = self.split(params)
        z = (x.unsqueeze(-1) - mu) * torch.exp(-log_sigma)
        log_normal = -0.5 * z * z - log_sigma - 0.5 * math.log(2 * math.pi)
        return torch.logsumexp(F.log_softmax(logit_w, dim=-1) + log_normal, dim=-1)

    def sample(self, params: Tensor, u: Tensor, u2: Tensor) -> Tensor:
        """Draw from the mixture with two uniforms per value: one picks the component, the
        other is turned into a standard normal by the inverse CDF."""
        logit_w, mu, log_sigma = self.split(params)
        k = Categorical(self.components).sample(logit_w, u)
        k = k.long().unsqueeze(-1)
        eps = math.sqrt(2.0) * torch.special.erfinv(
            2.0 * u2.to(params.dtype).clamp(1e-12, 1 - 1e-12) - 1.0
        )
        return mu.gather(-1, k).squeeze(-1) + torch.exp(log_sigma.gather(-1, k).squeeze(-1)) * eps


def head_for(levels: int | None, components: int = 1):
    """The output head for data with ``levels`` discrete levels (None: real values)."""
    if levels is None:
        return MixtureOfGaussians(components)
    if levels == 2:
        return Bernoulli()
    return Categorical(levels)
