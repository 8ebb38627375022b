"""ASGD, torch.optim's rule."""
from __future__ import annotations

from . import _spec
from .optimizer import Optimizer


class ASGD(Optimizer):
    r"""Averaged SGD (Polyak & Juditsky, 1992; Bottou's schedule), torch.optim.ASGD's rule.

    For each param :math:`p` with gradient :math:`g` at step :math:`t` (per param, from 1;
    negated when maximizing, plus :math:`\lambda_{wd} p` with weight decay and
    :math:`l_1\,\mathrm{sgn}(p)` with l1), with the param's scalar states :math:`\eta` and
    :math:`\mu` as the previous step left them (they start at :math:`\gamma` and 1):

    .. math::

        p &\leftarrow p\,(1 - \lambda\eta) - \eta g \\
        \bar p &\leftarrow \bar p + \mu (p - \bar p) \quad (\bar p \leftarrow p
            \text{ when } \mu = 1) \\
        \eta &\leftarrow \gamma / (1 + \lambda\gamma t)^{\alpha}, \qquad
        \mu \leftarrow 1 / \max(1, t - t_0)

    :math:`\bar p` (``ax``) is the running average of the params from step :math:`t_0` on; use
    it as the trained weights. As in torch, the new :math:`\eta` uses the lr of the step that
    computes it and takes effect on the next step, and :math:`\eta`, :math:`\mu` are rounded
    to float32 (torch keeps them in 0-d float32 tensors; fastopt keeps the rounded values in
    float64 state, ``state[i]["eta"]`` and ``state[i]["mu"]``).

    Parameters: ``lr=1e-2``, ``lambd=1e-4`` (decay term), ``alpha=0.75`` (power of the eta
    update), ``t0=1e6`` (the step from which averaging starts), ``weight_decay=0``,
    ``maximize=False``, ``l1=0``. State (torch's keys): ``step``, ``eta``, ``mu``, ``ax``.

    >>> import numpy as np, fastopt
    >>> p = np.ones(2); opt = fastopt.ASGD([p], lr=0.5, lambd=0.0, t0=0)
    >>> for _ in range(3):
    ...     _ = opt.step([np.ones(2)])
    >>> p, opt.state[0]["ax"], float(opt.state[0]["mu"])
    (array([-0.5, -0.5]), array([-0.25, -0.25]), 0.3333333432674408)
    """

    _spec = _spec.ASGD

    def __init__(self, params, lr: float = 1e-2, lambd: float = 1e-4, alpha: float = 0.75,
                 t0: float = 1e6, weight_decay: float = 0.0, maximize: bool = False, *,
                 l1: float = 0.0, max_grad_norm: float | None = None,
                 clip_value: float | None = None,
                 master_weights: bool = False, rounding: str = "nearest",
                 state_dtype=None, seed: int = 0) -> None:
        defaults = dict(lr=lr, lambd=lambd, alpha=alpha, t0=t0, weight_decay=weight_decay,
                        maximize=maximize, l1=l1, max_grad_norm=max_grad_norm,
                        clip_value=clip_value,
                        master_weights=master_weights, rounding=rounding,
                        state_dtype=state_dtype)
        self._check_group(defaults)
        super().__init__(params, defaults, seed=seed)
