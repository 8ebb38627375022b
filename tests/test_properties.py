"""Property-based tests (hypothesis): any shape and hyperparameters, kernel == reference."""
from __future__ import annotations

import numpy as np
from helpers import assert_bitwise, snapshot
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fastopt import kernels, reference

SETTINGS = settings(deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

shapes = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=40)
dtypes = st.sampled_from([np.float32, np.float64])
unit_open = st.floats(0.0, 0.9999, exclude_max=True)
nonneg = st.floats(0.0, 10.0)


def arrays(shape, dtype, seed, positive=False):
    rng = np.random.default_rng(seed)
    a = np.asarray(rng.standard_normal(shape) * rng.choice([1e-3, 1.0, 1e3]), dtype=dtype)
    return np.abs(a) if positive else a


@SETTINGS
@given(shape=shapes, dtype=dtypes, seed=st.integers(0, 2**32 - 1), step=st.integers(1, 10**6),
       lr=st.floats(0.0, 1.0), beta1=unit_open, beta2=unit_open, eps=st.floats(0.0, 1.0),
       weight_decay=nonneg, decoupled=st.booleans(), amsgrad=st.booleans(),
       maximize=st.booleans())
def test_adam_kernel_equals_reference(shape, dtype, seed, step, lr, beta1, beta2, eps,
                                      weight_decay, decoupled, amsgrad, maximize):
    p, g, m = (arrays(shape, dtype, seed + k) for k in range(3))
    v = arrays(shape, dtype, seed + 3, positive=True)
    vmax = v * 2 if amsgrad else None
    fast, ref = snapshot([p, g, m, v, vmax]), snapshot([p, g, m, v, vmax])
    kw = dict(step=step, lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay,
              decoupled_weight_decay=decoupled, maximize=maximize)
    with np.errstate(all="ignore"):
        kernels.adam_step(*fast, **kw)
        reference.adam_step(*ref, **kw)
    for a, b in zip(fast, ref):
        if a is not None:
            assert_bitwise(a, b, f"adam {shape} {np.dtype(dtype)} {kw}")


@SETTINGS
@given(shape=shapes, dtype=dtypes, seed=st.integers(0, 2**32 - 1), lr=st.floats(0.0, 10.0),
       momentum=st.floats(0.0, 1.0), dampening=st.floats(-1.0, 1.0), weight_decay=nonneg,
       nesterov=st.booleans(), maximize=st.booleans(), init=st.booleans())
def test_sgd_kernel_equals_reference(shape, dtype, seed, lr, momentum, dampening, weight_decay,
                                     nesterov, maximize, init):
    if nesterov:
        momentum, dampening = max(momentum, 0.1), 0.0
    p, g, buf = (arrays(shape, dtype, seed + k) for k in range(3))
    fast, ref = snapshot([p, g, buf]), snapshot([p, g, buf])
    kw = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
              nesterov=nesterov, maximize=maximize, init_buffer=init)
    with np.errstate(all="ignore"):
        kernels.sgd_step(*fast, **kw)
        reference.sgd_step(*ref, **kw)
    for a, b in zip(fast, ref):
        assert_bitwise(a, b, f"sgd {shape} {np.dtype(dtype)} {kw}")
