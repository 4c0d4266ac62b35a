"""NTK forgetting: linearise Original and move it towards the closed-form weights that training without S_f
would have reached.

Golatkar, Achille, Soatto, *Forgetting Outside the Box* (ECCV 2020); spec: baselines.md §11. Implemented from
the spec only (the authors' code carries a non-commercial licence and was not consulted).

**The linearised problem** (our derivation of the spec's formulas). At θ0 = Original (eval mode) let J_i be the
logit Jacobian of sample i (C × P) and e_i = softmax(f(x_i)) − onehot(y_i) its residual. "Training" the
linearised model on a set A of n samples means

    w_A = argmin_w  (1/2n)·Σ_{i∈A} ‖e_i + J_i·w‖² + (λ/2)·‖w‖²

whose solution is w_A = −(G_A G_Aᵀ + nλ I_P)⁻¹ G_A e_A = −G_A (K_A + nλ I)⁻¹ e_A (push-through identity), with
G_A = [J_iᵀ] (P × nC) and K_A = G_Aᵀ G_A. So w_complete = w_D and w_retain = w_{S_r}, exactly spec §11 steps
2–3; the closed-form tests check both forms against each other.

**Steps** (spec §11): order D = S_r then S_f (rows sample-major: row i·C + c), so K_r is K's leading block.
1. Jacobians per sample block with ``vmap(jacrev)`` (``tile_size`` samples per call); K = GᵀG built block by
   block, never materialising more of G than ``block_budget_gb`` allows: when all Jacobians fit they are
   computed once, else an outer block A is held while the later samples stream past in inner blocks B
   (recomputed). K_AB = Σ_tensors J_A J_Bᵀ per tile of ``tile_size`` samples (products in the model's dtype,
   written into a float64 K, lower and upper triangle). Two exact speed-ups (decisions, on by default,
   switchable): ``im2col`` — conv weight gradients as unfold + matmul inside the transform
   (:func:`rurk.methods.fisher.conv2d_im2col`); ``factor_linear`` — a Linear layer's Jacobian is δ_c ⊗ a
   (:class:`rurk.methods.fisher.FactoredLinear`), so its share of K_AB is (Δ_AΔ_Bᵀ) ⊙ (a_A a_Bᵀ + 1) without
   forming the out × in rows (for the SmallCNN that is 95% of P: fc1 and the head).
2. float64 Cholesky solves α_D = (K + Nλ I)⁻¹ e_D and α_r = (K_r + N_rλ I)⁻¹ e_r (in place).
3. w_complete = −G α_D, w_retain = −G_r α_r as VJPs: one batched backward of Σ_i α_iᵀ f(x_i) per block.
4. Δw = w_retain − w_complete.
5. scale = 1 + 2|ρ|·‖m_err‖/‖Δw‖, ρ = cos(Δw, m_err), m_err = (θ0 − θ_ref) − w_retain; ``ref="auto"``:
   θ_ref = ``data.pretrained`` when given, else θ0 (m_err = −w_retain). ``scale`` fixes it instead.
6. θ = θ0 + scale·Δw.

**Variants.** ``variant="last_layer"``: the parameters are the classifier layer only, J(x) = I_C ⊗ [φ(x); 1]ᵀ,
K = I_C ⊗ (Φ̃Φ̃ᵀ), Φ̃ = [Φ, 1]; exact and cheap. Decision: solved in the primal, (Φ̃ᵀΦ̃ + nλ I_{d+1})⁻¹Φ̃ᵀe, when
d + 1 < n (the same numbers by the push-through identity, and linear instead of quadratic memory in n), else in
the kernel form. ``max_retain``: a seeded subsample of S_r (plus all of S_f) builds the problem; N and N_r are
then the subsample's sizes.

**Memory guard.** Before anything is built the peak memory (kernel (N·C)²·8 B, the retain block's factor, the
Jacobian blocks and kernel tiles) is estimated; over ``memory_budget_gb`` it raises :class:`NTKMemoryError`
naming the memory needed and the ``last_layer`` / ``max_retain`` alternatives — never an out-of-memory crash.

Only trainable parameters (``requires_grad``) are linearised and moved; buffers are never touched.
Pitfall (spec): NTK's persistent r > 1 comes from the linearisation ignoring higher-order terms; not "fixed".
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, jacrev, vmap

from ..models import feature_head
from ..torchutil import eval_mode, model_device, to_layout
from ._persample import (
    batched_features,
    batched_logits,
    constants_of,
    conv_mode,
    plan_factored,
    probed_logits,
    trainable_params,
)
from .base import MethodRecord, UnlearnData, fresh_copy, log_uniform, register

GiB = 2**30


class NTKMemoryError(MemoryError):
    """The NTK problem would not fit ``memory_budget_gb``; raised before anything large is allocated."""


@dataclass(frozen=True)
class NTKConfig:
    lam: float = 0.1  # reference code: λ, the weight decay of the linearised problem
    variant: str = "full"  # spec: "full" (all trainable parameters) | "last_layer" (classifier layer, exact)
    ref: str = "auto"  # decision: "auto" (pretrained if given, else Original) | "original" | "pretrained"
    scale: float | None = None  # reference code computes it (step 5); a number fixes it (spec step 6)
    max_retain: int | None = None  # spec: build the problem on a seeded subsample of S_r (plus all of S_f)
    memory_budget_gb: float = 4.0  # decision: the guard's limit for the whole computation
    block_budget_gb: float = 1.0  # spec: memory for the Jacobian blocks held at once
    tile_size: int = 256  # decision: samples per vmap(jacrev) call and per kernel tile (bounds the temporaries)
    im2col: bool = True  # decision: conv weight gradients as unfold + matmul inside vmap(jacrev) (faster on CPU)
    factor_linear: bool = True  # decision: Linear layers' kernel blocks in factored form (exact, much cheaper)

    def __post_init__(self):
        if self.variant not in ("full", "last_layer"):
            raise ValueError(f"variant = {self.variant!r}: expected 'full' or 'last_layer'")
        if self.ref not in ("auto", "original", "pretrained"):
            raise ValueError(f"ref = {self.ref!r}: expected 'auto', 'original' or 'pretrained'")
        if not self.lam > 0:
            raise ValueError(f"lam = {self.lam!r}: expected a number > 0")
        if self.max_retain is not None and self.max_retain < 1:
            raise ValueError(f"max_retain = {self.max_retain!r}: expected an integer >= 1 or unset")
        if self.tile_size < 1:
            raise ValueError(f"tile_size = {self.tile_size!r}: expected an integer >= 1")
        if not (self.memory_budget_gb > 0 and self.block_budget_gb > 0):
            raise ValueError("memory_budget_gb and block_budget_gb must be > 0")


@dataclass
class NTKResult:
    """The closed-form pieces, as flat float64 vectors over ``names`` (shapes in ``shapes``)."""

    names: list[str]
    shapes: list[torch.Size]
    w_complete: Tensor
    w_retain: Tensor
    info: dict = field(default_factory=dict)

    @property
    def delta(self) -> Tensor:
        return self.w_retain - self.w_complete

    def unflatten(self, flat: Tensor) -> dict[str, Tensor]:
        out, i = {}, 0
        for n, s in zip(self.names, self.shapes):
            k = math.prod(s)
            out[n] = flat[i : i + k].view(s)
            i += k
        return out


# ---------------------------------------------------------------------------------------------- memory
def full_memory(n: int, n_r: int, c: int, width: int, itemsize: int, block_budget_gb: float, tile: int) -> dict:
    """Peak-memory estimate of the full variant (bytes) and the block sizes it implies. ``width``: the per-class
    Jacobian entries stored per sample (P, or less with factored Linear layers)."""
    outer, inner = block_sizes(n, c, width, itemsize, block_budget_gb)
    kernel = (n * c) ** 2 * 8
    retain = (n_r * c) ** 2 * 8  # the retain block's copy/factor (the full factor is formed in place)
    t = min(tile, max(outer, 1))
    jac = int((outer + inner + t) * c * width * itemsize * 1.25)  # held blocks + one vmap chunk, 25% slack
    tiles = 2 * (t * c) ** 2 * itemsize  # one kernel tile and one temporary, model dtype
    return dict(total=kernel + max(retain, jac + tiles), kernel=kernel, retain_factor=retain,
                jacobian_blocks=jac + tiles, outer_block=outer, inner_block=inner)


def last_layer_memory(n: int, n_r: int, c: int, d: int) -> dict:
    """Peak-memory estimate of the last-layer variant (bytes): features + the smaller of kernel and primal."""
    feats = n * (d + 1) * 8
    system = min(n, d + 1) ** 2 * 8 * 2
    return dict(total=feats + system, features=feats, system=system)


def block_sizes(n: int, c: int, width: int, itemsize: int, block_budget_gb: float) -> tuple[int, int]:
    """(outer, inner) samples per Jacobian block: everything held at once when G fits the budget (one Jacobian
    pass), else an outer block as large as the budget allows and inner blocks of up to 32 samples streaming past
    it (about 1 + N/(2·outer) Jacobian passes)."""
    per_sample = c * width * itemsize * 1.25
    fit = int(block_budget_gb * GiB // per_sample)
    if fit >= n:
        return max(n, 1), 0  # G fits: one Jacobian pass, no recomputation
    inner = max(1, min(32, fit // 4))
    return max(1, fit - inner), inner


def _gib(b: float) -> str:
    return f"{b / GiB:.2f} GiB" if b >= 0.1 * GiB else f"{b / 2**20:.1f} MiB"


# ---------------------------------------------------------------------------------------------- the full kernel
def _jacobian_width(rest: dict, plan: list, c: int) -> int:
    """The per-class Jacobian entries stored per sample: the unfactored tensors' sizes, each factored layer's δ,
    and its input (stored once per sample, so counted 1/C per class)."""
    width = sum(p.numel() for p in rest.values()) + sum(fl.module.out_features for fl in plan)
    width += sum(fl.module.in_features for fl in plan) / max(c, 1)  # the layer inputs, stored once per sample
    return int(math.ceil(width))


class _KernelBuilder:
    """Step 1 of the full variant: K = GᵀG (float64) from per-sample Jacobian pieces, block by block; counts the
    samples whose Jacobians it computed in ``jac_samples``."""

    def __init__(self, cfg: NTKConfig, x: Tensor, c: int, rest: dict, probes: dict, plan: list, fn, dtype, device):
        self.cfg, self.x, self.c, self.rest, self.probes, self.plan = cfg, x, c, rest, probes, plan
        self.dtype, self.device, self.tile = dtype, device, cfg.tile_size
        self.jac_fn = vmap(jacrev(fn, argnums=(0, 1), has_aux=True), in_dims=(None, None, 0))
        self.jac_samples = 0

    def jac(self, a: int, b: int) -> dict:
        """Per-sample Jacobian pieces of samples a..b, computed ``tile`` samples per vmap(jacrev) call into
        preallocated storage: dense rows ((b − a)·C, numel) for the unfactored tensors, and per factored
        layer δ ((b − a)·C, out) and its input ((b − a), in)."""
        c, rest, plan, tile = self.c, self.rest, self.plan, self.tile
        out: dict | None = None
        for s in range(a, b, tile):
            e1 = min(s + tile, b)
            with conv_mode(self.cfg.im2col):
                (j_rest, j_probe), acts = self.jac_fn(rest, self.probes, to_layout(self.x[s:e1], False))
            parts = dict(rest=[j_rest[k].reshape((e1 - s) * c, -1) for k in rest],
                         delta=[j_probe[str(i)].reshape((e1 - s) * c, -1) for i in range(len(plan))],
                         act=[acts[str(i)] for i in range(len(plan))])
            if out is None:
                out = {k: [torch.empty(((b - a) * (c if k != "act" else 1), t.shape[1]), dtype=t.dtype,
                                       device=t.device) for t in v] for k, v in parts.items()}
                out["n"], out["a"] = b - a, a
            for k, v in parts.items():
                mult = 1 if k == "act" else c
                for dst, t in zip(out[k], v):
                    dst[(s - a) * mult : (e1 - a) * mult].copy_(t)
            del j_rest, j_probe, acts, parts
        self.jac_samples += b - a
        return out

    def piece(self, j: dict, s0: int, s1: int) -> dict:
        """Samples s0..s1 of a held block (views)."""
        r0, r1 = (s0 - j["a"]) * self.c, (s1 - j["a"]) * self.c
        return dict(rest=[u[r0:r1] for u in j["rest"]], delta=[d[r0:r1] for d in j["delta"]],
                    act=[v[s0 - j["a"] : s1 - j["a"]] for v in j["act"]], n=s1 - s0)

    def prod(self, ja: dict, jb: dict) -> Tensor:
        """K_AB = J_A J_Bᵀ (model dtype): dense products, plus per factored layer (Δ_AΔ_Bᵀ) ⊙ (a_A a_Bᵀ ⊗ 1
        [+ 1 for the bias]); at most two block-sized temporaries."""
        c, device = self.c, self.device
        out = torch.zeros(ja["n"] * c, jb["n"] * c, dtype=self.dtype, device=device)
        for u, v in zip(ja["rest"], jb["rest"]):
            out.addmm_(u, v.T)
        for fl, da, db, aa, ab in zip(self.plan, ja["delta"], jb["delta"], ja["act"], jb["act"]):
            dd = (da @ db.T).view(ja["n"], c, jb["n"], c)
            coef = (aa @ ab.T) if fl.weight else torch.zeros(ja["n"], jb["n"], dtype=dd.dtype, device=device)
            if fl.bias:
                coef = coef + 1
            out += dd.mul_(coef[:, None, :, None]).view_as(out)
            del dd
        return out

    def kernel(self, n: int, outer: int, inner: int) -> Tensor:
        """K over the n samples: an outer block held while the later samples stream past in inner blocks
        (recomputed Jacobians); each tile product written into both triangles."""
        c, tile = self.c, self.tile
        kern = torch.empty(n * c, n * c, dtype=torch.float64, device=self.device)

        def put(s0: int, s1: int, u0: int, u1: int, kb: Tensor) -> None:
            kern[s0 * c : s1 * c, u0 * c : u1 * c].copy_(kb)
            if u0 != s0:
                kern[u0 * c : u1 * c, s0 * c : s1 * c].copy_(kb.T)

        for a0 in range(0, n, outer):  # the Cholesky factorisations read K's lower triangle only
            a1 = min(a0 + outer, n)
            ja = self.jac(a0, a1)
            tiles = [(s, min(s + tile, a1)) for s in range(a0, a1, tile)]
            for i, (s0, s1) in enumerate(tiles):  # the diagonal block, tile by tile
                for u0, u1 in tiles[i:]:
                    put(s0, s1, u0, u1, self.prod(self.piece(ja, s0, s1), self.piece(ja, u0, u1)))
            for b0 in range(a1, n, inner or n):  # later samples stream past (recomputed Jacobians)
                b1 = min(b0 + inner, n)
                jb = self.jac(b0, b1)
                for s0, s1 in tiles:
                    put(s0, s1, b0, b1, self.prod(self.piece(ja, s0, s1), jb))
                del jb
            del ja
        return kern


# ---------------------------------------------------------------------------------------------- the method
class NTKForgetting:
    """Closed-form NTK forgetting on a model (in eval mode, never modified here).

    >>> res = NTKForgetting(NTKConfig()).solve(model, x_r, y_r, x_f, y_f)
    >>> res.w_complete, res.w_retain, res.delta      # flat float64 over res.names
    """

    def __init__(self, cfg: NTKConfig):
        self.cfg = cfg

    # ---- entry point
    def solve(self, model: nn.Module, x_r: Tensor, y_r: Tensor, x_f: Tensor, y_f: Tensor, *,
              form: str = "auto") -> NTKResult:
        with eval_mode(model):
            if self.cfg.variant == "last_layer":
                return self._last_layer(model, x_r, y_r, x_f, y_f, form)
            return self._full(model, x_r, y_r, x_f, y_f)

    @staticmethod
    def residuals(logits: Tensor, y: Tensor, num_classes: int) -> Tensor:
        """e = softmax(f(x)) − onehot(y), float64, (N, C)."""
        return torch.softmax(logits.double(), 1) - F.one_hot(y.to(logits.device), num_classes).double()

    # ---- full variant
    def _full(self, model, x_r, y_r, x_f, y_f) -> NTKResult:
        cfg = self.cfg
        device = model_device(model)
        params = trainable_params(model)
        if not params:
            raise ValueError("ntk: the model has no trainable parameters")
        names = list(params)
        frozen = {k: p.detach() for k, p in params.items()}
        x = torch.cat([x_r, x_f]).to(device)
        y = torch.cat([y_r, y_f]).to(device)
        n, n_r = x.shape[0], x_r.shape[0]
        logits = batched_logits(model, x)
        c = logits.shape[1]
        plan = plan_factored(model, params, to_layout(x[:1])) if cfg.factor_linear else []
        rest, probes, fn = probed_logits(model, params, plan)
        p_total = sum(p.numel() for p in frozen.values())
        itemsize = next(iter(frozen.values())).element_size()
        mem = full_memory(n, n_r, c, _jacobian_width(rest, plan, c), itemsize, cfg.block_budget_gb, cfg.tile_size)
        self._guard(mem, n, n_r, c, p_total, model, x_f.shape[0])
        e = self.residuals(logits, y, c)  # (N, C)
        builder = _KernelBuilder(cfg, x, c, rest, probes, plan, fn, frozen[names[0]].dtype, device)

        t0 = time.perf_counter()
        outer, inner = mem["outer_block"], mem["inner_block"]
        kern = builder.kernel(n, outer, inner)
        t_kernel = time.perf_counter() - t0

        t0 = time.perf_counter()
        rc = n_r * c
        kr = kern[:rc, :rc].clone()
        alpha_r = _chol_solve_(kr, n_r * cfg.lam, e[:n_r].reshape(-1, 1)).view(n_r, c)
        del kr
        alpha_d = _chol_solve_(kern, n * cfg.lam, e.reshape(-1, 1)).view(n, c)
        del kern
        t_solve = time.perf_counter() - t0

        t0 = time.perf_counter()
        consts = constants_of(model, set(names))
        w_complete = -self._gvp(model, frozen, consts, x, alpha_d)
        w_retain = -self._gvp(model, frozen, consts, x[:n_r], alpha_r)
        t_vjp = time.perf_counter() - t0
        info = dict(n=n, n_retain=n_r, num_classes=c, num_params=p_total, memory_estimate_gb=mem["total"] / GiB,
                    kernel_gb=mem["kernel"] / GiB, outer_block=outer, inner_block=inner,
                    factored_layers=[nm for fl in plan for nm in (fl.weight, fl.bias) if nm],
                    jacobian_sample_passes=builder.jac_samples / max(n, 1), kernel_s=t_kernel, solve_s=t_solve,
                    vjp_s=t_vjp)
        return NTKResult(names, [frozen[k].shape for k in names], w_complete, w_retain, info)

    @staticmethod
    def _gvp(model, frozen, consts, x, alpha, batch: int = 256) -> Tensor:
        """G·α = Σ_i J(x_i)ᵀ α_i as one batched backward of Σ_i α_iᵀ f(x_i) per block; flat float64."""
        leaves = {k: p.clone().requires_grad_(True) for k, p in frozen.items()}
        acc = [torch.zeros(p.numel(), dtype=torch.float64, device=p.device) for p in frozen.values()]
        for s in range(0, x.shape[0], batch):
            with torch.enable_grad():
                out = functional_call(model, (leaves, consts), (to_layout(x[s : s + batch]),))
                grads = torch.autograd.grad((out * alpha[s : s + batch].to(out.dtype)).sum(), list(leaves.values()),
                                            allow_unused=True)
            for a, g in zip(acc, grads):
                if g is not None:
                    a += g.reshape(-1).double()
        return torch.cat(acc) if acc else torch.zeros(0, dtype=torch.float64)

    # ---- last-layer variant
    def _last_layer(self, model, x_r, y_r, x_f, y_f, form: str) -> NTKResult:
        cfg = self.cfg
        _, head = feature_head(model)
        names = _param_names(model, head)
        x = torch.cat([x_r, x_f])
        y = torch.cat([y_r, y_f])
        n, n_r = x.shape[0], x_r.shape[0]
        c, d = head.out_features, head.in_features
        mem = last_layer_memory(n, n_r, c, d)
        if mem["total"] > cfg.memory_budget_gb * GiB:
            raise NTKMemoryError(
                f"NTK (variant='last_layer') on N={n} samples with {d} features needs about {_gib(mem['total'])} "
                f"but memory_budget_gb = {cfg.memory_budget_gb}; set max_retain or raise memory_budget_gb")
        t0 = time.perf_counter()
        phi = batched_features(model, x).double()
        phi = torch.cat([phi, torch.ones(n, 1, dtype=phi.dtype, device=phi.device)], 1)  # Φ̃ = [Φ, 1]
        logits = phi @ torch.cat([head.weight.detach(), _bias(head).unsqueeze(1)], 1).double().T
        e = self.residuals(logits, y, c)
        w_d = last_layer_solve(phi, e, cfg.lam, form)  # (C, d + 1)
        w_r = last_layer_solve(phi[:n_r], e[:n_r], cfg.lam, form)

        def flat(w: Tensor) -> Tensor:
            parts = [w[:, :d].reshape(-1)] + ([w[:, d]] if head.bias is not None else [])
            return torch.cat(parts)

        shapes = [head.weight.shape] + ([head.bias.shape] if head.bias is not None else [])
        info = dict(n=n, n_retain=n_r, num_classes=c, num_params=c * (d + 1), memory_estimate_gb=mem["total"] / GiB,
                    solve_form=_form(form, n, d + 1), solve_s=time.perf_counter() - t0)
        return NTKResult(names, shapes, flat(w_d), flat(w_r), info)

    # ---- guard
    def _guard(self, mem: dict, n: int, n_r: int, c: int, p: int, model: nn.Module, n_f: int) -> None:
        budget = self.cfg.memory_budget_gb * GiB
        if mem["total"] <= budget:
            return
        fit = int(math.sqrt(max(budget - mem["jacobian_blocks"], 0) / (16 * c * c)))  # K + retain copy ≤ 2K
        hint = []
        try:
            _, head = feature_head(model)
            ll = last_layer_memory(n, n_r, c, head.in_features)["total"]
            hint.append(f"variant='last_layer' (exact over the classifier layer, about {_gib(ll)})")
        except TypeError:
            pass
        if fit - n_f >= 1:
            hint.append(f"max_retain={fit - n_f} (a seeded subsample of the retain set)")
        hint.append("a larger memory_budget_gb")
        raise NTKMemoryError(
            f"NTK (variant='full') on N={n} samples × C={c} classes with P={p:,} parameters needs about "
            f"{_gib(mem['total'])} (kernel (N·C)²·8 B = {_gib(mem['kernel'])}, retain factor "
            f"{_gib(mem['retain_factor'])}, Jacobian and kernel blocks {_gib(mem['jacobian_blocks'])}) but "
            f"memory_budget_gb = "
            f"{self.cfg.memory_budget_gb}. Use " + " or ".join(hint) + ".")


def _chol_solve_(a: Tensor, ridge: float, rhs: Tensor) -> Tensor:
    """(a + ridge·I)⁻¹ rhs by a float64 Cholesky factorisation formed in place in ``a`` (``a`` is consumed)."""
    a.diagonal().add_(ridge)
    torch.linalg.cholesky(a, out=a)
    return torch.cholesky_solve(rhs, a)


def _form(form: str, n: int, dim: int) -> str:
    if form == "auto":
        return "primal" if dim < n else "kernel"
    if form not in ("primal", "kernel"):
        raise ValueError(f"form = {form!r}: expected 'auto', 'primal' or 'kernel'")
    return form


def last_layer_solve(phi: Tensor, e: Tensor, lam: float, form: str = "auto") -> Tensor:
    """W = −[(Φ̃Φ̃ᵀ + nλI)⁻¹ e]ᵀ Φ̃ (kernel form) = −[(Φ̃ᵀΦ̃ + nλI)⁻¹ Φ̃ᵀ e]ᵀ (primal form); (C, d + 1)."""
    n, dim = phi.shape
    if n == 0:
        return torch.zeros(e.shape[1], dim, dtype=torch.float64, device=phi.device)
    if _form(form, n, dim) == "primal":
        return -_chol_solve_(phi.T @ phi, n * lam, phi.T @ e).T
    return -(_chol_solve_(phi @ phi.T, n * lam, e).T @ phi)


def _bias(head: nn.Linear) -> Tensor:
    return head.bias.detach() if head.bias is not None else torch.zeros(head.out_features, device=head.weight.device,
                                                                        dtype=head.weight.dtype)


def _param_names(model: nn.Module, head: nn.Linear) -> list[str]:
    ids = {id(head.weight): 0, **({id(head.bias): 1} if head.bias is not None else {})}
    found = sorted(((ids[id(p)], n) for n, p in model.named_parameters() if id(p) in ids))
    return [n for _, n in found]


def _flat(tensors: dict[str, Tensor], names: list[str]) -> Tensor:
    return torch.cat([tensors[k].detach().reshape(-1).double() for k in names])


def reference_params(model: nn.Module, ref_model: nn.Module | None, names: list[str]) -> tuple[Tensor, list[str]]:
    """θ_ref over ``names``, flat; tensors the reference lacks (or has with another shape, e.g. a pre-trained head
    for other classes) fall back to θ0 (no difference), listed in the second return value."""
    own = dict(model.named_parameters())
    theirs = dict(ref_model.named_parameters()) if ref_model is not None else {}
    out, missing = [], []
    for k in names:
        t = theirs.get(k)
        if t is None or t.shape != own[k].shape:
            missing.append(k)
            t = own[k]
        out.append(t.detach().reshape(-1).double().to(own[k].device))
    return torch.cat(out), missing


def ntk_scale(theta0: Tensor, theta_ref: Tensor, w_retain: Tensor, delta: Tensor) -> dict:
    """Spec §11 step 5: m_err = (θ0 − θ_ref) − w_retain, ρ = cos(Δw, m_err), scale = 1 + 2|ρ|‖m_err‖/‖Δw‖
    (scale 1, ρ 0 when either norm is 0)."""
    m_err = (theta0 - theta_ref) - w_retain
    nd, nm = float(delta.norm()), float(m_err.norm())
    rho = float(delta @ m_err) / (nd * nm) if nd > 0 and nm > 0 else 0.0
    scale = 1.0 + 2.0 * abs(rho) * nm / nd if nd > 0 else 1.0
    return dict(scale=scale, rho=rho, m_err_norm=nm, delta_norm=nd)


def _subsample(data: UnlearnData, max_retain: int | None, seed: int) -> tuple[Tensor, Tensor, list[int] | None]:
    n_r = len(data.retain)
    if max_retain is None or max_retain >= n_r:
        return data.retain.x, data.retain.y, None
    rows = torch.randperm(n_r, generator=torch.Generator().manual_seed(int(seed)))[:max_retain].sort().values
    return data.retain.x[rows], data.retain.y[rows], rows.tolist()


@register("ntk", NTKConfig, "NTK forgetting: closed-form linearised retrain step (Golatkar et al. 2020)",
          presets={"cifar10": {"variant": "last_layer"}},  # decision: full NTK is small-scale only (paper)
          space={"lam": log_uniform(1e-3, 10.0)})  # decision: around the reference 0.1
def unlearn(original: nn.Module, data: UnlearnData, cfg: NTKConfig, seed: int):
    model = fresh_copy(original)
    record = MethodRecord("ntk", {}, seed)
    x_r, y_r, rows = _subsample(data, cfg.max_retain, seed)
    res = NTKForgetting(cfg).solve(model, x_r, y_r, data.forget.x, data.forget.y)
    params = dict(model.named_parameters())
    theta0 = _flat(params, res.names)
    ref = cfg.ref
    if ref == "pretrained" and data.pretrained is None:
        raise ValueError("ntk: ref='pretrained' but data.pretrained is not set")
    ref_model = data.pretrained if ref == "pretrained" or (ref == "auto" and data.pretrained is not None) else None
    theta_ref, missing = reference_params(model, ref_model, res.names)
    if ref_model is not None and missing:
        record.warnings.append(f"ntk: the reference checkpoint lacks (or has other shapes for) {missing}; "
                               "θ_ref = θ0 there")
    sc = ntk_scale(theta0, theta_ref, res.w_retain, res.delta)
    scale = cfg.scale if cfg.scale is not None else sc["scale"]
    with torch.no_grad():
        for k, d in res.unflatten(res.delta).items():
            params[k].add_((scale * d).to(device=params[k].device, dtype=params[k].dtype))
    record.extra.update(
        res.info, variant=cfg.variant, ref="pretrained" if ref_model is not None else "original",
        scale=scale, scale_computed=sc["scale"], rho=sc["rho"], m_err_norm=sc["m_err_norm"],
        delta_norm=sc["delta_norm"], w_retain_norm=float(res.w_retain.norm()),
        w_complete_norm=float(res.w_complete.norm()), retain_subsample=None if rows is None else len(rows),
    )
    return model, record
