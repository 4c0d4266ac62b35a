"""Small convolutional nets for low-resolution data: ``smallcnn`` (Fashion-MNIST) and ``tinycnn8`` (8x8 digits)."""

from __future__ import annotations

import copy
from collections import OrderedDict

from torch import nn

from .base import register, scaled, shape_error


def _conv_net(arch, in_shape, width, blocks, hidden):
    """``blocks``: per conv stage a list of output channels (3x3 convs, padding 1, each + ReLU) followed by a
    2x2 max-pool; then flatten -> Linear ``hidden`` -> ReLU. Tail: the two Linear layers (fc1 + head).

    Each stage's last ReLU runs *after* its max-pool (decision): max-pooling commutes with ReLU (both monotone),
    so logits and gradients are bit-identical to ReLU-then-pool (tests/test_models.py), but ReLU and its backward
    touch a quarter of the values: a SmallCNN training step 12% faster, a forward pass 5% (batch 64) to 27%
    (batch 512) (bench/bench_layer_order.py, one thread, AMD EPYC family 25 model 17)."""
    c, h, w = in_shape
    if min(h, w) < 2 ** len(blocks):
        raise shape_error(arch, in_shape, f"needs H, W >= {2 ** len(blocks)}")
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    i = 0
    for j, stage in enumerate(blocks, 1):
        for k, out in enumerate(stage, 1):
            i += 1
            layers[f"conv{i}"] = nn.Conv2d(c, scaled(out, width), 3, padding=1)
            if k == len(stage):
                layers[f"pool{j}"] = nn.MaxPool2d(2)
            layers[f"relu{i}"] = nn.ReLU()
            c = layers[f"conv{i}"].out_channels
        h, w = h // 2, w // 2
    layers["flatten"] = nn.Flatten()
    layers["fc1"] = nn.Linear(c * h * w, scaled(hidden, width))
    layers[f"relu{i + 1}"] = nn.ReLU()
    return nn.Sequential(layers), layers["fc1"].out_features, ["body.fc1", "head"]


def textbook_order(model: nn.Module) -> nn.Module:
    """A copy of a :func:`_conv_net` / VGG model whose body runs each ReLU that follows a max-pool before it (the
    usual order): the reference the pool-first order is tested and benchmarked against (tests/test_models.py,
    bench/bench_layer_order.py)."""
    ref = copy.deepcopy(model)
    mods = list(ref.body._modules.items())
    for i in range(1, len(mods)):
        if isinstance(mods[i - 1][1], nn.MaxPool2d) and isinstance(mods[i][1], nn.ReLU):
            mods[i - 1], mods[i] = mods[i], mods[i - 1]
    ref.body._modules.clear()
    ref.body._modules.update(mods)
    return ref


@register("smallcnn")
def smallcnn(in_shape, *, width: float = 1.0):
    """conv3x3 32 -> ReLU -> maxpool2 -> conv3x3 64 -> ReLU -> maxpool2 -> Linear 128 -> ReLU -> head (each
    stage pooled before its ReLU, the same function, :func:`_conv_net`)
    (421,642 parameters on 1x28x28 with 10 classes). Tail: body.fc1 + head."""
    return _conv_net("smallcnn", in_shape, width, [[32], [64]], 128)


@register("tinycnn8")
def tinycnn8(in_shape, *, width: float = 1.0):
    """conv3x3 16 -> ReLU -> conv3x3 32 -> ReLU -> maxpool2 -> Linear 64 -> ReLU -> head
    (38,282 parameters on 1x8x8 with 10 classes). Tail: body.fc1 + head."""
    return _conv_net("tinycnn8", in_shape, width, [[16, 32]], 64)
