"""SparseAdam and Adafactor: fastopt.torch next to torch.optim, side by side in one process
(float32, one step, medians of interleaved rounds so a noisy, shared machine slows both alike).

SparseAdam: an nn.Embedding-like table (rows x width) whose sparse gradient touches k rows
(with repeats, as a batch of token ids gives), coalesced by torch in both systems. Adafactor:
one 2048 x 2048 matrix, and a transformer-like set (4 blocks of 512 x 2048, 2048 x 512 and
512 x 512 matrices and 512-vectors); torch's default (for-loop, as for CPU tensors) and
foreach implementations.

    python -P bench/torch_rules.py [--threads 1] [--rounds 1.0]

The last column is torch's fastest time over fastopt.torch's. Run it against the INSTALLED
package (outside the source tree, or with ``python -P``).
"""
from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch

import fastopt.torch as ft

SPARSE_CASES = (("100k x 64, k=4096", 100_000, 64, 4096, 60),
                ("1M x 128, k=16384", 1_000_000, 128, 16_384, 20),
                ("10k x 16, k=256", 10_000, 16, 256, 300))
ADAFACTOR_CASES = (("2048 x 2048", [(2048, 2048)], 20),
                   ("transformer 4 blocks", [(512, 2048), (2048, 512), (512, 512), (512,)] * 4,
                    20))


def _sparse_system(make, rows, width, k, seed):
    gen = torch.Generator().manual_seed(seed)
    p = (torch.randn(rows, width, generator=gen) * 0.01).requires_grad_()   # pages resident
    idx = torch.randint(0, rows, (k,), generator=gen)
    vals = torch.randn(k, width, generator=gen)
    opt = make([p])

    def step():
        p.grad = torch.sparse_coo_tensor(idx[None], vals, (rows, width))
        opt.step()
    return step


def _dense_system(make, shapes, seed):
    gen = torch.Generator().manual_seed(seed)
    params = [torch.randn(s, generator=gen).requires_grad_() for s in shapes]
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen)
    opt = make(params)
    return opt.step


def _race(systems, rounds):
    times: dict[str, list[float]] = {k: [] for k in systems}
    for fn in systems.values():
        fn()                                    # warm up (state creation)
    for _ in range(rounds):
        for name, fn in systems.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}


def _table(title, names, rows):
    print(title)
    print(f"{'case':<22}" + "".join(f"{k:>16}" for k in names) + f"{'torch/fastopt':>15}")
    for label, med in rows:
        best = min(v for k, v in med.items() if k != "fastopt.torch")
        print(f"{label:<22}" + "".join(f"{med[k]:>16.3f}" for k in names)
              + f"{best / med['fastopt.torch']:>14.2f}x")
    print()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=float, default=1.0, help="scale the number of rounds")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="Sparse invariant checks")
    rows = []
    for label, n, width, k, rounds in SPARSE_CASES:
        systems = {
            "torch": _sparse_system(lambda ps: torch.optim.SparseAdam(ps, lr=1e-3), n, width,
                                    k, 0),
            "fastopt.torch": _sparse_system(lambda ps: ft.SparseAdam(ps, lr=1e-3), n, width,
                                            k, 0),
        }
        rows.append((label, _race(systems, max(3, int(rounds * args.rounds)))))
    _table(f"SparseAdam float32, {args.threads} thread(s), median ms per step",
           ["torch", "fastopt.torch"], rows)
    rows = []
    for label, shapes, rounds in ADAFACTOR_CASES:
        systems = {
            "torch for-loop": _dense_system(
                lambda ps: torch.optim.Adafactor(ps, foreach=False), shapes, 1),
            "torch foreach": _dense_system(
                lambda ps: torch.optim.Adafactor(ps, foreach=True), shapes, 1),
            "fastopt.torch": _dense_system(lambda ps: ft.Adafactor(ps), shapes, 1),
        }
        rows.append((label, _race(systems, max(3, int(rounds * args.rounds)))))
    _table(f"Adafactor float32, {args.threads} thread(s), median ms per step",
           ["torch for-loop", "torch foreach", "fastopt.torch"], rows)


if __name__ == "__main__":
    main()
