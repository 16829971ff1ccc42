"""Checkpoints: tensors and plain Python only, written atomically, read without running code.

The contract (every task that saves): a checkpoint holds tensors and plain Python —
``dict`` (state dicts' ``OrderedDict`` included), ``list``, ``tuple``, ``str``, ``int``,
``float``, ``bool``, ``None``, ``bytes`` — and the torch values a state dict carries
(``torch.Size``, ``torch.dtype``, ``torch.device``). :func:`save_checkpoint` converts NumPy
values on the way in (arrays become tensors, ``np.random.get_state()`` included, which
``np.random.set_state`` accepts back; NumPy scalars become Python numbers) and refuses
anything else (a dataclass, a custom class) with a ``TypeError`` naming where it sits: a
bug in the caller, caught before a file is written.

Reading goes through :func:`droplab.fileio.read_torch_file` (``weights_only=True``). The
allow-list adds exactly the NumPy globals that rebuild a plain numeric array, because
checkpoints of the previous release (droplab ≤ 0.x) stored ``np.random.get_state()``;
such arrays come back as tensors, so every caller sees the contract's types. Object
arrays are refused. Any other global — a pickled ``__reduce__`` payload — is refused
before it is called, in one line naming the file.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from droplab.fileio import UnreadableFile, UnsafeFile, atomic_torch_save, read_torch_file

#: The only globals beyond PyTorch's weights-only defaults: a plain NumPy array, as in
#: ``np.random.get_state()`` of the previous release (both NumPy 1 and 2 spellings).
LEGACY_ALLOW: tuple[Any, ...] = (
    np.ndarray,
    np.dtype,
    type(np.dtype(np.uint32)),
    np._core.multiarray._reconstruct,
    (np._core.multiarray._reconstruct, "numpy.core.multiarray._reconstruct"),
)

_PLAIN = (str, int, float, bool, bytes, type(None), torch.Size, torch.dtype, torch.device)

#: The advice after "cannot be read" when a resume meets a broken checkpoint.
RESUME_ADVICE = ("its run cannot continue: start it again with a new --out folder "
                 "(or restore checkpoint.pt from a copy)")
#: The advice when a model is only read (evaluate, serve, style-apply, --from …): keep it.
MODEL_ADVICE = "restore checkpoint.pt from a copy of the run, or train the run again"


def to_checkpoint(obj: Any, where: str = "checkpoint") -> Any:
    """``obj`` in the checkpoint contract's types (NumPy values converted), or ``TypeError``.

    Containers are rebuilt only where something inside changed, so state dicts keep
    their identity (and their ``_metadata``).
    """
    if isinstance(obj, (torch.Tensor, *_PLAIN)):
        return obj
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in "biuf":
            raise TypeError(f"{where} is a NumPy {obj.dtype} array; store numbers only")
        return torch.from_numpy(np.ascontiguousarray(obj).copy())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        items = {k: to_checkpoint(v, f"{where}[{k!r}]") for k, v in obj.items()}
        if all(items[k] is v for k, v in obj.items()):
            return obj
        out: dict[Any, Any] = OrderedDict(items) if isinstance(obj, OrderedDict) else items
        if hasattr(obj, "_metadata"):
            out._metadata = obj._metadata  # type: ignore[attr-defined]
        return out
    if type(obj) in (list, tuple):
        seq = [to_checkpoint(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        if all(a is b for a, b in zip(seq, obj)):
            return obj
        return type(obj)(seq)
    kind = "a dataclass" if dataclasses.is_dataclass(obj) else "an object"
    raise TypeError(f"{where} is {kind} of type {type(obj).__qualname__}; a checkpoint holds "
                    "tensors and plain Python only (use dataclasses.asdict / state_dict())")


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Check ``state`` against the contract, then ``torch.save`` it atomically."""
    atomic_torch_save(to_checkpoint(state), path)


def load_checkpoint(
    path: str | Path,
    map_location: str | torch.device = "cpu",
    *,
    advice: str = MODEL_ADVICE,
) -> dict[str, Any]:
    """Read a checkpoint safely (see the module docstring); one-line errors.

    Raises :class:`~droplab.fileio.UnsafeFile` for a file that would run code and
    :class:`~droplab.fileio.UnreadableFile` (ending in ``advice``) for a broken one.
    """
    path = Path(path)
    obj = read_torch_file(path, map_location=map_location, allow=LEGACY_ALLOW,
                          what="checkpoint", advice=advice)
    if not isinstance(obj, dict):
        raise UnreadableFile(f"checkpoint {path} holds a {type(obj).__name__}, not a droplab "
                             f"checkpoint; {advice}")
    try:
        return to_checkpoint(obj)
    except TypeError:  # an object-dtype NumPy array slipped through the allow-list
        raise UnsafeFile(f"refused to load checkpoint {path}: it holds a NumPy object array, "
                         "which a droplab checkpoint never holds") from None


__all__ = ["LEGACY_ALLOW", "MODEL_ADVICE", "RESUME_ADVICE", "load_checkpoint",
           "save_checkpoint", "to_checkpoint"]
