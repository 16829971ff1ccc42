"""One self-contained HTML page (and PNG plots) from any mix of run folders.

``droplab report runs/a runs/b --out report.html`` reads each run folder (``config.json``,
``metrics.jsonl``, ``summary.json``, ``evaluation.json``, ``*.npz`` and the images a task
wrote) and writes a single HTML file whose images are embedded as base64 ``data:`` URIs:
no external assets, no JavaScript. The plots it makes are also written as PNG files into
a folder beside the page (``report.html`` → ``report_files/``).

The report is generic first, so it copes with whatever keys a run folder holds: every
numeric series of ``metrics.jsonl`` is plotted over epoch (or step); every scalar of
``summary.json`` / ``evaluation.json`` and every config value is shown in a table, one row
per run, with the columns that differ between runs highlighted and first; every image is
embedded with its file name. On top come specific views when their data is present: test
metrics against the dropout rate (mean ± standard deviation over the runs — usually seeds
— sharing a rate), a sweep's per-setting cross-validation results, MC-dropout uncertainty
histograms, and image sequences (GAN samples over epochs) as timelines.

Damaged folders do not stop it: whatever cannot be read (unreadable JSON, metric lines cut
short, empty folders, broken images, missing files) is left out and listed once, in the
page's "Skipped" section, on stderr and in the ``--json`` summary.

One job per module:

- :mod:`~droplab.report.collect` — find run folders and read them (→ :class:`RunRecord`);
- :mod:`~droplab.report.images` — which images to show, each checked before embedding;
- :mod:`~droplab.report.views` — rate groups, sweep settings, uncertainty arrays;
- :mod:`~droplab.report.figures` — the matplotlib plots (PNG bytes);
- :mod:`~droplab.report.tables` — the tables as data;
- :mod:`~droplab.report.render` — the page from ``templates/*.j2`` (Jinja2, autoescaped);
- :mod:`~droplab.report.tensorboard` — the ``--tensorboard`` export;
- :mod:`~droplab.report.build` — ``run(ReportConfig)``: check ``--out``, read, render, write.
"""

from droplab.report.build import ReportConfig, output_paths, run
from droplab.report.collect import (
    EVALUATION,
    RunRecord,
    expand_run_paths,
    load_run_record,
    npz_uncertainty,
    read_runs,
)
from droplab.report.figures import (
    plot_learning_curves,
    plot_metric_vs_rate,
    plot_sweep,
    plot_uncertainty_histograms,
)
from droplab.report.images import data_uri, image_sequences, thin
from droplab.report.render import render_page, render_table
from droplab.report.skipped import Skipped
from droplab.report.tables import Table, diff_table, sweep_table
from droplab.report.tensorboard import export_tensorboard
from droplab.report.values import flatten
from droplab.report.views import (
    rate_groups,
    rate_table,
    run_rate,
    sweep_settings,
    uncertainty_arrays,
)

__all__ = [
    "EVALUATION",
    "ReportConfig",
    "RunRecord",
    "Skipped",
    "Table",
    "data_uri",
    "diff_table",
    "expand_run_paths",
    "export_tensorboard",
    "flatten",
    "image_sequences",
    "load_run_record",
    "npz_uncertainty",
    "output_paths",
    "plot_learning_curves",
    "plot_metric_vs_rate",
    "plot_sweep",
    "plot_uncertainty_histograms",
    "rate_groups",
    "rate_table",
    "read_runs",
    "render_page",
    "render_table",
    "run",
    "run_rate",
    "sweep_settings",
    "sweep_table",
    "thin",
    "uncertainty_arrays",
]
