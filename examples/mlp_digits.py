"""A two-layer MLP in pure NumPy on scikit-learn's digits, trained with fastopt.AdamW.

The 8x8 images of handwritten digits (1797 of them, 10 classes) are classified by
``softmax(relu(x @ W1 + b1) @ W2 + b2)``: forward pass, cross-entropy and backward pass are
written by hand in NumPy, in float32. The training loop shows the pieces of a modern recipe:

- ``fastopt.AdamW(params, lr, weight_decay, max_grad_norm=1.0)``: decoupled weight decay and
  gradient clipping by global norm, fused into the one native call of ``opt.step(grads)``;
- ``fastopt.schedules.WarmupDecayLR(opt, warmup_steps, total_steps, decay="cosine")``: linear
  warm-up then cosine decay of the learning rate, stepped once per optimizer step;
- ``fastopt.EMA(params, decay)``: an exponential moving average of the weights, updated after
  each step and swapped in for evaluation with ``with ema.average_parameters():``.

Per epoch it prints the learning rate, the training loss (on the whole training set, epoch 0
is before training), the share of steps whose gradient was clipped, and the test accuracy with
the raw weights and with the EMA weights; at the end, the share of the training time spent in
``opt.step``.

The data come from ``sklearn.datasets.load_digits`` (``pip install scikit-learn``; it ships
with the package, nothing is downloaded). Without scikit-learn, or with ``--synthetic``, the
example says so and uses a seeded synthetic look-alike instead: 8x8 seven-segment digits,
randomly shifted, blurred and noised, on the same 0..16 scale.

    python examples/mlp_digits.py
    python examples/mlp_digits.py --fast               # the tests' settings
    python examples/mlp_digits.py --plot mlp_digits_loss.png
"""
from __future__ import annotations

import argparse
import time

import numpy as np

import fastopt
from fastopt.schedules import WarmupDecayLR

# The seven segments (a top, b top right, c bottom right, d bottom, e bottom left, f top left,
# g middle) of each digit, for the synthetic data set.
SEGMENTS = ["abcdef", "bc", "abged", "abgcd", "fgbc", "afgcd", "afgedc", "abc", "abcdefg",
            "abcdfg"]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=None,
                        help="passes over the data (default 30, 8 with --fast)")
    parser.add_argument("--hidden", type=int, default=128, help="hidden units")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3, help="peak learning rate")
    parser.add_argument("--weight-decay", type=float, default=1e-2)
    parser.add_argument("--max-grad-norm", type=float, default=1.0)
    parser.add_argument("--warmup", type=float, default=0.1,
                        help="share of the steps spent warming up (default 0.1)")
    parser.add_argument("--ema-decay", type=float, default=None,
                        help="EMA decay (default 0.99, 0.95 with --fast)")
    parser.add_argument("--synthetic", action="store_true",
                        help="use the synthetic digits even when scikit-learn is installed")
    parser.add_argument("--fast", action="store_true", help="small, quick settings (the tests')")
    parser.add_argument("--plot", metavar="FILE.png", help="save the loss curve to this file")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--state-dtype", default=None, choices=[None, "8bit"],
                        help="'8bit': AdamW's states block-wise quantized to 8 bits (tensors "
                             "of 4096+ elements: W1 at the default size)")
    args = parser.parse_args(argv)
    if args.epochs is None:
        args.epochs = 8 if args.fast else 30
    if args.ema_decay is None:
        args.ema_decay = 0.95 if args.fast else 0.99
    return args


# ---- data ----------------------------------------------------------------------------------------

def synthetic_digits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n seeded 8x8 seven-segment digits on a 0..16 scale, shaped like load_digits' data."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n)
    images = np.zeros((n, 8, 8))
    for i, label in enumerate(y):
        top, left = rng.integers(0, 2), rng.integers(1, 3)      # random shift
        rows, cols = (top, top + 3, top + 6), (left, left + 4)
        strokes = {"a": (rows[0], slice(cols[0], cols[1] + 1)),
                   "g": (rows[1], slice(cols[0], cols[1] + 1)),
                   "d": (rows[2], slice(cols[0], cols[1] + 1)),
                   "f": (slice(rows[0], rows[1] + 1), cols[0]),
                   "b": (slice(rows[0], rows[1] + 1), cols[1]),
                   "e": (slice(rows[1], rows[2] + 1), cols[0]),
                   "c": (slice(rows[1], rows[2] + 1), cols[1])}
        for segment in SEGMENTS[label]:
            images[(i, *strokes[segment])] = rng.uniform(10, 16)
    blurred = images.copy()                                     # a light 4-neighbour blur
    blurred[:, 1:] += 0.25 * images[:, :-1]
    blurred[:, :-1] += 0.25 * images[:, 1:]
    blurred[:, :, 1:] += 0.25 * images[:, :, :-1]
    blurred[:, :, :-1] += 0.25 * images[:, :, 1:]
    noisy = blurred + rng.normal(0, 5.0, blurred.shape)
    return np.clip(noisy, 0, 16).reshape(n, 64), y


def load_data(synthetic: bool, seed: int) -> tuple[np.ndarray, np.ndarray, str]:
    """The digits (features, labels, name), from scikit-learn if it is installed."""
    if not synthetic:
        try:
            from sklearn.datasets import load_digits
        except ImportError:
            print("scikit-learn is not installed (pip install scikit-learn to train on the real "
                  "digits): using synthetic 8x8 seven-segment digits instead")
        else:
            digits = load_digits()
            return digits.data, digits.target, "scikit-learn digits"
    return (*synthetic_digits(1797, seed), "synthetic seven-segment digits")


def split_and_scale(x: np.ndarray, y: np.ndarray, seed: int, test_share: float = 0.2):
    """A seeded train/test split; features standardized with the training set's statistics."""
    order = np.random.default_rng(seed).permutation(len(y))
    n_test = int(len(y) * test_share)
    test, train = order[:n_test], order[n_test:]
    mean, std = x[train].mean(axis=0), x[train].std(axis=0) + 1e-3

    def scale(idx):
        return ((x[idx] - mean) / std).astype(np.float32), y[idx]

    return scale(train), scale(test)


# ---- model -----------------------------------------------------------------------------------

def init_params(n_in: int, n_hidden: int, n_out: int, seed: int) -> list[np.ndarray]:
    """W1, b1, W2, b2 in float32, He-initialized weights and zero biases."""
    rng = np.random.default_rng(seed)
    w1 = rng.normal(0, np.sqrt(2 / n_in), (n_in, n_hidden)).astype(np.float32)
    w2 = rng.normal(0, np.sqrt(2 / n_hidden), (n_hidden, n_out)).astype(np.float32)
    return [w1, np.zeros(n_hidden, np.float32), w2, np.zeros(n_out, np.float32)]


def forward(params: list[np.ndarray], x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The logits, and the hidden activations the backward pass needs."""
    w1, b1, w2, b2 = params
    hidden = np.maximum(x @ w1 + b1, 0)
    return hidden @ w2 + b2, hidden


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def cross_entropy(logits: np.ndarray, y: np.ndarray) -> float:
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return float(-log_p[np.arange(len(y)), y].mean())


def backward(params: list[np.ndarray], x: np.ndarray, y: np.ndarray, logits: np.ndarray,
             hidden: np.ndarray) -> list[np.ndarray]:
    """The gradients of the mean cross-entropy with respect to W1, b1, W2, b2."""
    _, _, w2, _ = params
    d_logits = softmax(logits)
    d_logits[np.arange(len(y)), y] -= 1
    d_logits /= len(y)
    d_hidden = (d_logits @ w2.T) * (hidden > 0)
    return [x.T @ d_hidden, d_hidden.sum(axis=0), hidden.T @ d_logits, d_logits.sum(axis=0)]


def loss(params: list[np.ndarray], x: np.ndarray, y: np.ndarray) -> float:
    return cross_entropy(forward(params, x)[0], y)


def accuracy(params: list[np.ndarray], x: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(forward(params, x)[0].argmax(axis=1) == y))


# ---- training --------------------------------------------------------------------------------

def evaluate(params, ema, train_set, test_set) -> tuple[float, float, float]:
    """Training loss and test accuracy with the raw weights, and test accuracy with the EMA's."""
    train_loss, test_acc = loss(params, *train_set), accuracy(params, *test_set)
    with ema.average_parameters():
        ema_acc = accuracy(params, *test_set)
    return train_loss, test_acc, ema_acc


def train(args: argparse.Namespace, train_set, test_set) -> dict:
    x, y = train_set
    params = init_params(x.shape[1], args.hidden, 10, args.seed)
    steps_per_epoch = -(-len(y) // args.batch_size)
    total_steps = args.epochs * steps_per_epoch
    opt = fastopt.AdamW(params, lr=args.lr, weight_decay=args.weight_decay,
                        max_grad_norm=args.max_grad_norm, state_dtype=args.state_dtype)
    sched = WarmupDecayLR(opt, warmup_steps=int(args.warmup * total_steps),
                          total_steps=total_steps, decay="cosine")
    ema = fastopt.EMA(params, decay=args.ema_decay)
    rng = np.random.default_rng(args.seed + 1)

    history = {"losses": [], "test_accuracy": [], "ema_test_accuracy": [], "lr": [],
               "clipped": []}

    def record(lr: float, clipped: float) -> None:
        for key, value in zip(history, (*evaluate(params, ema, train_set, test_set), lr,
                                        clipped)):
            history[key].append(value)
        print(f"{len(history['lr']) - 1:>5} {lr:>9.2e} {history['losses'][-1]:>10.4f} "
              f"{clipped:>7.0%} {history['test_accuracy'][-1]:>8.1%} "
              f"{history['ema_test_accuracy'][-1]:>8.1%}")

    print(f"{'epoch':>5} {'lr (end)':>9} {'train loss':>10} {'clipped':>7} {'test acc':>8} "
          f"{'EMA acc':>8}")
    record(opt.param_groups[0]["lr"], 0.0)
    opt_time = ema_time = train_time = 0.0
    for _ in range(args.epochs):
        start, clipped = time.perf_counter(), 0
        order = rng.permutation(len(y))
        for i in range(0, len(y), args.batch_size):
            idx = order[i:i + args.batch_size]
            logits, hidden = forward(params, x[idx])
            grads = backward(params, x[idx], y[idx], logits, hidden)
            t0 = time.perf_counter()
            opt.step(grads)
            t1 = time.perf_counter()
            ema.update()
            ema_time += time.perf_counter() - t1
            opt_time += t1 - t0
            sched.step()
            clipped += opt.last_grad_norms[0] > args.max_grad_norm
        train_time += time.perf_counter() - start
        record(sched.get_last_lr()[0], clipped / steps_per_epoch)    # not part of the timing
    quantized = sum(1 for st in opt.state.values() for a in st.values()
                    if isinstance(a, np.ndarray) and a.dtype in (np.int8, np.uint8))
    return {**history, "quantized_states": quantized,
            "state_bytes_per_element": opt.state_bytes(per_element=True),
            "optimizer_share": opt_time / train_time,
            "ema_share": ema_time / train_time, "train_seconds": train_time,
            "steps": total_steps}


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
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(result["losses"], marker="o", markersize=3)
    ax_loss.set(xlabel="epoch", ylabel="training cross-entropy", yscale="log",
                title="MLP on digits: AdamW, warm-up + cosine")
    ax_acc.plot(result["test_accuracy"], marker="o", markersize=3, label="raw weights")
    ax_acc.plot(result["ema_test_accuracy"], marker="s", markersize=3, label="EMA weights")
    ax_acc.set(xlabel="epoch", ylabel="test accuracy", title=result["dataset"])
    ax_acc.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"loss curve saved to {path}")


def main(argv=None) -> dict:
    args = parse_args(argv)
    x, y, name = load_data(args.synthetic, args.seed)
    train_set, test_set = split_and_scale(x, y, args.seed)
    print(f"MLP 64-{args.hidden}-10 on {name}: {len(train_set[1])} training / "
          f"{len(test_set[1])} test images; fastopt.AdamW(lr={args.lr:g}, weight_decay="
          f"{args.weight_decay:g}, max_grad_norm={args.max_grad_norm:g}), warm-up + cosine, "
          f"EMA(decay={args.ema_decay:g}), batch {args.batch_size}, {args.epochs} epochs")
    result = {"dataset": name, **train(args, train_set, test_set)}
    print("train loss: mean cross-entropy on the whole training set; epoch 0: before training")
    print(f"{result['steps']} steps in {result['train_seconds'] * 1e3:.1f} ms: "
          f"{result['optimizer_share']:.1%} of it in opt.step, {result['ema_share']:.1%} in "
          "ema.update")
    save_plot(result, args.plot)
    return result


if __name__ == "__main__":
    main()
