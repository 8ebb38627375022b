"""fastopt-bench: runs on either backend (the NumPy one included) and says which it measured;
its tail columns, its loaded mode, and its model-shaped and storage rows."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

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
                           "--optimizers", "adam,sgd", *QUICK, env=env)
    backend = data["environment"]["fastopt"]["backend"]
    if purepython == "1":
        assert backend.startswith("numpy"), backend
    systems = {s for r in data["results"] for s in r["systems"]}
    assert data["results"], "the report has no rows"
    assert any("probe" in str(s) for s in systems), systems
    assert f"backend {backend}" in done.stdout


def test_every_row_shows_median_p90_and_worst(tmp_path):
    data, done = run_bench(tmp_path, "--sizes", "1e3,1e5", "--layouts", "40x1e3",
                           "--optimizers", "adam", *QUICK)
    assert data["results"]
    for r in data["results"]:
        for key, s in r["systems"].items():
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
    data, done = run_bench(tmp_path, "--sizes", "1e3", "--layouts", "none",
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
