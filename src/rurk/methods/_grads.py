"""Gradients summed over a data set at fixed weights, in eval mode: SSD's importances and SalUn's saliency.

Both methods score each weight by gradients of a loss over whole batches at the *unchanged* model: eval mode
(BatchNorm uses its running statistics and is not updated, dropout is off), every submodule's mode and every
parameter's ``requires_grad`` restored afterwards, sums in float32 whatever the parameters' dtype.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from ..torchutil import eval_mode
from ..train import BatchStream


@contextmanager
def _requiring_grad(params: list[nn.Parameter]) -> Iterator[None]:
    """Gradients for every parameter in ``params`` (frozen ones too), flags restored afterwards."""
    flags = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(True)
        yield
    finally:
        for p, f in zip(params, flags):
            p.requires_grad_(f)


def summed_gradients(model: nn.Module, params: list[nn.Parameter], stream: BatchStream,
                     loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                     term: Callable[[torch.Tensor], torch.Tensor]) -> tuple[list[torch.Tensor], int]:
    """Σ over one epoch of ``stream`` of ``term(∇ loss(model(x).float(), y))`` per parameter (float32), and the
    number of batches. A parameter the loss does not reach adds nothing."""
    sums = [torch.zeros_like(p, dtype=torch.float32) for p in params]
    n_batches = 0
    with eval_mode(model), _requiring_grad(params):
        for x, y in stream.epoch():
            grads = torch.autograd.grad(loss(model(x).float(), y), params, allow_unused=True)
            for acc, g in zip(sums, grads):
                if g is not None:
                    acc.add_(term(g.float()))
            n_batches += 1
    return sums, n_batches
