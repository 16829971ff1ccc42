"""``droplab finetune``: transfer learning with a dropout head."""

from __future__ import annotations

import argparse

from droplab.cli.common import add_run_options, emit, parse_classes, parse_rate


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "finetune",
        help="fine-tune a pretrained backbone with a dropout head",
        description="Fine-tune a pretrained backbone (a droplab run, a torchvision or a timm "
        "model) on a dataset with a fresh dropout head.",
    )
    src = p.add_argument_group("pretrained source (one of)")
    src.add_argument("--from", dest="from_run", metavar="RUN", help="a droplab train run folder")
    src.add_argument("--backbone", help="tv:NAME (torchvision) or timm:NAME")
    src.add_argument("--weights", default=None,
                     help="default (the weights enum's default), none, or a state-dict path")
    d = p.add_argument_group("data")
    d.add_argument("--dataset", default="digits")
    d.add_argument("--data-root", default=None)
    d.add_argument("--classes", default=None, help="subset, e.g. 5-9 or cat,dog")
    d.add_argument("--image-size", type=int, default=None)
    d.add_argument("--labels-per-class", type=int, default=None, metavar="K",
                   help="train on a balanced, seeded subset of K labels per class")
    d.add_argument("--val-fraction", type=float, default=0.1)
    m = p.add_argument_group("head and strategy")
    m.add_argument("--strategy", default="gradual",
                   help="linear-probe | full | gradual | scratch (default gradual)")
    m.add_argument("--dropout", type=parse_rate, default=0.5, help="head dropout rate")
    m.add_argument("--dropout-kind", default="dropout")
    m.add_argument("--hidden", type=int, default=None, help="hidden width of the head")
    m.add_argument("--drop-path", type=parse_rate, default=0.0,
                   help="add DropPath after the backbone's blocks")
    m.add_argument("--dropblock", type=parse_rate, default=0.0,
                   help="add DropBlock after the backbone's convolutions")
    m.add_argument("--freeze-bn", action="store_true", help="keep backbone BatchNorm in eval mode")
    m.add_argument("--lr-decay", type=float, default=0.3,
                   help="learning-rate factor per stage going down (discriminative LRs)")
    t = p.add_argument_group("training")
    t.add_argument("--epochs", type=int, default=6)
    t.add_argument("--batch-size", type=int, default=64)
    t.add_argument("--optimizer", default="adamw")
    t.add_argument("--lr", type=float, default=None)
    t.add_argument("--weight-decay", type=float, default=None)
    t.add_argument("--lr-schedule", default="cosine")
    add_run_options(p)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from droplab.tasks.finetune import FinetuneConfig, parse_weights, run

    cfg = FinetuneConfig(
        dataset=args.dataset, data_root=args.data_root, classes=parse_classes(args.classes),
        image_size=args.image_size, labels_per_class=args.labels_per_class,
        from_run=args.from_run, backbone=args.backbone, weights=parse_weights(args.weights),
        strategy=args.strategy, dropout=args.dropout, dropout_kind=args.dropout_kind,
        hidden=args.hidden, drop_path=args.drop_path, dropblock=args.dropblock,
        freeze_bn=args.freeze_bn, lr_decay=args.lr_decay, epochs=args.epochs,
        batch_size=args.batch_size, optimizer=args.optimizer, lr=args.lr,
        weight_decay=args.weight_decay, lr_schedule=args.lr_schedule,
        val_fraction=args.val_fraction, seed=args.seed, device=args.device, out=args.out,
    )
    summary = run(cfg, resume=args.resume)
    emit(summary, args, human=(
        f"{summary['strategy']} from {summary['source']}: test accuracy "
        f"{summary['test_acc']:.4f} (ECE {summary['test_ece']:.4f}) → {summary['run_dir']}"
    ))
    return 0
