"""The NumPy fallback of the native driver (fastopt._kernels), with the same interface.

Selected by FASTOPT_PUREPYTHON=1 (see fastopt._backend). Each step runs the functions of
fastopt.reference, which compute bitwise what the C kernels compute; the checks, return codes
and bookkeeping follow fastopt/_kernels.pyx line for line. One thread, no SIMD choice.
"""
from __future__ import annotations

import bisect
import contextlib
import signal
import threading

import numpy as np

from . import reference

RULE_SGD, RULE_ADAM, RULE_PROBE, RULE_RMSPROP = 0, 1, 2, 3
RULE_ADAGRAD, RULE_LION, RULE_ADAMAX, RULE_RADAM, RULE_EMA, RULE_NADAM = 4, 5, 6, 7, 8, 9
NARGS = {RULE_SGD: 9, RULE_ADAM: 10, RULE_PROBE: 1, RULE_RMSPROP: 10, RULE_ADAGRAD: 8,
         RULE_LION: 8, RULE_ADAMAX: 9, RULE_RADAM: 10, RULE_EMA: 1,
         RULE_NADAM: 11}
MAX_STREAMS = 5
OK = -1
NEEDS_STATE = -2

_grain = 1 << 14
_G = 1


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
        if callable(previous):
            previous(signal.SIGINT, None)
        elif previous == signal.SIG_DFL:
            raise KeyboardInterrupt
        # SIG_IGN: ignored, as it would have been


def address(a):
    return a.ctypes.data     # (__array_interface__ builds a dict per call)


def _span(a):
    start = address(a)
    return start, start + a.nbytes


class Plan:
    """See fastopt._kernels.Plan."""

    def __init__(self, rule, streams, groups):
        if rule not in NARGS:
            raise ValueError(f"unknown rule {rule}")
        if len(groups) != len(streams):
            raise ValueError("groups must have one entry per tensor")
        self.rule = rule
        self.ntensors = len(streams)
        self._rows = [list(row) + [None] * (MAX_STREAMS - len(row)) for row in streams]
        self._ready = [len(row) == MAX_STREAMS for row in streams]
        self._groups = [int(g) for g in groups]
        self._writes = sorted(_span(a) for row in self._rows for k, a in enumerate(row)
                              if k != _G and a is not None and a.nbytes > 0)
        self._write_ends = [hi for _, hi in self._writes]

    def _overlaps_write(self, g):
        if g.nbytes == 0:
            return False
        lo, hi = _span(g)
        # the first write interval ending after lo (intervals are disjoint and sorted)
        k = bisect.bisect_right(self._write_ends, lo)
        return k < len(self._writes) and self._writes[k][0] < hi

    def _grad_ok(self, i, g):
        p = self._rows[i][0]
        return (isinstance(g, np.ndarray) and g.dtype == p.dtype and g.dtype.isnative
                and g.shape == p.shape and g.flags.c_contiguous and g.flags.aligned
                and not self._overlaps_write(g))

    def check(self, grads):
        seq = grads if isinstance(grads, (list, tuple)) else list(grads)
        if len(seq) != self.ntensors:
            raise ValueError(f"expected {self.ntensors} gradients, got {len(seq)}")
        needs_state = False
        for i, g in enumerate(seq):
            if g is None:
                continue
            if not self._grad_ok(i, g):
                return i
            needs_state = needs_state or not self._ready[i]
        return NEEDS_STATE if needs_state else OK

    def step(self, grads, args, steps, increment, nthreads, aux=None):
        seq = grads if isinstance(grads, (list, tuple)) else list(grads)
        T = self.ntensors
        if len(seq) != T:
            raise ValueError(f"expected {T} gradients, got {len(seq)}")
        if steps.dtype != np.int64 or steps.shape != (T,) or not steps.flags.writeable:
            raise ValueError(f"steps: expected a writeable contiguous int64 array of {T}")
        if args.dtype != np.float64 or args.ndim != 2 or args.shape[1] != NARGS[self.rule]:
            raise ValueError(f"args: expected a contiguous float64 array of shape (groups, "
                             f"{NARGS[self.rule]})")
        needs_state = False
        for i, g in enumerate(seq):
            if g is None:
                continue
            if not self._grad_ok(i, g):
                return i
            needs_state = needs_state or not self._ready[i]
            if not 0 <= self._groups[i] < args.shape[0]:
                raise ValueError(f"tensor {i} refers to group {self._groups[i]}, but only "
                                 f"{args.shape[0]} rows of hyperparameters were given")
        if needs_state:
            return NEEDS_STATE
        with _signals_deferred():      # a step is applied whole, as the native one is
            self._apply(seq, args, steps, increment, aux)
        return OK

    def _apply(self, seq, args, steps, increment, aux):
        for i, g in enumerate(seq):
            if g is None:
                continue
            if increment:
                steps[i] += 1
            mu = None if aux is None else aux[i:i + 1]
            self._run(self._rows[i], g, args[self._groups[i]], int(steps[i]), mu)

    def _run(self, row, g, a, step, mu_product=None):
        """One tensor through fastopt.reference (the row layouts of csrc/fastopt.h)."""
        p, _, s1, s2, s3 = row
        a = [float(x) for x in a]
        common = ({} if self.rule in (RULE_PROBE, RULE_EMA)
                  else dict(clip_value=a[-2] or None, grad_scale=a[-1]))
        if self.rule == RULE_ADAM:
            reference.adam_step(p, g, s1, s2, s3, step=step, lr=a[0], beta1=a[1], beta2=a[2],
                                eps=a[3], weight_decay=a[4], decoupled_weight_decay=bool(a[5]),
                                maximize=bool(a[6]), l1=a[7],
                                **common)
        elif self.rule == RULE_SGD:
            reference.sgd_step(p, g, s1 if a[1] != 0 else None, lr=a[0], momentum=a[1],
                               dampening=a[2], weight_decay=a[3], nesterov=bool(a[4]),
                               maximize=bool(a[5]), l1=a[6], init_buffer=step <= 1,
                               **common)
        elif self.rule == RULE_RMSPROP:
            reference.rmsprop_step(p, g, s1, s2, s3, lr=a[0], alpha=a[1], eps=a[2],
                                   weight_decay=a[3], momentum=a[4] if s2 is not None else 0.0,
                                   centered=bool(a[5]) and s3 is not None,
                                   maximize=bool(a[6]), l1=a[7],
                                   **common)
        elif self.rule == RULE_ADAGRAD:
            reference.adagrad_step(p, g, s1, step=step, lr=a[0], lr_decay=a[1],
                                   weight_decay=a[2], eps=a[3], maximize=bool(a[4]), l1=a[5],
                                   **common)
        elif self.rule == RULE_LION:
            reference.lion_step(p, g, s1, lr=a[0], beta1=a[1], beta2=a[2], weight_decay=a[3],
                                maximize=bool(a[4]), l1=a[5],
                                **common)
        elif self.rule == RULE_ADAMAX:
            reference.adamax_step(p, g, s1, s2, step=step, lr=a[0], beta1=a[1], beta2=a[2],
                                  eps=a[3], weight_decay=a[4], maximize=bool(a[5]), l1=a[6],
                                  **common)
        elif self.rule == RULE_RADAM:
            reference.radam_step(p, g, s1, s2, step=step, lr=a[0], beta1=a[1], beta2=a[2],
                                 eps=a[3], weight_decay=a[4], decoupled_weight_decay=bool(a[5]),
                                 maximize=bool(a[6]), l1=a[7],
                                 **common)
        elif self.rule == RULE_NADAM:
            reference.nadam_step(p, g, s1, s2, mu_product, step=step, lr=a[0], beta1=a[1],
                                 beta2=a[2], eps=a[3], weight_decay=a[4], momentum_decay=a[5],
                                 decoupled_weight_decay=bool(a[6]), maximize=bool(a[7]),
                                 l1=a[8], **common)
        elif self.rule == RULE_EMA:
            reference.ema_update(p, g, decay=a[0])
        else:
            streams = [x for x in (p, g, s1, s2, s3)][:int(a[0])]
            total = streams[0] + streams[1]
            for s in streams[2:]:
                total = total + s
            for k, s in enumerate(streams):
                if k != _G:
                    s[...] = total
