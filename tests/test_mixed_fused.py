"""The fused mixed-storage loop bodies (kernels_body.h's storage hooks, csrc/fastopt.h's
FO_MIX_LIST) against the tile adapter of csrc/storage.c, bit for bit.

The adapter stays reachable through ``mixed_fusion(False)``: every storage class with a fused
body is stepped both ways from the same bits, on every instruction set, on sizes around every
vector width and the adapter's 256-element tile, at offsets into larger guarded buffers, with
NaN (of both signs and several payloads), infinities, values that round to infinity, and
subnormals in every stream; the results (params, master copies, states) must be the same bits
(see STRICT and NANS for NaN) and nothing outside the arrays may change.
"""
from __future__ import annotations

import numpy as np
import pytest

import fastopt

ml_dtypes = pytest.importorskip("ml_dtypes", reason="bfloat16 arrays need ml_dtypes")
BF16 = np.dtype(ml_dtypes.bfloat16)
F16 = np.dtype(np.float16)
F32 = np.dtype(np.float32)
if fastopt.config()["backend"] != "native":
    pytest.skip("tests the compiled kernels", allow_module_level=True)
from fastopt._backend import native as K  # noqa: E402

ISAS = [n for n in K.isa_compiled() if K.isa_supported(n)]
SIZES = list(range(1, 41)) + [63, 64, 65, 255, 256, 257, 1000]
PAD = 24

# storage class -> (optimizer options, gradient dtype)
CLASSES = {
    "bf16+master": (dict(master_weights=True), BF16),
    "bf16+master, f32 grads": (dict(master_weights=True), F32),
    "bf16+master, bf16 states": (dict(master_weights=True, state_dtype=BF16), BF16),
    "bf16+master, f32 grads, bf16 states": (dict(master_weights=True, state_dtype=BF16), F32),
    "bf16+f32 states": (dict(state_dtype=np.float32), BF16),
    "bf16+f32 states, f32 grads": (dict(state_dtype=np.float32), F32),
    "bf16 (torch default)": (dict(), BF16),
    "bf16, f32 grads": (dict(), F32),
}

# Adam's flag sets: amsgrad, coupled L2 / decoupled decay, lerp weight below or above 0.5, and
# the gradient terms (clip by value, L1, maximize) that select the fused bodies' other loops
RULES = {
    "adam": ("Adam", dict(lr=1e-2)),
    "adamw amsgrad": ("AdamW", dict(lr=1e-2, amsgrad=True, weight_decay=0.1)),
    "adam l2 beta1=0.3": ("Adam", dict(lr=1e-2, weight_decay=0.05, betas=(0.3, 0.999))),
    "adam l2 amsgrad beta1=0.3": ("Adam", dict(lr=1e-3, weight_decay=0.05, amsgrad=True,
                                               betas=(0.3, 0.9))),
    "adamw clip l1 maximize": ("AdamW", dict(lr=1e-2, clip_value=0.5, l1=1e-3, maximize=True)),
    "adam amsgrad clip": ("Adam", dict(lr=1e-2, amsgrad=True, clip_value=1.0)),
}

# float32 bit patterns placed into the streams: the infinities, the largest values (which
# round to infinity in bfloat16), float32 and bfloat16 subnormals, zeros of both signs, ties of
# the bfloat16 rounding, and NaN. STRICT's one NaN is x86's default NaN (what invalid
# operations make, kept by quieting, narrowing and widening), so every NaN of such a step has
# the same bits and both paths must agree on every bit. NANS adds NaN of both signs with other
# payloads: where two different NaNs meet in one operation, which one propagates follows the
# operand order the compiler picked for that instruction, which already differs between the
# adapter's own instruction sets; there the results must agree except in the bits of a NaN.
STRICT = np.array([0xFFC00000, 0x7F800000, 0xFF800000, 0x7F7FFFFF, 0xFF7FFFFF, 0x7F7F8000,
                   0xFF7F8000, 0x00000001, 0x80000001, 0x00010000, 0x80018000, 0x007FFFFF,
                   0x00000000, 0x80000000, 0x3F808000, 0x3F818000, 0xBF808000],
                  np.uint32).view(np.float32)
NANS = np.concatenate([STRICT, np.array([0x7FC00000, 0x7F810000, 0xFFA5A5A5, 0x7FBFFFFF,
                                         0xFFC10000], np.uint32).view(np.float32)])


def _bits(a):
    a = np.ascontiguousarray(a)
    return a.view(np.uint16 if a.dtype.itemsize == 2 else np.uint32).copy()


def _values(rng, n, dtype, specials, scale=1.0):
    x = (rng.standard_normal(n) * scale).astype(np.float32)
    if specials is not None and n > 2:
        k = rng.choice(n, size=min(n // 3, specials.size), replace=False)
        x[k] = rng.choice(specials, size=k.size)
    if dtype == BF16:
        return (x.view(np.uint32) >> np.uint32(16)).astype(np.uint16).view(BF16)  # (truncated)
    return x.astype(dtype)


class _Guarded:
    """Arrays placed at a given element offset inside larger buffers of random bytes."""

    def __init__(self, rng):
        self.rng = rng
        self.keep = []

    def place(self, a, offset):
        a = np.ascontiguousarray(a).reshape(-1)
        buf = np.empty(a.size + offset + PAD, a.dtype)
        buf.view(np.uint8)[...] = self.rng.integers(0, 256, buf.nbytes, dtype=np.uint8)
        v = buf[offset:offset + a.size]
        v[...] = a
        self.keep.append((buf, offset, a.size, buf[:offset].tobytes(),
                          buf[offset + a.size:].tobytes()))
        return v

    def check(self):
        for buf, off, n, head, tail in self.keep:
            assert buf[:off].tobytes() == head and buf[off + n:].tobytes() == tail


def _run(fused, storage, rule, sizes, offsets, seed, specials, nsteps=3):
    opts, gdt = CLASSES[storage]
    cls, kw = RULES[rule]
    rng = np.random.default_rng(seed)
    guard = _Guarded(np.random.default_rng(seed + 1))
    params = [guard.place(_values(rng, n, BF16, specials), off) for n, off in zip(sizes, offsets)]
    opt = getattr(fastopt, cls)(params, **kw, **opts)
    old = K.mixed_fusion(fused)
    try:
        for step in range(nsteps):
            grads = [guard.place(_values(rng, n, gdt, specials, 1e-1), off)
                     for n, off in zip(sizes, offsets)]
            opt.step(grads)
            if step == 0:
                # every state (master copy too) moved to an offset view, with special values
                for i, st in opt.state.items():
                    for key in sorted(st):
                        a = st[key]
                        if isinstance(a, np.ndarray) and a.ndim > 0:
                            b = a.reshape(-1).copy()
                            if specials is not None and b.size > 2:
                                b = _values(rng, b.size, b.dtype, specials, 1e-2)
                            st[key] = guard.place(b, offsets[i]).reshape(a.shape)
    finally:
        K.mixed_fusion(old)
    guard.check()
    out = [_bits(p) for p in params]
    for i in range(len(params)):
        for key in sorted(opt.state[i]):
            a = opt.state[i][key]
            if isinstance(a, np.ndarray) and a.ndim > 0:
                out.append(_bits(a))
    return out


def test_the_switch_and_the_storage_classes():
    assert K.mixed_fusion() is True
    none = [K.DT_NONE] * K.MAX_STREAMS

    def dts(p, g, s1, s2, s3=K.DT_NONE, m=K.DT_NONE):
        d = list(none)
        d[0], d[1], d[2], d[3], d[4], d[5] = p, g, s1, s2, s3, m
        return d

    bf, f32 = K.DT_BF16, K.DT_F32
    fused = [dts(bf, bf, f32, f32, m=f32), dts(bf, f32, f32, f32, f32, m=f32),
             dts(bf, bf, bf, bf, m=f32), dts(bf, f32, bf, bf, bf, m=f32),
             dts(bf, bf, f32, f32), dts(bf, f32, f32, f32), dts(bf, bf, bf, bf),
             dts(bf, f32, bf, bf, bf)]
    classes = [K.mixed_class(d) for d in fused]
    assert sorted(set(classes)) == list(range(8))
    # stochastic rounding of a 16-bit stream, Kahan, float16, mixed or 8-bit states: adapter
    assert K.mixed_class(dts(bf, bf, bf, bf), stochastic=True) == -1
    assert K.mixed_class(dts(bf, bf, f32, f32), stochastic=True) == -1
    assert K.mixed_class(dts(bf, bf, f32, f32, m=f32), stochastic=True) >= 0   # master: nearest
    assert K.mixed_class(dts(bf, bf, bf, bf, m=bf)) == -1
    assert K.mixed_class(dts(K.DT_F16, K.DT_F16, f32, f32, m=f32)) == -1
    assert K.mixed_class(dts(f32, f32, bf, bf)) == -1
    assert K.mixed_class(dts(bf, bf, f32, bf)) == -1
    q8 = dts(bf, bf, K.DT_Q8S, f32, m=f32)
    q8[K.STREAM_A1] = K.DT_ABSMAX
    assert K.mixed_class(q8) == -1
    old = K.mixed_fusion(False)
    try:
        assert old is True and K.mixed_fusion() is False
        assert K.mixed_class(fused[0]) == -1
    finally:
        K.mixed_fusion(old)
    assert K.mixed_fusion() is True


def _same(a, b, nan_bits):
    """Bitwise equal; with nan_bits=False a NaN in both may differ in its bits."""
    assert len(a) == len(b)
    for k, (x, y) in enumerate(zip(a, b)):
        if nan_bits:
            assert np.array_equal(x, y), k
        elif x.dtype == np.uint32:
            fx, fy = x.view(np.float32), y.view(np.float32)
            assert np.array_equal(x[~np.isnan(fx)], y[~np.isnan(fx)]), k
            assert np.array_equal(np.isnan(fx), np.isnan(fy)), k
        else:
            nx = ((x & 0x7F80) == 0x7F80) & ((x & 0x7F) != 0)
            ny = ((y & 0x7F80) == 0x7F80) & ((y & 0x7F) != 0)
            assert np.array_equal(nx, ny) and np.array_equal(x[~nx], y[~nx]), k


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("storage", CLASSES)
def test_fused_bodies_equal_the_tile_adapter_bitwise(storage, rule, isa, threads):
    old = fastopt.set_isa(isa)
    try:
        threads(1)
        offsets = [(3 * n) % 17 for n in SIZES]      # 0..16 elements off the buffer's start
        seed = sum(map(ord, storage + rule))
        for specials in (None, STRICT):
            _same(_run(True, storage, rule, SIZES, offsets, seed, specials),
                  _run(False, storage, rule, SIZES, offsets, seed, specials), True)
    finally:
        fastopt.set_isa(old)


@pytest.mark.parametrize("rule", ["adam", "adamw amsgrad", "adam l2 amsgrad beta1=0.3"])
@pytest.mark.parametrize("storage", CLASSES)
def test_nan_payloads_differ_only_where_the_adapters_own_paths_differ(storage, rule, threads):
    threads(1)
    offsets = [(5 * n) % 13 for n in SIZES]
    seed = sum(map(ord, rule + storage))
    runs = []
    for isa in ISAS:
        old = fastopt.set_isa(isa)
        try:
            runs += [_run(f, storage, rule, SIZES, offsets, seed, NANS) for f in (False, True)]
        finally:
            fastopt.set_isa(old)
    for r in runs[1:]:
        _same(runs[0], r, False)


@pytest.mark.parametrize("storage", ["bf16+master", "bf16 (torch default)"])
def test_fused_bodies_are_the_same_for_any_thread_count_and_instruction_set(storage, threads):
    sizes = [5000, 4099, 257, 31]
    offsets = [1, 0, 7, 3]
    runs = []
    for isa in ISAS:
        old = fastopt.set_isa(isa)
        try:
            for nt in (1, 2):
                threads(nt)
                runs.append(_run(True, storage, "adamw amsgrad", sizes, offsets, 5, STRICT))
        finally:
            fastopt.set_isa(old)
    threads(2)
    runs.append(_run(False, storage, "adamw amsgrad", sizes, offsets, 5, STRICT))
    for r in runs[1:]:
        _same(runs[0], r, True)
