"""Random probes (residual-knowledge.md §5.1): x' = clip(x + tau * noise, 0, 1), one base noise per copy.

The base noise does not depend on tau, so the audit scales one draw per (sample, draw) by every tau
(common random numbers across tau)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import RandomProbe, _rand, _randn


@dataclass(eq=False)
class Gaussian(RandomProbe):
    """``gaussian`` (paper): x' = clip(x + tau * z, 0, 1), z ~ N(0, I_d) -- exactly
    ``torchattacks.GN(model, std=tau)``. Tau is a per-pixel std: this is *not* an L2 ball,
    ||tau z||_2 ~ tau sqrt(d) (about 0.84 at tau = 0.03 on 28x28 images)."""

    name = "gaussian"
    notes = ("gaussian: tau is a per-pixel std; ||tau*z||_2 ~ tau*sqrt(d), not an L2 ball.",)

    def noise(self, shape, generator, device, dtype):
        return _randn(shape, generator, device, dtype)


@dataclass(eq=False)
class UniformLinf(RandomProbe):
    """``uniform-linf``: delta_j ~ U[-tau, tau] independently per pixel, x' = clip(x + delta, 0, 1).

    **Clipping caveat.** After clipping, x' is not uniform on the L-inf ball: a pixel at a bound
    (e.g. the many exact-0 background pixels of Fashion-MNIST) is left unchanged by about half of its
    draws, and pixels within tau of a bound get a point mass there. The audit reports the fraction of
    clipped coordinates per tau (``clip_fraction``)."""

    name = "uniform-linf"
    notes = (
        "uniform-linf: x' = clip(x + U[-tau,tau]^d, 0, 1) is not uniform on the ball after clipping; "
        "pixels at 0 or 1 (e.g. Fashion-MNIST background) stay unchanged in about half of the draws; "
        "see clip_fraction per tau.",
    )

    def noise(self, shape, generator, device, dtype):
        return _rand(shape, generator, device, dtype).mul_(2.0).sub_(1.0)


@dataclass(eq=False)
class UniformL2(RandomProbe):
    """``uniform-l2``: uniform in the L2 ball of radius tau, delta = tau * u^(1/d) * g/||g||_2 with
    g ~ N(0, I_d), u ~ U(0, 1), d = features per sample; then x' = clip(x + delta, 0, 1).

    The radius law P(||delta|| <= s tau) = s^d needs the 1/d power; the common PGD-start shortcut
    tau*u*g/||g|| (uniform radius) piles mass near the centre and is wrong. For large d the ball is
    practically its sphere (d = 784: 95% of draws have ||delta|| > 0.996 tau)."""

    name = "uniform-l2"
    notes = ("uniform-l2: uniform in the L2 ball before clipping to [0,1].",)

    def noise(self, shape, generator, device, dtype):
        n = shape[0]
        g = _randn(shape, generator, device, torch.float64 if dtype == torch.float64 else torch.float32)
        u = _rand((n,), generator, device, g.dtype)
        flat = g.reshape(n, -1)
        d = flat.shape[1]
        radius = u.pow(1.0 / d)
        unit = flat / flat.norm(dim=1, keepdim=True).clamp_min(torch.finfo(g.dtype).tiny)
        return (unit * radius[:, None]).reshape(shape).to(dtype)
