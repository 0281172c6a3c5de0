"""Layers of PixelRNN (van den Oord, Kalchbrenner & Kavukcuoglu, 2016): masked convolutions,
the Row LSTM and the Diagonal BiLSTM.

Channel groups. In colour the dimensions of one pixel are generated R, then G, then B. Every
feature map of the network is split into ``C`` contiguous groups of channels (feature ``f`` of
``F`` belongs to group ``f * C // F``; group ``g`` "belongs" to colour channel ``g``). The
invariant kept by every layer is

    a group-``g`` feature at pixel ``p`` depends only on the pixels before ``p`` (raster order)
    and on the colour channels ``< g`` of ``p`` itself.

Masked convolutions keep it: at the centre tap an input group ``gi`` may feed an output group
``go`` iff ``gi < go`` (mask A, first layer, whose inputs are the raw colours) or ``gi <= go``
(mask B, every later layer); taps on earlier rows, or on the centre row to the left, are free;
taps on later positions are zero. Masks are buffers multiplied into the weight at every call,
so nothing is ever written into ``.data`` and a zero stays an exact zero (the Jacobian tests
check ``== 0.0``).

Recurrent layers (input ``(B, F, H, W)``, output ``(B, h, H, W)`` with ``h`` units; gates in
the order i, f, o, g; sigmoid on i, f, o and tanh on g; ``c' = f c + i g``, ``h' = o tanh c'``):

* :class:`RowLSTMLayer`: row ``r`` is computed from the whole row ``r`` of the input through a
  masked ``1 x k`` input-to-state convolution and from the hidden state of row ``r-1``
  through an unmasked ``1 x k`` state-to-state convolution (row ``r-1`` lies entirely in the
  past). The context of a pixel is a triangle above it, widening by ``k // 2`` per row: some
  earlier pixels are out of reach (see ``receptive_field``).
* :class:`DiagonalBiLSTMLayer`: the map is skewed (row ``r`` shifted right by ``r``) so that the
  diagonals become columns; a masked ``1 x 1`` input-to-state convolution; a ``2 x 1``
  state-to-state convolution over the previous column, padded on top, so the state at pixel
  ``(r, c)`` comes from its left neighbour ``(r, c-1)`` and the pixel above ``(r-1, c)``. The
  second direction runs on the mirrored image (right neighbour and above) and its output is
  *shifted down by one row* before it is added, because it has seen the rest of its own row.
  With ``context_ch > 0`` the image itself also enters the right-to-left gates unmasked (see
  :meth:`DiagonalBiLSTMLayer.forward`); then one layer sees every previous pixel.

Each recurrent layer computes the whole input-to-state convolution at once, then runs its
whole recurrence as *one* autograd node with a hand-written backward through time
(:class:`_RowLSTMRecurrence`, :class:`_DiagonalBiLSTMRecurrence`): one matrix product per step
for the state (a row of the Row LSTM, a diagonal of the Diagonal BiLSTM, both directions
batched, only the valid cells of each diagonal computed), the LSTM update written into
preallocated buffers, and in the backward the gate derivatives' factors for all steps at once,
one product per step back through time and the weight gradients as one product over all
steps. Autograd would otherwise record and replay a graph of many small operations per step.
The plain eager oracles (the Row LSTM one row at a time with ``F.conv2d`` / ``F.conv1d``, the
Diagonal BiLSTM one pixel at a time on the unskewed image, the LSTM update gate by gate) are in
``tests/oracles``; the two agree to float64 rounding, values and every gradient.

Steps are separable: :meth:`RowLSTMLayer.step` maps one row of input-to-state gates and the
previous row's ``(h, c)`` to the next; :meth:`DiagonalBiLSTMLayer.step` does the same for one
diagonal (the layers' ``forward`` no longer calls them: the fused recurrences do the same work
inside one autograd node). For sampling, each layer type also owns an incremental cache that advances by one
pixel in raster order (``stack_cache``: :class:`PixelCNNBlockCache`, :class:`RowLSTMCache`,
:class:`DiagonalBiLSTMStackCache`), so a new layer type brings its cache with it.
"""

from __future__ import annotations

import math
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import native


# ---------------------------------------------------------------------- masks
def channel_groups(n: int, groups: int) -> Tensor:
    """Group of each of ``n`` features split into ``groups`` contiguous blocks. ``(n,)`` int64."""
    return torch.arange(n) * groups // n


def causal_mask(out_groups: Tensor, in_groups: Tensor, kh: int, kw: int, mask_type: str) -> Tensor:
    """Mask ``(O, I, kh, kw)`` of a causal convolution centred at ``(kh // 2, kw // 2)``.

    Args:
        out_groups: ``(O,)`` colour group of each output feature.
        in_groups: ``(I,)`` colour group of each input feature.
        kh, kw: kernel size (odd).
        mask_type: ``"A"`` (centre: input group < output group) or ``"B"`` (<=).
    """
    if mask_type not in ("A", "B"):
        raise ValueError(f"mask_type must be 'A' or 'B', got {mask_type!r}")
    if kh % 2 == 0 or kw % 2 == 0:
        raise ValueError(f"kernel sizes must be odd, got {kh} x {kw}")
    ch, cw = kh // 2, kw // 2
    m = torch.zeros(len(out_groups), len(in_groups), kh, kw)
    m[:, :, :ch, :] = 1.0  # rows above
    m[:, :, ch, :cw] = 1.0  # same row, to the left
    go, gi = out_groups.view(-1, 1), in_groups.view(1, -1)
    centre = (gi < go) if mask_type == "A" else (gi <= go)
    m[:, :, ch, cw] = centre.to(m.dtype)
    return m


class MaskedConv2d(nn.Module):
    """A ``kh x kw`` convolution whose weight is multiplied by a causal mask (a buffer).

    Args:
        in_ch, out_ch: numbers of features.
        kernel: ``(kh, kw)`` (odd sizes); padded to keep ``H x W``.
        mask_type: ``"A"`` or ``"B"`` (see :func:`causal_mask`).
        colors: number of colour groups ``C``.
        in_groups, out_groups: explicit ``(I,)`` / ``(O,)`` groups (default: contiguous blocks).
    """

    mask: Tensor

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel: tuple[int, int],
        mask_type: str,
        colors: int,
        *,
        in_groups: Tensor | None = None,
        out_groups: Tensor | None = None,
        bias: bool = True,
    ):
        super().__init__()
        kh, kw = kernel
        gi = channel_groups(in_ch, colors) if in_groups is None else in_groups
        go = channel_groups(out_ch, colors) if out_groups is None else out_groups
        self.register_buffer("mask", causal_mask(go, gi, kh, kw, mask_type), persistent=False)
        fan_in = in_ch * (kh * kw // 2 + 1)  # about the unmasked taps (no data-dependent op: meta)
        self.weight = nn.Parameter(torch.randn(out_ch, in_ch, kh, kw) / math.sqrt(fan_in))
        self.bias = nn.Parameter(torch.zeros(out_ch)) if bias else None
        self.padding = (kh // 2, kw // 2)

    def masked_weight(self) -> Tensor:
        return self.weight * self.mask

    def forward(self, x: Tensor) -> Tensor:  # (B, I, H, W) -> (B, O, H, W)
        return F.conv2d(x, self.masked_weight(), self.bias, padding=self.padding)


def gate_groups(units: int, colors: int) -> Tensor:
    """Groups of the ``4 * units`` gate pre-activations (i, f, o, g blocks of ``units``)."""
    return channel_groups(units, colors).repeat(4)


class _LSTMUpdate(torch.autograd.Function):
    """The LSTM update with a hand-written backward.

    Autograd's own backward of the sliced gates zero-fills a full-width gradient for every
    slice (six per step) and adds them up; here the gate gradients are computed from the saved
    activations and concatenated once. Tested against the gate-by-gate oracle in float64
    (``tests/oracles/pixelrnn.py``).
    """

    @staticmethod
    def forward(ctx, g: Tensor, c: Tensor, units: int) -> tuple[Tensor, Tensor]:
        u = units
        s = torch.sigmoid(g[..., : 3 * u])
        t = torch.tanh(g[..., 3 * u :])
        i, f, o = s[..., :u], s[..., u : 2 * u], s[..., 2 * u :]
        c_new = torch.addcmul(f * c, i, t)
        tc = torch.tanh(c_new)
        ctx.save_for_backward(s, t, c, tc)
        ctx.units = u
        return o * tc, c_new

    @staticmethod
    def backward(ctx, dh: Tensor, dc_new: Tensor):
        s, t, c, tc = ctx.saved_tensors
        u = ctx.units
        i, f, o = s[..., :u], s[..., u : 2 * u], s[..., 2 * u :]
        dc = torch.addcmul(dc_new, dh * o, 1 - tc * tc)
        ds = torch.cat([dc * t, dc * c, dh * tc], -1) * s * (1 - s)  # d(i, f, o) pre-activation
        dg = torch.cat([ds, dc * i * (1 - t * t)], -1)
        return dg, dc * f, None


def lstm_update(g: Tensor, c: Tensor, units: int) -> tuple[Tensor, Tensor]:
    """Fused LSTM update: ``g`` ``(..., 4h)`` pre-activations (i, f, o, g), ``c`` ``(..., h)``.

    Returns ``(h, c)`` of the step, each ``(..., h)``.
    """
    return _LSTMUpdate.apply(g, c, units)


# ---------------------------------------------------------------------- Row LSTM
def _activations_into(g: Tensor, a: Tensor, u: int) -> None:
    """``a`` = ``sigmoid(i, f, o)``, ``tanh(g)`` of the pre-activations ``g`` ``(..., 4h)``, with
    one sigmoid over all four blocks: ``tanh(x) = 2 sigmoid(2x) - 1`` (on the CPU ``tanh`` costs
    about four times a ``sigmoid``). ``g``'s last block is doubled in place."""
    g[..., 3 * u :].mul_(2)
    torch.sigmoid(g, out=a)
    a[..., 3 * u :].mul_(2).sub_(1)


def _tanh_into(x: Tensor, out: Tensor) -> Tensor:
    """``out = tanh(x) = 2 sigmoid(2x) - 1`` (see :func:`_activations_into`)."""
    torch.mul(x, 2, out=out)
    return out.sigmoid_().mul_(2).sub_(1)


def _lstm_derivative_factors(act: Tensor, c_prev: Tensor, tc: Tensor) -> tuple[Tensor, Tensor]:
    """The factors of the LSTM update's derivative for many cells at once.

    ``act`` ``(..., 4h)``: the activations ``sigmoid(i, f, o)``, ``tanh(g)``; ``c_prev``,
    ``tc`` ``(..., h)``: the previous cell and ``tanh`` of the new one. Returns ``fac``
    ``(..., 4h)`` and ``q`` ``(..., h)`` such that, with ``dh`` the gradient of the cell's
    output and ``dc`` that of its cell (the carried one plus ``dh * q``), the gradients of the
    pre-activations are ``dc * fac`` for i, f, g and ``dh * fac`` for o."""
    u = act.shape[-1] // 4
    s, gt = act[..., : 3 * u], act[..., 3 * u :]
    sd = torch.addcmul(s, s, s, value=-1)  # sigmoid' = s - s^2
    fac = act.new_empty(act.shape)
    torch.mul(sd[..., :u], gt, out=fac[..., :u])  # i: dc * g
    torch.mul(sd[..., u : 2 * u], c_prev, out=fac[..., u : 2 * u])  # f: dc * c_prev
    torch.mul(sd[..., 2 * u :], tc, out=fac[..., 2 * u : 3 * u])  # o: dh * tanh(c)
    i = act[..., :u]
    torch.addcmul(i, i * gt, gt, value=-1, out=fac[..., 3 * u :])  # g: dc * i * (1 - g^2)
    o = act[..., 2 * u : 3 * u]
    q = torch.addcmul(o, o * tc, tc, value=-1)  # o * (1 - tanh(c)^2)
    return fac, q


def _row_lstm_kernel(t: Tensor):
    """The compiled Row LSTM rows (:mod:`chainrule.native`, ``row_lstm.h``) for a CPU
    float32 / float64 tensor, else None (the PyTorch loop)."""
    if t.device.type != "cpu" or t.dtype not in (torch.float32, torch.float64):
        return None
    return native.row_lstm()


class _RowLSTMRecurrence(torch.autograd.Function):
    """The whole Row LSTM layer (input-to-state convolution and recurrence) as one autograd
    node, with a hand-written backward through time.

    Forward: ``x`` ``(B, F, H, W)``, the masked input-to-state weight ``(4h, F, k)`` and bias,
    the state-to-state weight ``(4h, h, k)`` -> the hidden states ``(H, B*W, h)`` (rows of the
    flat layout ``(b, w)``). The input is copied once, channels last and zero-padded; the ``k``
    input taps of every pixel fill the first ``k*F`` columns of a buffer ``(H, B*W, k*F +
    k*h)`` at once. Per row, the previous row's ``k`` state taps (a strided view of a
    zero-padded state buffer) are copied into the rest of the row's columns, and one product
    with both weights (``K = k*F + k*h``) gives the gates, which the LSTM update turns into the
    row's state, written into preallocated buffers (the activations, cells and ``tanh`` of the
    cells are kept for the backward).

    Backward: the factors of the LSTM derivative for all rows at once, then per row, last to
    first: the cell gradient, the four gate gradients (two products), the carry to the previous
    cell, and one product back through the state-to-state weight folded onto the previous row
    (``k`` shifted adds). After the loop, all at once: the weight gradients (one product of all
    gate gradients with the buffer of taps), the bias gradient, and the input gradient (one
    product, ``k`` shifted adds). Tested against the eager oracle in float64
    (``tests/oracles``).

    On the CPU (float32 / float64) the loops over the rows run in a compiled kernel
    (:mod:`chainrule.native`, ``row_lstm.h``): the same products (``at::addmm`` / ``at::mm``)
    with each row's LSTM update, and its derivative, one fused pass instead of about a dozen
    operations; the PyTorch loops (GPUs, autocast, no compiler) stay beside it.
    """

    @staticmethod
    def forward(ctx, x: Tensor, w_in: Tensor, bias: Tensor, weight: Tensor) -> Tensor:
        with torch.autocast(x.device.type, enabled=False):
            b, f, hh, w = x.shape
            u4, u, k = weight.shape
            p, n, kf = k // 2, b * w, k * f
            dt = x.dtype
            # taps-major layout [t * F + ci | t * h + ci], the order of the strided taps
            wcat = torch.cat(
                [
                    w_in.to(dt).transpose(1, 2).reshape(u4, kf),
                    weight.to(dt).transpose(1, 2).reshape(u4, k * u),
                ],
                1,
            )
            wcat_t = wcat.t()
            b_dtype, bias = bias.dtype, bias.to(dt)
            xpad = x.new_zeros(hh, b, w + 2 * p, f)
            xpad[:, :, p : p + w] = x.permute(2, 0, 3, 1)
            taps = x.new_empty(hh, n, kf + k * u)
            sx = xpad.stride()
            taps[..., :kf].view(hh, b, w, kf).copy_(
                xpad.as_strided((hh, b, w, kf), (sx[0], sx[1], f, 1))
            )
            taps[0, :, kf:].zero_()  # the state above the image
            ext = _row_lstm_kernel(x)
            if ext is not None:  # the same loop, each row's LSTM update one fused pass
                out, act, cell, tc = ext.row_lstm_forward(taps, wcat_t, bias, b, w, k)
            else:
                out, act, cell, tc = _RowLSTMRecurrence._rows(taps, wcat_t, bias, b, w, k)
        ctx.save_for_backward(wcat, act, cell, tc, taps)
        ctx.shape = (b, f, w, k, w_in.dtype, weight.dtype, b_dtype)
        return out

    @staticmethod
    def _rows(taps: Tensor, wcat_t: Tensor, bias: Tensor, b: int, w: int, k: int):
        """The loop over the rows in PyTorch: ``(out, act, cell, tc)``; fills the state taps of
        ``taps`` (its input taps filled and row 0's state taps zero)."""
        hh, n, _ = taps.shape
        u4 = wcat_t.shape[1]
        u, p = u4 // 4, k // 2
        kf = taps.shape[2] - k * u
        hpad = taps.new_zeros(b, w + 2 * p, u)  # the last row's h, padded
        hmid = hpad[:, p : p + w]
        out = taps.new_empty(hh, n, u)
        cell = taps.new_zeros(hh + 1, n, u)  # row r + 1 holds c of row r
        act = taps.new_empty(hh, n, u4)  # sigmoid(i, f, o), tanh(g)
        tc = taps.new_empty(hh, n, u)  # tanh(c)
        sb = hpad.stride(0)
        for r in range(hh):
            if r > 0:
                hmid.copy_(out[r - 1].view(b, w, u))
                taps[r, :, kf:].view(b, w, k * u).copy_(hpad.as_strided((b, w, k * u), (sb, u, 1)))
            g = torch.addmm(bias, taps[r], wcat_t)
            a = act[r]
            _activations_into(g, a, u)
            c = cell[r + 1]
            torch.mul(a[:, u : 2 * u], cell[r], out=c)
            c.addcmul_(a[:, :u], a[:, 3 * u :])
            _tanh_into(c, tc[r])
            torch.mul(a[:, 2 * u : 3 * u], tc[r], out=out[r])
        return out, act, cell, tc

    @staticmethod
    def backward(ctx, dout: Tensor):
        wcat, act, cell, tc, taps = ctx.saved_tensors
        b, f, w, k, in_dtype, w_dtype, b_dtype = ctx.shape
        hh, n, u4 = act.shape
        u, p, kf = u4 // 4, k // 2, k * f
        w_state = wcat[:, kf:]  # (4h, k*h)
        dout = dout.to(act.dtype).contiguous()
        ext = _row_lstm_kernel(act)
        if ext is not None:
            dgates = ext.row_lstm_backward(dout, w_state.contiguous(), act, cell, tc, b, w, k)
        else:
            dgates = _RowLSTMRecurrence._gate_gradients(dout, w_state, act, cell, tc, b, w, k)
        dflat = dgates.view(hh * n, u4)
        dw = torch.mm(dflat.t(), taps.view(hh * n, -1))  # (4h, k*F + k*h)
        dw_in = dw[:, :kf].reshape(u4, k, f).transpose(1, 2).to(in_dtype)
        dweight = dw[:, kf:].reshape(u4, k, u).transpose(1, 2).to(w_dtype)
        dbias = dflat.sum(0).to(b_dtype)
        dx = None
        if ctx.needs_input_grad[0]:
            dxt = torch.mm(dflat, wcat[:, :kf]).view(hh, b, w, k, f)
            dxpad = dxt.new_zeros(hh, b, w + 2 * p, f)
            for t in range(k):
                dxpad[:, :, t : t + w].add_(dxt[:, :, :, t])
            dx = dxpad[:, :, p : p + w].permute(1, 3, 0, 2)
        return dx, dw_in, dbias, dweight

    @staticmethod
    def _gate_gradients(dout, w_state, act, cell, tc, b: int, w: int, k: int) -> Tensor:
        """The gradients of every row's gates ``(H, n, 4h)``, last row to first (PyTorch)."""
        hh, n, u4 = act.shape
        u, p = u4 // 4, k // 2
        fac, q = _lstm_derivative_factors(act, cell[:-1], tc)
        fgate = act[..., u : 2 * u]
        dgates = act.new_empty(act.shape)
        dhbuf = act.new_zeros(b, w + 2 * p, u)  # dh of a row, padded (the pads: junk)
        inner = dhbuf[:, p : p + w]
        dh = dout[hh - 1].view(b, w, u)
        dc_carry: Tensor | None = None
        for r in range(hh - 1, -1, -1):
            qr = q[r].view(b, w, u)
            dc = dh * qr if dc_carry is None else torch.addcmul(dc_carry, dh, qr)
            dg = dgates[r].view(b, w, 4, u)
            torch.mul(fac[r].view(b, w, 4, u), dc.unsqueeze(2), out=dg)
            torch.mul(fac[r, :, 2 * u : 3 * u].view(b, w, u), dh, out=dg[:, :, 2])
            if r == 0:
                break
            dc_carry = dc * fgate[r].view(b, w, u)
            dtaps = torch.mm(dgates[r], w_state).view(b, w, k, u)
            inner.copy_(dout[r - 1].view(b, w, u))
            for t in range(k):
                dhbuf[:, t : t + w].add_(dtaps[:, :, t])
            dh = inner
        return dgates


class RowLSTMLayer(nn.Module):
    """Row LSTM layer: ``(B, F, H, W)`` -> ``(B, units, H, W)``.

    Args:
        in_ch: input features F.
        units: hidden units h.
        colors: colour groups C.
        kernel: k of the ``1 x k`` input-to-state and state-to-state convolutions (odd).
    """

    def __init__(self, in_ch: int, units: int, colors: int, kernel: int = 3):
        super().__init__()
        self.units, self.kernel = units, kernel
        self.input_to_state = MaskedConv2d(
            in_ch, 4 * units, (1, kernel), "B", colors, out_groups=gate_groups(units, colors)
        )
        # state-to-state: conv1d weight (4h, h, k) over the previous row, unmasked
        self.state_to_state = nn.Parameter(
            torch.randn(4 * units, units, kernel) / math.sqrt(units * kernel)
        )

    takes_context = False

    @staticmethod
    def stack_cache(blocks, n: int, h: int, w: int, like: Tensor) -> StackCache:
        """Incremental cache of a stack of :class:`Residual` Row LSTM blocks (one pixel at a
        time, :class:`RowLSTMCache` per block)."""
        return StackCache([RowLSTMCache(b, n, h, w, like) for b in blocks])

    def init_state(self, b: int, w: int, like: Tensor) -> tuple[Tensor, Tensor]:
        """Zero ``(h, c)`` of the row above the image, each ``(B * W, h)``."""
        z = like.new_zeros(b * w, self.units)
        return z, z

    def step(
        self, gin_row: Tensor, state: tuple[Tensor, Tensor], b: int, w: int
    ) -> tuple[Tensor, Tensor]:
        """One row. ``gin_row``: ``(B * W, 4h)`` input-to-state gates of the row (bias
        included); ``state``: ``(h, c)`` of the previous row, each ``(B * W, h)`` (rows of the
        flat layout are ``(b, w)``). Returns the row's ``(h, c)``."""
        h, c = state
        k, p = self.kernel, self.kernel // 2
        hp = F.pad(h.view(b, w, self.units), (0, 0, p, p))  # (B, W + 2p, h)
        cols = hp.unfold(1, k, 1).reshape(b * w, self.units * k)  # (B*W, h*k): [ci * k + t]
        m = self.state_to_state.reshape(4 * self.units, self.units * k)  # (4h, h*k)
        g = torch.addmm(gin_row, cols, m.t())  # (B*W, 4h)
        return lstm_update(g, c, self.units)

    def forward(self, x: Tensor) -> Tensor:
        b, _, hh, w = x.shape
        conv = self.input_to_state
        w_in = conv.masked_weight()[:, :, 0, :]  # (4h, F, k)
        bias = conv.bias if conv.bias is not None else w_in.new_zeros(4 * self.units)
        out = _RowLSTMRecurrence.apply(x, w_in, bias, self.state_to_state)  # (H, B*W, h)
        return out.view(hh, b, w, self.units).permute(1, 3, 0, 2)  # (B, h, H, W)


# ---------------------------------------------------------------------- skewing
def skew(x: Tensor) -> Tensor:
    """Shift row ``r`` right by ``r``: ``(..., H, W)`` -> ``(..., H, W + H - 1)``, zeros
    elsewhere. Column ``j`` of the result is the diagonal ``{(r, j - r)}`` of the input."""
    *lead, h, w = x.shape
    padded = F.pad(x, (0, h))  # (..., H, W + H)
    flat = padded.reshape(*lead, h * (w + h))[..., : h * (w + h - 1)]
    return flat.reshape(*lead, h, w + h - 1)


def unskew(x: Tensor, width: int) -> Tensor:
    """Inverse of :func:`skew`: ``(..., H, W + H - 1)`` -> ``(..., H, W)``."""
    *lead, h, ws = x.shape
    if ws != width + h - 1:
        raise ValueError(f"unskew: expected width {width + h - 1} for W={width}, H={h}, got {ws}")
    flat = F.pad(x.reshape(*lead, h * ws), (0, h))  # (..., H * (W + H))
    return flat.reshape(*lead, h, width + h)[..., :width]


def diagonal_rows(j: int, h: int, w: int) -> tuple[int, int]:
    """First and last image row on diagonal (skewed column) ``j`` of an ``H x W`` image."""
    return max(0, j - w + 1), min(j, h - 1)


_DIAG_CACHE: dict[tuple[int, int, str], tuple[Tensor, Tensor, list[int]]] = {}


def diagonal_order(h: int, w: int, device: torch.device) -> tuple[Tensor, Tensor, list[int]]:
    """The pixels of an ``H x W`` image diagonal by diagonal (diagonal ``j`` = skewed column
    ``j``, rows top to bottom).

    Returns:
        ``to_diag`` ``(H*W,)``: raster index of the k-th cell in diagonal order;
        ``to_raster`` ``(H*W,)``: its inverse (position in diagonal order of each raster index);
        ``sizes``: number of cells of each of the ``W + H - 1`` diagonals.
    """
    key = (h, w, str(device))
    if key not in _DIAG_CACHE:
        to_diag, sizes = [], []
        for j in range(w + h - 1):
            lo, hi = diagonal_rows(j, h, w)
            to_diag += [r * w + (j - r) for r in range(lo, hi + 1)]
            sizes.append(hi - lo + 1)
        t = torch.tensor(to_diag, dtype=torch.int64)
        inv = torch.empty_like(t)
        inv[t] = torch.arange(h * w)
        _DIAG_CACHE[key] = (t.to(device), inv.to(device), sizes)
    return _DIAG_CACHE[key]


_DIAG_PLAN: dict[tuple[int, int, str], DiagonalPlan] = {}


class DiagonalPlan:
    """Index tables of the Diagonal BiLSTM recurrence on an ``H x W`` image.

    States live in a zero-initialised buffer ``(2, S, B, h)`` of *slots*, one per diagonal
    ``j = -1 .. W + H - 2`` (diagonal ``j`` = skewed column ``j``; ``-1``: the left edge):
    slot ``j`` holds the image rows ``lo_j - 1 .. hi_j + 1`` of the diagonal, its ``R_j`` cells
    and one zero cell at each end (``S = H*W + 2 (W + H)``). The pixel above and the pixel to
    the left of the cells ``lo_j .. hi_j`` are the cells ``lo_j - 1 .. hi_j - 1`` and
    ``lo_j .. hi_j`` of diagonal ``j - 1``: two overlapping contiguous ranges of slot ``j - 1``
    (the zero cells stand for the row above the image and the left edge). Gates are packed in
    diagonal order (:func:`diagonal_order`).

    ``steps``: per diagonal ``(offset in the packed order, R_j, start of the pixels above in
    the buffer, start of the diagonal's own cells in the buffer)``.
    """

    def __init__(self, h: int, w: int, device: torch.device):
        to_diag, _, sizes = diagonal_order(h, w, device)
        self.h, self.w, self.sizes = h, w, sizes
        self.rows = [diagonal_rows(j, h, w) for j in range(w + h - 1)]
        lo = [0] + [r[0] for r in self.rows]  # slot k = j + 1
        base = [0]
        for k in range(1, len(lo)):
            prev = 2 if k == 1 else sizes[k - 2] + 2
            base.append(base[-1] + prev)
        self.cells = base[-1] + sizes[-1] + 2
        self.steps: list[tuple[int, int, int, int]] = []
        offset = 0
        for j, n in enumerate(sizes):
            above = base[j] + lo[j + 1] - lo[j]  # slot j - 1 (k = j): image row lo_j - 1
            self.steps.append((offset, n, above, base[j + 1] + 1))
            offset += n
        self.steps_cpu = torch.tensor(self.steps, dtype=torch.int64)  # for the compiled kernel
        r, c = to_diag // w, to_diag % w  # the packed cells, diagonal order
        lo_t = torch.tensor(lo, device=device)
        base_t = torch.tensor(base, device=device)
        diag = r + c

        def where(row: Tensor, diag: Tensor) -> Tensor:  # buffer cell of (row, diagonal)
            return base_t[diag + 1] + row - lo_t[diag + 1] + 1

        self.to_diag = to_diag
        self.to_diag_mirrored = r * w + (w - 1 - c)  # raster index in the mirrored image
        self.above = where(r - 1, diag - 1)  # of every packed cell, the pixel above
        self.left = where(r, diag - 1)  # and the pixel to the left
        rr = torch.arange(h * w, device=device) // w
        cc = torch.arange(h * w, device=device) % w
        self.out0 = where(rr, rr + cc)  # raster pixel -> its direction-0 state
        # direction 1 at (r - 1, mirrored column), shifted down one row (rows 1 .. H-1)
        self.out1 = where(rr - 1, rr - 1 + w - 1 - cc)[w:]
        # the pixel above, then the pixel to the left, of every packed cell (in one index)
        self.taps = torch.cat([self.above, self.left])
        # the input gather (both directions) and its inverse, a gather too
        self.gather = torch.cat([to_diag, self.to_diag_mirrored])
        inv = torch.empty(2, h * w, dtype=torch.int64, device=device)
        inv[0, to_diag] = torch.arange(h * w, device=device)
        inv[1, self.to_diag_mirrored] = torch.arange(h * w, device=device)
        self.scatter = inv


def diagonal_plan(h: int, w: int, device: torch.device) -> DiagonalPlan:
    key = (h, w, str(device))
    if key not in _DIAG_PLAN:
        _DIAG_PLAN[key] = DiagonalPlan(h, w, device)
    return _DIAG_PLAN[key]


class _GatherRows(torch.autograd.Function):
    """``x.index_select(0, index)`` where ``index`` is made of ``P`` permutations of the rows
    of ``x``; the backward is a gather too (the inverse permutations ``inverse`` ``(P, N)``,
    summed), not autograd's scatter-add."""

    @staticmethod
    def forward(ctx, x: Tensor, index: Tensor, inverse: Tensor) -> Tensor:
        ctx.save_for_backward(inverse)
        return x.index_select(0, index)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (inverse,) = ctx.saved_tensors
        parts = grad.reshape(inverse.shape[0], inverse.shape[1], *grad.shape[1:])
        dx = parts[0].index_select(0, inverse[0])
        for k in range(1, inverse.shape[0]):
            dx.add_(parts[k].index_select(0, inverse[k]))
        return dx, None, None


def _diagonal_kernel(t: Tensor):
    """The compiled Diagonal BiLSTM walk (:mod:`chainrule.native`) for a CPU float32 / float64
    tensor, else None (the PyTorch walk)."""
    if t.device.type != "cpu" or t.dtype not in (torch.float32, torch.float64):
        return None
    return native.diagonal()


class _DiagonalBiLSTMRecurrence(torch.autograd.Function):
    """Both directions of the Diagonal BiLSTM recurrence as one autograd node, with a
    hand-written backward through time.

    Forward: ``gin`` ``(2, H*W, B, 4h)`` input-to-state gates in diagonal order (direction 1
    on the mirrored image, bias and context included) and the state-to-state weight
    ``(2, 2, h, 4h)`` -> the layer output ``(H*W, B, h)`` in raster order, direction 1 already
    mirrored back and shifted down one row. Per diagonal: two batched products (pixel above,
    pixel to the left; both directions in the batch), the LSTM update written into
    preallocated buffers (see :class:`DiagonalPlan`).

    Backward: the gate derivative factors for every cell at once; per diagonal, last to first,
    the cell and gate gradients and two batched products back to the previous diagonal's
    states (added in place); the weight gradients are products over all cells after the loop
    (one per direction and tap), and the gradient of ``gin`` is the gate gradient itself.

    On the CPU (float32 / float64) both walks run in a compiled kernel (:mod:`chainrule.native`,
    ``diagonal.h``): the same arithmetic cell by cell, each cell's two ``h x 4h`` products
    fused with its LSTM update, one thread per direction; :meth:`_walk` / :meth:`_walk_back` are
    the PyTorch walks (GPUs, autocast, or where the kernel cannot be built). Both are held to
    the eager oracle in ``tests/test_pixelrnn.py``.
    """

    @staticmethod
    def forward(ctx, gin: Tensor, weight: Tensor, plan: DiagonalPlan) -> Tensor:
        wt = weight.to(gin.dtype)
        w_up, w_left = wt[:, 0], wt[:, 1]  # (2, h, 4h)
        ext = _diagonal_kernel(gin)
        if ext is not None:  # the same walk, cell by cell, in one call
            hs, cs, act, tc = ext.forward(
                gin.contiguous(), w_up.contiguous(), w_left.contiguous(), plan.steps_cpu, plan.cells
            )
        else:
            hs, cs, act, tc = _DiagonalBiLSTMRecurrence._walk(gin, w_up, w_left, plan)
        out = hs[0].index_select(0, plan.out0)
        out[plan.w :].add_(hs[1].index_select(0, plan.out1))  # row 0: direction 0 only
        ctx.save_for_backward(weight, act, cs, tc, hs)
        ctx.plan = plan
        return out

    @staticmethod
    def _walk(gin: Tensor, w_up: Tensor, w_left: Tensor, plan: DiagonalPlan):
        """The forward walk over the diagonals in PyTorch: ``(hs, cs, act, tc)``."""
        _, hw, b, u4 = gin.shape
        u = u4 // 4
        hs = gin.new_zeros(2, plan.cells, b, u)  # the slots of DiagonalPlan
        cs = hs.new_zeros(hs.shape)
        act = gin.new_empty(gin.shape)
        tc = gin.new_empty(2, hw, b, u)
        for o, nr, up, cur in plan.steps:
            nb = nr * b
            g = torch.baddbmm(
                gin[:, o : o + nr].reshape(2, nb, u4), hs[:, up : up + nr].view(2, nb, u), w_up
            )
            g.baddbmm_(hs[:, up + 1 : up + 1 + nr].view(2, nb, u), w_left)
            a = act[:, o : o + nr].view(2, nb, u4)
            _activations_into(g, a, u)
            c = cs[:, cur : cur + nr].view(2, nb, u)
            torch.mul(a[..., u : 2 * u], cs[:, up + 1 : up + 1 + nr].view(2, nb, u), out=c)
            c.addcmul_(a[..., :u], a[..., 3 * u :])
            t = tc[:, o : o + nr].view(2, nb, u)
            _tanh_into(c, t)
            torch.mul(a[..., 2 * u : 3 * u], t, out=hs[:, cur : cur + nr].view(2, nb, u))
        return hs, cs, act, tc

    @staticmethod
    def backward(ctx, dout: Tensor):
        weight, act, cs, tc, hs = ctx.saved_tensors
        plan: DiagonalPlan = ctx.plan
        _, hw, b, u4 = act.shape
        u = u4 // 4
        wt = weight.to(act.dtype)
        w_up_t, w_left_t = wt[:, 0].transpose(1, 2), wt[:, 1].transpose(1, 2)  # (2, 4h, h)
        dh_all = hs.new_zeros(hs.shape)
        dout = dout.contiguous()
        dh_all[0].index_copy_(0, plan.out0, dout)
        dh_all[1].index_copy_(0, plan.out1, dout[plan.w :])
        ext = _diagonal_kernel(act)
        if ext is not None:
            w_up_tc, w_left_tc = w_up_t.contiguous(), w_left_t.contiguous()  # (2, 4h, h)
            dgates = ext.backward(dh_all, w_up_tc, w_left_tc, plan.steps_cpu, cs, act, tc)
        else:
            dgates = _DiagonalBiLSTMRecurrence._walk_back(
                dh_all, w_up_t, w_left_t, act, cs, tc, plan
            )
        dg_flat = dgates.view(2, hw * b, u4)
        # (2, 2, H*W*B, h): the pixel above and to the left of every cell
        taps = hs.index_select(1, plan.taps).view(2, 2, hw * b, u)
        dw = torch.stack(
            [
                torch.stack([torch.mm(taps[d, t].t(), dg_flat[d]) for t in range(2)])
                for d in range(2)
            ]
        )
        return dgates, dw.to(weight.dtype), None

    @staticmethod
    def _walk_back(dh_all, w_up_t, w_left_t, act, cs, tc, plan: DiagonalPlan) -> Tensor:
        """The backward walk in PyTorch: the gates' gradients ``(2, H*W, B, 4h)``; adds the
        carried state gradients into ``dh_all``."""
        _, hw, b, u4 = act.shape
        u = u4 // 4
        dc_all = cs.new_zeros(cs.shape)
        c_left = cs.index_select(1, plan.left)  # (2, HW, B, h) packed
        fac, q = _lstm_derivative_factors(act, c_left, tc)
        dgates = act.new_empty(act.shape)
        for step, (o, nr, up, cur) in reversed(list(enumerate(plan.steps))):
            nb = nr * b
            dh = dh_all[:, cur : cur + nr]  # (2, R, B, h)
            dc = torch.addcmul(dc_all[:, cur : cur + nr], dh, q[:, o : o + nr])
            dg = dgates[:, o : o + nr].view(2, nr, b, 4, u)
            fj = fac[:, o : o + nr].view(2, nr, b, 4, u)
            torch.mul(fj, dc.unsqueeze(3), out=dg)
            torch.mul(fj[:, :, :, 2], dh, out=dg[:, :, :, 2])
            if step == 0:
                break
            dc_all[:, up + 1 : up + 1 + nr].addcmul_(dc, act[:, o : o + nr, :, u : 2 * u])
            dgf = dg.view(2, nb, u4)
            dh_all[:, up : up + nr].view(2, nb, u).baddbmm_(dgf, w_up_t)
            dh_all[:, up + 1 : up + 1 + nr].view(2, nb, u).baddbmm_(dgf, w_left_t)
        return dgates


# ---------------------------------------------------------------------- Diagonal BiLSTM
class DiagonalBiLSTMLayer(nn.Module):
    """Diagonal BiLSTM layer: ``(B, F, H, W)`` -> ``(B, units, H, W)``.

    Direction 0 runs left to right, direction 1 on the mirrored image (right to left); the
    output is ``h_0 + shift_down(h_1)``.

    Args:
        in_ch: input features F.
        units: hidden units h (per direction).
        colors: colour groups C.
        context_ch: channels of the image fed, unmasked, into the right-to-left gates (0: none,
            the paper's layer as written).
    """

    def __init__(self, in_ch: int, units: int, colors: int, context_ch: int = 0):
        super().__init__()
        self.units = units
        # input-to-state for both directions: one 1x1 masked conv with 2 * 4h outputs
        self.input_to_state = MaskedConv2d(
            in_ch, 8 * units, (1, 1), "B", colors, out_groups=gate_groups(units, colors).repeat(2)
        )
        # optional: the image itself, *unmasked*, into the right-to-left gates (see forward)
        self.context_to_state = (
            nn.Parameter(torch.randn(4 * units, context_ch) / math.sqrt(context_ch))
            if context_ch
            else None
        )
        # state-to-state (direction, tap, h_in, 4h_out); tap 0: the pixel above, tap 1: the
        # previous pixel in the row (the 2 x 1 column kernel of the skewed map)
        self.state_to_state = nn.Parameter(
            torch.randn(2, 2, units, 4 * units) / math.sqrt(2 * units)
        )

    @property
    def takes_context(self) -> bool:
        """Whether :meth:`forward` takes the image as context (``context_ch > 0``)."""
        return self.context_to_state is not None

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """``x``: ``(B, F, H, W)`` features; ``context``: ``(B, C', H, W)`` the image, needed
        when the layer was built with ``context_ch = C'``.

        Why the context: the stream features at a pixel never hold that pixel's own last
        colour (mask A), so with the paper's layer alone the right-to-left state of row
        ``r - 1`` never receives the last pixel of that row, and a pixel ``(r, c)`` with ``c``
        left of the first convolution's reach does not see ``(r - 1, W - 1)`` at any depth
        (the tests show this blind spot). The right-to-left output is shifted down a row, so
        its gates may read the whole pixel ``(r - 1, c)``: an unmasked 1 x 1 map of the image
        into them restores the complete context without any leak.
        """
        if (context is None) != (self.context_to_state is None):
            raise ValueError("context must be given exactly when the layer has context_ch > 0")
        b, f, hh, w = x.shape
        u = self.units
        plan = diagonal_plan(hh, w, x.device)
        gin = self.packed_input_gates(x, context, plan)  # (2, H*W, B, 4h), diagonal order
        out = _DiagonalBiLSTMRecurrence.apply(gin, self.state_to_state, plan)  # (H*W, B, h)
        return out.view(hh, w, b, u).permute(2, 3, 0, 1)  # (B, h, H, W)

    def packed_input_gates(self, x: Tensor, context: Tensor | None, plan: DiagonalPlan) -> Tensor:
        """Input-to-state gates of both directions in diagonal order, ``(2, H*W, B, 4h)``
        (direction 1 on the mirrored image, with the context term): the skew is a gather of
        the input features (one index per direction), then one batched product."""
        b, f, hh, w = x.shape
        u4 = 4 * self.units
        conv = self.input_to_state
        feats = x.permute(2, 3, 0, 1).reshape(hh * w, b, f)
        feats = _GatherRows.apply(feats, plan.gather, plan.scatter)
        wts = conv.masked_weight()[:, :, 0, 0].view(2, u4, f).transpose(1, 2)  # (2, F, 4h)
        if context is not None:
            assert self.context_to_state is not None
            cc = context.shape[1]
            ctx = context.permute(2, 3, 0, 1).reshape(hh * w, b, cc)
            ctx = _GatherRows.apply(ctx, plan.gather, plan.scatter)
            feats = torch.cat([feats, ctx], 2)  # direction 0 gets the context with zero weights
            cw = self.context_to_state.t()
            wts = torch.cat([wts, torch.stack([torch.zeros_like(cw), cw])], 1)
        bias = conv.bias if conv.bias is not None else wts.new_zeros(2 * u4)
        gin = torch.baddbmm(bias.view(2, 1, u4), feats.view(2, hh * w * b, -1), wts)
        return gin.view(2, hh * w, b, u4)

    @staticmethod
    def stack_cache(blocks, n: int, h: int, w: int, like: Tensor) -> DiagonalBiLSTMStackCache:
        """Incremental cache of a stack of :class:`Residual` Diagonal BiLSTM blocks (one
        pixel at a time; the right-to-left direction of all layers batched per row)."""
        return DiagonalBiLSTMStackCache(blocks, n, h, w, like)

    def combine(self, h: Tensor) -> Tensor:
        """``(2, B, h, H, W)`` outputs of both directions (direction 1 already mirrored back)
        -> ``(B, h, H, W)``: direction 1 shifted down one row, so it only brings rows above."""
        down = F.pad(h[1, :, :, :-1, :], (0, 0, 1, 0))
        return h[0] + down

    def step(
        self,
        gin: Tensor,
        h_prev: Tensor,
        c_prev: Tensor,
        rows: tuple[int, int],
        prev_rows: tuple[int, int],
    ) -> tuple[Tensor, Tensor]:
        """One diagonal for both directions.

        Args:
            gin: ``(2, R, B, 4h)`` input-to-state gates of the diagonal's ``R`` valid cells.
            h_prev, c_prev: ``(2, R', B, h)`` state of the previous diagonal's valid cells.
            rows: ``(lo, hi)`` image rows of this diagonal; prev_rows: those of the previous.

        Returns:
            ``(h, c)`` of this diagonal, each ``(2, R, B, h)``. Cells outside the image count
            as zero state (the left edge and the row above the image).
        """
        lo, hi = rows
        plo = prev_rows[0]
        n_rows, b = hi - lo + 1, gin.shape[2]
        u = self.units
        hp = F.pad(h_prev, (0, 0, 0, 0, 1, 1))  # (2, R'+2, B, h): row k <-> image row plo-1+k
        cp = F.pad(c_prev, (0, 0, 0, 0, 1, 1))
        a = lo - plo  # index in hp of image row lo - 1
        up = hp[:, a : a + n_rows].reshape(2, n_rows * b, u)  # pixel above
        left = hp[:, a + 1 : a + 1 + n_rows].reshape(2, n_rows * b, u)  # previous pixel in row
        g = torch.baddbmm(gin.reshape(2, n_rows * b, 4 * u), up, self.state_to_state[:, 0])
        g = torch.baddbmm(g, left, self.state_to_state[:, 1])
        c_left = cp[:, a + 1 : a + 1 + n_rows].reshape(2, n_rows * b, u)
        h, c = lstm_update(g, c_left, u)
        return h.view(2, n_rows, b, u), c.view(2, n_rows, b, u)

    def input_gates(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """``(B, F, H, W)`` -> ``(2, B, 4h, H, W)``, direction 1 mirrored (right to left)."""
        b, _, hh, w = x.shape
        gin = self.input_to_state(x).view(b, 2, 4 * self.units, hh, w)
        g1 = gin[:, 1]
        if context is not None:
            g1 = g1 + torch.einsum("oc,bchw->bohw", self.context_to_state, context)
        return torch.stack([gin[:, 0], g1.flip(-1)], 0)


# ---------------------------------------------------------------------- residual blocks
class PixelCNNBlock(MaskedConv2d):
    """PixelCNN's residual layer ``s + conv(relu(s))`` with a ``k x k`` mask-B convolution
    (its parameters are the convolution's: ``weight``, ``bias``)."""

    def __init__(self, f: int, kernel: int, colors: int):
        super().__init__(f, f, (kernel, kernel), "B", colors)

    def forward(self, s: Tensor, context: Tensor | None = None) -> Tensor:
        return s + super().forward(F.relu(s))

    @staticmethod
    def stack_cache(blocks, n: int, h: int, w: int, like: Tensor) -> StackCache:
        return StackCache([PixelCNNBlockCache(b, n, h, w, like) for b in blocks])


def pointwise(conv: MaskedConv2d, h: Tensor) -> Tensor:
    """A ``1 x 1`` :class:`MaskedConv2d` of ``h`` ``(B, I, H, W)`` as one product, without
    copies: in the memory order of ``h`` when its channels are innermost (the recurrent layers'
    outputs are such permuted views), or per image on a contiguous ``h``; otherwise the
    convolution itself. (On the CPU, oneDNN's backward of a 1 x 1 convolution is several
    times slower than the products.)"""
    if conv.weight.shape[2:] != (1, 1) or h.dim() != 4:
        return conv(h)
    wt = conv.masked_weight()[:, :, 0, 0]
    bias = conv.bias if conv.bias is not None else wt.new_zeros(wt.shape[0])
    if h.is_contiguous():
        b, i, hh, w = h.shape
        y = torch.baddbmm(bias.view(1, -1, 1), wt.expand(b, -1, -1), h.view(b, i, hh * w))
        return y.view(b, -1, hh, w)
    strides = h.stride()
    order = sorted(range(4), key=lambda d: -strides[d])
    hp = h.permute(order)
    if order[-1] != 1 or not hp.is_contiguous():
        return conv(h)
    y = F.linear(hp, wt, bias)  # channels last in the order of h
    return y.permute([order.index(d) for d in range(4)])


class Residual(nn.Module):
    """A recurrent layer and its 1 x 1 mask-B projection back to the stream (paper: h -> 2h):
    ``s + proj(rnn(s))`` (``rnn(s, context)`` for a layer that takes the image as context)."""

    def __init__(self, rnn: nn.Module, units: int, f: int, c: int):
        super().__init__()
        self.rnn = rnn
        self.proj = MaskedConv2d(units, f, (1, 1), "B", c)

    def forward(self, s: Tensor, context: Tensor | None = None) -> Tensor:
        h = self.rnn(s, context) if self.rnn.takes_context else self.rnn(s)
        return s + pointwise(self.proj, h)

    @staticmethod
    def stack_cache(blocks, n: int, h: int, w: int, like: Tensor):
        """The incremental cache of a stack of these blocks: the recurrent layer's own."""
        return type(blocks[0].rnn).stack_cache(blocks, n, h, w, like)


# ---------------------------------------------------------------------- incremental caches
# Each layer type knows how to advance by one pixel in raster order (the sampler's decoder,
# :class:`chainrule.models.pixelrnn.PixelDecoder`, drives them): a stack cache has
# ``begin_row(r)``, ``pixel(r, c, s) -> s'`` (``s``: ``(n, F)`` the stream at pixel (r, c)) and
# ``end_row(r, image_row)`` (``image_row``: ``(W, n, C)`` the finished row's scaled values).
def linear_of(conv: MaskedConv2d) -> tuple[Tensor, Tensor]:
    """A masked 1 x 1 convolution as ``(I, O)`` weight and ``(O,)`` bias."""
    w = conv.masked_weight()[:, :, 0, 0]
    bias = conv.bias if conv.bias is not None else w.new_zeros(w.shape[0])
    return w.t().contiguous(), bias


def lstm_into(g: Tensor, c_prev: Tensor, u: int, h_out: Tensor, c_out: Tensor) -> Tensor:
    """:func:`lstm_update` written straight into caches: ``g`` ``(n, 4h)`` gates (i, f, o, g),
    ``c_prev`` ``(n, h)``; fills ``h_out``, ``c_out`` (views) and returns ``h_out``."""
    sg = torch.sigmoid(g[:, : 3 * u])
    torch.addcmul(sg[:, u : 2 * u] * c_prev, sg[:, :u], torch.tanh(g[:, 3 * u :]), out=c_out)
    return torch.mul(sg[:, 2 * u :], torch.tanh(c_out), out=h_out)


class ConvCache:
    """A masked k x k convolution evaluated one output pixel at a time, in raster order.

    Its output at ``(r, c)`` is split in two: the rows *above* (complete once row ``r``
    begins) for every column of the row at once, one product per row (:meth:`begin_row`); and
    the current row's causal part, columns ``c - pw .. c`` (the mask zeroes the others), one
    small product per pixel (:meth:`out`). The current row's input lives in its own buffer
    ``cur`` ``(n, W + 2 pw, I)`` (zero padding on both sides) whose per-column views are made
    once, so a pixel costs a copy and a product, no indexing; the rows above, in ``buf``
    ``(n, p + H, W + 2 pw, I)`` (``p`` zero rows on top), receive ``cur`` when the next row
    begins. ``fill`` is the value of a pixel not yet seen (the full pass sees it too)."""

    def __init__(
        self, conv: MaskedConv2d, n: int, h: int, w: int, like: Tensor, fill: float | Tensor = 0.0
    ):
        wm = conv.masked_weight()  # (O, I, kh, kw)
        o, i, kh, kw = wm.shape
        self.p, self.pw, self.n, self.w = kh // 2, kw // 2, n, w
        p, pw = self.p, self.pw
        bias = conv.bias if conv.bias is not None else wm.new_zeros(o)
        # the current row, columns c - pw .. c, laid out like cur[:, c : c + pw + 1]
        self.w_cur = wm[:, :, p, : pw + 1].permute(2, 1, 0).reshape(-1, o).contiguous()
        self.w_above = wm[:, :, :p, :].permute(2, 3, 1, 0).reshape(-1, o).contiguous()
        self.bias = bias
        self.fill = fill
        self.buf = like.new_zeros(n, p + h, w + 2 * pw, i) if p else None
        self.cur = like.new_zeros(n, w + 2 * pw, i)
        self.cur[:, pw : pw + w] = fill
        self.above = bias.expand(n, w, o).contiguous()  # row 0: only padding above
        self.slot = [self.cur[:, c + pw] for c in range(w)]  # (n, I) input at column c
        self.patch = [self.cur[:, c : c + pw + 1].reshape(n, -1) for c in range(w)]
        self.above_at = [self.above[:, c] for c in range(w)]  # (n, O)
        self.row = 0

    def begin_row(self, r: int) -> None:
        """Start row ``r`` (rows come in order): the finished row goes to ``buf``, the part of
        every output of row ``r`` that the rows above give is computed, and ``cur`` is reset."""
        if r == self.row:
            return
        if r != self.row + 1:
            raise RuntimeError(f"ConvCache: row {r} begun after row {self.row}; rows come in order")
        p, pw, n, w = self.p, self.pw, self.n, self.w
        self.row = r
        if self.buf is not None:
            self.buf[:, p + r - 1] = self.cur
            rows = self.buf[:, r : r + p]  # (n, p, W + 2pw, I): input rows r-p .. r-1
            cols = rows.unfold(2, 2 * pw + 1, 1)  # (n, p, W, I, kw)
            cols = cols.permute(0, 2, 1, 4, 3).reshape(n * w, -1)  # (n W, p kw I)
            torch.addmm(self.bias, cols, self.w_above, out=self.above.view(n * w, -1))
        self.cur[:, pw : pw + w] = self.fill

    def put(self, c: int, v: Tensor) -> None:
        """Store the input ``(n, I)`` at column ``c`` of the current row."""
        self.slot[c].copy_(v)

    def out(self, c: int) -> Tensor:
        """Output ``(n, O)`` at column ``c`` of the current row (its input must be stored)."""
        return torch.addmm(self.above_at[c], self.patch[c], self.w_cur)


class StackCache:
    """Caches of a stack of blocks, one per block, run one after the other."""

    def __init__(self, caches: list):
        self.caches = caches

    def begin_row(self, r: int) -> None:
        for b in self.caches:
            b.begin_row(r)

    def pixel(self, r: int, c: int, s: Tensor) -> Tensor:
        for b in self.caches:
            s = b.pixel(r, c, s)
        return s

    def end_row(self, r: int, image_row: Tensor) -> None:
        pass


class PixelCNNBlockCache:
    """:class:`PixelCNNBlock` one pixel at a time: its input ``relu(s)`` cached."""

    def __init__(self, conv: MaskedConv2d, n: int, h: int, w: int, like: Tensor):
        self.conv = ConvCache(conv, n, h, w, like)

    def begin_row(self, r: int) -> None:
        self.conv.begin_row(r)

    def pixel(self, r: int, c: int, s: Tensor) -> Tensor:
        conv = self.conv
        torch.clamp_min(s, 0.0, out=conv.slot[c])  # relu(s) straight into the cache
        return torch.add(s, conv.above_at[c]).addmm_(conv.patch[c], conv.w_cur)


class RowLSTMCache:
    """``s + proj(RowLSTMLayer(s))`` one pixel at a time: per pixel, the masked 1 x k
    input-to-state product over the current row's cached input and one LSTM update written
    into preallocated buffers (every per-column view made once); per row, the state-to-state
    convolution of the row above for all columns in one product."""

    def __init__(self, block: Residual, n: int, h: int, w: int, like: Tensor):
        rnn = block.rnn
        assert isinstance(rnn, RowLSTMLayer)
        u = self.u = rnn.units
        self.k = rnn.kernel
        self.conv = ConvCache(rnn.input_to_state, n, 1, w, like)  # kernel height 1: no rows above
        self.s2s = rnn.state_to_state.reshape(4 * u, u * self.k).t()  # (h*k, 4h)
        proj_w, proj_b = linear_of(block.proj)
        self.proj = torch.cat([proj_w, proj_b[None]])  # (h + 1, F): h carries a trailing 1
        self.n, self.w = n, w
        # (h, c) of two rows: row r's in [r % 2], the row above's in the other
        self.h = [like.new_zeros(n, w, u + 1) for _ in range(2)]
        for t in self.h:
            t[..., u] = 1.0
        self.c = [like.new_zeros(n, w, u) for _ in range(2)]
        self.h_at = [[t[:, c] for c in range(w)] for t in self.h]  # (n, h + 1) with the 1
        self.hu_at = [[t[:, c, :u] for c in range(w)] for t in self.h]  # (n, h)
        self.c_at = [[t[:, c] for c in range(w)] for t in self.c]
        # state-to-state gates of the row above plus the input-to-state bias: (n, W, 4h)
        self.gss = self.conv.bias.expand(n, w, 4 * u).contiguous()  # row 0: nothing above
        self.gss_at = [self.gss[:, c] for c in range(w)]
        self.g = like.new_empty(n, 4 * u)  # gates (i, f, o, g), and views of its parts
        self.g_sig, self.g_tanh = self.g[:, : 3 * u], self.g[:, 3 * u :]
        self.sg = like.new_empty(n, 3 * u)  # sigmoid(i, f, o)
        self.i, self.f, self.o = self.sg[:, :u], self.sg[:, u : 2 * u], self.sg[:, 2 * u :]
        self.fc, self.tg, self.tc = (like.new_empty(n, u) for _ in range(3))
        self.row = 0

    def begin_row(self, r: int) -> None:
        if r == self.row:
            return
        self.row = r
        n, w, u, k = self.n, self.w, self.u, self.k
        above = self.h[1 - r % 2][..., :u]  # (n, W, h)
        hp = F.pad(above, (0, 0, k // 2, k // 2))  # (n, W + 2p, h)
        cols = hp.unfold(1, k, 1).reshape(n * w, u * k)
        torch.addmm(self.conv.bias, cols, self.s2s, out=self.gss.view(n * w, 4 * u))

    def pixel(self, r: int, c: int, s: Tensor) -> Tensor:
        conv, now = self.conv, self.row % 2
        conv.put(c, s)
        torch.addmm(self.gss_at[c], conv.patch[c], conv.w_cur, out=self.g)
        torch.sigmoid(self.g_sig, out=self.sg)
        torch.mul(self.f, self.c_at[1 - now][c], out=self.fc)
        torch.tanh(self.g_tanh, out=self.tg)
        cell = torch.addcmul(self.fc, self.i, self.tg, out=self.c_at[now][c])
        torch.tanh(cell, out=self.tc)
        torch.mul(self.o, self.tc, out=self.hu_at[now][c])
        return torch.addmm(s, self.h_at[now][c], self.proj)


class DiagonalBiLSTMStackCache:
    """All Diagonal BiLSTM blocks of a stack: direction 0 (left to right) per pixel;
    direction 1 (right to left) over each finished row, all layers batched (it only reaches
    the output shifted down one row)."""

    def __init__(self, blocks: list[Residual], n: int, h: int, w: int, like: Tensor):
        rnns = [cast(DiagonalBiLSTMLayer, b.rnn) for b in blocks]
        self.layers = len(rnns)
        u = self.u = rnns[0].units
        self.n, self.w = n, w
        lin = [linear_of(r.input_to_state) for r in rnns]
        self.in_w = [wt[:, : 4 * u].contiguous() for wt, _ in lin]  # direction 0: (F, 4h)
        self.in_b = [b[: 4 * u] for _, b in lin]
        self.in_w1 = torch.stack([wt[:, 4 * u :] for wt, _ in lin])  # direction 1: (L, F, 4h)
        self.in_b1 = torch.stack([b[4 * u :] for _, b in lin])  # (L, 4h)
        self.s2s = [r.state_to_state for r in rnns]  # (2, 2, h, 4h): (direction, tap)
        # full_context: the whole (scaled) pixel, unmasked, into the right-to-left gates
        ctx = [r.context_to_state for r in rnns if r.context_to_state is not None]
        self.ctx_w = torch.stack([c.t() for c in ctx]) if ctx else None  # (L, C, 4h)
        self.s2s_1 = torch.stack([r.state_to_state[1] for r in rnns], 1)  # (2 taps, L, h, 4h)
        proj = [linear_of(b.proj) for b in blocks]
        self.proj_w = [wt for wt, _ in proj]
        self.proj_b = [b for _, b in proj]
        L = self.layers
        # direction 0 state, padded with a zero row on top and a zero column on the left
        self.h0 = like.new_zeros(L, h + 1, w + 1, n, u)
        self.c0 = like.new_zeros(L, h + 1, w + 1, n, u)
        self.row_in = like.new_zeros(L, w, n, rnns[0].input_to_state.weight.shape[1])  # inputs
        self.h1_above = like.new_zeros(L, w, n, u)  # direction 1 of the row above: output term

    def begin_row(self, r: int) -> None:
        pass

    def pixel(self, r: int, c: int, s: Tensor) -> Tensor:
        for layer in range(self.layers):
            s = self._pixel(layer, r, c, s)
        return s

    def _pixel(self, layer: int, r: int, c: int, s: Tensor) -> Tensor:
        """Block ``layer`` at pixel ``(r, c)``: ``s`` ``(n, F)`` -> ``(n, F)``."""
        self.row_in[layer, c] = s
        s2s = self.s2s[layer]
        g = torch.addmm(self.in_b[layer], s, self.in_w[layer])
        g = torch.addmm(g, self.h0[layer, r, c + 1], s2s[0, 0])  # pixel above
        g = torch.addmm(g, self.h0[layer, r + 1, c], s2s[0, 1])  # pixel to the left
        h = lstm_into(
            g,
            self.c0[layer, r + 1, c],
            self.u,
            self.h0[layer, r + 1, c + 1],
            self.c0[layer, r + 1, c + 1],
        )
        out = h + self.h1_above[layer, c]
        return torch.addmm(s + self.proj_b[layer], out, self.proj_w[layer])

    def end_row(self, r: int, image_row: Tensor) -> None:
        """Direction 1 over the finished row ``r`` (right to left), every layer at once."""
        L, n, u, w = self.layers, self.n, self.u, self.w
        x = self.row_in.reshape(L, w * n, -1)
        gin = torch.baddbmm(self.in_b1.unsqueeze(1), x, self.in_w1)  # (L, W * n, 4h)
        if self.ctx_w is not None:
            gin = gin + torch.matmul(image_row.reshape(w * n, -1), self.ctx_w)
        gin = gin.view(L, w, n, 4 * u)
        h = self.h1_above.new_zeros(L, n, u)
        cell = torch.zeros_like(h)
        new = torch.empty_like(self.h1_above)
        for c in range(w - 1, -1, -1):
            g = torch.baddbmm(gin[:, c], self.h1_above[:, c], self.s2s_1[0])  # above
            g = torch.baddbmm(g, h, self.s2s_1[1])  # previous pixel (to the right)
            h, cell = lstm_update(g, cell, u)
            new[:, c] = h
        self.h1_above = new
