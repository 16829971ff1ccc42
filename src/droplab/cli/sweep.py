"""``droplab sweep``: choose the dropout rate by k-fold CV on an Optuna study.

Thin: options → :class:`droplab.tasks.sweep.SweepConfig` (wrapping the same
:class:`~droplab.tasks.classify.ClassifyConfig` that ``droplab train`` builds) →
:func:`droplab.tasks.sweep.run` → summary.
"""

from __future__ import annotations

import argparse
from typing import Any

from droplab.cli.common import add_run_options, emit, parse_classes, parse_rate
from droplab.cli.common import positive_int as _positive_int
from droplab.cli.common import widths as _widths
from droplab.errors import InvalidValue

#: ClassifyConfig fields set from options of the same name (dropout/kind/where are the space)
_FIELDS = (
    "dataset", "data_root", "classes", "image_size", "limit", "model", "widths",
    "input_dropout", "max_norm", "dropout_schedule", "epochs", "batch_size", "optimizer", "lr",
    "momentum", "weight_decay", "lr_schedule", "warmup_epochs", "label_smoothing", "amp",
    "channels_last", "augment",
)
#: SweepConfig fields set from options of the same name
_SWEEP = (
    "folds", "objective", "attack", "eps", "attack_steps", "attack_alpha", "attack_samples",
    "sampler", "pruner", "storage", "study_name", "workers", "heartbeat_interval",
    "grace_period", "max_retry", "oracle", "join", "threads",
)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "sweep",
        help="choose the dropout rate by k-fold cross-validation (Optuna study)",
        description="Cross-validate dropout rates × kinds × placements on the training split "
        "(stratified k-fold), then refit the pick and score it once on test. Writes "
        "study.db (or a journal), summary.json, metrics.jsonl (one line per trial) and "
        "cv_vs_rate.png, gap_vs_rate.png, robust_vs_rate.png.",
    )
    s = p.add_argument_group("search space")
    s.add_argument("--rates", default="0:0.5:6",
                   help="list 0,0.25,0.5 or range start:stop:count (default 0:0.5:6)")
    s.add_argument("--kinds", default="dropout", help="dropout kinds, comma-separated")
    s.add_argument("--wheres", default="head", help="placements: head, conv, all (comma-separated)")
    s.add_argument("--folds", type=int, default=5, help="stratified CV folds (default 5)")
    s.add_argument("--objective", default="acc", help="acc (default), nll, ece or robust")
    s.add_argument("--attack", default="fgsm", help="fgsm (default) or pgd (L∞)")
    s.add_argument("--eps", type=float, default=0.1, help="attack radius in pixel units (default 0.1)")
    s.add_argument("--attack-steps", type=int, default=10, help="PGD steps (default 10)")
    s.add_argument("--attack-alpha", type=float, default=None, help="PGD step (default 2.5·eps/steps)")
    s.add_argument("--attack-samples", type=int, default=500,
                   help="validation images attacked per fold (default 500)")
    e = p.add_argument_group("study")
    e.add_argument("--sampler", default="grid", help="grid (default) or tpe (seeded)")
    e.add_argument("--trials", dest="n_trials", type=_positive_int, default=None,
                   help="trials for tpe (default: the grid size)")
    e.add_argument("--pruner", default="none",
                   help="none (default), median or hyperband; fold i is step i")
    e.add_argument("--storage", default=None,
                   help="study URL (default sqlite:///OUT/study.db; a journal file with "
                   "--workers > 1; postgresql://… for many machines)")
    e.add_argument("--study-name", default=None, help="default sweep-<out folder name>")
    e.add_argument("--workers", type=_positive_int, default=1, help="local worker processes")
    e.add_argument("--threads", type=_positive_int, default=None,
                   help="torch threads per worker (default: CPU cores ÷ workers)")
    e.add_argument("--join", action="store_true",
                   help="join the study --study-name in --storage as a worker (another machine)")
    e.add_argument("--heartbeat-interval", type=_positive_int, default=10,
                   help="seconds between trial heartbeats (default 10)")
    e.add_argument("--grace-period", type=_positive_int, default=None,
                   help="seconds without heartbeat before a trial is retried (default 2×interval)")
    e.add_argument("--max-retry", type=int, default=3, help="retries of a lost trial (default 3)")
    e.add_argument("--oracle", action="store_true",
                   help="also train every setting on the full split and score it on test")
    d = p.add_argument_group("data, model and training (as in droplab train)")
    d.add_argument("--dataset", help="digits (default), mnist, fashion-mnist, cifar10, imagefolder:PATH")
    d.add_argument("--data-root", help="dataset folder")
    d.add_argument("--classes", type=parse_classes, help="subset of classes: 0-4, 0,2,5 or cat,dog")
    d.add_argument("--image-size", type=_positive_int, help="resize images to SIZE×SIZE")
    d.add_argument("--limit", type=_positive_int, help="at most N images per class")
    d.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None)
    d.add_argument("--model", help="classifier from the zoo (default mlp)")
    d.add_argument("--widths", type=_widths, help="layer widths, e.g. 800,800 or 32,64,128")
    d.add_argument("--input-dropout", type=parse_rate, metavar="P")
    d.add_argument("--max-norm", type=float, metavar="C")
    d.add_argument("--dropout-schedule", metavar="SPEC")
    d.add_argument("--epochs", type=_positive_int, help="epochs per fit (default 10)")
    d.add_argument("--batch-size", type=_positive_int)
    d.add_argument("--optimizer")
    d.add_argument("--lr", type=float)
    d.add_argument("--momentum", type=float)
    d.add_argument("--weight-decay", type=float)
    d.add_argument("--lr-schedule")
    d.add_argument("--warmup-epochs", type=float)
    d.add_argument("--label-smoothing", type=float)
    d.add_argument("--amp")
    d.add_argument("--channels-last", action="store_true", default=None)
    add_run_options(p)
    p.set_defaults(func=sweep_command)


def config_from_args(args: argparse.Namespace) -> Any:
    """A SweepConfig from the options (``--resume``: from the folder's config.json)."""
    from droplab.runs import RunDir
    from droplab.tasks import sweep as tune
    from droplab.tasks.classify import ClassifyConfig

    if args.resume:
        if not args.out:
            raise InvalidValue("--resume needs --out DIR, the folder of the sweep to continue")
        stored = RunDir.create(args.out, "sweep", resume=True).read_config()
        cfg = tune.config_from_dict(stored)
        cfg.workers = args.workers
        cfg.threads = args.threads or cfg.threads
        cfg.base.run.device = args.device
        cfg.base.run.out = args.out  # the folder named now, wherever it was created
        return cfg
    values: dict[str, Any] = {}
    for name in _FIELDS:
        value = getattr(args, name)
        if value is not None:
            values[name] = ("on" if value else "off") if name == "augment" else value
    values.update(seed=args.seed, device=args.device, out=args.out, val_fraction=0.0)
    base = ClassifyConfig.build(**values)
    space = tune.SearchSpace(rates=tune.parse_rates(args.rates),
                             kinds=tune.parse_names(args.kinds),
                             wheres=tune.parse_names(args.wheres))
    return tune.SweepConfig(base=base, space=space, n_trials=args.n_trials,
                            **{k: getattr(args, k) for k in _SWEEP})


def sweep_command(args: argparse.Namespace) -> int:
    from droplab.tasks import sweep as tune

    cfg = config_from_args(args)
    summary = tune.run(cfg, resume=args.resume)
    if summary.get("joined"):
        emit(summary, args)
        return 0
    metric = tune.OBJECTIVE_METRIC[cfg.objective]
    lines = [f"{'rate':>6} {'kind':>9} {'where':>5}  CV {metric} (mean ± std)  state"]
    for r in summary["settings"]:
        cv = r.get("cv", {}).get(metric, {"mean": float("nan"), "std": float("nan")})
        lines.append(f"{r['rate']:>6.3g} {r['kind']:>9} {r['where']:>5}  "
                     f"{cv['mean']:.4f} ± {cv['std']:.4f}  {r['state']}")
    pick = summary["pick"]
    lines.append(f"pick: rate {pick['rate']:g} ({pick['kind']} @ {pick['where']}), test accuracy "
                 f"{summary['test_acc']:.4f}; run folder {summary['run_dir']}")
    emit(summary, args, "\n".join(lines))
    return 0
