"""The training loop on synthetic blobs: learning, determinism, checkpoints and resume."""

from __future__ import annotations

import errno
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from droplab.engine import Callback, OnEpochEnd, TrainConfig, evaluate, fit, predict_proba
from droplab.errors import InvalidValue, ResumeError, UnknownName, UserError
from droplab.runs import RunDir

KEYS = {"epoch", "step", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "dropout_p",
        "time_s", "images_per_s"}
TIMING = ("time_s", "images_per_s")


def blobs(n: int, seed: int, k: int = 3, d: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """``k`` Gaussian blobs with unit noise, centres 4 apart: Bayes accuracy ≈ 0.98."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.eye(k, d) * 4.0
    y = torch.arange(n) % k
    return centres[y] + torch.randn(n, d, generator=g), y


class BatchLoader:
    """Minimal loader with the droplab.data.Loader protocol: len, set_epoch, seeded order."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, shuffle: bool,
                 seed: int = 0) -> None:
        self.x, self.y, self.bs, self.shuffle, self.seed = x, y, batch_size, shuffle, seed
        self.epoch = 0
        self.iterated = 0

    def __len__(self) -> int:
        return math.ceil(len(self.y) / self.bs)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        self.iterated += 1
        n = len(self.y)
        order = (torch.randperm(n, generator=torch.Generator().manual_seed(self.seed * 1000 + self.epoch))
                 if self.shuffle else torch.arange(n))
        for i in range(0, n, self.bs):
            idx = order[i:i + self.bs]
            yield self.x[idx], self.y[idx]


class InterruptingLoader(BatchLoader):
    """Raises KeyboardInterrupt at a given (epoch, batch), like Ctrl-C mid-epoch."""

    def __init__(self, *a, stop_at: tuple[int, int], **k) -> None:
        super().__init__(*a, **k)
        self.stop_at = stop_at

    def __iter__(self):
        for i, batch in enumerate(super().__iter__()):
            if (self.epoch, i) == self.stop_at:
                raise KeyboardInterrupt
            yield batch


def mlp(seed: int = 0, p: float = 0.3, width: int = 32) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, width), nn.ReLU(), nn.Dropout(p), nn.Linear(width, 3))


def loaders(loader_cls=BatchLoader, **k) -> tuple[BatchLoader, BatchLoader]:
    xtr, ytr = blobs(240, seed=1)
    xva, yva = blobs(90, seed=2)
    return loader_cls(xtr, ytr, 16, True, **k), BatchLoader(xva, yva, 64, False)


def strip(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in records]


def test_fit_learns_logs_and_checkpoints(tmp_path: Path) -> None:
    run = RunDir.create(tmp_path / "r", task="train")
    tr, va = loaders()
    model = mlp()
    res = fit(model, tr, va, TrainConfig(epochs=3, lr=0.05), device="cpu", run=run,
              meta={"classes": ["a", "b", "c"]})
    recs = run.read_metrics()
    assert [r["epoch"] for r in recs] == [1, 2, 3]
    assert all(set(r) == KEYS for r in recs)
    assert recs[-1]["step"] == 3 * len(tr) == res["steps"]
    # Bayes accuracy of the blobs is ≈ 0.98; 3 epochs of SGD on 240 points reach > 0.9
    assert res["val_acc"] > 0.9 and res["best_val_acc"] >= res["val_acc"]
    assert recs[-1]["train_loss"] < recs[0]["train_loss"]
    # cosine schedule: the last step (t = T-1 of T=45) uses lr·(1+cos(π·44/45))/2 ≈ 0.0012·lr
    assert recs[0]["lr"] < 0.05 and recs[-1]["lr"] == pytest.approx(0.05 * 0.00122, rel=0.01)
    assert recs[0]["dropout_p"] == pytest.approx(0.3)
    ck = run.load_checkpoint()
    assert ck["finished"] and ck["epoch"] == 3 and ck["meta"]["classes"] == ["a", "b", "c"]
    assert {"model", "optimizer", "lr_scheduler", "rng", "best_val_acc", "scaler"} <= set(ck)
    ev = evaluate(model, va, "cpu")
    assert ev["acc"] == pytest.approx(res["val_acc"])
    probs, labels = predict_proba(model, va, "cpu")
    assert probs.shape == (90, 3) and torch.allclose(probs.sum(1), torch.ones(90))
    nll = -probs[torch.arange(90), labels].log().mean().item()
    assert nll == pytest.approx(ev["loss"], rel=1e-4)


def test_same_seed_same_metrics(tmp_path: Path) -> None:
    out = []
    for name in ("a", "b"):
        torch.manual_seed(7)
        tr, va = loaders()
        fit(mlp(), tr, va, TrainConfig(epochs=2), device="cpu", run=RunDir.create(tmp_path / name, "t"))
        out.append(strip(RunDir(tmp_path / name).read_metrics()))
    assert out[0] == out[1]


def test_mid_epoch_interrupt_resume_matches_uninterrupted(tmp_path: Path) -> None:
    """Ctrl-C in epoch 2 after a mid-epoch checkpoint; resume replays bit for bit."""
    cfg = TrainConfig(epochs=3, checkpoint_every=4, dropout_schedule="linear", lr=0.05)
    torch.manual_seed(3)
    tr, va = loaders()
    ref = fit(mlp(), tr, va, cfg, device="cpu", run=RunDir.create(tmp_path / "ref", "t"))

    run = RunDir.create(tmp_path / "cut", "t")
    torch.manual_seed(3)
    tr, va = loaders(InterruptingLoader, stop_at=(1, 10))  # 15 batches/epoch; ckpt at step 24
    with pytest.raises(KeyboardInterrupt):
        fit(mlp(), tr, va, cfg, device="cpu", run=run)
    ck = run.load_checkpoint()
    assert (ck["epoch"], ck["batch"], ck["step"]) == (1, 9, 24)
    torch.manual_seed(123)  # resume must not depend on the caller's RNG state
    tr, va = loaders()
    res = fit(mlp(seed=99), tr, va, cfg, device="cpu", run=run, resume=True)
    assert strip(run.read_metrics()) == strip(RunDir(tmp_path / "ref").read_metrics())
    assert {k: v for k, v in res.items() if k not in TIMING} == \
        {k: v for k, v in ref.items() if k not in TIMING}
    # the schedule ramped the rate linearly: 0 → 0.3 over the run
    assert [r["dropout_p"] for r in run.read_metrics()][-1] == pytest.approx(0.3)


def test_resume_finished_run_trains_nothing(tmp_path: Path) -> None:
    run = RunDir.create(tmp_path / "r", "t")
    tr, va = loaders()
    res = fit(mlp(), tr, va, TrainConfig(epochs=2), device="cpu", run=run)
    before = run.metrics_path.read_text()
    tr2, va2 = loaders()
    model = mlp(seed=5)
    again = fit(model, tr2, va2, TrainConfig(epochs=2), device="cpu", run=run, resume=True)
    assert again == res and tr2.iterated == 0 and run.metrics_path.read_text() == before
    assert evaluate(model, va, "cpu")["acc"] == pytest.approx(res["val_acc"])  # weights loaded


def test_resume_with_other_model_is_one_line_error(tmp_path: Path) -> None:
    run = RunDir.create(tmp_path / "r", "t")
    tr, va = loaders()
    fit(mlp(), tr, va, TrainConfig(epochs=1), device="cpu", run=run)
    with pytest.raises(ResumeError) as err:
        fit(mlp(width=16), tr, va, TrainConfig(epochs=2), device="cpu", run=run, resume=True)
    assert "\n" not in str(err.value) and "does not fit this model" in str(err.value)


def test_disk_full_while_checkpointing_keeps_previous(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    run = RunDir.create(tmp_path / "r", "t")
    tr, va = loaders()
    real_save = torch.save
    calls = {"n": 0}

    def save(obj, fh, *a, **k):  # the 2nd checkpoint writes a few bytes then hits ENOSPC
        calls["n"] += 1
        if calls["n"] == 2:
            fh.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, fh, *a, **k)

    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(UserError) as err:
        fit(mlp(), tr, va, TrainConfig(epochs=3), device="cpu", run=run)
    msg = str(err.value)
    assert "\n" not in msg and "No space left" in msg and "intact" in msg
    monkeypatch.setattr(torch, "save", real_save)
    ck = run.load_checkpoint()
    assert ck["epoch"] == 1 and not ck["finished"]
    assert [p.name for p in run.path.iterdir() if p.name.endswith(".tmp")] == []
    # and the run resumes from epoch 1
    res = fit(mlp(), tr, va, TrainConfig(epochs=3), device="cpu", run=run, resume=True)
    assert res["epochs"] == 3 and [r["epoch"] for r in run.read_metrics()] == [1, 2, 3]


@pytest.mark.parametrize("opt,sched", [("adamw", "onecycle"), ("sgd", "constant")])
def test_optimizers_and_lr_schedules(opt: str, sched: str) -> None:
    tr, va = loaders()
    cfg = TrainConfig(epochs=2, optimizer=opt, lr_schedule=sched, label_smoothing=0.1,
                      lr=0.02 if opt == "adamw" else None,
                      warmup_epochs=0.5 if sched == "constant" else 0.0)
    seen: list[dict] = []
    res = fit(mlp(), tr, va, cfg, device="cpu", callbacks=[OnEpochEnd(seen.append)])
    assert res["val_acc"] > 0.85 and len(seen) == 2
    if sched == "constant":  # warm-up ends in epoch 1; then the rate stays at the base lr
        assert [r["lr"] for r in seen] == pytest.approx([0.05, 0.05])  # DEFAULT_LR["sgd"]
    else:  # one-cycle's last step uses its minimum, max_lr/(25·1e4)
        assert seen[-1]["lr"] == pytest.approx(0.02 / 25 / 1e4)


def test_bf16_autocast_on_cpu_and_tensorboard(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    run = RunDir.create(tmp_path / "r", "t")
    tr, va = loaders()
    res = fit(mlp(), tr, va, TrainConfig(epochs=2, amp="bf16", tensorboard=True),
              device="cpu", run=run)
    assert res["val_acc"] > 0.85
    assert list((run.path / "tensorboard").glob("events.out.tfevents.*"))


def test_config_validation_is_one_line() -> None:
    with pytest.raises(UnknownName, match="optimizer 'rmsprop'"):
        TrainConfig(optimizer="rmsprop")
    with pytest.raises(UnknownName, match="lr schedule"):
        TrainConfig(lr_schedule="step")
    with pytest.raises(InvalidValue, match="--lr"):
        TrainConfig(lr=-1)
    with pytest.raises(InvalidValue, match="label-smoothing"):
        TrainConfig(label_smoothing=1.0)


def test_max_norm_caps_every_unit_after_each_step() -> None:
    tr, va = loaders()
    model = mlp()
    fit(model, tr, va, TrainConfig(epochs=1, lr=0.5, max_norm=0.5), device="cpu")
    for layer in (model[0], model[3]):
        assert layer.weight.norm(dim=1).max() <= 0.5 + 1e-5
    free = mlp()
    fit(free, tr, va, TrainConfig(epochs=1, lr=0.5), device="cpu")
    assert free[0].weight.norm(dim=1).max() > 0.6  # without the cap, lr 0.5 grows rows past it


def test_concrete_dropout_regulariser_is_added() -> None:
    """With a dominant dropout regulariser (D·λ·(p log p + (1-p) log(1-p)), minimal at
    p = 0.5) the learned rate climbs from 0.1 towards 0.5; the NLL alone would lower it."""
    from droplab.layers import ConcreteDropout

    tr, va = loaders()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(),
                          ConcreteDropout(0.1, nn.Linear(32, 3), dropout_regularizer=1.0))
    res = fit(model, tr, va, TrainConfig(epochs=2, lr=0.05), device="cpu")
    assert model[2].p > 0.3 and res["train_loss"] > 0


class Poisoned(nn.Module):
    """The MLP, whose output turns NaN from the ``at``-th forward pass in training."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.net, self.at, self.calls = mlp(), at, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        if self.training:
            self.calls += 1
            if self.calls >= self.at:
                out = out * float("nan")
        return out


def test_nan_loss_stops_in_one_line_and_keeps_the_last_good_checkpoint(tmp_path: Path) -> None:
    from droplab.engine import TrainingDiverged

    run = RunDir.create(tmp_path / "r", "t")
    tr, va = loaders()  # 15 batches per epoch: the loss turns NaN in epoch 2
    with pytest.raises(TrainingDiverged) as err:
        fit(Poisoned(at=20), tr, va, TrainConfig(epochs=3), device="cpu", run=run)
    msg = str(err.value)
    assert "\n" not in msg and "epoch 2, step 30" in msg and "train_loss=nan" in msg
    assert "last good checkpoint (epoch 1)" in msg
    ck = run.load_checkpoint()
    assert ck["epoch"] == 1 and all(torch.isfinite(v).all() for v in ck["model"].values())
    assert [r["epoch"] for r in run.read_metrics()] == [1]  # the NaN epoch is not logged


def test_resume_without_a_checkpoint_starts_over_and_empties_the_log(tmp_path: Path) -> None:
    run = RunDir.create(tmp_path / "r", "t")
    run.log({"epoch": 1, "step": 15, "train_loss": 9.0})  # left by a run killed before saving
    run.log({"epoch": 2, "step": 30, "train_loss": 9.0})
    tr, va = loaders()
    fit(mlp(), tr, va, TrainConfig(epochs=1), device="cpu", run=run, resume=True)
    recs = run.read_metrics()
    assert [r["epoch"] for r in recs] == [1] and recs[0]["train_loss"] < 9.0


class Counter(Callback):
    """Counts batches; its count must survive a kill and resume through the checkpoint."""

    name = "counter"

    def __init__(self) -> None:
        self.batches, self.starts = 0, []

    def on_epoch_start(self, loop, epoch: int) -> None:
        self.starts.append(epoch)

    def on_batch_end(self, loop) -> None:
        self.batches += 1

    def state_dict(self) -> dict:
        return {"batches": self.batches}

    def load_state_dict(self, state: dict) -> None:
        self.batches = state["batches"]


def test_callback_state_survives_a_mid_epoch_resume(tmp_path: Path) -> None:
    cfg = TrainConfig(epochs=2, checkpoint_every=4)
    run = RunDir.create(tmp_path / "r", "t")
    tr, va = loaders(InterruptingLoader, stop_at=(1, 10))
    first = Counter()
    with pytest.raises(KeyboardInterrupt):
        fit(mlp(), tr, va, cfg, device="cpu", run=run, callbacks=[first])
    assert first.batches == 25 and run.load_checkpoint()["callbacks"]["counter"] == {"batches": 24}
    again = Counter()
    tr, va = loaders()
    res = fit(mlp(), tr, va, cfg, device="cpu", run=run, resume=True, callbacks=[again])
    # 24 counted before the checkpoint, then batches 9..14 of epoch 2 (index 1): 30 in all
    assert again.batches == 30 == res["steps"] and again.starts == [1]
    with pytest.raises(ValueError, match="share the checkpoint name"):
        fit(mlp(), tr, va, cfg, device="cpu", callbacks=[Counter(), Counter()])
