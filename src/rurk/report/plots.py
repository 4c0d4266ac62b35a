"""Plots of audit results (matplotlib, Agg canvas; pyplot and the global backend are not touched)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..figures import _COLORS, save_png


def _curve_data(obj: Any) -> dict[str, np.ndarray]:
    """taus, r_paper, r_pooled and their (len, 2) bands from an AuditResult, a to_json() summary
    ({"per_tau": [...]}) or a plain dict {"taus", "r_paper", "r_pooled", "ci": {"r_paper": [(lo, hi)...],
    "r_pooled": [...]}} (e.g. multi-seed mean with mean -/+ std as the band). None -> NaN."""

    def arr(v):
        return np.array([np.nan if e is None else e for e in v], dtype=float)

    def band(v, n):
        if v is None:
            return np.full((n, 2), np.nan)
        return np.array([[np.nan, np.nan] if e is None else [e[0], e[1]] for e in v], dtype=float).reshape(n, 2)

    if hasattr(obj, "per_tau") and hasattr(obj, "taus"):
        rows = [s.to_dict() for s in obj.per_tau]
    elif isinstance(obj, Mapping) and "per_tau" in obj:
        rows = list(obj["per_tau"])
    elif isinstance(obj, Mapping) and "taus" in obj:
        taus = arr(obj["taus"])
        n = len(taus)
        ci = obj.get("ci") or obj.get("ci95") or {}
        return {
            "taus": taus,
            "r_paper": arr(obj.get("r_paper", [None] * n)),
            "r_pooled": arr(obj.get("r_pooled", [None] * n)),
            "r_paper_ci": band(ci.get("r_paper"), n),
            "r_pooled_ci": band(ci.get("r_pooled"), n),
        }
    else:
        raise TypeError(f"cannot plot a {type(obj).__name__}: expected an AuditResult or a dict with taus/r_paper/r_pooled")
    n = len(rows)
    return {
        "taus": arr([r["tau"] for r in rows]),
        "r_paper": arr([r.get("r_paper") for r in rows]),
        "r_pooled": arr([r.get("r_pooled") for r in rows]),
        "r_paper_ci": band([(r.get("ci95") or {}).get("r_paper") for r in rows], n),
        "r_pooled_ci": band([(r.get("ci95") or {}).get("r_pooled") for r in rows], n),
    }


def residual_figure(curves: Mapping[str, Any], title: str | None = None, *, reference: str = "Re-train"):
    """The r_tau-versus-tau figure (matplotlib Figure on an Agg canvas): two panels (``r_paper`` left,
    ``r_pooled`` right), one line per method with its band, each with its own colour, line style and marker so
    that coinciding curves stay distinguishable, and the reference model the ratios divide by (``reference``:
    Re-train, or the user's model with `rurk audit --arch`) as the dashed line at r = 1 (in the legend)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not curves:
        raise ValueError("plot_residual_curves: no curves given")
    fig = Figure(figsize=(11.5, 4), constrained_layout=True)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2, sharex=True)
    panels = (("r_paper", "r_paper (mean of k_m/k_a, k_a > 0)"), ("r_pooled", "r_pooled (acc_m / acc_a)"))
    for ax, (key, label) in zip(axes, panels):
        for i, (name, obj) in enumerate(curves.items()):
            d = _curve_data(obj)
            # colour, line style and marker all vary, so curves that coincide stay distinguishable
            style = {"color": _COLORS(i % 20), "linestyle": ("-", "--", "-.", ":")[(i // 10) % 4],
                     "marker": "osD^vP*Xph<>"[i % 12], "markerfacecolor": "none" if i % 2 else None}
            (line,) = ax.plot(d["taus"], d[key], ms=5, label=str(name), **style)
            lo, hi = d[key + "_ci"][:, 0], d[key + "_ci"][:, 1]
            if np.isfinite(lo).any():
                ax.fill_between(d["taus"], lo, hi, color=line.get_color(), alpha=0.2, linewidth=0)
        ax.axhline(1.0, color="k", linestyle="--", linewidth=1, label=f"{reference} (r = 1)")
        ax.set_xlabel("tau")
        ax.set_ylabel(key)
        ax.set_title(label, fontsize=10)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5))
    if title:
        fig.suptitle(title)
    return fig


def plot_residual_curves(
    curves: Mapping[str, Any],
    path,
    title: str | None = None,
    *,
    reference: str = "Re-train",
    dpi: int = 120,
) -> Path:
    """Write :func:`residual_figure` as a PNG to ``path`` and return the path. ``curves`` maps a method name to
    an :class:`~rurk.audit.result.AuditResult`, its ``to_json()`` summary or a dict
    ``{"taus", "r_paper", "r_pooled", "ci": {"r_paper": [(lo, hi), ...], "r_pooled": [...]}}``; ``reference``
    names the model at r = 1 in the legend."""
    fig = residual_figure(curves, title, reference=reference)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_png(fig, path, dpi=dpi)


def calibration_figure(rows: Mapping[str, list[tuple[int, dict]]], title: str | None = None):
    """The trajectories of calibrated stopping (rurk.methods._calibrate): one panel per row, one colour per seed; the
    forget accuracy on perturbed copies per check (solid), the target (dashed), the retain and test accuracy on
    their traced subsets (thin, dotted / dash-dotted), and the chosen checkpoint (a ring)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not rows:
        raise ValueError("calibration_figure: no calibrated rows")
    fig = Figure(figsize=(4.2 * len(rows) + 1.5, 3.6), constrained_layout=True)
    FigureCanvasAgg(fig)
    axes = np.atleast_1d(fig.subplots(1, len(rows), squeeze=False)[0])
    for ax, (name, seeds) in zip(axes, rows.items()):
        for i, (seed, c) in enumerate(seeds):
            color = _COLORS(i)
            steps = [p["step"] for p in c["trajectory"]]
            ax.plot(steps, [p["forget"] for p in c["trajectory"]], color=color, label=f"seed {seed}: forget")
            ax.axhline(c["target"], color=color, linestyle="--", linewidth=1, label="target" if i == 0 else None)
            for key, ls in (("retain", ":"), ("test", "-.")):
                traced = [p for p in c["trajectory"] if key in p]  # every trace_every-th check (rurk.methods._calibrate)
                if traced:
                    ax.plot([p["step"] for p in traced], [p[key] for p in traced], color=color, linestyle=ls,
                            linewidth=0.8, label=f"seed {seed}: {key}" if i == 0 else None)
            ax.plot([c["chosen_step"]], [c["forget_at_chosen"]], "o", mfc="none", ms=9, color=color)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("optimiser step")
        ax.set_ylabel("accuracy")
        ax.grid(alpha=0.3)
    axes[-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def plot_free_curve(res, path, title: str | None = None, dpi: int = 120) -> Path:
    """The audit without Re-train (:class:`rurk.audit.free.FreeResult`) as a PNG: r_free against τ with its 95%
    band, the ±0.05 band around 1 that "as Re-train" means, and each τ's verdict as its marker's colour."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 4), constrained_layout=True)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    taus = np.array([t.tau for t in res.per_tau])
    r = np.array([np.nan if t.r_free is None else t.r_free for t in res.per_tau])
    lo = np.array([np.nan if t.lo is None else t.lo for t in res.per_tau])
    hi = np.array([np.nan if t.hi is None else t.hi for t in res.per_tau])
    ax.axhspan(0.95, 1.05, color="tab:green", alpha=0.12, label="as Re-train (1 ± 0.05)")
    ax.fill_between(taus, lo, hi, color="tab:blue", alpha=0.2, linewidth=0, label="95% interval")
    ax.plot(taus, r, "-", color="tab:blue", label="r_free = acc_m / estimate")
    ax.axhline(1.0, color="k", linestyle="--", linewidth=1)
    colours = {"residual knowledge": "tab:red", "as Re-train": "tab:green", "over-forgetting": "tab:purple",
               "inconclusive": "tab:gray", "no verdict": "white"}
    verdicts = [t.verdict for t in res.per_tau]
    for v, c in colours.items():  # the verdict of each τ as its marker's colour
        sel = np.array([x == v for x in verdicts])
        if sel.any():
            ax.plot(taus[sel], r[sel], "o", color=c, markeredgecolor="k", ms=7, linestyle="none", label=v)
    ax.set_xlabel("tau")
    ax.set_ylabel("r_free")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    if title:
        ax.set_title(title, fontsize=10)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_png(fig, path, dpi=dpi)
