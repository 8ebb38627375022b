"""Which implementation runs the steps: the native extension, or NumPy.

``FASTOPT_PUREPYTHON=1`` (read once, at import) selects ``fastopt._purepython``, which runs
``fastopt.reference`` behind the same interface: every API works, bitwise identically, only
slower. Without it the compiled extension ``fastopt._kernels`` is used; if it is missing (a
platform where it could not be built), fastopt falls back to NumPy with a warning.
"""
from __future__ import annotations

import importlib
import os
import warnings
from typing import Any

ENV_PUREPYTHON = "FASTOPT_PUREPYTHON"

native: Any
if os.environ.get(ENV_PUREPYTHON, "").strip() == "1":
    native = importlib.import_module("._purepython", __package__)
    BACKEND = f"numpy ({ENV_PUREPYTHON}=1)"
else:
    try:
        native = importlib.import_module("._kernels", __package__)
        BACKEND = "native"
    except ImportError as e:   # pragma: no cover - only where the extension was not built
        warnings.warn(f"fastopt: the compiled extension is unavailable ({e}); using the "
                      "NumPy fallback, which is correct but slow", RuntimeWarning, stacklevel=2)
        native = importlib.import_module("._purepython", __package__)
        BACKEND = "numpy (extension unavailable)"

__all__ = ["BACKEND", "native"]
