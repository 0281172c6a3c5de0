"""Layers of PixelRNN (van den Oord, Kalchbrenner & Kavukcuoglu, 2016): masked convolutions,
the Row LSTM and the Diagonal BiLSTM, each with a fast path and a plain eager oracle.

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

* :class:`RowLSTM`: row ``r`` is computed from the whole row ``r`` of the input through a
  masked ``1 x k`` input-to-state convolution and from the hidden state of row ``r-1``
  through an unmasked ``1 x k`` state-to-state convolution (row ``r-1`` lies entirely in the
  past). The context of a pixel is a triangle above it, widening by ``k // 2`` per row: some
  earlier pixels are out of reach (see ``receptive_field``).
* :class:`DiagonalBiLSTM`: the map is skewed (row ``r`` shifted right by ``r``) so that the
  diagonals become columns; a masked ``1 x 1`` input-to-state convolution; a ``2 x 1``
  state-to-state convolution over the previous column, padded on top, so the state at pixel
  ``(r, c)`` comes from its left neighbour ``(r, c-1)`` and the pixel above ``(r-1, c)``. The
  second direction runs on the mirrored image (right neighbour and above) and its output is
  *shifted down by one row* before it is added, because it has seen the rest of its own row.
  With ``context_ch > 0`` the image itself also enters the right-to-left gates unmasked (see
  :meth:`DiagonalBiLSTM.forward`); then one layer sees every previous pixel.

Each recurrent layer has ``impl="fast"`` (whole-map input-to-state convolution, one matrix
product per step for the state, both directions batched, only the valid cells of each diagonal
computed) and ``impl="reference"`` (one row at a time with ``F.conv2d`` / ``F.conv1d`` for the
Row LSTM; one *pixel* at a time on the unskewed image, from the definition above, for the
Diagonal BiLSTM). The reference is the test oracle; the two agree to float64 rounding.

Steps are separable for a later cached sampler: :meth:`RowLSTM.step` maps one row of
input-to-state gates and the previous row's ``(h, c)`` to the next; :meth:`DiagonalBiLSTM.step`
does the same for one diagonal.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

IMPLS = ("fast", "reference")


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
    activations and concatenated once. Checked against the gate-by-gate oracle in float64.
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


def lstm_update_plain(g: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """The same update written gate by gate (the oracle): ``g`` ``(B, 4h, ...)``."""
    i, f, o, gg = g.chunk(4, dim=1)
    c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(gg)
    return torch.sigmoid(o) * torch.tanh(c_new), c_new


# ---------------------------------------------------------------------- Row LSTM
class RowLSTM(nn.Module):
    """Row LSTM layer: ``(B, F, H, W)`` -> ``(B, units, H, W)``.

    Args:
        in_ch: input features F.
        units: hidden units h.
        colors: colour groups C.
        kernel: k of the ``1 x k`` input-to-state and state-to-state convolutions (odd).
        impl: ``"fast"`` or ``"reference"`` (see module doc); both use the same weights.
    """

    def __init__(self, in_ch: int, units: int, colors: int, kernel: int = 3, impl: str = "fast"):
        super().__init__()
        self.units, self.kernel, self.impl = units, kernel, impl
        self.input_to_state = MaskedConv2d(
            in_ch, 4 * units, (1, kernel), "B", colors, out_groups=gate_groups(units, colors)
        )
        # state-to-state: conv1d weight (4h, h, k) over the previous row, unmasked
        self.state_to_state = nn.Parameter(
            torch.randn(4 * units, units, kernel) / math.sqrt(units * kernel)
        )

    def forward(self, x: Tensor) -> Tensor:
        if self.impl == "reference":
            return self.forward_reference(x)
        return self.forward_fast(x)

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

    def forward_fast(self, x: Tensor) -> Tensor:
        b, _, hh, w = x.shape
        gin = self.input_to_state(x)  # (B, 4h, H, W), whole map at once
        gin = gin.permute(2, 0, 3, 1).reshape(hh, b * w, 4 * self.units)  # (H, B*W, 4h)
        state = self.init_state(b, w, x)
        rows = []
        for gin_r in gin.unbind(0):  # unbind: one backward op, not H selects
            state = self.step(gin_r, state, b, w)
            rows.append(state[0])
        out = torch.stack(rows, 0).view(hh, b, w, self.units)  # (H, B, W, h)
        return out.permute(1, 3, 0, 2)  # (B, h, H, W)

    def forward_reference(self, x: Tensor) -> Tensor:
        """One row at a time, convolutions as the paper writes them (the oracle)."""
        b, _, hh, w = x.shape
        conv = self.input_to_state
        h = x.new_zeros(b, self.units, w)
        c = x.new_zeros(b, self.units, w)
        rows = []
        for r in range(hh):
            xr = x[:, :, r : r + 1, :]  # (B, F, 1, W)
            gin = F.conv2d(xr, conv.weight * conv.mask, conv.bias, padding=(0, self.kernel // 2))
            gss = F.conv1d(h, self.state_to_state, padding=self.kernel // 2)  # (B, 4h, W)
            h, c = lstm_update_plain(gin[:, :, 0, :] + gss, c)
            rows.append(h)
        return torch.stack(rows, 2)  # (B, h, H, W)


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


# ---------------------------------------------------------------------- Diagonal BiLSTM
class DiagonalBiLSTM(nn.Module):
    """Diagonal BiLSTM layer: ``(B, F, H, W)`` -> ``(B, units, H, W)``.

    Direction 0 runs left to right, direction 1 on the mirrored image (right to left); the
    output is ``h_0 + shift_down(h_1)``.

    Args:
        in_ch: input features F.
        units: hidden units h (per direction).
        colors: colour groups C.
        impl: ``"fast"`` or ``"reference"``.
    """

    def __init__(
        self, in_ch: int, units: int, colors: int, impl: str = "fast", context_ch: int = 0
    ):
        super().__init__()
        self.units, self.impl = units, impl
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
        if self.impl == "reference":
            return self.forward_reference(x, context)
        return self.forward_fast(x, context)

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

    def forward_fast(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        b, _, hh, w = x.shape
        u = self.units
        to_diag, to_raster, sizes = diagonal_order(hh, w, x.device)
        # Skewing, done as a gather: the valid cells of the skewed map, column by column (one
        # diagonal after the other), are a permutation of the H*W pixels. Gathering them once
        # and splitting per diagonal gives contiguous (2, R, B, 4h) blocks whose gradients
        # are concatenated once, instead of a zero-filled full-map gradient per slice.
        gin = self.input_gates(x, context)  # (2, B, 4h, H, W)
        gin = gin.permute(0, 3, 4, 1, 2).reshape(2, hh * w, b, 4 * u).index_select(1, to_diag)
        h = x.new_zeros(2, 0, b, u)
        c = h
        prev = (0, -1)
        cols = []
        for j, gin_j in enumerate(gin.split(sizes, 1)):  # (2, R_j, B, 4h) per diagonal
            lo, hi = diagonal_rows(j, hh, w)
            h, c = self.step(gin_j, h, c, (lo, hi), prev)
            cols.append(h)
            prev = (lo, hi)
        # and back from diagonal order to raster order (the unskew) with one index
        out = torch.cat(cols, 1).index_select(1, to_raster)
        out = out.view(2, hh, w, b, u).permute(0, 3, 4, 1, 2)  # (2, B, h, H, W)
        return self.combine(torch.stack([out[0], out[1].flip(-1)], 0))

    def forward_reference(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """One pixel at a time on the unskewed image, from the definition (the oracle)."""
        b, _, hh, w = x.shape
        u = self.units
        conv = self.input_to_state
        wi = (conv.weight * conv.mask)[:, :, 0, 0].view(2, 4 * u, -1)  # (2, 4h, F)
        bi = conv.bias.view(2, 4 * u)
        zero = x.new_zeros(b, u)
        outs = []
        for d in range(2):
            xd = x if d == 0 else x.flip(-1)  # direction 1: mirrored image
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
                        + above @ self.state_to_state[d, 0]
                        + left @ self.state_to_state[d, 1]
                    )
                    if cd is not None:  # the whole pixel, unmasked: direction 1 is shifted
                        g = g + cd[:, :, r, col] @ self.context_to_state.t()
                    hs[r][col], cs[r][col] = lstm_update_plain(g, c_left)
            hd = torch.stack([torch.stack(row, -1) for row in hs], -2)  # (B, h, H, W)
            outs.append(hd if d == 0 else hd.flip(-1))
        return self.combine(torch.stack(outs, 0))
