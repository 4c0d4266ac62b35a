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
        cells.append((split, seed, dict(np.load(path))))
    return cells


def acc(z, name, which, cls=0):
    c = z[f"{name}/{which}"]
    y = z[f"{which}_y"]
    draws = z["draws"][0 if which == "forget" else 1]
    return c[:, y == cls].mean(1) / draws


def table(results, taus, title):
    print(f"\n{title}\n| candidate | " + " | ".join(f"τ={t:g}" for t in taus) + " |")
    print("|---" * (len(taus) + 1) + "|")
    for k, v in results.items():
        a = np.array(v)
        print(f"| {k} | " + " | ".join(f"{m:.1f} ({b:+.1f})" for m, b in zip(np.abs(a).mean(0), a.mean(0))) + " |")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--counts", default="runs-free/counts")
    ap.add_argument("--proxies", default="mini_r6,mini_r12,mini_r20,euk")
    args = ap.parse_args()
    cells = load(args.counts)
    taus = cells[0][2]["taus"]
    proxies = [p for p in args.proxies.split(",") if all(f"{p}/forget" in z for *_, z in cells)]
    results, diffs = {}, {}
    for split, seed, z in cells:
        kappa = np.sqrt((z["train_y"] == 0).sum() / (z["retain_y"] == 0).sum())
        truth = acc(z, "retrain", "forget")
        o_c, r_c = acc(z, "original", "calib"), acc(z, "retrain", "calib")
        level = 1 - kappa * (1 - o_c)
        add = lambda k, v: results.setdefault(k, []).append(100 * (np.clip(v, 0, 1) - truth))  # noqa: E731
        add("plain", o_c)
        add("kappa", level)
        add("oracle calib (Re-train's own)", r_c)
        diffs.setdefault("Re-train", []).append(truth - r_c)
        for p in proxies:
            pf, pc = acc(z, p, "forget"), acc(z, p, "calib")
            diffs.setdefault(p, []).append(pf - pc)
            add(f"kappa + {p} diff", level + (pf - pc))
            add(f"oracle calib + {p} diff", r_c + (pf - pc))
            add(f"kappa × {p} err ratio", 1 - kappa * (1 - o_c) * (1 - pf) / np.maximum(1 - pc, 1e-3))
        if len(proxies) > 1:
            mean_diff = np.mean([acc(z, p, "forget") - acc(z, p, "calib") for p in proxies], 0)
            add("kappa + mean proxy diff", level + mean_diff)
    print(f"{len(cells)} cells ({', '.join(f'{s}/{d}' for s, d, _ in cells)}); error in points (estimate − "
          "Re-train's forget accuracy): mean |·| (bias)")
    table(results, taus, "Candidates")
    rt = np.array(diffs["Re-train"])
    print("\nRe-train's (forget − calibration) accuracy against each proxy's: correlation; LS slope through 0")
    for p in proxies:
        px = np.array(diffs[p])
        print(f"  {p}: " + ", ".join(f"τ={t:g}: {np.corrcoef(rt[:, i], px[:, i])[0, 1]:.2f}; "
                                      f"{(rt[:, i] @ px[:, i]) / (px[:, i] @ px[:, i]):.2f}"
                                      for i, t in enumerate(taus)))
    print("  Re-train f−c, mean |·| (points): " + ", ".join(f"{100 * np.abs(rt[:, i]).mean():.1f}" for i in range(len(taus))))


if __name__ == "__main__":
    main()
