"""How close is the Re-train-free estimate to Re-train? (a measurement; asserts nothing)

For every (forget set, seed) cell it trains or reuses Original and Re-train, computes the estimate of
:mod:`rurk.audit.estimate` at every τ of the scenario's audit grid — with the retain set (both corrections) and without
(a user who has only Original, the forget set and held-out images) — and compares it with Re-train's accuracy on
the forget set's perturbed copies (the audit's noise, ``--draws`` copies per image). It prints, per τ, the mean
absolute error, RMSE, worst error and bias in points, how often the 95% interval covers Re-train, and, where a
forget set has several seeds, the noise floor: the error of predicting one seed's Re-train by the mean of the
other seeds' (no estimate that cannot see a seed's own training can beat it). ``--validated`` prints the RMSE rows
as :data:`rurk.audit.estimate.VALIDATED` wants them.

    .venv/bin/python bench/free_estimate.py --store runs-free --cells 1:1,2:1,3:1,4:1,7:1,8:1,9:1,10:1,11:1 --validated
    .venv/bin/python bench/free_estimate.py --store runs-val --cells 12:131,12:42,12:7,13:131,...
"""

from __future__ import annotations

import argparse
import os
from collections import defaultdict

import numpy as np
import torch

os.environ.setdefault("RURK_PROGRESS", "0")

from rurk.audit.spec import AuditSpec
from rurk.audit.kernel import check_inputs, count_correct  # noqa: E402
from rurk.config import load_scenario  # noqa: E402
from rurk.audit.estimate import EstimateSpec, estimate_retrain, original_counts  # noqa: E402
from rurk.pipeline import prepare, reference_models  # noqa: E402
from rurk.report.summary import cpu_model  # noqa: E402
from rurk.store import Store  # noqa: E402


def forget_accuracy(model, forget, taus, draws, seed) -> np.ndarray:
    """The model's accuracy on the forget set's perturbed copies at every τ (the audit's noise and kernel)."""
    spec = AuditSpec(taus=tuple(taus), draws=draws, bootstrap=0)
    inputs = check_inputs(model, model, forget.x, forget.y, index=forget.index)
    return count_correct(model, model, inputs, spec.make_probe(), spec, seed).k_m.mean(1) / draws


def measure(store: Store, scenario_name: str, cells: list[tuple[int, int]], draws: int, overrides=None) -> dict:
    """Per cell: Re-train's forget accuracy and both estimates, per τ."""
    out = {}
    for split, seed in cells:
        scenario = load_scenario(scenario_name, {"seeds": {"split": split}, **(overrides or {})})
        prepared = prepare(scenario, store)
        d = prepared.data
        refs = reference_models(scenario, prepared, seed, store, device="cpu", progress=False)
        taus = list(scenario.audit.taus)
        spec = EstimateSpec(taus=tuple(taus), seed=seed)
        counts = original_counts(refs.original, d.calib, spec)
        est = {mode: estimate_retrain(refs.original, d.forget, d.calib, spec, num_classes=prepared.num_classes,
                                      retain=d.retain if mode == "retain" else None, counts=counts,
                                      cache_dir=prepared.cache_dir)
               for mode in ("retain", "no_retain")}
        truth = forget_accuracy(refs.retrain, d.forget, taus, draws, seed)
        out[(split, seed)] = {"taus": taus, "truth": truth, **est}
        print(f"  split {split} seed {seed}: Re-train {100 * truth[taus.index(0.03)] if 0.03 in taus else 0:.1f}% at "
              f"τ = 0.03, estimate {100 * est['retain'].at(0.03) if 0.03 in taus else 0:.1f}%", flush=True)
    return out


def report(results: dict, validated: bool) -> None:
    taus = next(iter(results.values()))["taus"]
    print(f"\n{len(results)} cells; error = estimate − Re-train's accuracy on the forget copies, points")
    for mode in ("retain", "no_retain"):
        err = np.array([100 * (r[mode].acc - r["truth"]) for r in results.values()])
        cover = np.array([(r[mode].lo <= r["truth"]) & (r["truth"] <= r[mode].hi) for r in results.values()])
        print(f"\n**{'with' if mode == 'retain' else 'without'} the retain set**\n")
        print("| τ | " + " | ".join(f"{t:g}" for t in taus) + " |\n|---" * 1 + "|---" * len(taus) + "|")
        rows = {"mean abs": np.abs(err).mean(0), "RMSE": np.sqrt((err ** 2).mean(0)),
                "worst": err[np.abs(err).argmax(0), range(len(taus))], "bias": err.mean(0)}
        for name, v in rows.items():
            print(f"| {name} | " + " | ".join(f"{x:+.1f}" if name in ("worst", "bias") else f"{x:.1f}" for x in v) + " |")
        print("| interval covers | " + " | ".join(f"{c.sum()}/{len(c)}" for c in cover.T) + " |")
        if validated:
            print(f"VALIDATED[{mode!r}] = " + "{" + ", ".join(f"{t:g}: {x:.1f}" for t, x in zip(taus, rows["RMSE"]))
                  + "}")
    by_split = defaultdict(dict)
    for (split, seed), r in results.items():
        by_split[split][seed] = r["truth"]
    floor = [100 * (v - np.mean([w for s2, w in seeds.items() if s2 != s], 0))
             for seeds in by_split.values() if len(seeds) > 1 for s, v in seeds.items()]
    if floor:
        f = np.array(floor)
        print(f"\nnoise floor ({len(f)} cells): one seed's Re-train predicted by its forget set's other seeds' mean: "
              "mean abs " + ", ".join(f"τ={t:g}: {x:.1f}" for t, x in zip(taus, np.abs(f).mean(0))))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", default="runs-free")
    ap.add_argument("--scenario", default="fmnist5")
    ap.add_argument("--cells", default="1:1,2:1,3:1,4:1,7:1,8:1,9:1,10:1,11:1", help="SPLIT:SEED,...")
    ap.add_argument("--draws", type=int, default=32, help="copies per forget image for Re-train's accuracy")
    ap.add_argument("--validated", action="store_true", help="print the RMSE rows for rurk.audit.estimate.VALIDATED")
    args = ap.parse_args()
    torch.set_num_threads(1)
    cells = [tuple(map(int, c.split(":"))) for c in args.cells.split(",")]
    print(f"CPU: {cpu_model()}; {args.scenario}; store {args.store}; one torch thread")
    report(measure(Store(args.store), args.scenario, cells, args.draws), args.validated)


if __name__ == "__main__":
    main()
