"""One audit path: AuditSpec validation and cache key, the three audit pieces, and the commands that use them."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from rurk.audit.spec import AuditSpec, audit_spec
from rurk.audit.kernel import check_inputs, count_correct, residual_knowledge, tau_statistics
from rurk.cli import main
from rurk.config import AuditConfig
from rurk.store import Store


def net(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Dropout(0.5), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    m, a = net(1), net(2)
    for model in (m, a):  # non-trivial running statistics, so train-mode BatchNorm would differ
        model.train()
        with torch.no_grad():
            model(torch.rand(64, 1, 8, 8, generator=g))
    return m, a, torch.rand(24, 1, 8, 8, generator=g), torch.randint(0, 3, (24,), generator=g)


@pytest.mark.parametrize("kw, match", [
    (dict(draws=0), r"audit.draws = 0: expected an integer >= 1"),
    (dict(taus=[0.1, -0.1]), r"audit.taus = .*non-empty list of finite values >= 0"),
    (dict(taus=[]), r"audit.taus"),
    (dict(bootstrap=-1), r"audit.bootstrap = -1"),
    (dict(max_forget=0), r"audit.max_forget = 0"),
    (dict(probe="gausian"), r"gausian"),
    (dict(probe="pgd", probe_params={"stepz": 3}), r"stepz"),
    (dict(craft_on="x"), r"audit.craft_on = 'x'"),
])
def test_audit_spec_refuses_bad_settings_naming_them(kw, match):
    with pytest.raises(ValueError, match=match):
        AuditSpec(**kw)


def test_audit_spec_from_the_scenario_table_with_overrides():
    base = AuditConfig(probe="uniform-linf", taus=[0.0, 0.1], draws=7, bootstrap=11)
    s = audit_spec(base, draws=None, bootstrap=3, probe_params=None)
    assert (s.probe, s.taus, s.draws, s.bootstrap) == ("uniform-linf", (0.0, 0.1), 7, 3)
    # every field that changes the numbers is in the key, bootstrap included
    assert audit_spec(base).key() != audit_spec(base, bootstrap=4).key()
    assert audit_spec(base).key() != audit_spec(base, noise_seed=5).key()
    assert json.dumps(audit_spec(base).key())  # JSON-able


def test_the_three_pieces_make_the_whole_audit(data):
    m, a, x, y = data
    spec = AuditSpec(taus=(0.0, 0.2, 0.5), draws=5, bootstrap=30, max_forget=20)
    whole = residual_knowledge(m, a, x, y, seed=4, spec=spec, progress=False)
    inputs = check_inputs(m, a, x, y, max_forget=20, seed=4)
    counts = count_correct(m, a, inputs, spec.make_probe(), spec, 4, progress=False)
    stats = tau_statistics(counts, spec, 64, 4)
    np.testing.assert_array_equal(counts.k_m, whole.k_m)
    np.testing.assert_array_equal(counts.k_a, whole.k_a)
    assert [s.to_dict() for s in stats] == [s.to_dict() for s in whole.per_tau]
    assert len(whole.index) == 20 and len(set(whole.index.tolist())) == 20


def test_noise_seed_of_the_spec_replaces_the_run_seed(data):
    m, a, x, y = data
    fixed = AuditSpec(taus=(0.3,), draws=6, bootstrap=0, noise_seed=9)
    r1 = residual_knowledge(m, a, x, y, seed=1, spec=fixed, progress=False)
    r2 = residual_knowledge(m, a, x, y, seed=2, spec=fixed, progress=False)
    r3 = residual_knowledge(m, a, x, y, seed=9, spec=AuditSpec(taus=(0.3,), draws=6, bootstrap=0), progress=False)
    np.testing.assert_array_equal(r1.k_m, r2.k_m)
    np.testing.assert_array_equal(r1.k_m, r3.k_m)
    assert r1.seed == 9


def test_audit_of_a_model_in_train_mode_equals_the_audit_in_eval_mode(data):
    """BatchNorm and dropout: the audit runs both models in eval mode and restores their modes."""
    m, a, x, y = data
    m.eval(), a.eval()
    ref = residual_knowledge(m, a, x, y, [0.0, 0.3], draws=6, seed=0, bootstrap=0, progress=False)
    m.train(), a.train()
    got = residual_knowledge(m, a, x, y, [0.0, 0.3], draws=6, seed=0, bootstrap=0, progress=False)
    assert m.training and a.training and all(mod.training for mod in m.modules())
    np.testing.assert_array_equal(ref.k_m, got.k_m)
    np.testing.assert_array_equal(ref.k_a, got.k_a)


def test_max_forget_keeps_the_source_indices_in_the_csv(data, tmp_path):
    m, a, x, y = data
    index = np.arange(100, 124)
    r = residual_knowledge(m, a, x, y, [0.0], draws=2, seed=3, bootstrap=0, max_forget=5, index=index, progress=False)
    rows = (tmp_path / "t.csv")
    r.write_csv(rows)
    lines = rows.read_text().splitlines()[1:]
    got = [int(line.split(",")[0]) for line in lines]
    assert got == sorted(got) and set(got) <= set(range(100, 124)) and len(got) == 5
    # each listed sample really is the one at that source index: its label matches
    assert [int(line.split(",")[1]) for line in lines] == [int(y[i - 100]) for i in got]


COMMON = ["--set", "train.epochs=3", "--draws", "2", "--taus", "0,0.1", "--no-relearn", "--quiet", "--device", "cpu"]


def test_run_honours_the_scenario_probe_seed_flag_and_a_changed_bootstrap(tmp_path):
    out = ["--out", str(tmp_path)]
    assert main(["run", "digits5", "--methods", "gd", "--seed", "42", "--set", "audit.probe=uniform-linf",
                 "--set", "methods.gd.epochs=1", *COMMON, *out]) == 0
    summary = json.loads((tmp_path / "digits5" / "summary.json").read_text())
    assert summary["seeds"] == [42] and summary["probe"] == "uniform-linf"
    assert (tmp_path / "digits5" / "seed-42" / "gd" / "residual-uniform-linf.csv").exists()
    before = len(Store(tmp_path).records("audit"))
    assert main(["run", "digits5", "--methods", "gd", "--seed", "42", "--set", "audit.probe=uniform-linf",
                 "--set", "methods.gd.epochs=1", "--bootstrap", "7", *COMMON, *out]) == 0
    assert len(Store(tmp_path).records("audit")) == before + 2  # original and gd re-audited, not served stale


def test_bad_audit_settings_are_refused_before_any_training(tmp_path, monkeypatch, capsys):
    import rurk.pipeline as pipeline

    monkeypatch.setattr(pipeline, "fit", lambda *a, **k: pytest.fail("trained before validating"))
    for extra, match in ((["--draws", "0"], "--draws = 0"), (["--probe", "nope"], "nope"),
                         (["--probe", "pgd", "--probe-set", "stepz=2"], "stepz"), (["--taus", "0,x"], "--taus"),
                         (["--seeds", "1,x"], "--seeds")):
        args = ["run", "digits5", "--methods", "gd", "--out", str(tmp_path), "--quiet", *extra]
        assert main(args) == 2
        err = capsys.readouterr().err
        assert err.startswith("rurk: error:") and match in err and "Traceback" not in err
    assert not (tmp_path / "models").exists()
