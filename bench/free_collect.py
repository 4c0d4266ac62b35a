"""Collect what a Re-train-free estimate could use, per (forget set, seed) cell (a measurement; asserts nothing).

For every cell it trains (or reuses from the store) Original and Re-train, and "mini" references: the same
architecture and recipe at ``--mini-epochs`` epochs (cosine schedule over them), on S (mini Original) and on S_r
(mini Re-train). It then counts, per image, how many of its perturbed copies each model classifies correctly, on
the forget set and on the calibration set, at every τ of the audit grid (Gaussian probe, fixed noise shared by
every model), and saves the counts to ``OUT/split-K-seed-S.npz`` for offline analysis (``bench/free_estimate.py``).

    .venv/bin/python bench/free_collect.py --store runs-free --splits 1,2,3 --seeds 1 --out runs-free/counts
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("RURK_PROGRESS", "0")

from rurk.config import load_scenario  # noqa: E402
from rurk.perturb import make_probe  # noqa: E402
from rurk.pipeline import prepare, reference_models  # noqa: E402
from rurk.store import Store  # noqa: E402
from rurk.torchutil import make_generator, predict  # noqa: E402


def counts(model, x, y, taus, draws, seed, tag) -> np.ndarray:
    """(len(taus), len(x)) correct-copy counts: ``draws`` Gaussian copies per image, the same noise at every τ."""
    probe = make_probe("gaussian")
    out = np.zeros((len(taus), len(x)), dtype=np.int16)
    g = make_generator(seed, f"free-{tag}", "cpu")
    noise = probe.noise((draws, *x.shape), g, x.device, x.dtype)  # unit noise, shared by every τ and model
    for t, tau in enumerate(taus):
        if tau == 0:
            out[t] = draws * (predict(model, x).argmax(1) == y).numpy()
            continue
        xs = (x.unsqueeze(0) + tau * noise).clamp(0, 1).reshape(-1, *x.shape[1:])
        right = (predict(model, xs).argmax(1) == y.repeat(draws)).reshape(draws, len(x))
        out[t] = right.sum(0).numpy()
    return out


def extra_models(spec: str, scenario, store, split, seed, refs, prepared) -> dict:
    """The candidate proxies named in ``spec`` (comma-separated): ``mini:E`` (mini Original and mini Re-train at E
    epochs) or a method name (that method's unlearned model, e.g. ``euk``)."""
    from rurk.run.experiment import method_config
    from rurk.methods.base import unlearn
    from rurk.run.tuned import with_tuned

    models = {}
    for item in filter(None, spec.split(",")):
        if item.startswith("mini:"):
            e = int(item[5:])
            mini = load_scenario(args_scenario, {"seeds": {"split": split}, "train": {"epochs": e}})
            r = reference_models(mini, prepare(mini, store), seed, store, device="cpu", progress=False)
            models[f"mini_o{e}"], models[f"mini_r{e}"] = r.original, r.retrain
        else:
            cfg = method_config(with_tuned(scenario), item)
            models[item] = unlearn(item, refs.original, prepared.unlearn_data(), seed, cfg=cfg)[0].eval()
    return models


args_scenario = "fmnist5"


def main() -> None:
    global args_scenario
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", default="runs-free")
    ap.add_argument("--scenario", default="fmnist5")
    ap.add_argument("--splits", default="1,2,3")
    ap.add_argument("--seeds", default="1")
    ap.add_argument("--models", default="mini:6", help="proxies: mini:E (mini references at E epochs), METHOD")
    ap.add_argument("--draws", type=int, default=32, help="copies per forget image (calibration: a quarter)")
    ap.add_argument("--out", default="runs-free/counts")
    args = ap.parse_args()
    args_scenario = args.scenario
    torch.set_num_threads(1)
    store, out = Store(args.store), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for split in map(int, args.splits.split(",")):
        for seed in map(int, args.seeds.split(",")):
            path = out / f"split-{split}-seed-{seed}.npz"
            data = dict(np.load(path)) if path.exists() else {}
            t0 = time.time()
            scenario = load_scenario(args.scenario, {"seeds": {"split": split}})
            prepared = prepare(scenario, store)
            d = prepared.data
            refs = reference_models(scenario, prepared, seed, store, device="cpu", progress=False)
            models = {"original": refs.original, "retrain": refs.retrain,
                      **extra_models(args.models, scenario, store, split, seed, refs, prepared)}
            taus = list(scenario.audit.taus)
            data.update({"taus": np.array(taus), "retain_y": d.retain.y.numpy(), "forget_y": d.forget.y.numpy(),
                         "calib_y": d.calib.y.numpy(), "train_y": d.train.y.numpy(),
                         "draws": np.array([args.draws, args.draws // 4])})
            new = [n for n in models if f"{n}/forget" not in data]
            for name in new:
                m = models[name]
                data[f"{name}/forget"] = counts(m, d.forget.x, d.forget.y, taus, args.draws, seed, "forget")
                data[f"{name}/calib"] = counts(m, d.calib.x, d.calib.y, taus, args.draws // 4, seed, "calib")
            if new:
                np.savez_compressed(path, **data)
            print(f"split {split} seed {seed}: {', '.join(new) or 'nothing new'} in {time.time() - t0:.0f} s",
                  flush=True)


if __name__ == "__main__":
    main()
