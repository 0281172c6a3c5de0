"""Evaluation: negative log-likelihood in nats per image and bits per dimension.

Discrete models see the data's whole numbers as they are. A real-valued model (``levels=None``,
RNADE) sees 8-bit data dequantized, ``x = (v + u) / K`` with ``u ~ U[0, 1)``, and the figure
reported is the *discrete-equivalent* one: NLL_discrete <= NLL_continuous(x) + D ln K, which is
what "add D ln 256 after scaling to [0, 1]" means in the papers. Every function that reports it
says so with ``dequantized=True``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from .models.base import AutoregressiveModel


def check_compatible(
    model: AutoregressiveModel,
    event_shape,
    data_levels: int,
    data_name: str = "data",
    *,
    binarize_hint: str = "--data NAME:binarize",
) -> None:
    """Raise ValueError when data of this shape and number of levels cannot feed the model.

    ``binarize_hint`` is the command-line form suggested when 8-bit data meets a binary model
    (e.g. ``--ood notmnist:binarize`` for an out-of-distribution set)."""
    if tuple(event_shape) != tuple(model.event_shape):
        c, h, w = event_shape
        mc, mh, mw = model.event_shape
        raise ValueError(
            f"{data_name} has images of shape {c}x{h}x{w} but the model expects {mc}x{mh}x{mw}"
        )
    if model.levels is not None and model.levels != data_levels:
        raise ValueError(
            f"{data_name} has {data_levels} levels but the model was built for levels={model.levels}"
            + (f" (binarize the data, e.g. {binarize_hint})" if model.levels == 2 else "")
        )


def to_model_input(
    model: AutoregressiveModel,
    x: Tensor,
    data_levels: int,
    generator: torch.Generator | None = None,
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
    mask: Tensor | None = None,
    **kw: Any,
) -> Tensor:
    """-log p(x) in nats for every image, ``(N,)`` float64 (discrete-equivalent for real models).

    With ``mask`` (``(C, H, W)`` boolean, True = visible): -log p(x_visible), the exact marginal
    of the visible dimensions (:func:`visible_log_prob`).

    ``kw``: ``batch_size``, ``seed``, ``progress``, ``desc`` (default "NLL") of
    :func:`map_images`."""
    kw.setdefault("desc", "NLL")
    if mask is not None:
        check_visible_mask(model, mask)
        out = map_images(
            model,
            x,
            data_levels,
            lambda xm: -visible_log_prob(model, xm, mask).double().cpu(),
            **kw,
        )
        return torch.cat(out) + nll_offset(model, data_levels) * float(mask.sum()) / model.dim
    out = map_images(model, x, data_levels, lambda xm: -model.log_prob(xm).double().cpu(), **kw)
    return torch.cat(out) + nll_offset(model, data_levels)


def check_visible_mask(model: AutoregressiveModel, mask: Tensor) -> None:
    """Refuse (ValueError, one line) a mask whose marginal the model cannot give exactly: any
    mask for an order-agnostic model; for the others, only a prefix of their ordering (the top
    rows in raster order), whose marginal is the sum of its conditionals."""
    from .completion import is_exact_for

    if tuple(mask.shape) != tuple(model.event_shape) or mask.dtype != torch.bool:
        raise ValueError(f"the mask must be {model.event_shape} booleans, got {tuple(mask.shape)}")
    if not mask.any():
        raise ValueError("the mask hides every pixel: there is nothing to score")
    if not is_exact_for(model, mask):
        raise ValueError(
            f"{model.name!r} gives the exact likelihood of the visible pixels only when they come "
            "first in its ordering (e.g. --mask bottom-half in raster order); for any other mask "
            "use an order-agnostic model (made, deep-nade)"
        )


def visible_log_prob(model: AutoregressiveModel, x: Tensor, mask: Tensor) -> Tensor:
    """log p(x_visible) in nats ``(B,)`` of the dimensions where ``mask`` ``(C, H, W)`` is True,
    summed over every value of the hidden ones: the order-agnostic models' ``log_prob_observed``,
    or, for a mask that is a prefix of the model's ordering, the sum of the visible
    dimensions' conditionals (which do not depend on the hidden ones)."""
    observed = getattr(model, "log_prob_observed", None)
    if observed is not None:
        return observed(x, mask)
    mask = mask.to(x.device)
    return torch.where(mask, model.conditional_log_probs(x), 0.0).flatten(1).sum(1)


def map_images(
    model: AutoregressiveModel,
    x: Tensor,
    data_levels: int,
    fn: Callable[[Tensor], Any],
    *,
    batch_size: int = 256,
    seed: int = 0,
    progress: bool = False,
    desc: str = "",
) -> list:
    """``fn`` of each batch of the images ``x`` (``data_levels`` levels) as the model takes
    them (:func:`to_model_input`; real-valued models: dequantized by a generator seeded by
    ``seed``), in eval mode (:func:`in_batches`). ``progress=True`` shows a bar (``desc``) on a
    terminal only, never under ``--quiet`` (:func:`chainrule.outputs.progress`)."""
    g = torch.Generator().manual_seed(seed)
    return in_batches(
        model,
        x,
        lambda xb: fn(to_model_input(model, xb, data_levels, g)),
        batch_size=batch_size,
        progress=progress,
        desc=desc,
    )


def in_batches(
    model: AutoregressiveModel,
    x: Tensor,
    fn,
    *,
    batch_size: int,
    progress: bool = False,
    desc: str = "",
) -> list:
    """``[fn(x[i : i + batch_size]) for each batch]`` with ``model`` in eval mode (its mode is
    restored after, also on an error); a bar (``desc``) on a terminal when ``progress``."""
    from . import outputs

    was_training = model.training
    model.eval()
    starts = range(0, len(x), batch_size)
    if progress:
        starts = outputs.progress(starts, desc=desc, total=len(starts))
    try:
        return [fn(x[i : i + batch_size]) for i in starts]
    finally:
        model.train(was_training)


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


# ---------------------------------------------------------------------- anomaly-detection metrics
# Convention: the out-of-distribution images are the *positive* class and a *higher* score means
# "more anomalous" (e.g. NLL). The metrics come from scikit-learn, not from hand-written code.


def _scores_pair(scores_in, scores_out) -> tuple:
    import numpy as np

    s_in = np.asarray(scores_in, dtype=np.float64).ravel()
    s_out = np.asarray(scores_out, dtype=np.float64).ravel()
    if s_in.size == 0 or s_out.size == 0:
        raise ValueError(
            f"detection metrics need scores of both sets, got {s_in.size} in-distribution and "
            f"{s_out.size} out-of-distribution scores"
        )
    if not (np.isfinite(s_in).all() and np.isfinite(s_out).all()):
        raise ValueError("detection scores must be finite (got NaN or infinity)")
    y = np.concatenate([np.zeros(s_in.size), np.ones(s_out.size)])
    return s_in, s_out, y, np.concatenate([s_in, s_out])


def fpr_at_tpr(scores_in, scores_out, tpr_level: float = 0.95) -> float:
    """False-positive rate (in-distribution images flagged) at the first threshold whose
    true-positive rate (OOD images flagged) reaches ``tpr_level``. Ties are one threshold."""
    import numpy as np
    from sklearn.metrics import roc_curve

    _, _, y, s = _scores_pair(scores_in, scores_out)
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    return float(fpr[int(np.searchsorted(tpr, tpr_level - 1e-12, side="left"))])


def detection_metrics(scores_in, scores_out) -> dict[str, float]:
    """AUROC, AUPR (OOD positive, and in-distribution positive) and FPR at 95% TPR.

    Args:
        scores_in: ``(N_in,)`` anomaly scores of in-distribution images (higher = more anomalous).
        scores_out: ``(N_out,)`` scores of out-of-distribution images.

    Returns:
        ``auroc`` (0.5 = chance, 1 = perfect separation, 0 = perfectly reversed), ``aupr``
        (average precision with OOD as the positive class), ``aupr_in`` (in-distribution as the
        positive class, scores negated), ``fpr_at_95_tpr``, and the set sizes.
    """
    from sklearn.metrics import average_precision_score, roc_auc_score

    s_in, s_out, y, s = _scores_pair(scores_in, scores_out)
    return {
        "auroc": float(roc_auc_score(y, s)),
        "aupr": float(average_precision_score(y, s)),
        "aupr_in": float(average_precision_score(1 - y, -s)),
        "fpr_at_95_tpr": fpr_at_tpr(s_in, s_out, 0.95),
        "n_in": int(s_in.size),
        "n_out": int(s_out.size),
    }


def threshold_for_false_alarm_rate(heldout_scores, rate: float = 0.05) -> float:
    """The lowest threshold ``t`` among the held-out in-distribution scores such that at most a
    fraction ``rate`` of them is flagged (``score > t``).

    Choose it on held-out in-distribution data (the valid split), then measure the false-alarm
    rate on other in-distribution data (the test split) with :func:`flag_rate`.
    """
    import math

    import numpy as np

    s = np.sort(np.asarray(heldout_scores, dtype=np.float64).ravel())
    if s.size == 0:
        raise ValueError("cannot choose a threshold from an empty set of held-out scores")
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"false-alarm rate must lie in [0, 1), got {rate}")
    k = max(0, math.ceil(s.size * (1.0 - rate) - 1.0 - 1e-9))  # then #(s > s[k]) <= n - 1 - k
    return float(s[k])


def flag_rate(scores, threshold: float) -> float:
    """Fraction of images whose score exceeds ``threshold`` (flagged as anomalous)."""
    import numpy as np

    s = np.asarray(scores, dtype=np.float64).ravel()
    if s.size == 0:
        raise ValueError("flag_rate of an empty set of scores")
    return float((s > threshold).mean())
