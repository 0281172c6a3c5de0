"""Name -> model class. Each model module registers its class with :func:`register`."""

from __future__ import annotations

import dataclasses
from typing import Any

from .base import AutoregressiveModel, check_event_shape, config_from_options

_REGISTRY: dict[str, type[AutoregressiveModel]] = {}

#: the order models are listed in (the ladder of the lecture); others follow alphabetically
LADDER = [
    "independent",
    "markov",
    "table",
    "fvsbn",
    "nade",
    "made",
    "deep-nade",
    "rnade",
    "pixelcnn",
    "row-lstm",
    "diagonal-bilstm",
]


def register(cls: type[AutoregressiveModel]) -> type[AutoregressiveModel]:
    """Class decorator: make ``cls`` buildable by its ``name``."""
    if not dataclasses.is_dataclass(cls.Config):
        raise TypeError(f"{cls.__name__}.Config must be a dataclass")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"model name {cls.name!r} registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def available_models() -> list[str]:
    """The registered model names, in the order of the ladder (not those made from trained
    models rather than trained from scratch: the mixture, which ``model_class`` still finds)."""
    listed = {n for n, cls in _REGISTRY.items() if getattr(cls, "listed", True)}
    known = [n for n in LADDER if n in listed]
    return known + sorted(listed - set(known))


def model_class(name: str) -> type[AutoregressiveModel]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown model {name!r}; available: {', '.join(available_models())}"
        ) from None


def make_config(name: str, **options: Any) -> Any:
    """The config dataclass of model ``name`` with ``options`` set (others at defaults)."""
    return config_from_options(model_class(name).Config, options, name)


def build(
    name: str,
    event_shape: tuple[int, int, int] = (1, 8, 8),
    levels: int | None = 2,
    **options: Any,
) -> AutoregressiveModel:
    """Build model ``name`` with random weights.

    Args:
        name: a name from :func:`available_models`.
        event_shape: ``(C, H, W)`` of one image.
        levels: 2 for binary data, K for K-level data (256: 8-bit), None for real values.
        **options: fields of the model's config dataclass (``hidden``, ``layers``, ``order``,
            ``ordering``, ``components``, ...).
    """
    cls = model_class(name)
    event_shape = check_event_shape(event_shape)
    config = config_from_options(cls.Config, options, name)
    return cls(event_shape, levels, config)


def count_parameters(
    name: str, event_shape: tuple[int, int, int], levels: int | None, **options: Any
) -> int:
    """Exact parameter count of model ``name`` without allocating it (may be astronomical)."""
    cls = model_class(name)
    event_shape = check_event_shape(event_shape)
    config = config_from_options(cls.Config, options, name)
    return cls.count_parameters(event_shape, levels, config)
