"""Benchmark every optimizer on the paper's protocol: time per epoch, memory, FLOP/s.

``python -m locoprop bench [--device cpu|cuda] [--epochs N] [--warmup-epochs N] [--steps-per-epoch N] ...``

An epoch is what the runner does between evaluations: a shuffle on the device, then one training
step per batch (``zero_grad``, forward, loss, backward, ``opt.step``).  The training set sits on
the device (synthetic uniform pixels of the paper's size, 60,000 x 784, unless ``--dataset``
names a real one).  After ``warmup_epochs`` untimed epochs, each of ``epochs`` epochs is timed on
its own (``torch.cuda.synchronize()`` around it on CUDA) and the median is reported; evaluation
is not part of an epoch.  With ``--steps-per-epoch N`` only the first N batches of each epoch are
timed, and the reported time per epoch is the median per step times the batches of a whole epoch.  For each optimizer the benchmark also reports

* the peak device memory of its epochs (CUDA only),
* the FLOPs of one training step, counted by ``torch.utils.flop_counter.FlopCounterMode``
  (matrix products of forward, backward and optimizer step; the Cholesky and eigenvalue
  decompositions of K-FAC and Shampoo are not counted), and the achieved FLOP/s,
* the ratio of its epoch time to RMSProp's from the same run,
* per training step (:data:`COUNTED_STEPS` steps counted after the timing, :mod:`locoprop.experiments.counting`):
  the aten operations and ``torch._foreach_*`` calls it dispatches (kernel launches on CUDA), the most
  host reads (each a synchronisation on CUDA) and ``torch.linalg.eigh`` calls (each checks convergence
  on the host), and on CUDA the most synchronisations ``torch.cuda.set_sync_debug_mode`` reports,

and, once per run and precision, the matrix-multiply ceiling of the device on the shapes of a
LocoProp local iteration (:math:`XW^\\top` and :math:`\\delta^\\top X` for every layer), against which
LocoProp's achieved FLOP/s is compared.  Every optimizer is timed in each precision of
``--precision`` (default ``fp32 bf16``, see :func:`locoprop.experiments.train.products`; on CUDA the bf16 products sum
in float32, :func:`locoprop.precision.float32_accumulation`, as in training), with its speed-up over
its own float32 epoch.  Each contender's model, optimizer and batches are freed (and on CUDA the cached
memory released) before the next one is timed.  ``--tf32`` allows TF32 products on CUDA for the
benchmark and restores the process's setting afterwards.  K-FAC and Shampoo are timed with their inverse / root
every step and every 5 steps; with ``--tuned``, each optimizer is timed once with the setting its
tuning chose (:mod:`locoprop.experiments.tuning`), as the paper-scale runs train it.  Results are printed and
written as JSON under
``data/results/bench/`` with the device name and package versions.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import gc
import itertools
import json
import statistics
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..models import PAPER_SIZES, deep_autoencoder, reconstruction_loss
from ..optim import OPTIMIZERS, make_optimizer
from .provenance import atomic_write_text, provenance
from ..precision import PRECISIONS, float32_accumulation
from .config import RunConfig, default_results_dir
from .counting import OpCounter, host_reads, reads_of
from .data import load
from .parsing import Parser
from .train import evaluate, sync, training_loss
from .tuning import same_total_step, tuned_setting

__all__ = ["Contender", "CONTENDERS", "benchmark", "evaluation_time", "matmul_ceiling", "format_table", "main",
           "tuned_contenders"]


@dataclass(frozen=True)
class Contender:
    """One line of the benchmark: an optimizer name, a label and extra hyper-parameters."""

    label: str
    optimizer: str
    hparams: dict = field(default_factory=dict)


CONTENDERS = (
    Contender("sgd", "sgd"),
    Contender("momentum", "momentum"),
    Contender("adagrad", "adagrad"),
    Contender("rmsprop", "rmsprop"),
    Contender("adam", "adam"),
    Contender("kfac (inverse every step)", "kfac", {"inverse_update_freq": 1}),
    Contender("kfac (inverse every 5)", "kfac", {"inverse_update_freq": 5}),
    Contender("shampoo (root every step)", "shampoo", {"precondition_frequency": 1, "start_preconditioning_step": 1}),
    Contender("shampoo (root every 5)", "shampoo", {"precondition_frequency": 5, "start_preconditioning_step": 1}),
    Contender("locoprop-s", "locoprop-s"),
    Contender("locoprop-m", "locoprop-m"),
)


def evaluation_time(device: torch.device, train: torch.Tensor | None = None, test_size: int = 10_000,
                    sizes: Sequence[int] = PAPER_SIZES) -> float:
    """Seconds of the runner's evaluation after an epoch (:func:`locoprop.experiments.train.evaluate` on train and test)."""
    g = torch.Generator().manual_seed(0)
    train = torch.rand(60_000, sizes[0], generator=g).to(device) if train is None else train
    test = torch.rand(test_size, sizes[0], generator=g).to(device)
    model = deep_autoencoder(sizes, seed=0).to(device)
    evaluate(model, test)  # warm-up
    sync(device)
    start = time.perf_counter()
    evaluate(model, train)
    evaluate(model, test)
    sync(device)
    return time.perf_counter() - start


def tuned_contenders(dataset: str, profile: str = "paper", results_dir: str | None = None,
                     search: str = "short", local_iters: Sequence[int] = ()) -> list[Contender]:
    """One contender per optimizer whose ``search`` on ``dataset`` (under ``results_dir``) is complete, with its
    winning setting; and LocoProp-M at each of ``local_iters`` local iterations, its inner learning rate rescaled
    to the step sum of its tuned T (:func:`locoprop.experiments.tuning.same_total_step`)."""
    out = []
    for name in OPTIMIZERS:
        base = RunConfig(optimizer=name, profile=profile, dataset=dataset, device="cpu", results_dir=results_dir)
        try:
            setting = tuned_setting(base, search)
        except ValueError:
            continue
        out.append(Contender(name, name, dict(setting)))
        if name == "locoprop-m":
            tuned_t = setting.get("local_iters", 10)
            for T in local_iters:
                if T != tuned_t:
                    hparams = same_total_step(dataclasses.replace(base, hparams=dict(setting)), T, tuned_t).hparams
                    out.append(Contender(f"locoprop-m (T={T})", name, dict(hparams)))
    if not out:
        raise ValueError(f"no finished {search} search under {results_dir or 'data/results'}/{profile}/ for {dataset}: "
                         f"run `python -m locoprop tune --search {search} --profile {profile} --dataset {dataset} "
                         f"--optimizer ...` first")
    if local_iters and not any(c.label.startswith("locoprop-m (T=") for c in out) and \
            not any(c.optimizer == "locoprop-m" for c in out):
        raise ValueError(f"--local-iters needs LocoProp-M's finished {search} search")
    return out


def _training_step(model, opt, closure_for, precision="fp32", device=torch.device("cpu")):
    def step(xb):
        opt.zero_grad(set_to_none=True)
        loss = training_loss(model, xb, precision, device)
        loss.backward()
        opt.step(closure_for(xb))
        return loss
    return step


def matmul_ceiling(sizes: Sequence[int], batch_size: int, device: torch.device, repeats: int = 20,
                   dtype: torch.dtype = torch.float32) -> float:
    """FLOP/s of the matrix products of one LocoProp local iteration in ``dtype``, on ``device``."""
    g = torch.Generator().manual_seed(0)
    shapes = list(zip(sizes[:-1], sizes[1:]))
    xs = [torch.rand(batch_size, d_in, generator=g).to(device, dtype) for d_in, _ in shapes]
    ws = [torch.rand(d_out, d_in, generator=g).to(device, dtype) for d_in, d_out in shapes]
    ds = [torch.rand(batch_size, d_out, generator=g).to(device, dtype) for _, d_out in shapes]

    def once():
        for x, w, d in zip(xs, ws, ds):
            x @ w.T
            d.T @ x
    once()
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        once()
    sync(device)
    flops = repeats * sum(2 * 2 * batch_size * d_in * d_out for d_in, d_out in shapes)
    return flops / (time.perf_counter() - start)


def benchmark(
    contenders: Sequence[Contender] = CONTENDERS,
    device: str | torch.device = "cpu",
    epochs: int = 3,
    warmup_epochs: int = 1,
    steps_per_epoch: int | None = None,
    batch_size: int = 1000,
    data: torch.Tensor | None = None,
    sizes: Sequence[int] = PAPER_SIZES,
    seed: int = 0,
    precisions: Sequence[str] = ("fp32",),
    progress: bool = False,
) -> list[dict]:
    """One dict per contender and precision: epoch times, peak memory, FLOPs per step, FLOP/s, ratio to RMSProp;
    with ``progress``, a line on stderr as each one is timed."""
    if epochs < 1 or warmup_epochs < 0 or batch_size < 1 or (steps_per_epoch is not None and steps_per_epoch < 1):
        raise ValueError(
            f"need epochs >= 1, warmup_epochs >= 0, batch_size >= 1, steps_per_epoch >= 1; got "
            f"{epochs}, {warmup_epochs}, {batch_size}, {steps_per_epoch}"
        )
    device = torch.device(device)
    if data is None:
        data = torch.rand(60_000, sizes[0], generator=torch.Generator().manual_seed(seed))
    data = data.to(device)
    n_batches = len(data) // batch_size
    steps = n_batches if steps_per_epoch is None else min(steps_per_epoch, n_batches)
    rows = []
    jobs = [(c, p) for c in contenders for p in precisions]
    for index, (contender, precision) in enumerate(jobs, 1):
        if progress:
            print(f"bench: {index}/{len(jobs)} {contender.label} ({precision}) ...", file=sys.stderr, flush=True)
        with float32_accumulation(device, enabled=precision != "fp32"):
            rows.append(_measure(contender, precision, data, device, sizes, seed, batch_size, steps, n_batches,
                                 epochs, warmup_epochs))
        gc.collect()  # the contender's model, optimizer and batches are gone before the next one is timed
        if device.type == "cuda":
            torch.cuda.empty_cache()
    for row in rows:
        rmsprop = next((r["epoch_s"] for r in rows if r["optimizer"] == "rmsprop" and r["precision"] == "fp32"), None)
        row["ratio_to_rmsprop"] = row["epoch_s"] / rmsprop if rmsprop else None
        fp32 = next((r["epoch_s"] for r in rows if r["label"] == row["label"] and r["precision"] == "fp32"), None)
        row["speedup_over_fp32"] = fp32 / row["epoch_s"] if fp32 else None
    return rows


#: Training steps counted (after the timing) for the host reads and the operations per step.
COUNTED_STEPS = 5


def _measure(contender: Contender, precision: str, data: torch.Tensor, device: torch.device, sizes: Sequence[int],
             seed: int, batch_size: int, steps: int, n_batches: int, epochs: int, warmup_epochs: int) -> dict:
    """One row of :func:`benchmark` (everything it builds is freed on return)."""
    model = deep_autoencoder(sizes, seed=seed).to(device)
    opt = make_optimizer(contender.optimizer, model, precision=precision, **contender.hparams)
    wants_closure = getattr(opt, "needs_loss_closure", False)

    def closure_for(xb):
        return (lambda: reconstruction_loss(model(xb), xb)) if wants_closure else None

    step = _training_step(model, opt, closure_for, precision, device)
    shuffle = torch.Generator(device=device).manual_seed(seed)

    def epoch():
        perm = torch.randperm(len(data), device=device, generator=shuffle)
        for i in range(steps):
            loss = step(data[perm[i * batch_size:(i + 1) * batch_size]])
        return loss

    for _ in range(warmup_epochs):
        epoch()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(epochs):
        sync(device)
        start = time.perf_counter()
        loss = epoch()
        sync(device)
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    with FlopCounterMode(display=False) as counter:
        step(data[:batch_size])
    flops = counter.get_total_flops()
    counts = _count_steps(step, opt, data, batch_size, device)
    step_s = statistics.median(times) / steps
    return {
        "label": contender.label,
        "optimizer": contender.optimizer,
        "precision": precision,
        "hparams": contender.hparams,
        "epoch_s": step_s * n_batches,  # a whole epoch, from the timed steps
        "epoch_s_all": times,          # each timed (possibly partial) epoch
        "step_ms": 1e3 * step_s,
        "steps_per_epoch": steps,      # timed steps of each epoch
        "batches_per_epoch": n_batches,
        "peak_memory_mib": None if peak is None else peak / 2**20,
        "flops_per_step": flops,
        "tflops": flops / step_s / 1e12,
        "final_loss": float(loss.detach()),
        **counts,
    }


def _count_steps(step, opt, data: torch.Tensor, batch_size: int, device: torch.device) -> dict:
    """Per training step, over :data:`COUNTED_STEPS` steps (an inverse / root update among them when its
    period is at most that): the most host reads and ``eigh`` calls, the mean aten operations and
    ``torch._foreach_*`` calls (:mod:`locoprop.experiments.counting`), and on CUDA the most synchronisations
    that ``torch.cuda.set_sync_debug_mode`` reports."""
    reads, eighs, ops, foreach, syncs = [], [], [], [], []
    for i in range(COUNTED_STEPS):
        xb = data[(i % (len(data) // batch_size)) * batch_size:][:batch_size]
        with host_reads(opt) as found, OpCounter() as counted:
            step(xb)
        reads.append(reads_of(found))
        eighs.append(found["eigh"])
        ops.append(counted.total)
        foreach.append(counted.foreach)
        if device.type == "cuda":
            sync(device)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                torch.cuda.set_sync_debug_mode("warn")
                try:
                    step(xb)
                finally:
                    torch.cuda.set_sync_debug_mode("default")
            syncs.append(sum("synchroniz" in str(w.message) for w in caught))
    return {"host_reads_per_step": max(reads), "eigh_per_step": max(eighs), "ops_per_step": statistics.mean(ops),
            "foreach_per_step": statistics.mean(foreach), "cuda_syncs_per_step": max(syncs) if syncs else None}


def format_table(rows: list[dict], ceilings: dict[str, float] | None = None) -> str:
    """The rows as a plain-text table; ``ceilings``: matrix-product FLOP/s per precision on LocoProp's shapes."""
    head = (f"{'optimizer':<27} {'prec':>4} {'epoch s':>9} {'step ms':>9} {'x RMSProp':>9} {'x fp32':>7} "
            f"{'GFLOP/step':>10} {'TFLOP/s':>8} {'peak MiB':>9} {'ops/step':>8} {'foreach':>7} {'reads':>5} "
            f"{'eigh':>4} {'syncs':>5}")
    lines = [head]
    for r in rows:
        ratio = "n/a" if r["ratio_to_rmsprop"] is None else f"{r['ratio_to_rmsprop']:.2f}"
        speedup = "n/a" if r.get("speedup_over_fp32") is None else f"{r['speedup_over_fp32']:.2f}"
        peak = "n/a" if r["peak_memory_mib"] is None else f"{r['peak_memory_mib']:.0f}"

        def count(key, spec="d"):  # rows written before these columns existed have none
            return "n/a" if r.get(key) is None else format(r[key], spec)

        lines.append(
            f"{r['label']:<27} {r.get('precision', 'fp32'):>4} {r['epoch_s']:>9.3f} {r['step_ms']:>9.2f} {ratio:>9} "
            f"{speedup:>7} {r['flops_per_step'] / 1e9:>10.2f} {r['tflops']:>8.3f} {peak:>9} "
            f"{count('ops_per_step', '.0f'):>8} {count('foreach_per_step', '.0f'):>7} {count('host_reads_per_step'):>5} "
            f"{count('eigh_per_step'):>4} {count('cuda_syncs_per_step'):>5}"
        )
    for precision, ceiling in (ceilings or {}).items():
        lines.append(f"{precision} matmul ceiling on LocoProp's shapes: {ceiling / 1e12:.3f} TFLOP/s")
        for r in rows:
            if r["optimizer"].startswith("locoprop") and r.get("precision", "fp32") == precision:
                lines.append(f"  {r['label']} ({precision}): {r['tflops'] * 1e12 / ceiling:.1%} of it")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict:
    parser = Parser(prog="python -m locoprop bench", description=__doc__.splitlines()[0],
                    epilog="example: python -m locoprop bench --tuned --dataset fashion-mnist --device cpu")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per optimizer (median reported)")
    parser.add_argument("--warmup-epochs", type=int, default=1, help="untimed epochs first")
    parser.add_argument("--steps-per-epoch", type=int, default=None,
                        help="time only the first N batches of each epoch (default: the whole epoch)")
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--dataset", default=None, help="time on a real training set (e.g. fashion-mnist)")
    parser.add_argument("--optimizer", action="append", default=None, metavar="NAME[,NAME...]",
                        help="keep only the lines of these optimizers, comma-separated or repeated (e.g. adam,kfac)")
    parser.add_argument("--tuned", action="store_true",
                        help="time each optimizer once, with its tuned setting (the winner of its --search under "
                             "data/results/paper/ for --dataset, default fashion-mnist) instead of the defaults")
    parser.add_argument("--search", choices=("short", "halving"), default="short",
                        help="with --tuned: the search whose winners are timed (default: short, the settings of the "
                             "committed tuned report)")
    parser.add_argument("--local-iters", type=lambda t: [int(v) for v in t.split(",") if v.strip()], default=[],
                        metavar="T[,T...]", help="with --tuned: also time LocoProp-M at these numbers of local "
                                                  "iterations, its step rescaled to that of its tuned T")
    parser.add_argument("--quiet", action="store_true", help="no line per contender while it is timed")
    parser.add_argument("--precision", nargs="+", default=list(PRECISIONS), choices=list(PRECISIONS),
                        help=f"time each optimizer in these precisions (default: {' '.join(PRECISIONS)})")
    parser.add_argument("--tf32", action="store_true",
                        help="allow TF32 matrix products on CUDA (default: float32); the setting is restored on exit")
    parser.add_argument("--results-dir", default=None, help="where bench/*.json goes (default data/results)")
    parser.add_argument("--no-save", action="store_true", help="print only")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    matmul = torch.backends.cuda.matmul
    tf32_before = matmul.allow_tf32
    matmul.allow_tf32 = args.tf32
    try:
        return _report(args, parser)
    finally:
        matmul.allow_tf32 = tf32_before  # the process's setting, as it was


def _report(args: argparse.Namespace, parser: argparse.ArgumentParser) -> dict:
    """The benchmark of ``main``'s arguments: printed, written, returned."""
    try:
        contenders = (tuned_contenders(args.dataset or "fashion-mnist", results_dir=args.results_dir, search=args.search,
                                       local_iters=args.local_iters) if args.tuned else CONTENDERS)
    except ValueError as err:
        parser.error(f"--tuned: {err}")
    if args.local_iters and not args.tuned:
        parser.error("--local-iters: only with --tuned")
    wanted = None if args.optimizer is None else {n.strip() for group in args.optimizer for n in group.split(",") if n.strip()}
    contenders = [c for c in contenders if wanted is None or c.optimizer in wanted]
    if not contenders:
        parser.error(f"--optimizer: none of {sorted(wanted)} is benchmarked; choose from "
                     f"{sorted({c.optimizer for c in CONTENDERS})}")
    device = torch.device(args.device)
    info = provenance(device)
    data = None
    if args.dataset is not None:
        data = load(args.dataset, "train", device=device)
    rows = benchmark(contenders, device, args.epochs, args.warmup_epochs, args.steps_per_epoch,
                     args.batch_size, data, precisions=args.precision, progress=not args.quiet)
    evaluation = evaluation_time(device, data)
    ceilings = {p: matmul_ceiling(PAPER_SIZES, args.batch_size, device, dtype=PRECISIONS[p]) for p in args.precision}
    print(f"{info['device_name']}, batch {args.batch_size}, {args.warmup_epochs} warm-up + {args.epochs} timed "
          f"epochs of {rows[0]['steps_per_epoch']} steps{', TF32 allowed' if args.tf32 else ''}; epoch s: "
          f"{rows[0]['batches_per_epoch']} steps")
    print(format_table(rows, ceilings))
    print(f"evaluation after an epoch (train and test losses, float32): {evaluation:.2f} s")
    report = {"settings": vars(args), "evaluation_s": evaluation,
              "matmul_ceiling_tflops": ceilings["fp32"] / 1e12 if "fp32" in ceilings else None,
              "matmul_ceilings_tflops": {p: c / 1e12 for p, c in ceilings.items()}, "rows": rows, "provenance": info}
    if not args.no_save:
        root = Path(args.results_dir) if args.results_dir else default_results_dir()
        slug = "".join(ch if ch.isalnum() else "-" for ch in info["device_name"]).strip("-").lower()
        stem = f"{slug}-{time.strftime('%Y%m%dT%H%M%S')}"
        path = root / "bench" / f"{stem}.json"
        for n in itertools.count(2):  # a report of the same second is never overwritten
            if not path.exists():
                break
            path = root / "bench" / f"{stem}-{n}.json"
        atomic_write_text(path, json.dumps(report, indent=1))
        print(f"wrote {path}")
    return report


if __name__ == "__main__":
    main()
