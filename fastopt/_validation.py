"""Every check of user input in one place: arrays (params, grads, state) and hyperparameters.

Errors name the offending item (``params[3]``, ``grads[1]``, ``state[2]['exp_avg']``), what was
expected, and what was given. Functions here only raise; they never modify their arguments.
The per-step fast path (fastopt._kernels.Plan.step) repeats the gradient checks in C and, when
one fails, calls ``check_grad`` here to produce the message.
"""
from __future__ import annotations

import bisect
import math
import numbers
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from ._backend import native as _native

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
F32, F16 = np.dtype(np.float32), np.dtype(np.float16)


def param_groups(params) -> list:
    """An optimizer's ``params`` argument as a list of groups (torch's rules): an iterable of
    arrays (one group) or of dicts; a bare array, a non-iterable or an empty list refused."""
    if isinstance(params, np.ndarray) or not isinstance(params, Iterable):
        raise TypeError("params argument given to the optimizer should be an iterable of "
                        f"NumPy arrays or dicts, but got {type(params).__name__}")
    groups: list[Any] = list(params)
    if not groups:
        raise ValueError("optimizer got an empty parameter list")
    if not isinstance(groups[0], Mapping):
        groups = [{"params": groups}]
    return groups


def bfloat16(load: bool = False):
    """ml_dtypes' bfloat16 dtype, or None. Without ``load`` only if ml_dtypes is already
    imported (whoever made a bfloat16 array imported it; a failed import is not cached by
    Python, so trying it on every step would cost milliseconds); with ``load`` it is imported
    if installed (``fastopt[bf16]``)."""
    mod = sys.modules.get("ml_dtypes")
    if mod is None and load:
        try:
            import ml_dtypes as mod
        except ImportError:
            return None
    return None if mod is None else np.dtype(mod.bfloat16)


def is16(dtype) -> bool:
    """float16 or bfloat16 (the 16-bit storage types)."""
    return dtype == F16 or (dtype.kind == "V" and dtype.name == "bfloat16")


def storage_dtype(dtype) -> bool:
    """A dtype the kernels store: float32, float64, float16, bfloat16 (native byte order)."""
    return (dtype in FLOAT_DTYPES or is16(dtype)) and dtype.isnative


Q8_BLOCK = 256      # elements per 8-bit block (csrc/fastopt.h FO_Q8_BLOCK)
Q8_CODES = (np.dtype(np.int8), np.dtype(np.uint8))


def q8_blocks(n: int) -> int:
    """The number of 8-bit blocks (and scales) of an n-element state."""
    return -(-int(n) // Q8_BLOCK)


def stream_dtypes(param_dtype, stream: int) -> tuple:
    """The dtypes stream ``stream`` (1 gradient, 2-4 state, 5 master/compensation) may have
    for a param of ``param_dtype``: the param's own, or (mixed storage) float32 gradients of
    16-bit params, float32/16-bit states of 16/32-bit params, and for 16-bit params a float32
    master copy or a Kahan compensation of the param's dtype (csrc/storage.c)."""
    d = np.dtype(param_dtype)
    if stream >= 6:             # an 8-bit state's block scales
        return (F32,) if d != np.float64 else ()
    if d == np.float64:
        return (d,) if stream != 5 else ()
    sixteen = tuple(x for x in (F16, bfloat16()) if x is not None)
    if stream == 1:
        return (d, F32) if is16(d) else (d,)
    if stream == 5:
        return (F32, d) if is16(d) else ()
    return (d,) + tuple(x for x in (F32,) + sixteen if x != d) + Q8_CODES


def _describe(x) -> str:
    if isinstance(x, np.ndarray):
        return f"array of dtype {x.dtype} and shape {x.shape}"
    if isinstance(x, np.generic):
        return f"a NumPy scalar of type {type(x).__name__} (wrap it: np.asarray(x))"
    return f"object of type {type(x).__name__}"


def check_param(name: str, p) -> None:
    """A param: float32/float64/float16/bfloat16 ndarray, C-contiguous, writeable."""
    if not isinstance(p, np.ndarray):
        raise TypeError(f"{name}: expected a NumPy array of float32, float64, float16 or "
                        f"bfloat16, got {_describe(p)}")
    if not storage_dtype(p.dtype):
        raise TypeError(f"{name}: expected dtype float32, float64, float16 or bfloat16 (native "
                        f"byte order), got {p.dtype}")
    if not p.flags.c_contiguous:
        raise ValueError(f"{name}: expected a C-contiguous array (it is updated in place, so it "
                         f"cannot be copied), got strides {p.strides} for shape {p.shape}; "
                         "make the parameter itself contiguous, e.g. p = np.ascontiguousarray(p)")
    if not p.flags.aligned:
        raise ValueError(f"{name}: expected an aligned array, got one whose data is not aligned "
                         f"to its {p.dtype.itemsize}-byte elements")
    if not p.flags.writeable:
        raise ValueError(f"{name}: expected a writeable array, got a read-only one")


def check_like(name: str, a, like: np.ndarray, like_name: str, *, writeable: bool,
               stream: int | None = None) -> None:
    """An array that must match ``like``: same shape, C-contiguous, aligned, and the same dtype
    (or, given the ``stream`` it fills, one of stream_dtypes: mixed storage)."""
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name}: expected a NumPy array of dtype {like.dtype} and shape "
                        f"{like.shape} (like {like_name}), got {_describe(a)}")
    allowed = (like.dtype,) if stream is None else stream_dtypes(like.dtype, stream)
    if a.dtype not in allowed or not a.dtype.isnative:
        if len(allowed) == 1:
            want = f"dtype {like.dtype} (that of {like_name})"
        else:
            want = (f"one of dtypes {', '.join(str(x) for x in allowed)} (for {like_name} of "
                    f"dtype {like.dtype})")
        raise TypeError(f"{name}: expected {want}, got {a.dtype}")
    if stream is not None and stream >= 6:
        nb = q8_blocks(like.size)
        if a.shape != (nb,):
            raise ValueError(f"{name}: expected shape ({nb},) (one float32 scale per "
                             f"{Q8_BLOCK}-element block of {like_name}, {like.size} elements), "
                             f"got {a.shape}")
    elif a.shape != like.shape:
        raise ValueError(f"{name}: expected shape {like.shape} (that of {like_name}), "
                         f"got {a.shape}")
    if not a.flags.c_contiguous:
        raise ValueError(f"{name}: expected a C-contiguous array, got strides {a.strides}")
    if not a.flags.aligned:
        raise ValueError(f"{name}: expected an aligned array")
    if writeable and not a.flags.writeable:
        raise ValueError(f"{name}: expected a writeable array, got a read-only one")


def _span(a: np.ndarray) -> tuple[int, int]:
    start = _native.address(a)
    return start, start + a.nbytes


def check_disjoint(named_arrays: Sequence[tuple[str, np.ndarray]]) -> None:
    """No two arrays may share memory (all are C-contiguous, so byte ranges decide)."""
    spans = sorted(
        (_span(a) + (name, a) for name, a in named_arrays if a.nbytes > 0),
        key=lambda s: s[0],
    )
    for (_, hi0, n0, a0), (lo1, _, n1, a1) in zip(spans, spans[1:]):
        if lo1 < hi0:
            what = "are the same array" if a0 is a1 else "overlap in memory"
            raise ValueError(f"{n0} and {n1} {what}; each parameter and state buffer must "
                             "have memory of its own")


class WrittenSpans:
    """The byte ranges of the arrays a step writes, sorted once (they must be disjoint, see
    check_disjoint), for O(log n) overlap queries."""

    def __init__(self, named_arrays: Sequence[tuple[str, np.ndarray]]):
        spans = sorted((_span(a) + (name,) for name, a in named_arrays if a.nbytes > 0),
                       key=lambda s: s[0])
        self._ends = [hi for _, hi, _ in spans]
        self._spans = spans

    def overlapping(self, a: np.ndarray) -> str | None:
        """The name of a written array sharing memory with ``a``, or None."""
        if a.nbytes == 0:
            return None
        lo, hi = _span(a)
        k = bisect.bisect_right(self._ends, lo)   # the first span ending after lo
        if k < len(self._spans) and self._spans[k][0] < hi:
            return self._spans[k][2]
        return None


def check_no_overlap(name: str, a: np.ndarray, written) -> None:
    """``a`` (read only) must not share memory with any array that the step writes.

    ``written``: a WrittenSpans, or (name, array) pairs."""
    if not isinstance(written, WrittenSpans):
        written = WrittenSpans(written)
    other = written.overlapping(a)
    if other is not None:
        raise ValueError(f"{name} shares memory with {other}, which the step writes; "
                         "pass a gradient array of its own")


def check_grad(i: int, g, p: np.ndarray, written) -> None:
    """grads[i] against params[i] (``written``: (name, array) pairs the step writes)."""
    check_like(f"grads[{i}]", g, p, f"params[{i}]", writeable=False)
    check_no_overlap(f"grads[{i}]", g, written)


def check_grads_sequence(grads, n: int) -> list:
    if isinstance(grads, np.ndarray) or not isinstance(grads, Sequence) or isinstance(grads, str):
        raise TypeError(f"grads: expected a sequence (list or tuple) of {n} arrays or None, "
                        f"one per param, got {_describe(grads)}")
    if len(grads) != n:
        raise ValueError(f"grads: expected {n} gradients, one per param in the order of the "
                         f"params, got {len(grads)}")
    return grads if isinstance(grads, list) else list(grads)


# ---- hyperparameters -----------------------------------------------------------------------

def real(name: str, value, *, low: float | None = 0.0, high: float | None = None,
         high_open: bool = False, what: str | None = None) -> float:
    """A finite real number in [low, high] (or [low, high)); returns it as a float."""
    label = what or f"{name} value"
    if type(value) is not float and type(value) is not int and (
            isinstance(value, bool) or not isinstance(value, numbers.Real)):
        raise TypeError(f"Invalid {label}: expected a real number, got {value!r}")
    v = float(value)
    bad = not math.isfinite(v) or (low is not None and v < low)
    if high is not None:
        bad = bad or (v >= high if high_open else v > high)
    if bad:
        raise ValueError(f"Invalid {label}: {value}")
    return v


def flag(name: str, value) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"Invalid {name} value: expected True or False, got {value!r}")
    return bool(value)


def lr(value) -> float:
    return real("lr", value, what="learning rate")


def betas(value) -> tuple[float, float]:
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise TypeError(f"Invalid betas: expected a pair (beta1, beta2), got {value!r}")
    beta1, beta2 = (
        real("beta", b, high=1.0, high_open=True, what=f"beta parameter at index {i}")
        for i, b in enumerate(value)
    )
    return beta1, beta2


def step_count(name: str, value) -> int:
    """A step count: a non-negative integer (an integral float or 0-d array is accepted)."""
    if type(value) is int and 0 <= value < 2**62:
        return value
    v = value
    if isinstance(v, np.ndarray) and v.ndim == 0:
        v = v.item()
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"{name}: expected a non-negative integer step count, got {value!r}")
    f = float(v)
    if not math.isfinite(f) or f != int(f) or f < 0 or f >= 2**62:
        raise ValueError(f"{name}: expected a non-negative integer step count, got {value!r}")
    return int(f)


def check_q8_pair(codes_name: str, codes, scales_name: str, scales) -> None:
    """An 8-bit state's codes (int8 or uint8) and its block scales come together."""
    q8 = codes is not None and codes.dtype in Q8_CODES
    if q8 and scales is None:
        raise ValueError(f"{codes_name}: 8-bit codes (dtype {codes.dtype}) need their block "
                         f"scales, but {scales_name} is missing")
    if scales is not None and not q8:
        what = "missing" if codes is None else f"of dtype {codes.dtype}"
        raise TypeError(f"{scales_name}: block scales belong to 8-bit codes (int8 or uint8), "
                        f"but {codes_name} is {what}")
