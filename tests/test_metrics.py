"""Standard metrics (evaluation.md §1) and aggregation (§2): accuracies, MIA, re-learn time, Avg. Gap."""

from __future__ import annotations

from rurk.config import RelearnConfig

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

import rurk.audit.metrics as M
from rurk.data.tensordata import TensorData
from rurk.audit.metrics import Accuracies, Relearn, aggregate, avg_gap, mean_ce, mia, mia_class, mia_sample, relearn_time, standard_accuracies, true_label_probs


def td(x, y) -> TensorData:
    x = torch.as_tensor(x, dtype=torch.float32)
    if x.dim() == 1:
        x = x[:, None]
    y = torch.as_tensor(y, dtype=torch.int64)
    return TensorData(x, y, torch.arange(len(y)))


# ---------------------------------------------------------------------------------------------- models
class SignModel(nn.Module):
    """logits = [-x, x]: predicts 1 iff x > 0. A near-total dropout in front makes train-mode outputs garbage,
    so a metric that forgot eval mode would be wrong."""

    def __init__(self):
        super().__init__()
        self.drop = nn.Dropout(p=0.999)
        self.w = nn.Parameter(torch.tensor([[-1.0, 1.0]]))

    def forward(self, x):
        return self.drop(x[:, :1]) * self.w


class BiasOnly(nn.Module):
    """Two-class logits = a free bias b, independent of x. Records the mode of every forward call."""

    def __init__(self, b=(0.0, 0.0)):
        super().__init__()
        self.b = nn.Parameter(torch.tensor([list(b)], dtype=torch.float32))
        self.modes: list[bool] = []

    def forward(self, x):
        self.modes.append(self.training)
        return self.b.expand(x.shape[0], 2)


# ---------------------------------------------------------------------------------------------- accuracies
def test_standard_accuracies_hand_built_model():
    model = SignModel().train()
    retain = td([1.0, 2.0, -1.0, 3.0], [1, 1, 1, 0])  # preds 1,1,0,1 -> 2/4 correct
    forget = td([-2.0, 0.5, -0.5], [0, 1, 1])  # preds 0,1,0 -> 2/3 correct
    test = td([4.0, -4.0, -3.0, 2.0, -1.0], [1, 0, 0, 0, 0])  # preds 1,0,0,1,0 -> 4/5 correct
    acc = standard_accuracies(model, retain, forget, test)
    assert isinstance(acc, Accuracies)
    assert acc.retain_acc == pytest.approx(0.5)
    assert acc.unlearn_acc == pytest.approx(1 / 3)
    assert acc.test_acc == pytest.approx(0.8)
    assert model.training  # mode restored
    assert acc.to_json() == pytest.approx({"retain_acc": 0.5, "unlearn_acc": 1 / 3, "test_acc": 0.8})


def test_true_label_probs_and_mean_ce_by_hand():
    model = BiasOnly((0.0, math.log(3.0))).train()  # softmax = (0.25, 0.75)
    data = td([0.0, 1.0, 2.0, 3.0], [1, 0, 1, 1])
    p = true_label_probs(model, data)
    assert p.dtype == np.float64 and p.shape == (4,)
    np.testing.assert_allclose(p, [0.75, 0.25, 0.75, 0.75], rtol=1e-6)
    assert mean_ce(model, data) == pytest.approx(-(3 * math.log(0.75) + math.log(0.25)) / 4, rel=1e-6)
    assert model.training and all(m is False for m in model.modes)  # evaluated in eval mode, mode restored


# ---------------------------------------------------------------------------------------------- MIA
def _u(rng, lo, hi, n):
    return rng.uniform(lo, hi, n)


def test_mia_separable_features():
    rng = np.random.default_rng(0)
    members, nonmembers = _u(rng, 0.95, 1.0, 400), _u(rng, 0.0, 0.05, 300)
    forget_like_nonmembers = _u(rng, 0.0, 0.05, 100)
    forget_like_members = _u(rng, 0.95, 1.0, 100)
    assert mia_sample(members, nonmembers, forget_like_nonmembers, seed=1) >= 0.99
    assert mia_sample(members, nonmembers, forget_like_members, seed=1) <= 0.01
    mixed = np.concatenate([forget_like_nonmembers[:30], forget_like_members[:70]])
    assert mia_sample(members, nonmembers, mixed, seed=1) == pytest.approx(0.30, abs=0.02)


def test_mia_indistinguishable_features_is_near_half_even_when_sides_are_unbalanced():
    # 2,000 retain vs 200 test: an unbalanced SVC would call (almost) everything a member (MIA ~ 0).
    vals = []
    for s in range(20):
        rng = np.random.default_rng(100 + s)
        vals.append(mia_sample(rng.uniform(0, 1, 2000), rng.uniform(0, 1, 200), rng.uniform(0, 1, 300), seed=s))
    assert abs(np.mean(vals) - 0.5) < 0.12, vals


class SpySVC:
    """Wraps SVC.fit/predict to record the training set and the evaluated points."""

    def __init__(self, monkeypatch):
        self.fits, self.predicts = [], []
        orig_fit, orig_predict = M.SVC.fit, M.SVC.predict
        spy = self

        def fit(self_, x, y, *a, **k):
            spy.fits.append((np.array(x).ravel(), np.array(y)))
            spy.params = self_.get_params()
            return orig_fit(self_, x, y, *a, **k)

        def predict(self_, x):
            spy.predicts.append(np.array(x).ravel())
            return orig_predict(self_, x)

        monkeypatch.setattr(M.SVC, "fit", fit)
        monkeypatch.setattr(M.SVC, "predict", predict)


def test_mia_trains_on_equal_seeded_counts(monkeypatch):
    spy = SpySVC(monkeypatch)
    rng = np.random.default_rng(3)
    p_r, p_t, p_f = rng.uniform(0.5, 1, 500), rng.uniform(0, 0.5, 200), rng.uniform(0, 1, 50)
    mia_sample(p_r, p_t, p_f, seed=7)
    x, y = spy.fits[-1]
    assert spy.params["C"] == 3 and spy.params["gamma"] == "auto" and spy.params["kernel"] == "rbf"
    assert (y == 1).sum() == (y == 0).sum() == 200  # n = min(|S_r|, |test|)
    assert set(x[y == 1]) <= set(p_r) and set(x[y == 0]) == set(p_t)  # retain = member, test = non-member
    assert len(set(x[y == 1])) == 200  # without replacement
    np.testing.assert_array_equal(spy.predicts[-1], p_f)
    # seeded: the same seed picks the same retain samples, another seed others
    mia_sample(p_r, p_t, p_f, seed=7)
    assert set(spy.fits[-1][0]) == set(x)
    mia_sample(p_r, p_t, p_f, seed=8)
    assert set(spy.fits[-1][0][spy.fits[-1][1] == 1]) != set(x[y == 1])
    # cap per side
    mia_sample(p_r, p_t, p_f, seed=7, max_per_side=50)
    x2, y2 = spy.fits[-1]
    assert (y2 == 1).sum() == (y2 == 0).sum() == 50


def test_mia_class_splits_forget_and_scores_held_out_half(monkeypatch):
    spy = SpySVC(monkeypatch)
    rng = np.random.default_rng(4)
    p_r, p_f = rng.uniform(0.95, 1.0, 300), rng.uniform(0.0, 0.05, 101)
    assert mia_class(p_r, p_f, seed=0) == 1.0
    x, y = spy.fits[-1]
    a, b = set(x[y == 0]), set(spy.predicts[-1])
    assert len(a) == 50 and len(b) == 51 and not (a & b) and a | b == set(p_f)  # 50/50, disjoint, exhaustive
    assert (y == 1).sum() == 50  # balanced against half A
    # a forget class that is 60% "unlearned" (low p_y) and 40% member-like: the member-like part of half A is
    # outnumbered by retain, so exactly the low-p_y part of half B is called non-member
    mixed = np.concatenate([rng.uniform(0.0, 0.05, 60), rng.uniform(0.95, 1.0, 40)])
    score = mia_class(p_r, mixed, seed=0)
    held_out = spy.predicts[-1]
    assert len(held_out) == 50 and score == pytest.approx(np.mean(held_out < 0.5))
    mia_class(p_r, p_f, seed=1)
    assert set(spy.predicts[-1]) != b  # the split depends on the seed


def test_mia_convenience_matches_cached_features():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 3))
    g = torch.Generator().manual_seed(0)
    mk = lambda n: td(torch.randn(n, 2, generator=g), torch.randint(0, 3, (n,), generator=g))  # noqa: E731
    retain, forget, test = mk(120), mk(40), mk(80)
    p = {k: true_label_probs(model, d) for k, d in dict(r=retain, f=forget, t=test).items()}
    assert mia(model, retain, forget, test, seed=5) == mia_sample(p["r"], p["t"], p["f"], 5)
    assert mia(model, retain, forget, None, seed=5, class_unlearning=True) == mia_class(p["r"], p["f"], 5)


def test_standard_metrics_equals_the_separate_metrics_with_one_pass_per_set():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 3))
    calls = []
    model.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    g = torch.Generator().manual_seed(1)
    mk = lambda n: td(torch.randn(n, 2, generator=g), torch.randint(0, 3, (n,), generator=g))  # noqa: E731
    retain, forget, test = mk(300), mk(40), mk(90)  # retain over one batch of 256: batching is shared too
    for cu in (False, True):
        calls.clear()
        acc, m = M.standard_metrics(model, retain, forget, test, seed=3, class_unlearning=cu)
        assert sum(calls) == 300 + 40 + 90  # each sample through the model once
        assert acc == standard_accuracies(model, retain, forget, test)  # exactly, not approximately
        assert m == mia(model, retain, forget, test, seed=3, class_unlearning=cu)


# ---------------------------------------------------------------------------------------------- re-learn
def _simulate_losses(b0, lr, momentum, steps):
    """Independent plain-Python SGD-with-momentum on the 2-logit bias, all labels 0: L(b) = log(1 + e^(b1-b0)).
    Returns the loss after 0, 1, ..., steps steps (PyTorch convention: v = mu v + g, b -= lr v)."""
    b, v = list(b0), [0.0, 0.0]
    out = []
    for t in range(steps + 1):
        d = b[1] - b[0]
        out.append(math.log1p(math.exp(d)))
        s = 1.0 / (1.0 + math.exp(-d))  # softmax prob of class 1
        g = [-s, s]  # dL/db0 = p0 - 1 = -s ; dL/db1 = s
        v = [momentum * vi + gi for vi, gi in zip(v, g)] if t else g
        b = [bi - lr * vi for bi, vi in zip(b, v)]
    return out


@pytest.mark.parametrize("k", [5, 6, 1])  # 6 = exactly two epochs (an epoch boundary), 1 = the first step
def test_relearn_counts_fractional_epochs(k):
    forget = td(torch.zeros(10), torch.zeros(10, dtype=torch.long))  # 10 samples, batch 4 -> 3 steps/epoch
    b0 = (0.0, 2.0)
    losses = _simulate_losses(b0, lr=0.5, momentum=0.9, steps=k)
    assert all(x > y for x, y in zip(losses, losses[1:]))
    threshold = (losses[k - 1] + losses[k]) / 2  # met first after exactly k steps
    model = BiasOnly(b0)
    before = copy.deepcopy(model.state_dict())
    r = relearn_time(model, forget, threshold / 1.05, seed=0, cfg=RelearnConfig(lr=0.5, batch_size=4))
    assert isinstance(r, Relearn)
    assert not r.censored and r.steps == k and r.steps_per_epoch == 3
    assert r.epochs == pytest.approx(k / 3)
    assert r.threshold == pytest.approx(threshold)
    assert r.initial_loss == pytest.approx(losses[0], rel=1e-5)
    torch.testing.assert_close(model.state_dict(), before)  # the input model is untouched
    assert model.modes == [] and model.training  # never even evaluated: the copy was


def test_relearn_zero_when_already_below_threshold():
    forget = td(torch.zeros(10), torch.zeros(10, dtype=torch.long))
    model = BiasOnly((3.0, 0.0)).eval()
    loss = mean_ce(model, forget)
    r = relearn_time(model, forget, loss, seed=0)  # L = L(Original) <= 1.05 L(Original)
    assert (r.epochs, r.censored, r.steps) == (0.0, False, 0)
    assert not model.training


def test_relearn_trains_in_train_mode_and_checks_in_eval_mode(monkeypatch):
    forget = td(torch.zeros(10), torch.zeros(10, dtype=torch.long))
    seen = []
    orig_deepcopy = copy.deepcopy

    def spy_deepcopy(obj, *a):
        out = orig_deepcopy(obj, *a)
        if isinstance(obj, BiasOnly):
            seen.append(out)
        return out

    monkeypatch.setattr(M.copy, "deepcopy", spy_deepcopy)
    r = relearn_time(BiasOnly((0.0, 2.0)).eval(), forget, 0.3, seed=0, cfg=RelearnConfig(lr=0.5, batch_size=4))
    assert not r.censored and r.steps >= 2
    modes = seen[0].modes
    # 1 eval check before any step, then per step: a train-mode forward followed by an eval-mode check
    assert modes[0] is False and modes[1:1 + 2 * r.steps] == [True, False] * r.steps


def test_relearn_censored_at_cap():
    forget = td(torch.zeros(10), torch.zeros(10, dtype=torch.long))
    model = BiasOnly((0.0, 2.0))
    r = relearn_time(model, forget, 0.01, seed=0, cfg=RelearnConfig(lr=0.0, batch_size=4))  # lr 0: the threshold is unreachable
    assert r.censored and r.epochs is None
    assert r.steps == 30 * 3 and r.max_epochs == 30  # ran exactly the 30-epoch cap
    assert r.final_loss == pytest.approx(r.initial_loss)
    j = r.to_json()
    assert j["epochs"] is None and j["censored"] is True
    r2 = relearn_time(model, forget, 0.01, seed=0, cfg=RelearnConfig(lr=0.0, batch_size=4, max_epochs=2))
    assert r2.censored and r2.steps == 6


def test_relearn_on_a_real_mlp_is_deterministic_and_reaches_original_level():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 5, generator=g)
    forget = td(x, torch.randint(0, 3, (40,), generator=g))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 32), nn.ReLU(), nn.Linear(32, 3))
    orig_loss = mean_ce(model, forget) / 3  # "Original" fits S_f three times better
    a = relearn_time(model, forget, orig_loss, seed=1, cfg=RelearnConfig(lr=0.05, batch_size=16))
    b = relearn_time(model, forget, orig_loss, seed=1, cfg=RelearnConfig(lr=0.05, batch_size=16))
    assert a == b and not a.censored and 0 < a.epochs <= 30
    assert a.steps_per_epoch == 3 and a.epochs == pytest.approx(a.steps / 3)


# ---------------------------------------------------------------------------------------------- aggregation
def test_avg_gap_hand_table():
    ref = {"retain_acc": 0.98, "unlearn_acc": 0.15, "test_acc": 0.91, "mia": 0.30, "relearn": 4.0}
    m = {"retain_acc": 1.00, "unlearn_acc": 0.10, "test_acc": 0.90, "mia": 0.20, "relearn": 1.0}
    assert avg_gap(m, ref) == pytest.approx((2 + 5 + 1 + 10) / 4)  # 4.5 points; relearn is not in the gap
    assert avg_gap(ref, ref) == 0.0
    assert avg_gap(m, ref, keys=("mia",)) == pytest.approx(10.0)
    # paper, Table C.3 (CIFAR-10 class unlearning): GD vs Re-train -> 42.78
    retrain = {"retain_acc": 1.0, "unlearn_acc": 1.0, "test_acc": 0.9389, "mia": 1.0}
    gd = {"retain_acc": 0.9998, "unlearn_acc": 0.0009, "test_acc": 0.9433, "mia": 0.2927}
    assert avg_gap(gd, retrain) == pytest.approx(42.78, abs=0.01)
    with pytest.raises(KeyError):
        avg_gap({"retain_acc": 1.0}, ref)


def test_aggregate_ddof0_and_censoring():
    a = aggregate([3, 3, 4])
    assert (round(a["mean"], 2), round(a["std"], 2), a["n"], a["censored"]) == (3.33, 0.47, 3, 0)
    b = aggregate([3.0, None, 4.0])
    assert b == {"mean": 3.5, "std": 0.5, "n": 3, "censored": 1}
    assert aggregate([None, None]) == {"mean": None, "std": None, "n": 2, "censored": 2}
    assert aggregate([0.25]) == {"mean": 0.25, "std": 0.0, "n": 1, "censored": 0}
