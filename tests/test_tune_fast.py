"""`rurk tune` made fast (issue 21 item 3, issue 19 item 3): pruning after the first tuning forget set is done and
recorded, parallel trials draw the values a serial run draws where that is by design, three tuning forget sets by
default, the reported split seed refused before any work, the best trial's gap per forget set in the provenance."""

import json
import statistics
import time

import pytest

import rurk.pipeline as pipeline
from rurk.cli import build_parser, main
from rurk.config import load_scenario, parse_overrides
from rurk.methods.base import integer, log_uniform
from rurk.run.study import DEFAULT_SPLIT_SEEDS, N_STARTUP_TRIALS, PRUNER_STARTUP_TRIALS, run_study
from rurk.run.tune import tune

SPACE = {"x": log_uniform(1e-3, 1.0), "k": integer(1, 5)}
QUIET = dict(log=lambda *_: None)


def bowl(params):
    v = (params["x"] - 0.1) ** 2 + 0.01 * params["k"]
    return v, [v, v, v]


def storage(tmp_path, name="tune.db"):
    return f"sqlite:///{tmp_path / name}"


def test_a_trial_worse_than_the_median_on_the_first_split_is_pruned_and_recorded(tmp_path):
    splits_run: dict[int, int] = {}  # trial's x -> forget sets evaluated

    def three_splits(params, report):
        first = (params["x"] - 0.1) ** 2 + 0.01 * params["k"]
        splits_run[params["x"]] = 1
        report(first)  # raises TrialPruned when the trial is already bad here
        splits_run[params["x"]] = 3
        return first, [first, first, first]

    study = run_study(three_splits, SPACE, storage(tmp_path), "p", trials=16, sampler_seed=0, prune=True, **QUIET)
    trials = sorted(study.trials, key=lambda t: t.number)
    assert len(trials) == 16 and {t.state.name for t in trials} <= {"COMPLETE", "PRUNED"}
    pruned = [t for t in trials if t.state.name == "PRUNED"]
    assert pruned, "no trial was pruned"
    assert all(t.state.name == "COMPLETE" for t in trials[:PRUNER_STARTUP_TRIALS])  # the pruner's start-up
    for t in pruned:
        (first,) = t.user_attrs["gaps"]  # recorded with its one gap, as Optuna's value and step-0 value too
        assert t.value == first == t.intermediate_values[0] and splits_run[t.params["x"]] == 1
        earlier = [u.intermediate_values[0] for u in trials[:t.number] if u.state.name == "COMPLETE"]
        assert first > statistics.median(earlier)  # worse than the median of the trials completed before it
    for t in trials:
        if t.state.name == "COMPLETE":
            assert splits_run[t.params["x"]] == 3 and len(t.user_attrs["gaps"]) == 3
    # resuming counts a pruned trial as finished: nothing is asked again
    assert len(run_study(three_splits, SPACE, storage(tmp_path), "p", trials=16, sampler_seed=0, prune=True,
                         **QUIET).trials) == 16


def test_without_pruning_the_objective_is_called_without_report(tmp_path):
    study = run_study(bowl, SPACE, storage(tmp_path), "n", trials=6, sampler_seed=0, **QUIET)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 6


def slow_bowl(params):
    time.sleep(0.02)  # long enough for the threads to overlap
    return bowl(params)


def values(study):
    return {t.number: t.params for t in study.trials if t.state.name == "COMPLETE"}


def test_parallel_trials_draw_the_serial_values_during_the_random_start_up(tmp_path):
    """Trial k's sampler is seeded from (sampler seed, k), and TPE draws at random until N_STARTUP_TRIALS trials
    have finished: in a parallel run trial k < N_STARTUP_TRIALS is asked with at most k finished, so those trials
    are the serial run's, whatever the timing. Later trials differ by design: a parallel run asks them before its
    running trials have told TPE their values (the model sees a shorter history), as in any parallel TPE."""
    serial = run_study(slow_bowl, SPACE, storage(tmp_path), "s", trials=N_STARTUP_TRIALS, sampler_seed=5, **QUIET)
    parallel = run_study(slow_bowl, SPACE, storage(tmp_path), "p", trials=N_STARTUP_TRIALS, jobs=4, sampler_seed=5,
                         **QUIET)
    assert values(parallel) == values(serial) and len(values(serial)) == N_STARTUP_TRIALS
    more_s = run_study(slow_bowl, SPACE, storage(tmp_path), "s2", trials=12, sampler_seed=5, **QUIET)
    more_p = run_study(slow_bowl, SPACE, storage(tmp_path), "p2", trials=12, jobs=3, sampler_seed=5, **QUIET)
    start_up = range(N_STARTUP_TRIALS)
    assert {n: values(more_p)[n] for n in start_up} == {n: values(more_s)[n] for n in start_up} == values(serial)
    assert sorted(values(more_p)) == list(range(12))  # every trial once, none lost or doubled


def test_three_tuning_forget_sets_by_default_on_the_cli_and_in_the_library():
    assert DEFAULT_SPLIT_SEEDS == (1, 2, 3)
    args = build_parser().parse_args(["tune", "digits5", "--method", "gd"])
    assert args.split_seeds == "1,2,3" and args.jobs is None and args.prune is True
    assert build_parser().parse_args(["tune", "digits5", "--method", "gd", "--no-prune"]).prune is False


def test_split_seeds_holding_the_reported_one_are_refused_in_one_line_before_any_work(tmp_path, capsys, monkeypatch):
    def fit(*args, **kwargs):
        raise AssertionError("a model was trained before the input was refused")

    monkeypatch.setattr(pipeline, "fit", fit)
    reported = load_scenario("digits5").seeds.split
    capsys.readouterr()
    assert main(["tune", "digits5", "--method", "gd", "--split-seeds", f"1,{reported}", "--out",
                 str(tmp_path / "o")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rurk: error: --split-seeds = "), lines
    assert "never reported" in lines[0] and f"reported split seed is {reported}" in lines[0]
    assert not (tmp_path / "o" / "tune.db").exists()


def test_digits5_tune_in_worker_processes_records_per_split_gaps(tmp_path):
    """The real objective in two worker processes: pruned trials hold one gap, complete ones three, the best one
    its gap per tuning forget set by split seed. (Whether one of 10 trials is pruned here depends on the draws;
    the pruning rule itself is tested exactly above.)"""
    scenario = load_scenario("digits5", parse_overrides(["train.epochs=2"]))
    path = tune(scenario, ["gd"], tmp_path, trials=10, seed=1, jobs=2, device="cpu", **QUIET)
    prov = json.loads(__import__("tomllib").loads(path.read_text())["provenance"]["gd"])
    assert prov["split_seeds"] == [1, 2, 3] and prov["pruner"].startswith("MedianPruner")
    rows = prov["all_trials"]
    assert len(rows) == 10 and prov["pruned"] == sum(r["state"] == "PRUNED" for r in rows)
    assert {r["state"] for r in rows} <= {"COMPLETE", "PRUNED"}
    for r in rows:
        assert len(r["gaps"]) == {"PRUNED": 1, "COMPLETE": 3}[r["state"]], r
    best = prov["best"]
    assert best["avg_gap"] == min(r["avg_gap"] for r in rows if r["avg_gap"] is not None)
    assert list(best["split_gaps"]) == ["1", "2", "3"]
    assert list(best["split_gaps"].values()) == best["gaps"]
    assert best["avg_gap"] == pytest.approx(sum(best["gaps"]) / 3)


def test_a_calibrated_trial_skips_the_plot_trace_and_scores_the_same(tmp_path):
    from dataclasses import replace

    from rurk.run.experiment import evaluate
    from rurk.methods.base import unlearn
    from rurk.audit.metrics import avg_gap
    from rurk.store import Store
    from rurk.run.tune import _load_splits, _Objective

    scenario = load_scenario("digits5", parse_overrides(["train.epochs=3"]))
    splits = _load_splits(scenario, [1], 1, Store(tmp_path), "cpu")
    obj = _Objective(scenario, "rurk", {}, 1, splits)
    params = {"lr": 0.05, "epochs": 3}
    cfg = obj.config(params)
    assert cfg.calibrate and cfg.calib_trace == 0
    assert obj.config(params | {"calibrate": False}).calib_trace > 0  # only calibrated trials drop it
    prepared, refs, udata, ref = splits[0]
    traced, rec = unlearn("rurk", refs.original, udata, 1, cfg=replace(cfg, calib_trace=64))
    assert rec.extra["calibration"]["trajectory"][0].keys() >= {"retain", "test"}
    assert obj.gap(params, 0) == avg_gap(evaluate(traced, prepared, 1, None, relearn=False), ref)


def test_the_incumbent_is_trial_0_with_its_own_values_and_is_enqueued_once(tmp_path):
    seen = []

    def record(params):
        seen.append(dict(params))
        return bowl(params)

    start = {"x": 0.37, "k": 4}
    study = run_study(record, SPACE, storage(tmp_path), "i", trials=3, jobs=2, sampler_seed=0, incumbent=start,
                      **QUIET)
    first = min(study.trials, key=lambda t: t.number)
    assert first.params == start and start in seen
    assert sum(p == start for p in seen) == 1
    # continuing the study neither re-enqueues nor repeats it
    study = run_study(record, SPACE, storage(tmp_path), "i", trials=5, sampler_seed=0, incumbent=start, **QUIET)
    assert sum(t.params == start for t in study.trials) == 1 and len(study.trials) == 5
    from rurk.run.tune import provenance

    prov = provenance(study, SPACE, sampler_seed=0, seed=1, split_seeds=[1, 2, 3], preset="small", wall_s=1.0,
                      incumbent=start)
    assert prov["incumbent"]["values"] == start and prov["incumbent"]["avg_gap"] == bowl(start)[0]
    trials = study.trials  # the study's own span, however long this invocation took
    assert prov["wall_s"] == 1.0 and prov["span_s"] == round((max(t.datetime_complete for t in trials)
                                                              - min(t.datetime_start for t in trials)).total_seconds(), 1)
    assert prov["incumbent"]["state"] == "COMPLETE" and "incumbent" not in provenance(
        study, SPACE, sampler_seed=0, seed=1, split_seeds=[1, 2, 3], preset="small", wall_s=1.0)


def test_incumbent_values_are_the_methods_current_settings_and_out_of_range_ones_are_refused():
    from rurk.config import ConfigError
    from rurk.run.tune import incumbent_values

    args = build_parser().parse_args(["tune", "fmnist5", "--methods", "rurk", "--incumbent"])
    assert args.incumbent is True and build_parser().parse_args(["tune", "fmnist5", "--methods", "rurk"]).incumbent is False
    sc = load_scenario("fmnist5")
    assert incumbent_values(sc, "rurk", {}) == {"lr": 0.01, "epochs": 10, "lambda_f": 0.08, "lambda_a": 0.08,
                                                "tau": 0.1, "lambda_c": 0.0}
    assert incumbent_values(sc, "rurk", {"lr": 0.05})["lr"] == 0.05  # the scenario's value over the default
    # by default what `rurk run` uses: a method's shipped tuned values (fmnist5 ships NegGrad+'s) ...
    from rurk.run.tuned import load_tuned

    shipped = load_tuned(sc.tuned)["neggrad_plus"]
    assert incumbent_values(sc, "neggrad_plus") == {k: shipped[k] for k in ("lr", "epochs", "beta")}
    from dataclasses import replace

    assert incumbent_values(replace(sc, tuned="none"), "rurk") == incumbent_values(sc, "rurk", {})  # no file: defaults
    # ... under the scenario's own values, as `rurk run` merges them
    mine = load_scenario("fmnist5", {"methods": {"neggrad_plus": {"lr": 0.002}}})
    assert incumbent_values(mine, "neggrad_plus") == {**incumbent_values(sc, "neggrad_plus"), "lr": 0.002}
    from rurk.methods.base import Param

    assert integer(1, 5).contains(5) and not integer(1, 5).contains(6) and not log_uniform(1e-3, 1.0).contains(0)
    assert Param("choice", choices=("a", "b")).contains("b") and not Param("choice", choices=("a",)).contains("b")
    with pytest.raises(ConfigError, match=r"current epochs = 40 is outside its search space \[1, 20\]"):
        incumbent_values(sc, "rurk", {"epochs": 40})


def test_an_incumbent_outside_its_space_is_refused_before_any_work(tmp_path, monkeypatch):
    from rurk.config import ConfigError

    called = []
    monkeypatch.setattr("rurk.run.tune._load_splits", lambda *a, **k: called.append(1) or [])
    sc = load_scenario("fmnist5", {"methods": {"rurk": {"epochs": 40}}})
    with pytest.raises(ConfigError, match="rurk's current epochs = 40"):
        tune(sc, ["ga", "rurk"], tmp_path, trials=2, jobs=1, incumbent=True, log=lambda *_: None)
    assert not called and not (tmp_path / "tune.db").exists()


def test_an_incumbent_left_waiting_by_an_interrupted_run_is_not_enqueued_twice(tmp_path):
    import optuna

    start = {"x": 0.37, "k": 4}
    optuna.create_study(study_name="w", storage=storage(tmp_path)).enqueue_trial(start)  # killed right after this
    study = run_study(bowl, SPACE, storage(tmp_path), "w", trials=3, sampler_seed=0, incumbent=start, **QUIET)
    assert [t.params == start for t in sorted(study.trials, key=lambda t: t.number)] == [True, False, False]


def test_the_study_name_follows_the_methods_resolved_config_code_defaults_included(monkeypatch):
    from dataclasses import replace

    from rurk.methods.base import MethodSpec, get_method
    from rurk.run.tune import study_name

    sc = load_scenario("fmnist5")
    name = lambda base: study_name(sc, "rurk", base, 1, [1, 2, 3], 0)  # noqa: E731
    default_lr = get_method("rurk").config(sc.preset).lr
    assert name({}) == name({"lr": default_lr})  # the same config, however it is spelled: the same study
    assert name({}) != name({"lr": default_lr * 2})
    before = name({})
    real = MethodSpec.config  # a default changed in the code (here: calibrated stopping's difficulty shift)
    monkeypatch.setattr(MethodSpec, "config", lambda self, *a, **k: replace(real(self, *a, **k), calib_proxy=0.0))
    assert name({}) != before  # a study made under the old default is not resumed under the new one


def test_the_profile_objective_adds_twenty_times_rs_mean_distance_from_1(monkeypatch):
    """`rurk tune --objective profile`: Avg. Gap + 20 × mean over the profile τ of |r_pooled − 1|, r from the
    model's and Re-train's accuracies on the same copies; a study of its own, and unknown objectives refused."""
    import numpy as np

    from rurk.config import ConfigError
    from rurk.run import tune as T

    sc = load_scenario("fmnist5")
    assert T.study_name(sc, "rurk", {}, 1, [1, 2, 3], 0) != T.study_name(sc, "rurk", {}, 1, [1, 2, 3], 0,
                                                                      objective="profile")
    with pytest.raises(ConfigError, match="--objective = 'nope': expected one of gap, profile"):
        T._Objective(sc, "rurk", {}, 1, [], "nope")

    class Fake:
        retrain = "a"
        original = "o"

    class Prepared:
        scenario = sc

    obj = T._Objective(sc, "gd", {}, 1, [(Prepared(), Fake(), None, {})], "profile")
    monkeypatch.setattr(T, "unlearn", lambda *a, **k: ("m", type("R", (), {"diverged": False})()))
    monkeypatch.setattr(T, "diverged", lambda rec, model: False)
    monkeypatch.setattr(T, "evaluate", lambda *a, **k: {})
    monkeypatch.setattr(T, "avg_gap", lambda *a: 1.5)
    acc = {"a": np.array([0.8, 0.8, 0.5, 0.5]), "m": np.array([0.8, 0.88, 0.4, 0.5])}
    monkeypatch.setattr(T._Objective, "_profile_accuracy", lambda self, model, p: acc[model])
    # r = 1, 1.1, 0.8, 1: mean |r − 1| = 0.075
    assert obj.gap({}, 0) == pytest.approx(1.5 + T.PROFILE_WEIGHT * 0.075)
    assert T._Objective(sc, "gd", {}, 1, [(Prepared(), Fake(), None, {})]).gap({}, 0) == 1.5  # the Avg. Gap alone


def test_the_study_name_changes_with_every_setting_a_trials_score_or_the_search_depends_on():
    """Two runs share a study (and resume each other's trials) only when their trials are scored the same way and
    drawn by the same search: the forget sets (split seeds, and the scenario's forget settings), the tuning seed,
    the sampler seed, the pruner, the incumbent and the objective each start a study of their own."""
    from dataclasses import replace

    from rurk.run.tune import study_name

    sc = load_scenario("digits5")
    args = dict(scenario=sc, method="gd", base={}, seed=1, split_seeds=[1, 2, 3], sampler_seed=0, prune=True,
                incumbent=None, objective="gap")
    name = study_name(**args)
    assert name == study_name(**args) and name.startswith("digits5/gd/")
    changed = {
        "split seeds": dict(split_seeds=[1, 2, 4]),
        "split seeds' order (the first one decides pruning)": dict(split_seeds=[2, 1, 3]),
        "tuning seed": dict(seed=2),
        "sampler seed": dict(sampler_seed=1),
        "pruner": dict(prune=False),
        "incumbent": dict(incumbent={"lr": 0.01, "epochs": 3}),
        "objective": dict(objective="profile"),
        "forget fraction": dict(scenario=replace(sc, forget=replace(sc.forget, fraction=0.25))),
        "forget class": dict(scenario=replace(sc, forget=replace(sc.forget, forget_class=1))),
        "calibration images": dict(scenario=replace(sc, forget=replace(sc.forget, calibration=30))),
    }
    names = {what: study_name(**{**args, **kw}) for what, kw in changed.items()}
    for what, other in names.items():
        assert other != name, f"the study name ignores the {what}"
    assert len(set(names.values())) == len(names)
    # what trials never compute stays out: the audit and the re-learn settings
    assert study_name(**{**args, "scenario": replace(sc, audit=replace(sc.audit, draws=7))}) == name


def test_a_trial_is_judged_for_pruning_after_its_first_forget_set_and_before_the_others():
    """The report comes right after the first forget set's gap, so a pruned trial never computes the other two;
    the score is the mean over all three; one forget set alone has nothing left to save and is not reported."""
    from rurk.run.tune import _mean_over_splits

    seen = []

    def gap(params, i):
        seen.append(("gap", i))
        return [5.0, 7.0, 12.0][i]

    assert _mean_over_splits(gap, 3, {}, lambda v: seen.append(("report", v))) == (8.0, [5.0, 7.0, 12.0])
    assert seen == [("gap", 0), ("report", 5.0), ("gap", 1), ("gap", 2)]

    class Pruned(Exception):
        pass

    def prune(v):
        raise Pruned

    seen.clear()
    with pytest.raises(Pruned):
        _mean_over_splits(gap, 3, {}, prune)
    assert seen == [("gap", 0)]
    seen.clear()
    assert _mean_over_splits(gap, 1, {}, prune) == (5.0, [5.0]) and seen == [("gap", 0)]


def test_the_profile_objective_keeps_retrains_accuracy_per_forget_set(monkeypatch):
    """Re-train's accuracy on the profile's copies is computed once per tuning forget set and used for that set
    only: the second forget set's r divides by its own Re-train."""
    import numpy as np

    from rurk.run import tune as T

    sc = load_scenario("fmnist5")

    class Refs:
        def __init__(self, retrain):
            self.retrain, self.original = retrain, "o"

    class Prepared:
        scenario = sc

    splits = [(Prepared(), Refs("a0"), None, {}), (Prepared(), Refs("a1"), None, {})]
    obj = T._Objective(sc, "gd", {}, 1, splits, "profile")
    monkeypatch.setattr(T, "unlearn", lambda *a, **k: ("m", None))
    monkeypatch.setattr(T, "diverged", lambda rec, model: False)
    monkeypatch.setattr(T, "evaluate", lambda *a, **k: {})
    monkeypatch.setattr(T, "avg_gap", lambda *a: 1.0)
    acc = {"a0": np.full(4, 0.8), "a1": np.full(4, 0.4), "m": np.full(4, 0.4)}
    calls = []
    monkeypatch.setattr(T._Objective, "_profile_accuracy", lambda self, model, p: calls.append(model) or acc[model])
    # forget set 0: r = 0.4 / 0.8 = 0.5, so 1 + 20 · 0.5 = 11; forget set 1: r = 1, the gap alone
    assert obj.gap({}, 0) == pytest.approx(11.0) and obj.gap({}, 1) == pytest.approx(1.0)
    assert obj.gap({}, 1) == pytest.approx(1.0) and calls.count("a0") == calls.count("a1") == 1


def test_a_worker_keeps_one_objective_per_method_base_and_objective(monkeypatch):
    from rurk.run import tune as T

    made = []

    class Fake:
        def __init__(self, scenario, method, base, seed, splits, objective="gap"):
            made.append((method, objective))
            self.objective = objective

        def gap(self, params, i):
            return self.objective

    monkeypatch.setattr(T, "_Objective", Fake)
    monkeypatch.setattr(T, "_WORKER", {"scenario": None, "seed": 1, "splits": []})
    assert [T._worker_gap("gd", {}, {}, 0, o) for o in ("gap", "gap", "profile", "gap")] == \
        ["gap", "gap", "profile", "gap"]
    assert made == [("gd", "gap"), ("gd", "profile"), ("gd", "gap")]


def test_each_trial_draws_from_its_own_sampler_seed(tmp_path):
    """During TPE's random start-up, trials seeded from (sampler seed, k) draw different values: a shared seed
    would make every start-up trial the same setting."""
    study = run_study(bowl, SPACE, storage(tmp_path), "s", trials=4, sampler_seed=0, **QUIET)
    xs = [t.params["x"] for t in study.trials]
    assert len(set(xs)) == 4


def test_the_incumbent_is_enqueued_when_the_only_earlier_trial_was_discarded(tmp_path):
    """A first run killed inside its first ask leaves a trial without values, which the next run discards: that
    run must still start from the incumbent (trial 0 of the counted ones), not from the sampler."""
    import optuna

    start = {"x": 0.37, "k": 4}
    optuna.create_study(study_name="d", storage=storage(tmp_path)).ask()  # killed before its values were drawn
    study = run_study(bowl, SPACE, storage(tmp_path), "d", trials=3, sampler_seed=0, incumbent=start, **QUIET)
    counted = [t for t in sorted(study.trials, key=lambda t: t.number) if not t.user_attrs.get("discarded")]
    assert len(counted) == 3 and counted[0].params == start
    assert sum(t.user_attrs.get("discarded", False) for t in study.trials) == 1


def test_the_pruner_waits_for_the_documented_start_up_trials_before_pruning(tmp_path):
    """docs/tuning.md promises pruning only against the median of the finished trials after N of them: however
    bad a trial's first forget set, nothing is pruned before N trials have finished; after them a trial worse
    than their median is."""
    import re
    from pathlib import Path

    doc = (Path(__file__).parents[1] / "docs" / "tuning.md").read_text()
    n = int(re.search(r"median of the finished trials \(after (\d+)\)", doc.replace("\n", " ")).group(1))
    calls = []

    def worse_each_time(params, report):  # each trial's first forget set worse than every earlier one's
        calls.append(params)
        v = float(len(calls))
        report(v)
        return v, [v, v, v]

    study = run_study(worse_each_time, SPACE, storage(tmp_path), "p", trials=n + 2, sampler_seed=0, prune=True,
                      **QUIET)
    states = [t.state.name for t in sorted(study.trials, key=lambda t: t.number)]
    assert states[:n] == ["COMPLETE"] * n and states[n:] == ["PRUNED", "PRUNED"]
