"""Options of the pytest-benchmark suite (see test_bench_step.py for how to run it)."""
from __future__ import annotations


def pytest_addoption(parser):
    group = parser.getgroup("fastopt benchmark")
    group.addoption("--big", action="store_true", default=False,
                    help="also benchmark 1e8 elements (about 1.6 GB per float32 Adam case)")
