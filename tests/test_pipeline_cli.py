"""Original/Re-train caching, resume after interruption, and the CLI's train/scenarios commands."""

import pytest
import torch

import rurk.pipeline as pipeline
from rurk.cli import main
from rurk.config import load_scenario, parse_overrides
from rurk.store import Store

FAST = parse_overrides(["train.epochs=5"])


@pytest.fixture
def counting_fit(monkeypatch):
    calls = []
    real = pipeline.fit

    def fit(model, data, cfg, seed, **kw):
        calls.append(len(data))
        return real(model, data, cfg, seed, **kw)

    monkeypatch.setattr(pipeline, "fit", fit)
    return calls


def test_reference_models_are_cached(tmp_path, counting_fit):
    s = load_scenario("digits5", FAST)
    store = Store(tmp_path)
    prep = pipeline.prepare(s, store)
    refs = pipeline.reference_models(s, prep, 131, store, device="cpu", progress=False)
    assert counting_fit == [len(prep.data.train), len(prep.data.retain)]  # Original on S, Re-train on S_r
    refs2 = pipeline.reference_models(s, pipeline.prepare(s, store), 131, store, device="cpu", progress=False)
    assert len(counting_fit) == 2  # nothing retrained
    for a, b in zip(refs.original.state_dict().values(), refs2.original.state_dict().values()):
        assert torch.equal(a, b)
    assert refs.keys == refs2.keys and refs.accuracies == refs2.accuracies
    # another seed or recipe is another model
    pipeline.reference_models(s, prep, 7, store, device="cpu", progress=False)
    assert len(counting_fit) == 4
    # the split indices are saved with the run
    assert (tmp_path / "splits" / f"{prep.split.digest()}.json").exists()


def test_interrupted_run_resumes_without_redoing_finished_work(tmp_path, monkeypatch):
    s = load_scenario("digits5", FAST)
    store = Store(tmp_path)
    prep = pipeline.prepare(s, store)
    real = pipeline.fit
    calls = []

    def fit_then_die(model, data, cfg, seed, **kw):
        calls.append(len(data))
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed while training Re-train
        return real(model, data, cfg, seed, **kw)

    monkeypatch.setattr(pipeline, "fit", fit_then_die)
    with pytest.raises(KeyboardInterrupt):
        pipeline.reference_models(s, prep, 131, store, device="cpu", progress=False)
    calls.clear()
    monkeypatch.setattr(pipeline, "fit", lambda *a, **k: (calls.append(len(a[1])), real(*a, **k))[1])
    pipeline.reference_models(s, prep, 131, store, device="cpu", progress=False)
    assert calls == [len(prep.data.retain)]  # only the unfinished Re-train is trained


def test_original_remembers_forget_set_better_than_retrain(tmp_path):
    s = load_scenario("digits5")
    store = Store(tmp_path)
    refs = pipeline.reference_models(s, pipeline.prepare(s, store), 131, store, device="cpu", progress=False)
    o, r = refs.accuracies["original"], refs.accuracies["retrain"]
    assert o["forget"] >= r["forget"] and o["test"] > 0.85 and r["test"] > 0.85


def test_cli_train_twice_reuses_models(tmp_path, capsys, counting_fit):
    argv = ["train", "digits5", "--out", str(tmp_path), "--set", "train.epochs=3", "--quiet", "--device", "cpu"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "original" in out and "retrain" in out and "%" in out
    assert main(argv) == 0
    assert len(counting_fit) == 2


def test_cli_errors_name_the_problem(tmp_path, capsys):
    assert main(["train", "digits5", "--out", str(tmp_path), "--set", "train.epoks=3"]) == 2
    assert "train.epoks" in capsys.readouterr().err
    assert main(["train", "cifar10", "--out", str(tmp_path), "--data-dir", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert "nowhere" in err and "data_batch_1" in err


def test_cli_scenarios_lists_one_line_each(capsys):
    assert main(["scenarios"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert any(line.startswith("fmnist5 ") for line in lines) and len(lines) >= 6


def test_normalisation_statistics_do_not_depend_on_the_thread_count():
    """They enter the reference models' cache keys: a --jobs run's one-thread workers and its parent must agree."""
    sc = load_scenario("fmnist5")
    assert sc.model.mean is None  # computed from the training set
    x = torch.rand(4000, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    old = torch.get_num_threads()
    try:
        stats = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            stats.append(pipeline.normalisation(sc, x))
    finally:
        torch.set_num_threads(old)
    assert stats[0] == stats[1]
    want_mean = [round(float(v), 6) for v in x.double().mean(dim=(0, 2, 3))]
    want_std = [round(float(v), 6) for v in x.double().std(dim=(0, 2, 3))]
    assert stats[0] == (want_mean, want_std)
