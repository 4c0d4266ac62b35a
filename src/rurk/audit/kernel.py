"""The counting kernel of the audit (:func:`count_correct`) and :func:`residual_knowledge`, which runs it:
checked inputs, noise blocks reused at every τ, both models on the same copies, counts on the device."""

from __future__ import annotations

import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ..perturb import (
    Draw,
    Probe,
    block_generator,
    derive_seed,
    eval_mode,
    module_device,
)
from ..torchutil import in_format, require_finite
from ..train import progress_enabled
from .inputs import AuditInputs, Counts, ReferencePredictions, check_inputs
from .result import AuditResult, Timing
from .spec import DEFAULT_BLOCK_SIZE, DEFAULT_TAUS, AuditSpec, default_batch_size
from .stats import TauStats, bootstrap_indices, summarise_counts


@contextmanager
def _channels_last_weights(models: Sequence[nn.Module], enabled: bool):
    """Temporarily store 4-D parameters (conv kernels) with channels_last strides, restoring the original
    tensors afterwards. Values are unchanged; only the memory layout differs while the audit runs.

    Kernels whose strides are ambiguous (e.g. a first conv with one input channel, or 1x1 kernels) are
    re-strided too (see :func:`rurk.torchutil.in_format`): otherwise oneDNN runs that conv, and the pooling after it, in
    NCHW, which on CPU costs about half of a small CNN's forward time."""
    swapped = []
    if enabled:
        seen = set()
        for model in models:
            for p in model.parameters():
                if p.dim() != 4 or id(p) in seen:
                    continue
                seen.add(id(p))
                data = in_format(p.data, torch.channels_last)
                if data is not p.data:
                    swapped.append((p, p.data))
                    p.data = data
    try:
        yield
    finally:
        for p, data in swapped:
            p.data = data


def _chunks(n: int, size: int) -> list[tuple[int, int]]:
    """[0, n) cut into ceil(n/size) chunks of at most ``size`` whose lengths differ by at most one (no small tail:
    a tail of a few images would run at a fraction of the per-image speed)."""
    k = max(1, -(-n // size))
    return [(i * n // k, (i + 1) * n // k) for i in range(k)]


def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = model(x)
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != x.shape[0]:
        raise TypeError(
            "residual_knowledge: models must return logits of shape (batch, classes); got "
            f"{type(out).__name__} {tuple(getattr(out, 'shape', ()))}"
        )
    return out


def _perturbed_chunk(pr: Probe, m: nn.Module, a: nn.Module, xs, ys, tau: float, noise, target, s: int, e: int,
                     eff: str | None, clipped: torch.Tensor, t: int):
    """The copies (x_m, x_a) of one chunk at one tau that m and a classify: a random probe's clipped
    ``x + tau * noise`` (counting clipped coordinates into ``clipped[t]``), or an attack crafted on m, on a, or on
    each (``eff == "both"``) from the shared random starts and targets."""
    if eff is None:
        v = pr.shift(xs, tau, noise[s:e])
        clipped[t] += ((v < 0) | (v > 1)).sum()
        xm = v.clamp_(0.0, 1.0)
        return xm, xm
    dr = Draw(None if noise is None else noise[s:e], None if target is None else target[s:e])
    if eff == "both":
        return pr.apply(m, xs, ys, tau, dr).x, pr.apply(a, xs, ys, tau, dr).x
    xm = pr.apply(m if eff == "m" else a, xs, ys, tau, dr).x
    return xm, xm


def _group_draws(pr: Probe, x_rep, y_rep, blocks: list[int], r0: int, n: int, block_size: int, c: int, seed: int,
                 num_classes: int, dev) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The randomness of a group of sample blocks: each block draws its c copies' noise and targets from its own
    generator ``block_generator(seed, probe, block)``, so a copy never depends on how blocks are grouped."""
    noises, targets = [], []
    for b in blocks:
        s, e = (b * block_size - r0) * c, (min(n, (b + 1) * block_size) - r0) * c
        dr = pr.draw(x_rep[s:e], y_rep[s:e], block_generator(seed, pr.name, b, dev), num_classes)
        noises.append(dr.noise)
        targets.append(dr.target)
    return (None if noises[0] is None else torch.cat(noises)), (None if targets[0] is None else torch.cat(targets))


def _craft_on(pr: Probe, spec: AuditSpec) -> str | None:
    """The crafting model of an attack (the spec's, the probe's own, else its default; checked against what the
    probe allows); None for a random probe."""
    if not pr.adversarial:
        return None
    eff = spec.craft_on or getattr(pr, "craft_on", None) or pr.default_craft_on
    if eff not in pr.allowed_craft_on:
        raise ValueError(f"probe {pr.name!r} allows craft_on in {pr.allowed_craft_on}, got {eff!r}")
    return eff


def _wants_channels_last(channels_last: bool | None, x: torch.Tensor, models: tuple[nn.Module, ...]) -> bool:
    """channels_last as asked, else on for 4-D inputs to a model with a Conv2d; never for other inputs."""
    use_cl = (
        channels_last
        if channels_last is not None
        else (x.dim() == 4 and any(isinstance(mod, nn.Conv2d) for mdl in models for mod in mdl.modules()))
    )
    return bool(use_cl and x.dim() == 4)


class _Predictor:
    """Predictions of the audited model m and the reference a, with the checks every prediction needs.

    argmax of NaN logits is class 0, so a NaN model must never reach a count: every prediction also keeps its
    winning logit (max gives it with the argmax), checked when a pass over the copies is done (:meth:`check`);
    the verdict is given once at the end (:meth:`require_finite`). NaN and +inf win the max, so every row whose
    argmax would be made up is caught (a lone -inf never wins). The reference's predictions can be served from a
    shared :class:`ReferencePredictions` (``slot`` names them), and bf16 runs compare some chunks with fp32."""

    def __init__(self, m: nn.Module, a: nn.Module, dev, amp, bf16_check, shared: ReferencePredictions | None):
        self.m, self.a, self.amp, self.bf16_check, self.shared = m, a, amp, bf16_check, shared
        self.tops: dict[int, list[torch.Tensor]] = {id(mdl): [] for mdl in (m, a)}
        self.bad = {id(mdl): torch.zeros((), dtype=torch.long, device=dev) for mdl in (m, a)}
        self.seen = {id(mdl): 0 for mdl in (m, a)}
        self.reused = 0  # reference predictions served from ``shared`` (no forward pass)

    def __call__(self, model: nn.Module, xb: torch.Tensor, ref_check: bool = False, slot=None) -> torch.Tensor:
        shared = self.shared
        if model is self.a and shared is not None and slot is not None:
            if slot in shared.preds:
                self.reused += xb.shape[0]
            else:  # the first audit against a: compute (checked finite like any prediction) and keep
                shared.preds[slot] = self(model, xb, ref_check)
            return shared.preds[slot]
        with torch.inference_mode():
            with self.amp:
                top, pred = _logits(model, xb).max(1)
                self.tops[id(model)].append(top)
            if self.bf16_check is not None and ref_check:
                self.bf16_check.add(_logits(model, xb).argmax(1) != pred)
        return pred

    def check(self) -> None:
        """Count the non-finite winning logits kept since the last check."""
        for key, kept in self.tops.items():
            if kept:
                top = torch.cat(kept)
                self.bad[key] += top.shape[0] - torch.isfinite(top).sum()
                self.seen[key] += top.shape[0]
                kept.clear()

    def require_finite(self) -> None:
        for mdl, what in ((self.m, "the unlearned model"), (self.a, "the reference (retrained) model")):
            require_finite(what, self.bad[id(mdl)], self.seen[id(mdl)])


def _num_classes(m: nn.Module, a: nn.Module, x: torch.Tensor, y: torch.Tensor, fmt) -> int:
    """The number of classes both models output (they must agree, and the labels must be in range)."""
    with torch.inference_mode():
        out_m = _logits(m, in_format(x[:1], fmt))
        out_a = _logits(a, in_format(x[:1], fmt))
    num_classes = out_m.shape[1]
    if out_a.shape[1] != num_classes:
        raise ValueError(f"models disagree on the number of classes ({num_classes} vs {out_a.shape[1]})")
    if int(y.min()) < 0 or int(y.max()) >= num_classes:
        raise ValueError(f"labels must be in [0, {num_classes}), got [{int(y.min())}, {int(y.max())}]")
    return num_classes


def _audit_batch_size(batch_size: int | None, dev, adversarial: bool) -> int:
    """The images per forward pass: ``batch_size`` when given (refused below 1), else the device's default."""
    bs = int(batch_size) if batch_size else default_batch_size(dev, adversarial)
    if bs < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return bs


def _audit_bar(progress: bool | None, total: int, name: str):
    """The tqdm bar over tau x blocks when progress is shown, else None."""
    if not progress_enabled(progress):
        return None
    from tqdm.auto import tqdm  # only when a bar is shown

    return tqdm(total=total, desc=f"audit {name}", unit="block", leave=False)


def _zero_counts(n_tau: int, n: int, both: bool, dev) -> tuple:
    """The counters (k_m, k_a, k_d, clipped), zero on the device; k_d is None when each model is attacked on its
    own copies (``both``)."""
    k_m = torch.zeros(n_tau, n, dtype=torch.long, device=dev)
    k_a = torch.zeros(n_tau, n, dtype=torch.long, device=dev)
    k_d = None if both else torch.zeros(n_tau, n, dtype=torch.long, device=dev)
    return k_m, k_a, k_d, torch.zeros(n_tau, dtype=torch.long, device=dev)


def _count_noisy(predict: _Predictor, pr: Probe, spec: AuditSpec, inputs: AuditInputs, seed: int, num_classes: int,
                 work_t: list[int], bs: int, eff: str | None, fmt, k: tuple, pbar) -> tuple[int, int]:
    """The general path (blocks x tau x chunks): which copies of each group of noise blocks each model labels
    correctly at every tau of ``work_t``, written into ``k`` = (k_m, k_a, k_d, clipped); returns the
    (forward, backward) passes it made."""
    x, y, n, dev = inputs.x, inputs.y, inputs.x.shape[0], inputs.device
    c, block_size, taus, adversarial = spec.draws, spec.block_size, list(spec.taus), pr.adversarial
    k_m, k_a, k_d, clipped = k
    crafts = (2 if eff == "both" else 1) if adversarial else 0
    steps = (getattr(pr, "steps", 1) if adversarial else 0)
    n_blocks = -(-n // block_size)
    per_group = max(1, bs // (block_size * c))
    groups = [list(range(g, min(n_blocks, g + per_group))) for g in range(0, n_blocks, per_group)]
    fwd = bwd = 0
    for gi, blocks in enumerate(groups):
        r0, r1 = blocks[0] * block_size, min(n, (blocks[-1] + 1) * block_size)
        x_rep = x[r0:r1].repeat_interleave(c, 0)
        y_rep = y[r0:r1].repeat_interleave(c, 0)
        noise, target = _group_draws(pr, x_rep, y_rep, blocks, r0, n, block_size, c, seed, num_classes, dev)
        noise = None if noise is None else in_format(noise, fmt)
        x_rep = in_format(x_rep, fmt)
        N = x_rep.shape[0]
        for t in work_t:
            hits = _group_hits(predict, pr, x_rep, y_rep, noise, target, taus[t], t, gi, bs, eff,
                               spec.bf16 and gi == 0, clipped)
            for kt, h in zip((k_m, k_a, k_d), hits):
                if kt is not None:
                    kt[t, r0:r1] = h.view(-1, c).sum(1)
            fwd += 2 * N
            if adversarial and taus[t] > 0:
                fwd += crafts * steps * N
                bwd += crafts * steps * N
            if pbar is not None:
                pbar.update(len(blocks))
    return fwd, bwd


def count_correct(unlearned: nn.Module, retrained: nn.Module, inputs: AuditInputs, pr: Probe, spec: AuditSpec,
                  seed: int, *, batch_size: int | None = None, channels_last: bool | None = None,
                  progress: bool | None = None, reference: ReferencePredictions | None = None) -> Counts:
    """The counting kernel: for every tau and sample, how many of its c perturbed copies each model classifies
    as the true label (and how many copies the two models label differently). Both models in eval mode (restored
    afterwards); noise from fixed-size sample blocks seeded ``derive_seed(seed, probe, block)``, reused at every
    tau; counts stay on the device until the end. A model whose logits are NaN or inf on any input it classified is
    refused (:class:`rurk.torchutil.NonFiniteLogits`, naming it and how many inputs), never counted. ``reference``
    (random probes only) shares the retrained model's predictions across audits against it
    (:class:`ReferencePredictions`). One model passed as both (``count_correct(m, m, ...)``) is counted in one pass
    (``k_a`` = ``k_m``): what the audit without Re-train and the estimate of Re-train use."""
    x, y, dev = inputs.x, inputs.y, inputs.device
    n, c, taus, n_tau = x.shape[0], spec.draws, list(spec.taus), len(spec.taus)
    eff = _craft_on(pr, spec)
    params = dict(pr.params)
    if pr.adversarial:
        params["craft_on"] = eff
    bs = _audit_batch_size(batch_size, dev, pr.adversarial)
    use_cl = _wants_channels_last(channels_last, x, (unlearned, retrained))
    fmt = torch.channels_last if use_cl else torch.contiguous_format
    amp = torch.autocast(dev.type, dtype=torch.bfloat16) if spec.bf16 else nullcontext()
    zero_t = [i for i, t in enumerate(taus) if t == 0.0 and spec.tau0_shortcut]
    work_t = [i for i in range(n_tau) if i not in zero_t]
    n_blocks = -(-n // spec.block_size)
    pbar = _audit_bar(progress, n_blocks * n_tau, pr.name)
    m, a = unlearned, retrained
    shared = reference if eff is None else None  # attacks craft copies on the audited model: nothing to share
    if shared is not None:
        shared.bind((id(a), seed, tuple(taus), c, spec.block_size, bs, pr.name, repr(sorted(params.items())), n,
                     spec.bf16, use_cl, spec.tau0_shortcut, inputs.index.tobytes()))
    grad_ctx = torch.no_grad() if pr.adversarial else torch.inference_mode()
    try:
        with eval_mode(m, a), _channels_last_weights((m, a), use_cl), grad_ctx:
            num_classes = _num_classes(m, a, x, y, fmt)
            k = _zero_counts(n_tau, n, eff == "both", dev)
            bf16_check = _BF16Check(dev) if spec.bf16 else None
            predict = _Predictor(m, a, dev, amp, bf16_check, shared)
            fwd = 0
            if zero_t:  # the tau = 0 shortcut: every copy is x
                _count_tau0(predict, x, y, zero_t, c, bs, fmt, k[:3])
                fwd += 2 * n
                if pbar is not None:
                    pbar.update(n_blocks * len(zero_t))
            fwd_noisy, bwd = _count_noisy(predict, pr, spec, inputs, seed, num_classes, work_t, bs, eff, fmt, k, pbar)
            fwd += fwd_noisy - predict.reused
            if m is a and eff is None:  # one model counted on its own copies: one pass, not two
                fwd //= 2
            predict.require_finite()
            k_np = [None if kt is None else kt.cpu().numpy() for kt in k]
    finally:
        if pbar is not None:
            pbar.close()
    return Counts(*k_np, eff, params, bs, int(fwd), int(bwd),
                  bf16_check.fraction() if bf16_check is not None else None)


def _count_tau0(predict: _Predictor, x, y, zero_t: list[int], c: int, bs: int, fmt, k) -> None:
    """The tau = 0 shortcut: every copy is x, so one prediction per sample and model gives k = c * 1[pred = y]
    (and c * 1[pred_m != pred_a]) at every tau of ``zero_t``."""
    n, dev = x.shape[0], x.device
    k_m, k_a, k_d = k
    pm0 = torch.empty(n, dtype=torch.long, device=dev)
    pa0 = torch.empty(n, dtype=torch.long, device=dev)
    for s, e in _chunks(n, bs):
        xb = in_format(x[s:e], fmt)
        pm0[s:e] = predict(predict.m, xb)
        pa0[s:e] = pm0[s:e] if predict.a is predict.m else predict(predict.a, xb, slot=("tau0", s))
    predict.check()
    for t in zero_t:
        k_m[t] = c * (pm0 == y)
        k_a[t] = c * (pa0 == y)
        if k_d is not None:
            k_d[t] = c * (pm0 != pa0)


def _group_hits(predict: _Predictor, pr: Probe, x_rep, y_rep, noise, target, tau: float, t: int, gi: int, bs: int,
                eff: str | None, check_first: bool, clipped: torch.Tensor):
    """Per copy of one group of blocks at one tau: whether m and a label it correctly and whether they disagree
    (None when each model is attacked on its own copies); ``check_first``: compare the first chunk with fp32."""
    N, dev = x_rep.shape[0], x_rep.device
    m, a = predict.m, predict.a
    hm = torch.empty(N, dtype=torch.bool, device=dev)
    ha = torch.empty(N, dtype=torch.bool, device=dev)
    hd = None if eff == "both" else torch.empty(N, dtype=torch.bool, device=dev)
    for ci, (s, e) in enumerate(_chunks(N, bs)):
        ys = y_rep[s:e]
        check = check_first and ci == 0
        xm, xa = _perturbed_chunk(pr, m, a, x_rep[s:e], ys, tau, noise, target, s, e, eff, clipped, t)
        pm = predict(m, xm, check)
        pa = pm if a is m and xa is xm else predict(a, xa, check, slot=(t, gi, ci))
        hm[s:e] = pm == ys
        ha[s:e] = pa == ys
        if hd is not None:
            hd[s:e] = pm != pa
    predict.check()
    return hm, ha, hd


class _BF16Check:
    """Counts, on the device, how many checked predictions bf16 autocast changed."""

    def __init__(self, device):
        self.diff = torch.zeros((), dtype=torch.long, device=device)
        self.seen = 0

    def add(self, changed: torch.Tensor) -> None:
        self.diff.add_(changed.sum())
        self.seen += changed.shape[0]

    def fraction(self) -> float | None:
        return float(self.diff) / self.seen if self.seen else None


def tau_statistics(counts: Counts, spec: AuditSpec, n_features: int, bootstrap_seed: int) -> list[TauStats]:
    """Set-level statistics of every tau from the counts (pure numpy; one paired bootstrap matrix for all tau)."""
    n = counts.k_m.shape[1]
    resample = bootstrap_indices(n, spec.bootstrap, bootstrap_seed) if spec.bootstrap > 0 else None
    per_tau = []
    for t, tau in enumerate(spec.taus):
        st = summarise_counts(counts.k_m[t], counts.k_a[t], None if counts.d is None else counts.d[t], spec.draws,
                              tau=tau, resample=resample)
        if counts.craft_on is None and counts.clipped is not None:  # random probes
            shortcut = tau == 0.0 and spec.tau0_shortcut
            st.clip_fraction = 0.0 if shortcut else float(counts.clipped[t]) / (n * spec.draws * n_features)
        per_tau.append(st)
    return per_tau


def residual_knowledge(
    unlearned: nn.Module,
    retrained: nn.Module,
    x,
    y,
    taus: Sequence[float] = DEFAULT_TAUS,
    probe: str | Probe = "gaussian",
    draws: int = 100,
    seed: int = 0,
    *,
    batch_size: int | None = None,
    block_size: int = DEFAULT_BLOCK_SIZE,
    craft_on: str | None = None,
    bootstrap: int = 1000,
    bootstrap_seed: int | None = None,
    device=None,
    progress: bool | None = None,
    index=None,
    probe_params: dict | None = None,
    max_forget: int | None = None,
    bf16: bool = False,
    channels_last: bool | None = None,
    tau0_shortcut: bool = True,
    spec: AuditSpec | None = None,
    reference: ReferencePredictions | None = None,
) -> AuditResult:
    """Audit residual knowledge of ``unlearned`` (m) against ``retrained`` (a) on forget samples (x, y).

    Any ``nn.Module`` classifiers work that take inputs in [0, 1] and return (batch, classes) logits.
    The audit runs on the models' device (that of their first parameter; both must agree) and moves
    x and y there; the models are not moved. Both are put in eval mode and restored afterwards.

    Parameters
    ----------
    taus: perturbation strengths (default: the paper's linspace(0, 8/255, 11)).
    probe: a registry name of :data:`rurk.perturb.PROBES` (with ``probe_params``) or a Probe instance.
    draws: c, copies per sample and tau.
    seed: noise seed; block b of ``block_size`` samples draws from a generator on the device seeded with
        ``derive_seed(seed, probe.name, b)`` (BLAKE2b, stable across runs and machines). A block's
        draws are reused at every tau (common random numbers).
    batch_size: images per forward pass (default :func:`default_batch_size`). Does not change the
        perturbations, only (through floating-point near-ties) possibly an argmax.
    block_size: samples per noise block; part of the noise definition.
    craft_on: for attacks, the crafting model: ``'m'``, ``'a'`` or ``'both'`` (each model attacked with
        its own copies from the same random starts; ``disagreement`` is then None). Default: the
        probe's (``'m'`` for fgsm/pgd, which allow nothing else; ``pgd-recall``'s own ``craft_on``,
        default ``'both'``). Ignored by random probes.
    bootstrap, bootstrap_seed: B percentile-bootstrap resamples over samples (0: no intervals), seeded
        with ``bootstrap_seed`` (default ``seed``); one (B, n) resample matrix is used for all tau.
    device: optional check: the device the models must be on (required only for parameter-free models).
    index: source-dataset index of each sample (default 0..n-1), for the per-sample table.
    max_forget: audit only a seeded random subset of this many samples.
    bf16: evaluate the models under bfloat16 autocast (attacks still craft in fp32). The first chunk of
        each tau is also evaluated in fp32 and the fraction of changed predictions is put in ``notes``.
    channels_last: use channels_last inputs and conv kernels (kernels restored afterwards); default: on
        for 4-D inputs when a model has a Conv2d.
    progress: tqdm bar over tau x blocks; None follows the global switch (``RURK_PROGRESS=0`` / ``--quiet``).
    tau0_shortcut: at tau = 0 evaluate each sample once (every copy equals x) and set k = c*1[pred=y].
    reference: a :class:`ReferencePredictions` shared by several audits against the same ``retrained`` model on
        the same samples and spec (random probes): its predictions are computed once (`rurk run` does this per seed).
    spec: a resolved :class:`AuditSpec` (what `rurk run` and `rurk audit` pass); it replaces ``taus``, ``probe``
        (by name), ``draws``, ``craft_on``, ``bootstrap``, ``bootstrap_seed``, ``probe_params``, ``max_forget``,
        ``block_size``, ``bf16`` and ``tau0_shortcut``, and its ``noise_seed`` (when set) replaces ``seed``.

    The work is done by three functions that can be used alone: :func:`check_inputs`, the counting kernel
    :func:`count_correct` and the statistics :func:`tau_statistics`.
    """
    t_start = time.perf_counter()
    if spec is None:
        spec = AuditSpec(probe=probe, probe_params=dict(probe_params or {}), taus=tuple(taus), draws=draws,
                         bootstrap=bootstrap, bootstrap_seed=bootstrap_seed, max_forget=max_forget, craft_on=craft_on,
                         block_size=block_size, bf16=bool(bf16), tau0_shortcut=tau0_shortcut)
    pr = spec.make_probe()
    seed = int(spec.noise_seed if spec.noise_seed is not None else seed)
    inputs = check_inputs(unlearned, retrained, x, y, index=index, device=device, max_forget=spec.max_forget, seed=seed)
    counts = count_correct(unlearned, retrained, inputs, pr, spec, seed, batch_size=batch_size,
                           channels_last=channels_last, progress=progress, reference=reference)
    bseed = int(seed if spec.bootstrap_seed is None else spec.bootstrap_seed)
    per_tau = tau_statistics(counts, spec, int(np.prod(inputs.x.shape[1:])), bseed)
    return _audit_result(pr, spec, inputs, counts, per_tau, seed, bseed, time.perf_counter() - t_start)


def _audit_result(pr: Probe, spec: AuditSpec, inputs: AuditInputs, counts: Counts, per_tau: list[TauStats],
                  seed: int, bseed: int, seconds: float) -> AuditResult:
    """The :class:`AuditResult` of one audit from its parts (the notes say how far bf16 changed predictions)."""
    notes = list(pr.notes)
    if spec.bf16:
        frac = counts.bf16_mismatch
        notes.append(f"bf16 autocast: {frac if frac is not None else 'n/a'} of predictions differ from fp32 on the checked chunks")
    return AuditResult(
        probe=pr.name,
        probe_params=counts.probe_params,
        craft_on=counts.craft_on,
        c=spec.draws,
        taus=list(spec.taus),
        per_tau=per_tau,
        index=inputs.index,
        label=inputs.y.cpu().numpy(),
        k_m=counts.k_m,
        k_a=counts.k_a,
        d=counts.d,
        seed=seed,
        bootstrap=spec.bootstrap,
        bootstrap_seed=bseed,
        block_size=spec.block_size,
        batch_size=counts.batch_size,
        device=str(inputs.device),
        bf16=spec.bf16,
        timing=Timing(seconds=seconds, forward_passes=counts.forward_passes,
                      backward_passes=counts.backward_passes),
        notes=notes,
        bf16_mismatch=counts.bf16_mismatch if spec.bf16 else None,
    )
