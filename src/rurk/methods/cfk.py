"""CF-k: catastrophic forgetting of the last k layers (Goel et al., *Towards Adversarial Evaluation of Machine
Unlearning*, 2022; spec: baselines.md §6).

EU-k without re-initialisation: freeze everything before the tail (kept in eval mode, so its BatchNorm
statistics stay the original ones) and fine-tune the tail, starting from Original, on S_r. Tail selection as
in :mod:`rurk.methods.euk`. The paper finds CF-k keeps about as much residual knowledge as Original.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ._tail import TailConfig, train_tail
from .base import FINETUNE_SPACE, UnlearnData, register


@dataclass(frozen=True)
class CFkConfig(TailConfig):
    """Paper: SGD lr 0.01, momentum 0.9, weight decay 1e-4, batch 128, 10 epochs (all presets)."""


@register("cfk", CFkConfig, "fine-tune only the last k layers on the retain set (Goel et al. 2022)",
          space=FINETUNE_SPACE)
def unlearn(original: nn.Module, data: UnlearnData, cfg: CFkConfig, seed: int):
    return train_tail(original, data, cfg, seed, method="cfk", reinit=False)
