"""The one interface every chainrule model implements.

An autoregressive model factorizes the joint distribution of an image with the chain rule,

    log p(x) = sum_i log p(x_{o(i)} | x_{o(1)}, ..., x_{o(i-1)}),

over some ordering ``o`` of the D = C * H * W dimensions. Every model here gives that number
*exactly* (in nats), can draw new images from it, and can complete an image of which some
dimensions are given.

Public methods check their input and raise ``ValueError`` with a message naming what was
expected and what was given; the private ``_conditional_log_probs`` and ``_sample`` do the work.

Conventions:

* Images are ``(B, C, H, W)`` tensors. A discrete model with ``levels = K`` takes the whole
  numbers ``0 .. K-1`` in any integer or floating dtype; a real-valued model (``levels=None``)
  takes values in ``[0, 1]``.
* Random numbers for sampling are drawn up front, one uniform per dimension
  (:func:`chainrule.sampling.draw_uniforms`), so that two samplers that visit the dimensions in
  different ways (a cached and a naive one, say) produce the same image from the same generator.
* Sampling: one loop for every model (:mod:`chainrule.sampling`); a model supplies an
  incremental decoder (``decoder``, ``decoder_order``), the teacher-forced pass of its density
  (``teacher_params``) and its head.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from .. import sampling
from ..sampling import draw_uniforms, warn_if_not_prefix  # noqa: F401  (re-exported)


class AutoregressiveModel(nn.Module):
    """Base class: exact log-likelihood, sampling with completion, features.

    Subclasses set ``name`` (the registry name), ``Config`` (a dataclass of options) and
    implement :meth:`_conditional_log_probs` and :meth:`_sample`.

    Args:
        event_shape: ``(C, H, W)`` of one image.
        levels: number of discrete levels K (2 for binary, 256 for 8-bit) or ``None`` for
            real values in [0, 1].
        config: the model's config dataclass instance.
    """

    name: ClassVar[str] = "base"
    Config: ClassVar[type] = object
    #: levels this family supports: "binary" (K=2 only), "discrete" (any K>=2), "real" (None),
    #: or a tuple of those.
    supports: ClassVar[tuple[str, ...]] = ("binary", "discrete")
    #: False for models that look conditionals up in tables (no gradient w.r.t. the input)
    input_differentiable: ClassVar[bool] = True
    #: trainer settings that suit this model better than the trainer's defaults (lr, epochs, ...)
    train_defaults: ClassVar[dict[str, Any]] = {}

    # capabilities, declared (the tests are driven by them)
    #: the model has an ``ordering`` option (see :mod:`chainrule.orderings`)
    supports_orderings: ClassVar[bool] = True
    #: completion is an exact conditional draw for *any* mask (not only a prefix): no warning
    supports_completion_any_mask: ClassVar[bool] = False
    #: ``sample(..., cuda_graph=True)`` is available (CUDA, unconditional sampling)
    supports_cuda_graph: ClassVar[bool] = False
    #: listed by ``available_models`` (and ``chainrule train --model``); False for a model made
    #: from trained ones (the mixture), which checkpoints still load by name
    listed: ClassVar[bool] = True
    #: CPU threads for the sampling loop (None: leave torch's setting)
    sample_threads: ClassVar[int | None] = None

    def __init__(self, event_shape: tuple[int, int, int], levels: int | None, config: Any):
        super().__init__()
        event_shape = check_event_shape(event_shape)
        check_levels(levels, type(self))
        self.event_shape: tuple[int, int, int] = event_shape
        self.levels: int | None = levels
        self.config = config

    # ------------------------------------------------------------------ sizes
    @property
    def dim(self) -> int:
        """D = C * H * W, the number of dimensions of one image."""
        c, h, w = self.event_shape
        return c * h * w

    @property
    def is_discrete(self) -> bool:
        return self.levels is not None

    def num_parameters(self) -> int:
        """Exact number of free parameters (a Python int, never a float)."""
        return sum(p.numel() for p in self.parameters())

    @classmethod
    def count_parameters(
        cls, event_shape: tuple[int, int, int], levels: int | None, config: Any
    ) -> int:
        """Parameter count without allocating the model (built on the ``meta`` device).

        Models whose size is astronomical (the full table) override this with a formula.
        """
        with torch.device("meta"):
            model = cls(event_shape, levels, config)
        return model.num_parameters()

    # ------------------------------------------------------------------ public API
    def log_prob(self, x: Tensor) -> Tensor:
        """Exact log p(x) in nats, summed over all dimensions.

        Args:
            x: ``(B, C, H, W)`` images.

        Returns:
            ``(B,)`` log-likelihoods in nats.
        """
        return self.log_prob_unchecked(self.check_images(x))

    def log_prob_unchecked(self, x: Tensor) -> Tensor:
        """:meth:`log_prob` of images that were checked already (as :meth:`check_images`
        returns them: floating, on the model's device): no validation, so no host
        synchronisation. For trainers, which check a data set once when it is loaded."""
        return self._conditional_log_probs(x).flatten(1).sum(1)

    def training_log_prob(self, x: Tensor) -> Tensor:
        """What training maximizes, ``(B,)`` for checked images: the exact log p(x)
        (:meth:`log_prob_unchecked`), or a model's own stochastic objective (the order-agnostic
        models: an unbiased estimate of the mean log-likelihood over orderings and masks)."""
        return self.log_prob_unchecked(x)

    @property
    def has_conditionals(self) -> bool:
        """Whether per-dimension conditionals (:meth:`conditional_log_probs`) are defined: not
        for a mixture of orderings or of networks (an ensemble), whose joint is a mixture."""
        return getattr(self.config, "ensemble", 1) == 1

    def conditional_log_probs(self, x: Tensor) -> Tensor:
        """log p(x_i | x_<i) for every dimension, laid out like the image.

        Args:
            x: ``(B, C, H, W)`` images.

        Returns:
            ``(B, C, H, W)`` per-dimension log-likelihoods in nats (their sum is
            :meth:`log_prob`). Useful as a per-pixel "surprise" map.
        """
        x = self.check_images(x)
        return self._conditional_log_probs(x)

    @torch.no_grad()
    def sample(
        self,
        n: int,
        *,
        given: Tensor | None = None,
        mask: Tensor | None = None,
        generator: torch.Generator | None = None,
        **kwargs: Any,
    ) -> Tensor:
        """Draw ``n`` images, or complete given ones.

        Args:
            n: number of images to draw.
            given: optional ``(n, C, H, W)`` (or ``(C, H, W)``, repeated ``n`` times) values
                to keep where ``mask`` is True.
            mask: boolean tensor broadcastable to ``(n, C, H, W)``; True marks given values.
            generator: a ``torch.Generator`` for reproducible draws.

        Returns:
            ``(n, C, H, W)`` float tensor: whole numbers ``0..K-1`` for a discrete model,
            values in [0, 1] for a real-valued one.

        Completion is an exact draw from p(rest | given) when the given dimensions come first
        in the model's ordering (a prefix). Otherwise each free dimension is drawn from
        p(x_i | x_<i), which ignores given values that come *later* in the ordering; a warning
        says so.
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive int, got {n!r}")
        given, mask = self._check_completion(n, given, mask)
        return self._sample(n, given, mask, generator, **kwargs)

    def features(self, x: Tensor) -> Tensor:
        """Features for representation learning, ``(B, F)``.

        The default is the vector of per-dimension conditional log-likelihoods; models with
        hidden units override this with them.
        """
        x = self.check_images(x)
        return self._conditional_log_probs(x).flatten(1)

    # ------------------------------------------------------------------ to implement
    def _conditional_log_probs(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _sample(
        self,
        n: int,
        given: Tensor | None,
        mask: Tensor | None,
        generator: torch.Generator | None,
        **kwargs: Any,
    ) -> Tensor:
        """The one sampler (:func:`chainrule.sampling.sample`) through :meth:`decoder`."""
        options = {}
        if self.supports_cuda_graph and "cuda_graph" in kwargs:
            options["cuda_graph"] = kwargs.pop("cuda_graph")
        if kwargs:
            raise ValueError(f"unexpected sample options for {self.name!r}: {sorted(kwargs)}")
        return sampling.sample(self, n, given, mask, generator, **options)

    # ------------------------------------------------------------------ decoding protocol
    def decoder(self, n: int, part: int = 0) -> sampling.Decoder:  # pragma: no cover - abstract
        """Start decoding ``n`` images (see :mod:`chainrule.sampling`)."""
        raise NotImplementedError

    def decoder_order(self, part: int = 0) -> Tensor:  # pragma: no cover - abstract
        """``(D,)`` the flat index of the dimension visited at each step of ``part``."""
        raise NotImplementedError

    def teacher_params(self, xo: Tensor, part: int = 0) -> Tensor:  # pragma: no cover
        """``(n, D)`` values in the step order -> ``(n, D, P)`` every step's head parameters."""
        raise NotImplementedError

    def choose_parts(
        self, n: int, given: Tensor | None, mask: Tensor | None, generator
    ) -> Tensor | None:
        """For a mixture of orderings: each image's component ``(n,)``; None otherwise."""
        return None

    # ------------------------------------------------------------------ helpers
    @property
    def _dtype(self) -> torch.dtype:
        for p in self.parameters():
            if p.is_floating_point():
                return p.dtype
        for b in self.buffers():
            if b.is_floating_point():
                return b.dtype
        return torch.get_default_dtype()

    @property
    def _device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        for b in self.buffers():
            return b.device
        return torch.device("cpu")

    def check_images(self, x: Any, what: str = "x") -> Tensor:
        """Validate a batch of images and return it as a float tensor on the model's device."""
        return check_images(x, self.event_shape, self.levels, what=what).to(
            device=self._device, dtype=self._dtype
        )

    def _check_completion(
        self, n: int, given: Tensor | None, mask: Tensor | None
    ) -> tuple[Tensor | None, Tensor | None]:
        if given is None and mask is None:
            return None, None
        if given is None or mask is None:
            raise ValueError("completion needs both `given` and `mask` (or neither)")
        given_t = torch.as_tensor(given)
        if given_t.dim() == 3:
            given_t = given_t.unsqueeze(0).expand(n, *given_t.shape)
        if given_t.dim() == 4 and given_t.shape[0] == 1 and n > 1:
            given_t = given_t.expand(n, *given_t.shape[1:])
        given_t = self.check_images(given_t, what="given")
        if given_t.shape[0] != n:
            raise ValueError(f"given has {given_t.shape[0]} images but n={n}")
        mask_t = torch.as_tensor(mask)
        if mask_t.dtype != torch.bool:
            raise ValueError(f"mask must be a boolean tensor, got dtype {mask_t.dtype}")
        try:
            mask_t = torch.broadcast_to(mask_t, given_t.shape).to(given_t.device)
        except RuntimeError:
            raise ValueError(
                f"mask of shape {tuple(mask_t.shape)} does not broadcast to {tuple(given_t.shape)}"
            ) from None
        return given_t, mask_t.contiguous()

    def extra_repr(self) -> str:
        return f"event_shape={self.event_shape}, levels={self.levels}"


# ---------------------------------------------------------------------- validation
def check_event_shape(event_shape: Any) -> tuple[int, int, int]:
    import numbers

    if isinstance(event_shape, (str, bytes)) or not hasattr(event_shape, "__len__"):
        raise ValueError(f"event_shape must be a tuple (C, H, W) of ints, got {event_shape!r}")
    shape = tuple(event_shape)
    if len(shape) != 3 or not all(
        isinstance(s, numbers.Integral) and not isinstance(s, bool) and int(s) >= 1 for s in shape
    ):
        raise ValueError(f"event_shape must be three positive ints (C, H, W), got {event_shape!r}")
    return tuple(int(s) for s in shape)  # type: ignore[return-value]


def check_levels(levels: Any, cls: type[AutoregressiveModel] | None = None) -> None:
    name = cls.name if cls is not None else "this model"
    supports = cls.supports if cls is not None else ("binary", "discrete", "real")
    if levels is None:
        if "real" not in supports:
            raise ValueError(f"model {name!r} is discrete: give levels=2 (binary) or K>=2")
        return
    if isinstance(levels, bool) or not isinstance(levels, int) or levels < 2:
        raise ValueError(f"levels must be an int >= 2 (or None for real values), got {levels!r}")
    if levels == 2 and not ({"binary", "discrete"} & set(supports)):
        raise ValueError(f"model {name!r} is real-valued: use levels=None")
    if levels > 2 and "discrete" not in supports:
        kinds = " or ".join(supports)
        raise ValueError(f"model {name!r} supports {kinds} data, not levels={levels}")


def check_images(
    x: Any, event_shape: tuple[int, int, int], levels: int | None, what: str = "x"
) -> Tensor:
    """Check shape, dtype, NaN and value range of a batch of images.

    Returns a floating tensor (float32 unless ``x`` was float64) of shape ``(B, C, H, W)``.
    """
    if not isinstance(x, Tensor):
        try:
            x = torch.as_tensor(x)
        except Exception:
            raise ValueError(f"{what} must be a tensor or array, got {type(x).__name__}") from None
    if x.dtype == torch.bool:
        x = x.to(torch.uint8)
    if x.is_complex() or not (x.is_floating_point() or _is_integer(x)):
        raise ValueError(f"{what} must have an integer or floating dtype, got {x.dtype}")
    c, h, w = event_shape
    if x.dim() != 4 or tuple(x.shape[1:]) != (c, h, w):
        raise ValueError(f"{what} must have shape (B, {c}, {h}, {w}), got {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{what} is an empty batch (B=0)")
    xf = x if x.is_floating_point() else x.to(torch.float64)
    if not torch.isfinite(xf).all():
        raise ValueError(f"{what} contains NaN or infinite values")
    lo, hi = xf.min().item(), xf.max().item()
    if levels is None:
        if lo < 0.0 or hi > 1.0:
            raise ValueError(
                f"{what} must lie in [0, 1] for a real-valued model, got values in [{lo:g}, {hi:g}]"
            )
    else:
        if lo < 0 or hi > levels - 1 or not torch.equal(xf, xf.round()):
            kind = "binary (0/1)" if levels == 2 else f"whole numbers 0..{levels - 1}"
            raise ValueError(
                f"{what} must hold {kind} values for a model with levels={levels}, "
                f"got values in [{lo:g}, {hi:g}]"
                + ("" if torch.equal(xf, xf.round()) else " that are not whole numbers")
            )
    if x.is_floating_point():
        return x
    return x.to(torch.get_default_dtype())


def _is_integer(x: Tensor) -> bool:
    return x.dtype in (
        torch.uint8,
        torch.int8,
        torch.int16,
        torch.int32,
        torch.int64,
    )


def config_from_options(config_cls: type, options: dict[str, Any], model_name: str) -> Any:
    """Build a config dataclass from keyword options, with clear errors for unknown names."""
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(options) - set(fields))
    if unknown:
        raise ValueError(
            f"unknown option(s) {', '.join(unknown)} for model {model_name!r}; "
            f"its options are: {', '.join(fields) or '(none)'}"
        )
    try:
        config = config_cls(**options)
    except TypeError as e:
        raise ValueError(f"bad options for model {model_name!r}: {e}") from None
    validate = getattr(config, "validate", None)
    if validate is not None:
        validate()
    return config


#: names of computation paths from before the eager oracles moved to ``tests/oracles`` (saved
#: configs, scripts); read as "auto", the fast path (the same weights, the same values)
RETIRED_IMPLS = ("fast", "reference", "naive")


def canonical_impl(impl: Any) -> Any:
    """``impl`` with a retired name (:data:`RETIRED_IMPLS`) read as ``"auto"``."""
    return "auto" if impl in RETIRED_IMPLS else impl
