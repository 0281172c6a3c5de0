"""Independent pixels: the strongest assumption of the ladder.

    p(x) = prod_i p(x_i),   p(x_i = k) = softmax(theta_i)_k

Binary data: one logit per dimension, n parameters for n pixels. K levels: K-1 free logits per
dimension (level 0 is the reference with logit 0), n(K-1) parameters. The maximum-likelihood
fit is closed form: the empirical frequencies (:meth:`Independent.fit`). Orderings do not
matter to this model (every ordering gives the same joint), and completion is always exact.

Memory: the closed-form fits of this module, :mod:`.markov` and :mod:`.table` count in chunks
of images (:func:`fit_chunks`, :data:`FIT_CHUNK_VALUES`) into an ``int64`` table the size of the
model's parameters (:func:`add_counts`), so the extra memory of a fit is the count table plus one
chunk, whatever the number of images. With K > 2 levels, the log-likelihood looks each pixel's
log-probability up in the ``(D, K)`` log-softmax of the logits, and sampling works through the
images a few at a time: neither builds a ``(batch, D, K)`` tensor.

Limits: it cannot represent any correlation between pixels; samples look like noise shaped by
the mean image.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..orderings import SPEC_NAMES
from .base import AutoregressiveModel
from .ordered import DiscreteOrderedModel
from .registry import register


@dataclass
class IndependentConfig:
    ordering: str | list[int] = field(
        default="raster",
        metadata={
            "help": f"pixel ordering ({SPEC_NAMES} or a permutation); irrelevant to this "
            "model's joint, kept for a uniform interface"
        },
    )
    smoothing: float = field(
        default=0.5,
        metadata={
            "help": "pseudo-count added to every level by the closed-form fit (0.5: add-half smoothing)"
        },
    )

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


#: how many values (images x pixels) a closed-form fit validates and counts at a time: a chunk
#: holds ``max(1, FIT_CHUNK_VALUES // D)`` images (about 30 MB of temporaries)
FIT_CHUNK_VALUES = 1 << 20


def rows_per_block(row_size: int) -> int:
    """How many rows of ``row_size`` values make one block of :data:`FIT_CHUNK_VALUES`."""
    return max(1, FIT_CHUNK_VALUES // max(1, row_size))


def chunk_images(dim: int, chunk_size: int | None = None) -> int:
    """Images per chunk: ``chunk_size`` if given (a positive int), else from
    :data:`FIT_CHUNK_VALUES`."""
    if chunk_size is None:
        return rows_per_block(dim)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int (images), got {chunk_size!r}")
    return chunk_size


def fit_chunks(model: AutoregressiveModel, x, chunk_size: int | None = None) -> Iterator[Tensor]:
    """The images ``x`` as validated chunks (``model.check_images`` of at most ``chunk_size``
    images each; see :func:`chunk_images`), so that a fit never converts the whole set at once.

    Input that is not a batch of the model's shape is checked whole (and refused by
    ``check_images`` before anything large is allocated)."""
    c = chunk_images(model.dim, chunk_size)
    if (
        not isinstance(x, Tensor)
        or x.dim() != 4
        or tuple(x.shape[1:]) != tuple(model.event_shape)
        or x.shape[0] <= c
    ):
        yield model.check_images(x)
        return
    for start in range(0, x.shape[0], c):
        yield model.check_images(x[start : start + c])


def add_counts(counts: Tensor, index: Tensor) -> None:
    """Add one to ``counts.view(-1)[i]`` for every entry ``i`` of ``index`` (repeats counted),
    in place and exactly (``int64``). A whole-table ``bincount`` when the index is not much
    smaller than the table, else ``index_add_`` (memory and time of the index alone)."""
    flat = counts.view(-1)
    index = index.reshape(-1)
    if 4 * index.numel() >= flat.numel():
        flat += torch.bincount(index, minlength=flat.numel())
    else:
        flat.index_add_(0, index, torch.ones_like(index))


def empirical_counts(values: Tensor, levels: int) -> Tensor:
    """``(N, D)`` whole numbers -> ``(D, K)`` counts (``int64``, exact)."""
    d = values.shape[1]
    counts = torch.zeros(d, levels, dtype=torch.int64, device=values.device)
    add_counts(counts, torch.arange(d, device=values.device) * levels + values.long())
    return counts


@register
class Independent(DiscreteOrderedModel):
    name = "independent"
    Config = IndependentConfig
    supports_completion_any_mask = True  # every dimension is independent of the others

    def __init__(self, event_shape, levels, config: IndependentConfig):
        super().__init__(event_shape, levels, config)
        self.logits = nn.Parameter(torch.zeros(self.dim, levels - 1))  # (D, K-1), flat layout

    def _ordered_params(self, xo: Tensor) -> Tensor:
        full = free_logits_to_full(self.logits[self.order], self.levels)  # (D, P)
        return full.unsqueeze(0).expand(xo.shape[0], -1, -1)

    # decoding: the dimensions are drawn in pixel order (the ordering is irrelevant here), all
    # at once (IndependentDecoder.sample_all)
    def decoder_order(self, part: int = 0) -> Tensor:
        return torch.arange(self.dim, device=self._device)

    def decoder(self, n: int, part: int = 0) -> IndependentDecoder:
        return IndependentDecoder(self, n)

    def teacher_params(self, xo: Tensor, part: int = 0) -> Tensor:
        full = free_logits_to_full(self.logits, self.levels)  # (D, P), pixel order
        return full.unsqueeze(0).expand(xo.shape[0], -1, -1)

    def _conditional_log_probs(self, x: Tensor) -> Tensor:
        if self.levels == 2:  # one logit per pixel: (B, D, 1) is no bigger than x
            return super()._conditional_log_probs(x)
        # K levels: look log p(x_i) up in the (D, K) table instead of a (B, D, K) log_softmax;
        # the same numbers, row by row, as Categorical.log_prob on the expanded parameters
        logp = F.log_softmax(free_logits_to_full(self.logits, self.levels), dim=-1)  # (D, K)
        idx = x.flatten(1).long().unsqueeze(-1)  # (B, D, 1), flat layout like self.logits
        out = logp.unsqueeze(0).expand(idx.shape[0], -1, -1).gather(-1, idx)
        return out.reshape(x.shape)

    @torch.no_grad()
    def fit(self, x: Tensor, chunk_size: int | None = None) -> Independent:
        """Closed-form maximum-likelihood fit (with the config's smoothing): the empirical
        frequency of each level at each pixel. Counts ``chunk_size`` images at a time (default:
        :data:`FIT_CHUNK_VALUES` values); the result does not depend on it. Returns ``self``."""
        counts = torch.zeros(self.dim, self.levels, dtype=torch.int64, device=self._device)
        offsets = torch.arange(self.dim, device=self._device) * self.levels
        for xc in fit_chunks(self, x, chunk_size):
            add_counts(counts, offsets + xc.flatten(1).long())
        self.logits.copy_(logits_from_counts(counts, self.config.smoothing, self.levels))
        return self


class IndependentDecoder:
    """Decoder of :class:`Independent`: no step depends on another, so
    :meth:`sample_all` draws every dimension at once (the sampler uses it instead of the loop);
    ``params`` / ``tell`` serve the step-by-step protocol all the same."""

    def __init__(self, model: Independent, n: int):
        self.model, self.n = model, n
        self.order = model.decoder_order()

    def params(self, i: int) -> Tensor:
        full = free_logits_to_full(self.model.logits[i], self.model.levels)
        return full.unsqueeze(0).expand(self.n, -1)

    def tell(self, i: int, value: Tensor) -> None:
        pass

    def sample_all(self, u: Tensor) -> Tensor:
        """``(n, D)`` uniforms -> ``(n, D)`` values, pixel order."""
        model, n = self.model, self.n
        full = free_logits_to_full(model.logits, model.levels)  # (D, P)
        if model.levels == 2:
            return model.head.sample(full.unsqueeze(0).expand(n, -1, -1), u)
        # Categorical.sample, with the (D, K) cdf computed once and the comparison done a few
        # images at a time (no (n, D, K) float64 tensor); the same draws bit for bit
        cdf = torch.softmax(full.to(torch.float64), dim=-1).cumsum(-1)[:, :-1]  # (D, K-1)
        step = rows_per_block(cdf.numel())
        return torch.cat(
            [(cdf <= u[i : i + step].unsqueeze(-1)).sum(-1) for i in range(0, n, step)]
        ).to(full.dtype)
