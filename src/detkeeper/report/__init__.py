"""The run report: one self-contained HTML page per run directory (``RUN/report.html``).

    from detkeeper.report import write_report
    path = write_report("runs/cells")          # RUN/report.html; detkeeper.train also writes it at its end

Modules: :mod:`rundata` (config, label map, ledger), :mod:`history` (TensorBoard's training
curves), :mod:`best_evaluation` (per-class AP,
PR curves, sample predictions of the best checkpoint), :mod:`figures` (matplotlib and drawn
images), :mod:`page` (the HTML), :mod:`build` (``write_report``), :mod:`training_end` (the
trainer's hook).
"""

from detkeeper.report.build import WrittenReport, build_report, write_report
from detkeeper.run.layout import REPORT_FILE

__all__ = ["REPORT_FILE", "WrittenReport", "build_report", "write_report"]
