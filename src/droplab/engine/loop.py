"""The one training loop for classifiers: :func:`train_one_epoch`, :func:`evaluate` and the
short driver :func:`fit`, read top to bottom as in torchvision's
``references/classification/train.py``.

A :class:`Loop` holds what one run carries between batches — model, optimiser, per-batch LR
schedule, GradScaler, :class:`~droplab.engine.state.Progress`, the running sums of the
unfinished epoch, the best validation accuracy, callbacks — and is exactly what a
checkpoint stores (:meth:`Loop.state_dict`). Everything optional (dropout schedule,
max-norm, Concrete regulariser, NaN guard, metrics log, TensorBoard, checkpoints, gradual
unfreezing, pruning reports) is a :mod:`callback <droplab.engine.callbacks>`.

Resume (``resume=True``, see :mod:`droplab.engine.resume`): the latest checkpoint (end of an
epoch, or mid-epoch when ``checkpoint_every`` is set) restores every piece and every RNG,
``metrics.jsonl`` is cut back to it, and the loop continues bit for bit: a mid-epoch resume
replays the epoch's data order up to the checkpointed batch, then restores the RNGs. A
finished run returns its stored result without training.

Data parallelism: under ``torchrun`` the model is wrapped in DistributedDataParallel, the
epoch's sums are all-reduced, and only rank 0 writes files or shows progress (the caller
shards its loader by rank; see :mod:`droplab.engine.distributed`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence, Sized
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from droplab.engine.callbacks import (
    Callback,
    Checkpoint,
    check_names,
    current_dropout_p,
    standard_callbacks,
)
from droplab.engine.config import TrainConfig
from droplab.engine.distributed import all_reduce_sum, rank_world, unwrap
from droplab.engine.optim import amp_settings, autocast, make_lr_scheduler, make_optimizer
from droplab.engine.resume import resume_point
from droplab.engine.state import Progress, capture_rng, restore_rng
from droplab.errors import ResumeError, UserError
from droplab.runs import RunDir
from droplab.runtime import progress as progress_bar

Batches = Iterable[tuple[Tensor, Tensor]]


@dataclass
class EpochSums:
    """Running sums of the epoch in progress (a mid-epoch checkpoint stores them)."""

    loss_sum: Tensor
    correct: Tensor
    seen: int = 0
    train_time: float = 0.0  # seconds before this stretch of the epoch
    t0: float = field(default_factory=time.perf_counter)

    @classmethod
    def start(cls, device: torch.device, partial: dict[str, float] | None = None) -> EpochSums:
        p = partial or {}
        return cls(torch.tensor(p.get("loss_sum", 0.0), dtype=torch.float64, device=device),
                   torch.tensor(int(p.get("correct", 0)), dtype=torch.long, device=device),
                   int(p.get("seen", 0)), float(p.get("train_time", 0.0)))

    def elapsed(self) -> float:
        return self.train_time + time.perf_counter() - self.t0

    def mean_loss(self) -> float:
        return self.loss_sum.item() / max(self.seen, 1)

    def state_dict(self) -> dict[str, float]:
        return {"loss_sum": self.loss_sum.item(), "correct": self.correct.item(),
                "seen": self.seen, "train_time": self.elapsed()}


@dataclass
class Loop:
    """The state of one training run (see the module docstring)."""

    model: nn.Module
    cfg: TrainConfig
    device: torch.device
    steps_per_epoch: int
    callbacks: list[Callback]
    run: RunDir | None = None  # where this process writes (None on ranks > 0)
    meta: dict[str, Any] = field(default_factory=dict)
    progress: Progress = field(default_factory=Progress)
    best_val_acc: float | None = None
    best_epoch: int = 0
    result: dict[str, Any] = field(default_factory=dict)
    partial: dict[str, float] | None = None  # sums of a checkpointed, unfinished epoch
    last_lr: float = 0.0

    def __post_init__(self) -> None:
        check_names(self.callbacks)
        self.train_model: nn.Module = self.model
        self.optimizer = make_optimizer(self.model, self.cfg)
        self.lr_scheduler = make_lr_scheduler(self.optimizer, self.cfg, self.steps_per_epoch)
        self.amp_dtype, use_scaler = amp_settings(self.cfg, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=use_scaler)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=self.cfg.label_smoothing)
        self.running = EpochSums.start(self.device)
        self.last_lr = self.optimizer.param_groups[0]["lr"]
        self.t_start = time.perf_counter()

    def time_s(self) -> float:
        """Training seconds of the whole run (earlier processes included)."""
        return self.progress.time_s + time.perf_counter() - self.t_start

    # -- checkpoints ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The checkpoint: tensors and plain Python only (droplab.runs' contract)."""
        mid_epoch = self.progress.batch > 0
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "callbacks": {c.name: c.state_dict() for c in self.callbacks},
            **self.progress.state_dict(),
            "time_s": self.time_s(),
            "partial": self.running.state_dict() if mid_epoch else None,
            "best_val_acc": self.best_val_acc,
            "best_epoch": self.best_epoch,
            "rng": capture_rng(self.device),
            "train_config": self.cfg.to_dict(),
            "meta": {"model_class": type(self.model).__name__,
                     "num_params": sum(p.numel() for p in self.model.parameters()),
                     **self.meta},
            "result": self.result,
        }

    def load_state_dict(self, ckpt: dict[str, Any]) -> None:
        """Continue from a checkpoint (RNGs are restored by :func:`fit`, which knows when)."""
        _load_model(self.model, ckpt, self.run)
        self.progress.load_state_dict(ckpt)
        self.result = dict(ckpt.get("result") or {})
        if self.progress.finished:
            return
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.lr_scheduler.load_state_dict(ckpt["lr_scheduler"])
        if ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        states = dict(ckpt.get("callbacks") or {})
        if "dropout_scheduler" in ckpt and ckpt["dropout_scheduler"] is not None:
            states.setdefault("dropout_schedule", ckpt["dropout_scheduler"])  # release 0.1
        for cb in self.callbacks:
            if cb.name in states:
                cb.load_state_dict(states[cb.name])
        self.best_val_acc = ckpt.get("best_val_acc")
        self.best_epoch = int(ckpt.get("best_epoch", 0))
        self.partial = dict(ckpt.get("partial") or {}) or None


# -- the epoch ----------------------------------------------------------------------------
def train_one_epoch(loop: Loop, loader: Batches, epoch: int, *, skip: int = 0,
                    rng_after_skip: dict[str, Any] | None = None) -> None:
    """One pass over ``loader``: forward (AMP), loss + callback regularisers, backward,
    optional gradient clipping, optimiser and LR-schedule steps, then ``on_batch_end``.

    ``skip`` batches are drawn but not trained on (a mid-epoch resume replays the data
    order), after which the RNGs are set to ``rng_after_skip``.
    """
    cfg, device, model = loop.cfg, loop.device, loop.model
    if hasattr(loader, "set_epoch"):
        loader.set_epoch(epoch)
    loop.running = sums = EpochSums.start(device, loop.partial)
    loop.partial = None
    main = rank_world()[0] == 0
    bar = progress_bar(loader, total=loop.steps_per_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}",
                       **({} if main else {"disable": True}))
    for batch_idx, (x, y) in enumerate(bar):
        if batch_idx < skip:
            if batch_idx == skip - 1 and rng_after_skip is not None:
                restore_rng(rng_after_skip)
            continue
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if cfg.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device, loop.amp_dtype):
            logits = loop.train_model(x)
            data_loss = loop.criterion(logits.float(), y)
            loss = data_loss
            for cb in loop.callbacks:
                term = cb.regularizer(loop)
                if term is not None:
                    loss = loss + term
        loop.optimizer.zero_grad(set_to_none=True)
        loop.scaler.scale(loss).backward()
        if cfg.grad_clip is not None:
            loop.scaler.unscale_(loop.optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        loop.scaler.step(loop.optimizer)
        loop.scaler.update()
        loop.last_lr = loop.optimizer.param_groups[0]["lr"]  # the rate this step used
        loop.lr_scheduler.step()

        sums.loss_sum += data_loss.detach().double() * y.numel()  # without regularisers
        sums.correct += (logits.detach().argmax(1) == y).sum()
        sums.seen += y.numel()
        loop.progress.step += 1
        loop.progress.batch = batch_idx + 1
        for cb in loop.callbacks:
            cb.on_batch_end(loop)
        if main and batch_idx % 10 == 0 and hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{sums.mean_loss():.3f}",
                            acc=f"{sums.correct.item() / max(sums.seen, 1):.3f}")


def end_epoch(loop: Loop, epoch: int, val: dict[str, float] | None) -> dict[str, Any]:
    """The epoch's record (all ranks' sums), the result so far; then ``on_epoch_end``."""
    s = loop.running
    train_time = s.elapsed()
    totals = all_reduce_sum(torch.tensor([s.loss_sum.item(), float(s.correct.item()),
                                          float(s.seen)], dtype=torch.float64, device=loop.device))
    if val is not None and (loop.best_val_acc is None or val["acc"] > loop.best_val_acc):
        loop.best_val_acc, loop.best_epoch = val["acc"], epoch + 1
    loop.progress.epoch, loop.progress.batch = epoch + 1, 0
    record = {
        "epoch": epoch + 1,
        "step": loop.progress.step,
        "train_loss": (totals[0] / totals[2]).item(),
        "train_acc": (totals[1] / totals[2]).item(),
        "val_loss": val["loss"] if val else None,
        "val_acc": val["acc"] if val else None,
        "lr": loop.last_lr,
        "dropout_p": current_dropout_p(loop.model),
        "time_s": loop.time_s(),
        "images_per_s": totals[2].item() / max(train_time, 1e-9),
    }
    loop.result = {
        "epochs": epoch + 1, "steps": loop.progress.step,
        "train_loss": record["train_loss"], "train_acc": record["train_acc"],
        "val_loss": record["val_loss"], "val_acc": record["val_acc"],
        "best_val_acc": loop.best_val_acc, "best_epoch": loop.best_epoch,
        "time_s": record["time_s"], "images_per_s": record["images_per_s"],
    }
    for cb in loop.callbacks:
        cb.on_epoch_end(loop, record)
    return record


# -- evaluation ---------------------------------------------------------------------------
@torch.no_grad()
def predict_proba(model: nn.Module, loader: Batches, device: torch.device | str
                  ) -> tuple[Tensor, Tensor]:
    """Softmax probabilities ``(N, K)`` (float32, CPU) and labels ``(N,)`` in eval mode.

    The model's training flag is restored afterwards.
    """
    device = torch.device(device)
    model = unwrap(model)
    was_training = model.training
    model.eval()
    probs, labels = [], []
    try:
        for x, y in loader:
            logits = model(x.to(device, non_blocking=True)).float()
            probs.append(logits.softmax(dim=1).cpu())
            labels.append(y.cpu())
    finally:
        model.train(was_training)
    if not probs:
        return torch.empty(0, 0), torch.empty(0, dtype=torch.long)
    return torch.cat(probs), torch.cat(labels)


@torch.no_grad()
def evaluate(model: nn.Module, loader: Batches, device: torch.device | str) -> dict[str, float]:
    """Mean negative log-likelihood (``loss``) and accuracy (``acc``) in eval mode."""
    device = torch.device(device)
    model = unwrap(model)
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    n = 0
    try:
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            logits = model(x).float()
            loss_sum += F.cross_entropy(logits, y, reduction="sum").double()
            correct += (logits.argmax(1) == y).sum()
            n += y.numel()
    finally:
        model.train(was_training)
    if n == 0:
        return {"loss": float("nan"), "acc": float("nan")}
    return {"loss": loss_sum.item() / n, "acc": correct.item() / n}


# -- the driver ---------------------------------------------------------------------------
def fit(
    model: nn.Module,
    train_loader: Batches,
    val_loader: Batches | None,
    cfg: TrainConfig,
    *,
    device: torch.device | str,
    run: RunDir | None = None,
    resume: bool = False,
    callbacks: Sequence[Callback] = (),
    meta: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train ``model`` in place; return the last epoch's figures.

    ``train_loader`` yields ``(x, y)`` batches (``len()`` and an optional
    ``set_epoch(epoch)`` for a reproducible per-epoch order); ``val_loader`` may be
    ``None``. With ``run`` the loop writes ``metrics.jsonl`` (keys ``epoch, step,
    train_loss, train_acc, val_loss, val_acc, lr, dropout_p, time_s, images_per_s``; ``lr``
    is the rate the epoch's last step used, ``time_s`` the cumulative training time) and
    ``checkpoint.pt``, whose ``meta`` adds ``meta`` (e.g. classes and input shape).
    ``callbacks`` run after the standard ones (:func:`standard_callbacks`) and before the
    checkpoint.

    Returns ``epochs, steps, train_loss, train_acc, val_loss, val_acc, best_val_acc,
    best_epoch, time_s, images_per_s``.
    """
    device = torch.device(device)
    rank, world = rank_world()
    writer = run if rank == 0 else None
    steps = len(train_loader) if isinstance(train_loader, Sized) else 0
    if steps == 0:
        raise UserError("the training set is empty; check --classes and --val-fraction")
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    saver = [Checkpoint(writer, cfg.checkpoint_every)] if writer is not None else []
    loop = Loop(model, cfg, device, steps,
                [*standard_callbacks(model, cfg, steps, writer), *callbacks, *saver],
                run=writer, meta=dict(meta or {}))

    ckpt = resume_point(run, device, truncate=writer is not None) if resume and run else None
    if ckpt is not None:
        loop.load_state_dict(ckpt)
        if loop.progress.finished:
            return loop.result
        if loop.progress.batch == 0:  # mid-epoch: restored after the replayed batches
            restore_rng(ckpt["rng"])
    elif rank > 0:  # identical weights come from DDP's broadcast; distinct dropout masks
        torch.manual_seed(torch.initial_seed() + rank)
    if world > 1:
        loop.train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    loop.t_start = time.perf_counter()
    for cb in loop.callbacks:
        cb.on_fit_start(loop)
    model.train()
    for epoch in range(loop.progress.epoch, cfg.epochs):
        for cb in loop.callbacks:
            cb.on_epoch_start(loop, epoch)
        skip = loop.progress.batch
        train_one_epoch(loop, train_loader, epoch, skip=skip,
                        rng_after_skip=ckpt["rng"] if (ckpt is not None and skip) else None)
        val = evaluate(model, val_loader, device) if val_loader is not None else None
        end_epoch(loop, epoch, val)
    loop.progress.finished = True
    for cb in loop.callbacks:
        cb.on_fit_end(loop)
    return loop.result


def _load_model(model: nn.Module, ckpt: dict[str, Any], run: RunDir | None) -> None:
    """Load the checkpoint's weights; a different architecture is a one-line ResumeError."""
    where = run.path if run is not None else "the checkpoint"
    stored = (ckpt.get("meta") or {}).get("model_class")
    if stored is not None and stored != type(model).__name__:
        raise ResumeError(f"{where} holds a {stored} but this run builds a "
                          f"{type(model).__name__}; resume with the same model options or "
                          "start a new --out folder")
    try:
        model.load_state_dict(ckpt["model"])
    except (RuntimeError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ResumeError(f"the checkpoint in {where} does not fit this model ({first[:120]}); "
                          "resume with the same model, classes and image size, or start a "
                          "new --out folder") from None
