"""The hostile-input table (issue 14): every command, attacked as a hostile but realistic
user would, must refuse in one line and leave everything as it was.

Each row is one ``droplab`` command line (run in this process, ``droplab.cli.main``) with
one thing wrong: a bad value (nan, inf, negative, zero, huge, wrong type, reversed range,
unknown name), a bad path (missing, a file for a folder and vice versa, under a file, not
creatable, an ``--out`` holding another run), a broken image folder (empty, only broken
files) or a broken run folder (truncated, garbage or malicious ``checkpoint.pt``, unreadable
or foreign ``config.json``/``summary.json``). Every row asserts

- exit status 2, nothing on stdout (``--json`` included: no half summary);
- exactly one line on stderr, ``droplab <command>: error: …``, naming the problem (the
  row's fragments) — no traceback, no warning lines;
- every folder the row touched unchanged, hashed file by file before and after (a start
  that was refused leaves no folder behind), no temporary files, no payload marker.

Signals, the lock and full disks need real processes or a real file system; they have
their own tests at the end (Ctrl-C / SIGTERM then ``--resume``, two writers, a tiny tmpfs).
The rows share a few tiny run folders (digits, one epoch) made once per module.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from droplab.cli import main
from hostile_world import (
    DAMAGE,
    call,
    damaged_copy,
    make_broken_images,
    poison_checkpoint,
    snapshot,
    temp_leftovers,
)

REPO = Path(__file__).resolve().parents[1]
CPU = ["--device", "cpu"]
TRAIN = ["--dataset", "digits", "--classes", "0-4", "--limit", "12", "--model", "lenet",
         "--epochs", "1"]
STYLE = ["--style", "coffee", "--steps", "2", "--image-size", "32", "--batch-size", "2",
         "--width", "4", "--n-residual", "1", "--encoder", "random", "--checkpoint-every", "1"]
GAN = ["--limit", "8", "--batch-size", "16", "--width", "8", "--z-dim", "8", "--epochs", "1",
       "--eval-samples", "0"]


# ------------------------------------------------------------------------------------------
# the world the rows attack: good run folders of each kind, made once
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("world")
    content = root / "content"
    content.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(content / f"{i}.png")
    paths = {"T": root / "train", "S": root / "style", "C": content, "I": content / "0.png"}
    assert main(["train", *TRAIN, "--out", str(paths["T"]), *CPU]) == 0
    assert main(["style-train", *STYLE, "--content-dir", str(content), "--out",
                 str(paths["S"]), *CPU]) == 0
    return paths


@pytest.fixture(scope="module")
def gan_run(world: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("gan") / "gan"
    assert main(["gan", *GAN, "--feature-extractor", str(world["T"]), "--out", str(out),
                 *CPU]) == 0
    return out


#: room left on the tiny disk for each row: a config.json fits, a checkpoint or a plot not
DISK_ROOM = 16 * 1024


@pytest.fixture(scope="module")
def tiny_disk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A 1 MiB tmpfs, where this machine lets the tests mount one."""
    disk = tmp_path_factory.mktemp("disk")
    if os.geteuid() != 0 or shutil.which("mount") is None or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)],
            capture_output=True, timeout=30).returncode != 0:
        pytest.skip("a full disk needs permission to mount a tmpfs (root, mount allowed)")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True, timeout=30)


@pytest.fixture
def full_disk(tiny_disk: Path) -> Iterator[Path]:
    """The tiny disk with :data:`DISK_ROOM` bytes free; emptied again after the row."""
    st = os.statvfs(tiny_disk)
    filler = tiny_disk / "filler"
    with open(filler, "wb") as fh:
        fh.write(b"\0" * max(0, st.f_bavail * st.f_frsize - DISK_ROOM))
    try:
        yield tiny_disk
    finally:
        for p in tiny_disk.iterdir():
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()


# ------------------------------------------------------------------------------------------
# the table
# ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Row:
    """``argv`` is a shell-like template: ``{T}`` train run, ``{S}`` style-train run,
    ``{G}`` GAN run, ``{C}`` content folder, ``{I}`` an image, ``{tmp}`` this row's own
    folder, ``{file}`` a file in it, ``{empty}`` an empty folder, ``{broken}`` a folder of
    broken images (``{brokenc}``: with class sub-folders), ``{X}`` what ``setup`` made
    (``KIND:DAMAGE``: a damaged copy of run KIND; ``poison:KIND``: a checkpoint whose pickle
    would create ``{tmp}/MARKER``). ``expect``: fragments the one stderr line contains."""

    argv: str
    expect: tuple[str, ...]
    setup: str | None = None


def R(argv: str, *expect: str, setup: str | None = None) -> Row:
    return Row(argv, tuple(expect), setup)


TR = "train --dataset digits --classes 0-4 --limit 12 --model lenet --epochs 1 --device cpu --out {tmp}/out"
TRF = TR.replace("--classes 0-4 ", "")  # image folders have their own classes
EV = "evaluate {T} --device cpu"
FT = ("finetune --from {T} --dataset digits --classes 5-9 --limit 12 --epochs 1 --device cpu "
      "--out {tmp}/out")
GN = ("gan --limit 8 --batch-size 16 --width 8 --z-dim 8 --epochs 1 --eval-samples 0 "
      "--feature-extractor {T} --device cpu --out {tmp}/out")
SZ = ("stylize --content {I} --style coffee --size 32 --steps 1 --encoder random --no-eval "
      "--device cpu --out {tmp}/out")
ST = ("style-train --style coffee --content-dir {C} --steps 1 --image-size 32 --batch-size 2 "
      "--width 4 --n-residual 1 --encoder random --device cpu --out {tmp}/out")
SA = "style-apply {S} {I} --device cpu --out {tmp}/out"
RP = "report {T} --out {tmp}/report.html"
SW = ("sweep --dataset digits --classes 0-4 --limit 12 --epochs 1 --folds 2 --rates 0,0.5 "
      "--device cpu --out {tmp}/out")
SV = "serve {T} --device cpu --port 0"
IN = "inspect {T} --device cpu"
AC = ("active --dataset digits --classes 0-4 --limit 12 --epochs 1 --initial 10 --step 5 "
      "--rounds 1 --mc 2 --train-steps 2 --val-size 10 --device cpu --out {tmp}/out")

ROWS: dict[str, Row] = {
    # -- train: bad values -------------------------------------------------------------
    "train-epochs-zero": R(f"{TR} --epochs 0", "--epochs", "at least 1"),
    "train-epochs-negative": R(f"{TR} --epochs -3", "--epochs", "at least 1"),
    "train-epochs-word": R(f"{TR} --epochs many", "--epochs", "integer"),
    "train-epochs-float": R(f"{TR} --epochs 1.5", "--epochs", "integer"),
    "train-lr-nan": R(f"{TR} --lr nan", "--lr", "finite"),
    "train-lr-inf": R(f"{TR} --lr inf", "--lr", "finite"),
    "train-lr-negative": R(f"{TR} --lr -0.1", "--lr", "positive"),
    "train-lr-zero": R(f"{TR} --lr 0", "--lr", "positive"),
    "train-dropout-one": R(f"{TR} --dropout 1", "--dropout", "[0, 1)"),
    "train-dropout-negative": R(f"{TR} --dropout -0.2", "--dropout", "[0, 1)"),
    "train-dropout-nan": R(f"{TR} --dropout nan", "--dropout", "[0, 1)"),
    "train-dropout-percent": R(f"{TR} --dropout 50%", "--dropout", "number"),
    "train-input-dropout-huge": R(f"{TR} --input-dropout 7", "--input-dropout", "[0, 1)"),
    "train-batch-zero": R(f"{TR} --batch-size 0", "--batch-size", "at least 1"),
    "train-momentum-one": R(f"{TR} --momentum 1", "--momentum", "[0, 1)"),
    "train-weight-decay-negative": R(f"{TR} --weight-decay -1", "--weight-decay", ">= 0"),
    "train-label-smoothing-one": R(f"{TR} --label-smoothing 1", "--label-smoothing"),
    "train-warmup-inf": R(f"{TR} --warmup-epochs inf", "--warmup-epochs", "finite"),
    "train-grad-clip-zero": R(f"{TR} --grad-clip 0", "--grad-clip", "positive"),
    "train-max-norm-negative": R(f"{TR} --max-norm -3", "--max-norm", "positive"),
    "train-val-fraction-one": R(f"{TR} --val-fraction 1", "--val-fraction"),
    "train-checkpoint-every-negative": R(f"{TR} --checkpoint-every -1", "--checkpoint-every"),
    "train-limit-zero": R(f"{TR} --limit 0", "--limit", "at least 1"),
    "train-image-size-zero": R(f"{TR} --image-size 0", "--image-size", "[1, 4096]"),
    "train-image-size-huge": R(f"{TR} --image-size 100000", "--image-size", "4096"),
    "train-seed-word": R(f"{TR} --seed abc", "--seed", "integer"),
    "train-seed-negative": R(f"{TR} --seed -1", "--seed"),
    "train-seed-huge": R(f"{TR} --seed 100000000000000000000000", "--seed"),
    "train-classes-reversed": R(f"{TR} --classes 5-2", "--classes", "reversed", "2-5"),
    "train-classes-unknown": R(f"{TR} --classes 3,cat", "class", "cat"),
    "train-classes-out-of-range": R(f"{TR} --classes 7-12", "class", "'10'"),
    "train-classes-huge-range": R(f"{TR} --classes 0-999999999999", "--classes", "0-9"),
    "train-widths-zero": R(f"{TR} --widths 0,8", "--widths"),
    "train-widths-words": R(f"{TR} --widths a,b", "--widths"),
    "train-unknown-model": R(f"{TR} --model resnet9000", "unknown", "resnet9000"),
    "train-unknown-tv-model": R(f"{TR} --model tv:nope", "nope"),
    "train-unknown-kind": R(f"{TR} --dropout-kind dropsomething", "dropsomething", "choose"),
    "train-unknown-where": R(f"{TR} --dropout-where everywhere", "everywhere"),
    "train-unknown-optimizer": R(f"{TR} --optimizer adamax", "adamax", "sgd"),
    "train-unknown-schedule": R(f"{TR} --dropout-schedule sometimes", "sometimes"),
    "train-schedule-bad-arg": R(f"{TR} --dropout-schedule linear:abc", "linear:abc"),
    "train-unknown-amp": R(f"{TR} --amp fp8", "fp8"),
    "train-unknown-device": R(f"{TR} --device tpu", "--device", "tpu"),
    "train-absent-cuda": R(f"{TR} --device cuda:7", "cuda"),
    "train-unknown-option": R(f"{TR} --dropuot 0.3", "unrecognized", "--dropuot"),
    "train-missing-value": R(f"{TR} --lr", "--lr", "expected one argument"),
    "train-unknown-dataset": R(f"{TR} --dataset imagenet-22k", "imagenet-22k"),
    # -- train: bad paths and image folders ----------------------------------------------
    "train-imagefolder-missing": R(f"{TRF} --dataset imagefolder:{{tmp}}/nowhere", "nowhere"),
    "train-imagefolder-file": R(f"{TRF} --dataset imagefolder:{{file}}", "file.txt"),
    "train-imagefolder-empty": R(f"{TRF} --dataset imagefolder:{{empty}}", "empty"),
    "train-imagefolder-broken": R(f"{TRF} --dataset imagefolder:{{brokenc}}", "brokenc"),
    "train-imagefolder-flat": R(f"{TRF} --dataset imagefolder:{{C}}", "content"),
    "train-data-root-file": R(f"{TR} --dataset mnist --no-download --data-root {{file}}",
                              "mnist"),
    "train-out-is-file": R(TR.replace("{tmp}/out", "{file}") , "is a file"),
    "train-out-under-file": R(TR.replace("{tmp}/out", "{file}/run"), "is a file"),
    "train-out-not-creatable": R(TR.replace("{tmp}/out", "/proc/droplab-hostile/run"),
                                 "cannot create"),
    "train-out-holds-run": R(TR.replace("{tmp}/out", "{T}"), "already holds a run", "--resume"),
    "train-out-holds-style-run": R(TR.replace("{tmp}/out", "{S}"), "already holds a run"),
    # -- train --resume: broken run folders -----------------------------------------------
    "resume-no-out": R("train --resume --device cpu", "--resume needs --out"),
    "resume-missing": R("train --resume --out {tmp}/nowhere", "does not exist"),
    "resume-empty": R("train --resume --out {empty}", "no config.json"),
    "resume-file": R("train --resume --out {file}", "is a file"),
    "resume-changed-option": R("train --resume --out {T} --lr 0.5 --device cpu", "--lr",
                               "stored"),
    "resume-ckpt-garbage": R("train --resume --out {X} --device cpu", "checkpoint.pt",
                             "new --out", setup="T-:ckpt-garbage"),
    "resume-ckpt-cut": R("train --resume --out {X} --device cpu", "checkpoint.pt",
                         setup="T-:ckpt-cut"),
    "resume-ckpt-empty": R("train --resume --out {X} --device cpu", "checkpoint.pt",
                           setup="T-:ckpt-empty"),
    "resume-ckpt-dir": R("train --resume --out {X} --device cpu", "checkpoint.pt",
                         setup="T-:ckpt-dir"),
    "resume-ckpt-fifo": R("train --resume --out {X} --device cpu", "checkpoint.pt",
                          setup="T-:ckpt-fifo"),
    "resume-ckpt-devzero": R("train --resume --out {X} --device cpu", "checkpoint.pt",
                             setup="T-:ckpt-devzero"),
    "resume-ckpt-json": R("train --resume --out {X} --device cpu", "checkpoint.pt",
                          setup="T-:ckpt-json"),
    "resume-ckpt-pickle": R("train --resume --out {X} --device cpu", "refused to load",
                            setup="poison:T-"),
    "resume-config-garbage": R("train --resume --out {X} --device cpu", "config.json",
                               setup="T:config-garbage"),
    "resume-config-binary": R("train --resume --out {X} --device cpu", "config.json",
                              setup="T:config-binary"),
    "resume-config-list": R("train --resume --out {X} --device cpu", "config.json",
                            setup="T:config-list"),
    "resume-config-empty": R("train --resume --out {X} --device cpu", "config.json",
                             setup="T:config-empty"),
    "resume-config-deep": R("train --resume --out {X} --device cpu", "config.json",
                            setup="T:config-deep"),
    "resume-config-dir": R("train --resume --out {X} --device cpu", "config.json",
                           setup="T:config-dir"),
    "resume-config-fifo": R("train --resume --out {X} --device cpu", "config.json",
                            setup="T:config-fifo"),
    "resume-config-wrong-types": R("train --resume --out {X} --device cpu", "config.json",
                                   setup="T:config-wrong-types"),
    "resume-config-of-gan": R("train --resume --out {X} --device cpu", "'gan' run",
                              setup="T:config-gan"),
    "resume-config-of-style": R("train --resume --out {X} --device cpu", "'style-train' run",
                                setup="T:config-style"),
    "resume-summary-garbage": R("train --resume --out {X} --device cpu", "summary.json",
                                setup="T:summary-garbage"),
    "resume-summary-list": R("train --resume --out {X} --device cpu", "summary.json",
                             setup="T:summary-list"),
    "resume-metrics-garbage": R("train --resume --out {X} --epochs 2 --device cpu",
                                "--epochs", setup="T:metrics-garbage"),
    # -- evaluate ----------------------------------------------------------------------------
    "evaluate-mc-negative": R(f"{EV} --mc -1", "--mc", ">= 0"),
    "evaluate-mc-word": R(f"{EV} --mc lots", "--mc", "integer"),
    "evaluate-batch-zero": R(f"{EV} --batch-size 0", "--batch-size"),
    "evaluate-limit-zero": R(f"{EV} --limit 0", "--limit"),
    "evaluate-unknown-ood": R(f"{EV} --ood martian-digits", "martian-digits"),
    "evaluate-ood-empty": R(f"{EV} --ood imagefolder:{{empty}}", "empty"),
    "evaluate-ood-broken": R(f"{EV} --ood imagefolder:{{brokenc}}", "brokenc"),
    "evaluate-missing": R("evaluate {tmp}/nowhere --device cpu", "does not exist"),
    "evaluate-file": R("evaluate {file} --device cpu", "file.txt"),
    "evaluate-empty": R("evaluate {empty} --device cpu", "config.json"),
    "evaluate-style-run": R("evaluate {S} --device cpu", "style-train"),
    "evaluate-gan-run": R("evaluate {G} --device cpu", "gan"),
    "evaluate-no-run-given": R("evaluate --device cpu", "RUN"),
    "evaluate-ckpt-garbage": R("evaluate {X} --device cpu", "checkpoint.pt", "copy",
                               setup="T:ckpt-garbage"),
    "evaluate-ckpt-cut": R("evaluate {X} --device cpu", "checkpoint.pt", setup="T:ckpt-cut"),
    "evaluate-ckpt-missing": R("evaluate {X} --device cpu", "checkpoint.pt",
                               setup="T:ckpt-missing"),
    "evaluate-ckpt-fifo": R("evaluate {X} --device cpu", "checkpoint.pt",
                            setup="T:ckpt-fifo"),
    "evaluate-ckpt-pickle": R("evaluate {X} --device cpu", "refused to load",
                              setup="poison:T"),
    "evaluate-config-garbage": R("evaluate {X} --device cpu", "config.json",
                                 setup="T:config-garbage"),
    "evaluate-config-list": R("evaluate {X} --device cpu", "config.json",
                              setup="T:config-list"),
    "evaluate-config-deep": R("evaluate {X} --device cpu", "config.json",
                              setup="T:config-deep"),
    "evaluate-config-wrong-types": R("evaluate {X} --device cpu", "config.json",
                                     setup="T:config-wrong-types"),
    "evaluate-config-unknown-task": R("evaluate {X} --device cpu", "bake-a-cake",
                                      setup="T:config-unknown-task"),
    # -- finetune -------------------------------------------------------------------------
    "finetune-no-source": R(FT.replace("--from {T} ", ""), "--from", "--backbone"),
    "finetune-two-sources": R(f"{FT} --backbone tv:resnet18", "--from", "--backbone"),
    "finetune-from-missing": R(FT.replace("{T}", "{tmp}/nowhere", 1), "nowhere"),
    "finetune-from-style-run": R(FT.replace("{T}", "{S}", 1), "style-train"),
    "finetune-from-ckpt-garbage": R(FT.replace("{T}", "{X}", 1), "checkpoint.pt",
                                    setup="T:ckpt-garbage"),
    "finetune-from-ckpt-pickle": R(FT.replace("{T}", "{X}", 1), "refused to load",
                                   setup="poison:T"),
    "finetune-unknown-backbone": R(FT.replace("--from {T}", "--backbone tv:nope --weights none"),
                                   "nope"),
    "finetune-unknown-timm": R(FT.replace("--from {T}", "--backbone timm:nope_net --weights none"),
                               "nope_net"),
    "finetune-weights-missing": R(FT.replace("--from {T}", "--backbone tv:resnet18 --weights "
                                             "{tmp}/nowhere.pth"), "nowhere.pth"),
    "finetune-weights-garbage": R(FT.replace("--from {T}", "--backbone tv:resnet18 --weights "
                                             "{file}"), "file.txt"),
    "finetune-unknown-strategy": R(f"{FT} --strategy yolo", "yolo"),
    "finetune-lr-decay-zero": R(f"{FT} --lr-decay 0", "--lr-decay"),
    "finetune-lr-decay-above-one": R(f"{FT} --lr-decay 2", "--lr-decay"),
    "finetune-drop-path-one": R(f"{FT} --drop-path 1", "--drop-path", "[0, 1)"),
    "finetune-hidden-zero": R(f"{FT} --hidden 0", "--hidden"),
    "finetune-labels-zero": R(f"{FT} --labels-per-class 0", "--labels-per-class"),
    "finetune-max-stages-zero": R(f"{FT} --max-stages 0", "--max-stages"),
    "finetune-out-holds-run": R(FT.replace("{tmp}/out", "{S}"), "already holds a run"),
    # -- gan ------------------------------------------------------------------------------
    "gan-width-zero": R(f"{GN} --width 0", "--width"),
    "gan-z-dim-negative": R(f"{GN} --z-dim -4", "--z-dim"),
    "gan-unknown-loss": R(f"{GN} --loss minimax", "minimax"),
    "gan-n-critic-zero": R(f"{GN} --n-critic 0", "--n-critic"),
    "gan-gp-weight-nan": R(f"{GN} --gp-weight nan", "--gp-weight", "finite"),
    "gan-d-dropout-one": R(f"{GN} --d-dropout 1", "--d-dropout", "[0, 1)"),
    "gan-g-dropout-inf": R(f"{GN} --g-dropout inf", "--g-dropout"),
    "gan-betas-above-one": R(f"{GN} --betas 0.5 1.5", "--betas"),
    "gan-betas-one-value": R(f"{GN} --betas 0.5", "--betas"),
    "gan-ema-one": R(f"{GN} --ema 1", "--ema"),
    "gan-max-loss-zero": R(f"{GN} --max-loss 0", "--max-loss"),
    "gan-eval-samples-few": R(f"{GN} --eval-samples 3", "--eval-samples"),
    "gan-batch-one": R(f"{GN} --batch-size 1", "--batch-size"),
    "gan-grid-zero": R(f"{GN} --grid 0", "--grid"),
    "gan-image-size-tiny": R(f"{GN} --image-size 2", "--image-size"),
    "gan-fx-missing": R(GN.replace("{T}", "{tmp}/nowhere"), "nowhere"),
    "gan-fx-style-run": R(GN.replace("{T}", "{S}"), "style-train"),
    "gan-fx-ckpt-garbage": R(GN.replace("{T}", "{X}"), "checkpoint.pt",
                             setup="T:ckpt-garbage"),
    "gan-fx-ckpt-pickle": R(GN.replace("{T}", "{X}"), "refused to load", setup="poison:T"),
    "gan-resume-ckpt-garbage": R("gan --resume --out {X} --device cpu", "checkpoint.pt",
                                 setup="G-:ckpt-garbage"),
    "gan-resume-config-of-train": R("gan --resume --out {X} --device cpu", "'train' run",
                                    setup="G:config-train"),
    "gan-resume-changed-option": R("gan --resume --out {G} --width 16 --device cpu",
                                   "--width", "stored"),
    "gan-out-holds-run": R(GN.replace("{tmp}/out", "{T}"), "already holds a run"),
    # -- stylize ----------------------------------------------------------------------------
    "stylize-content-missing": R(SZ.replace("{I}", "{tmp}/nowhere.png"), "nowhere.png"),
    "stylize-content-dir": R(SZ.replace("{I}", "{C}"), "content"),
    "stylize-content-broken": R(SZ.replace("{I}", "{broken}/garbage.png"), "garbage.png"),
    "stylize-content-bomb": R(SZ.replace("{I}", "{broken}/bomb.png"), "bomb.png"),
    "stylize-content-empty-file": R(SZ.replace("{I}", "{broken}/empty.png"), "empty.png"),
    "stylize-content-unknown-sample": R(SZ.replace("{I}", "mona_lisa"), "mona_lisa"),
    "stylize-style-missing": R(SZ.replace("coffee", "{tmp}/nowhere.jpg"), "nowhere.jpg"),
    "stylize-style-weight-word": R(SZ.replace("coffee", "coffee:heavy"), "heavy"),
    "stylize-style-weight-zero": R(SZ.replace("coffee", "coffee:0"), "positive"),
    "stylize-style-weight-nan": R(SZ.replace("coffee", "coffee:nan"), "positive"),
    "stylize-lr-nan": R(f"{SZ} --lr nan", "--lr", "finite"),
    "stylize-size-small": R(f"{SZ} --size 4", "--size"),
    "stylize-size-huge": R(f"{SZ} --size 1000000", "--size"),
    "stylize-style-scale-zero": R(f"{SZ} --style-scale 0", "--style-scale"),
    "stylize-style-scale-huge": R(f"{SZ} --style-scale 10000", "--style-scale"),
    "stylize-steps-zero": R(f"{SZ} --steps 0", "--steps"),
    "stylize-pyramid-deep": R(f"{SZ} --pyramid 30", "--pyramid"),
    "stylize-weight-negative": R(f"{SZ} --style-weight -1", "--style-weight"),
    "stylize-tv-weight-inf": R(f"{SZ} --tv-weight inf", "--tv-weight"),
    "stylize-max-pixels-zero": R(f"{SZ} --max-pixels 0", "--max-pixels"),
    "stylize-softmax-zero": R(f"{SZ} --softmax 0", "--softmax"),
    "stylize-unknown-encoder": R(f"{SZ} --encoder alexnet", "alexnet"),
    "stylize-encoder-weights-missing": R(SZ.replace("--encoder random", "--encoder vgg19 "
                                                    "--encoder-weights {tmp}/no.pth"), "no.pth"),
    "stylize-encoder-weights-garbage": R(SZ.replace("--encoder random", "--encoder vgg19 "
                                                    "--encoder-weights {file}"), "file.txt"),
    "stylize-encoder-weights-pickle": R(SZ.replace("--encoder random", "--encoder vgg19 "
                                                   "--encoder-weights {X}/checkpoint.pt"),
                                        "refused to load", setup="poison:T"),
    "stylize-out-holds-run": R(SZ.replace("{tmp}/out", "{T}"), "already holds a run"),
    "stylize-out-png-under-file": R(SZ.replace("{tmp}/out", "{file}/x.png"), "file.txt"),
    "stylize-no-content": R(SZ.replace("--content {I} ", ""), "--content"),
    # -- style-train ----------------------------------------------------------------------
    "style-train-content-missing": R(ST.replace("{C}", "{tmp}/nowhere"), "nowhere"),
    "style-train-content-file": R(ST.replace("{C}", "{file}"), "file.txt"),
    "style-train-content-empty": R(ST.replace("{C}", "{empty}"), "empty"),
    "style-train-content-broken": R(ST.replace("{C}", "{broken}"), "broken"),
    "style-train-image-size-small": R(f"{ST} --image-size 8", "--image-size"),
    "style-train-lr-nan": R(f"{ST} --lr nan", "--lr"),
    "style-train-steps-zero": R(f"{ST} --steps 0", "--steps"),
    "style-train-dropout-one": R(f"{ST} --dropout 1", "--dropout"),
    "style-train-unknown-where": R(f"{ST} --dropout-where encoder", "encoder"),
    "style-train-log-every-zero": R(f"{ST} --log-every 0", "--log-every"),
    "style-train-n-residual-negative": R(f"{ST} --n-residual -1", "--n-residual"),
    "style-train-style-size-huge": R(f"{ST} --style-size 1000000", "--style-size"),
    "style-train-style-broken": R(ST.replace("coffee", "{broken}/lying.png"), "lying.png"),
    "style-train-out-holds-run": R(ST.replace("{tmp}/out", "{T}"), "already holds a run"),
    "style-train-resume-ckpt-garbage": R("style-train --resume --out {X} --device cpu",
                                         "checkpoint.pt", setup="S-:ckpt-garbage"),
    "style-train-resume-ckpt-pickle": R("style-train --resume --out {X} --device cpu",
                                        "refused to load", setup="poison:S-"),
    "style-train-resume-config-of-train": R("style-train --resume --out {X} --device cpu",
                                            "'train' run", setup="S:config-train"),
    "style-train-resume-config-garbage": R("style-train --resume --out {X} --device cpu",
                                           "config.json", setup="S:config-garbage"),
    # -- style-apply ----------------------------------------------------------------------
    "style-apply-model-missing": R(SA.replace("{S}", "{tmp}/nowhere"), "nowhere"),
    "style-apply-model-train-run": R(SA.replace("{S}", "{T}"), "train"),
    "style-apply-model-file": R(SA.replace("{S}", "{file}"), "file.txt"),
    "style-apply-ckpt-garbage": R(SA.replace("{S}", "{X}"), "checkpoint.pt",
                                  setup="S:ckpt-garbage"),
    "style-apply-ckpt-pickle": R(SA.replace("{S}", "{X}"), "refused to load",
                                 setup="poison:S"),
    "style-apply-input-missing": R(SA.replace("{I}", "{tmp}/nowhere.png"), "nowhere.png"),
    "style-apply-input-broken": R(SA.replace("{I}", "{broken}/garbage.png"), "garbage.png"),
    "style-apply-good-then-broken": R(SA.replace("{I}", "{I} {broken}/cut.jpg"), "cut.jpg"),
    "style-apply-input-empty-dir": R(SA.replace("{I}", "{empty}"), "empty"),
    "style-apply-input-broken-dir": R(SA.replace("{I}", "{broken}"), "broken"),
    "style-apply-samples-zero": R(f"{SA} --samples 0", "--samples"),
    "style-apply-samples-no-dropout": R(f"{SA} --samples 4", "--samples", "--dropout"),
    "style-apply-size-small": R(f"{SA} --size 2", "--size"),
    "style-apply-no-inputs": R("style-apply {S} --device cpu", "images"),
    "style-apply-out-holds-run": R(SA.replace("{tmp}/out", "{T}"), "already holds a run"),
    "style-apply-out-is-model": R(SA.replace("{tmp}/out", "{S}"), "already holds a run"),
    "style-apply-onnx-is-dir": R(f"{SA} --onnx {{empty}}", "empty"),
    # -- report ------------------------------------------------------------------------------
    "report-missing": R("report {tmp}/nowhere --out {tmp}/r.html", "nowhere"),
    "report-empty": R("report {empty} --out {tmp}/r.html", "nothing to report"),
    "report-file": R("report {file} --out {tmp}/r.html", "nothing to report"),
    "report-out-is-foreign-page": R("report {T} --out {tmp}/page.html", "not a droplab report",
                                     setup="foreign-page"),
    "report-out-under-file": R("report {T} --out {file}/r.html", "file.txt"),
    "report-out-is-dir": R("report {T} --out {empty}", "empty"),
    "report-out-not-creatable": R("report {T} --out /proc/droplab-hostile/r.html", "cannot create"),
    "report-tensorboard-file": R("report {T} --out {tmp}/r.html --tensorboard {file}",
                                 "file.txt"),
    "report-no-runs": R("report --out {tmp}/r.html", "RUN"),
    # -- a full disk ({disk}: a tiny tmpfs, nearly full; skipped where mount is refused) --
    "disk-train": R(TR.replace("{tmp}/out", "{disk}/out"), "space"),
    "disk-finetune": R(FT.replace("{tmp}/out", "{disk}/out"), "space"),
    "disk-gan": R(GN.replace("{tmp}/out", "{disk}/out"), "space"),
    "disk-stylize": R(SZ.replace("{tmp}/out", "{disk}/out").replace("--size 32", "--size 256"),
                      "space"),
    "disk-style-train": R(ST.replace("{tmp}/out", "{disk}/out"), "space"),
    "disk-style-apply": R(SA.replace("{tmp}/out", "{disk}/out") + " --size 256", "space"),
    "disk-report": R(RP.replace("{tmp}/report.html", "{disk}/report.html"), "space"),
    "disk-sweep": R(SW.replace("{tmp}/out", "{disk}/out"), "space", "study"),
    # -- sweep ----------------------------------------------------------------------------
    "sweep-folds-one": R(f"{SW} --folds 1", "--folds"),
    "sweep-rates-above-one": R(f"{SW} --rates 0,1.5", "1.5"),
    "sweep-rates-nan": R(f"{SW} --rates 0,nan", "nan"),
    "sweep-rates-word": R(f"{SW} --rates low,high", "--rates"),
    "sweep-rates-count-zero": R(f"{SW} --rates 0:0.5:0", "--rates"),
    "sweep-unknown-kind": R(f"{SW} --kinds dropfoo", "dropfoo"),
    "sweep-unknown-where": R(f"{SW} --wheres everywhere", "everywhere"),
    "sweep-unknown-objective": R(f"{SW} --objective speed", "speed"),
    "sweep-gan-objective-of-classify": R(f"{SW} --task gan --objective acc", "--objective acc",
                                         "--task gan", "fid, kid, modes, kl"),
    "sweep-classify-objective-of-gan": R(f"{SW} --objectives acc,fid", "--objectives fid",
                                         "--task classify", "acc, nll, ece, robust"),
    "sweep-gan-kid-on-points": R(f"{SW.replace('digits --classes 0-4', 'ring')} --task gan "
                                 "--objective kid", "kid", "fid, modes or kl"),
    "sweep-gan-head-placement": R(f"{SW} --task gan --wheres head", "--wheres head",
                                  "hidden, input, all"),
    "sweep-unknown-task": R(f"{SW} --task regress", "regress"),
    "sweep-unknown-sampler": R(f"{SW} --sampler annealing", "annealing"),
    "sweep-unknown-pruner": R(f"{SW} --pruner ruthless", "ruthless"),
    "sweep-unknown-attack": R(f"{SW} --objective robust --attack cw", "cw"),
    "sweep-eps-negative": R(f"{SW} --objective robust --eps -1", "--eps"),
    "sweep-eps-nan": R(f"{SW} --objective robust --eps nan", "--eps"),
    "sweep-trials-zero": R(f"{SW} --sampler tpe --trials 0", "--trials"),
    "sweep-workers-zero": R(f"{SW} --workers 0", "--workers"),
    "sweep-threads-zero": R(f"{SW} --threads 0", "--threads"),
    "sweep-storage-unknown-scheme": R(f"{SW} --storage nosuch://x/y", "--storage"),
    "sweep-out-holds-run": R(SW.replace("{tmp}/out", "{T}"), "already holds a run"),
    "sweep-out-is-file": R(SW.replace("{tmp}/out", "{file}"), "is a file"),
    "sweep-resume-train-run": R("sweep --resume --out {X} --device cpu", "sweep",
                                setup="T:summary-list"),
    "sweep-resume-empty": R("sweep --resume --out {empty} --device cpu", "no config.json"),
    "sweep-resume-config-garbage": R("sweep --resume --out {X} --device cpu", "config.json",
                                     setup="T:config-garbage"),
    # -- serve (every row fails before the socket opens) ------------------------------------
    "serve-missing": R("serve {tmp}/nowhere --port 0", "nowhere"),
    "serve-file": R("serve {file} --port 0", "file.txt"),
    "serve-empty": R("serve {empty} --port 0", "config.json"),
    "serve-no-runs": R("serve --port 0", "RUN"),
    "serve-gan-run": R("serve {G} --port 0 --device cpu", "gan"),
    "serve-ckpt-garbage": R("serve {X} --port 0 --device cpu", "checkpoint.pt", "copy",
                            setup="T:ckpt-garbage"),
    "serve-ckpt-pickle": R("serve {X} --port 0 --device cpu", "refused to load",
                           setup="poison:T"),
    "serve-style-ckpt-pickle": R("serve {X} --port 0 --device cpu", "refused to load",
                                 setup="poison:S"),
    "serve-config-garbage": R("serve {X} --port 0 --device cpu", "config.json",
                              setup="T:config-garbage"),
    "serve-config-fifo": R("serve {X} --port 0 --device cpu", "config.json",
                           setup="T:config-fifo"),
    "serve-port-negative": R(f"{SV} --port -1", "--port"),
    "serve-port-huge": R(f"{SV} --port 70000", "--port"),
    "serve-mc-zero": R(f"{SV} --mc 0", "--mc"),
    "serve-max-bytes-word": R(f"{SV} --max-bytes lots", "--max-bytes"),
    "serve-max-bytes-zero": R(f"{SV} --max-bytes 0", "--max-bytes"),
    "serve-max-pixels-zero": R(f"{SV} --max-pixels 0", "--max-pixels"),
    "serve-concurrency-zero": R(f"{SV} --concurrency 0", "--concurrency"),
    "serve-timeout-nan": R(f"{SV} --timeout nan", "--timeout"),
    "serve-idle-timeout-negative": R(f"{SV} --idle-timeout -5", "--idle-timeout"),
    "serve-unknown-log-level": R(f"{SV} --log-level loud", "loud"),
    "serve-unknown-device": R(f"{SV} --device quantum", "quantum"),
    # -- inspect ----------------------------------------------------------------------------
    "inspect-missing": R("inspect {tmp}/nowhere", "nowhere"),
    "inspect-empty-dir": R("inspect {empty}", "empty"),
    "inspect-unknown-tv": R("inspect tv:nope_net", "nope_net"),
    "inspect-unknown-timm": R("inspect timm:nope_net", "nope_net"),
    "inspect-unknown-module": R("inspect nosuchpkg_xyz.models:make", "nosuchpkg_xyz"),
    "inspect-factory-missing": R("inspect os.path:no_such_factory", "no_such_factory"),
    "inspect-input-size-garbage": R(f"{IN} --input-size 3x?x2", "--input-size"),
    "inspect-input-size-zero": R(f"{IN} --input-size 0x8x8", "--input-size"),
    "inspect-input-size-huge": R(f"{IN} --input-size 3x100000x100000", "--input-size"),
    "inspect-batch-zero": R(f"{IN} --batch 0", "--batch"),
    "inspect-kwargs-garbage": R("inspect tv:resnet18 --kwargs drop_rate", "--kwargs"),
    "inspect-kwargs-on-run": R(f"{IN} --kwargs drop_rate=0.2", "--kwargs"),
    "inspect-ckpt-garbage": R("inspect {X}", "checkpoint.pt", setup="T:ckpt-garbage"),
    "inspect-ckpt-pickle": R("inspect {X}", "refused to load", setup="poison:T"),
    "inspect-config-garbage": R("inspect {X}", "config.json", setup="T:config-garbage"),
    # -- active -----------------------------------------------------------------------------
    "active-initial-zero": R(f"{AC} --initial 0", "--initial"),
    "active-step-zero": R(f"{AC} --step 0", "--step"),
    "active-rounds-negative": R(f"{AC} --rounds -1", "--rounds"),
    "active-mc-zero": R(f"{AC} --mc 0", "--mc"),
    "active-unknown-acquisition": R(f"{AC} --acquisition oracle", "oracle"),
    "active-beta-nan": R(f"{AC} --beta nan", "--beta"),
    "active-beta-zero": R(f"{AC} --beta 0", "--beta"),
    "active-initial-above-pool": R(f"{AC} --initial 100000", "--initial"),
    "active-pool-subset-zero": R(f"{AC} --pool-subset 0", "--pool-subset"),
    "active-val-size-negative": R(f"{AC} --val-size -1", "--val-size"),
    "active-train-steps-zero": R(f"{AC} --train-steps 0", "--train-steps"),
    "active-score-batch-zero": R(f"{AC} --score-batch 0", "--score-batch"),
    "active-dropout-one": R(f"{AC} --dropout 1", "--dropout"),
    "active-out-holds-run": R(AC.replace("{tmp}/out", "{T}"), "already holds a run"),
    "active-resume-train-run": R("active --resume --out {X} --device cpu", "'train' run",
                                 setup="T:summary-list"),
    "active-resume-empty": R("active --resume --out {empty} --device cpu", "no config.json"),
}


# ------------------------------------------------------------------------------------------
# running one row
# ------------------------------------------------------------------------------------------
def _paths(row: Row, world: dict[str, Path], tmp: Path,
           request: pytest.FixtureRequest) -> dict[str, str]:
    paths = {k: str(v) for k, v in world.items()}
    if "{disk}" in row.argv:
        paths["disk"] = str(request.getfixturevalue("full_disk"))
    if "{G}" in row.argv or (row.setup or "").startswith(("G:", "G-:", "poison:G")):
        paths["G"] = str(request.getfixturevalue("gan_run"))
    (tmp / "file.txt").write_text("a file, not a folder\n")
    (tmp / "empty").mkdir()
    make_broken_images(tmp / "broken")
    make_broken_images(tmp / "brokenc", classes=("a", "b"))
    paths.update(tmp=str(tmp), file=str(tmp / "file.txt"), empty=str(tmp / "empty"),
                 broken=str(tmp / "broken"), brokenc=str(tmp / "brokenc"))
    if row.setup == "foreign-page":
        (tmp / "page.html").write_text("<html><body>my own page</body></html>\n")
    elif row.setup:
        kind, _, what = row.setup.partition(":")
        if kind == "poison":
            dest = tmp / "run"
            damaged_copy(Path(paths[what.rstrip("-")]), "ckpt-missing", dest)
            shutil.copy(Path(paths[what.rstrip("-")]) / "checkpoint.pt", dest / "checkpoint.pt")
            poison_checkpoint(dest, tmp / "MARKER")
        else:
            dest = damaged_copy(Path(paths[kind.rstrip("-")]), what, tmp / "run")
        if row.setup.endswith("-") or kind.endswith("-"):
            # killed before the end: no summary.json, so --resume reads the checkpoint
            (dest / "summary.json").unlink(missing_ok=True)
        paths["X"] = str(dest)
    return paths


def _touched(argv: list[str], paths: dict[str, str]) -> list[Path]:
    """The shared run folders the row names (its own folder is hashed whole)."""
    shared = [Path(paths[k]) for k in ("T", "S", "G", "C") if k in paths]
    return [p for p in shared if any(str(p) in a for a in argv)]


#: a row that blocks (a FIFO read, a lock wait) fails instead of hanging the suite
ROW_SECONDS = 120


@contextlib.contextmanager
def _deadline(seconds: int, name: str) -> Iterator[None]:
    def expired(signum: int, frame: object) -> None:
        raise TimeoutError(f"{name}: still running after {seconds} s (blocked?)")

    old = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.mark.parametrize("name", list(ROWS))
def test_hostile_row(name: str, world: dict[str, Path], tmp_path: Path,
                     request: pytest.FixtureRequest, capfd: pytest.CaptureFixture[str]) -> None:
    row = ROWS[name]
    paths = _paths(row, world, tmp_path, request)
    argv = shlex.split(row.argv.format(**paths))
    roots = [tmp_path, *_touched(argv, paths)]
    before = snapshot(*roots)
    with _deadline(ROW_SECONDS, name):
        got = call(argv, capfd)
    detail = f"{name}: {argv}\nexit {got.code}\nstdout {got.out!r}\nstderr {got.err_lines}"
    assert got.code == 2, detail
    assert got.out == "", detail
    assert len(got.err_lines) == 1, detail
    line = got.line
    assert line.startswith(f"droplab {argv[0]}: error: "), detail
    assert "Traceback" not in line and "Error:" not in line.split(": error: ", 1)[1][:40], detail
    for fragment in row.expect:
        assert fragment.lower() in line.lower(), f"{detail}\nmissing {fragment!r}"
    assert snapshot(*roots) == before, f"{detail}\nchanged files"
    assert not temp_leftovers(tmp_path), detail
    if "disk" in paths:  # a write cut short by the full disk left no temporary file
        assert not temp_leftovers(Path(paths["disk"])), detail
    assert not (tmp_path / "MARKER").exists(), f"{detail}\nthe payload ran"


def test_table_covers_every_command() -> None:
    commands = {r.argv.split()[0] for r in ROWS.values()}
    assert commands >= {"train", "evaluate", "finetune", "sweep", "gan", "stylize",
                        "style-train", "style-apply", "report", "serve", "inspect", "active"}
    assert len(ROWS) >= 100
    assert {r.setup.split(":")[1] for r in ROWS.values() if r.setup and ":" in r.setup
            if not r.setup.startswith("poison")} <= set(DAMAGE)



# ------------------------------------------------------------------------------------------
# real processes: an interrupt, then --resume; two writers at once
# ------------------------------------------------------------------------------------------
LONG = ["train", "--dataset", "digits", "--classes", "0-4", "--limit", "12", "--model",
        "lenet", "--epochs", "30", "--device", "cpu"]


def _env() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), OMP_NUM_THREADS="1",
               DROPLAB_PROGRESS="0", PYTHONWARNINGS="ignore::DeprecationWarning")
    return env


def _start(argv: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "droplab", *argv], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _wait_for_checkpoint(proc: subprocess.Popen[bytes], out: Path, epochs: int = 1) -> None:
    """Until the run has checkpointed ``epochs`` epochs (the run is then mid-way)."""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            _, err = proc.communicate()
            pytest.fail(f"the run ended (exit {proc.returncode}) before it could be "
                        f"interrupted: {err.decode()[-2000:]}")
        metrics = out / "metrics.jsonl"
        if (out / "checkpoint.pt").exists() and metrics.exists() and len(
                metrics.read_text().splitlines()) >= epochs:
            return
        time.sleep(0.05)
    proc.kill()
    pytest.fail("no checkpoint within 180 s")


def _lines(data: bytes) -> list[str]:
    return [x for x in data.decode(errors="replace").splitlines() if x.strip()]


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_interrupt_then_resume(tmp_path: Path, sig: signal.Signals) -> None:
    out = tmp_path / "run"
    proc = _start([*LONG, "--out", str(out)])
    _wait_for_checkpoint(proc, out)
    proc.send_signal(sig)
    try:
        _, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"{sig.name} did not stop the run")
    lines = _lines(err)
    assert proc.returncode == 130, lines
    assert len(lines) == 1 and lines[0].startswith("droplab train: interrupted"), lines
    assert "--resume" in lines[0] and "Traceback" not in err.decode()
    assert not temp_leftovers(out) and not (out / ".lock").exists()
    assert not (out / "summary.json").exists()
    if sig == signal.SIGTERM:
        return  # the same path as Ctrl-C from here on; resumed once, below, for Ctrl-C
    done = subprocess.run([sys.executable, "-m", "droplab", "train", "--resume", "--out",
                           str(out), "--device", "cpu", "--json"], env=_env(),
                          capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    summary = json.loads(done.stdout)  # --json: exactly one JSON object
    assert summary["epochs"] == 30 and summary["run_dir"] == str(out)
    epochs = [json.loads(x)["epoch"] for x in (out / "metrics.jsonl").read_text().splitlines()
              if x.strip() and "epoch" in json.loads(x)]
    assert epochs == sorted(set(epochs)) and epochs[-1] == 30, epochs  # nothing doubled


@pytest.mark.slow
def test_two_writers_at_once(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    proc = _start([*LONG, "--epochs", "100000", "--out", str(out)])
    try:
        _wait_for_checkpoint(proc, out)
        for argv in (["train", "--resume", "--out", str(out), "--device", "cpu"],
                     [*LONG, "--out", str(out)]):
            got = call(argv, capfd)
            assert got.code == 2 and len(got.err_lines) == 1, got
            assert got.line.startswith("droplab train: error: ") and got.out == "", got
            assert str(proc.pid) in got.line or "already holds a run" in got.line, got
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130


def test_resume_of_a_copied_folder_writes_only_the_copy(
        world: dict[str, Path], tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """config.json names the folder the run was created in; the resume follows the one
    named on the command line, and the original stays as it was."""
    copy = damaged_copy(world["T"], "summary-garbage", tmp_path / "copy")
    (copy / "summary.json").unlink()  # killed before its end
    before = snapshot(world["T"])
    got = call(["train", "--resume", "--out", str(copy), "--device", "cpu", "--json"], capfd)
    assert got.code == 0, got
    assert json.loads(got.out)["run_dir"] == str(copy)
    assert (copy / "summary.json").exists() and snapshot(world["T"]) == before
    again = call(["train", "--resume", "--out", str(copy), "--device", "cpu", "--json"], capfd)
    assert again.code == 0 and json.loads(again.out)["run_dir"] == str(copy), again
