"""Evaluation: negative log-likelihood in nats per image and bits per dimension.

Discrete models see the data's whole numbers as they are. A real-valued model (``levels=None``,
RNADE) sees 8-bit data dequantized, ``x = (v + u) / K`` with ``u ~ U[0, 1)``, and the figure
reported is the *discrete-equivalent* one: NLL_discrete <= NLL_continuous(x) + D ln K, which is
what "add D ln 256 after scaling to [0, 1]" means in the papers. Every function that reports it
says so with ``dequantized=True``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .models.base import AutoregressiveModel


def check_compatible(model: AutoregressiveModel, event_shape, data_levels: int, data_name: str = "data") -> None:
    """Raise ValueError when data of this shape and number of levels cannot feed the model."""
    if tuple(event_shape) != tuple(model.event_shape):
        c, h, w = event_shape
        mc, mh, mw = model.event_shape
        raise ValueError(
            f"{data_name} has images of shape {c}x{h}x{w} but the model expects {mc}x{mh}x{mw}"
        )
    if model.levels is not None and model.levels != data_levels:
        raise ValueError(
            f"{data_name} has {data_levels} levels but the model was built for levels={model.levels}"
            + (" (binarize the data, e.g. --data NAME:binarize)" if model.levels == 2 else "")
        )


def to_model_input(
    model: AutoregressiveModel, x: Tensor, data_levels: int, generator: torch.Generator | None = None
) -> Tensor:
    """uint8 images -> what the model takes: the levels as floats, or dequantized to [0, 1]."""
    x = x.to(torch.float64)
    if model.levels is None:
        u = torch.rand(x.shape, generator=generator, dtype=torch.float64)
        x = ((x + u) / data_levels).clamp(0.0, 1.0)
    return x.to(device=model._device, dtype=model._dtype)


def nll_offset(model: AutoregressiveModel, data_levels: int) -> float:
    """Nats to add to a real-valued model's NLL for the discrete-equivalent figure (D ln K)."""
    return model.dim * math.log(data_levels) if model.levels is None else 0.0


@torch.no_grad()
def per_image_nll(
    model: AutoregressiveModel,
    x: Tensor,
    data_levels: int,
    *,
    batch_size: int = 256,
    seed: int = 0,
    progress: bool = False,
) -> Tensor:
    """-log p(x) in nats for every image, ``(N,)`` float64 (discrete-equivalent for real models)."""
    from tqdm import tqdm

    was_training = model.training
    model.eval()
    g = torch.Generator().manual_seed(seed)
    out = []
    starts = range(0, len(x), batch_size)
    for i in tqdm(starts, desc="eval", leave=False, disable=not progress):
        xb = to_model_input(model, x[i : i + batch_size], data_levels, g)
        out.append(-model.log_prob(xb).double().cpu())
    model.train(was_training)
    return torch.cat(out) + nll_offset(model, data_levels)


def bits_per_dim(nll_nats: float, dim: int) -> float:
    """NLL in nats per image -> bits per dimension."""
    return nll_nats / (dim * math.log(2))


def summarize(model: AutoregressiveModel, x: Tensor, data_levels: int, **kw) -> dict:
    """Mean NLL (nats), its standard error, and bits/dim over a set of images."""
    nll = per_image_nll(model, x, data_levels, **kw)
    mean = nll.mean().item()
    return {
        "nll_nats": mean,
        "nll_stderr": (nll.std().item() / math.sqrt(len(nll))) if len(nll) > 1 else 0.0,
        "bits_per_dim": bits_per_dim(mean, model.dim),
        "n": len(nll),
        "dequantized": model.levels is None,
    }
