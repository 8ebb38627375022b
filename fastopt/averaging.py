"""Exponential moving average of parameters, and gradient accumulation.

``EMA`` keeps a fused, multithreaded running average of a model's params (torch's
``AveragedModel`` with ``get_ema_multi_avg_fn``, Keras' ``use_ema``) and swaps it in for
evaluation. ``GradientAccumulator`` sums or averages the gradients of k micro-batches and steps
the optimizer every k-th call (Optax's ``MultiSteps``, Keras' ``gradient_accumulation_steps``).
"""
from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from . import _spec, _validation, functional
from .optimizer import Optimizer


class EMA:
    r"""Exponential moving average of parameters, updated in one fused native pass.

    After each optimizer step, ``update()`` sets, for every param :math:`p` and its average
    :math:`a` (which starts as a copy of :math:`p`):

    .. math:: a \leftarrow a + (1 - \text{decay})(p - a)

    in torch's lerp form (``average.lerp_(param, 1 - decay)``, as torch's EMA averaging does), in
    the param's dtype. ``average_parameters()`` swaps the averages into the params for
    evaluation and back afterwards; ``swap()`` does one swap.

    >>> import numpy as np, fastopt
    >>> w = np.zeros(3)
    >>> ema = fastopt.EMA([w], decay=0.9)
    >>> w += 1.0; ema.update()
    >>> ema.averages[0]
    array([0.1, 0.1, 0.1])
    >>> with ema.average_parameters():
    ...     w.copy()          # evaluate with the averaged weights
    array([0.1, 0.1, 0.1])
    >>> w
    array([1., 1., 1.])
    """

    def __init__(self, params: Iterable[np.ndarray], decay: float = 0.999) -> None:
        if isinstance(params, np.ndarray) or not isinstance(params, Iterable):
            raise TypeError("EMA: params must be an iterable of NumPy arrays, got "
                            f"{type(params).__name__}")
        self.params = list(params)
        if not self.params:
            raise ValueError("EMA got an empty parameter list")
        for i, p in enumerate(self.params):
            _validation.check_param(f"params[{i}]", p)
        _validation.check_disjoint([(f"params[{i}]", p) for i, p in enumerate(self.params)])
        self.decay = _validation.real("decay", decay, high=1.0, what="decay value")
        self.averages = [p.copy() for p in self.params]
        self.num_updates = 0
        self._steps = np.ones(len(self.params), np.int64)
        self._lock = threading.Lock()

    def update(self) -> None:
        """Fold the params' current values into the averages (one native call)."""
        with self._lock:
            self._update()

    def _update(self) -> None:
        record = _spec.EMA.record({"decay": self.decay})
        n = len(self.averages)
        if len(self.params) != n:
            raise ValueError(f"EMA: params has {len(self.params)} entries, the averages {n}")
        streams = [self.averages, list(self.params)] + [None] * (functional.S - 2)
        functional.run_lists(_spec.EMA, streams, ["averages", "params"], records=[record])
        self.num_updates += 1

    def swap(self) -> None:
        """Exchange the contents of the params and of the averages, in place."""
        for p, a in zip(self.params, self.averages):
            tmp = p.copy()
            p[...] = a
            a[...] = tmp

    @contextlib.contextmanager
    def average_parameters(self) -> Iterator[None]:
        """Within the block, the params hold the averages; afterwards, their own values."""
        self.swap()
        try:
            yield
        finally:
            self.swap()

    def copy_to(self, targets: Sequence[np.ndarray] | None = None) -> None:
        """Copy the averages into ``targets`` (default: the params themselves, for good)."""
        targets = self.params if targets is None else list(targets)
        if len(targets) != len(self.averages):
            raise ValueError(f"copy_to: expected {len(self.averages)} arrays, got "
                             f"{len(targets)}")
        for i, (t, a) in enumerate(zip(targets, self.averages)):
            _validation.check_like(f"targets[{i}]", t, a, f"averages[{i}]", writeable=True)
        for t, a in zip(targets, self.averages):
            t[...] = a

    def state_dict(self) -> dict:
        return {"decay": self.decay, "num_updates": self.num_updates,
                "averages": [a.copy() for a in self.averages]}

    def load_state_dict(self, state: dict) -> None:
        """Load averages saved by ``state_dict``; checked before anything changes."""
        decay = _validation.real("decay", state["decay"], high=1.0, what="decay value")
        num = _validation.step_count("num_updates", state["num_updates"])
        saved = list(state["averages"])
        if len(saved) != len(self.averages):
            raise ValueError(f"EMA state has {len(saved)} averages, expected "
                             f"{len(self.averages)}")
        for i, (s, a) in enumerate(zip(saved, self.averages)):
            _validation.check_like(f"averages[{i}]", s, a, f"averages[{i}]", writeable=False)
        for s, a in zip(saved, self.averages):
            a[...] = s
        self.decay, self.num_updates = decay, num


class GradientAccumulator:
    """Accumulate the gradients of ``steps`` micro-batches, then step the optimizer once.

    Each call of ``step(grads)`` adds the gradients into buffers in one in-place pass per
    array (the first call of a cycle copies); every ``steps``-th call divides the sums by
    ``steps`` (when ``average``, the default) and calls ``optimizer.step`` with them, so the
    optimizer's weight decay, clipping (``max_grad_norm``, ``clip_value``) and step count act
    once per real step, on the accumulated gradient. Returns True when the optimizer stepped.
    A None gradient is treated as zero for that micro-batch; a param whose gradient was None in
    every micro-batch of a cycle gets None (it is skipped, as the optimizer skips None). If the
    optimizer refuses the real step (say an invalid lr was set), the error propagates and the
    cycle's gradients are discarded.

    >>> import numpy as np, fastopt
    >>> w = np.zeros(2)
    >>> acc = fastopt.GradientAccumulator(fastopt.SGD([w], lr=1.0), steps=2)
    >>> acc.step([np.array([1.0, 3.0])]), w
    (False, array([0., 0.]))
    >>> acc.step([np.array([3.0, 5.0])]), w        # the mean gradient, [2, 4]
    (True, array([-2., -4.]))
    """

    def __init__(self, optimizer: Optimizer, steps: int, *, average: bool = True) -> None:
        if not isinstance(optimizer, Optimizer):
            raise TypeError("GradientAccumulator: expected a fastopt optimizer, got "
                            f"{type(optimizer).__name__}")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"GradientAccumulator: steps must be an integer >= 1, got {steps!r}")
        self.optimizer = optimizer
        self.steps = steps
        self.average = _validation.flag("average", average)
        self._buffers = [np.zeros_like(p) for p in optimizer._live_params()]
        self._seen = [False] * len(self._buffers)
        self.micro_step = 0          # micro-batches accumulated in the current cycle

    def step(self, grads: Sequence[np.ndarray | None]) -> bool:
        """Add one micro-batch's gradients; step the optimizer on every ``steps``-th call."""
        params = self.optimizer._live_params()
        for p in params[len(self._buffers):]:           # params added since (add_param_group)
            self._buffers.append(np.zeros_like(p))
            self._seen.append(False)
        grads = _validation.check_grads_sequence(grads, len(params))
        for i, (g, p) in enumerate(zip(grads, params)):      # check all before adding any
            if g is not None:
                _validation.check_like(f"grads[{i}]", g, p, f"params[{i}]", writeable=False)
        for i, (g, b) in enumerate(zip(grads, self._buffers)):
            if g is None:
                continue
            if self._seen[i]:
                np.add(b, g, out=b)
            else:
                np.copyto(b, g)
                self._seen[i] = True
        self.micro_step += 1
        if self.micro_step < self.steps:
            return False
        if self.average and self.steps > 1:
            for b, seen in zip(self._buffers, self._seen):
                if seen:
                    np.multiply(b, b.dtype.type(1.0 / self.steps), out=b)
        try:
            self.optimizer.step([b if seen else None
                                 for b, seen in zip(self._buffers, self._seen)])
        finally:
            self._seen = [False] * len(self._buffers)
            self.micro_step = 0
        return True
