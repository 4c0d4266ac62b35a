"""L-inf PGD with random start (residual-knowledge.md §5.2-5.3): targeted ``pgd`` and ``pgd-recall``.

Both *descend* a cross-entropy: towards a random wrong target y' (``pgd``, the library's targeted
mode used by the paper) or towards the true label y (``pgd-recall``)::

    x^0 = clip(x + U[-tau, tau]^d, 0, 1)
    x^t = clip(x + clip(x^(t-1) - alpha * sign(grad CE(h(x^(t-1)), label)) - x, -tau, tau), 0, 1)

When tau < alpha the step overshoots and the projection handles it, as in the library."""

from __future__ import annotations

from dataclasses import dataclass

from .base import AdversarialProbe, _rand, project


@dataclass(eq=False)
class PGD(AdversarialProbe):
    """``pgd``, targeted (paper): alpha = 2/255, 10 steps, random start; crafted on m only."""

    alpha: float = 2 / 255
    steps: int = 10
    random_start: bool = True

    name = "pgd"
    targeted = True
    default_craft_on = "m"
    allowed_craft_on = ("m",)
    notes = ("pgd: targeted, crafted on m only; r is biased downward by construction.",)

    def __post_init__(self):
        if self.steps < 0 or not self.alpha > 0:
            raise ValueError(f"{self.name}: need steps >= 0 and alpha > 0, got steps={self.steps}, alpha={self.alpha}")

    def noise(self, shape, generator, device, dtype):
        if not self.random_start:
            return None
        return _rand(shape, generator, device, dtype).mul_(2.0).sub_(1.0)  # U[-1, 1): start = tau * noise

    def attack(self, model, x, label, tau, noise):
        x_adv = x if noise is None else (noise * tau).add_(x).clamp_(0.0, 1.0)
        for _ in range(self.steps):
            g = self.input_grad(model, x_adv, label)
            x_adv = project(x_adv - self.alpha * g.sign(), x, tau)
        return x_adv


@dataclass(eq=False)
class PGDRecall(PGD):
    """``pgd-recall`` (beyond the paper): the same PGD, descending CE of the *true* label y -- an attacker
    trying to make a model re-recognise the sample. The c draws differ only in their random starts.

    ``craft_on`` (used by the audit): ``'m'`` (biased upward), ``'a'`` (biased downward) or ``'both'``
    (default, symmetric: each model attacked with its own copies from the same random starts)."""

    craft_on: str = "both"

    name = "pgd-recall"
    targeted = False
    default_craft_on = "both"
    allowed_craft_on = ("m", "a", "both")
    notes = ("pgd-recall: descends CE(y); one-sided crafting is biased (on m: upward, on a: downward).",)

    def __post_init__(self):
        super().__post_init__()
        if self.craft_on not in self.allowed_craft_on:
            raise ValueError(f"pgd-recall: craft_on must be one of {self.allowed_craft_on}, got {self.craft_on!r}")
