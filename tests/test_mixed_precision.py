"""Mixed precision: float16 and bfloat16 params and states, float32 master weights, stochastic
and Kahan rounding, loss scaling that skips cleanly (csrc/storage.c, fastopt.reference.Mixed).

Oracles: ml_dtypes (bfloat16) and NumPy (float16) for rounding to nearest, bit for bit; the
exact fraction of the 2^16 draws for stochastic rounding; a float32 run for master weights
(the master is updated by the float32 body, so it must equal the float32 run bitwise); a
float64 run of each rule for the per-step error of every storage combination, bounded in ULPs
of the 16-bit type.
"""
from __future__ import annotations

import numpy as np
import pytest

import fastopt
from fastopt import reference

ml_dtypes = pytest.importorskip("ml_dtypes", reason="bfloat16 arrays need ml_dtypes "
                                "(pip install 'fastopt[bf16]')")
BF16 = np.dtype(ml_dtypes.bfloat16)
F16 = np.dtype(np.float16)
F32 = np.dtype(np.float32)
NATIVE = fastopt.config()["backend"] == "native"
needs_native = pytest.mark.skipif(not NATIVE, reason="tests the compiled conversions "
                                  f"(backend: {fastopt.config()['backend']})")
if NATIVE:
    from fastopt._backend import native as K
    ISAS = [n for n in K.isa_compiled() if K.isa_supported(n)]
else:
    K = None
    ISAS = []

# sizes around the SIMD widths (8, 16 lanes), the unroll and the adapter's 256-element tile
SIZES = [1, 7, 8, 9, 15, 16, 17, 255, 256, 257, 1000]


def _bits16(a):
    return np.ascontiguousarray(a).view(np.uint16)


def _patterns():
    """2^23 float32 bit patterns: every value of the upper 20 bits with 8 lower patterns that
    hold every rounding case of both 16-bit types (exact, below, at and above ties)."""
    lows = np.array([0x000, 0x001, 0x7FF, 0x800, 0x801, 0xFFF, 0x5A5, 0xA5A], np.uint32)
    hi = np.arange(1 << 20, dtype=np.uint32) << np.uint32(12)
    return (hi[:, None] | lows[None, :]).reshape(-1).view(np.float32)


# ---- 1. conversions -------------------------------------------------------------------------

@needs_native
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dt", ["bf16", "f16"])
def test_every_simd_path_equals_the_scalar_conversion(isa, dt):
    code = K.DT_BF16 if dt == "bf16" else K.DT_F16
    assert K.convert_check_all(isa, code) == 0


@needs_native
@pytest.mark.parametrize("isa", ISAS)
def test_nearest_bfloat16_is_ml_dtypes_bit_for_bit(isa):
    x = _patterns()
    out = np.empty(x.size, BF16)
    K.convert(x, out, isa=isa)
    with np.errstate(all="ignore"):
        want = x.astype(BF16)
    assert np.array_equal(_bits16(out), _bits16(want))          # NaN included: same bits
    wide = np.empty(1 << 16, F32)
    K.convert(np.arange(1 << 16, dtype=np.uint16).view(BF16), wide, isa=isa)
    assert np.array_equal(wide.view(np.uint32),
                          np.arange(1 << 16, dtype=np.uint32) << np.uint32(16))


@needs_native
@pytest.mark.parametrize("isa", ISAS)
def test_nearest_float16_is_numpy_bit_for_bit(isa):
    x = _patterns()
    out = np.empty(x.size, F16)
    K.convert(x, out, isa=isa)
    with np.errstate(all="ignore"):
        want = x.astype(F16)
    nan = np.isnan(x)
    assert np.array_equal(_bits16(out)[~nan], _bits16(want)[~nan])
    # NaN stays NaN with its sign (the payload is quieted, as F16C does)
    assert np.isnan(out[nan]).all()
    assert np.array_equal(np.signbit(out[nan]), np.signbit(x[nan]))
    every = np.arange(1 << 16, dtype=np.uint16).view(F16)
    wide = np.empty(1 << 16, F32)
    K.convert(every, wide, isa=isa)
    ok = ~np.isnan(every)
    assert np.array_equal(wide[ok].view(np.uint32), every[ok].astype(F32).view(np.uint32))
    assert np.isnan(wide[~ok]).all()
    assert np.array_equal(np.signbit(wide[~ok]), np.signbit(every[~ok]))


@pytest.mark.parametrize("dtype", [BF16, F16], ids=["bf16", "f16"])
def test_special_values_round_as_ieee_says(dtype):
    big = float(np.finfo(np.float32).max) if dtype == BF16 else 65520.0   # rounds to Inf
    x = np.array([np.inf, -np.inf, big, -big, 0.0, -0.0, 1e-45, np.nan, -np.nan], np.float32)
    out = reference.narrow(x, dtype)
    assert np.isposinf(out[0]) and np.isneginf(out[1])
    assert np.isposinf(out[2]) and np.isneginf(out[3])
    assert _bits16(out)[4] == 0 and _bits16(out)[5] == 0x8000
    assert np.isnan(out[7]) and np.isnan(out[8]) and np.signbit(out[8]) and not np.signbit(out[7])
    sub = np.float32(2.0 ** -20 if dtype == F16 else 2.0 ** -130)      # a 16-bit subnormal
    assert reference.narrow(np.array([sub]), dtype).astype(F32)[0] == sub


# ---- 2. stochastic rounding -----------------------------------------------------------------

@pytest.mark.parametrize("dtype", [BF16, F16], ids=["bf16", "f16"])
def test_stochastic_rounding_is_exactly_unbiased_over_all_draws(dtype):
    """Over all 2^16 draws a value goes to one of its two neighbours, away from zero in
    exactly the fraction its dropped bits say."""
    rng = np.random.default_rng(3)
    r = np.arange(1 << 16, dtype=np.uint32)
    drop = 16 if dtype == BF16 else 13
    values = rng.uniform(-100, 100, 20).astype(np.float32).tolist() + [1.0 + 2.0 ** -20, 0.3,
                                                                       3e-6, -1.7e-7]
    for v in values:
        v = float(np.float32(v))
        out = reference.narrow(np.full(1 << 16, v, np.float32), dtype, rounding=1,
                               r=r).astype(np.float64)
        assert len(np.unique(out)) <= 2
        ups = np.count_nonzero(np.abs(out) > abs(v))
        assert np.count_nonzero(np.abs(out) < abs(v)) + ups + np.count_nonzero(out == v) \
            == 1 << 16
        u = int(np.array([v], np.float32).view(np.uint32)[0])
        if dtype == F16 and abs(v) < 2.0 ** -14:       # subnormal result: quantum 2^-24
            frac = (abs(v) / 2.0 ** -24) % 1.0
            assert ups == int(np.floor(frac * 65536)), v   # the fraction cut to 16 bits
        else:
            assert ups == (u & ((1 << drop) - 1)) << (16 - drop), v


@needs_native
@pytest.mark.parametrize("dtype", [BF16, F16], ids=["bf16", "f16"])
def test_native_stochastic_rounding_equals_the_reference(dtype):
    rng = np.random.default_rng(4)
    x = (rng.standard_normal(100_003) * 10.0 ** rng.uniform(-8, 4, 100_003)).astype(np.float32)
    x[::97] = np.nan
    x[1::101] = np.inf
    key = K.sr_key(7, 3, 11)
    assert key == reference.sr_key(7, 3, 11)
    for isa in ISAS:
        out = np.empty(x.size, dtype)
        K.convert(x, out, rounding=K.ROUND_STOCHASTIC, key=key, index=5, isa=isa)
        want = reference.narrow(x, dtype, rounding=1, key=key, index=5)
        assert np.array_equal(_bits16(out), _bits16(want)), isa
        # a slice at its own index draws what the whole array drew there
        part = np.empty(1000, dtype)
        K.convert(x[300:1300].copy(), part, rounding=K.ROUND_STOCHASTIC, key=key, index=305,
                  isa=isa)
        assert np.array_equal(_bits16(part), _bits16(out[300:1300]))


@pytest.mark.parametrize("dtype", [BF16, F16], ids=["bf16", "f16"])
def test_stochastic_rounding_passes_nan_and_inf_and_never_makes_nan(dtype):
    top = float(np.finfo(np.float32).max) if dtype == BF16 else 65519.0
    x = np.array([np.nan, -np.nan, np.inf, -np.inf, top, -top, 1e30, -1e30, 65504.0] * 5000,
                 np.float32)
    out = reference.narrow(x, dtype, rounding=1, key=99)
    assert np.array_equal(np.isnan(out), np.isnan(x))
    assert np.array_equal(np.signbit(out), np.signbit(x))
    assert np.isinf(out[np.isinf(x)]).all()


def _train(dtype, *, steps, threads=None, rng_seed=0, **kw):
    rng = np.random.default_rng(rng_seed)
    sizes = [3, 300, 5000, 40_000]
    params = [rng.standard_normal(n).astype(dtype) for n in sizes]
    opt = fastopt.Adam(params, lr=1e-2, **kw)
    for _ in range(steps):
        opt.step([rng.standard_normal(n).astype(dtype) for n in sizes])
    return params, opt


@needs_native
@pytest.mark.parametrize("dtype", [BF16, F16], ids=["bf16", "f16"])
def test_stochastic_steps_are_the_same_for_any_thread_count_and_chunking(dtype, threads):
    out = []
    for nt, grain in [(1, None), (2, None), (2, 64)]:
        threads(nt)
        old = K.get_parallel_grain()
        if grain:
            K.set_parallel_grain(grain)
        try:
            params, opt = _train(dtype, steps=4, rounding="stochastic", seed=9,
                                 state_dtype=BF16)
        finally:
            K.set_parallel_grain(old)
        out.append([_bits16(p).copy() for p in params]
                   + [_bits16(st[k]).copy() for st in opt.state.values()
                      for k in ("exp_avg", "exp_avg_sq")])
    for other in out[1:]:
        assert all(np.array_equal(a, b) for a, b in zip(out[0], other))
    # and another seed draws differently
    params, _ = _train(dtype, steps=4, rounding="stochastic", seed=10, state_dtype=BF16)
    assert not np.array_equal(_bits16(params[3]), out[0][3])


def test_stochastic_rounding_resumes_identically_from_a_state_dict():
    params, opt = _train(BF16, steps=3, rounding="stochastic", seed=4)
    sd = opt.state_dict()
    saved = [p.copy() for p in params]
    rng = np.random.default_rng(11)
    grads = [[rng.standard_normal(p.size).astype(BF16) for p in params] for _ in range(3)]
    for g in grads:
        opt.step(g)
    again = [p.copy() for p in saved]
    opt2 = fastopt.Adam(again, lr=1e-2, rounding="stochastic", seed=4)
    opt2.load_state_dict(sd)
    for g in grads:
        opt2.step(g)
    assert all(np.array_equal(_bits16(a), _bits16(b)) for a, b in zip(params, again))


# ---- 3. stagnation ----------------------------------------------------------------------------

def _sgd_descent(rounding, n=2000):
    p = np.ones(n, BF16)
    opt = fastopt.SGD([p], lr=1e-4, rounding=rounding, seed=1)
    g = np.ones(n, BF16)
    for _ in range(1000):
        opt.step([g])
    return p, opt


def test_stagnation_of_small_updates_in_bfloat16():
    f32 = np.ones(1, np.float32)
    opt = fastopt.SGD([f32], lr=1e-4)
    for _ in range(1000):
        opt.step([np.ones(1, np.float32)])
    assert abs(float(f32[0]) - 0.89998) < 1e-4
    near, _ = _sgd_descent("nearest")
    assert np.all(near.astype(F32) == 1.0)                  # every update rounds away
    sr, _ = _sgd_descent("stochastic")
    assert abs(sr.astype(np.float64).mean() - f32[0]) < 0.005 * f32[0]
    kahan, opt = _sgd_descent("kahan")
    carried = kahan.astype(np.float64) + opt.state[0]["kahan_comp"].astype(np.float64)
    assert np.all(np.abs(carried - f32[0]) < 0.001 * f32[0])
    step = 2.0 ** -8                                        # one bfloat16 step below 1
    assert np.all(np.abs(kahan.astype(np.float64) - carried) <= step)


def test_stagnation_of_adams_second_moment_in_bfloat16_states():
    def run(rounding, state_dtype):
        p = np.zeros(2000, np.float32)
        opt = fastopt.Adam([p], lr=0.0, betas=(0.9, 0.999), state_dtype=state_dtype,
                           rounding=rounding, seed=2)
        g = np.full(2000, np.sqrt(0.5), np.float32)
        opt.step([g])
        opt.state[0]["exp_avg_sq"][...] = 1.0
        for _ in range(3000):
            opt.step([g])
        return opt.state[0]["exp_avg_sq"].astype(np.float64)

    f32 = run("nearest", None)
    assert abs(f32.mean() - (0.5 + 0.5 * 0.999 ** 3000)) < 1e-4
    assert np.all(run("nearest", BF16) == 1.0)
    sr = run("stochastic", BF16)
    assert abs(sr.mean() - f32.mean()) < 0.01 * f32.mean()


# ---- 4. master weights ------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "Adamax",
                                  "NAdam", "RAdam", "Lion", "Adadelta", "Rprop", "ASGD"])
@pytest.mark.parametrize("dtype", [BF16, F16], ids=["bf16", "f16"])
def test_master_weights_follow_the_float32_run_exactly(name, dtype):
    rng = np.random.default_rng(6)
    sizes = [1, 17, 257, 3000]
    p16 = [rng.standard_normal(n).astype(dtype) for n in sizes]
    p32 = [p.astype(np.float32) for p in p16]
    kw = {"SGD": dict(lr=0.01, momentum=0.9), "Lion": dict(lr=1e-3)}.get(name, {})
    cls = getattr(fastopt, name)
    opt16 = cls(p16, master_weights=True, **kw)
    opt32 = cls(p32, **kw)
    for _ in range(5):
        g = [rng.standard_normal(n).astype(dtype) for n in sizes]
        opt16.step(g)
        opt32.step([x.astype(np.float32) for x in g])
    for i, (a, b) in enumerate(zip(p16, p32)):
        master = opt16.state[i]["master_param"]
        assert master.dtype == np.float32
        assert np.array_equal(master, b)                    # the float32 body, bitwise
        assert np.array_equal(_bits16(a), _bits16(b.astype(dtype)))   # param = nearest(master)
        for key, buf in opt32.state[i].items():
            if isinstance(buf, np.ndarray) and buf.ndim:
                assert opt16.state[i][key].dtype == np.float32
                assert np.array_equal(opt16.state[i][key], buf), key
    sd = opt16.state_dict()
    assert np.array_equal(sd["state"][3]["master_param"], p32[3])


def test_checkpoints_keep_16_bit_arrays_exactly(tmp_path):
    import zipfile
    rng = np.random.default_rng(14)
    for dtype, kw in [(BF16, dict(master_weights=True)), (F16, dict(rounding="kahan")),
                      (BF16, dict(state_dtype=BF16, rounding="stochastic")),
                      (np.float32, dict(state_dtype=BF16))]:
        params = [rng.standard_normal(n).astype(dtype) for n in (3, 50)]
        opt = fastopt.Adam(params, **kw)
        opt.step([rng.standard_normal(n).astype(dtype) for n in (3, 50)])
        path = tmp_path / "ckpt.npz"
        fastopt.save(opt, path)
        with zipfile.ZipFile(path) as z:
            assert not any(n.endswith(".pkl") for n in z.namelist())
        twin = fastopt.Adam([p.copy() for p in params], **kw)
        fastopt.load(twin, path)
        for i, st in opt.state.items():
            for key, value in st.items():
                got = twin.state[i][key]
                assert got.dtype == value.dtype, key
                assert np.asarray(got).tobytes() == np.asarray(value).tobytes(), key
        assert twin.param_groups[0]["state_dtype"] == opt.param_groups[0]["state_dtype"]


# ---- 5. skipped steps -------------------------------------------------------------------------

@pytest.mark.parametrize("kw", [dict(master_weights=True), dict(rounding="kahan"),
                                dict(rounding="stochastic", state_dtype=BF16), dict()],
                         ids=["master", "kahan", "stochastic", "nearest"])
def test_a_skipped_step_changes_nothing_on_the_first_step_too(kw):
    rng = np.random.default_rng(8)
    params = [rng.standard_normal(n).astype(BF16) for n in (5, 300)]
    opt = fastopt.AdamW(params, **kw)
    bad = [np.ones(5, BF16), np.full(300, np.inf, BF16)]
    before = [_bits16(p).copy() for p in params]
    assert opt.step(bad, grad_scale=1024.0) is False
    assert opt.state == {}
    assert all(np.array_equal(_bits16(p), b) for p, b in zip(params, before))
    assert opt.step([np.ones(5, BF16), np.ones(300, BF16)], grad_scale=1024.0) is True
    snap = {i: {k: np.array(v, copy=True) for k, v in st.items()} for i, st in opt.state.items()}
    before = [_bits16(p).copy() for p in params]
    bad[0] = np.full(5, np.nan, BF16)
    assert opt.step(bad, grad_scale=2.0) is False
    assert all(np.array_equal(_bits16(p), b) for p, b in zip(params, before))
    for i, st in opt.state.items():
        for k, v in st.items():
            assert np.asarray(v).tobytes() == snap[i][k].tobytes(), k


# ---- 6. every rule, every storage, against float64 ---------------------------------------------

RULE_KW = {"SGD": dict(lr=0.05, momentum=0.9, weight_decay=0.01), "Adam": dict(lr=1e-2),
           "AdamW": dict(lr=1e-2), "RMSprop": dict(lr=1e-2, centered=True, momentum=0.5),
           "Adagrad": dict(lr=0.05), "Adamax": dict(lr=1e-2), "NAdam": dict(lr=1e-2),
           "RAdam": dict(lr=1e-2), "Lion": dict(lr=1e-3)}
STORAGES = {
    "bf16+master": (BF16, dict(master_weights=True)),
    "bf16+f32 states": (BF16, dict(state_dtype=np.float32)),
    "bf16 (torch default)": (BF16, dict()),
    "bf16 stochastic": (BF16, dict(rounding="stochastic")),
    "bf16 kahan": (BF16, dict(rounding="kahan")),
    "f16+master": (F16, dict(master_weights=True)),
    "f16": (F16, dict()),
    "f32+bf16 states": (F32, dict(state_dtype=BF16)),
}


def _ulp(x, dtype):
    """The spacing of the 16-bit (or float32) type at |x|, as float64."""
    x = np.abs(np.asarray(x, np.float64))
    mant = {BF16: 7, F16: 10, F32: 23}[np.dtype(dtype)]
    tiny = {BF16: 2.0 ** -133, F16: 2.0 ** -24, F32: 2.0 ** -149}[np.dtype(dtype)]
    e = np.floor(np.log2(np.maximum(x, tiny)))
    return np.maximum(2.0 ** (e - mant), tiny)


@pytest.mark.parametrize("storage", STORAGES)
@pytest.mark.parametrize("name", RULE_KW)
def test_every_rule_on_every_storage_against_float64(name, storage):
    """Step by step, from the same stored state: the mixed step against a float64 step of the
    same rule on the widened values; the result must be the float64 one rounded once into the
    storage type (nearest: half an ulp, stochastic: one ulp), plus the float32 compute error
    (a few float32 ulps of the update, far below a 16-bit ulp)."""
    dtype, kw = STORAGES[storage]
    rng = np.random.default_rng(sum(map(ord, name + storage)))
    cls = getattr(fastopt, name)
    params = [(rng.standard_normal(n) * 2).astype(dtype) for n in SIZES]
    opt = cls(params, **RULE_KW[name], **kw)
    for step in range(3):
        grads = [(rng.standard_normal(n) * 10.0 ** rng.uniform(-3, 1)).astype(dtype)
                 for n in SIZES]
        carried = [opt.state[i].get("master_param") if i in opt.state else None
                   for i in range(len(params))]
        comp = [opt.state[i].get("kahan_comp") if i in opt.state else None
                for i in range(len(params))]
        p64 = []
        for i, p in enumerate(params):
            if carried[i] is not None:
                p64.append(carried[i].astype(np.float64))
            elif comp[i] is not None:
                p64.append(p.astype(np.float64) + comp[i].astype(np.float64))
            else:
                p64.append(p.astype(np.float64))
        ref = cls(p64, **RULE_KW[name])
        if opt.state:
            sd = opt.state_dict()
            for st in sd["state"].values():
                for key in list(st):
                    if key in ("master_param", "kahan_comp"):
                        del st[key]
                    elif isinstance(st[key], np.ndarray):
                        st[key] = st[key].astype(np.float64)
            for g in sd["param_groups"]:
                for key in ("master_weights", "rounding", "state_dtype"):
                    g.pop(key, None)
            ref.load_state_dict(sd)
        old = [x.copy() for x in p64]
        assert opt.step(grads)
        ref.step([g.astype(np.float64) for g in grads])
        sdtype = opt.state[0][next(k for k in opt.state[0] if k not in (
            "step", "master_param", "kahan_comp", "mu_product"))].dtype
        for i, (p, r) in enumerate(zip(params, p64)):
            got = (opt.state[i]["master_param"] if "master_param" in opt.state[i]
                   else p).astype(np.float64)
            if "kahan_comp" in opt.state[i]:
                got = got + opt.state[i]["kahan_comp"].astype(np.float64)
            store = np.float32 if ("master_param" in opt.state[i]
                                   or "kahan_comp" in opt.state[i]) else dtype
            ulps = 1.0 if kw.get("rounding") == "stochastic" and store != np.float32 else 0.5
            if "kahan_comp" in opt.state[i]:
                store, ulps = dtype, 0.01               # carried to ~16 significant bits
            # float32 compute: a few ulps of the operands' scale (old value, new value)
            scale = np.abs(old[i]) + np.abs(r) + 1e-3
            bound = ulps * _ulp(r, store) + 64 * _ulp(scale, np.float32)
            if name == "Lion" or (name in ("Adam", "AdamW", "NAdam", "RAdam", "Adamax")
                                  and sdtype != np.float32):
                # updates that divide by (or take the sign of) a 16-bit state: the state's own
                # rounding moves the update by up to its relative ulp
                lr = RULE_KW[name]["lr"]
                bound = bound + 2 * lr * (2.0 ** -7 if sdtype == BF16 else 2.0 ** -10) * 4
            err = np.abs(got - r)
            assert np.all(err <= bound), (name, storage, step, i, float(err.max()))


# ---- memory safety ----------------------------------------------------------------------------

PAD = 40


def _guarded(dtype, n, rng, keep):
    buf = np.empty(n + 2 * PAD, dtype)
    buf.view(np.uint8)[...] = rng.integers(0, 256, buf.nbytes, dtype=np.uint8)
    v = buf[PAD:PAD + n]
    v[...] = rng.standard_normal(n).astype(np.float32).astype(dtype)
    keep.append((buf, buf[:PAD].tobytes(), buf[PAD + n:].tobytes(), n))
    return v


@pytest.mark.parametrize("storage", STORAGES)
def test_mixed_storage_writes_only_inside(storage, threads):
    threads(2)
    dtype, kw = STORAGES[storage]
    rng = np.random.default_rng(12)
    keep: list = []
    sizes = [1, 7, 17, 255, 257, 4099]
    params = [_guarded(dtype, n, rng, keep) for n in sizes]
    opt = fastopt.Adam(params, amsgrad=True, max_grad_norm=10.0, **kw)
    for step in range(3):
        opt.step([_guarded(dtype, n, rng, keep) for n in sizes])
        if step == 0:           # every state buffer (master, compensation too) guarded
            for st in opt.state.values():
                for key, a in list(st.items()):
                    if isinstance(a, np.ndarray) and a.ndim > 0:
                        g = _guarded(a.dtype, a.size, rng, keep)
                        g[...] = a.reshape(-1)
                        st[key] = g.reshape(a.shape)
    for buf, head, tail, n in keep:
        assert buf[:PAD].tobytes() == head and buf[PAD + n:].tobytes() == tail


# ---- bad input ----------------------------------------------------------------------------------

def test_bad_storage_options_are_refused_with_nothing_modified():
    p = np.ones(4, BF16)
    with pytest.raises(ValueError, match="rounding"):
        fastopt.Adam([p], rounding="up")
    with pytest.raises(ValueError, match="kahan"):
        fastopt.Adam([p], rounding="kahan", master_weights=True)
    with pytest.raises(ValueError, match="state_dtype"):
        fastopt.Adam([p], state_dtype=np.float64)
    with pytest.raises(ValueError, match="seed"):
        fastopt.Adam([p], seed=-1)
    with pytest.raises(TypeError, match="master_weights"):
        fastopt.Adam([p], master_weights="yes")
    opt = fastopt.Adam([p, np.ones(3, np.float32)])
    before = _bits16(p).copy()
    with pytest.raises(TypeError, match=r"grads\[0\].*bfloat16.*float32"):
        opt.step([np.ones(4, np.float64), np.ones(3, np.float32)])
    with pytest.raises(TypeError, match=r"grads\[1\].*float32"):
        opt.step([np.ones(4, BF16), np.ones(3, BF16)])
    assert np.array_equal(_bits16(p), before) and opt.state == {}
    opt.param_groups[0]["rounding"] = "sometimes"
    with pytest.raises(ValueError, match="rounding"):
        opt.step([np.ones(4, BF16), np.ones(3, np.float32)])
    assert np.array_equal(_bits16(p), before) and opt.state == {}


def test_float32_gradients_of_16_bit_params_are_rounded_once_in_the_update():
    rng = np.random.default_rng(13)
    p = rng.standard_normal(1000).astype(BF16)
    q = p.copy()
    start = p.astype(np.float32)
    g = rng.standard_normal(1000).astype(np.float32) * 1e-3
    a = fastopt.SGD([p], lr=1.0, master_weights=True)
    b = fastopt.SGD([q], lr=1.0, master_weights=True)
    a.step([g])                                   # float32 gradients of bfloat16 params
    b.step([g.astype(BF16)])
    assert np.array_equal(a.state[0]["master_param"], start + np.float32(-1.0) * g)
    assert np.array_equal(b.state[0]["master_param"],
                          start + np.float32(-1.0) * g.astype(BF16).astype(np.float32))
    assert np.array_equal(_bits16(p), _bits16(a.state[0]["master_param"].astype(BF16)))


# ---- loss scaling ---------------------------------------------------------------------------

def _finite_pattern():
    # applied / skipped steps: growth after 3 clean steps, backoff on each overflow
    return [True, True, True, False, True, True, True, True, False, False, True, True, True,
            True, True, True, True]


def test_loss_scaler_skips_and_adapts_the_scale():
    p = np.ones(8, BF16)
    opt = fastopt.AdamW([p], lr=1e-2, master_weights=True)
    scaler = fastopt.LossScaler(init_scale=1024.0, growth_interval=3)
    scales, applied = [], []
    for ok in _finite_pattern():
        g = np.full(8, 0.5 * scaler.get_scale(), np.float32)
        if not ok:
            g[3] = np.inf
        before = _bits16(p).copy()
        applied.append(scaler.step(opt, [g.astype(BF16)]))
        if not ok:
            assert np.array_equal(_bits16(p), before)
        scaler.update()
        scales.append(scaler.get_scale())
    assert applied == _finite_pattern()
    assert scales[:5] == [1024.0, 1024.0, 2048.0, 1024.0, 1024.0]
    assert int(opt.state[0]["step"]) == sum(_finite_pattern())
    sd = scaler.state_dict()
    again = fastopt.LossScaler()
    again.load_state_dict(sd)
    assert again.state_dict() == sd
    with pytest.raises(RuntimeError, match="without a step"):
        again.update()
    for bad in (dict(init_scale=0.0), dict(growth_factor=1.0), dict(backoff_factor=1.0),
                dict(growth_interval=0)):
        with pytest.raises(ValueError):
            fastopt.LossScaler(**bad)


def test_loss_scaler_follows_torch_grad_scaler():
    torch = pytest.importorskip("torch", reason="the comparison needs torch")
    ours = fastopt.LossScaler(init_scale=2.0 ** 10, growth_factor=3.0, backoff_factor=0.25,
                              growth_interval=3)
    w = torch.nn.Parameter(torch.ones(4))
    topt = torch.optim.SGD([w], lr=0.0)
    theirs = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10, growth_factor=3.0,
                                  backoff_factor=0.25, growth_interval=3)
    p = np.ones(4, np.float32)
    opt = fastopt.SGD([p], lr=0.0)
    for ok in _finite_pattern() * 2:
        g = np.full(4, 1.0 if ok else np.inf, np.float32)
        theirs.scale(torch.ones(()))           # (GradScaler initialises its scale here)
        w.grad = torch.from_numpy(g.copy())
        theirs.step(topt)
        theirs.update()
        ours.step(opt, [g])
        ours.update()
        assert ours.get_scale() == theirs.get_scale()
    assert ours.state_dict()["_growth_tracker"] == theirs.state_dict()["_growth_tracker"]


def test_lamb_refuses_16_bit_storage_clearly():
    with pytest.raises(TypeError, match="LAMB takes float32 or float64"):
        fastopt.LAMB([np.ones(3, BF16)])
    with pytest.raises(ValueError, match="state_dtype"):
        fastopt.LAMB([np.ones(3, np.float32)], state_dtype=BF16)
    if NATIVE:      # the driver refuses a mixed tensor for a rule with a reduction
        p = np.ones(3, BF16)
        before = _bits16(p).copy()
        with pytest.raises(ValueError, match="lamb takes float32 or float64"):
            fastopt.kernels.lamb([p], [np.ones(3, BF16)], [np.zeros(3, np.float32)],
                                 [np.zeros(3, np.float32)], [1])
        assert np.array_equal(_bits16(p), before)
