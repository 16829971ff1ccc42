"""The prefix plan of MC dropout: run the deterministic part of a model once.

Everything before the first stochastic operation gives the same result in every MC pass.
:func:`prefix_plan` traces the model (in MC mode) with droplab's ``torch.fx`` tracer
(:mod:`droplab.surgery.tracing`), marks the stochastic nodes – calls of modules that hold
an active source (:func:`droplab.surgery.find_dropout`) and active stochastic function
calls – taints everything downstream of them, and splits the graph in two generated
modules: the *prefix* (untainted nodes, returning the *frontier* values the rest reads)
and the *suffix* (tainted nodes), replayed once per pass.

Why a plan cannot be wrong:

* the suffix gets *clones* of the cached frontier tensors in every pass, so in-place
  operations after the prefix (``nn.Dropout(inplace=True)`` heads, ``relu_``) never
  change the cache;
* a plan is keyed on the input's shape, dtype and device and on the model's state: the
  identity of every module, parameter and buffer, every module's ``training`` flag and
  every source's rate, so replacing a parameter (``model.fc.weight = …``), ``model.to()``,
  surgery or a new rate re-traces (updating tensors in place, e.g. ``load_state_dict``,
  needs nothing);
* with an example input, a new plan is *checked* before use: one full pass and one cached
  pass from the same RNG state must agree (``allclose``, rtol 1e-4, atol 1e-5); a plan
  that raises or disagrees is discarded with the reason, and MC runs full passes.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, fx, nn

from droplab.errors import InvalidValue
from droplab.surgery import DropoutInfo, find_dropout
from droplab.surgery.kinds import call_is_active, random_call
from droplab.surgery.tracing import Tracer

_OPS = ("call_module", "call_function", "call_method")


def logits_of(out: Any) -> Tensor:
    """The logits of a model output: a tensor, a ``logits`` key or attribute (Hugging Face
    outputs, torchvision's GoogLeNet/Inception namedtuples), or a tuple's first tensor."""
    if isinstance(out, Tensor):
        return out
    if isinstance(out, Mapping) and isinstance(out.get("logits"), Tensor):
        return out["logits"]
    logits = getattr(out, "logits", None)
    if isinstance(logits, Tensor):
        return logits
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], Tensor):
        return out[0]
    raise InvalidValue(
        f"MC dropout needs a model returning logits (a tensor, a tuple starting with one, or "
        f"an output with .logits), got {type(out).__name__}; wrap the model"
    )


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
    first_stochastic: str  # target of the first stochastic node: where the prefix ends
    frontier: list[str] = field(default_factory=list)  # names of the cached values

    def run_prefix(self, x: Tensor) -> tuple[Any, ...]:
        """Run the deterministic part once; return the values the suffix needs."""
        return tuple(self.prefix_module(x))

    def run_suffix(self, cached: tuple[Any, ...]) -> Any:
        """One stochastic pass, on clones of the cached values (never mutated)."""
        return self.suffix_module(*(v.clone() if isinstance(v, Tensor) else v for v in cached))


def _stochastic(node: fx.Node, gm: fx.GraphModule, active: set[int]) -> bool:
    if node.op == "call_module":
        module = gm.get_submodule(str(node.target))
        return any(id(m) in active for m in module.modules())
    spec = random_call(node)
    return spec is not None and call_is_active(spec, node)


def _split(gm: fx.GraphModule, active: set[int]) -> PrefixPlan | None:
    graph = gm.graph
    tainted: set[fx.Node] = set()
    first = ""
    for node in graph.nodes:
        if node.op not in _OPS:
            continue
        if _stochastic(node, gm, active):
            first = first or (str(node.target) if node.op != "call_function"
                              else getattr(node.target, "__name__", str(node.target)))
            tainted.add(node)
        elif any(i in tainted for i in node.all_input_nodes):
            tainted.add(node)
    if not first:
        return None
    output = next(n for n in graph.nodes if n.op == "output")
    tainted.add(output)
    frontier: list[fx.Node] = []
    needed_attrs: list[fx.Node] = []
    for node in graph.nodes:
        if node not in tainted:
            continue
        for i in node.all_input_nodes:
            if i in tainted:
                continue
            bucket = needed_attrs if i.op == "get_attr" else frontier
            if i not in bucket:
                bucket.append(i)
    needed: set[fx.Node] = set()  # the untainted nodes the frontier depends on
    stack = list(frontier)
    while stack:
        node = stack.pop()
        if node not in needed:
            needed.add(node)
            stack += node.all_input_nodes
    pg = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for node in graph.nodes:
        if node.op == "placeholder" or node in needed:
            env[node] = pg.node_copy(node, lambda n: env[n])
    pg.output(tuple(env[f] for f in frontier))
    sg = fx.Graph()
    senv: dict[fx.Node, fx.Node] = {f: sg.placeholder(f"cached_{k}") for k, f in enumerate(frontier)}
    for node in needed_attrs:  # parameters and buffers are read live, never cached
        senv[node] = sg.node_copy(node, lambda n: senv[n])
    for node in graph.nodes:
        if node in tainted:
            senv[node] = sg.node_copy(node, lambda n: senv[n])
    n_prefix = sum(n.op in _OPS for n in graph.nodes if n not in tainted)
    n_suffix = sum(n.op in _OPS for n in tainted)
    return PrefixPlan(fx.GraphModule(gm, pg), fx.GraphModule(gm, sg), n_prefix, n_suffix,
                      first, [f.name for f in frontier])


def _signature(model: nn.Module, sources: list[DropoutInfo]) -> tuple[Any, ...]:
    return (
        tuple((name, id(m), m.training) for name, m in model.named_modules()),
        tuple(id(p) for p in model.parameters()),
        tuple(id(b) for b in model.buffers()),
        tuple((d.key, d.p) for d in sources),
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:160]}" if text else type(exc).__name__


def _check(model: nn.Module, plan: PrefixPlan, x: Tensor) -> str:
    """Empty when a cached pass equals a full pass from the same RNG state, else why not."""
    devices = [x.device.index or 0] if x.device.type == "cuda" else []
    try:
        with torch.no_grad():
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(20160606)
                ref = logits_of(model(x.clone()))
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(20160606)
                got = logits_of(plan.run_suffix(plan.run_prefix(x.clone())))
    except Exception as exc:  # a plan that cannot run is discarded, not raised
        return f"the cached plan fails ({_first_line(exc)})"
    if got.shape != ref.shape or not torch.allclose(got.float(), ref.float(), rtol=1e-4,
                                                    atol=1e-5):
        diff = (got.float() - ref.float()).abs().max().item() if got.shape == ref.shape else None
        return ("the cached plan does not reproduce the model"
                + (f" (max difference {diff:.3g})" if diff is not None else " (shapes differ)"))
    return ""


_PLANS: weakref.WeakKeyDictionary[nn.Module, OrderedDict[Any, tuple[PrefixPlan | None, str]]] = (
    weakref.WeakKeyDictionary()
)
_KEEP = 4  # plans kept per model (input shapes)


def build_plan(model: nn.Module, x: Tensor | None = None,
               sources: list[DropoutInfo] | None = None) -> tuple[PrefixPlan | None, str]:
    """Trace and split ``model`` (already in MC mode); ``(plan, "")`` or ``(None, reason)``.
    ``sources`` is ``find_dropout(model)`` when the caller has it already."""
    sources = find_dropout(model) if sources is None else sources
    active = {id(d.module) for d in sources if d.mc and d.active}
    if not active:
        return None, "no active stochastic layer"
    leaves = tuple(d.module for d in sources
                   if d.mechanism == "gated" and d.mc and d.module is not model)
    tracer = Tracer(leaves=leaves, example=x)
    try:
        graph = tracer.trace(model)
    except Exception as exc:  # data-dependent control flow, unsupported ops, …
        return None, f"torch.fx cannot trace {type(model).__name__} ({_first_line(exc)})"
    plan = _split(fx.GraphModule(tracer.root, graph), active)
    if plan is None:
        return None, "no stochastic operation is reached by forward"
    if x is not None:
        why = _check(model, plan, x)
        if why:
            return None, why
    return plan, ""


def plan_for(model: nn.Module, x: Tensor | None = None,
             sources: list[DropoutInfo] | None = None) -> tuple[PrefixPlan | None, str]:
    """The cached :func:`build_plan` result for ``model`` in its current MC-mode state and
    the shape of ``x``; rebuilt whenever the key changes (see the module docstring)."""
    sources = find_dropout(model) if sources is None else sources
    key = ((tuple(x.shape), x.dtype, x.device) if x is not None else None,
           _signature(model, sources))
    plans = _PLANS.setdefault(model, OrderedDict())
    if key in plans:
        plans.move_to_end(key)
        return plans[key]
    result = build_plan(model, x, sources)
    plans[key] = result
    while len(plans) > _KEEP:
        plans.popitem(last=False)
    return result


__all__ = ["PrefixPlan", "build_plan", "logits_of", "plan_for"]
