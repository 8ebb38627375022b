"""What the NumPy backend needs of the native module's interface: configuration answers (one
thread, no SIMD choice), the gradient norm in the native order, and the rules' record fields.

Selected by FASTOPT_PUREPYTHON=1 (see fastopt._backend). There is no second driver here: the
steps themselves run in fastopt.functional, which calls fastopt.reference one tensor at a time.
"""
from __future__ import annotations

from . import reference

MAX_STREAMS = 9

_grain = 1 << 14


def openmp_enabled():
    return False


def openmp_version():
    return 0


def omp_max_threads():
    return 1


def isa_compiled():
    return ("baseline",)


def isa_supported(name):
    return name == "baseline"


def isa_select(name):
    if name not in ("baseline", "auto"):
        raise ValueError(f"instruction set {name!r} is not available: the NumPy fallback "
                         "supports baseline (or 'auto')")


def isa_active():
    return "baseline"


def set_parallel_grain(elems):
    global _grain
    if elems < 1:
        raise ValueError(f"grain must be >= 1, got {elems}")
    old, _grain = _grain, int(elems)
    return old


def get_parallel_grain():
    return _grain


def active_steps():
    return 0


def grad_norm(arrays, norm_type, nthreads):
    """See fastopt._kernels.grad_norm: fastopt.reference.grad_norm, which adds in the native
    order (fixed blocks, eight accumulators each), so the bits are the same."""
    if norm_type not in (1.0, 2.0, float("inf")):
        raise ValueError(f"native norm_type must be 1, 2 or inf, got {norm_type}")
    return reference.grad_norm(arrays, norm_type)


def address(a):
    return a.ctypes.data     # (__array_interface__ builds a dict per call)


def _arg_names():
    from . import _spec
    return {r.name: tuple(r.pack({**r.defaults(), **dict(_spec.COMMON)}))
            for r in _spec.RULES.values()}


class _Lazy(dict):
    def __missing__(self, key):
        self.update(_arg_names())
        return dict.__getitem__(self, key)


# the record fields of each rule, by name (the order only matters to C)
ARG_NAMES = _Lazy()


def same_objects(a, b):
    """See fastopt._kernels.same_objects."""
    return b is not None and len(a) == len(b) and all(x is y for x, y in zip(a, b))


def signatures():
    return ("f32", "f64")


def threads_in_use():
    return 0


_straggler = (2e-4, 1.0)


def set_straggler_fallback(straggle=2e-4, hold=1.0):
    # (fastopt.set_straggler_fallback validates; there are no threads to fall back from)
    global _straggler
    old, _straggler = _straggler, (float(straggle), float(hold))
    return old


def straggler_stats():
    return 0, 0, 0.0


def peak_threads(reset=False):
    return 0
