"""The report's tables from summary.json (the main table, the curves per τ, the audit without Re-train, metrics.csv)
and their Markdown/CSV forms."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from ..audit.metric_specs import LABELS, PCT_KEYS, PCT_METRICS, RELEARN, failure_reason


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


def _fmt(v, nd=2) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{nd}f}"


def key_taus(taus: list[float]) -> list[int]:
    """Indices of the three τ every report shows: 0 (the clean forget-set gap, which alone makes r > 1), the
    grid value nearest the paper's 0.03, and the largest — so a reader sees how much of r_τ the perturbation adds."""
    if not taus:
        return []
    want = [int(np.argmin(taus)), int(np.argmin([abs(t - 0.03) for t in taus])), int(np.argmax(taus))]
    return sorted(set(want), key=want.index)


def _taus_of(summary: dict) -> list[float]:
    return next((e["residual"]["taus"] for e in summary["methods"].values() if (e.get("residual") or {}).get("taus")), [])


def shown_gap(name: str, entry: dict, k: str) -> float | None:
    """The gap to Re-train of metric ``k`` that the tables show for row ``name``: the paired gap the summary
    stores (``entry[k]["gap"]``, see :func:`_paired_gaps`); none for Re-train itself, whose gap is 0 by
    definition."""
    return None if name == "retrain" else entry[k].get("gap")


def main_table(summary: dict) -> tuple[list[str], list[list[str]]]:
    """Table-1 rows: mean ± std (|gap to Re-train|) per metric, Avg. Gap, Re-learn, then r_pooled at the key τ
    and the prevalence (with the fraction of ties k_m = k_a) at the largest τ, and wall time."""
    methods = summary["methods"]
    taus = _taus_of(summary)
    ki = key_taus(taus)
    header = ["method", *[LABELS[k] for k in PCT_KEYS], "Avg. Gap", RELEARN.label,
              *[f"r_pooled τ={taus[i]:.3g}" for i in ki]]
    if taus:
        header.append(f"prevalence (ties) τ={taus[ki[-1]]:.3g}")
        header.append(f"worst \\|r−1\\| τ≤{min(max(taus), WORST_TAU):.3g}")
        if _has_collateral(summary):
            header.append(f"class test acc τ={taus[ki[-1]]:.3g}")
    header.append("wall (s)")
    rows = []
    for name, e in methods.items():
        if e["n_seeds"] == 0:
            why = "; ".join(map(failure_reason, e.get("failed", [])))
            n = len(e.get("failed", []))
            rows.append([f"{name} (failed on {n} of {n} seeds)", *(["–"] * (len(header) - 2)), f"failed: {why}"[:80]])
            continue
        marks = []
        if e.get("failed"):
            marks.append(f"failed on {len(e['failed'])} of {len(e['failed']) + e['n_seeds']} seeds; gaps on seeds "
                         f"{', '.join(map(str, e.get('gap_seeds', [])))}")
        if e.get("degenerate"):
            marks.append("degenerate")
        cells = [name + (f" ({'; '.join(marks)})" if marks else "")]
        for spec in PCT_METRICS:
            m, s, nd = e[spec.key]["mean"], e[spec.key]["std"], spec.decimals
            gap = "" if (g := shown_gap(name, e, spec.key)) is None else f" ({g:.{nd}f})"
            cells.append(f"{_fmt(m, nd)} ± {_fmt(s, nd)}{gap}")
        # the gap of the seed means, ± the spread of the per-seed gaps (what a reader needs to judge a difference)
        sd = e["avg_gap_per_seed"]["std"] if len(e.get("gap_seeds", [])) > 1 and name != "retrain" else None
        cells.append(_fmt(e["avg_gap"]) + ("" if sd is None else f" ± {_fmt(sd)}"))
        rl = e["relearn_epochs"]
        if name == "original":
            cells.append("–")
        elif rl["mean"] is None:
            cells.append(">30" if rl.get("censored") else "–")
        else:
            cens = f" ({rl['censored']} >30)" if rl.get("censored") else ""
            cells.append(f"{_fmt(rl['mean'])} ± {_fmt(rl['std'])}{cens}")
        res = e.get("residual") or {}
        for i in ki:
            v, sd = (res.get("r_pooled") or [None] * len(taus))[i], (res.get("r_pooled_std") or [None] * len(taus))[i]
            cells.append("–" if v is None else f"{v:.3f}" + ("" if not sd else f" ± {sd:.3f}"))
        if taus:
            p, t = (res.get("prevalence") or [None] * len(taus))[ki[-1]], (res.get("ties") or [None] * len(taus))[ki[-1]]
            sd = (res.get("prevalence_std") or [None] * len(taus))[ki[-1]]  # its seed spread, as for every cell
            cells.append("–" if p is None else f"{100 * p:.0f}%" + ("" if not sd else f" ± {100 * sd:.0f}%")
                         + ("" if t is None else f" ({100 * t:.0f}%)"))
            cells.append(_worst_cell(name, res, taus))
            if _has_collateral(summary):
                cells.append(_collateral_cell(e.get("collateral") or {}, taus[ki[-1]]))
        cells.append(_fmt(e["wall_s"], 1))
        rows.append(cells)
    return header, rows


#: the largest τ of the "worst |r − 1|" column (issue: r within 0.10 of 1 at every τ ≤ 0.3)
WORST_TAU = 0.3


def worst_r(res: dict, taus: list[float]) -> list[float]:
    """Per seed: the largest |r_pooled − 1| over the grid's τ ≤ :data:`WORST_TAU` (how far from Re-train the row's
    whole profile strays, not only at the τ the claims read)."""
    sel = [i for i, t in enumerate(taus) if t <= WORST_TAU + 1e-12]
    return [max(abs(s[i] - 1) for i in sel if s[i] is not None) for s in res.get("r_pooled_per_seed") or []
            if any(s[i] is not None for i in sel)]


def _worst_cell(name: str, res: dict, taus: list[float]) -> str:
    if name == "retrain":
        return "0.000"
    w = worst_r(res, taus)
    if not w:
        return "–"
    return f"{np.mean(w):.3f}" + (f" ± {np.std(w):.3f}" if len(w) > 1 else "")


def _has_collateral(summary: dict) -> bool:
    return any(e.get("collateral") for e in summary["methods"].values())


def _collateral_cell(c: dict, tau: float) -> str:
    """``acc ± std (gap)`` of the forget classes' noisy test images at ``tau``, gap paired to Re-train's."""
    if not c.get("test") or tau not in c.get("taus", []):
        return "–"
    i = c["taus"].index(tau)
    vals = [s[i] for s in c["test_per_seed"]]
    gap = f" ({c['test_gap'][i]:+.1f})" if c.get("test_gap") else ""
    return f"{np.mean(vals):.1f}" + (f" ± {np.std(vals):.1f}" if len(vals) > 1 else "") + gap


def curve_table(summary: dict, fieldname: str, transform=lambda v: v, nd: int = 3) -> tuple[list[str], list[list[str]]]:
    methods = {n: e for n, e in summary["methods"].items() if e.get("residual")}
    taus = next((e["residual"]["taus"] for e in methods.values()), [])
    header = ["method", *[f"{t:.4f}" for t in taus]]
    rows = []
    for name, e in methods.items():
        vals = e["residual"].get(fieldname)
        if vals is None:
            continue
        rows.append([name, *[_fmt(None if v is None else transform(v), nd) for v in vals]])
    return header, rows




def numeric_table(summary: dict) -> tuple[list[str], list[list]]:
    """The main table as numbers (metrics.csv): means and stds in %, gaps in points, empty where undefined."""
    taus = _taus_of(summary)
    ki = key_taus(taus)
    header = ["method", "n_seeds"]
    for k in PCT_KEYS:
        header += [f"{k}_mean", f"{k}_std", f"{k}_gap"]
    header += ["avg_gap", "avg_gap_per_seed_mean", "avg_gap_per_seed_std", "relearn_mean", "relearn_std",
               "relearn_censored", *[f"r_pooled_tau{taus[i]:g}" for i in ki], *[f"r_paper_tau{taus[i]:g}" for i in ki]]
    if taus:
        header += [f"prevalence_tau{taus[ki[-1]]:g}", f"ties_tau{taus[ki[-1]]:g}"]
    header += ["wall_s", "failed_seeds", "degenerate"]
    rows = []
    for name, e in summary["methods"].items():
        row: list = [name, e["n_seeds"]]
        for k in PCT_KEYS:
            row += [e[k]["mean"], e[k]["std"], shown_gap(name, e, k)]
        rl = e["relearn_epochs"]
        row += [e["avg_gap"], e["avg_gap_per_seed"]["mean"], e["avg_gap_per_seed"]["std"], rl["mean"], rl["std"],
                rl.get("censored", 0)]
        res = e.get("residual") or {}
        for f in ("r_pooled", "r_paper"):
            vals = res.get(f) or [None] * len(taus)
            row += [vals[i] for i in ki]
        if taus:
            row += [(res.get("prevalence") or [None] * len(taus))[ki[-1]], (res.get("ties") or [None] * len(taus))[ki[-1]]]
        row += [e["wall_s"], len(e.get("failed", [])), e.get("degenerate", "")]
        rows.append(["" if v is None else v for v in row])
    return header, rows




FREE_SYMBOLS = {"residual knowledge": "RK", "as Re-train": "≈", "over-forgetting": "OF", "inconclusive": "?",
                "no verdict": "–"}


def free_table(summary: dict) -> tuple[list[str], list[list[str]]]:
    """Per row and key τ: r_pooled (with Re-train), r_free ± its seed spread (without) and the per-seed verdicts."""
    taus = _taus_of(summary)
    ki = key_taus(taus)
    header = ["method", *[f"{what} τ={taus[i]:.3g}" for i in ki for what in ("r_pooled", "r_free", "verdicts")]]
    rows = []
    for name, e in summary["methods"].items():
        res = e.get("residual") or {}
        if not res.get("r_free"):
            continue
        cells = [name]
        for i in ki:
            cells += [_fmt(res["r_pooled"][i], 3),
                      f"{res['r_free'][i]:.3f}" + (f" ± {res['r_free_std'][i]:.3f}" if len(res["r_free_per_seed"]) > 1 else ""),
                      " ".join(FREE_SYMBOLS[s[i]] for s in res["r_free_verdict_per_seed"])]
        rows.append(cells)
    return header, rows
