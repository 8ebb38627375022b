"""The rule specs: one declarative entry per rule, the single description of it.

A ``Rule`` says, for one update rule:

- ``hyper``: the group keys the rule reads, with torch's defaults, in its constructor's order
  (``(name, default)``; ``_KW`` marks where keyword-only arguments start);
- ``pack``: validates a group's values and returns the native argument record **by field
  name** (the names of the C record ``fo_<rule>_args`` in csrc/fastopt.h). ``record`` orders
  them as the C side reports (``_kernels.ARG_NAMES``), so no Python code depends on the C field
  order, and a field that one side names and the other lacks raises, at import for the
  defaults (see ``_check_all``) and in the tests for every option set;
- ``buffers``: the state buffers (torch's key, the stream they occupy, the option that needs
  them, their initial value);
- ``step_state`` / ``aux``: whether state holds ``step``, and the per-param scalar states kept
  in float64 next to it (their state keys: NAdam's ``mu_product``, ASGD's ``eta`` and ``mu``,
  in the order of csrc/dispatch.c's fo_scalars; ``aux_init`` gives their initial values from
  the group);
- ``reference``: how the NumPy twin (fastopt.reference) is called for one tensor.

The optimizer classes (their checks, state creation and revalidation), the functional layer,
the kernel API and the NumPy backend all read these entries; nothing else knows a rule's
columns. Adding a rule: its element update in csrc/kernels_body.h (with its ``FO_RULE_LIST``
line, argument record and scalars in csrc/), its NumPy twin in fastopt/reference.py, and one
entry here (plus, for the public API, a class that names its parameters).
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import _validation as v
from . import reference

# The stream slots (csrc/fastopt.h: FO_G, FO_S1..FO_S3).
G, S1, S2, S3 = 1, 2, 3, 4
_KW = ("*", None)   # marks the start of keyword-only hyperparameters in ``hyper``

# Every rule that reads a gradient also takes these (fastopt's additions to torch's rules).
COMMON = (("max_grad_norm", None), ("clip_value", None))

# ---- storage: how 16-bit params and states are kept (every optimizer; csrc/storage.c) -------
# Group keys with their defaults (torch's behaviour: states in the param's dtype, rounding to
# nearest, no master copy); the stream and state key of a 16-bit param's master copy or
# Kahan compensation.
STORAGE = (("master_weights", False), ("rounding", "nearest"), ("state_dtype", None))
ROUNDINGS = ("nearest", "stochastic", "kahan")
M = 5
MASTER_KEY, KAHAN_KEY = "master_param", "kahan_comp"
# 8-bit states (state_dtype="8bit"; csrc/storage.c): state S_k's block scales are stream
# A1 + (S_k - S1), kept at state key <key> + SCALE_SUFFIX; tensors under Q8_MIN elements, and
# float64 params, keep float32 (float64) states.
A1 = 6
# the storage dtype codes of a stream (csrc/fastopt.h FO_DT_*; tests check they agree)
DT_NONE, DT_F32, DT_F64, DT_F16, DT_BF16, DT_Q8S, DT_Q8U, DT_ABSMAX = range(8)
Q8 = "8bit"
SCALE_SUFFIX = "_absmax"
Q8_MIN = 4096


@dataclass(frozen=True)
class Storage:
    master: bool
    rounding: str
    state_dtype: Any            # None (the param's dtype; float32 with a master copy), a
                                # dtype, or "8bit"

    @property
    def code(self) -> int:
        """The driver's rounding mode for 16-bit values written without a master copy."""
        return 1 if self.rounding == "stochastic" else 0

    @property
    def q8(self) -> bool:
        """8-bit states (block-wise quantized) for the params that take them."""
        return isinstance(self.state_dtype, str) and self.state_dtype == Q8

    def extra_slot(self) -> tuple[tuple[int, str], ...]:
        """(stream, key) of the master copy or compensation (16-bit params only)."""
        if self.master:
            return ((M, MASTER_KEY),)
        if self.rounding == "kahan":
            return ((M, KAHAN_KEY),)
        return ()

    def buffer_dtype(self, param_dtype):
        """The dtype of a param's state buffers."""
        d = np.dtype(param_dtype)
        if d == np.float64:
            return d
        if self.q8:             # the float32 states of small tensors
            return np.dtype(np.float32)
        if self.state_dtype is not None:
            return self.state_dtype
        if self.master and v.is16(d):
            return np.dtype(np.float32)
        return d


def check_storage(group: Mapping) -> Storage:
    """Validate a group's storage keys."""
    master = v.flag("master_weights", group.get("master_weights", False))
    rounding = group.get("rounding", "nearest")
    if not isinstance(rounding, str) or rounding not in ROUNDINGS:
        raise ValueError(f"Invalid rounding: {rounding!r} (expected one of "
                         f"{', '.join(map(repr, ROUNDINGS))})")
    if master and rounding == "kahan":
        raise ValueError("rounding='kahan' keeps a compensation buffer in place of master "
                         "weights: use master_weights=True or rounding='kahan', not both")
    sd = group.get("state_dtype")
    dtype = None
    if isinstance(sd, str) and sd == Q8:
        return Storage(bool(master), rounding, Q8)
    if sd is not None:
        try:
            dtype = np.dtype(sd)
        except TypeError:
            raise TypeError(f"Invalid state_dtype: {sd!r} (expected None, np.float32, "
                            "ml_dtypes.bfloat16 or '8bit')") from None
        if dtype != np.float32 and not (dtype.kind == "V" and dtype.name == "bfloat16"):
            raise ValueError(f"Invalid state_dtype: {dtype} (expected None, float32, "
                             "bfloat16 or '8bit')")
    return Storage(bool(master), rounding, dtype)


def _always(group: Mapping) -> bool:
    return True


ALWAYS = _always      # a Buffer's `needed` when every group needs it


@dataclass(frozen=True)
class Buffer:
    key: str                                     # torch's state key
    stream: int                                  # S1, S2 or S3
    needed: Callable[[Mapping], bool] = _always  # from the group's settings
    fill: Callable[[Mapping], float] | None = None   # initial value (None: zeros)
    signed: bool = True         # 8-bit: the signed map (int8 codes), else the unsigned (uint8)


@dataclass(frozen=True)
class Rule:
    name: str                                    # the C rule (csrc/fastopt.h FO_RULE_LIST)
    hyper: tuple[tuple[str, Any], ...]
    pack: Callable[[Mapping], dict[str, float]]
    buffers: tuple[Buffer, ...] = ()
    step_state: bool = True
    aux: tuple[str, ...] = ()
    aux_init: Callable[[Mapping], tuple[float, ...]] = lambda group: ()
    reference: Callable[..., None] | None = None
    flags: tuple[str, ...] = ()                  # record fields that are booleans
    storage16: bool = True                       # 16-bit / mixed storage supported
    storage8: bool = False                       # 8-bit states supported

    @property
    def keys(self) -> tuple[str, ...]:
        """The group keys of the rule's own hyperparameters."""
        return tuple(k for k, _ in self.hyper if k != "*")

    def defaults(self) -> dict[str, Any]:
        return {k: d for k, d in self.hyper if k != "*"}

    def needed(self, group: Mapping) -> tuple[tuple[int, str], ...]:
        """(stream, key) of each buffer the group's settings need."""
        return tuple((b.stream, b.key) for b in self.buffers if b.needed(group))

    def scale_slots(self, group: Mapping) -> tuple[tuple[int, str, int], ...]:
        """(stream, key, Q8_MIN) of the block scales of each buffer an 8-bit group needs (the
        driver skips them for params under Q8_MIN elements and float64 params)."""
        return tuple((A1 + stream - S1, key + SCALE_SUFFIX, Q8_MIN)
                     for stream, key in self.needed(group))

    def signed(self, key: str) -> bool:
        """Whether buffer ``key`` takes the signed map of 8-bit states (int8 codes)."""
        b = self.buffer(key)
        return b is None or b.signed

    def buffer(self, key: str) -> Buffer | None:
        for b in self.buffers:
            if b.key == key:
                return b
        return None

    def record(self, group: Mapping) -> list[float]:
        """The validated argument record, in the C record's field order (memoised by the
        exact values and their types, so a call with the same hyperparameters is not
        revalidated: the kernel API's small-call cost). Where the record's ``lr`` field is
        the group's lr as ``v.lr`` checks it (every rule whose C record has an lr), the memo
        leaves lr out of its key and checks and places it on every call, so that a schedule
        changing lr every step still hits."""
        if self.lr_index is None:
            typed = settings_key(group)
        else:       # (a group without lr is the pack's to refuse, unmemoised)
            typed = settings_key(group, ("lr",)) if "lr" in group else None
        key = None if typed is None else (self.name, id(self.pack), typed)
        hit = None if key is None else _RECORDS.get(key)
        if hit is not None:
            return self.place_lr(hit, None if self.lr_index is None else group["lr"])
        out = self._record(group)
        if key is not None:
            if len(_RECORDS) >= 256:
                _RECORDS.clear()
            _RECORDS[key] = tuple(out)
        return out

    @functools.cached_property
    def lr_index(self) -> int | None:
        """The position of ``lr`` in the record where the pack puts ``v.lr(group["lr"])``
        there and nothing else of the record depends on lr; None for a rule without an lr
        field (its lr, if any, stays in the memo's key). Checked for every rule in
        tests/test_spec.py against the unmemoised record."""
        from ._backend import native
        names = native.ARG_NAMES.get(self.name, ())
        return names.index("lr") if "lr" in names else None

    def place_lr(self, record, lr) -> list[float]:
        """A copy of a memoised ``record`` with ``lr`` checked and in its place (the record
        unchanged for a rule without an lr field, whose memo key holds lr)."""
        out = list(record)
        if self.lr_index is not None:
            out[self.lr_index] = v.lr(lr) + 0.0
        return out

    def _record(self, group: Mapping) -> list[float]:
        from ._backend import native
        fields = self.pack(group)
        names = native.ARG_NAMES[self.name]
        if set(fields) != set(names):
            raise RuntimeError(
                f"fastopt: the spec of {self.name!r} and its C record disagree: the spec has "
                f"{sorted(set(fields) - set(names))} too many, {sorted(set(names) - set(fields))} "
                "missing")
        # + 0.0: -0.0 becomes 0.0, so that a memoised record (keyed by ==, where -0.0 == 0.0)
        # never depends on which of the two came first
        return [fields[n] + 0.0 for n in names]

    def kwargs(self, record: list[float]) -> dict[str, Any]:
        """The record as the NumPy twin's keyword arguments."""
        from ._backend import native
        out: dict[str, Any] = {}
        for name, value in zip(native.ARG_NAMES[self.name], record):
            if name in self.flags:
                out[name] = bool(value)
            elif name == "clip_value":
                out[name] = value if value != 0.0 else None
            else:
                out[name] = value
        return out


_RECORDS: dict = {}


# Hyperparameter value types that cannot change in place, so that a validation can be memoised
IMMUTABLE = frozenset((float, int, bool, type(None), str, np.float64, np.float32, np.int64,
                       np.int32, np.bool_))
_IMMUTABLE_OR_TUPLE = IMMUTABLE | {tuple}


def _typed(items: tuple):
    """A hashable key of a group's items that tells True from 1 and 1.0 (they are equal and
    hash alike), one level into tuple values (betas)."""
    types = tuple([type(v) for _, v in items])
    if tuple not in types:
        return items, types
    return (items, types, tuple([tuple(map(type, v)) for _, v in items if type(v) is tuple]))


def _memoisable(typed: tuple, immutable: frozenset = IMMUTABLE,
                or_tuple: frozenset = _IMMUTABLE_OR_TUPLE) -> bool:
    """Whether every value of a _typed key is immutable (not a tensor or a 0-d array lr that
    may change in place), so that its validation may be memoised (``immutable``: those types,
    ``or_tuple``: the same and tuple)."""
    if not or_tuple.issuperset(typed[1]):
        return False
    return len(typed) == 2 or all(immutable.issuperset(t) for t in typed[2])


def settings_key(group: Mapping, skip: tuple = (), immutable: frozenset = IMMUTABLE,
                 or_tuple: frozenset = _IMMUTABLE_OR_TUPLE):
    """The memo key of a group's settings: its items but ``skip``'s keys, by value and type
    (see _typed), or None where a value may change in place (see _memoisable)."""
    items = tuple([kv for kv in group.items() if kv[0] not in skip]) if skip else \
        tuple(group.items())
    typed = _typed(items)
    return typed if _memoisable(typed, immutable, or_tuple) else None


# ---- validation pieces shared by several rules ---------------------------------------------

def _common(group: Mapping) -> dict[str, float]:
    clip = group.get("clip_value")
    value = 0.0 if clip is None else v.real("clip_value", clip, low=0.0)
    if clip is not None and value == 0.0:
        raise ValueError("Invalid clip_value value: 0 (use None for no clipping)")
    return {"weight_decay": v.real("weight_decay", group["weight_decay"]),
            "maximize": float(v.flag("maximize", group["maximize"])),
            "l1": v.real("l1", group["l1"]), "clip_value": value}


def _eps(group: Mapping) -> float:
    return v.real("eps", group["eps"], what="epsilon value")


def _betas(group: Mapping) -> dict[str, float]:
    beta1, beta2 = v.betas(group["betas"])
    return {"beta1": beta1, "beta2": beta2}


def check_max_grad_norm(group: Mapping) -> float:
    """The group's max_grad_norm as the driver takes it (0: no clipping)."""
    max_norm = group.get("max_grad_norm")
    if max_norm is None:
        return 0.0
    value = v.real("max_grad_norm", max_norm, low=0.0)
    if value <= 0:
        raise ValueError(f"Invalid max_grad_norm value: {max_norm} (use None for no clipping)")
    return value


# ---- the rules ------------------------------------------------------------------------------

def _pack_sgd(g: Mapping) -> dict[str, float]:
    momentum = v.real("momentum", g["momentum"])
    dampening = v.real("dampening", g["dampening"], low=None)
    nesterov = v.flag("nesterov", g["nesterov"])
    if nesterov and (momentum <= 0 or dampening != 0):
        raise ValueError("Nesterov momentum requires a momentum and zero dampening")
    return {"lr": v.lr(g["lr"]), "momentum": momentum, "dampening": dampening,
            "nesterov": float(nesterov), **_common(g)}


def _ref_sgd(p, g, b, *, step, aux, **kw):
    reference.sgd_step(p, g, b[S1] if kw["momentum"] != 0 else None, init_buffer=step <= 1,
                       **kw)


SGD = Rule(
    "sgd",
    (("lr", 1e-3), ("momentum", 0.0), ("dampening", 0.0), ("weight_decay", 0.0),
     ("nesterov", False), _KW, ("maximize", False), ("l1", 0.0)),
    _pack_sgd,
    (Buffer("momentum_buffer", S1, lambda g: g["momentum"] != 0),),
    step_state=False, reference=_ref_sgd, flags=("nesterov", "maximize"), storage8=True)


def _pack_adam(g: Mapping, decoupled: bool | None = None) -> dict[str, float]:
    dec = g["decoupled_weight_decay"] if decoupled is None else decoupled
    return {"lr": v.lr(g["lr"]), **_betas(g), "eps": _eps(g),
            "decoupled_weight_decay": float(v.flag("decoupled_weight_decay", dec)),
            **_common(g)}


def _ref_adam(p, g, b, *, step, aux, **kw):
    reference.adam_step(p, g, b[S1], b[S2], b[S3], step=step, **kw)


_ADAM_HYPER = (("lr", 1e-3), ("betas", (0.9, 0.999)), ("eps", 1e-8), ("weight_decay", 0.0),
               ("amsgrad", False), _KW, ("maximize", False), ("l1", 0.0))
_ADAM_BUFFERS = (Buffer("exp_avg", S1), Buffer("exp_avg_sq", S2, signed=False),
                 Buffer("max_exp_avg_sq", S3, lambda g: bool(g["amsgrad"]), signed=False))


def _pack_adam_group(g: Mapping) -> dict[str, float]:
    v.flag("amsgrad", g["amsgrad"])
    return _pack_adam(g, g.get("decoupled_weight_decay", False))


ADAM = Rule("adam", _ADAM_HYPER, _pack_adam_group,
            _ADAM_BUFFERS, reference=_ref_adam,
            flags=("decoupled_weight_decay", "maximize"), storage8=True)
ADAMW = Rule("adam", tuple((k, 1e-2 if k == "weight_decay" else d) for k, d in _ADAM_HYPER),
             lambda g: (v.flag("amsgrad", g["amsgrad"]), _pack_adam(g, True))[1],
             _ADAM_BUFFERS, reference=_ref_adam,
             flags=("decoupled_weight_decay", "maximize"), storage8=True)


def _pack_rmsprop(g: Mapping) -> dict[str, float]:
    return {"lr": v.lr(g["lr"]), "alpha": v.real("alpha", g["alpha"], high=1.0,
                                                  what="alpha value"),
            "eps": _eps(g), "momentum": v.real("momentum", g["momentum"]),
            "centered": float(v.flag("centered", g["centered"])), **_common(g)}


def _ref_rmsprop(p, g, b, *, step, aux, **kw):
    kw["momentum"] = kw["momentum"] if b[S2] is not None else 0.0
    kw["centered"] = kw["centered"] and b[S3] is not None
    reference.rmsprop_step(p, g, b[S1], b[S2], b[S3], **kw)


RMSPROP = Rule(
    "rmsprop",
    (("lr", 1e-2), ("alpha", 0.99), ("eps", 1e-8), ("weight_decay", 0.0), ("momentum", 0.0),
     ("centered", False), _KW, ("maximize", False), ("l1", 0.0)),
    _pack_rmsprop,
    (Buffer("square_avg", S1, signed=False),
     Buffer("momentum_buffer", S2, lambda g: g["momentum"] > 0),
     Buffer("grad_avg", S3, lambda g: bool(g["centered"]))),
    reference=_ref_rmsprop, flags=("centered", "maximize"), storage8=True)


def _pack_adagrad(g: Mapping) -> dict[str, float]:
    v.real("initial_accumulator_value", g["initial_accumulator_value"])
    return {"lr": v.lr(g["lr"]), "lr_decay": v.real("lr_decay", g["lr_decay"]),
            "eps": _eps(g), **_common(g)}


def _ref_adagrad(p, g, b, *, step, aux, **kw):
    reference.adagrad_step(p, g, b[S1], step=step, **kw)


ADAGRAD = Rule(
    "adagrad",
    (("lr", 1e-2), ("lr_decay", 0.0), ("weight_decay", 0.0), ("initial_accumulator_value", 0.0),
     ("eps", 1e-10), _KW, ("maximize", False), ("l1", 0.0)),
    _pack_adagrad,
    (Buffer("sum", S1, fill=lambda g: float(g["initial_accumulator_value"]), signed=False),),
    reference=_ref_adagrad, flags=("maximize",), storage8=True)


def _pack_lion(g: Mapping) -> dict[str, float]:
    return {"lr": v.lr(g["lr"]), **_betas(g), **_common(g)}


def _ref_lion(p, g, b, *, step, aux, **kw):
    reference.lion_step(p, g, b[S1], **kw)


LION = Rule(
    "lion",
    (("lr", 1e-4), ("betas", (0.9, 0.99)), ("weight_decay", 0.0), _KW, ("maximize", False),
     ("l1", 0.0)),
    _pack_lion, (Buffer("exp_avg", S1),), step_state=True, reference=_ref_lion,
    flags=("maximize",), storage8=True)


def _pack_adamax(g: Mapping) -> dict[str, float]:
    return {"lr": v.lr(g["lr"]), **_betas(g), "eps": _eps(g), **_common(g)}


def _ref_adamax(p, g, b, *, step, aux, **kw):
    reference.adamax_step(p, g, b[S1], b[S2], step=step, **kw)


ADAMAX = Rule(
    "adamax",
    (("lr", 2e-3), ("betas", (0.9, 0.999)), ("eps", 1e-8), ("weight_decay", 0.0), _KW,
     ("maximize", False), ("l1", 0.0)),
    _pack_adamax, (Buffer("exp_avg", S1), Buffer("exp_inf", S2, signed=False)),
    reference=_ref_adamax, flags=("maximize",), storage8=True)


def _ref_radam(p, g, b, *, step, aux, **kw):
    reference.radam_step(p, g, b[S1], b[S2], step=step, **kw)


RADAM = Rule(
    "radam",
    (("lr", 1e-3), ("betas", (0.9, 0.999)), ("eps", 1e-8), ("weight_decay", 0.0),
     ("decoupled_weight_decay", False), _KW, ("maximize", False), ("l1", 0.0)),
    _pack_adam, (Buffer("exp_avg", S1), Buffer("exp_avg_sq", S2, signed=False)),
    reference=_ref_radam, flags=("decoupled_weight_decay", "maximize"), storage8=True)


def _pack_nadam(g: Mapping) -> dict[str, float]:
    return {**_pack_adam(g), "momentum_decay": v.real("momentum_decay", g["momentum_decay"])}


def _ref_nadam(p, g, b, *, step, aux, **kw):
    reference.nadam_step(p, g, b[S1], b[S2], aux, step=step, **kw)


NADAM = Rule(
    "nadam",
    (("lr", 2e-3), ("betas", (0.9, 0.999)), ("eps", 1e-8), ("weight_decay", 0.0),
     ("momentum_decay", 4e-3), ("decoupled_weight_decay", False), _KW, ("maximize", False),
     ("l1", 0.0)),
    _pack_nadam, (Buffer("exp_avg", S1), Buffer("exp_avg_sq", S2, signed=False)),
    aux=("mu_product",), aux_init=lambda group: (1.0,), reference=_ref_nadam,
    flags=("decoupled_weight_decay", "maximize"), storage8=True)


def _pack_adadelta(g: Mapping) -> dict[str, float]:
    return {"lr": v.lr(g["lr"]), "rho": v.real("rho", g["rho"], high=1.0), "eps": _eps(g),
            **_common(g)}


def _ref_adadelta(p, g, b, *, step, aux, **kw):
    reference.adadelta_step(p, g, b[S1], b[S2], **kw)


ADADELTA = Rule(
    "adadelta",
    (("lr", 1.0), ("rho", 0.9), ("eps", 1e-6), ("weight_decay", 0.0), _KW, ("maximize", False),
     ("l1", 0.0)),
    _pack_adadelta, (Buffer("square_avg", S1), Buffer("acc_delta", S2)),
    reference=_ref_adadelta, flags=("maximize",))


def _pack_rprop(g: Mapping) -> dict[str, float]:
    v.lr(g["lr"])       # the step sizes' initial value (Buffer.fill), not a kernel argument
    etas = g["etas"]
    if not isinstance(etas, (tuple, list)) or len(etas) != 2:
        raise TypeError(f"Invalid etas: expected a pair (etaminus, etaplus), got {etas!r}")
    sizes = g["step_sizes"]
    if not isinstance(sizes, (tuple, list)) or len(sizes) != 2:
        raise TypeError("Invalid step_sizes: expected a pair (step_size_min, step_size_max), "
                        f"got {sizes!r}")
    em = v.real("etas", etas[0], what="eta values")
    ep = v.real("etas", etas[1], what="eta values")
    if not 0.0 < em < 1.0 < ep:
        raise ValueError(f"Invalid eta values: {etas[0]}, {etas[1]}")
    lo = v.real("step_sizes", sizes[0], low=None, what="step_size_min value")
    hi = v.real("step_sizes", sizes[1], low=None, what="step_size_max value")
    common = _common({**g, "weight_decay": 0.0})
    del common["weight_decay"]
    return {"etaminus": em, "etaplus": ep, "step_size_min": lo, "step_size_max": hi, **common}


def _ref_rprop(p, g, b, *, step, aux, **kw):
    reference.rprop_step(p, g, b[S1], b[S2], **kw)


RPROP = Rule(
    "rprop",
    (("lr", 1e-2), ("etas", (0.5, 1.2)), ("step_sizes", (1e-6, 50.0)), _KW,
     ("maximize", False), ("l1", 0.0)),
    _pack_rprop,
    (Buffer("prev", S1), Buffer("step_size", S2, fill=lambda g: float(g["lr"]))),
    reference=_ref_rprop, flags=("maximize",))


def _pack_asgd(g: Mapping) -> dict[str, float]:
    return {"lr": v.lr(g["lr"]), "lambd": v.real("lambd", g["lambd"], low=None),
            "alpha": v.real("alpha", g["alpha"], low=None),
            "t0": v.real("t0", g["t0"], low=None), **_common(g)}


def _ref_asgd(p, g, b, *, step, aux, **kw):
    reference.asgd_step(p, g, b[S1], aux, step=step, **kw)


ASGD = Rule(
    "asgd",
    (("lr", 1e-2), ("lambd", 1e-4), ("alpha", 0.75), ("t0", 1e6), ("weight_decay", 0.0),
     ("maximize", False), ("l1", 0.0)),
    _pack_asgd, (Buffer("ax", S1),), aux=("eta", "mu"),
    # torch's 0-d float32 tensors: eta = lr (rounded to float32), mu = 1
    aux_init=lambda group: (float(np.float32(group["lr"])), 1.0),
    reference=_ref_asgd, flags=("maximize",))


def _pack_lamb(g: Mapping) -> dict[str, float]:
    return {"lr": v.lr(g["lr"]), **_betas(g), "eps": _eps(g),
            "bias_correction": float(v.flag("bias_correction", g["bias_correction"])),
            "use_nvlamb": float(v.flag("use_nvlamb", g["use_nvlamb"])), **_common(g)}


def _ref_lamb(p, g, b, *, step, aux, **kw):
    reference.lamb_step(p, g, b[S1], b[S2], step=step, **kw)


LAMB = Rule(
    "lamb",
    (("lr", 1e-3), ("betas", (0.9, 0.999)), ("eps", 1e-6), ("weight_decay", 0.01),
     ("bias_correction", True), _KW, ("use_nvlamb", False), ("maximize", False), ("l1", 0.0)),
    _pack_lamb, (Buffer("exp_avg", S1), Buffer("exp_avg_sq", S2)), reference=_ref_lamb,
    flags=("bias_correction", "use_nvlamb", "maximize"), storage16=False)


def _ref_ema(p, g, b, *, step, aux, **kw):
    reference.ema_update(p, g, **kw)


EMA = Rule("ema", (("decay", 0.999),),
           lambda g: {"decay": v.real("decay", g["decay"], high=1.0, what="decay value")},
           step_state=False, reference=_ref_ema)


def _ref_probe(p, g, b, *, step, aux, nstreams):
    streams = [x for x in (p, g, b[S1], b[S2], b[S3])][:int(nstreams)]
    total = streams[0] + streams[1]
    for s in streams[2:]:
        total = total + s
    for k, s in enumerate(streams):
        if k != G:
            s[...] = total


PROBE = Rule("probe", (("nstreams", 2),),
             lambda g: {"nstreams": float(g["nstreams"])}, step_state=False,
             reference=_ref_probe)

RULES = {"SGD": SGD, "Adam": ADAM, "AdamW": ADAMW, "RMSprop": RMSPROP, "Adagrad": ADAGRAD,
         "Lion": LION, "Adamax": ADAMAX, "RAdam": RADAM, "NAdam": NADAM, "EMA": EMA,
         "probe": PROBE, "Adadelta": ADADELTA, "Rprop": RPROP, "ASGD": ASGD,
         "LAMB": LAMB}


def _check_all() -> None:
    """Every spec's defaults pack into exactly its C record (raises otherwise)."""
    for rule in RULES.values():
        rule.record({**rule.defaults(), **dict(COMMON)})


# ---- rules outside the element-wise driver (csrc/rules2.c) ----------------------------------
# SparseAdam (row-sparse gradients) and Adafactor (factored second moments) have entries of
# their own in the extension (fastopt._kernels.sparse_adam / .adafactor); their specs give the
# hyperparameters (torch's, in its order) and the validation, which returns the scalars their
# functional steps take (fastopt.functional.sparse_adam / .adafactor).

@dataclass(frozen=True)
class OwnRule:
    name: str
    hyper: tuple[tuple[str, Any], ...]
    pack: Callable[[Mapping], dict[str, Any]]
    state_keys: Callable[[tuple[int, ...]], dict[str, tuple[int, ...]]]   # key -> shape

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(k for k, _ in self.hyper if k != "*")

    def defaults(self) -> dict[str, Any]:
        return {k: d for k, d in self.hyper if k != "*"}


def _pack_sparse_adam(g: Mapping) -> dict[str, Any]:
    lr = v.real("lr", g["lr"], what="learning rate")
    if not lr > 0:
        raise ValueError(f"Invalid learning rate: {g['lr']}")
    eps = v.real("eps", g["eps"], what="epsilon value")
    if not eps > 0:
        raise ValueError(f"Invalid epsilon value: {g['eps']}")
    beta1, beta2 = v.betas(g["betas"])
    return {"lr": lr, "beta1": beta1, "beta2": beta2, "eps": eps,
            "maximize": v.flag("maximize", g["maximize"])}


SPARSE_ADAM = OwnRule(
    "sparse_adam",
    (("lr", 1e-3), ("betas", (0.9, 0.999)), ("eps", 1e-8), ("maximize", False)),
    _pack_sparse_adam,
    lambda shape: {"exp_avg": shape, "exp_avg_sq": shape})


def _pack_adafactor(g: Mapping) -> dict[str, Any]:
    lr = v.real("lr", g["lr"], what="learning rate")
    decay = v.real("beta2_decay", g["beta2_decay"], low=None)
    if not decay <= 0:
        raise ValueError(f"beta2_decay should be <= 0 but is: {g['beta2_decay']}")
    eps = g["eps"]
    if not isinstance(eps, (tuple, list)) or len(eps) != 2:
        raise TypeError(f"Invalid eps: expected a pair (eps1 or None, eps2), got {eps!r}")
    eps1 = None if eps[0] is None else v.real("eps", eps[0], what="epsilon1 value")
    eps2 = v.real("eps", eps[1], what="epsilon2 value")
    d = v.real("d", g["d"], low=1.0, what="clipping threshold d")
    wd = v.real("weight_decay", g["weight_decay"])
    return {"lr": lr, "beta2_decay": decay, "eps1": eps1, "eps2": eps2, "d": d,
            "weight_decay": wd, "maximize": v.flag("maximize", g["maximize"])}


def _adafactor_state(shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    """torch's state shapes: row_var and col_var for 2+ dims, variance otherwise."""
    if len(shape) >= 2:
        return {"row_var": shape[:-1] + (1,), "col_var": shape[:-2] + (1, shape[-1])}
    return {"variance": shape}


ADAFACTOR = OwnRule(
    "adafactor",
    (("lr", 1e-2), ("beta2_decay", -0.8), ("eps", (None, 1e-3)), ("d", 1.0),
     ("weight_decay", 0.0), _KW, ("maximize", False)),
    _pack_adafactor, _adafactor_state)

OWN_RULES = {"SparseAdam": SPARSE_ADAM, "Adafactor": ADAFACTOR}
