"""Build and run-time configuration: the instruction set in use and show_config()."""
from __future__ import annotations

import os
import platform
import sys

from ._backend import BACKEND
from ._backend import native as _native
from ._threading import get_num_threads
from ._version import __version__

ENV_ISA = "FASTOPT_ISA"


def _select_isa_from_env() -> None:
    """Honour FASTOPT_ISA (baseline, avx2, avx512, auto) once, at import."""
    wanted = os.environ.get(ENV_ISA, "auto").strip().lower() or "auto"
    try:
        _native.isa_select(wanted)
    except ValueError as e:
        raise ImportError(f"fastopt: {ENV_ISA}={wanted!r}: {e}") from None


def set_isa(name: str) -> str:
    """Switch the kernels to an instruction set ("baseline", "avx2", "avx512" or "auto").

    Returns the previous one. Results are bitwise identical on every path; this exists for
    tests and benchmarks. Raises ValueError if this build or CPU lacks it.
    """
    old = _native.isa_active()
    _native.isa_select(name)
    return old


def config() -> dict:
    """The configuration as a dict (what show_config prints)."""
    compiled = _native.isa_compiled()
    return {
        "version": __version__,
        "backend": BACKEND,
        "python": sys.version.split()[0],
        "platform": f"{platform.system()} {platform.machine()}",
        "openmp": _native.openmp_enabled(),
        "openmp_version": _native.openmp_version(),
        "isa_compiled": list(compiled),
        "isa_supported": [n for n in compiled if _native.isa_supported(n)],
        "isa_active": _native.isa_active(),
        "num_threads": get_num_threads(),
        "parallel_grain": _native.get_parallel_grain(),
        "straggler_fallback": dict(zip(("congested_steps", "serial_steps", "holds_for_s"),
                                       _native.straggler_stats())),
    }


def show_config() -> None:
    """Print the version, OpenMP, SIMD paths (compiled, supported, in use) and threads."""
    import numpy as np
    c = config()
    omp = f"yes (_OPENMP {c['openmp_version']})" if c["openmp"] else "no (single-threaded build)"
    print(f"fastopt {c['version']} on Python {c['python']}, NumPy {np.__version__}, "
          f"{c['platform']}")
    print(f"  backend:          {c['backend']}")
    print(f"  OpenMP:           {omp}")
    print(f"  SIMD compiled:    {', '.join(c['isa_compiled'])}")
    print(f"  SIMD supported:   {', '.join(c['isa_supported'])}")
    print(f"  SIMD in use:      {c['isa_active']}  (force with {ENV_ISA}=...)")
    print(f"  threads:          {c['num_threads']}  (small steps stay on the calling thread "
          f"below {c['parallel_grain']} elements per thread)")
