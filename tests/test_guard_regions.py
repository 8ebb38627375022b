"""Nothing is ever written outside an array: params, gradients and state buffers are views into
larger buffers whose surrounding bytes hold a random pattern, and after several steps of every
rule (every state buffer in use, sizes around the SIMD widths and the threading grain) the
pattern is bitwise intact. Covers the NumPy optimizers' frame, the kernel API's lists, state
buffers replaced by the user, and the torch frontend's raw descriptors."""
from __future__ import annotations

import numpy as np
import pytest

import fastopt

PAD = 48                      # elements of guard on each side
SIZES = [1, 7, 17, 33, 4099]
RULES = {
    "SGD": dict(momentum=0.9, nesterov=True, lr=0.1),
    "Adam": dict(amsgrad=True, weight_decay=0.1),
    "AdamW": dict(amsgrad=True),
    "RMSprop": dict(momentum=0.5, centered=True),
    "Adagrad": dict(lr_decay=0.01),
    "Lion": dict(),
    "Adamax": dict(),
    "RAdam": dict(),
    "NAdam": dict(),
    "Adadelta": dict(weight_decay=0.1),
    "Rprop": dict(),
    "ASGD": dict(t0=1),
    "LAMB": dict(),
}


class Guarded:
    """Views of n elements inside buffers padded with a random bit pattern."""

    def __init__(self, dtype, seed):
        self.rng = np.random.default_rng(seed)
        self.dtype = np.dtype(dtype)
        self.buffers = []

    def view(self, n, values=None):
        buf = np.empty(n + 2 * PAD, self.dtype)
        buf.view(np.uint8)[...] = self.rng.integers(0, 256, buf.nbytes, dtype=np.uint8)
        v = buf[PAD:PAD + n]
        v[...] = self.rng.standard_normal(n) if values is None else values
        self.buffers.append((buf, buf[:PAD].tobytes(), buf[PAD + n:].tobytes(), n))
        return v

    def assert_intact(self, context):
        for buf, head, tail, n in self.buffers:
            assert buf[:PAD].tobytes() == head, f"{context}: written before an array"
            assert buf[PAD + n:].tobytes() == tail, f"{context}: written after an array"


@pytest.mark.parametrize("name", RULES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_numpy_optimizer_writes_only_inside(name, dtype, threads):
    threads(2)
    g = Guarded(dtype, 1)
    params = [g.view(n) for n in SIZES]
    opt = getattr(fastopt, name)(params, **RULES[name], max_grad_norm=10.0)
    for step in range(3):
        opt.step([g.view(n) for n in SIZES])
        if step == 0:       # replace every state buffer by a guarded view of its values
            for st in opt.state.values():
                for key, a in list(st.items()):
                    if isinstance(a, np.ndarray) and a.ndim > 0:
                        st[key] = g.view(a.size, a.reshape(-1)).reshape(a.shape)
    g.assert_intact(f"{name} {np.dtype(dtype).name}")
    assert all(np.all(np.isfinite(p)) for p in params)


def test_kernel_api_writes_only_inside(threads):
    threads(2)
    g = Guarded(np.float32, 2)
    ps = [g.view(n) for n in SIZES]
    ms, vs, mx = ([g.view(n, 0.0) for n in SIZES] for _ in range(3))
    for step in range(1, 4):
        fastopt.kernels.adam(ps, [g.view(n) for n in SIZES], ms, vs, mx, [step] * len(SIZES),
                             lr=1e-2)
    g.assert_intact("kernels.adam")


@pytest.mark.parametrize("name", RULES)
def test_torch_frontend_writes_only_inside(name):
    torch = pytest.importorskip("torch", reason="the torch frontend needs torch")
    import fastopt.torch as ft
    if fastopt.config()["backend"] != "native":
        pytest.skip("fastopt.torch's native path needs the native build")
    rng = torch.Generator().manual_seed(0)
    stores, params = [], []

    def guarded(n):
        big = torch.randn(n + 2 * PAD, generator=rng)
        stores.append((big, big[:PAD].clone(), big[PAD + n:].clone(), n))
        return big[PAD:PAD + n]

    for n in SIZES:
        params.append(torch.nn.Parameter(guarded(n)))
    opt = getattr(ft, name)(params, **RULES[name])
    for step in range(3):
        for p in params:
            p.grad = guarded(p.numel())
        opt.step()
        if step == 0:
            for p in params:
                st = opt.state[p]
                for key, t in list(st.items()):
                    if isinstance(t, torch.Tensor) and t.dim() > 0:
                        v = guarded(t.numel())
                        v.copy_(t)
                        st[key] = v
    for big, head, tail, n in stores:
        assert torch.equal(big[:PAD], head) and torch.equal(big[PAD + n:], tail), name
    assert all(bool(torch.isfinite(p).all()) for p in params)
