"""EMA of parameters and gradient accumulation."""
from __future__ import annotations

import numpy as np
import pytest
from helpers import assert_bitwise, snapshot

import fastopt
from fastopt import reference


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("decay", [0.999, 0.3])      # both branches of torch's lerp
def test_ema_matches_the_reference_and_torchs_rule(threads, dtype, decay):
    threads(2)
    rng = np.random.default_rng(0)
    params = [np.asarray(rng.standard_normal(s), dtype) for s in [(300, 70), (5,), ()]]
    ema = fastopt.EMA(params, decay=decay)
    ref = snapshot(params)
    for _ in range(10):
        for p in params:
            p += np.asarray(rng.standard_normal(p.shape), dtype)
        ema.update()
        for a, p in zip(ref, params):
            reference.ema_update(a, p, decay=decay)
    for a, b in zip(ema.averages, ref):
        assert_bitwise(a, b, "EMA average")
    assert ema.num_updates == 10


def test_ema_against_torch():
    torch = pytest.importorskip("torch", reason="optional: pip install torch==2.13.0")
    rng = np.random.default_rng(1)
    p = rng.standard_normal(50)
    ema = fastopt.EMA([p], decay=0.9)
    avg = torch.tensor(p.copy())
    for _ in range(20):
        p += rng.standard_normal(50)
        ema.update()
        torch._foreach_lerp_([avg], [torch.tensor(p)], 1 - 0.9)
    np.testing.assert_allclose(ema.averages[0], avg.numpy(), rtol=1e-14, atol=1e-15)


def test_ema_swap_and_context_manager_restore_the_params():
    w = np.arange(4.0)
    ema = fastopt.EMA([w], decay=0.5)
    w += 2.0
    ema.update()                                   # average = w_old + 0.5 * 2
    current = w.copy()
    with ema.average_parameters():
        assert_bitwise(w, np.arange(4.0) + 1.0, "averaged weights swapped in")
    assert_bitwise(w, current, "restored")
    ema.copy_to()
    assert_bitwise(w, np.arange(4.0) + 1.0, "copied for good")


def test_ema_refuses_bad_input():
    with pytest.raises(ValueError, match="Invalid decay value"):
        fastopt.EMA([np.zeros(2)], decay=1.5)
    with pytest.raises(ValueError, match="empty"):
        fastopt.EMA([])
    a = np.zeros(4)
    with pytest.raises(ValueError, match="same array"):
        fastopt.EMA([a, a])
    ema = fastopt.EMA([np.zeros(3)])
    with pytest.raises(ValueError, match=r"averages\[0\]: expected shape"):
        ema.load_state_dict({"decay": 0.9, "num_updates": 1, "averages": [np.zeros(4)]})
    assert ema.decay == 0.999 and ema.num_updates == 0


def test_ema_state_dict_round_trip():
    w = np.ones(3)
    ema = fastopt.EMA([w], decay=0.8)
    w *= 3
    ema.update()
    other = fastopt.EMA([np.ones(3)], decay=0.1)
    other.load_state_dict(ema.state_dict())
    assert_bitwise(other.averages[0], ema.averages[0], "loaded average")
    assert other.decay == 0.8 and other.num_updates == 1


@pytest.mark.parametrize("average", [True, False])
def test_accumulation_equals_one_step_on_the_mean_or_sum(average):
    rng = np.random.default_rng(2)
    micro = [[rng.standard_normal(6), rng.standard_normal(2)] for _ in range(4)]
    a, b = [np.ones(6), np.ones(2)], [np.ones(6), np.ones(2)]
    acc = fastopt.GradientAccumulator(
        fastopt.AdamW(a, lr=0.1, weight_decay=0.1, max_grad_norm=0.5), steps=4,
        average=average)
    stepped = [acc.step(g) for g in micro]
    assert stepped == [False, False, False, True]
    direct = fastopt.AdamW(b, lr=0.1, weight_decay=0.1, max_grad_norm=0.5)
    total = [micro[0][k] + micro[1][k] + micro[2][k] + micro[3][k] for k in range(2)]
    direct.step([t * 0.25 for t in total] if average else total)
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, rtol=1e-14)   # sums in another order: a few ulps
    assert int(acc.optimizer.state[0]["step"]) == 1     # weight decay and clipping acted once


def test_accumulation_with_none_gradients_and_bad_input():
    w, b = np.zeros(3), np.zeros(2)
    acc = fastopt.GradientAccumulator(fastopt.SGD([w, b], lr=1.0), steps=2)
    acc.step([np.ones(3), None])
    acc.step([np.ones(3), None])
    assert_bitwise(w, np.full(3, -1.0), "w stepped on the mean")
    assert_bitwise(b, np.zeros(2), "b never had a gradient: skipped")
    with pytest.raises(ValueError, match=r"grads\[1\]: expected shape"):
        acc.step([np.ones(3), np.ones(3)])
    assert acc.micro_step == 0
    with pytest.raises(ValueError, match="steps must be an integer"):
        fastopt.GradientAccumulator(acc.optimizer, steps=0)
    with pytest.raises(TypeError):
        fastopt.GradientAccumulator(object(), steps=2)


def test_accumulation_follows_params_added_later():
    w, b = np.zeros(2), np.zeros(2)
    opt = fastopt.SGD([w], lr=1.0)
    acc = fastopt.GradientAccumulator(opt, steps=2)
    opt.add_param_group({"params": [b]})
    assert acc.step([np.ones(2), np.ones(2)]) is False
    assert acc.step([np.ones(2), 3 * np.ones(2)]) is True
    assert_bitwise(w, np.full(2, -1.0), "w")
    assert_bitwise(b, np.full(2, -2.0), "b, added after the accumulator")
