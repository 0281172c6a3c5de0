"""A uniform mixture of separately trained models: an ensemble of networks and orderings.

K models of the same images (same shape and levels), each exact on its own, make the model

    p(x) = (1/K) sum_k p_k(x),      log p(x) = logsumexp_k log p_k(x) - log K,

which is a normalized distribution whatever the members are (the mixture of joints, never an
average of conditionals). Members trained on different orderings disagree where each is weak,
which is why such a mixture beats its best member: the NADE papers' ordering ensembles
(Uria et al. 2016), here with a network per ordering instead of one shared network.

Made from checkpoints by ``chainrule mix RUN RUN ... --out DIR`` (or
:func:`from_models`); a mixture checkpoint is an ordinary one (safetensors plus JSON, the
members' configs in the JSON), so ``eval``, ``sample``, ``complete``, ``score``, ``detect`` and
``features`` take it like any other.

* Sampling: each image picks a member uniformly (one uniform per image, drawn after the
  per-dimension ones), then that member's decoder draws it: the one sampler of
  :mod:`chainrule.sampling`, each member on its own rows.
* Completion: exact when the given pixels are a prefix of every member's ordering; each image
  then picks member k with probability p(k | given) ∝ p_k(given), the product of that member's
  first conditionals. Otherwise members are picked uniformly and a warning says that the
  completion is not an exact draw from p(rest | given).
* Marginals: ``log_prob_observed(x, mask)``, exact for the same masks (the log of the mean of
  the members' prefix likelihoods); ``score --mask`` / ``detect --mask`` use it.
* Per-dimension conditionals are not defined (``has_conditionals`` is False); ``features``
  are the members' features side by side.

Members must each have a single ordering (an NADE ensemble or an order-agnostic MADE /
DeepNADE ensemble is a mixture already: use its own ``ensemble`` option), and no member may be
a mixture itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch import Tensor, nn

from .. import sampling
from .base import AutoregressiveModel, config_from_options
from .registry import model_class, register


def _check_members(members: Any) -> None:
    if not isinstance(members, (list, tuple)) or len(members) < 1:
        raise ValueError("a mixture needs a list of one or more members")
    for i, m in enumerate(members):
        if not (isinstance(m, dict) and isinstance(m.get("model"), str)):
            raise ValueError(f"mixture member {i} must be a dict with a 'model' name")
        if not isinstance(m.get("config", {}), dict):
            raise ValueError(f"mixture member {i}'s 'config' must be a dict of options")
        if m["model"] == "mixture":
            raise ValueError(f"mixture member {i} is a mixture: give its members instead")


@dataclass
class MixtureConfig:
    members: list = field(
        default_factory=list,
        metadata={"help": "the members: a list of {'model': NAME, 'config': {options}}"},
    )

    def validate(self) -> None:
        _check_members(self.members)


@register
class Mixture(AutoregressiveModel):
    """The uniform mixture of K member models (see module doc)."""

    name = "mixture"
    Config = MixtureConfig
    supports = ("binary", "discrete", "real")
    supports_orderings = False
    listed = False  # made from trained models (``chainrule mix``), not trained from scratch

    def __init__(self, event_shape, levels, config: MixtureConfig):
        super().__init__(event_shape, levels, config)
        members = []
        for i, m in enumerate(config.members):
            cls = model_class(m["model"])
            member_config = config_from_options(cls.Config, dict(m.get("config") or {}), cls.name)
            member = cls(self.event_shape, levels, member_config)
            if not member.has_conditionals:
                raise ValueError(
                    f"mixture member {i} ({cls.name}) is an ensemble already: a member needs "
                    "a single ordering (ensemble=1)"
                )
            members.append(member)
        self.members = nn.ModuleList(members)
        head = members[0].head
        for i, member in enumerate(members):
            if type(member.head) is not type(head) or vars(member.head) != vars(head):
                raise ValueError(
                    f"mixture member {i} ({member.name}) has another output head than member 0 "
                    f"({type(member.head).__name__} vs {type(head).__name__}): members must "
                    "draw their values the same way"
                )
        self.head = head
        threads = [m.sample_threads for m in members if m.sample_threads]
        # the fewest threads a member samples on (an instance's value of the class setting)
        object.__setattr__(self, "sample_threads", min(threads) if threads else None)

    @property
    def each(self) -> list[AutoregressiveModel]:
        """The members, typed (``self.members`` is their ``nn.ModuleList``)."""
        return [cast(AutoregressiveModel, m) for m in self.members]

    @property
    def num_members(self) -> int:
        return len(self.members)

    @property
    def has_conditionals(self) -> bool:
        return False

    # ------------------------------------------------------------------ density
    def member_log_probs(self, x: Tensor) -> Tensor:
        """Each member's exact log p_k(x) of checked images: ``(K, B)``."""
        return torch.stack([m.log_prob_unchecked(x) for m in self.each])

    def log_prob_unchecked(self, x: Tensor) -> Tensor:
        """Exact log p(x) in nats, ``(B,)``: the log of the uniform mixture of the members."""
        return torch.logsumexp(self.member_log_probs(x), 0) - math.log(self.num_members)

    def _conditional_log_probs(self, x: Tensor) -> Tensor:
        raise ValueError(
            f"per-dimension conditionals of a mixture of {self.num_members} models are not "
            "defined (its joint is a mixture); use log_prob, or a member"
        )

    def features(self, x: Tensor) -> Tensor:
        """The members' features side by side: ``(B, F_1 + ... + F_K)``."""
        x = self.check_images(x)
        return torch.cat([m.features(x) for m in self.each], 1)

    # ------------------------------------------------------------------ sampling protocol
    def decoder(self, n: int, part: int = 0):
        return self.each[part].decoder(n, 0)

    def decoder_order(self, part: int = 0) -> Tensor:
        return self.each[part].decoder_order(0)

    def teacher_params(self, xo: Tensor, part: int = 0) -> Tensor:
        return self.each[part].teacher_params(xo, 0)

    @property
    def orders(self) -> Tensor:
        """Each member's ordering, ``(K, D)`` (as an NADE ensemble's ``orders``)."""
        return torch.stack([self.decoder_order(i) for i in range(self.num_members)])

    def is_prefix_of_every_member(self, mask: Tensor) -> bool:
        """Whether the given dimensions (``mask`` ``(n, D)``, flat) come first in every
        member's ordering: then their marginal and the completion are exact."""
        return all(sampling.is_prefix(mask, o) for o in self.orders)

    def _prefix_log_probs(self, x: Tensor, m: Tensor) -> Tensor:
        """Each member's log p_k(x_given) for a flat ``(B, D)`` mask that is a prefix of its
        ordering (the sum of its first conditionals, which ignore the rest): ``(B, K)``."""
        return torch.stack(
            [
                torch.where(m, lp, torch.zeros_like(lp)).sum(1)
                for lp in (member._conditional_log_probs(x).flatten(1) for member in self.each)
            ],
            1,
        )

    def log_prob_observed(self, x: Tensor, mask: Any) -> Tensor:
        """log p(x_given) in nats, ``(B,)``, of the dimensions where ``mask`` (``(C, H, W)`` or
        ``(B, C, H, W)`` booleans) is True, every value of the others summed out: exact, for a
        mask that is a prefix of every member's ordering (else ValueError)."""
        x = self.check_images(x)
        m = torch.broadcast_to(torch.as_tensor(mask).to(x.device), x.shape).flatten(1)
        if m.dtype != torch.bool:
            raise ValueError(f"mask must be booleans, got {m.dtype}")
        if not self.is_prefix_of_every_member(m):
            raise ValueError(
                "the marginal of a mixture is exact only for given pixels that come first in "
                "every member's ordering; this mask's do not"
            )
        return torch.logsumexp(self._prefix_log_probs(x, m), 1) - math.log(self.num_members)

    def choose_parts(self, n, given, mask, generator) -> Tensor:
        """Each image's member: uniformly, or from p(k | given) for a completion whose given
        pixels are a prefix of every member's ordering (otherwise uniformly, with a warning):
        :func:`chainrule.sampling.choose_components`."""
        return sampling.choose_components(
            n, self.orders, given, mask, self._prefix_log_probs, generator,
            device=self._device, every="member's ordering", each="member",
        )  # fmt: skip


def from_models(models: list[AutoregressiveModel]) -> Mixture:
    """The uniform mixture of trained ``models`` (their weights copied; they must share the
    image shape and the levels)."""
    import dataclasses

    if not models:
        raise ValueError("a mixture needs at least one model")
    first = models[0]
    for i, m in enumerate(models):
        if m.event_shape != first.event_shape or m.levels != first.levels:
            raise ValueError(
                f"model {i} is for {m.event_shape} images with levels={m.levels}, model 0 for "
                f"{first.event_shape} with levels={first.levels}: a mixture needs one kind"
            )
    members = []
    for m in models:
        if isinstance(m, Mixture):
            members.extend(m.config.members)
        else:
            members.append({"model": m.name, "config": dataclasses.asdict(m.config)})
    mix = Mixture(first.event_shape, first.levels, MixtureConfig(members=members))
    mix = mix.to(dtype=first._dtype, device=first._device)  # before the weights: no rounding
    sources = [s for m in models for s in (m.each if isinstance(m, Mixture) else [m])]
    with torch.no_grad():
        for target, source in zip(mix.members, sources, strict=True):
            target.load_state_dict(source.state_dict())
    return mix.eval()
