"""RL: random labels (spec: baselines.md §12), the baseline as used by Fan et al., *SalUn* (ICLR 2024), whose
MIT-licensed reference code gives the values. Implemented from the spec.

Each epoch: one pass over S_f with labels drawn uniformly from the *other* classes (never y; decision, so that
every forget label is wrong), then one pass over S_r with the true labels, cross-entropy throughout, SGD with
momentum, constant lr. Variants: ``allow_true_label=True`` draws from {0..C−1} as the SalUn reference code does
(a draw may equal y); ``joint=True`` trains on the shuffled union S_f ∪ S_r, one batch-mean CE per mixed batch.
The loop, the streams and the label generator are :mod:`rurk.methods._relabel`'s (shared with SalUn).

Deviation from the reference code: batch 128 (the paper's common batch, spec §0) instead of its 256.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ._relabel import RelabelConfig, train_relabel
from .base import FINETUNE_SPACE, MethodRecord, UnlearnData, fresh_copy, register


@dataclass(frozen=True)
class RLConfig(RelabelConfig):
    """The defaults, with their sources, are :class:`rurk.methods._relabel.RelabelConfig`'s: SGD lr 0.01,
    momentum 0.9, weight decay 5e-4, 10 epochs, batch 128, wrong labels only, forget pass then retain pass."""


@register(
    "rl", RLConfig, "random labels on the forget set, true labels on the retain set (SalUn reference code)",
    presets={"cifar10": {}},  # reference code: its values are the CIFAR-10 ones (the defaults)
    space=FINETUNE_SPACE,  # decision: lr around the reference 0.01, up to 20 epochs
)
def unlearn(original: nn.Module, data: UnlearnData, cfg: RLConfig, seed: int):
    model = fresh_copy(original)
    record = MethodRecord("rl", {}, seed)
    return model, train_relabel(model, data, cfg, record, seed, desc="rl")
