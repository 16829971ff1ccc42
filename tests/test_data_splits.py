"""droplab.data.splits: stratified holdout, k-fold and per-class budgets (seeded, disjoint)."""

from __future__ import annotations

import pytest
import torch

from droplab import data as D
from droplab.errors import InvalidValue


def one_line(e: pytest.ExceptionInfo[BaseException]) -> str:
    msg = str(e.value)
    assert "\n" not in msg and msg
    return msg



def test_stratified_split_disjoint_and_stratified() -> None:
    y = torch.arange(300) % 3
    tr, va = D.stratified_split(y, 0.2, seed=0)
    assert len(set(tr.tolist()) & set(va.tolist())) == 0
    assert sorted(tr.tolist() + va.tolist()) == list(range(300))
    assert torch.bincount(y[va]).tolist() == [20, 20, 20]
    _, va2 = D.stratified_split(y, 0.2, seed=0)
    assert torch.equal(va, va2)
    with pytest.raises(InvalidValue):
        D.stratified_split(y, 1.5, seed=0)


def test_kfold_partition_and_error() -> None:
    y = torch.tensor([0] * 10 + [1] * 6)
    folds = D.kfold_splits(y, 3, seed=0)
    vals = torch.cat([va for _, va in folds])
    assert sorted(vals.tolist()) == list(range(16))  # every index validated exactly once
    for tr, va in folds:
        assert not set(tr.tolist()) & set(va.tolist())
        assert int((y[va] == 1).sum()) == 2  # 6 of class 1 over 3 folds
    with pytest.raises(InvalidValue) as e:
        D.kfold_splits(y, 7, seed=0)
    assert "smallest class has 6" in one_line(e)


def test_subsample_per_class_balanced_and_error() -> None:
    y = torch.tensor([0] * 10 + [1] * 4 + [2] * 7)
    idx = D.subsample_per_class(y, 3, seed=1)
    assert torch.bincount(y[idx]).tolist() == [3, 3, 3]
    assert torch.equal(idx, D.subsample_per_class(y, 3, seed=1))
    with pytest.raises(InvalidValue) as e:
        D.subsample_per_class(y, 5, seed=0)
    assert "class 1 has only 4" in one_line(e)
