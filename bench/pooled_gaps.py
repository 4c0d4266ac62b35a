"""The fine-tuning methods over several forget sets at once: who lands closest to Re-train (a measurement).

Each run's claims check compares RURK with the other fine-tuning methods over the seeds of *one* forget set. This
pools the (forget set, seed) cells of several runs — each a `summary.json` of `rurk run`/`rurk demo` with the same
rows — and prints, per method that every run holds:

- its per-seed Avg. Gap (each seed's gap to that seed's Re-train, as the claims check pairs them), averaged per
  forget set and over all cells — not the tables' "Avg. Gap", which is the gap of the seed *means* and smaller;
- the paired difference RURK − method per cell, its mean and 95% t-interval over the cells (the cells of one
  forget set share that forget set, so the interval is somewhat too narrow: read it as a screen, not a test) and
  how many forget sets' own mean differences favour RURK;
- for RURK itself, the cells whose r_pooled at τ = 0.03 lies within 0.05 of 1, and retain/test within 3 points of
  Re-train (the calibration issue's per-cell conditions).

    .venv/bin/python bench/pooled_gaps.py runs/fmnist5/summary.json runs-newsplits/split5/fmnist5/summary.json \\
        runs-newsplits/split6/fmnist5/summary.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from rurk.report.claims import ACC_TOL, PAPER_TAU, R_TOL, _tau_index, interval
from rurk.audit.metric_specs import RETAIN, TEST


def load(path: str) -> dict:
    return json.loads(Path(path).read_text())


def finetune_rows(summaries: list[dict]) -> list[str]:
    """The fine-tuning methods (no command-line variants) every summary holds, RURK first."""
    common = set.intersection(*({m for m, e in s["methods"].items()
                                 if e.get("kind") == "finetune" and e.get("base", m) == m} for s in summaries))
    if "rurk" not in common:
        raise SystemExit("every summary must hold rurk and the fine-tuning methods to compare it with")
    return ["rurk", *sorted(common - {"rurk"})]


def gaps(s: dict, method: str) -> list[float | None]:
    return s["methods"][method]["avg_gap_per_seed"]["values"]


def label(s: dict) -> str:
    return f"split {s.get('run', {}).get('split_seed', '?')}"


def rurk_conditions(s: dict) -> list[tuple[bool, bool]]:
    """Per seed: (r_pooled at τ = 0.03 within R_TOL of 1, retain and test within ACC_TOL points of Re-train)."""
    e, rt = s["methods"]["rurk"], s["methods"]["retrain"]
    i = _tau_index(s, PAPER_TAU)  # the τ the claims check reads
    out = []
    for k, r in enumerate(e["residual"]["r_pooled_per_seed"]):
        accs = [abs(e[m.key]["per_seed"][k] - rt[m.key]["per_seed"][k]) <= ACC_TOL for m in (RETAIN, TEST)]
        out.append((abs(r[i] - 1.0) <= R_TOL, all(accs)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("summaries", nargs="+", help="summary.json of runs on different forget sets, same rows")
    args = ap.parse_args()
    summaries = [load(p) for p in args.summaries]
    rows = finetune_rows(summaries)
    cells = sum(len(s["seeds"]) for s in summaries)
    print(f"{len(summaries)} forget sets ({', '.join(label(s) for s in summaries)}), {cells} (forget set, seed) cells\n")
    head = ["method", *(f"per-seed Avg. Gap, {label(s)}" for s in summaries), "per-seed Avg. Gap, all cells",
            "RURK − method, all cells (95% t)", "forget sets favouring RURK"]
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    ref = [g for s in summaries for g in gaps(s, "rurk")]
    for m in rows:
        per_set = [np.mean([g for g in gaps(s, m) if g is not None]) for s in summaries]
        mine = [g for s in summaries for g in gaps(s, m)]
        allc = np.mean([g for g in mine if g is not None])
        if m == "rurk":
            diff, fav = "–", "–"
        else:
            d = [a - b for a, b in zip(ref, mine) if a is not None and b is not None]
            mean, lo, hi = interval(d)
            diff = f"{mean:+.2f} [{lo:+.2f}, {hi:+.2f}]"
            fav = sum(np.mean([a - b for a, b in zip(gaps(s, "rurk"), gaps(s, m)) if a is not None and b is not None])
                      < 0 for s in summaries)
            fav = f"{fav} of {len(summaries)}"
        print(f"| {m} | " + " | ".join(f"{g:.2f}" for g in per_set) + f" | {allc:.2f} | {diff} | {fav} |")
    conds = [c for s in summaries for c in rurk_conditions(s)]
    print(f"\nRURK cells with |r_pooled(τ = {PAPER_TAU}) − 1| ≤ {R_TOL}: {sum(c[0] for c in conds)} of {len(conds)}; "
          f"with retain and test within {ACC_TOL:g} points of Re-train: {sum(c[1] for c in conds)} of {len(conds)}")


if __name__ == "__main__":
    main()
