"""Package a classifier that ``droplab train`` trained as a style encoder weights file.

The shipped CIFAR-10 encoders (``src/droplab/models/style/weights/``) were made with::

    droplab train --dataset cifar10 --data-root ../shared/datasets --limit 1500 \\
        --model lenet --widths 32,64,128,256,256 --dropout 0.3 --epochs 5 \\
        --batch-size 64 --channels-last --seed 0 --out benchmarks/runs/encoder-lenet
    python benchmarks/style_encoder.py benchmarks/runs/encoder-lenet cifar-lenet.pt

    droplab train --dataset cifar10 --data-root ../shared/datasets --limit 1500 \\
        --model lenet --widths 48,96,192,192,256 --dropout 0.3 --epochs 5 \\
        --batch-size 64 --channels-last --seed 1 --out benchmarks/runs/encoder-lenet-eval
    python benchmarks/style_encoder.py benchmarks/runs/encoder-lenet-eval \
        benchmarks/runs/encoder-lenet-eval.pt

The first ships in the package (the loss network / AdaIN encoder); the second (other
widths, other seed) stays in benchmarks/runs/ and is used only to evaluate results in
benchmarks/style*.py, so the figures are not the optimiser's own objective.
Only the convolution stages are kept (batch norm folded in, float16): the FC layers and
the head are of no use to style transfer.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from droplab.fileio import atomic_torch_save
from droplab.models.style import encoder_weights_from_classifier, load_encoder_weights
from droplab.runs.restore import load_run

WEIGHTS = Path(__file__).resolve().parents[1] / "src" / "droplab" / "models" / "style" / "weights"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", help="a droplab train run folder (lenet or convnet)")
    ap.add_argument("name", help="file name under src/droplab/models/style/weights/, or a "
                    "path with a folder")
    args = ap.parse_args()
    loaded = load_run(args.run)
    if not hasattr(loaded.model, "conv"):
        raise SystemExit(f"{args.run}: not a lenet/convnet run (no .conv stages)")
    cfg = json.loads((Path(args.run) / "config.json").read_text())
    summary = loaded.summary or {}
    source = {"task": "train", "model": summary.get("model"), "dataset": summary.get("dataset"),
              "test_acc": summary.get("test_acc"), "train_images": summary.get("train_images"),
              "epochs": summary.get("epochs"), "config": cfg}
    weights = encoder_weights_from_classifier(loaded.model.conv.state_dict(),
                                              mean=loaded.mean, std=loaded.std, source=source)
    out = Path(args.name) if "/" in args.name else WEIGHTS / args.name
    atomic_torch_save(weights, out)
    load_encoder_weights(out)  # reads back through the safe loader
    print(json.dumps({"path": str(out), "bytes": out.stat().st_size,
                      "stages": [list(w.shape) for w in weights["weights"]],
                      "test_acc": source["test_acc"]}))


if __name__ == "__main__":
    main()
