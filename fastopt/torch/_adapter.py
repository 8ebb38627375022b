"""The one place where torch tensors meet fastopt's native driver.

Everything the torch frontend (``fastopt.torch``) does with memory goes through this module:
layout checks, the array descriptors of params, gradients and state (data address, element
count, storage dtype, with the tensors themselves held as owners for the call), the thread
count, and the single native call per step (all param groups, each with its own record)
through ``fastopt.functional.run_frame``, with the rule's spec (fastopt._spec) for its
hyperparameters and state streams. No tensor is converted to a NumPy array and nothing is
copied, except a gradient whose layout differs from its param's (below). In the steady state
the descriptors come from ``fast_step`` (one C pass, ``_kernels.fill_torch``); the first step
and anything that pass does not take come through the checked path (``check_param`` /
``check_grad`` / ``check_state`` and ``run``).

Layout contract (checked by ``check_param`` / ``check_state`` before anything is modified):

- A param must be a strided CPU tensor whose elements cover one dense block of memory:
  contiguous, or dense in another order (a transposed or permuted tensor, channels-last). Such a
  tensor and its state (created with ``torch.preserve_format``, hence with the same strides) are
  described as the flat block starting at ``data_ptr()`` (the lowest address, torch's strides
  being non-negative): the update is element-wise, so the order of the elements does not matter
  and the update lands in the tensor itself.
- A param that does not cover a dense block (a slice with gaps, an expanded tensor) is refused
  with ValueError: it could only be stepped through a copy, whose update would be lost.
- A gradient whose strides differ from its param's (or that is itself not dense) is read through
  a temporary copy in the param's layout: the gradient is only read, so the result is correct,
  at the cost of one copy of that gradient per step.
- A state tensor must have its param's shape, dtype and strides (state replaced by the user
  with another layout is refused, as its update would otherwise be lost).
- Complex tensors are stepped as their real view (twice the elements), as torch does.

The driver itself refuses (before anything is modified) any written stream that overlaps
another stream of the call: tied or aliased params and state, reported here by name.
"""
from __future__ import annotations

import sys

import numpy as np
import torch

from .. import _spec, _threading, functional
from .._backend import native as _native

HALF = (torch.float16, torch.bfloat16)
NATIVE_DTYPES = (torch.float32, torch.float64, torch.complex64, torch.complex128) + HALF
# storage dtype code (csrc/fastopt.h FO_DT_*) and elements per tensor element, per dtype
_CODES = {torch.float32: (_spec.DT_F32, 1), torch.float64: (_spec.DT_F64, 1),
          torch.complex64: (_spec.DT_F32, 2), torch.complex128: (_spec.DT_F64, 2),
          torch.float16: (_spec.DT_F16, 1), torch.bfloat16: (_spec.DT_BF16, 1),
          torch.int8: (_spec.DT_Q8S, 1), torch.uint8: (_spec.DT_Q8U, 1)}  # (8-bit codes)
# the tensor dtype of each storage code (index DT_NONE: no stream)
BY_CODE = (None, torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int8,
           torch.uint8, torch.float32)
DT_ABSMAX = _spec.DT_ABSMAX


def slot_code(slot: tuple, pcode: int, n: int) -> int:
    """The storage code of a group slot's stream for a param of storage code ``pcode`` and
    ``n`` elements (0: that param has no such stream); see _kernels.fill_torch's slots."""
    codes = slot[4] if len(slot) >= 5 and n < slot[3] else slot[2]
    return codes[pcode]


def code(dtype: torch.dtype) -> int:
    """The storage dtype code of a tensor dtype."""
    return _CODES[dtype][0]


def _dense(t: torch.Tensor) -> bool:
    """True if the tensor's elements cover exactly one contiguous block of memory."""
    if t.is_contiguous():
        return True
    expected = 1
    for stride, size in sorted((st, sz) for st, sz in zip(t.stride(), t.shape) if sz != 1):
        if stride != expected:
            return False
        expected *= size
    return True


def _same_layout(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same strides on every dimension that has more than one element."""
    return all(sa == sb or sz <= 1 for sa, sb, sz in zip(a.stride(), b.stride(), a.shape))


def _lazy_view(t: torch.Tensor) -> str | None:
    """'negated' or 'conjugated' for a tensor whose memory holds the negation or conjugate of
    its values (torch's lazy neg and conj bits: ``z.conj()``, ``z.conj().imag``), else None."""
    if t.is_neg():
        return "negated"
    if t.is_conj():
        return "conjugated"
    return None


def _dtensor_type():
    """torch.distributed.tensor.DTensor if that module is loaded (no DTensor exists before)."""
    mod = sys.modules.get("torch.distributed.tensor")
    return getattr(mod, "DTensor", None)


def is_sharded(t) -> bool:
    """True for a DTensor (FSDP2's params, their gradients and state): the step updates its
    local shard, element-wise, which is what torch's own optimizers compute on it."""
    dt = _dtensor_type()
    return dt is not None and isinstance(t, dt)


def local(t):
    """The tensor whose memory the kernels read or write: a DTensor's local shard, else t."""
    return t._local_tensor if is_sharded(t) else t


def check_param(name: str, p: torch.Tensor) -> None:
    """Raise a clear error if ``p`` cannot be stepped in place natively."""
    if type(p).__torch_dispatch__ is not torch.Tensor.__torch_dispatch__:
        raise RuntimeError(
            f"fastopt.torch: {name} is a {type(p).__name__}, a tensor subclass that dispatches "
            "its own operations; fastopt steps plain tensors (and DTensors through their "
            "local shards). Use fused=False for torch's implementation")
    if p.is_cpu and p.layout == torch.strided and p.is_contiguous() and not p.is_neg() \
            and not p.is_conj():
        return
    if p.device.type != "cpu":
        raise RuntimeError(f"fastopt.torch: {name} is on device {p.device}; fastopt steps CPU "
                           "tensors only (use torch.optim, or fused=False, for other devices)")
    if p.layout != torch.strided:
        raise RuntimeError(f"fastopt.torch: {name} has layout {p.layout}; only strided "
                           "tensors are supported")
    if p.numel() > 1 and not _dense(p):
        raise ValueError(
            f"fastopt.torch: {name} (shape {tuple(p.shape)}, strides {p.stride()}) does not "
            "cover one dense block of memory; it cannot be updated in place without a copy, "
            "whose update would be lost. Make the parameter itself contiguous (e.g. "
            "p.data = p.data.contiguous()) or use fused=False for torch's implementation.")
    lazy = _lazy_view(p)
    if lazy:
        raise ValueError(f"fastopt.torch: {name} is a lazily {lazy} view (its memory holds "
                         "other values than it shows); it cannot be updated in place. "
                         "Resolve it (p.data = p.data.resolve_conj().resolve_neg()) or use "
                         "fused=False")


def check_grad(name: str, g: torch.Tensor, p: torch.Tensor) -> None:
    if g.is_sparse or g.layout != torch.strided:
        raise RuntimeError(f"fastopt.torch: {name}.grad is a sparse ({g.layout}) tensor; "
                           "fastopt supports dense gradients only")
    if g.device != p.device:
        raise RuntimeError(f"fastopt.torch: {name}.grad is on {g.device}, its param on "
                           f"{p.device}")
    if g.dtype != p.dtype or g.shape != p.shape:
        raise ValueError(f"fastopt.torch: {name}.grad has dtype {g.dtype} and shape "
                         f"{tuple(g.shape)}, its param {p.dtype} and {tuple(p.shape)}")


def check_scales(name: str, key: str, t, p: torch.Tensor) -> None:
    """Raise a clear error unless ``t`` can be the block scales of an 8-bit state of ``p``:
    a contiguous 1-D float32 CPU tensor of one element per block of 256."""
    blocks = (p.numel() + 255) // 256
    if not (isinstance(t, torch.Tensor) and t.dtype == torch.float32 and t.dim() == 1
            and t.numel() == blocks and t.is_cpu and t.layout == torch.strided
            and t.is_contiguous() and not t.is_neg()):
        what = (f"a {type(t).__name__}" if not isinstance(t, torch.Tensor) else
                f"dtype {t.dtype}, shape {tuple(t.shape)}")
        raise ValueError(f"fastopt.torch: state[{name}][{key!r}] must be the block scales of "
                         f"an 8-bit state: a contiguous float32 tensor of shape ({blocks},) "
                         f"(one per 256 elements); got {what}")


def check_state(name: str, key: str, t, p: torch.Tensor, dtype: torch.dtype | None = None) \
        -> None:
    """Raise a clear error unless state tensor ``t`` has ``p``'s shape, strides and device
    and ``dtype`` (default: the param's; a master copy, float32 or 8-bit states differ)."""
    dtype = p.dtype if dtype is None else dtype
    if (isinstance(t, torch.Tensor) and t.dtype == dtype and t.shape == p.shape
            and t.is_cpu and t.layout == torch.strided and t.is_contiguous()
            and p.is_contiguous() and not t.is_neg() and not t.is_conj()):
        return
    if not isinstance(t, torch.Tensor) or t.dtype != dtype or t.shape != p.shape \
            or t.device != p.device or t.layout != torch.strided \
            or (p.numel() > 1 and not _same_layout(t, p)):
        what = (f"a {type(t).__name__}" if not isinstance(t, torch.Tensor) else
                f"dtype {t.dtype}, shape {tuple(t.shape)}, strides {t.stride()}")
        mine = "its param's dtype" if dtype == p.dtype else "dtype"
        raise ValueError(f"fastopt.torch: state[{name}][{key!r}] must be a tensor with "
                         f"{mine} {dtype}, its param's shape {tuple(p.shape)}, strides "
                         f"{p.stride()} and device; got {what}")
    lazy = _lazy_view(t)
    if lazy:
        raise ValueError(f"fastopt.torch: state[{name}][{key!r}] is a lazily {lazy} view; "
                         "it cannot be updated in place (resolve it, or use fused=False)")


def _grad_tensor(g: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """The gradient laid out as its param, with its values in its memory (a temporary copy
    when it is not: a lazily negated or conjugated gradient is resolved)."""
    if g.is_neg() or g.is_conj():
        g = g.resolve_conj().resolve_neg()
    if g.is_contiguous() and p.is_contiguous():
        return g
    if p.numel() > 1 and not (_same_layout(g, p) and _dense(g)):
        g = torch.empty_like(p).copy_(g)
    return g


def new_frame():
    return _native.Frame() if functional.NATIVE else None


def new_memo():
    return _native.Memo() if functional.NATIVE else None


# ---- the fast fill: the steady state in one C pass -----------------------------------------
#
# After the first step (which creates the state through the Python path above) every step of
# a plain model is read by ``_kernels.fill_torch`` straight from the live objects: the params
# of all native groups, ``.grad``, the state dict and its tensors, each described by one call
# of the DLPack exchange table torch publishes (``torch.Tensor.__dlpack_c_exchange_api__``),
# so a step costs no Python work per tensor. Whatever the fill does not take as the plain case
# (see fill_torch) sends that step down the Python path, which checks, explains or copies.

# DLPack's (type code, bits) of the torch dtypes the fast fill takes; with _CODES above, the
# only place that maps torch dtypes (a 16-bit dtype is one more entry in each).
_DLPACK = {torch.float32: (2, 32), torch.float64: (2, 64), torch.float16: (2, 16),
           torch.bfloat16: (4, 16), torch.int8: (0, 8), torch.uint8: (1, 8)}
FAST_DTYPES = tuple((*_DLPACK[dt], code) for dt, (code, per) in _CODES.items()
                    if per == 1 and dt in _DLPACK)
# a rule without 16-bit storage (LAMB): its 16-bit params go to the Python path (torch's step)
FAST_DTYPES_32 = tuple(t for t in FAST_DTYPES if t[1] != 16)
# exact types taken as plain tensors (a subclass may dispatch differently: the Python path)
_TYPES = (torch.Tensor, torch.nn.Parameter)
# gradients are read through their memory, so a negated view (``z.conj().imag``) would be read
# with the wrong sign: each gradient's neg bit is checked (params and state are checked when
# the Python path sees them)
_IS_NEG = torch.Tensor.is_neg


def _fast_setup() -> tuple[bool, bool]:
    """(the fast fill is available, the tensor types hash by id)."""
    if not functional.NATIVE or not hasattr(_native, "fill_torch"):
        return False, False
    ok = bool(_native.set_dlpack_api(getattr(torch.Tensor, "__dlpack_c_exchange_api__", None)))
    probe = torch.zeros(())
    id_hash = (all(t.__hash__ is torch.Tensor.__hash__ for t in _TYPES)
               and hash(probe) == hash(id(probe)))
    return ok, id_hash


FAST, _ID_HASH = _fast_setup()


class Plan:
    """What one optimizer reuses from step to step (never part of its pickled state): the
    frame, the contract check's memo, the fast fill's hold and its per-tensor arrays."""

    __slots__ = ("frame", "memo", "hold", "group_of", "steps", "aux", "refused", "settings")

    def __init__(self) -> None:
        self.frame = new_frame()
        self.memo = new_memo()
        self.hold = _native.TorchHold() if FAST else None
        self.group_of = self.steps = self.aux = None
        self.refused: tuple[int, int] | None = None    # the fast fill's last (reason, tensor)
        self.settings: dict = {}    # the groups' checked settings (Optimizer._fo_settings)

    def arrays(self, n: int):
        if self.steps is None or len(self.steps) != n:
            self.group_of = np.zeros(n, np.int32)
            self.steps = np.zeros(n, np.int64)
            self.aux = np.zeros(n, np.float64)
        return self.group_of, self.steps, self.aux


def fast_step(spec: _spec.Rule, plan: Plan, groups: list, slots: list, records: list,
              clip: list, state, grad_scale: float, where: list[int], *, step_key,
              rounding, seed: int, ids) -> list | None:
    """The step of all native groups (``groups``: their param lists; ``slots``: each group's
    (stream, key, storage codes by the param's code) triples; ``records``/``clip``: each
    group's record and max_grad_norm; ``where``: each group's index in param_groups;
    ``step_key``: the state key of the step count, or one per group; ``rounding``: each
    group's rounding code; ``seed``/``ids``: stochastic rounding's, ``ids`` the function
    making each tensor's id) through the fast fill and one driver call. Returns each group's
    gradient norm (or None), or None having done nothing when the fill refuses
    (``plan.refused`` says why): the caller then takes the Python path."""
    if len(spec.aux) > 1:       # the fast fill keeps one scalar state per tensor (not ASGD's)
        plan.refused = (-1, -1)
        return None
    n = sum(map(len, groups))
    group_of, steps, aux = plan.arrays(n)
    rc = _native.fill_torch(plan.frame, groups, slots, state, step_key,
                            spec.aux[0] if spec.aux else None, _TYPES,
                            FAST_DTYPES if spec.storage16 else FAST_DTYPES_32,
                            _ID_HASH, _IS_NEG, group_of, steps,
                            aux if spec.aux else None, plan.hold)
    if rc >= 0:
        plan.refused = (rc, plan.frame.bad_tensor)
        return None
    plan.refused = None
    active = plan.hold.active_groups(group_of, len(groups))
    if not plan.hold.active:
        plan.frame.release()
        plan.hold.discard()
        return [UNSET] * len(groups)

    def names():
        return [f"param_groups[{gi}]['params'][{j}]"
                for gi, ps in zip(where, groups) for j in range(len(ps))]

    norms = _call(spec, plan.frame, plan.memo, records, clip, n, names, group_of, steps,
                  grad_scale, aux if spec.aux else None, None, hold=plan.hold,
                  rounding=rounding, seed=seed, ids=ids())
    return [nrm if a else UNSET for nrm, a in zip(norms, active)]


UNSET = object()    # fast_step's norm of a group none of whose params stepped


def _execute(ntensors: int, nthreads: int, call):
    """Hand one group's step to fastopt (both backends pass here; tests observe the calls
    through it): ``call(nthreads)`` runs it."""
    return call(nthreads)


def num_threads() -> int:
    """The threads a step asks for: fastopt.set_num_threads's count if it was called, else
    torch.get_num_threads() (the driver caps either by OpenMP's limit and the budget)."""
    if _threading._requested is not None:
        return _threading._requested
    return max(1, torch.get_num_threads())


class Batch:
    """One param group's share of a step: its stepping tensors, their state and settings."""

    __slots__ = ("params", "grads", "buffers", "record", "steps", "max_grad_norm",
                 "mu_products", "names", "rounding", "ids")

    def __init__(self, params: list, grads: list, buffers: dict, record: list[float], *,
                 steps: list[int], max_grad_norm: float | None = None,
                 mu_products: list | None = None, names: list[str] | None = None,
                 rounding: int = 0, ids: list[int] | None = None):
        self.params, self.grads, self.buffers, self.record = params, grads, buffers, record
        self.steps, self.max_grad_norm = steps, max_grad_norm
        self.mu_products, self.names = mu_products, names
        self.rounding, self.ids = rounding, ids


def run(spec: _spec.Rule, batches: list[Batch], *, grad_scale: float = 1.0, frame=None,
        memo=None, seed: int = 0) -> list[float | None]:
    """One fused native step of ``spec`` over the tensors of all ``batches`` (one per param
    group) in ONE call of the driver: each group with its own argument record and clipping.

    ``params``/``grads``: tensors (checked with ``check_param``/``check_grad``); ``buffers``:
    stream -> list of state tensors (``spec.needed``'s streams, then the master copy or
    compensation of 16-bit params: None for a tensor without that stream), each in its own
    storage dtype; ``record``: the group's
    validated argument record (``spec.record``); ``steps``: this step's count per tensor (from
    1; SGD: 1 where its momentum buffer is new); ``grad_scale``: the multiplier applied to every
    gradient as it is read (GradScaler's inverse scale); ``max_grad_norm``: clip the group's
    gradients by their global 2-norm (of the unscaled gradients: the driver's pre-pass);
    ``mu_products``: NAdam's 0-d running-product tensors, updated in place; ``rounding``: the
    group's rounding code (16-bit values written without a master copy), ``ids``: each
    tensor's id in stochastic rounding's key (with ``seed``). ``frame``/``memo``: the
    optimizer's, reused across steps. Returns each group's gradient norm (None where
    ``max_grad_norm`` is not given).
    """
    batches = [b for b in batches if b.params]
    if not batches:
        return []
    if not functional.NATIVE:
        return _run_numpy(spec, batches, grad_scale=grad_scale, seed=seed)
    S = _native.MAX_STREAMS
    pad = [0] * (S - 2)
    rows: list = []         # per tensor: S addresses, then S dtype codes, then the count
    owners: list = []
    group: list[int] = []
    steps: list[int] = []
    names: list[str] = []
    ids: list[int] = []
    for gi, b in enumerate(batches):
        columns = [(k, b.buffers[k]) for k in sorted(b.buffers)]
        for i, (p, g) in enumerate(zip(b.params, b.grads)):
            pcode, per = _CODES[p.dtype]
            g = _grad_tensor(g, p)
            a_row = [p.data_ptr(), g.data_ptr()] + pad
            c_row = [pcode, pcode] + pad
            owners.append(p)
            owners.append(g)
            for k, col in columns:
                t = col[i]
                if t is None:
                    continue
                a_row[k] = t.data_ptr()
                c_row[k] = DT_ABSMAX if k >= _native.STREAM_A1 else _CODES[t.dtype][0]
                owners.append(t)
            rows.append((a_row, c_row, p.numel() * per))
            group.append(gi)
        steps.extend(b.steps)
        names.extend(b.names or [f"tensor {i}" for i in range(len(b.params))])
        ids.extend(b.ids if b.ids is not None else range(len(ids), len(ids) + len(b.params)))
    n = len(rows)
    addr = np.array([r[0] for r in rows], dtype=np.uint64).reshape(n, S)
    codes = np.array([r[1] for r in rows], dtype=np.uint8).reshape(n, S)
    counts = np.array([r[2] for r in rows], dtype=np.int64)
    frame = new_frame() if frame is None else frame
    frame.fill_raw(addr, codes, counts, owners)
    mus = aux = None
    if spec.aux:
        mus = [m for b in batches for m in b.mu_products]
        aux = np.array([float(m) for m in mus], dtype=np.float64)
    return _call(spec, frame, memo, [b.record for b in batches],
                 [b.max_grad_norm for b in batches], n, names, np.array(group, np.int32),
                 np.array(steps, dtype=np.int64), grad_scale, aux, mus,
                 rounding=[b.rounding for b in batches], seed=seed,
                 ids=np.array(ids, dtype=np.int64))


def _call(spec, frame, memo, records, clip, n, names, group, steps, grad_scale, aux, mus,
          hold=None, rounding=None, seed=0, ids=None) -> list[float | None]:
    """The driver call through the seam, for the ``n`` tensors a fill has put into ``frame``
    (``records``/``clip``: per group; ``names``: per tensor, or a function making them, for
    messages); then the 0-d state the step updates: NAdam's products (``mus``, or ``hold``'s)
    and, with ``hold`` (the fast fill's), the step counts. Nothing is written if it raises."""
    ng = len(records)
    any_clip = any(c is not None for c in clip)
    norms = np.zeros(ng) if any_clip else None
    max_norms = (np.array([0.0 if c is None else float(c) for c in clip]) if any_clip
                 else None)

    def call(nthreads):
        return functional.run_frame(
            frame, spec, group=group, records=np.array(records, dtype=np.float64),
            gscale=np.full(ng, grad_scale), steps=steps, increment=False, aux=aux,
            max_norms=max_norms, norms=norms, memo=memo, nthreads=nthreads,
            rounding=rounding, seed=seed, ids=ids)

    try:
        _execute(n, num_threads(), call)
    except _native.ContractError as e:
        if hold is not None:
            hold.discard()
        raise ValueError(_contract_message(e, names() if callable(names) else names,
                                           spec)) from None
    except BaseException:
        if hold is not None:
            hold.discard()
        raise
    finally:
        frame.release()
    if hold is not None:
        hold.commit(aux)
    elif aux is not None:
        for m, v in zip(mus, aux.tolist()):
            m.fill_(v)
    return [None if c is None else float(norms[gi]) for gi, c in enumerate(clip)]


def _numpy_view(t: torch.Tensor) -> np.ndarray:
    """A zero-copy NumPy view of a dense tensor's elements (flat when it is not contiguous;
    complex tensors as their real view)."""
    t = t.detach()
    if t.is_complex():
        t = torch.view_as_real(t)
    if not t.is_contiguous():
        t = t.as_strided((t.numel(),), (1,))
    if t.dtype == torch.bfloat16:       # NumPy has no bfloat16: ml_dtypes' is the same bits
        from .. import _validation
        bf16 = _validation.bfloat16(load=True)
        if bf16 is None:
            raise RuntimeError("fastopt.torch: the NumPy backend (FASTOPT_PUREPYTHON=1) steps "
                               "bfloat16 tensors through ml_dtypes, which is not installed "
                               "(pip install ml_dtypes)")
        return t.view(torch.int16).numpy().view(bf16)
    return t.numpy()


def _run_numpy(spec, batches, *, grad_scale, seed) -> list[float | None]:
    """The NumPy backend (FASTOPT_PUREPYTHON=1): the same step through functional.run_lists
    (fastopt.reference per tensor), on zero-copy views of the tensors, in one call."""
    S = _native.MAX_STREAMS
    ps = [_numpy_view(p) for b in batches for p in b.params]
    gs = [_numpy_view(_grad_tensor(g, p)) for b in batches for g, p in zip(b.grads, b.params)]
    streams: list = [ps, gs] + [None] * (S - 2)
    keys = sorted({k for b in batches for k in b.buffers})
    for k in keys:
        streams[k] = [None if t is None else _numpy_view(t)
                      for b in batches for t in (b.buffers[k] if k in b.buffers
                                                 else [None] * len(b.params))]
    ids = []
    for b in batches:
        ids.extend(b.ids if b.ids is not None else range(len(ids), len(ids) + len(b.params)))
    group = np.array([gi for gi, b in enumerate(batches) for _ in b.params], np.int32)
    steps = np.array([s for b in batches for s in b.steps], dtype=np.int64)
    clip = [b.max_grad_norm for b in batches]
    any_clip = any(c is not None for c in clip)
    norms = np.zeros(len(batches)) if any_clip else None
    mus = [m for b in batches for m in b.mu_products] if spec.aux else None
    aux = None if mus is None else np.array([float(m) for m in mus], dtype=np.float64)
    labels = ["param", "grad"] + [f"state {k}" for k in range(2, S)]

    def call(nthreads):     # the NumPy backend runs on the calling thread
        return functional.run_lists(
            spec, streams, labels, group=group, records=[b.record for b in batches],
            gscale=[grad_scale] * len(batches), steps=steps, aux=aux,
            max_norms=(np.array([0.0 if c is None else float(c) for c in clip])
                       if any_clip else None), norms=norms,
            rounding=np.array([b.rounding for b in batches], np.uint8), seed=seed, ids=ids)

    _execute(len(ps), num_threads(), call)
    if aux is not None:
        for m, v in zip(mus, aux.tolist()):
            m.fill_(v)
    return [None if c is None else float(norms[gi]) for gi, c in enumerate(clip)]


def _contract_message(e, names, spec) -> str:
    streams = {0: "the param", 1: "its gradient"}
    streams.update({b.stream: f"state {b.key!r}" for b in spec.buffers})

    def where(tensor, stream):
        name = names[tensor] if names else f"tensor {tensor}"
        return f"{streams.get(stream, f'stream {stream}')} of {name}"

    if e.reason == _native.R_OVERLAP and e.other is not None:
        return (f"fastopt.torch: {where(e.tensor, e.stream)} shares memory with "
                f"{where(*e.other)}, which the step writes; each param and state tensor needs "
                "memory of its own (untie the params, or use fused=False)")
    return f"fastopt.torch: {where(e.tensor, e.stream)} cannot be stepped natively ({e})"
