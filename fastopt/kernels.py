"""The fused kernels as functions, for people who keep their own optimizer state.

Each function validates every array and hyperparameter first (nothing is modified when one is
refused), then runs ONE fused pass in native code: multithreaded above a size threshold, with
the instruction set chosen at run time. ``fastopt.reference`` has a pure-NumPy twin of each
function, with the same signature, that computes bitwise the same result.

Single tensor: ``adam_step``, ``sgd_step``. Many tensors in one native call: ``adam``, ``sgd``.
``probe`` is the benchmark's speed limit: the same memory traffic with no arithmetic.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from . import _validation
from ._backend import native as _native
from ._threading import get_num_threads

__all__ = ["adam_step", "adam", "sgd_step", "sgd", "probe"]


def _check_arrays(names, params, grads, buffers):
    """params[i] must be valid; buffers[k][i] like params[i]; grads[i] like params[i] or None."""
    written = []
    for i, p in enumerate(params):
        _validation.check_param(f"{names[0]}[{i}]", p)
        written.append((f"{names[0]}[{i}]", p))
        for name, bufs in zip(names[1:], buffers):
            if bufs is not None:
                _validation.check_like(f"{name}[{i}]", bufs[i], p, f"{names[0]}[{i}]",
                                       writeable=True)
                written.append((f"{name}[{i}]", bufs[i]))
    for i, (g, p) in enumerate(zip(grads, params)):
        if g is not None:
            _validation.check_like(f"grads[{i}]", g, p, f"{names[0]}[{i}]", writeable=False)
    _validation.check_disjoint(written)
    spans = _validation.WrittenSpans(written)
    for i, g in enumerate(grads):
        if g is not None:
            _validation.check_no_overlap(f"grads[{i}]", g, spans)


def _as_list(name, seq, n):
    if (type(seq) is list or type(seq) is tuple) and len(seq) == n:
        return list(seq)
    if isinstance(seq, np.ndarray) or not isinstance(seq, Sequence) or isinstance(seq, str):
        raise TypeError(f"{name}: expected a list or tuple of {n} arrays, got "
                        f"{type(seq).__name__}")
    if len(seq) != n:
        raise ValueError(f"{name}: expected {n} entries (one per param), got {len(seq)}")
    return list(seq)


def _run(rule, params, grads, buffers, args, steps):
    streams = [[p, None, *(b[i] if b is not None else None for b in buffers)]
               for i, p in enumerate(params)]
    for row in streams:
        row.extend([None] * (_native.MAX_STREAMS - len(row)))
    plan = _native.Plan(rule, streams, [0] * len(params))
    rc = plan.step(grads, np.array([args], dtype=np.float64), np.asarray(steps, dtype=np.int64),
                   False, get_num_threads())
    if rc != _native.OK:  # unreachable after _check_arrays; kept as a guard
        raise RuntimeError(f"fastopt: internal error, plan refused tensor {rc}")


def _adam_args(lr, beta1, beta2, eps, weight_decay, decoupled_weight_decay, maximize):
    beta1, beta2 = _validation.betas((beta1, beta2))
    return [_validation.lr(lr), beta1, beta2, _validation.real("eps", eps, what="epsilon value"),
            _validation.real("weight_decay", weight_decay),
            float(_validation.flag("decoupled_weight_decay", decoupled_weight_decay)),
            float(_validation.flag("maximize", maximize))]


def adam(params: Sequence[np.ndarray], grads: Sequence[np.ndarray | None],
         exp_avgs: Sequence[np.ndarray], exp_avg_sqs: Sequence[np.ndarray],
         max_exp_avg_sqs: Sequence[np.ndarray] | None, steps: Sequence[int] | np.ndarray, *,
         lr: float = 1e-3, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8,
         weight_decay: float = 0.0, decoupled_weight_decay: bool = False,
         maximize: bool = False) -> None:
    """Adam/AdamW on many tensors in one native call; params and state modified in place.

    ``max_exp_avg_sqs`` is a list (AMSGrad) or None. ``steps[i]`` is the count of this step for
    tensor i (>= 1). A None gradient skips its tensor. See ``fastopt.Adam`` for the formula.
    """
    n = len(_as_list("params", params, len(params)))
    grads = _as_list("grads", grads, n)
    exp_avgs = _as_list("exp_avgs", exp_avgs, n)
    exp_avg_sqs = _as_list("exp_avg_sqs", exp_avg_sqs, n)
    if max_exp_avg_sqs is not None:
        max_exp_avg_sqs = _as_list("max_exp_avg_sqs", max_exp_avg_sqs, n)
    if type(steps) is not list and type(steps) is not tuple:
        steps = list(np.asarray(steps).reshape(-1))
    steps = [_validation.step_count(f"steps[{i}]", s) for i, s in
             enumerate(_as_list("steps", steps, n))]
    for i, s in enumerate(steps):
        if s < 1 and grads[i] is not None:
            raise ValueError(f"steps[{i}]: expected a step count >= 1 (the count of this "
                             f"step), got {s}")
    args = _adam_args(lr, beta1, beta2, eps, weight_decay, decoupled_weight_decay, maximize)
    bufs = [exp_avgs, exp_avg_sqs, max_exp_avg_sqs]
    _check_arrays(["params", "exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs"], params, grads, bufs)
    _run(_native.RULE_ADAM, params, grads, bufs, args, steps)


def adam_step(param: np.ndarray, grad: np.ndarray, exp_avg: np.ndarray, exp_avg_sq: np.ndarray,
              max_exp_avg_sq: np.ndarray | None = None, *, step: int, lr: float = 1e-3,
              beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8,
              weight_decay: float = 0.0, decoupled_weight_decay: bool = False,
              maximize: bool = False) -> None:
    """One fused Adam/AdamW step on one tensor; param and state modified in place.

    ``step`` is the count of this step, starting at 1 (bias correction uses it). Pass
    ``max_exp_avg_sq`` for AMSGrad. ``decoupled_weight_decay=True`` gives AdamW.

    >>> import numpy as np, fastopt
    >>> p = np.ones(3, np.float32); g = np.full(3, 0.5, np.float32)
    >>> m = np.zeros_like(p); v = np.zeros_like(p)
    >>> fastopt.kernels.adam_step(p, g, m, v, step=1, lr=0.1)
    >>> p
    array([0.9, 0.9, 0.9], dtype=float32)
    """
    vmax = None if max_exp_avg_sq is None else [max_exp_avg_sq]
    adam([param], [grad], [exp_avg], [exp_avg_sq], vmax, [step], lr=lr, beta1=beta1,
         beta2=beta2, eps=eps, weight_decay=weight_decay,
         decoupled_weight_decay=decoupled_weight_decay, maximize=maximize)


def _sgd_args(lr, momentum, dampening, weight_decay, nesterov, maximize):
    momentum = _validation.real("momentum", momentum)
    dampening = _validation.real("dampening", dampening, low=None)
    nesterov = _validation.flag("nesterov", nesterov)
    if nesterov and (momentum <= 0 or dampening != 0):
        raise ValueError("Nesterov momentum requires a momentum and zero dampening")
    return [_validation.lr(lr), momentum, dampening,
            _validation.real("weight_decay", weight_decay), float(nesterov),
            float(_validation.flag("maximize", maximize))]


def sgd(params: Sequence[np.ndarray], grads: Sequence[np.ndarray | None],
        momentum_buffers: Sequence[np.ndarray] | None = None, *, lr: float = 1e-3,
        momentum: float = 0.0, dampening: float = 0.0, weight_decay: float = 0.0,
        nesterov: bool = False, maximize: bool = False,
        init_buffers: bool | Sequence[bool] = False) -> None:
    """SGD on many tensors in one native call; params and buffers modified in place.

    ``momentum_buffers`` is required when momentum != 0. ``init_buffers`` (a bool, or one per
    tensor) marks a buffer's first step: it is set to the gradient instead of being decayed.
    See ``fastopt.SGD`` for the formula.
    """
    n = len(_as_list("params", params, len(params)))
    grads = _as_list("grads", grads, n)
    args = _sgd_args(lr, momentum, dampening, weight_decay, nesterov, maximize)
    if momentum != 0:
        if momentum_buffers is None:
            raise ValueError("momentum_buffers: required when momentum != 0")
        momentum_buffers = _as_list("momentum_buffers", momentum_buffers, n)
    else:
        momentum_buffers = None
    if isinstance(init_buffers, (bool, np.bool_)):
        init = [bool(init_buffers)] * n
    else:
        init = [_validation.flag(f"init_buffers[{i}]", b)
                for i, b in enumerate(_as_list("init_buffers", init_buffers, n))]
    _check_arrays(["params", "momentum_buffers"], params, grads, [momentum_buffers])
    # the kernel initialises a buffer on its first step, i.e. when its step count is 1
    _run(_native.RULE_SGD, params, grads, [momentum_buffers], args,
         [1 if b else 2 for b in init])


def sgd_step(param: np.ndarray, grad: np.ndarray, momentum_buffer: np.ndarray | None = None, *,
             lr: float = 1e-3, momentum: float = 0.0, dampening: float = 0.0,
             weight_decay: float = 0.0, nesterov: bool = False, maximize: bool = False,
             init_buffer: bool = False) -> None:
    """One fused SGD step on one tensor; param and momentum_buffer modified in place.

    >>> import numpy as np, fastopt
    >>> p = np.ones(2); g = np.full(2, 2.0); buf = np.empty(2)
    >>> fastopt.kernels.sgd_step(p, g, buf, lr=0.1, momentum=0.9, init_buffer=True)
    >>> p, buf
    (array([0.8, 0.8]), array([2., 2.]))
    """
    bufs = None if momentum_buffer is None else [momentum_buffer]
    sgd([param], [grad], bufs, lr=lr, momentum=momentum, dampening=dampening,
        weight_decay=weight_decay, nesterov=nesterov, maximize=maximize,
        init_buffers=init_buffer)


def probe(arrays: Sequence[np.ndarray]) -> None:
    """The speed limit of a rule: reads every array and writes all but ``arrays[1]`` (2 to 5
    arrays of one shape and dtype, as [param, grad, state...]). Used by the benchmark."""
    arrays = list(arrays)
    if not 2 <= len(arrays) <= _native.MAX_STREAMS:
        raise ValueError(f"probe: expected 2 to {_native.MAX_STREAMS} arrays, got {len(arrays)}")
    p, g, *rest = arrays
    _check_arrays(["arrays"] + [f"state{k}" for k in range(len(rest))], [p], [g],
                  [[b] for b in rest])
    _run(_native.RULE_PROBE, [p], [g], [[b] for b in rest], [float(len(arrays))], [1])
