"""Methods beyond the paper (baselines.md §12): RL, SalUn, ℓ1-sparse, Bad Teacher, and the retain-free JiT.

Tiny models on scikit-learn digits (8×8) or synthetic tensors; one thread per test process.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rurk.data.tensordata import TensorData
from rurk.methods import UnlearnData, get_method, unlearn
from rurk.methods._relabel import mark_forget, random_labels, relabel
from rurk.methods._tail import reinit_tail
from rurk.methods.bad_teacher import bad_teacher_loss, distillation_set
from rurk.methods.jit import lipschitz_loss
from rurk.methods.l1_sparse import l1_coefficient
from rurk.torchutil import make_generator
from rurk.methods.salun import saliency_mask
from rurk.train import BatchStream, accuracy

# The tiny models, the digits data (400 retain / 100 forget: 4 retain batches and 1 forget batch per epoch at
# batch 128), the trained Originals and the id-carrying synthetic data are the gradient-method tests' own.
from test_methods_gradient import (Recorder, ZeroGradParam, bn_net, data, digits, ided_data, ids_of,  # noqa: F401
                                   max_param_diff, originals, same_state, state)

MINE = ("rl", "salun", "l1_sparse", "bad_teacher", "jit")
SEED = 131
QUICK = {"rl": {"epochs": 2}, "salun": {"epochs": 2}, "l1_sparse": {"epochs": 2, "gamma": 1e-3},
         "bad_teacher": {"lr": 1e-3}, "jit": {}}


# ---------------------------------------------------------------------------------------------- every method
@pytest.mark.parametrize("name", MINE)
def test_pure_deterministic_and_recorded(name, originals, data):
    """On a model without and one with BatchNorm: the Original is left as it was, a fixed seed gives the same
    model, the result is a new model (changed, in train mode) and the record holds the run."""
    for arch, original in originals.items():
        before = state(original)
        (m1, r1), (m2, _) = (unlearn(name, original, data, SEED, overrides=QUICK[name]) for _ in range(2))
        checks = {
            "Original untouched": same_state(state(original), before) and original.training
            and all(p.requires_grad for p in original.parameters()),
            "deterministic": same_state(state(m1), state(m2)),
            "new changed model in train mode": m1 is not original and m1.training and max_param_diff(m1, original) > 0,
            "record filled": r1.method == name and not r1.diverged and r1.steps == r1.extra["planned_steps"] > 0
            and bool(r1.config) and bool(r1.history["loss"]) and r1.wall_s > 0,
        }
        assert all(checks.values()), (arch, [k for k, ok in checks.items() if not ok])


@pytest.mark.parametrize("name", ["rl", "salun", "bad_teacher", "jit"])
def test_randomness_comes_from_the_run_seed(name, originals, data):
    a, _ = unlearn(name, originals["mlp"], data, 1, overrides=QUICK[name])
    b, _ = unlearn(name, originals["mlp"], data, 2, overrides=QUICK[name])
    assert max_param_diff(a, b) > 0
    spec = get_method(name)  # called directly: no global reseeding, the method's generators alone decide
    outs = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        outs.append(spec.fn(originals["mlp"], data, spec.config(overrides=QUICK[name]), SEED)[0])
    assert same_state(state(outs[0]), state(outs[1]))


def test_random_labels_are_never_the_true_label_and_cover_every_other_class():
    c = 10
    y = torch.arange(c).repeat_interleave(20000)
    g = torch.Generator().manual_seed(0)
    lab = random_labels(y, c, g)
    assert lab.dtype == y.dtype and lab.shape == y.shape
    assert not bool((lab == y).any())
    for k in range(c):
        drawn = lab[y == k]
        assert set(drawn.tolist()) == set(range(c)) - {k}
        counts = torch.bincount(drawn, minlength=c).float()[torch.arange(c) != k]
        assert float(counts.min()) > 0.9 * 20000 / (c - 1) and float(counts.max()) < 1.1 * 20000 / (c - 1)
    # the reference code's variant: all C classes, the true one included
    lab = random_labels(y, c, torch.Generator().manual_seed(0), allow_true_label=True)
    assert set(lab.tolist()) == set(range(c))
    assert 0.09 < float((lab == y).float().mean()) < 0.11
    with pytest.raises(ValueError, match="2 classes"):
        random_labels(torch.zeros(3, dtype=torch.long), 1)


def test_relabel_changes_forget_rows_only():
    forget = TensorData(torch.zeros(6, 2), torch.tensor([0, 1, 2, 3, 4, 0]), torch.arange(6))
    marked = mark_forget(forget, 5)
    assert torch.equal(marked.y, forget.y + 5)
    y = torch.cat([marked.y, torch.tensor([1, 2, 3])])  # 6 forget rows, then 3 retain rows
    out = relabel(y, 5, torch.Generator().manual_seed(1), allow_true_label=False)
    assert torch.equal(out[6:], torch.tensor([1, 2, 3]))
    assert bool((out[:6] != forget.y).all()) and int(out.max()) < 5


def test_rl_each_epoch_is_a_forget_pass_then_a_retain_pass():
    d = ided_data()  # batch 32: 2 forget batches (32 + 18) and 10 retain batches per epoch
    model, rec = unlearn("rl", Recorder(), d, SEED, overrides={"batch_size": 32, "epochs": 2})
    assert rec.steps == 2 * (2 + 10) and rec.extra["forget_steps_per_epoch"] == 2
    seen = [ids_of(x) for x in model.seen]
    for e in range(2):
        epoch = seen[12 * e: 12 * (e + 1)]
        assert sorted(i for b in epoch[:2] for i in b) == list(range(500, 550))
        assert sorted(i for b in epoch[2:] for i in b) == list(range(300))
    assert seen[0] != seen[12]  # a fresh shuffle each epoch
    # joint: one pass over the shuffled union, batches mixing forget and retain rows
    model, rec = unlearn("rl", Recorder(), d, SEED, overrides={"batch_size": 32, "epochs": 1, "joint": True})
    seen = [ids_of(x) for x in model.seen]
    assert rec.steps == 11 and sorted(i for b in seen for i in b) == list(range(300)) + list(range(500, 550))
    assert any(min(b) < 500 <= max(b) for b in seen)


def test_rl_shuffles_the_forget_set_with_its_own_stream_not_the_retain_streams():
    """Forget and retain sets of the same size (50 each, ids 500.. and 0..): a forget stream seeded like the retain
    stream would visit forget row i exactly when the retain stream visits retain row i. Its own seed
    (derive_seed(loader_seed, "forget")) gives another order, and the record names that seed."""
    from rurk.methods._forget import forget_stream
    from rurk.torchutil import derive_seed

    d = ided_data(n_retain=50, n_forget=50)
    model, rec = unlearn("rl", Recorder(), d, SEED, overrides={"batch_size": 50, "epochs": 1})
    forget_order, retain_order = (ids_of(x) for x in model.seen[:2])
    assert sorted(forget_order) == list(range(500, 550)) and sorted(retain_order) == list(range(50))
    assert [i - 500 for i in forget_order] != retain_order
    assert rec.extra["forget_loader_seed"] == derive_seed(d.loader_seed, "forget") != d.loader_seed
    stream, seed = forget_stream(d.forget, 50, d.loader_seed, "cpu")
    assert seed == rec.extra["forget_loader_seed"]
    assert ids_of(stream.next()[0]) == forget_order  # the stream RL stepped through


def test_rl_trains_forget_rows_towards_wrong_labels(originals, data):
    """With a one-sample retain set (one retain step per epoch) the forget passes dominate: the forget accuracy
    collapses, because every label RL trains them on is wrong."""
    nearly_forget_only = UnlearnData(data.retain.subset([0]), data.forget, 10)
    model, rec = unlearn("rl", originals["mlp"], nearly_forget_only, SEED, overrides={"lr": 0.1, "epochs": 20})
    assert rec.steps == 20 * 2
    assert accuracy(model, data.forget) < 0.3 < 0.9 < accuracy(originals["mlp"], data.forget)


# ---------------------------------------------------------------------------------------------- SalUn
@pytest.mark.parametrize("arch", ["mlp", "bn"])
def test_salun_moves_only_salient_weights(arch, originals, data):
    original = originals[arch]
    mask = saliency_mask(copy.deepcopy(original), data.forget, 0.5, batch_size=128, loader_seed=data.loader_seed)
    total = sum(m.numel() for m in mask.values())
    assert sum(int(m.sum()) for m in mask.values()) == int(0.5 * total)
    assert set(mask) == {n for n, _ in original.named_parameters()}
    model, rec = unlearn("salun", original, data, SEED, overrides={"epochs": 3, "lr": 0.05})
    assert rec.extra["salient_params"] == int(0.5 * total)
    moved = 0
    for (n, p), q in zip(model.named_parameters(), original.parameters()):
        assert torch.equal(p[~mask[n]], q[~mask[n]]), f"{n}: a non-salient weight moved"
        moved += int((p[mask[n]] != q[mask[n]]).sum())
    assert moved > 0.9 * int(0.5 * total)
    assert accuracy(model, data.retain) > 0.9


def test_salun_mask_is_taken_on_the_loaded_original(originals, data):
    original = originals["bn"]
    before = state(original)
    mask = saliency_mask(original, data.forget, 0.3)
    assert same_state(state(original), before) and original.training  # eval-mode pass, mode restored
    assert all(p.requires_grad for p in original.parameters())
    fresh = saliency_mask(bn_net(seed=5), data.forget, 0.3)
    agree = sum(int((mask[n] == fresh[n]).sum()) for n in mask) / sum(m.numel() for m in mask.values())
    assert agree < 0.9
    # the ranking is by |Σ_batches ∇(−CE)| on S_f: the kept weights have the larger gradients
    model = copy.deepcopy(original).eval()
    loss = -F.cross_entropy(model(data.forget.x), data.forget.y)  # one batch (|S_f| = 100 < 128)
    grads = dict(zip([n for n, _ in model.named_parameters()], torch.autograd.grad(loss, list(model.parameters()))))
    kept = torch.cat([grads[n].abs()[mask[n]] for n in mask])
    dropped = torch.cat([grads[n].abs()[~mask[n]] for n in mask])
    assert float(kept.min()) >= float(dropped.max()) - 1e-7


def test_salun_with_the_full_mask_is_rl(originals, data):
    over = {"epochs": 2, "lr": 0.01, "weight_decay": 5e-4}
    s, rec = unlearn("salun", originals["bn"], data, SEED, overrides={**over, "mask_fraction": 1.0})
    r, _ = unlearn("rl", originals["bn"], data, SEED, overrides=over)
    assert same_state(state(s), state(r)) and rec.extra["salient_fraction"] == 1.0


# ---------------------------------------------------------------------------------------------- l1-sparse
@pytest.mark.parametrize("arch", ["mlp", "bn"])
def test_l1_sparse_with_gamma_zero_is_gd(arch, originals, data):
    over = {"lr": 0.02, "epochs": 3, "momentum": 0.9, "weight_decay": 5e-4, "batch_size": 64}
    a, rec = unlearn("l1_sparse", originals[arch], data, SEED, overrides={**over, "gamma": 0.0})
    b, _ = unlearn("gd", originals[arch], data, SEED, overrides=over)
    assert same_state(state(a), state(b))
    assert rec.extra["gamma_schedule"] == [0.0, 0.0, 0.0]
    c, _ = unlearn("l1_sparse", originals[arch], data, SEED, overrides={**over, "gamma": 1e-3})
    assert max_param_diff(c, b) > 1e-5


def test_l1_penalty_coefficient_decays_linearly_per_epoch(data):
    gamma, epochs, lr = 0.01, 4, 0.1
    assert [l1_coefficient(gamma, e, epochs) for e in range(epochs)] == pytest.approx([0.01, 0.0075, 0.005, 0.0025])
    original = ZeroGradParam()
    with torch.no_grad():
        original.extra.fill_(1.0)  # sign(θ) = 1 everywhere
    over = {"gamma": gamma, "epochs": epochs, "lr": lr, "momentum": 0.0, "weight_decay": 0.0}
    model, rec = unlearn("l1_sparse", original, data, SEED, overrides=over)
    assert rec.extra["gamma_schedule"] == pytest.approx([gamma * (1 - e / epochs) for e in range(epochs)])
    # the only force on `extra` (all ones, zero CE gradient) is γ_t·sign(θ): 4 steps per epoch, each −lr·γ_t
    expected = 1.0 - lr * 4 * sum(gamma * (1 - e / epochs) for e in range(epochs))
    assert torch.allclose(model.extra.detach(), torch.full_like(model.extra, expected), atol=1e-6)
    assert rec.history["l1"][0] > rec.history["l1"][-1]


# ---------------------------------------------------------------------------------------------- Bad Teacher
def test_bad_teacher_loss_is_batchmean_kl_against_the_flag_teacher():
    g = torch.Generator().manual_seed(0)
    s, good, bad = (torch.randn(6, 5, generator=g) for _ in range(3))
    flags = torch.tensor([1, 0, 0, 1, 1, 0])
    expected = 0.0
    for b in range(6):
        t = bad[b] if flags[b] else good[b]
        p_t, p_s = torch.softmax(t, 0), torch.softmax(s[b], 0)
        expected += float((p_t * (p_t.log() - p_s.log())).sum())
    expected /= 6
    assert float(bad_teacher_loss(s, good, bad, flags, 1.0)) == pytest.approx(expected, rel=1e-5)
    assert float(bad_teacher_loss(s, good, bad, 1 - flags, 1.0)) != pytest.approx(expected, rel=1e-3)
    # with T: both distributions are softened, no T² factor
    t2 = [(bad if f else good)[b] / 2 for b, f in enumerate(flags.tolist())]
    exp2 = sum(float((torch.softmax(t, 0) * (torch.log_softmax(t, 0) - torch.log_softmax(s[b] / 2, 0))).sum())
               for b, t in enumerate(t2)) / 6
    assert float(bad_teacher_loss(s, good, bad, flags, 2.0)) == pytest.approx(exp2, rel=1e-5)
    assert float(bad_teacher_loss(good, good, bad, torch.zeros(6, dtype=torch.long))) == pytest.approx(0, abs=1e-6)


def _kl(teacher: nn.Module, student: nn.Module, x: torch.Tensor) -> float:
    """Batch-mean KL(softmax(teacher(x)) ‖ softmax(student(x))) in eval mode."""
    with torch.no_grad():
        return float(bad_teacher_loss(student.eval()(x), teacher.eval()(x), teacher(x), torch.zeros(len(x))))


def test_bad_teacher_distils_a_random_net_on_the_forget_set(originals, data):
    mixed = distillation_set(data, 0.3, torch.Generator().manual_seed(0))
    assert len(mixed) == 100 + 120 and int(mixed.y.sum()) == 100 and bool((mixed.y[:100] == 1).all())
    assert set(mixed.index[100:].tolist()) <= set(data.retain.index.tolist())
    original = originals["mlp"]
    model, rec = unlearn("bad_teacher", original, data, SEED, overrides={"lr": 1e-2, "epochs": 20})
    assert rec.steps == 20 and rec.extra["retain_rows"] == 120 and model.training
    assert rec.history["loss"][-1] < 0.5 * rec.history["loss"][0]
    # the incompetent teacher: the architecture's init from the method's own generator, not the Original
    bad = copy.deepcopy(original)
    reinit_tail(bad, [""], make_generator(SEED, "bad_teacher-init", "cpu"))
    assert max_param_diff(bad, original) > 0.05
    # on S_f the student moved to the random teacher; on S_r it stayed with the Original
    assert _kl(bad, model, data.forget.x) < 0.2 * _kl(bad, original, data.forget.x)
    assert _kl(original, model, data.retain.x) < _kl(bad, model, data.retain.x)


# ---------------------------------------------------------------------------------------------- JiT
def test_lipschitz_loss_matches_the_definition():
    g = torch.Generator().manual_seed(0)
    x, out = torch.rand(4, 1, 3, 3, generator=g), torch.randn(4, 5, generator=g)
    n = 3
    xp, outp = torch.rand(n * 4, 1, 3, 3, generator=g), torch.randn(n * 4, 5, generator=g)
    expected = sum(float((out[b] - outp[k * 4 + b]).norm() / (x[b] - xp[k * 4 + b]).norm())
                   for k in range(n) for b in range(4)) / n
    assert float(lipschitz_loss(out, outp, x, xp, n)) == pytest.approx(expected, rel=1e-5)
    assert float(lipschitz_loss(out, out.repeat(n, 1), x, x.repeat(n, 1, 1, 1), n)) == 0.0  # σ = 0: no NaN


def test_jit_never_reads_the_retain_set(originals, data):
    poisoned = TensorData(torch.full_like(data.retain.x, float("nan")), data.retain.y.flip(0), data.retain.index)
    a, _ = unlearn("jit", originals["bn"], data, SEED)
    b, rec = unlearn("jit", originals["bn"], UnlearnData(poisoned, data.forget, 10), SEED)
    assert same_state(state(a), state(b)) and rec.extra["uses_retain_set"] is False
    assert rec.steps == 1  # one forget batch of 100, one epoch


def test_jit_step_is_sgd_on_the_lipschitz_loss_of_the_forget_batch(originals, data):
    """One step (|S_f| = 100 < 128: one batch) is θ − η·∇_θ L with L built from the shuffled forget batch, N copies
    from the method's own noise generator and f(x′) held fixed (reference code)."""
    original, eta, sigma, n = originals["mlp"], 1e-5, 0.05, 4
    model, rec = unlearn("jit", original, data, SEED, overrides={"lr": eta, "sigma": sigma, "copies": n})
    x, y = next(BatchStream(data.forget, 128, data.loader_seed).epoch())
    z = torch.randn((n * len(x),) + tuple(x.shape[1:]), generator=make_generator(SEED, "jit-noise", "cpu"))
    x_pert = (x.repeat(n, 1, 1, 1) + sigma * z).clamp(0, 1)
    ref = copy.deepcopy(original)
    with torch.no_grad():
        out_pert = ref(x_pert)
    loss = lipschitz_loss(ref(x), out_pert, x, x_pert, n)
    assert rec.history["loss"][0] == pytest.approx(float(loss.detach()), rel=1e-5)
    grads = torch.autograd.grad(loss, list(ref.parameters()))
    for p, q, g in zip(model.parameters(), original.parameters(), grads):
        assert torch.allclose(p, q - eta * g, atol=1e-7, rtol=0)


def _local_ratio(model: nn.Module, x: torch.Tensor, sigma: float) -> float:
    z = torch.randn((25,) + tuple(x.shape[1:]), generator=torch.Generator().manual_seed(3))
    model.eval()
    with torch.no_grad():
        xp = (x[:, None] + sigma * z[None]).clamp(0, 1)
        out, outp = model(x), model(xp.flatten(0, 1)).view(len(x), 25, -1)
        return float(((out[:, None] - outp).norm(dim=2) / (x[:, None] - xp).flatten(2).norm(dim=2)).mean())


def test_jit_flattens_the_model_around_forget_samples(originals, data):
    original = originals["mlp"]
    over = {"lr": 1e-5, "epochs": 10}
    model, rec = unlearn("jit", original, data, SEED, overrides=over)
    assert _local_ratio(model, data.forget.x, 0.01) < _local_ratio(original, data.forget.x, 0.01)
    assert accuracy(model, data.forget) < accuracy(original, data.forget)
    grad_both, _ = unlearn("jit", original, data, SEED, overrides={**over, "detach_perturbed": False})
    assert max_param_diff(grad_both, model) > 0


# ---------------------------------------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def cli_out(tmp_path_factory):
    return tmp_path_factory.mktemp("cli")


@pytest.mark.parametrize("name", MINE)
def test_cli_unlearn_runs_each_method(name, cli_out):
    from rurk.cli import main
    from rurk.store import Store

    assert main(["unlearn", "digits5", "--method", name, "--set", "train.epochs=3", "--set", "method.epochs=1",
                 "--out", str(cli_out), "--quiet", "--device", "cpu"]) == 0
    recs = [r for r in Store(cli_out).records("unlearned") if r["metrics"]["method"] == name]
    assert len(recs) == 1, "one record per method"
    rec = recs[0]["metrics"]
    assert "error" not in rec and not rec["diverged"], rec.get("error")
    assert rec["config"]["epochs"] == 1 and rec["steps"] > 0
