"""Shared fixtures. The tests run against the INSTALLED package (see README: pytest is run with
--import-mode=importlib so the source folder fastopt/ does not shadow it)."""
from __future__ import annotations

import os

import pytest
from hypothesis import settings

import fastopt
from fastopt._backend import native as _kernels

HERE = os.path.dirname(os.path.abspath(__file__))

if os.path.dirname(os.path.dirname(os.path.abspath(fastopt.__file__))) == os.path.dirname(HERE):
    raise pytest.UsageError(
        "fastopt was imported from the source tree, not the installed package: run the tests as "
        "the README says (pip install '.[test]' then pytest), not with python -m pytest")

# Hypothesis: bounded example counts by default (CI); HYPOTHESIS_PROFILE=long for a long run.
settings.register_profile("ci", max_examples=100, deadline=None)
settings.register_profile("long", max_examples=5000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# Every instruction set this build has and this CPU runs: each kernel test runs on all of them.
ISAS = [name for name in _kernels.isa_compiled() if _kernels.isa_supported(name)]

# The straggler fallback keeps steps on one thread for a second after a congested parallel step
# (a loaded CI box): off for the suite, so that a test asking for threads really gets them;
# tests/test_core.py turns it on where it tests it.
fastopt.set_straggler_fallback(hold=0.0)


@pytest.fixture(params=ISAS)
def isa(request):
    old = fastopt.set_isa(request.param)
    yield request.param
    fastopt.set_isa(old)


@pytest.fixture
def threads():
    """Set the thread count and make even tiny steps use every thread; restores both."""
    old_grain = _kernels.set_parallel_grain(1)

    def use(n):
        fastopt.set_num_threads(n)
        return fastopt.get_num_threads()

    yield use
    fastopt.set_num_threads(None)
    _kernels.set_parallel_grain(old_grain)
