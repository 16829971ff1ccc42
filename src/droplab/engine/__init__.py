"""The training engine: one loop with callbacks, its options, run state and resume rule.

- :mod:`.config`: :class:`TrainConfig` (the loop's options), :class:`DataConfig`,
  :class:`ClassifyDataConfig`, :class:`RunConfig` — the sections every training task nests;
- :mod:`.loop`: :func:`fit` = :func:`train_one_epoch` + :func:`evaluate` + a short driver;
- :mod:`.callbacks`: the callback protocol and the built-ins (dropout schedule, max-norm,
  Concrete regulariser, Lookahead, NaN guard, metrics log, TensorBoard, checkpoints,
  unfreezing);
- :mod:`.optim`: optimisers, per-batch LR schedules, mixed precision;
- :mod:`.state`: RNG capture, :class:`Progress`, the NaN guard shared by every loop;
- :mod:`.resume`: the one resume rule (config check, checkpoint, metrics truncation);
- :mod:`.distributed`: DistributedDataParallel under ``torchrun``.

The GAN and style-train tasks keep their own steps but use :mod:`.state` and
:mod:`.resume` for everything around them.
"""

from droplab.engine.callbacks import (
    Callback,
    Checkpoint,
    ConcreteRegularizer,
    DropoutSchedule,
    GradualUnfreezing,
    Lookahead,
    MaxNorm,
    MetricsLog,
    NanGuard,
    OnEpochEnd,
    TensorBoard,
    current_dropout_p,
    dropout_modules,
    standard_callbacks,
)
from droplab.engine.config import ClassifyDataConfig, DataConfig, RunConfig, TrainConfig
from droplab.engine.distributed import distributed_env, init_distributed, shutdown_distributed
from droplab.engine.loop import Loop, evaluate, fit, predict_proba, train_one_epoch
from droplab.engine.optim import amp_settings, make_lr_scheduler, make_optimizer
from droplab.engine.resume import finished_summary, open_run, resume_point, stored_config
from droplab.engine.state import Progress, TrainingDiverged, capture_rng, check_finite, restore_rng

__all__ = [
    "Callback",
    "Checkpoint",
    "ClassifyDataConfig",
    "ConcreteRegularizer",
    "DataConfig",
    "DropoutSchedule",
    "GradualUnfreezing",
    "Lookahead",
    "Loop",
    "MaxNorm",
    "MetricsLog",
    "NanGuard",
    "OnEpochEnd",
    "Progress",
    "RunConfig",
    "TensorBoard",
    "TrainConfig",
    "TrainingDiverged",
    "amp_settings",
    "capture_rng",
    "check_finite",
    "current_dropout_p",
    "distributed_env",
    "dropout_modules",
    "evaluate",
    "finished_summary",
    "fit",
    "init_distributed",
    "make_lr_scheduler",
    "make_optimizer",
    "open_run",
    "predict_proba",
    "restore_rng",
    "resume_point",
    "shutdown_distributed",
    "standard_callbacks",
    "stored_config",
    "train_one_epoch",
]
