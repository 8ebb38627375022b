"""Which implementation runs the steps: the native extension, or NumPy.

``FASTOPT_PUREPYTHON=1`` (read once, at import) selects ``fastopt._purepython``, which runs
``fastopt.reference`` behind the same interface: every API works, bitwise identically, only
slower. Without it the compiled extension ``fastopt._kernels`` is used; if it is missing (a
platform where it could not be built), fastopt falls back to NumPy with a warning.
"""
from __future__ import annotations

import os
import warnings

ENV_PUREPYTHON = "FASTOPT_PUREPYTHON"

if os.environ.get(ENV_PUREPYTHON, "").strip() == "1":
    from . import _purepython as native
    BACKEND = f"numpy ({ENV_PUREPYTHON}=1)"
else:
    try:
        from . import _kernels as native  # type: ignore[no-redef]
        BACKEND = "native"
    except ImportError as e:   # pragma: no cover - only where the extension was not built
        warnings.warn(f"fastopt: the compiled extension is unavailable ({e}); using the "
                      "NumPy fallback, which is correct but slow", RuntimeWarning, stacklevel=2)
        from . import _purepython as native
        BACKEND = "numpy (extension unavailable)"

__all__ = ["BACKEND", "native"]
