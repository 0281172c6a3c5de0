"""Test oracles and helpers shared by the tests (and importable by the benchmarks with the repo
root on ``sys.path``): exhaustive enumeration of tiny state spaces and the total-variation test
of a sampler against its exact density, with a threshold derived from the sample size.

The naive sampler, the oracle of every model's incremental decoder, is
:func:`chainrule.sampling.naive_sample` (it lives in the library because ``sample(...,
method="naive")`` of the PixelRNN models exposes it).
"""

from __future__ import annotations

import itertools
import math

import torch


def all_states(event_shape, levels) -> torch.Tensor:
    """Every image of ``event_shape`` with ``levels`` levels, ``(K^D, C, H, W)`` float64, in
    the order of :func:`state_index` (the first flat dimension most significant)."""
    d = math.prod(event_shape)
    grid = torch.tensor(list(itertools.product(range(levels), repeat=d)), dtype=torch.float64)
    return grid.reshape(-1, *event_shape)


def state_index(x: torch.Tensor, levels: int) -> torch.Tensor:
    """``(B, C, H, W)`` whole numbers -> ``(B,)`` index of each image in :func:`all_states`."""
    flat = x.flatten(1).long()
    weights = levels ** torch.arange(flat.shape[1] - 1, -1, -1)
    return (flat * weights).sum(1)


def empirical(samples: torch.Tensor, levels: int) -> torch.Tensor:
    """The empirical distribution of ``samples`` over :func:`all_states`, ``(K^D,)``."""
    d = samples[0].numel()
    counts = torch.bincount(state_index(samples, levels), minlength=levels**d)
    return counts.double() / len(samples)


def total_variation(samples: torch.Tensor, p: torch.Tensor, levels: int) -> float:
    """TV distance between the empirical distribution of ``samples`` and ``p`` ``(K^D,)`` (the
    exact probabilities of :func:`all_states`, in that order)."""
    return 0.5 * (empirical(samples, levels) - p).abs().sum().item()


def model_total_variation(samples: torch.Tensor, model) -> float:
    """TV between ``samples`` and the model's exact distribution (enumerated)."""
    p = model.log_prob(all_states(model.event_shape, model.levels)).exp()
    return total_variation(samples, p, model.levels)


def tv_threshold(n: int, states: int, false_alarm: float = 1e-6) -> float:
    """A bound the TV of ``n`` exact draws over ``states`` states exceeds with probability
    below ``false_alarm``: its mean is at most ``0.5 * sqrt(states / n)`` (Cauchy-Schwarz on
    ``sum_i sqrt(p_i (1 - p_i) / n)``), and one draw moves it by at most ``1 / n``, so by
    McDiarmid it exceeds the mean by ``t`` with probability ``exp(-2 n t^2)``."""
    return 0.5 * math.sqrt(states / n) + math.sqrt(math.log(1 / false_alarm) / (2 * n))


__all__ = [
    "all_states",
    "empirical",
    "model_total_variation",
    "state_index",
    "total_variation",
    "tv_threshold",
]
