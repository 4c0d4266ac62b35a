"""Validation of the audit without Re-train on forget sets that chose nothing (a measurement; asserts nothing).

Reads a run store where ``rurk run`` audited every method row against Re-train on some (forget set, seed) cells,
makes each cell's estimate of Re-train (:mod:`rurk.audit.estimate`, from Original, the calibration and retain sets) and
compares, for every row and τ, r_free = acc_m / estimate with the true r_pooled = acc_m / acc_a of the same copies.
It prints:

- the estimate's error against Re-train's accuracy per τ (mean absolute, RMSE, worst, bias) and how often its
  interval covers Re-train, per cell;
- r_free against r_pooled: mean absolute error, worst, bias and correlation per τ, and the share of rows within
  0.05 at τ = 0.03;
- the three-way verdict against the truth's category (r_pooled > 1.05, within 1 ± 0.05, < 0.95): the confusion
  matrix, how many conclusive verdicts are wrong, and how many rows with |r − 1| > 0.15 get a conclusive one;
- where it fails: per method, the mean |r_free − r_pooled| and the wrong verdicts; the calibrated rows at their
  own τ are left out of the verdict counts (no verdict there by construction) and listed apart.

    .venv/bin/rurk run fmnist5 --set seeds.split=12 --seeds 131,42,7 --jobs 2 --draws 32 --no-attacks --no-relearn \\
        --out runs-val --methods all        # likewise splits 13, 14, 15
    .venv/bin/python bench/free_validate.py --store runs-val --splits 12,13,14,15
"""

from __future__ import annotations

import argparse
import os
from collections import Counter, defaultdict

import numpy as np
import torch

os.environ.setdefault("RURK_PROGRESS", "0")

from rurk.audit.free import BAND, estimate_spec, free_taus  # noqa: E402
from rurk.audit.spec import AuditSpec  # noqa: E402
from rurk.config import load_scenario  # noqa: E402
from rurk.audit.estimate import estimate_retrain  # noqa: E402
from rurk.pipeline import load_run_model, prepare  # noqa: E402
from rurk.report.summary import cpu_model  # noqa: E402
from rurk.store import Store  # noqa: E402

CATS = ("residual knowledge", "as Re-train", "over-forgetting")


def category(r: float) -> str:
    return CATS[0] if r > 1 + BAND else CATS[2] if r < 1 - BAND else CATS[1]


def cells_of(store: Store, scenario_name: str, splits: list[int]):
    """Per (split, seed): the audit records of every row (name -> audit JSON) and whether the row is calibrated."""
    digests = {}
    for split in splits:
        scenario = load_scenario(scenario_name, {"seeds": {"split": split}})
        digests[prepare(scenario, store).split.digest()] = (split, scenario)
    calibrated = {}
    for rec in sorted(store.records("unlearned"), key=lambda r: r.get("created") or 0):
        cal = ((rec["metrics"] or {}).get("extra") or {}).get("calibration")
        calibrated[(rec["config"].get("split"), rec["seed"], rec["config"].get("method"))] = cal.get("tau") if cal else None
    out = defaultdict(dict)
    # a row audited under several configs (the store kept an earlier setting's cells): the newest record is the row
    for rec in sorted(store.records("audit"), key=lambda r: r.get("created") or 0):
        c = rec["config"]
        if c.get("split") not in digests:
            continue
        split, scenario = digests[c["split"]]
        name = c.get("method") or c.get("model")
        if ":" in name:  # a variant row (METHOD:key=value) some other run added: the validation is over the methods
            continue
        out[(split, rec["seed"])][name] = (rec["metrics"], calibrated.get((c["split"], rec["seed"], name)), c)
    return out, {s: sc for s, sc in digests.values()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", default="runs-val")
    ap.add_argument("--scenario", default="fmnist5")
    ap.add_argument("--splits", default="12,13,14,15")
    args = ap.parse_args()
    torch.set_num_threads(1)
    store = Store(args.store)
    cells, scenarios = cells_of(store, args.scenario, [int(s) for s in args.splits.split(",")])
    print(f"CPU: {cpu_model()}; {args.scenario}; {len(cells)} (forget set, seed) cells from {args.store}\n")
    est_err, cover, rows = [], [], []  # rows: (cell, name, τ index, r_free, r_pooled, verdict, calibrated τ)
    taus = None
    for (split, seed), audits in sorted(cells.items()):
        scenario = scenarios[split]
        prepared = prepare(scenario, store)
        d = prepared.data
        audit, _, cell = audits["original"]
        taus = [t["tau"] for t in audit["per_tau"]]
        original = load_run_model(store, cell["original"], scenario, prepared)
        spec = AuditSpec(taus=tuple(taus), draws=audit["c"])
        est = estimate_retrain(original, d.forget, d.calib, estimate_spec(spec, audit["noise_seed"]),
                               num_classes=prepared.num_classes, retain=d.retain, cache_dir=prepared.cache_dir)
        acc_a = np.array([t["acc_a"] for t in audit["per_tau"]])
        est_err.append(100 * (est.acc - acc_a))
        cover.append((est.lo <= acc_a) & (acc_a <= est.hi))
        for name, (a, cal_tau, _) in audits.items():
            acc_m = np.array([t["acc_m"] for t in a["per_tau"]])
            for i, ft in enumerate(free_taus(acc_m, est, cal_tau)):
                rows.append(((split, seed), name, i, ft.r_free, a["per_tau"][i]["r_pooled"], ft.verdict, cal_tau))
        print(f"  split {split} seed {seed}: Re-train {100 * acc_a[taus.index(0.03)]:.1f}%, estimate "
              f"{100 * est.acc[taus.index(0.03)]:.1f}% at τ = 0.03", flush=True)
    e, cov = np.array(est_err), np.array(cover)
    n = len(e)
    print(f"\n**The estimate against Re-train's accuracy on the forget copies** ({n} cells, points)\n")
    print("| τ | " + " | ".join(f"{t:g}" for t in taus) + " |\n" + "|---" * (len(taus) + 1) + "|")
    for label, v in (("mean abs", np.abs(e).mean(0)), ("RMSE", np.sqrt((e ** 2).mean(0))),
                     ("worst", e[np.abs(e).argmax(0), range(len(taus))]), ("bias", e.mean(0))):
        print(f"| {label} | " + " | ".join(f"{x:+.1f}" if label in ("worst", "bias") else f"{x:.1f}" for x in v) + " |")
    print("| interval covers | " + " | ".join(f"{c.sum()}/{n}" for c in cov.T) + " |")
    truth = defaultdict(dict)
    for (split, seed), audits in cells.items():
        truth[split][seed] = np.array([t["acc_a"] for t in audits["original"][0]["per_tau"]])
    floor = np.array([100 * (v - np.mean([w for s2, w in seeds.items() if s2 != s], 0))
                      for seeds in truth.values() if len(seeds) > 1 for s, v in seeds.items()])
    if len(floor):
        print("| noise floor (mean abs) | " + " | ".join(f"{x:.1f}" for x in np.abs(floor).mean(0)) + " |")
        print("\n(noise floor: one seed's Re-train predicted by the mean of its forget set's other seeds' — what no "
              "estimate that cannot see a seed's own training beats)")

    ok = [r for r in rows if r[3] is not None and r[4] is not None and r[1] != "retrain"]
    print("\n**r_free against the true r_pooled** (every row but Re-train, every cell)\n")
    print("| τ | " + " | ".join(f"{t:g}" for t in taus) + " |\n" + "|---" * (len(taus) + 1) + "|")
    stats = defaultdict(list)
    for r in ok:
        stats[r[2]].append((r[3], r[4]))
    diffs = {i: np.array([a - b for a, b in v]) for i, v in stats.items()}
    for label, f in (("mean abs", lambda d, v: np.abs(d).mean()), ("worst", lambda d, v: d[np.abs(d).argmax()]),
                     ("bias", lambda d, v: d.mean()),
                     ("correlation", lambda d, v: np.corrcoef(np.array(v).T)[0, 1]),
                     ("within 0.05", lambda d, v: np.mean(np.abs(d) <= 0.05))):
        cells_ = [f(diffs[i], stats[i]) for i in range(len(taus))]
        fmt = "{:.0%}" if label == "within 0.05" else "{:+.3f}" if label in ("worst", "bias") else "{:.3f}"
        print(f"| {label} | " + " | ".join(fmt.format(x) for x in cells_) + " |")

    judged = [r for r in ok if r[5] in (*CATS, "inconclusive")]
    conf = Counter((category(r[4]), r[5]) for r in judged)
    print("\n**Verdicts against the truth's category** (rows × τ; a calibrated row's own τ has no verdict)\n")
    print("| truth \\ verdict | " + " | ".join((*CATS, "inconclusive")) + " |\n|---" * 1 + "|---" * 4 + "|")
    for t in CATS:
        print(f"| {t} | " + " | ".join(str(conf[(t, v)]) for v in (*CATS, "inconclusive")) + " |")
    print("\n| τ | " + " | ".join(f"{t:g}" for t in taus) + " |\n" + "|---" * (len(taus) + 1) + "|")
    for label, f in (("conclusive", lambda rs: sum(r[5] in CATS for r in rs)),
                     ("wrong", lambda rs: sum(r[5] in CATS and category(r[4]) != r[5] for r in rs))):
        print(f"| {label} | " + " | ".join(str(f([r for r in judged if r[2] == i])) for i in range(len(taus))) + " |")
    conclusive = [r for r in judged if r[5] in CATS]
    wrong = [r for r in conclusive if category(r[4]) != r[5]]
    far = [r for r in judged if abs(r[4] - 1) > 0.15]
    print(f"\nconclusive: {len(conclusive)} of {len(judged)} (row, τ); wrong: {len(wrong)} "
          f"({len(wrong) / max(1, len(conclusive)):.1%}); rows with |r − 1| > 0.15: {len(far)}, conclusive "
          f"{sum(r[5] in CATS for r in far)} ({sum(r[5] in CATS for r in far) / max(1, len(far)):.0%})")
    i03 = taus.index(0.03)
    near = [r for r in ok if r[2] == i03]
    print(f"r_free within 0.05 of r_pooled at τ = 0.03: {np.mean([abs(r[3] - r[4]) <= 0.05 for r in near]):.0%} "
          f"of {len(near)} rows")
    print("\n**Per method** (mean |r_free − r_pooled| over cells and τ; wrong conclusive verdicts)\n")
    print("| method | mean abs | at τ = 0.03 | wrong |\n|---|---|---|---|")
    by = defaultdict(list)
    for r in ok:
        by[r[1]].append(r)
    for name, rs in sorted(by.items(), key=lambda kv: -np.mean([abs(r[3] - r[4]) for r in kv[1]])):
        w = sum(1 for r in rs if r[5] in CATS and category(r[4]) != r[5])
        print(f"| {name} | {np.mean([abs(r[3] - r[4]) for r in rs]):.3f} | "
              f"{np.mean([abs(r[3] - r[4]) for r in rs if r[2] == i03]):.3f} | {w} |")
    circ = [r for r in ok if r[6] is not None and abs(taus[r[2]] - r[6]) < 5e-3]
    if circ:
        print(f"\ncalibrated rows at their own τ (no verdict): r_free {np.mean([r[3] for r in circ]):.3f} on average "
              f"(≈ 1 by construction), true r_pooled {np.mean([r[4] for r in circ]):.3f}, mean |difference| "
              f"{np.mean([abs(r[3] - r[4]) for r in circ]):.3f}")
    rurk = [r for r in ok if r[1] == "rurk" and r[2] == i03]
    if rurk:
        print(f"calibrated RURK: mean |r_pooled(0.03) − 1| over {len(rurk)} cells = "
              f"{np.mean([abs(r[4] - 1) for r in rurk]):.3f}")


if __name__ == "__main__":
    main()
