"""SparseAdam (issue 14): row-sparse gradients, only the touched rows of params and moments
updated. The NumPy frontend and fastopt.torch against torch.optim.SparseAdam step by step,
the native entry against its NumPy twin bitwise (and for any thread count), state dicts both
ways with torch.optim, and bad input refused with nothing modified."""
from __future__ import annotations

import copy

import numpy as np
import pytest
from helpers import DTYPES, assert_bitwise, snapshot

import fastopt
from fastopt import functional, reference

SHAPES = [(10,), (13, 3), (6, 4, 5), (1, 7), (40, 33)]


def _tol(dtype):
    # float32: a few roundings of O(lr) updates per step; float64: ~1e-12 relative
    return dict(rtol=2e-6, atol=2e-7) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-14)


def _grads(rng, shape, dtype, steps):
    """Per step (indices with repeats, values); an empty one and a None one included."""
    out = []
    for s in range(steps):
        if s == 2:
            out.append(None)
            continue
        k = 0 if s == 3 else int(rng.integers(1, 2 * shape[0] + 2))
        idx = rng.integers(0, shape[0], k).astype(np.int64)
        out.append((idx, rng.standard_normal((k,) + shape[1:]).astype(dtype)))
    return out


@pytest.mark.parametrize("maximize", [False, True])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_matches_torch_step_by_step(dtype, shape, maximize):
    torch = pytest.importorskip("torch", reason="optional: pip install torch==2.13.0")
    rng = np.random.default_rng(len(shape) * 7 + shape[0])
    p = rng.standard_normal(shape).astype(dtype)
    t = torch.tensor(p.copy(), requires_grad=True)
    kw = dict(lr=0.05, betas=(0.8, 0.95), eps=1e-6, maximize=maximize)
    ours, theirs = fastopt.SparseAdam([p], **kw), torch.optim.SparseAdam([t], **kw)
    for s, g in enumerate(_grads(rng, shape, dtype, 7)):
        t.grad = None if g is None else torch.sparse_coo_tensor(
            torch.from_numpy(g[0])[None], torch.from_numpy(g[1]), shape)
        ours.step([g])
        theirs.step()
        np.testing.assert_allclose(p, t.detach().numpy(), **_tol(dtype), err_msg=f"step {s}")
        st, ts = ours.state.get(0), theirs.state.get(t)
        assert (st is None) == (ts is None)
        if st is not None:
            assert st["step"] == ts["step"]
            for key in ("exp_avg", "exp_avg_sq"):
                np.testing.assert_allclose(st[key], ts[key].numpy(), **_tol(dtype),
                                           err_msg=f"{key} step {s}")


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_native_equals_reference_and_leaves_other_rows(dtype):
    rng = np.random.default_rng(1)
    shapes = [(50, 9), (17,), (8, 2, 3)]
    params = [rng.standard_normal(s).astype(dtype) for s in shapes]
    ms = [(rng.standard_normal(s) * 0.1).astype(dtype) for s in shapes]
    vs = [np.abs(rng.standard_normal(s) * 0.01).astype(dtype) for s in shapes]
    fast, ref = snapshot(params + ms + vs), snapshot(params + ms + vs)
    before = snapshot(params + ms + vs)
    touched = []
    for step in (1, 2, 5):
        idx, val = [], []
        for s in shapes:
            i = rng.integers(0, s[0], s[0] // 2 + 1)
            i, v = reference.coalesce(i, rng.standard_normal((i.size,) + s[1:]).astype(dtype))
            idx.append(i)
            val.append(v)
        touched.append(idx)
        functional.sparse_adam(fast[:3], idx, val, fast[3:6], fast[6:], [step] * 3, lr=0.1,
                               maximize=step == 2)
        for k in range(3):
            reference.sparse_adam_step(ref[k], idx[k], val[k], ref[3 + k], ref[6 + k],
                                       step=step, lr=0.1, beta1=0.9, beta2=0.999, eps=1e-8,
                                       maximize=step == 2)
    for k, (a, b) in enumerate(zip(fast, ref)):
        assert_bitwise(a, b, f"array {k}")
    for k in range(9):
        rows = np.setdiff1d(np.arange(shapes[k % 3][0]),
                            np.concatenate([t[k % 3] for t in touched]))
        assert rows.size > 0
        assert_bitwise(fast[k][rows], before[k][rows], f"untouched rows of array {k}")


@pytest.mark.parametrize("nthreads", [1, 2, 3])
def test_the_same_for_any_thread_count(threads, nthreads):
    threads(nthreads)
    rng = np.random.default_rng(5)
    p = rng.standard_normal((3000, 16)).astype(np.float32)
    m, v = np.zeros_like(p), np.zeros_like(p)
    ref = snapshot([p, m, v])
    for step in (1, 2, 3):
        idx, val = reference.coalesce(rng.integers(0, 3000, 2500),
                                      rng.standard_normal((2500, 16)).astype(np.float32))
        functional.sparse_adam([p], [idx], [val], [m], [v], [step], lr=0.01)
        reference.sparse_adam_step(ref[0], idx, val, ref[1], ref[2], step=step, lr=0.01)
    for k, (a, b) in enumerate(zip([p, m, v], ref)):
        assert_bitwise(a, b, f"array {k}, {nthreads} threads")


def test_duplicates_are_summed_in_order_of_appearance():
    idx, val = reference.coalesce(np.array([3, 1, 3, 3]),
                                  np.array([[1e8], [2.0], [1.0], [-1e8]], np.float32))
    assert idx.tolist() == [1, 3]
    assert val[:, 0].tolist() == [2.0, float((np.float32(1e8) + 1) - np.float32(1e8))]


def test_bad_input_refused_with_nothing_modified():
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((5, 2)), rng.standard_normal((4,))
    opt = fastopt.SparseAdam([a, b])
    opt.step([(np.array([0]), np.ones((1, 2))), (np.array([1]), np.ones(1))])
    before, state = snapshot([a, b]), {i: dict(s) for i, s in opt.state.items()}
    good = (np.array([1, 2]), np.ones((2, 2)))
    cases = [
        ((np.array([0, 4]), np.ones(2)), IndexError, r"grads\[1\]: index 4 at position 1"),
        ((np.array([-1]), np.ones(1)), IndexError, r"index -1 at position 0 is out of range"),
        ((np.array([0]), np.ones((1, 2))), ValueError, r"values must be an array of shape"),
        ((np.array([0]), np.ones(1, np.float32)), ValueError, "dtype float64"),
        ((np.array([0.0]), np.ones(1)), TypeError, "integer array"),
        (np.ones(4), TypeError, r"pair \(indices, values\)"),
    ]
    for bad, exc, msg in cases:
        with pytest.raises(exc, match=msg):
            opt.step([good, bad])
        assert_bitwise(a, before[0], f"{msg}: a")
        assert_bitwise(b, before[1], f"{msg}: b")
        assert {i: s["step"] for i, s in opt.state.items()} == {0: 1, 1: 1}
        for i, s in opt.state.items():
            for key in ("exp_avg", "exp_avg_sq"):
                assert_bitwise(s[key], state[i][key], f"{msg}: state {i} {key}")
    fresh = fastopt.SparseAdam([np.zeros((3, 2)), np.zeros(2)])
    with pytest.raises(IndexError):
        fresh.step([(np.array([0]), np.ones((1, 2))), (np.array([2]), np.ones(1))])
    assert fresh.state == {}


def test_functional_and_native_entry_check_every_index_first():
    p, m, v = np.zeros((4, 3)), np.zeros((4, 3)), np.zeros((4, 3))
    q, mq, vq = np.zeros(6), np.zeros(6), np.zeros(6)
    ok = (np.array([0, 3]), np.ones((2, 3)))
    for idx, exc, msg in [(np.array([1, 6]), IndexError, r"indices\[1\]: index 6 at position 1"),
                          (np.array([2, 2]), ValueError, "increasing order"),
                          (np.array([3, 1]), ValueError, "increasing order")]:
        with pytest.raises(exc, match=msg):
            functional.sparse_adam([p, q], [ok[0], idx], [ok[1], np.ones(2)], [m, mq], [v, vq],
                                   [1, 1])
        assert not (p.any() or m.any() or v.any() or q.any() or mq.any() or vq.any())
    from fastopt._backend import native
    if not hasattr(native, "sparse_adam"):
        pytest.skip("the NumPy backend has no native entry")
    with pytest.raises(IndexError, match=r"indices\[1\]: index 9 at position 0"):
        native.sparse_adam([p, q], [ok[0], np.array([9])], [ok[1], np.ones(1)], [m, mq],
                           [v, vq], np.array([-0.1, -0.1]), 0.9, 0.999, 1e-8, False, 1)
    with pytest.raises(ValueError, match=r"values\[0\]: expected shape \(2, 3\)"):
        native.sparse_adam([p], [ok[0]], [np.ones((2, 2))], [m], [v], np.array([-0.1]), 0.9,
                           0.999, 1e-8, False, 1)
    assert not (p.any() or m.any() or v.any() or q.any())
    with pytest.raises(ValueError, match="same array"):
        functional.sparse_adam([p], [ok[0]], [ok[1]], [p], [v], [1])


def test_hyperparameters_checked_as_torch():
    p = [np.zeros((2, 2))]
    for kw, msg in [(dict(lr=0.0), "Invalid learning rate: 0.0"),
                    (dict(eps=0.0), "Invalid epsilon value: 0.0"),
                    (dict(betas=(1.0, 0.9)), "Invalid beta parameter at index 0"),
                    (dict(betas=(0.9, -0.1)), "Invalid beta parameter at index 1")]:
        with pytest.raises(ValueError, match=msg):
            fastopt.SparseAdam(p, **kw)


def test_state_dict_roundtrip_resumes_bitwise():
    rng = np.random.default_rng(4)
    p0 = rng.standard_normal((9, 2))
    gs = [(rng.integers(0, 9, 5), rng.standard_normal((5, 2))) for _ in range(6)]
    a = p0.copy()
    oa = fastopt.SparseAdam([a], lr=0.1)
    for g in gs:
        oa.step([g])
    b = p0.copy()
    ob = fastopt.SparseAdam([b], lr=0.1)
    for g in gs[:3]:
        ob.step([g])
    oc = fastopt.SparseAdam([b], lr=0.5)
    oc.load_state_dict(ob.state_dict())
    assert oc.param_groups[0]["lr"] == 0.1
    for g in gs[3:]:
        oc.step([g])
    assert_bitwise(b, a, "resumed")
    sd = oc.state_dict()
    sd["state"][0]["exp_avg"] = np.zeros(3)
    with pytest.raises(ValueError, match=r"state\[0\]\['exp_avg'\]: expected shape \(9, 2\)"):
        oc.load_state_dict(sd)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_torch_frontend_against_torch_and_state_dicts_both_ways(dtype):
    torch = pytest.importorskip("torch", reason="optional: pip install torch==2.13.0")
    import fastopt.torch as ft
    tdt = getattr(torch, dtype)
    torch.manual_seed(0)
    embs = [torch.nn.Embedding(30, 5, sparse=True).to(tdt) for _ in range(3)]
    for e in embs[1:]:
        e.load_state_dict(embs[0].state_dict())
    ours = ft.SparseAdam(embs[0].parameters(), lr=0.02, maximize=True)
    theirs = torch.optim.SparseAdam(embs[1].parameters(), lr=0.02, maximize=True)
    tol = _tol(np.dtype(dtype))

    def step(emb, opt, x):
        opt.zero_grad()
        emb(x).square().sum().backward()
        opt.step()

    xs = [torch.randint(0, 30, (12,)) for _ in range(8)]
    for x in xs[:4]:
        step(embs[0], ours, x)
        step(embs[1], theirs, x)
        np.testing.assert_allclose(embs[0].weight.detach().numpy(),
                                   embs[1].weight.detach().numpy(), **tol)
    st, ts = ours.state[embs[0].weight], theirs.state[embs[1].weight]
    assert set(st) == set(ts) == {"step", "exp_avg", "exp_avg_sq"}
    assert type(st["step"]) is int and st["step"] == ts["step"] == 4
    # ours -> torch.optim and torch.optim -> ours: both continue on the same trajectory
    embs[2].load_state_dict(embs[0].state_dict())
    cont_torch = torch.optim.SparseAdam(embs[2].parameters(), lr=0.02, maximize=True)
    cont_torch.load_state_dict(copy.deepcopy(ours.state_dict()))   # (torch's are views)
    ours2 = ft.SparseAdam(embs[1].parameters(), lr=0.02, maximize=True)
    ours2.load_state_dict(copy.deepcopy(theirs.state_dict()))
    for x in xs[4:]:
        step(embs[0], ours, x)
        step(embs[2], cont_torch, x)
        step(embs[1], ours2, x)
    np.testing.assert_allclose(embs[0].weight.detach().numpy(),
                               embs[2].weight.detach().numpy(), **tol)
    np.testing.assert_allclose(embs[1].weight.detach().numpy(),
                               embs[2].weight.detach().numpy(), **tol)
    w = torch.zeros(3, 2, dtype=tdt, requires_grad=True)
    opt = ft.SparseAdam([w])
    w.grad = torch.ones(3, 2, dtype=tdt)
    with pytest.raises(RuntimeError, match="does not support dense gradients, please consider "
                                           "Adam instead"):
        opt.step()
    assert len(opt.state) == 0
    w.grad = torch.sparse_coo_tensor(torch.tensor([[5]]), torch.ones(1, 2, dtype=tdt), (3, 2))
    with pytest.raises(IndexError, match="index 5 at position 0"):
        opt.step()
    assert len(opt.state) == 0 and not w.detach().any()


def test_writes_nothing_outside_the_arrays():
    """Params and moments as windows of larger buffers whose guard regions hold a sentinel:
    after steps touching the first and last rows, every guard is intact."""
    rng = np.random.default_rng(9)
    shape, guard = (37, 5), 64
    bufs = [np.full(guard * 2 + 37 * 5, 7.25) for _ in range(3)]
    p, m, v = (b[guard:guard + 185].reshape(shape) for b in bufs)
    p[...] = rng.standard_normal(shape)
    opt = fastopt.SparseAdam([p], lr=0.1)
    opt.state[0] = {"step": 0, "exp_avg": m, "exp_avg_sq": v}
    m[...] = 0.0
    v[...] = 0.0
    for _ in range(3):
        idx = np.array([0, 36, 36, 5])
        opt.step([(idx, rng.standard_normal((4, 5)))])
    for b in bufs:
        assert (b[:guard] == 7.25).all() and (b[-guard:] == 7.25).all()
    assert opt.state[0]["step"] == 3 and p[0].any() and m[36].any()
