"""The prefix plan: where it splits, that the prefix runs once, and why it cannot be wrong."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from droplab import functional as DF
from droplab.surgery import add_dropconnect, add_dropout
from droplab.uncertainty import mc_mode, mc_predict, prefix_plan
from droplab.uncertainty.plan import plan_for

X = torch.randn(6, 3, 8, 8, generator=torch.Generator().manual_seed(3))


def _gen(seed: int = 7) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Dropout(0.5),
                         nn.Linear(32, 4)).eval()


def _cached_equals_uncached(model: nn.Module, x: torch.Tensor, T: int = 6) -> torch.Tensor:
    a = mc_predict(model, x, T, reduce="none", generator=_gen())
    b = mc_predict(model, x, T, reduce="none", generator=_gen(), cache_prefix=False)
    assert torch.allclose(a, b, atol=1e-6)
    return a


def test_prefix_plan_splits_at_first_dropout() -> None:
    plan = prefix_plan(_net(), X)
    assert plan is not None and plan.first_stochastic == "5"
    assert (plan.n_prefix, plan.n_suffix) == (5, 2)  # conv,bn,relu,pool,flatten | drop,linear
    assert plan.frontier == ["_4"]  # fx node names: the Flatten output is cached


def test_resnet18_backbone_runs_once_per_batch() -> None:
    model = torchvision.models.resnet18(weights=None, num_classes=5)
    add_dropout(model, "head", p=0.5)
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    plan = prefix_plan(model, x)
    assert plan is not None and plan.first_stochastic == "fc" and plan.n_suffix == 1
    calls = {"conv1": 0, "fc": 0}
    hooks = [getattr(model, n).register_forward_hook(
        lambda *_, n=n: calls.__setitem__(n, calls[n] + 1)) for n in calls]
    mc_predict(model, x, 8, chunk_size=1)  # the plan is cached: no checking pass now
    for h in hooks:
        h.remove()
    assert calls == {"conv1": 1, "fc": 8}
    _cached_equals_uncached(model, x)
    # surgery re-traces: DropConnect in the first conv makes it all stochastic
    add_dropconnect(model, 0.2, where="conv1")
    plan2 = prefix_plan(model, x)
    assert plan2 is not None and plan2.first_stochastic == "conv1"


def test_reassigned_parameter_and_changed_rate_invalidate_the_plan() -> None:
    model = _net()
    before = _cached_equals_uncached(model, X)
    model[6].weight = nn.Parameter(torch.randn_like(model[6].weight))
    after = _cached_equals_uncached(model, X)  # a stale plan would keep the old weight
    assert not torch.allclose(before, after)
    with mc_mode(model):
        plan_a = plan_for(model, X)[0]
    model[5].p = 0.2
    with mc_mode(model):
        plan_b = plan_for(model, X)[0]
    assert plan_a is not plan_b


class _GreyToRgb(nn.Module):
    """Shape-only control flow and a hasattr probe, as in droplab's torchvision wrapper."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1))
        self.drop, self.fc = nn.Dropout(0.5), nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        out = self.body(x)
        if hasattr(out, "logits"):  # torch.fx alone would record a failing getattr
            out = out.logits
        return self.fc(self.drop(torch.flatten(out, 1)))


@pytest.mark.parametrize("channels", [1, 3])
def test_shape_branches_and_hasattr_probes_trace(channels: int) -> None:
    model = _GreyToRgb().eval()
    x = torch.randn(4, channels, 8, 8)
    plan = prefix_plan(model, x)
    assert plan is not None and plan.first_stochastic == "drop"
    _cached_equals_uncached(model, x)


class _Dynamic(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(192, 3)
        self.drop = nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        if x.sum() > 0:
            x = -x
        return self.fc(self.drop(x))


def test_untraceable_model_falls_back_with_one_line_reason() -> None:
    model = _Dynamic().eval()
    assert prefix_plan(model, X) is None
    with pytest.warns(UserWarning, match="full passes of _Dynamic: torch.fx cannot trace") as w:
        a = mc_predict(model, X, 5, reduce="none", generator=_gen())
    assert "\n" not in str(w[0].message)
    b = mc_predict(model, X, 5, reduce="none", generator=_gen(), cache_prefix=False)
    assert torch.equal(a, b) and not torch.equal(a[0], a[1])


class _Interleaved(nn.Module):
    """The suffix reads ``a`` before a prefix op mutates it in place: a split cannot be
    right, so the plan's check must reject it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.drop, self.fc = nn.Conv2d(3, 4, 3), nn.Dropout(0.5), nn.Linear(144, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.conv(x)
        s = self.drop(a)
        b = torch.relu_(a)
        return self.fc((s + b).flatten(1))


def test_a_plan_that_disagrees_with_the_model_is_discarded() -> None:
    model = _Interleaved().eval()
    with mc_mode(model):
        plan, why = plan_for(model, X)
    assert plan is None and "does not reproduce the model" in why
    with pytest.warns(UserWarning, match="does not reproduce"):
        _cached_equals_uncached(model, X)


class _Functional(nn.Module):
    """Dropout as droplab.functional / F.dropout calls in forward, not as modules."""

    def __init__(self, fn: str) -> None:
        super().__init__()
        self.fn = fn
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(144, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.conv(x)).flatten(1)
        h = DF.dropout(h, 0.5) if self.fn == "droplab" else F.dropout(h, 0.5, training=True)
        return self.fc(h)


@pytest.mark.parametrize("fn", ["droplab", "torch"])
def test_functional_dropout_is_found_and_cached(fn: str) -> None:
    model = _Functional(fn).eval()
    plan = prefix_plan(model, X)
    assert plan is not None and plan.first_stochastic == "dropout"
    assert plan.n_prefix == 3  # conv, relu, flatten run once
    probs = _cached_equals_uncached(model, X)
    assert not torch.equal(probs[0], probs[1])


def test_parameters_read_in_the_suffix_stay_live() -> None:
    class Tokens(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.cls = nn.Parameter(torch.randn(1, 1, 4))
            self.embed, self.drop, self.head = nn.Linear(8, 4), nn.Dropout(0.5), nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            t = self.drop(self.embed(x))
            t = torch.cat([self.cls.expand(t.shape[0], -1, -1), t], dim=1)
            return self.head(t[:, 0] + t[:, 1:].mean(1))

    model = Tokens().eval()
    x = torch.randn(3, 5, 8)
    plan = prefix_plan(model, x)
    assert plan is not None and "cls" not in " ".join(plan.frontier)
    before = _cached_equals_uncached(model, x)
    with torch.no_grad():
        model.cls.add_(1.0)  # an in-place update (load_state_dict) needs no re-trace
    after = _cached_equals_uncached(model, x)
    assert not torch.allclose(before, after)


def test_unpacked_shapes_trace_with_an_example() -> None:
    class Repeat(nn.Module):  # droplab's grey-to-RGB adapter in finetune runs
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.expand(-1, 3, *x.shape[2:])

    model = nn.Sequential(Repeat(), nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Dropout(0.5),
                          nn.Linear(144, 2)).eval()
    x = torch.randn(4, 1, 8, 8)
    plan = prefix_plan(model, x)
    assert plan is not None and plan.first_stochastic == "3"
    _cached_equals_uncached(model, x)
