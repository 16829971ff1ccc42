"""Test-time augmentation: the views and weights, written out by hand."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from droplab.errors import UnknownName
from droplab.models.tta import TestTimeAugmentation, with_tta


class Probe(nn.Module):
    """A position- and orientation-sensitive linear map of the image to 3 logits."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w = nn.Parameter(torch.randn(3, 2 * 6 * 6, generator=g))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.w.T


def test_flip_averages_the_image_and_its_mirror() -> None:
    f, x = Probe(), torch.randn(4, 2, 6, 6)
    got = TestTimeAugmentation(f, "flip")(x)
    assert torch.allclose(got, 0.5 * (f(x) + f(x.flip(-1))))
    assert not torch.allclose(got, f(x))


def test_flip_translate_weights_six_views() -> None:
    f, x = Probe(), torch.randn(4, 2, 6, 6)
    mirror = lambda v: 0.5 * (f(v) + f(v.flip(-1)))  # noqa: E731
    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
    expected = (0.5 * mirror(x) + 0.25 * mirror(padded[..., :6, :6])
                + 0.25 * mirror(padded[..., 2:, 2:]))
    assert torch.allclose(TestTimeAugmentation(f, "flip-translate")(x), expected, atol=1e-6)


def test_mirror_invariant_model_is_unchanged_by_flip() -> None:
    f = nn.Sequential(nn.Conv2d(2, 3, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    x = torch.randn(4, 2, 6, 6)
    assert torch.allclose(TestTimeAugmentation(f, "flip")(x), f(x), atol=1e-6)


def test_modes() -> None:
    f = Probe()
    assert with_tta(f, "none") is f
    assert isinstance(with_tta(f, "flip"), TestTimeAugmentation)
    assert "flip-translate" in repr(with_tta(f, "flip-translate"))
    with pytest.raises(UnknownName, match="flip-translate"):
        TestTimeAugmentation(f, "rotate")
