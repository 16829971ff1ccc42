"""``droplab inspect MODEL``: every source of randomness in a model and its MC prefix plan.

``MODEL`` is a run folder (restored with :func:`droplab.runs.restore.load_run`),
``tv:NAME`` (a torchvision classifier, ``weights=None``), ``timm:NAME`` (``timm.create_model``,
``pretrained=False``) or ``package.module:factory`` (a callable returning an ``nn.Module``);
``--kwargs`` passes constructor arguments (``drop_rate=0.2,attention_dropout=0.1``).

The summary lists each source :func:`droplab.surgery.find_dropout` reports (name, kind,
rate, origin, how it is switched, whether MC dropout and surgery can drive it) and the
prefix plan of MC dropout on an example input: where the deterministic prefix ends and
its share of the forward cost, counted in floating-point operations
(``torch.utils.flop_counter``; a count, not a timing, so it does not depend on a busy
machine), or why MC would fall back to full passes.
"""

from __future__ import annotations

import ast
import importlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from droplab.config import Config, option
from droplab.engine.config import parse_device
from droplab.errors import InvalidValue, UserError, unknown_name
from droplab.runtime import resolve_device
from droplab.surgery import find_dropout
from droplab.uncertainty import mc_mode
from droplab.uncertainty.plan import plan_for

__all__ = ["InspectConfig", "build", "describe", "run"]


@dataclass
class InspectConfig(Config):
    """Options of ``droplab inspect`` (:func:`run`)."""

    model: str = option("", positional=True, required=True, metavar="MODEL",
                        help="a run folder, tv:NAME, timm:NAME or package.module:factory")
    kwargs: str = option("", metavar="K=V,...",
                         help="constructor arguments, e.g. drop_rate=0.2 (not for run folders)")
    input_size: str = option("", metavar="CxHxW",
                             help="size of one input image (default: the run's or the "
                             "model's own, else 3x224x224)")
    batch: int = option(2, ge=1, help="images in the example batch")
    device: str = option("cpu", parse=parse_device, metavar="DEVICE",
                         help="auto, cpu, cuda[:N] or mps")


def _kwargs(text: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or not key.strip().isidentifier():
            raise InvalidValue(f"--kwargs wants KEY=VALUE pairs separated by commas, got {part!r}")
        try:
            out[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            out[key.strip()] = value.strip()  # a bare word is a string
    return out


#: the largest example input inspect builds (one forward pass of a batch of it)
MAX_CHANNELS, MAX_SIDE = 64, 4096


def _size(text: str) -> tuple[int, ...] | None:
    if not text:
        return None
    try:
        size = tuple(int(v) for v in text.lower().split("x"))
    except ValueError:
        size = ()
    if len(size) != 3 or min(size) < 1:
        raise InvalidValue(f"--input-size wants CxHxW (e.g. 3x224x224), got {text!r}")
    if size[0] > MAX_CHANNELS or max(size[1:]) > MAX_SIDE:
        raise InvalidValue(f"--input-size {text} is larger than inspect runs (at most "
                           f"{MAX_CHANNELS} channels and {MAX_SIDE} px a side)")
    return size


def _call(factory: Any, what: str, kwargs: dict[str, Any]) -> nn.Module:
    try:
        model = factory(**kwargs)
    except TypeError as exc:  # wrong keyword arguments
        raise InvalidValue(f"{what} does not take these arguments ({exc}); check --kwargs") from None
    if not isinstance(model, nn.Module):
        raise InvalidValue(f"{what} returned a {type(model).__name__}, not an nn.Module")
    return model


def build(spec: str, kwargs: dict[str, Any], device: torch.device
          ) -> tuple[nn.Module, tuple[int, ...] | None]:
    """The model named by ``spec`` (module docstring) in eval mode, and its input size if
    it knows one."""
    if spec.startswith("tv:"):
        import torchvision.models as tvm

        name = spec[3:]
        if name not in tvm.list_models(module=tvm):
            raise unknown_name("torchvision classifier", spec,
                               [f"tv:{n}" for n in tvm.list_models(module=tvm)])
        size = kwargs.get("image_size")
        model = _call(lambda **kw: tvm.get_model(name, weights=None, **kw), spec, kwargs)
        return model.to(device).eval(), (3, int(size), int(size)) if size else None
    if spec.startswith("timm:"):
        try:
            import timm  # optional: only timm models need it
        except ImportError:
            raise UserError("timm:NAME needs timm; pip install timm") from None
        name = spec[5:]
        if not timm.list_models(name):
            raise unknown_name("timm model", spec, [f"timm:{n}" for n in timm.list_models()[:20]])
        model = _call(lambda **kw: timm.create_model(name, pretrained=False, **kw), spec, kwargs)
        size = getattr(model, "pretrained_cfg", {}).get("input_size")
        return model.to(device).eval(), tuple(size) if size else None
    path = Path(spec)
    if path.is_dir():
        from droplab.runs.restore import load_run  # restores every run kind: heavy imports

        if kwargs:
            raise InvalidValue("--kwargs is for tv:, timm: and factory models; a run folder "
                               "rebuilds its own model")
        loaded = load_run(path, device)
        return loaded.model.eval(), tuple(loaded.in_shape) or None
    module_name, sep, attr = spec.partition(":")
    if not sep or not attr:
        raise InvalidValue(f"MODEL {spec!r} is not a run folder, tv:NAME, timm:NAME or "
                           "package.module:factory")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise InvalidValue(f"cannot import {module_name!r} ({exc}); is it on PYTHONPATH?") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise InvalidValue(f"{module_name} has no callable {attr!r}")
    return _call(factory, spec, kwargs).to(device).eval(), None


def _flops(fn: Any) -> int | None:
    """FLOPs of ``fn()``; ``None`` when torch's counter cannot follow the model (its module
    tracker asserts on some outputs it cannot attach backward hooks to)."""
    try:
        with FlopCounterMode(display=False) as counter:
            fn()
    except (AssertionError, RuntimeError):
        return None
    return int(counter.get_total_flops())


def describe(model: nn.Module, x: torch.Tensor) -> dict[str, Any]:
    """Sources and prefix plan of ``model`` on the example batch ``x`` (module docstring)."""
    sources = find_dropout(model)
    rows = [{"name": d.name, "kind": d.kind, "p": d.p, "origin": d.origin,
             "mechanism": d.mechanism, "mc": d.mc, "surgery": d.surgery,
             "batch_shared": d.batch_shared, "note": d.note} for d in sources]
    out: dict[str, Any] = {
        "class": type(model).__name__,
        "input": list(x.shape),
        "sources": rows,
        "counts": dict(Counter(d.kind for d in sources)),
        "active": sum(d.mc and d.active for d in sources),
        "refused": sum(not d.mc for d in sources),
    }
    with torch.no_grad(), mc_mode(model) as switched:
        if not switched:
            out["plan"] = {"cached": False, "reason": "no active source: MC dropout refuses "
                           "this model (all passes would be identical)"}
            return out
        plan, why = plan_for(model, x)
        if plan is None:
            out["plan"] = {"cached": False, "reason": f"MC runs full passes: {why}"}
            return out
        cached = plan.run_prefix(x)
        prefix = _flops(lambda: plan.run_prefix(x))
        suffix = _flops(lambda: plan.run_suffix(cached))
    total = prefix + suffix if prefix is not None and suffix is not None else 0
    out["plan"] = {
        "cached": True,
        "first_stochastic": plan.first_stochastic,
        "prefix_ops": plan.n_prefix,
        "suffix_ops": plan.n_suffix,
        "prefix_flops": prefix,
        "suffix_flops": suffix,
        "prefix_share": prefix / total if total else None,  # type: ignore[operator]
        # T cached passes cost prefix + T·suffix; full passes cost T·(prefix + suffix)
        "mc30_cost_in_forwards": (prefix + 30 * suffix) / total  # type: ignore[operator]
        if total else None,
    }
    return out


def run(cfg: InspectConfig) -> dict[str, Any]:
    """``droplab inspect``: build or restore the model and :func:`describe` it."""
    device = resolve_device(cfg.device)
    model, known = build(cfg.model, _kwargs(cfg.kwargs), device)
    size = _size(cfg.input_size) or known or (3, 224, 224)
    x = torch.randn(cfg.batch, *size, device=device, generator=None)
    summary = {"model": cfg.model, **describe(model, x)}
    return summary


def human(summary: dict[str, Any]) -> str:
    """The summary as a table of sources and a paragraph about the plan."""
    rows = summary["sources"]
    lines = [f"{summary['model']} ({summary['class']}): {len(rows)} source(s) of randomness, "
             f"{summary['active']} active, {summary['refused']} refused by MC"]
    if rows:
        width = max(len(r["name"]) for r in rows)
        lines.append(f"  {'name':<{width}}  {'kind':<10} {'p':>6}  {'origin':<11} "
                     f"{'mechanism':<11} mc  surgery")
        for r in rows:
            p = "?" if r["p"] is None else f"{r['p']:.3g}"
            lines.append(f"  {r['name'] or '(root)':<{width}}  {r['kind']:<10} {p:>6}  "
                         f"{r['origin']:<11} {r['mechanism']:<11} "
                         f"{'yes' if r['mc'] else 'no ':<3} {'yes' if r['surgery'] else 'no'}"
                         + (f"  ({r['note']})" if r["note"] and not r["mc"] else ""))
    plan = summary["plan"]
    if plan["cached"] and plan["prefix_share"] is None:
        lines.append(f"prefix plan: the deterministic prefix ({plan['prefix_ops']} ops) ends at "
                     f"{plan['first_stochastic']}; {plan['suffix_ops']} ops are replayed per "
                     "pass (FLOPs not countable for this model)")
    elif plan["cached"]:
        lines.append(
            f"prefix plan: the deterministic prefix ({plan['prefix_ops']} ops, "
            f"{100 * plan['prefix_share']:.1f}% of the forward FLOPs) ends at "
            f"{plan['first_stochastic']}; {plan['suffix_ops']} ops are replayed per pass; "
            f"MC with T=30 costs {plan['mc30_cost_in_forwards']:.2f} forwards")
    else:
        lines.append(f"prefix plan: none ({plan['reason']})")
    return "\n".join(lines)
