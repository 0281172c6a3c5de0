"""One model-agnostic trainer: it knows nothing of a model but ``-log_prob``.

It minimises the mean negative log-likelihood (nats per image) with Adam, evaluates the
validation NLL after every epoch, keeps the best model, stops early when the validation NLL has
not improved for ``patience`` epochs, and finally reports the test NLL of the best model.

A run folder holds:

* ``config.json``: everything needed to rebuild the run (model, options, data, training);
* ``metrics.jsonl``: one line per epoch (train and valid NLL, time, learning rate);
* ``model.safetensors`` + ``model.json``: the best model (a checkpoint ``chainrule.load`` reads);
* ``state.safetensors`` (+ ``state.json``, a readable copy of its counters): the training
  state: model, Adam's moments, the epoch and the step within it, the running train loss, the
  random-number state and the data order of the current epoch. It is written at the start, at
  every epoch end, and within an epoch every ``checkpoint_every`` steps and at least every
  ``checkpoint_minutes``; ``--resume`` continues from it *exactly*, after a kill at any moment;
* ``samples.png``, ``curve.png``, ``result.json`` at the end.

Determinism: the data order and dynamic binarization of epoch ``e`` are drawn from generators
seeded by ``(seed, e)`` and the dequantization noise of step ``s`` by ``(seed, e, s)``, so a
resumed run sees the same batches as an uninterrupted one. Every file is written atomically
(temporary file, flush, fsync, rename), and the counters travel *inside* ``state.safetensors``
(its metadata), so weights and counters can never come from two different moments.

Several processes (``torchrun``): see :mod:`chainrule.distributed`. ``batch_size`` is the
*global* batch, split over the processes, so one process and N processes take the same steps.

Devices: ``device`` auto/cpu/cuda; ``bf16`` runs the training forward and backward under bf16
autocast (meant for CUDA; the weights, the optimizer and every reported NLL stay in the model's
dtype). Checkpoints are written from CPU copies and load on any device.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import __version__ as _version  # written into config.json
from . import distributed
from .checkpoint import (
    CheckpointError,
    atomic_write_bytes,
    atomic_write_json,
    load_tensors,
    read_metadata,
    save,
    save_tensors,
)
from .data import Splits, dynamic_binarize
from .evaluate import (
    bits_per_dim,
    check_compatible,
    nll_offset,
    per_image_nll,
    summarize,
    to_model_input,
)
from .models.base import AutoregressiveModel

STATE_FORMAT = "chainrule-train-state/2"


class TrainingError(RuntimeError):
    """Training cannot go on (non-finite loss, unusable run folder); one clear message."""


class TrainingInterrupted(Exception):
    """Ctrl-C (SIGINT) or SIGTERM stopped training; the state was saved where it stopped."""

    def __init__(self, run: Path | None, where: str, signum: int):
        self.run, self.where, self.signum = run, where, signum
        super().__init__(f"interrupted at {where}")


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


@dataclass
class TrainConfig:
    """Options of the trainer (the CLI's ``chainrule train`` flags)."""

    epochs: int = 20
    batch_size: int = 64  # the global batch: split over the processes under torchrun
    lr: float = 1e-3
    seed: int = 0
    patience: int = 5  # epochs without a better valid NLL before stopping; 0 never stops early
    weight_decay: float = 0.0
    grad_clip: float = 0.0  # max gradient norm; 0 turns clipping off
    #: "constant"; "cosine" (decays to 0 over `epochs`); "cosine-time" (decays to 0 over the
    #: time budget, step by step: the run anneals fully whatever the machine's speed)
    lr_schedule: str = "constant"
    eval_batch_size: int = 256
    device: str = "auto"
    closed_form: bool = False  # fit by counting (models with a `fit` method) instead of Adam
    max_train: int = 0  # use only the first N training images (0: all)
    time_budget_min: float = 0.0  # stop after this many minutes of training (0: no budget)
    num_samples: int = 64  # images drawn for samples.png
    progress: bool = True
    checkpoint_every: int = 0  # also save the training state every N steps (0: not by steps)
    checkpoint_minutes: float = 5.0  # ... and at least every M minutes within an epoch (0: off)
    bf16: bool = False  # bf16 autocast for the training forward/backward (CUDA)
    dtype: str = ""  # "float32" or "float64": cast the model first ("": keep its dtype)
    init_output_bias: bool = False  # fresh runs: output biases at the data's log-frequencies

    def validate(self) -> None:
        for name in ("epochs", "batch_size", "eval_batch_size", "num_samples", "checkpoint_every"):
            v = getattr(self, name)
            low = 0 if name == "checkpoint_every" else 1
            if not isinstance(v, int) or isinstance(v, bool) or v < low:
                kind = "an int >= 0" if low == 0 else "a positive int"
                raise ValueError(f"{name} must be {kind}, got {v!r}")
        for name in ("lr", "weight_decay", "grad_clip", "time_budget_min", "checkpoint_minutes"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"{name} must be a finite number, got {v!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be a positive number, got {self.lr!r}")
        for name in ("patience", "max_train"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError(f"{name} must be an int >= 0, got {v!r}")
        for name in ("weight_decay", "grad_clip", "time_budget_min", "checkpoint_minutes"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise ValueError(f"seed must be an int >= 0, got {self.seed!r}")
        if self.lr_schedule not in ("constant", "cosine", "cosine-time"):
            raise ValueError(
                f"lr_schedule must be 'constant', 'cosine' or 'cosine-time', got {self.lr_schedule!r}"
            )
        if self.lr_schedule == "cosine-time" and not self.time_budget_min:
            raise ValueError("lr_schedule cosine-time needs a time budget (--time-budget MIN)")
        if not isinstance(self.device, str) or (
            self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:")
        ):
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")
        if self.dtype not in ("", "float32", "float64"):
            raise ValueError(f"dtype must be float32 or float64, got {self.dtype!r}")


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when present, else CPU; ``cuda`` without a GPU is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but no CUDA device is available")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}") from None


def _epoch_generator(seed: int, epoch: int, stream: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch * 101 + stream)


def _step_generator(seed: int, epoch: int, step: int) -> torch.Generator:
    """Dequantization noise of one global batch: depends on (seed, epoch, step) only."""
    return torch.Generator().manual_seed(((seed * 1_000_003 + epoch) * 1_000_033 + step) * 7 + 3)


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


def _checkpoint_bytes(model: nn.Module) -> int:
    """Rough bytes one round of checkpoints needs: best model + state (model, 2 moments)."""
    n = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    return 4 * n + (1 << 20)


def preflight_run_folder(out: Path, resume: bool, *, overwrite: bool = False) -> list[str]:
    """The checks of a run folder that change nothing on disk (run before any data is loaded):
    not a file, not below a file, names the file system accepts, and no run in it unless
    ``resume`` or ``overwrite``. Returns the run files it holds."""
    import errno
    import os

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise TrainingError(f"run folder {out} is a file, not a folder; choose another --out")
    for up in out.parents:
        if up.exists():
            if not up.is_dir():
                raise TrainingError(f"cannot make run folder {out}: {up} is a file, not a folder")
            try:
                limit = os.pathconf(up, "PC_NAME_MAX")
            except (OSError, ValueError):
                limit = 255
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


def read_counters(run: Path) -> dict | None:
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


# ---------------------------------------------------------------------- the loop
def _lr_at(cfg: TrainConfig, epoch: int) -> float:
    if cfg.lr_schedule == "cosine-time":
        return cfg.lr  # set step by step from the time budget
    if cfg.lr_schedule == "cosine" and cfg.epochs > 0:
        return 0.5 * cfg.lr * (1 + math.cos(math.pi * epoch / cfg.epochs))
    return cfg.lr


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class _NLLSum(nn.Module):
    """``-sum log p(x)`` as a module's forward, so that DistributedDataParallel can wrap it."""

    def __init__(self, model: AutoregressiveModel):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return -self.model.log_prob_unchecked(x).sum()


def _summarize(
    model, x, levels: int, batch_size: int, d: distributed.Dist, device, progress: bool = False
) -> dict:
    """:func:`summarize`, with the images split over the processes and the sums reduced."""
    if not d.enabled:
        return summarize(model, x, levels, batch_size=batch_size, progress=progress)
    shard = x[d.rank :: d.world]
    if len(shard):
        nll = per_image_nll(model, shard, levels, batch_size=batch_size)
        local = [nll.sum().item(), (nll * nll).sum().item(), float(len(nll))]
    else:
        local = [0.0, 0.0, 0.0]
    s, s2, n = distributed.all_sum(d, local, device)
    mean = s / n
    var = max(s2 - n * mean * mean, 0.0) / (n - 1) if n > 1 else 0.0
    return {
        "nll_nats": mean,
        "nll_stderr": math.sqrt(var / n),
        "bits_per_dim": bits_per_dim(mean, model.dim),
        "n": int(n),
        "dequantized": model.levels is None,
    }


def train(
    model: AutoregressiveModel,
    splits: Splits,
    cfg: TrainConfig,
    out: str | Path | None = None,
    *,
    resume: bool = False,
    run_info: dict | None = None,
    overwrite: bool = False,
    more_minutes: float | None = None,
) -> dict:
    """Train ``model`` on ``splits``; return the result (best valid and test NLL, ...).

    Under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) every process calls this with
    the same arguments; they form one process group (gloo on CPU, nccl on CUDA), share the
    work, and only rank 0 writes to ``out``.

    Args:
        model: any chainrule model.
        splits: the data (uint8 images at ``splits.levels``).
        cfg: trainer options.
        out: the run folder (None: keep nothing on disk).
        resume: continue the run in ``out`` from its last saved state (exactly). A run that
            had stopped early is continued with its patience re-armed; one that had stopped at
            its time budget is continued without it (unless ``more_minutes``).
        run_info: extra fields for ``config.json`` (model name and options, data name, ...).
        overwrite: replace a run that ``out`` already holds (else that is refused).
        more_minutes: on a resume, train at most this many more minutes.

    Returns:
        dict with ``test_nll_nats``, ``test_bits_per_dim``, ``best_valid_nll``, ``best_epoch``,
        ``stop_reason``, ``epochs``, ``seconds`` (both over the whole run, resumes included),
        ``num_parameters`` and the paths of what was written.

    Raises:
        TrainingInterrupted: SIGINT or SIGTERM arrived; the state was saved where it stopped.
    """
    cfg.validate()
    if not isinstance(model, AutoregressiveModel):
        raise ValueError(f"model must be a chainrule model, got {type(model).__name__}")
    check_compatible(model, splits.event_shape, splits.levels, splits.name)
    _check_values(splits)  # once: the training step then skips the per-batch checks
    if resume and out is None:
        raise ValueError("resume needs a run folder")
    device = distributed.process_device(resolve_device(cfg.device))
    d = distributed.setup(device)
    run = Path(out) if out is not None else None
    result = _train(model, splits, cfg, run, resume, run_info, device, d, overwrite, more_minutes)
    distributed.barrier(d)  # every process returns once rank 0 has written the run folder
    return result


def _check_values(splits: Splits) -> None:
    """Every image of every split holds levels ``0..levels-1`` (checked once, on the host)."""
    for name in ("train", "valid", "test"):
        x = splits.split(name)
        if x.is_floating_point() or x.is_complex():
            raise ValueError(f"{splits.name} {name}: images must be integer levels, got {x.dtype}")
        if len(x) and (int(x.min()) < 0 or int(x.max()) >= splits.levels):
            raise ValueError(
                f"{splits.name} {name}: values must lie in 0..{splits.levels - 1}, "
                f"got {int(x.min())}..{int(x.max())}"
            )


def train_subset(n_total: int, max_train: int) -> torch.Tensor:
    """The training images a run with ``--max-train`` uses: drawn at random with seed 0 (data
    sets are often sorted by class), the same subset whatever the run's seed."""
    from .outputs import random_subset

    return random_subset(n_total, max_train or None, seed=0)


def _train(
    model,
    splits: Splits,
    cfg: TrainConfig,
    run: Path | None,
    resume: bool,
    run_info,
    device,
    d,
    overwrite: bool = False,
    more_minutes: float | None = None,
) -> dict:
    if cfg.dtype:
        model.to(getattr(torch, cfg.dtype))
    model.to(device)
    # the run folder: checked by rank 0, before any training; every process learns the outcome
    err: TrainingError | None = None
    if run is not None and d.is_main:
        try:
            need = 0 if cfg.closed_form else _checkpoint_bytes(model)
            check_run_folder(run, resume, need, overwrite=overwrite)
        except TrainingError as e:
            err = e
    if distributed.agree(d, err is not None, device):
        raise err or TrainingError("rank 0 cannot use the run folder (see its message); stopped")
    writer = run if d.is_main else None  # only rank 0 writes
    torch.manual_seed(cfg.seed)
    say = _log if cfg.progress and d.is_main else (lambda msg: None)

    subset = train_subset(len(splits.train), cfg.max_train) if cfg.max_train else None
    train_x = splits.train[subset] if subset is not None else splits.train
    intensities = splits.train_intensities
    if intensities is not None and subset is not None:
        intensities = intensities[subset]
    if intensities is not None:
        intensities = (intensities, splits.intensity_levels)
    metrics: list[dict] = []
    start = time.perf_counter()

    if writer is not None and not resume:
        info = {
            "chainrule_version": _version,
            "torch_version": torch.__version__,
            **(run_info or {}),
            "event_shape": list(model.event_shape),
            "levels": model.levels,
            "model": model.name,
            "options": dataclasses.asdict(model.config),
            "data": (run_info or {}).get("data", splits.name),
            "train": dataclasses.asdict(cfg),
            "processes": d.world,
        }
        atomic_write_json(writer / "config.json", info)

    def eval_(x, what: str) -> dict:
        return _summarize(
            model, x, splits.levels, cfg.eval_batch_size, d, device, cfg.progress and d.is_main
        )

    stop = {"best_epoch": 1, "stop_reason": "closed form"}
    if cfg.closed_form:
        fit = getattr(model, "fit", None)
        if fit is None:
            raise ValueError(f"model {model.name!r} has no closed-form fit; train it with Adam")
        say(f"fitting {model.name} by counting over {len(train_x)} images")
        fit(train_x.to(device))
        valid = eval_(splits.valid, "valid")
        train_nll = eval_(train_x, "train")["nll_nats"]
        metrics.append(
            {
                "epoch": 1,
                "train_nll": train_nll,
                "valid_nll": valid["nll_nats"],
                "seconds": time.perf_counter() - start,
            }
        )
        best_valid, epochs_done = valid["nll_nats"], 1
        if writer is not None:
            save(model, writer)
            _write_metrics(writer, metrics, append=False)
    else:
        if cfg.init_output_bias and not resume:
            hook = getattr(model, "init_output_bias", None)
            if hook is None:
                raise ValueError(f"model {model.name!r} has no output-bias initialisation")
            hook(train_x.to(device))
        best_valid, epochs_done, stop, start = _fit(
            model,
            splits,
            cfg,
            run,
            writer,
            resume,
            train_x,
            intensities,
            metrics,
            start,
            device,
            d,
            more_minutes,
        )

    say(
        f"test: evaluating the best model (epoch {stop['best_epoch']}) on {len(splits.test)} images"
    )
    test = eval_(splits.test, "test")
    result = {
        "model": model.name,
        "data": splits.name,
        "data_caveat": getattr(splits, "caveat", "") or "",
        "n_train": len(train_x),
        "num_parameters": model.num_parameters(),
        "epochs": epochs_done,
        "best_epoch": stop["best_epoch"],
        "stop_reason": stop["stop_reason"],
        "best_valid_nll": best_valid,
        "test_nll_nats": test["nll_nats"],
        "test_nll_stderr": test["nll_stderr"],
        "test_bits_per_dim": test["bits_per_dim"],
        "dequantized": test["dequantized"],
        "device": str(device),
        "threads": torch.get_num_threads(),
        "processes": d.world,
    }
    if writer is not None:
        say(f"drawing {cfg.num_samples} samples for samples.png")
        result["files"] = _write_pictures(model, splits, metrics, writer, cfg)
    result["seconds"] = round(time.perf_counter() - start, 2)  # the whole run, resumes included
    if writer is not None:
        atomic_write_json(writer / "result.json", result)
    return result


class _StopSignal:
    """SIGINT / SIGTERM during training: finish the current step, save the state, stop.

    A second Ctrl-C stops at once (the last saved state is kept). Installed only in the main
    thread (signal handlers can be set nowhere else); the previous handlers come back after.
    """

    def __init__(self, announce: bool) -> None:
        self.signum = 0
        self.announce = announce
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _StopSignal:
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        import signal

        for sig, old in self._old.items():
            signal.signal(sig, old)

    def _handle(self, signum, frame) -> None:
        import signal

        if self.signum and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        if self.announce:
            _log(
                "\nstopping after this step and saving the training state "
                "(Ctrl-C again stops at once, keeping the last saved state)"
            )


def _fit(
    model,
    splits,
    cfg,
    run,
    writer,
    resume,
    train_x,
    intensities,
    metrics,
    start,
    device,
    d,
    more_minutes=None,
):
    """Adam over the epochs, with step-level checkpoints.

    Returns (best valid NLL, epochs done, {"best_epoch", "stop_reason"}, start time adjusted
    so that ``now - start`` is the whole run's training time, resumes included)."""
    from .checkpoint import load as load_checkpoint

    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    counters: dict[str, Any] = {
        "epoch": 0,
        "step": 0,
        "best_valid": math.inf,
        "best_epoch": 0,
        "bad_epochs": 0,
        "train_sum": 0.0,
        "train_count": 0,
        "stop_reason": None,
    }
    say = _log if cfg.progress and d.is_main else (lambda msg: None)
    order = None
    best_state: dict[str, torch.Tensor] | None = None
    fingerprint = {"seed": cfg.seed, "batch_size": cfg.batch_size, "n_train": len(train_x)}
    budget = 60 * cfg.time_budget_min if cfg.time_budget_min else None  # seconds of the run
    if resume:
        loaded, order = load_state(run, model, opt)
        for k, v in fingerprint.items():
            if k in loaded and loaded[k] != v:
                raise TrainingError(
                    f"cannot resume {run}: its state was written with {k}={loaded[k]}, this run has {k}={v}"
                )
        counters.update({k: loaded[k] for k in counters if k in loaded})
        done_seconds = float(loaded.get("seconds", 0.0))
        start -= done_seconds
        metrics[:] = [r for r in _read_metrics(run) if r.get("epoch", 0) <= counters["epoch"]]
        if (run / "model.safetensors").exists():
            best_state = load_checkpoint(run, map_location=device).state_dict()
        stopped = counters["stop_reason"]
        if stopped == "early stopping":  # continued on purpose: patience starts again
            counters["bad_epochs"] = 0
        if more_minutes is not None:
            budget = done_seconds + 60 * more_minutes
        elif stopped == "time budget":  # continued on purpose (more epochs): no budget left
            budget = None
        counters["stop_reason"] = None
        distributed.barrier(d)  # everyone has read the state before rank 0 may overwrite it
        where = (
            f"epoch {counters['epoch'] + 1}, step {counters['step']}"
            if counters["step"]
            else f"the end of epoch {counters['epoch']}"
        )
        say(
            f"resuming {run} at {where} after {done_seconds / 60:.1f} min "
            f"(best valid NLL {counters['best_valid']:.3f} at epoch {counters['best_epoch']})"
        )
    elif writer is not None:
        _write_metrics(writer, [], append=False)
        if all(
            torch.isfinite(v).all() for v in model.state_dict().values() if v.is_floating_point()
        ):
            save_state(writer, model, opt, {**counters, **fingerprint, "seconds": 0.0})
        # else: the first loss is non-finite and stops the run with that message
    net = model
    if d.enabled:
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        net = DistributedDataParallel(_NLLSum(model), device_ids=ids)
    offset = nll_offset(model, splits.levels)
    epochs_done = counters["epoch"]

    def over_budget() -> bool:
        return budget is not None and time.perf_counter() - start > budget

    def checkpoint(order_now=None) -> None:
        if writer is not None:
            seconds = time.perf_counter() - start
            save_state(
                writer, model, opt, {**counters, **fingerprint, "seconds": seconds}, order_now
            )

    stop_reason = "epochs"
    with _StopSignal(announce=d.is_main) as signal_flag:
        for epoch in range(counters["epoch"], cfg.epochs):
            if cfg.patience and counters["bad_epochs"] >= cfg.patience:
                stop_reason = "early stopping"
                say(
                    f"early stopping: no better valid NLL in {cfg.patience} epochs; "
                    f"keeping the weights of epoch {counters['best_epoch']}"
                )
                break
            if distributed.broadcast_flag(d, over_budget(), device):
                stop_reason = "time budget"
                say(f"time budget of {budget / 60:g} min reached after {epoch} epochs")
                break
            for group in opt.param_groups:
                group["lr"] = _lr_at(cfg, epoch)

            def step_lr() -> float | None:  # cosine-time: the lr of this moment of the budget
                if cfg.lr_schedule != "cosine-time" or not budget:
                    return None
                frac = min(1.0, (time.perf_counter() - start) / budget)
                return 0.5 * cfg.lr * (1 + math.cos(math.pi * frac))

            train_nll, why, done, n_batches, order_now = _train_epoch(
                model,
                net,
                opt,
                train_x,
                intensities,
                splits.levels,
                cfg,
                epoch,
                device,
                d,
                writer,
                counters,
                fingerprint,
                order if counters["step"] else None,
                start,
                over_budget,
                signal_flag,
                step_lr,
            )
            order = None
            train_nll += offset
            if why == "interrupted":  # mid-epoch: save exactly where it stopped, then stop
                checkpoint(order_now)
                raise TrainingInterrupted(
                    run, f"epoch {epoch + 1}, step {done} of {n_batches}", signal_flag.signum
                )
            valid = _summarize(
                model,
                splits.valid,
                splits.levels,
                cfg.eval_batch_size,
                d,
                device,
                cfg.progress and d.is_main,
            )
            improved = valid["nll_nats"] < counters["best_valid"]
            partial = why == "time budget"  # stopped within the epoch: it continues on resume
            at = round(epoch + done / n_batches, 3) if partial else epoch + 1
            if improved:
                counters.update(best_valid=valid["nll_nats"], best_epoch=at)
            if partial:
                epochs_done = at
            else:
                counters["bad_epochs"] = 0 if improved else counters["bad_epochs"] + 1
                counters.update(epoch=epoch + 1, step=0, train_sum=0.0, train_count=0)
                epochs_done = epoch + 1
            row = {
                "epoch": at,
                "train_nll": train_nll,
                "valid_nll": valid["nll_nats"],
                "valid_bits_per_dim": valid["bits_per_dim"],
                "lr": opt.param_groups[0]["lr"],
                "seconds": time.perf_counter() - start,
                **({"partial": True} if partial else {}),
            }
            metrics.append(row)
            if improved:
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            epoch_name = f"{epoch + 1:3d}" if not partial else f"{at:g} (partial)"
            say(
                f"epoch {epoch_name}  train {train_nll:9.3f}  valid {valid['nll_nats']:9.3f} nats"
                f"  ({valid['bits_per_dim']:.4f} bits/dim)  {row['seconds']:7.1f} s"
                f"{'  *' if improved else ''}"
            )
            # why the run stops here, if it does: recorded in this checkpoint (for --resume)
            if partial:
                ending = "time budget"
            elif epoch + 1 >= cfg.epochs:
                ending = "epochs"
            elif cfg.patience and counters["bad_epochs"] >= cfg.patience:
                ending = "early stopping"
            elif distributed.broadcast_flag(d, over_budget(), device):
                ending = "time budget"
            else:
                ending = None
            counters["stop_reason"] = ending
            if writer is not None:
                if improved:
                    save(model, writer)
                _write_metrics(writer, [row], append=True)
            checkpoint(order_now if partial else None)
            if ending is not None:
                stop_reason = ending
                if ending == "time budget":
                    where = f"within epoch {epoch + 1}" if partial else f"after {epoch + 1} epochs"
                    say(f"time budget of {budget / 60:g} min reached {where}")
                elif ending == "early stopping":
                    say(
                        f"early stopping: no better valid NLL in {cfg.patience} epochs; "
                        f"keeping the weights of epoch {counters['best_epoch']:g}"
                    )
                break
            if distributed.broadcast_flag(d, bool(signal_flag.signum), device):
                raise TrainingInterrupted(
                    run, f"the end of epoch {epoch + 1}", signal_flag.signum or 2
                )
        if signal_flag.signum:  # it came during the last epoch's evaluation
            raise TrainingInterrupted(run, f"the end of epoch {epochs_done}", signal_flag.signum)
    if counters["stop_reason"] != stop_reason:  # record why the run stopped (for --resume)
        counters["stop_reason"] = stop_reason
        if writer is not None and counters["step"] == 0:
            checkpoint()
    if best_state is not None:
        model.load_state_dict(best_state)
    stop = {"best_epoch": counters["best_epoch"], "stop_reason": stop_reason}
    return counters["best_valid"], epochs_done, stop, start


def _train_epoch(
    model,
    net,
    opt,
    train_x,
    intensities,
    levels,
    cfg: TrainConfig,
    epoch: int,
    device,
    d,
    writer,
    counters: dict,
    fingerprint: dict,
    saved_order,
    start: float,
    over_budget=lambda: False,
    signal_flag=None,
    step_lr=lambda: None,
):
    """One epoch from step ``counters['step']``.

    Returns (mean train NLL in nats, why it stopped early or None, steps done, steps in the
    epoch, the epoch's data order). It stops after the current step when the time budget is
    spent or a signal arrived (every process agrees, through the step's all-reduce); the
    counters then say where.

    Global batch ``b`` is ``order[b*B:(b+1)*B]``; this process takes ``[rank::world]`` of it.
    """
    from .outputs import progress

    model.train()
    order = torch.randperm(len(train_x), generator=_epoch_generator(cfg.seed, epoch, 0))
    if saved_order is not None:  # resuming mid-epoch: the order the state file recorded
        if saved_order.shape != order.shape:
            raise TrainingError(
                f"cannot resume: the saved data order has {len(saved_order)} images, the data {len(order)}"
            )
        order = saved_order
    if intensities is not None:  # dynamic binarization, redrawn every epoch
        train_x = dynamic_binarize(*intensities, _epoch_generator(cfg.seed, epoch, 1))
    total, count = float(counters["train_sum"]), int(counters["train_count"])
    n_batches = math.ceil(len(order) / cfg.batch_size)
    first = int(counters["step"])
    if not 0 <= first <= n_batches:
        raise TrainingError(
            f"cannot resume: saved step {first} is outside this epoch's {n_batches} steps"
        )
    show = cfg.progress and d.is_main
    steps = range(first, n_batches)
    bar = (
        progress(steps, desc=f"epoch {epoch + 1}", initial=first, total=n_batches)
        if show
        else steps
    )
    plain = show and bar is steps  # no terminal: a plain line every minute instead of a bar
    autocast = (
        torch.autocast(device_type=device.type, dtype=torch.bfloat16)
        if cfg.bf16
        else contextlib.nullcontext()
    )
    last_save = last_line = time.perf_counter()
    why, done = None, first
    for b in bar:
        idx = order[b * cfg.batch_size : (b + 1) * cfg.batch_size]
        mine = idx[d.rank :: d.world]
        weight = d.world / len(idx)
        if len(mine) == 0:  # fewer images than processes in the last batch: take part, add 0
            mine, weight = idx[:1], 0.0
        if model.levels is None:  # dequantization noise of the global batch, then this shard
            xb = to_model_input(model, train_x[idx], levels, _step_generator(cfg.seed, epoch, b))
            local = xb[d.rank :: d.world] if weight else xb[:1]
        else:  # only this process's images go to the device
            local = to_model_input(model, train_x[mine], levels)
        with autocast:
            nll_sum = net(local) if d.enabled else -model.log_prob_unchecked(local).sum()
        # every process learns the global batch's loss (and whether to stop) before anyone steps
        stop_here = [
            float(bool(signal_flag and signal_flag.signum)),
            float(over_budget()),
        ]
        s, n, sig, late = distributed.all_sum(
            d,
            [
                nll_sum.detach().double().item() if weight else 0.0,
                float(len(idx)) / d.world,
                *stop_here,
            ],
            device,
        )
        if not math.isfinite(s):
            raise TrainingError(
                f"the loss became {s / n:g} at epoch {epoch + 1}, batch {b + 1}; training stopped "
                f"and the last good checkpoint is kept. Try a smaller --lr"
            )
        lr_now = step_lr()
        if lr_now is not None:
            for group in opt.param_groups:
                group["lr"] = lr_now
        opt.zero_grad(set_to_none=True)
        (nll_sum.float() * weight if cfg.bf16 else nll_sum * weight).backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        total += s
        count += len(idx)
        if bar is not steps:
            bar.set_postfix(nll=f"{total / count:.2f}")
        done = b + 1
        if done < n_batches and (sig or late):
            why = "interrupted" if sig else "time budget"
            counters.update(step=done, train_sum=total, train_count=count)
            break
        now = time.perf_counter()
        if plain and now - last_line >= 60:
            _log(
                f"  epoch {epoch + 1}: step {done}/{n_batches}, train NLL {total / count:.3f} "
                f"({(now - start) / 60:.1f} min)"
            )
            last_line = now
        if writer is not None and done < n_batches:
            by_steps = cfg.checkpoint_every and done % cfg.checkpoint_every == 0
            by_time = cfg.checkpoint_minutes and now - last_save >= 60 * cfg.checkpoint_minutes
            if by_steps or by_time:
                counters.update(step=done, train_sum=total, train_count=count)
                save_state(
                    writer,
                    model,
                    opt,
                    {**counters, **fingerprint, "seconds": now - start},
                    order,
                )
                last_save = time.perf_counter()
    if hasattr(bar, "close"):
        bar.close()
    return total / max(count, 1), why, done, n_batches, order


def _write_metrics(run: Path, rows: list[dict], append: bool) -> None:
    path = run / "metrics.jsonl"
    old = path.read_text() if append and path.exists() else ""
    atomic_write_bytes(path, (old + "".join(json.dumps(r) + "\n" for r in rows)).encode())


def _read_metrics(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    if not path.exists():
        return []
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except json.JSONDecodeError as e:
        raise TrainingError(f"cannot resume: {path} is corrupt: {e}") from None


def _write_pictures(
    model, splits: Splits, metrics: list[dict], run: Path, cfg: TrainConfig
) -> list[str]:
    from .plots import sample_grid, training_curve

    files = []
    g = torch.Generator().manual_seed(cfg.seed)
    samples = model.sample(cfg.num_samples, generator=g)
    files.append(str(sample_grid(samples, model.levels, run / "samples.png")))
    if metrics:
        import textwrap

        caveat = getattr(splits, "caveat", "")
        title = f"{model.name} on {splits.name}" + (
            "\n" + textwrap.fill(caveat, 80) if caveat else ""
        )
        files.append(str(training_curve(metrics, run / "curve.png", title)))
    return files


def describe_result(result: dict, dim: int) -> str:
    """The lines ``chainrule train`` prints at the end."""
    deq = " (discrete-equivalent: dequantized, + D ln K)" if result.get("dequantized") else ""
    procs = result.get("processes", 1)
    where = f"{result['device']}" + (f" x {procs} processes" if procs > 1 else "")
    threads = f", {result['threads']} threads" if result.get("threads") else ""
    best = result.get("best_epoch")
    why = {
        "early stopping": "stopped early (no better valid NLL within the patience)",
        "time budget": "stopped by the time budget",
        "epochs": "all epochs done",
        "closed form": "fitted by counting",
    }.get(result.get("stop_reason") or "", "")
    lines = [
        f"test NLL: {result['test_nll_nats']:.3f} nats per image (+/- {result['test_nll_stderr']:.3f}), "
        f"{result['test_bits_per_dim']:.4f} bits/dim{deq}"
        + (
            f", weights of epoch {best:g} (best valid NLL {result['best_valid_nll']:.3f})"
            if best
            else ""
        ),
        f"model {result['model']} ({result['num_parameters']:,} parameters) on {result['data']}, "
        f"{result['epochs']:g} epoch{'s' if result['epochs'] != 1 else ''} in {result['seconds']:.1f} s "
        f"on {where}{threads}" + (f"; {why}" if why else ""),
    ]
    if result.get("data_caveat"):
        lines.append(f"note: {result['data_caveat']}")
    return "\n".join(lines)


__all__ = [
    "TrainConfig",
    "TrainingError",
    "TrainingInterrupted",
    "train",
    "describe_result",
    "bits_per_dim",
]
