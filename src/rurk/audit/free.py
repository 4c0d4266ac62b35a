"""Residual knowledge without Re-train: the audited model's accuracy on perturbed forget copies against the
estimate of Re-train's (:mod:`rurk.audit.estimate`).

Nobody who audits an unlearned model in practice has a Re-train model — avoiding re-training is why approximate
unlearning exists. This audit needs the model before unlearning (Original), the forget set and a calibration set
(held-out images of the forget set's classes; the retain set makes the estimate better). Per τ of the grid:

    r_free(τ) = acc_m(τ) / estimate(τ)

``acc_m`` from the same counting kernel and noise blocks as the audit with Re-train (common random numbers: on
the same copies, ``r_free / r_pooled`` = Re-train's accuracy / the estimate, the same for every model of a
forget set), its 95% interval ``[acc_m / hi, acc_m / lo]`` from the estimate's (whose width is the estimator's
validated error or its bootstrap, the larger), and a **verdict** per τ only where the interval allows it:

- *residual knowledge* — the whole interval above 1 + :data:`BAND`;
- *as Re-train* — the whole interval within 1 ± :data:`BAND` (the claims check's band);
- *over-forgetting* — the whole interval below 1 − :data:`BAND`;
- *inconclusive* otherwise, and *no verdict* (with the reason) where the estimate is not validated
  (:meth:`rurk.audit.estimate.RetrainEstimate.reason`).

**Circular rows.** A model unlearned with calibrated stopping stopped where its forget accuracy met the same
estimate at the rule's τ, so there ``r_free`` ≈ 1 by construction and says nothing; such a result is marked
(``circular_tau``) and its verdict at that τ is *no verdict*.
"""

from __future__ import annotations

import csv
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from torch import nn

from ..data.tensordata import TensorData
from ..store import atomic_output, write_json
from .estimate import EstimateSpec, RetrainEstimate, estimate_retrain, original_counts
from .kernel import check_inputs, count_correct
from .spec import AuditSpec

#: "as Re-train" means |r − 1| ≤ BAND (the claims check's R_TOL)
BAND = 0.05
VERDICTS = ("residual knowledge", "as Re-train", "over-forgetting", "inconclusive")


@dataclass
class FreeTau:
    """One τ of the audit without Re-train."""

    tau: float
    acc_m: float
    estimate: float
    estimate_lo: float | None
    estimate_hi: float | None
    r_free: float | None
    lo: float | None
    hi: float | None
    verdict: str  # one of VERDICTS, or "no verdict"
    reason: str | None = None  # why no verdict


@dataclass
class FreeResult:
    """The audit without Re-train of one model: per τ, and the estimate it divides by."""

    per_tau: list[FreeTau]
    estimate: RetrainEstimate
    k_m: np.ndarray  # (len(taus), n) correct copies per forget sample
    c: int
    labels: np.ndarray
    index: np.ndarray
    circular_tau: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def taus(self) -> list[float]:
        return [t.tau for t in self.per_tau]

    def stats(self, tau: float) -> FreeTau:
        return next(t for t in self.per_tau if t.tau == tau)

    def to_dict(self) -> dict:
        return {"kind": "residual knowledge without Re-train (rurk.audit.free)", "c": self.c,
                "per_tau": [asdict(t) for t in self.per_tau], "estimate": self.estimate.to_dict(),
                "circular_tau": self.circular_tau, "notes": list(self.notes), "band": BAND}

    def write_json(self, path, **meta) -> Path:
        return write_json(Path(path), {**meta, **self.to_dict()})

    def write_csv(self, path) -> Path:
        """One row per (τ, forget sample): index, label, τ, k_m, the model's accuracy on the sample's copies, the
        estimate of Re-train's accuracy on its class, and their ratio (the leak score the gallery ranks by)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        per_class = {int(k): np.asarray(v["estimate"]) for k, v in self.estimate.classes.items()}
        with atomic_output(path) as tmp, open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["index", "label", "tau", "k_m", "acc_m", "estimate_class", "ratio"])
            for t, tau in enumerate(self.taus):
                for i in range(self.k_m.shape[1]):
                    acc, est = self.k_m[t, i] / self.c, float(per_class[int(self.labels[i])][t])
                    w.writerow([int(self.index[i]), int(self.labels[i]), tau, int(self.k_m[t, i]), f"{acc:.4f}",
                                f"{est:.4f}", "" if est <= 0 else f"{acc / est:.4f}"])
        return path

    def leak_scores(self, tau: float) -> np.ndarray:
        """Per forget sample at ``tau``: the model's accuracy on its copies / the estimate for its class — the
        gallery's ranking (the higher, the more the model still recognises the sample beyond Re-train)."""
        t = self.taus.index(tau)
        per_class = {int(k): float(np.asarray(v["estimate"])[t]) for k, v in self.estimate.classes.items()}
        est = np.array([per_class[int(y)] for y in self.labels])
        return (self.k_m[t] / self.c) / np.maximum(est, 1e-9)


def verdict(lo: float | None, hi: float | None, band: float = BAND) -> str:
    """The three-way verdict of an interval of r (module docstring); *inconclusive* when it straddles a bound."""
    if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)):
        return "inconclusive"
    if lo > 1 + band:
        return "residual knowledge"
    if hi < 1 - band:
        return "over-forgetting"
    if lo >= 1 - band and hi <= 1 + band:
        return "as Re-train"
    return "inconclusive"


def free_taus(acc_m: np.ndarray, est: RetrainEstimate, circular_tau: float | None = None) -> list[FreeTau]:
    """Per τ: r_free, its interval and its verdict from the model's accuracies and the estimate."""
    out = []
    for i, tau in enumerate(est.taus):
        a, e, lo_e, hi_e = float(acc_m[i]), float(est.acc[i]), float(est.lo[i]), float(est.hi[i])
        r = a / e if e > 0 else None
        have = bool(np.isfinite(lo_e) and np.isfinite(hi_e))
        lo = a / hi_e if have and hi_e > 0 else None
        hi = (a / lo_e if lo_e > 0 else math.inf) if have else None
        reason = est.reason(i)
        if reason is None and circular_tau is not None and abs(tau - circular_tau) < 1e-12:
            reason = (f"the model was unlearned with calibrated stopping on this estimate at τ = {tau:g}: r_free ≈ 1 "
                      "there by construction")
        v = "no verdict" if reason else verdict(lo, hi)
        out.append(FreeTau(float(tau), a, e, lo_e if have else None, hi_e if have else None, r, lo,
                           None if hi is None or not math.isfinite(hi) else hi, v, reason))
    return out


def residual_free(model: nn.Module, original: nn.Module, forget: TensorData, calib: TensorData, *,
                  num_classes: int, retain: TensorData | None = None, spec: AuditSpec, seed: int,
                  estimate: RetrainEstimate | None = None, circular_tau: float | None = None,
                  cache_dir=None, progress: bool | None = None) -> FreeResult:
    """Audit ``model`` without Re-train (module docstring): its counts on the forget copies with the audit's
    kernel, noise and seed; the estimate from ``original`` (computed unless given)."""
    if estimate is None:
        espec = estimate_spec(spec, seed)
        estimate = estimate_retrain(original, forget, calib, espec, num_classes=num_classes, retain=retain,
                                    counts=original_counts(original, calib, espec, progress=progress),
                                    cache_dir=cache_dir)
    if list(estimate.taus) != list(spec.taus):
        raise ValueError(f"the estimate's τ grid {estimate.taus} is not the audit's {list(spec.taus)}")
    inputs = check_inputs(model, model, forget.x, forget.y, index=forget.index, max_forget=spec.max_forget, seed=seed)
    counts = count_correct(model, model, inputs, spec.make_probe(), spec, seed, progress=progress)
    acc_m = counts.k_m.mean(1) / spec.draws
    notes = list(estimate.warnings)
    if estimate.mode == "no_retain":
        notes.append("no retain set: the estimate has neither the learning-curve correction nor the difficulty "
                     "shift, and its interval is the wider one validated for that case")
    return FreeResult(free_taus(acc_m, estimate, circular_tau), estimate, counts.k_m, spec.draws,
                      inputs.y.cpu().numpy(), inputs.index, circular_tau, notes)


def estimate_spec(spec: AuditSpec, seed: int, **overrides) -> EstimateSpec:
    """The estimate that goes with an audit: the audit's probe and τ grid, seeded with its noise seed."""
    probe = spec.probe if isinstance(spec.probe, str) else spec.probe.name
    return EstimateSpec(probe=probe, probe_params=dict(spec.probe_params), taus=tuple(spec.taus), seed=seed,
                        **overrides)


# ---------------------------------------------------------------------------------------------- collateral damage
#: copies per image and images per set of the collateral measurement (decision: 100 images x 4 copies is 400
#: copies per τ — a sampling error of about 4 points on an accuracy near 0.8, against the 20-30 points the
#: tilt costs — and half a second per row on a CPU, a tenth of the demo's audit)
COLLATERAL_DRAWS, COLLATERAL_MAX = 4, 100


def class_sets(data, classes) -> dict[str, TensorData]:
    """The forget classes' *test* images and their *retained* images (at most :data:`COLLATERAL_MAX` each, a seeded
    subset beyond that): what an unlearned model must still recognise, noisy or not."""
    import torch

    out = {}
    for name, d in (("test", data.test), ("retained", data.retain)):
        if d is None or not len(d):
            continue
        rows = torch.nonzero(torch.isin(d.y.cpu(), torch.as_tensor(list(classes)))).flatten()
        if len(rows) > COLLATERAL_MAX:
            g = torch.Generator().manual_seed(0)
            rows = rows[torch.randperm(len(rows), generator=g)[:COLLATERAL_MAX]].sort().values
        if len(rows):
            out[name] = d.subset(rows)
    return out


def collateral(model: nn.Module, sets: dict[str, TensorData], spec: AuditSpec, seed: int) -> dict:
    """The model's accuracy on perturbed copies (the audit's probe and τ grid, :data:`COLLATERAL_DRAWS` copies) of
    the forget classes' test and retained images: ``{"taus": [...], "test": [acc per τ], "retained": [...]}``. The
    perturbed forget term of RURK-like methods generalises to noisy images of the whole class; beside Re-train's
    this shows what the unlearned model lost on the class it must still recognise."""
    cspec = AuditSpec(probe=spec.probe, probe_params=dict(spec.probe_params), taus=spec.taus, draws=COLLATERAL_DRAWS,
                      bootstrap=0)
    out = {"taus": list(spec.taus), "draws": COLLATERAL_DRAWS}
    for name, d in sets.items():
        inputs = check_inputs(model, model, d.x, d.y, index=d.index)
        k = count_correct(model, model, inputs, cspec.make_probe(), cspec, seed).k_m
        out[name] = (k.mean(1) / COLLATERAL_DRAWS).tolist()
        out[f"n_{name}"] = len(d)
    return out
