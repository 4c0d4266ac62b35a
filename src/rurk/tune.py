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
  op and Python's lock serialises the rest; :mod:`rurk.pool_exec` measured the same for `rurk run`); the
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
import math
import os
import socket
import threading
import time
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import replace
from importlib import resources
from pathlib import Path

from . import workers
from .config import ConfigError, Scenario, from_dict, merge, read_toml, to_dict
from .metrics import avg_gap
from .methods.base import get_method, unlearn
from .torchutil import derive_seed
from .train import diverged
from .experiment import RunOptions, check_method_tables, evaluate, scenario_with
from .methods import load_all
from .pipeline import prepare, reference_models
from .store import Store
from .threads import available_cpus

#: TPE's random start-up trials before it models the objective (decision: Optuna's default is 10; 8 leaves
#: more model-based trials in a CPU budget of ~24).
N_STARTUP_TRIALS = 8
#: complete trials the pruner waits for before it prunes (decision: fewer would set the bar on noise; more would
#: leave most of a 12-24 trial budget unpruned; 4 lets half of TPE's random start-up trials be pruned)
PRUNER_STARTUP_TRIALS = 4
DEFAULT_SPLIT_SEEDS = (1, 2, 3)
DEFAULT_TUNING_SEED = 1


class TrialFailed(RuntimeError):
    """A trial's setting diverged or produced non-finite weights (scored as failed, not as a number)."""


def _optuna():
    try:
        import optuna
    except ImportError:  # pragma: no cover - optuna is a dependency
        raise ImportError("`rurk tune` needs optuna: pip install optuna") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def study_name(scenario: Scenario, method: str, base: dict, seed: int, split_seeds, sampler_seed: int,
               prune: bool = True, incumbent: dict | None = None) -> str:
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
    digest = hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return f"{scenario.name}/{method}/{digest}"


def _pruner_name() -> str:
    return f"MedianPruner(n_startup_trials={PRUNER_STARTUP_TRIALS}) on the first tuning forget set's gap"


def _pruner(optuna, prune: bool):
    """The study's pruner: prune at step 0 (the first forget set) against the median of earlier trials there."""
    if not prune:
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=PRUNER_STARTUP_TRIALS, n_warmup_steps=0)


def _mean_over_splits(gap, n: int, params: dict, report=None) -> tuple[float, list[float]]:
    """Mean of ``gap(params, i)`` over the ``n`` tuning forget sets, in order; ``report(gap_0)`` after the first
    (it raises ``optuna.TrialPruned`` to stop a trial that is already bad there)."""
    gaps = []
    for i in range(n):
        gaps.append(gap(params, i))
        if i == 0 and n > 1 and report is not None:
            report(gaps[0])
    return float(sum(gaps) / len(gaps)), gaps


class _Objective:
    """Mean Avg. Gap of one setting over the tuning forget sets (references trained once, from the store).
    ``splits``: (prepared, references, unlearning data, Re-train's metrics) per tuning forget set."""

    def __init__(self, scenario: Scenario, method: str, base: dict, seed: int, splits: list):
        self.scenario, self.method, self.base, self.seed, self.splits = scenario, method, base, seed, splits

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
        return avg_gap(evaluate(model, prepared, self.seed, None, relearn=False), ref)  # Avg. Gap over the declared keys

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


def _worker_gap(method: str, base: dict, params: dict, i: int) -> float:
    return _Objective(_WORKER["scenario"], method, base, _WORKER["seed"], _WORKER["splits"]).gap(params, i)


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
        return self.pool.submit(_worker_gap, o.method, o.base, params, i).result()

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


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stale(trial) -> bool:
    """A RUNNING trial nobody is working on: marked interrupted, left without an owner, or owned by a process on
    this host that is gone. Optuna's ``ask`` and our owner attributes are separate writes, so a process killed
    between them leaves a trial with no owner at all; it is as dead as one whose pid is gone. (Another process
    sharing the study is in that window only for milliseconds; a trial owned by another host is left alone.)"""
    a = trial.user_attrs
    if a.get("interrupted") or a.get("discarded"):
        return True
    if not isinstance(a.get("pid"), int) or "host" not in a:
        return True
    return a["host"] == socket.gethostname() and not _alive(a["pid"])


def _counted(trial) -> bool:
    """Whether a trial counts toward ``--trials``: every trial but one discarded as cut off before its values were
    drawn (:func:`run_study` asks a new trial in its place)."""
    return not trial.user_attrs.get("discarded")


class _StudyRun:
    """One run of :func:`run_study` on a loaded study: its settings, and the lock and distributions its worker
    threads share."""

    def __init__(self, optuna, study, objective, space: dict, storage: str, name: str, pruner, *, trials: int,
                 timeout: float | None, sampler_seed: int, prune: bool, log, incumbent: dict | None = None):
        self.incumbent = incumbent
        self.optuna, self.study, self.objective, self.space = optuna, study, objective, space
        self.storage, self.name, self.pruner, self.trials, self.timeout = storage, name, pruner, trials, timeout
        self.sampler_seed, self.prune, self.log = sampler_seed, prune, log
        self.distributions = None
        self.lock = threading.Lock()
        self.stop = threading.Event()  # set when the run is interrupted: no trial is asked, failed or told after it
        self.t0 = time.monotonic()

    def _reporter(self, trial):
        """The ``report`` of a pruning objective: decides after the first split whether the trial is pruned."""

        def report(first: float) -> None:
            if not math.isfinite(first):
                return  # left to the end, where a non-finite mean is a failed trial
            trial.report(first, 0)  # a resumed trial's repeated report of step 0 is ignored by Optuna (same value)
            if trial.should_prune():
                raise self.optuna.TrialPruned(first)

        return report

    def evaluate(self, trial) -> None:
        """Runs one trial and tells the study how it ended: complete, pruned, failed or with a non-finite gap."""
        TrialState, log = self.optuna.trial.TrialState, self.log
        params, t = dict(trial.params), time.perf_counter()
        try:
            value, per_split = self.objective(params, self._reporter(trial)) if self.prune else self.objective(params)
        except self.optuna.TrialPruned as e:  # before the generic handler: a pruned trial is no failure
            first = float(e.args[0])
            trial.set_user_attr("gaps", [first])
            trial.set_user_attr("seconds", round(time.perf_counter() - t, 2))
            self.study.tell(trial, state=TrialState.PRUNED)  # Optuna keeps the first split's gap as its value
            log(f"  trial {trial.number:3d} pruned (first split gap {first:6.2f}): {_fmt_params(params)}")
            return
        except (KeyboardInterrupt, SystemExit):
            trial.set_user_attr("interrupted", True)  # the next run finishes it with these values
            raise
        except BrokenProcessPool as e:  # a worker process died (killed, out of memory): the run ends, the trial waits
            trial.set_user_attr("interrupted", True)
            self.stop.set()
            raise RuntimeError(f"a trial worker process died ({e}); finished trials are kept in {self.storage}: "
                               "run the same command again to continue (this trial is run again)") from None
        except Exception as e:  # a failing setting is a failed trial, never the end of the study
            if self.stop.is_set():  # the run was interrupted under this trial (its pool shut down): not its failure
                trial.set_user_attr("interrupted", True)
                return
            reason = f"{type(e).__name__}: {e}"
            trial.set_user_attr("failed_reason", reason[:500])
            trial.set_user_attr("seconds", round(time.perf_counter() - t, 2))
            self.study.tell(trial, state=TrialState.FAIL)
            log(f"  trial {trial.number:3d} failed ({reason[:120]}): {_fmt_params(params)}")
            return
        trial.set_user_attr("gaps", per_split)
        trial.set_user_attr("seconds", round(time.perf_counter() - t, 2))
        if not math.isfinite(value):
            trial.set_user_attr("failed_reason", "non-finite Avg. Gap")
            self.study.tell(trial, state=TrialState.FAIL)
            return
        self.study.tell(trial, value)
        log(f"  trial {trial.number:3d} avg gap {value:6.2f}: {_fmt_params(params)}")

    def resume_stale(self) -> None:
        """Decides what becomes of the trials an earlier, interrupted run left RUNNING (the interrupt may hit
        anywhere, even inside Optuna's ask): one with all its values is finished with them in place, so none is lost
        or repeated; one cut off while its values were being drawn never ran, so it is marked discarded (first, so a
        kill in between leaves it stale) and failed, and no longer counts: the loop asks a new trial, from the same
        per-index sampler seed."""
        study, log, TrialState = self.study, self.log, self.optuna.trial.TrialState
        for ft in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if not _stale(ft):
                continue
            trial = self.optuna.trial.Trial(study, ft._trial_id)  # Optuna has no public "trial by number" for a Study
            if set(ft.params) != set(self.space):
                log(f"  discarding trial {ft.number}: interrupted before its values were drawn")
                trial.set_user_attr("discarded", True)
                trial.set_user_attr("failed_reason", "interrupted before its values were drawn; replaced by a new trial")
                study.tell(trial, state=TrialState.FAIL)
                continue
            log(f"  resuming interrupted trial {ft.number}")
            trial.set_user_attr("pid", os.getpid())
            trial.set_user_attr("host", socket.gethostname())
            trial.set_user_attr("interrupted", False)
            self.evaluate(trial)

    def finished(self) -> int:
        """The trials that count toward ``trials`` and are done or being run."""
        TrialState = self.optuna.trial.TrialState
        return sum(_counted(t) for t in self.study.get_trials(deepcopy=False, states=(
            TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED, TrialState.RUNNING)))

    def _done(self) -> bool:
        """Whether the study is done: ``trials`` finished (or being run), or the time is up."""
        return self.finished() >= self.trials or (self.timeout is not None and
                                                  time.monotonic() - self.t0 >= self.timeout)

    def _next_trial(self):
        """Under the lock: None when the study is done, else a new trial asked with the sampler seeded for its
        index and marked as this process's."""
        optuna = self.optuna
        with self.lock:
            if self._done() or self.stop.is_set():
                return None
            # n = the trial's number when none was discarded
            n = sum(_counted(t) for t in self.study.get_trials(deepcopy=False))
            sampler = optuna.samplers.TPESampler(seed=derive_seed(self.sampler_seed, "tpe", n) % 2**32,
                                                 n_startup_trials=N_STARTUP_TRIALS)
            s = optuna.load_study(study_name=self.name, storage=self.storage, sampler=sampler, pruner=self.pruner)
            if n == 0 and self.incumbent is not None:  # (an enqueued, still WAITING trial already counts in n)
                s.enqueue_trial(self.incumbent)  # trial 0: the current settings, the value tuning has to beat
            if self.distributions is None:
                self.distributions = {k: _distribution(optuna, p) for k, p in self.space.items()}
            trial = s.ask(self.distributions)
            trial.set_user_attr("pid", os.getpid())
            trial.set_user_attr("host", socket.gethostname())
        return trial

    def worker(self) -> None:
        """Asks and evaluates trials until :meth:`_next_trial` says the study is done."""
        while True:
            trial = self._next_trial()
            if trial is None:
                return
            self.evaluate(trial)

    def run(self, jobs: int) -> None:
        """Runs :meth:`worker` here (``jobs`` <= 1) or in ``jobs`` threads, re-raising a thread's first error."""
        if jobs <= 1:
            self.worker()
            return
        errors: list[BaseException] = []

        def guarded():
            try:
                self.worker()
            except BaseException as e:  # noqa: BLE001 - re-raised in the main thread
                self.stop.set()
                errors.append(e)

        threads = [threading.Thread(target=guarded, daemon=True) for _ in range(jobs)]
        try:
            for th in threads:
                th.start()
            for th in threads:
                th.join()
        except BaseException:  # Ctrl-C while waiting: the other threads' trials are interrupted, not failed
            self.stop.set()
            raise
        if errors:
            raise errors[0]


def run_study(objective, space: dict, storage: str, name: str, *, trials: int, timeout: float | None = None,
              jobs: int = 1, sampler_seed: int = 0, prune: bool = False, incumbent: dict | None = None, log=print):
    """Run (or continue) the study until it holds ``trials`` finished trials or ``timeout`` seconds passed.
    ``objective(params) -> (value, per-split values)``; exceptions make a failed trial. With ``prune`` it is
    called as ``objective(params, report)`` and must call ``report(first split's value)`` after its first split:
    a trial worse there than the median of earlier trials is stopped and recorded PRUNED with that one value.
    ``jobs`` threads ask, evaluate and tell trials at once (the objective may hand its work to processes).
    ``incumbent`` (values for every parameter of ``space``): trial 0 runs with them instead of sampled ones.
    Returns the study."""
    optuna = _optuna()
    pruner = _pruner(optuna, prune)
    study = optuna.create_study(study_name=name, storage=storage, direction="minimize", load_if_exists=True,
                                pruner=pruner)
    run = _StudyRun(optuna, study, objective, space, storage, name, pruner, trials=trials, timeout=timeout,
                    sampler_seed=sampler_seed, prune=prune, log=log, incumbent=incumbent)
    run.resume_stale()  # 1. trials an earlier, interrupted run left RUNNING
    run.run(jobs)  # 2. new trials until ``trials`` are finished or the time is up
    return study


def _distribution(optuna, p):
    d = optuna.distributions
    if p.kind == "choice":
        return d.CategoricalDistribution(list(p.choices))
    if p.kind == "int":
        return d.IntDistribution(int(p.low), int(p.high))
    return d.FloatDistribution(float(p.low), float(p.high), log=p.kind == "log")


def _fmt_params(params: dict) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def provenance(study, space: dict, *, sampler_seed: int, seed: int, split_seeds, preset: str, wall_s: float,
               prune: bool = False, incumbent: dict | None = None) -> dict:
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
            "objective": "mean Avg. Gap to Re-train over the tuning forget sets", "tuning_seed": seed,
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
         executor=None, incumbent: bool = False) -> Path:
    """Tune each method in ``methods`` ("all" = every method with a search space) and write the TOML.

    ``jobs`` trials run at once (None: the CPUs this process may use); locally each in a worker process of one
    torch thread (``jobs`` = 1: in this process). ``prune`` stops a trial whose first forget set's gap is worse
    than the median there (see :func:`run_study`). ``incumbent``: trial 0 runs the method's current settings (the
    scenario's values over the config's defaults), so the study records whether tuning beats them.

    ``executor`` (None = local) is a :class:`rurk.ray_exec.RayExecutor`: the tuning references are
    trained as Ray tasks and each trial is one Ray task (``jobs`` of them at once); trials are still asked and
    told here, under the same lock and with the same per-trial seeded sampler, so the study and its provenance
    are those of the local path. A Ray trial runs every forget set in one task, so it is never pruned."""
    from contextlib import nullcontext

    seed = DEFAULT_TUNING_SEED if seed is None else int(seed)
    split_seeds = [int(s) for s in split_seeds]
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
                name = study_name(scenario, method, base, seed, split_seeds, sampler_seed, prune, start)
                how = f"{jobs} job{'s' * (jobs > 1)}" + (", pruning" if prune else "")
                log(f"{method}: study {name} ({trials} trials, {how})")
                t0 = time.perf_counter()
                objective = _Objective(scenario, method, base, seed, splits)
                with _remote_objective(objective, workers, executor, store, device) as evaluate_params:
                    study = run_study(evaluate_params, spec.space, storage, name, trials=trials, timeout=timeout,
                                      jobs=jobs, sampler_seed=sampler_seed, prune=prune, incumbent=start, log=log)
                prov = provenance(study, spec.space, sampler_seed=sampler_seed, seed=seed, split_seeds=split_seeds,
                                  preset=scenario.preset, wall_s=time.perf_counter() - t0, prune=prune,
                                  incumbent=start)
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


def read_tuned(path: Path) -> dict:
    """{method: {"values": {...}, "provenance": {...}}} of a tuned TOML file, provenance decoded."""
    raw = read_toml(path, "tuned file")
    prov = raw.get("provenance", {})
    return {m: {"values": v, "provenance": json.loads(prov[m]) if m in prov else {}} for m, v in raw.get("methods", {}).items()}


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def _write(path: Path, scenario: str, entries: dict) -> None:
    lines = [f"# Tuned method settings for {scenario}, written by `rurk tune` (Optuna TPE; objective: mean Avg. Gap",
             "# to Re-train over tuning forget sets and a seed that are never reported; [provenance] holds the",
             "# sampler and seed, spaces, every trial, the best trial and the parameter importances).", ""]
    for m, e in sorted(entries.items()):
        lines.append(f"[methods.{m}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in e["values"].items()]
        lines.append("")
    lines.append("[provenance]  # JSON per method")
    for m, e in sorted(entries.items()):
        lines.append(f"{m} = {json.dumps(json.dumps(e['provenance'], sort_keys=True))}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, path)


def tuned_path(name: str | Path) -> Path:
    """A tuned TOML by path, or shipped in the package (``rurk/tuned/NAME``)."""
    p = Path(name)
    if p.exists():
        return p
    shipped = Path(str(resources.files("rurk") / "tuned")) / p.name
    if shipped.exists():
        return shipped
    raise FileNotFoundError(f"tuned settings {str(name)!r} not found (looked at {p} and {shipped})")


def with_tuned(scenario: Scenario, name: str | Path | None = None) -> Scenario:
    """The scenario as `rurk run` uses it: the tuned values of ``name`` (default: the scenario's own ``tuned``
    file; ``"none"`` or unset: none) merged under its own [methods] table."""
    name = name or scenario.tuned
    return scenario if not name or name == "none" else scenario_with(scenario, load_tuned(name))


def load_tuned(name: str | Path) -> dict:
    """{method: {field: value}} from a tuned TOML file; validated against each method's config."""
    path = tuned_path(name)
    methods = read_toml(path, "tuned file").get("methods", {})
    if not isinstance(methods, dict):
        raise ConfigError(f"tuned file {path}: methods = {methods!r}: expected tables [methods.NAME]")
    check_method_tables(methods, f"tuned file {path}")
    for m, values in methods.items():
        spec = get_method(m)
        from_dict(spec.config_cls, values, prefix=f"{path.name}: methods.{m}")
    return methods


__all__ = ["tune", "run_study", "study_name", "provenance", "load_tuned", "with_tuned", "read_tuned", "tuned_path",
           "TrialFailed"]
