"""Against torch.optim itself, when torch is installed (an optional extra: the CI installs the
CPU wheel torch==2.13.0 when it can). float64 agrees to ~1e-12 relative (torch's CPU kernels may
fuse a*b+c into one FMA where fastopt never does, a difference of about one rounding per
operation); float32 to a few ulps per step, compounded over the steps."""
from __future__ import annotations

import numpy as np
import pytest

import fastopt

torch = pytest.importorskip("torch", reason="optional: pip install torch==2.13.0")

pytestmark = pytest.mark.torch

CASES = [
    ("SGD", dict(lr=0.05)),
    ("SGD", dict(lr=0.05, momentum=0.9, dampening=0.1, weight_decay=1e-2)),
    ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True, maximize=True)),
    ("Adam", dict(lr=1e-2)),
    ("Adam", dict(lr=1e-2, weight_decay=0.1, amsgrad=True)),
    ("Adam", dict(lr=1e-2, betas=(0.3, 0.5), eps=1e-3, maximize=True)),
    ("AdamW", dict(lr=1e-2)),
    ("AdamW", dict(lr=1e-2, weight_decay=0.3, amsgrad=True)),
    ("RMSprop", dict(lr=1e-2)),
    ("RMSprop", dict(lr=1e-2, momentum=0.9, weight_decay=0.1, maximize=True)),
    ("RMSprop", dict(lr=1e-3, centered=True, momentum=0.5, alpha=0.9)),
    ("Adagrad", dict(lr=0.1)),
    ("Adagrad", dict(lr=0.1, lr_decay=0.05, weight_decay=0.1, initial_accumulator_value=0.5)),
    ("Adamax", dict(lr=2e-3)),
    ("Adamax", dict(lr=2e-3, weight_decay=0.1, betas=(0.3, 0.9), maximize=True)),
    ("RAdam", dict(lr=1e-2)),
    ("RAdam", dict(lr=1e-2, weight_decay=0.1)),
    ("RAdam", dict(lr=1e-2, weight_decay=0.1, decoupled_weight_decay=True, betas=(0.3, 0.9))),
    ("NAdam", dict(lr=2e-3)),
    ("NAdam", dict(lr=2e-3, weight_decay=0.1, momentum_decay=0.01, maximize=True)),
    ("NAdam", dict(lr=2e-3, weight_decay=0.1, decoupled_weight_decay=True, betas=(0.3, 0.9))),
    ("Adadelta", dict()),
    ("Adadelta", dict(lr=0.5, rho=0.5, eps=1e-4, weight_decay=0.1, maximize=True)),
    ("Rprop", dict()),
    ("Rprop", dict(lr=0.05, etas=(0.3, 1.5), step_sizes=(1e-3, 0.2), maximize=True)),
    ("ASGD", dict()),
    ("ASGD", dict(lr=0.05, lambd=1e-2, alpha=0.6, t0=5, weight_decay=0.1, maximize=True)),
]


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("name,kw", CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CASES)])
def test_trajectory_matches_torch(name, kw, dtype):
    rng = np.random.default_rng(0)
    shapes = [(13, 7), (101,), ()]
    params = [np.asarray(rng.standard_normal(s), dtype=dtype) for s in shapes]
    tparams = [torch.tensor(p.copy(), requires_grad=True) for p in params]
    ours = getattr(fastopt, name)(params, **kw)
    theirs = getattr(torch.optim, name)(tparams, foreach=False, **kw)
    steps = 30
    for step in range(steps):
        grads = [np.asarray(rng.standard_normal(s), dtype=dtype) for s in shapes]
        if step % 7 == 3:
            grads[1] = None
        for t, g in zip(tparams, grads):
            t.grad = None if g is None else torch.from_numpy(g.copy())
        theirs.step()
        ours.step(grads)
    for i, (p, t) in enumerate(zip(params, tparams)):
        expected = t.detach().numpy()
        if dtype == np.float64:
            np.testing.assert_allclose(p, expected, rtol=1e-12, atol=1e-14,
                                       err_msg=f"{name} {kw} param {i}")
        else:
            # a few ulps per step, compounded over 30 steps: 2e-5 relative, 1e-6 absolute
            np.testing.assert_allclose(p, expected, rtol=2e-5, atol=1e-6,
                                       err_msg=f"{name} {kw} param {i}")


def test_state_dict_keys_match_torch():
    p = np.ones(3)
    t = torch.ones(3, dtype=torch.float64, requires_grad=True)
    ours = fastopt.Adam([p], amsgrad=True)
    theirs = torch.optim.Adam([t], amsgrad=True)
    ours.step([np.ones(3)])
    t.grad = torch.ones(3, dtype=torch.float64)
    theirs.step()
    assert set(ours.state_dict()["state"][0]) == set(theirs.state_dict()["state"][0])
    # l1, max_grad_norm, clip_value and the storage options: fastopt's additions
    ours_keys = set(ours.state_dict()["param_groups"][0]) - {
        "l1", "max_grad_norm", "clip_value", "master_weights", "rounding", "state_dtype"}
    assert ours_keys <= set(theirs.state_dict()["param_groups"][0])
