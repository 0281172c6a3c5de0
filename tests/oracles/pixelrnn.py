"""The PixelRNN oracles: the recurrent layers written plainly from their definitions, against
which the library's fast layers (whole-map convolutions, one matrix product per step, the
fused LSTM update with its hand-written backward) are tested, values and gradients.

* :func:`lstm_update_plain`: the LSTM update gate by gate;
* :func:`row_lstm_reference`: the Row LSTM one row at a time, ``F.conv2d`` / ``F.conv1d`` as the
  paper writes them;
* :func:`diagonal_bilstm_reference`: the Diagonal BiLSTM one pixel at a time on the unskewed
  image (left neighbour and pixel above; direction 1 on the mirrored image, shifted down a row);
* :func:`with_oracle_layers`: a copy of a model whose recurrent layers run these (same weights).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor

from chainrule.models.layers import DiagonalBiLSTMLayer, RowLSTMLayer


def lstm_update_plain(g: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """``g`` ``(B, 4h, ...)`` pre-activations (i, f, o, g), ``c`` ``(B, h, ...)`` -> ``(h, c)``."""
    i, f, o, gg = g.chunk(4, dim=1)
    c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(gg)
    return torch.sigmoid(o) * torch.tanh(c_new), c_new


def row_lstm_reference(layer: RowLSTMLayer, x: Tensor) -> Tensor:
    """``(B, F, H, W)`` -> ``(B, h, H, W)``, one row at a time."""
    b, _, hh, w = x.shape
    conv, k = layer.input_to_state, layer.kernel
    h = x.new_zeros(b, layer.units, w)
    c = x.new_zeros(b, layer.units, w)
    rows = []
    for r in range(hh):
        xr = x[:, :, r : r + 1, :]  # (B, F, 1, W)
        gin = F.conv2d(xr, conv.weight * conv.mask, conv.bias, padding=(0, k // 2))
        gss = F.conv1d(h, layer.state_to_state, padding=k // 2)  # (B, 4h, W)
        h, c = lstm_update_plain(gin[:, :, 0, :] + gss, c)
        rows.append(h)
    return torch.stack(rows, 2)


def diagonal_bilstm_reference(
    layer: DiagonalBiLSTMLayer, x: Tensor, context: Tensor | None = None
) -> Tensor:
    """``(B, F, H, W)`` (and the image ``(B, C, H, W)`` as context when the layer takes it)
    -> ``(B, h, H, W)``, one pixel at a time."""
    b, _, hh, w = x.shape
    u = layer.units
    conv = layer.input_to_state
    wi = (conv.weight * conv.mask)[:, :, 0, 0].view(2, 4 * u, -1)  # (2, 4h, F)
    bi = conv.bias.view(2, 4 * u)
    zero = x.new_zeros(b, u)
    outs = []
    for d in range(2):
        xd = x if d == 0 else x.flip(-1)  # direction 1: the mirrored image
        cd = context.flip(-1) if (d == 1 and context is not None) else None
        hs = [[zero] * w for _ in range(hh)]
        cs = [[zero] * w for _ in range(hh)]
        for r in range(hh):
            for col in range(w):
                above = hs[r - 1][col] if r > 0 else zero
                left = hs[r][col - 1] if col > 0 else zero
                c_left = cs[r][col - 1] if col > 0 else zero
                g = (
                    xd[:, :, r, col] @ wi[d].t()
                    + bi[d]
                    + above @ layer.state_to_state[d, 0]
                    + left @ layer.state_to_state[d, 1]
                )
                if cd is not None:  # the whole pixel, unmasked: direction 1 is shifted down
                    g = g + cd[:, :, r, col] @ layer.context_to_state.t()
                hs[r][col], cs[r][col] = lstm_update_plain(g, c_left)
        hd = torch.stack([torch.stack(row, -1) for row in hs], -2)  # (B, h, H, W)
        outs.append(hd if d == 0 else hd.flip(-1))
    down = F.pad(outs[1][:, :, :-1, :], (0, 0, 1, 0))  # direction 1 shifted down one row
    return outs[0] + down


def with_oracle_layers(model):
    """A deep copy of ``model`` (same weights) whose Row LSTM and Diagonal BiLSTM layers run
    the oracles above instead of their fast paths."""
    model = copy.deepcopy(model)
    for mod in model.modules():
        if isinstance(mod, RowLSTMLayer):
            mod.forward = lambda x, _m=mod: row_lstm_reference(_m, x)
        elif isinstance(mod, DiagonalBiLSTMLayer):
            mod.forward = lambda x, context=None, _m=mod: diagonal_bilstm_reference(_m, x, context)
    return model


__all__ = [
    "diagonal_bilstm_reference",
    "lstm_update_plain",
    "row_lstm_reference",
    "with_oracle_layers",
]
