"""The model zoo. Importing this package registers every model family."""

from . import (  # noqa: F401  (registration side effects)  # noqa: F401  (registration: nade, rnade)
    deepnade,
    fvsbn,
    independent,
    made,
    markov,
    mixture,
    nade,
    pixelrnn,  # noqa: F401  (registration: pixelcnn, row-lstm, diagonal-bilstm)
    rnade,
    table,
)
from .base import AutoregressiveModel
from .registry import available_models, build, count_parameters, model_class

__all__ = ["AutoregressiveModel", "available_models", "build", "count_parameters", "model_class"]
