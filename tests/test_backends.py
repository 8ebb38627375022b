"""The two backends against each other: the native extension and the NumPy fallback
(FASTOPT_PUREPYTHON=1) are documented as bitwise identical. Here: the gradient norm of the
native driver against fastopt.reference.grad_norm (the fallback's norm), and whole training
runs of every optimizer with norm and value clipping, in one process per backend."""
from __future__ import annotations

import math
import os
import subprocess
import sys
import tempfile
import textwrap

import numpy as np
import pytest

import fastopt
from fastopt import reference

NATIVE = fastopt.config()["backend"] == "native"
needs_native = pytest.mark.skipif(
    not NATIVE, reason=f"the native extension is not in use (backend: "
                       f"{fastopt.config()['backend']}): nothing to compare the fallback with")

NORM_TYPES = [2.0, 1.0, math.inf]
# around every SIMD width and unroll (2, 4, 8, 16 lanes; 8 accumulators), around the 8192-element
# block, and several blocks with a partial last one
EDGE_SIZES = [0, 1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 23, 24, 25, 31, 32, 33, 63, 64, 65, 127, 128,
              129, 1023, 1024, 1025, 8183, 8184, 8191, 8192, 8193, 8200, 16383, 16384, 16385,
              24577, 40_000]


def _bits(x: float) -> bytes:
    return np.float64(x).tobytes()


def _native_norm(arrays, norm_type):
    from fastopt._backend import native  # the compiled extension (NATIVE checked)
    return native.grad_norm(arrays, norm_type, fastopt.get_num_threads())


def _scale(rng, dtype):
    """A magnitude for one array: ordinary, tiny or huge (for float64 also values whose squares
    are subnormal, underflow to zero, or overflow to inf)."""
    if dtype == np.float64:
        kind = rng.choice(["unit", "wide", "subnormal-square", "underflow", "huge", "overflow"])
        return {"unit": 1.0, "wide": 10.0 ** rng.uniform(-30, 30),
                "subnormal-square": 10.0 ** rng.uniform(-162, -155),
                "underflow": 10.0 ** rng.uniform(-175, -163),
                "huge": 10.0 ** rng.uniform(140, 153),
                "overflow": 10.0 ** rng.uniform(154, 160)}[kind]
    kind = rng.choice(["unit", "wide", "subnormal", "tiny", "huge"])
    return {"unit": 1.0, "wide": 10.0 ** rng.uniform(-15, 15),
            "subnormal": 10.0 ** rng.uniform(-44, -39), "tiny": 10.0 ** rng.uniform(-37, -30),
            "huge": 10.0 ** rng.uniform(30, 37.5)}[kind]


def random_case(seed, dtype):
    """A seeded list of gradients: 0 to 6 arrays (sometimes many small ones) of edge or random
    sizes and shapes, each with its own scale; dtype "mixed" draws each array's dtype."""
    rng = np.random.default_rng(seed)
    count = int(rng.choice([0, 1, 1, 2, 3, 4, 6, 40]))
    arrays = []
    for _ in range(count):
        dt = rng.choice([np.float32, np.float64]) if dtype == "mixed" else dtype
        if count > 6:
            n = int(rng.integers(0, 300))
        elif rng.random() < 0.6:
            n = int(rng.choice(EDGE_SIZES))
        else:
            n = int(rng.integers(0, 50_000))
        x = rng.standard_normal(n) * _scale(rng, dt)
        if rng.random() < 0.2:
            x = x + rng.standard_normal() * _scale(rng, dt)       # a common offset
        with np.errstate(over="ignore"):
            a = x.astype(dt)
        if n == 1 and rng.random() < 0.5:
            a = a.reshape(())
        elif n % 8 == 0 and n and rng.random() < 0.5:
            a = a.reshape(-1, 8)
        arrays.append(a)
    return arrays


CASES = ([(s, np.float64) for s in range(200)] + [(1000 + s, np.float32) for s in range(200)]
         + [(2000 + s, "mixed") for s in range(40)])


@needs_native
def test_native_grad_norm_is_the_reference_bitwise(isa):
    """fastopt._kernels.grad_norm against fastopt.reference.grad_norm, bit for bit, over seeded
    gradients of both dtypes, every norm type, on every instruction set, with one thread and
    with several (the block partition makes the thread count irrelevant)."""
    from fastopt._backend import native
    old_grain = native.set_parallel_grain(1)
    try:
        bad = []
        for seed, dtype in CASES:
            arrays = random_case(seed, dtype)
            for norm_type in NORM_TYPES:
                want = reference.grad_norm(arrays, norm_type)
                for nthreads in (1, 3):
                    got = native.grad_norm(arrays, norm_type, nthreads)
                    if _bits(got) != _bits(want):
                        bad.append(f"seed {seed} {getattr(dtype, '__name__', dtype)} "
                                   f"norm {norm_type} threads {nthreads}: native {got!r} "
                                   f"reference {want!r}")
        assert not bad, f"{isa}: {len(bad)} mismatches, e.g.\n" + "\n".join(bad[:10])
    finally:
        native.set_parallel_grain(old_grain)


@needs_native
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", EDGE_SIZES)
def test_native_grad_norm_is_the_reference_at_every_size(n, dtype, isa):
    rng = np.random.default_rng(n)
    arrays = [np.asarray(rng.standard_normal(n) * 3.0, dtype),
              np.asarray(rng.standard_normal(n % 97), dtype)]
    for norm_type in NORM_TYPES:
        for case in (arrays[:1], arrays, arrays[::-1]):
            assert _bits(_native_norm(case, norm_type)) == _bits(
                reference.grad_norm(case, norm_type)), (n, norm_type, len(case))


@needs_native
def test_native_grad_norm_of_nothing_is_zero():
    for norm_type in NORM_TYPES:
        for arrays in ([], [np.zeros(0)], [np.zeros(0, np.float32), np.zeros((0, 5))]):
            assert _bits(_native_norm(arrays, norm_type)) == _bits(0.0)
            assert _bits(reference.grad_norm(arrays, norm_type)) == _bits(0.0)


def _nan(rng, dtype):
    """A quiet NaN with a random payload and sign."""
    if dtype == np.float32:
        bits = np.uint32(0x7FC00000 | int(rng.integers(1, 1 << 22)) | (int(rng.integers(2)) << 31))
        return bits.view(np.float32)
    bits = np.uint64(0x7FF8000000000000 | int(rng.integers(1, 1 << 51))
                     | (int(rng.integers(2)) << 63))
    return bits.view(np.float64)


@needs_native
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_native_grad_norm_of_nan_and_inf_is_the_reference(dtype, isa):
    """Infinities and NaNs (with distinct payloads) at random places. The inf norm picks one of
    its inputs, so it must be the same NaN, bit for bit. A sum returns its only NaN input
    unchanged, so with one NaN the L1 and L2 norms are bitwise too; with several, which NaN an
    addition returns is the hardware's and the compiler's choice (operand order), so there
    only NaN-ness is compared."""
    rng = np.random.default_rng(7)
    for case in range(150):
        arrays = []
        nans = 0
        for _ in range(int(rng.integers(1, 4))):
            n = int(rng.choice([1, 8, 9, 100, 8191, 8192, 8193, 20_000]))
            a = rng.standard_normal(n).astype(dtype)
            for _ in range(int(rng.choice([0, 0, 1, 1, 2, 5]))):
                a[rng.integers(n)] = _nan(rng, dtype)
            if rng.random() < 0.3:
                a[rng.integers(n)] = rng.choice([-np.inf, np.inf])
            nans += int(np.isnan(a).sum())
            arrays.append(a)
        for norm_type in NORM_TYPES:
            got, want = _native_norm(arrays, norm_type), reference.grad_norm(arrays, norm_type)
            if norm_type == math.inf or nans <= 1:
                assert _bits(got) == _bits(want), (case, norm_type, nans, got, want)
            else:
                assert math.isnan(got) and math.isnan(want), (case, norm_type, got, want)


# ---- training: the same 30 steps with each backend ------------------------------------------

TRAIN = textwrap.dedent("""
    import sys
    import numpy as np
    import fastopt

    out = sys.argv[1]
    CLASSES = [
        ("SGD", fastopt.SGD, dict(lr=0.05, momentum=0.9)),
        ("SGD-nesterov", fastopt.SGD, dict(lr=0.05, momentum=0.9, nesterov=True,
                                           weight_decay=0.01)),
        ("Adam", fastopt.Adam, dict(lr=0.01)),
        ("AdamW", fastopt.AdamW, dict(lr=0.01, weight_decay=0.1)),
        ("RMSprop", fastopt.RMSprop, dict(lr=0.01, momentum=0.5, centered=True)),
        ("Adagrad", fastopt.Adagrad, dict(lr=0.1)),
        ("Adamax", fastopt.Adamax, dict(lr=0.01)),
        ("NAdam", fastopt.NAdam, dict(lr=0.01)),
        ("RAdam", fastopt.RAdam, dict(lr=0.01)),
        ("Lion", fastopt.Lion, dict(lr=0.001, weight_decay=0.1)),
        ("Adadelta", fastopt.Adadelta, dict(lr=0.5, weight_decay=0.01)),
        ("Rprop", fastopt.Rprop, dict(lr=0.01)),
        ("ASGD", fastopt.ASGD, dict(lr=0.01, t0=10, lambd=1e-2, weight_decay=0.01)),
        ("LAMB", fastopt.LAMB, dict(lr=0.01)),
    ]
    SIZES = [1, 33, 8193, 20_000]
    VARIANTS = {"norm": dict(max_grad_norm=1.0),
                "norm+value": dict(max_grad_norm=2.0, clip_value=0.02),
                # loss scaling: gradients scaled by 1000 (not a power of two), divided inside
                # the step, and every 7th step carries an inf: the step is skipped whole
                "norm+lossscale": dict(max_grad_norm=1.0, grad_scale=1000.0)}
    result = {"backend": np.array(fastopt.config()["backend"])}
    for c, (name, cls, kw) in enumerate(CLASSES):
        for v, (variant, clip) in enumerate(VARIANTS.items()):
            rng = np.random.default_rng(10 * c + v)
            params = [rng.standard_normal(n).astype(dt)
                      for dt in (np.float32, np.float64) for n in SIZES]
            clip = dict(clip)
            scale = clip.pop("grad_scale", None)
            groups = [{"params": params[:4], **clip}, {"params": params[4:], **clip}]
            opt = cls(groups, **kw)
            key = f"{name}/{variant}"
            norms, applied = [], []
            for step in range(30):
                grads = [(rng.standard_normal(p.shape) * 0.7 + 0.1).astype(p.dtype)
                         for p in params]
                if scale is None:
                    applied.append(opt.step(grads))
                else:
                    grads = [g * g.dtype.type(scale) for g in grads]
                    if step % 7 == 3:
                        grads[5][-1] = np.inf
                    applied.append(opt.step(grads, grad_scale=scale))
                norms.append(opt.last_grad_norms)
            result[f"{key}/norms"] = np.array(norms, np.float64)
            result[f"{key}/applied"] = np.array(applied)
            for i, p in enumerate(params):
                result[f"{key}/param{i}"] = p
                for k, v in opt.state[i].items():
                    result[f"{key}/state{i}/{k}"] = np.asarray(v)
    np.savez(out, **result)
""")


def _train(tmp_path, purepython: bool) -> dict:
    script = tmp_path / "train.py"
    script.write_text(TRAIN)
    out = tmp_path / ("numpy.npz" if purepython else "native.npz")
    env = {k: v for k, v in os.environ.items() if k not in ("FASTOPT_PUREPYTHON", "FASTOPT_ISA")}
    if purepython:
        env["FASTOPT_PUREPYTHON"] = "1"
    subprocess.run([sys.executable, str(script), str(out)], env=env, check=True, timeout=120,
                   cwd=tempfile.gettempdir())
    with np.load(out) as f:
        return {k: f[k] for k in f.files}


@needs_native
def test_training_is_bitwise_the_same_on_both_backends(tmp_path):
    """30 steps of every optimizer class with gradient-norm clipping (and with norm and value
    clipping), float32 and float64 params across the 8192-element norm block, one process with
    the native extension and one with FASTOPT_PUREPYTHON=1: every param, state array and
    recorded gradient norm must be the same bits."""
    native = _train(tmp_path, purepython=False)
    fallback = _train(tmp_path, purepython=True)
    assert str(native.pop("backend")) == "native"
    assert str(fallback.pop("backend")).startswith("numpy")
    assert native.keys() == fallback.keys()
    differ = [k for k in native
              if native[k].dtype != fallback[k].dtype or native[k].shape != fallback[k].shape
              or not np.array_equal(native[k].reshape(-1).view(np.uint8),
                                 fallback[k].reshape(-1).view(np.uint8))]
    assert not differ, f"{len(differ)} of {len(native)} arrays differ: {differ[:12]}"
