"""Multi-seed aggregation and the report files of `rurk run`.

Writes, under the scenario's run directory:

- ``summary.json`` — per method: mean/std over seeds of every metric (accuracies and MIA in percent),
  Avg. Gap to Re-train on the seed means, wall time, and the residual-knowledge curves;
- ``report.md`` — the paper's Table-1 layout "mean ± std (gap)", plus the prevalence, perturbed
  unlearn-accuracy and disagreement tables over tau;
- ``table.csv``, ``prevalence.csv``, ``perturbed_unlearn.csv``, ``disagreement.csv``;
- ``residual.png`` — r_tau vs tau for every method (Re-train is the line at 1).

Every number in the report is recomputed from the stored per-seed results, never copied by hand.
"""

from __future__ import annotations

import math
import platform
from pathlib import Path

import numpy as np
import torch

from . import __version__, machine
from .attack_report import attack_sections
from .audit_free import free_taus
from .claims import check_claims, claims_markdown
from .estimate import RetrainEstimate
from .config import ConfigError, to_dict
from .methods.base import FinetuneConfig, get_method, parse_variant
from .metric_specs import LABELS, PCT_KEYS, PCT_METRICS, RELEARN, RETAIN, cell_failure, failure_reason
from .metrics import aggregate, avg_gap
from .plots import calibration_figure, plot_residual_curves
from .figures import save_png
from .store import atomic_write, write_json
from .tables import markdown, write_csv  # re-exported: cli and readme import them from here

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
    """The summary.json structure: :func:`aggregate_seeds`, then the claims check on it (:mod:`rurk.claims`)."""
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
    (:func:`rurk.audit_free.collateral`): per seed, mean over seeds (in %), and the paired per-seed gap to
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
    """The row's audit without Re-train over seeds (:mod:`rurk.audit_free`): per seed, its accuracy on the forget
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


# ---------------------------------------------------------------------------------------------- tables
def _fmt(v, nd=2) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{nd}f}"


def key_taus(taus: list[float]) -> list[int]:
    """Indices of the three τ every report shows: 0 (the clean forget-set gap, which alone makes r > 1), the
    grid value nearest the paper's 0.03, and the largest — so a reader sees how much of r_τ the perturbation adds."""
    if not taus:
        return []
    want = [int(np.argmin(taus)), int(np.argmin([abs(t - 0.03) for t in taus])), int(np.argmax(taus))]
    return sorted(set(want), key=want.index)


def _taus_of(summary: dict) -> list[float]:
    return next((e["residual"]["taus"] for e in summary["methods"].values() if (e.get("residual") or {}).get("taus")), [])


def shown_gap(name: str, entry: dict, k: str) -> float | None:
    """The gap to Re-train of metric ``k`` that the tables show for row ``name``: the paired gap the summary
    stores (``entry[k]["gap"]``, see :func:`_paired_gaps`); none for Re-train itself, whose gap is 0 by
    definition."""
    return None if name == "retrain" else entry[k].get("gap")


def main_table(summary: dict) -> tuple[list[str], list[list[str]]]:
    """Table-1 rows: mean ± std (|gap to Re-train|) per metric, Avg. Gap, Re-learn, then r_pooled at the key τ
    and the prevalence (with the fraction of ties k_m = k_a) at the largest τ, and wall time."""
    methods = summary["methods"]
    taus = _taus_of(summary)
    ki = key_taus(taus)
    header = ["method", *[LABELS[k] for k in PCT_KEYS], "Avg. Gap", RELEARN.label,
              *[f"r_pooled τ={taus[i]:.3g}" for i in ki]]
    if taus:
        header.append(f"prevalence (ties) τ={taus[ki[-1]]:.3g}")
        header.append(f"worst \\|r−1\\| τ≤{min(max(taus), WORST_TAU):.3g}")
        if _has_collateral(summary):
            header.append(f"class test acc τ={taus[ki[-1]]:.3g}")
    header.append("wall (s)")
    rows = []
    for name, e in methods.items():
        if e["n_seeds"] == 0:
            why = "; ".join(map(failure_reason, e.get("failed", [])))
            n = len(e.get("failed", []))
            rows.append([f"{name} (failed on {n} of {n} seeds)", *(["–"] * (len(header) - 2)), f"failed: {why}"[:80]])
            continue
        marks = []
        if e.get("failed"):
            marks.append(f"failed on {len(e['failed'])} of {len(e['failed']) + e['n_seeds']} seeds; gaps on seeds "
                         f"{', '.join(map(str, e.get('gap_seeds', [])))}")
        if e.get("degenerate"):
            marks.append("degenerate")
        cells = [name + (f" ({'; '.join(marks)})" if marks else "")]
        for spec in PCT_METRICS:
            m, s, nd = e[spec.key]["mean"], e[spec.key]["std"], spec.decimals
            gap = "" if (g := shown_gap(name, e, spec.key)) is None else f" ({g:.{nd}f})"
            cells.append(f"{_fmt(m, nd)} ± {_fmt(s, nd)}{gap}")
        # the gap of the seed means, ± the spread of the per-seed gaps (what a reader needs to judge a difference)
        sd = e["avg_gap_per_seed"]["std"] if len(e.get("gap_seeds", [])) > 1 and name != "retrain" else None
        cells.append(_fmt(e["avg_gap"]) + ("" if sd is None else f" ± {_fmt(sd)}"))
        rl = e["relearn_epochs"]
        if name == "original":
            cells.append("–")
        elif rl["mean"] is None:
            cells.append(">30" if rl.get("censored") else "–")
        else:
            cens = f" ({rl['censored']} >30)" if rl.get("censored") else ""
            cells.append(f"{_fmt(rl['mean'])} ± {_fmt(rl['std'])}{cens}")
        res = e.get("residual") or {}
        for i in ki:
            v, sd = (res.get("r_pooled") or [None] * len(taus))[i], (res.get("r_pooled_std") or [None] * len(taus))[i]
            cells.append("–" if v is None else f"{v:.3f}" + ("" if not sd else f" ± {sd:.3f}"))
        if taus:
            p, t = (res.get("prevalence") or [None] * len(taus))[ki[-1]], (res.get("ties") or [None] * len(taus))[ki[-1]]
            sd = (res.get("prevalence_std") or [None] * len(taus))[ki[-1]]  # its seed spread, as for every cell
            cells.append("–" if p is None else f"{100 * p:.0f}%" + ("" if not sd else f" ± {100 * sd:.0f}%")
                         + ("" if t is None else f" ({100 * t:.0f}%)"))
            cells.append(_worst_cell(name, res, taus))
            if _has_collateral(summary):
                cells.append(_collateral_cell(e.get("collateral") or {}, taus[ki[-1]]))
        cells.append(_fmt(e["wall_s"], 1))
        rows.append(cells)
    return header, rows


#: the largest τ of the "worst |r − 1|" column (issue: r within 0.10 of 1 at every τ ≤ 0.3)
WORST_TAU = 0.3


def worst_r(res: dict, taus: list[float]) -> list[float]:
    """Per seed: the largest |r_pooled − 1| over the grid's τ ≤ :data:`WORST_TAU` (how far from Re-train the row's
    whole profile strays, not only at the τ the claims read)."""
    sel = [i for i, t in enumerate(taus) if t <= WORST_TAU + 1e-12]
    return [max(abs(s[i] - 1) for i in sel if s[i] is not None) for s in res.get("r_pooled_per_seed") or []
            if any(s[i] is not None for i in sel)]


def _worst_cell(name: str, res: dict, taus: list[float]) -> str:
    if name == "retrain":
        return "0.000"
    w = worst_r(res, taus)
    if not w:
        return "–"
    return f"{np.mean(w):.3f}" + (f" ± {np.std(w):.3f}" if len(w) > 1 else "")


def _has_collateral(summary: dict) -> bool:
    return any(e.get("collateral") for e in summary["methods"].values())


def _collateral_cell(c: dict, tau: float) -> str:
    """``acc ± std (gap)`` of the forget classes' noisy test images at ``tau``, gap paired to Re-train's."""
    if not c.get("test") or tau not in c.get("taus", []):
        return "–"
    i = c["taus"].index(tau)
    vals = [s[i] for s in c["test_per_seed"]]
    gap = f" ({c['test_gap'][i]:+.1f})" if c.get("test_gap") else ""
    return f"{np.mean(vals):.1f}" + (f" ± {np.std(vals):.1f}" if len(vals) > 1 else "") + gap


def curve_table(summary: dict, fieldname: str, transform=lambda v: v, nd: int = 3) -> tuple[list[str], list[list[str]]]:
    methods = {n: e for n, e in summary["methods"].items() if e.get("residual")}
    taus = next((e["residual"]["taus"] for e in methods.values()), [])
    header = ["method", *[f"{t:.4f}" for t in taus]]
    rows = []
    for name, e in methods.items():
        vals = e["residual"].get(fieldname)
        if vals is None:
            continue
        rows.append([name, *[_fmt(None if v is None else transform(v), nd) for v in vals]])
    return header, rows


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


def numeric_table(summary: dict) -> tuple[list[str], list[list]]:
    """The main table as numbers (metrics.csv): means and stds in %, gaps in points, empty where undefined."""
    taus = _taus_of(summary)
    ki = key_taus(taus)
    header = ["method", "n_seeds"]
    for k in PCT_KEYS:
        header += [f"{k}_mean", f"{k}_std", f"{k}_gap"]
    header += ["avg_gap", "avg_gap_per_seed_mean", "avg_gap_per_seed_std", "relearn_mean", "relearn_std",
               "relearn_censored", *[f"r_pooled_tau{taus[i]:g}" for i in ki], *[f"r_paper_tau{taus[i]:g}" for i in ki]]
    if taus:
        header += [f"prevalence_tau{taus[ki[-1]]:g}", f"ties_tau{taus[ki[-1]]:g}"]
    header += ["wall_s", "failed_seeds", "degenerate"]
    rows = []
    for name, e in summary["methods"].items():
        row: list = [name, e["n_seeds"]]
        for k in PCT_KEYS:
            row += [e[k]["mean"], e[k]["std"], shown_gap(name, e, k)]
        rl = e["relearn_epochs"]
        row += [e["avg_gap"], e["avg_gap_per_seed"]["mean"], e["avg_gap_per_seed"]["std"], rl["mean"], rl["std"],
                rl.get("censored", 0)]
        res = e.get("residual") or {}
        for f in ("r_pooled", "r_paper"):
            vals = res.get(f) or [None] * len(taus)
            row += [vals[i] for i in ki]
        if taus:
            row += [(res.get("prevalence") or [None] * len(taus))[ki[-1]], (res.get("ties") or [None] * len(taus))[ki[-1]]]
        row += [e["wall_s"], len(e.get("failed", [])), e.get("degenerate", "")]
        rows.append(["" if v is None else v for v in row])
    return header, rows


def _run_markdown(summary: dict) -> list[str]:
    run = summary["run"]
    a = run["audit"]
    v = run["versions"]
    lines = ["## What was run", "",
             f"rurk {v['rurk']}, torch {v['torch']}, Python {v['python']}, device {run['device']}; seeds "
             f"{', '.join(map(str, run['seeds']))}.", "",
             f"Audit: probe `{a['probe']}` with parameters {a['probe_params'] or 'default'}, c = {a['draws']} perturbed "
             f"copies per sample, τ grid {[round(t, 4) for t in a['taus']]}, {a['bootstrap']} bootstrap resamples, "
             f"noise seed {'the run seed' if a['noise_seed'] is None else a['noise_seed']}"
             + (f", {a['max_forget']} forget samples" if a["max_forget"] else "") + ".", "",
             f"Original recipe: `{_compact(run['original_recipe'])}`; Re-train: `{_compact(run['retrain_recipe'])}`"
             + (f"; pre-training: `{_compact(run['pretrain'])}`" if run.get("pretrain") else "") + ".", "",
             f"Method settings as run (presets, then tuned values from `{run['tuned']}`, then overrides and variants):", ""]
    lines += [f"- **{n}**: `{_compact(c)}`" for n, c in run["methods"].items()]
    return lines + [""]


def _compact(d: dict) -> str:
    return ", ".join(f"{k}={round(v, 6) if isinstance(v, float) else v}" for k, v in d.items())


def write_report(scenario, spec, results: list, out_dir: Path, names: list[str]) -> dict:
    """Aggregate, then write summary.json, report.md, the CSV tables and residual.png."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    probe = spec.make_probe().name
    summary = summarise(scenario.name, probe, results, names)
    summary["run"] = run_info(scenario, spec, results, names)
    write_json(out_dir / "summary.json", summary)
    tables = write_tables(summary, out_dir)
    _plot_residual(summary, results, out_dir, f"{scenario.name}: residual knowledge vs Re-train ({probe} probe, ")
    calib = calibration_rows(results, names)
    if calib:
        save_png(calibration_figure(calib, f"{scenario.name}: calibrated stopping (ring = kept checkpoint)"),
                 out_dir / "calibration.png", dpi=110)
    planned = {n: next(((r.records.get(n) or {}).get("extra") or {}).get("planned_steps") for r in results)
               for n in calib}
    text = [*_head_markdown(scenario, results, tables), *_marks_markdown(summary),
            "## Claims check (computed from the numbers above; see `rurk.claims` for the rules)", "",
            claims_markdown(summary["claims"]), "", *calibration_markdown(calib, planned),
            *_residual_markdown(probe, tables), *attack_sections(results, out_dir, names, probe, scenario.name)]
    text += _run_markdown(summary) + time_markdown(results)
    atomic_write(out_dir / "report.md", "\n".join(text).encode())
    return summary


def write_tables(summary: dict, out_dir: Path) -> dict[str, tuple[list[str], list[list[str]]]]:
    """Write metrics.csv and one CSV per report table; return the report tables by name."""
    write_csv(out_dir / "metrics.csv", *numeric_table(summary))
    tables = {
        "table": main_table(summary),
        "prevalence": curve_table(summary, "prevalence", lambda v: 100 * v, 1),
        "ties": curve_table(summary, "ties", lambda v: 100 * v, 1),
        "r_pooled": curve_table(summary, "r_pooled"),
        "r_paper": curve_table(summary, "r_paper"),
        "perturbed_unlearn": curve_table(summary, "acc_m", lambda v: 1 - v),
        "disagreement": curve_table(summary, "disagreement"),
        "r_free": curve_table(summary, "r_free"),
        "free": free_table(summary),
    }
    for name, (h, r) in tables.items():
        write_csv(out_dir / f"{name}.csv", h, r)
    return tables


def _plot_residual(summary: dict, results: list, out_dir: Path, title: str) -> None:
    """residual.png: r_tau of every row but Re-train, with bootstrap bands (one seed) or ± std over seeds."""
    one = len(results) == 1
    curves = {
        n: {"taus": e["residual"]["taus"], "r_paper": e["residual"]["r_paper"], "r_pooled": e["residual"]["r_pooled"],
            "ci": ({"r_pooled": e["residual"]["r_pooled_ci95_per_seed"][0]} if one else
                   {f: _band(e["residual"], f) for f in ("r_paper", "r_pooled")})}
        for n, e in summary["methods"].items() if e.get("residual") and n != "retrain"
    }
    if curves:
        bands = "one seed; bands: bootstrap 95% over forget samples" if one else f"{len(results)} seeds; bands: ± std over seeds"
        plot_residual_curves(curves, out_dir / "residual.png", title=f"{title}{bands})")


def _head_markdown(scenario, results: list, tables: dict) -> list[str]:
    """The report's title, what its numbers mean, and the main table."""
    seeds = ", ".join(str(r.seed) for r in results)
    return [
        f"# {scenario.name}: unlearning report",
        "",
        f"{scenario.description}",
        "",
        f"Seeds: {seeds} (n = {len(results)}); mean ± std (ddof 0) over seeds, in %; in parentheses the absolute "
        "gap to Re-train. Avg. Gap = mean gap over Retain, Unlearn, Test and MIA, on the seed means (lower is "
        "better). Re-learn: epochs of fine-tuning on S_f until its loss is back to 1.05 × Original's.",
        "",
        markdown(*tables["table"]),
        "",
    ]


#: the residual-knowledge tables of report.md: (table name, heading)
RESIDUAL_SECTIONS = (
    ("r_pooled", "r_pooled = acc_m / acc_a on perturbed forget samples (> 1: residual knowledge; < 1: over-forgetting)"),
    ("r_paper", "r_paper: the paper's mean of per-sample k_m/k_a over samples Re-train recognises at least once"),
    ("prevalence", "Prevalence: % of forget samples with k_m > k_a"),
    ("ties", "Ties: % of forget samples with k_m = k_a (ties that break as τ grows inflate the prevalence)"),
    ("perturbed_unlearn", "Unlearn accuracy on perturbed forget samples (1 − acc_m)"),
    ("disagreement", "Disagreement Pr[m(x′) ≠ a(x′)]"),
)


def _residual_markdown(probe: str, tables: dict) -> list[str]:
    """The residual-knowledge section: the plot, then one table per field over tau, then the audit without
    Re-train (where the run has its estimate)."""
    out = [f"## Residual knowledge ({probe} probe)", "", "![r_tau vs tau](residual.png)", ""]
    for name, heading in RESIDUAL_SECTIONS:
        out += [f"### {heading}", "", markdown(*tables[name]), ""]
    if tables["free"][1]:
        out += ["## Residual knowledge without Re-train", "",
                "r_free = the row's accuracy on the perturbed forget copies / the estimate of Re-train's "
                "(`rurk.estimate`: Original on the calibration set's copies, corrected for Re-train's smaller share "
                "of the class and for the forget set's difficulty) — what an auditor without Re-train measures — "
                "beside r_pooled, which needs Re-train. Re-train's own r_free is the estimate's error. Verdicts per "
                "seed: RK residual knowledge, ≈ as Re-train (within ±0.05), OF over-forgetting, ? inconclusive, "
                "– none (the row stopped on this estimate at that τ: calibrated stopping; or the τ is not validated).",
                "", markdown(*tables["free"]), ""]
    return out


FREE_SYMBOLS = {"residual knowledge": "RK", "as Re-train": "≈", "over-forgetting": "OF", "inconclusive": "?",
                "no verdict": "–"}


def free_table(summary: dict) -> tuple[list[str], list[list[str]]]:
    """Per row and key τ: r_pooled (with Re-train), r_free ± its seed spread (without) and the per-seed verdicts."""
    taus = _taus_of(summary)
    ki = key_taus(taus)
    header = ["method", *[f"{what} τ={taus[i]:.3g}" for i in ki for what in ("r_pooled", "r_free", "verdicts")]]
    rows = []
    for name, e in summary["methods"].items():
        res = e.get("residual") or {}
        if not res.get("r_free"):
            continue
        cells = [name]
        for i in ki:
            cells += [_fmt(res["r_pooled"][i], 3),
                      f"{res['r_free'][i]:.3f}" + (f" ± {res['r_free_std'][i]:.3f}" if len(res["r_free_per_seed"]) > 1 else ""),
                      " ".join(FREE_SYMBOLS[s[i]] for s in res["r_free_verdict_per_seed"])]
        rows.append(cells)
    return header, rows


#: report phases by the store's record kinds (SeedResult.spent)
PHASES = {"model": "training (Original, Re-train)", "unlearned": "unlearning", "eval": "evaluation",
          "audit": "audit", "estimate": "audit", "relearn_curve": "curves", "robust": "curves"}


def time_markdown(results: list, top: int = 5) -> list[str]:
    """The report's section "Where the time went": compute seconds per phase summed over seeds, and the slowest
    methods to unlearn, so a user sees what to trim. Cells reused from the store count the time they took when
    computed."""
    per_phase = {phase: 0.0 for phase in PHASES.values()}
    per_method: dict[str, float] = {}
    for r in results:
        for c in r.spent:
            w = c.get("wall_s") or 0.0
            phase = PHASES.get(c["kind"], c["kind"])
            per_phase[phase] = per_phase.get(phase, 0.0) + w
            if c["kind"] == "unlearned":
                per_method[c["row"]] = per_method.get(c["row"], 0.0) + w
    total = sum(per_phase.values())
    if not total:
        return []
    rows = [[phase, f"{sec:.1f}", f"{100 * sec / total:.0f}%"] for phase, sec in per_phase.items()]
    slow = sorted(per_method.items(), key=lambda kv: -kv[1])[:top]
    return ["## Where the time went", "",
            f"Compute seconds per phase, summed over {len(results)} seed(s); cells reused from the store count the "
            "time they took when computed.", "",
            markdown(["phase", "seconds", "share"], rows + [["total", f"{total:.1f}", "100%"]]), "",
            "Slowest to unlearn: " + (", ".join(f"{n} {sec:.1f} s" for n, sec in slow) or "none") + ".", ""]


def calibration_rows(results: list, names: list[str]) -> dict[str, list[tuple[int, dict]]]:
    """Per row with calibrated stopping, its (seed, decision) pairs (rurk.calibrate) from the method records."""
    out: dict[str, list[tuple[int, dict]]] = {}
    for name in names:
        for r in results:
            c = ((r.records.get(name) or {}).get("extra") or {}).get("calibration")
            if c:
                out.setdefault(name, []).append((r.seed, c))
    return out


def calibration_markdown(rows: dict[str, list[tuple[int, dict]]], planned: dict[str, int]) -> list[str]:
    """The report's section on calibrated stopping: per row and seed the target, where the rule stopped and the
    checkpoint it kept (the figure shows the whole trajectories)."""
    if not rows:
        return []
    header = ["row", "seed", "Original on calibration set", "target", "stopped at step", "kept step",
              "forget acc at kept step", "budget (steps)"]
    body = [[name, str(seed), _fmt(c.get("original_calib_acc"), 3), f"{c['target']:.3f}",
             "not reached" if c["reached_at"] is None else str(c["reached_at"]), str(c["chosen_step"]),
             f"{c['forget_at_chosen']:.3f}", str(planned.get(name, "–"))]
            for name, seeds in rows.items() for seed, c in seeds]
    c0 = next(iter(rows.values()))[0][1]
    return ["## Calibrated stopping", "",
            f"Target = Re-train's expected forget accuracy, estimated from Original's accuracy on {c0['n_calib']} "
            f"held-out images of the forget class, perturbed (`{c0['probe']}`, τ = {c0['tau']:g}, {c0['draws']} "
            f"copies each), with each class's error scaled by (n_train / n_retain)^α, α = {c0.get('alpha', 0):g} "
            "(Re-train saw fewer images of the class); the rule checks the forget accuracy "
            f"on perturbed copies every {c0['every']} step(s), stops at the first check at or below the target "
            "and keeps the closest check (`rurk.calibrate`).", "",
            markdown(header, body), "", "![calibrated stopping](calibration.png)", ""]


def _marks_markdown(summary: dict) -> list[str]:
    """Notes under the main table for failed and degenerate rows (they are never hidden)."""
    out = []
    for name, e in summary["methods"].items():
        for f in e.get("failed", []):
            out.append(f"- **{name}** failed on seed {f.get('seed')}: {failure_reason(f)}")
        if e.get("degenerate"):
            out.append(f"- **{name}** is degenerate: {e['degenerate']}")
    return out + [""] if out else []


def _band(res: dict, f: str) -> list:
    out = []
    for m, s in zip(res[f], res[f + "_std"]):
        out.append(None if m is None or s is None else (m - s, m + s))
    return out
