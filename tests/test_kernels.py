"""The fused kernels against the NumPy reference: bitwise, on every instruction set."""
from __future__ import annotations

import numpy as np
import pytest
from helpers import (
    ADAM_OPTIONS,
    DTYPES,
    SGD_OPTIONS,
    SIZES,
    adam_kwargs,
    assert_bitwise,
    data,
    sgd_kwargs,
    snapshot,
)

import fastopt
from fastopt import kernels, reference


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("opt", ADAM_OPTIONS, ids=list(ADAM_OPTIONS))
def test_adam_step_matches_reference(isa, opt, dtype, n):
    kw, amsgrad = adam_kwargs(ADAM_OPTIONS[opt])
    p, g, state = data(n, dtype, seed=n, n_state=3 if amsgrad else 2)
    fast = snapshot([p, g, *state])
    ref = snapshot([p, g, *state])
    for step in (1, 2, 7):
        kernels.adam_step(*fast, step=step, **kw)
        reference.adam_step(*ref, step=step, **kw)
    for name, a, b in zip(["param", "grad", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"],
                          fast, ref):
        assert_bitwise(a, b, f"adam {opt} {np.dtype(dtype)} n={n} isa={isa}: {name}")


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("opt", SGD_OPTIONS, ids=list(SGD_OPTIONS))
def test_sgd_step_matches_reference(isa, opt, dtype, n):
    kw = sgd_kwargs(SGD_OPTIONS[opt])
    p, g, (buf,) = data(n, dtype, seed=n + 1, n_state=1)
    has_buf = kw.get("momentum", 0) != 0
    fast = snapshot([p, g, buf if has_buf else None])
    ref = snapshot([p, g, buf if has_buf else None])
    for init in (True, False, False):
        kernels.sgd_step(*fast, init_buffer=init, **kw)
        reference.sgd_step(*ref, init_buffer=init, **kw)
    for name, a, b in zip(["param", "grad", "momentum_buffer"], fast, ref):
        if a is not None:
            assert_bitwise(a, b, f"sgd {opt} {np.dtype(dtype)} n={n} isa={isa}: {name}")


@pytest.mark.parametrize("nthreads", [1, 2, 3])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_multi_tensor_adam_matches_reference_any_thread_count(isa, threads, dtype, nthreads):
    """Many tensors of awkward sizes in one call, split across threads at arbitrary points."""
    threads(nthreads)
    sizes = [0, 1, 17, 1000, 3, 4099, 0, 65, 20_000]
    tensors = [data(n, dtype, seed=k, n_state=3) for k, n in enumerate(sizes)]
    grads = [g for _, g, _ in tensors]
    grads[3] = None                     # skipped: nothing of tensor 3 may change
    steps = [1, 2, 3, 4, 5, 6, 7, 8, 9]
    fast = [snapshot([p, *s]) for p, _, s in tensors]
    ref = [snapshot([p, *s]) for p, _, s in tensors]
    kw, _ = adam_kwargs(dict(weight_decay=0.01))
    kernels.adam([f[0] for f in fast], grads, [f[1] for f in fast], [f[2] for f in fast],
                 [f[3] for f in fast], steps, **kw)
    reference.adam([r[0] for r in ref], grads, [r[1] for r in ref], [r[2] for r in ref],
                   [r[3] for r in ref], steps, **kw)
    for k, (f, r) in enumerate(zip(fast, ref)):
        for a, b in zip(f, r):
            assert_bitwise(a, b, f"tensor {k} of {sizes}, {nthreads} threads, isa={isa}")
    assert_bitwise(fast[3][0], tensors[3][0], "skipped tensor changed")


@pytest.mark.parametrize("nthreads", [1, 2])
def test_multi_tensor_sgd_mixed_init(threads, nthreads):
    threads(nthreads)
    sizes = [5, 0, 33, 1000]
    tensors = [data(n, np.float32, seed=k, n_state=1) for k, n in enumerate(sizes)]
    init = [True, False, False, True]
    fast = [snapshot([p, s[0]]) for p, _, s in tensors]
    ref = [snapshot([p, s[0]]) for p, _, s in tensors]
    grads = [g for _, g, _ in tensors]
    kw = dict(lr=0.1, momentum=0.9, dampening=0.1, weight_decay=0.01)
    kernels.sgd([f[0] for f in fast], grads, [f[1] for f in fast], init_buffers=init, **kw)
    reference.sgd([r[0] for r in ref], grads, [r[1] for r in ref], init_buffers=init, **kw)
    for k, (f, r) in enumerate(zip(fast, ref)):
        for a, b in zip(f, r):
            assert_bitwise(a, b, f"sgd tensor {k}, {nthreads} threads")


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_results_do_not_depend_on_thread_count_or_offset(threads, dtype):
    """Bitwise identical for 1, 2 and 5 threads, and for arrays starting at any element offset
    (the SIMD body and the scalar tail round identically)."""
    n = 10_007
    results = {}
    for nthreads in (1, 2, 5):
        threads(nthreads)
        for offset in (0, 1, 3):
            p, g, (m, v) = data(n + offset, dtype, seed=3, n_state=2)
            p, g, m, v = (a[offset:] for a in (p, g, m, v))
            for step in range(1, 4):
                kernels.adam_step(p, g, m, v, step=step, lr=1e-2, weight_decay=0.1)
            results[nthreads, offset] = np.concatenate([p, m, v])
    # the data differ by offset, so compare each offset across thread counts ...
    for offset in (0, 1, 3):
        for nthreads in (2, 5):
            assert_bitwise(results[nthreads, offset], results[1, offset],
                           f"{nthreads} threads vs 1, offset {offset}")


@pytest.mark.parametrize("isa_name", ["baseline", "avx2", "avx512"])
def test_instruction_sets_agree_bitwise(isa_name):
    if isa_name not in fastopt.config()["isa_supported"]:
        pytest.skip(f"{isa_name} not supported by this build or CPU")
    results = []
    for name in ("baseline", isa_name):
        old = fastopt.set_isa(name)
        try:
            p, g, (m, v, vmax) = data(4099, np.float32, seed=9, n_state=3)
            kernels.adam_step(p, g, m, v, vmax, step=5, lr=1e-3, weight_decay=0.1)
            results.append(np.concatenate([p, m, v, vmax]))
        finally:
            fastopt.set_isa(old)
    assert_bitwise(results[1], results[0], f"{isa_name} vs baseline")


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")
def test_nan_and_inf_propagate_like_the_reference(isa):
    p = np.array([1.0, 2.0, np.inf, 4.0, -0.0, 5.0], np.float32)
    g = np.array([np.nan, np.inf, 1.0, -np.inf, 0.0, 1e-30], np.float32)
    for amsgrad in (False, True):
        fast = snapshot([p, g, np.zeros_like(p), np.zeros_like(p)] +
                        ([np.zeros_like(p)] if amsgrad else []))
        ref = snapshot(fast)
        kernels.adam_step(*fast, step=1, weight_decay=0.1)
        reference.adam_step(*ref, step=1, weight_decay=0.1)
        for a, b in zip(fast, ref):
            assert_bitwise(a, b, f"non-finite, amsgrad={amsgrad}")
        assert np.isnan(fast[0][0]) and np.isnan(fast[2][0])  # NaN grad poisons param and state


def test_denormal_second_moments(isa):
    """exp_avg_sq decays towards denormals: results still equal the reference (no
    flush-to-zero anywhere, no -ffast-math)."""
    tiny = np.finfo(np.float32).smallest_subnormal
    p = np.ones(1001, np.float32)
    g = np.full(1001, 1e-23, np.float32)
    m = np.full(1001, tiny * 3, np.float32)
    v = np.full(1001, tiny * 7, np.float32)
    fast, ref = snapshot([p, g, m, v]), snapshot([p, g, m, v])
    for step in range(1, 30):
        kernels.adam_step(*fast, step=step, eps=0.0)
        reference.adam_step(*ref, step=step, eps=0.0)
    for a, b in zip(fast, ref):
        assert_bitwise(a, b, "denormal")
    assert np.any((fast[3] > 0) & (fast[3] < np.finfo(np.float32).tiny)), "expected denormals"


@pytest.mark.parametrize("shape", [(), (0,), (3, 0, 2), (4, 5, 6)])
def test_zero_size_and_0d_arrays(shape):
    p = np.full(shape, 2.0)
    m, v = np.zeros(shape), np.zeros(shape)
    ref = snapshot([p, np.ones(shape), m, v])
    kernels.adam_step(p, np.ones(shape), m, v, step=1, lr=0.5)
    reference.adam_step(*ref, step=1, lr=0.5)
    assert_bitwise(p, ref[0], f"shape {shape}")
    if p.size:
        assert np.all(p < 2.0)


def test_probe_reads_all_and_writes_all_but_the_gradient():
    arrays = [np.full(37, float(k + 1), np.float32) for k in range(4)]
    kernels.probe(arrays)
    assert np.all(arrays[0] == 10) and np.all(arrays[2] == 10) and np.all(arrays[3] == 10)
    assert np.all(arrays[1] == 2)


@pytest.mark.parametrize("n", [1, 7, 33])
def test_kernel_and_reference_both_raise_on_a_shape_mismatch(n):
    """A gradient of another shape is refused by the kernel (ValueError, nothing modified) and
    cannot be broadcast by the reference either."""
    p, g, (m, v) = data(n, np.float64, seed=1, n_state=2)
    bad = np.ones(n + 1)
    for fn in (kernels.adam_step, reference.adam_step):
        args = snapshot([p, bad, m, v])
        with pytest.raises(ValueError):
            fn(*args, step=1, weight_decay=0.1)


def test_kernel_api_from_several_threads_matches_one_thread():
    # each thread reuses a frame of its own (functional._call_frame): concurrent calls from
    # several threads give the single-threaded results
    import threading
    rng = np.random.default_rng(8)
    inits = [rng.standard_normal(3000).astype(np.float32) for _ in range(4)]
    grads = [[rng.standard_normal(3000).astype(np.float32) for _ in range(30)] for _ in inits]

    def train(i, out):
        p, m, v = inits[i].copy(), np.zeros(3000, np.float32), np.zeros(3000, np.float32)
        for t, g in enumerate(grads[i]):
            kernels.adam_step(p, g, m, v, step=t + 1, lr=1e-2)
        out[i] = p

    alone: dict = {}
    for i in range(len(inits)):
        train(i, alone)
    together: dict = {}
    threads = [threading.Thread(target=train, args=(i, together)) for i in range(len(inits))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert all(np.array_equal(alone[i], together[i]) for i in range(len(inits)))


def test_kernel_api_memo_tells_true_from_one():
    # the one-tensor fast path memoises validated hyperparameters by value AND type: True
    # (== 1.0, same hash) after lr=1.0 is still refused, and nothing is modified
    p, g, (m, v) = data(16, np.float32, seed=3, n_state=2)
    kernels.adam_step(p, g, m, v, step=1, lr=1.0)
    before = snapshot([p, m, v])
    for bad in (dict(lr=True), dict(maximize=1), dict(decoupled_weight_decay=1.0)):
        with pytest.raises(TypeError):
            kernels.adam_step(p, g, m, v, step=2, **{**dict(lr=1.0), **bad})
        assert_bitwise(p, before[0]) and assert_bitwise(m, before[1])
    with pytest.raises(TypeError):
        kernels.sgd_step(p, g, lr=1.0, nesterov=1)


@pytest.mark.parametrize("case", ["tuple lists", "numpy step", "grad_scale", "None grad"])
def test_kernel_api_fast_path_equals_checked_path(case):
    # kernels.adam_step takes a one-tensor fast path; the list entry with anything not plain
    # (tuples, a NumPy step count, loss scaling) takes the checked one: same bits
    p, g, (m, v) = data(1000, np.float32, seed=4, n_state=2)
    fast, slow = snapshot([p, m, v]), snapshot([p, m, v])
    for step in range(1, 4):
        kernels.adam_step(fast[0], g, fast[1], fast[2], step=step, lr=1e-2, weight_decay=0.1)
        if case == "tuple lists":
            kernels.adam((slow[0],), (g,), (slow[1],), (slow[2],), None, (step,), lr=1e-2,
                         weight_decay=0.1)
        elif case == "numpy step":
            kernels.adam([slow[0]], [g], [slow[1]], [slow[2]], None, [np.int64(step)],
                         lr=1e-2, weight_decay=0.1)
        elif case == "grad_scale":
            kernels.adam([slow[0]], [g * 4], [slow[1]], [slow[2]], None, [step], lr=1e-2,
                         weight_decay=0.1, grad_scale=0.25)
        else:
            kernels.adam([slow[0], p.copy()], [g, None], [slow[1], m.copy()],
                         [slow[2], v.copy()], None, [step, 0], lr=1e-2, weight_decay=0.1)
    for a, b in zip(fast, slow):
        assert_bitwise(a, b, case)


def test_kernel_api_fast_path_refusals_modify_nothing():
    # after a successful fast call, a bad array on the same path is refused with the checked
    # path's message, nothing modified
    p, g, (m, v) = data(64, np.float32, seed=5, n_state=2)
    kernels.adam_step(p, g, m, v, step=1)
    before = snapshot([p, m, v])
    with pytest.raises((TypeError, ValueError), match="exp_avg_sqs\\[0\\]"):
        kernels.adam_step(p, g, m, v.astype(np.float64), step=2)
    with pytest.raises((TypeError, ValueError), match="exp_avgs\\[0\\]"):
        kernels.adam_step(p, g, m[:32], v, step=2)
    with pytest.raises((TypeError, ValueError), match="same array|overlap"):
        kernels.adam_step(p, g, m, m, step=2)
    with pytest.raises(ValueError, match="step"):
        kernels.adam_step(p, g, m, v, step=0)
    for a, b in zip([p, m, v], before):
        assert_bitwise(a, b)


_NEEDS_STATE = {
    # rule function: (args after params, grads; positional), index of the required lists
    "adam": (lambda p, s: ([s[0]], [s[1]], None, [1]), (0, 1)),
    "rmsprop": (lambda p, s: ([s[0]],), (0,)),
    "adagrad": (lambda p, s: ([s[0]], [1]), (0,)),
    "lion": (lambda p, s: ([s[0]],), (0,)),
    "adamax": (lambda p, s: ([s[0]], [s[1]], [1]), (0, 1)),
    "radam": (lambda p, s: ([s[0]], [s[1]], [1]), (0, 1)),
    "adadelta": (lambda p, s: ([s[0]], [s[1]]), (0, 1)),
    "rprop": (lambda p, s: ([s[0]], [s[1]]), (0, 1)),
    "lamb": (lambda p, s: ([s[0]], [s[1]], [1]), (0, 1)),
}


@pytest.mark.parametrize("how", ["entry", "list"])
@pytest.mark.parametrize("rule", list(_NEEDS_STATE))
def test_a_missing_state_is_refused_not_read(rule, how):
    # a None where the rule reads a state (an entry of its list, or the whole list) is refused
    # with the entry's name before anything runs: it once made the native body read address 0
    make, required = _NEEDS_STATE[rule]
    p, g, state = data(64, np.float32, seed=6, n_state=2)
    before = snapshot([p, *state])
    for j in required:
        args = list(make(p, state))
        args[j] = [None] if how == "entry" else None
        with pytest.raises((TypeError, ValueError), match=r"\[0\]|required|expected"):
            getattr(kernels, rule)([p], [g], *args)
        assert_bitwise(p, before[0])
        for a, b in zip(state, before[1:]):
            assert_bitwise(a, b)


@pytest.mark.skipif(fastopt.config()["backend"] != "native", reason="the native driver's check")
def test_required_streams_match_the_spec():
    from fastopt import _spec, functional
    from fastopt._backend import native
    for name in native.RULES:
        rules = [r for r in vars(_spec).values() if isinstance(r, _spec.Rule) and r.name == name]
        for r in rules:
            assert functional._required(r) == native.required_streams(native.RULES[name]), name


@pytest.mark.skipif(fastopt.config()["backend"] != "native", reason="the native driver's check")
def test_the_driver_itself_refuses_a_missing_state():
    # below every frontend: a frame without Adam's exp_avg raises ContractError, nothing runs
    from fastopt import _spec, functional
    from fastopt._backend import native
    p, g, (m, v) = data(64, np.float32, seed=7, n_state=2)
    before = p.copy()
    frame = native.Frame()
    streams = [[p], [g], None, [v]] + [None] * (native.MAX_STREAMS - 4)
    assert frame.fill_numpy_lists(streams, 1) < 0
    with pytest.raises(native.ContractError) as e:
        native.run(frame, native.RULES["adam"], np.zeros(1, np.int32),
                   functional._row(_spec.ADAM, lambda: dict(_ADAM_GROUP)),
                   np.ones(1), np.ones(1, np.int64), False, 1)
    assert (e.value.tensor, e.value.stream) == (0, 2)
    assert_bitwise(p, before)


_ADAM_GROUP = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                   decoupled_weight_decay=False, amsgrad=False, maximize=False, l1=0.0,
                   clip_value=None)
