"""Acquisition functions: BatchBALD against a direct evaluation of its definition
(1e-6), the duplicate-avoiding property, the sampled estimator's error, BALD/entropy
against torch-uncertainty, Gal et al.'s formulas, PowerBALD's sampling law."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from droplab.errors import InvalidValue, UnknownName
from droplab.uncertainty import ACQUISITIONS, acquire, batch_bald
from droplab.uncertainty.acquisition import (
    bald,
    joint_mutual_information,
    max_entropy,
    mean_std,
    power_sample,
    variation_ratios,
)
from peers import torch_uncertainty


def _pool(t: int, n: int, k: int, seed: int, scale: float = 2.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(t, n, k, generator=g, dtype=torch.float64) * scale, -1)


def _direct(p: torch.Tensor, batch: list[int]) -> float:
    """I(y_B; ω) from its definition: enumerate every label tuple of the batch."""
    t_, _, k = p.shape
    h = 0.0
    for labels in itertools.product(range(k), repeat=len(batch)):
        q = sum(math.prod(float(p[t, i, c]) for i, c in zip(batch, labels))
                for t in range(t_)) / t_
        h -= q * math.log(q) if q > 0 else 0.0
    cond = 0.0
    for i in batch:
        for t in range(t_):
            cond -= sum(float(v) * math.log(float(v)) for v in p[t, i] if v > 0) / t_
    return h - cond


def test_batch_bald_matches_its_definition() -> None:
    p = _pool(t=6, n=9, k=3, seed=0)
    choice = batch_bald(p, 4)
    assert choice.exact == 4
    chosen = choice.indices.tolist()
    for n in range(1, 5):
        # the score of the first n equals the joint mutual information, directly computed
        assert float(choice.scores[n - 1]) == pytest.approx(_direct(p, chosen[:n]), abs=1e-6)
        # and step n picked the candidate maximising it (greedy BatchBALD)
        best = max((j for j in range(9) if j not in chosen[:n - 1]),
                   key=lambda j: _direct(p, [*chosen[:n - 1], j]))
        assert chosen[n - 1] == best
    assert joint_mutual_information(p, chosen) == pytest.approx(_direct(p, chosen), abs=1e-9)


def test_batch_bald_of_one_is_bald() -> None:
    p = _pool(t=10, n=50, k=5, seed=1)
    assert int(batch_bald(p, 1).indices[0]) == int(bald(p).argmax())
    assert float(batch_bald(p, 1).scores[0]) == pytest.approx(float(bald(p).max()), abs=1e-12)


def test_batch_bald_skips_copies_that_bald_takes() -> None:
    # three copies of one image on which the passes are confident but disagree: given ω its
    # label is certain, so a second copy adds exactly zero information
    t_, k = 8, 4
    copy = torch.nn.functional.one_hot(torch.arange(t_) % k, k).double()
    others = _pool(t=t_, n=6, k=k, seed=2, scale=1.0)
    p = torch.cat([copy[:, None].expand(t_, 3, k), others], dim=1)
    top3 = acquire("bald", p, 3).indices.tolist()
    assert sorted(top3) == [0, 1, 2]  # BALD: the three copies
    picked = batch_bald(p, 3).indices.tolist()
    assert len({0, 1, 2} & set(picked)) == 1  # BatchBALD: one of them
    gains = torch.diff(batch_bald(p, 3).scores, prepend=torch.zeros(1))
    assert all(float(g) > 0 for g in gains)


def test_sampled_joint_entropy_is_unbiased_within_its_spread() -> None:
    # exact up to 3 configurations (the first step), sampled after it; ten seeds give a mean
    # and a standard error; the exact score must be within 4 standard errors
    p = _pool(t=8, n=12, k=3, seed=3, scale=3.0)
    exact = batch_bald(p, 3)
    runs = []
    for s in range(10):
        got = batch_bald(p, 3, max_configs=3, samples=4000,
                         generator=torch.Generator().manual_seed(s))
        assert got.exact == 1
        if got.indices.tolist() == exact.indices.tolist():
            runs.append(got.scores[2])
    assert len(runs) >= 8  # the choices are clear-cut here
    runs_t = torch.stack(runs)
    se = float(runs_t.std()) / math.sqrt(len(runs)) + 1e-9
    assert abs(float(runs_t.mean()) - float(exact.scores[2])) < 4 * se + 1e-3


def test_scores_match_torch_uncertainty_and_gal() -> None:
    p = _pool(t=20, n=40, k=10, seed=4)
    tu, _ = torch_uncertainty()
    ref = tu.MutualInformation(reduction="none")
    ref.update(p.permute(1, 0, 2).float())  # (N, estimators, K)
    assert torch.allclose(bald(p).float(), ref.compute().flatten(), atol=1e-4)
    ent = tu.Entropy(reduction="none")
    ent.update(p.mean(0).float())
    assert torch.allclose(max_entropy(p).float(), ent.compute().flatten(), atol=1e-4)
    # Gal et al. (2017) eq. for mean STD: population std of p_tk over passes, mean over k
    assert torch.allclose(mean_std(p), p.std(0, unbiased=False).mean(-1), atol=1e-12)
    # variation ratios: 1 − (count of the modal predicted class) / T
    votes = p.argmax(-1)
    mode_count = torch.stack([torch.bincount(votes[:, i], minlength=10).max()
                              for i in range(40)]).double()
    assert torch.allclose(variation_ratios(p), 1 - mode_count / 20)


def test_power_sampling_follows_scores_to_the_beta() -> None:
    scores = torch.tensor([4.0, 2.0, 1.0, 1.0])
    g = torch.Generator().manual_seed(0)
    for beta in (1.0, 2.0):
        firsts = torch.tensor([int(power_sample(scores, 1, beta, g)[0]) for _ in range(4000)])
        expect = scores**beta / (scores**beta).sum()
        freq = torch.bincount(firsts, minlength=4).double() / 4000
        sigma = (expect * (1 - expect) / 4000).sqrt()
        assert torch.all((freq - expect).abs() < 4 * sigma)
    # sampling without replacement: k distinct; zero scores only after the positive ones
    picked = power_sample(torch.tensor([0.0, 3.0, 0.0, 1.0]), 3, 1.0, g).tolist()
    assert len(set(picked)) == 3 and set(picked[:2]) == {1, 3}
    with pytest.raises(InvalidValue, match="β"):
        power_sample(scores, 1, 0.0)


def test_acquire_registry_random_and_reproducibility() -> None:
    p = _pool(t=5, n=30, k=4, seed=5)
    for name in ACQUISITIONS:
        a = acquire(name, p, 7, generator=torch.Generator().manual_seed(1))
        assert a.indices.numel() == 7 and len(set(a.indices.tolist())) == 7
        b = acquire(name, p, 7, generator=torch.Generator().manual_seed(1))
        assert torch.equal(a.indices, b.indices)
    r = acquire("random", None, 5, pool_size=10, generator=torch.Generator().manual_seed(0))
    assert len(set(r.indices.tolist())) == 5 and int(r.indices.max()) < 10
    top = acquire("max-entropy", p, 5)
    assert torch.equal(top.indices, torch.sort(-max_entropy(p), stable=True).indices[:5])


def test_bad_inputs() -> None:
    p = _pool(t=5, n=4, k=3, seed=6)
    with pytest.raises(InvalidValue, match="pool of 4"):
        acquire("bald", p, 5)
    with pytest.raises(InvalidValue, match="empty"):
        acquire("bald", p[:, :0], 1)
    with pytest.raises(InvalidValue, match="empty"):
        acquire("random", None, 1, pool_size=0)
    with pytest.raises(InvalidValue, match="≥ 1"):
        acquire("batch-bald", p, 0)
    with pytest.raises(UnknownName, match="bald"):
        acquire("bold", p, 1)
    with pytest.raises(InvalidValue, match=r"\(T, N, K\)"):
        acquire("bald", p[0], 1)
    with pytest.raises(InvalidValue, match="not probabilities"):
        acquire("bald", torch.randn(5, 4, 3), 1)
