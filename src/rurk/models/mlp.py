"""``mlp``: flatten -> [Linear -> ReLU] per hidden layer -> head."""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence

from torch import nn

from .base import register, scaled


@register("mlp", tabular=True)
def mlp(in_shape: tuple[int, ...], *, width: float = 1.0, hidden: Sequence[int] = (128, 128)):
    """Multi-layer perceptron on flattened inputs (tabular (F,) or images (C, H, W)); ``hidden`` sizes are scaled
    by ``width`` (iris: ``hidden=(100,)``). Tail: the last hidden Linear + head (just the head if no hidden)."""
    layers: OrderedDict[str, nn.Module] = OrderedDict(flatten=nn.Flatten())
    dim = math.prod(in_shape)
    for i, h in enumerate(hidden, 1):
        layers[f"fc{i}"] = nn.Linear(dim, scaled(h, width))
        layers[f"relu{i}"] = nn.ReLU()
        dim = layers[f"fc{i}"].out_features
    tail = [f"body.fc{len(hidden)}", "head"] if hidden else ["head"]
    return nn.Sequential(layers), dim, tail
