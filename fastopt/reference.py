"""Pure-NumPy reference implementations: the test oracle and the benchmark baseline.

Each function has the signature of its twin in ``fastopt.kernels`` and computes the same update
with the same operations in the same order, in the array's own dtype, so the fused kernels can
be compared with it bitwise. It is written for reading, not for speed: every line is one NumPy
pass over memory, most with a temporary.

The formulas are torch.optim's (single-tensor implementations; Lion after Chen et al., 2023);
see the docstrings of the optimizer classes. Every rule also takes ``maximize`` (negate the
gradient), ``grad_scale`` (multiply it), ``clip_value`` (clamp it to +-clip_value, after the
scale) and ``l1`` (add ``l1 * sgn(param)``, after any L2 term); ``sgn`` is 1, -1, or the value
itself for +-0 and NaN.
"""
from __future__ import annotations

import math

import numpy as np


def _sgn(x):
    """1, -1, or x itself for +-0 and NaN (a zero stays put, a NaN propagates)."""
    return np.where(x > 0, 1, np.where(x < 0, -1, x)).astype(x.dtype, copy=False)


def _grad(grad, param, maximize, grad_scale, clip_value):
    """The gradient as the rule sees it: times grad_scale (negated to maximize; the optimizers
    pass the gradient-norm clipping coefficient here), then clamped to +-clip_value."""
    t = param.dtype.type
    s = -grad_scale if maximize else grad_scale
    g = grad if s == 1 else grad * t(s)
    if clip_value is not None:
        g = np.clip(g, t(-clip_value), t(clip_value))
    return g


def _coupled(g, param, weight_decay, l1):
    """The gradient with L2 (``weight_decay * param``) and L1 (``l1 * sgn(param)``) added."""
    t = param.dtype.type
    if weight_decay != 0:
        g = g + t(weight_decay) * param
    if l1 != 0:
        g = g + t(l1) * _sgn(param)
    return g


def _lerp_(x, end, w):
    """x.lerp_(end, w) with torch's two-sided formula, in place (w in x's dtype)."""
    if abs(w) < 0.5:
        x += w * (end - x)
    else:
        x[...] = end - (end - x) * (type(w)(1) - w)


def _adam_moments(param, grad, exp_avg, exp_avg_sq, *, lr, beta1, beta2, weight_decay,
                  decoupled, maximize, l1, clip_value, grad_scale):
    """The part Adam, RAdam and NAdam share: the gradient (scaled, clipped, with L2 or after
    the decoupled decay of the param, and L1), then both moments updated in place. Returns
    the gradient."""
    t = param.dtype.type
    g = _grad(grad, param, maximize, grad_scale, clip_value)
    if decoupled:
        param *= t(1 - lr * weight_decay)
        g = _coupled(g, param, 0, l1)
    else:
        g = _coupled(g, param, weight_decay, l1)
    _lerp_(exp_avg, g, t(1 - beta1))
    exp_avg_sq *= t(beta2)
    exp_avg_sq += t(1 - beta2) * g * g
    return g


def adam_step(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq=None, *, step, lr=1e-3,
              beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
              decoupled_weight_decay=False, maximize=False, l1=0.0, clip_value=None,
              grad_scale=1.0):
    """One Adam/AdamW step on one tensor; param and state modified in place.

    ``step`` is the count of this step, starting at 1. With ``max_exp_avg_sq`` (AMSGrad) the
    running maximum of ``exp_avg_sq`` is kept and used in the denominator.
    """
    t = param.dtype.type
    _adam_moments(param, grad, exp_avg, exp_avg_sq, lr=lr, beta1=beta1, beta2=beta2,
                  weight_decay=weight_decay, decoupled=decoupled_weight_decay, maximize=maximize,
                  l1=l1, clip_value=clip_value, grad_scale=grad_scale)
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
             weight_decay=0.0, nesterov=False, maximize=False, l1=0.0, init_buffer=False,
             clip_value=None, grad_scale=1.0):
    """One SGD step on one tensor; param and momentum_buffer modified in place.

    ``init_buffer`` marks the buffer's first step: it is then set to the gradient (torch creates
    the buffer as a copy of the gradient) instead of being decayed.
    """
    t = param.dtype.type
    g = _coupled(_grad(grad, param, maximize, grad_scale, clip_value), param, weight_decay, l1)
    if momentum != 0:
        buf = momentum_buffer
        if init_buffer:
            buf[...] = g
        else:
            buf *= t(momentum)
            buf += t(1 - dampening) * g
        g = g + t(momentum) * buf if nesterov else buf
    param += t(-lr) * g


def rmsprop_step(param, grad, square_avg, momentum_buffer=None, grad_avg=None, *, lr=1e-2,
                 alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False,
                 maximize=False, l1=0.0, clip_value=None,
                 grad_scale=1.0):
    """One RMSprop step on one tensor; param and state modified in place.

    ``momentum_buffer`` is needed when momentum > 0, ``grad_avg`` when centered.
    """
    t = param.dtype.type
    g = _coupled(_grad(grad, param, maximize, grad_scale, clip_value), param, weight_decay, l1)
    square_avg *= t(alpha)
    square_avg += t(1 - alpha) * g * g
    if centered:
        _lerp_(grad_avg, g, t(1 - alpha))
        # v - mean^2 >= 0 in exact arithmetic; fastopt clamps rounding errors below 0 at 0
        avg = np.sqrt(np.maximum(t(0), square_avg - grad_avg * grad_avg))
    else:
        avg = np.sqrt(square_avg)
    avg = avg + t(eps)
    if momentum > 0:
        momentum_buffer *= t(momentum)
        momentum_buffer += g / avg
        param += t(-lr) * momentum_buffer
    else:
        param += (t(-lr) * g) / avg


def adagrad_step(param, grad, state_sum, *, step, lr=1e-2, lr_decay=0.0, weight_decay=0.0,
                 eps=1e-10, maximize=False, l1=0.0, clip_value=None,
                 grad_scale=1.0):
    """One Adagrad step on one tensor; param and state_sum modified in place."""
    t = param.dtype.type
    g = _coupled(_grad(grad, param, maximize, grad_scale, clip_value), param, weight_decay, l1)
    clr = lr / (1 + (step - 1) * lr_decay)
    state_sum += g * g
    std = np.sqrt(state_sum) + t(eps)
    param += (t(-clr) * g) / std


def lion_step(param, grad, exp_avg, *, lr=1e-4, beta1=0.9, beta2=0.99, weight_decay=0.0,
              maximize=False, l1=0.0, clip_value=None,
              grad_scale=1.0):
    """One Lion step on one tensor (decoupled weight decay); param and exp_avg in place."""
    t = param.dtype.type
    g = _grad(grad, param, maximize, grad_scale, clip_value)
    param *= t(1 - lr * weight_decay)
    g = _coupled(g, param, 0, l1)
    c = exp_avg * t(beta1) + t(1 - beta1) * g
    param += t(-lr) * _sgn(c)
    exp_avg *= t(beta2)
    exp_avg += t(1 - beta2) * g


def adamax_step(param, grad, exp_avg, exp_inf, *, step, lr=2e-3, beta1=0.9, beta2=0.999,
                eps=1e-8, weight_decay=0.0, maximize=False, l1=0.0, clip_value=None,
                grad_scale=1.0):
    """One Adamax step on one tensor; param and state modified in place."""
    t = param.dtype.type
    g = _coupled(_grad(grad, param, maximize, grad_scale, clip_value), param, weight_decay, l1)
    _lerp_(exp_avg, g, t(1 - beta1))
    np.maximum(exp_inf * t(beta2), np.abs(g) + t(eps), out=exp_inf)
    clr = lr / (1 - beta1 ** step)
    param += (t(-clr) * exp_avg) / exp_inf


def radam_step(param, grad, exp_avg, exp_avg_sq, *, step, lr=1e-3, beta1=0.9, beta2=0.999,
               eps=1e-8, weight_decay=0.0, decoupled_weight_decay=False, maximize=False,
               l1=0.0, clip_value=None,
               grad_scale=1.0):
    """One RAdam step on one tensor; param and state modified in place."""
    t = param.dtype.type
    _adam_moments(param, grad, exp_avg, exp_avg_sq, lr=lr, beta1=beta1, beta2=beta2,
                  weight_decay=weight_decay, decoupled=decoupled_weight_decay, maximize=maximize,
                  l1=l1, clip_value=clip_value, grad_scale=grad_scale)
    bias_correction1 = 1 - beta1 ** step
    bias_correction2 = 1 - beta2 ** step
    bias_corrected_exp_avg = exp_avg / t(bias_correction1)
    rho_inf = 2 / (1 - beta2) - 1
    rho_t = rho_inf - 2 * step * (beta2 ** step) / bias_correction2
    if rho_t > 5.0:
        rect = ((rho_t - 4) * (rho_t - 2) * rho_inf
                / ((rho_inf - 4) * (rho_inf - 2) * rho_t)) ** 0.5
        adaptive = (t(1) / (np.sqrt(exp_avg_sq) + t(eps))) * t(bias_correction2 ** 0.5)
        param -= ((bias_corrected_exp_avg * t(lr)) * adaptive) * t(rect)
    else:
        param -= bias_corrected_exp_avg * t(lr)


def nadam_step(param, grad, exp_avg, exp_avg_sq, mu_product, *, step, lr=2e-3, beta1=0.9,
               beta2=0.999, eps=1e-8, weight_decay=0.0, momentum_decay=4e-3,
               decoupled_weight_decay=False, maximize=False, l1=0.0, clip_value=None,
               grad_scale=1.0):
    """One NAdam step on one tensor; param, state and ``mu_product`` (a float64 array of one
    element, the running product of the momentum schedule) modified in place."""
    t = param.dtype.type
    g = _adam_moments(param, grad, exp_avg, exp_avg_sq, lr=lr, beta1=beta1, beta2=beta2,
                      weight_decay=weight_decay, decoupled=decoupled_weight_decay,
                      maximize=maximize, l1=l1, clip_value=clip_value, grad_scale=grad_scale)
    bias_correction2 = 1 - beta2 ** step
    mu = beta1 * (1.0 - 0.5 * (0.96 ** (step * momentum_decay)))
    mu_next = beta1 * (1.0 - 0.5 * (0.96 ** ((step + 1) * momentum_decay)))
    # torch keeps mu_product as a float32 scalar: the product is rounded to float32
    product = float(np.float32(mu_product.reshape(-1)[0]) * np.float32(mu))
    mu_product[...] = product
    mu_product_next = product * mu_next
    denom = np.sqrt(exp_avg_sq / t(bias_correction2)) + t(eps)
    param += (t(-lr * (1.0 - mu) / (1.0 - product)) * g) / denom
    param += (t((-lr * mu_next) / (1.0 - mu_product_next)) * exp_avg) / denom


def adadelta_step(param, grad, square_avg, acc_delta, *, lr=1.0, rho=0.9, eps=1e-6,
                  weight_decay=0.0, maximize=False, l1=0.0, clip_value=None, grad_scale=1.0):
    """One Adadelta step on one tensor; param, square_avg and acc_delta modified in place."""
    t = param.dtype.type
    g = _coupled(_grad(grad, param, maximize, grad_scale, clip_value), param, weight_decay, l1)
    square_avg *= t(rho)
    square_avg += t(1 - rho) * g * g
    std = np.sqrt(square_avg + t(eps))
    delta = np.sqrt(acc_delta + t(eps)) / std * g
    acc_delta *= t(rho)
    acc_delta += t(1 - rho) * delta * delta
    param += t(-lr) * delta


def _torch_sign(x):
    """torch.sign: 1, -1, or 0 for +-0 and NaN (an array, also for 0-d input)."""
    x = np.asarray(x)
    return np.asarray((x > 0).astype(x.dtype) - (x < 0).astype(x.dtype), dtype=x.dtype)


def rprop_step(param, grad, prev, step_size, *, etaminus=0.5, etaplus=1.2, step_size_min=1e-6,
               step_size_max=50.0, maximize=False, l1=0.0, clip_value=None, grad_scale=1.0):
    """One Rprop step on one tensor; param, prev and step_size modified in place.

    torch's order: the sign of grad*prev (torch.sign, so a NaN counts as 0) becomes the step
    size's factor (etaplus where positive, etaminus where negative, 1 where zero); the step size
    is multiplied and clamped to [step_size_min, step_size_max]; where the factor is etaminus
    the gradient is zeroed (that zero is the next step's prev); the param moves by
    -sign(grad) * step_size.
    """
    t = param.dtype.type
    g = _coupled(_grad(grad, param, maximize, grad_scale, clip_value), param, 0.0, l1)
    sign = _torch_sign(g * prev)
    sign[sign > 0] = t(etaplus)
    sign[sign < 0] = t(etaminus)
    sign[sign == 0] = 1
    step_size *= sign
    # clamp_(min, max) as torch: max with min, then min with max, a NaN kept
    np.copyto(step_size, t(step_size_min), where=step_size < t(step_size_min))
    np.copyto(step_size, t(step_size_max), where=step_size > t(step_size_max))
    g = np.array(g, copy=True)
    g[sign == t(etaminus)] = 0
    param += -_torch_sign(g) * step_size
    prev[...] = g


def asgd_step(param, grad, ax, eta_mu, *, step, lr=1e-2, lambd=1e-4, alpha=0.75, t0=1e6,
              weight_decay=0.0, maximize=False, l1=0.0, clip_value=None, grad_scale=1.0):
    """One ASGD step on one tensor; param, ax and ``eta_mu`` (a float64 array of two elements:
    the tensor's eta and mu, torch's 0-d state tensors) modified in place.

    This step uses the eta and mu the previous step stored (they start at lr and 1); it then
    stores the next ones, from ``step`` (this step's count, from 1), rounded to float32 as
    torch's float32 scalar tensors round them.
    """
    t = param.dtype.type
    g = _coupled(_grad(grad, param, maximize, grad_scale, clip_value), param, weight_decay, l1)
    scalars = eta_mu.reshape(-1)
    eta, mu = float(scalars[0]), float(scalars[1])
    param *= t(1 - lambd * eta)
    param += t(-eta) * g
    if mu != 1:
        ax += (param - ax) * t(mu)
    else:
        ax[...] = param
    scalars[0] = float(np.float32(lr / ((1 + lambd * lr * step) ** alpha)))
    scalars[1] = float(np.float32(1 / max(1, step - t0)))


def lamb_step(param, grad, exp_avg, exp_avg_sq, *, step, lr=1e-3, beta1=0.9, beta2=0.999,
              eps=1e-6, weight_decay=0.01, bias_correction=True, use_nvlamb=False,
              maximize=False, l1=0.0, clip_value=None, grad_scale=1.0):
    """One LAMB step on one tensor (Apex FusedLAMB's rule); param and state modified in place.

    The trust ratio uses the norms of the param (before the step) and of its update, each a
    sum of squares in float64 in grad_norm's order (blocks of 8192 elements from the tensor's
    start, 8 accumulators each, the blocks added in order), as the native driver adds them.
    """
    t = param.dtype.type
    g = _coupled(_grad(grad, param, maximize, grad_scale, clip_value), param, 0.0, l1)
    exp_avg *= t(beta1)
    exp_avg += t(1 - beta1) * g
    exp_avg_sq *= t(beta2)
    exp_avg_sq += t(1 - beta2) * g * g
    bc1 = 1 - beta1 ** step if bias_correction else 1.0
    bc2 = 1 - beta2 ** step if bias_correction else 1.0
    update = (exp_avg / t(bc1)) / (np.sqrt(exp_avg_sq / t(bc2)) + t(eps)) \
        + t(weight_decay) * param
    p_norm = float(np.sqrt(_block_sum([np.asarray(param).reshape(-1)], 2.0)))
    u_norm = float(np.sqrt(_block_sum([np.asarray(update).reshape(-1)], 2.0)))
    trust = use_nvlamb or weight_decay != 0
    ratio = lr * (p_norm / u_norm) if trust and p_norm != 0 and u_norm != 0 else lr
    param += t(-ratio) * update


def ema_update(average, param, *, decay):
    """average.lerp_(param, 1 - decay) in place: the exponential moving average of a param."""
    _lerp_(average, param, average.dtype.type(1 - decay))


# ---- many tensors: the step functions over lists, a None gradient skipping its tensor --------

def _each(step_fn, params, grads, states, steps=None, **hyper):
    for i, (p, g) in enumerate(zip(params, grads)):
        if g is None:
            continue
        bufs = [None if s is None else s[i] for s in states]
        extra = {} if steps is None else {"step": int(steps[i])}
        step_fn(p, g, *bufs, **extra, **hyper)


def adam(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, **hyper):
    """adam_step over lists; steps[i] is tensor i's count."""
    _each(adam_step, params, grads, [exp_avgs, exp_avg_sqs, max_exp_avg_sqs], steps, **hyper)


def sgd(params, grads, momentum_buffers, *, init_buffers=False, **hyper):
    """sgd_step over lists; ``init_buffers`` is one bool or one per tensor."""
    for i, (p, g) in enumerate(zip(params, grads)):
        if g is None:
            continue
        buf = None if momentum_buffers is None else momentum_buffers[i]
        init = init_buffers if isinstance(init_buffers, bool) else bool(init_buffers[i])
        sgd_step(p, g, buf, init_buffer=init, **hyper)


def rmsprop(params, grads, square_avgs, momentum_buffers=None, grad_avgs=None, **hyper):
    """rmsprop_step over lists."""
    _each(rmsprop_step, params, grads, [square_avgs, momentum_buffers, grad_avgs], **hyper)


def adagrad(params, grads, state_sums, steps, **hyper):
    """adagrad_step over lists; steps[i] is tensor i's count."""
    _each(adagrad_step, params, grads, [state_sums], steps, **hyper)


def lion(params, grads, exp_avgs, **hyper):
    """lion_step over lists."""
    _each(lion_step, params, grads, [exp_avgs], **hyper)


def adamax(params, grads, exp_avgs, exp_infs, steps, **hyper):
    """adamax_step over lists; steps[i] is tensor i's count."""
    _each(adamax_step, params, grads, [exp_avgs, exp_infs], steps, **hyper)


def nadam(params, grads, exp_avgs, exp_avg_sqs, mu_products, steps, **hyper):
    """nadam_step over lists; ``mu_products`` is a float64 array, one per tensor, in place."""
    for i, (p, g) in enumerate(zip(params, grads)):
        if g is not None:
            nadam_step(p, g, exp_avgs[i], exp_avg_sqs[i], mu_products[i:i + 1],
                       step=int(steps[i]), **hyper)


def adadelta(params, grads, square_avgs, acc_deltas, **hyper):
    """adadelta_step over lists."""
    _each(adadelta_step, params, grads, [square_avgs, acc_deltas], **hyper)


def rprop(params, grads, prevs, step_sizes, **hyper):
    """rprop_step over lists."""
    _each(rprop_step, params, grads, [prevs, step_sizes], **hyper)


def asgd(params, grads, axs, eta_mu, steps, **hyper):
    """asgd_step over lists; ``eta_mu`` is a float64 (T, 2) array (each tensor's eta and mu),
    in place; steps[i] is tensor i's count."""
    for i, (p, g) in enumerate(zip(params, grads)):
        if g is not None:
            asgd_step(p, g, axs[i], eta_mu[i], step=int(steps[i]), **hyper)


def lamb(params, grads, exp_avgs, exp_avg_sqs, steps, **hyper):
    """lamb_step over lists; steps[i] is tensor i's count."""
    _each(lamb_step, params, grads, [exp_avgs, exp_avg_sqs], steps, **hyper)


def radam(params, grads, exp_avgs, exp_avg_sqs, steps, **hyper):
    """radam_step over lists; steps[i] is tensor i's count."""
    _each(radam_step, params, grads, [exp_avgs, exp_avg_sqs], steps, **hyper)


# ---- the gradient norm -----------------------------------------------------------------------

NORM_BLOCK = 8192       # elements per block (fastopt/_kernels.pyx: NORM_BLOCK)
NORM_LANES = 8          # accumulators per block (csrc/dispatch.c: FO_NORM_BLOCK)


def grad_norm(arrays, norm_type):
    """The norm (``norm_type`` 2, 1 or inf) of all ``arrays`` taken together as one vector,
    computed bitwise as the native driver computes it (fastopt._kernels.grad_norm with
    csrc/dispatch.c's fo_norm_block), for float32 and float64 arrays, in float64 throughout.

    The order of operations, which fixes every rounding:

    1. Each array (flattened in C order) is cut into blocks of 8192 elements, the last one
       partial; the blocks of all arrays are then taken in order, array by array.
    2. In a block, every element is converted to float64 and turned into its term: ``x*x``
       (norm 2) or ``|x|`` (norms 1 and inf). Element i of the block goes to accumulator
       ``i % 8``; each of the eight accumulators starts at 0.0 and adds its terms one at a time,
       in increasing i (``acc = acc + term``). Here: the block as rows of 8, added row after
       row into a vector of eight accumulators (not ``np.sum``, which adds pairwise), for many
       blocks at once.
    3. The eight accumulators are combined pairwise:
       ``((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7))``.
    4. The block results are added one at a time, in block order, to a total starting at 0.0;
       the 2-norm is then ``sqrt(total)`` (correctly rounded).

    For the inf norm "+" is replaced by the NaN-propagating maximum ``b if (b > a or b != b)
    else a``. A maximum is exact, so without NaN the result is just the largest ``|x|`` (0.0
    for no elements). With NaN it is NaN, and the order decides which NaN: each accumulator
    keeps the last NaN it meets, the pairwise step keeps the NaN of the highest-numbered
    accumulator, and the total the NaN of the last block with one. So: in the last block that
    has a NaN, the last NaN among its elements at the highest position ``i % 8`` that holds one.

    Zero padding (of a block to more rows of 8) changes nothing: every term is >= +0.0 or
    NaN, and adding +0.0 to such an accumulator leaves its bits as they are. The result does
    not depend on the thread count or on the instruction set: the native blocks are
    independent, and fo_norm_block is compiled once, for the baseline (no AVX copy).

    A sum that meets several NaNs returns one of them; which one depends on the operand order
    the C compiler chose, which C leaves open, so there only NaN-ness is reproduced.
    """
    if norm_type not in (1.0, 2.0, np.inf):
        raise ValueError(f"norm_type must be 1, 2 or inf, got {norm_type}")
    flat = [np.asarray(a).reshape(-1) for a in arrays]
    if norm_type == np.inf:
        return _max_abs(flat)
    total = _block_sum(flat, norm_type)
    return float(np.sqrt(total)) if norm_type == 2.0 else total


def grad_sumsq(arrays):
    """The sum of squares of all arrays together, in grad_norm's order (the native pre-pass's
    too): the square of the 2-norm before its square root."""
    return _block_sum([_wide(np.asarray(a)).reshape(-1) for a in arrays], 2.0)


def _block_sum(flat, norm_type):
    """The total of grad_norm's 2 (squares) or 1 (absolute values) terms of flat float
    vectors, in the native order."""
    with np.errstate(over="ignore"):        # overflow gives inf, silently, as in C
        return _block_sum_unchecked(flat, norm_type)


def _block_sum_unchecked(flat, norm_type):
    terms = [np.multiply(x, x, dtype=np.float64) if norm_type == 2.0
             else np.abs(x, dtype=np.float64) for x in flat]
    # The blocks as stacks [block, row of 8, accumulator], each with its blocks' places in the
    # native order, so that many blocks are summed at once: all whole blocks in one stack; the
    # partial last blocks zero-padded to a power of two of rows (at most twice their size),
    # those of the same height stacked together.
    whole_places: list[int] = []
    whole_blocks: list[np.ndarray] = []
    partial: dict[int, list[tuple[int, np.ndarray]]] = {}
    nblocks = 0
    for t in terms:
        whole = t.size // NORM_BLOCK
        if whole:
            whole_places += range(nblocks, nblocks + whole)
            whole_blocks.append(t[:whole * NORM_BLOCK].reshape(whole, -1, NORM_LANES))
            nblocks += whole
        rest = t[whole * NORM_BLOCK:]
        if rest.size:
            rows = -(-rest.size // NORM_LANES)
            partial.setdefault(1 << (rows - 1).bit_length(), []).append((nblocks, rest))
            nblocks += 1
    stacks = []
    if whole_blocks:
        stacks.append((whole_places, whole_blocks[0] if len(whole_blocks) == 1
                       else np.concatenate(whole_blocks)))
    for rows, members in partial.items():
        stack = np.zeros((len(members), rows * NORM_LANES))
        for j, (_, rest) in enumerate(members):
            stack[j, :rest.size] = rest
        stacks.append(([k for k, _ in members], stack.reshape(len(members), rows, NORM_LANES)))
    results = np.zeros(nblocks)         # each block's result, in block order
    for places, stack in stacks:
        acc = np.zeros((stack.shape[0], NORM_LANES))
        for row in range(stack.shape[1]):
            acc += stack[:, row]        # acc[k] = acc[k] + term, row after row
        a = acc.T
        results[places] = ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]))
    total = 0.0
    for r in results.tolist():
        total = total + r
    return total


def _max_abs(flat):
    """grad_norm's inf norm of flat float vectors (see there for which NaN it returns)."""
    absolute = [np.abs(x, dtype=np.float64) for x in flat if x.size]
    maxima = [float(np.max(x)) for x in absolute]       # NaN where there is one
    for x, m in zip(reversed(absolute), reversed(maxima)):
        if m != m:
            nan_at = np.flatnonzero(np.isnan(x))
            last_block = nan_at[nan_at // NORM_BLOCK == nan_at[-1] // NORM_BLOCK]
            lane = last_block % NORM_LANES
            return float(x[last_block[lane == lane.max()][-1]])
    return max([0.0] + maxima)


# ---- 16-bit storage: csrc/storage.c's conversions and adapter, in NumPy ------------------------

def _is16(a) -> bool:
    return a is not None and (a.dtype == np.float16 or (a.dtype.kind == "V"
                                                        and a.dtype.name == "bfloat16"))


def _wide(a):
    """A 16-bit array widened to float32 (exact); other arrays as they are."""
    return a.astype(np.float32) if _is16(a) else a


_M64 = (1 << 64) - 1


def _mix64(z: int) -> int:
    z = (z + 0x9E3779B97F4A7C15) & _M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


def sr_key(seed: int, param: int, step: int) -> int:
    """The stochastic-rounding key of one param at one step (fo_sr_key)."""
    return _mix64(seed ^ _mix64((param & _M64) ^ _mix64(step & _M64)))


def _mix32(x):
    x = x ^ (x >> np.uint32(16))
    x = x * np.uint32(0x7FEB352D)
    x = x ^ (x >> np.uint32(15))
    x = x * np.uint32(0x846CA68B)
    return x ^ (x >> np.uint32(16))


def draws(key: int, index: int, n: int):
    """The 16 random bits of elements index .. index + n - 1 under ``key`` (fo_draw)."""
    idx = np.arange(index, index + n, dtype=np.uint64)
    klo, khi = np.uint32(key & 0xFFFFFFFF), np.uint32(key >> 32)
    hi = _mix32(khi ^ (idx >> np.uint64(32)).astype(np.uint32))
    return _mix32((idx.astype(np.uint32) * np.uint32(0x9E3779B1)) ^ klo ^ hi) >> np.uint32(16)


def narrow(x, dtype, rounding: int = 0, key: int = 0, index: int = 0, r=None):
    """float32 ``x`` rounded to the 16-bit ``dtype``: to nearest even (rounding 0) or
    stochastically (1) with the draws of ``key`` from element ``index`` on (csrc/storage.c),
    or with the given 16-bit draws ``r`` (one per element)."""
    x = np.ascontiguousarray(x, dtype=np.float32).reshape(-1)
    u = x.view(np.uint32)
    a = u & np.uint32(0x7FFFFFFF)
    sign = ((u >> np.uint32(16)) & np.uint32(0x8000)).astype(np.uint16)
    bf16 = np.dtype(dtype) != np.float16
    with np.errstate(over="ignore", invalid="ignore"):
        if bf16:
            near = np.where(a > np.uint32(0x7F800000), sign | np.uint16(0x7FC0),
                            ((u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1)))
                             >> np.uint32(16)).astype(np.uint16))
        else:
            near = x.astype(np.float16).view(np.uint16)
            nan = a > np.uint32(0x7F800000)
            near = np.where(nan, sign | np.uint16(0x7E00)
                            | ((a >> np.uint32(13)) & np.uint32(0x3FF)).astype(np.uint16), near)
    if rounding == 0:
        return near.astype(np.uint16).view(dtype)
    r = draws(key, index, x.size) if r is None else np.asarray(r, np.uint32).reshape(-1)
    special = (a & np.uint32(0x7F800000)) == np.uint32(0x7F800000)
    if bf16:
        out = np.where(special, near, ((u + r) >> np.uint32(16)).astype(np.uint16))
        return out.astype(np.uint16).view(dtype)
    b = a - np.uint32(0x38000000)
    normal = (b >> np.uint32(13)) + ((r >> np.uint32(3)) < (b & np.uint32(0x1FFF)))
    e = (a >> np.uint32(23)).astype(np.int64)
    shift = np.clip(126 - e, 0, 63).astype(np.uint64)
    m = ((a & np.uint32(0x7FFFFF)) | np.uint32(0x800000)).astype(np.uint64)
    q = m >> shift
    rem = m & ((np.uint64(1) << shift) - np.uint64(1))
    frac16 = (rem << np.uint64(16)) >> shift
    sub = (q + (r.astype(np.uint64) < frac16)).astype(np.uint32)
    sub = np.where((e == 0) | (shift >= 40), np.uint32(0), sub)
    h = np.where(a < np.uint32(0x38800000), sub, normal)
    h = np.where(a >= np.uint32(0x47800000), np.uint32(0x7C00), h)
    out = np.where(special, near, sign | h.astype(np.uint16))
    return out.astype(np.uint16).view(dtype)


def _salt(key: int, stream: int) -> int:
    return key ^ ((0x5BD1E995 * stream) & _M64)


# ---- 8-bit states: csrc/storage.c's maps and block quantization, in NumPy -------------------

Q8_BLOCK = 256      # elements per block (one float32 absmax each; the last may be partial)


def _q8_level(level: int, count: int) -> list[float]:
    """Level ``level``'s values: the midpoints of ``count`` equal parts of [0.1, 1], scaled by
    10**(level - 6) (float64, each operation as in C, before the one rounding to float32)."""
    decade = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)[level]
    return [decade * (0.1 + (float(k) + 0.5) * 0.9 / float(count)) for k in range(count)]


def q8_map(signed: bool) -> np.ndarray:
    """The 256 values of a quantization map, float32, ascending. Unsigned (uint8 code = index):
    0, levels 0..6 with 2, 4, .., 128 values, 1. Signed (int8 code = index - 128): -1, the
    negated levels 6..0 with 64, .., 1 values, 0 (code 0), levels 1..6 with 2, .., 64, 1."""
    if not signed:
        values = [0.0] + [x for i in range(7) for x in _q8_level(i, 2 << i)] + [1.0]
        return np.array(values, dtype=np.float64).astype(np.float32)
    pos = [x for i in range(1, 7) for x in _q8_level(i, 1 << i)] + [1.0]
    neg = [x for i in range(7) for x in _q8_level(i, 1 << i)] + [1.0]
    pos32 = np.array(pos, np.float64).astype(np.float32)
    neg32 = np.array(neg, np.float64).astype(np.float32)
    return np.concatenate([-neg32[::-1], np.zeros(1, np.float32), pos32])


def _q8_nearest(x: np.ndarray, values: np.ndarray) -> np.ndarray:
    """The index of the value of ascending ``values`` nearest to each x, exactly: x compared
    with the exact midpoints (float64 holds the midpoint of two float32 values); a tie goes
    to the lower index."""
    mid = (values[:-1].astype(np.float64) + values[1:].astype(np.float64)) / 2
    return np.searchsorted(mid, x.astype(np.float64), side="left")


def q8_quantize(values: np.ndarray, signed: bool) -> tuple[np.ndarray, np.ndarray]:
    """float32 values (any shape) to (codes of the same shape: int8 signed, uint8 unsigned;
    float32 absmax, one per block of the flattened values). Per block: a NaN or Inf gives
    absmax NaN and codes 0; absmax 0 gives codes 0; otherwise x = v / absmax (float32) takes
    the code of the nearest map value, ties toward zero (unsigned: negative x gives 0)."""
    flat = np.ascontiguousarray(values, dtype=np.float32).reshape(-1)
    n = flat.size
    nb = -(-n // Q8_BLOCK)
    padded = np.zeros(nb * Q8_BLOCK, np.float32)
    padded[:n] = flat
    blocks = padded.reshape(nb, Q8_BLOCK)
    finite = np.isfinite(blocks).all(axis=1)
    amax = np.abs(blocks).max(axis=1, initial=np.float32(0)).astype(np.float32)
    scale = np.where(finite, amax, np.float32(np.nan)).astype(np.float32)
    usable = finite & (amax > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        x = (blocks / np.where(usable, amax, np.float32(1))[:, None]).astype(np.float32)
    x = np.where(usable[:, None], x, np.float32(0))
    m = q8_map(signed)
    if signed:
        # by magnitude on each side, so that a tie goes toward zero on both
        pos = _q8_nearest(np.abs(x), m[128:])
        neg = _q8_nearest(np.abs(x), -m[128::-1])
        codes = np.where(x < 0, -neg, pos).astype(np.int8)
    else:
        codes = np.where(x < 0, 0, _q8_nearest(np.maximum(x, 0), m)).astype(np.uint8)
    return codes.reshape(-1)[:n].reshape(np.shape(values)), scale


def q8_dequantize(codes: np.ndarray, absmax: np.ndarray) -> np.ndarray:
    """Codes (int8: signed map, uint8: unsigned) and block scales to float32 values, of the
    codes' shape: map[code] * absmax of the element's block (float32)."""
    signed = codes.dtype == np.int8
    m = q8_map(signed)
    flat = codes.reshape(-1)
    index = flat.astype(np.int64) + (128 if signed else 0)
    block = np.arange(flat.size) // Q8_BLOCK
    return (m[index] * absmax[block]).astype(np.float32).reshape(codes.shape)


def _isq8(a) -> bool:
    return a is not None and a.dtype in (np.int8, np.uint8)


class Mixed:
    """A mixed-storage tensor for the reference rules: float32 working arrays for its 16-bit
    streams (float32 streams are used as they are), and how they are written back (the
    adapter's rules, csrc/storage.c: a float32 master copy updated in place and the param
    rounded from it; a Kahan compensation; or the 16-bit param and states rounded by the
    call's mode)."""

    def __init__(self, p, g, bufs, m, scales=(None, None, None)):
        self._p, self._bufs, self._m, self._scales = p, bufs, m, scales
        self.master = _is16(p) and m is not None and m.dtype == np.float32
        self.kahan = _is16(p) and m is not None and m.dtype == p.dtype
        if self.master:
            self.param = m
        elif self.kahan:
            self.param = p.astype(np.float32) + m.astype(np.float32)
        else:
            self.param = _wide(p)
        self.grad = _wide(g)
        self.bufs = [None, None] + [None if b is None else _wide(b) for b in bufs[2:]]
        for k in range(2, 5):       # 8-bit states: dequantized (scales[k - 2] their absmax)
            if _isq8(bufs[k]):
                self.bufs[k] = q8_dequantize(bufs[k], scales[k - 2])

    @classmethod
    def of(cls, p, g, bufs, m, scales=(None, None, None)):
        """A Mixed for these streams, or None when they share one float32 or float64 type."""
        arrays = [x for x in [g] + list(bufs[2:]) + [m] if x is not None]
        if m is None and p.dtype in (np.float32, np.float64) \
                and all(x.dtype == p.dtype for x in arrays):
            return None
        return cls(p, g, bufs, m, scales)

    def store(self, rounding: int, key: int) -> None:
        """Write the working arrays back (after the rule ran on them)."""
        for k in range(2, len(self._bufs)):
            b = self._bufs[k]
            if _is16(b):
                b.reshape(-1)[...] = narrow(self.bufs[k], b.dtype, rounding, _salt(key, k))
            elif _isq8(b):
                codes, scale = q8_quantize(self.bufs[k], b.dtype == np.int8)
                b[...] = codes
                self._scales[k - 2][...] = scale
        p = self._p
        if self.master:
            p.reshape(-1)[...] = narrow(self._m, p.dtype)
        elif self.kahan:
            rounded = narrow(self.param, p.dtype)
            p.reshape(-1)[...] = rounded
            rest = self.param.reshape(-1) - rounded.astype(np.float32)
            self._m.reshape(-1)[...] = narrow(rest, p.dtype)
        elif _is16(p):
            p.reshape(-1)[...] = narrow(self.param, p.dtype, rounding, key)


# ---- SparseAdam and Adafactor (csrc/rules2.c) ---------------------------------------------

def coalesce(indices, values):
    """Row-sparse (indices, values) with unique, increasing indices: the values of a repeated
    index added up in the order they appear (as torch's coalesce sums duplicates)."""
    indices = np.asarray(indices, dtype=np.int64).reshape(-1)
    if indices.size < 2 or bool(np.all(indices[1:] > indices[:-1])):
        return np.ascontiguousarray(indices), np.ascontiguousarray(values)
    uniq, inverse = np.unique(indices, return_inverse=True)
    out = np.zeros((uniq.size,) + values.shape[1:], dtype=values.dtype)
    np.add.at(out, inverse.reshape(-1), values)      # unbuffered, in order of appearance
    return uniq, out


def sparse_adam_step(param, indices, values, exp_avg, exp_avg_sq, *, step, lr=1e-3,
                     beta1=0.9, beta2=0.999, eps=1e-8, maximize=False):
    """torch.optim.SparseAdam on the rows ``indices`` (unique, increasing) of one param."""
    t = param.dtype.type
    g = -values if maximize else values
    m0 = exp_avg[indices]
    m = m0 + (g - m0) * t(1 - beta1)
    v0 = exp_avg_sq[indices]
    v = v0 + (g * g - v0) * t(1 - beta2)
    exp_avg[indices] = m
    exp_avg_sq[indices] = v
    step_size = lr * math.sqrt(1 - beta2 ** step) / (1 - beta1 ** step)
    param[indices] = param[indices] + t(-step_size) * (m / (np.sqrt(v) + t(eps)))


def _lanes(sq):
    """Sums over the last axis of float64 terms: term i to lane i % 8, each lane in order,
    the eight lanes combined pairwise (csrc/rules2.c, fo_norm_block's order)."""
    n = sq.shape[-1]
    if n == 0:
        return np.zeros(sq.shape[:-1])
    pad = (-n) % 8
    if pad:
        sq = np.concatenate([sq, np.zeros(sq.shape[:-1] + (pad,))], axis=-1)
    a = np.add.accumulate(sq.reshape(sq.shape[:-1] + (-1, 8)), axis=-2)[..., -1, :]
    return ((a[..., 0] + a[..., 1]) + (a[..., 2] + a[..., 3])) \
        + ((a[..., 4] + a[..., 5]) + (a[..., 6] + a[..., 7]))


def _sq64(x):
    return np.multiply(x, x, dtype=np.float64)


def _in_order(x, axis):
    """The float64 sum along ``axis``, term after term (accumulate is sequential)."""
    if x.shape[axis] == 0:
        return np.zeros(np.delete(x.shape, axis))
    return np.take(np.add.accumulate(x, axis=axis), -1, axis=axis)


def adafactor_step(param, grad, row_var, col_var, variance, *, step, lr=1e-2,
                   beta2_decay=-0.8, eps1, eps2=1e-3, d=1.0, weight_decay=0.0,
                   maximize=False):
    """torch.optim.Adafactor on one param (``eps1`` already resolved: not None). Row and
    column means and the two norms are float64 sums in csrc/rules2.c's orders."""
    t = param.dtype.type
    s = float(step)
    w = t(s ** beta2_decay)
    rho = min(lr, 1 / (s ** 0.5))
    n = param.size
    pn = float(np.sqrt(_lanes(_sq64(param.reshape(-1))))) / n ** 0.5
    alpha = (pn if pn > eps2 else eps2) * rho
    if weight_decay != 0:
        param *= t(1 - lr * weight_decay)
    g = -grad if maximize else grad
    floor = t(eps1 * eps1)
    if param.ndim >= 2:
        R, C = param.shape[-2], param.shape[-1]
        g3 = g.reshape(-1, R, C)
        rv = row_var.reshape(-1, R)
        cv = col_var.reshape(-1, C)
        rows = (_lanes(_sq64(g3)) / C).astype(param.dtype)
        cols = (_in_order(_sq64(g3), 1) / R).astype(param.dtype)
        _lerp_(rv, rows, w)
        _lerp_(cv, cols, w)
        rm = (_in_order(rv.astype(np.float64), 1) / R).astype(param.dtype)
        rm = np.where(rm < t(eps1), t(eps1), rm)
        ve = (rv[:, :, None] * cv[:, None, :]) / rm[:, None, None]
        u = (t(1) / np.sqrt(np.where(ve < floor, floor, ve))) * g3
    else:
        _lerp_(variance, g * g, w)
        u = (t(1) / np.sqrt(np.where(variance < floor, floor, variance))) * g
    un = float(np.sqrt(_lanes(_sq64(u.reshape(-1))))) / (n ** 0.5 * d)
    denom = un if un > 1.0 else 1.0
    param += u.reshape(param.shape) * t(-alpha / denom)
