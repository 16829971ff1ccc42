"""What counts as a source of training-time randomness: layer types and random functions.

Two registries, both looked up lazily so that torchvision and timm stay optional:

* :func:`leaf_kind` – stochastic *layers* (modules whose own ``training`` flag switches
  their randomness): torch.nn's dropout family and ``nn.MultiheadAttention`` (its
  ``dropout``), every droplab :class:`~droplab.layers.DropoutModule`, torchvision.ops
  ``StochasticDepth`` / ``DropBlock2d`` / ``DropBlock3d``, timm ``DropPath`` /
  ``DropBlock2d`` (when timm has been imported). Each entry says where the rate lives and
  whether one random draw is shared by the whole batch.
* :func:`random_functions` – stochastic *functions* as they appear in a ``torch.fx`` graph:
  ``F.dropout`` and friends, ``F.scaled_dot_product_attention`` (``dropout_p``),
  ``F.multi_head_attention_forward``, torchvision's ``stochastic_depth``, ``drop_block2d``
  and Swin's ``shifted_window_attention``, timm's ``drop_path`` / ``drop_block_2d``,
  droplab's functional ops, and raw generators (``torch.rand``, ``bernoulli`` …). Each
  entry names its rate parameters and its training switch so that a traced call can be
  judged active or not (:func:`call_is_active`).
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from droplab import functional as DF
from droplab.layers import DropoutModule


# --------------------------------------------------------------------------- layers
@dataclass(frozen=True)
class LeafKind:
    """How droplab reads and drives one stochastic layer type."""

    kind: str  # droplab kind name ("dropout", "droppath", "attention", …)
    origin: str  # "torch.nn", "droplab", "torchvision" or "timm"
    rate_attr: str  # attribute holding the drop probability
    replaceable: bool = True  # replace_dropout may swap it for a droplab layer
    batch_shared: Callable[[nn.Module], bool] = field(default=lambda m: False)


_TORCH_KINDS: dict[type[nn.Module], str] = {
    nn.Dropout: "dropout",
    nn.Dropout1d: "spatial",
    nn.Dropout2d: "spatial",
    nn.Dropout3d: "spatial",
    nn.AlphaDropout: "alpha",
    nn.FeatureAlphaDropout: "feature_alpha",
}
#: torch.nn dropout classes and the droplab kind they correspond to (kept for callers)
TORCH_DROPOUT_KINDS = dict(_TORCH_KINDS)


def _droplab_kind(module: nn.Module) -> LeafKind:
    kind = str(getattr(module, "kind", type(module).__name__.lower()))
    owns_layer = isinstance(getattr(module, "weight", None), nn.Parameter) or any(
        True for _ in module.children())
    return LeafKind(
        kind, "droplab", "p", replaceable=not owns_layer,
        batch_shared=lambda m: kind == "dropconnect" or getattr(m, "mode", "row") == "batch",
    )


@functools.cache
def _third_party_kinds() -> tuple[tuple[type[nn.Module], LeafKind], ...]:
    """torchvision.ops and (already imported) timm stochastic layers."""
    out: list[tuple[type[nn.Module], LeafKind]] = [
        (nn.MultiheadAttention, LeafKind("attention", "torch.nn", "dropout", replaceable=False)),
    ]
    try:
        from torchvision import ops
    except ImportError:  # pragma: no cover - torchvision is a dependency
        ops = None
    if ops is not None:
        out += [
            (ops.StochasticDepth, LeafKind("droppath", "torchvision", "p",
                                           batch_shared=lambda m: m.mode == "batch")),
            (ops.DropBlock2d, LeafKind("dropblock", "torchvision", "p")),
            (ops.DropBlock3d, LeafKind("dropblock3d", "torchvision", "p", replaceable=False)),
        ]
    return tuple(out)


@functools.cache
def _timm_kinds() -> tuple[tuple[type[nn.Module], LeafKind], ...]:
    from timm.layers import DropBlock2d, DropPath

    return ((DropPath, LeafKind("droppath", "timm", "drop_prob")),
            (DropBlock2d, LeafKind("dropblock", "timm", "drop_prob")))


def _timm_loaded() -> bool:
    # timm is optional and slow to import: a timm layer can only exist once timm is imported
    return "timm" in sys.modules


def leaf_kind(module: nn.Module) -> LeafKind | None:
    """The :class:`LeafKind` of a stochastic layer, ``None`` for any other module."""
    if isinstance(module, DropoutModule):
        return _droplab_kind(module)
    for cls in type(module).__mro__:
        if cls in _TORCH_KINDS:
            return LeafKind(_TORCH_KINDS[cls], "torch.nn", "p")
    table = _third_party_kinds() + (_timm_kinds() if _timm_loaded() else ())
    for cls, info in table:
        if isinstance(module, cls):
            return info
    return None


def is_dropout(module: nn.Module) -> bool:
    """True for every stochastic layer type of :func:`leaf_kind` (torch.nn, droplab,
    torchvision, timm, ``nn.MultiheadAttention``)."""
    return leaf_kind(module) is not None


def dropout_kind(module: nn.Module) -> str:
    """The droplab kind name of a stochastic layer (``"dropout"``, ``"droppath"``, …)."""
    info = leaf_kind(module)
    return info.kind if info is not None else type(module).__name__.lower()


def get_rate(module: nn.Module, attr: str) -> float | None:
    """Read the (dotted) rate attribute ``attr`` of ``module``; ``None`` if not a number."""
    obj: Any = module
    for part in attr.split("."):
        obj = getattr(obj, part, None)
    return float(obj) if isinstance(obj, int | float) and not isinstance(obj, bool) else None


def set_rate(module: nn.Module, attr: str, p: float) -> None:
    """Write the (dotted) rate attribute ``attr`` of ``module``."""
    *path, last = attr.split(".")
    obj: Any = module
    for part in path:
        obj = getattr(obj, part)
    setattr(obj, last, float(p))


# --------------------------------------------------------------------------- functions
@dataclass(frozen=True)
class RandomFn:
    """A stochastic function: its rate parameters (name → kind), training switch and
    positional parameter names (builtins have no inspectable signature)."""

    rates: tuple[tuple[str, str], ...]
    flag: str | None
    params: tuple[str, ...]
    defaults: tuple[tuple[str, Any], ...] = ()

    @property
    def kind(self) -> str:
        return self.rates[0][1] if self.rates else "noise"


def _fn(params: str, rates: dict[str, str], flag: str | None = None,
        **defaults: Any) -> RandomFn:
    return RandomFn(tuple(rates.items()), flag, tuple(params.split()), tuple(defaults.items()))


_RANDOM_METHODS = frozenset({"bernoulli", "bernoulli_", "uniform_", "normal_", "random_",
                             "exponential_", "geometric_", "cauchy_", "log_normal_"})
_NOISE = RandomFn((), None, ())


@functools.cache
def _base_functions() -> dict[Any, RandomFn]:
    drop = "input p training inplace"
    table: dict[Any, RandomFn] = {
        F.dropout: _fn(drop, {"p": "dropout"}, "training", p=0.5, training=True),
        F.dropout1d: _fn(drop, {"p": "spatial"}, "training", p=0.5, training=True),
        F.dropout2d: _fn(drop, {"p": "spatial"}, "training", p=0.5, training=True),
        F.dropout3d: _fn(drop, {"p": "spatial"}, "training", p=0.5, training=True),
        F.alpha_dropout: _fn(drop, {"p": "alpha"}, "training", p=0.5, training=False),
        F.feature_alpha_dropout: _fn(drop, {"p": "feature_alpha"}, "training", p=0.5,
                                     training=False),
        torch.dropout: _fn("input p train", {"p": "dropout"}, "train"),
        torch.feature_dropout: _fn("input p train", {"p": "spatial"}, "train"),
        torch.alpha_dropout: _fn("input p train", {"p": "alpha"}, "train"),
        torch.feature_alpha_dropout: _fn("input p train", {"p": "feature_alpha"}, "train"),
        F.scaled_dot_product_attention: _fn(
            "query key value attn_mask dropout_p is_causal scale enable_gqa",
            {"dropout_p": "attention"}, None, dropout_p=0.0),
        F.multi_head_attention_forward: _fn(
            "query key value embed_dim_to_check num_heads in_proj_weight in_proj_bias bias_k "
            "bias_v add_zero_attn dropout_p out_proj_weight out_proj_bias training",
            {"dropout_p": "attention"}, "training", training=True),
    }
    for name in ("rand", "rand_like", "randn", "randn_like", "randint", "randint_like",
                 "randperm", "normal", "poisson", "multinomial", "bernoulli"):
        table[getattr(torch, name)] = _NOISE
    kinds = {"dropout": "dropout", "spatial_dropout": "spatial", "gaussian_dropout": "gaussian",
             "alpha_dropout": "alpha", "drop_connect": "dropconnect", "drop_block": "dropblock",
             "drop_path": "droppath", "concrete_dropout": "concrete"}
    for name, kind in kinds.items():
        table[getattr(DF, name)] = _fn("x p training", {"p": kind}, "training", training=True)
    try:
        from torchvision.models.swin_transformer import shifted_window_attention
        from torchvision.ops import drop_block2d, drop_block3d, stochastic_depth
    except ImportError:  # pragma: no cover - torchvision is a dependency
        return table
    table[stochastic_depth] = _fn("input p mode training", {"p": "droppath"}, "training",
                                  training=True)
    for fn in (drop_block2d, drop_block3d):
        table[fn] = _fn("input p block_size inplace eps training", {"p": "dropblock"},
                        "training", training=True)
    table[shifted_window_attention] = _fn(
        "input qkv_weight proj_weight relative_position_bias window_size num_heads shift_size "
        "attention_dropout dropout qkv_bias proj_bias logit_scale training",
        {"attention_dropout": "attention", "dropout": "dropout"}, "training",
        attention_dropout=0.0, dropout=0.0, training=True)
    return table


@functools.cache
def _timm_functions() -> dict[Any, RandomFn]:
    from timm.layers import drop

    return {
        drop.drop_path: _fn("x drop_prob training scale_by_keep", {"drop_prob": "droppath"},
                            "training", drop_prob=0.0, training=False),
        drop.drop_block_2d: _fn("x drop_prob", {"drop_prob": "dropblock"}, None, drop_prob=0.1),
    }


def random_functions() -> dict[Any, RandomFn]:
    """Stochastic functions droplab recognises in a traced graph (see the module docstring)."""
    table = dict(_base_functions())
    if _timm_loaded():
        table.update(_timm_functions())
    return table


def random_call(node: fx.Node) -> RandomFn | None:
    """The :class:`RandomFn` of a ``call_function`` / ``call_method`` node, else ``None``."""
    if node.op == "call_function":
        try:
            return random_functions().get(node.target)
        except TypeError:  # unhashable target
            return None
    if node.op == "call_method" and node.target in _RANDOM_METHODS:
        return _NOISE
    return None


def bound_args(spec: RandomFn, node: fx.Node) -> dict[str, Any]:
    """The node's arguments by parameter name, defaults filled in from ``spec``."""
    out = dict(spec.defaults)
    out.update(zip(spec.params, node.args, strict=False))
    out.update(node.kwargs)
    return out


def call_is_active(spec: RandomFn, node: fx.Node) -> bool:
    """False when the call is switched off by constants (``training=False`` or every rate
    0); True otherwise, including when a switch or rate is computed at run time."""
    args = bound_args(spec, node)
    if spec.flag is not None and args.get(spec.flag, True) is False:
        return False
    if spec.rates:
        values = [args.get(name, None) for name, _ in spec.rates]
        if all(isinstance(v, int | float) and not isinstance(v, bool) and v == 0
               for v in values):
            return False
    return True


__all__ = [
    "TORCH_DROPOUT_KINDS", "LeafKind", "RandomFn", "bound_args", "call_is_active",
    "dropout_kind", "get_rate", "is_dropout", "leaf_kind", "random_call", "random_functions",
    "set_rate",
]
