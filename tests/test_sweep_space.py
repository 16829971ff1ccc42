"""droplab.tasks.sweep.space and the sweep config: rate specs, settings, keys, Optuna draws,
config.json of release 0.1."""

from __future__ import annotations

import math

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution

from droplab.errors import InvalidValue, UnknownName
from droplab.tasks import sweep
from droplab.tasks.sweep.space import SearchSpace, parse_rate_dim, parse_rates, simplicity


def test_parse_rates_list_and_inclusive_range() -> None:
    assert parse_rates("0, 0.25,0.5") == [0.0, 0.25, 0.5]
    assert parse_rates("0:0.5:6") == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4, 0.5])
    assert parse_rates("0.3:0.3:1") == [0.3]
    with pytest.raises(InvalidValue, match="outside"):
        parse_rates("0:1:3")  # ends at 1.0, not a drop probability
    with pytest.raises(InvalidValue, match="not a number"):
        parse_rates("0,abc")


def test_rate_specs_lists_grids_ranges_and_log_ranges() -> None:
    assert parse_rate_dim("rate", "0,0.5", "--rates").values == (0.0, 0.5)
    uni = parse_rate_dim("rate", "0:0.7", "--rates")
    assert (uni.values, uni.low, uni.high, uni.log) == (None, 0.0, 0.7, False)
    log = parse_rate_dim("rate", "log:0.01:0.5", "--rates")
    assert (log.low, log.high, log.log) == (0.01, 0.5, True)
    with pytest.raises(InvalidValue, match="LOW > 0"):
        parse_rate_dim("rate", "log:0:0.5", "--rates")
    with pytest.raises(InvalidValue, match="reversed"):
        parse_rate_dim("rate", "0.6:0.2", "--rates")
    with pytest.raises(InvalidValue, match=r"outside \[0, 1\)"):
        parse_rate_dim("rate", "0:1.5", "--input-rates")


def test_settings_are_the_product_of_every_searched_parameter() -> None:
    space = SearchSpace(rates="0,0.5", kinds=["dropout", "gaussian"], wheres=["head"],
                        input_rates="0,0.2", schedules=["constant", "linear:0.5"])
    settings = space.settings()
    assert len(settings) == space.size() == 2 * 2 * 2 * 2
    assert space.names == ["rate", "input_rate", "kind", "where", "schedule"]
    assert len({space.key(s) for s in settings}) == 16  # all distinct
    assert settings[0]["rate"] == 0.0 and settings[1]["rate"] == 0.5  # the rate varies fastest
    assert space.grid()["schedule"] == ["constant", "linear:0.5"]
    with pytest.raises(InvalidValue, match="no grid"):
        SearchSpace(rates="0:0.5").settings()


def test_keys_round_rates_and_are_none_for_partial_params() -> None:
    space = SearchSpace(rates="0.1,0.2")
    a = {"rate": 0.1, "kind": "dropout", "where": "head"}
    assert space.key(a) == space.key({**a, "rate": 0.1 + 1e-13})
    assert space.key(a) != space.key({**a, "rate": 0.2})
    assert space.key({"rate": 0.1}) is None
    assert simplicity({"rate": 0.3, "input_rate": 0.2, "kind": "dropout"}) == pytest.approx(0.5)


def test_bad_names_and_schedules_are_one_line_errors() -> None:
    with pytest.raises(UnknownName, match="unknown dropout kind 'bogus'"):
        SearchSpace(kinds=["bogus"])
    with pytest.raises(UnknownName, match="dropout schedule"):
        SearchSpace(schedules=["wobble"])
    with pytest.raises(InvalidValue, match="twice"):
        SearchSpace(kinds=["dropout", "dropout"])


def test_draws_follow_the_requested_distributions() -> None:
    # 400 random-sampler draws. Uniform on [0, 0.6]: mean 0.3, sd 0.6/√12 ≈ 0.173, so the
    # sample mean has sd 0.0087 (4σ = 0.035). Log-uniform on [0.01, 0.5]: half the mass is
    # below the geometric mean √(0.01·0.5) ≈ 0.0707; that share has sd 0.025 (4σ = 0.1).
    space = SearchSpace(rates="0:0.6", input_rates="log:0.01:0.5", kinds=["dropout", "gaussian"])
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    draws = []
    for _ in range(400):
        trial = study.ask()
        draws.append(space.suggest(trial))
        study.tell(trial, 0.0)
    t = study.trials[0]
    assert t.distributions["rate"] == FloatDistribution(0.0, 0.6)
    assert t.distributions["input_rate"] == FloatDistribution(0.01, 0.5, log=True)
    assert t.distributions["kind"] == CategoricalDistribution(["dropout", "gaussian"])
    rates = [d["rate"] for d in draws]
    assert all(0.0 <= r <= 0.6 for r in rates)
    assert abs(sum(rates) / len(rates) - 0.3) < 0.035
    below = sum(d["input_rate"] < math.sqrt(0.01 * 0.5) for d in draws) / len(draws)
    assert abs(below - 0.5) < 0.1


def test_config_json_of_release_0_1_still_reads() -> None:
    old = {"task": "sweep", "base": {"dataset": "digits", "limit": 20, "model": "mlp",
                                     "epochs": 2, "seed": 3, "out": "/x/sw", "dropout": 0.5},
           "space": {"rates": [0.0, 0.25], "kinds": ["dropout"], "wheres": ["head"]},
           "folds": 3, "objective": "nll", "storage": "sqlite:////x/sw/study.db",
           "study_name": "sweep-sw"}
    cfg = sweep.SweepConfig.from_dict(old)
    assert cfg.space.rate_values == [0.0, 0.25] and cfg.folds == 3 and cfg.objective == "nll"
    assert (cfg.data.limit, cfg.model.name, cfg.train.epochs, cfg.run.seed) == (20, "mlp", 2, 3)
    assert cfg.run.out == "/x/sw"
    # nested config.json round-trips
    again = sweep.SweepConfig.from_dict(cfg.to_dict())
    assert again.to_dict() == cfg.to_dict()
