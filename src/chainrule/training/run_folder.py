"""The run folder: every file of a training run is written and read here, and nowhere else.

* ``config.json``: everything needed to rebuild the run (model, options, data, training);
  written by :meth:`RunFolder.write_config`, read by :func:`read_run_config`;
* ``metrics.jsonl``: one line per epoch (train and valid NLL, time, learning rate);
* ``model.safetensors`` + ``model.json``: the best model (a checkpoint ``chainrule.load`` reads);
* ``state.safetensors`` (+ ``state.json``, a readable copy of its counters): the training
  state: model, Adam's moments, the epoch and the step within it, the running train loss, the
  random-number state and the data order of the current epoch (:func:`save_state`,
  :func:`load_state`, :func:`read_state`, :func:`read_counters`). The counters travel *inside*
  ``state.safetensors`` (its metadata), so weights and counters never come from two moments;
* ``samples.png``, ``curve.png``, ``result.json`` at the end.

Every file is written atomically (temporary file, flush, fsync, rename). Before a run starts,
:func:`preflight_run_folder` (changes nothing; before any data is loaded) and
:func:`check_run_folder` (creates the folder, checks room, applies ``--overwrite``) refuse a
folder that already holds another run, is a file, cannot be written or lacks disk space.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoint import (
    CheckpointError,
    atomic_write_bytes,
    atomic_write_json,
    load_tensors,
    read_metadata,
    save,
    save_tensors,
)
from .config import TrainConfig
from .errors import TrainingError

STATE_FORMAT = "chainrule-train-state/2"

#: the files of a run folder (what --overwrite replaces; what makes a folder "hold a run")
RUN_FILES = (
    "config.json",
    "state.safetensors",
    "state.json",
    "metrics.jsonl",
    "model.safetensors",
    "model.json",
    "result.json",
    "samples.png",
    "curve.png",
)


# ---------------------------------------------------------------------- config.json
@dataclass
class RunConfig:
    """What ``config.json`` says of a run: enough to rebuild its model, data and trainer."""

    model: str  # the model's name (chainrule.build)
    options: dict  # the model's config fields
    data: str  # the data set's name (chainrule.data.load_dataset)
    data_dir: str | None  # where the data was read from (None: the default)
    levels: int | None  # the model's levels (None: real-valued)
    train: TrainConfig
    raw: dict  # the whole file


def read_run_config(run: str | Path) -> RunConfig:
    """Read ``run/config.json``; TrainingError (one line) when the folder or file is missing,
    is not JSON or is not a chainrule run config."""
    run = Path(run)
    path = run / "config.json"
    if not run.is_dir():
        raise TrainingError(f"cannot resume: {run} is not a folder (is it a run folder?)")
    if not path.is_file():
        raise TrainingError(f"cannot resume: {path} not found (is {run} a run folder?)")
    try:
        raw = json.loads(path.read_text())
        if not isinstance(raw, dict):
            raise TypeError(f"a JSON {type(raw).__name__}, not an object")
        missing = [k for k in ("model", "options", "data", "levels", "train") if k not in raw]
        if missing:
            raise KeyError(", ".join(missing))
        options, train = raw["options"], raw["train"]
        if not isinstance(options, dict) or not isinstance(train, dict):
            raise TypeError("'options' and 'train' must be objects")
        cfg = RunConfig(
            model=str(raw["model"]),
            options=dict(options),
            data=str(raw["data"]),
            data_dir=raw.get("data_dir"),
            levels=raw["levels"],
            train=TrainConfig(**train),
            raw=raw,
        )
    except KeyError as e:
        raise TrainingError(
            f"cannot resume: {path} is not a chainrule run config (it lacks {e.args[0]})"
        ) from None
    except (OSError, ValueError, TypeError, UnicodeDecodeError) as e:  # JSONDecodeError too
        why = " ".join(str(e).split())
        raise TrainingError(
            f"cannot resume: {path} is not a chainrule run config ({why})"
        ) from None
    return cfg


# ---------------------------------------------------------------------- state files
def _optimizer_to_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"optim.{idx}.{k}"] = v
            else:
                scalars[f"{idx}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _optimizer_from_tensors(opt: torch.optim.Optimizer, tensors: dict, meta: dict) -> None:
    params = [p for g in opt.param_groups for p in g["params"]]
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        if key.startswith("optim."):
            _, idx, k = key.split(".", 2)
            i = int(idx)
            if not 0 <= i < len(params):
                raise ValueError(f"optimizer state for parameter {i}, the model has {len(params)}")
            if k in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq") and v.shape != params[i].shape:
                raise ValueError(
                    f"optimizer {k} of parameter {i} has shape {tuple(v.shape)}, "
                    f"the parameter {tuple(params[i].shape)}"
                )
            state.setdefault(i, {})[k] = v
    for key, v in meta.get("scalars", {}).items():
        idx, k = key.split(".", 1)
        state.setdefault(int(idx), {})[k] = v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_state(
    run: Path,
    model: nn.Module,
    opt: torch.optim.Optimizer,
    counters: dict,
    order: torch.Tensor | None = None,
) -> None:
    """Write the full training state atomically: one safetensors file holding the model,
    Adam's moments, the random-number state, the current epoch's data order and (in its
    metadata) the counters; ``state.json`` is a readable copy of the counters.

    Refuses (TrainingError) to overwrite the last good state with non-finite weights.
    """
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    for k, v in tensors.items():
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise TrainingError(
                f"the weights became non-finite ({k[len('model.') :]}) at epoch {counters['epoch'] + 1}, "
                f"step {counters['step']}; training stopped and the last good checkpoint is kept. "
                f"Try a smaller --lr or --grad-clip"
            )
    opt_tensors, opt_meta = _optimizer_to_tensors(opt)
    tensors.update(opt_tensors)
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    if order is not None:
        tensors["data.order"] = order.to(torch.int64)
    meta = {"format": STATE_FORMAT, **counters, "optimizer": opt_meta}
    save_tensors(run / "state.safetensors", tensors, metadata={"chainrule_state": json.dumps(meta)})
    atomic_write_json(run / "state.json", meta)


def read_state(run: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """The counters and tensors of ``run/state.safetensors``; TrainingError when unusable."""
    path = run / "state.safetensors"
    if not path.is_file():
        raise TrainingError(f"cannot resume: {path} is missing (the run never started training)")
    try:
        meta_text = read_metadata(path).get("chainrule_state")
        tensors = load_tensors(path)
    except CheckpointError as e:
        raise TrainingError(f"cannot resume: {e}") from None
    if meta_text is None:  # an older state file: counters only in state.json
        try:
            meta = json.loads((run / "state.json").read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise TrainingError(f"cannot resume: {run / 'state.json'} is unreadable: {e}") from None
    else:
        try:
            meta = json.loads(meta_text)
        except json.JSONDecodeError as e:
            raise TrainingError(f"cannot resume: the counters in {path} are corrupt: {e}") from None
    if isinstance(meta, dict) and meta.get("format", STATE_FORMAT) != STATE_FORMAT:
        raise TrainingError(
            f"cannot resume: {path} has format {meta.get('format')!r}, this chainrule reads {STATE_FORMAT!r}"
        )
    need = ("epoch", "best_valid", "bad_epochs", "optimizer")
    if not isinstance(meta, dict) or not all(k in meta for k in need):
        raise TrainingError(f"cannot resume: {path} lacks the training counters {need}")
    for k, v in tensors.items():
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise TrainingError(f"cannot resume: {path} holds non-finite values in {k}")
    return meta, tensors


def load_state(
    run: Path, model: nn.Module, opt: torch.optim.Optimizer
) -> tuple[dict, torch.Tensor | None]:
    """Restore model, optimizer and random state from ``run``; return (counters, data order)."""
    meta, tensors = read_state(run)
    model_sd = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    try:
        model.load_state_dict(model_sd)
        _optimizer_from_tensors(opt, tensors, meta["optimizer"])
    except (RuntimeError, KeyError, ValueError, TypeError) as e:
        raise TrainingError(
            f"cannot resume from {run}: its state does not match this model: {_first_reason(e)}"
        ) from None
    if "rng.torch" in tensors:
        torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    meta.setdefault("step", 0)
    return meta, tensors.get("data.order")


def _first_reason(e: BaseException) -> str:
    """The informative part of a (often multi-line) error, on one line: load_state_dict's
    message starts with a heading ("Error(s) in loading state_dict for NADE:") whose reasons
    follow on the next lines."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    if not lines:
        return type(e).__name__
    if len(lines) > 1 and lines[0].endswith(":"):
        more = f" (and {len(lines) - 2} more)" if len(lines) > 2 else ""
        return f"{lines[1]}{more}"
    return lines[0]


def read_counters(run: Path) -> dict[str, Any] | None:
    """The counters of ``run``'s training state (epoch, step, seconds, best epoch, why it
    stopped, ...) read from the state file's header alone; None when there is no state."""
    path = Path(run) / "state.safetensors"
    if not path.is_file():
        return None
    try:
        text = read_metadata(path).get("chainrule_state")
        meta = json.loads(text) if text else json.loads((Path(run) / "state.json").read_text())
    except (CheckpointError, OSError, json.JSONDecodeError) as e:
        raise TrainingError(f"cannot resume: {path} is unreadable: {e}") from None
    if not isinstance(meta, dict):
        raise TrainingError(f"cannot resume: {path} lacks the training counters")
    return meta


# ---------------------------------------------------------------------- folder checks
def checkpoint_bytes(model: nn.Module) -> int:
    """Rough bytes one round of checkpoints needs: best model + state (model, 2 moments)."""
    n = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    return 4 * n + (1 << 20)


def preflight_run_folder(out: Path, resume: bool, *, overwrite: bool = False) -> list[str]:
    """The checks of a run folder that change nothing on disk (run before any data is loaded):
    not a file, not below a file, names the file system accepts, and no run in it unless
    ``resume`` or ``overwrite``. Returns the run files it holds."""
    import errno
    import os

    from ..outputs import name_max

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise TrainingError(f"run folder {out} is a file, not a folder; choose another --out")
    for up in out.parents:
        if up.exists():
            if not up.is_dir():
                raise TrainingError(f"cannot make run folder {out}: {up} is a file, not a folder")
            limit = name_max(up)
            for part in out.relative_to(up).parts if up != Path(".") else out.parts:
                if len(os.fsencode(part)) > limit:
                    raise TrainingError(
                        f"cannot make run folder {str(out)[:60]}...: the name "
                        f"{part[:24]}... is too long ({len(os.fsencode(part))} bytes; "
                        f"this file system allows {limit})"
                    )
            if not os.access(up, os.W_OK) and not out.exists():
                raise TrainingError(
                    f"cannot make run folder {out}: {os.strerror(errno.EACCES)} in {up}"
                )
            break
    held = [f for f in RUN_FILES if (out / f).exists()] if out.is_dir() else []
    if not resume and held and not overwrite:
        kind = (
            "a finished run (a trained model)"
            if (out / "result.json").exists()
            else "an unfinished run (its training state is saved)"
            if (out / "state.safetensors").exists()
            else "a run"
        )
        raise TrainingError(
            f"{out} already holds {kind}; continue it with --resume {out}, "
            f"replace it with --overwrite, or choose another --out"
        )
    return held


def check_run_folder(
    out: Path, resume: bool, need_bytes: int = 0, *, overwrite: bool = False
) -> None:
    """Before training starts: refuse to overwrite another run, finished or not (unless
    ``overwrite``, which then removes that run's files); check that the folder can be written
    and that the disk has room for the checkpoints (twice, for the atomic renames)."""
    held = preflight_run_folder(out, resume, overwrite=overwrite)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_bytes(b"x" * 4096)
        probe.unlink()
    except OSError as e:
        raise TrainingError(f"run folder {out} is not writable: {e.strerror or e}") from None
    if resume:  # temporary files of writes that a kill interrupted (the old files are intact)
        for stale in out.glob(".*.tmp"):
            stale.unlink(missing_ok=True)
    free = shutil.disk_usage(out).free
    if need_bytes and free < 2 * need_bytes:
        raise TrainingError(
            f"not enough free disk space for the run folder {out}: {free / 2**20:.1f} MiB free, "
            f"its checkpoints need about {2 * need_bytes / 2**20:.1f} MiB"
        )
    if not resume and held:  # --overwrite: the old run goes only once the new one can start
        for f in held:
            (out / f).unlink(missing_ok=True)


# ---------------------------------------------------------------------- metrics
def write_metrics(run: Path, rows: list[dict], append: bool) -> None:
    path = run / "metrics.jsonl"
    old = path.read_text() if append and path.exists() else ""
    atomic_write_bytes(path, (old + "".join(json.dumps(r) + "\n" for r in rows)).encode())


def read_metrics(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    if not path.exists():
        return []
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except json.JSONDecodeError as e:
        raise TrainingError(f"cannot resume: {path} is corrupt: {e}") from None


# ---------------------------------------------------------------------- the folder, as an object
class RunFolder:
    """The files of one run folder, for the process that writes them (rank 0).

    A thin object over the functions of this module: the trainer holds one and never builds a
    path of the folder itself.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    def check(self, resume: bool, need_bytes: int = 0, *, overwrite: bool = False) -> None:
        check_run_folder(self.path, resume, need_bytes, overwrite=overwrite)

    def write_config(
        self, model, cfg: TrainConfig, data: str, processes: int, extra: dict | None = None
    ) -> None:
        """``config.json``: versions, ``extra`` (the CLI's data, data_dir, command), the model
        (name, options, shape, levels), the data and the trainer's options."""
        from .. import __version__

        info = {
            "chainrule_version": __version__,
            "torch_version": torch.__version__,
            **(extra or {}),
            "event_shape": list(model.event_shape),
            "levels": model.levels,
            "model": model.name,
            "options": dataclasses.asdict(model.config),
            "data": (extra or {}).get("data", data),
            "train": dataclasses.asdict(cfg),
            "processes": processes,
        }
        atomic_write_json(self.path / "config.json", info)

    def read_config(self) -> RunConfig:
        return read_run_config(self.path)

    def save_state(self, model, opt, counters: dict, order: torch.Tensor | None = None) -> None:
        save_state(self.path, model, opt, counters, order)

    def load_state(self, model, opt) -> tuple[dict, torch.Tensor | None]:
        return load_state(self.path, model, opt)

    def read_counters(self) -> dict[str, Any] | None:
        return read_counters(self.path)

    def save_model(self, model) -> None:
        """The best model so far: ``model.safetensors`` + ``model.json``."""
        save(model, self.path)

    def has_model(self) -> bool:
        return (self.path / "model.safetensors").exists()

    def load_model_state(self, device) -> dict[str, torch.Tensor]:
        """The weights of the best model saved so far."""
        from ..checkpoint import load

        return load(self.path, map_location=device).state_dict()

    def write_metrics(self, rows: list[dict], append: bool) -> None:
        write_metrics(self.path, rows, append)

    def read_metrics(self) -> list[dict]:
        return read_metrics(self.path)

    def write_result(self, result: dict) -> None:
        atomic_write_json(self.path / "result.json", result)

    def write_pictures(self, model, splits, metrics: list[dict], cfg: TrainConfig) -> list[str]:
        """``samples.png`` (``cfg.num_samples`` samples, seeded) and ``curve.png``."""
        from ..plots import sample_grid, training_curve

        files = []
        g = torch.Generator().manual_seed(cfg.seed)
        samples = model.sample(cfg.num_samples, generator=g)
        files.append(str(sample_grid(samples, model.levels, self.path / "samples.png")))
        if metrics:
            import textwrap

            caveat = getattr(splits, "caveat", "")
            title = f"{model.name} on {splits.name}" + (
                "\n" + textwrap.fill(caveat, 80) if caveat else ""
            )
            files.append(str(training_curve(metrics, self.path / "curve.png", title)))
        return files
