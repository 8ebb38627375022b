"""8-bit optimizer states on fastopt.torch (state_dtype="8bit"): the NumPy frontend's block-wise
quantized states (int8/uint8 codes of the param's shape, float32 scales per 256 elements) on
torch tensors, in the same single native call.

Oracle: the NumPy frontend on the same values (both describe their arrays to one driver: params,
codes and scales must agree bit for bit); the quantization itself is tested against its NumPy
reference in tests/test_quantized.py.
"""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="fastopt.torch needs torch")

import fastopt  # noqa: E402
import fastopt.torch as ft  # noqa: E402
from fastopt.torch import _adapter  # noqa: E402

NATIVE = fastopt.config()["backend"] == "native"
RULES = {"SGD": dict(lr=0.05, momentum=0.9, weight_decay=0.01), "Adam": dict(lr=1e-2),
         "AdamW": dict(lr=1e-2, amsgrad=True),
         "RMSprop": dict(lr=1e-2, centered=True, momentum=0.5),
         "Adagrad": dict(lr=0.05, initial_accumulator_value=0.1), "Adamax": dict(lr=1e-2),
         "NAdam": dict(lr=1e-2), "RAdam": dict(lr=1e-2), "Lion": dict(lr=1e-3)}
# under 4,096 elements (float32 states), exactly one block, partial last blocks
SIZES = [(100,), (64, 64), (4097,), (3, 50, 31)]


def _bits(x):
    if isinstance(x, torch.Tensor):
        x = x.detach()
        x = x.view({1: torch.int8, 2: torch.int16, 4: torch.int32}[x.element_size()]).numpy()
    x = np.ascontiguousarray(x)
    return x.view({1: np.uint8, 2: np.uint16, 4: np.uint32}[x.itemsize])


def _pair(name, dtype=torch.float32, kw=None, steps=4, seed=0):
    kw = dict(state_dtype="8bit", **(kw or {}))
    rng = np.random.default_rng(seed)
    tp = [torch.nn.Parameter(torch.from_numpy(rng.standard_normal(s).astype(np.float32))
                             .to(dtype)) for s in SIZES]
    if dtype == torch.bfloat16:
        ml_dtypes = pytest.importorskip("ml_dtypes", reason="bfloat16 arrays need ml_dtypes")
        npp = [_bits(p).copy().view(ml_dtypes.bfloat16) for p in tp]
    else:
        npp = [p.detach().numpy().copy() for p in tp]
    to = getattr(ft, name)(tp, **RULES[name], **kw)
    no = getattr(fastopt, name)(npp, **RULES[name], **kw)
    for t in range(steps):
        gs = [None if (t == 2 and i == 1) else rng.standard_normal(s).astype(np.float32)
              for i, s in enumerate(SIZES)]
        for p, g in zip(tp, gs):
            p.grad = None if g is None else torch.from_numpy(g).to(dtype)
        to.step()
        no.step([None if g is None else
                 (_bits(p.grad).copy().view(npp[0].dtype) if dtype == torch.bfloat16
                  else g) for p, g in zip(tp, gs)])
    return tp, to, npp, no


@pytest.mark.parametrize("dtype,kw", [(torch.float32, {}), (torch.bfloat16, {}),
                                      (torch.bfloat16, dict(master_weights=True))],
                         ids=["f32", "bf16", "bf16+master"])
@pytest.mark.parametrize("name", RULES)
def test_torch_equals_the_numpy_frontend_bitwise(name, dtype, kw):
    tp, to, npp, no = _pair(name, dtype, kw)
    for i, (a, b) in enumerate(zip(tp, npp)):
        assert np.array_equal(_bits(a), _bits(b)), f"param {i}"
        for key, buf in to.state[a].items():
            if buf.dim() == 0:
                continue
            assert np.dtype(no.state[i][key].dtype).itemsize == buf.element_size(), key
            assert np.array_equal(_bits(buf), _bits(no.state[i][key])), f"state[{i}][{key!r}]"
    big = to.state[tp[1]]
    for key in ("exp_avg", "exp_avg_sq", "momentum_buffer", "sum", "square_avg", "exp_inf"):
        if key in big:
            assert big[key].dtype in (torch.int8, torch.uint8), key
            assert big[key + "_absmax"].shape == (16,), key
    small = to.state[tp[0]]
    assert all(v.dtype == torch.float32 for k, v in small.items() if v.dim())


def test_codes_maps_and_memory():
    p = torch.nn.Parameter(torch.randn(1_000_000))
    q = torch.nn.Parameter(torch.randn(100))
    opt = ft.Adam([p, q], state_dtype="8bit")
    p.grad, q.grad = torch.randn_like(p), torch.randn_like(q)
    opt.step()
    st = opt.state[p]
    assert st["exp_avg"].dtype == torch.int8 and st["exp_avg_sq"].dtype == torch.uint8
    big = sum(t.numel() * t.element_size() for t in st.values() if t.dim())
    assert big / p.numel() <= 2.05
    assert opt.state_bytes() == big + 2 * 4 * q.numel()
    f32 = ft.Adam([torch.nn.Parameter(p.detach().clone())])
    f32.param_groups[0]["params"][0].grad = p.grad.clone()
    f32.step()
    assert f32.state_bytes(per_element=True) == 8.0
    assert opt.state_bytes(per_element=True) < 2.1


@pytest.mark.skipif(not NATIVE or not _adapter.FAST, reason="the native fast fill")
def test_8bit_steps_take_the_fast_fill(monkeypatch):
    calls = []
    real = _adapter._execute
    monkeypatch.setattr(_adapter, "_execute", lambda n, t, call: calls.append(n) or
                        real(n, t, call))
    ps = [torch.nn.Parameter(torch.randn(n)) for n in (10, 5000)]
    opt = ft.AdamW(ps, state_dtype="8bit")
    for _ in range(3):
        for p in ps:
            p.grad = torch.ones_like(p)
        opt.step()
    assert calls == [2, 2, 2] and opt._fo_driver.refused is None


def test_state_dict_round_trip_keeps_codes_and_resumes_bitwise(tmp_path):
    tp, to, _, _ = _pair("AdamW", steps=2)
    torch.save(to.state_dict(), tmp_path / "o.pt")
    saved = [p.detach().clone() for p in tp]
    gs = [[torch.randn(p.shape) for p in tp] for _ in range(2)]

    def cont(params, opt):
        for g in gs:
            for p, x in zip(params, g):
                p.grad = x.clone()
            opt.step()

    cont(tp, to)
    again = [torch.nn.Parameter(s.clone()) for s in saved]
    o2 = ft.AdamW(again, **RULES["AdamW"], state_dtype="8bit")
    o2.load_state_dict(torch.load(tmp_path / "o.pt", weights_only=True))
    st = o2.state[again[1]]
    assert st["exp_avg"].dtype == torch.int8 and st["exp_avg_absmax"].dtype == torch.float32
    cont(again, o2)
    for a, b in zip(tp, again):
        assert torch.equal(a, b)
        for key, v in to.state[a].items():
            assert torch.equal(v, o2.state[b][key]), key


@pytest.mark.parametrize("name", ["LAMB", "Adadelta", "Rprop", "ASGD"])
def test_rules_without_8bit_states_refuse_it(name):
    with pytest.raises(ValueError, match="8-bit"):
        getattr(ft, name)([torch.nn.Parameter(torch.zeros(5000))], state_dtype="8bit")


@pytest.mark.parametrize("what", ["wrong map", "float codes", "scales missing",
                                  "scales short"])
def test_bad_replaced_8bit_state_refused_and_nothing_modified(what):
    p = torch.nn.Parameter(torch.randn(5000))
    opt = ft.Adam([p], state_dtype="8bit")
    p.grad = torch.randn_like(p)
    opt.step()
    st = opt.state[p]
    if what == "wrong map":
        st["exp_avg_sq"] = st["exp_avg_sq"].to(torch.int8)
    elif what == "float codes":
        st["exp_avg"] = st["exp_avg"].float()
    elif what == "scales missing":
        del st["exp_avg_absmax"]
    else:
        st["exp_avg_absmax"] = st["exp_avg_absmax"][:-1].clone()
    snap = p.detach().clone(), {k: v.clone() for k, v in st.items()}
    with pytest.raises(ValueError, match="exp_avg"):
        opt.step()
    assert torch.equal(p.detach(), snap[0])
    assert all(torch.equal(v, snap[1][k]) for k, v in st.items())


def test_8bit_views_write_only_inside():
    guard = 41
    buf = torch.randn(5003 + 2 * guard)
    ref = buf.clone()
    p = torch.nn.Parameter(buf[guard:guard + 5003])
    opt = ft.Adam([p], state_dtype="8bit")
    holders = []
    for _ in range(3):
        g = torch.randn(5003 + 2 * guard)
        holders.append((g, g.clone()))
        p.grad = g[guard:guard + 5003]
        opt.step()
        for key, v in list(opt.state[p].items()):
            if v.dim():
                sbuf = torch.full((v.numel() + 2 * guard,), 7, dtype=v.dtype)
                sbuf[guard:guard + v.numel()] = v.reshape(-1)
                holders.append((sbuf, sbuf.clone()))
                opt.state[p][key] = sbuf[guard:guard + v.numel()].view(v.shape)
    assert torch.equal(buf[:guard], ref[:guard]) and torch.equal(buf[-guard:], ref[-guard:])
    for b, c in holders:
        assert torch.equal(b[:guard], c[:guard]) and torch.equal(b[-guard:], c[-guard:])
