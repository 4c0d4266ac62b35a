"""Unlearning methods, one module each, registered by name (see :mod:`rurk.methods.base`).

``rurk methods`` lists them; :func:`rurk.methods.base.unlearn` runs one by name.
"""

from __future__ import annotations

from .base import (
    REGISTRY,
    FinetuneConfig,
    MethodRecord,
    MethodSpec,
    UnlearnData,
    get_method,
    load_all,
    register,
    unlearn,
)

__all__ = [
    "REGISTRY", "FinetuneConfig", "MethodRecord", "MethodSpec", "UnlearnData", "get_method", "register", "unlearn",
    "load_all",
]
