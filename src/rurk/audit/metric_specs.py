"""The evaluation metrics, declared once, and the outcome of a cell (success, or failure with its reason).

:data:`EVAL_METRICS` is the one list of the standard metrics a row is scored on: their keys in ``evaluate()``'s
output and the store, their labels in the report's table, their unit and scale (fractions stored, shown as
percent with two decimals), and whether Avg. Gap averages them. Evaluation (:mod:`rurk.run.experiment`), the gap
(:func:`rurk.audit.metrics.avg_gap`), the report's table, ``metrics.csv`` and ``summary.json`` (:mod:`rurk.report`)
and the claims (:mod:`rurk.report.claims`) all read it; :data:`GAP_KEYS`, :data:`PCT_KEYS` and :data:`LABELS` are
derived views of it.

A cell's result is stored as a JSON dict (format unchanged): a failed cell carries ``"error"`` (the reason) or
``"diverged": true`` (with ``"diverged_step"``); anything else is a success. :func:`cell_failure` is the one
reading of that, :func:`failed_cell` the one way a failure is built.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class MetricSpec:
    """One evaluation metric: ``key`` in the stored dicts, ``label`` in the report's table, ``unit`` as shown,
    ``scale`` from the stored value to the shown one, ``decimals`` shown, ``in_avg_gap``: Avg. Gap averages it."""

    key: str
    label: str
    unit: str = "%"
    scale: float = 100.0
    decimals: int = 2
    in_avg_gap: bool = True


RETAIN = MetricSpec("retain_acc", "Retain")
UNLEARN = MetricSpec("unlearn_acc", "Unlearn")  # 1 − accuracy on the forget set
TEST = MetricSpec("test_acc", "Test")
MIA = MetricSpec("mia", "MIA")
#: Re-learn time: epochs of fine-tuning on S_f until its loss is back to (1+η)·Original's; censored above a cap,
#: so it is aggregated and shown apart (mean over uncensored seeds, with the censored count), never in Avg. Gap.
RELEARN = MetricSpec("relearn_epochs", "Re-learn (epochs)", unit="epochs", scale=1.0, in_avg_gap=False)

#: The standard metrics every scored row has, in table order (Table 1 of the paper).
EVAL_METRICS: tuple[MetricSpec, ...] = (RETAIN, UNLEARN, TEST, MIA)
#: The metrics stored as fractions and reported in percent (summary.json, the table, metrics.csv).
PCT_METRICS: tuple[MetricSpec, ...] = tuple(m for m in EVAL_METRICS if m.unit == "%")
PCT_KEYS: tuple[str, ...] = tuple(m.key for m in PCT_METRICS)
#: The metrics Avg. Gap averages over.
GAP_KEYS: tuple[str, ...] = tuple(m.key for m in EVAL_METRICS if m.in_avg_gap)
LABELS: dict[str, str] = {m.key: m.label for m in (*EVAL_METRICS, RELEARN)}


def cell_failure(cell: Mapping | None) -> str | None:
    """Why a cell (an evaluation's metrics, a method's record, a stored curve, a report's ``failed`` entry) has no
    result, or None when it has one: its ``"error"``, "diverged at step N", or "no result" for an absent or empty
    cell. The reason is never empty, so ``if cell_failure(m):`` is the failure test."""
    if not cell:
        return "no result"
    if "error" in cell:
        return str(cell["error"]) or "failed"
    if cell.get("diverged"):
        return f"diverged at step {cell.get('diverged_step')}"
    return None


def failed_cell(reason: str) -> dict:
    """The stored form of a failed cell (its metrics are the reason and nothing else)."""
    return {"error": reason}


def failure_reason(failed: Mapping) -> str:
    """The reason of one of a row's ``failed`` entries in summary.json (``{"seed", "error" | "diverged", ...}``)."""
    return cell_failure({k: v for k, v in failed.items() if k != "seed"}) or "no result"
