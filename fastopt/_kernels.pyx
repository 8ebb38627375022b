# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The native driver: array descriptors, the contract check, the gradient pre-pass, threading,
and the call into the C kernels.

Design note
-----------
A call is described by a ``Frame``: for each tensor, FO_MAX_STREAMS (address, storage dtype)
pairs (param, grad, state buffers, a master slot, the block scales of 8-bit states; see
csrc/fastopt.h) and one element
count, plus a strong reference to the owner of every address, held until the frame is
released, so no array can be freed while the kernels run, whatever other Python threads do. A
frontend adapter fills the frame (``fill_numpy_lists`` and ``fill_optimizer`` for NumPy arrays,
checking NumPy's own layout flags; ``fill_raw`` for addresses a frontend has checked itself,
such as torch tensors). Nothing else is cached between calls: a replaced param or state buffer
is simply read afresh.

``run`` then
1. checks the contract every frontend shares: each stepping tensor's streams form a compiled
   storage signature, are aligned, and no stream it writes overlaps any other stream of the call
   (the sorted intervals of the written streams are memoised by the exact descriptor contents,
   so an unchanged layout is not re-sorted; gradients are checked against them every call);
2. optionally runs the gradient pre-pass: one read of the gradients giving each group's sum of
   squares (for clipping by norm) and a non-finite flag; with ``check_finite`` a non-finite
   gradient makes the call return SKIPPED having modified nothing at all;
3. increments the step counts, derives each tensor's per-step scalars in C (shared within a
   group at one step), reserves threads from the process-wide budget, releases the GIL and runs
   all tensors as ONE range of elements split into static, 16-element aligned chunks (a
   tensor with an 8-bit state is cut only on its 256-element block boundaries).

Every kernel is element-wise, so results are bitwise identical for any thread count.
"""
cimport cython
cimport numpy as cnp
from cpython.object cimport PyObject
from cpython.ref cimport Py_INCREF, Py_XDECREF
from cpython.dict cimport PyDict_GetItem
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE
from cpython.tuple cimport PyTuple_GET_ITEM, PyTuple_GET_SIZE
from cython.parallel cimport prange
from libc.stdint cimport int64_t, uint64_t, uintptr_t
from libc.stdlib cimport malloc, realloc, free, qsort
from libc.math cimport fabs, sqrt
from libc.string cimport memset, memcpy

import threading

import numpy as np

cnp.import_array()

cdef extern from "fastopt.h" nogil:
    enum:
        FO_P
        FO_G
        FO_M
        FO_A1
        FO_MAX_STREAMS
        FO_NRULES
        FO_NSIGS
        FO_SIG_MIXED
        FO_NSIGS_ALL
        FO_ROUND_NEAREST
        FO_ROUND_STOCHASTIC
        FO_DT_NONE
        FO_DT_F32
        FO_DT_F64
        FO_DT_F16
        FO_DT_BF16
        FO_DT_Q8S
        FO_DT_Q8U
        FO_DT_ABSMAX
        FO_Q8_BLOCK
    const char *const *fo_isa_compiled(int *count)
    int fo_isa_supported(const char *name)
    int fo_isa_select(const char *name)
    ctypedef struct fo_kernel_table:
        const char *name
    const fo_kernel_table *fo_isa_active()
    ctypedef struct fo_store:
        uint64_t key
        int rounding
    void fo_run_segment(int rule, int sig, int64_t off, int64_t n, void *const *ptrs,
                        const unsigned char *dtypes, const void *hp, const fo_store *st)
    size_t fo_dt_size(int dt)
    size_t fo_stream_bytes(int dt, int64_t n)
    int fo_has_q8(const unsigned char *dtypes)
    int fo_q8_init()
    const float *fo_q8_map(int is_signed)
    int fo_q8_convert(const char *isa, int dt, int to_q, int64_t n, float *values, void *codes,
                      float *absmax)
    uint64_t fo_sr_key(uint64_t seed, int64_t param, int64_t step)
    int fo_convert(const char *isa, int dt, int to16, int rounding, uint64_t key,
                   int64_t index, int64_t n, const void *src, void *dst)
    int64_t fo_convert_check_all(const char *isa, int dt, int full)
    int64_t fo_q8_check_all(const char *isa, int dt)
    int fo_mixed_fusion(int on)
    int fo_mixed_class(const unsigned char *dtypes, void *const *ptrs, const fo_store *st)
    size_t fo_hp_size(int rule)
    int fo_nargs(int rule)
    unsigned fo_required_streams(int rule)
    const char *const *fo_arg_names(int rule, int *count)
    const char *fo_rule_name(int rule)
    int fo_signature(const unsigned char *dtypes)
    const char *const *fo_sig_names(int *count)
    enum:
        FO_NORM_L2
        FO_NORM_L1
        FO_NORM_INF
    double fo_norm_block(int kind, int dt, int64_t n, const void *x)
    double fo_prepass_block(int dt, int64_t n, const void *x, int *nonfinite)
    void fo_scalars(int rule, void *hp, const double *args, int64_t step, double *aux,
                    double grad_scale)
    int fo_has_aux(int rule)
    int fo_aux_count(int rule)
    int fo_reduce_count(int rule)
    void fo_reduce_block(int rule, int sig, int64_t off, int64_t n, void *const *ptrs,
                         const void *hp, double *out)
    void fo_reduced(int rule, void *hp, const double *sums)

cdef extern from "numpy/ndarraytypes.h":
    enum:
        NPY_HALF
        NPY_USERDEF

cdef extern from "fo_omp.h" nogil:
    int fo_omp_enabled()
    int fo_omp_max_threads()
    int fo_omp_version()
    double fo_omp_wtime()

DEF S = 9               # FO_MAX_STREAMS (checked at import below)
DEF Q8_BLOCK = 256      # FO_Q8_BLOCK (checked at import below)
DEF ALIGN_ELEMS = 16    # chunk boundaries are multiples of this many elements
DEF NORM_BLOCK = 8192   # elements per block of the norm and pre-pass reductions

if FO_MAX_STREAMS != S or FO_Q8_BLOCK != Q8_BLOCK:
    raise ImportError("fastopt: _kernels.pyx and csrc/fastopt.h disagree on FO_MAX_STREAMS "
                      "or FO_Q8_BLOCK")
if fo_q8_init() != 0:      # (before any thread runs: the adapter reads the tables)
    raise ImportError("fastopt: the 8-bit quantization tables failed their check")

MAX_STREAMS = FO_MAX_STREAMS
STREAM_P, STREAM_G, STREAM_M, STREAM_A1 = FO_P, FO_G, FO_M, FO_A1
DT_NONE, DT_F32, DT_F64, DT_F16, DT_BF16 = FO_DT_NONE, FO_DT_F32, FO_DT_F64, FO_DT_F16, FO_DT_BF16
DT_Q8S, DT_Q8U, DT_ABSMAX = FO_DT_Q8S, FO_DT_Q8U, FO_DT_ABSMAX
Q8_BLOCK_ELEMS = Q8_BLOCK
ROUND_NEAREST, ROUND_STOCHASTIC = FO_ROUND_NEAREST, FO_ROUND_STOCHASTIC
SIG_MIXED = FO_SIG_MIXED


def _rule_table():
    cdef int r, n, k
    cdef const char *const *names
    rules, args = {}, {}
    for r in range(FO_NRULES):
        name = fo_rule_name(r).decode()
        names = fo_arg_names(r, &n)
        rules[name] = r
        args[name] = tuple(names[k].decode() for k in range(n))
    return rules, args


# rule name -> rule id, and rule name -> the field names of its argument record (memory order)
RULES, ARG_NAMES = _rule_table()


def signatures():
    """Names of the storage signatures compiled into this build."""
    cdef int n = 0, k
    cdef const char *const *names = fo_sig_names(&n)
    return tuple(names[k].decode() for k in range(n))


# Outcomes of run()
OK = 0
SKIPPED = 1
# Reasons a frame fill or the contract check refuses a stream (see ContractError)
R_TYPE, R_DTYPE, R_SHAPE, R_LAYOUT, R_ALIGN, R_READONLY, R_OVERLAP, R_SIGNATURE, \
    R_GROUP_SIZE, R_NEEDS_STATE, R_NULL = range(11)


class ContractError(ValueError):
    """A stream of a call breaks the driver's contract. ``reason`` is one of the R_* codes,
    ``tensor``/``stream`` locate it, ``other`` is the (tensor, stream) it overlaps, if any. The
    frontends turn it into a message that names the user's array."""

    def __init__(self, reason, tensor, stream, other=None):
        super().__init__(f"reason {reason} at tensor {tensor}, stream {stream}")
        self.reason = reason
        self.tensor = tensor
        self.stream = stream
        self.other = other


# Elements per thread below which a step stays on the calling thread (see set_parallel_grain).
cdef int64_t _grain = 1 << 14


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


def same_objects(tuple a, tuple b):
    """True if a and b hold the very same objects, position by position (``is``, not ``==``:
    True == 1 == 1.0, but a revalidation must see the difference). b may be None."""
    cdef Py_ssize_t i, n = PyTuple_GET_SIZE(a)
    if b is None or PyTuple_GET_SIZE(b) != n:
        return False
    for i in range(n):
        if PyTuple_GET_ITEM(a, i) != PyTuple_GET_ITEM(b, i):
            return False
    return True


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


# ---- the thread budget -----------------------------------------------------------------------
# Kernel threads held now by running calls, over all Python threads (changed only while holding
# the GIL). A call takes at most what is left of the budget (OpenMP's limit for the calling
# thread) and waits, without the GIL, when nothing is left, so concurrent steps never run more
# kernel threads than the budget between them.

cdef int _in_use = 0
cdef int _peak = 0
cdef int _waiting = 0
_budget_cond = threading.Condition(threading.Lock())


cdef int _reserve(int want) except -1:
    global _in_use, _peak, _waiting
    cdef int budget = fo_omp_max_threads()
    if budget < 1:
        budget = 1
    if want > budget:
        want = budget
    if _in_use >= budget:
        _waiting += 1
        try:
            with _budget_cond:
                while _in_use >= budget:
                    _budget_cond.wait(0.05)
        finally:
            _waiting -= 1
    if want > budget - _in_use:
        want = budget - _in_use
    if want < 1:
        want = 1
    _in_use += want
    if _in_use > _peak:
        _peak = _in_use
    return want


cdef void _release(int held):
    global _in_use
    _in_use -= held
    if _waiting:
        with _budget_cond:
            _budget_cond.notify_all()


def threads_in_use():
    """Kernel threads held now by running calls (all Python threads together)."""
    return _in_use


def peak_threads(reset=False):
    """The most kernel threads held at once since the last reset (tests of the budget)."""
    global _peak
    old = _peak
    if reset:
        _peak = _in_use
    return old


# ---- frames: the descriptors of one call -----------------------------------------------------

cdef struct Interval:
    uintptr_t lo
    uintptr_t hi
    int64_t tensor
    int stream


cdef int _cmp_interval(const void *a, const void *b) noexcept nogil:
    cdef uintptr_t x = (<const Interval *>a).lo
    cdef uintptr_t y = (<const Interval *>b).lo
    return (x > y) - (x < y)


# NumPy's type number of ml_dtypes.bfloat16 once seen (a user dtype: its number is assigned when
# ml_dtypes registers it); -1 until then. Whoever made a bfloat16 array imported ml_dtypes.
cdef int _bf16_num = -1

# 0, 1, 2, ...: the state dict's keys, made once (an int over 256 is a new object each time)
cdef list _int_keys = []


cdef int _find_bf16(int t) noexcept:
    """Whether user type number t is ml_dtypes.bfloat16 (never raises: a broken ml_dtypes
    module is no bfloat16)."""
    global _bf16_num
    try:
        import sys
        mod = sys.modules.get("ml_dtypes")
        if mod is not None:
            _bf16_num = np.dtype(mod.bfloat16).num
    except Exception:
        return 0
    return t == _bf16_num


cdef inline unsigned char _np_code(cnp.ndarray a) noexcept:
    cdef int t = cnp.PyArray_TYPE(a)
    if not cnp.PyArray_ISNOTSWAPPED(a):
        return FO_DT_NONE
    if t == cnp.NPY_FLOAT:
        return FO_DT_F32
    if t == cnp.NPY_DOUBLE:
        return FO_DT_F64
    if t == NPY_HALF:
        return FO_DT_F16
    if t >= NPY_USERDEF and (t == _bf16_num or (_bf16_num < 0 and _find_bf16(t))):
        return FO_DT_BF16
    return FO_DT_NONE


def dtype_code(object dtype):
    """The storage code (DT_*) of a NumPy dtype, DT_NONE if the kernels cannot store it."""
    cdef cnp.ndarray a = np.empty(0, dtype=dtype)
    return _np_code(a)


cdef inline bint _mixable(unsigned char code) noexcept:
    return code == FO_DT_F32 or code == FO_DT_F16 or code == FO_DT_BF16


cdef inline unsigned char _q8_code(cnp.ndarray a) noexcept:
    """The code of an 8-bit state's codes array: int8 (signed map) or uint8 (unsigned)."""
    cdef int t = cnp.PyArray_TYPE(a)
    if t == cnp.NPY_INT8:
        return FO_DT_Q8S
    if t == cnp.NPY_UINT8:
        return FO_DT_Q8U
    return FO_DT_NONE


@cython.final
cdef class Frame:
    """The descriptors of one multi-tensor call (see the module's design note).

    A frame is reusable: each fill overwrites it. The owners' references it takes are held
    until ``release()`` (or the next fill, or the frame's end).
    """
    cdef readonly int64_t ntensors
    cdef int64_t cap
    cdef uintptr_t *addr
    cdef unsigned char *dt
    cdef int64_t *count
    cdef PyObject **refs
    cdef int64_t nrefs, refcap
    cdef readonly int reason
    cdef readonly int64_t bad_tensor
    cdef readonly int bad_stream
    cdef bint busy
    # whether the last run() on this frame modified its arrays (set when its kernels have run):
    # an exception raised after that (a KeyboardInterrupt delivered as the call returns) must
    # not make a frontend undo the state the applied step created
    cdef readonly bint applied

    def __cinit__(self):
        self.addr = NULL
        self.dt = NULL
        self.count = NULL
        self.refs = NULL
        self.ntensors = self.cap = self.nrefs = self.refcap = 0

    def __dealloc__(self):
        self._drop_refs()
        free(self.addr)
        free(self.dt)
        free(self.count)
        free(self.refs)

    cdef void _drop_refs(self):
        cdef int64_t i
        for i in range(self.nrefs):
            Py_XDECREF(self.refs[i])
        self.nrefs = 0

    def release(self):
        """Drop the references to the owners taken by the last fill."""
        self._drop_refs()

    cdef int _reset(self, int64_t T) except -1:
        if self.busy:
            raise RuntimeError("fastopt: a frame was refilled while its call runs")
        self._drop_refs()
        if T > self.cap:
            free(self.addr); free(self.dt); free(self.count); free(self.refs)
            self.addr = <uintptr_t *>malloc(T * S * sizeof(uintptr_t))
            self.dt = <unsigned char *>malloc(T * S)
            self.count = <int64_t *>malloc(T * sizeof(int64_t))
            self.refs = <PyObject **>malloc(T * (S + 1) * sizeof(PyObject *))
            if not self.addr or not self.dt or not self.count or not self.refs:
                free(self.addr); free(self.dt); free(self.count); free(self.refs)
                self.addr = NULL; self.dt = NULL; self.count = NULL; self.refs = NULL
                self.cap = self.refcap = 0
                raise MemoryError()
            self.cap = T
            self.refcap = T * (S + 1)
        if T > 0:
            memset(self.addr, 0, T * S * sizeof(uintptr_t))
            memset(self.dt, 0, T * S)
            memset(self.count, 0, T * sizeof(int64_t))
        self.ntensors = T
        self.reason = -1
        self.bad_tensor = -1
        self.bad_stream = -1
        return 0

    cdef inline void _ref(self, object o) noexcept:
        Py_INCREF(o)
        self.refs[self.nrefs] = <PyObject *>o
        self.nrefs += 1

    cdef inline int _fail(self, int reason, int64_t i, int k) noexcept:
        self.reason = reason
        self.bad_tensor = i
        self.bad_stream = k
        return reason

    cdef int _put_numpy(self, int64_t i, int k, object o, cnp.ndarray like,
                        bint written) noexcept:
        """Stream k of tensor i from a NumPy array that must match ``like`` (the param; None
        for the param itself). Returns -1, or the reason it is refused."""
        cdef cnp.ndarray a
        cdef int d
        if not cnp.PyArray_Check(o):
            return self._fail(R_TYPE, i, k)
        a = <cnp.ndarray>o
        cdef unsigned char code = _np_code(a)
        if like is not None and k >= FO_A1:
            # the block scales of state k - FO_A1 + FO_S1: float32, one per block
            if cnp.PyArray_TYPE(a) != cnp.NPY_FLOAT32:
                return self._fail(R_DTYPE, i, k)
            if (cnp.PyArray_NDIM(a) != 1 or cnp.PyArray_DIM(a, 0)
                    != (cnp.PyArray_SIZE(like) + Q8_BLOCK - 1) // Q8_BLOCK):
                return self._fail(R_SHAPE, i, k)
            code = FO_DT_ABSMAX
        elif like is not None and k != FO_G and k != FO_M and code == FO_DT_NONE:
            code = _q8_code(a)       # an 8-bit state's codes (the signature pairs the scales)
        if code == FO_DT_NONE:
            return self._fail(R_DTYPE, i, k)
        if like is not None and code != FO_DT_ABSMAX:
            # another storage type than the param's: float32, float16 or bfloat16 on both
            # sides (mixed storage), or 8-bit codes; whether the combination runs is the
            # signature's to say
            if (cnp.PyArray_TYPE(a) != cnp.PyArray_TYPE(like) and code != FO_DT_Q8S
                    and code != FO_DT_Q8U
                    and not (_mixable(code) and _mixable(_np_code(like)))):
                return self._fail(R_DTYPE, i, k)
            if cnp.PyArray_NDIM(a) != cnp.PyArray_NDIM(like):
                return self._fail(R_SHAPE, i, k)
            for d in range(cnp.PyArray_NDIM(a)):
                if cnp.PyArray_DIM(a, d) != cnp.PyArray_DIM(like, d):
                    return self._fail(R_SHAPE, i, k)
        if not cnp.PyArray_IS_C_CONTIGUOUS(a):
            return self._fail(R_LAYOUT, i, k)
        if not cnp.PyArray_ISALIGNED(a):
            return self._fail(R_ALIGN, i, k)
        if written and not cnp.PyArray_ISWRITEABLE(a):
            return self._fail(R_READONLY, i, k)
        self._ref(o)
        self.addr[i * S + k] = <uintptr_t>cnp.PyArray_DATA(a)
        self.dt[i * S + k] = code
        if k == 0:
            self.count[i] = cnp.PyArray_SIZE(a)
        return -1

    def fill_numpy_lists(self, list streams not None, Py_ssize_t n):
        """Fill from NumPy lists: ``streams`` has FO_MAX_STREAMS entries, each None (stream
        absent) or a list of n entries (an array, or None to leave that tensor's stream
        absent; a None gradient skips its tensor). Stream 1 (the gradients) is read, the others
        written.
        Returns -1, or a reason code (``bad_tensor`` and ``bad_stream`` locate it)."""
        cdef Py_ssize_t i
        cdef int k, rc
        cdef list col
        cdef cnp.ndarray p
        if len(streams) != S:
            raise ValueError(f"expected {S} stream lists")
        for k in range(S):
            col = streams[k]
            if col is not None and len(col) != n:
                raise ValueError(f"stream {k}: expected {n} entries, got {len(col)}")
        self._reset(n)
        params = streams[0]
        for i in range(n):
            o = params[i]
            rc = self._put_numpy(i, 0, o, None, True)
            if rc >= 0:
                return rc
            p = <cnp.ndarray>o
            for k in range(1, S):
                col = streams[k]
                if col is None:
                    continue
                o = col[i]
                if o is None:
                    continue
                rc = self._put_numpy(i, k, o, p, k != FO_G)
                if rc >= 0:
                    return rc
        return -1

    def fill_optimizer(self, list groups not None, list sizes not None, object grads,
                       dict state not None, list slots_by_group not None,
                       list step_views not None):
        """The NumPy optimizer's adapter: everything from its live structures, read afresh.

        ``groups``: the param groups (dicts with "params"); ``sizes``: the number of params
        each group had when it was added; ``grads``: list or tuple, one per param (None
        skips); ``state``: the optimizer's state (index -> dict); ``slots_by_group``: per
        group, a tuple of (stream, key) pairs the group's settings need, or for an 8-bit
        state's block scales (stream, key, min_count, codes_dtype): skipped for params under
        min_count elements and float64 params, and the codes of that state must have the
        DT_Q8S/DT_Q8U code codes_dtype (its map); ``step_views``: per
        param, the object expected at state[i]["step"] (None: no check).

        Returns -1, R_NEEDS_STATE (some stepping param lacks state or a buffer, or its "step"
        entry was replaced: the optimizer creates or adopts it, then fills again), or another
        reason code. Every param and gradient is checked before NEEDS_STATE is reported."""
        cdef Py_ssize_t ngroups = len(groups), gi, j, T = 0, i, nslots, s
        cdef list params
        cdef object o, g, st, view
        cdef PyObject *item
        cdef int rc, k
        cdef tuple slots
        cdef bint needs = False
        cdef cnp.ndarray p
        cdef tuple slot
        # a group's slots as C values (stream, min_count or -1, codes dtype or -1) and keys
        cdef int sk[S]
        cdef int64_t smin[S]
        cdef bint shasmin[S]
        cdef int scodes[S]
        cdef PyObject *skey[S]
        if len(sizes) != ngroups or len(slots_by_group) != ngroups:
            raise ValueError("sizes and slots_by_group need one entry per group")
        for gi in range(ngroups):
            T += <Py_ssize_t>sizes[gi]
        if len(grads) != T or len(step_views) != T:
            raise ValueError(f"expected {T} gradients and step views")
        if PyList_GET_SIZE(_int_keys) < T:
            _int_keys.extend(range(PyList_GET_SIZE(_int_keys), T))
        self._reset(T)
        i = 0
        for gi in range(ngroups):
            o = groups[gi]["params"]
            if type(o) is not list:
                o = list(o)
            params = <list>o
            if PyList_GET_SIZE(params) != <Py_ssize_t>sizes[gi]:
                return self._fail(R_GROUP_SIZE, gi, 0)
            slots = <tuple>slots_by_group[gi]
            nslots = PyTuple_GET_SIZE(slots)
            if nslots > S:
                raise ValueError(f"group {gi}: more than {S} slots")
            for s in range(nslots):
                slot = <tuple>PyTuple_GET_ITEM(slots, s)
                sk[s] = <int>slot[0]
                skey[s] = <PyObject *>PyTuple_GET_ITEM(slot, 1)   # (held by slots_by_group)
                shasmin[s] = PyTuple_GET_SIZE(slot) > 2
                smin[s] = <int64_t>slot[2] if shasmin[s] else 0
                scodes[s] = <int>slot[3] if PyTuple_GET_SIZE(slot) > 3 else -1
            for j in range(PyList_GET_SIZE(params)):
                o = <object>PyList_GET_ITEM(params, j)
                rc = self._put_numpy(i, 0, o, None, True)
                if rc >= 0:
                    return rc
                p = <cnp.ndarray>o
                g = grads[i]
                if g is not None:
                    rc = self._put_numpy(i, FO_G, g, p, False)
                    if rc >= 0:
                        return rc
                item = PyDict_GetItem(state, <object>PyList_GET_ITEM(_int_keys, i))
                if item == NULL:
                    if g is not None and (nslots > 0 or step_views[i] is not None):
                        needs = True
                    i += 1
                    continue
                st = <object>item
                if type(st) is not dict:
                    return self._fail(R_TYPE, i, -1)
                view = step_views[i]
                if view is not None:
                    item = PyDict_GetItem(st, "step")
                    if item == NULL or <object>item is not view:
                        needs = True
                for s in range(nslots):
                    k = sk[s]
                    if k == FO_M and self.dt[i * S] != FO_DT_F16 and self.dt[i * S] != FO_DT_BF16:
                        continue        # a master copy or compensation: 16-bit params only
                    if shasmin[s] and (self.count[i] < smin[s] or self.dt[i * S] == FO_DT_F64):
                        continue        # 8-bit scales: float32/16-bit params of this size up
                    item = PyDict_GetItem(st, <object>skey[s])
                    if item == NULL:
                        if g is not None:
                            needs = True
                        continue
                    rc = self._put_numpy(i, k, <object>item, p, True)
                    if rc >= 0:
                        return rc
                    if (k >= FO_A1 and scodes[s] >= 0
                            and self.dt[i * S + k - FO_A1 + 2] != FO_DT_NONE
                            and self.dt[i * S + k - FO_A1 + 2] != scodes[s]):
                        # the codes' map (int8 signed, uint8 unsigned) is the buffer's own
                        return self._fail(R_DTYPE, i, k - FO_A1 + 2)
                i += 1
        if needs:
            return self._fail(R_NEEDS_STATE, -1, -1)
        return -1

    def fill_raw(self, cnp.ndarray addr not None, cnp.ndarray dtypes not None,
                 cnp.ndarray counts not None, list owners not None):
        """Fill from descriptors a frontend made and checked itself (shapes, layout,
        writeability): ``addr`` uint64 (T, FO_MAX_STREAMS), 0 for an absent stream;
        ``dtypes`` uint8 of the same shape (DT_* codes); ``counts`` int64 (T,); ``owners``:
        the objects owning that memory, referenced until release()."""
        cdef Py_ssize_t T
        if (cnp.PyArray_TYPE(addr) != cnp.NPY_UINT64 or cnp.PyArray_NDIM(addr) != 2
                or cnp.PyArray_DIM(addr, 1) != S or not cnp.PyArray_IS_C_CONTIGUOUS(addr)):
            raise ValueError(f"addr: expected a contiguous uint64 array of shape (T, {S})")
        T = cnp.PyArray_DIM(addr, 0)
        if (cnp.PyArray_TYPE(dtypes) != cnp.NPY_UINT8 or cnp.PyArray_NDIM(dtypes) != 2
                or cnp.PyArray_DIM(dtypes, 0) != T or cnp.PyArray_DIM(dtypes, 1) != S
                or not cnp.PyArray_IS_C_CONTIGUOUS(dtypes)):
            raise ValueError(f"dtypes: expected a contiguous uint8 array of shape ({T}, {S})")
        if (cnp.PyArray_TYPE(counts) != cnp.NPY_INT64 or cnp.PyArray_NDIM(counts) != 1
                or cnp.PyArray_DIM(counts, 0) != T or not cnp.PyArray_IS_C_CONTIGUOUS(counts)):
            raise ValueError(f"counts: expected a contiguous int64 array of {T}")
        self._reset(T)
        if len(owners) > self.refcap:
            free(self.refs)
            self.refs = <PyObject **>malloc(len(owners) * sizeof(PyObject *))
            if not self.refs:
                self.refcap = 0
                raise MemoryError()
            self.refcap = len(owners)
        for o in owners:
            self._ref(o)
        if T > 0:
            memcpy(self.addr, cnp.PyArray_DATA(addr), T * S * sizeof(uintptr_t))
            memcpy(self.dt, cnp.PyArray_DATA(dtypes), T * S)
            memcpy(self.count, cnp.PyArray_DATA(counts), T * sizeof(int64_t))
        return -1


cdef class Memo:
    """The contract check's memory: the sorted written intervals of the last layout checked,
    with the exact descriptors they came from. Used by one call at a time."""
    cdef int64_t T
    cdef uintptr_t *addr
    cdef unsigned char *dt
    cdef int64_t *count
    cdef Interval *writes
    cdef int64_t nwrites
    cdef int *sigs               # the signatures that layout was found to have
    cdef int rule                # the rule it was checked for (its required streams)
    cdef bint valid
    # whether the gradient columns of addr and dt hold gradients that passed the overlap check
    # against these writes (set only once that check has passed)
    cdef bint grads_ok

    def __cinit__(self):
        self.addr = NULL; self.dt = NULL; self.count = NULL; self.writes = NULL
        self.sigs = NULL
        self.T = 0; self.nwrites = 0; self.valid = False; self.grads_ok = False; self.rule = -1

    def __dealloc__(self):
        free(self.addr); free(self.dt); free(self.count); free(self.writes); free(self.sigs)

    def invalidate(self):
        self.valid = False


cdef bint _same_layout(Memo m, Frame f, int rule):
    """True if the written streams of f are exactly those m was computed from, for rule."""
    cdef int64_t i
    cdef int k
    cdef int64_t T = f.ntensors
    cdef bint active
    if not m.valid or m.T != T or m.rule != rule:
        return False
    for i in range(T):
        active = f.addr[i * S + FO_G] != 0
        if m.count[i] != (f.count[i] if active else -1):
            return False
        if not active:
            continue
        for k in range(S):
            if k == FO_G:
                continue
            if m.addr[i * S + k] != f.addr[i * S + k] or m.dt[i * S + k] != f.dt[i * S + k]:
                return False
    return True


cdef int _remember(Memo m, Frame f, Interval *writes, int64_t nwrites, const int *sigs,
                   int rule) except -1:
    cdef int64_t T = f.ntensors, i
    m.valid = False
    m.grads_ok = False
    free(m.addr); free(m.dt); free(m.count); free(m.writes); free(m.sigs)
    m.addr = <uintptr_t *>malloc(max(T, 1) * S * sizeof(uintptr_t))
    m.dt = <unsigned char *>malloc(max(T, 1) * S)
    m.count = <int64_t *>malloc(max(T, 1) * sizeof(int64_t))
    m.writes = <Interval *>malloc(max(nwrites, 1) * sizeof(Interval))
    m.sigs = <int *>malloc(max(T, 1) * sizeof(int))
    if not m.addr or not m.dt or not m.count or not m.writes or not m.sigs:
        raise MemoryError()
    if T > 0:
        memcpy(m.addr, f.addr, T * S * sizeof(uintptr_t))
        memcpy(m.dt, f.dt, T * S)
        memcpy(m.sigs, sigs, T * sizeof(int))
    m.rule = rule
    for i in range(T):
        m.count[i] = f.count[i] if f.addr[i * S + FO_G] != 0 else -1
    if nwrites > 0:
        memcpy(m.writes, writes, nwrites * sizeof(Interval))
    m.nwrites = nwrites
    m.T = T
    m.valid = True
    return 0


cdef int64_t _find_overlap(const Interval *w, int64_t nw, uintptr_t lo, uintptr_t hi) noexcept:
    """Index of a written interval intersecting [lo, hi), or -1 (binary search; intervals
    sorted and disjoint)."""
    cdef int64_t a = 0, b = nw, mid
    if lo == hi:
        return -1
    while a < b:
        mid = (a + b) // 2
        if w[mid].hi <= lo:
            a = mid + 1
        else:
            b = mid
    if a < nw and w[a].lo < hi:
        return a
    return -1


cdef int _check_contract(Frame f, Memo memo, int *sigs, int rule) except -1:
    """Signatures, alignment and overlaps of the stepping tensors; raises ContractError.

    With a memo whose layout (written streams, counts, rule) is this frame's, a tensor whose
    gradient has the dtype it had there keeps the signature found then (the dtypes are the
    same), so only its gradient's alignment is checked; the overlap of the written streams is
    known, and the gradients are searched against them unless they are the very gradients
    (addresses, dtypes) that passed that search before."""
    cdef int64_t T = f.ntensors, i, nw = 0, j
    cdef int k, sig
    cdef size_t es
    cdef uintptr_t a
    cdef Interval *w = NULL
    cdef const Interval *use
    cdef int64_t nuse
    cdef unsigned need = fo_required_streams(rule)
    cdef bint remembered = memo is not None and _same_layout(memo, f, rule)
    cdef bint same_grads = remembered and memo.grads_ok
    for i in range(T):
        sigs[i] = -1
        if f.addr[i * S + FO_G] == 0:
            continue
        if remembered and f.dt[i * S + FO_G] == memo.dt[i * S + FO_G]:
            sigs[i] = memo.sigs[i]
            a = f.addr[i * S + FO_G]
            if a != memo.addr[i * S + FO_G]:
                same_grads = False
                if a & (fo_dt_size(f.dt[i * S + FO_G]) - 1):
                    raise ContractError(R_ALIGN, i, FO_G)
            continue
        same_grads = False
        sig = fo_signature(&f.dt[i * S])
        if sig < 0:
            raise ContractError(R_SIGNATURE, i, 0)
        sigs[i] = sig
        for k in range(S):
            if remembered and k != FO_G:
                continue            # the written streams passed these checks before
            a = f.addr[i * S + k]
            if f.dt[i * S + k] == FO_DT_NONE:
                if (need >> k) & 1:
                    raise ContractError(R_NULL, i, k)     # a state the rule reads is absent
                continue
            es = fo_dt_size(f.dt[i * S + k])
            if es == 0:
                raise ContractError(R_DTYPE, i, k)
            if a == 0 and f.count[i] > 0:
                raise ContractError(R_NULL, i, k)
            if a & (es - 1):             # (every element size is a power of two)
                raise ContractError(R_ALIGN, i, k)
    if same_grads:
        return 0
    if remembered:
        use = memo.writes
        nuse = memo.nwrites
    else:
        w = <Interval *>malloc(max(T, 1) * S * sizeof(Interval))
        if not w:
            raise MemoryError()
        try:
            for i in range(T):
                if sigs[i] < 0 or f.count[i] == 0:
                    continue
                for k in range(S):
                    if k == FO_G or f.dt[i * S + k] == FO_DT_NONE:
                        continue
                    # the stream's true byte extent (8-bit scales: one float32 per block)
                    w[nw].lo = f.addr[i * S + k]
                    w[nw].hi = f.addr[i * S + k] + <uintptr_t>fo_stream_bytes(
                        f.dt[i * S + k], f.count[i])
                    w[nw].tensor = i
                    w[nw].stream = k
                    nw += 1
            qsort(w, nw, sizeof(Interval), _cmp_interval)
            for j in range(1, nw):
                if w[j].lo < w[j - 1].hi:
                    raise ContractError(R_OVERLAP, w[j].tensor, w[j].stream,
                                        (w[j - 1].tensor, w[j - 1].stream))
            if memo is not None:
                _remember(memo, f, w, nw, sigs, rule)
        except BaseException:
            free(w)
            raise
        use = w
        nuse = nw
    try:
        for i in range(T):
            if sigs[i] < 0 or f.count[i] == 0:
                continue
            a = f.addr[i * S + FO_G]
            j = _find_overlap(use, nuse, a,
                              a + <uintptr_t>fo_stream_bytes(f.dt[i * S + FO_G], f.count[i]))
            if j >= 0:
                raise ContractError(R_OVERLAP, i, FO_G, (use[j].tensor, use[j].stream))
    finally:
        free(w)
    if memo is not None and memo.valid:
        # these gradients passed: remember them (the memo's layout is this frame's)
        for i in range(T):
            if f.addr[i * S + FO_G] != 0:
                memo.addr[i * S + FO_G] = f.addr[i * S + FO_G]
                memo.dt[i * S + FO_G] = f.dt[i * S + FO_G]
                memo.sigs[i] = sigs[i]
        memo.grads_ok = True
    return 0


cdef inline int64_t _chunk_edge(int64_t total, int t, int nt) noexcept nogil:
    """Start of chunk t of nt over [0, total), rounded down to ALIGN_ELEMS."""
    cdef int64_t e
    if t >= nt:
        return total
    e = (total // nt) * t + (total % nt) * t // nt
    return e - e % ALIGN_ELEMS


cdef struct Job:
    int rule
    int64_t T
    const int *sigs
    const int64_t *prefix
    const int64_t *active
    void **ptrs          # T x S
    const unsigned char *dts   # T x S
    char **hp_of
    const fo_store *store      # T
    const unsigned char *blocked   # T: 1 where an 8-bit state makes the tensor run in blocks


cdef void _run_range(const Job *job, int64_t lo, int64_t hi) noexcept nogil:
    """Run elements [lo, hi) of the concatenation of all stepping tensors."""
    cdef int64_t a = 0, b = job.T, mid, i, off, end
    if lo >= hi:
        return
    while a < b:
        mid = (a + b) // 2
        if job.prefix[mid + 1] <= lo:
            a = mid + 1
        else:
            b = mid
    i = a
    while i < job.T and job.prefix[i] < hi:
        off = lo - job.prefix[i] if lo > job.prefix[i] else 0
        end = hi - job.prefix[i] if hi < job.prefix[i + 1] else job.active[i]
        if job.blocked[i]:
            # the chunk's edges within this tensor moved up to its next block boundary: the
            # neighbouring chunk moves the same edge alike, so every block runs exactly once
            off = (off + Q8_BLOCK - 1) // Q8_BLOCK * Q8_BLOCK
            if end < job.active[i]:
                end = min((end + Q8_BLOCK - 1) // Q8_BLOCK * Q8_BLOCK, job.active[i])
        if end > off:
            fo_run_segment(job.rule, job.sigs[i], off, end - off, &job.ptrs[i * S],
                           &job.dts[i * S], job.hp_of[i], &job.store[i])
        i += 1


# ---- the straggler fallback ------------------------------------------------------------------
# On a machine whose cores are busy with other work (a shared box, torch's own threads, a data
# loader), one of a step's threads may wait milliseconds for a core while the others finish:
# measured on 2 vCPUs with one core loaded, Adam on 1e5 elements took 51 us (median) but a p90
# of 20 ms on 2 threads, 78 us and 84 us on one. So every parallel step times its threads'
# finishing: when the last finishes more than _STRAGGLE seconds after the first, and later than
# the first thread's whole chunk took (the step took over twice its even share: one thread
# would have been as fast), the machine counts as congested, and the steps of the next _HOLD
# seconds run on the calling thread; then a parallel step measures again. Results do not
# depend on the thread count, so this changes timing only.
cdef double _STRAGGLE = 2e-4
cdef double _HOLD = 1.0
cdef double _serial_until = 0.0       # fo_omp_wtime() until which steps stay on one thread
cdef int64_t _n_congested = 0        # parallel steps found congested
cdef int64_t _n_serial = 0           # steps the fallback kept on the calling thread
DEF MAX_TIMED = 256                   # threads whose finishing a step records


def set_straggler_fallback(double straggle=2e-4, double hold=1.0):
    """Tune the straggler fallback (see _kernels.pyx): a parallel step whose last thread
    finishes ``straggle`` seconds after its first (and after that one's whole chunk time) keeps
    the steps of the next ``hold`` seconds on the calling thread. ``hold=0`` turns it off.
    Returns the previous (straggle, hold)."""
    global _STRAGGLE, _HOLD, _serial_until
    if not (straggle >= 0 and hold >= 0):
        raise ValueError(f"expected straggle >= 0 and hold >= 0, got {straggle}, {hold}")
    old = (_STRAGGLE, _HOLD)
    _STRAGGLE, _HOLD = straggle, hold
    _serial_until = 0.0
    return old


def straggler_stats():
    """(parallel steps found congested, steps the fallback ran on the calling thread, seconds
    the fallback still holds), since the process started."""
    cdef double left = _serial_until - fo_omp_wtime()
    return _n_congested, _n_serial, left if left > 0 else 0.0


def required_streams(int rule):
    """The streams rule ``rule`` always reads, as a tuple (csrc's fo_required_streams)."""
    cdef unsigned need = fo_required_streams(rule)
    return tuple(k for k in range(S) if (need >> k) & 1)


def wtime():
    """The clock of the fallback's times (OpenMP's wall clock, seconds; 0 without OpenMP)."""
    return fo_omp_wtime()


def note_spread(double first, double last, double start):
    """The fallback's judgement of one parallel step: its start and its threads' first and
    last finishing times (wtime clock). run() calls it after each parallel step; tests call it
    with chosen times."""
    _note_spread(first, last, start)


cdef int _fallback_threads(int nthreads):
    """nthreads, or 1 while the straggler fallback holds (called with the GIL)."""
    if nthreads > 1 and _HOLD > 0 and fo_omp_wtime() < _serial_until:
        return 1
    return nthreads


cdef void _note_spread(double first, double last, double start):
    """Judge one parallel step's finishing times (called with the GIL)."""
    global _serial_until, _n_congested
    if _HOLD > 0 and last - first > _STRAGGLE and last - first > first - start:
        _n_congested += 1
        _serial_until = last + _HOLD


cdef void _run_job(const Job *job, int64_t total, int nt, double *times) noexcept nogil:
    """Run the job on nt threads; times receives (start, first finish, last finish) of a
    parallel run (zeros when it ran on the calling thread)."""
    cdef int t
    cdef double done[MAX_TIMED]
    times[0] = times[1] = times[2] = 0.0
    if nt <= 1:
        _run_range(job, 0, total)
        return
    times[0] = fo_omp_wtime()
    for t in prange(nt, num_threads=nt, schedule='static', chunksize=1):
        _run_range(job, _chunk_edge(total, t, nt), _chunk_edge(total, t + 1, nt))
        if t < MAX_TIMED:
            done[t] = fo_omp_wtime()
    times[1] = times[2] = done[0]
    for t in range(1, min(nt, MAX_TIMED)):
        times[1] = min(times[1], done[t])
        times[2] = max(times[2], done[t])


cdef struct Blocks:
    # The fixed blocks of NORM_BLOCK elements that the norm and the pre-pass reduce, in order:
    # array by array, each from its start. Partial results are combined in this order, so the
    # results do not depend on the thread count.
    int64_t n
    char **ptr
    int64_t *cnt
    unsigned char *dt     # the storage code of each block's array
    int64_t *owner        # the index of the array each block belongs to


cdef int _cut_blocks(Blocks *b, int64_t T, const uintptr_t *base, const int64_t *count,
                     const unsigned char *dt) except -1:
    """Cut arrays (address, element count, storage code) into blocks; _free_blocks releases."""
    cdef int64_t i, j, k = 0, nb = 0
    for i in range(T):
        nb += (count[i] + NORM_BLOCK - 1) // NORM_BLOCK
    b.n = nb
    b.ptr = <char **>malloc(max(nb, 1) * sizeof(char *))
    b.cnt = <int64_t *>malloc(max(nb, 1) * sizeof(int64_t))
    b.dt = <unsigned char *>malloc(max(nb, 1))
    b.owner = <int64_t *>malloc(max(nb, 1) * sizeof(int64_t))
    if not b.ptr or not b.cnt or not b.dt or not b.owner:
        _free_blocks(b)
        raise MemoryError()
    for i in range(T):
        j = 0
        while j * NORM_BLOCK < count[i]:
            b.ptr[k] = <char *>base[i] + j * NORM_BLOCK * fo_dt_size(dt[i])
            b.cnt[k] = min(<int64_t>NORM_BLOCK, count[i] - j * NORM_BLOCK)
            b.dt[k] = dt[i]
            b.owner[k] = i
            k += 1
            j += 1
    return 0


cdef void _free_blocks(Blocks *b) noexcept:
    free(b.ptr); free(b.cnt); free(b.dt); free(b.owner)
    b.ptr = NULL; b.cnt = NULL; b.dt = NULL; b.owner = NULL


cdef inline int _block_threads(int64_t nblocks, int nt) noexcept:
    """Threads for a reduction over nblocks blocks (half a block's elements count as the work
    of one element of a step, as the reduction is that much cheaper)."""
    if nblocks * NORM_BLOCK // 2 < _grain * nt:
        return max(1, <int>(nblocks * NORM_BLOCK // 2 // _grain))
    return nt


cdef int _prepass(Frame f, const int *group, Py_ssize_t ngroups, double *sumsq,
                  int *nonfinite, int nthreads) except -1:
    """Per group, the sum of squares of its gradients (fixed blocks, fixed order: what
    grad_norm gives for the group's gradients) and whether any element is non-finite."""
    cdef int64_t T = f.ntensors, i, k
    cdef int nt
    cdef Blocks blk
    cdef uintptr_t *base = <uintptr_t *>malloc(max(T, 1) * sizeof(uintptr_t))
    cdef int64_t *count = <int64_t *>malloc(max(T, 1) * sizeof(int64_t))
    cdef unsigned char *dts = <unsigned char *>malloc(max(T, 1))
    cdef double *part = NULL
    cdef int *bad = NULL
    blk.ptr = NULL; blk.cnt = NULL; blk.dt = NULL; blk.owner = NULL
    try:
        if not base or not count or not dts:
            raise MemoryError()
        for i in range(T):      # the gradients of the stepping tensors
            base[i] = f.addr[i * S + FO_G]
            count[i] = f.count[i] if base[i] != 0 else 0
            dts[i] = f.dt[i * S + FO_G]
        _cut_blocks(&blk, T, base, count, dts)
        part = <double *>malloc(max(blk.n, 1) * sizeof(double))
        bad = <int *>malloc(max(blk.n, 1) * sizeof(int))
        if not part or not bad:
            raise MemoryError()
        nt = _block_threads(blk.n, nthreads)
        with nogil:
            if nt <= 1:
                for k in range(blk.n):
                    part[k] = fo_prepass_block(blk.dt[k], blk.cnt[k], blk.ptr[k], &bad[k])
            else:
                for k in prange(blk.n, num_threads=nt, schedule='static'):
                    part[k] = fo_prepass_block(blk.dt[k], blk.cnt[k], blk.ptr[k], &bad[k])
        for k in range(ngroups):
            sumsq[k] = 0.0
            nonfinite[k] = 0
        for k in range(blk.n):
            i = group[blk.owner[k]]
            sumsq[i] = sumsq[i] + part[k]
            if bad[k]:
                nonfinite[i] = 1
    finally:
        _free_blocks(&blk)
        free(base); free(count); free(dts); free(part); free(bad)
    return 0


cdef int _reduce(int rule, int64_t T, const int *sigs, uintptr_t *addr,
                 const int64_t *active, char **hp_of, int nthreads) except -1:
    """The per-tensor sums of a rule that needs them before its step (fo_reduce_count; LAMB's
    norms): each stepping tensor cut into NORM_BLOCK-element blocks from its start, the blocks
    reduced in parallel (fo_reduce_block, read-only), then added per tensor in block order
    (so the sums do not depend on the thread count) and handed to fo_reduced, which completes
    that tensor's per-step scalars."""
    cdef int nred = fo_reduce_count(rule), nt
    cdef int64_t i, j, k, nb = 0
    cdef int64_t *owner = NULL
    cdef int64_t *off = NULL
    cdef double *part = NULL
    cdef double sums[8]
    for i in range(T):
        nb += (active[i] + NORM_BLOCK - 1) // NORM_BLOCK
    try:
        owner = <int64_t *>malloc(max(nb, 1) * sizeof(int64_t))
        off = <int64_t *>malloc(max(nb, 1) * sizeof(int64_t))
        part = <double *>malloc(max(nb, 1) * nred * sizeof(double))
        if not owner or not off or not part:
            raise MemoryError()
        k = 0
        for i in range(T):
            j = 0
            while j < active[i]:
                owner[k] = i
                off[k] = j
                k += 1
                j += NORM_BLOCK
        nt = _block_threads(nb, nthreads)
        with nogil:
            if nt <= 1:
                for k in range(nb):
                    fo_reduce_block(rule, sigs[owner[k]], off[k],
                                    min(<int64_t>NORM_BLOCK, active[owner[k]] - off[k]),
                                    <void **>&addr[owner[k] * S], hp_of[owner[k]],
                                    &part[k * nred])
            else:
                for k in prange(nb, num_threads=nt, schedule='static'):
                    fo_reduce_block(rule, sigs[owner[k]], off[k],
                                    min(<int64_t>NORM_BLOCK, active[owner[k]] - off[k]),
                                    <void **>&addr[owner[k] * S], hp_of[owner[k]],
                                    &part[k * nred])
        k = 0
        for i in range(T):
            if addr[i * S + FO_G] == 0:
                continue
            for j in range(nred):
                sums[j] = 0.0
            while k < nb and owner[k] == i:
                for j in range(nred):
                    sums[j] = sums[j] + part[k * nred + j]
                k += 1
            fo_reduced(rule, hp_of[i], sums)
    finally:
        free(owner); free(off); free(part)
    return 0


cdef inline bint _vec(cnp.ndarray a, int typ, Py_ssize_t n, bint writeable):
    return (a is not None and cnp.PyArray_TYPE(a) == typ and cnp.PyArray_NDIM(a) == 1
            and cnp.PyArray_DIM(a, 0) == n and cnp.PyArray_IS_C_CONTIGUOUS(a)
            and (not writeable or cnp.PyArray_ISWRITEABLE(a)))


def run(Frame f not None, int rule, cnp.ndarray group not None, cnp.ndarray args not None,
        cnp.ndarray gscale not None, cnp.ndarray steps not None, bint increment, int nthreads,
        cnp.ndarray aux=None, cnp.ndarray max_norms=None, bint check_finite=False,
        cnp.ndarray norms=None, Memo memo=None, bint release=True, cnp.ndarray rounding=None,
        uint64_t seed=0, cnp.ndarray ids=None):
    """Run one step of ``rule`` over the tensors of frame ``f``.

    ``group`` int32 (T,): each tensor's row of ``args`` (float64 (groups, nargs): the argument
    records, see ARG_NAMES). ``gscale`` float64 (groups,): this call's gradient factor per group
    (1, or 1/loss scale); clipping multiplies its coefficient in. ``steps`` int64 (T,): with
    ``increment`` the counts of the stepping tensors are incremented first; without, they are
    this step's counts. ``aux`` float64 (T * k,): per-tensor scalar state, k per tensor
    (fo_aux_count: NAdam's mu_product; ASGD's eta, mu), updated in place. ``max_norms`` float64 (groups,): clip each group's gradients by their
    2-norm where > 0 (``norms``, float64 (groups,), receives the norms). ``check_finite``: a NaN
    or Inf in any stepping gradient makes the call modify nothing and return SKIPPED.

    Returns OK or SKIPPED; raises ContractError (nothing modified) or ValueError on malformed
    arguments. The frame's owner references are released when the call ends (with
    ``release=False`` they are kept, so the same frame can run again: the benchmark's probe).

    Mixed storage (16-bit streams): ``rounding`` uint8 (groups,) is each group's ROUND_* mode
    for 16-bit values written without a master copy (default: nearest); stochastic draws are
    keyed by (``seed``, the tensor's id, its step count), ids int64 (T,) (default: the tensor's
    index in the frame).
    """
    cdef int64_t T = f.ntensors, i, total = 0, last = -1
    cdef Py_ssize_t ngroups, nargs, gi
    cdef int *grp
    cdef int *sigs = NULL
    cdef int64_t *prefix = NULL
    cdef int64_t *active = NULL
    cdef char *hps = NULL
    cdef char **hp_of = NULL
    cdef double *sumsq = NULL
    cdef int *nonfinite = NULL
    cdef double *gs
    cdef double *mx = NULL
    cdef double *ax = NULL
    cdef int64_t naux
    cdef double coef, norm
    cdef int64_t *st
    cdef const double *a
    cdef size_t hp_size
    cdef bint shared, prepass = False, any_bad = False
    cdef int nt, held, asked
    cdef double times[3]
    cdef Job job
    cdef fo_store *store = NULL
    cdef unsigned char *blocked = NULL
    cdef const unsigned char *rnd = NULL
    cdef const int64_t *pid = NULL
    global _n_serial
    if not 0 <= rule < FO_NRULES:
        raise ValueError(f"unknown rule {rule}")
    if f.busy:
        raise RuntimeError("fastopt: this frame is already running a call")
    nargs = fo_nargs(rule)
    asked = nthreads
    nthreads = _fallback_threads(nthreads)
    if (cnp.PyArray_TYPE(args) != cnp.NPY_DOUBLE or cnp.PyArray_NDIM(args) != 2
            or cnp.PyArray_DIM(args, 1) != nargs or not cnp.PyArray_IS_C_CONTIGUOUS(args)):
        raise ValueError(f"args: expected a contiguous float64 array of shape (groups, {nargs})")
    ngroups = cnp.PyArray_DIM(args, 0)
    if not _vec(group, cnp.NPY_INT32, T, False):
        raise ValueError(f"group: expected a contiguous int32 array of {T}")
    if not _vec(gscale, cnp.NPY_DOUBLE, ngroups, False):
        raise ValueError(f"gscale: expected a contiguous float64 array of {ngroups}")
    if not _vec(steps, cnp.NPY_INT64, T, True):
        raise ValueError(f"steps: expected a writeable contiguous int64 array of {T}")
    naux = fo_aux_count(rule)
    if naux:
        if not _vec(aux, cnp.NPY_DOUBLE, T * naux, True):
            raise ValueError(f"aux: expected a writeable contiguous float64 array of {T} x "
                             f"{naux} (each tensor's scalars in a row)")
        ax = <double *>cnp.PyArray_DATA(aux)
    if max_norms is not None:
        if not _vec(max_norms, cnp.NPY_DOUBLE, ngroups, False):
            raise ValueError(f"max_norms: expected a contiguous float64 array of {ngroups}")
        mx = <double *>cnp.PyArray_DATA(max_norms)
        for gi in range(ngroups):
            if mx[gi] > 0:
                prepass = True
    if norms is not None and not _vec(norms, cnp.NPY_DOUBLE, ngroups, True):
        raise ValueError(f"norms: expected a writeable contiguous float64 array of {ngroups}")
    if rounding is not None:
        if not _vec(rounding, cnp.NPY_UINT8, ngroups, False):
            raise ValueError(f"rounding: expected a contiguous uint8 array of {ngroups}")
        rnd = <const unsigned char *>cnp.PyArray_DATA(rounding)
        for gi in range(ngroups):
            if rnd[gi] != FO_ROUND_NEAREST and rnd[gi] != FO_ROUND_STOCHASTIC:
                raise ValueError(f"rounding: unknown mode {rnd[gi]} for group {gi}")
    if ids is not None:
        if not _vec(ids, cnp.NPY_INT64, T, False):
            raise ValueError(f"ids: expected a contiguous int64 array of {T}")
        pid = <const int64_t *>cnp.PyArray_DATA(ids)
    prepass = prepass or check_finite
    grp = <int *>cnp.PyArray_DATA(group)
    for i in range(T):
        if f.addr[i * S + FO_G] != 0 and not 0 <= grp[i] < ngroups:
            raise ValueError(f"tensor {i} refers to group {grp[i]}, but only {ngroups} rows of "
                             "arguments were given")
    a = <const double *>cnp.PyArray_DATA(args)
    st = <int64_t *>cnp.PyArray_DATA(steps)
    hp_size = fo_hp_size(rule)
    shared = not fo_has_aux(rule) and not fo_reduce_count(rule)
    f.busy = True
    f.applied = False
    try:
        sigs = <int *>malloc(max(T, 1) * sizeof(int))
        prefix = <int64_t *>malloc((T + 1) * sizeof(int64_t))
        active = <int64_t *>malloc(max(T, 1) * sizeof(int64_t))
        hps = <char *>malloc(max(T, 1) * hp_size)
        hp_of = <char **>malloc(max(T, 1) * sizeof(char *))
        gs = <double *>malloc(max(ngroups, 1) * sizeof(double))
        sumsq = <double *>malloc(max(ngroups, 1) * sizeof(double))
        nonfinite = <int *>malloc(max(ngroups, 1) * sizeof(int))
        store = <fo_store *>malloc(max(T, 1) * sizeof(fo_store))
        blocked = <unsigned char *>malloc(max(T, 1))
        if (not blocked or not sigs or not prefix or not active or not hps or not hp_of or not gs
                or not sumsq or not nonfinite or not store):
            raise MemoryError()
        # 1. the contract
        _check_contract(f, memo, sigs, rule)
        # 2. the pre-pass; nothing is modified before it has passed
        memcpy(gs, cnp.PyArray_DATA(gscale), ngroups * sizeof(double))
        if prepass:
            _prepass(f, grp, ngroups, sumsq, nonfinite, nthreads)
            if check_finite:
                for gi in range(ngroups):
                    if nonfinite[gi]:
                        any_bad = True
                if any_bad:
                    return SKIPPED
            for gi in range(ngroups):
                if mx != NULL and mx[gi] > 0:
                    # the norm of the gradients as the rule sees them (unscaled: times the
                    # call's factor, 1/loss scale); exactly sqrt(sumsq) when the factor is 1
                    norm = sqrt(sumsq[gi]) * fabs(gs[gi])
                    if norms is not None:
                        (<double *>cnp.PyArray_DATA(norms))[gi] = norm
                    coef = mx[gi] / (norm + 1e-6)
                    if not coef >= 1.0:          # NaN propagates, as in torch
                        gs[gi] = gs[gi] * coef
        # 3. bookkeeping, per-step scalars, and the kernels without the GIL
        prefix[0] = 0
        for i in range(T):
            if f.addr[i * S + FO_G] == 0:
                active[i] = 0
            else:
                active[i] = f.count[i]
                if increment:
                    st[i] += 1
                if (shared and last >= 0 and grp[i] == grp[last] and st[i] == st[last]):
                    hp_of[i] = hp_of[last]
                else:
                    hp_of[i] = hps + i * hp_size
                    fo_scalars(rule, hp_of[i], a + grp[i] * nargs, st[i],
                               ax + i * naux if ax != NULL else NULL, gs[grp[i]])
                    last = i
                store[i].rounding = rnd[grp[i]] if rnd != NULL else FO_ROUND_NEAREST
                store[i].key = 0
                if store[i].rounding == FO_ROUND_STOCHASTIC and sigs[i] == FO_SIG_MIXED:
                    store[i].key = fo_sr_key(seed, pid[i] if pid != NULL else i, st[i])
            total += active[i]
            prefix[i + 1] = total
        if fo_reduce_count(rule):
            for i in range(T):
                if sigs[i] == FO_SIG_MIXED:
                    raise ValueError(f"fastopt: {fo_rule_name(rule).decode()} takes float32 or "
                                     f"float64 storage only (tensor {i} mixes storage types)")
            _reduce(rule, T, sigs, f.addr, active, hp_of, nthreads)
        job.rule = rule
        job.T = T
        job.sigs = sigs
        job.prefix = prefix
        job.active = active
        job.ptrs = <void **>f.addr
        job.dts = f.dt
        job.hp_of = hp_of
        job.store = store
        for i in range(T):
            blocked[i] = fo_has_q8(&f.dt[i * S]) if active[i] > 0 else 0
        job.blocked = blocked
        nt = nthreads
        if total // _grain < nt:
            nt = <int>(total // _grain)
        if nt < 1:
            nt = 1
        if asked > nthreads and total // _grain > 1:
            _n_serial += 1          # the fallback kept a step that had work for 2+ threads
        held = _reserve(nt)
        try:
            with nogil:
                _run_job(&job, total, held, times)
            f.applied = True
        finally:
            _release(held)
        if held > 1:
            _note_spread(times[1], times[2], times[0])
        return OK
    finally:
        f.busy = False
        if release:
            f._drop_refs()
        free(sigs); free(prefix); free(active); free(hps); free(hp_of); free(gs)
        free(sumsq); free(nonfinite); free(store); free(blocked)


# ---- gradient norms -------------------------------------------------------------------------

def grad_norm(list arrays, double norm_type, int nthreads):
    """The norm of all arrays together (as one vector), accumulated in float64: norm_type 2, 1
    or inf, over the fixed blocks of _cut_blocks (bitwise the same for any thread count).
    The arrays must be float32/float64, C-contiguous and aligned (checked by the caller)."""
    cdef int kind
    cdef Py_ssize_t T = len(arrays), i
    cdef int64_t k
    cdef cnp.ndarray a
    cdef Blocks blk
    cdef double total = 0.0
    cdef int nt
    if norm_type == 2.0:
        kind = FO_NORM_L2
    elif norm_type == 1.0:
        kind = FO_NORM_L1
    elif norm_type == float("inf"):
        kind = FO_NORM_INF
    else:
        raise ValueError(f"native norm_type must be 1, 2 or inf, got {norm_type}")
    cdef uintptr_t *base = <uintptr_t *>malloc(max(T, 1) * sizeof(uintptr_t))
    cdef int64_t *count = <int64_t *>malloc(max(T, 1) * sizeof(int64_t))
    cdef unsigned char *dts = <unsigned char *>malloc(max(T, 1))
    cdef double *part = NULL
    blk.ptr = NULL; blk.cnt = NULL; blk.dt = NULL; blk.owner = NULL
    try:
        if not base or not count or not dts:
            raise MemoryError()
        for i in range(T):
            a = <cnp.ndarray?>arrays[i]
            base[i] = <uintptr_t>cnp.PyArray_DATA(a)
            count[i] = cnp.PyArray_SIZE(a)
            dts[i] = _np_code(a)
            if dts[i] == FO_DT_NONE:
                raise ValueError(f"array {i}: dtype {a.dtype} has no native norm")
        _cut_blocks(&blk, T, base, count, dts)
        part = <double *>malloc(max(blk.n, 1) * sizeof(double))
        if not part:
            raise MemoryError()
        nt = _block_threads(blk.n, nthreads)
        with nogil:
            if nt <= 1:
                for k in range(blk.n):
                    part[k] = fo_norm_block(kind, blk.dt[k], blk.cnt[k], blk.ptr[k])
            else:
                for k in prange(blk.n, num_threads=nt, schedule='static'):
                    part[k] = fo_norm_block(kind, blk.dt[k], blk.cnt[k], blk.ptr[k])
            for k in range(blk.n):
                if kind == FO_NORM_INF:
                    if part[k] > total or part[k] != part[k]:
                        total = part[k]
                else:
                    total = total + part[k]
    finally:
        _free_blocks(&blk)
        free(base); free(count); free(dts); free(part)
    return sqrt(total) if kind == FO_NORM_L2 else total


# ---- 16-bit conversions (tests and the NumPy reference's rounding) --------------------------

def convert(cnp.ndarray src not None, cnp.ndarray dst not None, int rounding=FO_ROUND_NEAREST,
            uint64_t key=0, int64_t index=0, str isa=None):
    """Convert src into dst, one of them float32 and the other float16 or bfloat16 (1-D,
    contiguous, same size), with the conversions of instruction set ``isa`` (default: the
    active one): widening exactly, or narrowing by ``rounding`` (stochastic: element j draws
    as element index + j under ``key``)."""
    cdef unsigned char cs = _np_code(src), cd = _np_code(dst)
    cdef int to16, dt, rc
    cdef bytes name = (isa if isa is not None else fo_isa_active().name.decode()).encode()
    if not (_vec(src, cnp.PyArray_TYPE(src), cnp.PyArray_SIZE(dst), False)
            and _vec(dst, cnp.PyArray_TYPE(dst), cnp.PyArray_SIZE(src), True)):
        raise ValueError("convert: expected 1-D contiguous arrays of one size, dst writeable")
    if cs == FO_DT_F32 and (cd == FO_DT_F16 or cd == FO_DT_BF16):
        to16, dt = 1, cd
    elif cd == FO_DT_F32 and (cs == FO_DT_F16 or cs == FO_DT_BF16):
        to16, dt = 0, cs
    else:
        raise ValueError(f"convert: from {src.dtype} to {dst.dtype} is not a 16-bit conversion")
    if rounding != FO_ROUND_NEAREST and rounding != FO_ROUND_STOCHASTIC:
        raise ValueError(f"convert: unknown rounding {rounding}")
    cdef const char *cname = name
    cdef int64_t n = cnp.PyArray_SIZE(src)
    cdef void *ps = cnp.PyArray_DATA(src)
    cdef void *pd = cnp.PyArray_DATA(dst)
    with nogil:
        rc = fo_convert(cname, dt, to16, rounding, key, index, n, ps, pd)
    if rc != 0:
        raise ValueError("convert: unsupported dtype")
    return dst


def mixed_fusion(on=None):
    """Whether mixed-storage tensors of a storage class with a fused loop body run it (the
    default) rather than the tile adapter (csrc/storage.c); both give the same bits. With
    ``on``, sets it (process-wide) and returns the previous setting. For tests and benchmarks;
    not thread-safe against running steps."""
    return bool(fo_mixed_fusion(-1 if on is None else (1 if on else 0)))


def mixed_class(dtypes, bint stochastic=False):
    """The fused storage class (an index into csrc/fastopt.h's FO_MIX_LIST) of a tensor whose
    FO_MAX_STREAMS streams have these DT_* codes (DT_NONE: absent), or -1 where the tile
    adapter runs it (also while mixed_fusion is off). For tests."""
    cdef unsigned char dt[FO_MAX_STREAMS]
    cdef void *ptrs[FO_MAX_STREAMS]
    cdef fo_store st
    codes = list(dtypes)
    if len(codes) != FO_MAX_STREAMS:
        raise ValueError(f"mixed_class: expected {FO_MAX_STREAMS} dtype codes")
    for k in range(FO_MAX_STREAMS):
        dt[k] = codes[k]
        ptrs[k] = <void *>dt if codes[k] != FO_DT_NONE else NULL   # (never dereferenced)
    st.key = 0
    st.rounding = FO_ROUND_STOCHASTIC if stochastic else FO_ROUND_NEAREST
    return fo_mixed_class(dt, ptrs, &st)


def convert_check_all(str isa, int dt, bint full=False):
    """Mismatches of instruction set ``isa``'s conversion loops against the scalar reference,
    over every float32 bit pattern (``full``) or 2^23 holding every rounding case, and every
    16-bit one (see fo_convert_check_all)."""
    cdef bytes name = isa.encode()
    cdef const char *cname = name
    cdef int64_t bad
    with nogil:
        bad = fo_convert_check_all(cname, dt, full)
    return bad


# ---- 8-bit states (tests, the NumPy frontend's state creation) ------------------------------

def q8_map(bint signed):
    """The 256 float32 values of the signed (index: int8 code + 128) or unsigned (index: uint8
    code) quantization map, sorted ascending (csrc/storage.c)."""
    cdef const float *m = fo_q8_map(signed)
    out = np.empty(256, np.float32)
    cdef float[::1] o = out
    cdef int j
    for j in range(256):
        o[j] = m[j]
    return out


def q8_check_all(str isa, int dt):
    """Mismatches of instruction set ``isa``'s 8-bit loops (``dt``: DT_Q8S or DT_Q8U) against
    the exact table method, over every float32 x with |x| <= 1 and every code at a few scales
    (see fo_q8_check_all)."""
    cdef bytes name = isa.encode()
    cdef const char *cname = name
    cdef int64_t bad
    with nogil:
        bad = fo_q8_check_all(cname, dt)
    return bad


def q8_quantize(cnp.ndarray values not None, cnp.ndarray codes not None,
                cnp.ndarray absmax not None, str isa=None):
    """Quantize float32 ``values`` (1-D, contiguous) block-wise into ``codes`` (int8: signed
    map, uint8: unsigned) and ``absmax`` (float32, one per block): the adapter's own
    requantization, with the loops of instruction set ``isa`` (default: the active one)."""
    return _q8(values, codes, absmax, 1, isa)


def q8_dequantize(cnp.ndarray codes not None, cnp.ndarray absmax not None,
                  cnp.ndarray values not None, str isa=None):
    """The inverse: ``values`` (float32) = map[codes] * absmax of each element's block."""
    return _q8(values, codes, absmax, 0, isa)


cdef object _q8(cnp.ndarray values, cnp.ndarray codes, cnp.ndarray absmax, int to_q, str isa):
    cdef bytes name = (isa if isa is not None else fo_isa_active().name.decode()).encode()
    cdef const char *cname = name
    cdef unsigned char dt = _q8_code(codes)
    cdef int64_t n = cnp.PyArray_SIZE(values)
    if dt == FO_DT_NONE:
        raise ValueError(f"codes: expected int8 (signed map) or uint8 (unsigned map), got "
                         f"{codes.dtype}")
    if not (_vec(values, cnp.NPY_FLOAT32, n, not to_q) and _vec(codes, cnp.PyArray_TYPE(codes), n, to_q)
            and _vec(absmax, cnp.NPY_FLOAT32, (n + Q8_BLOCK - 1) // Q8_BLOCK, to_q)):
        raise ValueError("expected 1-D contiguous arrays: float32 values, codes of the same "
                         "size, float32 absmax of one per block, the outputs writeable")
    cdef float *pv = <float *>cnp.PyArray_DATA(values)
    cdef void *pc = cnp.PyArray_DATA(codes)
    cdef float *pa = <float *>cnp.PyArray_DATA(absmax)
    with nogil:
        fo_q8_convert(cname, dt, to_q, n, pv, pc, pa)
    return values if not to_q else codes


def sr_key(uint64_t seed, int64_t param, int64_t step):
    """The stochastic-rounding key of one param at one step."""
    return fo_sr_key(seed, param, step)

# ---- the torch adapter's fast fill ----------------------------------------------------------
#
# fastopt.torch's steady state: every param of every native group, its gradient, its state
# buffers and its step count read straight from the tensor objects with one C call each (the
# DLPack exchange table torch publishes, csrc/fo_dlpack.h), no Python method call per tensor.
# The fill only READS: anything it does not recognise as the plain case (a tensor subclass, a
# dtype it was not given, a non-contiguous or non-CPU tensor, a gradient whose shape or dtype
# differs, missing state, a conjugated or negated view) makes it return a reason code having
# modified nothing, and the adapter then takes its Python path, which checks everything again
# and raises the clear error, creates the state, or copies the gradient. Nothing is cached:
# every address, shape and stride is read afresh at every fill.

cdef extern from "fo_dlpack.h" nogil:
    enum:
        FO_DL_CPU
        FO_DL_CUDA_HOST
        FO_DL_ROCM_HOST
        FO_DL_FLOAT
        FO_DL_BFLOAT
        FO_DL_COMPLEX
    ctypedef struct fo_dl_device:
        int device_type
    ctypedef struct fo_dl_dtype:
        unsigned char code
        unsigned char bits
        unsigned short lanes
    ctypedef struct fo_dl_tensor:
        void *data
        fo_dl_device device
        int ndim
        fo_dl_dtype dtype
        int64_t *shape
        int64_t *strides
        unsigned long long byte_offset
    ctypedef struct fo_dl_version:
        unsigned int major
    ctypedef struct fo_dl_api_header:
        fo_dl_version version
    ctypedef int (*fo_dl_from_pyobject)(void *py_object, fo_dl_tensor *out)
    ctypedef struct fo_dl_api:
        fo_dl_api_header header
        fo_dl_from_pyobject dltensor_from_py_object_no_sync

cdef extern from *:
    """
    /* The state dict lookup of a tensor key without calling torch.Tensor.__hash__ (a Python
       function: `return id(self)`), by handing the dict that hash, computed as Python hashes
       the int id(self). Used only for types whose __hash__ was checked to be torch's. */
    static PyObject *fo_dict_get_by_id(PyObject *d, PyObject *key) {
    #if PY_VERSION_HEX < 0x030E0000 && !defined(PYPY_VERSION)
        Py_hash_t h = (Py_hash_t)((size_t)(uintptr_t)key % (size_t)_PyHASH_MODULUS);
        if (h == -1) h = -2;
        return _PyDict_GetItem_KnownHash(d, key, h);
    #else
        return PyDict_GetItemWithError(d, key);
    #endif
    }
    """
    PyObject *fo_dict_get_by_id(object d, object key)
    PyObject *PyDict_GetItemWithError(object d, object key)

from cpython.pycapsule cimport PyCapsule_GetPointer, PyCapsule_IsValid
from cpython.exc cimport PyErr_Clear, PyErr_Occurred
from cpython.object cimport PyObject_GetAttr, PyObject_IsTrue
from cpython.dict cimport PyDict_Check
from cpython.object cimport Py_TYPE

cdef const fo_dl_api *_dl = NULL


def set_dlpack_api(object capsule):
    """Adopt a framework's DLPack exchange table (the capsule torch.Tensor publishes as
    __dlpack_c_exchange_api__). Returns True if it is usable (DLPack major version 1, with the
    non-owning DLTensor export), else False and the fast fill stays off."""
    global _dl
    cdef const fo_dl_api *api
    _dl = NULL
    if capsule is None or not PyCapsule_IsValid(capsule, "dlpack_exchange_api"):
        return False
    api = <const fo_dl_api *>PyCapsule_GetPointer(capsule, "dlpack_exchange_api")
    if api == NULL or api.header.version.major != 1 or api.dltensor_from_py_object_no_sync == NULL:
        return False
    _dl = api
    return True


DEF HOLD_STEP_F32 = 1
DEF HOLD_STEP_F64 = 2


cdef class TorchHold:
    """The 0-d tensors of one fast fill that the step updates after the kernels: each tensor's
    ``step`` count (+1) and its per-param scalar (NAdam's mu_product, from the driver's aux
    array), held by reference until ``commit`` or ``discard``."""
    cdef Py_ssize_t n, cap
    cdef readonly Py_ssize_t active
    cdef Py_ssize_t filled
    cdef unsigned char *act
    cdef PyObject **step_obj
    cdef void **step_addr
    cdef unsigned char *step_kind
    cdef PyObject **aux_obj
    cdef void **aux_addr
    cdef unsigned char *aux_kind

    def __cinit__(self):
        self.n = self.cap = self.active = self.filled = 0
        self.act = NULL
        self.step_obj = NULL; self.step_addr = NULL; self.step_kind = NULL
        self.aux_obj = NULL; self.aux_addr = NULL; self.aux_kind = NULL

    def __dealloc__(self):
        self._drop()
        free(self.step_obj); free(self.step_addr); free(self.step_kind)
        free(self.aux_obj); free(self.aux_addr); free(self.aux_kind); free(self.act)

    cdef void _drop(self):
        cdef Py_ssize_t i
        for i in range(self.n):
            Py_XDECREF(self.step_obj[i])
            Py_XDECREF(self.aux_obj[i])
            self.step_obj[i] = NULL
            self.aux_obj[i] = NULL
        self.n = 0

    cdef int _reset(self, Py_ssize_t T) except -1:
        self._drop()
        if T > self.cap:
            free(self.step_obj); free(self.step_addr); free(self.step_kind)
            free(self.aux_obj); free(self.aux_addr); free(self.aux_kind); free(self.act)
            self.act = <unsigned char *>malloc(T)
            self.step_obj = <PyObject **>malloc(T * sizeof(PyObject *))
            self.step_addr = <void **>malloc(T * sizeof(void *))
            self.step_kind = <unsigned char *>malloc(T)
            self.aux_obj = <PyObject **>malloc(T * sizeof(PyObject *))
            self.aux_addr = <void **>malloc(T * sizeof(void *))
            self.aux_kind = <unsigned char *>malloc(T)
            if (not self.step_obj or not self.step_addr or not self.step_kind
                    or not self.aux_obj or not self.aux_addr or not self.aux_kind
                    or not self.act):
                self.cap = 0
                raise MemoryError()
            self.cap = T
        if T > 0:
            memset(self.step_obj, 0, T * sizeof(PyObject *))
            memset(self.aux_obj, 0, T * sizeof(PyObject *))
            memset(self.step_kind, 0, T)
            memset(self.aux_kind, 0, T)
            memset(self.act, 0, T)
        self.n = self.filled = T
        self.active = 0
        return 0

    def commit(self, cnp.ndarray aux=None):
        """After a step that ran: add 1 to every held step count, write ``aux[i]`` (float64,
        one per tensor) into every held scalar, then drop the references."""
        cdef Py_ssize_t i
        cdef const double *ax = NULL
        if aux is not None:
            if not _vec(aux, cnp.NPY_DOUBLE, self.n, False):
                raise ValueError(f"aux: expected a contiguous float64 array of {self.n}")
            ax = <const double *>cnp.PyArray_DATA(aux)
        for i in range(self.n):
            if self.step_kind[i] == HOLD_STEP_F32:
                (<float *>self.step_addr[i])[0] = (<float *>self.step_addr[i])[0] + <float>1.0
            elif self.step_kind[i] == HOLD_STEP_F64:
                (<double *>self.step_addr[i])[0] = (<double *>self.step_addr[i])[0] + 1.0
            if ax != NULL:
                if self.aux_kind[i] == HOLD_STEP_F32:
                    (<float *>self.aux_addr[i])[0] = <float>ax[i]
                elif self.aux_kind[i] == HOLD_STEP_F64:
                    (<double *>self.aux_addr[i])[0] = ax[i]
        self._drop()

    def discard(self):
        """Drop the references without writing anything (the step did not run)."""
        self._drop()

    def active_groups(self, cnp.ndarray group_of not None, Py_ssize_t ngroups):
        """Per group (``group_of``: the fill's), whether any of its tensors steps."""
        cdef Py_ssize_t i
        cdef const int *grp
        if not _vec(group_of, cnp.NPY_INT32, self.filled, False):
            raise ValueError("group_of: expected the fill's int32 array")
        grp = <const int *>cnp.PyArray_DATA(group_of)
        out = [False] * ngroups
        for i in range(cnp.PyArray_DIM(group_of, 0)):
            if self.act[i] and 0 <= grp[i] < ngroups:
                out[grp[i]] = True
        return out


cdef inline bint _dl_read(object o, fo_dl_tensor *t):
    """Describe ``o`` (a tensor of a checked type); False (no exception left) if it cannot
    be, e.g. it has no storage (sparse, meta, a wrapper subclass)."""
    if _dl.dltensor_from_py_object_no_sync(<void *><PyObject *>o, t) != 0:
        PyErr_Clear()
        return False
    return True


cdef inline bint _dl_host(const fo_dl_tensor *t):
    return (t.device.device_type == FO_DL_CPU or t.device.device_type == FO_DL_CUDA_HOST
            or t.device.device_type == FO_DL_ROCM_HOST)


cdef inline int64_t _dl_contiguous_numel(const fo_dl_tensor *t):
    """The element count if ``t`` is C-contiguous (strides of size-1 dimensions ignored),
    else -1."""
    cdef int64_t expected = 1, n = 1
    cdef int d
    for d in range(t.ndim - 1, -1, -1):
        if t.shape[d] == 0:
            return 0
        if t.shape[d] != 1 and t.strides[d] != expected:
            n = -1
        expected *= t.shape[d]
    return expected if n == 1 else -1


cdef inline bint _dl_same_shape(const fo_dl_tensor *a, int ndim, const int64_t *shape):
    cdef int d
    if a.ndim != ndim:
        return False
    for d in range(ndim):
        if a.shape[d] != shape[d]:
            return False
    return True


cdef inline bint _exact_type(object o, tuple types):
    cdef Py_ssize_t j
    cdef PyObject *tp = <PyObject *>Py_TYPE(o)
    for j in range(PyTuple_GET_SIZE(types)):
        if <PyObject *>PyTuple_GET_ITEM(types, j) == tp:
            return True
    return False


def fill_torch(Frame f not None, list groups not None, list slots_by_group not None,
               object state, object step_key, object aux_key, tuple types not None,
               tuple dtypes not None, bint id_hash, object is_neg,
               cnp.ndarray group_of not None, cnp.ndarray steps not None, cnp.ndarray aux,
               TorchHold hold not None):
    """The torch adapter's fill of ALL native param groups of one step, from the live objects.

    ``groups``: per group, its list of params; ``slots_by_group``: per group, a tuple of
    (stream, state key) pairs its settings need; ``state``: the optimizer's state dict
    (tensor -> dict); ``step_key``/``aux_key``: the state keys of the step count (or a list
    of one key or None per group) and of the per-param scalar (or None); a slot's optional
    third item is the stream's storage code, or a tuple of codes indexed by the param's code
    (0: the param has no such stream); ``types``: the tensor types taken as plain (exact type);
    ``dtypes``: (DLPack type code, bits, storage dtype code) triples of the dtypes taken;
    ``id_hash``: those types hash by id (the state lookup need not call __hash__); ``is_neg``:
    None, or torch.Tensor.is_neg, called on every gradient (a negated view reads wrong).

    Fills the frame with one tensor per param (a param without a gradient stays inactive),
    ``group_of`` (int32) with each tensor's group, ``steps`` (int64) with this step's counts
    (the held step + 1; 2 for rules without one: their buffers exist), ``aux`` (float64, when
    ``aux_key``) with each scalar, and ``hold`` with the 0-d tensors to update after the run.

    Returns -1, or the reason (R_*) the adapter's Python path must look first; then
    ``f.bad_tensor`` is the tensor, nothing was modified and no reference is kept."""
    cdef Py_ssize_t ngroups = PyList_GET_SIZE(groups), gi, j, T = 0, i = 0, s, nslots
    cdef list params
    cdef tuple slots, slot
    cdef object p, g, st, t, group_key
    cdef PyObject *item
    cdef fo_dl_tensor dp, dg, ds
    cdef int64_t n
    cdef int k, code, want, c, ndim
    cdef unsigned char lut[8][65]
    cdef int *grp
    cdef int64_t *stp
    cdef double *ax = NULL
    cdef double v
    cdef bint need_state, group_state, rc_ok = False
    cdef int64_t pshape[64]
    if _dl == NULL:
        raise RuntimeError("fastopt: no DLPack exchange table (set_dlpack_api)")
    if PyList_GET_SIZE(slots_by_group) != ngroups:
        raise ValueError("slots_by_group needs one entry per group")
    for gi in range(ngroups):
        o = <object>PyList_GET_ITEM(groups, gi)
        if type(o) is not list:
            raise TypeError("groups: expected lists of params")
        T += PyList_GET_SIZE(<list>o)
    if not _vec(group_of, cnp.NPY_INT32, T, True) or not _vec(steps, cnp.NPY_INT64, T, True):
        raise ValueError(f"group_of and steps: expected writeable int32/int64 arrays of {T}")
    if aux_key is not None:
        if not _vec(aux, cnp.NPY_DOUBLE, T, True):
            raise ValueError(f"aux: expected a writeable float64 array of {T}")
        ax = <double *>cnp.PyArray_DATA(aux)
    memset(lut, 0, sizeof(lut))
    for j in range(len(dtypes)):
        c, k, code = dtypes[j]
        if 0 <= c < 8 and 0 <= k <= 64:
            lut[c][k] = <unsigned char>code
    grp = <int *>cnp.PyArray_DATA(group_of)
    stp = <int64_t *>cnp.PyArray_DATA(steps)
    if type(step_key) is list and PyList_GET_SIZE(step_key) != ngroups:
        raise ValueError("step_key: expected one key (or None) per group")
    need_state = step_key is not None or aux_key is not None
    for gi in range(ngroups):
        if PyTuple_GET_SIZE(<tuple>slots_by_group[gi]) > 0:
            need_state = True
    if need_state and (state is None or not PyDict_Check(state)):
        return R_TYPE
    f._reset(T)
    hold._reset(T)
    try:
        for gi in range(ngroups):
            params = <list>PyList_GET_ITEM(groups, gi)
            slots = <tuple>slots_by_group[gi]
            nslots = PyTuple_GET_SIZE(slots)
            group_key = (<list>step_key)[gi] if type(step_key) is list else step_key
            group_state = group_key is not None or aux_key is not None or nslots > 0
            for j in range(PyList_GET_SIZE(params)):
                grp[i] = <int>gi
                stp[i] = 0
                if ax != NULL:
                    ax[i] = 0.0
                p = <object>PyList_GET_ITEM(params, j)
                if not _exact_type(p, types):
                    return f._fail(R_TYPE, i, 0)
                g = PyObject_GetAttr(p, "grad")
                if g is None:
                    i += 1
                    continue
                # the param
                if not _dl_read(p, &dp) or not _dl_host(&dp) or dp.dtype.lanes != 1:
                    return f._fail(R_DTYPE, i, 0)
                code = lut[dp.dtype.code][dp.dtype.bits] if dp.dtype.code < 8 and dp.dtype.bits <= 64 else 0
                if code == 0 or code > FO_DT_BF16:      # (8-bit codes are state dtypes only)
                    return f._fail(R_DTYPE, i, 0)
                n = _dl_contiguous_numel(&dp)
                if n < 0:
                    return f._fail(R_LAYOUT, i, 0)
                ndim = dp.ndim
                if ndim > 64:
                    return f._fail(R_SHAPE, i, 0)
                for k in range(ndim):
                    pshape[k] = dp.shape[k]
                f._ref(p)
                f.addr[i * S] = <uintptr_t>dp.data + <uintptr_t>dp.byte_offset
                f.dt[i * S] = <unsigned char>code
                f.count[i] = n
                # its gradient
                if (not _exact_type(g, types) or not _dl_read(g, &dg) or not _dl_host(&dg)
                        or dg.dtype.code != dp.dtype.code or dg.dtype.bits != dp.dtype.bits
                        or dg.dtype.lanes != 1 or not _dl_same_shape(&dg, ndim, pshape)
                        or _dl_contiguous_numel(&dg) != n):
                    return f._fail(R_LAYOUT, i, FO_G)
                if is_neg is not None and PyObject_IsTrue(is_neg(g)):
                    return f._fail(R_LAYOUT, i, FO_G)
                f._ref(g)
                f.addr[i * S + FO_G] = <uintptr_t>dg.data + <uintptr_t>dg.byte_offset
                f.dt[i * S + FO_G] = <unsigned char>code
                hold.act[i] = 1
                hold.active += 1
                if not group_state:     # plain SGD keeps no state, as torch's
                    stp[i] = 2
                    i += 1
                    continue
                # its state
                if id_hash:
                    item = fo_dict_get_by_id(state, p)
                else:
                    item = PyDict_GetItemWithError(state, p)
                if item == NULL:
                    if PyErr_Occurred():
                        PyErr_Clear()
                        return f._fail(R_TYPE, i, -1)
                    return f._fail(R_NEEDS_STATE, i, -1)
                st = <object>item
                if type(st) is not dict:
                    return f._fail(R_TYPE, i, -1)
                for s in range(nslots):
                    slot = <tuple>PyTuple_GET_ITEM(slots, s)
                    k = <int>slot[0]
                    if PyTuple_GET_SIZE(slot) < 3:
                        want = code
                    else:
                        t = <object>PyTuple_GET_ITEM(slot, 2)
                        # a tuple: the storage code by the param's code (0: no such stream);
                        # a fourth and fifth item: under that many elements, the fifth's
                        # codes (8-bit states: small tensors keep float32 states)
                        if PyTuple_GET_SIZE(slot) >= 5 and n < <int64_t>slot[3]:
                            t = <object>PyTuple_GET_ITEM(slot, 4)
                        want = <int>t[code] if type(t) is tuple else <int>t
                        if want == 0:
                            continue
                    if not 2 <= k < S:
                        raise ValueError(f"slot stream {k} out of range")
                    item = PyDict_GetItem(st, <object>PyTuple_GET_ITEM(slot, 1))
                    if item == NULL:
                        return f._fail(R_NEEDS_STATE, i, k)
                    t = <object>item
                    if want == FO_DT_ABSMAX:
                        # an 8-bit state's block scales: float32, one per block, 1-D
                        if (not _exact_type(t, types) or not _dl_read(t, &ds)
                                or not _dl_host(&ds) or ds.dtype.lanes != 1
                                or ds.dtype.code != FO_DL_FLOAT or ds.dtype.bits != 32
                                or ds.ndim != 1
                                or _dl_contiguous_numel(&ds) != (n + Q8_BLOCK - 1) // Q8_BLOCK):
                            return f._fail(R_LAYOUT, i, k)
                    elif (not _exact_type(t, types) or not _dl_read(t, &ds) or not _dl_host(&ds)
                            or ds.dtype.lanes != 1 or ds.dtype.code >= 8 or ds.dtype.bits > 64
                            or lut[ds.dtype.code][ds.dtype.bits] != want
                            or not _dl_same_shape(&ds, ndim, pshape)
                            or _dl_contiguous_numel(&ds) != n):
                        return f._fail(R_LAYOUT, i, k)
                    f._ref(t)
                    f.addr[i * S + k] = <uintptr_t>ds.data + <uintptr_t>ds.byte_offset
                    f.dt[i * S + k] = <unsigned char>want
                if group_key is None:
                    stp[i] = 2      # rules without a step count: their buffers exist
                else:
                    item = PyDict_GetItem(st, group_key)
                    if item == NULL:
                        return f._fail(R_NEEDS_STATE, i, -1)
                    t = <object>item
                    if (not _exact_type(t, types) or not _dl_read(t, &ds) or not _dl_host(&ds)
                            or ds.ndim != 0 or ds.dtype.code != FO_DL_FLOAT
                            or ds.dtype.lanes != 1 or (ds.dtype.bits != 32 and ds.dtype.bits != 64)):
                        return f._fail(R_TYPE, i, -1)
                    if ds.dtype.bits == 32:
                        v = (<float *>(<char *>ds.data + ds.byte_offset))[0]
                    else:
                        v = (<double *>(<char *>ds.data + ds.byte_offset))[0]
                    if not (-9.0e15 < v < 9.0e15):     # NaN, inf, huge: Python's int() judges
                        return f._fail(R_TYPE, i, -1)
                    stp[i] = <int64_t>v + 1            # truncation, as int(step) + 1
                    Py_INCREF(t)
                    hold.step_obj[i] = <PyObject *>t
                    hold.step_addr[i] = <char *>ds.data + ds.byte_offset
                    hold.step_kind[i] = HOLD_STEP_F32 if ds.dtype.bits == 32 else HOLD_STEP_F64
                if aux_key is not None:
                    item = PyDict_GetItem(st, aux_key)
                    if item == NULL:
                        return f._fail(R_NEEDS_STATE, i, -1)
                    t = <object>item
                    if (not _exact_type(t, types) or not _dl_read(t, &ds) or not _dl_host(&ds)
                            or ds.ndim != 0 or ds.dtype.code != FO_DL_FLOAT
                            or ds.dtype.lanes != 1 or (ds.dtype.bits != 32 and ds.dtype.bits != 64)):
                        return f._fail(R_TYPE, i, -1)
                    if ds.dtype.bits == 32:
                        ax[i] = (<float *>(<char *>ds.data + ds.byte_offset))[0]
                    else:
                        ax[i] = (<double *>(<char *>ds.data + ds.byte_offset))[0]
                    Py_INCREF(t)
                    hold.aux_obj[i] = <PyObject *>t
                    hold.aux_addr[i] = <char *>ds.data + ds.byte_offset
                    hold.aux_kind[i] = HOLD_STEP_F32 if ds.dtype.bits == 32 else HOLD_STEP_F64
                i += 1
        rc_ok = True
        return -1
    finally:
        if not rc_ok:
            f._drop_refs()
            f.ntensors = 0
            hold._drop()


# ---- SparseAdam and Adafactor (csrc/rules2.c) ---------------------------------------------
# Entries of their own, outside the element-wise driver: SparseAdam walks the touched rows of
# each param, Adafactor runs each tensor whole (its reductions in a fixed order). Both check
# every array of the call first and write nothing when one does not fit.

cdef extern from "fo_rules2.h" nogil:
    ctypedef struct fo_sparse_adam_hp:
        double gsign, one_minus_beta1, one_minus_beta2, eps, neg_step_size
    int64_t fo_sparse_check(int64_t k, const int64_t *idx, int64_t nrows, int *why)
    void fo_sparse_adam_rows(int dt, int64_t k0, int64_t k1, int64_t rowlen,
                             const int64_t *idx, const void *values, void *p, void *m,
                             void *v, const fo_sparse_adam_hp *hp)
    ctypedef struct fo_adafactor_hp:
        double w, rho, eps1, eps2, d, decay, gsign
        int decayed
    void fo_adafactor_tensor(int dt, int64_t B, int64_t R, int64_t C, int factored, void *p,
                             const void *g, void *row, void *col, void *var,
                             const fo_adafactor_hp *hp, double *work)


cdef unsigned char _r2_array(object a, str name, object dtype, tuple shape, bint written) except 0:
    """The storage code of a float32/float64 array of this dtype (None: the first one's) and
    shape (None: any), C-contiguous, aligned, writeable if written; raises naming it."""
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name}: expected a NumPy array, got {type(a).__name__}")
    cdef cnp.ndarray x = <cnp.ndarray>a
    cdef unsigned char code = _np_code(x)
    if code != FO_DT_F32 and code != FO_DT_F64:
        raise TypeError(f"{name}: expected float32 or float64 (native byte order), got "
                        f"{x.dtype}")
    if dtype is not None and x.dtype != dtype:
        raise TypeError(f"{name}: expected dtype {dtype} (the param's), got {x.dtype}")
    if shape is not None and tuple(a.shape) != shape:
        raise ValueError(f"{name}: expected shape {shape}, got {tuple(a.shape)}")
    if not cnp.PyArray_IS_C_CONTIGUOUS(x) or not cnp.PyArray_ISALIGNED(x):
        raise ValueError(f"{name}: expected a C-contiguous, aligned array")
    if written and not cnp.PyArray_ISWRITEABLE(x):
        raise ValueError(f"{name}: the array is read-only")
    return code


def sparse_adam(list params not None, list indices not None, list values not None,
                list exp_avgs not None, list exp_avg_sqs not None,
                cnp.ndarray neg_step_sizes not None, double beta1, double beta2, double eps,
                bint maximize, int nthreads):
    """SparseAdam on the touched rows of every param in one call (see fo_rules2.h).

    Entry i: params[i] (n_i x ...), indices[i] (int64, k_i, strictly increasing: coalesced),
    values[i] (k_i x params[i].shape[1:]), exp_avgs[i], exp_avg_sqs[i] (the param's shape and
    dtype); neg_step_sizes[i] = -lr*sqrt(1 - beta2^t)/(1 - beta1^t) of its step. Every array
    and index is checked before anything is written (overlaps are the caller's to check);
    raises naming the first that does not fit. The GIL is released while the rows run."""
    cdef Py_ssize_t T = len(params), i
    if (len(indices) != T or len(values) != T or len(exp_avgs) != T or len(exp_avg_sqs) != T
            or neg_step_sizes.shape[0] != T):
        raise ValueError("sparse_adam: expected one entry per param in every list")
    nss = np.ascontiguousarray(neg_step_sizes, dtype=np.float64)
    cdef double *nssp = <double *>cnp.PyArray_DATA(nss)
    keep = []
    cdef int64_t *kk = <int64_t *>malloc(max(T, 1) * 3 * sizeof(int64_t))
    cdef uintptr_t *pt = <uintptr_t *>malloc(max(T, 1) * 5 * sizeof(uintptr_t))
    cdef unsigned char *dts = <unsigned char *>malloc(max(T, 1))
    cdef int64_t bad = -1, k, nrows, nchunk, c, k0, k1, total = 0
    cdef int why = 0, nt, dt
    cdef fo_sparse_adam_hp hp
    if not kk or not pt or not dts:
        free(kk); free(pt); free(dts)
        raise MemoryError()
    try:
        for i in range(T):
            p = params[i]
            dt = _r2_array(p, f"params[{i}]", None, None, True)
            if p.ndim < 1:
                raise ValueError(f"params[{i}]: expected at least one dimension (the rows), "
                                 "got a 0-d array")
            idx = indices[i]
            if (not isinstance(idx, np.ndarray) or idx.dtype != np.int64 or idx.ndim != 1
                    or not idx.flags.c_contiguous or not idx.flags.aligned):
                raise TypeError(f"indices[{i}]: expected a 1-d C-contiguous int64 array, got "
                                f"{getattr(idx, 'dtype', type(idx).__name__)} of shape "
                                f"{getattr(idx, 'shape', None)}")
            k = idx.shape[0]
            _r2_array(values[i], f"values[{i}]", p.dtype, (k,) + tuple(p.shape[1:]), False)
            _r2_array(exp_avgs[i], f"exp_avgs[{i}]", p.dtype, tuple(p.shape), True)
            _r2_array(exp_avg_sqs[i], f"exp_avg_sqs[{i}]", p.dtype, tuple(p.shape), True)
            nrows = p.shape[0]
            kk[3 * i] = k
            kk[3 * i + 1] = nrows
            kk[3 * i + 2] = p.size // nrows if nrows > 0 else 0
            pt[5 * i] = <uintptr_t>cnp.PyArray_DATA(<cnp.ndarray>p)
            pt[5 * i + 1] = <uintptr_t>cnp.PyArray_DATA(<cnp.ndarray>idx)
            pt[5 * i + 2] = <uintptr_t>cnp.PyArray_DATA(<cnp.ndarray>values[i])
            pt[5 * i + 3] = <uintptr_t>cnp.PyArray_DATA(<cnp.ndarray>exp_avgs[i])
            pt[5 * i + 4] = <uintptr_t>cnp.PyArray_DATA(<cnp.ndarray>exp_avg_sqs[i])
            dts[i] = <unsigned char>dt
            total += k * kk[3 * i + 2]
            keep.append((p, idx, values[i], exp_avgs[i], exp_avg_sqs[i]))
        with nogil:
            for i in range(T):
                bad = fo_sparse_check(kk[3 * i], <const int64_t *>pt[5 * i + 1], kk[3 * i + 1],
                                      &why)
                if bad >= 0:
                    break
        if bad >= 0:
            value = int(indices[i][bad])
            if why == 1:
                raise IndexError(f"indices[{i}]: index {value} at position {bad} is out of "
                                 f"range for params[{i}] with {kk[3 * i + 1]} rows")
            raise ValueError(f"indices[{i}]: index {value} at position {bad} does not follow "
                             "the one before in increasing order (coalesce the gradient: "
                             "unique, sorted indices)")
        hp.gsign = -1.0 if maximize else 1.0
        hp.one_minus_beta1 = 1.0 - beta1
        hp.one_minus_beta2 = 1.0 - beta2
        hp.eps = eps
        nt = nthreads
        if total < _grain * nt:
            nt = max(1, <int>(total // _grain))
        with nogil:
            for i in range(T):
                hp.neg_step_size = nssp[i]
                k = kk[3 * i]
                if nt <= 1 or k < 2:
                    fo_sparse_adam_rows(dts[i], 0, k, kk[3 * i + 2], <const int64_t *>pt[5 * i + 1],
                                        <const void *>pt[5 * i + 2], <void *>pt[5 * i],
                                        <void *>pt[5 * i + 3], <void *>pt[5 * i + 4], &hp)
                    continue
                nchunk = nt if k >= nt else k
                for c in prange(nchunk, num_threads=nt, schedule='static'):
                    fo_sparse_adam_rows(dts[i], c * k // nchunk, (c + 1) * k // nchunk,
                                        kk[3 * i + 2], <const int64_t *>pt[5 * i + 1],
                                        <const void *>pt[5 * i + 2], <void *>pt[5 * i],
                                        <void *>pt[5 * i + 3], <void *>pt[5 * i + 4], &hp)
    finally:
        free(kk); free(pt); free(dts)


def adafactor(list params not None, list grads not None, list row_vars not None,
              list col_vars not None, list variances not None, cnp.ndarray scalars not None,
              int nthreads):
    """Adafactor on every tensor of the call (see fo_rules2.h), tensors spread over threads,
    each tensor on one thread (so the reductions' order never depends on the thread count).

    Entry i: params[i], grads[i] (same shape and dtype); for 2+ dims row_vars[i] (shape[:-1] +
    (1,)) and col_vars[i] (shape[:-2] + (1, shape[-1])), variances[i] None; else variances[i]
    (the param's shape) and the others None. scalars: (T, 7) float64, per tensor w, rho, eps1,
    eps2, d, decay (1.0: none), gsign. Everything is checked before anything is written."""
    cdef Py_ssize_t T = len(params), i
    if (len(grads) != T or len(row_vars) != T or len(col_vars) != T or len(variances) != T
            or scalars.ndim != 2 or scalars.shape[0] != T or scalars.shape[1] != 7):
        raise ValueError("adafactor: expected one entry per param in every list and a (T, 7) "
                         "table of scalars")
    sc = np.ascontiguousarray(scalars, dtype=np.float64)
    cdef double *scp = <double *>cnp.PyArray_DATA(sc)
    cdef int64_t *dims = <int64_t *>malloc(max(T, 1) * 4 * sizeof(int64_t))
    cdef uintptr_t *pt = <uintptr_t *>malloc(max(T, 1) * 5 * sizeof(uintptr_t))
    cdef unsigned char *dts = <unsigned char *>malloc(max(T, 1))
    cdef int64_t total = 0, wmax = 1
    cdef int nt, dt, failed = 0
    cdef double *work
    if not dims or not pt or not dts:
        free(dims); free(pt); free(dts)
        raise MemoryError()
    keep = []
    try:
        for i in range(T):
            p = params[i]
            dt = _r2_array(p, f"params[{i}]", None, None, True)
            shape = tuple(p.shape)
            _r2_array(grads[i], f"grads[{i}]", p.dtype, shape, False)
            pt[5 * i] = <uintptr_t>cnp.PyArray_DATA(<cnp.ndarray>p)
            pt[5 * i + 1] = <uintptr_t>cnp.PyArray_DATA(<cnp.ndarray>grads[i])
            pt[5 * i + 2] = pt[5 * i + 3] = pt[5 * i + 4] = 0
            nd = p.ndim
            if nd >= 2:
                rr = shape[nd - 2]
                cc = shape[nd - 1]
                bb = 1
                for d in shape[:nd - 2]:
                    bb *= d
                _r2_array(row_vars[i], f"row_vars[{i}]", p.dtype, shape[:nd - 1] + (1,), True)
                _r2_array(col_vars[i], f"col_vars[{i}]", p.dtype, shape[:nd - 2] + (1, cc),
                          True)
                dims[4 * i] = bb
                dims[4 * i + 1] = rr
                dims[4 * i + 2] = cc
                dims[4 * i + 3] = 1
                pt[5 * i + 2] = <uintptr_t>cnp.PyArray_DATA(<cnp.ndarray>row_vars[i])
                pt[5 * i + 3] = <uintptr_t>cnp.PyArray_DATA(<cnp.ndarray>col_vars[i])
                wmax = max(wmax, rr + cc + bb)
            else:
                _r2_array(variances[i], f"variances[{i}]", p.dtype, shape, True)
                dims[4 * i] = p.size
                dims[4 * i + 1] = dims[4 * i + 2] = 1
                dims[4 * i + 3] = 0
                pt[5 * i + 4] = <uintptr_t>cnp.PyArray_DATA(<cnp.ndarray>variances[i])
            dts[i] = <unsigned char>dt
            total += p.size
            keep.append((p, grads[i], row_vars[i], col_vars[i], variances[i]))
        nt = nthreads
        if total < _grain * nt:
            nt = max(1, <int>(total // _grain))
        if nt > T:
            nt = max(1, <int>T)
        with nogil:
            for i in prange(T, num_threads=nt, schedule='dynamic', chunksize=1):
                work = <double *>malloc(wmax * sizeof(double))
                if work == NULL:
                    failed += 1
                else:
                    _adafactor_one(dts[i], &dims[4 * i], &pt[5 * i], &scp[7 * i], work)
                    free(work)
        if failed:
            raise MemoryError("adafactor: no memory for a tensor's row and column sums")
    finally:
        free(dims); free(pt); free(dts)


cdef void _adafactor_one(int dt, const int64_t *dims, const uintptr_t *pt, const double *s,
                         double *work) noexcept nogil:
    cdef fo_adafactor_hp hp
    hp.w = s[0]
    hp.rho = s[1]
    hp.eps1 = s[2]
    hp.eps2 = s[3]
    hp.d = s[4]
    hp.decay = s[5]
    hp.gsign = s[6]
    hp.decayed = s[5] != 1.0
    fo_adafactor_tensor(dt, dims[0], dims[1], dims[2], <int>dims[3], <void *>pt[0],
                        <const void *>pt[1], <void *>pt[2], <void *>pt[3], <void *>pt[4], &hp,
                        work)
