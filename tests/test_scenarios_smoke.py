"""Smoke runs of the paper's GPU scenarios on fake CIFAR-10 batches, shrunk with --set (the `--limit` path):
the whole recipe (pre-training + fine-tuning, class unlearning, VGG-11) runs end to end on a CPU."""

import json
import pickle

import numpy as np
import pytest

from rurk.cli import main
from rurk.store import Store


def write_fake_cifar10(d, per_batch=40, seed=0):
    rng = np.random.default_rng(seed)
    d.mkdir(parents=True, exist_ok=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        batch = {"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                 "labels": [i % 10 for i in range(per_batch)]}
        (d / name).write_bytes(pickle.dumps(batch, protocol=4))
    (d / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}))


SHRINK = ["model.width=0.125", "train.epochs=1", "train.batch_size=16", "audit.bootstrap=0"]


@pytest.mark.parametrize("scenario, extra, methods", [
    ("cifar5", ["data.train_per_class=8", "data.test_per_class=4", "forget.count=4", "forget.calibration=2", "retrain.epochs=1",
                "pretrain.optim.epochs=1", "pretrain.optim.batch_size=32"], "gd,rurk,ntk"),
    ("cifar5-vgg11", ["data.train_per_class=8", "data.test_per_class=4", "forget.count=4", "forget.calibration=2", "retrain.epochs=1",
                      "pretrain.optim.epochs=1", "pretrain.optim.batch_size=32"], "rurk"),
    ("cifar10-class", ["data.val_fraction=0.2"], "euk"),
])
def test_paper_scenarios_run_on_fake_cifar(tmp_path, scenario, extra, methods):
    data = tmp_path / "cifar"
    write_fake_cifar10(data)
    sets = [a for s in SHRINK + extra for a in ("--set", s)]
    argv = ["run", scenario, "--data-dir", str(data), "--out", str(tmp_path / "runs"), "--seeds", "131",
            "--methods", methods, "--draws", "2", "--taus", "0,0.03", "--no-relearn", "--quiet", "--device", "cpu",
            *sets]
    assert main(argv) == 0
    summary = json.loads((tmp_path / "runs" / scenario / "summary.json").read_text())
    for m in methods.split(","):
        assert summary["methods"][m]["n_seeds"] == 1, summary["methods"][m]
    if scenario.startswith("cifar5"):  # pre-trained once, then Original and Re-train fine-tuned from it
        assert len(Store(tmp_path / "runs").records("model")) == 3
