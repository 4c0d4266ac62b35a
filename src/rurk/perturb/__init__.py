"""Perturbation probes for the residual-knowledge audit and for RURK (residual-knowledge.md §5).

    probe = make_probe("pgd", steps=10, alpha=2/255)
    p = probe.sample(model, x, y, tau, generator)   # Perturbed(x=x', target=y' or None)
    x_adv, y_used = probe(model, x, y, tau, generator)

=================  ===========  ==========================================================
name               kind         x'
=================  ===========  ==========================================================
``gaussian``       random       clip(x + tau z, 0, 1), z ~ N(0, I)            (paper)
``uniform-linf``   random       clip(x + U[-tau, tau]^d, 0, 1)
``uniform-l2``     random       clip(x + tau u^(1/d) g/||g||, 0, 1)
``fgsm``           targeted     one signed step of size tau down CE(m, y')     (paper)
``pgd``            targeted     L-inf PGD, alpha 2/255, 10 steps, random start (paper)
``pgd-recall``     recall       the same PGD descending CE(h, y), craft_on m/a/both
=================  ===========  ==========================================================
"""

from __future__ import annotations

from .base import (
    CRAFT_ON,
    AdversarialProbe,
    Draw,
    Perturbed,
    Probe,
    RandomProbe,
    block_generator,
    check_inputs,
    derive_seed,
    eval_mode,
    frozen_eval,
    module_device,
    project,
    random_wrong_labels,
)
from .fgsm import FGSM
from .noise import Gaussian, UniformL2, UniformLinf
from .pgd import PGD, PGDRecall

PROBES: dict[str, type[Probe]] = {cls.name: cls for cls in (Gaussian, UniformLinf, UniformL2, FGSM, PGD, PGDRecall)}


def make_probe(name: str | Probe, **params) -> Probe:
    """A probe by registry name with its parameters, e.g. ``make_probe("pgd", steps=5)``.
    A :class:`Probe` instance is returned as is (then no params may be given)."""
    if isinstance(name, Probe):
        if params:
            raise ValueError("make_probe: parameters cannot be given together with a Probe instance")
        return name
    try:
        cls = PROBES[name]
    except KeyError:
        raise ValueError(f"unknown probe {name!r}; choose one of {sorted(PROBES)}") from None
    try:
        return cls(**params)
    except TypeError as e:
        raise TypeError(f"probe {name!r}: {e}") from None


__all__ = [
    "PROBES",
    "make_probe",
    "Probe",
    "RandomProbe",
    "AdversarialProbe",
    "Perturbed",
    "Draw",
    "Gaussian",
    "UniformLinf",
    "UniformL2",
    "FGSM",
    "PGD",
    "PGDRecall",
    "CRAFT_ON",
    "block_generator",
    "derive_seed",
    "check_inputs",
    "eval_mode",
    "frozen_eval",
    "module_device",
    "project",
    "random_wrong_labels",
]
