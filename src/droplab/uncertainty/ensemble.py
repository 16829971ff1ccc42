"""Deep ensembles (Lakshminarayanan et al., NeurIPS 2017) and MC dropout over an ensemble.

An ensemble of ``M`` independently trained runs predicts the average of their softmax
outputs. Stacked as ``(M, N, K)`` the members' probabilities have the layout of MC passes,
so every MC metric applies unchanged: :func:`~droplab.uncertainty.mutual_information` of
the stack is the members' disagreement. With MC dropout inside each member, the ``M × T``
passes are one mixture ``(M·T, N, K)`` (each member weighted equally when all use the same
``T``), as in "MC dropout over an ensemble" (Ovadia et al., NeurIPS 2019).

Members must predict the same classes, in the same order, from images of the same shape;
:func:`check_members` says which member differs and how.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from droplab.errors import InvalidValue
from droplab.uncertainty.metrics import check_probs


@dataclass(frozen=True)
class Member:
    """What an ensemble needs to know of one member (a run folder)."""

    name: str
    classes: tuple[str, ...]
    in_shape: tuple[int, ...]


def check_members(members: Sequence[Member]) -> None:
    """One-line :class:`~droplab.errors.InvalidValue` unless every member has the first
    member's classes (same order) and input shape; an ensemble needs ≥ 2 members."""
    if len(members) < 2:
        raise InvalidValue(f"an ensemble needs at least 2 runs, got {len(members)}")
    first = members[0]
    for m in members[1:]:
        if tuple(m.classes) != tuple(first.classes):
            raise InvalidValue(
                f"ensemble members predict different classes: {m.name} has "
                f"{_short(m.classes)}, {first.name} has {_short(first.classes)}; ensemble "
                "runs trained on the same dataset and classes")
        if tuple(m.in_shape) != tuple(first.in_shape):
            raise InvalidValue(
                f"ensemble members take different inputs: {m.name} takes "
                f"{'×'.join(map(str, m.in_shape))}, {first.name} takes "
                f"{'×'.join(map(str, first.in_shape))}; ensemble runs trained with the same "
                "image size and channels")


def _short(classes: Sequence[str]) -> str:
    names = list(classes)
    return "[" + ", ".join(names[:5]) + (", …" if len(names) > 5 else "") + f"] ({len(names)})"


def stack_members(member_probs: Sequence[Tensor]) -> Tensor:
    """Members' probabilities as one ``(P, N, K)`` tensor of equally weighted passes.

    Each member gives ``(N, K)`` (deterministic) or ``(T, N, K)`` (MC dropout); MC members
    must all use the same ``T`` so that each member carries the same weight.
    """
    if not member_probs:
        raise InvalidValue("an ensemble needs at least one member's probabilities")
    parts = [check_probs(p, "member probabilities") for p in member_probs]
    parts = [p.unsqueeze(0) if p.dim() == 2 else p for p in parts]
    if any(p.dim() != 3 for p in parts):
        raise InvalidValue("member probabilities must be (N, K) or (T, N, K)")
    n, k, t = parts[0].shape[1], parts[0].shape[2], parts[0].shape[0]
    for i, p in enumerate(parts[1:], start=2):
        if p.shape[1:] != (n, k):
            raise InvalidValue(f"member {i} gives {tuple(p.shape[1:])} probabilities, member 1 "
                               f"gives {(n, k)}; score every member on the same images")
        if p.shape[0] != t:
            raise InvalidValue(f"member {i} has {p.shape[0]} MC passes, member 1 has {t}; use "
                               "the same number for every member")
    return torch.cat(parts, dim=0)


def ensemble_probs(member_probs: Sequence[Tensor]) -> Tensor:
    """The ensemble's prediction ``(N, K)``: the mean of all members' passes."""
    return stack_members(member_probs).mean(0)


__all__ = ["Member", "check_members", "ensemble_probs", "stack_members"]
