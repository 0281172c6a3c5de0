"""Orderings of the dimensions of an image.

An ordering is a permutation ``order`` of the flat indices of a ``(C, H, W)`` image:
``order[i]`` is the flat index (``c*H*W + h*W + w``) of the dimension generated at step ``i``.

Specs accepted wherever a model takes ``ordering``:

* ``"raster"`` (default): rows top to bottom, pixels left to right, and within a pixel the
  channels in order (R, then G, then B);
* ``"columns"``: columns left to right, pixels top to bottom (the transpose of raster), channels
  innermost;
* ``"reverse-raster"``, ``"reverse-columns"``: those two with the pixels visited backwards
  (bottom-right first), channels still innermost and in order (R, then G, then B);
* ``"random:SEED"``: a uniformly random permutation drawn from ``SEED``;
* a list of ints: the permutation itself, in flat ``(C, H, W)`` indices.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def raster_order(event_shape: tuple[int, int, int]) -> Tensor:
    """Raster order with channels innermost, as flat ``(C, H, W)`` indices. ``(D,)`` int64."""
    c, h, w = event_shape
    idx = torch.arange(c * h * w).reshape(c, h, w)
    return idx.permute(1, 2, 0).reshape(-1)


#: the orderings named by a word (besides ``random:SEED``)
NAMED = ("raster", "columns", "reverse-raster", "reverse-columns")
#: the specs by name, for help lines: "raster, columns, ..., random:SEED"
SPEC_NAMES = ", ".join((*NAMED, "random:SEED"))
_SPECS = ", ".join(f"'{s}'" for s in (*NAMED, "random:SEED"))


def named_order(name: str, event_shape: tuple[int, int, int]) -> Tensor:
    """One of :data:`NAMED` as flat ``(C, H, W)`` indices, channels innermost. ``(D,)`` int64."""
    c, h, w = event_shape
    idx = torch.arange(c * h * w).reshape(c, h, w)
    pixels = idx.permute(2, 1, 0) if name.endswith("columns") else idx.permute(1, 2, 0)
    pixels = pixels.reshape(h * w, c)  # (pixels in visiting order, channels)
    if name.startswith("reverse-"):
        pixels = pixels.flip(0)
    return pixels.reshape(-1)


def resolve_ordering(spec: Any, event_shape: tuple[int, int, int]) -> Tensor:
    """Turn an ordering spec into a permutation tensor ``(D,)`` int64 (see module doc)."""
    c, h, w = event_shape
    d = c * h * w
    if spec is None or spec == "raster":
        return raster_order(event_shape)
    if isinstance(spec, str) and spec in NAMED:
        return named_order(spec, event_shape)
    if isinstance(spec, str):
        if spec.startswith("random:"):
            try:
                seed = int(spec.split(":", 1)[1])
            except ValueError:
                raise ValueError(
                    f"ordering 'random:SEED' needs an int seed, got {spec!r}"
                ) from None
            g = torch.Generator().manual_seed(seed)
            return torch.randperm(d, generator=g)
        raise ValueError(f"unknown ordering {spec!r}: use {_SPECS} or a list giving a permutation")
    try:
        perm = [int(i) for i in spec]
    except (TypeError, ValueError):
        raise ValueError(f"ordering must be {_SPECS} or a list of ints, got {spec!r}") from None
    if sorted(perm) != list(range(d)):
        raise ValueError(
            f"ordering must be a permutation of 0..{d - 1} (D={d}), got {len(perm)} values that are not"
        )
    return torch.tensor(perm, dtype=torch.int64)


def check_ordering_spec(spec: Any) -> None:
    """Cheap check of a spec's form (its length is checked when the model is built)."""
    if spec is None or spec == "raster":
        return
    if isinstance(spec, str):
        resolve_ordering(spec, (1, 1, 1))
        return
    if not isinstance(spec, (list, tuple)):
        raise ValueError(f"ordering must be {_SPECS} or a list of ints, got {spec!r}")


def given_first(order: Tensor, mask: Tensor) -> Tensor:
    """The ordering that visits the dimensions where ``mask`` (flat ``(D,)`` booleans, True =
    given) is True first, then the others, each part in the relative order of ``order``."""
    given = mask.reshape(-1).to(order.device)[order]
    return torch.cat([order[given], order[~given]])


def inverse(order: Tensor) -> Tensor:
    """The position of each flat index in the ordering: ``inv[order[i]] = i``."""
    inv = torch.empty_like(order)
    inv[order] = torch.arange(order.numel(), device=order.device)
    return inv
