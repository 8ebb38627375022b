"""LAMB (You et al., 2020) with Apex FusedLAMB's trust ratio. torch has no LAMB."""
from __future__ import annotations

from . import _spec
from .optimizer import Optimizer


class LAMB(Optimizer):
    r"""LAMB, layer-wise adaptive moments (You et al., 2020, Algorithm 2), as NVIDIA Apex's
    FusedLAMB computes it (``adam_w_mode=True``, ``grad_averaging=True``).

    For each param :math:`p` (one tensor: the "layer") with gradient :math:`g` at step
    :math:`t` (per param, from 1; negated when maximizing, plus :math:`l_1\,\mathrm{sgn}(p)`
    with l1):

    .. math::

        m &\leftarrow \beta_1 m + (1 - \beta_1) g, \qquad
        v \leftarrow \beta_2 v + (1 - \beta_2) g^2 \\
        u &= \frac{m / (1 - \beta_1^t)}{\sqrt{v / (1 - \beta_2^t)} + \epsilon} + \lambda p \\
        r &= \frac{\lVert p \rVert_2}{\lVert u \rVert_2}
            \quad \text{if } (\lambda \ne 0 \text{ or use\_nvlamb}),\ \lVert p \rVert \ne 0,
            \ \lVert u \rVert \ne 0; \quad r = 1 \text{ otherwise} \\
        p &\leftarrow p - \gamma\, r\, u

    with :math:`p` in the norms and in :math:`u` the param before this step (the paper's
    :math:`\phi` is the identity). ``bias_correction=False`` drops both corrections. The norms
    are sums of squares in float64, per tensor, in a fixed order (blocks of 8192 elements, 8
    accumulators each, as ``fastopt.grad_norm``): bitwise the same for any thread count and
    instruction set. The step reads each tensor twice: once for its norms, once to update it.

    Differences from Apex: Apex clips the gradients by their global norm with
    ``max_grad_norm=1.0`` by default; fastopt's ``max_grad_norm`` (per group, default None)
    does the same when set. The update is computed in the param's dtype (Apex: float32).

    Parameters: ``lr=1e-3``, ``betas=(0.9, 0.999)``, ``eps=1e-6``, ``weight_decay=0.01``,
    ``bias_correction=True``, ``use_nvlamb=False`` (apply the trust ratio also without weight
    decay), ``maximize=False``, ``l1=0``. State: ``step``, ``exp_avg``, ``exp_avg_sq``.

    >>> import numpy as np, fastopt
    >>> p = np.array([3.0, 4.0]); opt = fastopt.LAMB([p], lr=0.1, weight_decay=0.5)
    >>> _ = opt.step([np.array([1.0, 1.0])])
    >>> np.round(p, 4)     # u = (1, 1)/(1 + 1e-6) + 0.5*(3, 4); r = |p| / |u| = 5 / 3.9051
    array([2.6799, 3.6159])
    """

    _spec = _spec.LAMB

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-6, weight_decay: float = 0.01, bias_correction: bool = True,
                 *, use_nvlamb: bool = False, maximize: bool = False, l1: float = 0.0,
                 max_grad_norm: float | None = None,
                 clip_value: float | None = None,
                 master_weights: bool = False, rounding: str = "nearest",
                 state_dtype=None, seed: int = 0) -> None:
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                        bias_correction=bias_correction, use_nvlamb=use_nvlamb,
                        maximize=maximize, l1=l1, max_grad_norm=max_grad_norm,
                        clip_value=clip_value,
                        master_weights=master_weights, rounding=rounding,
                        state_dtype=state_dtype)
        self._check_group(defaults)
        super().__init__(params, defaults, seed=seed)
