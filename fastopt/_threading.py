"""The thread-count rule, in one place.

- ``set_num_threads(None)`` (the default): use OpenMP's limit for the calling thread, which
  honours OMP_NUM_THREADS and threadpoolctl (``threadpool_limits(1)`` limits fastopt too) and
  otherwise is the number of cores available to the process.
- ``set_num_threads(n)`` with n >= 1: use at most n threads (still capped by OpenMP's limit, so
  a threadpoolctl limit always wins); ``-1``: all of OpenMP's limit, like None. 0 is an error.
- Small steps run on the calling thread whatever the count (see ``_native.set_parallel_grain``).
- Without OpenMP in the build, everything runs on one thread and the count is 1.
"""
from __future__ import annotations

import numbers

from ._backend import native as _native

_requested: int | None = None


def set_num_threads(n: int | None) -> None:
    """Set the number of threads fastopt's kernels may use (see the module docstring)."""
    global _requested
    if n is None:
        _requested = None
        return
    if isinstance(n, bool) or not isinstance(n, numbers.Integral):
        raise TypeError(f"set_num_threads: expected an int or None, got {n!r}")
    n = int(n)
    if n == 0 or n < -1:
        raise ValueError(f"set_num_threads: expected n >= 1, -1 (all) or None (default), got {n}")
    _requested = None if n == -1 else n


def get_num_threads() -> int:
    """The number of threads the next large step will use."""
    limit = _native.omp_max_threads()
    if _requested is None:
        return limit
    return min(_requested, limit)
