"""``droplab sweep`` (:mod:`droplab.tasks.sweep`): its parser is generated from
:class:`~droplab.tasks.sweep.SweepConfig`; ``--out RUN --resume`` starts from the folder's
stored ``config.json``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from droplab.cli.options import Command
from droplab.tasks import sweep


def _fmt(x: Any) -> str:
    return "nan" if x is None else f"{x:.4f}"


def _human(s: Mapping[str, Any]) -> str:
    if s.get("joined"):
        return (f"joined study {s['study_name']}: {s['trials_run_here']} trials run here; "
                f"study done: {s['study_done']}")
    metric = sweep.OBJECTIVE_METRIC[s["objective"]]
    gan = s.get("sweep_task") == "gan"
    over = f"held-out {metric} over seeds" if gan else f"CV {metric}"
    lines = [f"{'rate':>7} {'kind':>9} {'where':>6}  {over} (mean ± std)  state"]
    for r in s["settings"]:
        cv = r.get("cv", {}).get(metric, {"mean": None, "std": None})
        extra = "".join(f"  {k}={r[k]}" for k in ("input_rate", "conv_rate", "schedule") if k in r)
        lines.append(f"{float(r['rate']):>7.3g} {r['kind']:>9} {r['where']:>6}  "
                     f"{_fmt(cv['mean'])} ± {_fmt(cv['std'])}  {r['state']}{extra}")
    one = s["one_se"]
    lines.append(f"best: rate {float(s['best']['rate']):g} (CV {s['best']['cv_score']:.4f}); "
                 f"one-SE pick: rate {float(one['rate']):g} ({one['n_within']} settings within "
                 f"{one['best_se']:.4f} of the best)")
    if "pareto" in s:
        front = ", ".join(f"{float(f['rate']):.3g}" for f in s["pareto"]["front"])
        lines.append(f"Pareto front ({', '.join(s['objectives'])}): rates {front}; knee "
                     f"rate {float(s['pareto']['knee']['rate']):.3g}")
    t = s.get("paired_test")
    if t:
        lines.append(f"pick vs runner-up (rate {float(t['runner_up']['rate']):g}): "
                     f"{t['metric']} difference {t['mean_diff']:+.4f} over {t['n']} folds, "
                     f"p = {t['p']:.3g} (Nadeau–Bengio corrected {t['p_corrected']:.3g})")
    pick = s["pick"]
    tested = (f"refit with a fresh seed: {metric} {s[f'test_{metric}']:.4f} on the other "
              "held-out half" if gan else f"test accuracy {s['test_acc']:.4f}")
    lines.append(f"pick ({pick['rule']}): rate {float(pick['rate']):g} ({pick['kind']} @ "
                 f"{pick['where']}), {tested}; run folder {s['run_dir']}")
    lines.append(f"browse the study: {s['dashboard']}")
    return "\n".join(lines)


SWEEP = Command(
    "sweep", sweep.SweepConfig, sweep.run, task=sweep.TASK, human=_human,
    help="choose the dropout rate by k-fold cross-validation (Optuna study)",
    description="Cross-validate dropout rates × kinds × placements (× schedules) on the "
    "training split (stratified k-fold) with one or several objectives, pick a setting "
    "(best, one-standard-error rule, or the Pareto knee) and test it against the "
    "runner-up fold by fold, then refit the pick and score it once on test. Writes "
    "study.db (or a journal), summary.json, metrics.jsonl (one line per trial) and "
    "cv_vs_rate.png, gap_vs_rate.png, robust_vs_rate.png (+ pareto_front.png). With "
    "--task gan the rates are a GAN's discriminator dropout, each fold a seed, scored by "
    "FID, KID, modes or KL against held-out real images (cv_vs_rate.png only).",
)


def register(subparsers: Any) -> None:
    SWEEP.register(subparsers)
