"""Config validation, overrides, the run store's atomic checkpoints and records."""

import json
import os

import pytest
import torch
from torch import nn

from rurk import machine
from rurk.config import ConfigError, list_scenarios, load_scenario, parse_overrides
from rurk.store import Store, cache_key, load_weights, read_meta, save_weights


def test_every_shipped_scenario_loads():
    names = list_scenarios()
    assert {"fmnist5", "digits5", "cifar5", "cifar10", "imagenet100", "fmnist5-class"} <= set(names)
    for name in names:
        s = load_scenario(name)
        assert s.name == name and s.description


def test_overrides_are_typed_and_nested():
    over = parse_overrides(["train.epochs=5", "train.lr=0.5", "model.arch=resnet18", "data.classes=[0, 3]"])
    assert over == {"train": {"epochs": 5, "lr": 0.5}, "model": {"arch": "resnet18"}, "data": {"classes": [0, 3]}}
    s = load_scenario("digits5", over)
    assert s.train.epochs == 5 and s.train.lr == 0.5 and s.model.arch == "resnet18" and s.data.classes == [0, 3]


@pytest.mark.parametrize(
    "override, message",
    [
        (["train.epoch=5"], "train.epoch"),  # unknown key, named with its path
        (["train.epochs=five"], "train.epochs"),  # wrong type
        (["train.epochs=1.5"], "train.epochs"),
        (["train.schedule=linear"], "schedule"),  # validated value
        (["forget.kind=everything"], "forget.kind"),
        (["nosuchsection.x=1"], "nosuchsection"),
        (["train.epochs"], "KEY=VALUE"),
    ],
)
def test_bad_config_is_rejected_naming_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_scenario("digits5", parse_overrides(override))


def test_unknown_scenario_lists_the_shipped_ones():
    with pytest.raises(ConfigError, match="fmnist5"):
        load_scenario("nope")


def test_retrain_recipe_inherits_and_overrides():
    s = load_scenario("cifar5")
    assert s.retrain_optim().epochs == 100 and s.train.epochs == 25 and s.retrain_optim().lr == s.train.lr


def test_cache_key_is_stable_and_sensitive():
    a = cache_key(kind="original", seed=1, recipe={"lr": 0.1})
    assert a == cache_key(recipe={"lr": 0.1}, seed=1, kind="original")  # order-free
    assert a != cache_key(kind="original", seed=2, recipe={"lr": 0.1})
    assert a != cache_key(kind="retrain", seed=1, recipe={"lr": 0.1})


def test_checkpoint_round_trip_and_strict_loading(tmp_path):
    store = Store(tmp_path)
    m = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    m[1].running_mean.fill_(0.5)
    store.save_model("k1", m, {"kind": "x"})
    m2 = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    meta = store.load_model("k1", m2)
    assert meta["kind"] == "x"
    for (n1, t1), (n2, t2) in zip(m.state_dict().items(), m2.state_dict().items()):
        assert n1 == n2 and torch.equal(t1, t2)
    with pytest.raises(ValueError, match="does not match"):
        load_weights(nn.Linear(3, 4), store.model_dir("k1") / "model.safetensors")
    assert store.load_model("absent", m2) is None


def test_half_written_or_corrupted_checkpoints_are_never_trusted(tmp_path):
    m = nn.Linear(2, 2)
    path = tmp_path / "m.safetensors"
    # killed after the weights but before the metadata: no marker -> not trusted
    save_weights(m, path, {})
    os.remove(path.with_suffix(".json"))
    assert read_meta(path) is None
    # weights replaced after the marker was written (e.g. a later run killed mid-write): hash mismatch
    save_weights(m, path, {})
    with open(path, "r+b") as f:
        f.seek(-4, 2)
        f.write(b"\x00\x00\x00\x01")
    assert read_meta(path) is None
    # a truncated marker
    save_weights(m, path, {})
    path.with_suffix(".json").write_text('{"sha256": ')
    assert read_meta(path) is None
    save_weights(m, path, {"ok": 1})
    assert read_meta(path)["ok"] == 1
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_records_round_trip(tmp_path):
    store = Store(tmp_path)
    store.put("cell", "a", scenario="s", seed=1, config={"x": 1}, metrics={"acc": 0.5}, timings={"wall_s": 2})
    rec = store.get("cell", "a")
    assert rec["metrics"] == {"acc": 0.5} and rec["seed"] == 1 and rec["config"] == {"x": 1}
    assert store.get("cell", "b") is None
    # persisted, with torch's thread count and the machine's digest at put time unless the caller names them (a
    # worker's record keeps its own)
    here = machine.digest(machine.machine())
    assert Store(tmp_path).get("cell", "a")["timings"] == {"wall_s": 2, "threads": torch.get_num_threads(),
                                                            "machine": here}
    store.put("worker", "w", timings={"wall_s": 1, "threads": 7, "machine": "elsewhere"})
    assert store.get("worker", "w")["timings"] == {"wall_s": 1, "threads": 7, "machine": "elsewhere"}
    assert [r["key"] for r in store.records("cell")] == ["a"]
    assert json.loads(json.dumps(rec))  # JSON-able
