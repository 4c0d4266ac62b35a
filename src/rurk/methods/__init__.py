"""Unlearning methods, one module each, registered by name (see :mod:`rurk.methods.base`).

``rurk methods`` lists them; :func:`rurk.methods.base.unlearn` runs one by name.
"""

from __future__ import annotations

import importlib
import pkgutil

from .base import REGISTRY, FinetuneConfig, MethodRecord, MethodSpec, UnlearnData, get_method, register, unlearn

__all__ = [
    "REGISTRY", "FinetuneConfig", "MethodRecord", "MethodSpec", "UnlearnData", "get_method", "register", "unlearn",
    "load_all",
]

_LOADED = False


def load_all() -> dict[str, MethodSpec]:
    """Import every method module so that each registers itself."""
    global _LOADED
    if not _LOADED:
        for info in pkgutil.iter_modules(__path__):
            if info.name not in ("base",) and not info.name.startswith("_"):
                importlib.import_module(f"{__name__}.{info.name}")
        _LOADED = True
    return REGISTRY
