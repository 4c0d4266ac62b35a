"""The shared loop of the methods that pair every retain batch with the next batch of a cycling forget stream
(RURK and NegGrad+; baselines.md §5: "NegGrad+ is RURK without the perturbed term, up to scaling").

:func:`train_with_forget` runs :func:`rurk.train.run_loop` over (retain batch, next forget batch, optional
perturbed copies) and :func:`objective` is the weighted loss; the two methods differ only in the :class:`Weights`
and whether a ``perturb`` function is given. Logged per iteration (per-epoch means in ``record.history``,
last-step values in ``record.extra["final"]``): ``L_r``, ``L_f``, ``L_adv``, ``loss`` (= L), ``grad_norm`` and
``lr_mean``. A warning is added when L_f (or, for the ascending variants, L_adv) exceeds 10x its first-step
value — the signature of GA-style divergence (rurk.md §7).

Decisions: the forget stream restarts with a fresh shuffle when exhausted, seeded with
``derive_seed(loader_seed, "forget")`` so it never shares the retain stream's numbers; with
``bn_update_on_forget=False`` the forget and perturbed passes normalise with batch statistics but leave the
BatchNorm running buffers (and ``num_batches_tracked``) untouched.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..data.tensordata import TensorData
from ..torchutil import derive_seed, model_device, to_layout
from ..train import Batch, BatchStream, prepare_model, run_loop
from .base import FinetuneConfig, MethodRecord, UnlearnData, calibrator

DIVERGENCE_FACTOR = 10.0  # rurk.md §7: warn when L_f exceeds 10× its initial value


@dataclass(frozen=True)
class Weights:
    """L = retain·CE_r − forget·CE_f + adv·(sign·CE_adv) + anchor·CE_anchor — see :func:`objective`."""

    retain: float = 1.0
    forget: float = 0.0
    adv: float = 0.0
    anchor: float = 0.0


@dataclass(frozen=True)
class PerturbedBatch:
    """v perturbed copies of a forget batch: inputs, the labels their CE is taken against, and the sign of the
    term: −1 = ascend on CE(·, y) (random probes, ``pgd-recall``), +1 = train towards y′ (targeted probes)."""

    x: torch.Tensor
    labels: torch.Tensor
    sign: float


PerturbFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], PerturbedBatch]


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
              *, bn_update_on_forget: bool = True,
              anchor: PerturbedBatch | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The shared loss of RURK and NegGrad+ on one step (batch-mean CE, three separate forward passes):

        L = w.retain·CE(h(x_r), y_r) − w.forget·CE(h(x_f), y_f) + perturbed.sign·w.adv·CE(h(X′), labels)
            [+ w.anchor·CE(h(X′_c), y_c)]

    the last term (RURK's class anchor, beyond the paper) on perturbed copies of the retain batch's images of the
    forget classes, when ``anchor`` holds any. Returns ``(L, {"L_r", "L_f"[, "L_adv"][, "L_anchor"]})``."""
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
    if anchor is not None and w.anchor and len(anchor.labels):
        loss_c = F.cross_entropy(model(anchor.x), anchor.labels)
        loss = loss + w.anchor * loss_c
        logs["L_anchor"] = loss_c.detach()
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


def forget_stream(forget: TensorData, batch_size: int, loader_seed: int, device) -> tuple[BatchStream, int]:
    """The forget stream of the methods that step through S_f beside the retain stream (RURK, NegGrad+, RL,
    SalUn) and the seed it was shuffled with (for the record): its own generator, seeded
    ``derive_seed(loader_seed, "forget")``, so it never shares the retain stream's numbers."""
    seed = derive_seed(loader_seed, "forget")
    return BatchStream(forget, batch_size, seed, device=device), seed


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
    perturb: PerturbFn | None = None,
    anchor: PerturbFn | None = None,
    bn_update_on_forget: bool = True,
    desc: str = "rurk",
) -> MethodRecord:
    """The shared loop of RURK and NegGrad+ (trains ``model`` in place through :func:`rurk.train.run_loop`).

    Every retain batch (retain stream seeded with the loader seed, one pass per epoch) is paired with the next
    batch of the cycling forget stream (own generator); ``perturb(model, x_f, y_f)`` (RURK) adds the perturbed
    copies; ``anchor(model, x_r, y_r)`` (RURK's class anchor) the perturbed copies of the retain batch's
    forget-class images. Steps: epochs·⌈|S_r|/B⌉, or ``max_steps``."""
    prepare_model(model)
    device = model_device(model)
    optim = cfg.optim()
    retain = BatchStream(data.retain, cfg.batch_size, data.loader_seed, device=device)
    forget, forget_seed = forget_stream(data.forget, cfg.batch_size, data.loader_seed, device)
    watch = ("L_f", "L_adv") if perturb is not None and not getattr(perturb, "targeted", False) else ("L_f",)
    tracker = _Tracker(watch)

    def loss_fn(model: nn.Module, batch: Batch):
        x_f, y_f = forget.next()
        perturbed = perturb(model, x_f, y_f) if perturb is not None else None
        anchored = anchor(model, *batch) if anchor is not None else None
        loss, logs = objective(model, batch, (x_f, y_f), perturbed, weights, bn_update_on_forget=bn_update_on_forget,
                               anchor=anchored)
        tracker.update({**logs, "L": loss.detach()})
        return loss, logs

    loop = run_loop(model, lambda e: retain.epoch(), len(retain), loss_fn, optim,
                    calibration=calibrator(cfg, data, record.seed), desc=desc)
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
