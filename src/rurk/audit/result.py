"""The outcome of one audit (:class:`AuditResult`): its numbers per τ, per-sample counts and its files (JSON, CSV)."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..store import atomic_write
from .stats import TauStats, per_sample_ratio


@dataclass
class Timing:
    seconds: float
    forward_passes: int  # images through a model's forward pass (evaluation + attack crafting)
    backward_passes: int = 0  # images through a backward pass (attack crafting only)


@dataclass
class AuditResult:
    """Outcome of :func:`residual_knowledge`.

    ``per_tau[i]`` holds the set-level numbers of ``taus[i]``; ``k_m``, ``k_a``, ``d`` are the
    (len(taus), n) per-sample counts (``d`` None in ``craft_on='both'``), ``index``/``label`` the samples'
    source-dataset indices and labels."""

    probe: str
    probe_params: dict[str, Any]
    craft_on: str | None
    c: int
    taus: list[float]
    per_tau: list[TauStats]
    index: np.ndarray
    label: np.ndarray
    k_m: np.ndarray
    k_a: np.ndarray
    d: np.ndarray | None
    seed: int
    bootstrap: int
    bootstrap_seed: int
    block_size: int
    batch_size: int
    device: str
    bf16: bool
    timing: Timing
    notes: list[str] = field(default_factory=list)
    bf16_mismatch: float | None = None  # with bf16: fraction of checked predictions that differ from fp32

    @property
    def n_forget(self) -> int:
        return int(self.k_m.shape[1])

    def stats(self, tau: float) -> TauStats:
        """The :class:`TauStats` of the grid value nearest to ``tau``."""
        i = int(np.argmin(np.abs(np.asarray(self.taus) - tau)))
        return self.per_tau[i]

    # -- per-sample table ------------------------------------------------------------------------
    def rows(self) -> Iterator[dict[str, Any]]:
        """One dict per (tau, sample): index, label, tau, k_m, k_a, d, r, leak (spec §4)."""
        for t, tau in enumerate(self.taus):
            r = per_sample_ratio(self.k_m[t], self.k_a[t])
            for i in range(self.n_forget):
                yield {
                    "index": int(self.index[i]),
                    "label": int(self.label[i]),
                    "tau": float(tau),
                    "k_m": int(self.k_m[t, i]),
                    "k_a": int(self.k_a[t, i]),
                    "d": None if self.d is None else int(self.d[t, i]),
                    "r": float(r[i]),
                    "leak": bool(self.k_m[t, i] > self.k_a[t, i]),
                }

    def write_csv(self, path) -> Path:
        """The per-sample table as CSV (``r`` written as ``inf`` for unbounded, ``d`` empty when the
        models saw different copies)."""
        path = Path(path)
        cols = ["index", "label", "tau", "k_m", "k_a", "d", "r", "leak"]
        buf = io.StringIO(newline="")
        w = csv.writer(buf)
        w.writerow(cols)
        for row in self.rows():
            w.writerow(["" if row[k] is None else row[k] for k in cols])
        atomic_write(path, buf.getvalue().encode())  # never a truncated file (a full disk, a killed run)
        return path

    def top_leaks(self, n: int = 10, tau: float | None = None) -> list[dict[str, Any]]:
        """The ``n`` samples with the largest k_m - k_a > 0 (ties: larger k_m first). With ``tau`` the
        grid value nearest to it; without, each sample at the tau where its gap is largest (ties: smaller
        tau). Rows as in :meth:`rows` plus ``gap``."""
        if tau is not None:
            ts = np.full(self.n_forget, int(np.argmin(np.abs(np.asarray(self.taus) - tau))))
        else:
            ts = np.argmax(self.k_m - self.k_a, axis=0)
        cols = np.arange(self.n_forget)
        km, ka = self.k_m[ts, cols], self.k_a[ts, cols]
        gap = km - ka
        order = np.lexsort((-km, -gap))
        out = []
        for i in order[: max(int(n), 0)]:
            if gap[i] <= 0:
                break
            t = ts[i]
            out.append(
                {
                    "index": int(self.index[i]),
                    "label": int(self.label[i]),
                    "tau": float(self.taus[t]),
                    "k_m": int(km[i]),
                    "k_a": int(ka[i]),
                    "d": None if self.d is None else int(self.d[t, i]),
                    "r": float(per_sample_ratio(km[i : i + 1], ka[i : i + 1])[0]),
                    "leak": True,
                    "gap": int(gap[i]),
                }
            )
        return out

    # -- summary ---------------------------------------------------------------------------------
    def to_json(
        self,
        *,
        scenario: str | None = None,
        seed: int | None = None,
        method: str | None = None,
        reference: str | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        """The JSON summary of spec §4 as a JSON-serialisable dict (``json.dump`` it, or use
        :meth:`write_json`). ``seed`` is the run seed (defaults to the noise seed); ``extra`` keys are
        added at the top level."""
        out: dict[str, Any] = {
            "scenario": scenario,
            "seed": self.seed if seed is None else seed,
            "method": method,
            "reference": reference,
            "probe": {"name": self.probe, "params": dict(self.probe_params)},
            "craft_on": self.craft_on,
            "c": self.c,
            "n_forget": self.n_forget,
            "noise_seed": self.seed,
            "block_size": self.block_size,
            "bootstrap": {"B": self.bootstrap, "seed": self.bootstrap_seed},
            "per_tau": [s.to_dict() for s in self.per_tau],
            "timing": {
                "seconds": self.timing.seconds,
                "forward_passes": self.timing.forward_passes,
                "backward_passes": self.timing.backward_passes,
            },
            "device": self.device,
            "bf16": self.bf16,
            "bf16_mismatch": self.bf16_mismatch,
            "notes": list(self.notes),
        }
        out.update(extra)
        return out

    def write_json(self, path, **kwargs) -> Path:
        path = Path(path)
        atomic_write(path, (json.dumps(self.to_json(**kwargs), indent=2) + "\n").encode())
        return path


# ==================================================================================================
# estimator
