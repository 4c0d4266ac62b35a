"""The estimate of Re-train (rurk.audit.estimate) and the audit without Re-train (rurk.audit.free, `--reference none`).

The estimate's arithmetic on hand-made counts; its bootstrap interval's coverage on a simulated calibration set;
the three-way verdict on hand-made intervals; the command line's refusals; and that the audit without Re-train
never trains, loads or reads Re-train."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import user_nets
from rurk.audit import estimate as E
from rurk.audit.free import BAND, free_taus, verdict
from rurk.cli import main
from rurk.data.tensordata import TensorData
from rurk.audit.estimate import EstimateSpec, RetrainEstimate, estimate_retrain


def labelled(labels, n_px: int = 4) -> TensorData:
    y = torch.tensor(labels)
    return TensorData(torch.full((len(labels), 1, n_px, n_px), 0.5), y, torch.arange(len(labels)))


# ---------------------------------------------------------------------------------------------- the estimate
def test_the_estimate_is_originals_accuracy_less_the_learning_curves_clean_error_plus_the_shift():
    """Class 0: 10 calibration images, Original's clean error 0.2 and accuracy 0.7 at τ = 0.1; 6 trained, 3 kept:
    κ = √2. Class 1: 10 images, clean error 0.1, 0.6 at τ = 0.1; 10 trained, 9 kept: κ = √(10/9). The forget
    set: three class-0 images, one class-1. draws = 4, so a count of 4 is a right image."""
    draws = 4
    calib = labelled([0] * 10 + [1] * 10)
    clean = [4] * 8 + [0] * 2 + [4] * 9 + [0]
    at_01 = [4] * 7 + [0] * 3 + [4] * 6 + [0] * 4
    counts = np.array([clean, at_01])
    forget = labelled([0, 0, 0, 1])
    retain = labelled([0] * 3 + [1] * 9 + [2] * 5)
    spec = EstimateSpec(taus=(0.1,), draws=draws, proxy=0.5, bootstrap=0)
    est = estimate_retrain(None, forget, calib, spec, num_classes=3, retain=retain, counts=counts,
                           shift={0: -0.1, 1: 0.2})
    k0, k1 = math.sqrt(2), math.sqrt(10 / 9)
    want0 = 0.7 - (k0 - 1) * 0.2 + 0.5 * -0.1
    want1 = 0.6 - (k1 - 1) * 0.1 + 0.5 * 0.2
    assert est.acc[0] == pytest.approx(0.75 * want0 + 0.25 * want1)
    assert est.classes[0]["kappa"] == pytest.approx(k0) and est.classes[1]["estimate"] == [pytest.approx(want1)]
    # without the retain set: neither correction (κ = 1, no shift) and the wider validated interval
    plain = estimate_retrain(None, forget, calib, spec, num_classes=3, counts=counts, shift={0: -0.1, 1: 0.2})
    assert plain.mode == "no_retain" and plain.acc[0] == pytest.approx(0.75 * 0.7 + 0.25 * 0.6)
    assert plain.hi[0] - plain.lo[0] > est.hi[0] - est.lo[0]
    # at τ = 0 it is the learning-curve rule calibrated stopping always used: 1 − κ·err
    zero = estimate_retrain(None, forget, calib, EstimateSpec(taus=(0.0,), draws=draws, proxy=0, bootstrap=0),
                            num_classes=3, retain=retain, counts=np.array([clean, clean]))
    assert zero.acc[0] == pytest.approx(0.75 * (1 - k0 * 0.2) + 0.25 * (1 - k1 * 0.1))


def test_the_estimate_stays_within_0_and_1():
    counts = np.array([[0] * 10, [0] * 10])  # Original wrong on every calibration image
    est = estimate_retrain(None, labelled([0]), labelled([0] * 10), EstimateSpec(taus=(0.1,), draws=1, proxy=1.0,
                           bootstrap=0), num_classes=2, retain=labelled([0]), counts=counts, shift={0: -0.5})
    assert est.acc[0] == 0.0 and est.lo[0] == 0.0


def test_the_interval_is_the_validated_error_or_the_bootstrap_whichever_is_wider(monkeypatch):
    monkeypatch.setitem(E.VALIDATED, "retain", {0.0: 0.0, 0.3: 10.0})
    rng = np.random.default_rng(0)
    counts = (rng.random((2, 400)) < 0.8).astype(int)
    args = dict(num_classes=2, retain=labelled([0, 1]), counts=counts)
    est = estimate_retrain(None, labelled([0]), labelled([0] * 400), EstimateSpec(taus=(0.15,), draws=1, proxy=0,
                           bootstrap=500), **args)
    assert est.validated_half[0] == pytest.approx(1.96 * 5.0 / 100)  # linear between 0 and 0.3
    assert est.hi[0] - est.acc[0] == pytest.approx(max(est.boot_half[0], est.validated_half[0]))
    beyond = estimate_retrain(None, labelled([0]), labelled([0] * 400), EstimateSpec(taus=(0.5,), draws=1, proxy=0,
                              bootstrap=500), **args)
    assert math.isnan(beyond.lo[0]) and "beyond the validated grid" in beyond.reason(0)


def test_the_bootstrap_interval_covers_the_class_accuracy_in_95_percent_of_simulated_calibration_sets(monkeypatch):
    """A class whose images Original gets right with probability 0.85: 200 simulated calibration sets of 150
    images (2 copies each, both right or both wrong). With no validated error to widen it, the bootstrap interval
    alone must cover 0.85 about 95% of the time."""
    monkeypatch.setitem(E.VALIDATED, "no_retain", {0.0: 0.0, 1.0: 0.0})
    rng = np.random.default_rng(1)
    covered = 0
    for _ in range(200):
        right = rng.random(150) < 0.85
        counts = np.vstack([2 * right, 2 * right])
        est = estimate_retrain(None, labelled([0]), labelled([0] * 150), EstimateSpec(taus=(0.1,), draws=2,
                               bootstrap=400, seed=int(rng.integers(1 << 30))), num_classes=2, counts=counts)
        covered += est.lo[0] <= 0.85 <= est.hi[0]
    assert 0.90 <= covered / 200 <= 0.99


def test_few_calibration_images_warn_and_widen():
    counts = np.array([[1] * 10, [1] * 9 + [0]])
    est = estimate_retrain(None, labelled([0]), labelled([0] * 10), EstimateSpec(taus=(0.1,), draws=1, bootstrap=200),
                           num_classes=2, counts=counts)
    assert any("10 calibration images" in w for w in est.warnings)


def test_fewer_than_30_calibration_images_warn_and_double_the_bootstrap_half_width(monkeypatch):
    """The validated error set to 0, the interval is the bootstrap's: × 2 below MIN_CALIB = 30 images of a class
    (with a warning), × 1 from 30 on."""
    monkeypatch.setitem(E.VALIDATED, "no_retain", {0.0: 0.0, 1.0: 0.0})
    rng = np.random.default_rng(0)

    def est(n):
        right = (rng.random(n) < 0.7).astype(int)
        return estimate_retrain(None, labelled([0]), labelled([0] * n), EstimateSpec(taus=(0.1,), draws=1,
                                bootstrap=300), num_classes=2, counts=np.vstack([right, right]))

    few, enough = est(29), est(30)
    assert any("29 calibration images" in w for w in few.warnings) and not enough.warnings
    assert few.hi[0] - few.acc[0] == pytest.approx(min(1 - few.acc[0], 2 * few.boot_half[0]))
    assert enough.hi[0] - enough.acc[0] == pytest.approx(enough.boot_half[0])


def test_the_bootstrap_resamples_carry_the_same_corrections_as_the_estimate():
    """Every calibration image of the class has the same counts (one of two copies right, clean and noisy), so every
    resample is the sample itself: the bootstrap's half-width is 0 — also with κ = √2, where the learning-curve
    correction moves the estimate from 0.5 to 0.5 − (√2 − 1)·0.5."""
    calib, counts = labelled([0] * 40), np.ones((2, 40), dtype=int)
    est = estimate_retrain(None, labelled([0, 0]), calib, EstimateSpec(taus=(0.1,), draws=2, proxy=0, bootstrap=200),
                           num_classes=2, retain=labelled([0, 0, 1]), counts=counts)
    assert est.classes[0]["kappa"] == pytest.approx(math.sqrt(2))
    assert est.acc[0] == pytest.approx(0.5 - (math.sqrt(2) - 1) * 0.5)
    assert est.boot_half[0] == pytest.approx(0.0, abs=1e-12)


def test_the_validated_grid_ends_at_its_largest_tau_and_verdicts_at_0_1():
    """The validated half-width is the 95% normal quantile times the RMSE, at every grid τ up to the largest one
    (0.3) included; a verdict is given up to VERDICT_MAX_TAU = 0.1 included."""
    from scipy.stats import norm

    z = norm.ppf(0.975)
    for tau, rmse in E.VALIDATED["retain"].items():
        assert E.validated_half("retain", tau) == pytest.approx(z * rmse / 100, rel=1e-3)
    assert math.isnan(E.validated_half("retain", 0.31))
    taus = [0.03, 0.1, 0.2, 0.3]
    est = RetrainEstimate(taus, np.full(4, 0.8), np.full(4, 0.7), np.full(4, 0.9), "retain", {}, np.zeros(4),
                          np.array([E.validated_half("retain", t) for t in taus]))
    assert [est.reason(i) is None for i in range(4)] == [True, True, False, False]


def test_the_estimate_round_trips_through_its_dict():
    counts = np.array([[1, 1, 0, 1], [1, 0, 0, 1]])
    est = estimate_retrain(None, labelled([0]), labelled([0] * 4), EstimateSpec(taus=(0.03,), draws=1, bootstrap=50),
                           num_classes=2, counts=counts)
    back = RetrainEstimate.from_dict(json.loads(json.dumps(est.to_dict())))
    assert np.allclose(back.acc, est.acc) and np.allclose(back.lo, est.lo) and back.classes.keys() == est.classes.keys()


@pytest.mark.parametrize("forget,calib,shape,match", [
    ([0, 1], [0, 0], None, r"no image of forget class\(es\) \[1\]"),
    ([0], [0, 7], None, r"--calibration labels = \[0, 7\]: expected classes of the model, 0 to 4"),
    ([0], [0, 0], (1, 2, 2), r"--calibration images of shape \(1, 2, 2\): expected the forget set's \(1, 4, 4\)"),
])
def test_calibration_sets_that_do_not_fit_are_refused(forget, calib, shape, match):
    c = labelled(calib) if shape is None else TensorData(torch.zeros(len(calib), *shape), torch.tensor(calib),
                                                         torch.arange(len(calib)))
    with pytest.raises(ValueError, match=match):
        E.check_sets(labelled(forget), c, 5)


# ---------------------------------------------------------------------------------------------- the verdict
@pytest.mark.parametrize("lo,hi,want", [
    (1.06, 1.2, "residual knowledge"), (0.96, 1.04, "as Re-train"), (0.8, 0.94, "over-forgetting"),
    (0.97, 1.08, "inconclusive"), (0.9, 1.0, "inconclusive"), (None, 1.1, "inconclusive"),
    (1 - BAND, 1 + BAND, "as Re-train"),
])
def test_a_verdict_needs_the_whole_interval_on_one_side(lo, hi, want):
    assert verdict(lo, hi) == want


def test_r_free_divides_by_the_estimate_and_marks_the_circular_tau():
    est = RetrainEstimate([0.0, 0.03], np.array([0.8, 0.8]), np.array([0.76, 0.76]), np.array([0.84, 0.84]),
                          "retain", {}, np.array([0.0, 0.0]), np.array([0.04, 0.04]))
    taus = free_taus(np.array([0.92, 0.8]), est, circular_tau=0.03)
    assert taus[0].r_free == pytest.approx(1.15) and taus[0].lo == pytest.approx(0.92 / 0.84)
    assert taus[0].verdict == "residual knowledge"
    assert taus[1].verdict == "no verdict" and "calibrated stopping" in taus[1].reason


# ---------------------------------------------------------------------------------------------- the command line
TINY = ["--set", "train.epochs=3", "--draws", "4", "--taus", "0,0.1", "--bootstrap", "20", "--quiet", "--device",
        "cpu"]


def test_scenario_audit_without_retrain_never_reads_retrain(tmp_path, monkeypatch, capsys):
    import rurk.cli.audit as cli_audit
    from rurk import pipeline

    real = pipeline.reference_model

    def no_retrain(kind, *a, **k):
        assert kind != "retrain", "the audit without Re-train asked for Re-train"
        return real(kind, *a, **k)

    monkeypatch.setattr(pipeline, "reference_model", no_retrain)
    monkeypatch.setattr(cli_audit, "reference_models", lambda *a, **k: pytest.fail("both references were asked for"))
    assert main(["audit", "digits5", "--method", "gd", "--reference", "none", "--out", str(tmp_path), *TINY]) == 0
    out = capsys.readouterr().out
    assert "r_free [95%]" in out
    found = json.loads(next((tmp_path / "digits5" / "audits").rglob("residual-free-gaussian.json")).read_text())
    assert [t["tau"] for t in found["per_tau"]] == [0.0, 0.1] and found["estimate"]["mode"] == "retain"
    kinds = {json.loads((p / "model.json").read_text())["kind"] for p in (tmp_path / "models").iterdir()}
    assert "retrain" not in kinds


def test_a_calibrated_method_is_audited_with_its_circular_tau_marked(tmp_path, capsys):
    argv = ["audit", "digits5", "--method", "rurk", "--reference", "none", "--out", str(tmp_path), *TINY]
    argv[argv.index("0,0.1")] = "0,0.03"  # the rule's τ
    assert main(argv) == 0
    found = json.loads(next((tmp_path / "digits5" / "audits").rglob("residual-free-gaussian.json")).read_text())
    assert found["circular_tau"] == 0.03
    assert found["per_tau"][1]["verdict"] == "no verdict" and "calibrated stopping" in found["per_tau"][1]["reason"]


def refused(capsys, argv, *parts):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and all(p in err for p in parts), err


def test_refusals_before_any_work(tmp_path, capsys):
    refused(capsys, ["audit", "digits5", "--reference", "a.safetensors", "--reference", "none", "--out", str(tmp_path)],
            "--reference = ['a.safetensors', 'none']: expected one reference")
    refused(capsys, ["audit", "digits5", "--reference", "none", "--robust", "--out", str(tmp_path)],
            "--robust with --reference none")
    refused(capsys, ["audit", "digits5", "--reference", "none", "--probe", "pgd", "--out", str(tmp_path), "--quiet"],
            "--probe = 'pgd' with --reference none: expected a random probe")
    refused(capsys, ["audit", "digits5", "--original", "o.safetensors", "--out", str(tmp_path)],
            "--original = 'o.safetensors': expected a safetensors file")


@pytest.fixture(scope="module")
def user_files(tmp_path_factory):
    """A user's Original and unlearned model (the same net here), a forget set and a calibration set."""
    root = tmp_path_factory.mktemp("free")
    from sklearn.datasets import load_digits

    d = load_digits()
    keep = d.target < 5
    x, y = (d.images[keep] / 16.0).astype(np.float32)[:, None], d.target[keep].astype(np.int64)
    torch.manual_seed(0)
    net = user_nets.make_net()
    save_file(net.state_dict(), str(root / "o.safetensors"))
    zero = np.flatnonzero(y == 0)
    np.savez(root / "forget.npz", x=x[zero[:20]], y=y[zero[:20]])
    np.savez(root / "calib.npz", x=x[zero[20:60]], y=y[zero[20:60]])
    np.savez(root / "calib_few.npz", x=x[zero[20:30]], y=y[zero[20:30]])
    np.savez(root / "calib_wrong.npz", x=x[zero[20:60]], y=np.full(40, 1))
    np.savez(root / "calib_big.npz", x=np.pad(x[zero[20:60]], ((0, 0), (0, 0), (0, 1), (0, 1))), y=y[zero[20:60]])
    rest = np.setdiff1d(np.arange(len(y)), zero[:60])
    np.savez(root / "retain.npz", x=x[rest], y=y[rest])
    np.savez(root / "retain_one.npz", x=x[zero[60:]], y=y[zero[60:]])
    return root


def user_argv(root, out, calib="calib.npz", *extra):
    return ["audit", "--arch", "user_nets:make_net", "--unlearned", str(root / "o.safetensors"), "--original",
            str(root / "o.safetensors"), "--forget", str(root / "forget.npz"), "--calibration", str(root / calib),
            "--out", str(out), "--draws", "4", "--taus", "0,0.05", "--bootstrap", "20", "--quiet", "--device", "cpu",
            *extra]


def test_your_own_model_without_retrain(user_files, tmp_path, capsys):
    assert main(user_argv(user_files, tmp_path)) == 0
    out = capsys.readouterr().out
    assert "no retain set" in out  # the corrections that need it are off, and the output says so
    names = {p.name for p in tmp_path.iterdir()}
    assert {"residual-free-gaussian.json", "residual-free-gaussian.csv", "residual-free-gaussian.png",
            "leaks-free-gaussian.png"} <= names
    found = json.loads((tmp_path / "residual-free-gaussian.json").read_text())
    # Original audited against the estimate made from itself: r_free = acc on the forget copies / on calibration's
    assert found["estimate"]["mode"] == "no_retain" and len(found["per_tau"]) == 2
    assert main(user_argv(user_files, tmp_path / "r", "calib.npz", "--retain", str(user_files / "retain.npz"))) == 0
    assert json.loads((tmp_path / "r" / "residual-free-gaussian.json").read_text())["estimate"]["mode"] == "retain"


def test_few_calibration_images_are_allowed_with_a_warning(user_files, tmp_path, capsys):
    assert main(user_argv(user_files, tmp_path, "calib_few.npz")) == 0
    assert "10 calibration images (fewer than 30)" in capsys.readouterr().out


@pytest.mark.parametrize("calib,parts", [
    ("calib_wrong.npz", ["--calibration has no image of forget class(es) [0]"]),
    ("calib_big.npz", ["--calibration", "expected"]),
])
def test_your_own_calibration_set_that_does_not_fit_is_refused(user_files, tmp_path, capsys, calib, parts):
    refused(capsys, user_argv(user_files, tmp_path, calib), *parts)


def test_a_retain_set_of_one_class_is_refused(user_files, tmp_path, capsys):
    refused(capsys, user_argv(user_files, tmp_path, "calib.npz", "--retain", str(user_files / "retain_one.npz")),
            "--retain holds images of class 0 only")


def test_your_own_model_without_retrain_needs_its_files(user_files, tmp_path, capsys):
    argv = user_argv(user_files, tmp_path)
    i = argv.index("--calibration")
    refused(capsys, argv[:i] + argv[i + 2:] + ["--reference", "none"], "--arch without Re-train needs --calibration")


def test_no_verdict_beyond_the_validated_largest_tau():
    est = RetrainEstimate([0.1, 0.2], np.array([0.8, 0.7]), np.array([0.76, 0.66]), np.array([0.84, 0.74]),
                          "retain", {}, np.array([0.0, 0.0]), np.array([0.04, 0.04]))
    low, high = free_taus(np.array([0.95, 0.95]), est)
    assert low.verdict == "residual knowledge" and high.verdict == "no verdict"
    assert f"> {E.VERDICT_MAX_TAU:g}" in high.reason and high.r_free == pytest.approx(0.95 / 0.7)


# ---------------------------------------------------------------------------------------------- collateral damage
class Always(torch.nn.Module):
    """Predicts class ``k`` for every input."""

    def __init__(self, k: int, n: int = 3):
        super().__init__()
        self.k, self.n = k, n
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        out = torch.zeros(len(x), self.n) + 0 * self.w
        out[:, self.k] = 1.0
        return out


def test_collateral_is_the_accuracy_on_noisy_images_of_the_forget_classes_only():
    from types import SimpleNamespace

    from rurk.audit.spec import AuditSpec
    from rurk.audit.free import class_sets, collateral

    data = SimpleNamespace(test=labelled([0, 0, 1, 2, 0]), retain=labelled([1, 0, 2]))
    sets = class_sets(data, [0])
    assert sets["test"].y.tolist() == [0, 0, 0] and sets["retained"].y.tolist() == [0]
    c = collateral(Always(0), sets, AuditSpec(taus=(0.0, 0.3), draws=4, bootstrap=0), seed=0)
    assert c["test"] == [1.0, 1.0] and c["retained"] == [1.0, 1.0] and c["n_test"] == 3
    assert collateral(Always(1), sets, AuditSpec(taus=(0.3,), draws=4, bootstrap=0), seed=0)["test"] == [0.0]


def test_the_report_pairs_each_rows_collateral_with_retrains_seed_by_seed():
    from rurk.run.experiment import SeedResult
    from rurk.report.tables import main_table
    from rurk.report.summary import summarise

    keys = ("retain_acc", "unlearn_acc", "test_acc", "mia")
    results = []
    for seed, (rt, m) in enumerate(((0.8, 0.5), (0.6, 0.5))):
        metric = lambda acc: {**dict(zip(keys, (0.9, 0.1, 0.8, 0.2))),  # noqa: E731
                              "collateral": {"taus": [0.0, 0.3], "test": [0.9, acc], "retained": [1.0, acc]}}
        results.append(SeedResult(seed, {"original": metric(0.9), "retrain": metric(rt), "rurk": metric(m)}, {}, {}))
    s = summarise("hand", "gaussian", results, ["original", "retrain", "rurk"])
    c = s["methods"]["rurk"]["collateral"]
    assert c["test_gap_per_seed"] == [[0.0, pytest.approx(-30.0)], [0.0, pytest.approx(-10.0)]]
    assert c["test_gap"] == [0.0, pytest.approx(-20.0)]
