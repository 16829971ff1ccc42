"""Model zoo: image classifiers (:mod:`droplab.models.classifiers`, the airbench-style
CIFAR net in :mod:`droplab.models.airbench`, test-time augmentation in
:mod:`droplab.models.tta`); GAN and style networks live in :mod:`droplab.models.gan` and
:mod:`droplab.models.style`."""

from droplab.models import airbench as _airbench  # noqa: F401 - registers airbench models
from droplab.models.classifiers import (
    MODELS,
    WHERE,
    Classifier,
    ModelConfig,
    apply_max_norm,
    build_model,
)

__all__ = ["MODELS", "WHERE", "Classifier", "ModelConfig", "apply_max_norm", "build_model"]
