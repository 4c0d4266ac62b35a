"""ResNets: ``resnet18`` (CIFAR style) and ``resnet50`` (standard ImageNet).

Module names follow torchvision (``body.conv1``, ``body.bn1``, ``body.layer1`` .. ``body.layer4``) except that the
projection shortcut is ``shortcut`` (``Sequential(conv 1x1, BN)``; ``Identity`` when not needed).

Tail (spec decision for EU-k/CF-k): all of ``body.layer4`` + ``head``, i.e. the paper's "last FC layer and the
last two residual blocks". Note: because each block registers conv1, bn1, conv2, bn2, shortcut in that order,
the reference counting rule ``last_k_layers(model, 5)`` stops one conv short of that: it leaves out
``body.layer4.0.conv1`` (and its ``bn1``).
"""

from __future__ import annotations

from collections import OrderedDict

import torch.nn.functional as F
from torch import nn

from .base import register, scaled


def _conv_bn(cin: int, cout: int, k: int, stride: int = 1) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False), nn.BatchNorm2d(cout)


class _Block(nn.Module):
    """Residual block: ``relu(branch(x) + shortcut(x))``; the branch is conv/BN pairs with ReLU in between."""

    def __init__(self, cin: int, stride: int, convs: list[tuple[int, int, int]]):
        super().__init__()
        self.n = len(convs)
        c = cin
        for i, (k, out, s) in enumerate(convs, 1):
            conv, bn = _conv_bn(c, out, k, s)
            self.add_module(f"conv{i}", conv)
            self.add_module(f"bn{i}", bn)
            c = out
        self.out_channels = c
        projection = stride != 1 or cin != c
        self.shortcut = nn.Sequential(*_conv_bn(cin, c, 1, stride)) if projection else nn.Identity()

    def forward(self, x):
        out = x
        for i in range(1, self.n + 1):
            out = getattr(self, f"bn{i}")(getattr(self, f"conv{i}")(out))
            if i < self.n:
                out = F.relu(out)
        return F.relu(out + self.shortcut(x))


def basic_block(cin: int, planes: int, stride: int) -> _Block:
    """3x3 -> 3x3, expansion 1."""
    return _Block(cin, stride, [(3, planes, stride), (3, planes, 1)])


def bottleneck(cin: int, planes: int, stride: int) -> _Block:
    """1x1 -> 3x3 (stride here, as in torchvision v1.5) -> 1x1 to 4*planes, expansion 4."""
    return _Block(cin, stride, [(1, planes, 1), (3, planes, stride), (1, 4 * planes, 1)])


def _resnet_body(in_shape, width: float, block, depths: tuple[int, ...], imagenet_stem: bool):
    c = scaled(64, width)
    conv1, bn1 = _conv_bn(in_shape[0], c, *((7, 2) if imagenet_stem else (3, 1)))
    layers: OrderedDict[str, nn.Module] = OrderedDict(conv1=conv1, bn1=bn1, relu=nn.ReLU())
    if imagenet_stem:
        layers["maxpool"] = nn.MaxPool2d(3, stride=2, padding=1)
    for i, (planes, n) in enumerate(zip((64, 128, 256, 512), depths), 1):
        blocks = []
        for j in range(n):
            blocks.append(block(c, scaled(planes, width), 2 if (i > 1 and j == 0) else 1))
            c = blocks[-1].out_channels
        layers[f"layer{i}"] = nn.Sequential(*blocks)
    layers["pool"] = nn.AdaptiveAvgPool2d(1)
    layers["flatten"] = nn.Flatten()
    return nn.Sequential(layers), c, ["body.layer4", "head"]


@register("resnet18")
def resnet18(in_shape, *, width: float = 1.0):
    """CIFAR-style ResNet-18: 3x3 stride-1 stem, no max-pool, BasicBlocks 2-2-2-2 with (64, 128, 256, 512) x width
    channels, global average pool (11,173,962 parameters with 10 classes). Tail: body.layer4 + head."""
    return _resnet_body(in_shape, width, basic_block, (2, 2, 2, 2), imagenet_stem=False)


@register("resnet50")
def resnet50(in_shape, *, width: float = 1.0):
    """ImageNet ResNet-50: 7x7 stride-2 stem, 3x3 stride-2 max-pool, bottlenecks 3-4-6-3 (expansion 4), global
    average pool (23,712,932 parameters with 100 classes). Tail: body.layer4 + head."""
    return _resnet_body(in_shape, width, bottleneck, (3, 4, 6, 3), imagenet_stem=True)
