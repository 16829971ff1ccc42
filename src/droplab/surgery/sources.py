"""One view of a model's training-time randomness: :func:`find_dropout`.

A *source* is one place where a forward pass in training mode draws random numbers:

* a **stochastic layer** (:mod:`droplab.surgery.kinds`): torch.nn's dropout family,
  ``nn.MultiheadAttention(dropout=…)``, droplab's layers, torchvision ``StochasticDepth`` /
  ``DropBlock2d/3d``, timm ``DropPath`` / ``DropBlock2d``. Its own ``training`` flag
  switches it; its rate is an attribute (``p``, ``drop_prob``, ``dropout``).
* a **gated call**: a module whose ``forward`` calls a stochastic *function* behind its own
  ``training`` flag, e.g. ``F.dropout(x, self.drop_rate, training=self.training)``
  (torchvision DenseNet layers, timm classifier heads) or
  ``F.scaled_dot_product_attention(…, dropout_p=self.attn_drop.p if self.training else 0.)``
  (timm attention) or Swin's ``shifted_window_attention(…, training=self.training)``.

**How gated calls are found.** A module is examined when the source of its class mentions
``training`` or a stochastic call (a text pre-filter; torch.nn's own classes are covered by
the layer table). Its ``forward`` is traced with ``torch.fx`` twice, with its own
``training`` flag True and False, *every submodule a leaf* (so only this module's own
code is seen). Before tracing, each candidate rate attribute (its float attributes in
[0, 1), and the rate attribute of each stochastic child, e.g. ``attn_drop.p``) is set to a
distinct sentinel value, which identifies the attribute each traced rate argument reads
(and makes ``if self.drop_rate > 0:`` branches visible at rate 0); the attributes are
restored afterwards. The module is a gated source when the two graphs are identical once
the stochastic calls are removed, and the training graph has active stochastic calls that
the eval graph lacks or switches off. Then, and only then, MC dropout may set this one
module's ``training`` attribute to True (not its children's): that flag is shown to do
nothing but switch dropout. **Refused:** a module whose flag changes anything else
(batch-norm statistics, a different code path) is listed with ``mc=False``; a module whose
forward cannot be traced but whose source calls stochastic functions is listed as
``kind="untraced"`` with ``mc=False``. Effects that ``torch.fx`` cannot see (Python side
effects in ``forward``) are not checked.

A stochastic child that its parent never calls but reads as a rate holder (timm's fused
attention reads ``self.attn_drop.p`` and never calls ``attn_drop``) is reported once, as
the parent's ``attention`` source.
"""

from __future__ import annotations

import functools
import inspect
import re
from dataclasses import dataclass
from typing import Any

from torch import fx, nn

from droplab.surgery.kinds import (
    bound_args,
    call_is_active,
    get_rate,
    leaf_kind,
    random_call,
)
from droplab.surgery.tracing import Tracer


@dataclass
class DropoutInfo:
    """One source of training-time randomness found by :func:`find_dropout`."""

    name: str  # dotted module name in ``model.named_modules()``
    kind: str  # droplab kind: "dropout", "spatial", "droppath", "attention", "noise", …
    p: float | None  # current drop probability (None: not a readable number)
    module: nn.Module
    origin: str = "torch.nn"  # "torch.nn", "droplab", "torchvision", "timm" or "traced"
    rate_attr: str | None = "p"  # attribute of ``module`` holding the rate
    mechanism: str = "layer"  # "layer", "gated", "always" or "untraced"
    mc: bool = True  # MC dropout can make it stochastic
    replaceable: bool = True  # replace_dropout can swap it for a droplab layer
    batch_shared: bool = False  # one draw shared by the whole batch
    note: str = ""

    @property
    def surgery(self) -> bool:
        """True when set_dropout_rate and schedules can drive its rate."""
        return self.rate_attr is not None and self.p is not None

    @property
    def key(self) -> str:
        """Unique name: the module name, plus ``:attr`` for gated calls."""
        if self.mechanism == "layer":
            return self.name
        return f"{self.name}:{self.rate_attr or self.kind}"

    @property
    def active(self) -> bool:
        """True when it draws random numbers at its current rate."""
        return self.p is None or self.p > 0


# --------------------------------------------------------------------------- layers
def _layer_info(name: str, module: nn.Module) -> DropoutInfo | None:
    lk = leaf_kind(module)
    if lk is None:
        return None
    return DropoutInfo(name, lk.kind, get_rate(module, lk.rate_attr), module, lk.origin,
                       lk.rate_attr, "layer", True, lk.replaceable, lk.batch_shared(module))


# --------------------------------------------------------------------------- gated calls
_RANDOM_TEXT = re.compile(
    r"dropout\w*\(|drop_path\(|drop_block\w*\(|stochastic_depth\(|dropout_p|bernoulli"
    r"|torch\.rand|shifted_window_attention\("
)


@functools.cache
def _class_text(cls: type) -> tuple[bool, bool]:
    """(mentions ``training``, mentions a stochastic call) in the methods of ``cls`` and
    its bases below ``nn.Module`` (torch.nn's own classes excluded)."""
    training = random = False
    for c in cls.__mro__:
        if c is nn.Module or c.__module__.startswith("torch.nn"):
            continue
        for fn in vars(c).values():
            fn = getattr(fn, "__func__", fn)  # staticmethod / classmethod
            if not inspect.isfunction(fn):
                continue
            try:
                text = inspect.getsource(fn)
            except (OSError, TypeError):  # no source file (generated code)
                continue
            training = training or "training" in text
            random = random or bool(_RANDOM_TEXT.search(text))
    return training, random


def _candidates(module: nn.Module) -> dict[str, float]:
    """Attributes that may hold a drop rate: own floats in [0, 1), ``0`` ints named like a
    rate, and the rate attribute of each stochastic child."""
    out: dict[str, float] = {}
    for k, v in vars(module).items():
        if k.startswith("_") or k == "training" or isinstance(v, bool):
            continue
        if (isinstance(v, float) and 0.0 <= v < 1.0) or (isinstance(v, int) and v == 0 and ("drop" in k or "rate" in k)):
            out[k] = v
    for cname, child in module.named_children():
        lk = leaf_kind(child)
        if lk is not None and get_rate(child, lk.rate_attr) is not None:
            out[f"{cname}.{lk.rate_attr}"] = get_rate(child, lk.rate_attr)  # type: ignore[assignment]
    return out


def _assign(module: nn.Module, attr: str, value: Any) -> None:
    *path, last = attr.split(".")
    obj: Any = module
    for part in path:
        obj = getattr(obj, part)
    object.__setattr__(obj, last, value) if last in vars(obj) else setattr(obj, last, value)


def _trace_own(module: nn.Module, training: bool) -> fx.Graph:
    saved = module.training
    module.training = training
    try:
        return Tracer(children_are_leaves=True).trace(module)
    finally:
        module.training = saved


def _skeleton(graph: fx.Graph) -> list[str]:
    """The graph without its stochastic calls (each replaced by its first input)."""
    ids: dict[fx.Node, int] = {}
    out: list[str] = []
    for node in graph.nodes:
        if random_call(node) is not None:
            first = next(iter(node.all_input_nodes), None)
            ids[node] = ids.get(first, -1) if first is not None else -1
            continue
        ids[node] = len(out)
        args = fx.node.map_arg(node.args, lambda n: f"%{ids[n]}")
        kwargs = fx.node.map_arg(node.kwargs, lambda n: f"%{ids[n]}")
        target = str(node.target) if node.op != "call_function" else repr(node.target)
        out.append(repr((node.op, target, args, kwargs)))
    return out


def _calls(graph: fx.Graph) -> list[tuple[fx.Node, Any]]:
    return [(n, spec) for n in graph.nodes if (spec := random_call(n)) is not None]


def _sentinel(i: int) -> float:
    return 0.2718281828 + 1e-4 * i


@dataclass
class _Traced:
    infos: list[DropoutInfo]
    holders: set[str]  # stochastic children reported as part of this module's sources


def _examine(name: str, module: nn.Module) -> _Traced:
    cands = _candidates(module)
    sentinels = {attr: _sentinel(i) for i, attr in enumerate(cands)}
    try:
        for attr, s in sentinels.items():
            _assign(module, attr, s)
        train, ev = _trace_own(module, True), _trace_own(module, False)
    except Exception as exc:  # untraceable forward: data-dependent control flow, …
        if not _class_text(type(module))[1]:
            return _Traced([], set())
        reason = (str(exc).splitlines() or [type(exc).__name__])[0][:120]
        return _Traced([DropoutInfo(name, "untraced", None, module, "traced", None, "untraced",
                                    False, False, note=f"forward not traceable: {reason}")],
                       set())
    finally:
        for attr, v in cands.items():
            _assign(module, attr, v)
    t_calls = [(n, s) for n, s in _calls(train) if call_is_active(s, n)]
    if not t_calls:
        return _Traced([], set())
    e_active = [(n, s) for n, s in _calls(ev) if call_is_active(s, n)]
    same = _skeleton(train) == _skeleton(ev)
    by_value = {v: attr for attr, v in sentinels.items()}
    called = {str(n.target) for n in train.nodes if n.op == "call_module"}
    infos: list[DropoutInfo] = []
    holders: set[str] = set()
    gated = same and not e_active
    always = same and len(e_active) == len(t_calls)
    for node, spec in t_calls:
        args = bound_args(spec, node)
        slots = spec.rates or (("", "noise"),)
        for param, kind in slots:
            value = args.get(param) if param else None
            attr = by_value.get(value) if isinstance(value, float) else None
            if attr is not None:
                p: float | None = float(cands[attr])
                child = attr.rpartition(".")[0]
                if child and child not in called:
                    holders.add(child)
            elif isinstance(value, int | float) and not isinstance(value, bool):
                p = float(value)
            else:
                p = None
            fn = getattr(node.target, "__name__", str(node.target))
            if gated or always:
                mech = "gated" if gated else "always"
                how = (f"{fn}() switched by this module's own training flag" if gated
                       else f"{fn}() is stochastic in eval mode too")
                infos.append(DropoutInfo(name, kind, p, module, "traced", attr, mech, True,
                                         False, False, how))
            else:
                infos.append(DropoutInfo(
                    name, kind, p, module, "traced", attr, "gated", False, False, False,
                    f"{fn}() is behind the training flag, which also changes other "
                    "computations: MC cannot switch it alone"))
    return _Traced(infos, holders)


def _scalar(v: Any) -> bool:
    if isinstance(v, (list, tuple)):
        return all(_scalar(i) for i in v)
    return isinstance(v, int | float | str | bool | type(None))


def _structure(module: nn.Module) -> tuple[Any, ...]:
    """What :func:`_examine`'s verdict can depend on: the class, the plain attributes and
    the type and rate of each child (children are leaves: nothing deeper matters)."""
    scalars = tuple((k, repr(v)) for k, v in vars(module).items()
                    if k != "training" and _scalar(v))
    children = tuple((n, type(c), get_rate(c, lk.rate_attr) if (lk := leaf_kind(c)) else None)
                     for n, c in module.named_children())
    return (type(module), scalars, children)


#: verdicts by module structure: the 12 attention blocks of a ViT are traced once
_EXAMINED: dict[tuple[Any, ...], _Traced] = {}
_EXAMINED_MAX = 512


def _traced_sources(name: str, module: nn.Module) -> _Traced:
    training, random = _class_text(type(module))
    if not (training or random) or type(module).__module__.startswith("torch.nn"):
        return _Traced([], set())
    key = _structure(module)
    traced = _EXAMINED.get(key)
    if traced is None:
        traced = _examine("", module)
        if len(_EXAMINED) >= _EXAMINED_MAX:
            _EXAMINED.clear()
        _EXAMINED[key] = traced
    infos = [DropoutInfo(**{**vars(i), "name": name, "module": module}) for i in traced.infos]
    for info in infos:  # rates are read now (the key holds them, but stay exact)
        if info.rate_attr is not None:
            info.p = get_rate(module, info.rate_attr)
    return _Traced(infos, traced.holders)


# --------------------------------------------------------------------------- the view
def find_dropout(model: nn.Module) -> list[DropoutInfo]:
    """Every source of training-time randomness in ``model``, in ``named_modules`` order.

    Stochastic layers come first at their module's position, then the gated calls of that
    module (see the module docstring for how they are found and what is refused).
    """
    out: list[DropoutInfo] = []
    holders: set[str] = set()
    for name, module in model.named_modules():
        if name in holders:
            continue
        info = _layer_info(name, module)
        if info is not None:
            out.append(info)
            continue
        traced = _traced_sources(name, module)
        out += traced.infos
        holders |= {f"{name}.{h}" if name else h for h in traced.holders}
    return out


__all__ = ["DropoutInfo", "find_dropout"]
