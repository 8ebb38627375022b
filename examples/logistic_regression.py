"""Logistic regression with Adam: a binary classifier in plain NumPy, trained by fastopt.Adam.

Two seeded, overlapping Gaussian classes in 20 dimensions; the model is ``p(y=1|x) =
sigmoid(x @ w + b)``, the loss is the mean binary cross-entropy (written with ``logaddexp`` so
that it never overflows), the gradient is derived by hand: ``x.T @ (p - y) / n``. Mini-batches
of 64 samples, one fused ``opt.step`` per batch.

The example prints, per epoch, the training loss (on the whole training set; epoch 0 is before
training) and the accuracy on held-out data, then the share of the training time spent in
``opt.step``.

    python examples/logistic_regression.py
    python examples/logistic_regression.py --fast      # the tests' settings
    python examples/logistic_regression.py --plot logistic_regression_loss.png
"""
from __future__ import annotations

import argparse
import time

import numpy as np

import fastopt


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=None,
                        help="passes over the data (default 20, 6 with --fast)")
    parser.add_argument("--samples", type=int, default=None,
                        help="training set size (default 5000, 1000 with --fast)")
    parser.add_argument("--features", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--fast", action="store_true", help="small, quick settings (the tests')")
    parser.add_argument("--plot", metavar="FILE.png", help="save the loss curve to this file")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.epochs is None:
        args.epochs = 6 if args.fast else 20
    if args.samples is None:
        args.samples = 1000 if args.fast else 5000
    return args


def make_data(n: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n samples of two Gaussian classes whose means differ along a random direction."""
    rng = np.random.default_rng(seed)
    direction = rng.standard_normal(d)
    direction *= 1.5 / np.linalg.norm(direction)
    y = rng.integers(0, 2, n).astype(np.float64)
    x = rng.standard_normal((n, d)) + np.outer(2 * y - 1, direction) + 1.0
    return x, y


def logits(w: np.ndarray, b: np.ndarray, x: np.ndarray) -> np.ndarray:
    return x @ w + b[0]


def bce(w: np.ndarray, b: np.ndarray, x: np.ndarray, y: np.ndarray) -> float:
    """Mean binary cross-entropy, log(1 + exp(z)) - y*z, computed without overflow."""
    z = logits(w, b, x)
    return float(np.mean(np.logaddexp(0.0, z) - y * z))


def gradients(w: np.ndarray, b: np.ndarray, x: np.ndarray,
              y: np.ndarray) -> list[np.ndarray]:
    """The gradients of ``bce`` with respect to w and b: the residual p - y, back-propagated."""
    r = 0.5 * (1.0 + np.tanh(0.5 * logits(w, b, x))) - y     # sigmoid(z) - y, overflow-free
    return [x.T @ r / len(y), np.array([r.mean()])]


def accuracy(w: np.ndarray, b: np.ndarray, x: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean((logits(w, b, x) > 0) == (y > 0.5)))


def train(args: argparse.Namespace, train_set, test_set) -> dict:
    x, y = train_set
    rng = np.random.default_rng(args.seed + 1)
    w, b = np.zeros(x.shape[1]), np.zeros(1)
    opt = fastopt.Adam([w, b], lr=args.lr)
    losses, accuracies = [bce(w, b, x, y)], [accuracy(w, b, *test_set)]
    opt_time = train_time = 0.0
    print(f"{'epoch':>5} {'train loss':>10} {'test acc':>8}")
    print(f"{0:>5} {losses[0]:>10.5f} {accuracies[0]:>8.1%}")
    for epoch in range(1, args.epochs + 1):
        start = time.perf_counter()
        order = rng.permutation(len(y))
        for i in range(0, len(y), args.batch_size):
            idx = order[i:i + args.batch_size]
            grads = gradients(w, b, x[idx], y[idx])
            t0 = time.perf_counter()
            opt.step(grads)
            opt_time += time.perf_counter() - t0
        train_time += time.perf_counter() - start
        losses.append(bce(w, b, x, y))          # evaluation: not part of the training time
        accuracies.append(accuracy(w, b, *test_set))
        print(f"{epoch:>5} {losses[-1]:>10.5f} {accuracies[-1]:>8.1%}")
    return {"losses": losses, "test_accuracy": accuracies,
            "optimizer_share": opt_time / train_time, "train_seconds": train_time,
            "steps": args.epochs * -(-len(y) // args.batch_size)}


def save_plot(result: dict, path: str | None) -> None:
    if path is None:
        print("(pass --plot FILE.png to save the loss curve)")
        return
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)")
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(result["losses"], marker="o", markersize=3, label="train loss")
    ax.set(xlabel="epoch", ylabel="binary cross-entropy",
           title="Logistic regression with fastopt.Adam")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"loss curve saved to {path}")


def main(argv=None) -> dict:
    args = parse_args(argv)
    x, y = make_data(args.samples + args.samples // 4, args.features, args.seed)
    train_set, test_set = (x[:args.samples], y[:args.samples]), (x[args.samples:], y[args.samples:])
    print(f"logistic regression: {args.samples} training / {len(test_set[1])} test samples, "
          f"{args.features} features, fastopt.Adam(lr={args.lr:g}), batch {args.batch_size}")
    result = train(args, train_set, test_set)
    print("train loss: mean binary cross-entropy on the whole training set; epoch 0: before "
          "training")
    print(f"{result['steps']} steps in {result['train_seconds'] * 1e3:.1f} ms, "
          f"{result['optimizer_share']:.1%} of it in opt.step")
    save_plot(result, args.plot)
    return result


if __name__ == "__main__":
    main()
