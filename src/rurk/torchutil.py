"""Small torch utilities shared by the whole package (one definition each): devices, model modes, seeded
generators, memory layout and batched inference."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn


# ---------------------------------------------------------------------------------------------- seeds
def derive_seed(*parts) -> int:
    """A stable 63-bit seed from ``parts`` (e.g. run seed, probe name, block index).

    Uses BLAKE2b of the parts' ``repr`` joined by '|', so it is identical across processes and
    machines (unlike Python's salted ``hash()``)."""
    h = hashlib.blake2b("|".join(repr(p) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & ((1 << 63) - 1)


def make_generator(seed: int, tag: str, device) -> torch.Generator:
    """A generator of its own on ``device`` for one random stream (probe noise, NGD noise, random labels, ...),
    seeded with :func:`derive_seed` ``(seed, tag)`` so it never shares another stream's numbers."""
    return torch.Generator(device=torch.device(device)).manual_seed(derive_seed(int(seed), tag))


# ---------------------------------------------------------------------------------------------- devices, layout
def module_device(*modules: nn.Module | None, default=None) -> torch.device:
    """Device of the first parameter (else buffer) of the first module that has one; ``default``
    (or CPU) for parameter-free modules."""
    for mod in modules:
        if mod is None:
            continue
        for t in mod.parameters():
            return t.device
        for t in mod.buffers():
            return t.device
    return torch.device(default) if default is not None else torch.device("cpu")


def model_device(model: nn.Module) -> torch.device:
    """The device of ``model`` (its first parameter or buffer; CPU for a parameter-free model)."""
    return module_device(model)


def canonical_strides(shape: Sequence[int], fmt: torch.memory_format) -> tuple[int, ...]:
    """The strides ``torch.empty(shape, memory_format=fmt)`` would have (4-D ``fmt`` = channels_last)."""
    if fmt == torch.channels_last and len(shape) == 4:
        n, c, h, w = shape
        return (h * w * c, 1, w * c, c)
    strides, acc = [], 1
    for size in reversed(shape):
        strides.append(acc)
        acc *= max(int(size), 1)
    return tuple(reversed(strides))


def in_format(t: torch.Tensor, fmt: torch.memory_format) -> torch.Tensor:
    """``t`` with exactly the canonical strides of ``fmt``.

    ``t.contiguous(memory_format=fmt)`` is not enough: with a size-1 dimension (one input channel, a
    3x3 kernel with one input channel, a 1x1 kernel) a tensor is contiguous in *both* formats, so it is
    returned unchanged with its NCHW strides, and convolution / pooling, which pick their layout from the
    strides of input and weight, then run -- and hand the next layer -- NCHW. When ``t`` is already
    contiguous in ``fmt`` the memory is the same either way and a strided view fixes the label for free;
    otherwise the data is copied once. The audit uses it (its forward passes were 1.5x slower without it);
    :func:`to_layout` keeps plain ``contiguous`` for training, where it measured no faster and could change
    the trained weights' floating-point sums."""
    if t.dim() != 4 and fmt == torch.channels_last:
        return t
    want = canonical_strides(t.shape, fmt)
    if t.stride() == want:
        return t
    if not t.is_contiguous(memory_format=fmt):
        t = t.contiguous(memory_format=fmt)
        if t.stride() == want:
            return t
    return t.as_strided(t.shape, want)


def to_layout(x: torch.Tensor, channels_last: bool = True) -> torch.Tensor:
    """channels_last for 4-D image batches (5x faster convs on CPU here; harmless for MLPs). A one-channel
    batch keeps its NCHW strides (see :func:`in_format`)."""
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x


# ---------------------------------------------------------------------------------------------- model modes
@contextmanager
def eval_mode(*models: nn.Module) -> Iterator[None]:
    """Put every module of ``models`` in eval mode; restore each submodule's own flag afterwards
    (so a model with, e.g., frozen-BN submodules comes back exactly as it was)."""
    saved = [(mod, mod.training) for model in models for mod in model.modules()]
    try:
        for model in models:
            model.eval()
        yield
    finally:
        for mod, flag in saved:
            mod.training = flag


@contextmanager
def frozen_eval(model: nn.Module) -> Iterator[None]:
    """Eval mode and ``requires_grad=False`` on every parameter, so an attack takes gradients with
    respect to its input only; both restored afterwards (parameters that were already frozen stay
    frozen)."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    with eval_mode(model):
        try:
            for p, _ in flags:
                p.requires_grad_(False)
            yield
        finally:
            for p, flag in flags:
                p.requires_grad_(flag)


# ---------------------------------------------------------------------------------------------- finite outputs
class NonFiniteLogits(ValueError):
    """A model's logits hold NaN or inf. No score of such a model means anything -- argmax of an all-NaN row is
    class 0, so a NaN model would be "perfectly accurate" on class 0 -- so the audit and every metric refuse it
    instead of returning a number."""


def require_finite(what: str, bad: torch.Tensor | int, total: int) -> None:
    """Raise :class:`NonFiniteLogits` naming ``what`` (e.g. "the unlearned model") when ``bad``, the number of
    inputs whose logits hold NaN or inf (a count that may still be on the device: read here, once), is not 0."""
    n = int(bad)
    if n:
        raise NonFiniteLogits(f"{what} returns non-finite logits (NaN or inf) for {n} of {total} inputs")


# ---------------------------------------------------------------------------------------------- batched inference
def batched(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, device, batch_size: int = 256) -> torch.Tensor:
    """``fn`` over ``x`` in batches of ``batch_size`` moved to ``device`` (channels_last for images), concatenated."""
    outs = [fn(to_layout(x[i : i + batch_size].to(device))) for i in range(0, x.shape[0], batch_size)]
    return torch.cat(outs) if outs else torch.empty(0, device=device)


@torch.inference_mode()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Float logits of ``model`` on ``x`` in eval mode (modes restored afterwards), batched, on the model's device.
    Every accuracy, MIA feature and loss of rurk comes through here, so a model with NaN/inf logits is refused here
    (:class:`NonFiniteLogits`; one reduction over the result)."""
    with eval_mode(model):
        out = batched(lambda b: model(b).float(), x, model_device(model), batch_size)
    require_finite(f"the model ({type(model).__name__})", out.shape[0] - torch.isfinite(out).all(1).sum(), out.shape[0])
    return out
