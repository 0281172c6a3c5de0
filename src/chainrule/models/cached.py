"""Cached incremental sampling for PixelCNN, Row LSTM and Diagonal BiLSTM stacks.

The naive sampler (:meth:`chainrule.models.pixelrnn._PixelNet._sample` with
``method="naive"``) runs the whole network once per (pixel, channel): ``D = C * H * W`` full
passes. But the value drawn at step ``i`` changes only what lies at or after pixel ``i`` in
every layer, and everything *before* it has already been computed at an earlier step. This
module keeps, per layer, exactly what the next pixel needs and computes, for each new pixel
``(r, c)``, only that pixel's column through the stack:

* the 7 x 7 mask-A input convolution and PixelCNN's k x k mask-B convolutions: a cache of the
  layer's *input* (padded, channels last); the new pixel's output is one matrix product of the
  causal part of its patch (the ``k // 2 + 1`` rows at and above it) with the masked weight;
* Row LSTM: the layer's input row (for the masked 1 x k input-to-state convolution) and the
  previous row's ``(h, c)``; the state-to-state convolution of the previous row is done once at
  the start of each row, then each pixel is one LSTM update;
* Diagonal BiLSTM: the left-to-right direction's ``(h, c)`` at every pixel (pixel ``(r, c)``
  needs ``(r, c-1)`` and ``(r-1, c)``, both already computed in raster order); the right-to-left
  direction only reaches the output shifted down one row, so it is run over a finished row,
  right to left, once that row is complete (for all layers at once, batched), with the row's
  image fed to its gates when the model has ``full_context``;
* the residual additions, the 1 x 1 projections and the two 1 x 1 output convolutions are
  per-pixel matrix products.

Colour: the C channels of a pixel are drawn one after another. For channel ``k`` the pixel's
column is computed with the values drawn so far (channels ``>= k`` still 0); by the channel-group
invariant of :mod:`chainrule.models.layers` the features of colour group ``k`` and below are then
exact. The last pass of a pixel (channel ``C - 1``, or one extra pass when the last channels are
given) leaves every group exact, and that is what stays in the caches.

Cost: O(D) small matrix products per image instead of O(D) full passes; memory O(layers * H * W)
features per image (the same as one forward pass).

Equality with the naive sampler: both draw ``draw_uniforms(n, (D,))`` up front and turn the
same uniform into the same value with the same head (inverse CDF), so given the same generator
they produce the same images. The head parameters agree to floating-point rounding only (a
per-pixel matrix product sums in a different order from a whole-map convolution): in float64
the images are identical unless a uniform falls within ~1e-15 of a CDF boundary, which the
tests never meet; in float32 a boundary hit (a one-level difference in one value, after which
the two images diverge) is rare but possible.

Completion follows the naive sampler exactly: a given value is inserted when its step is
reached (a warning when the given values are not a prefix of the raster order, see
:func:`chainrule.models.base.warn_if_not_prefix`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from ..orderings import raster_order
from .base import draw_uniforms, warn_if_not_prefix
from .layers import DiagonalBiLSTM, MaskedConv2d, RowLSTM, lstm_update

if TYPE_CHECKING:  # pragma: no cover
    from .pixelrnn import _PixelNet


# ---------------------------------------------------------------------- pieces
def _causal_rows_weight(conv: MaskedConv2d) -> tuple[Tensor, Tensor, int, int]:
    """The masked weight restricted to the rows at and above the centre, laid out for a
    channels-last patch: ``(p + 1) * kw * I`` inputs -> ``O`` outputs, as ``(in, O)``.

    Returns ``(weight_t, bias, p, pw)`` with ``p = kh // 2``, ``pw = kw // 2``."""
    w = conv.masked_weight()  # (O, I, kh, kw)
    o, _, kh, kw = w.shape
    p = kh // 2
    wt = w[:, :, : p + 1, :].permute(0, 2, 3, 1).reshape(o, -1).t().contiguous()
    bias = conv.bias if conv.bias is not None else w.new_zeros(o)
    return wt, bias, p, kw // 2


def _lstm_into(g: Tensor, c_prev: Tensor, u: int, h_out: Tensor, c_out: Tensor) -> Tensor:
    """:func:`~chainrule.models.layers.lstm_update` written straight into the caches:
    ``g`` ``(n, 4h)`` gates (i, f, o, g), ``c_prev`` ``(n, h)``; fills ``h_out``, ``c_out``
    (views into the caches) and returns ``h_out``."""
    sg = torch.sigmoid(g[:, : 3 * u])
    torch.addcmul(sg[:, u : 2 * u] * c_prev, sg[:, :u], torch.tanh(g[:, 3 * u :]), out=c_out)
    return torch.mul(sg[:, 2 * u :], torch.tanh(c_out), out=h_out)


class _Conv:
    """A masked k x k convolution evaluated one output pixel at a time from a cache of its
    (padded, channels-last) input ``(n, H + p, W + 2 pw, I)``; rows below are never needed."""

    def __init__(self, conv: MaskedConv2d, n: int, h: int, w: int, like: Tensor):
        self.wt, self.bias, self.p, self.pw = _causal_rows_weight(conv)
        i = conv.weight.shape[1]
        self.buf = like.new_zeros(n, h + self.p, w + 2 * self.pw, i)
        self.n = n

    def put(self, r: int, c: int, v: Tensor) -> None:
        """Store the input ``(n, I)`` at pixel ``(r, c)``."""
        self.buf[:, r + self.p, c + self.pw] = v

    def patch(self, r: int, c: int) -> Tensor:
        """The causal rows of the input patch around ``(r, c)``, flat: ``(n, (p+1) kw I)``."""
        return self.buf[:, r : r + self.p + 1, c : c + 2 * self.pw + 1].reshape(self.n, -1)

    def out(self, r: int, c: int) -> Tensor:
        """Output ``(n, O)`` at ``(r, c)`` (the input at ``(r, c)`` must be stored)."""
        return torch.addmm(self.bias, self.patch(r, c), self.wt)


def _linear(conv: MaskedConv2d) -> tuple[Tensor, Tensor]:
    """A masked 1 x 1 convolution as ``(I, O)`` weight and ``(O,)`` bias."""
    w = conv.masked_weight()[:, :, 0, 0]
    bias = conv.bias if conv.bias is not None else w.new_zeros(w.shape[0])
    return w.t().contiguous(), bias


class _PixelCNNBlock:
    """``s + conv(relu(s))`` with a k x k mask-B convolution."""

    def __init__(self, conv: MaskedConv2d, n: int, h: int, w: int, like: Tensor):
        self.conv = _Conv(conv, n, h, w, like)

    def begin_row(self, r: int) -> None:
        pass

    def pixel(self, r: int, c: int, s: Tensor) -> Tensor:
        self.conv.put(r, c, F.relu(s))
        return s + self.conv.out(r, c)


class _RowLSTMBlock:
    """``s + proj(RowLSTM(s))``: per pixel, the masked 1 x k input-to-state product over the
    current row's cached input and one LSTM update; per row, the state-to-state convolution
    of the previous row."""

    def __init__(self, block, n: int, h: int, w: int, like: Tensor):
        rnn: RowLSTM = block.rnn
        self.u, self.k = rnn.units, rnn.kernel
        self.conv = _Conv(rnn.input_to_state, n, 1, w, like)  # one row (kernel height 1)
        self.s2s = rnn.state_to_state.reshape(4 * self.u, self.u * self.k).t()  # (h*k, 4h)
        self.proj_w, self.proj_b = _linear(block.proj)
        self.n, self.w = n, w
        self.h_prev = like.new_zeros(n, w, self.u)  # (h, c) of the row above
        self.c_prev = like.new_zeros(n, w, self.u)
        self.h_cur = like.new_zeros(n, w, self.u)
        self.c_cur = like.new_zeros(n, w, self.u)
        # state-to-state gates of the row above, plus the input-to-state bias: (n, W, 4h)
        self.gss = self.conv.bias.expand(n, w, 4 * self.u)  # row 0: the state above is zero

    def begin_row(self, r: int) -> None:
        if r == 0:
            return
        self.h_prev, self.h_cur = self.h_cur, self.h_prev
        self.c_prev, self.c_cur = self.c_cur, self.c_prev
        p = self.k // 2
        hp = F.pad(self.h_prev, (0, 0, p, p))  # (n, W + 2p, h)
        cols = hp.unfold(1, self.k, 1).reshape(self.n * self.w, self.u * self.k)
        self.gss = torch.addmm(self.conv.bias, cols, self.s2s).view(self.n, self.w, 4 * self.u)

    def pixel(self, r: int, c: int, s: Tensor) -> Tensor:
        self.conv.put(0, c, s)
        g = torch.addmm(self.gss[:, c], self.conv.patch(0, c), self.conv.wt)  # (n, 4h)
        h = _lstm_into(g, self.c_prev[:, c], self.u, self.h_cur[:, c], self.c_cur[:, c])
        return torch.addmm(s + self.proj_b, h, self.proj_w)


class _DiagonalStack:
    """All Diagonal BiLSTM blocks of a stack: direction 0 (left to right) per pixel;
    direction 1 (right to left) over each finished row, all layers batched."""

    def __init__(self, blocks, n: int, h: int, w: int, like: Tensor):
        rnns: list[DiagonalBiLSTM] = [b.rnn for b in blocks]
        self.layers = len(rnns)
        u = self.u = rnns[0].units
        self.n, self.w = n, w
        lin = [_linear(r.input_to_state) for r in rnns]
        self.in_w = [wt[:, : 4 * u].contiguous() for wt, _ in lin]  # direction 0: (F, 4h)
        self.in_b = [b[: 4 * u] for _, b in lin]
        self.in_w1 = torch.stack([wt[:, 4 * u :] for wt, _ in lin])  # direction 1: (L, F, 4h)
        self.in_b1 = torch.stack([b[4 * u :] for _, b in lin])  # (L, 4h)
        self.s2s = [r.state_to_state for r in rnns]  # (2, 2, h, 4h): (direction, tap)
        # full_context: the whole (scaled) pixel, unmasked, into the right-to-left gates
        ctx = [getattr(r, "context_to_state", None) for r in rnns]
        self.ctx_w = torch.stack([c.t() for c in ctx]) if ctx[0] is not None else None  # (L, C, 4h)
        self.s2s_1 = torch.stack([r.state_to_state[1] for r in rnns], 1)  # (2 taps, L, h, 4h)
        proj = [_linear(b.proj) for b in blocks]
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

    def pixel(self, layer: int, r: int, c: int, s: Tensor) -> Tensor:
        """Block ``layer`` at pixel ``(r, c)``: ``s`` ``(n, F)`` -> ``(n, F)``."""
        self.row_in[layer, c] = s
        s2s = self.s2s[layer]
        g = torch.addmm(self.in_b[layer], s, self.in_w[layer])
        g = torch.addmm(g, self.h0[layer, r, c + 1], s2s[0, 0])  # pixel above
        g = torch.addmm(g, self.h0[layer, r + 1, c], s2s[0, 1])  # pixel to the left
        h = _lstm_into(
            g,
            self.c0[layer, r + 1, c],
            self.u,
            self.h0[layer, r + 1, c + 1],
            self.c0[layer, r + 1, c + 1],
        )
        out = h + self.h1_above[layer, c]
        return torch.addmm(s + self.proj_b[layer], out, self.proj_w[layer])

    def end_row(self, r: int, image_row: Tensor) -> None:
        """Direction 1 over the finished row ``r`` (right to left), every layer at once.
        ``image_row``: ``(W, n, C)`` the row's scaled values (for ``full_context``)."""
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


# ---------------------------------------------------------------------- the sampler
class _CachedStack:
    """The per-pixel column of a :class:`~chainrule.models.pixelrnn._PixelNet` with caches."""

    def __init__(self, model: _PixelNet, n: int, like: Tensor):
        from .pixelrnn import DiagonalBiLSTMModel, PixelCNN, RowLSTMModel

        c, h, w = model.event_shape
        self.model = model
        self.n = n
        self.input = _Conv(model.input_conv, n, h, w, like)
        self.diag: _DiagonalStack | None = None
        self.blocks: list = []
        if isinstance(model, DiagonalBiLSTMModel):
            self.diag = _DiagonalStack(list(model.blocks), n, h, w, like)
        elif isinstance(model, RowLSTMModel):
            self.blocks = [_RowLSTMBlock(b, n, h, w, like) for b in model.blocks]
        elif isinstance(model, PixelCNN):
            self.blocks = [_PixelCNNBlock(b, n, h, w, like) for b in model.blocks]
        else:  # pragma: no cover - every registered PixelNet is one of the three
            raise ValueError(f"no cached sampler for {type(model).__name__}")
        self.out1_w, self.out1_b = _linear(model.out_conv1)
        w2, b2 = _linear(model.out_conv2)  # (O, C * P): the logits of channel k together
        p = model.head.num_params
        self.out2 = [
            (w2[:, k * p : (k + 1) * p].contiguous(), b2[k * p : (k + 1) * p]) for k in range(c)
        ]

    def put_value(self, k: int, r: int, c: int, value: Tensor) -> None:
        """Store the drawn (or given) value ``(n,)`` of channel ``k`` at ``(r, c)``."""
        self.input.buf[:, r + self.input.p, c + self.input.pw, k] = self.model._scale(value)

    def begin_row(self, r: int) -> None:
        for b in self.blocks:
            b.begin_row(r)

    def end_row(self, r: int) -> None:
        if self.diag is not None:
            inp, w = self.input, self.diag.w
            image_row = inp.buf[:, r + inp.p, inp.pw : inp.pw + w].transpose(0, 1)  # (W, n, C)
            self.diag.end_row(r, image_row)

    def column(self, r: int, c: int, k: int | None) -> Tensor | None:
        """Run pixel ``(r, c)`` through the stack (updating the caches) and return the head
        parameters ``(n, P)`` of its channel ``k`` (``k=None``: only update the caches)."""
        s = self.input.out(r, c)  # (n, F)
        if self.diag is not None:
            for layer in range(self.diag.layers):
                s = self.diag.pixel(layer, r, c, s)
        else:
            for b in self.blocks:
                s = b.pixel(r, c, s)
        if k is None:
            return None
        o = F.relu(torch.addmm(self.out1_b, F.relu(s), self.out1_w))
        w2, b2 = self.out2[k]
        return torch.addmm(b2, o, w2)


@torch.no_grad()
def sample_cached(
    model: _PixelNet,
    n: int,
    given: Tensor | None,
    mask: Tensor | None,
    generator: torch.Generator | None,
    *,
    cuda_graph: bool = False,
    **kwargs,
) -> Tensor:
    """Draw ``n`` images (or complete ``given`` where ``mask``) with the per-pixel caches.

    The private worker behind ``model.sample(n, method="cached")``: ``given`` and ``mask`` must
    already be checked (``(n, C, H, W)`` values and booleans, or both ``None``).

    Args:
        cuda_graph: CUDA only, unconditional sampling only: record the whole raster loop once
            as a CUDA graph (per batch size) and replay it, which removes the per-operation
            launch cost that dominates the small per-pixel products on a GPU. The first call
            for a batch size pays the recording (about one eager run, plus the graph's
            instantiation); the graph is kept on the model and replayed by later calls. Same
            kernels, so the same images as the eager cached path.

    Returns:
        ``(n, C, H, W)`` whole numbers ``0..K-1`` in the model's dtype.
    """
    if kwargs:
        raise ValueError(f"unexpected sample options for {model.name!r}: {sorted(kwargs)}")
    u = draw_uniforms(n, (model.dim,), generator, device=model._device)  # (n, D), raster steps
    if cuda_graph:
        if model._device.type != "cuda":
            raise ValueError(f"cuda_graph=True needs a model on a CUDA device, got {model._device}")
        if given is not None:
            raise ValueError("cuda_graph=True is for unconditional sampling (no given/mask)")
        return _replay_graph(model, n, u)
    if given is not None:
        warn_if_not_prefix(mask.flatten(1), raster_order(model.event_shape).to(mask.device))
    threads = torch.get_num_threads()
    if model._device.type == "cpu" and threads > 1:
        # the per-pixel products are far too small to gain from intra-op threads, and on a
        # busy machine the threads' synchronisation makes them many times slower (measured
        # 20x on 2 shared cores): run them on one thread, then restore the setting
        torch.set_num_threads(1)
    try:
        x, _ = _run(model, n, u, given, mask, None)
    finally:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
    return x


def _replay_graph(model: _PixelNet, n: int, u: Tensor) -> Tensor:
    """Record (once per batch size and weight storage) and replay the raster loop."""
    graphs = model.__dict__.setdefault("_cached_sampling_graphs", {})
    key = (n, model._dtype, tuple(p.data_ptr() for p in model.parameters()))
    if key not in graphs:
        graphs.clear()  # one recorded graph per model at a time (its memory pool is kept)
        static_u = u.clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up outside the recording (cuBLAS handles, ...)
            _run(model, n, static_u, None, None, None)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_x, _ = _run(model, n, static_u, None, None, None)
        graphs[key] = (graph, static_u, static_x)
    graph, static_u, static_x = graphs[key]
    static_u.copy_(u)
    graph.replay()
    return static_x.clone()


@torch.no_grad()
def cached_params(model: _PixelNet, x: Tensor) -> Tensor:
    """Head parameters of every conditional computed by the cached column, pixel by pixel,
    with ``x`` fed in (teacher forcing): ``(B, C, H, W)`` -> ``(B, C, H, W, P)``.

    Equal to ``model._params(x)`` up to rounding; the test oracle for the caches themselves
    (independent of the random draws)."""
    x = model.check_images(x)
    _, params = _run(model, x.shape[0], None, None, None, x)
    return params


def _run(
    model: _PixelNet,
    n: int,
    u: Tensor | None,
    given: Tensor | None,
    mask: Tensor | None,
    teacher: Tensor | None,
) -> tuple[Tensor, Tensor | None]:
    """The raster loop. Draws from ``u`` ``(n, D)``; or, with ``teacher``, takes its values
    and records every step's head parameters."""
    c, h, w = model.event_shape
    device, dtype = model._device, model._dtype
    x = torch.zeros(n, c, h, w, device=device, dtype=dtype)
    params_all = None
    if teacher is not None:
        params_all = x.new_zeros(n, c, h, w, model.head.num_params)
    stack = _CachedStack(model, n, x.new_zeros(()))
    # the scaled value of an unseen pixel is never used (its weights are masked to exact
    # zeros), but keep the cache equal to what the naive pass sees: 0 -> scale(0)
    inp = stack.input
    inp.buf[:, inp.p :, inp.pw : inp.pw + w] = model._scale(x.new_zeros(()))
    step = 0
    for r in range(h):
        stack.begin_row(r)
        for col in range(w):
            last = -1  # the last channel whose pass left the caches up to date
            for k in range(c):
                keep = mask[:, k, r, col] if given is not None else None
                if keep is not None and bool(keep.all()):
                    value = given[:, k, r, col]
                else:
                    params = stack.column(r, col, k)  # (n, P)
                    last = k
                    if teacher is not None:
                        params_all[:, k, r, col] = params
                        value = teacher[:, k, r, col]
                    else:
                        value = model.head.sample(params, u[:, step])
                    if keep is not None:
                        value = torch.where(keep, given[:, k, r, col], value)
                x[:, k, r, col] = value
                stack.put_value(k, r, col, value)
                step += 1
            if last != c - 1:  # a later channel was given: bring every colour group up to date
                stack.column(r, col, None)
        stack.end_row(r)
    return x, params_all


__all__ = ["sample_cached", "cached_params"]
