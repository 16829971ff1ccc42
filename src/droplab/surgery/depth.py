"""Stochastic depth on residual branches: :func:`add_stochastic_depth`.

Stochastic depth (Huang et al., ECCV 2016) drops a residual block's *branch*, never its
identity path: ``y = x + b_l · f(x) / (1 - p_l)`` with ``b_l ~ Bernoulli(1 - p_l)``, and the
linear depth rule ``p_l = p · l / L`` for block ``l`` of ``L`` (the paper's
``p_l = 1 - (l/L)(1 - p_L)`` written for drop rates). Eval outputs are unchanged.

Supported, in the order the model's blocks run:

* torchvision ConvNeXt, EfficientNet (V1/V2), Swin (V1/V2) and MaxViT blocks already own a
  ``StochasticDepth`` layer on their branch: its rate is set by the rule;
* torchvision ResNet ``BasicBlock`` / ``Bottleneck`` get a droplab ``DropPath`` after the
  branch's last BatchNorm (``bn2`` / ``bn3``, through the parameter-keeping dropout slot of
  :func:`droplab.surgery.add_dropout`), RegNet ``ResBottleneckBlock`` after its branch
  ``f``, MobileNet inverted residuals with a skip connection after their ``block``, ViT
  ``EncoderBlock`` after the attention branch's dropout and after the MLP branch;
* anything else that already has drop-path layers (timm models built with
  ``drop_path_rate``, droplab's resnet18-cifar) has them rescaled so the deepest is ``p``,
  keeping the model's own depth rule. A timm model built without ``drop_path_rate`` has no
  drop-path layers to drive: build it with ``timm.create_model(name, drop_path_rate=p)``.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from droplab.errors import InvalidValue, check_rate, unknown_name
from droplab.layers import DropPath
from droplab.surgery.edit import add_dropout
from droplab.surgery.kinds import get_rate, leaf_kind, set_rate

RULES = ("linear", "uniform")


def _tv_blocks() -> dict[type[nn.Module], Callable[[nn.Module], list[tuple[nn.Module, str]]]]:
    """torchvision residual block type → the (module, slot) places of its branch ends."""
    from torchvision.models import mobilenetv2, mobilenetv3, regnet, resnet, vision_transformer

    def after(attr: str) -> Callable[[nn.Module], list[tuple[nn.Module, str]]]:
        return lambda block: [(block, attr)]

    return {
        resnet.BasicBlock: after("bn2"),
        resnet.Bottleneck: after("bn3"),
        regnet.ResBottleneckBlock: after("f"),
        mobilenetv2.InvertedResidual: lambda b: [(b, "conv")] if b.use_res_connect else [],
        mobilenetv3.InvertedResidual: lambda b: [(b, "block")] if b.use_res_connect else [],
        vision_transformer.EncoderBlock: lambda b: [(b, "dropout"), (b, "mlp")],
    }


def _is_droppath(module: nn.Module) -> bool:
    lk = leaf_kind(module)
    return lk is not None and lk.kind == "droppath"


def _existing(branch_end: nn.Module) -> nn.Module | None:
    """A drop-path layer already placed right after a branch end, if any."""
    slot = getattr(branch_end, "post_dropout", None)
    if slot is not None and _is_droppath(slot):
        return slot
    if isinstance(branch_end, nn.Sequential) and len(branch_end) and _is_droppath(branch_end[-1]):
        return branch_end[-1]
    return None


def _rates(p: float, n: int, rule: str) -> list[float]:
    return [p * (i + 1) / n if rule == "linear" else p for i in range(n)]


def add_stochastic_depth(model: nn.Module, p: float, rule: str = "linear",
                         mode: str = "row") -> list[str]:
    """Drop residual branches of ``model`` with rate ``p`` at the deepest block, in place.

    ``rule="linear"``: block ``l`` of ``L`` gets ``p · l / L`` (Huang et al. 2016);
    ``"uniform"``: every block gets ``p``. ``mode`` is droplab ``DropPath``'s (``"row"``:
    per sample; ``"batch"``: one draw per batch) for layers it inserts. Returns the names of
    the drop-path layers now driving the branches. See the module docstring for the
    supported architectures; anything else is a one-line error.
    """
    p = check_rate(p, "drop-path rate")
    if rule not in RULES:
        raise unknown_name("stochastic-depth rule", rule, RULES)
    blocks = _tv_blocks()
    plan: list[list[tuple[nn.Module, str, str]]] = []  # per block: (owner, attr, name)
    names = {id(m): n for n, m in model.named_modules()}
    for name, module in model.named_modules():
        sd = getattr(module, "stochastic_depth", None)
        if sd is not None and _is_droppath(sd):
            plan.append([(module, "stochastic_depth", name)])
            continue
        for cls, places in blocks.items():
            if type(module) is cls:
                plan.append([(owner, attr, names[id(owner)]) for owner, attr in places(module)])
    plan = [b for b in plan if b]
    if plan:
        out = []
        for rate, block in zip(_rates(p, len(plan), rule), plan, strict=True):
            for owner, attr, owner_name in block:
                out.append(_drive(owner, attr, owner_name, rate, mode, DropPath))
        return out
    existing = [(n, m) for n, m in model.named_modules() if _is_droppath(m)]
    if not existing:
        raise InvalidValue(
            f"{type(model).__name__} has no residual blocks droplab knows (torchvision "
            "ResNet, RegNet, MobileNet, EfficientNet, ConvNeXt, Swin, MaxViT, ViT) and no "
            "drop-path layers; for timm pass drop_path_rate=P to timm.create_model"
        )
    old = [get_rate(m, leaf_kind(m).rate_attr) or 0.0 for _, m in existing]  # type: ignore[union-attr]
    top = max(old)
    new = ([p * r / top for r in old] if top > 0 and rule == "linear"
           else _rates(p, len(existing), rule))
    for (_, m), rate in zip(existing, new, strict=True):
        set_rate(m, leaf_kind(m).rate_attr, rate)  # type: ignore[union-attr]
    return [n for n, _ in existing]


def _drive(owner: nn.Module, attr: str, owner_name: str, rate: float, mode: str,
           drop_path: type[nn.Module]) -> str:
    """Set or insert the drop-path layer at ``owner.attr``; return its dotted name."""
    prefix = f"{owner_name}.{attr}" if owner_name else attr
    target = getattr(owner, attr)
    if attr == "stochastic_depth":
        set_rate(target, leaf_kind(target).rate_attr, rate)  # type: ignore[union-attr]
        return prefix
    layer = _existing(target)
    if layer is None and _is_droppath(target):
        layer = target
    if layer is not None:
        set_rate(layer, leaf_kind(layer).rate_attr, rate)  # type: ignore[union-attr]
        return next(f"{prefix}.{n}" if n else prefix
                    for n, m in target.named_modules() if m is layer)
    if leaf_kind(target) is not None:  # a parameter-free dropout layer: pair it
        setattr(owner, attr, nn.Sequential(target, drop_path(rate, mode)))
        return f"{prefix}.1"
    add_dropout(owner, after=attr, kind="droppath", p=rate, mode=mode)
    if isinstance(target, nn.Sequential):
        return f"{prefix}.{len(target) - 1}"
    return f"{prefix}.post_dropout"


__all__ = ["RULES", "add_stochastic_depth"]
