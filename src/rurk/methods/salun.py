"""SalUn: weight saliency + random labels (Fan, Liu, Zhang, Wei, Wong, Liu, *SalUn: Empowering Machine Unlearning via
Gradient-based Weight Saliency*, ICLR 2024; spec: baselines.md §12). Implemented from the spec; the MIT-licensed
reference code was consulted for its values.

1. **Mask** (:func:`saliency_mask`), on the *loaded* Original, in eval mode (BatchNorm uses and keeps its running
   statistics): g = Σ over the forget batches (batch-mean CE, shuffled with the loader seed, the method's batch
   size) of ∇_θ(−CE), over every trainable parameter (weights, biases, BatchNorm affine). Rank |g| globally and
   keep the top ``mask_fraction`` (⌊fraction·P⌋ scalars; paper: 50%).
2. **Unlearn**: RL (:mod:`rurk.methods._relabel`, shared with ``rl``) with every gradient multiplied by the mask
   (a gradient hook on each parameter, so clipping sees the masked gradient), and after every optimiser step the
   non-salient weights restored to their Original values (so weight decay cannot move them either): they end
   bit-identical to the Original's. Buffers (BatchNorm running statistics) train as in RL.

Deviations, all documented:
- The spec also zeroes the non-salient weights' momentum after every step. :func:`rurk.train.run_loop` does not
  expose its optimiser, so the buffers are left alone. This changes nothing: SGD (and Adam) update every
  coordinate from its own buffer only, and those coordinates are reset after every step, so their buffers never
  reach a salient weight or the returned model.
- The reference code's mask script takes optimiser steps while it accumulates the gradients (the model moves
  during the mask computation) and its "hard" mask keeps the *lowest* ranks; the paper's definition is followed
  instead (gradients at the fixed Original, top |g|).
- Batch 128 (spec §0) instead of the reference code's 256.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..data.tensordata import TensorData
from ..torchutil import model_device
from ..train import BatchStream, prepare_model
from ._grads import summed_gradients
from ._relabel import RelabelConfig, train_relabel
from .base import FINETUNE_SPACE, MethodRecord, Param, UnlearnData, fresh_copy, register


@dataclass(frozen=True)
class SalUnConfig(RelabelConfig):
    """RL's settings (:class:`rurk.methods._relabel.RelabelConfig`: momentum 0.9, weight decay 5e-4, 10 epochs,
    batch 128, also the mask's batch, forget pass then retain pass) except for the fields below."""

    lr: float = 0.013  # reference code (spec §12)
    mask_fraction: float = 0.5  # paper: keep the top 50% of |g|
    allow_true_label: bool = False  # paper (y′ ≠ y); the reference code draws from all C classes

    def __post_init__(self):
        super().__post_init__()
        if not 0 < self.mask_fraction <= 1:
            raise ValueError(f"mask_fraction = {self.mask_fraction!r}: expected a number in (0, 1]")


def saliency_mask(model: nn.Module, forget: TensorData, fraction: float, *, batch_size: int = 128,
                  loader_seed: int = 7) -> dict[str, torch.Tensor]:
    """SalUn's weight-saliency mask of ``model`` (boolean, per trainable parameter name): the top ``fraction`` of
    |Σ_batches ∇_θ(−CE)| over S_f, ranked globally. Computed in eval mode (mode restored); ``model`` is unchanged."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    stream = BatchStream(forget, batch_size, loader_seed, device=model_device(model))
    grads, _ = summed_gradients(model, params, stream, lambda out, y: -F.cross_entropy(out, y), lambda g: g)
    scores = torch.cat([g.abs().flatten() for g in grads])
    keep = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
    k = int(fraction * scores.numel())
    if k > 0:
        keep[torch.topk(scores, k, sorted=False).indices] = True
    return {n: part.view(p.shape) for (n, p), part in zip(named, keep.split([p.numel() for p in params]))}


@register(
    "salun", SalUnConfig, "RL with gradients restricted to the top-50% salient weights (Fan et al. 2024)",
    presets={"cifar10": {}},  # reference code: its values are the CIFAR-10 ones (the defaults)
    # decision: RL's optimiser space plus the mask fraction (uniform, around the paper's 0.5)
    space=FINETUNE_SPACE | {"mask_fraction": Param("float", 0.1, 0.9)},
)
def unlearn(original: nn.Module, data: UnlearnData, cfg: SalUnConfig, seed: int):
    model = prepare_model(fresh_copy(original))
    mask = saliency_mask(model, data.forget, cfg.mask_fraction, batch_size=cfg.batch_size,
                         loader_seed=data.loader_seed)  # on the loaded Original, before any step
    params = dict(model.named_parameters())
    partial = {n: m for n, m in mask.items() if not bool(m.all())}  # tensors with non-salient entries
    theta0 = {n: params[n].detach().clone() for n in partial}
    hooks = [params[n].register_hook(lambda g, m=m.to(params[n].dtype): g * m) for n, m in partial.items()]

    @torch.no_grad()
    def restore(model: nn.Module, lr: float) -> None:
        for n, m in partial.items():
            params[n].copy_(torch.where(m, params[n], theta0[n]))

    record = MethodRecord("salun", {}, seed)
    try:
        train_relabel(model, data, cfg, record, seed, after_step=restore, desc="salun")
    finally:
        for h in hooks:
            h.remove()
    total = sum(m.numel() for m in mask.values())
    kept = sum(int(m.sum()) for m in mask.values())
    record.extra.update(salient_params=kept, num_params=total, salient_fraction=kept / max(total, 1),
                        salient_by_tensor={n: int(m.sum()) for n, m in mask.items()})
    return model, record
