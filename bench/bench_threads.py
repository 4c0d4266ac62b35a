"""The demo's wall time on a shared machine: idle and beside competing CPU-bound processes, with torch's own
threading and with rurk's. Prints a table; asserts nothing.

    .venv/bin/python bench/bench_threads.py                   # the full demo, 6 runs (~30 min on 2 cores)
    .venv/bin/python bench/bench_threads.py --quick           # a shortened demo (6 epochs, 8 draws; ~12 min)
    .venv/bin/python bench/bench_threads.py --configs rurk,one --competitors 1

Each run is ``rurk [--threads N] demo --out <fresh dir> --quiet`` in a subprocess, so it trains Original and
Re-train from scratch and unlearns and audits every method, exactly as a user's first ``rurk demo`` does.
A competitor is ``python -c "while True: pass"`` started just before the run and killed after it (one busy
core's worth of work: another user's job). Configurations (``--configs``):

* ``torch``: what torch does by itself -- as many threads as the machine has cores, and libgomp's default
  spin-wait (``GOMP_SPINCOUNT=300000``, which turns off rurk's shorter spin);
* ``rurk``: rurk's defaults -- threads from the CPUs this process may use (``rurk.threads.available_cpus``),
  and a spin count of 100 when other runnable tasks are there at start (``rurk.threads.prefer_short_spin``);
* ``one``: ``--threads 1``, the README's advice for a machine shared with other jobs.

``RURK_THREADS``, ``OMP_NUM_THREADS``, ``OMP_WAIT_POLICY`` and ``GOMP_SPINCOUNT`` are removed from the runs'
environment. Run it on an otherwise idle machine: anything else running changes every row. The demo's results
depend on the thread count (floating-point sums are split differently), never on the spin count.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

#: a shortened demo: fewer epochs and draws; the same code paths.
QUICK = ("--set", "train.epochs=6", "--draws", "8")


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated integers, e.g. 2,1") from None
    if not values or min(values) < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated integers >= 0")
    return values


#: name -> (description, rurk's arguments, extra environment)
CONFIGS = {
    "torch": ("torch's own: {cores} threads, libgomp's spin", ["--threads", "{cores}"], {"GOMP_SPINCOUNT": "300000"}),
    "rurk": ("rurk's default: {auto} threads, short spin if busy", [], {}),
    "one": ("--threads 1", ["--threads", "1"], {}),
}
CLEARED = ("RURK_THREADS", "OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def _configs(text: str) -> list[str]:
    names = [v.strip() for v in text.split(",") if v.strip()]
    bad = [n for n in names if n not in CONFIGS]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated names of {', '.join(CONFIGS)}")
    return names


def run_demo(config: str, competitors: int, extra: list[str], data_dir: str | None) -> float:
    """Wall seconds of one fresh ``rurk demo`` in ``config`` with ``competitors`` busy loops beside it."""
    out = tempfile.mkdtemp(prefix="rurk-bench-threads-")
    rurk = os.path.join(os.path.dirname(sys.executable), "rurk")  # the console script of this environment
    _, flags, env_extra = CONFIGS[config]
    cores = str(os.cpu_count() or 1)
    cmd = [rurk, *(f.replace("{cores}", cores) for f in flags), "demo", "--out", out, "--quiet", *extra]
    if data_dir:
        cmd += ["--data-dir", data_dir]
    env = {k: v for k, v in os.environ.items() if k not in CLEARED} | env_extra
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(competitors)]
    try:
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
        return time.perf_counter() - t0
    finally:
        for p in busy:
            p.kill()
            p.wait()
        shutil.rmtree(out, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    cores = os.cpu_count() or 1
    ap.add_argument("--configs", type=_configs, default=list(CONFIGS),
                    help=f"configurations to time, of {','.join(CONFIGS)} [default: all]")
    ap.add_argument("--competitors", type=_ints, default=[0, 1],
                    help="numbers of competing busy processes [default: 0,1]")
    ap.add_argument("--quick", action="store_true", help="a shortened demo (6 epochs, 8 draws)")
    ap.add_argument("--data-dir", default=None, help="passed to rurk demo")
    args = ap.parse_args()

    extra = list(QUICK) if args.quick else []
    from rurk.threads import available_cpus

    print(f"machine: {cores} cores; this process may use {available_cpus()} "
          f"(load average at start {os.getloadavg()[0]:.2f}); demo{' --quick' if args.quick else ''}")
    names = {c: CONFIGS[c][0].format(cores=cores, auto=available_cpus()) for c in args.configs}
    rows = []
    for comp in args.competitors:
        for config in args.configs:
            secs = run_demo(config, comp, extra, args.data_dir)
            rows.append((comp, config, secs))
            print(f"  competitors={comp} {names[config]}: {secs:.0f} s", flush=True)
    base = {comp: min(s for c, _, s in rows if c == comp) for comp in args.competitors}
    fastest = min(s for _, _, s in rows)
    print()
    print("| competing busy processes | configuration | wall s | ÷ best at this load | ÷ fastest row |")
    print("|---|---|---|---|---|")
    for comp, config, secs in rows:
        print(f"| {comp} | {names[config]} | {secs:.0f} | {secs / base[comp]:.2f} | {secs / fastest:.2f} |")


if __name__ == "__main__":
    main()
