"""ASGD (issue 14): torch.optim.ASGD natively, with its two per-tensor scalar states (eta, mu)
kept by the driver next to the step count. The shared tables (test_torch.py,
test_torch_frontend.py, test_backends.py, test_guard_regions.py, test_validation.py) compare
it with torch and the NumPy backend; here: the kernel against its NumPy twin bitwise, eta and
mu bitwise torch's (float32 rounding, the previous step's lr), the averaging switch at t0,
an lr schedule, checkpoints both ways, and the scalars rolled back by a refused step."""
from __future__ import annotations

import numpy as np
import pytest
from helpers import DTYPES, SMALL_SIZES, assert_bitwise, snapshot

import fastopt
from fastopt import kernels, reference

OPTIONS = {
    "default": dict(),
    "averaging-from-2": dict(t0=2.0, lambd=1e-2, alpha=0.5, lr=0.05),
    "l2-max-l1": dict(t0=0.0, weight_decay=0.1, maximize=True, l1=0.01),
}


@pytest.mark.parametrize("n", SMALL_SIZES + [140_001])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("opt", OPTIONS)
def test_kernel_matches_reference(isa, opt, dtype, n):
    rng = np.random.default_rng(n)
    p = rng.standard_normal(n).astype(dtype)
    ax = (rng.standard_normal(n) * 0.1).astype(dtype)
    kw = OPTIONS[opt]
    eta0 = float(np.float32(kw.get("lr", 1e-2)))
    fast = snapshot([p, ax]) + [np.array([eta0, 1.0])]
    ref = snapshot([p, ax]) + [np.array([eta0, 1.0])]
    for step in range(1, 6):
        g = (rng.standard_normal(n) * 0.5).astype(dtype)
        kernels.asgd_step(fast[0], g, fast[1], fast[2], step=step, **kw)
        reference.asgd_step(ref[0], g, ref[1], ref[2], step=step, **kw)
    for k, (a, b) in enumerate(zip(fast, ref)):
        assert_bitwise(a, b, f"ASGD {opt} {np.dtype(dtype)} n={n} isa={isa} array {k}")


def test_multi_tensor_call_matches_reference_any_thread_count(threads):
    for nthreads in (1, 2, 3):
        threads(nthreads)
        rng = np.random.default_rng(nthreads)
        sizes = [0, 1, 17, 40_000]
        params = [rng.standard_normal(n).astype(np.float32) for n in sizes]
        axs = [np.zeros(n, np.float32) for n in sizes]
        fast, ref = snapshot(params + axs), snapshot(params + axs)
        em_fast = np.array([[0.01, 1.0], [0.02, 0.5], [0.01, 1.0], [0.03, 0.25]])
        em_ref = em_fast.copy()
        steps = [1, 9, 3, 4]
        grads = [rng.standard_normal(n).astype(np.float32) for n in sizes]
        grads[2] = None
        kernels.asgd(fast[:4], grads, fast[4:], em_fast, steps, t0=2.0)
        reference.asgd(ref[:4], grads, ref[4:], em_ref, steps, t0=2.0)
        for k, (a, b) in enumerate(zip(fast, ref)):
            assert_bitwise(a, b, f"array {k}, {nthreads} threads")
        assert_bitwise(em_fast, em_ref, f"eta/mu, {nthreads} threads")
        assert_bitwise(em_fast[2], np.array([0.01, 1.0]), "a skipped tensor's scalars")


def test_eta_mu_and_averaging_by_hand():
    """eta and mu follow torch's schedule, rounded to float32, one step late; the average is
    a copy of the param while mu == 1, the running mean after t0."""
    p = np.zeros(1)
    lr, lambd, alpha, t0 = 0.5, 0.1, 0.75, 2
    opt = fastopt.ASGD([p], lr=lr, lambd=lambd, alpha=alpha, t0=t0)
    seen = []
    for t in range(1, 7):
        eta, mu = float(opt.state[0]["eta"]) if t > 1 else float(np.float32(lr)), \
            float(opt.state[0]["mu"]) if t > 1 else 1.0
        before = p.copy()
        opt.step([np.ones(1)])
        assert_bitwise(p, (before * (1 - lambd * eta) + (-eta) * 1.0), f"param at step {t}")
        assert float(opt.state[0]["eta"]) == float(np.float32(lr / (1 + lambd * lr * t) ** alpha))
        assert float(opt.state[0]["mu"]) == float(np.float32(1 / max(1, t - t0)))
        seen.append((mu, p[0], opt.state[0]["ax"][0]))
    for mu, param, ax in seen[:3]:          # mu == 1 up to step t0 + 1: ax is the param
        assert mu == 1.0 and ax == param
    assert seen[4][2] != seen[4][1]         # averaging since


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_eta_and_mu_are_torchs_bitwise_under_an_lr_schedule(dtype):
    """With an lr scheduler the next eta is computed from the lr of the step that stores it
    (torch's order); the scalars must be torch's bits, the params torch's to rounding."""
    torch = pytest.importorskip("torch", reason="optional: pip install torch==2.13.0")
    import fastopt.torch as ft
    rng = np.random.default_rng(0)
    start = [rng.standard_normal(s).astype(dtype) for s in ((7, 3), (50,))]
    ours_p = [torch.tensor(x.copy(), requires_grad=True) for x in start]
    their_p = [torch.tensor(x.copy(), requires_grad=True) for x in start]
    numpy_p = [x.copy() for x in start]
    kw = dict(lr=0.1, lambd=1e-2, t0=3)
    ours, theirs = ft.ASGD(ours_p, **kw), torch.optim.ASGD(their_p, foreach=False, **kw)
    plain = fastopt.ASGD(numpy_p, **kw)
    s1 = torch.optim.lr_scheduler.StepLR(ours, step_size=2, gamma=0.5)
    s2 = torch.optim.lr_scheduler.StepLR(theirs, step_size=2, gamma=0.5)
    for _ in range(9):
        grads = [rng.standard_normal(x.shape).astype(dtype) for x in start]
        for ps in (ours_p, their_p):
            for p, g in zip(ps, grads):
                p.grad = torch.from_numpy(g.copy())
        ours.step()
        theirs.step()
        plain.step(grads)
        s1.step()
        s2.step()
        plain.param_groups[0]["lr"] = ours.param_groups[0]["lr"]
    for i, (a, b) in enumerate(zip(ours_p, their_p)):
        for key in ("eta", "mu", "step"):
            assert ours.state[a][key].dtype == theirs.state[b][key].dtype
            assert ours.state[a][key].item() == theirs.state[b][key].item(), (i, key)
            if key != "step":
                assert float(plain.state[i][key]) == theirs.state[b][key].item(), (i, key)
        tol = 1e-12 if dtype == np.float64 else 2e-6
        np.testing.assert_allclose(a.detach().numpy(), b.detach().numpy(), rtol=tol, atol=tol)
        np.testing.assert_allclose(ours.state[a]["ax"].numpy(), theirs.state[b]["ax"].numpy(),
                                   rtol=tol, atol=tol)
        np.testing.assert_allclose(numpy_p[i], b.detach().numpy(), rtol=tol, atol=tol)


def test_state_dict_round_trip_resumes_bitwise_and_carries_eta_mu():
    rng = np.random.default_rng(1)
    grads = [[np.asarray(rng.standard_normal(5), np.float32)] for _ in range(10)]
    a, b = np.ones(5, np.float32), np.ones(5, np.float32)
    kw = dict(lr=0.05, t0=2, lambd=0.1)
    full = fastopt.ASGD([a], **kw)
    for g in grads:
        full.step(g)
    half = fastopt.ASGD([b], **kw)
    for g in grads[:4]:
        half.step(g)
    sd = half.state_dict()
    assert set(sd["state"][0]) == {"step", "eta", "mu", "ax"}
    assert isinstance(sd["state"][0]["eta"], float) and sd["state"][0]["mu"] == 0.5
    resumed = fastopt.ASGD([b], **kw)
    resumed.load_state_dict(sd)
    for g in grads[4:]:
        resumed.step(g)
    assert_bitwise(b, a, "resumed")
    assert_bitwise(resumed.state[0]["ax"], full.state[0]["ax"], "resumed ax")
    broken = {**sd, "state": {0: {k: v for k, v in sd["state"][0].items() if k != "mu"}}}
    with pytest.raises(ValueError, match="lacks 'mu'"):
        fastopt.ASGD([b], **kw).load_state_dict(broken)


def test_a_refused_first_step_leaves_no_state_and_the_scalars_as_they_were():
    params = [np.ones(4), np.ones(3)]
    opt = fastopt.ASGD(params, lr=0.2)
    with pytest.raises(ValueError, match=r"grads\[1\]"):
        opt.step([np.ones(4), np.ones(5)])
    assert opt.state == {}
    opt.step([np.ones(4), np.ones(3)])
    before = {i: {k: np.array(v, copy=True) for k, v in st.items()}
              for i, st in opt.state.items()}
    with pytest.raises(ValueError, match=r"grads\[0\]"):
        opt.step([np.ones(5), np.ones(3)])
    for i, st in opt.state.items():
        for k, v in st.items():
            assert_bitwise(v, before[i][k], f"state[{i}][{k!r}]")
    assert float(opt.state[0]["eta"]) == float(np.float32(0.2 / (1 + 1e-4 * 0.2) ** 0.75))


def test_kernel_api_refuses_bad_scalars_with_nothing_modified():
    p, g, ax = np.ones(3), np.ones(3), np.zeros(3)
    before = snapshot([p, ax])
    with pytest.raises(TypeError, match="eta_mu"):
        kernels.asgd_step(p, g, ax, np.ones(3), step=1)
    with pytest.raises(TypeError, match="eta_mu"):
        kernels.asgd_step(p, g, ax, np.ones(2, np.float32), step=1)
    with pytest.raises(TypeError, match="eta_mu"):
        kernels.asgd([p], [g], [ax], np.ones(2), [1])
    with pytest.raises(ValueError, match="Invalid learning rate"):
        kernels.asgd_step(p, g, ax, np.ones(2), step=1, lr=-1.0)
    with pytest.raises(ValueError, match="step count"):
        kernels.asgd_step(p, g, ax, np.ones(2), step=0)
    for a, b in zip([p, ax], before):
        assert_bitwise(a, b, "after a refused call")


def test_nadam_mu_product_still_one_scalar_per_tensor():
    """The scalar-state table generalised to several scalars per tensor: NAdam's one is
    unchanged (state key, float64 0-d view, checkpoint value)."""
    p = np.ones(3)
    opt = fastopt.NAdam([p])
    opt.step([np.ones(3)])
    mp = opt.state[0]["mu_product"]
    assert isinstance(mp, np.ndarray) and mp.shape == () and mp.dtype == np.float64
    assert opt.state_dict()["state"][0]["mu_product"] == float(mp)


@pytest.mark.parametrize("name,key,value", [("NAdam", "mu_product", 0.5),
                                            ("ASGD", "eta", 0.003), ("ASGD", "mu", 0.25)])
def test_a_replaced_scalar_state_is_used(name, key, value):
    # replacing the entry (a new object) acts as writing into it: the next step uses it
    rng = np.random.default_rng(2)
    x = rng.standard_normal(50).astype(np.float32)
    pa, pb = x.copy(), x.copy()
    oa, ob = getattr(fastopt, name)([pa], lr=1e-2), getattr(fastopt, name)([pb], lr=1e-2)
    g = [rng.standard_normal(50).astype(np.float32) for _ in range(3)]
    oa.step([g[0]])
    ob.step([g[0]])
    oa.state[0][key] = np.float64(value)
    ob.state[0][key][...] = value
    for gi in g[1:]:
        oa.step([gi])
        ob.step([gi])
    assert np.array_equal(pa, pb)
    assert float(oa.state[0][key]) == float(ob.state[0][key])
    assert oa.state_dict()["state"][0][key] == ob.state_dict()["state"][0][key]


def test_a_bad_replaced_scalar_state_is_refused_and_nothing_modified():
    p = np.ones(10, np.float32)
    opt = fastopt.NAdam([p], lr=1e-2)
    opt.step([np.ones(10, np.float32)])
    before = (p.copy(), opt.state[0]["exp_avg"].copy(), float(opt.state[0]["mu_product"]))
    opt.state[0]["mu_product"] = "half"
    with pytest.raises(TypeError, match=r"state\[0\]\['mu_product'\]"):
        opt.step([np.ones(10, np.float32)])
    assert np.array_equal(p, before[0]) and np.array_equal(opt.state[0]["exp_avg"], before[1])
    assert int(opt.state[0]["step"]) == 1
