"""``nn.Module`` wrappers around :mod:`droplab.functional`.

Every droplab dropout module subclasses :class:`DropoutModule`: the rate ``p`` is a
validated, settable attribute, the module is the identity in eval mode, and
``extra_repr`` shows its settings.
"""

from __future__ import annotations

import torch
from torch import nn

from droplab.errors import check_rate


class DropoutModule(nn.Module):
    """Base class of droplab's dropout layers.

    Subclasses implement :meth:`forward` with ``self.p``, ``self.training`` and
    ``self.generator``. Setting ``module.p`` validates the new value (schedules and
    :mod:`droplab.surgery` rely on this).
    """

    #: short kind name used by surgery, the CLI and reports (e.g. ``"dropout"``)
    kind: str = "dropout"

    def __init__(self, p: float = 0.5, *, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.p = p
        self.generator = generator

    @property
    def p(self) -> float:
        return self._p

    @p.setter
    def p(self, value: float) -> None:
        self._p = check_rate(value, f"{type(self).__name__}.p")

    def extra_repr(self) -> str:
        return f"p={self.p:g}"
