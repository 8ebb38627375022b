# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The native driver: fast per-step checks, threading, and the call into the C kernels.

Design note
-----------
A *plan* describes one multi-tensor call: for every tensor its element count, its dtype and the
addresses of its streams (param, grad, state buffers; see csrc/fastopt.h), plus the param group
whose hyperparameters apply to it. The optimizer builds a plan once per set of params and state
and reuses it every step; only the gradient addresses change. A step then

1. checks every gradient with a few C-level tests (ndarray, dtype, shape, C order, alignment, no
   overlap with any array the step writes) and returns the index of the first bad one *before*
   anything is modified (the Python layer then raises with a readable message);
2. derives each tensor's per-step scalars in C from its group's hyperparameters and step count;
3. releases the GIL and runs all tensors as ONE range of elements: below a grain of work it runs
   on the calling thread; above, the range is split into static, cache-line aligned chunks, one per
   OpenMP thread, and each thread walks the tensors its chunk covers.

Every kernel is element-wise, so results do not depend on how the range is split: they are
bitwise identical for any thread count.
"""
cimport numpy as cnp
from cython.parallel cimport prange
from libc.stdint cimport int64_t, uintptr_t
from libc.stdlib cimport malloc, free, qsort
from libc.math cimport sqrt
from libc.string cimport memset

import numpy as np

cnp.import_array()

cdef extern from "fastopt.h" nogil:
    enum:
        FO_P
        FO_G
        FO_MAX_STREAMS
        FO_RULE_SGD
        FO_RULE_ADAM
        FO_RULE_PROBE
        FO_RULE_RMSPROP
        FO_RULE_ADAGRAD
        FO_RULE_LION
        FO_RULE_ADAMAX
        FO_RULE_RADAM
        FO_RULE_EMA
        FO_RULE_NADAM
        FO_NRULES
    const char *const *fo_isa_compiled(int *count)
    int fo_isa_supported(const char *name)
    int fo_isa_select(const char *name)
    ctypedef struct fo_kernel_table:
        const char *name
    const fo_kernel_table *fo_isa_active()
    void fo_run_segment(int rule, int is_f64, int64_t off, int64_t n, void *const *ptrs,
                        const void *hp)
    size_t fo_hp_size(int rule)
    int fo_nargs(int rule)
    enum:
        FO_NORM_L2
        FO_NORM_L1
        FO_NORM_INF
    double fo_norm_block(int kind, int is_f64, int64_t n, const void *x)
    void fo_scalars(int rule, void *hp, const double *args, int64_t step, double *aux)
    int fo_has_aux(int rule)

cdef extern from "fo_omp.h" nogil:
    int fo_omp_enabled()
    int fo_omp_max_threads()
    int fo_omp_version()

RULE_SGD = FO_RULE_SGD
RULE_ADAM = FO_RULE_ADAM
RULE_PROBE = FO_RULE_PROBE
RULE_RMSPROP = FO_RULE_RMSPROP
RULE_ADAGRAD = FO_RULE_ADAGRAD
RULE_LION = FO_RULE_LION
RULE_ADAMAX = FO_RULE_ADAMAX
RULE_RADAM = FO_RULE_RADAM
RULE_EMA = FO_RULE_EMA
RULE_NADAM = FO_RULE_NADAM
# number of hyperparameters in a group's row, per rule (see csrc/fastopt.h)
NARGS = {rule: fo_nargs(rule) for rule in range(FO_NRULES)}
MAX_STREAMS = FO_MAX_STREAMS

# Codes returned by Plan.step besides a bad gradient's index (>= 0).
OK = -1
NEEDS_STATE = -2

# Elements per thread below which a step stays on the calling thread (see set_parallel_grain).
cdef int64_t _grain = 1 << 14
# Steps running now in any Python thread (changed only while holding the GIL). A step shares
# the thread budget with the others: with k concurrent steps each uses nthreads // k threads,
# so several Python threads stepping optimizers at once never oversubscribe the cores.
cdef int _active_steps = 0
# Chunk boundaries are multiples of this many elements (64 bytes of float32).
DEF ALIGN_ELEMS = 16


# ---- configuration -------------------------------------------------------------------------

def openmp_enabled():
    """True if the extension was compiled with OpenMP."""
    return bool(fo_omp_enabled())


def openmp_version():
    """The _OPENMP date macro of the compiler (e.g. 201511), or 0 without OpenMP."""
    return fo_omp_version()


def omp_max_threads():
    """OpenMP's current thread limit for the calling thread (OMP_NUM_THREADS, threadpoolctl)."""
    return fo_omp_max_threads()


def isa_compiled():
    """Names of the instruction-set tables compiled into this build, baseline first."""
    cdef int count = 0
    cdef const char *const *names = fo_isa_compiled(&count)
    return tuple(names[i].decode() for i in range(count))


def isa_supported(str name):
    """True if this CPU and OS can run the named table."""
    return bool(fo_isa_supported(name.encode()))


def isa_select(str name):
    """Make the named table active ("auto" for the best supported). Raises ValueError."""
    if fo_isa_select(name.encode()) != 0:
        supported = [n for n in isa_compiled() if isa_supported(n)]
        raise ValueError(
            f"instruction set {name!r} is not available: this build and CPU support "
            f"{', '.join(supported)} (or 'auto')")


def isa_active():
    """Name of the active table."""
    return fo_isa_active().name.decode()


def address(cnp.ndarray a not None):
    """The address of an array's data (what a.__array_interface__ reports, much faster)."""
    return <uintptr_t>cnp.PyArray_DATA(a)


def set_parallel_grain(int64_t elems):
    """Set the work (elements per thread) below which a step runs on the calling thread.

    Returns the previous value. Tests lower it to exercise threading on small arrays.
    """
    global _grain
    if elems < 1:
        raise ValueError(f"grain must be >= 1, got {elems}")
    old = _grain
    _grain = elems
    return old


def get_parallel_grain():
    return _grain


def active_steps():
    """Number of steps running now (in any Python thread)."""
    return _active_steps


# ---- the plan ------------------------------------------------------------------------------

cdef struct Interval:
    uintptr_t lo
    uintptr_t hi


cdef int _cmp_interval(const void *a, const void *b) noexcept nogil:
    cdef uintptr_t x = (<const Interval *>a).lo
    cdef uintptr_t y = (<const Interval *>b).lo
    return (x > y) - (x < y)


cdef inline uintptr_t _start(cnp.ndarray a):
    return <uintptr_t>cnp.PyArray_DATA(a)


cdef inline uintptr_t _end(cnp.ndarray a):
    return <uintptr_t>cnp.PyArray_DATA(a) + <uintptr_t>cnp.PyArray_NBYTES(a)


cdef class Plan:
    """One multi-tensor call, reusable across steps (see the module's design note).

    Parameters
    ----------
    rule : int
        RULE_SGD, RULE_ADAM or RULE_PROBE.
    streams : list of sequences
        For each tensor, FO_MAX_STREAMS entries: the param, None for the gradient (supplied per
        step), then its state buffers or None. A tensor whose state is not created yet may be
        given as just ``[param]``: a step that has a gradient for it returns NEEDS_STATE.
    groups : sequence of int
        The row of the hyperparameter table that applies to each tensor.

    The arrays must already satisfy the contracts checked by fastopt._validation (C-contiguous,
    aligned, writeable, float32/float64, equal shapes per tensor, no overlaps): the plan trusts
    them. It keeps references to them, so their memory cannot move while it lives.
    """
    cdef readonly int rule
    cdef readonly Py_ssize_t ntensors
    cdef size_t hp_size
    cdef int64_t *sizes          # element count per tensor
    cdef int64_t *active         # this step's element count (0 when the gradient is None)
    cdef int64_t *prefix         # prefix sums of active, ntensors + 1 entries
    cdef void **ptrs             # ntensors x FO_MAX_STREAMS
    cdef unsigned char *is_f64
    cdef unsigned char *ready    # state exists
    cdef int *group
    cdef char *hps               # ntensors x hp_size
    cdef char **hp_of            # the scalars each tensor uses (shared within a group and step)
    cdef Interval *writes        # sorted address ranges of every array a step writes
    cdef Py_ssize_t nwrites
    cdef list params
    cdef list keep

    def __cinit__(self):
        self.sizes = NULL
        self.active = NULL
        self.prefix = NULL
        self.ptrs = NULL
        self.is_f64 = NULL
        self.ready = NULL
        self.group = NULL
        self.hps = NULL
        self.hp_of = NULL
        self.writes = NULL

    def __init__(self, int rule, list streams, groups):
        cdef Py_ssize_t T = len(streams), i, k, w = 0
        cdef cnp.ndarray a
        if not 0 <= rule < FO_NRULES:
            raise ValueError(f"unknown rule {rule}")
        if len(groups) != T:
            raise ValueError("groups must have one entry per tensor")
        self.rule = rule
        self.ntensors = T
        self.hp_size = fo_hp_size(rule)
        self.sizes = <int64_t *>malloc(max(T, 1) * sizeof(int64_t))
        self.active = <int64_t *>malloc(max(T, 1) * sizeof(int64_t))
        self.prefix = <int64_t *>malloc((T + 1) * sizeof(int64_t))
        self.ptrs = <void **>malloc(max(T, 1) * FO_MAX_STREAMS * sizeof(void *))
        self.is_f64 = <unsigned char *>malloc(max(T, 1))
        self.ready = <unsigned char *>malloc(max(T, 1))
        self.group = <int *>malloc(max(T, 1) * sizeof(int))
        self.hps = <char *>malloc(max(T, 1) * self.hp_size)
        self.hp_of = <char **>malloc(max(T, 1) * sizeof(char *))
        self.writes = <Interval *>malloc(max(T, 1) * FO_MAX_STREAMS * sizeof(Interval))
        if (not self.sizes or not self.active or not self.prefix or not self.ptrs
                or not self.is_f64 or not self.ready or not self.group or not self.hps
                or not self.writes or not self.hp_of):
            raise MemoryError()
        memset(self.ptrs, 0, max(T, 1) * FO_MAX_STREAMS * sizeof(void *))
        self.params = []
        self.keep = []
        for i in range(T):
            row = streams[i]
            a = <cnp.ndarray?>row[0]
            self.params.append(a)
            self.sizes[i] = cnp.PyArray_SIZE(a)
            self.is_f64[i] = cnp.PyArray_TYPE(a) == cnp.NPY_DOUBLE
            self.group[i] = <int>groups[i]
            self.ready[i] = len(row) == FO_MAX_STREAMS
            for k in range(len(row)):
                if k == FO_G or row[k] is None:
                    continue
                a = <cnp.ndarray?>row[k]
                self.keep.append(a)
                self.ptrs[i * FO_MAX_STREAMS + k] = cnp.PyArray_DATA(a)
                if cnp.PyArray_NBYTES(a) > 0:
                    self.writes[w].lo = _start(a)
                    self.writes[w].hi = _end(a)
                    w += 1
        self.nwrites = w
        qsort(self.writes, w, sizeof(Interval), _cmp_interval)

    def __dealloc__(self):
        free(self.sizes)
        free(self.active)
        free(self.prefix)
        free(self.ptrs)
        free(self.is_f64)
        free(self.ready)
        free(self.group)
        free(self.hps)
        free(self.hp_of)
        free(self.writes)

    cdef bint _overlaps_write(self, uintptr_t lo, uintptr_t hi) noexcept:
        """True if [lo, hi) intersects an array the step writes (binary search)."""
        cdef Py_ssize_t a = 0, b = self.nwrites, mid
        if lo == hi:
            return False
        # first interval whose end is beyond lo; intervals are disjoint and sorted
        while a < b:
            mid = (a + b) // 2
            if self.writes[mid].hi <= lo:
                a = mid + 1
            else:
                b = mid
        return a < self.nwrites and self.writes[a].lo < hi

    cdef bint _grad_ok(self, Py_ssize_t i, object g):
        cdef cnp.ndarray p = <cnp.ndarray>self.params[i]
        cdef cnp.ndarray ga
        cdef int d
        if not cnp.PyArray_Check(g):
            return False
        ga = <cnp.ndarray>g
        if cnp.PyArray_TYPE(ga) != cnp.PyArray_TYPE(p) or not cnp.PyArray_ISNOTSWAPPED(ga):
            return False
        if cnp.PyArray_NDIM(ga) != cnp.PyArray_NDIM(p):
            return False
        for d in range(cnp.PyArray_NDIM(p)):
            if cnp.PyArray_DIM(ga, d) != cnp.PyArray_DIM(p, d):
                return False
        if not cnp.PyArray_IS_C_CONTIGUOUS(ga) or not cnp.PyArray_ISALIGNED(ga):
            return False
        return not self._overlaps_write(_start(ga), _end(ga))

    def check(self, grads):
        """The gradient checks of ``step`` alone: OK, NEEDS_STATE or a bad gradient's index."""
        cdef Py_ssize_t i
        cdef bint needs_state = False
        cdef object seq = grads if type(grads) is list or type(grads) is tuple else list(grads)
        if len(seq) != self.ntensors:
            raise ValueError(f"expected {self.ntensors} gradients, got {len(seq)}")
        for i in range(self.ntensors):      # every gradient, before anything else is decided
            g = seq[i]
            if g is None:
                continue
            if not self._grad_ok(i, g):
                return i
            if not self.ready[i]:
                needs_state = True
        return NEEDS_STATE if needs_state else OK

    def step(self, grads, cnp.ndarray args not None, cnp.ndarray steps not None,
             bint increment, int nthreads, cnp.ndarray aux=None):
        """Check, then run one step. Returns OK, NEEDS_STATE, or the index of a bad gradient.

        ``grads`` has one entry per tensor (None skips it). ``args`` holds one row of
        hyperparameters per group. ``steps`` holds one step count per tensor: with
        ``increment`` the counts of the tensors that step are incremented first (the
        optimizer's bookkeeping); without, they are this step's counts as given. ``aux``
        holds each tensor's scalar state (float64) for the rules that have one (NAdam's
        mu_product), updated in place. Nothing is modified unless OK is returned.
        """
        cdef Py_ssize_t T = self.ntensors, i, ngroups, nargs
        cdef int64_t total = 0
        cdef object g
        cdef object seq = grads if type(grads) is list or type(grads) is tuple else list(grads)
        cdef const double *a
        cdef int64_t *st
        cdef Py_ssize_t last = -1
        cdef bint needs_state
        cdef double *ax = NULL
        cdef bint shared = not fo_has_aux(self.rule)
        if len(seq) != T:
            raise ValueError(f"expected {T} gradients, got {len(seq)}")
        # raw arrays, checked here instead of through memoryviews (cheaper per call)
        if (cnp.PyArray_TYPE(steps) != cnp.NPY_INT64 or cnp.PyArray_NDIM(steps) != 1
                or cnp.PyArray_DIM(steps, 0) != T or not cnp.PyArray_IS_C_CONTIGUOUS(steps)
                or not cnp.PyArray_ISWRITEABLE(steps)):
            raise ValueError(f"steps: expected a writeable contiguous int64 array of {T}")
        nargs = fo_nargs(self.rule)
        if (cnp.PyArray_TYPE(args) != cnp.NPY_DOUBLE or cnp.PyArray_NDIM(args) != 2
                or cnp.PyArray_DIM(args, 1) != nargs or not cnp.PyArray_IS_C_CONTIGUOUS(args)):
            raise ValueError(f"args: expected a contiguous float64 array of shape (groups, "
                             f"{nargs})")
        if fo_has_aux(self.rule):
            if (aux is None or cnp.PyArray_TYPE(aux) != cnp.NPY_DOUBLE
                    or cnp.PyArray_NDIM(aux) != 1 or cnp.PyArray_DIM(aux, 0) != T
                    or not cnp.PyArray_IS_C_CONTIGUOUS(aux) or not cnp.PyArray_ISWRITEABLE(aux)):
                raise ValueError(f"aux: expected a writeable contiguous float64 array of {T}")
            ax = <double *>cnp.PyArray_DATA(aux)
        ngroups = cnp.PyArray_DIM(args, 0)
        a = <const double *>cnp.PyArray_DATA(args)
        st = <int64_t *>cnp.PyArray_DATA(steps)
        # 1. check everything; nothing is written before this loop has passed, and a tensor
        #    without state is reported only once every gradient has passed its checks
        needs_state = False
        for i in range(T):
            g = seq[i]
            if g is None:
                continue
            if not self._grad_ok(i, g):
                return i
            if not self.ready[i]:
                needs_state = True
            if self.group[i] < 0 or self.group[i] >= ngroups:
                raise ValueError(f"tensor {i} refers to group {self.group[i]}, "
                                 f"but only {ngroups} rows of hyperparameters were given")
        if needs_state:
            return NEEDS_STATE
        # 2. bookkeeping and per-step scalars
        self.prefix[0] = 0
        for i in range(T):
            g = seq[i]
            if g is None:
                self.active[i] = 0
            else:
                self.active[i] = self.sizes[i]
                self.ptrs[i * FO_MAX_STREAMS + FO_G] = cnp.PyArray_DATA(<cnp.ndarray>g)
                if increment:
                    st[i] += 1
                # tensors of one group at one step share their scalars: derive them once
                if (shared and last >= 0 and self.group[i] == self.group[last]
                        and st[i] == st[last]):
                    self.hp_of[i] = self.hp_of[last]
                else:
                    self.hp_of[i] = self.hps + i * self.hp_size
                    fo_scalars(self.rule, self.hp_of[i], a + self.group[i] * nargs, st[i],
                               ax + i if ax != NULL else NULL)
                    last = i
            total += self.active[i]
            self.prefix[i + 1] = total
        # 3. the kernels, without the GIL
        global _active_steps
        _active_steps += 1
        nthreads = max(1, nthreads // _active_steps)
        try:
            with nogil:
                self._run(total, nthreads)
        finally:
            _active_steps -= 1
        return OK

    cdef void _run(self, int64_t total, int nthreads) noexcept nogil:
        cdef int t, nt = nthreads
        cdef int64_t by_grain = total // _grain
        if by_grain < nt:
            nt = <int>by_grain
        if nt <= 1:
            self._run_range(0, total)
            return
        for t in prange(nt, num_threads=nt, schedule='static', chunksize=1):
            self._run_range(_chunk_edge(total, t, nt), _chunk_edge(total, t + 1, nt))

    cdef void _run_range(self, int64_t lo, int64_t hi) noexcept nogil:
        """Run elements [lo, hi) of the concatenation of all active tensors."""
        cdef Py_ssize_t a = 0, b = self.ntensors, mid, i
        cdef int64_t off, end
        if lo >= hi:
            return
        # the tensor holding element lo: the last i with prefix[i] <= lo and active[i] > 0
        while a < b:
            mid = (a + b) // 2
            if self.prefix[mid + 1] <= lo:
                a = mid + 1
            else:
                b = mid
        i = a
        while i < self.ntensors and self.prefix[i] < hi:
            off = lo - self.prefix[i] if lo > self.prefix[i] else 0
            end = hi - self.prefix[i] if hi < self.prefix[i + 1] else self.active[i]
            if end > off:
                fo_run_segment(self.rule, self.is_f64[i], off, end - off,
                               &self.ptrs[i * FO_MAX_STREAMS], self.hp_of[i])
            i += 1


# ---- gradient norms -------------------------------------------------------------------------

DEF NORM_BLOCK = 8192


def grad_norm(list arrays, double norm_type, int nthreads):
    """The norm of all arrays together (as one vector), accumulated in float64: norm_type 2, 1
    or inf. Each array is cut into fixed blocks of NORM_BLOCK elements whose partial results
    are combined in a fixed order, so the result is bitwise the same for any thread count.
    The arrays must be float32/float64, C-contiguous and aligned (checked by the caller)."""
    cdef int kind
    cdef Py_ssize_t T = len(arrays), i, nblocks = 0, b, k
    cdef int64_t n
    cdef cnp.ndarray a
    if norm_type == 2.0:
        kind = FO_NORM_L2
    elif norm_type == 1.0:
        kind = FO_NORM_L1
    elif norm_type == float("inf"):
        kind = FO_NORM_INF
    else:
        raise ValueError(f"native norm_type must be 1, 2 or inf, got {norm_type}")
    for i in range(T):
        a = <cnp.ndarray?>arrays[i]
        nblocks += (cnp.PyArray_SIZE(a) + NORM_BLOCK - 1) // NORM_BLOCK
    cdef char **ptr = <char **>malloc(max(nblocks, 1) * sizeof(char *))
    cdef int64_t *cnt = <int64_t *>malloc(max(nblocks, 1) * sizeof(int64_t))
    cdef unsigned char *f64 = <unsigned char *>malloc(max(nblocks, 1))
    cdef double *part = <double *>malloc(max(nblocks, 1) * sizeof(double))
    cdef double total = 0.0
    cdef int nt = nthreads
    if not ptr or not cnt or not f64 or not part:
        free(ptr); free(cnt); free(f64); free(part)
        raise MemoryError()
    try:
        k = 0
        for i in range(T):
            a = <cnp.ndarray>arrays[i]
            n = cnp.PyArray_SIZE(a)
            b = 0
            while b * NORM_BLOCK < n:
                ptr[k] = <char *>cnp.PyArray_DATA(a) + b * NORM_BLOCK * cnp.PyArray_ITEMSIZE(a)
                cnt[k] = min(<int64_t>NORM_BLOCK, n - b * NORM_BLOCK)
                f64[k] = cnp.PyArray_TYPE(a) == cnp.NPY_DOUBLE
                k += 1
                b += 1
        if nblocks * NORM_BLOCK // 2 < _grain * nt:
            nt = max(1, <int>(nblocks * NORM_BLOCK // 2 // _grain))
        with nogil:
            if nt <= 1:
                for b in range(nblocks):
                    part[b] = fo_norm_block(kind, f64[b], cnt[b], ptr[b])
            else:
                for b in prange(nblocks, num_threads=nt, schedule='static'):
                    part[b] = fo_norm_block(kind, f64[b], cnt[b], ptr[b])
            for b in range(nblocks):
                if kind == FO_NORM_INF:
                    if part[b] > total or part[b] != part[b]:
                        total = part[b]
                else:
                    total = total + part[b]
    finally:
        free(ptr); free(cnt); free(f64); free(part)
    return sqrt(total) if kind == FO_NORM_L2 else total


cdef inline int64_t _chunk_edge(int64_t total, int t, int nt) noexcept nogil:
    """Start of chunk t of nt over [0, total), rounded down to ALIGN_ELEMS."""
    cdef int64_t e
    if t >= nt:
        return total
    e = (total // nt) * t + (total % nt) * t // nt
    return e - e % ALIGN_ELEMS
