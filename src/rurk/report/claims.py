"""The automatic claims check of every report: the paper's four claims, decided from the numbers.

Each claim is a statement about a quantity with an uncertainty interval, and gets one of three verdicts:
**holds**, **does not hold** or **inconclusive** (the interval straddles the claim's boundary). Nothing is
written by hand; :func:`check_claims` is a pure function of ``summary.json``.

Intervals (decision): the 95% Student-t interval over the seeds' values, mean ± t(0.975, n−1)·sd/√n (sd with
ddof 1) — paired per seed where two methods are compared. **One seed decides nothing**: every claim compares
two models' accuracies (r_τ is a ratio of them) and one seed's bootstrap over forget samples leaves out the
training randomness that moves these numbers most (a different CPU alone flips verdicts), so a one-seed report
says ``inconclusive (one seed)`` and shows the seed's numbers (r_τ with its bootstrap interval) as evidence.

The claims, all at the grid τ nearest the paper's 0.03 and on r_pooled (always defined, unlike r_paper):
1. Original has residual knowledge: r_pooled > 1.
2. GD keeps it: r_pooled > 1.
3. RURK removes it without hurting utility: |r_pooled − 1| ≤ ``R_TOL`` — over-forgetting (r < 1) marks the
   forget set as much as residual knowledge does — and |retain − Re-train's| and |test − Re-train's| ≤
   ``ACC_TOL`` points.
4. RURK has the smallest Avg. Gap among the fine-tuning methods (rows of other fine-tuning methods run in the
   same report; command-line variants are not competitors): for every such method the paired difference
   RURK − other is < 0 (holds), for some it is > 0 (does not hold).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ..audit.metric_specs import RETAIN, TEST

HOLDS, FAILS, INCONCLUSIVE = "holds", "does not hold", "inconclusive"
#: The verdict of every claim of a one-seed report.
ONE_SEED = "inconclusive (one seed)"
#: The paper's headline perturbation strength.
PAPER_TAU = 0.03
#: "r ≈ 1": at most this far above 1 (decision).
R_TOL = 0.05
#: "retain/test near Re-train": within this many percentage points (decision).
ACC_TOL = 3.0


def interval(values: Sequence[float], ci: tuple[float, float] | None = None) -> tuple[float, float, float] | None:
    """(mean, lo, hi): the 95% t-interval over ``values`` (n ≥ 2), or for one value ``ci`` if given, else the
    value itself (width 0). None when there is no value."""
    vals = [float(v) for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return None
    m = float(np.mean(vals))
    if len(vals) == 1:
        lo, hi = ci if ci is not None else (m, m)
        return m, float(lo), float(hi)
    from scipy import stats

    half = float(stats.t.ppf(0.975, len(vals) - 1) * np.std(vals, ddof=1) / math.sqrt(len(vals)))
    return m, m - half, m + half


def above(iv, t: float) -> str:
    """Verdict of "x > t"."""
    if iv is None:
        return INCONCLUSIVE
    return HOLDS if iv[1] > t else FAILS if iv[2] <= t else INCONCLUSIVE


def within(iv, tol: float, center: float = 0.0) -> str:
    """Verdict of "|x − center| ≤ tol" (bounds compared directly, so x = center ± tol is inside)."""
    if iv is None:
        return INCONCLUSIVE
    lo, hi = center - tol, center + tol
    if lo <= iv[1] and iv[2] <= hi:
        return HOLDS
    return FAILS if iv[1] > hi or iv[2] < lo else INCONCLUSIVE


def both(*verdicts: str) -> str:
    if all(v == HOLDS for v in verdicts):
        return HOLDS
    return FAILS if FAILS in verdicts else INCONCLUSIVE


def _fmt(iv, nd=3, unit="") -> str:
    if iv is None:
        return "not measured"
    m, lo, hi = iv
    return f"{m:.{nd}f}{unit}" if lo == hi else f"{m:.{nd}f}{unit} [{lo:.{nd}f}, {hi:.{nd}f}]"


def _tau_index(summary: dict, tau: float) -> int | None:
    for e in summary["methods"].values():
        taus = (e.get("residual") or {}).get("taus")
        if taus:
            return int(np.argmin([abs(t - tau) for t in taus]))
    return None


def _r_interval(entry: dict | None, i: int | None):
    res = (entry or {}).get("residual") or {}
    per_seed = res.get("r_pooled_per_seed")
    if i is None or not per_seed:
        return None
    vals = [s[i] for s in per_seed]
    cis = res.get("r_pooled_ci95_per_seed") or []
    ci = cis[0][i] if len(vals) == 1 and cis and cis[0][i] is not None else None
    return interval(vals, tuple(ci) if ci is not None else None)


def _paired(a: dict, b: dict, key: str):
    """Interval of the per-seed differences a − b of one metric (seeds where both have a value)."""
    va, vb = a[key]["per_seed"], b[key]["per_seed"]
    return interval([x - y for x, y in zip(va, vb) if x is not None and y is not None])


def check_claims(summary: dict, tau: float = PAPER_TAU) -> list[dict]:
    """The four claims with verdict and evidence, from a ``summary.json`` dict (see module docstring)."""
    methods = summary["methods"]
    n = len(summary.get("seeds", []))
    i = _tau_index(summary, tau)
    t = None if i is None else next(e["residual"]["taus"][i] for e in methods.values() if (e.get("residual") or {}).get("taus"))
    where = f"τ = {t:.3f}" if t is not None else "τ = ?"
    how = f"95% t-interval over {n} seeds" if n > 1 else "one seed: bootstrap 95% interval over forget samples"
    out = []

    def claim(cid, text, verdict, evidence):
        out.append({"id": cid, "claim": text, "verdict": verdict, "evidence": evidence})

    for cid, name, text in (("original_r_gt_1", "original", "Original has residual knowledge (r_pooled > 1)"),
                            ("gd_keeps_r_gt_1", "gd", "GD keeps residual knowledge (r_pooled > 1)")):
        if name not in methods:
            claim(cid, text, INCONCLUSIVE, f"{name} was not run")
            continue
        iv = _r_interval(methods[name], i)
        claim(cid, text, above(iv, 1.0), f"r_pooled at {where} = {_fmt(iv)} ({how})")

    text = (f"RURK brings r_pooled to ≈ 1 (|r − 1| ≤ {R_TOL:g}) with retain and test accuracy within {ACC_TOL:g} "
            "points of Re-train")
    if "rurk" not in methods or "retrain" not in methods or not methods["rurk"].get("n_seeds"):
        claim("rurk_r_near_1", text, INCONCLUSIVE, "rurk (or Re-train) has no result")
    else:
        iv = _r_interval(methods["rurk"], i)
        dr, dt = (_paired(methods["rurk"], methods["retrain"], k) for k in (RETAIN.key, TEST.key))
        v = both(within(iv, R_TOL, center=1.0), within(dr, ACC_TOL), within(dt, ACC_TOL))
        claim("rurk_r_near_1", text, v, f"r_pooled at {where} = {_fmt(iv)}; retain − Re-train = "
              f"{_fmt(dr, 2, ' pt')}; test − Re-train = {_fmt(dt, 2, ' pt')} ({how})")

    text = "RURK has the smallest Avg. Gap among the fine-tuning methods"
    others = [m for m, e in methods.items() if e.get("kind") == "finetune" and m != "rurk" and e.get("base", m) == m]
    if "rurk" not in methods or not others or not methods["rurk"].get("n_seeds"):
        claim("rurk_smallest_gap", text, INCONCLUSIVE, "rurk or the other fine-tuning methods were not run")
    else:
        verdicts, parts = [], []
        for o in others:
            ga, gb = methods["rurk"]["avg_gap_per_seed"]["values"], methods[o]["avg_gap_per_seed"]["values"]
            diffs = [x - y for x, y in zip(ga, gb) if x is not None and y is not None]
            if not diffs:
                rurk_ok = any(x is not None for x in ga)
                verdicts.append(HOLDS if rurk_ok else INCONCLUSIVE)  # the other failed on every seed / no gaps at all
                parts.append(f"{o} failed" if rurk_ok else f"{o}: no gap")
                continue
            iv = interval(diffs)
            verdicts.append(INCONCLUSIVE if len(diffs) < 2 else HOLDS if iv[2] < 0 else FAILS if iv[1] > 0
                            else INCONCLUSIVE)
            parts.append(f"{o} {_fmt(iv, 2)}")
        v = both(*verdicts)
        gaps = {m: methods[m].get("avg_gap") for m in ["rurk", *others]}
        best = min((m for m in gaps if gaps[m] is not None), key=lambda m: gaps[m], default=None)
        lead = f"smallest Avg. Gap: {best} ({gaps[best]:.2f})" if best is not None else "no Avg. Gap (Re-train failed?)"
        claim("rurk_smallest_gap", text, v,
              f"{lead}; paired per-seed gap differences rurk − other: "
              + "; ".join(parts) + (f" ({how.split(':')[0]}: no interval)" if n < 2 else f" (95% t-intervals over {n} seeds)"))
    if n < 2:
        for c in out:
            c["verdict"] = ONE_SEED
    return out


def claims_markdown(claims: list[dict]) -> str:
    return "\n".join(f"- **{c['verdict']}** — {c['claim']}: {c['evidence']}" for c in claims)


def claims_lines(claims: list[dict]) -> list[str]:
    return [f"{c['verdict']:>13s}: {c['claim']}" for c in claims]
