"""Pure dropout functions: ``f(x, p, training=True, ..., generator=None) -> Tensor``.

Conventions shared by every function here:

* ``p`` is a *drop* probability in ``[0, 1)`` (validated with
  :func:`droplab.errors.check_rate`); papers that speak of keep probabilities use
  ``1 - p``.
* Training-time outputs are rescaled so that the expected activation is unchanged
  ("inverted" dropout); with ``training=False`` or ``p == 0`` the input is returned as is.
* Randomness comes from the optional ``generator``, which must live on the input's
  device. Element-wise keep masks (:func:`dropout`, :func:`alpha_dropout`, 1×1 DropBlock)
  are drawn by :func:`droplab.masks.keep_mask`: on CPU from random bytes plus a sparse
  correction (exact, an eighth of the random bits of ``torch.rand``), elsewhere by
  thresholding ``torch.rand`` in float32 (float64 for float64 inputs); DropBlock masks
  by :func:`droplab.masks.draw_block_seeds` (seeds drawn as positions; per-channel masks
  are applied in index form, :class:`droplab.masks.BlockPlan`); the other kinds
  threshold ``torch.rand``. Masks are cast to the input dtype, so float16/bfloat16
  inputs work.
* Everything is differentiable with respect to ``x`` (and, for
  :func:`concrete_dropout`, with respect to a tensor ``p``).
* **torch.fx.** Every function dispatches ``__torch_function__`` first, as
  ``torch.nn.functional`` does, so ``torch.fx.symbolic_trace`` (and torchvision's
  ``create_feature_extractor``) records each call as one ``call_function`` node, however it
  is referenced (``DF.dropout(x)`` or a bare ``dropout(x)``): the effect of
  ``torch.fx.wrap``, for attribute calls too. droplab's MC dropout recognises these nodes
  as stochastic.
* **Replicas.** The two kinds whose mask is shared by a whole batch (DropConnect's weight
  mask, :func:`drop_path` with ``mode="batch"``) take ``replicas=k``: the batch holds ``k``
  stacked copies (MC dropout runs several passes in one batch) and each copy gets its own
  mask, as if the ``k`` passes had run one by one.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import handle_torch_function, has_torch_function

from droplab import masks
from droplab.errors import InvalidValue, check_rate, unknown_name

__all__ = [
    "alpha_dropout",
    "concrete_dropout",
    "drop_block",
    "drop_connect",
    "drop_path",
    "dropout",
    "gaussian_dropout",
    "spatial_dropout",
]

#: SELU constants (Klambauer et al. 2017): alpha' = -lambda * alpha.
_SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_SCALE = 1.0507009873554804934193349852946
_ALPHA_PRIME = -_SELU_SCALE * _SELU_ALPHA


# --------------------------------------------------------------------------- helpers
def _noise_dtype(x: Tensor) -> torch.dtype:
    """Dtype in which random numbers are drawn: float64 for float64 inputs, else float32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _check_generator(generator: torch.Generator | None, x: Tensor) -> None:
    if generator is not None and generator.device.type != x.device.type:
        raise InvalidValue(
            f"generator is on {generator.device} but the input is on {x.device}; "
            f"create it with torch.Generator(device={str(x.device.type)!r})"
        )


def _rand(shape: tuple[int, ...] | torch.Size, x: Tensor, generator: torch.Generator | None,
          dtype: torch.dtype | None = None) -> Tensor:
    return torch.rand(shape, generator=generator, device=x.device, dtype=dtype or _noise_dtype(x))


def _check_replicas(x: Tensor, replicas: int) -> int:
    k = int(replicas)
    if k < 1 or x.shape[0] % k:
        raise InvalidValue(
            f"replicas={replicas} must be a positive divisor of the batch size {x.shape[0]}"
        )
    return k


def _active(x: Tensor, p: float, training: bool, generator: torch.Generator | None) -> bool:
    """Validate ``p`` and ``generator``; True when the function must do something."""
    p = check_rate(p)
    if not training or p == 0.0:
        return False
    _check_generator(generator, x)
    return True


# --------------------------------------------------------------------------- element-wise
def dropout(x: Tensor, p: float = 0.5, training: bool = True, *,
            generator: torch.Generator | None = None) -> Tensor:
    """Element-wise (inverted) dropout (Srivastava et al., JMLR 2014).

    ``y = x * m / (1 - p)`` with ``m ~ Bernoulli(1 - p)`` i.i.d. per element, so
    ``E[y] = x`` and ``Var[y] = x² p / (1 - p)``.
    """
    if has_torch_function((x,)):
        return handle_torch_function(dropout, (x,), x, p, training, generator=generator)
    if not _active(x, p, training, generator):
        return x
    keep = masks.keep_mask(x.shape, p, dtype=x.dtype, device=x.device, generator=generator)
    return x * keep.mul_(1.0 / (1.0 - p))


def spatial_dropout(x: Tensor, p: float = 0.5, training: bool = True, *,
                    generator: torch.Generator | None = None) -> Tensor:
    """Channel-wise dropout, "SpatialDropout" (Tompson et al., CVPR 2015).

    Whole feature maps are zeroed: ``y[n, c] = x[n, c] * m[n, c] / (1 - p)`` with
    ``m[n, c] ~ Bernoulli(1 - p)``. Works for (N, C, L), (N, C, H, W) and (N, C, D, H, W)
    inputs (1d/2d/3d by rank).
    """
    if has_torch_function((x,)):
        return handle_torch_function(spatial_dropout, (x,), x, p, training, generator=generator)
    if x.dim() not in (3, 4, 5):
        raise InvalidValue(
            f"spatial_dropout expects an (N, C, L), (N, C, H, W) or (N, C, D, H, W) input, "
            f"got shape {tuple(x.shape)}; use dropout for other shapes"
        )
    if not _active(x, p, training, generator):
        return x
    shape = (x.shape[0], x.shape[1]) + (1,) * (x.dim() - 2)
    keep = _rand(shape, x, generator) >= p
    return x * keep.to(x.dtype).mul_(1.0 / (1.0 - p))


def gaussian_dropout(x: Tensor, p: float = 0.5, training: bool = True, *,
                     generator: torch.Generator | None = None) -> Tensor:
    """Multiplicative Gaussian noise matching dropout's variance (Srivastava et al. 2014, §10).

    ``y = x * e`` with ``e ~ N(1, σ²)``, ``σ² = p / (1 - p)`` (Keras ``GaussianDropout``
    semantics), so ``E[y] = x`` and ``Var[y] = x² p / (1 - p)``, the same as
    :func:`dropout` at rate ``p``.
    """
    if has_torch_function((x,)):
        return handle_torch_function(gaussian_dropout, (x,), x, p, training, generator=generator)
    if not _active(x, p, training, generator):
        return x
    std = math.sqrt(p / (1.0 - p))
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=_noise_dtype(x))
    return x * noise.mul_(std).add_(1.0).to(x.dtype)


def alpha_dropout(x: Tensor, p: float = 0.5, training: bool = True, *,
                  generator: torch.Generator | None = None) -> Tensor:
    """Alpha dropout for self-normalising (SELU) networks (Klambauer et al., NeurIPS 2017).

    Dropped units are set to SELU's negative saturation ``α' = -λα ≈ -1.7581`` and the
    result is transformed affinely, ``y = a (x m + α' (1 - m)) + b`` with
    ``m ~ Bernoulli(q)``, ``q = 1 - p``, ``a = (q + α'² q (1 - q))^(-1/2)`` and
    ``b = -a α' (1 - q)``, which keeps mean 0 and variance 1 for standardised inputs.
    """
    if has_torch_function((x,)):
        return handle_torch_function(alpha_dropout, (x,), x, p, training, generator=generator)
    if not _active(x, p, training, generator):
        return x
    q = 1.0 - p
    a = (q + _ALPHA_PRIME**2 * q * p) ** -0.5
    b = -a * _ALPHA_PRIME * p
    keep = masks.keep_mask(x.shape, p, dtype=x.dtype, device=x.device, generator=generator)
    # a * (x*m + α'(1-m)) + b  ==  x * (a m) + (a α' (1 - m) + b)
    return x * (keep * a) + (keep * (-a * _ALPHA_PRIME) + (a * _ALPHA_PRIME + b))


# --------------------------------------------------------------------------- weights
def drop_connect(x: Tensor, p: float = 0.5, training: bool = True, *, weight: Tensor,
                 bias: Tensor | None = None, stride: int | tuple[int, int] = 1,
                 padding: int | tuple[int, int] | str = 0, dilation: int | tuple[int, int] = 1,
                 groups: int = 1, generator: torch.Generator | None = None,
                 replicas: int = 1) -> Tensor:
    """DropConnect (Wan et al., ICML 2013): dropout on the *weights* of a linear/conv layer.

    ``y = x W̃ᵀ + b`` (``F.linear`` for a 2-d ``weight``) or ``y = conv2d(x, W̃) + b`` (a 4-d
    ``weight``) with ``W̃ = W * M / (1 - p)``, ``M ~ Bernoulli(1 - p)`` element-wise. One
    mask is drawn per call and shared by every sample of the batch; each call (each
    forward or MC pass) draws a fresh one. The bias is not masked. At evaluation the mean
    weight ``W`` is used (inverted scaling instead of the paper's moment-matching inference).
    With ``replicas=k`` the batch is ``k`` stacked copies and each gets its own mask.
    """
    relevant = (x, weight) if bias is None else (x, weight, bias)
    if has_torch_function(relevant):
        return handle_torch_function(
            drop_connect, relevant, x, p, training, weight=weight, bias=bias, stride=stride,
            padding=padding, dilation=dilation, groups=groups, generator=generator,
            replicas=replicas)
    if weight.dim() not in (2, 4):
        raise InvalidValue(
            f"drop_connect needs a 2-d (linear) or 4-d (conv2d) weight, got shape "
            f"{tuple(weight.shape)}"
        )

    def apply(inputs: Tensor) -> Tensor:
        w = dropout(weight, p, training, generator=generator)
        if weight.dim() == 2:
            return F.linear(inputs, w, bias)
        return F.conv2d(inputs, w, bias, stride, padding, dilation, groups)

    k = _check_replicas(x, replicas)
    if k == 1 or not training or check_rate(p) == 0.0:
        return apply(x)
    return torch.cat([apply(part) for part in x.chunk(k)], dim=0)


# --------------------------------------------------------------------------- structured
class _BlockDrop(torch.autograd.Function):
    """``x ↦ x · m`` for a per-channel DropBlock mask ``m`` that is never written.

    Forward and backward are the same linear, self-adjoint map
    (:meth:`droplab.masks.BlockPlan.apply`: scale each sample, zero the blocks by index),
    so backward keeps only the plan (block corners), not a full-size mask, and its
    gradient has the forward output's layout; a backward with ``create_graph=True`` goes
    through this Function again, so double backward works.
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: Tensor,
                plan: masks.BlockPlan) -> Tensor:
        ctx.plan = plan  # type: ignore[attr-defined]  # index tensors, not inputs/outputs
        return plan.apply(x)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx,
                 grad: Tensor) -> tuple[Tensor, None]:
        plan: masks.BlockPlan = ctx.plan  # type: ignore[attr-defined]
        if torch.is_grad_enabled():  # create_graph: keep the backward differentiable
            return _BlockDrop.apply(grad, plan), None
        return plan.apply(grad), None


def drop_block(x: Tensor, p: float = 0.1, training: bool = True, *, block_size: int = 7,
               shared_channels: bool = False,
               generator: torch.Generator | None = None) -> Tensor:
    """DropBlock (Ghiasi, Lin & Le, NeurIPS 2018) with an exact drop rate.

    Contiguous ``b × b`` regions of an (N, C, H, W) feature map are zeroed. Block seeds are
    drawn i.i.d. with rate γ on the valid region ``(H-b+1) × (W-b+1)`` only (every block
    lies inside the map), each seed zeroes the ``b × b`` block below/right of it, and γ is
    solved so that the expected fraction of dropped activations equals ``p`` exactly (see
    :func:`droplab.masks.seed_rate`; the paper's closed-form γ ignores block overlap and over- or
    under-drops). ``b`` is clamped to the map size. Masks are per channel, or one per
    sample with ``shared_channels=True``. Each sample is rescaled by the inverse of its
    kept fraction, ``y_n = x_n * m_n * |m_n| / Σ m_n`` (a sample whose mask drops
    everything becomes 0).
    """
    if has_torch_function((x,)):
        return handle_torch_function(drop_block, (x,), x, p, training, block_size=block_size,
                                     shared_channels=shared_channels, generator=generator)
    if x.dim() != 4:
        raise InvalidValue(
            f"drop_block expects an (N, C, H, W) input, got shape {tuple(x.shape)}"
        )
    if int(block_size) < 1:
        raise InvalidValue(f"block_size must be a positive integer, got {block_size!r}")
    if not _active(x, p, training, generator):
        return x
    _, _, h, w = x.shape
    bh, bw = min(int(block_size), h), min(int(block_size), w)
    gamma = masks.seed_rate(h, w, bh, bw, float(p))
    if shared_channels or bh * bw == 1:  # a small (N, 1, H, W) or element-wise mask
        keep = masks.block_keep_mask(x, gamma, bh, bw, shared_channels=shared_channels,
                                     generator=generator)
        return x * keep.to(x.dtype)
    seeds = masks.draw_block_seeds(x, gamma, bh, bw, shared_channels=False, generator=generator)
    plan = masks.BlockPlan(seeds, masks.BlockPlan.dense_strides(x))
    if torch.is_grad_enabled() and x.requires_grad:
        return _BlockDrop.apply(x, plan)
    return plan.apply(x)


def drop_path(x: Tensor, p: float = 0.1, training: bool = True, *, mode: str = "row",
              generator: torch.Generator | None = None, replicas: int = 1) -> Tensor:
    """Stochastic depth (Huang et al., ECCV 2016) for the residual branch ``x``.

    ``mode="row"``: each sample's branch is dropped independently,
    ``y[n] = x[n] * m[n] / (1 - p)``, ``m[n] ~ Bernoulli(1 - p)`` (as in timm and
    torchvision). ``mode="batch"``: one draw for the whole batch, as in the paper (one per
    copy with ``replicas=k``). Use it on the residual branch:
    ``out = shortcut + drop_path(branch(x), p)``.
    """
    if has_torch_function((x,)):
        return handle_torch_function(drop_path, (x,), x, p, training, mode=mode,
                                     generator=generator, replicas=replicas)
    if mode not in ("row", "batch"):
        raise unknown_name("drop-path mode", mode, ("row", "batch"))
    k = _check_replicas(x, replicas)
    if not _active(x, p, training, generator):
        return x
    if mode == "row":
        shape = (x.shape[0],) + (1,) * (x.dim() - 1)
        keep = _rand(shape, x, generator) >= p
        return x * keep.to(x.dtype).mul_(1.0 / (1.0 - p))
    keep = (_rand((k,) + (1,) * x.dim(), x, generator) >= p).to(x.dtype).mul_(1.0 / (1.0 - p))
    return (x.reshape(k, -1, *x.shape[1:]) * keep).reshape(x.shape)


def concrete_dropout(x: Tensor, p: float | Tensor = 0.1, training: bool = True, *,
                     temperature: float = 0.1, generator: torch.Generator | None = None,
                     eps: float = 1e-7) -> Tensor:
    """Concrete (relaxed Bernoulli) dropout (Gal, Hron & Kendall, NeurIPS 2017).

    ``z = σ((log(p+ε) - log(1-p+ε) + log(u+ε) - log(1-u+ε)) / t)`` with ``u ~ U(0, 1)``
    is a continuous relaxation of the drop indicator at temperature ``t``;
    ``y = x (1 - z) / (1 - p)``. ``p`` may be a tensor requiring grad (the learned rate
    of :class:`droplab.layers.ConcreteDropout`); gradients flow into it.
    """
    relevant = (x, p) if isinstance(p, Tensor) else (x,)
    if has_torch_function(relevant):
        return handle_torch_function(concrete_dropout, relevant, x, p, training,
                                     temperature=temperature, generator=generator, eps=eps)
    if not training:
        return x
    if isinstance(p, Tensor):
        p_t = p.to(device=x.device, dtype=_noise_dtype(x))
    else:
        p_t = torch.tensor(check_rate(p), device=x.device, dtype=_noise_dtype(x))
    if not temperature > 0:
        raise InvalidValue(f"temperature must be > 0, got {temperature!r}")
    _check_generator(generator, x)
    u = _rand(x.shape, x, generator)
    # noise logit log(u+ε) - log(1-u+ε), computed in place (it needs no gradient)
    noise = torch.div(u + eps, u.neg_().add_(1.0 + eps)).log_()
    p_logit = torch.log(p_t + eps) - torch.log(1.0 - p_t + eps)
    # 1 - σ(a) = σ(-a): the kept weight is σ(-(p_logit + noise) / t)
    keep = torch.sigmoid(noise.mul_(-1.0 / temperature) - p_logit / temperature)
    return x * (keep / (1.0 - p_t)).to(x.dtype)
