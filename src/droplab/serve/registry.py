"""The models a server answers with, restored from run folders.

Each run folder's ``config.json`` names its task: ``train`` and ``finetune`` runs become
:class:`ClassifierModel` s (answered with Monte-Carlo dropout), ``style-train`` runs become
:class:`StyleModel` s (feed-forward style networks, Johnson et al. 2016).
"""

from __future__ import annotations

import json
import logging
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from droplab.errors import UserError
from droplab.runs import RunDir
from droplab.runs.restore import LoadedRun, load_run
from droplab.runtime import resolve_device
from droplab.serve import calibrate
from droplab.serve.errors import ApiError, one_line
from droplab.uncertainty import AbstainRule, Temperature, stochastic_modules

log = logging.getLogger("droplab.serve")

#: Upper bound of the ``samples`` option of /v1/stylize.
MAX_STYLE_SAMPLES = 8


@dataclass
class ClassifierModel:
    """A ``droplab train`` or ``finetune`` run ready to answer: model in eval mode and its
    preprocessing."""

    name: str
    run_dir: Path
    model: nn.Module
    classes: list[str]
    in_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    samples: int
    device: torch.device
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    task: str = "classify"
    #: the run's stored temperature that fits how it is answered (temperature.json)
    temperature: Temperature | None = None
    #: ``--abstain-at-error``: the threshold picked on the run's validation split
    abstain: AbstainRule | None = None

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "task": self.task, "run": str(self.run_dir),
                "classes": self.classes, "in_shape": list(self.in_shape),
                "mc_samples": self.samples,
                "temperature": self.temperature.temperature if self.temperature else None,
                "abstain": self.abstain.to_dict() if self.abstain else None}


@dataclass
class StyleModel:
    """A ``droplab style-train`` run: the transformer network and its dropout rate."""

    name: str
    run_dir: Path
    net: nn.Module
    dropout: float
    device: torch.device
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    task: str = "stylize"

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "task": self.task, "run": str(self.run_dir),
                "dropout": self.dropout, "max_samples": MAX_STYLE_SAMPLES if self.dropout else 1}


ServedModel = ClassifierModel | StyleModel


def load_models(runs: list[str], device: str = "auto", mc: int = 20, *,
                abstain_at_error: float | None = None, abstain_by: str = "entropy",
                seed: int = 0) -> list[ServedModel]:
    """Load every run folder; its task (``train``, ``finetune`` or ``style-train``) comes
    from config.json. Two folders with the same name are served as ``name`` and ``name-2``.
    A classifier's stored ``temperature.json`` is applied; with ``abstain_at_error`` each
    classifier gets the threshold on ``abstain_by`` picked on its validation split
    (:mod:`droplab.serve.calibrate`).

    Raises a one-line :class:`UserError` for a missing folder, an unreadable config, a task
    that cannot be served, or a checkpoint that cannot be loaded.
    """
    dev = resolve_device(device)
    out: list[ServedModel] = []
    names: Counter[str] = Counter()
    for spec in runs:
        run = RunDir.open(spec)
        try:
            task = run.read_config().get("task")
        except (json.JSONDecodeError, AttributeError, OSError):
            raise UserError(f"{run.config_path} is not valid JSON; pass an intact run folder"
                            ) from None
        base = run.path.resolve().name or "model"
        names[base] += 1
        name = base if names[base] == 1 else f"{base}-{names[base]}"
        if task not in ("train", "finetune", "style-train"):
            raise UserError(f"{run.path} is a {task!r} run; droplab serve serves classifier "
                            "('train', 'finetune') and style network ('style-train') run folders")
        loaded = load_run(run.path, dev)
        if task == "style-train":
            net = loaded.model
            if net.config.get("kind") == "adain":
                raise UserError(f"{run.path} is an arbitrary-style (--arbitrary) run, which "
                                "droplab serve does not serve yet; use droplab style-apply "
                                "RUN IMG --style STYLE")
            out.append(StyleModel(name, run.path, net, float(net.config.get("dropout", 0.0)),
                                  dev))
        else:
            m = _classifier(name, run.path, loaded, dev, mc)
            m.temperature = calibrate.served_temperature(m)
            if abstain_at_error is not None:
                m.abstain = calibrate.fit_abstain(m, loaded.config, abstain_at_error,
                                                  abstain_by, seed)
            out.append(m)
    return out


def _classifier(name: str, path: Path, lr: LoadedRun, dev: torch.device, mc: int
                ) -> ClassifierModel:
    c = lr.in_shape[0]
    if c not in (1, 3):
        raise UserError(f"{path} expects {c}-channel images; droplab serve feeds "
                        "greyscale (1) or RGB (3) models")
    samples = mc if stochastic_modules(lr.model) else 1
    if samples == 1:
        log.warning("%s has no dropout layer: answering with one pass (entropy only, "
                    "mutual information 0)", path)
    h, w = lr.in_shape[1:]
    return ClassifierModel(name, path, lr.model, lr.classes, (c, h, w), lr.mean, lr.std,
                           samples, dev)


def pick(models: list[ServedModel], task: str, name: str | None) -> ServedModel:
    """The served model of ``task`` named ``name`` (the first one when ``name`` is empty);
    404 when none of that task is served, 422 for an unknown name."""
    of_task = [m for m in models if m.task == task]
    if not of_task:
        kind = ("classifier ('train' run)" if task == "classify"
                else "style network ('style-train' run)")
        raise ApiError(404, f"no {kind} is served here; restart droplab serve with one")
    if not name:
        return of_task[0]
    for m in of_task:
        if m.name == name:
            return m
    raise ApiError(422, f"unknown {task} model {one_line(name)[:60]!r}; choose one of: "
                   f"{', '.join(m.name for m in of_task)}")
