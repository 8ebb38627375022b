"""fastopt.schedules: the scheduler classes against their closed forms (the plain functions, and
formulas written out here), state_dict round trips, several param groups, argument errors, and,
when torch is installed, lr by lr against torch.optim.lr_scheduler's classes."""
from __future__ import annotations

import doctest
import math
import warnings
from functools import partial

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import fastopt
from fastopt import schedules as S

STEPS = 120


def sgd(lrs=(0.1,), **kw):
    """A fastopt SGD with one param group per lr."""
    kw.setdefault("momentum", 0.9)
    return fastopt.SGD([{"params": [np.zeros(3)], "lr": lr} for lr in lrs], **kw)


def adam(lrs=(0.1,), **kw):
    return fastopt.Adam([{"params": [np.zeros(3)], "lr": lr} for lr in lrs], **kw)


def run(sched, steps=STEPS):
    """The lrs of every group at steps 0..steps (step 0: after construction)."""
    lrs = [sched.get_last_lr()]
    for _ in range(steps):
        sched.step()
        lrs.append(sched.get_last_lr())
    return np.array(lrs)


def closed(fn, base_lrs, steps=STEPS, **kw):
    return np.array([[fn(t, base_lr=b, **kw) for b in base_lrs] for t in range(steps + 1)])


LRS = (0.1, 0.03, 1.0)

# (scheduler factory, plain function, its keyword arguments)
CLOSED_FORMS = [
    (lambda o: S.StepLR(o, step_size=7, gamma=0.5), S.step_decay, dict(step_size=7, gamma=0.5)),
    (lambda o: S.StepLR(o, step_size=1), S.step_decay, dict(step_size=1)),
    (lambda o: S.MultiStepLR(o, [10, 30, 30, 75], gamma=0.3), S.multistep,
     dict(milestones=[10, 30, 30, 75], gamma=0.3)),
    (lambda o: S.ConstantLR(o), S.constant, dict()),
    (lambda o: S.ConstantLR(o, factor=0.25, total_iters=40), S.constant,
     dict(factor=0.25, total_iters=40)),
    (lambda o: S.ConstantLR(o, factor=0.0, total_iters=3), S.constant,
     dict(factor=0.0, total_iters=3)),
    (lambda o: S.LinearLR(o), S.linear, dict()),
    (lambda o: S.LinearLR(o, start_factor=0.01, end_factor=0.5, total_iters=60), S.linear,
     dict(start_factor=0.01, end_factor=0.5, total_iters=60)),
    (lambda o: S.LinearLR(o, start_factor=1.0, end_factor=0.0, total_iters=30), S.linear,
     dict(start_factor=1.0, end_factor=0.0, total_iters=30)),
    (lambda o: S.ExponentialLR(o, gamma=0.97), S.exponential, dict(gamma=0.97)),
    (lambda o: S.PolynomialLR(o), S.polynomial, dict()),
    (lambda o: S.PolynomialLR(o, total_iters=80, power=2.5), S.polynomial,
     dict(total_iters=80, power=2.5)),
    (lambda o: S.CosineAnnealingLR(o, T_max=50), S.cosine_annealing, dict(T_max=50)),
    (lambda o: S.CosineAnnealingLR(o, T_max=13, eta_min=0.001), S.cosine_annealing,
     dict(T_max=13, eta_min=0.001)),
    (lambda o: S.CosineAnnealingWarmRestarts(o, T_0=10), S.cosine_warm_restarts, dict(T_0=10)),
    (lambda o: S.CosineAnnealingWarmRestarts(o, T_0=3, T_mult=2, eta_min=0.002),
     S.cosine_warm_restarts, dict(T_0=3, T_mult=2, eta_min=0.002)),
    (lambda o: S.WarmupDecayLR(o, warmup_steps=10, total_steps=100), S.warmup_decay,
     dict(warmup_steps=10, total_steps=100)),
    (lambda o: S.WarmupDecayLR(o, 25, 90, decay="linear", min_lr=0.001,
                               warmup_start_factor=0.1), S.warmup_decay,
     dict(warmup_steps=25, total_steps=90, decay="linear", min_lr=0.001,
          warmup_start_factor=0.1)),
    (lambda o: S.WarmupDecayLR(o, 0, 100), S.linear_warmup_cosine,
     dict(warmup_steps=0, total_steps=100)),
]


@pytest.mark.parametrize("make,fn,kw", CLOSED_FORMS, ids=[f"{c[1].__name__}-{i}"
                                                          for i, c in enumerate(CLOSED_FORMS)])
def test_class_equals_plain_function(make, fn, kw):
    opt = sgd(LRS)
    sched = make(opt)
    got = run(sched)
    want = closed(fn, LRS, **kw)
    # the chainable (recursive) forms drift from the closed form by a few roundings per step
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)
    assert [g["lr"] for g in opt.param_groups] == list(got[-1])
    assert [g["initial_lr"] for g in opt.param_groups] == list(LRS)
    assert sched.base_lrs == list(LRS) and sched.last_epoch == STEPS


def test_docstring_examples():
    result = doctest.testmod(S, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


def test_formulas_written_out():
    t = np.arange(201)
    base, eta = 0.5, 0.01
    cos = [S.cosine_annealing(int(i), base_lr=base, T_max=40, eta_min=eta) for i in t]
    np.testing.assert_allclose(cos, eta + (base - eta) * (1 + np.cos(np.pi * t / 40)) / 2,
                               rtol=1e-14)
    assert S.cosine_annealing(40, base_lr=base, T_max=40, eta_min=eta) == pytest.approx(eta)
    assert S.cosine_annealing(80, base_lr=base, T_max=40, eta_min=eta) == pytest.approx(base)
    assert [S.step_decay(int(i), base_lr=1.0, step_size=3, gamma=0.5) for i in range(7)] \
        == [1, 1, 1, 0.5, 0.5, 0.5, 0.25]
    assert [S.multistep(i, base_lr=1.0, milestones=[2, 4, 4], gamma=0.5) for i in range(6)] \
        == [1, 1, 0.5, 0.5, 0.125, 0.125]
    assert S.exponential(10, base_lr=2.0, gamma=0.5) == 2.0 / 1024
    assert S.polynomial(3, base_lr=1.0, total_iters=4, power=2) == pytest.approx(1 / 16)
    assert S.polynomial(9, base_lr=1.0, total_iters=4, power=2) == 0.0
    assert S.linear(0, base_lr=1.0, start_factor=0.2, total_iters=4) == pytest.approx(0.2)
    assert S.linear(2, base_lr=1.0, start_factor=0.2, total_iters=4) == pytest.approx(0.6)
    assert S.linear(99, base_lr=1.0, start_factor=0.2, total_iters=4) == 1.0
    assert [S.constant(i, base_lr=3.0, factor=0.5, total_iters=2) for i in range(4)] \
        == [1.5, 1.5, 3.0, 3.0]
    # warm restarts: periods 3, 6, 12: restarts at steps 0, 3, 9, 21
    restarts = [i for i in range(40)
                if S.cosine_warm_restarts(i, base_lr=1.0, T_0=3, T_mult=2) == 1.0]
    assert restarts == [0, 3, 9, 21]
    assert S.cosine_warm_restarts(15, base_lr=1.0, T_0=3, T_mult=2) == pytest.approx(0.5)


def test_warmup_decay_formula():
    base, lo, w, n = 1e-3, 1e-5, 100, 1000
    for decay in ("cosine", "linear"):
        for t in [0, 1, 50, 99, 100, 101, 550, 999, 1000, 5000]:
            got = S.warmup_decay(t, base_lr=base, warmup_steps=w, total_steps=n, decay=decay,
                                 min_lr=lo)
            if t < w:
                want = base * t / w
            elif t >= n:
                want = lo
            else:
                p = (t - w) / (n - w)
                want = lo + (base - lo) * (0.5 * (1 + math.cos(math.pi * p)) if decay == "cosine"
                                           else 1 - p)
            assert got == pytest.approx(want, rel=1e-14, abs=1e-20), (decay, t)
    assert S.warmup_decay(w, base_lr=base, warmup_steps=w, total_steps=n) == base
    assert S.linear_warmup_cosine(0, base_lr=1.0, warmup_steps=4, total_steps=8,
                                  warmup_start_factor=0.2) == pytest.approx(0.2)
    assert S.linear_warmup_linear(6, base_lr=1.0, warmup_steps=4, total_steps=8) == 0.5


@given(st.integers(1, 6), st.integers(1, 3), st.integers(0, 400))
def test_warm_restarts_function_matches_class(t0, tmult, steps):
    opt = sgd([0.2])
    sched = S.CosineAnnealingWarmRestarts(opt, T_0=t0, T_mult=tmult, eta_min=0.01)
    for _ in range(steps):
        sched.step()
    assert sched.get_last_lr()[0] == S.cosine_warm_restarts(steps, base_lr=0.2, T_0=t0,
                                                            T_mult=tmult, eta_min=0.01)


@given(st.integers(1, 300), st.floats(0.05, 0.95), st.sampled_from(["cos", "linear"]),
       st.booleans())
def test_one_cycle_class_matches_functions(total, pct, strategy, three):
    opt = sgd([0.1, 0.2])
    sched = S.OneCycleLR(opt, max_lr=[1.0, 0.5], total_steps=total, pct_start=pct,
                         anneal_strategy=strategy, three_phase=three)
    kw = dict(total_steps=total, pct_start=pct, anneal_strategy=strategy, three_phase=three)
    for t in range(total + 1):
        if t:
            sched.step()
        lrs, groups = sched.get_last_lr(), opt.param_groups
        assert lrs[0] == S.one_cycle(t, max_lr=1.0, **kw)
        assert lrs[1] == S.one_cycle(t, max_lr=0.5, **kw)
        assert groups[0]["momentum"] == groups[1]["momentum"] == S.one_cycle_momentum(t, **kw)


def test_one_cycle_landmarks():
    kw = dict(max_lr=2.0, total_steps=100, pct_start=0.25, div_factor=10.0,
              final_div_factor=100.0)
    assert S.one_cycle(0, **kw) == pytest.approx(0.2)
    assert S.one_cycle(24, **kw) == pytest.approx(2.0)
    assert S.one_cycle(99, **kw) == pytest.approx(0.002)
    three = dict(kw, three_phase=True)
    assert S.one_cycle(24, **three) == pytest.approx(2.0)
    assert S.one_cycle(48, **three) == pytest.approx(0.2)
    assert S.one_cycle(99, **three) == pytest.approx(0.002)
    lin = dict(kw, anneal_strategy="linear")
    assert S.one_cycle(12, **lin) == pytest.approx(0.2 + 1.8 * 12 / 24)
    assert S.one_cycle_momentum(0, total_steps=100) == pytest.approx(0.95)
    assert S.one_cycle_momentum(29, total_steps=100) == pytest.approx(0.85)
    assert S.one_cycle_momentum(99, total_steps=100) == pytest.approx(0.95)


def test_one_cycle_cycles_betas_for_adam():
    opt = adam([0.1], betas=(0.9, 0.99))
    sched = S.OneCycleLR(opt, max_lr=0.01, total_steps=50, base_momentum=0.8,
                         max_momentum=0.9)
    seen = []
    for t in range(51):
        if t:
            sched.step()
        b1, b2 = opt.param_groups[0]["betas"]
        assert b2 == 0.99
        assert b1 == S.one_cycle_momentum(t, total_steps=50, base_momentum=0.8,
                                          max_momentum=0.9)
        seen.append(b1)
        opt.step([np.ones(3)])      # the optimizer accepts what the scheduler wrote
    assert min(seen) == pytest.approx(0.8) and seen[0] == pytest.approx(0.9)
    assert {"initial_lr", "max_lr", "min_lr", "max_momentum", "base_momentum"} \
        <= set(opt.param_groups[0])


def test_one_cycle_refuses_step_past_the_end():
    opt = sgd()
    sched = S.OneCycleLR(opt, max_lr=1.0, total_steps=5)
    for _ in range(5):
        sched.step()
    before = (sched.state_dict(), [dict(g, params=None) for g in opt.param_groups])
    with pytest.raises(ValueError, match="tried to step 6 times, but total_steps is 5"):
        sched.step()
    assert (sched.state_dict(), [dict(g, params=None) for g in opt.param_groups]) == before


def test_lambda_lr_and_sequential_function():
    opt = sgd(LRS)
    sched = S.LambdaLR(opt, [lambda t: 0.9 ** t, lambda t: 1 / (t + 1), lambda t: 1.0])
    got = run(sched, 30)
    t = np.arange(31)
    np.testing.assert_allclose(got, np.stack([0.1 * 0.9 ** t, 0.03 / (t + 1), 1.0 + 0 * t], 1),
                               rtol=1e-14)

    opt = sgd(LRS)
    seq = S.SequentialLR(opt, [S.LinearLR(opt, start_factor=0.1, total_iters=10),
                               S.CosineAnnealingLR(opt, T_max=60),
                               S.ExponentialLR(opt, gamma=0.9)], milestones=[10, 70])
    got = run(seq, 100)
    want = np.array([[S.sequential(i, schedules=[partial(S.linear, base_lr=b, start_factor=0.1,
                                                         total_iters=10),
                                                 partial(S.cosine_annealing, base_lr=b, T_max=60),
                                                 partial(S.exponential, base_lr=b, gamma=0.9)],
                                   milestones=[10, 70]) for b in LRS] for i in range(101)])
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_reduce_lr_on_plateau_by_hand():
    opt = sgd([1.0, 0.5])
    sched = S.ReduceLROnPlateau(opt, factor=0.5, patience=2, cooldown=1, min_lr=[0.2, 0.3])
    assert "initial_lr" not in opt.param_groups[0] and sched.get_last_lr() == [1.0, 0.5]
    metrics = [5, 4, 4, 4, 4, 4, 4, 4, 4, 4, 3, 3, 3, 3, 3]
    lrs = []
    for m in metrics:
        sched.step(m)
        lrs.append(sched.get_last_lr())
    # bad steps counted after the last improvement; > patience (2) reduces; cooldown 1 skips one
    assert [x[0] for x in lrs] == [1, 1, 1, 1, 0.5, 0.5, 0.5, 0.5, 0.25, 0.25, 0.25, 0.25, 0.25,
                                   0.2, 0.2]
    assert [x[1] for x in lrs][-1] == 0.3       # the second group's min_lr
    assert sched.last_epoch == len(metrics)

    opt = sgd([1.0])
    sched = S.ReduceLROnPlateau(opt, mode="max", threshold=0.5, threshold_mode="abs",
                                patience=0)
    for m, want in [(1.0, 1.0), (1.4, 0.1), (2.0, 0.1), (2.1, 0.01)]:
        sched.step(np.float64(m))
        assert sched.get_last_lr()[0] == pytest.approx(want)


def test_initial_step_and_initial_lr():
    opt = sgd([0.1, 0.2])
    opt.param_groups[1]["initial_lr"] = 0.4     # setdefault: an existing initial_lr is kept
    sched = S.ExponentialLR(opt, gamma=0.5)
    assert sched.last_epoch == 0 and sched.base_lrs == [0.1, 0.4]
    assert sched.get_last_lr() == [0.1, 0.2]     # ExponentialLR's initial step changes nothing
    sched.step()
    assert sched.get_last_lr() == [0.05, 0.1]
    lin = S.LinearLR(sgd([0.1]), start_factor=0.5)
    assert lin.get_last_lr() == [0.05]          # LinearLR's initial step applies start_factor
    # resuming with last_epoch needs initial_lr
    with pytest.raises(KeyError, match="initial_lr"):
        S.StepLR(sgd(), step_size=2, last_epoch=3)
    opt = sgd([0.1])
    opt.param_groups[0]["initial_lr"] = 0.1
    sched = S.StepLR(opt, step_size=2, last_epoch=3)
    assert sched.last_epoch == 4 and sched.get_last_lr() == [pytest.approx(0.01)]


def test_scheduler_drives_fastopt_step():
    p = np.zeros(2)
    opt = fastopt.SGD([p], lr=1.0)
    sched = S.StepLR(opt, step_size=1, gamma=0.5)
    for t in range(4):
        opt.step([np.ones(2)])
        sched.step()
        assert p[0] == pytest.approx(-(2 - 0.5 ** t))


def _resumable():
    return [
        lambda o: S.StepLR(o, 5, 0.7),
        lambda o: S.MultiStepLR(o, [3, 9], 0.5),
        lambda o: S.ConstantLR(o, 0.5, 8),
        lambda o: S.LinearLR(o, 0.2, 0.9, 15),
        lambda o: S.ExponentialLR(o, 0.95),
        lambda o: S.PolynomialLR(o, 20, 1.5),
        lambda o: S.CosineAnnealingLR(o, 9, 0.001),
        lambda o: S.CosineAnnealingWarmRestarts(o, 4, 2, 0.001),
        lambda o: S.OneCycleLR(o, [1.0, 0.5], total_steps=40, three_phase=True),
        lambda o: S.WarmupDecayLR(o, 5, 30, min_lr=[0.001, 0.002]),
        lambda o: S.LambdaLR(o, lambda t: 1 / (1 + t)),
        lambda o: S.SequentialLR(o, [S.ConstantLR(o, 0.1, 4), S.CosineAnnealingLR(o, 10),
                                     S.CosineAnnealingWarmRestarts(o, 3)], [6, 14]),
    ]


@pytest.mark.parametrize("make", _resumable(), ids=lambda m: "")
def test_state_dict_round_trip(make):
    opt = sgd([0.1, 0.3])
    sched = make(opt)
    for _ in range(11):
        sched.step()
    osd, ssd = opt.state_dict(), sched.state_dict()
    rest = run(sched, 25)

    opt2 = sgd([0.5, 0.5])
    sched2 = make(opt2)
    sched2.step()
    opt2.load_state_dict(osd)
    sched2.load_state_dict(ssd)
    assert sched2.state_dict() == ssd
    assert np.array_equal(run(sched2, 25), rest)
    # the state dict is a copy
    ssd["last_epoch"] = 1000
    assert sched2.last_epoch != 1000


def test_reduce_lr_on_plateau_round_trip():
    opt = sgd([1.0])
    sched = S.ReduceLROnPlateau(opt, patience=1, cooldown=2, mode="max")
    for m in [1, 2, 2, 2]:
        sched.step(m)
    osd, ssd = opt.state_dict(), sched.state_dict()
    opt2 = sgd([1.0])
    sched2 = S.ReduceLROnPlateau(opt2)
    opt2.load_state_dict(osd)
    sched2.load_state_dict(ssd)
    for m in [2, 2, 3, 1, 1, 1, 1]:
        sched.step(m)
        sched2.step(m)
        assert sched.get_last_lr() == sched2.get_last_lr()
    assert sched.state_dict() == sched2.state_dict()


def test_load_state_dict_refusals_change_nothing():
    opt = sgd([0.1, 0.2])
    sched = S.CosineAnnealingLR(opt, 10)
    sched.step()
    before = sched.state_dict()
    good = S.CosineAnnealingLR(sgd([0.3, 0.4]), 10).state_dict()
    bad = [
        ([1, 2], TypeError, "expected a mapping"),
        ({k: v for k, v in good.items() if k != "T_max"}, ValueError, r"lacks \['T_max'\]"),
        (dict(good, step_size=3), ValueError, r"unexpected keys \['step_size'\]"),
        (dict(good, base_lrs=[0.1]), ValueError, "one value per param group"),
        (dict(good, last_epoch=-5), ValueError, "last_epoch"),
        (S.StepLR(sgd([0.1, 0.2]), 3).state_dict(), ValueError, "lacks"),
    ]
    for sd, exc, match in bad:
        with pytest.raises(exc, match=match):
            sched.load_state_dict(sd)
        assert sched.state_dict() == before
    seq = S.SequentialLR(opt, [S.ConstantLR(opt), S.StepLR(opt, 2)], [3])
    sd = seq.state_dict()
    before = seq.state_dict()
    sd["_schedulers"][1]["gamma"] = 0.5
    del sd["_schedulers"][0]["factor"]
    with pytest.raises(ValueError, match="lacks"):
        seq.load_state_dict(sd)
    assert seq.state_dict() == before


def _bad_args():
    return [
        (lambda o: S.StepLR(o, 0), ValueError, "Expected positive integer step_size, but got 0"),
        (lambda o: S.StepLR(o, 2.5), TypeError, "positive integer step_size"),
        (lambda o: S.StepLR(o, 2, gamma=-1), ValueError, "gamma"),
        (lambda o: S.StepLR(o, 2, gamma="x"), TypeError, "real number gamma"),
        (lambda o: S.MultiStepLR(o, [3, -1]), ValueError, r"milestones\[1\]"),
        (lambda o: S.MultiStepLR(o, 5), TypeError, "iterable"),
        (lambda o: S.ConstantLR(o, factor=1.5), ValueError, "between 0 and 1"),
        (lambda o: S.ConstantLR(o, total_iters=0), ValueError, "total_iters"),
        (lambda o: S.LinearLR(o, start_factor=0), ValueError, "start_factor"),
        (lambda o: S.LinearLR(o, end_factor=2), ValueError, "end_factor"),
        (lambda o: S.ExponentialLR(o, gamma=float("nan")), ValueError, "finite gamma"),
        (lambda o: S.PolynomialLR(o, power=-1), ValueError, "power"),
        (lambda o: S.CosineAnnealingLR(o, 0), ValueError,
         "Expected positive integer T_max, but got 0"),
        (lambda o: S.CosineAnnealingLR(o, 10, eta_min=-1), ValueError, "eta_min"),
        (lambda o: S.CosineAnnealingWarmRestarts(o, 0), ValueError, "T_0"),
        (lambda o: S.CosineAnnealingWarmRestarts(o, 5, T_mult=0), ValueError, "T_mult"),
        (lambda o: S.CosineAnnealingWarmRestarts(o, 5, T_mult=1.5), TypeError, "T_mult"),
        (lambda o: S.OneCycleLR(o, 1.0), ValueError, "total_steps OR"),
        (lambda o: S.OneCycleLR(o, 1.0, total_steps=0), ValueError, "total_steps"),
        (lambda o: S.OneCycleLR(o, 1.0, epochs=2, steps_per_epoch=-1), ValueError,
         "steps_per_epoch"),
        (lambda o: S.OneCycleLR(o, 1.0, 10, pct_start=1.5), ValueError, "pct_start"),
        (lambda o: S.OneCycleLR(o, 1.0, 10, anneal_strategy="exp"), ValueError,
         "anneal_strategy"),
        (lambda o: S.OneCycleLR(o, [1.0, 2.0, 3.0], 10), ValueError, "same length"),
        (lambda o: S.OneCycleLR(o, 1.0, 10, div_factor=0), ValueError, "div_factor"),
        (lambda o: S.LambdaLR(o, 3), TypeError, "lr_lambda should be a function"),
        (lambda o: S.LambdaLR(o, [lambda t: 1.0]), ValueError, "Expected 2 lr_lambdas"),
        (lambda o: S.WarmupDecayLR(o, 10, 5), ValueError, "warmup_steps <= total_steps"),
        (lambda o: S.WarmupDecayLR(o, 1, 5, decay="step"), ValueError, "decay"),
        (lambda o: S.WarmupDecayLR(o, 1, 5, min_lr=[0.1]), ValueError, "same length"),
        (lambda o: S.ReduceLROnPlateau(o, factor=1.0), ValueError, "Factor should be < 1.0"),
        (lambda o: S.ReduceLROnPlateau(o, mode="avg"), ValueError, "mode 'avg' is unknown"),
        (lambda o: S.ReduceLROnPlateau(o, threshold_mode="x"), ValueError, "threshold mode"),
        (lambda o: S.ReduceLROnPlateau(o, patience=-1), ValueError, "patience"),
        (lambda o: S.ReduceLROnPlateau(o, min_lr=[0.1]), ValueError, "expected 2 min_lrs"),
        (lambda o: S.StepLR(o, 2, last_epoch=-2), ValueError, "last_epoch"),
        (lambda o: S.SequentialLR(o, [S.StepLR(o, 2)], [3]), ValueError,
         "one more than the number of milestone"),
        (lambda o: S.SequentialLR(o, [S.StepLR(o, 2), S.StepLR(sgd([1.0, 2.0]), 2)], [3]),
         ValueError, "same optimizer"),
        (lambda o: S.SequentialLR(o, [S.StepLR(o, 2), S.ReduceLROnPlateau(o)], [3]),
         ValueError, "ReduceLROnPlateau"),
        (lambda o: S.SequentialLR(o, [S.StepLR(o, 2), "cos"], [3]), TypeError, "schedulers"),
        (lambda o: S.SequentialLR(o, [S.StepLR(o, 2), S.StepLR(o, 2), S.StepLR(o, 2)],
                                  [5, 3]), ValueError, "increasing"),
    ]


@pytest.mark.parametrize("make,exc,match", _bad_args(), ids=lambda x: "")
def test_bad_arguments(make, exc, match):
    opt = sgd([0.1, 0.2])
    with pytest.raises(exc, match=match):
        make(opt)


def test_refused_construction_changes_nothing():
    opt = sgd([0.1, 0.2])
    for make in [lambda: S.OneCycleLR(opt, 1.0, 10, pct_start=2.0),
                 lambda: S.OneCycleLR(opt, 1.0, 10, anneal_strategy="x"),
                 lambda: S.CosineAnnealingLR(opt, 0),
                 lambda: S.WarmupDecayLR(opt, 1, 5, min_lr=-1)]:
        with pytest.raises(ValueError):
            make()
        assert [sorted(g) for g in opt.param_groups] == [sorted(g) for g in sgd().param_groups] * 2
        assert [g["lr"] for g in opt.param_groups] == [0.1, 0.2]
        assert opt.param_groups[0]["momentum"] == 0.9


def test_type_errors_and_epoch_argument():
    for not_opt in [None, [0.1], type("O", (), {"param_groups": "x"})()]:
        with pytest.raises(TypeError, match="is not an optimizer"):
            S.StepLR(not_opt, 2)
    with pytest.raises(ValueError, match=r"param_groups\[0\]\['lr'\]"):
        S.StepLR(type("O", (), {"param_groups": [{"lr": -1.0}]})(), 2)
    # any object with a param_groups list of dicts will do
    duck = type("O", (), {"param_groups": [{"lr": 1.0}]})()
    assert run(S.StepLR(duck, 1, 0.5), 2)[-1, 0] == 0.25

    opt = sgd()
    for sched in [S.StepLR(opt, 2), S.CosineAnnealingWarmRestarts(opt, 3),
                  S.SequentialLR(opt, [S.StepLR(opt, 2), S.StepLR(opt, 3)], [2])]:
        with pytest.raises(TypeError, match="no epoch argument"):
            sched.step(5)
    plateau = S.ReduceLROnPlateau(opt)
    with pytest.raises(TypeError, match="no epoch argument"):
        plateau.step(1.0, 3)
    with pytest.raises(TypeError, match="metrics"):
        plateau.step("low")
    assert plateau.last_epoch == 0

    opt.add_param_group({"params": [np.zeros(1)]})
    sched = S.StepLR(sgd(), 2)
    sched.optimizer.add_param_group({"params": [np.zeros(1)]})
    with pytest.raises(ValueError, match="has 2 param groups, but StepLR was built for 1"):
        sched.step()
    assert sched.last_epoch == 0

    for fn, kw, exc, match in [
        (S.cosine_annealing, dict(base_lr=1.0, T_max=0), ValueError, "T_max"),
        (S.step_decay, dict(base_lr=1.0, step_size=0), ValueError, "step_size"),
        (S.one_cycle, dict(max_lr=1.0, total_steps=5), None, None),
        (S.warmup_decay, dict(base_lr=1.0, warmup_steps=3, total_steps=2), ValueError,
         "warmup_steps"),
    ]:
        if exc is not None:
            with pytest.raises(exc, match=match):
                fn(3, **kw)
    with pytest.raises(ValueError, match="non-negative integer step"):
        S.exponential(-1, base_lr=1.0, gamma=0.5)
    with pytest.raises(TypeError, match="non-negative integer step"):
        S.exponential(1.5, base_lr=1.0, gamma=0.5)
    with pytest.raises(ValueError, match="past the end"):
        S.one_cycle(6, max_lr=1.0, total_steps=5)


# ---- against torch ----------------------------------------------------------------------------

def _torch_cases():
    """(name, factory(module, optimizer), optimizer kind); factory builds the same scheduler
    from fastopt.schedules or torch.optim.lr_scheduler."""
    return [
        ("lambda", lambda m, o: m.LambdaLR(o, lambda t: 0.95 ** t), "sgd"),
        ("lambda-list", lambda m, o: m.LambdaLR(o, [lambda t: 1 / (1 + t), lambda t: 0.99 ** t,
                                                    lambda t: 1.0]), "sgd"),
        ("step", lambda m, o: m.StepLR(o, 7), "sgd"),
        ("step-g", lambda m, o: m.StepLR(o, 3, gamma=0.8), "adam"),
        ("multistep", lambda m, o: m.MultiStepLR(o, [5, 20, 20, 60], gamma=0.5), "sgd"),
        ("constant", lambda m, o: m.ConstantLR(o), "sgd"),
        ("constant-2", lambda m, o: m.ConstantLR(o, factor=0.1, total_iters=30), "adam"),
        ("linear", lambda m, o: m.LinearLR(o), "sgd"),
        ("linear-2", lambda m, o: m.LinearLR(o, start_factor=0.05, end_factor=0.7,
                                             total_iters=45), "adam"),
        ("linear-down", lambda m, o: m.LinearLR(o, 1.0, 0.0, 100), "sgd"),
        ("exponential", lambda m, o: m.ExponentialLR(o, 0.96), "sgd"),
        ("polynomial", lambda m, o: m.PolynomialLR(o), "sgd"),
        ("polynomial-2", lambda m, o: m.PolynomialLR(o, total_iters=70, power=0.5), "adam"),
        ("cosine", lambda m, o: m.CosineAnnealingLR(o, T_max=100), "sgd"),
        ("cosine-periodic", lambda m, o: m.CosineAnnealingLR(o, T_max=13, eta_min=1e-3),
         "adam"),
        ("warm-restarts", lambda m, o: m.CosineAnnealingWarmRestarts(o, T_0=10), "sgd"),
        ("warm-restarts-2", lambda m, o: m.CosineAnnealingWarmRestarts(o, 3, T_mult=2,
                                                                       eta_min=1e-4), "adam"),
        ("onecycle", lambda m, o: m.OneCycleLR(o, max_lr=1.0, total_steps=100), "sgd"),
        ("onecycle-adam", lambda m, o: m.OneCycleLR(o, max_lr=[0.1, 0.2, 0.05], total_steps=100,
                                                    pct_start=0.4, anneal_strategy="linear",
                                                    base_momentum=[0.8, 0.7, 0.85],
                                                    max_momentum=0.9), "adam"),
        ("onecycle-3phase", lambda m, o: m.OneCycleLR(o, max_lr=2.0, epochs=10,
                                                      steps_per_epoch=10, three_phase=True,
                                                      div_factor=5.0, final_div_factor=50.0),
         "sgd"),
        ("onecycle-nomom", lambda m, o: m.OneCycleLR(o, 0.5, 100, cycle_momentum=False), "adam"),
        ("sequential", lambda m, o: m.SequentialLR(
            o, [m.LinearLR(o, start_factor=0.1, total_iters=10), m.CosineAnnealingLR(o, 90)],
            milestones=[10]), "sgd"),
        ("sequential-3", lambda m, o: m.SequentialLR(
            o, [m.ConstantLR(o, 0.2, 8), m.ExponentialLR(o, 0.9), m.StepLR(o, 4),
                m.CosineAnnealingWarmRestarts(o, 6)], milestones=[10, 30, 50]), "adam"),
        ("sequential-poly", lambda m, o: m.SequentialLR(
            o, [m.PolynomialLR(o, 20, 2.0), m.MultiStepLR(o, [5, 15]), m.LambdaLR(o, lambda t: 1)],
            milestones=[25, 60]), "sgd"),
    ]


def _pair(kind):
    """A fastopt optimizer and a torch one (float64), three groups with different lrs."""
    torch = pytest.importorskip("torch")
    lrs = [0.1, 0.03, 0.5]
    if kind == "sgd":
        ours = fastopt.SGD([{"params": [np.zeros(3)], "lr": lr} for lr in lrs], momentum=0.9)
        cls, kw = torch.optim.SGD, dict(momentum=0.9)
    else:
        ours = fastopt.Adam([{"params": [np.zeros(3)], "lr": lr} for lr in lrs],
                            betas=(0.9, 0.99))
        cls, kw = torch.optim.Adam, dict(betas=(0.9, 0.99))
    tparams = [torch.zeros(3, dtype=torch.float64, requires_grad=True) for _ in lrs]
    theirs = cls([{"params": [t], "lr": lr} for t, lr in zip(tparams, lrs)], **kw)
    return ours, theirs


def _momenta(opt):
    return [g["betas"][0] if "betas" in g else g["momentum"] for g in opt.param_groups]


@pytest.mark.torch
@pytest.mark.parametrize("name,make,kind", _torch_cases(), ids=[c[0] for c in _torch_cases()])
def test_matches_torch_lr_by_lr(name, make, kind):
    torch = pytest.importorskip("torch")
    sched_mod = torch.optim.lr_scheduler
    ours, theirs = _pair(kind)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)    # scheduler.step() before optimizer.step()
        a, b = make(S, ours), make(sched_mod, theirs)
        for step in range(101):
            if step:
                a.step()
                b.step()
            np.testing.assert_allclose(a.get_last_lr(), b.get_last_lr(), rtol=1e-12, atol=0,
                                       err_msg=f"{name} step {step}")
            assert [g["lr"] for g in ours.param_groups] == a.get_last_lr()
            np.testing.assert_allclose(_momenta(ours), _momenta(theirs), rtol=1e-12,
                                       err_msg=f"{name} momentum, step {step}")
            assert a.last_epoch == b.last_epoch
    # the state dict has torch's keys (less two transient flags of torch's)
    flags = {"_get_lr_called_within_step", "_is_initial"}
    assert set(a.state_dict()) == set(b.state_dict()) - flags
    for key in ("initial_lr", "max_lr", "min_lr", "max_momentum", "base_momentum"):
        mine, torchs = ([g.get(key, math.nan) for g in o.param_groups] for o in (ours, theirs))
        np.testing.assert_allclose(mine, torchs, rtol=1e-15, err_msg=key)   # nan: absent in both


@pytest.mark.torch
@pytest.mark.parametrize("kw,metrics", [
    (dict(), "noisy"),
    (dict(mode="max", factor=0.5, patience=3, threshold=0.05, cooldown=2), "noisy"),
    (dict(factor=0.3, patience=0, threshold=0.1, threshold_mode="abs", min_lr=[0.02, 0.0, 0.1],
          eps=1e-3), "flat"),
    (dict(mode="max", threshold_mode="abs", patience=2, cooldown=1, min_lr=0.01), "flat"),
])
def test_reduce_on_plateau_matches_torch(kw, metrics):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    values = (rng.standard_normal(150).cumsum() * 0.1 if metrics == "noisy"
              else np.repeat([3.0, 2.95, 2.0, 2.0, 1.0], 30))
    ours, theirs = _pair("sgd")
    a = S.ReduceLROnPlateau(ours, **kw)
    b = torch.optim.lr_scheduler.ReduceLROnPlateau(theirs, **kw)
    for v in values:
        a.step(float(v))
        b.step(float(v))
        assert a.get_last_lr() == b.get_last_lr()
        assert (a.best, a.num_bad_epochs, a.cooldown_counter, a.last_epoch) \
            == (b.best, b.num_bad_epochs, b.cooldown_counter, b.last_epoch)
    assert set(a.state_dict()) == set(b.state_dict())


@pytest.mark.torch
def test_loads_torch_state_dict():
    torch = pytest.importorskip("torch")
    ours, theirs = _pair("sgd")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        b = torch.optim.lr_scheduler.CosineAnnealingLR(theirs, T_max=30, eta_min=0.001)
        for _ in range(17):
            b.step()
        a = S.CosineAnnealingLR(ours, T_max=5)
        for g, tg in zip(ours.param_groups, theirs.param_groups):
            g["lr"], g["initial_lr"] = tg["lr"], tg["initial_lr"]
        a.load_state_dict(b.state_dict())
        assert a.T_max == 30 and a.last_epoch == 17
        for _ in range(40):
            a.step()
            b.step()
            np.testing.assert_allclose(a.get_last_lr(), b.get_last_lr(), rtol=1e-12)


@pytest.mark.torch
def test_warmup_decay_matches_torch_lambda():
    torch = pytest.importorskip("torch")
    ours, theirs = _pair("adam")
    fn = partial(S.linear_warmup_cosine, base_lr=1.0, warmup_steps=20, total_steps=100)
    a = S.WarmupDecayLR(ours, warmup_steps=20, total_steps=100)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        b = torch.optim.lr_scheduler.LambdaLR(theirs, fn)
        for _ in range(110):
            a.step()
            b.step()
            np.testing.assert_allclose(a.get_last_lr(), b.get_last_lr(), rtol=1e-12, atol=1e-18)


@pytest.mark.torch
@pytest.mark.parametrize("make", [
    lambda m, o, le: m.StepLR(o, 3, last_epoch=le),
    lambda m, o, le: m.LinearLR(o, 0.1, total_iters=20, last_epoch=le),
    lambda m, o, le: m.CosineAnnealingLR(o, 20, last_epoch=le),
    lambda m, o, le: m.CosineAnnealingWarmRestarts(o, 3, 2, last_epoch=le),
    lambda m, o, le: m.OneCycleLR(o, 1.0, 100, last_epoch=le),
], ids=["step", "linear", "cosine", "warm-restarts", "onecycle"])
def test_resume_with_last_epoch_matches_torch(make):
    torch = pytest.importorskip("torch")
    ours, theirs = _pair("sgd")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        a, b = make(S, ours, -1), make(torch.optim.lr_scheduler, theirs, -1)
        for _ in range(7):
            a.step()
            b.step()
        a, b = make(S, ours, 7), make(torch.optim.lr_scheduler, theirs, 7)
        for _ in range(40):
            a.step()
            b.step()
            np.testing.assert_allclose(a.get_last_lr(), b.get_last_lr(), rtol=1e-12)
            assert a.last_epoch == b.last_epoch
