"""Threading rules, determinism across thread counts, and what the build contains."""
from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import pytest
from helpers import assert_bitwise

import fastopt
from fastopt._backend import native as _kernels


def run_training(nthreads, threads, sizes=(50_000, 3, 70_001, 1024)):
    threads(nthreads)
    rng = np.random.default_rng(0)
    params = [rng.standard_normal(n).astype(np.float32) for n in sizes]
    opt = fastopt.AdamW(params, lr=1e-2, amsgrad=True)
    for _ in range(5):
        opt.step([rng.standard_normal(n).astype(np.float32) for n in sizes])
    return np.concatenate(params + [a for st in opt.state.values()
                                    for k, a in st.items() if k != "step"])


def test_optimizer_results_bitwise_identical_for_1_2_and_4_threads(threads):
    one = run_training(1, threads)
    for n in (2, 4):
        assert_bitwise(run_training(n, threads), one, f"{n} threads vs 1")


def test_set_num_threads_rules():
    limit = _kernels.omp_max_threads()
    try:
        fastopt.set_num_threads(1)
        assert fastopt.get_num_threads() == 1
        fastopt.set_num_threads(-1)
        assert fastopt.get_num_threads() == limit
        fastopt.set_num_threads(10_000)
        assert fastopt.get_num_threads() == limit      # capped by OpenMP's limit
        with pytest.raises(ValueError, match="n >= 1"):
            fastopt.set_num_threads(0)
        with pytest.raises(ValueError):
            fastopt.set_num_threads(-2)
        with pytest.raises(TypeError):
            fastopt.set_num_threads(1.5)
    finally:
        fastopt.set_num_threads(None)
    assert fastopt.get_num_threads() == limit


def test_omp_num_threads_sets_the_default():
    code = "import fastopt; print(fastopt.get_num_threads())"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True, cwd=tempfile.gettempdir())
    assert out.stdout.strip() == "1"


def test_threadpoolctl_limits_fastopt():
    threadpoolctl = pytest.importorskip("threadpoolctl",
                                        reason="optional: pip install threadpoolctl")
    if not _kernels.openmp_enabled():
        pytest.skip("single-threaded build")
    with threadpoolctl.threadpool_limits(1, user_api="openmp"):
        assert fastopt.get_num_threads() == 1
    assert fastopt.get_num_threads() == _kernels.omp_max_threads()


def test_build_has_openmp_and_the_simd_paths():
    """Fails if the wheel was built without OpenMP, or without the x86-64 SIMD tables;
    set FASTOPT_ALLOW_SERIAL_BUILD=1 to accept such a build knowingly."""
    if os.environ.get("FASTOPT_ALLOW_SERIAL_BUILD") == "1":
        pytest.skip("FASTOPT_ALLOW_SERIAL_BUILD=1")
    assert _kernels.openmp_enabled(), "built without OpenMP"
    if platform.machine().lower() in ("x86_64", "amd64") and platform.system() != "Windows":
        assert set(_kernels.isa_compiled()) == {"baseline", "avx2", "avx512"}


def test_baseline_code_uses_no_instruction_beyond_the_platform_baseline():
    """Disassemble the extension: the baseline kernels must contain no VEX/EVEX (AVX)
    instruction, so the wheel runs on any x86-64 CPU; the AVX-512 ones must use zmm."""
    if platform.machine().lower() not in ("x86_64", "amd64") or platform.system() != "Linux":
        pytest.skip("the disassembly check is for x86-64 Linux builds")
    if not _kernels.__file__.endswith(".so"):
        pytest.skip("the NumPy fallback has no machine code")
    objdump = shutil.which("objdump")
    if objdump is None:
        pytest.skip("objdump (binutils) not installed")
    asm = subprocess.run([objdump, "-d", "--no-show-raw-insn", _kernels.__file__],
                         capture_output=True, text=True, check=True).stdout
    functions = {}
    name = None
    for line in asm.splitlines():
        m = re.match(r"^[0-9a-f]+ <(.+)>:$", line)
        if m:
            name = m.group(1)
            functions[name] = []
        elif name and "\t" in line:
            functions[name].append(line.split("\t")[-1].strip())
    baseline = {k: v for k, v in functions.items() if k.endswith("_baseline")}
    assert {"adam_f32_baseline", "sgd_f64_baseline", "probe_f32_baseline"} <= set(baseline), \
        "kernel symbols not found: was the extension stripped?"
    for fn, insns in baseline.items():
        avx = [i for i in insns if i.startswith("v") or "%ymm" in i or "%zmm" in i]
        assert not avx, f"{fn} uses AVX instructions: {avx[:5]}"
    assert any("%zmm" in i for i in functions["adam_f32_avx512"])
    assert any("%ymm" in i for i in functions["adam_f32_avx2"])


def test_isa_selection_and_errors():
    cfg = fastopt.config()
    assert cfg["isa_active"] in cfg["isa_supported"]
    old = fastopt.set_isa("baseline")
    try:
        assert fastopt.config()["isa_active"] == "baseline"
        with pytest.raises(ValueError, match="not available"):
            fastopt.set_isa("sse9")
        assert fastopt.config()["isa_active"] == "baseline"   # unchanged after a refusal
    finally:
        fastopt.set_isa(old)


@pytest.mark.parametrize("value,ok", [("baseline", True), ("auto", True), ("nonsense", False)])
def test_fastopt_isa_environment_variable(value, ok):
    code = "import fastopt; print(fastopt.config()['isa_active'])"
    env = dict(os.environ, FASTOPT_ISA=value)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         cwd=tempfile.gettempdir())
    if ok:
        assert out.returncode == 0, out.stderr
        expected = "baseline" if value == "baseline" else fastopt.config()["isa_supported"][-1]
        assert out.stdout.strip() == expected
    else:
        assert out.returncode != 0 and "FASTOPT_ISA='nonsense'" in out.stderr


def test_show_config_prints_the_essentials(capsys):
    fastopt.show_config()
    out = capsys.readouterr().out
    for word in ("fastopt", fastopt.__version__, "OpenMP", "SIMD in use", "threads"):
        assert word in out


def test_gil_is_released_during_a_step():
    """Another Python thread makes progress while a long step runs."""
    import threading
    import time
    fastopt.set_num_threads(1)
    try:
        p = np.zeros(8_000_000, np.float32)
        g = np.ones_like(p)
        opt = fastopt.Adam([p])
        opt.step([g])
        ticks = []
        stop = threading.Event()

        def ticker():
            while not stop.is_set():
                ticks.append(time.perf_counter())
                time.sleep(0)

        t = threading.Thread(target=ticker)
        t.start()
        time.sleep(0.01)
        before = len(ticks)
        start = time.perf_counter()
        for _ in range(5):
            opt.step([g])
        elapsed = time.perf_counter() - start
        stop.set()
        t.join()
        during = [x for x in ticks if start <= x <= start + elapsed]
        assert len(ticks) > before and len(during) > 10, (len(during), elapsed)
    finally:
        fastopt.set_num_threads(None)
