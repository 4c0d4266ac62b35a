"""The ``torch.func`` machinery the second-order methods share (Fisher, NTK, CR): trainable/constant parameter
splits for ``functional_call``, memory-sized chunks, batched logits and features, convolutions as im2col +
matmul inside the transforms (exact, faster on CPU), and Linear layers in factored form (a per-sample Linear
gradient is δ ⊗ a, so squared or inner-product sums over it become small GEMMs)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call
from torch.overrides import TorchFunctionMode

from ..models import feature_head
from ..torchutil import batched, eval_mode, model_device


def classifier_layer(model: nn.Module) -> nn.Linear:
    """The classifier layer (the last Linear), identified by module reference."""
    return feature_head(model)[1]


def trainable_params(model: nn.Module) -> dict[str, Tensor]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def constants_of(model: nn.Module, names: set[str]) -> dict[str, Tensor]:
    """Buffers and the parameters not in ``names``: passed to ``functional_call`` as constants."""
    out = {n: b for n, b in model.named_buffers()}
    out.update({n: p.detach() for n, p in model.named_parameters() if n not in names})
    return out


def auto_chunk(num_params: int, num_classes: int, mc: bool, itemsize: int, budget_gb: float) -> int:
    """Samples per chunk so that a chunk's per-sample gradient rows (C·P each, about two live copies) fit
    ``budget_gb``; at most 64 (larger chunks gained nothing on CPU in bench/bench_fisher.py)."""
    per_sample = 2 * (1 if mc else num_classes) * num_params * itemsize
    return int(max(1, min(64, budget_gb * 2**30 // max(per_sample, 1))))


@torch.no_grad()
def batched_logits(model: nn.Module, x: Tensor, batch_size: int = 256) -> Tensor:
    """Logits in the model's current mode (callers set eval), on the model's device, in the model's dtype."""
    return batched(model, x, model_device(model), batch_size)


@torch.no_grad()
def batched_features(model: nn.Module, x: Tensor, batch_size: int = 256) -> Tensor:
    """Penultimate features (the input of the classifier layer) of ``model`` in eval mode (modes restored)."""
    features, _ = feature_head(model)
    with eval_mode(model):
        return batched(features, x, model_device(model), batch_size)


# ---------------------------------------------------------------------------------------------- im2col convs
def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def unfold_patches(x: Tensor, kh: int, kw: int, stride, padding, dilation) -> Tensor:
    """``F.unfold`` (N, Cin·kh·kw, L) from strided views (forward only; several times faster than aten::im2col
    on CPU)."""
    n, c, h, w = x.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    xp = F.pad(x, (pw, pw, ph, ph))
    ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    if (dh, dw) == (1, 1):
        p = xp.unfold(2, kh, sh).unfold(3, kw, sw)  # (N, Cin, Ho, Wo, kh, kw), a view
        return p.permute(0, 1, 4, 5, 2, 3).reshape(n, c * kh * kw, ho * wo)
    sl = [xp[:, :, i * dh : i * dh + (ho - 1) * sh + 1 : sh, j * dw : j * dw + (wo - 1) * sw + 1 : sw]
          for i in range(kh) for j in range(kw)]
    return torch.stack(sl, 2).reshape(n, c * kh * kw, ho * wo)


def conv2d_im2col(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """``F.conv2d`` (groups = 1, numeric padding) with the *weight* path as a matmul with the unfolded input:

        out = conv2d(input, stop_grad(W)) + (W − stop_grad(W))·unfold(stop_grad(input)) + b

    The value is the convolution (the second term is exactly 0); the input gradient flows through the ordinary
    convolution and the weight gradient through the matmul, which ``vmap`` turns into one batched GEMM instead
    of a grouped convolution (measured several times faster per-sample gradients on CPU). Only for use inside
    transforms that need per-sample weight gradients."""
    stride, padding, dilation = _pair(stride), _pair(padding), _pair(dilation)
    cout, _, kh, kw = weight.shape
    out = F.conv2d(input, weight.detach(), None, stride, padding, dilation)
    cols = unfold_patches(input.detach(), kh, kw, stride, padding, dilation)  # (N, Cin·kh·kw, L)
    out = out + torch.matmul((weight - weight.detach()).reshape(cout, -1), cols).reshape(out.shape)
    return out if bias is None else out + bias.reshape(1, -1, 1, 1)


class Im2colConv(TorchFunctionMode):
    """Inside this context every 4-D, groups=1, numerically padded ``conv2d`` runs as :func:`conv2d_im2col`;
    anything else (grouped/depthwise convs, ``padding="same"``) runs unchanged."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.conv2d:
            a = dict(zip(("input", "weight", "bias", "stride", "padding", "dilation", "groups"), args), **kwargs)
            if a.get("groups", 1) == 1 and not isinstance(a.get("padding", 0), str) and a["input"].dim() == 4:
                return conv2d_im2col(**a)
        return func(*args, **kwargs)


def conv_mode(im2col: bool):
    return Im2colConv() if im2col else contextlib.nullcontext()


# ---------------------------------------------------------------------------------------------- factored Linear
@dataclass(frozen=True)
class FactoredLinear:
    """A Linear layer whose per-sample logit Jacobian is kept in factored form: ∂f_c/∂W = δ_c ⊗ a and
    ∂f_c/∂b = δ_c, with a the layer's input and δ_c = ∂f_c/∂(layer output). Exact; it turns the per-sample
    weight gradient (out × in per sample and class) into two short vectors, and squared or inner-product sums
    over it into small GEMMs. ``weight``/``bias``: the parameter names when trainable, else None."""

    module: nn.Linear
    weight: str | None
    bias: str | None


def plan_factored(model: nn.Module, params: dict[str, Tensor], x1: Tensor) -> list[FactoredLinear]:
    """The Linear layers that can be factored: a trainable weight or bias, called exactly once per forward on a
    (1, in) input, parameters not shared with another layer. Checked by one dry-run forward on the single
    sample ``x1`` (the model's current mode, no grad)."""
    names = {id(p): n for n, p in model.named_parameters() if n in params}
    calls: dict[int, list] = {}
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    hooks = [m.register_forward_hook(lambda mod, inp, out: calls.setdefault(id(mod), []).append(tuple(inp[0].shape)))
             for m in linears]
    try:
        with torch.no_grad():
            model(x1)
    finally:
        for h in hooks:
            h.remove()
    plan, claimed = [], []
    for m in linears:
        w = names.get(id(m.weight))
        b = names.get(id(m.bias)) if m.bias is not None else None
        shapes = calls.get(id(m), [])
        if (w or b) and len(shapes) == 1 and len(shapes[0]) == 2 and shapes[0][0] == 1:
            plan.append(FactoredLinear(m, w, b))
            claimed += [n for n in (w, b) if n]
    shared = {n for n in claimed if claimed.count(n) > 1}
    return [fl for fl in plan if fl.weight not in shared and fl.bias not in shared]


def probed_logits(model: nn.Module, params: dict[str, Tensor], plan: list[FactoredLinear]):
    """``(rest, probes, fn)``: ``rest`` the trainable parameters not factored (detached), ``probes`` zero vectors
    (one per planned layer, keys "0", "1", ...) and ``fn(p_rest, probes, xi) -> (logits (C,), acts)`` for one
    sample: each planned layer's output gets its probe added (so ∂logits/∂probe = δ) and its input is returned
    in ``acts`` (same keys)."""
    factored = {n for fl in plan for n in (fl.weight, fl.bias) if n}
    rest = {n: p.detach() for n, p in params.items() if n not in factored}
    consts = constants_of(model, set(rest))
    probes = {str(i): torch.zeros(fl.module.out_features, dtype=fl.module.weight.dtype,
                                  device=fl.module.weight.device) for i, fl in enumerate(plan)}

    def fn(p_rest, prb, xi):
        acts: dict[str, Tensor] = {}

        def make(key):
            def hook(mod, inp, out):
                acts[key] = inp[0].squeeze(0)
                return out + prb[key]
            return hook

        handles = [fl.module.register_forward_hook(make(str(i))) for i, fl in enumerate(plan)]
        try:
            out = functional_call(model, (p_rest, consts), (xi.unsqueeze(0),)).squeeze(0)
        finally:
            for h in handles:
                h.remove()
        return out, acts

    return rest, probes, fn
