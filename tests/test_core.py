"""The core's guarantees (issue "One core for every frontend"): a replaced param or state buffer
is honoured or refused with nothing modified, steps hold their own references, hyperparameters
are revalidated by identity, the thread budget holds across Python threads, a skipped step
modifies nothing, and the rule specs agree with the C records."""
from __future__ import annotations

import threading

import numpy as np
import pytest

import fastopt
from fastopt import _spec
from fastopt._backend import native

NATIVE = fastopt.config()["backend"] == "native"


def _adam(n=1000, **kw):
    p = np.random.default_rng(0).standard_normal(n).astype(np.float32)
    return p, fastopt.Adam([p], lr=1e-2, **kw)


def _snapshot(opt):
    sd = opt.state_dict()
    return {i: {k: (np.array(v).tobytes() if not isinstance(v, int) else v)
                for k, v in st.items()} for i, st in sd["state"].items()}


def test_replaced_state_buffer_is_used():
    p, opt = _adam()
    g = np.ones_like(p)
    opt.step([g])
    new = np.full_like(p, 0.5)
    opt.state[0]["exp_avg"] = new
    opt.step([g])
    # the replacement took the update (it is no longer 0.5), and state_dict shows it
    assert not np.all(new == 0.5)
    np.testing.assert_array_equal(opt.state_dict()["state"][0]["exp_avg"], new)


@pytest.mark.parametrize("bad", ["view", "float64", "readonly", "alias"])
def test_bad_replacement_refused_nothing_modified(bad):
    p, opt = _adam()
    g = np.ones_like(p)
    opt.step([g])
    big = np.zeros(1000, np.float32)
    if bad == "view":
        repl = big[:1]
    elif bad == "float64":
        repl = np.zeros(p.shape, np.float64)
    elif bad == "readonly":
        repl = np.zeros_like(p)
        repl.flags.writeable = False
    else:
        repl = opt.state[0]["exp_avg_sq"]
    opt.state[0]["exp_avg"] = repl
    before_p, before_big = p.copy(), big.copy()
    before_sq = opt.state[0]["exp_avg_sq"].copy()
    step = int(opt.state[0]["step"])
    with pytest.raises((ValueError, TypeError), match=r"state\[0\]\['exp_avg"):
        opt.step([g])
    np.testing.assert_array_equal(p, before_p)
    np.testing.assert_array_equal(big, before_big)
    np.testing.assert_array_equal(opt.state[0]["exp_avg_sq"], before_sq)
    assert int(opt.state[0]["step"]) == step
    # a plan rebuild (amsgrad switched on) never writes past the 1-element view either
    opt.param_groups[0]["amsgrad"] = True
    with pytest.raises((ValueError, TypeError)):
        opt.step([g])
    np.testing.assert_array_equal(big, before_big)


def test_replaced_param_is_stepped():
    p, opt = _adam()
    g = np.ones_like(p)
    opt.step([g])
    q = p.copy()
    opt.param_groups[0]["params"][0] = q
    opt.step([g])
    assert not np.array_equal(q, p)         # the new param moved, the old one did not
    bad = np.zeros(7, np.float32)
    opt.param_groups[0]["params"][0] = bad
    with pytest.raises(ValueError, match="shape"):
        opt.step([np.ones(7, np.float32)])
    np.testing.assert_array_equal(bad, 0)


def test_replaced_step_entry_is_adopted():
    p, opt = _adam()
    g = np.ones_like(p)
    opt.step([g])
    opt.state[0]["step"] = 10
    opt.step([g])
    assert int(opt.state[0]["step"]) == 11


def test_lr_true_after_float_is_refused():
    p, opt = _adam()
    g = np.ones_like(p)
    opt.step([g])
    opt.param_groups[0]["lr"] = True
    before = p.copy()
    with pytest.raises(TypeError, match="learning rate"):
        opt.step([g])
    np.testing.assert_array_equal(p, before)
    opt.param_groups[0]["lr"] = 1.0
    assert opt.step([g])


@pytest.mark.skipif(not NATIVE, reason="the NumPy backend runs steps under the GIL")
def test_gradient_list_emptied_by_another_thread():
    """The step holds its own references: emptying the caller's list mid-step is harmless."""
    n = 2_000_000
    params = [np.zeros(n, np.float32) for _ in range(4)]
    opt = fastopt.SGD(params, lr=0.1)
    stop = threading.Event()
    grads = [np.ones(n, np.float32) for _ in range(4)]

    def clear():
        while not stop.is_set():
            grads.clear()
            grads.extend(np.ones(n, np.float32) for _ in range(4))

    t = threading.Thread(target=clear)
    t.start()
    try:
        for _ in range(20):
            try:
                opt.step(list(grads) if len(grads) == 4 else [None] * 4)
            except ValueError:
                pass
    finally:
        stop.set()
        t.join()
    assert all(np.all(p <= 0) for p in params)


@pytest.mark.skipif(not NATIVE, reason="no threads in the NumPy backend")
def test_concurrent_steps_share_the_thread_budget():
    budget = native.omp_max_threads()
    params = [np.zeros(3_000_000, np.float32) for _ in range(3)]
    g = np.ones(3_000_000, np.float32)
    native.peak_threads(reset=True)

    def run(p):
        opt = fastopt.Adam([p])
        for _ in range(10):
            opt.step([g])

    ts = [threading.Thread(target=run, args=(p,)) for p in params]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert 1 <= native.peak_threads() <= budget
    assert native.threads_in_use() == 0


@pytest.mark.parametrize("name", ["SGD", "Adam", "NAdam", "RMSprop"])
def test_skipped_step_modifies_nothing_first_step_too(name):
    cls = getattr(fastopt, name)
    kw = {"momentum": 0.9} if name in ("SGD", "RMSprop") else {}
    p = np.linspace(-1, 1, 50).astype(np.float32)
    opt = cls([p], lr=0.1, **kw)
    bad = np.ones_like(p)
    bad[7] = np.inf
    assert opt.step([bad], grad_scale=1024.0) is False
    assert opt.state == {}
    np.testing.assert_array_equal(p, np.linspace(-1, 1, 50).astype(np.float32))
    assert opt.step([np.ones_like(p)], grad_scale=2.0) is True
    snap, before = _snapshot(opt), p.copy()
    bad[7] = np.nan
    assert opt.step([bad], grad_scale=2.0) is False
    assert _snapshot(opt) == snap
    np.testing.assert_array_equal(p, before)


def test_grad_scale_divides_the_gradient():
    p1, o1 = _adam()
    p2, o2 = _adam()
    g = np.random.default_rng(1).standard_normal(1000).astype(np.float32)
    o1.step([g * np.float32(8)], grad_scale=8.0)
    o2.step([g])
    np.testing.assert_array_equal(p1, p2)      # a power of two: exact


def test_specs_match_the_c_records():
    if not NATIVE:
        pytest.skip("the C records exist in the native build only")
    for rule in _spec.RULES.values():
        fields = rule.pack({**rule.defaults(), **dict(_spec.COMMON)})
        assert set(fields) == set(native.ARG_NAMES[rule.name]), rule.name


@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "Lion",
                                  "Adamax", "RAdam", "NAdam", "Adadelta", "Rprop", "ASGD",
                                  "LAMB"])
def test_class_signatures_match_the_spec(name):
    import inspect
    cls = getattr(fastopt, name)
    sig = inspect.signature(cls.__init__)
    spec = cls._spec
    for key, default in spec.defaults().items():
        assert key in sig.parameters or key in ("betas",), (name, key)
        if key in sig.parameters:
            assert sig.parameters[key].default == default, (name, key)


@pytest.mark.parametrize("name", ["SGD", "Adam", "RMSprop"])
def test_clipping_under_loss_scaling_uses_the_unscaled_norm(name):
    """max_grad_norm with grad_scale=s clips by the norm of grad/s: a power-of-two scale
    gives bitwise the unscaled run, norms included."""
    cls = getattr(fastopt, name)
    rng = np.random.default_rng(3)
    p1 = rng.standard_normal(300).astype(np.float32)
    p2 = p1.copy()
    o1 = cls([p1], lr=0.05, max_grad_norm=0.5)
    o2 = cls([p2], lr=0.05, max_grad_norm=0.5)
    for _ in range(5):
        g = rng.standard_normal(300).astype(np.float32) * np.float32(3)
        assert o1.step([g * np.float32(1024)], grad_scale=1024.0)
        o2.step([g])
        assert o1.last_grad_norms == o2.last_grad_norms
    np.testing.assert_array_equal(p1, p2)


@pytest.mark.parametrize("bad", [0.0, -2.0, float("nan"), float("inf"), True, "2", None])
def test_bad_grad_scale_refused_nothing_modified(bad):
    p = np.linspace(-1, 1, 20).astype(np.float32)
    opt = fastopt.Adam([p], lr=0.1)
    if bad is None:     # None means "no loss scaling": the step runs
        assert opt.step([np.ones_like(p)], grad_scale=bad) is True
        return
    with pytest.raises((TypeError, ValueError), match="grad_scale"):
        opt.step([np.ones_like(p)], grad_scale=bad)
    assert opt.state == {}
    np.testing.assert_array_equal(p, np.linspace(-1, 1, 20).astype(np.float32))


@pytest.mark.skipif(not NATIVE, reason="compares with the compiled csrc/fastopt.h")
def test_python_stream_and_dtype_codes_are_the_c_ones():
    assert (_spec.M, _spec.A1) == (native.STREAM_M, native.STREAM_A1)
    assert (_spec.DT_NONE, _spec.DT_F32, _spec.DT_F64, _spec.DT_F16, _spec.DT_BF16,
            _spec.DT_Q8S, _spec.DT_Q8U, _spec.DT_ABSMAX) == (
        native.DT_NONE, native.DT_F32, native.DT_F64, native.DT_F16, native.DT_BF16,
        native.DT_Q8S, native.DT_Q8U, native.DT_ABSMAX)


@pytest.fixture
def straggler():
    """The straggler fallback on with a short hold, and every step parallel (grain 1)."""
    old = fastopt.set_straggler_fallback(2e-4, 30.0)   # long: a loaded box stays in it
    old_grain = native.set_parallel_grain(1)
    yield
    native.set_parallel_grain(old_grain)
    fastopt.set_straggler_fallback(*old)


def _adam_run(n_steps):
    rng = np.random.default_rng(11)
    p = rng.standard_normal(5000).astype(np.float32)
    gs = [rng.standard_normal(5000).astype(np.float32) for _ in range(n_steps)]
    opt = fastopt.Adam([p], lr=1e-2)
    for g in gs:
        opt.step([g])
    return p


@pytest.mark.skipif(not NATIVE or native.omp_max_threads() < 2,
                    reason="needs the native backend and 2 OpenMP threads")
def test_straggler_fallback_runs_on_one_thread_then_measures_again(straggler):
    fastopt.set_num_threads(2)
    try:
        expected = _adam_run(3)             # parallel, judged by the real clock
        now = native.wtime()
        congested, serial, _ = native.straggler_stats()
        # a step whose second thread finished 1 ms after the first, which took 0.1 ms
        native.note_spread(now, now + 1e-3, now - 1e-4)
        assert native.straggler_stats()[0] == congested + 1
        assert native.straggler_stats()[2] > 0.1
        native.peak_threads(reset=True)
        got = _adam_run(3)
        assert native.peak_threads() == 1                      # the fallback held
        assert native.straggler_stats()[1] == serial + 3
        assert np.array_equal(got, expected)                   # timing only: same bits
        # an even spread is not congestion; after the hold, steps are parallel again
        native.note_spread(now, now + 1e-5, now - 1e-4)        # 10 us late: fine
        native.note_spread(now, now + 1e-3, now - 5e-3)        # late, but under its chunk
        assert native.straggler_stats()[0] == congested + 1
        import time
        fastopt.set_straggler_fallback(2e-4, 0.05)      # (also ends the hold in force)
        native.note_spread(now, now + 1e-3, now - 1e-4)
        time.sleep(0.2)
        native.peak_threads(reset=True)
        assert np.array_equal(_adam_run(3), expected)
        assert native.peak_threads() == 2 or native.straggler_stats()[0] > congested + 1
    finally:
        fastopt.set_num_threads(None)


@pytest.mark.skipif(not NATIVE or native.omp_max_threads() < 2,
                    reason="needs the native backend and 2 OpenMP threads")
def test_straggler_fallback_off_with_hold_zero(straggler):
    fastopt.set_straggler_fallback(2e-4, 0.0)
    fastopt.set_num_threads(2)
    try:
        now = native.wtime()
        congested = native.straggler_stats()[0]
        native.note_spread(now, now + 1e-2, now - 1e-4)
        assert native.straggler_stats()[0] == congested
        native.peak_threads(reset=True)
        _adam_run(2)
        assert native.peak_threads() == 2
    finally:
        fastopt.set_num_threads(None)


@pytest.mark.parametrize("bad", [-1.0, float("nan"), True, "1"])
def test_straggler_fallback_refuses_bad_settings(bad):
    before = fastopt.set_straggler_fallback(hold=0.0)
    try:
        with pytest.raises(ValueError, match="straggle|hold"):
            fastopt.set_straggler_fallback(hold=bad)
        assert fastopt.set_straggler_fallback(*before) == before
    finally:
        fastopt.set_straggler_fallback(*before)
