"""Exactness of :mod:`droplab.masks`, the random masks behind droplab's dropout functions.

Tolerances are derived as in tests/test_functional.py: a fraction of ``n`` independent
Bernoulli(p) events has standard deviation ``sqrt(p (1 - p) / n)`` and every check allows
5 standard deviations (two-sided failure probability ≈ 6e-7 per check for a correct
implementation); all draws are seeded, so the tests are deterministic.
"""

from __future__ import annotations

import math

import pytest
import torch

from droplab import functional as DF
from droplab import masks

SIGMAS = 5.0
CPU = torch.device("cpu")


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def band(p: float, n: int) -> float:
    return SIGMAS * math.sqrt(p * (1 - p) / n)


# --------------------------------------------------------------------------- keep_mask
# k = floor(256 p): 0 (sparse part only), 1, 25, 50, 64 (bytes only: 256 p is an integer),
# 230, 239; 0.95 is above BYTE_PATH_MAX_P and takes the rand path.
RATES = [0.5 / 256, 1.5 / 256, 0.1, 50.5 / 256, 0.25, 0.9, 239.5 / 256, 0.95]


@pytest.mark.parametrize("p", RATES)
def test_keep_mask_rate_is_exact_not_rounded_to_bytes(p: float) -> None:
    n = 1 << 22
    keep = masks.keep_mask((n,), p, dtype=torch.float32, device=CPU, generator=gen(1))
    assert bool(((keep == 0) | (keep == 1)).all())
    dropped = 1.0 - keep.double().mean().item()
    assert abs(dropped - p) < band(p, n)
    k = math.floor(p * 256)
    if 256 * p != k and p <= masks.BYTE_PATH_MAX_P:
        # the test has power: a byte threshold alone (rate k/256 or (k+1)/256) sits at least
        # 7.5σ from p, so it would pass the 5σ check above with probability < 0.7 %
        assert min(abs(p - k / 256), abs(p - (k + 1) / 256)) > 1.5 * band(p, n)


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_keep_mask_bytes_of_one_random_word_are_independent(p: float) -> None:
    # eight entries share one 64-bit draw: each lane must be Bernoulli(1 - p) and every
    # pair of lanes independent (joint drop rate p²), over n/8 independent words
    n = 1 << 22
    keep = masks.keep_mask((n,), p, dtype=torch.float32, device=CPU, generator=gen(2))
    dropped = (1.0 - keep).view(-1, 8).double()
    words = dropped.shape[0]
    lane = dropped.mean(0)
    assert bool(((lane - p).abs() < band(p, words)).all())
    joint = (dropped.T @ dropped) / words  # (8, 8): off-diagonal = joint drop rates
    off = joint[~torch.eye(8, dtype=torch.bool)]
    assert bool(((off - p * p).abs() < band(p * p, words)).all())


def test_keep_mask_is_reproducible_and_fresh() -> None:
    shape = (64, 1024)  # over BYTE_PATH_MIN: the byte path
    assert math.prod(shape) >= masks.BYTE_PATH_MIN

    def draw(g: torch.Generator) -> torch.Tensor:
        return masks.keep_mask(shape, 0.1, dtype=torch.float32, device=CPU, generator=g)

    assert torch.equal(draw(gen(3)), draw(gen(3)))
    g = gen(3)
    assert not torch.equal(draw(g), draw(g))


def test_keep_mask_small_tensors_use_exact_uniforms() -> None:
    # below BYTE_PATH_MIN the mask is rand >= p; pool many small draws from one generator
    p, calls, size = 1.5 / 256, 400, 10_000
    g = gen(4)
    dropped = sum(float((masks.keep_mask((size,), p, dtype=torch.float64, device=CPU,
                                         generator=g) == 0).double().sum())
                  for _ in range(calls))
    assert abs(dropped / (calls * size) - p) < band(p, calls * size)


def test_dropout_and_alpha_dropout_half_precision_on_the_byte_path() -> None:
    x = torch.ones(1 << 18, dtype=torch.float16)
    y = DF.dropout(x, 0.3, generator=gen(5))
    assert y.dtype == torch.float16
    assert abs((y == 0).double().mean().item() - 0.3) < band(0.3, x.numel())
    assert torch.equal(torch.unique(y[y != 0]), torch.tensor([1 / 0.7], dtype=torch.float16))


# --------------------------------------------------------------------------- positions
@pytest.mark.parametrize("prob", [1e-4, 0.01, 0.3])
def test_bernoulli_positions_are_a_bernoulli_process(prob: float) -> None:
    total = 2_000_000
    pos = masks.bernoulli_positions(total, prob, CPU, gen(6))
    assert pos.dtype == torch.int64
    assert bool((pos[1:] > pos[:-1]).all()) and int(pos[0]) >= 0 and int(pos[-1]) < total
    # count ~ Binomial(total, prob); each half of the range holds a Binomial(total/2, prob)
    assert abs(pos.numel() / total - prob) < band(prob, total)
    half = int((pos < total // 2).sum())
    assert abs(half / (total // 2) - prob) < band(prob, total // 2)


# --------------------------------------------------------------------------- DropBlock
def test_block_mask_channels_last_draws_the_same_mask_in_its_own_layout() -> None:
    x = torch.randn(8, 16, 20, 20, generator=gen(7))
    xc = x.to(memory_format=torch.channels_last)
    a = DF.drop_block(x, 0.2, block_size=3, generator=gen(8))
    b = DF.drop_block(xc, 0.2, block_size=3, generator=gen(8))
    assert torch.equal(a, b)
    assert b.is_contiguous(memory_format=torch.channels_last)
    assert a.is_contiguous()


def test_block_mask_row_writes_equal_element_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    x = torch.ones(4, 6, 15, 17)
    gamma = masks.seed_rate(15, 17, 4, 5, 0.3)
    rows = masks.block_keep_mask(x, gamma, 4, 5, shared_channels=False, generator=gen(9))
    monkeypatch.setattr(masks, "_fill_rows", lambda flat, starts, width: False)
    elements = masks.block_keep_mask(x, gamma, 4, 5, shared_channels=False, generator=gen(9))
    assert torch.equal(rows, elements)
    assert 0 < (rows == 0).double().mean().item() < 1


def test_one_by_one_blocks_are_elementwise_with_per_sample_scale() -> None:
    p, n = 0.2, 64
    y = DF.drop_block(torch.ones(n, 32, 16, 16), p, block_size=1, generator=gen(10))
    per = y.flatten(1).double()
    kept = (per != 0).sum(1)
    assert torch.allclose(per.sum(1), torch.full((n,), float(per.shape[1]), dtype=per.dtype))
    assert abs(1 - kept.sum().item() / per.numel() - p) < band(p, per.numel())


# --------------------------------------------------------------------------- DropBlock, index form
def test_dropped_counts_equal_a_dense_count() -> None:
    # random row starts (duplicates, overlaps, rows touching the right edge, samples with
    # no block at all) against the union written densely
    n, c, h, w, width = 5, 3, 6, 11, 4
    g = gen(11)
    per = c * h * w
    plane = torch.randint(0, (n - 1) * c, (300,), generator=g)  # the last sample stays empty
    starts = (plane * (h * w) + torch.randint(0, h, (300,), generator=g) * w
              + torch.randint(0, w - width + 1, (300,), generator=g))
    dense = torch.zeros(n * per)
    dense[(starts[:, None] + torch.arange(width)).reshape(-1)] = 1.0
    expected = dense.view(n, per).sum(1).to(torch.int64)
    assert int(expected[-1]) == 0 and int(expected.max()) < per  # overlaps happen
    for index in (torch.int32, torch.int64):
        got = masks.dropped_counts(starts.to(index), n, per, width)
        assert torch.equal(got, expected)
        # the torch-op path (the one CUDA takes) gives the same counts
        assert torch.equal(masks._dropped_counts_torch(starts.to(index), n, per, width),
                           expected)
    assert torch.equal(masks.dropped_counts(starts[:0], n, per, width), torch.zeros(n).long())


@pytest.mark.parametrize(("shape", "block"), [((3, 4, 9, 11), (3, 2)), ((4, 1, 9, 9), (7, 7)),
                                            ((5, 2, 6, 10), (1, 4))])
def test_seed_geometry_numpy_equals_the_torch_ops(shape: tuple[int, int, int, int],
                                                   block: tuple[int, int]) -> None:
    # CPU draws go through NumPy, other devices through torch ops: the same integers
    n, c, h, w = shape
    bh, bw = block
    total = n * c * (h - bh + 1) * (w - bw + 1)
    seeds = masks.bernoulli_positions(total, 0.3, torch.device("cpu"), gen(14))
    assert seeds.numel() > 0
    for a, b in zip(masks._seed_geometry_numpy(seeds, shape, bh, bw),
                    masks._seed_geometry_torch(seeds, shape, bh, bw), strict=True):
        assert a.dtype == b.dtype == torch.int64 and torch.equal(a, b)


@pytest.mark.parametrize("channels_last", [False, True])
def test_index_form_equals_the_dense_mask_in_every_chunking(
        channels_last: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    x = torch.randn(6, 5, 13, 16, dtype=torch.float64, generator=gen(12))
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    gamma = masks.seed_rate(13, 16, 4, 3, 0.3)
    seeds = masks.draw_block_seeds(x, gamma, 4, 3, shared_channels=False, generator=gen(13))
    keep = masks.dense_block_mask(seeds, x)
    assert 0 < (keep == 0).double().mean().item() < 1
    sample_bytes = 5 * 13 * 16 * 8
    # chunks of 1 sample, of 2 samples, one pass: the same values, in x's layout
    for chunk, count in ((1, 6), (2 * sample_bytes, 3), (1 << 40, 1)):
        monkeypatch.setattr(masks, "CHUNK_BYTES", chunk)
        plan = masks.BlockPlan(seeds, masks.BlockPlan.dense_strides(x))
        assert len(plan.chunks) == count + 1
        y = plan.apply(x)
        assert torch.equal(y, x * keep) and y.stride() == x.stride()
    # per-element writes (if torch refused the overlapping block view) agree too
    monkeypatch.setattr(masks, "_fill_blocks", lambda *args: False)
    assert torch.equal(masks.BlockPlan(seeds, x.stride()).apply(x), x * keep)


def test_drop_block_gradient_is_the_mask_in_the_input_layout() -> None:
    x = torch.randn(4, 6, 12, 12, generator=gen(14)).to(memory_format=torch.channels_last)
    x.requires_grad_()
    y = DF.drop_block(x, 0.25, block_size=3, generator=gen(15))
    grad = torch.randn(4, 6, 12, 12, generator=gen(16))  # contiguous, unlike x
    y.backward(grad)
    assert x.grad is not None and x.grad.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        mask = DF.drop_block(torch.ones_like(x), 0.25, block_size=3, generator=gen(15))
    assert torch.equal(x.grad, grad * mask) and torch.equal(y, x.detach() * mask)


def test_drop_block_double_backward_and_empty_batch() -> None:
    x = torch.randn(2, 3, 7, 7, dtype=torch.float64, generator=gen(17), requires_grad=True)
    def f(t: torch.Tensor) -> torch.Tensor:
        return DF.drop_block(t, 0.3, block_size=3, generator=gen(18)) ** 2
    assert torch.autograd.gradgradcheck(f, (x,))
    for block, shared in ((3, False), (3, True), (1, False), (1, True)):  # every mask path
        empty = DF.drop_block(torch.ones(0, 3, 8, 8), 0.1, block_size=block,
                              shared_channels=shared)
        assert empty.shape == (0, 3, 8, 8)
