"""chainrule: explicit autoregressive generative models of images.

import chainrule
model = chainrule.build("fvsbn", event_shape=(1, 8, 8), levels=2)
log_p = model.log_prob(x)          # (B,) exact, in nats
x_new = model.sample(16)           # (16, 1, 8, 8)
model = chainrule.load("pretrained:digits-ladder-nade")   # shipped weights (sha256-checked)
splits = chainrule.load_dataset("digits")  # Splits: .train/.valid/.test uint8 images, .levels

Named training recipes: :mod:`chainrule.recipes` (``chainrule recipes``,
``chainrule train --recipe NAME``); shipped weights: :mod:`chainrule.pretrained`.
"""

from .checkpoint import load, save
from .data import load_dataset
from .models import AutoregressiveModel, available_models, build, count_parameters

__version__ = "0.1.0"
__all__ = [
    "AutoregressiveModel",
    "available_models",
    "build",
    "count_parameters",
    "load",
    "load_dataset",
    "save",
    "__version__",
]
