"""`rurk tune` killed at any moment loses no trial and counts none twice (issue 20, item 6).

A kill can land inside Optuna's ``ask`` (the trial exists, RUNNING, with some or none of its values), between ``ask``
and the owner attributes, inside the objective, or between the objective and ``tell``. What a later start sees is
the study's storage, which changes only at its writes; so the sweep SIGKILLs a study process (forked: no interpreter
start-up per attempt) just before its 1st, 2nd, ... k-th storage write, which reaches every state a kill at any
delay can leave. Each time the study is then continued in this process and must hold exactly N counted trials, all
COMPLETE, none RUNNING, with the values an uninterrupted study draws. The second test kills the real command on
digits5 at delays after it logs trial 2.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time

import optuna
import pytest
from optuna.storages._cached_storage import _CachedStorage

from rurk.methods.base import integer, log_uniform
from rurk.run.study import run_study

N = 2
SPACE = {"x": log_uniform(1e-3, 1.0), "k": integer(1, 5), "z": log_uniform(1e-3, 1.0)}
#: every way Optuna (through its SQLite storage) changes a study's trials
WRITES = ("create_new_trial", "set_trial_param", "set_trial_state_values", "set_trial_user_attr",
          "set_trial_system_attr")


def bowl(params):
    v = (params["x"] - 0.1) ** 2 + 0.01 * params["k"] + params["z"]
    return v, [v]


def count_writes(monkeypatch, on_write) -> None:
    """Call ``on_write(n)`` before the n-th storage write (n = 1, 2, ...)."""
    n = 0
    for name in WRITES:
        real = getattr(_CachedStorage, name)

        def write(self, *a, _real=real, **k):
            nonlocal n
            n += 1
            on_write(n)
            return _real(self, *a, **k)

        monkeypatch.setattr(_CachedStorage, name, write)


def _killed_before_write(storage: str, k: int) -> None:
    """The study process: SIGKILLs itself just before its k-th write."""
    mp = pytest.MonkeyPatch()
    count_writes(mp, lambda n: os.kill(os.getpid(), signal.SIGKILL) if n == k else None)
    run_study(bowl, SPACE, storage, "s", trials=N, sampler_seed=0, log=lambda *_: None)


def completed(storage: str) -> list[dict]:
    """The counted trials' values, after checking none is lost, RUNNING or counted twice."""
    study = optuna.load_study(study_name="s", storage=storage)
    states = [t.state.name for t in study.trials]
    assert "RUNNING" not in states and "WAITING" not in states, states
    counted = [t for t in study.trials if not t.user_attrs.get("discarded")]
    assert len(counted) == N and all(t.state.name == "COMPLETE" for t in counted), states
    numbers = [t.number for t in study.trials]
    assert len(set(numbers)) == len(numbers)
    return [t.params for t in sorted(counted, key=lambda t: t.number)]


def test_a_study_killed_before_any_of_its_writes_loses_and_repeats_no_trial(tmp_path, monkeypatch):
    reference = f"sqlite:///{tmp_path / 'ref.db'}"
    writes = []
    with monkeypatch.context() as m:
        count_writes(m, writes.append)
        run_study(bowl, SPACE, reference, "s", trials=N, sampler_seed=0, log=lambda *_: None)
    want = completed(reference)
    fork = multiprocessing.get_context("fork")  # the child touches no torch: only Optuna, SQLite and numpy
    left = set()
    for k in range(1, len(writes) + 1):
        storage = f"sqlite:///{tmp_path / f'{k}.db'}"
        child = fork.Process(target=_killed_before_write, args=(storage, k))
        child.start()
        child.join()  # reaped: its pid is gone, as after a real kill
        assert child.exitcode == -signal.SIGKILL
        for t in optuna.load_study(study_name="s", storage=storage).trials:
            if t.state.name == "RUNNING":  # what the kill left: owned or not, how many values drawn
                left.add(("pid" in t.user_attrs, len(t.params)))
        run_study(bowl, SPACE, storage, "s", trials=N, sampler_seed=0, log=lambda *_: None)
        assert completed(storage) == want, k  # the values an uninterrupted study draws
    # every kind of leftover was met: a trial with none, some and all of its values and no owner, and an owned one
    assert {(False, 0), (False, 1), (False, len(SPACE)), (True, len(SPACE))} <= left, left


def test_rurk_tune_killed_after_trial_2_finishes_every_trial_on_restart(tmp_path):
    """The issue's reproduction: the real command (digits5, gd, tiny training) SIGKILLed 0.1 s after it logs trial 2,
    then run again."""
    cmd = [sys.executable, "-m", "rurk.cli", "tune", "digits5", "--method", "gd", "--trials", "4", "--threads", "1",
           "--device", "cpu", "--set", "train.epochs=2", "--set", "methods.gd.epochs=1", "--out", str(tmp_path)]
    env = dict(os.environ, PYTHONUNBUFFERED="1", RURK_PROGRESS="0")
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    assert any("trial   2 " in line for line in p.stdout)  # read up to that line
    time.sleep(0.1)
    p.kill()
    p.wait()
    again = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert again.returncode == 0, again.stdout + again.stderr
    storage = f"sqlite:///{tmp_path / 'tune.db'}"
    (name,) = optuna.get_all_study_names(storage)
    trials = optuna.load_study(study_name=name, storage=storage).trials
    counted = [t for t in trials if not t.user_attrs.get("discarded")]
    assert [t.state.name for t in counted] == ["COMPLETE"] * 4, [t.state.name for t in trials]
    assert "RUNNING" not in {t.state.name for t in trials}


def test_ctrl_c_with_parallel_trials_fails_none_of_them(tmp_path):
    """Ctrl-C while two trials run in worker processes: the trials whose pool is shut down under them are
    interrupted (run again on resume), never failed, and no new trial is asked; the resumed study finishes with
    every counted trial COMPLETE. (The pool's shutdown is simulated: the objectives raise what a shut-down
    ProcessPoolExecutor raises once the test has seen the KeyboardInterrupt.)"""
    import threading

    storage = f"sqlite:///{tmp_path / 'study.db'}"
    started, shutdown = threading.Semaphore(0), threading.Event()

    def pooled(params):
        started.release()
        shutdown.wait(30)
        raise RuntimeError("cannot schedule new futures after shutdown")

    def ctrl_c():
        started.acquire(), started.acquire()  # both trials are running
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C: the main thread, waiting for the trial threads, gets it

    # Python's own Ctrl-C handler, whatever this process inherited: a shell starts a background job with SIGINT
    # ignored, and Python then keeps it ignored (`CI=true bash .ci/run &` failed here, every time)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        threading.Thread(target=ctrl_c, daemon=True).start()
        with pytest.raises(KeyboardInterrupt):
            run_study(pooled, SPACE, storage, "s", trials=4, jobs=2)
    finally:
        signal.signal(signal.SIGINT, previous)
    shutdown.set()
    deadline = time.time() + 30
    study = optuna.load_study(study_name="s", storage=storage)
    while time.time() < deadline and not all(t.user_attrs.get("interrupted") for t in study.trials):
        time.sleep(0.05)
    time.sleep(0.2)  # a thread that would (wrongly) ask another trial has had the time to
    trials = study.trials
    assert len(trials) == 2 and all(t.user_attrs.get("interrupted") for t in trials)
    assert {t.state.name for t in trials} == {"RUNNING"}  # neither told FAIL
    run_study(bowl, SPACE, storage, "s", trials=4, jobs=2)
    trials = optuna.load_study(study_name="s", storage=storage).trials
    assert [t.state.name for t in trials if not t.user_attrs.get("discarded")] == ["COMPLETE"] * 4
