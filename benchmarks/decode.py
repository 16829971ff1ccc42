"""Decoding an image folder: droplab.data (batched torchvision JPEG decoding in a thread
pool) vs a plain PIL loop, on the first N files of CIFAR-10's JPEG tree. Ratios only.

    python benchmarks/decode.py [--root ../shared/datasets/cifar10-jpg/train] [--per-class 500]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from droplab import data as D
from droplab.runs import atomic_write_json


def main() -> None:
    here = Path(__file__).resolve().parent
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=here.parents[1] / "shared/datasets/cifar10-jpg/train")
    ap.add_argument("--per-class", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    files = [f for d in D._class_dirs(args.root) for f in D._list_files(d)[:args.per_class]]

    def pil() -> float:
        t = time.perf_counter()
        arrs = []
        for f in files:
            with Image.open(f) as im:
                arrs.append(np.asarray(im.convert("RGB")))
        torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2).contiguous()
        return time.perf_counter() - t

    def ours() -> float:
        t = time.perf_counter()
        images, _, bad = D._decode_files(files, None)
        assert not bad and images.shape[0] == len(files)
        return time.perf_counter() - t

    ours(), pil()  # warm the page cache
    t_pil = min(pil() for _ in range(args.rounds))
    t_ours = min(ours() for _ in range(args.rounds))
    out = {"files": len(files), "pil_s": t_pil, "droplab_s": t_ours,
           "speedup_vs_pil": t_pil / t_ours,
           "droplab_images_per_s": len(files) / t_ours}
    for k, v in out.items():
        print(f"{k}: {v}")
    atomic_write_json(here / "results" / "decode.json", out)


if __name__ == "__main__":
    main()
