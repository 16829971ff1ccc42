"""The one resume rule, shared by every command that writes a run folder.

- A new run creates its folder (refusing one that already holds a run) and writes
  ``config.json`` (task + nested config).
- ``--resume`` reopens the folder: it must hold a run of the same task, and the config
  asked for must equal the stored one except for *runtime* options (device, output folder,
  and what each task marks ``runtime``: e.g. a GAN's ``--epochs``); anything else is one
  :class:`~droplab.errors.ResumeError` naming every differing option with both values. The
  command line starts from the stored config (:func:`stored_config`), so ``droplab X --out
  RUN --resume`` needs nothing else. When a runtime option did change, ``config.json`` is
  rewritten with the new value (a plain resume writes nothing).
- On the checkpoint side (:func:`resume_point`): training continues from the checkpoint's
  step and ``metrics.jsonl`` is cut back to it (to nothing without a checkpoint); a run whose
  checkpoint says it finished returns its stored summary and changes no file.
"""

from __future__ import annotations

from typing import Any, TypeVar

import torch

from droplab.config import Config, differences, leaves
from droplab.errors import ResumeError, UserError
from droplab.runs import RunDir

C = TypeVar("C", bound=Config)


def _check_task(stored: dict[str, Any], task: str, run: RunDir) -> None:
    kind = stored.get("task")
    if kind != task:
        raise ResumeError(f"{run.path} holds a {kind!r} run, not a {task!r} run; pass the "
                          f"folder of a `droplab {task}` run or start a new --out folder")


def stored_config(cls: type[C], out: str, task: str) -> C:
    """The config stored in the run folder ``out`` (a ``task`` run), as a ``cls``."""
    run = RunDir.create(out, task, resume=True)
    stored = run.read_config()
    _check_task(stored, task, run)
    return _stored_as(cls, stored, run)


def _stored_as(cls: type[C], stored: dict[str, Any], run: RunDir) -> C:
    """``stored`` as a ``cls``; a value the user never typed is blamed on the file."""
    try:
        return cls.from_dict(stored)
    except UserError as exc:
        raise ResumeError(f"{run.config_path} does not hold a valid config ({exc}); restore "
                          "it from a copy of the run or start a new --out folder") from None


def open_run(cfg: Config, task: str, *, resume: bool, out: str = "run.out",
             finished: tuple[str, int] | None = None) -> RunDir:
    """Create (new run) or reopen (``resume``) the run folder at ``cfg``'s ``out`` option.

    A new run writes ``config.json``; a resumed one checks ``cfg`` against it (see the
    module docstring) and records changed runtime options — unless ``finished`` (a summary
    key and the target, e.g. ``("epochs", 5)``) says the run is already done. ``cfg``'s
    ``out`` is set to the folder actually used.
    """
    run = RunDir.create(cfg.get(out), task, resume=resume)
    if not resume:
        _set(cfg, out, str(run.path))
        run.write_config(cfg, task=task)
        return run
    stored_dict = run.read_config()
    _check_task(stored_dict, task, run)
    stored = _stored_as(type(cfg), stored_dict, run)
    diff = [p for p in differences(stored, cfg) if p != out]
    if diff:
        verb = "differs" if len(diff) == 1 else "differ"
        raise ResumeError(f"cannot resume {run.path}: {_describe(stored, cfg, diff)} {verb} "
                          "from its config.json; resume with the same options "
                          f"(only {_runtime_flags(cfg)} may change) or start a new --out folder")
    changed = [p for p in differences(stored, cfg, include_runtime=True) if p != out]
    _set(cfg, out, str(run.path))  # the folder named, wherever the run was created
    done = finished is not None and finished_summary(run, *finished) is not None
    if changed and not done:  # e.g. a longer GAN run: the folder records what it now holds
        run.write_config(cfg, task=task)
    return run


def finished_summary(run: RunDir, key: str, target: int) -> dict[str, Any] | None:
    """The stored summary when the run already finished ``target`` epochs / steps (its
    summary's ``key``): resuming it then changes no file. ``None``: there is work to do
    (no summary yet, or a longer run was asked for)."""
    summary = run.read_summary()
    if summary is not None and summary.get(key) == target:
        if "run_dir" in summary:  # where the run is now (a copied or moved folder)
            summary["run_dir"] = str(run.path)
        return summary
    return None


def resume_point(run: RunDir, device: torch.device | str = "cpu", *,
                 truncate: bool = True) -> dict[str, Any] | None:
    """The checkpoint a resumed run continues from (``None``: start from scratch).

    With ``truncate`` (the process that writes), ``metrics.jsonl`` is cut back to the
    checkpoint's ``step`` — to nothing when there is no checkpoint — so records written
    after it (or a line cut short by a crash) are not doubled; an intact log is not touched.
    """
    ckpt = run.load_checkpoint(map_location=device)
    if truncate and run.metrics_path.exists():
        step = int(ckpt.get("step", 0)) if ckpt is not None else -1
        lines = [x for x in run.metrics_path.read_text().splitlines() if x.strip()]
        kept = [r for r in run.read_metrics() if int(r.get("step", 0)) <= step]
        if len(kept) != len(lines):
            run.truncate_metrics(lambda r: int(r.get("step", 0)) <= step)
    return ckpt


def _set(cfg: Config, path: str, value: Any) -> None:
    *parents, name = path.split(".")
    node: Any = cfg
    for part in parents:
        node = getattr(node, part)
    setattr(node, name, value)


def _describe(stored: Config, given: Config, paths: list[str]) -> str:
    flags = {leaf.path: leaf.flag for leaf in leaves(given)}
    parts = [f"{flags[p]} (stored {stored.get(p)!r}, given {given.get(p)!r})" for p in paths]
    return ", ".join(parts)


def _runtime_flags(cfg: Config) -> str:
    return ", ".join(leaf.flag for leaf in leaves(cfg, cli_only=True) if leaf.option.runtime)
