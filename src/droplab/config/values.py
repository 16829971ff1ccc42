"""Values of options: coerced to the annotated type, then checked against the metadata
(finite floats, bounds, rates, choices). Every failure is a one-line UserError naming the
option as the user typed it."""

from __future__ import annotations

import math
import types
import typing
from collections.abc import Mapping
from typing import Any

from droplab.config.fields import Option
from droplab.errors import InvalidValue, check_rate, unknown_name

TRUE = ("true", "on", "yes", "1")
FALSE = ("false", "off", "no", "0")


def accepts_mapping(tp: Any) -> bool:
    return any(t is dict or typing.get_origin(t) is dict for t in union_args(tp))


def union_args(tp: Any) -> tuple[Any, ...]:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return typing.get_args(tp)
    return (tp,)


def optional_inner(tp: Any) -> tuple[Any, bool]:
    """``(X, True)`` for ``X | None``, else ``(tp, False)``."""
    args = union_args(tp)
    if type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else typing.Union[tuple(rest)]), True  # noqa: UP007
    return tp, False


def plain(value: Any) -> Any:
    if hasattr(value, "to_dict") and hasattr(value, "__dataclass_fields__"):
        return value.to_dict()  # a nested Config
    if isinstance(value, tuple | list):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    return value


def coerce(value: Any, tp: Any, meta: Option, label: str) -> Any:
    """``value`` as the annotated type, checked against the option's metadata."""
    inner, optional = optional_inner(tp)
    if value is None or (optional and isinstance(value, str) and value.lower() == "none"
                         and inner is not str):
        if meta.required:
            raise InvalidValue(f"{label} is required; see --help")
        if optional or tp is Any:
            return None
        raise InvalidValue(f"{label} needs a value")
    value = _convert(value, inner, label, optional)
    if meta.required and value in ("", [], ()):
        raise InvalidValue(f"{label} is required; see --help")
    _check(value, meta, label)
    return value


def _convert(value: Any, tp: Any, label: str, optional: bool = False) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        text = str(value).lower()
        if text in TRUE:
            return True
        if text in FALSE:
            return False
        if optional and text == "auto":
            return None
        raise InvalidValue(f"{label} takes true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise InvalidValue(f"{label} takes an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        try:
            return int(str(value).strip())
        except ValueError:
            raise InvalidValue(f"{label} takes an integer, got {value!r}") from None
    if tp is float:
        if isinstance(value, bool):
            raise InvalidValue(f"{label} takes a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise InvalidValue(f"{label} takes a number, got {value!r}") from None
    if tp is str:
        return value if isinstance(value, str) else str(value)
    if origin in (list, tuple):
        args = typing.get_args(tp)
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list | tuple):
            raise InvalidValue(f"{label} takes a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(items) != len(args):
                raise InvalidValue(f"{label} takes {len(args)} values, got {len(items)}")
            return tuple(_convert(v, a, label) for v, a in zip(items, args))
        elem = args[0] if args else Any
        out = [_convert(v.strip() if isinstance(v, str) else v, elem, label) for v in items]
        return tuple(out) if origin is tuple else out
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise InvalidValue(f"{label} takes a mapping, got {value!r}")
        return dict(value)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return value
    return value


def _numbers(value: Any) -> list[float]:
    if isinstance(value, bool):
        return []
    if isinstance(value, int | float):
        return [float(value)]
    if isinstance(value, list | tuple):
        return [float(v) for v in value if isinstance(v, int | float) and not isinstance(v, bool)]
    return []


def _check(value: Any, meta: Option, label: str) -> None:
    if meta.choices is not None:
        for v in value if isinstance(value, list | tuple) else [value]:
            if v not in meta.choices:
                raise unknown_name(meta.what or label.lstrip("-").replace("-", " "), v, meta.choices)
    for x in _numbers(value):
        if meta.rate:
            check_rate(x, label)
            continue
        if meta.finite and not math.isfinite(x):
            raise InvalidValue(f"{label} must be a finite number, got {_show(value)}")
        bad = ((meta.ge is not None and not x >= meta.ge) or (meta.gt is not None and not x > meta.gt)
               or (meta.le is not None and not x <= meta.le) or (meta.lt is not None and not x < meta.lt))
        if bad:
            raise InvalidValue(f"{label} must be {_bounds(meta)}, got {_show(value)}")


def _show(value: Any) -> str:
    if isinstance(value, list | tuple):
        return " ".join(_show(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 2**63 else f"{x:g}"


def _bounds(meta: Option) -> str:
    low = (meta.ge, "[") if meta.ge is not None else (meta.gt, "(") if meta.gt is not None else None
    high = (meta.le, "]") if meta.le is not None else (meta.lt, ")") if meta.lt is not None else None
    if low and high:
        return f"in {low[1]}{_num(low[0])}, {_num(high[0])}{high[1]}"
    if low:
        if low[1] == "(":
            return "positive" if low[0] == 0 else f"> {_num(low[0])}"
        return f"at least {_num(low[0])}" if low[0] != 0 else ">= 0"
    assert high is not None
    return f"{'at most' if high[1] == ']' else '<'} {_num(high[0])}"
