"""The shared training loop: data path, schedule, clipping, divergence, determinism, fitting."""

import math

import pytest
import torch
from torch import nn

from rurk.data import TensorData, load_source, make_split
from rurk.models import build_model
from rurk.train import BatchStream, OptimConfig, accuracy, crop_flip, fit, lr_at, run_loop
from rurk.torchutil import predict


def _toy(n=200, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 1, d, generator=g)
    y = (x.flatten(1).sum(1) > d / 2).long()
    return TensorData(x, y, torch.arange(n))


def test_batchstream_epoch_covers_every_row_once_and_is_seeded():
    data = _toy(103)
    s1, s2 = BatchStream(data, 10, seed=3), BatchStream(data, 10, seed=3)
    rows1 = torch.cat([x.flatten(1) for x, _ in s1.epoch()])
    rows2 = torch.cat([x.flatten(1) for x, _ in s2.epoch()])
    assert len(s1) == 11 and rows1.shape[0] == 103  # no drop_last
    assert torch.equal(rows1, rows2)
    assert torch.equal(rows1.flatten().sort().values, data.x.flatten().sort().values)  # a permutation
    assert not torch.equal(rows1, data.x.flatten(1))  # shuffled


def test_batchstream_next_cycles_with_a_fresh_shuffle():
    data = _toy(20)
    s = BatchStream(data, 20, seed=0)
    a, b = s.next()[0], s.next()[0]
    assert torch.equal(a.flatten().sort().values, b.flatten().sort().values)
    assert not torch.equal(a, b)


def test_cosine_schedule_closed_form():
    cfg = OptimConfig(lr=0.1, schedule="cosine")
    assert lr_at(cfg, 0, 10) == pytest.approx(0.1)
    assert lr_at(cfg, 5, 10) == pytest.approx(0.05)
    assert lr_at(cfg, 10, 10) == pytest.approx(0.0, abs=1e-12)
    assert lr_at(OptimConfig(lr=0.1, schedule="cosine", cosine_t_max=4), 2, 100) == pytest.approx(0.05)
    assert lr_at(OptimConfig(lr=0.1), 7, 10) == 0.1


def test_run_loop_steps_max_steps_and_logged_lr():
    data = _toy(100)
    model = nn.Sequential(nn.Flatten(), nn.Linear(8, 2))
    stream = BatchStream(data, 32, seed=0)
    loss = lambda m, b: nn.functional.cross_entropy(m(b[0]), b[1])  # noqa: E731
    rec = run_loop(model, lambda e: stream.epoch(), len(stream), loss, OptimConfig(epochs=3, schedule="cosine"),
                   progress=False)
    assert rec.steps == 12 and rec.epochs_run == 3 and len(rec.history["loss"]) == 3
    rec = run_loop(model, lambda e: stream.epoch(), len(stream), loss, OptimConfig(epochs=3, max_steps=5),
                   progress=False)
    assert rec.steps == 5 and rec.planned_steps == 5


def test_clipping_bounds_the_update():
    model = nn.Linear(4, 1, bias=False)
    w0 = model.weight.detach().clone()
    batch = (torch.ones(1, 4), torch.zeros(1))
    loss = lambda m, b: 1e6 * m(b[0]).sum()  # noqa: E731  huge gradient
    cfg = OptimConfig(lr=0.1, momentum=0.0, epochs=1, clip_grad_norm=1.0)
    rec = run_loop(model, lambda e: [batch], 1, loss, cfg, progress=False)
    assert float(torch.linalg.norm(model.weight.detach() - w0)) == pytest.approx(0.1, rel=1e-5)
    assert rec.history["grad_norm"][0] > 1e5  # the norm before clipping is logged


def test_nonfinite_loss_is_recorded_as_divergence_not_raised():
    model = nn.Linear(2, 1)
    calls = []

    def loss(m, b):
        calls.append(1)
        return m(b[0]).sum() * (float("nan") if len(calls) == 3 else 1.0)

    rec = run_loop(model, lambda e: [(torch.ones(1, 2), None)] * 5, 5, loss, OptimConfig(epochs=2), progress=False)
    assert rec.diverged and rec.diverged_step == 2 and rec.steps == 2


def test_weight_decay_only_on_trained_params_and_frozen_stay_put():
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 1))
    frozen = model[0].weight.detach().clone()
    cfg = OptimConfig(lr=0.1, weight_decay=0.5, epochs=1)
    run_loop(model, lambda e: [(torch.ones(2, 3), None)], 1, lambda m, b: m(b[0]).sum(), cfg,
             params=list(model[1].parameters()), progress=False)
    assert torch.equal(model[0].weight, frozen)


def test_crop_flip_shapes_and_content():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(16, 3, 8, 8)
    out = crop_flip(x, g)
    assert out.shape == x.shape
    # every output is a (possibly flipped) shifted window of the zero-padded input: its mass can only shrink
    assert (out.sum((1, 2, 3)) <= x.sum((1, 2, 3)) + 1e-5).all()
    assert not torch.equal(out, x)


def test_fit_is_deterministic_and_learns_digits():
    src = load_source("digits")
    split = make_split(src, classes=5, test_fraction=0.5, seed=0)
    data = split.data(src)
    cfg = OptimConfig(optimizer="adam", lr=1e-3, batch_size=64, epochs=30)
    models = []
    for _ in range(2):
        torch.manual_seed(0)
        m = build_model("mlp", 5, (1, 8, 8))
        rec = fit(m, data.train, cfg, seed=1, progress=False)
        models.append(m)
    assert rec.history["loss"][-1] < 0.5 * rec.history["loss"][0]
    assert accuracy(models[0], data.test) > 0.9
    for p, q in zip(models[0].parameters(), models[1].parameters()):
        assert torch.equal(p, q)


def test_predict_restores_mode_and_matches_forward():
    m = nn.Sequential(nn.Flatten(), nn.Linear(8, 2), nn.Dropout(0.5))
    m.train()
    x = torch.rand(10, 1, 1, 8)
    out = predict(m, x, batch_size=3)
    assert m.training
    m.eval()
    assert torch.allclose(out, m(x))


def test_optim_config_rejects_bad_values_by_name():
    with pytest.raises(ValueError, match="schedule"):
        OptimConfig(schedule="linear")
    with pytest.raises(ValueError, match="batch_size"):
        OptimConfig(batch_size=0)
    assert math.isfinite(OptimConfig().lr)


def test_stop_hook_on_the_last_batch_of_an_epoch_ends_training():
    model = nn.Linear(2, 1)
    batches = [(torch.ones(1, 2), None)] * 3
    rec = run_loop(model, lambda e: batches, 3, lambda m, b: m(b[0]).sum(), OptimConfig(epochs=5),
                   stop=lambda m, step: step == 6, progress=False)
    assert rec.steps == 6 and rec.epochs_run == 2
