"""`rurk plan`: the cell graph of a `rurk run`, the cost of each kind of cell and the wall time on K workers.

Costs are **measured** where the store holds earlier runs of the scenario — the wall time of the Ray task that
computed the cell (``task`` records), else the cell's own timing (``wall_s`` of the ``model`` and ``unlearned``
records; the audit's ``timing.seconds``, with the rest of the row estimated) — and **estimated** otherwise from
the work the cell does (samples × epochs × forward/backward passes) at a rate calibrated on the measured cells
when there are any, else at a default per-architecture rate. Every line says which. The wall time on K workers
is a greedy list schedule (longest remaining path first) that respects the dependencies; cells already in the
store cost nothing.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from ..audit.attacks import RelearnCurveSettings, RobustSettings
from ..pipeline import prepare
from ..store import Store
from .experiment import audit_settings, method_config, method_names
from .grid import REFERENCES, cell_graph, critical_path, grid_status, list_schedule

#: Default seconds per "unit" (one sample through one forward pass; a training step counts 3) when nothing is
#: measured: rough CPU figures (2-core machine) and GPU figures. Measured cells replace them.
DEFAULT_RATE = {"cpu": {"mlp": 2e-6, "smallcnn": 4e-5, "tinycnn8": 1e-5, "resnet18": 8e-4, "vgg11": 6e-4,
                        "resnet50": 8e-3},
                "cuda": {"mlp": 2e-7, "smallcnn": 2e-6, "tinycnn8": 1e-6, "resnet18": 1.5e-5, "vgg11": 1e-5,
                         "resnet50": 2e-4}}
OVERHEAD_S = 0.5  # per cell, estimated: process set-up, loading checkpoints


def _units(cell, scenario, prepared, opts, spec) -> float:
    """The work of one cell in units (forward passes of one sample; backward counts 2)."""
    d = prepared.data
    n_r, n_f, n_t = len(d.retain), len(d.forget), len(d.test)
    if cell.kind == "pretrained":
        pre = scenario.pretrain
        n = len(prepared.source.train) if pre.dataset == scenario.data.dataset else 50_000
        return 3.0 * pre.optim.epochs * n
    if cell.kind == "original":
        return 3.0 * scenario.train.epochs * (n_r + n_f)
    if cell.kind == "retrain":
        return 3.0 * scenario.retrain_optim().epochs * n_r
    if cell.kind == "unlearn":
        epochs = getattr(method_config(scenario, cell.name), "epochs", None)
        return 3.0 * (epochs if isinstance(epochs, (int, float)) else 1) * (n_r + n_f)
    rows = 2 if cell.name == REFERENCES else 1
    audited = 1  # original, or the method's row (Re-train is not audited against itself)
    work = rows * 2.0 * (n_r + n_f + n_t)  # accuracies and MIA
    if opts.relearn:
        work += rows * 3.0 * scenario.relearn.max_epochs * n_f / 2  # re-learn time (typically stops halfway)
    if opts.attacks:
        rob = RobustSettings()
        work += rows * 3.0 * RelearnCurveSettings().steps * max(1, n_f // 10)
        work += rows * 3.0 * (rob.steps + 1) * len(rob.eps) * (n_f + min(n_r, rob.max_samples) + min(n_t, rob.max_samples))
    work += audited * 2.0 * spec.draws * n_f * len(spec.taus)
    return work


def _measured(store, scenario) -> dict[str, list[float]]:
    """label -> measured seconds from the store (task records first, then the cells' own timings)."""
    tasks: dict[str, list[float]] = {}
    own: dict[str, list[float]] = {}
    audits: dict[str, list[float]] = {}
    for r in store.records():
        if r["scenario"] != scenario.name:
            continue
        wall = (r.get("timings") or {}).get("wall_s")
        if r["kind"] == "task" and wall is not None:
            c = r["config"]
            tasks.setdefault(c["cell"] if c.get("name") is None else f"{c['cell']} {c['name']}", []).append(wall)
        elif r["kind"] == "model" and wall is not None:
            try:
                kind = json.loads((store.model_dir(r["key"]) / "model.json").read_text()).get("kind")
            except (OSError, ValueError):
                continue
            own.setdefault(kind, []).append(wall)
        elif r["kind"] == "unlearned" and wall is not None:
            own.setdefault(f"unlearn {r['config'].get('method')}", []).append(wall)
        elif r["kind"] == "audit":
            sec = ((r.get("metrics") or {}).get("timing") or {}).get("seconds")
            name = (r.get("metrics") or {}).get("method")
            if sec is not None and name:
                audits.setdefault(REFERENCES if name == "original" else name, []).append(sec)
    return {"task": tasks, "own": own, "audit": audits}


def plan(scenario, opts, out, workers: list[int], *, device: str = "cpu") -> dict:
    """The plan as a dict: cells (id, kind, deps, cost, source, done), per-label costs, schedule per K."""
    names = method_names(scenario, opts)
    spec = audit_settings(scenario, opts)
    seeds = list(opts.seeds or scenario.seeds.run)
    has_store = (Path(out) / "rurk.sqlite").is_file()
    store = Store(out) if has_store else None
    prepared = prepare(scenario, None)
    cells = cell_graph(scenario, names, seeds)
    done = grid_status(scenario, prepared, store, cells, opts, spec, Path(out) / scenario.name) if store else set()
    meas = _measured(store, scenario) if store else {"task": {}, "own": {}, "audit": {}}

    labels = list(dict.fromkeys(c.label for c in cells))
    example = {c.label: c for c in cells}
    units = {lab: _units(example[lab], scenario, prepared, opts, spec) for lab in labels}
    measured: dict[str, tuple[float, str]] = {}
    for lab in labels:
        if lab in meas["task"]:
            v = meas["task"][lab]
            measured[lab] = (statistics.median(v), f"measured (Ray task, {len(v)} run{'s' * (len(v) > 1)})")
        elif lab in meas["own"]:
            v = meas["own"][lab]
            measured[lab] = (statistics.median(v), f"measured ({len(v)} record{'s' * (len(v) > 1)})")
    ratios = [sec / units[lab] for lab, (sec, _) in measured.items() if units[lab] > 0]
    arch = scenario.model.arch
    dev = "cuda" if str(device).startswith("cuda") else "cpu"
    if ratios:
        rate, how = statistics.median(ratios), f"estimated (rate calibrated on {len(ratios)} measured kind{'s' * (len(ratios) > 1)})"
    else:
        rate, how = DEFAULT_RATE[dev].get(arch, DEFAULT_RATE[dev]["resnet18"]), f"estimated (default {dev} rate for {arch})"
    cost: dict[str, tuple[float, str]] = {}
    for lab in labels:
        if lab in measured:
            cost[lab] = measured[lab]
            continue
        cell = example[lab]
        if cell.kind == "eval" and cell.name in meas["audit"]:
            audit_s = statistics.median(meas["audit"][cell.name])
            rest = _units(cell, scenario, prepared, opts, spec) - 2.0 * spec.draws * len(prepared.data.forget) * len(spec.taus)
            cost[lab] = (audit_s + OVERHEAD_S + rate * max(rest, 0), "audit measured, rest " + how)
        else:
            cost[lab] = (OVERHEAD_S + rate * units[lab], how)
    per_cell = {c.id: cost[c.label][0] for c in cells}
    total = sum(per_cell.values())
    todo = sum(v for k, v in per_cell.items() if k not in done)
    return {
        "scenario": scenario.name, "seeds": seeds, "methods": names,
        "cells": [{"id": c.id, "kind": c.kind, "label": c.label, "deps": c.deps, "cost_s": per_cell[c.id],
                   "done": c.id in done} for c in cells],
        "costs": {lab: {"seconds": s, "source": src, "cells": sum(c.label == lab for c in cells),
                        "to_do": sum(c.label == lab and c.id not in done for c in cells)}
                  for lab, (s, src) in cost.items()},
        "total_s": total, "to_do_s": todo, "critical_path_s": critical_path(cells, per_cell, done),
        "wall_s": {k: list_schedule(cells, per_cell, k, done) for k in workers},
        "wall_all_s": {k: list_schedule(cells, per_cell, k) for k in workers},
    }


def _fmt_s(s: float) -> str:
    if s < 100:
        return f"{s:.1f} s"
    if s < 3600 * 2:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


def plan_lines(p: dict) -> list[str]:
    n, n_done = len(p["cells"]), sum(c["done"] for c in p["cells"])
    lines = [f"plan: {p['scenario']}, seeds {','.join(map(str, p['seeds']))}, methods {','.join(p['methods'])}: "
             f"{n} cells, {n_done} already in the store",
             "cell graph (per seed): [pretrained ->] original, retrain -> eval references; original, retrain -> "
             "unlearn M -> eval M (eval M also after eval references)", ""]
    w = max(len(c["id"]) for c in p["cells"])
    for c in p["cells"]:
        deps = ", ".join(d.split(" ", 2)[2] for d in c["deps"]) or "-"
        lines.append(f"  {c['id']:<{w}}  <- {deps:<28s} {_fmt_s(c['cost_s']):>9s}  {'done' if c['done'] else 'to do'}")
    lines += ["", "cost per kind of cell:"]
    wl = max(len(k) for k in p["costs"])
    for lab, e in p["costs"].items():
        lines.append(f"  {lab:<{wl}}  {_fmt_s(e['seconds']):>9s}  x{e['cells']} ({e['to_do']} to do)  {e['source']}")
    lines += ["", f"total work {_fmt_s(p['total_s'])}, still to do {_fmt_s(p['to_do_s'])}; critical path (unlimited "
                  f"workers) {_fmt_s(p['critical_path_s'])}",
              "estimated wall time (list scheduling, dependencies respected; cells in the store cost nothing):"]
    for k, s in p["wall_s"].items():
        lines.append(f"  {k:3d} worker{'s' if k > 1 else ' '}: {_fmt_s(s):>9s}   (from scratch {_fmt_s(p['wall_all_s'][k])})")
    return lines
