"""The demo's visual report: figures, tables, ``report.html`` and ``report.md`` from what the stages wrote.

It reads records, evaluation summaries, the student card and the package manifest; it trains
and predicts nothing (:func:`build_report`).
"""

from distill.report.build import ReportFiles, build_report
from distill.report.inputs import ReportError, collect

__all__ = ["ReportError", "ReportFiles", "build_report", "collect"]
