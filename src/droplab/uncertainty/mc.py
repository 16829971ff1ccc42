"""Monte-Carlo dropout (Gal & Ghahramani, ICML 2016): :func:`mc_mode` and :func:`mc_predict`.

MC dropout keeps dropout stochastic at test time and averages ``T`` softmax outputs; the
spread of the passes measures model uncertainty. :func:`mc_mode` is the one place where
droplab decides what "dropout on, everything else in eval mode" means for a model; serve,
evaluate and the tasks all use it.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from droplab.errors import InvalidValue
from droplab.surgery import DropoutInfo, find_dropout
from droplab.uncertainty.plan import PrefixPlan, logits_of, plan_for

#: torch.nn modules whose own ``training`` flag only chooses a fused eval fast path that
#: skips their dropout children; MC mode sets it when such a child is switched on
_FAST_PATH_GATES = (nn.TransformerEncoderLayer, nn.TransformerEncoder)


def stochastic_modules(model: nn.Module,
                       sources: list[DropoutInfo] | None = None) -> list[nn.Module]:
    """The modules whose own ``training`` flag :func:`mc_mode` sets to True: the module of
    every active source MC can drive (see :func:`mc_mode`), in ``named_modules`` order.
    ``sources`` is ``find_dropout(model)`` when the caller has it already."""
    seen: dict[int, nn.Module] = {}
    for d in sources if sources is not None else find_dropout(model):
        if not (d.mc and d.active):
            continue
        seen.setdefault(id(d.module), d.module)
    mods = list(seen.values())
    if mods:
        ids = set(seen)
        for m in model.modules():
            if isinstance(m, _FAST_PATH_GATES) and id(m) not in ids and any(
                    id(c) in ids for c in m.modules()):
                mods.append(m)
    return mods


@contextlib.contextmanager
def mc_mode(model: nn.Module,
            sources: list[DropoutInfo] | None = None) -> Iterator[list[nn.Module]]:
    """Eval mode for everything except the active sources of randomness; modes restored.

    The whole model is put in eval mode (BatchNorm and every other statistic frozen), then
    the ``training`` attribute of exactly these modules is set to True, *not recursively*
    (their children keep eval mode):

    * every stochastic layer with a rate > 0 (torch.nn's dropout family, droplab's layers,
      torchvision ``StochasticDepth`` / ``DropBlock``, timm ``DropPath`` / ``DropBlock2d``);
    * ``nn.MultiheadAttention`` with ``dropout > 0``: its flag switches its attention
      dropout (``F.multi_head_attention_forward(training=…)``) and nothing else;
    * each module whose ``forward`` calls dropout functionally behind its own flag
      (``F.dropout(x, p, training=self.training)``, SDPA ``dropout_p=… if self.training
      else 0``): :func:`droplab.surgery.find_dropout` traces such a module with its flag on
      and off and admits it only when the two graphs differ in nothing but the dropout
      calls, so setting that one flag switches dropout and nothing else;
    * ``nn.TransformerEncoderLayer`` / ``nn.TransformerEncoder`` holding such a module, so
      that the fused eval fast path, which ignores their dropout, is not taken.

    Sources refused by ``find_dropout`` (``mc=False``: the flag also changes other
    computations, or the forward cannot be traced) stay off. Yields the modules switched.
    ``sources`` is ``find_dropout(model)`` when the caller has it already.
    """
    saved = [(m, m.training) for m in model.modules()]
    model.eval()
    mods = stochastic_modules(model, sources)
    for m in mods:
        m.training = True
    try:
        yield mods
    finally:
        for m, mode in saved:
            m.training = mode


def prefix_plan(model: nn.Module, x: Tensor | None = None) -> PrefixPlan | None:
    """The prefix/suffix split of ``model`` traced in MC mode (:mod:`droplab.uncertainty.plan`),
    or ``None`` when it cannot be traced, has no active stochastic node or, given an example
    ``x``, fails its check."""
    with mc_mode(model):
        return plan_for(model, x)[0]


def _repeat(value: Any, times: int, batch: int) -> Any:
    """Repeat batch-first tensors ``times`` along dim 0; leave everything else as is."""
    if isinstance(value, Tensor) and value.dim() > 0 and value.shape[0] == batch:
        return value.repeat(times, *([1] * (value.dim() - 1)))
    if isinstance(value, (list, tuple)):
        return type(value)(_repeat(v, times, batch) for v in value)
    return value


@contextlib.contextmanager
def _seeded(generator: torch.Generator | None, device: torch.device,
            model: nn.Module) -> Iterator[None]:
    """With a generator, draw all dropout randomness from a forked global RNG seeded from it.

    droplab modules' own ``generator`` attributes are set aside for the duration, so one
    generator reproduces every mask (torch.nn dropout has no generator argument).
    """
    if generator is None:
        yield
        return
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device).item())
    mods = [m for m in model.modules() if isinstance(getattr(m, "generator", None),
                                                      torch.Generator)]
    saved = [(m, m.generator) for m in mods]
    devices = [device.index or 0] if device.type == "cuda" else []
    kwargs: dict[str, Any] = {"devices": devices}
    if device.type not in ("cpu", "cuda"):
        kwargs["device_type"] = device.type
    with torch.random.fork_rng(**kwargs):
        torch.manual_seed(seed)
        for m in mods:
            m.generator = None
        try:
            yield
        finally:
            for m, g in saved:
                m.generator = g


@contextlib.contextmanager
def _replicas(model: nn.Module, k: int) -> Iterator[None]:
    """Tell droplab's batch-shared layers that the batch holds ``k`` stacked passes."""
    mods = [m for m in model.modules() if hasattr(type(m), "replicas")]
    for m in mods:
        m.replicas = k
    try:
        yield
    finally:
        for m in mods:
            del m.replicas  # back to the class default


@contextlib.contextmanager
def _activation_bytes(model: nn.Module, device: torch.device) -> Iterator[list[int]]:
    """Estimate the memory of one pass: the measured peak on CUDA, else twice the bytes of
    every leaf module's output (an upper bound on live activations under ``no_grad``)."""
    total = [0]
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        yield total
        total[0] = torch.cuda.max_memory_allocated(device) - base
        return

    def hook(_m: nn.Module, _i: Any, out: Any) -> None:
        if isinstance(out, Tensor):
            total[0] += 2 * out.numel() * out.element_size()

    leaves = [m for m in model.modules() if not any(True for _ in m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        yield total
    finally:
        for h in handles:
            h.remove()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _no_randomness(model: nn.Module, found: list[DropoutInfo], allow: bool) -> None:
    if not found:
        what = "has no dropout"
        fix = "add some with droplab.surgery.add_dropout(model, after='head')"
    elif all(not d.active for d in found if d.mc):
        what = f"has {len(found)} dropout source(s), all at rate 0"
        fix = "raise a rate with droplab.surgery.set_dropout_rate(model, p)"
    else:
        what = "has no dropout MC can switch on"
        fix = "see `droplab inspect` for why each source is refused"
    message = f"{type(model).__name__} {what}: all MC passes would be identical; {fix}"
    if not allow:
        raise InvalidValue(message)
    warnings.warn(message, stacklevel=4)


@torch.no_grad()
def mc_predict(model: nn.Module, x: Tensor, samples: int = 30, *, reduce: str = "mean",
               chunk_size: int | None = None, memory_budget_mb: float = 1024.0,
               generator: torch.Generator | None = None, cache_prefix: bool = True,
               allow_deterministic: bool = False) -> Tensor:
    """Monte-Carlo dropout softmax probabilities (Gal & Ghahramani, 2016).

    Runs ``samples`` (``T``) stochastic passes of ``model`` on ``x`` in :func:`mc_mode`
    (every source droplab finds switched on, BatchNorm and everything else in eval mode,
    modes restored afterwards); every pass draws independent masks. Returns softmax
    probabilities of the logits (:func:`~droplab.uncertainty.plan.logits_of`: a tensor, a
    tuple's first element or ``.logits``) over dim 1: ``(T, N, K)`` for ``reduce="none"``
    or their mean ``(N, K)`` for ``reduce="mean"``.

    A model without an active source is a one-line ``InvalidValue`` (``allow_deterministic``
    turns it into a warning and ``T`` identical passes); sources MC cannot switch on are
    named in a warning.

    ``cache_prefix`` runs the deterministic part before the first stochastic operation once
    (:mod:`droplab.uncertainty.plan`); where the model cannot be traced or the plan fails
    its check, MC runs full passes and warns once with the reason.

    ``chunk_size`` passes are stacked along the batch dimension per call (``1`` = a plain
    loop). ``None`` (auto) measures: pass 1 runs alone, timed and sized (peak memory on
    CUDA, leaf-module outputs elsewhere); then a trial chunk of a quarter of the passes; if
    it was faster per pass than the single pass, the rest runs in chunks as large as
    ``memory_budget_mb`` allows, else in a loop (DESIGN.md measured replication slower than
    a loop for full ResNet passes on CPU). Masks stay independent per pass in a chunk:
    element-wise kinds draw per row, and droplab's batch-shared kinds (DropConnect weight
    masks, ``DropPath(mode="batch")``) draw one mask per stacked pass; third-party
    batch-shared layers (torchvision ``StochasticDepth(mode="batch")``) force the loop.
    Batched replicas assume the replayed layers treat dim 0 as the batch; a shape error
    falls back to the loop.

    ``generator`` makes the masks reproducible (all dropout randomness is drawn from a
    forked global RNG seeded from it); with a generator, auto mode loops, so cached and
    uncached predictions with the same seeded generator are equal.
    """
    if reduce not in ("mean", "none"):
        raise InvalidValue(f"reduce={reduce!r}; use 'mean' or 'none'")
    if int(samples) < 1:
        raise InvalidValue(f"samples={samples} must be a positive number of MC passes")
    if chunk_size is not None and int(chunk_size) < 1:
        raise InvalidValue(f"chunk_size={chunk_size} must be a positive number of passes")
    if not isinstance(x, Tensor) or x.dim() < 1:
        raise InvalidValue("mc_predict needs a batch tensor x of shape (N, ...)")
    T, N = int(samples), x.shape[0]
    sources = find_dropout(model)  # modes do not change what it finds
    with mc_mode(model, sources) as stochastic:
        if not stochastic:
            _no_randomness(model, sources, allow_deterministic)
        refused = [d for d in sources if not d.mc]
        if refused:
            warnings.warn(
                f"MC dropout cannot switch on {len(refused)} source(s) of "
                f"{type(model).__name__}, e.g. {refused[0].name} ({refused[0].note})",
                stacklevel=3)
        plan: PrefixPlan | None = None
        if cache_prefix and stochastic:
            plan, why = plan_for(model, x, sources)
            if plan is None:
                warnings.warn(f"MC dropout runs full passes of {type(model).__name__}: {why}",
                              stacklevel=3)
        shared = [d for d in sources if d.mc and d.active and d.batch_shared
                  and not hasattr(type(d.module), "replicas")]
        with _seeded(generator, x.device, model):
            probs = _passes(model, x, T, N, plan, chunk_size, memory_budget_mb,
                            loop_only=generator is not None or bool(shared),
                            forced=chunk_size is not None and bool(shared))
    return probs.mean(0) if reduce == "mean" else probs


def _passes(model: nn.Module, x: Tensor, T: int, N: int, plan: PrefixPlan | None,
            chunk_size: int | None, memory_budget_mb: float, *, loop_only: bool,
            forced: bool) -> Tensor:
    """``(T, N, K)`` softmax probabilities of ``T`` passes (see :func:`mc_predict`)."""
    if plan is not None:
        cached = plan.run_prefix(x)

        def run(k: int) -> Tensor:
            inputs = cached if k == 1 else tuple(_repeat(v, k, N) for v in cached)
            with _replicas(model, k):
                return logits_of(plan.run_suffix(inputs))
    else:

        def run(k: int) -> Tensor:
            with _replicas(model, k):  # a clone: an in-place first layer must not touch x
                return logits_of(model(x.clone() if k == 1 else _repeat(x, k, N)))

    outs: list[Tensor] = []

    def keep(out: Tensor, k: int) -> None:
        probs = F.softmax(out.float(), dim=1)
        outs.append(probs.reshape(k, N, *probs.shape[1:]))

    # pass 1 alone: its time and memory size the chunks in auto mode
    with _activation_bytes(model, x.device) as per_pass:
        _sync(x.device)
        start = time.perf_counter()
        keep(run(1), 1)
        _sync(x.device)
        t_single = time.perf_counter() - start
    if plan is not None:  # replicated cached inputs also take memory
        per_pass[0] += sum(v.numel() * v.element_size() for v in cached if isinstance(v, Tensor))
    fit = max(1, int(memory_budget_mb * 2**20 // max(per_pass[0], 1)))
    auto = chunk_size is None
    if forced:
        warnings.warn(f"chunk_size={chunk_size} ignored: a third-party layer draws one mask "
                      "per batch, so MC passes run one by one", stacklevel=4)
    # the trial chunk is a quarter of the passes, so the verdict still matters
    chunk = 1 if loop_only else (min(fit, max(2, (T - 1) // 4)) if auto else int(chunk_size))
    done = 1
    while done < T:
        k = min(chunk, T - done)
        if k > 1:
            start = time.perf_counter()
            try:
                out = run(k)
                if out.shape[0] != k * N:
                    raise RuntimeError("replicas changed the batch size")
            except RuntimeError:  # a layer that does not treat dim 0 as the batch
                chunk = 1
                continue
            _sync(x.device)
            if auto:  # verdict of the trial: loop, or chunks as large as memory allows
                auto = False
                chunk = 1 if (time.perf_counter() - start) / k >= t_single else fit
            keep(out, k)
        else:
            keep(run(1), 1)
        done += k
    return torch.cat(outs, dim=0)


__all__ = ["mc_mode", "mc_predict", "prefix_plan", "stochastic_modules"]
