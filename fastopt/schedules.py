"""Learning-rate schedules: torch.optim.lr_scheduler's classes for fastopt's optimizers, and the
same schedules as plain functions of the step.

The classes act on an optimizer's ``param_groups`` between steps exactly as torch's do, with
torch's names, arguments and behaviour, so scheduler code written for torch carries over:

>>> import numpy as np, fastopt
>>> from fastopt.schedules import CosineAnnealingLR, cosine_annealing
>>> w = np.zeros(3)
>>> opt = fastopt.SGD([w], lr=0.1, momentum=0.9)
>>> sched = CosineAnnealingLR(opt, T_max=4)
>>> lrs = []
>>> for _ in range(4):
...     _ = opt.step([np.ones(3)])      # uses opt.param_groups[0]["lr"]
...     sched.step()                    # sets it for the next step
...     lrs.append(round(sched.get_last_lr()[0], 6))
>>> lrs
[0.085355, 0.05, 0.014645, 0.0]
>>> round(cosine_annealing(2, base_lr=0.1, T_max=4), 6)   # the same schedule as a function
0.05

What they share with torch, value for value:

- Construction with ``last_epoch=-1`` (the default) sets ``group["initial_lr"]`` (setdefault,
  so a second scheduler on the same optimizer keeps the first one's), takes ``base_lrs`` from
  it and performs the initial step (``last_epoch`` -1 -> 0), which writes the step-0 lr into
  every group. ``last_epoch=k >= 0`` resumes: every group must already hold ``initial_lr``.
- ``step()`` increments ``last_epoch`` and writes each group's new lr. Where torch computes the
  new lr recursively from the group's current lr (its "chainable" form: StepLR, MultiStepLR,
  ConstantLR, LinearLR, ExponentialLR, PolynomialLR, CosineAnnealingLR), so do these classes,
  with torch's formulas, so that the values agree with torch's to rounding (1e-12 relative,
  tested lr by lr when torch is installed) and schedulers can be chained on one optimizer.
  The closed forms (the plain functions below) agree with the classes to about 1e-13.
- ``get_last_lr()``, ``state_dict()`` / ``load_state_dict()`` (torch's keys: the scheduler's
  attributes less the optimizer), ``base_lrs``, ``last_epoch``, ``_last_lr``.

Differences from torch:

- Any object with a ``param_groups`` list of dicts, each with a real ``lr``, is accepted as the
  optimizer (fastopt's optimizers); anything else is a TypeError.
- torch's deprecated ``epoch`` argument of ``step()`` does not exist: passing one raises
  TypeError. (To start a schedule part-way, construct it with ``last_epoch``.)
- Arguments are validated at construction, with errors naming the bad value; a refused
  construction, ``step`` or ``load_state_dict`` modifies nothing (torch's OneCycleLR counts the
  refused step past ``total_steps``; this one does not). ``load_state_dict`` checks the keys and
  the per-group list lengths before anything changes.
- torch's warning when ``scheduler.step()`` precedes ``optimizer.step()`` is not given, and
  ``optimizer.step`` is not wrapped.
- ConstantLR with ``factor=0`` restores the base lr at ``total_iters`` (torch divides by zero).

Plain functions (closed forms, ``step`` a non-negative integer, returning a float):
``constant``, ``linear``, ``step_decay``, ``multistep``, ``exponential``, ``polynomial``,
``cosine_annealing``, ``cosine_warm_restarts``, ``one_cycle`` (and ``one_cycle_momentum``),
``warmup_decay`` (``linear_warmup_cosine``, ``linear_warmup_linear``) and ``sequential``.
``WarmupDecayLR`` is the transformer schedule (linear warm-up, then cosine or linear decay) as
a scheduler class; its lr at every step is ``warmup_decay`` of that step.
"""
from __future__ import annotations

import copy
import math
import numbers
import types
from bisect import bisect_right
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

__all__ = [
    "ConstantLR",
    "CosineAnnealingLR",
    "CosineAnnealingWarmRestarts",
    "ExponentialLR",
    "LRScheduler",
    "LambdaLR",
    "LinearLR",
    "MultiStepLR",
    "OneCycleLR",
    "PolynomialLR",
    "ReduceLROnPlateau",
    "SequentialLR",
    "StepLR",
    "WarmupDecayLR",
    "constant",
    "cosine_annealing",
    "cosine_warm_restarts",
    "exponential",
    "linear",
    "linear_warmup_cosine",
    "linear_warmup_linear",
    "multistep",
    "one_cycle",
    "one_cycle_momentum",
    "polynomial",
    "sequential",
    "step_decay",
    "warmup_decay",
]

# ---- argument checks (they only raise) -----------------------------------------------------------

_INT_WORDS = {1: "positive integer", 0: "non-negative integer"}


def _int(name: str, value: Any, low: int) -> int:
    """An integer (not a bool) >= low."""
    what = _INT_WORDS.get(low, f"integer >= {low}")
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"Expected {what} {name}, but got {value!r} of type "
                        f"{type(value).__name__}")
    if value < low:
        raise ValueError(f"Expected {what} {name}, but got {value}")
    return int(value)


def _real(name: str, value: Any, *, low: float | None = None, high: float | None = None,
          low_open: bool = False, high_open: bool = False) -> float:
    """A finite real number (not a bool) in the interval given (closed unless *_open)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"Expected a real number {name}, but got {value!r} of type "
                        f"{type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"Expected a finite {name}, but got {value}")
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        lo = "(-inf" if low is None else ("(" if low_open else "[") + f"{low}"
        hi = "inf)" if high is None else f"{high}" + (")" if high_open else "]")
        raise ValueError(f"Expected {name} in {lo}, {hi}, but got {value}")
    return value


def _per_group(name: str, value: Any, n: int) -> list:
    """torch's _format_param: one value per param group (a list or tuple of n, or one value)."""
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"{name} must have the same length as optimizer.param_groups. "
                             f"{name} has {len(value)} values, param_groups has {n}.")
        return list(value)
    return [value] * n


def _groups(optimizer: Any) -> list[dict]:
    """The optimizer's param groups, each checked to hold a real, non-negative lr."""
    groups = getattr(optimizer, "param_groups", None)
    if not isinstance(groups, list) or not groups \
            or not all(isinstance(g, dict) for g in groups):
        raise TypeError(f"{type(optimizer).__name__} is not an optimizer: expected an object "
                        "with a non-empty param_groups list of dicts (a fastopt optimizer)")
    for i, group in enumerate(groups):
        if "lr" not in group:
            raise ValueError(f"optimizer.param_groups[{i}] has no 'lr'")
        _real(f"optimizer.param_groups[{i}]['lr']", group["lr"], low=0.0)
    return groups


def _check_start(optimizer: Any, last_epoch: Any) -> int:
    """The checks of LRScheduler.__init__, run by every subclass before it changes anything."""
    groups = _groups(optimizer)
    last_epoch = _int("last_epoch", last_epoch, -1)
    if last_epoch != -1:
        for i, group in enumerate(groups):
            if "initial_lr" not in group:
                raise KeyError(f"param 'initial_lr' is not specified in param_groups[{i}] when "
                               "resuming scheduler with last_epoch >= 0 (load the optimizer's "
                               "state first, or leave last_epoch at -1 for a fresh run)")
            _real(f"optimizer.param_groups[{i}]['initial_lr']", group["initial_lr"], low=0.0)
    return last_epoch


def _group_lrs(optimizer: Any) -> list:
    return [group["lr"] for group in optimizer.param_groups]


# ---- the plain functions (closed forms) ----------------------------------------------------------


def constant(step: int, *, base_lr: float, factor: float = 1.0 / 3, total_iters: int = 5) -> float:
    """ConstantLR's lr: ``base_lr * factor`` for ``step < total_iters``, then ``base_lr``."""
    step = _int("step", step, 0)
    factor = _real("factor", factor, low=0.0, high=1.0)
    total_iters = _int("total_iters", total_iters, 1)
    return base_lr * (factor + (step >= total_iters) * (1 - factor))


def linear(step: int, *, base_lr: float, start_factor: float = 1.0 / 3, end_factor: float = 1.0,
           total_iters: int = 5) -> float:
    """LinearLR's lr: the factor goes linearly from ``start_factor`` (step 0) to ``end_factor``
    (step ``total_iters`` and after); the lr is ``base_lr`` times the factor."""
    step = _int("step", step, 0)
    start_factor = _real("start_factor", start_factor, low=0.0, high=1.0, low_open=True)
    end_factor = _real("end_factor", end_factor, low=0.0, high=1.0)
    total_iters = _int("total_iters", total_iters, 1)
    return base_lr * (start_factor + (end_factor - start_factor) * min(total_iters, step)
                      / total_iters)


def step_decay(step: int, *, base_lr: float, step_size: int, gamma: float = 0.1) -> float:
    """StepLR's lr: ``base_lr * gamma ** (step // step_size)``."""
    step = _int("step", step, 0)
    step_size = _int("step_size", step_size, 1)
    gamma = _real("gamma", gamma, low=0.0)
    return base_lr * gamma ** (step // step_size)


def multistep(step: int, *, base_lr: float, milestones: Iterable[int], gamma: float = 0.1) -> float:
    """MultiStepLR's lr: ``base_lr * gamma ** k`` with k the number of milestones <= step (a
    milestone listed twice counts twice)."""
    step = _int("step", step, 0)
    ms = _milestones_counter(milestones)
    gamma = _real("gamma", gamma, low=0.0)
    return base_lr * gamma ** bisect_right(sorted(ms.elements()), step)


def exponential(step: int, *, base_lr: float, gamma: float) -> float:
    """ExponentialLR's lr: ``base_lr * gamma ** step``."""
    step = _int("step", step, 0)
    gamma = _real("gamma", gamma, low=0.0)
    return base_lr * gamma ** step


def polynomial(step: int, *, base_lr: float, total_iters: int = 5, power: float = 1.0) -> float:
    """PolynomialLR's lr: ``base_lr * (1 - min(step, total_iters) / total_iters) ** power``."""
    step = _int("step", step, 0)
    total_iters = _int("total_iters", total_iters, 1)
    power = _real("power", power, low=0.0)
    return base_lr * (1.0 - min(total_iters, step) / total_iters) ** power


def cosine_annealing(step: int, *, base_lr: float, T_max: int, eta_min: float = 0.0) -> float:
    """CosineAnnealingLR's lr: ``eta_min + (base_lr - eta_min) * (1 + cos(pi*step/T_max)) / 2``.

    Like torch's, the schedule does not stop at ``T_max``: it is the periodic cosine, rising
    again to ``base_lr`` at ``2*T_max``.
    """
    step = _int("step", step, 0)
    T_max = _int("T_max", T_max, 1)
    eta_min = _real("eta_min", eta_min, low=0.0)
    return eta_min + (base_lr - eta_min) * (1 + math.cos(math.pi * step / T_max)) / 2


def _restart_position(step: int, T_0: int, T_mult: int) -> tuple[int, int]:
    """(T_cur, T_i) at ``step`` for CosineAnnealingWarmRestarts, in exact integer arithmetic."""
    if T_mult == 1:
        return step % T_0, T_0
    start, period = 0, T_0
    while step >= start + period:
        start += period
        period *= T_mult
    return step - start, period


def cosine_warm_restarts(step: int, *, base_lr: float, T_0: int, T_mult: int = 1,
                         eta_min: float = 0.0) -> float:
    """CosineAnnealingWarmRestarts' lr: a cosine from ``base_lr`` down towards ``eta_min`` over
    ``T_i`` steps, restarting at ``base_lr``; the first period is ``T_0``, each next one
    ``T_mult`` times the last. ``eta_min + (base_lr - eta_min) * (1 + cos(pi*T_cur/T_i)) / 2``
    with ``T_cur`` the steps since the last restart."""
    step = _int("step", step, 0)
    T_0 = _int("T_0", T_0, 1)
    T_mult = _int("T_mult", T_mult, 1)
    eta_min = _real("eta_min", eta_min, low=0.0)
    t_cur, t_i = _restart_position(step, T_0, T_mult)
    return eta_min + (base_lr - eta_min) * (1 + math.cos(math.pi * t_cur / t_i)) / 2


def _anneal(strategy: str, start: float, end: float, pct: float) -> float:
    if strategy == "cos":
        return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)
    return (end - start) * pct + start


def _one_cycle_phases(total_steps: int, pct_start: float, three_phase: bool) -> list[dict]:
    """torch's OneCycleLR phases: the last step of each, and which group keys it goes between."""
    if three_phase:
        return [
            {"end_step": float(pct_start * total_steps) - 1, "start_lr": "initial_lr",
             "end_lr": "max_lr", "start_momentum": "max_momentum",
             "end_momentum": "base_momentum"},
            {"end_step": float(2 * pct_start * total_steps) - 2, "start_lr": "max_lr",
             "end_lr": "initial_lr", "start_momentum": "base_momentum",
             "end_momentum": "max_momentum"},
            {"end_step": total_steps - 1, "start_lr": "initial_lr", "end_lr": "min_lr",
             "start_momentum": "max_momentum", "end_momentum": "max_momentum"},
        ]
    return [
        {"end_step": float(pct_start * total_steps) - 1, "start_lr": "initial_lr",
         "end_lr": "max_lr", "start_momentum": "max_momentum", "end_momentum": "base_momentum"},
        {"end_step": total_steps - 1, "start_lr": "max_lr", "end_lr": "min_lr",
         "start_momentum": "base_momentum", "end_momentum": "max_momentum"},
    ]


def _one_cycle_value(phases: list[dict], strategy: str, values: Mapping, step: int,
                     kind: str) -> float:
    """The lr (kind "lr") or momentum (kind "momentum") at ``step``; ``values`` maps the phase
    keys (initial_lr, max_lr, ...) to numbers."""
    start_step = 0.0
    for i, phase in enumerate(phases):
        end_step = phase["end_step"]
        if step <= end_step or i == len(phases) - 1:
            # a phase of zero length (e.g. total_steps=2, pct_start=0.5) is already complete;
            # torch divides by zero here
            pct = ((step - start_step) / (end_step - start_step)
                   if end_step > start_step else 1.0)
            return _anneal(strategy, values[phase["start_" + kind]], values[phase["end_" + kind]],
                           pct)
        start_step = end_step
    raise AssertionError("unreachable")


def _check_one_cycle(total_steps, pct_start, anneal_strategy, div_factor, final_div_factor,
                     three_phase) -> int:
    total_steps = _int("total_steps", total_steps, 1)
    _real("pct_start", pct_start, low=0.0, high=1.0)
    if anneal_strategy not in ("cos", "linear"):
        raise ValueError("anneal_strategy must be one of 'cos' or 'linear', instead got "
                         f"{anneal_strategy!r}")
    _real("div_factor", div_factor, low=0.0, low_open=True)
    _real("final_div_factor", final_div_factor, low=0.0, low_open=True)
    if not isinstance(three_phase, bool):
        raise TypeError(f"Expected True or False three_phase, but got {three_phase!r}")
    return total_steps


def _check_one_cycle_step(step: Any, total_steps: int) -> int:
    step = _int("step", step, 0)
    if step > total_steps:
        raise ValueError(f"step {step} is past the end of the one-cycle schedule "
                         f"(total_steps={total_steps})")
    return step


def one_cycle(step: int, *, max_lr: float, total_steps: int, pct_start: float = 0.3,
              anneal_strategy: str = "cos", div_factor: float = 25.0,
              final_div_factor: float = 1e4, three_phase: bool = False) -> float:
    """OneCycleLR's lr at ``step`` (0 <= step <= total_steps).

    The lr starts at ``initial_lr = max_lr / div_factor``, anneals ("cos" or "linear") up to
    ``max_lr`` at step ``pct_start * total_steps - 1``, then down to ``min_lr = initial_lr /
    final_div_factor`` at step ``total_steps - 1``. With ``three_phase``: up to ``max_lr``, back
    to ``initial_lr`` at step ``2 * pct_start * total_steps - 2``, then down to ``min_lr``.
    (As in torch, step ``total_steps`` is allowed and continues the last phase's curve.)
    """
    total_steps = _check_one_cycle(total_steps, pct_start, anneal_strategy, div_factor,
                                   final_div_factor, three_phase)
    step = _check_one_cycle_step(step, total_steps)
    max_lr = _real("max_lr", max_lr, low=0.0)
    initial_lr = max_lr / div_factor
    values = {"initial_lr": initial_lr, "max_lr": max_lr, "min_lr": initial_lr / final_div_factor}
    return _one_cycle_value(_one_cycle_phases(total_steps, pct_start, three_phase),
                            anneal_strategy, values, step, "lr")


def one_cycle_momentum(step: int, *, total_steps: int, pct_start: float = 0.3,
                       anneal_strategy: str = "cos", base_momentum: float = 0.85,
                       max_momentum: float = 0.95, three_phase: bool = False) -> float:
    """OneCycleLR's momentum (or beta1) at ``step``: it moves inversely to the lr, from
    ``max_momentum`` down to ``base_momentum`` while the lr rises, and back up after."""
    total_steps = _check_one_cycle(total_steps, pct_start, anneal_strategy, 1.0, 1.0,
                                   three_phase)
    step = _check_one_cycle_step(step, total_steps)
    values = {"base_momentum": _real("base_momentum", base_momentum),
              "max_momentum": _real("max_momentum", max_momentum)}
    return _one_cycle_value(_one_cycle_phases(total_steps, pct_start, three_phase),
                            anneal_strategy, values, step, "momentum")


def _check_warmup_decay(warmup_steps, total_steps, decay, warmup_start_factor) -> tuple[int, int]:
    warmup_steps = _int("warmup_steps", warmup_steps, 0)
    total_steps = _int("total_steps", total_steps, 1)
    if warmup_steps > total_steps:
        raise ValueError(f"Expected warmup_steps <= total_steps, but got warmup_steps="
                         f"{warmup_steps} and total_steps={total_steps}")
    if decay not in ("cosine", "linear"):
        raise ValueError(f"decay must be 'cosine' or 'linear', but got {decay!r}")
    _real("warmup_start_factor", warmup_start_factor, low=0.0, high=1.0)
    return warmup_steps, total_steps


def _warmup_decay(step: int, base_lr: float, warmup_steps: int, total_steps: int, decay: str,
                  min_lr: float, warmup_start_factor: float) -> float:
    if step < warmup_steps:
        return base_lr * (warmup_start_factor + (1.0 - warmup_start_factor) * step / warmup_steps)
    if step >= total_steps:
        return min_lr
    progress = (step - warmup_steps) / (total_steps - warmup_steps)
    if decay == "cosine":
        return min_lr + (base_lr - min_lr) * (1 + math.cos(math.pi * progress)) / 2
    return min_lr + (base_lr - min_lr) * (1.0 - progress)


def warmup_decay(step: int, *, base_lr: float, warmup_steps: int, total_steps: int,
                 decay: str = "cosine", min_lr: float = 0.0,
                 warmup_start_factor: float = 0.0) -> float:
    """The transformer schedule: linear warm-up, then cosine or linear decay.

    - ``step < warmup_steps``: ``base_lr * (f + (1 - f) * step / warmup_steps)`` with ``f =
      warmup_start_factor`` (so ``f * base_lr`` at step 0, 0 by default);
    - ``warmup_steps <= step < total_steps``: with ``p = (step - warmup_steps) / (total_steps -
      warmup_steps)``, ``min_lr + (base_lr - min_lr) * (1 + cos(pi*p)) / 2`` ("cosine") or
      ``min_lr + (base_lr - min_lr) * (1 - p)`` ("linear"), so ``base_lr`` at ``warmup_steps``;
    - ``step >= total_steps``: ``min_lr``.
    """
    step = _int("step", step, 0)
    warmup_steps, total_steps = _check_warmup_decay(warmup_steps, total_steps, decay,
                                                    warmup_start_factor)
    min_lr = _real("min_lr", min_lr, low=0.0)
    return _warmup_decay(step, base_lr, warmup_steps, total_steps, decay, min_lr,
                         warmup_start_factor)


def linear_warmup_cosine(step: int, *, base_lr: float, warmup_steps: int, total_steps: int,
                         min_lr: float = 0.0, warmup_start_factor: float = 0.0) -> float:
    """``warmup_decay(..., decay="cosine")``: linear warm-up, then cosine decay to min_lr."""
    return warmup_decay(step, base_lr=base_lr, warmup_steps=warmup_steps,
                        total_steps=total_steps, decay="cosine", min_lr=min_lr,
                        warmup_start_factor=warmup_start_factor)


def linear_warmup_linear(step: int, *, base_lr: float, warmup_steps: int, total_steps: int,
                         min_lr: float = 0.0, warmup_start_factor: float = 0.0) -> float:
    """``warmup_decay(..., decay="linear")``: linear warm-up, then linear decay to min_lr."""
    return warmup_decay(step, base_lr=base_lr, warmup_steps=warmup_steps,
                        total_steps=total_steps, decay="linear", min_lr=min_lr,
                        warmup_start_factor=warmup_start_factor)


def sequential(step: int, *, schedules: Sequence[Callable[[int], float]],
               milestones: Sequence[int]) -> float:
    """SequentialLR's lr: ``schedules[i](step - milestones[i-1])`` for the i with
    ``milestones[i-1] <= step < milestones[i]`` (each schedule restarts from its step 0 at its
    milestone). E.g. ``sequential(s, schedules=[partial(linear, base_lr=0.1, total_iters=5),
    partial(cosine_annealing, base_lr=0.1, T_max=95)], milestones=[5])``."""
    step = _int("step", step, 0)
    schedules, milestones = _check_sequence(schedules, milestones)
    idx = bisect_right(milestones, step)
    return schedules[idx](step - (milestones[idx - 1] if idx else 0))


def _check_sequence(schedules: Any, milestones: Any) -> tuple[list, list[int]]:
    if not isinstance(schedules, (list, tuple)) or not schedules:
        raise ValueError(f"Expected a non-empty list of schedules, but got {schedules!r}")
    if not isinstance(milestones, (list, tuple)):
        raise TypeError(f"Expected a list of milestones, but got {milestones!r}")
    milestones = [_int(f"milestones[{i}]", m, 0) for i, m in enumerate(milestones)]
    if len(milestones) != len(schedules) - 1:
        raise ValueError("Sequential Schedulers expects number of schedulers provided to be one "
                         "more than the number of milestone points, but got number of "
                         f"schedulers {len(schedules)} and the number of milestones to be "
                         f"equal to {len(milestones)}")
    if any(a > b for a, b in zip(milestones, milestones[1:])):
        raise ValueError(f"Expected milestones in increasing order, but got {milestones}")
    return list(schedules), milestones


def _milestones_counter(milestones: Any) -> Counter:
    if isinstance(milestones, (str, bytes)) or not isinstance(milestones, Iterable):
        raise TypeError(f"Expected an iterable of non-negative integer milestones, but got "
                        f"{milestones!r}")
    ms = list(milestones)
    for i, m in enumerate(ms):
        _int(f"milestones[{i}]", m, 0)
    return Counter(int(m) for m in ms)


# ---- the scheduler classes -----------------------------------------------------------------------

# attributes torch keeps in its schedulers' __dict__ (and so in their state dicts) that are
# transient flags here: ignored by load_state_dict, never saved
_TORCH_FLAGS = ("_get_lr_called_within_step", "_is_initial")


class LRScheduler:
    """Base class (torch.optim.lr_scheduler.LRScheduler's interface).

    Subclasses set their own attributes, then call ``super().__init__(optimizer, last_epoch)``,
    and implement ``get_lr()``: the lrs for ``self.last_epoch``, one per param group, computed
    (for the chainable schedules) from the groups' current lrs. ``_get_closed_form_lr()``, where
    defined, gives them from ``base_lrs`` alone (used by SequentialLR at its milestones).
    """

    _is_initial = False
    _per_group_keys: tuple[str, ...] = ("base_lrs", "_last_lr")

    optimizer: Any
    base_lrs: list
    last_epoch: int
    _step_count: int
    _last_lr: list

    def __init__(self, optimizer: Any, last_epoch: int = -1) -> None:
        last_epoch = _check_start(optimizer, last_epoch)
        groups = optimizer.param_groups
        if last_epoch == -1:
            for group in groups:
                group.setdefault("initial_lr", group["lr"])
        self.optimizer = optimizer
        self.base_lrs = [group["initial_lr"] for group in groups]
        self.last_epoch = last_epoch
        self._initial_step()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(last_epoch={self.last_epoch}, lr={self._last_lr})"

    def _initial_step(self) -> None:
        self._step_count = 0
        self._is_initial = True
        try:
            self.step()
        finally:
            del self._is_initial        # back to the class's False

    def get_lr(self) -> list:
        """The lrs for ``last_epoch`` (called by ``step()``; read ``get_last_lr()`` instead)."""
        raise NotImplementedError

    def get_last_lr(self) -> list:
        """The lr of each param group as the last ``step()`` (or the construction) left it."""
        return list(self._last_lr)

    def step(self, epoch: None = None) -> None:
        """Advance one step: ``last_epoch += 1`` and write each group's lr for it."""
        if epoch is not None:
            raise TypeError(f"{type(self).__name__}.step() takes no epoch argument (torch's is "
                            f"deprecated; got epoch={epoch!r}): call step() once per step, or "
                            "construct the scheduler with last_epoch=... to start part-way")
        self._check_groups()
        self._step_count += 1
        try:
            self._update_lr()
        except BaseException:
            self._step_count -= 1
            raise

    def _check_groups(self) -> None:
        n = len(self.optimizer.param_groups)
        if n != len(self.base_lrs):
            raise ValueError(f"the optimizer has {n} param groups, but {type(self).__name__} "
                             f"was built for {len(self.base_lrs)} (a group was added after the "
                             "scheduler was created?)")

    def _update_lr(self, epoch: int | None = None) -> None:
        """Set last_epoch (to last_epoch + 1, or to ``epoch`` with the closed form where there
        is one: SequentialLR's restart at a milestone) and write the lrs; on error, nothing
        changes."""
        old = self.last_epoch
        self.last_epoch = old + 1 if epoch is None else epoch
        try:
            closed = getattr(self, "_get_closed_form_lr", None)
            values = closed() if epoch is not None and closed is not None else self.get_lr()
            if len(values) != len(self.optimizer.param_groups):
                raise ValueError(f"{type(self).__name__} computed {len(values)} lrs for "
                                 f"{len(self.optimizer.param_groups)} param groups")
        except BaseException:
            self.last_epoch = old
            raise
        for group, lr in zip(self.optimizer.param_groups, values):
            group["lr"] = lr
        self._update_extra()
        self._last_lr = _group_lrs(self.optimizer)

    def _update_extra(self) -> None:
        """Hook: after the lrs are written (OneCycleLR writes the momentum here)."""

    # ---- state dicts -----------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The scheduler's state: its attributes (torch's names) less the optimizer, copied."""
        return {k: copy.deepcopy(v) for k, v in self.__dict__.items() if k != "optimizer"}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Load a state dict made by ``state_dict()`` of a scheduler of this class (torch's
        scheduler's state dict too). The keys and per-group lengths are checked first: if they
        do not fit, ValueError or TypeError is raised and nothing changes. Values are copied."""
        self._apply_state(self._checked_state(state_dict))

    def _checked_state(self, state_dict: Any) -> dict[str, Any]:
        name = type(self).__name__
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"{name}.load_state_dict: expected a mapping, got "
                            f"{type(state_dict).__name__}")
        new = {k: v for k, v in state_dict.items() if k not in _TORCH_FLAGS}
        mine = {k for k in self.__dict__ if k != "optimizer"}
        missing, unknown = sorted(mine - set(new)), sorted(set(new) - mine, key=str)
        if missing:
            raise ValueError(f"{name}.load_state_dict: the state dict lacks {missing} (is it "
                             f"the state dict of a {name}?)")
        if unknown:
            raise ValueError(f"{name}.load_state_dict: unexpected keys {unknown} (is it the "
                             f"state dict of a {name}?)")
        _int(f"{name}.load_state_dict: last_epoch", new["last_epoch"], -1)
        n = len(self.optimizer.param_groups)
        for key in self._per_group_keys:
            if key in new and (not isinstance(new[key], (list, tuple)) or len(new[key]) != n):
                raise ValueError(f"{name}.load_state_dict: {key!r} must be a list of one value "
                                 f"per param group ({n}), got {new[key]!r}")
        return copy.deepcopy(new)

    def _apply_state(self, new: dict[str, Any]) -> None:
        for key in self._per_group_keys:
            if key in new:
                new[key] = list(new[key])
        self.__dict__.update(new)


class LambdaLR(LRScheduler):
    """``lr = base_lr * lr_lambda(last_epoch)`` (torch.optim.lr_scheduler.LambdaLR).

    ``lr_lambda``: a function of the step, or a list of them, one per param group. Only callable
    objects' ``__dict__`` are saved by ``state_dict()`` (functions and lambdas: None), as in torch.
    """

    _per_group_keys = ("base_lrs", "_last_lr", "lr_lambdas")

    def __init__(self, optimizer: Any, lr_lambda: Callable[[int], float]
                 | list[Callable[[int], float]], last_epoch: int = -1) -> None:
        n = len(_groups(optimizer))
        if isinstance(lr_lambda, (list, tuple)):
            if len(lr_lambda) != n:
                raise ValueError(f"Expected {n} lr_lambdas, but got {len(lr_lambda)}")
            lambdas = list(lr_lambda)
        else:
            lambdas = [lr_lambda] * n
        for i, fn in enumerate(lambdas):
            if not callable(fn):
                raise TypeError(f"lr_lambda should be a function, but got {type(fn).__name__}"
                                + (f" at index {i}" if n > 1 else ""))
        _check_start(optimizer, last_epoch)
        self.lr_lambdas = lambdas
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list:
        return [base_lr * fn(self.last_epoch)
                for fn, base_lr in zip(self.lr_lambdas, self.base_lrs)]

    def state_dict(self) -> dict[str, Any]:
        state = {k: copy.deepcopy(v) for k, v in self.__dict__.items()
                 if k not in ("optimizer", "lr_lambdas")}
        state["lr_lambdas"] = [None if isinstance(fn, types.FunctionType)
                               else copy.deepcopy(fn.__dict__) for fn in self.lr_lambdas]
        return state

    def _checked_state(self, state_dict: Any) -> dict[str, Any]:
        new = super()._checked_state(state_dict)
        for i, d in enumerate(new["lr_lambdas"]):
            if d is not None and not isinstance(d, dict):
                raise TypeError(f"LambdaLR.load_state_dict: lr_lambdas[{i}] must be None or a "
                                f"dict, got {type(d).__name__}")
        return new

    def _apply_state(self, new: dict[str, Any]) -> None:
        saved = new.pop("lr_lambdas")
        super()._apply_state(new)
        for fn, d in zip(self.lr_lambdas, saved):
            if d is not None:
                fn.__dict__.update(d)


class StepLR(LRScheduler):
    """Multiply the lr by ``gamma`` every ``step_size`` steps (torch.optim.lr_scheduler.StepLR).

    Closed form: ``step_decay(step, base_lr=..., step_size=..., gamma=...)``.
    """

    def __init__(self, optimizer: Any, step_size: int, gamma: float = 0.1,
                 last_epoch: int = -1) -> None:
        self.step_size = _int("step_size", step_size, 1)
        self.gamma = _real("gamma", gamma, low=0.0)
        _check_start(optimizer, last_epoch)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list:
        if self.last_epoch == 0 or self.last_epoch % self.step_size != 0:
            return _group_lrs(self.optimizer)
        return [lr * self.gamma for lr in _group_lrs(self.optimizer)]

    def _get_closed_form_lr(self) -> list:
        return [base_lr * self.gamma ** (self.last_epoch // self.step_size)
                for base_lr in self.base_lrs]


class MultiStepLR(LRScheduler):
    """Multiply the lr by ``gamma`` at each milestone (torch.optim.lr_scheduler.MultiStepLR);
    a milestone listed k times multiplies by ``gamma ** k``.

    Closed form: ``multistep(step, base_lr=..., milestones=..., gamma=...)``.
    """

    def __init__(self, optimizer: Any, milestones: Iterable[int], gamma: float = 0.1,
                 last_epoch: int = -1) -> None:
        counter = _milestones_counter(milestones)
        gamma = _real("gamma", gamma, low=0.0)
        _check_start(optimizer, last_epoch)
        self.milestones = counter
        self.gamma = gamma
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list:
        if self.last_epoch not in self.milestones:
            return _group_lrs(self.optimizer)
        factor = self.gamma ** self.milestones[self.last_epoch]
        return [lr * factor for lr in _group_lrs(self.optimizer)]

    def _get_closed_form_lr(self) -> list:
        ms = sorted(self.milestones.elements())
        return [base_lr * self.gamma ** bisect_right(ms, self.last_epoch)
                for base_lr in self.base_lrs]


class ConstantLR(LRScheduler):
    """``base_lr * factor`` until step ``total_iters``, then ``base_lr``
    (torch.optim.lr_scheduler.ConstantLR). ``0 <= factor <= 1``.

    Closed form: ``constant(step, base_lr=..., factor=..., total_iters=...)``.
    """

    def __init__(self, optimizer: Any, factor: float = 1.0 / 3, total_iters: int = 5,
                 last_epoch: int = -1) -> None:
        if isinstance(factor, numbers.Real) and not isinstance(factor, bool) \
                and not 0 <= factor <= 1:
            raise ValueError("Constant multiplicative factor expected to be between 0 and 1, "
                             f"but got {factor}")
        self.factor = _real("factor", factor, low=0.0, high=1.0)
        self.total_iters = _int("total_iters", total_iters, 1)
        _check_start(optimizer, last_epoch)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list:
        lrs = _group_lrs(self.optimizer)
        if self.last_epoch == 0:
            return [lr * self.factor for lr in lrs]
        if self.last_epoch != self.total_iters:
            return lrs
        if self.factor == 0:        # torch divides by zero here; restore the base lrs
            return list(self.base_lrs)
        return [lr * (1.0 / self.factor) for lr in lrs]

    def _get_closed_form_lr(self) -> list:
        return [base_lr * (self.factor + (self.last_epoch >= self.total_iters) * (1 - self.factor))
                for base_lr in self.base_lrs]


class LinearLR(LRScheduler):
    """The lr factor goes linearly from ``start_factor`` at step 0 to ``end_factor`` at step
    ``total_iters``, then stays (torch.optim.lr_scheduler.LinearLR). ``0 < start_factor <= 1``,
    ``0 <= end_factor <= 1``.

    Closed form: ``linear(step, base_lr=..., start_factor=..., end_factor=..., total_iters=...)``.
    """

    def __init__(self, optimizer: Any, start_factor: float = 1.0 / 3, end_factor: float = 1.0,
                 total_iters: int = 5, last_epoch: int = -1) -> None:
        self.start_factor = _real("start_factor", start_factor, low=0.0, high=1.0,
                                  low_open=True)
        self.end_factor = _real("end_factor", end_factor, low=0.0, high=1.0)
        self.total_iters = _int("total_iters", total_iters, 1)
        _check_start(optimizer, last_epoch)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list:
        lrs = _group_lrs(self.optimizer)
        if self.last_epoch == 0:
            return [lr * self.start_factor for lr in lrs]
        if self._is_initial or self.last_epoch > self.total_iters:
            return lrs
        delta = self.end_factor - self.start_factor
        factor = 1.0 + delta / (self.total_iters * self.start_factor
                                + (self.last_epoch - 1) * delta)
        return [lr * factor for lr in lrs]

    def _get_closed_form_lr(self) -> list:
        return [base_lr * (self.start_factor + (self.end_factor - self.start_factor)
                           * min(self.total_iters, self.last_epoch) / self.total_iters)
                for base_lr in self.base_lrs]


class ExponentialLR(LRScheduler):
    """Multiply the lr by ``gamma`` every step (torch.optim.lr_scheduler.ExponentialLR).

    Closed form: ``exponential(step, base_lr=..., gamma=...)``.
    """

    def __init__(self, optimizer: Any, gamma: float, last_epoch: int = -1) -> None:
        self.gamma = _real("gamma", gamma, low=0.0)
        _check_start(optimizer, last_epoch)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list:
        lrs = _group_lrs(self.optimizer)
        if self._is_initial:
            return lrs
        return [lr * self.gamma for lr in lrs]

    def _get_closed_form_lr(self) -> list:
        return [base_lr * self.gamma ** self.last_epoch for base_lr in self.base_lrs]


class PolynomialLR(LRScheduler):
    """``base_lr * (1 - step / total_iters) ** power`` up to ``total_iters`` (0 from there on)
    (torch.optim.lr_scheduler.PolynomialLR). ``power >= 0``.

    Closed form: ``polynomial(step, base_lr=..., total_iters=..., power=...)``.
    """

    def __init__(self, optimizer: Any, total_iters: int = 5, power: float = 1.0,
                 last_epoch: int = -1) -> None:
        self.total_iters = _int("total_iters", total_iters, 1)
        self.power = _real("power", power, low=0.0)
        _check_start(optimizer, last_epoch)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list:
        lrs = _group_lrs(self.optimizer)
        if self._is_initial or self.last_epoch > self.total_iters:
            return lrs
        e, t = self.last_epoch, self.total_iters
        factor = ((1.0 - e / t) / (1.0 - (e - 1) / t)) ** self.power
        return [lr * factor for lr in lrs]

    def _get_closed_form_lr(self) -> list:
        return [base_lr * (1.0 - min(self.total_iters, self.last_epoch) / self.total_iters)
                ** self.power for base_lr in self.base_lrs]


class CosineAnnealingLR(LRScheduler):
    """Cosine annealing from ``base_lr`` to ``eta_min`` over ``T_max`` steps
    (torch.optim.lr_scheduler.CosineAnnealingLR), computed with torch's recursive form
    ``lr_t = eta_min + (lr_{t-1} - eta_min) * (1 + cos(pi*t/T_max)) / (1 + cos(pi*(t-1)/T_max))``
    (so that it chains with other schedulers), equal to the closed form ``cosine_annealing``
    when the lrs are not changed from outside. The schedule is periodic: it rises again after
    ``T_max``.
    """

    def __init__(self, optimizer: Any, T_max: int, eta_min: float = 0.0,
                 last_epoch: int = -1) -> None:
        self.T_max = _int("T_max", T_max, 1)
        self.eta_min = _real("eta_min", eta_min, low=0.0)
        _check_start(optimizer, last_epoch)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list:
        e, t, eta_min = self.last_epoch, self.T_max, self.eta_min
        lrs = _group_lrs(self.optimizer)
        if self._is_initial:
            return lrs
        if self._step_count == 1 and e > 0:
            return [eta_min + (base_lr - eta_min) * (1 + math.cos(e * math.pi / t)) / 2
                    for base_lr in self.base_lrs]
        if (e - 1 - t) % (2 * t) == 0:      # leaving the minimum: the ratio below is 0/0
            rise = (1 - math.cos(math.pi / t)) / 2
            return [lr + (base_lr - eta_min) * rise for lr, base_lr in zip(lrs, self.base_lrs)]
        ratio = (1 + math.cos(math.pi * e / t)) / (1 + math.cos(math.pi * (e - 1) / t))
        return [ratio * (lr - eta_min) + eta_min for lr in lrs]

    def _get_closed_form_lr(self) -> list:
        return [self.eta_min + (base_lr - self.eta_min)
                * (1 + math.cos(math.pi * self.last_epoch / self.T_max)) / 2
                for base_lr in self.base_lrs]


class CosineAnnealingWarmRestarts(LRScheduler):
    """Cosine annealing with warm restarts (SGDR; torch.optim.lr_scheduler's class of that
    name): ``eta_min + (base_lr - eta_min) * (1 + cos(pi * T_cur / T_i)) / 2``, where ``T_cur``
    counts the steps since the last restart and the period ``T_i`` starts at ``T_0`` and is
    multiplied by ``T_mult`` at each restart.

    Closed form: ``cosine_warm_restarts(step, base_lr=..., T_0=..., T_mult=..., eta_min=...)``.
    """

    def __init__(self, optimizer: Any, T_0: int, T_mult: int = 1, eta_min: float = 0.0,
                 last_epoch: int = -1) -> None:
        self.T_0 = _int("T_0", T_0, 1)
        self.T_i = self.T_0
        self.T_mult = _int("T_mult", T_mult, 1)
        self.eta_min = _real("eta_min", eta_min, low=0.0)
        self.T_cur = _check_start(optimizer, last_epoch)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list:
        cos = (1 + math.cos(math.pi * self.T_cur / self.T_i)) / 2
        return [self.eta_min + (base_lr - self.eta_min) * cos for base_lr in self.base_lrs]

    def step(self, epoch: None = None) -> None:
        """Advance one step (restarting the cosine when ``T_cur`` reaches ``T_i``)."""
        if epoch is not None:
            raise TypeError("CosineAnnealingWarmRestarts.step() takes no epoch argument "
                            f"(torch's is deprecated; got epoch={epoch!r}): call step() once "
                            "per step, or construct the scheduler with last_epoch=...")
        self._check_groups()
        old = (self.last_epoch, self.T_cur, self.T_i)
        if self.last_epoch < 0:
            self.T_cur, self.T_i = 0, self.T_0
        else:
            self.T_cur += 1
            if self.T_cur >= self.T_i:
                self.T_cur %= self.T_i
                self.T_i *= self.T_mult
        try:
            self._update_lr(self.last_epoch + 1 if self.last_epoch >= 0 else 0)
        except BaseException:
            self.last_epoch, self.T_cur, self.T_i = old
            raise


class SequentialLR(LRScheduler):
    """Run ``schedulers`` one after the other, switching at each of ``milestones``
    (torch.optim.lr_scheduler.SequentialLR): ``schedulers[i]`` drives the lr from step
    ``milestones[i-1]`` on, restarted there from its own step 0 (its closed form).

    All schedulers must be built on ``optimizer`` (in the order of the sequence, as with torch:
    each construction performs its initial step; SequentialLR then rewinds them and restarts
    the first). ReduceLROnPlateau cannot be part of a sequence.

    Plain function: ``sequential(step, schedules=[...], milestones=[...])``.
    """

    _per_group_keys = ("_last_lr",)

    def __init__(self, optimizer: Any, schedulers: list[LRScheduler], milestones: list[int],
                 last_epoch: int = -1) -> None:
        name = type(self).__name__
        groups = _groups(optimizer)
        if not isinstance(schedulers, (list, tuple)) or len(schedulers) < 1:
            raise ValueError(f"{name} expects at least one scheduler, but got "
                             f"{schedulers!r}")
        for i, sched in enumerate(schedulers):
            if not isinstance(sched, LRScheduler):
                raise TypeError(f"{name}: schedulers[{i}] is a {type(sched).__name__}, not a "
                                "fastopt.schedules scheduler")
            if isinstance(sched, ReduceLROnPlateau):
                raise ValueError(f"{name} does not support `ReduceLROnPlateau` scheduler as it "
                                 "requires additional kwargs to be specified when calling "
                                 f"`step`, but got one at index {i} in the given schedulers "
                                 "sequence.")
            if sched.optimizer is not optimizer:
                raise ValueError(f"{name} expects all schedulers to belong to the same "
                                 f"optimizer, but got scheduler {type(sched).__name__} at "
                                 f"index {i} built on another optimizer")
        _, milestones = _check_sequence(schedulers, milestones)
        last_epoch = _int("last_epoch", last_epoch, -1)
        for i, group in enumerate(groups):
            if "initial_lr" not in group:
                raise KeyError(f"param 'initial_lr' is not specified in param_groups[{i}]")
        self._schedulers = list(schedulers)
        self._milestones = milestones
        self.last_epoch = last_epoch + 1
        self.optimizer = optimizer
        for group in groups:
            group["lr"] = group["initial_lr"]
        self.recursive_undo()
        idx = bisect_right(self._milestones, 0)
        self._schedulers[idx]._initial_step()
        self._last_lr = self._schedulers[idx].get_last_lr()

    def recursive_undo(self, sched: Any = None) -> None:
        """Rewind every (nested) scheduler by one step (undoing its initial step)."""
        scheds = self if sched is None else sched
        if hasattr(scheds, "_schedulers"):
            for s in scheds._schedulers:
                self.recursive_undo(s)
        elif hasattr(scheds, "last_epoch"):
            scheds.last_epoch -= 1

    def step(self, epoch: None = None) -> None:
        """Advance one step: the scheduler of the current stretch steps (or restarts from its
        step 0 on the step of its milestone)."""
        if epoch is not None:
            raise TypeError(f"SequentialLR.step() takes no epoch argument (got epoch={epoch!r})")
        last_epoch = self.last_epoch + 1
        idx = bisect_right(self._milestones, last_epoch)
        scheduler = self._schedulers[idx]
        if idx > 0 and self._milestones[idx - 1] == last_epoch:
            scheduler._check_groups()
            scheduler._update_lr(0)
        else:
            scheduler.step()
        self.last_epoch = last_epoch
        self._last_lr = scheduler.get_last_lr()

    def state_dict(self) -> dict[str, Any]:
        state = {k: copy.deepcopy(v) for k, v in self.__dict__.items()
                 if k not in ("optimizer", "_schedulers")}
        state["_schedulers"] = [s.state_dict() for s in self._schedulers]
        return state

    def _checked_state(self, state_dict: Any) -> dict[str, Any]:
        if isinstance(state_dict, Mapping) and "_schedulers" in state_dict:
            subs = state_dict["_schedulers"]
            if not isinstance(subs, (list, tuple)) or len(subs) != len(self._schedulers):
                raise ValueError(f"SequentialLR.load_state_dict: '_schedulers' must be a list "
                                 f"of {len(self._schedulers)} state dicts")
            checked = [s._checked_state(d) for s, d in zip(self._schedulers, subs)]
            state_dict = {k: v for k, v in state_dict.items() if k != "_schedulers"}
        else:
            checked = None
        new = super()._checked_state(state_dict if checked is None
                                     else {**state_dict, "_schedulers": None})
        new["_schedulers"] = checked
        return new

    def _apply_state(self, new: dict[str, Any]) -> None:
        subs = new.pop("_schedulers")
        super()._apply_state(new)
        for s, d in zip(self._schedulers, subs):
            s._apply_state(d)


class OneCycleLR(LRScheduler):
    """The 1cycle policy (torch.optim.lr_scheduler.OneCycleLR): the lr anneals from
    ``max_lr / div_factor`` up to ``max_lr`` over the first ``pct_start`` of ``total_steps``,
    then down to ``max_lr / div_factor / final_div_factor``; ``three_phase`` returns to the
    initial lr symmetrically before the final descent. ``anneal_strategy``: "cos" or "linear".

    Give ``total_steps``, or ``epochs`` and ``steps_per_epoch``. Construction writes
    ``initial_lr``, ``max_lr`` and ``min_lr`` into each group (overwriting ``initial_lr``), as
    torch does. ``max_lr``, ``base_momentum`` and ``max_momentum`` may be lists (one per group).

    ``cycle_momentum`` (default True) moves the momentum inversely to the lr between
    ``max_momentum`` and ``base_momentum``: ``betas[0]`` when the optimizer's defaults (or,
    without ``defaults``, its groups) have ``betas`` (Adam, AdamW), else ``momentum`` (SGD).

    Stepping past ``total_steps`` raises ValueError (and changes nothing).
    Closed forms: ``one_cycle(step, ...)`` and ``one_cycle_momentum(step, ...)``.
    """

    def __init__(self, optimizer: Any, max_lr: float | list[float], total_steps: int | None = None,
                 epochs: int | None = None, steps_per_epoch: int | None = None,
                 pct_start: float = 0.3, anneal_strategy: str = "cos",
                 cycle_momentum: bool = True, base_momentum: float | list[float] = 0.85,
                 max_momentum: float | list[float] = 0.95, div_factor: float = 25.0,
                 final_div_factor: float = 1e4, three_phase: bool = False,
                 last_epoch: int = -1) -> None:
        groups = _groups(optimizer)
        n = len(groups)
        if total_steps is not None:
            total = _int("total_steps", total_steps, 1)
        elif epochs is not None and steps_per_epoch is not None:
            total = _int("epochs", epochs, 1) * _int("steps_per_epoch", steps_per_epoch, 1)
        else:
            raise ValueError("You must define either total_steps OR (epochs AND steps_per_epoch)")
        _check_one_cycle(total, pct_start, anneal_strategy, div_factor, final_div_factor,
                         three_phase)
        max_lrs = [_real(f"max_lr[{i}]" if isinstance(max_lr, (list, tuple)) else "max_lr",
                         v, low=0.0) for i, v in enumerate(_per_group("max_lr", max_lr, n))]
        if not isinstance(cycle_momentum, bool):
            raise TypeError(f"Expected True or False cycle_momentum, but got {cycle_momentum!r}")
        use_beta1 = False
        if cycle_momentum:
            defaults = getattr(optimizer, "defaults", None)
            keys = set(defaults) if isinstance(defaults, Mapping) \
                else set.intersection(*(set(g) for g in groups))
            if "momentum" not in keys and "betas" not in keys:
                raise ValueError("optimizer must support momentum or beta1 with "
                                 "`cycle_momentum` option enabled")
            use_beta1 = "betas" in keys
            for i, group in enumerate(groups):
                key = "betas" if use_beta1 else "momentum"
                if key not in group:
                    raise ValueError(f"optimizer.param_groups[{i}] has no {key!r} to cycle")
                if use_beta1 and (not isinstance(group["betas"], (tuple, list))
                                  or len(group["betas"]) < 1):
                    raise TypeError(f"optimizer.param_groups[{i}]['betas']: expected a pair "
                                    f"(beta1, beta2), got {group['betas']!r}")
            max_momentums = [_real("max_momentum", v) for v in
                             _per_group("max_momentum", max_momentum, n)]
            base_momentums = [_real("base_momentum", v) for v in
                              _per_group("base_momentum", base_momentum, n)]
        last_epoch = _check_start(optimizer, last_epoch)
        if last_epoch >= 0:
            for i, group in enumerate(groups):
                for key in ("max_lr", "min_lr") + (("max_momentum", "base_momentum")
                                                   if cycle_momentum else ()):
                    if key not in group:
                        raise KeyError(f"param {key!r} is not specified in param_groups[{i}] "
                                       "when resuming OneCycleLR with last_epoch >= 0")
        # everything checked: from here on, the optimizer's groups change
        self.total_steps = total
        self._schedule_phases = _one_cycle_phases(total, pct_start, three_phase)
        self._anneal_func_type = anneal_strategy
        if last_epoch == -1:
            for group, lr in zip(groups, max_lrs):
                group["initial_lr"] = lr / div_factor
                group["max_lr"] = lr
                group["min_lr"] = group["initial_lr"] / final_div_factor
        self.cycle_momentum = cycle_momentum
        if cycle_momentum:
            self.use_beta1 = use_beta1
            if last_epoch == -1:
                for group, m_max, m_base in zip(groups, max_momentums, base_momentums):
                    self._set_momentum(group, m_max)
                    group["max_momentum"] = m_max
                    group["base_momentum"] = m_base
        super().__init__(optimizer, last_epoch)

    def _set_momentum(self, group: dict, value: float) -> None:
        if self.use_beta1:
            group["betas"] = (value, *group["betas"][1:])
        else:
            group["momentum"] = value

    def get_lr(self) -> list:
        if self.last_epoch > self.total_steps:
            raise ValueError(f"OneCycleLR: tried to step {self.last_epoch} times, but "
                             f"total_steps is {self.total_steps} (the cycle is over)")
        return [_one_cycle_value(self._schedule_phases, self._anneal_func_type, group,
                                 self.last_epoch, "lr") for group in self.optimizer.param_groups]

    def _update_extra(self) -> None:
        if self.cycle_momentum:
            for group in self.optimizer.param_groups:
                self._set_momentum(group, _one_cycle_value(
                    self._schedule_phases, self._anneal_func_type, group, self.last_epoch,
                    "momentum"))


class WarmupDecayLR(LRScheduler):
    """The transformer schedule: linear warm-up over ``warmup_steps``, then cosine or linear
    decay (``decay``) to ``min_lr`` at ``total_steps``, and ``min_lr`` after.

    Each group's lr at step t is ``warmup_decay(t, base_lr=base_lrs[i], warmup_steps=...,
    total_steps=..., decay=..., min_lr=min_lrs[i], warmup_start_factor=...)``: it starts at
    ``warmup_start_factor * base_lr`` (0 by default), reaches ``base_lr`` at ``warmup_steps``.
    ``min_lr``: one value, or a list with one per param group.
    """

    _per_group_keys = ("base_lrs", "_last_lr", "min_lrs")

    def __init__(self, optimizer: Any, warmup_steps: int, total_steps: int,
                 decay: str = "cosine", min_lr: float | list[float] = 0.0,
                 warmup_start_factor: float = 0.0, last_epoch: int = -1) -> None:
        n = len(_groups(optimizer))
        self.warmup_steps, self.total_steps = _check_warmup_decay(
            warmup_steps, total_steps, decay, warmup_start_factor)
        self.decay = decay
        self.warmup_start_factor = warmup_start_factor
        self.min_lrs = [_real("min_lr", v, low=0.0) for v in _per_group("min_lr", min_lr, n)]
        _check_start(optimizer, last_epoch)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list:
        return [_warmup_decay(self.last_epoch, base_lr, self.warmup_steps, self.total_steps,
                              self.decay, min_lr, self.warmup_start_factor)
                for base_lr, min_lr in zip(self.base_lrs, self.min_lrs)]

    def _get_closed_form_lr(self) -> list:
        return self.get_lr()


class ReduceLROnPlateau(LRScheduler):
    """Reduce the lr by ``factor`` when a metric has stopped improving
    (torch.optim.lr_scheduler.ReduceLROnPlateau); ``step(metrics)`` once per evaluation.

    ``mode`` "min" (lower is better) or "max"; a value is an improvement over the best so far
    when it beats it by ``threshold``: relatively (``threshold_mode="rel"``: below
    ``best * (1 - threshold)`` in min mode, above ``best * (1 + threshold)`` in max mode) or
    absolutely ("abs": ``best -/+ threshold``). After more than ``patience`` steps without
    improvement each group's lr becomes ``max(lr * factor, min_lr)`` (unless that changes it by
    ``eps`` or less), and ``cooldown`` steps follow in which bad steps are not counted.
    ``min_lr``: one value, or a list with one per param group. Unlike the other schedulers it
    neither sets ``initial_lr`` nor changes the lr at construction.
    """

    _per_group_keys = ("_last_lr",)

    def __init__(self, optimizer: Any, mode: str = "min", factor: float = 0.1,
                 patience: int = 10, threshold: float = 1e-4, threshold_mode: str = "rel",
                 cooldown: int = 0, min_lr: float | list[float] = 0, eps: float = 1e-8) -> None:
        groups = _groups(optimizer)
        if isinstance(factor, numbers.Real) and not isinstance(factor, bool) and factor >= 1.0:
            raise ValueError(f"Factor should be < 1.0, but got {factor}")
        factor = _real("factor", factor, low=0.0, high=1.0, high_open=True)
        if isinstance(min_lr, (list, tuple)):
            if len(min_lr) != len(groups):
                raise ValueError(f"expected {len(groups)} min_lrs, got {len(min_lr)}")
            default_min_lr = None
            min_lrs = [_real(f"min_lr[{i}]", v, low=0.0) for i, v in enumerate(min_lr)]
        else:
            default_min_lr = _real("min_lr", min_lr, low=0.0)
            min_lrs = [default_min_lr] * len(groups)
        patience = _int("patience", patience, 0)
        cooldown = _int("cooldown", cooldown, 0)
        eps = _real("eps", eps, low=0.0)
        threshold = _real("threshold", threshold, low=0.0)
        self._check_modes(mode, threshold_mode)
        self.factor = factor
        self.optimizer = optimizer
        self.default_min_lr = default_min_lr
        self.min_lrs = min_lrs
        self.patience = patience
        self.cooldown = cooldown
        self.eps = eps
        self.last_epoch = 0
        self._last_lr = _group_lrs(optimizer)
        self._init_is_better(mode=mode, threshold=threshold, threshold_mode=threshold_mode)
        self._reset()

    @staticmethod
    def _check_modes(mode: Any, threshold_mode: Any) -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"mode {mode!r} is unknown! (expected 'min' or 'max')")
        if threshold_mode not in ("rel", "abs"):
            raise ValueError(f"threshold mode {threshold_mode!r} is unknown! (expected 'rel' or "
                             "'abs')")

    def _init_is_better(self, mode: str, threshold: float, threshold_mode: str) -> None:
        self._check_modes(mode, threshold_mode)
        self.mode_worse = math.inf if mode == "min" else -math.inf
        self.mode = mode
        self.threshold = threshold
        self.threshold_mode = threshold_mode

    def _reset(self) -> None:
        self.best = self.mode_worse
        self.cooldown_counter = 0
        self.num_bad_epochs = 0

    @property
    def in_cooldown(self) -> bool:
        return self.cooldown_counter > 0

    def _is_better(self, a: float, best: float) -> bool:
        if self.mode == "min" and self.threshold_mode == "rel":
            return a < best * (1.0 - self.threshold)
        if self.mode == "min":
            return a < best - self.threshold
        if self.threshold_mode == "rel":
            return a > best * (self.threshold + 1.0)
        return a > best + self.threshold

    def step(self, metrics: Any, epoch: None = None) -> None:  # type: ignore[override]
        """Record one value of the monitored metric (a real number or anything ``float()``
        takes, e.g. a 0-d array) and reduce the lrs if it has stopped improving."""
        if epoch is not None:
            raise TypeError("ReduceLROnPlateau.step() takes no epoch argument (torch's is "
                            f"deprecated; got epoch={epoch!r})")
        if isinstance(metrics, (str, bytes, bool)):
            raise TypeError(f"metrics: expected a real number, got {metrics!r}")
        try:
            current = float(metrics)
        except (TypeError, ValueError):
            raise TypeError(f"metrics: expected a real number, got {metrics!r} of type "
                            f"{type(metrics).__name__}") from None
        # the new counters, computed before anything changes
        best, num_bad, cooldown_counter = self.best, self.num_bad_epochs, self.cooldown_counter
        if self._is_better(current, best):
            best, num_bad = current, 0
        else:
            num_bad += 1
        if cooldown_counter > 0:
            cooldown_counter -= 1
            num_bad = 0
        reduce = num_bad > self.patience
        groups = self.optimizer.param_groups
        if reduce and len(groups) != len(self.min_lrs) and self.default_min_lr is None:
            raise RuntimeError(f"The number of param groups in the `optimizer` ({len(groups)}) "
                               "differs from when `ReduceLROnPlateau` was initialized "
                               f"({len(self.min_lrs)}), usually due to a new param group being "
                               "added to the optimizer. Please modify the `min_lrs` field to "
                               "match the length of the `optimizer` param groups.")
        self.last_epoch += 1
        self.best, self.num_bad_epochs, self.cooldown_counter = best, num_bad, cooldown_counter
        if reduce:
            self._reduce_lr()
            self.cooldown_counter = self.cooldown
            self.num_bad_epochs = 0
        self._last_lr = _group_lrs(self.optimizer)

    def _reduce_lr(self) -> None:
        groups = self.optimizer.param_groups
        if len(groups) != len(self.min_lrs):
            assert self.default_min_lr is not None     # step() checked it
            self.min_lrs = [self.default_min_lr] * len(groups)
        for group, min_lr in zip(groups, self.min_lrs):
            old_lr = float(group["lr"])
            new_lr = max(old_lr * self.factor, min_lr)
            if old_lr - new_lr > self.eps:
                group["lr"] = new_lr

    def _checked_state(self, state_dict: Any) -> dict[str, Any]:
        new = super()._checked_state(state_dict)
        self._check_modes(new["mode"], new["threshold_mode"])
        return new

    def _apply_state(self, new: dict[str, Any]) -> None:
        super()._apply_state(new)
        self._init_is_better(mode=self.mode, threshold=self.threshold,
                             threshold_mode=self.threshold_mode)
