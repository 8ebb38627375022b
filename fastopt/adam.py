"""Adam and AdamW, torch.optim's rules."""
from __future__ import annotations

from . import _validation
from ._backend import native as _native
from .optimizer import Optimizer

_ADAM_MATH = r"""
    For each param :math:`p` with gradient :math:`g` at step :math:`t` (counted per param, from 1):

    .. math::

        g &\leftarrow -g \quad \text{if maximize} \\
        {DECAY}
        m_t &\leftarrow m_{t-1} + (1 - \beta_1)(g - m_{t-1})
            \quad \text{(torch's lerp form of } \beta_1 m_{t-1} + (1-\beta_1) g) \\
        v_t &\leftarrow \beta_2 v_{t-1} + (1 - \beta_2) g^2 \\
        \hat v_t &\leftarrow \max(\hat v_{t-1}, v_t)
            \quad \text{if amsgrad (else } \hat v_t = v_t) \\
        p &\leftarrow p - \frac{\gamma}{1 - \beta_1^t} \cdot
            \frac{m_t}{\sqrt{\hat v_t} / \sqrt{1 - \beta_2^t} + \epsilon}

    Note where :math:`\epsilon` goes: it is added *after* :math:`\sqrt{\hat v_t}` is divided by
    :math:`\sqrt{1 - \beta_2^t}` (torch's and the paper's Algorithm 1 form), not to
    :math:`\sqrt{v_t}` before bias correction, nor inside the square root. The bias corrections
    and the step size are computed once per step in double precision from the integer step; the
    per-element arithmetic is in the param's dtype, in one fused pass, in torch's order of
    operations with one exception: where torch divides :math:`\sqrt{\hat v_t}` by
    :math:`\sqrt{1 - \beta_2^t}`, fastopt multiplies by the reciprocal (computed once per step
    in double), which saves one of two divisions per element. Results therefore differ from
    torch's by about an ulp per step (float64 trajectories agree to ~1e-12 relative, float32 to a
    few ulps per step); torch's CPU kernels also contract some a*b+c into FMA where fastopt never
    does.
"""

_PARAMS = """
    Parameters
    ----------
    params : iterable of arrays, or of dicts (param groups)
        float32/float64 C-contiguous writeable NumPy arrays, updated in place.
    lr : float, default 1e-3
    betas : (float, float), default (0.9, 0.999)
        Decay rates of the first and second moment estimates, each in [0, 1).
    eps : float, default 1e-8
    weight_decay : float, default {WD}
    amsgrad : bool, default False
        Keep the running maximum of :math:`v_t` (Reddi et al., 2018).
    maximize : bool, default False
        Maximize the objective instead of minimizing it.

    State per param (torch's keys): ``step`` (a 0-d int64 array), ``exp_avg``, ``exp_avg_sq``,
    and ``max_exp_avg_sq`` with amsgrad, created on the param's first step.
"""


class Adam(Optimizer):
    __doc__ = (r"""Adam (Kingma & Ba, 2015) with torch.optim.Adam's rule and L2 weight decay.
""" + _ADAM_MATH.replace(
        "{DECAY}", r"g &\leftarrow g + \lambda p \quad \text{if } \lambda \ne 0"
                   r" \quad \text{(L2: coupled to the gradient)} \\") + _PARAMS.replace(
        "{WD}", "0") + r"""
    ``weight_decay`` here is L2 regularisation: it is added to the gradient and so is rescaled
    by the adaptive denominator. For decoupled weight decay use ``AdamW``.

    Example
    -------
    >>> import numpy as np, fastopt
    >>> w = np.zeros((784, 10), np.float32); b = np.zeros(10, np.float32)
    >>> opt = fastopt.Adam([{"params": [w], "weight_decay": 1e-4}, {"params": [b]}], lr=1e-3)
    >>> opt.step([np.ones_like(w), None])    # None: b is skipped, its state untouched
    >>> float(w[0, 0])
    -0.0010000000474974513

    References: Kingma & Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015;
    Reddi et al., "On the Convergence of Adam and Beyond", ICLR 2018.
    """)

    _rule = _native.RULE_ADAM
    _hyper_keys = ("lr", "betas", "eps", "weight_decay", "amsgrad", "maximize")
    _decoupled = False

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, amsgrad: bool = False, *,
                 maximize: bool = False) -> None:
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                        amsgrad=amsgrad, maximize=maximize)
        self._check_group(defaults)
        super().__init__(params, defaults)

    def _check_group(self, group):
        lr = _validation.lr(group["lr"])
        beta1, beta2 = _validation.betas(group["betas"])
        eps = _validation.real("eps", group["eps"], what="epsilon value")
        weight_decay = _validation.real("weight_decay", group["weight_decay"])
        _validation.flag("amsgrad", group["amsgrad"])
        maximize = _validation.flag("maximize", group["maximize"])
        return [lr, beta1, beta2, eps, weight_decay, float(self._decoupled), float(maximize)]

    def _buffers(self, group):
        bufs = [(2, "exp_avg"), (3, "exp_avg_sq")]
        if group["amsgrad"]:
            bufs.append((4, "max_exp_avg_sq"))
        return bufs


class AdamW(Adam):
    __doc__ = (r"""AdamW: Adam with decoupled weight decay (Loshchilov & Hutter, 2019).
""" + _ADAM_MATH.replace(
        "{DECAY}", r"p &\leftarrow p \, (1 - \gamma \lambda) \quad \text{(decoupled: applied to"
                   r" the param, before the Adam update)} \\") + _PARAMS.replace(
        "{WD}", "1e-2") + r"""
    The decay multiplies the param by :math:`1 - \gamma\lambda` (lr times weight_decay, as torch
    does), so changing lr with a schedule also scales the decay.

    Example
    -------
    >>> import numpy as np, fastopt
    >>> w = np.ones(4)
    >>> opt = fastopt.AdamW([w], lr=0.1, weight_decay=0.5)
    >>> opt.step([np.zeros(4)])      # zero gradient: only the decay acts
    >>> w
    array([0.95, 0.95, 0.95, 0.95])

    Reference: Loshchilov & Hutter, "Decoupled Weight Decay Regularization", ICLR 2019.
    """)

    _decoupled = True

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2, amsgrad: bool = False, *,
                 maximize: bool = False) -> None:
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         amsgrad=amsgrad, maximize=maximize)
