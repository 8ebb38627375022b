"""LAMB (issue 14; not in torch): Apex FusedLAMB's trust ratio, per tensor, from norms that the
driver reduces before the step in a fixed order. Against a float64 NumPy transcription of the
paper's formula (written here, independently of fastopt.reference), the kernel against its
NumPy twin bitwise (every instruction set, sizes around the 8192-element reduction block, any
thread count), the optimizer, its checkpoints, fastopt.torch, and bad input."""
from __future__ import annotations

import numpy as np
import pytest
from helpers import DTYPES, assert_bitwise, snapshot

import fastopt
from fastopt import kernels, reference

OPTIONS = {
    "default": dict(),
    "wd-zero": dict(weight_decay=0.0),                 # no trust ratio: plain lr
    "nvlamb-wd-zero": dict(weight_decay=0.0, use_nvlamb=True),
    "no-bias-correction": dict(bias_correction=False, beta1=0.5, beta2=0.9),
    "max-l1-eps": dict(maximize=True, l1=0.01, eps=1e-3, weight_decay=0.1),
}
SIZES = [0, 1, 7, 33, 8191, 8192, 8193, 20_000]


def paper_lamb(params, grads_seq, *, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-6,
               weight_decay=0.01, bias_correction=True, use_nvlamb=False):
    """You et al. (2020), Algorithm 2, with Apex's trust-ratio rule, in float64."""
    xs = [np.asarray(p, np.float64).copy() for p in params]
    ms = [np.zeros_like(x) for x in xs]
    vs = [np.zeros_like(x) for x in xs]
    for t, grads in enumerate(grads_seq, start=1):
        for x, m, v, g in zip(xs, ms, vs, grads):
            g = np.asarray(g, np.float64)
            m[...] = beta1 * m + (1 - beta1) * g
            v[...] = beta2 * v + (1 - beta2) * g ** 2
            mh = m / (1 - beta1 ** t) if bias_correction else m
            vh = v / (1 - beta2 ** t) if bias_correction else v
            r = mh / (np.sqrt(vh) + eps) + weight_decay * x
            xn, rn = np.linalg.norm(x), np.linalg.norm(r)
            apply = use_nvlamb or weight_decay != 0
            trust = xn / rn if apply and xn > 0 and rn > 0 else 1.0
            x -= lr * trust * r
    return xs


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("opt", [o for o in OPTIONS if o != "max-l1-eps"])   # (no l1 in it)
def test_matches_the_papers_formula_in_float64(opt, dtype):
    kw = dict(OPTIONS[opt])
    rng = np.random.default_rng(3)
    shapes = [(17, 5), (9000,), (), (4,)]
    params = [np.asarray(rng.standard_normal(s) * (k + 1), dtype) for k, s in enumerate(shapes)]
    grads_seq = [[np.asarray(rng.standard_normal(s), dtype) for s in shapes] for _ in range(10)]
    want = paper_lamb(params, grads_seq, lr=1e-2, **kw)
    betas = (kw.pop("beta1", 0.9), kw.pop("beta2", 0.999))
    opt_ = fastopt.LAMB(params, lr=1e-2, betas=betas, **kw)
    for grads in grads_seq:
        opt_.step(grads)
    for i, (p, w) in enumerate(zip(params, want)):
        if dtype == np.float64:
            np.testing.assert_allclose(p, w, rtol=1e-12, atol=1e-14, err_msg=f"{opt} {i}")
        else:   # float32 rounding of ~10 steps of size lr (the update is O(1) per element)
            np.testing.assert_allclose(p, w, rtol=1e-5, atol=1e-5, err_msg=f"{opt} {i}")


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("opt", OPTIONS)
def test_kernel_matches_reference(isa, opt, dtype, n):
    rng = np.random.default_rng(n)
    p = rng.standard_normal(n).astype(dtype)
    m = (rng.standard_normal(n) * 0.1).astype(dtype)
    v = np.abs(rng.standard_normal(n) * 0.01).astype(dtype)
    fast, ref = snapshot([p, m, v]), snapshot([p, m, v])
    for step in (1, 2, 9):
        g = (rng.standard_normal(n) * 0.5).astype(dtype)
        kernels.lamb_step(*fast[:1], g, *fast[1:], step=step, **OPTIONS[opt])
        reference.lamb_step(*ref[:1], g, *ref[1:], step=step, **OPTIONS[opt])
    for k, (a, b) in enumerate(zip(fast, ref)):
        assert_bitwise(a, b, f"LAMB {opt} {np.dtype(dtype)} n={n} isa={isa} array {k}")


@pytest.mark.parametrize("nthreads", [1, 2, 3])
def test_norms_the_same_for_any_thread_count(threads, nthreads):
    """Many blocks reduced in parallel (grain 1 forces threads), summed per tensor in block
    order: bitwise the reference whatever the thread count."""
    from fastopt._backend import native
    threads(nthreads)
    old = native.set_parallel_grain(1) if fastopt.config()["backend"] == "native" else None
    try:
        rng = np.random.default_rng(nthreads)
        sizes = [0, 1, 8193, 50_000, 17]
        params = [rng.standard_normal(n).astype(np.float32) for n in sizes]
        ms = [np.zeros(n, np.float32) for n in sizes]
        vs = [np.zeros(n, np.float32) for n in sizes]
        fast, ref = snapshot(params + ms + vs), snapshot(params + ms + vs)
        grads = [rng.standard_normal(n).astype(np.float32) for n in sizes]
        grads[4] = None
        for step in (1, 2):
            kernels.lamb(fast[:5], grads, fast[5:10], fast[10:], [step] * 5, lr=0.1)
            reference.lamb(ref[:5], grads, ref[5:10], ref[10:], [step] * 5, lr=0.1)
        for k, (a, b) in enumerate(zip(fast, ref)):
            assert_bitwise(a, b, f"array {k}, {nthreads} threads")
    finally:
        if old is not None:
            native.set_parallel_grain(old)


def test_trust_ratio_is_per_tensor_and_falls_back_to_lr():
    """Two tensors with the same gradients but params of different scale move by different
    amounts (each its own ratio); a zero param has |p| = 0: the step is lr * u."""
    g = np.array([1.0, -1.0, 0.5])
    a, b, z = np.array([1.0, 2.0, 3.0]), np.array([10.0, 20.0, 30.0]), np.zeros(3)
    opt = fastopt.LAMB([a, b, z], lr=0.1, weight_decay=0.0, use_nvlamb=True)
    opt.step([g, g, g])
    u = g / (np.abs(g) + 1e-6)           # step 1: m_hat = g, v_hat = g^2
    np.testing.assert_allclose(a, [1.0, 2.0, 3.0] - 0.1 * np.linalg.norm([1, 2, 3])
                               / np.linalg.norm(u) * u, rtol=1e-14)
    np.testing.assert_allclose(b, [10.0, 20.0, 30.0] - 0.1 * np.linalg.norm([10, 20, 30])
                               / np.linalg.norm(u) * u, rtol=1e-14)
    np.testing.assert_allclose(z, -0.1 * u, rtol=1e-14)


def test_optimizer_against_the_reference_and_checkpoint_round_trip():
    rng = np.random.default_rng(8)
    shapes = [(6, 5), (33,), ()]
    params = [rng.standard_normal(s) for s in shapes]
    mirror = snapshot(params)
    opt = fastopt.LAMB([{"params": params[:2]}, {"params": params[2:], "weight_decay": 0.0,
                                                  "l1": 0.01}], lr=0.02)
    state: list = [None] * 3
    steps = [0] * 3
    grads_seq = [[rng.standard_normal(s) for s in shapes] for _ in range(12)]
    for k, grads in enumerate(grads_seq):
        if k % 4 == 1:
            grads = [None] + grads[1:]
        opt.step(grads)
        for i, (p, g) in enumerate(zip(mirror, grads)):
            if g is None:
                continue
            state[i] = state[i] or [np.zeros_like(p), np.zeros_like(p)]
            steps[i] += 1
            reference.lamb_step(p, g, *state[i], step=steps[i], lr=0.02,
                                weight_decay=0.0 if i == 2 else 0.01,
                                l1=0.01 if i == 2 else 0.0)
    for i in range(3):
        assert_bitwise(params[i], mirror[i], f"param {i}")
        assert_bitwise(opt.state[i]["exp_avg"], state[i][0], f"exp_avg {i}")
        assert int(opt.state[i]["step"]) == steps[i]
    # resume from a checkpoint: bitwise the uninterrupted run
    b = [x.copy() for x in params]
    resumed = fastopt.LAMB([{"params": b[:2]}, {"params": b[2:], "weight_decay": 0.0,
                                                 "l1": 0.01}], lr=0.02)
    resumed.load_state_dict(opt.state_dict())
    for grads in grads_seq[:3]:
        opt.step(grads)
        resumed.step(grads)
    for x, y in zip(b, params):
        assert_bitwise(x, y, "resumed")


def test_bad_input_refused_with_nothing_modified():
    p, g, m, v = np.ones(4), np.ones(4), np.zeros(4), np.zeros(4)
    before = snapshot([p, m, v])
    with pytest.raises(ValueError, match="Invalid beta parameter at index 1"):
        kernels.lamb_step(p, g, m, v, step=1, beta2=1.0)
    with pytest.raises(ValueError, match="Invalid epsilon value"):
        kernels.lamb_step(p, g, m, v, step=1, eps=-1.0)
    with pytest.raises(TypeError, match="bias_correction"):
        kernels.lamb_step(p, g, m, v, step=1, bias_correction=1)
    with pytest.raises(ValueError, match="shape"):
        kernels.lamb_step(p, g, m, np.zeros(5), step=1)
    with pytest.raises(ValueError, match="overlap|same array"):
        kernels.lamb_step(p, g, m, m, step=1)
    for a, b in zip([p, m, v], before):
        assert_bitwise(a, b, "after a refused call")
    with pytest.raises(ValueError, match="Invalid weight_decay value"):
        fastopt.LAMB([np.zeros(2)], weight_decay=-0.1)


def test_torch_frontend_native_equals_numpy_and_its_torch_fallback():
    torch = pytest.importorskip("torch", reason="optional: pip install torch==2.13.0")
    import fastopt.torch as ft
    for dtype in (np.float32, np.float64):
        rng = np.random.default_rng(2)
        start = [rng.standard_normal(s).astype(dtype) for s in ((20, 3), (9000,))]
        native_t = [torch.tensor(x.copy(), requires_grad=True) for x in start]
        slow_t = [torch.tensor(x.copy(), requires_grad=True) for x in start]
        plain = [x.copy() for x in start]
        kw = dict(lr=1e-2, weight_decay=0.05)
        on, of = ft.LAMB(native_t, **kw), ft.LAMB(slow_t, fused=False, **kw)
        op = fastopt.LAMB(plain, **kw)
        for _ in range(6):
            grads = [rng.standard_normal(x.shape).astype(dtype) for x in start]
            for ts in (native_t, slow_t):
                for t, g in zip(ts, grads):
                    t.grad = torch.from_numpy(g.copy())
            on.step()
            of.step()
            op.step(grads)
        tol = 1e-12 if dtype == np.float64 else 1e-5
        for t, s, p in zip(native_t, slow_t, plain):
            assert_bitwise(t.detach().numpy(), p, "fastopt.torch native vs fastopt.LAMB")
            np.testing.assert_allclose(s.detach().numpy(), p, rtol=tol, atol=tol)
        assert sorted(on.state[native_t[0]]) == ["exp_avg", "exp_avg_sq", "step"]
    with pytest.raises(ValueError, match="Invalid beta parameter at index 0"):
        ft.LAMB([torch.zeros(2, requires_grad=True)], betas=(1.0, 0.9))
