"""``droplab train`` and ``droplab evaluate``: thin wrappers over :mod:`droplab.tasks.classify`.

Training options default to ``None`` here so that the one set of defaults lives in
:class:`~droplab.tasks.classify.ClassifyConfig`; with ``--resume`` every option not given
on the command line is taken from the run's ``config.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from droplab.cli.common import add_run_options, emit, parse_classes, parse_rate
from droplab.errors import InvalidValue


def _widths(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.replace("x", ",").split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--widths takes integers like 512,256, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"--widths takes positive integers like 512,256, got {text!r}")
    return values


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


#: argparse dest → ClassifyConfig field (same name unless listed)
_FIELDS = (
    "dataset", "data_root", "classes", "image_size", "limit", "model", "widths", "dropout",
    "dropout_kind", "dropout_where", "input_dropout", "max_norm", "dropout_schedule", "epochs",
    "batch_size", "optimizer", "lr", "momentum", "weight_decay", "lr_schedule", "warmup_epochs",
    "label_smoothing", "amp", "channels_last", "checkpoint_every", "val_fraction", "augment",
    "tensorboard",
)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "train",
        help="train an image classifier with dropout",
        description="Train a classifier (digits, mnist, fashion-mnist, cifar10, "
        "imagefolder:PATH) with dropout; writes a run folder with config.json, "
        "metrics.jsonl, checkpoint.pt, summary.json and learning_curves.png. "
        "Under torchrun --nproc-per-node N -m droplab train … it trains data-parallel.",
    )
    d = p.add_argument_group("data")
    d.add_argument("--dataset", help="digits (default), mnist, fashion-mnist, cifar10, imagefolder:PATH")
    d.add_argument("--data-root", help="dataset folder (default $DROPLAB_DATA or ~/.cache/droplab/data)")
    d.add_argument("--classes", type=parse_classes, help="subset of classes: 0-4, 0,2,5 or cat,dog")
    d.add_argument("--image-size", type=_positive_int, help="resize images to SIZE×SIZE")
    d.add_argument("--limit", type=_positive_int, help="at most N images per class (quick runs)")
    d.add_argument("--val-fraction", type=float, help="stratified validation share (default 0.1)")
    d.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                   help="random crops (+flips for colour); default: on for colour images")
    m = p.add_argument_group("model and dropout")
    m.add_argument("--model", help="classifier from the zoo (default mlp)")
    m.add_argument("--widths", type=_widths, help="layer widths, e.g. 800,800 (MLP) or 32,64,128")
    m.add_argument("--dropout", type=parse_rate, metavar="P", help="drop probability (default 0.5)")
    m.add_argument("--dropout-kind", help="dropout, spatial, gaussian, alpha, dropblock, droppath, concrete")
    m.add_argument("--dropout-where", help="head (default), conv or all")
    m.add_argument("--input-dropout", type=parse_rate, metavar="P", help="drop probability on the input")
    m.add_argument("--max-norm", type=float, metavar="C", help="cap each unit's weight norm at C")
    m.add_argument("--dropout-schedule", metavar="SPEC",
                   help="constant, linear[:F], cosine[:F], curriculum[:R], early[:F], late[:F]")
    t = p.add_argument_group("training")
    t.add_argument("--epochs", type=_positive_int, help="default 10")
    t.add_argument("--batch-size", type=_positive_int, help="global batch size (default 32)")
    t.add_argument("--optimizer", help="sgd (Nesterov, default) or adamw")
    t.add_argument("--lr", type=float, help="learning rate (default 0.05 sgd, 0.001 adamw)")
    t.add_argument("--momentum", type=float, help="SGD momentum (default 0.9)")
    t.add_argument("--weight-decay", type=float, help="default 5e-4 sgd, 0.01 adamw")
    t.add_argument("--lr-schedule", help="cosine (default), onecycle or constant; per batch")
    t.add_argument("--warmup-epochs", type=float, help="linear LR warm-up (default 0)")
    t.add_argument("--label-smoothing", type=float, help="default 0")
    t.add_argument("--amp", help="auto (default: bf16/fp16 on CUDA), off, bf16, fp16")
    t.add_argument("--channels-last", action="store_true", default=None,
                   help="channels_last memory format (faster convnets)")
    t.add_argument("--checkpoint-every", type=int, metavar="STEPS",
                   help="also checkpoint every STEPS batches inside an epoch")
    t.add_argument("--tensorboard", action="store_true", default=None,
                   help="log to RUN/tensorboard (needs the tensorboard package)")
    add_run_options(p)
    p.set_defaults(func=train_command, seed=None)  # None: 0, or the resumed run's seed

    e = subparsers.add_parser(
        "evaluate",
        help="evaluate a trained run: accuracy, NLL, ECE, Brier, MC dropout, OOD",
        description="Evaluate a `droplab train` run folder on its test split; writes "
        "reliability.png, confusion.png and evaluation.json into the folder.",
    )
    e.add_argument("run", metavar="RUN", help="run folder of droplab train")
    e.add_argument("--mc", type=int, default=0, metavar="T",
                   help="also run T Monte-Carlo-dropout passes (e.g. 30)")
    e.add_argument("--ood", metavar="DATASET",
                   help="out-of-distribution set (e.g. fashion-mnist, imagefolder:PATH): AUROC")
    e.add_argument("--data-root", help="dataset folder (default: the run's)")
    e.add_argument("--batch-size", type=_positive_int, default=256)
    e.add_argument("--limit", type=_positive_int, help="at most N test images per class")
    e.add_argument("--seed", type=int, default=0, help="seed of the MC passes (default 0)")
    e.add_argument("--device", default="auto", help="auto|cpu|cuda|mps (default auto)")
    e.add_argument("--json", action="store_true", help="print the result as one JSON object")
    e.set_defaults(func=evaluate_command)


def config_from_args(args: argparse.Namespace) -> Any:
    """Build the ClassifyConfig: given options, else the resumed run's, else defaults."""
    from droplab.runs import RunDir
    from droplab.tasks.classify import ClassifyConfig

    values: dict[str, Any] = {}
    if args.resume:
        if not args.out:
            raise InvalidValue("--resume needs --out RUN_DIR, the folder of the run to continue")
        stored = RunDir.create(args.out, "train", resume=True).read_config()
        names = {f.name for f in dataclasses.fields(ClassifyConfig)}
        values.update({k: v for k, v in stored.items() if k in names})
    for name in _FIELDS:
        value = getattr(args, name)
        if value is not None:
            values[name] = ("on" if value else "off") if name == "augment" else value
    if args.seed is not None:
        values["seed"] = args.seed
    values.update(device=args.device, out=args.out)
    return ClassifyConfig(**values)


def train_command(args: argparse.Namespace) -> int:
    from droplab.tasks.classify import run

    cfg = config_from_args(args)
    summary = run(cfg, resume=args.resume)
    from droplab.train import distributed_env

    env = distributed_env()
    if env is not None and env[0] != 0:
        return 0  # only rank 0 prints
    human = (
        f"test accuracy {summary['test_acc']:.4f} (NLL {summary['test_loss']:.4f}, "
        f"ECE {summary['test_ece']:.4f}) after {summary['epochs']} epochs "
        f"in {summary['time_s']:.1f} s; run folder {summary['run_dir']}"
    )
    emit(summary, args, human)
    return 0


def evaluate_command(args: argparse.Namespace) -> int:
    from droplab.tasks.classify import evaluate_run

    if args.mc < 0:
        raise InvalidValue(f"--mc must be >= 0 Monte-Carlo passes, got {args.mc}")
    out = evaluate_run(args.run, mc=args.mc, ood=args.ood, device=args.device,
                       data_root=args.data_root, batch_size=args.batch_size, limit=args.limit,
                       seed=args.seed)
    lines = [f"accuracy {out['acc']:.4f}  NLL {out['nll']:.4f}  ECE {out['ece']:.4f}  "
             f"Brier {out['brier']:.4f}  ({out['test_images']} test images)"]
    if "mc_acc" in out:
        lines.append(
            f"MC dropout T={out['mc_samples']}: accuracy {out['mc_acc']:.4f}  NLL {out['mc_nll']:.4f}  "
            f"ECE {out['mc_ece']:.4f}  entropy {out['mc_entropy']:.4f}  "
            f"mutual information {out['mc_mutual_information']:.4f}"
        )
    if "ood_dataset" in out:
        lines.append(
            f"OOD vs {out['ood_dataset']}: AUROC {out['ood_auroc_mutual_information']:.4f} by "
            f"mutual information, {out['ood_auroc_max_prob']:.4f} by max probability"
        )
    lines.append(f"figures: {', '.join(out['figures'])}")
    emit(out, args, "\n".join(lines))
    return 0
