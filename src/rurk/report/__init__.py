"""Multi-seed aggregation and the report files of `rurk run`.

Writes, under the scenario's run directory:

- ``summary.json`` — per method: mean/std over seeds of every metric (accuracies and MIA in percent),
  Avg. Gap to Re-train on the seed means, wall time, and the residual-knowledge curves;
- ``report.md`` — the paper's Table-1 layout "mean ± std (gap)", plus the prevalence, perturbed
  unlearn-accuracy and disagreement tables over tau;
- ``table.csv``, ``prevalence.csv``, ``perturbed_unlearn.csv``, ``disagreement.csv``;
- ``residual.png`` — r_tau vs tau for every method (Re-train is the line at 1).

Every number in the report is recomputed from the stored per-seed results, never copied by hand.


The package: :mod:`.summary` (summary.json), :mod:`.tables` (the tables), :mod:`.write` (report.md and the files),
:mod:`.claims` (the claims check), :mod:`.readme` (the README's blocks and their check), :mod:`.plots` and
:mod:`.attack_report` (figures).
"""

from __future__ import annotations

from .summary import REFERENCE_ROWS, run_info, summarise
from .tables import main_table, markdown, write_csv
from .write import write_report

__all__ = ["REFERENCE_ROWS", "main_table", "markdown", "run_info", "summarise", "write_csv", "write_report"]
