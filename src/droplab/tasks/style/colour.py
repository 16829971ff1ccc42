"""Colour preservation for style transfer (Gatys et al. 2016, "Preserving color in neural
artistic style transfer"): YIQ luminance transfer and histogram matching."""

from __future__ import annotations

import numpy as np
import torch
from skimage.exposure import match_histograms as _match

_RGB2YIQ = torch.tensor([[0.299, 0.587, 0.114],
                         [0.595716, -0.274453, -0.321263],
                         [0.211456, -0.522591, 0.311135]])


def rgb_to_yiq(x: torch.Tensor) -> torch.Tensor:
    return torch.einsum("ij,bjhw->bihw", _RGB2YIQ.to(x), x)


def yiq_to_rgb(x: torch.Tensor) -> torch.Tensor:
    return torch.einsum("ij,bjhw->bihw", torch.linalg.inv(_RGB2YIQ).to(x), x)


def luminance(x: torch.Tensor) -> torch.Tensor:
    """The Y channel repeated three times (so RGB encoders can read it)."""
    return rgb_to_yiq(x)[:, :1].repeat(1, 3, 1, 1)


def match_histograms(source: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Per-channel histogram matching of ``source`` to ``reference`` (scikit-image)."""
    s = source[0].permute(1, 2, 0).cpu().numpy()
    r = reference[0].permute(1, 2, 0).cpu().numpy()
    out = _match(s, r, channel_axis=-1)
    return torch.from_numpy(np.ascontiguousarray(out)).permute(2, 0, 1)[None].float().to(source)


