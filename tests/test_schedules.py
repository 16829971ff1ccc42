"""Dropout-rate schedules: values at given steps, spec parsing, the scheduler, resume."""

from __future__ import annotations

import math

import pytest
from torch import nn

from droplab import layers
from droplab.errors import InvalidValue, ResumeError, UnknownName
from droplab.schedules import DropoutScheduler, Schedule, make_schedule


@pytest.mark.parametrize(
    ("spec", "step", "expected"),
    [
        ("constant", 0, 0.4),
        ("constant", 999, 0.4),
        ("linear", 0, 0.0),
        ("linear", 50, 0.2),  # halfway through a ramp over all 100 steps
        ("linear", 100, 0.4),
        ("linear", 500, 0.4),  # clamps past the end
        ("linear:0.3", 15, 0.2),  # ramp over the first 30 steps: 15/30 of 0.4
        ("linear:0.3", 30, 0.4),
        ("linear:0.3", 70, 0.4),
        ("cosine", 0, 0.0),
        ("cosine", 50, 0.2),  # (1 - cos(pi/2)) / 2 = 1/2
        ("cosine", 25, 0.4 * (1 - math.cos(math.pi / 4)) / 2),
        ("cosine", 100, 0.4),
        ("early:0.2", 0, 0.4),
        ("early:0.2", 19, 0.4),
        ("early:0.2", 20, 0.0),  # E = 20: dropout stops at step 20
        ("early", 99, 0.0),
        ("late:0.5", 0, 0.0),
        ("late:0.5", 49, 0.0),
        ("late:0.5", 50, 0.4),  # S = 50
        ("late", 99, 0.4),
        ("curriculum", 0, 0.0),
        # p (1 - exp(-γ t)) with γ = -ln(0.01)/100: at t = 50 that is p (1 - 0.1)
        ("curriculum", 50, 0.4 * 0.9),
        ("curriculum", 100, 0.4 * 0.99),
        ("curriculum:0.9", 100, 0.4 * 0.9),
    ],
)
def test_schedule_values(spec: str, step: int, expected: float) -> None:
    assert make_schedule(spec, 0.4, 100).value(step) == pytest.approx(expected, abs=1e-12)


def test_schedules_stay_within_zero_and_p_and_ramps_are_monotone() -> None:
    for spec in ("constant", "linear", "linear:0.3", "cosine", "curriculum", "early", "late"):
        values = [make_schedule(spec, 0.5, 40).value(t) for t in range(60)]
        assert all(0.0 <= v <= 0.5 for v in values), spec
        if spec not in ("early",):
            assert values == sorted(values), spec


@pytest.mark.parametrize(
    ("spec", "error"),
    [
        ("exponential", UnknownName),
        ("linear:abc", InvalidValue),
        ("linear:0", InvalidValue),
        ("linear:1.5", InvalidValue),
        ("early:-0.1", InvalidValue),
        ("curriculum:1", InvalidValue),  # would need γ = ∞
        ("constant:0.3", InvalidValue),
        ("late:nan", InvalidValue),
    ],
)
def test_bad_specs_give_one_line_errors(spec: str, error: type[Exception]) -> None:
    with pytest.raises(error) as info:
        make_schedule(spec, 0.5, 100)
    msg = str(info.value)
    assert "\n" not in msg
    assert "linear" in msg  # lists the valid forms


def test_bad_rate_and_steps() -> None:
    with pytest.raises(InvalidValue):
        make_schedule("linear", 1.0, 100)
    with pytest.raises(InvalidValue):
        make_schedule("linear", 0.5, 0)


def test_spec_round_trip() -> None:
    s = make_schedule("Linear:0.3", 0.5, 10)
    assert s.spec == "linear:0.3"
    assert make_schedule(s.spec, 0.5, 10) == s
    assert make_schedule("early", 0.5, 10).spec == "early:0.2"


def _net() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.Dropout2d(0.1), nn.Flatten(), nn.LazyLinear(8),
        layers.Dropout(0.5), nn.Linear(8, 2), nn.AlphaDropout(0.2),
    )


def test_scheduler_drives_torch_and_droplab_modules_toward_their_own_targets() -> None:
    model = _net()
    sched = DropoutScheduler(model, make_schedule("linear", 0.5, 10))
    # step 0 is applied on creation: a linear ramp starts at 0
    assert sched.rates() == {"1": 0.0, "4": 0.0, "6": 0.0}
    for _ in range(5):
        sched.step()
    assert sched.current_p == pytest.approx(0.25)
    # each module at half of its own target: 0.1, 0.5 and 0.2
    assert model[1].p == pytest.approx(0.05)
    assert model[4].p == pytest.approx(0.25)
    assert model[6].p == pytest.approx(0.1)
    for _ in range(10):
        sched.step()
    assert model[4].p == pytest.approx(0.5) and model[1].p == pytest.approx(0.1)


def test_scheduler_subset_by_pattern_kind_and_objects() -> None:
    model = _net()
    DropoutScheduler(model, make_schedule("late:0.5", 0.3, 10), modules="4")
    assert (model[1].p, model[4].p, model[6].p) == (0.1, 0.0, 0.2)
    model = _net()
    DropoutScheduler(model, make_schedule("late:0.5", 0.3, 10), modules="spatial")
    assert (model[1].p, model[4].p) == (0.0, 0.5)
    model = _net()
    DropoutScheduler(model, make_schedule("late:0.5", 0.3, 10), modules=[model[6]])
    assert (model[4].p, model[6].p) == (0.5, 0.0)
    with pytest.raises(InvalidValue, match="no dropout matches"):
        DropoutScheduler(model, make_schedule("linear", 0.3, 10), modules="nothing_here")
    with pytest.raises(InvalidValue, match="has no dropout"):
        DropoutScheduler(nn.Linear(2, 2), make_schedule("linear", 0.3, 10))


def test_module_at_rate_zero_takes_the_schedule_rate() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.0))
    sched = DropoutScheduler(model, make_schedule("constant", 0.3, 10))
    assert model[1].p == pytest.approx(0.3)
    assert sched.targets == {"1": 0.3}


def test_resume_from_state_dict_continues_the_schedule() -> None:
    spec = make_schedule("cosine", 0.5, 20)
    model = _net()
    sched = DropoutScheduler(model, spec)
    for _ in range(7):
        sched.step()
    state = sched.state_dict()
    # a fresh model and scheduler (as after a restart) picks up at step 7
    model2 = _net()
    sched2 = DropoutScheduler(model2, spec)
    assert model2[4].p == 0.0
    sched2.load_state_dict(state)
    assert sched2.last_step == 7
    assert sched2.rates() == sched.rates()
    sched.step()
    sched2.step()
    assert sched2.rates() == sched.rates()
    assert model2[4].p == pytest.approx(spec.value(8))


def test_resume_with_another_schedule_is_a_resume_error() -> None:
    sched = DropoutScheduler(_net(), make_schedule("linear", 0.5, 20))
    other = DropoutScheduler(_net(), make_schedule("linear", 0.5, 30))
    with pytest.raises(ResumeError, match="same schedule"):
        other.load_state_dict(sched.state_dict())
    with pytest.raises(ResumeError, match="malformed"):
        other.load_state_dict({"step": 1})


def test_schedule_dataclass_validates_kind() -> None:
    with pytest.raises(UnknownName):
        Schedule("zigzag", 0.5, 10)


def test_scheduler_drives_third_party_and_gated_sources() -> None:
    import torch.nn.functional as F
    import torchvision

    class Gated(nn.Module):  # DenseNet-style: the rate is an attribute read in forward
        def __init__(self) -> None:
            super().__init__()
            self.drop_rate = 0.4

        def forward(self, x):  # type: ignore[no-untyped-def]
            return F.dropout(x, p=self.drop_rate, training=self.training)

    model = nn.Sequential(torchvision.ops.StochasticDepth(0.2, "row"), Gated(),
                          nn.MultiheadAttention(4, 2, dropout=0.1))
    sched = DropoutScheduler(model, make_schedule("linear", 0.5, 4))
    assert set(sched.rates()) == {"0", "1:drop_rate", "2"}
    assert sched.rates() == {"0": 0.0, "1:drop_rate": 0.0, "2": 0.0}  # step 0 of a ramp
    for _ in range(2):
        sched.step()
    # halfway up the ramp, each source at half its own target
    assert sched.rates() == pytest.approx({"0": 0.1, "1:drop_rate": 0.2, "2": 0.05})
    assert (model[0].p, model[1].drop_rate, model[2].dropout) == pytest.approx((0.1, 0.2, 0.05))
