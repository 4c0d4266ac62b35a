"""Files and report sections of the attack curves and leak galleries (`rurk run` and `rurk audit`).

Inputs are per-seed dicts ``[(seed, {row name: curve JSON}), ...]`` of :func:`rurk.audit.attacks.relearn_curve` or
:func:`rurk.audit.attacks.robust_curves`; curves are averaged over seeds (mean ± std, ddof 0) for the plots and tables.

- ``relearn_curve.csv``: ``method, seed, step, forget_acc, n_attack, n_heldout`` (accuracy on the held-out part of
  S_f after ``step`` fine-tuning steps on the attacker's part); ``relearn_curve.png``: one line per row.
- ``robust.csv``: ``method, seed, set, attack, eps, n, accuracy``; ``robust.png``: a panel per (attack, set), one
  line per row (the unlearned models and Re-train side by side).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from ..figures import agg_figure, line_style, save_png
from .tables import markdown, write_csv

PerSeed = list[tuple[int, dict[str, dict]]]
RELEARN_TABLE_STEPS = (0, 1, 2, 5, 10, 20)
ATTACKS = ("untargeted", "targeted")


def _mean_std(curves: list[list]) -> tuple[np.ndarray, np.ndarray]:
    a = np.array([[np.nan if v is None else v for v in c] for c in curves], dtype=float)
    with warnings.catch_warnings():  # all-NaN columns (a diverged step on every seed) stay NaN, silently
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(a, 0), np.nanstd(a, 0)


def _rows_of(per_seed: PerSeed) -> list[str]:
    names: list[str] = []
    for _, curves in per_seed:
        names += [n for n in curves if n not in names]
    return names


def _pct(m: float, s: float, n_seeds: int) -> str:
    if not np.isfinite(m):
        return "–"
    return f"{100 * m:.1f}" + (f" ± {100 * s:.1f}" if n_seeds > 1 else "")


def _eps_label(e: float) -> str:
    return "0" if e == 0 else f"{255 * e:.3g}/255"


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_csv(path, header, [["" if v is None else v for v in r] for r in rows])


# ---------------------------------------------------------------------------------------------- relearning
def write_relearn(per_seed: PerSeed, out_dir, title: str = "") -> list[str]:
    """Write ``relearn_curve.csv`` and ``.png`` under ``out_dir``; return the report section."""
    out_dir = Path(out_dir)
    names = _rows_of(per_seed)
    rows = [[name, seed, s, acc, c["n_attack"], c["n_heldout"]] for seed, curves in per_seed
            for name, c in curves.items() for s, acc in zip(c["steps"], c["forget_acc"])]
    _write_csv(out_dir / "relearn_curve.csv", ["method", "seed", "step", "forget_acc", "n_attack", "n_heldout"], rows)
    stats = {n: _mean_std([c[n]["forget_acc"] for _, c in per_seed if n in c]) for n in names}
    steps = next(c["steps"] for _, curves in per_seed for c in curves.values())
    fig = agg_figure(7.5, 4.2, constrained_layout=True)
    ax = fig.subplots()
    for i, (name, (m, _)) in enumerate(stats.items()):
        ax.plot(steps, 100 * m, ms=4, label=name, **line_style(i))
    ax.set_ylim(-3, 103)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("fine-tuning steps on the attacker's part of S_f")
    ax.set_ylabel("accuracy on the rest of S_f (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    ax.set_title(title or "relearning attack", fontsize=10)
    save_png(fig, out_dir / "relearn_curve.png")
    first = next(c for _, curves in per_seed for c in curves.values())
    cfg, st = first["relearn"], first["settings"]
    shown = [s for s in RELEARN_TABLE_STEPS if s < len(steps)] or [0]
    n_seeds = len(per_seed)
    return ["## Relearning attack", "",
            f"Accuracy (%) on the held-out {first['n_heldout']} samples of S_f after s SGD steps on the other "
            f"{first['n_attack']} ({100 * st['fraction']:.0f}%, seeded; lr {cfg['lr']}, momentum {cfg['momentum']}, "
            f"batch {cfg['batch_size']}). The paper's re-learn time is one point on such a curve (loss back to 1.05 × "
            "Original's, fine-tuning on all of S_f). Table: relearn_curve.csv.", "",
            "![relearning attack](relearn_curve.png)", "",
            markdown(["method", *[f"step {s}" for s in shown]],
                   [[n, *[_pct(m[s], sd[s], n_seeds) for s in shown]] for n, (m, sd) in stats.items()]), ""]


# ---------------------------------------------------------------------------------------------- robust accuracy
def write_robust(per_seed: PerSeed, out_dir, title: str = "", stem: str = "robust") -> list[str]:
    """Write ``<stem>.csv`` and ``<stem>.png`` under ``out_dir``; return the report section."""
    out_dir = Path(out_dir)
    names = _rows_of(per_seed)
    first = next(c for _, curves in per_seed for c in curves.values())
    eps, sets = first["eps"], list(first["sets"])
    rows = [[name, seed, s, att, e, c["sets"][s]["n"], acc] for seed, curves in per_seed for name, c in curves.items()
            for s in c["sets"] for att in ATTACKS for e, acc in zip(c["eps"], c["sets"][s][att])]
    _write_csv(out_dir / f"{stem}.csv", ["method", "seed", "set", "attack", "eps", "n", "accuracy"], rows)
    stats = {(n, s, att): _mean_std([c[n]["sets"][s][att] for _, c in per_seed if n in c])
             for n in names for s in sets for att in ATTACKS}
    fig = agg_figure(3.6 * len(sets) + 1.8, 6.4, constrained_layout=True)
    axes = np.atleast_2d(fig.subplots(len(ATTACKS), len(sets), sharex=True, sharey=True, squeeze=False))
    for r, att in enumerate(ATTACKS):
        for col, s in enumerate(sets):
            ax = axes[r, col]
            for i, n in enumerate(names):
                ax.plot(eps, 100 * stats[(n, s, att)][0], ms=4, label=n, **line_style(i))
            ax.set_title(f"{s}, {att} PGD", fontsize=9)
            ax.set_ylim(-3, 103)
            ax.set_xticks(eps, [_eps_label(e) for e in eps], fontsize=7)
            ax.grid(alpha=0.3)
        axes[r, 0].set_ylabel("accuracy (%)")
    axes[-1, -1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 1.0))
    if title:
        fig.suptitle(title, fontsize=10)
    save_png(fig, out_dir / f"{stem}.png")
    st, n_seeds = first["settings"], len(per_seed)
    sizes = ", ".join(f"{s} {first['sets'][s]['n']}" for s in sets)
    lines = ["## Robust accuracy under L∞ PGD", "",
             f"Accuracy (%) under PGD crafted on each model itself: {st['steps']} steps of α = {st['alpha']:g}·ε with a "
             "random start; untargeted ascends the cross-entropy of the true label, targeted descends it towards a "
             f"seeded random wrong label per sample. Samples: {sizes} (retain/test subsampled, seeded, to at most "
             f"{st['max_samples']}). Residual knowledge that survives an attack shows as a forget-set accuracy above "
             f"Re-train's. Table: {stem}.csv.", "", f"![robust accuracy]({stem}.png)", ""]
    header = ["method", *[f"{s} ε={_eps_label(e)}" for s in sets for e in eps]]
    for att in ATTACKS:
        body = [[n, *[_pct(stats[(n, s, att)][0][j], stats[(n, s, att)][1][j], n_seeds) for s in sets
                      for j in range(len(eps))]] for n in names]
        lines += [f"### {att}", "", markdown(header, body), ""]
    return lines


# ---------------------------------------------------------------------------------------------- run report
def gallery_markdown(out_dir, seeds: list[int], names: list[str], probe: str) -> list[str]:
    """Links to every method's leak gallery that exists under ``out_dir/seed-<s>/<method>/``."""
    out_dir = Path(out_dir)
    links = [f"- **{n}**, seed {s}: [leaks-{probe}.png](seed-{s}/{n}/leaks-{probe}.png) (per-sample scores: "
             f"[residual-{probe}.npz](seed-{s}/{n}/residual-{probe}.npz))"
             for n in names for s in seeds if (out_dir / f"seed-{s}" / n / f"leaks-{probe}.png").exists()]
    if not links:
        return []
    return ["## Leak galleries", "",
            "Per method, the forget samples with the largest and the smallest k_m − k_a at the largest τ: the clean "
            "image beside the perturbed copy the audit drew, with k_m / k_a.", "", *links, ""]


def attack_sections(results: list, out_dir, names: list[str], probe: str, scenario_name: str = "") -> list[str]:
    """The report sections of `rurk run` (galleries, relearning attack, robust accuracy), writing the curve files;
    ``results`` are :class:`rurk.run.experiment.SeedResult` (attack curves only on those that carry them)."""
    seeds = [r.seed for r in results]
    lines = gallery_markdown(out_dir, seeds, [n for n in names if n != "retrain"], probe)
    relearn = [(r.seed, r.relearn_curves) for r in results if getattr(r, "relearn_curves", None)]
    robust = [(r.seed, r.robust) for r in results if getattr(r, "robust", None)]
    if relearn:
        lines += write_relearn(relearn, out_dir, f"{scenario_name}: relearning attack (seeds {', '.join(map(str, seeds))})")
    if robust:
        lines += write_robust(robust, out_dir, f"{scenario_name}: robust accuracy (seeds {', '.join(map(str, seeds))})")
    return lines
