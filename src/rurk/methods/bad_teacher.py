"""Bad Teacher: competent/incompetent-teacher distillation (Chundawat, Tarun, Mandal, Kankanhalli, *Can Bad
Teaching Induce Forgetting? Unlearning in Deep Networks Using an Incompetent Teacher*, AAAI 2023; spec:
baselines.md §12). Implemented from the spec.

- Student: a copy of Original, fine-tuned in train mode. Teachers, frozen, in eval mode: the competent one is
  Original, the incompetent one a randomly initialised copy of the architecture (the architecture's own init,
  ``reset_parameters_of`` for a rurk Classifier, drawn from ``make_generator(seed, "bad_teacher-init", device)``).
- Data: S_f (flag 1) ∪ a random ``retain_fraction`` (30%) of S_r (flag 0; subset drawn with
  ``make_generator(seed, "bad_teacher-subset", "cpu")``), shuffled with the loader seed. The flag travels in the
  stream's label slot: the method never uses the true labels.
- Loss (:func:`bad_teacher_loss`): the student matches the flag's teacher,
  KL(softmax(t_flag/T) ‖ softmax(s/T)) with ``batchmean`` reduction (spec; the reference code's elementwise mean
  rescales the effective lr by 1/C) and T = 1.
- Adam lr 1e-4, 1 epoch, batch 256 (reference code). No weight decay (the reference code uses Adam's default).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..data.tensordata import TensorData
from ..torchutil import derive_seed, make_generator, model_device
from ..train import Batch, BatchStream, OptimConfig, prepare_model, run_loop
from ._tail import reinit_tail
from .base import (
    FinetuneConfig,
    MethodRecord,
    Param,
    UnlearnData,
    calibrator,
    fresh_copy,
    integer,
    log_uniform,
    register,
)


@dataclass(frozen=True)
class BadTeacherConfig(FinetuneConfig):
    forget_term: ClassVar[bool] = True  # calibrated stopping applies (rurk.methods._calibrate)

    optimizer: str = "adam"  # reference code
    lr: float = 1e-4  # reference code
    weight_decay: float = 0.0  # reference code (Adam's default)
    epochs: int = 1  # reference code
    batch_size: int = 256  # reference code
    temperature: float = 1.0  # reference code (KL temperature T)
    retain_fraction: float = 0.3  # reference code: share of S_r distilled from the competent teacher

    def __post_init__(self):
        super().__post_init__()
        if self.optimizer not in ("sgd", "adam"):
            raise ValueError(f"optimizer = {self.optimizer!r}: expected 'sgd' or 'adam'")
        if not self.temperature > 0:
            raise ValueError(f"temperature = {self.temperature!r}: expected a number > 0")
        if not 0 <= self.retain_fraction <= 1:
            raise ValueError(f"retain_fraction = {self.retain_fraction!r}: expected a number in [0, 1]")

    def optim(self) -> OptimConfig:
        return replace(super().optim(), optimizer=self.optimizer)


def bad_teacher_loss(student_logits: torch.Tensor, competent_logits: torch.Tensor, incompetent_logits: torch.Tensor,
                     flags: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """(1/B)·Σ_b KL(softmax(t_b/T) ‖ softmax(s_b/T)) with t_b the incompetent teacher's logits where flag_b = 1
    (forget rows) and the competent teacher's where flag_b = 0 (retain rows); computed in float32."""
    t = float(temperature)
    teacher = torch.where(flags.bool()[:, None], incompetent_logits, competent_logits).float()
    log_pt = F.log_softmax(teacher / t, dim=1)
    log_ps = F.log_softmax(student_logits.float() / t, dim=1)
    return F.kl_div(log_ps, log_pt, reduction="batchmean", log_target=True)


def distillation_set(data: UnlearnData, fraction: float, generator: torch.Generator) -> TensorData:
    """S_f with label 1 ∪ a random ``fraction`` of S_r (⌊fraction·|S_r|⌋ rows) with label 0."""
    n = int(fraction * len(data.retain))
    rows = torch.randperm(len(data.retain), generator=generator)[:n].sort().values
    kept = data.retain.subset(rows)
    forget = data.forget
    return TensorData.concat(TensorData(forget.x, torch.ones_like(forget.y), forget.index),
                             TensorData(kept.x, torch.zeros_like(kept.y), kept.index))


def frozen_teacher(model: nn.Module) -> nn.Module:
    return prepare_model(model).eval().requires_grad_(False)


@register(
    "bad_teacher", BadTeacherConfig, "distil Original on a retain subset and a random net on the forget set "
    "(Chundawat et al. 2023)",
    presets={"cifar10": {}},  # reference code: its values are the CIFAR ones (the defaults)
    # decision: lr a factor 10-100 around the reference 1e-4, epochs, the retain share (uniform)
    space={"lr": log_uniform(1e-5, 1e-2), "epochs": integer(1, 10), "retain_fraction": Param("float", 0.05, 1.0)},
)
def unlearn(original: nn.Module, data: UnlearnData, cfg: BadTeacherConfig, seed: int):
    device = model_device(original)
    competent = frozen_teacher(fresh_copy(original))
    incompetent = fresh_copy(original)
    reinit_tail(incompetent, [""], make_generator(seed, "bad_teacher-init", device))
    incompetent = frozen_teacher(incompetent)
    student = prepare_model(fresh_copy(original))

    subset = make_generator(seed, "bad_teacher-subset", "cpu")
    mixed = distillation_set(data, cfg.retain_fraction, subset)
    stream = BatchStream(mixed, cfg.batch_size, data.loader_seed, device=device)

    def loss_fn(model: nn.Module, batch: Batch):
        x, flags = batch
        with torch.no_grad():
            t_good, t_bad = competent(x), incompetent(x)
        return bad_teacher_loss(model(x), t_good, t_bad, flags, cfg.temperature)

    loop = run_loop(student, lambda e: stream.epoch(), len(stream), loss_fn, cfg.optim(),
                    calibration=calibrator(cfg, data, seed), desc="bad_teacher")
    record = MethodRecord("bad_teacher", {}, seed).absorb(loop)
    record.extra.update(planned_steps=loop.planned_steps, forget_rows=len(data.forget),
                        retain_rows=len(mixed) - len(data.forget), init_seed=derive_seed(int(seed), "bad_teacher-init"),
                        subset_seed=derive_seed(int(seed), "bad_teacher-subset"))
    return student, record
