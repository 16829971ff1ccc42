"""``nn.Module`` wrappers around :mod:`droplab.functional`.

Every droplab dropout module subclasses :class:`DropoutModule`: the rate ``p`` is a
validated, settable attribute, the module is the identity in eval mode, and
``extra_repr`` shows its settings.

The modules are ``torch.fx``-friendly: tracing through one records a single call of its
:mod:`droplab.functional` op, and droplab's own tracer keeps them as leaf modules. The
kinds whose mask is shared by a batch (DropConnect, ``DropPath(mode="batch")``) have a
``replicas`` attribute (default 1) that MC dropout sets while it runs several passes in
one batch, so that each pass still gets its own mask.
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from droplab import functional as DF
from droplab.errors import InvalidValue, check_rate, unknown_name

__all__ = [
    "KINDS",
    "AlphaDropout",
    "ConcreteDropout",
    "DropBlock2d",
    "DropConnectConv2d",
    "DropConnectLinear",
    "DropPath",
    "Dropout",
    "DropoutModule",
    "GaussianDropout",
    "SpatialDropout",
    "concrete_regularization",
    "make_dropout",
]


class DropoutModule(nn.Module):
    """Base class of droplab's dropout layers.

    Subclasses implement :meth:`forward` with ``self.p``, ``self.training`` and
    ``self.generator``. Setting ``module.p`` validates the new value (schedules and
    :mod:`droplab.surgery` rely on this).
    """

    #: short kind name used by surgery, the CLI and reports (e.g. ``"dropout"``)
    kind: str = "dropout"

    def __init__(self, p: float = 0.5, *, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.p = p
        self.generator = generator

    @property
    def p(self) -> float:
        return self._p

    @p.setter
    def p(self, value: float) -> None:
        self._p = check_rate(value, f"{type(self).__name__}.p")

    def extra_repr(self) -> str:
        return f"p={self.p:g}"


def _p_first(p: float) -> str:
    return f"p={p:g}"


class Dropout(DropoutModule):
    """Element-wise inverted dropout (Srivastava et al. 2014); see :func:`droplab.functional.dropout`.

    ``y = x * m / (1 - p)``, ``m ~ Bernoulli(1 - p)`` per element.
    """

    kind = "dropout"

    def forward(self, x: Tensor) -> Tensor:
        return DF.dropout(x, self.p, self.training, generator=self.generator)


class SpatialDropout(DropoutModule):
    """Channel dropout (Tompson et al. 2015); see :func:`droplab.functional.spatial_dropout`.

    Zeroes whole channels of (N, C, L), (N, C, H, W) or (N, C, D, H, W) inputs:
    ``y[n, c] = x[n, c] * m[n, c] / (1 - p)``.
    """

    kind = "spatial"

    def forward(self, x: Tensor) -> Tensor:
        return DF.spatial_dropout(x, self.p, self.training, generator=self.generator)


class GaussianDropout(DropoutModule):
    """Multiplicative Gaussian noise ``y = x * e``, ``e ~ N(1, p / (1 - p))``.

    Srivastava et al. 2014 (§10); Keras ``GaussianDropout`` semantics. Same mean and
    variance as dropout at rate ``p``.
    """

    kind = "gaussian"

    def forward(self, x: Tensor) -> Tensor:
        return DF.gaussian_dropout(x, self.p, self.training, generator=self.generator)


class AlphaDropout(DropoutModule):
    """Alpha dropout for SELU networks (Klambauer et al. 2017).

    Dropped units go to ``α' = -λα`` and ``y = a (x m + α'(1 - m)) + b`` restores mean 0 and
    variance 1 (see :func:`droplab.functional.alpha_dropout`).
    """

    kind = "alpha"

    def forward(self, x: Tensor) -> Tensor:
        return DF.alpha_dropout(x, self.p, self.training, generator=self.generator)


class DropBlock2d(DropoutModule):
    """DropBlock (Ghiasi et al. 2018) with an exact drop rate.

    Zeroes ``block_size × block_size`` regions of (N, C, H, W) maps; the seed rate γ is
    solved so the expected dropped fraction equals ``p`` for every map size (blocks are
    clamped to the map). ``shared_channels=True`` uses one mask per sample (all channels),
    otherwise one per channel. Each sample is rescaled by the inverse of its kept
    fraction. See :func:`droplab.functional.drop_block`.
    """

    kind = "dropblock"

    def __init__(self, p: float = 0.1, block_size: int = 7, *, shared_channels: bool = False,
                 generator: torch.Generator | None = None) -> None:
        super().__init__(p, generator=generator)
        if int(block_size) != block_size or block_size < 1:
            raise InvalidValue(f"block_size must be a positive integer, got {block_size!r}")
        self.block_size = int(block_size)
        self.shared_channels = bool(shared_channels)

    def forward(self, x: Tensor) -> Tensor:
        return DF.drop_block(x, self.p, self.training, block_size=self.block_size,
                             shared_channels=self.shared_channels, generator=self.generator)

    def extra_repr(self) -> str:
        return (f"{_p_first(self.p)}, block_size={self.block_size}, "
                f"shared_channels={self.shared_channels}")


class DropPath(DropoutModule):
    """Stochastic depth (Huang et al. 2016) for a residual branch.

    ``mode="row"`` drops each sample's branch independently, ``mode="batch"`` the whole
    batch at once; kept branches are scaled by ``1 / (1 - p)``. Use as
    ``shortcut + drop_path(branch(x))``.
    """

    kind = "droppath"
    #: copies stacked in the batch (set by MC dropout); one batch-mode draw per copy
    replicas: int = 1

    def __init__(self, p: float = 0.1, mode: str = "row", *,
                 generator: torch.Generator | None = None) -> None:
        super().__init__(p, generator=generator)
        if mode not in ("row", "batch"):
            raise unknown_name("drop-path mode", mode, ("row", "batch"))
        self.mode = mode

    def forward(self, x: Tensor) -> Tensor:
        return DF.drop_path(x, self.p, self.training, mode=self.mode, generator=self.generator,
                            replicas=self.replicas)

    def extra_repr(self) -> str:
        return f"{_p_first(self.p)}, mode={self.mode!r}"


# --------------------------------------------------------------------------- DropConnect
class DropConnectLinear(DropoutModule):
    """``nn.Linear`` with DropConnect on its weights (Wan et al., ICML 2013).

    ``y = x (W * M / (1 - p))ᵀ + b``, ``M ~ Bernoulli(1 - p)`` element-wise; one fresh mask
    per forward (shared by the samples of a batch, new for every MC pass); the bias is not
    masked; eval mode uses ``W``. Parameters are named ``weight``/``bias`` like
    ``nn.Linear``, so state dicts are interchangeable. Wrap an existing layer (sharing its
    parameters) with :meth:`from_module`.
    """

    kind = "dropconnect"
    #: copies stacked in the batch (set by MC dropout); one weight mask per copy
    replicas: int = 1

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 p: float = 0.5, generator: torch.Generator | None = None,
                 device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__(p, generator=generator)
        self._adopt(nn.Linear(in_features, out_features, bias, device=device, dtype=dtype))

    def _adopt(self, layer: nn.Linear) -> None:
        self.in_features = layer.in_features
        self.out_features = layer.out_features
        self.weight = layer.weight
        self.register_parameter("bias", layer.bias)

    @classmethod
    def from_module(cls, layer: nn.Module, p: float = 0.5, *,
                    generator: torch.Generator | None = None) -> DropConnectLinear:
        """Wrap ``layer`` (an ``nn.Linear``), sharing its weight and bias tensors."""
        if not isinstance(layer, nn.Linear):
            raise InvalidValue(
                f"DropConnectLinear.from_module needs an nn.Linear, got {type(layer).__name__}; "
                "use DropConnectConv2d.from_module for nn.Conv2d"
            )
        self = cls.__new__(cls)
        DropoutModule.__init__(self, p, generator=generator)
        self._adopt(layer)
        return self

    def forward(self, x: Tensor) -> Tensor:
        return DF.drop_connect(x, self.p, self.training, weight=self.weight, bias=self.bias,
                               generator=self.generator, replicas=self.replicas)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, {_p_first(self.p)}")


class DropConnectConv2d(DropoutModule):
    """``nn.Conv2d`` with DropConnect on its weights (Wan et al., ICML 2013).

    ``y = conv2d(x, W * M / (1 - p)) + b`` with one fresh element-wise mask ``M`` per
    forward; keeps stride, padding (and padding_mode), dilation, groups and the bias (or
    its absence) of the convolution. Parameters are named like ``nn.Conv2d``'s. Wrap an
    existing layer (sharing its parameters) with :meth:`from_module`.
    """

    kind = "dropconnect"
    #: copies stacked in the batch (set by MC dropout); one weight mask per copy
    replicas: int = 1

    def __init__(self, in_channels: int, out_channels: int,
                 kernel_size: int | tuple[int, int], stride: int | tuple[int, int] = 1,
                 padding: int | tuple[int, int] | str = 0, dilation: int | tuple[int, int] = 1,
                 groups: int = 1, bias: bool = True, padding_mode: str = "zeros", *,
                 p: float = 0.5, generator: torch.Generator | None = None,
                 device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__(p, generator=generator)
        self._adopt(nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding,
                              dilation, groups, bias, padding_mode, device=device, dtype=dtype))

    def _adopt(self, layer: nn.Conv2d) -> None:
        for name in ("in_channels", "out_channels", "kernel_size", "stride", "padding",
                     "dilation", "groups", "padding_mode", "_reversed_padding_repeated_twice"):
            setattr(self, name, getattr(layer, name))
        self.weight = layer.weight
        self.register_parameter("bias", layer.bias)

    @classmethod
    def from_module(cls, layer: nn.Module, p: float = 0.5, *,
                    generator: torch.Generator | None = None) -> DropConnectConv2d:
        """Wrap ``layer`` (an ``nn.Conv2d``), sharing its weight and bias tensors."""
        if not isinstance(layer, nn.Conv2d):
            raise InvalidValue(
                f"DropConnectConv2d.from_module needs an nn.Conv2d, got {type(layer).__name__}; "
                "use DropConnectLinear.from_module for nn.Linear"
            )
        self = cls.__new__(cls)
        DropoutModule.__init__(self, p, generator=generator)
        self._adopt(layer)
        return self

    def forward(self, x: Tensor) -> Tensor:
        padding = self.padding
        if self.padding_mode != "zeros":
            x = F.pad(x, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            padding = 0
        return DF.drop_connect(x, self.p, self.training, weight=self.weight, bias=self.bias,
                               stride=self.stride, padding=padding, dilation=self.dilation,
                               groups=self.groups, generator=self.generator,
                               replicas=self.replicas)

    def extra_repr(self) -> str:
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
             f"stride={self.stride}")
        if self.padding != (0, 0):
            s += f", padding={self.padding}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        if self.padding_mode != "zeros":
            s += f", padding_mode={self.padding_mode!r}"
        return f"{s}, {_p_first(self.p)}"


# --------------------------------------------------------------------------- Concrete
class ConcreteDropout(DropoutModule):
    """Concrete dropout with a learned rate (Gal, Hron & Kendall, NeurIPS 2017).

    The rate is ``p = sigmoid(p_logit)`` with ``p_logit`` an ``nn.Parameter``; the mask is
    the relaxed Bernoulli of :func:`droplab.functional.concrete_dropout` (temperature
    ``t``, default 0.1), so ``p`` receives gradients. Reading ``.p`` gives a float, setting
    it writes the logit (``p = 0`` is stored as 1e-6: the logit must stay finite).

    With ``layer`` given, the module computes ``layer(dropout(x))`` and its
    :meth:`regularization` is, as in Gal's reference code,

    ``weight_regularizer * Σ‖θ‖² / (1 - p) + dropout_regularizer * D * (p log p + (1-p) log(1-p))``

    where θ are the layer's parameters (weight and bias) and ``D`` the number of input
    features per sample (seen at the last training forward; before that
    ``layer.in_features`` when it exists, else the dropout term is 0). Without a layer
    only the dropout term is used. Add :func:`concrete_regularization` of the model to
    the loss; Gal suggests ``weight_regularizer = l²/N`` and ``dropout_regularizer = 2/N``
    (N = training set size, l = prior length-scale).
    """

    kind = "concrete"

    def __init__(self, p: float = 0.1, layer: nn.Module | None = None, *,
                 temperature: float = 0.1, weight_regularizer: float = 1e-6,
                 dropout_regularizer: float = 1e-5, input_dim: int | None = None,
                 generator: torch.Generator | None = None) -> None:
        super().__init__(p, generator=generator)
        if not temperature > 0:
            raise InvalidValue(f"temperature must be > 0, got {temperature!r}")
        self.layer = layer
        self.temperature = float(temperature)
        self.weight_regularizer = float(weight_regularizer)
        self.dropout_regularizer = float(dropout_regularizer)
        if input_dim is None and layer is not None:
            input_dim = getattr(layer, "in_features", None)
        self.input_dim = input_dim

    @property
    def p(self) -> float:
        return float(torch.sigmoid(self.p_logit.detach()))

    @p.setter
    def p(self, value: float) -> None:
        value = max(check_rate(value, f"{type(self).__name__}.p"), 1e-6)
        logit = math.log(value) - math.log1p(-value)
        if "p_logit" in self._parameters:
            with torch.no_grad():
                self.p_logit.fill_(logit)
        else:
            self.p_logit = nn.Parameter(torch.tensor(logit))

    def p_tensor(self) -> Tensor:
        """The rate as a differentiable scalar tensor, ``sigmoid(p_logit)``."""
        return torch.sigmoid(self.p_logit)

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            if isinstance(x, Tensor):  # not while torch.fx traces (x is then a Proxy)
                self.input_dim = x[0].numel()
            x = DF.concrete_dropout(x, self.p_tensor(), True, temperature=self.temperature,
                                    generator=self.generator)
        return x if self.layer is None else self.layer(x)

    def regularization(self) -> Tensor:
        """Gal's regulariser for this module (a scalar tensor, differentiable in p)."""
        p = self.p_tensor()
        reg = p * torch.log(p) + (1.0 - p) * torch.log(1.0 - p)
        reg = reg * (self.dropout_regularizer * float(self.input_dim or 0))
        if self.layer is not None:
            squares = [param.pow(2).sum() for param in self.layer.parameters()]
            if squares:
                reg = reg + self.weight_regularizer * torch.stack(squares).sum() / (1.0 - p)
        return reg

    def extra_repr(self) -> str:
        return f"p={self.p:.4g} (learned), temperature={self.temperature:g}"


def concrete_regularization(model: nn.Module) -> Tensor:
    """Sum of :meth:`ConcreteDropout.regularization` over ``model`` (0 if it has none).

    Add it to the training loss: ``loss = nll + concrete_regularization(model)``.
    """
    terms = [m.regularization() for m in model.modules() if isinstance(m, ConcreteDropout)]
    if terms:
        return torch.stack([t.to(terms[0].device) for t in terms]).sum()
    device = next((q.device for q in model.parameters()), torch.device("cpu"))
    return torch.zeros((), device=device)


# --------------------------------------------------------------------------- registry
#: Kind name → class. ``"dropconnect"`` maps to :class:`DropConnectLinear`: DropConnect
#: replaces a layer rather than sitting between layers, so building one needs the layer's
#: shape (``make_dropout("dropconnect", p, in_features=…, out_features=…)``); wrap existing
#: layers with ``DropConnectLinear.from_module`` / ``DropConnectConv2d.from_module``.
KINDS: dict[str, type[DropoutModule]] = {
    "dropout": Dropout,
    "spatial": SpatialDropout,
    "gaussian": GaussianDropout,
    "alpha": AlphaDropout,
    "dropblock": DropBlock2d,
    "droppath": DropPath,
    "concrete": ConcreteDropout,
    "dropconnect": DropConnectLinear,
}


def make_dropout(kind: str, p: float, **kw: Any) -> DropoutModule:
    """Build the dropout module of ``kind`` (a key of :data:`KINDS`) with rate ``p``.

    Extra keyword arguments go to the class (e.g. ``block_size`` for ``"dropblock"``).
    """
    cls = KINDS.get(kind)
    if cls is None:
        raise unknown_name("dropout kind", kind, KINDS)
    accepted = inspect.signature(cls.__init__).parameters
    bad = sorted(set(kw) - set(accepted))
    if bad:
        options = ", ".join(n for n in accepted if n not in ("self", "p")) or "none"
        raise InvalidValue(
            f"dropout kind {kind!r} has no option(s) {', '.join(bad)}; its options: {options}"
        )
    missing = [n for n, q in accepted.items()
               if n not in ("self", "p") and q.default is q.empty
               and q.kind is not q.VAR_KEYWORD and n not in kw]
    if missing:
        raise InvalidValue(
            f"dropout kind {kind!r} needs {', '.join(missing)}"
            + ("; to wrap an existing layer use DropConnectLinear/DropConnectConv2d"
               ".from_module(layer, p)" if kind == "dropconnect" else "")
        )
    return cls(p=p, **kw)
