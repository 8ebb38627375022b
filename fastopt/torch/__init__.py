"""fastopt for PyTorch: drop-in replacements of torch.optim's CPU optimizers.

``from fastopt.torch import AdamW`` instead of ``from torch.optim import AdamW``: each class is
a subclass of the torch.optim class of the same name (``Lion``, which torch lacks, of
``torch.optim.Optimizer``), so torch's own ``__init__`` gives torch's signature, defaults,
validation and error messages, and everything else is torch's: param groups,
``add_param_group``, ``zero_grad``, ``state`` (keyed by tensor, with torch's keys, dtypes and
shapes), ``state_dict``/``load_state_dict`` and their hooks, step hooks, schedulers, pickling.
Only ``step`` differs: it updates all the params of all groups that have a gradient in ONE
fused native call of fastopt's kernels, reading and writing the tensors in place (zero copy).

SparseAdam and Adafactor (``fastopt/torch/_rules2.py``) step through native entries of their
own (see there); the flags and extras below are the element-wise rules'.

Flags and extras (keyword-only):

- ``fused=None`` (default) or ``True``: fastopt's native step. ``fused=False``: torch's own
  implementation (for-loop, or foreach with ``foreach=True``), as torch.optim would run it.
  ``RMSprop``, ``Adamax``, ``NAdam``, ``RAdam`` (torch has no fused version) and ``Lion``
  gain a ``fused`` argument for this choice.
- ``differentiable=True`` or ``capturable=True``: routed to torch's implementation (whose
  behaviour, including its errors for capturable CPU tensors, is torch's).
- ``l1=0``, ``max_grad_norm=None``, ``clip_value=None``: fastopt's L1 regularisation and gradient
  clipping inside the fused step (per group; see ``fastopt.Optimizer``). ``max_grad_norm`` clips
  each group's gradients by their global 2-norm (not the whole model's); the norm of the last
  step is in ``opt.last_grad_norms``. They are stored in the groups and in ``defaults``; a state
  dict from torch.optim, which lacks them, loads with the optimizer's defaults. torch's own
  implementations know nothing of them: they are refused with ``fused=False``.
- Storage (16-bit params; per group, as ``fastopt.Optimizer``'s): ``master_weights=False``,
  ``rounding="nearest"``, ``state_dtype=None`` and, in the constructor only, ``seed=0``.
  float16 and bfloat16 params step natively in the same single call: each value is widened
  to float32 as it is read, the rule runs in float32, and each stored value is rounded once.
  ``master_weights=True``: a float32 copy in ``state[p]["master_param"]`` and float32 states;
  the param is written from the master, rounded to nearest even. ``rounding``: how 16-bit
  values are written without a master copy: ``"nearest"``, ``"stochastic"`` (keyed by
  ``seed``, the param's index over all groups, its step count and the element: the same bits
  for any thread count, and after a state-dict resume; SGD then keeps a ``step`` count in its
  state) or ``"kahan"`` (params: a 16-bit compensation in ``state[p]["kahan_comp"]``).
  ``state_dtype``: None (the param's dtype, as torch; float32 with master weights),
  ``torch.float32`` or ``torch.bfloat16``. ``load_state_dict`` keeps each state tensor in the
  dtype these options give it (torch's would round a float32 master copy to the param's
  dtype). LAMB has no native 16-bit storage: its 16-bit params take its plain torch
  implementation.

Where fastopt differs from torch:

- Numerics: Adam-family steps multiply by ``1/sqrt(1-beta2^t)`` where torch divides (about an
  ulp per step; see ``fastopt.Adam``), and fastopt never contracts ``a*b+c`` into an FMA. float64
  trajectories agree with torch to ~1e-12 relative, float32 to float32 rounding (the tests
  derive the bound). RMSprop centered clamps ``v - mean^2`` at 0 where torch returns NaN.
- float16/bfloat16 params with torch's default storage (states in the param's dtype):
  torch rounds to 16 bits after every operation of the rule, fastopt once per stored value,
  from float32; the results differ by those roundings (fastopt's are the closer to the rule
  computed exactly; the tests bound both against float64). SGD/Adagrad's sparse gradients
  are stepped by torch's implementation; with fastopt's extras set on their group they are
  refused.
- Layout: a param must cover one dense block of memory (contiguous, or permuted such as
  channels-last); a param with gaps (a strided slice) is refused with ValueError rather than
  updated through a copy. A gradient whose strides differ from its param's is read through a
  temporary copy (correct, one copy per step). Sparse gradients (Adam etc.), and tensors that
  are not on the CPU (CUDA, meta) raise RuntimeError at step time.
- GradScaler: ``_step_supports_amp_scaling`` is True on the native path, so
  ``torch.amp.GradScaler`` hands ``grad_scale``/``found_inf`` to the step: the gradients are
  multiplied by GradScaler's own float32-rounded inverse scale (``scale.double().reciprocal()
  .float()``, as its ``unscale_`` does; torch's fused kernels divide by the scale, which
  differs by an ulp unless the scale is a power of two), and when ``found_inf`` is non-zero
  NOTHING is touched: no param, no state, no step count, and no state is created on a first
  step (torch's fused SGD leaves an uninitialised momentum buffer there).
- Threads: by default the native step uses ``torch.get_num_threads()`` threads (so torchrun's
  ``OMP_NUM_THREADS=1`` is respected); ``fastopt.set_num_threads(n)`` overrides it.
- Each param group is checked whole before any group is updated (layouts, dtypes,
  hyperparameters): a refused step raises and modifies nothing.
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.optim.optimizer import _get_scalar_dtype

from .. import _spec
from . import _adapter

__all__ = ["SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "Adamax", "NAdam", "RAdam", "Lion",
           "Adadelta", "Rprop", "ASGD", "LAMB", "SparseAdam", "Adafactor"]

# fastopt's keyword-only extras, also per group: regularisation and clipping, then storage
_STORAGE = {"master_weights": False, "rounding": "nearest", "state_dtype": None}
_EXTRAS = {"l1": 0.0, "max_grad_norm": None, "clip_value": None, **_STORAGE}
_STATE_DTYPES = (torch.float32, torch.bfloat16)
_EXACT = (torch.float64, torch.complex64, torch.complex128)     # states keep the param's dtype
# group values that cannot change in place (a group of only these may have its settings
# memoised, see Optimizer._fo_settings): fastopt's, and torch's dtypes (state_dtype)
_IMMUTABLE = _spec.IMMUTABLE | {torch.dtype}
_IMMUTABLE_OR_TUPLE = _IMMUTABLE | {tuple}
_NO_PARAMS = ("params",)
# torch.compile's frame callback (None in plain eager code); where torch lacks it, every step
# takes the dynamo-disabled call
_EVAL_FRAME_CALLBACK = getattr(getattr(getattr(torch._C, "_dynamo", None), "eval_frame", None),
                               "get_eval_frame_callback", None)
_NO_PARAMS_LR = ("params", "lr")


def _f(x) -> float:
    return float(x.item()) if isinstance(x, torch.Tensor) else float(x)


def _plain(value):
    """A group value as fastopt's spec reads it: tensors (a tensor lr, betas) as floats."""
    if isinstance(value, torch.Tensor):
        return _f(value)
    if isinstance(value, tuple):
        return tuple(map(_plain, value))
    return value


def _torch_step(cls):
    """The torch.optim step this class overrides, without torch's hook wrapper (so that hooks
    fire once, from our own wrapped step)."""
    for base in cls.__mro__:
        if base.__module__.startswith("torch.") and "step" in base.__dict__:
            fn = base.__dict__["step"]
            while getattr(fn, "hooked", False):
                fn = fn.__wrapped__
            return fn
    raise AssertionError("no torch step")   # pragma: no cover


def _check_extras(group: dict) -> None:
    l1 = group.get("l1", 0.0)
    if isinstance(l1, bool) or not isinstance(l1, (int, float)) or not l1 >= 0:
        raise ValueError(f"Invalid l1 value: {l1}")
    mgn = group.get("max_grad_norm")
    if mgn is not None and (isinstance(mgn, bool) or not isinstance(mgn, (int, float))
                            or not mgn > 0 or math.isinf(mgn)):
        raise ValueError(f"Invalid max_grad_norm value: {mgn} (a positive number, or None)")
    cv = group.get("clip_value")
    if cv is not None and (isinstance(cv, bool) or not isinstance(cv, (int, float))
                           or not cv > 0):
        raise ValueError(f"Invalid clip_value value: {cv} (a positive number, or None)")
    storage(group)


def storage(group: dict) -> _spec.Storage:
    """A group's storage options, checked (fastopt._spec.check_storage's rules, with torch's
    dtypes for ``state_dtype``)."""
    sd = group.get("state_dtype")
    if isinstance(sd, str) and sd == _spec.Q8:
        pass
    elif sd is not None and not isinstance(sd, torch.dtype):
        raise TypeError(f"Invalid state_dtype: {sd!r} (expected None, torch.float32, "
                        "torch.bfloat16 or '8bit')")
    elif sd is not None and sd not in _STATE_DTYPES:
        raise ValueError(f"Invalid state_dtype: {sd} (expected None, torch.float32, "
                         "torch.bfloat16 or '8bit')")
    s = _spec.check_storage({k: group[k] for k in ("master_weights", "rounding")
                             if k in group})
    return _spec.Storage(s.master, s.rounding, sd)


def state_dtype(st: _spec.Storage, dtype: torch.dtype) -> torch.dtype:
    """The dtype of the state buffers of a param of ``dtype`` under storage ``st``: float64
    and complex params keep theirs; else ``state_dtype`` if set, float32 for 16-bit params
    with master weights, the param's dtype otherwise (torch's)."""
    if dtype in _EXACT:
        return dtype
    if st.q8:       # the float32 states of tensors too small to quantize
        return torch.float32
    if st.state_dtype is not None:
        return st.state_dtype
    if st.master and dtype in _adapter.HALF:
        return torch.float32
    return dtype


def _quantize(t: torch.Tensor, signed: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """A dense float32 state tensor as 8-bit codes (the param's layout) and block scales
    (fastopt.reference.q8_quantize: blocks of 256 in memory order, as the kernel reads)."""
    from .. import reference
    t = t.detach()
    flat = t.reshape(-1) if t.is_contiguous() else t.as_strided((t.numel(),), (1,))
    codes, scales = reference.q8_quantize(flat.float().numpy(), signed)
    out = torch.empty_like(t, dtype=torch.int8 if signed else torch.uint8,
                           memory_format=torch.preserve_format)
    (out.view(-1) if out.is_contiguous() else out.as_strided((out.numel(),), (1,))).copy_(
        torch.from_numpy(codes))
    return out, torch.from_numpy(scales)


def _extras_set(group: dict) -> bool:
    return (group.get("l1", 0.0) != 0 or group.get("max_grad_norm") is not None
            or group.get("clip_value") is not None
            or any(group.get(k, v) != v for k, v in _STORAGE.items()))


def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2 ** 64:
        raise ValueError(f"Invalid seed: {seed!r} (expected an integer in [0, 2**64))")
    return seed


class _Group(NamedTuple):
    """A native param group's settings for one step, checked."""
    index: int          # in param_groups
    group: dict
    slots: tuple        # (stream, state key, storage code by the param's code)
    record: list        # the rule's argument record
    step_key: str | None
    rounding: int       # the driver's rounding code
    q8: bool            # 8-bit states


class _Native:
    """The mixin holding fastopt's step; subclasses name their rule's spec (fastopt._spec),
    from which its hyperparameter record and state streams follow."""

    _fo_spec: _spec.Rule
    _fo_own_fused = False       # torch's class has no `fused` argument: we add it
    _fo_fused_checks_differentiable = False     # fused=True with differentiable=True refused
    _fo_sparse_to_torch = False  # torch's rule supports sparse gradients
    _fo_seed = 0

    # ---- construction ------------------------------------------------------------------

    def _fo_begin(self, args: dict) -> None:
        """Check and keep fastopt's extras from the constructor's arguments (its locals())."""
        extras = {k: args[k] for k in _EXTRAS}
        _check_extras(extras)
        if self._fo_own_fused:
            if self._fo_fused_checks_differentiable and args["fused"] is True \
                    and args["differentiable"]:
                raise RuntimeError("`fused` does not support `differentiable`")
            extras["fused"] = args["fused"]
        self._fo_seed = _check_seed(args["seed"])
        self._fo_init_extras = extras
        self.last_grad_norms: list = []

    def _fo_end(self) -> None:
        del self._fo_init_extras
        for group in self.param_groups:
            self._fo_validate_group(group)

    def add_param_group(self, param_group: dict) -> None:
        for k, v in self.__dict__.get("_fo_init_extras", {}).items():
            self.defaults.setdefault(k, v)
        _check_extras({k: param_group.get(k, self.defaults.get(k)) for k in _EXTRAS})
        super().add_param_group(param_group)
        if "_fo_init_extras" not in self.__dict__:
            try:
                self._fo_validate_group(self.param_groups[-1])
            except (TypeError, ValueError):
                self.param_groups.pop()
                raise

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        extras = dict(_EXTRAS, fused=None) if self._fo_own_fused else dict(_EXTRAS)
        for k, v in extras.items():
            self.defaults.setdefault(k, v)
        for group in self.param_groups:
            for k in extras:
                group.setdefault(k, self.defaults[k])
        if "last_grad_norms" not in self.__dict__:
            self.last_grad_norms = []

    def _fo_validate_group(self, group: dict) -> None:
        _check_extras(group)
        if self._fo_native_group(group):
            self._fo_hyper(group)
            self._fo_slots(group, self._fo_group(group))
        elif _extras_set(group):
            raise ValueError("l1, max_grad_norm and clip_value are fastopt's: they need the "
                             "native step (fused=None or True, capturable=False, "
                             "differentiable=False)")

    def state_bytes(self, per_element: bool = False) -> float:
        """The bytes of the state tensors (buffers, master copies, 8-bit codes and their
        scales; not the 0-d step counts and scalars): in total, or with ``per_element`` per
        element of the params that have state (as ``fastopt.Optimizer.state_bytes``)."""
        total = elems = 0
        for p, st in self.state.items():
            held = [t for t in st.values() if isinstance(t, torch.Tensor) and t.dim() > 0]
            if held:
                total += sum(t.numel() * t.element_size() for t in held)
                elems += p.numel()
        if per_element:
            return total / elems if elems else 0.0
        return total

    def load_state_dict(self, state_dict: dict) -> None:
        """torch's, keeping each state tensor in its storage dtype: torch casts every floating
        state tensor to its param's dtype, which would round the float32 master copy (or
        float32 states) of a 16-bit param to 16 bits; those are taken from ``state_dict``
        again, in the dtype the group's storage options give them."""
        super().load_state_dict(state_dict)
        saved = state_dict["state"]
        ids = [pid for g in state_dict["param_groups"] for pid in g["params"]]
        at = 0
        for group in self.param_groups:
            slots = None
            for p in group["params"]:
                pid, at = ids[at], at + 1
                if pid not in saved or p not in self.state or p.is_complex() \
                        or p.dtype not in _adapter.NATIVE_DTYPES:
                    continue
                if slots is None:
                    slots = self._fo_slots(group, self._fo_group(group))
                st, c = self.state[p], _adapter.code(p.dtype)
                for slot in slots:
                    key = slot[1]
                    value = saved[pid].get(key)
                    want = _adapter.BY_CODE[_adapter.slot_code(slot, c, p.numel())]
                    if isinstance(value, torch.Tensor) and want is not None \
                            and st.get(key, value).dtype != want:
                        st[key] = value.to(device=p.device, dtype=want)

    # ---- which implementation ----------------------------------------------------------

    @staticmethod
    def _fo_native_group(group: dict) -> bool:
        return (group.get("fused") is not False and not group.get("differentiable", False)
                and not group.get("capturable", False))

    @property
    def _step_supports_amp_scaling(self) -> bool:   # read by torch.amp.GradScaler
        return bool(self.param_groups) and all(map(self._fo_native_group, self.param_groups))

    @_step_supports_amp_scaling.setter
    def _step_supports_amp_scaling(self, value) -> None:
        pass    # torch's __init__ sets it for fused=True; ours is derived from the groups

    # ---- the rule (subclasses) ---------------------------------------------------------

    def _fo_group(self, group: dict) -> dict:
        """The group as the spec reads it (fastopt's extras defaulted)."""
        plain = {k: _plain(v) for k, v in group.items() if k != "params"}
        for k, v in _EXTRAS.items():
            plain.setdefault(k, self.defaults.get(k, v))
        return plain

    def _fo_slots(self, group: dict, plain: dict, st: _spec.Storage | None = None) -> tuple:
        """(stream, state key, storage code by the param's code) of each state tensor the
        group's settings need: its rule's buffers, then the master copy or compensation of
        16-bit params (code 0: a param of that dtype has no such tensor). ``st``: the group's
        storage options if already checked."""
        st = storage(plain) if st is None else st
        if st.q8 and not self._fo_spec.storage8:
            raise ValueError(f"{type(self).__name__} does not keep 8-bit states "
                             "(state_dtype='8bit'); use float32 or bfloat16 states")
        codes = (0,) + tuple(_adapter.code(state_dtype(st, dt)) for dt in _adapter.BY_CODE[1:5])
        needed = self._fo_spec.needed(plain)
        if st.q8:
            # 8-bit codes (int8: the signed map, uint8: the unsigned) and their block scales
            # for float32/16-bit params of Q8_MIN elements and more; float32 states below
            slots: tuple = ()
            for stream, key in needed:
                q = _spec.DT_Q8S if self._fo_spec.signed(key) else _spec.DT_Q8U
                slots += ((stream, key, (0, q, _spec.DT_F64, q, q), _spec.Q8_MIN, codes),)
            a = _spec.DT_ABSMAX
            for stream, key, _ in self._fo_spec.scale_slots(plain):
                slots += ((stream, key, (0, a, 0, a, a), _spec.Q8_MIN, (0, 0, 0, 0, 0)),)
        else:
            slots = tuple((stream, key, codes) for stream, key in needed)
        for stream, key in st.extra_slot():     # 16-bit params only
            if key == _spec.MASTER_KEY:
                slots += ((stream, key, (0, 0, 0, _spec.DT_F32, _spec.DT_F32)),)
            else:                               # the compensation: the param's dtype
                slots += ((stream, key, (0, 0, 0, _spec.DT_F16, _spec.DT_BF16)),)
        return slots

    def _fo_step_key(self, plain: dict):
        """The state key of the step count: the rule's; for SGD (which has none) 'step' when
        stochastic rounding needs one for its key."""
        if self._fo_spec.step_state or plain.get("rounding") == "stochastic":
            return "step"
        return None

    def _fo_buffer_keys(self, group: dict) -> tuple:
        """(stream, state key) of each state buffer the group's settings need."""
        return self._fo_spec.needed(self._fo_group(group))

    def _fo_hyper(self, group: dict) -> list:
        """The group's validated argument record (raises fastopt's ValueError/TypeError)."""
        return self._fo_spec.record(self._fo_group(group))

    def _fo_new_state(self, p: torch.Tensor, group: dict, state: dict) -> None:
        """Create the missing state of ``p`` as torch does (keys, shapes; dtypes by the group's
        storage options: torch's by default), then a 16-bit param's master copy (float32) or
        compensation (zeros), and SGD's step count where stochastic rounding keys by it."""
        plain = self._fo_group(group)
        st = storage(plain)
        q8 = st.q8 and p.dtype not in _EXACT and p.numel() >= _spec.Q8_MIN
        before = set(state)
        self._fo_new_buffers(p, group, state, state_dtype(st, p.dtype))
        if q8:
            # the new buffers' initial values (zeros, or a fill value) quantized
            for _, key in self._fo_spec.needed(plain):
                if key not in before:
                    codes, scales = _quantize(state[key],
                                              self._fo_spec.signed(key))
                    state[key], state[key + _spec.SCALE_SUFFIX] = codes, scales
        if p.dtype in _adapter.HALF:
            for _, key in st.extra_slot():
                if key not in state:
                    state[key] = (p.detach().to(torch.float32, memory_format=torch.preserve_format)
                                  if key == _spec.MASTER_KEY else
                                  torch.zeros_like(p, memory_format=torch.preserve_format))
        if "step" not in state and self._fo_step_key(plain):
            state["step"] = torch.tensor(0.0, dtype=_get_scalar_dtype(is_fused=group.get(
                "fused")))

    def _fo_new_buffers(self, p: torch.Tensor, group: dict, state: dict,
                        dtype: torch.dtype) -> None:
        """The rule's state of ``p`` (its buffers in ``dtype``), created where missing."""
        if not state and self._fo_spec.step_state:
            state["step"] = torch.tensor(0.0, dtype=_get_scalar_dtype(is_fused=group.get(
                "fused")))
        for _, key in self._fo_buffer_keys(group):
            if key not in state:
                state[key] = torch.zeros_like(p, dtype=dtype,
                                              memory_format=torch.preserve_format)

    def _fo_torch_fallback(self, groups: list) -> None:
        """Step ``groups`` (dicts like param groups) with torch's implementation."""
        saved = self.param_groups
        self.param_groups = groups
        try:
            self._fo_torch_step()
        finally:
            self.param_groups = saved

    def _fo_torch_step(self, closure=None):
        """torch's own step (without its hook wrapper: hooks fire once, around ``step``)."""
        return _torch_step(type(self))(self, closure)

    def _fo_driver_state(self) -> _adapter.Plan:
        """The native frame, memo and fast-fill arrays this optimizer reuses across steps (made
        on first use: they are not part of the pickled or deep-copied state)."""
        held = self.__dict__.get("_fo_driver")
        if held is None:
            held = self.__dict__["_fo_driver"] = _adapter.Plan()
        return held

    # ---- step --------------------------------------------------------------------------

    def step(self, closure=None):
        """Perform a single optimization step (torch's semantics; see the module docstring).

        Args:
            closure (Callable, optional): A closure that reevaluates the model and returns
                the loss; it runs with grad enabled and its loss is returned.
        """
        if not any(map(self._fo_native_group, self.param_groups)):
            return self._fo_torch_step(closure)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if torch.compiler.is_compiling() or _EVAL_FRAME_CALLBACK is None \
                or _EVAL_FRAME_CALLBACK() is not None:
            self._fo_step()         # dynamo must not trace the step: it graph-breaks here
        else:
            self._fo_step_impl()    # plain eager (no frame of torch.compile's around it)
        return loss

    @torch._disable_dynamo
    def _fo_step(self) -> None:
        self._fo_step_impl()

    def _fo_step_impl(self) -> None:
        """The step; the fast path only reads tensors and writes them natively (no autograd
        op), the others run under no_grad."""
        grad_scale = getattr(self, "grad_scale", None)
        found_inf = getattr(self, "found_inf", None)
        if found_inf is not None and _f(found_inf) != 0.0:
            return      # GradScaler found inf/NaN: skip the step whole, touch nothing
        inv = 1.0
        if grad_scale is not None:
            inv = float(np.float32(1.0 / _f(grad_scale)))
        # the groups' settings, checked before anything is modified
        plan = self._fo_driver_state()
        native, torch_groups = [], []
        for gi, group in enumerate(self.param_groups):
            if not self._fo_native_group(group):
                torch_groups.append(group)
                continue
            native.append(self._fo_settings(gi, group, plan))
        if len(self.last_grad_norms) != len(self.param_groups):
            self.last_grad_norms = [None] * len(self.param_groups)
        if native and _adapter.FAST:
            # the steady state: one C pass reads every tensor, one native call steps them
            params = [n.group["params"] if type(n.group["params"]) is list
                      else list(n.group["params"]) for n in native]
            keys = [n.step_key for n in native]
            norms = _adapter.fast_step(
                self._fo_spec, plan, params, [n.slots for n in native],
                [n.record for n in native], [n.group.get("max_grad_norm") for n in native],
                self.state, inv, [n.index for n in native],
                step_key=keys if len(set(keys)) > 1 else keys[0],
                rounding=[n.rounding for n in native], seed=self._fo_seed,
                ids=(lambda: self._fo_ids(native)) if any(n.rounding for n in native)
                else (lambda: None))
            if norms is not None:
                for n, nrm in zip(native, norms):
                    if nrm is not _adapter.UNSET:
                        self.last_grad_norms[n.index] = nrm
                if torch_groups:    # a mixed optimizer: GradScaler unscaled these itself
                    with torch.no_grad():
                        self._fo_torch_fallback(torch_groups)
                return
        with torch.no_grad():
            self._fo_step_checked(native, torch_groups, inv, plan)

    def _fo_settings(self, gi: int, group: dict, plan: _adapter.Plan) -> _Group:
        """Param group ``gi``'s settings for this step, checked (raises before anything is
        modified). Memoised in the plan by the exact values and types of the group's keys
        (params and, where the rule's record takes it plainly, lr excepted: a schedule changes
        lr every step, and it is checked and placed into the record on each step), when they
        are all immutable values and the group has every extra key (else each step checks
        everything afresh, as it did before)."""
        spec = self._fo_spec
        key = None
        if _EXTRAS.keys() <= group.keys() and (spec.lr_index is None or "lr" in group):
            key = _spec.settings_key(group, _NO_PARAMS if spec.lr_index is None
                                     else _NO_PARAMS_LR, _IMMUTABLE, _IMMUTABLE_OR_TUPLE)
        hit = None if key is None else plan.settings.get(key)
        if hit is None:
            _check_extras(group)
            plain = self._fo_group(group)
            st = storage(plain)
            record = spec.record(plain)
            hit = (self._fo_slots(group, plain, st), tuple(record), self._fo_step_key(plain),
                   st.code, st.q8)
            if key is not None:
                if len(plan.settings) >= 64:    # (a schedule of betas or momentum)
                    plan.settings.clear()
                plan.settings[key] = hit
            return _Group(gi, group, hit[0], record, *hit[2:])
        return _Group(gi, group, hit[0], spec.place_lr(hit[1], _plain(group["lr"])) if
                      spec.lr_index is not None else list(hit[1]), *hit[2:])

    def _fo_ids(self, native: list) -> np.ndarray:
        """Each native param's id in stochastic rounding's key: its index in the params of
        all groups in order (a state dict's index), so that a resumed run draws the same."""
        start = np.cumsum([0] + [len(g["params"]) for g in self.param_groups])
        return np.concatenate([np.arange(start[n.index], start[n.index + 1], dtype=np.int64)
                               for n in native])

    def _fo_step_checked(self, native_groups: list, torch_groups: list, inv: float,
                         plan: _adapter.Plan) -> None:
        """The step through Python: every tensor checked (raising the clear error), missing
        state created, odd layouts handled, params torch must step routed to it; then the
        native groups in one call. The first step, and any step the fast fill refuses."""
        spec = self._fo_spec
        starts = np.cumsum([0] + [len(g["params"]) for g in self.param_groups]).tolist()
        # 1. check every group before anything is modified
        native, slow = [], []
        for n in native_groups:
            gi, group = n.index, n.group
            ps, gs, others, names, ids = [], [], [], [], []
            for pi, p in enumerate(group["params"]):
                g = p.grad
                if g is None:
                    continue
                name = f"param_groups[{gi}]['params'][{pi}]"
                if p.dtype not in _adapter.NATIVE_DTYPES or (
                        g.is_sparse and self._fo_sparse_to_torch) or (
                        p.dtype in _adapter.HALF and not spec.storage16):
                    if p.device.type not in ("cpu",):
                        _adapter.check_param(name, p)
                    others.append(p)
                    continue
                if _adapter.is_sharded(p) and group.get("max_grad_norm") is not None:
                    raise ValueError(
                        f"fastopt.torch: {name} is a DTensor (sharded): max_grad_norm would "
                        "clip by the local shard's norm; clip with torch.nn.utils."
                        "clip_grad_norm_ (which reduces across ranks) instead")
                lp = _adapter.local(p)
                _adapter.check_param(name, lp)
                _adapter.check_grad(name, _adapter.local(g), lp)
                st = self.state.get(p)
                if st:
                    pcode = _adapter.code(lp.dtype)
                    for slot in n.slots:
                        key, c = slot[1], _adapter.slot_code(slot, pcode, lp.numel())
                        if key not in st or not c:
                            continue
                        if c == _adapter.DT_ABSMAX:
                            _adapter.check_scales(name, key, _adapter.local(st[key]), lp)
                            if key[:-len(_spec.SCALE_SUFFIX)] not in st:
                                raise ValueError(f"fastopt.torch: state[{name}] has {key!r} "
                                                 "but not the 8-bit codes it scales")
                        else:
                            _adapter.check_state(name, key, _adapter.local(st[key]), lp,
                                                 _adapter.BY_CODE[c]
                                                 if not lp.is_complex() else None)
                            if c in (_spec.DT_Q8S, _spec.DT_Q8U) \
                                    and key + _spec.SCALE_SUFFIX not in st:
                                raise ValueError(f"fastopt.torch: state[{name}] has the 8-bit "
                                                 f"codes {key!r} but not their scales "
                                                 f"{key + _spec.SCALE_SUFFIX!r}")
                    if n.q8 and _adapter.is_sharded(p):
                        raise ValueError(f"fastopt.torch: {name} is a DTensor (sharded): "
                                         "8-bit states are not supported on sharded params")
                ps.append(p)
                gs.append(g)
                names.append(name)
                ids.append(starts[gi] + pi)
            if others:
                if _extras_set(group):
                    raise ValueError(
                        f"fastopt.torch: param_groups[{gi}] has {others[0].dtype} params (or "
                        "sparse gradients), stepped by torch's implementation, which knows "
                        "nothing of l1, max_grad_norm, clip_value and the storage options; "
                        "remove them or use float32/float64 params")
                slow.append(dict(group, params=others))
            native.append((n, ps, gs, names, ids))
        # 2. state, then one native call for all groups
        batches, stepped, step_tensors = [], [], []
        for n, ps, gs, names, ids in native:
            if not ps:
                continue
            group = n.group
            codes = [_adapter.code(_adapter.local(p).dtype) for p in ps]
            sizes = [p.numel() for p in ps]
            fresh = []
            if n.step_key or n.slots:
                state = self.state
                states = [state[p] for p in ps]
                for p, c, m, st in zip(ps, codes, sizes, states):
                    new = any(s[1] not in st for s in n.slots if _adapter.slot_code(s, c, m))
                    fresh.append(new)
                    if new or (n.step_key and n.step_key not in st):
                        self._fo_new_state(p, group, st)
            else:   # plain SGD keeps no state, as torch's
                fresh, states = [False] * len(ps), []
            buffers: dict = {}
            for slot in n.slots:
                buffers[slot[0]] = [_adapter.local(st[slot[1]])
                                    if _adapter.slot_code(slot, c, m) else None
                                    for c, m, st in zip(codes, sizes, states)]
            if n.step_key:
                mine = [st[n.step_key] for st in states]
                steps = [int(s) + 1 for s in torch.stack(mine).tolist()]
                step_tensors.extend(mine)
                if not spec.step_state:     # SGD counting for stochastic rounding's key
                    steps = [1 if f else max(2, s) for f, s in zip(fresh, steps)]
            else:       # SGD: the kernel starts a buffer as the gradient on its first step
                steps = [1 if f else 2 for f in fresh]
            # the per-tensor scalar states (NAdam's mu_product; ASGD's eta, mu), flat
            mus = [st[k] for st in states for k in spec.aux] if spec.aux else None
            batches.append(_adapter.Batch(list(map(_adapter.local, ps)),
                                          list(map(_adapter.local, gs)), buffers, n.record,
                                          steps=steps,
                                          max_grad_norm=group.get("max_grad_norm"),
                                          mu_products=mus, names=names, rounding=n.rounding,
                                          ids=ids))
            stepped.append(n.index)
        norms = _adapter.run(spec, batches, grad_scale=inv, frame=plan.frame, memo=plan.memo,
                             seed=self._fo_seed)
        for gi, nrm in zip(stepped, norms):
            self.last_grad_norms[gi] = nrm
        if step_tensors:
            torch._foreach_add_(step_tensors, 1.0)
        # 3. what torch steps: sparse gradients, LAMB's 16-bit params, groups routed to torch
        if slow:
            if inv != 1.0:
                torch._foreach_mul_([p.grad for g in slow for p in g["params"]], inv)
            hidden = {k: self.__dict__.pop(k) for k in ("grad_scale", "found_inf")
                      if k in self.__dict__}
            try:
                self._fo_torch_fallback(slow)
            finally:
                self.__dict__.update(hidden)
        if torch_groups:    # a mixed optimizer: GradScaler unscaled these grads itself
            self._fo_torch_fallback(torch_groups)


def _common_doc(cls, torch_cls):
    cls.__doc__ = (f"fastopt's fused native step with {torch_cls.__module__}."
                   f"{torch_cls.__name__}'s rule and interface (a subclass of it).\n\n"
                   "    Extra keyword-only arguments: l1, max_grad_norm, clip_value (and fused "
                   "where torch lacks it); see fastopt.torch's module docstring for the flags "
                   "and where fastopt differs from torch.\n")
    return cls


# ---- SGD -----------------------------------------------------------------------------------

class SGD(_Native, torch.optim.SGD):
    _fo_spec = _spec.SGD
    _fo_sparse_to_torch = True

    def __init__(self, params, lr=1e-3, momentum=0, dampening=0, weight_decay=0,
                 nesterov=False, *, maximize=False, foreach=None, differentiable=False,
                 fused=None, l1=0.0, max_grad_norm=None, clip_value=None,
                 master_weights=False, rounding="nearest", state_dtype=None, seed=0):
        self._fo_begin(locals())
        super().__init__(params, lr=lr, momentum=momentum, dampening=dampening,
                         weight_decay=weight_decay, nesterov=nesterov, maximize=maximize,
                         foreach=foreach, differentiable=differentiable, fused=fused)
        self._fo_end()

    def _fo_new_buffers(self, p, group, state, dtype):
        if group["momentum"] != 0 and "momentum_buffer" not in state:
            # torch starts the buffer as a copy of the gradient: the kernel fills it
            state["momentum_buffer"] = torch.empty_like(p, dtype=dtype,
                                                        memory_format=torch.preserve_format)


# ---- Adam / AdamW --------------------------------------------------------------------------

class Adam(_Native, torch.optim.Adam):
    _fo_spec = _spec.ADAM

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0,
                 amsgrad=False, *, foreach=None, maximize=False, capturable=False,
                 differentiable=False, fused=None, decoupled_weight_decay=False,
                 l1=0.0, max_grad_norm=None, clip_value=None,
                 master_weights=False, rounding="nearest", state_dtype=None, seed=0):
        self._fo_begin(locals())
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         amsgrad=amsgrad, foreach=foreach, maximize=maximize,
                         capturable=capturable, differentiable=differentiable, fused=fused,
                         decoupled_weight_decay=decoupled_weight_decay)
        self._fo_end()


class AdamW(_Native, torch.optim.AdamW):
    _fo_spec = _spec.ADAMW

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 amsgrad=False, *, maximize=False, foreach=None, capturable=False,
                 differentiable=False, fused=None, l1=0.0, max_grad_norm=None,
                 clip_value=None,
                 master_weights=False, rounding="nearest", state_dtype=None, seed=0):
        self._fo_begin(locals())
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         amsgrad=amsgrad, maximize=maximize, foreach=foreach,
                         capturable=capturable, differentiable=differentiable, fused=fused)
        self._fo_end()


# ---- RMSprop / Adagrad ---------------------------------------------------------------------

class RMSprop(_Native, torch.optim.RMSprop):
    _fo_spec = _spec.RMSPROP
    _fo_own_fused = True
    _fo_fused_checks_differentiable = True

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0, momentum=0,
                 centered=False, capturable=False, foreach=None, maximize=False,
                 differentiable=False, *, fused=None, l1=0.0, max_grad_norm=None,
                 clip_value=None,
                 master_weights=False, rounding="nearest", state_dtype=None, seed=0):
        self._fo_begin(locals())
        super().__init__(params, lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                         momentum=momentum, centered=centered, capturable=capturable,
                         foreach=foreach, maximize=maximize, differentiable=differentiable)
        self._fo_end()


class Adagrad(_Native, torch.optim.Adagrad):
    _fo_spec = _spec.ADAGRAD
    _fo_sparse_to_torch = True

    def __init__(self, params, lr=1e-2, lr_decay=0, weight_decay=0,
                 initial_accumulator_value=0, eps=1e-10, foreach=None, *, maximize=False,
                 differentiable=False, fused=None, l1=0.0, max_grad_norm=None,
                 clip_value=None,
                 master_weights=False, rounding="nearest", state_dtype=None, seed=0):
        self._fo_begin(locals())
        super().__init__(params, lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                         initial_accumulator_value=initial_accumulator_value, eps=eps,
                         foreach=foreach, maximize=maximize, differentiable=differentiable,
                         fused=fused)
        self._fo_end()

    def _fo_end(self) -> None:
        super()._fo_end()
        # torch's constructor made every sum in the param's dtype: remade in the storage dtype
        for group in self.param_groups:
            want = None
            for p in group["params"]:
                st = self.state.get(p)
                if st and "sum" in st and not p.is_complex():
                    want = want or storage(self._fo_group(group))
                    q8 = want.q8 and p.dtype not in _EXACT and p.numel() >= _spec.Q8_MIN
                    if q8 or st["sum"].dtype != state_dtype(want, p.dtype):
                        del st["sum"]
                        self._fo_new_state(p, group, st)

    def _fo_new_buffers(self, p, group, state, dtype):
        if not state:
            state["step"] = torch.tensor(0.0, dtype=_get_scalar_dtype(is_fused=group.get(
                "fused")))
        if "sum" not in state:
            v = self.defaults["initial_accumulator_value"]   # torch reads defaults, too
            state["sum"] = torch.full_like(p, complex(v, v) if p.is_complex() else v,
                                           dtype=dtype, memory_format=torch.preserve_format)


# ---- Adamax / RAdam / NAdam ----------------------------------------------------------------

class Adamax(_Native, torch.optim.Adamax):
    _fo_spec = _spec.ADAMAX
    _fo_own_fused = True

    def __init__(self, params, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0,
                 foreach=None, *, maximize=False, differentiable=False, capturable=False,
                 fused=None, l1=0.0, max_grad_norm=None, clip_value=None,
                 master_weights=False, rounding="nearest", state_dtype=None, seed=0):
        self._fo_begin(locals())
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         foreach=foreach, maximize=maximize, differentiable=differentiable,
                         capturable=capturable)
        self._fo_end()


class RAdam(_Native, torch.optim.RAdam):
    _fo_spec = _spec.RADAM
    _fo_own_fused = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0,
                 decoupled_weight_decay=False, *, foreach=None, maximize=False,
                 capturable=False, differentiable=False, fused=None, l1=0.0,
                 max_grad_norm=None, clip_value=None,
                 master_weights=False, rounding="nearest", state_dtype=None, seed=0):
        self._fo_begin(locals())
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         decoupled_weight_decay=decoupled_weight_decay, foreach=foreach,
                         maximize=maximize, capturable=capturable,
                         differentiable=differentiable)
        self._fo_end()


class NAdam(_Native, torch.optim.NAdam):
    _fo_spec = _spec.NADAM
    _fo_own_fused = True

    def __init__(self, params, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0,
                 momentum_decay=4e-3, decoupled_weight_decay=False, *, foreach=None,
                 maximize=False, capturable=False, differentiable=False, fused=None,
                 l1=0.0, max_grad_norm=None, clip_value=None,
                 master_weights=False, rounding="nearest", state_dtype=None, seed=0):
        self._fo_begin(locals())
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         momentum_decay=momentum_decay,
                         decoupled_weight_decay=decoupled_weight_decay, foreach=foreach,
                         maximize=maximize, capturable=capturable,
                         differentiable=differentiable)
        self._fo_end()

    def _fo_new_buffers(self, p, group, state, dtype):
        if not state:
            state["step"] = torch.tensor(0.0, dtype=_get_scalar_dtype())
            state["mu_product"] = torch.tensor(1.0, dtype=_get_scalar_dtype())
        for key in ("exp_avg", "exp_avg_sq"):
            if key not in state:
                state[key] = torch.zeros_like(p, dtype=dtype, memory_format=torch.preserve_format)


# ---- Adadelta / Rprop ----------------------------------------------------------------------

class Adadelta(_Native, torch.optim.Adadelta):
    _fo_spec = _spec.ADADELTA
    _fo_own_fused = True
    _fo_fused_checks_differentiable = True

    def __init__(self, params, lr=1.0, rho=0.9, eps=1e-6, weight_decay=0, foreach=None, *,
                 capturable=False, maximize=False, differentiable=False, fused=None, l1=0.0,
                 max_grad_norm=None, clip_value=None,
                 master_weights=False, rounding="nearest", state_dtype=None, seed=0):
        self._fo_begin(locals())
        super().__init__(params, lr=lr, rho=rho, eps=eps, weight_decay=weight_decay,
                         foreach=foreach, capturable=capturable, maximize=maximize,
                         differentiable=differentiable)
        self._fo_end()


class Rprop(_Native, torch.optim.Rprop):
    _fo_spec = _spec.RPROP
    _fo_own_fused = True
    _fo_fused_checks_differentiable = True

    def __init__(self, params, lr=1e-2, etas=(0.5, 1.2), step_sizes=(1e-6, 50), *,
                 capturable=False, foreach=None, maximize=False, differentiable=False,
                 fused=None, l1=0.0, max_grad_norm=None, clip_value=None,
                 master_weights=False, rounding="nearest", state_dtype=None, seed=0):
        self._fo_begin(locals())
        super().__init__(params, lr=lr, etas=etas, step_sizes=step_sizes,
                         capturable=capturable, foreach=foreach, maximize=maximize,
                         differentiable=differentiable)
        self._fo_end()

    def _fo_new_buffers(self, p, group, state, dtype):
        if not state:
            state["step"] = torch.zeros((), dtype=_get_scalar_dtype())
        if "prev" not in state:
            state["prev"] = torch.zeros_like(p, dtype=dtype, memory_format=torch.preserve_format)
        if "step_size" not in state:
            lr = _f(group["lr"])     # torch: full_like(grad, lr), (lr, lr) for complex
            state["step_size"] = torch.full_like(p, complex(lr, lr) if p.is_complex() else lr,
                                                 dtype=dtype, memory_format=torch.preserve_format)


# ---- ASGD ----------------------------------------------------------------------------------

class ASGD(_Native, torch.optim.ASGD):
    _fo_spec = _spec.ASGD
    _fo_own_fused = True
    _fo_fused_checks_differentiable = True

    def __init__(self, params, lr=1e-2, lambd=1e-4, alpha=0.75, t0=1e6, weight_decay=0,
                 foreach=None, maximize=False, differentiable=False, capturable=False, *,
                 fused=None, l1=0.0, max_grad_norm=None, clip_value=None,
                 master_weights=False, rounding="nearest", state_dtype=None, seed=0):
        self._fo_begin(locals())
        super().__init__(params, lr=lr, lambd=lambd, alpha=alpha, t0=t0,
                         weight_decay=weight_decay, foreach=foreach, maximize=maximize,
                         differentiable=differentiable, capturable=capturable)
        self._fo_end()

    def _fo_new_buffers(self, p, group, state, dtype):
        if not state:       # torch's keys and dtypes: 0-d tensors of the scalar dtype
            dt = _get_scalar_dtype()
            state["step"] = torch.zeros((), dtype=dt)
            state["eta"] = torch.as_tensor(_f(group["lr"]), dtype=dt).clone().detach()
            state["mu"] = torch.ones((), dtype=dt)
        if "ax" not in state:
            state["ax"] = torch.zeros_like(p, dtype=dtype, memory_format=torch.preserve_format)


# ---- fastopt's own rules: Lion, LAMB ---------------------------------------------------------

def _check_torch_style(lr, betas, weight_decay, eps=None) -> None:
    """The constructor checks of a rule torch lacks, with torch.optim's messages."""
    if isinstance(lr, torch.Tensor) and lr.numel() != 1:
        raise ValueError("Tensor lr must be 1-element")
    if not 0.0 <= lr:
        raise ValueError(f"Invalid learning rate: {lr}")
    if eps is not None and not 0.0 <= eps:
        raise ValueError(f"Invalid epsilon value: {eps}")
    if not 0.0 <= betas[0] < 1.0:
        raise ValueError(f"Invalid beta parameter at index 0: {betas[0]}")
    if not 0.0 <= betas[1] < 1.0:
        raise ValueError(f"Invalid beta parameter at index 1: {betas[1]}")
    if not 0.0 <= weight_decay:
        raise ValueError(f"Invalid weight_decay value: {weight_decay}")


class _OwnRule(_Native, torch.optim.Optimizer):
    """A rule torch.optim lacks: ``fused=False`` (and what the native step cannot take) runs
    ``_fo_plain(opt, groups)``, a plain torch implementation of the same rule."""

    _fo_own_fused = True
    _fo_plain: Any

    def step(self, closure=None):
        """Perform a single optimization step (see ``fastopt.torch``)."""
        return _Native.step(self, closure)

    def _fo_torch_step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._fo_plain(self, self.param_groups)
        return loss


class Lion(_OwnRule):
    r"""Lion (Chen et al., 2023), fastopt's rule (see ``fastopt.Lion``); torch has none.

    ``Lion(params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0, *, maximize=False, fused=None,
    l1=0, max_grad_norm=None, clip_value=None)``. State: ``step`` (0-d float32 tensor) and
    ``exp_avg``. ``fused=False`` runs a plain torch implementation of the same rule, equal to
    the native one up to rounding.
    """

    _fo_spec = _spec.LION

    def __init__(self, params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0, *,
                 maximize=False, fused=None, l1=0.0, max_grad_norm=None, clip_value=None,
                 master_weights=False, rounding="nearest", state_dtype=None, seed=0):
        _check_torch_style(lr, betas, weight_decay)
        self._fo_begin(locals())
        super().__init__(params, dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay,
                                      maximize=maximize, differentiable=False))
        self._fo_end()

    _fo_plain = staticmethod(lambda opt, groups: _lion_torch(opt, groups))


@torch.no_grad()
def _lion_torch(opt, groups):
    """Lion in plain torch operations (fused=False)."""
    for group in groups:
        lr, (b1, b2), wd = _f(group["lr"]), group["betas"], _f(group["weight_decay"])
        for p in group["params"]:
            if p.grad is None:
                continue
            g = -p.grad if group["maximize"] else p.grad
            st = opt.state[p]
            if not st:
                st["step"] = torch.tensor(0.0, dtype=_get_scalar_dtype())
                st["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            st["step"] += 1
            m = st["exp_avg"]
            pr, mr, gr = ((torch.view_as_real(x) for x in (p, m, g)) if p.is_complex()
                          else (p, m, g))
            if wd != 0:
                pr.mul_(1 - lr * wd)
            c = mr.mul(b1).add_(gr, alpha=1 - _f(b1))
            pr.add_(torch.sign(c), alpha=-lr)
            mr.mul_(b2).add_(gr, alpha=1 - _f(b2))


# ---- LAMB ----------------------------------------------------------------------------------

class LAMB(_OwnRule):
    r"""LAMB with Apex FusedLAMB's trust ratio, fastopt's rule (see ``fastopt.LAMB``); torch
    has none.

    ``LAMB(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01,
    bias_correction=True, *, use_nvlamb=False, maximize=False, fused=None, l1=0,
    max_grad_norm=None, clip_value=None)``. State: ``step`` (0-d float32 tensor),
    ``exp_avg``, ``exp_avg_sq``. ``fused=False`` runs a plain torch implementation of the same
    rule (also used for float16/bfloat16 params), equal to the native one up to rounding.
    """

    _fo_spec = _spec.LAMB

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01,
                 bias_correction=True, *, use_nvlamb=False, maximize=False, fused=None,
                 l1=0.0, max_grad_norm=None, clip_value=None,
                 master_weights=False, rounding="nearest", state_dtype=None, seed=0):
        _check_torch_style(lr, betas, weight_decay, eps)
        self._fo_begin(locals())
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps,
                                      weight_decay=weight_decay,
                                      bias_correction=bias_correction, use_nvlamb=use_nvlamb,
                                      maximize=maximize, differentiable=False))
        self._fo_end()

    _fo_plain = staticmethod(lambda opt, groups: _lamb_torch(opt, groups))


@torch.no_grad()
def _lamb_torch(opt, groups):
    """LAMB in plain torch operations (fused=False, and low-precision params), in float32 for
    16-bit params as Apex computes it."""
    for group in groups:
        lr, (b1, b2), eps = _f(group["lr"]), group["betas"], group["eps"]
        wd = _f(group["weight_decay"])
        for p in group["params"]:
            if p.grad is None:
                continue
            st = opt.state[p]
            if not st:
                st["step"] = torch.tensor(0.0, dtype=_get_scalar_dtype())
                st["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            st["step"] += 1
            t = _f(st["step"])
            ct = torch.float32 if p.dtype in (torch.float16, torch.bfloat16) else p.dtype
            g = (-p.grad if group["maximize"] else p.grad).to(ct)
            m, v, x = st["exp_avg"], st["exp_avg_sq"], p.to(ct)
            mc = m.to(ct).mul_(b1).add_(g, alpha=1 - b1)
            vc = v.to(ct).mul_(b2).addcmul_(g, g, value=1 - b2)
            bc1 = 1 - b1 ** t if group["bias_correction"] else 1.0
            bc2 = 1 - b2 ** t if group["bias_correction"] else 1.0
            u = (mc / bc1) / ((vc / bc2).sqrt() + eps) + wd * x
            pn, un = x.double().norm().item(), u.double().norm().item()
            trust = group["use_nvlamb"] or wd != 0
            ratio = lr * (pn / un) if trust and pn != 0 and un != 0 else lr
            m.copy_(mc)
            v.copy_(vc)
            p.copy_(x - ratio * u)


for _cls, _tcls in ((SGD, torch.optim.SGD), (Adam, torch.optim.Adam),
                    (AdamW, torch.optim.AdamW), (RMSprop, torch.optim.RMSprop),
                    (Adagrad, torch.optim.Adagrad), (Adamax, torch.optim.Adamax),
                    (NAdam, torch.optim.NAdam), (RAdam, torch.optim.RAdam),
                    (Adadelta, torch.optim.Adadelta), (Rprop, torch.optim.Rprop),
                    (ASGD, torch.optim.ASGD)):
    _common_doc(_cls, _tcls)
del _cls, _tcls


from ._rules2 import Adafactor, SparseAdam  # noqa: E402  (their own native entries)
