"""The set-level statistics of an audit's counts (residual-knowledge.md §3): r_paper with its zero-count rules,
r_pooled, prevalence, ties, accuracies, disagreement, and the percentile bootstrap."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: Set-level fields of every tau (spec §3), in report order.
STAT_FIELDS = (
    "r_paper",
    "n_used",
    "n_both_zero",
    "n_unbounded",
    "r_pooled",
    "prevalence",
    "ties",
    "acc_m",
    "acc_a",
    "disagreement",
)
_COUNT_FIELDS = ("n_used", "n_both_zero", "n_unbounded")




@dataclass
class TauStats:
    """Set-level numbers of one tau (spec §3). ``ci95[field] = (lo, hi)`` or None where the field is
    undefined in every resample. ``clip_fraction``: for random probes, the fraction of input coordinates
    that clipping to [0, 1] changed."""

    tau: float | None
    r_paper: float | None
    n_used: int
    n_both_zero: int
    n_unbounded: int
    r_pooled: float | None
    prevalence: float
    ties: float  # fraction of samples with k_m = k_a (report it with prevalence: ties breaking as tau grows inflate it)
    acc_m: float
    acc_a: float
    disagreement: float | None
    ci95: dict[str, tuple[float, float] | None] = field(default_factory=dict)
    clip_fraction: float | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"tau": self.tau}
        for f in STAT_FIELDS:
            out[f] = getattr(self, f)
        out["ci95"] = {k: (None if v is None else [v[0], v[1]]) for k, v in self.ci95.items()}
        if self.clip_fraction is not None:
            out["clip_fraction"] = self.clip_fraction
        return out


def _stat_arrays(km: np.ndarray, ka: np.ndarray, d: np.ndarray | None, c: int) -> dict[str, np.ndarray]:
    """Every field over the last axis (samples); leading axes are e.g. bootstrap resamples.
    Undefined values are NaN."""
    n = km.shape[-1]
    used = ka > 0
    n_used = used.sum(-1)
    ratio = np.divide(km, ka, out=np.zeros(km.shape, dtype=np.float64), where=used)
    with np.errstate(invalid="ignore", divide="ignore"):
        r_paper = np.where(n_used > 0, ratio.sum(-1) / np.maximum(n_used, 1), np.nan)
        skm = km.sum(-1)
        ska = ka.sum(-1)
        r_pooled = np.where(ska > 0, skm / np.maximum(ska, 1), np.nan)
    out = {
        "r_paper": r_paper,
        "n_used": n_used,
        "n_both_zero": ((km == 0) & (ka == 0)).sum(-1),
        "n_unbounded": ((ka == 0) & (km > 0)).sum(-1),
        "r_pooled": r_pooled,
        "prevalence": (km > ka).sum(-1) / n,
        "ties": (km == ka).sum(-1) / n,
        "acc_m": skm / (c * n),
        "acc_a": ska / (c * n),
    }
    if d is not None:
        out["disagreement"] = d.sum(-1) / (c * n)
    return out


def bootstrap_indices(n: int, B: int, seed: int) -> np.ndarray:
    """The (B, n) resample matrix of the percentile bootstrap over samples (numpy PCG64, ``seed``).
    The audit uses one matrix for all tau (a paired bootstrap)."""
    return np.random.default_rng(seed).integers(0, n, size=(B, n))


def _as_counts(a, name: str, c: int) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one count per sample), got shape {a.shape}")
    if a.size and not np.issubdtype(a.dtype, np.integer):
        if not np.all(a == np.round(a)):
            raise ValueError(f"{name} must hold integer counts")
    a = a.astype(np.int64)
    if a.size and (a.min() < 0 or a.max() > c):
        raise ValueError(f"{name} counts must be in [0, c={c}]")
    return a


def summarise_counts(
    k_m,
    k_a,
    d,
    c: int,
    *,
    tau: float | None = None,
    bootstrap: int = 0,
    bootstrap_seed: int = 0,
    resample: np.ndarray | None = None,
) -> TauStats:
    """Set-level statistics of one tau from per-sample counts (spec §3), numpy in, :class:`TauStats` out.

    ``d`` may be None (models saw different copies): ``disagreement`` is then None. With ``bootstrap``
    = B > 0 (or an explicit (B, n) ``resample`` index matrix) every field gets a 95% percentile interval;
    a resample's ``r_paper`` is the mean over *its* k_a > 0 samples, and resamples where a field is
    undefined are left out of that field's percentiles.
    """
    c = int(c)
    if c < 1:
        raise ValueError(f"c must be >= 1, got {c}")
    km = _as_counts(k_m, "k_m", c)
    ka = _as_counts(k_a, "k_a", c)
    dd = None if d is None else _as_counts(d, "d", c)
    n = km.shape[0]
    if n == 0 or ka.shape != (n,) or (dd is not None and dd.shape != (n,)):
        raise ValueError(f"k_m, k_a (and d) must have the same non-zero length, got {km.shape}, {ka.shape}")
    pt = _stat_arrays(km, ka, dd, c)

    def scalar(f):
        if f not in pt:
            return None
        v = pt[f]
        if f in _COUNT_FIELDS:
            return int(v)
        v = float(v)
        return None if math.isnan(v) else v

    ci: dict[str, tuple[float, float] | None] = {}
    if resample is None and bootstrap > 0:
        resample = bootstrap_indices(n, int(bootstrap), int(bootstrap_seed))
    if resample is not None:
        bs = _stat_arrays(km[resample], ka[resample], None if dd is None else dd[resample], c)
        for f in STAT_FIELDS:
            if f not in bs:
                continue
            v = bs[f].astype(np.float64)
            v = v[~np.isnan(v)]
            ci[f] = None if v.size == 0 else (float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5)))
    return TauStats(
        tau=None if tau is None else float(tau),
        r_paper=scalar("r_paper"),
        n_used=scalar("n_used"),
        n_both_zero=scalar("n_both_zero"),
        n_unbounded=scalar("n_unbounded"),
        r_pooled=scalar("r_pooled"),
        prevalence=scalar("prevalence"),
        ties=scalar("ties"),
        acc_m=scalar("acc_m"),
        acc_a=scalar("acc_a"),
        disagreement=scalar("disagreement"),
        ci95=ci,
    )


def per_sample_ratio(k_m: np.ndarray, k_a: np.ndarray) -> np.ndarray:
    """r_i per spec §3: k_m/k_a if k_a > 0, 1 if both are 0, +inf if k_a = 0 < k_m."""
    k_m = np.asarray(k_m, dtype=np.float64)
    k_a = np.asarray(k_a, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(k_a > 0, k_m / np.where(k_a > 0, k_a, 1.0), np.where(k_m > 0, np.inf, 1.0))
    return r


# ==================================================================================================
# result
