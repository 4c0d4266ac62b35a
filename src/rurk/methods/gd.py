"""GD: continue training Original on the retain set with cross-entropy.

Neel, Roth, Sharifi-Malvajerdi, *Descent-to-Delete* (ALT 2021). GD never sees S_f, so it keeps
residual knowledge: in the paper it is the clearest r > 1 case on CIFAR-10 (spec: baselines.md §2).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ._retain import finetune_on_retain
from .base import FINETUNE_SPACE, FinetuneConfig, MethodRecord, UnlearnData, fresh_copy, register


@dataclass(frozen=True)
class GDConfig(FinetuneConfig):
    lr: float = 0.01  # paper
    momentum: float = 0.9  # paper
    weight_decay: float = 1e-4  # paper
    epochs: int = 10  # paper
    batch_size: int = 128  # paper


@register("gd", GDConfig, "fine-tune Original on the retain set (Neel et al. 2021)", space=FINETUNE_SPACE)
def unlearn(original: nn.Module, data: UnlearnData, cfg: GDConfig, seed: int):
    model = fresh_copy(original)
    record = MethodRecord("gd", {}, seed)
    return model, finetune_on_retain(model, data, cfg, record)
