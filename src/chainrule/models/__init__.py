"""The model zoo. Importing this package registers every model family."""

from . import fvsbn, independent, markov, table  # noqa: F401  (registration side effects)
from . import pixelrnn  # noqa: F401  (registration: pixelcnn, row-lstm, diagonal-bilstm)
from . import nade, rnade  # noqa: F401  (registration: nade, rnade)
from .base import AutoregressiveModel
from .registry import available_models, build, count_parameters, model_class

__all__ = ["AutoregressiveModel", "available_models", "build", "count_parameters", "model_class"]
