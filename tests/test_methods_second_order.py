"""CR, Fisher forgetting and NTK forgetting against closed forms (spec: baselines.md §9-§11).

Every model here is a tiny local Classifier-shaped module (``norm``, ``body``, ``head``, ``features``), mostly in
float64 so that closed forms can be compared tightly.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import scipy.optimize
import torch
import torch.nn.functional as F
from torch import nn

from rurk.data.tensordata import TensorData
from rurk.methods import REGISTRY, load_all
from rurk.methods.base import MethodRecord, UnlearnData, unlearn
from rurk.methods.cr import CertifiedRemoval, signs, with_bias
from rurk.methods.fisher import FisherConfig, FisherForgetting, fisher_diagonal, fisher_diagonal_loop
from rurk.methods.ntk import NTKConfig, NTKForgetting, NTKMemoryError, ntk_scale


# ---------------------------------------------------------------------------------------------- tiny models
class TinyNet(nn.Module):
    """conv3x3 (1→3) → BN → ReLU → maxpool → Linear(48→6) → tanh → head Linear(6→C), on 1×8×8 inputs."""

    def __init__(self, num_classes: int = 3, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.norm = nn.Identity()
        self.body = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.MaxPool2d(2),
                                  nn.Flatten(), nn.Linear(48, 6), nn.Tanh())
        self.head = nn.Linear(6, num_classes)
        bn = self.body[1]
        with torch.no_grad():  # non-trivial eval statistics, so that eval mode matters
            bn.running_mean.uniform_(-0.1, 0.1)
            bn.running_var.uniform_(0.5, 1.5)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(0.1, 0.3)
            self.head.weight.mul_(3)

    def features(self, x):
        return self.body(self.norm(x))

    def forward(self, x):
        return self.head(self.features(x))


class SoftmaxRegression(nn.Module):
    """logits = W x + b: Classifier-shaped with an empty body."""

    def __init__(self, d: int, num_classes: int):
        super().__init__()
        self.norm = nn.Identity()
        self.body = nn.Identity()
        self.head = nn.Linear(d, num_classes)

    def features(self, x):
        return x

    def forward(self, x):
        return self.head(x)


class LinearInParams(nn.Module):
    """Linear in all its parameters: head(tanh(flatten(x) R)) + flatten(conv(x)) M with fixed buffers R, M, so the
    NTK linearisation is exact. Includes a convolution (the im2col path) and two Linear-type parameter groups."""

    def __init__(self, num_classes: int = 3, hidden: int = 5):
        super().__init__()
        torch.manual_seed(1)
        self.norm = nn.Identity()
        self.register_buffer("proj", torch.randn(36, hidden) / 6)
        self.body = nn.Identity()
        self.head = nn.Linear(hidden, num_classes)
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.register_buffer("mix", torch.randn(72, num_classes) / 8)

    def features(self, x):
        return torch.tanh(x.flatten(1) @ self.proj)

    def forward(self, x):
        return self.head(self.features(x)) + self.conv(x).flatten(1) @ self.mix


def make_data(n_r: int = 24, n_f: int = 6, c: int = 3, seed: int = 0, shape=(1, 8, 8), **kw) -> UnlearnData:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n_r + n_f, *shape, generator=g)
    y = torch.randint(0, c, (n_r + n_f,), generator=g)
    idx = torch.arange(n_r + n_f)
    return UnlearnData(TensorData(x[:n_r], y[:n_r], idx[:n_r]), TensorData(x[n_r:], y[n_r:], idx[n_r:]), c, **kw)


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_state(a: dict, b: dict, atol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=atol, msg=k)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


# ---------------------------------------------------------------------------------------------- CR
def _logreg_refit(phi: np.ndarray, z: np.ndarray, lam: float) -> np.ndarray:
    """Independent reference: per class, minimise (1/n)Σ log(1+exp(−z wᵀφ)) + (λ/2)‖w‖² with scipy (numpy)."""
    n = phi.shape[0]
    out = []
    for c in range(z.shape[1]):
        zc = z[:, c]

        def fun(w):
            m = zc * (phi @ w)
            return np.logaddexp(0, -m).mean() + 0.5 * lam * w @ w, phi.T @ (-zc / (1 + np.exp(m))) / n + lam * w

        r = scipy.optimize.minimize(fun, np.zeros(phi.shape[1]), jac=True, method="L-BFGS-B",
                                    options=dict(maxiter=2000, gtol=1e-13, ftol=1e-16))
        out.append(r.x)
    return np.stack(out)


def test_cr_newton_step_matches_refit_without_forget_samples():
    g = torch.Generator().manual_seed(0)
    n, d, c, n_f, lam = 600, 6, 3, 6, 0.1
    phi = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = (phi @ torch.randn(d, c, generator=g, dtype=torch.float64) + 0.5 * torch.randn(n, c, generator=g,
                                                                                      dtype=torch.float64)).argmax(1)
    phi1 = with_bias(phi)
    cr = CertifiedRemoval(lam=lam, lbfgs_iters=100)
    w, info = cr.fit(phi1, y, c)
    assert info["fit_grad_norm_max"] < 1e-6
    w_full_ref = _logreg_refit(phi1.numpy(), signs(y, c).numpy(), lam)
    assert rel(w, torch.from_numpy(w_full_ref)) < 1e-6  # the L-BFGS fit is the optimum on S

    phi_r, y_r = phi1[n_f:], y[n_f:]  # forget = the first 1% of the samples
    w_new, rinfo = cr.newton_remove(w, phi_r, y_r)
    w_refit = torch.from_numpy(_logreg_refit(phi_r.numpy(), signs(y_r, c).numpy(), lam))
    err_newton, err_before = rel(w_new, w_refit), rel(w, w_refit)
    assert err_newton < 1e-2, err_newton  # stated tolerance: forget set = 1% of n
    assert err_newton < 0.02 * err_before, (err_newton, err_before)  # much closer than the un-updated head
    # the reported residual ‖∇J_c^r(w_new)‖ is small and obeys the a-posteriori bound
    assert rinfo["residual_norm_max"] < 1e-5
    assert rinfo["residual_norm_max"] < 1e-2 * max(rinfo["grad_norm_before"])  # Newton: quadratic in ‖∇‖
    for r, b in zip(rinfo["residual_norm"], rinfo["residual_bound"]):
        assert r <= b * (1 + 1e-9) + 1e-15


def test_cr_gradient_and_hessian_match_autograd():
    g = torch.Generator().manual_seed(1)
    phi = with_bias(torch.randn(40, 4, generator=g, dtype=torch.float64))
    y = torch.randint(0, 3, (40,), generator=g)
    b = torch.randn(3, 5, generator=g, dtype=torch.float64)
    cr = CertifiedRemoval(lam=0.1, b=b)
    z = signs(y, 3)
    w = torch.randn(3, 5, generator=g, dtype=torch.float64, requires_grad=True)
    auto = torch.autograd.grad(cr.objective(w, phi, z).sum(), w)[0]
    torch.testing.assert_close(cr.gradient(w.detach(), phi, z), auto)
    for k in range(3):
        hk = torch.autograd.functional.hessian(lambda v: cr.objective(torch.stack([v] * 3), phi, z)[k], w[k].detach())
        torch.testing.assert_close(cr.hessians(w.detach(), phi, z)[k], hk)


def test_cr_end_to_end_head_replaced_extractor_frozen():
    model = TinyNet().eval()
    before = state(model)
    data = make_data(60, 8)
    out, rec = unlearn("cr", model, data, seed=3)
    assert_same_state(state(model), before)  # Original untouched
    after = state(out)
    for k in before:  # the feature extractor is exactly Original's
        if not k.startswith("head."):
            torch.testing.assert_close(after[k], before[k], rtol=0, atol=0)
    assert not torch.equal(after["head.weight"], before["head.weight"])
    assert isinstance(rec, MethodRecord) and rec.method == "cr"
    for key in ("residual_norm_max", "residual_norm_mean", "residual_bound_max", "residual_norm"):
        assert key in rec.extra
    assert rec.extra["residual_norm_max"] <= rec.extra["residual_bound_max"] * (1 + 1e-6) + 1e-12
    # the scores are w_cᵀ[φ; 1]: the model's logits (probabilities for the MIA = their softmax)
    x = data.retain.x[:5]
    with torch.no_grad():
        scores = with_bias(out.features(x)) @ torch.cat([out.head.weight, out.head.bias[:, None]], 1).double().T
        torch.testing.assert_close(out(x).double(), scores, rtol=1e-5, atol=1e-5)
    out2, _ = unlearn("cr", model, data, seed=3)
    assert_same_state(state(out2), after)
    # objective perturbation: deterministic under the seed, different across seeds
    p1, r1 = unlearn("cr", model, data, seed=3, overrides={"perturb": True})
    p2, _ = unlearn("cr", model, data, seed=3, overrides={"perturb": True})
    p3, _ = unlearn("cr", model, data, seed=4, overrides={"perturb": True})
    assert r1.extra["perturbed"]
    assert torch.equal(p1.head.weight, p2.head.weight)
    assert not torch.equal(p1.head.weight, p3.head.weight)
    assert not torch.equal(p1.head.weight, out.head.weight)


# ---------------------------------------------------------------------------------------------- Fisher
def test_fisher_equals_analytic_diagonal_of_linear_softmax():
    g = torch.Generator().manual_seed(0)
    d, c, n = 4, 3, 20
    model = SoftmaxRegression(d, c).double()
    with torch.no_grad():
        model.head.weight.copy_(torch.randn(c, d, generator=g, dtype=torch.float64))
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    p = torch.softmax(model(x).detach(), 1)  # (n, C)
    # ∂CE(z, c)/∂W_kj = (p_k − δ_kc)·x_j: F_W[k, j] = mean_x Σ_c p_c (p_k − δ_kc)² x_j², F_b[k] without x_j²
    eye = torch.eye(c, dtype=torch.float64)
    s = torch.einsum("nc,nck->nk", p, (p[:, None, :] - eye[None]) ** 2)  # Σ_c p_c (p_k − δ_kc)²
    expect_w = (s[:, :, None] * x[:, None, :] ** 2).mean(0)
    expect_b = s.mean(0)
    for kw in (dict(), dict(factor_linear=False), dict(chunk_size=7), dict(factor_linear=False, chunk_size=1)):
        fisher = fisher_diagonal(model, x, **kw)
        torch.testing.assert_close(fisher["head.weight"], expect_w, rtol=1e-5, atol=1e-12)
        torch.testing.assert_close(fisher["head.bias"], expect_b, rtol=1e-5, atol=1e-12)


def test_fisher_matches_batch_size_one_loop_on_conv_bn_model():
    model = TinyNet().double().train()  # train mode on purpose: the Fisher must run in eval mode and restore it
    bn_before = state(model)
    x = make_data(12, 0).retain.x.double()
    ref = fisher_diagonal_loop(model, x)
    for kw in (dict(), dict(chunk_size=5), dict(factor_linear=False, im2col=False, chunk_size=4)):
        fisher = fisher_diagonal(model, x, **kw)
        assert fisher.keys() == ref.keys()
        for k in ref:
            torch.testing.assert_close(fisher[k], ref[k], rtol=1e-9, atol=1e-14, msg=k)
    assert model.training
    assert_same_state(state(model), bn_before)  # BatchNorm buffers untouched


def test_fisher_mc_is_unbiased():
    model = TinyNet().double()
    x = make_data(8, 0).retain.x.double()
    exact = fisher_diagonal(model, x)
    seeds = range(40)
    runs = [fisher_diagonal(model, x.repeat(10, 1, 1, 1), mc=True, generator=torch.Generator().manual_seed(s))
            for s in seeds]
    assert not torch.equal(runs[0]["head.weight"], runs[1]["head.weight"])  # a genuine sample
    for k in exact:
        mean = torch.stack([r[k] for r in runs]).mean(0)
        assert rel(mean, exact[k]) < 0.05, (k, rel(mean, exact[k]))
    single = fisher_diagonal(model, x, mc=True, generator=torch.Generator().manual_seed(0))
    assert rel(single["head.weight"], exact["head.weight"]) > 1e-3  # one draw is not the expectation


def test_fisher_is_per_sample_not_squared_batch_gradient():
    model = TinyNet().double()
    x = 2 * torch.randn(32, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    fisher = fisher_diagonal(model, x)
    # the pitfall: square the *batch-mean* per-class gradient, Σ_c p̄_c (∇ mean_x CE(f(x), c))²
    params = [p for p in model.parameters()]
    model.eval()
    logits = model(x)
    pbar = torch.softmax(logits.detach(), 1).mean(0)
    wrong = [torch.zeros_like(p) for p in params]
    for c in range(logits.shape[1]):
        gs = torch.autograd.grad(F.cross_entropy(logits, torch.full((32,), c)), params, retain_graph=True)
        for w, g in zip(wrong, gs):
            w += pbar[c] * g**2
    names = [n for n, _ in model.named_parameters()]
    for n, w in zip(names, wrong):  # every weight matrix/kernel: far from the per-sample Fisher, and smaller
        if w.dim() > 1:
            assert rel(w, fisher[n]) > 0.1, (n, rel(w, fisher[n]))
            assert float(w.sum()) < 0.9 * float(fisher[n].sum())  # Jensen: squares of means are smaller
    flat_w = torch.cat([w.flatten() for w in wrong])
    flat_f = torch.cat([fisher[n].flatten() for n in names])
    assert rel(flat_w, flat_f) > 0.3
    # and the per-sample Fisher does not depend on how the samples are chunked (a batch-squared one would)
    for k, v in fisher_diagonal(model, x, chunk_size=3).items():
        torch.testing.assert_close(v, fisher[k], rtol=1e-10, atol=1e-16)


def test_fisher_noise_rules():
    model = TinyNet(num_classes=4)
    cfg = FisherConfig()
    fisher = {}
    for name, p in model.named_parameters():
        f = torch.full(p.shape, 1e-12)  # 1/(F + 1e-8) ≈ 1e8: clamped
        if p.dim() > 1:
            f[:, 0] = 2.0  # one input column with a large Fisher: 1/(2 + 1e-8)
        fisher[name] = f
    ff = FisherForgetting(cfg)
    var, mean = ff.variances(model, fisher, forget_class=None)
    params = dict(model.named_parameters())
    for name, p in params.items():
        head = name.startswith("head.")
        cap = 1e2 if head else 1e3
        v = torch.full(p.shape, cap, dtype=torch.float64)
        if p.dim() > 1:
            v[:, 0] = 1 / (2 + 1e-8)
            v = v.mean(1, keepdim=True).expand_as(v)
        v = v * 1e-6
        if head or p.dim() == 1:
            v = v * 10
        torch.testing.assert_close(var[name].double(), v, rtol=1e-6, atol=0, msg=name)
        torch.testing.assert_close(mean[name], p.detach())
    # class forgetting: the forgotten row (weight row and bias entry) gets mean 0 and variance 1e-4
    var, mean = ff.variances(model, fisher, forget_class=2)
    for name in ("head.weight", "head.bias"):
        assert torch.all(var[name][2] == 1e-4) and torch.all(mean[name][2] == 0)
        others = [r for r in range(4) if r != 2]
        torch.testing.assert_close(mean[name][others], params[name].detach()[others])
    # θ = mean + √var ⊙ ξ with ξ from a CPU generator seeded by the run seed, in parameter order
    ff.apply(model, var, mean, seed=5)
    gen = torch.Generator().manual_seed(5)
    for name, p in model.named_parameters():
        xi = torch.randn(p.shape, generator=gen)
        torch.testing.assert_close(p.detach(), mean[name] + var[name].sqrt() * xi)


def test_fisher_end_to_end_class_forgetting():
    model = TinyNet().eval()
    before = state(model)
    data = make_data(30, 0)
    forget = TensorData(data.retain.x[:5], torch.full((5,), 1), torch.arange(5))
    data = UnlearnData(data.retain, forget, 3, class_unlearning=True, forget_class=1)
    out, rec = unlearn("fisher", model, data, seed=11)
    assert_same_state(state(model), before)
    after = state(out)
    for k in before:
        if "running" in k or "num_batches" in k:
            torch.testing.assert_close(after[k], before[k], rtol=0, atol=0)  # buffers untouched
    assert rec.extra["forget_class"] == 1
    row = torch.cat([out.head.weight[1], out.head.bias[1:2]]).detach()
    assert float(row.abs().max()) < 0.05  # N(0, 1e-4)
    out2, _ = unlearn("fisher", model, data, seed=11)
    assert_same_state(state(out2), after)
    out3, _ = unlearn("fisher", model, data, seed=12)
    assert not torch.equal(out3.head.weight, out.head.weight)


# ---------------------------------------------------------------------------------------------- NTK
def _jacobian_by_columns(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """For a model linear (affine) in its parameters: J[i·C + c, j] = f_c(x_i; θ0 + e_j) − f_c(x_i; θ0), exactly;
    no autograd involved. Columns in named_parameters order."""
    theta0 = torch.nn.utils.parameters_to_vector(model.parameters()).detach()
    probe = copy.deepcopy(model).eval()
    with torch.no_grad():
        base = probe(x).reshape(-1)
        cols = []
        for j in range(theta0.numel()):
            e = torch.zeros_like(theta0)
            e[j] = 1.0
            torch.nn.utils.vector_to_parameters(theta0 + e, probe.parameters())
            cols.append(probe(x).reshape(-1) - base)
    return torch.stack(cols, 1)


def test_ntk_on_linear_in_params_model_equals_retraining_the_linearised_problem():
    model = LinearInParams().double().eval()
    data = make_data(30, 6, shape=(1, 6, 6))
    lam, c = 0.1, 3
    x_r, y_r, x_f, y_f = data.retain.x.double(), data.retain.y, data.forget.x.double(), data.forget.y
    x, y = torch.cat([x_r, x_f]), torch.cat([y_r, y_f])
    jac = _jacobian_by_columns(model, x)  # (N·C, P) = Gᵀ
    with torch.no_grad():
        e = (torch.softmax(model(x), 1) - F.one_hot(y, c).double()).reshape(-1)
    n, n_r = x.shape[0], x_r.shape[0]

    def direct(rows: int) -> torch.Tensor:  # parameter-space solve of the linearised, regularised problem
        g, ea = jac[: rows * c].T, e[: rows * c]
        return -torch.linalg.solve(g @ g.T + rows * lam * torch.eye(g.shape[0], dtype=torch.float64), g @ ea)

    w_complete, w_retain = direct(n), direct(n_r)
    for kw in (dict(), dict(factor_linear=False, im2col=False), dict(block_budget_gb=1e-5, tile_size=4)):
        res = NTKForgetting(NTKConfig(lam=lam, **kw)).solve(model, x_r, y_r, x_f, y_f)
        assert res.names == [k for k, _ in model.named_parameters()]
        torch.testing.assert_close(res.w_complete, w_complete, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(res.w_retain, w_retain, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(res.delta, w_retain - w_complete, rtol=1e-9, atol=1e-12)

    # "re-training" = minimising (1/2n_r)Σ‖e_i + f(x_i; θ) − f(x_i; θ0)‖² + (λ/2)‖θ − θ0‖² from θ0 by gradient steps
    retrained = copy.deepcopy(model)
    theta0 = torch.nn.utils.parameters_to_vector(model.parameters()).detach()
    with torch.no_grad():
        f0, e_r = model(x_r), e[: n_r * c].view(n_r, c)
    opt = torch.optim.LBFGS(retrained.parameters(), lr=1, max_iter=500, tolerance_grad=1e-12,
                            tolerance_change=1e-15, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        w = torch.nn.utils.parameters_to_vector(retrained.parameters()) - theta0
        loss = 0.5 * ((e_r + retrained(x_r) - f0) ** 2).sum() / n_r + 0.5 * lam * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    w_trained = torch.nn.utils.parameters_to_vector(retrained.parameters()).detach() - theta0
    torch.testing.assert_close(w_trained, w_retain, rtol=1e-4, atol=1e-6)  # optimiser tolerance

    # the method's output: θ0 + scale·Δw with the reference-code scale (θ_ref = θ0), or a fixed scale
    data64 = UnlearnData(TensorData(x_r, y_r, data.retain.index), TensorData(x_f, y_f, data.forget.index), c)
    out, rec = unlearn("ntk", model, data64, seed=0)
    delta = w_retain - w_complete
    m_err = -w_retain
    rho = float(delta @ m_err / (delta.norm() * m_err.norm()))
    scale = 1 + 2 * abs(rho) * float(m_err.norm() / delta.norm())
    assert rec.extra["scale"] == pytest.approx(scale, rel=1e-8) and rec.extra["rho"] == pytest.approx(rho, rel=1e-8)
    torch.testing.assert_close(torch.nn.utils.parameters_to_vector(out.parameters()).detach(),
                               theta0 + scale * delta, rtol=1e-9, atol=1e-12)
    out, rec = unlearn("ntk", model, data64, seed=0, overrides={"scale": 0.5})
    torch.testing.assert_close(torch.nn.utils.parameters_to_vector(out.parameters()).detach(),
                               theta0 + 0.5 * delta, rtol=1e-9, atol=1e-12)


def test_ntk_last_layer_equals_full_when_only_the_head_is_trainable():
    model = TinyNet().double().eval()
    for p in model.body.parameters():
        p.requires_grad_(False)
    d = make_data(20, 5)
    x_r, x_f = d.retain.x.double(), d.forget.x.double()
    full = NTKForgetting(NTKConfig()).solve(model, x_r, d.retain.y, x_f, d.forget.y)
    assert full.names == ["head.weight", "head.bias"]
    for form in ("auto", "kernel", "primal"):
        last = NTKForgetting(NTKConfig(variant="last_layer")).solve(model, x_r, d.retain.y, x_f, d.forget.y,
                                                                      form=form)
        assert last.names == full.names
        torch.testing.assert_close(last.w_complete, full.w_complete, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(last.w_retain, full.w_retain, rtol=1e-9, atol=1e-12)
    data64 = UnlearnData(TensorData(x_r, d.retain.y, d.retain.index), TensorData(x_f, d.forget.y, d.forget.index), 3)
    a, _ = unlearn("ntk", model, data64, seed=0)
    b, _ = unlearn("ntk", model, data64, seed=0, overrides={"variant": "last_layer"})
    assert_same_state(state(a), state(b), atol=1e-10)


def test_ntk_factored_blocked_and_dense_paths_agree():
    model = TinyNet().double().eval()
    d = make_data(14, 4)
    args = (model, d.retain.x.double(), d.retain.y, d.forget.x.double(), d.forget.y)
    ref = NTKForgetting(NTKConfig(factor_linear=False, im2col=False)).solve(*args)
    small = dict(block_budget_gb=1.4e-5, tile_size=4)  # outer blocks of 6 samples, inner of 2, tiles of 4
    for kw in (dict(), dict(tile_size=5), small, dict(small, factor_linear=False)):
        res = NTKForgetting(NTKConfig(**kw)).solve(*args)
        if "block_budget_gb" in kw:
            assert res.info["jacobian_sample_passes"] > 1  # blocks were recomputed
        torch.testing.assert_close(res.w_complete, ref.w_complete, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(res.w_retain, ref.w_retain, rtol=1e-9, atol=1e-12)


def test_ntk_memory_guard_states_the_memory_and_the_alternatives():
    model = TinyNet().eval()
    data = make_data(20_000, 100)  # N·C = 60,300: the float64 kernel alone needs about 27 GiB
    with pytest.raises(NTKMemoryError) as err:
        unlearn("ntk", model, data, seed=0)
    msg = str(err.value)
    assert "GiB" in msg and "memory_budget_gb = 4.0" in msg and "last_layer" in msg and "max_retain=" in msg
    needed = float(msg.split("needs about ")[1].split(" GiB")[0])
    assert needed > 27
    suggested = int(msg.split("max_retain=")[1].split(" ")[0])
    assert 0 < suggested < 20_000
    small = make_data(20, 5)
    with pytest.raises(MemoryError, match="needs about"):
        unlearn("ntk", model, small, seed=0, overrides={"memory_budget_gb": 1e-6})


def test_ntk_max_retain_and_reference_checkpoint():
    model = TinyNet().double().eval()
    d = make_data(40, 5)
    data = UnlearnData(TensorData(d.retain.x.double(), d.retain.y, d.retain.index),
                       TensorData(d.forget.x.double(), d.forget.y, d.forget.index), 3)
    a, ra = unlearn("ntk", model, data, seed=1, overrides={"max_retain": 10})
    b, _ = unlearn("ntk", model, data, seed=1, overrides={"max_retain": 10})
    c, _ = unlearn("ntk", model, data, seed=2, overrides={"max_retain": 10})
    assert ra.extra["n"] == 15 and ra.extra["n_retain"] == 10 and ra.extra["retain_subsample"] == 10
    assert_same_state(state(a), state(b))
    assert not torch.equal(a.head.weight, c.head.weight)
    # θ_ref = the pre-trained checkpoint when given (ref="auto")
    pre = copy.deepcopy(model)
    with torch.no_grad():
        for p in pre.parameters():
            p.add_(0.05 * torch.randn_like(p))
    with_ref = UnlearnData(data.retain, data.forget, 3, pretrained=pre)
    out, rec = unlearn("ntk", model, with_ref, seed=0)
    assert rec.extra["ref"] == "pretrained"
    res = NTKForgetting(NTKConfig()).solve(model, data.retain.x, data.retain.y, data.forget.x, data.forget.y)
    theta0 = torch.nn.utils.parameters_to_vector(model.parameters()).detach()
    theta_ref = torch.nn.utils.parameters_to_vector(pre.parameters()).detach()
    expect = ntk_scale(theta0, theta_ref, res.w_retain, res.delta)
    assert rec.extra["scale"] == pytest.approx(expect["scale"], rel=1e-8)
    m_err = (theta0 - theta_ref) - res.w_retain
    rho = float(res.delta @ m_err / (res.delta.norm() * m_err.norm()))
    assert expect["scale"] == pytest.approx(1 + 2 * abs(rho) * float(m_err.norm() / res.delta.norm()), rel=1e-12)
    _, rec = unlearn("ntk", model, with_ref, seed=0, overrides={"ref": "original"})
    assert rec.extra["ref"] == "original"
    with pytest.raises(ValueError, match="pretrained"):
        unlearn("ntk", model, data, seed=0, overrides={"ref": "pretrained"})


# ---------------------------------------------------------------------------------------------- all three
@pytest.mark.parametrize("name", ["cr", "fisher", "ntk"])
def test_registered_deterministic_and_original_unchanged(name):
    load_all()
    assert name in REGISTRY and "cifar10" in REGISTRY[name].presets
    model = TinyNet()
    before = state(model)
    data = make_data(24, 6)
    out, rec = unlearn(name, model, data, seed=7)
    assert out is not model and rec.method == name and rec.seed == 7 and rec.wall_s > 0
    assert_same_state(state(model), before)
    out2, _ = unlearn(name, model, data, seed=7)
    assert_same_state(state(out2), state(out))
    changed = [k for k in before if not torch.equal(state(out)[k], before[k])]
    assert changed  # the method did something
    assert all(torch.isfinite(v).all() for v in state(out).values() if v.is_floating_point())
