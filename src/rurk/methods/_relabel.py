"""The shared code path of RL (random labels) and SalUn (spec: baselines.md §12): fine-tuning on the forget set
with random labels and on the retain set with the true labels, through :func:`rurk.train.run_loop`.

- ``joint=False`` (default; the reference code's CIFAR-10 path): every epoch is one pass over S_f with random
  labels, then one pass over S_r with the true labels — ⌈|S_f|/B⌉ + ⌈|S_r|/B⌉ steps per epoch.
- ``joint=True`` (the variant "a joint loss per batch"; the reference code's CIFAR-100 path): every epoch is one
  pass over the shuffled union S_f ∪ S_r, each batch mixing forget rows (random labels) and retain rows (true
  labels) in one batch-mean CE — ⌈|S|/B⌉ steps per epoch.

Random labels (:func:`random_labels`) are drawn uniformly from the C − 1 *other* classes (never y; decision of the
spec, so that every forget label is wrong), or from all C classes with ``allow_true_label=True`` (the SalUn
reference code; a draw may equal y). They are drawn afresh for every forget batch of every epoch (reference code)
from their own generator, ``make_generator(seed, "random-labels", device)``: RL and SalUn draw the same labels
under the same seed (common random numbers; SalUn with ``mask_fraction=1`` is RL exactly).

Streams: retain (and the joint union) shuffled with the loader seed, the forget stream with
``derive_seed(loader_seed, "forget")`` (its own generator, as in RURK). A forget row is marked inside the stream by
its label offset by C (``y + C``), so one relabelling function serves both schedules.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..data.tensordata import TensorData
from ..perturb import random_wrong_labels
from ..torchutil import derive_seed, make_generator, model_device
from ..train import Batch, BatchStream, prepare_model, run_loop
from ._forget import forget_stream
from .base import FinetuneConfig, MethodRecord, UnlearnData, calibrator

LABEL_TAG = "random-labels"  # the label generator's tag (derive_seed(seed, LABEL_TAG))


@dataclass(frozen=True)
class RelabelConfig(FinetuneConfig):
    """RL's settings, which SalUn inherits (and overrides where its reference code differs). lr 0.01 and 10 epochs
    (reference code, spec §12), momentum 0.9 and batch 128 (paper, spec §0; the reference code uses 256) are
    FinetuneConfig's."""

    forget_term: ClassVar[bool] = True  # calibrated stopping applies (rurk.methods._calibrate)

    weight_decay: float = 5e-4  # reference code
    allow_true_label: bool = False  # decision (spec §12): every forget label is wrong
    joint: bool = False  # decision (spec §12): a forget pass, then a retain pass, per epoch


def random_labels(y: torch.Tensor, num_classes: int, generator: torch.Generator | None = None, *,
                  allow_true_label: bool = False) -> torch.Tensor:
    """One random label per row of ``y``: uniform over the C − 1 classes != y (default), or uniform over all C
    classes (``allow_true_label=True``), drawn from ``generator`` (on its device) and returned on y's device."""
    if num_classes < 2:
        raise ValueError(f"random labels need at least 2 classes, got num_classes={num_classes}")
    if not allow_true_label:
        return random_wrong_labels(y, int(num_classes), generator)
    gdev = generator.device if generator is not None else y.device
    return torch.randint(0, int(num_classes), y.shape, generator=generator, device=gdev).to(y.device)


def mark_forget(forget: TensorData, num_classes: int) -> TensorData:
    """S_f with every label offset by C, so that a mixed batch tells its forget rows apart (``y >= C``)."""
    return TensorData(forget.x, forget.y + int(num_classes), forget.index)


def relabel(y: torch.Tensor, num_classes: int, generator: torch.Generator, *, allow_true_label: bool) -> torch.Tensor:
    """Labels to train on for a batch of (possibly marked) labels: random labels for the forget rows (``y >= C``),
    the true label for the others."""
    is_forget = y >= num_classes  # no host sync: retain-only batches draw (and discard) labels too
    drawn = random_labels(y % num_classes, num_classes, generator, allow_true_label=allow_true_label)
    return torch.where(is_forget, drawn, y)


def train_relabel(
    model: nn.Module,
    data: UnlearnData,
    cfg: RelabelConfig,
    record: MethodRecord,
    seed: int,
    *,
    after_step: Callable[[nn.Module, float], None] | None = None,
    desc: str = "rl",
) -> MethodRecord:
    """Random-label fine-tuning of ``model`` in place (train mode) through the one loop; ``after_step`` is passed
    on (SalUn restores its non-salient weights there). ``history["loss"]`` is the per-epoch mean of the batch CE
    over forget and retain steps alike."""
    prepare_model(model)
    device = model_device(model)
    c = int(data.num_classes)
    generator = make_generator(seed, LABEL_TAG, device)
    marked = mark_forget(data.forget, c)
    if cfg.joint:
        union = BatchStream(TensorData.concat(marked, data.retain), cfg.batch_size, data.loader_seed, device=device)
        per_epoch = len(union)

        def batches(epoch: int):
            return union.epoch()
    else:
        forget, forget_seed = forget_stream(marked, cfg.batch_size, data.loader_seed, device)
        retain = BatchStream(data.retain, cfg.batch_size, data.loader_seed, device=device)
        per_epoch = len(forget) + len(retain)
        record.extra.update(forget_loader_seed=forget_seed, forget_steps_per_epoch=len(forget),
                            retain_steps_per_epoch=len(retain))

        def batches(epoch: int):
            yield from forget.epoch()
            yield from retain.epoch()

    def loss_fn(model: nn.Module, batch: Batch):
        x, y = batch
        target = relabel(y, c, generator, allow_true_label=cfg.allow_true_label)
        return F.cross_entropy(model(x), target)

    loop = run_loop(model, batches, per_epoch, loss_fn, cfg.optim(), after_step=after_step,
                    calibration=calibrator(cfg, data, seed), desc=desc)
    record.absorb(loop)
    record.extra.update(planned_steps=loop.planned_steps, joint=cfg.joint, allow_true_label=cfg.allow_true_label,
                        label_seed=derive_seed(int(seed), LABEL_TAG))
    return record
