"""One rank of the 2-process tests in test_torch_distributed.py (run as a script; not a test).

    python -P dist_worker.py SCENARIO RANK WORLD PORT OUTDIR

gloo on 127.0.0.1 only; every collective bounded by the process group's timeout. Each rank
writes what the test compares into OUTDIR (torch.save files); rank 0 also the reference, a
single-process torch.optim.AdamW run over the same data, when the scenario has one.
"""
from __future__ import annotations

import datetime
import os
import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

import fastopt.torch as ft

STEPS = 4
LR, WD = 1e-2, 1e-2
DTYPE = torch.float64      # the gradient averages differ from one process's by rounding only


def model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(),
                         nn.Linear(16, 3)).to(DTYPE)


def batch(t, rank=None, world=2, n=8):
    """Step t's batch (all ranks' samples); rank r's shard is rows r::world."""
    g = torch.Generator().manual_seed(1000 + t)
    x = torch.randn(n * world, 8, generator=g, dtype=DTYPE)
    y = torch.randint(0, 3, (n * world,), generator=g)
    if rank is None:
        return x, y
    return x[rank::world], y[rank::world]


def reference(steps):
    """Single process: torch.optim.AdamW over the full batches of steps [0, steps)."""
    m = model()
    opt = torch.optim.AdamW(m.parameters(), lr=LR, weight_decay=WD, foreach=False)
    continue_full(m, opt, 0, steps)
    return m, opt


def continue_full(m, opt, t0, t1):
    for t in range(t0, t1):
        opt.zero_grad()
        x, y = batch(t)
        F.cross_entropy(m(x), y).backward()
        opt.step()


def _train(m, opt, rank, world, t0, t1):
    for t in range(t0, t1):
        opt.zero_grad()
        x, y = batch(t, rank, world)
        F.cross_entropy(m(x), y).backward()
        opt.step()


def zero(rank, world, out, bucket_view):
    from torch.distributed.optim import ZeroRedundancyOptimizer
    from torch.nn.parallel import DistributedDataParallel as DDP
    m = model()
    ddp = DDP(m)
    opt = ZeroRedundancyOptimizer(m.parameters(), optimizer_class=ft.AdamW,
                                  parameters_as_bucket_view=bucket_view, lr=LR,
                                  weight_decay=WD)
    assert isinstance(opt.optim, ft.AdamW)
    _train(ddp, opt, rank, world, 0, STEPS)
    # consolidate, save, load into fresh optimizers on every rank, continue
    opt.consolidate_state_dict(to=0)
    path = os.path.join(out, "zero_state.pt")
    if rank == 0:
        torch.save(opt.state_dict(), path)
    dist.barrier()
    sd = torch.load(path, weights_only=True)
    opt2 = ZeroRedundancyOptimizer(m.parameters(), optimizer_class=ft.AdamW,
                                   parameters_as_bucket_view=bucket_view, lr=LR,
                                   weight_decay=WD)
    opt2.load_state_dict(sd)
    _train(ddp, opt2, rank, world, STEPS, STEPS + 2)
    torch.save({"params": [p.detach().clone() for p in m.parameters()],
                "native_steps": opt2.optim._fo_driver.refused is None},
               os.path.join(out, f"rank{rank}.pt"))


def ddp(rank, world, out):
    from torch.nn.parallel import DistributedDataParallel as DDP
    m = model()
    d = DDP(m)
    opt = ft.AdamW(m.parameters(), lr=LR, weight_decay=WD)
    _train(d, opt, rank, world, 0, STEPS)
    torch.save({"params": [p.detach().clone() for p in m.parameters()],
                "state": {i: {k: v.clone() for k, v in opt.state[p].items()}
                          for i, p in enumerate(m.parameters())}},
               os.path.join(out, f"rank{rank}.pt"))


def fsdp2(rank, world, out):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, fully_shard
    mesh = init_device_mesh("cpu", (world,))
    m = model()
    for layer in m:
        if isinstance(layer, nn.Linear):
            fully_shard(layer, mesh=mesh, offload_policy=CPUOffloadPolicy(pin_memory=False))
    fully_shard(m, mesh=mesh, offload_policy=CPUOffloadPolicy(pin_memory=False))
    opt = ft.AdamW(m.parameters(), lr=LR, weight_decay=WD)
    _train(m, opt, rank, world, 0, STEPS)
    full = [p.full_tensor().detach().clone() for p in m.parameters()]
    torch.save({"params": full, "native_steps": opt._fo_driver.refused is None},
               os.path.join(out, f"rank{rank}.pt"))


def main() -> None:
    scenario, rank, world, port, out = sys.argv[1:6]
    rank, world = int(rank), int(world)
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world, timeout=datetime.timedelta(seconds=60))
    try:
        if scenario == "zero":
            zero(rank, world, out, bucket_view=False)
        elif scenario == "zero-bucket":
            zero(rank, world, out, bucket_view=True)
        elif scenario == "ddp":
            ddp(rank, world, out)
        elif scenario == "fsdp2":
            fsdp2(rank, world, out)
        else:
            raise SystemExit(f"unknown scenario {scenario}")
        dist.barrier()
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
    # done and saved: leave without running C++ static destructors, where gloo's background
    # threads at interpreter exit occasionally abort the process ("terminate called without an
    # active exception", seen once in CI after a passing run)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
