"""`rurk tune` on Optuna: determinism, resume after an interrupt, failed trials, provenance; search spaces."""

import dataclasses
import json
import subprocess

import pytest

from rurk.config import ConfigError, load_scenario, parse_overrides
from rurk.methods import load_all
from rurk.methods.base import REGISTRY, Param, integer, log_uniform
from rurk.run.study import TrialFailed, run_study
from rurk.run.tuned import load_tuned
from rurk.run.tune import tune

SPACE = {"x": log_uniform(1e-3, 1.0), "k": integer(1, 5)}


def bowl(params):
    """A cheap objective with a known minimum (no training): (value, per-split values)."""
    v = (params["x"] - 0.1) ** 2 + 0.01 * params["k"]
    return v, [v, v]


def params_of(study):
    return [(t.number, t.state.name, t.params) for t in study.get_trials(deepcopy=False)]


def storage(tmp_path, name="tune.db"):
    return f"sqlite:///{tmp_path / name}"


def test_same_seed_gives_the_same_trials_and_another_seed_other_ones(tmp_path):
    a = run_study(bowl, SPACE, storage(tmp_path), "a", trials=12, sampler_seed=3, log=lambda *_: None)
    b = run_study(bowl, SPACE, storage(tmp_path), "b", trials=12, sampler_seed=3, log=lambda *_: None)
    c = run_study(bowl, SPACE, storage(tmp_path), "c", trials=12, sampler_seed=4, log=lambda *_: None)
    assert params_of(a) == params_of(b)
    assert [p for *_, p in params_of(a)] != [p for *_, p in params_of(c)]
    assert len(a.trials) == 12 and all(t.state.name == "COMPLETE" for t in a.trials)
    # past the random start-up trials TPE models the objective: the best trial beats the start-up median
    values = sorted(t.value for t in a.trials[:8])
    assert a.best_value < values[4]


def test_interrupted_study_resumes_without_losing_or_repeating_a_trial(tmp_path):
    reference = run_study(bowl, SPACE, storage(tmp_path, "ref.db"), "s", trials=10, sampler_seed=1, log=lambda *_: None)
    calls = []

    def interrupted_at_4(params):
        calls.append(params)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return bowl(params)

    with pytest.raises(KeyboardInterrupt):
        run_study(interrupted_at_4, SPACE, storage(tmp_path), "s", trials=10, sampler_seed=1, log=lambda *_: None)
    seen = []

    def counting(params):
        seen.append(params)
        return bowl(params)

    study = run_study(counting, SPACE, storage(tmp_path), "s", trials=10, sampler_seed=1, log=lambda *_: None)
    trials = params_of(study)
    assert [n for n, *_ in trials] == list(range(10)) and all(s == "COMPLETE" for _, s, _ in trials)
    assert seen[0] == calls[3]  # the cut-off trial is finished first, with its own values
    assert len(calls) - 1 + len(seen) == 10  # every trial evaluated to the end exactly once
    assert trials == params_of(reference)  # and the resumed study is the one an uninterrupted run makes
    # asking for more trials than it holds continues the study; asking for fewer does nothing
    assert len(run_study(bowl, SPACE, storage(tmp_path), "s", trials=12, sampler_seed=1, log=lambda *_: None).trials) == 12
    assert len(run_study(bowl, SPACE, storage(tmp_path), "s", trials=5, sampler_seed=1, log=lambda *_: None).trials) == 12


def test_a_trial_left_running_by_a_killed_process_is_finished(tmp_path):
    import os
    import socket

    import optuna

    study = optuna.create_study(study_name="s", storage=storage(tmp_path), direction="minimize")
    orphan = study.ask({"x": optuna.distributions.FloatDistribution(1e-3, 1.0, log=True),
                        "k": optuna.distributions.IntDistribution(1, 5)})
    dead = subprocess.Popen(["true"])
    dead.wait()
    orphan.set_user_attr("pid", dead.pid)
    orphan.set_user_attr("host", socket.gethostname())
    live = study.ask({"x": optuna.distributions.FloatDistribution(1e-3, 1.0, log=True),
                      "k": optuna.distributions.IntDistribution(1, 5)})
    live.set_user_attr("pid", os.getpid())  # a trial this (live) process still works on is left alone
    live.set_user_attr("host", socket.gethostname())
    s = run_study(bowl, SPACE, storage(tmp_path), "s", trials=4, sampler_seed=0, log=lambda *_: None)
    states = {t.number: t.state.name for t in s.trials}
    assert states[orphan.number] == "COMPLETE" and states[live.number] == "RUNNING" and len(states) == 4


def test_failing_trials_are_recorded_with_their_reason_and_never_stop_the_study(tmp_path):
    def sometimes(params):
        if params["k"] >= 4:
            raise TrialFailed("diverged at step 3")
        if params["k"] == 3:
            raise RuntimeError("boom")
        return bowl(params)

    study = run_study(sometimes, SPACE, storage(tmp_path), "f", trials=15, sampler_seed=0, log=lambda *_: None)
    failed = [t for t in study.trials if t.state.name == "FAIL"]
    assert len(study.trials) == 15 and failed
    for t in failed:
        reason = t.user_attrs["failed_reason"]
        assert ("diverged at step 3" in reason) if t.params["k"] >= 4 else ("RuntimeError: boom" in reason)
    assert all(t.params["k"] <= 2 for t in study.trials if t.state.name == "COMPLETE")


def test_jobs_run_trials_at_once_without_duplicate_numbers(tmp_path):
    study = run_study(bowl, SPACE, storage(tmp_path), "j", trials=8, jobs=2, sampler_seed=0, log=lambda *_: None)
    numbers = [t.number for t in study.trials]
    assert sorted(numbers) == list(range(8)) and all(t.state.name == "COMPLETE" for t in study.trials)


def test_every_registered_method_declares_a_valid_space_of_its_own_fields():
    for name, spec in load_all().items():
        assert spec.space, f"{name} has no search space"
        fields = {f.name for f in dataclasses.fields(spec.config_cls)}
        assert set(spec.space) <= fields
        for key, p in spec.space.items():  # the paper default of a searched number lies inside its range
            default = getattr(spec.config_cls(), key)
            if p.kind in ("log", "float", "int"):
                assert p.low <= default <= p.high, (name, key, default, p)
    assert set(load_all()["rurk"].space) == {"lr", "epochs", "lambda_f", "lambda_a", "tau", "lambda_c"}


def test_param_rejects_bad_ranges():
    with pytest.raises(ValueError, match="low > 0"):
        Param("log", 0.0, 1.0)
    with pytest.raises(ValueError, match="low <= high"):
        Param("int", 3, 1)
    with pytest.raises(ValueError, match="kind"):
        Param("normal", 0, 1)


def test_tune_end_to_end_on_digits5_writes_values_with_provenance(tmp_path, monkeypatch):
    # ga with a learning rate that always diverges: every trial fails, nothing is written for it
    monkeypatch.setitem(REGISTRY, "ga", dataclasses.replace(REGISTRY["ga"], space={"epochs": integer(19, 20)}))
    scenario = load_scenario("digits5", parse_overrides([
        "train.epochs=5", "methods.ga.lr=1e6", "methods.ga.clip_grad_norm=1e9"]))
    logs = []
    path = tune(scenario, ["gd", "ga"], tmp_path, trials=3, seed=1, split_seeds=[1, 2], device="cpu",
                log=logs.append)
    text = path.read_text()
    assert "[methods.gd]" in text and "[methods.ga]" not in text
    assert any("ga: every trial failed" in line for line in logs)
    prov = json.loads(__import__("tomllib").loads(text)["provenance"]["gd"])
    assert prov["sampler_seed"] == 0 and prov["split_seeds"] == [1, 2] and prov["tuning_seed"] == 1
    assert prov["space"]["lr"] == {"kind": "log", "low": 1e-3, "high": 0.3} and len(prov["all_trials"]) == 3
    best = prov["best"]
    assert best["avg_gap"] == min(t["avg_gap"] for t in prov["all_trials"])
    assert best["avg_gap"] == pytest.approx(sum(best["gaps"]) / 2) and len(best["gaps"]) == 2
    assert "importances" in prov
    assert load_tuned(path)["gd"] == best["values"]
    # the failed study keeps its trials and reasons in the store
    import optuna

    ga = [s for s in optuna.get_all_study_names(f"sqlite:///{tmp_path / 'tune.db'}") if "/ga/" in s]
    trials = optuna.load_study(study_name=ga[0], storage=f"sqlite:///{tmp_path / 'tune.db'}").trials
    assert [t.state.name for t in trials] == ["FAIL"] * 3 and "diverged" in trials[0].user_attrs["failed_reason"]


def test_tune_refuses_bad_settings_before_any_work():
    s = load_scenario("digits5")
    for kw, match in ((dict(seed=131), "not reported"), (dict(split_seeds=[0, 1]), "never reported"),
                      (dict(split_seeds=[1, 1]), "distinct"), (dict(trials=0), "--trials"), (dict(jobs=0), "--jobs"),
                      (dict(timeout=-1), "--timeout")):
        with pytest.raises(ConfigError, match=match):
            tune(s, ["gd"], "/nonexistent", **kw)


def test_presets_change_only_what_they_name_and_compose():
    """"small" is the dataclass defaults; a preset changes exactly the fields it names; "cifar10-class" applies
    "cifar10" then "cifar10-class"; overrides win over presets."""
    for name, spec in load_all().items():
        base = dataclasses.asdict(spec.config("small"))
        assert base == dataclasses.asdict(spec.config_cls())
        for preset, values in spec.presets.items():
            got = dataclasses.asdict(spec.config(preset))
            parent = spec.presets.get(preset.split("-")[0], {}) if "-" in preset else {}
            expected = {**base, **parent, **values}
            assert got == expected, (name, preset)
            if values:
                key = next(iter(values))
                assert dataclasses.asdict(spec.config(preset, {key: base[key]}))[key] == base[key]
