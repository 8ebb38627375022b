"""Lion (Chen et al., 2023). torch has no Lion; fastopt follows the paper's Algorithm 2."""
from __future__ import annotations

from . import _spec
from .optimizer import Optimizer


class Lion(Optimizer):
    r"""Lion, "EvoLved Sign Momentum" (Chen et al., 2023, Algorithm 2).

    For each param :math:`p` with gradient :math:`g` (negated when maximizing, plus
    :math:`l_1\,\mathrm{sgn}(p)` with l1):

    .. math::

        p &\leftarrow p\,(1 - \gamma\lambda) \quad \text{(decoupled weight decay)} \\
        c &= \beta_1 m + (1 - \beta_1) g \\
        p &\leftarrow p - \gamma\,\mathrm{sgn}(c) \\
        m &\leftarrow \beta_2 m + (1 - \beta_2) g

    :math:`\mathrm{sgn}(0) = 0`: a zero interpolation does not move the param (an
    implementation that uses ``x >= 0`` or ``copysign`` moves it by lr; fastopt does not), and a
    NaN propagates. Every step moves each param by exactly lr (or 0), so Lion wants a learning
    rate 3-10x smaller than AdamW's and a weight decay 3-10x larger.

    Parameters: ``lr=1e-4``, ``betas=(0.9, 0.99)``, ``weight_decay=0``, ``maximize=False``,
    ``l1=0``. State: ``step`` and ``exp_avg``.
    """

    _spec = _spec.LION

    def __init__(self, params, lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.99),
                 weight_decay: float = 0.0, *, maximize: bool = False, l1: float = 0.0,
                 max_grad_norm: float | None = None,
                 clip_value: float | None = None,
                 master_weights: bool = False, rounding: str = "nearest",
                 state_dtype=None, seed: int = 0) -> None:
        defaults = dict(lr=lr, betas=betas, weight_decay=weight_decay, maximize=maximize, l1=l1,
                        max_grad_norm=max_grad_norm, clip_value=clip_value,
                        master_weights=master_weights, rounding=rounding,
                        state_dtype=state_dtype)
        self._check_group(defaults)
        super().__init__(params, defaults, seed=seed)
