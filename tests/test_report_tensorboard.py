"""``droplab report --tensorboard`` (``droplab.report.tensorboard``): the same scalars."""

from __future__ import annotations

from pathlib import Path

import pytest

from droplab.report import ReportConfig, run
from report_runs import acc_of, make_train_run


def test_tensorboard_export_holds_the_same_scalars(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = make_train_run(tmp_path / "runs", 0.25, 0)
    tb = tmp_path / "tb"
    summary = run(ReportConfig(runs=[str(run_dir)], out=str(tmp_path / "r.html"),
                               tensorboard=str(tb)))
    assert summary["tensorboard"] == [str(tb / "train-p0.25-s0")]
    acc = EventAccumulator(summary["tensorboard"][0])
    acc.Reload()
    val_loss = acc.Scalars("val_loss")
    assert [e.step for e in val_loss] == [10, 20, 30]  # "step" is the global step
    assert [e.value for e in val_loss] == pytest.approx([1.1, 0.55, 1.1 / 3], rel=1e-6)
    assert acc.Scalars("summary/test_acc")[0].value == pytest.approx(acc_of(0.25, 0), rel=1e-6)
