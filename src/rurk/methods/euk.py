"""EU-k: exact unlearning of the last k layers (Goel et al., *Towards Adversarial Evaluation of Machine
Unlearning*, 2022; spec: baselines.md §6).

Freeze everything before the tail (kept in eval mode, so its BatchNorm statistics stay the original ones),
re-initialise the tail with the architecture's init (Conv/Linear and, a decision beyond the reference code, the
tail's BatchNorm affine parameters and running statistics), then train the tail on S_r. The tail defaults to
``model.tail_modules()`` (ResNet-18: all of ``body.layer4`` + ``head``, the paper's "last FC layer and the last
two residual blocks"); an integer ``k`` uses the reference counting rule instead, which for ResNet-18 with
k = 5 leaves out ``body.layer4.0.conv1``/``bn1``. Information in the frozen layers stays; in class unlearning
EU-k turns into transfer learning.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ._tail import TailConfig, train_tail
from .base import FINETUNE_SPACE, UnlearnData, register


@dataclass(frozen=True)
class EUkConfig(TailConfig):
    """Paper: SGD lr 0.01, momentum 0.9, weight decay 1e-4, batch 128, 10 epochs (all presets)."""


@register("euk", EUkConfig, "re-initialise the last k layers and train them on the retain set (Goel et al. 2022)",
          space=FINETUNE_SPACE)
def unlearn(original: nn.Module, data: UnlearnData, cfg: EUkConfig, seed: int):
    return train_tail(original, data, cfg, seed, method="euk", reinit=True)
