"""Adadelta and Rprop (issue 14): torch.optim's rules natively. Here what the shared tables of
test_rules.py, test_torch.py and test_torch_frontend.py do not reach: Rprop is bitwise torch's
(its arithmetic has no rounding that an FMA could change), including its sign logic at zeros,
NaNs and underflowing products; the multi-tensor calls for any thread count; the optimizers
against an oracle built on the reference; bad input refused with nothing modified."""
from __future__ import annotations

import numpy as np
import pytest
from helpers import assert_bitwise, snapshot

import fastopt
from fastopt import kernels, reference


def _tricky_grads(rng, n, dtype, step):
    """Gradients that exercise every branch of Rprop's sign logic: exact zeros, NaN, values
    whose product with the previous gradient underflows to 0, huge ones, sign flips."""
    g = rng.standard_normal(n).astype(dtype)
    g[::5] = 0
    g[3::11] = -g[3::11] if step % 2 else g[3::11]
    tiny = np.finfo(dtype).tiny
    g[7::13] = dtype(tiny * 4) * (1 if step % 3 else -1)    # products underflow to +-0
    if step in (2, 5):
        g[1::17] = np.nan
    g[9::19] = dtype(np.finfo(dtype).max / 4)
    return g


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("kw", [dict(), dict(lr=0.05, etas=(0.3, 1.5), step_sizes=(1e-3, 0.2)),
                                dict(maximize=True, step_sizes=(0.5, 0.1))])
def test_rprop_is_bitwise_torch(dtype, kw, isa):
    torch = pytest.importorskip("torch", reason="optional: pip install torch==2.13.0")
    import fastopt.torch as ft
    rng = np.random.default_rng(4)
    sizes = [1, 17, 4099]
    params = [rng.standard_normal(n).astype(dtype) for n in sizes]
    theirs = [torch.tensor(p.copy(), requires_grad=True) for p in params]
    front = [torch.tensor(p.copy(), requires_grad=True) for p in params]
    ours = fastopt.Rprop(params, **kw)
    t_opt = torch.optim.Rprop(theirs, foreach=False, **kw)
    f_opt = ft.Rprop(front, **kw)
    for step in range(8):
        grads = [_tricky_grads(rng, n, dtype, step) for n in sizes]
        if step == 4:
            grads[1] = None
        for ts in (theirs, front):
            for t, g in zip(ts, grads):
                t.grad = None if g is None else torch.from_numpy(g.copy())
        ours.step(grads)
        t_opt.step()
        f_opt.step()
    for i, (p, t, f) in enumerate(zip(params, theirs, front)):
        for key in ("prev", "step_size"):
            want = t_opt.state[t][key].numpy()
            assert_bitwise(ours.state[i][key], want, f"Rprop {kw} state {i} {key}")
            assert_bitwise(f_opt.state[f][key].numpy(), want, f"fastopt.torch {key} {i}")
        assert_bitwise(p, t.detach().numpy(), f"Rprop {kw} {np.dtype(dtype)} param {i}")
        assert_bitwise(f.detach().numpy(), t.detach().numpy(), f"fastopt.torch param {i}")
        assert int(ours.state[i]["step"]) == int(t_opt.state[t]["step"])
        assert f_opt.state[f]["step"].dtype == t_opt.state[t]["step"].dtype


def test_rprop_sign_logic_by_hand():
    """The documented cases, one element each: same sign (grow), flip (shrink, no move, prev
    zeroed), zero (factor 1), NaN (torch.sign(NaN) = 0: no move, NaN kept in prev)."""
    p = np.zeros(4)
    opt = fastopt.Rprop([p], lr=0.1, etas=(0.5, 2.0))
    opt.step([np.array([1.0, 1.0, 1.0, 1.0])])           # prev 0: factor 1 everywhere
    assert_bitwise(p, np.full(4, -0.1), "first step")
    opt.step([np.array([3.0, -2.0, 0.0, np.nan])])
    st = opt.state[0]
    assert_bitwise(st["step_size"], np.array([0.2, 0.05, 0.1, 0.1]), "step sizes")
    assert_bitwise(st["prev"], np.array([3.0, 0.0, 0.0, np.nan]), "prev")
    assert_bitwise(p, np.array([-0.1 - 0.2, -0.1, -0.1, -0.1]), "params")
    opt.step([np.array([1.0, -1.0, 1.0, 1.0])])          # after a flip: factor 1, moves
    assert_bitwise(st["step_size"], np.array([0.4, 0.05, 0.1, 0.1]), "step sizes after")
    assert_bitwise(p, np.array([(-0.1 - 0.2) - 0.4, -0.1 + 0.05, -0.1 - 0.1, -0.1 - 0.1]),
                  "params after")


def test_adadelta_by_hand_in_float64():
    """Two steps of the formula written out in float64 (lr, rho, eps, weight decay)."""
    p = np.array([1.0, -2.0])
    lr, rho, eps, wd = 0.7, 0.6, 1e-3, 0.1
    opt = fastopt.Adadelta([p], lr=lr, rho=rho, eps=eps, weight_decay=wd)
    q, v, u = np.array([1.0, -2.0]), np.zeros(2), np.zeros(2)
    for g in (np.array([0.5, 1.5]), np.array([-1.0, 2.0])):
        opt.step([g])
        gg = g + wd * q
        v = rho * v + (1 - rho) * gg * gg
        d = np.sqrt(u + eps) / np.sqrt(v + eps) * gg
        u = rho * u + (1 - rho) * d * d
        q = q - lr * d
    np.testing.assert_allclose(p, q, rtol=1e-15)
    np.testing.assert_allclose(opt.state[0]["square_avg"], v, rtol=1e-15)
    np.testing.assert_allclose(opt.state[0]["acc_delta"], u, rtol=1e-15)


@pytest.mark.parametrize("nthreads", [1, 2, 3])
def test_multi_tensor_calls_match_reference_any_thread_count(threads, nthreads):
    threads(nthreads)
    rng = np.random.default_rng(nthreads)
    sizes = [0, 1, 17, 4099, 40_000]
    for name, kw in [("adadelta", dict(lr=0.5, weight_decay=0.1)),
                     ("rprop", dict(etaminus=0.4, maximize=True))]:
        params = [rng.standard_normal(n).astype(np.float32) for n in sizes]
        grads = [rng.standard_normal(n).astype(np.float32) for n in sizes]
        grads[2] = None
        s1 = [rng.standard_normal(n).astype(np.float32) for n in sizes]
        if name == "adadelta":      # square_avg >= 0
            s1 = [np.abs(x) for x in s1]
        s2 = [np.abs(rng.standard_normal(n)).astype(np.float32) * 0.1 for n in sizes]
        fast = [snapshot(x) for x in (params, s1, s2)]
        ref = [snapshot(x) for x in (params, s1, s2)]
        for _ in range(3):
            getattr(kernels, name)(fast[0], grads, fast[1], fast[2], **kw)
            getattr(reference, name)(ref[0], grads, ref[1], ref[2], **kw)
        for col, (f, r) in enumerate(zip(fast, ref)):
            for k, (a, b) in enumerate(zip(f, r)):
                assert_bitwise(a, b, f"{name} list {col} tensor {k}, {nthreads} threads")


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_rprop_optimizer_matches_an_oracle_on_the_reference(dtype):
    rng = np.random.default_rng(5)
    shapes = [(6, 5), (33,), ()]
    params = [np.asarray(rng.standard_normal(s), dtype) for s in shapes]
    mirror = snapshot(params)
    groups = [{"params": params[:2]}, {"params": params[2:], "lr": 0.3, "l1": 0.01,
                                        "etas": (0.2, 1.1)}]
    opt = fastopt.Rprop(groups, lr=0.02, step_sizes=(1e-4, 1.0))
    state: list = [None] * 3
    for step in range(15):
        grads = [np.asarray(rng.standard_normal(s), dtype) for s in shapes]
        if step % 4 == 1:
            grads[0] = None
        opt.step(grads)
        for i, (p, g) in enumerate(zip(mirror, grads)):
            if g is None:
                continue
            lr, etas, l1 = (0.3, (0.2, 1.1), 0.01) if i == 2 else (0.02, (0.5, 1.2), 0.0)
            if state[i] is None:
                state[i] = [np.zeros_like(p), np.full_like(p, lr)]
            reference.rprop_step(p, g, *state[i], etaminus=etas[0], etaplus=etas[1],
                                 step_size_min=1e-4, step_size_max=1.0, l1=l1)
    for i in range(3):
        assert_bitwise(params[i], mirror[i], f"param {i}")
        assert_bitwise(opt.state[i]["prev"], state[i][0], f"prev {i}")
        assert_bitwise(opt.state[i]["step_size"], state[i][1], f"step_size {i}")


@pytest.mark.parametrize("name,kw", [("Rprop", dict(lr=0.02)), ("Adadelta", dict(lr=0.5))])
def test_state_dict_round_trip_resumes_bitwise(name, kw):
    cls = getattr(fastopt, name)
    rng = np.random.default_rng(1)
    grads = [[np.asarray(rng.standard_normal(5), np.float32)] for _ in range(10)]
    a, b = np.ones(5, np.float32), np.ones(5, np.float32)
    full = cls([a], **kw)
    for g in grads:
        full.step(g)
    half = cls([b], **kw)
    for g in grads[:4]:
        half.step(g)
    resumed = cls([b], **kw)
    resumed.load_state_dict(half.state_dict())
    for g in grads[4:]:
        resumed.step(g)
    assert_bitwise(b, a, f"{name} resumed")


def test_kernel_api_refuses_bad_input_with_nothing_modified():
    p, g = np.ones(4), np.full(4, 0.5)
    prev, ss = np.zeros(4), np.full(4, 0.1)
    v, u = np.zeros(4), np.zeros(4)
    before = snapshot([p, prev, ss, v, u])
    with pytest.raises(ValueError, match="shape"):
        kernels.rprop_step(p, g, prev, np.full(3, 0.1))
    with pytest.raises(TypeError, match="dtype"):
        kernels.rprop_step(p, g.astype(np.float32), prev, ss)
    with pytest.raises(ValueError, match="Invalid eta values"):
        kernels.rprop_step(p, g, prev, ss, etaminus=1.5)
    with pytest.raises(ValueError, match="overlap|same array"):
        kernels.rprop_step(p, g, ss, ss)
    with pytest.raises(ValueError, match="Invalid rho value"):
        kernels.adadelta_step(p, g, v, u, rho=-0.5)
    with pytest.raises(ValueError, match="read-only"):
        ro = np.zeros(4)
        ro.flags.writeable = False
        kernels.adadelta_step(p, g, v, ro)
    for a, b in zip([p, prev, ss, v, u], before):
        assert_bitwise(a, b, "after a refused call")


def test_torch_frontend_refuses_a_bad_state_with_nothing_modified():
    torch = pytest.importorskip("torch", reason="optional: pip install torch==2.13.0")
    import fastopt.torch as ft
    ps = [torch.ones(4, requires_grad=True), torch.ones(3, requires_grad=True)]
    opt = ft.Rprop(ps, lr=0.1)
    for p in ps:
        p.grad = torch.full_like(p, 0.5)
    opt.step()
    opt.state[ps[1]]["step_size"] = torch.zeros(5)
    before = [p.detach().clone() for p in ps] + [t.clone() for st in opt.state.values()
                                                 for t in st.values()]
    with pytest.raises(ValueError, match="step_size"):
        opt.step()
    after = [p.detach() for p in ps] + [t for st in opt.state.values() for t in st.values()]
    assert all(torch.equal(a, b) for a, b in zip(after, before))
