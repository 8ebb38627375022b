"""Gradient clipping: the functions (clip_grad_norm_, clip_grad_value_, grad_norm) and the
in-step options (max_grad_norm=, clip_value=) of every optimizer."""
from __future__ import annotations

import math

import numpy as np
import pytest
from helpers import assert_bitwise, snapshot

import fastopt
from fastopt import kernels, reference

CLASSES = [(fastopt.SGD, dict(lr=0.1, momentum=0.9)), (fastopt.Adam, dict(lr=0.01)),
           (fastopt.AdamW, dict(lr=0.01)), (fastopt.RMSprop, dict(lr=0.01, centered=True)),
           (fastopt.Adagrad, dict(lr=0.1)), (fastopt.Lion, dict(lr=0.01)),
           (fastopt.Adamax, dict(lr=0.01)), (fastopt.RAdam, dict(lr=0.01)),
           (fastopt.Adadelta, dict(lr=0.5)), (fastopt.Rprop, dict(lr=0.01)),
           (fastopt.ASGD, dict(lr=0.05, t0=2)), (fastopt.LAMB, dict(lr=0.01))]


def grads_like(shapes, seed, scale=3.0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return [np.asarray(rng.standard_normal(s) * scale, dtype) for s in shapes]


SHAPES = [(40, 30), (1000,), (), (7,)]


@pytest.mark.parametrize("norm_type", [2.0, 1.0, math.inf, 3.0])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_grad_norm_matches_a_float64_computation(norm_type, dtype):
    grads = grads_like(SHAPES, 0, dtype=dtype)
    x = np.concatenate([g.astype(np.float64).reshape(-1) for g in grads])
    expected = np.linalg.norm(x, ord=norm_type)
    got = fastopt.grad_norm(grads, norm_type)
    assert isinstance(got, float)
    assert got == pytest.approx(expected, rel=1e-13)


def test_grad_norm_is_bitwise_the_same_for_any_thread_count(threads):
    grads = grads_like([(300_000,), (5,), (70_001,)], 1)
    norms = set()
    for n in (1, 2, 3, 5):
        threads(n)
        norms.add(fastopt.grad_norm(grads))
    assert len(norms) == 1, norms


def test_grad_norm_propagates_nan_and_inf():
    g = [np.ones(20), np.array([1.0, np.inf])]
    assert fastopt.grad_norm(g) == math.inf
    assert fastopt.grad_norm(g, math.inf) == math.inf
    assert math.isnan(fastopt.grad_norm([np.ones(3), np.array([np.nan])], math.inf))
    assert math.isnan(fastopt.grad_norm([np.array([np.nan]), np.ones(30)]))


def test_clip_grad_norm_follows_torchs_formula():
    grads = grads_like(SHAPES, 2)
    before = snapshot(grads)
    total = fastopt.clip_grad_norm_(grads, max_norm=1.0)
    assert total == pytest.approx(fastopt.grad_norm(before))
    coef = np.float32(1.0 / (total + 1e-6))
    for g, b in zip(grads, before):
        assert_bitwise(g, b * coef, "scaled gradient")
    assert fastopt.grad_norm(grads) == pytest.approx(1.0, rel=1e-5)
    small = [np.full(3, 1e-3, np.float32)]
    fastopt.clip_grad_norm_(small, max_norm=1.0)          # under the limit: untouched
    assert_bitwise(small[0], np.full(3, 1e-3, np.float32), "not clipped")


def test_clip_grad_norm_nonfinite_error_modifies_nothing():
    grads = [np.array([1.0, np.nan]), np.ones(4)]
    before = snapshot(grads)
    with pytest.raises(RuntimeError, match="non-finite"):
        fastopt.clip_grad_norm_(grads, 1.0, error_if_nonfinite=True)
    for g, b in zip(grads, before):
        assert_bitwise(g, b, "after the error")


def test_clip_grad_value():
    g = np.array([-5.0, -0.5, 0.0, 0.5, 5.0, np.nan])
    fastopt.clip_grad_value_([g, None], 1.0)
    assert_bitwise(g, np.array([-1.0, -0.5, 0.0, 0.5, 1.0, np.nan]), "clamped")
    with pytest.raises(ValueError, match="Invalid clip_value"):
        fastopt.clip_grad_value_([g], -1.0)
    with pytest.raises(ValueError, match="C-contiguous"):
        fastopt.clip_grad_value_([np.ones((4, 4))[:, 0]], 1.0)


@pytest.mark.parametrize("cls,kw", CLASSES, ids=[c.__name__ for c, _ in CLASSES])
def test_max_grad_norm_in_the_step_equals_clipping_first(cls, kw):
    """The fused option scales each gradient as the kernel reads it: bitwise the same as
    clip_grad_norm_ on the gradients followed by an unclipped step, and the caller's gradients
    are left untouched."""
    params = grads_like(SHAPES, 3, scale=1.0)
    ref_params = snapshot(params)
    fused = cls([{"params": params[:3], "max_grad_norm": 0.5}, {"params": params[3:]}], **kw)
    plain = cls([{"params": ref_params[:3]}, {"params": ref_params[3:]}], **kw)
    for step in range(5):
        grads = grads_like(SHAPES, 10 + step)
        kept = snapshot(grads)
        fused.step(grads)
        for g, k in zip(grads, kept):
            assert_bitwise(g, k, "the caller's gradient")
        clipped = snapshot(grads)
        norm = fastopt.clip_grad_norm_(clipped[:3], 0.5)
        assert fused.last_grad_norms[0] == norm and fused.last_grad_norms[1] is None
        plain.step(clipped)
    for i, (a, b) in enumerate(zip(params, ref_params)):
        assert_bitwise(a, b, f"{cls.__name__} param {i}")


@pytest.mark.parametrize("cls,kw", CLASSES, ids=[c.__name__ for c, _ in CLASSES])
def test_clip_value_in_the_step_equals_clamping_first(cls, kw):
    params = grads_like(SHAPES, 4, scale=1.0)
    ref_params = snapshot(params)
    fused = cls(params, clip_value=0.7, maximize=True, **kw)
    plain = cls(ref_params, maximize=True, **kw)
    for step in range(4):
        grads = grads_like(SHAPES, 20 + step)
        fused.step(grads)
        clamped = snapshot(grads)
        fastopt.clip_grad_value_(clamped, 0.7)
        plain.step(clamped)
    for i, (a, b) in enumerate(zip(params, ref_params)):
        assert_bitwise(a, b, f"{cls.__name__} param {i}")


def test_kernel_grad_scale_and_clip_match_the_reference(isa):
    rng = np.random.default_rng(5)
    for fn, ref, nstate, extra in [
            (kernels.adam_step, reference.adam_step, 2, dict(step=3)),
            (kernels.sgd_step, reference.sgd_step, 1, dict(momentum=0.9)),
            (kernels.rmsprop_step, reference.rmsprop_step, 1, {}),
            (kernels.lion_step, reference.lion_step, 1, {}),
            (kernels.radam_step, reference.radam_step, 2, dict(step=9))]:
        arrays = [rng.standard_normal(1001).astype(np.float32) for _ in range(2 + nstate)]
        arrays[-1] = np.abs(arrays[-1])
        a, b = snapshot(arrays), snapshot(arrays)
        kw = dict(extra, grad_scale=0.25, clip_value=0.1, maximize=True)
        fn(*a, **kw)
        ref(*b, **kw)
        for x, y in zip(a, b):
            assert_bitwise(x, y, f"{fn.__name__} with grad_scale and clip_value, isa={isa}")


@pytest.mark.parametrize("bad", [dict(max_grad_norm=0.0), dict(max_grad_norm=-1.0),
                                 dict(clip_value=0.0), dict(clip_value=float("nan"))])
def test_bad_clipping_options_are_refused(bad):
    with pytest.raises(ValueError):
        fastopt.Adam([np.zeros(2)], **bad)


def test_a_bad_gradient_is_refused_before_the_norm_pass_reads_it():
    p = np.zeros(5, np.float32)
    opt = fastopt.Adam([p], max_grad_norm=1.0)
    with pytest.raises(ValueError, match=r"grads\[0\]: expected a C-contiguous"):
        opt.step([np.ones((5, 2), np.float32)[:, 0]])
    assert_bitwise(p, np.zeros(5, np.float32), "param")


def test_max_grad_norm_matches_torch():
    torch = pytest.importorskip("torch", reason="optional: pip install torch==2.13.0")
    params = grads_like(SHAPES, 6, scale=1.0, dtype=np.float64)
    tparams = [torch.tensor(p.copy(), requires_grad=True) for p in params]
    ours = fastopt.AdamW(params, lr=0.01, max_grad_norm=0.3)
    theirs = torch.optim.AdamW(tparams, lr=0.01, foreach=False)
    for step in range(20):
        grads = grads_like(SHAPES, 30 + step, dtype=np.float64)
        for t, g in zip(tparams, grads):
            t.grad = torch.from_numpy(g.copy())
        total = torch.nn.utils.clip_grad_norm_(tparams, 0.3)
        theirs.step()
        ours.step(grads)
        assert ours.last_grad_norms[0] == pytest.approx(float(total), rel=1e-12)
    for p, t in zip(params, tparams):
        np.testing.assert_allclose(p, t.detach().numpy(), rtol=1e-11, atol=1e-13)


def test_a_nan_norm_propagates_as_in_torch():
    """torch's clamp keeps a NaN coefficient, so every gradient becomes NaN."""
    g = np.array([np.nan, 1.0, 1.0])
    clipped = g.copy()
    fastopt.clip_grad_norm_([clipped], 1.0)
    assert np.all(np.isnan(clipped))
    p = np.zeros(3)
    fastopt.SGD([p], lr=0.1, max_grad_norm=1.0).step([g.copy()])
    assert np.all(np.isnan(p))


def test_grad_norm_accepts_read_only_gradients():
    g = np.ones(4)
    g.flags.writeable = False
    assert fastopt.grad_norm([g]) == 2.0
