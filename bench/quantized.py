"""8-bit optimizer states against float32 states, side by side in one process: fastopt's Adam and
AdamW with state_dtype="8bit" and with float32 states, and the probe of fastopt's memory limit.

Rows (bytes per element read + written by one step, float32 params and gradients):
  float32 states   p 4+4, g 4, exp_avg 4+4, exp_avg_sq 4+4                  = 28
  8-bit states     p 4+4, g 4, exp_avg 1+1, exp_avg_sq 1+1, scales 2*(4+4)/256 = 16.06

The probe is fastopt's memory-traffic limit (float32, 5 streams: reads 5, writes 4 arrays per
element, no arithmetic), measured in the same rounds; "probe equiv" is the time the probe's
bandwidth needs for the row's bytes, and "x probe" the row's time over it (1.00 = at the
memory limit). "vs f32" is the float32-state row's time over this row's (the same class, size
and thread count). Rounds are interleaved and medians reported, so a noisy machine slows every
row alike.

    python -P bench/quantized.py [--sizes 1e6,1e7] [--threads 1,2] [--rounds 1.0]

Run it against the INSTALLED package (outside the source tree, or with ``python -P``).
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import fastopt
from fastopt import functional

BYTES = {None: 28.0, "8bit": 16 + 2 * 8 / 256}


def _fastopt(n, cls, state_dtype):
    rng = np.random.default_rng(0)
    p = rng.standard_normal(n).astype(np.float32)
    g = (rng.standard_normal(n) * 0.01).astype(np.float32)
    opt = getattr(fastopt, cls)([p], lr=1e-4, state_dtype=state_dtype)
    return opt, (lambda: opt.step([g]))


def _probe(n):
    arrays = [np.zeros(n, np.float32) for _ in range(5)]
    return lambda: functional.probe(arrays)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1e6,1e7")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rounds", type=float, default=1.0)
    args = ap.parse_args(argv)
    sizes = [int(float(s)) for s in args.sizes.split(",")]
    threads = [int(t) for t in args.threads.split(",")]
    print(f"median ms per step (interleaved rounds); fastopt {fastopt.__version__}, "
          f"ISA {fastopt.config().get('isa')}")
    for n in sizes:
        for nt in threads:
            fastopt.set_num_threads(nt)
            systems = {"probe (f32 x5)": (None, _probe(n))}
            for cls in ("Adam", "AdamW"):
                for sd in (None, "8bit"):
                    systems[f"{cls} {sd or 'float32'} states"] = _fastopt(n, cls, sd)
            for _, f in systems.values():
                f()
                f()
            times: dict[str, list[float]] = {k: [] for k in systems}
            rounds = max(5, int((30 if n <= 1_000_000 else 12) * args.rounds))
            for _ in range(rounds):
                for k, (_, f) in systems.items():
                    t0 = time.perf_counter()
                    f()
                    times[k].append(time.perf_counter() - t0)
            med = {k: statistics.median(v) for k, v in times.items()}
            probe_bw = 36 * n / med["probe (f32 x5)"]           # bytes/s: 5 reads + 4 writes
            print(f"\n{n:.0e} elements, {nt} thread(s): probe {probe_bw / 1e9:.1f} GB/s")
            print(f"  {'system':<22}{'B/elem':>7}{'state B':>8}{'ms':>9}{'GB/s':>7}"
                  f"{'probe equiv':>12}{'x probe':>8}{'vs f32':>7}")
            for k, t in med.items():
                opt = systems[k][0]
                sd = "8bit" if "8bit" in k else None
                b = 36.0 if opt is None else BYTES[sd]
                state = "" if opt is None else f"{opt.state_bytes(per_element=True):.3f}"
                equiv = b * n / probe_bw
                ratio = ""
                if sd:
                    ratio = f"{med[k.replace('8bit', 'float32')] / t:.2f}x"
                print(f"  {k:<22}{b:>7.2f}{state:>8}{t * 1e3:>9.3f}{b * n / t / 1e9:>7.1f}"
                      f"{equiv * 1e3:>12.3f}{t / equiv:>8.2f}{ratio:>7}")


if __name__ == "__main__":
    main()
