"""Mixed-precision Adam steps side by side in one process: now the storage rows of the
benchmark report, ``fastopt-bench --rows storage`` (fastopt/bench.py), which this script runs.

Rows (bytes per element read + written by one Adam step, from the arrays themselves):
  float32 (for reference)                                                 = 28
  bf16 + f32 master + f32 states   p 2 (written), g 2, m 4+4, v 4+4, master 4+4 = 28
  bf16 + f32 states (no master)    p 2+2, g 2, m 4+4, v 4+4               = 22  (DeepSpeed's)
  bf16 params and states           p 2+2, g 2, m 2+2, v 2+2               = 14  (torch's default)
  bf16 stochastic rounding                                                = 14
  f16 + f32 master + f32 states                                           = 28
  f16 params and states                                                   = 14
  torch fused and for-loop bf16 Adam (bf16 states), when torch is installed = 14

The probe is fastopt's memory-traffic limit (float32 Adam traffic: reads p, g, m, v, writes
p, m, v, no arithmetic), measured in the same interleaved rounds; "probe equiv" is the time the
probe's rate needs for the row's bytes, and "x probe" the row's time over it (1.00 = at the
memory limit).

    python -P bench/mixed_precision.py [--sizes 1e6,1e7] [--threads 1,2] [fastopt-bench options]

Run it against the INSTALLED package (outside the source tree, or with ``python -P``).
"""
from __future__ import annotations

import argparse
import sys

from fastopt import bench


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1e6,1e7")
    ap.add_argument("--threads", default="1,2")
    args, rest = ap.parse_known_args(argv)
    return bench.main(["--rows", "storage", "--storage-sizes", args.sizes,
                       "--threads", args.threads, *rest])


if __name__ == "__main__":
    sys.exit(main())
