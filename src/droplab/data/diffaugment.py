"""Differentiable augmentation for GAN training (DiffAugment; Zhao et al. 2020).

"Differentiable augmentation for data-efficient GAN training" (NeurIPS 2020): the same
family of random transformations is applied to the real *and* the generated images every
time the discriminator sees them — in its own step and in the generator's step — and the
transformations are differentiable, so the generator is trained through them. The
discriminator can then no longer win by memorising the training images, and the
generator is not taught to produce augmented images (the augmentation is never applied
to the real images alone).

Policies, on images in [−1, 1] of shape ``(N, C, H, W)``, each with its own parameters
per sample:

- ``color``: brightness ``x + U(−0.5, 0.5)``; saturation ``(x − x̄_c)·U(0, 2) + x̄_c``
  (``x̄_c`` the mean over channels: the identity for grey images); contrast
  ``(x − x̄)·U(0.5, 1.5) + x̄`` (``x̄`` the image mean);
- ``translation``: a shift by up to ⌊size/8 + ½⌋ pixels in each direction, zero-filled;
- ``cutout``: a zeroed square of side ⌊size/2 + ½⌋ centred anywhere in the image
  (Devries & Taylor 2017), clipped at the border.

``colour`` is accepted for ``color``. Every draw comes from the ``torch.Generator`` the
caller passes, so a GAN run replays exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from droplab.errors import InvalidValue, unknown_name

__all__ = ["POLICIES", "DiffAugment", "parse_policy"]

_ALIASES = {"colour": "color"}


def _uniform(n: int, lo: float, hi: float, gen: torch.Generator, like: Tensor) -> Tensor:
    u = torch.rand(n, 1, 1, 1, generator=gen, dtype=torch.float32)
    return (lo + (hi - lo) * u).to(device=like.device, dtype=like.dtype)


def color(x: Tensor, gen: torch.Generator) -> Tensor:
    """Random brightness, saturation and contrast per sample."""
    n = x.shape[0]
    x = x + _uniform(n, -0.5, 0.5, gen, x)
    mean_c = x.mean(dim=1, keepdim=True)
    x = (x - mean_c) * _uniform(n, 0.0, 2.0, gen, x) + mean_c
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * _uniform(n, 0.5, 1.5, gen, x) + mean


def translation(x: Tensor, gen: torch.Generator, ratio: float = 0.125) -> Tensor:
    """Shift every image by its own integer offset, filling with zeros."""
    n, _, h, w = x.shape
    sy, sx = int(h * ratio + 0.5), int(w * ratio + 0.5)
    ty = torch.randint(-sy, sy + 1, (n, 1, 1), generator=gen).to(x.device)
    tx = torch.randint(-sx, sx + 1, (n, 1, 1), generator=gen).to(x.device)
    rows = torch.arange(h, device=x.device).view(1, h, 1) - ty  # source row of each output row
    cols = torch.arange(w, device=x.device).view(1, 1, w) - tx
    valid = (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)  # (n, h, w)
    batch = torch.arange(n, device=x.device).view(n, 1, 1)
    out = x.permute(0, 2, 3, 1)[batch, rows.clamp(0, h - 1), cols.clamp(0, w - 1)]  # (n, h, w, c)
    return out.permute(0, 3, 1, 2) * valid.unsqueeze(1).to(x.dtype)


def cutout(x: Tensor, gen: torch.Generator, ratio: float = 0.5) -> Tensor:
    """Zero a square of side ``ratio·size`` centred at a random pixel of every image."""
    n, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    cy = torch.randint(0, h + (1 - ch % 2), (n, 1, 1), generator=gen).to(x.device)
    cx = torch.randint(0, w + (1 - cw % 2), (n, 1, 1), generator=gen).to(x.device)
    rows = torch.arange(h, device=x.device).view(1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w)
    hole = ((rows >= cy - ch // 2) & (rows < cy - ch // 2 + ch)
            & (cols >= cx - cw // 2) & (cols < cx - cw // 2 + cw))
    return x * (~hole).unsqueeze(1).to(x.dtype)


POLICIES: dict[str, Callable[[Tensor, torch.Generator], Tensor]] = {
    "color": color,
    "translation": translation,
    "cutout": cutout,
}


def parse_policy(text: str | Sequence[str] | None) -> list[str]:
    """``"color,translation,cutout"`` (or a list) → canonical policy names, in order.

    An unknown name is a one-line :class:`~droplab.errors.UnknownName`; a policy listed
    twice is an :class:`~droplab.errors.InvalidValue`.
    """
    if text is None:
        return []
    items = text.split(",") if isinstance(text, str) else list(text)
    names: list[str] = []
    for item in items:
        name = str(item).strip().lower()
        if not name:
            continue
        name = _ALIASES.get(name, name)
        if name not in POLICIES:
            raise unknown_name("DiffAugment policy", str(item).strip(), POLICIES)
        if name in names:
            raise InvalidValue(f"DiffAugment policy {name!r} is listed twice")
        names.append(name)
    return names


class DiffAugment:
    """Apply the policies in order, drawing from ``generator`` (images ``(N, C, H, W)``)."""

    def __init__(self, policy: str | Sequence[str] | None, generator: torch.Generator) -> None:
        self.policy = parse_policy(policy)
        self.generator = generator

    def __bool__(self) -> bool:
        return bool(self.policy)

    def __call__(self, x: Tensor) -> Tensor:
        if self.policy and x.dim() != 4:
            raise InvalidValue("DiffAugment transforms images (N, C, H, W); the 2-D datasets "
                               "have none: drop --diffaugment")
        for name in self.policy:
            x = POLICIES[name](x, self.generator)
        return x
