"""Faults a user meets: damaged checkpoints heal, concurrent runs share a store, failures are visible, bad input
is refused before any training, one-line errors."""

import dataclasses
import json
import threading

import pytest
import torch

import rurk.run.experiment as experiment
import rurk.pipeline as pipeline
from rurk.cli import main
from rurk.config import load_scenario, parse_overrides
from rurk.run.experiment import RunOptions, run_experiment
from rurk.store import Store

FAST = ["--set", "train.epochs=3", "--set", "methods.gd.epochs=1", "--draws", "2", "--taus", "0,0.1",
        "--no-relearn", "--quiet", "--device", "cpu"]


def gd_checkpoint(store: Store):
    (rec,) = [r for r in store.records("unlearned")]
    return rec["key"], store.model_dir(rec["key"]) / "model.safetensors"


@pytest.mark.parametrize("damage", ["truncate", "delete_folder"])
def test_a_damaged_unlearned_checkpoint_is_recomputed(tmp_path, capsys, damage):
    args = ["run", "digits5", "--methods", "gd", "--seeds", "131", "--out", str(tmp_path), *FAST]
    assert main(args) == 0
    store = Store(tmp_path)
    key, path = gd_checkpoint(store)
    good = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(good[: len(good) // 2])
    else:
        import shutil

        shutil.rmtree(path.parent)
    capsys.readouterr()
    assert main(args) == 0
    assert "missing or damaged; recomputing" in capsys.readouterr().out
    assert store.load_meta(key) is not None and path.read_bytes() == good  # the same weights again
    assert len(store.records("unlearned")) == 1


def test_two_runs_on_one_store_compute_each_cell_once(tmp_path, monkeypatch):
    calls = {"fit": 0, "unlearn": 0}
    lock = threading.Lock()
    real_fit, real_unlearn = pipeline.fit, experiment.unlearn

    def counting(name, real):
        def f(*a, **k):
            with lock:
                calls[name] += 1
            return real(*a, **k)
        return f

    monkeypatch.setattr(pipeline, "fit", counting("fit", real_fit))
    monkeypatch.setattr(experiment, "unlearn", counting("unlearn", real_unlearn))
    scenario = load_scenario("digits5", parse_overrides(["train.epochs=3", "methods.gd.epochs=1"]))
    opts = RunOptions(methods=["gd", "ga"], seeds=[131], taus=[0.0, 0.1], draws=2, bootstrap=0, relearn=False,
                      device="cpu")
    results, errors = [], []

    def go():
        try:
            results.append(run_experiment(scenario, opts, tmp_path, log=lambda *a: None))
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=go) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert calls == {"fit": 2, "unlearn": 2}  # Original + Re-train, gd + ga: once each, whoever came first
    strip = lambda s: {m: {k: v for k, v in e.items() if k != "wall_s"} for m, e in s["methods"].items()}  # noqa: E731
    assert strip(results[0]) == strip(results[1])


def test_a_failed_cell_ends_the_run_with_exit_1_and_is_reported_again(tmp_path, capsys):
    args = ["run", "digits5", "--methods", "gd,ga", "--seeds", "131", "--out", str(tmp_path), *FAST,
            "--set", "methods.ga.lr=1e6", "--set", "methods.ga.clip_grad_norm=1e9", "--set", "methods.ga.epochs=20"]
    assert main(args) == 1
    out = capsys.readouterr()
    assert "1 failed cell" in out.out and "seed 131 ga: diverged" in out.out and "rurk: failed:" in out.err
    report = (tmp_path / "digits5" / "report.md").read_text()
    assert "| ga (failed on 1 of 1 seeds) |" in report and "**ga** failed on seed 131" in report
    assert main(args) == 1  # the rerun reports the recorded failure again
    out = capsys.readouterr().out
    assert "failed in an earlier run" in out and "seed 131 ga: diverged" in out
    calls = []
    real = experiment.unlearn
    experiment.unlearn = lambda *a, **k: calls.append(a[0]) or real(*a, **k)
    try:
        assert main(args + ["--retry-failed"]) == 1
    finally:
        experiment.unlearn = real
    assert calls == ["ga"]  # recomputed, and only it


def test_bad_method_settings_are_refused_before_any_training(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(pipeline, "fit", lambda *a, **k: pytest.fail("trained before validating"))
    for extra, match in ((["--set", "methods.gd.lr=-1"], "methods.gd: lr = -1.0: expected a finite number > 0"),
                         (["--set", "methods.rurk.tau=-1"], "tau = -1.0"),
                         (["--methods", "gd,nope"], "unknown method 'nope'"),
                         (["--set", "train.epochz=1"], "unknown setting 'train.epochz'")):
        args = ["run", "digits5", "--out", str(tmp_path), "--quiet"]
        if "--methods" not in extra:
            args += ["--methods", "gd,rurk"]
        assert main(args + extra) == 2
        err = capsys.readouterr().err
        assert err.startswith("rurk: error:") and match in err and "Traceback" not in err


def test_a_diverging_original_is_one_line_with_exit_1_and_debug_shows_the_traceback(tmp_path, capsys):
    args = ["train", "digits5", "--set", "train.lr=1e12", "--set", "train.optimizer='sgd'", "--out", str(tmp_path),
            "--quiet", "--device", "cpu"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [err.strip()] and "original training diverged" in err
    with pytest.raises(RuntimeError, match="diverged"):
        main(args + ["--debug"])


def test_the_summary_lists_failures_with_their_seed(tmp_path):
    scenario = load_scenario("digits5", parse_overrides(["train.epochs=3", "methods.ga.lr=1e6",
                                                         "methods.ga.clip_grad_norm=1e9", "methods.ga.epochs=20"]))
    opts = RunOptions(methods=["ga"], seeds=[131, 42], taus=[0.0], draws=2, bootstrap=0, relearn=False, device="cpu")
    summary = run_experiment(scenario, opts, tmp_path, log=lambda *a: None)
    assert [f["seed"] for f in summary["methods"]["ga"]["failed"]] == [131, 42]
    failed = Store(tmp_path).records("unlearned")
    assert len(failed) == 2 and all(r["timings"]["wall_s"] > 0 for r in failed)  # failures have their wall time too
    on_disk = json.loads((tmp_path / "digits5" / "summary.json").read_text())
    assert on_disk["run"]["methods"]["ga"]["lr"] == 1e6 and on_disk["run"]["audit"]["draws"] == 2
    assert on_disk["run"]["threads"] == [torch.get_num_threads()] == [1]  # conftest: RURK_THREADS=1


AUDIT_FLAGS = ["--set", "train.epochs=2", "--draws", "2", "--taus", "0,0.1", "--quiet", "--device", "cpu"]


def _digits5_original(tmp_path):
    """digits5's Original for seed 131 (2 epochs) in the store at ``tmp_path``: (the audit's flags, the model)."""
    from rurk.pipeline import load_run_model, prepare, reference_models

    scenario = load_scenario("digits5", parse_overrides(["train.epochs=2"]))
    store = Store(tmp_path)
    prepared = prepare(scenario, store)
    refs = reference_models(scenario, prepared, 131, store, device="cpu")
    return ["--out", str(tmp_path), *AUDIT_FLAGS], load_run_model(store, refs.keys["original"], scenario, prepared)


# ---------------------------------------------------------------------------------------------- user checkpoints
def test_audit_accepts_plain_safetensors_and_names_what_is_wrong_with_bad_files(tmp_path, capsys):
    import torch
    from safetensors.torch import save_file

    common, model = _digits5_original(tmp_path)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    plain = tmp_path / "mine.safetensors"
    save_file(state, str(plain))  # what a user saves: no sidecar
    assert main(["audit", "digits5", "--unlearned", str(plain), *common]) == 0
    summary = json.loads((tmp_path / "digits5" / "audits" / "seed-131" / "mine" / "residual-gaussian.json").read_text())
    assert main(["audit", "digits5", *common]) == 0  # Original itself, from the store
    original = json.loads((tmp_path / "digits5" / "audits" / "seed-131" / "original" / "residual-gaussian.json").read_text())
    assert summary["per_tau"] == original["per_tau"]  # the plain file holds Original's weights: the same audit

    def refused(path, *needles):
        capsys.readouterr()
        assert main(["audit", "digits5", "--unlearned", str(path), *common]) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and all(n in err for n in needles), err

    refused(tmp_path / "absent.safetensors", "no such file")
    blob = plain.read_bytes()
    (tmp_path / "short.safetensors").write_bytes(blob[:-50])
    refused(tmp_path / "short.safetensors", "truncated")
    (tmp_path / "random.safetensors").write_bytes(bytes(range(256)) * 4)
    refused(tmp_path / "random.safetensors", "not a safetensors file")
    keys = dict(state)
    keys["extra.weight"] = torch.zeros(2)
    keys.pop(next(iter(state)))
    save_file(keys, str(tmp_path / "keys.safetensors"))
    refused(tmp_path / "keys.safetensors", "missing keys " + next(iter(state)), "unexpected keys extra.weight")
    shapes = {k: (torch.zeros(3, 3) if v.dim() == 2 else v) for k, v in state.items()}
    save_file(shapes, str(tmp_path / "shapes.safetensors"))
    refused(tmp_path / "shapes.safetensors", "wrong shapes", "file [3, 3] vs model")
    ckpt = next((tmp_path / "models").glob("*/model.safetensors"))  # rurk's own, with its sidecar
    damaged = tmp_path / "damaged.safetensors"
    damaged.write_bytes(ckpt.read_bytes()[:-4] + b"\0\0\0\0")
    damaged.with_suffix(".json").write_text(ckpt.with_suffix(".json").read_text())
    refused(damaged, "damaged")


# ---------------------------------------------------------------------------------------------- mutants (issue 20)
def _reference_rows(tmp_path, **audit):
    """The audit JSON of Original on digits5 (seed 131) through `rurk run`'s own cell code and store."""
    scenario = load_scenario("digits5", parse_overrides(["train.epochs=2"]))
    opts = RunOptions(methods=[], seeds=[131], taus=[0.0, 0.1], bootstrap=0, relearn=False, attacks=False,
                      device="cpu", **audit)
    store = Store(tmp_path)
    prepared = pipeline.prepare(scenario, store)
    res = experiment.run_seed(scenario, prepared, 131, store, [], opts, tmp_path / "digits5", log=lambda *a: None)
    return res.residual["original"]


def test_an_audit_with_other_draws_or_noise_seed_is_computed_anew_not_served_from_the_store(tmp_path):
    first = _reference_rows(tmp_path, draws=2)
    assert first["c"] == 2 and first["noise_seed"] == 131  # the run seed
    assert _reference_rows(tmp_path, draws=3)["c"] == 3
    other = _reference_rows(tmp_path, draws=2, noise_seed=5)
    assert other["c"] == 2 and other["noise_seed"] == 5
    assert _reference_rows(tmp_path, draws=2) == first  # and the first cell is still served as it was


def test_tune_scores_trials_on_its_tuning_forget_sets_never_on_the_reported_one(tmp_path, monkeypatch):
    import dataclasses

    import rurk.run.tune as tune_mod

    class Captured(Exception):
        pass

    seen = {}

    def capture(objective, *a, **k):
        seen["splits"] = [(p.scenario.seeds.split, p.split.digest()) for p, *_ in objective.splits]
        raise Captured

    monkeypatch.setattr(tune_mod, "run_study", capture)
    scenario = load_scenario("digits5", parse_overrides(["train.epochs=1"]))
    with pytest.raises(Captured):
        tune_mod.tune(scenario, ["gd"], tmp_path, trials=1, split_seeds=[3, 4], device="cpu", log=lambda *a: None)
    digest = lambda s: pipeline.prepare(dataclasses.replace(  # noqa: E731
        scenario, seeds=dataclasses.replace(scenario.seeds, split=s))).split.digest()
    assert seen["splits"] == [(3, digest(3)), (4, digest(4))]
    assert pipeline.prepare(scenario).split.digest() not in {d for _, d in seen["splits"]}


@pytest.mark.parametrize("name", ["rl", "salun"])
def test_the_relabel_forget_stream_has_its_own_seed_not_the_retain_streams(name):
    """RL/SalUn (a forget pass, then a retain pass): with same-size sets a shared seed would give the forget pass
    the retain pass's permutation; the forget stream is seeded ``derive_seed(loader_seed, "forget")``."""
    from rurk.methods import unlearn
    from rurk.torchutil import derive_seed
    from rurk.train import BatchStream
    from test_methods_gradient import Recorder, ided_data, ids_of

    d = ided_data(64, 64)  # retain ids 0..63, forget ids 500..563: two batches of 32 each
    model, rec = unlearn(name, Recorder(), d, 131, overrides={"batch_size": 32, "epochs": 1})
    seen = [ids_of(x) for x in model.seen[-4:]]  # SalUn's saliency pass comes first
    forget, retain = seen[:2], seen[2:]
    assert all(i >= 500 for b in forget for i in b) and all(i < 500 for b in retain for i in b)
    assert [[i - 500 for i in b] for b in forget] != retain
    assert rec.extra["forget_loader_seed"] == derive_seed(d.loader_seed, "forget")
    lone = BatchStream(d.forget, 32, derive_seed(d.loader_seed, "forget"))
    assert [ids_of(lone.next()[0]) for _ in forget] == forget


# ---------------------------------------------------------------------------------------------- non-finite logits
def _digits_net(poison: str | None = None, seed: int = 0):
    """user_nets' MLP for 8×8 digits, random weights; ``poison``: "all" makes every weight NaN, "one" one weight
    (as 4 overwritten bytes would), "overflow" finite weights whose logits overflow to inf."""
    import user_nets

    torch.manual_seed(seed)
    net = user_nets.make_net().eval()
    with torch.no_grad():
        if poison == "all":
            for p in net.parameters():
                p.fill_(float("nan"))
        elif poison == "one":
            net[1].weight[3, 7] = float("nan")
        elif poison == "overflow":
            for layer in (net[1], net[3]):
                layer.weight.mul_(1e20)
    return net


def _forget(n: int = 24):
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 1, 8, 8, generator=g), torch.zeros(n, dtype=torch.long)  # class 0: what argmax(NaN) says


@pytest.mark.parametrize("poison", ["all", "one", "overflow"])
def test_non_finite_logits_are_an_error_of_the_audit_never_a_number(poison):
    from rurk.audit.kernel import residual_knowledge
    from rurk.torchutil import NonFiniteLogits

    x, y = _forget()
    bad, good = _digits_net(poison), _digits_net(seed=1)
    with pytest.raises(NonFiniteLogits, match=r"^the unlearned model returns non-finite logits \(NaN or inf\) for "
                                              r"(\d+) of 96 inputs$") as e:  # 24 clean + 3 × 24 perturbed
        residual_knowledge(bad, good, x, y, taus=[0.0, 0.1], draws=3, bootstrap=0, progress=False)
    assert int(str(e.value).split(" for ")[1].split(" of ")[0]) > 0
    with pytest.raises(NonFiniteLogits, match="^the reference \\(retrained\\) model returns non-finite"):
        residual_knowledge(good, bad, x, y, taus=[0.0, 0.1], draws=3, bootstrap=0, progress=False)
    res = residual_knowledge(good, _digits_net(seed=2), x, y, taus=[0.0, 0.1], draws=3, bootstrap=0, progress=False)
    assert res.k_m.shape == (2, 24)  # finite models are audited as before


@pytest.mark.parametrize("poison", ["all", "one"])
def test_non_finite_logits_are_an_error_of_every_metric(poison):
    from rurk.audit import metrics as M
    from rurk.data.tensordata import TensorData
    from rurk.torchutil import NonFiniteLogits
    from rurk.train import accuracy

    x, y = _forget()
    data = TensorData(x, y, torch.arange(len(y)))
    bad = _digits_net(poison)
    for metric in (lambda: accuracy(bad, data), lambda: M.standard_accuracies(bad, data, data, data),
                   lambda: M.mia(bad, data, data, data, 0), lambda: M.mean_ce(bad, data),
                   lambda: M.true_label_probs(bad, data)):
        with pytest.raises(NonFiniteLogits, match=r"the model \(Sequential\) returns non-finite logits \(NaN or inf\) for \d+ of 24 inputs"):
            metric()


def test_rurk_audit_refuses_a_nan_checkpoint_in_one_line_with_exit_2(tmp_path, capsys):
    import numpy as np
    from safetensors.torch import save_file

    common, model = _digits5_original(tmp_path)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    one = dict(state)
    first = next(k for k, v in state.items() if v.is_floating_point() and v.dim() > 1)
    one[first] = state[first].clone().view(-1).index_fill_(0, torch.tensor([0]), float("nan")).view_as(state[first])
    for name, weights in (("nan", {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
                                   for k, v in state.items()}), ("one", one)):
        save_file(weights, str(tmp_path / f"{name}.safetensors"))
        capsys.readouterr()
        assert main(["audit", "digits5", "--unlearned", str(tmp_path / f"{name}.safetensors"), *common]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("rurk: error: the unlearned model returns non-finite logits (NaN or inf) for ")
        assert not (tmp_path / "digits5" / "audits" / "seed-131" / name / "residual-gaussian.json").exists()
    # `rurk audit --arch`: the user's own factory and files
    x, y = _forget()
    np.savez(tmp_path / "forget.npz", x=x.numpy(), y=y.numpy())
    save_file(_digits_net("all").state_dict(), str(tmp_path / "u.safetensors"))
    save_file(_digits_net(seed=1).state_dict(), str(tmp_path / "a.safetensors"))
    capsys.readouterr()
    assert main(["audit", "--arch", "user_nets:make_net", "--unlearned", str(tmp_path / "u.safetensors"),
                 "--reference", str(tmp_path / "a.safetensors"), "--forget", str(tmp_path / "forget.npz"),
                 "--out", str(tmp_path / "arch"), "--draws", "2", "--taus", "0,0.1", "--quiet", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "the unlearned model returns non-finite logits (NaN or inf) for 72 of 72 inputs" in err  # 24 × (1 + 2)


def test_a_row_with_non_finite_logits_is_marked_failed_in_rurk_run(tmp_path, monkeypatch, capsys):
    """gd's weights stay finite but its logits overflow to inf: the row fails with the reason, the run exits 1, and a
    rerun reports the recorded failure without recomputing it."""
    real = experiment.unlearn

    def overflowing(*a, **k):
        model, rec = real(*a, **k)
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)):
                    m.weight.mul_(1e20)
        return model, rec

    monkeypatch.setattr(experiment, "unlearn", overflowing)
    args = ["run", "digits5", "--methods", "gd", "--seeds", "131", "--out", str(tmp_path), *FAST]
    assert main(args) == 1
    out = capsys.readouterr()
    assert "seed 131 gd: the model (" in out.out and "returns non-finite logits" in out.out
    summary = json.loads((tmp_path / "digits5" / "summary.json").read_text())
    (failed,) = summary["methods"]["gd"]["failed"]
    assert "non-finite logits" in failed["error"] and summary["methods"]["gd"]["retain_acc"]["mean"] is None
    monkeypatch.setattr(experiment, "evaluate", lambda *a, **k: pytest.fail("recomputed a recorded failure"))
    assert main(args) == 1 and "returns non-finite logits" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------- timings and threads
def test_every_record_has_its_wall_time_and_threads_and_the_report_says_where_the_time_went(tmp_path):
    scenario = load_scenario("digits5", parse_overrides(["train.epochs=3", "methods.gd.epochs=1", "methods.ga.epochs=1"]))
    opts = RunOptions(methods=["gd"], seeds=[131], taus=[0.0, 0.1], draws=2, bootstrap=0, relearn=False, device="cpu")
    run_experiment(scenario, opts, tmp_path, log=lambda *a: None)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:  # ga and its cells computed at 2 threads; gd's and the references' are reused from the 1-thread run
        summary = run_experiment(scenario, dataclasses.replace(opts, methods=["gd", "ga"]), tmp_path,
                                 log=lambda *a: None)
    finally:
        torch.set_num_threads(before)
    records = Store(tmp_path).records()
    kinds = {r["kind"] for r in records}
    assert {"model", "unlearned", "eval", "audit", "relearn_curve"} <= kinds
    for r in records:
        t = r["timings"]
        assert isinstance(t.get("wall_s"), (int, float)) and t["wall_s"] >= 0, r["kind"]
        assert t["threads"] == (2 if (r["config"] or {}).get("method") == "ga" else 1), (r["kind"], t)
    assert summary["run"]["threads"] == [1, 2]  # what the cells were computed with, not this process's count
    report = (tmp_path / "digits5" / "report.md").read_text()
    section = report[report.index("## Where the time went"):]
    walls = {}
    for r in records:
        walls[r["kind"]] = walls.get(r["kind"], 0.0) + r["timings"]["wall_s"]
    for phase, kind in (("training (Original, Re-train)", "model"), ("unlearning", "unlearned"),
                        ("evaluation", "eval"), ("audit", "audit"), ("curves", "relearn_curve")):
        assert f"| {phase} | {walls[kind]:.1f} |" in section
    gd, ga = (next(r["timings"]["wall_s"] for r in records if r["kind"] == "unlearned"
                   and r["metrics"].get("method") == m) for m in ("gd", "ga"))
    slow = sorted([("gd", gd), ("ga", ga)], key=lambda kv: -kv[1])
    assert "Slowest to unlearn: " + ", ".join(f"{n} {w:.1f} s" for n, w in slow) + "." in section
