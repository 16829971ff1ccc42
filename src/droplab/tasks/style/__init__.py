"""Neural style transfer: three commands, one module each, on shared pieces.

- :mod:`.stylize` — ``droplab stylize`` (Gatys et al. 2016, optimisation);
- :mod:`.train` — ``droplab style-train`` (Johnson et al. 2016, a feed-forward network of
  any size; ``--arbitrary``: AdaIN, Huang & Belongie 2017);
- :mod:`.apply` — ``droplab style-apply`` (a trained network on images, frame folders and
  videos; any style for arbitrary models; the onnxruntime CPU path; MC variations);
- :mod:`.data` — training images and random crops; :mod:`.video` — frame sequences;
- :mod:`.colour` — colour preservation (luminance transfer, histogram matching);
- :mod:`.common` — style specs ``PATH[:WEIGHT]``, encoder and loss-weight options, targets.
"""

from droplab.tasks.style.apply import StyleApplyConfig, Stylizer, run_style_apply
from droplab.tasks.style.colour import luminance, match_histograms, rgb_to_yiq, yiq_to_rgb
from droplab.tasks.style.common import (
    EncoderConfig,
    LossWeights,
    parse_style_spec,
    parse_styles,
    style_targets,
)
from droplab.tasks.style.stylize import StylizeConfig, optimize_image, run_stylize
from droplab.tasks.style.train import (
    StyleNetConfig,
    StyleTrainConfig,
    run_style_train,
    transformer_from_config,
)

__all__ = [
    "EncoderConfig",
    "LossWeights",
    "StyleApplyConfig",
    "StyleNetConfig",
    "StyleTrainConfig",
    "StylizeConfig",
    "Stylizer",
    "luminance",
    "match_histograms",
    "optimize_image",
    "parse_style_spec",
    "parse_styles",
    "rgb_to_yiq",
    "run_style_apply",
    "run_style_train",
    "run_stylize",
    "style_targets",
    "transformer_from_config",
    "yiq_to_rgb",
]
