"""Restore the trained model of any run folder: :func:`load_run`.

A run folder says what it is in ``config.json`` (``"task"``) and holds its weights in
``checkpoint.pt`` (read safely, :mod:`droplab.runs.checkpoint`); the architecture comes
from what the run stored, never from the code that trained it and never from the
network (pretrained backbones are built randomly initialised, then overwritten):

==============  ===========================================  ================================
task            architecture from                            :attr:`LoadedRun.model`
==============  ===========================================  ================================
``train``       checkpoint ``meta["model_config"]``           the classifier
``finetune``    ``config.json`` (backbone or ``--from`` run,  the :class:`~droplab.models.
                head options), checkpoint ``meta``            transfer.FinetuneNet`
``gan``         ``config.json`` + checkpoint ``shape``        the EMA generator (or the last
                                                             one without EMA); all three
                                                             nets in :attr:`LoadedRun.nets`
``style-train`` checkpoint ``net_config``                     the ``TransformerNet``
==============  ===========================================  ================================

Classifier runs also give what feeding the model needs (``classes``, ``in_shape``,
``mean``, ``std``). Works for finished runs and for runs still in progress (the latest
checkpoint). Every problem is a one-line :class:`~droplab.errors.UserError`; none of them
advises deleting anything (reading a model must never throw it away).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from droplab.config import flatten
from droplab.errors import DataNotFound, UserError
from droplab.models import ModelConfig, build_model
from droplab.models import gan as gan_nets
from droplab.models.style import AdaINNet, TransformerNet, build_style_net
from droplab.models.transfer import (
    FinetuneNet,
    Source,
    TransferSpec,
    assemble,
    backbone_source,
    feature_dim,
)
from droplab.runs.checkpoint import MODEL_ADVICE, load_checkpoint
from droplab.runs.folder import CHECKPOINT, RunDir
from droplab.runtime import resolve_device

#: The run kinds :func:`load_run` restores.
TASKS = ("train", "finetune", "gan", "style-train")


@dataclass
class LoadedRun:
    """A trained model (eval mode, on the requested device) and what is needed to use it."""

    task: str
    model: nn.Module
    config: dict[str, Any]
    run_dir: Path
    summary: dict[str, Any] | None = None
    classes: list[str] = field(default_factory=list)
    in_shape: tuple[int, ...] = ()
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    #: every network the run trained, by checkpoint key (gan: ``g``, ``d``, ``g_ema``)
    nets: dict[str, nn.Module] = field(default_factory=dict)
    #: the checkpoint's entries that hold no tensor (step, epoch, configs, meta)
    info: dict[str, Any] = field(default_factory=dict)


#: the tasks whose runs hold a classifier (evaluate, finetune --from, feature extractors)
CLASSIFIER_TASKS = ("train", "finetune")


def load_run(run_dir: str | Path, device: str | torch.device = "cpu", *,
             tasks: Sequence[str] | None = None) -> LoadedRun:
    """Rebuild the trained model of ``run_dir`` in eval mode on ``device``.

    ``tasks``: the run kinds the caller can use (e.g. :data:`CLASSIFIER_TASKS`); another
    kind is a one-line error before its checkpoint is read.
    """
    run = RunDir.open(run_dir)
    config = _read_config(run)
    task = config.get("task")
    if task is not None and task not in _RESTORERS:
        raise UserError(f"{run.path} is a {task!r} run, which has no trained model to load; "
                        f"pass a {', '.join(TASKS[:-1])} or {TASKS[-1]} run folder")
    if tasks is not None and task is not None and task not in tasks:
        wanted = " or ".join(f"`droplab {t}`" for t in tasks)
        raise UserError(f"{run.path} is a {task!r} run, not one this command can use; pass "
                        f"the folder of a {wanted} run")
    dev = resolve_device(device)
    ckpt = run.load_checkpoint(map_location="cpu", advice=MODEL_ADVICE)
    if ckpt is None:
        raise UserError(f"{run.path} has no {CHECKPOINT} yet; wait for the run's first "
                        "checkpoint (or train it)")
    if task is None:  # folders written before config.json named the task
        task = "train" if "model_config" in (ckpt.get("meta") or {}) else (
            "style-train" if "net_config" in ckpt else None)
    restore = _RESTORERS.get(str(task))
    if restore is None:
        raise UserError(f"{run.path} does not say which task wrote it (no \"task\" in "
                        f"{run.config_path.name}); pass a {', '.join(TASKS[:-1])} or "
                        f"{TASKS[-1]} run folder")
    if tasks is not None and task not in tasks:  # an old folder, told apart by its checkpoint
        raise UserError(f"{run.path} holds a {task!r} model, not one this command can use")
    loaded = restore(run, config, ckpt)
    for net in (loaded.model, *loaded.nets.values()):
        net.to(dev).eval()
    loaded.summary = _read_summary(run)
    loaded.info = {k: v for k, v in ckpt.items() if not _holds_tensors(v)}
    return loaded


def load_style_net(model: str | Path, device: str | torch.device = "cpu"
                   ) -> tuple[TransformerNet | AdaINNet, dict[str, Any]]:
    """A ``style-train`` network from its run folder or its ``checkpoint.pt`` file alone.

    Returns the network (eval mode) and the checkpoint.
    """
    path = Path(model)
    if path.is_dir():
        path = path / CHECKPOINT
    if not path.is_file():
        raise DataNotFound(f"no style model at {path}; pass a style-train run folder or its "
                           f"{CHECKPOINT}")
    state = load_checkpoint(path, "cpu", advice=MODEL_ADVICE)
    net = _style_net(path, state)
    return net.to(resolve_device(device)).eval(), state


# -- one restorer per task ---------------------------------------------------------------------


def _classifier(run: RunDir, config: dict[str, Any], ckpt: dict[str, Any]) -> LoadedRun:
    meta = _meta(run, ckpt, ("model_config",))
    in_shape = tuple(int(v) for v in meta["in_shape"])
    mc = dict(meta["model_config"])
    if mc.get("widths") is not None:
        mc["widths"] = tuple(mc["widths"])
    names = {f.name for f in dataclasses.fields(ModelConfig)}
    model_cfg = ModelConfig(**{k: v for k, v in mc.items() if k in names})
    if "pretrained" in names:  # the checkpoint holds the weights: never download again
        model_cfg = dataclasses.replace(model_cfg, pretrained=False)
    if "weights" in names:
        model_cfg = dataclasses.replace(model_cfg, weights=None)
    model = build_model(model_cfg, in_shape, len(meta["classes"]))
    _load_weights(run, model, ckpt, "model")
    return _classifier_run("train", run, config, model, meta, in_shape)


def _finetune(run: RunDir, config: dict[str, Any], ckpt: dict[str, Any]) -> LoadedRun:
    meta = _meta(run, ckpt, ())
    in_shape = tuple(int(v) for v in meta["in_shape"])
    model = finetune_net(config, len(meta["classes"]), in_shape)
    _load_weights(run, model, ckpt, "model")
    return _classifier_run("finetune", run, config, model, meta, in_shape)


def finetune_net(config: dict[str, Any], num_classes: int, in_shape: tuple[int, ...]
                 ) -> FinetuneNet:
    """The architecture of a finetune run from its ``config.json``, without downloading.

    The weights come from the run's checkpoint afterwards, so torchvision and timm
    backbones are built randomly initialised; a ``--from RUN`` backbone needs that source
    run folder, which defines its architecture.
    """
    config = flatten(config)  # nested config.json (sections) or the flat one of release 0.1
    from_run = config.get("from_run")
    if from_run:
        try:
            src_run = load_run(from_run, "cpu")
        except UserError as exc:
            raise UserError(f"this finetune run was built on the run {from_run}, which "
                            f"defines its architecture and cannot be loaded ({exc}); restore "
                            "that folder") from None
        src = Source(src_run.model, feature_dim(src_run.model, src_run.in_shape),
                     tuple(src_run.in_shape), src_run.mean, src_run.std,  # type: ignore[arg-type]
                     f"run {from_run}")
    else:
        backbone = config.get("backbone")
        if not backbone:
            raise UserError("this finetune run's config.json names neither a backbone nor a "
                            "source run; restore its config.json from a copy of the run")
        src = backbone_source(str(backbone), None, pretrained=False,
                              drop_path=float(config.get("drop_path", 0.0)))
    return assemble(src, TransferSpec.from_config(config), num_classes, in_shape,
                    dataset=str(config.get("dataset", "the dataset")))


def _gan(run: RunDir, config: dict[str, Any], ckpt: dict[str, Any]) -> LoadedRun:
    stored = flatten(ckpt["config"] if isinstance(ckpt.get("config"), dict) else config)
    shape = ckpt.get("shape")
    if shape is None or not all(k in ckpt for k in ("g", "d")):
        raise UserError(f"{run.path / CHECKPOINT} is not a gan checkpoint (it lacks the "
                        "networks or the image shape); pass an intact gan run folder")
    shape = tuple(int(v) for v in shape)
    g, d = gan_nets.build_gan(shape, **gan_nets.gan_options(stored))  # type: ignore[arg-type]
    nets: dict[str, nn.Module] = {"g": g, "d": d}
    _load_weights(run, g, ckpt, "g")
    _load_weights(run, d, ckpt, "d")
    if "g_ema" in ckpt:
        g_ema, _ = gan_nets.build_gan(shape, **gan_nets.gan_options(stored))  # type: ignore[arg-type]
        _load_weights(run, g_ema, ckpt, "g_ema")
        nets["g_ema"] = g_ema
    use_ema = float(stored.get("ema", 0.0) or 0.0) > 0 and "g_ema" in nets
    channels = shape[0]
    return LoadedRun(task="gan", model=nets["g_ema"] if use_ema else g, config=config,
                     run_dir=run.path, in_shape=shape, mean=(0.5,) * channels,
                     std=(0.5,) * channels, nets=nets)


def _style(run: RunDir, config: dict[str, Any], ckpt: dict[str, Any]) -> LoadedRun:
    net = _style_net(run.checkpoint_path, ckpt)
    return LoadedRun(task="style-train", model=net, config=config, run_dir=run.path,
                     in_shape=(3,))


_RESTORERS: dict[str, Callable[[RunDir, dict[str, Any], dict[str, Any]], LoadedRun]] = {
    "train": _classifier,
    "finetune": _finetune,
    "gan": _gan,
    "style-train": _style,
}


# -- helpers -------------------------------------------------------------------------------------


def _read_config(run: RunDir) -> dict[str, Any]:
    try:
        config = run.read_config()
    except (json.JSONDecodeError, UnicodeDecodeError, OSError):
        raise UserError(f"{run.config_path} is not valid JSON; restore it from a copy of the "
                        "run") from None
    if not isinstance(config, dict):
        raise UserError(f"{run.config_path} holds no JSON object; restore it from a copy of "
                        "the run")
    return config


def _read_summary(run: RunDir) -> dict[str, Any] | None:
    try:
        summary = run.read_summary()
    except (UserError, json.JSONDecodeError, UnicodeDecodeError, OSError):
        return None  # the model loads without its figures
    return summary if isinstance(summary, dict) else None


def _meta(run: RunDir, ckpt: dict[str, Any], extra: tuple[str, ...]) -> dict[str, Any]:
    meta = ckpt.get("meta") or {}
    missing = [k for k in ("classes", "in_shape", "mean", "std", *extra) if k not in meta]
    if missing:
        raise UserError(f"{run.path} was not written by a classifier task (checkpoint lacks "
                        f"{', '.join(missing)}); pass a `droplab train` or `droplab finetune` "
                        "run folder")
    return meta


def _classifier_run(task: str, run: RunDir, config: dict[str, Any], model: nn.Module,
                    meta: dict[str, Any], in_shape: tuple[int, ...]) -> LoadedRun:
    return LoadedRun(task=task, model=model, config=config, run_dir=run.path,
                     classes=[str(c) for c in meta["classes"]], in_shape=in_shape,
                     mean=tuple(float(v) for v in meta["mean"]),
                     std=tuple(float(v) for v in meta["std"]))


def _load_weights(run: RunDir, model: nn.Module, ckpt: dict[str, Any], key: str) -> None:
    state = ckpt.get(key)
    if not isinstance(state, dict):
        raise UserError(f"{run.path / CHECKPOINT} holds no {key!r} weights; "
                        f"{MODEL_ADVICE}")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0][:120]
        raise UserError(f"the weights in {run.path / CHECKPOINT} do not fit the architecture "
                        f"its config.json describes ({first}); {MODEL_ADVICE}") from None


def _style_net(path: Path, state: dict[str, Any]) -> TransformerNet | AdaINNet:
    net_config = state.get("net_config")
    if not isinstance(net_config, dict) or not isinstance(state.get("model"), dict):
        raise UserError(f"{path} is not a style-train checkpoint (no net_config); pass a "
                        "style-train run folder or its checkpoint.pt")
    try:
        net = build_style_net(net_config)
        net.load_state_dict(state["model"])
    except (TypeError, ValueError, RuntimeError, UserError) as exc:
        raise UserError(f"{path} is not a readable style-train checkpoint "
                        f"({type(exc).__name__}); retrain or pass another file") from None
    return net


def _holds_tensors(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return True
    if isinstance(value, dict):
        return any(_holds_tensors(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(_holds_tensors(v) for v in value)
    return False


__all__ = ["CLASSIFIER_TASKS", "TASKS", "LoadedRun", "finetune_net", "load_run", "load_style_net"]
