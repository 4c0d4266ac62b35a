"""NGD: noisy gradient descent on the retain set (spec: baselines.md §3).

Chourasia & Shah, *Forget Unlearning* (ICML 2023); Chien, Wang, Chen, Li, *Langevin Unlearning* (NeurIPS 2024).
GD's fine-tuning on S_r (through :func:`rurk.methods.gd.finetune_on_retain`) with Gaussian weight noise after
every update, drawn from its own generator seeded from the run seed (``derive_seed(seed, "ngd-noise")``) on the
model's device, over all trainable parameters:

- ``noise_form="sgd"`` (default, decision): ``w ← w − lr·u_t − lr·σ·ξ_t`` with u_t the SGD-momentum direction
  (GD's lr, momentum, weight decay). The noise is added after the optimiser step, so it never enters the
  momentum buffer.
- ``noise_form="langevin"`` (the cited Langevin reference code): plain steps without momentum,
  ``w ← w − η·(g_t + wd·w) + √(2η)·σ·ξ_t`` (η = ``eta``; ``lr`` and ``momentum`` are not used).

Pitfall: the Langevin form adds noise of std ≈ 0.013 per coordinate per step, which swamps deep conv weights
over hundreds of steps; if retain accuracy collapses, check the form first, then sweep σ.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import nn

from ..torchutil import derive_seed, make_generator, model_device
from ._retain import finetune_on_retain
from .base import (
    FINETUNE_SPACE,
    FinetuneConfig,
    MethodRecord,
    UnlearnData,
    fresh_copy,
    log_uniform,
    register,
)

NOISE_FORMS = ("sgd", "langevin")


@dataclass(frozen=True)
class NGDConfig(FinetuneConfig):
    sigma: float = 0.03  # paper
    eta: float = 0.1  # paper (step size of the langevin form)
    noise_form: str = "sgd"  # decision

    def __post_init__(self):
        super().__post_init__()
        if self.noise_form not in NOISE_FORMS:
            raise ValueError(f"noise_form = {self.noise_form!r}: expected 'sgd' or 'langevin'")
        if not self.sigma >= 0:
            raise ValueError(f"sigma = {self.sigma!r}: expected a number >= 0")
        if not (self.eta > 0 and math.isfinite(self.eta)):
            raise ValueError(f"eta = {self.eta!r}: expected a finite number > 0 (0 leaves Original unchanged)")


def noise_scale(form: str, sigma: float, lr: float) -> float:
    """Std of the per-coordinate weight noise added after a step at learning rate ``lr`` (signed as in the spec)."""
    return -lr * sigma if form == "sgd" else math.sqrt(2.0 * lr) * sigma


def weight_noise(form: str, sigma: float, generator: torch.Generator):
    """``after_step`` hook: add ``noise_scale(form, σ, lr)·ξ`` to every trainable parameter."""
    params: list[nn.Parameter] = []

    @torch.no_grad()
    def after_step(model: nn.Module, lr: float) -> None:
        if not params:
            params.extend(p for p in model.parameters() if p.requires_grad)
        scale = noise_scale(form, sigma, lr)
        if scale == 0.0:
            return
        for p in params:
            p.add_(torch.randn(p.shape, generator=generator, device=p.device, dtype=p.dtype), alpha=scale)

    return after_step


@register(
    "ngd", NGDConfig, "noisy GD on the retain set (Chourasia & Shah 2023; Chien et al. 2024)",
    presets={"cifar10": {"epochs": 2}},  # paper
    space=FINETUNE_SPACE | {"sigma": log_uniform(1e-3, 3.0)},  # decision: noise std from negligible to dominant
)
def unlearn(original: nn.Module, data: UnlearnData, cfg: NGDConfig, seed: int):
    model = fresh_copy(original)
    record = MethodRecord("ngd", {}, seed)
    generator = make_generator(seed, "ngd-noise", model_device(model))
    run_cfg = cfg if cfg.noise_form == "sgd" else replace(cfg, lr=cfg.eta, momentum=0.0)
    finetune_on_retain(model, data, run_cfg, record, after_step=weight_noise(cfg.noise_form, cfg.sigma, generator),
                       desc="ngd")
    record.extra.update(noise_form=cfg.noise_form, noise_std_per_step=abs(noise_scale(cfg.noise_form, cfg.sigma,
                        run_cfg.lr)), noise_seed=derive_seed(seed, "ngd-noise"))
    return model, record
