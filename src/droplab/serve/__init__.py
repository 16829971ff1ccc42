"""``droplab serve``: a web page and a JSON API in front of trained runs.

The server is a FastAPI (Starlette) ASGI app run by uvicorn. Each served run folder is
detected from its ``config.json``: ``"task": "train"`` and ``"finetune"`` runs become
classifiers (answered with Monte-Carlo dropout, Gal & Ghahramani 2016: the mean softmax of
``T`` stochastic passes, its predictive entropy and the mutual information / BALD score of
Houlsby et al. 2011), ``"task": "style-train"`` runs become feed-forward style networks
(Johnson et al. 2016).

One job per module:

- :mod:`~droplab.serve.config` — :class:`ServeConfig`, the options;
- :mod:`~droplab.serve.registry` — restoring served models from run folders;
- :mod:`~droplab.serve.uploads` — admission, bounded streaming, spooling, decoding;
- :mod:`~droplab.serve.queue` — the bounded inference thread pool (503 / 504);
- :mod:`~droplab.serve.inference` — classify (MC dropout) and stylize one image;
- :mod:`~droplab.serve.app` — routes, error answers, OpenAPI;
- :mod:`~droplab.serve.server` — socket, uvicorn, connection timeouts, :func:`serve`.
"""

from droplab.serve.app import create_app
from droplab.serve.config import ServeConfig
from droplab.serve.errors import ApiError
from droplab.serve.inference import classifier_input, classify_image, stylize_image
from droplab.serve.queue import InferenceQueue, QueueFull
from droplab.serve.registry import (
    MAX_STYLE_SAMPLES,
    ClassifierModel,
    ServedModel,
    StyleModel,
    load_models,
)
from droplab.serve.server import BackgroundServer, bind_socket, make_server, serve, url_of
from droplab.serve.uploads import ALLOWED_FORMATS, Upload, UploadGate, decode_image

__all__ = [
    "ALLOWED_FORMATS", "MAX_STYLE_SAMPLES", "ApiError", "BackgroundServer", "ClassifierModel",
    "InferenceQueue", "QueueFull", "ServeConfig", "ServedModel", "StyleModel", "Upload",
    "UploadGate", "bind_socket", "classifier_input", "classify_image", "create_app",
    "decode_image", "load_models", "make_server", "serve", "stylize_image", "url_of",
]
