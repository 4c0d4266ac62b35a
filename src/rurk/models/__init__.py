"""rurk models: every architecture is a ``Classifier`` = ``head(body(norm(x)))`` with normalisation inside, so
inputs are float32 in [0, 1] pixel space (or raw tabular features).

>>> model = build_model("smallcnn", 10, (1, 28, 28), mean=[0.286], std=[0.353])
>>> feats_fn, head = feature_head(model)          # penultimate features and the last Linear
>>> model.reset_parameters_of(default_tail(model))  # EU-k: re-initialise the tail

Registered: ``mlp``, ``smallcnn``, ``tinycnn8``, ``resnet18``, ``resnet50``, ``vgg11``.
"""

from __future__ import annotations

from collections.abc import Sequence

from . import cnn, mlp, resnet, vgg  # noqa: F401  (registers the architectures)
from .base import (
    MODELS,
    Classifier,
    Normalize,
    default_tail,
    feature_head,
    init_module_,
    last_k_layers,
)

__all__ = ["Classifier", "Normalize", "build_model", "MODELS", "default_tail", "feature_head", "last_k_layers",
           "init_module_"]


def build_model(arch: str, num_classes: int, in_shape: Sequence[int], *, mean=None, std=None, width: float = 1.0,
                **kw) -> Classifier:
    """Build a registered architecture.

    ``in_shape``: (C, H, W) for images, or (F,) for tabular data (``mlp`` only). ``mean``/``std``: per-channel
    (per-feature) input statistics, default 0 / 1. ``width`` scales channel / hidden sizes. Extra keyword
    arguments go to the architecture (e.g. ``hidden=(100,)`` for ``mlp``).
    """
    if arch not in MODELS:
        raise ValueError(f"unknown arch {arch!r}; registered: {', '.join(sorted(MODELS))}")
    return MODELS[arch](num_classes, in_shape, mean=mean, std=std, width=width, **kw)
