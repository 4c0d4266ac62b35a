"""The two lines every rurk figure starts and ends with: a matplotlib Figure on its own Agg canvas (pyplot and the
global backend are never touched) and saving it as a PNG (parent folders created)."""

from __future__ import annotations

from pathlib import Path

from .store import atomic_output


def agg_figure(width_in: float, height_in: float, **kw):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), **kw)
    FigureCanvasAgg(fig)
    return fig


def save_png(fig, path, dpi: int = 120) -> Path:
    """Save ``fig`` as ``path`` through a temporary file beside it (:func:`rurk.store.atomic_output`): a full disk
    or a killed run never leaves a truncated PNG."""
    path = Path(path)
    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    return path


def line_style(i: int) -> dict:
    """Colour, line style and marker of the i-th curve (as in :func:`rurk.report.plots.residual_figure`), so coinciding
    curves stay distinguishable."""
    return {"color": _COLORS(i % 20), "linestyle": ("-", "--", "-.", ":")[(i // 10) % 4], "marker": "osD^vP*Xph<>"[i % 12]}


def _COLORS(i: int):
    """Twenty distinguishable colours (tab20, dark shades first), enough for every method in one plot."""
    from matplotlib import colormaps

    return colormaps["tab20"]((2 * i) % 20 + (i >= 10))
