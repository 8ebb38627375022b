"""The contract check's memo (one optimizer's last checked layout): a step whose written
streams are the memo's reuses their checks, and still refuses a new gradient that aliases a
state, and a changed gradient dtype gets its own signature."""
import numpy as np
import pytest

import fastopt


def _snapshot(opt, params):
    return [p.copy() for p in params], {i: {k: np.copy(v) for k, v in s.items()}
                                        for i, s in opt.state.items()}


@pytest.mark.parametrize("same_grads", [True, False])

def test_a_gradient_aliasing_a_state_is_refused_after_memoised_steps(same_grads):
    rng = np.random.default_rng(1)
    params = [rng.standard_normal(300).astype(np.float32) for _ in range(4)]
    grads = [rng.standard_normal(300).astype(np.float32) for _ in range(4)]
    opt = fastopt.Adam(params, lr=1e-2)
    for _ in range(3):          # the memo holds this layout, and these gradients
        opt.step(grads if same_grads else [g.copy() for g in grads])
    before_p, before_s = _snapshot(opt, params)
    bad = list(grads)
    bad[2] = opt.state[1]["exp_avg_sq"]         # another tensor's state as a gradient
    with pytest.raises(ValueError, match="overlap|shares memory|same"):
        opt.step(bad)
    after_p, after_s = _snapshot(opt, params)
    for a, b in zip(before_p, after_p):
        np.testing.assert_array_equal(a, b)
    for i in before_s:
        for k in before_s[i]:
            np.testing.assert_array_equal(before_s[i][k], after_s[i][k])
    opt.step(grads)                               # and the good gradients step again


def test_memoised_steps_equal_fresh_optimizers_and_reference():
    # steps with the same gradient arrays (memo hit), new ones (memo of writes only) and a
    # fresh optimizer on copies (no memo) give bitwise the same params
    rng = np.random.default_rng(2)
    shapes = [37, 1000, 5, 4096]
    p1 = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    p2 = [p.copy() for p in p1]
    gs = [[rng.standard_normal(s).astype(np.float32) for s in shapes] for _ in range(4)]
    o1 = fastopt.AdamW(p1, lr=1e-2)
    keep = [np.empty(s, np.float32) for s in shapes]
    for g in gs:
        for k, x in zip(keep, g):
            k[...] = x                           # the same arrays every step
        o1.step(keep)
    state = None
    for g in gs:
        o2 = fastopt.AdamW(p2, lr=1e-2)
        if state is not None:
            o2.load_state_dict(state)
        o2.step([x.copy() for x in g])
        state = o2.state_dict()
    for a, b in zip(p1, p2):
        np.testing.assert_array_equal(a, b)


def test_a_changed_gradient_dtype_gets_its_own_signature():
    ml = pytest.importorskip("ml_dtypes", reason="bfloat16 arrays need ml_dtypes")
    rng = np.random.default_rng(3)
    x = rng.standard_normal(512).astype(np.float32)
    a = x.astype(ml.bfloat16)
    b = a.copy()
    g32 = [rng.standard_normal(512).astype(np.float32) for _ in range(3)]
    oa = fastopt.SGD([a], lr=0.1, momentum=0.9)
    ob = fastopt.SGD([b], lr=0.1, momentum=0.9)
    # a: bfloat16 gradients, then float32 ones after the memo holds the layout; b: the
    # same values with the float32 gradient from the start of that step
    oa.step([g32[0].astype(ml.bfloat16)])
    ob.step([g32[0].astype(ml.bfloat16)])
    oa.step([g32[0].astype(ml.bfloat16)])
    ob.step([g32[0].astype(ml.bfloat16)])
    for g in g32[1:]:
        oa.step([g])
        fresh = fastopt.SGD([b], lr=0.1, momentum=0.9)
        fresh.load_state_dict(ob.state_dict())
        fresh.step([g])
        ob = fresh
    np.testing.assert_array_equal(a.view(np.uint16), b.view(np.uint16))
    # and the float32 gradients were not rounded to bfloat16 first (which the bfloat16
    # signature would do): rounding them changes the result
    c = x.astype(ml.bfloat16)
    oc = fastopt.SGD([c], lr=0.1, momentum=0.9)
    for g in [g32[0], g32[0]] + g32[1:]:
        oc.step([g.astype(ml.bfloat16)])
    assert not np.array_equal(a.view(np.uint16), c.view(np.uint16))
