"""The one place where torch tensors become fastopt arrays and the native kernels are called.

Everything the torch frontend (``fastopt.torch``) does with memory goes through this module:
layout checks, the zero-copy NumPy views of params, gradients and state, the thread count, and
the single multi-tensor kernel call per param group. It uses only fastopt's public kernel API
(``fastopt.kernels.<rule>``), so that it can later be re-pointed to a descriptor-based native
API (data address, element count, dtype) without touching the optimizer classes.

Layout contract (checked by ``check_param`` / ``check_state`` before anything is modified):

- A param must be a strided CPU tensor whose elements cover one dense block of memory:
  contiguous, or dense in another order (a transposed or permuted tensor, channels-last). Such a
  tensor and its state (created with ``torch.preserve_format``, hence with the same strides) are
  passed to the kernel as flat 1-D views of that block: the update is element-wise, so the order
  of the elements does not matter and the update lands in the tensor itself.
- A param that does not cover a dense block (a slice with gaps, an expanded tensor) is refused
  with ValueError: it could only be stepped through a copy, whose update would be lost.
- A gradient whose strides differ from its param's (or that is itself not dense) is read through
  a temporary copy in the param's layout: the gradient is only read, so the result is correct,
  at the cost of one copy of that gradient per step.
- A state tensor must have its param's shape, dtype and strides (state replaced by the user
  with another layout is refused, as its update would otherwise be lost).
- Complex tensors are stepped as their real view (``torch.view_as_real``), as torch does.
"""
from __future__ import annotations

import numpy as np
import torch

from .. import _threading
from .. import kernels as _k
from ..clip import grad_norm as _grad_norm

NATIVE_DTYPES = (torch.float32, torch.float64, torch.complex64, torch.complex128)


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


def _array(t: torch.Tensor) -> np.ndarray:
    """A zero-copy NumPy view of a dense tensor's elements (1-D when not contiguous)."""
    if t.is_contiguous() and not t.is_complex():
        return t.detach().numpy() if t.requires_grad else t.numpy()
    if t.is_complex():
        t = torch.view_as_real(t)
    t = t.detach()
    if not t.is_contiguous():
        t = t.as_strided((t.numel(),), (1,))
    return t.numpy()


def _grad_array(g: torch.Tensor, p: torch.Tensor) -> np.ndarray:
    """The gradient as an array laid out as its param's (a temporary copy when it is not)."""
    if g.is_contiguous() and p.is_contiguous():
        return _array(g)
    if p.numel() > 1 and not (_same_layout(g, p) and _dense(g)):
        g = torch.empty_like(p).copy_(g)
    return _array(g)


_KERNELS = {
    "sgd": _k.sgd, "adam": _k.adam, "rmsprop": _k.rmsprop, "adagrad": _k.adagrad,
    "lion": _k.lion, "adamax": _k.adamax, "radam": _k.radam, "nadam": _k.nadam,
}
_WITH_STEPS = ("adam", "adagrad", "adamax", "radam", "nadam")


def run(rule: str, params: list, grads: list, buffers: list, hyper: dict, *,
        steps: list[int] | None = None, grad_scale: float = 1.0,
        max_grad_norm: float | None = None, mu_products: list | None = None,
        init_buffers: list[bool] | None = None) -> float | None:
    """One fused native step of ``rule`` over the tensors of one param group.

    ``params``/``grads``: tensors (checked with ``check_param``/``check_grad``); ``buffers``:
    one list of state tensors per state stream of the rule, in the kernel's order, or None;
    ``hyper``: the kernel's keyword hyperparameters (floats); ``steps``: this step's count per
    tensor (from 1); ``grad_scale``: the multiplier applied to every gradient as it is read
    (GradScaler's inverse scale); ``max_grad_norm``: clip the group's gradients by their
    global 2-norm (torch.nn.utils.clip_grad_norm_'s coefficient, folded into the scale);
    ``mu_products``: NAdam's 0-d running-product tensors, updated in place. Returns the group's
    gradient norm (of the unscaled gradients) when ``max_grad_norm`` is given.
    """
    if not params:
        return None
    ps = [_array(p) for p in params]
    gs = [_grad_array(g, p) for g, p in zip(grads, params)]
    bs = [None if b is None else [_array(t) for t in b] for b in buffers]
    norm = None
    if max_grad_norm is not None:
        norm = _grad_norm(gs) * abs(grad_scale)
        coef = max_grad_norm / (norm + 1e-6)
        grad_scale = grad_scale * (coef if not coef >= 1.0 else 1.0)   # NaN propagates
    kw = dict(hyper, grad_scale=grad_scale)
    fn = _KERNELS[rule]
    requested = _threading._requested
    if requested is None:   # fastopt.set_num_threads not called: follow torch's setting
        _threading._requested = max(1, torch.get_num_threads())
    try:
        if rule == "sgd":
            fn(ps, gs, bs[0], init_buffers=init_buffers, **kw)
        elif rule == "nadam":
            mus = np.array([float(m) for m in mu_products], dtype=np.float64)
            fn(ps, gs, *bs, mus, steps, **kw)
            for m, v in zip(mu_products, mus.tolist()):
                m.fill_(v)
        elif rule in _WITH_STEPS:
            fn(ps, gs, *bs, steps, **kw)
        else:
            fn(ps, gs, *bs, **kw)
    finally:
        _threading._requested = requested
    return norm


def validate(rule: str, hyper: dict, buffers: list) -> None:
    """Check a group's hyperparameters with the kernel's own checks (a call over no tensors):
    raises the kernel's ValueError/TypeError, modifies nothing."""
    kw = dict(hyper)
    empty = [None if b is None else [] for b in buffers]
    fn = _KERNELS[rule]
    if rule == "sgd":
        fn([], [], empty[0] if empty else None, **kw)
    elif rule == "nadam":
        fn([], [], *empty, np.zeros(0, np.float64), [], **kw)
    elif rule in _WITH_STEPS:
        fn([], [], *empty, [], **kw)
    else:
        fn([], [], *empty, **kw)
