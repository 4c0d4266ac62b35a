"""The contract every unlearning method follows, and the registry that lists them by name.

A method is one module under ``rurk/methods/`` that

1. defines a config dataclass whose defaults are the paper's values (each commented with its source),
   optionally with named presets (``"cifar10"``) that override some defaults;
2. defines one function ``unlearn(original, data, cfg, seed) -> (model, MethodRecord)`` that never
   mutates ``original``;
3. registers both with :func:`register`.

Fine-tuning methods derive their config from :class:`FinetuneConfig` and train through
:func:`rurk.train.run_loop` (the one loop); training-free methods (SSD, CR, Fisher, NTK) are small
self-contained classes.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields

import torch
from torch import nn

from ..config import ConfigError, from_dict, merge, to_dict
from ..data.tensordata import TensorData
from ..train import LoopRecord, OptimConfig


@dataclass(frozen=True)
class UnlearnData:
    """Everything a method may look at. Methods use only what they need; none sees the Re-train model."""

    retain: TensorData
    forget: TensorData
    num_classes: int
    test: TensorData | None = None
    val: TensorData | None = None
    class_unlearning: bool = False  # the forget set is a whole class (Fisher's special case, SCRUB presets)
    forget_class: int | None = None  # label of the forgotten class (class unlearning)
    pretrained: nn.Module | None = None  # the checkpoint Original was fine-tuned from, if any (NTK's reference)
    loader_seed: int = 7  # paper: data-loader shuffling seed

    @property
    def train(self) -> TensorData:
        """The full training set S = S_r ∪ S_f."""
        return TensorData.concat(self.retain, self.forget)


@dataclass
class MethodRecord:
    """What a method did: hyperparameters, wall time, steps, per-epoch loss history, divergence."""

    method: str
    config: dict
    seed: int
    wall_s: float = 0.0
    steps: int = 0
    history: dict[str, list[float]] = field(default_factory=dict)
    diverged: bool = False
    diverged_step: int | None = None
    extra: dict = field(default_factory=dict)  # method-specific facts (residual norm, noise scale, ...)
    warnings: list[str] = field(default_factory=list)

    def absorb(self, loop: LoopRecord) -> "MethodRecord":
        """Add one run of the training loop (steps, history, divergence) to this record."""
        self.steps += loop.steps
        for k, v in loop.history.items():
            self.history.setdefault(k, []).extend(v)
        if loop.diverged and not self.diverged:
            self.diverged, self.diverged_step = True, self.steps
        self.extra.setdefault("schedule", loop.schedule)
        return self

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class FinetuneConfig:
    """Optimiser fields shared by every fine-tuning method (paper: SGD, momentum 0.9, batch 128,
    constant lr unless stated). Subclasses override the defaults with their own sourced values."""

    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    epochs: int = 10
    batch_size: int = 128
    schedule: str = "constant"
    cosine_t_max: int | None = None
    max_steps: int | None = None
    clip_grad_norm: float | None = None

    def optim(self) -> OptimConfig:
        return OptimConfig(
            optimizer="sgd",
            lr=self.lr,
            momentum=self.momentum,
            weight_decay=self.weight_decay,
            epochs=self.epochs,
            batch_size=self.batch_size,
            schedule=self.schedule,
            cosine_t_max=self.cosine_t_max,
            max_steps=self.max_steps,
            clip_grad_norm=self.clip_grad_norm,
        )


UnlearnFn = Callable[[nn.Module, UnlearnData, object, int], "tuple[nn.Module, MethodRecord]"]


@dataclass(frozen=True)
class MethodSpec:
    name: str
    config_cls: type
    fn: UnlearnFn
    summary: str
    presets: dict[str, dict] = field(default_factory=dict)

    def config(self, preset: str = "small", overrides: dict | None = None):
        """The config for ``preset`` with ``overrides`` applied. "small" is the dataclass defaults; a
        dashed preset such as "cifar10-class" applies "cifar10" and then "cifar10-class" (each only
        where the method defines it)."""
        parts = preset.split("-")
        values: dict = {}
        for i in range(1, len(parts) + 1):
            values = merge(values, self.presets.get("-".join(parts[:i]), {}))
        return from_dict(self.config_cls, merge(values, overrides or {}), prefix=f"methods.{self.name}")

    def defaults(self) -> dict:
        return {f.name: getattr(self.config_cls(), f.name) for f in fields(self.config_cls)}


REGISTRY: dict[str, MethodSpec] = {}


def register(name: str, config_cls: type, summary: str, presets: dict[str, dict] | None = None):
    """Decorator: ``@register("gd", GDConfig, "fine-tune on the retain set")`` on the unlearn function."""

    def deco(fn: UnlearnFn) -> UnlearnFn:
        if name in REGISTRY:
            raise ValueError(f"method {name!r} registered twice")
        REGISTRY[name] = MethodSpec(name, config_cls, fn, summary, presets or {})
        return fn

    return deco


def get_method(name: str) -> MethodSpec:
    from . import load_all

    load_all()
    if name not in REGISTRY:
        raise ConfigError(f"unknown method {name!r}; registered methods: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


def fresh_copy(model: nn.Module) -> nn.Module:
    """A deep copy to unlearn on (methods never mutate the Original)."""
    return copy.deepcopy(model)


def unlearn(
    name: str,
    original: nn.Module,
    data: UnlearnData,
    seed: int,
    *,
    cfg=None,
    preset: str = "small",
    overrides: dict | None = None,
) -> tuple[nn.Module, MethodRecord]:
    """Run method ``name`` on ``original``: build its config (preset + overrides) unless ``cfg`` is
    given, seed torch, time it, and return the new model and its record."""
    spec = get_method(name)
    cfg = cfg if cfg is not None else spec.config(preset, overrides)
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    model, record = spec.fn(original, data, cfg, seed)
    record.wall_s = time.perf_counter() - t0
    record.config = to_dict(cfg)
    return model, record
