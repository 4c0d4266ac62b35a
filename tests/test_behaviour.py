"""Behaviour tests written from a mutation-testing pass (mutmut 3, ``[tool.mutmut]`` in pyproject.toml).

Each test pins a behaviour a user relies on with an independent computation: hand-computed gradient steps of
softmax regression (NegGrad+'s (1−β)/β weights, RURK's 1/λ_f/λ_a weights and signs), properties of the
forget stream's shuffling (its own seed, not the retain stream's), hand-made report tables whose signed gaps
would give another Avg. Gap, and the claims check at its exact boundaries. Tiny models, one thread, < 30 s.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from torch import nn

from rurk.report.claims import ACC_TOL, FAILS, HOLDS, INCONCLUSIVE, ONE_SEED, R_TOL, check_claims, interval
from rurk.config import ConfigError, RelearnConfig
from rurk.data.tensordata import TensorData
from rurk.run.experiment import SeedResult
from rurk.methods import UnlearnData, unlearn
from rurk.methods._forget import PerturbedBatch, Weights, _Tracker, forget_passes, objective, step_cap_reading, train_with_forget
from rurk.methods.base import MethodRecord
from rurk.methods.neggrad_plus import NegGradPlusConfig
from rurk.methods.rurk import RURKConfig, make_perturb
from rurk.audit.metrics import mean_ce, mia, mia_class, mia_sample, relearn_time, true_label_probs
from rurk.report.write import _band
from rurk.report.tables import curve_table, key_taus, main_table, numeric_table
from rurk.report.summary import summarise
from rurk.torchutil import derive_seed
from rurk.train import BatchStream
from test_claims import row, summary, verdicts
from test_methods_gradient import Recorder, bn_net, ided_data, ids_of
from test_metrics import BiasOnly, SpySVC, td

SEED = 131


# ---------------------------------------------------------------------------------------------- closed forms
class Softmax(nn.Module):
    """Softmax regression on flattened 2×2 images (logits = W·x + b), recording every input it sees."""

    def __init__(self, classes: int = 3, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.lin = nn.Linear(4, classes)
        self.seen: list[torch.Tensor] = []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return self.lin(x.flatten(1))


def ce_grad(model: Softmax, x: torch.Tensor, y: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Gradient of the batch-mean cross-entropy of softmax regression, by hand, in float64:
    dL/dW = (p − onehot(y))ᵀ·x / n, dL/db = mean(p − onehot(y))."""
    W = model.lin.weight.detach().double().numpy()
    b = model.lin.bias.detach().double().numpy()
    x = x.flatten(1).double().numpy()
    y = y.numpy()
    z = x @ W.T + b
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p[np.arange(len(y)), y] -= 1.0
    return p.T @ x / len(y), p.mean(0)


def tiny_data(n_r=10, n_f=6, seed=0) -> UnlearnData:
    g = torch.Generator().manual_seed(seed)
    part = lambda n, off: TensorData(torch.rand(n, 1, 2, 2, generator=g), torch.randint(0, 3, (n,), generator=g),
                                     off + torch.arange(n))  # noqa: E731
    return UnlearnData(part(n_r, 0), part(n_f, 100), num_classes=3)


#: one plain full-batch SGD step: no momentum, weight decay, clipping or schedule to hide a wrong weight
ONE_STEP = {"lr": 0.5, "momentum": 0.0, "weight_decay": 0.0, "clip_grad_norm": None, "schedule": "constant",
            "epochs": 1, "batch_size": 64}


def params_after(model: Softmax) -> tuple[np.ndarray, np.ndarray]:
    return model.lin.weight.detach().double().numpy(), model.lin.bias.detach().double().numpy()


@pytest.mark.parametrize("beta", [0.25, 0.7])
def test_neggrad_plus_one_step_is_the_hand_computed_weighted_step(beta):
    """θ₁ = θ₀ − lr·[(1 − β)·∇CE_r − β·∇CE_f] (Kurmanji et al.): the retain weight is 1 − β, the forget weight β."""
    d, original = tiny_data(), Softmax()
    model, rec = unlearn("neggrad_plus", original, d, SEED, preset="paper", overrides={**ONE_STEP, "beta": beta})
    assert rec.steps == 1
    gw_r, gb_r = ce_grad(original, d.retain.x, d.retain.y)
    gw_f, gb_f = ce_grad(original, d.forget.x, d.forget.y)
    w0, b0 = params_after(original)
    w1, b1 = params_after(model)
    lr = ONE_STEP["lr"]
    np.testing.assert_allclose(w1, w0 - lr * ((1 - beta) * gw_r - beta * gw_f), atol=2e-6)
    np.testing.assert_allclose(b1, b0 - lr * ((1 - beta) * gb_r - beta * gb_f), atol=2e-6)


def test_neggrad_plus_beta_range_is_closed():
    for beta in (0.0, 1.0):
        assert NegGradPlusConfig(beta=beta).beta == beta
    for beta in (-1e-9, 1 + 1e-9, float("nan")):
        with pytest.raises(ValueError, match="beta"):
            NegGradPlusConfig(beta=beta)


def _forget_labels_in_seen_order(d: UnlearnData, x_seen: torch.Tensor) -> torch.Tensor:
    """Labels of a (shuffled) forget batch, found by matching its rows to the forget set."""
    rows = torch.cdist(x_seen.flatten(1), d.forget.x.flatten(1)).argmin(1)
    assert torch.equal(x_seen.flatten(1), d.forget.x.flatten(1)[rows])
    return d.forget.y[rows]


@pytest.mark.parametrize("lambda_f,lambda_a", [(0.3, 0.0), (0.0, 0.4), (0.2, 0.5)])
def test_rurk_one_step_is_the_hand_computed_step(lambda_f, lambda_a):
    """Random probe: θ₁ = θ₀ − lr·[∇CE_r − λ_f·∇CE_f − λ_a·∇CE(X′, y_f)], with X′ the perturbed copies the model
    was actually shown (τ > 0, two copies, so CE(X′) differs from CE_f and λ_f, λ_a cannot be swapped)."""
    d, original = tiny_data(), Softmax()
    over = {**ONE_STEP, "lambda_f": lambda_f, "lambda_a": lambda_a, "tau": 0.2, "copies": 2, "probe": "gaussian"}
    model, rec = unlearn("rurk", original, d, SEED, preset="paper", overrides=over)
    assert rec.steps == 1 and len(model.seen) == 3  # retain, forget and perturbed passes
    x_f, x_adv = model.seen[1], model.seen[2]
    assert x_adv.shape[0] == 2 * len(d.forget) and not torch.equal(x_adv[: len(d.forget)], x_f)
    y_f = _forget_labels_in_seen_order(d, x_f)
    g_r = ce_grad(original, d.retain.x, d.retain.y)
    g_f = ce_grad(original, d.forget.x, d.forget.y)
    g_a = ce_grad(original, x_adv, y_f.repeat(2))
    lr = ONE_STEP["lr"]
    for got, p0, i in zip(params_after(model), params_after(original), (0, 1)):
        want = p0 - lr * (g_r[i] - lambda_f * g_f[i] - lambda_a * g_a[i])
        np.testing.assert_allclose(got, want, atol=2e-6)
    # the logged final loss is the same objective; the last lr is logged; the ascending L_adv is watched
    fin = rec.extra["final"]
    assert fin["L"] == pytest.approx(fin["L_r"] - lambda_f * fin["L_f"] - lambda_a * fin["L_adv"], abs=1e-6)
    assert fin["lr"] == lr and "L_adv_first" in rec.extra and "L_f_first" in rec.extra
    # the recorded probe seed reproduces the noise: X′ = clip(x_f + τ·N(0, 1) from a generator with that seed)
    z = torch.randn(x_adv.shape, generator=torch.Generator().manual_seed(rec.extra["probe_seed"]))
    torch.testing.assert_close(x_adv, (x_f.repeat(2, 1, 1, 1) + 0.2 * z).clamp(0, 1))


def test_rurk_targeted_probe_trains_towards_the_drawn_targets():
    """Targeted probe (fgsm): the perturbed term is +λ_a·CE(X′, y′), descending towards y′ ≠ y."""
    d, original = tiny_data(n_f=8), Softmax()
    over = {**ONE_STEP, "lambda_f": 0.0, "lambda_a": 0.6, "tau": 0.1, "copies": 1, "probe": "fgsm"}
    model, rec = unlearn("rurk", original, d, SEED, preset="paper", overrides=over)
    x_adv = model.seen[-1]
    fin = rec.extra["final"]
    assert fin["L"] == pytest.approx(fin["L_r"] + 0.6 * fin["L_adv"], abs=1e-6)
    # which y′ were drawn is not observable, but the step must be θ₀ − lr·(∇CE_r + 0.6·∇CE(X′, y′)) for the one
    # labelling y′ ≠ y_f that fits: solve the bias row for it
    g_r = ce_grad(original, d.retain.x, d.retain.y)
    w0, b0 = params_after(original)
    w1, b1 = params_after(model)
    g_adv_b = ((b0 - b1) / ONE_STEP["lr"] - g_r[1]) / 0.6  # = mean(p − onehot(y′)) over X′
    z = x_adv.flatten(1).double().numpy() @ w0.T + b0
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    counts = (p.mean(0) - g_adv_b) * len(x_adv)  # how many copies have each target class
    assert np.allclose(counts, np.round(counts), atol=1e-3) and round(counts.sum()) == len(x_adv)
    assert "L_adv_first" not in rec.extra  # a targeted (descending) term is not watched for divergence


def test_rurk_probe_params_reach_the_probe():
    model, x, y = Softmax(), torch.rand(8, 1, 2, 2), torch.randint(0, 3, (8,))
    outs = []
    for steps in (0, 3):
        cfg = RURKConfig(probe="pgd", tau=0.2, probe_params={"steps": steps, "alpha": 0.1})
        outs.append(make_perturb(cfg, SEED, "cpu", 3)(model, x, y).x)
    assert not torch.equal(*outs)  # 0 steps = the random start alone; 3 steps move further
    with pytest.raises(ValueError, match="alpha"):
        make_perturb(RURKConfig(probe="pgd", probe_params={"alpha": -1.0}), SEED, "cpu", 3)


def test_zero_epochs_or_lr_are_refused_naming_the_value():
    """0 epochs or lr 0 leave the model as Original: a row identical to Original's, once reported without a word."""
    d, original = tiny_data(), Softmax()
    for name in ("rurk", "neggrad_plus"):
        for overrides, match in (({"epochs": 0}, "epochs = 0: expected an integer >= 1"),
                                 ({"lr": 0.0}, "lr = 0.0: expected a finite number > 0")):
            with pytest.raises(ConfigError, match=match):
                unlearn(name, original, d, SEED, preset="paper", overrides=overrides)


def test_by_default_the_forget_pass_updates_batchnorm_statistics():
    """Literal Algorithm 1 unless told otherwise: the forget (and perturbed) passes move the running statistics."""
    d = ided_data(64, 32)
    (xr, yr), (xf, yf) = (d.retain.x, d.retain.y), (d.forget.x, d.forget.y)
    retain_only = bn_net().train()
    retain_only(xr)
    model = bn_net().train()
    objective(model, (xr, yr), (xf, yf), PerturbedBatch(xf, yf, -1.0), Weights(1.0, 0.1, 0.1))
    assert not torch.equal(model[1].running_mean, retain_only[1].running_mean)
    cfg = RURKConfig(epochs=1, batch_size=64, lambda_f=0.0, lambda_a=0.0, calibrate=False)
    object.__setattr__(cfg, "lr", 0.0)  # refused for users (it leaves the model as Original); here it isolates BN
    runs = {}
    for key, kw in (("default", {}), ("frozen", {"bn_update_on_forget": False})):
        m = bn_net()
        train_with_forget(m, d, cfg, MethodRecord("x", {}, 0), weights=Weights(1.0, 0.0, 0.0), **kw)
        runs[key] = m[1].running_mean.clone()
    assert not torch.equal(runs["default"], runs["frozen"])  # lr 0: only the statistics differ


def test_rurk_config_boundaries():
    assert RURKConfig(copies=1, tau=0.0).tau == 0.0
    for bad in ({"copies": 0}, {"tau": -1e-9}, {"tau": float("nan")}, {"probe": "nope"}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            RURKConfig(**bad)


# ---------------------------------------------------------------------------------------------- forget stream
def _batches(name: str, d: UnlearnData, **over):
    """(retain batches, forget batches) as id lists, from the inputs the model saw."""
    overrides = {"batch_size": 32, "epochs": 1, "tau": 0.0} if name == "rurk" else {"batch_size": 32, "epochs": 1}
    model, rec = unlearn(name, Recorder(), d, SEED, preset="paper", overrides={**overrides, **over})
    per_step = 3 if name == "rurk" else 2
    seen = [ids_of(x) for x in model.seen]
    return seen[0::per_step], seen[1::per_step], rec


@pytest.mark.parametrize("name", ["rurk", "neggrad_plus"])
def test_forget_stream_does_not_depend_on_the_retain_stream(name):
    """Same forget set and loader seed, a different retain set (so the retain generator draws other numbers):
    the forget batches are the same."""
    d1, d2 = ided_data(300, 50), ided_data(200, 50)
    assert torch.equal(d1.forget.x, d2.forget.x)
    r1, f1, _ = _batches(name, d1, max_steps=6)
    r2, f2, _ = _batches(name, d2, max_steps=6)
    assert r1 != r2 and f1 == f2


@pytest.mark.parametrize("name", ["rurk", "neggrad_plus"])
def test_forget_stream_follows_the_loader_seed_and_is_not_the_retain_order(name):
    d = ided_data(64, 64)  # retain ids 0..63, forget ids 500..563: same size, so a shared seed gives the same order
    r7, f7, rec = _batches(name, d)
    _, f7_again, _ = _batches(name, d)
    _, f8, _ = _batches(name, dataclasses.replace(d, loader_seed=8))
    assert f7 == f7_again and f8 != f7
    assert [[i - 500 for i in b] for b in f7] != r7  # not the retain stream's permutation
    # the record names the forget stream's seed (the documented derive_seed(loader_seed, "forget")), and a lone
    # stream with that seed reproduces the batches
    assert rec.extra["forget_loader_seed"] == derive_seed(d.loader_seed, "forget") != d.loader_seed
    lone = BatchStream(d.forget, 32, rec.extra["forget_loader_seed"])
    assert [ids_of(lone.next()[0]) for _ in f7] == f7


def test_forget_passes_and_step_cap_reading():
    assert forget_passes(10, 1) == 10.0 and forget_passes(10, 4) == 2.5
    d = ided_data(300, 20)  # 10 retain steps of 32; the 20 forget samples are one batch
    _, _, rec = _batches("neggrad_plus", d)
    assert rec.steps == 10 and rec.extra["forget_passes"] == 10.0
    both = step_cap_reading(RURKConfig(max_steps=7, cosine_t_max=5))
    assert "7 iterations" in both and "cosine period of 5" in both and "reading 2" in both


def test_divergence_warning_threshold_is_ten_times_the_first_value():
    def run(values, watch=("L_f",)):
        t, rec = _Tracker(watch), MethodRecord("x", {}, 0)
        for v in values:
            t.update({"L_f": torch.tensor(v), "L_adv": torch.tensor(v)})
        t.finish(rec)
        return rec

    assert run([1.0, 10.0, 3.0]).warnings == []  # exactly 10×: no warning
    rec = run([1.0, 10.5, 3.0])
    assert len(rec.warnings) == 1 and rec.warnings[0].startswith("L_f rose")
    assert (rec.extra["L_f_first"], rec.extra["L_f_peak"]) == (1.0, 10.5) and rec.extra["final"]["L_f"] == 3.0
    assert len(run([1.0, float("inf")]).warnings) == 1 and len(run([1.0, float("nan")]).warnings) == 1
    assert len(run([1.0, 20.0], watch=("L_f", "L_adv")).warnings) == 2


# ---------------------------------------------------------------------------------------------- re-learn time
def sgd_losses(b0, lr, momentum, weight_decay, steps, labels):
    """Plain-Python full-batch SGD (PyTorch's momentum and weight-decay convention) on a 2-logit bias model;
    returns the mean CE after 0..steps steps."""
    b, v, out = list(b0), None, []
    n1 = sum(labels)
    for _ in range(steps + 1):
        lse = max(b) + math.log(sum(math.exp(bi - max(b)) for bi in b))
        p = [math.exp(bi - lse) for bi in b]
        out.append(lse - (b[1] * n1 + b[0] * (len(labels) - n1)) / len(labels))
        frac = [(len(labels) - n1) / len(labels), n1 / len(labels)]
        g = [p[i] - frac[i] + weight_decay * b[i] for i in range(2)]
        v = g if v is None else [momentum * vi + gi for vi, gi in zip(v, g)]
        b = [bi - lr * vi for bi, vi in zip(b, v)]
    return out


def _first_below(losses, threshold):
    return next(k for k, v in enumerate(losses) if v <= threshold)


def test_relearn_uses_the_configured_momentum_and_weight_decay():
    forget = td(torch.zeros(12), torch.tensor([1] * 9 + [0] * 3))
    b0, lr, mom, wd = (2.0, -1.0), 0.3, 0.0, 0.5
    cfg = RelearnConfig(lr=lr, momentum=mom, weight_decay=wd, batch_size=12, max_epochs=40)
    losses = sgd_losses(b0, lr, mom, wd, 40, forget.y.tolist())
    threshold = 0.5 * (losses[4] + losses[5])  # met first after 5 steps (full batch: one step per epoch)
    assert _first_below(losses, threshold) == 5
    # the defaults (momentum 0.9, no weight decay) would give another count: the test can tell them apart
    assert _first_below(sgd_losses(b0, lr, 0.9, wd, 40, forget.y.tolist()), threshold) != 5
    assert _first_below(sgd_losses(b0, lr, mom, 0.0, 40, forget.y.tolist()), threshold) != 5
    r = relearn_time(BiasOnly(b0), forget, threshold, seed=0, cfg=dataclasses.replace(cfg, eta=0.0))
    assert (r.steps, r.epochs, r.censored, r.diverged, r.max_epochs) == (5, 5.0, False, False, 40)
    assert r.final_loss == pytest.approx(losses[5], rel=1e-5) and r.final_loss <= r.threshold == threshold


def test_relearn_of_a_model_already_at_the_original_level_is_zero():
    """η = 0 and L(model) = L(Original): the threshold is met before any step (L ≤ L*, not L < L*)."""
    forget = td(torch.zeros(10), torch.tensor([0, 1] * 5))
    model = BiasOnly((0.3, -0.2))
    loss = mean_ce(model, forget)
    r = relearn_time(model, forget, loss, seed=0, cfg=RelearnConfig(eta=0.0, lr=0.5, batch_size=4))
    assert (r.epochs, r.steps, r.censored, r.diverged) == (0.0, 0, False, False)
    assert r.final_loss == r.initial_loss == pytest.approx(loss) and r.max_epochs == 30


def test_relearn_with_no_epochs_allowed_is_censored_without_training():
    forget = td(torch.zeros(10), torch.zeros(10, dtype=torch.long))
    r = relearn_time(BiasOnly((0.0, 2.0)), forget, 0.01, seed=0, cfg=RelearnConfig(max_epochs=0, batch_size=4))
    assert (r.epochs, r.censored, r.steps, r.steps_per_epoch, r.diverged) == (None, True, 0, 3, False)
    assert r.threshold == pytest.approx(0.0105) and r.final_loss == r.initial_loss


def test_relearn_within_a_one_epoch_cap():
    forget = td(torch.zeros(10), torch.zeros(10, dtype=torch.long))  # batch 4: 3 steps per epoch
    losses = sgd_losses((0.0, 2.0), 0.5, 0.0, 0.0, 3, [0] * 10)
    thr = 0.5 * (losses[1] + losses[2])
    r = relearn_time(BiasOnly((0.0, 2.0)), forget, thr, seed=0,
                     cfg=RelearnConfig(lr=0.5, momentum=0.0, batch_size=4, max_epochs=1, eta=0.0))
    assert (r.steps, r.censored) == (2, False) and r.epochs == pytest.approx(2 / 3)
    r = relearn_time(BiasOnly((0.0, 2.0)), forget, 1e-6, seed=0, cfg=RelearnConfig(lr=0.0, batch_size=4))
    assert r.censored and r.diverged is False and r.steps == 90


def test_relearn_divergence_is_censored_and_flagged():
    forget = td(torch.zeros(10), torch.tensor([0, 1] * 5))
    r = relearn_time(BiasOnly((0.0, 2.0)), forget, 1e-6, seed=0, cfg=RelearnConfig(lr=3e38, batch_size=4))
    assert r.censored and r.epochs is None and r.diverged is True


def test_relearn_argument_checks():
    forget = td(torch.zeros(4), torch.zeros(4, dtype=torch.long))
    for bad in (-0.1, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="original_forget_loss"):
            relearn_time(BiasOnly(), forget, bad, seed=0)
    r = relearn_time(BiasOnly((0.0, 2.0)), forget, 0.0, seed=0, cfg=RelearnConfig(lr=0.0, max_epochs=1))
    assert r.censored and r.threshold == 0.0  # L(Original) = 0 is allowed (and unreachable)


def test_relearn_default_loader_seed_is_the_methods_loader_seed():
    forget = td(torch.zeros(40), torch.tensor([0, 1, 1, 0, 1] * 8))
    cfg = RelearnConfig(lr=0.05, batch_size=8)
    loss = mean_ce(BiasOnly((1.0, -1.0)), forget) * 0.2
    default = relearn_time(BiasOnly((1.0, -1.0)), forget, loss, seed=0, cfg=cfg)
    same = relearn_time(BiasOnly((1.0, -1.0)), forget, loss, seed=0, cfg=cfg,
                        loader_seed=UnlearnData(forget, forget, 2).loader_seed)
    other = relearn_time(BiasOnly((1.0, -1.0)), forget, loss, seed=0, cfg=cfg, loader_seed=123)
    assert default == same and default.final_loss != other.final_loss


# ---------------------------------------------------------------------------------------------- MIA
def test_one_sample_sets_are_scored_and_empty_sets_are_empty():
    model = BiasOnly((0.0, math.log(3.0)))  # softmax (0.25, 0.75)
    one_ = td([0.0], [1])
    np.testing.assert_allclose(true_label_probs(model, one_), [0.75], rtol=1e-6)
    assert mean_ce(model, one_) == pytest.approx(-math.log(0.75), rel=1e-6)
    empty = td(torch.zeros(0), torch.zeros(0, dtype=torch.long))
    p = true_label_probs(model, empty)
    assert p.shape == (0,) and p.dtype == np.float64 and math.isnan(mean_ce(model, empty))
    assert mia_sample([0.9], [0.1], [0.2], seed=0) in (0.0, 1.0)  # one sample per side, one forget sample
    assert mia_sample([0.9, 0.95], [0.1, 0.05], [0.2, 0.92], seed=0, max_per_side=1) == 0.5
    r = relearn_time(model, one_, 0.01, seed=0, cfg=RelearnConfig(lr=0.0, max_epochs=1))
    assert r.censored and r.steps_per_epoch == 1


def test_mia_passes_the_cap_on(monkeypatch):
    spy = SpySVC(monkeypatch)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 3))
    g = torch.Generator().manual_seed(0)
    mk = lambda n: td(torch.randn(n, 2, generator=g), torch.randint(0, 3, (n,), generator=g))  # noqa: E731
    retain, forget, test = mk(60), mk(20), mk(40)
    for cls in (False, True):
        with pytest.raises(ValueError, match="max_per_side"):
            mia(model, retain, forget, test, seed=1, class_unlearning=cls, max_per_side=0)
        mia(model, retain, forget, test, seed=1, class_unlearning=cls, max_per_side=4)
        assert (spy.fits[-1][1] == 1).sum() == 4


def test_mia_sample_draws_each_side_from_its_own_seeded_stream(monkeypatch):
    spy = SpySVC(monkeypatch)
    rng = np.random.default_rng(2)
    p_r, p_t, p_f = rng.uniform(0.5, 1, 40), rng.uniform(0, 0.5, 200), rng.uniform(0, 1, 10)
    mia_sample(p_r, p_t, p_f, seed=5)
    mia_sample(p_r, p_t, p_f, seed=5)
    (x1, y1), (x2, y2) = spy.fits[-2:]
    np.testing.assert_array_equal(x1, x2)  # both sides, test side included (40 of 200 drawn), are seeded
    assert len(set(x1[y1 == 0])) == 40


def test_mia_class_size_boundaries(monkeypatch):
    spy = SpySVC(monkeypatch)
    assert 0.0 <= mia_class(np.array([0.9]), np.array([0.1, 0.2]), seed=0) <= 1.0  # 1 retain, 2 forget: a 1/1 split
    x, y = spy.fits[-1]
    assert (y == 1).sum() == (y == 0).sum() == 1 and len(spy.predicts[-1]) == 1
    with pytest.raises(ValueError):
        mia_class(np.array([0.9, 0.8]), np.array([0.1]), seed=0)
    with pytest.raises(ValueError):
        mia_class(np.array([0.9, 0.8]), np.array([0.1, 0.2, 0.3]), seed=0, max_per_side=0)
    rng = np.random.default_rng(0)
    mia_class(rng.uniform(0.5, 1, 300), rng.uniform(0, 1, 100), seed=0, max_per_side=7)
    x, y = spy.fits[-1]
    assert (y == 1).sum() == (y == 0).sum() == 7


def test_mia_class_draws_like_the_sample_variant_and_splits_as_documented(monkeypatch):
    """Retain members are drawn without replacement from default_rng([seed, 0]), as in the sample variant (same
    n, same retain set -> the same members); the held-out half is the documented default_rng([seed, 2]) split."""
    spy = SpySVC(monkeypatch)
    rng = np.random.default_rng(1)
    p_r, p_f, p_t = rng.uniform(0.5, 1, 300), rng.uniform(0, 1, 100), rng.uniform(0, 0.5, 50)
    for seed in (3, 4):
        mia_sample(p_r, p_t, p_f, seed=seed)
        x_s, y_s = spy.fits[-1]
        mia_class(p_r, p_f, seed=seed)
        x_c, y_c = spy.fits[-1]
        members = x_c[y_c == 1]
        assert len(members) == len(set(members)) == 50  # n = min(|S_r|, |A|), without replacement
        np.testing.assert_array_equal(members, x_s[y_s == 1])
        perm = np.random.default_rng([seed, 2]).permutation(100)
        np.testing.assert_array_equal(spy.predicts[-1], p_f[perm[50:]])
        assert set(x_c[y_c == 0]) == set(p_f[perm[:50]])
    # fewer retain samples than half A: half A is subsampled, reproducibly
    mia_class(p_r[:20], p_f, seed=3)
    mia_class(p_r[:20], p_f, seed=3)
    np.testing.assert_array_equal(spy.fits[-1][0], spy.fits[-2][0])


# ---------------------------------------------------------------------------------------------- report
KEYS = ("retain_acc", "unlearn_acc", "test_acc", "mia")


def seed_result(seed: int, **rows) -> SeedResult:
    """A hand-made per-seed result: rows name -> (retain, unlearn, test, MIA) fractions, or a dict."""
    metrics = {n: (v if isinstance(v, dict) else dict(zip(KEYS, v))) for n, v in rows.items()}
    return SeedResult(seed, metrics, {}, {n: {"wall_s": 2.0 + seed} for n in rows})


RETRAIN = (0.75, 0.25, 0.625, 0.5)


def test_avg_gap_uses_absolute_per_metric_gaps():
    """gd is 12.5 points below Re-train on retain and 12.5 above on unlearn: signed gaps would cancel to 0."""
    results = [seed_result(1, original=(1.0, 0.0, 0.75, 0.25), retrain=RETRAIN, gd=(0.625, 0.375, 0.625, 0.5))]
    s = summarise("hand", "gaussian", results, ["original", "retrain", "gd"])
    gd = s["methods"]["gd"]
    assert gd["avg_gap"] == pytest.approx(6.25) and gd["avg_gap_per_seed"]["values"] == [pytest.approx(6.25)]
    assert s["methods"]["retrain"]["avg_gap"] == 0.0
    # original: |100−75| + |0−25| + |75−62.5| + |25−50| = 87.5 over 4
    assert s["methods"]["original"]["avg_gap"] == pytest.approx(87.5 / 4)
    header, rows = main_table(s)
    cells = dict(zip(header, next(r for r in rows if r[0] == "gd")))
    assert cells["Retain"] == "62.50 ± 0.00 (12.50)" and cells["Unlearn"] == "37.50 ± 0.00 (12.50)"
    assert cells["Test"].endswith("(0.00)") and cells["Avg. Gap"] == "6.25"
    assert not any("(" in c for c in next(r for r in rows if r[0] == "retrain")[1:5])  # no gap to itself
    header, rows = numeric_table(s)
    num = dict(zip(header, next(r for r in rows if r[0] == "gd")))
    assert (num["retain_acc_gap"], num["unlearn_acc_gap"], num["test_acc_gap"]) == (12.5, 12.5, 0.0)
    assert num["avg_gap"] == pytest.approx(6.25) and num["retain_acc_mean"] == 62.5


def test_avg_gap_is_taken_on_the_seed_means_and_std_is_ddof_0():
    """Seed 1: gd 12.5 below on retain, seed 2: 12.5 above -> the seed means equal Re-train's (Avg. Gap 0) while
    every single seed has Avg. Gap 6.25."""
    results = [seed_result(1, original=RETRAIN, retrain=RETRAIN, gd=(0.625, 0.375, 0.625, 0.5)),
               seed_result(2, original=RETRAIN, retrain=RETRAIN, gd=(0.875, 0.125, 0.625, 0.5))]
    s = summarise("hand", "gaussian", results, ["original", "retrain", "gd"])
    gd = s["methods"]["gd"]
    assert gd["avg_gap"] == pytest.approx(0.0, abs=1e-12)
    assert gd["avg_gap_per_seed"]["values"] == [pytest.approx(6.25)] * 2
    assert gd["avg_gap_per_seed"]["mean"] == pytest.approx(6.25) and gd["avg_gap_per_seed"]["std"] == 0.0
    assert gd["retain_acc"]["mean"] == pytest.approx(75.0) and gd["retain_acc"]["std"] == pytest.approx(12.5)
    assert gd["retain_acc"]["per_seed"] == [62.5, 87.5] and gd["n_seeds"] == 2
    assert gd["wall_s"] == pytest.approx(3.5)  # mean of 3 and 4 s


def test_degenerate_mark_is_strictly_more_than_20_points_below_retrain():
    ref = (1.0, 0.0, 0.5, 0.5)
    results = [seed_result(1, original=ref, retrain=ref, gd=(0.8, 0.0, 0.5, 0.5), ga=(0.796875, 0.0, 0.5, 0.5),
                           rl=(0.9, 0.0, 0.5, 0.5))]
    s = summarise("hand", "gaussian", results, ["original", "retrain", "gd", "ga", "rl"])
    m = s["methods"]
    assert m["retrain"]["retain_acc"]["mean"] - m["gd"]["retain_acc"]["mean"] == 20.0  # exactly on the line
    assert "degenerate" not in m["gd"] and "degenerate" not in m["rl"] and "degenerate" not in m["retrain"]
    assert "20.3 points below" in m["ga"]["degenerate"]
    assert any(r[0] == "ga (degenerate)" for r in main_table(s)[1])


def test_failed_seeds_are_counted_and_left_out_of_the_means():
    results = [seed_result(1, original=RETRAIN, retrain=RETRAIN, gd=(0.625, 0.375, 0.625, 0.5)),
               seed_result(2, original=RETRAIN, retrain=RETRAIN, gd={"error": "RuntimeError: boom"})]
    s = summarise("hand", "gaussian", results, ["original", "retrain", "gd"])
    gd = s["methods"]["gd"]
    assert gd["n_seeds"] == 1 and gd["failed"] == [{"seed": 2, "error": "RuntimeError: boom"}]
    assert gd["retain_acc"]["mean"] == 62.5 and gd["retain_acc"]["per_seed"] == [62.5, None]
    assert gd["avg_gap"] == pytest.approx(6.25) and gd["avg_gap_per_seed"]["values"] == [pytest.approx(6.25), None]
    assert any(r[0] == "gd (failed on 1 of 2 seeds; gaps on seeds 1)" for r in main_table(s)[1])


def test_relearn_epochs_mean_over_uncensored_seeds():
    rows = lambda e: {"original": RETRAIN, "retrain": RETRAIN,  # noqa: E731
                      "gd": dict(zip(KEYS, (0.625, 0.375, 0.625, 0.5)), relearn_epochs=e)}
    results = [seed_result(1, **rows(2.0)), seed_result(2, **rows(4.0)), seed_result(3, **rows(None))]
    s = summarise("hand", "gaussian", results, ["original", "retrain", "gd"])
    assert s["methods"]["gd"]["relearn_epochs"] == {"mean": 3.0, "std": 1.0, "censored": 1,
                                                    "per_seed": [2.0, 4.0, None]}
    header, table = main_table(s)
    cell = dict(zip(header, next(r for r in table if r[0] == "gd")))["Re-learn (epochs)"]
    assert cell == "3.00 ± 1.00 (1 >30)"


def test_residual_curves_are_seed_means_ignoring_undefined_values():
    def audit(r_pooled, r_paper):
        return {"per_tau": [{"tau": t, "r_pooled": rp, "r_paper": pp, "prevalence": 0.5 * rp}
                            for t, rp, pp in zip((0.0, 0.03, 0.1), r_pooled, r_paper)]}

    results = []
    for seed, (rp, pp) in enumerate([((1.0, 1.2, 1.4), (1.0, None, 2.0)), ((1.0, 1.0, 1.0), (1.0, None, 1.0))]):
        r = seed_result(seed, original=RETRAIN, retrain=RETRAIN, gd=RETRAIN)
        r.residual.update(original=audit((1.0, 1.5, 2.0), (1.0, 1.5, 2.0)), gd=audit(rp, pp))
        results.append(r)
    s = summarise("hand", "gaussian", results, ["original", "retrain", "gd"])
    res = s["methods"]["gd"]["residual"]
    assert res["taus"] == [0.0, 0.03, 0.1]
    assert res["r_pooled"] == pytest.approx([1.0, 1.1, 1.2]) and res["r_pooled_std"] == pytest.approx([0.0, 0.1, 0.2])
    assert res["r_paper"][0] == 1.0 and res["r_paper"][1] is None and res["r_paper"][2] == pytest.approx(1.5)
    assert res["r_pooled_per_seed"] == [[1.0, 1.2, 1.4], [1.0, 1.0, 1.0]]
    assert s["methods"]["retrain"]["residual"]["r_pooled"] == [1.0, 1.0, 1.0]  # the reference is r = 1
    assert s["methods"]["retrain"]["residual"]["taus"] == [0.0, 0.03, 0.1]
    header, table = main_table(s)
    cells = dict(zip(header, next(r for r in table if r[0] == "gd")))
    assert cells["r_pooled τ=0.03"] == "1.100 ± 0.100" and cells["r_pooled τ=0"] == "1.000"
    assert cells["prevalence (ties) τ=0.1"] == "60% ± 10%"


def test_curve_tables_transform_per_tau_values_and_skip_rows_without_the_field():
    s = {"methods": {
        "gd": {"residual": {"taus": [0.0, 0.03], "acc_m": [0.75, None], "prevalence": [0.125, 0.5]}},
        "retrain": {"residual": {"taus": [0.0, 0.03], "prevalence": [0.0, 0.0]}},
        "failed": {"residual": None}}}
    header, rows = curve_table(s, "acc_m", lambda v: 1 - v)
    assert header == ["method", "0.0000", "0.0300"] and rows == [["gd", "0.250", "–"]]
    header, rows = curve_table(s, "prevalence", lambda v: 100 * v, 1)
    assert rows == [["gd", "12.5", "50.0"], ["retrain", "0.0", "0.0"]]


def test_seed_bands_are_mean_plus_minus_std():
    assert _band({"r": [1.0, None, 2.0], "r_std": [0.25, 0.1, None]}, "r") == [(0.75, 1.25), None, None]


def test_summary_schema_kinds_and_missing_values():
    ok = dict(zip(KEYS, RETRAIN))
    results = [SeedResult(1, {n: ok for n in ("original", "retrain", "gd", "ssd", "my-row")}, {}, {}),
               SeedResult(2, {"original": ok, "ssd": ok, "my-row": ok}, {}, {})]
    names = ["original", "retrain", "gd", "ssd", "my-row"]
    s = summarise("hand", "gaussian", results, names)
    assert (s["scenario"], s["probe"], s["seeds"]) == ("hand", "gaussian", [1, 2])
    m = s["methods"]
    kinds = {n: (m[n]["base"], m[n]["kind"]) for n in names}
    assert kinds == {"original": ("original", "reference"), "retrain": ("retrain", "reference"),
                     "gd": ("gd", "finetune"), "ssd": ("ssd", "training-free"), "my-row": ("my-row", "other")}
    # seed 2 has no gd and no Re-train row: gd counts one seed, and seed 2 has no per-seed gap
    assert m["gd"]["n_seeds"] == 1 and m["gd"]["failed"] == [{"seed": 2}]
    assert m["gd"]["avg_gap_per_seed"]["values"] == [0.0, None]
    assert m["gd"]["relearn_epochs"] == {"mean": None, "std": None, "censored": 0}
    assert m["gd"]["wall_s"] is None  # no wall times recorded
    assert "residual" not in m["gd"]


def test_a_method_that_failed_on_every_seed_has_no_numbers_and_says_why():
    bad = [{"error": "RuntimeError: boom"}, {"diverged": True, "diverged_step": 3}]
    results = [seed_result(i + 1, original=RETRAIN, retrain=RETRAIN, gd=b) for i, b in enumerate(bad)]
    s = summarise("hand", "gaussian", results, ["original", "retrain", "gd"])
    gd = s["methods"]["gd"]
    assert gd["n_seeds"] == 0 and gd["retain_acc"] == {"mean": None, "std": None, "per_seed": [None, None], "gap": None}
    assert gd["avg_gap"] is None
    header, rows = main_table(s)
    row_ = next(r for r in rows if r[0].startswith("gd"))
    assert row_ == ["gd (failed on 2 of 2 seeds)", *["–"] * (len(header) - 2),
                    "failed: RuntimeError: boom; diverged at step 3"]


def test_tables_without_a_retrain_row_show_no_gaps():
    results = [seed_result(1, original=RETRAIN, gd=(0.625, 0.375, 0.625, 0.5))]
    s = summarise("hand", "gaussian", results, ["original", "gd"])
    assert s["methods"]["gd"]["avg_gap"] is None
    header, rows = main_table(s)
    cells = dict(zip(header, rows[1]))
    assert cells["Retain"] == "62.50 ± 0.00" and cells["Avg. Gap"] == "–"
    header, rows = numeric_table(s)
    num = dict(zip(header, rows[1]))
    assert num["retain_acc_gap"] == "" and num["avg_gap"] == "" and num["retain_acc_mean"] == 62.5


def _curve_summary():
    """Two seeds of hand-made audits (3 τ) for gd; relearn 2 and censored; gd is degenerate."""
    def audit(r_pooled, r_paper, prev, ties, ci):
        return {"per_tau": [{"tau": t, "r_pooled": rp, "r_paper": pp, "prevalence": pv, "ties": ti, "n_unbounded": 2,
                             "ci95": {"r_pooled": c}}
                            for t, rp, pp, pv, ti, c in zip((0.0, 0.03, 0.1), r_pooled, r_paper, prev, ties, ci)]}

    results = []
    for seed, (rp, pv, ti, rl) in enumerate([((1.0, 1.2, 1.4), (0.0, 0.5, 0.5), (1.0, 0.5, 0.75), 2.0),
                                              ((1.0, 1.0, 1.0), (0.0, 0.5, 0.7), (1.0, 0.5, 0.75), None)]):
        gd = dict(zip(KEYS, (0.5, 0.25, 0.625, 0.5)), relearn_epochs=rl)
        orig = dict(zip(KEYS, (1.0, 0.0, 0.75, 0.25)), relearn_epochs=None)
        r = SeedResult(seed, {"original": orig, "retrain": dict(RETRAIN_RL), "gd": gd}, {}, {})
        r.residual.update(original=audit((1.5,) * 3, (1.5,) * 3, (0.5,) * 3, (0.1,) * 3, [[1.4, 1.6]] * 3),
                          gd=audit(rp, (1.0, None, 2.0), pv, ti, [None, [1.1, 1.3], None]))
        results.append(r)
    return summarise("hand", "gaussian", results, ["original", "retrain", "gd"])


RETRAIN_RL = {**dict(zip(KEYS, RETRAIN)), "relearn_epochs": None}


def test_residual_summary_reference_row_and_bootstrap_intervals():
    s = _curve_summary()
    ref = s["methods"]["retrain"]["residual"]
    assert ref["taus"] == [0.0, 0.03, 0.1] and ref["probe"] == "gaussian"
    assert (ref["r_paper"], ref["r_pooled"], ref["prevalence"], ref["ties"], ref["disagreement"]) == (
        [1.0] * 3, [1.0] * 3, [0.0] * 3, [1.0] * 3, [0.0] * 3)  # Re-train against itself: all ties, no disagreement
    res = s["methods"]["gd"]["residual"]
    assert res["probe"] == "gaussian" and res["n_unbounded"] == [2.0] * 3
    assert res["r_pooled_ci95_per_seed"] == [[None, [1.1, 1.3], None]] * 2
    assert res["ties"] == [1.0, 0.5, 0.75] and res["prevalence"] == pytest.approx([0.0, 0.5, 0.6])


def test_main_and_numeric_tables_read_the_key_taus():
    s = _curve_summary()
    header, rows = main_table(s)
    t = {r[0].split(" (")[0]: dict(zip(header, r)) for r in rows}
    assert t["original"]["Re-learn (epochs)"] == "–" and t["retrain"]["Re-learn (epochs)"] == ">30"
    assert t["gd"]["Re-learn (epochs)"] == "2.00 ± 0.00 (1 >30)"
    assert t["gd"]["prevalence (ties) τ=0.1"] == "60% ± 10% (75%)" and t["gd"]["r_pooled τ=0.1"] == "1.200 ± 0.200"
    assert rows[2][0] == "gd (degenerate)"
    header, rows = numeric_table(s)
    n = {r[0]: dict(zip(header, r)) for r in rows}
    gd = n["gd"]
    assert (gd["n_seeds"], gd["failed_seeds"], gd["relearn_censored"], gd["relearn_mean"]) == (2, 0, 1, 2.0)
    assert gd["r_pooled_tau0.03"] == pytest.approx(1.1) and gd["r_pooled_tau0.1"] == pytest.approx(1.2)
    assert gd["r_paper_tau0"] == 1.0 and gd["r_paper_tau0.03"] == "" and gd["r_paper_tau0.1"] == 2.0
    assert gd["prevalence_tau0.1"] == pytest.approx(0.6) and gd["ties_tau0.1"] == 0.75
    assert gd["avg_gap_per_seed_mean"] == pytest.approx(gd["avg_gap"]) and gd["avg_gap_per_seed_std"] == 0.0
    assert "25.0 points below" in gd["degenerate"] and n["original"]["degenerate"] == ""
    assert [n["retrain"][f"{k}_gap"] for k in KEYS] == ["", "", "", ""]
    assert n["retrain"]["relearn_censored"] == 2


@pytest.mark.parametrize("taus,want", [
    ([], []), ([0.03], [0]), ([0.0, 0.1], [0, 1]), ([0.0, 0.01, 0.03, 0.1], [0, 2, 3]),
    ([0.0, 0.02, 0.05], [0, 1, 2]), ([0.0, 0.025, 0.04, 0.3], [0, 1, 3]),
    ([0.3, 0.0, 0.03], [1, 2, 0]),  # a grid given out of order: still smallest, nearest 0.03, largest (last)
])
def test_key_taus_are_smallest_nearest_to_paper_and_largest(taus, want):
    assert key_taus(taus) == want


# ---------------------------------------------------------------------------------------------- claims
@pytest.mark.parametrize("r,want", [
    ([1.0] * 3, FAILS), ([1.0 + 1e-9] * 3, HOLDS),  # constant seeds: an interval of width 0
    ([1.2, 1.3, 1.4], HOLDS),  # t-interval [1.052, 1.548]
    ([0.9, 1.3, 1.7], INCONCLUSIVE),  # [0.306, 2.294] straddles 1
    ([0.85, 0.9, 0.95], INCONCLUSIVE),  # [0.776, 1.024]
    ([0.88, 0.9, 0.92], FAILS),  # [0.850, 0.950]
    ([1.5], ONE_SEED),  # one seed decides nothing, however far from 1
])
def test_residual_knowledge_claim_is_strictly_above_1(r, want):
    n = len(r)
    s = summary(original=row("reference", r=r, gaps=[6.0] * n), gd=row(r=r, gaps=[5.0] * n))
    v = verdicts(s)
    assert v["original_r_gt_1"] == v["gd_keeps_r_gt_1"] == want


@pytest.mark.parametrize("r,want", [
    ([1 + R_TOL] * 2, HOLDS), ([1 + R_TOL + 1e-9] * 2, FAILS),
    ([1 - R_TOL] * 2, HOLDS), ([1 - R_TOL - 1e-9] * 2, FAILS),  # over-forgetting fails the claim too
    ([0.82] * 3, FAILS), ([0.9, 1.0, 1.1], INCONCLUSIVE), ([1.0, 1.01, 0.99], HOLDS),
])
def test_rurk_r_claim_is_within_the_tolerance_of_1_both_ways(r, want):
    s = summary(rurk=row(r=r, gaps=[1.0] * len(r)))
    assert verdicts(s)["rurk_r_near_1"] == want


@pytest.mark.parametrize("retain,test,want", [
    ([90.0 - ACC_TOL] * 2, [85.0 + ACC_TOL] * 2, HOLDS), ([90.0 + ACC_TOL] * 2, [85.0 - ACC_TOL] * 2, HOLDS),
    ([90.0 - ACC_TOL - 0.01] * 2, [85.0] * 2, FAILS), ([90.0] * 2, [85.0 + ACC_TOL + 0.01] * 2, FAILS),
    ([87.5, 86.5, 87.0], [85.0] * 3, INCONCLUSIVE),  # differences −2.5, −3.5, −3: interval straddles −3
    ([92.5, 93.5, 93.0], [85.0] * 3, INCONCLUSIVE),  # +2.5, +3.5, +3: straddles +3
    ([89.0, 91.0, 90.0], [85.0] * 3, HOLDS),
])
def test_rurk_accuracy_claim_is_within_the_tolerance_both_ways(retain, test, want):
    n = len(retain)
    s = summary(rurk=row(r=[1.0] * n, retain=retain, test=test, gaps=[1.0] * n),
                retrain=row("reference", retain=[90.0] * n, test=[85.0] * n, gaps=[0.0] * n))
    assert verdicts(s)["rurk_r_near_1"] == want


def test_paired_differences_skip_seeds_where_either_side_failed():
    s = summary(rurk=row(r=[1.0] * 3, retain=[91.0, None, 91.0], test=[86.0, None, 86.0], gaps=[1.0] * 3),
                retrain=row("reference", retain=[90.0, 80.0, 90.0], test=[85.0, None, 85.0], gaps=[0.0] * 3))
    c = {x["id"]: x for x in check_claims(s)}["rurk_r_near_1"]
    assert c["verdict"] == HOLDS and "retain − Re-train = 1.00 pt" in c["evidence"]
    assert "test − Re-train = 1.00 pt" in c["evidence"] and "r_pooled at τ = 0.030 = 1.000;" in c["evidence"]
    assert "95% t-interval over 3 seeds" in c["evidence"]


@pytest.mark.parametrize("rurk_gaps,other_gaps,want", [
    ([2.0, 2.0, 2.0], [2.5, 2.5, 2.5], HOLDS),  # constant difference −0.5: interval of width 0 below 0
    ([2.0, 2.0, 2.0], [1.5, 1.5, 1.5], FAILS),
    ([2.0, 2.0, 2.0], [2.0, 2.0, 2.0], INCONCLUSIVE),  # a tie is not "smallest"
    ([1.0], [5.0], ONE_SEED),  # one seed: no interval
    ([1.0, 1.0], [None, None], HOLDS),  # the other method failed on every seed
    ([1.0, 1.0, 1.0], [5.0, None, None], INCONCLUSIVE),  # one paired seed only
    ([1.0, 1.0], [1.5, 1.5], HOLDS),  # two seeds are enough for an interval
])
def test_smallest_gap_claim_boundaries(rurk_gaps, other_gaps, want):
    n = len(rurk_gaps)
    s = summary(rurk=row(r=[1.0] * n, gaps=rurk_gaps), gd=row(r=[1.2] * n, gaps=[g or 0.0 for g in other_gaps]))
    s["methods"]["gd"]["avg_gap_per_seed"]["values"] = other_gaps  # None: failed on that seed
    assert verdicts(s)["rurk_smallest_gap"] == want


def test_only_fine_tuning_rows_compete_for_the_smallest_gap():
    s = summary(rurk=row(r=[1.0] * 3, gaps=[2.0, 2.1, 2.2]), gd=row(r=[1.2] * 3, gaps=[3.0, 3.1, 3.3]),
                ssd=row("training-free", gaps=[0.1, 0.1, 0.1]), original=row("reference", r=[1.2] * 3, gaps=[0.0] * 3))
    c = {x["id"]: x for x in check_claims(s)}["rurk_smallest_gap"]
    assert c["verdict"] == HOLDS and "ssd" not in c["evidence"] and "gd" in c["evidence"]
    assert "smallest Avg. Gap: rurk (2.10)" in c["evidence"] and "gd -1.03 [" in c["evidence"]
    assert c["evidence"].endswith("(95% t-intervals over 3 seeds)")
    s["methods"]["rurk"]["n_seeds"] = 0
    assert verdicts(s)["rurk_smallest_gap"] == verdicts(s)["rurk_r_near_1"] == INCONCLUSIVE


def test_an_other_method_that_failed_everywhere_does_not_hide_the_rest():
    s = summary(rurk=row(r=[1.0] * 3, gaps=[2.0, 2.0, 2.0]), gd=row(r=[1.2] * 3, gaps=[0.0] * 3),
                scrub=row(gaps=[1.0, 1.0, 1.0]))
    s["methods"]["gd"]["avg_gap_per_seed"]["values"] = [None] * 3  # gd failed on every seed
    s["methods"]["gd"]["avg_gap"] = None
    c = {x["id"]: x for x in check_claims(s)}["rurk_smallest_gap"]
    assert c["verdict"] == FAILS and "gd failed" in c["evidence"] and "scrub" in c["evidence"]


def test_each_claim_is_decided_on_its_own_and_states_its_thresholds():
    s = summary(gd=row(r=[1.2] * 3, gaps=[3.0] * 3), rurk=row(r=[1.0] * 3, gaps=[1.0] * 3))  # no Original row
    claims = check_claims(s)
    v = {c["id"]: c["verdict"] for c in claims}
    assert v == {"original_r_gt_1": INCONCLUSIVE, "gd_keeps_r_gt_1": HOLDS, "rurk_r_near_1": HOLDS,
                 "rurk_smallest_gap": HOLDS}
    for c in claims + check_claims({"seeds": [1], "methods": {}}):
        assert isinstance(c["claim"], str) and c["claim"] and isinstance(c["evidence"], str) and c["evidence"]
    text = next(c["claim"] for c in claims if c["id"] == "rurk_r_near_1")
    assert f"|r − 1| ≤ {R_TOL:g}" in text and f"within {ACC_TOL:g} points" in text


def test_report_survives_a_retrain_that_failed_on_every_seed():
    """No Re-train numbers -> no Avg. Gap anywhere: the ranking claim is inconclusive (it used to raise KeyError)."""
    ok = lambda v: dict(zip(KEYS, v))  # noqa: E731
    m = {"original": ok((1.0, 0.0, 0.75, 0.25)), "retrain": {"error": "boom"}, "gd": ok((0.625, 0.375, 0.625, 0.5)),
         "rurk": ok((0.75, 0.25, 0.625, 0.5))}
    s = summarise("hand", "gaussian", [SeedResult(1, m, {}, {}), SeedResult(2, m, {}, {})],
                  ["original", "retrain", "gd", "rurk"])
    assert {c["id"]: c["verdict"] for c in s["claims"]}["rurk_smallest_gap"] == INCONCLUSIVE


def _r_row(taus, r_per_tau, kind="finetune", ci=None):
    n = len(r_per_tau)
    return {"kind": kind, "n_seeds": n, "avg_gap": 1.0, "avg_gap_per_seed": {"values": [1.0] * n},
            "retain_acc": {"per_seed": [90.0] * n}, "test_acc": {"per_seed": [85.0] * n},
            "residual": {"taus": taus, "r_pooled_per_seed": r_per_tau,
                         "r_pooled_ci95_per_seed": ci or [[None] * len(taus)] * n}}


@pytest.mark.parametrize("taus", [[0.0, 0.02, 0.05], [0.0, 0.025, 0.04], [0.01, 0.035, 0.3]])
def test_claims_read_r_at_the_grid_tau_nearest_the_paper(taus):
    s = {"seeds": [1, 2], "methods": {"original": _r_row(taus, [[0.9, 1.2, 0.8]] * 2, kind="reference")}}
    c = {x["id"]: x for x in check_claims(s)}["original_r_gt_1"]
    assert c["verdict"] == HOLDS and f"τ = {taus[1]:.3f}" in c["evidence"]


def test_bootstrap_interval_is_shown_for_one_seed_only():
    ci = [[None, (0.9, 1.3), None]] * 2
    two = {"seeds": [1, 2],
           "methods": {"original": _r_row([0.0, 0.03, 0.3], [[1, 1.1, 1], [1, 1.1, 1]], "reference", ci)}}
    assert verdicts(two)["original_r_gt_1"] == HOLDS  # two equal seeds: t-interval of width 0 above 1
    one_ = {"seeds": [1], "methods": {"original": _r_row([0.0, 0.03, 0.3], [[1, 1.1, 1]], "reference", ci[:1])}}
    assert verdicts(one_)["original_r_gt_1"] == ONE_SEED  # one seed decides nothing
    # the evidence names the interval used, and the gap ranking has no interval with one seed
    for n, how, gap_how in ((1, "one seed: bootstrap 95% interval", "(one seed: no interval)"),
                            (2, "95% t-interval over 2 seeds", "(95% t-intervals over 2 seeds)")):
        s = summary(rurk=row(r=[1.0] * n, gaps=[1.0] * n), gd=row(r=[1.2] * n, gaps=[2.0] * n))
        ev = {c["id"]: c["evidence"] for c in check_claims(s)}
        assert how in ev["gd_keeps_r_gt_1"] and ev["rurk_smallest_gap"].endswith(gap_how)


def test_interval_drops_missing_and_nan_values():
    assert interval([1.0, float("nan"), 3.0, None]) == interval([1.0, 3.0])
    assert interval([float("nan")]) is None and interval([]) is None
    m, lo, hi = interval([1.0, 3.0])  # sd (ddof 1) = √2, t(0.975, 1) = 12.7062
    assert m == 2.0 and hi - m == pytest.approx(12.7062 * math.sqrt(2) / math.sqrt(2), rel=1e-4)
