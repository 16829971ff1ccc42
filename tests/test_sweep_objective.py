"""droplab.tasks.sweep.objective: a setting → model and loop options, separate conv rates,
and scoring between epochs (for pruning) that changes no result."""

from __future__ import annotations

import dataclasses
import types
from pathlib import Path

import pytest
import torch

from droplab.errors import InvalidValue
from droplab.models import build_model
from droplab.surgery import find_dropout
from droplab.tasks import sweep
from droplab.tasks.sweep import objective


def _cfg(tmp_path: Path, **kw: object) -> sweep.SweepConfig:
    options: dict[str, object] = dict(dataset="digits", limit=20, model="mlp", epochs=3,
                                      device="cpu", out=str(tmp_path / "o"), folds=2,
                                      rates="0,0.4", attack_samples=20)
    return sweep.SweepConfig.build(**{**options, **kw})


def test_a_setting_overrides_the_base_dropout_and_only_schedules_what_has_dropout(
    tmp_path: Path,
) -> None:
    cfg = _cfg(tmp_path, input_dropout=0.1, max_norm=3.0, dropout_schedule="linear:0.5")
    params = {"rate": 0.4, "kind": "gaussian", "where": "head"}
    model, train = objective.setting_configs(cfg, params)
    assert (model.dropout, model.dropout_kind, model.input_dropout, model.max_norm) == \
        (0.4, "gaussian", 0.1, 3.0)
    assert train.dropout_schedule == "linear:0.5" and train.dropout_p == 0.4
    _, train = objective.setting_configs(cfg, {**params, "schedule": "constant"})
    assert train.dropout_schedule is None and train.dropout_p is None
    model, train = objective.setting_configs(cfg, {**params, "rate": 0.0, "input_rate": 0.0})
    assert model.input_dropout == 0.0 and train.dropout_schedule is None  # nothing to schedule
    _, train = objective.setting_configs(cfg, {**params, "schedule": "early:0.2"})
    assert train.dropout_schedule == "early:0.2"


def test_conv_blocks_get_their_own_rate_and_the_weights_of_an_ordinary_build(
    tmp_path: Path,
) -> None:
    cfg = _cfg(tmp_path, model="lenet", conv_rates="0.1", input_dropout=0.05)
    params = {"rate": 0.5, "conv_rate": 0.1, "kind": "dropout", "where": "head"}
    mcfg, _ = objective.setting_configs(cfg, params)
    torch.manual_seed(7)
    model = objective.build_setting_model(mcfg, params, (1, 8, 8), 10)
    after = torch.rand(1)
    rates = {d.name: float(d.module.p) for d in find_dropout(model)}
    assert rates.pop("head_drop") == 0.5
    first = min(rates)  # the input layer comes first in the conv stack
    assert rates.pop(first) == 0.05
    assert rates and set(rates.values()) == {0.1}  # every conv block
    torch.manual_seed(7)
    plain = build_model(dataclasses.replace(mcfg, dropout=0.5, dropout_where="all"), (1, 8, 8), 10)
    assert torch.rand(1) == after  # the probe builds drew nothing from the global RNG
    for (n, a), (_, b) in zip(model.state_dict().items(), plain.state_dict().items()):
        assert torch.equal(a, b), n


def test_a_model_without_conv_blocks_refuses_conv_rates(tmp_path: Path) -> None:
    with pytest.raises(InvalidValue, match="inconsistent"):
        _cfg(tmp_path, conv_rates="0,0.2")  # mlp


def test_scoring_between_epochs_changes_no_result(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    prep = objective.Prepared(cfg)
    tr, va = prep.folds[0]
    params = {"rate": 0.4, "kind": "dropout", "where": "head"}
    seen: list[tuple[int, float]] = []
    plain = objective.train_and_score(prep, params, tr, prep.bundle.train, va, 11)
    hooked = objective.train_and_score(prep, params, tr, prep.bundle.train, va, 11,
                                       on_epoch=lambda e, m: seen.append((e, m["acc"])))
    assert [e for e, _ in seen] == [0, 1]  # every epoch but the last (scored once, after)
    for k in ("acc", "nll", "ece", "robust_acc", "train_acc"):
        assert hooked[k] == plain[k], k


def test_a_grid_point_two_workers_started_counts_once(tmp_path: Path) -> None:
    """Two workers can start the same grid point when one read the study before the other's
    parameters were stored; the claim (checked at the start and again at the end of a
    trial) lets exactly one of them count: the lower trial number, or the one that finished."""
    import optuna

    cfg = _cfg(tmp_path)
    claim = objective.Objective(types.SimpleNamespace(cfg=cfg))._claim_grid_point

    def started(study: optuna.Study, rate: float) -> tuple[optuna.Trial, dict]:
        params = {"rate": rate, "kind": "dropout", "where": "head"}
        assert set(params) == set(cfg.space.names)
        trial = study.ask()
        for name, value in params.items():
            trial.suggest_categorical(name, [value])
        return trial, params

    study = optuna.create_study()
    (a, pa), (b, pb) = started(study, 0.4), started(study, 0.4)
    claim(a, pa)  # both running: the earlier trial goes on
    with pytest.raises(objective.Surplus):
        claim(b, pb)
    assert study.trials[b.number].user_attrs[sweep.progress.SURPLUS]

    c, pc = started(study, 0.4)
    study.tell(a, 1.0)  # a finished: a later start of the same point does not count
    with pytest.raises(objective.Surplus):
        claim(c, pc)

    # a running trial already marked surplus (it is on its way out) holds nothing
    fresh = optuna.create_study()
    (x, _), (y, py) = started(fresh, 0.2), started(fresh, 0.2)
    x.set_user_attr(sweep.progress.SURPLUS, True)
    claim(y, py)
