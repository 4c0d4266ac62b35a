"""Seeded, saveable forget/retain/val/test splits of a :class:`~rurk.data.loaders.Source`.

A :class:`Split` is nothing but index arrays (plus the kept classes, the split seed and the source fingerprint),
so it can be written as JSON next to the checkpoints and reapplied to the exact same data later.

``make_split`` order of operations (each step only sees what the previous steps kept):

1. **Choose classes**: ``None`` = all, ``k`` = the first ``k`` source classes, or an explicit list of source
   class ids. Labels are remapped to ``0..k-1`` in that order.
2. **Test carve-out** (only for sources without an official test set, e.g. digits/iris, and only when
   ``test_fraction`` is given): per class, a seeded ``round(test_fraction · n_c)`` of the training samples
   become the test set (then ``Split.test_from == "train"``).
3. **Per-class subsets**: per class, a seeded random ``train_per_class`` training and ``test_per_class`` test
   samples (``None`` = all).
4. **Validation hold-out**: per class, a seeded ``round(val_fraction · n_c)`` of the kept training samples.
5. **Calibration set** (``calib_count`` > 0, ``forget="sample"`` only): per forget-set class, a seeded
   ``calib_count`` of the class's source-train images that the split does not use (left out by
   ``train_per_class``, e.g. the unused Fashion-MNIST training images), else from the class's validation
   hold-out (CIFAR-10's 20%; they leave val), else held out of the class's kept training samples (digits: a held-out part). Neither model ever trains on
   them and they are never test images: calibrated stopping (:mod:`rurk.methods._calibrate`) estimates Re-train's
   accuracy on the forget set from them.
6. **Forget selection** among the remaining training samples:
   ``"sample"`` = a seeded ``round(forget_fraction · n)`` (or exactly ``forget_count``) of the ``n`` remaining
   samples of kept class ``forget_class``; ``"class"`` = all of them; ``"file"`` = the source-train indices
   listed in a JSON file.
7. **Retain** = every remaining training sample not in the forget set.

So forget, retain and val are disjoint and their union is the kept training set; calib is disjoint from all
of them and from test. Every output array is sorted.

Randomness (decision): each random choice uses its own generator ``numpy.random.default_rng([seed, stage,
class_id])``. The same source + arguments + seed therefore give identical arrays, and one class's
draw does not depend on which other classes are kept or on later steps (e.g. the per-class training subsets of
classes 0-4 are the same whether 5 or 10 classes are kept). ``round`` is round-half-up.
"""

from __future__ import annotations

import hashlib
import json
import operator
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..store import atomic_write
from .loaders import Source
from .tensordata import TensorData

__all__ = ["Split", "SplitData", "make_split"]

SPLIT_FORMAT = "rurk.split/1"

# stage ids for the per-choice generators (see module docstring); never renumber: it would change every split
_TEST_CARVE, _TRAIN_SUBSET, _TEST_SUBSET, _VAL, _FORGET, _CALIB = range(6)


def _ids(a, what: str) -> np.ndarray:
    arr = np.asarray(a)
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"Split.{what}: expected a 1-D array of integer indices, got dtype {arr.dtype} "
                         f"shape {arr.shape}")
    # a private copy; deliberately left writeable (torch.from_numpy warns on read-only arrays)
    return np.array(arr, dtype=np.int64)


@dataclass(frozen=True)
class SplitData:
    """A materialised split: TensorData with labels remapped to ``0..k-1`` and ``index`` = source index."""

    forget: TensorData
    retain: TensorData
    val: TensorData
    test: TensorData
    calib: TensorData | None = None  # held-out images of the forget set's classes (calibrated stopping)

    @property
    def train(self) -> TensorData:
        """S = forget ∪ retain, ordered by source index."""
        both = TensorData.concat(self.forget, self.retain)
        return both.subset(torch.argsort(both.index))


@dataclass(frozen=True, eq=False)
class Split:
    """Index arrays into ``Source.train`` (forget/retain/val) and ``Source.test`` (test; into ``Source.train``
    when ``test_from == "train"``, i.e. the test set was carved from a source without an official one).
    ``classes`` are the kept source class ids in label order; ``seed`` the split seed; ``fingerprint`` the
    Source fingerprint; ``calib`` (into ``Source.train``, possibly empty) the calibration images. Saved as JSON
    next to checkpoints (``calib`` only when non-empty, so splits without one keep their digest)."""

    forget: np.ndarray
    retain: np.ndarray
    val: np.ndarray
    test: np.ndarray
    classes: tuple[int, ...]
    seed: int
    fingerprint: str
    test_from: str = "test"
    calib: np.ndarray = ()

    def __post_init__(self):
        for name in ("forget", "retain", "val", "test", "calib"):
            object.__setattr__(self, name, _ids(getattr(self, name), name))
        object.__setattr__(self, "classes", tuple(int(c) for c in self.classes))
        object.__setattr__(self, "seed", int(self.seed))
        object.__setattr__(self, "fingerprint", str(self.fingerprint))
        if self.test_from not in ("test", "train"):
            raise ValueError(f"Split.test_from={self.test_from!r}; expected 'test' or 'train'")
        if len(set(self.classes)) != len(self.classes):
            raise ValueError(f"Split.classes {self.classes} contains duplicates")
        parts = {"forget": self.forget, "retain": self.retain, "val": self.val, "calib": self.calib}
        names = list(parts)
        for i, a in enumerate(names):
            if len(np.unique(parts[a])) != len(parts[a]):
                raise ValueError(f"Split.{a} contains duplicate indices")
            for b in names[i + 1:]:
                common = np.intersect1d(parts[a], parts[b])
                if len(common):
                    raise ValueError(f"Split.{a} and Split.{b} overlap at source indices {common[:5].tolist()}")
        if self.test_from == "train":
            common = np.intersect1d(self.test, np.concatenate(list(parts.values())))
            if len(common):
                raise ValueError(f"Split.test (carved from train) overlaps training indices {common[:5].tolist()}")

    # ------------------------------------------------------------------ serialisation

    def to_json(self) -> dict:
        extra = {"calib": self.calib.tolist()} if len(self.calib) else {}
        return {
            "format": SPLIT_FORMAT,
            "forget": self.forget.tolist(),
            "retain": self.retain.tolist(),
            "val": self.val.tolist(),
            "test": self.test.tolist(),
            "test_from": self.test_from,
            "classes": list(self.classes),
            "seed": self.seed,
            "fingerprint": self.fingerprint,
            **extra,
        }

    @staticmethod
    def from_json(d: dict) -> "Split":
        if not isinstance(d, dict):
            raise ValueError(f"split JSON must be an object, got {type(d).__name__}")
        fmt = d.get("format", SPLIT_FORMAT)
        if fmt != SPLIT_FORMAT:
            raise ValueError(f"split JSON has format {fmt!r}; this version reads {SPLIT_FORMAT!r}")
        required = ("forget", "retain", "val", "test", "classes", "seed", "fingerprint")
        missing = [k for k in required if k not in d]
        if missing:
            raise ValueError(f"split JSON is missing keys {missing}")
        return Split(d["forget"], d["retain"], d["val"], d["test"], tuple(d["classes"]), d["seed"],
                     d["fingerprint"], d.get("test_from", "test"), d.get("calib", ()))

    def save(self, path: str | Path) -> Path:
        """Write JSON (one key per line, arrays inline), atomically (a temporary name per process and thread:
        two runs in one process may save the same split at once). Returns the path."""
        path = Path(path)
        d = self.to_json()
        text = "{\n" + ",\n".join(f"  {json.dumps(k)}: {json.dumps(d[k])}" for k in sorted(d)) + "\n}\n"
        atomic_write(path, text.encode())
        return path

    @staticmethod
    def load(path: str | Path) -> "Split":
        with open(path) as f:
            return Split.from_json(json.load(f))

    def digest(self) -> str:
        """sha256 (hex) over the JSON with sorted keys and compact separators; use in cache keys."""
        blob = json.dumps(self.to_json(), sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()

    def __eq__(self, other) -> bool:
        if not isinstance(other, Split):
            return NotImplemented
        return self.to_json() == other.to_json()

    def __hash__(self) -> int:
        return hash(self.digest())

    def __repr__(self) -> str:
        return (f"Split(forget={len(self.forget)}, retain={len(self.retain)}, val={len(self.val)}, "
                f"test={len(self.test)}, calib={len(self.calib)}, classes={self.classes}, seed={self.seed}, "
                f"fingerprint={self.fingerprint!r}, test_from={self.test_from!r})")

    # ------------------------------------------------------------------ materialise

    def data(self, source: Source) -> SplitData:
        """Gather the split's samples from ``source`` (must have the same fingerprint), labels remapped."""
        if source.fingerprint != self.fingerprint:
            raise ValueError(f"split was made for source fingerprint {self.fingerprint!r} but "
                             f"{source.name!r} has fingerprint {source.fingerprint!r} (different data)")
        n_cls = len(source.classes)
        bad = [c for c in self.classes if not 0 <= c < n_cls]
        if bad:
            raise ValueError(f"split classes {bad} are not in source {source.name!r} (0..{n_cls - 1})")
        remap = torch.full((n_cls,), -1, dtype=torch.int64)
        remap[list(self.classes)] = torch.arange(len(self.classes))

        def take(td: TensorData, idx: np.ndarray, what: str) -> TensorData:
            if len(idx) and (idx.min() < 0 or idx.max() >= len(td)):
                raise ValueError(f"split {what} index {int(idx.max())} out of range for {len(td)} samples")
            rows = torch.from_numpy(idx.copy())
            if not torch.equal(td.index[rows], rows):  # loaders use index == position; keep that honest
                raise ValueError(f"source {source.name!r}: index is not the row position")
            sub = td.subset(rows)
            y = remap[sub.y]
            if (y < 0).any():
                raise ValueError(f"split {what} contains samples of classes not in {self.classes}")
            return TensorData(sub.x, y, sub.index)

        test_src = source.train if self.test_from == "train" else source.test
        return SplitData(take(source.train, self.forget, "forget"), take(source.train, self.retain, "retain"),
                         take(source.train, self.val, "val"), take(test_src, self.test, "test"),
                         take(source.train, self.calib, "calib") if len(self.calib) else None)


# ---------------------------------------------------------------------------------------------- make_split


class _DefaultFraction(float):
    """The default ``forget_fraction`` (0.5); lets ``forget_count`` replace it without an explicit None."""


_DEFAULT_FORGET_FRACTION = _DefaultFraction(0.5)


def _rng(seed: int, stage: int, cls: int) -> np.random.Generator:
    return np.random.default_rng([seed, stage, cls])


def _pick(pool: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    return np.sort(rng.permutation(pool)[:n])


def _round(x: float) -> int:
    return int(np.floor(x + 0.5))


def _int(v, what: str) -> int:
    try:
        return operator.index(v)
    except TypeError:
        raise ValueError(f"{what}={v!r}; expected an integer") from None


def _kept_classes(classes, n_cls: int) -> list[int]:
    if classes is None:
        return list(range(n_cls))
    if not isinstance(classes, (Sequence, np.ndarray)) or isinstance(classes, str):
        k = _int(classes, "classes")
        if not 1 <= k <= n_cls:
            raise ValueError(f"classes={k}: expected between 1 and {n_cls} (the source has {n_cls} classes)")
        return list(range(k))
    kept = [_int(c, "classes entry") for c in classes]
    if not kept:
        raise ValueError("classes=[]: expected at least one class")
    bad = [c for c in kept if not 0 <= c < n_cls]
    if bad:
        raise ValueError(f"classes {bad} not in the source; expected ids 0..{n_cls - 1}")
    if len(set(kept)) != len(kept):
        raise ValueError(f"classes={kept} lists a class twice")
    return kept


def _read_forget_file(path) -> list:
    try:
        with open(path) as f:
            d = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"forget_file {path}: not valid JSON ({e})") from e
    if isinstance(d, dict):
        if "forget" not in d:
            raise ValueError(f"forget_file {path}: a JSON object must have a 'forget' key (has {sorted(d)})")
        d = d["forget"]
    if not isinstance(d, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in d):
        raise ValueError(f"forget_file {path}: expected a JSON list of integer source-train indices")
    return d


def _calibration(source: Source, kept: list[int], cls: int, count: int, unused: dict, val_parts: list,
                 remaining: dict, seed: int) -> np.ndarray:
    """Step 5 of :func:`make_split`: ``count`` calibration images of class ``cls`` — unused images, else from its
    validation hold-out, else held out of its kept training samples — removed from ``val_parts`` and
    ``remaining`` (in place) so that the parts stay disjoint."""
    i = kept.index(cls)
    pool = unused.get(cls, np.zeros(0, dtype=np.int64))
    if len(pool) < count:  # the validation hold-out of the class is never trained on either
        pool = val_parts[i]
    if len(pool) < count:
        pool = remaining[cls]
        if count >= len(pool):
            raise ValueError(f"calib_count={count} but class {cls} ({source.classes[cls]!r}) has only "
                             f"{len(pool)} kept training samples to hold out (and too few unused ones)")
    calib = _pick(pool, count, _rng(seed, _CALIB, cls))
    val_parts[i] = np.setdiff1d(val_parts[i], calib)
    remaining[cls] = np.setdiff1d(remaining[cls], calib)
    return calib


def _forget_args(forget: str, forget_class, forget_fraction, forget_count, forget_file, kept: list[int]):
    """Decides whether the forget-set arguments fit together; returns (forget_class, forget_fraction, forget_count)
    checked, with ``forget_count`` replacing the default fraction."""
    if forget not in ("sample", "class", "file"):
        raise ValueError(f"forget={forget!r}; expected 'sample', 'class' or 'file'")
    fraction_explicit = forget_fraction is not None and forget_fraction is not _DEFAULT_FORGET_FRACTION
    if forget == "sample":
        if forget_count is not None and fraction_explicit:
            raise ValueError(f"both forget_fraction={forget_fraction} and forget_count={forget_count} given; "
                             "give only one")
        if forget_count is not None:
            forget_count = _int(forget_count, "forget_count")
            if forget_count < 1:
                raise ValueError(f"forget_count={forget_count}: empty forget set; expected at least 1")
            forget_fraction = None
        elif forget_fraction is None:
            raise ValueError("forget='sample' needs forget_fraction or forget_count")
        elif not 0.0 < float(forget_fraction) <= 1.0:
            raise ValueError(f"forget_fraction={forget_fraction}: expected a fraction in (0, 1]")
    elif forget_count is not None:
        raise ValueError(f"forget_count={forget_count} only applies to forget='sample' (got forget={forget!r})")
    if forget == "file" and forget_file is None:
        raise ValueError("forget='file' needs forget_file (a JSON list of source-train indices)")
    if forget != "file" and forget_file is not None:
        raise ValueError(f"forget_file given but forget={forget!r}; use forget='file'")
    if forget != "file":
        forget_class = _int(forget_class, "forget_class")
        if not 0 <= forget_class < len(kept):
            raise ValueError(f"forget_class={forget_class}: expected an index into the {len(kept)} kept classes "
                             f"(0..{len(kept) - 1}; source ids {kept})")
    return forget_class, forget_fraction, forget_count


def _size_args(source: Source, forget: str, calib_count, val_fraction: float, test_fraction: float | None,
               train_per_class, test_per_class) -> int:
    """Decides whether the calibration, validation, test carve-out and per-class sizes are valid; returns
    ``calib_count`` as an int."""
    calib_count = _int(calib_count, "calib_count")
    if calib_count < 0:
        raise ValueError(f"calib_count={calib_count}: expected an integer >= 0")
    if calib_count and forget != "sample":
        raise ValueError(f"calib_count={calib_count} needs forget='sample' (got forget={forget!r}): with a whole class "
                         "forgotten Re-train's accuracy on it is 0, and a forget file names no class to calibrate on")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction={val_fraction}: expected a fraction in [0, 1)")
    if test_fraction is not None:
        if len(source.test):
            raise ValueError(f"test_fraction={test_fraction} given but source {source.name!r} has an official "
                             f"test set of {len(source.test)} samples; test_fraction is for sources without one")
        if not 0.0 < test_fraction < 1.0:
            raise ValueError(f"test_fraction={test_fraction}: expected a fraction in (0, 1)")
    for what, v in (("train_per_class", train_per_class), ("test_per_class", test_per_class)):
        if v is not None and _int(v, what) < 1:
            raise ValueError(f"{what}={v}: expected a positive integer or None (= all)")
    return calib_count


def _class_parts(source: Source, kept: list[int], seed: int, test_fraction: float | None,
                 train_per_class: int | None, test_per_class: int | None, val_fraction: float):
    """Steps 2-4 of :func:`make_split`, per kept class: which samples are test, unused, validation and remaining
    training samples; returns (test_parts, val_parts, remaining, unused)."""
    y_tr = source.train.y.numpy()
    y_te = source.test.y.numpy()
    test_parts, val_parts, remaining, unused = [], [], {}, {}
    for c in kept:
        train_pool = np.flatnonzero(y_tr == c)
        if test_fraction is not None:
            te_pool = _pick(train_pool, _round(test_fraction * len(train_pool)), _rng(seed, _TEST_CARVE, c))
            train_pool = np.setdiff1d(train_pool, te_pool)
        else:
            te_pool = np.flatnonzero(y_te == c)
        for what, n, pool, stage in (("train_per_class", train_per_class, train_pool, _TRAIN_SUBSET),
                                     ("test_per_class", test_per_class, te_pool, _TEST_SUBSET)):
            if n is not None and n > len(pool):
                raise ValueError(f"{what}={n} but source class {c} ({source.classes[c]!r}) has only {len(pool)} "
                                 f"{'training' if stage == _TRAIN_SUBSET else 'test'} samples available")
        if train_per_class is not None:
            unused[c] = train_pool  # narrowed to the unused images below
            train_pool = _pick(train_pool, train_per_class, _rng(seed, _TRAIN_SUBSET, c))
            unused[c] = np.setdiff1d(unused[c], train_pool)
        if test_per_class is not None:
            te_pool = _pick(te_pool, test_per_class, _rng(seed, _TEST_SUBSET, c))
        val_c = _pick(train_pool, _round(val_fraction * len(train_pool)), _rng(seed, _VAL, c))
        test_parts.append(te_pool)
        val_parts.append(val_c)
        remaining[c] = np.setdiff1d(train_pool, val_c)
    return test_parts, val_parts, remaining, unused


def _forget_from_file(forget_file, remaining: dict, val_parts: list) -> np.ndarray:
    """Step 6, ``forget="file"``: the listed source-train indices, refused unless all are kept training samples."""
    listed = np.unique(np.asarray(_read_forget_file(forget_file), dtype=np.int64))
    if len(listed) == 0:
        raise ValueError(f"forget_file {forget_file}: empty forget set")
    pool = np.concatenate(list(remaining.values()))
    bad = np.setdiff1d(listed, pool)
    if len(bad):
        val_all = np.concatenate(val_parts)
        in_val = np.intersect1d(bad, val_all)
        note = f" ({len(in_val)} of them are in the validation hold-out)" if len(in_val) else ""
        raise ValueError(f"forget_file {forget_file}: {len(bad)} indices are not in the kept training set"
                         f"{note}, e.g. {bad[:5].tolist()}")
    return listed


def _forget_of_class(source: Source, forget: str, cls: int, pool: np.ndarray, forget_fraction,
                     forget_count: int | None, seed: int) -> np.ndarray:
    """Step 6, ``forget="sample"``/``"class"``: how many of class ``cls``'s remaining samples ``pool`` are
    forgotten (all, ``forget_count`` or the fraction), and which (seeded)."""
    if forget == "class":
        n = len(pool)
    elif forget_count is not None:
        if forget_count > len(pool):
            raise ValueError(f"forget_count={forget_count} but class {cls} ({source.classes[cls]!r}) has only "
                             f"{len(pool)} kept training samples (after the validation hold-out)")
        n = forget_count
    else:
        n = _round(float(forget_fraction) * len(pool))
    if n == 0:
        raise ValueError(f"empty forget set: class {cls} ({source.classes[cls]!r}) has {len(pool)} kept "
                         f"training samples and forget={forget!r}, forget_fraction={forget_fraction} selects none")
    return _pick(pool, n, _rng(seed, _FORGET, cls))


def make_split(source: Source, *, classes: int | Sequence[int] | None = None,
               train_per_class: int | None = None, test_per_class: int | None = None,
               val_fraction: float = 0.0, test_fraction: float | None = None,
               forget: str = "sample", forget_class: int = 0,
               forget_fraction: float | None = _DEFAULT_FORGET_FRACTION, forget_count: int | None = None,
               forget_file: str | Path | None = None, calib_count: int = 0, seed: int = 0) -> Split:
    """Build a seeded :class:`Split` of ``source`` (order of operations: see the module docstring).

    - ``classes``: ``None`` = all, int ``k`` = the first ``k``, or a list of source class ids.
    - ``train_per_class`` / ``test_per_class``: random per-class subset sizes (``None`` = all).
    - ``val_fraction``: stratified hold-out from the kept training samples, in [0, 1).
    - ``test_fraction``: for sources with an empty test set only, the stratified fraction of train that becomes
      test, in (0, 1). Without it such a source gets an empty test set.
    - ``forget``: ``"sample"`` (``forget_fraction`` in (0, 1] or exact ``forget_count`` of kept class
      ``forget_class``'s remaining training samples), ``"class"`` (all of them) or ``"file"`` (``forget_file``:
      a JSON list of source-train indices, or an object with a ``"forget"`` key).
    - ``forget_class``: index into the kept classes (0 = the first kept class).
    - ``forget_count`` overrides the default ``forget_fraction`` (0.5); giving both explicitly is an error.
    - ``calib_count``: calibration images per forget-set class (step 5; ``forget="sample"`` only).
    """
    n_cls = len(source.classes)
    seed = _int(seed, "seed")
    if seed < 0:
        raise ValueError(f"seed={seed}: expected a non-negative integer")
    kept = _kept_classes(classes, n_cls)
    # ---- argument checks (before any work)
    forget_class, forget_fraction, forget_count = _forget_args(forget, forget_class, forget_fraction, forget_count,
                                                               forget_file, kept)
    calib_count = _size_args(source, forget, calib_count, val_fraction, test_fraction, train_per_class,
                             test_per_class)
    # ---- per class: test carve-out, per-class subsets, val hold-out
    test_parts, val_parts, remaining, unused = _class_parts(source, kept, seed, test_fraction, train_per_class,
                                                            test_per_class, val_fraction)
    # ---- calibration set: unused images of the forget class, else its val hold-out, else a held-out part
    calib_idx = (_calibration(source, kept, kept[forget_class], calib_count, unused, val_parts, remaining, seed)
                 if calib_count else np.zeros(0, dtype=np.int64))
    # ---- forget selection
    if forget == "file":
        forget_idx = _forget_from_file(forget_file, remaining, val_parts)
    else:
        cls = kept[forget_class]
        forget_idx = _forget_of_class(source, forget, cls, remaining[cls], forget_fraction, forget_count, seed)
    all_train = np.sort(np.concatenate(list(remaining.values())))
    return Split(
        forget=forget_idx,
        retain=np.setdiff1d(all_train, forget_idx),
        val=np.sort(np.concatenate(val_parts)),
        test=np.sort(np.concatenate(test_parts)),
        classes=tuple(kept),
        seed=seed,
        fingerprint=source.fingerprint,
        test_from="train" if test_fraction is not None else "test",
        calib=calib_idx,
    )
