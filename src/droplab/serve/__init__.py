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

from __future__ import annotations

import importlib
from typing import Any

from droplab.serve.config import ServeConfig

#: Public name → the module defining it. Loaded on first access (PEP 562) so that
#: ``droplab.serve.config`` (the CLI's parser) imports without the optional web framework.
_LAZY = {
    "create_app": "app", "ApiError": "errors", "classifier_input": "inference",
    "classify_image": "inference", "stylize_image": "inference", "InferenceQueue": "queue",
    "QueueFull": "queue", "MAX_STYLE_SAMPLES": "registry", "ClassifierModel": "registry",
    "ServedModel": "registry", "StyleModel": "registry", "load_models": "registry",
    "BackgroundServer": "server", "bind_socket": "server", "make_server": "server",
    "serve": "server", "url_of": "server", "ALLOWED_FORMATS": "uploads", "Upload": "uploads",
    "UploadGate": "uploads", "decode_image": "uploads",
}

__all__ = ["ServeConfig", *sorted(_LAZY)]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'droplab.serve' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"droplab.serve.{_LAZY[name]}"), name)
    globals()[name] = value
    return value
