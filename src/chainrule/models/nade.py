"""NADE: the neural autoregressive distribution estimator (binary and K-level).

Factorization, over an ordering ``o`` of the D dimensions (``x_<i`` = the earlier ones):

    a_1 = c,    a_{i+1} = a_i + W_{o(i)} phi(x_{o(i)})           running activation, (H,)
    h_i = act(a_i)                                                 act = sigmoid (default) | relu
    p(x_{o(i)} = 1 | x_<i) = sigmoid(V_{o(i)} . h_i + b_{o(i)})    binary: phi(x) = x

so the D conditionals share W and cost O(DH) per image in total, never O(D^2 H)
(Larochelle & Murray, "The Neural Autoregressive Distribution Estimator", AISTATS 2011;
Uria, Cote, Gregor, Murray & Larochelle, "Neural Autoregressive Distribution Estimation",
JMLR 2016).

K levels (8-bit data): each pixel is fed back as ``phi(x) = [x / (K-1), E_in[x]]`` (its scaled
value and a learned M-dimensional embedding of its level, M = ``min(embed_dim, K)``), and the
output of step i is a softmax over the K levels with logits ``E_out (V_{o(i)} h_i) + b_{o(i)}``
(V_{o(i)} is M x H): the logits of a step vary in an M-dimensional subspace around a per-pixel
bias, which keeps the model at O(D M H) parameters instead of O(D K H). The scaled value keeps
the input differentiable in x (used by the causality-by-Jacobian check).

Weights are indexed by *pixel*, not by step, so one set of weights defines a NADE for every
ordering. ``ensemble = E > 1`` makes the model the uniform mixture of the NADEs of E orderings
(the configured ``ordering`` and E-1 random ones from ``ensemble_seed``):

    log p(x) = logsumexp_e log p_e(x) - log E

(the mixture of joints, never an average of conditionals). Training it maximizes that exact
mixture likelihood (order-agnostic training restricted to E orderings, Uria et al. 2016, without
their mask inputs); sampling picks an ordering uniformly, then samples from it.

Computation paths for the D conditionals (equal to float rounding; the tests hold them to the
per-dimension loop of the paper, ``tests/oracles/nade.py``, to 1e-10 in float64, values and
gradients):

* ``native`` (binary data on the CPU, the default there wherever it builds): the same loop as
  ``sparse`` compiled (:mod:`chainrule.native`): tiles of rows, each tile's hidden units kept in
  the core's cache, the backward recomputing each row's hidden units between ones; one call
  for the whole forward, backward or sampling loop instead of about eight operations a pixel.
* ``sparse`` (binary data; the CPU default where the kernel cannot be built): a per-step
  in-place loop inside a custom autograd Function. With binary inputs a_i changes only on the
  rows whose previous pixel is 1, so the activation and hidden units are updated on those rows
  only; the backward pass walks the steps in reverse, restoring the saved rows, and never holds
  the (B, D, H) activations.
* ``block`` (default on CUDA, and for K levels): steps in blocks of ``block``; within a block the
  activations come from one matrix product with a strictly-lower-triangular mask, and the custom
  backward recomputes them block by block from the saved block-start activations (B, D/T, H)
  instead of storing (B, D, H).

Under bf16 autocast (CUDA) the custom Functions run in float32 (``torch.amp.custom_fwd``).

Known limits: one hidden layer; the ensemble's completion is exact only when the given pixels
are a prefix of every ordering of the ensemble (a warning says otherwise); K-level logits are
rank-M around the bias (raise ``embed_dim`` up to K for the full softmax).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from types import ModuleType

import torch
from torch import Tensor, nn

from .. import native, sampling
from ..distributions import frequency_bias
from ..orderings import SPEC_NAMES, check_ordering_spec, resolve_ordering
from .base import canonical_impl
from .options import check_choice, check_int, check_nonnegative, ordering_field
from .ordered import DiscreteOrderedModel
from .registry import register

ACTIVATIONS = ("sigmoid", "relu")
IMPLS = ("auto", "native", "sparse", "block")


@dataclass
class NADEFamilyConfig:
    """The options NADE and RNADE share (the first fields of both configs)."""

    hidden: int = field(default=64, metadata={"help": "H, hidden units (the papers use 500)"})
    activation: str = field(
        default="sigmoid", metadata={"help": "hidden activation: sigmoid (the papers) or relu"}
    )
    impl: str = field(
        default="auto",
        metadata={
            "help": "computation path: auto (NADE: native on CPU for binary data where the kernel builds, else sparse there, else block; RNADE: block), native (NADE, binary data, CPU: the compiled kernel), sparse (NADE, binary data) or block (an older naive is read as auto)"
        },
    )
    block: int = field(default=32, metadata={"help": "steps per block of the block path"})
    init_scale: float = field(
        default=1.0,
        metadata={"help": "multiplies the default initial weight scales (1: unchanged)"},
    )

    def __post_init__(self) -> None:
        self.impl = canonical_impl(self.impl)  # saved configs: "naive"

    def check_shared(self, impls: tuple[str, ...]) -> None:
        """Checks of the shared options; ``impls``: the model's computation paths."""
        check_int(self.hidden, "hidden", 1)
        check_choice(self.activation, "activation", ACTIVATIONS)
        check_choice(self.impl, "impl", impls)
        check_int(self.block, "block", 1)
        check_nonnegative(self.init_scale, "init_scale")


@dataclass
class NADEConfig(NADEFamilyConfig):
    ordering: str | list[int] = ordering_field(
        f"the first (or only) ordering: {SPEC_NAMES} or a permutation"
    )
    ensemble: int = field(
        default=1, metadata={"help": "E orderings in the uniform mixture (1: a single NADE)"}
    )
    ensemble_seed: int = field(
        default=1, metadata={"help": "orderings 2..E of an ensemble are random:(ensemble_seed + e)"}
    )
    embed_dim: int = field(
        default=16,
        metadata={
            "help": "K levels only: M = min(embed_dim, K) dimensions of the level embeddings"
        },
    )

    def validate(self) -> None:
        self.check_shared(IMPLS)
        check_ordering_spec(self.ordering)
        check_int(self.ensemble, "ensemble", 1)
        check_int(self.embed_dim, "embed_dim", 1)


# ====================================================================== shared computation
def activate(a: Tensor, activation: str) -> Tensor:
    return torch.sigmoid(a) if activation == "sigmoid" else torch.relu(a)


def activation_grad(a: Tensor, h: Tensor, activation: str) -> Tensor:
    """d act(a) / d a, given ``h = act(a)``."""
    if activation == "sigmoid":
        return h * (1.0 - h)
    return (h > 0).to(h.dtype)  # relu(a) > 0 exactly when a > 0


class BlockNADE(torch.autograd.Function):
    """Blockwise NADE with a recomputing backward (see the module doc, ``block`` path).

    forward(phi (B,D,Min), w (D,Min,H), c (H,), v (D,Mout,H), rho (D,) or None, activation,
    block) -> (B, D, Mout). Saves only the activations at block starts, ``(n_blocks, B, H)``.
    """

    @staticmethod
    def _block_activation(a0: Tensor, pt: Tensor, wb: Tensor) -> Tensor:
        """Activations of the t steps of a block: a0 plus the strictly earlier steps' inputs.

        a0 (B,H); pt (t,B,Min) block inputs; wb (t,Min,H). Returns (t, B, H).
        """
        t, b, m = pt.shape
        lower = torch.ones(t, t, dtype=pt.dtype, device=pt.device).tril(-1)  # [t', s] = s < t'
        xm = lower[:, None, :, None] * pt.transpose(0, 1)[None]  # (t, B, t, Min)
        return (xm.reshape(t * b, t * m) @ wb.reshape(t * m, -1)).view(t, b, -1) + a0

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda", cast_inputs=torch.float32)
    def forward(ctx, phi, w, c, v, rho, activation, block):
        bsz, d, _ = phi.shape
        pt = phi.transpose(0, 1)  # (D, B, Min)
        out = phi.new_empty(d, bsz, v.shape[1])
        a = c.expand(bsz, -1)
        starts = []
        for s in range(0, d, block):
            e = min(s + block, d)
            starts.append(a)
            act_in = BlockNADE._block_activation(a, pt[s:e], w[s:e])  # (t, B, H)
            z = act_in if rho is None else act_in * rho[s:e, None, None]
            h = activate(z, activation)
            torch.bmm(h, v[s:e].transpose(1, 2), out=out[s:e])  # (t, B, Mout)
            a = act_in[-1] + pt[e - 1] @ w[e - 1]
        ctx.activation, ctx.block = activation, block
        ctx.save_for_backward(phi, w, c, v, rho, torch.stack(starts))
        return out.transpose(0, 1)

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, grad_out):
        phi, w, c, v, rho, starts = ctx.saved_tensors
        activation, block = ctx.activation, ctx.block
        bsz, d, _ = phi.shape
        pt = phi.transpose(0, 1)
        g_all = grad_out.transpose(0, 1)  # (D, B, Mout)
        acc = phi.new_zeros(bsz, w.shape[2])  # sum of dL/da over the later blocks
        dw, dv = torch.empty_like(w), torch.empty_like(v)
        dphi = torch.empty_like(pt) if ctx.needs_input_grad[0] else None
        drho = torch.empty_like(rho) if rho is not None else None
        for k in reversed(range(starts.shape[0])):
            s = k * block
            e = min(s + block, d)
            t = e - s
            act_in = BlockNADE._block_activation(starts[k], pt[s:e], w[s:e])
            z = act_in if rho is None else act_in * rho[s:e, None, None]
            h = activate(z, activation)
            g = g_all[s:e]  # (t, B, Mout)
            torch.bmm(g.transpose(1, 2), h, out=dv[s:e])  # (t, Mout, H)
            dz = torch.bmm(g, v[s:e]) * activation_grad(z, h, activation)  # (t, B, H)
            if rho is not None:
                drho[s:e] = (dz * act_in).sum((1, 2))
                dz = dz * rho[s:e, None, None]
            upper = torch.ones(t, t, dtype=dz.dtype, device=dz.device).triu(1)  # [t, t'] = t' > t
            later = (upper @ dz.reshape(t, -1)).view_as(dz) + acc  # dL/d(input of step t)
            torch.bmm(pt[s:e].transpose(1, 2), later, out=dw[s:e])  # (t, Min, H)
            if dphi is not None:
                torch.bmm(later, w[s:e].transpose(1, 2), out=dphi[s:e])
            acc = acc + dz.sum(0)
        dc = acc.sum(0)
        return (
            dphi.transpose(0, 1) if dphi is not None else None,
            dw,
            dc,
            dv,
            drho,
            None,
            None,
        )


class SparseBinaryNADE(torch.autograd.Function):
    """Per-step in-place NADE for binary inputs, updating only the rows whose input is 1.

    forward(x (B,D) in {0,1}, w (D,H), c (H,), v (D,H), activation) -> (B, D) pre-logits
    ``v_i . h_i``. For every step it saves the hidden rows it overwrote and act'(a) of the new
    rows (as many rows as there are ones in the batch, never (B, D, H)); the backward walks the
    steps in reverse, restoring the saved rows. act' is a function of h for both activations
    (sigmoid: h(1-h); relu: [h > 0]), so the backward never needs the activations a.
    No gradient for x (the caller uses another path when x needs one).
    """

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda", cast_inputs=torch.float32)
    def forward(ctx, x, w, c, v, activation):
        bsz, d = x.shape
        rows = _rows_by_step(x)
        a = c.unsqueeze(0).repeat(bsz, 1)  # (B, H) running activation, a copy (updated in place)
        h = activate(a, activation)
        out = x.new_empty(d, bsz)
        saved_h, saved_grad = [], []
        for i in range(d):
            torch.mv(h, v[i], out=out[i])
            r = rows[i]
            if r is not None:
                new = a.index_select(0, r).add_(w[i])
                a.index_copy_(0, r, new)
                hn = activate(new, activation)
                saved_h.append(h.index_select(0, r))
                saved_grad.append(activation_grad(new, hn, activation))
                h.index_copy_(0, r, hn)
        ctx.activation, ctx.rows = activation, rows
        ctx.saved_rows = (saved_h, saved_grad)
        ctx.save_for_backward(w, v, h)
        return out.T

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, grad_out):
        w, v, h = ctx.saved_tensors
        rows = ctx.rows
        saved_h, saved_grad = (list(t) for t in ctx.saved_rows)
        h = h.clone()
        bsz, hid = h.shape
        d = w.shape[0]
        g = grad_out.T.contiguous()  # (D, B)
        gh = h.new_zeros(bsz, hid)  # dL/dh summed over the current segment of steps
        later = h.new_zeros(bsz, hid)  # dL/da summed over the later segments
        dw = torch.zeros_like(w)
        dv = torch.empty_like(v)
        ht = h.T  # a view: follows the in-place updates of h
        for i in reversed(range(d)):
            r = rows[i]
            if r is not None:  # the rows whose activation changed after step i: close them
                later_r = later.index_select(0, r).addcmul_(gh.index_select(0, r), saved_grad.pop())
                later.index_copy_(0, r, later_r)
                torch.sum(later_r, 0, out=dw[i])
                gh.index_fill_(0, r, 0.0)
                h.index_copy_(0, r, saved_h.pop())
            torch.mv(ht, g[i], out=dv[i])
            gh.addr_(g[i], v[i])
        later.addcmul_(gh, activation_grad(h, h, ctx.activation))
        return None, dw, later.sum(0), dv, None


class NativeBinaryNADE(torch.autograd.Function):
    """:class:`SparseBinaryNADE`'s computation in the compiled kernel (:mod:`chainrule.native`).

    forward(x (B,D) in {0,1}, w (D,H), c (H,), v (D,H), activation) -> (B, D) pre-logits. Saves
    only its inputs: the backward recomputes each row's hidden units between its ones.
    """

    @staticmethod
    def forward(ctx, x, w, c, v, activation):
        ext = _kernel()
        args = [t.contiguous() for t in (x.to(w.dtype), w, c, v)]
        ctx.sigmoid = activation == "sigmoid"
        ctx.save_for_backward(*args)
        return ext.forward(*args, ctx.sigmoid)

    @staticmethod
    def backward(ctx, grad_out):
        x, w, c, v = ctx.saved_tensors
        dw, dc, dv = _kernel().backward(x, w, c, v, grad_out.contiguous(), ctx.sigmoid)
        return None, dw, dc, dv, None


def _kernel() -> ModuleType:
    ext = native.nade()
    if ext is None:
        raise RuntimeError(f"the native NADE kernel is unavailable: {native.why_not('nade')}")
    return ext


def native_available() -> bool:
    """Whether the compiled NADE kernel can be used here (built now if need be)."""
    return native.nade() is not None


def _rows_by_step(x: Tensor) -> list[Tensor | None]:
    """For each step (column of x), the indices of the rows where x is nonzero (None if none)."""
    nz = x.T.nonzero()  # (N, 2): (step, row), sorted by step
    counts = torch.bincount(nz[:, 0], minlength=x.shape[1]).tolist()
    parts = torch.split(nz[:, 1], counts)
    return [p if n else None for p, n in zip(parts, counts, strict=True)]


# ====================================================================== the model
@register
class NADE(DiscreteOrderedModel):
    """NADE over binary or K-level images (see the module doc)."""

    name = "nade"
    Config = NADEConfig
    # measured on digits (the main job): lr 2e-2 with a cosine decay over 50 epochs reaches
    # 17.2 test nats where Adam's usual 1e-3 for 20 epochs stops at 23.0
    train_defaults = {"lr": 2e-2, "lr_schedule": "cosine", "epochs": 50, "patience": 10}

    orders: Tensor

    def __init__(self, event_shape, levels, config: NADEConfig):
        super().__init__(event_shape, levels, config)
        d, hid = self.dim, config.hidden
        if levels == 2:
            self.m_in = self.m_out = 1
        else:
            m = min(config.embed_dim, levels)
            self.m_in, self.m_out = 1 + m, m
            self.embed_in = nn.Parameter(torch.randn(levels, m) * config.init_scale)  # (K, M)
            self.embed_out = nn.Parameter(torch.randn(levels, m) * config.init_scale)  # (K, M)
        s = config.init_scale
        self.weight_in = nn.Parameter(torch.randn(d, self.m_in, hid) * s / math.sqrt(d))
        self.bias_hidden = nn.Parameter(torch.zeros(hid))  # c
        self.weight_out = nn.Parameter(torch.randn(d, self.m_out, hid) * s / math.sqrt(hid))
        self.bias_out = nn.Parameter(torch.zeros(d, self.head.num_params))  # b
        orders = [self.order]
        for e in range(1, config.ensemble):
            orders.append(resolve_ordering(f"random:{config.ensemble_seed + e}", self.event_shape))
        self.register_buffer("orders", torch.stack(orders), persistent=False)  # (E, D)
        # raster order of a one-channel image is the identity: no gather of the weights needed
        self._identity = config.ordering == "raster" and self.event_shape[0] == 1

    @torch.no_grad()
    def init_output_bias(self, x: Tensor) -> None:
        """Set the output biases to the data's per-pixel log-frequencies (binary: the logit of
        each pixel's mean), so that the untrained model is the independent-pixel fit and its
        samples have the data's density of ones; a trainer hook for recipes."""
        bias = frequency_bias(self.check_images(x).flatten(1), self.levels)
        self.bias_out.copy_(bias.to(self.bias_out))

    # ------------------------------------------------------------------ pieces
    def phi(self, xo: Tensor) -> Tensor:
        """Input features of each value, ``(B, D) -> (B, D, Min)``."""
        if self.levels == 2:
            return xo.unsqueeze(-1)
        emb = self.embed_in[xo.detach().long()]  # (B, D, M)
        return torch.cat([(xo / (self.levels - 1)).unsqueeze(-1), emb], -1)

    def head_params(self, pre: Tensor, bias: Tensor) -> Tensor:
        """``(..., Mout)`` pre-outputs and ``(..., P)`` biases -> ``(..., P)`` head parameters."""
        if self.levels == 2:
            return pre + bias
        return pre @ self.embed_out.T + bias

    def _impl(self, xo: Tensor) -> str:
        impl = self.config.impl
        if impl == "auto":
            impl = "block"
            if xo.device.type == "cpu" and self.levels == 2:
                impl = "native" if native_available() else "sparse"
        if impl in ("sparse", "native") and (self.levels != 2 or xo.requires_grad):
            impl = "block"  # these paths are for binary inputs without an input gradient
        if impl == "native" and xo.device.type != "cpu":
            impl = "block"
        return impl

    def uses_native(self) -> bool:
        """Whether sampling and the binary CPU paths run the compiled kernel."""
        if (
            self.levels != 2
            or self._device.type != "cpu"
            or self.config.impl in ("sparse", "block")
        ):
            return False
        return native_available() if self.config.impl == "auto" else self._need_native()

    def _need_native(self) -> bool:
        if not native_available():
            raise RuntimeError(
                f"impl='native' but the compiled NADE kernel is unavailable: "
                f"{native.why_not('nade')} (use impl='auto' or 'sparse')"
            )
        return True

    def by_step(self, t: Tensor, e: int = 0) -> Tensor:
        """A per-pixel parameter ``(D, ...)`` in the visiting order of ordering ``e`` (no copy
        for raster order of a one-channel image, where the order is the identity)."""
        if e == 0 and self._identity:
            return t
        return t[self.orders[e]]

    def preoutputs(self, xo: Tensor, e: int = 0, impl: str | None = None) -> Tensor:
        """``V_i h_i`` of every step for ordering ``e``: ``(B, D) -> (B, D, Mout)``.

        Args:
            xo: values in the visiting order of ordering ``e`` of the ensemble.
            e: which ordering (0: the configured one).
            impl: "sparse" or "block" (default: the config's choice).
        """
        impl = impl or self._impl(xo)
        w, v = self.by_step(self.weight_in, e), self.by_step(self.weight_out, e)
        act = self.config.activation
        if impl in ("sparse", "native"):
            if self.levels != 2:
                raise ValueError(f"the {impl} path needs binary data (levels=2)")
            fn = SparseBinaryNADE
            if impl == "native" and self._need_native():
                fn = NativeBinaryNADE  # type: ignore[assignment]
            return fn.apply(xo.detach(), w[:, 0], self.bias_hidden, v[:, 0], act)[..., None]
        return BlockNADE.apply(self.phi(xo), w, self.bias_hidden, v, None, act, self.config.block)

    def ordered_log_probs(self, x: Tensor, e: int = 0, impl: str | None = None) -> Tensor:
        """Per-step log-likelihoods under ordering ``e`` of the ensemble, ``(B, D)`` in its
        visiting order."""
        xo = x.flatten(1) if (e == 0 and self._identity) else x.flatten(1)[:, self.orders[e]]
        params = self.head_params(self.preoutputs(xo, e, impl), self.by_step(self.bias_out, e))
        return self.head.log_prob(params, xo)

    # ------------------------------------------------------------------ the chain rule
    def _ordered_params(self, xo: Tensor) -> Tensor:
        return self.head_params(self.preoutputs(xo, 0), self.by_step(self.bias_out, 0))

    def _conditional_log_probs(self, x: Tensor) -> Tensor:
        if self.config.ensemble > 1:
            raise ValueError(
                f"per-dimension conditionals of an ensemble of {self.config.ensemble} orderings "
                "are not defined (it is a mixture); use log_prob, or ensemble=1"
            )
        return self.from_ordered(self.ordered_log_probs(x, 0))

    def log_prob_unchecked(self, x: Tensor) -> Tensor:
        """Exact log p(x) in nats, ``(B,)``; for an ensemble, the log of the uniform mixture."""
        return self._log_prob(x)

    def _log_prob(self, x: Tensor, impl: str | None = None) -> Tensor:
        n_e = self.config.ensemble
        joints = torch.stack([self.ordered_log_probs(x, e, impl).sum(1) for e in range(n_e)])
        if n_e == 1:
            return joints[0]
        return torch.logsumexp(joints, 0) - math.log(n_e)

    def features(self, x: Tensor) -> Tensor:
        """Hidden units after the whole image is seen, ``act(c + sum_j W_j phi(x_j))``: (B, H).

        The same for every ordering (the sum runs over all pixels)."""
        x = self.check_images(x)
        phi = self.phi(x.flatten(1))  # (B, D, Min), pixel order
        a = self.bias_hidden + torch.einsum("bdm,dmh->bh", phi, self.weight_in)
        return activate(a, self.config.activation)

    # ------------------------------------------------------------------ sampling
    def _sample(self, n, given, mask, generator, *, sparse: bool = True, **kwargs):
        """Ancestral sampling in O(DH) per image (:class:`NADEDecoder`), keeping ``given``
        where ``mask`` is True.

        ``sparse=False`` updates the hidden units of every row at every step (the reference
        decoder); the default updates only the rows whose binary input is 1. Both give the same
        images from the same generator.
        """
        if kwargs:
            raise ValueError(f"unexpected sample options for 'nade': {sorted(kwargs)}")
        return sampling.sample(self, n, given, mask, generator, options={"sparse": sparse})

    def decoder_order(self, part: int = 0) -> Tensor:
        return self.orders[part]

    def decoder(self, n: int, part: int = 0, *, sparse: bool = True) -> NADEDecoder:
        return NADEDecoder(self, n, part, sparse, fused=sparse and self.uses_native())

    def teacher_params(self, xo: Tensor, part: int = 0) -> Tensor:
        return self.head_params(self.preoutputs(xo, part), self.by_step(self.bias_out, part))

    def choose_parts(self, n, given, mask, generator) -> Tensor | None:
        """Each sample's ordering (ensemble only): uniformly, or from p(e | given) for a
        completion whose given pixels are a prefix of every ordering (otherwise uniformly,
        with a warning): :func:`chainrule.sampling.choose_components`."""
        if self.config.ensemble == 1:
            return None

        def prefix_log_probs(given: Tensor, m: Tensor) -> Tensor:
            cols = []
            for e, order in enumerate(self.orders):
                lp = self.ordered_log_probs(given, e)  # prefix conditionals ignore the rest
                cols.append(torch.where(m[:, order], lp, torch.zeros_like(lp)).sum(1))
            return torch.stack(cols, 1)

        return sampling.choose_components(
            n, self.orders, given, mask, prefix_log_probs, generator,
            device=self._device, every="ordering of the ensemble", each="ordering",
        )  # fmt: skip


class NADEDecoder:
    """Incremental decoding of ordering ``part`` of a :class:`NADE`: the running activation
    ``a`` ``(n, H)`` and hidden units ``h``; one matrix-vector product per step and one update
    of ``a`` when told a value. Binary with ``sparse``: only the rows whose value is 1 change."""

    def __init__(self, model: NADE, n: int, part: int, sparse: bool, fused: bool = False):
        self.model, self.sparse = model, sparse
        if fused:  # the whole loop in one call of the compiled kernel (binary, CPU)
            self.fused = self._fused
        self.order = model.orders[part]
        self.act = model.config.activation
        self.binary = model.levels == 2
        w, v, bias = (
            model.by_step(t, part) for t in (model.weight_in, model.weight_out, model.bias_out)
        )
        if self.binary:
            w, v, bias = w[:, 0], v[:, 0], bias[:, 0]
        self.w, self.v, self.bias = w, v, bias
        # each step's rows as views made once (indexing a row per step costs a dispatch each)
        self.w_rows, self.v_rows, self.bias_rows = w.unbind(0), v.unbind(0), bias.unbind(0)
        self.a = model.bias_hidden.unsqueeze(0).repeat(n, 1)  # (n, H), a copy (updated in place)
        self.h = activate(self.a, self.act)

    def _fused(self, u: Tensor, given: Tensor | None, mask: Tensor | None) -> Tensor:
        """Every step at once: ``u`` ``(n, D)`` uniforms in step order (x = 1 iff
        ``logit(u) < logit``, as :meth:`chainrule.distributions.Bernoulli.draw`); where ``mask``
        is set the ``given`` value is kept and told. Returns the values ``(n, D)``."""
        dt = self.w.dtype
        thr = torch.logit(u.to(dt)).contiguous()
        if given is None or mask is None:
            mask_t, given_t = torch.empty(0, dtype=torch.bool), torch.empty(0, dtype=dt)
        else:
            mask_t, given_t = mask.to(torch.bool).contiguous(), given.to(dt).contiguous()
        w, c, v, b = (
            t.detach().contiguous() for t in (self.w, self.model.bias_hidden, self.v, self.bias)
        )
        return _kernel().sample(w, c, v, b, thr, mask_t, given_t, self.act == "sigmoid")

    def params(self, i: int) -> Tensor:
        if self.binary:
            return torch.addmv(self.bias_rows[i], self.h, self.v_rows[i]).unsqueeze(-1)  # (n, 1)
        return self.model.head_params(self.h @ self.v[i].T, self.bias[i])

    def tell(self, i: int, value: Tensor) -> None:
        if not self.binary:
            self.a = self.a + self.model.phi(value[:, None])[:, 0] @ self.w[i]
            self.h = activate(self.a, self.act)
        elif self.sparse:  # only the rows whose input is 1 change
            r = value.nonzero()[:, 0]
            if r.numel():
                new = self.a.index_select(0, r).add_(self.w_rows[i])
                self.a.index_copy_(0, r, new)
                self.h.index_copy_(0, r, new.sigmoid_() if self.act == "sigmoid" else new.relu_())
        else:
            self.a = self.a + value[:, None] * self.w[i]
            self.h = activate(self.a, self.act)


__all__ = [
    "NADE",
    "NADEConfig",
    "NativeBinaryNADE",
    "BlockNADE",
    "SparseBinaryNADE",
    "activate",
    "activation_grad",
]
