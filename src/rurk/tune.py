"""`rurk tune`: pick a method's hyperparameters by the smallest Avg. Gap to Re-train, with Optuna.

Approximate unlearners are very sensitive to their learning rate, epochs and loss weights, and the good
region is often a few optimiser steps wide (spec: baselines.md §0 "Tuning"). So:

- each method declares its own search space next to its config (``space=`` of
  :func:`rurk.methods.base.register`: log-uniform rates and loss weights, integer epochs; RURK searches lr,
  epochs, λ_f, λ_a and its training τ independently);
- a seeded TPE sampler (Optuna) searches it; trial *k* is asked with a sampler seeded from
  ``(sampler_seed, k)``, so the same seed gives the same trials, also across an interrupted and resumed run;
- the objective is the **mean Avg. Gap over two tuning forget sets** (split seeds never reported, default 1
  and 2) at a tuning run seed that is not reported (default 1), so one lucky forget set does not decide;
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
from dataclasses import replace
from importlib import resources
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from .config import ConfigError, Scenario, from_dict, merge, to_dict
from .metrics import GAP_KEYS, avg_gap
from .methods.base import get_method, unlearn
from .torchutil import derive_seed
from .train import diverged

#: TPE's random start-up trials before it models the objective (decision: Optuna's default is 10; 8 leaves
#: more model-based trials in a CPU budget of ~24).
N_STARTUP_TRIALS = 8
DEFAULT_SPLIT_SEEDS = (1, 2)
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


def study_name(scenario: Scenario, method: str, base: dict, seed: int, split_seeds, sampler_seed: int) -> str:
    """The study's name: method plus a hash of everything a trial's score depends on (scenario data, model,
    recipes, the method's base config and space, seeds). A changed setting starts a new study."""
    spec = get_method(method)
    # the re-learn metric is not part of the objective (trials skip it), so its settings stay out of the identity
    ident = {"scenario": {k: v for k, v in to_dict(scenario).items()
                          if k not in ("methods", "tuned", "description", "relearn")},
             "method": method, "base": base, "space": {k: p.to_json() for k, p in spec.space.items()},
             "seed": seed, "split_seeds": list(split_seeds), "sampler_seed": sampler_seed,
             "n_startup": N_STARTUP_TRIALS}
    digest = hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return f"{scenario.name}/{method}/{digest}"


class _Objective:
    """Mean Avg. Gap of one setting over the tuning forget sets (references trained once, from the store)."""

    def __init__(self, scenario: Scenario, method: str, base: dict, seed: int, splits: list):
        self.scenario, self.method, self.base, self.seed, self.splits = scenario, method, base, seed, splits

    def config(self, params: dict):
        return get_method(self.method).config(self.scenario.preset, merge(self.base, params))

    def __call__(self, params: dict) -> tuple[float, list[float]]:
        from .experiment import evaluate

        cfg = self.config(params)
        gaps = []
        for prepared, refs, udata, ref in self.splits:
            model, rec = unlearn(self.method, refs.original, udata, self.seed, cfg=cfg)
            if diverged(rec, model):
                raise TrialFailed(f"diverged at step {rec.diverged_step} on split seed {prepared.scenario.seeds.split}")
            gaps.append(avg_gap(evaluate(model, prepared, self.seed, None, relearn=False), ref, GAP_KEYS))
        return float(sum(gaps) / len(gaps)), gaps


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


def run_study(objective, space: dict, storage: str, name: str, *, trials: int, timeout: float | None = None,
              jobs: int = 1, sampler_seed: int = 0, log=print):
    """Run (or continue) the study until it holds ``trials`` finished trials or ``timeout`` seconds passed.
    ``objective(params) -> (value, per-split values)``; exceptions make a failed trial. Returns the study."""
    optuna = _optuna()
    from optuna.trial import TrialState

    study = optuna.create_study(study_name=name, storage=storage, direction="minimize", load_if_exists=True)
    distributions = None
    lock = threading.Lock()
    t0 = time.monotonic()

    def evaluate(trial) -> None:
        params, t = dict(trial.params), time.perf_counter()
        try:
            value, per_split = objective(params)
        except (KeyboardInterrupt, SystemExit):
            trial.set_user_attr("interrupted", True)  # the next run finishes it with these values
            raise
        except Exception as e:  # a failing setting is a failed trial, never the end of the study
            reason = f"{type(e).__name__}: {e}"
            trial.set_user_attr("failed_reason", reason[:500])
            trial.set_user_attr("seconds", round(time.perf_counter() - t, 2))
            study.tell(trial, state=TrialState.FAIL)
            log(f"  trial {trial.number:3d} failed ({reason[:120]}): {_fmt_params(params)}")
            return
        trial.set_user_attr("gaps", per_split)
        trial.set_user_attr("seconds", round(time.perf_counter() - t, 2))
        if not math.isfinite(value):
            trial.set_user_attr("failed_reason", "non-finite Avg. Gap")
            study.tell(trial, state=TrialState.FAIL)
            return
        study.tell(trial, value)
        log(f"  trial {trial.number:3d} avg gap {value:6.2f}: {_fmt_params(params)}")

    # 1. trials an earlier, interrupted run left RUNNING (the interrupt may hit anywhere, even inside Optuna's
    # ask): one with all its values is finished with them in place, so none is lost or repeated; one cut off while
    # its values were being drawn never ran, so it is marked discarded (first, so a kill in between leaves it stale)
    # and failed, and no longer counts: the loop asks a new trial, from the same per-index sampler seed
    for ft in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not _stale(ft):
            continue
        trial = optuna.trial.Trial(study, ft._trial_id)  # Optuna has no public "trial by number" for a Study
        if set(ft.params) != set(space):
            log(f"  discarding trial {ft.number}: interrupted before its values were drawn")
            trial.set_user_attr("discarded", True)
            trial.set_user_attr("failed_reason", "interrupted before its values were drawn; replaced by a new trial")
            study.tell(trial, state=TrialState.FAIL)
            continue
        log(f"  resuming interrupted trial {ft.number}")
        trial.set_user_attr("pid", os.getpid())
        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("interrupted", False)
        evaluate(trial)

    def finished() -> int:
        return sum(_counted(t) for t in study.get_trials(deepcopy=False, states=(
            TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED, TrialState.RUNNING)))

    def worker() -> None:
        nonlocal distributions
        while True:
            with lock:
                if finished() >= trials or (timeout is not None and time.monotonic() - t0 >= timeout):
                    return
                n = sum(_counted(t) for t in study.get_trials(deepcopy=False))  # = the trial's number when none was discarded
                sampler = optuna.samplers.TPESampler(seed=derive_seed(sampler_seed, "tpe", n) % 2**32,
                                                     n_startup_trials=N_STARTUP_TRIALS)
                s = optuna.load_study(study_name=name, storage=storage, sampler=sampler)
                if distributions is None:
                    distributions = {k: _distribution(optuna, p) for k, p in space.items()}
                trial = s.ask(distributions)
                trial.set_user_attr("pid", os.getpid())
                trial.set_user_attr("host", socket.gethostname())
            evaluate(trial)

    if jobs <= 1:
        worker()
    else:
        errors: list[BaseException] = []

        def guarded():
            try:
                worker()
            except BaseException as e:  # noqa: BLE001 - re-raised in the main thread
                errors.append(e)

        threads = [threading.Thread(target=guarded, daemon=True) for _ in range(jobs)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        if errors:
            raise errors[0]
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


def provenance(study, space: dict, *, sampler_seed: int, seed: int, split_seeds, preset: str, wall_s: float) -> dict:
    """Everything needed to audit the choice: sampler and seed, spaces, every trial, best trial, importances."""
    optuna = _optuna()
    from optuna.trial import TrialState

    rows = []
    for t in study.get_trials(deepcopy=False):
        rows.append({"number": t.number, "state": t.state.name, "values": dict(t.params),
                     "avg_gap": t.value if t.state == TrialState.COMPLETE else None,
                     "gaps": t.user_attrs.get("gaps"), "failed_reason": t.user_attrs.get("failed_reason"),
                     "seconds": t.user_attrs.get("seconds")})
    complete = [r for r in rows if r["avg_gap"] is not None]
    best = min(complete, key=lambda r: (r["avg_gap"], r["number"])) if complete else None
    try:
        importances = {k: round(float(v), 4) for k, v in optuna.importance.get_param_importances(study).items()}
    except Exception as e:  # too few complete trials, or a constant parameter
        importances = {"unavailable": f"{type(e).__name__}: {e}"[:200]}
    return {"optimizer": f"optuna {optuna.__version__} TPESampler", "sampler_seed": sampler_seed,
            "n_startup_trials": N_STARTUP_TRIALS, "study": study.study_name,
            "space": {k: p.to_json() for k, p in space.items()},
            "objective": "mean Avg. Gap to Re-train over the tuning forget sets", "tuning_seed": seed,
            "split_seeds": list(split_seeds), "preset": preset, "trials": len(rows),
            "failed": sum(r["state"] == "FAIL" for r in rows), "wall_s": round(wall_s, 1),
            "best": best, "importances": importances, "all_trials": rows}


def tune(scenario: Scenario, methods: list[str], out: str | Path, *, trials: int = 24, timeout: float | None = None,
         jobs: int = 1, seed: int | None = None, split_seeds=DEFAULT_SPLIT_SEEDS, sampler_seed: int = 0,
         write: str | Path | None = None, device: str = "auto", log=print, executor=None) -> Path:
    """Tune each method in ``methods`` ("all" = every method with a search space) and write the TOML.

    ``executor`` (None = local threads) is a :class:`rurk.ray_exec.RayExecutor`: the tuning references are
    trained as Ray tasks and each trial is one Ray task (``jobs`` of them at once); trials are still asked and
    told here, under the same lock and with the same per-trial seeded sampler, so the study and its provenance
    are those of the local path."""
    from contextlib import nullcontext

    from .experiment import evaluate
    from .methods import load_all
    from .pipeline import prepare, reference_models
    from .store import Store

    seed = DEFAULT_TUNING_SEED if seed is None else int(seed)
    split_seeds = [int(s) for s in split_seeds]
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
    registry = load_all()
    if methods == ["all"]:
        methods = [m for m in (scenario.run_methods or sorted(registry)) if registry[m].space]
    for m in methods:
        if not get_method(m).space:
            raise ConfigError(f"method = {m!r}: declares no search space")
    session = executor.session() if executor is not None else nullcontext()
    with session:  # one Ray session for the references and every method's trials
        store = Store(out)
        splits = []
        for s in split_seeds:
            tuning = replace(scenario, seeds=replace(scenario.seeds, split=s))
            prepared = prepare(tuning, store)
            here = device
            if executor is not None:  # the references as Ray tasks; the driver then only loads them (on its CPU)
                from .experiment import RunOptions

                executor.fill(tuning, RunOptions(device=device), store, prepared, [seed], [], None,
                              Path(out) / tuning.name, log=log, references_only=True)
                here = "cpu"
            refs = reference_models(tuning, prepared, seed, store, device=here)
            ref = evaluate(refs.retrain, prepared, seed, None, relearn=False)
            splits.append((prepared, refs, prepared.unlearn_data(refs.pretrained), ref))
        storage = f"sqlite:///{(Path(out) / 'tune.db').resolve()}"
        path = Path(write) if write else Path(out) / f"tuned-{scenario.name}.toml"
        existing = _read(path) if path.exists() else {}
        for method in methods:
            spec = get_method(method)
            base = scenario.methods.get(method, {})
            name = study_name(scenario, method, base, seed, split_seeds, sampler_seed)
            log(f"{method}: study {name} ({trials} trials, {jobs} job{'s' * (jobs > 1)})")
            t0 = time.perf_counter()
            objective = _Objective(scenario, method, base, seed, splits)
            remote = executor.objective(objective, store, device=device) if executor is not None else nullcontext(objective)
            with remote as evaluate_params:
                study = run_study(evaluate_params, spec.space, storage, name, trials=trials, timeout=timeout, jobs=jobs,
                                  sampler_seed=sampler_seed, log=log)
            prov = provenance(study, spec.space, sampler_seed=sampler_seed, seed=seed, split_seeds=split_seeds,
                              preset=scenario.preset, wall_s=time.perf_counter() - t0)
            if prov["best"] is None:
                log(f"{method}: every trial failed; nothing written")
                continue
            log(f"{method}: best trial {prov['best']['number']} avg gap {prov['best']['avg_gap']:.2f}: "
                f"{_fmt_params(prov['best']['values'])}")
            existing[method] = {"values": prov["best"]["values"], "provenance": prov}
            _write(path, scenario.name, existing)
    return path


def _read(path: Path) -> dict:
    with open(path, "rb") as f:
        raw = tomllib.load(f)
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


def load_tuned(name: str | Path) -> dict:
    """{method: {field: value}} from a tuned TOML file; validated against each method's config."""
    path = tuned_path(name)
    with open(path, "rb") as f:
        methods = tomllib.load(f).get("methods", {})
    for m, values in methods.items():
        spec = get_method(m)
        from_dict(spec.config_cls, values, prefix=f"{path.name}: methods.{m}")
    return methods


__all__ = ["tune", "run_study", "study_name", "provenance", "load_tuned", "tuned_path", "TrialFailed"]
