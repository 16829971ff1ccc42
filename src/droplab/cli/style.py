"""``droplab stylize``, ``droplab style-train`` and ``droplab style-apply``."""

from __future__ import annotations

import argparse
from typing import Any

from droplab.cli.common import add_run_options, emit, parse_rate


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not v >= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be ≥ 0")
    return v


def _encoder_options(p: argparse.ArgumentParser, n_random: int) -> None:
    g = p.add_argument_group("encoder")
    g.add_argument("--encoder", default="auto", help="auto|vgg19|random (default auto: vgg19 "
                   "when its ImageNet weights can be had, else the random-weight encoder)")
    g.add_argument("--encoder-weights", default=None, metavar="PATH",
                   help="a torchvision vgg19 state-dict file (else the torch hub cache)")
    g.add_argument("--n-random", type=int, default=n_random,
                   help=f"random encoders in the ensemble (default {n_random})")
    g.add_argument("--softmax", type=float, default=None, metavar="T",
                   help="SWAG softmax smoothing of activations at temperature T "
                   "(Wang et al. 2021; default off)")


def register(sub: Any) -> None:
    # -- stylize ---------------------------------------------------------------------------
    p = sub.add_parser(
        "stylize", help="optimisation-based style transfer (Gatys et al. 2016)",
        description="Optimise an image to have the content of one image and the style of "
        "others. Images are paths or scikit-image sample names (astronaut, coffee, chelsea, "
        "hubble_deep_field, …). --out x.png writes the image there; --out DIR makes a run "
        "folder with stylized.png, metrics.jsonl and summary.json.",
    )
    p.add_argument("--content", required=True, metavar="IMG")
    p.add_argument("--style", required=True, nargs="+", metavar="IMG[:WEIGHT]",
                   help="one or more style images, optionally weighted (mixed by weight)")
    p.add_argument("--size", type=int, default=256, help="longer side of the output (default 256)")
    p.add_argument("--style-scale", type=_positive_float, default=1.0,
                   help="style image size relative to --size (default 1)")
    p.add_argument("--steps", type=int, default=300, help="iterations per pyramid level")
    p.add_argument("--optimizer", default="adam", help="adam|lbfgs (default adam)")
    p.add_argument("--lr", type=float, default=None, help="step size (lbfgs 1, adam 0.02)")
    p.add_argument("--content-weight", type=_positive_float, default=1.0)
    p.add_argument("--style-weight", type=_positive_float, default=10.0)
    p.add_argument("--tv-weight", type=_positive_float, default=5.0)
    p.add_argument("--init", default="content", help="content|noise (default content)")
    p.add_argument("--pyramid", type=int, default=1,
                   help="coarse-to-fine levels, each half the size of the next (default 1)")
    p.add_argument("--preserve-color", default="none",
                   help="none|luminance|histogram (Gatys et al. 2016b)")
    p.add_argument("--save-every", type=int, default=0, metavar="N",
                   help="also save the image every N steps of the last level")
    p.add_argument("--no-eval", action="store_true", help="skip the evaluation metrics")
    p.add_argument("--max-pixels", type=int, default=4096 * 4096,
                   help="larger inputs are downscaled first (default 4096²)")
    _encoder_options(p, 1)
    add_run_options(p, resume=False)
    p.set_defaults(func=_stylize)

    # -- style-train -----------------------------------------------------------------------
    t = sub.add_parser(
        "style-train", help="train a feed-forward style network (Johnson et al. 2016)",
        description="Train a transformer network to stylise any image in one pass, on a "
        "folder of content images, with optional spatial dropout.",
    )
    t.add_argument("--style", required=True, nargs="+", metavar="IMG[:WEIGHT]")
    t.add_argument("--content-dir", required=True, metavar="DIR")
    t.add_argument("--image-size", type=int, default=256, help="training crop size (default 256)")
    t.add_argument("--style-size", type=int, default=None, help="style image size (default: crop size)")
    t.add_argument("--batch-size", type=int, default=4)
    t.add_argument("--steps", type=int, default=2000)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--content-weight", type=_positive_float, default=1.0)
    t.add_argument("--style-weight", type=_positive_float, default=5.0)
    t.add_argument("--tv-weight", type=_positive_float, default=1.0)
    t.add_argument("--width", type=int, default=32, help="channels of the first layer (default 32)")
    t.add_argument("--n-residual", type=int, default=5)
    t.add_argument("--dropout", type=parse_rate, default=0.0,
                   help="spatial dropout rate p (drop probability; default 0)")
    t.add_argument("--dropout-where", default="residual", help="residual|decoder|all")
    t.add_argument("--max-images", type=int, default=None)
    t.add_argument("--checkpoint-every", type=int, default=100)
    t.add_argument("--log-every", type=int, default=10)
    _encoder_options(t, 1)
    add_run_options(t)
    t.set_defaults(func=_style_train)

    # -- style-apply -----------------------------------------------------------------------
    a = sub.add_parser(
        "style-apply", help="stylise images with a style-train model",
        description="Stylise image files or folders with a trained network (MODEL = a "
        "style-train run folder or its checkpoint.pt).",
    )
    a.add_argument("model", metavar="MODEL")
    a.add_argument("inputs", nargs="*", metavar="IMG|DIR")
    a.add_argument("--size", type=int, default=None, help="resize so the longer side is this")
    a.add_argument("--samples", type=int, default=1,
                   help="K > 1 keeps dropout on and writes K variations per image")
    a.add_argument("--onnx", default=None, metavar="PATH", help="also export the network to ONNX")
    a.add_argument("--max-pixels", type=int, default=4096 * 4096)
    add_run_options(a, resume=False)
    a.set_defaults(func=_style_apply)


def _stylize(args: argparse.Namespace) -> int:
    from droplab.tasks.style import StylizeConfig, run_stylize

    cfg = StylizeConfig(
        content=args.content, styles=list(args.style), size=args.size,
        style_scale=args.style_scale, content_weight=args.content_weight,
        style_weight=args.style_weight, tv_weight=args.tv_weight, optimizer=args.optimizer,
        lr=args.lr, steps=args.steps, init=args.init, pyramid=args.pyramid,
        preserve_color=args.preserve_color, encoder=args.encoder,
        encoder_weights=args.encoder_weights, n_random=args.n_random, softmax=args.softmax,
        save_every=args.save_every, evaluate=not args.no_eval, max_pixels=args.max_pixels,
        seed=args.seed, device=args.device, out=args.out,
    )
    s = run_stylize(cfg)
    emit(s, args, human=(
        f"wrote {s['output']} ({s['encoder']}); style loss {s['style_loss_initial']:.4g} "
        f"(content image) → {s['style_loss_final']:.4g}; content loss "
        f"{s['content_loss_final']:.4g}; {s['seconds_per_step']:.3g} s/step"))
    return 0


def _style_train(args: argparse.Namespace) -> int:
    from droplab.tasks.style import StyleTrainConfig, run_style_train

    cfg = StyleTrainConfig(
        style=list(args.style), content_dir=args.content_dir, image_size=args.image_size,
        style_size=args.style_size, batch_size=args.batch_size, steps=args.steps, lr=args.lr,
        content_weight=args.content_weight, style_weight=args.style_weight,
        tv_weight=args.tv_weight, width=args.width, n_residual=args.n_residual,
        dropout=args.dropout, dropout_where=args.dropout_where, encoder=args.encoder,
        encoder_weights=args.encoder_weights, n_random=args.n_random, softmax=args.softmax,
        max_images=args.max_images, checkpoint_every=args.checkpoint_every,
        log_every=args.log_every, seed=args.seed, device=args.device, out=args.out,
    )
    s = run_style_train(cfg, resume=args.resume)
    emit(s, args, human=(
        f"trained {s['steps']} steps on {s['images']} images ({s['encoder']}); style loss "
        f"{s['first_style_loss']:.4g} → {s['final_style_loss']:.4g}; model in {s['run_dir']}"))
    return 0


def _style_apply(args: argparse.Namespace) -> int:
    from droplab.tasks.style import StyleApplyConfig, run_style_apply

    cfg = StyleApplyConfig(
        model=args.model, inputs=list(args.inputs), size=args.size, samples=args.samples,
        onnx=args.onnx, max_pixels=args.max_pixels, seed=args.seed, device=args.device,
        out=args.out,
    )
    s = run_style_apply(cfg)
    human = f"wrote {len(s['outputs'])} image(s) to {s.get('out', '-')}"
    if "onnx" in s:
        human += f"; ONNX model {s['onnx']}"
    if "diversity" in s:
        human += f"; MC diversity {s['diversity']:.4g}"
    emit(s, args, human=human)
    return 0
