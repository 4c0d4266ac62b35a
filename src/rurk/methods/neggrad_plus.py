"""NegGrad+: retain descent plus a small forget ascent (spec: baselines.md §5).

Kurmanji, Triantafillou, Hayes, Triantafillou, *Towards Unbounded Machine Unlearning* (NeurIPS 2023).
For each retain batch take the next batch of the cycling forget stream (as in RURK) and minimise

    L = (1 − β)·CE(h(x_r), y_r) − β·CE(h(x_f), y_f)

(the reference code's α·L_r − (1−α)·L_f with α = 1 − β). NegGrad+ is RURK without the perturbed term, up to
scaling, so it runs through RURK's code path (:func:`rurk.methods.rurk.train_with_forget`) with
``Weights(retain=1−β, forget=β)`` and no probe; it has the same ``bn_update_on_forget`` option.
Constant lr (baselines.md §0: the paper names no schedule for the baselines).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import nn

from ._forget import Weights, train_with_forget
from .base import (
    FinetuneConfig,
    MethodRecord,
    UnlearnData,
    fresh_copy,
    integer,
    log_uniform,
    register,
)


@dataclass(frozen=True)
class NegGradPlusConfig(FinetuneConfig):
    forget_term: ClassVar[bool] = True  # calibrated stopping applies (rurk.methods._calibrate)

    epochs: int = 1  # paper (3 for CIFAR-10 class unlearning: preset "cifar10-class")
    clip_grad_norm: float | None = 1.0  # paper
    beta: float = 0.001  # paper (forget weight; retain weight 1 − β)
    bn_update_on_forget: bool = True  # decision: as RURK (rurk.md §6)

    def __post_init__(self):
        super().__post_init__()
        if not 0 <= self.beta <= 1:
            raise ValueError(f"beta = {self.beta!r}: expected a number in [0, 1]")


@register(
    "neggrad_plus", NegGradPlusConfig, "NegGrad+: (1−β)·retain CE − β·forget CE (Kurmanji et al. 2023)",
    presets={"cifar10": {}, "cifar10-class": {"epochs": 3}},  # paper
    space={"lr": log_uniform(1e-3, 0.3), "epochs": integer(1, 10), "beta": log_uniform(1e-3, 0.5)},  # decision
)
def unlearn(original: nn.Module, data: UnlearnData, cfg: NegGradPlusConfig, seed: int):
    model = fresh_copy(original)
    record = MethodRecord("neggrad_plus", {}, seed)
    train_with_forget(model, data, cfg, record, weights=Weights(retain=1.0 - cfg.beta, forget=cfg.beta),
                      bn_update_on_forget=cfg.bn_update_on_forget, desc="neggrad_plus")
    return model, record
