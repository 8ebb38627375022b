"""The optimizer step inside a real torch training loop against the same step alone (issue 10,
item 10: do fastopt's threads and torch's own pool oversubscribe the cores?).

For fastopt.torch.AdamW and torch's fused AdamW, on 1 and 2 threads (torch.set_num_threads,
which fastopt follows): median time of ``opt.step()``
- "alone": stepping repeatedly with fixed gradients, nothing else running;
- "in loop": the same call timed inside zero_grad / forward / backward / step on an MLP, i.e.
  right after torch's backward has used (and left spinning) its own thread pool.
Rounds are interleaved between the systems, so a noisy machine slows both alike.

    python -P bench/torch_loop.py [--width 1024] [--depth 4] [--rounds 30]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

import fastopt.torch as ft

SYSTEMS = {
    "fastopt.torch": lambda ps: ft.AdamW(ps, lr=1e-4),
    "torch fused": lambda ps: torch.optim.AdamW(ps, lr=1e-4, fused=True),
}


def _model(width, depth):
    torch.manual_seed(0)
    layers = []
    for _ in range(depth):
        layers += [torch.nn.Linear(width, width), torch.nn.GELU()]
    return torch.nn.Sequential(*layers, torch.nn.Linear(width, 10))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=30)
    args = ap.parse_args(argv)
    x = torch.randn(args.batch, args.width)
    y = torch.randint(0, 10, (args.batch,))
    n = sum(p.numel() for p in _model(args.width, args.depth).parameters())
    print(f"AdamW float32 on an MLP of {n / 1e6:.1f}M params ({args.depth}x{args.width}), "
          f"batch {args.batch}: median ms per opt.step()")
    print(f"{'threads':<8}{'system':<15}{'alone':>9}{'in loop':>9}{'ratio':>7}"
          f"{'fwd+bwd':>9}")
    for threads in (1, 2):
        torch.set_num_threads(threads)
        models = {k: _model(args.width, args.depth) for k in SYSTEMS}
        opts = {k: make(list(models[k].parameters())) for k, make in SYSTEMS.items()}
        alone = {k: [] for k in SYSTEMS}
        loop = {k: [] for k in SYSTEMS}
        fb = {k: [] for k in SYSTEMS}
        for k in SYSTEMS:                       # state created, gradients present
            F.cross_entropy(models[k](x), y).backward()
            opts[k].step()
        for _ in range(args.rounds):
            for k in SYSTEMS:
                t0 = time.perf_counter()
                opts[k].step()                  # alone: the gradients of the last backward
                alone[k].append(time.perf_counter() - t0)
            for k in SYSTEMS:
                opts[k].zero_grad()
                t0 = time.perf_counter()
                F.cross_entropy(models[k](x), y).backward()
                t1 = time.perf_counter()
                opts[k].step()
                t2 = time.perf_counter()
                fb[k].append(t1 - t0)
                loop[k].append(t2 - t1)
        for k in SYSTEMS:
            a, b = statistics.median(alone[k]) * 1e3, statistics.median(loop[k]) * 1e3
            print(f"{threads:<8}{k:<15}{a:>9.2f}{b:>9.2f}{b / a:>6.2f}x"
                  f"{statistics.median(fb[k]) * 1e3:>9.2f}")


if __name__ == "__main__":
    main()
