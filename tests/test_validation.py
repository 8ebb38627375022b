"""Bad input: a clear TypeError or ValueError naming the culprit, and nothing modified."""
from __future__ import annotations

import copy

import numpy as np
import pytest
from helpers import assert_bitwise, assert_unchanged, snapshot

import fastopt
from fastopt import kernels

OPTIMIZERS = {
    "SGD": lambda ps, **kw: fastopt.SGD(ps, lr=0.1, momentum=0.9, **kw),
    "Adam": lambda ps, **kw: fastopt.Adam(ps, lr=0.1, amsgrad=True, **kw),
    "AdamW": lambda ps, **kw: fastopt.AdamW(ps, lr=0.1, **kw),
    "Adadelta": lambda ps, **kw: fastopt.Adadelta(ps, weight_decay=0.1, **kw),
    "Rprop": lambda ps, **kw: fastopt.Rprop(ps, lr=0.1, **kw),
    "ASGD": lambda ps, **kw: fastopt.ASGD(ps, lr=0.1, t0=0, **kw),
    "LAMB": lambda ps, **kw: fastopt.LAMB(ps, lr=0.1, **kw),
}


def fresh():
    return [np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4),
            np.ones(5, np.float32), np.full(2, 3.0, np.float64)]


def grads_for(params):
    return [np.full_like(p, 0.5) for p in params]


def all_arrays(opt, params):
    return list(params) + [a for st in opt.state.values() for k, a in sorted(st.items())
                           if k != "step"]


# ---- construction ------------------------------------------------------------------------

@pytest.mark.parametrize("name", OPTIMIZERS)
@pytest.mark.parametrize("params,exc,match", [
    (np.zeros(3), TypeError, "iterable of NumPy arrays or dicts"),
    (42, TypeError, "iterable"),
    ([], ValueError, "empty parameter list"),
    ([np.zeros(3, np.int64)], TypeError,
     r"params\[0\]: expected dtype float32, float64, float16 or bfloat16"),
    ([np.zeros(3, np.complex64)], TypeError, "complex64"),
    ([np.zeros(3, ">f8")], TypeError, "native byte order"),
    ([[1.0, 2.0]], TypeError, r"params\[0\]: expected a NumPy array"),
    ([np.zeros(2), np.zeros((4, 4))[:, 1]], ValueError, r"params\[1\]: expected a C-contiguous"),
    ([{"params": [np.zeros(2)]}, {"lr": 1.0}], ValueError, "'params' entry"),
    ([{"params": {np.zeros(2).tobytes()}}], TypeError, "ordered"),
], ids=["ndarray", "int", "empty", "int-dtype", "complex64", "big-endian", "list", "strided",
        "group-without-params", "set"])
def test_bad_params_are_refused(name, params, exc, match):
    with pytest.raises(exc, match=match):
        OPTIMIZERS[name](params)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_read_only_duplicate_and_overlapping_params_are_refused(name):
    ro = np.zeros(3)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match=r"params\[0\]: expected a writeable"):
        OPTIMIZERS[name]([ro])
    a = np.zeros(10)
    with pytest.raises(ValueError, match=r"params\[0\] and params\[1\] are the same array"):
        OPTIMIZERS[name]([a, a])
    with pytest.raises(ValueError, match="overlap in memory"):
        OPTIMIZERS[name]([a[:6], a[4:]])
    with pytest.raises(ValueError, match="overlap in memory"):
        OPTIMIZERS[name]([{"params": [a[:5]]}, {"params": [a[3:8]]}])
    OPTIMIZERS[name]([a[:5], a[5:]])      # adjacent views do not overlap: fine


@pytest.mark.parametrize("cls,kw,match", [
    (fastopt.SGD, dict(lr=-1.0), "Invalid learning rate: -1.0"),
    (fastopt.SGD, dict(lr=float("nan")), "Invalid learning rate: nan"),
    (fastopt.SGD, dict(lr=float("inf")), "Invalid learning rate: inf"),
    (fastopt.SGD, dict(momentum=-0.1), "Invalid momentum value: -0.1"),
    (fastopt.SGD, dict(weight_decay=-1e-3), "Invalid weight_decay value"),
    (fastopt.SGD, dict(nesterov=True), "Nesterov momentum requires"),
    (fastopt.SGD, dict(nesterov=True, momentum=0.9, dampening=0.1), "Nesterov momentum requires"),
    (fastopt.Adam, dict(betas=(1.0, 0.999)), "Invalid beta parameter at index 0: 1.0"),
    (fastopt.Adam, dict(betas=(0.9, -0.1)), "Invalid beta parameter at index 1: -0.1"),
    (fastopt.Adam, dict(betas=(0.9, float("nan"))), "Invalid beta parameter at index 1"),
    (fastopt.Adam, dict(eps=-1e-8), "Invalid epsilon value"),
    (fastopt.AdamW, dict(weight_decay=-0.1), "Invalid weight_decay value"),
    (fastopt.Adam, dict(lr=float("nan")), "Invalid learning rate"),
], ids=lambda x: str(x) if isinstance(x, dict) else None)
def test_bad_hyperparameters_are_refused(cls, kw, match):
    with pytest.raises(ValueError, match=match):
        cls([np.zeros(2)], **kw)


@pytest.mark.parametrize("cls,kw", [(fastopt.Adam, dict(betas=0.9)),
                                    (fastopt.Adam, dict(amsgrad="yes")),
                                    (fastopt.SGD, dict(lr="0.1")),
                                    (fastopt.SGD, dict(nesterov=1))])
def test_hyperparameters_of_the_wrong_type_are_refused(cls, kw):
    with pytest.raises(TypeError):
        cls([np.zeros(2)], **kw)


def test_bad_group_hyperparameters_are_refused():
    with pytest.raises(ValueError, match="Invalid learning rate"):
        fastopt.Adam([{"params": [np.zeros(2)], "lr": -1}])


# ---- step ----------------------------------------------------------------------------------

def bad_grad_cases(params):
    g = grads_for(params)
    strided = np.zeros((3, 8), np.float32)[:, ::2]
    ro = g[1].copy()
    ro.flags.writeable = True
    return {
        "not-a-sequence": (np.stack([np.zeros(2)] * 3), TypeError, "grads: expected a sequence"),
        "generator": ((x for x in g), TypeError, "grads: expected a sequence"),
        "too-few": (g[:2], ValueError, "expected 3 gradients"),
        "too-many": (g + [None], ValueError, "expected 3 gradients"),
        "last-wrong-dtype": (g[:2] + [g[2].astype(np.float32)], TypeError,
                             r"grads\[2\]: expected dtype float64"),
        "last-wrong-shape": (g[:2] + [np.zeros(3)], ValueError,
                             r"grads\[2\]: expected shape \(2,\)"),
        "first-transposed-shape": ([np.zeros((4, 3), np.float32)] + g[1:], ValueError,
                                   r"grads\[0\]: expected shape \(3, 4\)"),
        "strided": ([strided] + g[1:], ValueError, r"grads\[0\]: expected a C-contiguous"),
        "list-not-array": (g[:1] + [[0.5] * 5, g[2]], TypeError,
                           r"grads\[1\]: expected a NumPy array"),
        "numpy-scalar": (g[:2] + [np.float64(1.0)], TypeError, "NumPy scalar"),
        "aliases-a-param": (g[:1] + [params[1]] + g[2:], ValueError,
                            r"grads\[1\] shares memory with params\[1\]"),
        "aliases-another-param": (g[:2] + [params[1][:2].astype(np.float64)], None, None),
        "big-endian": (g[:2] + [g[2].astype(">f8")], TypeError, r"grads\[2\]"),
    }


@pytest.mark.parametrize("case", list(bad_grad_cases(fresh())))
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_bad_grads_are_refused_and_nothing_is_modified(name, case):
    params = fresh()
    opt = OPTIMIZERS[name](params)
    opt.step(grads_for(params))                   # state exists and is non-trivial
    grads, exc, match = bad_grad_cases(params)[case]
    before = snapshot(all_arrays(opt, params))
    steps = {i: int(st.get("step", 0)) for i, st in opt.state.items()}
    if exc is None:                               # a control case that must work
        opt.step(grads)
        return
    with pytest.raises(exc, match=match):
        opt.step(grads)
    assert_unchanged(all_arrays(opt, params), before, f"{name} after refusing {case}")
    assert {i: int(st.get("step", 0)) for i, st in opt.state.items()} == steps
    opt.step(grads_for(params))                   # and it still works afterwards


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_grad_aliasing_optimizer_state_is_refused(name):
    params = fresh()
    opt = OPTIMIZERS[name](params)
    opt.step(grads_for(params))
    key = {"SGD": "momentum_buffer", "Adadelta": "acc_delta", "Rprop": "prev",
           "ASGD": "ax"}.get(name, "exp_avg")
    bad = grads_for(params)
    bad[0] = opt.state[0][key]
    before = snapshot(all_arrays(opt, params))
    with pytest.raises(ValueError, match=r"grads\[0\] shares memory with state\[0\]"):
        opt.step(bad)
    assert_unchanged(all_arrays(opt, params), before, name)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_first_step_with_a_bad_grad_creates_no_state(name):
    params = fresh()
    opt = OPTIMIZERS[name](params)
    before = snapshot(params)
    with pytest.raises(TypeError):
        opt.step(grads_for(params)[:2] + [np.zeros(2, np.float32)])
    assert_unchanged(params, before, name)
    assert opt.state == {}, "a refused first step created state"


@pytest.mark.parametrize("bad", [dict(lr=-0.5), dict(lr=float("nan")), dict(weight_decay=-1.0)])
def test_invalid_hyperparameter_set_between_steps_is_refused_before_any_update(bad):
    params = fresh()
    opt = fastopt.Adam([{"params": params[:2]}, {"params": params[2:]}], lr=0.1)
    opt.step(grads_for(params))
    opt.param_groups[1].update(bad)
    before = snapshot(all_arrays(opt, params))
    with pytest.raises(ValueError, match="Invalid"):
        opt.step(grads_for(params))
    assert_unchanged(all_arrays(opt, params), before, f"after {bad}")


def test_nan_gradients_propagate_as_in_torch():
    p = np.ones(3)
    opt = fastopt.Adam([p])
    opt.step([np.array([np.nan, 1.0, np.inf])])
    assert np.isnan(p[0]) and np.isfinite(p[1]) and np.isnan(p[2])   # inf/inf -> nan, as torch


# ---- load_state_dict -----------------------------------------------------------------------

def trained(name="Adam"):
    params = fresh()
    opt = OPTIMIZERS[name]([{"params": params[:2]}, {"params": params[2:], "lr": 0.01}])
    opt.step(grads_for(params))
    return opt, params


def mutate(sd, how):
    sd = copy.deepcopy(sd)
    if how == "fewer-groups":
        sd["param_groups"] = sd["param_groups"][:1]
    elif how == "group-size":
        sd["param_groups"][0]["params"] = [0]
    elif how == "shape":
        sd["state"][1]["exp_avg"] = np.zeros(4, np.float32)
    elif how == "dtype":
        sd["state"][2]["exp_avg_sq"] = sd["state"][2]["exp_avg_sq"].astype(np.float32)
    elif how == "missing-key":
        del sd["state"][2]["exp_avg_sq"]
    elif how == "missing-amsgrad-buffer":
        del sd["state"][0]["max_exp_avg_sq"]
    elif how == "bad-step":
        sd["state"][0]["step"] = -3
    elif how == "fractional-step":
        sd["state"][0]["step"] = 2.5
    elif how == "unknown-param":
        sd["state"][7] = sd["state"][0]
    elif how == "bad-lr":
        sd["param_groups"][1]["lr"] = -1.0
    elif how == "not-a-dict":
        sd = [sd["state"], sd["param_groups"]]
    elif how == "state-not-a-dict":
        sd["state"][0] = 5
    elif how == "array-not-array":
        sd["state"][0]["exp_avg"] = [[0.0] * 4] * 3
    return sd


@pytest.mark.parametrize("how", ["fewer-groups", "group-size", "shape", "dtype", "missing-key",
                                 "missing-amsgrad-buffer", "bad-step", "fractional-step",
                                 "unknown-param", "bad-lr", "not-a-dict", "state-not-a-dict",
                                 "array-not-array"])
def test_mismatched_state_dict_is_refused_and_optimizer_unchanged(how):
    opt, params = trained()
    sd = opt.state_dict()
    before_sd = opt.state_dict()
    with pytest.raises((ValueError, TypeError)):
        opt.load_state_dict(mutate(sd, how))
    after = opt.state_dict()
    assert after["param_groups"] == before_sd["param_groups"]
    assert set(after["state"]) == set(before_sd["state"])
    for i, st in before_sd["state"].items():
        for k, v in st.items():
            if k == "step":
                assert after["state"][i][k] == v
            else:
                assert_bitwise(after["state"][i][k], v, f"state[{i}][{k}] after {how}")
    opt.step(grads_for(params))       # still usable


# ---- the kernel functions validate too -------------------------------------------------------

def test_kernel_functions_refuse_bad_input_and_modify_nothing():
    p, g, m, v = np.ones(4), np.ones(4), np.zeros(4), np.zeros(4)
    before = snapshot([p, m, v])
    with pytest.raises(ValueError, match=r"steps\[0\]: expected a step count >= 1"):
        kernels.adam_step(p, g, m, v, step=0)
    with pytest.raises(TypeError, match=r"exp_avgs\[0\]: expected dtype float64"):
        kernels.adam_step(p, g, m.astype(np.float32), v, step=1)
    with pytest.raises(ValueError, match="are the same array"):
        kernels.adam_step(p, g, m, m, step=1)
    with pytest.raises(ValueError, match="Invalid beta parameter at index 1"):
        kernels.adam_step(p, g, m, v, step=1, beta2=1.0)
    with pytest.raises(ValueError, match="momentum_buffers: required"):
        kernels.sgd_step(p, g, lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match=r"grads\[0\] shares memory with params\[0\]"):
        kernels.sgd_step(p, p, lr=0.1)
    assert_unchanged([p, m, v], before, "kernel functions")
    assert_bitwise(g, np.ones(4), "grad")


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_first_step_with_max_grad_norm_checks_every_gradient_before_reading_any(name):
    """The norm pass must never read a gradient that failed its checks (here a reversed view,
    whose data pointer is its LAST element: reading it as contiguous runs out of bounds)."""
    params = [np.zeros(1), np.zeros(4096)]
    opt = OPTIMIZERS[name](params, max_grad_norm=1.0)
    with pytest.raises(ValueError, match=r"grads\[1\]: expected a C-contiguous"):
        opt.step([np.ones(1), np.ones(4096)[::-1]])
    assert opt.state == {} and opt.last_grad_norms in ([], [None])


def test_in_place_edits_of_list_hyperparameters_are_seen():
    p = np.zeros(2)
    opt = fastopt.Adam([p], lr=0.1, betas=[0.9, 0.999])
    opt.step([np.ones(2)])
    assert isinstance(opt.param_groups[0]["betas"], tuple)     # stored frozen
    opt.param_groups[0]["betas"] = [0.0, 0.999]                # a new list: revalidated
    opt.step([2 * np.ones(2)])
    assert_bitwise(opt.state[0]["exp_avg"], np.full(2, 2.0), "beta1 = 0 applied")
    opt.param_groups[0]["betas"] = [5.0, 0.999]
    with pytest.raises(ValueError, match="beta parameter at index 0"):
        opt.step([np.ones(2)])


def test_huge_step_counts_are_refused_cleanly():
    opt = fastopt.Adam([np.zeros(2)])
    opt.step([np.ones(2)])
    sd = opt.state_dict()
    sd["state"][0]["step"] = 2 ** 70
    with pytest.raises(ValueError, match="step count"):
        opt.load_state_dict(sd)
