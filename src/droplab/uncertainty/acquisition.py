"""Acquisition functions for pool-based active learning with MC dropout.

All functions take pool probabilities ``mc_probs`` of shape ``(T, N, K)`` (T MC passes,
N pool images, K classes) and return one score per image, higher = more worth labelling,
or (for the batch-aware ones) the chosen indices directly. Scores follow Gal, Islam &
Ghahramani (ICML 2017, §3):

* ``bald`` – mutual information ``H[E_t p_t] − E_t H[p_t]`` (Houlsby et al. 2011);
* ``max-entropy`` – predictive entropy ``H[E_t p_t]`` (Shannon 1948);
* ``variation-ratios`` – ``1 − f_mode / T`` of the T predicted classes (Freeman 1965);
* ``mean-std`` – ``(1/K) Σ_k sqrt(E_t[p_tk²] − E_t[p_tk]²)`` (Kampffmeyer et al. 2016);
* ``random`` – uniform scores (the baseline);
* ``power-bald`` – a *stochastic* batch: sample ``k`` images without replacement with
  probability ∝ ``BALD^β`` (Kirsch, Farquhar et al., TMLR 2023, "Stochastic Batch
  Acquisition"), through the Gumbel-top-k trick (Kool et al. 2019);
* ``batch-bald`` – greedy BatchBALD (Kirsch, van Amersfoort & Gal, NeurIPS 2019): the
  batch maximising the *joint* mutual information
  ``I(y_1..y_b; ω) = H(y_1..y_b) − Σ_i E_ω H(y_i | ω)``, which does not pick near-copies.

BatchBALD needs the passes to be the *same* ``T`` draws of the weights ``ω`` for every
pool image (``p_t`` of image ``i`` and image ``j`` come from one network sample), which
plain MC dropout does not give: score the pool with
:func:`droplab.uncertainty.pool.pool_mc_probs`. Its joint entropy is computed exactly while
the batch has at most ``max_configs`` label configurations (``K^n``), and estimated from
``samples`` configurations drawn from the joint after that (the estimator of Kirsch et al.
§3.2, importance-weighted by ``p(ŷ)``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from droplab.errors import InvalidValue, unknown_name
from droplab.uncertainty.metrics import (
    check_probs,
    mutual_information,
    predictive_entropy,
    variation_ratio,
)

_EPS = 1e-30


def _mc(mc_probs: Tensor) -> Tensor:
    if not isinstance(mc_probs, Tensor) or mc_probs.dim() != 3:
        shape = tuple(mc_probs.shape) if isinstance(mc_probs, Tensor) else type(mc_probs).__name__
        raise InvalidValue(f"acquisition needs pool MC probabilities (T, N, K), got {shape}")
    if mc_probs.shape[1] == 0:
        raise InvalidValue("the pool is empty: nothing left to acquire")
    return check_probs(mc_probs, "pool MC probabilities")


def bald(mc_probs: Tensor) -> Tensor:
    """BALD score per pool image (nats, ≥ 0)."""
    return mutual_information(_mc(mc_probs))


def max_entropy(mc_probs: Tensor) -> Tensor:
    """Predictive entropy per pool image (nats)."""
    return predictive_entropy(_mc(mc_probs))


def variation_ratios(mc_probs: Tensor) -> Tensor:
    """Variation ratio per pool image: the share of passes not voting for the mode."""
    return variation_ratio(_mc(mc_probs))


def mean_std(mc_probs: Tensor) -> Tensor:
    """Mean over classes of the standard deviation of ``p_tk`` over passes."""
    p = _mc(mc_probs)
    var = (p.pow(2).mean(0) - p.mean(0).pow(2)).clamp_min(0.0)
    return var.sqrt().mean(-1)


def _gumbel_top_k(log_weights: Tensor, k: int, generator: torch.Generator | None) -> Tensor:
    """``k`` indices drawn without replacement with probability ∝ ``exp(log_weights)``."""
    u = torch.rand(log_weights.shape, generator=generator, dtype=torch.float64)
    gumbel = -torch.log(-torch.log(u.clamp(1e-300, 1.0 - 1e-16)))
    return torch.topk(log_weights.cpu() + gumbel, k).indices


def power_sample(scores: Tensor, k: int, beta: float = 1.0,
                 generator: torch.Generator | None = None) -> Tensor:
    """``k`` distinct indices sampled with probability ∝ ``scores^β`` (sequentially,
    without replacement); zero scores are drawn only after every positive one."""
    s = scores.detach().double().flatten().cpu().clamp_min(0.0)
    if not beta > 0:
        raise InvalidValue(f"power acquisition needs β > 0, got {beta}")
    return _gumbel_top_k(float(beta) * torch.log(s.clamp_min(_EPS)), k, generator)


# ----------------------------------------------------------------------------- BatchBALD


def _conditional_entropy(p: Tensor) -> Tensor:
    """``E_t H[p_t]`` per image, ``p``: (T, N, K) float64."""
    return -(p * torch.log(p.clamp_min(_EPS))).sum(-1).mean(0)


def _joint_with(joint: Tensor, p: Tensor, sampled: bool, chunk: int) -> Tensor:
    """Joint entropy ``H(ŷ, y_j)`` for every candidate ``j``.

    ``joint``: (S, T) — ``Π_i p(ŷ_s,i | ω_t)`` for S configurations ŷ of the chosen images
    (all of them, or with ``sampled`` S samples drawn from ``p(ŷ)``); ``p``: (T, N, K).
    """
    s_, t_ = joint.shape
    _, n, k = p.shape
    out = torch.empty(n, dtype=torch.float64)
    chunk = max(1, min(chunk, 2**23 // max(1, s_ * k)))  # ≤ 64 MiB of float64 per block
    flat = p.permute(1, 0, 2)  # (N, T, K)
    p_hat = joint.mean(1)  # p(ŷ_s), (S,)
    for start in range(0, n, chunk):
        block = flat[start:start + chunk]  # (B, T, K)
        q = torch.einsum("st,btk->bsk", joint, block) / t_  # p(ŷ_s, y_j = c)
        plogq = q * torch.log(q.clamp_min(_EPS))
        if not sampled:
            out[start:start + chunk] = -plogq.sum((1, 2))
        else:  # E_{ŷ ~ p(ŷ)} [ −Σ_c p(ŷ, c) / p(ŷ) · log p(ŷ, c) ]
            out[start:start + chunk] = -(plogq.sum(2) / p_hat.clamp_min(_EPS)).mean(1)
    return out


def _sample_configs(p_chosen: Tensor, samples: int,
                    generator: torch.Generator | None) -> Tensor:
    """``Π_i p(ŷ_m,i | ω_t)`` (samples, T) for configurations ŷ_m drawn from the joint
    ``p(ŷ) = E_t Π_i p(ŷ_i | ω_t)``: a pass ``t`` uniformly, then each label from it."""
    t_, b, k = p_chosen.shape
    passes = torch.randint(0, t_, (samples,), generator=generator)
    probs = p_chosen[passes]  # (M, b, K)
    labels = torch.multinomial(probs.reshape(-1, k).float(), 1, generator=generator)
    labels = labels.view(samples, b)  # (M, b)
    # p(ŷ_m,i | ω_t) for every pass t: (T, M, b)
    picked = p_chosen.unsqueeze(1).expand(t_, samples, b, k).gather(
        3, labels.view(1, samples, b, 1).expand(t_, samples, b, 1)).squeeze(3)
    return picked.clamp_min(_EPS).log().sum(2).exp().t()  # (M, T)


@dataclass(frozen=True)
class BatchChoice:
    """What :func:`batch_bald` chose: ``indices`` in order and the joint mutual information
    ``I(y_1..y_n; ω)`` of the first ``n`` of them (``scores[n-1]``, nats)."""

    indices: Tensor
    scores: Tensor
    exact: int  # how many of the steps computed the joint entropy exactly


def batch_bald(mc_probs: Tensor, k: int, *, max_configs: int = 4096, samples: int = 4096,
               generator: torch.Generator | None = None, chunk: int = 256) -> BatchChoice:
    """Greedy BatchBALD (Kirsch et al. 2019, Algorithm 1) choosing ``k`` pool images.

    Step ``n`` adds the image ``j`` maximising ``H(ŷ_{1:n-1}, y_j) − E_t H(y_j | ω_t)``,
    the increase of the joint mutual information (the chosen images' own conditional
    entropies are a constant of the step). ``mc_probs`` must hold consistent passes (see
    the module docstring). Exact while ``K^n ≤ max_configs``, then estimated from
    ``samples`` joint configurations drawn with ``generator``.
    """
    p = _mc(mc_probs)
    t_, n, c = p.shape
    k = _check_k(k, n)
    cond = _conditional_entropy(p)
    chosen: list[int] = []
    scores: list[float] = []
    joint = torch.ones(1, t_, dtype=torch.float64)  # the empty batch: one configuration
    exact_steps = 0
    exact = True
    for _ in range(k):
        exact = exact and joint.shape[0] * c <= max_configs
        if exact:
            h = _joint_with(joint, p, False, chunk)
        else:
            configs = _sample_configs(p[:, chosen], samples, generator)
            h = _joint_with(configs, p, True, chunk)
        gain = h - cond
        if chosen:
            gain[torch.tensor(chosen)] = -math.inf
        j = int(torch.argmax(gain))
        scores.append(float(h[j] - cond[[*chosen, j]].sum()))
        chosen.append(j)
        exact_steps += int(exact)
        if exact:  # extend the enumerated configurations by y_j
            joint = (joint.unsqueeze(1) * p[:, j].t().unsqueeze(0)).reshape(-1, t_)
    return BatchChoice(torch.tensor(chosen, dtype=torch.long),
                       torch.tensor(scores, dtype=torch.float64), exact_steps)


def joint_mutual_information(mc_probs: Tensor, indices: list[int] | Tensor) -> float:
    """``I(y_1..y_b; ω)`` of the images ``indices`` by direct enumeration of all ``K^b``
    label configurations (the definition BatchBALD approximates; for small batches)."""
    p = _mc(mc_probs)
    idx = [int(i) for i in indices]
    t_, _, c = p.shape
    if c ** len(idx) > 2**22:
        raise InvalidValue(f"{c}^{len(idx)} configurations are too many to enumerate")
    joint = torch.ones(1, t_, dtype=torch.float64)
    for i in idx:
        joint = (joint.unsqueeze(1) * p[:, i].t().unsqueeze(0)).reshape(-1, t_)
    q = joint.mean(1)
    h = float(-(q * torch.log(q.clamp_min(_EPS))).sum())
    return h - float(_conditional_entropy(p[:, idx]).sum())


# ----------------------------------------------------------------------------- registry


def _check_k(k: int, n: int) -> int:
    if n == 0:
        raise InvalidValue("the pool is empty: nothing left to acquire")
    if int(k) < 1:
        raise InvalidValue(f"acquisition size must be ≥ 1, got {k}")
    if int(k) > n:
        raise InvalidValue(f"cannot acquire {k} images from a pool of {n}; lower --step or "
                           "use a larger pool")
    return int(k)


_SCORES: dict[str, Callable[[Tensor], Tensor]] = {
    "bald": bald,
    "max-entropy": max_entropy,
    "variation-ratios": variation_ratios,
    "mean-std": mean_std,
}
#: every acquisition function ``droplab active --acquisition`` accepts
ACQUISITIONS = ("bald", "batch-bald", "power-bald", "max-entropy", "variation-ratios",
                "mean-std", "random")


def needs_mc(name: str) -> bool:
    """Whether ``name`` scores MC-dropout passes (everything but ``random``)."""
    return name != "random"


@dataclass(frozen=True)
class Acquired:
    """Chosen pool positions (in acquisition order) and the score of each."""

    indices: Tensor
    scores: Tensor


def acquire(name: str, mc_probs: Tensor | None, k: int, *, pool_size: int | None = None,
            generator: torch.Generator | None = None, beta: float = 1.0,
            max_configs: int = 4096, samples: int = 4096) -> Acquired:
    """Choose ``k`` pool images with acquisition function ``name`` (:data:`ACQUISITIONS`).

    ``mc_probs`` ``(T, N, K)`` is needed by everything but ``random``, which takes
    ``pool_size`` instead. Top-k functions break ties by the lower index.
    """
    if name not in ACQUISITIONS:
        raise unknown_name("acquisition function", name, ACQUISITIONS)
    if name == "random":
        n = int(pool_size) if pool_size is not None else (
            mc_probs.shape[1] if mc_probs is not None else 0)
        k = _check_k(k, n)
        idx = torch.randperm(n, generator=generator)[:k]
        return Acquired(idx, torch.zeros(k, dtype=torch.float64))
    if mc_probs is None:
        raise InvalidValue(f"acquisition {name!r} needs MC probabilities of the pool")
    n = mc_probs.shape[1] if isinstance(mc_probs, Tensor) and mc_probs.dim() == 3 else 0
    if n == 0:
        _mc(mc_probs)  # the one error for wrong shapes and an empty pool
    k = _check_k(k, n)
    if name == "batch-bald":
        choice = batch_bald(mc_probs, k, max_configs=max_configs, samples=samples,
                            generator=generator)
        return Acquired(choice.indices, choice.scores)
    if name == "power-bald":
        s = bald(mc_probs).double()
        idx = power_sample(s, k, beta, generator)
        return Acquired(idx, s[idx])
    s = _SCORES[name](mc_probs).double().cpu()
    # stable descending order: equal scores keep pool order
    idx = torch.sort(-s, stable=True).indices[:k]
    return Acquired(idx, s[idx])


__all__ = ["ACQUISITIONS", "Acquired", "BatchChoice", "acquire", "bald", "batch_bald",
           "joint_mutual_information", "max_entropy", "mean_std", "needs_mc", "power_sample",
           "variation_ratios"]
