"""Choosing among settings like a statistician: Pareto front and knee, the one-standard-error
rule, and a paired test over folds.

Pure functions over per-setting records (no Optuna, no torch), so each can be checked
against a brute-force or textbook computation.

- :func:`pareto_front`: the settings no other setting dominates (at least as good in every
  objective, strictly better in one).
- :func:`knee`: the front's point closest to the ideal point after min–max normalising each
  objective over the front (compromise programming, Zeleny 1973; one of the knee criteria
  surveyed by Branke et al. 2004, "Finding knees in multi-objective optimization").
- :func:`one_se_pick`: the one-standard-error rule (Breiman et al. 1984, CART; Hastie,
  Tibshirani & Friedman 2009, *The Elements of Statistical Learning* §7.10): among the
  settings whose CV mean is within one standard error (std over folds / √k) of the best,
  take the simplest — for dropout, the one with the least dropout (sum of its rates).
- :func:`paired_test`: every setting is trained on the same folds with the same seeds, so
  fold-wise differences between two settings are paired. Student's paired t-test, and the
  Nadeau & Bengio (2003, "Inference for the generalization error") corrected resampled
  t-test, whose variance factor ``1/k + n_test/n_train = 1/k + 1/(k−1)`` accounts for the
  overlap of the k training sets (the plain test is over-confident on CV folds).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from typing import Any

from scipy import stats as scipy_stats

Point = Sequence[float]


def _oriented(values: Point, directions: Sequence[str]) -> list[float]:
    """Every objective as 'lower is better'."""
    return [-float(v) if d == "maximize" else float(v) for v, d in zip(values, directions)]


def dominates(a: Point, b: Point, directions: Sequence[str]) -> bool:
    """``a`` is at least as good as ``b`` in every objective and strictly better in one."""
    x, y = _oriented(a, directions), _oriented(b, directions)
    return all(u <= v for u, v in zip(x, y)) and any(u < v for u, v in zip(x, y))


def pareto_front(points: Sequence[Point], directions: Sequence[str]) -> list[int]:
    """Indices of the non-dominated points, in input order (equal points all stay).

    Points with a NaN objective are never on the front.
    """
    ok = [i for i, p in enumerate(points) if all(math.isfinite(float(v)) for v in p)]
    return [i for i in ok if not any(dominates(points[j], points[i], directions)
                                     for j in ok if j != i)]


def knee(points: Sequence[Point], front: Sequence[int], directions: Sequence[str]) -> int | None:
    """The index (into ``points``) of the front's knee; ``None`` for an empty front.

    Each objective is scaled to [0, 1] over the front (0 = its best value there; an
    objective that does not vary counts 0); the knee minimises the Euclidean distance to
    the ideal point (0, …, 0). Ties go to the earlier point.
    """
    if not front:
        return None
    oriented = {i: _oriented(points[i], directions) for i in front}
    m = len(directions)
    lows = [min(oriented[i][k] for i in front) for k in range(m)]
    highs = [max(oriented[i][k] for i in front) for k in range(m)]

    def distance(i: int) -> float:
        return math.sqrt(sum(((oriented[i][k] - lows[k]) / (highs[k] - lows[k])) ** 2
                             if highs[k] > lows[k] else 0.0 for k in range(m)))

    return min(front, key=lambda i: (distance(i), front.index(i)))


def mean_se(values: Sequence[float]) -> tuple[float, float]:
    """Mean and standard error (sample std / √n; 0 for one value)."""
    vals = [float(v) for v in values]
    mean = statistics.fmean(vals)
    se = statistics.stdev(vals) / math.sqrt(len(vals)) if len(vals) > 1 else 0.0
    return mean, se


def best_index(means: Sequence[float], direction: str) -> int:
    """Index of the best mean (the first one on ties)."""
    sign = -1.0 if direction == "maximize" else 1.0
    return min(range(len(means)), key=lambda i: (sign * means[i], i))


def one_se_pick(
    fold_values: Sequence[Sequence[float]],
    direction: str,
    simplicity: Sequence[float],
) -> dict[str, Any]:
    """The one-standard-error rule over settings given their per-fold scores.

    Returns ``index`` (the pick), ``best`` (index of the best mean), ``best_mean``,
    ``best_se``, ``threshold`` (best mean ∓ one SE) and ``within`` (indices of every setting
    whose mean is within one SE of the best). The pick is the lowest ``simplicity`` among
    ``within``; ties go to the better mean.
    """
    stats = [mean_se(v) for v in fold_values]
    means = [m for m, _ in stats]
    b = best_index(means, direction)
    best_mean, best_se = stats[b]
    if direction == "maximize":
        threshold = best_mean - best_se
        within = [i for i, m in enumerate(means) if m >= threshold]
    else:
        threshold = best_mean + best_se
        within = [i for i, m in enumerate(means) if m <= threshold]
    sign = -1.0 if direction == "maximize" else 1.0
    pick = min(within, key=lambda i: (simplicity[i], sign * means[i], i))
    return {"index": pick, "best": b, "best_mean": best_mean, "best_se": best_se,
            "threshold": threshold, "within": within}


def paired_test(a: Sequence[float], b: Sequence[float], *, folds: int | None = None) -> dict[str, Any]:
    """Paired t-tests of ``a − b`` over folds (two-sided).

    ``t``/``p``: Student's paired t-test (as :func:`scipy.stats.ttest_rel`). ``t_corrected``
    /``p_corrected``: Nadeau & Bengio's corrected resampled t-test for ``folds``-fold CV
    (default ``len(a)``): ``t = mean(d) / sqrt((1/n + 1/(k−1)) · var(d))``, ``n − 1``
    degrees of freedom. Identical differences (zero variance) give ``t = ±inf, p = 0``, or
    ``t = 0, p = 1`` when they are all zero.
    """
    if len(a) != len(b):
        raise ValueError(f"paired samples differ in length ({len(a)} vs {len(b)})")
    n = len(a)
    if n < 2:
        raise ValueError("a paired test needs at least two folds")
    k = folds or n
    d = [float(x) - float(y) for x, y in zip(a, b)]
    mean = statistics.fmean(d)
    var = statistics.variance(d)
    df = n - 1

    def two_sided(t: float) -> float:
        return float(2.0 * scipy_stats.t.sf(abs(t), df))

    def t_of(scale: float) -> float:
        if var == 0.0:
            return 0.0 if mean == 0.0 else math.copysign(math.inf, mean)
        return mean / math.sqrt(scale * var)

    t_plain = t_of(1.0 / n)
    t_corr = t_of(1.0 / n + 1.0 / (k - 1))
    return {"n": n, "mean_diff": mean, "std_diff": math.sqrt(var), "t": t_plain,
            "p": two_sided(t_plain), "t_corrected": t_corr, "p_corrected": two_sided(t_corr),
            "df": df}


def ranked(indices: Sequence[int], key: Callable[[int], float], direction: str) -> list[int]:
    """``indices`` from best to worst by ``key``."""
    sign = -1.0 if direction == "maximize" else 1.0
    return sorted(indices, key=lambda i: (sign * key(i), i))
