"""``droplab gan``: train a DCGAN with dropout and score it (FID, KID, IS, modes)."""

from __future__ import annotations

import argparse
from typing import Any

from droplab.cli.common import add_run_options, emit, parse_classes, parse_rate


def register(sub: Any) -> None:
    p = sub.add_parser(
        "gan", help="train a GAN with dropout; FID/KID/IS, precision/recall, mode coverage",
        description="Train a DCGAN (non-saturating, hinge or WGAN-GP loss) with dropout in the "
        "discriminator and/or pix2pix noise dropout in the generator, then score samples of "
        "its EMA generator with a classifier's features: FID, KID, Inception Score, "
        "precision/recall and mode coverage. Without --feature-extractor a small classifier "
        "is trained first into OUT/classifier/.",
    )
    d = p.add_argument_group("data")
    d.add_argument("--dataset", default="digits",
                   help="digits|mnist|fashion-mnist|cifar10|imagefolder:PATH (default digits)")
    d.add_argument("--data-root", default=None, help="dataset folder (default $DROPLAB_DATA)")
    d.add_argument("--classes", default=None, help="subset, e.g. 0-4 or 0,3,7 or cat,dog")
    d.add_argument("--image-size", type=int, default=None,
                   help="resize images to this (default: the dataset's size; digits are 8 px, "
                   "--image-size 16 makes a deeper net)")
    d.add_argument("--limit", type=int, default=None, metavar="N",
                   help="at most N training images per class (quick runs)")

    m = p.add_argument_group("model and loss")
    m.add_argument("--model", default="dcgan", help="dcgan (default)")
    m.add_argument("--width", type=int, default=32, help="base channel width (default 32)")
    m.add_argument("--z-dim", type=int, default=64, help="latent size (default 64)")
    m.add_argument("--loss", default="ns", help="ns|hinge|wgan-gp (default ns: non-saturating)")
    m.add_argument("--n-critic", type=int, default=None,
                   help="discriminator steps per generator step (default 5 for wgan-gp, else 1)")
    m.add_argument("--gp-weight", type=float, default=10.0, help="WGAN-GP λ (default 10)")
    m.add_argument("--spectral-norm", action="store_true",
                   help="spectral-normalise the discriminator (Miyato et al. 2018)")

    r = p.add_argument_group("dropout")
    r.add_argument("--d-dropout", type=parse_rate, default=0.0, metavar="P",
                   help="discriminator dropout rate (drop probability; default 0)")
    r.add_argument("--d-dropout-kind", default="dropout",
                   help="dropout|spatial|gaussian|alpha|dropblock|droppath|concrete (default dropout)")
    r.add_argument("--d-dropout-where", default="hidden",
                   help="input|hidden|all (default hidden: after every discriminator block)")
    r.add_argument("--g-dropout", type=parse_rate, default=0.0, metavar="P",
                   help="pix2pix noise dropout in the generator (Isola et al. 2017; default 0)")
    r.add_argument("--g-dropout-at-sampling", action="store_true",
                   help="keep the generator's noise dropout on when sampling")

    t = p.add_argument_group("training")
    t.add_argument("--epochs", type=int, default=2, help="default 2")
    t.add_argument("--batch-size", type=int, default=64, help="default 64")
    t.add_argument("--lr", type=float, default=None,
                   help="Adam learning rate (default 1e-4 for wgan-gp, else 2e-4)")
    t.add_argument("--betas", type=float, nargs=2, default=None, metavar=("B1", "B2"),
                   help="Adam betas (default 0 0.9 for wgan-gp, else 0.5 0.999)")
    t.add_argument("--ema", type=float, default=0.999,
                   help="EMA decay of the sampled generator (0 disables; default 0.999)")
    t.add_argument("--max-loss", type=float, default=1e4,
                   help="stop when a loss exceeds this in magnitude (default 1e4)")

    e = p.add_argument_group("evaluation")
    e.add_argument("--eval-samples", type=int, default=1000, metavar="N",
                   help="generated (and real) images scored at the end (0 skips; default 1000)")
    e.add_argument("--feature-extractor", default=None, metavar="RUN",
                   help="a `droplab train` run whose features and softmax score the samples "
                   "(default: train one on the fly into OUT/classifier)")
    e.add_argument("--classifier-epochs", type=int, default=5,
                   help="epochs of the on-the-fly classifier (default 5)")
    e.add_argument("--inception", action="store_true",
                   help="also FID/KID with Inception-v3 features (needs torch-fidelity weights)")
    e.add_argument("--grid", type=int, default=64, help="images in the sample grid (default 64)")
    add_run_options(p)
    p.set_defaults(func=_gan)


def _gan(args: argparse.Namespace) -> int:
    from droplab.tasks.gan import GanConfig, run

    cfg = GanConfig(
        dataset=args.dataset, data_root=args.data_root, classes=parse_classes(args.classes),
        image_size=args.image_size, limit=args.limit, model=args.model, width=args.width,
        z_dim=args.z_dim, loss=args.loss, n_critic=args.n_critic, gp_weight=args.gp_weight,
        spectral_norm=args.spectral_norm, d_dropout=args.d_dropout,
        d_dropout_kind=args.d_dropout_kind, d_dropout_where=args.d_dropout_where,
        g_dropout=args.g_dropout, g_dropout_at_sampling=args.g_dropout_at_sampling,
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        betas=tuple(args.betas) if args.betas else None, ema=args.ema,
        max_loss=args.max_loss, eval_samples=args.eval_samples,
        feature_extractor=args.feature_extractor, classifier_epochs=args.classifier_epochs,
        inception=args.inception, grid=args.grid, seed=args.seed, device=args.device,
        out=args.out,
    )
    summary = run(cfg, resume=args.resume)
    emit(summary, args, _human(summary))
    return 0


def _human(s: dict[str, Any]) -> str:
    lines = [f"GAN run {s['run_dir']} ({s['dataset']}, loss {s['loss']}, {s['epochs']} epochs)"]
    if "fid" in s:
        lines += [
            f"FID {s['fid']:.3f}   KID {s['kid_mean']:.4f} ± {s['kid_std']:.4f}   "
            f"IS {s['inception_score']:.3f} ± {s['inception_score_std']:.3f}",
            f"modes covered {s['modes_covered']}/{s['num_classes']}   "
            f"KL(class histogram ‖ uniform) {s['kl_uniform']:.4f}",
            f"precision {s['precision']:.3f}   recall {s['recall']:.3f}   "
            f"(features: {s['feature_extractor']})",
        ]
        if "fid_inception" in s:
            lines.append(f"Inception FID {s['fid_inception']:.3f}   KID "
                         f"{s['kid_inception_mean']:.4f} ± {s['kid_inception_std']:.4f}")
    lines.append(f"samples {s['samples']}   checkpoint {s['checkpoint']}")
    return "\n".join(lines)
