"""``droplab inspect MODEL``: sources, prefix plan, --json, and one-line errors."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from droplab.cli import main


def _json(capsys: pytest.CaptureFixture[str]) -> dict:
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1
    return json.loads(out[0])


def test_efficientnet_b0_lists_its_stochastic_depth_and_dropout_head(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", "tv:efficientnet_b0", "--input-size", "3x32x32", "--json"]) == 0
    s = _json(capsys)
    kinds = [(r["kind"], r["origin"]) for r in s["sources"]]
    assert kinds == [("droppath", "torchvision")] * 16 + [("dropout", "torch.nn")]
    assert s["sources"][-1]["name"] == "classifier.0" and s["sources"][-1]["p"] == 0.2
    plan = s["plan"]
    # the first block has no residual connection, so its StochasticDepth is never called
    assert plan["cached"] and plan["first_stochastic"] == "features.2.1.stochastic_depth"
    assert 0 < plan["prefix_share"] < 1
    assert plan["mc30_cost_in_forwards"] == pytest.approx(
        (plan["prefix_flops"] + 30 * plan["suffix_flops"])
        / (plan["prefix_flops"] + plan["suffix_flops"]))
    # the human form is a table, one row per source
    assert main(["inspect", "tv:efficientnet_b0", "--input-size", "3x32x32"]) == 0
    text = capsys.readouterr().out
    assert text.count("stochastic_depth") >= 16 and "prefix plan:" in text


def test_timm_and_factory_models(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("timm")
    assert main(["inspect", "timm:resnet18", "--kwargs", "drop_rate=0.2,drop_path_rate=0.1",
                 "--input-size", "3x32x32", "--json"]) == 0
    s = _json(capsys)
    assert s["counts"] == {"droppath": 7, "dropout": 1}
    head = next(r for r in s["sources"] if r["kind"] == "dropout")
    assert head["mechanism"] == "gated" and head["p"] == 0.2 and head["mc"] and head["surgery"]
    # a factory without randomness: MC would refuse it, and inspect says so
    assert main(["inspect", "torchvision.models:resnet18", "--input-size", "3x32x32",
                 "--json"]) == 0
    s = _json(capsys)
    assert s["sources"] == [] and not s["plan"]["cached"] and "refuses" in s["plan"]["reason"]


def test_a_model_that_cannot_be_traced_says_why(capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import sys
    import types

    class Dynamic(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.drop, self.fc = nn.Dropout(0.5), nn.Linear(12, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = x.flatten(1)
            return self.fc(self.drop(-x if x.sum() > 0 else x))

    module = types.ModuleType("byom_factory")
    module.build = Dynamic  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "byom_factory", module)
    assert main(["inspect", "byom_factory:build", "--input-size", "3x2x2", "--json"]) == 0
    plan = _json(capsys)["plan"]
    assert not plan["cached"] and "torch.fx cannot trace" in plan["reason"]


@pytest.mark.parametrize("argv, match", [
    (["tv:resnet1000"], "tv:resnet18"),
    (["tv:resnet18", "--kwargs", "drop_rate"], "KEY=VALUE"),
    (["tv:resnet18", "--kwargs", "no_such_arg=1"], "does not take"),
    (["tv:resnet18", "--input-size", "224"], "CxHxW"),
    (["nothing_here"], "not a run folder"),
    (["no.such.module:f"], "cannot import"),
])
def test_bad_inputs_are_one_line_errors(argv: list[str], match: str,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and match in err
