"""Options defined once: config dataclasses whose fields carry their command-line metadata.

A config is a dataclass deriving from :class:`Config`. Each field is declared with
:func:`option` (a leaf: its type comes from the annotation; default, help, choices, range,
rate, metavar and whether it may change on ``--resume`` from the metadata) or with
:func:`section` (a nested config, e.g. a classify config holding data / model / training /
run parts that sweep and finetune reuse instead of re-listing them). From that one
declaration droplab derives:

- validation on construction (``__post_init__``): values coerced to the annotated type,
  finite floats, ranges (``ge``/``gt``/``le``/``lt``, as in pydantic's ``Field``), rates
  (:func:`droplab.errors.check_rate`), choices, then the class's own cross-field
  :meth:`Config.validate` — each failure a one-line :class:`~droplab.errors.UserError`
  naming the option as the user typed it (``--lr must be > 0, got nan``);
- :meth:`Config.from_dict` / :meth:`Config.to_dict` for ``config.json`` (nested; the flat
  files of release 0.1 read too, each key routed to the section that owns it);
- :meth:`Config.updated` (dotted paths, e.g. ``{"train.epochs": 3}``) and
  :func:`differences` (what the one resume rule compares; runtime options excluded);
- the command-line parser and its ``--help`` (:mod:`droplab.cli.options` walks
  :func:`leaves`; argparse only splits the words, conversion and checks happen here, so
  a bad value never surfaces as an internal function name).

This module imports nothing from droplab but :mod:`droplab.errors` (base layer).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import MISSING, dataclass
from typing import Any, ClassVar, TypeVar

from droplab.errors import InvalidValue, check_rate, unknown_name

__all__ = [
    "Config",
    "Leaf",
    "Option",
    "Section",
    "differences",
    "flatten",
    "leaves",
    "option",
    "section",
]

C = TypeVar("C", bound="Config")
_OPTION = "droplab.option"
_SECTION = "droplab.section"
_TRUE = ("true", "on", "yes", "1")
_FALSE = ("false", "off", "no", "0")


@dataclass(frozen=True)
class Option:
    """The metadata of one leaf option (see :func:`option`)."""

    help: str
    flag: str | None = None
    metavar: str | None = None
    choices: tuple[str, ...] | None = None
    what: str | None = None
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    rate: bool = False
    finite: bool = True
    parse: Callable[[str], Any] | None = None
    runtime: bool = False
    cli: bool = True
    required: bool = False
    positional: bool = False
    nargs: str | int | None = None
    legacy: tuple[str, ...] = ()


@dataclass(frozen=True)
class Section:
    """The metadata of a nested config (see :func:`section`)."""

    title: str
    help: Mapping[str, str] = dataclasses.field(default_factory=dict)


def option(
    default: Any = MISSING,
    *,
    help: str,
    factory: Callable[[], Any] | None = None,
    flag: str | None = None,
    metavar: str | None = None,
    choices: Sequence[str] | None = None,
    what: str | None = None,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    rate: bool = False,
    finite: bool = True,
    parse: Callable[[str], Any] | None = None,
    runtime: bool = False,
    cli: bool = True,
    required: bool = False,
    positional: bool = False,
    nargs: str | int | None = None,
    legacy: Sequence[str] = (),
) -> Any:
    """A dataclass field that is also a command-line option.

    ``help`` is the ``--help`` text (the default is appended unless the text mentions one).
    ``flag`` overrides the option name (default ``--field-name``). ``choices`` are checked
    with an "unknown ``what``" error listing them (``what`` defaults to the field name in
    words). ``ge``/``gt``/``le``/``lt`` bound numbers; ``rate`` checks a drop probability
    in [0, 1); floats must be finite unless ``finite=False``. ``parse`` turns the command
    line's text into the value (raise :class:`~droplab.errors.InvalidValue`), for forms
    such as ``0-4`` or ``512,256``. ``runtime`` options (device, output folder, …) may
    differ when a run is resumed; every other option must match the stored config.
    ``cli=False`` keeps a field out of the parser; ``required``, ``positional`` and
    ``nargs`` shape the argument; ``legacy`` lists other flat ``config.json`` keys the
    field was stored under.
    """
    meta = Option(help=help, flag=flag, metavar=metavar,
                  choices=tuple(choices) if choices is not None else None, what=what, ge=ge,
                  gt=gt, le=le, lt=lt, rate=rate, finite=finite, parse=parse, runtime=runtime,
                  cli=cli, required=required, positional=positional, nargs=nargs,
                  legacy=tuple(legacy))
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata={_OPTION: meta})
    return dataclasses.field(default=default, metadata={_OPTION: meta})


def section(
    factory: Callable[[], Config], *, title: str, help: Mapping[str, str] | None = None
) -> Any:
    """A nested config field. ``factory`` builds its default (with this command's own
    defaults, e.g. ``lambda: TrainConfig(epochs=6)``); ``title`` heads its group in
    ``--help``; ``help`` replaces the help text of named leaves for this command."""
    return dataclasses.field(default_factory=factory,
                             metadata={_SECTION: Section(title, dict(help or {}))})


@dataclass(frozen=True)
class Leaf:
    """One option of a (nested) config, as the CLI generator and the resume rule see it."""

    path: str  # dotted, e.g. "train.epochs"
    name: str  # the field name
    type: Any  # the resolved annotation
    option: Option
    default: Any  # this command's default (from the section's factory)
    help: str  # the help text for this command
    section: str  # the title of the group it belongs to ("" at the top level)

    @property
    def flag(self) -> str:
        return self.option.flag or "--" + self.name.replace("_", "-")

    @property
    def dest(self) -> str:
        """The flat name: the flag without dashes (the key release 0.1 stored it under)."""
        return self.flag.lstrip("-").replace("-", "_")


class Config:
    """Base class of droplab's config dataclasses (declare fields with :func:`option` and
    :func:`section`; override :meth:`validate` for checks across fields)."""

    __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]

    def __post_init__(self) -> None:
        hints = _hints(type(self))
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            meta = f.metadata.get(_OPTION)
            if meta is None:
                continue
            value = _coerce(getattr(self, f.name), hints[f.name], meta, _label(f.name, meta))
            object.__setattr__(self, f.name, value)
        self.validate()

    def validate(self) -> None:
        """Checks that involve several fields; raise a one-line UserError."""

    # -- dictionaries -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Nested plain values (tuples become lists), as written to ``config.json``."""
        return {f.name: _plain(getattr(self, f.name))
                for f in dataclasses.fields(self)}  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls: type[C], data: Mapping[str, Any], base: C | None = None) -> C:
        """Rebuild from a ``config.json`` mapping, starting from ``base`` (default: the
        class defaults).

        Nested mappings fill their sections; flat keys (release 0.1 wrote every option at
        the top level) are routed to the section that owns an option of that name. Keys
        naming nothing (``task``, options of a newer release) are ignored.
        """
        return cls(**_kwargs(cls, data, base))

    @classmethod
    def from_section(cls: type[C], stored: Mapping[str, Any], name: str) -> C:
        """This section of a whole stored config (``stored[name]`` when nested, else the
        flat mapping of release 0.1)."""
        sub = stored.get(name)
        return cls.from_dict(sub if isinstance(sub, Mapping) else stored)

    @classmethod
    def build(cls: type[C], **options: Any) -> C:
        """Construct from flat option names, as on the command line (``epochs=2``,
        ``model="mlp"``) or whole sections (``train=TrainConfig(...)``); an unknown name
        is a ``TypeError`` (a typo in code, not user input)."""
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        for leaf in leaves(cls):
            known.update((leaf.name, leaf.dest, *leaf.option.legacy))
        unknown = sorted(set(options) - known)
        if unknown:
            raise TypeError(f"{cls.__name__} has no option {', '.join(map(repr, unknown))}")
        return cls.from_dict(options)

    def updated(self: C, values: Mapping[str, Any]) -> C:
        """A copy with the options at the dotted ``values`` paths replaced (validated)."""
        nested: dict[str, Any] = {}
        for path, value in values.items():
            head, _, rest = path.partition(".")
            if rest:
                nested.setdefault(head, {})[rest] = value
            else:
                nested[head] = value
        changes: dict[str, Any] = {}
        for name, value in nested.items():
            current = getattr(self, name)
            if isinstance(current, Config) and isinstance(value, dict):
                changes[name] = current.updated(value)
            else:
                changes[name] = value
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]

    def get(self, path: str) -> Any:
        """The value at a dotted path."""
        value: Any = self
        for part in path.split("."):
            value = getattr(value, part)
        return value


# -- walking a config ---------------------------------------------------------------------
def leaves(config: Config | type[Config], *, cli_only: bool = False) -> Iterator[Leaf]:
    """Every leaf option of ``config`` (an instance gives its values as defaults),
    depth first in declaration order."""
    instance = config if isinstance(config, Config) else None
    cls = type(config) if instance is not None else config
    yield from _walk(cls, instance, "", "", {}, cli_only)


def _walk(cls: type[Config], instance: Config | None, prefix: str, title: str,
          help_overrides: Mapping[str, str], cli_only: bool) -> Iterator[Leaf]:
    hints = _hints(cls)
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        sec = f.metadata.get(_SECTION)
        if sec is not None:
            child = getattr(instance, f.name) if instance is not None else _default(f)
            yield from _walk(type(child), child, f"{prefix}{f.name}.", sec.title,
                             {**sec.help, **{k[len(f.name) + 1:]: v for k, v in help_overrides.items()
                                             if k.startswith(f.name + ".")}}, cli_only)
            continue
        meta = f.metadata.get(_OPTION)
        if meta is None or (cli_only and not meta.cli):
            continue
        default = getattr(instance, f.name) if instance is not None else _default(f)
        yield Leaf(f"{prefix}{f.name}", f.name, hints[f.name], meta, default,
                   help_overrides.get(f.name, meta.help), title)


def differences(stored: Config, given: Config, *, include_runtime: bool = False) -> list[str]:
    """Dotted paths of the options whose values differ (runtime options skipped)."""
    a = {leaf.path: leaf for leaf in leaves(stored)}
    out = []
    for leaf in leaves(given):
        if leaf.option.runtime and not include_runtime:
            continue
        old = a.get(leaf.path)
        if old is None or _plain(old.default) != _plain(leaf.default):
            out.append(leaf.path)
    return out


def flatten(stored: Mapping[str, Any]) -> dict[str, Any]:
    """One flat level out of a nested ``config.json`` (sections merged, keys are field
    names; a flat file of release 0.1 comes back as it is). For readers below the tasks
    that need a few stored values without the task's config class; a command's field names
    are unique across its sections, so nothing collides."""
    out: dict[str, Any] = {}
    for key, value in stored.items():
        if isinstance(value, Mapping):
            for k, v in flatten(value).items():
                out.setdefault(k, v)
        else:
            out[key] = value
    return out


# -- internals ----------------------------------------------------------------------------
_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default_factory is not MISSING:
        return f.default_factory()
    return None if f.default is MISSING else f.default


def _label(name: str, meta: Option) -> str:
    if meta.cli and not meta.positional:
        return meta.flag or "--" + name.replace("_", "-")
    return name.replace("_", " ") if meta.positional else name


def _kwargs(cls: type[Config], data: Mapping[str, Any], base: Config | None) -> dict[str, Any]:
    hints = _hints(cls)
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if not f.init:
            continue
        current = getattr(base, f.name) if base is not None else _default(f)
        if f.metadata.get(_SECTION) is not None:
            sub = data.get(f.name)
            if isinstance(sub, Config):  # a whole section given (Config.build)
                current, source = sub, data
            else:  # nested, or a flat file of release 0.1
                source = sub if isinstance(sub, Mapping) else data
            out[f.name] = type(current).from_dict(source, current)
            continue
        meta: Option | None = f.metadata.get(_OPTION)
        keys = [f.name]
        if meta is not None:
            keys += [(meta.flag or "").lstrip("-").replace("-", "_"), *meta.legacy]
        for key in keys:
            if not key or key not in data:
                continue
            if isinstance(data[key], Mapping | Config) and not _accepts_mapping(hints[f.name]):
                continue  # a section of the same name, not this option
            out[f.name] = data[key]
            break
        else:
            out[f.name] = current
    return out


def _accepts_mapping(tp: Any) -> bool:
    return any(t is dict or typing.get_origin(t) is dict for t in _union_args(tp))


def _union_args(tp: Any) -> tuple[Any, ...]:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return typing.get_args(tp)
    return (tp,)


def _optional_inner(tp: Any) -> tuple[Any, bool]:
    """``(X, True)`` for ``X | None``, else ``(tp, False)``."""
    args = _union_args(tp)
    if type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else typing.Union[tuple(rest)]), True  # noqa: UP007
    return tp, False


def _plain(value: Any) -> Any:
    if isinstance(value, Config):
        return value.to_dict()
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def _coerce(value: Any, tp: Any, meta: Option, label: str) -> Any:
    """``value`` as the annotated type, checked against the option's metadata."""
    inner, optional = _optional_inner(tp)
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
        if text in _TRUE:
            return True
        if text in _FALSE:
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


def _bounds(meta: Option) -> str:
    low = (meta.ge, "[") if meta.ge is not None else (meta.gt, "(") if meta.gt is not None else None
    high = (meta.le, "]") if meta.le is not None else (meta.lt, ")") if meta.lt is not None else None
    if low and high:
        return f"in {low[1]}{low[0]:g}, {high[0]:g}{high[1]}"
    if low:
        if low[1] == "(":
            return "positive" if low[0] == 0 else f"> {low[0]:g}"
        return f"at least {low[0]:g}" if low[0] != 0 else ">= 0"
    assert high is not None
    return f"{'at most' if high[1] == ']' else '<'} {high[0]:g}"
