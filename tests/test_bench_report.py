"""fastopt-bench runs on either backend (the NumPy one included) and says which it measured."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


@pytest.mark.parametrize("purepython", ["0", "1"])
def test_bench_report_runs_on_both_backends(purepython, tmp_path):
    env = dict(os.environ, FASTOPT_PUREPYTHON=purepython, FASTOPT_ALLOW_SERIAL_BUILD="1")
    out = tmp_path / "report.json"
    cmd = [sys.executable, "-m", "fastopt.bench", "--sizes", "1e3", "--layouts", "4x1e3",
           "--optimizers", "adam,sgd", "--threads", "1", "--no-torch", "--budget", "0.02",
           "--min-rounds", "2", "--json", str(out)]
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    data = json.loads(out.read_text())
    backend = data["environment"]["fastopt"]["backend"]
    if purepython == "1":
        assert backend.startswith("numpy"), backend
    systems = {s for r in data["results"] for s in r["systems"]}
    assert data["results"], "the report has no rows"
    assert any("probe" in str(s) for s in systems), systems
    assert f"backend {backend}" in done.stdout
