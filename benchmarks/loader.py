"""droplab.data.Loader overhead: training throughput with the Loader vs a minimal loop.

The reference is the leanest hand-written loop: images already normalised as one float
tensor (channels_last), a random permutation per epoch, ``X[idx]`` per batch. droplab's
Loader starts from uint8 images and gathers, converts, normalises (and augments) each
batch. Both train the default ``convnet`` (32/64/128) on 32×32 colour images with SGD;
rounds alternate so a shared, noisy CPU affects both alike. Ratios only.

    python benchmarks/loader.py [--batches 20] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from droplab.data import ImageData, Loader, channel_stats
from droplab.models import ModelConfig, build_model
from droplab.runs import atomic_write_json


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=128)
    args = ap.parse_args()
    torch.manual_seed(0)
    n = args.batches * args.batch_size
    data = ImageData(torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8),
                     torch.randint(0, 10, (n,)))
    mean, std = channel_stats(data.images)
    m_t, s_t = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    x_float = ((data.images.float() / 255 - m_t) / s_t).contiguous(memory_format=torch.channels_last)
    model = build_model(ModelConfig(name="convnet"), (3, 32, 32), 10).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        loss = loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def hand() -> float:
        t = time.perf_counter()
        perm = torch.randperm(n)
        for i in range(0, n, args.batch_size):
            idx = perm[i:i + args.batch_size]
            step(x_float[idx], data.labels[idx])
        return n / (time.perf_counter() - t)

    def loader(augment: bool) -> float:
        ld = Loader(data, batch_size=args.batch_size, shuffle=True, augment=augment, mean=mean,
                    std=std, channels_last=True)
        t = time.perf_counter()
        for x, y in ld:
            step(x, y)
        return n / (time.perf_counter() - t)

    def loader_only(augment: bool) -> float:
        ld = Loader(data, batch_size=args.batch_size, shuffle=True, augment=augment, mean=mean,
                    std=std, channels_last=True)
        t = time.perf_counter()
        for _ in ld:
            pass
        return n / (time.perf_counter() - t)

    model.train()
    hand()  # warm-up (oneDNN primitives)
    res: dict[str, list[float]] = {"hand": [], "loader": [], "loader_aug": []}
    for _ in range(args.rounds):
        res["hand"].append(hand())
        res["loader"].append(loader(False))
        res["loader_aug"].append(loader(True))
    med = {k: statistics.median(v) for k, v in res.items()}
    out = {
        "images_per_s": med,
        "ratio_loader_vs_hand": med["loader"] / med["hand"],
        "ratio_loader_aug_vs_hand": med["loader_aug"] / med["hand"],
        "loader_only_images_per_s": loader_only(False),
        "loader_only_aug_images_per_s": loader_only(True),
        "batch_size": args.batch_size, "batches": args.batches, "rounds": args.rounds,
        "threads": torch.get_num_threads(),
    }
    for k, v in out.items():
        print(f"{k}: {v}")
    atomic_write_json(Path(__file__).parent / "results" / "loader.json", out)


if __name__ == "__main__":
    main()
