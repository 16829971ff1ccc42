"""Test-time augmentation: average a classifier's logits over flipped and shifted views.

The views and weights of airbench (Jordan 2024; the idea goes back to Krizhevsky et al.
2012's ten-crop testing):

- ``"flip"``: ``½ f(x) + ½ f(flip(x))`` (2 forward passes);
- ``"flip-translate"``: ``½ m(x) + ¼ m(shift₋(x)) + ¼ m(shift₊(x))`` with
  ``m(v) = ½ f(v) + ½ f(flip(v))`` and ``shift∓`` the image translated by one pixel up-left
  or down-right (reflect-padded), i.e. 6 passes.

Wrapping is all it takes: ``TestTimeAugmentation(model, "flip")`` is an ``nn.Module`` whose
output is the averaged logits, so every evaluation path (``droplab.engine.evaluate``,
``predict_proba``, MC dropout) accepts it. It is meant for evaluation; it does not change
the wrapped model.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from droplab.errors import unknown_name

__all__ = ["TTA_MODES", "TestTimeAugmentation", "with_tta"]

#: test-time augmentation choices (``--tta``)
TTA_MODES = ("none", "flip", "flip-translate")


class TestTimeAugmentation(nn.Module):
    """``model``'s logits averaged over the views of ``mode`` (see the module docstring)."""

    __test__ = False  # not a pytest test class, whatever its name says

    def __init__(self, model: nn.Module, mode: str = "flip") -> None:
        super().__init__()
        if mode not in TTA_MODES[1:]:
            raise unknown_name("test-time augmentation", mode, TTA_MODES)
        self.model = model
        self.mode = mode

    def _mirror(self, x: Tensor) -> Tensor:
        return 0.5 * (self.model(x) + self.model(x.flip(-1)))

    def forward(self, x: Tensor) -> Tensor:
        logits = self._mirror(x)
        if self.mode == "flip":
            return logits
        h, w = x.shape[-2:]
        padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
        down_right, up_left = padded[..., :h, :w], padded[..., 2:, 2:]  # content moved by 1 px
        return 0.5 * logits + 0.25 * (self._mirror(up_left) + self._mirror(down_right))

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}"


def with_tta(model: nn.Module, mode: str) -> nn.Module:
    """``model`` itself for ``mode="none"``, else wrapped in :class:`TestTimeAugmentation`."""
    if mode == "none":
        return model
    return TestTimeAugmentation(model, mode)
