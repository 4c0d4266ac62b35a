"""Benchmark the second-order baselines on an fmnist5-sized problem and print a table.

- Fisher diagonal (true Fisher, C = 5) on 900 retain samples of 1x28x28 with the SmallCNN (P ~ 0.42 M):
  the per-sample-gradient version (``torch.func``; also without the factored-Linear and im2col tricks, and the
  one-class Monte-Carlo variant) against a batch-size-1 loop (one forward, C ``autograd.grad`` calls per sample).
  The loop is timed on a subset (``--loop-samples``) and extrapolated linearly to 900 samples (stated in the
  table); both are checked to agree on that subset.
- NTK forgetting, variant ``full`` (900 retain + 100 forget, C = 5, the same SmallCNN) and ``last_layer``.

Random data and a randomly initialised SmallCNN (the cost does not depend on the weights). The machine's load
matters a lot: with 2 intra-op threads on 2 busy cores the loop's many tiny parallel ops collapse (we measured
8 ms to 800 ms per sample for the same loop), while the batched version degrades far less; so the speed-up
ranges from a few x (1 thread, quiet machine: the loop is then within ~5x of the FLOP bound) to 20-50x
(2 threads, loaded machine). Run it both ways (``--threads 1``). The best of ``--repeats`` runs is kept.

    .venv/bin/python bench/bench_fisher.py [--retain 900] [--forget 100] [--loop-samples 45] [--skip-ntk]
                                           [--threads N]
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from rurk.data.tensordata import TensorData
from rurk.methods.base import UnlearnData, unlearn
from rurk.methods.fisher import fisher_diagonal, fisher_diagonal_loop


def smallcnn(num_classes: int):
    try:
        from rurk.models import build_model

        return build_model("smallcnn", num_classes, (1, 28, 28))
    except ImportError:  # models package not available: the same architecture, Classifier-shaped
        from torch import nn

        class SmallCNN(nn.Module):
            def __init__(self):
                super().__init__()
                self.norm = nn.Identity()
                self.body = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                          nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                                          nn.Linear(64 * 7 * 7, 128), nn.ReLU())
                self.head = nn.Linear(128, num_classes)

            def features(self, x):
                return self.body(self.norm(x))

            def forward(self, x):
                return self.head(self.features(x))

        return SmallCNN()


def best_of(fn, repeats: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--retain", type=int, default=900)
    ap.add_argument("--forget", type=int, default=100)
    ap.add_argument("--classes", type=int, default=5)
    ap.add_argument("--loop-samples", type=int, default=45)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--skip-ntk", action="store_true")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    c = args.classes
    model = smallcnn(c).eval()
    p = sum(q.numel() for q in model.parameters())
    x_r = torch.rand(args.retain, 1, 28, 28)
    y_r = torch.randint(0, c, (args.retain,))
    x_f = torch.rand(args.forget, 1, 28, 28)
    y_f = torch.randint(0, c, (args.forget,))
    rows: list[tuple[str, str, str]] = []
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average "
          f"{os.getloadavg()[0]:.1f}; SmallCNN P = {p:,}, C = {c}")

    # ---- Fisher
    k = args.loop_samples
    t_loop, f_loop = best_of(lambda: fisher_diagonal_loop(model, x_r[:k]), args.repeats)
    f_sub = fisher_diagonal(model, x_r[:k])
    err = max(float(((f_sub[n] - f_loop[n]).abs().max() / f_loop[n].abs().max().clamp_min(1e-30))) for n in f_loop)
    loop_full = t_loop / k * args.retain
    t_fast, _ = best_of(lambda: fisher_diagonal(model, x_r), args.repeats)
    t_plain, _ = best_of(lambda: fisher_diagonal(model, x_r, factor_linear=False, im2col=False), 1)
    t_mc, _ = best_of(lambda: fisher_diagonal(model, x_r, mc=True, generator=torch.Generator().manual_seed(0)),
                      args.repeats)
    n = args.retain
    rows += [
        ("Fisher: batch-size-1 loop", f"{loop_full:.1f} s (extrapolated)",
         f"timed {t_loop:.2f} s on {k} samples x {n / k:.0f}"),
        ("Fisher: per-sample (torch.func)", f"{t_fast:.1f} s", f"{loop_full / t_fast:.1f}x faster than the loop; "
                                                             f"max rel. diff to loop {err:.1e}"),
        ("Fisher: per-sample, no factoring/im2col", f"{t_plain:.1f} s", f"{loop_full / t_plain:.1f}x (plain vmap)"),
        ("Fisher: Monte-Carlo (fisher_mc=True)", f"{t_mc:.1f} s", f"{loop_full / t_mc:.1f}x"),
    ]

    # ---- NTK
    if not args.skip_ntk:
        data = UnlearnData(TensorData(x_r, y_r, torch.arange(n)),
                           TensorData(x_f, y_f, torch.arange(n, n + args.forget)), c)
        t0 = time.perf_counter()
        _, rec = unlearn("ntk", model, data, 0)
        t_full = time.perf_counter() - t0
        ex = rec.extra
        rows.append((f"NTK full (N = {ex['n']}, N*C = {ex['n'] * c})", f"{t_full:.1f} s",
                     f"kernel {ex['kernel_s']:.1f} s, solve {ex['solve_s']:.1f} s, VJPs {ex['vjp_s']:.1f} s; "
                     f"est. peak {ex['memory_estimate_gb']:.2f} GiB; "
                     f"Jacobian passes {ex['jacobian_sample_passes']:.1f}"))
        t0 = time.perf_counter()
        _, rec = unlearn("ntk", model, data, 0, overrides={"variant": "last_layer"})
        rows.append(("NTK last_layer", f"{time.perf_counter() - t0:.2f} s", f"solve form {rec.extra['solve_form']}"))

    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    print(f"\n{'what':<{w0}}  {'time':<{w1}}  notes")
    print("-" * (w0 + w1 + 60))
    for a, b, note in rows:
        print(f"{a:<{w0}}  {b:<{w1}}  {note}")


if __name__ == "__main__":
    main()
