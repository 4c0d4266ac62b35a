"""`--executor ray` on a local Ray instance (2 CPUs): the same numbers as the local executor, one store for both,
retries of a dying worker, resume after an interrupt, `rurk tune --jobs` as Ray tasks, and `rurk plan`."""

import importlib.util
import json
import math
import re
import sys

import pytest

import rurk.run.experiment as experiment
from rurk.cli import main
from rurk.run.grid import Cell, critical_path, list_schedule

HAVE_RAY = importlib.util.find_spec("ray") is not None
needs_ray = pytest.mark.skipif(not HAVE_RAY, reason="Ray is not installed (pip install 'rurk[ray]')")

ARGS = ["digits5", "--seeds", "131", "--methods", "gd,ssd", "--set", "train.epochs=2", "--set", "methods.gd.epochs=1",
        "--draws", "2", "--taus", "0,0.1", "--no-relearn", "--no-attacks", "--device", "cpu", "--quiet"]
TIME_KEYS = ("wall_s", "seconds", "timing", "device")


def without_times(obj):
    if isinstance(obj, dict):
        return {k: without_times(v) for k, v in obj.items() if not any(t in k for t in TIME_KEYS)}
    if isinstance(obj, list):
        return [without_times(v) for v in obj]
    if isinstance(obj, float) and math.isnan(obj):
        return "nan"
    return obj


def summary(out):
    return without_times(json.loads((out / "digits5" / "summary.json").read_text()))


def records(out):
    from rurk.store import Store

    return {(r["kind"], r["key"]): r for r in Store(out).records() if r["kind"] != "task"}


@pytest.fixture(scope="module")
def ray_instance():
    if not HAVE_RAY:
        pytest.skip("Ray is not installed (pip install 'rurk[ray]')")
    import ray

    ray.init(num_cpus=2, object_store_memory=200 * 2**20, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("local")
    assert main(["run", *ARGS, "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def ray_run(ray_instance, tmp_path_factory):
    """One grid on Ray, stopped (as by Ctrl-C) after 3 committed cells and started again; the first attempt of
    `retrain` (always committed before the stop) kills its worker."""
    from rurk.run import ray_exec

    out, faults = tmp_path_factory.mktemp("ray"), tmp_path_factory.mktemp("faults")
    mp = pytest.MonkeyPatch()
    mp.setenv(ray_exec.FAULT_ENV, f"seed 131 retrain@{faults}")
    mp.setenv(ray_exec.STOP_ENV, "3")
    assert main(["run", *ARGS, "--out", str(out), "--executor", "ray"]) == 130
    first = dict(ray_exec.LAST_RUN)
    before = records(out)
    mp.delenv(ray_exec.STOP_ENV)
    assert main(["run", *ARGS, "--out", str(out), "--executor", "ray"]) == 0
    second = dict(ray_exec.LAST_RUN)
    mp.undo()
    return out, faults, first, before, second


def test_a_missing_ray_is_one_line_and_exit_2(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    assert main(["run", *ARGS, "--out", str(tmp_path), "--executor", "ray"]) == 2
    assert capsys.readouterr().err == "rurk: error: --executor ray needs Ray: pip install 'rurk[ray]'\n"
    assert main(["run", *ARGS, "--out", str(tmp_path), "--address", "auto"]) == 2
    assert "--address needs --executor ray" in capsys.readouterr().err
    assert not (tmp_path / "rurk.sqlite").exists()  # nothing started


@needs_ray
def test_bad_ray_settings_are_usage_errors(capsys, tmp_path):
    assert main(["run", *ARGS, "--out", str(tmp_path), "--executor", "ray", "--gpus-per-task", "-1"]) == 2
    assert "--gpus-per-task = -1.0" in capsys.readouterr().err
    assert main(["run", *ARGS[:-3], "--device", "cuda", "--quiet", "--out", str(tmp_path), "--executor", "ray"]) == 2
    assert "needs --gpus-per-task > 0" in capsys.readouterr().err


def test_list_schedule_respects_dependencies_and_workers():
    cells = [Cell("a", "original", 1), Cell("b", "retrain", 1), Cell("c", "unlearn", 1, "m", ["a", "b"]),
             Cell("d", "eval", 1, "m", ["c"]), Cell("e", "unlearn", 1, "n", ["a", "b"])]
    cost = {"a": 4.0, "b": 2.0, "c": 3.0, "d": 1.0, "e": 1.0}
    assert list_schedule(cells, cost, 1) == 11.0
    assert list_schedule(cells, cost, 2) == 8.0  # a | b, then c after a (t=4) | e; d at 7
    assert list_schedule(cells, cost, 8) == critical_path(cells, cost) == 8.0
    assert list_schedule(cells, cost, 2, done={"a", "b"}) == 4.0


def test_keys_computed_without_training_are_the_stored_ones(local_run):
    from rurk.config import load_scenario, parse_overrides
    from rurk.pipeline import prepare, reference_keys
    from rurk.store import Store

    scenario = load_scenario("digits5", parse_overrides(["train.epochs=2", "methods.gd.epochs=1"]))
    prepared = prepare(scenario, None)
    keys = reference_keys(scenario, prepared, 131)
    written = json.loads((local_run / "splits" / f"{prepared.split.digest()}.keys-131.json").read_text())
    assert keys == written
    stored = {r["config"]["method"]: r["key"] for r in Store(local_run).records("unlearned")}
    assert {m: experiment.unlearned_key(m, scenario, prepared, keys, 131) for m in ("gd", "ssd")} == stored


@needs_ray
def test_ray_gives_the_local_numbers_and_records(local_run, ray_run):
    out = ray_run[0]
    assert summary(out) == summary(local_run)
    local, remote = records(local_run), records(out)
    assert set(local) == set(remote)  # the same cache keys
    for k in local:
        assert without_times(local[k]["metrics"]) == without_times(remote[k]["metrics"]), k
    # the audit artefacts written by the workers arrived in the run directory
    for row in ("original", "gd", "ssd"):
        assert (out / "digits5" / "seed-131" / row / "residual-gaussian.csv").read_bytes() == \
            (local_run / "digits5" / "seed-131" / row / "residual-gaussian.csv").read_bytes()


@needs_ray
def test_a_dying_worker_is_retried(ray_run):
    out, faults, first, _, second = ray_run
    assert [p.name for p in faults.iterdir()] == ["seed_131_retrain.failed-once"]  # its first attempt died ...
    assert first["submitted"].count("seed 131 retrain") == 1  # ... was submitted once ...
    assert "seed 131 retrain" in second["done"]  # ... and committed by that run: Ray retried it
    assert not first["failed"] and not second["failed"]


@needs_ray
def test_an_interrupted_run_resumes_without_recomputing(ray_run):
    out, _, first, before, second = ray_run
    assert 3 <= len(before) and first["submitted"]
    finished_first = set(second["done"])
    assert finished_first and not finished_first & set(second["submitted"])  # finished cells never resubmitted
    assert set(first["submitted"]) | set(second["submitted"]) >= {"seed 131 original", "seed 131 eval ssd"}
    after = records(out)
    for k, r in before.items():  # nothing committed by the first run was computed or written again
        assert after[k]["created"] == r["created"], k


@needs_ray
def test_one_store_for_both_executors(local_run, ray_run, ray_instance, monkeypatch):
    from rurk.run import ray_exec

    assert main(["run", *ARGS, "--out", str(local_run), "--executor", "ray"]) == 0  # a local store on Ray
    assert ray_exec.LAST_RUN["submitted"] == [] and len(ray_exec.LAST_RUN["done"]) == 7
    monkeypatch.setattr(experiment, "unlearn", lambda *a, **k: pytest.fail("re-unlearned a finished cell"))
    monkeypatch.setattr(experiment, "evaluate", lambda *a, **k: pytest.fail("re-evaluated a finished cell"))
    monkeypatch.setattr(experiment, "residual_knowledge", lambda *a, **k: pytest.fail("re-audited a finished cell"))
    assert main(["run", *ARGS, "--out", str(ray_run[0])]) == 0  # a Ray store, locally
    assert summary(ray_run[0]) == summary(local_run)


@needs_ray
def test_tune_on_ray_runs_the_requested_trials_once_each(ray_instance, tmp_path):
    import optuna

    argv = ["tune", "digits5", "--method", "gd", "--trials", "4", "--jobs", "2", "--set", "train.epochs=2",
            "--out", str(tmp_path), "--device", "cpu", "--quiet", "--executor", "ray"]
    assert main(argv) == 0
    (summary_,) = optuna.get_all_study_summaries(f"sqlite:///{tmp_path / 'tune.db'}")
    study = optuna.load_study(study_name=summary_.study_name, storage=f"sqlite:///{tmp_path / 'tune.db'}")
    numbers = [t.number for t in study.trials]
    assert sorted(numbers) == [0, 1, 2, 3]
    assert all(t.state.name == "COMPLETE" and len(t.user_attrs["gaps"]) == 3 for t in study.trials)  # three tuning forget sets
    text = (tmp_path / "tuned-digits5.toml").read_text()
    assert "[methods.gd]" in text and '\\"trials\\": 4' in text


def test_plan_prints_every_kind_of_cell_and_a_wall_time(local_run, tmp_path, capsys):
    assert main(["plan", *ARGS, "--seeds", "131,42", "--out", str(local_run), "--workers", "1,2"]) == 0
    text = capsys.readouterr().out
    for kind in ("original", "retrain", "eval references", "unlearn gd", "unlearn ssd", "eval gd", "eval ssd"):
        assert f"seed 42 {kind}" in text and f"\n  {kind} " in text, kind
    assert "measured (1 record)" in text and "14 cells, 7 already in the store" in text
    walls = dict(re.findall(r"^ +(\d+) workers? *: +([\d.]+) s", text, re.M))
    one, two = float(walls["1"]), float(walls["2"])
    assert 0 < two <= one
    assert main(["plan", *ARGS, "--out", str(tmp_path / "empty"), "--workers", "4"]) == 0
    text = capsys.readouterr().out
    assert "estimated (default cpu rate for mlp)" in text and "4 workers" in text
    assert not (tmp_path / "empty").exists()  # planning writes nothing
