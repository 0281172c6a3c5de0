"""The one ancestral sampler of the library, and its oracle.

Every model draws images the same way: one uniform number per dimension (two for a real-valued
mixture head) drawn up front (:func:`draw_uniforms`), then the dimensions visited one after the
other in the model's ordering, each value drawn from its conditional by the head's inverse CDF
(:mod:`chainrule.distributions`). This module owns that loop (:func:`sample`): the uniforms, the
given values of a completion (``given`` / ``mask``), the prefix rule and its warning, the CPU
thread policy and the optional CUDA graph. A model only supplies an incremental *decoder*.

The decoding protocol (what a model implements):

* ``model.head``: the output head; ``head.uniforms`` uniforms per dimension (1 or 2); optional
  ``head.prepare(us, dtype)`` / ``head.draw(params, *rows_i)`` transform the uniforms once for
  the whole loop (Bernoulli: ``logit(u)``), else ``head.sample(params, *u_i)``.
* ``model.decoder(n, part=0) -> Decoder``: start decoding ``n`` images.
* ``Decoder.order``: ``(D,)`` the flat ``(C, H, W)`` index visited at each step.
* ``Decoder.params(i) -> (n, P)``: the head parameters of step ``i``, from the values told for
  steps ``< i``. The sampler may skip it for a step whose values are all given.
* ``Decoder.tell(i, value)``: the ``(n,)`` values chosen for step ``i`` (always called, in
  order ``0 .. D-1``).
* optional ``Decoder.sample_all(u)``: for a model whose dimensions are independent, every
  step's values at once from the ``(n, D)`` uniforms (no loop).
* optional ``Decoder.fused(*us, given, mask)``: the whole loop in one call (a compiled kernel,
  NADE's on the CPU): the ``(n, D)`` uniforms, the given values and mask in step order (or
  ``None``), the same draws as the loop; returns the values ``(n, D)`` in step order.
* ``model.teacher_params(xo, part=0) -> (n, D, P)``: every step's head parameters from values
  ``(n, D)`` in the step order at once (the density's own pass, teacher forcing). The naive
  oracle (:func:`naive_sample`) samples through it, one full pass per step.
* ``model.choose_parts(n, given, mask, generator) -> None | (n,) | ((n,), keys)``: a mixture
  of orderings (NADE's ensemble) picks each image's component (drawing its own uniforms after
  the per-dimension ones) and checks the prefix rule itself; ``None`` for a single ordering.
  With ``keys`` (a list), component ``c`` is decoded by ``model.decoder(m, keys[c])`` (and the
  oracle's ``decoder_order`` / ``teacher_params`` of that key): an order-agnostic model names
  a (member, given-first ordering) pair per mask, which makes completion of any mask exact.
* class attributes: ``supports_completion_any_mask`` (completion is exact for any mask: no
  prefix warning), ``sample_threads`` (``1``: run the loop on one CPU thread),
  ``supports_cuda_graph``.

Equality: the incremental decoder and the naive oracle turn the same uniforms into the same
values with the same head; their head parameters agree to floating-point rounding, so their
images are equal unless a uniform falls within rounding of a CDF boundary.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch import Tensor


class Decoder(Protocol):
    """Incremental decoding state of ``n`` images (see the module doc)."""

    order: Tensor

    def params(self, i: int) -> Tensor: ...

    def tell(self, i: int, value: Tensor) -> None: ...


# ---------------------------------------------------------------------- uniforms, prefix rule
def draw_uniforms(
    n: int,
    shape: tuple[int, ...],
    generator: torch.Generator | None,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    """One uniform number in [0, 1) per dimension of ``n`` images, drawn up front.

    Drawn on the generator's device (CPU for a CPU generator) and moved, so that the same seed
    gives the same numbers wherever the model lives.
    """
    gen_device = generator.device if generator is not None else torch.device("cpu")
    u = torch.rand((n, *shape), generator=generator, device=gen_device, dtype=torch.float64)
    return u.to(device=device, dtype=dtype)


def is_prefix(mask: Tensor, order: Tensor) -> bool:
    """Whether the given dimensions (``mask`` ``(n, D)``, True = given, flat layout) come first
    in the ordering ``order`` ``(D,)`` (``order[i]`` = flat index visited at step ``i``)."""
    m = mask[:, order]  # (n, D) in visiting order
    free_seen = torch.cumsum((~m).to(torch.int64), dim=1) > 0  # once a step is free ...
    return not bool((free_seen & m).any())  # ... no later step is given


def choose_components(
    n: int,
    orders: Tensor,
    given: Tensor | None,
    mask: Tensor | None,
    prefix_log_probs: Callable[[Tensor, Tensor], Tensor],
    generator: torch.Generator | None,
    *,
    device: torch.device,
    every: str,
    each: str,
) -> Tensor:
    """Each image's component of a uniform mixture whose K components visit ``orders``
    ``(K, D)``: uniformly, or, for a completion whose given pixels are a prefix of every
    component's ordering, from p(k | given) ∝ p_k(given), with ``prefix_log_probs(given, m)``
    ``(n, K)`` each component's log-likelihood of the given pixels (``m``: the flat ``(n, D)``
    mask). Otherwise uniformly, with a warning: "... not a prefix of every ``every``: each
    sample's ``each`` is drawn uniformly ...". Draws one uniform per image (after the
    per-dimension ones). Returns ``(n,)`` int64."""
    u = draw_uniforms(n, (1,), generator, device=device)[:, 0]
    logw = torch.zeros(n, orders.shape[0], device=u.device, dtype=torch.float64)
    if given is not None and mask is not None:
        m = mask.flatten(1)
        if all(is_prefix(m, o) for o in orders):
            logw = prefix_log_probs(given, m).double()
        else:
            warnings.warn(
                f"the given pixels are not a prefix of every {every}: each sample's {each} is "
                "drawn uniformly and each free pixel from p(x_i | x_<i), so the "
                "completion is not an exact draw from p(rest | given)",
                stacklevel=6,
            )
    cdf = torch.softmax(logw, 1).cumsum(1)
    return (cdf[:, :-1] <= u[:, None].double()).sum(1)


NOT_PREFIX = (
    "the given pixels are not a prefix of the model's ordering: each free pixel is drawn "
    "from p(x_i | x_<i), which ignores given pixels that come later in the ordering, so "
    "the completion is not an exact draw from p(rest | given). Use an ordering that puts "
    "the given pixels first (e.g. raster order for a top part of the image)."
)


def warn_if_not_prefix(
    mask: Tensor | None, order: Tensor, message: str = NOT_PREFIX, stacklevel: int = 4
) -> None:
    """Warn (``UserWarning``) when the given dimensions are not a prefix of ``order``."""
    if mask is not None and not is_prefix(mask, order):
        warnings.warn(message, stacklevel=stacklevel)


# ---------------------------------------------------------------------- the sampler
class NaiveDecoder:
    """The oracle's decoder: one full teacher-forced pass (``teacher(xo) -> (n, D, P)``) per
    step, on the values told so far (later steps zero)."""

    def __init__(self, teacher: Callable[[Tensor], Tensor], order: Tensor, n: int, dtype):
        self.teacher, self.order = teacher, order
        self.xo = torch.zeros(n, order.numel(), device=order.device, dtype=dtype)

    def params(self, i: int) -> Tensor:
        return self.teacher(self.xo)[:, i]

    def tell(self, i: int, value: Tensor) -> None:
        self.xo[:, i] = value


class _Parts:
    """A mixture of decoders, one per component, each on its own rows of the batch."""

    def __init__(self, rows: list[Tensor], decoders: list[Any], n: int, d: int):
        self.rows, self.decoders = rows, decoders
        self.order = torch.empty(n, d, dtype=torch.int64, device=rows[0].device)
        for r, dec in zip(rows, decoders, strict=True):
            self.order[r] = dec.order
        if all(hasattr(dec, "fused") for dec in decoders):  # then the mixture is fused too
            self.fused = self._fused

    def params(self, i: int) -> Tensor:
        parts = [dec.params(i) for dec in self.decoders]
        out = parts[0].new_empty(self.order.shape[0], *parts[0].shape[1:])
        for r, p in zip(self.rows, parts, strict=True):
            out[r] = p
        return out

    def tell(self, i: int, value: Tensor) -> None:
        for r, dec in zip(self.rows, self.decoders, strict=True):
            dec.tell(i, value[r])

    def _fused(self, u: Tensor, given: Tensor | None, mask: Tensor | None) -> Tensor:
        """Each part's whole loop on its own rows (the parts' ``fused``)."""
        out = torch.empty(u.shape, dtype=torch.uint8, device=u.device)
        for r, dec in zip(self.rows, self.decoders, strict=True):
            g = m = None
            if given is not None and mask is not None:
                g, m = given[r], mask[r]
            out[r] = dec.fused(u[r], g, m).to(out.dtype)
        return out


def _start(model, n, given, mask, generator, make: Callable[[int, Any], Any]):
    """The decoder of ``n`` images: ``make(n, part)``, or a mixture of parts (the model's
    ``choose_parts``). Returns ``(decoder, checked)``: checked = the prefix rule was applied."""
    comp = model.choose_parts(n, given, mask, generator)
    if comp is None:
        return make(n, 0), False
    keys: Any = None
    if isinstance(comp, tuple):  # parts named by the model (an ordering per mask, say)
        comp, keys = comp
    for_part = range(int(comp.max()) + 1) if keys is None else keys
    rows, decs = [], []
    for e, key in enumerate(for_part):
        r = (comp == e).nonzero()[:, 0]
        if r.numel():
            rows.append(r)
            decs.append(make(r.numel(), key))
    return _Parts(rows, decs, n, model.dim), True


def _loop(model, n: int, us: list[Tensor], given, mask, generator, make) -> Tensor:
    """Draw ``n`` images from the uniforms ``us`` (each ``(n, D)``) through decoders ``make``."""
    head, d = model.head, model.dim
    decoder, checked = _start(model, n, given, mask, generator, make)
    order = decoder.order
    go: Tensor | None = None  # the given values and the mask, in step order
    mo: Tensor | None = None
    if given is not None:
        if not (checked or model.supports_completion_any_mask):
            warn_if_not_prefix(mask.flatten(1), order)
        g, m = given.flatten(1), mask.flatten(1)
        if order.dim() == 1:
            go, mo = g[:, order], m[:, order]
        else:
            go, mo = g.gather(1, order), m.gather(1, order)
    sample_all = getattr(decoder, "sample_all", None)
    fused = getattr(decoder, "fused", None)
    if sample_all is not None:
        xo = sample_all(*us)
        if go is not None and mo is not None:
            xo = torch.where(mo, go, xo)
    elif fused is not None:
        xo = fused(*us, go, mo).to(model._dtype)
    else:
        every = mo.all(0).tolist() if mo is not None else [False] * d  # one host sync
        # the uniforms as (D, n) rows, transformed once where the head can (Bernoulli: logit u)
        prepare = getattr(head, "prepare", None)
        rows = prepare(us, model._dtype) if prepare is not None else [u.T for u in us]
        draw = getattr(head, "draw", head.sample)
        values = []
        for i in range(d):
            if go is not None and every[i]:
                value = go[:, i]
            else:
                params = decoder.params(i)
                value = (
                    draw(params, rows[0][i])
                    if len(rows) == 1
                    else draw(params, *(r[i] for r in rows))
                )
                if go is not None and mo is not None:
                    value = torch.where(mo[:, i], go[:, i], value)
            decoder.tell(i, value)
            values.append(value)
        xo = torch.stack(values, 1).to(model._dtype)
    out = torch.empty_like(xo)
    if order.dim() == 1:
        out[:, order] = xo
    else:
        out.scatter_(1, order, xo)
    return out.reshape(n, *model.event_shape)


def _uniforms(model, n: int, generator) -> list[Tensor]:
    return [
        draw_uniforms(n, (model.dim,), generator, device=model._device)
        for _ in range(model.head.uniforms)
    ]


@torch.no_grad()
def sample(
    model,
    n: int,
    given: Tensor | None,
    mask: Tensor | None,
    generator: torch.Generator | None,
    *,
    cuda_graph: bool = False,
    options: dict[str, Any] | None = None,
) -> Tensor:
    """Draw ``n`` images (or complete ``given`` where ``mask``) with the model's decoder.

    ``given`` and ``mask`` must be checked already (``(n, C, H, W)`` values and booleans, or both
    ``None``; :meth:`AutoregressiveModel.sample` checks them).

    Args:
        cuda_graph: CUDA only, unconditional sampling only, for models that declare
            ``supports_cuda_graph``: record the whole loop once as a CUDA graph (per batch size
            and weights) and replay it, which removes the per-operation launch cost of the small
            per-step products. Same kernels, so the same images as the eager loop.
        options: keyword options of ``model.decoder`` (e.g. NADE's ``sparse``).

    Returns:
        ``(n, C, H, W)`` in the model's dtype.
    """
    us = _uniforms(model, n, generator)
    if cuda_graph:
        if not getattr(model, "supports_cuda_graph", False):
            raise ValueError(f"cuda_graph=True is not supported by {model.name!r}")
        if model._device.type != "cuda":
            raise ValueError(f"cuda_graph=True needs a model on a CUDA device, got {model._device}")
        if given is not None:
            raise ValueError("cuda_graph=True is for unconditional sampling (no given/mask)")
        return _replay_graph(model, n, us)
    options = options or {}

    def make(m: int, part: int):
        return model.decoder(m, part, **options)

    with _thread_policy(model):
        return _loop(model, n, us, given, mask, generator, make)


@torch.no_grad()
def naive_sample(model, n: int, given=None, mask=None, generator=None) -> Tensor:
    """The oracle: the same draws as :func:`sample`, each step's parameters from one full
    teacher-forced pass (``model.teacher_params``) over the values drawn so far. O(D) passes;
    for tests and tiny images. ``given`` / ``mask`` (checked) and ``generator`` as for
    :func:`sample`."""
    us = _uniforms(model, n, generator)

    def make(m: int, part: int) -> NaiveDecoder:
        order = model.decoder_order(part)
        return NaiveDecoder(lambda xo: model.teacher_params(xo, part), order, m, model._dtype)

    return _loop(model, n, us, given, mask, generator, make)


@torch.no_grad()
def teacher_forced_params(model, x: Tensor, part: int = 0) -> Tensor:
    """Head parameters of every step computed by the model's incremental decoder with the
    values of ``x`` ``(n, C, H, W)`` told step by step: ``(n, D, P)`` in the decoder's order.
    Equal to ``model.teacher_params`` up to rounding: the oracle of the caches themselves."""
    n = x.shape[0]
    decoder = model.decoder(n, part)
    xo = x.flatten(1)[:, decoder.order]
    out = []
    for i in range(model.dim):
        out.append(decoder.params(i))
        decoder.tell(i, xo[:, i])
    return torch.stack(out, 1)


class _thread_policy:
    """Run the loop on ``model.sample_threads`` CPU threads (then restore the setting)."""

    def __init__(self, model):
        want = getattr(model, "sample_threads", None)
        self.want = want if (want and model._device.type == "cpu") else None
        self.threads = torch.get_num_threads()

    def __enter__(self):
        if self.want is not None and self.threads > self.want:
            torch.set_num_threads(self.want)

    def __exit__(self, *exc):
        if torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)


def _replay_graph(model, n: int, us: list[Tensor]) -> Tensor:
    """Record (once per batch size and weight storage) and replay the sampling loop."""
    graphs = model.__dict__.setdefault("_sampling_graphs", {})
    key = (n, model._dtype, tuple(p.data_ptr() for p in model.parameters()))
    if key not in graphs:
        graphs.clear()  # one recorded graph per model at a time (its memory pool is kept)
        static_us = [u.clone() for u in us]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up outside the recording (cuBLAS handles, ...)
            _loop(model, n, static_us, None, None, None, model.decoder)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_x = _loop(model, n, static_us, None, None, None, model.decoder)
        graphs[key] = (graph, static_us, static_x)
    graph, static_us, static_x = graphs[key]
    for s, u in zip(static_us, us, strict=True):
        s.copy_(u)
    graph.replay()
    return static_x.clone()


__all__ = [
    "Decoder",
    "NaiveDecoder",
    "draw_uniforms",
    "is_prefix",
    "naive_sample",
    "sample",
    "teacher_forced_params",
    "warn_if_not_prefix",
]
