"""What an audit counts on: the checked forget samples (:func:`check_inputs`, :class:`AuditInputs`), the reference
model's predictions shared by a seed's rows (:class:`ReferencePredictions`) and what the counting kernel measured
(:class:`Counts`). :mod:`rurk.audit.kernel` runs the kernel over them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ..perturb import derive_seed, module_device


@dataclass
class AuditInputs:
    """Checked inputs of one audit: forget samples on the models' device (after ``max_forget``)."""

    x: torch.Tensor
    y: torch.Tensor
    index: np.ndarray
    device: torch.device


@dataclass
class ReferencePredictions:
    """The reference model's predictions on an audit's perturbed copies, shared by the audits of every row of a
    seed. With a random probe both models see the same copies (common random numbers), so the reference's
    predictions are the same whichever model is audited against it: the first audit fills this, the next ones
    read it and run only the audited model (half the forward passes). Bound to one reference model, forget
    set, spec and noise seed; an audit with anything else is refused (ValueError), never served stale numbers."""

    key: tuple | None = None
    preds: dict = field(default_factory=dict)

    def bind(self, key: tuple) -> None:
        if self.key is None:
            self.key = key
        elif key != self.key:
            raise ValueError("ReferencePredictions: this audit differs from the one the predictions were made for "
                             "(another reference model, forget set, probe, tau grid, draws, seed or batch size)")


@dataclass
class Counts:
    """What the counting kernel measured: per-sample correct counts (len(taus), n), disagreements (None when
    the models saw different copies), clipped coordinates per tau, and the work done."""

    k_m: np.ndarray
    k_a: np.ndarray
    d: np.ndarray | None
    clipped: np.ndarray
    craft_on: str | None
    probe_params: dict[str, Any]
    batch_size: int
    forward_passes: int
    backward_passes: int
    bf16_mismatch: float | None


def check_inputs(unlearned: nn.Module, retrained: nn.Module, x, y, *, index=None, device=None,
                 max_forget: int | None = None, seed: int = 0) -> AuditInputs:
    """Validate the models' devices and the forget samples (float in [0, 1], integer labels, matching index),
    move them to the models' device and draw the seeded ``max_forget`` subset."""
    has_params = any(True for _ in unlearned.parameters()) or any(True for _ in unlearned.buffers())
    dev_m = module_device(unlearned, default=device)
    dev_a = module_device(retrained, default=device)
    if dev_m != dev_a:
        raise ValueError(f"unlearned and retrained models are on different devices ({dev_m} vs {dev_a})")
    dev = dev_m
    if device is not None and has_params and torch.device(device).type != dev.type:
        raise ValueError(f"device={device!r} but the models are on {dev}; move the models first")
    x = torch.as_tensor(x)
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor in [0, 1], got {x.dtype}")
    p_dtype = next((t.dtype for t in unlearned.parameters() if t.is_floating_point()), x.dtype)
    x = x.to(dev, dtype=p_dtype)
    y = torch.as_tensor(y).to(dev)
    if y.is_floating_point() or y.dim() != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(f"y must be integer labels of shape ({x.shape[0]},), got {y.dtype} {tuple(y.shape)}")
    y = y.long()
    n_all = x.shape[0]
    if n_all == 0:
        raise ValueError("empty forget set")
    if x.dim() < 2:
        raise ValueError(f"x must be (n, ...) with a feature dimension, got {tuple(x.shape)}")
    lo, hi = torch.aminmax(x)
    if not (float(lo) >= 0.0 and float(hi) <= 1.0):
        raise ValueError(f"x must be in [0, 1] pixel space; got range [{float(lo)}, {float(hi)}]")
    idx = np.arange(n_all) if index is None else np.asarray(torch.as_tensor(index).cpu()).astype(np.int64)
    if idx.shape != (n_all,):
        raise ValueError(f"index must have shape ({n_all},), got {idx.shape}")
    if max_forget is not None and max_forget < 1:
        raise ValueError(f"max_forget must be >= 1, got {max_forget}")
    if max_forget is not None and max_forget < n_all:
        rows = np.sort(
            np.random.default_rng(derive_seed(int(seed), "max_forget")).choice(n_all, int(max_forget), replace=False)
        )
        sel = torch.as_tensor(rows, device=dev)
        x, y, idx = x[sel], y[sel], idx[rows]
    return AuditInputs(x.contiguous(), y, idx, dev)
