"""`rurk audit --arch`: a user's own model and forget set, the leak gallery, the per-sample .npz, and the attack
curves (relearning, robust accuracy)."""

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import user_nets
from rurk.audit.attacks import RelearnCurveSettings, RobustSettings, UntargetedPGD, adversarial_copies, relearn_curve, robust_accuracy, robust_curves, split_forget
from rurk.audit.kernel import residual_knowledge
from rurk.cli import main
from rurk.config import RelearnConfig
from rurk.data.tensordata import TensorData
from rurk.audit.gallery import gallery_groups, gallery_size, leak_ranking, perturbed_copies, write_gallery
from rurk.perturb import make_probe
from rurk.train import OptimConfig, accuracy, fit
from rurk.usermodel import load_samples, parse_normalize, with_normalization

NETS = Path(user_nets.__file__)
FAST = ["--draws", "8", "--taus", "0,0.1,0.3", "--bootstrap", "20", "--quiet", "--device", "cpu"]


def _digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    keep = d.target < 5
    x = (d.images[keep] / 16.0).astype(np.float32)[:, None]
    return x, d.target[keep].astype(np.int64)


@pytest.fixture(scope="module")
def user(tmp_path_factory):
    """Original-like m (trained on everything) and Re-train-like a (without the forget set), saved as plain
    safetensors, and the forget set (40 class-0 images) as float and uint8 .npz files."""
    root = tmp_path_factory.mktemp("user")
    x, y = _digits()
    forget_rows = np.flatnonzero(y == 0)[:40]
    rest = np.setdiff1d(np.arange(len(y)), forget_rows)
    cfg = OptimConfig(optimizer="adam", lr=0.01, epochs=15, batch_size=64)
    paths = {}
    for name, rows in (("m", np.arange(len(y))), ("a", rest)):
        torch.manual_seed(0)
        net = user_nets.make_net()
        fit(net, TensorData(torch.from_numpy(x[rows]), torch.from_numpy(y[rows]), torch.arange(len(rows))), cfg, 0,
            progress=False)
        paths[name] = root / f"{name}.safetensors"
        save_file(net.state_dict(), str(paths[name]))
    fx, fy = x[forget_rows], y[forget_rows]
    index = 1000 + forget_rows
    np.savez(root / "forget.npz", x=fx, y=fy, index=index)
    np.savez(root / "forget_u8.npz", x=np.round(fx * 255).astype(np.uint8), y=fy)
    return {"root": root, "m": paths["m"], "a": paths["a"], "x": fx, "y": fy, "index": index}


def _args(user, out, forget="forget.npz", arch="user_nets:make_net", *extra):
    return ["audit", "--arch", arch, "--unlearned", str(user["m"]), "--reference", str(user["a"]),
            "--forget", str(user["root"] / forget), "--out", str(out), *FAST, *extra]


def _models(user):
    from rurk.store import load_checkpoint

    return [load_checkpoint(user_nets.make_net(), user[k]).eval() for k in ("m", "a")]


# ---------------------------------------------------------------------------------------------- the CLI
def test_audit_by_import_path_writes_every_file_and_the_npz_round_trips(user, tmp_path, capsys):
    out = tmp_path / "audit"
    assert main(_args(user, out)) == 0
    assert "r_pooled" in capsys.readouterr().out
    for f in ("residual-gaussian.json", "residual-gaussian.csv", "residual-gaussian.png", "residual-gaussian.npz",
              "leaks-gaussian.png"):
        assert (out / f).is_file(), f
    summary = json.loads((out / "residual-gaussian.json").read_text())
    assert summary["arch"] == "user_nets:make_net" and summary["noise_seed"] == 0 and summary["c"] == 8
    with np.load(out / "residual-gaussian.npz", allow_pickle=False) as z:
        s = {k: z[k] for k in z.files}
    assert {"index", "label", "k_m", "k_a", "taus", "score", "rank"} <= set(s)
    n = len(user["y"])
    assert s["k_m"].shape == s["k_a"].shape == (3, n) and s["score"].shape == (n,)
    np.testing.assert_array_equal(s["index"], user["index"])
    np.testing.assert_array_equal(s["label"], user["y"])
    np.testing.assert_allclose(s["taus"], [0, 0.1, 0.3])
    np.testing.assert_array_equal(s["score"], s["k_m"][2] - s["k_a"][2])
    with open(out / "residual-gaussian.csv") as fh:  # the npz holds the same counts as the CSV, keyed by index
        rows = [r for r in csv.DictReader(fh) if float(r["tau"]) == 0.3]
    by_index = {int(r["index"]): (int(r["k_m"]), int(r["k_a"])) for r in rows}
    assert all(by_index[int(i)] == (s["k_m"][2, j], s["k_a"][2, j]) for j, i in enumerate(s["index"]))
    order = np.argsort(s["rank"])  # rank follows the ranking: score descending, ties by larger k_m
    keys = [(-s["score"][i], -s["k_m"][2, i]) for i in order]
    assert keys == sorted(keys)


def test_audit_uint8_npz_by_file_path_with_normalize_and_an_image_directory(user, tmp_path):
    arch = f"{NETS}:make_net"
    assert main(_args(user, tmp_path / "u8", "forget_u8.npz", arch, "--normalize", "0.5,0.5")) == 0
    assert (tmp_path / "u8" / "leaks-gaussian.png").is_file()
    from PIL import Image

    images = tmp_path / "images"
    for i, (img, label) in enumerate(zip(np.round(user["x"][:, 0] * 255).astype(np.uint8), user["y"])):
        (images / f"class{label}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(images / f"class{label}" / f"{i:03d}.png")
    (images / "class9").mkdir()  # a second class folder (empty) keeps its label position
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(images / "class9" / "z.png")
    data = load_samples(images)
    assert data.x.shape == (41, 1, 8, 8) and data.y.tolist() == [0] * 40 + [1]
    np.testing.assert_allclose(data.x[:40].numpy(), np.round(user["x"] * 255) / 255, atol=1e-6)
    user_dir = dict(user, root=tmp_path)
    assert main(_args(user_dir, tmp_path / "dir", "images")) == 0
    with np.load(tmp_path / "dir" / "residual-gaussian.npz") as z:
        assert z["index"].tolist() == list(range(41)) and z["label"].tolist() == [0] * 40 + [1]


def test_normalize_wraps_the_model():
    mean, std = parse_normalize("0.1,0.2,0.3:0.5,0.25,2")
    assert (mean, std) == ([0.1, 0.2, 0.3], [0.5, 0.25, 2.0]) and parse_normalize("0.5,0.25") == ([0.5], [0.25])
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    x = torch.rand(4, 3, 2, 2)
    wrapped = with_normalization(net, (3, 2, 2), mean, std)
    want = net((x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1))
    torch.testing.assert_close(wrapped(x), want)


def _bad_npz(tmp_path, **arrays):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    return "bad.npz"


@pytest.mark.parametrize("case, match", [
    ("x3d", "x must be 4-D"),
    ("ylen", "y must have shape"),
    ("range", r"x must be in \[0, 1\]"),
    ("label", "label 7 is out of range"),
    ("keys", "missing keys"),
    ("no_module", "cannot import module 'no_such_pkg.nets'"),
    ("no_attr", "has no attribute 'make_nett'"),
    ("not_callable", "not callable"),
    ("not_module", "not a torch.nn.Module"),
    ("raises", "no weights today"),
    ("no_file", "no such file"),
    ("no_scenario", "audit needs a scenario"),
    ("both", "not both"),
    ("missing_ref", "--arch needs --reference"),
    ("normalize", "--normalize"),
])
def test_bad_inputs_get_one_line_errors(user, tmp_path, capsys, case, match):
    x, y = user["x"], user["y"]
    root = dict(user, root=tmp_path)
    forget = {
        "x3d": lambda: _bad_npz(tmp_path, x=x[:, 0], y=y),
        "ylen": lambda: _bad_npz(tmp_path, x=x, y=y[:-1]),
        "range": lambda: _bad_npz(tmp_path, x=x * 2, y=y),
        "label": lambda: _bad_npz(tmp_path, x=x, y=np.full_like(y, 7)),
    }.get(case, lambda: _bad_npz(tmp_path, x=x, y=y))()
    arch = {"no_module": "no_such_pkg.nets:make_net", "no_attr": "user_nets:make_nett",
            "not_callable": "user_nets:NOT_CALLABLE", "not_module": "user_nets:not_a_module",
            "raises": "user_nets:broken", "no_file": "nowhere/nets.py:make_net"}.get(case, "user_nets:make_net")
    args = _args(root, tmp_path / "out", forget, arch)
    if case == "keys":
        other = tmp_path / "other.safetensors"
        save_file(user_nets.make_other_net().state_dict(), str(other))
        args[args.index("--reference") + 1] = str(other)
        match = "does not fit the model"
    if case == "no_scenario":
        args = ["audit", "--out", str(tmp_path)]
    if case == "both":
        args.insert(1, "digits5")
    if case == "missing_ref":
        i = args.index("--reference")
        del args[i:i + 2]
    if case == "normalize":
        args += ["--normalize", "0.5"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("rurk: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert re.search(match, err), err


def test_mismatched_state_dict_lists_the_keys(user, tmp_path, capsys):
    other = tmp_path / "other.safetensors"
    save_file(user_nets.make_other_net().state_dict(), str(other))
    args = _args(user, tmp_path / "out")
    args[args.index("--unlearned") + 1] = str(other)
    state = dict(user_nets.make_other_net().state_dict())
    save_file({**state, "extra.weight": torch.zeros(1)}, str(other))
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "unexpected keys extra.weight" in err and err.count("\n") == 1


# ---------------------------------------------------------------------------------------------- ranking, gallery
def test_leak_ranking_orders_by_score_then_k_m_and_matches_top_leaks(user):
    k_m = np.array([[9, 9, 9, 9, 9, 9], [5, 7, 3, 7, 0, 2]])
    k_a = np.array([[9, 9, 9, 9, 9, 9], [2, 4, 3, 5, 4, 2]])
    order, t = leak_ranking(k_m, k_a, [0.0, 0.1])
    # scores 3, 3, 0, 2, -4, 0 -> 1 (k_m 7) before 0 (k_m 5), then 3, then 2 (k_m 3) before 5 (k_m 2), then 4
    assert t == 1 and order.tolist() == [1, 0, 3, 2, 5, 4]
    m, a = _models(user)
    res = residual_knowledge(m, a, user["x"], user["y"], taus=[0, 0.2, 0.4], draws=8, bootstrap=0, seed=3,
                             index=user["index"])
    order, t = leak_ranking(res.k_m, res.k_a, res.taus)
    leaks = [r["index"] for r in res.top_leaks(len(order), tau=max(res.taus))]
    assert leaks and res.index[order[: len(leaks)]].tolist() == leaks
    top, bottom = gallery_groups(res, 16)
    score = res.k_m[t] - res.k_a[t]
    assert top == [i for i in order.tolist() if score[i] > 0][:16]  # leaks only, ranking order
    assert bottom == [i for i in order[::-1].tolist() if score[i] < 0][:16]  # over-forgotten only, worst first
    assert not set(top) & set(bottom)


@pytest.mark.parametrize("probe", ["gaussian", "uniform-l2", "pgd"])
def test_regenerated_copies_are_the_audits(user, probe):
    m, a = _models(user)
    kw = {"probe_params": {"steps": 3}} if probe == "pgd" else {}
    res = residual_knowledge(m, a, user["x"], user["y"], taus=[0, 0.3], probe=probe, draws=6, bootstrap=0, seed=5,
                             block_size=7, batch_size=20, **kw)
    pr = make_probe(probe, **kw.get("probe_params", {}))
    rows = list(range(len(user["y"])))
    copies = perturbed_copies(res, pr, torch.from_numpy(user["x"]), torch.from_numpy(user["y"]), rows, m, a,
                              copies=res.c, num_classes=5)
    assert copies.shape == (len(rows), 6, 1, 8, 8)
    with torch.no_grad():
        hits = (m(copies.flatten(0, 1)).argmax(1).view(len(rows), -1) == torch.from_numpy(user["y"])[:, None]).sum(1)
    np.testing.assert_array_equal(hits.numpy(), res.k_m[1])


def test_gallery_grid_size_order_and_not_blank(user, tmp_path):
    m, a = _models(user)
    res = residual_knowledge(m, a, user["x"], user["y"], taus=[0, 0.4], draws=8, bootstrap=0, seed=1)
    g = write_gallery(res, make_probe("gaussian"), torch.from_numpy(user["x"]), torch.from_numpy(user["y"]), m,
                      tmp_path / "g.png", a, k=10, cols=4)
    score = res.k_m[-1] - res.k_a[-1]
    n_top, n_bottom = min(10, int((score > 0).sum())), min(10, int((score < 0).sum()))
    assert (len(g.top), len(g.bottom)) == (n_top, n_bottom) and n_top >= 4 and g.cols == 4
    rows = (-(-n_top // 4), -(-n_bottom // 4))
    assert g.rows == rows and g.size == (4 * 200, 50 + 2 * 25 + sum(rows) * 150) == gallery_size(n_top, n_bottom, 4)[1]
    from matplotlib import image as mpimg

    img = mpimg.imread(g.path)
    assert img.shape[:2] == (g.size[1], g.size[0])
    tile = img[50 + 25: 50 + 25 + 150, :200, :3]  # the first tile: an image, not a blank area
    assert tile.std() > 0.05
    assert g.top == leak_ranking(res.k_m, res.k_a, res.taus)[0][:n_top].tolist()


# ---------------------------------------------------------------------------------------------- relearning attack
def _cluster(seed: int, n: int = 200) -> TensorData:
    g = torch.Generator().manual_seed(seed)
    x = 2.0 + 0.3 * torch.randn(n, 2, generator=g)
    return TensorData(x, torch.zeros(n, dtype=torch.long), torch.arange(n))


def _wrong_linear() -> nn.Module:
    lin = nn.Linear(2, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[-1.0, -1.0], [1.0, 1.0]]))
        lin.bias.zero_()
    return lin


def test_relearn_curve_starts_at_the_held_out_forget_accuracy(user):
    m, _ = _models(user)
    forget = TensorData(torch.from_numpy(user["x"]), torch.from_numpy(user["y"]), torch.from_numpy(user["index"]))
    cfg = RelearnConfig(lr=0.05)
    curve = relearn_curve(m, forget, cfg, seed=4, settings=RelearnCurveSettings(steps=5))
    attack, held = split_forget(forget, 0.1, 4)
    assert curve["n_attack"] == len(attack) == 4 and curve["n_heldout"] == len(held) == 36
    assert curve["attack_index"] == attack.index.tolist()
    assert curve["steps"] == list(range(6)) and curve["forget_acc"][0] == accuracy(m, held)
    assert not set(curve["attack_index"]) & set(held.index.tolist())
    w = [p.clone() for p in m.parameters()]
    assert all(torch.equal(p, q) for p, q in zip(m.parameters(), w))  # the model itself is not modified


def test_relearn_curve_rises_monotonically_on_a_linear_toy():
    """Every forget sample of the toy lies in the positive quadrant, and each SGD step on the attacker's part adds a
    positive multiple of those points to w_0 - w_1: every held-out margin grows, so accuracy never falls."""
    cfg = RelearnConfig(lr=0.02, momentum=0.9, batch_size=8)
    curves = np.array([relearn_curve(_wrong_linear(), _cluster(s), cfg, seed=s,
                                     settings=RelearnCurveSettings(steps=15))["forget_acc"] for s in range(4)])
    assert (curves[:, 0] == 0).all() and (curves[:, -1] > 0.9).all()
    assert (np.diff(curves, axis=1) >= 0).all()
    assert (np.diff(curves.mean(0)) >= 0).all()


# ---------------------------------------------------------------------------------------------- robust accuracy
def _boundary_toy():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(200) % 2
    x = (0.3 + 0.4 * y[:, None] + 0.12 * torch.randn(200, 2, generator=g)).clamp(0, 1)
    lin = nn.Linear(2, 2)
    with torch.no_grad():
        lin.weight.copy_(5 * torch.tensor([[-1.0, -1.0], [1.0, 1.0]]))
        lin.bias.copy_(torch.tensor([5.0, -5.0]))
    return lin, TensorData(x, y, torch.arange(200))


def test_robust_accuracy_at_zero_is_clean_and_untargeted_pgd_never_helps():
    model, data = _boundary_toy()
    clean = accuracy(model, data)
    assert 0.8 < clean < 1.0
    curves = robust_curves(model, {"forget": data}, seed=0, num_classes=2,
                           settings=RobustSettings(eps=(0.0, 0.02, 0.05, 0.1)))
    for mode in ("untargeted", "targeted"):
        accs = curves["sets"]["forget"][mode]
        assert accs[0] == clean and all(a <= clean for a in accs[1:]) and accs[-1] < clean
    pred = lambda d: model(d.x).argmax(1) == d.y  # noqa: E731
    for eps in (0.02, 0.1):  # per sample: a misclassified sample is never fixed by the attack
        probe = UntargetedPGD(alpha=eps / 4, steps=10)
        adv = adversarial_copies(model, data, probe, eps, seed=0, num_classes=2)
        assert (adv.x - data.x).abs().max() <= eps + 1e-6 and not (pred(adv) & ~pred(data)).any()


def test_robust_accuracy_of_a_digits_model(user):
    m, _ = _models(user)
    data = TensorData(torch.from_numpy(user["x"]), torch.from_numpy(user["y"]), torch.arange(40))
    assert robust_accuracy(m, data, 0.0, False, 0, 5) == accuracy(m, data)
    assert robust_accuracy(m, data, 0.3, False, 0, 5) <= accuracy(m, data)


def test_cli_robust_for_a_user_model_and_a_scenario(user, tmp_path):
    out = tmp_path / "u"
    np.savez(tmp_path / "test.npz", x=user["x"][:10], y=user["y"][:10])
    assert main(_args(user, out, "forget.npz", "user_nets:make_net", "--robust", "--robust-eps", "0,8/255",
                      "--test", str(tmp_path / "test.npz"))) == 0
    with open(out / "robust.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["method"] for r in rows} == {"m", "a"}
    assert {r["set"] for r in rows} == {"forget", "test"} and {float(r["eps"]) for r in rows} == {0.0, 8 / 255}
    assert (out / "robust.png").is_file()
    common = ["--out", str(tmp_path / "s"), "--set", "train.epochs=2", *FAST]
    assert main(["audit", "digits5", "--method", "gd", "--robust", "--robust-eps", "0,0.1", *common]) == 0
    seed_dir = tmp_path / "s" / "digits5" / "audits" / "seed-131" / "gd"
    with open(seed_dir / "robust.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["method"] for r in rows} == {"gd", "retrain"} and {r["set"] for r in rows} == {"forget", "retain", "test"}
    assert (seed_dir / "leaks-gaussian.png").is_file() and (seed_dir / "residual-gaussian.npz").is_file()
