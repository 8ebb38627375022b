"""The one place where torch tensors meet fastopt's native driver.

Everything the torch frontend (``fastopt.torch``) does with memory goes through this module:
layout checks, the array descriptors of params, gradients and state (data address, element
count, storage dtype, with the tensors themselves held as owners for the call), the thread
count, and the single native call per param group through ``fastopt.functional.run_frame``,
with the rule's spec (fastopt._spec) for its hyperparameters and state streams. No tensor is
converted to a NumPy array and nothing is copied, except a gradient whose layout differs from
its param's (below).

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

import numpy as np
import torch

from .. import _spec, _threading, functional
from .._backend import native as _native

NATIVE_DTYPES = (torch.float32, torch.float64, torch.complex64, torch.complex128)
# storage dtype code and elements per tensor element, per native dtype
_CODES = {torch.float32: (1, 1), torch.float64: (2, 1), torch.complex64: (1, 2),
          torch.complex128: (2, 2)}


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


def check_param(name: str, p: torch.Tensor) -> None:
    """Raise a clear error if ``p`` cannot be stepped in place natively."""
    if p.is_cpu and p.layout == torch.strided and p.is_contiguous():
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


def check_state(name: str, key: str, t, p: torch.Tensor) -> None:
    if (isinstance(t, torch.Tensor) and t.dtype == p.dtype and t.shape == p.shape
            and t.is_cpu and t.layout == torch.strided and t.is_contiguous()
            and p.is_contiguous()):
        return
    if not isinstance(t, torch.Tensor) or t.dtype != p.dtype or t.shape != p.shape \
            or t.device != p.device or t.layout != torch.strided \
            or (p.numel() > 1 and not _same_layout(t, p)):
        what = (f"a {type(t).__name__}" if not isinstance(t, torch.Tensor) else
                f"dtype {t.dtype}, shape {tuple(t.shape)}, strides {t.stride()}")
        raise ValueError(f"fastopt.torch: state[{name}][{key!r}] must be a tensor with its "
                         f"param's dtype {p.dtype}, shape {tuple(p.shape)}, strides "
                         f"{p.stride()} and device; got {what}")


def _grad_tensor(g: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """The gradient laid out as its param (a temporary copy when it is not)."""
    if g.is_contiguous() and p.is_contiguous():
        return g
    if p.numel() > 1 and not (_same_layout(g, p) and _dense(g)):
        g = torch.empty_like(p).copy_(g)
    return g


def new_frame():
    return _native.Frame() if functional.NATIVE else None


def new_memo():
    return _native.Memo() if functional.NATIVE else None


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


def run(spec: _spec.Rule, params: list, grads: list, buffers: dict, record: list[float], *,
        steps: list[int], grad_scale: float = 1.0, max_grad_norm: float | None = None,
        mu_products: list | None = None, names: list[str] | None = None,
        frame=None, memo=None) -> float | None:
    """One fused native step of ``spec`` over the tensors of one param group.

    ``params``/``grads``: tensors (checked with ``check_param``/``check_grad``); ``buffers``:
    stream -> list of state tensors (``spec.needed``'s streams); ``record``: the group's
    validated argument record (``spec.record``); ``steps``: this step's count per tensor (from
    1; SGD: 1 where its momentum buffer is new); ``grad_scale``: the multiplier applied to every
    gradient as it is read (GradScaler's inverse scale); ``max_grad_norm``: clip the group's
    gradients by their global 2-norm (of the unscaled gradients: the driver's pre-pass);
    ``mu_products``: NAdam's 0-d running-product tensors, updated in place. ``frame``/``memo``:
    the optimizer's, reused across steps. Returns the group's gradient norm when
    ``max_grad_norm`` is given.
    """
    n = len(params)
    if not n:
        return None
    if not functional.NATIVE:
        return _run_numpy(spec, params, grads, buffers, record, steps=steps,
                          grad_scale=grad_scale, max_grad_norm=max_grad_norm,
                          mu_products=mu_products, names=names)
    S = _native.MAX_STREAMS
    pad = [0] * (S - 2)
    rows: list = []         # per tensor: S addresses, then S dtype codes, then the count
    owners: list = []
    columns = [(k, buffers[k]) for k in sorted(buffers)]
    for i, (p, g) in enumerate(zip(params, grads)):
        code, per = _CODES[p.dtype]
        g = _grad_tensor(g, p)
        a_row = [p.data_ptr(), g.data_ptr()] + pad
        c_row = [code, code] + pad
        owners.append(p)
        owners.append(g)
        for k, col in columns:
            t = col[i]
            a_row[k] = t.data_ptr()
            c_row[k] = code
            owners.append(t)
        rows.append((a_row, c_row, p.numel() * per))
    addr = np.array([r[0] for r in rows], dtype=np.uint64).reshape(n, S)
    codes = np.array([r[1] for r in rows], dtype=np.uint8).reshape(n, S)
    counts = np.array([r[2] for r in rows], dtype=np.int64)
    frame = new_frame() if frame is None else frame
    frame.fill_raw(addr, codes, counts, owners)
    clip = max_grad_norm is not None
    norms = np.zeros(1) if clip else None
    aux = None
    if mu_products is not None:
        aux = np.array([float(m) for m in mu_products], dtype=np.float64)
    def call(nthreads):
        return functional.run_frame(
            frame, spec, group=np.zeros(n, np.int32),
            records=np.array([record], dtype=np.float64), gscale=np.array([grad_scale]),
            steps=np.array(steps, dtype=np.int64), increment=False, aux=aux,
            max_norms=np.array([float(max_grad_norm)]) if clip else None, norms=norms,
            memo=memo, nthreads=nthreads)

    try:
        _execute(n, num_threads(), call)
    except _native.ContractError as e:
        raise ValueError(_contract_message(e, names, spec)) from None
    if aux is not None:
        for m, v in zip(mu_products, aux.tolist()):
            m.fill_(v)
    return float(norms[0]) if clip else None


def _numpy_view(t: torch.Tensor) -> np.ndarray:
    """A zero-copy NumPy view of a dense tensor's elements (flat when it is not contiguous;
    complex tensors as their real view)."""
    t = t.detach()
    if t.is_complex():
        t = torch.view_as_real(t)
    if not t.is_contiguous():
        t = t.as_strided((t.numel(),), (1,))
    return t.numpy()


def _run_numpy(spec, params, grads, buffers, record, *, steps, grad_scale, max_grad_norm,
               mu_products, names) -> float | None:
    """The NumPy backend (FASTOPT_PUREPYTHON=1): the same step through functional.run_lists
    (fastopt.reference per tensor), on zero-copy views of the tensors."""
    S = _native.MAX_STREAMS
    ps = [_numpy_view(p) for p in params]
    gs = [_numpy_view(_grad_tensor(g, p)) for g, p in zip(grads, params)]
    streams: list = [ps, gs] + [None] * (S - 2)
    for k, col in buffers.items():
        streams[k] = [_numpy_view(t) for t in col]
    clip = max_grad_norm is not None
    norms = np.zeros(1) if clip else None
    aux = None
    if mu_products is not None:
        aux = np.array([float(m) for m in mu_products], dtype=np.float64)
    labels = ["param", "grad"] + [f"state {k}" for k in range(2, S)]

    def call(nthreads):     # the NumPy backend runs on the calling thread
        return functional.run_lists(
            spec, streams, labels, records=[record], gscale=[grad_scale],
            steps=np.array(steps, dtype=np.int64), aux=aux,
            max_norms=np.array([float(max_grad_norm)]) if clip else None, norms=norms)

    _execute(len(params), num_threads(), call)
    if aux is not None:
        for m, v in zip(mu_products, aux.tolist()):
            m.fill_(v)
    return float(norms[0]) if clip else None


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
