"""Adafactor (issue 14): factored second moments. The NumPy frontend and fastopt.torch against
torch.optim.Adafactor step by step on 0-d to 4-d shapes, the native entry against its NumPy
twin bitwise (rows wider than its 256-element chunks, widths off the 8 lanes) and for any
thread count, torch's state layout, state dicts both ways, and bad input refused with nothing
modified."""
from __future__ import annotations

import copy

import numpy as np
import pytest
from helpers import DTYPES, assert_bitwise, snapshot

import fastopt
from fastopt import _spec, functional, reference

SHAPES = [(), (1,), (7,), (5, 3), (33, 1), (1, 9), (2, 3, 17), (2, 2, 3, 5), (40, 300)]
OPTIONS = {
    "default": dict(),
    "wd-max": dict(weight_decay=0.2, maximize=True),
    # lr above 1/sqrt(t) from t = 5 on (rho's other branch), eps1 given, d clipping less
    "eps1-d-lr": dict(lr=0.45, eps=(1e-4, 1e-2), d=2.0, beta2_decay=-0.5),
}


def _tol(dtype):
    # torch sums in the param's dtype, fastopt in float64: float32 rounding of O(lr) steps
    return dict(rtol=2e-5, atol=2e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-14)


def _state(shape, dtype):
    keys = _spec.ADAFACTOR.state_keys(shape)
    return [np.zeros(keys[k], dtype) if k in keys else None
            for k in ("row_var", "col_var", "variance")]


@pytest.mark.parametrize("opt", OPTIONS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_matches_torch_step_by_step(dtype, shape, opt):
    torch = pytest.importorskip("torch", reason="optional: pip install torch==2.13.0")
    rng = np.random.default_rng(sum(shape) + len(shape))
    p = np.array(rng.standard_normal(shape), dtype=dtype)
    t = torch.tensor(p.copy(), requires_grad=True)
    ours = fastopt.Adafactor([p], **OPTIONS[opt])
    theirs = torch.optim.Adafactor([t], **OPTIONS[opt])
    for s in range(7):
        g = np.array(rng.standard_normal(shape) * (s + 1), dtype=dtype)
        t.grad = torch.from_numpy(g.copy())
        ours.step([g])
        theirs.step()
        np.testing.assert_allclose(p, t.detach().numpy(), **_tol(dtype), err_msg=f"step {s}")
        st, ts = ours.state[0], theirs.state[t]
        assert set(st) == set(ts) and st["step"] == int(ts["step"].item())
        for key in set(st) - {"step"}:
            assert st[key].shape == tuple(ts[key].shape)
            np.testing.assert_allclose(st[key], ts[key].numpy(), **_tol(dtype),
                                       err_msg=f"{key} step {s}")


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_native_equals_reference(dtype):
    rng = np.random.default_rng(7)
    shapes = [(3, 700), (2, 5, 259), (257,), (), (9, 1), (1, 1), (4, 13)]
    params = [np.array(rng.standard_normal(s), dtype=dtype) for s in shapes]
    states = [_state(s, dtype) for s in shapes]
    fast = [snapshot([p] + st) for p, st in zip(params, states)]
    ref = [snapshot([p] + st) for p, st in zip(params, states)]
    for step in range(1, 5):
        grads = [np.array(rng.standard_normal(s), dtype=dtype) for s in shapes]
        kw = dict(weight_decay=0.1 * (step % 2), maximize=step == 3, lr=0.3, eps1=1e-6)
        functional.adafactor([f[0] for f in fast], grads, [f[1] for f in fast],
                             [f[2] for f in fast], [f[3] for f in fast], [step] * len(shapes),
                             **kw)
        for r, g in zip(ref, grads):
            reference.adafactor_step(*r[:1], g, *r[1:], step=step, **kw)
    for k, (a, b) in enumerate(zip(fast, ref)):
        for j, (x, y) in enumerate(zip(a, b)):
            if x is not None:
                assert_bitwise(x, y, f"tensor {k} {shapes[k]}, array {j}")


@pytest.mark.parametrize("nthreads", [1, 2, 3])
def test_the_same_for_any_thread_count(threads, nthreads):
    threads(nthreads)
    rng = np.random.default_rng(11)
    shapes = [(64, 129), (3, 40, 8), (1000,), (17, 17), (5,)]
    params = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    opt = fastopt.Adafactor(params, weight_decay=0.01)
    ref = [snapshot([p] + _state(s, np.float32)) for p, s in zip(params, shapes)]
    for step in range(1, 4):
        grads = [rng.standard_normal(s).astype(np.float32) for s in shapes]
        opt.step(grads)
        for r, g in zip(ref, grads):
            reference.adafactor_step(*r[:1], g, *r[1:], step=step, weight_decay=0.01,
                                     eps1=float(np.finfo(np.float32).eps))
    for k, r in enumerate(ref):
        assert_bitwise(params[k], r[0], f"param {k}, {nthreads} threads")
        for key, y in zip(("row_var", "col_var", "variance"), r[1:]):
            if y is not None:
                assert_bitwise(opt.state[k][key], y, f"{key} {k}, {nthreads} threads")


def test_eps1_defaults_to_the_first_stepping_params_epsilon():
    """torch resolves eps1 once per group from its first param with a gradient: with a
    float32 param first, the float64 one gets float32's epsilon (tiny gradients show it)."""
    g = np.full((3, 2), 1e-9)
    a32, b64 = np.ones((3, 2), np.float32), np.ones((3, 2))
    alone = np.ones((3, 2))
    fastopt.Adafactor([a32, b64]).step([g.astype(np.float32), g])
    fastopt.Adafactor([alone]).step([g])
    assert not np.array_equal(b64, alone)
    c = np.ones((3, 2))
    fastopt.Adafactor([c], eps=(float(np.finfo(np.float32).eps), 1e-3)).step([g])
    assert_bitwise(b64, c, "eps1 of float32")


def test_bad_input_refused_with_nothing_modified():
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((4, 3)), rng.standard_normal(5)
    opt = fastopt.Adafactor([a, b])
    opt.step([np.ones((4, 3)), np.ones(5)])
    keep = snapshot([a, b, opt.state[0]["row_var"], opt.state[0]["col_var"],
                     opt.state[1]["variance"]])
    for grads, exc, msg in [([np.ones((4, 3)), np.ones(4)], ValueError, r"grads\[1\]"),
                            ([np.ones((4, 3)), np.ones(5, np.float32)], TypeError, r"grads\[1\]"),
                            ([np.ones((4, 3))], ValueError, "expected 2 entries")]:
        with pytest.raises(exc, match=msg):
            opt.step(grads)
    opt.state[1]["variance"] = np.zeros(4)
    with pytest.raises(ValueError, match=r"state\[1\]\['variance'\]: expected shape \(5,\)"):
        opt.step([np.ones((4, 3)), np.ones(5)])
    opt.state[1]["variance"] = keep[4].copy()
    live = [a, b, opt.state[0]["row_var"], opt.state[0]["col_var"], opt.state[1]["variance"]]
    for k, (x, y) in enumerate(zip(live, keep)):
        assert_bitwise(x, y, f"array {k}")
    assert opt.state[0]["step"] == opt.state[1]["step"] == 1
    p, g = np.zeros((3, 4)), np.ones((3, 4))
    with pytest.raises(ValueError, match=r"row_vars\[0\]: expected shape \(3, 1\)"):
        functional.adafactor([p], [g], [np.zeros((4, 1))], [np.zeros((1, 4))], [None], [1])
    with pytest.raises(ValueError, match=r"variances\[0\]: expected None"):
        functional.adafactor([p], [g], [np.zeros((3, 1))], [np.zeros((1, 4))], [np.zeros(2)],
                             [1])
    assert not p.any()
    for kw, msg in [(dict(beta2_decay=0.5), "beta2_decay should be <= 0 but is: 0.5"),
                    (dict(d=0.5), "Invalid clipping threshold d: 0.5"),
                    (dict(lr=-1.0), "Invalid learning rate: -1.0"),
                    (dict(eps=(-1.0, 1e-3)), "Invalid epsilon1 value: -1.0")]:
        with pytest.raises(ValueError, match=msg):
            fastopt.Adafactor([p], **kw)


def test_state_dict_roundtrip_resumes_bitwise():
    rng = np.random.default_rng(8)
    p0 = [rng.standard_normal((6, 4)), rng.standard_normal(3)]
    gs = [[rng.standard_normal((6, 4)), rng.standard_normal(3)] for _ in range(6)]
    a = [x.copy() for x in p0]
    oa = fastopt.Adafactor(a, weight_decay=0.1)
    for g in gs:
        oa.step(g)
    b = [x.copy() for x in p0]
    ob = fastopt.Adafactor(b, weight_decay=0.1)
    for g in gs[:2]:
        ob.step(g)
    oc = fastopt.Adafactor(b)
    oc.load_state_dict(ob.state_dict())
    for g in gs[2:]:
        oc.step(g)
    for x, y in zip(b, a):
        assert_bitwise(x, y, "resumed")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_torch_frontend_against_torch_and_state_dicts_both_ways(dtype):
    torch = pytest.importorskip("torch", reason="optional: pip install torch==2.13.0")
    import fastopt.torch as ft
    tdt = getattr(torch, dtype)
    torch.manual_seed(1)
    shapes = [(7, 5), (3,), (2, 4, 6), ()]
    start = [torch.randn(s, dtype=tdt) for s in shapes]
    sets = [[x.clone().requires_grad_() for x in start] for _ in range(3)]
    kw = dict(lr=0.05, weight_decay=0.1, maximize=True)
    ours, theirs = ft.Adafactor(sets[0], **kw), torch.optim.Adafactor(sets[1], **kw)
    tol = _tol(np.dtype(dtype))
    grads = [[torch.randn(s, dtype=tdt) for s in shapes] for _ in range(8)]

    def step(params, opt, gs):
        for p, g in zip(params, gs):
            p.grad = g.clone()
        opt.step()

    def close(x, y):
        for p, q in zip(x, y):
            np.testing.assert_allclose(p.detach().numpy(), q.detach().numpy(), **tol)

    for gs in grads[:4]:
        step(sets[0], ours, gs)
        step(sets[1], theirs, gs)
        close(sets[0], sets[1])
    for p, q in zip(sets[0], sets[1]):
        st, ts = ours.state[p], theirs.state[q]
        assert set(st) == set(ts)
        assert st["step"].dtype == ts["step"].dtype and float(st["step"]) == 4.0
        for key in st:
            assert st[key].shape == ts[key].shape
    with torch.no_grad():
        for p, q in zip(sets[2], sets[0]):
            p.copy_(q)
    cont_torch = torch.optim.Adafactor(sets[2], **kw)
    cont_torch.load_state_dict(copy.deepcopy(ours.state_dict()))   # (torch's are views)
    ours2 = ft.Adafactor(sets[1], **kw)
    ours2.load_state_dict(copy.deepcopy(theirs.state_dict()))
    for gs in grads[4:]:
        step(sets[0], ours, gs)
        step(sets[2], cont_torch, gs)
        step(sets[1], ours2, gs)
    close(sets[0], sets[2])
    close(sets[1], sets[2])
    w = torch.zeros(2, 3, dtype=tdt, requires_grad=True)
    opt = ft.Adafactor([w])
    w.grad = torch.ones(2, 3, dtype=tdt).to_sparse()
    with pytest.raises(RuntimeError, match="Adafactor does not support sparse gradients"):
        opt.step()
    assert len(opt.state) == 0
    z = torch.zeros(3, dtype=torch.complex64, requires_grad=True)
    z.grad = torch.ones(3, dtype=torch.complex64)
    with pytest.raises(RuntimeError, match="does not support complex parameters"):
        ft.Adafactor([z]).step()


@pytest.mark.parametrize("shape", [(37, 5), (3, 4, 257), (41,)], ids=str)
def test_writes_nothing_outside_the_arrays(shape):
    """Param and state as windows of larger buffers whose guard regions hold a sentinel."""
    rng = np.random.default_rng(10)
    guard = 64
    keys = _spec.ADAFACTOR.state_keys(shape)
    sizes = {"p": int(np.prod(shape)), **{k: int(np.prod(s)) for k, s in keys.items()}}
    bufs = {k: np.full(2 * guard + n, -3.5, np.float32) for k, n in sizes.items()}
    p = bufs["p"][guard:guard + sizes["p"]].reshape(shape)
    p[...] = rng.standard_normal(shape)
    opt = fastopt.Adafactor([p], weight_decay=0.1)
    st = {"step": 0}
    for k, s in keys.items():
        st[k] = bufs[k][guard:guard + sizes[k]].reshape(s)
        st[k][...] = 0.0
    opt.state[0] = st
    for _ in range(3):
        opt.step([rng.standard_normal(shape).astype(np.float32)])
    for k, b in bufs.items():
        assert (b[:guard] == -3.5).all() and (b[-guard:] == -3.5).all(), k
    assert opt.state[0]["step"] == 3


def test_torch_frontend_hooks_once_and_16_bit_params_take_torchs_step():
    torch = pytest.importorskip("torch", reason="optional: pip install torch==2.13.0")
    import fastopt.torch as ft
    torch.manual_seed(2)
    start = torch.randn(6, 5).to(torch.bfloat16)
    a, b = start.clone().requires_grad_(), start.clone().requires_grad_()
    ours, theirs = ft.Adafactor([a], weight_decay=0.1), torch.optim.Adafactor([b],
                                                                             weight_decay=0.1)
    calls = []
    ours.register_step_pre_hook(lambda opt, args, kwargs: calls.append(1))
    for _ in range(3):
        g = torch.randn(6, 5).to(torch.bfloat16)
        a.grad, b.grad = g.clone(), g.clone()
        ours.step()
        theirs.step()
    assert torch.equal(a, b) and len(calls) == 3
    loss = ft.Adafactor([torch.zeros(2, requires_grad=True)]).step(lambda: 4.0)
    assert loss == 4.0
