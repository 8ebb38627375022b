"""RMSprop and Adagrad, torch.optim's rules."""
from __future__ import annotations

from . import _spec
from .optimizer import Optimizer


class RMSprop(Optimizer):
    r"""RMSprop (Hinton, 2012), torch.optim.RMSprop's rule.

    For each param :math:`p` with gradient :math:`g` (negated when maximizing, plus
    :math:`\lambda p` with weight decay and :math:`l_1\,\mathrm{sgn}(p)` with l1):

    .. math::

        v &\leftarrow \alpha v + (1 - \alpha) g^2 \\
        \bar g &\leftarrow \bar g + (1 - \alpha)(g - \bar g),
            \quad a = \sqrt{\max(v - \bar g^2,\ 0)} + \epsilon \quad \text{(centered)} \\
        a &= \sqrt{v} + \epsilon \quad \text{(otherwise)} \\
        b &\leftarrow \mu b + g / a, \quad p \leftarrow p - \gamma b
            \quad \text{(momentum } \mu > 0) \\
        p &\leftarrow p - \gamma g / a \quad \text{(otherwise)}

    eps is added outside the square root (torch's convention; Keras puts it inside), and with
    momentum the buffer holds g/a with lr applied outside it.

    **Centered, with a constant gradient**: :math:`v - \bar g^2 = (1-\alpha^t)\alpha^t g^2 \ge 0`
    mathematically, but it can round below zero. torch then takes the square root of a negative
    number and the param becomes NaN; fastopt clamps the difference at 0, so the step is
    :math:`\gamma g / \epsilon` (large, but finite and recoverable). This is the one place where
    fastopt's RMSprop differs from torch's.

    Parameters: ``lr=1e-2``, ``alpha=0.99``, ``eps=1e-8``, ``weight_decay=0``, ``momentum=0``,
    ``centered=False``, ``maximize=False``, ``l1=0``. State (torch's keys): ``step``,
    ``square_avg``, ``momentum_buffer`` (momentum > 0), ``grad_avg`` (centered).
    """

    _spec = _spec.RMSPROP

    def __init__(self, params, lr: float = 1e-2, alpha: float = 0.99, eps: float = 1e-8,
                 weight_decay: float = 0.0, momentum: float = 0.0, centered: bool = False, *,
                 maximize: bool = False, l1: float = 0.0,
                 max_grad_norm: float | None = None,
                 clip_value: float | None = None,
                 master_weights: bool = False, rounding: str = "nearest",
                 state_dtype=None, seed: int = 0) -> None:
        defaults = dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                        momentum=momentum, centered=centered, maximize=maximize, l1=l1,
                        max_grad_norm=max_grad_norm, clip_value=clip_value,
                        master_weights=master_weights, rounding=rounding,
                        state_dtype=state_dtype)
        self._check_group(defaults)
        super().__init__(params, defaults, seed=seed)


class Adagrad(Optimizer):
    r"""Adagrad (Duchi et al., 2011), torch.optim.Adagrad's rule.

    For each param :math:`p` with gradient :math:`g` at step :math:`t` (per param, from 1;
    negated when maximizing, plus :math:`\lambda p` with weight decay and
    :math:`l_1\,\mathrm{sgn}(p)` with l1):

    .. math::

        s &\leftarrow s + g^2 \\
        p &\leftarrow p - \frac{\gamma}{1 + (t - 1)\,\eta} \cdot \frac{g}{\sqrt{s} + \epsilon}

    with lr decay :math:`\eta`. Parameters: ``lr=1e-2``, ``lr_decay=0``, ``weight_decay=0``,
    ``initial_accumulator_value=0`` (the sum's starting value), ``eps=1e-10``,
    ``maximize=False``, ``l1=0``. State (torch's keys): ``step``, ``sum``.
    """

    _spec = _spec.ADAGRAD

    def __init__(self, params, lr: float = 1e-2, lr_decay: float = 0.0,
                 weight_decay: float = 0.0, initial_accumulator_value: float = 0.0,
                 eps: float = 1e-10, *, maximize: bool = False, l1: float = 0.0,
                 max_grad_norm: float | None = None,
                 clip_value: float | None = None,
                 master_weights: bool = False, rounding: str = "nearest",
                 state_dtype=None, seed: int = 0) -> None:
        defaults = dict(lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                        initial_accumulator_value=initial_accumulator_value, eps=eps,
                        maximize=maximize, l1=l1,
                        max_grad_norm=max_grad_norm, clip_value=clip_value,
                        master_weights=master_weights, rounding=rounding,
                        state_dtype=state_dtype)
        self._check_group(defaults)
        super().__init__(params, defaults, seed=seed)
