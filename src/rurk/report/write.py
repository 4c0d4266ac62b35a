"""report.md, the CSV tables and the figures of a run (:func:`write_report`)."""

from __future__ import annotations

from pathlib import Path

from ..audit.metric_specs import failure_reason
from ..figures import save_png
from ..store import atomic_write, write_json
from .attack_report import attack_sections
from .claims import claims_markdown
from .plots import calibration_figure, plot_residual_curves
from .summary import run_info, summarise
from .tables import (  # re-exported: cli and readme import them from here
    _fmt,
    curve_table,
    free_table,
    main_table,
    markdown,
    numeric_table,
    write_csv,
)


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
            "## Claims check (computed from the numbers above; see `rurk.report.claims` for the rules)", "",
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
    residual_plot(summary, out_dir / "residual.png", title=title)


def residual_plot(summary: dict, path: Path, *, title: str, rows: list[str] | None = None) -> bool:
    """r_tau against τ of ``rows`` (default: every row but Re-train) from a summary, bands ± std over seeds (a
    bootstrap 95% interval for one seed); False when no row has curves. ``rurk readme --png-rows`` draws the
    README's picture with it (a few rows read better than eighteen)."""
    one = len(summary.get("seeds", [])) == 1
    curves = {
        n: {"taus": e["residual"]["taus"], "r_paper": e["residual"]["r_paper"], "r_pooled": e["residual"]["r_pooled"],
            "ci": ({"r_pooled": e["residual"]["r_pooled_ci95_per_seed"][0]} if one else
                   {f: _band(e["residual"], f) for f in ("r_paper", "r_pooled")})}
        for n, e in summary["methods"].items()
        if e.get("residual") and n != "retrain" and e["residual"].get("r_pooled_per_seed") and (rows is None or n in rows)
    }
    if not curves:
        return False
    n = len(summary.get("seeds", []))
    bands = "one seed; bands: bootstrap 95% over forget samples" if one else f"{n} seeds; bands: ± std over seeds"
    plot_residual_curves(curves, path, title=f"{title}{bands})")
    return True


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
                "(`rurk.audit.estimate`: Original on the calibration set's copies, corrected for Re-train's smaller share "
                "of the class and for the forget set's difficulty) — what an auditor without Re-train measures — "
                "beside r_pooled, which needs Re-train. Re-train's own r_free is the estimate's error. Verdicts per "
                "seed: RK residual knowledge, ≈ as Re-train (within ±0.05), OF over-forgetting, ? inconclusive, "
                "– none (the row stopped on this estimate at that τ: calibrated stopping; or the τ is not validated).",
                "", markdown(*tables["free"]), ""]
    return out




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
    """Per row with calibrated stopping, its (seed, decision) pairs (rurk.methods._calibrate) from the method records."""
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
            "and keeps the closest check (`rurk.methods._calibrate`).", "",
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
