"""Stochastic gradient descent with momentum, torch.optim.SGD's rule."""
from __future__ import annotations

from . import _spec
from .optimizer import Optimizer


class SGD(Optimizer):
    r"""Stochastic gradient descent, optionally with momentum (torch.optim.SGD's rule).

    For each param :math:`p` with gradient :math:`g` at step :math:`t`:

    .. math::

        g &\leftarrow -g \quad \text{if maximize} \\
        g &\leftarrow g + \lambda p \quad \text{if } \lambda \ne 0 \\
        b_t &\leftarrow g \ \text{(first step)}, \quad
            b_t \leftarrow \mu b_{t-1} + (1 - \tau) g \ \text{(later steps)}
            \quad \text{if } \mu \ne 0 \\
        g &\leftarrow g + \mu b_t \ \text{(nesterov)}, \quad g \leftarrow b_t \ \text{(otherwise)}
            \quad \text{if } \mu \ne 0 \\
        p &\leftarrow p - \gamma g

    with learning rate :math:`\gamma` (``lr``), momentum :math:`\mu`, dampening :math:`\tau` and
    weight decay :math:`\lambda` (L2, added to the gradient). Note that lr multiplies the whole
    momentum buffer (torch's convention, unlike Sutskever et al. who put lr inside it), and that
    the buffer starts as the first gradient, undamped.

    Parameters
    ----------
    params : iterable of arrays, or of dicts (param groups)
        float32/float64 C-contiguous writeable NumPy arrays, updated in place.
    lr : float, default 1e-3
    momentum : float, default 0
    dampening : float, default 0
    weight_decay : float, default 0
    nesterov : bool, default False
        Requires momentum > 0 and dampening == 0.
    maximize : bool, default False
        Maximize the objective instead of minimizing it.
    l1 : float, default 0
        L1 regularisation, coupled like weight_decay: :math:`g \leftarrow g + l_1\,\mathrm{sgn}(p)`
        after the L2 term (sgn(0) = 0). Not in torch: fastopt's addition, on every optimizer.

    State per param (torch's key): ``momentum_buffer``, created on the param's first step when
    momentum != 0. All arithmetic is in the param's dtype, one fused pass per step.

    Example
    -------
    >>> import numpy as np, fastopt
    >>> w = np.zeros(3, np.float32)
    >>> opt = fastopt.SGD([w], lr=0.1, momentum=0.9)
    >>> opt.step([np.ones(3, np.float32)])
    True
    >>> w
    array([-0.1, -0.1, -0.1], dtype=float32)
    """

    _spec = _spec.SGD

    def __init__(self, params, lr: float = 1e-3, momentum: float = 0.0,
                 dampening: float = 0.0, weight_decay: float = 0.0, nesterov: bool = False, *,
                 maximize: bool = False, l1: float = 0.0,
                 max_grad_norm: float | None = None,
                 clip_value: float | None = None,
                 master_weights: bool = False, rounding: str = "nearest",
                 state_dtype=None, seed: int = 0) -> None:
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening,
                        weight_decay=weight_decay, nesterov=nesterov, maximize=maximize, l1=l1,
                        max_grad_norm=max_grad_norm, clip_value=clip_value,
                        master_weights=master_weights, rounding=rounding,
                        state_dtype=state_dtype)
        self._check_group(defaults)
        super().__init__(params, defaults, seed=seed)

    def _on_new_buffer(self, i, key):
        self._steps[i] = 0      # the next step is the buffer's first: it copies the gradient
