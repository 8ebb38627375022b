"""fastopt.torch's steady state (the fast fill, fastopt._kernels.fill_torch): bitwise the same
as the checked Python path for every rule and option set, taken when it should be, refused
(and the checked path's clear error or correct handling used instead) whenever a tensor is not
the plain case, with nothing modified by a refused or failing step."""
from __future__ import annotations

import copy

import pytest

torch = pytest.importorskip("torch", reason="fastopt.torch needs torch")

import fastopt  # noqa: E402
import fastopt.torch as ft  # noqa: E402
from fastopt import functional  # noqa: E402
from fastopt.torch import _adapter  # noqa: E402

native_only = pytest.mark.skipif(not functional.NATIVE,
                                 reason="the fast fill is part of the native backend")
fast_only = pytest.mark.skipif(not _adapter.FAST, reason="no fast fill here: the NumPy backend, "
                               "or a torch without the DLPack exchange table (torch < 2.10)")

OPTIONS = [
    ("SGD", dict(lr=0.1)),
    ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3)),
    ("Adam", dict(lr=1e-2)),
    ("Adam", dict(lr=1e-2, amsgrad=True, weight_decay=1e-2, maximize=True)),
    ("AdamW", dict(lr=1e-2, max_grad_norm=0.5, l1=1e-4, clip_value=0.3)),
    ("RMSprop", dict(lr=1e-2, momentum=0.9, centered=True)),
    ("Adagrad", dict(lr=0.1, lr_decay=0.01, initial_accumulator_value=0.1)),
    ("Adamax", dict(lr=1e-2, weight_decay=1e-2)),
    ("NAdam", dict(lr=1e-2, decoupled_weight_decay=True, weight_decay=1e-2)),
    ("RAdam", dict(lr=1e-2)),
    ("Lion", dict(lr=1e-3, weight_decay=0.1)),
]


def _params(dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = [(5, 3), (7,), (), (0,), (33,), (4, 4, 2)]
    return [torch.nn.Parameter(torch.randn(s, generator=g, dtype=dtype)) for s in shapes]


def _groups(ps, name, kw):
    extra = {"lr": kw["lr"] * 0.5}
    if name in ("Adam", "AdamW") and not kw.get("amsgrad"):
        extra["amsgrad"] = True       # a second group needing another state stream
    if name == "SGD" and kw.get("momentum"):
        extra.update(momentum=0.0, nesterov=False)
    return [{"params": ps[:3]}, {"params": ps[3:], **extra}]


def _grads(ps, t, dtype):
    g = torch.Generator().manual_seed(100 + t)
    for i, p in enumerate(ps):
        # some params sit out some steps (their step count must not advance)
        p.grad = None if (i + t) % 4 == 3 else torch.randn(p.shape, generator=g, dtype=dtype)


def _run(name, kw, dtype, fast, monkeypatch, steps=6, scale=None):
    monkeypatch.setattr(_adapter, "FAST", fast)
    ps = _params(dtype)
    opt = getattr(ft, name)(_groups(ps, name, kw), **kw)
    checked = []
    real = opt._fo_step_checked

    def spy(*a):
        checked.append(1)
        return real(*a)

    opt._fo_step_checked = spy
    for t in range(steps):
        _grads(ps, t, dtype)
        if scale is not None:       # as torch.amp.GradScaler hands them to the step
            opt.grad_scale = torch.tensor(scale)
            opt.found_inf = torch.tensor(0.0)
        opt.step()
    return ps, opt, len(checked)


@native_only
def test_fast_fill_available_with_this_torch():
    # on the native backend the fast fill is on exactly when torch publishes the table
    # (torch 2.13, the CI pin, does), so the fast_only tests below cannot skip there
    assert _adapter.FAST == hasattr(torch.Tensor, "__dlpack_c_exchange_api__")


@fast_only
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("name,kw", OPTIONS, ids=[f"{n}-{i}" for i, (n, _) in
                                                  enumerate(OPTIONS)])
def test_fast_fill_bitwise_equals_checked_path(name, kw, dtype, monkeypatch):
    pa, oa, checked_a = _run(name, kw, dtype, True, monkeypatch)
    pb, ob, checked_b = _run(name, kw, dtype, False, monkeypatch)
    case = f"{name} {kw} {dtype}"
    # the fast optimizer went through the checked path only while it created state
    assert checked_b == 6 and checked_a < 6, (case, checked_a)
    assert oa._fo_driver.refused is None, case
    for i, (a, b) in enumerate(zip(pa, pb)):
        assert torch.equal(a, b), f"{case}: param {i}"
        sa, sb = oa.state.get(a, {}), ob.state.get(b, {})
        assert set(sa) == set(sb), f"{case}: state keys of param {i}"
        for k in sb:
            assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), \
                f"{case}: state {i}[{k!r}]"
    assert oa.last_grad_norms == ob.last_grad_norms, case


@fast_only
def test_fast_fill_under_grad_scale_bitwise(monkeypatch):
    pa, oa, _ = _run("Adam", dict(lr=1e-2), torch.float32, True, monkeypatch, scale=512.0)
    pb, ob, _ = _run("Adam", dict(lr=1e-2), torch.float32, False, monkeypatch, scale=512.0)
    assert all(torch.equal(a, b) for a, b in zip(pa, pb))


@fast_only
@pytest.mark.parametrize("threads", [1, 2])
def test_fast_fill_same_for_any_thread_count(threads, monkeypatch):
    big = [torch.nn.Parameter(torch.randn(70_001)) for _ in range(3)]
    ref = [p.detach().clone() for p in big]
    opt = ft.AdamW(big, lr=1e-2)
    ropt = fastopt.AdamW([r.numpy() for r in ref], lr=1e-2)
    fastopt.set_num_threads(threads)
    try:
        for t in range(3):
            g = torch.Generator().manual_seed(t)
            grads = [torch.randn(70_001, generator=g) for _ in big]
            for p, gr in zip(big, grads):
                p.grad = gr
            opt.step()
            ropt.step([gr.numpy() for gr in grads])
    finally:
        fastopt.set_num_threads(None)
    assert opt._fo_driver.refused is None
    assert all(torch.equal(p.detach(), r) for p, r in zip(big, ref))


def _steady(opt_cls=ft.Adam, n=3):
    ps = [torch.nn.Parameter(torch.randn(6)) for _ in range(n)]
    opt = opt_cls(ps, lr=0.1)
    for p in ps:
        p.grad = torch.randn(6)
    opt.step()
    opt.step()
    return ps, opt


def _snapshot(ps, opt):
    return ([p.detach().clone() for p in ps],
            {i: {k: v.clone() for k, v in opt.state[p].items()} for i, p in enumerate(ps)})


def _unchanged(ps, opt, snap):
    params, states = snap
    assert all(torch.equal(p, q) for p, q in zip(ps, params))
    for i, p in enumerate(ps):
        for k, v in states[i].items():
            assert torch.equal(opt.state[p][k], v), (i, k)


@fast_only
def test_refused_cases_take_the_checked_path_correctly():
    # a dense but transposed param (its state made with its strides) and gradients whose
    # strides differ: correct through the checked path, step after step
    base = torch.randn(3, 4)
    pa = torch.nn.Parameter(base.clone().t())
    pb = torch.nn.Parameter(base.clone().t())
    qa = torch.nn.Parameter(torch.randn(6))
    qb = torch.nn.Parameter(qa.detach().clone())
    oa = ft.Adam([pa, qa], lr=0.1)
    ob = torch.optim.Adam([pb, qb], lr=0.1, foreach=False)
    for t in range(4):
        g = torch.Generator().manual_seed(t)
        gp, gq = torch.randn(4, 3, generator=g), torch.randn(12, generator=g)[::2]
        pa.grad, pb.grad = gp.clone(), gp.clone()
        qa.grad, qb.grad = gq, gq.contiguous()
        oa.step()
        ob.step()
        assert oa._fo_driver.refused is not None
    assert torch.allclose(pa, pb, rtol=1e-6, atol=1e-7)
    assert torch.allclose(qa, qb, rtol=1e-6, atol=1e-7)


@fast_only
def test_refused_then_error_modifies_nothing():
    ps, opt = _steady()
    snap = _snapshot(ps, opt)
    opt.state[ps[2]]["exp_avg"] = torch.zeros(6, dtype=torch.float64)   # wrong dtype
    with pytest.raises(ValueError, match=r"state\[param_groups\[0\]\['params'\]\[2\]\]"):
        opt.step()
    opt.state[ps[2]]["exp_avg"] = snap[1][2]["exp_avg"].clone()
    _unchanged(ps, opt, snap)
    ps[1].grad = torch.randn(6).to_sparse()                              # sparse
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()
    _unchanged(ps, opt, snap)


@fast_only
def test_lazily_negated_or_conjugated_views():
    ps, opt = _steady()
    ref = [p.detach().clone().requires_grad_() for p in ps]
    ropt = ft.Adam(ref, lr=0.1)
    ropt.load_state_dict(copy.deepcopy(opt.state_dict()))
    z = torch.randn(6, dtype=torch.complex64)
    g = z.conj().imag                 # a float32 view whose memory holds -g
    assert g.is_neg()
    for p, r in zip(ps, ref):
        p.grad = g
        r.grad = g.resolve_neg()
    opt.step()
    ropt.step()
    assert all(torch.equal(p, r) for p, r in zip(ps, ref))


def test_checked_path_refuses_lazy_views_of_params_and_state(monkeypatch):
    # the fast fill checks each gradient's neg bit; params and state are checked here, when
    # the checked path first sees them (after that only `.data =` could make them lazy views)
    monkeypatch.setattr(_adapter, "FAST", False)
    ps, opt = _steady()
    snap = _snapshot(ps, opt)
    for p in ps:
        p.grad = torch.randn(6)
    opt.state[ps[1]]["exp_avg_sq"] = torch.rand(6)._neg_view()
    with pytest.raises(ValueError, match="negated"):
        opt.step()
    opt.state[ps[1]]["exp_avg_sq"] = snap[1][1]["exp_avg_sq"].clone()
    _unchanged(ps, opt, snap)
    c = torch.nn.Parameter(torch.randn(3, dtype=torch.complex64))
    c.grad = torch.randn(3, dtype=torch.complex64)
    c.data = c.data.conj()
    with pytest.raises(ValueError, match="conjugated"):
        ft.Adam([c], lr=0.1).step()


@fast_only
def test_tied_params_refused_with_names():
    p = torch.nn.Parameter(torch.randn(8))
    q = torch.nn.Parameter(torch.randn(8))
    opt = ft.Adam([p, q], lr=0.1)
    p.grad, q.grad = torch.randn(8), torch.randn(8)
    opt.step()
    opt.step()
    q.data = p.data                          # tied after the state exists: the fast fill
    before = p.detach().clone()
    with pytest.raises(ValueError, match=r"shares memory"):
        opt.step()
    assert torch.equal(p.detach(), before)


@fast_only
def test_state_replaced_and_loaded_mid_training_are_read_afresh():
    ps, opt = _steady()
    other = ft.Adam([torch.nn.Parameter(p.detach().clone()) for p in ps], lr=0.1)
    for p, q in zip(ps, other.param_groups[0]["params"]):
        q.grad = p.grad.clone()
    other.step()
    sd = other.state_dict()
    opt.load_state_dict(sd)          # new state tensors, a new state dict
    step = opt.state[ps[0]]["step"]
    opt.step()
    assert opt._fo_driver.refused is None
    assert step.item() == 2.0        # the loaded count, advanced in its own tensor
    opt.state[ps[1]]["step"] = torch.tensor(10.0)
    opt.step()
    assert opt.state[ps[1]]["step"].item() == 11.0 and opt.state[ps[0]]["step"].item() == 3.0


@fast_only
def test_subclass_and_low_precision_params_take_the_checked_path():
    class MyParam(torch.nn.Parameter):
        pass

    a = MyParam(torch.randn(4))
    b = torch.nn.Parameter(torch.randn(4, dtype=torch.bfloat16))
    opt = ft.Adam([a, b], lr=0.1)
    for _ in range(2):
        a.grad, b.grad = torch.ones(4), torch.ones(4, dtype=torch.bfloat16)
        opt.step()
    assert opt._fo_driver.refused is not None
    assert opt.state[a]["step"].item() == 2.0 and opt.state[b]["step"].item() == 2.0


# ---- the memo of group settings (Optimizer._fo_settings) -----------------------------------

def _memo_pair(cls, **kw):
    torch.manual_seed(5)
    a = [torch.randn(300, requires_grad=True), torch.randn(7, 3, requires_grad=True)]
    b = [t.detach().clone().requires_grad_() for t in a]
    return a, b, getattr(ft, cls)(a, **kw), getattr(torch.optim, cls)(b, foreach=False, **kw)


def _memo_grads(a, b, k):
    for x, y in zip(a, b):
        torch.manual_seed(100 + k)
        x.grad = torch.randn_like(x)
        y.grad = x.grad.clone()


@pytest.mark.parametrize("cls,changes", [
    ("Adam", [("weight_decay", 0.1), ("betas", (0.8, 0.99)),
              ("lr", 3e-2), ("maximize", True), ("eps", 1e-3)]),
    ("SGD", [("momentum", 0.9), ("nesterov", True), ("dampening", 0.0), ("lr", 0.2),
             ("weight_decay", 0.01)]),
    ("RMSprop", [("alpha", 0.9), ("momentum", 0.7), ("weight_decay", 0.01)]),
])
def test_changed_group_settings_take_effect_as_in_torch(cls, changes):
    # the settings are memoised by value and type: every change of a group value between
    # steps must still take effect, giving torch's trajectory
    # (torch cannot switch amsgrad, centered or RMSprop's momentum on mid-training: its state
    # lacks their buffers)
    a, b, fo, to = _memo_pair(cls, lr=1e-2, **({"momentum": 0.5} if cls == "RMSprop" else {}))
    for k in range(2 * len(changes) + 2):
        if k >= 2 and k % 2 == 0:
            key, value = changes[k // 2 - 1]
            for opt in (fo, to):
                opt.param_groups[0][key] = value
        _memo_grads(a, b, k)
        fo.step()
        to.step()
        for x, y in zip(a, b):
            torch.testing.assert_close(x, y, rtol=2e-6, atol=2e-7)


def test_a_bad_value_after_memoised_steps_raises_and_modifies_nothing():
    a, b, fo, _ = _memo_pair("Adam", lr=1e-2)
    for k in range(3):
        _memo_grads(a, b, k)
        fo.step()
    before = [t.detach().clone() for t in a]
    states = {k: v.clone() for k, v in fo.state[a[0]].items()}
    group = fo.param_groups[0]
    for key, bad, err in [("lr", -1.0, ValueError), ("betas", (1.5, 0.9), ValueError),
                          ("eps", -1e-8, ValueError), ("weight_decay", -0.1, ValueError),
                          ("amsgrad", 1, TypeError), ("l1", -1.0, ValueError)]:
        good = group[key]
        group[key] = bad
        with pytest.raises(err):
            fo.step()
        group[key] = good
        for x, y in zip(a, before):
            assert torch.equal(x, y), key
        for k, v in fo.state[a[0]].items():
            assert torch.equal(v, states[k]), (key, k)
    fo.step()       # and the restored settings step again
    assert not torch.equal(a[0], before[0])


def test_a_tensor_lr_changed_in_place_takes_effect():
    a, b, fo, to = _memo_pair("Adam", lr=torch.tensor(1e-2))
    for k in range(6):
        if k == 3:
            for opt in (fo, to):
                opt.param_groups[0]["lr"].fill_(0.1)
        _memo_grads(a, b, k)
        fo.step()
        to.step()
        for x, y in zip(a, b):
            torch.testing.assert_close(x, y, rtol=2e-6, atol=2e-7)
