"""Pretrained weights shipped in the package: ``chainrule.load("pretrained:NAME")`` and
``--checkpoint pretrained:NAME`` for every command.

This folder holds, per NAME, ``NAME.safetensors`` + ``NAME.json`` (a checkpoint, as
:func:`chainrule.save` writes it) and one registry, ``index.json``: per NAME the recipe that
made it (:mod:`chainrule.recipes`), the data, the test NLL, the sha256 of both files, the date
and the command. The weights' sha256 is checked before they are loaded: a changed or corrupted
file is refused in one line.

Adding the weights of a finished run (one command; the run folder's model.safetensors and
model.json are copied, its result.json and config.json give the figures)::

    python -m chainrule.pretrained add runs/nade-binarized-mnist --recipe nade-binarized-mnist

``python -m chainrule.pretrained list`` (or ``chainrule pretrained``) lists what is shipped;
``python -m chainrule.pretrained verify`` checks every file against the registry.
The shipped files are kept under :data:`MAX_TOTAL_BYTES` in all.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from chainrule.checkpoint import CheckpointError

PREFIX = "pretrained:"
FORMAT = "chainrule-pretrained/1"
#: the most the shipped weights may weigh, all files together
MAX_TOTAL_BYTES = 15 * 1024 * 1024
#: the folder that holds the shipped files (tests point it elsewhere)
DIRECTORY = Path(__file__).resolve().parent


class PretrainedError(CheckpointError):
    """An unknown name, or a shipped file that does not match the registry."""


def _dir() -> Path:
    return Path(DIRECTORY)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def index() -> dict[str, dict[str, Any]]:
    """NAME -> registry entry (empty where nothing is shipped)."""
    path = _dir() / "index.json"
    if not path.is_file():
        return {}
    try:
        doc = json.loads(path.read_text())
        return dict(doc["weights"])
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise PretrainedError(f"{path} is not a chainrule pretrained registry ({e})") from None


def names() -> list[str]:
    return sorted(index())


def strip(name: str) -> str:
    """``pretrained:NAME`` -> ``NAME``."""
    return name[len(PREFIX) :] if name.startswith(PREFIX) else name


def entry(name: str) -> dict[str, Any]:
    """The registry entry of NAME (or pretrained:NAME); one line listing the names if unknown."""
    key = strip(str(name))
    reg = index()
    if key not in reg:
        shown = ", ".join(sorted(reg)) or "(none shipped)"
        raise PretrainedError(f"no pretrained weights named {key!r}; available: {shown}")
    return reg[key]


def resolve(name: str) -> Path:
    """The verified weights file of NAME: both files present and matching their sha256."""
    key = strip(str(name))
    e = entry(key)
    weights, spec = _dir() / f"{key}.safetensors", _dir() / f"{key}.json"
    for path, field in ((weights, "sha256"), (spec, "json_sha256")):
        if not path.is_file():
            raise PretrainedError(f"{PREFIX}{key}: {path} is missing (a broken installation?)")
        want = e.get(field)
        if want and sha256(path) != want:
            raise PretrainedError(
                f"{PREFIX}{key}: {path.name} does not match its sha256 in index.json "
                f"(corrupted or changed; reinstall chainrule)"
            )
    return weights


def total_bytes(directory: Path | None = None) -> int:
    d = Path(directory) if directory is not None else _dir()
    return sum(p.stat().st_size for p in d.iterdir() if p.suffix in (".safetensors", ".json"))


def add(
    run_dir: str | os.PathLike,
    recipe: str,
    name: str | None = None,
    *,
    directory: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Ship the best model of a finished run as ``pretrained:NAME`` (NAME: the recipe's name).

    Copies ``RUN_DIR/model.safetensors`` and ``model.json`` here, records the recipe, data,
    test NLL (``result.json``), sha256, date and command (``config.json``) in ``index.json``.
    Refuses a run without result.json (unfinished), a recipe that does not exist, and a total
    over :data:`MAX_TOTAL_BYTES`. Returns the new entry.
    """
    from chainrule import recipes
    from chainrule.checkpoint import atomic_write_bytes, atomic_write_json, load

    recipes.recipe(recipe)  # an unknown recipe: ValueError naming the recipes
    run = Path(run_dir)
    name = name or recipe
    d = Path(directory) if directory is not None else _dir()
    for needed in ("model.safetensors", "model.json", "result.json", "config.json"):
        if not (run / needed).is_file():
            raise PretrainedError(f"{run}/{needed} not found (a finished chainrule run folder?)")
    load(run)  # the weights load (shapes, finite values) before they are shipped
    result = json.loads((run / "result.json").read_text())
    config = json.loads((run / "config.json").read_text())
    weights = (run / "model.safetensors").read_bytes()
    spec = (run / "model.json").read_bytes()
    old = sum(
        p.stat().st_size
        for p in d.iterdir()
        if p.suffix in (".safetensors", ".json") and p.stem != name and p.name != "index.json"
    )
    if old + len(weights) + len(spec) > MAX_TOTAL_BYTES:
        raise PretrainedError(
            f"{name}: {len(weights) / 2**20:.1f} MiB more would take the shipped weights over "
            f"{MAX_TOTAL_BYTES / 2**20:.0f} MiB"
        )
    atomic_write_bytes(d / f"{name}.safetensors", weights)
    atomic_write_bytes(d / f"{name}.json", spec)
    e = {
        "recipe": recipe,
        "model": config.get("model"),
        "data": config.get("data"),
        "test_nll_nats": result.get("test_nll_nats"),
        "test_nll_stderr": result.get("test_nll_stderr"),
        "test_bits_per_dim": result.get("test_bits_per_dim"),
        "num_parameters": result.get("num_parameters"),
        "epochs": result.get("epochs"),
        "seconds": result.get("seconds"),
        "stop_reason": result.get("stop_reason"),
        "sha256": hashlib.sha256(weights).hexdigest(),
        "json_sha256": hashlib.sha256(spec).hexdigest(),
        "bytes": len(weights),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": config.get("command"),
        "torch_version": config.get("torch_version"),
    }
    path = d / "index.json"
    reg: dict[str, Any] = {}
    if path.is_file():
        reg = json.loads(path.read_text()).get("weights", {})
    reg[name] = e
    atomic_write_json(path, {"format": FORMAT, "weights": dict(sorted(reg.items()))})
    return e


def describe() -> str:
    """The shipped weights, one line each."""
    reg = index()
    if not reg:
        return "no pretrained weights shipped"
    lines = []
    for key, e in sorted(reg.items()):
        nll = e.get("test_nll_nats")
        lines.append(
            f"{PREFIX}{key:36s} {e.get('model', '?'):16s} {e.get('data', '?'):16s} "
            + (f"test NLL {nll:.3f} nats" if nll is not None else "test NLL not recorded")
            + f"  {e.get('bytes', 0) / 1024:.0f} KiB  (recipe {e.get('recipe')})"
        )
    return "\n".join(lines)
