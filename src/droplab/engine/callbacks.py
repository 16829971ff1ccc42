"""The pieces the training loop calls at fixed points: a small callback protocol.

Modelled on Lightning's ``Callback`` (hooks plus ``state_dict``/``load_state_dict``) without
depending on it. :func:`droplab.engine.fit` calls, in list order:

==========================  ================================================================
hook                        when
==========================  ================================================================
``on_fit_start(loop)``      once, after a resume restored the state, before the first batch
``on_epoch_start(loop, e)`` before epoch ``e`` (0-based) — also the resumed one
``regularizer(loop)``       each step: a term added to the training loss (or ``None``)
``on_batch_end(loop)``      after each optimiser step (``loop.progress`` already counts it)
``on_epoch_end(loop, r)``   after validation, with the epoch's ``metrics.jsonl`` record ``r``
``on_fit_end(loop)``        once the last epoch is done (``loop.progress.finished``)
==========================  ================================================================

A callback's ``state_dict()`` is stored in the checkpoint under its ``name`` and handed back
to ``load_state_dict`` on ``--resume``, so stateful pieces (a dropout schedule) continue
exactly. The loop's own options map to the built-in callbacks (:func:`standard_callbacks`):
dropout schedule, max-norm, Concrete-dropout regulariser, NaN guard, the metrics log,
TensorBoard; tasks add their own (gradual unfreezing, pruning reports); the checkpoint runs
last, so it saves every other callback's state as of the same step.

References: Srivastava et al. 2014 (max-norm), Gal et al. 2017 (Concrete dropout),
Howard & Ruder 2018 (gradual unfreezing), Zhang et al. 2019 and Jordan 2024 (Lookahead).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from droplab.engine.config import TrainConfig
from droplab.engine.state import check_finite
from droplab.errors import InvalidValue, UserError
from droplab.layers import ConcreteDropout, DropoutModule, concrete_regularization
from droplab.models import apply_max_norm
from droplab.runs import RunDir
from droplab.schedules import DropoutScheduler, make_schedule

if TYPE_CHECKING:  # the loop imports this module; the type is only for annotations
    from droplab.engine.loop import Loop


class Callback:
    """Base class: override the hooks you need (all are no-ops here)."""

    #: the key of this callback's state in the checkpoint
    name: str = "callback"

    def on_fit_start(self, loop: Loop) -> None:
        """Once, before the first batch (after a resume restored everything)."""

    def on_epoch_start(self, loop: Loop, epoch: int) -> None:
        """Before epoch ``epoch`` (0-based)."""

    def regularizer(self, loop: Loop) -> Tensor | None:
        """A term added to this step's training loss, or ``None``."""
        return None

    def on_batch_end(self, loop: Loop) -> None:
        """After each optimiser step."""

    def on_epoch_end(self, loop: Loop, record: dict[str, Any]) -> None:
        """After the epoch's validation; ``record`` is its metrics.jsonl line."""

    def on_fit_end(self, loop: Loop) -> None:
        """Once training is done."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""


def dropout_modules(model: nn.Module) -> list[nn.Module]:
    """Every dropout-like module with a rate ``p`` (droplab's and torch's own)."""
    kinds = (DropoutModule, nn.modules.dropout._DropoutNd)
    return [m for m in model.modules() if isinstance(m, kinds)]


def current_dropout_p(model: nn.Module) -> float | None:
    """The largest dropout rate in ``model`` (``None`` when it has no dropout)."""
    rates = [float(m.p) for m in dropout_modules(model)]
    return max(rates) if rates else None


class DropoutSchedule(Callback):
    """Step a :func:`droplab.schedules.make_schedule` rate schedule once per batch towards
    ``target`` (default: the model's largest rate)."""

    name = "dropout_schedule"

    def __init__(self, model: nn.Module, spec: str, total_steps: int,
                 target: float | None = None) -> None:
        p = target if target is not None else current_dropout_p(model)
        if p is None:
            raise UserError("--dropout-schedule needs a model with dropout; set --dropout P")
        self.scheduler = DropoutScheduler(model, make_schedule(spec, p, total_steps))

    def on_batch_end(self, loop: Loop) -> None:
        self.scheduler.step()

    def state_dict(self) -> dict[str, Any]:
        return self.scheduler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scheduler.load_state_dict(state)


class MaxNorm(Callback):
    """Cap every unit's incoming weight norm at ``c`` after each step (Srivastava et al.)."""

    name = "max_norm"

    def __init__(self, c: float) -> None:
        self.c = c

    def on_batch_end(self, loop: Loop) -> None:
        apply_max_norm(loop.model, self.c)


class ConcreteRegularizer(Callback):
    """Add the Concrete-dropout regulariser of every ``ConcreteDropout`` layer to the loss
    (Gal et al. 2017), so their rates are learned."""

    name = "concrete"

    def regularizer(self, loop: Loop) -> Tensor | None:
        return concrete_regularization(loop.model)


class NanGuard(Callback):
    """Stop with one line when the training loss is NaN/inf: checked at every epoch end and
    before every mid-epoch checkpoint (``every`` steps), so no bad state is ever saved.
    (Checking each step would cost a device sync per batch.)"""

    name = "nan_guard"

    def __init__(self, every: int = 0) -> None:
        self.every = every

    def on_batch_end(self, loop: Loop) -> None:
        if self.every and loop.progress.step % self.every == 0:
            self._check(loop, loop.running.mean_loss(), loop.progress.epoch + 1)

    def on_epoch_end(self, loop: Loop, record: dict[str, Any]) -> None:
        self._check(loop, float(record["train_loss"]), int(record["epoch"]))

    def _check(self, loop: Loop, value: float, epoch: int) -> None:
        check_finite("train_loss", value, epoch=epoch, step=loop.progress.step, run=loop.run,
                     advice="lower --lr or set --grad-clip")


class MetricsLog(Callback):
    """Append each epoch's record to ``metrics.jsonl`` (before its checkpoint: a crash in
    between re-runs that epoch on resume, which truncates the log first)."""

    name = "metrics"

    def __init__(self, run: RunDir) -> None:
        self.run = run

    def on_epoch_end(self, loop: Loop, record: dict[str, Any]) -> None:
        self.run.log(record)


class TensorBoard(Callback):
    """Scalars of each epoch's record in ``RUN/tensorboard`` (needs the tensorboard package)."""

    name = "tensorboard"

    def __init__(self, run: RunDir) -> None:
        self.run = run
        self.writer: Any = None

    def on_fit_start(self, loop: Loop) -> None:
        try:  # optional dependency (dev extra): imported only when asked for
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # pragma: no cover - tensorboard is installed in CI
            raise UserError("--tensorboard needs the tensorboard package: "
                            "pip install tensorboard") from None
        self.writer = SummaryWriter(log_dir=str(self.run / "tensorboard"))

    def on_epoch_end(self, loop: Loop, record: dict[str, Any]) -> None:
        for key, value in record.items():
            if key not in ("epoch", "step") and value is not None:
                self.writer.add_scalar(key, value, record["epoch"])
        self.writer.flush()

    def on_fit_end(self, loop: Loop) -> None:
        self.writer.close()


class Checkpoint(Callback):
    """Write the loop's state atomically at every epoch end, every ``every`` steps inside an
    epoch, and once more (``finished``) at the end."""

    name = "checkpoint"

    def __init__(self, run: RunDir, every: int = 0) -> None:
        self.run, self.every = run, every

    def on_batch_end(self, loop: Loop) -> None:
        if (self.every and loop.progress.step % self.every == 0
                and loop.progress.batch < loop.steps_per_epoch):
            self.run.save_checkpoint(loop.state_dict())

    def on_epoch_end(self, loop: Loop, record: dict[str, Any]) -> None:
        self.run.save_checkpoint(loop.state_dict())

    def on_fit_end(self, loop: Loop) -> None:
        self.run.save_checkpoint(loop.state_dict())  # a later resume returns its result


class GradualUnfreezing(Callback):
    """Before each epoch, train the head plus the top ``stages(epoch)`` backbone stages of
    a model with ``set_trainable_stages`` (``None``: everything). Derived from the epoch, so
    a resumed run picks the right stages without stored state."""

    name = "unfreezing"

    def __init__(self, stages: Callable[[int], int | None]) -> None:
        self.stages = stages

    def on_epoch_start(self, loop: Loop, epoch: int) -> None:
        loop.model.set_trainable_stages(self.stages(epoch))  # type: ignore[operator]


class OnEpochEnd(Callback):
    """Call ``fn(record)`` after each epoch (before its checkpoint); it may raise to stop the
    run (a sweep raises ``optuna.TrialPruned`` here to report and prune)."""

    name = "on_epoch_end"

    def __init__(self, fn: Callable[[dict[str, Any]], None]) -> None:
        self.fn = fn

    def on_epoch_end(self, loop: Loop, record: dict[str, Any]) -> None:
        self.fn(record)


class Lookahead(Callback):
    """Lookahead with an EMA of the weights (tysam-code's hlb-CIFAR10, Jordan's airbench;
    after Zhang et al. 2019 and Polyak averaging).

    An exponential moving average ``θ̄`` of every floating-point entry of the model's state
    (weights *and* BatchNorm running statistics) is updated every ``every`` optimiser steps
    and the model is set back onto it::

        d_t = β^k · (t / T)³          (t: optimiser step, T: all steps of the run)
        θ̄  ← θ̄ + (1 - d_t) (θ - θ̄)
        θ  ← θ̄

    Early in training ``d_t ≈ 0`` (the average follows the weights); towards the end the
    weights are pulled back onto an average over the last few hundred steps. When training
    ends the model keeps ``θ̄``. The average is part of the checkpoint, so ``--resume``
    continues it exactly.
    """

    name = "lookahead"

    def __init__(self, every: int = 5, decay: float = 0.95) -> None:
        if int(every) != every or every < 1:
            raise InvalidValue(f"--lookahead must be a positive number of steps, got {every!r}")
        if not 0.0 < decay < 1.0:
            raise InvalidValue(f"--lookahead-decay must be in (0, 1), got {decay!r}")
        self.every, self.decay = int(every), float(decay)
        self.average: dict[str, Tensor] | None = None

    def _floating(self, loop: Loop) -> dict[str, Tensor]:
        return {k: v for k, v in loop.model.state_dict().items() if v.is_floating_point()}

    def on_fit_start(self, loop: Loop) -> None:
        if self.average is None:  # a resumed run has its average back already
            self.average = {k: v.detach().clone() for k, v in self._floating(loop).items()}

    def decay_at(self, step: int, total: int) -> float:
        """``d_t = β^k (t/T)³`` for step ``t`` of ``T``."""
        return self.decay**self.every * (min(step, total) / max(total, 1)) ** 3

    @torch.no_grad()
    def on_batch_end(self, loop: Loop) -> None:
        step = loop.progress.step
        if step % self.every:
            return
        d = self.decay_at(step, loop.cfg.epochs * loop.steps_per_epoch)
        assert self.average is not None
        for key, value in self._floating(loop).items():
            avg = self.average[key]
            avg.lerp_(value, 1.0 - d)
            value.copy_(avg)

    @torch.no_grad()
    def on_fit_end(self, loop: Loop) -> None:
        if self.average is None:  # a finished run: nothing was trained in this process
            return
        for key, value in self._floating(loop).items():
            value.copy_(self.average[key])

    def state_dict(self) -> dict[str, Any]:
        return {"average": self.average}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        average = state.get("average")
        self.average = None if average is None else {k: v.clone() for k, v in average.items()}


def standard_callbacks(model: nn.Module, cfg: TrainConfig, steps_per_epoch: int,
                       run: RunDir | None) -> list[Callback]:
    """The callbacks the loop's options ask for, in the order they must run. The
    :class:`Checkpoint` is not among them: :func:`~droplab.engine.fit` runs it after every
    other callback, so the state it saves includes theirs for the same step."""
    out: list[Callback] = []
    if cfg.dropout_schedule:
        out.append(DropoutSchedule(model, cfg.dropout_schedule, cfg.epochs * steps_per_epoch,
                                   cfg.dropout_p))
    if cfg.max_norm is not None:
        out.append(MaxNorm(cfg.max_norm))
    if any(isinstance(m, ConcreteDropout) for m in model.modules()):
        out.append(ConcreteRegularizer())
    if cfg.lookahead:
        out.append(Lookahead(cfg.lookahead, cfg.lookahead_decay))
    out.append(NanGuard(cfg.checkpoint_every))
    if run is not None:
        out.append(MetricsLog(run))
        if cfg.tensorboard:
            out.append(TensorBoard(run))
    return out


def check_names(callbacks: Sequence[Callback]) -> None:
    names = [c.name for c in callbacks]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"two callbacks share the checkpoint name(s) {dupes}; give each a "
                         "distinct .name")


__all__ = [
    "Callback",
    "Checkpoint",
    "ConcreteRegularizer",
    "DropoutSchedule",
    "GradualUnfreezing",
    "Lookahead",
    "MaxNorm",
    "MetricsLog",
    "NanGuard",
    "OnEpochEnd",
    "TensorBoard",
    "check_names",
    "current_dropout_p",
    "dropout_modules",
    "standard_callbacks",
]

