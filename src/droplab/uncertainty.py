"""Monte-Carlo dropout prediction and uncertainty / calibration metrics.

MC dropout (Gal & Ghahramani, ICML 2016) keeps dropout stochastic at test time and
averages ``T`` softmax outputs; the spread of the passes measures model uncertainty.

:func:`mc_predict` puts only the stochastic layers (torch.nn and droplab dropout modules,
DropConnect wrappers) in training mode; BatchNorm and every other layer stay in eval mode,
and all modes are restored afterwards.

**Prefix caching.** Everything before the first stochastic layer gives the same result in
every pass, so :func:`mc_predict` traces the model with :func:`torch.fx.symbolic_trace`,
marks the stochastic nodes (dropout modules and calls such as ``F.dropout`` or
``torch.bernoulli``), taints everything downstream of them, runs the untainted part once
and replays only the tainted suffix ``T`` times. For a dropout head on a ResNet the
backbone runs once. When tracing fails (data-dependent control flow, unsupported ops) the
predictor silently falls back to ``T`` full passes; a model without any stochastic layer
also gets full passes and a warning (all passes are identical).

Metrics take probability tensors: ``mc_probs`` of shape ``(T, N, K)`` or mean
probabilities ``(N, K)``; they return tensors per sample or Python floats for dataset
summaries.
"""

from __future__ import annotations

import contextlib
import time
import warnings
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from droplab.errors import InvalidValue
from droplab.surgery import is_dropout

# --------------------------------------------------------------------------- stochastic ops
_RANDOM_FUNCTIONS: set[Any] = {
    F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout,
    F.feature_alpha_dropout, torch.dropout, torch.bernoulli, torch.rand, torch.rand_like,
    torch.randn, torch.randn_like, torch.randint, torch.randint_like, torch.randperm,
    torch.normal, torch.poisson, torch.multinomial, torch.alpha_dropout,
    torch.feature_dropout, torch.feature_alpha_dropout,
}
_RANDOM_METHODS = {"bernoulli", "bernoulli_", "uniform_", "normal_", "random_",
                   "exponential_", "geometric_", "cauchy_", "log_normal_"}


def _random_functions() -> set[Any]:
    funcs = set(_RANDOM_FUNCTIONS)
    try:
        from droplab import functional
    except ImportError:
        return funcs
    for name in ("dropout", "spatial_dropout", "gaussian_dropout", "alpha_dropout",
                 "drop_connect", "drop_block", "drop_path", "concrete_dropout"):
        fn = getattr(functional, name, None)
        if fn is not None:
            funcs.add(fn)
    return funcs


def stochastic_modules(model: nn.Module) -> list[nn.Module]:
    """The modules :func:`mc_predict` keeps in training mode (all dropout modules)."""
    return [m for m in model.modules() if is_dropout(m)]


@contextlib.contextmanager
def mc_mode(model: nn.Module) -> Iterator[list[nn.Module]]:
    """Eval mode for everything except the dropout modules; modes restored on exit."""
    saved = [(m, m.training) for m in model.modules()]
    model.eval()
    stochastic = stochastic_modules(model)
    for m in stochastic:
        m.training = True  # not recursive: children (e.g. a wrapped conv) stay as they are
    try:
        yield stochastic
    finally:
        for m, mode in saved:
            m.training = mode


# --------------------------------------------------------------------------- fx prefix plan
class _Tracer(fx.Tracer):
    """Keeps dropout modules (torch.nn and droplab) as leaves so their mode is read at run time."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return is_dropout(m) or super().is_leaf_module(m, module_qualified_name)


@dataclass
class PrefixPlan:
    """A traced model split into a deterministic prefix and a stochastic suffix.

    ``prefix_module(x)`` returns the tuple of values (the *frontier*) the suffix reads;
    ``suffix_module(*frontier)`` is one stochastic pass. Both are generated
    :class:`torch.fx.GraphModule` s sharing the model's submodules.
    """

    prefix_module: fx.GraphModule
    suffix_module: fx.GraphModule
    n_prefix: int  # operations run once
    n_suffix: int  # operations replayed per pass
    first_stochastic: str

    def run_prefix(self, x: Tensor) -> tuple[Any, ...]:
        """Run the deterministic part once; return the values the suffix needs."""
        return tuple(self.prefix_module(x))

    def run_suffix(self, cached: tuple[Any, ...]) -> Any:
        """One stochastic pass over the tainted nodes, reading cached prefix values."""
        return self.suffix_module(*cached)


_OPS = ("call_module", "call_function", "call_method")


def _build_plan(model: nn.Module) -> PrefixPlan | None:
    tracer = _Tracer()
    try:
        graph = tracer.trace(model)
    except Exception:  # data-dependent control flow, unsupported ops, …
        return None
    gm = fx.GraphModule(tracer.root, graph)
    random_funcs = _random_functions()
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    if not placeholders or any(not p.args for p in placeholders[1:]):
        return None
    tainted: set[fx.Node] = set()
    first = ""
    for node in graph.nodes:
        stochastic = (
            (node.op == "call_module" and is_dropout(gm.get_submodule(str(node.target))))
            or (node.op == "call_function" and node.target in random_funcs)
            or (node.op == "call_method" and node.target in _RANDOM_METHODS)
        )
        if stochastic and not first:
            first = str(node.target) if node.op == "call_module" else getattr(
                node.target, "__name__", str(node.target))
        if stochastic or any(i in tainted for i in node.all_input_nodes):
            tainted.add(node)
    if not first:
        return None
    output = next(n for n in graph.nodes if n.op == "output")
    tainted.add(output)
    frontier: list[fx.Node] = []
    for node in graph.nodes:
        if node in tainted:
            frontier += [i for i in node.all_input_nodes if i not in tainted and i not in frontier]
    # prefix graph: x -> tuple(frontier)
    pg = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for node in graph.nodes:
        if node not in tainted:
            env[node] = pg.node_copy(node, lambda n: env[n])
    pg.output(tuple(env[f] for f in frontier))
    # suffix graph: *frontier -> output
    sg = fx.Graph()
    senv: dict[fx.Node, fx.Node] = {f: sg.placeholder(f"cached_{k}") for k, f in enumerate(frontier)}
    for node in graph.nodes:
        if node in tainted:
            senv[node] = sg.node_copy(node, lambda n: senv[n])
    n_prefix = sum(n.op in _OPS for n in graph.nodes if n not in tainted)
    n_suffix = sum(n.op in _OPS for n in tainted)
    return PrefixPlan(fx.GraphModule(gm, pg), fx.GraphModule(gm, sg), n_prefix, n_suffix, first)


_PLANS: weakref.WeakKeyDictionary[nn.Module, tuple[tuple[Any, ...], PrefixPlan | None]] = (
    weakref.WeakKeyDictionary()
)


def _signature(model: nn.Module) -> tuple[Any, ...]:
    # module tree plus buffer identities (``model.to(device)`` replaces buffer tensors)
    return tuple((name, id(m)) for name, m in model.named_modules()) + tuple(
        id(b) for b in model.buffers()
    )


def prefix_plan(model: nn.Module) -> PrefixPlan | None:
    """The cached prefix/suffix split of ``model``, or ``None`` if it cannot be traced or
    has no stochastic node. Re-traced when the module tree changes (e.g. after surgery)."""
    sig = _signature(model)
    hit = _PLANS.get(model)
    if hit is not None and hit[0] == sig:
        return hit[1]
    plan = _build_plan(model)
    _PLANS[model] = (sig, plan)
    return plan


# --------------------------------------------------------------------------- prediction
def _tensor_output(out: Any) -> Tensor:
    if isinstance(out, Tensor):
        return out
    raise InvalidValue(
        f"mc_predict needs a model returning one logits tensor, got {type(out).__name__}; "
        "wrap the model so that forward returns logits"
    )


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
    mods = [m for m in model.modules() if is_dropout(m) and hasattr(m, "generator")]
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


@torch.no_grad()
def mc_predict(model: nn.Module, x: Tensor, samples: int = 30, *, reduce: str = "mean",
               chunk_size: int | None = None, memory_budget_mb: float = 1024.0,
               generator: torch.Generator | None = None,
               cache_prefix: bool = True) -> Tensor:
    """Monte-Carlo dropout softmax probabilities (Gal & Ghahramani, 2016).

    Runs ``samples`` (``T``) stochastic passes of ``model`` on ``x`` with dropout layers in
    training mode and everything else (BatchNorm included) in eval mode; every pass draws
    independent masks; the model's modes are restored afterwards. Returns softmax
    probabilities over dim 1: ``(T, N, K)`` for ``reduce="none"`` or their mean ``(N, K)``
    for ``reduce="mean"``.

    ``cache_prefix`` runs the deterministic part before the first stochastic layer once
    (see the module docstring); without a traceable graph or without any stochastic layer
    it falls back to full passes (the latter with a warning).

    ``chunk_size`` replicas of the stochastic part are stacked along the batch dimension
    per call (``1`` = a plain loop). ``None`` (auto) measures: pass 1 runs alone, timed and
    sized (peak memory on CUDA, leaf-module outputs elsewhere); then a trial chunk of a
    quarter of the passes runs; if it was faster per pass than the single pass, the rest
    runs in chunks as large as ``memory_budget_mb`` allows, else in a loop (DESIGN.md measured
    replication slower than a loop for full ResNet passes on CPU). Batched replicas assume
    the replayed layers treat dim 0 as the batch; a shape error falls back to the loop.

    ``generator`` makes the masks reproducible (all dropout randomness is drawn from a
    forked global RNG seeded from it); with a generator, auto mode loops, so cached and
    uncached predictions with the same seeded generator are identical.
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
    with mc_mode(model) as stochastic, _seeded(generator, x.device, model):
        plan = prefix_plan(model) if (cache_prefix or not stochastic) else None
        if not stochastic and plan is None:
            warnings.warn(
                f"{type(model).__name__} has no dropout layer: all MC passes are identical; "
                "add one with droplab.surgery.add_dropout(model, after='head')",
                stacklevel=3,
            )
        if not cache_prefix:
            plan = None
        if plan is not None:
            cached = plan.run_prefix(x)

            def run(k: int) -> Tensor:
                inputs = cached if k == 1 else tuple(_repeat(v, k, N) for v in cached)
                return _tensor_output(plan.run_suffix(inputs))
        else:

            def run(k: int) -> Tensor:
                return _tensor_output(model(x if k == 1 else _repeat(x, k, N)))

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
        # auto: a loop keeps masks reproducible with a generator; else try a chunk and keep
        # chunking only if it measures faster per pass than the loop
        # the trial chunk is a quarter of the passes, so the verdict still matters
        auto_chunk = 1 if generator is not None else min(fit, max(2, (T - 1) // 4))
        chunk = auto_chunk if auto else int(chunk_size)
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
    stacked = torch.cat(outs, dim=0)
    return stacked.mean(0) if reduce == "mean" else stacked


# --------------------------------------------------------------------------- metrics
_EPS = 1e-12


def _as_mc(mc_probs: Tensor) -> Tensor:
    if mc_probs.dim() == 2:
        return mc_probs.unsqueeze(0)
    if mc_probs.dim() != 3:
        raise InvalidValue(
            f"expected MC probabilities of shape (T, N, K) or (N, K), got {tuple(mc_probs.shape)}"
        )
    return mc_probs


def _entropy(probs: Tensor) -> Tensor:
    p = probs.double()
    return -(p * torch.log(p.clamp_min(_EPS))).sum(-1)


def predictive_entropy(mc_probs: Tensor) -> Tensor:
    """``H[E_t p_t]`` per sample (nats): total uncertainty. Accepts (T, N, K) or (N, K)."""
    return _entropy(_as_mc(mc_probs).mean(0)).to(mc_probs.dtype)


def expected_entropy(mc_probs: Tensor) -> Tensor:
    """``E_t H[p_t]`` per sample (nats): aleatoric part of the predictive entropy."""
    return _entropy(_as_mc(mc_probs)).mean(0).to(mc_probs.dtype)


def mutual_information(mc_probs: Tensor) -> Tensor:
    """BALD score (Houlsby et al., 2011): ``H[E_t p_t] − E_t H[p_t] ≥ 0`` per sample (nats),
    the epistemic part; 0 when all passes agree."""
    mc = _as_mc(mc_probs)
    mi = _entropy(mc.mean(0)) - _entropy(mc).mean(0)
    return mi.clamp_min(0.0).to(mc_probs.dtype)


def variation_ratio(mc_probs: Tensor) -> Tensor:
    """``1 − f_mode / T`` per sample (Freeman, 1965; Gal, 2016): the fraction of passes whose
    top class differs from the most frequent top class."""
    mc = _as_mc(mc_probs)
    votes = mc.argmax(-1)  # (T, N)
    counts = F.one_hot(votes, mc.shape[-1]).sum(0)  # (N, K)
    return 1.0 - counts.max(-1).values.to(mc_probs.dtype) / mc.shape[0]


def _check_labels(probs: Tensor, labels: Tensor) -> None:
    if probs.dim() != 2 or labels.dim() != 1 or probs.shape[0] != labels.shape[0]:
        raise InvalidValue(
            f"expected probs (N, K) and labels (N,), got {tuple(probs.shape)} and {tuple(labels.shape)}"
        )


def expected_calibration_error(probs: Tensor, labels: Tensor, n_bins: int = 15) -> float:
    """ECE with ``n_bins`` equal-width confidence bins (Guo et al., 2017):
    ``Σ_b |B_b|/N · |acc(B_b) − conf(B_b)|`` (torchmetrics, ``norm="l1"``)."""
    from torchmetrics.functional.classification import multiclass_calibration_error

    _check_labels(probs, labels)
    value = multiclass_calibration_error(
        probs.float(), labels.long(), num_classes=probs.shape[1], n_bins=n_bins, norm="l1"
    )
    return float(value)


def negative_log_likelihood(probs: Tensor, labels: Tensor) -> float:
    """Mean ``−log p(y|x)`` (nats); probabilities are clamped at 1e-12."""
    _check_labels(probs, labels)
    p = probs.double().gather(1, labels.long().unsqueeze(1)).squeeze(1)
    return float(-torch.log(p.clamp_min(_EPS)).mean())


def brier_score(probs: Tensor, labels: Tensor) -> float:
    """Multi-class Brier score (Brier, 1950): mean over samples of ``Σ_k (p_k − 1[y=k])²``,
    in [0, 2]."""
    _check_labels(probs, labels)
    onehot = F.one_hot(labels.long(), probs.shape[1]).double()
    return float(((probs.double() - onehot) ** 2).sum(1).mean())


def ood_auroc(scores_in: Tensor, scores_out: Tensor) -> float:
    """AUROC of separating out-of-distribution from in-distribution samples by a score
    where *higher means more likely OOD* (e.g. predictive entropy or mutual information);
    0.5 is chance, 1.0 perfect (scikit-learn ``roc_auc_score``)."""
    from sklearn.metrics import roc_auc_score

    s_in = torch.as_tensor(scores_in).detach().double().flatten().cpu()
    s_out = torch.as_tensor(scores_out).detach().double().flatten().cpu()
    if s_in.numel() == 0 or s_out.numel() == 0:
        raise InvalidValue("ood_auroc needs at least one in-distribution and one OOD score")
    y = torch.cat([torch.zeros(s_in.numel()), torch.ones(s_out.numel())]).numpy()
    s = torch.cat([s_in, s_out]).numpy()
    return float(roc_auc_score(y, s))


__all__ = [
    "PrefixPlan", "brier_score", "expected_calibration_error", "expected_entropy",
    "mc_mode", "mc_predict", "mutual_information", "negative_log_likelihood", "ood_auroc",
    "predictive_entropy", "prefix_plan", "stochastic_modules", "variation_ratio",
]

