"""The one training loop every droplab task uses.

:func:`fit` reads top to bottom like torchvision's ``references/classification/train.py``:
build the optimiser and per-batch LR schedule, optionally resume from the run folder's
checkpoint, then for each epoch train (AMP, dropout schedule, Concrete-dropout regulariser,
max-norm), validate, log one ``metrics.jsonl`` record, write an atomic checkpoint and call
``on_epoch``. Every option in :class:`TrainConfig` maps to one behaviour.

Checkpoints hold everything needed to continue bit-for-bit on the same device: model,
optimiser, LR scheduler, dropout scheduler, GradScaler, epoch and step, RNG states (Python,
NumPy, torch CPU/CUDA) and the best validation accuracy. ``resume=True`` restarts from the
latest checkpoint (end of an epoch, or mid-epoch when ``checkpoint_every`` is set), drops
``metrics.jsonl`` records written after it, and on a finished run returns the stored
result without training.

Data-parallel training uses PyTorch's own engine: under ``torchrun`` (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK`` in the environment) :func:`init_distributed` starts the
process group (gloo on CPU, NCCL on CUDA), :func:`fit` wraps the model in
:class:`~torch.nn.parallel.DistributedDataParallel`, and only rank 0 writes files or
shows progress. The caller shards its training loader by rank.

References: Srivastava et al. 2014 (dropout and max-norm), Loshchilov & Hutter 2017/2019
(SGDR cosine schedule, AdamW), Smith & Topin 2019 (one-cycle), Gal et al. 2017 (Concrete
dropout regulariser).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable, Sized
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from droplab.engine.config import TrainConfig
from droplab.engine.distributed import (
    distributed_env,
    init_distributed,
    rank_world,
    shutdown_distributed,
)
from droplab.errors import ResumeError, UserError
from droplab.runs import RunDir
from droplab.runtime import progress

__all__ = [
    "TrainConfig",
    "distributed_env",
    "evaluate",
    "fit",
    "init_distributed",
    "predict_proba",
    "shutdown_distributed",
]

# ------------------------------------------------------------------------------------------
# building blocks
# ------------------------------------------------------------------------------------------
def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD with Nesterov momentum or AdamW; no weight decay on biases and norm parameters.

    A model may define ``lr_groups() -> [(params, lr_scale), ...]`` (e.g. layer-wise
    learning-rate decay when fine-tuning); each group then trains at ``lr * lr_scale``.
    Frozen parameters are included so that unfreezing them later needs no new optimiser
    (parameters without gradients are skipped by the update).
    """
    lr, wd = cfg.resolved_lr, cfg.resolved_weight_decay
    lr_groups = getattr(model, "lr_groups", None)
    parts = lr_groups() if callable(lr_groups) else [(list(model.parameters()), 1.0)]
    groups: list[dict[str, Any]] = []
    for params, scale in parts:
        params = list(params)
        for decay, chosen in ((wd, [p for p in params if p.ndim > 1]),
                              (0.0, [p for p in params if p.ndim <= 1])):
            if chosen:
                groups.append({"params": chosen, "weight_decay": decay, "lr": lr * float(scale)})
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)
    return torch.optim.AdamW(groups, lr=lr)


def make_lr_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """A per-batch scheduler: cosine to zero (with optional linear warm-up), one-cycle, or
    constant."""
    from torch.optim import lr_scheduler as sch

    total = max(1, cfg.epochs * steps_per_epoch)
    if cfg.lr_schedule == "onecycle":
        max_lr = [g["lr"] for g in optimizer.param_groups]
        return sch.OneCycleLR(optimizer, max_lr=max_lr, total_steps=total)
    warmup = min(total - 1, round(cfg.warmup_epochs * steps_per_epoch))
    if cfg.lr_schedule == "cosine":
        main: sch.LRScheduler = sch.CosineAnnealingLR(optimizer, T_max=total - warmup)
    else:
        main = sch.LambdaLR(optimizer, lambda _step: 1.0)
    if warmup <= 0:
        return main
    ramp = sch.LinearLR(optimizer, start_factor=0.01, total_iters=warmup)
    return sch.SequentialLR(optimizer, [ramp, main], milestones=[warmup])


def amp_settings(cfg: TrainConfig, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """``(autocast dtype or None, use GradScaler)`` for ``cfg.amp`` on ``device``."""
    mode = cfg.amp
    if mode == "auto":
        if device.type != "cuda":
            return None, False
        mode = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if mode == "off":
        return None, False
    if mode == "fp16":
        return torch.float16, device.type == "cuda"
    return torch.bfloat16, False


def _autocast(device: torch.device, dtype: torch.dtype | None) -> AbstractContextManager[Any]:
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def dropout_modules(model: nn.Module) -> list[nn.Module]:
    """Every dropout-like module with a rate ``p`` (droplab's and torch's own)."""
    from droplab.layers import DropoutModule

    kinds = (DropoutModule, nn.modules.dropout._DropoutNd)
    return [m for m in model.modules() if isinstance(m, kinds)]


def current_dropout_p(model: nn.Module) -> float | None:
    """The largest dropout rate in ``model`` (``None`` when it has no dropout)."""
    rates = [float(m.p) for m in dropout_modules(model)]
    return max(rates) if rates else None


def _has_concrete(model: nn.Module) -> bool:
    import droplab.layers as layers

    cls = getattr(layers, "ConcreteDropout", None)
    return cls is not None and any(isinstance(m, cls) for m in model.modules())


def _apply_max_norm(model: nn.Module, c: float) -> None:
    from droplab.models import apply_max_norm

    apply_max_norm(model, c)


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _to_device(x: Tensor, y: Tensor, device: torch.device, channels_last: bool) -> tuple[Tensor, Tensor]:
    x = x.to(device, non_blocking=True)
    if channels_last and x.ndim == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y.to(device, non_blocking=True)


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


# ------------------------------------------------------------------------------------------
# evaluation
# ------------------------------------------------------------------------------------------
@torch.no_grad()
def predict_proba(
    model: nn.Module, loader: Iterable[tuple[Tensor, Tensor]], device: torch.device | str
) -> tuple[Tensor, Tensor]:
    """Softmax probabilities ``(N, K)`` (float32, CPU) and labels ``(N,)`` in eval mode.

    The model's training flag is restored afterwards.
    """
    device = torch.device(device)
    model = _unwrap(model)
    was_training = model.training
    model.eval()
    probs, labels = [], []
    try:
        for x, y in loader:
            x = x.to(device, non_blocking=True)
            logits = model(x).float()
            probs.append(logits.softmax(dim=1).cpu())
            labels.append(y.cpu())
    finally:
        model.train(was_training)
    if not probs:
        return torch.empty(0, 0), torch.empty(0, dtype=torch.long)
    return torch.cat(probs), torch.cat(labels)


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: Iterable[tuple[Tensor, Tensor]], device: torch.device | str
) -> dict[str, float]:
    """Mean negative log-likelihood (``loss``) and accuracy (``acc``) in eval mode."""
    device = torch.device(device)
    model = _unwrap(model)
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


# ------------------------------------------------------------------------------------------
# the loop
# ------------------------------------------------------------------------------------------
def fit(
    model: nn.Module,
    train_loader: Iterable[tuple[Tensor, Tensor]],
    val_loader: Iterable[tuple[Tensor, Tensor]] | None,
    cfg: TrainConfig,
    *,
    device: torch.device | str,
    run: RunDir | None = None,
    resume: bool = False,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    meta: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train ``model`` in place and return a result dict.

    ``train_loader`` yields ``(x, y)`` batches (``len()`` and an optional
    ``set_epoch(epoch)`` for a reproducible per-epoch order); ``val_loader`` may be
    ``None``. With ``run`` the loop writes ``metrics.jsonl`` (keys ``epoch, step,
    train_loss, train_acc, val_loss, val_acc, lr, dropout_p, time_s, images_per_s``;
    ``lr`` is the rate the epoch's last step used, ``time_s`` the cumulative wall time) and ``checkpoint.pt``; ``meta`` is stored in
    the checkpoint (e.g. classes and input shape). ``on_epoch(record)`` runs after each
    epoch's checkpoint and may raise (e.g. ``optuna.TrialPruned``) to stop early.

    Returns ``epochs, steps, train_loss, train_acc, val_loss, val_acc, best_val_acc,
    best_epoch, time_s, images_per_s`` (the last epoch's figures).
    """
    device = torch.device(device)
    rank, world = rank_world()
    main_process = rank == 0
    writer_run = run if main_process else None

    # -- model, optimiser, schedules -------------------------------------------------------
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    steps_per_epoch = len(train_loader) if isinstance(train_loader, Sized) else 0
    if steps_per_epoch == 0:
        raise UserError("the training set is empty; check --classes and --val-fraction")
    optimizer = make_optimizer(model, cfg)
    lr_scheduler = make_lr_scheduler(optimizer, cfg, steps_per_epoch)
    dropout_scheduler = None
    if cfg.dropout_schedule:
        from droplab.schedules import DropoutScheduler, make_schedule

        target = cfg.dropout_p if cfg.dropout_p is not None else current_dropout_p(model)
        if target is None:
            raise UserError("--dropout-schedule needs a model with dropout; set --dropout P")
        schedule = make_schedule(cfg.dropout_schedule, target, cfg.epochs * steps_per_epoch)
        dropout_scheduler = DropoutScheduler(model, schedule)
    amp_dtype, use_scaler = amp_settings(cfg, device)
    scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)
    concrete = _has_concrete(model)
    if concrete:
        from droplab.layers import concrete_regularization
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)

    # -- resume ----------------------------------------------------------------------------
    start_epoch, skip_batches, step, elapsed = 0, 0, 0, 0.0
    result: dict[str, Any] = {}
    best_val_acc: float | None = None
    best_epoch = 0
    partial: dict[str, float] = {}
    ckpt = run.load_checkpoint(map_location=device) if (resume and run is not None) else None
    if ckpt is not None:
        _load_model_state(model, ckpt, run)
        if ckpt.get("finished"):
            return dict(ckpt["result"])
        optimizer.load_state_dict(ckpt["optimizer"])
        lr_scheduler.load_state_dict(ckpt["lr_scheduler"])
        if dropout_scheduler is not None and ckpt.get("dropout_scheduler") is not None:
            dropout_scheduler.load_state_dict(ckpt["dropout_scheduler"])
        if ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        start_epoch, skip_batches = int(ckpt["epoch"]), int(ckpt.get("batch", 0))
        step, elapsed = int(ckpt["step"]), float(ckpt.get("time_s", 0.0))
        best_val_acc, best_epoch = ckpt.get("best_val_acc"), int(ckpt.get("best_epoch", 0))
        partial = dict(ckpt.get("partial") or {})
        result = dict(ckpt.get("result") or {})
        if skip_batches == 0:  # mid-epoch: restored after the skipped batches are drawn
            _set_rng_state(ckpt["rng"])
        if writer_run is not None:
            done = start_epoch
            writer_run.truncate_metrics(lambda r: int(r.get("epoch", 0)) <= done)
    elif rank > 0:
        # identical weights come from DDP's broadcast; distinct dropout masks per process
        torch.manual_seed(torch.initial_seed() + rank)

    train_model: nn.Module = model
    if world > 1:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    tb = _tensorboard(writer_run) if (cfg.tensorboard and writer_run is not None) else None

    def checkpoint(
        epoch: int, batch: int, partial_sums: dict[str, float] | None, finished: bool = False
    ) -> None:
        if writer_run is None:
            return
        writer_run.save_checkpoint({
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "lr_scheduler": lr_scheduler.state_dict(),
            "dropout_scheduler": dropout_scheduler.state_dict() if dropout_scheduler else None,
            "scaler": scaler.state_dict() if use_scaler else None,
            "epoch": epoch,
            "batch": batch,
            "step": step,
            "time_s": elapsed + (time.perf_counter() - t_start),
            "partial": partial_sums,
            "best_val_acc": best_val_acc,
            "best_epoch": best_epoch,
            "rng": _rng_state(),
            "train_config": asdict(cfg),
            "meta": _model_meta(model, meta),
            "result": result,
            "finished": finished,
        })

    # -- epochs ----------------------------------------------------------------------------
    t_start = time.perf_counter()
    last_lr = optimizer.param_groups[0]["lr"]
    model.train()
    for epoch in range(start_epoch, cfg.epochs):
        if hasattr(train_loader, "set_epoch"):
            train_loader.set_epoch(epoch)
        t_epoch = time.perf_counter()
        loss_sum = torch.tensor(partial.get("loss_sum", 0.0), dtype=torch.float64, device=device)
        correct = torch.tensor(int(partial.get("correct", 0)), dtype=torch.long, device=device)
        seen = int(partial.get("seen", 0))
        bar_opts: dict[str, Any] = {} if main_process else {"disable": True}
        bar = progress(train_loader, total=steps_per_epoch,
                       desc=f"epoch {epoch + 1}/{cfg.epochs}", **bar_opts)
        for batch_idx, (x, y) in enumerate(bar):
            if batch_idx < skip_batches:  # resuming mid-epoch: replay the data order
                if batch_idx == skip_batches - 1 and ckpt is not None:
                    _set_rng_state(ckpt["rng"])
                continue
            x, y = _to_device(x, y, device, cfg.channels_last)
            with _autocast(device, amp_dtype):
                logits = train_model(x)
                data_loss = criterion(logits.float(), y)
                loss = data_loss + concrete_regularization(model) if concrete else data_loss
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if cfg.grad_clip is not None:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            last_lr = optimizer.param_groups[0]["lr"]  # the rate this step used
            lr_scheduler.step()
            if dropout_scheduler is not None:
                dropout_scheduler.step()
            if cfg.max_norm is not None:
                _apply_max_norm(model, cfg.max_norm)
            step += 1

            loss_sum += data_loss.detach().double() * y.numel()  # without regularisers
            correct += (logits.detach().argmax(1) == y).sum()
            seen += y.numel()
            if main_process and batch_idx % 10 == 0 and hasattr(bar, "set_postfix"):
                bar.set_postfix(loss=f"{loss_sum.item() / seen:.3f}",
                                acc=f"{correct.item() / seen:.3f}")
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 \
                    and batch_idx + 1 < steps_per_epoch:
                checkpoint(epoch, batch_idx + 1, {
                    "loss_sum": loss_sum.item(), "correct": correct.item(), "seen": seen,
                    "train_time": partial.get("train_time", 0.0) + time.perf_counter() - t_epoch,
                })
        train_time = partial.get("train_time", 0.0) + time.perf_counter() - t_epoch
        skip_batches, partial = 0, {}

        totals = torch.tensor([loss_sum.item(), float(correct.item()), float(seen)],
                              dtype=torch.float64, device=device)
        if world > 1:
            dist.all_reduce(totals)
        train_loss, train_acc = (totals[0] / totals[2]).item(), (totals[1] / totals[2]).item()
        val = evaluate(model, val_loader, device) if val_loader is not None else None
        if val is not None and (best_val_acc is None or val["acc"] > best_val_acc):
            best_val_acc, best_epoch = val["acc"], epoch + 1
        record = {
            "epoch": epoch + 1,
            "step": step,
            "train_loss": train_loss,
            "train_acc": train_acc,
            "val_loss": val["loss"] if val else None,
            "val_acc": val["acc"] if val else None,
            "lr": last_lr,
            "dropout_p": current_dropout_p(model),
            "time_s": elapsed + time.perf_counter() - t_start,
            "images_per_s": totals[2].item() / max(train_time, 1e-9),
        }
        if writer_run is not None:
            writer_run.log(record)  # logged first: a crash before the checkpoint re-runs it
            if tb is not None:
                for key, value in record.items():
                    if key not in ("epoch", "step") and value is not None:
                        tb.add_scalar(key, value, epoch + 1)
                tb.flush()
        result = {
            "epochs": epoch + 1,
            "steps": step,
            "train_loss": train_loss,
            "train_acc": train_acc,
            "val_loss": record["val_loss"],
            "val_acc": record["val_acc"],
            "best_val_acc": best_val_acc,
            "best_epoch": best_epoch,
            "time_s": record["time_s"],
            "images_per_s": record["images_per_s"],
        }
        checkpoint(epoch + 1, 0, None)
        if on_epoch is not None:
            on_epoch(record)

    if tb is not None:
        tb.close()
    checkpoint(cfg.epochs, 0, None, finished=True)  # a later resume returns this result
    return result


def _model_meta(model: nn.Module, meta: dict[str, Any] | None) -> dict[str, Any]:
    out = {
        "model_class": type(model).__name__,
        "num_params": sum(p.numel() for p in model.parameters()),
    }
    out.update(meta or {})
    return out


def _load_model_state(model: nn.Module, ckpt: dict[str, Any], run: RunDir | None) -> None:
    """Load the checkpoint's weights; a different architecture is a one-line ResumeError."""
    where = run.path if run is not None else "the checkpoint"
    stored = (ckpt.get("meta") or {}).get("model_class")
    if stored is not None and stored != type(model).__name__:
        raise ResumeError(
            f"{where} holds a {stored} but this run builds a {type(model).__name__}; "
            "resume with the same model options or start a new --out folder"
        )
    try:
        model.load_state_dict(ckpt["model"])
    except (RuntimeError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ResumeError(
            f"the checkpoint in {where} does not fit this model ({first[:120]}); resume with "
            "the same model, classes and image size, or start a new --out folder"
        ) from None


def _tensorboard(run: RunDir) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # pragma: no cover - tensorboard is a dev extra
        raise UserError("--tensorboard needs the tensorboard package: pip install tensorboard") from None
    return SummaryWriter(log_dir=str(run / "tensorboard"))
