"""Attacks nobody ships with an unlearning paper: the relearning-attack curve and the robust-accuracy curve.

- :func:`relearn_curve`: fine-tune a copy of the model with SGD (the scenario's ``[relearn]`` lr, momentum, weight
  decay and batch size) on a seeded fraction of S_f (default 10%) and measure the accuracy on the *rest* of S_f
  after 0, 1, ..., S optimiser steps (default S = 20). A model that still holds the forget set climbs back fast.
- :func:`robust_curves`: accuracy under L-inf PGD at several eps (default 0, 2/255, 4/255, 8/255; 10 steps,
  alpha = eps/4, random start), untargeted (ascends CE of the true label) and targeted (descends CE of a random
  wrong label per sample), on named sample sets. The attack is the ``pgd`` probe of :mod:`rurk.perturb`
  (:class:`UntargetedPGD` is the same loop with the gradient's sign flipped), crafted on the evaluated model itself
  (white box). Starts and targets come from ``block_generator(seed, "robust-<probe>", block)`` per block of
  ``block_size`` samples and are the same at every eps and for every model given the same seed.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from ..config import RelearnConfig
from ..data.tensordata import TensorData
from ..perturb import PGD, block_generator, derive_seed
from ..torchutil import model_device
from ..train import (
    BatchStream,
    OptimConfig,
    accuracy,
    cross_entropy_loss,
    prepare_model,
    run_loop,
)

#: The robust curve's eps grid (pixel units).
ROBUST_EPS = (0.0, 2 / 255, 4 / 255, 8 / 255)


# ---------------------------------------------------------------------------------------------- relearning
@dataclass(frozen=True)
class RelearnCurveSettings:
    """The relearning attack (lr, momentum, weight decay and batch size come from the scenario's ``[relearn]``)."""

    steps: int = 20  # S: optimiser steps
    fraction: float = 0.1  # of S_f the attacker fine-tunes on; accuracy is measured on the rest

    def __post_init__(self):
        if not (isinstance(self.steps, int) and self.steps >= 0) or not 0 < self.fraction < 1:
            raise ValueError(f"relearn curve: need steps >= 0 and 0 < fraction < 1, got {self.steps}, {self.fraction}")


def split_forget(forget: TensorData, fraction: float, seed: int) -> tuple[TensorData, TensorData]:
    """(attacker's part, held-out rest) of S_f: a seeded ``fraction`` (at least 1 sample, at least 1 left)."""
    n = len(forget)
    if n < 2:
        raise ValueError(f"relearn curve: the forget set needs at least 2 samples, has {n}")
    k = min(n - 1, max(1, round(fraction * n)))
    perm = np.random.default_rng(derive_seed(int(seed), "relearn-curve")).permutation(n)
    return forget.subset(np.sort(perm[:k])), forget.subset(np.sort(perm[k:]))


def finetune_copy(model: nn.Module, data: TensorData, cfg: RelearnConfig, seed: int, steps: int, *,
                  loader_seed: int = 7, after_step=None) -> nn.Module:
    """A deep copy of ``model`` (every parameter trainable) fine-tuned on ``data`` for ``steps`` SGD steps through
    :func:`rurk.train.run_loop`, batches shuffled with ``loader_seed``, torch's global RNG seeded with ``seed`` in a
    forked state. ``after_step(model)`` is called after every step. ``model`` is not modified."""
    work = prepare_model(copy.deepcopy(model))
    for p in work.parameters():
        p.requires_grad_(True)
    if steps <= 0:
        return work
    device = model_device(work)
    stream = BatchStream(data, cfg.batch_size, loader_seed, device=device)
    optim = OptimConfig(optimizer="sgd", lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                        epochs=math.ceil(steps / len(stream)), batch_size=cfg.batch_size, max_steps=steps)
    hook = None if after_step is None else (lambda m, lr: after_step(m))
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        torch.manual_seed(int(seed))
        run_loop(work, lambda e: stream.epoch(), len(stream), cross_entropy_loss(), optim, after_step=hook,
                 desc="relearn-curve", progress=False)
    return work


def relearn_curve(model: nn.Module, forget: TensorData, cfg: RelearnConfig | None = None, seed: int = 0, *,
                  settings: RelearnCurveSettings = RelearnCurveSettings(), loader_seed: int = 7) -> dict:
    """Forget-set accuracy of ``model`` after 0, 1, ..., S steps of a relearning attack (module docstring).

    The attacker fine-tunes on a seeded ``settings.fraction`` of S_f (:func:`split_forget`); ``forget_acc[s]`` is
    the accuracy on the held-out rest after s steps, so ``forget_acc[0]`` is the model's own forget accuracy there.
    The paper's re-learn time (:func:`rurk.audit.metrics.relearn_time`) is one point on such a curve: the step (in epochs)
    at which the forget *loss*, fine-tuning on all of S_f, is back to 1.05 x Original's. A loss that becomes
    non-finite leaves the remaining steps None. Returns a JSON-able dict."""
    cfg = cfg or RelearnConfig()
    attack, held = split_forget(forget, settings.fraction, seed)
    accs = [accuracy(model, held)]

    def measure(m):
        accs.append(accuracy(m, held))

    finetune_copy(model, attack, cfg, seed, settings.steps, loader_seed=loader_seed, after_step=measure)
    accs += [None] * (settings.steps + 1 - len(accs))  # a diverged loss stops the loop early
    return {"steps": list(range(settings.steps + 1)), "forget_acc": accs, "n_attack": len(attack),
            "n_heldout": len(held), "attack_index": attack.index.tolist(), "settings": asdict(settings),
            "relearn": asdict(cfg)}


# ---------------------------------------------------------------------------------------------- robust accuracy
class UntargetedPGD(PGD):
    """L-inf PGD that *ascends* CE of the true label: the ``pgd`` probe's loop with the input gradient negated."""

    name = "pgd-untargeted"
    targeted = False
    notes = ("pgd-untargeted: ascends CE(y), crafted on the evaluated model.",)

    def input_grad(self, model, x, label):
        return -PGD.input_grad(model, x, label)


@dataclass(frozen=True)
class RobustSettings:
    eps: tuple[float, ...] = ROBUST_EPS
    steps: int = 10
    alpha: float = 0.25  # step size as a fraction of eps
    random_start: bool = True
    max_samples: int = 500  # `rurk run`: retain and test are subsampled (seeded) to at most this many
    block_size: int = 512  # samples per random-start block (part of the noise definition; larger = faster on CPU)

    def __post_init__(self):
        eps = tuple(float(e) for e in self.eps)
        object.__setattr__(self, "eps", eps)
        if not eps or any(not math.isfinite(e) or e < 0 for e in eps):
            raise ValueError(f"robust eps = {list(eps)}: expected a non-empty list of finite values >= 0")
        if self.steps < 1 or not self.alpha > 0 or self.max_samples < 1 or self.block_size < 1:
            raise ValueError("robust settings: need steps >= 1, alpha > 0, max_samples >= 1, block_size >= 1")

    def key(self) -> dict:
        return {**asdict(self), "eps": list(self.eps)}


def subsample(data: TensorData, max_n: int, seed: int, tag: str) -> TensorData:
    """At most ``max_n`` rows of ``data``: all of them, or a seeded random subset in the original order."""
    if len(data) <= max_n:
        return data
    rows = np.random.default_rng(derive_seed(int(seed), "robust-subsample", tag)).choice(len(data), max_n, replace=False)
    return data.subset(np.sort(rows))


def adversarial_copies(model: nn.Module, data: TensorData, probe: PGD, eps: float, seed: int, num_classes: int,
                       block_size: int = 512) -> TensorData:
    """``data`` with every x replaced by its ``probe`` attack at strength ``eps``, crafted on ``model``."""
    dev = model_device(model)
    xs = []
    for b, lo in enumerate(range(0, len(data), block_size)):
        x, y = data.x[lo:lo + block_size].to(dev), data.y[lo:lo + block_size].to(dev)
        g = block_generator(seed, f"robust-{probe.name}", b, dev)
        with torch.no_grad():
            d = probe.draw(x, y, g, num_classes)
        xs.append(probe.apply(model, x, y, eps, d).x)
    return TensorData(torch.cat(xs), data.y.to(dev), data.index)


def robust_accuracy(model: nn.Module, data: TensorData, eps: float, targeted: bool, seed: int, num_classes: int,
                    settings: RobustSettings = RobustSettings()) -> float:
    """Accuracy (true labels) of ``model`` on ``data`` under L-inf PGD of radius ``eps`` (clean accuracy at 0)."""
    if eps == 0.0:
        return accuracy(model, data)
    cls = PGD if targeted else UntargetedPGD
    probe = cls(alpha=settings.alpha * eps, steps=settings.steps, random_start=settings.random_start)
    return accuracy(model, adversarial_copies(model, data, probe, eps, seed, num_classes, settings.block_size))


def robust_curves(model: nn.Module, sets: dict[str, TensorData], seed: int, num_classes: int,
                  settings: RobustSettings = RobustSettings()) -> dict:
    """:func:`robust_accuracy` at every eps, untargeted and targeted, on every named set. JSON-able:
    ``{"eps": [...], "settings": {...}, "sets": {name: {"n": int, "untargeted": [...], "targeted": [...]}}}``."""
    out = {"eps": list(settings.eps), "settings": settings.key(), "sets": {}}
    for name, data in sets.items():
        out["sets"][name] = {"n": len(data), **{
            mode: [robust_accuracy(model, data, e, mode == "targeted", seed, num_classes, settings) for e in settings.eps]
            for mode in ("untargeted", "targeted")}}
    return out
