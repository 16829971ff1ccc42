"""Dropout-rate schedules and a scheduler that drives a model's dropout modules.

A :class:`Schedule` maps a step ``t`` (``0, 1, …``; the caller decides whether a step is a
batch or an epoch) to a drop probability in ``[0, p]``. ``total_steps`` is ``T``; past
``T`` every schedule keeps its final value. The forms (``make_schedule`` spec strings):

``constant``
    ``p(t) = p``.
``linear[:f]``
    linear ramp ``p(t) = p · min(1, t / (f·T))``, from 0 to ``p`` over the first fraction
    ``f`` of the steps (default ``f = 1``).
``cosine[:f]``
    half-cosine ramp ``p(t) = p · (1 − cos(π · min(1, t / (f·T)))) / 2``.
``curriculum[:r]``
    curriculum dropout (Morerio et al., ICCV 2017), written for drop rates:
    ``p(t) = p · (1 − exp(−γ t))`` with ``γ = −ln(1 − r) / T``, so the rate reaches the
    fraction ``r`` of ``p`` at the last step (default ``r = 0.99``, i.e. ``γ ≈ 4.6 / T``).
``early[:f]``
    early dropout (Liu et al., ICML 2023, "Dropout reduces underfitting"): ``p`` while
    ``t < E = round(f·T)``, then 0 (default ``f = 0.2``).
``late[:f]``
    late dropout (the same paper's regulariser for overfitting models): 0 while
    ``t < S = round(f·T)``, then ``p`` (default ``f = 0.5``).

Example::

    sched = DropoutScheduler(model, make_schedule("linear:0.3", p=0.5, total_steps=1000))
    for x, y in loader:
        ...  # forward / backward / optimizer step
        sched.step()
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from droplab.errors import InvalidValue, ResumeError, check_rate, unknown_name
from droplab.surgery import dropout_modules
from droplab.surgery.kinds import get_rate, set_rate

#: schedule kind → (default argument, meaning of the argument)
SCHEDULES: dict[str, tuple[float | None, str]] = {
    "constant": (None, ""),
    "linear": (1.0, "fraction of steps to ramp over"),
    "cosine": (1.0, "fraction of steps to ramp over"),
    "curriculum": (0.99, "fraction of p reached at the last step"),
    "early": (0.2, "fraction of steps with dropout"),
    "late": (0.5, "fraction of steps without dropout"),
}

SPEC_FORMS = "constant, linear[:F], cosine[:F], curriculum[:R], early[:F], late[:F] (0 < F <= 1, 0 < R < 1)"


@dataclass(frozen=True)
class Schedule:
    """A dropout-rate schedule; :meth:`value` gives the rate at a step.

    ``kind`` is one of :data:`SCHEDULES`, ``p`` the target rate, ``total_steps`` ``T`` and
    ``arg`` the kind's argument (see the module docstring).
    """

    kind: str
    p: float
    total_steps: int
    arg: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULES:
            raise unknown_name("dropout schedule", self.kind, SCHEDULES)
        check_rate(self.p)
        if int(self.total_steps) < 1:
            raise InvalidValue(f"total_steps={self.total_steps} must be a positive step count")
        if self.arg is None:
            object.__setattr__(self, "arg", SCHEDULES[self.kind][0])
        arg = self.arg
        if arg is not None:
            upper_ok = arg < 1 if self.kind == "curriculum" else arg <= 1
            if not (arg > 0 and upper_ok):
                raise InvalidValue(
                    f"{self.kind}:{arg:g} is out of range; valid forms: {SPEC_FORMS}"
                )

    @property
    def spec(self) -> str:
        """The spec string that :func:`make_schedule` turns back into this schedule."""
        return self.kind if self.arg is None else f"{self.kind}:{self.arg:g}"

    def fraction(self, step: int) -> float:
        """The schedule's shape: the rate at ``step`` as a fraction of ``p``, in [0, 1]."""
        t = max(0, int(step))
        T = int(self.total_steps)
        a = float(self.arg) if self.arg is not None else 0.0
        if self.kind == "constant":
            return 1.0
        if self.kind in ("linear", "cosine"):
            u = min(1.0, t / (a * T))
            return u if self.kind == "linear" else (1.0 - math.cos(math.pi * u)) / 2.0
        if self.kind == "curriculum":
            gamma = -math.log(1.0 - a) / T
            return 1.0 - math.exp(-gamma * min(t, T))
        if self.kind == "early":
            return 1.0 if t < round(a * T) else 0.0
        # late
        return 0.0 if t < round(a * T) else 1.0

    def value(self, step: int) -> float:
        """Drop probability at ``step`` (``p · fraction(step)``)."""
        return self.p * self.fraction(step)


def make_schedule(spec: str, p: float, total_steps: int) -> Schedule:
    """Parse a schedule spec such as ``"linear:0.3"`` or ``"early:0.2"`` (module docstring)."""
    text = str(spec).strip().lower()
    kind, sep, rest = text.partition(":")
    if kind not in SCHEDULES:
        raise unknown_name("dropout schedule", spec, [k for k in SCHEDULES])
    arg: float | None = None
    if sep:
        if SCHEDULES[kind][0] is None:
            raise InvalidValue(f"dropout schedule {kind!r} takes no argument; valid forms: {SPEC_FORMS}")
        try:
            arg = float(rest)
        except ValueError:
            raise InvalidValue(
                f"bad dropout schedule {spec!r}: {rest!r} is not a number; valid forms: {SPEC_FORMS}"
            ) from None
        if not math.isfinite(arg):
            raise InvalidValue(f"bad dropout schedule {spec!r}; valid forms: {SPEC_FORMS}")
    return Schedule(kind, check_rate(p), int(total_steps), arg)


class DropoutScheduler:
    """Drive the rate of a model's dropout modules along a :class:`Schedule`.

    ``modules``: ``None`` (every source :func:`droplab.surgery.find_dropout` reports with a
    settable rate: torch.nn, droplab, torchvision and timm layers, attention dropout, gated
    ``F.dropout`` calls), a name pattern, a kind, a module type, or a list of names /
    module objects (see :mod:`droplab.surgery`).

    **Per-module targets.** Each module's *target* is its own rate when the scheduler is
    created (a module at rate 0 takes the schedule's ``p``). At step ``t`` every module is
    set to ``target · schedule.fraction(t)``, so a model with ``p=0.1`` in its conv blocks
    and ``p=0.5`` in its head keeps that 1:5 ratio while the schedule ramps; when all
    modules share the schedule's ``p`` this is simply ``schedule.value(t)``.

    The scheduler applies step 0 on creation; call :meth:`step` after each batch or epoch.
    """

    def __init__(self, model: nn.Module, schedule: Schedule,
                 modules: Any | Sequence[nn.Module] = None) -> None:
        self.schedule = schedule
        #: key (module name, plus ``:attr`` for gated calls) → the source driven
        self.sources = dropout_modules(model, modules)
        self.modules: dict[str, nn.Module] = {k: d.module for k, d in self.sources.items()}
        self.targets: dict[str, float] = {
            key: (float(d.p) if d.p else schedule.p) for key, d in self.sources.items()
        }
        self.last_step = 0
        self._apply()

    @property
    def current_p(self) -> float:
        """The schedule's rate at the current step (modules scale it to their targets)."""
        return self.schedule.value(self.last_step)

    def rates(self) -> dict[str, float]:
        """Current rate of every driven module."""
        return {k: float(get_rate(d.module, d.rate_attr or "p") or 0.0)
                for k, d in self.sources.items()}

    def _apply(self) -> None:
        frac = self.schedule.fraction(self.last_step)
        for key, d in self.sources.items():
            # targets < 1 and frac <= 1, so the product is a valid rate
            set_rate(d.module, d.rate_attr or "p", self.targets[key] * frac)

    def step(self) -> float:
        """Advance one step, set the modules' rates, and return :attr:`current_p`."""
        self.last_step += 1
        self._apply()
        return self.current_p

    def state_dict(self) -> dict[str, Any]:
        """Step, schedule and targets, for a checkpoint."""
        return {
            "step": self.last_step,
            "schedule": {"kind": self.schedule.kind, "p": self.schedule.p,
                         "total_steps": self.schedule.total_steps, "arg": self.schedule.arg},
            "targets": dict(self.targets),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from :meth:`state_dict`: same schedule and modules required."""
        try:
            sched = Schedule(**state["schedule"])
            step = int(state["step"])
            targets = {str(k): float(v) for k, v in state["targets"].items()}
        except (KeyError, TypeError, ValueError) as exc:
            raise ResumeError(f"dropout scheduler state is malformed ({exc}); start a new run") from None
        if sched != self.schedule:
            raise ResumeError(
                f"checkpoint used dropout schedule {sched.spec} (p={sched.p:g}, T={sched.total_steps}) "
                f"but this run uses {self.schedule.spec} (p={self.schedule.p:g}, "
                f"T={self.schedule.total_steps}); resume with the same schedule"
            )
        if set(targets) != set(self.sources):
            raise ResumeError(
                "checkpoint's dropout scheduler drove different modules; resume with the same model"
            )
        self.targets = targets
        self.last_step = step
        self._apply()

    def __repr__(self) -> str:
        return (f"DropoutScheduler({self.schedule.spec}, p={self.schedule.p:g}, "
                f"T={self.schedule.total_steps}, step={self.last_step}, modules={len(self.sources)})")
