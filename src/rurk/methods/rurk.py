"""RURK: Robust Unlearning against Residual Knowledge (the paper's method; spec: rurk.md).

Algorithm 1 of the paper, literally: for every retain batch take the next batch of a *cycling* forget
stream (its own generator, a fresh shuffle at every exhaustion), draw ``copies`` (v) perturbed copies of the
forget batch with one of the probes of :mod:`rurk.perturb`, and take one SGD step on

    L = CE(h(x_r), y_r) − λ_f·CE(h(x_f), y_f) − λ_a·CE(h(X′), y_f)      random probes and ``pgd-recall``
    L = CE(h(x_r), y_r) − λ_f·CE(h(x_f), y_f) + λ_a·CE(h(X′), y′)       targeted ``fgsm`` / ``pgd`` (y′ ≠ y)

with gradient-norm clipping at 1.0 and a cosine schedule to 0 over the planned iterations (stepped per
iteration). Three separate train-mode forward passes per step (retain, forget, perturbed), as in the paper.

This module also holds the *shared code path* of NegGrad+ (baselines.md §5: "NegGrad+ is RURK without the
perturbed term, up to scaling"): :func:`train_with_forget` runs the loop over (retain batch, next forget batch,
optional perturbed copies) and :func:`objective` is the weighted loss; ``rurk`` and ``neggrad_plus`` differ
only in the :class:`Weights` and whether a probe is given.

Logged per iteration (per-epoch means in ``record.history``, last-step values in ``record.extra["final"]``):
``L_r``, ``L_f``, ``L_adv``, ``loss`` (= L), ``grad_norm`` (before clipping, when clipping is on), ``lr_mean``
(the loop itself logs ``lr``, the last lr of each epoch); ``extra["final"]`` holds L_r, L_f, L_adv, L and lr of
the last step (read once, at the end: no per-step host sync). A warning is added when L_f (or, for the ascending
variants, L_adv) exceeds 10× its first-step value — the signature of GA-style divergence (rurk.md §7).

Decisions (beyond the paper), also listed in rurk.md §2/§5/§6:
- the forget stream restarts with a fresh shuffle when exhausted; its seed is derived from the loader seed
  (``rurk.perturb.derive_seed(loader_seed, "forget")``) so it never shares the retain stream's random numbers;
- the probe's noise generator lives on the model's device, seeded with ``derive_seed(run_seed, "rurk-probe")``;
- ``max_steps`` / ``cosine_t_max`` select the reading of the paper's "200 iterations" (rurk.md §5); the record
  states which one was used (``record.extra["step_cap"]``);
- ``bn_update_on_forget=False``: the forget and perturbed passes normalise with batch statistics but leave the
  BatchNorm running buffers (and ``num_batches_tracked``) untouched (BN momentum 0 during those passes).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..perturb import PROBES, derive_seed, make_probe
from ..train import Batch, BatchStream, model_device, prepare_model, run_loop, to_layout
from .base import FinetuneConfig, MethodRecord, UnlearnData, fresh_copy, integer, log_uniform, register

DIVERGENCE_FACTOR = 10.0  # rurk.md §7: warn when L_f exceeds 10× its initial value


# ---------------------------------------------------------------------------------------------- config
@dataclass(frozen=True)
class RURKConfig(FinetuneConfig):
    lr: float = 0.01  # paper
    momentum: float = 0.9  # paper
    weight_decay: float = 5e-4  # paper
    epochs: int = 2  # paper (N; the ablation's "# epoch = 1" label is read as N = 2, rurk.md §5)
    batch_size: int = 128  # paper (retain and forget loaders)
    schedule: str = "cosine"  # paper: cosine annealing; to 0 over the planned iterations, per iteration (decision)
    cosine_t_max: int | None = None  # decision: None = planned iterations; 200 = reading 1 of rurk.md §5
    max_steps: int | None = None  # decision: no cap; 200 = reading 2 of rurk.md §5 (hard stop)
    clip_grad_norm: float | None = 1.0  # paper
    tau: float = 0.03  # paper
    copies: int = 1  # paper (v)
    probe: str = "gaussian"  # paper; any probe of rurk.perturb
    probe_params: dict = field(default_factory=dict)  # extra probe parameters, e.g. {"steps": 5} for pgd
    lambda_f: float = 0.03  # paper (small scale; reused on fmnist5/digits*, decision)
    lambda_a: float = 0.03  # paper (small scale); preset cifar10: 0.00045 (paper)
    bn_update_on_forget: bool = True  # decision: True = literal Algorithm 1 (rurk.md §6)

    def __post_init__(self):
        if self.copies < 1:
            raise ValueError(f"copies = {self.copies!r}: expected an integer >= 1")
        if not self.tau >= 0:
            raise ValueError(f"tau = {self.tau!r}: expected a number >= 0")
        if self.probe not in PROBES:
            raise ValueError(f"probe = {self.probe!r}: expected one of {', '.join(sorted(PROBES))}")


# ---------------------------------------------------------------------------------------------- pieces
def make_generator(seed: int, tag: str, device) -> torch.Generator:
    """A generator of its own on ``device`` for one random stream of a method (probe noise, NGD noise),
    seeded with :func:`rurk.perturb.derive_seed` ``(seed, tag)`` so it never shares another stream's numbers."""
    return torch.Generator(device=torch.device(device)).manual_seed(derive_seed(int(seed), tag))


@dataclass(frozen=True)
class Weights:
    """L = retain·CE_r − forget·CE_f + adv·(sign·CE_adv) — see :func:`objective`."""

    retain: float = 1.0
    forget: float = 0.0
    adv: float = 0.0


@dataclass(frozen=True)
class PerturbedBatch:
    """v perturbed copies of a forget batch: inputs, the labels their CE is taken against, and the sign of the
    term: −1 = ascend on CE(·, y) (random probes, ``pgd-recall``), +1 = train towards y′ (targeted probes)."""

    x: torch.Tensor
    labels: torch.Tensor
    sign: float


def perturb_forget(probe, model: nn.Module, x_f: torch.Tensor, y_f: torch.Tensor, tau: float, copies: int,
                   generator: torch.Generator, num_classes: int) -> PerturbedBatch:
    """The one place RURK calls a probe: ``copies`` fresh perturbed copies of every forget sample (copy-major,
    ``X′ = concat_i perturb(x_f)``, labels ``y_f.repeat(copies)``), crafted on the *current* model (the probe
    puts it in eval mode, takes input gradients only and restores mode and ``requires_grad``). Targeted probes
    return the drawn y′ ≠ y (uniform, per sample and copy) as labels.

    Uses the probe's fast path (``draw`` + ``apply``, no input-range check: training data is in [0, 1] by the
    TensorData contract) so that no host sync is added per step."""
    x = x_f.repeat(copies, *([1] * (x_f.dim() - 1)))
    y = y_f.repeat(copies)
    with torch.no_grad():
        draw = probe.draw(x, y, generator, num_classes)
    out = probe.apply(model, x, y, tau, draw)
    x_adv = to_layout(out.x.detach(), True)
    if probe.targeted:
        return PerturbedBatch(x_adv, out.target, +1.0)
    return PerturbedBatch(x_adv, y, -1.0)


@contextmanager
def bn_stats_frozen(model: nn.Module, active: bool = True) -> Iterator[None]:
    """While active: BatchNorm layers still normalise with batch statistics (train mode) but their running
    buffers do not move (momentum 0; ``num_batches_tracked`` restored on exit)."""
    saved = []
    if active:
        for m in model.modules():
            if isinstance(m, _BatchNorm) and m.training and m.track_running_stats:
                nbt = m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None
                saved.append((m, m.momentum, nbt))
                m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum, nbt in saved:
            m.momentum = momentum
            if nbt is not None:
                m.num_batches_tracked.copy_(nbt)


def objective(model: nn.Module, retain: Batch, forget: Batch, perturbed: PerturbedBatch | None, w: Weights,
              *, bn_update_on_forget: bool = True) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The shared loss of RURK and NegGrad+ on one step (batch-mean CE, three separate forward passes):

        L = w.retain·CE(h(x_r), y_r) − w.forget·CE(h(x_f), y_f) + perturbed.sign·w.adv·CE(h(X′), labels)

    Returns ``(L, {"L_r", "L_f"[, "L_adv"]})`` (detached logs)."""
    x_r, y_r = retain
    x_f, y_f = forget
    loss_r = F.cross_entropy(model(x_r), y_r)
    with bn_stats_frozen(model, active=not bn_update_on_forget):
        loss_f = F.cross_entropy(model(x_f), y_f)
        loss_adv = F.cross_entropy(model(perturbed.x), perturbed.labels) if perturbed is not None else None
    loss = w.retain * loss_r - w.forget * loss_f
    logs = {"L_r": loss_r.detach(), "L_f": loss_f.detach()}
    if loss_adv is not None:
        loss = loss + perturbed.sign * w.adv * loss_adv
        logs["L_adv"] = loss_adv.detach()
    return loss, logs


def step_cap_reading(cfg: FinetuneConfig) -> str:
    """Which reading of the paper's "200 iterations" a config uses (rurk.md §5), for the run record."""
    if cfg.max_steps and cfg.cosine_t_max:
        return (f"hard stop after {cfg.max_steps} iterations (reading 2) with a cosine period of "
                f"{cfg.cosine_t_max} iterations")
    if cfg.max_steps:
        return f"hard stop after {cfg.max_steps} iterations (reading 2); cosine horizon = planned iterations"
    if cfg.cosine_t_max:
        return f"cosine period {cfg.cosine_t_max} iterations, all epochs run, no cap (reading 1)"
    return "no cap; cosine horizon = planned iterations (default)"


class _Tracker:
    """Keeps, on the device and without host syncs, the first and the largest L_f / L_adv and the last
    step's logs; :meth:`finish` converts them once at the end."""

    def __init__(self, watch: tuple[str, ...]):
        self.watch = watch
        self.first: dict[str, torch.Tensor] = {}
        self.peak: dict[str, torch.Tensor] = {}
        self.last: dict[str, torch.Tensor] = {}

    def update(self, logs: dict[str, torch.Tensor]) -> None:
        for k in self.watch:
            if k in logs:
                v = logs[k]
                if k not in self.first:
                    self.first[k], self.peak[k] = v, v
                else:
                    self.peak[k] = torch.maximum(self.peak[k], v)
        self.last = logs

    def finish(self, record: MethodRecord) -> None:
        record.extra["final"] = {k: float(v) for k, v in self.last.items()}
        for k in self.watch:
            if k not in self.first:
                continue
            first, peak = float(self.first[k]), float(self.peak[k])
            record.extra[f"{k}_first"], record.extra[f"{k}_peak"] = first, peak
            if not math.isfinite(peak) or peak > DIVERGENCE_FACTOR * first:
                record.warnings.append(
                    f"{k} rose to {peak:.4g}, more than {DIVERGENCE_FACTOR:g}x its initial value {first:.4g}: "
                    "the signature of gradient-ascent divergence (lower lr/lambda or fewer steps)")


def forget_passes(steps: int, forget_batches: int) -> float:
    """How many passes over S_f a run of ``steps`` iterations made (one forget batch per step)."""
    return steps / max(forget_batches, 1)


def train_with_forget(
    model: nn.Module,
    data: UnlearnData,
    cfg: FinetuneConfig,
    record: MethodRecord,
    *,
    weights: Weights,
    perturb: "PerturbFn | None" = None,
    bn_update_on_forget: bool = True,
    desc: str = "rurk",
) -> MethodRecord:
    """The shared loop of RURK and NegGrad+ (trains ``model`` in place through :func:`rurk.train.run_loop`).

    Every retain batch (retain stream seeded with the loader seed, one pass per epoch) is paired with the next
    batch of the cycling forget stream (own generator); ``perturb(model, x_f, y_f)`` (RURK) adds the perturbed
    copies. Steps: epochs·⌈|S_r|/B⌉, or ``max_steps``."""
    prepare_model(model)
    device = model_device(model)
    optim = cfg.optim()
    retain = BatchStream(data.retain, cfg.batch_size, data.loader_seed, device=device)
    forget_seed = derive_seed(data.loader_seed, "forget")
    forget = BatchStream(data.forget, cfg.batch_size, forget_seed, device=device)
    watch = ("L_f", "L_adv") if perturb is not None and not getattr(perturb, "targeted", False) else ("L_f",)
    tracker = _Tracker(watch)

    def loss_fn(model: nn.Module, batch: Batch):
        x_f, y_f = forget.next()
        perturbed = perturb(model, x_f, y_f) if perturb is not None else None
        loss, logs = objective(model, batch, (x_f, y_f), perturbed, weights, bn_update_on_forget=bn_update_on_forget)
        tracker.update({**logs, "L": loss.detach()})
        return loss, logs

    loop = run_loop(model, lambda e: retain.epoch(), len(retain), loss_fn, optim, desc=desc)
    record.absorb(loop)
    tracker.finish(record)
    record.extra["final"]["lr"] = loop.final.get("lr")
    record.extra.update(
        planned_steps=loop.planned_steps,
        step_cap=step_cap_reading(cfg),
        bn_update_on_forget=bn_update_on_forget,
        forget_loader_seed=forget_seed,
        forget_passes=forget_passes(loop.steps, len(forget)),
    )
    return record


# ---------------------------------------------------------------------------------------------- method
PerturbFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], PerturbedBatch]


def make_perturb(cfg: RURKConfig, seed: int, device, num_classes: int) -> PerturbFn:
    """The probe (from :mod:`rurk.perturb`) and its own noise generator, wrapped as RURK's ``perturb``."""
    probe = make_probe(cfg.probe, **cfg.probe_params)
    generator = make_generator(seed, "rurk-probe", device)

    def perturb(model: nn.Module, x_f: torch.Tensor, y_f: torch.Tensor) -> PerturbedBatch:
        return perturb_forget(probe, model, x_f, y_f, cfg.tau, cfg.copies, generator, num_classes)

    perturb.targeted = probe.targeted  # type: ignore[attr-defined]
    perturb.probe = probe  # type: ignore[attr-defined]
    return perturb


@register(
    "rurk", RURKConfig, "RURK: retain CE − λ_f·forget CE − λ_a·CE on perturbed forget copies",
    presets={"cifar10": {"lambda_a": 0.00045}},  # paper
    # spec baselines.md §0: every coefficient on its own, the training tau included (it need not equal the
    # audit's); ranges (decision) reach from "no change" to "collapse" on fmnist5
    space={"lr": log_uniform(1e-3, 0.1), "epochs": integer(1, 12), "lambda_f": log_uniform(1e-3, 0.5),
           "lambda_a": log_uniform(1e-3, 0.5), "tau": log_uniform(0.01, 0.3)},
)
def unlearn(original: nn.Module, data: UnlearnData, cfg: RURKConfig, seed: int):
    model = fresh_copy(original)
    record = MethodRecord("rurk", {}, seed)
    perturb = make_perturb(cfg, seed, model_device(model), data.num_classes)
    weights = Weights(retain=1.0, forget=cfg.lambda_f, adv=cfg.lambda_a)
    train_with_forget(model, data, cfg, record, weights=weights, perturb=perturb,
                      bn_update_on_forget=cfg.bn_update_on_forget, desc="rurk")
    record.extra.update(probe=cfg.probe, probe_targeted=perturb.targeted, tau=cfg.tau, copies=cfg.copies,
                        probe_seed=derive_seed(seed, "rurk-probe"))
    return model, record
