"""Loaders: sklearn sources, idx parsing / Fashion-MNIST, CIFAR pickles (fake batches only), synthetic."""

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from rurk.data import SOURCES, Source, TensorData, load_source, read_idx
from rurk.data import loaders

FMNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
HAVE_FMNIST = all((FMNIST_DIR / f).is_file() for f in loaders.FMNIST_FILES)


def idx_bytes(arr: np.ndarray) -> bytes:
    """Hand-written idx encoding: 0x00 0x00 0x08 ndim, big-endian uint32 dims, uint8 data."""
    arr = np.asarray(arr, dtype=np.uint8)
    return bytes([0, 0, 0x08, arr.ndim]) + b"".join(struct.pack(">I", d) for d in arr.shape) + arr.tobytes()


# ------------------------------------------------------------------------------------------ registry


def test_registry_and_unknown_source():
    assert {"digits", "iris", "fmnist", "cifar10", "cifar100", "imagefolder", "synthetic"} <= set(SOURCES)
    with pytest.raises(ValueError, match="unknown data source 'mnist'.*cifar10.*digits.*fmnist"):
        load_source("mnist")


# ------------------------------------------------------------------------------------------ sklearn


def test_digits():
    s = load_source("digits")
    assert isinstance(s, Source) and s.name == "digits"
    assert s.train.x.shape == (1797, 1, 8, 8) and s.train.x.dtype == torch.float32
    assert s.train.y.dtype == torch.int64 and s.train.index.dtype == torch.int64
    assert float(s.train.x.min()) == 0.0 and float(s.train.x.max()) == 1.0
    assert sorted(s.train.y.unique().tolist()) == list(range(10))
    assert torch.equal(s.train.index, torch.arange(1797))
    assert len(s.test) == 0 and s.test.x.shape == (0, 1, 8, 8)
    assert s.classes == [str(i) for i in range(10)]
    # values are the sklearn images / 16, in order
    from sklearn.datasets import load_digits

    d = load_digits()
    assert torch.equal(s.train.x[:, 0], torch.from_numpy((d.images / 16).astype(np.float32)))
    assert torch.equal(s.train.y, torch.from_numpy(d.target.astype(np.int64)))
    # fingerprint: short hex, stable across loads
    assert len(s.fingerprint) == 16 and int(s.fingerprint, 16) >= 0
    assert load_source("digits").fingerprint == s.fingerprint


def test_iris():
    s = load_source("iris")
    assert s.train.x.shape == (150, 4) and s.train.x.dtype == torch.float32
    assert torch.equal(s.train.x.min(0).values, torch.zeros(4))
    assert torch.equal(s.train.x.max(0).values, torch.ones(4))
    assert s.train.y.bincount().tolist() == [50, 50, 50]
    assert len(s.test) == 0 and s.classes == ["setosa", "versicolor", "virginica"]
    assert s.fingerprint != load_source("digits").fingerprint


# ------------------------------------------------------------------------------------------ idx


def test_read_idx_handwritten(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    raw = idx_bytes(arr)
    assert raw[:4] == b"\x00\x00\x08\x03" and raw[4:8] == b"\x00\x00\x00\x02"  # the encoding itself
    (tmp_path / "a.idx").write_bytes(raw)
    (tmp_path / "a.idx.gz").write_bytes(gzip.compress(raw))
    for src in (tmp_path / "a.idx", tmp_path / "a.idx.gz", raw):
        out = read_idx(src)
        assert out.dtype == np.uint8 and out.shape == (2, 3, 4)
        assert np.array_equal(out, arr)
    labels = read_idx(idx_bytes(np.array([7, 0, 255])))
    assert labels.tolist() == [7, 0, 255]


@pytest.mark.parametrize(
    "raw, msg",
    [
        (b"\x01\x00\x08\x01\x00\x00\x00\x01\x05", "magic"),
        (b"\x00\x00\x0d\x01\x00\x00\x00\x01\x05", "type code 0x0d"),
        (b"\x00\x00\x08\x02\x00\x00\x00\x01", "truncated"),
        (b"\x00\x00\x08\x01\x00\x00\x00\x03\x05\x06", "need 3 data bytes but the file has 2"),
        (b"\x00\x00\x08\x01\x00\x00\x00\x01\x05\x06", "need 1 data bytes but the file has 2"),
        (b"\x00\x00", "too short"),
    ],
)
def test_read_idx_rejects_malformed(raw, msg):
    with pytest.raises(ValueError, match=msg):
        read_idx(raw)


def write_fake_fmnist(d: Path, n_train=5, n_test=3, seed=0):
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte.gz": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte.gz": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte.gz": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    d.mkdir(parents=True, exist_ok=True)
    for name, a in arrays.items():
        (d / name).write_bytes(gzip.compress(idx_bytes(a)))
    return arrays


def test_fmnist_from_data_dir_takes_precedence(tmp_path):
    arrays = write_fake_fmnist(tmp_path)
    s = load_source("fmnist", tmp_path)
    assert s.train.x.shape == (5, 1, 28, 28) and s.test.x.shape == (3, 1, 28, 28)
    assert torch.equal(s.train.x[:, 0], torch.from_numpy(arrays["train-images-idx3-ubyte.gz"] / np.float32(255)))
    assert s.train.y.tolist() == arrays["train-labels-idx1-ubyte.gz"].tolist()
    assert s.test.y.tolist() == arrays["t10k-labels-idx1-ubyte.gz"].tolist()
    assert s.classes[0] == "T-shirt/top" and s.classes[9] == "Ankle boot"
    # fingerprint follows the file bytes
    fp = s.fingerprint
    assert load_source("fmnist", tmp_path).fingerprint == fp
    write_fake_fmnist(tmp_path, seed=1)
    assert load_source("fmnist", tmp_path).fingerprint != fp


def test_fmnist_rejects_label_count_mismatch(tmp_path):
    write_fake_fmnist(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.zeros(4))))
    with pytest.raises(ValueError, match="5 images but 4 labels"):
        load_source("fmnist", tmp_path)


def test_fmnist_missing_lists_dirs_files_and_remedy(tmp_path, monkeypatch):
    system = tmp_path / "no-system-dir"
    monkeypatch.setattr(loaders, "FMNIST_SYSTEM_DIR", system)
    user = tmp_path / "user"
    user.mkdir()
    (user / "train-images-idx3-ubyte.gz").write_bytes(b"")  # incomplete set: must not be accepted
    with pytest.raises(FileNotFoundError) as ei:
        load_source("fmnist", user)
    msg = str(ei.value)
    assert str(user) in msg and str(system) in msg
    for f in loaders.FMNIST_FILES:
        assert f in msg
    assert "apt-get install dataset-fashion-mnist" in msg and "--data-dir" in msg


@pytest.fixture(scope="module")
def fmnist():
    if not HAVE_FMNIST:
        pytest.skip(f"Fashion-MNIST not installed at {FMNIST_DIR} (apt-get install dataset-fashion-mnist)")
    return load_source("fmnist")


def test_fmnist_real(fmnist):
    s = fmnist
    assert s.train.x.shape == (60000, 1, 28, 28) and s.test.x.shape == (10000, 1, 28, 28)
    assert s.train.x.dtype == torch.float32 and s.train.y.dtype == torch.int64
    assert float(s.train.x.min()) == 0.0 and float(s.train.x.max()) == 1.0
    assert s.train.y.bincount().tolist() == [6000] * 10 and s.test.y.bincount().tolist() == [1000] * 10
    assert s.train.y[:4].tolist() == [9, 0, 0, 3] and s.test.y[:4].tolist() == [9, 2, 1, 1]
    assert abs(float(s.train.x.mean()) - 0.2860) < 1e-3  # the well-known Fashion-MNIST pixel mean
    assert torch.equal(s.test.index, torch.arange(10000))
    assert len(s.fingerprint) == 16


# ------------------------------------------------------------------------------------------ cifar


def dump(path: Path, obj, protocol=None):
    """``protocol="legacy"`` mimics the real (Python 2 era) CIFAR files: no frames, bytes as raw bytes, and numpy
    arrays rebuilt via the old ``numpy.core.multiarray._reconstruct`` name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if protocol == "legacy":
        blob = pickle.dumps(obj, protocol=3)
        blob = blob.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
        assert b"_core" not in blob
        path.write_bytes(blob)
        return
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)


def fake_batch(n, seed, label_key="labels", num_classes=10, bytes_keys=False):
    rng = np.random.default_rng(seed)
    d = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
         label_key: rng.integers(0, num_classes, n).tolist(),
         "batch_label": "fake"}
    if bytes_keys:
        d = {k.encode(): v for k, v in d.items()}
    return d


def write_fake_cifar10(d: Path, protocol=None, bytes_keys=False, meta=True):
    batches = {f"data_batch_{i}": fake_batch(i + 1, i, bytes_keys=bytes_keys) for i in range(1, 6)}
    batches["test_batch"] = fake_batch(4, 99, bytes_keys=bytes_keys)
    for name, b in batches.items():
        dump(d / name, b, protocol)
    if meta:
        names = [f"c{i}".encode() for i in range(10)]
        dump(d / "batches.meta", {b"label_names": names} if bytes_keys else {"label_names": names}, protocol)
    return batches


def _get(b, k):
    return b[k] if k in b else b[k.encode()]


@pytest.mark.parametrize("protocol, bytes_keys", [(None, False), ("legacy", True), (4, False), (5, False)])
def test_cifar10_fake_round_trip(tmp_path, protocol, bytes_keys):
    batches = write_fake_cifar10(tmp_path, protocol, bytes_keys)
    if protocol == "legacy":  # really exercises the old numpy global name
        assert b"cnumpy.core.multiarray\n_reconstruct\n" in (tmp_path / "data_batch_1").read_bytes()
    s = load_source("cifar10", tmp_path)
    train = [batches[f"data_batch_{i}"] for i in range(1, 6)]
    data = np.concatenate([_get(b, "data") for b in train])
    labels = sum((_get(b, "labels") for b in train), [])
    assert s.train.x.shape == (2 + 3 + 4 + 5 + 6, 3, 32, 32) and s.train.x.dtype == torch.float32
    assert torch.equal(s.train.x, torch.from_numpy(data.reshape(-1, 3, 32, 32) / np.float32(255)))
    # channel-major: the first 1024 bytes of a row are the red plane
    assert torch.equal(s.train.x[0, 0].flatten(), torch.from_numpy(data[0, :1024] / np.float32(255)))
    assert s.train.y.tolist() == labels and s.train.y.dtype == torch.int64
    assert torch.equal(s.train.index, torch.arange(20))
    tb = batches["test_batch"]
    assert s.test.y.tolist() == _get(tb, "labels")
    assert torch.equal(s.test.x.reshape(4, -1), torch.from_numpy(_get(tb, "data") / np.float32(255)))
    assert s.classes == [f"c{i}" for i in range(10)]


def test_cifar10_subdir_and_default_names_and_fingerprint(tmp_path):
    sub = tmp_path / "cifar-10-batches-py"
    write_fake_cifar10(sub, meta=False)
    s = load_source("cifar10", tmp_path)
    assert s.classes[:2] == ["airplane", "automobile"] and len(s.train) == 20
    fp = s.fingerprint
    b = fake_batch(4, 100)
    dump(sub / "test_batch", b)
    assert load_source("cifar10", tmp_path).fingerprint != fp


def test_cifar100_fake(tmp_path):
    d = tmp_path / "cifar-100-python"
    tr = fake_batch(7, 1, "fine_labels", 100)
    tr["coarse_labels"] = [0] * 7
    te = fake_batch(3, 2, "fine_labels", 100)
    dump(d / "train", tr)
    dump(d / "test", te)
    dump(d / "meta", {"fine_label_names": [f"f{i}" for i in range(100)]})
    s = load_source("cifar100", tmp_path)
    assert s.train.y.tolist() == tr["fine_labels"] and s.test.y.tolist() == te["fine_labels"]
    assert torch.equal(s.train.x.reshape(7, -1), torch.from_numpy(tr["data"] / np.float32(255)))
    assert len(s.classes) == 100 and s.classes[5] == "f5"


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_cifar_refuses_forbidden_global(tmp_path):
    marker = tmp_path / "pwned"
    write_fake_cifar10(tmp_path)
    b = fake_batch(2, 0)
    b["labels"] = _Evil(marker)
    dump(tmp_path / "data_batch_3", b)
    with pytest.raises(loaders.UnsafePickleError, match=r"refusing to load global (posix|os|nt)\.system"):
        load_source("cifar10", tmp_path)
    assert not marker.exists()
    # the plain restricted loader, too, and also for a harmless-looking non-numpy global
    with pytest.raises(loaders.UnsafePickleError, match="builtins.dict"):
        loaders.restricted_pickle_load(pickle.dumps(dict), "x")
    with pytest.raises(loaders.UnsafePickleError, match="collections.OrderedDict"):
        loaders.restricted_pickle_load(pickle.dumps({"a": __import__("collections").OrderedDict()}), "x")


def test_cifar_batch_repickled_under_python3_protocol2_loads(tmp_path):
    """Protocol 2 stores bytes as _codecs.encode(str, 'latin1'): allowed, and gives the same arrays."""
    write_fake_cifar10(tmp_path)
    b = fake_batch(2, 0)
    b[b"batch_label"] = b"training batch 2 of 5"  # a bytes value, pickled through _codecs.encode
    blob = pickle.dumps(b, protocol=2)
    assert b"_codecs" in blob and b"encode" in blob
    (tmp_path / "data_batch_2").write_bytes(blob)
    s = load_source("cifar10", tmp_path)
    assert len(s.train) == 2 + 2 + 4 + 5 + 6  # batches 1..5 hold 2, 3, 4, 5, 6 images; batch 2 now 2


def test_cli_refuses_bad_cifar_files_in_one_line(tmp_path, capsys):
    from rurk.cli import main

    write_fake_cifar10(tmp_path)
    full = (tmp_path / "data_batch_2").read_bytes()
    (tmp_path / "data_batch_2").write_bytes(full[: len(full) // 2])  # truncated
    args = ["train", "cifar5", "--data-dir", str(tmp_path), "--out", str(tmp_path / "runs"), "--quiet"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "data_batch_2" in err and "truncated" in err and "Traceback" not in err
    marker = tmp_path / "pwned"
    b = fake_batch(2, 0)
    b["labels"] = _Evil(marker)
    dump(tmp_path / "data_batch_2", b)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "refusing to load global" in err and "Traceback" not in err and not marker.exists()


@pytest.mark.parametrize(
    "mutate, msg",
    [
        (lambda b: b.pop("labels"), "missing key 'labels'"),
        (lambda b: b.pop("data"), "missing key 'data'"),
        (lambda b: b.__setitem__("data", b["data"][:, :100]), "key 'data'.*N×3072 uint8"),
        (lambda b: b.__setitem__("data", b["data"].astype(np.float32)), "key 'data'.*float32"),
        (lambda b: b.__setitem__("labels", b["labels"][:-1]), "key 'labels'.*expected 2 integer labels"),
        (lambda b: b.__setitem__("labels", [0, 10]), r"key 'labels'.*\[0, 10\].*0..9"),
    ],
)
def test_cifar_malformed_batch(tmp_path, mutate, msg):
    write_fake_cifar10(tmp_path)
    b = fake_batch(2, 0)
    mutate(b)
    dump(tmp_path / "data_batch_2", b)
    with pytest.raises(ValueError, match=msg) as ei:
        load_source("cifar10", tmp_path)
    assert "data_batch_2" in str(ei.value)


def test_cifar_not_a_dict(tmp_path):
    write_fake_cifar10(tmp_path)
    dump(tmp_path / "test_batch", [1, 2])
    with pytest.raises(ValueError, match="test_batch: expected a dict"):
        load_source("cifar10", tmp_path)


def test_cifar_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="data_batch_1.*test_batch"):
        load_source("cifar10")
    write_fake_cifar10(tmp_path)
    (tmp_path / "data_batch_4").unlink()
    with pytest.raises(FileNotFoundError) as ei:
        load_source("cifar10", tmp_path)
    msg = str(ei.value)
    assert str(tmp_path) in msg and "cifar-10-batches-py" in msg and "data_batch_5" in msg and "test_batch" in msg
    with pytest.raises(FileNotFoundError, match="train, test"):
        load_source("cifar100", tmp_path)


# ------------------------------------------------------------------------------------------ synthetic / vision


def test_synthetic_deterministic():
    a = load_source("synthetic", shape=(1, 8, 8), num_classes=4, n_train=40, n_test=12, seed=3)
    b = load_source("synthetic", shape=(1, 8, 8), num_classes=4, n_train=40, n_test=12, seed=3)
    c = load_source("synthetic", shape=(1, 8, 8), num_classes=4, n_train=40, n_test=12, seed=4)
    assert a.train.x.shape == (40, 1, 8, 8) and a.test.x.shape == (12, 1, 8, 8)
    assert a.train.x.dtype == torch.float32 and 0 <= float(a.train.x.min()) and float(a.train.x.max()) < 1
    for f in ("x", "y", "index"):
        assert torch.equal(getattr(a.train, f), getattr(b.train, f))
        assert torch.equal(getattr(a.test, f), getattr(b.test, f))
    assert a.fingerprint == b.fingerprint != c.fingerprint
    assert not torch.equal(a.train.x, c.train.x)
    assert a.train.y.bincount().tolist() == [10] * 4 and a.test.y.bincount().tolist() == [3] * 4
    assert not torch.equal(a.train.y, torch.arange(40) % 4)  # shuffled, not in order
    d = load_source("synthetic")
    assert d.train.x.shape[1:] == (3, 32, 32) and len(d.classes) == 10


def test_imagefolder_needs_torchvision(tmp_path):
    try:
        import torchvision  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match=r"pip install 'rurk\[vision\]'"):
            load_source("imagefolder", tmp_path)
    else:
        pytest.skip("torchvision is installed; the import-error path cannot be exercised")


def test_tensordata_reexported():
    from rurk.data.tensordata import TensorData as T

    assert TensorData is T
