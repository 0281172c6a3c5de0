"""The NADE oracle: the per-dimension loop of the paper, written literally (one step at a time,
autograd for the gradients), against which the library's fast paths (the sparse in-place
Function and the blockwise recomputing Function) are tested, values and gradients.

It reads the model's weights and its small per-value pieces (``phi``, ``head_params``, the
head's ``log_prob``), and shares nothing with the fast paths' recurrence.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def naive_preoutputs(
    phi: Tensor, w: Tensor, c: Tensor, v: Tensor, rho: Tensor | None, activation: str
) -> Tensor:
    """``V_i act(rho_i a_i)`` of every step i, with ``a_1 = c``, ``a_{i+1} = a_i + phi_i W_i``.

    Args:
        phi: ``(B, D, Min)`` input features of each step (in visiting order).
        w: ``(D, Min, H)`` input weights of each step.
        c: ``(H,)`` hidden bias.
        v: ``(D, Mout, H)`` output weights of each step.
        rho: ``(D,)`` per-step activation scale (RNADE) or None.
        activation: "sigmoid" or "relu".

    Returns:
        ``(B, D, Mout)``.
    """
    act = torch.sigmoid if activation == "sigmoid" else torch.relu
    b, d, _ = phi.shape
    a = c.expand(b, -1)
    out = []
    for i in range(d):
        z = a if rho is None else a * rho[i]
        out.append(act(z) @ v[i].T)  # (B, Mout)
        a = a + phi[:, i] @ w[i]  # (B, Min) @ (Min, H)
    return torch.stack(out, 1)


def nade_teacher_params(model, xo: Tensor, part: int = 0) -> Tensor:
    """Head parameters ``(B, D, P)`` of every step of ordering ``part`` of a NADE, from the
    values ``xo`` ``(B, D)`` in that ordering's visiting order."""
    order = model.orders[part]
    pre = naive_preoutputs(
        model.phi(xo),
        model.weight_in[order],
        model.bias_hidden,
        model.weight_out[order],
        None,
        model.config.activation,
    )
    return model.head_params(pre, model.bias_out[order])


def nade_log_prob(model, x: Tensor) -> Tensor:
    """Exact ``log p(x)`` ``(B,)`` of a NADE by the loop: the log of the uniform mixture of the
    joints of its orderings (one ordering: that joint)."""
    joints = []
    for e, order in enumerate(model.orders):
        xo = x.flatten(1)[:, order]
        joints.append(model.head.log_prob(nade_teacher_params(model, xo, e), xo).sum(1))
    return torch.logsumexp(torch.stack(joints), 0) - math.log(len(joints))


def rnade_ordered_log_probs(model, xo: Tensor) -> Tensor:
    """Per-step log densities ``(B, D)`` of an RNADE by the loop, ``xo`` in visiting order."""
    order = model.order
    pre = naive_preoutputs(
        xo.unsqueeze(-1),
        model.weight_in[order],
        model.bias_hidden,
        model.weight_out[order],
        model.rho[order],
        model.config.activation,
    )
    return model.head.log_prob(pre + model.bias_out[order], xo)


__all__ = ["naive_preoutputs", "nade_log_prob", "nade_teacher_params", "rnade_ordered_log_probs"]
