"""The optimizer classes: torch.optim's interface and rules, checked against the reference."""
from __future__ import annotations

import numpy as np
import pytest
from helpers import DTYPES, assert_bitwise, snapshot

import fastopt
from fastopt import reference

SHAPES = [(7, 3), (33,), (), (0, 4), (2, 3, 5)]


def make_params(dtype, seed=0, shapes=SHAPES):
    rng = np.random.default_rng(seed)
    return [np.asarray(rng.standard_normal(s), dtype=dtype) for s in shapes]


def make_grads(params, seed):
    rng = np.random.default_rng(seed)
    return [np.asarray(rng.standard_normal(p.shape) * 0.3, dtype=p.dtype) for p in params]


class RefAdam:
    """The optimizer's bookkeeping redone by hand on top of fastopt.reference (the oracle)."""

    def __init__(self, params, groups, decoupled):
        self.params, self.groups, self.decoupled = params, groups, decoupled
        self.state = {}

    def step(self, grads):
        for i, (p, g) in enumerate(zip(self.params, grads)):
            if g is None:
                continue
            h = self.groups[i]
            st = self.state.setdefault(i, dict(step=0, m=np.zeros_like(p), v=np.zeros_like(p),
                                               vmax=np.zeros_like(p)))
            st["step"] += 1
            reference.adam_step(p, g, st["m"], st["v"], st["vmax"] if h["amsgrad"] else None,
                                step=st["step"], lr=h["lr"], beta1=h["betas"][0],
                                beta2=h["betas"][1], eps=h["eps"],
                                weight_decay=h["weight_decay"],
                                decoupled_weight_decay=self.decoupled, maximize=h["maximize"])


ADAM_GROUPS = [
    dict(),
    dict(amsgrad=True, weight_decay=0.05),
    dict(maximize=True, betas=(0.5, 0.9), eps=1e-4, lr=3e-3),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("cls", [fastopt.Adam, fastopt.AdamW])
def test_adam_optimizer_matches_reference_with_groups_skips_and_lr_changes(cls, dtype):
    params = make_params(dtype)
    ref_params = snapshot(params)
    # params 0-1 in group 0, 2-3 in group 1, 4 in group 2
    split = [[0, 1], [2, 3], [4]]
    groups = [dict(params=[params[i] for i in idx], **ADAM_GROUPS[k])
              for k, idx in enumerate(split)]
    opt = cls(groups, lr=1e-2)
    per_param = []
    for k, idx in enumerate(split):
        per_param += [opt.param_groups[k]] * len(idx)
    ref = RefAdam(ref_params, per_param, decoupled=cls is fastopt.AdamW)
    for step in range(12):
        grads = make_grads(params, seed=step)
        if step % 3 == 1:
            grads[1] = None          # skipped: no update, no step count
        if step == 6:
            opt.param_groups[0]["lr"] = 5e-4      # hyperparameters may change between steps
            opt.param_groups[2]["betas"] = (0.8, 0.99)
        opt.step(grads)
        ref.step(grads)
    for i, (p, r) in enumerate(zip(params, ref_params)):
        assert_bitwise(p, r, f"{cls.__name__} {np.dtype(dtype)} param {i}")
    for i, st in opt.state.items():
        assert_bitwise(st["exp_avg"], ref.state[i]["m"], f"exp_avg {i}")
        assert_bitwise(st["exp_avg_sq"], ref.state[i]["v"], f"exp_avg_sq {i}")
        assert int(st["step"]) == ref.state[i]["step"]
    assert int(opt.state[1]["step"]) == 8 and int(opt.state[0]["step"]) == 12
    assert "max_exp_avg_sq" in opt.state[2] and "max_exp_avg_sq" not in opt.state[0]


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("options", [dict(), dict(momentum=0.9), dict(momentum=0.9, dampening=0.2,
                                     weight_decay=0.01), dict(momentum=0.8, nesterov=True,
                                     maximize=True)], ids=["plain", "momentum", "damp-l2",
                                                           "nesterov-max"])
def test_sgd_optimizer_matches_reference(options, dtype):
    params = make_params(dtype, seed=1)
    ref_params = snapshot(params)
    opt = fastopt.SGD(params, lr=0.05, **options)
    bufs = [np.zeros_like(p) for p in params]
    seen = [False] * len(params)
    for step in range(10):
        grads = make_grads(params, seed=100 + step)
        if step in (0, 4):
            grads[2] = None      # param 2's buffer is created on its first real step
        opt.step(grads)
        for i, (p, g) in enumerate(zip(ref_params, grads)):
            if g is not None:
                reference.sgd_step(p, g, bufs[i], lr=0.05, init_buffer=not seen[i], **options)
                seen[i] = True
    for i, (p, r) in enumerate(zip(params, ref_params)):
        assert_bitwise(p, r, f"SGD {options} param {i}")
    if options.get("momentum"):
        for i in range(len(params)):
            assert_bitwise(opt.state[i]["momentum_buffer"], bufs[i], f"buffer {i}")
    else:
        assert all("momentum_buffer" not in st for st in opt.state.values())


def test_sgd_first_step_buffer_is_the_gradient():
    """torch's rule: the buffer starts as the gradient (undamped), so step 1 moves p by lr*g."""
    p = np.zeros(4)
    opt = fastopt.SGD([p], lr=0.5, momentum=0.9, dampening=0.5)
    g = np.array([1.0, -2.0, 0.0, 4.0])
    opt.step([g])
    assert_bitwise(opt.state[0]["momentum_buffer"], g, "buffer after step 1")
    assert_bitwise(p, np.zeros(4) + (-0.5) * g, "param after step 1")
    opt.step([g])
    assert_bitwise(opt.state[0]["momentum_buffer"], 0.9 * g + 0.5 * g, "buffer after step 2")


def test_adam_first_step_moves_each_param_by_lr():
    """Bias correction: after one step m_hat = g and v_hat = g^2, so |update| = lr (eps aside),
    the classic check that bias correction and eps placement are right."""
    p = np.zeros(5)
    g = np.array([1e-3, -2.0, 3e2, -4e-5, 5.0])
    fastopt.Adam([p], lr=0.01, eps=0.0).step([g])
    np.testing.assert_allclose(p, -0.01 * np.sign(g), rtol=1e-15)


def test_adamw_decouples_and_adam_couples_weight_decay():
    """With a huge gradient scale, L2 decay is drowned by the adaptive denominator (Adam) while
    decoupled decay is not (AdamW): the two differ exactly by the decay term."""
    g = np.full(3, 1e6)
    p_adam, p_adamw, p_plain = np.ones(3), np.ones(3), np.ones(3)
    fastopt.Adam([p_adam], lr=0.1, weight_decay=0.5).step([g])
    fastopt.AdamW([p_adamw], lr=0.1, weight_decay=0.5).step([g])
    fastopt.Adam([p_plain], lr=0.1).step([g])
    np.testing.assert_allclose(p_adam, p_plain, rtol=1e-12)       # coupled: L2 barely matters
    np.testing.assert_allclose(p_adamw, p_plain - 0.05, rtol=1e-12)  # decoupled: p*(1-lr*wd)


def test_defaults_follow_the_spec():
    p = np.zeros(1)
    common = dict(l1=0.0, max_grad_norm=None, clip_value=None, master_weights=False,
                  rounding="nearest", state_dtype=None)   # fastopt's additions
    assert fastopt.SGD([p]).defaults == dict(lr=1e-3, momentum=0.0, dampening=0.0,
                                             weight_decay=0.0, nesterov=False, maximize=False,
                                             **common)
    assert fastopt.Adam([p]).defaults == dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
                                              weight_decay=0.0, amsgrad=False, maximize=False,
                                              **common)
    # torch's defaults for the other rules (Lion: the paper's)
    assert fastopt.RMSprop([p]).defaults == dict(lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0,
                                                 momentum=0.0, centered=False, maximize=False,
                                                 **common)
    assert fastopt.Adagrad([p]).defaults == dict(lr=1e-2, lr_decay=0.0, weight_decay=0.0,
                                                 initial_accumulator_value=0.0, eps=1e-10,
                                                 maximize=False, **common)
    assert fastopt.Adamax([p]).defaults["lr"] == 2e-3
    assert fastopt.RAdam([p]).defaults["decoupled_weight_decay"] is False
    assert fastopt.Lion([p]).defaults == dict(lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0,
                                              maximize=False, **common)
    assert fastopt.AdamW([p]).defaults["weight_decay"] == 1e-2
    assert "Parameter Group 0" in repr(fastopt.AdamW([p]))


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_trajectory_tracks_a_float64_computation(dtype):
    """60 Adam steps on a quadratic. float64 must agree with a float64 reference computed in a
    different association (per-element Python floats) to 1e-12; float32 must stay within the
    rounding bound: each step changes p by at most lr*(1-beta1)/sqrt(1-beta2) ~ 3.2*lr and
    adds at most ~1 ulp of p plus ~8 ulps of the update, so after T steps
    |p32 - p64| <= T * (ulp(max|p|) + 8 * 2**-23 * 3.2 * lr)."""
    rng = np.random.default_rng(5)
    target = rng.standard_normal(257)
    p = (target * 0 + 1.0).astype(dtype)
    p64 = np.ones(257)
    lr, steps = 1e-2, 60
    opt = fastopt.Adam([p], lr=lr)
    m64, v64 = np.zeros(257), np.zeros(257)
    for t in range(1, steps + 1):
        opt.step([(p - target.astype(dtype)).astype(dtype)])
        # the same rule in textbook form (not torch's lerp form) in float64
        g = p64 - target
        m64 = 0.9 * m64 + 0.1 * g
        v64 = 0.999 * v64 + 0.001 * g * g
        p64 = p64 - lr / (1 - 0.9 ** t) * m64 / (np.sqrt(v64) / np.sqrt(1 - 0.999 ** t) + 1e-8)
    if dtype == np.float64:
        np.testing.assert_allclose(p, p64, rtol=0, atol=1e-12)
    else:
        bound = steps * (np.spacing(np.float32(np.abs(p64).max())) + 8 * 2.0 ** -23 * 3.2 * lr)
        err = np.abs(p.astype(np.float64) - p64).max()
        assert err <= bound, f"float32 drifted {err:.3g} from float64 (bound {bound:.3g})"
    assert np.abs(p64 - target).mean() < np.abs(1.0 - target).mean()   # it does optimise


@pytest.mark.parametrize("cls,kw", [(fastopt.Adam, dict(amsgrad=True, weight_decay=0.1)),
                                    (fastopt.AdamW, dict()),
                                    (fastopt.SGD, dict(momentum=0.9, lr=0.1))])
def test_state_dict_round_trip_resumes_bitwise(cls, kw):
    """Stop, save, load into a new optimizer over copies of the params, continue: the same
    bits as an uninterrupted run."""
    params = make_params(np.float32, seed=3)
    resumed = snapshot(params)
    opt = cls(params, **kw)
    for step in range(15):
        opt.step(make_grads(params, seed=step))
    half = cls(resumed, **kw)
    for step in range(7):
        half.step(make_grads(resumed, seed=step))
    sd = half.state_dict()
    again = cls(resumed, lr=123.0)            # different hyperparameters: the state dict wins
    again.load_state_dict(sd)
    for step in range(7, 15):
        again.step(make_grads(resumed, seed=step))
    for i, (a, b) in enumerate(zip(params, resumed)):
        assert_bitwise(b, a, f"{cls.__name__} resumed param {i}")
    assert again.param_groups[0]["lr"] == opt.param_groups[0]["lr"]


def test_state_dict_structure_and_copies():
    w, b = np.zeros((3, 2), np.float32), np.zeros(2, np.float32)
    opt = fastopt.Adam([{"params": [w], "weight_decay": 1e-4}, {"params": [b]}])
    opt.step([np.ones_like(w), None])
    sd = opt.state_dict()
    assert set(sd) == {"state", "param_groups"}
    assert list(sd["state"]) == [0]                   # b never stepped: no state
    assert sd["state"][0]["step"] == 1 and isinstance(sd["state"][0]["step"], int)
    assert sd["param_groups"][0]["params"] == [0] and sd["param_groups"][1]["params"] == [1]
    assert sd["param_groups"][0]["weight_decay"] == 1e-4
    sd["state"][0]["exp_avg"][...] = 99               # a copy: the optimizer is unaffected
    assert not np.any(opt.state[0]["exp_avg"] == 99)


def test_none_grad_leaves_param_and_state_untouched():
    w, b = np.ones(3), np.ones(2)
    opt = fastopt.Adam([w, b], lr=0.1)
    opt.step([np.ones(3), np.ones(2)])
    before = snapshot([b, opt.state[1]["exp_avg"], opt.state[1]["exp_avg_sq"]])
    opt.step([np.ones(3), None])
    assert_bitwise(b, before[0], "b")
    assert_bitwise(opt.state[1]["exp_avg"], before[1], "b's exp_avg")
    assert int(opt.state[1]["step"]) == 1 and int(opt.state[0]["step"]) == 2


def test_add_param_group_and_amsgrad_switched_on_later():
    w, b = np.ones(3), np.ones(2)
    opt = fastopt.Adam([w], lr=0.1)
    opt.step([np.ones(3)])
    opt.add_param_group({"params": b, "lr": 0.2})
    assert opt.param_groups[1]["betas"] == (0.9, 0.999)
    opt.step([np.ones(3), np.ones(2)])
    assert int(opt.state[0]["step"]) == 2 and int(opt.state[1]["step"]) == 1
    opt.param_groups[0]["amsgrad"] = True      # torch would raise; fastopt starts the max now
    opt.step([np.ones(3), None])
    assert_bitwise(opt.state[0]["max_exp_avg_sq"], opt.state[0]["exp_avg_sq"], "fresh max")
    with pytest.raises(ValueError, match="same array"):
        opt.add_param_group({"params": [w]})


def test_step_accepts_tuple_and_any_sequence():
    w = np.zeros(3)
    opt = fastopt.SGD([w], lr=1.0)
    opt.step((np.ones(3),))

    class Grads:   # a minimal Sequence
        def __len__(self):
            return 1

        def __getitem__(self, i):
            if i >= 1:
                raise IndexError
            return np.ones(3)

    import collections.abc
    collections.abc.Sequence.register(Grads)
    opt.step(Grads())
    assert_bitwise(w, np.full(3, -2.0), "after two steps")
