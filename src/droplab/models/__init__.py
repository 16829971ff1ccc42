"""Model zoo: image classifiers (:mod:`droplab.models.classifiers`); GAN and style
networks live in :mod:`droplab.models.gan` and :mod:`droplab.models.style`."""

from droplab.models.classifiers import (
    MODELS,
    WHERE,
    Classifier,
    ModelConfig,
    apply_max_norm,
    build_model,
)

__all__ = ["MODELS", "WHERE", "Classifier", "ModelConfig", "apply_max_norm", "build_model"]
