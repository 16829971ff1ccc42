"""Temperature scaling (Guo et al., ICML 2017), for deterministic and MC-dropout outputs.

One scalar ``T > 0`` divides the logits before the softmax, ``softmax(z / T)``; it is
fitted by minimising the negative log-likelihood on held-out (validation) images and
never changes the predicted class. For MC dropout every pass is scaled by the same ``T``
and the fitted objective is the NLL of the *averaged* probabilities,
``−log (1/T_mc) Σ_t softmax(z_t / T)_y``, so "MC + temperature" is calibrated as what is
finally reported.

Logits can be recovered from probabilities: ``log p`` differs from the logits by a
per-row constant, which a softmax ignores, so :func:`logits_from_probs` makes every
function here usable on the probabilities :func:`~droplab.uncertainty.mc_predict`
returns (probabilities are floored at 1e-30 first).

The fit is exact rather than iterative-with-a-learning-rate: the deterministic NLL is
convex in ``1/T``; a log-spaced grid over ``T ∈ [0.05, 20]`` finds the best bracket and
Brent's method (``scipy.optimize.minimize_scalar``) refines ``log T`` to 1e-7.
torch-uncertainty's ``TemperatureScaler`` (L-BFGS on ``1/T``) reaches the same optimum;
the tests compare both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from droplab.errors import InvalidValue

#: temperatures searched (a fit on the boundary is reported, not extrapolated)
T_MIN, T_MAX = 0.05, 20.0
_FLOOR = 1e-30


def logits_from_probs(probs: Tensor) -> Tensor:
    """``log p`` (float64, floored at 1e-30): logits up to a per-row constant."""
    if not isinstance(probs, Tensor) or not probs.is_floating_point():
        raise InvalidValue("probabilities must be a floating-point tensor")
    return probs.detach().double().clamp_min(_FLOOR).log()


def _check(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    if not isinstance(logits, Tensor) or logits.dim() not in (2, 3):
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise InvalidValue(f"expected logits (N, K) or MC logits (T, N, K), got {shape}")
    if not logits.is_floating_point():
        raise InvalidValue(f"logits must be floating point, got {logits.dtype}")
    z = logits.detach().double()
    if z.shape[-1] < 2 or z.shape[-2] < 1:
        raise InvalidValue(f"temperature scaling needs ≥ 1 image and ≥ 2 classes, got "
                           f"{tuple(z.shape)}")
    if not torch.isfinite(z).all():
        raise InvalidValue("logits contain NaN or inf; check the model's outputs")
    if not isinstance(labels, Tensor) or labels.dim() != 1 or labels.numel() != z.shape[-2]:
        raise InvalidValue(f"expected {z.shape[-2]} labels, got "
                           f"{tuple(labels.shape) if isinstance(labels, Tensor) else labels!r}")
    y = labels.long().to(z.device)
    if int(y.min()) < 0 or int(y.max()) >= z.shape[-1]:
        raise InvalidValue(f"labels must be class indices in [0, {z.shape[-1] - 1}]")
    return z, y


def _nll(z: Tensor, y: Tensor, temperature: float) -> float:
    """NLL of softmax(z / T); MC logits (T, N, K) average the probabilities first."""
    logp = F.log_softmax(z / temperature, dim=-1)
    if z.dim() == 3:  # log of the mean of the passes' probabilities
        logp = torch.logsumexp(logp, dim=0) - math.log(z.shape[0])
    return float(-logp.gather(1, y.unsqueeze(1)).mean())


@dataclass(frozen=True)
class Temperature:
    """A fitted temperature; ``apply`` turns logits into calibrated probabilities."""

    temperature: float
    nll_before: float  # validation NLL at T = 1
    nll_after: float  # validation NLL at the fitted T
    images: int  # validation images it was fitted on
    mc_samples: int = 0  # 0: fitted on deterministic logits; else MC passes per image

    def apply(self, logits: Tensor) -> Tensor:
        """``softmax(logits / T)`` over the last dim; MC logits ``(T, N, K)`` give
        ``(T, N, K)`` per-pass probabilities (average them for the MC prediction)."""
        if not isinstance(logits, Tensor) or not logits.is_floating_point():
            raise InvalidValue("logits must be a floating-point tensor")
        return F.softmax(logits.float() / self.temperature, dim=-1)

    def apply_to_probs(self, probs: Tensor) -> Tensor:
        """The same scaling for probabilities (through :func:`logits_from_probs`)."""
        return F.softmax(logits_from_probs(probs) / self.temperature, dim=-1).to(probs.dtype)

    def to_dict(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "nll_before": self.nll_before,
                "nll_after": self.nll_after, "images": self.images,
                "mc_samples": self.mc_samples}

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> Temperature:
        """Read a stored record; a missing or non-positive temperature is an error."""
        try:
            t = float(record["temperature"])
        except (KeyError, TypeError, ValueError):
            raise InvalidValue("temperature record has no numeric 'temperature'") from None
        if not (math.isfinite(t) and t > 0):
            raise InvalidValue(f"stored temperature {t} is not a positive number")
        return cls(t, float(record.get("nll_before", math.nan)),
                   float(record.get("nll_after", math.nan)), int(record.get("images", 0)),
                   int(record.get("mc_samples", 0)))


def fit_temperature(logits: Tensor, labels: Tensor) -> Temperature:
    """Fit ``T`` minimising the NLL of ``softmax(logits / T)`` on these (validation) images.

    ``logits``: ``(N, K)`` deterministic logits or ``(T, N, K)`` per-pass MC logits (the
    NLL of the averaged probabilities is minimised). Use :func:`logits_from_probs` for
    probabilities. ``T`` is searched in ``[0.05, 20]``.
    """
    # scipy comes with scikit-learn; only fitting pays for its import
    from scipy.optimize import minimize_scalar

    z, y = _check(logits, labels)
    grid = torch.logspace(math.log10(T_MIN), math.log10(T_MAX), 61, dtype=torch.float64)
    values = [_nll(z, y, float(t)) for t in grid]
    best = min(range(len(values)), key=values.__getitem__)
    lo = math.log(float(grid[max(best - 1, 0)]))
    hi = math.log(float(grid[min(best + 1, len(grid) - 1)]))
    res = minimize_scalar(lambda u: _nll(z, y, math.exp(u)), bounds=(lo, hi),
                          method="bounded", options={"xatol": 1e-7})
    t = math.exp(float(res.x))
    if _nll(z, y, t) > values[best]:  # Brent never does worse than the grid
        t = float(grid[best])
    return Temperature(t, _nll(z, y, 1.0), _nll(z, y, t), int(y.numel()),
                       int(z.shape[0]) if z.dim() == 3 else 0)


__all__ = ["T_MAX", "T_MIN", "Temperature", "fit_temperature", "logits_from_probs"]
