"""Start-of-run hooks: what a recipe asks to be done to a fresh model before its first step.

A hook is a function ``hook(model, train_x)`` (``train_x``: the training images the run uses,
on the model's device) registered under a name with :func:`start_hook`; the name is also a
``bool`` field of :class:`~chainrule.training.config.TrainConfig` (so a recipe, the CLI flag
and ``config.json`` turn it on like any other option): ``init_output_bias`` is one.
:meth:`TrainConfig.hooks` lists the hooks a run asks for. They run once, on a fresh run only
(never on a resume, never for a closed-form fit), in the order registered, after the model is
on its device and before the first training state is saved.

Adding a hook: a ``bool`` field ``name: bool = False`` in ``TrainConfig`` and::

    @start_hook("name")
    def name(model, train_x): ...
"""

from __future__ import annotations

from collections.abc import Callable

import torch

StartHook = Callable[[torch.nn.Module, torch.Tensor], None]

#: name (a bool field of TrainConfig) -> hook
START_HOOKS: dict[str, StartHook] = {}


def start_hook(name: str) -> Callable[[StartHook], StartHook]:
    """Register the decorated function as the start-of-run hook ``name``."""

    def register(fn: StartHook) -> StartHook:
        START_HOOKS[name] = fn
        return fn

    return register


@start_hook("init_output_bias")
def init_output_bias(model, train_x: torch.Tensor) -> None:
    """Output biases at the data's log-frequencies (models with ``init_output_bias``, NADE)."""
    fn = getattr(model, "init_output_bias", None)
    if fn is None:
        raise ValueError(f"model {model.name!r} has no output-bias initialisation")
    fn(train_x)


def run_start_hooks(names: list[str], model, train_x: torch.Tensor) -> None:
    """Run the hooks ``names`` on ``model`` (a fresh run's, before its first step)."""
    for name in names:
        START_HOOKS[name](model, train_x)
