"""Shared pieces of every rurk model: input normalisation, the ``Classifier`` wrapper, the registry,
the one initialisation rule (used both at construction and by ``reset_parameters_of``) and tail selection.

Every model is ``head(body(norm(x)))`` with ``x`` float32 in [0, 1] pixel space (or raw tabular features).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

MODELS: dict[str, Callable[..., "Classifier"]] = {}


class Normalize(nn.Module):
    """``(x - mean) / std`` with per-channel (images, buffers of shape (1, C, 1, 1)) or per-feature
    (tabular, buffers of shape (1, F)) statistics. The buffers are saved with the model."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], *, spatial: bool = True):
        super().__init__()
        mean = torch.as_tensor(mean, dtype=torch.float32).flatten()
        std = torch.as_tensor(std, dtype=torch.float32).flatten()
        if mean.shape != std.shape:
            raise ValueError(f"Normalize: mean has {mean.numel()} values but std has {std.numel()}")
        if not bool((std > 0).all()):
            raise ValueError(f"Normalize: std must be positive, got {std.tolist()}")
        shape = (1, -1, 1, 1) if spatial else (1, -1)
        self.register_buffer("mean", mean.reshape(shape))
        self.register_buffer("std", std.reshape(shape))

    @classmethod
    def for_shape(cls, in_shape: tuple[int, ...], mean=None, std=None) -> "Normalize":
        """Statistics for inputs of shape ``in_shape`` ((C, H, W) or (F,)); default mean 0, std 1.
        A scalar is broadcast to all channels/features."""
        n = in_shape[0]

        def expand(v, default: float, what: str) -> list[float]:
            v = [default] if v is None else torch.as_tensor(v, dtype=torch.float32).flatten().tolist()
            if len(v) == 1:
                v = v * n
            if len(v) != n:
                raise ValueError(f"{what} has {len(v)} values but in_shape {tuple(in_shape)} needs {n}")
            return v

        return cls(expand(mean, 0.0, "mean"), expand(std, 1.0, "std"), spatial=len(in_shape) == 3)

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"


# ---------------------------------------------------------------------------------------------------------------
# Initialisation: one rule for all architectures, used at construction and by reset_parameters_of.
#   Conv2d: kaiming-normal (fan_out, relu), bias 0.   Linear: PyTorch default, U(±1/sqrt(fan_in)) for weight
#   and bias.   BatchNorm: weight 1, bias 0, running statistics reset.


def _fill_(p: Tensor, sample: Callable[[Tensor], Tensor], generator: torch.Generator | None) -> None:
    """Fill ``p`` in place with ``sample(t)``, drawing on the generator's device when it differs from p's."""
    if generator is None or generator.device == p.device:
        sample(p)
    else:
        p.copy_(sample(torch.empty(p.shape, dtype=p.dtype, device=generator.device)))


@torch.no_grad()
def init_module_(m: nn.Module, generator: torch.Generator | None = None) -> None:
    """Re-initialise the *own* parameters of one module (not its children). Raises TypeError for a module type
    with parameters that the rule does not cover, so nothing is silently left un-reset."""
    if isinstance(m, nn.Conv2d):
        fan_out = m.weight.shape[0] * m.weight[0, 0].numel()
        std = math.sqrt(2.0 / fan_out)
        _fill_(m.weight, lambda t: t.normal_(0.0, std, generator=generator), generator)
        if m.bias is not None:
            m.bias.zero_()
    elif isinstance(m, nn.Linear):
        bound = 1.0 / math.sqrt(m.in_features) if m.in_features > 0 else 0.0
        for p in (m.weight, m.bias) if m.bias is not None else (m.weight,):
            _fill_(p, lambda t: t.uniform_(-bound, bound, generator=generator), generator)
    elif isinstance(m, _BatchNorm):
        m.reset_running_stats()
        if m.affine:
            m.weight.fill_(1.0)
            m.bias.zero_()
    elif any(True for _ in m.parameters(recurse=False)):
        raise TypeError(f"no initialisation rule for {type(m).__name__}")


class Classifier(nn.Module):
    """Every rurk model: ``head(body(norm(x)))``.

    ``features(x)`` are the penultimate features (the input of ``head``). ``tail_modules()`` names the default
    EU-k/CF-k tail (names as in ``named_modules()``). ``config`` holds the ``build_model`` arguments, so
    ``build_model(**model.config)`` rebuilds the same architecture (e.g. before loading saved weights).
    """

    def __init__(self, arch: str, norm: Normalize, body: nn.Module, head: nn.Linear, tail: Sequence[str],
                 config: dict | None = None):
        super().__init__()
        self.arch = arch
        self.norm = norm
        self.body = body
        self.head = head
        self._tail = list(tail)
        self.config = dict(config or {})
        names = dict(self.named_modules())
        missing = [t for t in self._tail if t not in names]
        if missing:
            raise ValueError(f"{arch}: tail modules {missing} do not exist")
        self.reset_parameters_of([""])

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(self.norm(x)))

    def features(self, x: Tensor) -> Tensor:
        return self.body(self.norm(x))

    def tail_modules(self) -> list[str]:
        return list(self._tail)

    def reset_parameters_of(self, names: Sequence[str], generator: torch.Generator | None = None) -> None:
        """Re-initialise every Conv/Linear/BatchNorm inside the named submodules (``""`` = whole model) with the
        construction-time init. Everything else, including the Normalize buffers, is left untouched."""
        if isinstance(names, str):
            raise TypeError("names must be a list of module names, not a single string")
        modules = dict(self.named_modules())
        unknown = [n for n in names if n not in modules]
        if unknown:
            raise ValueError(f"{self.arch}: unknown module names {unknown}")
        todo: dict[int, nn.Module] = {}  # ordered and de-duplicated, so a seeded reset is reproducible
        for n in names:
            for m in modules[n].modules():
                todo.setdefault(id(m), m)
        for m in todo.values():
            init_module_(m, generator)


def shape_error(arch: str, in_shape, why: str) -> ValueError:
    return ValueError(f"arch {arch!r} cannot take in_shape {tuple(in_shape)}: {why}")


def register(name: str, *, tabular: bool = False):
    """Register ``make_body(in_shape, *, width, **kw) -> (body, feature_dim, tail)`` under ``name``.

    ``MODELS[name](num_classes, in_shape, *, mean=None, std=None, width=1.0, **kw)`` then returns a Classifier.
    ``tail`` names are relative to the Classifier (``"body.fc1"``, ``"head"``). Image architectures accept
    only (C, H, W); ``tabular=True`` also accepts (F,).
    """

    def deco(make_body):
        def build(num_classes: int, in_shape: Sequence[int], *, mean=None, std=None, width: float = 1.0, **kw):
            in_shape = tuple(int(s) for s in in_shape)
            if len(in_shape) not in ((1, 3) if tabular else (3,)) or min(in_shape) < 1:
                want = "(C, H, W) or (F,)" if tabular else "(C, H, W)"
                raise shape_error(name, in_shape, f"expected {want} with positive sizes")
            if int(num_classes) < 1 or width <= 0:
                raise ValueError(f"{name}: need num_classes >= 1 and width > 0, got {num_classes}, {width}")
            body, dim, tail = make_body(in_shape, width=width, **kw)
            config = dict(arch=name, num_classes=int(num_classes), in_shape=in_shape, mean=mean, std=std,
                          width=width, **kw)
            return Classifier(name, Normalize.for_shape(in_shape, mean, std), body,
                              nn.Linear(dim, int(num_classes)), tail, config)

        build.__name__ = build.__qualname__ = name
        build.__doc__ = make_body.__doc__
        MODELS[name] = build
        return make_body

    return deco


def scaled(channels: int, width: float) -> int:
    """``channels * width``, rounded, at least 1."""
    return max(1, int(round(channels * width)))


# ---------------------------------------------------------------------------------------------------------------
# Tails


def default_tail(model: nn.Module) -> list[str]:
    """The default EU-k/CF-k tail of a Classifier (``model.tail_modules()``)."""
    if not isinstance(model, Classifier):
        raise TypeError(f"default_tail needs a rurk Classifier, got {type(model).__name__}")
    return model.tail_modules()


def last_k_layers(model: nn.Module, k: int) -> list[str]:
    """The reference counting rule (Goel et al.): walk the modules in reverse registration order, collecting
    Conv2d/Linear layers (counted) and BatchNorm layers (not counted) until ``k`` counted layers are collected.
    Returns the names (as in ``named_modules()``) in forward registration order."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    picked, counted = [], 0
    for name, m in reversed(list(model.named_modules())):
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            picked.append(name)
            counted += 1
            if counted == k:
                return picked[::-1]
        elif isinstance(m, _BatchNorm):
            picked.append(name)
    raise ValueError(f"k={k} but the model has only {counted} Conv2d/Linear layers")


def feature_head(model: nn.Module) -> tuple[Callable[[Tensor], Tensor], nn.Linear]:
    """``(features_fn, head)`` with ``model(x) == head(features_fn(x))``: for a Classifier, or any model exposing a
    callable ``.features`` (penultimate features) and an ``nn.Linear`` ``.head``."""
    features, head = getattr(model, "features", None), getattr(model, "head", None)
    if isinstance(model, Classifier) or (callable(features) and isinstance(head, nn.Linear)):
        return features, head
    raise TypeError(
        f"feature_head needs a rurk Classifier (or a model with a .features(x) method and an nn.Linear .head); "
        f"got {type(model).__name__}"
    )
