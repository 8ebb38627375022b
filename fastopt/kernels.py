"""The fused kernels as functions, for people who keep their own optimizer state.

Each function validates every array and hyperparameter first (nothing is modified when one is
refused), then runs ONE fused pass in native code: multithreaded above a size threshold, with
the instruction set chosen at run time. ``fastopt.reference`` has a pure-NumPy twin of each
function, with the same signature, that computes bitwise the same result.

Single tensor: ``<rule>_step(param, grad, <state...>, *, <hyperparameters>)``. Many tensors in
one native call: ``<rule>(params, grads, <state lists...>, *, ...)`` (from fastopt.functional);
a None gradient skips its tensor. Rules whose update depends on the step count take ``step``
(single) or ``steps`` (one per tensor): the count of THIS step, from 1. ``probe`` is the
benchmark's speed limit: the same memory traffic with no arithmetic. ``grad_scale``
multiplies every gradient inside the pass (pass 1/s to undo a loss scale s); unlike the
optimizers' ``step(grads, grad_scale=s)``, it does not skip on non-finite gradients.
"""
from __future__ import annotations

import numpy as np

from .functional import (
    _one,
    adadelta,
    adagrad,
    adam,
    adamax,
    asgd,
    lamb,
    lion,
    nadam,
    probe,
    radam,
    rmsprop,
    rprop,
    sgd,
)

__all__ = ["adam_step", "adam", "sgd_step", "sgd", "rmsprop_step", "rmsprop", "adagrad_step",
           "adagrad", "lion_step", "lion", "adamax_step", "adamax", "radam_step", "radam",
           "nadam_step", "nadam", "adadelta_step", "adadelta", "rprop_step", "rprop", "asgd_step",
           "asgd", "lamb_step", "lamb", "probe"]


def adam_step(param: np.ndarray, grad: np.ndarray, exp_avg: np.ndarray, exp_avg_sq: np.ndarray,
              max_exp_avg_sq: np.ndarray | None = None, *, step: int, lr: float = 1e-3,
              beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8,
              weight_decay: float = 0.0, decoupled_weight_decay: bool = False,
              maximize: bool = False, l1: float = 0.0, clip_value: float | None = None,
              grad_scale: float = 1.0) -> None:
    """One fused Adam/AdamW step on one tensor; param and state modified in place.

    ``step`` is the count of this step, starting at 1 (bias correction uses it). Pass
    ``max_exp_avg_sq`` for AMSGrad. ``decoupled_weight_decay=True`` gives AdamW.

    >>> import numpy as np, fastopt
    >>> p = np.ones(3, np.float32); g = np.full(3, 0.5, np.float32)
    >>> m = np.zeros_like(p); v = np.zeros_like(p)
    >>> fastopt.kernels.adam_step(p, g, m, v, step=1, lr=0.1)
    >>> p
    array([0.9, 0.9, 0.9], dtype=float32)
    """
    adam([param], [grad], [exp_avg], [exp_avg_sq], _one(max_exp_avg_sq), [step], lr=lr,
         beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay,
         decoupled_weight_decay=decoupled_weight_decay, maximize=maximize, l1=l1,
         clip_value=clip_value,
         grad_scale=grad_scale)


def sgd_step(param: np.ndarray, grad: np.ndarray, momentum_buffer: np.ndarray | None = None, *,
             lr: float = 1e-3, momentum: float = 0.0, dampening: float = 0.0,
             weight_decay: float = 0.0, nesterov: bool = False, maximize: bool = False,
             l1: float = 0.0, init_buffer: bool = False, clip_value: float | None = None,
             grad_scale: float = 1.0) -> None:
    """One fused SGD step on one tensor; param and momentum_buffer modified in place.

    >>> import numpy as np, fastopt
    >>> p = np.ones(2); g = np.full(2, 2.0); buf = np.empty(2)
    >>> fastopt.kernels.sgd_step(p, g, buf, lr=0.1, momentum=0.9, init_buffer=True)
    >>> p, buf
    (array([0.8, 0.8]), array([2., 2.]))
    """
    sgd([param], [grad], _one(momentum_buffer), lr=lr, momentum=momentum, dampening=dampening,
        weight_decay=weight_decay, nesterov=nesterov, maximize=maximize, l1=l1,
        init_buffers=init_buffer, clip_value=clip_value,
        grad_scale=grad_scale)


def rmsprop_step(param: np.ndarray, grad: np.ndarray, square_avg: np.ndarray,
                 momentum_buffer: np.ndarray | None = None, grad_avg: np.ndarray | None = None,
                 *, lr: float = 1e-2, alpha: float = 0.99, eps: float = 1e-8,
                 weight_decay: float = 0.0, momentum: float = 0.0, centered: bool = False,
                 maximize: bool = False, l1: float = 0.0, clip_value: float | None = None,
                 grad_scale: float = 1.0) -> None:
    """One fused RMSprop step on one tensor; param and state modified in place."""
    rmsprop([param], [grad], [square_avg], _one(momentum_buffer), _one(grad_avg), lr=lr,
            alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum,
            centered=centered, maximize=maximize, l1=l1, clip_value=clip_value,
            grad_scale=grad_scale)


def adagrad_step(param: np.ndarray, grad: np.ndarray, state_sum: np.ndarray, *, step: int,
                 lr: float = 1e-2, lr_decay: float = 0.0, weight_decay: float = 0.0,
                 eps: float = 1e-10, maximize: bool = False, l1: float = 0.0,
                 clip_value: float | None = None,
                 grad_scale: float = 1.0) -> None:
    """One fused Adagrad step on one tensor; param and state_sum modified in place."""
    adagrad([param], [grad], [state_sum], [step], lr=lr, lr_decay=lr_decay,
            weight_decay=weight_decay, eps=eps, maximize=maximize, l1=l1, clip_value=clip_value,
            grad_scale=grad_scale)


def lion_step(param: np.ndarray, grad: np.ndarray, exp_avg: np.ndarray, *, lr: float = 1e-4,
              beta1: float = 0.9, beta2: float = 0.99, weight_decay: float = 0.0,
              maximize: bool = False, l1: float = 0.0, clip_value: float | None = None,
              grad_scale: float = 1.0) -> None:
    """One fused Lion step on one tensor; param and exp_avg modified in place."""
    lion([param], [grad], [exp_avg], lr=lr, beta1=beta1, beta2=beta2,
         weight_decay=weight_decay, maximize=maximize, l1=l1, clip_value=clip_value,
         grad_scale=grad_scale)


def adamax_step(param: np.ndarray, grad: np.ndarray, exp_avg: np.ndarray, exp_inf: np.ndarray,
                *, step: int, lr: float = 2e-3, beta1: float = 0.9, beta2: float = 0.999,
                eps: float = 1e-8, weight_decay: float = 0.0, maximize: bool = False,
                l1: float = 0.0, clip_value: float | None = None,
                grad_scale: float = 1.0) -> None:
    """One fused Adamax step on one tensor; param and state modified in place."""
    adamax([param], [grad], [exp_avg], [exp_inf], [step], lr=lr, beta1=beta1, beta2=beta2,
           eps=eps, weight_decay=weight_decay, maximize=maximize, l1=l1, clip_value=clip_value,
           grad_scale=grad_scale)


def radam_step(param: np.ndarray, grad: np.ndarray, exp_avg: np.ndarray, exp_avg_sq: np.ndarray,
               *, step: int, lr: float = 1e-3, beta1: float = 0.9, beta2: float = 0.999,
               eps: float = 1e-8, weight_decay: float = 0.0,
               decoupled_weight_decay: bool = False, maximize: bool = False,
               l1: float = 0.0, clip_value: float | None = None,
               grad_scale: float = 1.0) -> None:
    """One fused RAdam step on one tensor; param and state modified in place."""
    radam([param], [grad], [exp_avg], [exp_avg_sq], [step], lr=lr, beta1=beta1, beta2=beta2,
          eps=eps, weight_decay=weight_decay, decoupled_weight_decay=decoupled_weight_decay,
          maximize=maximize, l1=l1, clip_value=clip_value,
          grad_scale=grad_scale)


def nadam_step(param: np.ndarray, grad: np.ndarray, exp_avg: np.ndarray, exp_avg_sq: np.ndarray,
               mu_product: np.ndarray, *, step: int, lr: float = 2e-3, beta1: float = 0.9,
               beta2: float = 0.999, eps: float = 1e-8, weight_decay: float = 0.0,
               momentum_decay: float = 4e-3, decoupled_weight_decay: bool = False,
               maximize: bool = False, l1: float = 0.0, clip_value: float | None = None,
               grad_scale: float = 1.0) -> None:
    """One fused NAdam step on one tensor; ``mu_product`` is a float64 array of one element."""
    if not isinstance(mu_product, np.ndarray) or mu_product.size != 1:
        raise TypeError("mu_product: expected a float64 array of one element")
    mp = mu_product.reshape(1)
    nadam([param], [grad], [exp_avg], [exp_avg_sq], mp, [step], lr=lr, beta1=beta1,
          beta2=beta2, eps=eps, weight_decay=weight_decay, momentum_decay=momentum_decay,
          decoupled_weight_decay=decoupled_weight_decay, maximize=maximize, l1=l1,
          clip_value=clip_value, grad_scale=grad_scale)
    if not np.shares_memory(mp, mu_product):
        mu_product[...] = mp[0]


def adadelta_step(param: np.ndarray, grad: np.ndarray, square_avg: np.ndarray,
                  acc_delta: np.ndarray, *, lr: float = 1.0, rho: float = 0.9,
                  eps: float = 1e-6, weight_decay: float = 0.0, maximize: bool = False,
                  l1: float = 0.0, clip_value: float | None = None,
                  grad_scale: float = 1.0) -> None:
    """One fused Adadelta step on one tensor; param and state modified in place."""
    adadelta([param], [grad], [square_avg], [acc_delta], lr=lr, rho=rho, eps=eps,
             weight_decay=weight_decay, maximize=maximize, l1=l1, clip_value=clip_value,
             grad_scale=grad_scale)


def rprop_step(param: np.ndarray, grad: np.ndarray, prev: np.ndarray, step_size: np.ndarray,
               *, etaminus: float = 0.5, etaplus: float = 1.2, step_size_min: float = 1e-6,
               step_size_max: float = 50.0, maximize: bool = False, l1: float = 0.0,
               clip_value: float | None = None, grad_scale: float = 1.0) -> None:
    """One fused Rprop step on one tensor; param, prev and step_size modified in place
    (``step_size`` starts at lr, ``prev`` at 0).

    >>> import numpy as np, fastopt
    >>> p = np.zeros(2); prev = np.zeros(2); ss = np.full(2, 0.1)
    >>> fastopt.kernels.rprop_step(p, np.array([2.0, -3.0]), prev, ss)
    >>> p, prev, ss
    (array([-0.1,  0.1]), array([ 2., -3.]), array([0.1, 0.1]))
    """
    rprop([param], [grad], [prev], [step_size], etaminus=etaminus, etaplus=etaplus,
          step_size_min=step_size_min, step_size_max=step_size_max, maximize=maximize, l1=l1,
          clip_value=clip_value, grad_scale=grad_scale)


def asgd_step(param: np.ndarray, grad: np.ndarray, ax: np.ndarray, eta_mu: np.ndarray, *,
              step: int, lr: float = 1e-2, lambd: float = 1e-4, alpha: float = 0.75,
              t0: float = 1e6, weight_decay: float = 0.0, maximize: bool = False,
              l1: float = 0.0, clip_value: float | None = None,
              grad_scale: float = 1.0) -> None:
    """One fused ASGD step on one tensor; ``eta_mu`` is a float64 array of two elements (eta,
    mu: start them at float32(lr) and 1), modified in place with param and ax.

    >>> import numpy as np, fastopt
    >>> p = np.ones(2); ax = np.zeros(2); eta_mu = np.array([0.5, 1.0])
    >>> fastopt.kernels.asgd_step(p, np.full(2, 1.0), ax, eta_mu, step=1, lr=0.5, lambd=0.0)
    >>> p, ax, eta_mu
    (array([0.5, 0.5]), array([0.5, 0.5]), array([0.5, 1. ]))
    """
    if (not isinstance(eta_mu, np.ndarray) or eta_mu.dtype != np.float64
            or eta_mu.size != 2 or not eta_mu.flags.writeable):
        raise TypeError("eta_mu: expected a writeable float64 array of two elements")
    em = np.ascontiguousarray(eta_mu.reshape(1, 2))
    asgd([param], [grad], [ax], em, [step], lr=lr, lambd=lambd, alpha=alpha, t0=t0,
         weight_decay=weight_decay, maximize=maximize, l1=l1, clip_value=clip_value,
         grad_scale=grad_scale)
    if not np.shares_memory(em, eta_mu):
        eta_mu.reshape(-1)[...] = em.reshape(-1)


def lamb_step(param: np.ndarray, grad: np.ndarray, exp_avg: np.ndarray, exp_avg_sq: np.ndarray,
              *, step: int, lr: float = 1e-3, beta1: float = 0.9, beta2: float = 0.999,
              eps: float = 1e-6, weight_decay: float = 0.01, bias_correction: bool = True,
              use_nvlamb: bool = False, maximize: bool = False, l1: float = 0.0,
              clip_value: float | None = None, grad_scale: float = 1.0) -> None:
    """One fused LAMB step on one tensor (its norms, then its update); param and state
    modified in place."""
    lamb([param], [grad], [exp_avg], [exp_avg_sq], [step], lr=lr, beta1=beta1, beta2=beta2,
         eps=eps, weight_decay=weight_decay, bias_correction=bias_correction,
         use_nvlamb=use_nvlamb, maximize=maximize, l1=l1, clip_value=clip_value,
         grad_scale=grad_scale)
