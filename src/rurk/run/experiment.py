"""`rurk run`: the grid of (seed × method × evaluation) cells, resumable, fed from the store.

For each seed: train or reuse Original and Re-train, run every selected method (each cell's
unlearned model is checkpointed), evaluate the standard metrics and audit residual knowledge against
Re-train. Every finished cell is a record in the store keyed by a hash of everything that determines
it, so a rerun skips it; a method that fails or diverges is recorded as such and never stops the run.
The per-seed records are then aggregated by :mod:`rurk.report`.
"""

from __future__ import annotations

import difflib
import time
import traceback
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from ..audit import metrics as M
from ..audit.attacks import (
    RelearnCurveSettings,
    RobustSettings,
    relearn_curve,
    robust_curves,
    subsample,
)
from ..audit.estimate import estimate_retrain
from ..audit.free import (
    COLLATERAL_DRAWS,
    COLLATERAL_MAX,
    class_sets,
    collateral,
    estimate_spec,
)
from ..audit.gallery import write_per_sample
from ..audit.kernel import ReferencePredictions, residual_knowledge
from ..audit.metric_specs import PCT_METRICS, cell_failure, failed_cell
from ..audit.spec import AuditSpec, audit_spec, check_audit_memory
from ..config import ConfigError, Scenario, from_dict, merge, to_dict
from ..methods import load_all
from ..methods.base import (
    FinetuneConfig,
    MethodRecord,
    get_method,
    parse_variant,
    unlearn,
)
from ..pipeline import Prepared, References, load_run_model, prepare, reference_models
from ..report.summary import REFERENCE_ROWS
from ..report.write import write_report
from ..store import Store, cache_key
from ..torchutil import NonFiniteLogits, model_device
from ..train import diverged
from .dryrun import ProbeStore


@dataclass(frozen=True)
class RunOptions:
    """What `rurk run` evaluates (the scenario's [audit] table supplies the defaults)."""

    methods: list[str] | None = None  # None = the scenario's `run_methods`, else every registered method
    seeds: list[int] | None = None  # None = the scenario's run seeds
    # audit overrides of the scenario's [audit] table (None = the scenario's); resolved once by audit_settings()
    probe: str | None = None
    probe_params: dict = field(default_factory=dict)
    taus: list[float] | None = None
    draws: int | None = None
    bootstrap: int | None = None
    noise_seed: int | None = None
    relearn: bool = True
    attacks: bool = True  # the relearning-attack curve (rurk.audit.attacks, seconds per model); --no-attacks
    robust: bool = False  # also the robust-accuracy curves (PGD at several eps; minutes per model on a CPU); --robust
    mia_max_per_side: int | None = None
    device: str = "auto"
    retry_failed: bool = False  # run again the cells an earlier run recorded as failed or diverged


def check_method_tables(methods: dict, source: str | None = None) -> None:
    """Every ``[methods.NAME]`` table (of a scenario file, ``--set methods.NAME.KEY=VALUE`` or a tuned file, named
    by ``source`` in the error) names a registered method: a typo (``neggradplus``) used to be accepted and ignored,
    the method run with its defaults (exit code 0). Unknown keys inside a known method's table are refused when its
    config is built (:func:`check_method_configs`)."""
    registry, where = load_all(), f"{source}: " if source else ""
    for name, table in methods.items():
        if name not in registry:
            close = difflib.get_close_matches(name, list(registry), n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            raise ConfigError(f"{where}methods.{name} = {table!r}: expected a table named after a method ({hint}"
                              f"known: {', '.join(sorted(registry))})")
        if not isinstance(table, dict):
            raise ConfigError(f"{where}methods.{name} = {table!r}: expected a table of the method's settings")


def check_method_configs(scenario: Scenario) -> None:
    """Every ``[methods.*]`` table of the scenario (its own, tuned values and ``--set`` overrides) names a registered
    method and builds a valid config for it — not only the tables of the methods this command runs: a typo in another
    method's table is refused too, before any work."""
    check_method_tables(scenario.methods)
    for name in scenario.methods:
        _config(scenario, name, {})


def method_names(scenario: Scenario, opts: RunOptions) -> list[str]:
    """The rows to run: method names or command-line variants (``rurk:lambda_f=0``), each validated (method
    exists, keys and values valid for its config, after presets and tuning) before any work starts."""
    check_method_configs(scenario)
    registry = load_all()
    names = opts.methods or scenario.run_methods or sorted(registry)
    if "all" in names:  # `--methods all,rurk:lambda_f=0`: every registered method, then the variants
        i = names.index("all")
        names = [*names[:i], *(m for m in sorted(registry) if m not in names), *names[i + 1:]]
    if len(set(names)) != len(names):
        raise ConfigError(f"--methods = {','.join(names)}: a row is named twice")
    for n in names:
        method_config(scenario, n)
    return list(names)


def method_config(scenario: Scenario, name: str):
    """The config of a method or variant: its preset for the scenario, then the scenario's [methods.NAME]
    table (tuned values and `--set methods.NAME.key=value` overrides), then the variant's own values."""
    base, variant = parse_variant(name)
    try:
        cfg = _config(scenario, base, variant)
        if isinstance(cfg, FinetuneConfig):
            _check_calibration(scenario, base, cfg)
        return cfg
    except ConfigError as e:
        if not variant:
            raise
        raise ConfigError(f"method variant {name!r}: {e}") from None


def _config(scenario: Scenario, base: str, variant: dict):
    """Method ``base``'s config: its preset, the scenario's [methods.BASE] table, then ``variant``'s values."""
    cfg = get_method(base).config(scenario.preset, merge(scenario.methods.get(base, {}), variant))
    if isinstance(cfg, FinetuneConfig):
        try:
            cfg.optim()  # the optimiser fields (lr >= 0, ...) are checked now, not when the method starts
        except ValueError as e:
            raise ConfigError(f"methods.{base}: {e}") from None
    return cfg


def _check_calibration(scenario: Scenario, name: str, cfg: FinetuneConfig) -> None:
    """Calibrated stopping (``calibrate = true``) needs held-out images of the forget class, which only a scenario
    with ``forget.kind = 'sample'`` and ``forget.calibration > 0`` has: the method used to refuse only when it
    started, after Original and Re-train were trained, and its row was recorded as failed."""
    if not cfg.calibrate:
        return
    f = scenario.forget
    if f.kind == "sample" and f.calibration > 0:
        return
    why = ("forget.kind = 'class': Re-train's accuracy on a forgotten class is 0, which held-out images cannot "
           "estimate" if f.kind == "class" else
           "forget.kind = 'file': a forget file names no class to hold images out of" if f.kind == "file" else
           "forget.calibration = 0: no held-out images of the forget class")
    raise ConfigError(f"methods.{name}.calibrate = true: expected false with {why} (run {name}:calibrate=false, or "
                      f"--set methods.{name}.calibrate=false)")


# ---------------------------------------------------------------------------------------------- evaluation
def evaluate(model: nn.Module, prepared: Prepared, seed: int, original_forget_loss: float | None,
             *, relearn: bool = True, mia_max_per_side: int | None = None) -> dict:
    """Standard metrics of one model (fractions): retain/unlearn/test accuracy, MIA, re-learn time."""
    d = prepared.data
    acc, mia = M.standard_metrics(model, d.retain, d.forget, d.test, seed, class_unlearning=prepared.class_unlearning,
                                  max_per_side=mia_max_per_side)
    out = {**acc.to_json(), "mia": mia}
    if relearn and original_forget_loss is not None:
        r = M.relearn_time(model, d.forget, original_forget_loss, seed, prepared.scenario.relearn,
                           loader_seed=prepared.scenario.seeds.loader)
        out["relearn_epochs"], out["relearn_censored"] = r.epochs, r.censored
    return out


def audit_settings(scenario: Scenario, opts: RunOptions) -> AuditSpec:
    """The run's one :class:`AuditSpec`: the scenario's [audit] table with the run's overrides (validated) — its
    ``noise_seed`` and ``probe_params`` included (:func:`rurk.audit.spec.audit_spec` merges them), so
    ``run_experiment(scenario, RunOptions())`` audits as ``rurk run`` does."""
    try:
        return audit_spec(scenario.audit, probe=opts.probe, probe_params=opts.probe_params or None, taus=opts.taus,
                          draws=opts.draws, bootstrap=opts.bootstrap, noise_seed=opts.noise_seed)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def audit(model: nn.Module, retrain: nn.Module, prepared: Prepared, seed: int, spec: AuditSpec,
          reference: ReferencePredictions | None = None):
    """Residual-knowledge audit of ``model`` against Re-train on the forget set (noise seed: the run seed
    unless the spec fixes one); ``reference`` shares Re-train's predictions between the rows of a seed."""
    f = prepared.data.forget
    return residual_knowledge(model, retrain, f.x, f.y, seed=seed, index=f.index, spec=spec, reference=reference)


# ---------------------------------------------------------------------------------------------- the grid
@dataclass
class SeedResult:
    seed: int
    metrics: dict[str, dict]  # method -> evaluate() output, or a failed cell ({"error"/"diverged"}: cell_failure)
    residual: dict[str, dict]  # method -> audit JSON summary
    records: dict[str, dict]  # method -> MethodRecord JSON (wall time etc.)
    relearn_curves: dict[str, dict] = field(default_factory=dict)  # row -> attacks.relearn_curve() JSON
    robust: dict[str, dict] = field(default_factory=dict)  # row -> attacks.robust_curves() JSON (with --robust)
    #: every cell of the seed as the store records it: {"row", "kind", "wall_s", "threads"} (kind: the store's,
    #: "model" for Original/Re-train); what report.md's "Where the time went" and summary.json's threads read
    spent: list[dict] = field(default_factory=list)
    #: the estimate of Re-train's accuracy on the forget copies at the audit's τ (rurk.audit.estimate, as a dict), what
    #: r_free divides by; None where the split has no calibration set or the scenario forgets a class
    estimate: dict | None = None


def run_seed(scenario: Scenario, prepared: Prepared, seed: int, store: Store, names: list[str],
             opts: RunOptions, out_dir: Path, *, spec: AuditSpec | None = None, progress: bool | None = None,
             log=print, log_cached: bool = True) -> SeedResult:
    """One seed's references and rows (metrics, audit, curves), each cell read from the store or computed and
    recorded; a line per row through ``log`` — with ``log_cached=False`` only for rows this call computed (a
    ``--jobs`` worker meets the other worker's rows too, and printed them a second time). Such a row is printed by the
    worker that computed its last cell: two workers may share a row's cells, but each cell's claim goes to one."""
    spec = spec or audit_settings(scenario, opts)
    refs = reference_models(scenario, prepared, seed, store, device=opts.device, progress=progress, log=log)
    base = _base_cell(prepared, refs, seed)
    original_loss = M.mean_ce(refs.original, prepared.data.forget)
    metrics, residual, records = {}, {}, {}
    relearn_curves, robust, spent = {}, {}, []
    seed_dir = out_dir / f"seed-{seed}"
    shared = ReferencePredictions()  # Re-train's predictions on the audit's copies: the same for every row
    # the estimate every row's r_free divides by, first: it belongs to the reference rows' cell (rurk.run.grid)
    est_cells: list[dict] = []
    estimate = seed_estimate(scenario, prepared, refs, seed, store, spec, base, est_cells)
    spent += [{"row": "original", **c} for c in est_cells]

    for name in [*REFERENCE_ROWS, *names]:
        if name in REFERENCE_ROWS:
            model, cell = (refs.original if name == "original" else refs.retrain), base | {"model": name}
            timings = (store.get("model", refs.keys[name]) or {}).get("timings") or {}
            records[name] = {"wall_s": timings.get("wall_s")}
            spent.append({"row": name, "kind": "model", **timings})
        else:
            model, rec, cell = unlearned_model(name, scenario, prepared, refs, seed, store, log=log,
                                               retry_failed=opts.retry_failed)
            records[name] = rec
            timings = (store.get("unlearned", cache_key(kind="unlearned", **cell)) or {}).get("timings") or {}
            spent.append({"row": name, "kind": "unlearned", **timings})
            if model is None:
                metrics[name] = {k: rec[k] for k in ("error", "diverged", "diverged_step") if rec.get(k)}
                continue
        cells: list[dict] = []
        metrics[name], residual[name], curves = _scored(name, model, cell, scenario, prepared, refs, seed, store, opts,
                                                        spec, original_loss, seed_dir, cells, reference=shared)
        spent += [{"row": name, **c} for c in cells]
        if why := cell_failure(metrics[name]):  # NaN/inf logits: the row is marked failed with the reason
            log(f"  seed {seed} {name}: FAILED: {why}")
            continue
        if opts.attacks:
            relearn_curves[name], robust[name] = curves
        if log_cached or (cells and cells[-1].get("here")):
            log(f"  seed {seed} {name:13s} " + _line(metrics[name], residual[name]))
    return SeedResult(seed, metrics, residual, records, relearn_curves, {k: v for k, v in robust.items() if v}, spent,
                      estimate)


def seed_estimate(scenario: Scenario, prepared: Prepared, refs: References, seed: int, store: Store, spec: AuditSpec,
                  base: dict, spent: list[dict]) -> dict | None:
    """The seed's estimate of Re-train's accuracy on the forget copies at every τ of the audit (rurk.audit.estimate;
    cached), from Original, the split's calibration set and the retain set — what every row's r_free divides by.
    None without a calibration set, for class unlearning (Re-train's accuracy on a forgotten class is 0, which
    held-out images of the class cannot estimate) and for attack probes (each model is attacked on its own)."""
    d = prepared.data
    if d.calib is None or not len(d.calib) or prepared.class_unlearning or spec.make_probe().adversarial:
        return None
    seed_n = int(spec.noise_seed if spec.noise_seed is not None else seed)
    espec = estimate_spec(spec, seed_n)

    def compute():
        return estimate_retrain(refs.original, d.forget, d.calib, espec, num_classes=prepared.num_classes,
                                retain=d.retain, cache_dir=prepared.cache_dir).to_dict()

    return _cached(store, "estimate", base | {"model": "original", "estimate": repr(espec)}, compute, scenario, seed,
                   spent)


def _scored(name: str, model: nn.Module, cell: dict, scenario: Scenario, prepared: Prepared, refs: References,
            seed: int, store: Store, opts: RunOptions, spec: AuditSpec, original_loss: float,
            seed_dir: Path, spent: list[dict], *, reference: ReferencePredictions | None = None
            ) -> tuple[dict, dict | None, tuple[dict, dict | None] | None]:
    """The cached cells of one row's model: (its metrics, its audit against Re-train (None for Re-train itself),
    with ``opts.attacks`` its (relearn curve, robust curves)); each cell's timings are appended to ``spent``. When a
    cell found non-finite logits the metrics are ``{"error": why}`` and nothing else of the row is computed."""
    metrics = _cached(store, "eval", cell | {"relearn": to_dict(scenario.relearn) if opts.relearn else False,
                                             "mia_cap": opts.mia_max_per_side},
                      lambda: evaluate(model, prepared, seed, original_loss, relearn=opts.relearn
                                       and name != "original", mia_max_per_side=opts.mia_max_per_side),
                      scenario, seed, spent)
    if cell_failure(metrics):
        return metrics, None, None
    curves = (attack_cells(model, cell, scenario, prepared, seed, store, robust=opts.robust, spent=spent)
              if opts.attacks else None)
    failed = next((why for c in curves or () if c and (why := cell_failure(c))), None)
    if failed:
        return failed_cell(failed), None, None
    metrics = {**metrics, "collateral": row_collateral(model, cell, scenario, prepared, seed, store, spec, spent)}
    if name == "retrain":
        return metrics, None, curves  # a against itself: r = 1 at every tau by definition (tested in the audit)

    def run_audit():
        res = audit(model, refs.retrain, prepared, seed, spec, reference)
        res.write_csv(seed_dir / name / f"residual-{res.probe}.csv")
        f = prepared.data.forget
        write_per_sample(res, spec.make_probe(), f.x, f.y, f.index, model, refs.retrain, seed_dir / name,
                         num_classes=prepared.num_classes,
                         title=f"{scenario.name}, seed {seed}: {name} vs Re-train ({res.probe}, c = {res.c})")
        return res.to_json(scenario=scenario.name, seed=seed, method=name, reference=f"retrain@{seed}")

    residual = _cached(store, "audit", cell | {"audit": spec.key()}, run_audit, scenario, seed, spent)
    if why := cell_failure(residual):
        return failed_cell(why), None, None
    return metrics, residual, curves


def row_collateral(model: nn.Module, cell: dict, scenario: Scenario, prepared: Prepared, seed: int, store: Store,
                   spec: AuditSpec, spent: list[dict]) -> dict | None:
    """The row's accuracy on perturbed copies of the forget classes' test and retained images at the audit's τ
    (:func:`rurk.audit.free.collateral`; cached); None for class unlearning (the class is meant to go) and for
    attack probes."""
    if prepared.class_unlearning or spec.make_probe().adversarial:
        return None
    sets = class_sets(prepared.data, torch.unique(prepared.data.forget.y).tolist())
    seed_n = int(spec.noise_seed if spec.noise_seed is not None else seed)
    key = {"probe": spec.key()["probe"], "probe_params": spec.key()["probe_params"], "taus": list(spec.taus),
           "draws": COLLATERAL_DRAWS, "max": COLLATERAL_MAX, "seed": seed_n}
    return _cached(store, "collateral", cell | {"collateral": key},
                   lambda: collateral(model, sets, spec, seed_n), scenario, seed, spent)


def attack_cells(model: nn.Module, cell: dict, scenario: Scenario, prepared: Prepared, seed: int,
                 store: Store, *, robust: bool = False, spent: list[dict] | None = None) -> tuple[dict, dict | None]:
    """The relearning-attack curve and the robust-accuracy curves of one model (Original, Re-train or a method's),
    each a cached cell keyed by the model's cell and its settings. Robust: the forget set, and retain and test
    subsampled (seeded) to at most ``RobustSettings.max_samples`` each."""
    d, curve, rob = prepared.data, RelearnCurveSettings(), RobustSettings()
    relearn = _cached(store, "relearn_curve", cell | {"relearn_curve": to_dict(curve), "relearn": to_dict(scenario.relearn),
                                                      "loader": scenario.seeds.loader},
                      lambda: relearn_curve(model, d.forget, scenario.relearn, seed, settings=curve,
                                            loader_seed=scenario.seeds.loader), scenario, seed, spent)
    if not robust:
        return relearn, None
    sets = {"forget": d.forget, **{k: subsample(getattr(d, k), rob.max_samples, seed, k) for k in ("retain", "test")}}
    robust = _cached(store, "robust", cell | {"robust": rob.key()},
                     lambda: robust_curves(model, {k: v for k, v in sets.items() if len(v)}, seed,
                                           prepared.num_classes, rob), scenario, seed, spent)
    return relearn, robust


def _base_cell(prepared: Prepared, refs: References, seed: int) -> dict:
    return dict(split=prepared.split.digest(), fingerprint=prepared.source.fingerprint, seed=seed,
                original=refs.keys["original"], retrain=refs.keys["retrain"])


def unlearned_model(name: str, scenario: Scenario, prepared: Prepared, refs: References, seed: int, store: Store,
                    *, log=print, retry_failed: bool = False) -> tuple[nn.Module | None, dict, dict]:
    """(model or None if it failed/diverged, record JSON, cell) of one (seed, method), cached in the store."""
    cfg = method_config(scenario, name)
    cell = _base_cell(prepared, refs, seed) | {"method": name, "config": to_dict(cfg)}
    model, rec = _unlearned(name, cfg, scenario, prepared, refs, prepared.unlearn_data(refs.pretrained), seed,
                            store, cell, log, retry_failed)
    return model, rec, cell


def unlearned_key(name: str, scenario: Scenario, prepared: Prepared, ref_keys: dict[str, str], seed: int) -> str:
    """The store key of the (seed, method) unlearning cell from the reference models' keys alone (the key
    :func:`unlearned_model` uses; no model is needed)."""
    refs = References(None, None, None, ref_keys, {})
    cell = _base_cell(prepared, refs, seed) | {"method": name, "config": to_dict(method_config(scenario, name))}
    return cache_key(kind="unlearned", **cell)


def _cached(store: Store, kind: str, cell: dict, compute, scenario: Scenario, seed: int,
            spent: list[dict] | None = None) -> dict:
    """The record ``kind`` of ``cell``: read from the store, or computed (under the cell's claim) and recorded with
    its wall time. Its timings (``wall_s``, ``threads``) are appended to ``spent`` either way."""
    key = cache_key(kind=kind, **cell)
    hit = store.get(kind, key)
    if hit is None:
        with store.claim(kind, key):
            hit = store.get(kind, key)  # another run may have finished it while we waited
            if hit is None:
                t0 = time.perf_counter()
                try:
                    value = compute()
                except NonFiniteLogits as e:  # recorded like a failed method: a rerun, or another executor, reports it
                    value = failed_cell(str(e))
                timings = store.put(kind, key, scenario=scenario.name, seed=seed, config=cell, metrics=value,
                                    timings={"wall_s": round(time.perf_counter() - t0, 3)})
                hit = {"metrics": value, "timings": timings, "here": True}
    if spent is not None:
        spent.append({"kind": kind, **(hit.get("timings") or {}), **({"here": True} if hit.get("here") else {})})
    return hit["metrics"]

def _unlearned(name, cfg, scenario, prepared, refs: References, udata, seed, store: Store, cell, log,
               retry_failed: bool = False):
    """The unlearned model of one (seed, method) cell: loaded from the store or computed and saved.
    Returns (model or None, record JSON); None when the method failed or diverged (now or in an earlier run,
    unless ``retry_failed``). A record whose checkpoint is missing or fails its hash is treated as absent."""
    key = cache_key(kind="unlearned", **cell)
    with store.claim("unlearned", key):
        hit = store.get("unlearned", key)
        if hit is not None:
            rec = hit["metrics"]
            if why := cell_failure(rec):
                if not retry_failed:
                    log(f"  seed {seed} {name}: failed in an earlier run ({why}); --retry-failed runs it again")
                    return None, rec
            elif store.load_meta(key) is not None:
                return load_run_model(store, key, scenario, prepared, device=model_device(refs.original)), rec
            else:
                log(f"  seed {seed} {name}: its checkpoint is missing or damaged; recomputing")
            store.delete("unlearned", key)
        return _compute_unlearned(name, cfg, scenario, prepared, refs, udata, seed, store, cell, key, log)


def _compute_unlearned(name, cfg, scenario, prepared, refs: References, udata, seed, store: Store, cell, key, log):
    t0 = time.perf_counter()
    try:
        model, record = unlearn(parse_variant(name)[0], refs.original, udata, seed, cfg=cfg)
        rec = record.to_json()
    except Exception as e:  # a broken method never stops the run
        log(f"  seed {seed} {name}: FAILED: {type(e).__name__}: {e}")
        rec = MethodRecord(name, to_dict(cfg), seed).to_json() | failed_cell(f"{type(e).__name__}: {e}") | {
            "traceback": traceback.format_exc(limit=5)}
        store.put("unlearned", key, scenario=scenario.name, seed=seed, config=cell, metrics=rec,
                  timings={"wall_s": round(time.perf_counter() - t0, 3)})
        return None, rec
    if diverged(record, model):
        rec["diverged"] = True
        log(f"  seed {seed} {name}: diverged at step {record.diverged_step}")
        store.put("unlearned", key, scenario=scenario.name, seed=seed, config=cell, metrics=rec,
                  timings={"wall_s": record.wall_s})
        return None, rec
    store.save_model(key, model, {"kind": "unlearned", "method": name, "scenario": scenario.name, "seed": seed,
                                  "num_classes": prepared.num_classes, "mean": _norm(model, "mean"),
                                  "std": _norm(model, "std"), "record": rec})
    store.put("unlearned", key, scenario=scenario.name, seed=seed, config=cell, metrics=rec,
              timings={"wall_s": record.wall_s})
    return model.eval(), rec


def _norm(model: nn.Module, which: str):
    norm = getattr(model, "norm", None)
    return getattr(norm, which).flatten().tolist() if norm is not None else None


def _line(m: dict, r: dict | None) -> str:
    if why := cell_failure(m):
        return f"failed: {why}"
    s = " ".join(f"{spec.label.lower()} {m[spec.key]:.1%}" for spec in PCT_METRICS)
    if r:
        t = min(r["per_tau"], key=lambda t: abs(t["tau"] - 0.03))
        rp = t["r_pooled"]
        s += f" | tau {t['tau']:.3f}: r_pooled {rp if rp is None else round(rp, 3)} prevalence {t['prevalence']:.0%}"
    return s


def run_experiment(scenario: Scenario, opts: RunOptions, out: str | Path, *, progress: bool | None = None,
                   log=print, executor=None) -> dict:
    """Run the whole grid and write summary.json, report.md, CSV tables and plots under
    ``out/<scenario>/``; returns the summary.

    ``executor`` (None = local, in this process) is an object whose ``fill(...)`` computes the grid's missing
    cells elsewhere and commits them to the store (:class:`rurk.run.ray_exec.RayExecutor`); the summary is then
    assembled here by the same code as a local rerun, from the store alone."""
    out_dir = Path(out) / scenario.name
    names = method_names(scenario, opts)  # every method, variant and audit setting checked before any work
    spec = audit_settings(scenario, opts)
    store = Store(out)
    prepared = prepare(scenario, store)
    f = prepared.data.forget  # the audit's copies fit this machine's memory: checked before any model is trained
    check_audit_memory(spec, len(f) if spec.max_forget is None else min(len(f), spec.max_forget), tuple(f.x.shape[1:]))
    seeds = opts.seeds or list(scenario.seeds.run)
    log(f"{scenario.name}: |S_r|={len(prepared.data.retain)} |S_f|={len(prepared.data.forget)} "
        f"|test|={len(prepared.data.test)}; seeds {seeds}; methods {', '.join(names)}; probe {spec.probe}")
    cells = store
    if executor is not None:
        executor.fill(scenario, opts, store, prepared, seeds, names, spec, out_dir, progress=progress, log=log)
        # every cell is in the store now: the results are assembled from it by the local code, through a view
        # that refuses to compute anything (a missing cell would be an executor bug, never silently recomputed)
        cells, opts = ProbeStore(store), replace(opts, retry_failed=False, device="cpu")
    quiet = executor is not None and getattr(executor, "quiet_assembly", False)  # the workers printed the rows
    results = [run_seed(scenario, prepared, s, cells, names, opts, out_dir, spec=spec, progress=progress,
                        log=(lambda *a: None) if quiet else log)
               for s in seeds]
    with store.claim("report", scenario.name):  # two runs sharing a store write their reports one after the other
        return write_report(scenario, spec, results, out_dir, [*REFERENCE_ROWS, *names])


def scenario_with(scenario: Scenario, tuned: dict | None) -> Scenario:
    """The scenario with tuned per-method values merged under its own [methods] table."""
    if not tuned:
        return scenario
    return from_dict(Scenario, merge(to_dict(scenario), {"methods": merge(tuned, scenario.methods)}))
