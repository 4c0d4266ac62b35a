"""Splits: determinism, disjointness, per-class counts, label remapping, forget modes, JSON round trip, errors."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from rurk.data import Split, SplitData, load_source, make_split

FMNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(scope="module")
def digits():
    return load_source("digits")


@pytest.fixture(scope="module")
def synth():
    # 60 train / 20 test per class, 6 classes
    return load_source("synthetic", shape=(1, 4, 4), num_classes=6, n_train=360, n_test=120, seed=1)


def ylab(source, idx, part="train"):
    return getattr(source, part).y.numpy()[idx]


def arrays_equal(a: Split, b: Split):
    return all(np.array_equal(getattr(a, f), getattr(b, f)) for f in ("forget", "retain", "val", "test"))


# ------------------------------------------------------------------------------------------ determinism


def test_same_seed_same_split(digits):
    kw = dict(classes=5, test_fraction=0.5, val_fraction=0.1, seed=3)
    a, b = make_split(digits, **kw), make_split(digits, **kw)
    assert arrays_equal(a, b) and a == b and a.digest() == b.digest()
    for f in ("forget", "retain", "val", "test"):
        arr = getattr(a, f)
        assert arr.dtype == np.int64 and np.all(np.diff(arr) > 0), f"{f} not sorted/unique"


def test_different_seed_different_forget(digits):
    a = make_split(digits, test_fraction=0.5, seed=0)
    b = make_split(digits, test_fraction=0.5, seed=1)
    assert len(a.forget) == len(b.forget)
    assert not np.array_equal(a.forget, b.forget)
    assert not np.array_equal(a.test, b.test)
    assert a.digest() != b.digest() and a != b


def test_class_subset_draw_independent_of_other_classes(synth):
    # decision: per-(stage, class) generators, so keeping more classes does not change class 0's draw
    a = make_split(synth, classes=2, train_per_class=30, test_per_class=10, seed=5)
    b = make_split(synth, classes=6, train_per_class=30, test_per_class=10, seed=5)
    assert np.array_equal(a.forget, b.forget)
    c0 = lambda s, arr, part="train": arr[ylab(synth, arr, part) == 0]  # noqa: E731
    assert np.array_equal(c0(a, a.retain), c0(b, b.retain))
    assert np.array_equal(c0(a, a.test, "test"), c0(b, b.test, "test"))


# ------------------------------------------------------------------------------------------ structure


def test_disjoint_union_and_test_carved_from_train(digits):
    s = make_split(digits, classes=[2, 5, 7], test_fraction=0.5, val_fraction=0.2)
    f, r, v, t = s.forget, s.retain, s.val, s.test
    assert s.test_from == "train"
    for a, b in ((f, r), (f, v), (r, v), (t, f), (t, r), (t, v)):
        assert len(np.intersect1d(a, b)) == 0
    kept_all = np.flatnonzero(np.isin(digits.train.y.numpy(), [2, 5, 7]))
    assert np.array_equal(np.sort(np.concatenate([f, r, v, t])), kept_all)
    # stratified 50/50 per class (round half up: the test half gets the extra sample)
    y = digits.train.y.numpy()
    for c in (2, 5, 7):
        n_c = int((y == c).sum())
        n_test = int(np.floor(0.5 * n_c + 0.5))
        assert int((y[t] == c).sum()) == n_test
        n_train = n_c - n_test
        assert int((y[v] == c).sum()) == int(np.floor(0.2 * n_train + 0.5))


def test_per_class_counts_and_val(synth):
    s = make_split(synth, classes=4, train_per_class=50, test_per_class=15, val_fraction=0.2,
                   forget_count=7)
    ytr = synth.train.y.numpy()
    train = np.concatenate([s.forget, s.retain, s.val])
    assert np.bincount(ytr[train], minlength=6).tolist() == [50, 50, 50, 50, 0, 0]
    assert np.bincount(ytr[s.val], minlength=6).tolist() == [10, 10, 10, 10, 0, 0]
    assert np.bincount(synth.test.y.numpy()[s.test], minlength=6).tolist() == [15, 15, 15, 15, 0, 0]
    assert len(s.forget) == 7 and len(s.retain) == 200 - 40 - 7
    assert s.test_from == "test"


def test_none_means_all(synth):
    s = make_split(synth, forget="class")
    assert len(s.forget) + len(s.retain) == len(synth.train) and len(s.test) == len(synth.test)
    assert len(s.val) == 0 and s.classes == tuple(range(6))


def test_remapped_labels_and_data(synth):
    s = make_split(synth, classes=[3, 1, 5], forget_class=1, val_fraction=0.1, seed=2)
    d = s.data(synth)
    assert isinstance(d, SplitData)
    remap = {3: 0, 1: 1, 5: 2}
    for part, td, src in (("forget", d.forget, synth.train), ("retain", d.retain, synth.train),
                          ("val", d.val, synth.train), ("test", d.test, synth.test)):
        idx = getattr(s, part)
        assert td.index.tolist() == idx.tolist()
        assert torch.equal(td.x, src.x[torch.from_numpy(idx)])
        assert td.y.tolist() == [remap[c] for c in src.y[torch.from_numpy(idx)].tolist()], part
        assert td.y.dtype == torch.int64
    assert set(d.forget.y.tolist()) == {1}  # forget_class=1 -> second kept class (source 1) -> label 1
    assert d.train.index.tolist() == sorted(s.forget.tolist() + s.retain.tolist())


def test_data_with_carved_test(digits):
    s = make_split(digits, classes=[4, 0], test_fraction=0.5)
    d = s.data(digits)
    assert torch.equal(d.test.x, digits.train.x[torch.from_numpy(s.test)])
    assert sorted(set(d.test.y.tolist())) == [0, 1]
    assert (d.test.y == 0).sum() == (digits.train.y[torch.from_numpy(s.test)] == 4).sum()


def test_data_rejects_other_source(digits, synth):
    s = make_split(digits, test_fraction=0.5)
    with pytest.raises(ValueError, match="fingerprint"):
        s.data(synth)


# ------------------------------------------------------------------------------------------ forget modes


def test_sample_forget_is_subset_of_class(digits):
    s = make_split(digits, classes=[6, 8, 9], forget_class=2, test_fraction=0.5, val_fraction=0.1)
    y = digits.train.y.numpy()
    assert set(y[s.forget]) == {9}
    n_left = int(((y == 9) & ~np.isin(np.arange(len(y)), np.concatenate([s.val, s.test]))).sum())
    assert len(s.forget) == int(np.floor(0.5 * n_left + 0.5))
    assert int((y[s.retain] == 9).sum()) == n_left - len(s.forget)


def test_class_forget_is_whole_class(digits):
    s = make_split(digits, classes=5, forget="class", forget_class=3, test_fraction=0.5, val_fraction=0.2)
    y = digits.train.y.numpy()
    assert set(y[s.forget]) == {3} and 3 not in set(y[s.retain])
    cls3 = np.flatnonzero(y == 3)
    assert np.array_equal(np.sort(np.concatenate([s.forget, s.val[y[s.val] == 3], s.test[y[s.test] == 3]])), cls3)


def test_forget_count_exact_and_overrides_default_fraction(synth):
    s = make_split(synth, forget_count=13)
    assert len(s.forget) == 13 and set(ylab(synth, s.forget)) == {0}
    s1 = make_split(synth, forget_count=60)  # the whole class is allowed
    assert len(s1.forget) == 60
    s2 = make_split(synth, forget_fraction=1.0)
    assert np.array_equal(s1.forget, s2.forget)
    s3 = make_split(synth, forget_fraction=0.25)
    assert len(s3.forget) == 15


def test_forget_file_list_and_object(synth, tmp_path):
    chosen = [int(i) for i in np.flatnonzero(synth.train.y.numpy() == 2)[:3]] + [0]
    p = tmp_path / "f.json"
    p.write_text(json.dumps(chosen))
    s = make_split(synth, forget="file", forget_file=p)
    assert s.forget.tolist() == sorted(chosen)
    assert len(s.forget) + len(s.retain) == len(synth.train)
    p2 = tmp_path / "g.json"
    p2.write_text(json.dumps({"forget": chosen, "note": "x"}))
    assert make_split(synth, forget="file", forget_file=p2) == s


# ------------------------------------------------------------------------------------------ JSON


def test_save_load_round_trip(digits, tmp_path):
    s = make_split(digits, classes=[1, 0, 3], test_fraction=0.5, val_fraction=0.2, seed=9)
    path = s.save(tmp_path / "run" / "split.json")
    t = Split.load(path)
    assert t == s and arrays_equal(t, s) and t.digest() == s.digest()
    assert t.classes == (1, 0, 3) and t.seed == 9 and t.fingerprint == digits.fingerprint
    assert t.test_from == "train"
    d = json.loads(path.read_text())
    assert d["forget"] == s.forget.tolist() and d["fingerprint"] == digits.fingerprint
    assert Split.from_json(json.loads(json.dumps(s.to_json()))) == s
    assert torch.equal(t.data(digits).retain.x, s.data(digits).retain.x)
    # the digest depends on content
    other = Split.from_json({**s.to_json(), "seed": 10})
    assert other.digest() != s.digest() and other != s
    assert len(s.digest()) == 64


def test_split_copies_and_validates():
    a = np.array([5, 1])
    s = Split(a, [2, 3], [], [], (0,), 0, "x")
    a[0] = 7
    assert s.forget.tolist() == [5, 1] and s.forget.dtype == np.int64 and s.val.dtype == np.int64
    with pytest.raises(ValueError, match="overlap"):
        Split([1, 2], [2, 3], [], [], (0,), 0, "x")
    with pytest.raises(ValueError, match="missing keys"):
        Split.from_json({"forget": []})


# ------------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    "kw, msg",
    [
        (dict(forget_class=6), r"forget_class=6.*6 kept classes"),
        (dict(classes=3, forget_class=3), r"forget_class=3.*0\.\.2"),
        (dict(forget_class=-1), "forget_class=-1"),
        (dict(classes=[0, 9]), r"classes \[9\] not in the source.*0\.\.5"),
        (dict(classes=7), r"classes=7.*between 1 and 6"),
        (dict(classes=[1, 1]), "twice"),
        (dict(forget_fraction=0.001), "empty forget set"),
        (dict(forget_fraction=0.0), r"forget_fraction=0.0.*\(0, 1\]"),
        (dict(forget_fraction=1.5), r"forget_fraction=1.5.*\(0, 1\]"),
        (dict(forget_fraction=None), "forget_fraction or forget_count"),
        (dict(forget_count=61), "forget_count=61 but class 0 .* has only 60"),
        (dict(val_fraction=0.5, forget_count=31), "forget_count=31 but class 0 .* only 30"),
        (dict(forget_count=0), "forget_count=0"),
        (dict(forget_fraction=0.5, forget_count=10), "both forget_fraction=0.5 and forget_count=10"),
        (dict(forget="class", forget_count=3), "only applies to forget='sample'"),
        (dict(forget="random"), "forget='random'"),
        (dict(forget="file"), "needs forget_file"),
        (dict(train_per_class=61), r"train_per_class=61 .* class 0 .* only 60"),
        (dict(test_per_class=21), r"test_per_class=21 .* only 20"),
        (dict(train_per_class=0), "train_per_class=0"),
        (dict(test_fraction=0.5), "official test set"),
        (dict(val_fraction=1.0), r"val_fraction=1.0.*\[0, 1\)"),
        (dict(seed=-1), "seed=-1"),
    ],
)
def test_errors(synth, kw, msg):
    with pytest.raises(ValueError, match=msg):
        make_split(synth, **kw)


def test_empty_forget_when_class_has_no_training_samples(synth):
    # a val hold-out that takes (almost) everything leaves nothing to forget
    with pytest.raises(ValueError, match="empty forget set.*0 kept"):
        make_split(synth, train_per_class=1, val_fraction=0.6, forget="class")


def test_test_fraction_range(digits):
    with pytest.raises(ValueError, match=r"test_fraction=1.0.*\(0, 1\)"):
        make_split(digits, test_fraction=1.0)


def test_forget_file_errors(synth, tmp_path):
    y = synth.train.y.numpy()
    outside = [int(i) for i in np.flatnonzero(y == 5)[:3]]
    p = tmp_path / "f.json"
    p.write_text(json.dumps([int(np.flatnonzero(y == 0)[0])] + outside))
    with pytest.raises(ValueError, match=r"3 indices are not in the kept training set.*" + str(outside[0])):
        make_split(synth, classes=3, forget="file", forget_file=p)
    p.write_text(json.dumps([10_000]))
    with pytest.raises(ValueError, match=r"not in the kept training set.*\[10000\]"):
        make_split(synth, forget="file", forget_file=p)
    s = make_split(synth, val_fraction=0.2)
    p.write_text(json.dumps(s.val[:2].tolist()))
    with pytest.raises(ValueError, match="2 of them are in the validation hold-out"):
        make_split(synth, val_fraction=0.2, forget="file", forget_file=p)
    p.write_text("[]")
    with pytest.raises(ValueError, match="empty forget set"):
        make_split(synth, forget="file", forget_file=p)
    p.write_text(json.dumps({"indices": [1]}))
    with pytest.raises(ValueError, match="'forget' key"):
        make_split(synth, forget="file", forget_file=p)
    p.write_text(json.dumps([1.5]))
    with pytest.raises(ValueError, match="integer"):
        make_split(synth, forget="file", forget_file=p)
    with pytest.raises(ValueError, match="use forget='file'"):
        make_split(synth, forget_file=p)


# ------------------------------------------------------------------------------------------ scenarios


def test_digits5_scenario_shape(digits):
    s = make_split(digits, classes=5, test_fraction=0.5)
    d = s.data(digits)
    assert len(d.forget) + len(d.retain) + len(d.test) == int((digits.train.y < 5).sum())
    assert d.retain.y.unique().tolist() == [0, 1, 2, 3, 4] and d.test.y.unique().tolist() == [0, 1, 2, 3, 4]


def test_fmnist5_scenario_counts():
    if not all((FMNIST_DIR / f).is_file() for f in ("train-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz")):
        pytest.skip(f"Fashion-MNIST not installed at {FMNIST_DIR} (apt-get install dataset-fashion-mnist)")
    src = load_source("fmnist")
    s = make_split(src, classes=5, train_per_class=200, test_per_class=200, forget_count=100)
    assert (len(s.forget), len(s.retain), len(s.val), len(s.test)) == (100, 900, 0, 1000)
    d = s.data(src)
    assert d.train.y.bincount().tolist() == [200] * 5 and d.test.y.bincount().tolist() == [200] * 5
    assert make_split(src, classes=5, train_per_class=200, test_per_class=200).forget.tolist() == s.forget.tolist()
