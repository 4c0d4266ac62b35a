"""Benchmark of the residual-knowledge audit (residual-knowledge.md §8). Prints tables; never a test.

    .venv/bin/python bench/bench_audit.py            # 100 forget samples, c = 100, 11 tau (~2 x 220k forwards)
    .venv/bin/python bench/bench_audit.py --quick    # 50 samples, c = 20

(a) audit wall time / bare cost of the same forward passes (2 models x c x |S_f| x |tau| on clean data at the
    best batch size, channels_last)                                             target <= 1.25
(b) speed-up over a naive implementation of the paper's procedure (for each tau, for each of the c repeats,
    perturb the forget set in batches of 128 and run both models; NCHW)         target >= 3
(c) forward throughput of one model vs batch size and memory layout.

The machine may be shared: use --repeats to take the best of several runs of (a) and (b).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import time

import numpy as np
import torch
from torch import nn

from rurk.audit import DEFAULT_TAUS, default_batch_size, residual_knowledge


def small_cnn(classes: int = 5, seed: int = 0) -> nn.Module:
    """SmallCNN of evaluation.md §6 (rurk.models' if importable, else a local copy)."""
    torch.manual_seed(seed)
    try:
        from rurk.models import build_model

        return build_model("smallcnn", classes, (1, 28, 28))
    except Exception:  # another engineer's module not there yet
        return nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, classes),
        )


@contextlib.contextmanager
def layout(models, channels_last: bool):
    """Conv kernels in channels_last for the duration (restored after)."""
    saved = []
    if channels_last:
        for mdl in models:
            for p in mdl.parameters():
                if p.dim() == 4:
                    saved.append((p, p.data))
                    p.data = p.data.contiguous(memory_format=torch.channels_last)
    try:
        yield
    finally:
        for p, d in saved:
            p.data = d


def throughput(model, bs: int, channels_last: bool, seconds: float) -> float:
    x = torch.rand(bs, 1, 28, 28)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with layout([model], channels_last), torch.inference_mode():
        for _ in range(2):
            model(x)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            model(x).argmax(1)
            n += bs
        return n / (time.perf_counter() - t0)


class Clock:
    """Wall and process-CPU seconds of a with-block (CPU time is far less sensitive to other jobs on a
    shared machine, as long as one intra-op thread is used: spinning OpenMP threads inflate it)."""

    def __enter__(self):
        self.w0, self.c0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.w0, time.process_time() - self.c0


def bare(models, n_images: int, bs: int, channels_last: bool) -> Clock:
    """Wall/CPU seconds for n_images forward passes of each model on clean data (the cost floor)."""
    x = torch.rand(bs, 1, 28, 28)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with layout(models, channels_last), torch.inference_mode(), Clock() as clk:
        done = 0
        while done < n_images:
            k = min(bs, n_images - done)
            for mdl in models:
                mdl(x[:k]).argmax(1)
            done += k
    return clk


def naive(m, a, x, y, taus, c: int, bs: int = 128):
    """The paper's procedure, written plainly: per tau, per repeat, perturb the forget set in batches."""
    n = len(y)
    out = []
    m.eval(), a.eval()
    with torch.no_grad():
        for tau in taus:
            km, ka = np.zeros(n, int), np.zeros(n, int)
            for _ in range(c):
                for s in range(0, n, bs):
                    xb = x[s : s + bs]
                    xp = torch.clamp(xb + tau * torch.randn_like(xb), 0, 1)
                    km[s : s + bs] += (m(xp).argmax(1) == y[s : s + bs]).numpy()
                    ka[s : s + bs] += (a(xp).argmax(1) == y[s : s + bs]).numpy()
            out.append((km, ka))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="50 samples, c = 20, short throughput windows")
    ap.add_argument("--n", type=int, default=None, help="forget samples (default 100; quick 50)")
    ap.add_argument("--draws", type=int, default=None, help="c (default 100; quick 20)")
    ap.add_argument("--repeats", type=int, default=1, help="best of this many runs for (a) and (b)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch intra-op threads (default: torch's; use 1 on a busy shared machine)")
    ap.add_argument("--batch-size", type=int, default=None, help="audit batch size (default: rurk's default)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    n = args.n or (50 if args.quick else 100)
    c = args.draws or (20 if args.quick else 100)
    window = 0.4 if args.quick else 1.0
    taus = list(DEFAULT_TAUS)
    m, a = small_cnn(seed=0).eval(), small_cnn(seed=1).eval()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 1, 28, 28, generator=g)
    y = torch.randint(0, 5, (n,), generator=g)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; SmallCNN (1x28x28 -> 5); "
          f"|S_f| = {n}, c = {c}, |tau| = {len(taus)}")

    # (c) throughput table -------------------------------------------------------------------------
    print("\n(c) forward throughput of one model, images/s")
    print(f"{'batch':>7} {'NCHW':>10} {'channels_last':>14}")
    table = {}
    for bs in (32, 64, 128, 256, 512, 1024):
        row = [throughput(m, bs, cl, window) for cl in (False, True)]
        table[bs] = row
        print(f"{bs:>7} {row[0]:>10.0f} {row[1]:>14.0f}")
    best_bs, best_cl = max(((bs, cl) for bs in table for cl in (0, 1)), key=lambda k: table[k[0]][k[1]])
    print(f"best: batch {best_bs}, {'channels_last' if best_cl else 'NCHW'}")

    # (a) / (b) --------------------------------------------------------------------------------------
    n_fwd = c * n * len(taus)  # per model
    runs = {"bare": [], "audit": [], "naive": []}
    res = None
    for _ in range(args.repeats):
        runs["bare"].append(bare([m, a], n_fwd, best_bs, bool(best_cl)))
        with Clock() as clk:
            res = residual_knowledge(m, a, x, y, taus, "gaussian", draws=c, seed=0, progress=False,
                                     bootstrap=1000, batch_size=args.batch_size)
        runs["audit"].append(clk)
        mm, aa = copy.deepcopy(m), copy.deepcopy(a)
        with Clock() as clk:
            naive(mm, aa, x, y, taus, c)
        runs["naive"].append(clk)
    wall = {k: min(c.wall for c in v) for k, v in runs.items()}
    cpu = {k: min(c.cpu for c in v) for k, v in runs.items()}
    bs_used = args.batch_size or default_batch_size("cpu")
    print(f"\n(a)/(b) gaussian audit, {2 * n_fwd:,} forward passes nominal "
          f"({res.timing.forward_passes:,} run: tau=0 shortcut), audit batch {bs_used}, best of {args.repeats}")
    print(f"{'':<40}{'wall s':>8}{'cpu s':>8}{'wall/bare':>10}{'cpu/bare':>10}  target")
    label = {"bare": "bare forwards (best batch, layout)", "audit": "rurk audit (incl. bootstrap B=1000)",
             "naive": "naive paper loop (batch 128, NCHW)"}
    target = {"bare": "", "audit": "<= 1.25", "naive": ""}
    for k in ("bare", "audit", "naive"):
        print(f"{label[k]:<40}{wall[k]:>8.2f}{cpu[k]:>8.2f}{wall[k] / wall['bare']:>10.2f}{cpu[k] / cpu['bare']:>10.2f}"
              f"  {target[k]}")
    print(f"{'speed-up audit vs naive':<40}{'':>16}{wall['naive'] / wall['audit']:>10.2f}"
          f"{cpu['naive'] / cpu['audit']:>10.2f}  >= 3")
    s = res.stats(0.03)
    print(f"\nsanity: tau={s.tau:.4f} acc_m={s.acc_m:.3f} acc_a={s.acc_a:.3f} r_pooled={s.r_pooled}")


if __name__ == "__main__":
    main()
