"""Typed configuration: scenarios are TOML files loaded into frozen dataclasses.

- :func:`from_dict` builds any (nested) dataclass from a plain dict, rejecting unknown keys and wrong
  types with an error that names the key (``train.epochs``), so a typo never passes silently.
- :func:`parse_overrides` turns CLI ``--set a.b=value`` strings into a nested dict (values parsed as
  TOML, so ``--set train.lr=0.1`` is a float and ``--set data.classes=[0,1]`` a list).
- :func:`load_scenario` reads a shipped scenario by name (``rurk/scenarios/*.toml``) or a path.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

import numpy as np

from .train import OptimConfig

#: The paper's residual-knowledge curve, linspace(0, 8/255, 11) in pixel units: the one tau grid constant
#: (the audit's default and every scenario's unless its [audit] table says otherwise).
PAPER_TAUS: tuple[float, ...] = tuple(float(t) for t in np.linspace(0.0, 8 / 255, 11))


class ConfigError(ValueError):
    """A configuration value is unknown, of the wrong type or out of range; the message names the key."""


# ---------------------------------------------------------------------------------------------- generic
def _check_type(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        for arm in typing.get_args(tp):
            try:
                return _check_type(value, arm, key)
            except ConfigError:
                pass
        raise ConfigError(f"{key} = {value!r}: expected {_type_name(tp)}")
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"{key} = {value!r}: expected nothing (unset)")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key} = {value!r}: expected a table of settings")
        return from_dict(tp, value, prefix=key)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} = {value!r}: expected {_type_name(tp)}")
        args = typing.get_args(tp)
        inner = args[0] if args else Any
        items = [_check_type(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} = {value!r}: expected a table")
        return dict(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} = {value!r}: expected a number")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} = {value!r}: expected an integer")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} = {value!r}: expected true or false")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} = {value!r}: expected a string")
        return value
    return value


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "unset"
    return {float: "a number", int: "an integer", bool: "true/false", str: "a string"}.get(tp, str(tp))


def from_dict(cls: type, d: dict, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from ``d``; unknown keys and wrong types raise :class:`ConfigError`."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else k
        if k not in names:
            raise ConfigError(f"unknown setting {key!r}; known settings here: {', '.join(sorted(names))}")
        kwargs[k] = _check_type(v, hints[k], key)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:  # __post_init__ validation
        raise ConfigError(f"{prefix or cls.__name__}: {e}") from None


def to_dict(obj: Any) -> Any:
    """Dataclass -> plain JSON-able dict (tuples become lists)."""
    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj


def merge(base: dict, over: dict) -> dict:
    """Recursive dict merge (``over`` wins)."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def parse_value(raw: str) -> Any:
    """A command-line value parsed as TOML (``0.1`` a float, ``[0,1]`` a list, ``true`` a bool); anything
    that is not TOML is a bare string (``resnet18``)."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def parse_overrides(items: list[str] | None) -> dict:
    """``["train.epochs=5", "method.lr=0.1"]`` -> ``{"train": {"epochs": 5}, "method": {"lr": 0.1}}``."""
    out: dict = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. train.epochs=5")
        key, raw = item.split("=", 1)
        value = parse_value(raw)
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return out


# ---------------------------------------------------------------------------------------------- scenario
@dataclass(frozen=True)
class DataConfig:
    dataset: str = "digits"  # a rurk.data source name
    data_dir: str | None = None  # user directory (CIFAR, ImageNet; optional for Fashion-MNIST)
    classes: int | list[int] | None = None  # int k = first k classes; None = all
    train_per_class: int | None = None
    test_per_class: int | None = None
    val_fraction: float = 0.0
    test_fraction: float | None = None  # for sources without an official test split (digits, iris)
    image_size: int | None = None  # imagefolder only


@dataclass(frozen=True)
class ForgetConfig:
    kind: str = "sample"  # "sample" | "class" | "file"
    forget_class: int = 0  # index among the kept classes
    fraction: float | None = 0.5  # paper: 50% of class 0
    count: int | None = None
    file: str | None = None
    calibration: int = 0  # decision: held-out images of the forget class for calibrated stopping (rurk.methods._calibrate)

    def __post_init__(self):
        if self.kind not in ("sample", "class", "file"):
            raise ValueError(f"forget.kind = {self.kind!r}: expected 'sample', 'class' or 'file'")
        if self.calibration < 0 or (self.calibration and self.kind != "sample"):
            raise ValueError(f"forget.calibration = {self.calibration!r}: expected an integer >= 0, and 0 unless "
                             "forget.kind = 'sample'")


@dataclass(frozen=True)
class ModelConfig:
    arch: str = "mlp"
    width: float = 1.0
    mean: list[float] | None = None  # per-channel normalisation inside the model
    std: list[float] | None = None


@dataclass(frozen=True)
class PretrainConfig:
    """Optional pre-training on a whole source before Original/Re-train are fine-tuned (Small CIFAR-5)."""

    dataset: str = ""  # "" = no pre-training
    optim: OptimConfig = field(default_factory=OptimConfig)
    exclude_forget: bool = False  # spec: `pretrain_excludes_forget` (default off, for parity)


@dataclass(frozen=True)
class SeedConfig:
    run: list[int] = field(default_factory=lambda: [131, 42, 7])  # paper
    loader: int = 7  # paper
    split: int = 0  # decision


#: The most bootstrap resamples an audit takes: its (B, n) resample matrix is B x n int64 (100,000 x 100 forget
#: samples = 80 MB); 10^8 died of MemoryError after training. 1,000 (the default) already fixes a 95% interval to
#: a few tenths of a percent.
MAX_BOOTSTRAP = 100_000
#: The most perturbed copies per forget sample an audit takes. An accuracy over c copies has a standard error of at
#: most 0.5/sqrt(c), 0.0016 at 100,000 (the paper uses 100), far inside the bootstrap interval over the samples; and
#: the copies of one block of 16 samples already take 16 x 100,000 x 784 x 4 bytes = 5 GB per buffer on 28x28
#: images (rurk.audit.spec.audit_memory; the forget set's own bound is checked once its size is known). 10^7 died of
#: MemoryError after Original and Re-train were trained.
MAX_DRAWS = 100_000


@dataclass(frozen=True)
class AuditConfig:
    """A scenario's ``[audit]`` table: the defaults of every audit of the scenario (``rurk audit``/``run``/``demo``
    flags override them one by one; ``probe_params`` apply to the scenario's own ``probe`` only)."""

    probe: str = "gaussian"
    probe_params: dict = field(default_factory=dict)  # e.g. {steps = 20} for probe = "pgd"
    taus: list[float] = field(default_factory=lambda: list(PAPER_TAUS))
    draws: int = 100
    bootstrap: int = 1000
    noise_seed: int | None = None  # None: the run seed
    max_forget: int | None = None

    def __post_init__(self):
        for name, ok, expected in (
                ("bootstrap", 0 <= self.bootstrap <= MAX_BOOTSTRAP, f"an integer from 0 to {MAX_BOOTSTRAP}"),
                ("draws", 1 <= self.draws <= MAX_DRAWS, f"an integer from 1 to {MAX_DRAWS}"),
                ("noise_seed", self.noise_seed is None or self.noise_seed >= 0, "an integer >= 0 or unset")):
            if not ok:
                raise ConfigError(f"audit.{name} = {getattr(self, name)!r}: expected {expected}")


@dataclass(frozen=True)
class RelearnConfig:
    """The re-learn-time metric (spec evaluation.md §1): fine-tune a copy on S_f with SGD until its loss is back to
    (1 + eta) x Original's."""

    lr: float = 0.01  # paper
    momentum: float = 0.9  # paper
    weight_decay: float = 0.0  # decision
    batch_size: int = 128  # paper
    max_epochs: int = 30  # paper (cap; beyond it the value is censored, ">30")
    eta: float = 0.05  # paper

    def __post_init__(self):
        for name, ok, expected in (("lr", math.isfinite(self.lr) and self.lr >= 0, "a finite number >= 0"), ("batch_size", self.batch_size >= 1, "an integer >= 1"),
                                   ("max_epochs", self.max_epochs >= 0, "an integer >= 0"), ("eta", self.eta >= 0, "a number >= 0")):
            if not ok:
                raise ValueError(f"relearn.{name} = {getattr(self, name)!r}: expected {expected}")


@dataclass(frozen=True)
class Scenario:
    name: str = "unnamed"
    description: str = ""
    preset: str = "small"  # method preset family ("small" | "cifar10")
    data: DataConfig = field(default_factory=DataConfig)
    forget: ForgetConfig = field(default_factory=ForgetConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    train: OptimConfig = field(default_factory=OptimConfig)  # Original recipe
    retrain: dict = field(default_factory=dict)  # overrides of `train` for Re-train (e.g. more epochs)
    seeds: SeedConfig = field(default_factory=SeedConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
    relearn: RelearnConfig = field(default_factory=RelearnConfig)
    methods: dict = field(default_factory=dict)  # per-method config overrides: {name: {key: value}}
    run_methods: list[str] | None = None  # methods `rurk run` uses by default (None = every registered one)
    tuned: str | None = None  # TOML of tuned per-method values (from `rurk tune`), relative to the package

    def __post_init__(self):
        # the name is a folder under --out (OUT/NAME/ holds the report): "../x" or "a/b" wrote outside --out
        if not _plain_name(self.name):
            raise ConfigError(f"name = {self.name!r}: expected a plain file-name component (no '/' or '\\', no "
                              "leading '.', no surrounding spaces): it names the report's folder under --out")
        # OptimConfig allows 0 epochs and lr 0 (the re-learn metric's loop may) but Original and Re-train are trained
        # from scratch (or from the pre-trained model): 0 epochs gave untrained references and a report of chance
        # numbers, lr 0 the same after a whole training run
        recipes = [("train", self.train), ("retrain", self.retrain_optim())]
        if self.pretrain.dataset:
            recipes.append(("pretrain.optim", self.pretrain.optim))
        for key, recipe in recipes:
            if recipe.epochs < 1:
                raise ConfigError(f"{key}.epochs = {recipe.epochs}: expected an integer >= 1 (the references "
                                  "are trained for it)")
            if not recipe.lr > 0:
                raise ConfigError(f"{key}.lr = {recipe.lr!r}: expected a finite number > 0 (the references are "
                                  "trained with it)")

    def retrain_optim(self) -> OptimConfig:
        return from_dict(OptimConfig, merge(to_dict(self.train), self.retrain), prefix="retrain")


def _plain_name(name: str) -> bool:
    """Whether ``name`` is one plain path component: not empty, no separator, not hidden or a parent reference."""
    return (bool(name) and name == name.strip() and not name.startswith(".") and "/" not in name
            and "\\" not in name and "\0" not in name and len(name) <= 200)


def read_toml(path: str | Path, what: str) -> dict:
    """A TOML file as a dict; a syntax error (or a file that cannot be read as one) is one line naming the file and
    the line: ``<what> = '<path>': expected a TOML file, but line L, column C: ...``."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{what} = {str(path)!r}: expected a TOML file (it is a directory)")
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        msg = str(e)
        where = "but "
        if m := re.search(r"\(at line (\d+), column (\d+)\)$", msg):
            where, msg = f"but at line {m.group(1)}, column {m.group(2)}: ", msg[: m.start()].rstrip()
        elif m := re.search(r"\(at end of document\)$", msg):
            where, msg = "but at the end of the file: ", msg[: m.start()].rstrip()
        raise ConfigError(f"{what} = {str(path)!r}: expected a TOML file, {where}{msg}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{what} = {str(path)!r}: expected a TOML file, but it is not UTF-8 text ({e.reason} at "
                          f"byte {e.start})") from None


def scenario_dir() -> Path:
    return Path(str(resources.files("rurk") / "scenarios"))


def list_scenarios() -> dict[str, str]:
    """Shipped scenario names -> one-line descriptions."""
    out = {}
    for path in sorted(scenario_dir().glob("*.toml")):
        with open(path, "rb") as f:
            out[path.stem] = tomllib.load(f).get("description", "")
    return out


def load_scenario(name_or_path: str | Path, overrides: dict | None = None) -> Scenario:
    """Load a shipped scenario by name, or a TOML file by path, applying ``overrides`` (nested dict)."""
    path = Path(name_or_path)
    if path.is_dir():  # `rurk run /tmp/somedir`
        raise ConfigError(f"scenario = {str(name_or_path)!r}: expected a shipped scenario's name or a .toml file (it is "
                          "a directory)")
    if not (path.suffix == ".toml" and path.exists()):
        path = scenario_dir() / f"{name_or_path}.toml"
        if not path.exists():
            known = ", ".join(list_scenarios())
            raise ConfigError(f"unknown scenario {str(name_or_path)!r}; shipped scenarios: {known} (or pass a .toml path)")
    raw = read_toml(path, "scenario")
    raw.setdefault("name", path.stem)
    return from_dict(Scenario, merge(raw, overrides or {}))
