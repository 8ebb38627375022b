"""fastopt.torch next to torch.optim, side by side in one process: one step (float32) with
torch's for-loop, foreach and (where torch has one) fused implementations and with
fastopt.torch's native step, on one 1e7-element tensor, 1,000 tensors of 1,000 elements and
1,000 tensors of 16 elements, and one tensor of 16,000 elements, from which the per-tensor
overhead follows. Rounds are interleaved (each round steps every system once) and
medians reported, so that a noisy, shared machine slows all systems alike.

    python bench/torch_step.py [--threads 1] [--rounds 1.0] [--rules Adam,Adadelta,Rprop,ASGD]

The last column is the fastest torch implementation's time over fastopt.torch's. Run it
against the INSTALLED package (outside the source tree, or with ``python -P``).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

import fastopt.torch as ft

CASES = (("1 x 1e7", [10_000_000], 15), ("1000 x 1e3", [1000] * 1000, 40),
         ("1000 x 16", [16] * 1000, 200), ("1 x 16000", [16_000], 200))
# each rule's hyperparameters (shared by torch and fastopt.torch)
RULES = {"Adam": dict(lr=1e-3), "Adadelta": dict(lr=1.0), "Rprop": dict(lr=1e-2),
         "ASGD": dict(lr=1e-2)}
IMPLS = {"torch for-loop": dict(foreach=False), "torch foreach": dict(foreach=True),
         "torch fused": dict(fused=True)}


def _optimizer(shapes, make):
    params = [torch.zeros(n, requires_grad=True) for n in shapes]
    for p in params:
        p.grad = torch.full_like(p, 0.01)
    return make(params)


def _systems(rule):
    kw = RULES[rule]
    systems = {name: (lambda ps, flags=flags: getattr(torch.optim, rule)(ps, **kw, **flags))
               for name, flags in IMPLS.items()}
    systems["fastopt.torch"] = lambda ps: getattr(ft, rule)(ps, **kw)
    return systems


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=float, default=1.0, help="scale the number of rounds")
    ap.add_argument("--rules", default="Adam", help=f"comma-separated, of {', '.join(RULES)}")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    names = list(IMPLS) + ["fastopt.torch"]
    for rule in args.rules.split(","):
        print(f"{rule} float32, {args.threads} thread(s), median ms per step "
              "(interleaved rounds)")
        print(f"{'case':<12}" + "".join(f"{k:>16}" for k in names) + f"{'torch/fastopt':>15}")
        meds: dict[str, dict[str, float]] = {}
        for label, shapes, rounds in CASES:
            opts = {}
            for k, make in _systems(rule).items():
                try:
                    o = _optimizer(shapes, make)
                    o.step()            # state created, caches warm
                    o.step()
                except (RuntimeError, ValueError, TypeError):
                    continue            # torch has no fused version of this rule
                opts[k] = o
            times: dict[str, list[float]] = {k: [] for k in opts}
            for _ in range(max(3, int(rounds * args.rounds))):
                for k, o in opts.items():
                    t0 = time.perf_counter()
                    o.step()
                    times[k].append(time.perf_counter() - t0)
            med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
            meds[label] = med
            best = min(v for k, v in med.items() if k != "fastopt.torch")
            print(f"{label:<12}" + "".join(f"{med[k]:>16.3f}" if k in med else f"{'-':>16}"
                                           for k in names)
                  + f"{best / med['fastopt.torch']:>14.2f}x")
        # the cost of one more tensor in a step: the same 16,000 elements as 1,000 tensors or one
        per = {k: (meds["1000 x 16"][k] - meds["1 x 16000"][k]) / 999 * 1e3
               for k in names if k in meds["1000 x 16"] and k in meds["1 x 16000"]}
        print(f"{'us/tensor':<12}" + "".join(f"{per[k]:>16.3f}" if k in per else f"{'-':>16}"
                                             for k in names)
              + "   (per-tensor overhead: (1000 x 16 - 1 x 16000) / 999)")
        print()


if __name__ == "__main__":
    main()
