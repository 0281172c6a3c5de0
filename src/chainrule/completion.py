"""Image completion: occlusion masks, completing partly seen images, the completion grid.

``model.sample(n, given=x, mask=m)`` keeps ``x`` where ``m`` is True and draws the rest, one
dimension at a time in the model's ordering, each free dimension from ``p(x_i | x_<i)`` with
``x_<i`` the given and already drawn values before it.

What is exact:

* When the given dimensions come first in the model's ordering (a *prefix*: the top rows, or
  the top rows and the left part of the next row, in raster order), this is an exact draw from
  ``p(rest | given)`` (the chain rule, read from the given part on).
* Otherwise (e.g. ``right-half`` or a ``box`` in raster order) a given value that comes *later*
  in the ordering than a free one is not seen when that free one is drawn: the draw is from
  ``prod_{free i} p(x_i | x_<i)``, which ignores the evidence below or to the right of each free
  pixel, and the completion need not join up with it. The models warn when this happens
  (:func:`chainrule.models.base.warn_if_not_prefix`). Exact conditioning on arbitrary masks would
  need p(given) marginals the chain rule does not give for free.
* Order-agnostic models (``made``, ``deep-nade``: ``model.supports_completion_any_mask``) are
  exact for *any* mask: they sample under the given-first ordering ``model.ordering_for(mask)``
  (for an ensemble, each image's member drawn from p(member | given)), so the completion is an
  exact draw from p(hidden | visible) of that ordering's model, and
  :func:`conditional_log_likelihood` gives log p(hidden | visible) of each completion exactly
  (``log_prob`` under that ordering minus the marginal ``log_prob_observed``).
* A single-ordering NADE's weights are indexed by pixel, so one set of weights defines a NADE for
  every ordering. :func:`nade_given_first` returns a copy of a NADE whose ordering visits the
  given pixels first (:func:`given_first_ordering`); its completion is exact for *that*
  ordering's model, which is the trained model only if it was trained with that ordering;
  otherwise it is a different distribution sharing the weights, usually a worse one.
  PixelCNN/PixelRNN have a fixed raster ordering (their masks are built into the convolutions),
  so for them only prefix masks are exact.

Occlusion specs (:func:`occlusion_mask`), in image coordinates ``x`` = column, ``y`` = row:
``bottom-half`` (rows ``>= H // 2`` hidden: a prefix in raster order), ``right-half`` (columns
``>= W // 2`` hidden: not a prefix), ``box:x,y,w,h`` (that rectangle hidden), ``checkerboard``
(every other pixel hidden, the top-left one kept) and ``random:FRACTION`` (that fraction of the
pixels hidden, drawn with the run's seed; ``random:FRACTION:SEED`` names its own seed).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import Tensor

from .models.base import AutoregressiveModel
from .plots import image_grid, save_image

OCCLUSIONS = ("bottom-half", "right-half", "box:x,y,w,h", "checkerboard", "random:FRACTION[:SEED]")


def occlusion_mask(spec: str, event_shape: tuple[int, int, int], seed: int = 0) -> Tensor:
    """The mask of the *given* (kept) dimensions for an occlusion spec.

    Args:
        spec: ``"bottom-half"``, ``"right-half"``, ``"box:x,y,w,h"`` (column, row, width,
            height of the hidden rectangle, in pixels, inside the image), ``"checkerboard"``
            or ``"random:FRACTION"`` / ``"random:FRACTION:SEED"`` (see the module doc).
        event_shape: ``(C, H, W)``.
        seed: the seed of ``random:FRACTION`` when the spec names none.

    Returns:
        ``(C, H, W)`` boolean, True where a value is given (all channels of a pixel alike).
    """
    c, h, w = event_shape
    keep = torch.ones(h, w, dtype=torch.bool)
    if spec == "bottom-half":
        keep[h // 2 :] = False
    elif spec == "right-half":
        keep[:, w // 2 :] = False
    elif isinstance(spec, str) and spec.startswith("box:"):
        m = re.fullmatch(r"box:(\d+),(\d+),(\d+),(\d+)", spec.replace(" ", ""))
        if m is None:
            raise ValueError(
                f"occlusion box must be 'box:x,y,w,h' with four whole numbers, got {spec!r}"
            )
        bx, by, bw, bh = (int(v) for v in m.groups())
        if bw < 1 or bh < 1 or bx + bw > w or by + bh > h:
            raise ValueError(
                f"occlusion box x={bx}, y={by}, w={bw}, h={bh} must be non-empty and lie inside the "
                f"{h}x{w} image (x + w <= {w}, y + h <= {h})"
            )
        keep[by : by + bh, bx : bx + bw] = False
    elif spec == "checkerboard":
        keep = (torch.arange(h)[:, None] + torch.arange(w)[None, :]) % 2 == 0
    elif isinstance(spec, str) and spec.startswith("random:"):
        keep = _random_keep(spec, h, w, seed)
    else:
        raise ValueError(f"unknown occlusion {spec!r}: use one of {', '.join(OCCLUSIONS)}")
    return keep.unsqueeze(0).expand(c, h, w).clone()


def _random_keep(spec: str, h: int, w: int, seed: int) -> Tensor:
    """``random:FRACTION[:SEED]``: round(FRACTION * H * W) pixels hidden, drawn uniformly."""
    parts = spec.split(":")
    try:
        fraction = float(parts[1])
        seed = int(parts[2]) if len(parts) == 3 else seed
        if len(parts) > 3:
            raise ValueError
    except (ValueError, IndexError):
        raise ValueError(
            f"random occlusion must be 'random:FRACTION' or 'random:FRACTION:SEED' (e.g. "
            f"random:0.5), got {spec!r}"
        ) from None
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"random occlusion: FRACTION must be between 0 and 1, got {fraction:g}")
    hidden = round(fraction * h * w)
    if not 0 < hidden < h * w:
        raise ValueError(
            f"random occlusion: {fraction:g} of {h * w} pixels hides {hidden}; give a fraction that "
            f"hides at least one pixel and keeps at least one"
        )
    perm = torch.randperm(h * w, generator=torch.Generator().manual_seed(seed))
    keep = torch.ones(h * w, dtype=torch.bool)
    keep[perm[:hidden]] = False
    return keep.reshape(h, w)


def is_exact_for(model: AutoregressiveModel, mask: Tensor) -> bool:
    """Whether ``model.sample(given=..., mask=mask)`` is an exact draw from p(hidden | given):
    for an order-agnostic model always, else when the given dimensions are a prefix of every
    ordering the model samples in."""
    if model.supports_completion_any_mask:
        return True
    orders = getattr(model, "orders", None)
    orders = orders if orders is not None else model.decoder_order(0)[None]
    return all(is_prefix(mask, o) for o in orders)


@torch.no_grad()
def conditional_log_likelihood(model: AutoregressiveModel, x: Tensor, mask: Tensor) -> Tensor:
    """log p(hidden | visible) in nats of each completed image ``x`` ``(N, C, H, W)``, exactly:
    ``log_prob(x, ordering=ordering_for(mask)) - log_prob_observed(x, mask)`` (an order-agnostic
    model; ``mask`` ``(C, H, W)`` or ``(N, C, H, W)``, True = visible). ``(N,)``."""
    from .models.anyorder import OrderAgnosticModel, mask_groups

    if not isinstance(model, OrderAgnosticModel):
        raise ValueError(
            f"the conditional log-likelihood of a completion needs an order-agnostic model "
            f"(made, deep-nade), not {model.name!r}"
        )
    x = model.check_images(x)
    mask = torch.broadcast_to(torch.as_tensor(mask).to(x.device), x.shape)
    out = x.new_empty(x.shape[0])
    for row, r in mask_groups(mask.flatten(1)):
        order = model.ordering_for(row)
        out[r] = model.log_prob(x[r], ordering=order) - model.log_prob_observed(x[r], row)
    return out


def is_prefix(mask: Tensor, order: Tensor) -> bool:
    """Whether the given dimensions (``mask`` ``(C, H, W)`` or ``(n, C, H, W)``, True = given)
    come first in the ordering ``order`` ``(D,)`` for every image."""
    from .sampling import is_prefix as flat_is_prefix

    return flat_is_prefix(mask.reshape(-1, order.numel()), order.to(mask.device))


def given_first_ordering(mask: Tensor) -> list[int]:
    """An ordering (flat ``(C, H, W)`` indices) that visits the given dimensions first, then the
    free ones, each part in raster order (channels innermost).

    Args:
        mask: ``(C, H, W)`` boolean, True where given.
    """
    if mask.dim() != 3 or mask.dtype != torch.bool:
        raise ValueError(
            f"mask must be a (C, H, W) boolean tensor, got {mask.dtype} of shape {tuple(mask.shape)}"
        )
    from .orderings import given_first, raster_order

    c, h, w = mask.shape
    return given_first(raster_order((c, h, w)), mask).tolist()


def nade_given_first(model: AutoregressiveModel, mask: Tensor) -> AutoregressiveModel:
    """A copy of a NADE (same weights) whose ordering visits the given pixels first.

    Completion with the copy is an exact draw from the copy's ``p(rest | given)``. The copy is
    the same distribution as ``model`` only if the weights were trained for that ordering (or
    order-agnostically); see the module doc.

    Args:
        model: a ``nade`` model with ``ensemble=1``.
        mask: ``(C, H, W)`` boolean, True where given.
    """
    import dataclasses

    from .models.nade import NADE

    if not isinstance(model, NADE):
        raise ValueError(f"nade_given_first needs a 'nade' model, got {model.name!r}")
    if model.config.ensemble != 1:
        raise ValueError(f"nade_given_first needs ensemble=1, got ensemble={model.config.ensemble}")
    if tuple(mask.shape) != tuple(model.event_shape):
        raise ValueError(
            f"mask must have shape {tuple(model.event_shape)}, got {tuple(mask.shape)}"
        )
    config = dataclasses.replace(model.config, ordering=given_first_ordering(mask))
    copy = type(model)(model.event_shape, model.levels, config)
    copy.load_state_dict(model.state_dict())
    return copy.to(device=model._device, dtype=model._dtype)


@torch.no_grad()
def complete(
    model: AutoregressiveModel,
    images: Tensor,
    mask: Tensor,
    samples: int = 3,
    generator: torch.Generator | None = None,
    **sample_options,
) -> Tensor:
    """Complete each image ``samples`` times.

    Args:
        model: any chainrule model.
        images: ``(N, C, H, W)`` values the model takes.
        mask: ``(C, H, W)`` or ``(N, C, H, W)`` boolean, True where the value is given.
        samples: completions per image.
        generator: for reproducible draws.
        sample_options: passed to ``model.sample`` (e.g. ``method="naive"``).

    Returns:
        ``(N, samples, C, H, W)``; every given value equals ``images`` there.
    """
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples must be a positive int, got {samples!r}")
    images = model.check_images(images, what="images")
    n = images.shape[0]
    mask = torch.as_tensor(mask).to(images.device)
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be a boolean tensor, got dtype {mask.dtype}")
    mask = torch.broadcast_to(mask, images.shape) if mask.dim() == 3 else mask
    if tuple(mask.shape) != tuple(images.shape):
        raise ValueError(
            f"mask must have shape {tuple(images.shape)} or (C, H, W), got {tuple(mask.shape)}"
        )
    given = images.repeat_interleave(samples, 0)  # (N * S, C, H, W): image i's copies together
    m = mask.repeat_interleave(samples, 0)
    x = model.sample(n * samples, given=given, mask=m, generator=generator, **sample_options)
    return x.view(n, samples, *model.event_shape)


def completion_grid(
    originals: Tensor,
    mask: Tensor,
    completions: Tensor,
    levels: int | None,
    path: str | Path,
    caption: str | None = None,
) -> Path:
    """Write a PNG: one row per image: the original, the occluded input (hidden values in mid
    grey), then its completions; ``caption`` above the grid (e.g. whether the draws are exact).

    Args:
        originals: ``(N, C, H, W)``; mask: ``(C, H, W)`` or ``(N, C, H, W)`` (True = given);
        completions: ``(N, S, C, H, W)``; levels: the model's levels (None: values in [0, 1]).
    """
    n, s = completions.shape[:2]
    originals = originals.to(torch.float64).cpu()
    mask = torch.broadcast_to(torch.as_tensor(mask).cpu(), originals.shape)
    grey = 0.5 if levels is None else (levels - 1) / 2.0
    occluded = torch.where(mask, originals, torch.full_like(originals, grey))
    rows = torch.cat(
        [originals.unsqueeze(1), occluded.unsqueeze(1), completions.to(torch.float64).cpu()], 1
    )  # (N, 2 + S, C, H, W)
    return save_image(image_grid(rows.flatten(0, 1), levels, nrow=2 + s), path, caption=caption)


__all__ = [
    "OCCLUSIONS",
    "occlusion_mask",
    "is_prefix",
    "given_first_ordering",
    "nade_given_first",
    "is_exact_for",
    "conditional_log_likelihood",
    "complete",
    "completion_grid",
]
