"""The dry-run store: a read-only view of the run store that raises instead of letting the caller compute.

It sits beside :mod:`rurk.store` and below both :mod:`rurk.run.experiment` (which assembles a Ray run's summary
through it, so a missing cell is an executor bug and never silently recomputed) and :mod:`rurk.run.grid` (which
decides which cells are done by running the ordinary code against it), so neither has to import the other.
"""

from __future__ import annotations

from contextlib import contextmanager


class Missing(RuntimeError):
    """Raised by :class:`ProbeStore` where the code would compute (kind, key)."""

    def __init__(self, kind: str, key: str):
        super().__init__(f"cell {kind} {key} is not in the store")
        self.kind, self.key = kind, key


class ProbeStore:
    """A read-only view of a :class:`~rurk.store.Store` for dry runs: a missing record (or reference
    checkpoint), or any write, raises :class:`Missing` instead of letting the caller compute it. ``model``
    records may be missing (the references are decided by their checkpoints)."""

    def __init__(self, store):
        self._store = store
        self.root = store.root
        self.db_path = store.db_path

    def get(self, kind: str, key: str):
        hit = self._store.get(kind, key)
        if hit is None and kind != "model":
            raise Missing(kind, key)
        return hit

    def load_model(self, key: str, model):
        meta = self._store.load_model(key, model)
        if meta is None:
            raise Missing("model", key)
        return meta

    def load_meta(self, key: str):
        return self._store.load_meta(key)

    @contextmanager
    def claim(self, kind: str, key: str, *, wait: bool = True):
        yield True

    def put(self, kind: str, key: str, **_):
        raise Missing(kind, key)

    def save_model(self, key: str, *_a, **_k):
        raise Missing("model", key)

    def delete(self, kind: str, key: str):
        raise Missing(kind, key)

    def __getattr__(self, name):  # records(), model_dir(), ...
        return getattr(self._store, name)
