"""Benchmark of the residual-knowledge audit (residual-knowledge.md §8). Prints tables; never a test.

    .venv/bin/python bench/bench_audit.py            # 100 forget samples, c = 100, 11 tau (~2 x 220k forwards)
    .venv/bin/python bench/bench_audit.py --quick    # 50 samples, c = 20

(a) audit wall time / bare cost of the same forward passes (2 models x c x |S_f| x |tau| on clean data at the
    best batch size, channels_last)                                             target <= 1.25
(b) speed-up over a naive implementation of the paper's procedure (for each tau, for each of the c repeats,
    perturb the forget set in batches of 128 and run both models; NCHW)         target >= 3
(c) forward throughput of one model vs batch size and memory layout.

The machine may be shared: measurements run in interleaved rounds (--repeats, default 3) and each number is the
best round; the bare cost is 2 x c x |S_f| x |tau| forwards at the best throughput measured in (c).
"""

from __future__ import annotations

import argparse
import copy
import time

import numpy as np
import torch
from torch import nn

from rurk.audit import DEFAULT_TAUS, _channels_last_weights, default_batch_size, residual_knowledge


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


def layout(models, channels_last: bool):
    """Conv kernels in channels_last for the duration (restored after): the audit's own helper."""
    return _channels_last_weights(models, channels_last)


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
    ap.add_argument("--repeats", type=int, default=3, help="interleaved rounds; every number is the best round")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch intra-op threads (default: torch's; use 1 on a busy shared machine)")
    ap.add_argument("--batch-size", type=int, default=None, help="audit batch size (default: rurk's default)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    n = args.n or (50 if args.quick else 100)
    c = args.draws or (20 if args.quick else 100)
    window = 0.3 if args.quick else 0.8
    taus = list(DEFAULT_TAUS)
    m, a = small_cnn(seed=0).eval(), small_cnn(seed=1).eval()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 1, 28, 28, generator=g)
    y = torch.randint(0, 5, (n,), generator=g)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; SmallCNN (1x28x28 -> 5); "
          f"|S_f| = {n}, c = {c}, |tau| = {len(taus)}")

    # Rounds interleave every measurement so that load from other jobs hits them alike; each number is the
    # best over rounds. The bare cost is the nominal forward count at the best measured throughput.
    batches = (32, 64, 128, 256, 512, 1024)
    n_fwd = c * n * len(taus)  # per model
    tput: dict[tuple[int, bool], list[float]] = {}
    t_audit, t_naive = [], []
    res = None
    for r in range(args.repeats):
        for bs in batches:
            for cl in (False, True):
                tput.setdefault((bs, cl), []).append(throughput(m, bs, cl, window))
        t0 = time.perf_counter()
        res = residual_knowledge(m, a, x, y, taus, "gaussian", draws=c, seed=0, progress=False,
                                 bootstrap=1000, batch_size=args.batch_size)
        t_audit.append(time.perf_counter() - t0)
        mm, aa = copy.deepcopy(m), copy.deepcopy(a)
        t0 = time.perf_counter()
        naive(mm, aa, x, y, taus, c)
        t_naive.append(time.perf_counter() - t0)
        print(f"round {r + 1}/{args.repeats}: audit {t_audit[-1]:.2f}s, naive {t_naive[-1]:.2f}s", flush=True)

    best = {k: max(v) for k, v in tput.items()}
    print(f"\n(c) forward throughput of one model, images/s (best of {args.repeats} rounds, {window:.1f}s windows)")
    print(f"{'batch':>7} {'NCHW':>10} {'channels_last':>14}")
    for bs in batches:
        print(f"{bs:>7} {best[(bs, False)]:>10.0f} {best[(bs, True)]:>14.0f}")
    (best_bs, best_cl), best_tp = max(best.items(), key=lambda kv: kv[1])
    print(f"best: batch {best_bs}, {'channels_last' if best_cl else 'NCHW'}, {best_tp:.0f} images/s")

    tb = 2 * n_fwd / best_tp
    ta, tn = min(t_audit), min(t_naive)
    bs_used = args.batch_size or default_batch_size("cpu")
    print(f"\n(a)/(b) gaussian audit, {2 * n_fwd:,} forward passes nominal ({res.timing.forward_passes:,} run, "
          f"tau = 0 shortcut); audit batch {bs_used}; best of {args.repeats} rounds")
    print(f"{'':<46}{'seconds':>9}{'x bare':>9}  target")
    print(f"{'bare: nominal forwards at best throughput':<46}{tb:>9.2f}{1.0:>9.2f}")
    print(f"{'rurk audit (incl. bootstrap B=1000)':<46}{ta:>9.2f}{ta / tb:>9.2f}  <= 1.25")
    print(f"{'naive paper loop (batch 128, NCHW)':<46}{tn:>9.2f}{tn / tb:>9.2f}")
    print(f"{'speed-up: naive / audit':<46}{'':>9}{tn / ta:>9.2f}  >= 3")
    s = res.stats(0.03)
    print(f"\nsanity: tau={s.tau:.4f} acc_m={s.acc_m:.3f} acc_a={s.acc_a:.3f} r_pooled={s.r_pooled}")


if __name__ == "__main__":
    main()
