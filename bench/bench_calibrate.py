"""What calibrated stopping costs (rurk.methods._calibrate): each calibrated method of a run's scenario unlearned on one seed
with the rule's retain/test trace at every check, at every ``calib_trace_every``-th (the default) and off, and
with the rule itself off (the method's epoch budget, no checks). Prints a table with the CPU; asserts nothing.

    .venv/bin/python bench/bench_calibrate.py [--store runs] [--scenario fmnist5] [--seed 131] [--repeats 2]

Run it on an otherwise idle machine, at one torch thread (the demo's workers' setting). The references come from
``--store`` (trained there first when missing, untimed). Each setting is timed ``--repeats`` times, in turn, and
the fastest kept. The trace never changes where the rule stops: every row with the rule on stops at the same step.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import replace

os.environ.setdefault("RURK_PROGRESS", "0")

import torch  # noqa: E402

from rurk.config import load_scenario  # noqa: E402
from rurk.methods.base import load_all, unlearn  # noqa: E402
from rurk.pipeline import prepare, reference_models  # noqa: E402
from rurk.report.summary import cpu_model  # noqa: E402
from rurk.store import Store  # noqa: E402
from rurk.run.tuned import with_tuned  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", default="runs")
    ap.add_argument("--scenario", default="fmnist5")
    ap.add_argument("--seed", type=int, default=131)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(1)
    specs = load_all()
    scenario = with_tuned(load_scenario(args.scenario))
    store = Store(args.store)
    prepared = prepare(scenario, store)
    refs = reference_models(scenario, prepared, args.seed, store, device="cpu")
    udata = prepared.unlearn_data(refs.pretrained)
    configs = {n: spec.config(scenario.preset, scenario.methods.get(n, {})) for n, spec in specs.items()}
    configs = {n: c for n, c in configs.items() if getattr(c, "calibrate", False)}  # as `rurk run` runs them
    default_every = next(iter(configs.values())).calib_trace_every
    settings = {"trace at every check": {"calib_trace_every": 1},
                f"trace at every {default_every}th (default)": {},
                "no trace": {"calib_trace": 0},
                "rule off (whole budget)": {"calibrate": False}}
    print(f"{args.scenario}, seed {args.seed}, 1 torch thread, {cpu_model()}; fastest of {args.repeats}\n")
    print("| method | " + " | ".join(f"{k}: s" for k in settings) + " | stopped at step (rule on) |")
    print("|---|" + "---|" * (len(settings) + 1))
    for name, base in configs.items():
        best: dict[str, float] = {}
        stops = set()
        for _ in range(args.repeats):
            for label, change in settings.items():
                t = time.perf_counter()
                _, rec = unlearn(name, refs.original, udata, args.seed, cfg=replace(base, **change))
                best[label] = min(best.get(label, float("inf")), time.perf_counter() - t)
                if "calibration" in rec.extra:
                    stops.add(rec.extra["calibration"]["chosen_step"])
        print(f"| {name} | " + " | ".join(f"{best[k]:.2f}" for k in settings)
              + f" | {', '.join(map(str, sorted(stops)))} |", flush=True)


if __name__ == "__main__":
    main()
