"""Time one training step of each optimizer on the paper's autoencoder.

``python -m locoprop.bench [--device cpu|cuda] [--steps N] [--warmup N] [--batch-size B] [--optimizers ...]``

A step is what the training loop does per batch: ``zero_grad``, forward, loss, backward and
``opt.step`` (with the loss closure for optimizers that ask for one).  Each optimizer gets a fresh
:func:`~locoprop.models.deep_autoencoder` and one fixed batch of uniform random pixels in [0, 1]
already on the device; after ``warmup`` untimed steps, each of ``steps`` steps is timed on its own
(with ``torch.cuda.synchronize()`` before and after on CUDA) and the median is reported, with its
ratio to Adam's median from the same run.  Steps of optimizers with periodic work (K-FAC inverses,
Shampoo roots) vary; the median reports the typical step, the mean is listed too.
"""
from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence

import torch

from .models import PAPER_SIZES, deep_autoencoder, reconstruction_loss
from .optim import make_optimizer

__all__ = ["BENCH_OPTIMIZERS", "benchmark", "format_table", "main"]

BENCH_OPTIMIZERS = ("sgd", "rmsprop", "adam", "kfac", "shampoo", "locoprop-s", "locoprop-m")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def benchmark(
    optimizers: Sequence[str] = BENCH_OPTIMIZERS,
    device: str | torch.device = "cpu",
    steps: int = 20,
    warmup: int = 5,
    batch_size: int = 1000,
    sizes: Sequence[int] = PAPER_SIZES,
    seed: int = 0,
) -> list[dict]:
    """Median step time of each optimizer; one dict per optimizer (keys listed in :func:`format_table`)."""
    if steps < 1 or warmup < 0 or batch_size < 1:
        raise ValueError(f"need steps >= 1, warmup >= 0, batch_size >= 1; got {steps}, {warmup}, {batch_size}")
    device = torch.device(device)
    x = torch.rand(batch_size, sizes[0], generator=torch.Generator().manual_seed(seed)).to(device)
    rows = []
    for name in optimizers:
        model = deep_autoencoder(sizes, seed=seed).to(device)
        opt = make_optimizer(name, model)
        closure = (lambda: reconstruction_loss(model(x), x)) if getattr(opt, "needs_loss_closure", False) else None

        def train_step():
            opt.zero_grad()
            loss = reconstruction_loss(model(x), x)
            loss.backward()
            opt.step(closure)
            return loss

        for _ in range(warmup):
            train_step()
        times = []
        for _ in range(steps):
            _sync(device)
            start = time.perf_counter()
            loss = train_step()
            _sync(device)
            times.append(time.perf_counter() - start)
        rows.append({
            "optimizer": name,
            "median_ms": 1e3 * statistics.median(times),
            "mean_ms": 1e3 * statistics.fmean(times),
            "min_ms": 1e3 * min(times),
            "final_loss": float(loss.detach()),
            "steps": steps,
            "batch_size": batch_size,
            "device": str(device),
        })
    adam = next((r["median_ms"] for r in rows if r["optimizer"] == "adam"), None)
    for row in rows:
        row["ratio_to_adam"] = row["median_ms"] / adam if adam else float("nan")
    return rows


def format_table(rows: list[dict]) -> str:
    """The rows as a plain-text table."""
    lines = [f"{'optimizer':<12} {'median ms':>10} {'mean ms':>10} {'min ms':>10} {'x Adam':>8}"]
    for r in rows:
        lines.append(
            f"{r['optimizer']:<12} {r['median_ms']:>10.2f} {r['mean_ms']:>10.2f} {r['min_ms']:>10.2f} "
            f"{r['ratio_to_adam']:>8.2f}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(prog="python -m locoprop.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--steps", type=int, default=20, help="timed steps per optimizer (median reported)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--optimizers", nargs="+", default=list(BENCH_OPTIMIZERS), metavar="NAME")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    rows = benchmark(args.optimizers, args.device, args.steps, args.warmup, args.batch_size)
    print(f"device {args.device}, batch {args.batch_size}, {args.warmup} warm-up + {args.steps} timed steps, "
          f"model {'-'.join(map(str, PAPER_SIZES))}")
    print(format_table(rows))
    return rows


if __name__ == "__main__":
    main()
