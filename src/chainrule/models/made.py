"""MADE: the masked autoencoder for distribution estimation (Germain, Gregor, Murray &
Larochelle, "MADE: Masked Autoencoder for Distribution Estimation", ICML 2015).

An autoencoder whose weights are masked so that output d sees only the inputs that come before
d in an ordering: every input gets the degree ``m(d)`` = its position in the ordering (1..D),
every hidden unit a degree drawn in ``[min of the layer below, D - 1]``, and a connection is kept
when it does not decrease the degree (strictly increases it into the outputs). One pass gives all
D conditionals, so ``log_prob`` costs one forward pass per member.

Connectivity-agnostic and order-agnostic training: the hidden degrees (the *connectivity*) and
the input ordering are drawn anew at each training step (``masks=0``) or cycled through a fixed
set of M (``masks=M``); at test time the model is the uniform mixture of E connectivities
(``ensemble``), ``log p(x) = log mean_e p_e(x)``. Because a member's hidden degrees do not depend
on the ordering, the same network gives an exact model for *any* ordering (see
:mod:`chainrule.models.anyorder`): exact completion of any mask and exact marginals.

K levels: the input is the scaled value ``x / (K - 1)``; the outputs are rank-M softmax logits
around a per-dimension bias (as NADE's).

Direct connections (``direct``, as the MADE paper's MNIST models): every output also sees the
earlier inputs through one masked weight each (an FVSBN inside the MADE), ``D x M x D`` more
parameters; the nearest pixels then reach every output whatever the hidden degrees drawn.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor, nn

from ..orderings import inverse, resolve_ordering
from .anyorder import OrderAgnosticConfig, OrderAgnosticModel, RunningDecoder, activate
from .options import check_choice, check_int
from .registry import register

MEMBER_ORDERINGS = ("shared", "own")


@dataclass
class MADEConfig(OrderAgnosticConfig):
    order_agnostic: bool = field(
        default=True,
        metadata={
            "help": "train over random orderings (what makes completion of any mask good); "
            "false: the configured ordering only"
        },
    )
    masks: int = field(
        default=0,
        metadata={
            "help": "connectivity-agnostic training: 0 draws new masks every step, M cycles "
            "through a fixed set of M (members 0..M-1)"
        },
    )
    member_orderings: str = field(
        default="shared",
        metadata={
            "help": "shared: every member uses the default ordering; own: member e >= 1 uses "
            "random:(mask_seed + e), as trained with masks=M"
        },
    )
    mask_seed: int = field(default=0, metadata={"help": "seed of the members' masks"})
    direct: bool = field(
        default=False,
        metadata={
            "help": "direct masked connections from the inputs to the outputs, as the MADE "
            "paper's MNIST models (D x M x D more weights)"
        },
    )

    def max_layers(self) -> int:
        return 5

    def validate(self) -> None:
        super().validate()
        for name in ("masks", "mask_seed"):
            check_int(getattr(self, name), name, 0)
        check_choice(self.member_orderings, "member_orderings", MEMBER_ORDERINGS)
        for name in ("order_agnostic", "direct"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.member_orderings == "own" and not self.order_agnostic:
            raise ValueError(
                "member_orderings own gives the members orderings of their own, which only "
                "order-agnostic training trains: set order_agnostic true, or member_orderings shared"
            )


def hidden_degrees(d: int, hidden: int, layers: int, generator: torch.Generator | None):
    """The MADE degrees of the hidden units, ``layers`` tensors ``(H,)``: layer l's in
    ``[min of layer l-1, D-1]`` (the inputs' minimum is 1), at least 1."""
    degs, low = [], 1
    for _ in range(layers):
        deg = torch.randint(low, max(d, low + 1), (hidden,), generator=generator)
        degs.append(deg)
        low = int(deg.min())
    return degs


@register
class MADE(OrderAgnosticModel):
    """MADE with one or more hidden layers, connectivity- and order-agnostic (module doc)."""

    name: ClassVar[str] = "made"
    Config: ClassVar[type] = MADEConfig
    train_defaults: ClassVar[dict] = {"lr": 1e-3}

    training_steps: Tensor

    def __init__(self, event_shape, levels, config: MADEConfig):
        config.validate()
        super().__init__(event_shape, levels, config)
        d, hid = self.dim, config.hidden
        self.weights = nn.ParameterList(
            [nn.Parameter(torch.randn(hid, d) / d**0.5)]
            + [nn.Parameter(torch.randn(hid, hid) / hid**0.5) for _ in range(config.layers - 1)]
        )
        self.biases = nn.ParameterList(
            [nn.Parameter(torch.zeros(hid)) for _ in range(config.layers)]
        )
        if config.direct:  # output d, pre-output m <- input j (masked: j before d)
            self.direct = nn.Parameter(torch.zeros(d, self.output.m, d))
        # training steps taken (cycles the fixed set of masks; saved, so resuming continues it)
        self.register_buffer("training_steps", torch.zeros((), dtype=torch.int64))
        self._degrees: dict[int, list[Tensor]] = {}

    # ------------------------------------------------------------------ masks
    def member_seed(self, member: int) -> int:
        return self.config.mask_seed + member

    def degrees(self, member: int) -> list[Tensor]:
        """Member ``member``'s hidden degrees (deterministic from ``mask_seed``)."""
        if member not in self._degrees:
            g = torch.Generator().manual_seed(1_000_003 * (self.member_seed(member) + 1))
            cfg = self.config
            self._degrees[member] = hidden_degrees(self.dim, cfg.hidden, cfg.layers, g)
        return self._degrees[member]

    def member_order(self, member: int) -> Tensor:
        if member == 0 or self.config.member_orderings == "shared":
            return self.order
        seed = self.member_seed(member)
        return resolve_ordering(f"random:{seed}", self.event_shape).to(self.order.device)

    def masks_for(self, order: Tensor, degrees: list[Tensor]) -> list[Tensor]:
        """The connectivity masks of an ordering and hidden degrees: input -> layer 1,
        layer l-1 -> l, ..., last layer -> output ``(D, H)``, and with ``direct`` input ->
        output ``(D, D)``; booleans."""
        dev = self.order.device
        in_deg = inverse(order).to(dev) + 1  # position of each dimension in the ordering, 1..D
        degs = [g.to(dev) for g in degrees]
        masks = [degs[0][:, None] >= in_deg[None, :]]
        masks += [degs[i][:, None] >= degs[i - 1][None, :] for i in range(1, len(degs))]
        masks.append(in_deg[:, None] > degs[-1][None, :])
        if self.config.direct:
            masks.append(in_deg[:, None] > in_deg[None, :])
        return masks

    def direct_weight(self, mask: Tensor) -> Tensor:
        """The masked direct weights ``(D, M, D)`` (output, pre-output, input)."""
        return self.direct * mask[:, None, :].to(self.direct.dtype)

    def hidden(self, x: Tensor, masks: list[Tensor]) -> Tensor:
        """The last hidden layer, ``(B, D) -> (B, H)``."""
        h = self.inputs(x)
        for w, b, m in zip(self.weights, self.biases, masks, strict=False):
            h = activate(torch.addmm(b, h, (w * m).T), self.config.activation)
        return h

    def forward_masks(self, x: Tensor, masks: list[Tensor]) -> Tensor:
        """All D conditionals' parameters, ``(B, D) -> (B, D, P)`` in the image layout."""
        h, layers = self.hidden(x, masks), self.config.layers
        extra = None
        if self.config.direct:
            extra = torch.einsum("bj,dmj->bdm", self.inputs(x), self.direct_weight(masks[-1]))
        return self.output(h, mask=masks[layers], extra=extra)

    # ------------------------------------------------------------------ the family's hooks
    def step_params(self, x, order, member=0, steps=None):
        params = self.forward_masks(x, self.masks_for(order, self.degrees(member)))
        return params[:, order if steps is None else order[:steps]]

    def training_log_prob(self, x: Tensor) -> Tensor:
        """log p(x) under this step's mask: drawn anew (``masks=0``) or the next of the fixed
        set, and a random ordering when ``order_agnostic`` (the stochastic objective)."""
        cfg, xf = self.config, x.flatten(1)
        step = int(self.training_steps)
        self.training_steps.add_(1)
        if cfg.masks == 0:
            degrees = hidden_degrees(self.dim, cfg.hidden, cfg.layers, None)
            order = torch.randperm(self.dim) if cfg.order_agnostic else self.order
        else:
            member = step % cfg.masks
            degrees = self.degrees(member)
            if cfg.order_agnostic and cfg.member_orderings == "shared":
                order = torch.randperm(self.dim)
            else:
                order = self.member_order(member) if cfg.order_agnostic else self.order
        params = self.forward_masks(xf, self.masks_for(order.to(self.order.device), degrees))
        return self.head.log_prob(params, xf).sum(1)

    def features(self, x: Tensor) -> Tensor:
        """The last hidden layer of member 0 under the default ordering, ``(B, H)``."""
        x = self.check_images(x)
        return self.hidden(x.flatten(1), self.masks_for(self.order, self.degrees(0)))

    def decoder(self, n: int, part=0) -> RunningDecoder:
        """One masked column per told value; the layers above and one output row per step."""
        p = self._part(part)
        masks = self.masks_for(p.order, self.degrees(p.member))
        n_layers = self.config.layers
        w1 = self.weights[0] * masks[0]  # (H, D)
        layers = zip(self.weights[1:], self.biases[1:], masks[1:n_layers], strict=True)
        upper = [(w * m, b) for w, b, m in layers]
        out_mask, act, scale = masks[n_layers], self.config.activation, self.inputs
        direct = self.direct_weight(masks[-1]) if self.config.direct else None
        told = w1.new_zeros(n, self.dim)  # the scaled values told so far (direct connections)

        def column(d: int, value: Tensor) -> Tensor:
            v = scale(value)
            if direct is not None:
                told[:, d] = v
            return v[:, None] * w1[:, d]

        def top(a: Tensor, d: int) -> Tensor:
            h = activate(a, act)
            for w, b in upper:
                h = activate(torch.addmm(b, h, w.T), act)
            rows = torch.tensor([d], device=h.device)
            extra = None if direct is None else (told @ direct[d].T)[:, None]
            return self.output(h, mask=out_mask[rows], rows=rows, extra=extra)[:, 0]

        return RunningDecoder(self.biases[0].expand(n, -1).clone(), p.order, column, top)


__all__ = ["MADE", "MADEConfig", "hidden_degrees"]
