"""Probe base classes: everything a perturbation family needs except its own math.

A *probe* (residual-knowledge.md §5) draws perturbed copies x' of inputs x at strength tau. One
implementation serves two callers:

* the **audit** (:func:`rurk.audit.kernel.residual_knowledge`) draws the randomness of a whole block of
  (sample, draw) copies once with :meth:`Probe.draw` and reuses it for every tau with
  :meth:`Probe.apply` -- *common random numbers across tau*: a random probe's copy is
  ``clip(x + tau * noise, 0, 1)`` with one base ``noise`` per (sample, draw); adversarial probes share
  their random starts ``tau * noise`` and targets across tau;
* **RURK training** (rurk.md §2-3) calls the probe once per step on the current model::

      probe = make_probe("pgd", steps=10, alpha=2/255)
      p = probe.sample(model, x, y, tau, generator)           # Perturbed(x=..., target=...)

  ``p.target`` is the random wrong target y' the model is trained towards for targeted probes
  (``fgsm``, ``pgd``) and None otherwise.

The base class owns device handling, input checks, model-mode and ``requires_grad`` save/restore,
the tau = 0 rule (x' = x exactly) and clipping to [0, 1]; subclasses implement only
:meth:`Probe.noise` and, for attacks, :meth:`AdversarialProbe.attack`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import torch
from torch import nn

from ..torchutil import derive_seed, eval_mode, frozen_eval, module_device  # noqa: F401 (re-exported)

CRAFT_ON = ("m", "a", "both")


class Perturbed(NamedTuple):
    """Perturbed copies ``x`` (detached, in [0, 1]) and, for targeted probes, the wrong label
    ``target`` (y' != y) each copy was crafted towards; ``target`` is None for untargeted probes."""

    x: torch.Tensor
    target: torch.Tensor | None = None


class Draw(NamedTuple):
    """The randomness of one batch of copies, independent of tau: ``noise`` is the unit-scale base noise
    (random probes) or random start (PGD), None where the probe has none; ``target`` the random
    wrong labels of targeted probes, else None."""

    noise: torch.Tensor | None
    target: torch.Tensor | None


# --------------------------------------------------------------------------------------------------
# seeding and devices


def block_generator(seed: int, probe_name: str, block: int, device) -> torch.Generator:
    """The generator of one fixed-size sample block of the audit (residual-knowledge.md §5, §8):
    on ``device``, seeded with ``derive_seed(seed, probe_name, block)``."""
    g = torch.Generator(device=torch.device(device))
    g.manual_seed(derive_seed(int(seed), str(probe_name), int(block)))
    return g


def _randn(shape, generator, device, dtype) -> torch.Tensor:
    gdev = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=gdev, dtype=dtype).to(device)


def _rand(shape, generator, device, dtype) -> torch.Tensor:
    gdev = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=gdev, dtype=dtype).to(device)


def random_wrong_labels(y: torch.Tensor, num_classes: int, generator=None) -> torch.Tensor:
    """y' uniform over the C-1 labels != y, one per row: (y + U{1..C-1}) mod C."""
    if num_classes < 2:
        raise ValueError(f"targeted probes need at least 2 classes, got num_classes={num_classes}")
    gdev = generator.device if generator is not None else y.device
    off = torch.randint(1, num_classes, y.shape, generator=generator, device=gdev).to(y.device)
    return (y + off) % num_classes


# --------------------------------------------------------------------------------------------------
# model state save/restore


# --------------------------------------------------------------------------------------------------
# checks


def check_tau(tau) -> float:
    tau = float(tau)
    if not math.isfinite(tau) or tau < 0:
        raise ValueError(f"tau must be a finite number >= 0, got {tau}")
    return tau


def check_inputs(x: torch.Tensor, y: torch.Tensor | None = None, *, check_range: bool = True):
    """Validate a batch: ``x`` floating, with a batch dimension, values in [0, 1] (pixel space; one
    host sync); ``y`` integer labels of shape (n,). Returns (x, y) with y as int64 on x's device."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor in [0, 1], got {getattr(x, 'dtype', type(x))}")
    if x.dim() < 2:
        raise ValueError(f"x must have a batch dimension and features, got shape {tuple(x.shape)}")
    if check_range and x.numel():
        lo, hi = torch.aminmax(x.detach())
        lo, hi = float(lo), float(hi)
        if lo < 0.0 or hi > 1.0 or math.isnan(lo) or math.isnan(hi):
            raise ValueError(
                f"x must be in [0, 1] pixel space (normalisation lives inside the model); got range [{lo}, {hi}]"
            )
    if y is not None:
        y = torch.as_tensor(y, device=x.device)
        if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
            raise TypeError(f"y must hold integer class labels, got {y.dtype}")
        if y.shape != (x.shape[0],):
            raise ValueError(f"y must have shape ({x.shape[0]},), got {tuple(y.shape)}")
        y = y.long()
    return x, y


# --------------------------------------------------------------------------------------------------
# probes


@dataclass(eq=False)
class Probe:
    """A perturbation family. Subclasses set ``name`` and implement :meth:`noise` (random probes) or
    :meth:`AdversarialProbe.attack` (attacks).

    The randomness is separated from tau: :meth:`draw` returns a :class:`Draw` for a batch; :meth:`apply`
    turns it into copies at strength tau deterministically. :meth:`sample` is draw + apply.
    """

    name: ClassVar[str] = "probe"
    adversarial: ClassVar[bool] = False
    targeted: ClassVar[bool] = False
    default_craft_on: ClassVar[str | None] = None
    allowed_craft_on: ClassVar[tuple[str, ...]] = ()
    notes: ClassVar[tuple[str, ...]] = ()

    # -- to implement ------------------------------------------------------------------------------
    def noise(self, shape, generator, device, dtype) -> torch.Tensor | None:
        """Unit-scale base noise for ``shape`` (rows = copies); None if the probe draws none."""
        return None

    # -- public API --------------------------------------------------------------------------------
    @property
    def params(self) -> dict:
        """Constructor parameters, JSON-serialisable (for reports)."""
        from dataclasses import asdict

        return asdict(self)

    def draw(self, x: torch.Tensor, y: torch.Tensor, generator=None, num_classes: int | None = None) -> Draw:
        """The randomness for copies of the rows of ``x``: base noise first, then targets, both from
        ``generator`` (generated on the generator's device, returned on x's device)."""
        noise = self.noise(tuple(x.shape), generator, x.device, x.dtype)
        target = None
        if self.targeted:
            if num_classes is None:
                raise ValueError(f"probe {self.name!r} is targeted: num_classes is needed to draw targets")
            target = random_wrong_labels(y, int(num_classes), generator)
        return Draw(noise, target)

    def apply(self, model: nn.Module | None, x: torch.Tensor, y: torch.Tensor, tau: float, draw: Draw) -> Perturbed:
        """Copies of ``x`` at strength ``tau`` from a given ``draw`` (no input checks: the fast path)."""
        raise NotImplementedError

    def sample(
        self,
        model: nn.Module | None,
        x: torch.Tensor,
        y: torch.Tensor,
        tau: float,
        generator: torch.Generator | None = None,
        *,
        copies: int = 1,
        num_classes: int | None = None,
    ) -> Perturbed:
        """One fresh draw per row of ``x`` (``copies`` > 1: the batch tiled ``copies`` times, in the
        order ``concat_i x``, matching ``y.repeat(copies)``). Random probes ignore ``model``.
        Adversarial probes run on ``model``'s device; the generator may live on any device."""
        tau = check_tau(tau)
        if self.adversarial:
            if model is None:
                raise ValueError(f"probe {self.name!r} is an attack and needs a model")
            dev = module_device(model, default=x.device)
            x = x.to(dev)
        x, y = check_inputs(x, y)
        if copies != 1:
            if copies < 1:
                raise ValueError(f"copies must be >= 1, got {copies}")
            x = x.repeat(copies, *([1] * (x.dim() - 1)))
            y = y.repeat(copies)
        if self.targeted and num_classes is None:
            num_classes = self._infer_num_classes(model, x)
        with torch.no_grad():
            d = self.draw(x, y, generator, num_classes)
        return self.apply(model, x, y, tau, d)

    @staticmethod
    def _infer_num_classes(model: nn.Module, x: torch.Tensor) -> int:
        with frozen_eval(model), torch.no_grad():
            return int(model(x[:1]).shape[-1])


@dataclass(eq=False)
class RandomProbe(Probe):
    """x' = clip(x + tau * noise, 0, 1), noise drawn by :meth:`noise`; the model is ignored.

    Computed as ``(noise * tau) + x`` in two separately rounded elementwise ops (never a fused
    multiply-add), so a copy is bit-identical however the batch is chunked."""

    def shift(self, x: torch.Tensor, tau: float, noise: torch.Tensor) -> torch.Tensor:
        """x + tau * noise before clipping (the audit counts clipped coordinates from it)."""
        return (noise * float(tau)).add_(x)

    def apply(self, model, x, y, tau, draw: Draw) -> Perturbed:
        return Perturbed(self.shift(x, tau, draw.noise).clamp_(0.0, 1.0), None)


@dataclass(eq=False)
class AdversarialProbe(Probe):
    """An input-gradient attack inside the L-inf ball of radius tau.

    :meth:`apply` puts the crafting model in eval mode with ``requires_grad=False`` on its parameters
    (restored afterwards), enables autograd even under ``torch.no_grad``/``inference_mode``, returns a
    detached result clipped to [0, 1] and within ``tau`` of x, and returns x itself (a copy) at tau = 0.
    Losses are summed, not averaged, so each row's gradient does not depend on the batch it is in."""

    adversarial: ClassVar[bool] = True

    def attack(self, model: nn.Module, x: torch.Tensor, label: torch.Tensor, tau: float, noise) -> torch.Tensor:
        """The probe's math: return x' (may be attached to the graph; the base detaches and projects)."""
        raise NotImplementedError

    def apply(self, model, x, y, tau, draw: Draw) -> Perturbed:
        tau = float(tau)
        if tau == 0.0:
            return Perturbed(x.detach().clone(), draw.target)
        label = draw.target if self.targeted else y
        with torch.inference_mode(False), torch.enable_grad(), frozen_eval(model):
            x0 = x.detach().clone()
            noise = draw.noise.clone() if draw.noise is not None else None
            label = label.clone()
            x_adv = self.attack(model, x0, label, tau, noise).detach()
            x_adv = project(x_adv, x0, tau)
        return Perturbed(x_adv, draw.target)

    @staticmethod
    def input_grad(model: nn.Module, x: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """d CE(model(x), label) / dx with the loss summed over the batch."""
        x = x.detach().requires_grad_(True)
        loss = nn.functional.cross_entropy(model(x), label, reduction="sum")
        (g,) = torch.autograd.grad(loss, x)
        return g


def project(x_adv: torch.Tensor, x: torch.Tensor, tau: float) -> torch.Tensor:
    """clip(x + clip(x_adv - x, -tau, tau), 0, 1): back into the L-inf ball and the pixel box."""
    return (x + (x_adv - x).clamp_(-tau, tau)).clamp_(0.0, 1.0)
