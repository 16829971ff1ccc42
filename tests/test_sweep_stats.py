"""droplab.tasks.sweep.stats against brute force, Optuna's own Pareto front, scipy and the
textbook formulas (Nadeau & Bengio 2003; Hastie, Tibshirani & Friedman 2009 §7.10)."""

from __future__ import annotations

import math
import random

import numpy as np
import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState
from scipy import stats as scipy_stats

from droplab.tasks.sweep import stats


def _brute_front(points: np.ndarray, directions: list[str]) -> list[int]:
    """Textbook definition, vectorised: i is dominated if some j is <= everywhere and < once
    (objectives turned to minimisation)."""
    sign = np.array([-1.0 if d == "maximize" else 1.0 for d in directions])
    q = points * sign
    le = (q[:, None, :] <= q[None, :, :]).all(-1)  # le[j, i]: j no worse than i everywhere
    lt = (q[:, None, :] < q[None, :, :]).any(-1)
    dominated = (le & lt).any(0)
    return [i for i in range(len(q)) if not dominated[i]]


@pytest.mark.parametrize("case", range(200))
def test_pareto_front_equals_the_brute_force_definition(case: int) -> None:
    rng = np.random.default_rng(case)
    n, m = int(rng.integers(1, 30)), int(rng.integers(2, 4))
    points = rng.integers(0, 6, size=(n, m)).astype(float)  # a coarse grid: many ties
    directions = [random.Random(case * 7 + k).choice(["maximize", "minimize"]) for k in range(m)]
    assert stats.pareto_front(points.tolist(), directions) == _brute_front(points, directions)


def test_pareto_front_equals_optunas_best_trials() -> None:
    rng = np.random.default_rng(1)
    points = rng.random((40, 2)).round(2)
    directions = ["maximize", "minimize"]
    study = optuna.create_study(directions=directions)
    for p in points:
        study.add_trial(optuna.create_trial(state=TrialState.COMPLETE, values=list(p),
                                            params={"x": 0.1},
                                            distributions={"x": FloatDistribution(0, 1)}))
    ours = stats.pareto_front(points.tolist(), directions)
    assert ours == sorted(t.number for t in study.best_trials)


def test_points_with_nan_are_never_on_the_front() -> None:
    pts = [[0.9, 0.1], [math.nan, 0.0], [0.8, 0.2]]
    assert stats.pareto_front(pts, ["maximize", "minimize"]) == [0]


def test_knee_is_the_front_point_nearest_the_ideal_after_scaling() -> None:
    pts = [[0.0, 1.0], [0.1, 0.4], [1.0, 0.0]]  # both minimised
    front = stats.pareto_front(pts, ["minimize", "minimize"])
    assert front == [0, 1, 2]
    assert stats.knee(pts, front, ["minimize", "minimize"]) == 1
    # min–max normalisation: rescaling or shifting one objective does not move the knee
    scaled = [[x * 1000 + 7, y] for x, y in pts]
    assert stats.knee(scaled, front, ["minimize", "minimize"]) == 1
    # maximising the negated objective is the same problem
    flipped = [[-x, y] for x, y in pts]
    assert stats.knee(flipped, front, ["maximize", "minimize"]) == 1
    assert stats.knee(pts, [], ["minimize", "minimize"]) is None


def test_one_standard_error_rule_takes_the_simplest_setting_within_one_se() -> None:
    # rates 0, 0.2, 0.5: the best mean is rate 0.5 (0.91, std 0.01 over 3 folds, SE 0.00577);
    # rate 0.2 (0.905) is within one SE, rate 0 (0.900) is not
    folds = [[0.899, 0.900, 0.901], [0.904, 0.905, 0.906], [0.900, 0.910, 0.920]]
    out = stats.one_se_pick(folds, "maximize", simplicity=[0.0, 0.2, 0.5])
    assert out["best"] == 2 and out["index"] == 1
    assert out["best_se"] == pytest.approx(0.01 / math.sqrt(3))
    assert out["threshold"] == pytest.approx(0.91 - 0.01 / math.sqrt(3))
    assert out["within"] == [1, 2]
    # minimised metrics (ECE, NLL) mirror it
    mirrored = [[1 - v for v in f] for f in folds]
    assert stats.one_se_pick(mirrored, "minimize", [0.0, 0.2, 0.5])["index"] == 1
    # a wide SE lets the simplest setting in
    wide = [[0.88, 0.90, 0.92], [0.9, 0.9, 0.9], [0.85, 0.91, 0.97]]
    assert stats.one_se_pick(wide, "maximize", [0.0, 0.2, 0.5])["index"] == 0


def test_paired_t_test_equals_scipy_and_the_corrected_test_follows_nadeau_bengio() -> None:
    a = [0.91, 0.93, 0.90, 0.94, 0.92]
    b = [0.90, 0.91, 0.90, 0.92, 0.90]
    out = stats.paired_test(a, b, folds=5)
    ref = scipy_stats.ttest_rel(a, b)
    assert out["t"] == pytest.approx(float(ref.statistic), rel=1e-12)
    assert out["p"] == pytest.approx(float(ref.pvalue), rel=1e-9)
    d = np.array(a) - np.array(b)
    t_nb = d.mean() / math.sqrt((1 / 5 + 1 / 4) * d.var(ddof=1))  # n_test/n_train = 1/(k-1)
    assert out["t_corrected"] == pytest.approx(t_nb, rel=1e-12)
    assert out["p_corrected"] == pytest.approx(2 * scipy_stats.t.sf(abs(t_nb), 4), rel=1e-9)
    assert abs(out["t_corrected"]) < abs(out["t"]) and out["p_corrected"] > out["p"]
    assert out["mean_diff"] == pytest.approx(0.014)


def test_paired_test_of_constant_differences() -> None:
    same = stats.paired_test([0.9, 0.8, 0.7], [0.9, 0.8, 0.7])
    assert same["t"] == 0.0 and same["p"] == 1.0
    shifted = stats.paired_test([1.5, 2.5, 3.5], [1.0, 2.0, 3.0])  # exact binary fractions
    assert shifted["t"] == math.inf and shifted["p"] == 0.0
    with pytest.raises(ValueError, match="length"):
        stats.paired_test([0.1, 0.2], [0.1])
