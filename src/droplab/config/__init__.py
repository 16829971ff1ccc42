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

The package imports nothing from droplab but :mod:`droplab.errors` (base layer):
:mod:`.fields` declares options, :mod:`.values` coerces and checks their values.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Iterator, Mapping
from dataclasses import MISSING, dataclass
from typing import Any, ClassVar, TypeVar

from droplab.config.fields import OPTION, SECTION, Option, Section, option, section
from droplab.config.values import accepts_mapping, coerce, plain

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
            meta = f.metadata.get(OPTION)
            if meta is None:
                continue
            value = coerce(getattr(self, f.name), hints[f.name], meta, _label(f.name, meta))
            object.__setattr__(self, f.name, value)
        self.validate()

    def validate(self) -> None:
        """Checks that involve several fields; raise a one-line UserError."""

    # -- dictionaries -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Nested plain values (tuples become lists), as written to ``config.json``."""
        return {f.name: plain(getattr(self, f.name))
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
        sec = f.metadata.get(SECTION)
        if sec is not None:
            child = getattr(instance, f.name) if instance is not None else _default(f)
            yield from _walk(type(child), child, f"{prefix}{f.name}.", sec.title,
                             {**sec.help, **{k[len(f.name) + 1:]: v for k, v in help_overrides.items()
                                             if k.startswith(f.name + ".")}}, cli_only)
            continue
        meta = f.metadata.get(OPTION)
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
        if old is None or plain(old.default) != plain(leaf.default):
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
        if f.metadata.get(SECTION) is not None:
            sub = data.get(f.name)
            if isinstance(sub, Config):  # a whole section given (Config.build)
                current, source = sub, data
            else:  # nested, or a flat file of release 0.1
                source = sub if isinstance(sub, Mapping) else data
            out[f.name] = type(current).from_dict(source, current)
            continue
        meta: Option | None = f.metadata.get(OPTION)
        keys = [f.name]
        if meta is not None:
            keys += [(meta.flag or "").lstrip("-").replace("-", "_"), *meta.legacy]
        for key in keys:
            if not key or key not in data:
                continue
            if isinstance(data[key], Mapping | Config) and not accepts_mapping(hints[f.name]):
                continue  # a section of the same name, not this option
            out[f.name] = data[key]
            break
        else:
            out[f.name] = current
    return out


