"""The demo's cost as a ratio that holds on any CPU, and where its time goes: runs `rurk demo` from a cold cache,
then — on the same machine, in the same run, once before the demo and once after it (the mean is the reference)
— trains one seed's Original and Re-train at one torch thread from a
cold cache (`rurk train fmnist5 --seed 131 --threads 1`), and prints the demo's wall time **as a multiple of that
reference**, beside the compute seconds per phase and per method, read from the run store's records (every record
carries the wall time its cell took). Prints tables; asserts nothing.

    .venv/bin/python bench/bench_demo.py                       # the demo as a user runs it (three seeds, --jobs default)
    .venv/bin/python bench/bench_demo.py --busy 1              # beside one competing busy process
    .venv/bin/python bench/bench_demo.py --args "--jobs 1"     # the same demo in one process (the slow path)
    .venv/bin/python bench/bench_demo.py --store runs          # only the tables, from a finished demo's store

"Compute seconds" add up the cells' own wall times over every worker process, so with K workers they can exceed
the wall time up to K times; "process" is the wall time not spent in any cell (start-up, data loading, reports).
A competitor is ``python -c "while True: pass"`` started just before the run and killed after it.
Run it on an otherwise idle machine: anything else running changes every number.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import shlex
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

PHASE = {"model": "training (Original, Re-train)", "unlearned": "unlearning", "eval": "evaluation (acc, MIA, re-learn)",
         "audit": "audit (+ per-sample files, gallery)", "estimate": "audit (+ per-sample files, gallery)",
         "collateral": "audit (+ per-sample files, gallery)", "relearn_curve": "curves", "robust": "curves"}


def cpu_model() -> str:
    from rurk.machine import machine, short

    return short(machine())


def reference_seconds() -> float:
    """Wall time of training one seed's Original and Re-train at one torch thread, from a cold cache, process
    start included (as the demo's is)."""
    out = Path(tempfile.mkdtemp(prefix="rurk-bench-ref-"))
    t0 = time.perf_counter()
    subprocess.run([str(Path(sys.executable).parent / "rurk"), "train", "fmnist5", "--seed", "131", "--threads", "1",
                    "--out", str(out), "--quiet"], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def run_demo(extra: list[str], busy: int) -> tuple[float, Path]:
    out = Path(tempfile.mkdtemp(prefix="rurk-bench-demo-"))
    competitors = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(busy)]
    try:
        t0 = time.perf_counter()
        subprocess.run([str(Path(sys.executable).parent / "rurk"), "demo", "--out", str(out), "--quiet", *extra],
                       check=True, stdout=subprocess.DEVNULL)
        return time.perf_counter() - t0, out
    finally:
        for p in competitors:
            p.kill()


def spent(out: Path) -> tuple[dict[str, float], dict[str, dict[str, float]], set]:
    """Seconds per phase and per (row, phase) from the store, and the thread counts the cells ran with."""
    per_phase: dict[str, float] = defaultdict(float)
    per_row: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    threads = set()
    with sqlite3.connect(out / "rurk.sqlite") as db:
        for kind, config, timings in db.execute("SELECT kind, config, timings FROM records"):
            t = json.loads(timings or "{}")
            w = t.get("wall_s") or 0.0
            threads.add(t.get("threads"))
            cfg = json.loads(config or "{}")
            phase = PHASE.get(kind, kind)
            if kind == "unlearned":  # gradient steps (fixed by the tuned settings) apart from the closed forms
                phase += " (fine-tuning methods)" if fine_tuning(cfg.get("method")) else " (closed-form methods)"
            per_phase[phase] += w
            row = "Original/Re-train" if kind == "model" else cfg.get("method") or cfg.get("model") or kind
            per_row[str(row)][PHASE.get(kind, kind)] += w
    return per_phase, per_row, threads


@functools.cache
def fine_tuning(method: str | None) -> bool:
    """Whether a row's method trains with gradient steps (its config is a FinetuneConfig; variants by base name)."""
    from rurk.methods import REGISTRY, FinetuneConfig, load_all

    load_all()
    spec = REGISTRY.get(str(method).split(":")[0])
    return spec is not None and issubclass(spec.config_cls, FinetuneConfig)


def workers(extra: list[str]) -> int:
    """The worker processes `rurk demo` starts: --jobs K, else min(3 seeds, the CPUs this process may use)."""
    from rurk.threads import available_cpus

    if "--jobs" in extra:
        return int(extra[extra.index("--jobs") + 1])
    return min(3, available_cpus())


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--busy", type=int, default=0, help="competing busy processes during the run [default: 0]")
    ap.add_argument("--args", default="", help="extra arguments for `rurk demo`, e.g. \"--jobs 1\"")
    ap.add_argument("--top", type=int, default=8, help="rows to list by compute seconds [default: 8]")
    ap.add_argument("--store", default=None, help="read a finished run's store instead of running the demo")
    ap.add_argument("--no-reference", action="store_true", help="skip the reference training (no ratio)")
    a = ap.parse_args()
    # the reference is timed before and after the demo and averaged: one timing moved by ~20% between identical
    # runs on the 2-core machine, and the machine's speed may drift during the demo
    before = [] if a.store or a.no_reference else [reference_seconds()]
    wall, out = (float("nan"), Path(a.store)) if a.store else run_demo(shlex.split(a.args), a.busy)
    refs = before + ([reference_seconds()] if before else [])
    ref = sum(refs) / len(refs) if refs else float("nan")
    per_phase, per_row, threads = spent(out)
    total = sum(per_phase.values())
    print(f"rurk demo {a.args}".strip() + f" on {cpu_model()}, {a.busy} competing process(es), cells at "
          f"{'/'.join(str(t) for t in sorted(x for x in threads if x is not None))} torch thread(s); run store {out}")
    print(f"\nwall time: {wall:.0f} s; one seed's Original + Re-train at one thread: {ref:.0f} s "
          f"(mean of {' and '.join(f'{r:.0f}' for r in refs) or 'none'} s, before and after the demo); "
          f"**ratio {wall / ref:.2f}**; compute seconds over all processes: {total:.0f} s\n")
    rows = [[k, f"{v:.0f}", f"{100 * v / total:.0f}%"] for k, v in sorted(per_phase.items(), key=lambda kv: -kv[1])]
    print(table(["phase", "compute s", "share"], rows + [["total", f"{total:.0f}", "100%"]]))
    if math.isfinite(wall) and math.isfinite(ref):  # the ratio phase by phase, as if the workers never waited
        k = workers(shlex.split(a.args))
        parts = [[p, f"{v / (k * ref):.2f}"] for p, v in sorted(per_phase.items(), key=lambda kv: -kv[1])]
        idle = wall / ref - total / (k * ref)
        print(f"\nthe ratio by phase (compute s / ({k} workers x the reference)); the rest is the wall time in no "
              "cell on some worker (start-up, waiting, reports):\n")
        print(table(["phase", "share of the ratio"], parts + [["not in a cell", f"{idle:.2f}"],
                                                                ["ratio", f"{wall / ref:.2f}"]]))
    heavy = sorted(per_row.items(), key=lambda kv: -sum(kv[1].values()))[: a.top]
    phases = sorted({p for _, d in heavy for p in d})
    print()
    print(table(["row (3 seeds)", *phases, "total"],
                [[r, *[f"{d.get(p, 0):.0f}" for p in phases], f"{sum(d.values()):.0f}"] for r, d in heavy]))


if __name__ == "__main__":
    main()
