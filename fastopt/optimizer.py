"""The Optimizer base class: param groups, lazily created state, state_dict/load_state_dict.

It mirrors torch.optim.Optimizer for NumPy arrays. Differences, all forced by NumPy:

- ``step(grads)`` takes the gradients as a sequence in the order of the params (flattened over
  the groups); NumPy arrays have no ``.grad``. A None entry skips its param.
- ``state`` is keyed by the param's index in that order (arrays are not hashable), the same
  index that ``state_dict()`` uses. ``state[i]["step"]`` is a 0-d int64 array that the optimizer
  updates in place (torch keeps a 0-d tensor there too).

Subclasses describe their rule with a few class attributes and methods; the base class owns all
bookkeeping and calls the native driver once per step for all params of all groups.
"""
from __future__ import annotations

import copy
import operator
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from . import _rules, _validation
from ._backend import native as _native
from ._threading import get_num_threads

# Hyperparameters every optimizer has besides its rule's own (handled here, not by subclasses):
# gradient clipping by global norm (per group) and by value.
_COMMON_KEYS = ("max_grad_norm", "clip_value")
_OK, _NEEDS_STATE = _native.OK, _native.NEEDS_STATE


def _freeze(group: dict) -> None:
    """Store list-valued hyperparameters (betas=[...]) as tuples, so that the cached copy of a
    group's values cannot change behind the optimizer's back (an in-place edit of a list would
    otherwise compare equal to itself and skip revalidation)."""
    for key, value in group.items():
        if key != "params" and isinstance(value, list):
            group[key] = tuple(value)


class Optimizer:
    """Base class of fastopt's optimizers (torch.optim.Optimizer's interface, NumPy arrays).

    Subclasses set ``_rule`` (the native rule) and ``_hyper_keys`` (the group keys whose change
    triggers revalidation), and implement ``_check_group`` (validate a group, return its native
    argument row; see fastopt._rules) and ``_buffers`` (the state buffers a group needs).
    """

    _rule: int
    _hyper_keys: tuple[str, ...]
    _has_step_state = True    # whether state holds "step" (torch's SGD has none)
    _aux_key: str | None = None   # a per-param scalar state kept natively (NAdam: mu_product)
    _aux_init = 1.0

    def __init__(self, params: Iterable[np.ndarray] | Iterable[dict], defaults: dict):
        self.defaults = dict(defaults)
        self.param_groups: list[dict] = []
        self.state: dict[int, dict] = {}
        self._params: list[np.ndarray] = []
        self._group_of: list[int] = []
        self._steps = np.zeros(0, dtype=np.int64)
        self._aux = np.zeros(0, dtype=np.float64)
        self._plan: Any = None          # fastopt._kernels.Plan, rebuilt when params/state change
        self._args: Any = None          # float64 (groups, nargs) table of the last validated values
        self._args_key: Any = None      # the raw group values it was made from
        self._signature: Any = None     # which state buffers each group needs
        self._lock = threading.Lock()   # steps of one optimizer from several threads serialize
        self._get_hyper = operator.itemgetter(*self._hyper_keys, *_COMMON_KEYS)
        self._clipped_groups: list[int] = []    # groups with max_grad_norm
        self.last_grad_norms: list[float | None] = []
        if isinstance(params, np.ndarray) or not isinstance(params, Iterable):
            raise TypeError("params argument given to the optimizer should be an iterable of "
                            f"NumPy arrays or dicts, but got {type(params).__name__}")
        groups: list[Any] = list(params)
        if not groups:
            raise ValueError("optimizer got an empty parameter list")
        if not isinstance(groups[0], Mapping):
            groups = [{"params": groups}]
        for group in groups:
            self._add_param_group(group)

    def __repr__(self):
        lines = [f"{type(self).__name__} ("]
        for i, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            lines += [f"    {k}: {group[k]}" for k in sorted(group) if k != "params"]
        return "\n".join(lines + [")"])

    # ---- rule description (subclasses) -------------------------------------------------------

    def _check_group(self, group: dict) -> list[float]:
        """Validate a group's hyperparameters; return the native argument row."""
        raise NotImplementedError

    def _row(self, group: Mapping) -> list[float]:
        """The group's native argument row, its own and the common hyperparameters checked."""
        row = self._check_group(dict(group))
        max_norm = group.get("max_grad_norm")
        if max_norm is not None:
            _validation.real("max_grad_norm", max_norm, low=0.0)
            if max_norm <= 0:
                raise ValueError(f"Invalid max_grad_norm value: {max_norm} (use None for no "
                                 "clipping)")
        row[-2:] = _rules.tail(group.get("clip_value"))
        return row

    def _buffers(self, group: dict) -> list[tuple[int, str]]:
        """(stream slot, state key) of each state buffer the group's settings need."""
        raise NotImplementedError

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
        first = len(self._params)
        for j, p in enumerate(params):
            _validation.check_param(f"params[{first + j}]", p)
        for key, value in self.defaults.items():
            group.setdefault(key, value)
        _freeze(group)
        self._row(group)
        everything = [(f"params[{i}]", p) for i, p in enumerate(self._params + params)]
        everything += [(f"state[{i}][{k!r}]", a) for i, st in self.state.items()
                       for k, a in st.items() if k != "step"]
        _validation.check_disjoint(everything)
        group["params"] = params
        self.param_groups.append(group)
        self._params.extend(params)
        self._group_of.extend([len(self.param_groups) - 1] * len(params))
        self._set_steps(np.concatenate([self._steps, np.zeros(len(params), np.int64)]),
                        np.concatenate([self._aux, np.full(len(params), self._aux_init)]))
        self._plan = None
        self._args_key = None

    def _set_steps(self, steps: np.ndarray, aux: np.ndarray) -> None:
        """Install new step and scalar-state tables; point every state's views into them."""
        self._steps, self._aux = steps, aux
        for i, st in self.state.items():
            if self._has_step_state:
                st["step"] = steps[i:i + 1].reshape(())
            if self._aux_key is not None:
                st[self._aux_key] = aux[i:i + 1].reshape(())

    # ---- stepping ----------------------------------------------------------------------------

    def _hyper_args(self) -> np.ndarray:
        """The native hyperparameter table, revalidated only when a group's values changed."""
        groups = self.param_groups
        key = (self._get_hyper(groups[0]) if len(groups) == 1
               else tuple(map(self._get_hyper, groups)))
        if key != self._args_key:
            for g in self.param_groups:
                _freeze(g)
            key = (self._get_hyper(groups[0]) if len(groups) == 1
                   else tuple(map(self._get_hyper, groups)))
            rows = [self._row(g) for g in self.param_groups]
            self._clipped_groups = [k for k, g in enumerate(self.param_groups)
                                    if g.get("max_grad_norm") is not None]
            self.last_grad_norms = [None] * len(self.param_groups)
            signature = [tuple(self._buffers(g)) for g in self.param_groups]
            if self._args is not None and signature != self._signature:
                self._plan = None   # e.g. amsgrad switched on: the streams change
            self._signature = signature
            self._args = np.array(rows, dtype=np.float64)
            self._args_key = key
        return self._args

    def step(self, grads: Sequence[np.ndarray | None]) -> None:
        """Update every param that has a gradient, in place (one fused native call).

        ``grads``: a sequence with one entry per param, in the order of the params flattened
        over the groups; each an array of its param's shape and dtype, or None to skip it.
        Nothing is modified if any gradient or hyperparameter is invalid.

        Thread safety: the GIL is released while the kernels run, so optimizers of different
        params can step in parallel from several Python threads; steps of ONE optimizer from
        several threads are serialized by a lock (each applied whole, one after the other).
        A KeyboardInterrupt arriving during the native part is raised when it returns: every
        param of the step is then fully updated and its step count consistent.
        """
        # the per-step path: every check here is O(1) in Python; the gradients are checked in C
        with self._lock:
            if (type(grads) is not list and type(grads) is not tuple) \
                    or len(grads) != len(self._params):
                grads = _validation.check_grads_sequence(grads, len(self._params))
            args = self._hyper_args()
            plan = self._plan if self._plan is not None else self._build_plan()
            if self._clipped_groups:
                self._clip_by_norm(plan, grads, args)
            aux = self._aux if self._aux_key is not None else None
            rc = plan.step(grads, args, self._steps, True, get_num_threads(), aux)
            if rc != _OK:
                if rc == _NEEDS_STATE:      # first step of some param: create its state
                    plan = self._build_plan(grads)
                    rc = plan.step(grads, args, self._steps, True, get_num_threads(), aux)
                if rc != _OK:
                    self._raise_bad_grad(rc, grads)

    def _clip_by_norm(self, plan, grads, args) -> None:
        """Gradient-norm clipping of each group with max_grad_norm: one native pass over its
        gradients (float64 accumulation, the same bits for any thread count), then the
        coefficient min(1, max_norm / (norm + 1e-6)) goes into the group's gradient scale, which
        the fused step applies as it reads each gradient (torch.nn.utils.clip_grad_norm_'s
        formula, with the norm over the group's gradients)."""
        rc = plan.check(grads)                  # never read an invalid gradient
        if rc >= 0:
            self._raise_bad_grad(rc, grads)
        for k in self._clipped_groups:
            group = self.param_groups[k]
            first = sum(len(g["params"]) for g in self.param_groups[:k])
            mine = [g for g in grads[first:first + len(group["params"])] if g is not None]
            norm = _native.grad_norm(mine, 2.0, get_num_threads())
            self.last_grad_norms[k] = norm
            coef = group["max_grad_norm"] / (norm + 1e-6)
            args[k, _rules.GSCALE] = coef if not coef >= 1.0 else 1.0   # NaN propagates

    def _raise_bad_grad(self, i: int, grads) -> None:
        written = [(f"params[{j}]", p) for j, p in enumerate(self._params)]
        written += [(f"state[{j}][{k!r}]", a) for j, st in self.state.items()
                    for k, a in st.items() if k != "step"]
        _validation.check_grad(i, grads[i], self._params[i], written)
        raise RuntimeError(f"fastopt: internal error, grads[{i}] refused without a reason")

    def _build_plan(self, grads=None):
        """(Re)build the native plan; with ``grads``, first create state for the params that
        have a gradient and no state yet (or lack a buffer their group now needs)."""
        streams: list[list[np.ndarray | None]] = []
        for i, p in enumerate(self._params):
            group = self.param_groups[self._group_of[i]]
            bufs = self._buffers(group)
            st = self.state.get(i)
            if grads is not None and grads[i] is not None and (
                    st is None or any(k not in st for _, k in bufs)):
                st = self._init_state(i, p, st, bufs)
            if st is None or any(k not in st for _, k in bufs):
                streams.append([p])     # not ready: a step with its gradient creates state
                continue
            row = [p] + [None] * (_native.MAX_STREAMS - 1)
            for slot, key in bufs:
                row[slot] = st[key]
            streams.append(row)
        self._plan = _native.Plan(self._rule, streams, self._group_of)
        return self._plan

    def _init_state(self, i, p, st, bufs) -> dict:
        if st is None:
            st = self.state[i] = {}
            self._steps[i] = 0
            if self._has_step_state:
                st["step"] = self._steps[i:i + 1].reshape(())
            if self._aux_key is not None:
                self._aux[i] = self._aux_init
                st[self._aux_key] = self._aux[i:i + 1].reshape(())
        group = self.param_groups[self._group_of[i]]
        for _, key in bufs:
            if key not in st:
                st[key] = self._new_buffer(key, p, group)
                self._on_new_buffer(i, key)
        return st

    def _new_buffer(self, key: str, p: np.ndarray, group: dict) -> np.ndarray:
        """A state buffer's initial value (zeros; Adagrad starts its sum elsewhere)."""
        return np.zeros_like(p)

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
            packed = {k: (int(v) if k == "step" else float(v) if k == self._aux_key
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
        new_state, new_steps = {}, np.zeros(len(self._params), np.int64)
        new_aux = np.full(len(self._params), self._aux_init)
        for pid, saved in saved_state.items():
            if pid not in index_map:
                raise ValueError(f"state_dict: state for param id {pid!r}, which no group lists")
            i = index_map[pid]
            if not isinstance(saved, Mapping):
                raise TypeError(f"state_dict: state[{pid!r}] must be a dict")
            p = self._params[i]
            bufs = self._buffers(new_groups[self._group_of[i]])
            st = {}
            for _, key in bufs:
                if key not in saved:
                    raise ValueError(f"state_dict: state[{pid!r}] lacks {key!r}, which "
                                     "the group's settings need")
            for key, value in saved.items():
                if key == "step":
                    new_steps[i] = _validation.step_count(f"state_dict: state[{pid!r}]['step']",
                                                          value)
                    continue
                if key == self._aux_key:
                    scalar = value.item() if isinstance(value, np.ndarray) and value.size == 1 \
                        else value
                    new_aux[i] = _validation.real(key, scalar, low=None,
                                                  what=f"state_dict: state[{pid!r}][{key!r}]")
                    continue
                _validation.check_like(f"state_dict: state[{pid!r}][{key!r}]", value, p,
                                       f"params[{i}]", writeable=False)
                st[key] = np.array(value, copy=True, order="C")
            if self._aux_key is not None and self._aux_key not in saved:
                raise ValueError(f"state_dict: state[{pid!r}] lacks {self._aux_key!r}")
            if self._has_step_state:
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
        self._plan = None
        self._args = None
        self._args_key = None
