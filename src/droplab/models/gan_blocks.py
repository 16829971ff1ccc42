"""GAN parts beside the DCGAN nets: minibatch standard deviation, an ensemble of
discriminators, and the MLP generator / discriminator of the 2-D mixture benchmarks.

- :class:`MinibatchStd` (Karras et al. 2018, "Progressive growing of GANs", §3): the
  discriminator sees, as one extra feature, the standard deviation of every feature over
  a group of samples averaged to one number — a collapsed generator's batch has almost
  none, so the discriminator can tell it from a real batch.
- :class:`DiscriminatorSet`: ``K`` independently initialised discriminators whose scores
  are stacked ``(K, N)``; the GAN loop trains each with its own loss and drops each one's
  feedback to the generator with probability ``p`` (Dropout-GAN, Mordido et al. 2018,
  "Dropout-GAN: learning from a dynamic ensemble of discriminators").
- :class:`MLPGenerator` / :class:`MLPDiscriminator`: fully connected nets for points
  (PacGAN's toy nets in spirit, Lin et al. 2018: ReLU + BatchNorm hidden layers in G,
  LeakyReLU in D), with the same discriminator dropout and minibatch-std options as the
  DCGAN discriminator; placements ``input`` (on the point), ``hidden`` (after every
  hidden layer) or ``all``.
"""

from __future__ import annotations

import torch
from torch import nn

from droplab.errors import InvalidValue, check_rate, unknown_name
from droplab.layers import KINDS, make_dropout

__all__ = ["WHERE", "DiscriminatorSet", "DropoutSlots", "MLPDiscriminator", "MLPGenerator",
           "MinibatchStd", "check_d_dropout_kind", "with_spectral_norm"]

WHERE = ("input", "hidden", "all")
#: dropout kinds that act on feature maps (a channel or a block at a time)
MAP_KINDS = ("spatial", "dropblock")


def check_d_dropout_kind(kind: str, where: str, *, maps: bool = True) -> None:
    """One-line errors for discriminator dropout that cannot work (``maps``: image nets)."""
    if where not in WHERE:
        raise unknown_name("discriminator dropout placement", where, WHERE)
    if kind not in KINDS:
        raise unknown_name("dropout kind", kind, KINDS)
    if kind == "dropconnect":
        raise InvalidValue(
            "dropconnect replaces weight layers and cannot sit between discriminator "
            f"blocks; choose one of: {', '.join(k for k in KINDS if k != 'dropconnect')}"
        )
    if not maps and kind in MAP_KINDS:
        raise InvalidValue(f"dropout kind {kind!r} drops feature maps; the 2-D point nets "
                           "have none: use dropout, gaussian, alpha, droppath or concrete")


class DropoutSlots:
    """Makes a discriminator's dropout layers where ``where`` asks for them (``"input"``,
    ``"hidden"`` or ``"all"``) and keeps every one made in :attr:`made`, so that the rate can
    be read back and driven by schedules."""

    def __init__(self, kind: str, p: float, where: str) -> None:
        self.kind, self.p, self.where = kind, p, where
        self.made: list[nn.Module] = []

    def __call__(self, place: str) -> list[nn.Module]:
        """``[layer]`` if dropout goes at ``place``, else ``[]`` (to splice into a layer list)."""
        if self.p == 0 or self.where not in (place, "all"):
            return []
        m = make_dropout(self.kind, self.p)
        self.made.append(m)
        return [m]


def with_spectral_norm(m: nn.Module, on: bool) -> nn.Module:
    """``m`` with spectral normalisation of its weight (Miyato et al. 2018) when ``on``."""
    return nn.utils.parametrizations.spectral_norm(m) if on else m


class MinibatchStd(nn.Module):
    """Append the mean over features of the per-group standard deviation as a feature.

    Input ``(N, C, H, W)`` → ``(N, C + 1, H, W)``, or ``(N, F)`` → ``(N, F + 1)``. Samples
    are split into groups of ``group_size`` (the largest divisor of ``N`` not above it);
    sample ``i`` belongs to group ``i mod (N / G)``, as in ProGAN's reshape. For each
    group and feature the standard deviation over the group (biased, + 1e-8 inside the
    root) is averaged over features and broadcast to the group's samples.
    """

    def __init__(self, group_size: int = 4) -> None:
        super().__init__()
        if group_size < 2:
            raise InvalidValue(f"minibatch-std group size must be at least 2, got {group_size}")
        self.group_size = int(group_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        g = min(self.group_size, n)
        while n % g:
            g -= 1
        y = x.reshape(g, n // g, *x.shape[1:]).float()
        std = (y.var(dim=0, unbiased=False) + 1e-8).sqrt()  # (N/G, …)
        stat = std.flatten(1).mean(dim=1).to(x.dtype).repeat(g)  # (N,): sample i → i mod N/G
        shape = (n, 1, *x.shape[2:])
        return torch.cat([x, stat.view(n, *([1] * (x.dim() - 1))).expand(shape)], dim=1)

    def extra_repr(self) -> str:
        return f"group_size={self.group_size}"


class DiscriminatorSet(nn.Module):
    """``K`` discriminators; ``forward`` returns their scores stacked ``(K, N)``."""

    def __init__(self, discriminators: list[nn.Module]) -> None:
        super().__init__()
        if len(discriminators) < 2:
            raise InvalidValue("a discriminator set needs at least 2 discriminators")
        self.members = nn.ModuleList(discriminators)

    def __len__(self) -> int:
        return len(self.members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([d(x) for d in self.members])


def members(d: nn.Module) -> list[nn.Module]:
    """The discriminators of ``d`` (itself unless it is a :class:`DiscriminatorSet`)."""
    return list(d.members) if isinstance(d, DiscriminatorSet) else [d]


class MLPGenerator(nn.Module):
    """``z (N, z_dim) → points (N, dim)``: ``depth`` hidden ReLU + BatchNorm layers of
    ``width`` units and a linear output (the mixtures are not bounded like images)."""

    def __init__(self, z_dim: int = 64, dim: int = 2, width: int = 128, depth: int = 3) -> None:
        super().__init__()
        if z_dim < 1 or width < 1 or depth < 1:
            raise InvalidValue(f"z_dim, width and depth must be ≥ 1, got {z_dim}, {width}, {depth}")
        self.z_dim, self.out_shape = z_dim, (dim,)
        layers: list[nn.Module] = []
        prev = z_dim
        for _ in range(depth):
            layers += [nn.Linear(prev, width), nn.BatchNorm1d(width), nn.ReLU(inplace=True)]
            prev = width
        layers.append(nn.Linear(prev, dim))
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class MLPDiscriminator(nn.Module):
    """``points (N, dim) → logits (N,)``: ``depth`` hidden LeakyReLU(0.2) layers of
    ``width`` units, dropout at ``dropout_where``, optional spectral norm and minibatch
    std (before the output layer)."""

    def __init__(
        self,
        dim: int = 2,
        width: int = 128,
        depth: int = 3,
        dropout: float = 0.0,
        dropout_kind: str = "dropout",
        dropout_where: str = "hidden",
        spectral_norm: bool = False,
        minibatch_std: bool = False,
    ) -> None:
        super().__init__()
        check_d_dropout_kind(dropout_kind, dropout_where, maps=False)
        self.p = check_rate(dropout, "d_dropout")
        self.dropout_kind, self.dropout_where = dropout_kind, dropout_where
        drop = DropoutSlots(dropout_kind, self.p, dropout_where)
        self.dropouts = drop.made

        def sn(m: nn.Module) -> nn.Module:
            return with_spectral_norm(m, spectral_norm)

        layers: list[nn.Module] = [*drop("input")]
        prev = dim
        for _ in range(depth):
            layers += [sn(nn.Linear(prev, width)), nn.LeakyReLU(0.2, inplace=True), *drop("hidden")]
            prev = width
        if minibatch_std:
            layers.append(MinibatchStd())
            prev += 1
        layers.append(sn(nn.Linear(prev, 1)))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(1)
