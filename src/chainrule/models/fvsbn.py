"""FVSBN: the fully visible sigmoid belief network, the fully connected autoregressive model.

    p(x_{o(i)} = 1 | x_<i) = sigmoid(b_i + sum_{j<i} W_ij x_{o(j)})          (binary)
    p(x_{o(i)} = k | x_<i) = softmax(b_i + sum_{j<i} W_ij x_{o(j)} / (K-1))_k  (K levels)

Logistic (softmax) regression of each pixel on all previous ones in the ordering (Frey 1998;
the "fully connected" rung of the lecture). Binary: n(n+1)/2 parameters (n biases and the
strictly lower-triangular W). K levels: each previous pixel enters as its scaled value
x/(K-1), with K logits per step: K n(n+1)/2 parameters. The weight matrix is stored square with
a strictly-lower-triangular mask (a buffer) applied functionally, so only the n(n-1)/2 entries
under the diagonal are parameters; :meth:`num_parameters` counts exactly those.

Limits: O(n^2) parameters and time per image; each conditional is linear in the previous pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..orderings import check_ordering_spec
from .options import check_nonnegative, ordering_field
from .ordered import DiscreteOrderedModel
from .registry import register


@dataclass
class FVSBNConfig:
    ordering: str | list[int] = ordering_field()
    init_scale: float = field(
        default=0.01, metadata={"help": "standard deviation of the initial weights"}
    )

    def validate(self) -> None:
        check_ordering_spec(self.ordering)
        check_nonnegative(self.init_scale, "init_scale")


@register
class FVSBN(DiscreteOrderedModel):
    name = "fvsbn"
    Config = FVSBNConfig
    train_defaults = {"lr": 1e-2, "epochs": 40}

    mask: Tensor

    def __init__(self, event_shape, levels, config: FVSBNConfig):
        super().__init__(event_shape, levels, config)
        d, p = self.dim, self.head.num_params
        # weight[i, :, j]: effect of step j on the logits of step i (in visiting order)
        self.weight = nn.Parameter(torch.randn(d, p, d) * config.init_scale)  # (D, P, D)
        self.bias = nn.Parameter(torch.zeros(d, p))  # (D, P)
        self.register_buffer("mask", torch.ones(d, d).tril(-1), persistent=False)  # j < i

    def num_parameters(self) -> int:
        d, p = self.dim, self.head.num_params
        return p * d * (d - 1) // 2 + p * d

    def _scale(self, xo: Tensor) -> Tensor:
        return xo if self.levels == 2 else xo / (self.levels - 1)

    def _ordered_params(self, xo: Tensor) -> Tensor:
        w = self.weight * self.mask.unsqueeze(1)  # (D, P, D), only j < i
        return torch.einsum("ipj,bj->bip", w, self._scale(xo)) + self.bias  # (B, D, P)

    def _step_params(self, xo, i):
        w = self.weight[i, :, :i]  # (P, i): the mask is all ones there
        return self._scale(xo[:, :i]) @ w.T + self.bias[i]
