"""The Optimizer base class: param groups, lazily created state, state_dict/load_state_dict.

It mirrors torch.optim.Optimizer for NumPy arrays. Differences, all forced by NumPy:

- ``step(grads)`` takes the gradients as a sequence in the order of the params (flattened over
  the groups); NumPy arrays have no ``.grad``. A None entry skips its param.
- ``state`` is keyed by the param's index in that order (arrays are not hashable), the same
  index that ``state_dict()`` uses. ``state[i]["step"]`` is a 0-d int64 array that the optimizer
  updates in place (torch keeps a 0-d tensor there too).

Subclasses name their rule's spec (fastopt._spec); the base class owns all bookkeeping and
runs one step for all params of all groups through the functional layer. Nothing that a user
may change is cached: params, gradients and state buffers are read from ``param_groups`` and
``state`` on every step (checked in C on the native path), so a replaced state buffer or param
is used from the next step on, and one that does not fit is refused with a clear error before
anything is modified. Only validation results are cached: the hyperparameters' (revalidated
whenever a group's value is a different object) and the overlap check's (redone whenever an
address, size or dtype changes).
"""
from __future__ import annotations

import copy
import operator
import threading
from collections.abc import Iterable, Mapping, Sequence
from itertools import chain
from typing import Any

import numpy as np

from . import _spec, _validation, functional, reference
from ._backend import native as _native

# Hyperparameters every optimizer has besides its rule's own (handled here, not by subclasses):
# gradient clipping by global norm (per group) and by value.
_COMMON_KEYS = ("max_grad_norm", "clip_value") + tuple(k for k, _ in _spec.STORAGE)
_NATIVE = functional.NATIVE
_same_objects = _native.same_objects
_OK = functional.OK
if _NATIVE:
    _R_NEEDS_STATE = _native.R_NEEDS_STATE
    _R_GROUP_SIZE = _native.R_GROUP_SIZE


def _is16(p) -> bool:
    return isinstance(p, np.ndarray) and _validation.is16(p.dtype)


# the driver's codes of 8-bit codes arrays (fastopt._kernels DT_Q8S, DT_Q8U)
_CODE_Q8S, _CODE_Q8U = _spec.DT_Q8S, _spec.DT_Q8U


def _quantized(p) -> bool:
    """Whether an 8-bit group keeps this param's states 8-bit (Q8_MIN elements or more, not
    float64: the driver's rule for scale slots)."""
    return p.size >= _spec.Q8_MIN and p.dtype != np.float64


def _applies(slot: tuple, p) -> bool:
    """Whether a (stream, key[, min, code]) slot holds an array for param p."""
    if slot[0] == _spec.M and not _is16(p):
        return False
    return len(slot) < 3 or _quantized(p)


def _freeze(group: dict) -> None:
    """Store list-valued hyperparameters (betas=[...]) as tuples, so that the cached copy of a
    group's values cannot change behind the optimizer's back (an in-place edit of a list would
    otherwise compare equal to itself and skip revalidation)."""
    for key, value in group.items():
        if key != "params" and isinstance(value, list):
            group[key] = tuple(value)


_STORAGE_DOC = """
    Storage (every optimizer; keyword-only, also per group): params may be float16 or bfloat16
    (``ml_dtypes.bfloat16``) as well as float32/float64, with gradients of the param's dtype
    or float32. ``master_weights=False``: for 16-bit params, a float32 copy in
    ``state[i]["master_param"]`` with float32 states, the param written from it rounded to
    nearest. ``rounding="nearest"``: how 16-bit values without a master copy are written:
    ``"nearest"``, ``"stochastic"`` (keyed by ``seed``, param index, step and element: the same
    bits for any thread count) or ``"kahan"`` (params: a compensation in
    ``state[i]["kahan_comp"]``, the value carried being param + kahan_comp).
    ``state_dtype=None``: the param's dtype (float32 with master weights), or float32 or
    bfloat16, or ``"8bit"`` (Adam, AdamW, Lion, SGD, RMSprop, Adagrad, Adamax, NAdam, RAdam:
    params of 4096+ elements keep int8/uint8 codes and a float32 ``<key>_absmax`` per
    256-element block; README, "8-bit states"). ``seed=0`` (constructor only). Computation
    is float32; each 16-bit value is rounded once, as it is stored (csrc/storage.c).
"""


class Optimizer:
    """Base class of fastopt's optimizers (torch.optim.Optimizer's interface, NumPy arrays).

    Subclasses set ``_spec`` (their rule's entry in fastopt._spec).
    """

    _spec: _spec.Rule

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.__doc__ and "master_weights" not in cls.__doc__:
            cls.__doc__ = cls.__doc__.rstrip() + "\n" + _STORAGE_DOC

    def __init__(self, params: Iterable[np.ndarray] | Iterable[dict], defaults: dict, *,
                 seed: int = 0):
        self.defaults = dict(defaults)
        for key, value in _spec.STORAGE:
            self.defaults.setdefault(key, value)
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) \
                or not 0 <= int(seed) < 2 ** 64:
            raise ValueError(f"Invalid seed: {seed!r} (expected an integer in [0, 2**64))")
        self._seed = int(seed)
        self._storage: list[_spec.Storage] = []
        self._rounding = np.zeros(0, np.uint8)
        self.param_groups: list[dict] = []
        self.state: dict[int, dict] = {}
        self._sizes: list[int] = []             # params per group when it was added
        self._group_of = np.zeros(0, np.int32)
        self._steps = np.zeros(0, dtype=np.int64)
        self._aux = np.zeros((0, len(self._spec.aux)))   # per param: its scalar states
        self._step_views: list[Any] = []        # the 0-d views at state[i]["step"]
        self._aux_views: dict[int, tuple] = {}  # the 0-d views at state[i][aux key]
        self._args: Any = None          # float64 (groups, nargs) records of the last validation
        self._args_key: Any = None      # the group values (objects) they were made from
        self._slots: list[tuple] = []   # per group: (stream, key) of the buffers it needs
        self._max_norms: Any = None     # per group: max_grad_norm (0: none)
        self._ones = np.ones(0)
        self._norms = np.zeros(0)
        self._clipped = False
        self._kwargs: Any = None        # the driver's arguments, made once per validation
        self._prepared: Any = None      # the same, as functional.prepare gives them
        self._frame: Any = _native.Frame() if _NATIVE else None
        self._memo: Any = _native.Memo() if _NATIVE else None
        self._lock = threading.Lock()   # steps of one optimizer from several threads serialize
        keys = self._spec.keys + _COMMON_KEYS
        self._get_hyper = operator.itemgetter(*keys)
        self.last_grad_norms: list[float | None] = []
        for group in _validation.param_groups(params):
            self._add_param_group(group)

    def __repr__(self):
        lines = [f"{type(self).__name__} ("]
        for i, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            lines += [f"    {k}: {group[k]}" for k in sorted(group) if k != "params"]
        return "\n".join(lines + [")"])

    # ---- the rule, from its spec -------------------------------------------------------------

    def _check_group(self, group: Mapping) -> list[float]:
        """Validate a group's hyperparameters; return its native argument record."""
        return self._spec.record(group)

    def _row(self, group: Mapping) -> list[float]:
        """The group's record, its own and the common hyperparameters checked."""
        row = self._check_group(dict(group))
        _spec.check_max_grad_norm(group)
        storage = _spec.check_storage(group)
        if storage.q8 and not self._spec.storage8:
            raise ValueError(f"{type(self).__name__} does not keep 8-bit states "
                             f"(state_dtype={storage.state_dtype!r}): 8-bit states are for "
                             "Adam, AdamW, Lion, SGD, RMSprop, Adagrad, Adamax, NAdam and RAdam")
        if not self._spec.storage16 and storage.state_dtype not in (None, np.float32):
            raise ValueError(f"{type(self).__name__} keeps float32 or float64 states only "
                             f"(state_dtype={storage.state_dtype})")
        return row

    def _buffers(self, group: Mapping) -> tuple[tuple, ...]:
        """(stream, state key) of each state buffer the group's settings need; with 8-bit
        states also (stream, key, Q8_MIN, codes dtype code) of each buffer's block scales."""
        slots: tuple[tuple, ...] = self._spec.needed(group)
        if _spec.check_storage(group).q8:
            slots = slots + tuple(
                scale + (_CODE_Q8S if self._spec.signed(key) else _CODE_Q8U,)
                for scale, (_, key) in zip(self._spec.scale_slots(group), slots))
        return slots

    # ---- groups ------------------------------------------------------------------------------

    def add_param_group(self, param_group: Mapping) -> None:
        """Add a group of params with its own hyperparameters (defaults fill the rest).

        State arrays handed out before (``state[i]["step"]``) are re-pointed into the enlarged
        tables: take them again from ``state`` after this call (``load_state_dict`` likewise).
        """
        with self._lock:
            self._add_param_group(param_group)

    def _add_param_group(self, param_group: Mapping) -> None:
        if not isinstance(param_group, Mapping):
            raise TypeError(f"param group must be a dict, got {type(param_group).__name__}")
        group = dict(param_group)
        if "params" not in group:
            raise ValueError("param group must have a 'params' entry")
        params = group["params"]
        if isinstance(params, np.ndarray):
            params = [params]
        elif isinstance(params, (set, frozenset)):
            raise TypeError("optimizer parameters need to be organized in ordered "
                            "collections, but the ordering of sets changes between runs")
        elif not isinstance(params, Iterable):
            raise TypeError("param group 'params' must be an array or an iterable of arrays, "
                            f"got {type(params).__name__}")
        params = list(params)
        first = len(self._group_of)
        for j, p in enumerate(params):
            _validation.check_param(f"params[{first + j}]", p)
            if not self._spec.storage16 and _is16(p):
                raise TypeError(f"params[{first + j}]: {type(self).__name__} takes float32 or "
                                f"float64 params, got {p.dtype}")
        for key, value in self.defaults.items():
            group.setdefault(key, value)
        _freeze(group)
        self._row(group)
        everything = [(f"params[{i}]", p) for i, p in enumerate(self._live_params() + params)]
        everything += [(f"state[{i}][{k!r}]", a) for i, st in self.state.items()
                       for k, a in st.items() if isinstance(a, np.ndarray) and a.ndim > 0]
        _validation.check_disjoint(everything)
        group["params"] = params
        self.param_groups.append(group)
        self._sizes.append(len(params))
        self._group_of = np.concatenate([self._group_of, np.full(len(params),
                                                                 len(self.param_groups) - 1,
                                                                 np.int32)])
        self._set_steps(np.concatenate([self._steps, np.zeros(len(params), np.int64)]),
                        np.concatenate([self._aux, self._aux_init(group, len(params))]))
        self._args_key = None

    def _aux_init(self, group: Mapping, n: int) -> np.ndarray:
        """The initial scalar states of n params of ``group``: an (n, len(spec.aux)) table."""
        row = self._spec.aux_init(group) if self._spec.aux else ()
        return np.array([row] * n, dtype=np.float64).reshape(n, len(self._spec.aux))

    def _live_params(self) -> list:
        """The params as the groups hold them now (a user may have replaced one)."""
        return [p for g in self.param_groups for p in g["params"]]

    def _set_steps(self, steps: np.ndarray, aux: np.ndarray) -> None:
        """Install new step and scalar-state tables; point every state's views into them."""
        self._steps, self._aux = steps, aux
        self._kwargs = self._prepared = None    # they hold the old tables
        self._step_views = [None] * len(steps)
        for i, st in self.state.items():
            self._point_views(i, st)

    def _point_views(self, i: int, st: dict) -> None:
        if self._spec.step_state:
            st["step"] = self._step_views[i] = self._steps[i:i + 1].reshape(())
        if self._spec.aux:
            views = tuple(self._aux[i, k:k + 1].reshape(()) for k in range(len(self._spec.aux)))
            st.update(zip(self._spec.aux, views))
            self._aux_views[i] = views

    def _adopt_scalars(self) -> None:
        """Take the per-param scalar states (NAdam's mu_product; ASGD's eta and mu) a user
        replaced in ``state`` (the step reads them from its own table, which the state's 0-d
        views show): every replacement is checked before any is taken."""
        keys, views = self._spec.aux, self._aux_views
        taken = []
        for i, st in self.state.items():
            mine = views.get(i)
            for k, key in enumerate(keys):
                v = st.get(key)
                if mine is not None and v is mine[k]:
                    continue
                if v is None and key not in st:
                    continue        # created with the rest of the state on the param's step
                scalar = v.item() if isinstance(v, np.ndarray) and v.size == 1 else v
                taken.append((i, k, _validation.real(key, scalar, low=None,
                                                     what=f"state[{i}][{key!r}]")))
        for i, k, value in taken:
            self._aux[i, k] = value
        for i in {i for i, _, _ in taken}:
            self._point_views(i, self.state[i])

    # ---- stepping ----------------------------------------------------------------------------

    def _hyper_args(self) -> np.ndarray:
        """The native records, revalidated whenever any group value is a different object
        (so ``lr = True`` after ``lr = 1.0`` is refused, as the constructor refuses it)."""
        groups = self.param_groups
        if len(groups) != len(self._sizes):
            raise ValueError(f"param_groups has {len(groups)} groups, the optimizer was given "
                             f"{len(self._sizes)}: add groups with add_param_group")
        if len(groups) == 1:
            key = self._get_hyper(groups[0])
        else:
            key = tuple(chain.from_iterable(map(self._get_hyper, groups)))
        same = _same_objects(key, self._args_key)
        if not same:
            for g in groups:
                _freeze(g)
            key = (self._get_hyper(groups[0]) if len(groups) == 1
                   else tuple(chain.from_iterable(map(self._get_hyper, groups))))
            rows = [self._row(g) for g in groups]
            self._max_norms = np.array([_spec.check_max_grad_norm(g) for g in groups])
            self.last_grad_norms = [None] * len(groups)
            self._storage = [_spec.check_storage(g) for g in groups]
            self._rounding = np.array([s.code for s in self._storage], np.uint8)
            self._slots = [self._buffers(g) + s.extra_slot()
                           for g, s in zip(groups, self._storage)]
            self._args = np.array(rows, dtype=np.float64)
            self._ones = np.ones(len(groups))
            self._norms = np.zeros(len(groups))
            self._clipped = bool(self._max_norms.any())
            self._kwargs = self._prepared = None
            self._args_key = key
            if self._memo is not None:
                self._memo.invalidate()
        return self._args

    def step(self, grads: Sequence[np.ndarray | None], *, grad_scale: float | None = None) -> bool:
        """Update every param that has a gradient, in place (one fused native call).

        ``grads``: a sequence with one entry per param, in the order of the params flattened
        over the groups; each an array of its param's shape and dtype, or None to skip it.
        Nothing is modified if any gradient, param, state buffer or hyperparameter is invalid.

        ``grad_scale`` (loss scaling): the gradients are divided by it inside the fused step,
        and a NaN or Inf in any gradient skips the whole step: nothing is modified (no state
        is created on a first step) and False is returned. Without it, non-finite values
        propagate as in torch. Returns True when the step was applied.

        Thread safety: the GIL is released while the kernels run, so optimizers of different
        params can step in parallel from several Python threads; steps of ONE optimizer from
        several threads are serialized by a lock (each applied whole, one after the other).
        A KeyboardInterrupt arriving during the native part is raised when it returns: every
        param of the step is then fully updated and its step count consistent.
        """
        with self._lock:
            if (type(grads) is not list and type(grads) is not tuple) \
                    or len(grads) != len(self._group_of):
                grads = _validation.check_grads_sequence(grads, len(self._group_of))
            grads = tuple(grads)        # the step holds its own references
            self._hyper_args()
            if self._spec.aux:
                self._adopt_scalars()
            if grad_scale is not None:
                grad_scale = _validation.real("grad_scale", grad_scale, low=None)
                if not grad_scale > 0:
                    raise ValueError(f"Invalid grad_scale value: {grad_scale}")
            if _NATIVE:
                prepared = self._prepared
                if prepared is None or grad_scale is not None:
                    prepared = self._run_args(grad_scale)
                rc = self._step_native(grads, prepared)
            else:
                rc = self._step_reference(grads, self._run_kwargs(grad_scale))
            return rc == _OK

    def _run_kwargs(self, grad_scale):
        """The driver's arguments: made once per validation; loss scaling adds its own."""
        if self._kwargs is None:
            clipped = self._clipped
            self._kwargs = dict(
                group=self._group_of, records=self._args, gscale=self._ones,
                steps=self._steps, increment=True,
                aux=self._aux.reshape(-1) if self._spec.aux else None,
                max_norms=self._max_norms if clipped else None, check_finite=False,
                norms=self._norms if clipped else None, rounding=self._rounding,
                seed=self._seed)
        if grad_scale is None:
            return self._kwargs
        return dict(self._kwargs, gscale=np.full(len(self.param_groups), 1.0 / grad_scale),
                    check_finite=True)

    def _run_args(self, grad_scale):
        """The same as the driver's prepared arguments (functional.prepare), cached likewise."""
        if grad_scale is None:
            if self._prepared is None:
                self._prepared = functional.prepare(self._spec, memo=self._memo,
                                                    **self._run_kwargs(None))
            return self._prepared
        return functional.prepare(self._spec, memo=self._memo, **self._run_kwargs(grad_scale))

    def _after(self, rc, created):
        if rc != functional.OK:
            self._rollback(created)
        elif self._clipped:
            self.last_grad_norms = [float(n) if m > 0 else None
                                    for n, m in zip(self._norms, self._max_norms)]
        return rc

    def _step_native(self, grads, prepared) -> int:
        frame = self._frame
        views = self._step_views
        rc = frame.fill_optimizer(self.param_groups, self._sizes, grads, self.state,
                                  self._slots, views)
        created: list = []
        if rc >= 0:
            if rc != _R_NEEDS_STATE:
                self._raise_bad(grads)
            created = self._create_state(grads)
            rc = frame.fill_optimizer(self.param_groups, self._sizes, grads, self.state,
                                      self._slots, views)
            if rc >= 0:
                self._rollback(created)
                self._raise_bad(grads)
        try:
            rc = functional.run_prepared(frame, *prepared)
        except _native.ContractError:
            self._rollback(created)
            self._raise_bad(grads)
        except BaseException:
            if not frame.applied:       # (applied: an interrupt as the call returned)
                self._rollback(created)
            raise
        return self._after(rc, created)

    def _step_reference(self, grads, kwargs) -> int:
        self._raise_bad(grads, only_check=True)
        created = self._create_state(grads)
        streams = self._lists(grads)
        try:
            rc = functional.run_lists(self._spec, streams,
                                      ["params", "grads"] + ["state"] * (functional.S - 2),
                                      **kwargs)
        except functional.AppliedInterrupt:
            raise                       # the step was applied whole: keep its state
        except BaseException:
            self._rollback(created)
            raise
        return self._after(rc, created)

    def _lists(self, grads) -> list:
        params = self._live_params()
        streams: list = [params, list(grads)] + [[None] * len(params)
                                                 for _ in range(functional.S - 2)]
        for i in range(len(params)):
            st = self.state.get(i)
            if st is None:
                continue
            for slot in self._slots[self._group_of[i]]:
                if slot[1] in st and _applies(slot, params[i]):
                    streams[slot[0]][i] = st[slot[1]]
        return streams

    def _create_state(self, grads) -> list:
        """Create the state of the params that step now and lack some (and adopt a replaced
        "step" entry). Returns what was done, for _rollback."""
        done: list = []
        spec = self._spec
        params = self._live_params()
        for i, g in enumerate(grads):
            if g is None:
                continue
            p = params[i]
            group = self.param_groups[self._group_of[i]]
            st = self.state.get(i)
            if st is None:
                st = self.state[i] = {}
                done.append((i, None, int(self._steps[i]), self._aux[i].copy()))
                self._steps[i] = 0
                self._aux[i] = self._aux_init(group, 1)[0]
                self._point_views(i, st)
            elif spec.step_state and st.get("step") is not self._step_views[i]:
                value = _validation.step_count(f"state[{i}]['step']", st.get("step"))
                done.append((i, "step", int(self._steps[i]), st.get("step")))
                self._steps[i] = value
                self._point_views(i, st)
            for slot in self._slots[self._group_of[i]]:
                key = slot[1]
                if key not in st and _applies(slot, p):
                    st[key] = self._new_buffer(key, p, group)
                    done.append((i, key, int(self._steps[i]), None))
                    self._on_new_buffer(i, key)
        return done

    def _rollback(self, done: list) -> None:
        for i, key, step, extra in reversed(done):
            self._steps[i] = step
            if key is None:
                self._aux[i] = extra
                self.state.pop(i, None)
            elif key == "step":
                self.state[i]["step"] = extra
            else:
                self.state[i].pop(key, None)

    def _raise_bad(self, grads, only_check: bool = False) -> None:
        """Every check of a step in Python, raising the message for the first failure (the
        native path finds failures in C and comes here to name them)."""
        for k, (g, n) in enumerate(zip(self.param_groups, self._sizes)):
            if len(g["params"]) != n:
                raise ValueError(f"param_groups[{k}]['params'] has {len(g['params'])} params, "
                                 f"the group was added with {n}: add params with "
                                 "add_param_group")
        for i, st in self.state.items():
            if not isinstance(st, dict):
                raise TypeError(f"state[{i}]: expected a dict, got {type(st).__name__}")
        keys = [{slot[0]: slot[1] for slot in slots} for slots in self._slots]
        params = self._live_params()
        for i, st in self.state.items():
            if 0 <= i < len(params):
                self._check_q8(f"state[{i}]", st, params[i], self._slots[self._group_of[i]])

        def name(k, i):
            if k < 2:
                return f"{('params', 'grads')[k]}[{i}]"
            mine = keys[self._group_of[i]]
            key = mine.get(k)
            if key is None and k >= _spec.A1:   # scales of a state (none are kept for it)
                key = mine.get(k - _spec.A1 + _spec.S1, "?") + _spec.SCALE_SUFFIX
            return f"state[{i}][{key!r}]"

        functional._check_lists(self._lists(grads), name)
        if not only_check:
            raise RuntimeError("fastopt: internal error, a step was refused without a reason")

    def _new_buffer(self, key: str, p: np.ndarray, group: dict) -> np.ndarray:
        """A state buffer's initial value (zeros, or the spec's fill value) in the group's
        state dtype; a 16-bit param's float32 master copy, or its zero compensation."""
        storage = _spec.check_storage(group)
        if key == _spec.MASTER_KEY:
            return p.astype(np.float32)
        if key == _spec.KAHAN_KEY:
            return np.zeros_like(p)
        if storage.q8 and _quantized(p):
            # 8-bit codes, or their block scales: the buffer's initial value quantized
            base = key[:-len(_spec.SCALE_SUFFIX)] if key.endswith(_spec.SCALE_SUFFIX) else key
            b = self._spec.buffer(base)
            fill = b.fill(group) if b is not None and b.fill is not None else 0.0
            signed = b is None or b.signed
            if fill == 0.0:
                if key != base:
                    return np.zeros(_validation.q8_blocks(p.size), np.float32)
                return np.zeros(p.shape, np.int8 if signed else np.uint8)
            codes, scales = reference.q8_quantize(np.full(p.shape, fill, np.float32), signed)
            return scales if key != base else codes
        dtype = storage.buffer_dtype(p.dtype)
        for b in self._spec.buffers:
            if b.key == key and b.fill is not None:
                return np.full(p.shape, b.fill(group), dtype=dtype)
        return np.zeros(p.shape, dtype=dtype)

    def _check_q8(self, where: str, st: Mapping, p, slots) -> None:
        """An 8-bit param's states: each buffer int8 (signed map) or uint8 (unsigned) codes as
        its spec says, with its scales; raises naming the array."""
        for slot in slots:
            if len(slot) < 3 or not _applies(slot, p):
                continue
            key = slot[1][:-len(_spec.SCALE_SUFFIX)]
            codes = st.get(key)
            want = np.dtype(np.int8 if slot[3] == _CODE_Q8S else np.uint8)
            if isinstance(codes, np.ndarray) and codes.dtype in _validation.Q8_CODES \
                    and codes.dtype != want:
                raise TypeError(f"{where}[{key!r}]: expected 8-bit codes of dtype {want} (the "
                                f"{'signed' if want == np.int8 else 'unsigned'} map of "
                                f"{key!r}), got {codes.dtype}")
            if isinstance(codes, np.ndarray) and codes.dtype not in _validation.Q8_CODES \
                    and slot[1] in st:
                raise TypeError(f"{where}[{key!r}]: expected 8-bit codes of dtype {want} (an "
                                f"8-bit state, with {slot[1]!r} its scales), got {codes.dtype}")

    def state_bytes(self, per_element: bool = False) -> float:
        """The bytes of the optimizer's state arrays (buffers, master copies, 8-bit codes and
        their scales; not the step counts): in total, or with ``per_element`` per element of
        the params that have state."""
        with self._lock:
            params = self._live_params()
            total, elems = 0, 0
            for i, st in self.state.items():
                arrays = [a for k, a in st.items() if k != "step" and k not in self._spec.aux
                          and isinstance(a, np.ndarray)]
                if arrays:
                    total += sum(a.nbytes for a in arrays)
                    elems += params[i].size if i < len(params) else 0
            if per_element:
                return total / elems if elems else 0.0
            return total

    def _on_new_buffer(self, i: int, key: str) -> None:
        """Hook: a state buffer was just created for param i."""

    # ---- checkpoints -------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """The optimizer's state in torch's structure, with copies of every array.
        (Taken under the step lock: never a half-applied step.)

        ``{"state": {index: {"step": int, <buffer>: array, ...}}, "param_groups": [{...,
        "params": [indices]}]}``.
        """
        with self._lock:
            return self._state_dict()

    def _state_dict(self) -> dict:
        groups, start = [], 0
        for group in self.param_groups:
            packed = {k: copy.deepcopy(v) for k, v in group.items() if k != "params"}
            packed["params"] = list(range(start, start + len(group["params"])))
            start += len(group["params"])
            groups.append(packed)
        state = {}
        for i, st in sorted(self.state.items()):
            packed = {k: (int(v) if k == "step" else float(v) if k in self._spec.aux
                          else v.copy()) for k, v in st.items()}
            if packed:
                state[i] = packed
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: Mapping) -> None:
        """Load a state dict made by ``state_dict()`` (of an optimizer of the same params).

        Every group size, key, shape and dtype is checked before anything changes: if the state
        dict does not fit, ValueError or TypeError is raised and the optimizer is left as it was.
        Arrays are copied.
        """
        with self._lock:
            self._load_state_dict(state_dict)

    def _load_state_dict(self, state_dict: Mapping) -> None:
        if not isinstance(state_dict, Mapping) or "state" not in state_dict \
                or "param_groups" not in state_dict:
            raise TypeError("state_dict: expected a mapping with 'state' and 'param_groups'")
        saved_groups = state_dict["param_groups"]
        saved_state = state_dict["state"]
        if not isinstance(saved_groups, (list, tuple)) or not isinstance(saved_state, Mapping):
            raise TypeError("state_dict: 'param_groups' must be a list and 'state' a mapping")
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(f"loaded state dict has {len(saved_groups)} parameter groups, "
                             f"the optimizer has {len(self.param_groups)}")
        index_map = {}          # saved param id -> our flat index
        new_groups, start = [], 0
        for gi, (saved, group) in enumerate(zip(saved_groups, self.param_groups)):
            if not isinstance(saved, Mapping) or "params" not in saved:
                raise TypeError(f"state_dict: param_groups[{gi}] must be a dict with 'params'")
            ids = list(saved["params"])
            if len(ids) != len(group["params"]):
                raise ValueError(f"loaded state dict contains a parameter group that doesn't "
                                 f"match the size of optimizer's group: param_groups[{gi}] has "
                                 f"{len(ids)} params, the optimizer's group has "
                                 f"{len(group['params'])}")
            for k, pid in enumerate(ids):
                if pid in index_map:
                    raise ValueError(f"state_dict: param id {pid!r} appears twice")
                index_map[pid] = start + k
            start += len(ids)
            new = {k: copy.deepcopy(v) for k, v in saved.items() if k != "params"}
            for key, value in self.defaults.items():
                new.setdefault(key, value)
            _freeze(new)
            try:
                self._row(new)
            except (TypeError, ValueError) as e:
                raise type(e)(f"state_dict: param_groups[{gi}]: {e}") from None
            new["params"] = group["params"]
            new_groups.append(new)
        new_state, new_steps = {}, np.zeros(len(self._group_of), np.int64)
        new_aux = np.concatenate([self._aux_init(g, len(g["params"])) for g in new_groups])
        for pid, saved in saved_state.items():
            if pid not in index_map:
                raise ValueError(f"state_dict: state for param id {pid!r}, which no group lists")
            i = index_map[pid]
            if not isinstance(saved, Mapping):
                raise TypeError(f"state_dict: state[{pid!r}] must be a dict")
            p = self._live_params()[i]
            storage = _spec.check_storage(new_groups[self._group_of[i]])
            slots = self._buffers(new_groups[self._group_of[i]])
            if _is16(p):
                slots = slots + storage.extra_slot()
            bufs = [slot for slot in slots if _applies(slot, p)]
            stream_of = {slot[1]: slot[0] for slot in bufs}
            st = {}
            for slot in bufs:
                key = slot[1]
                if key not in saved:
                    raise ValueError(f"state_dict: state[{pid!r}] lacks {key!r}, which "
                                     "the group's settings need")
            for key, value in saved.items():
                if key == "step":
                    new_steps[i] = _validation.step_count(f"state_dict: state[{pid!r}]['step']",
                                                          value)
                    continue
                if key in self._spec.aux:
                    scalar = value.item() if isinstance(value, np.ndarray) and value.size == 1 \
                        else value
                    new_aux[i, self._spec.aux.index(key)] = _validation.real(
                        key, scalar, low=None, what=f"state_dict: state[{pid!r}][{key!r}]")
                    continue
                _validation.check_like(f"state_dict: state[{pid!r}][{key!r}]", value, p,
                                       f"params[{i}]", writeable=False,
                                       stream=stream_of.get(key, 2))
                st[key] = np.array(value, copy=True, order="C")
            self._check_q8(f"state_dict: state[{pid!r}]", st, p, bufs)
            for k in range(_spec.S1, _spec.S3 + 1):
                names = {slot[0]: slot[1] for slot in bufs}
                if k in names:
                    scale = names.get(k + _spec.A1 - _spec.S1)
                    _validation.check_q8_pair(
                        f"state_dict: state[{pid!r}][{names[k]!r}]", st.get(names[k]),
                        f"state_dict: state[{pid!r}][{scale!r}]",
                        st.get(scale) if scale is not None else None)
            for key in self._spec.aux:
                if key not in saved:
                    raise ValueError(f"state_dict: state[{pid!r}] lacks {key!r}")
            if self._spec.step_state:
                if "step" not in saved:
                    raise ValueError(f"state_dict: state[{pid!r}] lacks 'step'")
            else:
                new_steps[i] = 1 if st else 0
            new_state[i] = st
        # everything checked: commit
        for group, new in zip(self.param_groups, new_groups):
            group.clear()
            group.update(new)
        self.state = new_state
        self._set_steps(new_steps, new_aux)
        self._args = None
        self._args_key = None
