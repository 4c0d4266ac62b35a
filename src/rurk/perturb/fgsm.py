"""Targeted FGSM (residual-knowledge.md §5.2): x' = clip(x - tau * sign(grad_x CE(m(x), y')), 0, 1)."""

from __future__ import annotations

from dataclasses import dataclass

from .base import AdversarialProbe


@dataclass(eq=False)
class FGSM(AdversarialProbe):
    """``fgsm``, targeted (paper): one signed step of size tau *down* CE towards a random wrong label
    y' (drawn uniformly per copy). Deterministic given y'. Crafted on m only (``craft_on='m'``), which
    biases r downward: the probe attacks m, while a only sees transferred perturbations."""

    name = "fgsm"
    targeted = True
    default_craft_on = "m"
    allowed_craft_on = ("m",)
    notes = ("fgsm: targeted, crafted on m only; r is biased downward by construction.",)

    def attack(self, model, x, label, tau, noise):
        return x - tau * self.input_grad(model, x, label).sign()
