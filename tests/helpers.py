"""The table of cases shared by the tests: every rule with its option sets, sizes and data."""
from __future__ import annotations

import numpy as np

DTYPES = [np.float32, np.float64]
# 0 and 1; odd sizes that are no multiple of any SIMD width (4, 8, 16) around those widths;
# a size above the default threading grain (16384 elements per thread).
SIZES = [0, 1, 3, 7, 15, 17, 31, 33, 63, 65, 1000, 4099, 140_001]
SMALL_SIZES = [0, 1, 7, 17, 33, 4099]

ADAM_OPTIONS = {
    "default": dict(),
    "l2": dict(weight_decay=0.1),
    "adamw": dict(weight_decay=0.1, decoupled_weight_decay=True),
    "amsgrad": dict(amsgrad=True),
    "amsgrad-l2-max": dict(amsgrad=True, weight_decay=0.05, maximize=True),
    "adamw-amsgrad-max": dict(amsgrad=True, weight_decay=0.2, decoupled_weight_decay=True,
                              maximize=True),
    "beta1-large-weight": dict(beta1=0.3, beta2=0.5, eps=1e-3),   # lerp's other branch
    "beta-zero": dict(beta1=0.0, beta2=0.0),
    "lr-zero": dict(lr=0.0, weight_decay=0.3, decoupled_weight_decay=True),
}

SGD_OPTIONS = {
    "plain": dict(),
    "l2": dict(weight_decay=0.1),
    "max": dict(maximize=True, weight_decay=0.01),
    "momentum": dict(momentum=0.9),
    "momentum-dampening": dict(momentum=0.9, dampening=0.5),
    "nesterov": dict(momentum=0.9, nesterov=True),
    "nesterov-l2-max": dict(momentum=0.5, nesterov=True, weight_decay=0.1, maximize=True),
    "momentum-negative-dampening": dict(momentum=0.3, dampening=-0.5, weight_decay=1e-3),
}


def data(n, dtype, seed, n_state):
    """Seeded param, grad and n_state state arrays (second moments non-negative)."""
    rng = np.random.default_rng(seed)
    p = rng.standard_normal(n).astype(dtype)
    g = (rng.standard_normal(n) * 0.5).astype(dtype)
    state = [(rng.standard_normal(n) * 0.1).astype(dtype)]
    state += [np.abs(rng.standard_normal(n) * 0.01).astype(dtype) for _ in range(n_state - 1)]
    return p, g, state[:n_state]


def adam_kwargs(opts, lr=1e-2):
    """Split an ADAM_OPTIONS entry into (kernel keyword arguments, amsgrad)."""
    kw = dict(lr=lr, beta1=0.9, beta2=0.999, eps=1e-8)
    kw.update({k: v for k, v in opts.items() if k != "amsgrad"})
    return kw, bool(opts.get("amsgrad", False))


def sgd_kwargs(opts, lr=1e-2):
    kw = dict(lr=lr)
    kw.update(opts)
    return kw


def assert_bitwise(actual, expected, context=""):
    """Assert two arrays are identical element by element: equal values with equal signs of
    zero, NaN where the other has NaN. The message names the case and the first mismatch."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.dtype == expected.dtype, f"{context}: dtype {actual.dtype} != {expected.dtype}"
    assert actual.shape == expected.shape, f"{context}: shape {actual.shape} != {expected.shape}"
    both_nan = np.isnan(actual) & np.isnan(expected)
    same = ((actual == expected) & (np.signbit(actual) == np.signbit(expected))) | both_nan
    if not same.all():
        bad = np.flatnonzero(~same.reshape(-1))
        i = bad[0]
        a, e = actual.reshape(-1)[i], expected.reshape(-1)[i]
        raise AssertionError(f"{context}: {bad.size} of {actual.size} elements differ; first at "
                             f"flat index {i}: {a!r} vs expected {e!r}")


def snapshot(arrays):
    """Copies of the arrays (None kept), to check later that nothing was modified."""
    return [None if a is None else np.array(a, copy=True) for a in arrays]


def assert_unchanged(arrays, before, context=""):
    for k, (a, b) in enumerate(zip(arrays, before)):
        if a is not None:
            assert_bitwise(a, b, f"{context}: array {k} was modified")
