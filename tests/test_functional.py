"""Statistical tests of :mod:`droplab.functional`.

Tolerances are derived, not tuned. A fraction of ``n`` independent Bernoulli(p) events has
standard deviation ``sqrt(p (1 - p) / n)``; a sample mean of ``n`` i.i.d. values with
variance ``v`` has ``sqrt(v / n)``; a sample variance has ``sqrt((m4 - m2²) / n)`` (m2, m4:
central moments, estimated from the sample itself). Every check allows 5 standard
deviations (two-sided failure probability ≈ 6e-7 per check under a correct implementation),
and every random draw is seeded, so the tests are deterministic.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from droplab import functional as DF
from droplab import masks
from droplab.errors import InvalidValue, UnknownName

SIGMAS = 5.0


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def frac_tol(p: float, n: int) -> float:
    """5σ band of a Bernoulli(p) fraction over n independent trials."""
    return SIGMAS * math.sqrt(p * (1 - p) / n)


def var_tol(y: torch.Tensor) -> float:
    """5σ band of the sample variance of y (plug-in 4th central moment)."""
    y = y.double().flatten()
    c = y - y.mean()
    m2, m4 = (c**2).mean().item(), (c**4).mean().item()
    return SIGMAS * math.sqrt(max(m4 - m2**2, 0.0) / y.numel())


# --------------------------------------------------------------------------- element-wise
@pytest.mark.parametrize("p", [0.1, 0.5])
def test_dropout_fraction_mean_variance(p: float) -> None:
    n = 200_000
    y = DF.dropout(torch.ones(n), p, generator=gen(1))
    dropped = (y == 0).double().mean().item()
    assert abs(dropped - p) < frac_tol(p, n)
    assert torch.allclose(y[y != 0], torch.full_like(y[y != 0], 1 / (1 - p)))
    # E[y] = 1 and Var[y] = p / (1 - p) for x = 1; std of the mean = sqrt(Var/n)
    assert abs(y.double().mean().item() - 1) < SIGMAS * math.sqrt(p / (1 - p) / n)
    assert abs(y.double().var().item() - p / (1 - p)) < var_tol(y)


@pytest.mark.parametrize("shape", [(400, 50, 3), (400, 50, 2, 3), (400, 50, 2, 2, 2)])
def test_spatial_dropout_drops_whole_channels(shape: tuple[int, ...]) -> None:
    p = 0.3
    x = torch.rand(shape, generator=gen(2)) + 0.5  # strictly positive
    y = DF.spatial_dropout(x, p, generator=gen(3))
    flat = (y / x).flatten(2)  # per channel: all 0 or all 1/(1-p)
    channel_zero = (flat == 0).all(-1)
    channel_kept = torch.isclose(flat, torch.full_like(flat, 1 / (1 - p))).all(-1)
    assert bool((channel_zero | channel_kept).all())
    n = shape[0] * shape[1]
    assert abs(channel_zero.double().mean().item() - p) < frac_tol(p, n)
    # mean of y/x over channels: E = 1, Var = p / (1 - p), n channels
    assert abs(flat[..., 0].double().mean().item() - 1) < SIGMAS * math.sqrt(p / (1 - p) / n)


def test_spatial_dropout_rejects_other_ranks() -> None:
    with pytest.raises(InvalidValue, match=r"\(N, C, H, W\)"):
        DF.spatial_dropout(torch.ones(4, 5), 0.2)


@pytest.mark.parametrize("p", [0.2, 0.5])
def test_gaussian_dropout_moments(p: float) -> None:
    n = 200_000
    y = DF.gaussian_dropout(torch.ones(n), p, generator=gen(4)).double()
    var = p / (1 - p)
    assert abs(y.mean().item() - 1) < SIGMAS * math.sqrt(var / n)
    # Gaussian sample variance: std = var * sqrt(2 / (n - 1))
    assert abs(y.var().item() - var) < SIGMAS * var * math.sqrt(2 / (n - 1))


@pytest.mark.parametrize("p", [0.05, 0.2, 0.5])
def test_alpha_dropout_keeps_standard_moments(p: float) -> None:
    n = 200_000
    x = torch.randn(n, generator=gen(5), dtype=torch.float64)
    y = DF.alpha_dropout(x, p, generator=gen(6))
    # E[y] = 0, Var[y] = 1 exactly for any input with mean 0 and variance 1
    # (Klambauer et al. 2017, eq. for a and b); the sample x adds its own noise, which the
    # plug-in bounds below cover since y's moments include it.
    assert abs(y.mean().item()) < SIGMAS / math.sqrt(n)
    assert abs(y.var().item() - 1) < var_tol(y)
    # dropped units all sit at the same value a α' + b
    q = 1 - p
    alpha = -1.0507009873554805 * 1.6732632423543772
    a = (q + alpha**2 * q * p) ** -0.5
    low = torch.isclose(y, torch.tensor(a * alpha - a * alpha * p, dtype=y.dtype))
    assert abs(low.double().mean().item() - p) < frac_tol(p, n)


def test_drop_path_row_and_batch() -> None:
    p, n = 0.25, 20_000
    y = DF.drop_path(torch.ones(n, 3, 2), p, generator=gen(7))
    per_sample = y.flatten(1)
    assert bool(((per_sample == 0).all(1) | (per_sample == 1 / (1 - p)).all(1)).all())
    assert abs((per_sample[:, 0] == 0).double().mean().item() - p) < frac_tol(p, n)
    g = gen(8)
    calls = 2_000
    whole = [bool((DF.drop_path(torch.ones(4, 3), p, mode="batch", generator=g) == 0).all())
             for _ in range(calls)]
    assert abs(sum(whole) / calls - p) < frac_tol(p, calls)
    with pytest.raises(UnknownName, match="row"):
        DF.drop_path(torch.ones(2, 2), p, mode="column")


# --------------------------------------------------------------------------- DropConnect
def test_drop_connect_linear_mean_and_shared_mask() -> None:
    p, passes = 0.3, 4_000
    weight = torch.randn(1, 20, generator=gen(9), dtype=torch.float64)
    bias = torch.tensor([0.5], dtype=torch.float64)
    x = torch.randn(1, 20, generator=gen(10), dtype=torch.float64)
    g = gen(11)
    ys = torch.stack([DF.drop_connect(x, p, weight=weight, bias=bias, generator=g)
                      for _ in range(passes)]).flatten()
    expected = F.linear(x, weight, bias).item()
    # Var of one pass = Σ_j (x_j W_j)² p / (1 - p) (independent weight masks)
    var = ((x * weight) ** 2).sum().item() * p / (1 - p)
    assert abs(ys.mean().item() - expected) < SIGMAS * math.sqrt(var / passes)
    assert abs(ys.var().item() - var) < var_tol(ys)
    # one mask per call, shared by every sample of the batch
    batch = DF.drop_connect(x.repeat(5, 1), p, weight=weight, bias=bias, generator=gen(12))
    # (allclose: a batched matmul may sum in a different order per row)
    assert torch.allclose(batch, batch[:1].expand_as(batch), rtol=1e-12, atol=1e-12)
    assert torch.allclose(DF.drop_connect(x, p, False, weight=weight, bias=bias),
                          F.linear(x, weight, bias), rtol=1e-12, atol=1e-12)


def test_drop_connect_conv_matches_conv_in_expectation() -> None:
    p, passes = 0.2, 300
    weight = torch.randn(2, 3, 3, 3, generator=gen(13), dtype=torch.float64)
    x = torch.randn(1, 3, 5, 5, generator=gen(14), dtype=torch.float64)
    g = gen(15)
    ys = torch.stack([DF.drop_connect(x, p, weight=weight, padding=1, generator=g)
                      for _ in range(passes)])
    expected = F.conv2d(x, weight, padding=1)
    # per output: variance Σ (x w)² p/(1-p) over its receptive field; check the mean map
    # against the same bound computed with unfold
    cols = F.unfold(x, 3, padding=1)  # (1, 27, 25)
    var = ((cols[0].T[:, None, :] * weight.flatten(1)[None]) ** 2).sum(-1) * p / (1 - p)
    err = (ys.mean(0) - expected).flatten(2)[0].T  # (25, 2)
    assert bool((err.abs() < SIGMAS * (var / passes).sqrt() + 1e-12).all())
    with pytest.raises(InvalidValue, match="2-d"):
        DF.drop_connect(x, p, weight=torch.ones(3))


# --------------------------------------------------------------------------- DropBlock
def _planes_needed(size: int, block: int, p: float) -> int:
    """Planes needed so the 5σ band of the measured drop fraction is ≤ 0.01.

    Within one plane the drop indicators D_u, D_v of two positions are correlated only if
    one seed can cover both, i.e. if they are less than ``b`` apart in both axes: at most
    ``(2b-1)²`` partners each, with |Cov| ≤ max_u Var(D_u) = max q(1-q), where
    ``q_u = 1 - (1-γ)^n_u`` and ``n_u ≤ min(b, H-b+1)²``. So a plane's dropped fraction
    has variance ≤ v = min(1, (2b-1)²/HW) · max q(1-q), and P independent planes give v/P.
    5σ ≤ 0.01 needs P ≥ v · (5/0.01)².
    """
    gamma = masks.seed_rate(size, size, block, block, p)
    q_max = 1 - (1 - gamma) ** (min(block, size - block + 1) ** 2)
    var_q = 0.25 if q_max > 0.5 else q_max * (1 - q_max)
    v = min(1.0, (2 * block - 1) ** 2 / size**2) * var_q
    return math.ceil(v * (SIGMAS / 0.01) ** 2)


GRID = [(s, b) for s in (7, 8, 14, 28, 56) for b in range(1, 8) if b <= s]


@pytest.mark.parametrize("shared", [False, True])
def test_drop_block_rate_is_exact_over_the_grid(shared: bool) -> None:
    g = gen(16)
    cases = [(s, b, 0.1) for s, b in GRID] + [(28, 3, 0.3), (14, 7, 0.3)]
    worst = 0.0
    for size, block, p in cases:
        planes = _planes_needed(size, block, p)
        x = torch.ones(planes, 1, size, size) if shared else torch.ones(1, planes, size, size)
        y = DF.drop_block(x, p, block_size=block, shared_channels=shared, generator=g)
        dropped = (y == 0).double().mean().item()
        worst = max(worst, abs(dropped - p))
        assert abs(dropped - p) <= 0.01, (size, block, p, dropped)
    assert worst > 0  # the masks are random, not a fixed pattern


def test_drop_block_masks_are_unions_of_whole_blocks() -> None:
    b = 3
    y = DF.drop_block(torch.ones(2, 16, 20, 20), 0.3, block_size=b, generator=gen(17))
    dropped = (y == 0).double()
    # opening (erosion over valid block positions, then dilation back) leaves a union of
    # b×b blocks lying inside the map unchanged
    eroded = -F.max_pool2d(-dropped, b, stride=1)  # 1 where a full block is dropped
    opened = F.max_pool2d(F.pad(eroded, (b - 1,) * 4), b, stride=1)
    assert torch.equal(opened, dropped)
    assert 0 < dropped.mean().item() < 1


def test_drop_block_scales_each_sample_by_its_kept_fraction() -> None:
    y = DF.drop_block(torch.ones(64, 8, 12, 12), 0.3, block_size=4, generator=gen(18))
    per = y.flatten(1).double()
    alive = (per != 0).any(1)
    # kept values are numel / kept count, so each sample's mean is exactly 1
    assert torch.allclose(per[alive].mean(1), torch.ones(int(alive.sum()), dtype=per.dtype))
    kept = (per != 0).sum(1, keepdim=True)
    expected = per.shape[1] / kept.clamp_min(1)
    assert torch.allclose(per, torch.where(per != 0, expected.expand_as(per), per))


def test_drop_block_shared_channels_and_clamped_block() -> None:
    y = DF.drop_block(torch.ones(32, 6, 10, 10), 0.3, block_size=3, shared_channels=True,
                      generator=gen(19))
    assert torch.equal(y, y[:, :1].expand_as(y))
    # block 9 on a 7×7 map is clamped to 7: each plane is dropped whole with probability p
    planes, p = 20_000, 0.2
    y = DF.drop_block(torch.ones(1, planes, 7, 7), p, block_size=9, generator=gen(20))
    flat = (y[0] == 0).flatten(1)
    assert bool((flat.all(1) | ~flat.any(1)).all())
    assert abs(flat[:, 0].double().mean().item() - p) < frac_tol(p, planes)


def test_drop_block_validates_input() -> None:
    with pytest.raises(InvalidValue, match="N, C, H, W"):
        DF.drop_block(torch.ones(3, 4, 5), 0.1)
    with pytest.raises(InvalidValue, match="block_size"):
        DF.drop_block(torch.ones(1, 1, 4, 4), 0.1, block_size=0)


# --------------------------------------------------------------------------- Concrete
def test_concrete_dropout_hard_fraction_and_gradient() -> None:
    n, p = 200_000, 0.3
    logit = torch.tensor(math.log(p / (1 - p)), requires_grad=True)
    y = DF.concrete_dropout(torch.ones(n), torch.sigmoid(logit), temperature=0.1,
                            generator=gen(21))
    # z > 1/2  <=>  logit(p) + logit(u) > 0  <=>  u > 1 - p: probability p exactly (ε aside)
    mostly_dropped = (y * (1 - p) < 0.5).double().mean().item()
    assert abs(mostly_dropped - p) < frac_tol(p, n) + 1e-6
    y.sum().backward()
    assert logit.grad is not None and torch.isfinite(logit.grad) and logit.grad != 0
    assert DF.concrete_dropout(torch.ones(3), 0.5, training=False).equal(torch.ones(3))
    with pytest.raises(InvalidValue, match="temperature"):
        DF.concrete_dropout(torch.ones(3), 0.5, temperature=0)


# --------------------------------------------------------------------------- shared behaviour
FUNCS = {
    "dropout": lambda x, p, **k: DF.dropout(x, p, **k),
    "spatial": lambda x, p, **k: DF.spatial_dropout(x, p, **k),
    "gaussian": lambda x, p, **k: DF.gaussian_dropout(x, p, **k),
    "alpha": lambda x, p, **k: DF.alpha_dropout(x, p, **k),
    "dropblock": lambda x, p, **k: DF.drop_block(x, p, block_size=2, **k),
    "droppath": lambda x, p, **k: DF.drop_path(x, p, **k),
    "concrete": lambda x, p, **k: DF.concrete_dropout(x, p, **k),
    "dropconnect": lambda x, p, **k: DF.drop_connect(
        x, p, weight=torch.linspace(-1, 1, 6 * 3, dtype=x.dtype).reshape(3, 6, 1, 1), **k),
}


@pytest.mark.parametrize("name", sorted(FUNCS))
def test_gradcheck_with_fixed_generator(name: str) -> None:
    x = torch.randn(2, 6, 3, 3, dtype=torch.float64, generator=gen(22), requires_grad=True)
    f = FUNCS[name]
    assert torch.autograd.gradcheck(lambda t: f(t, 0.3, generator=gen(23)), (x,))


@pytest.mark.parametrize("name", sorted(FUNCS))
def test_identity_when_not_training_or_p_zero(name: str) -> None:
    x = torch.randn(2, 6, 4, 4, generator=gen(24))
    f = FUNCS[name]
    if name != "dropconnect":  # drop_connect returns the layer output, not x
        assert f(x, 0.4, training=False) is x
        if name != "concrete":  # concrete's p = 0 still draws relaxed noise around 1
            assert f(x, 0.0) is x


@pytest.mark.parametrize("name", sorted(FUNCS))
def test_generator_reproducible_and_p_validated(name: str) -> None:
    x = torch.randn(4, 6, 8, 8, generator=gen(25))
    f = FUNCS[name]
    a, b = f(x, 0.3, generator=gen(26)), f(x, 0.3, generator=gen(26))
    c = f(x, 0.3, generator=gen(27))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    for bad in (1.0, -0.1, float("nan"), "high"):
        with pytest.raises(InvalidValue) as err:
            f(x, bad)
        assert "\n" not in str(err.value)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", sorted(FUNCS))
def test_half_precision_forward(name: str, dtype: torch.dtype) -> None:
    x = torch.randn(8, 6, 8, 8, generator=gen(28)).to(dtype)
    y = FUNCS[name](x, 0.3, generator=gen(29))
    assert y.dtype == dtype and y.shape[0] == 8
    assert bool(torch.isfinite(y).all())
    assert not torch.equal(y, x)


# --------------------------------------------------------------------------- replicas
def test_drop_connect_replicas_draw_one_weight_mask_per_copy() -> None:
    # k stacked copies of one input through a linear DropConnect layer: each copy must see
    # its own mask (a shared mask would make all copies equal), and a copy must equal a
    # separate call that draws from the same RNG position
    w = torch.randn(6, 5, generator=gen(1))
    x = torch.randn(3, 5, generator=gen(2))
    k = 4
    out = DF.drop_connect(x.repeat(k, 1), 0.5, weight=w, replicas=k, generator=gen(3))
    copies = out.view(k, 3, 6)
    assert all(not torch.equal(copies[i], copies[j]) for i in range(k) for j in range(i))
    g = gen(3)
    one_by_one = torch.cat([DF.drop_connect(x, 0.5, weight=w, generator=g) for _ in range(k)])
    assert torch.allclose(out, one_by_one, atol=1e-6)
    with pytest.raises(InvalidValue, match="divisor"):
        DF.drop_connect(x, 0.5, weight=w, replicas=2)


def test_drop_path_batch_mode_replicas_draw_per_copy() -> None:
    # mode="batch" with k copies: each copy kept or dropped as a whole, independently.
    # Over n = 2000 copies the kept fraction is Bernoulli(0.7): 5σ = 5·sqrt(.21/2000) ≈ .051
    k, p = 2000, 0.3
    x = torch.ones(k * 2, 3)
    y = DF.drop_path(x, p, mode="batch", replicas=k, generator=gen(4)).view(k, 2, 3)
    kept = y.flatten(1).amax(1) > 0
    assert torch.all(y[kept] == 1 / (1 - p)) and torch.all(y[~kept] == 0)
    assert abs(kept.double().mean().item() - (1 - p)) <= frac_tol(1 - p, k)
    # without replicas the whole batch shares one draw
    z = DF.drop_path(x, p, mode="batch", generator=gen(4))
    assert len(torch.unique(z)) == 1


# --------------------------------------------------------------------------- torch.fx
class _CallsFunctional(torch.nn.Module):
    """A user model calling droplab.functional in forward, by attribute and by name."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from droplab.functional import drop_block  # the bare-name form of the call

        x = DF.dropout(x, 0.2, self.training)
        x = drop_block(x, 0.1, self.training, block_size=3)
        return DF.drop_path(x, 0.1, self.training)


def test_functional_ops_are_single_fx_nodes() -> None:
    gm = torch.fx.symbolic_trace(_CallsFunctional().train())
    calls = [n.target for n in gm.graph.nodes if n.op == "call_function"]
    assert calls == [DF.dropout, DF.drop_block, DF.drop_path]
    x = torch.randn(4, 2, 8, 8)
    torch.manual_seed(5)
    a = gm(x)
    torch.manual_seed(5)
    b = _CallsFunctional().train()(x)
    assert torch.equal(a, b)  # the traced module draws exactly what eager does
