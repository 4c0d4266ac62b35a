"""Residual knowledge at every τ: RURK variants against Re-train over the whole τ grid (a measurement; asserts nothing).

For every (forget set, seed) cell and variant (``NAME:key=value`` rows, as ``rurk run`` takes them) it unlearns (or
reuses the store's model), then measures, at every τ of the scenario's grid: r_pooled (the audit's acc_m / acc_a
on the same perturbed forget copies), and the collateral damage — the accuracy on perturbed copies of the forget
class's *test* images and of its *retained* images, beside Re-train's. It prints per variant the mean over cells
of r_pooled per τ, the worst |r − 1| over τ ≤ 0.3, the test and retained-image gaps to Re-train at the largest τ,
and the per-seed Avg. Gap. Decide on tuning-side cells only (the defaults: fmnist5's split seeds 1-4, 7-11 at
run seed 1).

    .venv/bin/python bench/rurk_tilt.py --store runs-free --variants rurk,rurk:lambda_c=1
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import torch

os.environ.setdefault("RURK_PROGRESS", "0")

from rurk.audit.spec import AuditSpec
from rurk.audit.kernel import check_inputs, count_correct  # noqa: E402
from rurk.config import load_scenario  # noqa: E402
from rurk.run.experiment import evaluate, unlearned_model  # noqa: E402
from rurk.audit.metrics import avg_gap  # noqa: E402
from rurk.pipeline import prepare, reference_models  # noqa: E402
from rurk.report.summary import cpu_model  # noqa: E402
from rurk.store import Store  # noqa: E402
from rurk.run.tuned import with_tuned  # noqa: E402


def accuracy_on_copies(model, data, taus, draws, seed) -> np.ndarray:
    spec = AuditSpec(taus=tuple(taus), draws=draws, bootstrap=0)
    inputs = check_inputs(model, model, data.x, data.y, index=data.index)
    return count_correct(model, model, inputs, spec.make_probe(), spec, seed).k_m.mean(1) / draws


def class_sets(d):
    classes = torch.unique(d.forget.y)
    pick = lambda t: t.subset(torch.nonzero(torch.isin(t.y, classes)).flatten())  # noqa: E731
    return pick(d.test), pick(d.retain)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", default="runs-free")
    ap.add_argument("--scenario", default="fmnist5")
    ap.add_argument("--cells", default="1:1,2:1,3:1,4:1,7:1,8:1,9:1,10:1,11:1", help="SPLIT:SEED,...")
    ap.add_argument("--variants", default="rurk,rurk:lambda_c=1")
    ap.add_argument("--draws", type=int, default=32)
    args = ap.parse_args()
    torch.set_num_threads(1)
    store = Store(args.store)
    variants = ["retrain", *args.variants.split(",")]
    res = {v: {"r": [], "test": [], "kept": [], "gap": []} for v in variants}
    taus = None
    for cell in args.cells.split(","):
        split, seed = map(int, cell.split(":"))
        scenario = with_tuned(load_scenario(args.scenario, {"seeds": {"split": split}}))
        taus = list(scenario.audit.taus)
        prepared = prepare(scenario, store)
        d = prepared.data
        refs = reference_models(scenario, prepared, seed, store, device="cpu", progress=False)
        test_c, kept_c = class_sets(d)
        a_f = accuracy_on_copies(refs.retrain, d.forget, taus, args.draws, seed)
        a_t = accuracy_on_copies(refs.retrain, test_c, taus, 8, seed)
        a_k = accuracy_on_copies(refs.retrain, kept_c, taus, 8, seed)
        ref_metrics = evaluate(refs.retrain, prepared, seed, None, relearn=False)
        for v in variants:
            m = refs.retrain if v == "retrain" else unlearned_model(v, scenario, prepared, refs, seed, store)[0]
            if m is None:
                print(f"  split {split} seed {seed} {v}: failed")
                continue
            m_f = accuracy_on_copies(m, d.forget, taus, args.draws, seed)
            res[v]["r"].append(m_f / a_f)
            res[v]["test"].append(100 * (accuracy_on_copies(m, test_c, taus, 8, seed) - a_t))
            res[v]["kept"].append(100 * (accuracy_on_copies(m, kept_c, taus, 8, seed) - a_k))
            res[v]["gap"].append(avg_gap(evaluate(m, prepared, seed, None, relearn=False), ref_metrics))
        print(f"  split {split} seed {seed}: " + ", ".join(
            f"{v} r(0.03) {res[v]['r'][-1][taus.index(0.03)]:.3f} r({taus[-1]:g}) {res[v]['r'][-1][-1]:.3f}"
            for v in variants[1:]), flush=True)
    print(f"\nCPU: {cpu_model()}; {args.scenario}; {len(args.cells.split(','))} cells; means over cells\n")
    print("| variant | " + " | ".join(f"r τ={t:g}" for t in taus) + " | worst abs(r−1), τ ≤ 0.3 | test gap τ=0.3 | "
          "retained gap τ=0.3 | Avg. Gap |\n" + "|---" * (len(taus) + 5) + "|")
    for v in variants:
        if not res[v]["r"]:
            continue
        r = np.array(res[v]["r"])
        sel = [i for i, t in enumerate(taus) if t <= 0.3 + 1e-9]
        worst = np.abs(r[:, sel] - 1).max(1).mean()
        print(f"| {v} | " + " | ".join(f"{x:.3f}" for x in r.mean(0)) + f" | {worst:.3f} | "
              f"{np.mean([t[-1] for t in res[v]['test']]):+.1f} | {np.mean([t[-1] for t in res[v]['kept']]):+.1f} | "
              f"{np.mean(res[v]['gap']):.2f} |")


if __name__ == "__main__":
    main()
