"""fastopt.torch on float16 and bfloat16 params: the storage options (master weights, rounding,
state dtype, seed) of fastopt.Optimizer on torch tensors, in the same single native call.

Oracles: the NumPy frontend on the same values (both frontends describe their arrays to one
driver, so params and states must agree bit for bit, stochastic rounding's draws included);
torch.optim itself for torch's default storage (a bfloat16 state rounded once per stored value
where torch rounds after every operation: within one bfloat16 step after one step); a float32
run for master weights (the master is updated by the float32 body: bitwise).
"""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="fastopt.torch needs torch")
ml_dtypes = pytest.importorskip("ml_dtypes", reason="the NumPy side of these comparisons "
                                "needs ml_dtypes' bfloat16")

import fastopt  # noqa: E402
import fastopt.torch as ft  # noqa: E402
from fastopt.torch import _adapter  # noqa: E402

BF16 = np.dtype(ml_dtypes.bfloat16)
NP = {torch.bfloat16: BF16, torch.float16: np.dtype(np.float16),
      torch.float32: np.dtype(np.float32)}
NATIVE = fastopt.config()["backend"] == "native"

RULES = {"SGD": dict(lr=0.05, momentum=0.9, weight_decay=0.01), "Adam": dict(lr=1e-2),
         "AdamW": dict(lr=1e-2, amsgrad=True), "RMSprop": dict(lr=1e-2, centered=True,
                                                               momentum=0.5),
         "Adagrad": dict(lr=0.05), "Adamax": dict(lr=1e-2), "NAdam": dict(lr=1e-2),
         "RAdam": dict(lr=1e-2), "Lion": dict(lr=1e-3), "Adadelta": dict(),
         "Rprop": dict(), "ASGD": dict(lr=1e-2)}
STORAGES = {
    "bf16 (torch default)": (torch.bfloat16, dict()),
    "bf16+master": (torch.bfloat16, dict(master_weights=True)),
    "bf16+f32 states": (torch.bfloat16, dict(state_dtype=torch.float32)),
    "bf16 stochastic": (torch.bfloat16, dict(rounding="stochastic", seed=5)),
    "bf16 kahan": (torch.bfloat16, dict(rounding="kahan")),
    "f16+master": (torch.float16, dict(master_weights=True)),
    "f16 stochastic": (torch.float16, dict(rounding="stochastic")),
    "f32+bf16 states": (torch.float32, dict(state_dtype=torch.bfloat16)),
}
SIZES = [(5,), (257,), (30, 100)]


def _numpy_kw(kw):
    out = dict(kw)
    if "state_dtype" in out:
        out["state_dtype"] = NP[out["state_dtype"]]
    return out


def _bits(x):
    """The bits of a tensor or array (16- or 32-bit elements) as an unsigned NumPy array."""
    if isinstance(x, torch.Tensor):
        x = x.detach()
        width = x.element_size()
        x = x.view({2: torch.int16, 4: torch.int32, 8: torch.int64}[width]).numpy()
    x = np.ascontiguousarray(x)
    return x.view({2: np.uint16, 4: np.uint32, 8: np.uint64}[x.itemsize])


def _grads(rng, dtype, steps):
    """Per step, per param, float32 values of gradients (None: that param has none)."""
    out = []
    for t in range(steps):
        out.append([None if (t == 2 and i == 1) else
                    rng.standard_normal(s).astype(np.float32) for i, s in enumerate(SIZES)])
    return out


def _pair(name, dtype, kw, steps=4, seed=0):
    """The same training on fastopt.torch and on the NumPy frontend: two param groups (so
    that stochastic rounding's ids run over groups), a param without a gradient on step 2."""
    rng = np.random.default_rng(seed)
    init = [rng.standard_normal(s).astype(np.float32) for s in SIZES]
    tp = [torch.nn.Parameter(torch.from_numpy(x).to(dtype)) for x in init]
    npp = [_bits(p).copy().view(NP[dtype]) for p in tp]
    hyper = RULES[name]
    to = getattr(ft, name)([{"params": tp[:2]}, {"params": tp[2:], "lr": 2e-3}],
                           **hyper, **kw)
    no = getattr(fastopt, name)([{"params": npp[:2]}, {"params": npp[2:], "lr": 2e-3}],
                                **hyper, **_numpy_kw(kw))
    for gs in _grads(rng, dtype, steps):
        for p, g in zip(tp, gs):
            p.grad = None if g is None else torch.from_numpy(g).to(dtype)
        to.step()
        no.step([None if g is None else _bits(p.grad).copy().view(NP[dtype])
                 for p, g in zip(tp, gs)])
    return tp, to, npp, no


@pytest.mark.parametrize("storage", STORAGES)
@pytest.mark.parametrize("name", RULES)
def test_torch_equals_the_numpy_frontend_bitwise(name, storage):
    dtype, kw = STORAGES[storage]
    tp, to, npp, no = _pair(name, dtype, kw)
    for i, (a, b) in enumerate(zip(tp, npp)):
        assert np.array_equal(_bits(a), _bits(b)), f"param {i}"
        tstate, nstate = to.state[a], no.state[i]
        for key, buf in tstate.items():
            if buf.dim() == 0:
                continue
            assert key in nstate, key
            assert buf.dtype in (torch.float32, torch.bfloat16, torch.float16)
            assert np.dtype(nstate[key].dtype).itemsize == buf.element_size(), key
            assert np.array_equal(_bits(buf), _bits(nstate[key])), f"state[{i}][{key!r}]"
        if "step" in tstate and name != "SGD":
            assert int(tstate["step"]) == int(nstate["step"])


def test_state_dtypes_follow_the_storage_options():
    p = torch.nn.Parameter(torch.randn(8, dtype=torch.bfloat16))
    q = torch.nn.Parameter(torch.randn(8))
    for kw, want in [(dict(), torch.bfloat16), (dict(master_weights=True), torch.float32),
                     (dict(state_dtype=torch.float32), torch.float32)]:
        opt = ft.Adam([p, q], **kw)
        p.grad, q.grad = torch.ones_like(p), torch.ones_like(q)
        opt.step()
        st = opt.state[p]
        assert st["exp_avg"].dtype == st["exp_avg_sq"].dtype == want
        assert ("master_param" in st) == bool(kw.get("master_weights"))
        assert "master_param" not in opt.state[q]                 # float32: no copy
        assert opt.state[q]["exp_avg"].dtype == torch.float32
    opt = ft.Adam([p], rounding="kahan")
    opt.step()
    assert opt.state[p]["kahan_comp"].dtype == torch.bfloat16


@pytest.mark.parametrize("name,kw", [("Adam", dict(lr=1e-2)), ("AdamW", dict(lr=1e-2)),
                                     ("SGD", dict(lr=0.1, momentum=0.9)),
                                     ("RMSprop", dict(lr=1e-2)), ("Adagrad", dict(lr=0.1)),
                                     ("Adamax", dict(lr=1e-2)), ("RAdam", dict(lr=1e-2))])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "f16"])
def test_default_storage_is_torchs_rule_rounded_once(name, kw, dtype):
    # torch keeps the states in the param's dtype and rounds after every operation; fastopt
    # computes in float32 and rounds each stored value once. Against torch's rule run in
    # float64 on the same 16-bit values, fastopt's param is within one step of the 16-bit type
    # (plus float32's rounding of the computation, at most 2^-22 of the param's magnitude), it
    # differs from torch by no more than torch's own error plus that, and it is on average
    # closer to the float64 result than torch's.
    torch.manual_seed(3)
    a = torch.nn.Parameter(torch.randn(4000).to(dtype))
    b = torch.nn.Parameter(a.detach().clone())
    c = torch.nn.Parameter(a.detach().double())
    oa, ob = getattr(ft, name)([a], **kw), getattr(torch.optim, name)([b], **kw)
    oc = getattr(torch.optim, name)([c], **kw)
    for _ in range(2):
        a.grad = torch.randn(4000).to(dtype)
        b.grad, c.grad = a.grad.clone(), a.grad.double()
        start = c.detach().abs()
        oa.step()
        ob.step()
        oc.step()
        x, y, ref = a.detach().double(), b.detach().double(), c.detach().clone()
        mant, tiny = (7, 2.0 ** -133) if dtype == torch.bfloat16 else (10, 2.0 ** -24)
        ulp = torch.clamp(2.0 ** (torch.floor(torch.log2(ref.abs().clamp_min(tiny))) - mant),
                          min=tiny)
        tol = ulp + 2.0 ** -22 * start
        assert bool(((x - ref).abs() <= tol).all())
        assert bool(((x - y).abs() <= (y - ref).abs() + tol).all())
        assert float((x - ref).abs().mean()) <= float((y - ref).abs().mean())
        with torch.no_grad():       # the next step from the same 16-bit values, all three
            b.copy_(a)
            c.copy_(a.double())
            for key, v in oa.state[a].items():
                if v.dim():
                    ob.state[b][key].copy_(v)
                    oc.state[c][key].copy_(v.double())
    assert oa.state[a][next(k for k in ob.state[b] if k != "step")].dtype == dtype


@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "NAdam",
                                  "Lion", "ASGD"])
def test_master_weights_follow_the_float32_run_exactly(name):
    torch.manual_seed(4)
    kw = {"SGD": dict(lr=0.01, momentum=0.9), "Lion": dict(lr=1e-3)}.get(name, {})
    p16 = [torch.nn.Parameter(torch.randn(n).bfloat16()) for n in (3, 300)]
    p32 = [torch.nn.Parameter(p.detach().float()) for p in p16]
    o16 = getattr(ft, name)(p16, master_weights=True, **kw)
    o32 = getattr(ft, name)(p32, **kw)
    for _ in range(4):
        for a, b in zip(p16, p32):
            a.grad = torch.randn(a.shape).bfloat16()
            b.grad = a.grad.float()
        o16.step()
        o32.step()
    for a, b in zip(p16, p32):
        master = o16.state[a]["master_param"]
        assert master.dtype == torch.float32 and torch.equal(master, b.detach())
        assert torch.equal(a.detach(), b.detach().bfloat16())    # param = nearest(master)


def _adam_run(kw, steps, params=None, opt=None, seed=1):
    gen = torch.Generator().manual_seed(seed)
    if params is None:
        params = [torch.nn.Parameter(torch.randn(n, generator=gen).bfloat16())
                  for n in (7, 500)]
        opt = ft.AdamW(params, lr=1e-2, **kw)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen).bfloat16()
        opt.step()
    return params, opt


@pytest.mark.parametrize("kw", [dict(master_weights=True), dict(state_dtype=torch.float32),
                                dict(rounding="stochastic", seed=3),
                                dict(rounding="kahan")])
def test_state_dict_round_trip_keeps_storage_dtypes_and_resumes_bitwise(kw, tmp_path):
    params, opt = _adam_run(kw, 3)
    torch.save(opt.state_dict(), tmp_path / "opt.pt")
    saved = [p.detach().clone() for p in params]
    _adam_run(kw, 3, params, opt, seed=2)
    again = [torch.nn.Parameter(s.clone()) for s in saved]
    opt2 = ft.AdamW(again, lr=1e-2, **kw)
    opt2.load_state_dict(torch.load(tmp_path / "opt.pt", weights_only=True))
    for key in ("exp_avg", "master_param"):
        if key in opt.state[params[1]]:
            assert opt2.state[again[1]][key].dtype == opt.state[params[1]][key].dtype
    _adam_run(kw, 3, again, opt2, seed=2)
    for a, b in zip(params, again):
        assert torch.equal(a, b)
        for key, v in opt.state[a].items():
            assert torch.equal(v, opt2.state[b][key]), key


def test_state_dicts_interchange_with_torch_optim():
    # torch.optim continues from fastopt's default-storage state (same keys and dtypes) ...
    params, opt = _adam_run({}, 2)
    p2 = [torch.nn.Parameter(p.detach().clone()) for p in params]
    theirs = torch.optim.AdamW(p2, lr=1e-2)
    theirs.load_state_dict(opt.state_dict())
    assert all(theirs.state[q]["exp_avg"].dtype == torch.bfloat16 for q in p2)
    # ... and fastopt with master weights continues from torch's own (whose groups have no
    # storage keys: the optimizer's defaults apply): the master is made from the param, the
    # states widened to float32
    p3 = [torch.nn.Parameter(p.detach().clone()) for p in params]
    plain = torch.optim.AdamW(p3, lr=1e-2)
    for _ in range(2):
        for q in p3:
            q.grad = torch.ones_like(q)
        plain.step()
    sd = plain.state_dict()
    p2 = p3
    mine = ft.AdamW(p2, lr=1e-2, master_weights=True)
    mine.load_state_dict(sd)
    for q in p2:
        q.grad = torch.ones_like(q)
    mine.step()
    st = mine.state[p2[1]]
    assert st["master_param"].dtype == st["exp_avg"].dtype == torch.float32
    assert int(st["step"]) == 3


@pytest.mark.parametrize("kw", [dict(master_weights=True), dict(rounding="kahan"),
                                dict(state_dtype=torch.float32, rounding="stochastic")])
def test_found_inf_skips_everything_on_the_first_step_too(kw):
    p = torch.nn.Parameter(torch.randn(300).bfloat16())
    before = p.detach().clone()
    opt = ft.Adam([p], **kw)
    p.grad = torch.randn(300).bfloat16()
    opt.grad_scale, opt.found_inf = torch.tensor(1024.0), torch.tensor(1.0)
    opt.step()
    assert torch.equal(p.detach(), before) and not opt.state[p]
    opt.found_inf = torch.tensor(0.0)
    opt.step()
    snap = {k: v.clone() for k, v in opt.state[p].items()}
    after = p.detach().clone()
    opt.found_inf = torch.tensor(1.0)
    opt.step()
    assert torch.equal(p.detach(), after)
    assert all(torch.equal(v, snap[k]) for k, v in opt.state[p].items())


def test_grad_scale_divides_inside_the_step():
    a = torch.nn.Parameter(torch.randn(300).bfloat16())
    b = torch.nn.Parameter(a.detach().clone())
    oa, ob = ft.Adam([a], master_weights=True), ft.Adam([b], master_weights=True)
    g = torch.randn(300).bfloat16()
    a.grad, b.grad = g * 256, g.clone()                 # a power of two: exact
    oa.grad_scale, oa.found_inf = torch.tensor(256.0), torch.tensor(0.0)
    oa.step()
    ob.step()
    assert torch.equal(a, b)
    assert torch.equal(oa.state[a]["master_param"], ob.state[b]["master_param"])


@pytest.mark.skipif(not NATIVE, reason="the thread count of the native driver")
def test_stochastic_rounding_is_the_same_for_any_thread_count():
    K = _adapter._native
    out = []
    old = K.get_parallel_grain()
    try:
        for nt, grain in [(1, None), (2, None), (2, 64)]:
            fastopt.set_num_threads(nt)
            if grain:
                K.set_parallel_grain(grain)
            params, opt = _adam_run(dict(rounding="stochastic", state_dtype=torch.bfloat16,
                                         seed=8), 3)
            out.append([_bits(p).copy() for p in params]
                       + [_bits(opt.state[p]["exp_avg_sq"]).copy() for p in params])
            K.set_parallel_grain(old)
    finally:
        K.set_parallel_grain(old)
        fastopt.set_num_threads(None)
    for other in out[1:]:
        assert all(np.array_equal(a, b) for a, b in zip(out[0], other))
    params, _ = _adam_run(dict(rounding="stochastic", state_dtype=torch.bfloat16, seed=9), 3)
    assert not np.array_equal(_bits(params[1]), out[0][1])


def test_stagnation_of_small_sgd_updates_in_bfloat16():
    # 1,000 updates of -1e-4 from 1.0: float32 ends at 0.89998, nearest stays at 1.0
    def descend(rounding):
        p = torch.nn.Parameter(torch.ones(2000, dtype=torch.bfloat16))
        opt = ft.SGD([p], lr=1e-4, rounding=rounding, seed=1)
        for _ in range(1000):
            p.grad = torch.ones_like(p)
            opt.step()
        return p.detach().double(), opt

    near, _ = descend("nearest")
    assert bool((near == 1.0).all())
    sr, opt = descend("stochastic")
    assert int(opt.state[next(iter(opt.state))]["step"]) == 1000    # the key's step count
    assert abs(float(sr.mean()) - 0.89998) < 0.005 * 0.89998
    kahan, opt = descend("kahan")
    carried = kahan + next(iter(opt.state.values()))["kahan_comp"].double()
    assert bool(((carried - 0.89998).abs() < 0.001 * 0.89998).all())


@pytest.mark.skipif(not NATIVE or not _adapter.FAST, reason="the native fast fill")
def test_16_bit_steps_take_the_fast_fill_in_one_call(monkeypatch):
    calls = []
    real = _adapter._execute
    monkeypatch.setattr(_adapter, "_execute", lambda n, t, call: calls.append(n) or
                        real(n, t, call))
    ps = [torch.nn.Parameter(torch.randn(50).to(dt)) for dt in
          (torch.bfloat16, torch.float16, torch.float32)]
    opt = ft.AdamW([{"params": ps[:2]}, {"params": ps[2:], "rounding": "stochastic"}],
                   master_weights=True)
    for _ in range(3):
        for p in ps:
            p.grad = torch.ones_like(p)
        opt.step()
        assert opt._fo_driver.refused is None or len(calls) == 1
    assert calls == [3, 3, 3] and opt._fo_driver.refused is None
    assert "master_param" not in opt.state[ps[2]]


@pytest.mark.parametrize("kw,err", [
    (dict(state_dtype=torch.float16), ValueError), (dict(state_dtype="bf16"), TypeError),
    (dict(master_weights=True, rounding="kahan"), ValueError),
    (dict(rounding="up"), ValueError), (dict(seed=-1), ValueError),
    (dict(master_weights=True, fused=False), ValueError)])
def test_bad_storage_options_refused_at_construction(kw, err):
    with pytest.raises(err):
        ft.Adam([torch.nn.Parameter(torch.zeros(2, dtype=torch.bfloat16))], **kw)


def test_replaced_master_of_the_wrong_dtype_is_refused_and_nothing_modified():
    p = torch.nn.Parameter(torch.randn(40).bfloat16())
    q = torch.nn.Parameter(torch.randn(40).bfloat16())
    opt = ft.Adam([p, q], master_weights=True)
    for x in (p, q):
        x.grad = torch.ones_like(x)
    opt.step()
    opt.state[q]["master_param"] = q.detach().clone()          # bfloat16, not float32
    snap = [p.detach().clone(), q.detach().clone(), opt.state[p]["exp_avg"].clone()]
    with pytest.raises(ValueError, match=r"master_param.*torch\.float32"):
        opt.step()
    assert torch.equal(p, snap[0]) and torch.equal(q, snap[1])
    assert torch.equal(opt.state[p]["exp_avg"], snap[2])
    assert int(opt.state[p]["step"]) == 1


def test_per_group_storage_options():
    a = torch.nn.Parameter(torch.randn(30).bfloat16())
    b = torch.nn.Parameter(torch.randn(30).bfloat16())
    opt = ft.Adam([{"params": [a]}, {"params": [b], "master_weights": True}])
    for x in (a, b):
        x.grad = torch.ones_like(x)
    opt.step()
    assert "master_param" not in opt.state[a] and "master_param" in opt.state[b]
    assert opt.param_groups[1]["master_weights"] is True
    assert opt.defaults["rounding"] == "nearest"


@pytest.mark.parametrize("storage", STORAGES)
def test_views_of_larger_tensors_are_written_only_inside(storage):
    # params, gradients and replaced state tensors as views into the middle of guarded
    # buffers, at odd element offsets: every guard element keeps its bits
    dtype, kw = STORAGES[storage]
    rng = np.random.default_rng(21)
    guard, holders, params = 37, [], []
    for n in (1, 255, 2049):
        buf = torch.from_numpy(rng.standard_normal(n + 2 * guard).astype(np.float32)).to(dtype)
        holders.append((buf, buf.clone()))
        params.append(torch.nn.Parameter(buf[guard:guard + n]))
    opt = ft.AdamW(params, lr=1e-2, **kw)
    grads = []
    for _ in range(3):
        for p in params:
            gbuf = torch.randn(p.numel() + 2 * guard).to(dtype)
            grads.append((gbuf, gbuf.clone()))
            p.grad = gbuf[guard:guard + p.numel()]
        opt.step()
        for p in params:            # state moved into guarded buffers of its own
            for key, v in list(opt.state[p].items()):
                if v.dim() and v.data_ptr() != 0:
                    sbuf = torch.full((v.numel() + 2 * guard,), 7.0, dtype=v.dtype)
                    sbuf[guard:guard + v.numel()] = v
                    holders.append((sbuf, sbuf.clone()))
                    opt.state[p][key] = sbuf[guard:guard + v.numel()]
    for buf, copy in holders + grads:
        assert torch.equal(buf[:guard], copy[:guard]) and torch.equal(buf[-guard:],
                                                                      copy[-guard:])
