"""8-bit optimizer states (state_dtype="8bit"): the maps, quantization to the exactly nearest
code, zero and NaN/Inf blocks, the NumPy reference against the kernels (bitwise, every thread
count, SIMD path and array offset), checkpoints, memory, bad input, accuracy."""
from __future__ import annotations

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
needs_native = pytest.mark.skipif(not NATIVE, reason="the native extension is not in use")
if NATIVE:
    from fastopt._backend import native as K

# the rules that take 8-bit states, with options that use every state buffer
RULES = {
    "Adam": dict(amsgrad=True, weight_decay=0.1),
    "AdamW": dict(amsgrad=True),
    "SGD": dict(momentum=0.9, nesterov=True, lr=0.05),
    "RMSprop": dict(momentum=0.5, centered=True),
    "Adagrad": dict(lr_decay=0.01, initial_accumulator_value=0.1),
    "Lion": dict(),
    "Adamax": dict(),
    "NAdam": dict(),
    "RAdam": dict(),
}
SIGNED = {"exp_avg": True, "momentum_buffer": True, "grad_avg": True, "exp_avg_sq": False,
          "max_exp_avg_sq": False, "square_avg": False, "sum": False, "exp_inf": False}
# under the 4096-element threshold, at it, a partial last block, many blocks
SIZES = [100, 4095, 4096, 5000, 70_001]


def _bits(a: np.ndarray) -> bytes:
    return np.ascontiguousarray(a).view(np.uint8).tobytes()


# ---- the maps and the quantizer ---------------------------------------------------------------

@pytest.mark.parametrize("signed", [True, False])
def test_maps_are_sorted_with_exact_zero_and_one(signed):
    m = reference.q8_map(signed)
    assert m.dtype == np.float32 and m.shape == (256,)
    assert np.all(np.diff(m.astype(np.float64)) > 0)
    zero = 128 if signed else 0
    assert m[zero] == 0 and not np.signbit(m[zero])
    assert m[-1] == 1.0 and (m[0] == -1.0 if signed else True)
    if NATIVE:
        assert _bits(K.q8_map(signed)) == _bits(m)


def _brute_codes(x: np.ndarray, signed: bool) -> np.ndarray:
    """The nearest map value by brute force (float64 distances; ties toward zero)."""
    m = reference.q8_map(signed).astype(np.float64)
    d = np.abs(x.astype(np.float64)[:, None] - m[None, :])
    best = d.min(axis=1, keepdims=True)
    tied = d == best
    # among tied codes, the one of the smallest magnitude
    mag = np.where(tied, np.abs(m)[None, :], np.inf)
    idx = mag.argmin(axis=1)
    return idx - 128 if signed else idx


def _edge_values(signed: bool) -> np.ndarray:
    """Every midpoint of the map (as near as float32 gets), its float32 neighbours, the map
    values themselves and their neighbours, and random values over all decades."""
    m = reference.q8_map(signed).astype(np.float64)
    mids = ((m[:-1] + m[1:]) / 2).astype(np.float32)
    base = np.concatenate([mids, m.astype(np.float32)])
    near = np.concatenate([base, np.nextafter(base, np.float32(2)),
                           np.nextafter(base, np.float32(-2))])
    rng = np.random.default_rng(0)
    rand = (10.0 ** rng.uniform(-9, 0, 4000)).astype(np.float32)
    if signed:
        rand = rand * rng.choice([-1, 1], rand.size).astype(np.float32)
    x = np.concatenate([near, rand, [0, 1e-30, 2 ** -24, 1]]).astype(np.float32)
    x = np.clip(x, -1 if signed else 0, 1)
    return x


@pytest.mark.parametrize("signed", [True, False])
def test_quantization_is_to_the_exactly_nearest_code(signed, isa):
    x = _edge_values(signed)
    # blocks whose absmax is exactly 1 (a leading 1 per block), so x / absmax is x
    n = x.size
    blocks = -(-n // 255)
    v = np.zeros(blocks * 256, np.float32)
    v.reshape(blocks, 256)[:, 0] = 1.0
    flat = v.reshape(blocks, 256)[:, 1:].reshape(-1)
    flat[:n] = x
    v.reshape(blocks, 256)[:, 1:] = flat.reshape(blocks, 255)
    codes, absmax = reference.q8_quantize(v, signed)
    assert np.all(absmax == 1.0)
    want = _brute_codes(v, signed)
    assert np.array_equal(codes.astype(np.int64), want)
    if NATIVE:
        c = np.zeros(v.size, np.int8 if signed else np.uint8)
        s = np.zeros(blocks, np.float32)
        K.q8_quantize(v, c, s, isa)
        assert _bits(c) == _bits(codes) and _bits(s) == _bits(absmax)
        out = np.zeros(v.size, np.float32)
        K.q8_dequantize(c, s, out, isa)
        assert _bits(out) == _bits(reference.q8_dequantize(codes, absmax))


@needs_native
@pytest.mark.parametrize("signed", [True, False])
def test_every_simd_quantizer_equals_the_table_on_every_float32(signed, isa):
    # every x in [-1, 1] (2^31 bit patterns) through the instruction set's codes, and every
    # code through its dequantization, against the exact table lookup (~7 s per map)
    if isa == "baseline":
        pytest.skip("the baseline quantizer is the table lookup itself")
    assert K.q8_check_all(isa, K.DT_Q8S if signed else K.DT_Q8U) == 0


@pytest.mark.parametrize("signed", [True, False])
def test_an_exact_tie_goes_toward_zero(signed):
    m = reference.q8_map(signed).astype(np.float64)
    lo = 128 if signed else 0
    # a midpoint float32 holds exactly: find one on the positive side (and its mirror)
    ties = [j for j in range(lo, 255) if np.float32((m[j] + m[j + 1]) / 2) == (m[j] + m[j + 1]) / 2]
    assert ties
    j = ties[len(ties) // 2]
    t = np.float32((m[j] + m[j + 1]) / 2)
    v = np.zeros(256, np.float32)
    v[0], v[1] = 1.0, t
    codes, _ = reference.q8_quantize(v, signed)
    assert int(codes[1]) == j - (128 if signed else 0)      # the lower magnitude
    if NATIVE:
        c = np.zeros(256, np.int8 if signed else np.uint8)
        K.q8_quantize(v, c, np.zeros(1, np.float32))
        assert int(c[1]) == int(codes[1])


@pytest.mark.parametrize("signed", [True, False])
def test_zero_nan_and_inf_blocks(signed, isa):
    rng = np.random.default_rng(1)
    v = rng.standard_normal(256 * 4 + 17).astype(np.float32)
    if not signed:
        v = np.abs(v)
    v[256:512] = 0                  # block 1: zeros
    v[600] = np.nan                 # block 2: a NaN
    v[-3] = np.inf                  # block 4 (partial): an Inf
    codes, absmax = reference.q8_quantize(v, signed)
    assert absmax[1] == 0 and np.all(codes[256:512] == 0)
    assert np.isnan(absmax[2]) and np.isnan(absmax[4]) and np.all(np.isfinite(absmax[[0, 1, 3]]))
    d = reference.q8_dequantize(codes, absmax)
    assert np.all(d[256:512] == 0) and not np.any(np.signbit(d[256:512]))
    assert np.all(np.isnan(d[512:768])) and np.all(np.isnan(d[1024:]))
    assert np.all(np.isfinite(d[:256])) and np.all(np.isfinite(d[768:1024]))
    # the largest magnitude of a block comes back exactly; the others within half a step
    k = np.argmax(np.abs(v[:256]))
    assert d[k] == v[k]
    assert np.max(np.abs(d[:256] - v[:256])) <= absmax[0] * 0.0075
    if NATIVE:
        c = np.zeros(v.size, codes.dtype)
        s = np.zeros(absmax.size, np.float32)
        K.q8_quantize(v, c, s, isa)
        assert _bits(c) == _bits(codes) and _bits(s) == _bits(absmax)
        out = np.zeros(v.size, np.float32)
        K.q8_dequantize(c, s, out, isa)
        assert _bits(out) == _bits(d)


def test_unsigned_map_gives_negative_values_code_zero():
    v = np.array([1.0, -0.5, 0.25, -1e-3] + [0] * 252, np.float32)
    codes, absmax = reference.q8_quantize(v, False)
    assert codes[1] == 0 and codes[3] == 0 and codes[2] > 0 and absmax[0] == 1.0


# ---- optimizers --------------------------------------------------------------------------------

def _run(name, sizes, steps=6, seed=0, params=None, kw=None):
    rng = np.random.default_rng(seed)
    if params is None:
        params = [rng.standard_normal(n).astype(np.float32) for n in sizes]
    opt = getattr(fastopt, name)(params, **(RULES[name] if kw is None else kw),
                                 state_dtype="8bit")
    for _ in range(steps):
        opt.step([(rng.standard_normal(p.shape) * 0.5 + 0.05).astype(np.float32)
                  for p in params])
    return params, opt


@pytest.mark.parametrize("name", RULES)
def test_states_are_8bit_from_4096_elements(name):
    params, opt = _run(name, SIZES, steps=2)
    for i, p in enumerate(params):
        st = opt.state[i]
        for key, signed in SIGNED.items():
            if key not in st:
                continue
            if p.size < 4096:
                assert st[key].dtype == np.float32 and key + "_absmax" not in st
            else:
                assert st[key].dtype == (np.int8 if signed else np.uint8)
                assert st[key].shape == p.shape
                assert st[key + "_absmax"].dtype == np.float32
                assert st[key + "_absmax"].shape == (-(-p.size // 256),)


def test_the_8bit_step_follows_the_float32_step_closely():
    """A few Adam steps: 8-bit states follow float32 states within the quantization error."""
    rng = np.random.default_rng(3)
    p8 = rng.standard_normal(20_000).astype(np.float32)
    p32 = p8.copy()
    o8 = fastopt.Adam([p8], lr=1e-3, state_dtype="8bit")
    o32 = fastopt.Adam([p32], lr=1e-3)
    for _ in range(20):
        g = rng.standard_normal(p8.shape).astype(np.float32)
        o8.step([g])
        o32.step([g])
    moved = np.abs(p32 - p8)
    assert moved.max() < 2e-3 and not np.array_equal(p8, p32)
    m8 = reference.q8_dequantize(o8.state[0]["exp_avg"], o8.state[0]["exp_avg_absmax"])
    err = np.abs(m8 - o32.state[0]["exp_avg"])
    assert err.max() < 0.05 and err.mean() < 0.005


def test_an_element_whose_gradient_is_always_zero_never_moves():
    rng = np.random.default_rng(4)
    for name in RULES:
        p = rng.standard_normal(8192).astype(np.float32)
        kw = {k: v for k, v in RULES[name].items() if k != "weight_decay"}
        if name == "AdamW":
            kw["weight_decay"] = 0.0
        opt = getattr(fastopt, name)([p], **kw, state_dtype="8bit")
        before = p[100:300].copy()
        for _ in range(5):
            g = rng.standard_normal(p.shape).astype(np.float32)
            g[100:300] = 0
            opt.step([g])
        assert _bits(p[100:300]) == _bits(before), name
        for key in SIGNED:
            if key in opt.state[0] and key != "sum":
                codes = opt.state[0][key]
                assert np.all(codes[100:300] == 0), (name, key)


def test_a_nan_gradient_makes_its_block_nan_and_no_other():
    rng = np.random.default_rng(5)
    p = rng.standard_normal(4096).astype(np.float32)
    opt = fastopt.Adam([p], state_dtype="8bit")
    g = rng.standard_normal(p.shape).astype(np.float32)
    g[300] = np.nan
    opt.step([g])
    s = opt.state[0]
    assert np.isnan(s["exp_avg_absmax"][1]) and np.isnan(s["exp_avg_sq_absmax"][1])
    assert np.all(np.isfinite(np.delete(s["exp_avg_absmax"], 1)))
    m = reference.q8_dequantize(s["exp_avg"], s["exp_avg_absmax"])
    assert np.all(np.isnan(m[256:512])) and np.all(np.isfinite(np.delete(m, np.s_[256:512])))
    assert np.isnan(p[300]) and np.all(np.isfinite(p[:256]))
    # the NaN stays in its block on later steps, as a float32 state's NaN stays in its element
    opt.step([rng.standard_normal(p.shape).astype(np.float32)])
    assert np.isnan(s["exp_avg_absmax"][1]) and np.isfinite(s["exp_avg_absmax"][0])


def test_state_bytes_of_adam_is_at_most_2_05_per_element():
    p = np.zeros(1_000_000, np.float32)
    opt = fastopt.Adam([p], state_dtype="8bit")
    opt.step([np.full(p.shape, 0.1, np.float32)])
    per = opt.state_bytes(per_element=True)
    assert per <= 2.05
    assert opt.state_bytes() == 2 * p.size + 2 * 4 * (-(-p.size // 256))
    ref = fastopt.Adam([np.zeros(1_000_000, np.float32)])
    ref.step([np.full(p.shape, 0.1, np.float32)])
    assert ref.state_bytes(per_element=True) == 8.0


@needs_native
@pytest.mark.parametrize("name", RULES)
def test_same_bits_for_any_thread_count_isa_and_offset(name, threads, isa):
    results = []
    for nt, offset in ((1, 0), (2, 0), (2, 1), (1, 3)):
        threads(nt)
        rng = np.random.default_rng(7)
        params = []
        for n in (4096, 5000, 9000, 300):
            buf = np.zeros(n + 8, np.float32)
            v = buf[offset:offset + n]          # the param at an odd offset
            v[...] = rng.standard_normal(n)
            params.append(v)
        params, opt = _run(name, None, steps=4, params=params)
        results.append([_bits(p) for p in params]
                       + [_bits(a) for st in opt.state.values() for k, a in sorted(st.items())
                          if isinstance(a, np.ndarray) and a.ndim])
    for r in results[1:]:
        assert r == results[0]


# ---- the two backends --------------------------------------------------------------------------

TRAIN = textwrap.dedent("""
    import sys
    import numpy as np
    import fastopt
    out = sys.argv[1]
    RULES = %r
    SIZES = [100, 4095, 4096, 5000, 70_001]
    result = {"backend": np.array(fastopt.config()["backend"])}
    for c, (name, kw) in enumerate(RULES.items()):
        rng = np.random.default_rng(c)
        params = [rng.standard_normal(n).astype(np.float32) for n in SIZES]
        groups = [{"params": params[:2], "max_grad_norm": 3.0}, {"params": params[2:]}]
        opt = getattr(fastopt, name)(groups, **kw, state_dtype="8bit")
        for step in range(12):
            grads = [(rng.standard_normal(p.shape) * 0.7 + 0.1).astype(np.float32)
                     for p in params]
            if step == 5:
                grads[3][700] = np.nan       # a NaN block from here on
            opt.step(grads)
        for i, p in enumerate(params):
            result[f"{name}/param{i}"] = p
            for k, v in opt.state[i].items():
                result[f"{name}/state{i}/{k}"] = np.asarray(v)
    np.savez(out, **result)
""") % (RULES,)


def _train(tmp_path, purepython: bool) -> dict:
    script = tmp_path / "train8.py"
    script.write_text(TRAIN)
    out = tmp_path / ("numpy.npz" if purepython else "native.npz")
    env = {k: v for k, v in os.environ.items() if k not in ("FASTOPT_PUREPYTHON", "FASTOPT_ISA")}
    if purepython:
        env["FASTOPT_PUREPYTHON"] = "1"
    subprocess.run([sys.executable, str(script), str(out)], env=env, check=True, timeout=300,
                   cwd=tempfile.gettempdir())
    with np.load(out) as f:
        return {k: f[k] for k in f.files}


@needs_native
def test_8bit_training_is_bitwise_the_same_on_both_backends(tmp_path):
    native = _train(tmp_path, purepython=False)
    fallback = _train(tmp_path, purepython=True)
    assert str(native.pop("backend")) == "native"
    assert str(fallback.pop("backend")).startswith("numpy")
    assert native.keys() == fallback.keys()
    assert any(v.dtype == np.int8 for v in native.values())
    assert any(v.dtype == np.uint8 for v in native.values())
    differ = [k for k in native
              if native[k].dtype != fallback[k].dtype or native[k].shape != fallback[k].shape
              or _bits(native[k]) != _bits(fallback[k])]
    assert not differ, f"{len(differ)} of {len(native)} arrays differ: {differ[:12]}"


# ---- checkpoints -------------------------------------------------------------------------------

def test_state_dict_and_checkpoint_round_trip_bitwise(tmp_path):
    params, opt = _run("AdamW", [5000, 100], steps=3)
    sd = opt.state_dict()
    assert sd["state"][0]["exp_avg"].dtype == np.int8
    assert sd["state"][0]["exp_avg_sq_absmax"].dtype == np.float32
    path = tmp_path / "ckpt.npz"
    fastopt.save(opt, path)
    with np.load(path, allow_pickle=False) as f:     # plain arrays, no pickles
        assert f["state/0/exp_avg"].dtype == np.int8
        assert f["state/0/exp_avg_sq"].dtype == np.uint8
        assert f["state/0/exp_avg_absmax"].shape == (20,)
    copies = [p.copy() for p in params]
    other = fastopt.AdamW(copies, **RULES["AdamW"], state_dtype="8bit")
    fastopt.load(other, path)
    third = fastopt.AdamW([p.copy() for p in params], **RULES["AdamW"], state_dtype="8bit")
    third.load_state_dict(sd)
    for o in (other, third):
        for i in opt.state:
            assert opt.state[i].keys() == o.state[i].keys()
            for k, a in opt.state[i].items():
                assert _bits(np.asarray(a)) == _bits(np.asarray(o.state[i][k])), k
    # and they go on identically
    rng = np.random.default_rng(9)
    for _ in range(3):
        grads = [rng.standard_normal(p.shape).astype(np.float32) for p in params]
        opt.step(grads)
        other.step(grads)
    assert all(_bits(a) == _bits(b) for a, b in zip(params, copies))


def test_load_refuses_8bit_states_that_do_not_fit():
    params, opt = _run("Adam", [5000], steps=1)
    sd = opt.state_dict()
    target = fastopt.Adam([params[0].copy()], **RULES["Adam"], state_dtype="8bit")
    target.step([np.ones(5000, np.float32)])
    before = {k: np.array(v, copy=True) for k, v in target.state[0].items()}
    bad = {**sd["state"][0], "exp_avg": sd["state"][0]["exp_avg"].view(np.uint8)}
    with pytest.raises(TypeError, match=r"exp_avg.*int8"):
        target.load_state_dict({"state": {0: bad}, "param_groups": sd["param_groups"]})
    bad = {**sd["state"][0], "exp_avg_absmax": np.zeros(19, np.float32)}
    with pytest.raises(ValueError, match=r"exp_avg_absmax.*\(20,\)"):
        target.load_state_dict({"state": {0: bad}, "param_groups": sd["param_groups"]})
    bad = dict(sd["state"][0])
    del bad["exp_avg_sq_absmax"]
    with pytest.raises(ValueError, match="exp_avg_sq_absmax"):
        target.load_state_dict({"state": {0: bad}, "param_groups": sd["param_groups"]})
    for k, v in before.items():
        assert _bits(np.asarray(target.state[0][k])) == _bits(v)


# ---- bad input ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["LAMB", "Adadelta", "Rprop", "ASGD"])
def test_rules_without_8bit_states_refuse_them(name):
    p = np.zeros(5000, np.float32)
    with pytest.raises(ValueError, match=rf"{name} does not keep 8-bit states"):
        getattr(fastopt, name)([p], state_dtype="8bit")
    opt = getattr(fastopt, name)([p])
    opt.param_groups[0]["state_dtype"] = "8bit"
    with pytest.raises(ValueError, match="8-bit"):
        opt.step([np.ones(5000, np.float32)])
    assert not p.any() and not opt.state


def test_unknown_state_dtype_string_is_refused():
    with pytest.raises(TypeError, match="8bit"):
        fastopt.Adam([np.zeros(5000, np.float32)], state_dtype="4bit")


def _replaced(opt, key, value, match, exc):
    params = [p for g in opt.param_groups for p in g["params"]]
    before = [_bits(p) for p in params]
    states = {k: np.array(v, copy=True) for k, v in opt.state[0].items()}
    old = opt.state[0][key]
    opt.state[0][key] = value
    with pytest.raises(exc, match=match):
        opt.step([np.ones(p.shape, np.float32) for p in params])
    opt.state[0][key] = old
    assert [_bits(p) for p in params] == before
    for k, v in states.items():
        assert _bits(np.asarray(opt.state[0][k])) == _bits(v), k


@pytest.mark.parametrize("purepython_like", [False])
def test_replaced_8bit_arrays_of_the_wrong_kind_are_refused(purepython_like):
    params, opt = _run("Adam", [5000], steps=1, kw={})
    n = 5000
    _replaced(opt, "exp_avg", np.zeros(n, np.uint8), r"state\[0\]\['exp_avg'\].*int8", TypeError)
    _replaced(opt, "exp_avg_sq", np.zeros(n, np.int8), r"state\[0\]\['exp_avg_sq'\].*uint8",
              TypeError)
    _replaced(opt, "exp_avg", np.zeros(n, np.float32), r"exp_avg", TypeError)
    _replaced(opt, "exp_avg", np.zeros(n - 1, np.int8), r"state\[0\]\['exp_avg'\].*shape",
              ValueError)
    _replaced(opt, "exp_avg_absmax", np.zeros(19, np.float32),
              r"state\[0\]\['exp_avg_absmax'\].*\(20,\)", ValueError)
    _replaced(opt, "exp_avg_absmax", np.zeros(20, np.float64),
              r"state\[0\]\['exp_avg_absmax'\].*float32", TypeError)
    codes = opt.state[0]["exp_avg"]
    # scales that overlap the codes
    _replaced(opt, "exp_avg_absmax", codes.view(np.uint8)[:80].view(np.float32),
              r"overlap", ValueError)


# ---- guard regions ----------------------------------------------------------------------------

PAD = 64


class Guarded:
    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)
        self.buffers = []

    def view(self, dtype, shape, values=None):
        dtype = np.dtype(dtype)
        n = int(np.prod(shape))
        buf = np.empty(n * dtype.itemsize + 2 * PAD, np.uint8)
        buf[...] = self.rng.integers(0, 256, buf.size, dtype=np.uint8)
        v = buf[PAD:PAD + n * dtype.itemsize].view(dtype).reshape(shape)
        v[...] = 0 if values is None else values
        self.buffers.append((buf, buf[:PAD].tobytes(), buf[-PAD:].tobytes()))
        return v

    def assert_intact(self):
        for buf, head, tail in self.buffers:
            assert buf[:PAD].tobytes() == head and buf[-PAD:].tobytes() == tail


@pytest.mark.parametrize("name", RULES)
def test_8bit_states_are_written_only_inside(name, threads):
    threads(2)
    g = Guarded(2)
    rng = np.random.default_rng(3)
    sizes = [4096, 4097, 4353, 9000]
    params = [g.view(np.float32, (n,), rng.standard_normal(n)) for n in sizes]
    opt = getattr(fastopt, name)(params, **RULES[name], state_dtype="8bit")
    opt.step([rng.standard_normal(n).astype(np.float32) for n in sizes])
    # replace every 8-bit array by a guarded copy: the next steps write into those
    for st in opt.state.values():
        for k, a in list(st.items()):
            if isinstance(a, np.ndarray) and a.ndim:
                st[k] = g.view(a.dtype, a.shape, a)
    for _ in range(3):
        opt.step([rng.standard_normal(n).astype(np.float32) for n in sizes])
    g.assert_intact()
    assert any(a.dtype in (np.int8, np.uint8) for st in opt.state.values() for a in st.values()
               if isinstance(a, np.ndarray))


# ---- accuracy ------------------------------------------------------------------------------------

def test_mlp_digits_8bit_within_half_a_point_of_float32():
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parent.parent / "examples" / "mlp_digits.py"
    spec = importlib.util.spec_from_file_location("fastopt_example_mlp8", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    f32 = module.main([])
    q8 = module.main(["--state-dtype", "8bit"])
    assert f32["dataset"] == q8["dataset"]
    assert q8["quantized_states"] > 0 and f32["quantized_states"] == 0
    assert abs(q8["test_accuracy"][-1] - f32["test_accuracy"][-1]) <= 0.005
    assert q8["test_accuracy"][-1] > 0.9


def test_synthetic_regression_8bit_within_2_percent_of_float32():
    rng = np.random.default_rng(11)
    d, n = 512, 2048
    w_true = rng.standard_normal((d, 16)).astype(np.float32) / np.sqrt(d)
    x = rng.standard_normal((n, d)).astype(np.float32)
    y = x @ w_true + 0.1 * rng.standard_normal((n, 16)).astype(np.float32)
    losses = {}
    for sd in (None, "8bit"):
        w = np.zeros((d, 16), np.float32)
        opt = fastopt.AdamW([w], lr=3e-3, weight_decay=1e-4, state_dtype=sd)
        r = np.random.default_rng(12)
        steps = 1000        # cosine decay of the learning rate to 0
        for t in range(steps):
            opt.param_groups[0]["lr"] = 3e-3 * 0.5 * (1 + np.cos(np.pi * t / steps))
            idx = r.integers(0, n, 128)
            err = x[idx] @ w - y[idx]
            opt.step([(x[idx].T @ err * (2.0 / idx.size)).astype(np.float32)])
        losses[sd] = float(np.mean((x @ w - y) ** 2))
        if sd:
            assert opt.state[0]["exp_avg"].dtype == np.int8
    assert abs(losses["8bit"] - losses[None]) <= 0.02 * losses[None]
    assert losses[None] < 0.01       # (the noise floor is 0.01 on the data, less in-sample)


# ---- raw descriptors: the contract check knows each 8-bit stream's true extent ---------------

def _raw_frame(n, codes_at, scales_at, buf, p, g):
    """One Adam tensor through fill_raw: param p, gradient g, exp_avg codes and scales at byte
    offsets of ``buf`` (exp_avg_sq: float32 states of its own)."""
    v = np.zeros(n, np.float32)
    addr = np.zeros((1, K.MAX_STREAMS), np.uint64)
    dts = np.zeros((1, K.MAX_STREAMS), np.uint8)
    base = K.address(buf)
    for k, (a, d) in {0: (K.address(p), K.DT_F32), 1: (K.address(g), K.DT_F32),
                      2: (base + codes_at, K.DT_Q8S), 3: (K.address(v), K.DT_F32),
                      K.STREAM_A1: (base + scales_at, K.DT_ABSMAX)}.items():
        addr[0, k], dts[0, k] = a, d
    f = K.Frame()
    f.fill_raw(addr, dts, np.array([n], np.int64), [p, g, buf, v])
    return f


@needs_native
def test_raw_8bit_streams_are_bounded_by_their_true_extent():
    n = 1000                    # 4 blocks: 1000 bytes of codes, 16 of scales
    rng = np.random.default_rng(8)
    p = rng.standard_normal(n).astype(np.float32)
    g = rng.standard_normal(n).astype(np.float32)
    rec = np.array([fastopt._spec.ADAM.record({**fastopt._spec.ADAM.defaults(),
                                               **dict(fastopt._spec.COMMON)})])
    buf = np.zeros(2048, np.uint8)
    buf[:64] = 0xA5
    # codes at [64, 1064), scales right after at [1064, 1080): touching, not overlapping
    f = _raw_frame(n, 64, 1064, buf, p, g)
    guard = buf[1080:].copy()
    rc = K.run(f, K.RULES["adam"], np.zeros(1, np.int32), rec, np.ones(1),
               np.zeros(1, np.int64), True, 2)
    assert rc == K.OK
    assert np.all(buf[:64] == 0xA5) and _bits(buf[1080:]) == _bits(guard)
    assert np.all(np.isfinite(buf[1064:1080].view(np.float32)))
    # scales starting on the codes' last byte overlap them: refused, nothing modified
    before = _bits(buf), _bits(p)
    f = _raw_frame(n, 64, 1060, buf, p, g)
    with pytest.raises(K.ContractError) as e:
        K.run(f, K.RULES["adam"], np.zeros(1, np.int32), rec, np.ones(1),
              np.zeros(1, np.int64), True, 2)
    assert e.value.reason == K.R_OVERLAP
    assert (_bits(buf), _bits(p)) == before
    # codes without their scales (or scales without codes) form no signature
    addr = np.zeros((1, K.MAX_STREAMS), np.uint64)
    dts = np.zeros((1, K.MAX_STREAMS), np.uint8)
    addr[0, :3] = [K.address(p), K.address(g), K.address(buf)]
    dts[0, :3] = [K.DT_F32, K.DT_F32, K.DT_Q8S]
    f = K.Frame()
    f.fill_raw(addr, dts, np.array([n], np.int64), [p, g, buf])
    with pytest.raises(K.ContractError) as e:
        K.run(f, K.RULES["adam"], np.zeros(1, np.int32), rec, np.ones(1),
              np.zeros(1, np.int64), True, 1)
    assert e.value.reason == K.R_SIGNATURE


def test_16bit_params_with_8bit_states_match_the_reference_adapter():
    """bfloat16 params (with and without a float32 master) and 8-bit states: the native step
    against fastopt.reference.Mixed (the NumPy backend's adapter) run on copies, bitwise."""
    ml_dtypes = pytest.importorskip("ml_dtypes")
    from fastopt import _spec
    bf16 = np.dtype(ml_dtypes.bfloat16)
    rng = np.random.default_rng(13)
    for master in (False, True):
        p = rng.standard_normal(5000).astype(bf16)
        opt = fastopt.AdamW([p], lr=1e-2, master_weights=master, state_dtype="8bit")
        for step in range(1, 4):
            g = rng.standard_normal(5000).astype(np.float32)
            st = opt.state.get(0)
            if st is None:
                opt.step([g])
                continue
            copy = {k: np.array(v, copy=True) for k, v in st.items()}
            q = p.copy()
            bufs = [None, None, copy["exp_avg"], copy["exp_avg_sq"], None]
            scales = (copy["exp_avg_absmax"], copy["exp_avg_sq_absmax"], None)
            mixed = reference.Mixed.of(q, g, bufs, copy.get("master_param"), scales)
            rec = _spec.ADAMW.record(opt.param_groups[0])
            _spec.ADAMW.reference(mixed.param, mixed.grad, mixed.bufs, step=step, aux=None,
                                  grad_scale=1.0, **_spec.ADAMW.kwargs(rec))
            mixed.store(0, 0)
            opt.step([g])
            assert st["exp_avg"].dtype == np.int8
            assert _bits(q) == _bits(p), (master, step)
            for k in ("exp_avg", "exp_avg_sq", "exp_avg_absmax", "exp_avg_sq_absmax"):
                assert _bits(copy[k]) == _bits(st[k]), (master, step, k)
