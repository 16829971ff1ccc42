"""Command-line parsers generated from config dataclasses (:mod:`droplab.config`).

A command is declared once, as a :class:`Command`: its name, its config class and the task
function it calls. :meth:`Command.register` walks the config's options
(:func:`droplab.config.leaves`) and adds one argument per option, grouped by section, with
the help text, metavar and default taken from the field metadata; ``--json`` and (for
commands that write resumable runs) ``--resume`` are added to every command alike.

argparse only splits the words here: every option's default is ``SUPPRESS``, so the parsed
namespace holds exactly the options the user typed, and the values are converted and
checked by the config itself (one-line errors that name the option). Then

- a new run is ``Config.from_dict(given)``: the command's defaults plus what was typed;
- ``--resume`` reads the run folder's ``config.json`` and applies what was typed on top
  (:func:`droplab.engine.resume.stored_config`); the task's resume rule then refuses
  changes to anything but runtime options (device, output folder, …), naming them.

Parse errors (an unknown option, a missing value) are one line too: :class:`Parser` raises
:class:`UsageError` instead of printing the usage block.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from droplab.config import Config, Leaf, leaves
from droplab.engine.distributed import is_main_process
from droplab.engine.resume import stored_config
from droplab.errors import InvalidValue, UserError
from droplab.runs import to_jsonable


class UsageError(UserError):
    """The command line does not parse (unknown option, missing value)."""


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one-line :class:`UsageError` exceptions."""

    def error(self, message: str) -> Any:  # type: ignore[override]
        raise UsageError(f"{self.prog}: error: {message} (see {self.prog} --help)")


def add_config_options(parser: argparse.ArgumentParser, config: type[Config]) -> None:
    """One argument per command-line option of ``config``, grouped by section."""
    groups: dict[str, Any] = {}
    for leaf in leaves(config, cli_only=True):
        if leaf.section not in groups:
            groups[leaf.section] = (parser.add_argument_group(leaf.section) if leaf.section
                                    else parser)
        group = groups[leaf.section]
        opt = leaf.option
        kwargs: dict[str, Any] = {"help": _help(leaf)}
        kwargs["metavar"] = opt.metavar or (
            "{" + ",".join(opt.choices) + "}" if opt.choices else leaf.name.upper())
        if opt.nargs is not None:
            kwargs["nargs"] = opt.nargs
        if opt.positional:
            group.add_argument(leaf.path, **kwargs)
            continue
        kwargs.update(dest=leaf.path, default=argparse.SUPPRESS)
        if _is_bool(leaf.type):
            kwargs.pop("metavar", None)
            kwargs["action"] = argparse.BooleanOptionalAction
        elif opt.required:  # checked by the config, so that --resume needs none of them
            kwargs["help"] += " (required for a new run)"
        group.add_argument(leaf.flag, **kwargs)


def given_values(args: argparse.Namespace, config: type[Config]) -> dict[str, Any]:
    """The options typed on the command line, by dotted path (texts parsed where the
    option has a parser; everything else is converted and checked by the config)."""
    out: dict[str, Any] = {}
    for leaf in leaves(config, cli_only=True):
        if not hasattr(args, leaf.path):
            continue
        value = getattr(args, leaf.path)
        parse = leaf.option.parse
        if parse is not None and isinstance(value, str):
            value = parse(value)
        elif parse is not None and isinstance(value, list):
            value = [parse(v) for v in value]
        out[leaf.path] = value
    return out


@dataclass(frozen=True)
class Command:
    """A ``droplab`` subcommand: a config class, the task it runs and how it reports.

    ``run`` is called as ``run(cfg)``, or ``run(cfg, resume=…)`` when ``task`` is set (the
    run kind stored in ``config.json``; it also gives the command ``--resume``). ``human``
    formats the summary for people (default: its scalar entries, one per line). ``out`` is
    the dotted path of the run-folder option.
    """

    name: str
    config: type[Config]
    run: Callable[..., Mapping[str, Any] | None]
    help: str
    description: str
    human: Callable[[Mapping[str, Any]], str] | None = None
    task: str | None = None
    out: str = "run.out"

    def register(self, subparsers: Any) -> argparse.ArgumentParser:
        parser = subparsers.add_parser(self.name, help=self.help, description=self.description)
        add_config_options(parser, self.config)
        g = parser.add_argument_group("output")
        g.add_argument("--json", action="store_true",
                       help="print the final summary as one JSON object on stdout")
        if self.task is not None:
            g.add_argument("--resume", action="store_true",
                           help="continue the run in --out with its stored config.json "
                           "(options given here override it; only runtime options may differ)")
        parser.set_defaults(func=self)
        return parser

    def config_from_args(self, args: argparse.Namespace) -> Config:
        """The command's config: defaults (or the resumed run's config.json) + options typed."""
        values = given_values(args, self.config)
        if getattr(args, "resume", False):
            out = values.get(self.out)
            if not out:
                raise InvalidValue("--resume needs --out RUN_DIR, the folder of the run to continue")
            assert self.task is not None
            return stored_config(self.config, out, self.task).updated(values)
        nested: dict[str, Any] = {}
        for path, value in values.items():
            *parents, name = path.split(".")
            node = nested
            for part in parents:
                node = node.setdefault(part, {})
            node[name] = value
        return self.config.from_dict(nested)

    def __call__(self, args: argparse.Namespace) -> int:
        cfg = self.config_from_args(args)
        if self.task is not None:
            summary = self.run(cfg, resume=bool(getattr(args, "resume", False)))
        else:
            summary = self.run(cfg)
        if summary is not None and is_main_process():
            emit(summary, json_output=bool(args.json), human=self.human)
        return 0


def emit(summary: Mapping[str, Any], *, json_output: bool,
         human: Callable[[Mapping[str, Any]], str] | None = None) -> None:
    """Print the summary: one JSON object with ``--json``, else a short human text."""
    if json_output:
        print(json.dumps(to_jsonable(dict(summary)), allow_nan=True))
        return
    print(human(summary) if human is not None else scalars(summary))


def scalars(summary: Mapping[str, Any]) -> str:
    """Every scalar entry of ``summary`` as ``key: value``, one per line."""
    return "\n".join(f"{k}: {f'{v:.4g}' if isinstance(v, float) else v}"
                     for k, v in summary.items() if not isinstance(v, dict | list))


def stderr(msg: str) -> None:
    print(msg, file=sys.stderr)


def _is_bool(tp: Any) -> bool:
    return tp is bool or tp == (bool | None)


def _help(leaf: Leaf) -> str:
    text = leaf.help
    default = leaf.default
    if "default" not in text and not (default is None or default is False
                                      or default in ("", [], ())):
        shown = ("on" if default is True else
                 ",".join(map(str, default)) if isinstance(default, list | tuple) else
                 f"{default:g}" if isinstance(default, float) else str(default))
        text += f" (default {shown})"
    return text.replace("%", "%%")
