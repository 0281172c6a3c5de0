"""One model-agnostic trainer: it knows nothing of a model but ``-log_prob``.

It minimises the mean negative log-likelihood (nats per image) with Adam, evaluates the
validation NLL after every epoch, keeps the best model, stops early when the validation NLL has
not improved for ``patience`` epochs, and finally reports the test NLL of the best model.

A run folder holds:

* ``config.json``: everything needed to rebuild the run (model, options, data, training);
* ``metrics.jsonl``: one line per epoch (train and valid NLL, time, learning rate);
* ``model.safetensors`` + ``model.json``: the best model (a checkpoint ``chainrule.load`` reads);
* ``state.safetensors`` + ``state.json``: the last epoch's model, optimizer and counters, so
  that ``--resume`` continues exactly where the run stopped;
* ``samples.png``, ``curve.png``, ``result.json`` at the end.

Determinism: the data order, dynamic binarization and dequantization noise of epoch ``e`` are
drawn from generators seeded by ``(seed, e)``, so a resumed run sees the same batches as an
uninterrupted one. Every file is written atomically (temporary file, flush, rename).
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import __version__ as _version  # noqa: F401  (re-exported in config.json)
from .checkpoint import atomic_write_json, load_tensors, save, save_tensors
from .data import Splits, dynamic_binarize
from .evaluate import bits_per_dim, check_compatible, nll_offset, summarize, to_model_input
from .models.base import AutoregressiveModel


class TrainingError(RuntimeError):
    """Training cannot go on (non-finite loss, unusable run folder); one clear message."""


@dataclass
class TrainConfig:
    """Options of the trainer (the CLI's ``chainrule train`` flags)."""

    epochs: int = 20
    batch_size: int = 64
    lr: float = 1e-3
    seed: int = 0
    patience: int = 5  # epochs without a better valid NLL before stopping; 0 never stops early
    weight_decay: float = 0.0
    grad_clip: float = 0.0  # max gradient norm; 0 turns clipping off
    lr_schedule: str = "constant"  # "constant" or "cosine" (decays to 0 over `epochs`)
    eval_batch_size: int = 256
    device: str = "auto"
    closed_form: bool = False  # fit by counting (models with a `fit` method) instead of Adam
    max_train: int = 0  # use only the first N training images (0: all)
    time_budget_min: float = 0.0  # stop after this many minutes of training (0: no budget)
    num_samples: int = 64  # images drawn for samples.png
    progress: bool = True

    def validate(self) -> None:
        for name in ("epochs", "batch_size", "eval_batch_size", "num_samples"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < (0 if name == "epochs" else 1):
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive number, got {self.lr!r}")
        if self.patience < 0 or self.max_train < 0 or self.time_budget_min < 0:
            raise ValueError("patience, max_train and time_budget_min must be >= 0")
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"lr_schedule must be 'constant' or 'cosine', got {self.lr_schedule!r}")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but no CUDA device is available")
    return torch.device(name)


def _epoch_generator(seed: int, epoch: int, stream: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch * 101 + stream)


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
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        if key.startswith("optim."):
            _, idx, k = key.split(".", 2)
            state.setdefault(int(idx), {})[k] = v
    for key, v in meta.get("scalars", {}).items():
        idx, k = key.split(".", 1)
        state.setdefault(int(idx), {})[k] = v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_state(run: Path, model, opt, counters: dict) -> None:
    """The last epoch's full training state (model, optimizer, counters, RNG)."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    opt_tensors, opt_meta = _optimizer_to_tensors(opt)
    tensors.update(opt_tensors)
    tensors["rng.torch"] = torch.get_rng_state()
    save_tensors(run / "state.safetensors", tensors)
    atomic_write_json(run / "state.json", {**counters, "optimizer": opt_meta})


def load_state(run: Path, model, opt) -> dict:
    meta_path = run / "state.json"
    if not meta_path.is_file():
        raise TrainingError(f"cannot resume: {meta_path} is missing (the run never finished an epoch)")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as e:
        raise TrainingError(f"cannot resume: {meta_path} is not valid JSON: {e}") from None
    tensors = load_tensors(run / "state.safetensors")
    model_sd = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    try:
        model.load_state_dict(model_sd)
        _optimizer_from_tensors(opt, tensors, meta["optimizer"])
    except (RuntimeError, KeyError, ValueError) as e:
        raise TrainingError(f"cannot resume from {run}: its state does not match this model: {e}") from None
    if "rng.torch" in tensors:
        torch.set_rng_state(tensors["rng.torch"])
    return meta


def check_run_folder(out: Path, resume: bool) -> None:
    """Refuse to overwrite another run; check the folder is writable before training starts."""
    if not resume and (out / "model.safetensors").exists():
        raise TrainingError(
            f"{out} already holds a trained model; choose another --out, or --resume {out}"
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_bytes(b"x" * 4096)
        probe.unlink()
    except OSError as e:
        raise TrainingError(f"run folder {out} is not writable: {e.strerror or e}") from None


# ---------------------------------------------------------------------- the loop
def _lr_at(cfg: TrainConfig, epoch: int) -> float:
    if cfg.lr_schedule == "cosine" and cfg.epochs > 0:
        return 0.5 * cfg.lr * (1 + math.cos(math.pi * epoch / cfg.epochs))
    return cfg.lr


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def train(
    model: AutoregressiveModel,
    splits: Splits,
    cfg: TrainConfig,
    out: str | Path | None = None,
    *,
    resume: bool = False,
    run_info: dict | None = None,
) -> dict:
    """Train ``model`` on ``splits``; return the result (best valid and test NLL, ...).

    Args:
        model: any chainrule model.
        splits: the data (uint8 images at ``splits.levels``).
        cfg: trainer options.
        out: the run folder (None: keep nothing on disk).
        resume: continue the run in ``out`` from its last saved epoch.
        run_info: extra fields for ``config.json`` (model name and options, data name, ...).

    Returns:
        dict with ``test_nll_nats``, ``test_bits_per_dim``, ``best_valid_nll``, ``epochs``,
        ``seconds``, ``num_parameters`` and the paths of what was written.
    """
    cfg.validate()
    check_compatible(model, splits.event_shape, splits.levels, splits.name)
    device = resolve_device(cfg.device)
    run = Path(out) if out is not None else None
    if run is not None:
        check_run_folder(run, resume)
    torch.manual_seed(cfg.seed)
    model.to(device)

    train_x = splits.train[: cfg.max_train] if cfg.max_train else splits.train
    intensities = splits.train_intensities
    if intensities is not None and cfg.max_train:
        intensities = intensities[: cfg.max_train]
    if intensities is not None:
        intensities = (intensities, splits.intensity_levels)
    metrics: list[dict] = []
    start = time.perf_counter()

    if run is not None:
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
        }
        if not resume:
            atomic_write_json(run / "config.json", info)

    if cfg.closed_form:
        fit = getattr(model, "fit", None)
        if fit is None:
            raise ValueError(f"model {model.name!r} has no closed-form fit; train it with Adam")
        fit(train_x.to(device))
        valid = summarize(model, splits.valid, splits.levels, batch_size=cfg.eval_batch_size)
        train_nll = summarize(model, train_x, splits.levels, batch_size=cfg.eval_batch_size)["nll_nats"]
        metrics.append({"epoch": 1, "train_nll": train_nll, "valid_nll": valid["nll_nats"], "seconds": time.perf_counter() - start})
        best_valid, epochs_done = valid["nll_nats"], 1
        if run is not None:
            save(model, run)
            _write_metrics(run, metrics, append=False)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        first_epoch, best_valid, bad_epochs = 0, math.inf, 0
        if resume:
            if run is None:
                raise ValueError("resume needs a run folder")
            counters = load_state(run, model, opt)
            first_epoch, best_valid, bad_epochs = counters["epoch"], counters["best_valid"], counters["bad_epochs"]
            metrics = _read_metrics(run)[:first_epoch]
            _log(f"resuming {run} after epoch {first_epoch} (best valid NLL {best_valid:.3f})")
        elif run is not None:
            _write_metrics(run, [], append=False)
        epochs_done = first_epoch
        offset = nll_offset(model, splits.levels)
        for epoch in range(first_epoch, cfg.epochs):
            if cfg.patience and bad_epochs >= cfg.patience:
                break
            if cfg.time_budget_min and time.perf_counter() - start > 60 * cfg.time_budget_min:
                _log(f"time budget of {cfg.time_budget_min} min reached after {epoch} epochs")
                break
            for group in opt.param_groups:
                group["lr"] = _lr_at(cfg, epoch)
            train_nll = _train_epoch(model, opt, train_x, intensities, splits.levels, cfg, epoch, device)
            train_nll += offset
            valid = summarize(model, splits.valid, splits.levels, batch_size=cfg.eval_batch_size)
            improved = valid["nll_nats"] < best_valid
            best_valid = min(best_valid, valid["nll_nats"])
            bad_epochs = 0 if improved else bad_epochs + 1
            epochs_done = epoch + 1
            row = {
                "epoch": epoch + 1,
                "train_nll": train_nll,
                "valid_nll": valid["nll_nats"],
                "valid_bits_per_dim": valid["bits_per_dim"],
                "lr": opt.param_groups[0]["lr"],
                "seconds": time.perf_counter() - start,
            }
            metrics.append(row)
            _log(
                f"epoch {epoch + 1:3d}  train {train_nll:9.3f}  valid {valid['nll_nats']:9.3f} nats"
                f"  ({valid['bits_per_dim']:.4f} bits/dim){'  *' if improved else ''}"
            )
            if run is not None:
                if improved:
                    save(model, run)
                _write_metrics(run, [row], append=True)
                save_state(run, model, opt, {"epoch": epoch + 1, "best_valid": best_valid, "bad_epochs": bad_epochs})
        if run is not None and (run / "model.safetensors").exists():
            from .checkpoint import load as load_checkpoint

            best = load_checkpoint(run, map_location=device)
            model.load_state_dict(best.state_dict())

    test = summarize(model, splits.test, splits.levels, batch_size=cfg.eval_batch_size)
    result = {
        "model": model.name,
        "data": splits.name,
        "num_parameters": model.num_parameters(),
        "epochs": epochs_done,
        "seconds": round(time.perf_counter() - start, 2),
        "best_valid_nll": best_valid,
        "test_nll_nats": test["nll_nats"],
        "test_nll_stderr": test["nll_stderr"],
        "test_bits_per_dim": test["bits_per_dim"],
        "dequantized": test["dequantized"],
        "device": str(device),
    }
    if run is not None:
        result["files"] = _write_pictures(model, splits, metrics, run, cfg)
        atomic_write_json(run / "result.json", result)
    return result


def _train_epoch(model, opt, train_x, intensities, levels, cfg: TrainConfig, epoch: int, device) -> float:
    from tqdm import tqdm

    model.train()
    order = torch.randperm(len(train_x), generator=_epoch_generator(cfg.seed, epoch, 0))
    if intensities is not None:  # dynamic binarization, redrawn every epoch
        train_x = dynamic_binarize(*intensities, _epoch_generator(cfg.seed, epoch, 1))
    noise = _epoch_generator(cfg.seed, epoch, 2)
    total, count = 0.0, 0
    n_batches = math.ceil(len(order) / cfg.batch_size)
    bar = tqdm(range(n_batches), desc=f"epoch {epoch + 1}", leave=False, disable=not (cfg.progress and sys.stderr.isatty()))
    for b in bar:
        idx = order[b * cfg.batch_size : (b + 1) * cfg.batch_size]
        xb = to_model_input(model, train_x[idx], levels, noise).to(device)
        loss = -model.log_prob(xb).mean()
        if not torch.isfinite(loss):
            raise TrainingError(
                f"the loss became {loss.item()} at epoch {epoch + 1}, batch {b + 1}; training stopped "
                f"and the last good checkpoint is kept. Try a smaller --lr"
            )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        total += loss.item() * len(idx)
        count += len(idx)
        bar.set_postfix(nll=f"{total / count:.2f}")
    return total / count


def _write_metrics(run: Path, rows: list[dict], append: bool) -> None:
    path = run / "metrics.jsonl"
    old = path.read_text() if append and path.exists() else ""
    from .checkpoint import atomic_write_bytes

    atomic_write_bytes(path, (old + "".join(json.dumps(r) + "\n" for r in rows)).encode())


def _read_metrics(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _write_pictures(model, splits: Splits, metrics: list[dict], run: Path, cfg: TrainConfig) -> list[str]:
    from .plots import sample_grid, training_curve

    files = []
    g = torch.Generator().manual_seed(cfg.seed)
    samples = model.sample(cfg.num_samples, generator=g)
    files.append(str(sample_grid(samples, model.levels, run / "samples.png")))
    if metrics:
        title = f"{model.name} on {splits.name}"
        files.append(str(training_curve(metrics, run / "curve.png", title)))
    return files


def describe_result(result: dict, dim: int) -> str:
    """The lines ``chainrule train`` prints at the end."""
    deq = " (discrete-equivalent: dequantized, + D ln K)" if result.get("dequantized") else ""
    return (
        f"test NLL: {result['test_nll_nats']:.3f} nats per image (+/- {result['test_nll_stderr']:.3f}), "
        f"{result['test_bits_per_dim']:.4f} bits/dim{deq}\n"
        f"model {result['model']} ({result['num_parameters']:,} parameters) on {result['data']}, "
        f"{result['epochs']} epochs in {result['seconds']:.1f} s on {result['device']}"
    )


__all__ = ["TrainConfig", "TrainingError", "train", "describe_result", "bits_per_dim"]
