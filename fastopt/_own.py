"""The base of the NumPy optimizers whose rule has an entry of its own (SparseAdam,
Adafactor: csrc/rules2.c), outside the element-wise driver that ``fastopt.Optimizer`` runs.

It keeps torch.optim.Optimizer's structure as ``fastopt.Optimizer`` does: param groups,
``state`` keyed by the param's index over the groups, ``state_dict``/``load_state_dict`` in
torch's layout (``step`` an int). Params are float32 or float64 (no 16-bit storage). A step
checks every gradient, param, state array and hyperparameter before it writes anything: a
refused step raises and leaves params, states and step counts as they were.
"""
from __future__ import annotations

import copy
import threading
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from . import _spec, _validation, functional


class OwnOptimizer:
    """Param groups, state and checkpoints for a rule of ``_spec.OWN_RULES``."""

    _rule: _spec.OwnRule

    def __init__(self, params: Iterable[np.ndarray] | Iterable[dict], defaults: dict) -> None:
        self._rule.pack(defaults)
        self.defaults = dict(defaults)
        self.param_groups: list[dict] = []
        self.state: dict[int, dict] = {}
        self._lock = threading.Lock()
        for group in _validation.param_groups(params):
            self._add(group)

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__} ("]
        for i, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            lines += [f"    {k}: {group[k]}" for k in sorted(group) if k != "params"]
        return "\n".join(lines + [")"])

    def _params(self) -> list[np.ndarray]:
        return [p for g in self.param_groups for p in g["params"]]

    def add_param_group(self, param_group: Mapping) -> None:
        """Add a group of params with its own hyperparameters (defaults fill the rest)."""
        with self._lock:
            self._add(param_group)

    def _add(self, param_group: Mapping) -> None:
        if not isinstance(param_group, Mapping) or "params" not in param_group:
            raise TypeError("param group must be a dict with a 'params' entry")
        group = dict(param_group)
        params = group["params"]
        params = [params] if isinstance(params, np.ndarray) else list(params)
        first = len(self._params())
        for j, p in enumerate(params):
            _validation.check_param(f"params[{first + j}]", p)
            if p.dtype not in _validation.FLOAT_DTYPES:
                raise TypeError(f"params[{first + j}]: {type(self).__name__} takes float32 or "
                                f"float64 params, got {p.dtype}")
        for key, value in self.defaults.items():
            group.setdefault(key, value)
        for key, value in group.items():
            if key != "params" and isinstance(value, list):
                group[key] = tuple(value)
        self._rule.pack(group)
        _validation.check_disjoint([(f"params[{i}]", p)
                                    for i, p in enumerate(self._params() + params)])
        group["params"] = params
        self.param_groups.append(group)

    # ---- stepping ----------------------------------------------------------------------------

    def _begin(self, grads, check) -> list[tuple[dict, list[int], dict]]:
        """Per group: its validated scalars, the indices of its stepping params; state created
        where missing (returned for the rollback)."""
        params = self._params()
        if isinstance(grads, np.ndarray) or not isinstance(grads, (list, tuple)):
            raise TypeError(f"grads: expected a list or tuple of {len(params)} entries, one per "
                            f"param, got {type(grads).__name__}")
        if len(grads) != len(params):
            raise ValueError(f"grads: expected {len(params)} entries, one per param in the "
                             f"order of the params, got {len(grads)}")
        plan, start = [], 0
        for group in self.param_groups:
            h = self._rule.pack(group)
            idx = [start + j for j in range(len(group["params"])) if grads[start + j] is not None]
            start += len(group["params"])
            plan.append((h, idx))
        for i, g in enumerate(grads):
            if g is not None:
                check(i, g, params[i])
        created = []
        for i, g in enumerate(grads):
            if g is None:
                continue
            st = self.state.get(i)
            if st is None:
                self.state[i] = self._new_state(params[i])
                created.append(i)
                continue
            self._check_state(f"state[{i}]", st, params[i])
        return [(h, idx, {"created": created}) for h, idx in plan]

    def _new_state(self, p: np.ndarray) -> dict:
        st: dict[str, Any] = {"step": 0}
        for key, shape in self._rule.state_keys(tuple(p.shape)).items():
            st[key] = np.zeros(shape, dtype=p.dtype)
        return st

    def _check_state(self, name: str, st, p: np.ndarray) -> None:
        if not isinstance(st, dict):
            raise TypeError(f"{name}: expected a dict, got {type(st).__name__}")
        _validation.step_count(f"{name}['step']", st.get("step"))
        for key, shape in self._rule.state_keys(tuple(p.shape)).items():
            a = st.get(key)
            if not isinstance(a, np.ndarray):
                raise ValueError(f"{name}[{key!r}]: expected an array of shape {shape}, got "
                                 f"{type(a).__name__}")
            if a.shape != shape or a.dtype != p.dtype:
                raise ValueError(f"{name}[{key!r}]: expected shape {shape} and dtype {p.dtype} "
                                 f"(the param's), got {a.shape} and {a.dtype}")

    def _run(self, grads, check, call) -> None:
        with self._lock:
            plan = self._begin(grads, check)
            created = plan[0][2]["created"] if plan else []
            old = {i: self.state[i]["step"] for _, idx, _ in plan for i in idx}
            try:
                for _, idx, _ in plan:
                    for i in idx:
                        self.state[i]["step"] = int(old[i]) + 1
                self._call_all(plan, grads, call)
            except BaseException:
                for i, s in old.items():
                    if i in self.state:
                        self.state[i]["step"] = s
                for i in created:
                    self.state.pop(i, None)
                raise

    def _call_all(self, plan, grads, call) -> None:
        """Every group's call, all of them checked before the first runs (so a refused group
        never follows an applied one)."""
        params = self._params()
        prepared = [call(h, idx, params, grads) for h, idx, _ in plan if idx]
        for args in prepared:
            functional.run_own(args)

    # ---- checkpoints -------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """torch's layout: ``{"state": {index: {"step": int, key: array}}, "param_groups":
        [{..., "params": [indices]}]}``, arrays copied."""
        with self._lock:
            groups, start = [], 0
            for group in self.param_groups:
                packed = {k: copy.deepcopy(v) for k, v in group.items() if k != "params"}
                packed["params"] = list(range(start, start + len(group["params"])))
                start += len(group["params"])
                groups.append(packed)
            state = {i: {k: (int(v) if k == "step" else v.copy()) for k, v in st.items()}
                     for i, st in sorted(self.state.items())}
            return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: Mapping) -> None:
        """Load a state dict of ``state_dict()``'s layout; everything is checked first (group
        sizes, hyperparameters, state keys, shapes, dtypes) and arrays are copied."""
        with self._lock:
            if not isinstance(state_dict, Mapping) or "state" not in state_dict \
                    or "param_groups" not in state_dict:
                raise TypeError("state_dict: expected a mapping with 'state' and 'param_groups'")
            saved_groups, saved_state = state_dict["param_groups"], state_dict["state"]
            if len(saved_groups) != len(self.param_groups):
                raise ValueError(f"loaded state dict has {len(saved_groups)} parameter groups, "
                                 f"the optimizer has {len(self.param_groups)}")
            index, new_groups, start = {}, [], 0
            for gi, (saved, group) in enumerate(zip(saved_groups, self.param_groups)):
                ids = list(saved["params"])
                if len(ids) != len(group["params"]):
                    raise ValueError(f"loaded state dict contains a parameter group that "
                                     f"doesn't match the size of optimizer's group: "
                                     f"param_groups[{gi}] has {len(ids)} params, the "
                                     f"optimizer's group has {len(group['params'])}")
                for k, pid in enumerate(ids):
                    index[pid] = start + k
                start += len(ids)
                new = {k: (tuple(v) if isinstance(v, list) else copy.deepcopy(v))
                       for k, v in saved.items() if k != "params"}
                for key, value in self.defaults.items():
                    new.setdefault(key, value)
                try:
                    self._rule.pack(new)
                except (TypeError, ValueError) as e:
                    raise type(e)(f"state_dict: param_groups[{gi}]: {e}") from None
                new["params"] = group["params"]
                new_groups.append(new)
            params, new_state = self._params(), {}
            for pid, saved in saved_state.items():
                if pid not in index:
                    raise ValueError(f"state_dict: state for param id {pid!r}, which no group "
                                     "lists")
                i = index[pid]
                st = {k: (int(_validation.step_count(f"state_dict: state[{pid!r}]['step']", v))
                          if k == "step" else np.array(v, copy=True, order="C"))
                      for k, v in dict(saved).items()}
                self._check_state(f"state_dict: state[{pid!r}]", st, params[i])
                new_state[i] = st
            for group, new in zip(self.param_groups, new_groups):
                group.clear()
                group.update(new)
            self.state = new_state
