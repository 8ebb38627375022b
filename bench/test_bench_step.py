"""pytest-benchmark suite: one optimizer step of fastopt next to its speed limit and baselines.

Every case (optimizer x dtype x size x threads) is one benchmark *group*, so that
pytest-benchmark prints its members side by side:

- ``probe``: the physical limit, the rule's memory traffic with no arithmetic (RULE_PROBE
  through a prebuilt ``_kernels.Frame``);
- ``fastopt``: ``opt.step(grads)`` on ``fastopt.Adam`` / ``fastopt.SGD``, as users call it;
- ``kernels``: the functional ``fastopt.kernels.adam`` / ``sgd``;
- ``reference``: the pure-NumPy ``fastopt.reference`` (single-threaded whatever the setting);
- ``torch-*``: torch.optim with foreach=False, foreach=True and fused=True (skipped when torch
  is not installed).

The systems and data are those of ``fastopt.bench`` (``python -m fastopt.bench`` prints the
interleaved report with GB/s and % of probe); ``extra_info`` holds the bytes each step moves.

Run it against the INSTALLED package, from the repository root:

    pytest -p no:cacheprovider --import-mode=importlib bench/ --benchmark-only
    pytest -p no:cacheprovider --import-mode=importlib bench/ --benchmark-disable   # smoke run
    pytest ... bench/ --big                  # adds 1e8 elements
    pytest ... bench/ -k "adam and float32"  # a subset

(``python -m pytest`` puts the current directory on sys.path, so run that form from a
directory other than the repository root, e.g. from a copy of bench/. The repository's
pyproject sets testpaths=tests, so a plain ``pytest`` never collects this folder.)
"""
from __future__ import annotations

import numpy as np
import pytest

import fastopt
from fastopt import _kernels
from fastopt import bench as fb

OPTIMIZERS = list(fb.OPTIMIZERS)     # every rule fastopt has
DTYPES = ["float32", "float64"]
SIZES = [10**3, 10**5, 10**6]
THREADS = ["1", "all"]
WARMUP = 2


def pytest_generate_tests(metafunc):
    sizes = SIZES + ([fb.BIG_SIZE] if metafunc.config.getoption("--big") else [])
    if "size" in metafunc.fixturenames:
        metafunc.parametrize("size", sizes, ids=fb.fmt_count)


@pytest.fixture(params=OPTIMIZERS)
def optimizer(request):
    return request.param


@pytest.fixture(params=DTYPES)
def dtype(request):
    return request.param


@pytest.fixture(params=THREADS, ids=lambda t: f"threads={t}")
def nthreads(request):
    """The thread count of the case, applied to fastopt for the test's duration."""
    n = _kernels.omp_max_threads() if request.param == "all" else int(request.param)
    fastopt.set_num_threads(n)
    yield fastopt.get_num_threads()
    fastopt.set_num_threads(None)


@pytest.fixture
def case(optimizer, dtype, size, nthreads):
    """(spec, params, grads, nthreads, group name) of one benchmark case."""
    spec = fb.OPTIMIZERS[optimizer]
    layout = fb.parse_layout(str(size))
    params, grads = fb.make_data(layout, np.dtype(dtype).type, seed=0)
    group = f"{optimizer} {dtype} {layout.name} threads={nthreads}"
    return spec, params, grads, nthreads, group


def import_torch():
    """torch, or a clean skip when it is absent (or installed but broken)."""
    try:
        return pytest.importorskip("torch", exc_type=ImportError)
    except TypeError:       # pytest < 8.2 has no exc_type
        return pytest.importorskip("torch")


def run(benchmark, case, system):
    """Warm the system up (the first steps create state), then benchmark one step."""
    spec, params, grads, nthreads, group = case
    benchmark.group = group
    benchmark.extra_info["bytes_per_step"] = (
        sum(p.size for p in params) * spec.bytes_per_element(params[0].itemsize))
    benchmark.extra_info["system"] = system.label
    step = system.make(nthreads)
    for _ in range(WARMUP):
        step()
    benchmark(step)


def test_probe(benchmark, case):
    spec, params, grads, *_ = case
    run(benchmark, case, fb.probe_system(spec, params, grads))


def test_fastopt(benchmark, case):
    spec, params, grads, *_ = case
    run(benchmark, case, fb.fastopt_system(spec, params, grads))


def test_kernels(benchmark, case):
    spec, params, grads, *_ = case
    run(benchmark, case, fb.kernels_system(spec, params, grads))


def test_reference(benchmark, case):
    spec, params, grads, *_ = case
    run(benchmark, case, fb.numpy_system(spec, params, grads))


@pytest.mark.parametrize("variant", fb.TORCH_VARIANTS, ids=lambda v: v[1])
def test_torch(benchmark, case, variant):
    torch = import_torch()
    spec, params, grads, nthreads, _ = case
    old = torch.get_num_threads()
    torch.set_num_threads(nthreads)
    try:
        try:
            system = fb.torch_system(torch, spec, params, grads, variant)
        except (RuntimeError, ValueError, TypeError) as e:
            pytest.skip(f"torch cannot run {variant[1]} here: {e}")
        run(benchmark, case, system)
    finally:
        torch.set_num_threads(old)
