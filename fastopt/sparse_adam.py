"""SparseAdam: Adam on the rows a row-sparse gradient touches (torch.optim.SparseAdam)."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from . import _spec, functional, reference
from ._own import OwnOptimizer


class SparseAdam(OwnOptimizer):
    r"""torch.optim.SparseAdam for NumPy arrays: Adam's moments and update on the rows of a
    param that its gradient touches, the other rows (params and moments) left as they are.

    ``step(grads)`` takes per param None (skipped: no step counted) or a pair
    ``(indices, values)``: ``indices`` int64 of shape (k,) into the param's first dimension,
    ``values`` of shape ``(k, *param.shape[1:])`` in the param's dtype. Repeated indices are
    added up first (in order of appearance), as torch's ``coalesce``. For each touched row,
    with :math:`g` the (summed, negated to maximize) gradient row and :math:`t` the param's
    step count (counted also when k = 0, as torch):

    .. math::

        m &\leftarrow m + (g - m)(1 - \beta_1), \qquad
        v \leftarrow v + (g^2 - v)(1 - \beta_2) \\
        p &\leftarrow p - \frac{\gamma \sqrt{1 - \beta_2^t}}{1 - \beta_1^t}
            \cdot \frac{m}{\sqrt{v} + \epsilon}

    torch's operations in its order, in the param's dtype. One native call steps every param
    of every group; touched rows are spread over threads (each row on one thread, so any
    thread count gives the same bits). Every index is checked before anything is written: an
    index outside ``[0, param.shape[0])`` raises IndexError naming the param, the index and
    its position, and nothing is modified.

    Parameters (torch's): ``lr=1e-3``, ``betas=(0.9, 0.999)``, ``eps=1e-8``,
    ``maximize=False``. Params float32 or float64. State: ``step`` (int), ``exp_avg``,
    ``exp_avg_sq`` (the param's shape).

    >>> import numpy as np, fastopt
    >>> w = np.zeros((4, 2)); opt = fastopt.SparseAdam([w], lr=0.1)
    >>> opt.step([(np.array([1, 3, 1]), np.ones((3, 2)))])
    >>> w[:, 0].round(4)            # rows 1 and 3 moved by lr (Adam's first step), 0 and 2 not
    array([ 0. , -0.1,  0. , -0.1])
    """

    _rule = _spec.SPARSE_ADAM

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, maximize: bool = False) -> None:
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, maximize=maximize))

    def step(self, grads: Sequence[tuple[np.ndarray, np.ndarray] | None]) -> None:
        """One step of every param with a gradient pair (see the class docstring)."""
        coalesced: dict[int, tuple[np.ndarray, np.ndarray]] = {}

        def check(i, g, p):
            if not isinstance(g, (tuple, list)) or len(g) != 2:
                raise TypeError(f"grads[{i}]: expected None or a pair (indices, values), got "
                                f"{type(g).__name__}")
            idx, val = g
            if not isinstance(idx, np.ndarray) or idx.ndim != 1 \
                    or not np.issubdtype(idx.dtype, np.integer):
                raise TypeError(f"grads[{i}]: indices must be a 1-d integer array, got "
                                f"{getattr(idx, 'dtype', type(idx).__name__)} of shape "
                                f"{getattr(idx, 'shape', None)}")
            want = (idx.shape[0],) + p.shape[1:]
            if not isinstance(val, np.ndarray) or val.shape != want or val.dtype != p.dtype:
                raise ValueError(f"grads[{i}]: values must be an array of shape {want} and "
                                 f"dtype {p.dtype} (params[{i}]'s), got "
                                 f"{getattr(val, 'dtype', type(val).__name__)} of shape "
                                 f"{getattr(val, 'shape', None)}")
            if p.ndim < 1:
                raise ValueError(f"params[{i}]: SparseAdam needs at least one dimension")
            bad = np.flatnonzero((idx < 0) | (idx >= p.shape[0]))
            if bad.size:
                k = int(bad[0])
                raise IndexError(f"grads[{i}]: index {int(idx[k])} at position {k} is out of "
                                 f"range for params[{i}] with {p.shape[0]} rows")
            ci, cv = reference.coalesce(idx.astype(np.int64, copy=False), val)
            coalesced[i] = (ci, np.ascontiguousarray(cv))

        def call(h, idx, params, grads):
            return functional.prepare_sparse_adam(
                [params[i] for i in idx], [coalesced[i][0] for i in idx],
                [coalesced[i][1] for i in idx], [self.state[i]["exp_avg"] for i in idx],
                [self.state[i]["exp_avg_sq"] for i in idx],
                [self.state[i]["step"] for i in idx], lr=h["lr"], beta1=h["beta1"],
                beta2=h["beta2"], eps=h["eps"], maximize=h["maximize"])

        self._run(grads, check, call)
