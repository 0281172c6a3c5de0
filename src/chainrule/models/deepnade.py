"""Order-agnostic DeepNADE (Uria, Murray & Larochelle, "A Deep and Tractable Density
Estimator", ICML 2014; Uria et al., "Neural Autoregressive Distribution Estimation", JMLR 2016).

One network predicts every missing dimension from any set of observed ones: its input is the
observed values and the mask of which dimensions are observed, ``[x * m, m]``, through one to
three hidden layers, to the head parameters of every dimension. Under an ordering ``o``, step
``i``'s conditional is the network's output for ``o(i)`` with ``o(1..i-1)`` observed, so

    log p_o(x) = sum_i log p(x_{o(i)} | x_{o(<i)})       (D passes of the network, exactly)

Training draws, per example, an ordering and a split ``d`` uniformly, observes the first ``d``
dimensions and scores all the others: ``D / (D - d) * sum_{j missing} log p(x_j | x_obs)`` is an
unbiased estimate of the mean over orderings of ``log p_o(x)`` (the paper's rescaled loss).

Cost of exact ``log_prob`` (the D passes, batched): the first layer is a running sum over the
observed dimensions, so all D first-layer activations come from one cumulative sum, O(D H) per
image as in NADE; each further layer costs O(D H^2) per image (D passes of an H x H product),
and the output O(D H) (one output row per step). The memory is ``(B, D, H)`` per layer.

An ensemble of E orderings (the configured one and E-1 random ones) is their uniform mixture.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor, nn

from ..orderings import resolve_ordering
from .anyorder import OrderAgnosticConfig, OrderAgnosticModel, RunningDecoder, activate
from .options import check_int
from .registry import register


@dataclass
class DeepNADEConfig(OrderAgnosticConfig):
    """E orderings in the ensemble: the default one and random:(ensemble_seed + e), e >= 1."""

    ensemble_seed: int = field(
        default=1, metadata={"help": "orderings 2..E of an ensemble are random:(ensemble_seed + e)"}
    )

    def validate(self) -> None:
        super().validate()
        check_int(self.ensemble_seed, "ensemble_seed", 0)


@register
class DeepNADE(OrderAgnosticModel):
    """Order-agnostic DeepNADE, 1-3 hidden layers, with mask inputs (module doc)."""

    name: ClassVar[str] = "deep-nade"
    Config: ClassVar[type] = DeepNADEConfig
    members_differ_in_network: ClassVar[bool] = False
    train_defaults: ClassVar[dict] = {"lr": 1e-3}

    def __init__(self, event_shape, levels, config: DeepNADEConfig):
        config.validate()
        super().__init__(event_shape, levels, config)
        d, hid = self.dim, config.hidden
        self.weight_value = nn.Parameter(torch.randn(d, hid) / math.sqrt(d))  # W, by dimension
        self.weight_mask = nn.Parameter(torch.randn(d, hid) / math.sqrt(d))  # U, by dimension
        self.bias_hidden = nn.Parameter(torch.zeros(hid))
        self.upper = nn.ModuleList([nn.Linear(hid, hid) for _ in range(config.layers - 1)])
        orders = [resolve_ordering(config.ordering, self.event_shape)]
        for e in range(1, config.ensemble):
            orders.append(resolve_ordering(f"random:{config.ensemble_seed + e}", self.event_shape))
        self.register_buffer("orders", torch.stack(orders), persistent=False)  # (E, D)

    orders: Tensor

    def member_order(self, member: int) -> Tensor:
        return self.orders[member]

    def top(self, a: Tensor) -> Tensor:
        """First-layer activations ``(..., H)`` -> the last hidden layer."""
        act = self.config.activation
        h = activate(a, act)
        for layer in self.upper:
            h = activate(layer(h), act)
        return h

    def first_layer(self, x: Tensor, observed: Tensor) -> Tensor:
        """``c + W (x * m) + U m`` for values ``(B, D)`` and observed ``(B, D)`` (0/1)."""
        v = self.inputs(x) * observed
        return self.bias_hidden + v @ self.weight_value + observed @ self.weight_mask

    # ------------------------------------------------------------------ the family's hooks
    def step_params(self, x, order, member=0, steps=None):
        """Step i sees ``order[:i]``: the first layer of every step from one exclusive
        cumulative sum of the observed dimensions' columns, then the layers above and each
        step's own output row."""
        o = order if steps is None else order[:steps]
        cols = self.inputs(x[:, o]).unsqueeze(-1) * self.weight_value[o] + self.weight_mask[o]
        a = torch.cat([torch.zeros_like(cols[:, :1]), cols[:, :-1].cumsum(1)], 1)
        return self.output.per_step(self.top(self.bias_hidden + a), o)

    def training_log_prob(self, x: Tensor) -> Tensor:
        """The order-agnostic estimate: a random ordering and split per example; the first d
        dimensions observed; ``D / (D - d)`` times the log-likelihood of the others."""
        xf = x.flatten(1)
        b, d = xf.shape
        split = torch.randint(0, d, (b, 1), device=xf.device)
        rank = torch.rand(b, d, device=xf.device).argsort(1).argsort(1)  # a random ordering
        observed = (rank < split).to(xf.dtype)
        params = self.output(self.top(self.first_layer(xf, observed)))
        lp = self.head.log_prob(params, xf)
        return (lp * (1 - observed)).sum(1) * (d / (d - split[:, 0]).to(xf.dtype))

    def features(self, x: Tensor) -> Tensor:
        """The last hidden layer with every dimension observed, ``(B, H)``."""
        xf = self.check_images(x).flatten(1)
        return self.top(self.first_layer(xf, torch.ones_like(xf)))

    def decoder(self, n: int, part=0) -> RunningDecoder:
        """The running first layer gains ``W_d x_d + U_d`` per told value; each step runs the
        layers above once and its own output row."""
        p = self._part(part)

        def column(d: int, value: Tensor) -> Tensor:
            return self.inputs(value)[:, None] * self.weight_value[d] + self.weight_mask[d]

        def top(a: Tensor, d: int) -> Tensor:
            rows = torch.tensor([d], device=a.device)
            return self.output(self.top(a), rows=rows)[:, 0]

        return RunningDecoder(self.bias_hidden.expand(n, -1).clone(), p.order, column, top)


__all__ = ["DeepNADE", "DeepNADEConfig"]
