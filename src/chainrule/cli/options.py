"""Flags generated from the config dataclasses.

* model flags: one per field of any model's ``Config`` (``model_class(name).Config``), typed by
  the field's annotation, its help from ``field.metadata["help"]`` (else a short fallback), its
  default per model shown in the help; ``--option KEY=VALUE`` reaches any field as well.
* training flags: one per field of :class:`chainrule.training.TrainConfig` (except the few the CLI
  does not expose), typed and bounded by the field, help from its metadata, default from the
  dataclass (or "the model's" where a model has its own training default).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import typing
from typing import Any

from chainrule.orderings import SPEC_NAMES

from .common import (
    UserError,
    flag,
    nonneg_float,
    nonneg_int,
    parse_value,
    positive_float,
    positive_int,
)

# ---------------------------------------------------------------------- model flags
#: help of model flags whose fields carry no ``metadata["help"]`` yet
MODEL_HELP_FALLBACK = {
    "hidden": "hidden units per layer",
    "layers": "number of layers",
    "order": "order k of a Markov chain",
    "ordering": f"pixel ordering: {SPEC_NAMES}, or a JSON list giving the permutation",
    "components": "mixture components of RNADE",
    "preset": "a named configuration of the model (see PRESETS below)",
}


def _base_type(tp: Any) -> tuple[type, bool]:
    """(int/float/bool/str, whether a JSON list is allowed) of a field annotation."""
    args = typing.get_args(tp) or (tp,)
    listy = any(typing.get_origin(a) is list or a is list for a in args)
    for kind in (bool, int, float, str):
        if kind in args:
            return kind, listy
    return str, listy


def _bool(text: str) -> bool:
    t = text.strip().lower()
    if t in ("true", "1", "yes", "on"):
        return True
    if t in ("false", "0", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"must be true or false, got {text!r}")


_bool.__name__ = "true or false"


@functools.lru_cache(maxsize=1)
def model_fields() -> dict[str, dict[str, Any]]:
    """Field name -> {type, listy, help, defaults: {model: default}} over every model's Config."""
    import chainrule
    from chainrule.models import model_class

    out: dict[str, dict[str, Any]] = {}
    for name in chainrule.available_models():
        cfg = model_class(name).Config
        try:
            hints = typing.get_type_hints(cfg)
        except Exception:  # an annotation that cannot be resolved: take it as text
            hints = {}
        for f in dataclasses.fields(cfg):
            if f.name.startswith("_"):
                continue
            kind, listy = _base_type(hints.get(f.name, str))
            d = out.setdefault(f.name, {"type": kind, "listy": listy, "helps": {}, "defaults": {}})
            if f.metadata.get("help"):
                d["helps"][name] = f.metadata["help"]
            if f.default is not dataclasses.MISSING:
                d["defaults"][name] = f.default
            elif f.default_factory is not dataclasses.MISSING:
                d["defaults"][name] = f.default_factory()
    for d in out.values():  # models that word a field apart are each shown with their words
        groups: dict[str, list[str]] = {}
        for model, text in d["helps"].items():
            groups.setdefault(text, []).append(model)
        if len(groups) == 1:
            d["help"] = next(iter(groups))
        elif groups:
            d["help"] = "; ".join(f"{'/'.join(ms)}: {text}" for text, ms in groups.items())
        else:
            d["help"] = None
    return out


def _defaults_text(defaults: dict[str, Any]) -> str:
    import chainrule

    shown = {k: ("none" if v in ("", None) else v) for k, v in defaults.items()}
    values = list(dict.fromkeys(repr(v) for v in shown.values()))
    every = len(shown) == len(chainrule.available_models())
    if len(values) == 1 and every:
        return f"default {next(iter(shown.values()))}"
    groups: dict[str, list[str]] = {}
    for model, v in shown.items():
        groups.setdefault(str(v), []).append(model)
    return "default " + ", ".join(f"{'/'.join(ms)} {v}" for v, ms in groups.items())


def add_model_flags(p: argparse.ArgumentParser) -> None:
    """A flag per field of the models' configs, and --option KEY=VALUE."""
    g = p.add_argument_group("model options (fields of the model's config; see `chainrule params`)")
    for name, d in model_fields().items():
        help_ = d["help"] or MODEL_HELP_FALLBACK.get(name) or name.replace("_", " ")
        kind = _bool if d["type"] is bool else d["type"]
        if d["listy"]:
            kind = str
        g.add_argument(
            flag(name),
            dest=name,
            type=kind,
            default=None,
            help=f"{help_} ({_defaults_text(d['defaults'])})".replace("%", "%%"),
        )
    g.add_argument(
        "--option",
        action="append",
        metavar="KEY=VALUE",
        help="any other field of the model's config (value parsed as JSON when it can be)",
    )


def model_options(args: argparse.Namespace) -> dict[str, Any]:
    """Model options given on the command line (flags and --option KEY=VALUE)."""
    opts: dict[str, Any] = {}
    for name, d in model_fields().items():
        v = getattr(args, name, None)
        if v is not None:
            opts[name] = parse_value(v) if d["listy"] and v.startswith("[") else v
    for item in getattr(args, "option", None) or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--option must be KEY=VALUE, got {item!r}")
        opts[key.replace("-", "_")] = parse_value(value)
    return opts


def option_flag(args: argparse.Namespace, key: str) -> str:
    """How option ``key`` was given: ``--hidden`` or ``--option smoothing``."""
    if key in model_fields() and getattr(args, key, None) is not None:
        return flag(key)
    return f"--option {key}"


# ---------------------------------------------------------------------- training flags
#: TrainConfig fields the CLI does not expose (--quiet sets `progress`)
TRAIN_HIDDEN = {"progress", "num_samples", "eval_batch_size"}
#: flag names that differ from the field's
TRAIN_FLAG_NAMES = {"time_budget_min": "time_budget"}
#: numeric fields whose flag refuses 0 (the others take any value >= 0)
TRAIN_POSITIVE = {"epochs", "batch_size", "lr", "max_train", "time_budget_min"}
#: choices of text fields
TRAIN_CHOICES = {
    "lr_schedule": ["constant", "cosine", "cosine-time"],
    "device": ["auto", "cpu", "cuda"],
    "dtype": ["float32", "float64"],
}
#: how a default is shown where the field's own default would mislead
TRAIN_DEFAULT_TEXT = {"max_train": ": all", "time_budget_min": ": none", "dtype": " float32"}
TRAIN_METAVARS = {
    "time_budget_min": "MIN",
    "checkpoint_every": "STEPS",
    "checkpoint_minutes": "MIN",
}
#: help of training flags whose fields carry no ``metadata["help"]`` yet
TRAIN_HELP_FALLBACK = {
    "epochs": "maximum number of epochs",
    "batch_size": "images per training step",
    "lr": "Adam learning rate",
    "seed": "random seed: the same seed, thread count and machine give the same run",
    "patience": "stop after this many epochs without a better valid NLL (0: never)",
    "weight_decay": "L2 penalty on every weight, added to the gradient (Adam's weight_decay; "
    "a regularizer for models that overfit, such as MADE and NADE on MNIST)",
    "grad_clip": "clip the gradient norm to this (0: off)",
    "lr_schedule": "learning-rate schedule; cosine decays to 0 over --epochs, cosine-time over "
    "--time-budget (step by step)",
    "device": "where to train (auto: CUDA when present)",
    "closed_form": "fit by counting (independent, markov, table)",
    "max_train": "train on N training images drawn at random with seed 0",
    "time_budget_min": "stop training after MIN minutes, checked after every step; with "
    "--resume: MIN more minutes",
    "checkpoint_every": "also save the training state every STEPS steps (0: only at epoch ends, "
    "every --checkpoint-minutes, and on Ctrl-C)",
    "checkpoint_minutes": "save the training state at least every MIN minutes within an epoch "
    "(0: off)",
    "bf16": "bf16 autocast for training (weights, Adam and NLLs stay float32): faster on CUDA "
    "and on CPUs with bf16 matrix units (AMX / AVX512-BF16); slower on other CPUs (the run says "
    "which this one is)",
    "dtype": "the weights' dtype",
    "init_output_bias": "start the output biases at the data's per-pixel log-frequencies (NADE)",
}


@dataclasses.dataclass(frozen=True)
class TrainFlag:
    field: str  # TrainConfig's field
    dest: str  # the argparse dest (args.<dest>)
    flag: str  # --the-flag
    kind: type
    default: Any


def _train_choices(field: dataclasses.Field) -> list[str] | None:
    """The choices of a text field: its ``metadata["choices"]``, the trainer's schedules for
    lr_schedule, else the CLI's fallback."""
    if field.metadata.get("choices"):
        return list(field.metadata["choices"])
    if field.name == "lr_schedule":
        try:
            from chainrule.training.schedules import SCHEDULES

            return list(SCHEDULES)
        except ImportError:
            pass
    return TRAIN_CHOICES.get(field.name)


def train_flags() -> list[TrainFlag]:
    """The training flags, in TrainConfig's field order."""
    from chainrule.training import TrainConfig

    hints = typing.get_type_hints(TrainConfig)
    out = []
    for f in dataclasses.fields(TrainConfig):
        if f.name in TRAIN_HIDDEN:
            continue
        dest = TRAIN_FLAG_NAMES.get(f.name, f.name)
        out.append(TrainFlag(f.name, dest, flag(dest), _base_type(hints[f.name])[0], f.default))
    return out


def _models_with_own_default(field: str) -> bool:
    import chainrule
    from chainrule.models import model_class

    return any(
        field in getattr(model_class(n), "train_defaults", {}) for n in chainrule.available_models()
    )


def add_train_flags(p: argparse.ArgumentParser) -> None:
    """One flag per exposed TrainConfig field; every default None (given or not is known)."""
    from chainrule.training import TrainConfig

    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    meta = {name: f.metadata for name, f in fields.items()}
    for tf in train_flags():
        help_ = meta[tf.field].get("help") or TRAIN_HELP_FALLBACK.get(tf.field) or tf.dest
        if "default" not in help_.lower() and tf.kind is not bool:
            if _models_with_own_default(tf.field):
                help_ += " (default: the model's, below)"
            elif tf.field in TRAIN_DEFAULT_TEXT:
                help_ += f" (default{TRAIN_DEFAULT_TEXT[tf.field]})"
            else:
                help_ += f" (default {tf.default})"
        help_ = help_.replace("%", "%%")
        if tf.kind is bool:
            p.add_argument(tf.flag, dest=tf.dest, action="store_true", help=help_)
            continue
        choices = _train_choices(fields[tf.field])
        if choices:
            kind: Any = str
        elif tf.kind is int:
            kind = positive_int if tf.field in TRAIN_POSITIVE else nonneg_int
        elif tf.kind is float:
            kind = positive_float if tf.field in TRAIN_POSITIVE else nonneg_float
        else:
            kind = str
        p.add_argument(
            tf.flag,
            dest=tf.dest,
            type=kind,
            choices=choices,
            default=None,
            metavar=TRAIN_METAVARS.get(tf.field),
            help=help_,
        )


def given_train_settings(args: argparse.Namespace) -> dict[str, Any]:
    """TrainConfig fields given on the command line (a store_true flag: only when set)."""
    out = {}
    for tf in train_flags():
        v = getattr(args, tf.dest, None)
        if v is None or (tf.kind is bool and v is False):
            continue
        out[tf.field] = v
    return out
