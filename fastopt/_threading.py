"""The thread-count rule, in one place.

- ``set_num_threads(None)`` (the default): use OpenMP's limit for the calling thread, which
  honours OMP_NUM_THREADS and threadpoolctl (``threadpool_limits(1)`` limits fastopt too) and
  otherwise is the number of cores available to the process.
- ``set_num_threads(n)`` with n >= 1: use at most n threads (still capped by OpenMP's limit, so
  a threadpoolctl limit always wins); ``-1``: all of OpenMP's limit, like None. 0 is an error.
- Small steps run on the calling thread whatever the count (see ``_native.set_parallel_grain``).
- The straggler fallback (``set_straggler_fallback``): on a machine whose cores are busy with
  other work, a parallel step whose last thread finishes far behind its first keeps the next
  second's steps on the calling thread, then measures again. Timing only: results are
  bitwise the same for any thread count.
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


def set_straggler_fallback(straggle: float = 2e-4, hold: float = 1.0) -> tuple[float, float]:
    """Tune or turn off the straggler fallback, for every thread count (default on).

    A parallel step whose last thread finishes more than ``straggle`` seconds after its first,
    and later than that first thread's whole chunk took (so one thread would have been as
    fast), marks the machine congested: the steps of the next ``hold`` seconds run on the
    calling thread, then a parallel step measures again. ``hold=0`` turns it off. Measured on
    2 vCPUs with one core busy (bench/straggler.py --load): Adam on 1e5 elements, 2 threads,
    2,000 steps took 3.7 s without it and 0.47 s with it (1 thread alone: 0.40 s).
    Returns the previous (straggle, hold).
    """
    s, h = _validation_real(straggle, "straggle"), _validation_real(hold, "hold")
    return _native.set_straggler_fallback(s, h)


def _validation_real(value, name: str) -> float:
    v = float(value) if isinstance(value, numbers.Real) and not isinstance(value, bool) else -1.0
    if not v >= 0:          # also NaN
        raise ValueError(f"set_straggler_fallback: {name} must be a real number >= 0, got "
                         f"{value!r}")
    return v


def get_num_threads() -> int:
    """The number of threads the next large step will use."""
    limit = _native.omp_max_threads()
    if _requested is None:
        return limit
    return min(_requested, limit)
