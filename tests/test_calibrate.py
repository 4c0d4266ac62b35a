"""Calibrated stopping (rurk.methods._calibrate) and the calibration set it stands on (Split.calib).

The rule is checked on a hand-built trajectory (which checkpoint it keeps, where it stops); the loop wiring on a
real run (the kept model is exactly the model after the chosen step); the set on every way it can be drawn
(never overlapping train, forget, test)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from rurk.methods import _calibrate as calibrate
from rurk.audit import estimate
from rurk.methods._calibrate import CalibrationSpec, Calibrator
from rurk.config import ConfigError
from rurk.data import load_source, make_split
from rurk.data.splits import Split
from rurk.data.tensordata import TensorData
from rurk.methods import UnlearnData, unlearn
from rurk.train import accuracy, fit, OptimConfig

SEED = 3


# ---------------------------------------------------------------------------------------------- the rule
class Scripted(Calibrator):
    """A calibrator whose forget accuracy at step s is ``script[s]`` and whose target is ``target``."""

    def __init__(self, script, target, every=1, trace=0, trace_every=4):
        tiny = TensorData(torch.zeros(1, 1, 2, 2), torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long))
        super().__init__(CalibrationSpec(every=every, trace=trace, trace_every=trace_every, alpha=0, proxy=0), tiny,
                         tiny, SEED, num_classes=2, retain=tiny if trace else None, test=tiny if trace else None)
        self.script, self.fixed_target = script, target

    def estimate_target(self, original):
        return self.fixed_target

    def accuracy(self, model, name, data):
        return self.script[int(model.step)]


class Stepper(nn.Module):
    """A 'model' whose state is the step it is at."""

    def __init__(self):
        super().__init__()
        self.register_buffer("step", torch.tensor(0))


def drive(cal: Calibrator, n_steps: int) -> tuple[int, int]:
    """Run the protocol as run_loop does; returns (the step training stopped at, the step rewound to)."""
    model = Stepper()
    cal.start(model)
    stopped = n_steps
    for s in range(1, n_steps + 1):
        model.step.fill_(s)
        if cal.check(model, s):
            stopped = s
            break
    decision = cal.finish(model)
    assert decision["chosen_step"] == int(model.step)  # the model is rewound to the chosen checkpoint
    return stopped, int(model.step)


@pytest.mark.parametrize("script,target,want", [
    # forget accuracy falls past the target 0.88 at step 3 (0.80); step 2 (0.90) is closer -> rewind to 2
    ([1.0, 0.97, 0.90, 0.80, 0.70, 0.60], 0.88, (3, 2)),
    # the check just below is closer (0.87 vs 0.93): keep step 3
    ([1.0, 0.97, 0.93, 0.87, 0.70, 0.60], 0.88, (3, 3)),
    # exactly on the target: "at or below" stops there and it is the closest
    ([1.0, 0.95, 0.88, 0.70], 0.88, (2, 2)),
    # a later check that would be closer again is never seen: training stopped at the first one below
    ([1.0, 0.95, 0.85, 0.881, 0.5], 0.88, (2, 2)),
    # never reached within the budget: keep the closest (here the last)
    ([1.0, 0.99, 0.98, 0.97], 0.5, (3, 3)),
    # a non-monotone path: the closest of all checks before the stop (step 1) wins over the last one
    ([1.0, 0.89, 0.99, 0.97, 0.60], 0.88, (4, 1)),
])
def test_rule_keeps_the_closest_check_up_to_the_first_at_or_below_target(script, target, want):
    cal = Scripted(script, target)
    assert drive(cal, len(script) - 1) == want
    assert [p["step"] for p in cal.trajectory] == list(range(want[0] + 1))  # step 0 (before training) first


def test_rule_checks_every_k_steps_only():
    script = [1.0, 0.70, 0.86, 0.50, 0.40, 0.30]  # step 1 would stop the rule, but it is not a check
    cal = Scripted(script, 0.88, every=2)
    assert drive(cal, 5) == (2, 2)  # step 1 is never checked
    assert [p["step"] for p in cal.trajectory] == [0, 2]


def test_the_retain_and_test_trace_is_taken_at_every_trace_every_th_check_only(monkeypatch):
    """The trace only feeds the plot: the rule sees the same forget accuracies, the trajectory keeps every check's
    forget accuracy and the retain/test accuracy at checks 0, k, 2k, ... (here every=2, trace_every=3: steps 0,
    6, 12)."""
    monkeypatch.setattr(calibrate, "accuracy", lambda model, data: 0.5)
    script = [1.0 - 0.01 * s for s in range(16)]
    cal = Scripted(script, 0.0, every=2, trace=1, trace_every=3)
    assert drive(cal, 15) == (15, 14)
    assert [p["step"] for p in cal.trajectory] == list(range(0, 15, 2))
    assert [p["step"] for p in cal.trajectory if "retain" in p] == [0, 6, 12]
    assert all(("retain" in p) == ("test" in p) for p in cal.trajectory)


def test_spec_refuses_bad_settings():
    for kw in ({"tau": -0.1}, {"every": 0}, {"draws": 0}, {"trace": -1}, {"trace_every": 0}, {"alpha": -0.5},
               {"alpha": float("nan")}):
        with pytest.raises(ValueError, match=f"calib_{next(iter(kw))}"):
            CalibrationSpec(**kw)


# ---------------------------------------------------------------------------------------------- the target
class PixelVote(nn.Module):
    """A 'model' that predicts the class written in an image's first pixel (value k / 10 -> class k)."""

    def forward(self, x):
        return nn.functional.one_hot((x[:, 0, 0, 0] * 10).round().long(), 3).float()


def labelled(labels: list[int], votes: list[int]) -> TensorData:
    x = torch.zeros(len(labels), 1, 2, 2)
    x[:, 0, 0, 0] = torch.tensor(votes, dtype=torch.float) / 10
    return TensorData(x, torch.tensor(labels), torch.arange(len(labels)))


def target_of(alpha: float, calib: TensorData, proxy: float = 0) -> tuple[float, dict]:
    # forget: three class-0 images, one class-1; retain: 3 of class 0 (half of 6 trained), 9 of class 1 (of 10)
    forget = labelled([0, 0, 0, 1], [0, 0, 0, 1])
    retain = labelled([0] * 3 + [1] * 9 + [2] * 5, [0] * 3 + [1] * 9 + [2] * 5)
    cal = Calibrator(CalibrationSpec(tau=0.0, draws=2, trace=0, alpha=alpha, proxy=proxy), forget, calib, SEED,
                     num_classes=3, retain=retain)
    return cal.estimate_target(PixelVote()), cal.estimate


# calibration set: class 0 wrong on 2 of 10 images (err 0.2), class 1 wrong on 1 of 10 (err 0.1)
CALIB = labelled([0] * 10 + [1] * 10, [0] * 8 + [2] * 2 + [1] * 9 + [0])


def test_target_is_originals_calibration_accuracy_weighted_by_the_forget_classes_without_correction():
    target, est = target_of(0.0, CALIB)
    assert target == pytest.approx(0.75 * 0.8 + 0.25 * 0.9)
    assert est["original_calib_acc"] == pytest.approx(17 / 20) and est["kappa"] == {"0": 1.0, "1": 1.0}


def test_target_scales_each_forget_class_error_by_the_learning_curve():
    target, est = target_of(0.5, CALIB)
    k0, k1 = (6 / 3) ** 0.5, (10 / 9) ** 0.5  # (n_train / n_retain)^alpha per forget class
    assert target == pytest.approx(0.75 * (1 - k0 * 0.2) + 0.25 * (1 - k1 * 0.1))
    assert est["kappa"] == {"0": pytest.approx(k0), "1": pytest.approx(k1)}
    # a huge exponent: class 0's corrected error passes 1 and its share of the target is 0, never negative
    assert target_of(8.0, CALIB)[0] == pytest.approx(0.25 * max(0.0, 1 - (10 / 9) ** 8 * 0.1))


def test_a_forget_class_without_calibration_images_is_refused():
    """No held-out image of a forget class, no estimate of Re-train's accuracy on it (it used to borrow the pooled
    error of the other classes)."""
    only_class_0 = labelled([0] * 10, [0] * 8 + [2] * 2)
    with pytest.raises(ValueError, match=r"no image of forget class\(es\) \[1\]"):
        target_of(0.0, only_class_0)


def test_the_correction_needs_the_retain_counts():
    tiny = labelled([0], [0])
    with pytest.raises(ValueError, match="calib_alpha"):
        Calibrator(CalibrationSpec(alpha=0.5), tiny, tiny, SEED, num_classes=3)
    with pytest.raises(ValueError, match="calib_proxy"):
        Calibrator(CalibrationSpec(alpha=0, proxy=0.65), tiny, tiny, SEED, num_classes=3)


def test_the_difficulty_shift_moves_each_forget_class_target_by_proxy_times_its_shift_within_0_and_1(monkeypatch):
    monkeypatch.setattr(estimate, "difficulty_shift", lambda retain, forget, calib, cache_dir=None: {0: -0.3, 1: 0.4})
    target, est = target_of(0.0, CALIB, proxy=0.5)
    # class 0: 0.8 + 0.5·(−0.3) = 0.65; class 1: 0.9 + 0.5·0.4 = 1.1, clipped to 1
    assert target == pytest.approx(0.75 * 0.65 + 0.25 * 1.0)
    assert est["proxy"] == {"slope": 0.5, "shift": {"0": -0.3, "1": 0.4}}
    monkeypatch.setattr(estimate, "difficulty_shift", lambda retain, forget, calib, cache_dir=None: {0: -2.0, 1: 0.0})
    assert target_of(0.0, CALIB, proxy=1.0)[0] == pytest.approx(0.25 * 0.9)  # class 0 clipped to 0, never negative
    assert "proxy" not in target_of(0.0, CALIB)[1]  # off at 0: the target of the tests above


def halves(labels: list[int], bright: list[str], seed: int) -> TensorData:
    """1×4×4 images bright in their left or right half (plus a little noise): a linearly separable pair."""
    g = torch.Generator().manual_seed(seed)
    x = 0.1 + 0.02 * torch.rand(len(labels), 1, 4, 4, generator=g)
    for i, side in enumerate(bright):
        x[i, 0, :, slice(0, 2) if side == "L" else slice(2, 4)] += 0.8
    return TensorData(x, torch.tensor(labels), torch.arange(len(labels)) + 100 * seed)


def test_difficulty_shift_is_the_retain_trained_proxys_forget_minus_calibration_accuracy(monkeypatch):
    from sklearn.linear_model import LogisticRegression

    retain = halves([0] * 20 + [1] * 20, ["L"] * 20 + ["R"] * 20, 1)
    # class 0 looks like "L": two of its four forget images look like class 1 (hard), its calibration images do not
    forget = halves([0, 0, 0, 0, 1], ["L", "L", "R", "R", "R"], 2)
    calib = halves([0] * 6, ["L"] * 6, 3)
    fits = []
    real_fit = LogisticRegression.fit
    monkeypatch.setattr(LogisticRegression, "fit", lambda self, *a, **k: fits.append(1) or real_fit(self, *a, **k))
    shift = estimate.difficulty_shift(retain, forget, calib)
    assert shift == {0: pytest.approx(0.5 - 1.0), 1: 0.0}  # class 1 has no calibration images: no shift
    same = TensorData(forget.x.clone(), forget.y.clone(), forget.index.clone())
    assert estimate.difficulty_shift(retain, same, calib) == shift and len(fits) == 1  # cached by content
    easy = halves([0, 0], ["L", "L"], 4)
    assert estimate.difficulty_shift(retain, easy, calib) == {0: 0.0} and len(fits) == 2


def test_difficulty_shift_is_kept_in_the_store_and_read_back_by_a_later_process(monkeypatch, tmp_path):
    from sklearn.linear_model import LogisticRegression

    retain = halves([0] * 20 + [1] * 20, ["L"] * 20 + ["R"] * 20, 1)
    forget, calib = halves([0, 0, 0, 0, 1], ["L", "L", "R", "R", "R"], 2), halves([0] * 6, ["L"] * 6, 3)
    monkeypatch.setattr(estimate, "_SHIFTS", {})
    shift = estimate.difficulty_shift(retain, forget, calib, tmp_path)
    (path,) = tmp_path.glob("difficulty-shift-*.json")
    monkeypatch.setattr(estimate, "_SHIFTS", {})  # a new process: only the file is left

    def no_fit(self, *a, **k):
        raise AssertionError("fitted again although the store holds the shift")

    monkeypatch.setattr(LogisticRegression, "fit", no_fit)
    assert estimate.difficulty_shift(retain, forget, calib, tmp_path) == shift
    # a file that is not these sets' (its recorded content hash differs) is never read: the proxy is fitted again
    path.write_text(path.read_text().replace('"sets": "', '"sets": "x'))
    monkeypatch.setattr(estimate, "_SHIFTS", {})
    with pytest.raises(AssertionError, match="fitted again"):
        estimate.difficulty_shift(retain, forget, calib, tmp_path)


def test_the_difficulty_proxy_never_sees_the_forget_or_the_calibration_images(monkeypatch):
    """Like Re-train, the proxy learns from the retain set alone. Class 0 looks "L" in the retain set; 40 class-0
    forget images that look "R" (class 1's look) are wrong for a proxy that never saw them, so the shift is
    0 − 1 = −1; one that had trained on them would get them right. Mirrored for the calibration images (+1)."""
    monkeypatch.setattr(estimate, "_SHIFTS", {})
    retain = halves([0] * 20 + [1] * 20, ["L"] * 20 + ["R"] * 20, 1)
    easy, hard = halves([0] * 40, ["L"] * 40, 2), halves([0] * 40, ["R"] * 40, 3)
    assert estimate.difficulty_shift(retain, hard, easy) == {0: pytest.approx(-1.0)}
    assert estimate.difficulty_shift(retain, easy, hard) == {0: pytest.approx(1.0)}
    seen = []
    real = estimate.fit_proxy
    monkeypatch.setattr(estimate, "fit_proxy", lambda train: seen.append(train) or real(train))
    monkeypatch.setattr(estimate, "_SHIFTS", {})
    estimate.difficulty_shift(retain, hard, easy)
    assert len(seen) == 1 and torch.equal(seen[0].x, retain.x) and torch.equal(seen[0].y, retain.y)


def test_the_difficulty_shift_cache_is_keyed_by_all_three_sets_labels_included(monkeypatch):
    """A cached shift equals the one computed afresh whichever of the three sets changed — the calibration set,
    or the retain set's labels alone (same images)."""
    retain = halves([0] * 20 + [1] * 20, ["L"] * 20 + ["R"] * 20, 1)
    swapped = TensorData(retain.x, 1 - retain.y, retain.index)
    forget = halves([0, 0, 0, 0, 1], ["L", "L", "R", "R", "R"], 2)
    calib, hard_calib = halves([0] * 6, ["L"] * 6, 3), halves([0] * 6, ["R"] * 6, 4)
    cases = [(retain, forget, calib), (retain, forget, hard_calib), (swapped, forget, calib)]
    fresh = []
    for sets in cases:
        monkeypatch.setattr(estimate, "_SHIFTS", {})
        fresh.append(estimate.difficulty_shift(*sets))
    assert fresh[0] != fresh[1] and fresh[0] != fresh[2]  # each change moves the shift (else this shows nothing)
    monkeypatch.setattr(estimate, "_SHIFTS", {})
    assert [estimate.difficulty_shift(*sets) for sets in cases] == fresh


def test_the_calibration_count_cache_tells_models_apart_by_their_buffers_too(monkeypatch):
    """Two Originals with the same weights but other BatchNorm statistics predict differently in eval mode: the
    second never gets the first one's counts."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.BatchNorm1d(3)).eval()
    forget = labelled([0, 0, 1], [0, 0, 1])
    spec = CalibrationSpec(tau=0.0, draws=1, trace=0, alpha=0, proxy=0)

    def target(m):
        return Calibrator(spec, forget, CALIB, SEED, num_classes=3).estimate_target(m)

    other = copy.deepcopy(model)
    with torch.no_grad():
        other[2].running_mean.copy_(torch.tensor([5.0, -5.0, 0.0]))
    fresh = []
    for m in (model, other):
        monkeypatch.setattr(calibrate, "_CALIB_COUNTS", {})
        fresh.append(target(m))
    assert fresh[0] != fresh[1]
    monkeypatch.setattr(calibrate, "_CALIB_COUNTS", {})
    assert [target(model), target(other)] == fresh


def test_originals_calibration_counts_are_computed_once_per_original_and_settings(monkeypatch):
    monkeypatch.setattr(calibrate, "_CALIB_COUNTS", {})
    calls = []
    real = calibrate.original_counts
    monkeypatch.setattr(calibrate, "original_counts", lambda m, d, spec: calls.append("calib") or real(m, d, spec))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    forget, retain = labelled([0, 0, 1], [0, 0, 1]), labelled([0] * 4 + [1] * 4 + [2] * 4, [0] * 4 + [1] * 4 + [2] * 4)

    def target(m, tau=0.0):
        spec = CalibrationSpec(tau=tau, draws=2, trace=0, alpha=0.5, proxy=0)
        return Calibrator(spec, forget, CALIB, SEED, num_classes=3, retain=retain).estimate_target(m)

    first = target(model)
    assert target(model) == first and calls == ["calib"]  # a second method / trial on the same Original
    assert target(copy.deepcopy(model)) == first and calls == ["calib"]  # same weights, another object
    target(model, tau=0.1)
    assert calls == ["calib"] * 2  # other copies
    with torch.no_grad():
        model[1].bias += 1.0
    target(model)
    assert calls == ["calib"] * 3  # other weights
    monkeypatch.setattr(calibrate, "_CALIB_COUNTS", {})
    with torch.no_grad():
        model[1].bias -= 1.0
    assert target(model) == first  # the cached value is the computed one


def test_the_calibration_count_cache_serves_each_seed_and_each_set_its_own_counts(monkeypatch):
    """The cache is invisible: a target read from it equals the one computed afresh, for every seed (the seed
    draws the copies' noise) and for calibration sets of the same size but other images."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    forget = labelled([0, 0, 1], [0, 0, 1])
    other = labelled([1] * 10 + [0] * 10, [0] * 8 + [2] * 2 + [1] * 9 + [0])  # CALIB's images, other labels

    def target(seed, calib=CALIB):
        spec = CalibrationSpec(tau=0.5, draws=8, trace=0, alpha=0, proxy=0)
        return Calibrator(spec, forget, calib, seed, num_classes=3).estimate_target(model)

    fresh = {}
    for key in ((1, CALIB), (2, CALIB), (1, other)):
        monkeypatch.setattr(calibrate, "_CALIB_COUNTS", {})
        fresh[key[0], id(key[1])] = target(*key)
    assert fresh[1, id(CALIB)] != fresh[2, id(CALIB)]  # the seeds draw other copies (else this shows nothing)
    assert fresh[1, id(CALIB)] != fresh[1, id(other)]
    monkeypatch.setattr(calibrate, "_CALIB_COUNTS", {})
    for seed, calib in ((1, CALIB), (2, CALIB), (1, other), (1, CALIB)):
        assert target(seed, calib) == fresh[seed, id(calib)]


def test_adversarial_calibration_copies_are_crafted_on_the_current_model():
    """An attack's copies depend on the model (common random starts, but the step follows its gradient): every
    check crafts them on the model being unlearned, never serves the first model's; random copies are drawn once."""
    torch.manual_seed(0)
    first, second = (nn.Sequential(nn.Flatten(), nn.Linear(4, 3)) for _ in range(2))
    forget = labelled([0, 1, 2, 0, 1, 2], [0, 1, 2, 3, 4, 5])
    spec = CalibrationSpec(probe="fgsm", tau=0.3, draws=2, trace=0, alpha=0, proxy=0)
    cal = Calibrator(spec, forget, CALIB, SEED, num_classes=3)
    on_first = cal._copies("forget", forget, first)[0]
    on_second = cal._copies("forget", forget, second)[0]
    assert not torch.equal(on_first, on_second)
    alone = Calibrator(spec, forget, CALIB, SEED, num_classes=3)
    assert torch.equal(on_second, alone._copies("forget", forget, second)[0])
    assert torch.equal(cal._correct(second, "forget", forget), alone._correct(second, "forget", forget))
    noisy = Calibrator(CalibrationSpec(tau=0.3, draws=2, trace=0, alpha=0, proxy=0), forget, CALIB, SEED, num_classes=3)
    assert noisy._copies("forget", forget, first) is noisy._copies("forget", forget, second)  # drawn once


def test_the_check_before_training_never_counts_as_reaching_the_target():
    """Original already at or below the target: the check before the first step is a candidate for the rewind
    but not a stop (training has not started), so a run that never reaches the target again records none."""
    cal = Scripted([0.5, 0.9, 0.95], 0.6)
    assert drive(cal, 2) == (2, 0)  # never stopped; the closest check is the one before training
    assert cal.finish(Stepper())["reached_at"] is None


def test_a_tie_keeps_the_earlier_checkpoint():
    """Two checks equally far from the target (0.75 and 0.25 around 0.5, exact in binary): the earlier one is kept —
    fewer steps of unlearning for the same distance (decision)."""
    assert drive(Scripted([1.0, 0.75, 0.25], 0.5), 2) == (2, 1)


def test_the_recorded_calibration_accuracy_is_pooled_over_the_calibration_images():
    """Class 0: 10 images, 8 right; class 1: 5 images, all right. Pooled 13/15, not the class mean 0.9."""
    calib = labelled([0] * 10 + [1] * 5, [0] * 8 + [2] * 2 + [1] * 5)
    assert target_of(0.0, calib)[1]["original_calib_acc"] == pytest.approx(13 / 15)


# ---------------------------------------------------------------------------------------------- on a real run
def blobs(n: int, seed: int, shift: float = 0.0) -> TensorData:
    """Two Gaussian classes in a 1×4×4 image, in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = (0.5 + 0.04 * (2 * y.float() - 1).view(-1, 1, 1, 1) + 0.12 * torch.randn(n, 1, 4, 4, generator=g) + shift)
    return TensorData(x.clamp(0, 1), y, torch.arange(n) + 1000 * seed)


@pytest.fixture(scope="module")
def setting():
    retain, forget, test = blobs(200, 1), blobs(40, 2), blobs(100, 3)
    forget = forget.subset(torch.nonzero(forget.y == 0).flatten())  # forget 20 images of class 0
    calib = blobs(200, 4)
    calib = calib.subset(torch.nonzero(calib.y == 0).flatten())
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 2))
    fit(model, TensorData.concat(retain, forget), OptimConfig(lr=0.1, epochs=200, batch_size=32), seed=0, progress=False)
    data = UnlearnData(retain, forget, 2, test=test, calib=calib)
    return model, data


CAL = {"lr": 0.01, "epochs": 20, "batch_size": 16, "lambda_f": 0.1, "lambda_a": 0.1, "tau": 0.1, "calib_draws": 4}


def test_calibrated_rurk_keeps_exactly_the_model_after_the_chosen_step(setting):
    original, data = setting
    model, rec = unlearn("rurk", original, data, SEED, overrides=CAL)
    c = rec.extra["calibration"]
    assert c["reached_at"] is not None and 0 < c["chosen_step"] <= c["reached_at"] == rec.steps
    assert rec.steps < rec.extra["planned_steps"]  # the budget is an upper bound
    traj = {p["step"]: p for p in c["trajectory"]}
    assert traj[c["reached_at"]]["forget"] <= c["target"] < traj[c["reached_at"] - 1]["forget"]
    assert {"retain", "test"} <= set(traj[0])
    # the kept model is the one the same run had after chosen_step steps, bit for bit
    again, _ = unlearn("rurk", original, data, SEED, overrides={**CAL, "calibrate": False, "max_steps": c["chosen_step"]})
    for a, b in zip(model.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)
    # the target is Original's accuracy on the perturbed calibration images: high, as the classes are separable
    assert c["target"] > 0.7 and c["n_calib"] == len(data.calib)


def test_the_rule_works_for_neggrad_plus_and_scrub_too(setting):
    original, data = setting
    for name, over in (("neggrad_plus", {"lr": 0.05, "epochs": 20, "batch_size": 16, "beta": 0.5}),
                       ("scrub", {"epochs": 10, "batch_size": 16})):
        _, rec = unlearn(name, original, data, SEED, overrides={**over, "calibrate": True})
        c = rec.extra["calibration"]
        assert c["chosen_step"] in {p["step"] for p in c["trajectory"]}
        assert len(c["trajectory"]) == c["trajectory"][-1]["step"] + 1  # checked after every step


def test_calibration_is_refused_where_it_cannot_work(setting):
    original, data = setting
    no_calib = UnlearnData(data.retain, data.forget, 2, test=data.test)
    with pytest.raises(ConfigError, match="forget.calibration"):
        unlearn("rurk", original, no_calib, SEED, overrides=CAL)
    whole_class = UnlearnData(data.retain, data.forget, 2, calib=data.calib, class_unlearning=True, forget_class=0)
    with pytest.raises(ConfigError, match="sample unlearning"):
        unlearn("rurk", original, whole_class, SEED, overrides=CAL)
    with pytest.raises(ConfigError, match="no forget term"):
        unlearn("gd", original, data, SEED, overrides={"calibrate": True})


# ---------------------------------------------------------------------------------------------- the set
@pytest.fixture(scope="module")
def synth():
    return load_source("synthetic", shape=(1, 4, 4), num_classes=4, n_train=400, n_test=80, seed=1)


def assert_disjoint(split: Split, source) -> None:
    train = np.concatenate([split.forget, split.retain])
    assert not np.intersect1d(split.calib, train).size and not np.intersect1d(split.calib, split.val).size
    if split.test_from == "train":
        assert not np.intersect1d(split.calib, split.test).size
    forget_classes = set(source.train.y.numpy()[split.forget].tolist())
    assert set(source.train.y.numpy()[split.calib].tolist()) == forget_classes


def test_calibration_set_from_unused_images(synth):
    s = make_split(synth, train_per_class=40, forget_count=10, calib_count=30, seed=5)
    assert len(s.calib) == 30 and len(s.forget) == 10 and len(s.retain) == 4 * 40 - 10
    assert_disjoint(s, synth)
    assert s == make_split(synth, train_per_class=40, forget_count=10, calib_count=30, seed=5)  # seeded
    assert not np.array_equal(s.calib, make_split(synth, train_per_class=40, forget_count=10, calib_count=30,
                                                  seed=6).calib)
    # the training data is the same as without a calibration set (unused images only)
    plain = make_split(synth, train_per_class=40, forget_count=10, seed=5)
    assert np.array_equal(plain.forget, s.forget) and np.array_equal(plain.retain, s.retain)


def test_calibration_set_from_the_validation_hold_out_then_held_out_of_training(synth):
    v = make_split(synth, val_fraction=0.25, forget_count=10, calib_count=20, seed=5)
    plain_v = make_split(synth, val_fraction=0.25, forget_count=10, seed=5)
    assert set(v.calib) <= set(plain_v.val) and set(v.val) == set(plain_v.val) - set(v.calib)  # the hold-out
    assert_disjoint(v, synth)
    d = load_source("digits")
    h = make_split(d, classes=5, test_fraction=0.5, forget_fraction=0.5, calib_count=20, seed=0)
    assert len(h.calib) == 20
    assert_disjoint(h, d)
    plain = make_split(d, classes=5, test_fraction=0.5, forget_fraction=0.5, seed=0)
    assert len(h.forget) + len(h.retain) == len(plain.forget) + len(plain.retain) - 20  # a held-out part
    assert np.array_equal(h.test, plain.test)


def test_calibration_set_is_saved_and_leaves_other_digests_alone(synth, tmp_path):
    s = make_split(synth, train_per_class=40, forget_count=10, calib_count=30, seed=5)
    assert Split.load(s.save(tmp_path / "s.json")) == s
    plain = make_split(synth, train_per_class=40, forget_count=10, seed=5)
    assert "calib" not in plain.to_json() and "calib" in s.to_json()
    data = s.data(synth)
    assert torch.equal(data.calib.index, torch.as_tensor(s.calib)) and (data.calib.y == 0).all()


@pytest.mark.parametrize("kw,match", [
    ({"calib_count": -1}, "calib_count=-1"),
    ({"calib_count": 5, "forget": "class"}, "needs forget='sample'"),
    ({"calib_count": 10_000}, "calib_count=10000"),
])
def test_bad_calibration_requests_are_refused(synth, kw, match):
    with pytest.raises(ValueError, match=match):
        make_split(synth, **{"forget_count": 10, **kw} if kw.get("forget") != "class" else kw)
