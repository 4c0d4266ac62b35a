"""An Optuna study that survives any interruption: trials asked, evaluated (in threads, their work in processes)
and told so that a study killed at any moment and started again loses no trial and counts none twice."""

from __future__ import annotations

import math
import os
import socket
import threading
import time
from concurrent.futures.process import BrokenProcessPool

from ..torchutil import derive_seed

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




def _pruner_name() -> str:
    return f"MedianPruner(n_startup_trials={PRUNER_STARTUP_TRIALS}) on the first tuning forget set's gap"


def _pruner(optuna, prune: bool):
    """The study's pruner: prune at step 0 (the first forget set) against the median of earlier trials there."""
    if not prune:
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=PRUNER_STARTUP_TRIALS, n_warmup_steps=0)




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
                while th.is_alive():  # a short wait, not join(): the kernel may hand Ctrl-C's SIGINT to a trial
                    th.join(0.2)  # thread, and Python runs the handler only when the main thread runs again
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
