"""The run store: one directory per run root holding

- ``rurk.sqlite`` — a record per finished piece of work (kind, key, scenario, seed, config, metrics,
  timings), written in one transaction, so a record exists only for work that completed;
- ``models/<key>/model.safetensors`` + ``model.json`` — checkpoints. The weights are written to a
  temporary file, fsynced and renamed; ``model.json`` (which carries the weights' sha256) is written
  the same way *after* them and is the commit marker. A checkpoint without a matching ``model.json``
  is never trusted, so killing a run at any moment loses only the unfinished piece;
- ``splits/<digest>.json`` — the split index arrays of every scenario used.

Nothing is ever unpickled: weights are safetensors, everything else JSON.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from . import machine

FORMAT_VERSION = 1


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=_json_default)


def _json_default(o: Any):
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def cache_key(**parts: Any) -> str:
    """A short stable hash of everything that determines a result (data, split, model, recipe, seed)."""
    return hashlib.sha256(canonical_json({"v": FORMAT_VERSION, **parts}).encode()).hexdigest()[:20]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _tmp_path(path: Path) -> Path:
    """A temporary name beside ``path``, unique per process and thread."""
    return path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see either the old file or the complete new one. A write that
    fails (a full disk, a read-only folder) leaves no temporary file and raises an OSError naming ``path``."""
    path = Path(path)
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


@contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` for a writer that takes a file name (a CSV writer, a plot's savefig): when
    the block ends without error it is renamed to ``path``, so readers see either the old file or the complete new
    one, never a truncated one; on an error it is removed. An OSError (``ENOSPC``: the disk is full) is raised
    again naming ``path`` — the error of a failed ``write()`` names no file."""
    path = Path(path)
    tmp = _tmp_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        os.replace(tmp, path)
    except BaseException as e:
        try:
            tmp.unlink()
        except OSError:
            pass
        if isinstance(e, OSError) and e.filename in (None, str(tmp), tmp):
            raise OSError(e.errno, e.strerror or str(e), str(path)) from e
        raise


def write_json(path: Path, obj: Any) -> None:
    atomic_write(Path(path), (json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n").encode())


class DamagedRecord(ValueError):
    """A record of the store database whose JSON does not parse (the message names the record and the file)."""


class Store:
    """A run directory (see the module docstring). Cheap to open; safe to share between processes
    that write different keys."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.db_path = self.root / "rurk.sqlite"
        with self._connect() as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS records (kind TEXT NOT NULL, key TEXT NOT NULL, scenario TEXT, "
                "seed INTEGER, config TEXT, metrics TEXT, timings TEXT, created REAL, PRIMARY KEY (kind, key))"
            )

    def count(self, kind: str, scenario: str, seeds, split: str) -> int:
        """How many records of ``kind`` the store holds for ``scenario``, ``seeds`` and the split with digest
        ``split`` (one query; what a run's progress line counts)."""
        seeds = list(seeds)
        marks = ",".join("?" * len(seeds))
        with self._connect() as db:
            (n,) = db.execute(f"SELECT COUNT(*) FROM records WHERE kind = ? AND scenario = ? AND seed IN ({marks}) "
                              "AND json_extract(config, '$.split') = ?", (kind, scenario, *seeds, split)).fetchone()
        return int(n)

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.db_path, timeout=30)

    # ------------------------------------------------------------------------------------ records
    def put(self, kind: str, key: str, *, scenario: str = "", seed: int | None = None, config: Any = None,
            metrics: Any = None, timings: Any = None) -> dict:
        """Record a finished piece of work (replacing an older record of the same kind and key); returns the timings
        recorded. They carry
        ``threads``, torch's CPU thread count when it was computed, and ``machine``, the digest of the computing
        machine's fingerprint (:mod:`rurk.machine`; CPU results are bit-identical only on the same machine and
        count), unless the caller's timings already name them (a record copied from a worker keeps the worker's)."""
        timings = {"threads": torch.get_num_threads(), "machine": machine.digest(machine.machine()), **(timings or {})}
        with self._connect() as db:
            db.execute(
                "INSERT OR REPLACE INTO records VALUES (?,?,?,?,?,?,?,?)",
                (kind, key, scenario, seed, canonical_json(config), canonical_json(metrics),
                 canonical_json(timings), time.time()),
            )
        return timings

    def get(self, kind: str, key: str) -> dict | None:
        with self._connect() as db:
            row = db.execute(
                "SELECT scenario, seed, config, metrics, timings, created FROM records WHERE kind=? AND key=?",
                (kind, key),
            ).fetchone()
        if row is None:
            return None
        values = {}
        for column, text in zip(("config", "metrics", "timings"), row[2:5]):
            try:
                values[column] = json.loads(text)
            except (TypeError, json.JSONDecodeError) as e:  # TypeError: NULL, or bytes that are not text
                shown = text if not isinstance(text, str) or len(text) <= 40 else text[:40] + "..."
                raise DamagedRecord(
                    f"store record (kind {kind!r}, key {key!r}) in {self.db_path}: its {column} = {shown!r}: expected "
                    f"JSON ({getattr(e, 'msg', e)}); delete the record to recompute it: sqlite3 {self.db_path} "
                    f"\"DELETE FROM records WHERE kind='{kind}' AND key='{key}'\"") from None
        return {"kind": kind, "key": key, "scenario": row[0], "seed": row[1], **values, "created": row[5]}

    def delete(self, kind: str, key: str) -> None:
        with self._connect() as db:
            db.execute("DELETE FROM records WHERE kind=? AND key=?", (kind, key))

    @contextmanager
    def claim(self, kind: str, key: str, *, wait: bool = True) -> Iterator[bool]:
        """Hold the cell (kind, key) for this process or thread: an exclusive ``flock`` on
        ``locks/<kind>-<key>.lock``. Two runs sharing a store never compute the same cell at once; whoever
        waits re-reads the record after the claim and finds the other's result. Yields True when held; with
        ``wait=False`` a cell someone else holds is not waited for: it yields False (and holds nothing)."""
        path = self.root / "locks" / f"{kind}-{key}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a+") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def records(self, kind: str | None = None) -> list[dict]:
        with self._connect() as db:
            q = "SELECT kind, key FROM records" + (" WHERE kind=?" if kind else "") + " ORDER BY created"
            keys = db.execute(q, (kind,) if kind else ()).fetchall()
        return [self.get(k, key) for k, key in keys]

    # ------------------------------------------------------------------------------------ checkpoints
    def model_dir(self, key: str) -> Path:
        return self.root / "models" / key

    def save_model(self, key: str, model: nn.Module, meta: dict) -> Path:
        """Atomically save ``model`` as ``models/<key>/model.safetensors`` + ``model.json``."""
        path = self.model_dir(key) / "model.safetensors"
        save_weights(model, path, {**meta, "key": key})
        return path

    def load_meta(self, key: str) -> dict | None:
        """The metadata of a *complete* checkpoint, or None (missing, half-written or corrupted)."""
        return read_meta(self.model_dir(key) / "model.safetensors")

    def load_model(self, key: str, model: nn.Module) -> dict | None:
        """Load a complete checkpoint into ``model`` (strict); return its metadata, or None if absent."""
        meta = self.load_meta(key)
        if meta is None:
            return None
        load_weights(model, self.model_dir(key) / "model.safetensors")
        return meta


def save_weights(model: nn.Module, path: str | Path, meta: dict | None = None) -> None:
    """Save ``model`` as ``path`` (safetensors, atomic) and then ``path.with_suffix('.json')`` holding
    ``meta`` plus the weights' sha256 — the marker that the checkpoint is complete."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    tmp = _tmp_path(path)
    save_file(state, str(tmp), metadata={"rurk_format": str(FORMAT_VERSION)})
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    write_json(path.with_suffix(".json"), {**(meta or {}), "sha256": _sha256(path), "format": FORMAT_VERSION})


def read_meta(path: str | Path) -> dict | None:
    """The metadata of a *complete* checkpoint at ``path``, or None (missing, half-written, corrupted)."""
    path = Path(path)
    try:
        meta = json.loads(path.with_suffix(".json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    if not path.exists() or _sha256(path) != meta.get("sha256"):
        return None
    return meta


def check_safetensors(path: str | Path) -> dict:
    """The tensor table (name -> dtype/shape/offsets) of a safetensors file, or a ValueError/FileNotFoundError that
    says what is wrong: missing, not a safetensors file, truncated, or (when rurk's ``.json`` sidecar is beside it)
    bytes that no longer match the sidecar's sha256."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError(f"{path}: not a safetensors file (only {size} bytes)")
        n = int.from_bytes(head, "little")
        if n > min(size - 8, 100 << 20):
            raise ValueError(f"{path}: not a safetensors file, or truncated (its header claims {n} bytes; the file "
                             f"has {size})")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ValueError(f"{path}: not a safetensors file (no JSON header)") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path}: not a safetensors file (its header is not a table)")
    header.pop("__metadata__", None)
    try:
        end = max((int(v["data_offsets"][1]) for v in header.values()), default=0)
    except (TypeError, KeyError, IndexError, ValueError):
        raise ValueError(f"{path}: not a safetensors file (malformed tensor table)") from None
    if 8 + n + end > size:
        raise ValueError(f"{path}: truncated (expected {8 + n + end} bytes, the file has {size})")
    sidecar = path.with_suffix(".json")
    if sidecar.is_file():
        try:
            meta = json.loads(sidecar.read_text())
        except json.JSONDecodeError:
            meta = {}
        if "sha256" in meta and _sha256(path) != meta["sha256"]:
            raise ValueError(f"{path}: damaged (its bytes do not match the sha256 recorded in {sidecar.name})")
    return header


def load_checkpoint(model: nn.Module, path: str | Path) -> nn.Module:
    """Load any safetensors file into ``model`` — rurk's own (with its ``.json`` sidecar, whose hash is checked) or
    a plain one a user saved with ``safetensors.torch.save_file(model.state_dict(), ...)``. Errors name the problem:
    missing, not safetensors, truncated, damaged, wrong keys (listed), wrong shapes (listed)."""
    header = check_safetensors(path)
    state = model.state_dict()
    missing = sorted(set(state) - set(header))
    unexpected = sorted(set(header) - set(state))
    if missing or unexpected:
        raise ValueError(f"{path} does not fit the model: missing keys {_listing(missing)}; unexpected keys "
                         f"{_listing(unexpected)}")
    wrong = [f"{k}: file {list(header[k]['shape'])} vs model {list(state[k].shape)}" for k in state
             if list(header[k]["shape"]) != list(state[k].shape)]
    if wrong:
        raise ValueError(f"{path} does not fit the model: wrong shapes: {_listing(wrong)}")
    wrong = [f"{k}: file {_DTYPES.get(header[k].get('dtype'), header[k].get('dtype'))} vs model "
             f"{str(state[k].dtype).removeprefix('torch.')}" for k in state
             if _kind(header[k].get("dtype")) != _kind(state[k].dtype)]
    if wrong:  # load_state_dict casts without a word: int64 weights became whole-number floats
        raise ValueError(f"{path} does not fit the model: wrong dtypes: {_listing(wrong)} (expected the model's kind "
                         "of number: floating-point weights for floating-point parameters)")
    return load_weights(model, path)


#: safetensors' dtype codes, as torch names them
_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "F8_E4M3": "float8_e4m3fn",
           "F8_E5M2": "float8_e5m2", "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U64": "uint64",
           "U32": "uint32", "U16": "uint16", "U8": "uint8", "BOOL": "bool"}


def _kind(dtype) -> str:
    """'float', 'int', 'bool' or 'complex' of a safetensors dtype code or a torch dtype (a float file of another
    precision loads into a float model, cast as safetensors and torch do; an integer one into a float model does
    not)."""
    if isinstance(dtype, torch.dtype):
        return ("bool" if dtype == torch.bool else "complex" if dtype.is_complex else
                "float" if dtype.is_floating_point else "int")
    code = str(dtype)
    return ("bool" if code == "BOOL" else "float" if code.startswith(("F", "BF")) else
            "complex" if code.startswith("C") else "int")


def _listing(items: list[str], n: int = 12) -> str:
    if not items:
        return "none"
    return ", ".join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Strictly load a safetensors file into ``model`` (every key must match; no silent partial loads)."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    state = load_file(str(path), device=str(device))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"checkpoint {path} does not match the model: missing keys {sorted(missing)[:5]}, "
            f"unexpected keys {sorted(unexpected)[:5]}"
        )
    return model
