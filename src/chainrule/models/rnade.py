"""RNADE: the real-valued NADE, each conditional a mixture of Gaussians.

Factorization over an ordering ``o`` of the D dimensions, values in [0, 1]:

    a_1 = c,    a_{i+1} = a_i + W_{o(i)} x_{o(i)}                  running activation, (H,)
    h_i = act(rho_{o(i)} a_i)                                       the paper's activation rescaling
    p(x_{o(i)} | x_<i) = sum_k alpha_k N(x_{o(i)}; mu_k, sigma_k^2)
    alpha = softmax(V^alpha h_i + b^alpha),  mu = V^mu h_i + b^mu,  sigma = exp(V^sigma h_i + b^sigma)

(Uria, Murray & Larochelle, "RNADE: The real-valued neural autoregressive density-estimator",
NIPS 2013). ``rho`` is one learned scale per dimension (initialized to 1): the paper introduced it
because a_i grows with i as more inputs are summed. O(DH) per image for the density and for
sampling, through the same running activation and the same blockwise recomputing autograd
Function as NADE (:class:`chainrule.models.nade.BlockNADE`); the naive per-dimension loop is kept
as the oracle.

Support. A Gaussian mixture lives on the whole real line, but this library's real-valued data
lie in [0, 1]. With ``support="unit"`` (the default) every conditional is the mixture
*truncated* to [0, 1] and renormalized,

    p(x | x_<i) = MoG(x) / sum_k alpha_k (Phi((1 - mu_k)/sigma_k) - Phi(-mu_k/sigma_k)),

so the model is a proper density on [0, 1]^D (it integrates to 1 there; it can only score
[0, 1] data higher than the untruncated mixture), and the sampler draws exactly from it: a
component with probability proportional to alpha_k times its mass in [0, 1], then a truncated
normal by the inverse CDF. With ``support="real"`` the conditionals are the paper's untruncated
mixtures; they put some mass outside [0, 1], which is lost on [0, 1] data, and ``sample`` returns
the draws as they are, so values outside [0, 1] occur (and ``log_prob`` refuses them, as it
refuses any real input outside [0, 1]).

8-bit images: dequantize ``x = (v + u) / 256`` with u ~ U[0, 1) (the trainer does); then
``-log p(x) + D ln 256`` is the discrete-equivalent NLL in nats, the figure comparable with
discrete models (an upper bound on the NLL of the discrete model that RNADE defines).

Known limits: one hidden layer; the mixture's components are tied to ``h_i`` linearly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..orderings import check_ordering_spec
from .base import draw_uniforms, warn_if_not_prefix
from .nade import ACTIVATIONS, BlockNADE, _check_int, activate, naive_preoutputs
from .ordered import OrderedModel
from .registry import register

SUPPORTS = ("unit", "real")


@dataclass
class RNADEConfig:
    hidden: int = 64  # H, hidden units
    components: int = 3  # K Gaussians per conditional
    activation: str = "sigmoid"  # "sigmoid" or "relu"
    ordering: str | list[int] = "raster"
    support: str = "unit"  # "unit": mixtures truncated to [0, 1]; "real": as in the paper
    impl: str = "auto"  # "auto" (= "block") | "naive" | "block"
    block: int = 32  # steps per block of the "block" path
    init_scale: float = 1.0

    def validate(self) -> None:
        check_ordering_spec(self.ordering)
        _check_int(self.hidden, "hidden", 1)
        _check_int(self.components, "components", 1)
        _check_int(self.block, "block", 1)
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        if self.support not in SUPPORTS:
            raise ValueError(f"support must be one of {SUPPORTS}, got {self.support!r}")
        if self.impl not in ("auto", "naive", "block"):
            raise ValueError(f"impl must be 'auto', 'naive' or 'block', got {self.impl!r}")
        if not self.init_scale >= 0:
            raise ValueError(f"init_scale must be >= 0, got {self.init_scale}")


# ---------------------------------------------------------------------- truncated mixtures
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


# ---------------------------------------------------------------------- the model
@register
class RNADE(OrderedModel):
    """RNADE over real values in [0, 1] (see the module doc)."""

    name = "rnade"
    Config = RNADEConfig
    supports = ("real",)

    def __init__(self, event_shape, levels, config: RNADEConfig):
        super().__init__(event_shape, levels, config, components=config.components)
        d, hid, k = self.dim, config.hidden, config.components
        s = config.init_scale
        self.weight_in = nn.Parameter(torch.randn(d, 1, hid) * s / math.sqrt(d))  # (D, 1, H)
        self.bias_hidden = nn.Parameter(torch.zeros(hid))  # c
        self.rho = nn.Parameter(torch.ones(d))  # activation rescaling, per dimension
        self.weight_out = nn.Parameter(torch.randn(d, 3 * k, hid) * s / math.sqrt(hid))
        bias = torch.zeros(d, 3 * k)
        bias[:, k : 2 * k] = (torch.arange(k) + 0.5) / k  # means spread over [0, 1]
        bias[:, 2 * k :] = math.log(0.5 / k)  # scales of about the spacing of the means
        self.bias_out = nn.Parameter(bias)  # (D, 3K): mixing logits, means, log sigmas

    @property
    def components(self) -> int:
        return self.config.components

    def _ordered_params(self, xo: Tensor, impl: str | None = None) -> Tensor:
        """``(B, D)`` values in visiting order -> ``(B, D, 3K)`` mixture parameters."""
        impl = impl or ("naive" if self.config.impl == "naive" else "block")
        w, v, rho = self.weight_in[self.order], self.weight_out[self.order], self.rho[self.order]
        phi, act, c = xo.unsqueeze(-1), self.config.activation, self.bias_hidden
        if impl == "naive":
            pre = naive_preoutputs(phi, w, c, v, rho, act)
        else:
            pre = BlockNADE.apply(phi, w, c, v, rho, act, self.config.block)
        return pre + self.bias_out[self.order]

    def ordered_log_probs(self, xo: Tensor, impl: str | None = None) -> Tensor:
        """Per-step log densities ``(B, D)`` in visiting order."""
        params = self._ordered_params(xo, impl)
        lp = self.head.log_prob(params, xo)
        if self.config.support == "unit":
            lp = lp - mixture_log_mass(params, self.components)
        return lp

    def _conditional_log_probs(self, x: Tensor) -> Tensor:
        return self.from_ordered(self.ordered_log_probs(self.to_ordered(x)))

    def features(self, x: Tensor) -> Tensor:
        """Hidden units after the whole image is seen, ``act(c + sum_j W_j x_j)``: (B, H)."""
        x = self.check_images(x)
        a = self.bias_hidden + x.flatten(1) @ self.weight_in[:, 0]
        return activate(a, self.config.activation)

    def _sample(self, n, given, mask, generator, **kwargs):
        """Ancestral sampling in O(DH) per image. With ``support="real"`` values outside
        [0, 1] are returned as drawn (see the module doc)."""
        if kwargs:
            raise ValueError(f"unexpected sample options for 'rnade': {sorted(kwargs)}")
        device, dtype, d, k = self._device, self._dtype, self.dim, self.components
        u = draw_uniforms(n, (d,), generator, device=device)
        u2 = draw_uniforms(n, (d,), generator, device=device)
        go = mo = None
        if given is not None:
            warn_if_not_prefix(mask.flatten(1), self.order)
            go, mo = self.to_ordered(given), self.to_ordered(mask)
        w, v = self.weight_in[self.order, 0], self.weight_out[self.order]  # (D, H), (D, 3K, H)
        rho, bias = self.rho[self.order], self.bias_out[self.order]
        act = self.config.activation
        xo = torch.zeros(n, d, device=device, dtype=dtype)
        a = self.bias_hidden.expand(n, -1)
        for i in range(d):
            params = activate(rho[i] * a, act) @ v[i].T + bias[i]  # (n, 3K)
            if self.config.support == "unit":
                value = sample_truncated_mixture(params, u[:, i], u2[:, i], k)
            else:
                value = self.head.sample(params, u[:, i], u2[:, i])
            if go is not None:
                value = torch.where(mo[:, i], go[:, i], value)
            xo[:, i] = value
            a = a + value[:, None] * w[i]
        return self.from_ordered(xo)
