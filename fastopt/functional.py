"""The functional layer: keyword-only steps over lists of arrays, and the one place that runs
a step, natively or in NumPy.

Every step of fastopt goes through ``run_lists`` (NumPy arrays, as the kernel API and the
NumPy backend of the optimizers pass them) or ``run_frame`` (descriptors an adapter already
filled: the NumPy optimizers' fast path, the torch frontend). They are the only callers of the
native driver (fastopt._kernels.run); with the NumPy backend (``FASTOPT_PUREPYTHON=1``, or no
extension) ``run_lists`` runs ``fastopt.reference`` one tensor at a time instead, with the same
checks, the same pre-pass and the same outcome (bitwise: the tests compare the two).

Multi-tensor steps: ``<rule>(params, grads, <state lists...>, *, <hyperparameters>)``; a None
gradient skips its tensor. Rules whose update depends on the step count take ``steps`` (one
per tensor): the count of THIS step, from 1. ``probe`` is the benchmark's speed limit: the
same memory traffic with no arithmetic. Single-tensor forms are in ``fastopt.kernels``.
"""
from __future__ import annotations

import contextlib
import math
import signal
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from . import _spec, _validation, reference
from ._backend import BACKEND
from ._backend import native as _native
from ._threading import get_num_threads

__all__ = ["adam", "sgd", "rmsprop", "adagrad", "lion", "adamax", "radam", "nadam", "adadelta",
           "rprop", "asgd", "lamb", "sparse_adam", "adafactor", "probe",
           "run_lists", "run_frame", "NATIVE"]

Arrays = Sequence[np.ndarray]
NATIVE = BACKEND == "native"
OK, SKIPPED = 0, 1
S = 9      # streams per tensor (csrc/fastopt.h FO_MAX_STREAMS)
M, A1 = 5, 6   # a 16-bit param's master copy or compensation; the first 8-bit scales


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
    if n == 1 and type(steps) is list and len(steps) == 1 and type(steps[0]) is int \
            and 1 <= steps[0] < 2 ** 62:
        return steps            # the kernel API's one plain count
    if type(steps) is not list and type(steps) is not tuple:
        steps = list(np.asarray(steps).reshape(-1))
    steps = [_validation.step_count(f"steps[{i}]", s)
             for i, s in enumerate(_as_list("steps", steps, n))]
    for i, s in enumerate(steps):
        if s < 1 and grads[i] is not None:
            raise ValueError(f"steps[{i}]: expected a step count >= 1 (the count of this "
                             f"step), got {s}")
    return steps


# ---- the two entry points ------------------------------------------------------------------

def _check_lists(streams: list, name, required=()) -> None:
    """Every check of a step over NumPy lists in Python, raising the message for the first
    failure: the state streams the rule always reads (``required``) present, layouts, dtypes
    and shapes, then overlaps. ``name(stream, i)`` names an entry. The NumPy backend runs it
    before a step; the native one does these checks in C and comes here only for the
    message."""
    params = streams[0]
    for i, g in enumerate(streams[1]):
        for k in required:
            if g is not None and (streams[k] is None or streams[k][i] is None):
                raise TypeError(f"{name(k, i)}: expected an array (a state the rule reads), "
                                "got None")
    written = []
    for i, p in enumerate(params):
        _validation.check_param(name(0, i), p)
        written.append((name(0, i), p))
        for k in range(2, S):
            col = streams[k]
            if col is not None and col[i] is not None:
                _validation.check_like(name(k, i), col[i], p, name(0, i), writeable=True,
                                       stream=k)
                written.append((name(k, i), col[i]))
        for k in range(2, M):
            codes = None if streams[k] is None else streams[k][i]
            scales = None if streams[k + A1 - 2] is None else streams[k + A1 - 2][i]
            if scales is not None or (codes is not None and codes.dtype in _validation.Q8_CODES):
                _validation.check_q8_pair(name(k, i), codes, name(k + A1 - 2, i), scales)
    grads = streams[1]
    for i, (g, p) in enumerate(zip(grads, params)):
        if g is not None:
            _validation.check_like(name(1, i), g, p, name(0, i), writeable=False, stream=1)
    _validation.check_disjoint(written)
    spans = _validation.WrittenSpans(written)
    for i, g in enumerate(grads):
        if g is not None:
            _validation.check_no_overlap(name(1, i), g, spans)


def _prepass_reference(grads, group, ngroups, check_finite):
    """The driver's pre-pass in NumPy: per group, the sum of squares of its gradients (in
    fastopt.reference.grad_norm's order, which is the native one) and a non-finite flag."""
    sumsq, bad = [0.0] * ngroups, [False] * ngroups
    for k in range(ngroups):
        mine = [g for i, g in enumerate(grads) if g is not None and group[i] == k]
        if mine:
            sumsq[k] = reference.grad_sumsq(mine)
            if check_finite:
                bad[k] = not all(bool(np.isfinite(g).all()) for g in mine)
    return sumsq, bad


def _run_reference(rule, streams, group, records, gscale, steps, increment, aux, max_norms,
                   check_finite, norms, rounding=None, seed=0, ids=None):
    grads = streams[1]
    ngroups = len(records)
    gs = [float(x) for x in gscale]
    if check_finite or (max_norms is not None and any(m > 0 for m in max_norms)):
        sumsq, bad = _prepass_reference(grads, group, ngroups, check_finite)
        if check_finite and any(bad):
            return SKIPPED
        for k in range(ngroups):
            if max_norms is not None and max_norms[k] > 0:
                norm = float(np.sqrt(sumsq[k])) * abs(gs[k])     # unscaled, as native
                if norms is not None:
                    norms[k] = norm
                coef = max_norms[k] / (norm + 1e-6)
                if not coef >= 1.0:
                    gs[k] = gs[k] * coef
    kwargs = [rule.kwargs(list(r)) for r in records]
    with _signals_deferred():      # a step is applied whole, as the native one is
        for i, g in enumerate(grads):
            if g is None:
                continue
            if increment:
                steps[i] += 1
            bufs = [None, None] + [None if streams[k] is None else streams[k][i]
                                   for k in range(2, M)]
            master = streams[M][i] if streams[M] is not None else None
            scales = tuple(None if streams[k] is None else streams[k][i]
                           for k in range(A1, A1 + 3))
            kw = dict(kwargs[group[i]])
            if rule.name not in ("probe", "ema"):
                kw["grad_scale"] = gs[group[i]]
            mode = 0 if rounding is None else int(rounding[group[i]])
            k = len(rule.aux)
            ax = None if aux is None else aux[i * k:(i + 1) * k]
            mixed = reference.Mixed.of(streams[0][i], g, bufs, master, scales)
            if mixed is None:
                rule.reference(streams[0][i], g, bufs, step=int(steps[i]), aux=ax, **kw)
                continue
            rule.reference(mixed.param, mixed.grad, mixed.bufs, step=int(steps[i]), aux=ax,
                           **kw)
            pid = i if ids is None else int(ids[i])
            mixed.store(mode, reference.sr_key(seed, pid, int(steps[i])) if mode else 0)
    return OK


@contextlib.contextmanager
def _signals_deferred():
    """Hold back a Ctrl-C (SIGINT) until the block ends, then raise it: the NumPy step is many
    array operations, and an interrupt between two of them would leave a param half-updated.
    Only the main thread can install signal handlers; elsewhere nothing is deferred."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        try:
            if callable(previous):
                previous(signal.SIGINT, None)
            elif previous == signal.SIG_DFL:
                raise KeyboardInterrupt
            # SIG_IGN: ignored, as it would have been
        except KeyboardInterrupt:
            raise AppliedInterrupt from None


class AppliedInterrupt(KeyboardInterrupt):
    """A Ctrl-C held back until the step it arrived in was applied whole: the caller must not
    undo that step's bookkeeping (the optimizers keep the state it created)."""


def run_lists(rule: _spec.Rule, streams: list, names: list[str], *, group=None, records,
              gscale=None, steps=None, increment: bool = False, aux=None, max_norms=None,
              check_finite: bool = False, norms=None, memo=None, rounding=None,
              seed: int = 0, ids=None) -> int:
    """Run ``rule`` over NumPy lists: ``streams`` holds FO_MAX_STREAMS entries (params, grads,
    then each state stream: a list with one entry per tensor, or None). ``names`` names each
    stream for messages (``names[k][i]``). ``records`` are the argument records (one per
    group), ``group`` the record of each tensor (default all 0). Returns OK or SKIPPED (see
    fastopt._kernels.run); nothing is modified unless every check passes. ``rounding`` (per
    group), ``seed`` and ``ids`` (per tensor: its id in stochastic rounding's key, default its
    index) as fastopt._kernels.run's."""
    n = len(streams[0])
    group = _zeros32(n) if group is None else np.asarray(group, np.int32)
    if type(records) is not np.ndarray or records.ndim != 2 or records.dtype != np.float64:
        records = np.asarray(records, dtype=np.float64).reshape(len(records), -1)
    gscale = np.ones(len(records)) if gscale is None else np.asarray(gscale, np.float64)
    steps = np.ones(n, np.int64) if steps is None else steps

    def name(k, i):
        return f"{names[k]}[{i}]"

    if not NATIVE:
        _check_lists(streams, name, _required(rule))
        return _run_reference(rule, streams, group, records, gscale, steps, increment, aux,
                              max_norms, check_finite, norms, rounding, seed, ids)
    frame, memo = _call_frame(memo)
    rc = frame.fill_numpy_lists(streams, n)
    if rc >= 0:
        frame.release()
        _check_lists(streams, name, _required(rule))     # raises with the message
        raise RuntimeError(f"fastopt: internal error, stream refused with reason {rc}")
    try:
        return _native.run(frame, _native.RULES[rule.name], group, records, gscale, steps,
                           increment, get_num_threads(), aux, max_norms, check_finite, norms,
                           memo, True, _rounding(rounding), seed,
                           None if ids is None else np.ascontiguousarray(ids, np.int64))
    except _native.ContractError:
        frame.release()
        _check_lists(streams, name, _required(rule))
        raise
    finally:
        frame.release()


def _required(rule: _spec.Rule) -> tuple[int, ...]:
    """The state streams ``rule`` reads whatever its settings (csrc's fo_required_streams)."""
    return tuple(b.stream for b in rule.buffers if b.needed is _spec.ALWAYS)


_local = threading.local()
_ZEROS32 = [np.zeros(n, np.int32) for n in range(9)]
for _z in _ZEROS32:
    _z.flags.writeable = False


def _zeros32(n: int) -> np.ndarray:
    return _ZEROS32[n] if n < len(_ZEROS32) else np.zeros(n, np.int32)


def _call_frame(memo):
    """A frame for one run_lists call, and a contract memo (memoised by content, so it holds
    for any arrays): this thread's own, reused, which is the kernel API's small-call cost. No
    Python code runs between a fill and its run, so one per thread suffices."""
    mine = getattr(_local, "frame", None)
    if mine is None:
        mine = _local.frame = _native.Frame()
        _local.memo = _native.Memo()
    return mine, _local.memo if memo is None else memo


def run_frame(frame: Any, rule: _spec.Rule, *, group, records, gscale, steps,
              increment: bool, aux=None, max_norms=None, check_finite: bool = False,
              norms=None, memo=None, nthreads: int | None = None, release: bool = True,
              rounding=None, seed: int = 0, ids=None) -> int:
    """Run ``rule`` over a frame an adapter filled (native backend only). Raises
    fastopt._kernels.ContractError, which the adapter turns into a message. ``release=False``
    keeps the frame's references, so that it can run again unchanged (the benchmark's probe)."""
    return run_prepared(frame, *prepare(rule, group=group, records=records, gscale=gscale,
                                        steps=steps, increment=increment, aux=aux,
                                        max_norms=max_norms, check_finite=check_finite,
                                        norms=norms, memo=memo, release=release,
                                        rounding=rounding, seed=seed, ids=ids),
                        nthreads=nthreads)


def prepare(rule: _spec.Rule, *, group, records, gscale, steps, increment: bool, aux=None,
            max_norms=None, check_finite: bool = False, norms=None, memo=None,
            release: bool = True, rounding=None, seed: int = 0,
            ids=None) -> tuple[tuple, tuple]:
    """run_frame's arguments as the driver takes them, made once by a frontend that steps the
    same tables every step (the NumPy optimizers): pass them to ``run_prepared``."""
    return ((_native.RULES[rule.name], group, records, gscale, steps, increment),
            (aux, max_norms, check_finite, norms, memo, release, _rounding(rounding), seed,
             ids))


def _rounding(rounding):
    return None if rounding is None else np.ascontiguousarray(rounding, dtype=np.uint8)


def run_prepared(frame: Any, head: tuple, tail: tuple, nthreads: int | None = None) -> int:
    """The driver call itself (see run_frame and prepare)."""
    return _native.run(frame, *head, get_num_threads() if nthreads is None else nthreads,
                       *tail)


def _call(rule, grad_scale, names, params, grads, buffers, row, steps=None, aux=None):
    """The kernel API's call: check the lists, then ``rule`` over all tensors in one call.

    ``names``: the name of params and of each buffer list (for messages); ``buffers``: one list
    per state stream (S1, S2, S3), or None for a stream the call does not use.
    """
    if (NATIVE and type(params) is list and len(params) == 1 and type(grads) is list
            and len(grads) == 1 and grad_scale == 1.0 and type(grad_scale) is float
            and type(row) is np.ndarray and _one_tensor(rule, params, grads, buffers, row,
                                                        steps, aux)):
        return
    if type(params) is not list:
        if isinstance(params, np.ndarray) or not isinstance(params, Sequence):
            raise TypeError(f"params: expected a list or tuple of arrays, got "
                            f"{type(params).__name__}")
        params = list(params)
    n = len(params)
    grads = _as_list("grads", grads, n)
    buffers = [None if b is None else _as_list(name, b, n)
               for name, b in zip(names[1:], buffers)]
    steps = np.ones(n, np.int64) if steps is None else np.array(_steps(steps, grads, n),
                                                                np.int64)
    gs = grad_scale if type(grad_scale) is float and math.isfinite(grad_scale) else \
        _validation.real("grad_scale", grad_scale, low=None)
    streams = [params, grads] + buffers + [None] * (S - 2 - len(buffers))
    stream_names = [names[0], "grads"] + list(names[1:]) + ["master"] * (S - 1 - len(names))
    run_lists(rule, streams, stream_names,
              records=row if type(row) is np.ndarray else _record_array(row),
              gscale=_ONE if gs == 1.0 else np.array([gs]), steps=steps, aux=aux)


def _one_tensor(rule, params, grads, buffers, row, steps, aux) -> bool:
    """The kernel API's one-tensor call without the list machinery: True when it ran; False
    (nothing modified) when anything is not plain, for the checked path to run or explain."""
    if steps is None:
        count = 1
    elif type(steps) is list and len(steps) == 1 and type(steps[0]) is int \
            and 1 <= steps[0] < 2 ** 62:
        count = steps[0]
    else:
        return False
    counts = getattr(_local, "count", None)     # this thread's; read by the call only
    if counts is None:
        counts = _local.count = np.ones(1, np.int64)
    counts[0] = count
    streams = [params, grads]
    for b in buffers:
        if b is not None and (type(b) is not list or len(b) != 1):
            return False
        streams.append(b)
    streams += _ABSENT[len(streams):]
    frame, memo = _call_frame(None)
    try:
        if frame.fill_numpy_lists(streams, 1) >= 0:
            return False
        _native.run(frame, _native.RULES[rule.name], _ZEROS32[1], row, _ONE, counts, False,
                    get_num_threads(), aux, None, False, None, memo)
    except _native.ContractError:
        return False
    finally:
        frame.release()
    return True


_ABSENT = [None] * S
_ONE = np.ones(1)
_ONE.flags.writeable = False
_RECORD_ARRAYS: dict = {}
_ROWS: dict = {}


def _row(rule: _spec.Rule, make, *values) -> np.ndarray:
    """The validated record of a functional call as the driver's read-only (1, fields) array,
    memoised by ``values`` (every value ``make()``'s group dict is built from) and their exact
    types, so that True is not taken for 1.0: a call with the same hyperparameters as an
    earlier one skips the group dict and its validation (the kernel API's small-call cost).
    Only immutable plain values are memoised (a tensor or 0-d array lr may change in place)."""
    types = tuple(map(type, values))
    if not _spec.IMMUTABLE.issuperset(types):
        return _record_array(rule.record(make()))
    key = (rule.name, values, types)
    hit = _ROWS.get(key)
    if hit is None:
        hit = _record_array(rule.record(make()))
        if len(_ROWS) >= 256:
            _ROWS.clear()
        _ROWS[key] = hit
    return hit


def _record_array(row: list) -> np.ndarray:
    """A validated record as the driver's (1, fields) array, kept read-only per distinct row
    (the kernel API calls with the same hyperparameters step after step)."""
    key = tuple(row)
    out = _RECORD_ARRAYS.get(key)
    if out is None:
        if len(_RECORD_ARRAYS) >= 256:
            _RECORD_ARRAYS.clear()
        out = _RECORD_ARRAYS[key] = np.array([row], dtype=np.float64)
        out.flags.writeable = False
    return out


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
    row = _row(_spec.ADAM, lambda: dict(lr=lr, betas=(beta1, beta2), eps=eps,
                                        weight_decay=weight_decay,
                                 decoupled_weight_decay=decoupled_weight_decay, amsgrad=False,
                                 maximize=maximize, l1=l1, clip_value=clip_value),
               lr, beta1, beta2, eps, weight_decay, decoupled_weight_decay, maximize, l1,
               clip_value)
    _call(_spec.ADAM, grad_scale, ["params", "exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs"], params,
          grads, [exp_avgs, exp_avg_sqs, max_exp_avg_sqs], row, steps)




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
    row = _row(_spec.SGD, lambda: dict(lr=lr, momentum=momentum, dampening=dampening,
                                weight_decay=weight_decay, nesterov=nesterov, maximize=maximize,
                                l1=l1, clip_value=clip_value),
               lr, momentum, dampening, weight_decay, nesterov, maximize, l1, clip_value)
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
    _call(_spec.SGD, grad_scale, ["params", "momentum_buffers"], params, grads, [momentum_buffers],
          row, [1 if b else 2 for b in init])




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
    row = _row(_spec.RMSPROP, lambda: dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                                    momentum=momentum, centered=centered, maximize=maximize,
                                    l1=l1, clip_value=clip_value),
               lr, alpha, eps, weight_decay, momentum, centered, maximize, l1, clip_value)
    if momentum > 0 and momentum_buffers is None:
        raise ValueError("momentum_buffers: required when momentum > 0")
    if centered and grad_avgs is None:
        raise ValueError("grad_avgs: required when centered")
    _call(_spec.RMSPROP, grad_scale, ["params", "square_avgs", "momentum_buffers", "grad_avgs"],
          params, grads, [square_avgs, momentum_buffers if momentum > 0 else None,
                          grad_avgs if centered else None], row)




# ---- Adagrad -------------------------------------------------------------------------------

def adagrad(params: Arrays, grads: Sequence[np.ndarray | None], state_sums: Arrays, steps, *,
            lr: float = 1e-2, lr_decay: float = 0.0, weight_decay: float = 0.0,
            eps: float = 1e-10, maximize: bool = False, l1: float = 0.0,
            clip_value: float | None = None,
            grad_scale: float = 1.0) -> None:
    """Adagrad on many tensors in one native call; params and sums modified in place."""
    row = _row(_spec.ADAGRAD, lambda: dict(lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                                    eps=eps, initial_accumulator_value=0.0, maximize=maximize,
                                    l1=l1, clip_value=clip_value),
               lr, lr_decay, weight_decay, eps, maximize, l1, clip_value)
    _call(_spec.ADAGRAD, grad_scale, ["params", "state_sums"], params, grads, [state_sums], row,
          steps)




# ---- Lion ----------------------------------------------------------------------------------

def lion(params: Arrays, grads: Sequence[np.ndarray | None], exp_avgs: Arrays, *,
         lr: float = 1e-4, beta1: float = 0.9, beta2: float = 0.99, weight_decay: float = 0.0,
         maximize: bool = False, l1: float = 0.0, clip_value: float | None = None,
         grad_scale: float = 1.0) -> None:
    """Lion on many tensors in one native call; params and exp_avgs modified in place."""
    row = _row(_spec.LION, lambda: dict(lr=lr, betas=(beta1, beta2), weight_decay=weight_decay,
                                 maximize=maximize, l1=l1, clip_value=clip_value),
               lr, beta1, beta2, weight_decay, maximize, l1, clip_value)
    _call(_spec.LION, grad_scale, ["params", "exp_avgs"], params, grads, [exp_avgs], row)




# ---- Adamax --------------------------------------------------------------------------------

def adamax(params: Arrays, grads: Sequence[np.ndarray | None], exp_avgs: Arrays,
           exp_infs: Arrays, steps, *, lr: float = 2e-3, beta1: float = 0.9,
           beta2: float = 0.999, eps: float = 1e-8, weight_decay: float = 0.0,
           maximize: bool = False, l1: float = 0.0, clip_value: float | None = None,
           grad_scale: float = 1.0) -> None:
    """Adamax on many tensors in one native call; params and state modified in place."""
    row = _row(_spec.ADAMAX, lambda: dict(lr=lr, betas=(beta1, beta2), eps=eps,
                                   weight_decay=weight_decay, maximize=maximize, l1=l1,
                                   clip_value=clip_value),
               lr, beta1, beta2, eps, weight_decay, maximize, l1, clip_value)
    _call(_spec.ADAMAX, grad_scale, ["params", "exp_avgs", "exp_infs"], params, grads,
          [exp_avgs, exp_infs], row, steps)




# ---- RAdam ---------------------------------------------------------------------------------

def radam(params: Arrays, grads: Sequence[np.ndarray | None], exp_avgs: Arrays,
          exp_avg_sqs: Arrays, steps, *, lr: float = 1e-3, beta1: float = 0.9,
          beta2: float = 0.999, eps: float = 1e-8, weight_decay: float = 0.0,
          decoupled_weight_decay: bool = False, maximize: bool = False,
          l1: float = 0.0, clip_value: float | None = None,
          grad_scale: float = 1.0) -> None:
    """RAdam on many tensors in one native call; params and state modified in place."""
    row = _row(_spec.RADAM, lambda: dict(lr=lr, betas=(beta1, beta2), eps=eps,
                                  weight_decay=weight_decay,
                                  decoupled_weight_decay=decoupled_weight_decay,
                                  maximize=maximize, l1=l1, clip_value=clip_value),
               lr, beta1, beta2, eps, weight_decay, decoupled_weight_decay, maximize, l1,
               clip_value)
    _call(_spec.RADAM, grad_scale, ["params", "exp_avgs", "exp_avg_sqs"], params, grads,
          [exp_avgs, exp_avg_sqs], row, steps)




# ---- NAdam ---------------------------------------------------------------------------------

def nadam(params: Arrays, grads: Sequence[np.ndarray | None], exp_avgs: Arrays,
          exp_avg_sqs: Arrays, mu_products: np.ndarray, steps, *, lr: float = 2e-3,
          beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8,
          weight_decay: float = 0.0, momentum_decay: float = 4e-3,
          decoupled_weight_decay: bool = False, maximize: bool = False, l1: float = 0.0,
          clip_value: float | None = None, grad_scale: float = 1.0) -> None:
    """NAdam on many tensors in one native call; params, state and ``mu_products`` (a float64
    array with one running product per tensor, starting at 1) modified in place."""
    row = _row(_spec.NADAM, lambda: dict(lr=lr, betas=(beta1, beta2), eps=eps,
                                  weight_decay=weight_decay, momentum_decay=momentum_decay,
                                  decoupled_weight_decay=decoupled_weight_decay,
                                  maximize=maximize, l1=l1, clip_value=clip_value),
               lr, beta1, beta2, eps, weight_decay, momentum_decay, decoupled_weight_decay,
               maximize, l1, clip_value)
    if (not isinstance(mu_products, np.ndarray) or mu_products.dtype != np.float64
            or mu_products.shape != (len(params),) or not mu_products.flags.c_contiguous
            or not mu_products.flags.writeable):
        raise TypeError(f"mu_products: expected a writeable float64 array of shape "
                        f"({len(params)},)")
    _call(_spec.NADAM, grad_scale, ["params", "exp_avgs", "exp_avg_sqs"], params, grads,
          [exp_avgs, exp_avg_sqs], row, steps, mu_products)




# ---- Adadelta ------------------------------------------------------------------------------

def adadelta(params: Arrays, grads: Sequence[np.ndarray | None], square_avgs: Arrays,
             acc_deltas: Arrays, *, lr: float = 1.0, rho: float = 0.9, eps: float = 1e-6,
             weight_decay: float = 0.0, maximize: bool = False, l1: float = 0.0,
             clip_value: float | None = None, grad_scale: float = 1.0) -> None:
    """Adadelta on many tensors in one native call; params and state modified in place.
    See ``fastopt.Adadelta`` for the formula."""
    row = _row(_spec.ADADELTA, lambda: dict(lr=lr, rho=rho, eps=eps, weight_decay=weight_decay,
                                     maximize=maximize, l1=l1, clip_value=clip_value),
               lr, rho, eps, weight_decay, maximize, l1, clip_value)
    _call(_spec.ADADELTA, grad_scale, ["params", "square_avgs", "acc_deltas"], params, grads,
          [square_avgs, acc_deltas], row)


# ---- Rprop ---------------------------------------------------------------------------------

def rprop(params: Arrays, grads: Sequence[np.ndarray | None], prevs: Arrays,
          step_sizes: Arrays, *, etaminus: float = 0.5, etaplus: float = 1.2,
          step_size_min: float = 1e-6, step_size_max: float = 50.0, maximize: bool = False,
          l1: float = 0.0, clip_value: float | None = None, grad_scale: float = 1.0) -> None:
    """Rprop on many tensors in one native call; params, prevs and step_sizes (each element's
    step size: start them at lr) modified in place. See ``fastopt.Rprop`` for the formula."""
    row = _row(_spec.RPROP, lambda: dict(lr=0.0, etas=(etaminus, etaplus),
                                  step_sizes=(step_size_min, step_size_max),
                                  maximize=maximize, l1=l1, clip_value=clip_value),
               etaminus, etaplus, step_size_min, step_size_max, maximize, l1, clip_value)
    _call(_spec.RPROP, grad_scale, ["params", "prevs", "step_sizes"], params, grads,
          [prevs, step_sizes], row)


# ---- ASGD ----------------------------------------------------------------------------------

def asgd(params: Arrays, grads: Sequence[np.ndarray | None], axs: Arrays, eta_mu: np.ndarray,
         steps, *, lr: float = 1e-2, lambd: float = 1e-4, alpha: float = 0.75,
         t0: float = 1e6, weight_decay: float = 0.0, maximize: bool = False, l1: float = 0.0,
         clip_value: float | None = None, grad_scale: float = 1.0) -> None:
    """ASGD on many tensors in one native call; params, axs and ``eta_mu`` (a float64 (T, 2)
    array: each tensor's eta and mu, starting at (float32(lr), 1)) modified in place. See
    ``fastopt.ASGD`` for the formula."""
    row = _row(_spec.ASGD, lambda: dict(lr=lr, lambd=lambd, alpha=alpha, t0=t0,
                                 weight_decay=weight_decay, maximize=maximize, l1=l1,
                                 clip_value=clip_value),
               lr, lambd, alpha, t0, weight_decay, maximize, l1, clip_value)
    if (not isinstance(eta_mu, np.ndarray) or eta_mu.dtype != np.float64
            or eta_mu.shape != (len(params), 2) or not eta_mu.flags.c_contiguous
            or not eta_mu.flags.writeable):
        raise TypeError(f"eta_mu: expected a writeable C-contiguous float64 array of shape "
                        f"({len(params)}, 2)")
    _call(_spec.ASGD, grad_scale, ["params", "axs"], params, grads, [axs], row, steps,
          eta_mu.reshape(-1))


# ---- LAMB ----------------------------------------------------------------------------------

def lamb(params: Arrays, grads: Sequence[np.ndarray | None], exp_avgs: Arrays,
         exp_avg_sqs: Arrays, steps, *, lr: float = 1e-3, beta1: float = 0.9,
         beta2: float = 0.999, eps: float = 1e-6, weight_decay: float = 0.01,
         bias_correction: bool = True, use_nvlamb: bool = False, maximize: bool = False,
         l1: float = 0.0, clip_value: float | None = None, grad_scale: float = 1.0) -> None:
    """LAMB on many tensors in one native call (each tensor's trust ratio from its own
    norms); params and state modified in place. See ``fastopt.LAMB`` for the formula."""
    row = _row(_spec.LAMB, lambda: dict(lr=lr, betas=(beta1, beta2), eps=eps,
                                 weight_decay=weight_decay, bias_correction=bias_correction,
                                 use_nvlamb=use_nvlamb, maximize=maximize, l1=l1,
                                 clip_value=clip_value),
               lr, beta1, beta2, eps, weight_decay, bias_correction, use_nvlamb, maximize, l1,
               clip_value)
    _call(_spec.LAMB, grad_scale, ["params", "exp_avgs", "exp_avg_sqs"], params, grads,
          [exp_avgs, exp_avg_sqs], row, steps)


# ---- the probe -----------------------------------------------------------------------------

def probe(arrays: Sequence[np.ndarray]) -> None:
    """The speed limit of a rule: reads every array and writes all but ``arrays[1]`` (2 to 5
    arrays of one shape and dtype, as [param, grad, state...]). Used by the benchmark."""
    arrays = list(arrays)
    if not 2 <= len(arrays) <= 5:
        raise ValueError(f"probe: expected 2 to 5 arrays, got {len(arrays)}")
    p, g, *rest = arrays
    bufs: list[list[np.ndarray] | None] = [[b] for b in rest]
    bufs += [None] * (3 - len(bufs))
    _call(_spec.PROBE, 1.0, ["arrays", "state0", "state1", "state2"], [p], [g], bufs,
          [float(len(arrays))])


# ---- SparseAdam and Adafactor: entries of their own (csrc/rules2.c) -------------------------

_OWN = NATIVE and hasattr(_native, "sparse_adam")


def _own_arrays(kind, lists, names, dtype_of=0):
    """The structural checks of an own-entry call in Python (dtypes, shapes, layout and that
    no written array shares memory with another array of the call); the native entry repeats
    the first three before it writes, the reference path relies on these."""
    named = []
    for name, arrs, written in zip(names, lists, kind):
        for i, a in enumerate(arrs):
            if a is None:
                continue
            if not isinstance(a, np.ndarray):
                raise TypeError(f"{name}[{i}]: expected a NumPy array, got {type(a).__name__}")
            if a.dtype not in _validation.FLOAT_DTYPES or not a.dtype.isnative:
                raise TypeError(f"{name}[{i}]: expected float32 or float64 (native byte "
                                f"order), got {a.dtype}")
            if not a.flags.c_contiguous or not a.flags.aligned:
                raise ValueError(f"{name}[{i}]: expected a C-contiguous, aligned array")
            if written and not a.flags.writeable:
                raise ValueError(f"{name}[{i}]: the array is read-only")
            named.append((f"{name}[{i}]", a, written))
    _validation.check_disjoint([(n, a) for n, a, w in named if w])
    spans = _validation.WrittenSpans([(n, a) for n, a, w in named if w])
    for n, a, w in named:
        if not w:
            _validation.check_no_overlap(n, a, spans)


def _like(name, a, shape, dtype):
    if tuple(a.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)}, got {tuple(a.shape)}")
    if a.dtype != dtype:
        raise TypeError(f"{name}: expected dtype {dtype} (the param's), got {a.dtype}")


def sparse_adam(params: Arrays, indices: Sequence[np.ndarray], values: Arrays,
                exp_avgs: Arrays, exp_avg_sqs: Arrays, steps, *, lr: float = 1e-3,
                beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8,
                maximize: bool = False) -> None:
    """SparseAdam on many params in one native call: params[i]'s rows ``indices[i]`` (int64,
    unique and increasing: see ``fastopt.reference.coalesce``) with gradient rows
    ``values[i]``; ``steps[i]`` the count of this step (from 1). Every array and index is
    checked before anything is written: an index out of range raises IndexError naming the
    param, the position and the index. See ``fastopt.SparseAdam``."""
    run_own(prepare_sparse_adam(params, indices, values, exp_avgs, exp_avg_sqs, steps, lr=lr,
                                beta1=beta1, beta2=beta2, eps=eps, maximize=maximize))


def prepare_sparse_adam(params, indices, values, exp_avgs, exp_avg_sqs, steps, *, lr, beta1,
                        beta2, eps, maximize) -> tuple:
    """sparse_adam's checks (all of them, indices included: nothing is written); returns
    what ``run_own`` runs."""
    h = _spec.SPARSE_ADAM.pack(dict(lr=lr, betas=(beta1, beta2), eps=eps, maximize=maximize))
    n = len(params)
    params, indices, values = (_as_list(k, x, n) for k, x in
                               (("params", params), ("indices", indices), ("values", values)))
    exp_avgs, exp_avg_sqs = _as_list("exp_avgs", exp_avgs, n), _as_list("exp_avg_sqs",
                                                                          exp_avg_sqs, n)
    steps = [_validation.step_count(f"steps[{i}]", s)
             for i, s in enumerate(_as_list("steps", list(steps), n))]
    _own_arrays((True, False, True, True), [params, values, exp_avgs, exp_avg_sqs],
                ["params", "values", "exp_avgs", "exp_avg_sqs"])
    for i, p in enumerate(params):
        if p.ndim < 1:
            raise ValueError(f"params[{i}]: expected at least one dimension (the rows), got a "
                             "0-d array")
        idx = indices[i]
        if not isinstance(idx, np.ndarray) or idx.dtype != np.int64 or idx.ndim != 1:
            raise TypeError(f"indices[{i}]: expected a 1-d int64 array, got "
                            f"{getattr(idx, 'dtype', type(idx).__name__)}")
        _like(f"values[{i}]", values[i], (idx.shape[0],) + p.shape[1:], p.dtype)
        _like(f"exp_avgs[{i}]", exp_avgs[i], p.shape, p.dtype)
        _like(f"exp_avg_sqs[{i}]", exp_avg_sqs[i], p.shape, p.dtype)
        if steps[i] < 1:
            raise ValueError(f"steps[{i}]: expected a step count >= 1, got {steps[i]}")
    nss = np.array([-(h["lr"] * math.sqrt(1 - h["beta2"] ** s) / (1 - h["beta1"] ** s))
                    for s in steps], dtype=np.float64).reshape(n)
    for i, (p, idx) in enumerate(zip(params, indices)):
        bad = np.flatnonzero((idx < 0) | (idx >= p.shape[0]))
        if bad.size:
            k = int(bad[0])
            raise IndexError(f"indices[{i}]: index {int(idx[k])} at position {k} is out of "
                             f"range for params[{i}] with {p.shape[0]} rows")
        bad = np.flatnonzero(idx[1:] <= idx[:-1])
        if bad.size:
            k = int(bad[0]) + 1
            raise ValueError(f"indices[{i}]: index {int(idx[k])} at position {k} does not "
                             "follow the one before in increasing order (coalesce the "
                             "gradient: unique, sorted indices)")
    indices = [np.ascontiguousarray(i) for i in indices]
    return ("sparse_adam", h, (params, indices, values, exp_avgs, exp_avg_sqs, steps, nss))


def run_own(prepared: tuple, nthreads: int | None = None) -> None:
    """Run a call that ``prepare_sparse_adam`` or ``prepare_adafactor`` checked (on at most
    ``nthreads`` threads; None: ``fastopt.get_num_threads()``)."""
    rule, h, args = prepared
    nt = get_num_threads() if nthreads is None else min(nthreads, get_num_threads())
    if rule == "sparse_adam":
        params, indices, values, exp_avgs, exp_avg_sqs, steps, nss = args
        if _OWN:
            _native.sparse_adam(params, indices, values, exp_avgs, exp_avg_sqs, nss,
                                h["beta1"], h["beta2"], h["eps"], h["maximize"], nt)
            return
        for i, p in enumerate(params):
            reference.sparse_adam_step(p, indices[i], values[i], exp_avgs[i], exp_avg_sqs[i],
                                       step=steps[i], lr=h["lr"], beta1=h["beta1"],
                                       beta2=h["beta2"], eps=h["eps"], maximize=h["maximize"])
        return
    params, grads, row_vars, col_vars, variances, steps, table, e1 = args
    if _OWN:
        _native.adafactor(params, grads, row_vars, col_vars, variances, table, nt)
        return
    for i, p in enumerate(params):
        reference.adafactor_step(p, grads[i], row_vars[i], col_vars[i], variances[i],
                                 step=steps[i], lr=h["lr"], beta2_decay=h["beta2_decay"],
                                 eps1=e1, eps2=h["eps2"], d=h["d"],
                                 weight_decay=h["weight_decay"], maximize=h["maximize"])


def adafactor(params: Arrays, grads: Arrays, row_vars: Sequence[np.ndarray | None],
              col_vars: Sequence[np.ndarray | None], variances: Sequence[np.ndarray | None],
              steps, *, lr: float = 1e-2, beta2_decay: float = -0.8, eps1: float | None = None,
              eps2: float = 1e-3, d: float = 1.0, weight_decay: float = 0.0,
              maximize: bool = False) -> None:
    """Adafactor on many params in one native call; ``steps[i]`` the count of this step
    (from 1). 2+-d params take ``row_vars[i]``/``col_vars[i]`` (torch's shapes) and None
    variance, others ``variances[i]``. ``eps1=None``: the machine epsilon of the first param's
    dtype (torch resolves it once per group, from its first param). Empty params are skipped.
    See ``fastopt.Adafactor``."""
    run_own(prepare_adafactor(params, grads, row_vars, col_vars, variances, steps, lr=lr,
                              beta2_decay=beta2_decay, eps1=eps1, eps2=eps2, d=d,
                              weight_decay=weight_decay, maximize=maximize))


def prepare_adafactor(params, grads, row_vars, col_vars, variances, steps, *, lr, beta2_decay,
                      eps1, eps2, d, weight_decay, maximize) -> tuple:
    """adafactor's checks (nothing is written); returns what ``run_own`` runs."""
    h = _spec.ADAFACTOR.pack(dict(lr=lr, beta2_decay=beta2_decay, eps=(eps1, eps2), d=d,
                                  weight_decay=weight_decay, maximize=maximize))
    n = len(params)
    params, grads = _as_list("params", params, n), _as_list("grads", grads, n)
    row_vars, col_vars = _as_list("row_vars", row_vars, n), _as_list("col_vars", col_vars, n)
    variances = _as_list("variances", variances, n)
    steps = [_validation.step_count(f"steps[{i}]", s)
             for i, s in enumerate(_as_list("steps", list(steps), n))]
    _own_arrays((True, False, True, True, True), [params, grads, row_vars, col_vars, variances],
                ["params", "grads", "row_vars", "col_vars", "variances"])
    for i, p in enumerate(params):
        _like(f"grads[{i}]", grads[i], p.shape, p.dtype)
        shapes = _spec.ADAFACTOR.state_keys(tuple(p.shape))
        for key, name, arrs in (("row_var", "row_vars", row_vars),
                                ("col_var", "col_vars", col_vars),
                                ("variance", "variances", variances)):
            if key in shapes:
                if arrs[i] is None:
                    raise ValueError(f"{name}[{i}]: params[{i}] of shape {p.shape} needs it")
                _like(f"{name}[{i}]", arrs[i], shapes[key], p.dtype)
            elif arrs[i] is not None:
                raise ValueError(f"{name}[{i}]: expected None for params[{i}] of shape "
                                 f"{p.shape}")
        if steps[i] < 1:
            raise ValueError(f"steps[{i}]: expected a step count >= 1, got {steps[i]}")
    e1 = h["eps1"]
    if e1 is None:
        e1 = float(np.finfo(params[0].dtype).eps) if n else 0.0
    keep = [i for i in range(n) if params[i].size]
    lr, wd = h["lr"], h["weight_decay"]
    table = np.array([[float(steps[i]) ** h["beta2_decay"],
                       min(lr, 1 / (float(steps[i]) ** 0.5)), e1, h["eps2"], h["d"],
                       1 - lr * wd if wd != 0 else 1.0, -1.0 if h["maximize"] else 1.0]
                      for i in keep], dtype=np.float64).reshape(len(keep), 7)
    return ("adafactor", h, ([params[i] for i in keep], [grads[i] for i in keep],
                             [row_vars[i] for i in keep], [col_vars[i] for i in keep],
                             [variances[i] for i in keep], [steps[i] for i in keep], table, e1))
