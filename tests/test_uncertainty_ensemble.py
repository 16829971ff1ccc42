"""Deep ensembles: members stacked as MC passes, disagreement as mutual information, the
member checks (classes, input shapes) and their one-line errors."""

from __future__ import annotations

import pytest
import torch

from droplab.errors import InvalidValue
from droplab.uncertainty import (
    Member,
    check_members,
    ensemble_probs,
    mutual_information,
    stack_members,
)


def _p(*shape: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(*shape, generator=g), -1)


def test_ensemble_is_the_mean_of_members_and_mc_is_a_mixture() -> None:
    a, b, c = _p(10, 4, seed=1), _p(10, 4, seed=2), _p(10, 4, seed=3)
    assert torch.allclose(ensemble_probs([a, b, c]), (a + b + c).double() / 3)
    # identical members never disagree; different ones do
    assert float(mutual_information(stack_members([a, a]).float()).max()) < 1e-6
    assert float(mutual_information(stack_members([a, b]).float()).min()) > 0
    # MC over an ensemble: M members × T passes, each member weighted equally
    ma, mb = _p(5, 10, 4, seed=4), _p(5, 10, 4, seed=5)
    stack = stack_members([ma, mb])
    assert stack.shape == (10, 10, 4)
    assert torch.allclose(stack.mean(0), (ma.mean(0) + mb.mean(0)).double() / 2)


def test_member_checks() -> None:
    digits = ("0", "1", "2")
    ok = [Member("a", digits, (1, 8, 8)), Member("b", digits, (1, 8, 8))]
    check_members(ok)
    with pytest.raises(InvalidValue, match="different classes: b has"):
        check_members([ok[0], Member("b", ("0", "1"), (1, 8, 8))])
    with pytest.raises(InvalidValue, match="different classes"):
        check_members([ok[0], Member("b", ("1", "0", "2"), (1, 8, 8))])  # order matters
    with pytest.raises(InvalidValue, match="different inputs: b takes 3×8×8"):
        check_members([ok[0], Member("b", digits, (3, 8, 8))])
    with pytest.raises(InvalidValue, match="at least 2"):
        check_members(ok[:1])


def test_stack_errors() -> None:
    with pytest.raises(InvalidValue, match="same images"):
        stack_members([_p(10, 4), _p(9, 4)])
    with pytest.raises(InvalidValue, match="same number"):
        stack_members([_p(3, 10, 4), _p(4, 10, 4)])
    with pytest.raises(InvalidValue, match="not probabilities"):
        stack_members([torch.randn(10, 4)])
    with pytest.raises(InvalidValue, match="at least one"):
        stack_members([])
