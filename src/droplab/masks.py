"""Random dropout masks, drawn the cheapest way that stays exact.

The dropout functions of :mod:`droplab.functional` spend most of their CPU time drawing
random numbers and writing masks, not multiplying. Measured on a 2-core CPU
(``benchmarks/layers.py``; per element of a 64×128×28×28 float32 tensor, one thread):
``bernoulli_`` ≈ 20–25 ns, ``torch.rand`` ≈ 10 ns, 64-bit ``random_`` ≈ 1.2 ns per *byte*
of random bits, a dense float pass ≈ 0.3–0.6 ns, and any index-driven write
(``index_fill_``, ``index_put_``, ``put_``) ≈ 5 ns per element written. Hence:

* :func:`keep_mask` (element-wise dropout) thresholds one random *byte* per entry and
  corrects the rounding of ``p`` to 1/256 with a sparse second draw, so each entry is
  still an exact Bernoulli(1 - p) (:func:`bernoulli_positions` draws the sparse part).
* :func:`block_keep_mask` (DropBlock) draws only the block seeds, as positions, zeroes
  each block with one indexed write per block *row* (not per element), and counts the
  kept elements with a float32 sum (exact below 2^24 per sample; a sum that converts
  dtypes is 10–20× slower on CPU).

Everything takes the caller's ``torch.Generator``, so masks are reproducible.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

__all__ = ["bernoulli_positions", "block_keep_mask", "keep_mask", "seed_rate"]

#: below this many elements the dense ``rand >= p`` draw is cheaper than the byte path
BYTE_PATH_MIN = 16_384
#: the byte path's sparse correction rate stays below 1/16 up to this p (k = 240)
BYTE_PATH_MAX_P = 240 / 256


def _uniform_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def keep_mask(shape: tuple[int, ...] | torch.Size, p: float, *, dtype: torch.dtype,
              device: torch.device, generator: torch.Generator | None = None) -> Tensor:
    """A 0/1 tensor of ``dtype``, each entry 1 with probability ``1 - p``, i.i.d.

    The probability is exact (not rounded to a grid). On CPU the draw has two independent
    parts:

    * a uniform random byte ``B`` per entry (eight per 64-bit draw of the generator's
      Mersenne Twister: ``random_`` over the full int64 range); the entry is dropped if
      ``B < k``, ``k = ⌊256 p⌋``, i.e. with probability ``k / 256 ≤ p``;
    * a sparse correction: each entry is also dropped, independently, with probability
      ``q = (p - k/256) / (1 - k/256)`` (``q < 1/(256 - k)``, below 1/128 for
      ``p < 1/2``), the positions drawn as geometric gaps (:func:`bernoulli_positions`,
      about ``q n`` random numbers).

    An entry survives both with probability ``(1 - k/256)(1 - q) = 1 - p``. The byte
    threshold uses an eighth of the random bits of ``torch.rand(...) >= p``. On other
    devices (CUDA's Philox draws are cheap), for small tensors and for ``p > 15/16`` the
    mask is ``torch.rand(...) >= p`` in float32 (float64 for float64 masks).
    """
    n = math.prod(shape)
    if device.type != "cpu" or n < BYTE_PATH_MIN or p > BYTE_PATH_MAX_P:
        u = torch.rand(shape, generator=generator, device=device, dtype=_uniform_dtype(dtype))
        return (u >= p).to(dtype)
    k = int(p * 256.0)  # exact: p * 256 only shifts the exponent
    words = torch.empty((n + 7) // 8, dtype=torch.int64, device=device)
    words.random_(-(2**63), None, generator=generator)  # all 64 bits uniform
    keep = torch.empty(shape, dtype=dtype, device=device)
    torch.ge(words.view(torch.uint8)[:n].view(shape), k, out=keep)
    q = (p - k / 256.0) / (1.0 - k / 256.0)
    if q > 0.0:
        keep.view(-1).index_fill_(0, bernoulli_positions(n, q, device, generator), 0.0)
    return keep


def bernoulli_positions(total: int, prob: float, device: torch.device,
                        generator: torch.Generator | None = None) -> Tensor:
    """Sorted int64 indices of the successes among ``total`` i.i.d. Bernoulli(prob) trials.

    The gaps between successes are drawn directly as geometric variables
    (``G = ⌊log V / log(1 - prob)⌋ + 1``, ``V ~ U(0, 1]``), which needs about
    ``total * prob`` random numbers instead of ``total``; the result has exactly the same
    distribution as thresholding ``total`` uniforms. ``0 < prob < 1``.
    """
    log_q = math.log1p(-prob)
    parts: list[Tensor] = []
    start = 0  # index of the next trial not yet decided
    while start < total:
        mean = (total - start) * prob
        k = int(mean + 8.0 * math.sqrt(mean) + 16)
        u = torch.rand(k, generator=generator, device=device, dtype=torch.float64)
        gaps = torch.floor(torch.log1p(-u) / log_q).to(torch.int64).add_(1)
        pos = torch.cumsum(gaps, 0).add_(start - 1)
        last = int(pos[-1])
        if last >= total:
            parts.append(pos[pos < total])
            break
        parts.append(pos)
        start = last + 1
    return torch.cat(parts) if len(parts) > 1 else parts[0]


# --------------------------------------------------------------------------- DropBlock
def _valid_counts(size: int, block: int) -> list[int]:
    """How many valid seed positions (``0 <= s <= size - block``) have a block covering i."""
    last = size - block
    return [min(i, last) - max(0, i - block + 1) + 1 for i in range(size)]


@functools.lru_cache(maxsize=512)
def seed_rate(h: int, w: int, bh: int, bw: int, p: float) -> float:
    """Exact DropBlock seed rate γ for an ``h × w`` map and a ``bh × bw`` block.

    Seeds are drawn only where a whole block fits, i.e. on the ``(h-bh+1) × (w-bw+1)``
    valid region. Position (i, j) is covered by ``n(i, j) = r(i) c(j)`` seed positions, so
    it is dropped with probability ``1 - (1 - γ)^n(i, j)``. We solve
    ``mean_ij [1 - (1 - γ)^n(i, j)] = p`` for γ by bisection (the left side increases
    monotonically from 0 at γ = 0 to 1 at γ = 1).
    """
    rows = torch.tensor(_valid_counts(h, bh), dtype=torch.float64)
    cols = torch.tensor(_valid_counts(w, bw), dtype=torch.float64)
    counts, weights = torch.unique(torch.outer(rows, cols), return_counts=True)
    weights = weights.to(torch.float64) / (h * w)
    lo, hi = 0.0, 1.0
    for _ in range(64):
        mid = 0.5 * (lo + hi)
        dropped = float((weights * (1.0 - torch.pow(1.0 - mid, counts))).sum())
        if dropped < p:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def _layout(shape: tuple[int, int, int, int], like: Tensor) -> tuple[int, int, int, int]:
    """Strides for a mask of ``shape``: channels-last when ``like`` is (and has C > 1)."""
    _, c, h, w = shape
    if (c > 1 and like.dim() == 4 and not like.is_contiguous()
            and like.is_contiguous(memory_format=torch.channels_last)):
        return (h * w * c, 1, w * c, c)
    return (c * h * w, h * w, w, 1)


def _fill_rows(flat: Tensor, starts: Tensor, width: int) -> bool:
    """Zero ``flat[s : s + width]`` for every ``s`` in ``starts``; False if torch refuses.

    One indexed write per row through an overlapping ``(len - width + 1, width)`` view
    (1.3–1.6× faster than one index per element, measured). Should a torch version refuse
    writes through overlapping views, the caller falls back to per-element indices.
    """
    try:
        flat.as_strided((flat.numel() - width + 1, width), (1, 1)).index_fill_(0, starts, 0.0)
    except RuntimeError:  # pragma: no cover - torch 2.14 accepts it
        return False
    return True


def block_keep_mask(x: Tensor, gamma: float, bh: int, bw: int, *, shared_channels: bool,
                    generator: torch.Generator | None = None) -> Tensor:
    """DropBlock's scaled keep mask for ``x`` (N, C, H, W): ``m_n * |m_n| / Σ m_n``.

    Seeds are i.i.d. Bernoulli(γ) on the valid region ``(H-bh+1) × (W-bw+1)`` of every
    map (one map per channel, or one per sample with ``shared_channels``), drawn as
    positions; each seed zeroes the ``bh × bw`` block below/right of it. Each sample's
    mask is then scaled by the inverse of its kept fraction (0 when nothing is kept).
    The mask has shape (N, C or 1, H, W) and ``x``'s memory format, dtype float32
    (float64 for float64 inputs).
    """
    n, c, h, w = x.shape
    c = 1 if shared_channels else c
    dtype = _uniform_dtype(x.dtype)
    strides = _layout((n, c, h, w), x)
    total = n * c * h * w
    if bh * bw == 1:  # 1 × 1 blocks: element-wise dropout with rate γ
        flat = keep_mask((total,), gamma, dtype=dtype, device=x.device, generator=generator)
        keep = flat.as_strided((n, c, h, w), strides)
    else:
        hs, ws = h - bh + 1, w - bw + 1
        seeds = bernoulli_positions(n * c * hs * ws, gamma, x.device, generator)
        s_n, s_c, s_h, s_w = strides
        plane, rest = torch.div(seeds, hs * ws, rounding_mode="floor"), seeds % (hs * ws)
        row, col = torch.div(rest, ws, rounding_mode="floor"), rest % ws
        corner = (torch.div(plane, c, rounding_mode="floor") * s_n + plane % c * s_c
                  + row * s_h + col * s_w)
        keep = torch.empty_strided((n, c, h, w), strides, dtype=dtype, device=x.device)
        flat = keep.as_strided((total,), (1,)).fill_(1.0)
        rows = torch.arange(bh, device=x.device) * s_h
        if not (s_w == 1 and _fill_rows(flat, (corner[:, None] + rows).reshape(-1), bw)):
            cols = torch.arange(bw, device=x.device) * s_w
            flat.index_fill_(0, (corner[:, None] + (rows[:, None] + cols).reshape(-1))
                             .reshape(-1), 0.0)
    per_sample = flat.view(n, -1)  # samples are the outermost dimension in both layouts
    exact = dtype == torch.float64 or per_sample.shape[1] < 2**24
    kept = per_sample.sum(1, dtype=None if exact else torch.float64).clamp_min_(1.0)
    per_sample.mul_((per_sample.shape[1] / kept).to(dtype)[:, None])
    return keep
