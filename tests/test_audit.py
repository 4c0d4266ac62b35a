"""Residual-knowledge estimator (residual-knowledge.md §2-4, §8-9)."""

import copy
import csv
import json

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

from rurk.audit.stats import STAT_FIELDS, TauStats, per_sample_ratio, summarise_counts
from rurk.audit.result import AuditResult
from rurk.audit.kernel import residual_knowledge
from rurk.perturb import block_generator

TAUS = [0.0, 0.05, 0.15]


# --------------------------------------------------------------------------------------------------
# fixtures: two small models trained on sklearn digits (m on all, a without the forget samples)


def _train(model, x, y, steps=150, seed=0):
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


def small_cnn(classes=10, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8 * 16, classes)
    )


@pytest.fixture(scope="module")
def digits():
    ds = load_digits()
    x = torch.tensor(ds.images / 16.0, dtype=torch.float32)[:, None]  # (n, 1, 8, 8) in [0, 1]
    y = torch.tensor(ds.target, dtype=torch.long)
    forget = torch.arange(0, 600, 15)  # 40 samples
    keep = torch.ones(len(y), dtype=torch.bool)
    keep[forget] = False
    train = torch.arange(len(y)) < 700
    m = _train(small_cnn(seed=0), x[train], y[train], steps=30)
    a = _train(small_cnn(seed=1), x[train & keep], y[train & keep], steps=30)
    return {"x": x[forget], "y": y[forget], "index": forget, "m": m, "a": a}


def audit(d, **kw):
    kw.setdefault("draws", 20)
    kw.setdefault("progress", False)
    kw.setdefault("bootstrap", 200)
    taus = kw.pop("taus", TAUS)
    return residual_knowledge(d["m"], d["a"], d["x"], d["y"], taus, index=d["index"], **kw)


# --------------------------------------------------------------------------------------------------
# statistics


def test_worked_example_exact():
    s = summarise_counts(np.array([5, 0, 3, 0]), np.array([5, 0, 0, 2]), None, 10)
    assert isinstance(s, TauStats)
    assert s.r_paper == 0.5
    assert (s.n_used, s.n_both_zero, s.n_unbounded) == (2, 1, 1)
    assert s.r_pooled == 8 / 7
    assert s.prevalence == 0.25
    assert s.acc_m == 0.2 and s.acc_a == 0.175
    assert s.disagreement is None
    assert per_sample_ratio([5, 0, 3, 0], [5, 0, 0, 2]).tolist() == [1.0, 1.0, float("inf"), 0.0]
    s2 = summarise_counts([5, 0, 3, 0], [5, 0, 0, 2], [0, 0, 3, 4], 10)
    assert s2.disagreement == 7 / 40


def test_undefined_fields_are_none():
    s = summarise_counts([3, 0], [0, 0], [3, 0], 5, bootstrap=50)
    assert s.r_paper is None and s.r_pooled is None
    assert (s.n_used, s.n_both_zero, s.n_unbounded) == (0, 1, 1)
    assert s.prevalence == 0.5
    assert s.ci95["r_paper"] is None and s.ci95["r_pooled"] is None
    with pytest.raises(ValueError):
        summarise_counts([11], [0], None, 10)


def test_bootstrap_resample_r_paper_uses_its_own_defined_samples():
    # resample rows: [0, 0] -> 5/5 = 1; [1, 3] -> only 3 has k_a > 0 -> 0/2 = 0; [1, 2] -> undefined
    km, ka = np.array([5, 0, 3, 0]), np.array([5, 0, 0, 2])
    s = summarise_counts(km, ka, None, 10, resample=np.array([[0, 0], [1, 3], [1, 2]]))
    assert s.ci95["r_paper"] == (np.percentile([1.0, 0.0], 2.5), np.percentile([1.0, 0.0], 97.5))
    assert s.ci95["n_unbounded"] == (np.percentile([0, 0, 1], 2.5), np.percentile([0, 0, 1], 97.5))


def test_bootstrap_deterministic_and_contains_point(digits):
    r1 = audit(digits, bootstrap=300, seed=3)
    r2 = audit(digits, bootstrap=300, seed=3)
    r3 = audit(digits, bootstrap=300, seed=3, bootstrap_seed=4)
    assert [s.ci95 for s in r1.per_tau] == [s.ci95 for s in r2.per_tau]
    assert [s.ci95 for s in r1.per_tau] != [s.ci95 for s in r3.per_tau]
    assert r1.bootstrap_seed == 3 and r3.bootstrap_seed == 4
    checked = 0
    for s in r1.per_tau:
        assert set(s.ci95) == set(STAT_FIELDS)
        for f in STAT_FIELDS:
            v, ci = getattr(s, f), s.ci95[f]
            if v is None or ci is None:
                continue
            assert ci[0] <= v <= ci[1], (s.tau, f, v, ci)
            checked += 1
    assert checked >= 20
    # the intervals are informative, not degenerate
    assert any(s.ci95["acc_a"][1] > s.ci95["acc_a"][0] for s in r1.per_tau)


# --------------------------------------------------------------------------------------------------
# the estimator


def test_counts_match_direct_computation(digits):
    """k_m, k_a, d per (tau, sample) equal a naive per-sample loop with the same seeded block noise."""
    r = audit(digits, probe="gaussian", draws=7, block_size=16, seed=5, taus=[0.1])
    x, y, m, a = digits["x"], digits["y"], digits["m"], digits["a"]
    c, n = 7, len(y)
    km, ka, d = np.zeros(n, int), np.zeros(n, int), np.zeros(n, int)
    with torch.no_grad():
        for b in range(-(-n // 16)):
            rows = range(b * 16, min(n, (b + 1) * 16))
            g = block_generator(5, "gaussian", b, "cpu")
            z = torch.randn((len(rows) * c,) + x.shape[1:], generator=g)
            for j, i in enumerate(rows):
                xp = (x[i] + 0.1 * z[j * c : (j + 1) * c]).clamp(0, 1)
                pm, pa = m(xp).argmax(1), a(xp).argmax(1)
                km[i], ka[i], d[i] = (pm == y[i]).sum(), (pa == y[i]).sum(), (pm != pa).sum()
    assert np.abs(r.k_m[0] - km).sum() <= 1 and np.abs(r.k_a[0] - ka).sum() <= 1
    assert np.abs(r.d[0] - d).sum() <= 2
    assert 0 < km.sum() < n * c  # not a degenerate fixture


def test_tau0_gaussian_counts_are_clean_predictions(digits):
    r = audit(digits, taus=[0.0], tau0_shortcut=False, draws=11)
    with torch.no_grad():
        pm, pa = digits["m"](digits["x"]).argmax(1), digits["a"](digits["x"]).argmax(1)
    y = digits["y"]
    assert np.array_equal(r.k_m[0], 11 * (pm == y).numpy()) and np.array_equal(r.k_a[0], 11 * (pa == y).numpy())
    assert np.array_equal(r.d[0], 11 * (pm != pa).numpy())
    assert 0 < (pm == y).sum() < len(y)
    assert r.per_tau[0].clip_fraction == 0.0


@pytest.mark.parametrize("probe", ["gaussian", "uniform-linf", "pgd"])
def test_tau0_shortcut_equals_general_path(digits, probe):
    kw = dict(probe=probe, taus=[0.0, 0.1], draws=10, probe_params={"steps": 2} if probe == "pgd" else None)
    fast, slow = audit(digits, **kw), audit(digits, tau0_shortcut=False, **kw)
    for f in ("k_m", "k_a", "d"):
        assert np.array_equal(getattr(fast, f), getattr(slow, f))
    assert fast.per_tau == slow.per_tau
    n = len(digits["y"])
    assert fast.timing.forward_passes == slow.timing.forward_passes - 2 * n * 10 + 2 * n


@pytest.mark.parametrize("probe", ["gaussian", "uniform-l2", "pgd", "pgd-recall"])
def test_identical_models_give_exactly_one(digits, probe):
    m = digits["m"]
    params = {"steps": 2} if "pgd" in probe else None
    for a in (m, copy.deepcopy(m)):
        r = residual_knowledge(m, a, digits["x"], digits["y"], TAUS, probe=probe, draws=10, progress=False,
                               bootstrap=50, probe_params=params, craft_on="m" if probe == "pgd-recall" else None)
        for s in r.per_tau:
            assert s.r_paper in (1.0, None) and s.r_pooled == 1.0
            assert s.prevalence == 0.0 and s.disagreement == 0.0
        assert any(s.r_paper == 1.0 for s in r.per_tau)
        assert np.array_equal(r.k_m, r.k_a) and not r.d.any()


def test_craft_on_both(digits):
    r = audit(digits, probe="pgd-recall", taus=[0.0, 0.1], draws=5, probe_params={"steps": 2})
    assert r.craft_on == "both" and r.probe_params["craft_on"] == "both"
    assert r.d is None and all(s.disagreement is None for s in r.per_tau)
    assert all("disagreement" not in s.ci95 for s in r.per_tau)
    # recall crafting on each model raises its own recognition relative to the transferred copies
    ra = audit(digits, probe="pgd-recall", taus=[0.1], draws=5, probe_params={"steps": 2}, craft_on="m")
    assert r.k_m[1].sum() >= ra.k_m[0].sum()
    assert ra.d is not None and ra.per_tau[0].disagreement is not None
    with pytest.raises(ValueError):
        audit(digits, probe="pgd", craft_on="a", taus=[0.1], draws=2)
    assert audit(digits, probe="fgsm", taus=[0.1], draws=2).craft_on == "m"
    assert audit(digits, probe="gaussian", taus=[0.1], draws=2, craft_on="both").craft_on is None


class InputLog(nn.Module):
    """Wraps a model and keeps every batch it is fed."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.log = inner, []

    def forward(self, x):
        self.log.append(x.detach().clone().contiguous())
        return self.inner(x)


@pytest.mark.parametrize("probe", ["gaussian", "uniform-l2"])
def test_batch_size_invariance(digits, probe):
    """The perturbations are bit-identical for any evaluation batch size; counts differ on <= 0.1%."""
    seen, res = {}, {}
    for bs in (5, 64, 333, 4096):
        wrapped = InputLog(digits["m"])
        r = residual_knowledge(wrapped, digits["a"], digits["x"], digits["y"], [0.07], probe=probe, draws=20,
                               batch_size=bs, progress=False, bootstrap=0, seed=11)
        seen[bs] = torch.cat(wrapped.log[1:])  # log[0]: the class-count probe
        res[bs] = r
        assert r.batch_size == bs
    n, c = len(digits["y"]), 20
    for bs in seen:
        assert seen[bs].shape[0] == n * c
        assert torch.equal(seen[bs], seen[5]), bs
        diff = sum(np.abs(getattr(res[bs], f) - getattr(res[5], f)).sum() for f in ("k_m", "k_a"))
        assert diff <= 0.001 * n * c * 2


def test_common_random_numbers_across_tau(digits):
    wrapped = InputLog(digits["m"])
    residual_knowledge(wrapped, digits["a"], digits["x"], digits["y"], [0.01, 0.02], draws=4, progress=False,
                       bootstrap=0, batch_size=4096)
    x_rep = digits["x"].repeat_interleave(4, 0)
    d1, d2 = wrapped.log[1] - x_rep, wrapped.log[2] - x_rep
    inside = ((x_rep > 0.05) & (x_rep < 0.95)).expand_as(d1)  # far from clipping at these tau
    assert torch.allclose(2 * d1[inside], d2[inside], atol=1e-6)


def test_a_taus_counts_do_not_depend_on_the_rest_of_the_grid(digits):
    """The demo audits three τ instead of four (rurk.cli.commands.DEMO_TAUS) and promises the same numbers: each τ's
    counts and statistics are those of a larger grid that holds it."""
    full, part = audit(digits, taus=[0.0, 0.05, 0.1, 0.3]), audit(digits, taus=[0.0, 0.05, 0.3])
    for j_part, j_full in ((0, 0), (1, 1), (2, 3)):
        assert np.array_equal(part.k_m[j_part], full.k_m[j_full]) and np.array_equal(part.k_a[j_part], full.k_a[j_full])
        assert part.stats(part.taus[j_part]).to_dict() == full.stats(full.taus[j_full]).to_dict()
    assert not np.array_equal(full.k_m[1], full.k_m[3])  # the τ differ, so the check compares something


def test_draws_depend_on_seed_and_block(digits):
    r1, r2 = audit(digits, seed=1, taus=[0.15]), audit(digits, seed=2, taus=[0.15])
    assert not np.array_equal(r1.k_m, r2.k_m) or not np.array_equal(r1.k_a, r2.k_a)
    r3 = audit(digits, seed=1, taus=[0.15], block_size=8)
    assert r3.block_size == 8


def test_restores_model_state_and_layout(digits):
    m, a = copy.deepcopy(digits["m"]), copy.deepcopy(digits["a"])
    m.train()
    a[0].train()
    m[4].weight.requires_grad_(False)
    modes = [[mod.training for mod in net.modules()] for net in (m, a)]
    flags = [[p.requires_grad for p in net.parameters()] for net in (m, a)]
    conv = (m[0].weight.data_ptr(), m[0].weight.stride())
    for probe in ("gaussian", "pgd"):
        r = residual_knowledge(m, a, digits["x"], digits["y"], [0.05], probe=probe, draws=3, progress=False,
                               bootstrap=0, probe_params={"steps": 1} if probe == "pgd" else None,
                               channels_last=True)
        assert [[mod.training for mod in net.modules()] for net in (m, a)] == modes
        assert [[p.requires_grad for p in net.parameters()] for net in (m, a)] == flags
        assert (m[0].weight.data_ptr(), m[0].weight.stride()) == conv and m[0].weight.is_contiguous()
        assert all(p.grad is None for p in m.parameters())
        assert r.timing.forward_passes > 0


def test_any_classifier_and_data_types():
    """A plain tabular classifier, numpy inputs, and a subset via max_forget."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(5, 3))
    x = np.random.default_rng(0).random((30, 5)).astype(np.float32)
    y = np.arange(30) % 3
    r = residual_knowledge(m, m, x, y, [0.0, 0.1], draws=5, progress=False, bootstrap=0, max_forget=12,
                           index=np.arange(100, 130))
    assert r.n_forget == 12 and r.k_m.shape == (2, 12)
    assert set(r.index) <= set(range(100, 130)) and list(r.index) == sorted(r.index)
    assert r.timing.forward_passes == 12 + 12 * 5  # one model against itself: one pass per image, not two
    with pytest.raises(ValueError):
        residual_knowledge(m, m, x * 3, y, [0.1], progress=False)
    with pytest.raises(ValueError):
        residual_knowledge(m, m, x, y, [-0.1], progress=False)


# --------------------------------------------------------------------------------------------------
# report


def test_report_outputs(digits, tmp_path):
    r = audit(digits, taus=[0.0, 0.05, 0.3], draws=10)
    assert isinstance(r, AuditResult)
    js = r.to_json(scenario="digits", method="ga", reference="retrain@0", seed=131)
    text = json.dumps(js, allow_nan=False)
    back = json.loads(text)
    for k in ("scenario", "seed", "method", "reference", "probe", "c", "n_forget", "noise_seed", "bootstrap",
              "per_tau", "timing"):
        assert k in back
    assert back["probe"] == {"name": "gaussian", "params": {}}
    assert back["bootstrap"] == {"B": 200, "seed": 0} and back["c"] == 10 and back["seed"] == 131
    assert back["timing"]["forward_passes"] == r.timing.forward_passes > 0
    row = back["per_tau"][1]
    for f in ("tau",) + STAT_FIELDS + ("ci95",):
        assert f in row
    assert isinstance(row["ci95"]["r_pooled"], list) and len(row["ci95"]["r_pooled"]) == 2

    path = r.write_csv(tmp_path / "rk.csv")
    with open(path) as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["index", "label", "tau", "k_m", "k_a", "d", "r", "leak"]
    n = r.n_forget
    assert len(rows) == 3 * n
    assert [int(rw["index"]) for rw in rows[:n]] == digits["index"].tolist()
    for rw in rows:
        km, ka = int(rw["k_m"]), int(rw["k_a"])
        expect = "inf" if ka == 0 and km > 0 else repr(1.0 if ka == km == 0 else km / ka)
        assert rw["r"] == expect and rw["leak"] == str(km > ka)

    leaks = r.top_leaks(5)
    gaps = [lk["gap"] for lk in leaks]
    assert gaps == sorted(gaps, reverse=True) and all(g > 0 for g in gaps)
    assert all(lk["k_m"] - lk["k_a"] == lk["gap"] for lk in leaks)
    assert max(gaps) == (r.k_m - r.k_a).max()
    assert r.stats(0.049).tau == 0.05


def test_plot(digits, tmp_path):
    from matplotlib.image import imread

    from rurk.report.plots import plot_residual_curves, residual_figure

    r = audit(digits, taus=[0.0, 0.05, 0.15], draws=5)
    dict_curve = {"taus": [0, 0.05, 0.15], "r_paper": [1.0, None, 1.2], "r_pooled": [1, 1.1, 1.3],
                  "ci": {"r_pooled": [(0.9, 1.1), (1.0, 1.2), (1.1, 1.5)]}}
    curves = {"ga": r, "json": r.to_json(), "mean": dict_curve}
    out = plot_residual_curves(curves, tmp_path / "p" / "rk.png", title="digits", dpi=100)
    img = imread(out)
    assert img.shape[:2] == (400, 1150)  # figsize 11.5 x 4 in at 100 dpi
    dark = img[..., :3].min(-1) < 0.5
    assert dark.mean() > 0.01  # not blank: lines, markers and text
    assert dark[:, -150:].any()  # the legend, outside the right panel, is drawn
    fig = residual_figure(curves)
    labels = [t.get_text() for t in fig.axes[1].get_legend().get_texts()]
    assert labels == ["ga", "json", "mean", "Re-train (r = 1)"]
    lines = fig.axes[1].get_lines()[:3]
    # "ga" and "json" are the same audit: the curves coincide, their styles must not
    assert len({(ln.get_color(), ln.get_marker(), ln.get_linestyle(), ln.get_markerfacecolor()) for ln in lines}) == 3
    assert list(lines[0].get_ydata()) == list(lines[1].get_ydata())


def test_bf16_autocast_is_validated(digits):
    r = audit(digits, taus=[0.0, 0.05], draws=5, bf16=True)
    assert r.bf16 and r.bf16_mismatch is not None and 0.0 <= r.bf16_mismatch <= 0.1
    assert any("bf16" in note for note in r.notes)
    assert audit(digits, taus=[0.05], draws=5).bf16_mismatch is None


# --------------------------------------------------------------------------------------------------
# shared reference predictions (rurk run: Re-train's predictions computed once per seed)


def test_shared_reference_predictions_change_no_number_and_halve_the_work(digits):
    from rurk.audit.kernel import ReferencePredictions

    other = _train(small_cnn(seed=2), digits["x"], digits["y"], steps=10)
    shared = ReferencePredictions()
    for m in (digits["m"], other, digits["m"]):
        alone = residual_knowledge(m, digits["a"], digits["x"], digits["y"], TAUS, draws=20, progress=False,
                                   bootstrap=50, index=digits["index"], batch_size=64)
        first = not shared.preds
        together = residual_knowledge(m, digits["a"], digits["x"], digits["y"], TAUS, draws=20, progress=False,
                                      bootstrap=50, index=digits["index"], batch_size=64, reference=shared)
        for f in ("k_m", "k_a", "d"):
            np.testing.assert_array_equal(getattr(alone, f), getattr(together, f))
        assert [s.to_dict() for s in alone.per_tau] == [s.to_dict() for s in together.per_tau]
        # after the first audit only the audited model runs
        want = alone.timing.forward_passes if first else alone.timing.forward_passes // 2
        assert together.timing.forward_passes == want
    # another draw count (or seed, probe, reference model, forget set) is refused, never served stale predictions
    with pytest.raises(ValueError, match="ReferencePredictions"):
        residual_knowledge(other, digits["a"], digits["x"], digits["y"], TAUS, draws=10, progress=False,
                           bootstrap=0, batch_size=64, reference=shared)
    with pytest.raises(ValueError, match="ReferencePredictions"):
        residual_knowledge(other, other, digits["x"], digits["y"], TAUS, draws=20, progress=False, bootstrap=0,
                           batch_size=64, index=digits["index"], reference=shared)


# --------------------------------------------------------------------------------------------------
# the counting kernel's pieces


def test_chunks_cover_the_range_in_pieces_of_at_most_size_that_differ_by_at_most_one():
    from rurk.audit.kernel import _chunks

    for n in range(1, 60):
        for size in (1, 3, 4, 7, 64):
            chunks = _chunks(n, size)
            assert len(chunks) == -(-n // size)  # ceil(n / size): no more passes than needed
            assert chunks[0][0] == 0 and chunks[-1][1] == n and all(a[1] == b[0] for a, b in zip(chunks, chunks[1:]))
            lengths = [e - s for s, e in chunks]
            assert max(lengths) <= size and max(lengths) - min(lengths) <= 1


def test_identical_images_in_different_noise_blocks_get_different_copies():
    """Block b draws from its own generator (seed, probe, b): the same image in blocks 0 and 1 is perturbed
    differently; in one block its copies differ too."""
    m = InputLog(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)))
    x = torch.full((2, 1, 2, 2), 0.5)
    residual_knowledge(m, m, x, torch.zeros(2, dtype=torch.long), [0.1], draws=3, progress=False, bootstrap=0,
                       block_size=1, batch_size=6)
    copies = torch.cat(m.log)[-6:].view(2, 3, -1)  # after the class-count probes; sample-major, 3 copies each
    assert not torch.allclose(copies[0], copies[1])
    assert not torch.allclose(copies[0, 0], copies[0, 1])


def test_the_clip_fraction_counts_coordinates_pushed_past_either_bound_per_copy():
    """Gaussian copies of an all-white image leave [0, 1] wherever their noise is positive (about half of the
    coordinates), of an all-black one wherever it is negative; mid-grey at a small τ never leaves it."""
    m = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    y = torch.zeros(8, dtype=torch.long)
    for value, lo, hi in ((1.0, 0.4, 0.6), (0.0, 0.4, 0.6), (0.5, 0.0, 0.0)):
        r = residual_knowledge(m, m, torch.full((8, 1, 4, 4), value), y, [0.0, 0.05], draws=10, progress=False,
                               bootstrap=0)
        assert r.per_tau[0].clip_fraction == 0.0
        assert lo <= r.per_tau[1].clip_fraction <= hi, (value, r.per_tau[1].clip_fraction)


def test_max_forget_draws_a_subset_seeded_by_the_noise_seed():
    from rurk.audit.kernel import check_inputs

    m = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    x, y = torch.rand(50, 1, 2, 2), torch.zeros(50, dtype=torch.long)
    picks = {s: check_inputs(m, m, x, y, max_forget=10, seed=s).index.tolist() for s in (0, 1, 2)}
    assert picks[0] == check_inputs(m, m, x, y, max_forget=10, seed=0).index.tolist()  # seeded
    assert len({tuple(p) for p in picks.values()}) == 3 and all(len(set(p)) == 10 for p in picks.values())


def test_shared_reference_predictions_are_bound_to_the_noise_seed(digits):
    from rurk.audit.kernel import ReferencePredictions

    shared = ReferencePredictions()
    kw = dict(draws=5, progress=False, bootstrap=0, index=digits["index"], batch_size=64, reference=shared)
    residual_knowledge(digits["m"], digits["a"], digits["x"], digits["y"], TAUS, seed=1, **kw)
    with pytest.raises(ValueError, match="ReferencePredictions"):  # other copies: never the first seed's predictions
        residual_knowledge(digits["m"], digits["a"], digits["x"], digits["y"], TAUS, seed=2, **kw)


def test_craft_on_both_crafts_each_models_copies_on_that_model(digits):
    """With craft_on='both' the reference's copies are crafted on the reference: its counts equal those of the
    reference audited against itself with copies crafted on it (the same random starts), and the audited model's
    those of the audited model against itself."""
    kw = dict(probe="pgd-recall", taus=[0.1], draws=3, probe_params={"steps": 2}, seed=5, bootstrap=0)
    both = audit(digits, **kw)
    on_a = audit({**digits, "m": digits["a"]}, craft_on="m", **kw)
    on_m = audit({**digits, "a": digits["m"]}, craft_on="m", **kw)
    assert np.array_equal(both.k_a, on_a.k_m) and np.array_equal(both.k_m, on_m.k_m)
    assert not np.array_equal(on_a.k_m, on_m.k_m)  # the two models' own copies differ: the check can fail


def test_the_copies_held_at_once_are_bounded_by_the_batch_size(digits, monkeypatch):
    """Blocks are grouped so that one group's copies (samples × c) fit in one batch: the audit's memory is set by
    batch_size, not by the forget set or c (a group of a whole block per batch row would hold c times more)."""
    from rurk.audit import kernel

    sizes = []
    real = kernel._group_draws

    def spy(pr, x_rep, *a, **k):
        sizes.append(x_rep.shape[0])
        return real(pr, x_rep, *a, **k)

    monkeypatch.setattr(kernel, "_group_draws", spy)
    audit(digits, taus=[0.1], draws=8, batch_size=64, block_size=2, bootstrap=0)
    assert sizes and max(sizes) <= 64 and sum(sizes) == 8 * len(digits["y"])
