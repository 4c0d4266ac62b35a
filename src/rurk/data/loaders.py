"""Offline data sources (evaluation.md §5). Nothing here ever downloads.

Every loader returns a :class:`Source`: the source's own train and test sets as :class:`TensorData`
(``x`` float32 in [0,1], NCHW, or N×F for tabular data; ``y`` int64; ``index`` = position in the source's own
train/test arrays, i.e. ``arange(N)``), the class names, and a short ``fingerprint`` (sha256 over the raw source
files' bytes, or over the arrays for bundled/generated data) so that splits can be tied to the exact data.

Sources: ``digits``, ``iris`` (scikit-learn, all in ``train``, empty ``test``), ``fmnist`` (idx files),
``cifar10`` / ``cifar100`` (python-version pickle batches, read with a restricted unpickler),
``imagefolder`` (needs torchvision) and ``synthetic``.
"""

from __future__ import annotations

import codecs
import gzip
import hashlib
import io
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .tensordata import TensorData

__all__ = [
    "Source",
    "SOURCES",
    "load_source",
    "read_idx",
    "restricted_pickle_load",
    "FMNIST_SYSTEM_DIR",
    "FMNIST_FILES",
    "BUNDLED",
]

#: Sources that read no files (bundled with scikit-learn, or generated): a data directory given for them is refused.
BUNDLED = frozenset({"digits", "iris", "synthetic"})

FINGERPRINT_CHARS = 16

FMNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
FMNIST_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
FMNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
CIFAR10_CLASSES = [
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
]


@dataclass(frozen=True)
class Source:
    """A loaded data source: its own train/test sets, class names and a short content fingerprint."""

    name: str
    train: TensorData
    test: TensorData
    classes: list[str]
    fingerprint: str

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __repr__(self) -> str:  # the default would print whole tensors
        return (
            f"Source(name={self.name!r}, train={len(self.train)}×{tuple(self.train.x.shape[1:])}, "
            f"test={len(self.test)}, classes={len(self.classes)}, fingerprint={self.fingerprint!r})"
        )


# ----------------------------------------------------------------------------------------------- helpers


def _tensordata(x: np.ndarray, y: np.ndarray) -> TensorData:
    """float32 x (already in [0,1]), int64 y, index = arange(N)."""
    x_t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    y_t = torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64))
    return TensorData(x_t, y_t, torch.arange(len(y_t), dtype=torch.int64))


def _empty_like(train: TensorData) -> TensorData:
    return TensorData(
        train.x.new_zeros((0, *train.x.shape[1:])),
        torch.zeros(0, dtype=torch.int64),
        torch.zeros(0, dtype=torch.int64),
    )


def _fingerprint_arrays(name: str, *arrays: np.ndarray) -> str:
    h = hashlib.sha256(name.encode())
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:FINGERPRINT_CHARS]


def _fingerprint_blobs(name: str, blobs: list[tuple[str, bytes]]) -> str:
    """sha256 over (file name, file bytes) pairs, in the given order."""
    h = hashlib.sha256(name.encode())
    for fname, data in blobs:
        h.update(fname.encode() + b"\0" + len(data).to_bytes(8, "big"))
        h.update(data)
    return h.hexdigest()[:FINGERPRINT_CHARS]


def _u8_to_unit(a: np.ndarray) -> np.ndarray:
    return a.astype(np.float32) / np.float32(255.0)


# ----------------------------------------------------------------------------------------------- sklearn


def _load_digits(data_dir=None) -> Source:
    """scikit-learn's bundled 8×8 digits: 1,797 images, values 0–16 divided by 16, shape N×1×8×8.
    No official test split: everything is ``train``; ``make_split(test_fraction=0.5)`` carves the test set."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.asarray(d.images, dtype=np.float64)
    target = np.asarray(d.target, dtype=np.int64)
    x = (images / 16.0).astype(np.float32)[:, None, :, :]
    train = _tensordata(x, target)
    return Source("digits", train, _empty_like(train), [str(i) for i in range(10)],
                  _fingerprint_arrays("digits", images, target))


def _load_iris(data_dir=None) -> Source:
    """scikit-learn's Iris: 150×4 features, min-max scaled per feature to [0,1] over all 150 samples.
    No official test split: everything is ``train``."""
    from sklearn.datasets import load_iris

    d = load_iris()
    feats = np.asarray(d.data, dtype=np.float64)
    target = np.asarray(d.target, dtype=np.int64)
    lo, hi = feats.min(axis=0), feats.max(axis=0)
    x = ((feats - lo) / np.where(hi > lo, hi - lo, 1.0)).astype(np.float32)
    train = _tensordata(x, target)
    return Source("iris", train, _empty_like(train), [str(n) for n in d.target_names],
                  _fingerprint_arrays("iris", feats, target))


# ----------------------------------------------------------------------------------------------- idx / fmnist


def read_idx(source: str | Path | bytes) -> np.ndarray:
    """Parse an idx file (optionally gzip-compressed; detected by its magic bytes) into a uint8 array.

    Format: bytes 0–1 zero, byte 2 the type code (only 0x08 = uint8 is accepted), byte 3 the number of dims;
    then each dim as a 4-byte big-endian int; then exactly prod(dims) bytes of data.
    ``source`` is a path or the file's raw bytes."""
    if isinstance(source, (bytes, bytearray)):
        raw, what = bytes(source), "idx data"
    else:
        raw, what = Path(source).read_bytes(), str(source)
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise ValueError(f"{what}: corrupt gzip stream ({e})") from e
    if len(raw) < 4:
        raise ValueError(f"{what}: {len(raw)} bytes, too short for an idx header (4 bytes)")
    if raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{what}: bad idx magic {raw[:4].hex()}; expected 0000 followed by type and ndim")
    if raw[2] != 0x08:
        raise ValueError(f"{what}: idx type code 0x{raw[2]:02x}; only 0x08 (unsigned byte) is supported")
    ndim = raw[3]
    if ndim == 0:
        raise ValueError(f"{what}: idx header says 0 dimensions")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{what}: truncated idx header ({len(raw)} bytes, need {header} for {ndim} dims)")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    n = int(np.prod(dims, dtype=np.int64))
    if len(raw) - header != n:
        raise ValueError(f"{what}: idx dims {dims} need {n} data bytes but the file has {len(raw) - header}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims).copy()


def _fmnist_dirs(data_dir) -> list[Path]:
    """Where the files are looked for: ``data_dir`` and ``data_dir/fashion-mnist`` when a directory is given (only
    those: a given directory without the files used to be passed over for the system copy without a word), else
    the system directory."""
    if data_dir is not None:
        return [Path(data_dir), Path(data_dir) / "fashion-mnist"]
    return [Path(FMNIST_SYSTEM_DIR)]


def _find_fmnist_files(data_dir) -> list[Path]:
    """First directory holding all four files (``name.gz``, or ``name`` without ``.gz``)."""
    dirs = _fmnist_dirs(data_dir)
    for d in dirs:
        found = []
        for fname in FMNIST_FILES:
            for cand in (d / fname, d / fname[: -len(".gz")]):
                if cand.is_file():
                    found.append(cand)
                    break
        if len(found) == len(FMNIST_FILES):
            return found
    where = "--data-dir (data.data_dir)" if data_dir is not None else "the system directory"
    raise FileNotFoundError(
        f"{where} = {str(dirs[0])!r}: expected the four Fashion-MNIST files {', '.join(FMNIST_FILES)} (or "
        f"without .gz) in {' or '.join(map(str, dirs))}. Get them with `apt-get install dataset-fashion-mnist` "
        f"(installs them under {FMNIST_SYSTEM_DIR}, used when no --data-dir is given), or pass --data-dir pointing "
        "at a directory that holds them. rurk never downloads data."
    )


def _load_fmnist(data_dir=None) -> Source:
    """Fashion-MNIST from the four original idx files: 60,000 + 10,000 images, shape N×1×28×28, /255.
    Looked for in ``data_dir`` (and ``data_dir/fashion-mnist``) when given, else in
    ``/usr/share/datasets/fashion-mnist``."""
    paths = _find_fmnist_files(data_dir)
    blobs = [(p.name, p.read_bytes()) for p in paths]
    arrays = [read_idx(b) for _, b in blobs]
    x_tr, y_tr, x_te, y_te = arrays
    for (fname, _), a, ndim in zip(blobs, arrays, (3, 1, 3, 1)):
        if a.ndim != ndim or (ndim == 3 and a.shape[1:] != (28, 28)):
            raise ValueError(f"fmnist: {fname} has shape {a.shape}; expected "
                             + ("N×28×28 images" if ndim == 3 else "N labels"))
    for split, x, y in (("train", x_tr, y_tr), ("t10k", x_te, y_te)):
        if len(x) != len(y):
            raise ValueError(f"fmnist: {split} has {len(x)} images but {len(y)} labels")
        if len(y) and y.max() > 9:
            raise ValueError(f"fmnist: {split} labels contain {int(y.max())}; expected 0..9")
    train = _tensordata(_u8_to_unit(x_tr)[:, None], y_tr.astype(np.int64))
    test = _tensordata(_u8_to_unit(x_te)[:, None], y_te.astype(np.int64))
    return Source("fmnist", train, test, list(FMNIST_CLASSES), _fingerprint_blobs("fmnist", blobs))


# ----------------------------------------------------------------------------------------------- cifar


def _numpy_globals() -> dict[tuple[str, str], object]:
    """The only globals the CIFAR unpickler resolves: what numpy needs to rebuild a plain ndarray."""
    try:
        from numpy._core.multiarray import _reconstruct
        from numpy._core.numeric import _frombuffer
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]
        from numpy.core.numeric import _frombuffer  # type: ignore[no-redef]
    allowed: dict[tuple[str, str], object] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for mod in ("numpy.core", "numpy._core"):
        allowed[(f"{mod}.multiarray", "_reconstruct")] = _reconstruct
        # pickle protocol 5 (Python >= 3.14's default) rebuilds arrays via _frombuffer(buf, dtype, shape, order)
        allowed[(f"{mod}.numeric", "_frombuffer")] = _frombuffer
    # batches re-pickled under Python 3 with protocol 2 store bytes as _codecs.encode(str, "latin1"); encoding a
    # string is harmless (torch's weights-only unpickler allows it too)
    allowed[("_codecs", "encode")] = codecs.encode
    return allowed


class UnsafePickleError(ValueError):
    """A data file asked for a global the restricted unpickler does not allow (it is refused, never run)."""


class _RestrictedUnpickler(pickle.Unpickler):
    """Refuses every global except the numpy array/dtype constructors (no code execution from data files)."""

    _allowed = _numpy_globals()

    def find_class(self, module, name):
        obj = self._allowed.get((module, name))
        if obj is None:
            raise UnsafePickleError(
                f"refusing to load global {module}.{name}: data files may only contain dicts, lists, bytes "
                "and numpy arrays"
            )
        return obj


def restricted_pickle_load(data: bytes, what: str = "pickle"):
    """Unpickle ``data`` (``encoding="bytes"``) allowing only plain containers and numpy arrays."""
    try:
        return _RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
    except UnsafePickleError as e:
        raise UnsafePickleError(f"{what}: {e}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            MemoryError, OverflowError) as e:
        raise ValueError(f"{what}: not a valid pickle, or truncated ({type(e).__name__}: {e})") from None


def _str_keys(d, what: str) -> dict:
    if not isinstance(d, dict):
        raise ValueError(f"{what}: expected a dict at the top level, got {type(d).__name__}")
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in d.items()}


def _cifar_batch(blob: bytes, what: str, label_key: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    d = _str_keys(restricted_pickle_load(blob, what), what)
    for key in ("data", label_key):
        if key not in d:
            raise ValueError(f"{what}: missing key {key!r} (found keys {sorted(map(str, d))})")
    data = d["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        desc = f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise ValueError(f"{what}: key 'data' holds a {desc}; expected an N×3072 uint8 array")
    try:
        labels = np.asarray(d[label_key])
    except Exception as e:  # noqa: BLE001 - anything odd inside the list
        raise ValueError(f"{what}: key {label_key!r} is not a list of ints ({e})") from e
    if labels.ndim != 1 or len(labels) != len(data) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{what}: key {label_key!r} has shape {labels.shape} dtype {labels.dtype}; "
                         f"expected {len(data)} integer labels (one per row of 'data')")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"{what}: key {label_key!r} has labels in [{labels.min()}, {labels.max()}]; "
                         f"expected 0..{num_classes - 1}")
    return data, labels.astype(np.int64)


def _cifar_dir(name: str, data_dir, subdir: str, required: list[str]) -> Path:
    how = (f"Download the CIFAR 'python version' archive yourself (https://www.cs.toronto.edu/~kriz/cifar.html), "
           f"extract it, and pass --data-dir pointing at the extracted {subdir}/ directory or its parent. "
           "rurk never downloads data.")
    if data_dir is None:
        raise FileNotFoundError(f"{name} needs a data directory (--data-dir) holding {', '.join(required)}. {how}")
    dirs = [Path(data_dir), Path(data_dir) / subdir]
    for d in dirs:
        if all((d / f).is_file() for f in required):
            return d
    looked = "; ".join(str(d) for d in dirs)
    raise FileNotFoundError(f"{name} files not found. Looked in: {looked}. Expected files: "
                            f"{', '.join(required)}. {how}")


def _cifar_meta(path: Path, key: str, n: int) -> tuple[list[str], bytes | None]:
    if not path.is_file():
        return [], None
    blob = path.read_bytes()
    d = _str_keys(restricted_pickle_load(blob, str(path)), str(path))
    names = d.get(key)
    if not isinstance(names, (list, tuple)) or len(names) != n:
        raise ValueError(f"{path}: key {key!r} should be a list of {n} class names")
    return [x.decode("utf-8") if isinstance(x, bytes) else str(x) for x in names], blob


def _load_cifar(name: str, data_dir, subdir: str, train_files: list[str], test_file: str, meta_file: str,
                label_key: str, names_key: str, num_classes: int, default_names: list[str]) -> Source:
    d = _cifar_dir(name, data_dir, subdir, train_files + [test_file])
    blobs: list[tuple[str, bytes]] = []
    parts = []
    for f in train_files + [test_file]:
        blob = (d / f).read_bytes()
        blobs.append((f, blob))
        parts.append(_cifar_batch(blob, str(d / f), label_key, num_classes))
    names, meta_blob = _cifar_meta(d / meta_file, names_key, num_classes)  # optional
    if meta_blob is not None:
        blobs.append((meta_file, meta_blob))
    x_tr = np.concatenate([p[0] for p in parts[:-1]])
    y_tr = np.concatenate([p[1] for p in parts[:-1]])
    x_te, y_te = parts[-1]
    train = _tensordata(_u8_to_unit(x_tr).reshape(-1, 3, 32, 32), y_tr)
    test = _tensordata(_u8_to_unit(x_te).reshape(-1, 3, 32, 32), y_te)
    return Source(name, train, test, names or list(default_names), _fingerprint_blobs(name, blobs))


def _load_cifar10(data_dir=None) -> Source:
    """CIFAR-10 python batches ``data_batch_1..5`` + ``test_batch`` (+ ``batches.meta`` for names), from
    ``data_dir`` or ``data_dir/cifar-10-batches-py``. N×3×32×32, /255. Train index = position in the
    concatenation data_batch_1..5."""
    return _load_cifar("cifar10", data_dir, "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)],
                       "test_batch", "batches.meta", "labels", "label_names", 10, CIFAR10_CLASSES)


def _load_cifar100(data_dir=None) -> Source:
    """CIFAR-100 python files ``train`` + ``test`` (+ ``meta`` for names), fine labels, from ``data_dir`` or
    ``data_dir/cifar-100-python``. N×3×32×32, /255."""
    return _load_cifar("cifar100", data_dir, "cifar-100-python", ["train"], "test", "meta",
                       "fine_labels", "fine_label_names", 100, [f"class_{i}" for i in range(100)])


# ----------------------------------------------------------------------------------------------- imagefolder


def _load_imagefolder(data_dir=None, image_size: int = 224) -> Source:
    """A user ImageFolder tree ``data_dir/train/<class>/*`` and ``data_dir/val/<class>/*`` (val = test),
    resized to ``image_size``² and held in memory as float32 (≈0.6 MB per image at 224: fine for
    subsets, too large for all of ImageNet-100 on most machines). Needs torchvision + pillow."""
    try:
        from torchvision import datasets, transforms
    except ImportError as e:
        raise ImportError("the 'imagefolder' source needs torchvision and pillow: pip install 'rurk[vision]'") from e
    if data_dir is None:
        raise FileNotFoundError("imagefolder needs --data-dir with train/<class>/* and val/<class>/*")
    root = Path(data_dir)
    tf = transforms.Compose([transforms.Resize((image_size, image_size)), transforms.ToTensor()])
    tr = datasets.ImageFolder(str(root / "train"), transform=tf)
    va = datasets.ImageFolder(str(root / "val"), transform=tf)
    if va.classes != tr.classes:
        raise ValueError(f"imagefolder: val classes {va.classes[:5]}... differ from train classes {tr.classes[:5]}...")
    h = hashlib.sha256(b"imagefolder" + str(image_size).encode())
    out = []
    for ds in (tr, va):
        xs, ys = [], []
        for i, (path, label) in enumerate(ds.samples):
            h.update(str(Path(path).relative_to(root)).encode() + b"\0" + Path(path).read_bytes())
            xs.append(ds[i][0])
            ys.append(label)
        x = torch.stack(xs) if xs else torch.zeros(0, 3, image_size, image_size)
        out.append(TensorData(x.float(), torch.tensor(ys, dtype=torch.int64), torch.arange(len(ys))))
    return Source("imagefolder", out[0], out[1], list(tr.classes), h.hexdigest()[:FINGERPRINT_CHARS])


# ----------------------------------------------------------------------------------------------- synthetic


def _load_synthetic(data_dir=None, shape=(3, 32, 32), num_classes: int = 10, n_train: int = 1000,
                    n_test: int = 200, seed: int = 0) -> Source:
    """Uniform random images in [0,1) with random labels, deterministic in ``seed``. Labels are a shuffled
    balanced assignment (class counts differ by at most one) so per-class splits always work (decision)."""
    shape = tuple(int(s) for s in shape)
    if num_classes < 1 or n_train < 0 or n_test < 0 or any(s < 1 for s in shape):
        raise ValueError(f"synthetic: bad arguments shape={shape} num_classes={num_classes} "
                         f"n_train={n_train} n_test={n_test}")
    rng = np.random.default_rng(seed)
    x_tr = rng.random((n_train, *shape), dtype=np.float32)
    y_tr = rng.permutation(np.arange(n_train) % num_classes)
    x_te = rng.random((n_test, *shape), dtype=np.float32)
    y_te = rng.permutation(np.arange(n_test) % num_classes)
    return Source("synthetic", _tensordata(x_tr, y_tr), _tensordata(x_te, y_te),
                  [f"class_{i}" for i in range(num_classes)],
                  _fingerprint_arrays("synthetic", x_tr, y_tr, x_te, y_te))


# ----------------------------------------------------------------------------------------------- registry


SOURCES: dict[str, Callable[..., Source]] = {
    "digits": _load_digits,
    "iris": _load_iris,
    "fmnist": _load_fmnist,
    "cifar10": _load_cifar10,
    "cifar100": _load_cifar100,
    "imagefolder": _load_imagefolder,
    "synthetic": _load_synthetic,
}


def load_source(name: str, data_dir: str | Path | None = None, **kw) -> Source:
    """Load a data source by name (see :data:`SOURCES`). ``data_dir`` is where user-supplied files live;
    extra keyword arguments go to the loader (``synthetic``: shape, num_classes, n_train, n_test, seed;
    ``imagefolder``: image_size)."""
    try:
        loader = SOURCES[name]
    except KeyError:
        raise ValueError(f"unknown data source {name!r}; known sources: {', '.join(sorted(SOURCES))}") from None
    return loader(data_dir, **kw)
