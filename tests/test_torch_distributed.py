"""fastopt.torch on torch's own distributed engine (issue 10, item 11): 2 gloo processes on
127.0.0.1 (tests/dist_worker.py, one subprocess per rank, each bounded in time), compared with
a single-process torch.optim.AdamW run over the same data.

The model is float64 so that the only difference between the runs is the order in which the
ranks' gradients are summed (DDP's and FSDP2's reductions): the bound 1e-12 relative is the
float64 counterpart of the tolerance the single-process parity tests derive.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch", reason="fastopt.torch needs torch")
dist = pytest.importorskip("torch.distributed", reason="torch without torch.distributed")
if not dist.is_available() or not dist.is_gloo_available():
    pytest.skip("torch built without the gloo backend", allow_module_level=True)

WORKER = os.path.join(os.path.dirname(__file__), "dist_worker.py")
TIMEOUT = 90        # seconds per launch (both ranks)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(scenario: str, out) -> list[dict]:
    port = _free_port()
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, "-P", WORKER, scenario, str(r), "2", str(port),
                               str(out)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for r in range(2)]
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=TIMEOUT)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    for r, (p, log) in enumerate(zip(procs, logs)):
        assert p.returncode == 0, f"{scenario}: rank {r} exited {p.returncode}:\n{log[-4000:]}"
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2)]


def _worker_module():
    sys.path.insert(0, os.path.dirname(WORKER))
    try:
        import dist_worker
    finally:
        sys.path.pop(0)
    return dist_worker


def _close(a, b, what, tol=1e-12):
    a, b = a.detach().double(), b.detach().double()
    scale = max(b.abs().max().item(), 1e-30)
    err = (a - b).abs().max().item() / scale
    assert err <= tol, f"{what}: relative error {err:.3g} > {tol}"


@pytest.mark.parametrize("scenario", ["zero", "zero-bucket"])
def test_zero_redundancy_optimizer_equals_single_process(scenario, tmp_path):
    """ZeroRedundancyOptimizer(optimizer_class=fastopt.torch.AdamW), DDP for the gradients,
    parameters_as_bucket_view False/True; consolidate_state_dict, save, load into a fresh
    ZeRO on each rank, two more steps: equal to one torch AdamW run of all the steps."""
    w = _worker_module()
    ranks = _launch(scenario, tmp_path)
    ref, ref_opt = w.reference(w.STEPS + 2)
    for r, got in enumerate(ranks):
        for i, (a, b) in enumerate(zip(got["params"], ref.parameters())):
            _close(a, b, f"{scenario} rank {r} param {i}")
        assert got["native_steps"], f"{scenario} rank {r}: the shard's steps left the fast path"
    # the consolidated checkpoint is a torch.optim state dict: torch's own AdamW, loaded
    # from it, continues to the same params as the resumed ZeRO ranks
    saved = torch.load(tmp_path / "zero_state.pt", weights_only=True)
    assert saved["state"][0]["step"].item() == w.STEPS
    m, _ = w.reference(w.STEPS)
    opt = torch.optim.AdamW(m.parameters(), lr=w.LR, weight_decay=w.WD, foreach=False)
    opt.load_state_dict(saved)
    w.continue_full(m, opt, w.STEPS, w.STEPS + 2)
    for i, (a, b) in enumerate(zip(ranks[0]["params"], m.parameters())):
        _close(a, b, f"{scenario}: torch AdamW resumed from the consolidated state, param {i}")


def test_ddp_equals_single_process(tmp_path):
    w = _worker_module()
    ranks = _launch("ddp", tmp_path)
    ref, ref_opt = w.reference(w.STEPS)
    for r, got in enumerate(ranks):
        for i, (a, p) in enumerate(zip(got["params"], ref.parameters())):
            _close(a, p, f"ddp rank {r} param {i}")
            for k, v in ref_opt.state[p].items():
                _close(got["state"][i][k], v, f"ddp rank {r} state {i}[{k!r}]")
    for a, b in zip(*(g["params"] for g in ranks)):
        assert torch.equal(a, b), "the two replicas differ"


def test_fsdp2_cpu_offload_equals_single_process(tmp_path):
    """FSDP2 (fully_shard with CPUOffloadPolicy) on a 2-rank CPU gloo mesh: the params are
    DTensors and fastopt steps their local shards."""
    w = _worker_module()
    ranks = _launch("fsdp2", tmp_path)
    ref, _ = w.reference(w.STEPS)
    for r, got in enumerate(ranks):
        for i, (a, b) in enumerate(zip(got["params"], ref.parameters())):
            _close(a, b, f"fsdp2 rank {r} param {i}")
