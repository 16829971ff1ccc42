"""DCGAN generator and discriminator with dropout, and the GAN losses.

Networks follow DCGAN (Radford et al. 2016, "Unsupervised representation learning with
deep convolutional generative adversarial networks"): strided (transposed) 4×4
convolutions, BatchNorm in the generator, LeakyReLU(0.2) in the discriminator, weights
drawn from N(0, 0.02).

Image sizes. The nets adapt to any even size ``s`` by halving it ``n`` times while the
result stays ≥ 4 px: 8 px → 4·2¹, 16 → 4·2², 28 → 7·2², 32 → 4·2³, 64 → 4·2⁴. The
generator projects ``z`` to a ``(width·2ⁿ, s₀, s₀)`` map and doubles the resolution
``n`` times; the discriminator mirrors it. scikit-learn's 8×8 digits therefore work
natively (one up-sampling stage); ``droplab gan --image-size 16`` (or 32) up-samples
them for a deeper net.

Dropout.

- Discriminator: any droplab dropout kind (:func:`droplab.layers.make_dropout`) at rate
  ``p`` on the ``input`` image, after every ``hidden`` block, or ``all`` of both.
  Dropout in D is a classic GAN stabiliser (Salimans et al. 2016 style noise; used in the
  pix2pix/PatchGAN and many DCGAN variants).
- Generator: pix2pix-style noise dropout (Isola et al. 2017, "Image-to-image translation
  with conditional adversarial networks", §3.1: dropout in the decoder, applied at
  training *and* test time, as the source of stochasticity). Dropout follows the
  projection and every up-sampling stage but the last (full-resolution) one;
  ``dropout_at_sampling=True`` keeps it active in ``eval()`` mode.

Losses (logits in, scalar out):

- ``ns``: the non-saturating loss of Goodfellow et al. 2014 (D: softplus(−D(x)) +
  softplus(D(G(z))); G: softplus(−D(G(z)))).
- ``hinge``: Lim & Ye 2017 / Miyato et al. 2018 (D: relu(1 − D(x)) + relu(1 + D(G(z)));
  G: −D(G(z))).
- ``wgan-gp``: Gulrajani et al. 2017 (D: D(G(z)) − D(x) + λ·GP; G: −D(G(z))), with
  :func:`gradient_penalty` ``E[(‖∇ D(x̂)‖₂ − 1)²]`` on random interpolates x̂.

Spectral normalisation (Miyato et al. 2018) of every discriminator weight is optional, and
so is a minibatch-standard-deviation feature before the discriminator's output layer
(Karras et al. 2018). ``discriminators=K > 1`` builds a
:class:`~droplab.models.gan_blocks.DiscriminatorSet` (Dropout-GAN, Mordido et al. 2018);
``model="mlp"`` builds the fully connected nets of the 2-D mixtures
(:mod:`droplab.models.gan_blocks`).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from droplab.errors import InvalidValue, check_rate, unknown_name
from droplab.layers import make_dropout
from droplab.models.gan_blocks import (
    WHERE,
    DiscriminatorSet,
    DropoutSlots,
    MinibatchStd,
    MLPDiscriminator,
    MLPGenerator,
    check_d_dropout_kind,
    members,
    with_spectral_norm,
)

LOSSES = ("ns", "hinge", "wgan-gp")
#: ``auto``: ``dcgan`` for images, ``mlp`` for 2-D points
GAN_MODELS = ("auto", "dcgan", "mlp")


def size_plan(size: int) -> tuple[int, int]:
    """Return ``(s0, n)`` with ``size == s0 · 2**n``, ``n ≥ 1`` maximal and ``s0 ≥ 4``."""
    if size < 8 or size % 2:
        raise InvalidValue(
            f"GAN image size {size} px is not supported: use an even size ≥ 8 "
            "(e.g. --image-size 16, 28 or 32)"
        )
    n = 0
    while size % (2 ** (n + 1)) == 0 and size // 2 ** (n + 1) >= 4:
        n += 1
    return size // 2**n, n


def dcgan_init(module: nn.Module) -> None:
    """DCGAN initialisation: conv/linear weights ~ N(0, 0.02), BN weights ~ N(1, 0.02)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d | nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


class Generator(nn.Module):
    """DCGAN generator ``z (N, z_dim) → images (N, C, H, W)`` in [−1, 1].

    Args:
        z_dim: latent size.
        out_shape: ``(C, H, W)`` with ``H == W`` even and ≥ 8.
        width: channels of the last (full-resolution) stage; earlier stages double it.
        dropout: pix2pix noise-dropout rate p (0 disables).
        dropout_at_sampling: keep the noise dropout active in ``eval()`` mode.
    """

    def __init__(
        self,
        z_dim: int = 64,
        out_shape: tuple[int, int, int] = (1, 28, 28),
        width: int = 32,
        dropout: float = 0.0,
        dropout_at_sampling: bool = False,
    ) -> None:
        super().__init__()
        c, h, w = out_shape
        if h != w:
            raise InvalidValue(f"GAN images must be square, got {h}×{w}; pass --image-size")
        if z_dim < 1 or width < 1:
            raise InvalidValue(f"z_dim and width must be ≥ 1, got {z_dim} and {width}")
        self.z_dim = z_dim
        self.out_shape = (c, h, w)
        self.p = check_rate(dropout, "g_dropout")
        self.dropout_at_sampling = bool(dropout_at_sampling)
        s0, n = size_plan(h)
        chans = [width * 2 ** (n - i) for i in range(n + 1)]
        self.noise_dropout: list[nn.Module] = []

        def noise() -> list[nn.Module]:
            if self.p == 0:
                return []
            m = make_dropout("dropout", self.p)
            self.noise_dropout.append(m)
            return [m]

        layers: list[nn.Module] = [
            nn.Linear(z_dim, chans[0] * s0 * s0, bias=False),
            nn.Unflatten(1, (chans[0], s0, s0)),
            nn.BatchNorm2d(chans[0]),
            nn.ReLU(inplace=True),
            *noise(),
        ]
        for i in range(n):
            layers += [
                nn.ConvTranspose2d(chans[i], chans[i + 1], 4, 2, 1, bias=False),
                nn.BatchNorm2d(chans[i + 1]),
                nn.ReLU(inplace=True),
            ]
            if i < n - 1:
                layers += noise()
        layers += [nn.Conv2d(chans[-1], c, 3, padding=1), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        dcgan_init(self)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)

    def train(self, mode: bool = True) -> Generator:
        """Like :meth:`nn.Module.train`, but noise dropout stays on when sampling asks."""
        super().train(mode)
        if self.dropout_at_sampling:
            for m in self.noise_dropout:
                m.train(True)
        return self

    def set_dropout_at_sampling(self, on: bool) -> None:
        """Switch pix2pix-style test-time noise dropout on or off (takes effect now)."""
        self.dropout_at_sampling = bool(on)
        self.train(self.training)


class Discriminator(nn.Module):
    """DCGAN discriminator/critic ``images (N, C, H, W) → logits (N,)``.

    Args:
        in_shape: ``(C, H, W)``.
        width: channels of the first (full-resolution) block; later blocks double it.
        dropout: rate p of the discriminator dropout (0 disables).
        dropout_kind: any :func:`droplab.layers.make_dropout` kind.
        dropout_where: ``input`` (on the image), ``hidden`` (after every block) or ``all``.
        spectral_norm: spectral-normalise every conv/linear weight (Miyato et al. 2018).
        norm: ``"batch"`` or ``"none"``; BatchNorm in the critic is invalid with a
            per-sample gradient penalty, so the GAN task uses ``none`` for WGAN-GP and
            with spectral norm.
        minibatch_std: append the minibatch-std feature map after the last block
            (Karras et al. 2018; :class:`~droplab.models.gan_blocks.MinibatchStd`).
    """

    def __init__(
        self,
        in_shape: tuple[int, int, int] = (1, 28, 28),
        width: int = 32,
        dropout: float = 0.0,
        dropout_kind: str = "dropout",
        dropout_where: str = "hidden",
        spectral_norm: bool = False,
        norm: str = "batch",
        minibatch_std: bool = False,
    ) -> None:
        super().__init__()
        c, h, w = in_shape
        if h != w:
            raise InvalidValue(f"GAN images must be square, got {h}×{w}; pass --image-size")
        check_d_dropout_kind(dropout_kind, dropout_where)
        if norm not in ("batch", "none"):
            raise unknown_name("discriminator norm", norm, ("batch", "none"))
        self.p = check_rate(dropout, "d_dropout")
        self.dropout_kind = dropout_kind
        self.dropout_where = dropout_where
        s0, n = size_plan(h)
        chans = [width * 2**i for i in range(n)]
        drop = DropoutSlots(dropout_kind, self.p, dropout_where)
        self.dropouts = drop.made

        def sn(m: nn.Module) -> nn.Module:
            return with_spectral_norm(m, spectral_norm)

        layers: list[nn.Module] = [*drop("input")]
        prev = c
        for i, ch in enumerate(chans):
            layers.append(sn(nn.Conv2d(prev, ch, 4, 2, 1, bias=(i == 0 or norm == "none"))))
            if i > 0 and norm == "batch":  # DCGAN: no BN on the first block
                layers.append(nn.BatchNorm2d(ch))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            layers += drop("hidden")
            prev = ch
        if minibatch_std:
            layers.append(MinibatchStd())
            prev += 1
        layers += [nn.Flatten(), sn(nn.Linear(prev * s0 * s0, 1))]
        self.net = nn.Sequential(*layers)
        dcgan_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(1)


# -- losses ---------------------------------------------------------------------------------


def build_gan(
    shape: tuple[int, ...],
    *,
    model: str = "auto",
    z_dim: int = 64,
    width: int = 32,
    loss: str = "ns",
    spectral_norm: bool = False,
    minibatch_std: bool = False,
    discriminators: int = 1,
    g_dropout: float = 0.0,
    g_dropout_at_sampling: bool = False,
    d_dropout: float = 0.0,
    d_dropout_kind: str = "dropout",
    d_dropout_where: str = "hidden",
) -> tuple[nn.Module, nn.Module]:
    """Generator and discriminator(s) for data of ``shape``, from a GAN run's options.

    ``shape`` is ``(C, H, W)`` for images (DCGAN) or ``(D,)`` for points (MLP; ``auto``
    picks by the shape). The critic is BatchNorm-free for WGAN-GP (a per-sample gradient
    penalty) and with spectral norm. ``discriminators > 1`` gives a
    :class:`DiscriminatorSet` of independently initialised ones. ``droplab gan`` builds its
    nets here and :func:`droplab.runs.restore.load_run` rebuilds them from a run's
    ``config.json``.
    """
    if model not in GAN_MODELS:
        raise unknown_name("GAN model", model, GAN_MODELS)
    points = len(shape) == 1
    if model == "auto":
        model = "mlp" if points else "dcgan"
    if (model == "mlp") != points:
        raise InvalidValue(f"--model {model} does not fit data of shape {tuple(shape)}: dcgan "
                           "is for images, mlp for the 2-D datasets ring and grid")
    if int(discriminators) != discriminators or discriminators < 1:
        raise InvalidValue(f"--discriminators must be a positive integer, got {discriminators}")

    def one_d() -> nn.Module:
        if points:
            return MLPDiscriminator(shape[0], width, 3, d_dropout, d_dropout_kind,
                                    d_dropout_where, spectral_norm, minibatch_std)
        norm = "none" if (loss == "wgan-gp" or spectral_norm) else "batch"
        return Discriminator(shape, width, d_dropout, d_dropout_kind, d_dropout_where,  # type: ignore[arg-type]
                             spectral_norm, norm, minibatch_std)

    if points:
        if g_dropout > 0:
            raise InvalidValue("--g-dropout is pix2pix noise dropout in the image generator; "
                               "the 2-D point generator has none: drop --g-dropout")
        g: nn.Module = MLPGenerator(z_dim, shape[0], width, 3)
    else:
        g = Generator(z_dim, shape, width, g_dropout, g_dropout_at_sampling)  # type: ignore[arg-type]
    ds = [one_d() for _ in range(int(discriminators))]
    return g, (ds[0] if len(ds) == 1 else DiscriminatorSet(ds))


def gan_options(config: Mapping[str, Any]) -> dict[str, Any]:
    """The :func:`build_gan` keyword arguments found in a run config (others ignored)."""
    names = [n for n in inspect.signature(build_gan).parameters if n != "shape"]
    return {n: config[n] for n in names if n in config}


def discriminator_loss(
    kind: str, real_logits: torch.Tensor, fake_logits: torch.Tensor
) -> torch.Tensor:
    """Discriminator loss without the gradient penalty (added by the caller for WGAN-GP)."""
    if kind == "ns":
        return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()
    if kind == "hinge":
        return F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean()
    if kind == "wgan-gp":
        return fake_logits.mean() - real_logits.mean()
    raise unknown_name("GAN loss", kind, LOSSES)


def generator_loss(kind: str, fake_logits: torch.Tensor) -> torch.Tensor:
    """Generator loss: non-saturating ``softplus(−D(G(z)))`` or ``−D(G(z))``."""
    if kind == "ns":
        return F.softplus(-fake_logits).mean()
    if kind in ("hinge", "wgan-gp"):
        return -fake_logits.mean()
    raise unknown_name("GAN loss", kind, LOSSES)


def gradient_penalty(
    critic: nn.Module,
    real: torch.Tensor,
    fake: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """WGAN-GP penalty ``E[(‖∇ₓ̂ D(x̂)‖₂ − 1)²]``, ``x̂ = ε·real + (1 − ε)·fake``, ε ~ U(0, 1).

    Gulrajani et al. 2017, "Improved training of Wasserstein GANs", Algorithm 1. The graph
    is kept (``create_graph=True``) so the penalty can be back-propagated into the critic.
    """
    eps = torch.rand(real.shape[0], *([1] * (real.dim() - 1)), generator=generator).to(real)
    x_hat = (eps * real.detach() + (1 - eps) * fake.detach()).requires_grad_(True)
    out = critic(x_hat)
    (grad,) = torch.autograd.grad(out.sum(), x_hat, create_graph=True)
    norms = grad.flatten(1).norm(2, dim=1)
    return ((norms - 1.0) ** 2).mean()


def is_bad_loss(value: float, limit: float) -> bool:
    """True when a loss is NaN/inf or its magnitude exceeds ``limit`` (an explosion)."""
    return not math.isfinite(value) or abs(value) > limit


__all__ = [
    "GAN_MODELS",
    "LOSSES",
    "WHERE",
    "Discriminator",
    "DiscriminatorSet",
    "Generator",
    "MLPDiscriminator",
    "MLPGenerator",
    "MinibatchStd",
    "build_gan",
    "dcgan_init",
    "discriminator_loss",
    "gan_options",
    "generator_loss",
    "gradient_penalty",
    "is_bad_loss",
    "members",
    "size_plan",
]
