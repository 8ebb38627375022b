"""fastopt.torch next to torch.optim, side by side in one process: one Adam step (float32) with
torch's for-loop, foreach and fused implementations and with fastopt.torch's native step, on
one 1e7-element tensor, 1,000 tensors of 1,000 elements and 1,000 tensors of 16 elements, and
one tensor of 16,000 elements, from which the per-tensor overhead follows.
Rounds are interleaved (each round steps every system once) and medians reported, so that a
noisy, shared machine slows all systems alike.

    python bench/torch_step.py [--threads 1] [--rounds 1.0]

Run it against the INSTALLED package (outside the source tree, or with ``python -P``).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

import fastopt.torch as ft

CASES = (("1 x 1e7", [10_000_000], 15), ("1000 x 1e3", [1000] * 1000, 40),
         ("1000 x 16", [16] * 1000, 200), ("1 x 16000", [16_000], 200))


def _optimizer(shapes, make):
    params = [torch.zeros(n, requires_grad=True) for n in shapes]
    for p in params:
        p.grad = torch.full_like(p, 0.01)
    return make(params)


SYSTEMS = {
    "torch for-loop": lambda ps: torch.optim.Adam(ps, lr=1e-3, foreach=False),
    "torch foreach": lambda ps: torch.optim.Adam(ps, lr=1e-3, foreach=True),
    "torch fused": lambda ps: torch.optim.Adam(ps, lr=1e-3, fused=True),
    "fastopt.torch": lambda ps: ft.Adam(ps, lr=1e-3),
}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=float, default=1.0, help="scale the number of rounds")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"Adam float32, {args.threads} thread(s), median ms per step (interleaved rounds)")
    print(f"{'case':<12}" + "".join(f"{k:>16}" for k in SYSTEMS) + f"{'fused/fastopt':>15}")
    meds: dict[str, dict[str, float]] = {}
    for label, shapes, rounds in CASES:
        opts = {k: _optimizer(shapes, make) for k, make in SYSTEMS.items()}
        for o in opts.values():         # state created, caches warm
            o.step()
            o.step()
        times: dict[str, list[float]] = {k: [] for k in opts}
        for _ in range(max(3, int(rounds * args.rounds))):
            for k, o in opts.items():
                t0 = time.perf_counter()
                o.step()
                times[k].append(time.perf_counter() - t0)
        med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        meds[label] = med
        print(f"{label:<12}" + "".join(f"{med[k]:>16.3f}" for k in SYSTEMS)
              + f"{med['torch fused'] / med['fastopt.torch']:>14.2f}x")
    # the cost of one more tensor in a step: the same 16,000 elements as 1,000 tensors or one
    per = {k: (meds["1000 x 16"][k] - meds["1 x 16000"][k]) / 999 * 1e3 for k in SYSTEMS}
    print(f"{'us/tensor':<12}" + "".join(f"{per[k]:>16.3f}" for k in SYSTEMS)
          + "   (per-tensor overhead: (1000 x 16 - 1 x 16000) / 999)")


if __name__ == "__main__":
    main()
