"""Order-agnostic models: one network for every ordering of the pixels (MADE, DeepNADE).

The chain rule holds for every ordering ``o`` of the D dimensions. A model of this family is
trained for all orderings at once, so it can be *evaluated* under any of them:

    log p_o(x) = sum_i log p(x_{o(i)} | x_{o(1)}, ..., x_{o(i-1)})          (exact, for each o)

and an ensemble of E members (hidden connectivities for MADE, orderings for DeepNADE) is the
uniform mixture ``log p(x) = logsumexp_e log p_e(x) - log E`` (a mixture of joints).

What follows from it, and what no fixed-ordering model can do exactly:

* ``ordering_for(mask)``: the given-first ordering of a mask (the given dimensions in the
  model's ordering, then the missing ones in the same relative order);
* ``log_prob_observed(x, mask)``: the exact marginal log p(x_given) of the observed dimensions
  alone, the sum of the first ``|given|`` conditionals under ``ordering_for(mask)``;
* ``sample(n, given=x, mask=m)``: an exact draw from p(missing | given) of the model under
  ``ordering_for(mask)``, for a mask of any shape. For an ensemble each image first picks its
  member from the posterior p(e | given), so the draw is from the mixture's conditional.

A subclass supplies ``step_params(x, order, member, steps)`` (every step's head parameters under
an ordering), a ``decoder`` (incremental sampling) and ``training_log_prob`` (the stochastic
order-agnostic objective the trainer maximizes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from .. import sampling
from ..distributions import frequency_bias, head_for
from ..orderings import SPEC_NAMES, check_ordering_spec, given_first, resolve_ordering
from .base import AutoregressiveModel
from .options import check_choice, check_int, ordering_field

ACTIVATIONS = ("relu", "sigmoid")


def activate(a: Tensor, activation: str) -> Tensor:
    return torch.relu(a) if activation == "relu" else torch.sigmoid(a)


@dataclass(frozen=True)
class Part:
    """One component of a sampling run: ensemble ``member`` decoding in ``order`` ``(D,)``."""

    member: int
    order: Tensor


@dataclass
class OrderAgnosticConfig:
    """The options MADE and DeepNADE share (each adds its own)."""

    hidden: int = field(
        default=64, metadata={"help": "H, hidden units per layer (the papers: 500)"}
    )
    layers: int = field(default=1, metadata={"help": "hidden layers"})
    activation: str = field(default="relu", metadata={"help": "hidden activation: relu or sigmoid"})
    ordering: str | list[int] = ordering_field(
        f"the default ordering: {SPEC_NAMES} or a permutation"
    )
    ensemble: int = field(default=1, metadata={"help": "E members averaged at test time"})
    embed_dim: int = field(
        default=16, metadata={"help": "K levels only: M = min(embed_dim, K) output dimensions"}
    )

    def validate(self) -> None:
        check_ordering_spec(self.ordering)
        for name in ("hidden", "ensemble", "embed_dim"):
            check_int(getattr(self, name), name, 1)
        check_int(self.layers, "layers", 1)
        if self.layers > self.max_layers():
            raise ValueError(f"layers must be at most {self.max_layers()}, got {self.layers}")
        check_choice(self.activation, "activation", ACTIVATIONS)

    def max_layers(self) -> int:
        """The most hidden layers this model takes."""
        return 3


def mask_groups(mask: Tensor):
    """The images ``(n,)`` grouped by their mask ``(n, D)``: yields ``(row, index)``, each
    distinct mask ``(D,)`` and the indices of the images that have it."""
    rows, groups = torch.unique(mask, dim=0, return_inverse=True)
    for g in range(rows.shape[0]):
        yield rows[g], (groups == g).nonzero()[:, 0]


class OutputLayer(nn.Module):
    """Hidden units ``(..., H)`` -> head parameters of every dimension ``(..., D, P)``.

    Binary: one logit per dimension, ``V_d . h + b_d``. K levels: a softmax whose logits are
    ``E_out (V_d h) + b_d`` with ``V_d`` M x H, rank M around a per-dimension bias (as NADE).
    ``rows`` picks the dimensions to compute (a step's one dimension while sampling);
    ``mask`` ``(D, H)`` zeroes the connections a MADE may not use; ``extra`` ``(..., D, M)``
    (or the rows') is added to the pre-outputs (MADE's direct connections).
    """

    def __init__(self, d: int, hidden: int, levels: int, embed_dim: int):
        super().__init__()
        self.levels = levels
        self.m = 1 if levels == 2 else min(embed_dim, levels)
        self.weight = nn.Parameter(torch.randn(d, self.m, hidden) / math.sqrt(hidden))
        self.bias = nn.Parameter(torch.zeros(d, 1 if levels == 2 else levels))
        if levels > 2:
            self.embed = nn.Parameter(torch.randn(levels, self.m))

    def forward(
        self,
        h: Tensor,
        mask: Tensor | None = None,
        rows: Tensor | None = None,
        extra: Tensor | None = None,
    ) -> Tensor:
        w: Tensor = self.weight
        b: Tensor = self.bias
        if rows is not None:
            w, b = w[rows], b[rows]
        if mask is not None:
            w = w * mask.unsqueeze(1).to(w.dtype)
        pre = torch.einsum("...h,dmh->...dm", h, w)
        return self.finish(pre if extra is None else pre + extra, b)

    def per_step(self, h: Tensor, order: Tensor) -> Tensor:
        """``h`` ``(B, k, H)``: step ``i``'s hidden units -> ``(B, k, P)`` the parameters of
        dimension ``order[i]`` alone at each step (one row of V per step)."""
        return self.finish(torch.einsum("bkh,kmh->bkm", h, self.weight[order]), self.bias[order])

    def finish(self, pre: Tensor, bias: Tensor) -> Tensor:
        """Pre-outputs ``(..., M)`` and biases ``(..., P)`` -> head parameters ``(..., P)``."""
        return pre + bias if self.levels == 2 else pre @ self.embed.T + bias

    @torch.no_grad()
    def init_bias(self, x: Tensor) -> None:
        """The data's per-dimension log-frequencies (binary: logits of the means)."""
        self.bias.copy_(frequency_bias(x, self.levels).to(self.bias))


class OrderAgnosticModel(AutoregressiveModel):
    """Base of the order-agnostic family (see module doc). The config has ``ordering`` (the
    default ordering), ``ensemble`` (E) and the subclass's own fields."""

    supports_orderings: ClassVar[bool] = True
    supports_completion_any_mask: ClassVar[bool] = True
    #: whether the members of an ensemble differ in their network (MADE's connectivities) or
    #: only in their ordering (DeepNADE): with an ordering given, the latter are one model
    members_differ_in_network: ClassVar[bool] = True

    order: Tensor

    def __init__(self, event_shape, levels, config):
        super().__init__(event_shape, levels, config)
        self.head = head_for(levels)
        self.register_buffer(
            "order", resolve_ordering(config.ordering, self.event_shape), persistent=False
        )
        self.output = OutputLayer(self.dim, config.hidden, levels, config.embed_dim)

    # ------------------------------------------------------------------ to implement
    def step_params(
        self, x: Tensor, order: Tensor, member: int = 0, steps: int | None = None
    ) -> Tensor:  # pragma: no cover - abstract
        """``x`` ``(B, D)`` (flat image layout) -> ``(B, k, P)``: the head parameters of step
        ``i`` (dimension ``order[i]``) given ``x[:, order[:i]]``, for the first ``k = steps``
        steps (all D by default), under ensemble member ``member``."""
        raise NotImplementedError

    # ------------------------------------------------------------------ orderings
    @property
    def discrete_levels(self) -> int:
        """K (the family is discrete)."""
        assert self.levels is not None
        return self.levels

    def inputs(self, x: Tensor) -> Tensor:
        """Values as the network takes them: binary as they are, K levels scaled to [0, 1]."""
        return x if self.levels == 2 else x / (self.discrete_levels - 1)

    @property
    def members(self) -> int:
        return self.config.ensemble

    def member_order(self, member: int) -> Tensor:
        """The ordering member ``member`` uses when none is given (default: the model's)."""
        return self.order

    def resolve(self, ordering: Any) -> Tensor:
        """An ordering spec (``"raster"``, ``"random:SEED"``, a list or a tensor) -> ``(D,)``."""
        if isinstance(ordering, Tensor):
            ordering = ordering.tolist()
        return resolve_ordering(ordering, self.event_shape).to(self.order.device)

    def ordering_for(self, mask: Any) -> Tensor:
        """The given-first ordering of ``mask`` (True = given; ``(C, H, W)``, ``(1, C, H, W)``
        or flat ``(D,)``): the given dimensions in the model's ordering, then the missing ones
        in the same relative order. ``(D,)`` int64, deterministic."""
        m = torch.as_tensor(mask)
        if m.dtype != torch.bool or m.numel() != self.dim:
            raise ValueError(
                f"mask must be a boolean tensor of {self.dim} values (one image, "
                f"{self.event_shape}), got dtype {m.dtype} and shape {tuple(m.shape)}"
            )
        return given_first(self.order, m)

    # ------------------------------------------------------------------ densities
    def log_prob(self, x: Tensor, ordering: Any = None) -> Tensor:
        """Exact log p(x) in nats, ``(B,)``: the ensemble's mixture under each member's own
        ordering, or, with ``ordering`` given, every member under that ordering."""
        order = None if ordering is None else self.resolve(ordering)
        return self._log_prob(self.check_images(x), order)

    def log_prob_unchecked(self, x: Tensor) -> Tensor:
        return self._log_prob(x, None)

    def _log_prob(self, x: Tensor, order: Tensor | None) -> Tensor:
        xf = x.flatten(1)
        n_e = self.members
        if order is not None and not self.members_differ_in_network:
            n_e = 1  # the members differ only in their orderings, and the ordering is given
        joints = []
        for e in range(n_e):
            o = self.member_order(e) if order is None else order
            joints.append(self.head.log_prob(self.step_params(xf, o, e), xf[:, o]).sum(1))
        if n_e == 1:
            return joints[0]
        return torch.logsumexp(torch.stack(joints), 0) - math.log(n_e)

    def member_log_probs_observed(self, x: Tensor, mask_row: Tensor) -> Tensor:
        """``(B, E)`` log p_e(x_given) of each member under the given-first ordering of one
        mask ``mask_row`` ``(D,)`` (x checked)."""
        order, k = self.ordering_for(mask_row), int(mask_row.sum())
        xf = x.flatten(1)
        n_e = self.members if self.members_differ_in_network else 1
        out = xf.new_zeros(xf.shape[0], n_e)
        if k == 0:
            return out
        for e in range(n_e):
            params = self.step_params(xf, order, e, k)
            out[:, e] = self.head.log_prob(params, xf[:, order[:k]]).sum(1)
        return out

    def log_prob_observed(self, x: Tensor, mask: Any) -> Tensor:
        """Exact log p(x_given) in nats ``(B,)``: the marginal of the observed dimensions
        (``mask`` True), summed over every value of the missing ones, under the given-first
        ordering ``ordering_for(mask)`` (each image's own mask, or one mask for all).

        Args:
            x: ``(B, C, H, W)`` images (their missing values are ignored).
            mask: boolean, broadcastable to ``x`` (or one flat ``(D,)`` mask); True marks the
                observed dimensions.
        """
        x = self.check_images(x)
        m = torch.as_tensor(mask)
        if m.dtype != torch.bool:
            raise ValueError(f"mask must be a boolean tensor, got dtype {m.dtype}")
        if m.dim() == 1 and m.numel() == self.dim:  # one flat mask
            m = m.reshape(self.event_shape)
        try:
            m = torch.broadcast_to(m.to(x.device), x.shape).flatten(1)
        except RuntimeError:
            raise ValueError(
                f"mask of shape {tuple(m.shape)} does not broadcast to {tuple(x.shape)}"
            ) from None
        out = x.new_empty(x.shape[0])
        for row, r in mask_groups(m):
            lp = self.member_log_probs_observed(x[r], row)
            n_e = lp.shape[1]
            out[r] = lp[:, 0] if n_e == 1 else torch.logsumexp(lp, 1) - math.log(n_e)
        return out

    def _conditional_log_probs(self, x: Tensor) -> Tensor:
        if self.members > 1:
            raise ValueError(
                f"per-dimension conditionals of an ensemble of {self.members} members are not "
                "defined (it is a mixture); use log_prob, or ensemble=1"
            )
        xf, o = x.flatten(1), self.member_order(0)
        lp = self.head.log_prob(self.step_params(xf, o, 0), xf[:, o])
        out = torch.empty_like(lp)
        out[:, o] = lp
        return out.reshape(x.shape)

    @torch.no_grad()
    def init_output_bias(self, x: Tensor) -> None:
        """Set the output biases to the data's per-dimension log-frequencies (a trainer hook
        for recipes: the untrained model starts as the independent-pixel fit)."""
        self.output.init_bias(self.check_images(x).flatten(1))

    # ------------------------------------------------------------------ decoding protocol
    def _part(self, part: int | Part) -> Part:
        return part if isinstance(part, Part) else Part(part, self.member_order(part))

    def decoder_order(self, part: int | Part = 0) -> Tensor:
        return self._part(part).order

    def teacher_params(self, xo: Tensor, part: int | Part = 0) -> Tensor:
        p = self._part(part)
        x = torch.empty_like(xo)
        x[:, p.order] = xo
        return self.step_params(x, p.order, p.member)

    def choose_parts(self, n, given, mask, generator):
        """Each image's member and ordering. Unconditional: a member drawn uniformly (its own
        ordering). Completion: the given-first ordering of the image's mask, and a member drawn
        from p(e | given) under it. Draws one uniform per image (after the per-dimension ones)
        when there is more than one member."""
        if given is None:
            n_e = self.members
            if n_e == 1:
                return None
            u = sampling.draw_uniforms(n, (1,), generator, device=self._device)[:, 0]
            return (u * n_e).long().clamp_(max=n_e - 1)
        n_e = self.members if self.members_differ_in_network else 1
        groups = list(mask_groups(mask.flatten(1)))
        comp = torch.zeros(n, dtype=torch.int64, device=mask.device)  # each image's mask group
        logw = torch.zeros(n, n_e, dtype=torch.float64, device=mask.device)
        for g, (row, r) in enumerate(groups):
            comp[r] = g
            if n_e > 1:
                logw[r] = self.member_log_probs_observed(given[r], row).double()
        if n_e > 1:
            u = sampling.draw_uniforms(n, (1,), generator, device=self._device)[:, 0]
            cdf = torch.softmax(logw, 1).cumsum(1)
            comp = comp * n_e + (cdf[:, :-1] <= u[:, None].double()).sum(1)
        keys = [Part(e, self.ordering_for(row)) for row, _ in groups for e in range(n_e)]
        return comp, keys


class RunningDecoder:
    """Incremental decoding for a network whose first layer sums one column per observed
    dimension (MADE's masked product, DeepNADE's value and mask inputs): the running first-layer
    activation ``a`` ``(n, H)`` gains a column when a value is told; a step's parameters come
    from the layers above it and the output row of that step's dimension alone.

    Args:
        a0: ``(n, H)`` the first layer's activation before anything is observed.
        order: ``(D,)`` the dimension decoded at each step.
        column: ``(d, value (n,)) -> (n, H)`` what observing ``value`` at dimension ``d`` adds.
        top: ``(a (n, H), d) -> (n, P)`` the head parameters of dimension ``d``.
    """

    def __init__(self, a0: Tensor, order: Tensor, column, top):
        self.a, self.order, self.column, self.top = a0, order, column, top
        self.dims = order.tolist()

    def params(self, i: int) -> Tensor:
        return self.top(self.a, self.dims[i])

    def tell(self, i: int, value: Tensor) -> None:
        self.a = self.a + self.column(self.dims[i], value)
