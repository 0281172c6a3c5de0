"""The trainer's former home, kept so that ``from chainrule.train import ...`` goes on working.

Everything lives in :mod:`chainrule.training` now (options, :class:`Trainer`, the run folder,
schedules, hooks); this module only re-exports its public names.
"""

from __future__ import annotations

from . import training as _training
from .evaluate import bits_per_dim

globals().update({name: getattr(_training, name) for name in _training.__all__})

__all__ = [*_training.__all__, "bits_per_dim"]
