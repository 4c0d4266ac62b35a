"""The one declaration of the evaluation metrics (rurk.audit.metric_specs) drives the report's table, metrics.csv and
Avg. Gap; a failed cell is read in one place (cell_failure) and reported as failed with its reason."""

from __future__ import annotations

import pytest

from rurk.audit import metrics as M
from rurk.report import summary, tables, write
from rurk.run.experiment import SeedResult
from rurk.audit.metric_specs import EVAL_METRICS, GAP_KEYS, LABELS, PCT_KEYS, RELEARN, cell_failure, failed_cell

REF = {"retain_acc": 0.75, "unlearn_acc": 0.25, "test_acc": 0.625, "mia": 0.5}
GD = {"retain_acc": 0.625, "unlearn_acc": 0.375, "test_acc": 0.625, "mia": 0.5}


def test_the_declaration_is_the_papers_four_metrics_and_every_derived_view_follows_it():
    assert [(m.key, m.label, m.unit, m.scale, m.decimals, m.in_avg_gap) for m in EVAL_METRICS] == [
        ("retain_acc", "Retain", "%", 100.0, 2, True), ("unlearn_acc", "Unlearn", "%", 100.0, 2, True),
        ("test_acc", "Test", "%", 100.0, 2, True), ("mia", "MIA", "%", 100.0, 2, True)]
    assert GAP_KEYS == PCT_KEYS == tuple(m.key for m in EVAL_METRICS) and not RELEARN.in_avg_gap
    assert M.GAP_KEYS is GAP_KEYS and tables.PCT_KEYS is PCT_KEYS and tables.LABELS is LABELS  # the old names


def test_avg_gap_averages_exactly_the_declared_keys():
    """A key outside the declaration (re-learn epochs, far apart) changes nothing; a declared one is required."""
    far = dict(GD, relearn_epochs=30.0)
    assert M.avg_gap(far, dict(REF, relearn_epochs=0.0)) == pytest.approx(
        sum(100 * abs(GD[k] - REF[k]) for k in GAP_KEYS) / len(GAP_KEYS))
    with pytest.raises(KeyError, match="mia"):
        M.avg_gap({k: v for k, v in GD.items() if k != "mia"}, REF)


def _summary(*gd_per_seed):
    results = [SeedResult(i + 1, {"original": REF, "retrain": REF, "gd": m}, {}, {}) for i, m in enumerate(gd_per_seed)]
    return summary.summarise("hand", "gaussian", results, ["original", "retrain", "gd"])


def test_table_header_and_csv_columns_come_from_the_declaration():
    s = _summary(GD)
    header, rows = tables.main_table(s)
    n = len(EVAL_METRICS)
    assert header[1:n + 3] == [*(m.label for m in EVAL_METRICS), "Avg. Gap", RELEARN.label]
    gd = next(r for r in rows if r[0] == "gd")
    assert gd[1] == "62.50 ± 0.00 (12.50)"  # scale 100, two decimals, gap in points
    csv_header, _ = tables.numeric_table(s)
    assert csv_header[2:2 + 3 * n] == [f"{m.key}_{w}" for m in EVAL_METRICS for w in ("mean", "std", "gap")]
    assert all(s["methods"]["gd"][m.key]["mean"] is not None for m in EVAL_METRICS)


def test_cell_failure_reads_every_stored_form():
    assert cell_failure(GD) is None and cell_failure(dict(GD, relearn_epochs=None, relearn_censored=True)) is None
    assert cell_failure({"method": "gd", "diverged": False, "diverged_step": None}) is None  # a method's record
    assert cell_failure(failed_cell("non-finite logits")) == "non-finite logits"
    assert cell_failure({"diverged": True, "diverged_step": 3}) == "diverged at step 3"
    assert cell_failure(None) == cell_failure({}) == "no result"
    assert cell_failure({"error": ""})  # never an empty (falsy) reason for a failure


def test_a_failed_cell_is_reported_as_failed_with_its_reason():
    s = _summary(GD, failed_cell("RuntimeError: boom"), {"diverged": True, "diverged_step": 7})
    gd = s["methods"]["gd"]
    assert gd["n_seeds"] == 1 and gd["failed"] == [{"seed": 2, "error": "RuntimeError: boom"},
                                                   {"seed": 3, "diverged": True, "diverged_step": 7}]
    assert [tables.failure_reason(f) for f in gd["failed"]] == ["RuntimeError: boom", "diverged at step 7"]
    assert gd["retain_acc"]["per_seed"] == [62.5, None, None] and gd["gap_seeds"] == [1]
    marks = write._marks_markdown(s)
    assert "- **gd** failed on seed 2: RuntimeError: boom" in marks
    assert "- **gd** failed on seed 3: diverged at step 7" in marks
    s = _summary(failed_cell("RuntimeError: boom"))
    header, rows = tables.main_table(s)
    assert next(r for r in rows if r[0].startswith("gd"))[-1] == "failed: RuntimeError: boom"
