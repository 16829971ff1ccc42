"""``droplab evaluate`` with the baselines beside MC dropout: temperature scaling stored
in the run folder and reused, a deep ensemble (and MC over it), selective-prediction
figures, and the one-line refusals (ensemble members of other classes, a damaged
temperature record, a run without a validation split)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from droplab.cli import main
from droplab.evaluate.selective import TEMPERATURE_FILE, read_temperature
from droplab.tasks.classify import ClassifyConfig, evaluate_run, run


def _train(out: Path, **kw: object) -> Path:
    base = dict(dataset="digits", model="mlp", widths=(32,), epochs=2, limit=60, seed=0,
                device="cpu", out=str(out))
    run(ClassifyConfig.build(**{**base, **kw}))
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("members")
    return [_train(root / f"m{s}", seed=s) for s in range(3)]


def test_temperature_is_stored_and_reused(runs: list[Path]) -> None:
    first = evaluate_run(runs[0], mc=4, temperature=True, device="cpu")
    stored = read_temperature(runs[0])
    assert stored is not None and set(stored) == {"deterministic", "mc"}
    assert first["temperature"] == pytest.approx(stored["deterministic"].temperature)
    assert first["ts_acc"] == first["acc"]  # a temperature never changes the argmax
    assert first["mc_ts_nll"] > 0.0 and first["mc_temperature"] > 0  # per pass, then averaged
    # fitted on validation images: it lowers the validation NLL it was fitted on
    record = json.loads((runs[0] / TEMPERATURE_FILE).read_text())
    assert record["deterministic"]["nll_after"] <= record["deterministic"]["nll_before"]
    for key in ("adaptive_ece", "aurc", "mc_aurc", "ts_aurc", "ts_adaptive_ece"):
        assert 0.0 <= first[key] <= 1.0
    assert (runs[0] / "risk_coverage.png").stat().st_size > 1000
    again = evaluate_run(runs[0], device="cpu")  # no --temperature: the stored one is used
    assert again["ts_nll"] == pytest.approx(first["ts_nll"])


def test_ensemble_and_mc_over_it(runs: list[Path]) -> None:
    out = evaluate_run(runs[0], ensemble=[str(r) for r in runs[1:]], device="cpu")
    assert out["ensemble_size"] == 3
    assert 0.5 < out["ens_acc"] <= 1.0 and out["ens_mutual_information"] > 0
    mc = evaluate_run(runs[0], mc=3, ensemble=[str(runs[1])], device="cpu")
    assert mc["ensemble_size"] == 2 and "ens_nll" in mc


def test_refusals_are_one_line(runs: list[Path], tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    other = _train(tmp_path / "five", classes=["0", "1", "2", "3", "4"])
    assert main(["evaluate", str(runs[0]), "--ensemble", str(other), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert "different classes" in err and len(err.splitlines()) == 1
    no_val = _train(tmp_path / "noval", val_fraction=0.0)
    assert main(["evaluate", str(no_val), "--temperature", "--device", "cpu"]) == 2
    assert "validation split" in capsys.readouterr().err
    (other / TEMPERATURE_FILE).write_text("{not json")
    assert main(["evaluate", str(other), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--temperature" in err and len(err.splitlines()) == 1
