"""Rate validation, name errors, devices, seeding and the CLI error path."""

from __future__ import annotations

import pytest
import torch

from droplab.engine.config import parse_classes
from droplab.errors import InvalidValue, UnknownName, check_rate, unknown_name
from droplab.runtime import resolve_device, seed_everything


@pytest.mark.parametrize("p", [0, 0.0, 0.5, 0.999])
def test_check_rate_accepts_half_open_unit_interval(p: float) -> None:
    assert check_rate(p) == float(p)


@pytest.mark.parametrize("p", [1, 1.0, -0.1, 2, "x", None, float("nan")])
def test_check_rate_rejects_with_one_line(p: object) -> None:
    with pytest.raises(InvalidValue) as info:
        check_rate(p, "dropout")
    assert "\n" not in str(info.value) and "dropout" in str(info.value)


def test_unknown_name_lists_choices() -> None:
    err = unknown_name("model", "resnet9000", ["mlp", "lenet"])
    assert isinstance(err, UnknownName)
    assert str(err) == "unknown model 'resnet9000'; choose one of: lenet, mlp"


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in {"cpu", "cuda", "mps"}
    with pytest.raises(UnknownName):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(InvalidValue, match="no CUDA GPU"):
            resolve_device("cuda")


def test_seed_everything_reproduces() -> None:
    g1 = seed_everything(3)
    a = torch.rand(4), torch.rand(4, generator=g1)
    g2 = seed_everything(3)
    b = torch.rand(4), torch.rand(4, generator=g2)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_parse_helpers() -> None:
    assert check_rate("0.25", "--dropout") == 0.25
    with pytest.raises(InvalidValue, match=r"--dropout=1.5 is outside \[0, 1\)"):
        check_rate("1.5", "--dropout")
    assert parse_classes("0-2,5") == ["0", "1", "2", "5"]
    assert parse_classes("cat, dog") == ["cat", "dog"]
    assert parse_classes(None) is None
    with pytest.raises(InvalidValue, match="reversed"):
        parse_classes("4-0")
