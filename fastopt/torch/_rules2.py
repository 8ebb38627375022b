"""fastopt.torch.SparseAdam and fastopt.torch.Adafactor: drop-ins whose native step is an
entry of its own (csrc/rules2.c), not the element-wise driver the other classes share.

Each subclasses its torch.optim class: torch's ``__init__`` (signature, defaults, errors),
state (keys, types: SparseAdam's int ``step``, Adafactor's float32 0-d ``step`` tensor and its
``row_var``/``col_var``/``variance`` shapes), ``state_dict``/``load_state_dict`` and hooks are
torch's. ``step`` runs every param of every group in one native call per group, all groups
checked first, on the tensors' memory (zero copy). A group with a param that is not a
contiguous float32/float64 CPU tensor takes torch's own implementation (the whole step does).
"""
from __future__ import annotations

import numpy as np
import torch
from torch.optim.optimizer import _get_scalar_dtype

from .. import _spec, functional
from . import _adapter

_NATIVE_DTYPES = (torch.float32, torch.float64)


def _plain(value):
    if isinstance(value, torch.Tensor):
        return float(value.item())
    if isinstance(value, (tuple, list)):
        return tuple(_plain(x) for x in value)
    return value


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().numpy()


def _native_param(p: torch.Tensor) -> bool:
    return (p.device.type == "cpu" and p.dtype in _NATIVE_DTYPES and p.is_contiguous()
            and not p.is_sparse)


def _torch_impl(cls):
    base = next(c for c in cls.__mro__ if c.__module__.startswith("torch."))
    fn = base.__dict__["step"]
    while getattr(fn, "hooked", False) or hasattr(fn, "__wrapped__"):
        fn = fn.__wrapped__
    return fn


class _Own:
    _rule: _spec.OwnRule

    def step(self, closure=None):
        """One optimization step (torch's semantics; see the module docstring).

        Args:
            closure (Callable, optional): A closure that reevaluates the model and returns
                the loss; it runs with grad enabled and its loss is returned.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        with torch.no_grad():
            if not all(_native_param(p) for g in self.param_groups for p in g["params"]
                       if p.grad is not None):
                _torch_impl(type(self))(self)
                return loss
            self._fo_run()
        return loss

    def _fo_run(self) -> None:
        created, old_steps, prepared = [], [], []
        try:
            for group in self.param_groups:
                h = {k: _plain(v) for k, v in group.items() if k != "params"}
                ps = [p for p in group["params"] if p.grad is not None]
                if not ps:
                    continue
                for p in ps:
                    self._fo_check_grad(p)
                    if len(self.state[p]) == 0:
                        self._fo_init_state(p)
                        created.append(p)
                    old_steps.append((p, self._fo_count(p)))
                prepared.append(self._fo_prepare(h, ps))
        except BaseException:
            for p, step in old_steps:
                self._fo_set_count(p, step)
            for p in created:
                self.state.pop(p, None)
            raise
        nt = _adapter.num_threads()
        for args in prepared:
            functional.run_own(args, nt)


class SparseAdam(_Own, torch.optim.SparseAdam):
    """torch.optim.SparseAdam with fastopt's native step (see ``fastopt.SparseAdam`` for the
    formula): sparse COO gradients (``nn.Embedding(sparse=True)``), coalesced by torch, only
    the touched rows of params and moments updated. Dense gradients are refused with torch's
    RuntimeError. Gradients with more than one sparse dimension take torch's implementation."""

    _rule = _spec.SPARSE_ADAM

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, maximize=False):
        super().__init__(params, lr=lr, betas=betas, eps=eps, maximize=maximize)

    def step(self, closure=None):
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is not None and p.grad.is_sparse and p.grad.sparse_dim() != 1:
                    loss = None
                    if closure is not None:
                        with torch.enable_grad():
                            loss = closure()
                    with torch.no_grad():
                        _torch_impl(type(self))(self)
                    return loss
        return super().step(closure)

    def _fo_check_grad(self, p):
        if not p.grad.is_sparse:
            raise RuntimeError("SparseAdam does not support dense gradients, please consider "
                               "Adam instead")

    def _fo_init_state(self, p):
        st = self.state[p]
        st["step"] = 0
        st["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)

    def _fo_count(self, p):
        return self.state[p]["step"]

    def _fo_set_count(self, p, step):
        self.state[p]["step"] = step

    def _fo_prepare(self, h, ps):
        idx, vals, steps = [], [], []
        for p in ps:
            g = p.grad.coalesce()       # maximize: negated in the kernel (exactly -sum)
            idx.append(_np(g._indices()[0].contiguous()))
            vals.append(_np(g._values().to(p.dtype).contiguous()))
            st = self.state[p]
            st["step"] += 1
            steps.append(st["step"])
        beta1, beta2 = h["betas"]
        return functional.prepare_sparse_adam(
            [_np(p) for p in ps], idx, vals, [_np(self.state[p]["exp_avg"]) for p in ps],
            [_np(self.state[p]["exp_avg_sq"]) for p in ps], steps, lr=h["lr"], beta1=beta1,
            beta2=beta2, eps=h["eps"], maximize=bool(h["maximize"]))


class Adafactor(_Own, torch.optim.Adafactor):
    """torch.optim.Adafactor with fastopt's native step (see ``fastopt.Adafactor`` for the
    formula and the fixed-order float64 reductions; results agree with torch's to the
    dtype's rounding). ``foreach`` is accepted and stored (torch's implementations run only
    for params the native step does not take)."""

    _rule = _spec.ADAFACTOR

    def __init__(self, params, lr=1e-2, beta2_decay=-0.8, eps=(None, 1e-3), d=1.0,
                 weight_decay=0.0, *, foreach=None, maximize=False):
        super().__init__(params, lr=lr, beta2_decay=beta2_decay, eps=eps, d=d,
                         weight_decay=weight_decay, foreach=foreach, maximize=maximize)

    def _fo_check_grad(self, p):
        if torch.is_complex(p):
            raise RuntimeError("Adafactor does not support complex parameters")
        if p.grad.is_sparse:
            raise RuntimeError("Adafactor does not support sparse gradients")

    def _fo_init_state(self, p):
        st = self.state[p]
        st["step"] = torch.tensor(0.0, dtype=_get_scalar_dtype())
        if p.grad.dim() > 1:
            row_shape = list(p.grad.shape)
            row_shape[-1] = 1
            st["row_var"] = p.grad.new_zeros(row_shape)
            col_shape = list(p.grad.shape)
            col_shape[-2] = 1
            st["col_var"] = p.grad.new_zeros(col_shape)
        else:
            st["variance"] = torch.zeros_like(p.grad, memory_format=torch.preserve_format)

    def _fo_count(self, p):
        return float(self.state[p]["step"].item())

    def _fo_set_count(self, p, step):
        self.state[p]["step"].fill_(step)

    def _fo_prepare(self, h, ps):
        steps = []
        for p in ps:
            st = self.state[p]
            st["step"] += 1
            steps.append(int(st["step"].item()))
        eps1, eps2 = h["eps"]
        sts = [self.state[p] for p in ps]

        def arr(st, key):
            return _np(st[key]) if key in st else None

        return functional.prepare_adafactor(
            [_np(p) for p in ps], [_np(p.grad.contiguous()) for p in ps],
            [arr(st, "row_var") for st in sts], [arr(st, "col_var") for st in sts],
            [arr(st, "variance") for st in sts], steps, lr=h["lr"],
            beta2_decay=h["beta2_decay"], eps1=eps1, eps2=eps2, d=h["d"],
            weight_decay=h["weight_decay"], maximize=bool(h["maximize"]))
