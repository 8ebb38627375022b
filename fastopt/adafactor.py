"""Adafactor (Shazeer and Stern, 2018) as torch.optim.Adafactor computes it."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from . import _spec, _validation, functional
from ._own import OwnOptimizer


class Adafactor(OwnOptimizer):
    r"""torch.optim.Adafactor for NumPy arrays: second moments factored into row and column
    means for params of 2+ dimensions (over the last two), a full ``variance`` otherwise.

    At step :math:`t` (per param, from 1), with :math:`g` the gradient (negated to maximize)
    and :math:`n` the param's size:

    .. math::

        \beta_{2,t} &= 1 - t^{c} \ (c = \text{beta2\_decay}),\quad
        \rho_t = \min(\gamma, 1/\sqrt t),\quad
        \alpha = \max(\epsilon_2, \lVert p \rVert_2 / \sqrt n)\, \rho_t \\
        p &\leftarrow p\,(1 - \gamma\lambda) \quad \text{(weight decay, after } \alpha) \\
        R &\leftarrow \mathrm{lerp}(R, \mathrm{mean}_{-1}(g^2), t^c), \quad
        C \leftarrow \mathrm{lerp}(C, \mathrm{mean}_{-2}(g^2), t^c), \quad
        \hat v = R\,C / \max(\mathrm{mean}_{-2}(R), \epsilon_1) \\
        u &= \max(\hat v, \epsilon_1^2)^{-1/2} g, \qquad
        p \leftarrow p - \frac{\alpha}{\max(1, \lVert u \rVert_2 / (\sqrt n\, d))}\, u

    (0/1-d params: :math:`\hat v = v \leftarrow \mathrm{lerp}(v, g^2, t^c)`).
    ``eps=(None, 1e-3)``: :math:`\epsilon_1` None is the machine epsilon of the dtype of the
    group's first stepping param (torch resolves it there, once per group).

    Fully native: one call steps every param of every group, each tensor on one thread
    (tensors spread over threads), in three reads: the param's norm, then the gradient's row
    and column sums of squares into row_var/col_var (or variance), then the update's norm and
    finally the write. Every sum (the two norms, each row's sum over its columns, each
    column's over the rows, row_var's mean) is float64 in a fixed order (csrc/rules2.c), so
    results are bitwise the same for any thread count and equal ``fastopt.reference``'s;
    against torch (which sums in the param's dtype, in its own order) they agree to the
    dtype's rounding. Empty params are skipped.

    Parameters (torch's): ``lr=1e-2``, ``beta2_decay=-0.8``, ``eps=(None, 1e-3)``, ``d=1.0``,
    ``weight_decay=0.0``, ``maximize=False``. Params float32 or float64. State: ``step``
    (int), and ``row_var`` (``shape[:-1] + (1,)``) and ``col_var`` (``shape[:-2] + (1,
    shape[-1])``) for 2+ dims, ``variance`` (the param's shape) otherwise.

    >>> import numpy as np, fastopt
    >>> w = np.ones((2, 3)); opt = fastopt.Adafactor([w], lr=0.1)
    >>> opt.step([np.ones((2, 3))])
    >>> w.round(4)               # alpha = rho * |w|/sqrt(6) = 0.1; the update's RMS is 1
    array([[0.9, 0.9, 0.9],
           [0.9, 0.9, 0.9]])
    """

    _rule = _spec.ADAFACTOR

    def __init__(self, params, lr: float = 1e-2, beta2_decay: float = -0.8,
                 eps: tuple[float | None, float] = (None, 1e-3), d: float = 1.0,
                 weight_decay: float = 0.0, *, maximize: bool = False) -> None:
        super().__init__(params, dict(lr=lr, beta2_decay=beta2_decay, eps=eps, d=d,
                                      weight_decay=weight_decay, maximize=maximize))

    def step(self, grads: Sequence[np.ndarray | None]) -> None:
        """One step of every param with a gradient (None skips its param)."""
        def check(i, g, p):
            _validation.check_like(f"grads[{i}]", g, p, f"params[{i}]", writeable=False)

        def call(h, idx, params, grads):
            st = [self.state[i] for i in idx]
            return functional.prepare_adafactor(
                [params[i] for i in idx], [grads[i] for i in idx],
                [s.get("row_var") for s in st], [s.get("col_var") for s in st],
                [s.get("variance") for s in st], [s["step"] for s in st], lr=h["lr"],
                beta2_decay=h["beta2_decay"], eps1=h["eps1"], eps2=h["eps2"], d=h["d"],
                weight_decay=h["weight_decay"], maximize=h["maximize"])

        self._run(grads, check, call)
