"""Output heads: the distribution of one dimension given its parameters.

Every head works in log space (``logsigmoid``, ``log_softmax``, ``logsumexp``): no log is ever
taken of a probability that was computed first. Each head can

* ``log_prob(params, x)``: log p(x) elementwise, in nats;
* ``sample(params, u)``: an *inverse-CDF* draw from one uniform ``u`` in [0, 1) per value, so
  that two samplers fed the same uniforms give the same values bit for bit;
* ``num_params``: how many numbers parameterize one dimension (the trailing size of ``params``);
* ``uniforms``: how many uniforms one draw takes (1; 2 for the real-valued mixtures: one picks
  the component, one the value), so ``sample(params, *u)`` takes that many.

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
    uniforms = 1

    @staticmethod
    def log_prob(params: Tensor, x: Tensor) -> Tensor:
        logit = params[..., 0]
        # x*logsigmoid(l) + (1-x)*logsigmoid(-l) = -softplus(-(2x-1) l)
        return -F.softplus(-(2.0 * x - 1.0) * logit)

    @staticmethod
    def sample(params: Tensor, u: Tensor) -> Tensor:
        logit = params[..., 0]
        # x = 1 iff u < sigmoid(l)  <=>  logit(u) < l (logit is increasing): no exp, no log
        # of the parameters, and exact at the ends (logit(0) = -inf: a zero u always gives 1)
        return (torch.logit(u.to(logit.dtype)) < logit).to(logit.dtype)

    @staticmethod
    def prepare(us: list[Tensor], dtype: torch.dtype) -> list[Tensor]:
        """For a sampler that draws one dimension at a time: the ``(n, D)`` uniforms turned
        into ``(D, n)`` rows of ``logit(u)`` once (:meth:`draw` takes row ``i``)."""
        return [torch.logit(us[0].to(dtype)).T.contiguous()]

    @staticmethod
    def draw(params: Tensor, logit_u: Tensor) -> Tensor:
        """:meth:`sample` from a prepared row of ``logit(u)``: one comparison per step; the
        values as booleans (the caller converts them once)."""
        return logit_u < params[..., 0]


class Categorical:
    """An m-sided die over the levels 0..K-1: p(x=k) = softmax(logits)_k."""

    uniforms = 1

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
        self.uniforms = 2

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


class TruncatedMixtureOfGaussians(MixtureOfGaussians):
    """The mixture of :class:`MixtureOfGaussians` truncated to [0, 1] and renormalized (RNADE's
    ``support="unit"``): a proper density on [0, 1],

        p(x) = MoG(x) / sum_k alpha_k (Phi((1 - mu_k)/sigma_k) - Phi(-mu_k/sigma_k)),

    sampled exactly by inverse CDFs (:func:`sample_truncated_mixture`). Same parameters."""

    def log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        return super().log_prob(params, x) - mixture_log_mass(params, self.components)

    def sample(self, params: Tensor, u: Tensor, u2: Tensor) -> Tensor:
        return sample_truncated_mixture(params, u, u2, self.components)


def log_diff_ndtr(lo: Tensor, hi: Tensor) -> Tensor:
    """log(Phi(hi) - Phi(lo)) for lo <= hi, accurate in both tails."""
    flip = lo > 0  # in the upper tail use Phi(hi) - Phi(lo) = Phi(-lo) - Phi(-hi)
    lo, hi = torch.where(flip, -hi, lo), torch.where(flip, -lo, hi)
    lhi, llo = torch.special.log_ndtr(hi), torch.special.log_ndtr(lo)
    return lhi + log1mexp(llo - lhi)


def log1mexp(d: Tensor) -> Tensor:
    """log(1 - exp(d)) for d <= 0 (Maechler's two branches)."""
    d = d.clamp(max=0.0)
    return torch.where(d > -math.log(2.0), torch.log(-torch.expm1(d)), torch.log1p(-torch.exp(d)))


def mixture_log_mass(params: Tensor, components: int) -> Tensor:
    """log of the mass that the mixture ``params (..., 3K)`` puts on [0, 1], ``(...)``."""
    logit_w, mu, log_sigma = params.split(components, -1)
    inv_sigma = torch.exp(-log_sigma)
    mass = log_diff_ndtr(-mu * inv_sigma, (1.0 - mu) * inv_sigma)  # (..., K)
    return torch.logsumexp(F.log_softmax(logit_w, -1) + mass, -1)


def sample_truncated_mixture(params: Tensor, u: Tensor, u2: Tensor, components: int) -> Tensor:
    """Exact draw from the mixture ``params (n, 3K)`` truncated to [0, 1], by inverse CDFs.

    ``u`` picks the component (weights alpha_k times its mass in [0, 1]); ``u2`` is mapped to
    the truncated normal. Computed in float64; returns ``(n,)`` in [0, 1].
    """
    p = params.to(torch.float64)
    logit_w, mu, log_sigma = p.split(components, -1)
    sigma = torch.exp(log_sigma)
    lo, hi = -mu / sigma, (1.0 - mu) / sigma  # standardized bounds, (n, K)
    logw = F.log_softmax(logit_w, -1) + log_diff_ndtr(lo, hi)
    cdf = torch.softmax(logw, -1).cumsum(-1)
    k = (cdf[..., :-1] <= u.to(torch.float64)[..., None]).sum(-1, keepdim=True)  # (n, 1)
    lo, hi, mu, sigma = (t.gather(-1, k)[..., 0] for t in (lo, hi, mu, sigma))
    flip = lo > 0  # sample -y on [-hi, -lo] in the upper tail, where Phi loses precision
    a, b = torch.where(flip, -hi, lo), torch.where(flip, -lo, hi)
    v = u2.to(torch.float64).clamp(1e-300, 1.0)
    log_p = torch.logaddexp(torch.special.log_ndtr(a), torch.log(v) + log_diff_ndtr(a, b))
    y = torch.special.ndtri(torch.exp(log_p)).clamp(a, b)
    y = torch.where(flip, -y, y)
    return (mu + sigma * y).clamp(0.0, 1.0).to(params.dtype)


@torch.no_grad()
def frequency_bias(x: Tensor, levels: int) -> Tensor:
    """The output bias that makes an untrained model the independent-pixel fit of ``x``
    ``(N, D)`` (whole numbers ``0..K-1``): per dimension, the logit of the frequency of ones
    (binary, ``(D, 1)``) or the log-frequency of each level (``(D, K)``), with half a count added
    to every level. float64, on the CPU."""
    x = x.long().cpu()
    counts = torch.zeros(x.shape[1], levels, dtype=torch.float64)
    for i in range(0, len(x), 4096):
        chunk = x[i : i + 4096].T
        counts.scatter_add_(1, chunk, torch.ones(chunk.shape, dtype=torch.float64))
    f = ((counts + 0.5) / (counts.sum(1, keepdim=True) + 0.5 * levels)).log()
    return (f[:, 1] - f[:, 0]).unsqueeze(1) if levels == 2 else f


def head_for(levels: int | None, components: int = 1, truncated: bool = False):
    """The output head for data with ``levels`` discrete levels (None: real values; a mixture
    of ``components`` Gaussians, ``truncated`` to [0, 1] or not)."""
    if levels is None:
        if truncated:
            return TruncatedMixtureOfGaussians(components)
        return MixtureOfGaussians(components)
    if levels == 2:
        return Bernoulli()
    return Categorical(levels)
