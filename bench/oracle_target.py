"""Calibrated stopping with Re-train's own forget accuracy as the target: how much of each method's gap is the
target's error, and how much the method's (a measurement; asserts nothing).

Calibrated stopping (:mod:`rurk.methods._calibrate`) stops every forget-term method at the same *estimated* target, so on
one forget set the calibrated rows differ by (a) where the target lands against Re-train's real forget accuracy,
shared by all of them, and (b) what each method's loss does to everything else on the way there (retain, test,
MIA). This separates the two: for every (store, split seed, run seed) cell it runs each method three times —
with the target without its difficulty shift (``calib_proxy = 0``), with the shipped target, and with an
**oracle** target: Re-train's accuracy on the very perturbed forget copies the rule checks (same probe, τ and
fixed noise) — and prints each one's Avg. Gap to that seed's Re-train. With the oracle the target error is gone;
what is left is the method. A product can never use the oracle (it needs Re-train); it only bounds what a better
target could buy.

Original and Re-train come from the stores (an earlier `rurk run` / `rurk demo`); nothing else is trained. The
methods run with the scenario's settings (`rurk run`'s, tuned values included), one torch thread per process,
so the "shipped" column reproduces the run's per-seed Avg. Gap on the CPU that made it.

    .venv/bin/python bench/oracle_target.py runs:0:131,42,7 runs-newsplits/split5:5:131,42,7 \\
        runs-newsplits/split6:6:131,42,7 [--methods rurk,neggrad_plus,ga,scrub] [--jobs 2]
"""

from __future__ import annotations

import argparse
import os
from dataclasses import replace
from concurrent.futures import ProcessPoolExecutor

import numpy as np

os.environ.setdefault("RURK_PROGRESS", "0")

from rurk.methods import _calibrate as calibrate
from rurk.report.claims import interval
from rurk.config import load_scenario
from rurk.run.experiment import evaluate, method_config
from rurk.methods import load_all
from rurk.methods.base import parse_variant, unlearn
from rurk.audit.metrics import avg_gap
from rurk.pipeline import load_run_model, prepare, reference_keys
from rurk.report.summary import cpu_model
from rurk.store import Store
from rurk.run.tuned import with_tuned


def _init() -> None:
    import torch

    torch.set_num_threads(1)
    load_all()


MODES = ("α only", "shipped", "oracle")


def cell(scenario_name: str, root: str, split: int, seed: int, methods: list[str]) -> dict:
    """Per method and target (the rule's without the difficulty shift, as shipped, the oracle): the Avg. Gap, the
    target, the chosen step and the forget accuracy there, on one (forget set, seed) cell."""
    scenario = with_tuned(load_scenario(scenario_name, {"seeds": {"split": split}}))  # as `rurk run` uses it
    store = Store(root)
    prepared = prepare(scenario)
    keys = reference_keys(scenario, prepared, seed)
    if any(store.load_meta(k) is None for k in keys.values()):
        raise SystemExit(f"{root}: no Original/Re-train of split {split}, seed {seed} (run `rurk run` first)")
    original, retrain = (load_run_model(store, keys[k], scenario, prepared) for k in ("original", "retrain"))
    ref = evaluate(retrain, prepared, seed, None, relearn=False)
    udata = prepared.unlearn_data(None)
    estimate = calibrate.Calibrator.estimate_target
    out = {}
    for m in methods:
        cfg = method_config(scenario, m)
        if not getattr(cfg, "calibrate", False):
            raise SystemExit(f"{m}: calibrated stopping is off in {scenario_name} (nothing to compare)")
        row = {}
        for mode in MODES:
            if mode == "oracle":  # the check's own quantity, measured on Re-train: the rule's ideal target
                calibrate.Calibrator.estimate_target = lambda self, _orig: self.accuracy(retrain, "forget", self.forget)
            try:
                c = replace(cfg, calib_proxy=0.0) if mode == "α only" else cfg
                model, rec = unlearn(parse_variant(m)[0], original, udata, seed, cfg=c)
            finally:
                calibrate.Calibrator.estimate_target = estimate
            cal = rec.extra["calibration"]
            row[mode] = {"gap": avg_gap(evaluate(model, prepared, seed, None, relearn=False), ref),
                         "target": cal["target"], "step": cal["chosen_step"], "forget": cal["forget_at_chosen"]}
        out[m] = row
    return {"root": root, "split": split, "seed": seed, "rows": out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", metavar="STORE:SPLIT:SEEDS")
    ap.add_argument("--scenario", default="fmnist5")
    ap.add_argument("--methods", default="rurk,neggrad_plus,ga,scrub")
    ap.add_argument("--jobs", type=int, default=2, help="worker processes of one torch thread each")
    args = ap.parse_args()
    methods = args.methods.split(",")
    jobs = []
    for spec in args.runs:
        root, split, seeds = spec.split(":")
        jobs += [(args.scenario, root, int(split), int(s), methods) for s in seeds.split(",")]
    with ProcessPoolExecutor(args.jobs, initializer=_init) as pool:
        cells = list(pool.map(cell, *zip(*jobs)))

    print(f"CPU: {cpu_model()}; {args.scenario}; {len(cells)} (forget set, seed) cells; one torch thread per process; "
          "targets: the rule without the difficulty shift (calib_proxy = 0) / as shipped / the oracle\n")
    print("Per cell: each target's error (target − Re-train's accuracy on the check's copies, points) and each "
          "method's Avg. Gap with the three targets\n")
    print("| split | seed | target error: α only / shipped | " + " | ".join(methods) + " |")
    print("|---|---|---|" + "---|" * len(methods))
    for c in cells:
        r0 = c["rows"][methods[0]]
        err = [100 * (r0[mode]["target"] - r0["oracle"]["target"]) for mode in MODES[:2]]
        print(f"| {c['split']} | {c['seed']} | {err[0]:+.1f} / {err[1]:+.1f} | "
              + " | ".join(" / ".join(f"{c['rows'][m][mode]['gap']:.2f}" for mode in MODES) for m in methods) + " |")
    errs = {mode: np.array([100 * (c["rows"][methods[0]][mode]["target"] - c["rows"][methods[0]]["oracle"]["target"])
                            for c in cells]) for mode in MODES[:2]}
    print("\ntarget error, mean |·| (worst): " + "; ".join(
        f"{mode} {np.abs(e).mean():.1f} ({e[np.abs(e).argmax()]:+.1f})" for mode, e in errs.items()))
    splits = sorted({c["split"] for c in cells})
    g = {(m, mode): np.array([c["rows"][m][mode]["gap"] for c in cells]) for m in methods for mode in MODES}
    fmt = lambda d: "{:+.2f} [{:+.2f}, {:+.2f}]".format(*interval(list(d)))  # noqa: E731
    print("\n| method | " + " | ".join(f"mean gap, {mode}" for mode in MODES) + " | "
          + " | ".join(f"RURK − method, {mode} (95% t)" for mode in MODES)
          + " | forget sets where RURK is lower: " + " / ".join(MODES) + " |")
    print("|---|" + "---|" * (2 * len(MODES) + 1))
    for m in methods:
        means = " | ".join(f"{g[m, mode].mean():.2f}" for mode in MODES)
        if m == "rurk":
            print(f"| {m} | {means} | " + " | ".join("–" for _ in MODES) + " | – |")
            continue
        d = {mode: g["rurk", mode] - g[m, mode] for mode in MODES}
        wins = [sum(np.mean([x for x, c in zip(d[mode], cells) if c["split"] == s]) < 0 for s in splits)
                for mode in MODES]
        print(f"| {m} | {means} | " + " | ".join(fmt(d[mode]) for mode in MODES)
              + f" | {' / '.join(map(str, wins))} of {len(splits)} |")


if __name__ == "__main__":
    main()
