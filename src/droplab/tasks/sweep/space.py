"""The search space of a sweep: dropout rates × kinds × placements.

No Optuna here: the space is plain data that the CLI can build without importing the
study machinery, and that the study stores (``space_record``) so that every worker
joining it can check it searches the same space.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from droplab.errors import InvalidValue, check_rate, unknown_name
from droplab.layers import KINDS

#: where the swept rate applies: the classifier head, the conv blocks, or both
WHERES = ("head", "conv", "all")


def parse_rates(text: str) -> list[float]:
    """``"0,0.25,0.5"`` (a list) or ``"0:0.5:6"`` (``start:stop:count``, both ends included).

    Every rate is validated as a drop probability in [0, 1).
    """
    text = str(text).strip()
    if not text:
        raise InvalidValue("--rates is empty; give a list like 0,0.25,0.5 or a range like 0:0.5:6")
    if ":" in text:
        parts = text.split(":")
        if len(parts) != 3:
            raise InvalidValue(f"--rates range {text!r} must be start:stop:count, e.g. 0:0.5:6")
        try:
            start, stop, count = float(parts[0]), float(parts[1]), int(parts[2])
        except ValueError:
            raise InvalidValue(f"--rates range {text!r} must be start:stop:count, e.g. 0:0.5:6") from None
        if count < 1:
            raise InvalidValue(f"--rates range {text!r} has count {count}; use at least 1")
        if count == 1:
            rates = [start]
        else:
            rates = [round(start + (stop - start) * i / (count - 1), 10) for i in range(count)]
    else:
        rates = []
        for part in text.split(","):
            if not part.strip():
                raise InvalidValue(f"--rates {text!r} has an empty item; write e.g. 0,0.25,0.5")
            try:
                rates.append(float(part))
            except ValueError:
                raise InvalidValue(f"--rates item {part.strip()!r} is not a number") from None
    return [check_rate(r, "rate") for r in rates]


def parse_names(text: str | Sequence[str]) -> list[str]:
    """``"dropout,gaussian"`` → ``["dropout", "gaussian"]``."""
    items = text.split(",") if isinstance(text, str) else list(text)
    return [s.strip() for s in items if s.strip()]


@dataclass
class SearchSpace:
    """Rates × dropout kinds × placements; every combination is one setting."""

    rates: list[float]
    kinds: list[str] = field(default_factory=lambda: ["dropout"])
    wheres: list[str] = field(default_factory=lambda: ["head"])

    def validate(self, model: str | None = None) -> None:
        """One-line errors for an empty, duplicated or inconsistent space."""
        for name, values in (("--rates", self.rates), ("--kinds", self.kinds),
                             ("--wheres", self.wheres)):
            if not values:
                raise InvalidValue(f"the search space is empty: {name} has no values")
            if len(set(values)) != len(values):
                raise InvalidValue(f"{name} lists a value twice ({values}); list each once")
        self.rates = [check_rate(r, "rate") for r in self.rates]
        for k in self.kinds:
            if k not in KINDS:
                raise unknown_name("dropout kind", k, KINDS)
        for w in self.wheres:
            if w not in WHERES:
                raise unknown_name("dropout placement (--wheres)", w, WHERES)
        if model == "mlp" and any(w != "head" for w in self.wheres):
            raise InvalidValue(
                "the search space is inconsistent: model 'mlp' has no conv layers, so "
                "--wheres can only be 'head'"
            )

    def settings(self) -> list[dict[str, Any]]:
        return [{"rate": r, "kind": k, "where": w}
                for k in self.kinds for w in self.wheres for r in self.rates]

    def grid(self) -> dict[str, list[Any]]:
        return {"rate": list(self.rates), "kind": list(self.kinds), "where": list(self.wheres)}


def setting_key(params: dict[str, Any]) -> tuple[float, str, str] | None:
    """A hashable identity of one setting (rates rounded so 0.1 from JSON equals 0.1).

    ``None`` for a trial another worker is still creating: Optuna stores parameters one
    ``suggest_*`` call at a time, so a RUNNING trial may hold ``rate`` but not yet ``kind``.
    """
    try:
        return (round(float(params["rate"]), 10), str(params["kind"]), str(params["where"]))
    except KeyError:
        return None
