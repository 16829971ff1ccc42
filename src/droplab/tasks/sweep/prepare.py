"""What one worker loads before its first trial, per task: a classify sweep's folds
(:class:`~droplab.tasks.sweep.objective.Prepared`) or a GAN sweep's data and held-out
halves (:class:`~droplab.tasks.sweep.gan_objective.GanPrepared`)."""

from __future__ import annotations

from droplab.data import DatasetBundle
from droplab.tasks.sweep.config import SweepConfig
from droplab.tasks.sweep.objective import FoldScorer, Prepared

__all__ = ["prepare"]


def prepare(cfg: SweepConfig, bundle: DatasetBundle | None = None) -> FoldScorer:
    """The setup of ``cfg``'s task (``bundle``: classify data already in memory)."""
    if cfg.sweep_task == "gan":
        # deferred: the GAN scoring stack (torchmetrics; about +2 CPU-s, +40 %, on the start
        # of every `droplab sweep`) is imported only by sweeps that train GANs
        from droplab.tasks.sweep.gan_objective import GanPrepared

        if bundle is not None:
            raise TypeError("a GAN sweep loads its own data (bundle is for classify sweeps)")
        return GanPrepared(cfg)
    return Prepared(cfg, bundle)
