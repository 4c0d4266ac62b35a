"""SCRUB: teacher-student unlearning (Kurmanji, Triantafillou, Hayes, Triantafillou, *Towards Unbounded Machine
Unlearning*, NeurIPS 2023; spec: baselines.md §7). Implemented from the spec, not from the original code.

Teacher: a frozen copy of Original in eval mode. Student: a copy of Original in train mode. With
p = softmax(z/T), KL_T(t‖s) = (T²/B)·Σ_b Σ_c p_t(log p_t − log p_s). Per epoch e = 1..E:

- if e ≤ msteps, max-steps first: one pass over the forget loader minimising −KL_T(teacher(x_f) ‖ student(x_f));
- then min-steps: one pass over the retain loader minimising γ·CE(student(x_r), y_r) + α·KL_T(teacher ‖ student).

Both KL terms are against the teacher. The whole run is ONE :func:`rurk.train.run_loop` call: ``batches(epoch)``
yields tagged batches ``(tag, x, y)`` (forget batches first in epochs ≤ msteps, then retain batches) and the loss
dispatches on the tag. The retain and forget streams own separate generators, both seeded with the loader seed.

SCRUB's epochs have |F|+|R| batches while e ≤ msteps and |R| after: ``run_loop`` gets the per-epoch counts, so
the cosine horizon (when a cosine schedule is chosen), the planned steps and the progress bar are exact.

Record: ``extra`` holds ``max_steps_per_epoch``/``min_steps_per_epoch`` (and totals, ``planned_steps``);
``history`` adds per-epoch means ``max_kl`` (forget KL on max-steps), ``min_ce`` and ``min_kl`` (retain terms)
next to the loop's ``loss`` (mean over all steps of the epoch, max-step losses being −KL).

Note (a property of the algorithm, not a deviation): KL(t‖s) has zero gradient at s = t. On a model without
BatchNorm/dropout the train-mode student starts equal to the eval-mode teacher, so the first max-steps move only
through weight decay until min-steps have separated the two.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..torchutil import model_device
from ..train import BatchStream, prepare_model, run_loop
from .base import (
    FinetuneConfig,
    MethodRecord,
    UnlearnData,
    calibrator,
    fresh_copy,
    integer,
    log_uniform,
    register,
)

MAX, MIN = "max", "min"


@dataclass(frozen=True)
class SCRUBConfig(FinetuneConfig):
    forget_term: ClassVar[bool] = True  # calibrated stopping applies (rurk.methods._calibrate)

    lr: float = 5e-4  # paper
    weight_decay: float = 5e-4  # paper
    epochs: int = 3  # reference code (E)
    msteps: int = 2  # reference code: max-steps only in epochs 1..msteps
    alpha: float = 0.001  # paper: weight of the retain KL term
    gamma: float = 1.0  # paper: weight of the retain CE (small CIFAR-5); presets cifar10 0.6, cifar10-class 75
    temperature: float = 4.0  # reference code (T)

    def __post_init__(self):
        super().__post_init__()
        if self.msteps < 0:
            raise ValueError(f"msteps = {self.msteps!r}: expected an integer >= 0")
        if self.temperature <= 0:
            raise ValueError(f"temperature = {self.temperature!r}: expected a number > 0")


def kl_t(teacher_logits: torch.Tensor, student_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL_T(t‖s) = (T²/B)·Σ_b Σ_c p_t,c·(log p_t,c − log p_s,c) with p = softmax(z/T), computed in float32."""
    t = float(temperature)
    log_pt = F.log_softmax(teacher_logits.float() / t, dim=1)
    log_ps = F.log_softmax(student_logits.float() / t, dim=1)
    return (t * t / teacher_logits.shape[0]) * (log_pt.exp() * (log_pt - log_ps)).sum()


def epoch_plan(n_forget_batches: int, n_retain_batches: int, epochs: int, msteps: int) -> list[tuple[int, int]]:
    """(max-steps, min-steps) of each epoch: forget batches only in epochs 1..msteps, retain batches always."""
    return [(n_forget_batches if e < msteps else 0, n_retain_batches) for e in range(epochs)]


@register(
    "scrub", SCRUBConfig, "teacher-student: max KL on forget, min CE+KL on retain (Kurmanji et al. 2023)",
    presets={"cifar10": {"gamma": 0.6}, "cifar10-class": {"gamma": 75.0}},  # paper
    # decision: lr around the paper's 5e-4, E and the max-steps epochs, the retain KL weight
    space={"lr": log_uniform(1e-4, 0.05), "epochs": integer(1, 10), "msteps": integer(1, 5),
           "alpha": log_uniform(1e-4, 1.0)},
)
def unlearn(original: nn.Module, data: UnlearnData, cfg: SCRUBConfig, seed: int):
    device = model_device(original)
    teacher = prepare_model(fresh_copy(original)).eval().requires_grad_(False)
    student = prepare_model(fresh_copy(original))
    retain = BatchStream(data.retain, cfg.batch_size, data.loader_seed, device=device)
    forget = BatchStream(data.forget, cfg.batch_size, data.loader_seed, device=device) if cfg.msteps > 0 else None
    plan = epoch_plan(len(forget) if forget is not None else 0, len(retain), cfg.epochs, cfg.msteps)

    # per-epoch bookkeeping by tag (tensors summed on the device; one host sync at the end)
    counts = [{MAX: 0, MIN: 0} for _ in plan]
    sums = [{"max_kl": 0.0, "min_ce": 0.0, "min_kl": 0.0} for _ in plan]
    current: dict = {"epoch": 0, "last": None}

    def batches(epoch: int):
        current["epoch"] = epoch
        if plan[epoch][0]:
            for x, y in forget.epoch():
                yield MAX, x, y
        for x, y in retain.epoch():
            yield MIN, x, y

    def loss_fn(model: nn.Module, batch):
        tag, x, y = batch
        with torch.no_grad():
            t_logits = teacher(x)
        s_logits = model(x)
        kl = kl_t(t_logits, s_logits, cfg.temperature)
        e = current["epoch"]
        counts[e][tag] += 1
        current["last"] = (e, tag)
        if tag == MAX:
            sums[e]["max_kl"] = sums[e]["max_kl"] + kl.detach()
            return -kl
        ce = F.cross_entropy(s_logits.float(), y)
        sums[e]["min_ce"] = sums[e]["min_ce"] + ce.detach()
        sums[e]["min_kl"] = sums[e]["min_kl"] + kl.detach()
        return cfg.gamma * ce + cfg.alpha * kl

    loop = run_loop(student, batches, [a + b for a, b in plan], loss_fn, cfg.optim(),
                    calibration=calibrator(cfg, data, seed), desc="scrub")

    if loop.diverged and current["last"] is not None:  # the non-finite loss was computed but not stepped on
        e, tag = current["last"]
        counts[e][tag] -= 1
    record = MethodRecord("scrub", {}, seed).absorb(loop)
    ran = [i for i, c in enumerate(counts) if c[MAX] or c[MIN]]
    record.history["max_kl"] = [float(sums[i]["max_kl"]) / counts[i][MAX] for i in ran if counts[i][MAX]]
    record.history["min_ce"] = [float(sums[i]["min_ce"]) / counts[i][MIN] for i in ran if counts[i][MIN]]
    record.history["min_kl"] = [float(sums[i]["min_kl"]) / counts[i][MIN] for i in ran if counts[i][MIN]]
    record.extra.update(
        planned_steps=loop.planned_steps,
        max_steps_per_epoch=[counts[i][MAX] for i in ran],
        min_steps_per_epoch=[counts[i][MIN] for i in ran],
        max_steps_total=sum(c[MAX] for c in counts),
        min_steps_total=sum(c[MIN] for c in counts),
    )
    return student, record
