"""Training-loop throughput vs a bare forward+backward+step loop on the same preloaded tensors.

    .venv/bin/python bench/bench_train.py [--quick]

Target (issue: foundation): rurk.train.fit / bare >= 0.85 for SmallCNN on fmnist-sized inputs and for
ResNet-18 on synthetic 32x32. Prints a table; asserts nothing.
"""

import argparse
import time

import torch
import torch.nn.functional as F

from rurk.data import TensorData
from rurk.models import build_model
from rurk.train import OptimConfig, fit, prepare_model


def bare(model, x, y, cfg, epochs):
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum)
    model.train()
    n = x.shape[0]
    t0 = time.perf_counter()
    for _ in range(epochs):
        perm = torch.randperm(n)
        for i in range(0, n, cfg.batch_size):
            rows = perm[i : i + cfg.batch_size]
            loss = F.cross_entropy(model(x[rows]), y[rows])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    cases = [("smallcnn", (1, 28, 28), 2048 if args.quick else 4096, 128, 3),
             ("resnet18", (3, 32, 32), 64 if args.quick else 128, 32, 2)]
    print(f"{'model':10s} {'n':>6s} {'bare img/s':>11s} {'fit img/s':>10s} {'ratio':>6s}")
    for arch, shape, n, bs, epochs in cases:
        g = torch.Generator().manual_seed(0)
        x = torch.rand(n, *shape, generator=g).contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 10, (n,), generator=g)
        cfg = OptimConfig(lr=0.01, batch_size=bs, epochs=epochs)
        torch.manual_seed(0)
        m1 = prepare_model(build_model(arch, 10, shape))
        bare(m1, x[:bs * 2], y[:bs * 2], cfg, 1)  # warm-up
        t_bare = bare(m1, x, y, cfg, epochs)
        torch.manual_seed(0)
        m2 = build_model(arch, 10, shape)
        fit(m2, TensorData(x, y, torch.arange(n)), OptimConfig(lr=0.01, batch_size=bs, epochs=1, max_steps=2), 0, progress=False)
        t0 = time.perf_counter()
        fit(m2, TensorData(x, y, torch.arange(n)), cfg, 0, progress=False)
        t_fit = time.perf_counter() - t0
        ips_bare, ips_fit = n * epochs / t_bare, n * epochs / t_fit
        print(f"{arch:10s} {n:6d} {ips_bare:11.0f} {ips_fit:10.0f} {ips_fit / ips_bare:6.2f}")


if __name__ == "__main__":
    main()
