"""Find, retune, replace and insert dropout in any ``nn.Module``.

Works on torch.nn dropout modules (``nn.Dropout``, ``nn.Dropout1d/2d/3d``,
``nn.AlphaDropout``, ``nn.FeatureAlphaDropout``) and on every droplab
:class:`~droplab.layers.DropoutModule`, and on third-party models such as torchvision's
``resnet18``, ``vgg11`` and ``mobilenet_v3_small``.

Selecting modules (``where`` / ``after``) accepts:

* ``None`` – every dropout module (for :func:`set_dropout_rate`);
* a module type (``nn.Dropout``, ``nn.Linear``, …) – ``isinstance`` match;
* a kind name (``"dropout"``, ``"spatial"``, ``"alpha"``, …, or ``"kind:NAME"``);
* a name pattern (``"layer4.*"``, ``"classifier"``, ``"name:PATTERN"``) matched as a
  shell glob or a regular expression (full match) against the dotted module name or
  any of its dotted prefixes, so ``"classifier"`` selects ``classifier.2``;
* ``"head"`` (for :func:`add_dropout` / :func:`add_dropconnect`) – the final classifier
  layer, see :func:`find_head`;
* a list of any of these (union).

Inserting a module wraps the target in ``nn.Sequential``: :func:`add_dropout` turns
``fc`` into ``fc = Sequential(fc, Dropout)`` (or ``Sequential(Dropout, fc)`` for
``"head"``), so parameter names gain a ``.0``/``.1`` component. Load pretrained weights
*before* surgery. In eval mode every inserted layer is the identity, so eval outputs are
unchanged.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from droplab.errors import InvalidValue, check_rate, unknown_name

#: torch.nn dropout classes and the droplab kind they correspond to
TORCH_DROPOUT_KINDS: dict[type[nn.Module], str] = {
    nn.Dropout: "dropout",
    nn.Dropout1d: "spatial",
    nn.Dropout2d: "spatial",
    nn.Dropout3d: "spatial",
    nn.AlphaDropout: "alpha",
    nn.FeatureAlphaDropout: "feature_alpha",
}

#: kind names accepted by ``where`` even before :mod:`droplab.layers` defines ``KINDS``
_BASE_KINDS = {"dropout", "spatial", "gaussian", "alpha", "feature_alpha", "dropconnect",
               "dropblock", "droppath", "concrete"}

Where = Any  # None | str | type[nn.Module] | Sequence[str | type]


@dataclass
class DropoutInfo:
    """One dropout module found by :func:`find_dropout`."""

    name: str  # dotted name in ``model.named_modules()``
    kind: str  # droplab kind, e.g. "dropout", "spatial", "alpha"
    p: float  # current drop probability
    module: nn.Module


def _dropout_base() -> type[nn.Module] | None:
    try:
        from droplab.layers import DropoutModule
    except ImportError:  # pragma: no cover - layers.py always defines it
        return None
    return DropoutModule


def is_dropout(module: nn.Module) -> bool:
    """True for torch.nn dropout modules and droplab ``DropoutModule`` subclasses."""
    base = _dropout_base()
    return isinstance(module, nn.modules.dropout._DropoutNd) or (
        base is not None and isinstance(module, base)
    )


def dropout_kind(module: nn.Module) -> str:
    """The droplab kind name of a dropout module (``"dropout"``, ``"spatial"``, …)."""
    for cls in type(module).__mro__:
        if cls in TORCH_DROPOUT_KINDS:
            return TORCH_DROPOUT_KINDS[cls]
    return str(getattr(module, "kind", type(module).__name__.lower()))


def _is_weight_wrapper(module: nn.Module) -> bool:
    """DropConnect modules (own weights) and ConcreteDropout with a ``layer`` (own a child)
    are layers, not just masks: replacing them would lose the layer."""
    if isinstance(module, nn.modules.dropout._DropoutNd):
        return False
    return isinstance(getattr(module, "weight", None), nn.Parameter) or any(
        True for _ in module.children()
    )


def known_kinds() -> set[str]:
    """Kind names that ``where`` treats as kinds rather than name patterns."""
    kinds = set(_BASE_KINDS)
    try:
        from droplab.layers import KINDS  # type: ignore[attr-defined]

        kinds |= set(KINDS)
    except ImportError:
        pass
    return kinds


def find_dropout(model: nn.Module) -> list[DropoutInfo]:
    """Every torch.nn and droplab dropout module of ``model``, in ``named_modules`` order."""
    return [
        DropoutInfo(name, dropout_kind(m), float(m.p), m)
        for name, m in model.named_modules()
        if is_dropout(m)
    ]


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


def _matches(name: str, module: nn.Module, where: Where, kinds: set[str]) -> bool:
    if isinstance(where, type):
        return isinstance(module, where)
    if isinstance(where, str):
        if where.startswith("kind:"):
            return is_dropout(module) and dropout_kind(module) == where[5:]
        if where.startswith("name:"):
            return _name_matches(name, where[5:])
        if where in kinds:
            return is_dropout(module) and dropout_kind(module) == where
        return _name_matches(name, where)
    if isinstance(where, Iterable):
        return any(_matches(name, module, w, kinds) for w in where)
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
    """The dropout modules of ``model`` selected by ``where``; a one-line error if none."""
    found = find_dropout(model)
    if not found:
        raise InvalidValue(
            f"{type(model).__name__} has no dropout modules; insert some with "
            "droplab.surgery.add_dropout(model, after='head')"
        )
    if where is None:
        return found
    kinds = known_kinds()
    chosen = [d for d in found if _matches(d.name, d.module, where, kinds)]
    if not chosen:
        names = ", ".join(f"{d.name} ({d.kind})" for d in found[:8])
        more = " …" if len(found) > 8 else ""
        raise InvalidValue(
            f"no dropout module matches where={_describe(where)}; the model has: {names}{more}"
        )
    return chosen


# --------------------------------------------------------------------------- retune / replace
def set_dropout_rate(model: nn.Module, p: float, where: Where = None) -> int:
    """Set the rate of the selected dropout modules to ``p``; return how many changed.

    ``where`` selects modules (see the module docstring). ``p`` is validated with
    :func:`~droplab.errors.check_rate`; modules that already have rate ``p`` are not counted.
    """
    p = check_rate(p)
    changed = 0
    for info in select_dropout(model, where):
        if float(info.module.p) != p:
            info.module.p = p
            changed += 1
    return changed


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def replace_dropout(model: nn.Module, kind: str, where: Where = None, **kw: Any) -> int:
    """Swap every selected dropout module for ``droplab.layers.make_dropout(kind, p_old, **kw)``.

    Module names (and so ``state_dict`` keys of other layers) are kept; each new module
    takes the old one's rate and training mode. DropConnect wrappers (which own weights)
    are skipped. Returns the number of modules replaced.
    """
    from droplab import layers

    make = getattr(layers, "make_dropout", None)
    if make is None:  # pragma: no cover - until droplab.layers.make_dropout lands
        raise InvalidValue("droplab.layers.make_dropout is not available in this install")
    chosen = [d for d in select_dropout(model, where) if not _is_weight_wrapper(d.module)]
    if not chosen:
        raise InvalidValue(
            "only layers with weights (DropConnect, ConcreteDropout(layer=…)) matched; "
            "replace_dropout swaps plain dropout layers"
        )
    for info in chosen:
        new = make(kind, info.p, **kw)
        new.train(info.module.training)
        _set_submodule(model, info.name, new)
    return len(chosen)


# --------------------------------------------------------------------------- insertion
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
        if isinstance(sub, layer_types) or (is_dropout(sub) and _is_weight_wrapper(sub)):
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


def _select_targets(model: nn.Module, where: Where, what: str,
                    allowed: tuple[type[nn.Module], ...] | None = None) -> list[str]:
    if isinstance(where, str) and where == "head":
        return [find_head(model)]
    kinds = known_kinds()
    names = []
    for name, m in model.named_modules():
        if not name or is_dropout(m):
            continue
        if allowed is not None and not isinstance(m, allowed):
            continue
        if not _matches(name, m, where, kinds):
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
    return names


def add_dropout(model: nn.Module, after: Where = "head", kind: str = "dropout",
                p: float = 0.5, **kw: Any) -> list[str]:
    """Insert dropout into ``model`` in place; return the names of the wrapped modules.

    ``after="head"`` puts one dropout layer *before* the final classifier layer
    (:func:`find_head`), the classic dropout head. A module type or name pattern puts a
    dropout layer *after* every matching module (outermost matches only). ``kind`` and
    ``**kw`` go to ``droplab.layers.make_dropout``; ``kind="dropout"`` falls back to
    ``nn.Dropout`` while ``make_dropout`` is unavailable. Eval-mode outputs are unchanged.
    """
    p = check_rate(p)
    targets = _select_targets(model, after, "after")

    def build() -> nn.Module:
        from droplab import layers

        make = getattr(layers, "make_dropout", None)
        if make is not None:
            return make(kind, p, **kw)
        if kind != "dropout":  # pragma: no cover - until make_dropout lands
            raise unknown_name("dropout kind", kind, ["dropout"])
        return nn.Dropout(p)

    for name in targets:
        old = model.get_submodule(name)
        drop = build()
        drop.train(old.training)
        pair = [drop, old] if after == "head" else [old, drop]
        new = nn.Sequential(*pair)
        new.train(old.training)
        _set_submodule(model, name, new)
    return targets


def add_dropconnect(model: nn.Module, p: float = 0.5, where: Where = "head") -> list[str]:
    """Wrap ``nn.Linear`` / ``nn.Conv2d`` layers in DropConnect (Wan et al., 2013) in place.

    Uses ``DropConnectLinear.from_module`` / ``DropConnectConv2d.from_module``, which keep
    the weights, bias and conv geometry, so eval outputs are unchanged and module names
    stay the same. ``where`` defaults to ``"head"`` (the final classifier layer); a type or
    name pattern wraps every matching ``Linear``/``Conv2d``. Returns the wrapped names.
    """
    from droplab import layers

    p = check_rate(p)
    lin = getattr(layers, "DropConnectLinear", None)
    conv = getattr(layers, "DropConnectConv2d", None)
    if lin is None or conv is None:  # pragma: no cover - until the classes land
        raise InvalidValue("droplab.layers has no DropConnectLinear/DropConnectConv2d yet")
    targets = _select_targets(model, where, "where", (nn.Linear, nn.Conv2d))
    for name in targets:
        old = model.get_submodule(name)
        if isinstance(old, nn.Linear):
            new = lin.from_module(old, p)
        elif isinstance(old, nn.Conv2d):
            new = conv.from_module(old, p)
        else:
            raise InvalidValue(
                f"{name} is a {type(old).__name__}; DropConnect wraps nn.Linear and nn.Conv2d only"
            )
        new.train(old.training)
        _set_submodule(model, name, new)
    return targets


def dropout_modules(model: nn.Module,
                    modules: Where | Sequence[nn.Module] = None) -> dict[str, nn.Module]:
    """``{name: module}`` of the selected dropout modules; ``modules`` may also be a list of
    module objects belonging to ``model`` (used by :class:`droplab.schedules.DropoutScheduler`)."""
    if isinstance(modules, (list, tuple)) and modules and all(
        isinstance(m, nn.Module) for m in modules
    ):
        by_id = {id(m): n for n, m in model.named_modules()}
        out = {}
        for m in modules:
            if id(m) not in by_id or not is_dropout(m):
                raise InvalidValue(
                    f"{type(m).__name__} is not a dropout module of this model; pass modules of "
                    "the model or name patterns"
                )
            out[by_id[id(m)]] = m
        return out
    return {d.name: d.module for d in select_dropout(model, modules)}
