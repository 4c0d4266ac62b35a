"""EU-k, CF-k, SCRUB and SSD (spec: baselines.md §6–§8)."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rurk.data.tensordata import TensorData
from rurk.methods import get_method, unlearn
from rurk.methods._tail import select_tail
from rurk.methods.base import UnlearnData
from rurk.methods.scrub import SCRUBConfig, kl_t
from rurk.methods.ssd import SynapticDampener
from rurk.models import build_model
from rurk.train import BatchStream, OptimConfig, fit, prepare_model


# ---------------------------------------------------------------------------------------------------- fixtures
def tensordata(x, y):
    return TensorData(x, y, torch.arange(len(y)))


@pytest.fixture(scope="module")
def digits():
    """300 sklearn digits (1x8x8 in [0,1]); 60 forget, 240 retain."""
    from sklearn.datasets import load_digits

    d = load_digits()
    g = torch.Generator().manual_seed(0)
    rows = torch.randperm(len(d.target), generator=g)[:300]
    x = torch.tensor(d.images, dtype=torch.float32)[rows, None] / 16.0
    y = torch.tensor(d.target, dtype=torch.long)[rows]
    return UnlearnData(retain=tensordata(x[60:], y[60:]), forget=tensordata(x[:60], y[:60]), num_classes=10)


@pytest.fixture(scope="module")
def original(digits):
    """A briefly trained TinyCNN8 (so importances and KL terms are those of a fitted model)."""
    torch.manual_seed(0)
    model = build_model("tinycnn8", 10, (1, 8, 8))
    fit(model, digits.train, OptimConfig(lr=0.05, epochs=2, batch_size=32), seed=0, progress=False)
    return model.eval()


@pytest.fixture(scope="module")
def resnet():
    """ResNet-18 (width 0.25) on 16x16 synthetic images, 5 classes; 32 retain, 8 forget. Tests never mutate it."""
    torch.manual_seed(0)
    model = prepare_model(build_model("resnet18", 5, (3, 16, 16), width=0.25))
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(40, 3, 16, 16, generator=g), torch.randint(0, 5, (40,), generator=g)
    data = UnlearnData(retain=tensordata(x[8:], y[8:]), forget=tensordata(x[:8], y[:8]), num_classes=5)
    # make it look trained: non-trivial BN affine parameters, biases and running statistics
    model.train()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
        model(x.contiguous(memory_format=torch.channels_last))
    return model.eval(), data


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_state(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def in_tail(name: str, tail: list[str]) -> bool:
    return any(name == t or name.startswith(t + ".") for t in tail)


# ---------------------------------------------------------------------------------------------------- configs
def test_tail_selection():
    model = build_model("tinycnn8", 10, (1, 8, 8))
    assert select_tail(model) == ["body.fc1", "head"]
    assert select_tail(model, 1) == ["head"]
    assert select_tail(build_model("resnet18", 5, (3, 16, 16), width=0.25)) == ["body.layer4", "head"]
    with pytest.raises(TypeError, match="tail_modules"):
        select_tail(nn.Sequential(nn.Linear(2, 2)))
    assert select_tail(nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 2)), 1) == ["2"]


# ---------------------------------------------------------------------------------------------------- all four
RUN = {
    "euk": dict(epochs=2, batch_size=64),
    "cfk": dict(epochs=2, batch_size=64),
    "scrub": dict(epochs=2, batch_size=64),
    "ssd": dict(alpha=1.0, batch_size=64),
}


@pytest.mark.parametrize("name", sorted(RUN))
def test_runs_deterministic_and_leaves_original(name, digits, original):
    before = snapshot(original)
    m1, r1 = unlearn(name, original, digits, seed=3, overrides=RUN[name])
    m2, r2 = unlearn(name, original, digits, seed=3, overrides=RUN[name])
    assert_same_state(snapshot(original), before)
    assert_same_state(snapshot(m1), snapshot(m2))
    assert r1.method == name and r1.config == r2.config and not r1.diverged
    assert any(not torch.equal(v, before[k]) for k, v in snapshot(m1).items()), "the method changed nothing"
    assert all(p.requires_grad for p in m1.parameters())
    assert m1 is not original


# ---------------------------------------------------------------------------------------------------- EU-k / CF-k
def test_cfk_trains_only_the_tail_and_keeps_frozen_bn_stats(resnet):
    model, data = resnet
    before = snapshot(model)
    out, rec = unlearn("cfk", model, data, seed=1, overrides=dict(epochs=2, batch_size=16, lr=0.05))
    tail = rec.extra["tail"]
    assert tail == ["body.layer4", "head"]
    after = snapshot(out)
    frozen = [k for k in after if not in_tail(k, tail)]
    assert any("running_mean" in k for k in frozen) and any("weight" in k for k in frozen)
    for k in frozen:  # parameters AND BN running stats / counters before the tail: bit-identical
        assert torch.equal(after[k], before[k]), k
    # the tail did train, and its BN layers (train mode) updated their statistics
    for k in ("head.weight", "body.layer4.1.conv2.weight", "body.layer4.0.bn1.weight",
              "body.layer4.0.bn1.running_mean"):
        assert not torch.equal(after[k], before[k]), k
    assert rec.steps == 2 * 2 and rec.extra["reinit"] is False
    assert all(p.requires_grad for p in out.parameters())
    assert_same_state(snapshot(model), before)


def test_cfk_frozen_part_would_change_in_train_mode(resnet):
    """Guard for the test above: a forward pass in train mode does move the frozen BN statistics."""
    model, data = copy.deepcopy(resnet[0]), resnet[1]
    before = model.body.bn1.running_mean.clone()
    model.train()
    with torch.no_grad():
        model(data.retain.x[:16])
    assert not torch.equal(model.body.bn1.running_mean, before)


def test_euk_reinitialises_exactly_the_tail(resnet, monkeypatch):
    import rurk.methods._tail as tail

    model, data = resnet
    before = snapshot(model)
    # no training (0 epochs are refused: the fine-tuning is skipped here): the result is exactly Original with the
    # tail re-initialised from the run seed
    monkeypatch.setattr(tail, "finetune_on_retain", lambda *a, **k: None)
    out, rec = unlearn("euk", model, data, seed=5)
    expected = copy.deepcopy(model)
    expected.reset_parameters_of(["body.layer4", "head"], generator=torch.Generator().manual_seed(5))
    assert_same_state(snapshot(out), snapshot(expected))
    after = snapshot(out)
    for k in after:
        if in_tail(k, rec.extra["tail"]):
            if k.endswith("running_mean"):
                assert torch.equal(after[k], torch.zeros_like(after[k])), k
            elif k.endswith("running_var"):
                assert torch.equal(after[k], torch.ones_like(after[k])), k
            elif not k.endswith("num_batches_tracked"):
                assert not torch.equal(after[k], before[k]), k
        else:
            assert torch.equal(after[k], before[k]), k
    assert rec.steps == 0 and rec.extra["reinit"] is True


def test_euk_differs_from_cfk_and_freezes_the_prefix(resnet):
    model, data = resnet
    before = snapshot(model)
    kw = dict(overrides=dict(epochs=1, batch_size=16))
    eu, rec = unlearn("euk", model, data, seed=2, **kw)
    cf, _ = unlearn("cfk", model, data, seed=2, **kw)
    eu_s, cf_s = snapshot(eu), snapshot(cf)
    for k in before:
        if in_tail(k, rec.extra["tail"]):
            if k.endswith("weight"):  # re-initialised: unlike Original and unlike the no-re-init run
                assert not torch.equal(eu_s[k], before[k]) and not torch.equal(eu_s[k], cf_s[k]), k
        else:
            assert torch.equal(eu_s[k], before[k]) and torch.equal(cf_s[k], before[k]), k
    assert all(p.requires_grad for p in eu.parameters())


def test_euk_integer_k_uses_the_counting_rule(digits, original):
    before = snapshot(original)
    out, rec = unlearn("euk", original, digits, seed=0, overrides=dict(k=1, epochs=1))
    assert rec.extra["tail"] == ["head"]
    after = snapshot(out)
    assert not torch.equal(after["head.weight"], before["head.weight"])
    for k in after:
        if not k.startswith("head."):
            assert torch.equal(after[k], before[k]), k


# ---------------------------------------------------------------------------------------------------- SCRUB
def test_kl_t_matches_hand_computation():
    t = torch.tensor([[1.0, 2.0, 0.0], [0.0, 0.0, 3.0]])
    s = torch.tensor([[0.0, 1.0, 1.0], [2.0, 0.0, -1.0]])
    T = 2.0

    def softmax(row):
        e = [math.exp(v / T) for v in row]
        return [v / sum(e) for v in e]

    total = 0.0
    for tr, sr in zip(t.tolist(), s.tolist()):
        pt, ps = softmax(tr), softmax(sr)
        total += sum(a * (math.log(a) - math.log(b)) for a, b in zip(pt, ps))
    expected = T * T / 2 * total
    assert kl_t(t, s, T).item() == pytest.approx(expected, rel=1e-6)
    assert kl_t(t, t, T).item() == 0.0
    assert kl_t(t, s, 1.0).item() != pytest.approx(expected, rel=1e-3)  # T enters


class SpyNet(nn.Module):
    """Linear model that logs, for every forward in train mode (= the student), which set the batch came from:
    forget inputs carry a 1 in feature 0, retain inputs a 0."""

    calls: list[str] = []

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        if self.training:
            marks = set(x[:, 0].tolist())
            assert len(marks) == 1, "a batch mixed forget and retain rows"
            SpyNet.calls.append("F" if marks == {1.0} else "R")
        return self.fc(x)


def spy_data():
    g = torch.Generator().manual_seed(0)
    xf, xr = torch.rand(70, 4, generator=g), torch.rand(100, 4, generator=g)
    xf[:, 0], xr[:, 0] = 1.0, 0.0
    return UnlearnData(retain=tensordata(xr, torch.randint(0, 3, (100,), generator=g)),
                       forget=tensordata(xf, torch.randint(0, 3, (70,), generator=g)), num_classes=3)


def test_scrub_max_steps_first_then_only_min_steps():
    data = spy_data()  # batch 32: 3 forget batches, 4 retain batches
    torch.manual_seed(0)
    model = SpyNet()
    SpyNet.calls = []
    cfg = SCRUBConfig(epochs=4, msteps=2, batch_size=32, lr=0.1, schedule="cosine")
    out, rec = unlearn("scrub", model, data, seed=0, cfg=cfg)
    expected = list("FFFRRRR" * 2 + "RRRR" * 2)
    assert SpyNet.calls == expected
    assert rec.steps == len(expected) == 22
    assert rec.extra["planned_steps"] == 22
    assert rec.extra["max_steps_per_epoch"] == [3, 3, 0, 0]
    assert rec.extra["min_steps_per_epoch"] == [4, 4, 4, 4]
    assert len(rec.history["max_kl"]) == 2 and len(rec.history["min_ce"]) == 4
    # the cosine schedule runs over the true 22 steps (the last step's lr), not over epochs x a fixed count
    assert rec.history["lr"][-1] == pytest.approx(0.5 * 0.1 * (1 + math.cos(math.pi * 21 / 22)))
    assert rec.extra["schedule"]["horizon"] == 22

    SpyNet.calls = []
    _, rec0 = unlearn("scrub", model, data, seed=0, cfg=SCRUBConfig(epochs=2, msteps=0, batch_size=32))
    assert SpyNet.calls == list("RRRR" * 2) and rec0.extra["max_steps_total"] == 0


def test_scrub_losses_use_teacher_and_weights():
    """With lr 0 the student stays equal to the teacher: the max-step loss −KL is 0 and the min-step loss is
    γ·CE exactly (the α·KL term vanishes), so the epoch's mean loss is γ·(sum of retain CE)/(all steps)."""
    data = spy_data()
    torch.manual_seed(0)
    model = SpyNet()
    SpyNet.calls = []
    cfg = SCRUBConfig(epochs=1, msteps=1, batch_size=32, gamma=2.5, alpha=7.0)
    object.__setattr__(cfg, "lr", 0.0)  # refused for users (it leaves the model as Original); here it isolates the losses
    _, rec = unlearn("scrub", model, data, seed=0, cfg=cfg)
    assert rec.history["max_kl"] == [0.0] and rec.history["min_kl"] == [0.0]
    ce = rec.history["min_ce"][0]
    assert rec.history["loss"][0] == pytest.approx(2.5 * ce * 4 / 7, rel=1e-6)
    with torch.no_grad():  # and min_ce is Original's mean batch CE over the retain stream (loader seed 7)
        batch_ce = [F.cross_entropy(model.fc(x), y).item() for x, y in BatchStream(data.retain, 32, 7).epoch()]
    assert ce == pytest.approx(sum(batch_ce) / len(batch_ce), rel=1e-6)


def test_scrub_max_step_moves_student_away_from_teacher(resnet):
    """γ = α = 0 leaves only the max-steps (and weight decay): they increase KL(teacher‖student) on S_f. (The
    student trains in train mode, so with BatchNorm it starts off the teacher; for a BN-free model ∇KL = 0 at
    student = teacher and the first max-steps are no-ops — a property of the algorithm.)"""
    model, data = resnet

    def forget_kl(msteps):
        cfg = SCRUBConfig(epochs=1, msteps=msteps, batch_size=16, lr=0.05, gamma=0.0, alpha=0.0)
        out, rec = unlearn("scrub", model, data, seed=0, cfg=cfg)
        assert rec.extra["max_steps_total"] == msteps
        with torch.no_grad():
            return kl_t(model(data.forget.x), out.eval()(data.forget.x), 4.0).item()

    assert forget_kl(1) > 3 * max(forget_kl(0), 1e-6)  # (eval-mode KL also moves with the BN running stats)


# ---------------------------------------------------------------------------------------------------- SSD
def test_ssd_dampen_hand_built_case():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    model[1].running_mean.fill_(0.3)
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
        model[0].bias.copy_(torch.tensor([5.0, 6.0]))
        model[1].weight.copy_(torch.tensor([7.0, 8.0]))
        model[1].bias.copy_(torch.tensor([9.0, 10.0]))
    # alpha = 10, lam = 1:  I_f > 10 I_D -> multiply by min(I_D/I_f, 1)
    imp_d = {"0.weight": torch.tensor([[1.0, 1.0], [0.0, 2.0]]), "0.bias": torch.tensor([1.0, 1.0]),
             "1.weight": torch.tensor([0.5, 0.0]), "1.bias": torch.tensor([1.0, 1.0])}
    imp_f = {"0.weight": torch.tensor([[20.0, 10.0], [0.0, 100.0]]), "0.bias": torch.tensor([11.0, 9.0]),
             "1.weight": torch.tensor([50.0, 0.0]), "1.bias": torch.tensor([0.0, 1e6])}
    counts = SynapticDampener(model, alpha=10.0, lam=1.0).dampen(imp_d, imp_f)
    # 0.weight: 20>10 yes (x1/20); 10>10 no (strict); 0>0 no; 100>20 yes (x2/100)
    assert torch.equal(model[0].weight, torch.tensor([[1.0 / 20, 2.0], [3.0, 4.0 * 2 / 100]]))
    assert torch.equal(model[0].bias, torch.tensor([5.0 / 11, 6.0]))
    assert torch.equal(model[1].weight, torch.tensor([7.0 * 0.5 / 50, 8.0]))
    assert torch.equal(model[1].bias, torch.tensor([9.0, 10.0 * 1 / 1e6]))
    assert counts == {"0.weight": 2, "0.bias": 1, "1.weight": 1, "1.bias": 1}
    for k, v in model.named_buffers():
        assert torch.equal(v, buffers[k]), k

    # lam large: the factor is capped at 1, so selected parameters stay as they are
    w = model[0].weight.clone()
    SynapticDampener(model, alpha=10.0, lam=1000.0).dampen(imp_d, imp_f)
    assert torch.equal(model[0].weight, w)


def test_ssd_importance_is_mean_of_squared_batch_gradients():
    torch.manual_seed(0)
    lin = nn.Linear(4, 3)
    x, y = torch.randn(10, 4), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    data = tensordata(x, y)
    with torch.no_grad():
        r = torch.softmax(lin(x), 1) - F.one_hot(y, 3).float()  # dCE_i/dlogits
    gw = r[:, :, None] * x[:, None, :]  # per-sample dCE_i/dW
    # batch 1: the mean over samples of per-sample squared gradients (order-free)
    imp = SynapticDampener(lin, alpha=1.0, batch_size=1).importance(data)
    assert torch.allclose(imp["weight"], gw.square().mean(0), atol=1e-6)
    assert torch.allclose(imp["bias"], r.square().mean(0), atol=1e-6)
    # one batch: the square of the batch-mean gradient
    imp = SynapticDampener(lin, alpha=1.0, batch_size=16).importance(data)
    assert torch.allclose(imp["weight"], gw.mean(0).square(), atol=1e-6)


def test_ssd_importance_in_eval_mode_leaves_bn_alone():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 3))
    model[1].running_mean.normal_()
    model.train()
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    x, y = torch.randn(12, 4), torch.randint(0, 3, (12,))
    imp = SynapticDampener(model, alpha=1.0, batch_size=32).importance(tensordata(x, y))
    assert model.training
    for k, v in model.named_buffers():
        assert torch.equal(v, buffers[k]), k
    model.eval()
    grads = torch.autograd.grad(F.cross_entropy(model(x), y), list(model.parameters()))
    for (n, _), g in zip(model.named_parameters(), grads):
        assert torch.allclose(imp[n], g.square(), atol=1e-7), n


def test_ssd_uses_full_training_set(digits, original):
    out, rec = unlearn("ssd", original, digits, seed=0, overrides=dict(alpha=1.0, batch_size=64))
    assert rec.extra["dampened"] > 0 and rec.extra["importance_batches"] == {"full": 5, "forget": 1}

    def manual(full: TensorData):
        m = prepare_model(copy.deepcopy(original))
        d = SynapticDampener(m, alpha=1.0, batch_size=64, loader_seed=digits.loader_seed)
        d.dampen(d.importance(full), d.importance(digits.forget))
        return snapshot(m)

    assert_same_state(snapshot(out), manual(digits.train))
    retain_only = manual(digits.retain)
    assert any(not torch.equal(v, retain_only[k]) for k, v in snapshot(out).items())
    assert rec.steps == 0


def test_ssd_reference_order_matches_a_hand_computed_ssd_on_fixed_batches():
    """Default order (reference code): the full set as retain then forget, unshuffled, in batches of B. A
    softmax-regression model gives closed-form batch gradients (p − onehot)ᵀx / |batch|, from which I_D, I_f and
    the dampened weights are computed by hand here."""
    from rurk.methods import unlearn
    from rurk.methods.base import UnlearnData

    torch.manual_seed(3)
    lin = nn.Linear(4, 3)
    xr, yr = torch.rand(7, 4), torch.tensor([0, 1, 2, 0, 1, 2, 0])
    xf, yf = torch.rand(3, 4) * 3, torch.tensor([1, 1, 1])
    data = UnlearnData(retain=tensordata(xr, yr), forget=tensordata(xf, yf), num_classes=3)
    B, alpha, lam = 4, 1.5, 0.8

    def importance(x, y):
        w, b = torch.zeros(3, 4), torch.zeros(3)
        batches = [(x[i:i + B], y[i:i + B]) for i in range(0, len(x), B)]
        for xb, yb in batches:
            with torch.no_grad():
                r = (torch.softmax(lin(xb), 1) - F.one_hot(yb, 3).float()) / len(xb)
            w += (r.T @ xb).square()
            b += r.sum(0).square()
        return w / len(batches), b / len(batches)

    (dw, db), (fw, fb) = importance(torch.cat([xr, xf]), torch.cat([yr, yf])), importance(xf, yf)
    expect = {}
    for name, p, i_d, i_f in (("weight", lin.weight, dw, fw), ("bias", lin.bias, db, fb)):
        beta = torch.where(i_f > alpha * i_d, (lam * i_d / i_f).clamp(max=1.0), torch.ones_like(i_d))
        expect[name] = p.detach() * beta
    out, rec = unlearn("ssd", lin, data, seed=0, overrides=dict(alpha=alpha, lam=lam, batch_size=B))
    assert rec.extra["dampened"] > 0
    for name, v in out.state_dict().items():
        assert torch.allclose(v, expect[name], atol=1e-6), name
    # the shuffled order is another method: different batches, different dampening here
    shuf, _ = unlearn("ssd", lin, data, seed=0, overrides=dict(alpha=alpha, lam=lam, batch_size=B, shuffle=True))
    assert not torch.allclose(shuf.weight, expect["weight"], atol=1e-6)
