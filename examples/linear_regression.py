"""Linear regression three ways: full-batch, mini-batch and stochastic gradient descent.

One seeded synthetic problem, ``y = X @ w_true + b_true + noise``, is fitted from zero three
times with ``fastopt.SGD``: with batches of the whole data set (full-batch gradient descent: one
step per epoch), of 32 samples (mini-batch) and of one sample (stochastic). The model, the mean
squared error and its gradient are plain NumPy; the optimizer step is one fused native call.

For each method the example prints the loss on the whole data set per epoch (epoch 0 is the
loss before training) and, at the end, the share of the training time spent in ``opt.step``.
Smaller batches take more, noisier steps per epoch: they need a smaller learning rate but get
further per pass over the data, and the optimizer's fixed cost per call weighs more.

    python examples/linear_regression.py               # default settings
    python examples/linear_regression.py --fast        # the tests' settings (well under a second)
    python examples/linear_regression.py --plot linear_regression_loss.png
"""
from __future__ import annotations

import argparse
import time

import numpy as np

import fastopt

# name -> (batch size, None meaning the whole data set; learning rate)
METHODS = {
    "full-batch": (None, 0.5),
    "mini-batch": (32, 0.05),
    "stochastic": (1, 0.005),
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=None,
                        help="passes over the data (default 20, 8 with --fast)")
    parser.add_argument("--samples", type=int, default=None,
                        help="data set size (default 2000, 500 with --fast)")
    parser.add_argument("--features", type=int, default=20)
    parser.add_argument("--fast", action="store_true", help="small, quick settings (the tests')")
    parser.add_argument("--plot", metavar="FILE.png", help="save the loss curves to this file")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.epochs is None:
        args.epochs = 8 if args.fast else 20
    if args.samples is None:
        args.samples = 500 if args.fast else 2000
    return args


def make_data(n: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Features with unequal scales (so the problem is not trivially conditioned) and a noisy
    linear target."""
    rng = np.random.default_rng(seed)
    scales = np.linspace(0.3, 1.0, d)
    x = rng.standard_normal((n, d)) * scales
    w_true = rng.standard_normal(d)
    y = x @ w_true + 0.5 + 0.1 * rng.standard_normal(n)
    return x, y


def predict(w: np.ndarray, b: np.ndarray, x: np.ndarray) -> np.ndarray:
    return x @ w + b[0]


def mse(w: np.ndarray, b: np.ndarray, x: np.ndarray, y: np.ndarray) -> float:
    """Half the mean squared error, 0.5 * mean((x @ w + b - y)**2)."""
    r = predict(w, b, x) - y
    return 0.5 * float(r @ r) / len(y)


def gradients(w: np.ndarray, b: np.ndarray, x: np.ndarray,
              y: np.ndarray) -> list[np.ndarray]:
    """The gradients of ``mse`` with respect to w and b (by hand)."""
    r = predict(w, b, x) - y
    return [x.T @ r / len(y), np.array([r.mean()])]


def train(x: np.ndarray, y: np.ndarray, batch_size: int, lr: float, epochs: int,
          seed: int) -> dict:
    """Fit w, b from zero with fastopt.SGD; the loss per epoch and the optimizer's time share."""
    rng = np.random.default_rng(seed)
    w, b = np.zeros(x.shape[1]), np.zeros(1)
    opt = fastopt.SGD([w, b], lr=lr)
    losses = [mse(w, b, x, y)]
    opt_time = train_time = 0.0
    for _ in range(epochs):
        start = time.perf_counter()
        order = rng.permutation(len(y))
        for i in range(0, len(y), batch_size):
            idx = order[i:i + batch_size]
            grads = gradients(w, b, x[idx], y[idx])
            t0 = time.perf_counter()
            opt.step(grads)
            opt_time += time.perf_counter() - t0
        train_time += time.perf_counter() - start
        losses.append(mse(w, b, x, y))          # evaluation: not part of the training time
    return {"losses": losses, "optimizer_share": opt_time / train_time, "batch_size": batch_size,
            "lr": lr, "steps": epochs * -(-len(y) // batch_size), "train_seconds": train_time}


def least_squares_loss(x: np.ndarray, y: np.ndarray) -> float:
    """The best loss any w, b can reach (the exact least-squares fit), for reference."""
    xb = np.hstack([x, np.ones((len(y), 1))])
    coef = np.linalg.lstsq(xb, y, rcond=None)[0]
    return mse(coef[:-1], coef[-1:], x, y)


def print_table(results: dict, best: float) -> None:
    names = list(results)
    print(f"{'epoch':>5} " + " ".join(f"{name:>12}" for name in names))
    for epoch in range(len(results[names[0]]["losses"])):
        print(f"{epoch:>5} " + " ".join(f"{results[n]['losses'][epoch]:>12.5f}" for n in names))
    print("loss: 0.5 * mean squared error on the whole data set; epoch 0: before training; "
          f"least-squares optimum: {best:.5f}")
    for name, r in results.items():
        print(f"{name:>12}: batch {r['batch_size']:>5}, lr {r['lr']:<6g} {r['steps']:>6} steps "
              f"in {r['train_seconds'] * 1e3:7.1f} ms, {r['optimizer_share']:6.1%} of it in "
              "opt.step")


def save_plot(results: dict, path: str | None) -> None:
    if path is None:
        print("(pass --plot FILE.png to save the loss curves)")
        return
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)")
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, r in results.items():
        ax.plot(r["losses"], marker="o", markersize=3, label=f"{name} (lr {r['lr']:g})")
    ax.set(xlabel="epoch", ylabel="0.5 * MSE", yscale="log",
           title="Linear regression with fastopt.SGD")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"loss curves saved to {path}")


def main(argv=None) -> dict:
    args = parse_args(argv)
    x, y = make_data(args.samples, args.features, args.seed)
    print(f"linear regression: {args.samples} samples, {args.features} features, "
          f"{args.epochs} epochs, fastopt.SGD")
    results = {}
    for name, (batch_size, lr) in METHODS.items():
        results[name] = train(x, y, batch_size or len(y), lr, args.epochs, args.seed + 1)
    print_table(results, least_squares_loss(x, y))
    save_plot(results, args.plot)
    return results


if __name__ == "__main__":
    main()
