"""Pooling before the ReLU: SmallCNN's training step and forward pass with each stage's max-pool before its ReLU
(rurk's order, the same function and gradients) against the usual ReLU-then-pool order
(:func:`rurk.models.cnn.textbook_order`), channels_last as rurk runs them. Interleaved rounds in one process,
process CPU time, one thread by default; prints the minimum and the median per image. Asserts nothing.

    .venv/bin/python bench/bench_layer_order.py            # ~1 min
    .venv/bin/python bench/bench_layer_order.py --rounds 5
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from rurk.models import build_model
from rurk.models.cnn import textbook_order
from rurk.threads import configure_threads


def per_image_us(fn, key: str, images: int) -> float:
    t = time.process_time()
    fn(key)
    return (time.process_time() - t) / images * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=15, help="interleaved rounds [default: 15]")
    ap.add_argument("--threads", type=int, default=1, help="torch threads [default: 1]")
    a = ap.parse_args()
    configure_threads(a.threads)
    torch.manual_seed(0)
    ours = build_model("smallcnn", 5, (1, 28, 28)).to(memory_format=torch.channels_last)
    models = {"pool, then ReLU (rurk)": ours, "ReLU, then pool": textbook_order(ours)}
    opts = {k: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9) for k, m in models.items()}
    x = {b: torch.rand(b, 1, 28, 28).contiguous(memory_format=torch.channels_last) for b in (64, 128, 512)}
    y = torch.randint(0, 5, (128,))

    def train(k: str, steps: int = 10):
        m, opt = models[k].train(), opts[k]
        for _ in range(steps):
            opt.zero_grad()
            F.cross_entropy(m(x[128]), y).backward()
            opt.step()

    def forward(k: str, b: int):
        with torch.inference_mode():
            for _ in range(max(1, 1024 // b)):
                models[k].eval()(x[b])

    cases = [("training step, batch 128", train, 1280)]
    cases += [(f"forward, batch {b}", lambda k, b=b: forward(k, b), max(1, 1024 // b) * b) for b in (64, 128, 512)]
    times: dict[tuple[str, str], list[float]] = {}
    for _ in range(a.rounds):
        for case, fn, images in cases:
            for k in models:
                times.setdefault((case, k), []).append(per_image_us(fn, k, images))
    print(f"{a.rounds} interleaved rounds, {a.threads} thread(s), CPU time per image (µs), min / median\n")
    print("| case | " + " | ".join(models) + " | ours ÷ usual (min) |\n|---|---|---|---|")
    for case, _, _ in cases:
        v = [times[(case, k)] for k in models]
        cells = [f"{min(t):.1f} / {statistics.median(t):.1f}" for t in v]
        print(f"| {case} | " + " | ".join(cells) + f" | {min(v[0]) / min(v[1]):.2f} |")


if __name__ == "__main__":
    main()
