"""fastopt-bench: runs on either backend (the NumPy one included) and says which it measured;
its tail columns, its loaded mode, and its model-shaped and storage rows."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

QUICK = ["--threads", "1", "--no-torch", "--budget", "0.02", "--min-rounds", "2"]


def run_bench(tmp_path, *args, env=None, timeout=300):
    """``python -m fastopt.bench ARGS --json FILE``: (the JSON document, the finished run)."""
    out = tmp_path / "report.json"
    cmd = [sys.executable, "-m", "fastopt.bench", *args, "--json", str(out)]
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(out.read_text()), done


@pytest.mark.parametrize("purepython", ["0", "1"])
def test_bench_report_runs_on_both_backends(purepython, tmp_path):
    env = dict(os.environ, FASTOPT_PUREPYTHON=purepython, FASTOPT_ALLOW_SERIAL_BUILD="1")
    data, done = run_bench(tmp_path, "--sizes", "1e3", "--layouts", "4x1e3",
                           "--optimizers", "adam,sgd", "--storage-sizes", "1e3", *QUICK,
                           env=env)
    backend = data["environment"]["fastopt"]["backend"]
    if purepython == "1":
        assert backend.startswith("numpy"), backend
    systems = {s for r in data["results"] for s in r["systems"]}
    assert data["results"], "the report has no rows"
    assert any("probe" in str(s) for s in systems), systems
    assert f"backend {backend}" in done.stdout


def test_every_row_shows_median_p90_and_worst(tmp_path):
    data, done = run_bench(tmp_path, "--sizes", "1e3,1e5", "--layouts", "40x1e3",
                           "--optimizers", "adam", "--storage-sizes", "1e3", *QUICK)
    assert {r["kind"] for r in data["results"]} == {"steps", "storage"}
    for r in data["results"]:
        for key, s in r["systems"].items():
            if "skipped" in s:
                continue
            case = f"{r['layout']} {key}: {s}"
            assert 0 < s["p50_s"] <= s["p90_s"] <= s["max_s"], case
            # the worst single step is at least the slowest batch's mean, hence the median's
            assert s["time_s"] <= s["max_s"] * (1 + 1e-9), case
            assert s["steps_timed"] >= s["rounds"], case
    assert data["environment"]["clock_cost_s"] > 0
    head = next(line for line in done.stdout.splitlines() if line.startswith("layout"))
    assert "time/step" in head and "p90 step" in head and "worst step" in head, head


def _alive(pid: int) -> bool:
    """Whether ``pid`` is a live (not zombie) process running the spinner's code."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X") and b"getppid" in cmdline


needs_proc = pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux /proc")


@needs_proc
def test_spinner_starts_and_stops_also_on_an_exception():
    from fastopt import bench
    spinner = bench.Spinner()
    with pytest.raises(ZeroDivisionError):
        with spinner:
            pid = spinner.proc.pid
            assert _alive(pid), "the spinner is not running"
            time.sleep(0.3)
            raise ZeroDivisionError
    assert not spinner.running and not _alive(pid), "the spinner outlived the with block"
    spinner.stop()                      # idempotent
    assert spinner.cpu_s > 0.05, spinner.cpu_s     # it did spin


@needs_proc
def test_load_mode_says_it_ran_loaded_and_leaves_no_process(tmp_path):
    data, done = run_bench(tmp_path, "--sizes", "1e3", "--layouts", "none", "--rows", "steps",
                           "--optimizers", "adam", *QUICK, "--load", "both")
    load = data["environment"]["load"]
    assert load["mode"] == "both" and load["spinner_pids"], load
    assert sorted(r["loaded"] for r in data["results"]) == [False, True]
    assert "LOADED" in done.stdout and "Loaded vs unloaded" in done.stdout
    for pid in load["spinner_pids"]:
        assert not _alive(pid), f"spinner {pid} is still running"


@needs_proc
def test_load_mode_stops_its_spinner_on_ctrl_c(tmp_path):
    import signal
    cmd = [sys.executable, "-m", "fastopt.bench", "--sizes", "1e5", "--layouts", "none",
           "--rows", "steps",
           "--threads", "1", "--no-torch", "--budget", "30", "--min-rounds", "1000",
           "--load"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()
        assert "spinning process pid" in line, line
        pid = int(line.split("pid")[1].split()[0])
        assert _alive(pid)
        time.sleep(0.5)                 # inside the timed rounds
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    assert not _alive(pid), f"spinner {pid} outlived the interrupted report"


# ---- model-shaped rows ---------------------------------------------------------------------

def _count(shapes):
    import math
    return len(shapes), sum(math.prod(s) for s in shapes)


def test_model_shapes_have_the_documented_counts():
    from fastopt import bench
    assert _count(bench.resnet50_shapes()) == (161, 25_557_032)
    assert _count(bench.gpt2_shapes()) == (148, 124_439_808)      # LM head tied to wte
    # the scaled copies used below keep the architecture (tensor counts)
    assert _count(bench.model_layout("resnet50", 16).shapes)[0] == 161
    assert _count(bench.model_layout("gpt2-small", 16).shapes)[0] == 148


def test_model_shapes_match_torch_modules():
    """The same architectures built from torch.nn modules (on the meta device: no memory)."""
    torch = pytest.importorskip("torch")
    from torch import nn

    from fastopt import bench

    def bottleneck(inp, planes, project):
        mods = [nn.Conv2d(inp, planes, 1, bias=False), nn.BatchNorm2d(planes),
                nn.Conv2d(planes, planes, 3, padding=1, bias=False), nn.BatchNorm2d(planes),
                nn.Conv2d(planes, 4 * planes, 1, bias=False), nn.BatchNorm2d(4 * planes)]
        if project:
            mods += [nn.Conv2d(inp, 4 * planes, 1, bias=False), nn.BatchNorm2d(4 * planes)]
        return mods

    with torch.device("meta"):
        mods = [nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False), nn.BatchNorm2d(64)]
        inp = 64
        for stage, count in enumerate((3, 4, 6, 3)):
            for b in range(count):
                mods += bottleneck(inp, 64 * 2**stage, b == 0)
                inp = 4 * 64 * 2**stage
        mods.append(nn.Linear(2048, 1000))
        resnet = [tuple(p.shape) for m in mods for p in m.parameters()]
        d = 768
        gpt = [nn.Embedding(50257, d), nn.Embedding(1024, d)]
        for _ in range(12):
            gpt += [nn.LayerNorm(d), nn.Linear(d, 3 * d), nn.Linear(d, d), nn.LayerNorm(d),
                    nn.Linear(d, 4 * d), nn.Linear(4 * d, d)]
        gpt.append(nn.LayerNorm(d))
        # nn.Linear keeps (out, in); GPT-2's Conv1D keeps (in, out)
        gpt2 = [tuple(p.shape)[::-1] if isinstance(m, nn.Linear) else tuple(p.shape)
                for m in gpt for p in m.parameters()]
    assert bench.resnet50_shapes() == resnet
    assert bench.gpt2_shapes() == gpt2


def _systems(data, kind):
    rows = [r for r in data["results"] if r["kind"] == kind]
    assert rows, f"no {kind} rows"
    return rows


def test_model_rows_on_scaled_down_models(tmp_path):
    data, done = run_bench(tmp_path, "--rows", "models", "--model-scale", "16",
                           "--threads", "1", "--budget", "0.02", "--min-rounds", "2")
    rows = _systems(data, "model")
    assert {r["layout"] for r in rows} == {"resnet50/16", "gpt2-small/16"}
    for r in rows:
        s = r["systems"]
        assert r["optimizer"] == "adamw" and r["loaded"] is False
        assert s["fastopt"]["state_bytes_per_param"] == pytest.approx(8.0)   # m, v float32
        assert s["fastopt"]["bytes_per_element"] == pytest.approx(28.0)
        bf = s["fastopt bf16+master"]
        if "skipped" in bf:
            assert "ml_dtypes" in bf["skipped"], bf
        else:                            # m, v and the master copy in float32
            assert bf["state_bytes_per_param"] == pytest.approx(12.0)
        eight = s["fastopt 8bit"]
        if "skipped" in eight:
            assert eight["skipped"].startswith("8-bit states not available"), eight
        else:       # tensors of 4,096+ elements: codes + a float32 scale per 256; else float32
            from fastopt import bench
            name, scale = r["layout"].split("/")
            sizes = [int(np.prod(x)) for x in bench.MODELS[name][1](int(scale))]
            held = sum(2 * (n + 4 * -(-n // 256)) if n >= 4096 else 8 * n for n in sizes)
            assert eight["state_bytes_per_param"] == pytest.approx(held / sum(sizes)), eight
        for key in ("torch fused float32", "torch float32"):
            t = s[key]
            assert "skipped" in t or t["state_bytes_per_param"] == pytest.approx(8.0), t
        for key, x in s.items():
            if "skipped" not in x:
                assert x["p50_s"] <= x["p90_s"] <= x["max_s"], (r["layout"], key, x)
        assert r.get("peak_rss_gib") is None or r["peak_rss_gib"] < 24
    assert "GPT-2 small" in done.stdout and "state B/param" in done.stdout


def test_model_rows_are_opt_in():
    from fastopt import bench
    assert "models" not in bench.parse_args([]).rows
    assert "models" in bench.parse_args(["--models"]).rows
    assert "models" in bench.parse_args(["--rows", "all"]).rows


# ---- storage rows --------------------------------------------------------------------------

STORAGE_BYTES = {"fastopt": 28, "bf16+master": 28, "bf16+f32 states": 22, "bf16": 14,
                 "bf16 stochastic": 14,
                 "f16+master": 28, "f16": 14, "torch fused bf16": 14, "torch bf16": 14,
                 "fastopt.torch bf16+master": 28, "fastopt.torch bf16": 14}


def test_storage_rows_bytes_per_element(tmp_path):
    data, done = run_bench(tmp_path, "--rows", "storage", "--storage-sizes", "1e3,3e4",
                           "--threads", "1", "--budget", "0.02", "--min-rounds", "2")
    rows = _systems(data, "storage")
    assert [r["elements"] for r in rows] == [1000, 30000]
    for r in rows:
        for key, want in STORAGE_BYTES.items():
            s = r["systems"][key]
            if "skipped" in s:          # bf16 without ml_dtypes, torch without torch
                assert "ml_dtypes" in s["skipped"] or "torch" in s["skipped"], s
                continue
            assert s["bytes_per_element"] == pytest.approx(want), (key, s)
        for key, small in (("8bit", 28), ("fastopt.torch bf16+8bit", 22)):
            s = r["systems"][key]
            if "skipped" in s:
                assert "torch" in s["skipped"], s
                continue
            # under 4,096 elements float32 states; above, 1 byte of codes per element and
            # state, and one float32 scale per 256 elements
            big = small - 16 + 2 * 2 * (1 + 4 * -(-r["elements"] // 256) / r["elements"])
            want = small if r["elements"] < 4096 else big
            assert s["bytes_per_element"] == pytest.approx(want), (key, s)
            assert s["x_probe"] == pytest.approx(s["time_s"] / s["probe_equiv_s"])
            assert s["gb_per_s"] > 0
    assert "x probe" in done.stdout


def test_storage_rows_skip_bf16_without_ml_dtypes(monkeypatch, tmp_path, capsys):
    from fastopt import bench
    monkeypatch.setattr(bench, "bf16_dtype", lambda: None)
    out = tmp_path / "r.json"
    assert bench.main(["--rows", "storage,models", "--storage-sizes", "1e3", "--model-scale",
                       "64", "--model-names", "resnet50", *QUICK, "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    for r in data["results"]:
        for key, s in r["systems"].items():
            if "bf16" in key and not key.startswith(("torch", "fastopt.torch")):
                assert "ml_dtypes is not installed" in s.get("skipped", ""), (key, s)
        assert "time_s" in r["systems"]["fastopt"]
    assert "skipped: bfloat16: ml_dtypes is not installed" in capsys.readouterr().out


def test_grain_option_applies_for_the_run_only(tmp_path, capsys):
    from fastopt import bench
    from fastopt._backend import native
    before = native.get_parallel_grain()
    out = tmp_path / "r.json"
    assert bench.main(["--rows", "steps", "--sizes", "1e5", "--layouts", "none",
                       "--optimizers", "sgd", "--threads", "2", "--no-torch", "--budget",
                       "0.02", "--min-rounds", "2", "--grain", "1e9", "--json", str(out)]) == 0
    assert native.get_parallel_grain() == before
    data = json.loads(out.read_text())
    assert [r["threads_used"] for r in data["results"]] == [1]
    assert data["environment"]["fastopt"]["parallel_grain"] == 10**9
    assert "(set by --grain)" in capsys.readouterr().out


@needs_proc
def test_spinner_exits_by_itself_when_the_report_is_killed(tmp_path):
    import signal
    cmd = [sys.executable, "-m", "fastopt.bench", "--sizes", "1e5", "--layouts", "none",
           "--rows", "steps", "--threads", "1", "--no-torch", "--budget", "30",
           "--min-rounds", "1000", "--load"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()
        assert "spinning process pid" in line, line
        pid = int(line.split("pid")[1].split()[0])
        proc.send_signal(signal.SIGKILL)        # no finally, no cleanup in the report
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(pid), f"spinner {pid} outlived the killed report"
