"""The shared code path of EU-k and CF-k (spec: baselines.md §6): pick the tail, freeze everything before it,
optionally re-initialise it, and fine-tune it on S_r through :func:`rurk.methods.gd.finetune_on_retain`.

The two methods differ only in ``reinit``; :mod:`rurk.methods.euk` and :mod:`rurk.methods.cfk` are thin
registrations of :func:`train_tail`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..models import init_module_, last_k_layers
from ._retain import finetune_on_retain
from .base import FinetuneConfig, MethodRecord, UnlearnData, fresh_copy


@dataclass(frozen=True)
class TailConfig(FinetuneConfig):
    """Hyperparameters of EU-k and CF-k (the same for both, and for every scenario)."""

    k: int | None = None  # None: the architecture's tail (model.tail_modules(), decision); int: last_k_layers rule

    def __post_init__(self):
        super().__post_init__()
        if self.k is not None and self.k < 1:
            raise ValueError(f"k = {self.k!r}: expected an integer >= 1 or unset")


def select_tail(model: nn.Module, k: int | None = None) -> list[str]:
    """Names (as in ``named_modules()``) of the tail: ``model.tail_modules()`` when ``k`` is None, else the
    reference counting rule :func:`rurk.models.last_k_layers` (Conv2d/Linear counted, BatchNorm collected)."""
    if k is None:
        tail_fn = getattr(model, "tail_modules", None)
        if not callable(tail_fn):
            raise TypeError(
                f"{type(model).__name__} has no tail_modules(); set k (an integer) to use the last-k-layers rule"
            )
        names = list(tail_fn())
    else:
        names = list(last_k_layers(model, int(k)))
    modules = dict(model.named_modules())
    unknown = [n for n in names if n not in modules]
    if unknown:
        raise ValueError(f"tail names {unknown} are not modules of {type(model).__name__}")
    if not names:
        raise ValueError("the tail is empty")
    return names


def tail_parameters(model: nn.Module, names: list[str]) -> list[nn.Parameter]:
    """The parameters of the named submodules (recursively), de-duplicated, in registration order."""
    modules = dict(model.named_modules())
    seen: dict[int, nn.Parameter] = {}
    for n in names:
        for p in modules[n].parameters():
            seen.setdefault(id(p), p)
    return list(seen.values())


def reinit_tail(model: nn.Module, names: list[str], generator: torch.Generator) -> None:
    """Re-initialise the named submodules with the architecture's init (Conv/Linear weights and biases, BatchNorm
    affine parameters and running statistics): ``model.reset_parameters_of`` for a rurk Classifier, else the same
    rule (:func:`rurk.models.init_module_`) applied to every module inside the tail."""
    reset = getattr(model, "reset_parameters_of", None)
    if callable(reset):
        reset(names, generator=generator)
        return

    modules = dict(model.named_modules())
    todo: dict[int, nn.Module] = {}
    for n in names:
        for m in modules[n].modules():
            todo.setdefault(id(m), m)
    for m in todo.values():
        init_module_(m, generator)


def train_tail(original: nn.Module, data: UnlearnData, cfg: TailConfig, seed: int, *, method: str,
               reinit: bool) -> tuple[nn.Module, MethodRecord]:
    """EU-k (``reinit=True``) or CF-k (``reinit=False``) on a copy of ``original``.

    1. Select the tail (:func:`select_tail`); every parameter outside it gets ``requires_grad=False``.
    2. EU-k only: re-initialise the tail with a CPU generator seeded with the run ``seed``.
    3. Fine-tune the tail on S_r with :func:`finetune_on_retain` (``params`` = tail parameters, so weight decay
       and momentum touch only them). ``set_mode`` puts the whole model in eval mode and then only the tail
       modules in train mode, so the frozen part's BatchNorm statistics stay exactly the original ones (decision).
    4. Restore ``requires_grad=True`` on every parameter and the model's train/eval mode to the Original's.
    """
    model = fresh_copy(original)
    names = select_tail(model, cfg.k)
    params = tail_parameters(model, names)
    if not params:
        raise ValueError(f"{method}: the tail {names} has no parameters")
    modules = dict(model.named_modules())
    tail_mods = [modules[n] for n in names]
    tail_ids = {id(p) for p in params}

    def set_mode(m: nn.Module) -> None:
        m.eval()
        for t in tail_mods:
            t.train()

    record = MethodRecord(method, {}, seed)
    n_frozen = sum(p.numel() for p in model.parameters() if id(p) not in tail_ids)
    record.extra.update(
        tail=names, k=cfg.k, reinit=reinit, trainable_params=sum(p.numel() for p in params), frozen_params=n_frozen,
    )
    try:
        for p in model.parameters():
            p.requires_grad_(id(p) in tail_ids)
        if reinit:
            reinit_tail(model, names, torch.Generator().manual_seed(int(seed)))
            record.extra["reinit_seed"] = int(seed)
        finetune_on_retain(model, data, cfg, record, params=params, set_mode=set_mode, desc=method)
    finally:
        for p in model.parameters():
            p.requires_grad_(True)
        model.train(original.training)
    return model, record
