"""The trainer's former home, kept so that ``from chainrule.train import ...`` goes on working.

Everything lives in :mod:`chainrule.training` now (options, :class:`Trainer`, the run folder,
schedules, hooks); this module only re-exports its public names.
"""

from __future__ import annotations

from .evaluate import bits_per_dim
from .training import *  # noqa: F403  (the public names, by chainrule.training.__all__)
from .training import __all__ as _training_names

__all__ = [*_training_names, "bits_per_dim"]
