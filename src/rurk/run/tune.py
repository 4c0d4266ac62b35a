"""`rurk tune`: pick a method's hyperparameters by the smallest Avg. Gap to Re-train, with Optuna.

Approximate unlearners are very sensitive to their learning rate, epochs and loss weights, and the good
region is often a few optimiser steps wide (spec: baselines.md §0 "Tuning"). So:

- each method declares its own search space next to its config (``space=`` of
  :func:`rurk.methods.base.register`: log-uniform rates and loss weights, integer epochs; RURK searches lr,
  epochs, λ_f, λ_a and its training τ independently);
- a seeded TPE sampler (Optuna) searches it; trial *k* is asked with a sampler seeded from
  ``(sampler_seed, k)``, so the same seed gives the same trials, also across an interrupted and resumed run;
- the objective is the **mean Avg. Gap over three tuning forget sets** (split seeds never reported, default
  1, 2 and 3) at a tuning run seed that is not reported (default 1), so one lucky forget set does not decide;
- a trial whose gap on the first tuning forget set is worse than the median of earlier trials' there is
  pruned (Optuna's MedianPruner on that intermediate value, recorded as PRUNED with its one gap): a setting
  that is bad on one forget set is not worth two more;
- trials run side by side (``jobs``, default the CPUs this process may use) in worker processes of one torch
  thread each: on a small CPU they beat threads of one process (torch's intra-op threads idle at every small
  op and Python's lock serialises the rest; :mod:`rurk.run.pool_exec` measured the same for `rurk run`); the
  study itself (ask, tell, the SQLite storage) stays in this process, so it is as consistent and
  interrupt-safe as a serial run. Each worker loads the tuning forget sets and their references from the
  store once, and Re-train's metrics per forget set are computed once, here;
- a trial that fails or diverges is recorded as failed with its reason and never stops the study;
- the study lives in the run store (``OUT/tune.db``, Optuna's SQLite storage): killing `rurk tune` and
  starting it again continues it — a trial cut off by the interrupt, at any moment, is re-run with its own
  values (or, when the interrupt came before all its values were drawn, marked failed, no longer counted and
  replaced by a trial from the same sampler seed), none is lost or counted twice;
- the chosen values go to a TOML file with their full provenance (sampler and seed, spaces, every trial's
  values, gaps and state, the best trial, Optuna's parameter importances), which `rurk run` reads.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np

from .. import workers
from ..audit import AuditSpec, check_inputs, count_correct
from ..audit.metrics import avg_gap
from ..config import ConfigError, Scenario, merge, to_dict
from ..methods import load_all
from ..methods.base import get_method, unlearn
from ..pipeline import prepare, reference_models
from ..store import Store
from ..threads import available_cpus
from ..train import diverged
from .experiment import RunOptions, evaluate
from .study import (
    DEFAULT_SPLIT_SEEDS,
    DEFAULT_TUNING_SEED,
    N_STARTUP_TRIALS,
    TrialFailed,
    _fmt_params,
    _optuna,
    _pruner_name,
    run_study,
)
from .tuned import _write, read_tuned, with_tuned


def study_name(scenario: Scenario, method: str, base: dict, seed: int, split_seeds, sampler_seed: int,
               prune: bool = True, incumbent: dict | None = None, objective: str = "gap") -> str:
    """The study's name: method plus a hash of everything a trial's score depends on (scenario data, model,
    recipes, the method's config — its defaults in the code included, so a changed default starts afresh too —
    and space, seeds) and of the pruning (which decides what the sampler learns from). A changed setting starts
    a new study."""
    spec = get_method(method)
    # trials neither compute the re-learn metric nor audit, so those settings stay out of the identity (adding
    # an audit field must not orphan a study)
    ident = {"scenario": {k: v for k, v in to_dict(scenario).items()
                          if k not in ("methods", "tuned", "description", "relearn", "audit")},
             "method": method, "config": to_dict(spec.config(scenario.preset, base)),
             "space": {k: p.to_json() for k, p in spec.space.items()},
             "seed": seed, "split_seeds": list(split_seeds), "sampler_seed": sampler_seed,
             "n_startup": N_STARTUP_TRIALS}
    ident["pruner"] = _pruner_name() if prune else None
    if incumbent is not None:  # only then: studies made without it keep their names
        ident["incumbent"] = incumbent
    if objective != "gap":  # likewise: studies scored by the Avg. Gap alone keep their names
        ident["objective"] = objective
    digest = hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return f"{scenario.name}/{method}/{digest}"




def _mean_over_splits(gap, n: int, params: dict, report=None) -> tuple[float, list[float]]:
    """Mean of ``gap(params, i)`` over the ``n`` tuning forget sets, in order; ``report(gap_0)`` after the first
    (it raises ``optuna.TrialPruned`` to stop a trial that is already bad there)."""
    gaps = []
    for i in range(n):
        gaps.append(gap(params, i))
        if i == 0 and n > 1 and report is not None:
            report(gaps[0])
    return float(sum(gaps) / len(gaps)), gaps


#: ``--objective``: what a trial is scored by on each tuning forget set
OBJECTIVES = {
    "gap": "mean Avg. Gap to Re-train over the tuning forget sets",
    "profile": "mean over the tuning forget sets of Avg. Gap + 20 × the mean |r_pooled − 1| at τ = 0.03, 0.1, 0.2, "
               "0.3 (r_pooled against Re-train on 16 Gaussian copies per forget image)",
}
#: the profile objective's τ and its weight: a profile 0.1 from Re-train on average costs 2 points of Avg. Gap
#: (decision: the tilt of calibrated RURK — r 1.0 at τ = 0.03, 0.64 at 0.3 — then weighs as much as its gap)
PROFILE_TAUS, PROFILE_WEIGHT, PROFILE_DRAWS = (0.03, 0.1, 0.2, 0.3), 20.0, 16


class _Objective:
    """The score of one setting on the tuning forget sets (references trained once, from the store): its Avg. Gap
    to Re-train and, with ``objective = "profile"``, how far its r_pooled strays from 1 over the τ grid
    (:data:`OBJECTIVES`). ``splits``: (prepared, references, unlearning data, Re-train's metrics) per forget set."""

    def __init__(self, scenario: Scenario, method: str, base: dict, seed: int, splits: list, objective: str = "gap"):
        self.scenario, self.method, self.base, self.seed, self.splits = scenario, method, base, seed, splits
        if objective not in OBJECTIVES:
            raise ConfigError(f"--objective = {objective!r}: expected one of {', '.join(OBJECTIVES)}")
        self.objective = objective
        self._retrain_acc: dict[int, object] = {}  # Re-train's accuracy on the profile's copies, per forget set

    def config(self, params: dict):
        """The method's config for ``params``. With calibrated stopping on, the trial records no retain/test trace
        (``calib_trace = 0``): the trace only feeds the report's plot, never the rule's decision, and its forward
        passes were two thirds of the checks' cost (a third of a calibrated RURK trial's) — the gap is the same."""
        cfg = get_method(self.method).config(self.scenario.preset, merge(self.base, params))
        return replace(cfg, calib_trace=0) if getattr(cfg, "calibrate", False) else cfg

    def gap(self, params: dict, i: int) -> float:
        """Avg. Gap to Re-train of ``params`` on tuning forget set ``i``."""
        prepared, refs, udata, ref = self.splits[i]
        model, rec = unlearn(self.method, refs.original, udata, self.seed, cfg=self.config(params))
        if diverged(rec, model):
            raise TrialFailed(f"diverged at step {rec.diverged_step} on split seed {prepared.scenario.seeds.split}")
        gap = avg_gap(evaluate(model, prepared, self.seed, None, relearn=False), ref)  # over the declared keys
        if self.objective == "profile":
            if i not in self._retrain_acc:
                self._retrain_acc[i] = self._profile_accuracy(refs.retrain, prepared)
            # Re-train wrong on every copy (a tiny model): r is capped rather than infinite
            r = self._profile_accuracy(model, prepared) / np.maximum(self._retrain_acc[i], 1e-3)
            gap += PROFILE_WEIGHT * float(abs(r - 1).mean())
        return gap

    def _profile_accuracy(self, model, prepared):
        """The model's accuracy on :data:`PROFILE_DRAWS` Gaussian copies of each forget image at every profile τ
        (the audit's kernel and noise blocks, seeded with the tuning seed: the same copies for every model)."""
        f = prepared.data.forget
        spec = AuditSpec(taus=PROFILE_TAUS, draws=PROFILE_DRAWS, bootstrap=0)
        inputs = check_inputs(model, model, f.x, f.y, index=f.index)
        return count_correct(model, model, inputs, spec.make_probe(), spec, self.seed).k_m.mean(1) / PROFILE_DRAWS

    def __call__(self, params: dict, report=None) -> tuple[float, list[float]]:
        return _mean_over_splits(self.gap, len(self.splits), params, report)


def _load_splits(scenario: Scenario, split_seeds, seed: int, store, device: str, refs_metrics=None) -> list:
    """The tuning forget sets as :class:`_Objective` wants them. References come from the store (trained
    there on first use); Re-train's metrics are computed unless given (``refs_metrics``: one dict per split)."""
    splits = []
    for k, s in enumerate(split_seeds):
        tuning = replace(scenario, seeds=replace(scenario.seeds, split=s))
        prepared = prepare(tuning, store)
        refs = reference_models(tuning, prepared, seed, store, device=device)
        ref = refs_metrics[k] if refs_metrics is not None else evaluate(refs.retrain, prepared, seed, None,
                                                                      relearn=False)
        splits.append((prepared, refs, prepared.unlearn_data(refs.pretrained), ref))
    return splits


#: a worker process's tuning forget sets, loaded once by :func:`_worker_init`
_WORKER: dict = {}


def _worker_init(scenario: Scenario, split_seeds: list, seed: int, root: str, device: str, refs_metrics: list) -> None:
    """Start of a trial worker process (after :func:`rurk.workers.arm`: it ends when its parent does, Ctrl-C is the
    parent's): one torch thread, no progress bars, the forget sets loaded once."""
    os.environ["RURK_PROGRESS"] = "0"
    import torch

    torch.set_num_threads(1)
    _WORKER["scenario"], _WORKER["seed"] = scenario, seed
    _WORKER["splits"] = _load_splits(scenario, split_seeds, seed, Store(root), device, refs_metrics)


def _worker_gap(method: str, base: dict, params: dict, i: int, objective: str = "gap") -> float:
    key = (method, repr(base), objective)
    if _WORKER.get("objective_key") != key:  # one objective per worker and method (Re-train's profile kept)
        _WORKER["objective_key"] = key
        _WORKER["objective"] = _Objective(_WORKER["scenario"], method, base, _WORKER["seed"], _WORKER["splits"],
                                          objective)
    return _WORKER["objective"].gap(params, i)


class _PoolObjective:
    """:class:`_Objective` with each forget set's gap computed in a worker process (see :func:`_trial_pool`)."""

    def __init__(self, objective: _Objective, pool):
        self.objective, self.pool = objective, pool

    @property
    def splits(self) -> list:
        """The tuning forget sets (those of the wrapped objective: the workers load the same ones)."""
        return self.objective.splits

    def gap(self, params: dict, i: int) -> float:
        o = self.objective
        return self.pool.submit(_worker_gap, o.method, o.base, params, i, o.objective).result()

    def __call__(self, params: dict, report=None) -> tuple[float, list[float]]:
        return _mean_over_splits(self.gap, len(self.objective.splits), params, report)


@contextmanager
def _trial_pool(jobs: int, scenario: Scenario, split_seeds: list, seed: int, store, device: str, splits: list):
    """``jobs`` worker processes (spawned: torch's threads set before any work) that compute trials' gaps; on
    any exit, Ctrl-C included, they are ended at once rather than after their current trial."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    pool = ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"),
                               **workers.pool_initializer(_worker_init, scenario, split_seeds, seed, str(store.root),
                                                          device, [ref for *_, ref in splits]))
    try:
        yield pool
    finally:
        procs = list((getattr(pool, "_processes", None) or {}).values())  # no public way to stop a running task
        pool.shutdown(wait=False, cancel_futures=True)
        for p in procs:
            if p.is_alive():
                p.terminate()
            p.join()




def provenance(study, space: dict, *, sampler_seed: int, seed: int, split_seeds, preset: str, wall_s: float,
               prune: bool = False, incumbent: dict | None = None, objective: str = "gap") -> dict:
    """Everything needed to audit the choice: sampler and seed, pruner, spaces, every trial (a pruned one with its
    first forget set's gap), the best trial with its gap per tuning forget set, importances. Times: ``wall_s``
    is this invocation's, ``span_s`` the study's own, from its first trial's start to its last trial's end
    (over every invocation that added trials: a study resumed with nothing left to do still shows its span)."""
    optuna = _optuna()
    from optuna.trial import TrialState

    rows = []
    for t in study.get_trials(deepcopy=False):
        rows.append({"number": t.number, "state": t.state.name, "values": dict(t.params),
                     "avg_gap": t.value if t.state == TrialState.COMPLETE else None,
                     "gaps": t.user_attrs.get("gaps"), "failed_reason": t.user_attrs.get("failed_reason"),
                     "seconds": t.user_attrs.get("seconds")})
    stamps = [(t.datetime_start, t.datetime_complete) for t in study.get_trials(deepcopy=False)
              if t.datetime_start is not None and t.datetime_complete is not None]
    span = (max(e for _, e in stamps) - min(s for s, _ in stamps)).total_seconds() if stamps else 0.0
    complete = [r for r in rows if r["avg_gap"] is not None]
    best = min(complete, key=lambda r: (r["avg_gap"], r["number"])) if complete else None
    if best is not None and best["gaps"] is not None:  # keyed by split seed: the README compares these per method
        best = {**best, "split_gaps": {str(s): g for s, g in zip(split_seeds, best["gaps"])}}
    try:
        importances = {k: round(float(v), 4) for k, v in optuna.importance.get_param_importances(study).items()}
    except Exception as e:  # too few complete trials, or a constant parameter
        importances = {"unavailable": f"{type(e).__name__}: {e}"[:200]}
    out = {"optimizer": f"optuna {optuna.__version__} TPESampler", "sampler_seed": sampler_seed,
            "n_startup_trials": N_STARTUP_TRIALS, "study": study.study_name,
            "pruner": _pruner_name() if prune else None,
            "space": {k: p.to_json() for k, p in space.items()},
            "objective": OBJECTIVES[objective], "tuning_seed": seed,
            "split_seeds": list(split_seeds), "preset": preset, "trials": len(rows),
            "failed": sum(r["state"] == "FAIL" for r in rows), "pruned": sum(r["state"] == "PRUNED" for r in rows),
            "wall_s": round(wall_s, 1), "span_s": round(span, 1), "best": best, "importances": importances,
            "all_trials": rows}
    if incumbent is not None:  # trial 0 ran the current settings: what tuning had to beat
        first = next((r for r in rows if r["number"] == 0), None)
        out["incumbent"] = {"values": incumbent, "avg_gap": first and first["avg_gap"], "gaps": first and first["gaps"],
                            "state": first and first["state"]}
    return out


def _check_tune_args(scenario: Scenario, trials: int, jobs: int, timeout: float | None, seed: int,
                     split_seeds: list[int]) -> None:
    """Decides whether the tuning settings are usable (before any work): counts, timeout, and seeds that are never
    reported."""
    if trials < 1:
        raise ConfigError(f"--trials = {trials}: expected an integer >= 1")
    if jobs < 1:
        raise ConfigError(f"--jobs = {jobs}: expected an integer >= 1")
    if timeout is not None and not timeout > 0:
        raise ConfigError(f"--timeout = {timeout}: expected a number of seconds > 0")
    if seed in scenario.seeds.run:
        raise ConfigError(f"--seed = {seed}: expected a seed that is not reported (run seeds {scenario.seeds.run})")
    if scenario.seeds.split in split_seeds:
        raise ConfigError(f"--split-seeds = {split_seeds}: expected forget sets that are never reported "
                          f"(the reported split seed is {scenario.seeds.split})")
    if len(set(split_seeds)) != len(split_seeds) or not split_seeds:
        raise ConfigError(f"--split-seeds = {split_seeds}: expected distinct seeds")


def incumbent_values(scenario: Scenario, method: str, base: dict | None = None) -> dict:
    """The method's current value of every parameter it searches (its config for the scenario's preset and
    ``base``; None = what `rurk run` uses: the scenario's shipped tuned values under its own [methods] table),
    refused in one line when one lies outside its search range (Optuna could not enqueue it)."""
    if base is None:
        base = with_tuned(scenario).methods.get(method, {})
    spec = get_method(method)
    cfg = spec.config(scenario.preset, base)
    values = {k: getattr(cfg, k) for k in spec.space}
    for k, p in spec.space.items():
        if not p.contains(values[k]):
            where = p.choices if p.kind == "choice" else f"[{p.low}, {p.high}]"
            raise ConfigError(f"--incumbent: {method}'s current {k} = {values[k]!r} is outside its search space "
                              f"{where}")
    return values


def _tuned_methods(scenario: Scenario, methods: list[str]) -> list[str]:
    """The methods to tune: ``["all"]`` = the scenario's (else every registered) methods with a search space;
    a named method without one is refused."""
    registry = load_all()
    if methods == ["all"]:
        methods = [m for m in (scenario.run_methods or sorted(registry)) if registry[m].space]
    for m in methods:
        if not get_method(m).space:
            raise ConfigError(f"method = {m!r}: declares no search space")
    return methods


def _ray_references(executor, scenario: Scenario, split_seeds: list[int], seed: int, store, out, device: str,
                    log) -> None:
    """The tuning forget sets' reference models trained as Ray tasks (the driver then only loads them)."""
    for s in split_seeds:
        tuning = replace(scenario, seeds=replace(scenario.seeds, split=s))
        executor.fill(tuning, RunOptions(device=device), store, prepare(tuning, store), [seed], [], None,
                      Path(out) / tuning.name, log=log, references_only=True)


def _remote_objective(objective: _Objective, workers, executor, store, device: str):
    """Where a trial's gaps are computed, as a context giving the objective: the local worker processes
    (``workers``), Ray tasks (``executor``), else this process."""
    from contextlib import nullcontext

    if workers is not None:
        return nullcontext(_PoolObjective(objective, workers))
    if executor is not None:
        return executor.objective(objective, store, device=device)
    return nullcontext(objective)


def tune(scenario: Scenario, methods: list[str], out: str | Path, *, trials: int = 24, timeout: float | None = None,
         jobs: int | None = None, seed: int | None = None, split_seeds=DEFAULT_SPLIT_SEEDS, sampler_seed: int = 0,
         prune: bool = True, write: str | Path | None = None, device: str = "auto", log=print,
         executor=None, incumbent: bool = False, objective: str = "gap") -> Path:
    """Tune each method in ``methods`` ("all" = every method with a search space) and write the TOML.
    ``objective``: what a trial is scored by (:data:`OBJECTIVES`; ``profile`` adds r's distance from 1 over τ).

    ``jobs`` trials run at once (None: the CPUs this process may use); locally each in a worker process of one
    torch thread (``jobs`` = 1: in this process). ``prune`` stops a trial whose first forget set's gap is worse
    than the median there (see :func:`run_study`). ``incumbent``: trial 0 runs the method's current settings (the
    scenario's values over the config's defaults), so the study records whether tuning beats them.

    ``executor`` (None = local) is a :class:`rurk.run.ray_exec.RayExecutor`: the tuning references are
    trained as Ray tasks and each trial is one Ray task (``jobs`` of them at once); trials are still asked and
    told here, under the same lock and with the same per-trial seeded sampler, so the study and its provenance
    are those of the local path. A Ray trial runs every forget set in one task, so it is never pruned."""
    from contextlib import nullcontext

    seed = DEFAULT_TUNING_SEED if seed is None else int(seed)
    split_seeds = [int(s) for s in split_seeds]
    if objective not in OBJECTIVES:
        raise ConfigError(f"--objective = {objective!r}: expected one of {', '.join(OBJECTIVES)}")
    if jobs is None:
        jobs = available_cpus()
    _check_tune_args(scenario, trials, jobs, timeout, seed, split_seeds)
    methods = _tuned_methods(scenario, methods)
    starts = {m: incumbent_values(scenario, m) if incumbent else None for m in methods}
    prune = prune and executor is None
    session = executor.session() if executor is not None else nullcontext()
    with session:  # one Ray session for the references and every method's trials
        store = Store(out)
        if executor is not None:  # the references as Ray tasks; the driver then only loads them (on its CPU)
            _ray_references(executor, scenario, split_seeds, seed, store, out, device, log)
        splits = _load_splits(scenario, split_seeds, seed, store, device if executor is None else "cpu")
        pool = (_trial_pool(jobs, scenario, split_seeds, seed, store, device, splits)
                if executor is None and jobs > 1 else nullcontext())
        storage = f"sqlite:///{(Path(out) / 'tune.db').resolve()}"
        path = Path(write) if write else Path(out) / f"tuned-{scenario.name}.toml"
        existing = read_tuned(path) if path.exists() else {}
        with pool as workers:
            for method in methods:
                spec = get_method(method)
                base = scenario.methods.get(method, {})
                start = starts[method]  # checked for every method before any work
                name = study_name(scenario, method, base, seed, split_seeds, sampler_seed, prune, start, objective)
                how = f"{jobs} job{'s' * (jobs > 1)}" + (", pruning" if prune else "")
                log(f"{method}: study {name} ({trials} trials, {how})")
                t0 = time.perf_counter()
                scorer = _Objective(scenario, method, base, seed, splits, objective)
                with _remote_objective(scorer, workers, executor, store, device) as evaluate_params:
                    study = run_study(evaluate_params, spec.space, storage, name, trials=trials, timeout=timeout,
                                      jobs=jobs, sampler_seed=sampler_seed, prune=prune, incumbent=start, log=log)
                prov = provenance(study, spec.space, sampler_seed=sampler_seed, seed=seed, split_seeds=split_seeds,
                                  preset=scenario.preset, wall_s=time.perf_counter() - t0, prune=prune,
                                  incumbent=start, objective=objective)
                if prov["best"] is None:
                    log(f"{method}: every trial failed; nothing written")
                    continue
                log(f"{method}: best trial {prov['best']['number']} avg gap {prov['best']['avg_gap']:.2f}: "
                    f"{_fmt_params(prov['best']['values'])}")
                if start is not None:
                    inc = prov["incumbent"]
                    log(f"{method}: the incumbent (trial 0, the current settings): "
                        + (f"avg gap {inc['avg_gap']:.2f}" if inc["avg_gap"] is not None else str(inc["state"]).lower()))
                existing[method] = {"values": prov["best"]["values"], "provenance": prov}
                _write(path, scenario.name, existing)
    return path
