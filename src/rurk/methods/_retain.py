"""The shared retain-set fine-tuning of GD, NGD (``after_step`` adds noise), EU-k and CF-k (``params`` and
``set_mode`` pick the tail): cross-entropy on S_r through :func:`rurk.train.run_loop`."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from ..torchutil import model_device
from ..train import BatchStream, cross_entropy_loss, prepare_model, run_loop
from .base import FinetuneConfig, MethodRecord, UnlearnData


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
    """Cross-entropy fine-tuning of ``model`` (in place) on S_r, shuffled with the loader seed."""
    prepare_model(model)
    stream = BatchStream(data.retain, cfg.batch_size, data.loader_seed, device=model_device(model))
    loop = run_loop(
        model, lambda e: stream.epoch(), len(stream), cross_entropy_loss(), cfg.optim(),
        params=params, set_mode=set_mode, after_step=after_step, desc=desc,
    )
    return record.absorb(loop)
