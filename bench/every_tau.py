"""Residual knowledge at every τ, per forget set, from finished runs' summary.json files (a measurement; asserts
nothing).

For each summary (one forget set, several seeds) and each row asked for: r_pooled at every τ of the grid (mean over
seeds), the largest |r − 1| over τ ≤ 0.3 of those means, r at τ = 0.03, the forget class's noisy test accuracy at
the largest τ minus Re-train's (paired per seed, points) and the Avg. Gap; then, over every (forget set, seed) cell,
the paired per-seed Avg. Gap difference of each row against a baseline row with its 95% t-interval — and whether
each row meets the targets of "residual knowledge at every τ": |r − 1| ≤ 0.10 at every τ ≤ 0.3 and ≤ 0.05 at
τ = 0.03, the class's noisy test accuracy within 3 points of Re-train's.

    .venv/bin/python bench/every_tau.py runs-results/fmnist5/summary.json runs-newsplits/split5/fmnist5/summary.json \\
        runs-newsplits/split6/fmnist5/summary.json --rows rurk,rurk:lambda_c=0 --baseline rurk:lr=...
"""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
from scipy import stats


def row_numbers(summary: dict, name: str) -> dict | None:
    e = summary["methods"].get(name)
    if not e or not (e.get("residual") or {}).get("r_pooled_per_seed"):
        return None
    res = e["residual"]
    taus = res["taus"]
    r = np.array([[np.nan if v is None else v for v in s] for s in res["r_pooled_per_seed"]]).mean(0)
    sel = [i for i, t in enumerate(taus) if t <= 0.3 + 1e-9]
    c = e.get("collateral") or {}
    gap = c["test_gap"][-1] if c.get("test_gap") else math.nan
    return {"taus": taus, "r": r, "worst": float(np.nanmax(np.abs(r[sel] - 1))),
            "r03": float(r[int(np.argmin([abs(t - 0.03) for t in taus]))]), "test_gap": gap,
            "avg_gap": e.get("avg_gap"), "gap_seeds": e.get("avg_gap_per_seed", {}).get("values") or []}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("summaries", nargs="+")
    ap.add_argument("--rows", default="rurk")
    ap.add_argument("--baseline", default=None, help="the row the paired Avg. Gap differences are taken against")
    args = ap.parse_args()
    rows = args.rows.split(",")
    sums = [json.loads(open(p).read()) for p in args.summaries]
    labels = [f"split {s.get('run', {}).get('split_seed', '?')}" for s in sums]
    taus = next(row_numbers(s, r)["taus"] for s in sums for r in rows if row_numbers(s, r))
    print("| forget set | row | " + " | ".join(f"r τ={t:g}" for t in taus) + " | worst \\|r−1\\| τ≤0.3 | "
          "class test acc gap τ=max | Avg. Gap | meets |\n" + "|---" * (len(taus) + 6) + "|")
    for label, s in zip(labels, sums):
        for name in rows:
            n = row_numbers(s, name)
            if n is None:
                continue
            ok = n["worst"] <= 0.10 and abs(n["r03"] - 1) <= 0.05 and abs(n["test_gap"]) <= 3.0
            print(f"| {label} | {name} | " + " | ".join(f"{x:.3f}" for x in n["r"]) + f" | {n['worst']:.3f} | "
                  f"{n['test_gap']:+.1f} | {n['avg_gap']:.2f} | {'yes' if ok else 'no'} |")
    if args.baseline:
        print(f"\nPer-seed Avg. Gap over every (forget set, seed) cell, paired against {args.baseline}:\n")
        print("| row | mean per-seed gap | row − baseline (95% t) |\n|---|---|---|")
        base = [g for s in sums for g in (row_numbers(s, args.baseline) or {}).get("gap_seeds", [])]
        for name in [args.baseline, *[r for r in rows if r != args.baseline]]:
            g = [x for s in sums for x in (row_numbers(s, name) or {}).get("gap_seeds", [])]
            if len(g) != len(base) or not g:
                continue
            d = np.array(g, float) - np.array(base, float)
            half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d)) if len(d) > 1 else math.nan
            print(f"| {name} | {np.mean(g):.2f} | {d.mean():+.2f} [{d.mean() - half:+.2f}, {d.mean() + half:+.2f}] |")


if __name__ == "__main__":
    main()
