"""The GAN recipe (droplab.engine.gan): instance noise, DiffAugment and feedback dropout in
the loop, exact resume with all of them, and the configuration's one-line refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from droplab.engine.gan import GanConfig, GanTrainer, load_gan_data
from droplab.errors import InvalidValue, UnknownName
from droplab.runs import RunDir
from droplab.tasks.gan import run


def _cfg(**kw: object) -> GanConfig:
    base: dict[str, object] = dict(dataset="digits", limit=12, batch_size=32, width=8, z_dim=8,
                                   epochs=1, eval_samples=0, grid=16, device="cpu")
    base.update(kw)
    return GanConfig.build(**base).resolved()


def test_instance_noise_anneals_linearly_to_zero() -> None:
    tr = GanTrainer(_cfg(instance_noise=0.4, epochs=4), (1, 8, 8), torch.device("cpu"), 120)
    per_epoch = 10  # horizon = 4 epochs × 10 steps
    assert tr.noise_std(0, per_epoch) == pytest.approx(0.4)
    assert tr.noise_std(20, per_epoch) == pytest.approx(0.2)
    assert tr.noise_std(40, per_epoch) == 0.0 and tr.noise_std(55, per_epoch) == 0.0
    short = GanTrainer(_cfg(instance_noise=0.4, epochs=4, noise_anneal_epochs=1), (1, 8, 8),
                       torch.device("cpu"), 120)
    assert short.noise_std(5, per_epoch) == pytest.approx(0.2) and short.noise_std(10, per_epoch) == 0
    off = GanTrainer(_cfg(), (1, 8, 8), torch.device("cpu"), 120)
    assert off.noise_std(0, per_epoch) == 0.0


class _Recorder(nn.Module):
    """A critic that records its inputs (and scores them by their mean)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(()))
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach().clone())
        return self.w * x.flatten(1).mean(1)


def _one_batch_epoch(tr: GanTrainer, real: torch.Tensor) -> None:
    class One:
        def set_epoch(self, e: int) -> None:
            pass

        def __len__(self) -> int:
            return 1

        def __iter__(self):  # type: ignore[no-untyped-def]
            yield real, torch.zeros(real.shape[0], dtype=torch.long)

    tr.train_epoch(One(), 1)  # type: ignore[arg-type]


def test_the_discriminator_sees_noisy_augmented_reals_and_fakes() -> None:
    # Real images all 0 and σ₀ = 0.3 at step 0: what D sees of the reals is pure noise with
    # sd 0.3 (8·64 values: sd of the estimate ≈ 0.3/√(2·512) ≈ 0.009; 0.03 is > 3 SE).
    tr = GanTrainer(_cfg(instance_noise=0.3, epochs=10), (1, 8, 8), torch.device("cpu"), 120)
    rec = _Recorder()
    tr.d = rec
    tr.discriminators = [rec]
    tr.opt_d = torch.optim.Adam(rec.parameters())
    _one_batch_epoch(tr, torch.zeros(8, 1, 8, 8))
    real_in, fake_in, g_in = rec.seen  # D step: real, fake; G step: fake
    assert float(real_in.std()) == pytest.approx(0.3, abs=0.03) and abs(float(real_in.mean())) < 0.05
    assert not torch.equal(fake_in, g_in)  # fresh noise for the generator's step
    # DiffAugment cutout: every image D sees has a zeroed square (no noise here)
    tr = GanTrainer(_cfg(diffaugment="cutout"), (1, 8, 8), torch.device("cpu"), 120)
    rec = _Recorder()
    tr.d, tr.discriminators, tr.opt_d = rec, [rec], torch.optim.Adam(rec.parameters())
    _one_batch_epoch(tr, torch.ones(8, 1, 8, 8))
    for seen in rec.seen[:1]:
        zeros = (seen == 0).flatten(1).sum(1)
        assert (zeros >= 1).all() and (zeros <= 16).all()


def test_feedback_dropout_keeps_each_discriminator_at_the_stated_rate() -> None:
    # K = 3, p = 0.5: a discriminator is kept with 0.5 plus the share of steps where all are
    # dropped (1/8) and it is the one restored (1/3): 0.5 + 1/24 = 0.5417. Over 4,000 steps
    # the SE of a share is ≈ 0.0079; 0.03 is ≈ 4 SE. No step is without feedback.
    tr = GanTrainer(_cfg(discriminators=3, d_feedback_dropout=0.5), (1, 8, 8),
                    torch.device("cpu"), 120)
    counts = torch.zeros(3)
    sizes = []
    for _ in range(4000):
        kept = tr._feedback()
        sizes.append(len(kept))
        for d in kept:
            counts[next(i for i, m in enumerate(tr.discriminators) if m is d)] += 1
    share = counts / 4000
    assert torch.allclose(share, torch.full((3,), 0.5 + 1 / 24), atol=0.03)
    assert min(sizes) == 1 and max(sizes) == 3
    assert tr._feedback() is not None
    every = GanTrainer(_cfg(discriminators=3), (1, 8, 8), torch.device("cpu"), 120)
    assert every._feedback() == every.discriminators


def test_resume_is_exact_with_every_regulariser(tmp_path: Path) -> None:
    # DiffAugment, instance noise, minibatch std, 2 discriminators with feedback dropout
    # and D dropout all draw random numbers: a resumed run replays them. (The noise anneals
    # over --noise-anneal-epochs, fixed here: by default it follows --epochs, which a
    # resume may raise.)
    opts: dict[str, object] = dict(diffaugment="color,translation,cutout", instance_noise=0.2,
                                   noise_anneal_epochs=2, minibatch_std=True, discriminators=2, d_feedback_dropout=0.5,
                                   d_dropout=0.3)
    full = run(GanConfig.build(**{**_base(tmp_path / "full"), "epochs": 2, **opts}))
    run(GanConfig.build(**{**_base(tmp_path / "split"), "epochs": 1, **opts}))
    resumed = run(GanConfig.build(**{**_base(tmp_path / "split"), "epochs": 2, **opts}),
                  resume=True)
    assert resumed["d_loss"] == full["d_loss"] and resumed["g_loss"] == full["g_loss"]
    a = RunDir(tmp_path / "full").load_checkpoint()
    b = RunDir(tmp_path / "split").load_checkpoint()
    for part in ("g", "d", "g_ema"):
        for k, v in a[part].items():
            assert torch.equal(v, b[part][k]), (part, k)
    stored = json.loads((tmp_path / "full" / "config.json").read_text())
    assert stored["augment"]["diffaugment"] == ["color", "translation", "cutout"]
    assert stored["model"]["discriminators"] == 2
    recs = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert recs[0]["noise_std"] > recs[1]["noise_std"] == 0.0  # annealed over the 2 epochs
    plain = run(GanConfig.build(**{**_base(tmp_path / "plain"), "epochs": 2}))
    assert plain["d_loss"] != full["d_loss"]


def _base(out: Path) -> dict[str, object]:
    return dict(dataset="digits", limit=12, batch_size=32, width=8, z_dim=8, eval_samples=0,
                grid=16, device="cpu", out=str(out))


@pytest.mark.parametrize(("kw", "err", "match"), [
    ({"diffaugment": "color,zoom"}, UnknownName, "unknown DiffAugment policy 'zoom'"),
    ({"dataset": "ring", "diffaugment": "color"}, InvalidValue, "2-D dataset"),
    ({"d_feedback_dropout": 0.5}, InvalidValue, "--discriminators"),
    ({"instance_noise": -1.0}, InvalidValue, "--instance-noise"),
])
def test_bad_gan_options_are_one_line_errors(kw: dict[str, object], err: type[Exception],
                                             match: str) -> None:
    with pytest.raises(err, match=match) as e:
        GanConfig.build(**{**_base(Path("/nonexistent")), **kw})
    assert "\n" not in str(e.value)


def test_toy_data_for_the_gan() -> None:
    data = load_gan_data(GanConfig.build(dataset="grid", limit=40).data, seed=0)
    assert data.shape == (2,) and data.n_train == 25 * 40 and data.mixture is not None
    real = data.real("test", 100, seed=1)
    assert real.shape == (100, 2) and real.dtype == torch.float32
    with pytest.raises(InvalidValue, match="2-D dataset"):
        load_gan_data(GanConfig.build(dataset="ring", image_size=16).data, seed=0)
