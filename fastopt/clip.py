"""Gradient clipping: torch.nn.utils.clip_grad_norm_ and clip_grad_value_ for NumPy arrays.

The same clipping is available inside every optimizer's fused step (``max_grad_norm=``,
``clip_value=``), where the gradients are scaled or clamped as the kernel reads them, without a
separate pass that writes them.
"""
from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

from . import _validation
from ._backend import native as _native
from ._threading import get_num_threads


def _gradients(grads, name, writeable=True) -> list[np.ndarray]:
    if isinstance(grads, np.ndarray):
        grads = [grads]
    if not isinstance(grads, Iterable):
        raise TypeError(f"{name}: expected an array or an iterable of arrays, got "
                        f"{type(grads).__name__}")
    arrays = []
    for i, g in enumerate(grads):
        if g is None:
            continue
        if writeable:
            _validation.check_param(f"grads[{i}]", g)   # float, C-contiguous, aligned, writeable
        else:
            _validation.check_like(f"grads[{i}]", g, g, f"grads[{i}]", writeable=False)
            _validation.check_param(f"grads[{i}]", np.empty(0, g.dtype))    # a float dtype
        arrays.append(g)
    return arrays


def grad_norm(grads, norm_type: float = 2.0) -> float:
    """The norm of all gradients taken together as one vector (None entries are skipped).

    Accumulated in float64, in a fixed order: the same bits for any thread count. ``norm_type``
    is any p >= 1 or inf; 1, 2 and inf are computed natively in one pass.
    """
    arrays = _gradients(grads, "grad_norm", writeable=False)
    p = _validation.real("norm_type", norm_type, low=1.0) if norm_type != math.inf else math.inf
    if p in (1.0, 2.0, math.inf):
        return _native.grad_norm(arrays, p, get_num_threads())
    total = math.fsum(float(np.sum(np.abs(a.astype(np.float64)) ** p)) for a in arrays)
    return total ** (1.0 / p)


def clip_grad_norm_(grads, max_norm: float, norm_type: float = 2.0,
                    error_if_nonfinite: bool = False) -> float:
    """Scale the gradients in place so that their total norm is at most ``max_norm``.

    torch.nn.utils.clip_grad_norm_'s rule: with the total norm :math:`n` of all gradients
    together, every gradient is multiplied by :math:`\\min(1, \\text{max\\_norm} / (n + 10^{-6}))`.
    Returns the total norm (before clipping). With ``error_if_nonfinite``, a NaN or infinite
    norm raises RuntimeError and nothing is modified. Differences from torch: the norm is
    accumulated in float64 (torch uses the gradients' dtype), and returned as a Python float.
    """
    arrays = _gradients(grads, "clip_grad_norm_")
    max_norm = _validation.real("max_norm", max_norm)
    total = grad_norm(arrays, norm_type)
    if error_if_nonfinite and not math.isfinite(total):
        raise RuntimeError(f"The total norm of order {norm_type} for gradients is non-finite "
                           f"({total}), so it cannot be clipped. To disable this error, set "
                           "error_if_nonfinite=False")
    coef = max_norm / (total + 1e-6)
    if not coef >= 1.0:         # NaN propagates into the gradients, as in torch
        for g in arrays:
            np.multiply(g, g.dtype.type(coef), out=g)
    return total


def clip_grad_value_(grads, clip_value: float) -> None:
    """Clamp every gradient element to [-clip_value, clip_value], in place (NaN stays NaN)."""
    arrays = _gradients(grads, "clip_grad_value_")
    c = _validation.real("clip_value", clip_value)
    for g in arrays:
        np.clip(g, -c, c, out=g)
