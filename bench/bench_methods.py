"""Throughput of the fine-tuning unlearning methods vs GD (a benchmark, not a test: prints a table).

Same data for every method: a SmallCNN-like net on 28×28 images (Fashion-MNIST when its files are on this
machine, else uniform random pixels), 900 retain / 100 forget samples, batch 128. Every registered method is
run (so methods added later — EU-k, CF-k, SCRUB, ... — appear automatically; training-free methods without
``epochs`` are listed but not timed unless named with ``--methods``); extra rows run RURK with the
attack probes. Columns:

- ``steps/s``: optimiser steps per second of the whole method call (best of ``--repeats``), on the process's
  CPU time by default (``--clock wall`` for wall time; CPU time with one thread ignores other jobs). GD is
  re-run next to every row (interleaved, best of ``--repeats`` too) and each row's ratios use that GD time,
  which keeps the ratios meaningful on a machine shared with other jobs;
- ``fwd samples/step``: samples through the model's forward per step, counted with a forward pre-hook
  (RURK with a gaussian probe and v = 1: |x_r| + 2·|x_f|; attacks add their crafting passes);
- ``raw ×GD``: steps/s relative to GD;
- ``per-sample ×GD``: forward samples per second relative to GD — the cost-adjusted ratio (target ≥ 0.9).

    .venv/bin/python bench/bench_methods.py [--repeats 3] [--threads 1] [--methods gd,rurk,...] [--random]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn
from tqdm.auto import tqdm as _tqdm

import rurk.train
from rurk.data.tensordata import TensorData
from rurk.methods import REGISTRY, UnlearnData, load_all, unlearn
from rurk.train import OptimConfig, fit

rurk.train.tqdm = lambda *a, **k: _tqdm(*a, **{**k, "disable": True})  # progress bars off while timing

N_RETAIN, N_FORGET, SEED = 900, 100, 131
# Overrides that give every method a comparable number of steps (~16) on 900/100 samples at batch 128.
STEPS_OVERRIDES: dict[str, dict] = {"ga": {"epochs": 16}}  # GA steps over S_f only: 1 step per epoch
DEFAULT_OVERRIDES = {"epochs": 2}
EXTRA_ROWS = [  # (label, method, overrides)
    ("rurk fgsm", "rurk", {"probe": "fgsm"}),
    ("rurk pgd-10", "rurk", {"probe": "pgd"}),
    ("rurk v=2", "rurk", {"copies": 2}),
]


def load_images(random: bool) -> tuple[TensorData, str]:
    n = N_RETAIN + N_FORGET
    if not random:
        try:
            from rurk.data.loaders import load_source

            src = load_source("fmnist")
            g = torch.Generator().manual_seed(0)
            rows = torch.randperm(len(src.train), generator=g)[:n]
            return src.train.subset(rows), "fmnist"
        except Exception as e:  # noqa: BLE001 — fall back to random data, say why
            print(f"(fmnist unavailable: {e}; using random pixels)")
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 1, 28, 28, generator=g)
    return TensorData(x, torch.randint(0, 10, (n,), generator=g), torch.arange(n)), "random"


def small_cnn() -> nn.Module:
    try:
        from rurk.models import build_model

        return build_model("smallcnn", 10, (1, 28, 28), mean=[0.286], std=[0.353])
    except Exception:  # noqa: BLE001 — models package not there: the same shape, locally
        return nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, 10),
        )


def forward_counter() -> tuple[dict, object]:
    """A forward pre-hook counting samples through the model. A plain function (not an object) so that the
    methods' deep copies keep calling *this* hook and its shared count."""
    count = {"samples": 0}

    def hook(module, args):
        count["samples"] += int(args[0].shape[0])

    return count, hook


CLOCKS = {"cpu": time.process_time, "wall": time.perf_counter}


def run_once(original, data, counter, name, overrides, clock="cpu"):
    """(steps/s, forward samples per step, steps, seconds) of one method call on ``clock``, or None if it took
    no steps. ``cpu`` = this process's CPU time: with one torch thread it is insensitive to other jobs on a
    shared machine, unlike wall time."""
    counter["samples"] = 0
    t0 = CLOCKS[clock]()
    _, rec = unlearn(name, original, data, SEED, overrides=overrides)
    secs = CLOCKS[clock]() - t0
    if rec.steps == 0:
        return None
    return rec.steps / secs, counter["samples"] / rec.steps, rec.steps, secs


def bench_row(original, data, counter, name, overrides, repeats, clock):
    """Best of ``repeats`` for the method and for GD, run alternately."""
    best, best_gd = None, None
    for _ in range(repeats):
        gd = run_once(original, data, counter, "gd", DEFAULT_OVERRIDES, clock)
        row = run_once(original, data, counter, name, overrides, clock)
        best_gd = gd if best_gd is None or gd[0] > best_gd[0] else best_gd
        if row is None:
            return None, best_gd
        best = row if best is None or row[0] > best[0] else best
    return best, best_gd


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: stabler on a shared machine)")
    ap.add_argument("--clock", choices=sorted(CLOCKS), default="cpu",
                    help="cpu: process CPU time (default; robust to other jobs with --threads 1); wall: wall time")
    ap.add_argument("--methods", default=None, help="comma-separated subset (default: every registered method)")
    ap.add_argument("--random", action="store_true", help="random pixels instead of Fashion-MNIST")
    ap.add_argument("--no-extra", action="store_true", help="skip the RURK attack-probe rows")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    full, source = load_images(args.random)
    data = UnlearnData(full.subset(range(N_RETAIN)), full.subset(range(N_RETAIN, N_RETAIN + N_FORGET)), 10)
    torch.manual_seed(0)
    original = small_cnn()
    fit(original, full, OptimConfig(lr=0.05, epochs=2, batch_size=128), seed=0, progress=False)
    counter, hook = forward_counter()
    original.register_forward_pre_hook(hook)

    load_all()
    if args.methods:
        names = args.methods.split(",")
    else:  # every fine-tuning method (config with epochs); training-free ones (SSD, CR, Fisher, NTK) take no steps
        names = sorted(n for n, spec in REGISTRY.items() if "epochs" in spec.defaults())
        skipped = sorted(set(REGISTRY) - set(names))
        if skipped:
            print(f"training-free, not timed here: {', '.join(skipped)}")
    rows = [(n, n, {**DEFAULT_OVERRIDES, **STEPS_OVERRIDES.get(n, {})}) for n in names]
    if not args.no_extra and "rurk" in names:
        rows += [(label, m, {**DEFAULT_OVERRIDES, **o}) for label, m, o in EXTRA_ROWS]
    if "gd" not in names:
        rows.insert(0, ("gd", "gd", dict(DEFAULT_OVERRIDES)))

    print(f"data: {source}, {N_RETAIN} retain / {N_FORGET} forget, 1x28x28, batch 128; torch threads "
          f"{torch.get_num_threads()}; best of {args.repeats}; clock: {args.clock}")
    run_once(original, data, counter, "gd", DEFAULT_OVERRIDES, args.clock)  # warm-up
    results = {}
    for label, method, overrides in rows:
        spec = REGISTRY[method]
        known = set(spec.defaults())
        ov = {k: v for k, v in overrides.items() if k in known}
        try:
            results[label] = bench_row(original, data, counter, method, ov, args.repeats, args.clock)
        except Exception as e:  # noqa: BLE001 — a method under construction must not stop the table
            results[label] = f"error: {type(e).__name__}: {e}"

    header = (f"{'method':<16}{'steps':>7}{'secs':>9}{'steps/s':>10}{'GD steps/s':>12}{'fwd samples/step':>18}"
              f"{'raw ×GD':>10}{'per-sample ×GD':>16}")
    print(header)
    print("-" * len(header))
    for label, _, _ in rows:
        r = results[label]
        if isinstance(r, str):
            print(f"{label:<16}  {r[:100]}")
            continue
        (row, gd) = r
        if row is None:
            print(f"{label:<16}  (no optimiser steps: training-free)")
            continue
        sps, fwd, steps, secs = row
        gd_sps, gd_fwd = gd[0], gd[1]
        raw = sps / gd_sps
        per_sample = raw * fwd / gd_fwd
        print(f"{label:<16}{steps:>7d}{secs:>9.2f}{sps:>10.2f}{gd_sps:>12.2f}{fwd:>18.0f}{raw:>10.2f}"
              f"{per_sample:>16.2f}")


if __name__ == "__main__":
    main()
