"""The iris toy illustration (evaluation.md §3.6): residual knowledge made visible in 2-D.

Three panels -- Original, Re-train and GD-unlearned -- show each model's decision regions over the two
standardised petal features, the training points, the 7 forget points, and c Gaussian copies around each
forget point marked by whether that panel's model still predicts the forget point's true label.

**Input-space exception.** Everywhere else rurk's inputs are in [0, 1] with normalisation inside the
model, and perturbations are clipped to [0, 1]. Here the model sees the *standardised* petal features
(mean 0, std 1 over all 150 samples; the model's own Normalize is the identity) so that the decision
regions are drawn in exactly the coordinates the model uses, and the Gaussian copies x + τ·z are *not*
clipped (τ is in standardised units). That is why the copies are drawn here and not with
``rurk.perturb``'s ``gaussian`` probe, which clips to [0, 1].

Recipe (spec decisions): MLP 2-100-3 (ReLU), one initialisation (seeded) for Original and Re-train; Adam
lr 0.01, full batch, 500 epochs via :func:`rurk.train.fit`; GD = the registered ``gd`` method with
lr 0.01, momentum 0.9, 10 epochs on S_r and its own defaults otherwise (batch 128, i.e. 2 steps per epoch
on the 143 retain samples; weight decay 1e-4). The forget set is 3/2/2 samples of classes 0/1/2, chosen
per class with ``numpy.random.default_rng([seed, class])``. All 150 samples are training data (no test
set). The copies are drawn once with ``torch.Generator().manual_seed(seed)`` and shared by the three
panels (common random numbers).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from .data import load_source
from .data.tensordata import TensorData
from .methods import UnlearnData, unlearn
from .models import build_model
from .torchutil import predict
from .train import OptimConfig, accuracy, fit

__all__ = ["iris_figure", "iris_toy_data", "iris_models", "gaussian_copies", "correct_copies", "FORGET_PER_CLASS",
           "PETAL_COLUMNS"]

#: Forget samples per class (spec: 7 spread over the three classes; decision 3/2/2).
FORGET_PER_CLASS = (3, 2, 2)
#: Petal length and petal width in the iris feature order.
PETAL_COLUMNS = (2, 3)
PANELS = ("original", "retrain", "gd")
_TITLES = {"original": "Original", "retrain": "Re-train", "gd": "GD (unlearned)"}
_CLASS_COLORS = ("#1f77b4", "#ff7f0e", "#7b3294")  # blue / orange / purple: green and red mark ✓ / ✗


def iris_toy_data(seed: int = 0) -> tuple[TensorData, TensorData, list[str]]:
    """(retain, forget, class names): the two petal features of all 150 iris samples, standardised (mean 0,
    std 1 per feature, population std), split into the seeded 3/2/2 forget set and the 143 retained."""
    src = load_source("iris")
    x = src.train.x[:, list(PETAL_COLUMNS)].double()  # min-max scaled; standardising undoes the affine map
    x = ((x - x.mean(0)) / x.std(0, unbiased=False)).float()
    data = TensorData(x, src.train.y, src.train.index)
    y = data.y.numpy()
    forget_rows = []
    for c, k in enumerate(FORGET_PER_CLASS):
        rows = np.flatnonzero(y == c)
        forget_rows += sorted(np.random.default_rng([int(seed), c]).choice(rows, size=k, replace=False).tolist())
    keep = np.setdiff1d(np.arange(len(data)), forget_rows)
    return data.subset(keep), data.subset(forget_rows), list(src.classes)


def _new_model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("mlp", 3, (2,), hidden=(100,))  # Normalize = identity (mean 0, std 1): inputs are standardised


def _train(data: TensorData, seed: int, epochs: int) -> nn.Module:
    model = _new_model(seed)
    cfg = OptimConfig(optimizer="adam", lr=0.01, epochs=epochs, batch_size=len(data))
    fit(model, data, cfg, seed, progress=False)
    return model.eval()


def iris_models(retain: TensorData, forget: TensorData, seed: int = 0, *, epochs: int = 500,
                gd_epochs: int = 10) -> dict[str, nn.Module]:
    """{"original", "retrain", "gd"} models of the toy (eval mode): Original on S = S_r ∪ S_f and Re-train on
    S_r, both from the same seeded initialisation with Adam lr 0.01, full batch, ``epochs`` epochs; GD =
    the registered ``gd`` method on Original (lr 0.01, momentum 0.9, ``gd_epochs`` epochs on S_r, its
    default batch 128 and weight decay 1e-4)."""
    original = _train(TensorData.concat(retain, forget), seed, epochs)
    retrain = _train(retain, seed, epochs)
    gd, _ = unlearn("gd", original, UnlearnData(retain, forget, num_classes=3), seed,
                    overrides={"lr": 0.01, "momentum": 0.9, "epochs": gd_epochs})
    return {"original": original, "retrain": retrain, "gd": gd.eval()}


def gaussian_copies(forget: TensorData, c: int, tau: float, seed: int) -> torch.Tensor:
    """(n, c, 2) copies x_i + τ z_ij, z ~ N(0, I) from ``torch.Generator().manual_seed(seed)``; not clipped
    (standardised units)."""
    z = torch.randn((len(forget), int(c), forget.x.shape[1]), generator=torch.Generator().manual_seed(int(seed)))
    return forget.x[:, None, :] + float(tau) * z


def correct_copies(model: nn.Module, copies: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(n, c) bool: does ``model`` predict y_i for copy j of forget sample i (one batched eval pass)."""
    n, c, d = copies.shape
    return predict(model, copies.reshape(n * c, d)).argmax(1).reshape(n, c) == y[:, None]


def _panel_grid(retain: TensorData, forget: TensorData, copies: torch.Tensor):
    """The drawn area (every point and copy plus a 0.4 margin) and its 300 x 300 grid for the decision regions:
    (lo, hi, gx, gy, grid points as float32)."""
    allx = torch.cat([retain.x, forget.x, copies.reshape(-1, 2)])
    lo, hi = allx.min(0).values.numpy() - 0.4, allx.max(0).values.numpy() + 0.4
    gx, gy = np.meshgrid(np.linspace(lo[0], hi[0], 300), np.linspace(lo[1], hi[1], 300))
    grid = torch.from_numpy(np.stack([gx.ravel(), gy.ravel()], 1).astype(np.float32))
    return lo, hi, gx, gy, grid


def _draw_panel(ax, model: nn.Module, area, retain: TensorData, forget: TensorData, copies: torch.Tensor,
                ok: np.ndarray, title: str) -> None:
    """One panel: ``model``'s decision regions over ``area``, the retained points, the copies marked by whether
    the model predicts the forget point's label (``ok``), and the forget points."""
    from matplotlib.colors import ListedColormap

    lo, hi, gx, gy, grid = area
    regions = predict(model, grid).argmax(1).numpy().reshape(gx.shape)
    ax.contourf(gx, gy, regions, levels=[-0.5, 0.5, 1.5, 2.5], cmap=ListedColormap(["#c6dbef", "#fdd0a2", "#dadaeb"]),
                alpha=0.9)
    ax.contour(gx, gy, regions, levels=[0.5, 1.5], colors="0.35", linewidths=0.8)
    for cls in range(3):
        pts = retain.x[retain.y == cls].numpy()
        ax.scatter(pts[:, 0], pts[:, 1], s=14, c=_CLASS_COLORS[cls], edgecolors="white", linewidths=0.3,
                   alpha=0.75, zorder=2)
    cp = copies.numpy()
    ax.scatter(cp[ok][:, 0], cp[ok][:, 1], s=16, facecolors="none", edgecolors="#1a9850", linewidths=1.0,
               zorder=3)
    ax.scatter(cp[~ok][:, 0], cp[~ok][:, 1], s=18, marker="x", c="#d73027", linewidths=1.1, zorder=3)
    fx = forget.x.numpy()
    ax.scatter(fx[:, 0], fx[:, 1], s=150, marker="*", c=[_CLASS_COLORS[v] for v in forget.y.numpy()],
               edgecolors="black", linewidths=1.1, zorder=4)
    ax.set_title(title, fontsize=12)
    ax.set_xlabel("petal length (standardised)")
    ax.set_xlim(lo[0], hi[0])
    ax.set_ylim(lo[1], hi[1])


def _legend_handles(names: list[str]) -> list:
    """The legend: one marker per class, then the forget sample and the two kinds of copy."""
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], ls="", marker="o", ms=6, mfc=_CLASS_COLORS[i], mec="white", label=names[i])
               for i in range(3)]
    return handles + [
        Line2D([], [], ls="", marker="*", ms=13, mfc="0.6", mec="black", label="forget sample"),
        Line2D([], [], ls="", marker="o", ms=6, mfc="none", mec="#1a9850", label="copy: true label (✓)"),
        Line2D([], [], ls="", marker="x", ms=6, mec="#d73027", label="copy: other label (✗)"),
    ]


def _draw_figure(out_png, models: dict, retain: TensorData, forget: TensorData, names: list[str],
                 copies: torch.Tensor, correct: dict, totals: dict, c: int, tau: float, dpi: int) -> Path:
    """The three-panel figure (matplotlib Agg; pyplot is not used), written to ``out_png``; returns its path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    area = _panel_grid(retain, forget, copies)
    fig = Figure(figsize=(15, 5.2), constrained_layout=True)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3, sharex=True, sharey=True)
    for ax, key in zip(axes, PANELS):
        _draw_panel(ax, models[key], area, retain, forget, copies, correct[key].numpy(),
                    f"{_TITLES[key]}:  Σk = {totals[key]} / {len(forget) * c}")
    axes[0].set_ylabel("petal width (standardised)")
    handles = _legend_handles(names)
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), frameon=False, fontsize=10)
    fig.suptitle(f"Iris toy: {c} Gaussian copies (τ = {tau:g}, standardised units) around each of the "
                 f"{len(forget)} forget samples", fontsize=13)
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    return out


def iris_figure(out_png, seed: int = 0, c: int = 20, tau: float = 0.3, *, epochs: int = 500,
                gd_epochs: int = 10, dpi: int = 110) -> dict:
    """Train Original (on S), Re-train (on S_r) and GD-unlearn Original, draw the three-panel figure to
    ``out_png`` (PNG, matplotlib Agg; pyplot is not used) and return a JSON-ready dict:

    - ``counts``: per panel, k per forget sample = #{j ≤ c : model(x_i + τ z_ij) = y_i};
      ``totals``: Σk per panel (out of 7c);
    - ``k_m`` = GD's counts and ``k_a`` = Re-train's counts (the audit's names);
    - ``forget``: source index, label and standardised coordinates of each forget sample;
    - ``accuracy``: retain/forget accuracy per panel; ``png``, ``seed``, ``c``, ``tau``.

    Inputs are standardised petal features, not [0, 1] pixels (the documented exception; module docstring).
    ``epochs``/``gd_epochs`` default to the spec values (500 / 10)."""
    if c < 1 or tau < 0:
        raise ValueError(f"iris_figure: need c >= 1 and tau >= 0, got c={c}, tau={tau}")
    retain, forget, names = iris_toy_data(seed)
    models = iris_models(retain, forget, seed, epochs=epochs, gd_epochs=gd_epochs)
    copies = gaussian_copies(forget, c, tau, seed)  # shared by the three panels
    correct = {k: correct_copies(m, copies, forget.y) for k, m in models.items()}
    counts = {k: v.sum(1).tolist() for k, v in correct.items()}
    totals = {k: int(sum(v)) for k, v in counts.items()}
    out = _draw_figure(out_png, models, retain, forget, names, copies, correct, totals, c, tau, dpi)
    return {
        "png": str(out),
        "seed": int(seed),
        "c": int(c),
        "tau": float(tau),
        "counts": counts,
        "totals": totals,
        "k_m": counts["gd"],
        "k_a": counts["retrain"],
        "forget": {
            "index": forget.index.tolist(),
            "label": forget.y.tolist(),
            "x": [[round(float(v), 6) for v in row] for row in forget.x.tolist()],
        },
        "accuracy": {k: {"retain": accuracy(m, retain), "forget": accuracy(m, forget)} for k, m in models.items()},
    }
