"""Stacked MNIST: three MNIST digits as the R, G and B channels of one image (1,000 modes).

The mode-collapse benchmark of Metz et al. 2017 ("Unrolled generative adversarial
networks", §3.3), used by VEEGAN (Srivastava et al. 2017) and PacGAN (Lin et al. 2018):
every image stacks three digits drawn independently, so the label ``100·a + 10·b + c`` of
its channel digits ``(a, b, c)`` takes 1,000 equally likely values. A generator that drops
modes shows it as missing labels and as a skewed label histogram — which 10 MNIST classes,
all of which any working GAN covers, cannot show.

:func:`stack_digits` builds the images from an already loaded MNIST part (pure, seeded:
each channel walks its own random permutation of the digits, so every digit is used once
per channel per pass and the channel labels are independent);
:func:`droplab.data.load_dataset` (``"stacked-mnist"``) loads MNIST and stacks its train
and test parts separately, so the test images are made only of held-out digits.
"""

from __future__ import annotations

import torch

from droplab.data.bundle import ImageData
from droplab.errors import InvalidValue

__all__ = ["MODES", "STACKED_NAMES", "stack_digits", "stacked_label", "unstack_label"]

#: number of modes (distinct labels) of Stacked MNIST
MODES = 1000
#: the class names: the three channel digits, ``"000"`` … ``"999"``
STACKED_NAMES = [f"{i:03d}" for i in range(MODES)]


def stacked_label(digits: torch.Tensor) -> torch.Tensor:
    """``(N, 3)`` channel digits → labels ``100·a + 10·b + c`` ``(N,)``."""
    d = digits.long()
    return d[:, 0] * 100 + d[:, 1] * 10 + d[:, 2]


def unstack_label(labels: torch.Tensor) -> torch.Tensor:
    """Labels ``(N,)`` → their channel digits ``(N, 3)`` (inverse of :func:`stacked_label`)."""
    y = labels.long()
    return torch.stack([y // 100, y // 10 % 10, y % 10], dim=1)


def stack_digits(digits: ImageData, n: int | None = None, *, seed: int = 0) -> ImageData:
    """``n`` Stacked-MNIST images (default: as many as there are digits) from MNIST ``digits``.

    ``digits`` holds ``(N, 1, H, W)`` uint8 images with labels 0..9. Channel ``c`` of
    image ``i`` is digit ``π_c[i mod N]`` of an independent seeded permutation ``π_c`` (a
    fresh permutation for every further pass when ``n > N``). Returns ``(n, 3, H, W)``
    uint8 images with labels in 0..999.
    """
    images, labels = digits.images, digits.labels
    if images.dim() != 4 or images.shape[1] != 1:
        raise InvalidValue(f"Stacked MNIST stacks 1-channel digits, got images of shape "
                           f"{tuple(images.shape)}")
    count = len(digits)
    if count == 0:
        raise InvalidValue("Stacked MNIST needs at least one MNIST digit; lower --limit's cut")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) > 9):
        raise InvalidValue("Stacked MNIST needs digit labels 0..9 (keep all ten --classes)")
    n = count if n is None else int(n)
    if n < 1:
        raise InvalidValue(f"Stacked MNIST size must be at least 1, got {n}")
    gen = torch.Generator().manual_seed(int(seed))
    passes = -(-n // count)
    picks = torch.stack([
        torch.cat([torch.randperm(count, generator=gen) for _ in range(passes)])[:n]
        for _ in range(3)
    ], dim=1)  # (n, 3): the digit index of each channel
    stacked = images[picks.reshape(-1), 0].reshape(n, 3, *images.shape[-2:])
    return ImageData(stacked.contiguous(), stacked_label(labels[picks]))
