"""The Adam family: Adam, AdamW, Adamax and RAdam, torch.optim's rules."""
from __future__ import annotations

from . import _spec
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

_PARAMS = r"""
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
    l1 : float, default 0
        L1 regularisation, coupled: :math:`g \leftarrow g + l_1\,\mathrm{sgn}(p)` after the L2
        term (sgn(0) = 0). Not in torch: fastopt's addition, on every optimizer.

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
    True
    >>> float(w[0, 0])
    -0.0010000000474974513

    References: Kingma & Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015;
    Reddi et al., "On the Convergence of Adam and Beyond", ICLR 2018.
    """)

    _spec = _spec.ADAM

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, amsgrad: bool = False, *,
                 maximize: bool = False, l1: float = 0.0,
                 max_grad_norm: float | None = None,
                 clip_value: float | None = None,
                 master_weights: bool = False, rounding: str = "nearest",
                 state_dtype=None, seed: int = 0) -> None:
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                        amsgrad=amsgrad, maximize=maximize, l1=l1,
                        max_grad_norm=max_grad_norm, clip_value=clip_value,
                        master_weights=master_weights, rounding=rounding,
                        state_dtype=state_dtype)
        self._check_group(defaults)
        super().__init__(params, defaults, seed=seed)


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
    True
    >>> w
    array([0.95, 0.95, 0.95, 0.95])

    Reference: Loshchilov & Hutter, "Decoupled Weight Decay Regularization", ICLR 2019.
    """)

    _spec = _spec.ADAMW

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2, amsgrad: bool = False, *,
                 maximize: bool = False, l1: float = 0.0,
                 max_grad_norm: float | None = None,
                 clip_value: float | None = None,
                 master_weights: bool = False, rounding: str = "nearest",
                 state_dtype=None, seed: int = 0) -> None:
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         amsgrad=amsgrad, maximize=maximize, l1=l1,
                         max_grad_norm=max_grad_norm, clip_value=clip_value,
                         master_weights=master_weights, rounding=rounding,
                         state_dtype=state_dtype, seed=seed)


class Adamax(Optimizer):
    r"""Adamax (Kingma & Ba, 2015, section 7): Adam with the infinity norm (torch's rule).

    For each param :math:`p` with gradient :math:`g` at step :math:`t` (per param, from 1):

    .. math::

        g &\leftarrow -g \ \text{if maximize}; \quad
            g \leftarrow g + \lambda p \ \text{if } \lambda \ne 0 \ \text{(L2)} \\
        m_t &\leftarrow m_{t-1} + (1 - \beta_1)(g - m_{t-1}) \\
        u_t &\leftarrow \max(\beta_2 u_{t-1}, |g| + \epsilon) \\
        p &\leftarrow p - \frac{\gamma}{1 - \beta_1^t} \frac{m_t}{u_t}

    Parameters: ``lr=2e-3``, ``betas=(0.9, 0.999)``, ``eps=1e-8``, ``weight_decay=0``,
    ``maximize=False``, ``l1=0`` (as in ``Adam``). State (torch's keys): ``step``, ``exp_avg``,
    ``exp_inf``. Note that eps enters inside the max, as torch does (the paper has no eps).
    """

    _spec = _spec.ADAMAX

    def __init__(self, params, lr: float = 2e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, *, maximize: bool = False,
                 l1: float = 0.0,
                 max_grad_norm: float | None = None,
                 clip_value: float | None = None,
                 master_weights: bool = False, rounding: str = "nearest",
                 state_dtype=None, seed: int = 0) -> None:
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                        maximize=maximize, l1=l1,
                        max_grad_norm=max_grad_norm, clip_value=clip_value,
                        master_weights=master_weights, rounding=rounding,
                        state_dtype=state_dtype)
        self._check_group(defaults)
        super().__init__(params, defaults, seed=seed)


class RAdam(Optimizer):
    r"""RAdam (Liu et al., 2020): Adam with a rectified adaptive learning rate (torch's rule).

    For each param :math:`p` with gradient :math:`g` at step :math:`t` (per param, from 1), after
    the maximize sign and the weight decay (L2, or decoupled
    :math:`p \leftarrow p(1 - \gamma\lambda)` with ``decoupled_weight_decay=True``):

    .. math::

        m_t &\leftarrow m_{t-1} + (1 - \beta_1)(g - m_{t-1}), \quad
            v_t \leftarrow \beta_2 v_{t-1} + (1 - \beta_2) g^2 \\
        \rho_\infty &= \frac{2}{1 - \beta_2} - 1, \quad
            \rho_t = \rho_\infty - \frac{2 t \beta_2^t}{1 - \beta_2^t} \\
        p &\leftarrow p - \gamma \frac{m_t}{1 - \beta_1^t} \cdot
            \frac{\sqrt{1 - \beta_2^t}}{\sqrt{v_t} + \epsilon} \cdot r_t
            \quad \text{if } \rho_t > 5, \text{ with }
            r_t = \sqrt{\frac{(\rho_t - 4)(\rho_t - 2)\rho_\infty}
                             {(\rho_\infty - 4)(\rho_\infty - 2)\rho_t}} \\
        p &\leftarrow p - \gamma \frac{m_t}{1 - \beta_1^t}
            \quad \text{otherwise (SGD with momentum)}

    Parameters: ``lr=1e-3``, ``betas=(0.9, 0.999)``, ``eps=1e-8``, ``weight_decay=0``,
    ``decoupled_weight_decay=False``, ``maximize=False``, ``l1=0``. State (torch's keys):
    ``step``, ``exp_avg``, ``exp_avg_sq``. The element-wise order is torch's exactly.
    """

    _spec = _spec.RADAM

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0,
                 decoupled_weight_decay: bool = False, *, maximize: bool = False,
                 l1: float = 0.0,
                 max_grad_norm: float | None = None,
                 clip_value: float | None = None,
                 master_weights: bool = False, rounding: str = "nearest",
                 state_dtype=None, seed: int = 0) -> None:
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                        decoupled_weight_decay=decoupled_weight_decay, maximize=maximize, l1=l1,
                        max_grad_norm=max_grad_norm, clip_value=clip_value,
                        master_weights=master_weights, rounding=rounding,
                        state_dtype=state_dtype)
        self._check_group(defaults)
        super().__init__(params, defaults, seed=seed)


class NAdam(Optimizer):
    r"""NAdam (Dozat, 2016): Adam with Nesterov momentum, torch.optim.NAdam's rule.

    For each param :math:`p` with gradient :math:`g` at step :math:`t` (per param, from 1), after
    the maximize sign and the weight decay (L2, or decoupled
    :math:`p \leftarrow p(1 - \gamma\lambda)` with ``decoupled_weight_decay=True``, NAdamW):

    .. math::

        \mu_t &= \beta_1 (1 - \tfrac12\, 0.96^{t \psi}), \quad
            \Pi_t = \prod_{k \le t} \mu_k \quad \text{(momentum decay } \psi) \\
        m_t &\leftarrow m_{t-1} + (1 - \beta_1)(g - m_{t-1}), \quad
            v_t \leftarrow \beta_2 v_{t-1} + (1 - \beta_2) g^2 \\
        d &= \sqrt{v_t / (1 - \beta_2^t)} + \epsilon \\
        p &\leftarrow p - \gamma \frac{1 - \mu_t}{1 - \Pi_t} \frac{g}{d}
              - \gamma \frac{\mu_{t+1}}{1 - \Pi_t \mu_{t+1}} \frac{m_t}{d}

    As in torch, the running product :math:`\Pi_t` (state ``mu_product``) is kept in float32
    whatever the params' dtype, and the two terms are added to the param one after the other.

    Parameters: ``lr=2e-3``, ``betas=(0.9, 0.999)``, ``eps=1e-8``, ``weight_decay=0``,
    ``momentum_decay=4e-3``, ``decoupled_weight_decay=False``, ``maximize=False``, ``l1=0``.
    State (torch's keys): ``step``, ``mu_product`` (a 0-d array), ``exp_avg``, ``exp_avg_sq``.
    """

    _spec = _spec.NADAM

    def __init__(self, params, lr: float = 2e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, momentum_decay: float = 4e-3,
                 decoupled_weight_decay: bool = False, *, maximize: bool = False,
                 l1: float = 0.0, max_grad_norm: float | None = None,
                 clip_value: float | None = None,
                 master_weights: bool = False, rounding: str = "nearest",
                 state_dtype=None, seed: int = 0) -> None:
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                        momentum_decay=momentum_decay,
                        decoupled_weight_decay=decoupled_weight_decay, maximize=maximize, l1=l1,
                        max_grad_norm=max_grad_norm, clip_value=clip_value,
                        master_weights=master_weights, rounding=rounding,
                        state_dtype=state_dtype)
        self._check_group(defaults)
        super().__init__(params, defaults, seed=seed)
