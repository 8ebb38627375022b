"""The examples in examples/ run (with their --fast settings) and their losses fall.

The examples folder is not a package: each example is imported from its file path. The optional
packages (scikit-learn, matplotlib) are hidden in some tests to check the examples' fallbacks.
"""
from __future__ import annotations

import functools
import importlib.util
import math
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).parent.parent / "examples"
NAMES = ["linear_regression.py", "logistic_regression.py", "mlp_digits.py"]


@functools.cache
def load(name: str):
    """Import examples/<name> as a module (cached: each file is executed once)."""
    spec = importlib.util.spec_from_file_location(f"fastopt_example_{Path(name).stem}",
                                                  EXAMPLES / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(name: str, *args: str) -> dict:
    return load(name).main(["--fast", *args])


def runs(name: str, result: dict) -> dict:
    """The training runs of a result: one per method for linear regression, else the one."""
    return result if name == "linear_regression.py" else {name: result}


def check_training(run_result: dict) -> None:
    losses = run_result["losses"]
    assert all(isinstance(x, float) and math.isfinite(x) for x in losses), losses
    # epoch 0 is the loss before training: it falls from there, and keeps falling after epoch 1
    assert losses[-1] < 0.7 * losses[0], losses
    assert losses[-1] < 0.7 * losses[1], losses
    assert 0.0 < run_result["optimizer_share"] < 1.0


def test_every_example_is_tested():
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_example_loss_falls(name, capsys):
    result = run(name)
    out = capsys.readouterr().out
    for run_result in runs(name, result).values():
        check_training(run_result)
    assert "opt.step" in out and "--plot" in out


def test_linear_regression_three_methods():
    result = run("linear_regression.py")
    assert set(result) == {"full-batch", "mini-batch", "stochastic"}
    assert [r["batch_size"] for r in result.values()] == [500, 32, 1]
    # full-batch gradient descent on a convex quadratic with a small enough step: monotone
    losses = result["full-batch"]["losses"]
    assert all(b < a for a, b in zip(losses, losses[1:])), losses


def test_logistic_regression_classifies():
    result = run("logistic_regression.py")
    assert result["test_accuracy"][0] < 0.7 < 0.85 < result["test_accuracy"][-1]


@pytest.mark.parametrize("synthetic", [False, True], ids=["default data", "synthetic"])
def test_mlp_digits_accuracy(synthetic):
    result = run("mlp_digits.py", *(["--synthetic"] if synthetic else []))
    # without scikit-learn the default falls back to the synthetic digits
    real = not synthetic and importlib.util.find_spec("sklearn") is not None
    assert result["dataset"].startswith("scikit-learn" if real else "synthetic")
    check_training(result)
    # ten classes: chance is 10%
    assert result["test_accuracy"][-1] > 0.85
    assert result["ema_test_accuracy"][-1] > 0.85
    assert 0.0 < result["ema_share"] < 1.0
    # the schedule warmed up from 0 and decayed back to 0 by the last step
    assert result["lr"][0] == 0.0 and result["lr"][-1] == pytest.approx(0.0, abs=1e-12)
    assert max(result["lr"]) > 1e-3


def test_mlp_digits_without_scikit_learn(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "sklearn", None)           # import sklearn -> ImportError
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    result = run("mlp_digits.py")
    out = capsys.readouterr().out
    assert "pip install scikit-learn" in out
    assert result["dataset"].startswith("synthetic")
    check_training(result)
    assert result["test_accuracy"][-1] > 0.85


def test_examples_are_deterministic():
    first = run("logistic_regression.py", "--epochs", "2")
    second = run("logistic_regression.py", "--epochs", "2")
    assert first["losses"] == second["losses"]


@pytest.mark.parametrize("name", NAMES)
def test_plot_writes_png(name, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    path = tmp_path / "loss.png"
    run(name, "--epochs", "2", "--plot", str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert str(path) in capsys.readouterr().out


@pytest.mark.parametrize("name", NAMES)
def test_plot_without_matplotlib(name, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)        # import matplotlib -> ImportError
    path = tmp_path / "loss.png"
    run(name, "--epochs", "2", "--plot", str(path))
    assert not path.exists()
    assert "matplotlib is not installed" in capsys.readouterr().out
