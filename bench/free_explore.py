"""Explore candidate Re-train-free estimates on the counts of bench/free_collect.py (a measurement; asserts nothing).

Prints, per τ, each candidate's mean absolute error (and bias) against Re-train's accuracy on the perturbed forget
copies, in points, over the cells in the counts folder.
"""

from __future__ import annotations

import argparse
import glob
import re

import numpy as np


def load(folder):
    cells = []
    for path in sorted(glob.glob(f"{folder}/split-*-seed-*.npz")):
        split, seed = map(int, re.findall(r"split-(\d+)-seed-(\d+)", path)[0])
        z = dict(np.load(path))
        cells.append((split, seed, z))
    return cells


def acc(z, name, which, cls=0):
    c = z[f"{name}/{which}"]
    y = z[f"{which}_y"]
    draws = z["draws"][0 if which == "forget" else 1]
    return c[:, y == cls].mean(1) / draws


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--counts", default="runs-free/counts")
    ap.add_argument("--mini", default="6")
    args = ap.parse_args()
    cells = load(args.counts)
    taus = cells[0][2]["taus"]
    e = args.mini
    results = {}
    for split, seed, z in cells:
        n_tr = (z["train_y"] == 0).sum()
        n_re = (z["retain_y"] == 0).sum()
        kappa = np.sqrt(n_tr / n_re)
        truth = acc(z, "retrain", "forget")
        o_c = acc(z, "original", "calib")
        r_c = acc(z, "retrain", "calib")
        mo_c, mr_c, mr_f = acc(z, f"mini_o{e}", "calib"), acc(z, f"mini_r{e}", "calib"), acc(z, f"mini_r{e}", "forget")
        mo_f = acc(z, f"mini_o{e}", "forget")
        cand = {
            "plain": o_c,
            "kappa": 1 - kappa * (1 - o_c),
            "oracle calib": r_c,
            "oracle calib + mini diff": r_c + (mr_f - mr_c),
            "kappa + mini diff": 1 - kappa * (1 - o_c) + (mr_f - mr_c),
            "kappa + .65 mini diff": 1 - kappa * (1 - o_c) + 0.65 * (mr_f - mr_c),
            "o + mini lc": o_c + (mr_c - mo_c),
            "o + mini lc + diff": o_c + (mr_c - mo_c) + (mr_f - mr_c),
            "o·ratio lc + diff": 1 - (1 - o_c) * (1 - mr_c) / np.maximum(1 - mo_c, 1e-3) + (mr_f - mr_c),
            "mini_r forget": mr_f,
            "kappa ratio diff": 1 - kappa * (1 - o_c) * (1 - mr_f) / np.maximum(1 - mr_c, 1e-3),
        }
        for k, v in cand.items():
            results.setdefault(k, []).append(100 * (np.clip(v, 0, 1) - truth))
        results.setdefault("_truth", []).append(100 * truth)
        results.setdefault("_rt_f-c", []).append(100 * (truth - r_c))
        results.setdefault("_mini_f-c", []).append(100 * (mr_f - mr_c))
    print(f"{len(cells)} cells; mini epochs {e}; error in points (estimate − Re-train), mean |·| (bias)")
    print("| candidate | " + " | ".join(f"τ={t:g}" for t in taus) + " |")
    print("|---" * (len(taus) + 1) + "|")
    for k, v in results.items():
        a = np.array(v)
        if k.startswith("_"):
            print(f"| {k} | " + " | ".join(f"{m:.1f}" for m in a.mean(0)) + " |")
            continue
        print(f"| {k} | " + " | ".join(f"{m:.1f} ({b:+.1f})" for m, b in zip(np.abs(a).mean(0), a.mean(0))) + " |")
    rt, mn = np.array(results["_rt_f-c"]), np.array(results["_mini_f-c"])
    print("corr(Re-train f−c, mini f−c) per τ: " + ", ".join(
        f"{np.corrcoef(rt[:, i], mn[:, i])[0, 1]:.2f}" for i in range(len(taus))))


if __name__ == "__main__":
    main()
