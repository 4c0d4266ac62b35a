"""Per-sample residual knowledge: the leak ranking, the per-sample ``.npz`` and the leak gallery PNG.

**Ranking** (:func:`leak_ranking`): the forget samples at the largest tau by score = k_m - k_a, descending; ties by
larger k_m, then by position. Its first samples with a positive score are exactly
:meth:`rurk.audit.result.AuditResult.top_leaks` at that tau.

**Scores** (:func:`write_scores`): ``residual-<probe>.npz`` beside the per-sample CSV, keyed by the source index:
``index`` (n,), ``label`` (n,), ``taus`` (T,), ``k_m`` and ``k_a`` (T, n), ``d`` (T, n; absent when the models saw
different copies), ``score`` = k_m - k_a at the largest tau (n,), ``rank`` (n; 0 = the top leak), ``c`` and
``probe``. Read it with ``numpy.load(path)`` (no pickles).

**Gallery** (:func:`write_gallery`, ``leaks-<probe>.png``): two groups of tiles, ``cols`` per row (default 8; fewer
when both groups are smaller), each titled by what it holds (:func:`gallery_heads`).
The first group, *residual knowledge*, holds the samples the audited model recognises more often than the
reference (score k_m - k_a > 0 at the largest tau): the first k of the ranking (default k = 16) with a positive
score. The second, *over-forgotten*, holds up to k samples with a negative score, from the end of the same ranking
read backwards (the most over-forgotten first). Ties (k_m = k_a) are in neither group, so no sample appears twice
and a heading never claims what its tiles do not show; an empty group keeps its heading, which then says so ("no
sample leaks ..."). A tile shows the clean image and, right of it, perturbed copy 0 at the largest tau exactly
as the audit made it (:func:`perturbed_copies`), titled with the source index, the label and k_m / k_a (red:
k_m > k_a, blue: k_m < k_a). The PNG is ``cols x 200`` px wide and ``50 + 2 x 25 + (rows_top + rows_bottom) x
150`` px high, rows = ceil(group size / cols) (:data:`TILE_PX`, :data:`HEADER_PX`, :data:`TITLE_PX`).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..figures import agg_figure, save_png
from ..perturb import Draw, Probe, block_generator, module_device
from ..store import atomic_write

DPI = 100
TILE_PX = (200, 150)  # width, height of one sample's tile
HEADER_PX = 25  # the line above each group
TILE_TEXT_PX = 34  # the two lines above each tile's image
TITLE_PX = 50  # the figure title


# ---------------------------------------------------------------------------------------------- ranking, scores
def leak_ranking(k_m, k_a, taus) -> tuple[np.ndarray, int]:
    """(order of the sample positions, row of the largest tau): score k_m - k_a at the largest tau descending,
    ties by larger k_m, then by position (the order of :meth:`AuditResult.top_leaks`)."""
    k_m, k_a = np.asarray(k_m), np.asarray(k_a)
    t = int(np.argmax(np.asarray(taus, dtype=float)))
    km, gap = k_m[t], k_m[t] - k_a[t]
    return np.lexsort((-km, -gap)), t


def write_scores(res, path) -> Path:
    """The per-sample ``.npz`` of an :class:`~rurk.audit.result.AuditResult` (keys in the module docstring)."""
    order, t = leak_ranking(res.k_m, res.k_a, res.taus)
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    arrays = dict(index=np.asarray(res.index, dtype=np.int64), label=np.asarray(res.label, dtype=np.int64),
                  taus=np.asarray(res.taus, dtype=np.float64), k_m=res.k_m.astype(np.int64),
                  k_a=res.k_a.astype(np.int64), score=(res.k_m[t] - res.k_a[t]).astype(np.int64), rank=rank,
                  c=np.int64(res.c), probe=np.str_(res.probe))
    if res.d is not None:
        arrays["d"] = res.d.astype(np.int64)
    path = Path(path)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write(path, buf.getvalue())  # never a truncated file (a full disk, a killed run)
    return path


def audited_rows(res, x: torch.Tensor, y: torch.Tensor, index) -> tuple[torch.Tensor, torch.Tensor]:
    """The samples in the audit's order: ``x``/``y`` rows whose source ``index`` equals ``res.index`` (the audit may
    have drawn a ``max_forget`` subset)."""
    index = np.asarray(torch.as_tensor(index).cpu())
    if np.array_equal(index, res.index):
        return x, y
    where = {int(v): i for i, v in enumerate(index)}
    rows = torch.as_tensor([where[int(v)] for v in res.index], dtype=torch.long)
    return x[rows], y[rows]


# ---------------------------------------------------------------------------------------------- the audit's copies
def perturbed_copies(res, probe: Probe, x: torch.Tensor, y: torch.Tensor, rows, m: nn.Module,
                     a: nn.Module | None = None, *, tau: float | None = None, copies: int = 1,
                     num_classes: int | None = None) -> torch.Tensor:
    """Copies 0..copies-1 of the samples at positions ``rows`` of the audited ``x``/``y`` (in the audit's order) at
    ``tau`` (default the largest), regenerated as :func:`rurk.audit.kernel.count_correct` made them: the sample's noise
    block (``res.block_size`` samples, ``res.c`` copies each, copy-major via ``repeat_interleave``) drawn from
    ``block_generator(res.seed, probe.name, block)`` on the models' device, then ``probe.apply``. Attacks are
    crafted on the audited model m (on a when the audit crafted on a only). Returns (len(rows), copies, ...)."""
    tau = float(max(res.taus) if tau is None else tau)
    dev = module_device(m)
    dtype = next((p.dtype for p in m.parameters() if p.is_floating_point()), torch.float32)
    x, y = x.to(dev, dtype=dtype), torch.as_tensor(y).to(dev).long()
    c, bs, n = res.c, res.block_size, x.shape[0]
    crafter = (a if res.craft_on == "a" else m) if probe.adversarial else None
    blocks: dict[int, tuple[torch.Tensor, torch.Tensor, Draw]] = {}
    out = []
    for i in (int(r) for r in rows):
        b = i // bs
        if b not in blocks:
            lo, hi = b * bs, min(n, (b + 1) * bs)
            x_rep, y_rep = x[lo:hi].repeat_interleave(c, 0), y[lo:hi].repeat_interleave(c, 0)
            with torch.no_grad():
                blocks[b] = (x_rep, y_rep, probe.draw(x_rep, y_rep, block_generator(res.seed, probe.name, b, dev),
                                                      num_classes))
        x_rep, y_rep, d = blocks[b]
        sel = slice((i - b * bs) * c, (i - b * bs) * c + copies)
        draw = Draw(*(None if v is None else v[sel] for v in d))
        with torch.no_grad():
            out.append(probe.apply(crafter, x_rep[sel], y_rep[sel], tau, draw).x)
    return torch.stack(out)


# ---------------------------------------------------------------------------------------------- the gallery
@dataclass
class Gallery:
    """What :func:`write_gallery` drew: sample positions of each group in tile order, the grid and the PNG size."""

    path: Path
    tau: float
    top: list[int]
    bottom: list[int]
    cols: int
    rows: tuple[int, int]  # tile rows of the top and bottom groups
    size: tuple[int, int]  # (width, height) in pixels
    heads: tuple[str, str] = ("", "")  # the groups' headings (gallery_heads)


def gallery_groups(res, k: int = 16) -> tuple[list[int], list[int]]:
    """(top, bottom) sample positions at the largest tau: up to k samples with k_m > k_a in :func:`leak_ranking`
    order (residual knowledge), and up to k with k_m < k_a from the ranking's end read backwards (over-forgotten,
    most negative first). Ties are in neither, so no sample is in both."""
    order, t = leak_ranking(res.k_m, res.k_a, res.taus)
    score = (np.asarray(res.k_m)[t] - np.asarray(res.k_a)[t])[order]
    k = max(int(k), 0)
    top, bottom = order[score > 0][:k], order[score < 0][::-1][:k]
    return [int(i) for i in top], [int(i) for i in bottom]


def gallery_heads(res, n_top: int, n_bottom: int) -> tuple[str, str]:
    """The headings of the two groups (``n_top``/``n_bottom`` tiles shown), saying what each holds out of how
    many such samples, or that there is none: "no sample leaks" only when no sample has k_m > k_a."""
    _, t = leak_ranking(res.k_m, res.k_a, res.taus)
    score = np.asarray(res.k_m)[t] - np.asarray(res.k_a)[t]
    leaks, over = int((score > 0).sum()), int((score < 0).sum())
    tau = float(res.taus[t])
    top = (f"residual knowledge (k_m > k_a) at tau = {tau:.4g}: {n_top} of {leaks} sample{'s' * (leaks != 1)}, "
           "largest k_m - k_a first" if leaks else f"no sample leaks: k_m <= k_a for every sample at tau = {tau:.4g}")
    bottom = (f"over-forgotten (k_m < k_a): {n_bottom} of {over} sample{'s' * (over != 1)}, most negative first"
              if over else "no sample is over-forgotten: k_m >= k_a for every sample")
    return top, bottom


def gallery_size(n_top: int, n_bottom: int, cols: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """((rows of the top group, rows of the bottom group), (width, height) in pixels) of a gallery; each group
    has its heading, even when empty."""
    rows = (math.ceil(n_top / cols), math.ceil(n_bottom / cols))
    height = TITLE_PX + sum(HEADER_PX + r * TILE_PX[1] for r in rows)
    return rows, (cols * TILE_PX[0], height)


def _as_image(v: torch.Tensor) -> np.ndarray:
    """(H, W) or (H, W, 3) in [0, 1] for imshow: images as they are, feature vectors as a square (or a strip)."""
    a = v.detach().float().cpu().numpy()
    if a.ndim == 1:
        s = math.isqrt(a.size)
        a = a.reshape(s, s) if s * s == a.size else a.reshape(1, -1)
    elif a.ndim == 3:
        a = a[0] if a.shape[0] == 1 else np.moveaxis(a[:3], 0, -1)
    return np.clip(a, 0.0, 1.0)


def _paste(canvas: np.ndarray, img: np.ndarray, left: int, top: int, width: int, height: int) -> None:
    """Draw ``img`` ((H, W) grey or (H, W, 3), in [0, 1]) into the box of ``canvas``, scaled up by nearest
    neighbour as large as it fits with its aspect ratio, centred."""
    h, w = img.shape[:2]
    scale = min(width / w, height / h)
    sh, sw = max(1, int(h * scale)), max(1, int(w * scale))
    rows = np.minimum((np.arange(sh) / scale).astype(int), h - 1)
    cols = np.minimum((np.arange(sw) / scale).astype(int), w - 1)
    tile = img[rows][:, cols]
    y0, x0 = top + (height - sh) // 2, left + (width - sw) // 2
    canvas[y0:y0 + sh, x0:x0 + sw] = tile[..., None] if tile.ndim == 2 else tile


def write_gallery(res, probe: Probe, x: torch.Tensor, y: torch.Tensor, m: nn.Module, path,
                  a: nn.Module | None = None, *, k: int = 16, cols: int = 8, title: str | None = None,
                  num_classes: int | None = None) -> Gallery:
    """Draw the leak gallery of ``res`` (``x``/``y`` in the audit's order, see :func:`audited_rows`; m and a the
    audited models, needed to craft attack copies) and write it to ``path`` (layout in the module docstring)."""
    top, bottom = gallery_groups(res, k)
    cols = max(1, min(int(cols), max(len(top), len(bottom))))
    rows, (w_px, h_px) = gallery_size(len(top), len(bottom), cols)
    t = leak_ranking(res.k_m, res.k_a, res.taus)[1]
    tau = float(res.taus[t])
    shown = top + bottom
    copies = perturbed_copies(res, probe, x, y, shown, m, a, tau=tau, num_classes=num_classes)[:, 0] if shown else []
    # one image holds every tile (an axes per tile made drawing the gallery cost more than the audit's counting)
    canvas = np.ones((h_px, w_px, 3))
    fig = agg_figure(w_px / DPI, h_px / DPI)
    fig.text(0.5, 1 - (TITLE_PX / 2) / h_px, title or f"{res.probe} probe, tau = {tau:.4g}, c = {res.c}: clean | "
             "perturbed copy 0", ha="center", va="center", fontsize=10)
    heads = gallery_heads(res, len(top), len(bottom))
    y_px, j = TITLE_PX, 0
    for head, group, n_rows in zip(heads, (top, bottom), rows):
        fig.text(0.01, 1 - (y_px + HEADER_PX / 2) / h_px, head, ha="left", va="center", fontsize=9, weight="bold")
        y_px += HEADER_PX
        for g, i in enumerate(group):
            r, col = divmod(g, cols)
            km, ka = int(res.k_m[t, i]), int(res.k_a[t, i])
            left, top_px = col * TILE_PX[0], y_px + r * TILE_PX[1]
            clean, pert = _as_image(x[i]), _as_image(copies[j])
            sep = np.ones(clean.shape[:1] + (max(1, clean.shape[1] // 16),) + clean.shape[2:])
            _paste(canvas, np.concatenate([clean, sep, pert], axis=1), left + 6, top_px + TILE_TEXT_PX,
                   TILE_PX[0] - 12, TILE_PX[1] - TILE_TEXT_PX - 4)
            color = "tab:red" if km > ka else "tab:blue" if km < ka else "black"
            fig.text((left + TILE_PX[0] / 2) / w_px, 1 - (top_px + TILE_TEXT_PX / 2) / h_px,
                     f"#{int(res.index[i])}  y = {int(res.label[i])}\nk_m {km} / k_a {ka} of {res.c}", fontsize=7,
                     color=color, ha="center", va="center")
            j += 1
        y_px += n_rows * TILE_PX[1]
    # the canvas is the figure's size in pixels: drawn 1:1 under the texts as 8-bit RGBA, which Agg copies as it is
    # (an axes' imshow, or floats, are resampled first: a third of the gallery's time)
    rgba = np.concatenate([canvas, np.ones(canvas.shape[:2] + (1,))], axis=2)
    fig.figimage((rgba * 255 + 0.5).astype(np.uint8), 0, 0, origin="upper", zorder=0)
    save_png(fig, path, dpi=DPI)
    return Gallery(Path(path), tau, top, bottom, cols, rows, (w_px, h_px), heads)


def write_per_sample(res, probe: Probe, x: torch.Tensor, y: torch.Tensor, index, m: nn.Module, a: nn.Module,
                     out_dir, *, k: int = 16, title: str | None = None, num_classes: int | None = None) -> Gallery:
    """Beside the audit's CSV in ``out_dir``: ``residual-<probe>.npz`` (:func:`write_scores`) and
    ``leaks-<probe>.png`` (:func:`write_gallery`); ``x``/``y``/``index`` the audited samples (any order)."""
    out_dir = Path(out_dir)
    write_scores(res, out_dir / f"residual-{res.probe}.npz")
    xs, ys = audited_rows(res, x, y, index)
    return write_gallery(res, probe, xs, ys, m, out_dir / f"leaks-{res.probe}.png", a, k=k, title=title,
                         num_classes=num_classes)
