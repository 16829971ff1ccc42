"""The ``torch.fx`` tracer droplab uses to look inside models.

:class:`Tracer` differs from ``torch.fx.Tracer`` in four documented ways:

* **Leaves.** Stochastic layers (:func:`droplab.surgery.kinds.is_dropout`), timm's
  registered no-trace modules (when timm is imported), modules passed as ``leaves`` and,
  with ``children_are_leaves=True``, every module except the root are called as opaque
  ``call_module`` nodes, so their ``training`` flag and rate are read at run time.
* **Autowrap.** timm's registered no-trace functions are recorded as single calls, as
  timm's own feature extractor does.
* **Attribute probes.** ``hasattr(t, "logits")`` on a traced tensor answers ``False``
  (torch.fx would answer ``True`` and record a ``getattr`` that fails at run time); only
  names that exist on ``torch.Tensor`` or on ``torch.return_types`` are proxied.
* **Shape-only control flow.** Given an ``example`` input, a condition computed only from
  shapes (``x.shape[1] == 1``, ``x.dim() == 4``) is evaluated on the example instead of
  raising ``TraceError``, and unpacking or ``len`` of a shape (``*x.shape[2:]``) takes its
  length from the example (the items stay symbolic); the graph is then specialised to that
  input shape, so callers key traced graphs on it. Conditions on tensor *values* still
  raise.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import fx, nn

from droplab.surgery.kinds import is_dropout, random_call

_META_ATTRS = frozenset({"shape", "ndim", "dtype", "device", "is_cuda", "layout"})
_META_METHODS = frozenset({"size", "dim", "ndimension", "numel", "nelement", "get_device"})


@functools.cache
def _tensor_names() -> frozenset[str]:
    names = set(dir(torch.Tensor))
    for name in dir(torch.return_types):
        cls = getattr(torch.return_types, name)
        if isinstance(cls, type) and hasattr(cls, "n_fields"):
            names |= {a for a in dir(cls) if not a.startswith("_")}
    return frozenset(names)


class _Proxy(fx.Proxy):
    """A proxy that admits only tensor attribute names and, with an example input, knows
    the length of shapes (see the module docstring)."""

    def __getattr__(self, k: str) -> Any:
        if k.startswith("__") or k in _tensor_names():
            return super().__getattr__(k)
        raise AttributeError(f"traced tensor has no attribute {k!r}")

    def __len__(self) -> int:
        tracer = self.tracer
        if isinstance(tracer, Tracer) and tracer.knows(self.node):
            return len(tracer._value(self.node))
        return super().__len__()


def _timm_notrace() -> tuple[tuple[type[nn.Module], ...], tuple[Callable[..., Any], ...]]:
    if "timm" not in sys.modules:  # a timm model cannot exist before timm is imported
        return (), ()
    try:
        from timm.layers import _fx as timm_fx
    except ImportError:  # pragma: no cover - very old timm
        return (), ()
    return tuple(timm_fx.get_notrace_modules()), tuple(timm_fx.get_notrace_functions())


def _static(node: fx.Node, memo: dict[fx.Node, bool]) -> bool:
    """True when ``node`` depends on tensors only through their shapes (or not at all)."""
    if node in memo:
        return memo[node]
    if (node.op == "call_function" and node.target is getattr and node.args[1] in _META_ATTRS) or (node.op == "call_method" and node.target in _META_METHODS) or (node.op == "call_function" and node.target is len):
        result = True
    elif node.op in ("placeholder", "get_attr", "call_module") or random_call(node):
        result = False
    else:
        result = all(_static(i, memo) for i in node.all_input_nodes)
    memo[node] = result
    return result


class Tracer(fx.Tracer):
    """droplab's ``torch.fx`` tracer (see the module docstring for what it changes)."""

    def __init__(self, *, leaves: tuple[nn.Module, ...] = (), children_are_leaves: bool = False,
                 example: torch.Tensor | None = None) -> None:
        leaf_types, functions = _timm_notrace()
        super().__init__(autowrap_functions=functions)
        self._leaf_types = leaf_types
        self._leaves = {id(m) for m in leaves}
        self._children_are_leaves = children_are_leaves
        self._example = example
        self._values: dict[fx.Node, Any] = {}
        self._static: dict[fx.Node, bool] = {}

    def trace(self, root: nn.Module | Callable[..., Any],
              concrete_args: dict[str, Any] | None = None) -> fx.Graph:
        if self._example is None:
            return super().trace(root, concrete_args)
        # conditions are evaluated by running the model on the example: no autograd graph,
        # and the random draws of stochastic layers must not move the caller's RNG
        device = self._example.device
        devices = [device.index or 0] if device.type == "cuda" else []
        with torch.no_grad(), torch.random.fork_rng(devices=devices):
            return super().trace(root, concrete_args)

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if self._children_are_leaves:
            return m is not self.root
        return (id(m) in self._leaves or is_dropout(m) or isinstance(m, self._leaf_types)
                or super().is_leaf_module(m, module_qualified_name))

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return _Proxy(node, self)

    def knows(self, node: fx.Node) -> bool:
        """True when ``node`` can be evaluated on the example: it depends on shapes only."""
        return self._example is not None and _static(node, self._static)

    def to_bool(self, obj: fx.Proxy) -> bool:
        if not self.knows(obj.node):
            return super().to_bool(obj)
        return bool(self._value(obj.node))

    def iter(self, obj: fx.Proxy) -> Iterator[Any]:
        # ``*x.shape[2:]``: the length comes from the example, the items stay symbolic
        if not self.knows(obj.node):
            return super().iter(obj)
        return iter([obj[i] for i in range(len(self._value(obj.node)))])

    def _value(self, node: fx.Node) -> Any:
        """Concrete value of ``node`` on the example input (memoised)."""
        if node in self._values:
            return self._values[node]
        args = fx.node.map_arg(node.args, self._value)
        kwargs = fx.node.map_arg(node.kwargs, self._value)
        if node.op == "placeholder":
            first = next(n for n in self.graph.nodes if n.op == "placeholder")
            value = self._example if node is first else (node.args[0] if node.args else None)
        elif node.op == "get_attr":
            value = self.root
            for part in str(node.target).split("."):
                value = getattr(value, part)
        elif node.op == "call_module":
            value = self.root.get_submodule(str(node.target))(*args, **kwargs)
        elif node.op == "call_method":
            value = getattr(args[0], str(node.target))(*args[1:], **kwargs)
        else:
            value = node.target(*args, **kwargs)  # type: ignore[operator]
        self._values[node] = value
        return value


def trace(root: nn.Module, **kwargs: Any) -> fx.GraphModule:
    """Trace ``root`` with :class:`Tracer` (keyword arguments go to it)."""
    tracer = Tracer(**kwargs)
    graph = tracer.trace(root)
    return fx.GraphModule(tracer.root, graph, type(root).__name__)


__all__ = ["Tracer", "trace"]
