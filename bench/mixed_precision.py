"""Mixed-precision Adam steps side by side in one process: fastopt on each 16-bit storage
combination, the probe of the same memory traffic, and torch's bfloat16 Adam (fused and
for-loop: torch keeps states in the param's dtype).

Rows (bytes per element read + written by one Adam step):
  bf16 + f32 master + f32 states   p 2 (written), g 2, m 4+4, v 4+4, master 4+4 = 28
  bf16 + f32 states (no master)    p 2+2, g 2, m 4+4, v 4+4               = 22  (DeepSpeed's)
  bf16 params and states           p 2+2, g 2, m 2+2, v 2+2               = 14  (torch's default)
  f16 params and states                                                   = 14
  f32 (for reference)                                                     = 28

The probe is fastopt's memory-traffic limit (float32, 5 streams: reads 5, writes 4 arrays per
element, no arithmetic), measured in the same rounds; "probe equiv" is the time the probe's
bandwidth needs for the row's bytes, and "x probe" the row's time over it (1.00 = at the
memory limit). Rounds are interleaved and medians reported, so a noisy machine slows every
system alike.

    python -P bench/mixed_precision.py [--sizes 1e6,1e7] [--threads 1,2] [--rounds 1.0]

Run it against the INSTALLED package (outside the source tree, or with ``python -P``).
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import fastopt
from fastopt import functional

try:
    import ml_dtypes
    BF16 = np.dtype(ml_dtypes.bfloat16)
except ImportError:  # pragma: no cover - the benchmark needs it
    raise SystemExit("bench/mixed_precision.py needs ml_dtypes (pip install 'fastopt[bf16]')") \
        from None

try:
    import torch
except ImportError:
    torch = None

ROWS = {
    "bf16+master": (BF16, dict(master_weights=True), 28),
    "bf16+f32 states": (BF16, dict(state_dtype=np.float32), 22),
    "bf16 (states bf16)": (BF16, dict(), 14),
    "bf16 stochastic": (BF16, dict(rounding="stochastic"), 14),
    "f16+master": (np.dtype(np.float16), dict(master_weights=True), 28),
    "f16 (states f16)": (np.dtype(np.float16), dict(), 14),
    "f32": (np.dtype(np.float32), dict(), 28),
}


def _fastopt(n, dtype, kw):
    p = np.zeros(n, dtype)
    g = np.full(n, 0.01, np.float32).astype(dtype)
    opt = fastopt.Adam([p], lr=1e-3, **kw)
    return lambda: opt.step([g])


def _probe(n):
    arrays = [np.zeros(n, np.float32) for _ in range(5)]
    return lambda: functional.probe(arrays)


def _torch(n, fused):
    p = torch.zeros(n, dtype=torch.bfloat16, requires_grad=True)
    p.grad = torch.full_like(p, 0.01)
    opt = torch.optim.Adam([p], lr=1e-3, fused=fused, foreach=False if not fused else None)
    return opt.step


def _fastopt_torch(n, kw):
    import fastopt.torch as ft
    p = torch.zeros(n, dtype=torch.bfloat16, requires_grad=True)
    p.grad = torch.full_like(p, 0.01)
    opt = ft.Adam([p], lr=1e-3, **kw)
    return opt.step


# fastopt.torch rows: (storage options, bytes per element)
TORCH_ROWS = {"fastopt.torch bf16+master": (dict(master_weights=True), 28),
              "fastopt.torch bf16+f32 st": (dict(state_dtype="float32"), 22),
              "fastopt.torch bf16": (dict(), 14)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1e6,1e7")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rounds", type=float, default=1.0)
    args = ap.parse_args(argv)
    sizes = [int(float(s)) for s in args.sizes.split(",")]
    threads = [int(t) for t in args.threads.split(",")]
    print(f"Adam, median ms per step (interleaved rounds); fastopt {fastopt.__version__}, "
          f"ISA {fastopt.config().get('isa')}")
    for n in sizes:
        for nt in threads:
            fastopt.set_num_threads(nt)
            if torch is not None:
                torch.set_num_threads(nt)
            systems = {"probe (f32 x5)": _probe(n)}
            systems.update({k: _fastopt(n, d, kw) for k, (d, kw, _) in ROWS.items()})
            if torch is not None:
                for k, (kw, _) in TORCH_ROWS.items():
                    kw = {o: getattr(torch, v) if o == "state_dtype" else v
                          for o, v in kw.items()}
                    systems[k] = _fastopt_torch(n, kw)
                systems["torch fused bf16"] = _torch(n, True)
                systems["torch for-loop bf16"] = _torch(n, False)
            for f in systems.values():
                f()
                f()
            times: dict[str, list[float]] = {k: [] for k in systems}
            rounds = max(5, int((30 if n <= 1_000_000 else 12) * args.rounds))
            for _ in range(rounds):
                for k, f in systems.items():
                    t0 = time.perf_counter()
                    f()
                    times[k].append(time.perf_counter() - t0)
            med = {k: statistics.median(v) for k, v in times.items()}
            probe_bw = 36 * n / med["probe (f32 x5)"]           # bytes/s: 5 reads + 4 writes
            print(f"\n{n:.0e} elements, {nt} thread(s): probe {probe_bw / 1e9:.1f} GB/s")
            print(f"  {'system':<27}{'B/elem':>7}{'ms':>9}{'GB/s':>8}{'probe equiv':>13}"
                  f"{'x probe':>9}")
            for k, t in med.items():
                b = (36 if k.startswith("probe") else ROWS[k][2] if k in ROWS
                     else TORCH_ROWS[k][1] if k in TORCH_ROWS else 14)
                equiv = b * n / probe_bw
                print(f"  {k:<27}{b:>7}{t * 1e3:>9.3f}{b * n / t / 1e9:>8.1f}"
                      f"{equiv * 1e3:>13.3f}{t / equiv:>9.2f}")


if __name__ == "__main__":
    main()
