"""The search space of a sweep: rates (per placement) × kinds × placements × schedules.

A setting is a dict of parameters, always ``rate`` (the drop probability at ``where``),
``kind`` and ``where``, plus ``input_rate`` (dropout on the input), ``conv_rate`` (a
separate rate in the conv blocks, the main ``rate`` then being the head's) and
``schedule`` (a :func:`droplab.schedules.make_schedule` spec, ``constant`` for none) when
those are searched. Each rate is a list (``0,0.25,0.5``), an inclusive grid
(``0:0.5:6``), a continuous range (``0:0.7``) or a log-uniform one (``log:0.01:0.5``);
continuous ranges need a sampler that draws from distributions (TPE, random, NSGA-II),
not the grid.

No Optuna here beyond the ``trial.suggest_*`` calls of :meth:`SearchSpace.suggest`: the
space is plain data that the CLI can build, and the study stores
(:meth:`SearchSpace.record`) so every worker joining it can check it searches the same
space.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from droplab.config import Config, option
from droplab.errors import InvalidValue, check_rate
from droplab.layers import KINDS
from droplab.schedules import make_schedule

#: where the main rate applies: the classifier head, the conv blocks, or both
WHERES = ("head", "conv", "all")
#: where it applies in a GAN's discriminator (``--task gan``; :data:`droplab.models.gan.WHERE`)
GAN_WHERES = ("input", "hidden", "all")
#: the schedule value meaning "no schedule"
CONSTANT = "constant"
#: parameters whose values are drop probabilities
RATE_PARAMS = ("rate", "input_rate", "conv_rate")
#: the parameters a setting always has
BASE_PARAMS = ("rate", "kind", "where")
_RANGE_HELP = "a list 0,0.25,0.5, a grid start:stop:count, a range 0:0.7 or log:0.01:0.5"


def parse_rates(text: str, flag: str = "--rates") -> list[float]:
    """``"0,0.25,0.5"`` (a list) or ``"0:0.5:6"`` (``start:stop:count``, both ends included).

    Every rate is validated as a drop probability in [0, 1).
    """
    text = str(text).strip()
    if not text:
        raise InvalidValue(f"{flag} is empty; give a list like 0,0.25,0.5 or a range like 0:0.5:6")
    if ":" in text:
        parts = text.split(":")
        if len(parts) != 3:
            raise InvalidValue(f"{flag} range {text!r} must be start:stop:count, e.g. 0:0.5:6")
        try:
            start, stop, count = float(parts[0]), float(parts[1]), int(parts[2])
        except ValueError:
            raise InvalidValue(f"{flag} range {text!r} must be start:stop:count, e.g. 0:0.5:6") from None
        if count < 1:
            raise InvalidValue(f"{flag} range {text!r} has count {count}; use at least 1")
        if count == 1:
            rates = [start]
        else:
            rates = [round(start + (stop - start) * i / (count - 1), 10) for i in range(count)]
    else:
        rates = []
        for part in text.split(","):
            if not part.strip():
                raise InvalidValue(f"{flag} {text!r} has an empty item; write e.g. 0,0.25,0.5")
            try:
                rates.append(float(part))
            except ValueError:
                raise InvalidValue(f"{flag} item {part.strip()!r} is not a number") from None
    return [check_rate(r, "rate") for r in rates]


def parse_names(text: str | Sequence[str]) -> list[str]:
    """``"dropout,gaussian"`` → ``["dropout", "gaussian"]``."""
    items = text.split(",") if isinstance(text, str) else list(text)
    return [s.strip() for s in items if s.strip()]


@dataclass(frozen=True)
class Dim:
    """One searched parameter: categorical ``values``, or a float range ``[low, high]``
    (``log``: log-uniform)."""

    name: str
    values: tuple[Any, ...] | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False

    @property
    def discrete(self) -> bool:
        return self.values is not None

    def record(self) -> Any:
        if self.values is not None:
            return list(self.values)
        return {"low": self.low, "high": self.high, "log": self.log}


def parse_rate_dim(name: str, text: str, flag: str) -> Dim:
    """A rate dimension from its spec (see the module docstring)."""
    text = str(text).strip()
    parts = text.split(":")
    if parts[0] == "log":
        if len(parts) != 3:
            raise InvalidValue(f"{flag} {text!r}: a log-uniform range is log:LOW:HIGH, e.g. log:0.01:0.5")
        low, high = _range_ends(parts[1:], text, flag)
        if low <= 0:
            raise InvalidValue(f"{flag} {text!r}: a log-uniform range needs LOW > 0 (0 has no "
                               "logarithm); use a range like 0:0.5 to include 0")
        return Dim(name, low=low, high=high, log=True)
    if len(parts) == 2:
        low, high = _range_ends(parts, text, flag)
        return Dim(name, low=low, high=high)
    values = parse_rates(text, flag)
    if len(set(values)) != len(values):
        raise InvalidValue(f"{flag} lists a value twice ({values}); list each once")
    return Dim(name, values=tuple(values))


def _range_ends(parts: Sequence[str], text: str, flag: str) -> tuple[float, float]:
    try:
        low, high = float(parts[0]), float(parts[1])
    except ValueError:
        raise InvalidValue(f"{flag} {text!r} is not {_RANGE_HELP}") from None
    check_rate(low, f"{flag} start")
    check_rate(high, f"{flag} end")
    if not low < high:
        raise InvalidValue(f"{flag} range {text!r} is empty or reversed; write LOW:HIGH with "
                           "LOW < HIGH")
    return low, high


def _category(name: str, flag: str, values: Sequence[str]) -> Dim:
    if not values:
        raise InvalidValue(f"the search space is empty: {flag} has no values")
    if len(set(values)) != len(values):
        raise InvalidValue(f"{flag} lists a value twice ({list(values)}); list each once")
    return Dim(name, values=tuple(values))


@dataclass
class SearchSpace(Config):
    """The searched parameters, in a fixed order; every combination of values is a setting.

    ``rates``/``input_rates``/``conv_rates`` are rate specs (``None``: not searched),
    ``kinds``/``wheres``/``schedules`` lists (``schedules`` ``None``: not searched).
    """

    rates: str = option("0:0.5:6", metavar="SPEC",
                        help="drop probabilities at --wheres: a list 0,0.25,0.5, a grid "
                        "start:stop:count, a range 0:0.7 or log:0.01:0.5 (ranges need "
                        "--sampler tpe, random or nsga2)")
    kinds: list[str] = option(factory=lambda: ["dropout"], choices=tuple(KINDS),
                              what="dropout kind", metavar="KIND,…",
                              help="dropout kinds, comma-separated (default dropout)")
    wheres: list[str] | None = option(None, choices=tuple(dict.fromkeys(WHERES + GAN_WHERES)),
                                      what="dropout placement (--wheres)", metavar="WHERE,…",
                                      help="placements of --rates: head, conv, all (default "
                                      "head); --task gan: the discriminator's input, hidden, "
                                      "all (default hidden)")
    input_rates: str | None = option(None, metavar="SPEC",
                                     help="also search the input dropout rate (same forms)")
    conv_rates: str | None = option(None, metavar="SPEC",
                                    help="also search a separate rate for the conv blocks "
                                    "(same forms); --rates is then the head's")
    schedules: list[str] | None = option(None, metavar="SPEC,…",
                                         help="also search dropout schedules jointly, e.g. "
                                         "constant,linear:0.5,early:0.2")

    def __post_init__(self) -> None:
        if isinstance(self.rates, list | tuple):  # Python callers, config.json of release 0.1
            self.rates = ",".join(repr(float(r)) for r in self.rates)
        super().__post_init__()

    def validate(self) -> None:
        self.dims = self._dims()

    def _dims(self) -> list[Dim]:
        dims = [parse_rate_dim("rate", self.rates, "--rates")]
        if self.input_rates is not None:
            dims.append(parse_rate_dim("input_rate", self.input_rates, "--input-rates"))
        if self.conv_rates is not None:
            dims.append(parse_rate_dim("conv_rate", self.conv_rates, "--conv-rates"))
        dims.append(_category("kind", "--kinds", self.kinds))
        dims.append(_category("where", "--wheres", self.wheres or ["head"]))
        if self.schedules is not None:
            dims.append(_category("schedule", "--schedules", self.schedules))
        for s in self.schedules or ():
            make_schedule(s, 0.5, 100)  # a one-line error for a bad spec
        return dims

    # -- what the space is ----------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return [d.name for d in self.dims]

    @property
    def discrete(self) -> bool:
        """Every parameter takes listed values (a grid can enumerate the space)."""
        return all(d.discrete for d in self.dims)

    @property
    def rate_values(self) -> list[float]:
        """The main rate's listed values (empty for a continuous range)."""
        return list(self.dims[0].values or ())

    def check_model(self, model: str) -> None:
        """One-line errors for placements the model does not have."""
        wheres = self.wheres or ["head"]
        if model == "mlp" and (any(w != "head" for w in wheres) or self.conv_rates is not None):
            raise InvalidValue(
                "the search space is inconsistent: model 'mlp' has no conv layers, so "
                "--wheres can only be 'head' (and --conv-rates does not apply)"
            )
        if self.conv_rates is not None and list(wheres) != ["head"]:
            raise InvalidValue("--conv-rates searches the conv blocks' own rate, so the main "
                               "--rates is the head's: use --wheres head")

    def settings(self) -> list[dict[str, Any]]:
        """Every setting of a discrete space (rates vary fastest, as in the report's curves)."""
        if not self.discrete:
            raise InvalidValue("a continuous --rates range has no grid of settings; use "
                               "--sampler tpe (or random, nsga2), or a grid start:stop:count")
        order = [d for d in self.dims if d.name not in RATE_PARAMS] + \
                [d for d in reversed(self.dims) if d.name in RATE_PARAMS]
        out = []
        for combo in itertools.product(*(d.values or () for d in order)):
            params = dict(zip((d.name for d in order), combo))
            out.append({n: params[n] for n in self.names})
        return out

    def grid(self) -> dict[str, list[Any]]:
        """The grid for :class:`optuna.samplers.GridSampler`."""
        return {d.name: list(d.values or ()) for d in self.dims}

    def size(self) -> int:
        return len(self.settings())

    def record(self) -> dict[str, Any]:
        """What must agree between the study and every worker joining it."""
        return {d.name: d.record() for d in self.dims}

    # -- trials -----------------------------------------------------------------------------
    def suggest(self, trial: Any) -> dict[str, Any]:
        """Draw one setting through an Optuna trial (categorical, uniform or log-uniform)."""
        params: dict[str, Any] = {}
        for d in self.dims:
            if d.values is not None:
                params[d.name] = trial.suggest_categorical(d.name, list(d.values))
            else:
                params[d.name] = trial.suggest_float(d.name, d.low, d.high, log=d.log)
        return params

    def key(self, params: dict[str, Any]) -> tuple[Any, ...] | None:
        """A hashable identity of a setting (rates rounded so 0.1 from JSON equals 0.1);
        ``None`` while a trial is still choosing its parameters."""
        try:
            return tuple(round(float(params[n]), 10) if n in RATE_PARAMS else str(params[n])
                         for n in self.names)
        except KeyError:
            return None


def simplicity(params: dict[str, Any]) -> float:
    """How much dropout a setting uses: the sum of its rates (lower is simpler).

    The one-standard-error rule prefers the simplest setting; for dropout, less
    regularisation is the simpler model (Hastie, Tibshirani & Friedman 2009, §7.10).
    """
    return float(sum(float(params.get(n, 0.0)) for n in RATE_PARAMS))
