"""Decoding an image folder: droplab.data's validated path vs the previous release's path
vs a plain PIL loop, on the first N files per class of CIFAR-10's JPEG tree. Ratios only
(measured in the same run, rounds interleaved, best of ``--rounds``).

- ``droplab``: :func:`droplab.data.folders.decode_files` — PIL header check and pixel cap
  for every file, then torchvision's JPEG decoder for validated files (thread pool);
- ``droplab_pil``: the same with the fast path off (PIL decodes everything);
- ``previous``: the previous release's path — torchvision's batched ``decode_jpeg`` on
  unvalidated bytes in the same thread pool (no header check; unsafe on untrusted files,
  run here on the trusted CIFAR tree for timing only);
- ``pil_loop``: ``Image.open(f).convert("RGB")`` per file, one thread.

    python benchmarks/decode.py [--root ../shared/datasets/cifar10-jpg/train] [--per-class 500]
    python benchmarks/decode.py --per-class 5000 --rounds 1   # all 50,000 training images
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from droplab.data import folders
from droplab.data.decode import decode_many
from droplab.runs import atomic_write_json


def previous_path(files: list[Path]) -> torch.Tensor:
    """The previous release's decoding of a JPEG tree (torchvision, no validation)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    def chunk(paths: list[Path]) -> torch.Tensor:
        blobs = [torch.frombuffer(bytearray(p.read_bytes()), dtype=torch.uint8) for p in paths]
        return torch.stack(decode_jpeg(blobs, mode=ImageReadMode.UNCHANGED))

    chunks = [files[s:s + 512] for s in range(0, len(files), 512)]
    with ThreadPoolExecutor(max(1, min(4, os.cpu_count() or 1))) as ex:
        return torch.cat(list(ex.map(chunk, chunks)))


def main() -> None:
    here = Path(__file__).resolve().parent
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=here.parents[1] / "shared/datasets/cifar10-jpg/train")
    ap.add_argument("--per-class", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    files = [f for d in folders.class_dirs(args.root) for f in folders.list_files(d)[:args.per_class]]

    def pil_loop() -> None:
        arrs = []
        for f in files:
            with Image.open(f) as im:
                arrs.append(np.asarray(im.convert("RGB")))
        torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2).contiguous()

    def droplab(fast: bool) -> Callable[[], None]:
        def run() -> None:
            real = folders.decode_many
            folders.decode_many = lambda b, n, max_pixels=None: real(b, n, max_pixels=max_pixels,
                                                                     fast=fast)
            try:
                images, _, skipped = folders.decode_files(files, None)
            finally:
                folders.decode_many = real
            assert not skipped and images.shape[0] == len(files)
        return run

    def previous() -> None:
        assert previous_path(files).shape[0] == len(files)

    paths = {"droplab": droplab(True), "droplab_pil": droplab(False), "previous": previous,
             "pil_loop": pil_loop}
    assert decode_many is folders.decode_many
    for fn in paths.values():  # warm the page cache and the decoders
        fn()
    best = dict.fromkeys(paths, float("inf"))
    cpu = dict.fromkeys(paths, float("inf"))  # CPU seconds of all threads: robust when busy
    for _ in range(args.rounds):
        for name, fn in paths.items():
            t, c = time.perf_counter(), time.process_time()
            fn()
            best[name] = min(best[name], time.perf_counter() - t)
            cpu[name] = min(cpu[name], time.process_time() - c)
    out = {
        "files": len(files),
        "seconds": best,
        "cpu_seconds": cpu,
        "cpu_droplab_vs_previous": cpu["previous"] / cpu["droplab"],
        "images_per_s": {k: len(files) / v for k, v in best.items()},
        "droplab_vs_previous": best["previous"] / best["droplab"],  # > 1: droplab is faster
        "droplab_vs_pil_loop": best["pil_loop"] / best["droplab"],
        "fast_path_gain": best["droplab_pil"] / best["droplab"],
        "projected_50k_s": 50_000 * best["droplab"] / len(files),
        "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
    }
    for k, v in out.items():
        print(f"{k}: {v}")
    atomic_write_json(here / "results" / "decode.json", out)


if __name__ == "__main__":
    main()
