"""Scoring an unlabelled pool with *consistent* MC dropout: the same T masks for every image.

:func:`~droplab.uncertainty.mc_predict` draws a fresh mask for every image and every pass,
which is right for predictions but not for BatchBALD: its joint entropy needs pass ``t``
of image ``i`` and pass ``t`` of image ``j`` to come from one network sample ``ω_t``
(Kirsch et al. 2019 call this "consistent MC dropout"). :func:`pool_mc_probs` gives
exactly that, for any pool size and batching:

* every active stochastic *layer* draws its mask for one image, ``(1, …)``, and applies it
  to the whole batch by broadcasting: the layer is run on ones and on zeros of that shape
  from the same random state, which gives its noise as ``a ⊙ x + b`` (``b = 0`` for
  dropout, spatial dropout, DropBlock, Gaussian and Concrete dropout, drop-path; affine
  for alpha dropout); layers with one draw per batch (DropConnect weight masks,
  ``mode="batch"``) are left as they are;
* pass ``t`` reseeds the random generator from ``(seed, t)``, so every draw of pass ``t``
  repeats in every pool batch (all draws have shapes that do not depend on the batch);
* the deterministic prefix of the model runs once per batch (the MC prefix plan of
  :mod:`droplab.uncertainty.plan`), only the suffix ``T`` times.

Randomness that cannot be shared this way (dropout called functionally inside a module's
``forward``, attention dropout) is found before scoring and reported: ``consistent`` is
False, and ``require_consistent=True`` makes it a one-line error. The result is checked
once: a pass over a batch and over the same batch without its first image must agree on
the images they share.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from droplab.errors import InvalidValue
from droplab.surgery import find_dropout
from droplab.uncertainty.mc import mc_mode
from droplab.uncertainty.plan import logits_of, plan_for

_MIX = 0x9E3779B97F4A7C15  # golden-ratio constant: pass seeds far apart


def _pass_seed(seed: int, t: int) -> int:
    return (int(seed) * 1_000_003 + (t + 1) * _MIX) % (2**63 - 1)


@dataclass(frozen=True)
class PoolScores:
    """``probs``: ``(T, N, K)`` softmax probabilities of ``T`` consistent passes."""

    probs: Tensor
    consistent: bool  # the same T masks for every image (BatchBALD may use them)
    cached: bool  # the deterministic prefix ran once per batch
    why_not: str = ""  # when not consistent: which source and why


def _shared_forward(module: nn.Module) -> Any:
    """A ``forward`` that draws the module's noise for one image and broadcasts it."""
    original = module.forward
    affine: list[bool | None] = [None]

    def forward(x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        if args or kwargs or not isinstance(x, Tensor) or x.dim() < 1:
            return original(x, *args, **kwargs)
        shape = (1, *x.shape[1:])
        seed = int(torch.randint(0, 2**62, (1,)).item())  # shape-free: same in every batch
        devices = [x.device.index or 0] if x.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            scale = original(x.new_ones(shape))
        if affine[0] is None or affine[0]:
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(seed)
                shift = original(x.new_zeros(shape))
            affine[0] = bool(shift.abs().max() > 0)
            if affine[0]:
                return (scale - shift) * x + shift
        return scale * x

    return forward


@contextlib.contextmanager
def shared_masks(model: nn.Module) -> Iterator[tuple[bool, str]]:
    """Within :func:`mc_mode`: make every active stochastic layer draw one mask per pass
    for the whole batch. Yields ``(consistent, why_not)``; everything is restored."""
    patched: list[tuple[nn.Module, Any, bool]] = []
    why = ""
    for d in find_dropout(model):
        if not (d.mc and d.active):
            continue
        if d.mechanism != "layer" or d.kind == "attention":
            why = why or (f"{d.name or type(d.module).__name__} ({d.kind}) draws its dropout "
                          "inside its own forward, so its masks cannot be shared")
            continue
        if d.batch_shared or any(m is d.module for m, _, _ in patched):
            continue
        had = "forward" in vars(d.module)
        patched.append((d.module, vars(d.module).get("forward"), had))
        d.module.forward = _shared_forward(d.module)
    generators = [(m, m.generator) for m in model.modules()
                  if isinstance(getattr(m, "generator", None), torch.Generator)]
    for m, _ in generators:  # draw from the reseeded global generator
        m.generator = None
    try:
        yield not why, why
    finally:
        for m, g in generators:
            m.generator = g
        for m, old, had in patched:
            if had:
                m.forward = old
            else:
                del m.forward


def _no_mc(model: nn.Module) -> InvalidValue:
    return InvalidValue(
        f"{type(model).__name__} has no dropout MC can switch on, so every pass would be "
        "identical; train it with dropout (e.g. --dropout 0.5) or use --acquisition random")


@torch.no_grad()
def pool_mc_probs(model: nn.Module, batches: Iterable[Tensor], samples: int = 20, *,
                  seed: int = 0, cache_prefix: bool = True,
                  require_consistent: bool = False) -> PoolScores:
    """``T = samples`` consistent MC-dropout passes over the pool ``batches`` (module
    docstring): ``(T, N, K)`` probabilities in the order of the batches."""
    if int(samples) < 1:
        raise InvalidValue(f"samples={samples} must be a positive number of MC passes")
    outs: list[Tensor] = []
    cached = True
    checked = False
    with mc_mode(model) as stochastic:
        if not stochastic:
            raise _no_mc(model)
        with shared_masks(model) as (consistent, why):
            if require_consistent and not consistent:
                raise InvalidValue(f"BatchBALD needs the same dropout masks for every pool "
                                   f"image, but {why}; use --acquisition bald")
            for x in batches:
                if x.shape[0] == 0:
                    continue
                plan = plan_for(model, x)[0] if cache_prefix else None
                cached = cached and plan is not None
                probs = _passes(model, plan, x, int(samples), seed)
                if consistent and not checked and x.shape[0] > 1:
                    checked = True
                    again = _passes(model, plan_for(model, x[1:])[0] if cache_prefix else None,
                                    x[1:], 1, seed)
                    if not torch.allclose(again[0], probs[0, 1:], rtol=1e-4, atol=1e-5):
                        consistent, why = False, ("its masks changed with the batch "
                                                  "(a layer draws per image)")
                        if require_consistent:
                            raise InvalidValue(f"BatchBALD needs the same dropout masks for "
                                               f"every pool image, but {why}; use "
                                               "--acquisition bald")
                outs.append(probs)
    if not outs:
        raise InvalidValue("the pool is empty: nothing to score")
    return PoolScores(torch.cat(outs, dim=1), consistent, cached, why)


def _passes(model: nn.Module, plan: Any, x: Tensor, samples: int, seed: int) -> Tensor:
    """``(T, B, K)`` probabilities; pass ``t`` is seeded from ``(seed, t)``."""
    frontier = plan.run_prefix(x) if plan is not None else None
    devices = [x.device.index or 0] if x.device.type == "cuda" else []
    out = []
    for t in range(samples):
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(_pass_seed(seed, t))
            logits = logits_of(plan.run_suffix(frontier) if plan is not None
                               else model(x.clone()))
        out.append(F.softmax(logits.float(), dim=1).cpu())
    return torch.stack(out)


__all__ = ["PoolScores", "pool_mc_probs", "shared_masks"]
