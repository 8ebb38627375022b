"""Each rule's hyperparameters: checked, then packed into the row of doubles the native layer
reads (the order of the FO_<RULE>_* enums in csrc/fastopt.h). Shared by the optimizer classes
(one row per param group) and by fastopt.kernels (one row per call), so both refuse the same
values with the same messages.

Every row ends with the same three entries: l1, clip (the clip_value, 0 for none) and the
gradient's scale for the step (GSCALE, last: 1 here; the optimizer sets it to the norm-clipping
coefficient, the kernel functions to their grad_scale argument).
"""
from __future__ import annotations

from . import _validation as v

GSCALE = -1    # the column of the gradient's scale in every row


def _common(weight_decay, maximize, l1) -> tuple[float, float, float]:
    return (v.real("weight_decay", weight_decay), float(v.flag("maximize", maximize)),
            v.real("l1", l1))


def tail(clip_value, grad_scale=1.0) -> list[float]:
    """The last two entries of every row: clip (0: off) and the gradient's scale."""
    clip = 0.0 if clip_value is None else v.real("clip_value", clip_value, low=0.0)
    if clip_value is not None and clip == 0.0:
        raise ValueError("Invalid clip_value value: 0 (use None for no clipping)")
    return [clip, v.real("grad_scale", grad_scale, low=None)]


def sgd_row(*, lr, momentum, dampening, weight_decay, nesterov, maximize, l1, clip_value=None,
            grad_scale=1.0) -> list[float]:
    momentum = v.real("momentum", momentum)
    dampening = v.real("dampening", dampening, low=None)
    nesterov = v.flag("nesterov", nesterov)
    if nesterov and (momentum <= 0 or dampening != 0):
        raise ValueError("Nesterov momentum requires a momentum and zero dampening")
    wd, mx, l1 = _common(weight_decay, maximize, l1)
    return [v.lr(lr), momentum, dampening, wd, float(nesterov), mx, l1,
            *tail(clip_value, grad_scale)]


def adam_row(*, lr, beta1, beta2, eps, weight_decay, decoupled, maximize, l1, clip_value=None,
            grad_scale=1.0) -> list[float]:
    beta1, beta2 = v.betas((beta1, beta2))
    wd, mx, l1 = _common(weight_decay, maximize, l1)
    return [v.lr(lr), beta1, beta2, v.real("eps", eps, what="epsilon value"), wd,
            float(v.flag("decoupled_weight_decay", decoupled)), mx, l1,
            *tail(clip_value, grad_scale)]


def rmsprop_row(*, lr, alpha, eps, weight_decay, momentum, centered, maximize,
                l1, clip_value=None,
            grad_scale=1.0) -> list[float]:
    alpha = v.real("alpha", alpha, high=1.0, what="alpha value")
    wd, mx, l1 = _common(weight_decay, maximize, l1)
    return [v.lr(lr), alpha, v.real("eps", eps, what="epsilon value"), wd,
            v.real("momentum", momentum), float(v.flag("centered", centered)), mx, l1,
            *tail(clip_value, grad_scale)]


def adagrad_row(*, lr, lr_decay, weight_decay, eps, maximize, l1, clip_value=None,
            grad_scale=1.0) -> list[float]:
    wd, mx, l1 = _common(weight_decay, maximize, l1)
    return [v.lr(lr), v.real("lr_decay", lr_decay), wd,
            v.real("eps", eps, what="epsilon value"), mx, l1, *tail(clip_value, grad_scale)]


def lion_row(*, lr, beta1, beta2, weight_decay, maximize, l1, clip_value=None,
            grad_scale=1.0) -> list[float]:
    beta1, beta2 = v.betas((beta1, beta2))
    wd, mx, l1 = _common(weight_decay, maximize, l1)
    return [v.lr(lr), beta1, beta2, wd, mx, l1, *tail(clip_value, grad_scale)]


def adamax_row(*, lr, beta1, beta2, eps, weight_decay, maximize, l1, clip_value=None,
            grad_scale=1.0) -> list[float]:
    beta1, beta2 = v.betas((beta1, beta2))
    wd, mx, l1 = _common(weight_decay, maximize, l1)
    return [v.lr(lr), beta1, beta2, v.real("eps", eps, what="epsilon value"), wd, mx, l1,
            *tail(clip_value, grad_scale)]


def radam_row(*, lr, beta1, beta2, eps, weight_decay, decoupled, maximize, l1, clip_value=None,
            grad_scale=1.0) -> list[float]:
    return adam_row(lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay,
                    decoupled=decoupled, maximize=maximize, l1=l1, clip_value=clip_value,
                    grad_scale=grad_scale)


def nadam_row(*, lr, beta1, beta2, eps, weight_decay, momentum_decay, decoupled, maximize, l1,
              clip_value=None, grad_scale=1.0) -> list[float]:
    beta1, beta2 = v.betas((beta1, beta2))
    wd, mx, l1 = _common(weight_decay, maximize, l1)
    return [v.lr(lr), beta1, beta2, v.real("eps", eps, what="epsilon value"), wd,
            v.real("momentum_decay", momentum_decay),
            float(v.flag("decoupled_weight_decay", decoupled)), mx, l1,
            *tail(clip_value, grad_scale)]
