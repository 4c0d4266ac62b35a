"""Gradient-based unlearning methods: GA, NGD, NegGrad+ and RURK (rurk.md §8, baselines.md §3–§5).

Tiny models on scikit-learn digits (8×8) or synthetic tensors; one thread per test process.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rurk.data.tensordata import TensorData
from rurk.methods import UnlearnData, get_method, unlearn
from rurk.methods._forget import PerturbedBatch, Weights, bn_stats_frozen, objective, perturb_forget
from rurk.torchutil import make_generator
from rurk.perturb import PROBES, make_probe
from rurk.train import BatchStream, OptimConfig, accuracy, fit

MINE = ("ga", "ngd", "neggrad_plus", "rurk")
SEED = 131


# ---------------------------------------------------------------------------------------------- fixtures
def mlp(seed=0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def bn_net(seed=0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(),
                         nn.Linear(8 * 64, 10))


@pytest.fixture(scope="module")
def digits() -> TensorData:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data[:500], dtype=torch.float32).reshape(-1, 1, 8, 8) / 16
    return TensorData(x, torch.tensor(d.target[:500]), torch.arange(500))


@pytest.fixture(scope="module")
def data(digits) -> UnlearnData:
    """400 retain / 100 forget (random samples): ⌈400/128⌉ = 4 steps per epoch."""
    return UnlearnData(digits.subset(range(100, 500)), digits.subset(range(100)), num_classes=10)


@pytest.fixture(scope="module")
def originals(digits) -> dict[str, nn.Module]:
    out = {}
    for name, build, epochs in (("mlp", mlp, 60), ("bn", bn_net, 30)):
        model = build()
        fit(model, digits, OptimConfig(optimizer="adam", lr=0.01, epochs=epochs, batch_size=500), seed=0,
            progress=False)
        assert accuracy(model, digits) > 0.97
        out[name] = model
    return out


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def max_param_diff(a: nn.Module, b: nn.Module) -> float:
    return max(float((p - q).detach().abs().max()) for p, q in zip(a.parameters(), b.parameters()))


QUICK = {"ga": {}, "ngd": {"epochs": 2}, "neggrad_plus": {}, "rurk": {}}


# ---------------------------------------------------------------------------------------------- every method
@pytest.mark.parametrize("arch", ["mlp", "bn"])
@pytest.mark.parametrize("name", MINE)
def test_end_to_end_deterministic_and_pure(name, arch, originals, data):
    original = originals[arch]
    before = state(original)
    m1, r1 = unlearn(name, original, data, SEED, preset="paper", overrides=QUICK[name])
    m2, r2 = unlearn(name, original, data, SEED, preset="paper", overrides=QUICK[name])
    assert same_state(state(original), before), "the Original was mutated"
    assert same_state(state(m1), state(m2)), "not deterministic under a fixed seed"
    assert max_param_diff(m1, original) > 0, "returned model equals the Original"
    assert m1 is not original
    assert r1.steps > 0 and not r1.diverged and r1.method == name
    assert r1.config and r1.history["loss"]


def test_noise_depends_on_seed(originals, data):
    for name in ("ngd", "rurk"):
        a, _ = unlearn(name, originals["mlp"], data, 1, preset="paper", overrides=QUICK[name])
        b, _ = unlearn(name, originals["mlp"], data, 2, preset="paper", overrides=QUICK[name])
        assert max_param_diff(a, b) > 0, name


def test_ga_lowers_forget_accuracy_and_can_stop_early(originals, data):
    original = originals["mlp"]
    assert accuracy(original, data.forget) > 0.95
    model, rec = unlearn("ga", original, data, SEED, preset="paper", overrides={"lr": 0.2, "epochs": 10})
    assert accuracy(model, data.forget) < 0.5
    assert rec.history["L_f"][-1] > 5 * rec.history["L_f"][0]
    model, rec = unlearn("ga", original, data, SEED, preset="paper", overrides={"lr": 0.2, "epochs": 10, "target_forget_acc": 0.8})
    assert rec.steps < 10 and rec.extra["stopped_early_at_step"] == rec.steps
    assert accuracy(model, data.forget) <= 0.8


# ---------------------------------------------------------------------------------------------- divergence
@pytest.mark.parametrize("name,overrides", [
    ("ga", {"lr": 1e6, "clip_grad_norm": None, "epochs": 30}),
    ("neggrad_plus", {"lr": 1e6, "clip_grad_norm": None, "beta": 1.0, "epochs": 30}),
    ("rurk", {"lr": 1e6, "clip_grad_norm": None, "lambda_f": 1.0, "schedule": "constant", "epochs": 30}),
])
def test_divergence_is_recorded_not_raised(name, overrides, originals, data):
    model, rec = unlearn(name, originals["mlp"], data, SEED, preset="paper", overrides=overrides)
    assert rec.diverged and isinstance(rec.diverged_step, int) and rec.diverged_step >= 1
    assert rec.steps == rec.diverged_step
    if name != "ga":
        assert any("L_f" in w for w in rec.warnings)


def test_rurk_warns_when_forget_loss_grows(originals, data):
    _, rec = unlearn("rurk", originals["mlp"], data, SEED, preset="paper", overrides={"lambda_f": 3.0, "lr": 0.1, "epochs": 3})
    assert not rec.diverged
    assert rec.extra["L_f_peak"] > 10 * rec.extra["L_f_first"]
    assert any(w.startswith("L_f rose") for w in rec.warnings)
    _, rec = unlearn("rurk", originals["mlp"], data, SEED, preset="paper", overrides={"lambda_f": 0.0, "lambda_a": 0.0})
    assert not any(w.startswith("L_f rose") for w in rec.warnings)


# ---------------------------------------------------------------------------------------------- NGD
class ZeroGradParam(nn.Module):
    """An MLP plus a big parameter whose gradient is exactly zero (it enters the output times 0)."""

    def __init__(self):
        super().__init__()
        self.net = mlp()
        self.extra = nn.Parameter(torch.zeros(40_000))

    def forward(self, x):
        return self.net(x) + 0.0 * self.extra.sum()


@pytest.mark.parametrize("form,lr,sigma,eta,expected_per_step", [
    ("sgd", 0.1, 0.05, 0.1, 0.1 * 0.05),  # lr·σ
    ("langevin", 0.1, 0.05, 0.02, math.sqrt(2 * 0.02) * 0.05),  # √(2η)·σ
])
def test_ngd_noise_scale(form, lr, sigma, eta, expected_per_step, data):
    original = ZeroGradParam()
    overrides = {"noise_form": form, "lr": lr, "sigma": sigma, "eta": eta, "epochs": 2, "weight_decay": 0.0}
    model, rec = unlearn("ngd", original, data, SEED, preset="paper", overrides=overrides)
    steps = rec.steps
    assert steps == 8
    delta = (model.extra - original.extra).detach()
    # k independent N(0, s²) increments: std s·√k. Noise in the momentum buffer (momentum .9) would inflate it.
    assert float(delta.std()) == pytest.approx(expected_per_step * math.sqrt(steps), rel=0.03)
    assert abs(float(delta.mean())) < 5 * expected_per_step * math.sqrt(steps) / math.sqrt(delta.numel())
    assert rec.extra["noise_std_per_step"] == pytest.approx(expected_per_step)


def test_ngd_sigma_zero_is_gd(originals, data):
    a, _ = unlearn("ngd", originals["mlp"], data, SEED, preset="paper", overrides={"sigma": 0.0, "epochs": 2})
    b, _ = unlearn("gd", originals["mlp"], data, SEED, preset="paper", overrides={"epochs": 2})
    assert same_state(state(a), state(b))


# ---------------------------------------------------------------------------------------------- RURK §8
def ided_data(n_retain=300, n_forget=50) -> UnlearnData:
    """Synthetic images whose first pixel encodes a unique sample id (retain ids 0.., forget ids 500..)."""
    def part(ids: torch.Tensor, seed: int) -> TensorData:
        g = torch.Generator().manual_seed(seed)
        x = torch.rand(len(ids), 1, 8, 8, generator=g)
        x[:, 0, 0, 0] = ids.float() / 1000
        return TensorData(x, torch.randint(0, 10, (len(ids),), generator=g), ids)

    return UnlearnData(part(torch.arange(n_retain), 0), part(500 + torch.arange(n_forget), 1), 10)


def ids_of(x: torch.Tensor) -> list[int]:
    return torch.round(x[:, 0, 0, 0] * 1000).long().tolist()


class Recorder(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = mlp()
        self.seen: list[torch.Tensor] = []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return self.net(x)


def test_rurk_step_count_and_cap_reading():
    d = ided_data()  # ⌈300/32⌉ = 10 iterations per epoch
    base = {"batch_size": 32, "epochs": 2, "tau": 0.0}
    _, rec = unlearn("rurk", mlp(), d, SEED, preset="paper", overrides=base)
    assert rec.steps == 2 * 10 and rec.extra["planned_steps"] == 20
    assert "no cap" in rec.extra["step_cap"]
    assert rec.history["lr_mean"][0] > rec.history["lr_mean"][1]  # cosine, stepped per iteration
    _, rec = unlearn("rurk", mlp(), d, SEED, preset="paper", overrides={**base, "max_steps": 7})
    assert rec.steps == 7 and "reading 2" in rec.extra["step_cap"]
    _, rec = unlearn("rurk", mlp(), d, SEED, preset="paper", overrides={**base, "cosine_t_max": 5})
    assert rec.steps == 20 and "reading 1" in rec.extra["step_cap"]
    _, rec = unlearn("neggrad_plus", mlp(), d, SEED, preset="paper", overrides={"batch_size": 32, "epochs": 3})
    assert rec.steps == 30


def test_rurk_forget_stream_cycles_with_fresh_shuffles_and_spares_retain_order():
    d = ided_data()
    model, rec = unlearn("rurk", Recorder(), d, SEED, preset="paper", overrides={"batch_size": 32, "epochs": 2, "tau": 0.0})
    seen = model.seen
    assert len(seen) == 3 * rec.steps == 60  # retain, forget, perturbed pass per step (gaussian: no crafting)
    retain_batches = [ids_of(x) for x in seen[0::3]]
    forget_batches = [ids_of(x) for x in seen[1::3]]
    assert [ids_of(x) for x in seen[2::3]] == forget_batches  # τ = 0: the copies are the forget batch

    # retain: exactly the order of a lone retain stream with the loader seed (forget stream has its own generator)
    alone = BatchStream(d.retain, 32, d.loader_seed)
    expected = [ids_of(x) for _ in range(2) for x, _ in alone.epoch()]
    assert retain_batches == expected

    # forget: 2 batches (32 + 18) per pass, 10 passes; every pass covers S_f once, each with a fresh shuffle
    passes = [forget_batches[i] + forget_batches[i + 1] for i in range(0, 20, 2)]
    assert [len(b) for b in forget_batches[:2]] == [32, 18]
    for p in passes:
        assert sorted(p) == list(range(500, 550))
    assert len({tuple(p) for p in passes}) == len(passes)
    assert passes[0] != list(range(500, 550))


def test_rurk_forget_stream_does_not_share_retain_generator():
    """Changing the forget set leaves the retain order (and so a λ=0 run on a no-BN model) unchanged."""
    d1, d2 = ided_data(300, 50), ided_data(300, 80)
    assert torch.equal(d1.retain.x, d2.retain.x) and torch.equal(d1.retain.y, d2.retain.y)
    over = {"batch_size": 32, "epochs": 1, "lambda_f": 0.0, "lambda_a": 0.0}
    m1, _ = unlearn("rurk", Recorder(), d1, SEED, preset="paper", overrides=over)
    m2, _ = unlearn("rurk", Recorder(), d2, SEED, preset="paper", overrides=over)
    assert [ids_of(x) for x in m1.seen[0::3]] == [ids_of(x) for x in m2.seen[0::3]]
    assert same_state(state(m1.net), state(m2.net))


def batches(data: UnlearnData, n_r=64, n_f=40):
    return (data.retain.x[:n_r], data.retain.y[:n_r]), (data.forget.x[:n_f], data.forget.y[:n_f])


def test_loss_composition_random_probe(originals, data):
    model = copy.deepcopy(originals["mlp"]).train()
    (xr, yr), (xf, yf) = batches(data)
    tau, v = 0.1, 2
    pb = perturb_forget(make_probe("gaussian"), model, xf, yf, tau, v, torch.Generator().manual_seed(5), 10)
    # the copies are v fresh gaussian draws of std τ around the forget batch, labelled with the true labels
    z = torch.randn((v * len(xf), 1, 8, 8), generator=torch.Generator().manual_seed(5))
    assert torch.allclose(pb.x, (xf.repeat(v, 1, 1, 1) + tau * z).clamp(0, 1), atol=1e-6)
    assert pb.sign == -1.0 and torch.equal(pb.labels, yf.repeat(v))
    assert not torch.equal(pb.x[: len(xf)], pb.x[len(xf):])
    w = Weights(retain=1.0, forget=0.3, adv=0.7)
    loss, logs = objective(model, (xr, yr), (xf, yf), pb, w)
    with torch.no_grad():
        l_r, l_f = F.cross_entropy(model(xr), yr), F.cross_entropy(model(xf), yf)
        l_adv = F.cross_entropy(model(pb.x), yf.repeat(v))
    assert float(loss.detach()) == pytest.approx(float(l_r - 0.3 * l_f - 0.7 * l_adv), abs=1e-6)
    for k, ref in (("L_r", l_r), ("L_f", l_f), ("L_adv", l_adv)):
        assert float(logs[k]) == pytest.approx(float(ref), abs=1e-6)
    # NegGrad+ form: no perturbed term
    loss, logs = objective(model, (xr, yr), (xf, yf), None, Weights(retain=0.999, forget=0.001))
    assert float(loss.detach()) == pytest.approx(float(0.999 * l_r - 0.001 * l_f), abs=1e-6) and "L_adv" not in logs


@pytest.mark.parametrize("probe,params", [("fgsm", {}), ("pgd", {"steps": 2}), ("pgd-recall", {"steps": 2})])
def test_loss_composition_attack_probes(probe, params, originals, data):
    model = copy.deepcopy(originals["mlp"]).train()
    (xr, yr), (xf, yf) = batches(data, n_f=100)
    v = 3
    pb = perturb_forget(make_probe(probe, **params), model, xf, yf, 0.05, v, torch.Generator().manual_seed(1), 10)
    assert model.training  # crafting ran in eval mode and restored train mode
    assert all(p.requires_grad for p in model.parameters())
    y = yf.repeat(v)
    if probe == "pgd-recall":  # keeps the paper's sign, true labels
        assert pb.sign == -1.0 and torch.equal(pb.labels, y)
    else:  # targeted: trained towards a random y′ ≠ y (per sample and copy)
        assert pb.sign == +1.0 and bool((pb.labels != y).all())
        assert pb.labels.min() >= 0 and pb.labels.max() < 10 and len(set(pb.labels.tolist())) > 5
    w = Weights(retain=1.0, forget=0.03, adv=0.5)
    loss, _ = objective(model, (xr, yr), (xf, yf), pb, w)
    with torch.no_grad():
        l_r, l_f = F.cross_entropy(model(xr), yr), F.cross_entropy(model(xf), yf)
        l_adv = F.cross_entropy(model(pb.x), pb.labels)
    sign = -1 if probe == "pgd-recall" else +1
    assert float(loss.detach()) == pytest.approx(float(l_r - 0.03 * l_f + sign * 0.5 * l_adv), abs=1e-6)


@pytest.mark.parametrize("arch", ["mlp", "bn"])
def test_lambda_zero_reproduces_gd(arch, originals, data):
    """λ_f = λ_a = 0 gives GD configured with RURK's optimiser, schedule, clipping and seeds. On a model with
    BatchNorm the parameters still agree, and the running statistics agree iff bn_update_on_forget=False."""
    original = originals[arch]
    gd_over = {"lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4, "schedule": "cosine", "clip_grad_norm": 1.0,
               "epochs": 2, "batch_size": 128}
    gd, _ = unlearn("gd", original, data, SEED, preset="paper", overrides=gd_over)
    zero = {"lambda_f": 0.0, "lambda_a": 0.0}
    for bn_update in (True, False):
        r, rec = unlearn("rurk", original, data, SEED, preset="paper", overrides={**zero, "bn_update_on_forget": bn_update})
        assert rec.steps == 8 and rec.extra["bn_update_on_forget"] is bn_update
        assert max_param_diff(r, gd) <= 1e-6, max_param_diff(r, gd)
        buffers_equal = same_state(dict(r.named_buffers()), dict(gd.named_buffers()))
        assert buffers_equal == (arch == "mlp" or not bn_update)
    r, _ = unlearn("rurk", original, data, SEED, preset="paper", overrides={"lambda_f": 0.3})  # λ ≠ 0 moves away from GD
    assert max_param_diff(r, gd) > 1e-5


def test_gaussian_tau_zero_gives_adv_loss_equal_forget_loss(originals, data):
    model = originals["bn"]
    (xr, yr), (xf, yf) = batches(data)
    pb = perturb_forget(make_probe("gaussian"), model, xf, yf, 0.0, 1, torch.Generator().manual_seed(0), 10)
    assert torch.equal(pb.x, xf)
    _, rec = unlearn("rurk", model, data, SEED, preset="paper", overrides={"tau": 0.0})
    assert rec.history["L_adv"] == rec.history["L_f"]
    assert rec.extra["final"]["L_adv"] == rec.extra["final"]["L_f"]
    _, rec = unlearn("rurk", model, data, SEED, preset="paper", overrides={"tau": 0.1})
    assert rec.history["L_adv"] != rec.history["L_f"]


@pytest.mark.parametrize("probe", sorted(PROBES))
def test_perturbation_bounds(probe, originals, data):
    model = copy.deepcopy(originals["mlp"]).train()
    xf, yf = data.forget.x, data.forget.y
    tau = 0.05
    params = {"steps": 3} if probe.startswith("pgd") else {}
    pb = perturb_forget(make_probe(probe, **params), model, xf, yf, tau, 2, torch.Generator().manual_seed(0), 10)
    x = xf.repeat(2, 1, 1, 1)
    assert pb.x.shape == x.shape and not pb.x.requires_grad
    assert float(pb.x.min()) >= 0.0 and float(pb.x.max()) <= 1.0
    dist = (pb.x - x).flatten(1)
    if probe in ("fgsm", "pgd", "pgd-recall", "uniform-linf"):
        assert float(dist.abs().max()) <= tau + 1e-6
    if probe == "uniform-l2":
        assert float(dist.norm(dim=1).max()) <= tau + 1e-6
    assert float(dist.abs().max()) > 0


def _target_prob(model: nn.Module, data: UnlearnData, probe, tau: float) -> float:
    """Mean probability of the drawn targets y′ on copies crafted on ``model`` (same draws for every model)."""
    pb = perturb_forget(probe, model, data.forget.x, data.forget.y, tau, 4, torch.Generator().manual_seed(9), 10)
    model.eval()
    with torch.no_grad():
        return float(F.softmax(model(pb.x), 1).gather(1, pb.labels[:, None]).mean())


@pytest.mark.parametrize("probe,params", [("fgsm", {}), ("pgd", {"steps": 3, "alpha": 0.05})])
def test_targeted_rurk_pushes_perturbed_forget_samples_towards_the_target(probe, params, originals, data):
    original = originals["mlp"]
    over = {"probe": probe, "probe_params": params, "tau": 0.1, "lambda_f": 0.0, "lr": 0.1, "epochs": 6}
    runs = {}
    for name, lam in (("with", 1.0), ("without", 0.0), ("wrong_sign", -1.0)):
        runs[name], rec = unlearn("rurk", original, data, SEED, preset="paper", overrides={**over, "lambda_a": lam})
        assert rec.extra["probe_targeted"] is True
    p = make_probe(probe, **params)
    prob = {name: _target_prob(m, data, p, 0.1) for name, m in [("original", original), *runs.items()]}
    for other in ("original", "without", "wrong_sign"):
        assert prob["with"] > prob[other] + 0.05, prob


def test_bn_update_on_forget_false_leaves_running_stats_to_the_retain_pass(originals, data):
    (xr, yr), (xf, yf) = batches(data)
    pb = PerturbedBatch(xf.flip(0), yf, -1.0)
    ref = copy.deepcopy(originals["bn"]).train()
    ref(xr)  # the retain pass alone
    for bn_update in (False, True):
        model = copy.deepcopy(originals["bn"]).train()
        objective(model, (xr, yr), (xf, yf), pb, Weights(1, 0.1, 0.1), bn_update_on_forget=bn_update)
        assert same_state(dict(model.named_buffers()), dict(ref.named_buffers())) == (not bn_update)
        assert model[1].momentum == 0.1  # restored
    # the context manager alone: batch statistics are still used for normalisation
    model = copy.deepcopy(originals["bn"]).train()
    before = state(model)
    with bn_stats_frozen(model):
        out_frozen = model(xf)
    assert same_state(state(model), before)
    assert torch.allclose(out_frozen, copy.deepcopy(originals["bn"]).train()(xf))


def test_probe_generator_is_its_own(originals, data):
    """RURK's probe noise comes from its own generator (seeded from the run seed), not the global RNG."""
    g1 = make_generator(SEED, "rurk-probe", "cpu")
    g2 = make_generator(SEED, "rurk-probe", "cpu")
    assert torch.equal(torch.randn(5, generator=g1), torch.randn(5, generator=g2))
    spec = get_method("rurk")
    cfg = spec.config("paper")
    outs = []
    for global_seed in (1, 2):  # call the method directly: unlearn() would reseed the global RNG
        torch.manual_seed(global_seed)
        outs.append(spec.fn(originals["mlp"], data, cfg, SEED)[0])
    assert same_state(state(outs[0]), state(outs[1]))
