"""Probes (residual-knowledge.md §5, §9): tau = 0, sampler geometry, attack bounds and effect,
model-state restoration, and the RURK calling convention."""

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from rurk.perturb import PROBES, Perturbed, block_generator, make_probe
from rurk.torchutil import derive_seed

ADVERSARIAL = ["fgsm", "pgd", "pgd-recall"]


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def linear_model(d=64, classes=5, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(d, classes))


@pytest.fixture(scope="module")
def batch():
    g = gen(1)
    x = torch.rand(32, 1, 8, 8, generator=g)
    x[:, :, 0, :] = 0.0  # pixels exactly at the bounds
    x[:, :, -1, :] = 1.0
    y = torch.randint(0, 5, (32,), generator=g)
    return x, y


def test_registry_names():
    assert set(PROBES) == {"gaussian", "uniform-linf", "uniform-l2", "fgsm", "pgd", "pgd-recall"}
    p = make_probe("pgd", steps=3, alpha=0.01)
    assert (p.steps, p.alpha, p.random_start) == (3, 0.01, True)
    assert make_probe("pgd").params == {"alpha": 2 / 255, "steps": 10, "random_start": True}
    assert make_probe("pgd-recall").craft_on == "both"
    with pytest.raises(ValueError):
        make_probe("nope")
    with pytest.raises(TypeError):
        make_probe("gaussian", std=1)


@pytest.mark.parametrize("name", sorted(PROBES))
def test_tau_zero_gives_clean_inputs(name, batch):
    x, y = batch
    model = linear_model()
    p = make_probe(name, steps=2) if "pgd" in name else make_probe(name)
    out = p.sample(model, x, y, 0.0, gen(3))
    assert isinstance(out, Perturbed)
    assert torch.equal(out.x, x)
    assert out.x.data_ptr() != x.data_ptr()
    if p.targeted:
        assert out.target is not None and (out.target != y).all()
    else:
        assert out.target is None


@pytest.mark.parametrize("name", ["gaussian", "uniform-linf", "uniform-l2"])
def test_random_probes_ignore_model_and_are_seeded(name, batch):
    x, y = batch
    p = make_probe(name)
    a = p.sample(None, x, y, 0.05, gen(7)).x
    b = p.sample(linear_model(), x, y, 0.05, gen(7)).x
    c = p.sample(None, x, y, 0.05, gen(8)).x
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= 0 and a.max() <= 1


def test_gaussian_tau0_counts_equal_clean_prediction():
    # k = c * 1[m(x) = y] when every copy is produced by the sampler at tau = 0
    model = linear_model()
    x = torch.rand(10, 1, 8, 8, generator=gen(5))
    y = torch.randint(0, 5, (10,), generator=gen(6))
    c = 30
    p = make_probe("gaussian")
    xs = p.sample(None, x, y, 0.0, gen(0), copies=c).x  # tiled: copy i of all samples
    with torch.no_grad():
        hits = (model(xs).argmax(1) == y.repeat(c)).view(c, -1).sum(0)
        clean = (model(x).argmax(1) == y).long()
    assert torch.equal(hits, c * clean)


def test_uniform_linf_geometry():
    p = make_probe("uniform-linf")
    tau = 0.03
    x = torch.full((4000, 16), 0.5)
    delta = p.sample(None, x, torch.zeros(4000, dtype=torch.long), tau, gen(0)).x - x
    assert delta.abs().max() <= tau + 1e-7
    # the box is filled: uniform marginal on [-tau, tau]
    assert delta.abs().max() > 0.999 * tau
    ks = stats.kstest((delta.flatten() / tau).double().numpy(), stats.uniform(-1, 2).cdf)
    assert ks.pvalue > 1e-3
    # with clipping the bound still holds
    x2 = torch.rand(500, 16, generator=gen(2)).round()  # pixels exactly 0 or 1
    d2 = p.sample(None, x2, torch.zeros(500, dtype=torch.long), tau, gen(1)).x - x2
    assert d2.abs().max() <= tau + 1e-7


def _radii_correct(d, n, seed):
    p = make_probe("uniform-l2")
    tau = 0.2
    x = torch.full((n, d), 0.5)  # far from the bounds: no clipping at this tau
    noise = p.noise((n, d), gen(seed), torch.device("cpu"), torch.float64)
    delta = p.shift(x.double(), tau, noise) - x.double()  # before clipping
    return (delta.norm(dim=1) / tau).numpy()


def _radii_wrong(d, n, seed):
    # the sampler to avoid: tau * u * g/||g|| (uniform radius, no 1/d power)
    g = torch.randn(n, d, generator=gen(seed), dtype=torch.float64)
    u = torch.rand(n, generator=gen(seed + 1), dtype=torch.float64)
    return (u[:, None] * g / g.norm(dim=1, keepdim=True)).norm(dim=1).numpy()


@pytest.mark.parametrize("d", [2, 8])
def test_uniform_l2_radial_law(d):
    r = _radii_correct(d, 3000, seed=d)
    assert r.max() <= 1 + 1e-9
    cdf = lambda s: np.clip(s, 0, 1) ** d  # noqa: E731  P(||delta|| <= s tau) = s^d
    assert stats.kstest(r, cdf).pvalue > 1e-3
    # the same test rejects the wrong sampler decisively
    assert stats.kstest(_radii_wrong(d, 3000, seed=d), cdf).pvalue < 1e-8


def test_uniform_l2_bound_after_sampling():
    p = make_probe("uniform-l2")
    tau = 0.05
    x = torch.full((2000, 1, 8, 8), 0.5)
    delta = (p.sample(None, x, torch.zeros(2000, dtype=torch.long), tau, gen(0)).x - x).flatten(1)
    norms = delta.norm(dim=1)
    assert norms.max() <= tau * (1 + 1e-5)
    assert np.median(norms.numpy()) > tau * 0.5 ** (1 / 64) * 0.99  # concentrated near the sphere (d = 64)


def test_gaussian_std():
    p = make_probe("gaussian")
    tau = 0.04
    x = torch.full((5000, 64), 0.5)  # 12 std from the bounds: clipping never happens
    delta = p.sample(None, x, torch.zeros(5000, dtype=torch.long), tau, gen(0)).x - x
    assert abs(delta.std().item() / tau - 1) < 0.01
    assert abs(delta.mean().item()) < 0.01 * tau


@pytest.mark.parametrize("name", ADVERSARIAL)
@pytest.mark.parametrize("tau", [0.002, 0.03, 0.2])
def test_attack_bounds(name, tau, batch):
    x, y = batch
    p = make_probe(name) if name == "fgsm" else make_probe(name, steps=4)
    out = p.sample(linear_model(), x, y, tau, gen(0)).x
    assert (out - x).abs().max() <= tau + 1e-6
    assert out.min() >= 0 and out.max() <= 1
    assert not out.requires_grad and out.grad_fn is None
    assert (out - x).abs().max() > 0.5 * min(tau, 2 / 255)  # it moved


def _mean_ce(model, x, label):
    with torch.no_grad():
        return nn.functional.cross_entropy(model(x), label).item()


@pytest.mark.parametrize("name", ["pgd", "pgd-recall"])
def test_pgd_descends_its_loss(name, batch):
    x, y = batch
    model = linear_model(seed=3)
    p = make_probe(name, steps=10)
    tau = 0.05
    with torch.no_grad():
        dr = p.draw(x, y, gen(4), num_classes=5)
    start = (x + tau * dr.noise).clamp(0, 1)  # the random start
    out = p.apply(model, x, y, tau, dr)
    label = out.target if name == "pgd" else y
    if name == "pgd":
        assert (label != y).all()
    before, after = _mean_ce(model, start, label), _mean_ce(model, out.x, label)
    assert after < before - 0.05


def test_fgsm_descends_target_loss(batch):
    x, y = batch
    model = linear_model(seed=3)
    p = make_probe("fgsm")
    out = p.sample(model, x, y, 0.05, gen(0))
    assert _mean_ce(model, out.x, out.target) < _mean_ce(model, x, out.target) - 0.05


class Recorder(nn.Module):
    """Records the training flag it sees at each forward."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x):
        self.seen.append(self.training)
        return x


def stateful_model():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), Recorder(), nn.Flatten(), nn.Dropout(0.5),
        nn.Linear(4 * 64, 5),
    )
    model.train()
    model[1].eval()  # a submodule in its own mode
    model[0].weight.requires_grad_(False)  # a frozen parameter
    return model


def _state(model):
    return [m.training for m in model.modules()], [p.requires_grad for p in model.parameters()]


@pytest.mark.parametrize("name", ADVERSARIAL)
def test_attack_restores_modes_and_flags(name, batch):
    x, y = batch
    model = stateful_model()
    before = _state(model)
    bn_stats = model[1].running_mean.clone()
    p = make_probe(name) if name == "fgsm" else make_probe(name, steps=2)
    with torch.inference_mode():  # crafting must work even from inside inference mode
        out = p.sample(model, x, y, 0.03, gen(0))
    assert _state(model) == before
    assert all(seen is False for seen in model[3].seen)  # crafted in eval mode
    assert all(q.grad is None for q in model.parameters())  # gradients w.r.t. the input only
    assert torch.equal(model[1].running_mean, bn_stats)
    assert not out.x.requires_grad


def test_sample_calling_convention(batch):
    x, y = batch
    model = linear_model()
    for name in sorted(PROBES):
        p = make_probe(name, steps=1) if "pgd" in name else make_probe(name)
        out = p.sample(model, x, y, 0.03, gen(0))
        assert out.x.shape == x.shape
        if p.targeted:
            assert out.target.shape == y.shape and (out.target != y).all()
        else:
            assert out.target is None
        tiled = p.sample(model, x, y, 0.03, gen(0), copies=3)
        assert tiled.x.shape == (3 * len(x),) + x.shape[1:]
        # one fresh draw per call
        assert not torch.equal(p.sample(model, x, y, 0.03, gen(0)).x, p.sample(model, x, y, 0.03, gen(1)).x)


def test_targets_are_uniform_over_wrong_labels():
    p = make_probe("fgsm")
    y = torch.zeros(20000, dtype=torch.long)
    x = torch.zeros(20000, 1)
    t = p.draw(x, y, gen(0), num_classes=5).target
    counts = torch.bincount(t, minlength=5).numpy()
    assert counts[0] == 0
    assert stats.chisquare(counts[1:]).pvalue > 1e-3


def test_input_checks():
    p = make_probe("gaussian")
    with pytest.raises(ValueError):
        p.sample(None, torch.full((2, 4), 2.0), torch.zeros(2, dtype=torch.long), 0.1)
    with pytest.raises(ValueError):
        p.sample(None, torch.rand(2, 4), torch.zeros(2, dtype=torch.long), -0.1)
    with pytest.raises(ValueError):
        p.sample(None, torch.rand(2, 4), torch.zeros(3, dtype=torch.long), 0.1)
    with pytest.raises(ValueError):
        make_probe("pgd").sample(None, torch.rand(2, 4), torch.zeros(2, dtype=torch.long), 0.1)


def test_block_seeds_are_stable():
    # stable across processes (no salted hash()); distinct per block and probe
    assert derive_seed(0, "gaussian", 0) == derive_seed(0, "gaussian", 0)
    assert len({derive_seed(0, "gaussian", b) for b in range(100)}) == 100
    assert derive_seed(0, "gaussian", 0) != derive_seed(0, "uniform-l2", 0)
    # pinned: BLAKE2b-64 of "131|'gaussian'|2", little-endian, top bit cleared
    assert derive_seed(131, "gaussian", 2) == 1389999295810717976
    g1, g2 = block_generator(131, "gaussian", 2, "cpu"), block_generator(131, "gaussian", 2, "cpu")
    assert torch.equal(torch.randn(5, generator=g1), torch.randn(5, generator=g2))
