"""From a scenario to the two reference models, cached in the run store.

``prepare(scenario)`` loads the source data and draws the split (index arrays, saved with the run);
``reference_models(...)`` trains — or reuses from the store — the optional pre-trained network,
Original (trained on S) and Re-train (trained on S_r with the same recipe and seed). Each model is
cached under a hash of everything that determines it (data fingerprint, split digest, model, recipe,
seed), so a second run with the same settings trains nothing.
"""

from __future__ import annotations

import copy
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .config import Scenario, to_dict
from .data import Source, Split, SplitData, load_source, make_split
from .methods.base import UnlearnData
from .models import build_model
from .store import Store, cache_key, write_json
from .train import accuracy, fit, prepare_model


@dataclass
class Prepared:
    """A scenario's data: the source, the split (index arrays) and the materialised subsets."""

    scenario: Scenario
    source: Source
    split: Split
    data: SplitData
    cache_dir: Path | None = None  # the store's splits folder (what is derived from the split is kept there)

    @property
    def num_classes(self) -> int:
        return len(self.split.classes)

    @property
    def in_shape(self) -> tuple[int, ...]:
        return tuple(self.data.retain.x.shape[1:])

    @property
    def class_unlearning(self) -> bool:
        return self.scenario.forget.kind == "class"

    def unlearn_data(self, pretrained: nn.Module | None = None) -> UnlearnData:
        return UnlearnData(
            retain=self.data.retain,
            forget=self.data.forget,
            num_classes=self.num_classes,
            test=self.data.test,
            val=self.data.val if len(self.data.val) else None,
            class_unlearning=self.class_unlearning,
            forget_class=self.scenario.forget.forget_class if self.class_unlearning else None,
            pretrained=pretrained,
            loader_seed=self.scenario.seeds.loader,
            calib=self.data.calib,
            cache_dir=self.cache_dir,
        )


def prepare(scenario: Scenario, store: Store | None = None) -> Prepared:
    """Load the scenario's source and draw its split (saved under ``store/splits/`` when given)."""
    d, f = scenario.data, scenario.forget
    kw = {"image_size": d.image_size} if d.image_size else {}
    source = load_source(d.dataset, d.data_dir, **kw)
    split = make_split(
        source,
        classes=d.classes,
        train_per_class=d.train_per_class,
        test_per_class=d.test_per_class,
        val_fraction=d.val_fraction,
        test_fraction=d.test_fraction,
        forget=f.kind,
        forget_class=f.forget_class,
        forget_fraction=f.fraction if f.count is None else None,
        forget_count=f.count,
        forget_file=f.file,
        calib_count=f.calibration,
        seed=scenario.seeds.split,
    )
    if store is not None:
        split.save(store.root / "splits" / f"{split.digest()}.json")
    return Prepared(scenario, source, split, split.data(source), None if store is None else store.root / "splits")


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def normalisation(scenario: Scenario, train_x: torch.Tensor) -> tuple[list[float], list[float]]:
    """The model's in-built normalisation: the scenario's mean/std, or (decision) the per-channel
    statistics of the scenario's training set when unset.

    The statistics enter every reference model's cache key, so they must not depend on how the sum was split:
    torch's float32 reduction changes its last bits with the thread count, which once gave a ``--jobs`` run's
    one-thread workers and its two-thread parent different keys for the same Original ("cell model … is not in
    the store"). They are computed in float64 by numpy (one summation order) and rounded to 6 decimals."""
    m = scenario.model
    if m.mean is not None and m.std is not None:
        return list(m.mean), list(m.std)
    x = train_x.detach().cpu().double().numpy()
    x = x.transpose(1, 0, *range(2, x.ndim)).reshape(x.shape[1], -1) if x.ndim == 4 else x.T
    mean, std = x.mean(axis=1), np.maximum(x.std(axis=1, ddof=1), 1e-3)
    return [round(float(v), 6) for v in mean], [round(float(v), 6) for v in std]


def new_model(scenario: Scenario, num_classes: int, in_shape, mean, std, seed: int, device) -> nn.Module:
    """A freshly initialised model of the scenario's architecture (init seeded by ``seed``)."""
    torch.manual_seed(seed)
    model = build_model(scenario.model.arch, num_classes, in_shape, mean=mean, std=std, width=scenario.model.width)
    return prepare_model(model.to(device))


@dataclass
class References:
    original: nn.Module
    retrain: nn.Module
    pretrained: nn.Module | None
    keys: dict[str, str]
    accuracies: dict[str, dict[str, float]]


def _reference_common(scenario: Scenario, prepared: Prepared, seed: int) -> tuple[list, list, dict]:
    """(mean, std, the key parts shared by every reference model of the seed)."""
    mean, std = normalisation(scenario, prepared.data.train.x)
    common = dict(
        data=to_dict(scenario.data), fingerprint=prepared.source.fingerprint, split=prepared.split.digest(),
        model=to_dict(scenario.model), mean=mean, std=std, seed=seed, loader_seed=scenario.seeds.loader,
    )
    return mean, std, common


def _reference_recipe(kind: str, scenario: Scenario, data: SplitData):
    """(training set, recipe) of Original (S) or Re-train (S_r, same recipe and seed)."""
    if kind == "original":
        return data.train, scenario.train
    if kind == "retrain":
        return data.retain, scenario.retrain_optim()
    raise ValueError(f"reference kind {kind!r}: expected original or retrain")


def reference_keys(scenario: Scenario, prepared: Prepared, seed: int) -> dict[str, str]:
    """The store keys of the seed's reference models — ``pretrained`` (when the scenario pre-trains),
    ``original`` and ``retrain`` — computed without training anything (the keys :func:`reference_models` uses)."""
    _, _, common = _reference_common(scenario, prepared, seed)
    keys, pre_key = {}, None
    if scenario.pretrain.dataset:
        pre_key = keys["pretrained"] = _pretrained_key(scenario, prepared, common)[0]
    for kind in ("original", "retrain"):
        keys[kind] = cache_key(kind=kind, recipe=to_dict(_reference_recipe(kind, scenario, prepared.data)[1]),
                               pretrained=pre_key, **common)
    return keys


def reference_model(kind: str, scenario: Scenario, prepared: Prepared, seed: int, store: Store, *,
                    device: str | torch.device = "auto", progress: bool | None = None,
                    pretrained: tuple[nn.Module | None, str | None] = (None, None),
                    wait: bool = True, log=None) -> tuple[nn.Module | None, str]:
    """Train or reuse one reference model (``kind`` = original or retrain; ``pretrained`` = the
    (network, key) of :func:`pretrained_model` when the scenario pre-trains). Returns (model, key); with
    ``wait=False`` a model another process is training right now is not waited for: (None, key). ``log`` (a
    callable taking one line) hears when a model starts training and when it is done, with its seconds."""
    device = pick_device(device) if isinstance(device, str) else device
    mean, std, common = _reference_common(scenario, prepared, seed)
    train_set, recipe = _reference_recipe(kind, scenario, prepared.data)
    pre_model, pre_key = pretrained
    key = cache_key(kind=kind, recipe=to_dict(recipe), pretrained=pre_key, **common)
    if pre_model is not None:
        model = copy.deepcopy(pre_model)
    else:
        model = new_model(scenario, prepared.num_classes, prepared.in_shape, mean, std, seed, device)
    with store.claim("model", key, wait=wait) as held:  # a concurrent run on the same store waits, then loads ours
        if not held:
            return None, key
        if store.load_model(key, model) is None:
            with _announced(log, seed, kind):
                _train_reference(kind, key, model, train_set, recipe, scenario, prepared, seed, store, mean, std,
                                 progress)
    return model.eval(), key


@contextmanager
def _announced(log, seed: int, kind: str):
    """One line when a reference model starts training and one when it is done (with its wall time), through ``log``:
    on a busy machine the demo printed nothing for minutes while its references trained."""
    if log is None:
        yield
        return
    log(f"  seed {seed} {kind}: training")
    t0 = time.perf_counter()
    yield
    log(f"  seed {seed} {kind}: trained in {time.perf_counter() - t0:.1f} s")


def _train_reference(kind, key, model, train_set, recipe, scenario, prepared, seed, store, mean, std, progress):
    rec = fit(model, train_set, recipe, seed, loader_seed=scenario.seeds.loader,
              desc=f"{kind} seed {seed}", progress=progress)
    if rec.diverged:
        raise RuntimeError(f"{kind} training diverged at step {rec.diverged_step}; lower train.lr")
    acc = _accuracies(model, prepared.data)
    store.save_model(key, model, {"kind": kind, "scenario": scenario.name, "seed": seed,
                                  "arch": scenario.model.arch, "num_classes": prepared.num_classes,
                                  "in_shape": list(prepared.in_shape), "mean": mean, "std": std,
                                  "recipe": to_dict(recipe), "split": prepared.split.digest(),
                                  "accuracy": acc, "train": rec.to_json()})
    store.put("model", key, scenario=scenario.name, seed=seed, config=to_dict(recipe),
              metrics=acc, timings={"wall_s": rec.wall_s, "steps": rec.steps})


def pretrained_model(scenario: Scenario, prepared: Prepared, seed: int, store: Store, *,
                     device: str | torch.device = "auto", progress: bool | None = None,
                     log=None) -> tuple[nn.Module, str]:
    """Train or reuse the scenario's pre-trained network (with its fresh head); (model, key)."""
    device = pick_device(device) if isinstance(device, str) else device
    mean, std, common = _reference_common(scenario, prepared, seed)
    return _pretrained(scenario, prepared, seed, store, device, mean, std, common, progress, log)


def reference_models(
    scenario: Scenario,
    prepared: Prepared,
    seed: int,
    store: Store,
    *,
    device: str | torch.device = "auto",
    progress: bool | None = None,
    log=None,
) -> References:
    """Train or reuse the pre-trained network (if the scenario has one), Original and Re-train (``log``: see
    :func:`reference_model`)."""
    device = pick_device(device) if isinstance(device, str) else device
    pretrained, pre_key = None, None
    if scenario.pretrain.dataset:
        pretrained, pre_key = pretrained_model(scenario, prepared, seed, store, device=device, progress=progress,
                                               log=log)
    kw = dict(device=device, progress=progress, pretrained=(pretrained, pre_key), log=log)
    original, ok = reference_model("original", scenario, prepared, seed, store, **kw)
    retrain, rk = reference_model("retrain", scenario, prepared, seed, store, **kw)
    keys = {"original": ok, "retrain": rk}
    if pre_key:
        keys["pretrained"] = pre_key
    accs = {k: store.load_meta(v)["accuracy"] for k, v in keys.items() if k != "pretrained"}
    write_json(store.root / "splits" / f"{prepared.split.digest()}.keys-{seed}.json", keys)
    return References(original, retrain, pretrained, keys, accs)


def _accuracies(model: nn.Module, data: SplitData) -> dict[str, float]:
    return {
        "retain": accuracy(model, data.retain),
        "forget": accuracy(model, data.forget),
        "test": accuracy(model, data.test),
    }


def _pretrained(scenario, prepared, seed, store, device, mean, std, common, progress, log=None):
    """Pre-train on the whole pre-training source, then give the network a fresh head sized for the
    scenario's classes (Small CIFAR-5 protocol). ``exclude_forget`` removes S_f from pre-training
    when the pre-training source is the scenario's own source."""
    pre = scenario.pretrain
    key, source = _pretrained_key(scenario, prepared, common)
    train = source.train
    if pre.exclude_forget and pre.dataset == scenario.data.dataset:
        keep = ~torch.isin(train.index, prepared.data.forget.index)
        train = train.subset(torch.nonzero(keep).squeeze(1))
    n_classes = source.num_classes
    model = new_model(scenario, n_classes, prepared.in_shape, mean, std, seed, device)
    if store.load_model(key, model) is None:
        with _announced(log, seed, "pretrained"):
            rec = fit(model, train, pre.optim, seed, loader_seed=scenario.seeds.loader,
                      desc=f"pretrain seed {seed}", progress=progress)
        store.save_model(key, model, {"kind": "pretrained", "scenario": scenario.name, "seed": seed,
                                      "train": rec.to_json(), "num_classes": n_classes})
        store.put("model", key, scenario=scenario.name, seed=seed, config=to_dict(pre),
                  timings={"wall_s": rec.wall_s, "steps": rec.steps})
    torch.manual_seed(seed + 1)
    model.head = nn.Linear(model.head.in_features, prepared.num_classes).to(device)
    return model.eval(), key


def _pretrained_key(scenario: Scenario, prepared: Prepared, common: dict) -> tuple[str, Source]:
    """(the pre-trained network's store key, its pre-training source)."""
    pre = scenario.pretrain
    source = prepared.source if pre.dataset == scenario.data.dataset else load_source(pre.dataset, scenario.data.data_dir)
    return cache_key(kind="pretrained", pretrain=to_dict(pre), source=source.fingerprint, **common), source


def load_run_model(store: Store, key: str, scenario: Scenario, prepared: Prepared, device="cpu") -> nn.Module:
    """Rebuild the architecture from the scenario and load checkpoint ``key`` from the store."""
    meta = store.load_meta(key)
    if meta is None:
        raise FileNotFoundError(f"no complete checkpoint {key!r} under {Path(store.root) / 'models'}")
    model = new_model(scenario, meta.get("num_classes", prepared.num_classes), prepared.in_shape,
                      meta.get("mean"), meta.get("std"), 0, pick_device(device) if isinstance(device, str) else device)
    store.load_model(key, model)
    return model.eval()
