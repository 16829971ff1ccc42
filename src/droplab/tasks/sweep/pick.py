"""The pick of a sweep, with its statistics: the best CV setting, the one-standard-error
pick, the Pareto front and its knee (several objectives), and a paired test over folds
between the pick and the runner-up. What ``summary.json`` holds (each setting given by its
parameters, ``rate``, ``kind``, ``where`` …):

- ``best``: the setting with the best CV mean of the first objective;
- ``one_se``: the one-standard-error pick (``best_mean``, ``best_se``, ``threshold``,
  ``n_within``: how many settings are within one SE of the best);
- ``pareto`` (several objectives): ``objectives``, ``directions``, ``front`` (the
  non-dominated settings with their CV means) and ``knee``;
- ``pick``: the setting the rule (``best``/``1se``/``knee``) chose (``rule``, ``cv_score``);
- ``paired_test``: the pick against the runner-up (the best other setting by the first
  objective), fold by fold: ``mean_diff`` (pick − runner-up), Student's ``t``/``p`` and
  Nadeau–Bengio's ``t_corrected``/``p_corrected``; ``null`` when fewer than two settings
  completed every fold.

The formulas are in :mod:`droplab.tasks.sweep.stats`.
"""

from __future__ import annotations

from typing import Any

from droplab.errors import UserError
from droplab.tasks.sweep import stats
from droplab.tasks.sweep.config import OBJECTIVE_METRIC, SweepConfig
from droplab.tasks.sweep.space import simplicity


def _setting(row: dict[str, Any], names: list[str]) -> dict[str, Any]:
    return {n: row[n] for n in names}


def choose(rows: list[dict[str, Any]], cfg: SweepConfig) -> dict[str, Any]:
    """The pick and its statistics from :func:`~droplab.tasks.sweep.results.settings_table`
    rows (only settings that completed every fold compete)."""
    names = cfg.space.names
    done = [r for r in rows if r["state"] == "complete" and r["folds_done"] == cfg.folds]
    if not done:
        raise UserError("no setting of the sweep completed every fold (all pruned or failed); "
                        "widen the search space or use --pruner none")
    metrics = [OBJECTIVE_METRIC[o] for o in cfg.objective_list]
    directions = cfg.directions
    primary, direction = metrics[0], directions[0]
    means = [r["cv"][primary]["mean"] for r in done]
    b = stats.best_index(means, direction)
    one = stats.one_se_pick([r["per_fold"][primary] for r in done], direction,
                            [simplicity(r) for r in done])
    out: dict[str, Any] = {
        "best": {**_setting(done[b], names), "trial": done[b]["trial"], "cv_score": means[b]},
        "one_se": {**_setting(done[one["index"]], names), "trial": done[one["index"]]["trial"],
                   "cv_score": means[one["index"]], "metric": primary,
                   "best_mean": one["best_mean"], "best_se": one["best_se"],
                   "threshold": one["threshold"], "n_within": len(one["within"])},
    }
    chosen = {"best": b, "1se": one["index"]}
    if cfg.multi:
        points = [[r["cv"][m]["mean"] for m in metrics] for r in done]
        front = stats.pareto_front(points, directions)
        knee = stats.knee(points, front, directions)
        assert knee is not None  # the front of a non-empty finite set is not empty
        chosen["knee"] = knee
        out["pareto"] = {
            "objectives": cfg.objective_list, "metrics": metrics, "directions": directions,
            "front": [{**_setting(done[i], names), "trial": done[i]["trial"],
                       **{m: points[i][k] for k, m in enumerate(metrics)}} for i in front],
            "knee": {**_setting(done[knee], names), "trial": done[knee]["trial"],
                     **{m: points[knee][k] for k, m in enumerate(metrics)}},
        }
    p = chosen[cfg.pick_rule]
    out["pick"] = {**_setting(done[p], names), "trial": done[p]["trial"],
                   "cv_score": means[p], "rule": cfg.pick_rule}
    others = stats.ranked([i for i in range(len(done)) if i != p], lambda i: means[i], direction)
    out["paired_test"] = None
    if others:
        r = others[0]
        test = stats.paired_test(done[p]["per_fold"][primary], done[r]["per_fold"][primary],
                                 folds=cfg.folds)
        out["paired_test"] = {"metric": primary, "pick": _setting(done[p], names),
                              "runner_up": _setting(done[r], names), **test}
    return out
