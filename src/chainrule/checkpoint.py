"""Checkpoints: safetensors weights plus a JSON config. Nothing is ever unpickled.

A checkpoint is two files side by side, ``NAME.safetensors`` and ``NAME.json``; a run folder
holds ``model.safetensors`` / ``model.json`` (the best model). The JSON alone is enough to
rebuild the model's architecture; the weights are then checked name by name and shape by shape
against it before they are loaded, so a truncated, foreign or mismatched file is refused with a
clear message.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .models.base import AutoregressiveModel
from .models.registry import model_class

FORMAT = "chainrule-checkpoint/1"


class CheckpointError(ValueError):
    """A checkpoint that cannot be read: missing, truncated, foreign or mismatched."""


def model_spec(model: AutoregressiveModel) -> dict[str, Any]:
    """The JSON-able description that rebuilds ``model``'s architecture."""
    import dataclasses

    return {
        "format": FORMAT,
        "model": model.name,
        "event_shape": list(model.event_shape),
        "levels": model.levels,
        "config": dataclasses.asdict(model.config),
    }


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file, fsync'ed, then renamed (see
    :func:`chainrule.outputs.write_bytes`: a failure leaves the old file and no temporary)."""
    from .outputs import write_bytes

    write_bytes(path, data)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())


def save_tensors(
    path: Path, tensors: dict[str, Tensor], metadata: dict[str, str] | None = None
) -> None:
    from safetensors.torch import save

    flat = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    atomic_write_bytes(Path(path), save(flat, metadata=metadata))


def load_tensors(path: Path) -> dict[str, Tensor]:
    from safetensors.torch import load

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no weights file at {path}")
    try:
        return load(path.read_bytes())
    except Exception as e:  # safetensors raises its own error types
        raise CheckpointError(
            f"{path} is not a readable safetensors file (truncated or corrupt?): {e}"
        ) from None


def read_metadata(path: Path) -> dict[str, str]:
    """The ``__metadata__`` strings of a safetensors file, read from its header alone.

    A safetensors file starts with an 8-byte little-endian header length and a JSON header.
    Raises :class:`CheckpointError` when the file is missing, truncated or not safetensors.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no weights file at {path}")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if n < 2 or 8 + n > size:
            raise CheckpointError(
                f"{path} is not a readable safetensors file (truncated or corrupt?)"
            )
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise CheckpointError(f"{path} has a corrupt safetensors header") from None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return dict(meta) if isinstance(meta, dict) else {}


def _paths(path: str | os.PathLike) -> tuple[Path, Path]:
    p = Path(path)
    if p.is_dir():
        return p / "model.safetensors", p / "model.json"
    if p.suffix == ".safetensors":
        return p, p.with_suffix(".json")
    if p.suffix == ".json":
        return p.with_suffix(".safetensors"), p
    if not p.exists():
        raise CheckpointError(
            f"no checkpoint at {p} (expected a run folder or a .safetensors file)"
        )
    raise CheckpointError(f"{p} is not a checkpoint: expected a run folder or a .safetensors file")


def save(model: AutoregressiveModel, path: str | os.PathLike) -> Path:
    """Write ``model`` to a run folder (``model.safetensors`` + ``model.json``) or to
    ``NAME.safetensors`` (+ ``NAME.json``). Writes are atomic. Returns the weights path."""
    p = Path(path)
    if p.suffix != ".safetensors":
        p.mkdir(parents=True, exist_ok=True)
    weights, spec_path = _paths(p)
    spec = model_spec(model)
    save_tensors(weights, model.state_dict(), metadata={"chainrule": json.dumps(spec)})
    atomic_write_json(spec_path, spec)
    return weights


def read_spec(path: str | os.PathLike) -> dict[str, Any]:
    _, spec_path = _paths(path)
    if not spec_path.is_file():
        raise CheckpointError(f"no checkpoint config at {spec_path}")
    try:
        spec = json.loads(spec_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{spec_path} is not valid JSON: {e}") from None
    if not isinstance(spec, dict) or spec.get("format") != FORMAT:
        raise CheckpointError(
            f"{spec_path} is not a chainrule checkpoint config (format {FORMAT!r})"
        )
    return spec


def build_from_spec(spec: dict[str, Any]) -> AutoregressiveModel:
    from .models.base import config_from_options

    try:
        cls = model_class(spec["model"])
        config = config_from_options(cls.Config, dict(spec.get("config") or {}), spec["model"])
        return cls(tuple(spec["event_shape"]), spec["levels"], config)
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint config cannot be used: {e}") from None


def load(
    path: str | os.PathLike, *, map_location: str | torch.device = "cpu"
) -> AutoregressiveModel:
    """Load a model written by :func:`save` or ``chainrule train`` (a run folder or a
    ``.safetensors`` file), or shipped weights (``"pretrained:NAME"``, their sha256 checked
    first; see :mod:`chainrule.pretrained`). Raises :class:`CheckpointError` with one clear
    message on failure."""
    if isinstance(path, str) and path.startswith("pretrained:"):
        from .pretrained import resolve

        path = resolve(path)
    weights_path, _ = _paths(path)
    spec = read_spec(path)
    model = build_from_spec(spec)
    tensors = load_tensors(weights_path)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise CheckpointError(
            f"weights in {weights_path} do not match a {spec['model']!r} model: "
            f"missing {missing[:5]}, unexpected {extra[:5]}"
        )
    for k, v in expected.items():
        if tuple(tensors[k].shape) != tuple(v.shape):
            raise CheckpointError(
                f"weights in {weights_path} do not match the config: {k} has shape "
                f"{tuple(tensors[k].shape)}, the config says {tuple(v.shape)}"
            )
        if not torch.isfinite(tensors[k].double()).all():
            raise CheckpointError(f"weights in {weights_path} hold non-finite values in {k}")
    float_dtypes = {t.dtype for t in tensors.values() if t.is_floating_point()}
    if len(float_dtypes) == 1:
        model = model.to(float_dtypes.pop())
    model.load_state_dict(tensors)
    return model.to(map_location).eval()
