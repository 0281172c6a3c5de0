"""One model-agnostic trainer: it knows nothing of a model but ``-log_prob``.

:class:`Trainer` minimises the mean negative log-likelihood (nats per image) with Adam,
evaluates the validation NLL after every epoch, keeps the best model, stops early when the
validation NLL has not improved for ``patience`` epochs, and finally reports the test NLL of the
best model. What it writes is described in :mod:`chainrule.training.run_folder`; the state
written at the start, at every epoch end, and within an epoch every ``checkpoint_every`` steps
and at least every ``checkpoint_minutes`` lets ``resume`` continue *exactly*, after a kill at
any moment. SIGINT / SIGTERM save the state where training stopped (:class:`TrainingInterrupted`).

Determinism: the data order and dynamic binarization of epoch ``e`` are drawn from generators
seeded by ``(seed, e)`` and the dequantization noise of step ``s`` by ``(seed, e, s)``, so a
resumed run sees the same batches as an uninterrupted one.

Several processes (``torchrun``): see :mod:`chainrule.distributed`. ``batch_size`` is the
*global* batch, split over the processes, so one process and N processes take the same steps.

Devices: ``device`` auto/cpu/cuda; ``bf16`` runs the training forward and backward under bf16
autocast, on CUDA or on the CPU (where it pays only with bf16 matrix units: the run says whether
this CPU has them, :mod:`chainrule.training.bf16`); the weights, the optimizer and every
reported NLL stay in the model's dtype. Checkpoints are written from CPU copies and load on any
device.

The training step synchronises with the host once: to read the batch's loss (summed over the
processes together with the stop flags), which the non-finite check and the log need.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import allocator, distributed, native
from ..data import Splits, dynamic_binarize
from ..evaluate import (
    bits_per_dim,
    check_compatible,
    nll_offset,
    per_image_nll,
    summarize,
    to_model_input,
)
from ..models.base import AutoregressiveModel
from . import schedules
from .config import TrainConfig, resolve_device
from .errors import TrainingError, TrainingInterrupted
from .hooks import run_start_hooks
from .run_folder import RunFolder, checkpoint_bytes


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _quiet(msg: str) -> None:
    pass


def _epoch_generator(seed: int, epoch: int, stream: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch * 101 + stream)


def _step_generator(seed: int, epoch: int, step: int) -> torch.Generator:
    """Dequantization noise of one global batch: depends on (seed, epoch, step) only."""
    return torch.Generator().manual_seed(((seed * 1_000_003 + epoch) * 1_000_033 + step) * 7 + 3)


def train_subset(n_total: int, max_train: int) -> torch.Tensor:
    """The training images a run with ``--max-train`` uses: drawn at random with seed 0 (data
    sets are often sorted by class), the same subset whatever the run's seed."""
    from ..outputs import random_subset

    return random_subset(n_total, max_train or None, seed=0)


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


class _NLLSum(nn.Module):
    """``-sum log p(x)`` as a module's forward, so that DistributedDataParallel can wrap it."""

    def __init__(self, model: AutoregressiveModel):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return -self.model.training_log_prob(x).sum()


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


@dataclass
class EpochOutcome:
    """What :meth:`Trainer.train_epoch` did."""

    train_nll: float  # mean train NLL of the steps of this epoch so far (nats, model's scale)
    why: str | None  # None (the epoch is done), "time budget" or "interrupted" (stopped early)
    done: int  # steps done in this epoch
    n_batches: int  # steps in the epoch
    order: torch.Tensor  # the epoch's data order


def _fresh_counters() -> dict[str, Any]:
    """The counters of the training state (their keys are the state file's JSON keys)."""
    return {
        "epoch": 0,
        "step": 0,
        "best_valid": math.inf,
        "best_epoch": 0,
        "bad_epochs": 0,
        "train_sum": 0.0,
        "train_count": 0,
        "stop_reason": None,
    }


class Trainer:
    """One training run of one model on one data set.

    Usage::

        from chainrule.training import Trainer, TrainConfig

        trainer = Trainer(model, splits, TrainConfig(epochs=5), "runs/mine")
        result = trainer.fit()  # the dict that result.json holds
        # later, in a new process: Trainer(model, splits, cfg, "runs/mine", resume=True).fit()

    The constructor checks everything that can be checked without touching the run folder
    (options, model, data, device) and joins the process group under ``torchrun``; :meth:`fit`
    runs the whole thing once (folder checks, ``config.json``, start-of-run hooks, the epochs,
    the test, ``result.json``). :func:`train` is ``Trainer(...).fit()``.

    State it holds: ``model``, ``splits``, ``cfg``, ``device``, ``dist`` (this process's place in
    the group), ``run`` (the :class:`RunFolder` read on resume, or None), ``writer`` (the same,
    on rank 0 only: the process that writes), ``opt``, ``counters`` (epoch, step, best valid
    NLL, ... as saved in the state file), ``metrics`` (the rows of metrics.jsonl), ``budget``
    (seconds of the whole run, or None) and ``start`` (``self.clock()``, wall or CPU time,
    minus the seconds of earlier sessions of this run).

    Args:
        model: any chainrule model.
        splits: the data (uint8 images at ``splits.levels``).
        cfg: trainer options.
        out: the run folder (None: keep nothing on disk).
        resume: continue the run in ``out`` from its last saved state (exactly). A run that
            had stopped early is continued with its patience re-armed; one that had stopped at
            its time budget is continued without it (unless ``more_minutes``).
        overwrite: replace a run that ``out`` already holds (else that is refused).
        more_minutes: on a resume, train at most this many more minutes.
        run_info: extra fields for ``config.json`` (model name and options, data name, ...).
    """

    def __init__(
        self,
        model: AutoregressiveModel,
        splits: Splits,
        cfg: TrainConfig,
        out: str | Path | None = None,
        *,
        resume: bool = False,
        overwrite: bool = False,
        more_minutes: float | None = None,
        run_info: dict | None = None,
    ):
        cfg.validate()
        if not isinstance(model, AutoregressiveModel):
            raise ValueError(f"model must be a chainrule model, got {type(model).__name__}")
        check_compatible(model, splits.event_shape, splits.levels, splits.name)
        _check_values(splits)  # once: the training step then skips the per-batch checks
        if resume and out is None:
            raise ValueError("resume needs a run folder")
        self.model, self.splits, self.cfg = model, splits, cfg
        self.resume, self.overwrite, self.more_minutes = resume, overwrite, more_minutes
        self.run_info = run_info
        self.device = distributed.process_device(resolve_device(cfg.device))
        self.dist = distributed.setup(self.device)
        self.run = RunFolder(out) if out is not None else None
        self.writer = self.run if self.dist.is_main else None  # only rank 0 writes
        self.say = _log if cfg.progress and self.dist.is_main else _quiet
        # the training images of this run (a random subset under max_train)
        subset = train_subset(len(splits.train), cfg.max_train) if cfg.max_train else None
        self.train_x = splits.train[subset] if subset is not None else splits.train
        intensities = splits.train_intensities
        if intensities is not None and subset is not None:
            intensities = intensities[subset]
        self.intensities = (
            (intensities, splits.intensity_levels) if intensities is not None else None
        )
        self.opt: torch.optim.Optimizer | None = None
        self.net: nn.Module = model
        self.counters = _fresh_counters()
        self.fingerprint = {
            "seed": cfg.seed,
            "batch_size": cfg.batch_size,
            "n_train": len(self.train_x),
        }
        self.metrics: list[dict] = []
        self.best_state: dict[str, torch.Tensor] | None = None
        self.budget = 60 * cfg.time_budget_min if cfg.time_budget_min else None
        #: the budget's clock: wall time, or the process's CPU time (--budget-clock cpu)
        self.clock = time.process_time if cfg.budget_clock == "cpu" else time.perf_counter
        #: what every printed time says of its clock: "CPU " (then "s" or "min") or nothing
        self.clock_word = "CPU " if cfg.budget_clock == "cpu" else ""
        self.start = self.clock()
        self.epochs_done: float = 0
        self.stop_reason = "epochs"
        self._signal: _StopSignal | None = None

    # ------------------------------------------------------------------ the whole run
    def fit(self) -> dict:
        """Train (or fit in closed form), test the best model, write the run's files.

        Returns:
            dict with ``test_nll_nats``, ``test_bits_per_dim``, ``best_valid_nll``,
            ``best_epoch``, ``stop_reason``, ``epochs``, ``seconds`` (both over the whole run,
            resumes included), ``n_train``, ``threads``, ``data_caveat``, ``num_parameters``
            and the paths of what was written.

        Raises:
            TrainingInterrupted: SIGINT or SIGTERM arrived; the state was saved where it stopped.
            TrainingError: the run folder is unusable, the state cannot be resumed, the loss or
                the weights became non-finite.
        """
        self._prepare()
        if self.cfg.closed_form:
            self._fit_closed_form()
        else:
            self._fit_adam()
        result = self._finish()
        distributed.barrier(self.dist)  # every process returns once rank 0 wrote the folder
        return result

    def _prepare(self) -> None:
        """The model on its device, the run folder checked (by rank 0, every process learns
        the outcome), the seed, ``config.json``."""
        cfg, d, model = self.cfg, self.dist, self.model
        if cfg.dtype:
            model.to(getattr(torch, cfg.dtype))
        model.to(self.device)
        if self.device.type == "cpu":
            allocator.keep_freed_memory()  # no fresh pages for every step's tensors
        err: TrainingError | None = None
        if self.writer is not None:
            try:
                need = 0 if cfg.closed_form else checkpoint_bytes(model)
                self.writer.check(self.resume, need, overwrite=self.overwrite)
            except TrainingError as e:
                err = e
        if distributed.agree(d, err is not None, self.device):
            raise err or TrainingError(
                "rank 0 cannot use the run folder (see its message); stopped"
            )
        torch.manual_seed(cfg.seed)
        self.start = self.clock()
        if self.writer is not None and not self.resume:
            self.writer.write_config(model, cfg, self.splits.name, d.world, self.run_info)

    def _fit_closed_form(self) -> None:
        model = self.model
        fit = getattr(model, "fit", None)
        if fit is None:
            raise ValueError(f"model {model.name!r} has no closed-form fit; train it with Adam")
        self.say(f"fitting {model.name} by counting over {len(self.train_x)} images")
        fit(self.train_x.to(self.device))
        valid = self.evaluate(self.splits.valid)
        train_nll = self.evaluate(self.train_x)["nll_nats"]
        self.metrics.append(
            {
                "epoch": 1,
                "train_nll": train_nll,
                "valid_nll": valid["nll_nats"],
                "seconds": self.elapsed(),
            }
        )
        self.counters.update(best_valid=valid["nll_nats"], best_epoch=1)
        self.epochs_done, self.stop_reason = 1, "closed form"
        if self.writer is not None:
            self.writer.save_model(model)
            self.writer.write_metrics(self.metrics, append=False)

    def _finish(self) -> dict:
        """Test the best model; the result (and, on rank 0, the pictures and result.json)."""
        model, splits, cfg = self.model, self.splits, self.cfg
        best_epoch = self.counters["best_epoch"]
        self.say(
            f"test: evaluating the best model (epoch {best_epoch}) on {len(splits.test)} images"
        )
        test = self.evaluate(splits.test)
        result = {
            "model": model.name,
            "data": splits.name,
            "data_caveat": getattr(splits, "caveat", "") or "",
            "n_train": len(self.train_x),
            "num_parameters": model.num_parameters(),
            "epochs": self.epochs_done,
            "best_epoch": best_epoch,
            "stop_reason": self.stop_reason,
            "best_valid_nll": self.counters["best_valid"],
            "test_nll_nats": test["nll_nats"],
            "test_nll_stderr": test["nll_stderr"],
            "test_bits_per_dim": test["bits_per_dim"],
            "dequantized": test["dequantized"],
            "device": str(self.device),
            "threads": torch.get_num_threads(),
            "processes": self.dist.world,
            "native_kernels": native.in_use(),  # chainrule.native's compiled loops ran
            "freed_memory_kept": allocator.freed_memory_kept(),  # chainrule.allocator
        }
        if self.writer is not None:
            self.say(f"drawing {cfg.num_samples} samples for samples.png")
            result["files"] = self.writer.write_pictures(model, splits, self.metrics, cfg)
        result["seconds"] = round(self.elapsed(), 2)  # resumes included
        result["clock"] = self.cfg.budget_clock  # what "seconds" counts: wall or CPU time
        if self.writer is not None:
            self.writer.write_result(result)
        return result

    def evaluate(self, x: torch.Tensor) -> dict:
        """NLL summary of images ``x`` (split over the processes, reduced)."""
        show = self.cfg.progress and self.dist.is_main
        return _summarize(
            self.model,
            x,
            self.splits.levels,
            self.cfg.eval_batch_size,
            self.dist,
            self.device,
            show,
        )

    # ------------------------------------------------------------------ Adam
    def _fit_adam(self) -> None:
        """Adam over the epochs, with step-level checkpoints; the best weights at the end."""
        cfg, d, model, device = self.cfg, self.dist, self.model, self.device
        if not self.resume and cfg.hooks():
            run_start_hooks(cfg.hooks(), model, self.train_x.to(device))
        self.opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        if cfg.bf16 and d.is_main:  # said even under --quiet: it may be a warning
            from .bf16 import bf16_note

            _log(bf16_note(device))
        if self.resume:
            order = self._load()
        else:
            self._begin()
            order = None
        if d.enabled:
            from torch.nn.parallel import DistributedDataParallel

            ids = [device.index] if device.type == "cuda" else None
            self.net = DistributedDataParallel(_NLLSum(model), device_ids=ids)
        self.epochs_done = self.counters["epoch"]
        with _StopSignal(announce=d.is_main) as self._signal:
            for epoch in range(self.counters["epoch"], cfg.epochs):
                if self._stops_before(epoch):
                    break
                for group in self.opt.param_groups:
                    group["lr"] = schedules.epoch_lr(cfg.lr_schedule, cfg.lr, epoch, cfg.epochs)
                out = self.train_epoch(epoch, order if self.counters["step"] else None)
                order = None
                if out.why == "interrupted":  # mid-epoch: save exactly where it stopped, stop
                    self.checkpoint(out.order)
                    raise TrainingInterrupted(
                        self._path(),
                        f"epoch {epoch + 1}, step {out.done} of {out.n_batches}",
                        self._signal.signum,
                    )
                if self.end_epoch(epoch, out) is not None:
                    break
                if distributed.broadcast_flag(d, bool(self._signal.signum), device):
                    raise TrainingInterrupted(
                        self._path(), f"the end of epoch {epoch + 1}", self._signal.signum or 2
                    )
            if self._signal.signum:  # it came during the last epoch's evaluation
                raise TrainingInterrupted(
                    self._path(), f"the end of epoch {self.epochs_done}", self._signal.signum
                )
        if self.counters["stop_reason"] != self.stop_reason:  # why it stopped (for --resume)
            self.counters["stop_reason"] = self.stop_reason
            if self.counters["step"] == 0:
                self.checkpoint()
        if self.best_state is not None:
            model.load_state_dict(self.best_state)

    def _path(self) -> Path | None:
        return self.run.path if self.run is not None else None

    def _begin(self) -> None:
        """A fresh run: an empty metrics.jsonl and the first state (when the weights are
        finite: else the first loss is non-finite and stops the run with that message)."""
        if self.writer is not None:
            self.writer.write_metrics([], append=False)
            if all(
                torch.isfinite(v).all()
                for v in self.model.state_dict().values()
                if v.is_floating_point()
            ):
                self.checkpoint(seconds=0.0)

    def _load(self) -> torch.Tensor | None:
        """A resume: model, optimizer, counters, metrics and best weights from the run folder;
        the patience re-armed after an early stop, the budget set. Returns the saved order."""
        assert self.run is not None and self.opt is not None
        c, run = self.counters, self.run
        loaded, order = run.load_state(self.model, self.opt)
        for k, v in self.fingerprint.items():
            if k in loaded and loaded[k] != v:
                raise TrainingError(
                    f"cannot resume {run.path}: its state was written with {k}={loaded[k]}, "
                    f"this run has {k}={v}"
                )
        c.update({k: loaded[k] for k in c if k in loaded})
        done_seconds = float(loaded.get("seconds", 0.0))
        self.start -= done_seconds
        self.metrics[:] = [r for r in run.read_metrics() if r.get("epoch", 0) <= c["epoch"]]
        if run.has_model():
            self.best_state = run.load_model_state(self.device)
        stopped = c["stop_reason"]
        if stopped == "early stopping":  # continued on purpose: patience starts again
            c["bad_epochs"] = 0
        if self.more_minutes is not None:
            self.budget = done_seconds + 60 * self.more_minutes
        elif stopped == "time budget":  # continued on purpose (more epochs): no budget left
            self.budget = None
        c["stop_reason"] = None
        distributed.barrier(self.dist)  # everyone has read the state before rank 0 rewrites it
        where = (
            f"epoch {c['epoch'] + 1}, step {c['step']}"
            if c["step"]
            else f"the end of epoch {c['epoch']}"
        )
        self.say(
            f"resuming {run.path} at {where} after {self.minutes(done_seconds)} "
            f"(best valid NLL {c['best_valid']:.3f} at epoch {c['best_epoch']})"
        )
        return order

    def _budget_text(self) -> str:
        """The time budget, for the message when it ran out (so there is one)."""
        assert self.budget is not None
        return f"time budget of {self.budget / 60:g} {self.clock_word}min"

    def _adam(self) -> torch.optim.Optimizer:
        """The optimizer of an Adam run (made by :meth:`_fit_adam`)."""
        assert self.opt is not None
        return self.opt

    def elapsed(self) -> float:
        """Seconds of the whole run so far (earlier sessions included) on the budget's clock."""
        return self.clock() - self.start

    def minutes(self, seconds: float | None = None) -> str:
        """``seconds`` (default: the whole run so far) as minutes on the budget's clock, named:
        "12.5 min" or "12.5 CPU min"."""
        value = self.elapsed() if seconds is None else seconds
        return f"{value / 60:.1f} {self.clock_word}min"

    def over_budget(self) -> bool:
        """This process's clock has passed the time budget."""
        return self.budget is not None and self.elapsed() > self.budget

    def _stops_before(self, epoch: int) -> bool:
        """Before epoch ``epoch``: the patience is spent, or the time budget (rank 0 decides)."""
        cfg = self.cfg
        if cfg.patience and self.counters["bad_epochs"] >= cfg.patience:
            self.stop_reason = "early stopping"
            self.say(
                f"early stopping: no better valid NLL in {cfg.patience} epochs; "
                f"keeping the weights of epoch {self.counters['best_epoch']}"
            )
            return True
        if distributed.broadcast_flag(self.dist, self.over_budget(), self.device):
            self.stop_reason = "time budget"
            self.say(f"{self._budget_text()} reached after {epoch} epochs")
            return True
        return False

    def checkpoint(self, order: torch.Tensor | None = None, seconds: float | None = None) -> None:
        """Save the training state (rank 0): counters, weights, Adam, the epoch's data order
        when saved within an epoch."""
        if self.writer is None:
            return
        if seconds is None:
            seconds = self.elapsed()
        counters = {**self.counters, **self.fingerprint, "seconds": seconds}
        self.writer.save_state(self.model, self.opt, counters, order)

    def _epoch_order(self, epoch: int, saved_order: torch.Tensor | None) -> torch.Tensor:
        order = torch.randperm(
            len(self.train_x), generator=_epoch_generator(self.cfg.seed, epoch, 0)
        )
        if saved_order is not None:  # resuming mid-epoch: the order the state file recorded
            if saved_order.shape != order.shape:
                raise TrainingError(
                    f"cannot resume: the saved data order has {len(saved_order)} images, "
                    f"the data {len(order)}"
                )
            order = saved_order
        return order

    def train_epoch(self, epoch: int, saved_order: torch.Tensor | None = None) -> EpochOutcome:
        """One epoch from step ``counters['step']``.

        It stops after the current step when the time budget is spent or a signal arrived
        (every process agrees, through the step's all-reduce); the counters then say where.
        Global batch ``b`` is ``order[b*B:(b+1)*B]``; this process takes ``[rank::world]``.
        """
        from ..outputs import progress

        cfg, d, c = self.cfg, self.dist, self.counters
        self.model.train()
        order = self._epoch_order(epoch, saved_order)
        train_x = self.train_x
        if self.intensities is not None:  # dynamic binarization, redrawn every epoch
            train_x = dynamic_binarize(*self.intensities, _epoch_generator(cfg.seed, epoch, 1))
        total, count = float(c["train_sum"]), int(c["train_count"])
        n_batches = math.ceil(len(order) / cfg.batch_size)
        first = int(c["step"])
        if not 0 <= first <= n_batches:
            raise TrainingError(
                f"cannot resume: saved step {first} is outside this epoch's {n_batches} steps"
            )
        show = cfg.progress and d.is_main
        steps = range(first, n_batches)
        bar: Any = (  # a tqdm bar (untyped), or the steps themselves
            progress(steps, desc=f"epoch {epoch + 1}", initial=first, total=n_batches)
            if show
            else steps
        )
        plain = show and bar is steps  # no terminal: a plain line every minute instead of a bar
        last_save = last_line = time.perf_counter()
        why, done = None, first
        for b in bar:
            idx = order[b * cfg.batch_size : (b + 1) * cfg.batch_size]
            s, sig, late = self.step(train_x, idx, epoch, b)
            total += s
            count += len(idx)
            if bar is not steps:
                bar.set_postfix(nll=f"{total / count:.2f}")
            done = b + 1
            if done < n_batches and (sig or late):
                why = "interrupted" if sig else "time budget"
                c.update(step=done, train_sum=total, train_count=count)
                break
            now = time.perf_counter()
            if plain and now - last_line >= 60:
                _log(
                    f"  epoch {epoch + 1}: step {done}/{n_batches}, train NLL {total / count:.3f} "
                    f"({self.minutes()})"
                )
                last_line = now
            if self.writer is not None and done < n_batches:
                by_steps = cfg.checkpoint_every and done % cfg.checkpoint_every == 0
                by_time = cfg.checkpoint_minutes and now - last_save >= 60 * cfg.checkpoint_minutes
                if by_steps or by_time:
                    c.update(step=done, train_sum=total, train_count=count)
                    self.checkpoint(order)
                    last_save = time.perf_counter()
        if hasattr(bar, "close"):
            bar.close()
        return EpochOutcome(total / max(count, 1), why, done, n_batches, order)

    def step(
        self, train_x: torch.Tensor, idx: torch.Tensor, epoch: int, b: int
    ) -> tuple[float, bool, bool]:
        """One optimisation step on global batch ``b`` (images ``train_x[idx]``).

        Returns (the global batch's summed NLL, a signal arrived in some process, the time
        budget is spent in some process). Its one host synchronisation reads the loss (summed
        over the processes with the two stop flags) before anyone steps.
        """
        cfg, d, model, device = self.cfg, self.dist, self.model, self.device
        levels = self.splits.levels
        mine = idx[d.rank :: d.world]
        weight = d.world / len(idx)
        if len(mine) == 0:  # fewer images than processes in the last batch: take part, add 0
            mine, weight = idx[:1], 0.0
        if model.levels is None:  # dequantization noise of the global batch, then this shard
            xb = to_model_input(model, train_x[idx], levels, _step_generator(cfg.seed, epoch, b))
            local = xb[d.rank :: d.world] if weight else xb[:1]
        else:  # only this process's images go to the device
            local = to_model_input(model, train_x[mine], levels)
        autocast = (
            torch.autocast(device_type=device.type, dtype=torch.bfloat16)
            if cfg.bf16
            else contextlib.nullcontext()
        )
        with autocast:
            nll_sum = self.net(local) if d.enabled else -model.training_log_prob(local).sum()
        loss = (
            nll_sum.detach().double()
            if weight
            else torch.zeros((), dtype=torch.float64, device=device)
        )
        flags = [
            float(len(idx)) / d.world,
            float(bool(self._signal and self._signal.signum)),
            float(self.over_budget()),
        ]
        s, n, sig, late = distributed.all_sum_with(d, loss, flags, device)
        if not math.isfinite(s):
            raise TrainingError(
                f"the loss became {s / n:g} at epoch {epoch + 1}, batch {b + 1}; training stopped "
                f"and the last good checkpoint is kept. Try a smaller --lr"
            )
        lr_now = schedules.step_lr(cfg.lr_schedule, cfg.lr, self.elapsed(), self.budget)
        opt = self._adam()
        if lr_now is not None:
            for group in opt.param_groups:
                group["lr"] = lr_now
        opt.zero_grad(set_to_none=True)
        (nll_sum.float() * weight if cfg.bf16 else nll_sum * weight).backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        return s, bool(sig), bool(late)

    def end_epoch(self, epoch: int, out: EpochOutcome) -> str | None:
        """After the steps of epoch ``epoch``: validate, log, keep the best weights, write the
        metrics row and the state; return why the run stops here (None: it goes on)."""
        cfg, c, d = self.cfg, self.counters, self.dist
        train_nll = out.train_nll + nll_offset(self.model, self.splits.levels)
        partial = out.why == "time budget"  # stopped within the epoch: it continues on resume
        over = None  # the time budget's flag, asked once (every process asks it the same times)
        validating = True
        if cfg.valid_every > 1 and not partial and epoch + 1 < cfg.epochs:
            over = distributed.broadcast_flag(d, self.over_budget(), self.device)
            validating = over or (epoch + 1) % cfg.valid_every == 0
        valid = self.evaluate(self.splits.valid) if validating else None
        nll = valid["nll_nats"] if valid is not None else None
        improved = nll is not None and nll < c["best_valid"]
        at = round(epoch + out.done / out.n_batches, 3) if partial else epoch + 1
        if improved:
            c.update(best_valid=nll, best_epoch=at)
        if partial:
            self.epochs_done = at
        else:
            c["bad_epochs"] = 0 if improved else c["bad_epochs"] + int(validating)
            c.update(epoch=epoch + 1, step=0, train_sum=0.0, train_count=0)
            self.epochs_done = epoch + 1
        row = {
            "epoch": at,
            "train_nll": train_nll,
            "valid_nll": valid["nll_nats"] if valid else None,
            "valid_bits_per_dim": valid["bits_per_dim"] if valid else None,
            "lr": self._adam().param_groups[0]["lr"],
            "seconds": self.elapsed(),
            **({"partial": True} if partial else {}),
        }
        self.metrics.append(row)
        if improved:
            self.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        epoch_name = f"{epoch + 1:3d}" if not partial else f"{at:g} (partial)"
        checked = (
            f"  valid {valid['nll_nats']:9.3f} nats  ({valid['bits_per_dim']:.4f} bits/dim)"
            if valid
            else f"  (validated every {cfg.valid_every} epochs)"
        )
        self.say(
            f"epoch {epoch_name}  train {train_nll:9.3f}{checked}  "
            f"{row['seconds']:7.1f} {self.clock_word}s"
            f"{'  *' if improved else ''}"
        )
        # why the run stops here, if it does: recorded in this checkpoint (for --resume)
        if partial:
            ending = "time budget"
        elif epoch + 1 >= cfg.epochs:
            ending = "epochs"
        elif cfg.patience and c["bad_epochs"] >= cfg.patience:
            ending = "early stopping"
        elif (
            over
            if over is not None
            else distributed.broadcast_flag(d, self.over_budget(), self.device)
        ):
            ending = "time budget"
        else:
            ending = None
        c["stop_reason"] = ending
        if self.writer is not None:
            if improved:
                self.writer.save_model(self.model)
            self.writer.write_metrics([row], append=True)
        self.checkpoint(out.order if partial else None)
        if ending is not None:
            self.stop_reason = ending
            if ending == "time budget":
                where = f"within epoch {epoch + 1}" if partial else f"after {epoch + 1} epochs"
                self.say(f"{self._budget_text()} reached {where}")
            elif ending == "early stopping":
                self.say(
                    f"early stopping: no better valid NLL in {cfg.patience} epochs; "
                    f"keeping the weights of epoch {c['best_epoch']:g}"
                )
        return ending


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
    """Train ``model`` on ``splits``; return the result (best valid and test NLL, ...):
    ``Trainer(model, splits, cfg, out, ...).fit()`` (see :class:`Trainer` for the arguments).

    Under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) every process calls this with
    the same arguments; they form one process group (gloo on CPU, nccl on CUDA), share the
    work, and only rank 0 writes to ``out``.
    """
    trainer = Trainer(
        model,
        splits,
        cfg,
        out,
        resume=resume,
        overwrite=overwrite,
        more_minutes=more_minutes,
        run_info=run_info,
    )
    return trainer.fit()
