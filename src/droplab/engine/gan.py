"""The GAN recipe in the library: its options, its data and its training loop.

It lives below the tasks (like :mod:`droplab.engine.classifier`) because two commands train
GANs: ``droplab gan`` (:mod:`droplab.tasks.gan`, which adds the run folder's images and
the scores) and ``droplab sweep`` on a GAN configuration (no task imports another).

Its options are :class:`~droplab.engine.gan_config.GanConfig` (re-exported here). The loop (Radford et al. 2016; losses and WGAN-GP's ``n_critic`` in
:mod:`droplab.models.gan`) reads top to bottom — per batch:

1. the discriminator step: every discriminator scores the real batch and a generated one,
   both passed through the same input path — DiffAugment (Zhao et al. 2020; fresh random
   transformations for reals and fakes, :mod:`droplab.data.diffaugment`) then instance
   noise ``N(0, σ_t²)`` with ``σ_t = σ₀·max(0, 1 − t/T)`` annealed linearly over the first
   ``T`` discriminator steps (Sønderby et al. 2017, Arjovsky & Bottou 2017) — and takes its
   loss (+ λ·GP for WGAN-GP, on the inputs it saw; + the Concrete-dropout regulariser);
2. every ``n_critic``-th batch the generator step through the same input path: with ``K``
   discriminators each one's feedback is dropped with probability ``p`` and the generator
   follows the mean loss of those kept, at least one (Dropout-GAN, Mordido et al. 2018);
   then the EMA copy of the generator is updated (decay ``min(ema, (1+t)/(10+t))`` after
   ``t`` generator steps, TensorFlow's ``ExponentialMovingAverage`` warm-up).

At the end of every epoch the EMA generator's BatchNorm statistics are recomputed from its
own activations (:func:`standing_stats`; BigGAN's "standing statistics", Brock et al. 2019,
and what :func:`torch.optim.swa_utils.update_bn` does for averaged weights): the running
statistics of the trained generator belong to *its* weights, not to their average, and on
the 2-D mixtures (σ = 0.01) that mismatch alone moves most samples off their mode.

A NaN/inf loss, or one whose magnitude exceeds ``max_loss``, stops the run with a one-line
:class:`~droplab.engine.TrainingDiverged`. :meth:`GanTrainer.state_dict` holds nets,
optimisers, EMA, the noise and augmentation generators and every RNG state, so a resumed
run continues exactly as an uninterrupted one with the same seed.
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from droplab.config import flatten
from droplab.data import DatasetBundle, Loader, load_dataset
from droplab.data.diffaugment import DiffAugment
from droplab.data.toy2d import TOY_DATASETS, Mixture, PointLoader, ToyData, toy_data
from droplab.engine.config import DataConfig
from droplab.engine.gan_config import GanConfig
from droplab.engine.state import Progress, capture_rng, check_finite, restore_rng
from droplab.errors import InvalidValue
from droplab.layers import concrete_regularization
from droplab.models import gan as nets
from droplab.runs import RunDir
from droplab.runtime import progress

__all__ = ["STANDING_STAT_SAMPLES", "GanConfig", "GanData", "GanTrainer", "build_nets",
           "ema_update", "load_gan_data", "sample", "standing_stats"]

#: latent draws over which :func:`standing_stats` averages the EMA generator's BatchNorm
#: statistics (relative error of a variance ≈ √(2/n) ≈ 2 %)
STANDING_STAT_SAMPLES = 4096


# -- data ---------------------------------------------------------------------------------------


@dataclass
class GanData:
    """The training data of a GAN run: images (``bundle``) or 2-D points (``toy``)."""

    name: str
    shape: tuple[int, ...]
    n_train: int
    bundle: DatasetBundle | None = None
    toy: ToyData | None = None

    @property
    def mixture(self) -> Mixture | None:
        return self.toy.mixture if self.toy is not None else None

    def loader(self, batch_size: int, seed: int, device: torch.device) -> Loader | PointLoader:
        """Shuffled training batches (images scaled to [−1, 1]), the last incomplete dropped."""
        if self.toy is not None:
            return PointLoader(self.toy.train, self.toy.train_labels, batch_size=batch_size,
                               seed=seed, drop_last=True, device=device)
        assert self.bundle is not None
        c = self.shape[0]
        return Loader(self.bundle.train, batch_size=batch_size, shuffle=True, mean=(0.5,) * c,
                      std=(0.5,) * c, device=device, seed=seed, drop_last=True)

    def check_batch_size(self, batch_size: int) -> None:
        """Refuse (one line) a batch larger than the training split (no full batch)."""
        if self.n_train < batch_size:
            raise InvalidValue(f"{self.n_train} training samples is fewer than --batch-size "
                               f"{batch_size}; lower --batch-size or raise --limit")

    def pool(self, part: str) -> torch.Tensor:
        """Every real sample of ``part`` (``test`` or ``train``): uint8 images, or float
        points."""
        if self.toy is not None:
            return self.toy.test if part == "test" else self.toy.train
        assert self.bundle is not None
        return (self.bundle.test if part == "test" else self.bundle.train).images

    def real(self, part: str, n: int, seed: int) -> torch.Tensor:
        """Up to ``n`` real samples of ``part`` (``test`` or ``train``), drawn with ``seed``:
        uint8 images, or float points."""
        pool = self.pool(part)
        pick = torch.randperm(pool.shape[0], generator=torch.Generator().manual_seed(seed))
        return pool[pick[: min(n, pool.shape[0])]]


def load_gan_data(cfg: DataConfig, seed: int) -> GanData:
    """Load the dataset a GAN config names (one-line errors for bad names or missing files)."""
    if cfg.dataset in TOY_DATASETS:
        if cfg.classes or cfg.image_size:
            raise InvalidValue(f"{cfg.dataset} is a 2-D dataset: --classes and --image-size "
                               "do not apply")
        toy = toy_data(cfg.dataset, per_mode=cfg.limit or 2000, seed=seed)
        return GanData(toy.name, (2,), int(toy.train.shape[0]), toy=toy)
    bundle = load_dataset(cfg.dataset, cfg.data_root, cfg.classes, image_size=cfg.image_size,
                          seed=seed, limit=cfg.limit, download=cfg.download)
    return GanData(bundle.name, tuple(bundle.train.images.shape[1:]), len(bundle.train), bundle)


# -- nets ---------------------------------------------------------------------------------------


def build_nets(cfg: GanConfig, shape: tuple[int, ...]) -> tuple[nn.Module, nn.Module]:
    """Generator and discriminator(s) for data of ``shape`` (:func:`nets.build_gan`)."""
    return nets.build_gan(shape, **nets.gan_options(flatten(cfg.to_dict())))


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """``ema ← decay·ema + (1 − decay)·model`` for parameters; buffers are copied (the
    BatchNorm statistics are then a stand-in until :func:`standing_stats` recomputes them)."""
    for e, m in zip(ema.parameters(), model.parameters(), strict=True):
        e.lerp_(m, 1.0 - decay)
    for e, m in zip(ema.buffers(), model.buffers(), strict=True):
        e.copy_(m)


@contextlib.contextmanager
def _forked_rng(seed: int, device: torch.device) -> Iterator[None]:
    """The global RNG (and ``device``'s) forked and seeded with ``seed`` for the block."""
    devices = ([device.index if device.index is not None else torch.cuda.current_device()]
               if device.type == "cuda" else [])
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


@torch.no_grad()
def standing_stats(g: nn.Module, *, seed: int, device: torch.device,
                   n: int = STANDING_STAT_SAMPLES, batch_size: int = 256) -> None:
    """Recompute ``g``'s BatchNorm running statistics from its own activations on about ``n``
    latent draws (``⌈n / batch_size⌉`` full batches seeded by ``seed``, averaged exactly by
    :func:`torch.optim.swa_utils.update_bn`); the caller's RNG state and ``g``'s mode are
    left as they were.

    The EMA generator needs this: :func:`ema_update` averages weights, and the statistics
    copied from the trained generator do not fit the averaged weights. A generator without
    BatchNorm is left untouched.
    """
    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in g.modules()):
        return
    zgen = torch.Generator().manual_seed(seed)
    batch_size = max(int(batch_size), 2)  # BatchNorm needs 2 values per channel in training
    batches = (torch.randn(batch_size, g.z_dim, generator=zgen).to(device)  # type: ignore[arg-type]
               for _ in range(max(1, -(-int(n) // batch_size))))
    with _forked_rng(seed, device):  # noise dropout in G draws from a forked, seeded RNG
        torch.optim.swa_utils.update_bn(batches, g)


@torch.no_grad()
def sample(g: nn.Module, n: int, *, seed: int, device: torch.device,
           batch_size: int = 256) -> torch.Tensor:
    """``n`` samples (images in [−1, 1], or points) on the CPU from ``g`` in eval mode,
    reproducible from ``seed``.

    The caller's RNG state is left untouched (noise dropout at sampling draws from a
    forked, seeded global RNG).
    """
    was_training = g.training
    g.eval()
    zgen = torch.Generator().manual_seed(seed)
    out = []
    with _forked_rng(seed, device):
        for i in range(0, n, batch_size):
            z = torch.randn(min(batch_size, n - i), g.z_dim, generator=zgen).to(device)
            out.append(g(z).cpu())
    g.train(was_training)
    return torch.cat(out) if out else torch.empty(0, *g.out_shape)


# -- the loop -----------------------------------------------------------------------------------


class GanTrainer:
    """The nets, their Adam optimisers, the EMA generator and the noise / augmentation
    generators, with the engine's :class:`~droplab.engine.Progress` — everything a GAN
    checkpoint holds. ``run`` (optional) only tells the NaN guard which checkpoint is kept."""

    def __init__(self, cfg: GanConfig, shape: tuple[int, ...], device: torch.device,
                 n_train: int, run: RunDir | None = None) -> None:
        self.cfg, self.shape, self.device, self.run, self.n_train = cfg, shape, device, run, n_train
        t = cfg.train
        self.g, self.d = build_nets(cfg, shape)
        self.g_ema = copy.deepcopy(self.g).requires_grad_(False)
        self.g, self.d, self.g_ema = self.g.to(device), self.d.to(device), self.g_ema.to(device)
        self.discriminators = nets.members(self.d)
        self.opt_g = torch.optim.Adam(self.g.parameters(), lr=t.lr, betas=t.betas)  # type: ignore[arg-type]
        self.opt_d = torch.optim.Adam(self.d.parameters(), lr=t.lr, betas=t.betas)  # type: ignore[arg-type]
        self.zgen = torch.Generator().manual_seed(cfg.run.seed + 1)
        self.augen = torch.Generator().manual_seed(cfg.run.seed + 5)
        self.augment = DiffAugment(cfg.augment.diffaugment, self.augen)
        self.progress, self.g_steps = Progress(), 0
        self._stats_epoch: int | None = None  # epoch of the EMA's BatchNorm statistics
        self.concrete = cfg.dropout.d_dropout > 0 and cfg.dropout.d_dropout_kind == "concrete"

    @property
    def sampler(self) -> nn.Module:
        """The generator samples are drawn from: the EMA copy unless ``--ema 0``, with
        BatchNorm statistics of its own weights (recomputed here when a checkpoint of an
        older release was loaded; :meth:`train_epoch` recomputes them after every epoch)."""
        if self.cfg.train.ema <= 0:
            return self.g
        if self._stats_epoch != self.progress.epoch:
            self.refresh_ema_stats()
        return self.g_ema

    def refresh_ema_stats(self) -> None:
        """:func:`standing_stats` of the EMA generator, seeded by the run's seed and epoch
        (the same numbers for an uninterrupted and a resumed run)."""
        standing_stats(self.g_ema, seed=self.cfg.run.seed * 1_000_003 + self.progress.epoch,
                       device=self.device, batch_size=self.cfg.train.batch_size)
        self._stats_epoch = self.progress.epoch

    def state_dict(self) -> dict[str, Any]:
        return {**self.progress.state_dict(), "g_steps": self.g_steps,
                "g": self.g.state_dict(), "d": self.d.state_dict(),
                "g_ema": self.g_ema.state_dict(), "opt_g": self.opt_g.state_dict(),
                "opt_d": self.opt_d.state_dict(), "zgen": self.zgen.get_state(),
                "augen": self.augen.get_state(), "rng": capture_rng(self.device),
                "config": flatten(self.cfg.to_dict()), "shape": self.shape}

    def load_state_dict(self, ckpt: dict[str, Any]) -> None:
        for name in ("g", "d", "g_ema", "opt_g", "opt_d"):
            getattr(self, name).load_state_dict(ckpt[name])
        self.zgen.set_state(ckpt["zgen"])
        if "augen" in ckpt:  # runs of release 0.1 had no augmentation generator
            self.augen.set_state(ckpt["augen"])
        self.progress.load_state_dict(ckpt)
        self.g_steps = int(ckpt["g_steps"])
        restore_rng(ckpt["rng"])

    def _guard(self, name: str, loss: torch.Tensor, epoch: int) -> None:
        check_finite(name, float(loss.detach()), epoch=epoch, step=self.progress.step + 1,
                     run=self.run, limit=self.cfg.train.max_loss,
                     advice="lower --lr, try --loss hinge or --spectral-norm")

    def noise_std(self, step: int, steps_per_epoch: int) -> float:
        """Instance-noise σ at discriminator step ``step`` (0-based), annealed linearly."""
        a = self.cfg.augment
        if a.instance_noise <= 0:
            return 0.0
        horizon = (a.noise_anneal_epochs or self.cfg.train.epochs) * steps_per_epoch
        return a.instance_noise * max(0.0, 1.0 - step / max(horizon, 1))

    def _d_input(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        """What a discriminator sees: DiffAugment, then instance noise."""
        x = self.augment(x)
        if sigma > 0:
            x = x + sigma * torch.randn(x.shape, generator=self.augen).to(x)
        return x

    def _feedback(self) -> list[nn.Module]:
        """The discriminators whose feedback reaches the generator this step."""
        ds, p = self.discriminators, self.cfg.dropout.d_feedback_dropout
        if len(ds) == 1 or p == 0:
            return ds
        keep = torch.rand(len(ds), generator=self.augen) >= p
        if not keep.any():  # Dropout-GAN keeps at least one discriminator
            keep[int(torch.randint(len(ds), (1,), generator=self.augen))] = True
        return [d for d, k in zip(ds, keep.tolist(), strict=True) if k]

    def train_epoch(self, loader: Loader | PointLoader, epoch: int) -> dict[str, Any]:
        """One epoch: a discriminator step per batch, a generator step (+ EMA update) every
        ``n_critic``-th; returns the epoch's metrics record."""
        m, t, device = self.cfg.model, self.cfg.train, self.device
        g = self.g.train()
        self.d.train()
        loader.set_epoch(epoch)
        sums = dict.fromkeys(("d_loss", "g_loss", "d_real", "d_fake", "gp"), 0.0)
        n_d = n_g = 0
        t0 = time.perf_counter()
        squash = torch.sigmoid if m.loss == "ns" else (lambda v: v)
        k = len(self.discriminators)
        for real, _ in progress(loader, desc=f"gan epoch {epoch}/{t.epochs}", total=len(loader)):
            g_step = (self.progress.step + 1) % m.n_critic == 0  # type: ignore[operator]
            sigma = self.noise_std(self.progress.step, len(loader))
            z = torch.randn(real.shape[0], m.z_dim, generator=self.zgen).to(device)
            with torch.set_grad_enabled(g_step):
                fake = g(z)
            # discriminator / critic step(s)
            real_in, fake_in = self._d_input(real, sigma), self._d_input(fake.detach(), sigma)
            d_loss = gp = torch.zeros((), device=device)
            for d in self.discriminators:
                d_real, d_fake = d(real_in), d(fake_in)
                d_loss = d_loss + nets.discriminator_loss(m.loss, d_real, d_fake)
                if m.loss == "wgan-gp":
                    gp = gp + nets.gradient_penalty(d, real_in, fake_in, generator=self.zgen)
                sums["d_real"] += float(squash(d_real.detach()).mean()) / k
                sums["d_fake"] += float(squash(d_fake.detach()).mean()) / k
            total = d_loss + m.gp_weight * gp
            if self.concrete:
                total = total + concrete_regularization(self.d) / self.n_train
            self._guard("d_loss", total, epoch)
            self.opt_d.zero_grad(set_to_none=True)
            total.backward()
            self.opt_d.step()
            sums["d_loss"] += float(d_loss.detach()) / k
            sums["gp"] += float(gp.detach()) / k
            n_d += 1
            if g_step:  # generator step, then the EMA copy with TF's warm-up
                fake_g = self._d_input(fake, sigma)
                kept = self._feedback()
                g_loss = sum(nets.generator_loss(m.loss, d(fake_g)) for d in kept) / len(kept)
                assert isinstance(g_loss, torch.Tensor)
                self._guard("g_loss", g_loss, epoch)
                self.opt_g.zero_grad(set_to_none=True)
                g_loss.backward()
                self.opt_g.step()
                self.g_steps += 1
                ema_update(self.g_ema, g, min(t.ema, (1 + self.g_steps) / (10 + self.g_steps)))
                sums["g_loss"] += float(g_loss.detach())
                n_g += 1
            self.progress.step += 1
        self.progress.epoch = epoch
        if t.ema > 0:  # the sampled generator's own BatchNorm statistics
            self.refresh_ema_stats()
        dt = time.perf_counter() - t0
        self.progress.time_s = self.progress.time_s + dt
        return {"epoch": epoch, "step": self.progress.step, "g_steps": self.g_steps,
                **{k: v / max(n_g if k == "g_loss" else n_d, 1) for k, v in sums.items()},
                "noise_std": self.noise_std(self.progress.step, len(loader)),
                "time_s": dt, "images_per_s": n_d * t.batch_size / max(dt, 1e-9)}
