"""ℓ1-sparse unlearning (Jia, Liu, Ram, Yao, Liu, Liu, Sharma, Liu, *Model Sparsity Can Simplify Machine
Unlearning*, NeurIPS 2023; spec: baselines.md §12). Implemented from the spec; the MIT-licensed reference code
was consulted for its values and its schedule.

Fine-tune on S_r (GD's stream: shuffled with the loader seed, train mode, SGD with momentum, constant lr) on

    L = CE(h(x_r), y_r) + γ_t·‖θ‖₁,   γ_t = γ·(1 − t/T)        (:func:`l1_coefficient`)

with ‖θ‖₁ over every trainable parameter (reference code) and t the 0-based epoch, T the number of epochs: γ_t is
constant within an epoch and decays linearly towards 0 (reference code: the last epoch still has γ/T). With γ = 0
the penalty is skipped and the method is GD exactly (same stream, loop and optimiser).

γ is a decision: the reference code's 0.2 is implausible at ResNet scale (spec §12), so the default sits inside
the spec's search range [1e-5, 5e-4]. Deviation from the reference code: batch 128 (spec §0) instead of 256.

Record: ``extra["gamma_schedule"]`` (γ_t per epoch, the values used), ``history["L_r"]`` and ``history["l1"]``
(per-epoch means of the CE and of ‖θ‖₁ before each step).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..torchutil import model_device
from ..train import Batch, BatchStream, prepare_model, run_loop
from .base import (
    FINETUNE_SPACE,
    FinetuneConfig,
    MethodRecord,
    UnlearnData,
    fresh_copy,
    log_uniform,
    register,
)


@dataclass(frozen=True)
class L1SparseConfig(FinetuneConfig):
    """lr 0.01 and 10 epochs (reference code, spec §12), momentum 0.9 and batch 128 (paper, spec §0; the reference
    code uses 256) are FinetuneConfig's."""

    weight_decay: float = 5e-4  # reference code
    gamma: float = 1e-4  # decision: inside the spec's search range [1e-5, 5e-4] (reference code 0.2, implausible)

    def __post_init__(self):
        super().__post_init__()
        if not self.gamma >= 0:
            raise ValueError(f"gamma = {self.gamma!r}: expected a number >= 0")


def l1_coefficient(gamma: float, epoch: int, epochs: int) -> float:
    """γ_t = γ·(1 − t/T) for the 0-based epoch t of T."""
    return float(gamma) * (1.0 - epoch / max(int(epochs), 1))


@register(
    "l1_sparse", L1SparseConfig, "fine-tune on the retain set with a decaying ℓ1 penalty (Jia et al. 2023)",
    presets={"cifar10": {}},  # reference code: its values are the CIFAR-10 ones (the defaults)
    space=FINETUNE_SPACE | {"gamma": log_uniform(1e-5, 5e-4)},  # spec §12: search γ in [1e-5, 5e-4]
)
def unlearn(original: nn.Module, data: UnlearnData, cfg: L1SparseConfig, seed: int):
    model = prepare_model(fresh_copy(original))
    params = [p for p in model.parameters() if p.requires_grad]
    stream = BatchStream(data.retain, cfg.batch_size, data.loader_seed, device=model_device(model))
    schedule = [l1_coefficient(cfg.gamma, e, cfg.epochs) for e in range(cfg.epochs)]
    current = {"gamma": 0.0}

    def batches(epoch: int):
        current["gamma"] = schedule[epoch]
        return stream.epoch()

    def loss_fn(model: nn.Module, batch: Batch):
        x, y = batch
        ce = F.cross_entropy(model(x), y)
        if current["gamma"] == 0.0:
            return ce, {"L_r": ce.detach()}
        l1 = torch.stack([p.abs().sum() for p in params]).sum()
        return ce + current["gamma"] * l1, {"L_r": ce.detach(), "l1": l1.detach()}

    loop = run_loop(model, batches, len(stream), loss_fn, cfg.optim(), desc="l1_sparse")
    record = MethodRecord("l1_sparse", {}, seed).absorb(loop)
    record.extra.update(gamma_schedule=schedule[: loop.epochs_run], gamma_decay="per epoch (reference code)",
                        planned_steps=loop.planned_steps)
    return model, record
