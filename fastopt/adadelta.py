"""Adadelta and Rprop, torch.optim's rules."""
from __future__ import annotations

from . import _spec
from .optimizer import Optimizer


class Adadelta(Optimizer):
    r"""Adadelta (Zeiler, 2012), torch.optim.Adadelta's rule.

    For each param :math:`p` with gradient :math:`g` (negated when maximizing, plus
    :math:`\lambda p` with weight decay and :math:`l_1\,\mathrm{sgn}(p)` with l1):

    .. math::

        v &\leftarrow \rho v + (1 - \rho) g^2 \\
        \Delta &= \frac{\sqrt{u + \epsilon}}{\sqrt{v + \epsilon}}\, g \\
        u &\leftarrow \rho u + (1 - \rho) \Delta^2 \\
        p &\leftarrow p - \gamma \Delta

    eps is added inside both square roots (torch's and the paper's form). The per-element
    arithmetic is in the param's dtype, in torch's order of operations (fastopt never contracts
    a*b+c into an FMA, torch's CPU kernels sometimes do: float64 trajectories agree to ~1e-12
    relative).

    Parameters: ``lr=1.0`` (a factor on the update; the paper has none), ``rho=0.9`` (in
    [0, 1]), ``eps=1e-6``, ``weight_decay=0``, ``maximize=False``, ``l1=0``. State (torch's
    keys): ``step``, ``square_avg`` (:math:`v`), ``acc_delta`` (:math:`u`).

    >>> import numpy as np, fastopt
    >>> p = np.ones(2); opt = fastopt.Adadelta([p])
    >>> opt.step([np.full(2, 2.0)])
    True
    >>> float(round(p[0], 6))     # 1 - sqrt(1e-6) / sqrt(0.4 + 1e-6) * 2
    0.996838
    """

    _spec = _spec.ADADELTA

    def __init__(self, params, lr: float = 1.0, rho: float = 0.9, eps: float = 1e-6,
                 weight_decay: float = 0.0, *, maximize: bool = False, l1: float = 0.0,
                 max_grad_norm: float | None = None,
                 clip_value: float | None = None,
                 master_weights: bool = False, rounding: str = "nearest",
                 state_dtype=None, seed: int = 0) -> None:
        defaults = dict(lr=lr, rho=rho, eps=eps, weight_decay=weight_decay, maximize=maximize,
                        l1=l1, max_grad_norm=max_grad_norm, clip_value=clip_value,
                        master_weights=master_weights, rounding=rounding,
                        state_dtype=state_dtype)
        self._check_group(defaults)
        super().__init__(params, defaults, seed=seed)


class Rprop(Optimizer):
    r"""Rprop, resilient backpropagation (Riedmiller & Braun, 1993), torch.optim.Rprop's rule.

    Each element has its own step size :math:`s` (starting at lr). With :math:`g` the gradient
    (negated when maximizing, plus :math:`l_1\,\mathrm{sgn}(p)` with l1) and :math:`g'` the
    previous step's (``prev``, 0 at first):

    .. math::

        \eta &= \eta_+ \text{ if } g g' > 0, \quad \eta_- \text{ if } g g' < 0,
            \quad 1 \text{ otherwise} \\
        s &\leftarrow \min(\max(\eta s,\ s_{\min}),\ s_{\max}) \\
        g &\leftarrow 0 \quad \text{where } \eta = \eta_- \\
        p &\leftarrow p - \mathrm{sign}(g)\, s, \qquad g' \leftarrow g

    This is torch's variant (Rprop without weight backtracking, "Rprop-"): after a sign change
    the gradient is zeroed, so the param does not move there and the next step's factor is 1.
    sign is torch.sign: 0 for a zero AND for a NaN, so a NaN gradient moves nothing (the NaN is
    kept in ``prev``, and the next factor there is 1). The product :math:`g g'` is computed in
    the param's dtype, as torch does (it can underflow to 0: factor 1). Only the signs of the
    gradients matter, so gradient scaling and norm clipping change nothing but ``prev``.

    Parameters: ``lr=1e-2`` (the step sizes' initial value), ``etas=(0.5, 1.2)``
    (:math:`(\eta_-, \eta_+)`, with :math:`0 < \eta_- < 1 < \eta_+`), ``step_sizes=(1e-6, 50)``
    (:math:`(s_{\min}, s_{\max})`), ``maximize=False``, ``l1=0``. State (torch's keys):
    ``step``, ``prev``, ``step_size``.

    >>> import numpy as np, fastopt
    >>> p = np.zeros(3); opt = fastopt.Rprop([p], lr=0.1)
    >>> for g in ([1.0, -1.0, 0.0], [1.0, 1.0, 0.0]):
    ...     _ = opt.step([np.array(g)])
    >>> p, opt.state[0]["step_size"]
    (array([-0.22,  0.1 ,  0.  ]), array([0.12, 0.05, 0.1 ]))
    """

    _spec = _spec.RPROP

    def __init__(self, params, lr: float = 1e-2, etas: tuple[float, float] = (0.5, 1.2),
                 step_sizes: tuple[float, float] = (1e-6, 50.0), *, maximize: bool = False,
                 l1: float = 0.0, max_grad_norm: float | None = None,
                 clip_value: float | None = None,
                 master_weights: bool = False, rounding: str = "nearest",
                 state_dtype=None, seed: int = 0) -> None:
        defaults = dict(lr=lr, etas=etas, step_sizes=step_sizes, maximize=maximize, l1=l1,
                        max_grad_norm=max_grad_norm, clip_value=clip_value,
                        master_weights=master_weights, rounding=rounding,
                        state_dtype=state_dtype)
        self._check_group(defaults)
        super().__init__(params, defaults, seed=seed)
