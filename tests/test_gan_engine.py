"""The GAN recipe (droplab.engine.gan): instance noise, DiffAugment and feedback dropout in
the loop, exact resume with all of them, and the configuration's one-line refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from droplab.engine.gan import GanConfig, GanTrainer, load_gan_data, standing_stats
from droplab.errors import InvalidValue, UnknownName
from droplab.models.gan_blocks import MLPGenerator
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


def test_standing_stats_are_the_exact_batch_averages_of_the_generators_own_activations() -> None:
    # momentum None in update_bn: the running mean is the mean of the batch means and the
    # running variance the mean of the batch (unbiased) variances, computed here by hand
    g = MLPGenerator(z_dim=4, dim=2, width=8, depth=2).eval()
    with torch.no_grad():
        for p in g.parameters():
            p.add_(0.3)  # BatchNorm weights/biases off their init, so layer 2's input moves
    rng = torch.get_rng_state()
    standing_stats(g, seed=3, device=torch.device("cpu"), n=500, batch_size=128)
    assert not g.training and torch.equal(torch.get_rng_state(), rng)
    zgen = torch.Generator().manual_seed(3)
    zs = [torch.randn(128, 4, generator=zgen) for _ in range(4)]  # ⌈500 / 128⌉ full batches
    lin1, bn1, _, lin2, bn2 = list(g.net)[:5]
    h1 = [lin1(z).detach() for z in zs]
    assert torch.allclose(bn1.running_mean, torch.stack([h.mean(0) for h in h1]).mean(0), atol=1e-6)
    assert torch.allclose(bn1.running_var, torch.stack([h.var(0) for h in h1]).mean(0), rtol=1e-5)
    h2 = [lin2(torch.relu(bn1.weight * (h - h.mean(0)) / (h.var(0, unbiased=False)
                                                         + bn1.eps).sqrt() + bn1.bias)).detach()
          for h in h1]
    assert torch.allclose(bn2.running_mean, torch.stack([h.mean(0) for h in h2]).mean(0), atol=1e-5)
    assert torch.allclose(bn2.running_var, torch.stack([h.var(0) for h in h2]).mean(0), rtol=1e-4)


def test_the_ema_generator_samples_with_statistics_of_its_own_weights() -> None:
    # After an epoch the EMA generator's first BatchNorm mean is the mean of ITS first-layer
    # activations (checked on 8,192 fresh draws: the two estimates differ by N(0, SE²) with
    # SE = s·√(1/4096 + 1/8192); 5 SE per unit), not the trained generator's running mean
    # (which the weight average does not share: ema 0.9 lags the trained weights).
    cfg = _cfg(dataset="ring", limit=64, batch_size=64, width=16, z_dim=2, ema=0.9, lr=5e-3)
    data = load_gan_data(cfg.data, seed=0)
    tr = GanTrainer(cfg, data.shape, torch.device("cpu"), data.n_train)
    tr.train_epoch(data.loader(64, 0, torch.device("cpu")), 1)
    lin, bn = tr.g_ema.net[0], tr.g_ema.net[1]
    h = lin(torch.randn(8192, 2, generator=torch.Generator().manual_seed(11))).detach()
    se = h.std(0) * (1 / 4096 + 1 / 8192) ** 0.5
    assert ((bn.running_mean - h.mean(0)).abs() < 5 * se).all()
    live = tr.g.net[1].running_mean
    assert ((live - h.mean(0)).abs() > 5 * se).any()
    # a checkpoint of an older release holds the copied statistics: the sampler recomputes
    state = tr.state_dict()
    fresh = bn.running_mean.clone()
    state["g_ema"] = {**state["g_ema"], "net.1.running_mean": live.clone()}
    again = GanTrainer(cfg, data.shape, torch.device("cpu"), data.n_train)
    again.load_state_dict(state)
    assert torch.equal(again.g_ema.net[1].running_mean, live)
    assert torch.equal(again.sampler.net[1].running_mean, fresh)


def test_defaults_follow_the_data_and_explicit_values_win() -> None:
    def picked(**kw: object) -> tuple[object, ...]:
        c = GanConfig.build(**kw).resolved()
        return (c.model.width, c.model.z_dim, c.train.batch_size, c.train.epochs, c.train.lr,
                c.model.n_critic)

    assert picked(dataset="digits") == (32, 64, 64, 2, 2e-4, 1)
    assert picked(dataset="ring") == (128, 2, 256, 50, 1e-3, 1)  # PacGAN's 2-D latent
    assert picked(dataset="grid", loss="wgan-gp") == (128, 2, 256, 50, 1e-4, 5)
    assert picked(dataset="ring", width=16, z_dim=8, batch_size=32, epochs=3, lr=1e-2) == (
        16, 8, 32, 3, 1e-2, 1)
