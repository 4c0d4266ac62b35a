"""``vgg11``: VGG-11 with BatchNorm, CIFAR variant."""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from .base import register, scaled, shape_error

_CFG11 = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


@register("vgg11")
def vgg11(in_shape, *, width: float = 1.0):
    """VGG-11-BN, CIFAR variant: 8 x (conv3x3 -> BN -> ReLU) with 5 max-pools (channels x width; each pool runs before
    the ReLU it follows in the usual drawing — the same function and gradients, ReLU on a quarter of the values,
    see :func:`rurk.models.cnn._conv_net`), adaptive average pool to 1x1 and a single Linear 512 -> C. Conv biases
    are kept, as in torchvision's vgg11_bn: 9,231,114 parameters with 10 classes. Needs H, W >= 32.
    Tail: the last two convs with their BNs (body.conv7, body.bn7, body.conv8, body.bn8) + head."""
    c, h, w = in_shape
    if min(h, w) < 32:
        raise shape_error("vgg11", in_shape, "needs H, W >= 32 (five 2x2 max-pools)")
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    i = j = 0
    for v in _CFG11:
        if v == "M":  # before the preceding ReLU: the same function, ReLU on a quarter of the values (cnn.py)
            j += 1
            relu = layers.pop(f"relu{i}")
            layers[f"pool{j}"] = nn.MaxPool2d(2)
            layers[f"relu{i}"] = relu
            continue
        i += 1
        layers[f"conv{i}"] = nn.Conv2d(c, scaled(v, width), 3, padding=1)
        c = layers[f"conv{i}"].out_channels
        layers[f"bn{i}"] = nn.BatchNorm2d(c)
        layers[f"relu{i}"] = nn.ReLU()
    layers["avgpool"] = nn.AdaptiveAvgPool2d(1)
    layers["flatten"] = nn.Flatten()
    return nn.Sequential(layers), c, [f"body.conv{i - 1}", f"body.bn{i - 1}", f"body.conv{i}", f"body.bn{i}", "head"]
