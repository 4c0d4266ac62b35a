"""`rurk tune` before and after pruning and parallel trials: best value found against wall time (a benchmark).

For each method (default RURK, GD and NegGrad+) on fmnist5 with a small trial budget it runs, in this order and
as separate `rurk tune` processes on one run store (references trained and the forget sets' difficulty shifts
fitted once, beforehand, untimed: both are kept in the store and every later run reads them):

- ``before``: today's old behaviour — two tuning forget sets (split seeds 1,2), every trial to the end, one
  trial at a time (``--split-seeds 1,2 --no-prune --jobs 1``);
- ``after``: the defaults — three tuning forget sets (1,2,3), pruning after the first, ``--jobs`` = the CPUs.

The two objectives average different forget sets, so the best setting of ``before`` is also scored on the three
forget sets of ``after`` (``before@1,2,3``, in this process): that is the like-for-like quality comparison.
Besides the whole budget's wall time the table gives the time to quality: the seconds (from the process start)
``before`` took to find its best setting, and those ``after`` took to find a setting at least as good (a mean gap
on 1,2,3 no larger than ``before``'s best re-scored there). ``--plot PATH`` draws the best value found against
wall time, before and after, one panel per method.
Every timing is printed with the CPU model (``/proc/cpuinfo``), since numbers from another CPU differ.
Each run starts from an empty study (this script deletes OUT/tune.db first, never the references).

    nice -n 10 .venv/bin/python bench/bench_tune.py [--trials 12] [--methods rurk,gd,neggrad_plus] [--out DIR]
                                                    [--plot docs/bench-tune.png]

``--before-set KEY=VALUE`` (repeatable) adds scenario settings to ``before`` only — e.g.
``--before-set methods.rurk.methods._calibrate=false`` tunes RURK as it was tuned before calibrated stopping (a fixed
epoch count), so ``before`` is the whole old way and ``after`` the whole new one.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import optuna

os.environ.setdefault("RURK_PROGRESS", "0")  # the re-scoring below runs in this process: no progress bars

from rurk.audit.estimate import difficulty_shift
from rurk.config import load_scenario, parse_overrides
from rurk.report.summary import cpu_model
from rurk.store import Store
from rurk.run.tune import _load_splits, _Objective
from rurk.run.study import DEFAULT_TUNING_SEED


def run_tune(scenario: str, method: str, out: Path, trials: int, flags: list[str]) -> tuple[float, str]:
    """Wall seconds of one `rurk tune` process and the name of the study it made."""
    storage = f"sqlite:///{out / 'tune.db'}"
    before = set(optuna.get_all_study_names(storage)) if (out / "tune.db").exists() else set()
    cmd = [sys.executable, "-m", "rurk.cli", "tune", scenario, "--method", method, "--trials", str(trials),
           "--out", str(out), "--write", str(out / f"bench-{method}.toml"), "--device", "cpu", *flags]
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=dict(os.environ, RURK_PROGRESS="0"))
    wall = time.perf_counter() - t
    (name,) = set(optuna.get_all_study_names(storage)) - before
    return wall, name


def trajectory(storage: str, name: str) -> tuple[list[tuple[float, float]], dict]:
    """(seconds since the study's first trial started, best value so far) at every improvement, and counts."""
    trials = optuna.load_study(study_name=name, storage=storage).trials
    t0 = min(t.datetime_start for t in trials)
    done = sorted((t for t in trials if t.state.name == "COMPLETE"), key=lambda t: t.datetime_complete)
    points, best = [], float("inf")
    for t in done:
        if t.value < best:
            best = t.value
            points.append(((t.datetime_complete - t0).total_seconds(), best))
    counts = {s: sum(t.state.name == s for t in trials) for s in ("COMPLETE", "PRUNED", "FAIL")}
    best_params = min(done, key=lambda t: t.value).params if done else None
    span = max((t.datetime_complete - t0).total_seconds() for t in trials if t.datetime_complete)
    return points, {**counts, "params": best_params, "span": span}


def reached(points: list[tuple[float, float]], offset: float, bar: float) -> float | None:
    """Seconds from the process start until the best value found is <= ``bar`` (None: never within the run)."""
    return next((offset + s for s, v in points if v <= bar + 1e-12), None)


def plot(rows: list, path: Path, cpu: str) -> None:
    """Best value found against wall time (from the process start), before and after, one panel per method."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

    fig = Figure(figsize=(4.2 * len(rows), 3.4), constrained_layout=True)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(rows), squeeze=False)[0]
    for ax, (method, r, rescored) in zip(axes, rows):
        for mode, color in (("before", "tab:gray"), ("after", "tab:blue")):
            wall, points, info = r[mode]
            offset = wall - info["span"]  # the process's start-up before the study's first trial
            xs = [offset + s for s, _ in points] + [wall]
            ys = [v for _, v in points] + [points[-1][1]]
            ax.step(xs, ys, where="post", color=color, label=f"{mode} ({wall:.0f} s)")
            ax.plot([wall], [ys[-1]], "|", color=color, ms=12)
        ax.axhline(rescored, color="tab:gray", linestyle=":", linewidth=1, label="before's best on 1,2,3")
        ax.set_yscale("log")
        plain = FuncFormatter(lambda v, _: f"{v:g}")  # 3, 4, 6 instead of 3×10⁰ on the log axis
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(plain)
        ax.set_title(method, fontsize=10)
        ax.set_xlabel("wall s from process start")
        ax.set_ylabel("best mean Avg. Gap so far")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"rurk tune: best value against wall time ({cpu})", fontsize=10)
    fig.savefig(path, dpi=110, format="png")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", default="fmnist5")
    ap.add_argument("--methods", default="rurk,gd,neggrad_plus")
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--out", default="/tmp/rurk-bench-tune", help="run store (references are kept between runs)")
    ap.add_argument("--before-set", action="append", default=[], metavar="KEY=VALUE",
                    help="a scenario setting for the 'before' runs only (repeatable)")
    ap.add_argument("--plot", default=None, metavar="PATH", help="draw best value against wall time to PATH (PNG)")
    args = ap.parse_args()
    out = Path(args.out)
    cpu = cpu_model()
    scenario = load_scenario(args.scenario)
    store = Store(out)
    print(f"CPU: {cpu} ({os.cpu_count()} logical CPUs); {args.scenario}, {args.trials} trials per run", flush=True)
    t = time.perf_counter()
    splits = _load_splits(scenario, [1, 2, 3], DEFAULT_TUNING_SEED, store, "cpu")  # trains what is not cached
    for prepared, *_ in splits:  # kept in the store beside the split, as the references are (calibrated rows read it)
        d = prepared.data
        difficulty_shift(d.retain, d.forget, d.calib, prepared.cache_dir)
    print(f"references and difficulty shifts for split seeds 1,2,3 ready in {time.perf_counter() - t:.0f} s "
          "(untimed below)", flush=True)
    (out / "tune.db").unlink(missing_ok=True)
    storage = f"sqlite:///{out / 'tune.db'}"
    before_set = [f for kv in args.before_set for f in ("--set", kv)]
    modes = {"before": ["--split-seeds", "1,2", "--no-prune", "--jobs", "1", *before_set], "after": []}
    before_scenario = load_scenario(args.scenario, parse_overrides(args.before_set)) if args.before_set else scenario
    rows = []
    for method in args.methods.split(","):
        result = {}
        for mode, flags in modes.items():
            wall, name = run_tune(args.scenario, method, out, args.trials, flags)
            points, info = trajectory(storage, name)
            result[mode] = (wall, points, info)
            print(f"  {method:13s} {mode:6s} {wall:6.0f} s  [{cpu}]  best {points[-1][1]:.2f}  "
                  f"complete/pruned/failed {info['COMPLETE']}/{info['PRUNED']}/{info['FAIL']}  "
                  f"best so far (s: value) {', '.join(f'{s:.0f}: {v:.2f}' for s, v in points)}", flush=True)
        rescored, _ = _Objective(before_scenario, method, before_scenario.methods.get(method, {}),
                                 DEFAULT_TUNING_SEED, splits)(result["before"][2]["params"])
        rows.append((method, result, rescored))

    print(f"\n| method | CPU | before: wall s | before: best (1,2) | before best on 1,2,3 | after: wall s "
          f"| after: best (1,2,3) | after: complete/pruned | speed-up | before: s to its best "
          f"| after: s to as good | speed-up to quality |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for method, r, rescored in rows:
        (wb, pb, ib), (wa, pa, ia) = r["before"], r["after"]
        tb = reached(pb, wb - ib["span"], pb[-1][1])
        ta = reached(pa, wa - ia["span"], rescored)
        ratio = f"{tb / ta:.1f}×" if ta else "never as good"
        print(f"| {method} | {cpu} | {wb:.0f} | {pb[-1][1]:.2f} | {rescored:.2f} | {wa:.0f} | {pa[-1][1]:.2f} "
              f"| {ia['COMPLETE']}/{ia['PRUNED']} | {wb / wa:.1f}× | {tb:.0f} | {'–' if ta is None else f'{ta:.0f}'} "
              f"| {ratio} |")
    if args.plot:
        plot(rows, Path(args.plot), cpu)
        print(f"\nplot: {args.plot}")


if __name__ == "__main__":
    main()
