"""Declaring options: :func:`option` (a leaf) and :func:`section` (a nested config) are
``dataclasses.field`` calls whose metadata (:class:`Option`, :class:`Section`) carries what
the command line, the checks and the resume rule need."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # only for annotations: the package imports this module
    from droplab.config import Config

OPTION = "droplab.option"
SECTION = "droplab.section"


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
        return dataclasses.field(default_factory=factory, metadata={OPTION: meta})
    return dataclasses.field(default=default, metadata={OPTION: meta})


def section(
    factory: Callable[[], Config], *, title: str, help: Mapping[str, str] | None = None
) -> Any:
    """A nested config field. ``factory`` builds its default (with this command's own
    defaults, e.g. ``lambda: TrainConfig(epochs=6)``); ``title`` heads its group in
    ``--help``; ``help`` replaces the help text of named leaves for this command."""
    return dataclasses.field(default_factory=factory,
                             metadata={SECTION: Section(title, dict(help or {}))})


