"""GD: continue training Original on the retain set with cross-entropy.

Neel, Roth, Sharifi-Malvajerdi, *Descent-to-Delete* (ALT 2021). GD never sees S_f, so it keeps
residual knowledge: in the paper it is the clearest r > 1 case on CIFAR-10 (spec: baselines.md §2).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ._retain import finetune_on_retain
from .base import (
    FINETUNE_SPACE,
    FinetuneConfig,
    MethodRecord,
    UnlearnData,
    fresh_copy,
    register,
)


@dataclass(frozen=True)
class GDConfig(FinetuneConfig):
    """GD uses the shared fine-tuning defaults unchanged (paper: SGD lr 0.01, momentum 0.9, weight decay 1e-4,
    10 epochs, batch 128)."""


@register("gd", GDConfig, "fine-tune Original on the retain set (Neel et al. 2021)", space=FINETUNE_SPACE)
def unlearn(original: nn.Module, data: UnlearnData, cfg: GDConfig, seed: int):
    model = fresh_copy(original)
    record = MethodRecord("gd", {}, seed)
    return model, finetune_on_retain(model, data, cfg, record)
