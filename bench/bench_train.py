"""Training-loop throughput: rurk.train.fit against the best plain training loop on the same model. Prints tables;
asserts nothing.

    .venv/bin/python bench/bench_train.py --threads 1            # ~1 min of CPU time
    .venv/bin/python bench/bench_train.py --threads 1 --quick
    .venv/bin/python bench/bench_train.py --resnet18             # adds ResNet-18 on synthetic 3x32x32 (slow on CPU)

Model kinds: rurk's SmallCNN (``build_model("smallcnn", 10, (1, 28, 28))``) and a user-style plain
``nn.Sequential`` defined here, on fmnist-sized random inputs held in memory.

**Bare** is a plain loop: per epoch ``randperm``, index the preloaded tensor, forward, cross-entropy,
``zero_grad``, backward, SGD step (momentum 0.9) -- swept over batch size {64, 128, 256, 512} x NCHW /
channels_last (model and data). Every configuration is timed in ``--sweep-rounds`` interleaved rounds and the
fastest per image wins. Then ``--repeats`` interleaved rounds time, on the same number of images,

* ``fit @ winner``: ``fit`` at the sweep winner's batch size vs the bare loop at the winner (like for like), and
* ``fit @ recipe``: ``fit`` at ``--batch-size`` (default 128, the recipes' usual size) vs the best bare layout at
  that batch size.

The batch size is part of a training recipe (it changes the number of steps), so only the like-for-like rows
are a fair target: fit / bare <= 1.15 (time). ``--clock cpu`` (default) times the process's CPU time, which with
one thread ignores other jobs on the machine; ``--clock wall`` times wall clock.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from rurk.threads import configure_threads
from rurk.data import TensorData
from rurk.models import build_model
from rurk.train import OptimConfig, fit

CL = torch.channels_last
SWEEP_BATCHES = (64, 128, 256, 512)


def user_cnn(classes: int = 10) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, classes),
    )


KINDS = {
    "rurk SmallCNN": (lambda: build_model("smallcnn", 10, (1, 28, 28)), (1, 28, 28)),
    "user Sequential": (user_cnn, (1, 28, 28)),
    "rurk ResNet-18": (lambda: build_model("resnet18", 10, (3, 32, 32)), (3, 32, 32)),
}


def bare(model, x, y, bs: int, epochs: int, lr: float = 0.01) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    model.train()
    n = x.shape[0]
    for _ in range(epochs):
        perm = torch.randperm(n)
        for i in range(0, n, bs):
            rows = perm[i : i + bs]
            loss = F.cross_entropy(model(x[rows]), y[rows])
            opt.zero_grad()
            loss.backward()
            opt.step()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer images and rounds")
    ap.add_argument("--n", type=int, default=None, help="training images (default 2048; quick 1024)")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=128, help="the recipe batch size of the second row")
    ap.add_argument("--repeats", type=int, default=None, help="interleaved fit/bare rounds (default 3; quick 2)")
    ap.add_argument("--sweep-rounds", type=int, default=None, help="rounds of the bare sweep (default 2; quick 1)")
    ap.add_argument("--sweep-images", type=int, default=None, help="images per sweep measurement (default 1024; quick 512)")
    ap.add_argument("--resnet18", action="store_true", help="also ResNet-18 on 3x32x32 (n / 16 images)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: rurk.threads.configure_threads())")
    ap.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    args = ap.parse_args(argv)
    threads = configure_threads(args.threads)
    q = args.quick
    n_imgs = args.n or (1024 if q else 2048)
    repeats = args.repeats or (2 if q else 3)
    sweep_rounds = args.sweep_rounds or (1 if q else 2)
    sweep_images = args.sweep_images or (512 if q else 1024)
    now = time.process_time if args.clock == "cpu" else time.perf_counter
    other_now = time.perf_counter if args.clock == "cpu" else time.process_time
    kinds = ["rurk SmallCNN", "user Sequential"] + (["rurk ResNet-18"] if args.resnet18 else [])
    t_start = time.perf_counter()
    print(f"torch {torch.__version__}, {threads} thread(s), clock: {args.clock}; {n_imgs} images x {args.epochs} epoch(s)")
    rows = []
    for kind in kinds:
        make, shape = KINDS[kind]
        n = n_imgs if "ResNet" not in kind else max(256, n_imgs // 16)
        g = torch.Generator().manual_seed(0)
        x = torch.rand(n, *shape, generator=g)
        y = torch.randint(0, 10, (n,), generator=g)
        data_in = {False: x.contiguous(), True: x.contiguous(memory_format=CL)}
        torch.manual_seed(0)
        init = make()

        def run_bare(bs, cl, images=None):
            """The plain loop on a fresh copy: ``args.epochs`` epochs over all n images, or (``images`` given) one
            pass over the first ``images`` (a sweep measurement)."""
            m = copy.deepcopy(init)
            if cl:
                m = m.to(memory_format=CL)
            if images is None:
                bare(m, data_in[cl], y, bs, args.epochs)
            else:
                bare(m, data_in[cl][:images], y[:images], bs, 1)

        def run_fit(bs):
            m = copy.deepcopy(init)
            fit(m, TensorData(x, y, torch.arange(n)), OptimConfig(lr=0.01, batch_size=bs, epochs=args.epochs), 0,
                progress=False)

        # (1) sweep
        configs = [(bs, cl) for bs in SWEEP_BATCHES for cl in (False, True)]
        per_img = {cfg: [] for cfg in configs}
        work = min(sweep_images, n)
        for cfg in configs:
            run_bare(cfg[0], cfg[1], min(cfg[0], n))  # warm-up at the batch shape
        for _ in range(sweep_rounds):
            for cfg in configs:
                t0 = now()
                run_bare(cfg[0], cfg[1], work)
                per_img[cfg].append((now() - t0) / work)
        best = min(configs, key=lambda k: min(per_img[k]))
        recipe_cl = min((False, True), key=lambda cl: min(per_img.get((args.batch_size, cl), [float("inf")])))
        pairs = [("fit @ winner", best[0], best), ("fit @ recipe", args.batch_size, (args.batch_size, recipe_cl))]
        if best[0] == args.batch_size:
            pairs = pairs[:1]
        # (2) interleaved rounds
        for bs in {p[1] for p in pairs}:
            run_fit(bs)  # warm-up
        times = {p[0]: ([], [], [], []) for p in pairs}  # fit, bare, fit other clock, bare other clock
        for r in range(repeats):
            for label, bs, cfg in pairs:
                order = (0, 1) if r % 2 == 0 else (1, 0)
                for which in order:
                    t0, o0 = now(), other_now()
                    run_fit(bs) if which == 0 else run_bare(cfg[0], cfg[1])
                    times[label][which].append(now() - t0)
                    times[label][which + 2].append(other_now() - o0)
        for label, bs, cfg in pairs:
            tf, tb, of, ob = times[label]
            rows.append(dict(kind=kind, label=label, bs=bs, cfg=cfg, fit=min(tf), bare=min(tb), n=n * args.epochs,
                             ratio=min(tf) / min(tb), median=statistics.median(a / b for a, b in zip(tf, tb)),
                             other=min(of) / min(ob)))
        print(f"\n{kind}: bare sweep, {args.clock} seconds per image (best of {sweep_rounds}; * = winner)")
        for cfg in configs:
            star = "*" if cfg == best else " "
            print(f"  {star} batch {cfg[0]:>4}, {'channels_last' if cfg[1] else 'NCHW':<14} {min(per_img[cfg]) * 1e6:9.1f} us")

    other = "wall" if args.clock == "cpu" else "cpu"
    print(f"\nfit vs bare, best of {repeats} interleaved rounds ({args.clock} time); target fit / bare <= 1.15 (like for like)")
    print(f"{'model':<16} {'row':<13} {'batch':>5}  {'bare config':<28} {'fit img/s':>10} {'bare img/s':>10} "
          f"{'fit/bare':>8} {'median':>7} {other:>6}")
    for r in rows:
        cfg = f"batch {r['cfg'][0]}, {'channels_last' if r['cfg'][1] else 'NCHW'}"
        print(f"{r['kind']:<16} {r['label']:<13} {r['bs']:>5}  {cfg:<28} {r['n'] / r['fit']:>10.0f} "
              f"{r['n'] / r['bare']:>10.0f} {r['ratio']:>8.3f} {r['median']:>7.3f} {r['other']:>6.3f}")
    print(f"\ntotal {time.perf_counter() - t_start:.0f}s wall")


if __name__ == "__main__":
    main()
