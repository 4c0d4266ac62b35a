"""summary.json: the per-seed results aggregated per row (metrics, paired gaps to Re-train, residual-knowledge
curves with and without Re-train, collateral damage, calibration) and what was run on which machine."""

from __future__ import annotations

import platform

import numpy as np
import torch

from .. import __version__, machine
from ..audit.estimate import RetrainEstimate
from ..audit.free import free_taus
from ..audit.metric_specs import PCT_KEYS, PCT_METRICS, RELEARN, RETAIN, cell_failure
from ..audit.metrics import aggregate, avg_gap
from ..config import ConfigError, to_dict
from ..methods.base import FinetuneConfig, get_method, parse_variant
from .claims import check_claims

REFERENCE_ROWS = ("original", "retrain")
#: A row whose retain accuracy is this many points below Re-train's is marked degenerate (decision).
DEGENERATE_RETAIN_DROP = 20.0
CURVE_FIELDS = ("r_paper", "r_pooled", "prevalence", "ties", "acc_m", "acc_a", "disagreement")


def _mean_curve(summaries: list[dict], fieldname: str) -> tuple[list, list]:
    """Per-tau mean and std (ddof 0) over seeds of one audit field; None where no seed defines it."""
    rows = np.array([[np.nan if t.get(fieldname) is None else t[fieldname] for t in s["per_tau"]] for s in summaries])
    mean, std = [], []
    for col in rows.T:
        ok = col[~np.isnan(col)]
        mean.append(float(ok.mean()) if len(ok) else None)
        std.append(float(ok.std()) if len(ok) else None)
    return mean, std


def _kind(name: str) -> tuple[str, str]:
    """(base method, "reference" | "finetune" | "training-free") of a report row."""
    if name in REFERENCE_ROWS:
        return name, "reference"
    try:
        base = parse_variant(name)[0]
    except ConfigError:  # a row that is not a registered method (hand-made results)
        return name, "other"
    return base, "finetune" if issubclass(get_method(base).config_cls, FinetuneConfig) else "training-free"


def summarise(scenario_name: str, probe: str, results: list, names: list[str]) -> dict:
    """The summary.json structure: :func:`aggregate_seeds`, then the claims check on it (:mod:`rurk.report.claims`)."""
    out = aggregate_seeds(scenario_name, probe, results, names)
    out["claims"] = check_claims(out)
    return out


def aggregate_seeds(scenario_name: str, probe: str, results: list, names: list[str]) -> dict:
    """Aggregate per-seed results (``experiment.SeedResult``) per row, with the per-seed values that the claims
    check needs: metrics, then the paired gaps to Re-train (they need every row), then the degenerate marks."""
    out = {"scenario": scenario_name, "seeds": [r.seed for r in results], "probe": probe,
           "methods": {name: _row_entry(name, probe, results) for name in names}}
    for name, entry in out["methods"].items():
        _paired_gaps(entry, name, results)
        per_seed_gaps = [avg_gap(r.metrics[name], r.metrics["retrain"])
                         if _ok(r.metrics, name) and _ok(r.metrics, "retrain") else None for r in results]
        agg = aggregate([g for g in per_seed_gaps if g is not None])
        entry["avg_gap_per_seed"] = {"mean": agg["mean"], "std": agg["std"], "values": per_seed_gaps}
    _mark_degenerate(out["methods"])
    return out


def _row_entry(name: str, probe: str, results: list) -> dict:
    """One row's entry: what it is, its failures, the metrics over seeds, calibration, wall time, residual curves."""
    per_seed = [r.metrics.get(name, {}) for r in results]
    failed = [m for m in per_seed if cell_failure(m)]
    base, kind = _kind(name)
    entry: dict = {"base": base, "kind": kind, "n_seeds": len(per_seed) - len(failed)}
    if failed:
        entry["failed"] = [{"seed": r.seed, **{k: v for k, v in m.items() if k != "traceback"}}
                           for r, m in zip(results, per_seed) if cell_failure(m)]
    ok = [m for m in per_seed if not cell_failure(m)]
    for spec in PCT_METRICS:
        k = spec.key
        agg = aggregate([spec.scale * m[k] for m in ok]) if ok else {"mean": None, "std": None}
        entry[k] = {"mean": agg["mean"], "std": agg["std"],
                    "per_seed": [None if cell_failure(m) else spec.scale * m[k] for m in per_seed]}
    if ok and RELEARN.key in ok[0]:
        agg = aggregate([m.get(RELEARN.key) for m in ok])
        entry["relearn_epochs"] = {"mean": agg["mean"], "std": agg["std"], "censored": agg["censored"],
                                   "per_seed": [None if cell_failure(m) else m.get(RELEARN.key) for m in per_seed]}
    else:
        entry["relearn_epochs"] = {"mean": None, "std": None, "censored": 0}
    calib = [{"seed": r.seed, **{k: c[k] for k in ("target", "chosen_step", "reached_at", "forget_at_chosen")}}
             for r in results if (c := ((r.records.get(name) or {}).get("extra") or {}).get("calibration"))]
    if calib:
        entry["calibration"] = calib
    walls = [r.records.get(name, {}).get("wall_s") for r in results]
    walls = [w for w in walls if w is not None]
    entry["wall_s"] = float(np.mean(walls)) if walls else None
    residual = _residual_entry(name, probe, results)
    if residual is not None:
        entry["residual"] = residual
    coll = _collateral_entry(name, results)
    if coll:
        entry["collateral"] = coll
    return entry


def _collateral_entry(name: str, results: list) -> dict:
    """The row's accuracy on perturbed copies of the forget classes' test and retained images per τ
    (:func:`rurk.audit.free.collateral`): per seed, mean over seeds (in %), and the paired per-seed gap to
    Re-train's (points; negative: the row recognises noisy images of the class less often than Re-train)."""
    out = {}
    for kind in ("test", "retained"):
        per_seed, gaps = [], []
        for r in results:
            c = (r.metrics.get(name) or {}).get("collateral") or {}
            ref = (r.metrics.get("retrain") or {}).get("collateral") or {}
            if kind in c:
                per_seed.append([100 * v for v in c[kind]])
                if kind in ref:
                    gaps.append([100 * (v - w) for v, w in zip(c[kind], ref[kind])])
        if per_seed:
            out["taus"] = next(((r.metrics.get(name) or {}).get("collateral") or {}).get("taus")
                               for r in results if (r.metrics.get(name) or {}).get("collateral"))
            out[kind] = [float(v) for v in np.mean(per_seed, 0)]
            out[f"{kind}_per_seed"] = per_seed
            if gaps:
                out[f"{kind}_gap"] = [float(v) for v in np.mean(gaps, 0)]
                out[f"{kind}_gap_per_seed"] = gaps
    return out


def _residual_entry(name: str, probe: str, results: list) -> dict | None:
    """A row's residual-knowledge curves over seeds (mean and std per tau) and, where the seeds have an estimate of
    Re-train (:func:`_free_entry`), the same without Re-train; Re-train is the reference (r = 1)."""
    if name == "retrain":
        taus = results[0].residual.get("original", {}) or {}
        taus = [t["tau"] for t in taus.get("per_tau", [])]
        n = len(taus)
        return {"probe": probe, "taus": taus, "r_paper": [1.0] * n, "r_pooled": [1.0] * n,
                "prevalence": [0.0] * n, "ties": [1.0] * n, "disagreement": [0.0] * n, "note": "reference: r = 1",
                **_free_entry(name, results)}
    audits = [r.residual.get(name) for r in results if r.residual.get(name)]
    if not audits:
        return None
    res = {"probe": probe, "taus": [t["tau"] for t in audits[0]["per_tau"]]}
    for f in CURVE_FIELDS:
        res[f], res[f + "_std"] = _mean_curve(audits, f)
    res["n_unbounded"] = _mean_curve(audits, "n_unbounded")[0]
    res["r_pooled_per_seed"] = [[t["r_pooled"] for t in a["per_tau"]] for a in audits]
    res["prevalence_per_seed"] = [[t["prevalence"] for t in a["per_tau"]] for a in audits]
    res["r_pooled_ci95_per_seed"] = [[(t.get("ci95") or {}).get("r_pooled") for t in a["per_tau"]] for a in audits]
    res.update(_free_entry(name, results))
    return res


def _free_entry(name: str, results: list) -> dict:
    """The row's audit without Re-train over seeds (:mod:`rurk.audit.free`): per seed, its accuracy on the forget
    copies (Re-train's own, for the Re-train row: r_free is then the estimate's error) over the seed's estimate,
    with interval and verdict; the mean and std of r_free per τ. Empty where a seed has no estimate."""
    per_seed = []
    for r in results:
        audit = r.residual.get("original" if name == "retrain" else name)
        if not audit or not getattr(r, "estimate", None):
            continue
        est = RetrainEstimate.from_dict(r.estimate)
        acc = np.array([t["acc_a" if name == "retrain" else "acc_m"] for t in audit["per_tau"]], dtype=float)
        calib = ((r.records.get(name) or {}).get("extra") or {}).get("calibration") if name != "retrain" else None
        per_seed.append(free_taus(acc, est, calib.get("tau") if calib else None))
    if not per_seed:
        return {}
    r_free = np.array([[np.nan if t.r_free is None else t.r_free for t in seed] for seed in per_seed])
    return {"r_free": [float(v) for v in np.nanmean(r_free, 0)], "r_free_std": [float(v) for v in np.nanstd(r_free, 0)],
            "r_free_per_seed": [[t.r_free for t in seed] for seed in per_seed],
            "r_free_ci95_per_seed": [[(t.lo, t.hi) for t in seed] for seed in per_seed],
            "r_free_verdict_per_seed": [[t.verdict for t in seed] for seed in per_seed],
            "r_free_circular_tau": next((t.tau for seed in per_seed for t in seed
                                         if t.reason and "calibrated stopping" in t.reason), None)}


def _mark_degenerate(methods: dict) -> None:
    """Mark the rows whose retain accuracy is more than DEGENERATE_RETAIN_DROP points below Re-train's."""
    rt = methods.get("retrain", {}).get(RETAIN.key, {}).get("mean")
    for entry in methods.values():
        m = entry[RETAIN.key]["mean"]
        if rt is not None and m is not None and rt - m > DEGENERATE_RETAIN_DROP:
            entry["degenerate"] = f"retain accuracy {m:.1f}% is {rt - m:.1f} points below Re-train's {rt:.1f}%"


def _ok(metrics: dict, name: str) -> bool:
    """Row ``name`` has its metrics in this seed's ``metrics`` (it neither failed nor diverged)."""
    return not cell_failure(metrics.get(name))


def _paired_gaps(entry: dict, name: str, results: list) -> None:
    """Gaps to Re-train on the **same seeds** (paired): the seeds where both this row and Re-train have a result.

    ``entry[k]["gap"]`` is |mean − Re-train's mean| of metric k in points over those seeds, ``avg_gap`` the
    Avg. Gap of those means (the paper's number when nothing failed), ``gap_seeds`` the seeds it covers — a row
    that failed on some seeds is compared with Re-train on the others only, never with Re-train's mean over
    seeds the row does not have."""
    both = [r for r in results if _ok(r.metrics, name) and _ok(r.metrics, "retrain")]
    entry["gap_seeds"] = [r.seed for r in both]
    if not both or name == "retrain":
        for k in PCT_KEYS:
            entry[k]["gap"] = 0.0 if both else None
        entry["avg_gap"] = 0.0 if both else None
    else:
        mean = {k: float(np.mean([r.metrics[name][k] for r in both])) for k in PCT_KEYS}
        ref = {k: float(np.mean([r.metrics["retrain"][k] for r in both])) for k in PCT_KEYS}
        for spec in PCT_METRICS:
            entry[spec.key]["gap"] = spec.scale * abs(mean[spec.key] - ref[spec.key])
        entry["avg_gap"] = avg_gap(mean, ref)




def cpu_model() -> str:
    """The CPU in a readable line (model name, vendor, family/model/stepping, torch's dispatch): benches print it
    beside their timings. See :mod:`rurk.machine` for everything that changes the floats."""
    return machine.short(machine.machine())


def machine_of(results: list, device) -> dict:
    """The fingerprint of the cells behind a report (:mod:`rurk.machine`): ``digest`` hashes the set of the cells'
    machine digests, their torch thread counts and the device, so two reports share it exactly when their cells were
    computed on the same machines at the same counts; it is None when some cell does not name its machine (a record
    written by an older rurk). ``short`` is the readable form, from this process's machine when every cell was
    computed on it."""
    spent = [c for r in results for c in r.spent]
    threads = sorted({c["threads"] for c in spent if c.get("threads")})
    digests = {c.get("machine") for c in spent}
    here = machine.machine()
    same = digests == {machine.digest(here)}
    out = {"digest": None if None in digests or not digests else
           machine.digest({"machines": sorted(digests), "threads": threads, "device": device}),
           "short": machine.short(here) if same else
           f"{len(digests - {None})} machine(s){' and cells of unknown machines' if None in digests else ''}",
           "threads": threads}
    if same:
        out["fingerprint"] = machine.fingerprint(threads, device)
    return out


def run_info(scenario, spec, results: list, names: list[str]) -> dict:
    """What was run, for the report: versions, device, the machine (its fingerprint, :func:`machine_of`), torch's
    CPU threads, seeds, the audit settings, the reference recipe and every method's resolved config (after presets,
    tuning, ``--set`` and variants)."""
    audits = [a for r in results for a in r.residual.values() if a]
    configs = {}
    for name in names:
        rec = next((r.records.get(name) for r in results if isinstance(r.records.get(name), dict)
                    and r.records[name].get("config")), None)
        if rec:
            configs[name] = rec["config"]
    device = audits[0].get("device") if audits else None
    mach = machine_of(results, device)
    return {"versions": {"rurk": __version__, "torch": torch.__version__, "python": platform.python_version()},
            "device": device, "cpu": mach["short"], "machine": mach,
            # the counts the cells were computed with (CPU results are bit-identical only at the same count)
            "threads": mach["threads"],
            "seeds": [r.seed for r in results],
            "audit": spec.key(), "original_recipe": to_dict(scenario.train), "retrain_recipe": to_dict(scenario.retrain_optim()),
            "pretrain": to_dict(scenario.pretrain) if scenario.pretrain.dataset else None, "tuned": scenario.tuned,
            "split_seed": scenario.seeds.split, "methods": configs}
