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
Function as NADE (:class:`chainrule.models.nade.BlockNADE`); the tests hold it to the
per-dimension loop (``tests/oracles/nade.py``).

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
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..distributions import (  # noqa: F401  (re-exported: the truncated mixture's pieces)
    head_for,
    log1mexp,
    log_diff_ndtr,
    mixture_log_mass,
    sample_truncated_mixture,
)
from ..orderings import check_ordering_spec
from .nade import BlockNADE, NADEFamilyConfig, activate
from .options import check_choice, check_int, ordering_field
from .ordered import OrderedModel
from .registry import register

SUPPORTS = ("unit", "real")


@dataclass
class RNADEConfig(NADEFamilyConfig):
    components: int = field(default=3, metadata={"help": "K Gaussians in each conditional mixture"})
    ordering: str | list[int] = ordering_field()
    support: str = field(
        default="unit",
        metadata={
            "help": "unit: mixtures truncated to [0, 1] (a proper density there); real: untruncated, as in the paper"
        },
    )

    def validate(self) -> None:
        self.check_shared(("auto", "block"))
        check_int(self.components, "components", 1)
        check_ordering_spec(self.ordering)
        check_choice(self.support, "support", SUPPORTS)


# ---------------------------------------------------------------------- the model
@register
class RNADE(OrderedModel):
    """RNADE over real values in [0, 1] (see the module doc)."""

    name = "rnade"
    Config = RNADEConfig
    supports = ("real",)

    def __init__(self, event_shape, levels, config: RNADEConfig):
        head = head_for(levels, config.components, truncated=config.support == "unit")
        super().__init__(event_shape, levels, config, head=head)
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

    def _ordered_params(self, xo: Tensor) -> Tensor:
        """``(B, D)`` values in visiting order -> ``(B, D, 3K)`` mixture parameters."""
        w, v, rho = self.weight_in[self.order], self.weight_out[self.order], self.rho[self.order]
        phi, act, c = xo.unsqueeze(-1), self.config.activation, self.bias_hidden
        pre = BlockNADE.apply(phi, w, c, v, rho, act, self.config.block)
        return pre + self.bias_out[self.order]

    def ordered_log_probs(self, xo: Tensor) -> Tensor:
        """Per-step log densities ``(B, D)`` in visiting order."""
        return self.head.log_prob(self._ordered_params(xo), xo)

    def _conditional_log_probs(self, x: Tensor) -> Tensor:
        return self.from_ordered(self.ordered_log_probs(self.to_ordered(x)))

    def features(self, x: Tensor) -> Tensor:
        """Hidden units after the whole image is seen, ``act(c + sum_j W_j x_j)``: (B, H)."""
        x = self.check_images(x)
        a = self.bias_hidden + x.flatten(1) @ self.weight_in[:, 0]
        return activate(a, self.config.activation)

    # ------------------------------------------------------------------ decoding
    # ``sample`` is the one sampler of :mod:`chainrule.sampling`; with ``support="real"`` values
    # outside [0, 1] are returned as drawn (see the module doc)
    def decoder(self, n: int, part: int = 0) -> RNADEDecoder:
        return RNADEDecoder(self, n)


class RNADEDecoder:
    """Incremental decoding of :class:`RNADE`: the running activation ``a`` ``(n, H)``; per
    step the mixture's parameters from ``act(rho_i a)``, and ``a += x_i W_i`` when told."""

    def __init__(self, model: RNADE, n: int):
        order = self.order = model.order
        self.w, self.v = model.weight_in[order, 0], model.weight_out[order]  # (D, H), (D, 3K, H)
        self.rho, self.bias = model.rho[order], model.bias_out[order]
        self.act = model.config.activation
        self.a = model.bias_hidden.expand(n, -1)

    def params(self, i: int) -> Tensor:
        return activate(self.rho[i] * self.a, self.act) @ self.v[i].T + self.bias[i]  # (n, 3K)

    def tell(self, i: int, value: Tensor) -> None:
        self.a = self.a + value[:, None] * self.w[i]
