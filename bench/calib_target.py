"""How well calibrated stopping's target estimates Re-train's forget accuracy (a measurement; asserts nothing).

For every (store, split seed, run seed) given it loads Original and Re-train from the store (trained by an earlier
`rurk run` / `rurk tune`; nothing is trained here) and prints, on perturbed copies (the rule's probe, τ and fixed
noise; 4 copies per image):

- Original's accuracy on the calibration set — the plain target (``calib_alpha = 0``);
- the target with the learning-curve correction at each ``--alphas`` (the shipped default is 0.5), without the
  difficulty shift (``calib_proxy = 0``; ``bench/calib_proxy.py`` and ``bench/oracle_target.py`` measure it);
- Re-train's accuracy on the calibration set and on the forget set — what the target estimates.

    .venv/bin/python bench/calib_target.py runs-results:0:131,42,7 runs-newsplits/split5:5:131,42,7 \\
        runs-tune:1:1 runs-tune:2:1 runs-tune:3:1 [--scenario fmnist5] [--alphas 0,0.25,0.5,0.75]
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import torch

from rurk.methods._calibrate import CalibrationSpec, Calibrator
from rurk.config import load_scenario
from rurk.pipeline import load_run_model, prepare, reference_keys
from rurk.report.summary import cpu_model
from rurk.store import Store


def rows(scenario_name: str, root: str, split: int, seeds: list[int], alphas: list[float]):
    scenario = load_scenario(scenario_name, {"seeds": {"split": split}})
    store = Store(root)
    prepared = prepare(scenario)
    d = prepared.data
    for seed in seeds:
        keys = reference_keys(scenario, prepared, seed)
        if any(store.load_meta(k) is None for k in keys.values()):
            raise SystemExit(f"{root}: no Original/Re-train of split {split}, seed {seed} (run `rurk run` first)")
        orig, retrain = (load_run_model(store, keys[k], scenario, prepared) for k in ("original", "retrain"))
        targets = []
        for a in alphas:
            cal = Calibrator(CalibrationSpec(draws=4, alpha=a, proxy=0), d.forget, d.calib, seed,
                             num_classes=prepared.num_classes, retain=d.retain)
            targets.append(cal.estimate_target(orig))
        plain = Calibrator(CalibrationSpec(draws=4, alpha=0.0, proxy=0), d.forget, d.calib, seed,
                           num_classes=prepared.num_classes)
        yield (root, split, seed, plain.accuracy(orig, "calib", d.calib), targets,
               plain.accuracy(retrain, "calib", d.calib), plain.accuracy(retrain, "forget", d.forget))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", metavar="STORE:SPLIT:SEEDS")
    ap.add_argument("--scenario", default="fmnist5")
    ap.add_argument("--alphas", default="0,0.25,0.5,0.75")
    args = ap.parse_args()
    torch.set_num_threads(1)
    os.environ.setdefault("RURK_PROGRESS", "0")
    alphas = [float(a) for a in args.alphas.split(",")]
    print(f"CPU: {cpu_model()}; {args.scenario}; perturbed copies: gaussian τ = 0.03, 4 per image\n")
    print("| store | split | seed | Original on calibration set | " + " | ".join(f"target α={a:g}" for a in alphas)
          + " | Re-train on calibration set | Re-train on forget set |")
    print("|---|---|---|---|" + "---|" * len(alphas) + "---|---|")
    errors = []
    for spec in args.runs:
        root, split, seeds = spec.split(":")
        for r in rows(args.scenario, root, int(split), [int(s) for s in seeds.split(",")], alphas):
            root_, split_, seed, o_cal, targets, r_cal, r_f = r
            errors.append([t - r_f for t in targets])
            print(f"| {root_} | {split_} | {seed} | {o_cal:.3f} | " + " | ".join(f"{t:.3f}" for t in targets)
                  + f" | {r_cal:.3f} | {r_f:.3f} |")
    e = np.array(errors)
    print("\ntarget − Re-train's forget accuracy, in points, over all rows above:")
    for j, a in enumerate(alphas):
        print(f"  α = {a:g}: mean {100 * e[:, j].mean():+.1f}, mean |·| {100 * np.abs(e[:, j]).mean():.1f}, "
              f"worst {100 * e[np.abs(e[:, j]).argmax(), j]:+.1f}")


if __name__ == "__main__":
    main()
