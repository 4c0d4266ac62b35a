"""GD: continue training Original on the retain set with cross-entropy.

Neel, Roth, Sharifi-Malvajerdi, *Descent-to-Delete* (ALT 2021). GD never sees S_f, so it keeps
residual knowledge: in the paper it is the clearest r > 1 case on CIFAR-10 (spec: baselines.md §2).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from ..train import BatchStream, cross_entropy_loss, model_device, prepare_model, run_loop
from .base import FINETUNE_SPACE, FinetuneConfig, MethodRecord, UnlearnData, fresh_copy, register


@dataclass(frozen=True)
class GDConfig(FinetuneConfig):
    lr: float = 0.01  # paper
    momentum: float = 0.9  # paper
    weight_decay: float = 1e-4  # paper
    epochs: int = 10  # paper
    batch_size: int = 128  # paper


def finetune_on_retain(
    model: nn.Module,
    data: UnlearnData,
    cfg: FinetuneConfig,
    record: MethodRecord,
    *,
    params: list[nn.Parameter] | None = None,
    set_mode: Callable[[nn.Module], None] | None = None,
    after_step: Callable[[nn.Module, float], None] | None = None,
    desc: str = "gd",
) -> MethodRecord:
    """Cross-entropy fine-tuning of ``model`` (in place) on S_r, shuffled with the loader seed.
    Shared by GD, NGD (``after_step`` adds noise), EU-k and CF-k (``params``/``set_mode`` pick the tail)."""
    prepare_model(model)
    stream = BatchStream(data.retain, cfg.batch_size, data.loader_seed, device=model_device(model))
    loop = run_loop(
        model, lambda e: stream.epoch(), len(stream), cross_entropy_loss(), cfg.optim(),
        params=params, set_mode=set_mode, after_step=after_step, desc=desc,
    )
    return record.absorb(loop)


@register("gd", GDConfig, "fine-tune Original on the retain set (Neel et al. 2021)", space=FINETUNE_SPACE)
def unlearn(original: nn.Module, data: UnlearnData, cfg: GDConfig, seed: int):
    model = fresh_copy(original)
    record = MethodRecord("gd", {}, seed)
    return model, finetune_on_retain(model, data, cfg, record)
