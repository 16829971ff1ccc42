"""What the report computes from records (``droplab.report.views``)."""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest

from droplab.report import (
    load_run_record,
    rate_groups,
    rate_table,
    run_rate,
    sweep_settings,
    uncertainty_arrays,
)
from droplab.runs import RunDir
from report_runs import RATES, SEEDS, acc_of, make_train_run


def test_rate_table_is_mean_and_sample_std_over_seeds(tmp_path: Path) -> None:
    records = [load_run_record(make_train_run(tmp_path, p, s)) for p in RATES for s in SEEDS]
    assert [run_rate(r) for r in records] == [p for p in RATES for _ in SEEDS]
    groups = rate_groups(records)
    assert list(groups) == ["train"]  # only the seed varies besides the rate
    rows = {r["p"]: r for r in rate_table(groups)}
    assert sorted(rows) == list(RATES)
    for p in RATES:
        vals = [acc_of(p, s) for s in SEEDS]
        assert rows[p]["n"] == 3
        assert rows[p]["test_acc_mean"] == pytest.approx(statistics.fmean(vals), abs=1e-12)
        # seeds add 0, .01, .02: sample std (n - 1 in the denominator) = 0.01 exactly
        assert rows[p]["test_acc_std"] == pytest.approx(0.01, abs=1e-9)


def test_a_setting_that_varies_splits_the_series(tmp_path: Path) -> None:
    records = []
    for kind in ("dropout", "spatial"):
        for p in (0.1, 0.3):
            d = make_train_run(tmp_path / kind, p, 0)
            rec = load_run_record(d)
            rec.config["model"]["dropout_kind"] = kind
            records.append(rec)
    groups = rate_groups(records)
    assert sorted(groups) == ["train dropout_kind=dropout", "train dropout_kind=spatial"]
    assert all(sorted(g) == [0.1, 0.3] for g in groups.values())


def test_sweep_settings_and_uncertainty_arrays_are_found() -> None:
    settings = sweep_settings({"best": 0.2, "per_setting": {"p=0.1": {"p": 0.1, "cv_mean": 0.9,
                                                                       "cv_std": 0.02}}})
    assert settings == [{"setting": "p=0.1", "p": 0.1, "cv_mean": 0.9, "cv_std": 0.02}]
    assert sweep_settings({"test_acc": 0.9, "classes": ["a", "b"]}) is None
    arrays = uncertainty_arrays({"mi": {"entropy": [0.1] * 12}, "acc": 0.5, "labels": [1] * 50})
    assert list(arrays) == ["mi.entropy"]


def test_nested_config_sections_group_like_flat_ones(tmp_path: Path) -> None:
    # config.json of this release nests options by section (data/model/train/run)
    records = []
    for p in (0.1, 0.4):
        for seed in (0, 1):
            d = RunDir.create(tmp_path / f"r{p}-{seed}", "train")
            d.write_config({"data": {"dataset": "digits"}, "model": {"name": "mlp", "dropout": p},
                            "train": {"epochs": 2, "lr": 0.1},
                            "run": {"seed": seed, "out": str(d.path), "device": "cpu"}},
                           task="train")
            d.write_summary({"test_acc": 0.9 - p + 0.01 * seed})
            records.append(load_run_record(d.path))
    assert [run_rate(r) for r in records] == [0.1, 0.1, 0.4, 0.4]
    groups = rate_groups(records)
    assert list(groups) == ["train"]  # run.seed / run.out / run.device never split a series
    rows = rate_table(groups)
    assert [r["n"] for r in rows] == [2, 2]
    assert rows[1]["test_acc_mean"] == pytest.approx(0.9 - 0.4 + 0.005, abs=1e-12)
