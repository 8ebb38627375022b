"""fastopt's benchmark: one optimizer step, against the memory limit, NumPy and torch.optim.

Run it as ``python -m fastopt.bench`` or ``fastopt-bench`` (``--help`` lists the options). The
table goes to stdout, a progress line to stderr.

What is measured
----------------
For every optimizer, dtype and *layout* (one tensor of 1e3 .. 1e7 elements, or many tensors:
1000 x 1e3, 100 x 1e5, a transformer-like mix), and for every thread count, these *systems*
run one step on their own copy of the same seeded data (the read-only gradients are shared):

- ``probe``: the physical limit. A native kernel with exactly the rule's memory traffic and no
  arithmetic (``RULE_PROBE``: it reads the param, the gradient and every state buffer and writes
  all of them but the gradient), called through a prebuilt ``_kernels.Frame`` so that its Python
  overhead is as small as possible.
- ``fastopt``: the optimizer as users call it, ``opt.step(grads)`` on ``fastopt.Adam`` etc.
- ``fastopt.kernels``: the functional interface (``fastopt.kernels.adam`` / ``sgd``), which
  validates every array on every call.
- ``numpy``: ``fastopt.reference`` (pure NumPy, one pass and usually one temporary per line).
  NumPy's element-wise ufuncs never use threads, so it is measured once per case, at the first
  thread count, and that figure is shown for every thread count.
- ``torch``: ``torch.optim`` with ``foreach=False``, ``foreach=True`` and ``fused=True`` on CPU
  tensors made with ``torch.from_numpy`` (``p.grad`` set once), ``torch.set_num_threads`` set to
  the thread count. Skipped, with a line saying so, when torch is not importable.

Method
------
- Every system is warmed up (the first steps create the optimizer state) before timing.
- Small steps are timed in *batches*: as many back-to-back calls as take about 2 ms (1 ms with
  ``--quick``), timed with ``time.perf_counter_ns`` and divided by the count.
- Systems are *interleaved*: one round times one batch of every system (A B C A B C ..., the
  starting system rotating each round), so that a noisy moment of a shared machine hits all of
  them alike. The number of rounds is chosen from a time budget per case and thread count
  (``--budget``), at least ``--min-rounds`` and at most 15; the figure reported is the *median*
  over the rounds. Big cases (NumPy at 1e7) therefore run only a few times. A system slower than
  ``--max-call`` seconds per call (twice in a row) is timed once and said so in the header.
  The garbage collector is off while timing.
- The tail: in every round, a system's batch of at most 32 calls is timed call by call; a bigger
  batch is timed as a whole and followed by 32 single steps timed one by one. ``p90 step`` and
  ``worst step`` are the 90th percentile and the maximum of those single steps (``p50_s``,
  ``p90_s``, ``max_s`` in ``--json``; the worst is never below a batch's mean either); each
  includes one timestamp's cost, which the header reports (about 0.1 us on a VM).
- Small layouts are cache resident across a batch: their figures measure per-call overhead and
  in-cache speed, which is what a training loop of small tensors sees.

What the columns mean
---------------------
- ``time/step``: median wall time of one step (over the rounds' batches).
- ``p90 step``, ``worst step``: the 90th percentile and the worst of single steps.
- ``GB/s``: the rule's *minimum* memory traffic divided by the time: every stream read once,
  every in-place target written once. Per element, in bytes of the dtype: Adam reads p, g, m, v
  and writes p, m, v (7 x 4 = 28 bytes in float32), AMSGrad 9 x 4 = 36, SGD with momentum 5 x 4 =
  20, plain SGD 3 x 4 = 12; float64 doubles these. The same byte count is used for every system,
  so a system that makes extra passes (NumPy's temporaries) shows a lower "effective" GB/s.
- ``% probe``: probe_time / system_time * 100, i.e. how close the system is to the physical
  limit of its memory traffic (100 % = as fast as merely streaming the data).
- ``vs fastopt``: this system's time / the fastopt optimizer's time ("x faster").
- ``used``: the threads fastopt really uses: steps below the parallel grain (elements per
  thread, see ``fastopt.show_config()``) stay on the calling thread whatever the setting.

Storage and model rows
----------------------
- ``--rows storage`` (on by default, at 1e7 elements): Adam on 16-bit storage (bfloat16 with a
  float32 master copy and states, bfloat16 with float32 states, bfloat16 params and states with
  nearest and stochastic rounding, float16 with a master copy, float16 params and states) next
  to float32 and torch's fused and for-loop bfloat16 Adam.
- ``--models`` / ``--rows models`` (opt-in: GPT-2 small needs about 9 GiB): the parameter shapes
  of ResNet-50 and GPT-2 small (``resnet50_shapes``, ``gpt2_shapes``), AdamW in float32, in
  bfloat16 with float32 master weights, with 8-bit states once fastopt accepts
  ``state_dtype="8bit"`` (skipped, saying so, until then), and torch's fused and for-loop AdamW.
  ``--model-scale K`` divides the widths for a quick look.
- Every system's bytes moved per element (``B/elem``) and optimizer state per param are read
  from its arrays after its first step; ``probe equiv`` is the probe's time for those bytes at
  the rate it measured in the same rounds (float32 traffic of the rule), ``x probe`` the
  system's time over it. The NumPy reference is left out of these rows.

Load
----
``--load`` runs every case while a spinning Python subprocess (not pinned) keeps one core
busy; ``--load both`` runs each case unloaded and then loaded and adds a comparison table. The
spinner is stopped on every exit (Ctrl-C included) and exits by itself if the report dies.

The header reports the configuration (version, SIMD path in use, OpenMP, threads), the CPU, the
NumPy version and the allocator setting the NumPy figures used, and the measured streaming
bandwidth of the probe at the largest layout, "memory bandwidth (probe, N threads)".
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

import fastopt
from fastopt import _spec, functional, reference
from fastopt import kernels as fkernels
from fastopt._backend import native as _kernels

GB = 1e9
DEFAULT_SIZES = (10**3, 10**4, 10**5, 10**6, 10**7)
BIG_SIZE = 10**8
DEFAULT_LAYOUTS = ("1000x1e3", "100x1e5", "transformer")
QUICK_SIZES = (10**3, 10**5, 10**6)
QUICK_LAYOUTS = ("1000x1e3",)
ROW_KINDS = ("steps", "storage", "models")
DEFAULT_ROWS = ("steps", "storage")
STORAGE_SIZES = (10**7,)
QUICK_STORAGE_SIZES = (10**6,)
MALLOC_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_ARENA_MAX",
              "MALLOC_TOP_PAD_", "GLIBC_TUNABLES")


# ---- optimizers ---------------------------------------------------------------------------

@dataclass(frozen=True)
class OptSpec:
    """One optimizer setting, described once for every system."""
    key: str             # command-line name
    title: str           # for the table
    family: str          # the fastopt.kernels / fastopt.reference function: "adam", "sgd", ...
    nstate: int          # state buffers per param (probe streams = 2 + nstate)
    fastopt_cls: str     # class in fastopt
    torch_cls: str | None  # class in torch.optim (None: torch has no such rule)
    kwargs: dict         # constructor keywords, shared by fastopt and torch
    functional: dict     # keywords of fastopt.kernels / fastopt.reference

    @property
    def nstreams(self) -> int:
        return 2 + self.nstate

    def bytes_per_element(self, itemsize: int) -> int:
        """Minimum traffic: every stream read once, all but the gradient written once."""
        return itemsize * (2 * self.nstreams - 1)


OPTIMIZERS = {
    "adam": OptSpec("adam", "Adam", "adam", 2, "Adam", "Adam", dict(lr=1e-3),
                    dict(lr=1e-3)),
    "adamw": OptSpec("adamw", "AdamW (weight_decay=1e-2)", "adam", 2, "AdamW", "AdamW",
                     dict(lr=1e-3, weight_decay=1e-2),
                     dict(lr=1e-3, weight_decay=1e-2, decoupled_weight_decay=True)),
    "amsgrad": OptSpec("amsgrad", "Adam (amsgrad)", "adam", 3, "Adam", "Adam",
                       dict(lr=1e-3, amsgrad=True), dict(lr=1e-3)),
    "sgd": OptSpec("sgd", "SGD (momentum=0.9)", "sgd", 1, "SGD", "SGD",
                   dict(lr=1e-3, momentum=0.9), dict(lr=1e-3, momentum=0.9)),
    "sgd-plain": OptSpec("sgd-plain", "SGD (no momentum)", "sgd", 0, "SGD", "SGD",
                         dict(lr=1e-3), dict(lr=1e-3)),
    "rmsprop": OptSpec("rmsprop", "RMSprop", "rmsprop", 1, "RMSprop", "RMSprop",
                       dict(lr=1e-2), dict(lr=1e-2)),
    "adagrad": OptSpec("adagrad", "Adagrad", "adagrad", 1, "Adagrad", "Adagrad",
                       dict(lr=1e-2), dict(lr=1e-2)),
    "lion": OptSpec("lion", "Lion", "lion", 1, "Lion", None, dict(lr=1e-4), dict(lr=1e-4)),
    "adamax": OptSpec("adamax", "Adamax", "adamax", 2, "Adamax", "Adamax",
                      dict(lr=2e-3), dict(lr=2e-3)),
    "radam": OptSpec("radam", "RAdam", "radam", 2, "RAdam", "RAdam",
                     dict(lr=1e-3), dict(lr=1e-3)),
    "nadam": OptSpec("nadam", "NAdam", "nadam", 2, "NAdam", "NAdam",
                     dict(lr=2e-3), dict(lr=2e-3)),
    "adadelta": OptSpec("adadelta", "Adadelta", "adadelta", 2, "Adadelta", "Adadelta",
                        dict(lr=1.0), dict(lr=1.0)),
    "rprop": OptSpec("rprop", "Rprop", "rprop", 2, "Rprop", "Rprop", dict(lr=1e-2), dict()),
    "asgd": OptSpec("asgd", "ASGD", "asgd", 1, "ASGD", "ASGD", dict(lr=1e-2), dict(lr=1e-2)),
    "lamb": OptSpec("lamb", "LAMB", "lamb", 2, "LAMB", None, dict(lr=1e-3), dict(lr=1e-3)),
}
DEFAULT_OPTIMIZERS = ("adam", "sgd")


# ---- layouts and data ---------------------------------------------------------------------

@dataclass(frozen=True)
class Layout:
    name: str
    shapes: tuple

    @property
    def elements(self) -> int:
        return sum(math.prod(s) for s in self.shapes)

    @property
    def tensors(self) -> int:
        return len(self.shapes)


def fmt_count(n: int) -> str:
    """1000 -> '1e3', 300000 -> '3e5', 1234 -> '1234'."""
    if n >= 1000:
        exp = int(math.floor(math.log10(n)))
        mant = n / 10**exp
        if mant == int(mant):
            return f"{int(mant)}e{exp}" if mant != 1 else f"1e{exp}"
    return str(n)


def parse_count(text: str) -> int:
    value = float(text)
    if value < 1 or value != int(value):
        raise argparse.ArgumentTypeError(f"not a positive element count: {text!r}")
    return int(value)


def transformer_layout(d: int = 256, layers: int = 6, vocab: int = 8192, ctx: int = 1024):
    """A GPT-like model: embeddings, per layer 4 d x d attention and d x 4d / 4d x d MLP
    matrices with their biases and two LayerNorms, a final LayerNorm (~7e6 elements)."""
    shapes: list[tuple[int, ...]] = [(vocab, d), (ctx, d)]
    for _ in range(layers):
        shapes += [(d,), (d,)]                                   # LayerNorm 1
        shapes += [(d, d), (d,)] * 4                             # q, k, v, out projections
        shapes += [(d,), (d,)]                                   # LayerNorm 2
        shapes += [(d, 4 * d), (4 * d,), (4 * d, d), (d,)]       # MLP
    shapes += [(d,), (d,)]                                       # final LayerNorm
    return Layout("transformer", tuple(shapes))


def parse_layout(text: str) -> Layout:
    """'1e6' (one tensor), 'COUNTxSIZE' (e.g. 1000x1e3) or 'transformer'."""
    text = text.strip().lower()
    if text == "transformer":
        return transformer_layout()
    if "x" in text:
        count, size = (parse_count(t) for t in text.split("x", 1))
        return Layout(f"{count}x{fmt_count(size)}", ((size,),) * count)
    size = parse_count(text)
    return Layout(fmt_count(size), ((size,),))


def make_data(layout: Layout, dtype, seed: int):
    """Seeded params and gradients: one list of arrays each."""
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(s, dtype=dtype) for s in layout.shapes]
    grads = [rng.standard_normal(s, dtype=dtype) * dtype(1e-2) for s in layout.shapes]
    return params, grads


def copies(arrays):
    return [a.copy() for a in arrays]


def zeros(arrays):
    """Zeroed arrays like ``arrays``, with their pages touched (not lazily mapped)."""
    return [np.full_like(a, 0) for a in arrays]


# ---- systems ------------------------------------------------------------------------------

@dataclass
class System:
    """One contender: ``make(nthreads)`` returns the zero-argument step to time."""
    key: str
    label: str
    make: Callable[[int], Callable[[], object]]
    threaded: bool = True          # False: independent of the thread count (measured once)
    slow: bool = False             # over Settings.max_call per call: timed once only
    samples: dict = field(default_factory=dict)   # threads -> [seconds per call, per round]
    batch: dict = field(default_factory=dict)     # threads -> calls per batch
    steps: dict = field(default_factory=dict)     # threads -> [seconds of single steps]
    bytes_per_element: float | None = None   # storage/model rows: this system's own traffic
    state_bytes: float | None = None       # storage/model rows: optimizer state bytes/param


def probe_system(spec, params, grads):
    """The rule's memory traffic with no arithmetic, through a prebuilt plan."""
    p = zeros(params)
    state = [zeros(params) for _ in range(spec.nstate)]
    streams: list = [p, list(grads)] + [list(s) for s in state]
    streams += [None] * (_kernels.MAX_STREAMS - len(streams))
    args = np.array([_spec.PROBE.record({"nstreams": spec.nstreams})], dtype=np.float64)
    steps = np.ones(len(p), dtype=np.int64)
    if not functional.NATIVE:       # the NumPy backend: its own probe, through the same layer
        def make_numpy(nthreads):
            def step():
                return functional.run_lists(_spec.PROBE, streams, ["probe"] * len(streams),
                                            records=args, steps=steps)
            return step
        return System("probe", "probe (limit)", make_numpy)
    # one frame, filled once and kept (release=False): the probe pays no per-call checks
    frame = _kernels.Frame()
    if frame.fill_numpy_lists(streams, len(p)) >= 0:
        raise RuntimeError("bench: the probe's arrays were refused")
    group = np.zeros(len(p), np.int32)
    gscale = np.ones(1)
    memo = _kernels.Memo()

    head, tail = functional.prepare(_spec.PROBE, group=group, records=args, gscale=gscale,
                                    steps=steps, increment=False, memo=memo, release=False)

    def make(nthreads):
        def step():
            return functional.run_prepared(frame, head, tail, nthreads)
        return step
    return System("probe", "probe (limit)", make)


def fastopt_system(spec, params, grads):
    opt = getattr(fastopt, spec.fastopt_cls)(copies(params), **spec.kwargs)
    g = list(grads)
    return System("fastopt", f"fastopt {spec.fastopt_cls}.step",
                  lambda n: (lambda: opt.step(g)))


def _functional_state(spec, params):
    p = copies(params)
    state = [zeros(params) for _ in range(spec.nstate)]
    return p, state


def _functional_step(module, spec, params, grads):
    """One step of ``module.adam`` / ``module.sgd`` (fastopt.kernels or fastopt.reference) on
    its own copy of the data: every tensor at step 1, SGD buffers already initialised."""
    p, state = _functional_state(spec, params)
    g = list(grads)
    kw = spec.functional
    steps = [1] * len(p)
    if spec.family == "adam":
        vmax = state[2] if spec.nstate == 3 else None
        return lambda: module.adam(p, g, state[0], state[1], vmax, steps, **kw)
    if spec.family == "sgd":
        bufs = state[0] if spec.nstate else None
        return lambda: module.sgd(p, g, bufs, **kw)
    fn = getattr(module, spec.family)
    if spec.family == "nadam":
        mu = np.ones(len(p))
        return lambda: fn(p, g, *state, mu, steps, **kw)
    if spec.family == "asgd":
        eta_mu = np.tile([kw["lr"], 1.0], (len(p), 1))
        return lambda: fn(p, g, *state, eta_mu, steps, **kw)
    if spec.family in ("adagrad", "adamax", "radam", "lamb"):   # rules that take step counts
        return lambda: fn(p, g, *state, steps, **kw)
    return lambda: fn(p, g, *state, **kw)


def kernels_system(spec, params, grads):
    step = _functional_step(fkernels, spec, params, grads)
    return System("fastopt.kernels", f"fastopt.kernels.{spec.family}", lambda n: step)


def numpy_system(spec, params, grads):
    step = _functional_step(reference, spec, params, grads)
    return System("numpy", "numpy reference (1 thread)", lambda n: step, threaded=False)


TORCH_VARIANTS = (("torch", "foreach=False", dict(foreach=False)),
                  ("torch foreach", "foreach=True", dict(foreach=True)),
                  ("torch fused", "fused=True", dict(fused=True)))


def torch_system(torch, spec, params, grads, variant):
    """torch.optim on tensors sharing a copy of the data; ``variant`` is a TORCH_VARIANTS entry.
    Raises RuntimeError, ValueError or TypeError if torch cannot run that variant."""
    key, what, impl = variant
    tensors = []
    for a, g in zip(params, grads):
        t = torch.from_numpy(a.copy()).requires_grad_(True)
        t.grad = torch.from_numpy(g)
        tensors.append(t)
    opt = getattr(torch.optim, spec.torch_cls)(tensors, **spec.kwargs, **impl)
    opt.step()          # creates the state; raises if the variant is unsupported
    return System(key, f"torch {spec.torch_cls} {what}", lambda n: opt.step)


def torch_systems(torch, spec, params, grads, notes):
    """torch.optim in its three implementations; one that cannot run is noted and left out."""
    systems = []
    for variant in TORCH_VARIANTS:
        try:
            systems.append(torch_system(torch, spec, params, grads, variant))
        except (RuntimeError, ValueError, TypeError) as e:
            notes.add(f"torch {spec.torch_cls} {variant[1]}: not supported here ({e}); "
                      "skipped")
    return systems


def build_systems(spec, params, grads, torch, notes):
    systems = [probe_system(spec, params, grads), fastopt_system(spec, params, grads),
               kernels_system(spec, params, grads), numpy_system(spec, params, grads)]
    if torch is not None and spec.torch_cls is not None:
        systems += torch_systems(torch, spec, params, grads, notes)
    return systems


# ---- timing -------------------------------------------------------------------------------

@dataclass
class Settings:
    budget: float = 0.4        # seconds of timed work per case and thread count
    batch_s: float = 2e-3      # target duration of one timed batch
    min_rounds: int = 5
    max_rounds: int = 15
    warmup: int = 2
    max_call: float = 0.5      # a system slower than this per call is timed once (see measure)


def time_batch(fn, batch: int) -> float:
    """Seconds per call over ``batch`` back-to-back calls."""
    t0 = time.perf_counter_ns()
    for _ in range(batch):
        fn()
    return (time.perf_counter_ns() - t0) / batch / 1e9


TAIL_CALLS = 32     # single steps timed one by one per round (the tail: p90, worst)


def time_steps(fn, count: int) -> list[float]:
    """Seconds of each of ``count`` back-to-back calls, each timed on its own (the clock's own
    cost, ``clock_cost()``, is included in every figure)."""
    clock = time.perf_counter_ns
    stamps = [0] * (count + 1)
    stamps[0] = clock()
    for i in range(count):
        fn()
        stamps[i + 1] = clock()
    return [(b - a) / 1e9 for a, b in zip(stamps, stamps[1:])]


def clock_cost() -> float:
    """Seconds that one timestamp of ``time_steps`` costs (the median of a few estimates)."""
    return statistics.median(statistics.fmean(time_steps(lambda: None, 2000))
                             for _ in range(5))


def time_round(fn, batch: int, steps: list) -> float:
    """One round of one system: seconds per call of a batch (the headline), and single-step
    times appended to ``steps``. A batch of at most TAIL_CALLS calls is itself timed step by
    step; a bigger one is timed as a whole and followed by TAIL_CALLS single steps."""
    if batch <= TAIL_CALLS:
        one = time_steps(fn, batch)
        steps += one
        return sum(one) / batch
    mean = time_batch(fn, batch)
    steps += time_steps(fn, TAIL_CALLS)
    return mean


def tail(steps, samples) -> dict:
    """p50 / p90 of the single steps; the worst: the slowest single step or batch mean (a
    batch's mean is a lower bound of its slowest step, so no step seen is left out)."""
    xs = np.asarray(steps if steps else samples, dtype=np.float64)
    return {"p50_s": float(np.percentile(xs, 50)), "p90_s": float(np.percentile(xs, 90)),
            "max_s": float(max(xs.max(), max(samples))), "steps_timed": int(xs.size)}


def calibrate(fn, settings: Settings, first: float) -> tuple[int, float]:
    """Finish the warm-up (the caller made the first call, which took ``first`` seconds), then
    pick the batch size: (calls per batch, estimated seconds per batch). The estimate is the
    fastest of the timed calls, so that one hiccup of a shared machine does not distort it."""
    once = first
    for _ in range(settings.warmup - 1):
        once = min(once, time_batch(fn, 1))
    if once < settings.batch_s / 4:     # refine the estimate of a fast call
        once = min(once, time_batch(fn, max(1, int(settings.batch_s / 4 / max(once, 1e-9)))))
    batch = max(1, min(1_000_000, math.ceil(settings.batch_s / max(once, 1e-9))))
    return batch, batch * once


def measure(systems, nthreads, settings: Settings, progress, what: str, notes) -> None:
    """Interleaved rounds over ``systems``; appends per-call times to each system's samples.

    A system whose first two calls both take longer than ``settings.max_call`` keeps the
    second as its only sample and is not timed again in this case (a note says so): it would
    otherwise eat the whole time budget.
    """
    fns, timed, cost = {}, [], 0.0
    for s in systems:
        progress(f"{what}: warming up {s.label}")
        fn = s.make(nthreads)
        first = time_batch(fn, 1)
        if first > settings.max_call:      # the first call may be a hiccup: try again
            first = time_batch(fn, 1)
            if first > settings.max_call:
                s.samples[nthreads], s.batch[nthreads], s.slow = [first], 1, True
                s.steps[nthreads] = [first]
                notes.add(f"note: {s.label} on {what}: {first:.2f} s per call (over "
                          f"--max-call {settings.max_call} s): timed once, not at other "
                          "thread counts")
                continue
        s.batch[nthreads], seconds = calibrate(fn, settings, first)
        fns[s.key] = fn
        timed.append(s)
        cost += seconds
    if not timed:
        return
    rounds = int(max(settings.min_rounds, min(settings.max_rounds, settings.budget // cost)))
    gc.collect()
    gc.disable()
    try:
        for r in range(rounds):
            progress(f"{what}: round {r + 1}/{rounds}")
            k = r % len(timed)
            for s in timed[k:] + timed[:k]:
                s.samples.setdefault(nthreads, []).append(
                    time_round(fns[s.key], s.batch[nthreads], s.steps.setdefault(nthreads, [])))
    finally:
        gc.enable()


# ---- threads ------------------------------------------------------------------------------

def parse_threads(text: str) -> list[int]:
    limit = _kernels.omp_max_threads()
    out = []
    for item in text.split(","):
        item = item.strip().lower()
        n = limit if item in ("all", "-1") else int(item)
        if n < 1:
            raise argparse.ArgumentTypeError(f"thread count must be >= 1 or 'all', got {item}")
        n = min(n, limit)
        if n not in out:
            out.append(n)
    return out


def set_threads(n: int, torch) -> None:
    fastopt.set_num_threads(n)
    if torch is not None:
        torch.set_num_threads(n)


def threads_used(nthreads: int, elements: int) -> int:
    """What fastopt's driver really uses (see _kernels.run)."""
    return max(1, min(nthreads, elements // _kernels.get_parallel_grain()))


# ---- load: a process that keeps one core busy (--load) ------------------------------------

# A busy loop that says when it runs and ends by itself if the report dies without stopping it
# (its parent changes when the report's process is gone, even after SIGKILL).
SPIN_CODE = ("import os, sys\n"
             "parent = os.getppid()\n"
             "sys.stdout.write('spinning\\n')\n"
             "sys.stdout.flush()\n"
             "while os.getppid() == parent:\n"
             "    for _ in range(100000):\n"
             "        pass\n")


class Spinner:
    """The load of ``--load``: a Python subprocess spinning on one core (not pinned: the
    scheduler places it, as it would another user's job). ``start()`` returns once it runs;
    ``stop()`` terminates it and waits for it (kills it if needed); both are idempotent, and
    ``with Spinner():`` stops it on any exit, Ctrl-C included."""

    def __init__(self):
        self.proc: subprocess.Popen | None = None
        self.pids: list[int] = []
        self.cpu_s = 0.0            # CPU seconds the spinners used (Linux: /proc)
        self.wall_s = 0.0           # seconds they ran

    @property
    def running(self) -> bool:
        return self.proc is not None

    def start(self) -> None:
        if self.proc is not None:
            return
        proc = subprocess.Popen([sys.executable, "-c", SPIN_CODE], stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.proc, self._t0 = proc, time.perf_counter()
        self.pids.append(proc.pid)
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != b"spinning":
            self.stop()
            raise RuntimeError("fastopt-bench: --load: the spinning process did not start")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        self.cpu_s += process_cpu_seconds(proc.pid) or 0.0
        self.wall_s += time.perf_counter() - self._t0
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a running process (Linux /proc), else None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


# ---- one case -----------------------------------------------------------------------------

def run_case(spec, dtype, layout, thread_counts, torch, settings, seed, progress, notes):
    """All systems of one (optimizer, dtype, layout), for every thread count: result rows."""
    params, grads = make_data(layout, dtype, seed)
    systems = build_systems(spec, params, grads, torch, notes)
    del params
    rows = []
    for i, n in enumerate(thread_counts):
        set_threads(n, torch)
        active = [s for s in systems if (s.threaded or i == 0) and not s.slow]
        what = f"{spec.key} {np.dtype(dtype).name} {layout.name} x{n} thread{'s' * (n > 1)}"
        measure(active, n, settings, progress, what, notes)
        rows.append(summarize(spec, dtype, layout, n, systems, thread_counts[0]))
    return rows


def summarize(spec, dtype, layout, nthreads, systems, first_threads) -> dict:
    """The result row of one case and thread count (what the table and --json show)."""
    nbytes = layout.elements * spec.bytes_per_element(np.dtype(dtype).itemsize)
    out = {}
    for s in systems:
        n = nthreads if s.threaded else first_threads
        samples = s.samples.get(n)
        if not samples:
            continue
        t = statistics.median(samples)
        out[s.key] = {"label": s.label, "time_s": t, **tail(s.steps.get(n), samples),
                      "gb_per_s": nbytes / t / GB,
                      "rounds": len(samples), "batch": s.batch[n],
                      "measured_threads": n, "samples_s": samples}
    probe = out["probe"]["time_s"]
    fast = out["fastopt"]["time_s"]
    for r in out.values():
        r["pct_probe"] = probe / r["time_s"] * 100
        r["fastopt_speedup"] = r["time_s"] / fast
    torch_keys = [k for k in out if k.startswith("torch")]
    best_torch = min(torch_keys, key=lambda k: out[k]["time_s"]) if torch_keys else None
    return {
        "kind": "steps", "optimizer": spec.key, "title": spec.title,
        "dtype": np.dtype(dtype).name,
        "layout": layout.name, "elements": layout.elements, "tensors": layout.tensors,
        "threads": nthreads, "threads_used": threads_used(nthreads, layout.elements),
        "bytes_per_element": spec.bytes_per_element(np.dtype(dtype).itemsize),
        "bytes_per_step": nbytes, "systems": out,
        "speedup_vs_numpy": out["numpy"]["time_s"] / fast if "numpy" in out else None,
        "best_torch": best_torch,
        "speedup_vs_torch": out[best_torch]["time_s"] / fast if best_torch else None,
    }


# ---- model-shaped rows (--models) and 16-bit storage rows ----------------------------------

def resnet50_shapes(width: int = 64, classes: int = 1000, blocks=(3, 4, 6, 3),
                    expansion: int = 4) -> list[tuple[int, ...]]:
    """torchvision's ResNet-50 parameters in its order: conv weights (out, in, kh, kw) without
    biases, every BatchNorm's weight and bias, the fc layer. A stem (7x7 conv, BN), four stages
    of bottleneck blocks (1x1 reduce, 3x3, 1x1 expand to ``expansion`` x, each with a BN; the
    first block of a stage adds a 1x1 projection and its BN), fc. 161 tensors, 25,557,032
    params at the defaults."""
    shapes: list[tuple[int, ...]] = [(width, 3, 7, 7), (width,), (width,)]
    inplanes = width
    for stage, count in enumerate(blocks):
        planes = width * 2**stage
        out = planes * expansion
        for b in range(count):
            shapes += [(planes, inplanes, 1, 1), (planes,), (planes,),
                       (planes, planes, 3, 3), (planes,), (planes,),
                       (out, planes, 1, 1), (out,), (out,)]
            if b == 0:
                shapes += [(out, inplanes, 1, 1), (out,), (out,)]      # the projection
            inplanes = out
    return shapes + [(classes, inplanes), (classes,)]


def gpt2_shapes(d: int = 768, layers: int = 12, vocab: int = 50257,
                ctx: int = 1024) -> list[tuple[int, ...]]:
    """GPT-2 small's parameters (Hugging Face's order; Conv1D weights are (in, out)): token and
    position embeddings, per block ln_1, attn.c_attn (d x 3d) and its bias, attn.c_proj (d x d)
    and its bias, ln_2, mlp.c_fc (d x 4d), mlp.c_proj (4d x d) and their biases, then ln_f.
    The LM head is tied to wte (no tensor of its own). 148 tensors, 124,439,808 params at the
    defaults."""
    shapes: list[tuple[int, ...]] = [(vocab, d), (ctx, d)]
    for _ in range(layers):
        shapes += [(d,), (d,), (d, 3 * d), (3 * d,), (d, d), (d,),
                   (d,), (d,), (d, 4 * d), (4 * d,), (4 * d, d), (d,)]
    return shapes + [(d,), (d,)]


MODELS = {
    "resnet50": ("ResNet-50", lambda k: resnet50_shapes(width=max(1, 64 // k),
                                                        classes=max(1, 1000 // k))),
    "gpt2-small": ("GPT-2 small", lambda k: gpt2_shapes(d=max(1, 768 // k),
                                                        vocab=max(1, 50257 // k),
                                                        ctx=max(1, 1024 // k))),
}


def model_layout(name: str, scale: int = 1) -> Layout:
    """A MODELS entry as a layout; ``scale`` divides every width (tests use a small copy)."""
    title, shapes = MODELS[name]
    return Layout(name if scale == 1 else f"{name}/{scale}", tuple(shapes(scale)))


def bf16_dtype():
    """ml_dtypes' bfloat16, or None when ml_dtypes is not installed."""
    try:
        import ml_dtypes
    except ImportError:
        return None
    return np.dtype(ml_dtypes.bfloat16)


class Skip(Exception):
    """A row's system that cannot run here; the message says why."""


def traffic(params, grads, state: list, master: bool) -> tuple[float, float]:
    """(bytes moved per element, optimizer state bytes per param) of one step, from the arrays
    themselves: the param read and written (written only with a master copy), the gradient
    read, every per-element state buffer (the master copy included) read and written."""
    n = sum(p.size for p in params)
    moved = sum(p.nbytes for p in params) * (1 if master else 2)
    moved += sum(g.nbytes for g in grads)
    held = sum(_nbytes(x) for st in state for x in st.values())
    return (moved + 2 * held) / n, held / n


def _nbytes(x) -> int:
    """Bytes of a per-element state buffer (a NumPy array or torch tensor; scalars: 0)."""
    if getattr(x, "ndim", 0) < 1:
        return 0
    return x.nbytes if isinstance(x, np.ndarray) else x.numel() * x.element_size()


def fastopt_storage_system(spec, key, label, params, grads, **storage):
    """fastopt's optimizer on its own copy of ``params`` with storage options (bf16, master
    weights, state_dtype, ...); raises Skip if the optimizer refuses them."""
    cls = getattr(fastopt, spec.fastopt_cls)
    p, g = copies(params), list(grads)
    try:
        opt = cls(p, **spec.kwargs, **storage)
        opt.step(g)                     # creates the state
    except (TypeError, ValueError, NotImplementedError) as e:
        raise Skip(f"fastopt.{spec.fastopt_cls}({_kw(storage)}) refused: {e}") from None
    s = System(key, label, lambda n: (lambda: opt.step(g)))
    s.bytes_per_element, s.state_bytes = traffic(p, g, list(opt.state.values()),
                                                 bool(storage.get("master_weights")))
    return s


def _kw(storage) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in storage.items())


def eight_bit_system(spec, params, grads):
    """The 8-bit states hook: a row once ``state_dtype="8bit"`` is accepted (detected by
    trying it on a small tensor), skipped with the reason until then."""
    cls = getattr(fastopt, spec.fastopt_cls)
    try:
        cls([np.zeros(64, np.float32)], state_dtype="8bit").step([np.ones(64, np.float32)])
    except (TypeError, ValueError, NotImplementedError) as e:
        raise Skip(f"8-bit states not available (fastopt.{spec.fastopt_cls}"
                   f"(state_dtype='8bit'): {e})") from None
    return fastopt_storage_system(spec, "fastopt 8bit", f"fastopt {spec.fastopt_cls} 8-bit "
                                  "states", params, grads, state_dtype="8bit")


def torch_mixed_system(torch, spec, key, variant, params, grads, dtype=None):
    """torch.optim (``variant`` of TORCH_VARIANTS) on its own copy of the data, in ``dtype``
    (a torch dtype; None: float32 from the NumPy arrays); raises Skip if torch refuses."""
    _, what, impl = variant
    tensors = _torch_copies(torch, params, grads, dtype)
    name = str(dtype).replace("torch.", "") if dtype is not None else "float32"
    try:
        opt = getattr(torch.optim, spec.torch_cls)(tensors, **spec.kwargs, **impl)
        opt.step()
    except (RuntimeError, ValueError, TypeError) as e:
        raise Skip(f"torch {spec.torch_cls} {what} {name}: not supported here ({e})") from None
    s = System(key, f"torch {spec.torch_cls} {what} {name}", lambda n: opt.step)
    s.bytes_per_element, s.state_bytes = _torch_traffic(tensors, opt, master=False)
    return s


def _torch_copies(torch, params, grads, dtype=None) -> list:
    """Tensors holding copies of ``params`` with ``grads`` as their gradients, in ``dtype``
    (a torch dtype; None: float32)."""
    tensors = []
    for a, g in zip(params, grads):
        t = torch.from_numpy(a.astype(np.float32, copy=True))
        gt = torch.from_numpy(np.asarray(g, np.float32))
        if dtype is not None:
            t, gt = t.to(dtype), gt.to(dtype)
        t.requires_grad_(True)
        t.grad = gt
        tensors.append(t)
    return tensors


def _torch_traffic(tensors, opt, master: bool) -> tuple[float, float]:
    """``traffic`` for torch tensors: (bytes moved per element, state bytes per param)."""
    n = sum(t.numel() for t in tensors)
    moved = sum(t.numel() * t.element_size() for t in tensors) * (1 if master else 2)
    moved += sum(t.grad.numel() * t.grad.element_size() for t in tensors)
    held = sum(_nbytes(x) for st in opt.state.values() for x in st.values())
    return (moved + 2 * held) / n, held / n


def run_extra_case(kind, title, spec, layout, builders, thread_counts, settings, seed,
                   progress, notes, torch):
    """One model or storage case: ``builders`` are (key, label, build(params, grads)) where
    build returns a System or raises Skip. The probe has the float32 traffic of ``spec``; each
    system is compared with the probe's time for its own bytes."""
    params, grads = make_data(layout, np.float32, seed)
    systems = [probe_system(spec, params, grads)]
    systems[0].bytes_per_element = spec.bytes_per_element(4)
    order: list[System | tuple[str, dict]] = list(systems)   # systems and skips, in order
    for key, label, build in builders:
        try:
            systems.append(build(params, grads))
            order.append(systems[-1])
        except Skip as e:
            order.append((key, {"label": label, "skipped": str(e)}))
    del params, grads
    rows = []
    for n in thread_counts:
        set_threads(n, torch)
        what = f"{kind} {layout.name} x{n} thread{'s' * (n > 1)}"
        measure([s for s in systems if not s.slow], n, settings, progress, what, notes)
        rows.append(summarize_extra(kind, title, spec, layout, n, order))
    rows[-1]["peak_rss_gib"] = peak_rss_gib()
    del systems, order
    gc.collect()
    return rows


def summarize_extra(kind, title, spec, layout, nthreads, order) -> dict:
    out: dict[str, dict] = {}
    for s in order:
        if isinstance(s, tuple):                # skipped: (key, {"label", "skipped"})
            out[s[0]] = s[1]
            continue
        samples = s.samples.get(nthreads)
        if not samples:
            continue
        t = statistics.median(samples)
        out[s.key] = {"label": s.label, "time_s": t, **tail(s.steps.get(nthreads), samples),
                      "bytes_per_element": s.bytes_per_element,
                      "state_bytes_per_param": s.state_bytes,
                      "gb_per_s": layout.elements * s.bytes_per_element / t / GB,
                      "rounds": len(samples), "batch": s.batch[nthreads]}
    probe_bw = out["probe"]["gb_per_s"]
    for r in out.values():
        if "skipped" in r:
            continue
        equiv = layout.elements * r["bytes_per_element"] / (probe_bw * GB)
        r["probe_equiv_s"], r["x_probe"] = equiv, r["time_s"] / equiv
    return {"kind": kind, "title": title, "optimizer": spec.key, "layout": layout.name,
            "elements": layout.elements, "tensors": layout.tensors, "threads": nthreads,
            "threads_used": threads_used(nthreads, layout.elements),
            "probe_gb_per_s": probe_bw, "systems": out}


def peak_rss_gib() -> float | None:
    """The process's peak resident memory so far (Linux/macOS), GiB."""
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (2**30 if sys.platform == "darwin" else 2**20), 2)


def model_builders(spec, torch, bf16):
    cls = spec.fastopt_cls
    builders = [("fastopt", f"fastopt {cls} float32",
                 lambda p, g: fastopt_storage_system(spec, "fastopt", f"fastopt {cls} float32",
                                                     p, g))]
    if bf16 is None:
        builders.append(("fastopt bf16+master", f"fastopt {cls} bf16 + f32 master",
                         _skip("bfloat16: ml_dtypes is not installed (pip install "
                               "'fastopt[bf16]')")))
    else:
        builders.append(("fastopt bf16+master", f"fastopt {cls} bf16 + f32 master",
                         lambda p, g: fastopt_storage_system(
                             spec, "fastopt bf16+master", f"fastopt {cls} bf16 + f32 master",
                             [x.astype(bf16) for x in p], [x.astype(bf16) for x in g],
                             master_weights=True)))
    builders.append(("fastopt 8bit", f"fastopt {cls} 8-bit states",
                     lambda p, g: eight_bit_system(spec, p, g)))
    builders += _torch_builders(torch, spec, (TORCH_VARIANTS[2], TORCH_VARIANTS[0]), None)
    return builders


def _torch_builders(torch, spec, variants, dtype, name="float32"):
    out = []
    for v in variants:
        key = f"{v[0]} {name}"
        label = f"torch {spec.torch_cls} {v[1]} {name}"
        if torch is None:
            out.append((key, label, _skip("torch is not installed or --no-torch")))
        else:
            out.append((key, label, lambda p, g, v=v, key=key: torch_mixed_system(
                torch, spec, key, v, p, g, dtype)))
    return out


def _skip(reason):
    def build(params, grads):
        raise Skip(reason)
    return build


# the 16-bit storage rows: (key, label, param dtype name, fastopt storage options)
STORAGE_ROWS: tuple[tuple[str, str, str, dict], ...] = (
    ("fastopt", "float32", "float32", {}),
    ("bf16+master", "bf16 + f32 master/states", "bfloat16", dict(master_weights=True)),
    ("bf16+f32 states", "bf16 + f32 states", "bfloat16", dict(state_dtype=np.float32)),
    ("bf16", "bf16 (states bf16)", "bfloat16", {}),
    ("bf16 stochastic", "bf16 stochastic rounding", "bfloat16",
     dict(rounding="stochastic")),
    ("f16+master", "f16 + f32 master/states", "float16", dict(master_weights=True)),
    ("f16", "f16 (states f16)", "float16", {}),
    ("8bit", "f32 + 8-bit states", "float32", dict(state_dtype="8bit")),
)


def fastopt_torch_storage_system(torch, spec, key, label, params, grads, **storage):
    """fastopt.torch's optimizer on bfloat16 tensors made from ``params`` with storage
    options (torch dtypes); raises Skip if it refuses them."""
    import fastopt.torch as ft
    tensors = _torch_copies(torch, params, grads, torch.bfloat16)
    try:
        opt = getattr(ft, spec.fastopt_cls)(tensors, **spec.kwargs, **storage)
        opt.step()
    except (RuntimeError, ValueError, TypeError) as e:
        raise Skip(f"fastopt.torch.{spec.fastopt_cls}({_kw(storage)}) refused: {e}") from None
    s = System(key, label, lambda n: opt.step)
    s.bytes_per_element, s.state_bytes = _torch_traffic(tensors, opt,
                                                        bool(storage.get("master_weights")))
    return s


# fastopt.torch's rows on bfloat16 tensors: (key, label, storage options by torch dtype name)
TORCH_STORAGE_ROWS: tuple[tuple[str, str, dict], ...] = (
    ("fastopt.torch bf16+master", "bf16 + f32 master/states", dict(master_weights=True)),
    ("fastopt.torch bf16", "bf16 (states bf16)", {}),
    ("fastopt.torch bf16+8bit", "bf16 + 8-bit states", dict(state_dtype="8bit")),
)


def storage_builders(spec, torch, bf16):
    builders = []
    for key, label, dname, storage in STORAGE_ROWS:
        label = f"fastopt {spec.fastopt_cls} {label}"
        if dname == "bfloat16" and bf16 is None:
            builders.append((key, label, _skip("bfloat16: ml_dtypes is not installed (pip "
                                               "install 'fastopt[bf16]')")))
            continue
        dtype = bf16 if dname == "bfloat16" else np.dtype(dname)
        builders.append((key, label, lambda p, g, key=key, label=label, dtype=dtype,
                         storage=storage: fastopt_storage_system(
                             spec, key, label, [x.astype(dtype) for x in p],
                             [x.astype(dtype) for x in g], **storage)))
    for key, label, storage in TORCH_STORAGE_ROWS:
        label = f"fastopt.torch {spec.fastopt_cls} {label}"
        builders.append((key, label, _skip("torch is not installed or --no-torch")
                         if torch is None else
                         (lambda p, g, key=key, label=label, storage=storage:
                          fastopt_torch_storage_system(torch, spec, key, label, p, g,
                                                       **storage))))
    bt = torch.bfloat16 if torch is not None else None
    builders += _torch_builders(torch, spec, (TORCH_VARIANTS[2], TORCH_VARIANTS[0]), bt,
                                "bf16")
    return builders


EXTRA_HEAD = (f"{'system':<40} {'B/elem':>6} {'state B/param':>13} {'time/step':>11} "
              f"{'p90 step':>11} {'worst step':>11} {'GB/s':>7} {'probe equiv':>11} "
              f"{'x probe':>7} {'rounds':>6}")


def extra_section_lines(r) -> list[str]:
    thr = plural(r["threads"], "thread")
    loaded = ", LOADED (another process keeps one core busy)" if r.get("loaded") else ""
    lines = [f"== {r['title']}: {r['layout']}, {r['elements']:,} params in "
             f"{plural(r['tensors'], 'tensor')}, {thr} ({r['threads_used']} used){loaded} ==",
             EXTRA_HEAD]
    for key, s in r["systems"].items():
        if "skipped" in s:
            lines.append(f"{s['label']:<40} skipped: {s['skipped']}")
            continue
        state = "-" if key == "probe" else f"{s['state_bytes_per_param']:.2f}"
        lines.append(f"{s['label']:<40} {s['bytes_per_element']:6.1f} {state:>13} "
                     f"{fmt_time(s['time_s'])} {fmt_time(s['p90_s'])} {fmt_time(s['max_s'])} "
                     f"{s['gb_per_s']:7.2f} {fmt_time(s['probe_equiv_s'])} "
                     f"{s['x_probe']:7.2f} {s['rounds']:>6}")
    if r.get("peak_rss_gib") is not None:
        lines.append(f"(peak resident memory of the report so far: {r['peak_rss_gib']:.2f} GiB)")
    return lines + [""]


# ---- environment --------------------------------------------------------------------------

def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def allocator_setting() -> str:
    """Which allocator setting the NumPy figures (whose temporaries are malloc'ed) ran with."""
    preload = os.environ.get("LD_PRELOAD", "")
    if any(name in preload for name in ("jemalloc", "tcmalloc", "mimalloc")):
        return f"LD_PRELOAD={preload} (not glibc malloc)"
    libc, ver = platform.libc_ver()
    name = f"glibc {ver} malloc" if libc == "glibc" else "the C library's malloc"
    set_vars = [f"{k}={os.environ[k]}" for k in MALLOC_ENV if k in os.environ]
    if set_vars:
        return f"{name}, {' '.join(set_vars)}"
    return (f"{name}, glibc defaults: large temporaries are mmap'ed and page-fault on every "
            f"step")


def openmp_runtimes() -> str | None:
    """The OpenMP runtimes loaded (fastopt's and torch's may differ), via threadpoolctl."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return None
    libs = [f"{os.path.basename(i['filepath'])} ({i['num_threads']} threads)"
            for i in threadpool_info() if i.get("user_api") == "openmp"]
    return ", ".join(libs) or "none"


def environment(torch, thread_counts, load_before, cpu_before) -> dict:
    c = fastopt.config()
    return {
        "load_average_before": load_before, "load_average_after": load_average(),
        "steal_percent": steal_percent(cpu_before, cpu_times()),
        "fastopt": c, "cpu": cpu_model(), "cpus": cpu_count(),
        "python": platform.python_version(), "numpy": np.__version__,
        "torch": torch.__version__ if torch is not None else None,
        "allocator": allocator_setting(), "openmp_runtimes": openmp_runtimes(),
        "threads": thread_counts, "clock_cost_s": clock_cost(),
    }


def cpu_times() -> list[int] | None:
    """The aggregate CPU times of /proc/stat (Linux), to compute the steal time of a VM."""
    try:
        with open("/proc/stat") as f:
            return [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None


def steal_percent(before, after) -> float | None:
    """Share of CPU time the hypervisor gave to other guests between two cpu_times()."""
    if not before or not after or len(before) < 8:
        return None
    delta = [b - a for a, b in zip(before, after)]
    total = sum(delta[:8])
    return round(100 * delta[7] / total, 1) if total > 0 else None


def load_average() -> float | None:
    """1-minute load average: others' work on a shared machine skews the figures."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def import_torch(disabled: bool):
    if disabled:
        return None, "torch: disabled (--no-torch); torch columns skipped"
    try:
        import torch
    except ImportError:
        return None, "torch: not installed; torch columns skipped"
    return torch, None


def bandwidth(rows) -> dict | None:
    """The probe's streaming rate at the largest layout and thread count."""
    if not rows:
        return None
    r = max(rows, key=lambda r: (r["elements"], r["threads"], r["bytes_per_element"]))
    itemsize = np.dtype(r["dtype"]).itemsize
    footprint = r["elements"] * itemsize * OPTIMIZERS[r["optimizer"]].nstreams
    return {"gb_per_s": r["systems"]["probe"]["gb_per_s"], "threads": r["threads"],
            "threads_used": r["threads_used"], "elements": r["elements"],
            "footprint_bytes": footprint,
            "optimizer": r["optimizer"], "dtype": r["dtype"], "layout": r["layout"]}


# ---- report -------------------------------------------------------------------------------

def fmt_time(s: float) -> str:
    if s < 1e-3:
        return f"{s * 1e6:8.2f} us"
    if s < 1:
        return f"{s * 1e3:8.2f} ms"
    return f"{s:8.3f} s "


def plural(n, word):
    return f"{n} {word}{'s' * (n != 1)}"


def header_lines(env, bw, notes, wall) -> list[str]:
    c = env["fastopt"]
    omp = f"yes (_OPENMP {c['openmp_version']})" if c["openmp"] else "no (single-threaded build)"
    lines = [
        "fastopt benchmark: one optimizer step vs the memory limit (probe), NumPy and torch.optim",
        f"fastopt {c['version']}, backend {c['backend']}: SIMD in use {c['isa_active']} (compiled: "
        f"{', '.join(c['isa_compiled'])}), OpenMP {omp}, threads {c['num_threads']}, "
        f"parallel grain {c['parallel_grain']} elements/thread"
        + (" (set by --grain)" if env.get("grain_set") else ""),
        f"CPU: {env['cpu']}, {plural(env['cpus'], 'logical core')}; "
        f"Python {env['python']}, NumPy {env['numpy']}",
        f"NumPy allocator: {env['allocator']}",
        "NumPy reference: single-threaded (element-wise ufuncs use no threads): measured once "
        "per case, shown at every thread count",
    ]
    if env["torch"]:
        lines.append(f"torch {env['torch']}: torch.set_num_threads = the thread count; "
                     "foreach=False, foreach=True, fused=True")
    lines.append(f"single steps (p90, worst): timed one by one with time.perf_counter_ns, "
                 f"{env['clock_cost_s'] * 1e9:.0f} ns per timestamp on this machine (included)")
    if env["openmp_runtimes"]:
        lines.append(f"OpenMP runtimes loaded: {env['openmp_runtimes']}")
    lines += sorted(notes)
    if bw:
        lines.append(f"memory bandwidth (probe, {plural(bw['threads_used'], 'thread')}): "
                     f"{bw['gb_per_s']:.1f} GB/s ({bw['layout']} elements, {bw['optimizer']} "
                     f"{bw['dtype']} streams, {bw['footprint_bytes'] / 2**20:.0f} MiB of "
                     "arrays)")
    lines.append(f"threads: {', '.join(map(str, env['threads']))}; wall time {wall:.1f} s; "
                 f"load average {env['load_average_before']} before, "
                 f"{env['load_average_after']} after (this run adds up to its thread count)"
                 + (f"; CPU steal {env['steal_percent']} %" if env["steal_percent"] is not None
                    else ""))
    sf = c.get("straggler_fallback")
    if sf and sf["congested_steps"]:
        lines.append(f"straggler fallback: {plural(sf['congested_steps'], 'parallel step')} "
                     f"found congested, after which {plural(sf['serial_steps'], 'step')} ran on "
                     "the calling thread (the 'used' column counts threads asked for; see "
                     "fastopt.set_straggler_fallback)")
    if env.get("load"):
        ld = env["load"]
        which = ("every case ran unloaded and then loaded (--load both)"
                 if ld["mode"] == "both" else "every case ran loaded (--load)")
        busy = (f"; the spinner used {ld['spinner_cpu_s']:.1f} CPU s in "
                f"{ld['spinner_wall_s']:.1f} s" if ld["spinner_wall_s"] else "")
        lines.append(f"LOADED: {ld['what']} kept one core busy: {which}{busy}")
    if (env["steal_percent"] or 0) > 5:
        lines.append("warning: the hypervisor ran other guests on these CPUs (steal time "
                     "above): figures, the multi-threaded ones most, may be noisy; rerun")
    return lines


TABLE_HEAD = (f"{'layout':<12} {'elements':>10} {'tensors':>7} {'used':>4}  "
              f"{'system':<28} {'time/step':>11} {'p90 step':>11} {'worst step':>11} "
              f"{'GB/s':>7} {'% probe':>7} {'vs fastopt':>10} {'rounds':>6}")


def section_lines(rows) -> list[str]:
    r0 = rows[0]
    thr = plural(r0["threads"], "thread")
    loaded = ", LOADED (another process keeps one core busy)" if r0.get("loaded") else ""
    lines = [f"== {r0['title']}, {r0['dtype']}, {thr} "
             f"({r0['bytes_per_element']} bytes/element moved){loaded} ==", TABLE_HEAD]
    for r in rows:
        first = True
        for key, s in r["systems"].items():
            lead = (f"{r['layout']:<12} {r['elements']:>10,} {r['tensors']:>7} "
                    f"{r['threads_used']:>4}" if first else " " * 36)
            speed = "" if key in ("probe", "fastopt") else f"{s['fastopt_speedup']:.2f}x"
            lines.append(f"{lead}  {s['label']:<28} {fmt_time(s['time_s'])} "
                         f"{fmt_time(s['p90_s'])} {fmt_time(s['max_s'])} "
                         f"{s['gb_per_s']:7.2f} {s['pct_probe']:7.1f} {speed:>10} "
                         f"{s['rounds']:>6}")
            first = False
        lines.append("")
    return lines


def summary_lines(rows) -> list[str]:
    lines = ["== Summary: the fastopt optimizer's step (x = times faster) ==",
             f"{'optimizer':<10} {'dtype':<8} {'layout':<12} {'thr':>3} {'used':>4} "
             f"{'load':<6} {'time/step':>11} {'p90 step':>11} {'worst step':>11} {'GB/s':>7} "
             f"{'% probe':>7} {'vs numpy':>9} {'vs torch':>9}  best torch"]
    for r in rows:
        f = r["systems"]["fastopt"]
        vs_np = f"{r['speedup_vs_numpy']:.2f}x" if r["speedup_vs_numpy"] else "-"
        vs_t = f"{r['speedup_vs_torch']:.2f}x" if r["speedup_vs_torch"] else "-"
        best = r["systems"][r["best_torch"]]["label"] if r["best_torch"] else "(no torch)"
        lines.append(f"{r['optimizer']:<10} {r['dtype']:<8} {r['layout']:<12} "
                     f"{r['threads']:>3} {r['threads_used']:>4} "
                     f"{'loaded' if r.get('loaded') else '-':<6} {fmt_time(f['time_s'])} "
                     f"{fmt_time(f['p90_s'])} {fmt_time(f['max_s'])} {f['gb_per_s']:7.2f} "
                     f"{f['pct_probe']:7.1f} {vs_np:>9} {vs_t:>9}  {best}")
    return lines


def steps_rows(rows) -> list[dict]:
    """The rows of the optimizer x dtype x layout grid (not the storage or model rows)."""
    return [r for r in rows if r["kind"] == "steps"]


def load_lines(rows) -> list[str]:
    """``--load both``: the fastopt step unloaded and loaded side by side, and per case the
    thread count that was fastest either way."""
    pairs: dict[tuple, dict] = {}
    for r in rows:
        key = (r["optimizer"], r["dtype"], r["layout"], r["threads"])
        pairs.setdefault(key, {})[r["loaded"]] = r
    lines = ["== Loaded vs unloaded: the fastopt optimizer's step (loaded / unloaded) ==",
             f"{'optimizer':<10} {'dtype':<8} {'layout':<12} {'thr':>3} {'used':>4} "
             f"{'median':>11} {'loaded':>11} {'ratio':>6} {'p90':>11} {'loaded':>11} "
             f"{'ratio':>6} {'worst':>11} {'loaded':>11}"]
    best: dict[tuple, dict] = {}
    for (opt, dtype, layout, thr), pair in pairs.items():
        if set(pair) != {False, True}:
            continue
        u, lo = pair[False]["systems"]["fastopt"], pair[True]["systems"]["fastopt"]
        lines.append(f"{opt:<10} {dtype:<8} {layout:<12} {thr:>3} "
                     f"{pair[False]['threads_used']:>4} {fmt_time(u['time_s'])} "
                     f"{fmt_time(lo['time_s'])} {lo['time_s'] / u['time_s']:5.2f}x "
                     f"{fmt_time(u['p90_s'])} {fmt_time(lo['p90_s'])} "
                     f"{lo['p90_s'] / u['p90_s']:5.2f}x {fmt_time(u['max_s'])} "
                     f"{fmt_time(lo['max_s'])}")
        for loaded, s in ((False, u), (True, lo)):
            b = best.setdefault((opt, dtype, layout, loaded), {"used": set()})
            b["used"].add(pair[False]["threads_used"])
            if "time_s" not in b or s["time_s"] < b["time_s"]:
                b.update(time_s=s["time_s"], threads=thr)
    choices = [f"{opt} {dtype} {layout}: {b0['threads']} unloaded, "
               f"{best[(opt, dtype, layout, True)]['threads']} loaded"
               for (opt, dtype, layout, loaded), b0 in best.items()
               if not loaded and len(b0["used"]) > 1]   # only where the threads differ
    if choices:
        lines += ["", "fastest thread count (median step): " + "; ".join(choices)]
    return lines


def report(env, all_rows, bw, notes, wall) -> str:
    lines = header_lines(env, bw, notes, wall) + [""]
    rows = steps_rows(all_rows)
    sections: dict[tuple, list] = {}
    for r in rows:
        sections.setdefault((r["optimizer"], r["dtype"], r["threads"], r["loaded"]),
                            []).append(r)
    for key in sections:
        lines += section_lines(sections[key])
    if rows:
        lines += summary_lines(rows)
    if env.get("load") and env["load"]["mode"] == "both" and rows:
        lines += [""] + load_lines(rows)
    extra = [r for r in all_rows if r["kind"] != "steps"]
    if extra:
        lines += ["", "== Storage and model rows: every system's own traffic (B/elem) against "
                  "the probe's time for it ==", ""]
        for r in extra:
            lines += extra_section_lines(r)
        lines += ["B/elem: bytes read + written per element by one step, from the arrays "
                  "themselves (a param is only written when a master copy is kept).  state "
                  "B/param: optimizer state held per param (master copy included).",
                  "probe equiv: the probe's time for the row's bytes at its measured rate "
                  "(float32 traffic of the rule, same rounds).  x probe: time / probe equiv "
                  "(1.00 = at the memory limit)."]
    lines += ["", "time/step: median over the rounds of a batch's time per step.  p90 step, "
              "worst step: the 90th percentile and the maximum of single steps, each timed on "
              f"its own (up to {TAIL_CALLS} a round; clock cost included)."]
    lines += [] if not rows else [
              "GB/s: the rule's minimum traffic / time.  % probe: probe time / system time "
              "* 100.  vs fastopt: system time / fastopt time.",
              "used: threads fastopt really uses (steps below the parallel grain run on the "
              "calling thread)."]
    return "\n".join(lines)


# ---- plot ---------------------------------------------------------------------------------

def require_matplotlib():
    try:
        import matplotlib
    except ImportError:
        raise SystemExit("fastopt-bench: --plot needs matplotlib, which is not installed "
                         "(pip install matplotlib, or pip install 'fastopt[bench]')") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot(rows, path: str, plt) -> None:
    """GB/s against size per system, one panel per optimizer/dtype/threads; the probe dashed."""
    single = [r for r in rows if r["tensors"] == 1]
    if not single:
        raise SystemExit("fastopt-bench: --plot needs at least one single-tensor size")
    panels: dict[tuple, list] = {}
    for r in single:
        panels.setdefault((r["optimizer"], r["dtype"], r["threads"]), []).append(r)
    ncols = len({k[2] for k in panels})
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(6.5 * ncols, 4.5 * nrows), squeeze=False)
    for ax, ((_, dtype, thr), prs) in zip(axes.flat, panels.items()):
        prs = sorted(prs, key=lambda r: r["elements"])
        keys = list(dict.fromkeys(k for r in prs for k in r["systems"]))
        for key in keys:
            pts = [(r["elements"], r["systems"][key]["gb_per_s"]) for r in prs
                   if key in r["systems"]]
            label = prs[0]["systems"].get(key, {}).get("label", key)
            style = dict(color="black", linestyle="--", linewidth=2) if key == "probe" else \
                dict(marker="o", markersize=4)
            ax.plot(*zip(*pts), label=label, **style)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("elements")
        ax.set_ylabel("GB/s (rule's minimum traffic / time)")
        ax.set_title(f"{prs[0]['title']}, {dtype}, {plural(thr, 'thread')}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---- command line -------------------------------------------------------------------------

class Progress:
    """One status line on stderr, overwritten with carriage returns."""

    def __init__(self, total: int, stream=sys.stderr):
        self.total, self.done, self.stream, self.width = total, 0, stream, 0

    def __call__(self, msg: str) -> None:
        line = f"[{self.done + 1}/{self.total}] {msg}"
        self.stream.write("\r" + line.ljust(self.width))
        self.stream.flush()
        self.width = len(line)

    def close(self) -> None:
        self.stream.write("\r" + " " * self.width + "\r")
        self.stream.flush()


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="fastopt-bench",
        description="Time one optimizer step of fastopt against the memory limit (probe), the "
                    "NumPy reference and torch.optim. Table on stdout, progress on stderr.")
    p.add_argument("--quick", action="store_true",
                   help="a short run: sizes 1e3,1e5,1e6, layout 1000x1e3, small time budget")
    p.add_argument("--sizes", help="comma-separated single-tensor sizes, e.g. 1e3,1e5 "
                   f"(default {','.join(map(fmt_count, DEFAULT_SIZES))}); 'none' for none")
    p.add_argument("--layouts", help="comma-separated many-tensor layouts COUNTxSIZE or "
                   f"'transformer' (default {','.join(DEFAULT_LAYOUTS)}); 'none' for none")
    p.add_argument("--optimizers",
                   help=f"comma-separated, of {', '.join(OPTIMIZERS)}, or 'all' "
                   f"(default {','.join(DEFAULT_OPTIMIZERS)}); the storage and model rows "
                   "take the Adam and AdamW among them (storage: Adam, models: AdamW if none)")
    p.add_argument("--rows", default=",".join(DEFAULT_ROWS),
                   help=f"comma-separated kinds of rows, of {', '.join(ROW_KINDS)}, or 'all': "
                   "steps (optimizers x dtypes x layouts), storage (16-bit params and states "
                   "against float32), models (ResNet-50 and GPT-2 small parameter shapes: "
                   "big, ~9 GB of memory for GPT-2) (default %(default)s)")
    p.add_argument("--models", action="store_true", help="add the model rows (= --rows "
                   "with models)")
    p.add_argument("--model-names", default=",".join(MODELS),
                   help="comma-separated models of the model rows (default %(default)s)")
    p.add_argument("--model-scale", type=int, default=1,
                   help="divide the models' widths, vocabulary and context by this, for a "
                   "quick look (default %(default)s: the real models)")
    p.add_argument("--storage-sizes", help="comma-separated sizes of the storage rows "
                   f"(default {','.join(map(fmt_count, STORAGE_SIZES))}, --quick "
                   f"{','.join(map(fmt_count, QUICK_STORAGE_SIZES))})")
    p.add_argument("--dtypes", default="float32", help="float32 and/or float64 (default "
                   "%(default)s)")
    p.add_argument("--threads", default="1,all",
                   help="comma-separated thread counts, 'all' = OpenMP's limit (default "
                   "%(default)s)")
    p.add_argument("--big", action="store_true", help=f"also run {fmt_count(BIG_SIZE)} "
                   "elements (about 1.2 GB per system for Adam float32)")
    p.add_argument("--no-torch", action="store_true", help="leave torch out")
    p.add_argument("--budget", type=float, help="seconds of timed work per case and thread "
                   "count (default 0.4, --quick 0.15)")
    p.add_argument("--max-call", type=float, default=Settings.max_call,
                   help="seconds: a system whose single call is slower is timed once only "
                   "(default %(default)s)")
    p.add_argument("--min-rounds", type=int, help="fewest interleaved rounds per case "
                   "(default 5, --quick 3)")
    p.add_argument("--load", nargs="?", const="on", choices=("on", "both"),
                   help="run while another process keeps one core busy (a spinning "
                   "subprocess, started and stopped by the report); 'both': every case "
                   "unloaded and then loaded, side by side, with a comparison table")
    p.add_argument("--grain", type=parse_count,
                   help="elements per thread below which a step stays on the calling thread, "
                   "for this run (default: fastopt's, see show_config()); to measure a "
                   "threshold, e.g. for a loaded machine")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", nargs="?", const="-", metavar="FILE",
                   help="write the results as JSON to FILE, or to stdout (instead of the "
                   "table) when FILE is '-' or omitted")
    p.add_argument("--plot", metavar="FILE.png",
                   help="plot GB/s against size per system, the probe as the limit line "
                   "(needs matplotlib)")
    args = p.parse_args(argv)
    args.optimizers_given = args.optimizers is not None
    if args.optimizers is None:
        args.optimizers = ",".join(DEFAULT_OPTIMIZERS)
    rows = [k.strip().lower() for k in args.rows.split(",") if k.strip()]
    rows = list(ROW_KINDS) if rows == ["all"] else rows
    if any(k not in ROW_KINDS for k in rows):
        p.error(f"--rows: choose from {', '.join(ROW_KINDS)} or 'all', got {args.rows!r}")
    args.rows = rows + ["models"] * (args.models and "models" not in rows)
    try:
        args.model_names = [k.strip().lower() for k in args.model_names.split(",")]
        [MODELS[k] for k in args.model_names]
    except KeyError as e:
        p.error(f"--model-names: unknown model {e}; choose from {', '.join(MODELS)}")
    if args.model_scale < 1:
        p.error("--model-scale: must be >= 1")
    try:
        sizes = (args.storage_sizes.split(",") if args.storage_sizes is not None else
                 QUICK_STORAGE_SIZES if args.quick else STORAGE_SIZES)
        args.storage_sizes = [parse_count(str(t)) for t in sizes]
    except (ValueError, argparse.ArgumentTypeError) as e:
        p.error(f"--storage-sizes: {e}")
    try:
        names = (list(OPTIMIZERS) if args.optimizers.strip().lower() == "all"
                 else args.optimizers.split(","))
        args.optimizers = [OPTIMIZERS[k.strip().lower()] for k in names]
    except KeyError as e:
        p.error(f"--optimizers: unknown optimizer {e}; choose from {', '.join(OPTIMIZERS)}")
    try:
        args.dtypes = [np.dtype(d.strip()).type for d in args.dtypes.split(",")]
    except TypeError as e:
        p.error(f"--dtypes: {e}")
    if any(d not in (np.float32, np.float64) for d in args.dtypes):
        p.error("--dtypes: only float32 and float64")
    try:
        args.threads = parse_threads(args.threads)
        args.layouts = layouts_from(args)
    except (ValueError, argparse.ArgumentTypeError) as e:
        p.error(str(e))
    return args


def layouts_from(args) -> list[Layout]:
    def items(text, default):
        if text is None:
            return list(default)
        return [] if text.strip().lower() == "none" else [t for t in text.split(",") if t]
    sizes = items(args.sizes, QUICK_SIZES if args.quick else DEFAULT_SIZES)
    sizes = [parse_count(str(s)) for s in sizes]
    if args.big and BIG_SIZE not in sizes:
        sizes.append(BIG_SIZE)
    layouts = [parse_layout(str(s)) for s in sorted(set(sizes))]
    layouts += [parse_layout(t) for t in items(args.layouts,
                                                QUICK_LAYOUTS if args.quick else DEFAULT_LAYOUTS)]
    if not layouts and "steps" in args.rows:
        raise ValueError("nothing to run: no sizes and no layouts (use --rows without steps "
                         "for the storage or model rows only)")
    return layouts


def jobs_from(args, torch, settings, progress, notes) -> list[Callable[[], list]]:
    """The report's cases, each a call that returns its result rows."""
    jobs: list[Callable[[], list]] = []
    for spec in args.optimizers if "steps" in args.rows else []:
        for dtype in args.dtypes:
            for layout in args.layouts:
                jobs.append(functools.partial(run_case, spec, dtype, layout, args.threads,
                                              torch, settings, args.seed, progress, notes))
    bf16 = bf16_dtype()
    family = [s for s in args.optimizers if s.key in ("adam", "adamw")]
    if "storage" in args.rows:
        for spec in family or [OPTIMIZERS["adam"]]:
            for size in args.storage_sizes:
                layout = parse_layout(str(size))
                jobs.append(functools.partial(
                    run_extra_case, "storage", f"16-bit storage, {spec.title}", spec, layout,
                    storage_builders(spec, torch, bf16), args.threads, settings, args.seed,
                    progress, notes, torch))
    if "models" in args.rows:
        big = dataclasses.replace(settings, max_call=max(settings.max_call, 10.0))
        for spec in (family if args.optimizers_given else []) or [OPTIMIZERS["adamw"]]:
            for name in args.model_names:
                layout = model_layout(name, args.model_scale)
                jobs.append(functools.partial(
                    run_extra_case, "model", f"{MODELS[name][0]}, {spec.title}", spec, layout,
                    model_builders(spec, torch, bf16), args.threads, big, args.seed,
                    progress, notes, torch))
    return jobs


LOAD_MODES = {None: (False,), "on": (True,), "both": (False, True)}


def run_jobs(jobs, load: str | None, spinner: Spinner, progress) -> list:
    """Every job, unloaded and/or loaded (``--load``); rows marked ``loaded``. With
    ``--load both`` each case runs unloaded, then at once loaded, so the two are side by
    side. The caller stops the spinner."""
    rows = []
    for job in jobs:
        for loaded in LOAD_MODES[load]:
            if loaded and not spinner.running:
                spinner.start()
                print(f"fastopt-bench: --load: spinning process pid {spinner.pids[-1]} "
                      "keeps one core busy", file=sys.stderr, flush=True)
            elif not loaded:
                spinner.stop()
            for r in job():
                r["loaded"] = loaded
                rows.append(r)
            progress.done += 1
    return rows


def main(argv=None) -> int:
    args = parse_args(argv)
    plt = require_matplotlib() if args.plot else None
    torch, torch_note = import_torch(args.no_torch)
    settings = Settings()
    if args.quick:
        settings = Settings(budget=0.15, batch_s=1e-3, min_rounds=3, max_rounds=9)
    if args.budget is not None:
        settings.budget = args.budget
    if args.min_rounds is not None:
        settings.min_rounds = max(1, args.min_rounds)
    settings.max_call = args.max_call
    notes = {torch_note} if torch_note else set()
    old_torch_threads = torch.get_num_threads() if torch is not None else None
    progress = Progress(0)
    jobs = jobs_from(args, torch, settings, progress, notes)
    progress.total = len(jobs) * len(LOAD_MODES[args.load])
    spinner = Spinner()
    old_grain = _kernels.get_parallel_grain()
    start, load_before, cpu_before = time.perf_counter(), load_average(), cpu_times()
    try:
        if args.grain is not None:
            _kernels.set_parallel_grain(args.grain)
        rows = run_jobs(jobs, args.load, spinner, progress)
        fastopt.set_num_threads(None)
        env = environment(torch, args.threads, load_before, cpu_before)
    except KeyboardInterrupt:
        print("\nfastopt-bench: interrupted", file=sys.stderr)
        return 130
    finally:
        spinner.stop()
        progress.close()
        _kernels.set_parallel_grain(old_grain)
        fastopt.set_num_threads(None)
        if torch is not None:
            torch.set_num_threads(old_torch_threads)
    wall = time.perf_counter() - start
    env["load"] = load_info(args.load, spinner)
    env["grain_set"] = args.grain is not None
    steps = steps_rows(rows)
    bw = bandwidth([r for r in steps if not r["loaded"]] or steps)
    if args.json:
        doc = {"environment": env, "memory_bandwidth": bw, "notes": sorted(notes),
               "settings": vars(settings), "wall_s": wall, "results": rows}
        text = json.dumps(doc, indent=1)
        if args.json == "-":
            print(text)
        else:
            with open(args.json, "w") as f:
                f.write(text + "\n")
    if args.json != "-":
        print(report(env, rows, bw, notes, wall))
    if plt is not None:
        plot([r for r in steps if not r["loaded"]] or steps, args.plot, plt)
        print(f"plot written to {args.plot}", file=sys.stderr)
    return 0


def load_info(mode, spinner: Spinner) -> dict | None:
    if mode is None:
        return None
    return {"mode": mode, "what": "one spinning Python process (a busy loop, not pinned)",
            "spinner_pids": spinner.pids, "spinner_cpu_s": round(spinner.cpu_s, 2),
            "spinner_wall_s": round(spinner.wall_s, 2)}


if __name__ == "__main__":
    sys.exit(main())
