"""Dynamic loss scaling for NumPy training with 16-bit gradients: torch.amp.GradScaler's rule.

::

    scaler = fastopt.LossScaler()
    for batch in data:
        grads = backward(loss * scaler.get_scale())   # gradients of the scaled loss
        scaler.step(opt, grads)      # divides by the scale inside the fused step; a NaN/Inf
        scaler.update()              # gradient skips the step (nothing is modified)

The scale is kept in float32, as torch keeps it, and follows GradScaler's update exactly: after
a step that found a non-finite gradient it is multiplied by ``backoff_factor``; after
``growth_interval`` consecutive applied steps by ``growth_factor`` (when the result is finite).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from . import _validation


class LossScaler:
    """torch.amp.GradScaler's dynamic loss scale for fastopt's NumPy optimizers.

    Parameters: ``init_scale=2.0**16``, ``growth_factor=2.0`` (> 1), ``backoff_factor=0.5``
    (in (0, 1)), ``growth_interval=2000`` (a positive integer), as torch.
    """

    def __init__(self, init_scale: float = 2.0 ** 16, growth_factor: float = 2.0,
                 backoff_factor: float = 0.5, growth_interval: int = 2000) -> None:
        scale = _validation.real("init_scale", init_scale, low=None)
        if not (scale > 0 and math.isfinite(scale)):
            raise ValueError(f"init_scale must be a positive finite number, got {init_scale}")
        growth = _validation.real("growth_factor", growth_factor, low=None)
        if not growth > 1.0:
            raise ValueError(f"The growth factor must be > 1.0, got {growth_factor}")
        backoff = _validation.real("backoff_factor", backoff_factor, low=None)
        if not 0.0 < backoff < 1.0:
            raise ValueError(f"The backoff factor must be < 1.0 and > 0, got {backoff_factor}")
        if isinstance(growth_interval, bool) or not isinstance(growth_interval,
                                                               (int, np.integer)) \
                or growth_interval <= 0:
            raise ValueError(f"growth_interval must be a positive integer, got "
                             f"{growth_interval!r}")
        self._scale = np.float32(scale)
        self._growth_factor = growth
        self._backoff_factor = backoff
        self._growth_interval = int(growth_interval)
        self._growth_tracker = 0
        self._found_inf: bool | None = None     # None: no step since the last update

    def get_scale(self) -> float:
        """The current scale (a float32 value, as a Python float)."""
        return float(self._scale)

    def scale(self, value: Any) -> Any:
        """``value`` (a loss, or an array) times the current scale."""
        return value * self._scale

    def step(self, optimizer, grads: Sequence[np.ndarray | None]) -> bool:
        """``optimizer.step(grads, grad_scale=scale)``: the gradients are divided by the scale
        inside the fused step; a NaN or Inf in any of them skips the step (nothing is
        modified). Returns True when the step was applied."""
        applied = bool(optimizer.step(grads, grad_scale=float(self._scale)))
        self._found_inf = (not applied) or bool(self._found_inf)
        return applied

    def update(self, new_scale: float | None = None) -> None:
        """Adjust the scale after the step(s) since the last update (GradScaler.update)."""
        if new_scale is not None:
            value = _validation.real("new_scale", new_scale, low=None)
            if not value > 0:
                raise ValueError(f"new_scale must be positive, got {new_scale}")
            self._scale = np.float32(value)
            self._found_inf = None
            return
        if self._found_inf is None:
            raise RuntimeError("update() called without a step() since the last update")
        if self._found_inf:
            self._scale = np.float32(float(self._scale) * self._backoff_factor)
            self._growth_tracker = 0
        else:
            successful = self._growth_tracker + 1
            if successful == self._growth_interval:
                grown = np.float32(float(self._scale) * self._growth_factor)
                if math.isfinite(float(grown)):
                    self._scale = grown
                self._growth_tracker = 0
            else:
                self._growth_tracker = successful
        self._found_inf = None

    def state_dict(self) -> dict:
        """torch's GradScaler keys."""
        return {"scale": float(self._scale), "growth_factor": self._growth_factor,
                "backoff_factor": self._backoff_factor, "growth_interval": self._growth_interval,
                "_growth_tracker": self._growth_tracker}

    def load_state_dict(self, state_dict: Mapping) -> None:
        """Load ``state_dict()`` (or a torch GradScaler's, with plain numbers)."""
        if not isinstance(state_dict, Mapping) or "scale" not in state_dict:
            raise ValueError("The source state dict is empty or not a LossScaler's")
        probe = LossScaler(float(state_dict["scale"]),
                           state_dict.get("growth_factor", self._growth_factor),
                           state_dict.get("backoff_factor", self._backoff_factor),
                           state_dict.get("growth_interval", self._growth_interval))
        tracker = state_dict.get("_growth_tracker", 0)
        if isinstance(tracker, bool) or not isinstance(tracker, (int, np.integer)) \
                or tracker < 0:
            raise ValueError(f"_growth_tracker must be a non-negative integer, got {tracker!r}")
        probe._growth_tracker = int(tracker)
        self.__dict__.update(probe.__dict__)
