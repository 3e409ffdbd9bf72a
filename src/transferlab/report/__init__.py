"""Reports: the printed table (`table.py`), and report.html / report.md beside results.json (`document.py`, `plots.py`)."""

from transferlab.report.document import rebuild_report, write_report

__all__ = ["rebuild_report", "write_report"]
