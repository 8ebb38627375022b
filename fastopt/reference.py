"""Pure-NumPy reference implementations: the test oracle and the benchmark baseline.

Each function has the signature of its twin in ``fastopt.kernels`` and computes the same update
with the same operations in the same order, in the array's own dtype, so the fused kernels can
be compared with it bitwise. It is written for reading, not for speed: every line is one NumPy
pass over memory, most with a temporary.

The formulas are torch.optim's (single-tensor implementation); see the docstrings of
``fastopt.SGD``, ``fastopt.Adam`` and ``fastopt.AdamW``.
"""
from __future__ import annotations

import numpy as np


def adam_step(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq=None, *, step, lr=1e-3,
              beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
              decoupled_weight_decay=False, maximize=False):
    """One Adam/AdamW step on one tensor; param and state modified in place.

    ``step`` is the count of this step, starting at 1. With ``max_exp_avg_sq`` (AMSGrad) the
    running maximum of ``exp_avg_sq`` is kept and used in the denominator.
    """
    t = param.dtype.type
    g = -grad if maximize else grad
    if decoupled_weight_decay:
        param *= t(1 - lr * weight_decay)
    elif weight_decay != 0:
        g = g + t(weight_decay) * param
    # exp_avg.lerp_(g, 1 - beta1), with torch's two-sided lerp formula
    w = t(1 - beta1)
    if abs(w) < 0.5:
        exp_avg += w * (g - exp_avg)
    else:
        exp_avg[...] = g - (g - exp_avg) * (t(1) - w)
    exp_avg_sq *= t(beta2)
    exp_avg_sq += t(1 - beta2) * g * g
    bias_correction1 = 1 - beta1 ** step
    bias_correction2 = 1 - beta2 ** step
    step_size = lr / bias_correction1
    bias_correction2_sqrt = bias_correction2 ** 0.5
    if max_exp_avg_sq is not None:
        np.maximum(max_exp_avg_sq, exp_avg_sq, out=max_exp_avg_sq)
        second = max_exp_avg_sq
    else:
        second = exp_avg_sq
    # torch divides by bias_correction2_sqrt; fastopt multiplies by its reciprocal (one
    # division less per element; see fastopt.Adam's docstring)
    denom = np.sqrt(second) * t(1 / bias_correction2_sqrt) + t(eps)
    param += (t(-step_size) * exp_avg) / denom


def sgd_step(param, grad, momentum_buffer=None, *, lr=1e-3, momentum=0.0, dampening=0.0,
             weight_decay=0.0, nesterov=False, maximize=False, init_buffer=False):
    """One SGD step on one tensor; param and momentum_buffer modified in place.

    ``init_buffer`` marks the buffer's first step: it is then set to the gradient (torch creates
    the buffer as a copy of the gradient) instead of being decayed.
    """
    t = param.dtype.type
    g = -grad if maximize else grad
    if weight_decay != 0:
        g = g + t(weight_decay) * param
    if momentum != 0:
        buf = momentum_buffer
        if init_buffer:
            buf[...] = g
        else:
            buf *= t(momentum)
            buf += t(1 - dampening) * g
        g = g + t(momentum) * buf if nesterov else buf
    param += t(-lr) * g


def adam(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, **hyper):
    """adam_step over lists; a None gradient skips its tensor; steps[i] is tensor i's count."""
    for i, (p, g) in enumerate(zip(params, grads)):
        if g is None:
            continue
        vmax = None if max_exp_avg_sqs is None else max_exp_avg_sqs[i]
        adam_step(p, g, exp_avgs[i], exp_avg_sqs[i], vmax, step=int(steps[i]), **hyper)


def sgd(params, grads, momentum_buffers, *, init_buffers=False, **hyper):
    """sgd_step over lists; a None gradient skips its tensor."""
    for i, (p, g) in enumerate(zip(params, grads)):
        if g is None:
            continue
        buf = None if momentum_buffers is None else momentum_buffers[i]
        init = init_buffers if isinstance(init_buffers, bool) else bool(init_buffers[i])
        sgd_step(p, g, buf, init_buffer=init, **hyper)
