"""The settings of a residual-knowledge audit (:class:`AuditSpec`), validated once, and the memory and batch
sizes they imply."""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from ..config import PAPER_TAUS
from ..perturb import CRAFT_ON, Probe, make_probe

DEFAULT_TAUS = PAPER_TAUS  # the paper's curve: linspace(0, 8/255, 11)
#: Samples per noise block. Part of the noise definition: changing it changes the draws.
DEFAULT_BLOCK_SIZE = 16
#: Set-level fields of every tau (spec §3), in report order.


def audit_memory(spec: "AuditSpec", n: int, sample_shape: Sequence[int]) -> int:
    """Bytes an audit of ``n`` forget samples of ``sample_shape`` holds at once, at least: one group of noise blocks
    — ``min(n, block_size)`` samples x ``draws`` copies, held as the copies, their noise and the perturbed batch
    being built (float32, and a spare for the clamp) — plus the reference model's predictions on every copy at
    every tau, which the rows of a seed share (int64)."""
    pixels = math.prod(int(d) for d in sample_shape)
    copies = min(int(n), int(spec.block_size)) * int(spec.draws)
    return 4 * copies * pixels * 4 + int(n) * int(spec.draws) * len(spec.taus) * 8


def machine_memory() -> int | None:
    """This machine's physical memory in bytes (None where the system does not say)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def check_audit_memory(spec: "AuditSpec", n: int, sample_shape: Sequence[int], what: str = "--draws") -> None:
    """Refuse (ValueError, one line naming ``what``) an audit whose copies cannot fit this machine's memory:
    ``--draws 10000000`` on digits5 asked for 160 GB and died of MemoryError once Original and Re-train were
    trained. Called as soon as the forget set's size and image shape are known, before any model is trained."""
    need, have = audit_memory(spec, n, sample_shape), machine_memory()
    if have is not None and need > have:
        shape = "x".join(str(int(d)) for d in sample_shape)
        raise ValueError(f"{what} = {spec.draws}: expected fewer copies: the audit of {n} forget samples of shape "
                         f"{shape} at {len(spec.taus)} taus needs about {need / 1e9:.1f} GB at once ({spec.draws} "
                         f"copies of min({n}, {spec.block_size}) samples, 4 float32 buffers, and the reference's "
                         f"predictions on every copy), this machine has {have / 1e9:.1f} GB")


def default_batch_size(device, adversarial: bool = False) -> int:
    """Images per forward pass. CPU: 64 -- small CNNs on 1-2 CPU threads run at the same speed per image from
    32 to 128 and fall off a cliff (1.5-2x slower) once a batch's activations leave the cache, at 192 and
    beyond on a 2-core EPYC with SmallCNN on 28x28; 64 keeps a margin for larger inputs and for caches shared
    with other jobs. CUDA: 4096 (1024 for attacks, which also keep activations for the backward pass). Other
    accelerators: 1024. The batch size never changes the perturbations (they are drawn per sample block)."""
    dev = torch.device(device)
    if dev.type == "cpu":
        return 64
    if dev.type == "cuda":
        return 1024 if adversarial else 4096
    return 1024


# ==================================================================================================
# statistics




@dataclass(frozen=True)
class AuditSpec:
    """The resolved settings of one residual-knowledge audit: everything that determines its numbers besides
    the two models, the forget samples and the noise seed. Built once — by :func:`audit_spec` from a scenario's
    ``[audit]`` table plus command-line or API overrides — and used alike by `rurk audit`, `rurk run` and
    :func:`residual_knowledge`; :meth:`key` is the audit cell's cache key. Every field is validated here, so a
    bad value is refused before any model is trained or evaluated."""

    probe: str | Probe = "gaussian"  # a registry name (with probe_params) or a Probe instance
    probe_params: dict = field(default_factory=dict)
    taus: tuple[float, ...] = DEFAULT_TAUS
    draws: int = 100  # c, perturbed copies per sample and tau
    bootstrap: int = 1000  # B resamples (0: no intervals)
    bootstrap_seed: int | None = None  # None: the noise seed
    max_forget: int | None = None  # audit a seeded subset of this many forget samples
    noise_seed: int | None = None  # None: the run seed
    craft_on: str | None = None  # attacks only; None: the probe's default
    block_size: int = DEFAULT_BLOCK_SIZE
    bf16: bool = False
    tau0_shortcut: bool = True

    def __post_init__(self):
        taus = self.taus
        try:
            taus = tuple(float(t) for t in taus)
        except (TypeError, ValueError):
            raise ValueError(f"audit.taus = {self.taus!r}: expected a list of numbers") from None
        if not taus or any(not math.isfinite(t) or t < 0 for t in taus):
            raise ValueError(f"audit.taus = {list(taus)}: expected a non-empty list of finite values >= 0")
        object.__setattr__(self, "taus", taus)
        object.__setattr__(self, "probe_params", dict(self.probe_params or {}))
        for name, ok, expected in (
            ("draws", _is_int(self.draws) and self.draws >= 1, "an integer >= 1"),
            ("bootstrap", _is_int(self.bootstrap) and self.bootstrap >= 0, "an integer >= 0"),
            ("block_size", _is_int(self.block_size) and self.block_size >= 1, "an integer >= 1"),
            ("max_forget", self.max_forget is None or (_is_int(self.max_forget) and self.max_forget >= 1),
             "an integer >= 1 or unset"),
            ("craft_on", self.craft_on is None or self.craft_on in CRAFT_ON, f"one of {', '.join(CRAFT_ON)} or unset"),
        ):
            if not ok:
                raise ValueError(f"audit.{name} = {getattr(self, name)!r}: expected {expected}")
        self.make_probe()  # unknown probe names and bad probe parameters fail here, naming the value

    def make_probe(self) -> Probe:
        if isinstance(self.probe, Probe):
            if self.probe_params:
                raise ValueError("probe_params cannot be combined with a Probe instance")
            return self.probe
        try:
            return make_probe(self.probe, **self.probe_params)
        except TypeError as e:
            raise ValueError(f"audit.probe_params = {self.probe_params!r} for probe {self.probe!r}: {e}") from None

    def key(self) -> dict[str, Any]:
        """A JSON-able dict of every field (the audit cell's cache key)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["taus"] = list(self.taus)
        if isinstance(self.probe, Probe):
            out["probe"], out["probe_params"] = self.probe.name, dict(self.probe.params)
        return out


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def audit_spec(base=None, **overrides) -> AuditSpec:
    """The :class:`AuditSpec` from a scenario's ``[audit]`` table (a :class:`rurk.config.AuditConfig`, or
    None for the defaults) with ``overrides`` (None values ignored) — the one place CLI and API settings meet
    the scenario's. The table supplies every field an override leaves None, its ``noise_seed`` included; its
    ``probe_params`` only while the probe is the table's (another probe's parameters would not fit), and
    ``probe_params`` given as an override add to them."""
    values: dict[str, Any] = {}
    if base is not None:
        values.update(probe=base.probe, taus=tuple(base.taus), draws=base.draws, bootstrap=base.bootstrap,
                      max_forget=base.max_forget, noise_seed=base.noise_seed)
        # the table's probe_params are its probe's parameters: they apply while the probe is the table's, and
        # overriding probe_params add to them (--probe-set)
        if overrides.get("probe") in (None, base.probe):
            values["probe_params"] = {**base.probe_params, **(overrides.pop("probe_params", None) or {})}
    values.update({k: v for k, v in overrides.items() if v is not None})
    return AuditSpec(**values)
