"""Find, retune, replace and insert dropout in any ``nn.Module``.

* :mod:`~droplab.surgery.kinds` – which layer types and functions are sources of
  training-time randomness (torch.nn, droplab, torchvision, timm);
* :mod:`~droplab.surgery.sources` – :func:`find_dropout`, one view of them all, including
  dropout called inside ``forward`` behind the module's ``training`` flag (found by tracing);
* :mod:`~droplab.surgery.edit` – :func:`set_dropout_rate`, :func:`replace_dropout`,
  :func:`add_dropout` (keeps parameter names), :func:`add_dropconnect`, :func:`find_head`;
* :mod:`~droplab.surgery.depth` – :func:`add_stochastic_depth` on residual branches;
* :mod:`~droplab.surgery.tracing` – the ``torch.fx`` tracer these and MC dropout share.
"""

from droplab.surgery.depth import add_stochastic_depth
from droplab.surgery.edit import (
    add_dropconnect,
    add_dropout,
    drivable,
    dropout_modules,
    find_head,
    known_kinds,
    replace_dropout,
    select_dropout,
    set_dropout_rate,
)
from droplab.surgery.kinds import TORCH_DROPOUT_KINDS, dropout_kind, is_dropout, leaf_kind
from droplab.surgery.sources import DropoutInfo, find_dropout

__all__ = [
    "TORCH_DROPOUT_KINDS", "DropoutInfo", "add_dropconnect", "add_dropout",
    "add_stochastic_depth", "drivable", "dropout_kind", "dropout_modules", "find_dropout",
    "find_head", "is_dropout", "known_kinds", "leaf_kind", "replace_dropout",
    "select_dropout", "set_dropout_rate",
]
