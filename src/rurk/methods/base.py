"""The contract every unlearning method follows, and the registry that lists them by name.

A method is one module under ``rurk/methods/`` that

1. defines a config dataclass whose defaults are the paper's values (each commented with its source),
   optionally with named presets (``"cifar10"``) that override some defaults;
2. declares its tuning search space (:class:`Param` per searched field, used by `rurk tune`);
3. defines one function ``unlearn(original, data, cfg, seed) -> (model, MethodRecord)`` that never
   mutates ``original``;
4. registers all of them with :func:`register`.

Fine-tuning methods derive their config from :class:`FinetuneConfig` and train through
:func:`rurk.train.run_loop` (the one loop); training-free methods (SSD, CR, Fisher, NTK) are small
self-contained classes.
"""

from __future__ import annotations

import copy
import importlib
import pkgutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from ..config import ConfigError, from_dict, merge, parse_value, to_dict
from ..data.tensordata import TensorData
from ..perturb import PROBES
from ..train import LoopRecord, OptimConfig
from ._calibrate import CalibrationSpec, Calibrator


@dataclass(frozen=True)
class UnlearnData:
    """Everything a method may look at. Methods use only what they need; none sees the Re-train model."""

    retain: TensorData
    forget: TensorData
    num_classes: int
    test: TensorData | None = None
    val: TensorData | None = None
    class_unlearning: bool = False  # the forget set is a whole class (Fisher's special case, SCRUB presets)
    forget_class: int | None = None  # label of the forgotten class (class unlearning)
    pretrained: nn.Module | None = None  # the checkpoint Original was fine-tuned from, if any (NTK's reference)
    loader_seed: int = 7  # paper: data-loader shuffling seed
    calib: TensorData | None = None  # held-out images of the forget set's classes (calibrated stopping)
    cache_dir: Path | None = None  # where what is derived from these sets alone is kept between processes (or None)

    @property
    def train(self) -> TensorData:
        """The full training set S = S_r ∪ S_f."""
        return TensorData.concat(self.retain, self.forget)


@dataclass
class MethodRecord:
    """What a method did: hyperparameters, wall time, steps, per-epoch loss history, divergence."""

    method: str
    config: dict
    seed: int
    wall_s: float = 0.0
    steps: int = 0
    history: dict[str, list[float]] = field(default_factory=dict)
    diverged: bool = False
    diverged_step: int | None = None
    extra: dict = field(default_factory=dict)  # method-specific facts (residual norm, noise scale, ...)
    warnings: list[str] = field(default_factory=list)

    def absorb(self, loop: LoopRecord) -> "MethodRecord":
        """Add one run of the training loop (steps, history, divergence) to this record."""
        self.steps += loop.steps
        for k, v in loop.history.items():
            self.history.setdefault(k, []).extend(v)
        if loop.diverged and not self.diverged:
            self.diverged, self.diverged_step = True, self.steps
        self.extra.setdefault("schedule", loop.schedule)
        self.extra.setdefault("planned_steps", loop.planned_steps)  # the budget (calibrated stopping's upper bound)
        if loop.calibration is not None:
            self.extra["calibration"] = loop.calibration
        return self

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class FinetuneConfig:
    """Optimiser fields shared by every fine-tuning method, with the paper's common settings as defaults (the
    paper's fine-tuning baselines: SGD lr 0.01, momentum 0.9, weight decay 1e-4, 10 epochs, batch 128; spec
    baselines.md §0). Subclasses inherit these and re-declare only the fields whose value differs, with its source."""

    lr: float = 0.01  # paper
    momentum: float = 0.9  # paper
    weight_decay: float = 1e-4  # paper
    epochs: int = 10  # paper
    batch_size: int = 128  # paper
    schedule: str = "constant"  # decision: the paper names no schedule for the baselines (spec §0)
    cosine_t_max: int | None = None  # decision: None = the planned iterations
    max_steps: int | None = None  # decision: no cap
    clip_grad_norm: float | None = None  # paper: none unless stated
    # calibrated stopping (rurk.methods._calibrate; decision, not in the paper): off for every method but RURK
    calibrate: bool = False
    calib_probe: str = "gaussian"  # decision: the audit's probe
    calib_tau: float = 0.03  # decision: the audit's headline τ (0 = the clean rule)
    calib_every: int = 1  # decision: check after every step
    calib_draws: int = 2  # decision: copies per forget image per check
    calib_trace: int = 128  # decision: retain/test samples in the recorded trajectory
    calib_trace_every: int = 4  # decision: the retain/test trace at every 4th check (rurk.methods._calibrate)
    calib_alpha: float = 0.5  # decision: learning-curve exponent of the target's correction (0 = uncorrected)
    calib_proxy: float = 0.65  # decision: slope of the target's difficulty shift (rurk.methods._calibrate; 0 = none)

    #: whether the method has a forget term, so calibrated stopping can act on it (set by such methods' configs)
    forget_term: ClassVar[bool] = False

    def __post_init__(self):
        # lr 0 or 0 epochs leave the model as Original: a row identical to Original's, reported as a method's, without
        # a word (the optimiser's own config allows both; a method is asked to change the model)
        if not 0 < self.lr < float("inf"):  # nan fails both comparisons
            raise ValueError(f"lr = {self.lr!r}: expected a finite number > 0 (lr 0 leaves the model as Original)")
        if not self.epochs >= 1:
            raise ValueError(f"epochs = {self.epochs!r}: expected an integer >= 1 (0 epochs leave the model as "
                             "Original)")
        if self.calibrate and not self.forget_term:
            raise ValueError(f"calibrate = true: {type(self).__name__} has no forget term for the rule to stop on "
                             "(use it with rurk, neggrad_plus, ga, scrub, rl, salun, bad_teacher or jit)")
        self.calibration_spec()  # validates the calib_* fields

    def calibration_spec(self):
        if self.calib_probe not in PROBES:
            raise ValueError(f"calib_probe = {self.calib_probe!r}: expected one of {', '.join(sorted(PROBES))}")
        return CalibrationSpec(probe=self.calib_probe, tau=self.calib_tau, every=self.calib_every,
                               draws=self.calib_draws, trace=self.calib_trace, trace_every=self.calib_trace_every,
                               alpha=self.calib_alpha, proxy=self.calib_proxy)

    def optim(self) -> OptimConfig:
        """The training loop's settings: SGD with this config's values of the fields it shares with
        :class:`OptimConfig` (only FinetuneConfig's own fields, so a subclass field that happens to share a name
        never leaks in); the rest keep OptimConfig's defaults."""
        return OptimConfig(optimizer="sgd", **{name: getattr(self, name) for name in _OPTIM_FIELDS})


#: the OptimConfig fields that FinetuneConfig declares (what :meth:`FinetuneConfig.optim` passes on)
_OPTIM_FIELDS = tuple(f.name for f in fields(FinetuneConfig) if f.name in {g.name for g in fields(OptimConfig)})


@dataclass(frozen=True)
class Param:
    """One searched hyperparameter of a method's tuning space (spec baselines.md §0 "Tuning"): a float
    drawn log-uniformly (``log``) or uniformly (``float``) from [low, high], an integer from [low, high]
    (``int``), or one of ``choices`` (``choice``). :meth:`suggest` asks an Optuna trial for it."""

    kind: str
    low: float | None = None
    high: float | None = None
    choices: tuple = ()

    def __post_init__(self):
        if self.kind not in ("log", "float", "int", "choice"):
            raise ValueError(f"Param kind = {self.kind!r}: expected 'log', 'float', 'int' or 'choice'")
        if self.kind == "choice":
            if not self.choices:
                raise ValueError("Param kind 'choice' needs at least one choice")
        elif not (self.low is not None and self.high is not None and self.low <= self.high
                  and (self.kind != "log" or self.low > 0)):
            raise ValueError(f"Param {self.kind} range [{self.low}, {self.high}]: expected low <= high"
                             + (" and low > 0" if self.kind == "log" else ""))

    def suggest(self, trial, name: str):
        if self.kind == "choice":
            return trial.suggest_categorical(name, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(name, int(self.low), int(self.high))
        return trial.suggest_float(name, float(self.low), float(self.high), log=self.kind == "log")

    def contains(self, value) -> bool:
        """Whether ``value`` is one Optuna could draw (or be given) for this parameter."""
        return value in self.choices if self.kind == "choice" else self.low <= value <= self.high

    def to_json(self) -> dict:
        return {"kind": self.kind, "choices": list(self.choices)} if self.kind == "choice" else \
            {"kind": self.kind, "low": self.low, "high": self.high}


def log_uniform(low: float, high: float) -> Param:
    return Param("log", low, high)


def integer(low: int, high: int) -> Param:
    return Param("int", low, high)


def choice(*values) -> Param:
    return Param("choice", choices=tuple(values))


#: The searched optimiser fields of every fine-tuning method (decision: one factor of 30 in lr on each side
#: of the paper's 0.01, and up to 20 epochs; fmnist5 has 8 retain steps per epoch).
FINETUNE_SPACE: dict[str, Param] = {"lr": log_uniform(1e-3, 0.3), "epochs": integer(1, 20)}


UnlearnFn = Callable[[nn.Module, UnlearnData, object, int], "tuple[nn.Module, MethodRecord]"]


@dataclass(frozen=True)
class MethodSpec:
    name: str
    config_cls: type
    fn: UnlearnFn
    summary: str
    presets: dict[str, dict] = field(default_factory=dict)
    space: dict[str, Param] = field(default_factory=dict)  # `rurk tune`'s search space

    def config(self, preset: str = "small", overrides: dict | None = None):
        """The config for ``preset`` with ``overrides`` applied. "small" is the dataclass defaults; a
        dashed preset such as "cifar10-class" applies "cifar10" and then "cifar10-class" (each only
        where the method defines it)."""
        parts = preset.split("-")
        values: dict = {}
        for i in range(1, len(parts) + 1):
            values = merge(values, self.presets.get("-".join(parts[:i]), {}))
        return from_dict(self.config_cls, merge(values, overrides or {}), prefix=f"methods.{self.name}")

    def defaults(self) -> dict:
        return {f.name: getattr(self.config_cls(), f.name) for f in fields(self.config_cls)}


REGISTRY: dict[str, MethodSpec] = {}


def register(name: str, config_cls: type, summary: str, presets: dict[str, dict] | None = None,
             space: dict[str, Param] | None = None):
    """Decorator: ``@register("gd", GDConfig, "fine-tune on the retain set", space={...})`` on the unlearn
    function. Every key of ``space`` must be a field of ``config_cls``."""

    def deco(fn: UnlearnFn) -> UnlearnFn:
        if name in REGISTRY:
            raise ValueError(f"method {name!r} registered twice")
        known = {f.name for f in fields(config_cls)}
        unknown = sorted(set(space or {}) - known)
        if unknown:
            raise ValueError(f"method {name!r}: search space names {unknown}, which are not fields of {config_cls.__name__}")
        REGISTRY[name] = MethodSpec(name, config_cls, fn, summary, presets or {}, dict(space or {}))
        return fn

    return deco


_LOADED = False


def load_all() -> dict[str, MethodSpec]:
    """Import every method module so that each registers itself.

    It lives here, beside the registry it fills, and imports the method modules by name, so that the package
    ``rurk.methods`` (which re-exports it) and this module never import each other."""
    global _LOADED
    if not _LOADED:
        for info in pkgutil.iter_modules([str(Path(__file__).parent)]):
            if info.name not in ("base",) and not info.name.startswith("_"):
                importlib.import_module(f"{__package__}.{info.name}")
        _LOADED = True
    return REGISTRY


def get_method(name: str) -> MethodSpec:
    load_all()
    if name not in REGISTRY:
        raise ConfigError(f"unknown method {name!r}; registered methods: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


def parse_variant(text: str) -> tuple[str, dict]:
    """A method, or a *variant* of one typed on the command line: ``"rurk:lambda_f=0:tau=0.1"`` ->
    ``("rurk", {"lambda_f": 0, "tau": 0.1})`` (values parsed as TOML); ``preset=NAME`` applies one of the
    method's named presets first (``"rurk:preset=paper"``: the paper's values). The method must exist and every key
    must be a valid setting of its config with a valid value; errors name the variant and the problem."""
    name, *items = text.strip().split(":")
    spec = get_method(name)
    overrides: dict = {}
    for item in items:
        if "=" not in item or not item.split("=", 1)[0]:
            raise ConfigError(f"method variant {text!r}: {item!r} is not KEY=VALUE (e.g. rurk:lambda_f=0:tau=0.1)")
        key, raw = item.split("=", 1)
        if key == "preset":  # a named preset of the method (e.g. rurk:preset=paper), under the other keys
            if raw not in spec.presets:
                raise ConfigError(f"method variant {text!r}: preset = {raw!r}: expected one of "
                                  f"{', '.join(sorted(spec.presets)) or '(none: the method has no presets)'}")
            overrides = merge(spec.presets[raw], overrides)
            continue
        overrides[key] = parse_value(raw)
    try:
        from_dict(spec.config_cls, overrides)
    except ConfigError as e:
        raise ConfigError(f"method variant {text!r}: {e}") from None
    return name, overrides


def calibrator(cfg: FinetuneConfig, data: UnlearnData, seed: int):
    """The calibrated-stopping rule for ``run_loop(..., calibration=...)`` when ``cfg.calibrate`` is on, else
    None (:mod:`rurk.methods._calibrate`). Refused for class unlearning: Re-train's accuracy on a forgotten class is 0,
    which held-out images of the class cannot estimate."""
    if not cfg.calibrate:
        return None
    if data.class_unlearning:
        raise ConfigError("calibrate = true is for sample unlearning: with a whole class forgotten, Re-train's "
                          "accuracy on it is 0 (set calibrate = false)")
    if data.calib is None or len(data.calib) == 0:
        raise ConfigError("calibrate = true needs a calibration set: set forget.calibration (held-out images of "
                          "the forget class) in the scenario, e.g. --set forget.calibration=500")
    return Calibrator(cfg.calibration_spec(), data.forget, data.calib, seed, num_classes=data.num_classes,
                      retain=data.retain, test=data.test, cache_dir=data.cache_dir)


def fresh_copy(model: nn.Module) -> nn.Module:
    """A deep copy to unlearn on (methods never mutate the Original)."""
    return copy.deepcopy(model)


def unlearn(
    name: str,
    original: nn.Module,
    data: UnlearnData,
    seed: int,
    *,
    cfg=None,
    preset: str = "small",
    overrides: dict | None = None,
) -> tuple[nn.Module, MethodRecord]:
    """Run method ``name`` on ``original``: build its config (preset + overrides) unless ``cfg`` is
    given, seed torch, time it, and return the new model and its record."""
    spec = get_method(name)
    cfg = cfg if cfg is not None else spec.config(preset, overrides)
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    model, record = spec.fn(original, data, cfg, seed)
    record.wall_s = time.perf_counter() - t0
    record.config = to_dict(cfg)
    return model, record
