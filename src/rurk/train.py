"""THE training loop of rurk.

Everything that trains — Original, Re-train, the fine-tuning style unlearning methods, the re-learn
metric — goes through :func:`run_loop`. Methods differ only in the loss they compute on a batch (and,
for a few, in which parameters train or what happens after a step); they never copy the loop.

The data path follows airbench: a whole dataset lives on the device as one tensor, a "loader" is a
``randperm`` plus slicing (:class:`BatchStream`), and augmentation runs on whole batches with torch ops.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .data.tensordata import TensorData
from .torchutil import model_device, predict, to_layout

Batch = tuple[torch.Tensor, torch.Tensor]


#: The most epochs a training run may be asked for. The loop plans every epoch's step count up front (a Python list,
#: one entry per epoch), so 10^11 epochs died of MemoryError only once Original's training began; no recipe needs
#: more than a few hundred (the shipped scenarios: 200 at most), and 100,000 epochs of the smallest shipped data
#: (digits5, 4 steps) would already take days on a CPU.
MAX_EPOCHS = 100_000


@dataclass(frozen=True)
class OptimConfig:
    """Optimiser and schedule of one training run (Original/Re-train recipes and every fine-tuning method)."""

    optimizer: str = "sgd"  # "sgd" | "adam"
    lr: float = 0.01
    momentum: float = 0.9  # SGD only
    weight_decay: float = 0.0  # applied to trainable parameters only
    epochs: int = 1
    batch_size: int = 128
    schedule: str = "constant"  # "constant" | "cosine" (annealed to 0 over the planned steps, stepped per iteration)
    cosine_t_max: int | None = None  # override the cosine horizon (iterations); None = planned steps
    max_steps: int | None = None  # hard stop after this many optimiser steps
    clip_grad_norm: float | None = None  # global L2 norm clip
    label_smoothing: float = 0.0
    augment: str = "none"  # "none" | "crop_flip" (random crop with 4-px padding + horizontal flip)
    amp: str = "auto"  # "auto" (bf16 autocast on CUDA only) | "off" | "bf16" | "fp16"

    def __post_init__(self):
        checks = [
            (self.optimizer in ("sgd", "adam"), "optimizer", "'sgd' or 'adam'"),
            (math.isfinite(self.lr) and self.lr >= 0, "lr", "a finite number >= 0"),
            (0 <= self.epochs <= MAX_EPOCHS, "epochs", f"an integer from 0 to {MAX_EPOCHS}"),
            (self.batch_size >= 1, "batch_size", "an integer >= 1"),
            (self.schedule in ("constant", "cosine"), "schedule", "'constant' or 'cosine'"),
            (self.max_steps is None or self.max_steps >= 1, "max_steps", "an integer >= 1 or unset"),
            (self.clip_grad_norm is None or self.clip_grad_norm > 0, "clip_grad_norm", "a number > 0 or unset"),
            (0 <= self.label_smoothing < 1, "label_smoothing", "a number in [0, 1)"),
            (self.augment in ("none", "crop_flip"), "augment", "'none' or 'crop_flip'"),
            (self.amp in ("auto", "off", "bf16", "fp16"), "amp", "'auto', 'off', 'bf16' or 'fp16'"),
        ]
        for ok, name, expected in checks:
            if not ok:
                raise ValueError(f"optim.{name} = {getattr(self, name)!r}: expected {expected}")


# ---------------------------------------------------------------------------------------------- data path
class BatchStream:
    """Shuffled mini-batches over a :class:`TensorData` held on the device.

    Each stream owns its ``torch.Generator`` so that, e.g., RURK's forget stream never disturbs the
    retain stream's order. ``epoch()`` yields one pass; ``next()`` cycles forever with a fresh shuffle
    at every exhaustion. No ``drop_last`` (the last batch may be short).
    """

    def __init__(self, data: TensorData, batch_size: int, seed: int, *, shuffle: bool = True, device=None):
        if len(data) == 0:
            raise ValueError("BatchStream: the dataset is empty")
        self.device = torch.device(device) if device is not None else data.x.device
        self.x = to_layout(data.x.to(self.device), True)  # channels_last survives row indexing
        self.y = data.y.to(self.device)
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.generator = torch.Generator(device="cpu").manual_seed(int(seed))
        self._cycle: Iterator[Batch] | None = None

    def __len__(self) -> int:
        return math.ceil(self.x.shape[0] / self.batch_size)

    def epoch(self) -> Iterator[Batch]:
        n = self.x.shape[0]
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        order = order.to(self.device)
        for start in range(0, n, self.batch_size):
            rows = order[start : start + self.batch_size]
            yield self.x[rows], self.y[rows]

    def next(self) -> Batch:
        while True:
            if self._cycle is None:
                self._cycle = self.epoch()
            try:
                return next(self._cycle)
            except StopIteration:
                self._cycle = None


def crop_flip(x: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop (zero padding ``pad``) + horizontal flip, on a whole batch with torch ops."""
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(x.device)
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device)[None, :])[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=x.device)[None, :])[:, None, None, :]
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chan = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    out = padded[batch, chan, rows, cols]
    flip = (torch.rand(n, generator=generator) < 0.5).to(x.device)
    return to_layout(torch.where(flip[:, None, None, None], out.flip(3), out), True)


# ---------------------------------------------------------------------------------------------- helpers
def progress_enabled(progress: bool | None = None) -> bool:
    """Progress bars are on unless turned off per call, or globally with RURK_PROGRESS=0 (``--quiet``)."""
    if progress is not None:
        return progress
    return os.environ.get("RURK_PROGRESS", "1") != "0"


def autocast_for(device: torch.device, amp: str):
    """The autocast context for ``amp`` on ``device`` ("auto" = bf16 on CUDA, off on CPU)."""
    if amp == "auto":
        amp = "bf16" if device.type == "cuda" else "off"
    if amp == "off":
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def build_optimizer(params: list[nn.Parameter], cfg: OptimConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def lr_at(cfg: OptimConfig, step: int, planned: int) -> float:
    """Learning rate for iteration ``step`` (0-based): constant, or cosine from lr to 0 over the horizon."""
    if cfg.schedule == "constant":
        return cfg.lr
    horizon = cfg.cosine_t_max or max(planned, 1)
    return 0.5 * cfg.lr * (1 + math.cos(math.pi * step / horizon))


class Diverged(RuntimeError):
    """Raised inside the loop when a loss becomes NaN/inf; :func:`run_loop` records it and stops."""


@dataclass
class LoopRecord:
    """What one run of the loop did. ``history`` holds per-epoch means of every logged scalar."""

    steps: int = 0
    planned_steps: int = 0
    epochs_run: int = 0
    wall_s: float = 0.0
    diverged: bool = False
    diverged_step: int | None = None
    history: dict[str, list[float]] = field(default_factory=dict)
    final: dict[str, float] = field(default_factory=dict)
    schedule: dict = field(default_factory=dict)
    calibration: dict | None = None  # what a Calibration decided (rurk.methods._calibrate.Calibrator.finish)

    def to_json(self) -> dict:
        return asdict(self)


class _Run(Protocol):
    diverged: bool  # a LoopRecord, or a method's MethodRecord


def diverged(record: _Run, model: nn.Module) -> bool:
    """Whether a run failed numerically: its loop stopped on a non-finite loss, or it left a non-finite weight
    (a step can blow up the weights without the loss turning NaN first). One test for `rurk run` and
    `rurk tune`, so a setting that one of them records as failed the other never scores as a number."""
    return record.diverged or not all(torch.isfinite(p).all() for p in model.parameters())


# ---------------------------------------------------------------------------------------------- the loop
class Calibration(Protocol):
    """A stopping rule that watches the model (:class:`rurk.methods._calibrate.Calibrator`): ``start`` sees the model
    before the first step, ``check`` after every step (True = stop now), ``finish`` may rewind the model to
    an earlier checkpoint and returns what it decided, for the record."""

    def start(self, model: nn.Module) -> None: ...

    def check(self, model: nn.Module, step: int) -> bool: ...

    def finish(self, model: nn.Module) -> dict: ...


LossFn = Callable[[nn.Module, Batch], "torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]"]


def run_loop(
    model: nn.Module,
    batches: Callable[[int], Iterable[Batch]],
    steps_per_epoch: int | Sequence[int],
    loss_fn: LossFn,
    cfg: OptimConfig,
    *,
    params: list[nn.Parameter] | None = None,
    set_mode: Callable[[nn.Module], None] | None = None,
    after_step: Callable[[nn.Module, float], None] | None = None,
    stop: Callable[[nn.Module, int], bool] | None = None,
    calibration: Calibration | None = None,
    desc: str = "train",
    progress: bool | None = None,
) -> LoopRecord:
    """Train ``model`` in place and return a :class:`LoopRecord`.

    - ``batches(epoch)`` yields the batches of one epoch (usually ``stream.epoch()``); the loop runs
      ``cfg.epochs`` epochs, or stops after ``cfg.max_steps`` optimiser steps. ``steps_per_epoch`` is one
      count, or one per epoch when epochs differ (SCRUB); their sum is the cosine horizon.
    - ``loss_fn(model, batch)`` returns the loss, or ``(loss, logs)`` with extra scalars to log.
    - ``params``: the parameters to train (default: all with ``requires_grad``); weight decay only
      touches these. ``set_mode`` puts the model in its training mode (default ``model.train()``).
    - ``after_step(model, lr)`` runs after every optimiser step (NGD's noise); ``stop(model, step)``
      is asked after every step and ends training early when it returns True (re-learn time).
    - ``calibration`` (calibrated stopping, :mod:`rurk.methods._calibrate`): started before the first step, checked
      after every step like ``stop``, and finished at the end — it may rewind the model to the checkpoint it
      chose; its decision is ``record.calibration``. The epoch budget is then an upper bound.
    - A non-finite loss stops the loop and marks the record ``diverged`` at that step.
    - ``history`` holds per-epoch means of the loss, every logged scalar, ``grad_norm`` (before clipping)
      and ``lr_mean``, plus ``lr`` (the epoch's last learning rate).
    """
    params = [p for p in (params if params is not None else model.parameters()) if p.requires_grad]
    opt = build_optimizer(params, cfg)
    per_epoch, planned, total = _plan(steps_per_epoch, cfg)
    rec = LoopRecord(
        planned_steps=total,
        schedule={"kind": cfg.schedule, "horizon": cfg.cosine_t_max or planned, "max_steps": cfg.max_steps},
    )
    device = model_device(model)
    (set_mode or nn.Module.train)(model)
    t0 = time.perf_counter()
    if calibration is not None:
        calibration.start(model)
    bar = tqdm(total=total, desc=desc, disable=not progress_enabled(progress), leave=False)
    sums: dict[str, torch.Tensor] = {}
    finished = False
    try:
        for epoch in range(cfg.epochs):
            n_in_epoch = 0
            for batch in batches(epoch):
                lr = lr_at(cfg, rec.steps, planned)
                logs = _step(model, batch, loss_fn, opt, params, cfg, device, lr)
                rec.steps += 1
                n_in_epoch += 1
                for k, v in logs.items():
                    sums[k] = sums.get(k, 0.0) + v.float()
                sums["lr_mean"] = sums.get("lr_mean", 0.0) + lr
                if after_step is not None:
                    after_step(model, lr)
                bar.update()
                halt = calibration is not None and calibration.check(model, rec.steps)  # every step, the last too
                if halt or (cfg.max_steps and rec.steps >= cfg.max_steps) or (stop is not None and stop(model, rec.steps)):
                    finished = True
                    break
            _close_epoch(rec, sums, n_in_epoch, lr)
            sums = {}
            if finished or n_in_epoch < per_epoch[epoch]:
                break
    except Diverged:
        rec.diverged, rec.diverged_step = True, rec.steps
    finally:
        bar.close()
    if calibration is not None:
        rec.calibration = calibration.finish(model)
    rec.wall_s = time.perf_counter() - t0
    return rec


def _plan(steps_per_epoch: int | Sequence[int], cfg: OptimConfig) -> tuple[list[int], int, int]:
    """(steps of each epoch, planned steps — the cosine horizon —, steps the loop will take at most)."""
    per_epoch = [steps_per_epoch] * cfg.epochs if isinstance(steps_per_epoch, int) else list(steps_per_epoch)
    if len(per_epoch) != cfg.epochs:
        raise ValueError(f"steps_per_epoch has {len(per_epoch)} entries for {cfg.epochs} epochs")
    planned = sum(per_epoch)
    return per_epoch, planned, (min(planned, cfg.max_steps) if cfg.max_steps else planned)


def _step(model: nn.Module, batch: Batch, loss_fn: LossFn, opt: torch.optim.Optimizer, params: list[nn.Parameter],
          cfg: OptimConfig, device: torch.device, lr: float) -> dict[str, torch.Tensor]:
    """One optimiser step at learning rate ``lr``; returns the step's logged scalars (on the device, so that no
    host sync is added per step). A non-finite loss raises :class:`Diverged` before any weight changes."""
    for group in opt.param_groups:
        group["lr"] = lr
    with autocast_for(device, cfg.amp):
        out = loss_fn(model, batch)
    loss, logs = (out if isinstance(out, tuple) else (out, {}))
    if not torch.isfinite(loss):
        raise Diverged
    opt.zero_grad(set_to_none=True)
    loss.backward()
    logs = {"loss": loss.detach(), **{k: v.detach() for k, v in logs.items()}}
    if cfg.clip_grad_norm is not None:
        logs["grad_norm"] = torch.nn.utils.clip_grad_norm_(params, cfg.clip_grad_norm)
    opt.step()
    return logs


def _close_epoch(rec: LoopRecord, sums: dict[str, torch.Tensor], n: int, lr: float) -> None:
    if n == 0:
        return
    rec.epochs_run += 1
    means = {k: float(v) / n for k, v in sums.items()}  # one host sync per epoch
    means["lr"] = lr  # the last step's lr; "lr_mean" is the epoch's mean
    for k, v in means.items():
        rec.history.setdefault(k, []).append(v)
    rec.final = means


# ---------------------------------------------------------------------------------------------- fitting
def cross_entropy_loss(label_smoothing: float = 0.0, augment: Callable[[torch.Tensor], torch.Tensor] | None = None):
    """The plain supervised loss as a :data:`LossFn` (optionally augmenting each batch first)."""

    def loss_fn(model: nn.Module, batch: Batch) -> torch.Tensor:
        x, y = batch
        if augment is not None:
            x = augment(x)
        return F.cross_entropy(model(x), y, label_smoothing=label_smoothing)

    return loss_fn


def fit(
    model: nn.Module,
    data: TensorData,
    cfg: OptimConfig,
    seed: int,
    *,
    loader_seed: int | None = None,
    desc: str = "fit",
    progress: bool | None = None,
) -> LoopRecord:
    """Supervised training of ``model`` on ``data`` (in place) with cross-entropy.

    ``seed`` seeds the augmentation generator; ``loader_seed`` (default ``seed``) the shuffling.
    Used for Original, Re-train, pre-training and GD-style fine-tuning.
    """
    device = model_device(model)
    prepare_model(model)
    stream = BatchStream(data, cfg.batch_size, loader_seed if loader_seed is not None else seed, device=device)
    aug = None
    if cfg.augment == "crop_flip":
        gen = torch.Generator().manual_seed(int(seed) + 1)
        aug = lambda x: crop_flip(x, gen)  # noqa: E731
    loss_fn = cross_entropy_loss(cfg.label_smoothing, aug)
    return run_loop(model, lambda e: stream.epoch(), len(stream), loss_fn, cfg, desc=desc, progress=progress)


def prepare_model(model: nn.Module) -> nn.Module:
    """Put the model's conv weights in channels_last, matching :class:`BatchStream`'s batches."""
    return model.to(memory_format=torch.channels_last)


def accuracy(model: nn.Module, data: TensorData, batch_size: int = 256) -> float:
    """Fraction of ``data`` that ``model`` classifies correctly (the one accuracy function of rurk)."""
    if len(data) == 0:
        return float("nan")
    return logits_accuracy(predict(model, data.x, batch_size), data.y)


def logits_accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of rows of ``logits`` whose argmax is the label ``y`` (what :func:`accuracy` computes, for
    callers that already hold the logits)."""
    return float((logits.argmax(1).cpu() == y.cpu()).float().mean())
