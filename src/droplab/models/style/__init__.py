"""Style-transfer networks, perceptual encoders and losses.

- :mod:`.transformer` — the feed-forward net of Johnson et al. 2016 with a size option
  (:data:`PRESETS`: ``johnson``, ``fast``) and spatial dropout;
- :mod:`.adain` — arbitrary style in one network (Huang & Belongie 2017);
- :mod:`.encoders` — offline encoders: the shipped CIFAR-10 encoder droplab trained,
  random encoders, a multi-scale random filter bank; :mod:`.vgg` — VGG-19;
- :mod:`.build` — which encoder ``auto`` runs, and networks from checkpoint configs;
- :mod:`.losses` — Gram, moment, content and TV losses, SWAG smoothing;
- :mod:`.onnx` — ONNX export and the onnxruntime CPU path (graph optimisation, int8).

Images enter every network as float tensors in [0, 1].
"""

from droplab.models.style.adain import AdaINNet, adain
from droplab.models.style.build import (
    ENCODERS,
    OFFLINE_DEFAULT,
    build_encoder,
    build_style_net,
)
from droplab.models.style.encoders import (
    CIFAR_WEIGHTS,
    Encoder,
    EnsembleEncoder,
    RandomEncoder,
    RandomFilterBank,
    TrainedEncoder,
    cifar_encoder,
    encoder_weights_from_classifier,
    load_encoder_weights,
    random_encoder,
    weights_path,
)
from droplab.models.style.losses import (
    content_loss,
    gram,
    mean_std,
    moment_loss,
    style_loss,
    swag,
    tv_loss,
)
from droplab.models.style.onnx import (
    QUANTIZE,
    OnnxStylizer,
    export_onnx,
    onnx_stylize,
    style_graph_path,
)
from droplab.models.style.transformer import (
    DROPOUT_PLACES,
    PADDINGS,
    PRESETS,
    ConvLayer,
    ResidualBlock,
    SeparableConv,
    TransformerNet,
    UpsampleConvLayer,
    net_options,
    spatial_dropout,
)
from droplab.models.style.vgg import (
    VGGEncoder,
    download_failed_marker,
    load_vgg19_features,
    vgg19_weights_path,
)

__all__ = [
    "CIFAR_WEIGHTS",
    "DROPOUT_PLACES",
    "ENCODERS",
    "OFFLINE_DEFAULT",
    "PADDINGS",
    "PRESETS",
    "QUANTIZE",
    "AdaINNet",
    "ConvLayer",
    "Encoder",
    "EnsembleEncoder",
    "OnnxStylizer",
    "RandomEncoder",
    "RandomFilterBank",
    "ResidualBlock",
    "SeparableConv",
    "TrainedEncoder",
    "TransformerNet",
    "UpsampleConvLayer",
    "VGGEncoder",
    "adain",
    "build_encoder",
    "build_style_net",
    "cifar_encoder",
    "content_loss",
    "download_failed_marker",
    "encoder_weights_from_classifier",
    "export_onnx",
    "gram",
    "load_encoder_weights",
    "load_vgg19_features",
    "mean_std",
    "moment_loss",
    "net_options",
    "onnx_stylize",
    "random_encoder",
    "spatial_dropout",
    "style_graph_path",
    "style_loss",
    "swag",
    "tv_loss",
    "vgg19_weights_path",
    "weights_path",
]
