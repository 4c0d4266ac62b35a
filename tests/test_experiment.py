"""`rurk run` end to end on digits5: report consistency, resume, failure isolation, tuning."""

import json

import numpy as np
import pytest

import rurk.run.experiment as experiment
from rurk.cli import main
from rurk.config import load_scenario, parse_overrides
from rurk.run.experiment import RunOptions, run_experiment
from rurk.audit.metrics import avg_gap
from rurk.report.summary import summarise
from rurk.store import Store

FAST = parse_overrides(["train.epochs=15", "methods.gd.epochs=2", "methods.rurk.epochs=1"])
OPTS = RunOptions(methods=["gd", "rurk"], seeds=[131, 42], taus=[0.0, 0.1, 0.3], draws=8, bootstrap=50,
                  device="cpu", robust=True)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    scenario = load_scenario("digits5", FAST)
    summary = run_experiment(scenario, OPTS, out, log=lambda *a: None)
    return scenario, out, summary


def test_summary_has_the_documented_shape(run):
    _, out, summary = run
    on_disk = json.loads((out / "digits5" / "summary.json").read_text())
    assert on_disk["scenario"] == "digits5" and on_disk["seeds"] == [131, 42]
    assert set(on_disk["methods"]) == {"original", "retrain", "gd", "rurk"}
    for name, e in on_disk["methods"].items():
        for k in ("retain_acc", "unlearn_acc", "test_acc", "mia", "relearn_epochs"):
            assert set(e[k]) >= {"mean", "std"}
        assert isinstance(e["avg_gap"], float) and "wall_s" in e
        res = e["residual"]
        assert res["probe"] == "gaussian" and res["taus"] == [0.0, 0.1, 0.3]
        assert len(res["r_paper"]) == len(res["r_pooled"]) == len(res["prevalence"]) == 3
    assert on_disk["methods"]["retrain"]["avg_gap"] == 0.0
    assert on_disk["methods"]["retrain"]["residual"]["r_pooled"] == [1.0, 1.0, 1.0]
    for f in ("report.md", "table.csv", "prevalence.csv", "disagreement.csv", "perturbed_unlearn.csv", "residual.png"):
        assert (out / "digits5" / f).exists(), f
    assert (out / "digits5" / "seed-131" / "rurk" / "residual-gaussian.csv").exists()
    for f in ("residual-gaussian.npz", "leaks-gaussian.png"):  # per-sample scores and the leak gallery
        assert (out / "digits5" / "seed-131" / "rurk" / f).exists(), f
    for f in ("relearn_curve.csv", "relearn_curve.png", "robust.csv", "robust.png"):  # the attack curves
        assert (out / "digits5" / f).exists(), f
    report = (out / "digits5" / "report.md").read_text()
    assert "seed-131/rurk/leaks-gaussian.png" in report and "## Relearning attack" in report and "## Robust" in report


def test_report_numbers_equal_recomputation_from_stored_predictions(run):
    scenario, out, summary = run
    store = Store(out)
    evals = {(r["seed"], r["config"].get("method") or r["config"].get("model")): r["metrics"]
             for r in store.records("eval")}
    for name in ("original", "retrain", "gd", "rurk"):
        vals = np.array([[evals[(s, name)][k] for k in ("retain_acc", "unlearn_acc", "test_acc", "mia")]
                         for s in (131, 42)]) * 100
        e = summary["methods"][name]
        for j, k in enumerate(("retain_acc", "unlearn_acc", "test_acc", "mia")):
            assert e[k]["mean"] == pytest.approx(vals[:, j].mean())
            assert e[k]["std"] == pytest.approx(vals[:, j].std(ddof=0))
        ref = np.array([[evals[(s, "retrain")][k] for k in ("retain_acc", "unlearn_acc", "test_acc", "mia")]
                        for s in (131, 42)]) * 100
        assert e["avg_gap"] == pytest.approx(np.abs(vals.mean(0) - ref.mean(0)).mean())
    audits = {(r["seed"], r["metrics"]["method"]): r["metrics"] for r in store.records("audit")}
    for i in range(3):
        got = summary["methods"]["rurk"]["residual"]["prevalence"][i]
        assert got == pytest.approx(np.mean([audits[(s, "rurk")]["per_tau"][i]["prevalence"] for s in (131, 42)]))
    # the Markdown table prints the same means
    report = (out / "digits5" / "report.md").read_text()
    assert f"{summary['methods']['gd']['test_acc']['mean']:.2f} ± " in report


def test_rerun_skips_every_finished_cell(run, monkeypatch):
    scenario, out, summary = run
    monkeypatch.setattr(experiment, "unlearn", lambda *a, **k: pytest.fail("re-unlearned a finished cell"))
    monkeypatch.setattr(experiment, "evaluate", lambda *a, **k: pytest.fail("re-evaluated a finished cell"))
    monkeypatch.setattr(experiment, "residual_knowledge", lambda *a, **k: pytest.fail("re-audited a finished cell"))
    again = run_experiment(scenario, OPTS, out, log=lambda *a: None)
    assert again["methods"]["rurk"] == summary["methods"]["rurk"]


def test_a_failing_method_is_recorded_and_the_run_goes_on(tmp_path, monkeypatch):
    scenario = load_scenario("digits5", FAST)
    real = experiment.unlearn

    def broken(name, *a, **k):
        if name == "gd":
            raise RuntimeError("boom")
        return real(name, *a, **k)

    monkeypatch.setattr(experiment, "unlearn", broken)
    opts = RunOptions(methods=["gd", "rurk"], seeds=[131], taus=[0.0], draws=2, bootstrap=0, relearn=False,
                      device="cpu")
    summary = run_experiment(scenario, opts, tmp_path, log=lambda *a: None)
    assert summary["methods"]["gd"]["n_seeds"] == 0 and "boom" in summary["methods"]["gd"]["failed"][0]["error"]
    assert summary["methods"]["rurk"]["n_seeds"] == 1
    assert "failed: RuntimeError: boom" in (tmp_path / "digits5" / "report.md").read_text()


def test_diverged_method_is_reported_not_evaluated(tmp_path):
    scenario = load_scenario("digits5", parse_overrides(["train.epochs=5", "methods.ga.lr=1e6",
                                                         "methods.ga.clip_grad_norm=1e9", "methods.ga.epochs=20"]))
    opts = RunOptions(methods=["ga"], seeds=[131], taus=[0.0], draws=2, bootstrap=0, relearn=False, device="cpu")
    summary = run_experiment(scenario, opts, tmp_path, log=lambda *a: None)
    assert summary["methods"]["ga"]["n_seeds"] == 0 and summary["methods"]["ga"]["failed"][0]["diverged"]


def test_cli_run_and_tune_write_their_files(tmp_path, capsys):
    args = ["--out", str(tmp_path), "--set", "train.epochs=10", "--device", "cpu", "--quiet"]
    assert main(["tune", "digits5", "--method", "ssd", "--trials", "3", *args]) == 0
    tuned = tmp_path / "tuned-digits5.toml"
    text = tuned.read_text()
    assert "[methods.ssd]" in text and "split_seeds" in text and "avg_gap" in text
    assert main(["run", "digits5", "--methods", "ssd", "--seeds", "131", "--taus", "0,0.1", "--draws", "4",
                 "--no-relearn", "--tuned", str(tuned), *args]) == 0
    printed = capsys.readouterr().out
    assert "| ssd |" in printed
    summary = json.loads((tmp_path / "digits5" / "summary.json").read_text())
    assert summary["methods"]["ssd"]["residual"]["taus"] == [0.0, 0.1]


def test_tune_refuses_reported_seeds():
    from rurk.config import ConfigError
    from rurk.run.tune import tune

    with pytest.raises(ConfigError, match="reported"):
        tune(load_scenario("digits5"), ["gd"], "/nonexistent", seed=131)


def test_summarise_avg_gap_on_hand_made_table():
    class R:
        def __init__(self, seed, metrics):
            self.seed, self.metrics, self.residual, self.records = seed, metrics, {}, {}

    m = lambda r, u, t, a: {"retain_acc": r, "unlearn_acc": u, "test_acc": t, "mia": a}  # noqa: E731
    results = [R(1, {"retrain": m(1.0, 0.1, 0.9, 0.2), "x": m(0.9, 0.3, 0.9, 0.2)}),
               R(2, {"retrain": m(1.0, 0.3, 0.9, 0.4), "x": m(0.9, 0.1, 0.9, 0.4)})]
    s = summarise("t", "gaussian", results, ["retrain", "x"])
    # on the seed means: |0.9-1.0|=10, |0.2-0.2|=0, 0, 0 -> 2.5 points; per seed: (10+20)/4 = 7.5 both
    assert s["methods"]["x"]["avg_gap"] == pytest.approx(2.5)
    assert s["methods"]["x"]["avg_gap_per_seed"]["mean"] == pytest.approx(7.5)
    assert avg_gap(m(0.9, 0.3, 0.9, 0.2), m(1.0, 0.1, 0.9, 0.2)) == pytest.approx(7.5)


def test_cli_unlearn_with_method_shorthand_records_the_config(tmp_path):
    assert main(["unlearn", "digits5", "--method", "gd", "--set", "method.epochs=1", "--set", "train.epochs=3",
                 "--out", str(tmp_path), "--quiet", "--device", "cpu"]) == 0
    recs = Store(tmp_path).records("unlearned")
    assert len(recs) == 1 and recs[0]["metrics"]["config"]["epochs"] == 1 and recs[0]["metrics"]["steps"] > 0
    assert any((tmp_path / "models").glob("*/model.safetensors"))
    # the shorthand needs a single method
    assert main(["run", "digits5", "--methods", "gd,ga", "--set", "method.lr=1", "--out", str(tmp_path)]) == 2


def test_cli_audit_writes_json_csv_png_for_a_method_and_a_checkpoint(tmp_path, capsys):
    common = ["--out", str(tmp_path), "--set", "train.epochs=3", "--draws", "4", "--taus", "0,0.1", "--quiet",
              "--device", "cpu"]
    assert main(["audit", "digits5", "--method", "gd", *common]) == 0
    out = tmp_path / "digits5" / "audits" / "seed-131" / "gd"  # its own folder, never a run's seed-131/gd
    summary = json.loads((out / "residual-gaussian.json").read_text())
    assert summary["method"] == "gd" and [t["tau"] for t in summary["per_tau"]] == [0.0, 0.1]
    assert (out / "residual-gaussian.csv").exists() and (out / "residual-gaussian.png").exists()
    assert "r_pooled" in capsys.readouterr().out
    ckpt = next((tmp_path / "models").glob("*/model.safetensors"))
    assert main(["audit", "digits5", "--unlearned", str(ckpt), *common]) == 0
    assert (tmp_path / "digits5" / "audits" / "seed-131" / ckpt.parent.name / "residual-gaussian.json").exists()
    assert main(["audit", "digits5", "--unlearned", str(tmp_path / "nope.safetensors"), *common]) == 2


def test_the_library_path_honours_the_scenarios_audit_noise_seed_and_probe_params(tmp_path):
    """``run_experiment(scenario, RunOptions())`` audits with the scenario's [audit] ``noise_seed`` and
    ``probe_params`` exactly as ``rurk run`` does (one merge, rurk.audit.spec.audit_spec); options still win."""
    from rurk.cli.checks import _audit_spec, _check_args
    from rurk.cli.parser import build_parser

    sets = ["train.epochs=1", "audit.probe=pgd", "audit.probe_params.steps=1", "audit.noise_seed=5",
            "audit.taus=[0.0, 0.1]", "audit.draws=2", "audit.bootstrap=0"]
    scenario = load_scenario("digits5", parse_overrides(sets))
    lib = experiment.audit_settings(scenario, RunOptions())
    assert (lib.probe, lib.probe_params, lib.noise_seed) == ("pgd", {"steps": 1}, 5)
    args = build_parser().parse_args(["run", "digits5", *[a for s in sets for a in ("--set", s)]])
    _check_args(args)
    assert _audit_spec(args, scenario).key() == lib.key()  # the CLI and the library: one spec
    # options override the table one by one; the table's parameters stay with the table's probe
    over = experiment.audit_settings(scenario, RunOptions(noise_seed=9, probe_params={"alpha": 0.01}))
    assert (over.noise_seed, over.probe_params) == (9, {"steps": 1, "alpha": 0.01})
    other = experiment.audit_settings(scenario, RunOptions(probe="gaussian"))
    assert (other.probe, other.probe_params, other.noise_seed) == ("gaussian", {}, 5)
    summary = run_experiment(scenario, RunOptions(methods=["ga"], seeds=[131], relearn=False, attacks=False,
                                                  device="cpu"), tmp_path, progress=False, log=lambda *a: None)
    audit = summary["run"]["audit"]  # the spec every row of the run was audited with
    assert (audit["probe"], audit["probe_params"], audit["noise_seed"]) == ("pgd", {"steps": 1}, 5)


def test_a_fresh_run_names_its_machine(run):
    """Every cell a run computes records this machine's digest, those it computed just now included (a freshly
    computed audit once reported 'cells of unknown machines'): the report names this CPU and its fingerprint."""
    from rurk import machine

    _, out, summary = run
    info = json.loads((out / "digits5" / "summary.json").read_text())["run"]
    assert info["cpu"] == machine.short(machine.machine())
    assert info["machine"]["digest"] is not None and info["machine"]["fingerprint"]["cpu"] == machine.cpu()
    assert all(r["timings"]["machine"] == machine.digest(machine.machine()) for r in Store(out).records())
