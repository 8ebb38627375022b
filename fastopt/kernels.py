"""The fused kernels as functions, for people who keep their own optimizer state.

Each function validates every array and hyperparameter first (nothing is modified when one is
refused), then runs ONE fused pass in native code: multithreaded above a size threshold, with
the instruction set chosen at run time. ``fastopt.reference`` has a pure-NumPy twin of each
function, with the same signature, that computes bitwise the same result.

Single tensor: ``<rule>_step(param, grad, <state...>, *, <hyperparameters>)``. Many tensors in
one native call: ``<rule>(params, grads, <state lists...>, *, ...)``; a None gradient skips its
tensor. Rules whose update depends on the step count take ``step`` (single) or ``steps`` (one
per tensor): the count of THIS step, from 1. ``probe`` is the benchmark's speed limit: the same
memory traffic with no arithmetic.

The checks cost microseconds per call (``fastopt.SGD``, ``Adam`` etc. check once per param set
and are faster for small tensors).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from . import _rules, _validation
from ._backend import native as _native
from ._threading import get_num_threads

__all__ = ["adam_step", "adam", "sgd_step", "sgd", "rmsprop_step", "rmsprop", "adagrad_step",
           "adagrad", "lion_step", "lion", "adamax_step", "adamax", "radam_step", "radam",
           "nadam_step", "nadam",
           "probe"]

Arrays = Sequence[np.ndarray]


def _as_list(name, seq, n):
    if (type(seq) is list or type(seq) is tuple) and len(seq) == n:
        return list(seq)
    if isinstance(seq, np.ndarray) or not isinstance(seq, Sequence) or isinstance(seq, str):
        raise TypeError(f"{name}: expected a list or tuple of {n} arrays, got "
                        f"{type(seq).__name__}")
    if len(seq) != n:
        raise ValueError(f"{name}: expected {n} entries (one per param), got {len(seq)}")
    return list(seq)


def _steps(steps, grads, n):
    """Step counts, one per tensor, each >= 1 where the tensor steps."""
    if type(steps) is not list and type(steps) is not tuple:
        steps = list(np.asarray(steps).reshape(-1))
    steps = [_validation.step_count(f"steps[{i}]", s)
             for i, s in enumerate(_as_list("steps", steps, n))]
    for i, s in enumerate(steps):
        if s < 1 and grads[i] is not None:
            raise ValueError(f"steps[{i}]: expected a step count >= 1 (the count of this "
                             f"step), got {s}")
    return steps


def _call(rule, names, params, grads, buffers, row, steps=None, aux=None):
    """Check everything, then run ``rule`` over all tensors in one native call.

    ``names``: the name of params and of each buffer list (for messages); ``buffers``: one list
    per state stream (S1, S2, S3), or None for a stream the call does not use.
    """
    if isinstance(params, np.ndarray) or not isinstance(params, Sequence):
        raise TypeError(f"params: expected a list or tuple of arrays, got "
                        f"{type(params).__name__}")
    n = len(params)
    params = list(params)
    grads = _as_list("grads", grads, n)
    buffers = [None if b is None else _as_list(name, b, n)
               for name, b in zip(names[1:], buffers)]
    steps = [1] * n if steps is None else _steps(steps, grads, n)
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
    streams = [[p, None] + [None if b is None else b[i] for b in buffers]
               for i, p in enumerate(params)]
    for s in streams:
        s.extend([None] * (_native.MAX_STREAMS - len(s)))
    plan = _native.Plan(rule, streams, [0] * n)
    rc = plan.step(grads, np.array([row], dtype=np.float64), np.array(steps, dtype=np.int64),
                   False, get_num_threads(), aux)
    if rc != _native.OK:  # unreachable after the checks above; kept as a guard
        raise RuntimeError(f"fastopt: internal error, plan refused tensor {rc}")


def _one(x):
    return None if x is None else [x]


# ---- Adam / AdamW --------------------------------------------------------------------------

def adam(params: Arrays, grads: Sequence[np.ndarray | None], exp_avgs: Arrays,
         exp_avg_sqs: Arrays, max_exp_avg_sqs: Arrays | None, steps, *, lr: float = 1e-3,
         beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8, weight_decay: float = 0.0,
         decoupled_weight_decay: bool = False, maximize: bool = False,
         l1: float = 0.0, clip_value: float | None = None,
         grad_scale: float = 1.0) -> None:
    """Adam/AdamW on many tensors in one native call; params and state modified in place.

    ``max_exp_avg_sqs`` is a list (AMSGrad) or None. See ``fastopt.Adam`` for the formula.
    """
    row = _rules.adam_row(lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay,
                          decoupled=decoupled_weight_decay, maximize=maximize, l1=l1,
                          clip_value=clip_value,
                          grad_scale=grad_scale)
    _call(_native.RULE_ADAM, ["params", "exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs"], params,
          grads, [exp_avgs, exp_avg_sqs, max_exp_avg_sqs], row, steps)


def adam_step(param: np.ndarray, grad: np.ndarray, exp_avg: np.ndarray, exp_avg_sq: np.ndarray,
              max_exp_avg_sq: np.ndarray | None = None, *, step: int, lr: float = 1e-3,
              beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8,
              weight_decay: float = 0.0, decoupled_weight_decay: bool = False,
              maximize: bool = False, l1: float = 0.0, clip_value: float | None = None,
              grad_scale: float = 1.0) -> None:
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
    adam([param], [grad], [exp_avg], [exp_avg_sq], _one(max_exp_avg_sq), [step], lr=lr,
         beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay,
         decoupled_weight_decay=decoupled_weight_decay, maximize=maximize, l1=l1,
         clip_value=clip_value,
         grad_scale=grad_scale)


# ---- SGD -----------------------------------------------------------------------------------

def sgd(params: Arrays, grads: Sequence[np.ndarray | None],
        momentum_buffers: Arrays | None = None, *, lr: float = 1e-3, momentum: float = 0.0,
        dampening: float = 0.0, weight_decay: float = 0.0, nesterov: bool = False,
        maximize: bool = False, l1: float = 0.0,
        init_buffers: bool | Sequence[bool] = False, clip_value: float | None = None,
        grad_scale: float = 1.0) -> None:
    """SGD on many tensors in one native call; params and buffers modified in place.

    ``momentum_buffers`` is required when momentum != 0. ``init_buffers`` (a bool, or one per
    tensor) marks a buffer's first step: it is set to the gradient instead of being decayed.
    See ``fastopt.SGD`` for the formula.
    """
    row = _rules.sgd_row(lr=lr, momentum=momentum, dampening=dampening,
                         weight_decay=weight_decay, nesterov=nesterov, maximize=maximize, l1=l1,
                         clip_value=clip_value,
                         grad_scale=grad_scale)
    n = len(params)
    if momentum != 0:
        if momentum_buffers is None:
            raise ValueError("momentum_buffers: required when momentum != 0")
    else:
        momentum_buffers = None
    if isinstance(init_buffers, (bool, np.bool_)):
        init = [bool(init_buffers)] * n
    else:
        init = [_validation.flag(f"init_buffers[{i}]", b)
                for i, b in enumerate(_as_list("init_buffers", init_buffers, n))]
    # the kernel initialises a buffer on its first step, i.e. when its step count is 1
    _call(_native.RULE_SGD, ["params", "momentum_buffers"], params, grads, [momentum_buffers],
          row, [1 if b else 2 for b in init])


def sgd_step(param: np.ndarray, grad: np.ndarray, momentum_buffer: np.ndarray | None = None, *,
             lr: float = 1e-3, momentum: float = 0.0, dampening: float = 0.0,
             weight_decay: float = 0.0, nesterov: bool = False, maximize: bool = False,
             l1: float = 0.0, init_buffer: bool = False, clip_value: float | None = None,
             grad_scale: float = 1.0) -> None:
    """One fused SGD step on one tensor; param and momentum_buffer modified in place.

    >>> import numpy as np, fastopt
    >>> p = np.ones(2); g = np.full(2, 2.0); buf = np.empty(2)
    >>> fastopt.kernels.sgd_step(p, g, buf, lr=0.1, momentum=0.9, init_buffer=True)
    >>> p, buf
    (array([0.8, 0.8]), array([2., 2.]))
    """
    sgd([param], [grad], _one(momentum_buffer), lr=lr, momentum=momentum, dampening=dampening,
        weight_decay=weight_decay, nesterov=nesterov, maximize=maximize, l1=l1,
        init_buffers=init_buffer, clip_value=clip_value,
        grad_scale=grad_scale)


# ---- RMSprop -------------------------------------------------------------------------------

def rmsprop(params: Arrays, grads: Sequence[np.ndarray | None], square_avgs: Arrays,
            momentum_buffers: Arrays | None = None, grad_avgs: Arrays | None = None, *,
            lr: float = 1e-2, alpha: float = 0.99, eps: float = 1e-8, weight_decay: float = 0.0,
            momentum: float = 0.0, centered: bool = False, maximize: bool = False,
            l1: float = 0.0, clip_value: float | None = None,
            grad_scale: float = 1.0) -> None:
    """RMSprop on many tensors in one native call; params and state modified in place.

    ``momentum_buffers`` is required when momentum > 0, ``grad_avgs`` when centered.
    See ``fastopt.RMSprop`` for the formula.
    """
    row = _rules.rmsprop_row(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                             momentum=momentum, centered=centered, maximize=maximize, l1=l1,
                             clip_value=clip_value,
                             grad_scale=grad_scale)
    if momentum > 0 and momentum_buffers is None:
        raise ValueError("momentum_buffers: required when momentum > 0")
    if centered and grad_avgs is None:
        raise ValueError("grad_avgs: required when centered")
    _call(_native.RULE_RMSPROP, ["params", "square_avgs", "momentum_buffers", "grad_avgs"],
          params, grads, [square_avgs, momentum_buffers if momentum > 0 else None,
                          grad_avgs if centered else None], row)


def rmsprop_step(param: np.ndarray, grad: np.ndarray, square_avg: np.ndarray,
                 momentum_buffer: np.ndarray | None = None, grad_avg: np.ndarray | None = None,
                 *, lr: float = 1e-2, alpha: float = 0.99, eps: float = 1e-8,
                 weight_decay: float = 0.0, momentum: float = 0.0, centered: bool = False,
                 maximize: bool = False, l1: float = 0.0, clip_value: float | None = None,
                 grad_scale: float = 1.0) -> None:
    """One fused RMSprop step on one tensor; param and state modified in place."""
    rmsprop([param], [grad], [square_avg], _one(momentum_buffer), _one(grad_avg), lr=lr,
            alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum,
            centered=centered, maximize=maximize, l1=l1, clip_value=clip_value,
            grad_scale=grad_scale)


# ---- Adagrad -------------------------------------------------------------------------------

def adagrad(params: Arrays, grads: Sequence[np.ndarray | None], state_sums: Arrays, steps, *,
            lr: float = 1e-2, lr_decay: float = 0.0, weight_decay: float = 0.0,
            eps: float = 1e-10, maximize: bool = False, l1: float = 0.0,
            clip_value: float | None = None,
            grad_scale: float = 1.0) -> None:
    """Adagrad on many tensors in one native call; params and sums modified in place."""
    row = _rules.adagrad_row(lr=lr, lr_decay=lr_decay, weight_decay=weight_decay, eps=eps,
                             maximize=maximize, l1=l1, clip_value=clip_value,
                             grad_scale=grad_scale)
    _call(_native.RULE_ADAGRAD, ["params", "state_sums"], params, grads, [state_sums], row,
          steps)


def adagrad_step(param: np.ndarray, grad: np.ndarray, state_sum: np.ndarray, *, step: int,
                 lr: float = 1e-2, lr_decay: float = 0.0, weight_decay: float = 0.0,
                 eps: float = 1e-10, maximize: bool = False, l1: float = 0.0,
                 clip_value: float | None = None,
                 grad_scale: float = 1.0) -> None:
    """One fused Adagrad step on one tensor; param and state_sum modified in place."""
    adagrad([param], [grad], [state_sum], [step], lr=lr, lr_decay=lr_decay,
            weight_decay=weight_decay, eps=eps, maximize=maximize, l1=l1, clip_value=clip_value,
            grad_scale=grad_scale)


# ---- Lion ----------------------------------------------------------------------------------

def lion(params: Arrays, grads: Sequence[np.ndarray | None], exp_avgs: Arrays, *,
         lr: float = 1e-4, beta1: float = 0.9, beta2: float = 0.99, weight_decay: float = 0.0,
         maximize: bool = False, l1: float = 0.0, clip_value: float | None = None,
         grad_scale: float = 1.0) -> None:
    """Lion on many tensors in one native call; params and exp_avgs modified in place."""
    row = _rules.lion_row(lr=lr, beta1=beta1, beta2=beta2, weight_decay=weight_decay,
                          maximize=maximize, l1=l1, clip_value=clip_value,
                          grad_scale=grad_scale)
    _call(_native.RULE_LION, ["params", "exp_avgs"], params, grads, [exp_avgs], row)


def lion_step(param: np.ndarray, grad: np.ndarray, exp_avg: np.ndarray, *, lr: float = 1e-4,
              beta1: float = 0.9, beta2: float = 0.99, weight_decay: float = 0.0,
              maximize: bool = False, l1: float = 0.0, clip_value: float | None = None,
              grad_scale: float = 1.0) -> None:
    """One fused Lion step on one tensor; param and exp_avg modified in place."""
    lion([param], [grad], [exp_avg], lr=lr, beta1=beta1, beta2=beta2,
         weight_decay=weight_decay, maximize=maximize, l1=l1, clip_value=clip_value,
         grad_scale=grad_scale)


# ---- Adamax --------------------------------------------------------------------------------

def adamax(params: Arrays, grads: Sequence[np.ndarray | None], exp_avgs: Arrays,
           exp_infs: Arrays, steps, *, lr: float = 2e-3, beta1: float = 0.9,
           beta2: float = 0.999, eps: float = 1e-8, weight_decay: float = 0.0,
           maximize: bool = False, l1: float = 0.0, clip_value: float | None = None,
           grad_scale: float = 1.0) -> None:
    """Adamax on many tensors in one native call; params and state modified in place."""
    row = _rules.adamax_row(lr=lr, beta1=beta1, beta2=beta2, eps=eps,
                            weight_decay=weight_decay, maximize=maximize, l1=l1,
                            clip_value=clip_value,
                            grad_scale=grad_scale)
    _call(_native.RULE_ADAMAX, ["params", "exp_avgs", "exp_infs"], params, grads,
          [exp_avgs, exp_infs], row, steps)


def adamax_step(param: np.ndarray, grad: np.ndarray, exp_avg: np.ndarray, exp_inf: np.ndarray,
                *, step: int, lr: float = 2e-3, beta1: float = 0.9, beta2: float = 0.999,
                eps: float = 1e-8, weight_decay: float = 0.0, maximize: bool = False,
                l1: float = 0.0, clip_value: float | None = None,
                grad_scale: float = 1.0) -> None:
    """One fused Adamax step on one tensor; param and state modified in place."""
    adamax([param], [grad], [exp_avg], [exp_inf], [step], lr=lr, beta1=beta1, beta2=beta2,
           eps=eps, weight_decay=weight_decay, maximize=maximize, l1=l1, clip_value=clip_value,
           grad_scale=grad_scale)


# ---- RAdam ---------------------------------------------------------------------------------

def radam(params: Arrays, grads: Sequence[np.ndarray | None], exp_avgs: Arrays,
          exp_avg_sqs: Arrays, steps, *, lr: float = 1e-3, beta1: float = 0.9,
          beta2: float = 0.999, eps: float = 1e-8, weight_decay: float = 0.0,
          decoupled_weight_decay: bool = False, maximize: bool = False,
          l1: float = 0.0, clip_value: float | None = None,
          grad_scale: float = 1.0) -> None:
    """RAdam on many tensors in one native call; params and state modified in place."""
    row = _rules.radam_row(lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay,
                           decoupled=decoupled_weight_decay, maximize=maximize, l1=l1,
                           clip_value=clip_value,
                           grad_scale=grad_scale)
    _call(_native.RULE_RADAM, ["params", "exp_avgs", "exp_avg_sqs"], params, grads,
          [exp_avgs, exp_avg_sqs], row, steps)


def radam_step(param: np.ndarray, grad: np.ndarray, exp_avg: np.ndarray, exp_avg_sq: np.ndarray,
               *, step: int, lr: float = 1e-3, beta1: float = 0.9, beta2: float = 0.999,
               eps: float = 1e-8, weight_decay: float = 0.0,
               decoupled_weight_decay: bool = False, maximize: bool = False,
               l1: float = 0.0, clip_value: float | None = None,
               grad_scale: float = 1.0) -> None:
    """One fused RAdam step on one tensor; param and state modified in place."""
    radam([param], [grad], [exp_avg], [exp_avg_sq], [step], lr=lr, beta1=beta1, beta2=beta2,
          eps=eps, weight_decay=weight_decay, decoupled_weight_decay=decoupled_weight_decay,
          maximize=maximize, l1=l1, clip_value=clip_value,
          grad_scale=grad_scale)


# ---- NAdam ---------------------------------------------------------------------------------

def nadam(params: Arrays, grads: Sequence[np.ndarray | None], exp_avgs: Arrays,
          exp_avg_sqs: Arrays, mu_products: np.ndarray, steps, *, lr: float = 2e-3,
          beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8,
          weight_decay: float = 0.0, momentum_decay: float = 4e-3,
          decoupled_weight_decay: bool = False, maximize: bool = False, l1: float = 0.0,
          clip_value: float | None = None, grad_scale: float = 1.0) -> None:
    """NAdam on many tensors in one native call; params, state and ``mu_products`` (a float64
    array with one running product per tensor, starting at 1) modified in place."""
    row = _rules.nadam_row(lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay,
                           momentum_decay=momentum_decay, decoupled=decoupled_weight_decay,
                           maximize=maximize, l1=l1, clip_value=clip_value,
                           grad_scale=grad_scale)
    if (not isinstance(mu_products, np.ndarray) or mu_products.dtype != np.float64
            or mu_products.shape != (len(params),) or not mu_products.flags.c_contiguous
            or not mu_products.flags.writeable):
        raise TypeError(f"mu_products: expected a writeable float64 array of shape "
                        f"({len(params)},)")
    _call(_native.RULE_NADAM, ["params", "exp_avgs", "exp_avg_sqs"], params, grads,
          [exp_avgs, exp_avg_sqs], row, steps, mu_products)


def nadam_step(param: np.ndarray, grad: np.ndarray, exp_avg: np.ndarray, exp_avg_sq: np.ndarray,
               mu_product: np.ndarray, *, step: int, lr: float = 2e-3, beta1: float = 0.9,
               beta2: float = 0.999, eps: float = 1e-8, weight_decay: float = 0.0,
               momentum_decay: float = 4e-3, decoupled_weight_decay: bool = False,
               maximize: bool = False, l1: float = 0.0, clip_value: float | None = None,
               grad_scale: float = 1.0) -> None:
    """One fused NAdam step on one tensor; ``mu_product`` is a float64 array of one element."""
    if not isinstance(mu_product, np.ndarray) or mu_product.size != 1:
        raise TypeError("mu_product: expected a float64 array of one element")
    mp = mu_product.reshape(1)
    nadam([param], [grad], [exp_avg], [exp_avg_sq], mp, [step], lr=lr, beta1=beta1,
          beta2=beta2, eps=eps, weight_decay=weight_decay, momentum_decay=momentum_decay,
          decoupled_weight_decay=decoupled_weight_decay, maximize=maximize, l1=l1,
          clip_value=clip_value, grad_scale=grad_scale)
    if not np.shares_memory(mp, mu_product):
        mu_product[...] = mp[0]


# ---- the probe -----------------------------------------------------------------------------

def probe(arrays: Sequence[np.ndarray]) -> None:
    """The speed limit of a rule: reads every array and writes all but ``arrays[1]`` (2 to 5
    arrays of one shape and dtype, as [param, grad, state...]). Used by the benchmark."""
    arrays = list(arrays)
    if not 2 <= len(arrays) <= _native.MAX_STREAMS:
        raise ValueError(f"probe: expected 2 to {_native.MAX_STREAMS} arrays, got {len(arrays)}")
    p, g, *rest = arrays
    bufs: list[list[np.ndarray] | None] = [[b] for b in rest]
    bufs += [None] * (3 - len(bufs))
    _call(_native.RULE_PROBE, ["arrays", "state0", "state1", "state2"], [p], [g], bufs,
          [float(len(arrays))])
