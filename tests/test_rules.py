"""The toolkit rules (RMSprop, Adagrad, Lion, Adamax, RAdam) and the L1 option on every rule:
kernels against the NumPy reference bitwise, optimizers against an oracle built on the
reference, torch.optim where torch has the rule, and the edge cases each rule documents."""
from __future__ import annotations

import numpy as np
import pytest
from helpers import DTYPES, SMALL_SIZES, assert_bitwise, snapshot

import fastopt
from fastopt import _spec, kernels, reference

# name -> (kernel step, reference step, state buffers (count, which are non-negative), takes
#          `step`, option sets)
RULES = {
    "rmsprop": (kernels.rmsprop_step, reference.rmsprop_step, 3, (0,), False, {
        "default": dict(),
        "momentum": dict(momentum=0.9),
        "centered": dict(centered=True),
        "centered-momentum-l2-max-l1": dict(centered=True, momentum=0.5, weight_decay=0.1,
                                            maximize=True, l1=0.01),
        "alpha-small": dict(alpha=0.3),   # lerp's other branch for grad_avg
    }),
    "adagrad": (kernels.adagrad_step, reference.adagrad_step, 1, (0,), True, {
        "default": dict(),
        "decay-l2": dict(lr_decay=0.1, weight_decay=0.1),
        "max-l1": dict(maximize=True, l1=0.05, eps=1e-3),
    }),
    "lion": (kernels.lion_step, reference.lion_step, 1, (), False, {
        "default": dict(),
        "wd": dict(weight_decay=0.5, lr=1e-2),
        "max-l1": dict(maximize=True, l1=0.1, beta1=0.5, beta2=0.9),
    }),
    "adamax": (kernels.adamax_step, reference.adamax_step, 2, (1,), True, {
        "default": dict(),
        "l2-max": dict(weight_decay=0.1, maximize=True),
        "beta1-large-l1": dict(beta1=0.2, l1=0.02),
    }),
    "radam": (kernels.radam_step, reference.radam_step, 2, (1,), True, {
        "default": dict(),
        "l2": dict(weight_decay=0.1),
        "decoupled-max-l1": dict(weight_decay=0.1, decoupled_weight_decay=True, maximize=True,
                                 l1=0.01),
        "beta1-large": dict(beta1=0.2, beta2=0.9),
    }),
    "nadam": (None, None, 2, (1,), True, {
        "default": dict(),
        "l2-max-l1": dict(weight_decay=0.1, maximize=True, l1=0.01, momentum_decay=0.01),
        "decoupled-beta1-large": dict(weight_decay=0.1, decoupled_weight_decay=True, beta1=0.2),
    }),
    "adadelta": (kernels.adadelta_step, reference.adadelta_step, 2, (0, 1), False, {
        "default": dict(),
        "l2-max-l1": dict(weight_decay=0.1, maximize=True, l1=0.01, lr=0.5),
        "rho-extremes": dict(rho=0.0, eps=1e-3),
        "rho-one": dict(rho=1.0),
    }),
    "rprop": (kernels.rprop_step, reference.rprop_step, 2, (1,), False, {
        "default": dict(),
        "max-l1": dict(maximize=True, l1=0.01),
        "etas-clamps": dict(etaminus=0.1, etaplus=3.0, step_size_min=0.05, step_size_max=0.08),
        "min-above-max": dict(step_size_min=0.2, step_size_max=0.1),   # torch's clamp: max
    }),
    "adam-l1": (kernels.adam_step, reference.adam_step, 2, (1,), True, {
        "l1": dict(l1=0.01), "l1-adamw": dict(l1=0.05, weight_decay=0.1,
                                               decoupled_weight_decay=True),
    }),
    "sgd-l1": (kernels.sgd_step, reference.sgd_step, 1, (), False, {
        "l1-momentum": dict(l1=0.01, momentum=0.9), "l1-l2": dict(l1=0.1, weight_decay=0.1),
    }),
}
CASES = [(r, o) for r, (_, _, _, _, _, opts) in RULES.items() for o in opts]


def _nadam_kernel(param, grad, m, v, **kw):
    """NAdam's step with its mu_product kept on the side, per test case (see run())."""
    kernels.nadam_step(param, grad, m, v, _NADAM_MU["kernel"], **kw)


def _nadam_reference(param, grad, m, v, **kw):
    reference.nadam_step(param, grad, m, v, _NADAM_MU["reference"], **kw)


_NADAM_MU: dict = {}
RULES["nadam"] = (_nadam_kernel, _nadam_reference, *RULES["nadam"][2:])


def make(n, dtype, seed, nstate, positive):
    rng = np.random.default_rng(seed)
    p = rng.standard_normal(n).astype(dtype)
    p[::7] = 0                                   # exact zeros: sgn(0) = 0 for L1 and Lion
    g = (rng.standard_normal(n) * 0.5).astype(dtype)
    state = []
    for k in range(nstate):
        s = (rng.standard_normal(n) * 0.1).astype(dtype)
        state.append(np.abs(s) if k in positive else s)
    return p, g, state


def run(fn, arrays, takes_step, steps, opts):
    for step in steps:
        kw = dict(opts, step=step) if takes_step else dict(opts)
        if fn in (kernels.sgd_step, reference.sgd_step):
            kw["init_buffer"] = step == 1
        fn(*arrays, **kw)


@pytest.mark.parametrize("n", SMALL_SIZES + [140_001])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("rule,opt", CASES, ids=[f"{r}-{o}" for r, o in CASES])
def test_kernel_matches_reference(isa, rule, opt, dtype, n):
    kfn, rfn, nstate, positive, takes_step, options = RULES[rule]
    _NADAM_MU.update(kernel=np.ones(1), reference=np.ones(1))
    p, g, state = make(n, dtype, n + 3, nstate, positive)
    opts = options[opt]
    if rule == "rmsprop":   # only the buffers the options use
        state = [state[0], state[1] if opts.get("momentum") else None,
                 state[2] if opts.get("centered") else None]
    fast, ref = snapshot([p, g, *state]), snapshot([p, g, *state])
    run(kfn, fast, takes_step, (1, 2, 9), opts)
    run(rfn, ref, takes_step, (1, 2, 9), opts)
    for k, (a, b) in enumerate(zip(fast, ref)):
        if a is not None:
            assert_bitwise(a, b, f"{rule} {opt} {np.dtype(dtype)} n={n} isa={isa} array {k}")
    assert_bitwise(_NADAM_MU["kernel"], _NADAM_MU["reference"], "mu_product")


@pytest.mark.parametrize("nthreads", [1, 2, 3])
def test_multi_tensor_calls_match_reference_any_thread_count(threads, nthreads):
    threads(nthreads)
    sizes = [0, 1, 17, 4099, 20_000]
    tensors = [make(n, np.float32, k, 2, (0, 1)) for k, n in enumerate(sizes)]
    grads = [g for _, g, _ in tensors]
    grads[2] = None
    steps = [3, 1, 2, 5, 7]
    for name, kw in [("adamax", dict(lr=0.01)), ("radam", dict(weight_decay=0.1)),
                     ("adagrad", dict(lr_decay=0.01))]:
        fast = [snapshot([p, *s]) for p, _, s in tensors]
        ref = [snapshot([p, *s]) for p, _, s in tensors]
        cols = 2 if name != "adagrad" else 1
        getattr(kernels, name)([f[0] for f in fast], grads,
                               *[[f[1 + c] for f in fast] for c in range(cols)], steps, **kw)
        getattr(reference, name)([r[0] for r in ref], grads,
                                 *[[r[1 + c] for r in ref] for c in range(cols)], steps, **kw)
        for k, (f, r) in enumerate(zip(fast, ref)):
            for a, b in zip(f, r):
                assert_bitwise(a, b, f"{name} tensor {k}, {nthreads} threads")


# ---- the optimizers ------------------------------------------------------------------------

OPTIMIZERS = {
    "RMSprop": (fastopt.RMSprop, dict(lr=0.01, momentum=0.9, centered=True, weight_decay=0.01),
                reference.rmsprop_step, ["square_avg", "momentum_buffer", "grad_avg"], False),
    "Adagrad": (fastopt.Adagrad, dict(lr=0.1, lr_decay=0.01, initial_accumulator_value=0.1),
                reference.adagrad_step, ["sum"], True),
    "Lion": (fastopt.Lion, dict(lr=1e-3, weight_decay=0.1), reference.lion_step, ["exp_avg"],
             False),
    "Adamax": (fastopt.Adamax, dict(lr=2e-3, weight_decay=0.01), reference.adamax_step,
               ["exp_avg", "exp_inf"], True),
    "RAdam": (fastopt.RAdam, dict(lr=1e-2, weight_decay=0.1, decoupled_weight_decay=True),
              reference.radam_step, ["exp_avg", "exp_avg_sq"], True),
    "NAdam": (fastopt.NAdam, dict(lr=2e-3, weight_decay=0.1),
              reference.nadam_step, ["exp_avg", "exp_avg_sq", "mu_product"], True),
    "Adadelta": (fastopt.Adadelta, dict(lr=0.5, rho=0.8, weight_decay=0.01),
                 reference.adadelta_step, ["square_avg", "acc_delta"], False),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_optimizer_matches_an_oracle_on_the_reference(name, dtype):
    cls, kw, ref_step, keys, takes_step = OPTIMIZERS[name]
    rng = np.random.default_rng(0)
    shapes = [(6, 5), (33,), ()]
    params = [np.asarray(rng.standard_normal(s), dtype) for s in shapes]
    ref_params = snapshot(params)
    ref_state = [None] * len(shapes)
    ref_steps = [0] * len(shapes)
    opt = cls([{"params": params[:2]}, {"params": params[2:], "l1": 0.01}], **kw)
    for step in range(25):     # RAdam switches to its rectified update at step 6
        grads = [np.asarray(rng.standard_normal(s), dtype) for s in shapes]
        if step % 4 == 1:
            grads[0] = None
        opt.step(grads)
        for i, (p, g) in enumerate(zip(ref_params, grads)):
            if g is None:
                continue
            if ref_state[i] is None:
                init = kw.get("initial_accumulator_value", 0.0)
                ref_state[i] = [np.ones(1) if k == "mu_product" else np.full_like(p, init)
                                for k in keys]
            ref_steps[i] += 1
            extra = {"step": ref_steps[i]} if takes_step else {}
            hyper = {k: v for k, v in kw.items() if k != "initial_accumulator_value"}
            ref_step(p, g, *ref_state[i], **extra, **hyper, l1=0.01 if i == 2 else 0.0)
    for i in range(len(shapes)):
        assert_bitwise(params[i], ref_params[i], f"{name} {np.dtype(dtype)} param {i}")
        for key, arr in zip(keys, ref_state[i]):
            if key == "mu_product":
                assert float(opt.state[i][key]) == float(arr[0])
            else:
                assert_bitwise(opt.state[i][key], arr, f"{name} state[{i}][{key}]")
        assert int(opt.state[i]["step"]) == ref_steps[i]


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_optimizer_state_dict_round_trip_resumes_bitwise(name):
    cls, kw, *_ = OPTIMIZERS[name]
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


# ---- edge cases the docstrings promise --------------------------------------------------------

def test_lion_zero_interpolation_does_not_move_the_param():
    """sgn(0) = 0: with a zero gradient and zero momentum, the param stays put."""
    p = np.array([1.0, -2.0, 0.0, 3.0])
    before = p.copy()
    opt = fastopt.Lion([p], lr=0.1)
    opt.step([np.zeros(4)])
    assert_bitwise(p, before, "zero gradient")
    opt.step([np.array([1.0, -1.0, 0.0, 0.0])])
    assert_bitwise(p, before + np.array([-0.1, 0.1, 0.0, 0.0]), "moved by exactly lr")


def test_centered_rmsprop_with_constant_gradients_stays_finite():
    """v - mean^2 can round below zero with constant gradients: fastopt clamps at 0 (torch
    would produce NaN); the params stay finite and match the reference bitwise."""
    p = np.zeros(1000, np.float32)
    q = p.copy()
    g = np.linspace(0.01, 10, 1000).astype(np.float32)    # constant over the steps
    opt = fastopt.RMSprop([p], lr=1e-4, centered=True, alpha=0.5)
    sq, ga = np.zeros_like(q), np.zeros_like(q)
    negative_seen = False
    for _ in range(200):
        opt.step([g])
        reference.rmsprop_step(q, g, sq, None, ga, lr=1e-4, centered=True, alpha=0.5)
        negative_seen |= bool(np.any(sq - ga * ga < 0))
    assert negative_seen, "the test no longer exercises a negative v - mean^2"
    assert np.all(np.isfinite(p))
    assert_bitwise(p, q, "centered RMSprop")


def test_radam_uses_sgd_with_momentum_until_rho_exceeds_5():
    """torch's rule: for the first steps (rho_t <= 5 with beta2 = 0.999, i.e. steps 1-5) the
    update is lr * m / (1 - beta1^t), with no adaptive term."""
    p = np.zeros(3)
    g = np.array([1.0, -2.0, 4.0])
    opt = fastopt.RAdam([p], lr=0.1)
    opt.step([g])
    np.testing.assert_allclose(p, -0.1 * g, rtol=1e-15)   # m_hat = g on step 1


def test_adagrad_initial_accumulator_value_and_lr_decay():
    p = np.zeros(2)
    opt = fastopt.Adagrad([p], lr=1.0, lr_decay=1.0, initial_accumulator_value=3.0, eps=0.0)
    opt.step([np.array([1.0, 0.0])])
    np.testing.assert_allclose(opt.state[0]["sum"], [4.0, 3.0])
    np.testing.assert_allclose(p, [-0.5, 0.0])             # 1/sqrt(4)
    opt.step([np.array([0.0, 4.0])])                        # clr = 1 / (1 + 1 * 1) = 0.5
    np.testing.assert_allclose(p, [-0.5, -0.5 * 4 / np.sqrt(19)])


@pytest.mark.parametrize("cls", [fastopt.SGD, fastopt.Adam, fastopt.AdamW, fastopt.RMSprop,
                                 fastopt.Adagrad, fastopt.Lion, fastopt.Adamax, fastopt.RAdam,
                                 fastopt.NAdam, fastopt.Adadelta, fastopt.Rprop, fastopt.ASGD,
                                 fastopt.LAMB])
def test_every_optimizer_takes_l1_and_refuses_a_negative_one(cls):
    p = np.array([2.0, -2.0, 0.0])
    opt = cls([p], lr=0.1, l1=0.5)
    assert opt.param_groups[0]["l1"] == 0.5
    opt.step([np.zeros(3)])
    assert p[0] < 2.0 and p[1] > -2.0 and p[2] == 0.0   # L1 pulls towards zero, 0 stays
    with pytest.raises(ValueError, match="Invalid l1 value"):
        cls([np.zeros(2)], l1=-0.1)


@pytest.mark.parametrize("cls,kw,match", [
    (fastopt.RMSprop, dict(alpha=-0.1), "Invalid alpha value"),
    (fastopt.RMSprop, dict(alpha=1.5), "Invalid alpha value"),
    (fastopt.RMSprop, dict(momentum=-1.0), "Invalid momentum value"),
    (fastopt.Adagrad, dict(lr_decay=-1.0), "Invalid lr_decay value"),
    (fastopt.Adagrad, dict(initial_accumulator_value=-1.0), "initial_accumulator_value"),
    (fastopt.Adagrad, dict(eps=-1.0), "Invalid epsilon value"),
    (fastopt.Lion, dict(betas=(0.9, 1.0)), "Invalid beta parameter at index 1"),
    (fastopt.Lion, dict(lr=float("nan")), "Invalid learning rate"),
    (fastopt.Adamax, dict(betas=(-0.1, 0.9)), "Invalid beta parameter at index 0"),
    (fastopt.RAdam, dict(weight_decay=-1.0), "Invalid weight_decay value"),
    (fastopt.Adadelta, dict(rho=1.5), "Invalid rho value"),
    (fastopt.Adadelta, dict(eps=-1.0), "Invalid epsilon value"),
    (fastopt.Rprop, dict(etas=(1.5, 2.0)), "Invalid eta values"),
    (fastopt.Rprop, dict(etas=(0.5, 1.0)), "Invalid eta values"),
    (fastopt.Rprop, dict(step_sizes=(float("nan"), 1.0)), "Invalid step_size_min value"),
    (fastopt.Rprop, dict(lr=-0.1), "Invalid learning rate"),
    (fastopt.ASGD, dict(weight_decay=-0.1), "Invalid weight_decay value"),
    (fastopt.ASGD, dict(lambd=float("nan")), "Invalid lambd value"),
    (fastopt.ASGD, dict(t0=float("inf")), "Invalid t0 value"),
])
def test_bad_hyperparameters_of_the_new_rules(cls, kw, match):
    with pytest.raises(ValueError, match=match):
        cls([np.zeros(2)], **kw)


def test_bad_grads_are_refused_with_nothing_modified_for_every_rule():
    for name, (cls, kw, *_rest) in OPTIMIZERS.items():
        params = [np.ones(4), np.ones(3)]
        opt = cls(params, **kw)
        opt.step([np.ones(4), np.ones(3)])
        before = snapshot(params + [a for st in opt.state.values() for k, a in sorted(st.items())
                                    if k != "step"])
        with pytest.raises(ValueError, match=r"grads\[1\]: expected shape"):
            opt.step([np.ones(4), np.ones(4)])
        after = params + [a for st in opt.state.values() for k, a in sorted(st.items())
                          if k != "step"]
        for a, b in zip(after, before):
            assert_bitwise(a, b, f"{name} after a refused step")


ALL_CLASSES = {
    "SGD": (fastopt.SGD, dict(lr=0.05, momentum=0.9)),
    "RMSprop": (fastopt.RMSprop, dict(lr=1e-2, momentum=0.5)),
    "Adagrad": (fastopt.Adagrad, dict(lr=0.1)),
    "Lion": (fastopt.Lion, dict(lr=1e-2)),
    "Adamax": (fastopt.Adamax, dict(lr=1e-2)),
    "RAdam": (fastopt.RAdam, dict(lr=1e-2)),
    "NAdam": (fastopt.NAdam, dict(lr=1e-2)),
    "Adadelta": (fastopt.Adadelta, dict(lr=1.0)),
    "ASGD": (fastopt.ASGD, dict(lr=1e-2, t0=5)),
}


@pytest.mark.parametrize("name", ALL_CLASSES)
def test_float32_trajectory_tracks_a_float64_run(name):
    """Each rule in float32 against the same rule in float64, 20 steps on a quadratic whose
    minimum stays far away (so Lion's sign never flips on a rounding error). Every update is
    at most ~lr * K in size (K <= 4 for these settings), each step adds about one float32 ulp
    of p and a few ulps of the update, so after T steps |p32 - p64| <= T * (2 ulp(max|p|) +
    16 * 2**-23 * lr * K)."""
    cls, kw = ALL_CLASSES[name]
    rng = np.random.default_rng(7)
    target = rng.standard_normal(301) + 10.0
    p32 = np.zeros(301, np.float32)
    p64 = np.zeros(301)
    o32, o64 = cls([p32], **kw), cls([p64], **kw)
    steps = 20
    for _ in range(steps):
        o32.step([(p32 - target.astype(np.float32)).astype(np.float32)])
        o64.step([p64 - target])
    ulp = np.spacing(np.float32(np.abs(p64).max() + 1.0))
    bound = steps * (2 * ulp + 16 * 2.0 ** -23 * kw["lr"] * 4)
    err = np.abs(p32.astype(np.float64) - p64).max()
    assert err <= bound, f"{name}: float32 drifted {err:.3g} from float64 (bound {bound:.3g})"
    assert np.abs(p64 - target).mean() < np.abs(target).mean()      # it does optimise


def test_bad_momentum_decay_and_grad_scale_are_refused_with_nothing_modified():
    p, g = np.ones(4), np.ones(4)
    m, v, mu = np.zeros(4), np.zeros(4), np.ones(1)
    before = snapshot([p, m, v, mu])
    with pytest.raises(ValueError, match="Invalid momentum_decay value"):
        kernels.nadam_step(p, g, m, v, mu, step=1, momentum_decay=-1.0)
    with pytest.raises(ValueError, match="Invalid grad_scale value"):
        kernels.adam_step(p, g, m, v, step=1, grad_scale=float("nan"))
    with pytest.raises(ValueError, match="Invalid momentum_decay value"):
        fastopt.NAdam([np.zeros(2)], momentum_decay=-0.1)
    for a, b in zip([p, m, v, mu], before):
        assert_bitwise(a, b, "after a refused call")


@pytest.mark.parametrize("name", sorted(_spec.RULES))
def test_record_memo_places_lr_as_the_pack_does(name):
    # Rule.record memoises a group's record without its lr (a schedule changes lr every step)
    # and checks and places lr on each call: the result must be the pack's own record, and a
    # bad lr must raise the pack's error, after the memo holds that group (a hit)
    import re

    spec = _spec.RULES[name]
    group = {**spec.defaults(), **dict(_spec.COMMON)}
    if "lr" not in group:
        assert spec.lr_index is None
        return
    spec.record(group)                      # the memo now holds this group
    for lr in (1e-3, 0.5, 0.0, 3, np.float32(0.1), np.float64(2.0), 7e-4):
        assert spec.record({**group, "lr": lr}) == spec._record({**group, "lr": lr}), lr
    for bad in (-1.0, float("nan"), "x", True, None, [0.1]):
        with pytest.raises((TypeError, ValueError)) as want:
            spec._record({**group, "lr": bad})
        with pytest.raises(want.type, match=re.escape(str(want.value))):
            spec.record({**group, "lr": bad})
    if spec.lr_index is not None:
        rec = spec.record({**group, "lr": 0.25})
        assert rec[spec.lr_index] == 0.25 and rec.count(0.25) >= 1
