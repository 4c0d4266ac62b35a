"""CR: certified removal by one Newton step on a one-vs-rest logistic-regression head.

Guo, Goldstein, Hannun, van der Maaten, *Certified Data Removal from Machine Learning Models* (ICML 2020);
spec: baselines.md §9. Implemented from the spec only (the authors' code is CC BY-NC and was not consulted).

1. **Features**: φ(x) = Original's penultimate features (the classifier layer's input) in eval mode, with a
   constant 1 appended for the bias; the extractor stays frozen (it is not modified; ``requires_grad`` is left
   as it was so that later audits, e.g. re-learning, can still train the whole model).
2. **Head**: per class c, J_c(w) = (1/n)·Σ_i log(1 + exp(−z_i wᵀφ_i)) + (λ/2)‖w‖² (+ b_cᵀw/n, optional objective
   perturbation) on S = S_r ∪ S_f, z_i = ±1, minimised with L-BFGS (at most 100 iterations, stopping earlier
   once converged; strong-Wolfe line search, float64), one class at a time.
3. **Removal**: one Newton step per class on the retain objective J_c^r (the same loss over S_r with n_r; the
   perturbation, when on, stays b_cᵀw in the un-normalised objective, so it is b_cᵀw/n_r here — decision):
   w_c ← w_c − η_N·H_c⁻¹∇J_c^r(w_c), H_c = (1/n_r)Σ_{S_r} s(1 − s)φφᵀ + λI, float64 Cholesky, batched over classes.

The result is a copy of Original whose classifier layer holds the new head (weight = w[:, :d], bias = w[:, d]),
so every audit works on it; its MIA probabilities are the softmax of the scores w_cᵀφ (decision, spec).

**Reported** (``record.extra``): the gradient residual ‖∇J_c^r(w_new)‖ per class (max, mean) and, before the
step, ‖∇J_c^r(w)‖; and a data-dependent a-posteriori bound on the residual that we derive as follows (in the
spirit of Guo et al.'s data-dependent bound; not copied from it). With s the Newton step, exact Newton gives
∇J^r(w + s) = ∫₀¹ [∇²J^r(w + t·s) − ∇²J^r(w)] s dt; the regulariser cancels and, writing ℓ(u) = log(1 + e^{−u}),
each term differs only by ℓ''(z_i·φ_iᵀ(w + ts)) − ℓ''(z_i·φ_iᵀw), bounded by γ·t·|φ_iᵀs| with
γ = sup|ℓ'''| = 1/(6√3) ≈ 0.0962. Hence (for the full step η_N = 1)

    ‖∇J_c^r(w_new)‖ ≤ (γ / (2 n_r)) · ‖Φ_r‖₂ · ‖(Φ_r s_c)∘(Φ_r s_c)‖₂,

with ‖Φ_r‖₂ the spectral norm of the retain feature matrix. (For η_N ≠ 1 the residual also carries
(1 − η_N)·‖∇J^r(w)‖; the bound is then reported as that plus the same Taylor term for the shorter step.)
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models import feature_head
from ._persample import batched_features
from .base import MethodRecord, UnlearnData, fresh_copy, log_uniform, register

GAMMA_LOGISTIC = 1.0 / (6.0 * math.sqrt(3.0))  # sup |ℓ'''| of ℓ(u) = log(1 + e^{−u})


@dataclass(frozen=True)
class CRConfig:
    lam: float = 0.1  # paper: the L2 coefficient λ (the paper's prose calls it a step size; see spec §9)
    lbfgs_iters: int = 100  # reference code: L-BFGS iterations per class (stops earlier once converged: decision)
    newton_step: float = 1.0  # decision: η_N = 1, the full Newton step
    perturb: bool = False  # reference code: objective perturbation off by default
    sigma: float = 10.0  # reference code: std of b when perturb = True
    feature_batch_size: int = 256  # decision: batch size of the feature pass (no effect on the result)

    def __post_init__(self):
        if not self.lam > 0:
            raise ValueError(f"lam = {self.lam!r}: expected a number > 0")
        if self.lbfgs_iters < 1:
            raise ValueError(f"lbfgs_iters = {self.lbfgs_iters!r}: expected an integer >= 1")
        if not self.sigma >= 0:
            raise ValueError(f"sigma = {self.sigma!r}: expected a number >= 0")


def with_bias(phi: Tensor) -> Tensor:
    """[φ, 1] in float64."""
    phi = phi.double()
    return torch.cat([phi, torch.ones(phi.shape[0], 1, dtype=phi.dtype, device=phi.device)], 1)


def signs(y: Tensor, num_classes: int) -> Tensor:
    """z (n, C): +1 where y = c, −1 elsewhere (float64)."""
    return 2.0 * F.one_hot(y.long(), num_classes).double() - 1.0


class CertifiedRemoval:
    """One-vs-rest L2-regularised logistic regression on fixed features, and its Newton-step removal.

    All weights are (C, D) float64 with D = d + 1 (the last column multiplies the constant feature).

    >>> cr = CertifiedRemoval(lam=0.1)
    >>> w = cr.fit(with_bias(phi), y, C)                   # L-BFGS on S
    >>> w_new, info = cr.newton_remove(w, with_bias(phi_r), y_r)
    """

    def __init__(self, lam: float = 0.1, lbfgs_iters: int = 100, b: Tensor | None = None):
        self.lam, self.lbfgs_iters, self.b = lam, lbfgs_iters, b  # b: (C, D) perturbation or None

    # ---- objective
    def objective(self, w: Tensor, phi: Tensor, z: Tensor, n_pert: int | None = None) -> Tensor:
        """J_c(w_c) for every class: (C,). ``n_pert``: the n that divides the perturbation term (default n)."""
        n = phi.shape[0]
        margins = z * (phi @ w.T)  # (n, C)
        val = F.softplus(-margins).mean(0) + 0.5 * self.lam * (w * w).sum(1)
        if self.b is not None:
            val = val + (self.b * w).sum(1) / (n_pert or n)
        return val

    def gradient(self, w: Tensor, phi: Tensor, z: Tensor, n_pert: int | None = None) -> Tensor:
        """∇J_c(w_c) for every class: (C, D)."""
        n = phi.shape[0]
        margins = z * (phi @ w.T)
        coef = -z * torch.sigmoid(-margins)  # dℓ/dm · z
        g = coef.T @ phi / n + self.lam * w
        if self.b is not None:
            g = g + self.b / (n_pert or n)
        return g

    def hessians(self, w: Tensor, phi: Tensor, z: Tensor) -> Tensor:
        """H_c = (1/n)Σ s(1 − s)φφᵀ + λI for every class: (C, D, D)."""
        n, dim = phi.shape
        s = torch.sigmoid(z * (phi @ w.T))
        curv = s * (1 - s)  # (n, C)
        eye = torch.eye(dim, dtype=phi.dtype, device=phi.device)
        return torch.stack([(phi * curv[:, c : c + 1]).T @ phi / n + self.lam * eye for c in range(w.shape[0])])

    # ---- training
    def fit(self, phi: Tensor, y: Tensor, num_classes: int) -> tuple[Tensor, dict]:
        """L-BFGS (``lbfgs_iters`` iterations, strong-Wolfe) per class on J_c; returns (w (C, D), info)."""
        z = signs(y, num_classes)
        w = torch.zeros(num_classes, phi.shape[1], dtype=torch.float64, device=phi.device)
        iters = []
        for c in range(num_classes):
            wc = torch.zeros(phi.shape[1], dtype=torch.float64, device=phi.device, requires_grad=True)
            bc = None if self.b is None else self.b[c]
            zc = z[:, c]
            opt = torch.optim.LBFGS([wc], lr=1.0, max_iter=self.lbfgs_iters, tolerance_grad=1e-10,
                                    tolerance_change=1e-14, history_size=20, line_search_fn="strong_wolfe")

            def closure():
                opt.zero_grad()
                loss = F.softplus(-zc * (phi @ wc)).mean() + 0.5 * self.lam * (wc * wc).sum()
                if bc is not None:
                    loss = loss + (bc * wc).sum() / phi.shape[0]
                loss.backward()
                return loss

            opt.step(closure)
            iters.append(int(opt.state[opt._params[0]].get("n_iter", 0)))
            w[c] = wc.detach()
        g = self.gradient(w, phi, z)
        return w, dict(lbfgs_iters_used=iters, fit_grad_norm_max=float(g.norm(dim=1).max()),
                       fit_objective=self.objective(w, phi, z).tolist())

    # ---- removal
    def newton_remove(self, w: Tensor, phi_r: Tensor, y_r: Tensor, step: float = 1.0,
                      n_pert: int | None = None) -> tuple[Tensor, dict]:
        """One Newton step per class on the retain objective (float64 Cholesky, batched over classes).
        Returns (w_new, info) with the residual norms ‖∇J_c^r(w_new)‖ and the a-posteriori bound (module doc)."""
        n_r = phi_r.shape[0]
        z = signs(y_r, w.shape[0])
        g0 = self.gradient(w, phi_r, z, n_pert)  # (C, D)
        h = self.hessians(w, phi_r, z)
        chol = torch.linalg.cholesky(h)
        s = -torch.cholesky_solve(g0.unsqueeze(2), chol).squeeze(2)  # full Newton step per class
        w_new = w + step * s
        g1 = self.gradient(w_new, phi_r, z, n_pert)
        proj = phi_r @ (step * s).T  # (n_r, C)
        spec = float(torch.linalg.matrix_norm(phi_r, ord=2))
        bound = GAMMA_LOGISTIC / (2 * n_r) * spec * proj.pow(2).norm(dim=0)
        if step != 1.0:  # residual of a partial step: (1 − η)∇J^r(w) plus the Taylor term of the shorter step
            bound = bound + abs(1 - step) * g0.norm(dim=1)
        res = g1.norm(dim=1)
        info = dict(
            residual_norm=res.tolist(), residual_norm_max=float(res.max()), residual_norm_mean=float(res.mean()),
            residual_bound=bound.tolist(), residual_bound_max=float(bound.max()),
            grad_norm_before=g0.norm(dim=1).tolist(), newton_step_norm=(step * s).norm(dim=1).tolist(),
        )
        return w_new, info


@register("cr", CRConfig, "certified removal: Newton step on a logistic-regression head (Guo et al. 2020)",
          presets={"cifar10": {}},  # decision: the paper runs CR small-scale only; same values if asked
          space={"lam": log_uniform(1e-3, 100.0)})  # decision
def unlearn(original: nn.Module, data: UnlearnData, cfg: CRConfig, seed: int):
    model = fresh_copy(original)
    record = MethodRecord("cr", {}, seed)
    _, head = feature_head(model)
    c = data.num_classes
    if head.out_features != c:
        raise ValueError(f"cr: the classifier layer has {head.out_features} outputs but data.num_classes = {c}")
    t0 = time.perf_counter()
    phi_r = with_bias(batched_features(model, data.retain.x, cfg.feature_batch_size))
    phi_f = with_bias(batched_features(model, data.forget.x, cfg.feature_batch_size))
    t_feat = time.perf_counter() - t0
    device = phi_r.device
    y_r, y_f = data.retain.y.to(device), data.forget.y.to(device)
    b = None
    if cfg.perturb:
        gen = torch.Generator().manual_seed(int(seed))
        b = (cfg.sigma * torch.randn(c, phi_r.shape[1], generator=gen, dtype=torch.float64)).to(device)
    cr = CertifiedRemoval(cfg.lam, cfg.lbfgs_iters, b)
    t0 = time.perf_counter()
    w, fit_info = cr.fit(torch.cat([phi_r, phi_f]), torch.cat([y_r, y_f]), c)
    t_fit = time.perf_counter() - t0
    t0 = time.perf_counter()
    w_new, info = cr.newton_remove(w, phi_r, y_r, cfg.newton_step)
    t_newton = time.perf_counter() - t0
    d = head.in_features
    with torch.no_grad():
        head.weight.copy_(w_new[:, :d].to(head.weight.dtype))
        if head.bias is not None:
            head.bias.copy_(w_new[:, d].to(head.bias.dtype))
        else:
            record.warnings.append("cr: the classifier layer has no bias; the constant feature's weight is dropped")
    record.extra.update(fit_info, **info, feature_dim=d, n=len(data.retain) + len(data.forget),
                        n_retain=len(data.retain), perturbed=cfg.perturb, features_s=t_feat, fit_s=t_fit,
                        newton_s=t_newton)
    return model, record
