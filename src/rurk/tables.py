"""Writing a table: a Markdown pipe table for the reports and a CSV file beside it.

Its own module (below :mod:`rurk.report` and :mod:`rurk.attack_report`) so that both report writers share one
implementation without importing each other.
"""

from __future__ import annotations

import csv
from pathlib import Path


def markdown(header: list[str], rows: list[list[str]]) -> str:
    """A GitHub pipe table: the header, the separator row, then one line per row (cells already formatted)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    """Write ``header`` and ``rows`` to ``path`` as CSV (the csv module's default dialect)."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
