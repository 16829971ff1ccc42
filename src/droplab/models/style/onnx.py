"""ONNX export and the onnxruntime CPU inference path of both style networks.

- :func:`export_onnx` writes a :class:`~.transformer.TransformerNet` (one graph:
  ``image → stylized``) or an :class:`~.adain.AdaINNet` (two graphs: the transform
  ``image, style_mean, style_std, alpha → stylized`` and, beside it, ``<name>.style.onnx``:
  ``style → style_mean, style_std``). Dropout is off (eval mode); batch, height and width
  are dynamic (height and width multiples of :func:`multiple_of`).
- :class:`OnnxStylizer` runs them in ``onnxruntime`` sessions built from memory (no file
  needed): graph optimisation ``ORT_ENABLE_ALL`` (constant folding, node fusions, the
  NCHWc layout transform of MLAS), and optional int8 quantisation through onnxruntime's
  own tools — ``dynamic`` (weights int8, activations quantised on the fly:
  ``quantize_dynamic``) or ``static`` (QDQ with activation ranges calibrated on images:
  ``quantize_static``). Measured in ``benchmarks/style.py`` (README "Fast feed-forward").

``onnxruntime`` is an optional dependency (``pip install droplab[onnx]``): it is imported
inside the functions that need it, and a missing install is a one-line error.
"""

from __future__ import annotations

import io
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from droplab.errors import InvalidValue, UserError
from droplab.fileio import atomic_write_bytes
from droplab.models.style.adain import AdaINNet, export_graphs
from droplab.models.style.transformer import TransformerNet

QUANTIZE = ("none", "dynamic", "static")
StyleNet = TransformerNet | AdaINNet


class _Multiple4(nn.Module):
    def __init__(self, net: TransformerNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward_multiple_of_4(x)


def multiple_of(net: StyleNet) -> int:
    """Height and width the exported graph needs to be multiples of."""
    return net.multiple if isinstance(net, AdaINNet) else 4


def style_graph_path(path: str | Path) -> Path:
    """The style-encoder graph written beside an AdaIN transform graph."""
    p = Path(path)
    return p.with_name(f"{p.stem}.style{p.suffix or '.onnx'}")


def _export(module: nn.Module, args: tuple[torch.Tensor, ...], inputs: Sequence[str],
            outputs: Sequence[str], dynamic: dict[str, dict[int, str]]) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings about shape arithmetic
        torch.onnx.export(module, args, buf, dynamo=False, opset_version=17,
                          input_names=list(inputs), output_names=list(outputs),
                          dynamic_axes=dynamic)
    return buf.getvalue()


def onnx_graphs(net: StyleNet, size: int = 256) -> dict[str, bytes]:
    """The serialised graphs of ``net`` in eval mode: ``{"transform": …[, "style": …]}``."""
    was_training = net.training
    net.eval()
    img = {0: "batch", 2: "height", 3: "width"}
    try:
        with torch.no_grad():
            if isinstance(net, TransformerNet):
                return {"transform": _export(
                    _Multiple4(net), (torch.rand(1, 3, size, size),), ["image"], ["stylized"],
                    {"image": img, "stylized": img})}
            transform, style = export_graphs(net)
            c = net.config["encoder_widths"][-1]
            dummy = torch.rand(1, 3, size, size)
            mean, std = torch.rand(1, c), torch.rand(1, c) + 0.5
            return {
                "transform": _export(
                    transform, (dummy, mean, std, torch.ones(1)),
                    ["image", "style_mean", "style_std", "alpha"], ["stylized"],
                    {"image": img, "stylized": img, "style_mean": {0: "batch"},
                     "style_std": {0: "batch"}}),
                "style": _export(style, (dummy,), ["style"], ["style_mean", "style_std"],
                                 {"style": img, "style_mean": {0: "batch"},
                                  "style_std": {0: "batch"}}),
            }
    finally:
        net.train(was_training)


def export_onnx(net: StyleNet, path: str | Path, size: int = 256) -> Path:
    """Write ``net``'s graph(s) atomically (the AdaIN style graph: :func:`style_graph_path`)."""
    path = Path(path)
    graphs = onnx_graphs(net, size)
    if "style" in graphs:
        atomic_write_bytes(style_graph_path(path), graphs["style"])
    atomic_write_bytes(path, graphs["transform"])
    return path


def _ort() -> Any:
    try:
        import onnxruntime  # optional dependency (pip install droplab[onnx])
    except ImportError:
        raise UserError("the ONNX path needs onnxruntime: pip install 'droplab[onnx]' "
                        "(or use --engine torch)") from None
    return onnxruntime


def quantize(graph: bytes, mode: str, calibration: Sequence[np.ndarray] = ()) -> bytes:
    """int8 quantisation of a transform graph with onnxruntime's tools.

    ``dynamic``: ``quantize_dynamic`` (Conv → ConvInteger, weights uint8);
    ``static``: ``quantize_static`` in QDQ format, activation ranges calibrated on the
    ``calibration`` inputs (``{"image": …}`` arrays; TransformerNet only).
    """
    if mode not in QUANTIZE:
        raise InvalidValue(f"unknown quantisation {mode!r}; choose one of: {', '.join(QUANTIZE)}")
    if mode == "none":
        return graph
    _ort()
    from onnxruntime import quantization as q  # optional dependency, as above

    with tempfile.TemporaryDirectory(prefix="droplab-quant-") as tmp:
        src, dst = Path(tmp) / "float.onnx", Path(tmp) / "int8.onnx"
        src.write_bytes(graph)
        if mode == "dynamic":
            q.quantize_dynamic(src, dst, weight_type=q.QuantType.QUInt8,
                               op_types_to_quantize=["Conv"])
        else:
            if not calibration:
                raise InvalidValue("static quantisation needs calibration images")

            class Reader(q.CalibrationDataReader):
                def __init__(self) -> None:
                    self.items = iter([{"image": a} for a in calibration])

                def get_next(self) -> dict[str, np.ndarray] | None:
                    return next(self.items, None)

            q.quantize_static(src, dst, Reader(), quant_format=q.QuantFormat.QDQ,
                              activation_type=q.QuantType.QUInt8,
                              weight_type=q.QuantType.QInt8, per_channel=True,
                              op_types_to_quantize=["Conv"])
        return dst.read_bytes()


def session(graph: bytes, threads: int | None = None, optimize: bool = True) -> Any:
    """An onnxruntime CPU session for a serialised graph."""
    ort = _ort()
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                     else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(graph, opts, providers=["CPUExecutionProvider"])


class OnnxStylizer:
    """A style network run by onnxruntime on the CPU (eval mode: no dropout).

    Call :meth:`__call__` for a TransformerNet, :meth:`style_stats` and :meth:`stylize`
    for an AdaIN net; inputs and outputs are torch tensors in [0, 1], any height/width.
    """

    def __init__(self, net: StyleNet, *, quantization: str = "none",
                 calibration: Sequence[torch.Tensor] = (), threads: int | None = None,
                 optimize: bool = True) -> None:
        self.kind = net.kind
        self.multiple = multiple_of(net)
        graphs = onnx_graphs(net)
        cal = [self._padded(x).numpy() for x in calibration]
        self.transform = session(quantize(graphs["transform"], quantization, cal), threads,
                                 optimize)
        self.style = session(graphs["style"], threads, optimize) if "style" in graphs else None
        self.quantization = quantization

    def _padded(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        ph, pw = (-h) % self.multiple, (-w) % self.multiple
        x = x.detach().float().cpu()
        return F.pad(x, (0, pw, 0, ph), mode="reflect") if ph or pw else x

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind != "transformer":
            raise InvalidValue("an arbitrary-style model needs a style: use stylize()")
        h, w = x.shape[-2:]
        out = self.transform.run(None, {"image": self._padded(x).numpy()})[0]
        return torch.from_numpy(out)[..., :h, :w]

    def style_stats(self, style: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.style is None:
            raise InvalidValue("this model has no style input")
        mean, std = self.style.run(None, {"style": self._padded(style).numpy()})
        return torch.from_numpy(mean), torch.from_numpy(std)

    def stylize(self, x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
                alpha: float = 1.0) -> torch.Tensor:
        h, w = x.shape[-2:]
        b = x.shape[0]
        feed = {"image": self._padded(x).numpy(),
                "style_mean": mean.expand(b, -1).contiguous().float().numpy(),
                "style_std": std.expand(b, -1).contiguous().float().numpy(),
                "alpha": np.array([alpha], dtype=np.float32)}
        out = self.transform.run(None, feed)[0]
        return torch.from_numpy(out)[..., :h, :w]


def onnx_stylize(session_: Any, x: torch.Tensor) -> torch.Tensor:
    """Run an exported TransformerNet graph in an ``onnxruntime.InferenceSession``."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % 4, (-w) % 4
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode="reflect")
    out = session_.run(None, {"image": x.detach().cpu().numpy()})[0]
    return torch.from_numpy(out)[..., :h, :w]
