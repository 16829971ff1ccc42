"""Retune, replace and insert dropout in any ``nn.Module``.

Selecting sources or modules (``where`` / ``after``) accepts:

* ``None`` – every source found by :func:`~droplab.surgery.find_dropout`;
* a module type (``nn.Dropout``, ``nn.Linear``, …) – ``isinstance`` match;
* a kind name (``"dropout"``, ``"droppath"``, ``"attention"``, …, or ``"kind:NAME"``);
* a name pattern (``"layer4.*"``, ``"classifier"``, ``"name:PATTERN"``) matched as a
  shell glob or a regular expression (full match) against the dotted module name or
  any of its dotted prefixes, so ``"classifier"`` selects ``classifier.2``;
* ``"head"`` (for :func:`add_dropout` / :func:`add_dropconnect`) – the final classifier
  layer, see :func:`find_head`;
* a list of any of these (union).

**Inserting keeps parameter names.** :func:`add_dropout` does not wrap its target in an
``nn.Sequential``: the target keeps its identity, parameters and buffers and gains one
parameter-free child, ``pre_dropout`` (``after="head"``) or ``post_dropout``, run before
or after its own ``forward``. This is done as ``torch.nn.utils.parametrize`` does it, by
giving the module a generated subclass of its own class; the subclass keeps its base's
``__module__`` so that ``torch.fx`` treats a torch.nn layer with a dropout slot as the
leaf it was. A state dict saved before surgery loads after it (and one saved by the old
``Sequential`` wrapping, ``fc.1.weight``, loads too). An ``nn.Sequential`` target gets the
dropout appended instead. In eval mode every inserted layer is the identity.
"""

from __future__ import annotations

import fnmatch
import functools
import re
from collections.abc import Iterable, Sequence
from typing import Any

from torch import nn

from droplab.errors import InvalidValue, check_rate
from droplab.layers import KINDS, DropConnectConv2d, DropConnectLinear, make_dropout
from droplab.surgery.kinds import is_dropout, set_rate
from droplab.surgery.sources import DropoutInfo, find_dropout

#: kind names accepted by ``where`` besides droplab's ``KINDS``
_EXTRA_KINDS = {"spatial", "feature_alpha", "dropblock3d", "attention", "noise", "untraced"}

Where = Any  # None | str | type[nn.Module] | Sequence[str | type]


def known_kinds() -> set[str]:
    """Kind names that ``where`` treats as kinds rather than name patterns."""
    return set(KINDS) | _EXTRA_KINDS


# --------------------------------------------------------------------------- selection
def _name_matches(name: str, pattern: str) -> bool:
    parts = name.split(".") if name else [""]
    prefixes = [".".join(parts[: i + 1]) for i in range(len(parts))]
    try:
        rx: re.Pattern[str] | None = re.compile(pattern)
    except re.error:
        rx = None
    return any(
        fnmatch.fnmatchcase(candidate, pattern) or (rx is not None and rx.fullmatch(candidate))
        for candidate in prefixes
    )


def _matches(name: str, module: nn.Module, kind: str | None, where: Where,
             kinds: set[str]) -> bool:
    if isinstance(where, type):
        return isinstance(module, where)
    if isinstance(where, str):
        if where.startswith("kind:"):
            return kind == where[5:]
        if where.startswith("name:"):
            return _name_matches(name, where[5:])
        if where in kinds:
            return kind == where
        return _name_matches(name, where)
    if isinstance(where, Iterable):
        return any(_matches(name, module, kind, w, kinds) for w in where)
    raise InvalidValue(
        f"where={where!r} is not a module type, kind, name pattern or list of them"
    )


def _describe(where: Where) -> str:
    if isinstance(where, type):
        return where.__name__
    if isinstance(where, str):
        return repr(where)
    if isinstance(where, Iterable):
        return "[" + ", ".join(_describe(w) for w in where) + "]"
    return repr(where)


def select_dropout(model: nn.Module, where: Where = None) -> list[DropoutInfo]:
    """The sources of ``model`` selected by ``where``; a one-line error if none."""
    found = find_dropout(model)
    if not found:
        raise InvalidValue(
            f"{type(model).__name__} has no dropout; insert some with "
            "droplab.surgery.add_dropout(model, after='head')"
        )
    if where is None:
        return found
    kinds = known_kinds()
    chosen = [d for d in found if _matches(d.name, d.module, d.kind, where, kinds)]
    if not chosen:
        names = ", ".join(f"{d.name} ({d.kind})" for d in found[:8])
        more = " …" if len(found) > 8 else ""
        raise InvalidValue(
            f"no dropout matches where={_describe(where)}; the model has: {names}{more}"
        )
    return chosen


def drivable(model: nn.Module, where: Where = None) -> dict[str, DropoutInfo]:
    """``{key: info}`` of the selected sources whose rate surgery can set; a one-line
    error when every selected source has a hard-coded or unreadable rate."""
    chosen = select_dropout(model, where)
    out = {d.key: d for d in chosen if d.surgery}
    if not out:
        d = chosen[0]
        raise InvalidValue(
            f"the selected dropout ({d.name}, {d.kind}) has no rate attribute droplab can "
            "set (a constant in forward); change the model's code or select other layers"
        )
    return out


# --------------------------------------------------------------------------- retune / replace
def set_dropout_rate(model: nn.Module, p: float, where: Where = None) -> int:
    """Set the rate of the selected sources to ``p``; return how many changed.

    Drives every source :func:`~droplab.surgery.find_dropout` reports with a rate
    attribute: torch.nn and droplab layers (``p``), torchvision ``StochasticDepth`` and
    ``DropBlock`` (``p``), timm ``DropPath`` / ``DropBlock2d`` (``drop_prob``),
    ``nn.MultiheadAttention`` (``dropout``) and gated calls (the attribute their traced
    rate argument reads, e.g. DenseNet's ``drop_rate`` or timm's ``attn_drop.p``).
    Sources already at ``p`` are not counted; sources with a hard-coded rate are skipped.
    """
    p = check_rate(p)
    changed = 0
    for info in drivable(model, where).values():
        if info.p != p:
            set_rate(info.module, info.rate_attr or "p", p)
            changed += 1
    return changed


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def replace_dropout(model: nn.Module, kind: str, where: Where = None, **kw: Any) -> int:
    """Swap every selected stochastic layer for ``droplab.layers.make_dropout(kind, p, **kw)``.

    Module names are kept; each new layer takes the old one's rate and training mode (and,
    for ``kind="droppath"`` replacing a torchvision ``StochasticDepth``, its ``mode``).
    Layers that own weights (DropConnect, ``ConcreteDropout(layer=…)``), attention dropout
    and gated calls cannot be swapped and are skipped. Returns the number replaced.
    """
    chosen = [d for d in select_dropout(model, where)
              if d.replaceable and d.mechanism == "layer"]
    if not chosen:
        raise InvalidValue(
            "none of the selected dropout can be swapped (layers with weights, attention "
            "dropout and dropout inside forward stay); use set_dropout_rate to retune them"
        )
    for info in chosen:
        extra = dict(kw)
        mode = getattr(info.module, "mode", None)
        if kind == "droppath" and "mode" not in extra and mode in ("row", "batch"):
            extra["mode"] = mode
        new = make_dropout(kind, info.p or 0.0, **extra)
        new.train(info.module.training)
        _set_submodule(model, info.name, new)
    return len(chosen)


# --------------------------------------------------------------------------- head / targets
_HEAD_ATTRS = ("head", "fc", "classifier")


def find_head(model: nn.Module) -> str:
    """Dotted name of the final classifier layer of ``model``.

    Looks at the ``.head``, ``.fc`` and ``.classifier`` attributes in that order: a
    ``Linear``/``Conv`` there is the head; inside a container the last ``nn.Linear`` is
    (torchvision ``vgg11`` → ``classifier.6``, ``mobilenet_v3_small`` → ``classifier.3``,
    ``resnet18`` → ``fc``). Otherwise the last ``nn.Linear`` of the whole model.
    """
    layer_types = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.LazyLinear)
    for attr in _HEAD_ATTRS:
        sub = getattr(model, attr, None)
        if not isinstance(sub, nn.Module):
            continue
        if isinstance(sub, layer_types) or (is_dropout(sub) and _owns_weights(sub)):
            return attr
        inner = [n for n, m in sub.named_modules() if n and isinstance(m, nn.Linear)]
        if inner:
            return f"{attr}.{inner[-1]}"
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise InvalidValue(
            f"cannot find a classifier head in {type(model).__name__} (no .head/.fc/.classifier "
            "and no nn.Linear); pass after=<module type or name pattern>"
        )
    return linears[-1]


def _owns_weights(module: nn.Module) -> bool:
    return isinstance(getattr(module, "weight", None), nn.Parameter) or any(
        True for _ in module.children())


def _raw_weight_reader(model: nn.Module, name: str) -> str | None:
    """The parent's name when the parent reads ``name``'s weights without calling it."""
    parent_name = name.rpartition(".")[0]
    parent = model.get_submodule(parent_name) if parent_name else model
    if isinstance(parent, nn.MultiheadAttention):
        return parent_name
    return None


def _select_targets(model: nn.Module, where: Where, what: str,
                    allowed: tuple[type[nn.Module], ...] | None = None) -> list[str]:
    if isinstance(where, str) and where == "head":
        names = [find_head(model)]
    else:
        kinds = known_kinds()
        names = []
        for name, m in model.named_modules():
            if not name or is_dropout(m):
                continue
            if allowed is not None and not isinstance(m, allowed):
                continue
            if not _matches(name, m, None, where, kinds):
                continue
            # keep the outermost match only: wrapping a child of a wrapped module is ambiguous
            if any(name.startswith(prev + ".") for prev in names):
                continue
            names.append(name)
    if not names:
        raise InvalidValue(
            f"no module matches {what}={_describe(where)} in {type(model).__name__}; "
            "use a module type (e.g. nn.Linear), a name pattern (e.g. 'layer4.*') or 'head'"
        )
    for name in names:
        reader = _raw_weight_reader(model, name)
        if reader is not None:
            raise InvalidValue(
                f"{name} is read as raw weights by its nn.MultiheadAttention parent {reader} "
                f"(its forward is never called), so surgery there would do nothing; leave it "
                f"out of {what}= (set the attention's own dropout with set_dropout_rate)"
            )
    return names


# --------------------------------------------------------------------------- dropout slots
class _Slot(nn.Module):
    """Mixin of the generated ``<Class>WithDropout`` classes (see the module docstring)."""

    _slot_base: type[nn.Module]
    _slot_before: bool

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        base_forward = self._slot_base.forward
        if self._slot_before:
            return base_forward(self, self.pre_dropout(args[0]), *args[1:], **kwargs)
        return self.post_dropout(base_forward(self, *args, **kwargs))

    def __reduce_ex__(self, protocol: Any) -> Any:  # pickle / deepcopy by the base class
        return (_rebuild_slot, (self._slot_base, self._slot_before), self.__getstate__())


def _rebuild_slot(base: type[nn.Module], before: bool) -> nn.Module:
    cls = _slot_class(base, before)
    return cls.__new__(cls)


@functools.cache
def _slot_class(base: type[nn.Module], before: bool) -> type[nn.Module]:
    name = f"{base.__name__}With{'Pre' if before else 'Post'}Dropout"
    return type(name, (_Slot, base), {"_slot_base": base, "_slot_before": before,
                                      "__module__": base.__module__, "__qualname__": name})


def _legacy_names(module: nn.Module, state_dict: dict[str, Any], prefix: str,
                  *args: Any) -> None:
    """Load state dicts saved when add_dropout wrapped modules in ``nn.Sequential``."""
    before = getattr(module, "_slot_before", False)
    own, slot = ("1.", "0.") if before else ("0.", "1.")
    slot_name = "pre_dropout." if before else "post_dropout."
    if not any(k.startswith(prefix + own) for k in state_dict):
        return
    if any(k.startswith(prefix) and not k.startswith((prefix + own, prefix + slot))
           for k in state_dict):
        return  # current names present: nothing to translate
    for key in [k for k in state_dict if k.startswith((prefix + own, prefix + slot))]:
        rest = key[len(prefix) + 2:]
        new = prefix + (rest if key.startswith(prefix + own) else slot_name + rest)
        state_dict[new] = state_dict.pop(key)


_TUPLE_OUTPUTS = (nn.MultiheadAttention, nn.RNNBase, nn.Transformer, nn.TransformerDecoder)


def _insert(model: nn.Module, name: str, drop: nn.Module, before: bool) -> None:
    target = model.get_submodule(name)
    if isinstance(target, (nn.ModuleList, nn.ModuleDict, *_TUPLE_OUTPUTS)):
        raise InvalidValue(
            f"{name} is a {type(target).__name__}, which has no single tensor output to "
            "drop; choose the layer before or after it"
        )
    if isinstance(target, nn.Sequential) and not before:
        target.append(drop)
        return
    slot = "pre_dropout" if before else "post_dropout"
    if isinstance(target, _Slot) or hasattr(target, slot):
        raise InvalidValue(
            f"{name} already has a dropout slot ({slot}); change its rate with "
            "droplab.surgery.set_dropout_rate"
        )
    if isinstance(target, nn.Sequential):
        raise InvalidValue(
            f"{name} is an nn.Sequential; put dropout before its first layer instead"
        )
    target.__class__ = _slot_class(type(target), before)
    target.add_module(slot, drop)
    target.register_load_state_dict_pre_hook(_legacy_names)


def add_dropout(model: nn.Module, after: Where = "head", kind: str = "dropout",
                p: float = 0.5, **kw: Any) -> list[str]:
    """Insert dropout into ``model`` in place; return the names of the modules given one.

    ``after="head"`` puts one dropout layer *before* the final classifier layer
    (:func:`find_head`), the classic dropout head. A module type or name pattern puts a
    dropout layer *after* every matching module (outermost matches only). ``kind`` and
    ``**kw`` go to ``droplab.layers.make_dropout``. Parameter names are kept (module
    docstring); eval-mode outputs are unchanged.
    """

    p = check_rate(p)
    targets = _select_targets(model, after, "after")
    before = isinstance(after, str) and after == "head"
    for name in targets:
        old = model.get_submodule(name)
        drop = make_dropout(kind, p, **kw)
        drop.train(old.training)
        _insert(model, name, drop, before)
    return targets


def add_dropconnect(model: nn.Module, p: float = 0.5, where: Where = "head") -> list[str]:
    """Wrap ``nn.Linear`` / ``nn.Conv2d`` layers in DropConnect (Wan et al., 2013) in place.

    Uses ``DropConnectLinear.from_module`` / ``DropConnectConv2d.from_module``, which keep
    the weights, bias (or its absence) and conv geometry, so eval outputs are unchanged and
    parameter names stay the same. ``where`` defaults to ``"head"`` (the final classifier
    layer); a type or name pattern wraps every matching ``Linear``/``Conv2d``. Refused in
    one line: subclasses with their own ``forward`` (e.g. timm's weight-standardised
    ``StdConv2d``: DropConnect would bypass what that forward does to the weights), and
    layers whose parent reads their weights directly (``nn.MultiheadAttention.out_proj``).
    Returns the wrapped names.
    """
    p = check_rate(p)
    targets = _select_targets(model, where, "where", (nn.Linear, nn.Conv2d))
    for name in targets:
        old = model.get_submodule(name)
        base = nn.Linear if isinstance(old, nn.Linear) else nn.Conv2d
        own = old._slot_base if isinstance(old, _Slot) else type(old)
        if own.forward is not base.forward:
            raise InvalidValue(
                f"{name} is a {type(old).__name__} with its own forward; DropConnect would "
                f"replace it by a plain {base.__name__}'s and change its outputs; leave it "
                "out of where="
            )
    for name in targets:
        old = model.get_submodule(name)
        wrap = DropConnectLinear if isinstance(old, nn.Linear) else DropConnectConv2d
        new = wrap.from_module(old, p)
        new.train(old.training)
        if isinstance(old, _Slot):  # keep a dropout slot add_dropout gave the layer
            slot = "pre_dropout" if old._slot_before else "post_dropout"
            new.__class__ = _slot_class(type(new), old._slot_before)
            new.add_module(slot, getattr(old, slot))
            new.register_load_state_dict_pre_hook(_legacy_names)
        _set_submodule(model, name, new)
    return targets


def dropout_modules(model: nn.Module,
                    modules: Where | Sequence[nn.Module] = None) -> dict[str, DropoutInfo]:
    """``{key: info}`` of the drivable sources selected by ``modules``, which may also be a
    list of module objects of ``model`` (used by :class:`droplab.schedules.DropoutScheduler`)."""
    if isinstance(modules, (list, tuple)) and modules and all(
        isinstance(m, nn.Module) for m in modules
    ):
        wanted = {id(m) for m in modules}
        found = {d.key: d for d in find_dropout(model) if id(d.module) in wanted and d.surgery}
        if len({id(d.module) for d in found.values()}) != len(wanted):
            raise InvalidValue(
                "some of the given modules are not dropout of this model; pass modules of "
                "the model or name patterns"
            )
        return found
    return drivable(model, modules)


__all__ = [
    "add_dropconnect", "add_dropout", "drivable", "dropout_modules", "find_head",
    "known_kinds", "replace_dropout", "select_dropout", "set_dropout_rate",
]
