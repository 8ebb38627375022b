"""The straggler fallback on a loaded machine: single steps of Adam (float32) timed one by one
on 1 thread, on 2 threads with the fallback off, and on 2 threads with it on (the default),
optionally while a spinning process keeps one core busy.

    python -P bench/straggler.py [--load] [--sizes 1e5,1e6] [--rounds 2]

Per row: median, 90th percentile and worst single step, the total time of the row's steps, and
the fallback's counters (parallel steps found congested, steps it ran on the calling thread).
Run it against the INSTALLED package (outside the source tree, or with ``python -P``).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time

import numpy as np

import fastopt
from fastopt._backend import native

MODES = {"1 thread": (1, 1.0), "2, fallback off": (2, 0.0), "2, fallback on": (2, 1.0)}


def row(n: int, threads: int, steps: int) -> tuple[float, float, float, float]:
    fastopt.set_num_threads(threads)
    p = np.ones(n, np.float32)
    g = [np.full(n, 0.01, np.float32)]
    opt = fastopt.Adam([p], lr=1e-3)
    for _ in range(20):
        opt.step(g)
    ts = np.empty(steps)
    for i in range(steps):
        t = time.perf_counter_ns()
        opt.step(g)
        ts[i] = time.perf_counter_ns() - t
    ts = np.sort(ts) / 1e3
    return float(np.median(ts)), float(np.percentile(ts, 90)), float(ts[-1]), ts.sum() / 1e3


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--load", action="store_true", help="keep one core busy meanwhile")
    ap.add_argument("--sizes", default="1e5,1e6")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args(argv)
    spin = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if args.load else None
    old = fastopt.set_straggler_fallback()
    try:
        print(f"Adam float32, single steps; {'one core kept busy' if spin else 'no extra load'}")
        for _ in range(args.rounds):
            for n in (int(float(s)) for s in args.sizes.split(",")):
                steps = max(100, int(2e8 // n))
                for mode, (threads, hold) in MODES.items():
                    fastopt.set_straggler_fallback(2e-4, hold)
                    c0, s0, _ = native.straggler_stats()
                    med, p90, worst, total = row(n, threads, steps)
                    c1, s1, _ = native.straggler_stats()
                    print(f"n={n:>9,} {mode:16} median {med:9.1f} us  p90 {p90:9.1f} us  "
                          f"worst {worst:9.1f} us  {steps} steps {total:8.1f} ms  "
                          f"congested {c1 - c0}, on one thread {s1 - s0}")
    finally:
        fastopt.set_straggler_fallback(*old)
        fastopt.set_num_threads(None)
        if spin:
            spin.kill()


if __name__ == "__main__":
    main()
