"""Style-transfer metrics.

- content loss and Gram style loss under an *evaluation* encoder that differs from the
  one optimised (VGG-19 when its weights exist and a random encoder was optimised,
  otherwise a differently seeded random encoder), so the figure is not the optimiser's own
  objective;
- SSIM to the content image (Wang et al. 2004; ``skimage.metrics.structural_similarity``);
- colour-histogram distance to the style image: the mean over R, G, B of the 1-D earth
  mover's (Wasserstein-1) distance between pixel-value distributions, in units of the
  [0, 1] intensity range;
- diversity of MC samples: mean pairwise RMS pixel distance.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from skimage.metrics import structural_similarity

from droplab.errors import WeightsUnavailable
from droplab.models.style import (
    Encoder,
    VGGEncoder,
    content_loss,
    gram,
    load_vgg19_features,
    random_encoder,
    style_loss,
)


def evaluation_encoder(optimised: str, seed: int = 0) -> tuple[Encoder, str]:
    """An encoder different from ``optimised`` (``"vgg19"`` or ``"random"``)."""
    if optimised != "vgg19":
        try:
            return VGGEncoder(load_vgg19_features(download=False)), "vgg19"
        except WeightsUnavailable:
            pass
    enc = random_encoder(seed + 7919, 1)
    return enc, f"random seed {seed + 7919}"


def ssim(x: torch.Tensor, ref: torch.Tensor) -> float:
    """Structural similarity of two RGB images (1, 3, H, W) in [0, 1]."""
    a = x[0].detach().clamp(0, 1).permute(1, 2, 0).cpu().double().numpy()
    b = ref[0].detach().clamp(0, 1).permute(1, 2, 0).cpu().double().numpy()
    win = min(7, *a.shape[:2])
    win -= 1 - win % 2  # odd
    return float(structural_similarity(a, b, channel_axis=2, data_range=1.0, win_size=win))


def color_distance(x: torch.Tensor, ref: torch.Tensor, quantiles: int = 256) -> float:
    """Mean per-channel 1-D Wasserstein distance between pixel-value distributions.

    For 1-D distributions W₁ = ∫₀¹ |F⁻¹(q) − G⁻¹(q)| dq; the quantile functions are
    sampled at ``quantiles`` points, so images of different sizes compare directly.
    0 means identical colour histograms; 1 is the maximum (black vs white).
    """
    q = torch.linspace(0, 1, quantiles, dtype=torch.float64)
    total = 0.0
    for c in range(3):
        a = x[:, c].detach().flatten().double().cpu()
        b = ref[:, c].detach().flatten().double().cpu()
        total += float((torch.quantile(a, q) - torch.quantile(b, q)).abs().mean())
    return total / 3


def diversity(samples: torch.Tensor) -> float:
    """Mean pairwise RMS distance between images (K, 3, H, W); 0 for identical samples."""
    k = samples.shape[0]
    if k < 2:
        return 0.0
    flat = samples.detach().flatten(1).double()
    d = torch.cdist(flat, flat) / flat.shape[1] ** 0.5
    return float(d.sum() / (k * (k - 1)))


class StyleEvaluator:
    """Computes :func:`evaluate` figures with a fixed evaluation encoder."""

    def __init__(self, optimised: str = "random", seed: int = 0,
                 device: torch.device | str = "cpu") -> None:
        enc, self.encoder_name = evaluation_encoder(optimised, seed)
        self.encoder = enc.to(device)

    @torch.no_grad()
    def evaluate(self, output: torch.Tensor, content: torch.Tensor,
                 styles: Sequence[torch.Tensor], weights: Sequence[float] | None = None
                 ) -> dict[str, Any]:
        """Metrics of ``output`` against the content image and the (weighted) styles."""
        weights = list(weights or [1.0 / len(styles)] * len(styles))
        enc = self.encoder
        fo, fc = enc(output), enc(content)
        grams: dict[str, torch.Tensor] = {}
        for s, w in zip(styles, weights):
            fs = enc(s)
            for n in enc.style_layers:
                grams[n] = grams.get(n, 0) + w * gram(fs[n])
        return {
            "eval_encoder": self.encoder_name,
            "content_loss": float(content_loss(fo, {n: fc[n] for n in enc.content_layers},
                                               enc.content_layers).sum()),
            "style_loss": float(style_loss(fo, grams, enc.style_layers).sum()),
            "ssim_content": ssim(output, content),
            "color_distance_style": sum(w * color_distance(output, s)
                                        for s, w in zip(styles, weights)),
        }
