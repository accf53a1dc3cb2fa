"""Command line: ``python -m locoprop {run,sweep,tune,protocol,results,bench,reproduce} ...`` (``--help`` on each).

Expected errors (bad arguments, missing data, invalid hyper-parameters, conflicting result files, a
SLURM job array that cannot be submitted) exit with status 2 and one line ``locoprop: error: <cause>``
on stderr; SLURM tasks that ended without their result exit with status 1 and one such line; an
interrupted run exits with 130 and is resumed by running the same command again.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any
import warnings

import pandas as pd

from ..optim import OPTIMIZERS
from ..precision import PRECISIONS
from . import bench, executors, protocol, reproduce
from .parsing import Parser
from .config import PROFILES, RunConfig, default_results_dir, grid
from .data import DataError
from .results import frame, load_results, summary
from .sweep import sweep, tune, tune_plan
from .train import run
from .tuning import TRIAL_HORIZON, same_total_step, tuned_setting
from .. import __version__

__all__ = ["main", "parse_value"]


def parse_value(text: str) -> Any:
    """A command-line value: JSON (numbers, true/false, null, lists, quoted strings) if it parses, else the
    bare string (``adam``, ``tf-rmsprop``); text that starts like JSON but does not parse is an error."""
    try:
        return json.loads(text)
    except ValueError:
        if text in ("True", "False", "None"):
            return {"True": True, "False": False, "None": None}[text]
        if text[:1] in '{["' or _looks_numeric(text):
            raise ValueError(f"cannot parse the value {text!r}: write a number (1e-3), true/false, null, "
                             f"a JSON list [1, 2] or a bare word") from None
        return text


def _looks_numeric(text: str) -> bool:
    return bool(text) and (text[0].isdigit() or (text[0] in "+-." and text[1:2].isdigit()))


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.strip(), value.strip()


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected comma-separated integers, got nothing")
    return values


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", choices=("digits", "mnist", "fashion-mnist"),
                   help="default: the profile's (digits for smoke, fashion-mnist for paper)")
    p.add_argument("--profile", choices=tuple(PROFILES), default="smoke",
                   help="smoke: CPU, digits, 10 epochs of batch 100; paper: 100 epochs of batch 1000")
    p.add_argument("--lr", type=float, help="learning rate (default: the profile's DEFAULT_HPARAMS)")
    p.add_argument("--hparam", action="append", type=_key_value, default=[], metavar="KEY=VALUE",
                   help="optimizer hyper-parameter (repeatable), e.g. --hparam damping=0.1; values are JSON")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--warmup-epochs", type=int)
    p.add_argument("--subset", type=int, help="train on the first N training images")
    p.add_argument("--sizes", type=_int_list, help="autoencoder widths, e.g. 64,32,8,32,64")
    p.add_argument("--activation", default="tanh", choices=("tanh", "relu", "sigmoid"))
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: the profile's)")
    p.add_argument("--precision", choices=tuple(PRECISIONS), default="fp32",
                   help="the dtype of the training matrix products: fp32 (the reference) or bf16")
    p.add_argument("--results-dir", help="default: data/results of the checkout the command runs in")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_many(p: argparse.ArgumentParser) -> None:
    p.add_argument("--optimizer", required=True, action="append", metavar="NAME[,NAME...]",
                   help=f"optimizer(s), comma-separated or repeated; one of {', '.join(OPTIMIZERS)}")
    executors.add_arguments(p)


def _add_search(p: argparse.ArgumentParser) -> None:
    p.add_argument("--search", choices=("halving", "short"), default="halving",
                   help="halving: successive halving on the protocol's own 100-epoch schedule (rungs 10, 25, 50, "
                        "100; its survivor is the seed-0 final); short: the 5-epoch trials")


def _build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="python -m locoprop", description="LocoProp deep-autoencoder benchmark.",
                     epilog="example: python -m locoprop run --optimizer locoprop-m --profile smoke")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    p = sub.add_parser("run", help="train one configuration (resumes / skips a finished run)",
                       description="Train one configuration and write its result files.",
                       epilog="example: python -m locoprop run --optimizer adam --lr 0.01 --profile smoke")
    p.add_argument("--optimizer", required=True, choices=OPTIMIZERS)
    p.add_argument("--seed", type=int, default=0)
    _add_common(p)

    p = sub.add_parser("sweep", help="train a grid of configurations",
                       description="Train the Cartesian product of optimizers, --grid values and seeds; "
                                   "finished runs are skipped, diverged runs do not stop the sweep.",
                       epilog="example: python -m locoprop sweep --optimizer adam,sgd --grid lr=0.01,0.1 --seeds 0,1")
    _add_many(p)
    p.add_argument("--grid", action="append", type=_key_value, default=[], metavar="KEY=V1,V2,...",
                   help="an axis of the grid (repeatable): a hyper-parameter (lr, damping ...) or a run field (epochs ...)")
    p.add_argument("--seeds", type=_int_list, default=[0], help="comma-separated seeds")
    p.add_argument("--tuned", action="store_true",
                   help="start from each optimizer's tuned setting (the winner of its finished search, "
                        "see `tune`); --hparam and --grid values override it")
    p.add_argument("--same-total-step", action="store_true",
                   help="with --grid local_iters=...: rescale each LocoProp run's inner lr so that its step sum "
                        "equals that of 10 local iterations (the official notebook's rule for comparing T)")
    _add_search(p)
    _add_common(p)

    p = sub.add_parser("tune", help="run the documented tuning grid of each optimizer, or its finalists",
                       description="Run each optimizer's equal-budget search (locoprop.experiments.tuning: grid, rungs or trial "
                                   "horizon, early exits); with --finalists, then train each best setting (lowest "
                                   "train loss) with the full protocol, seed by seed (--seeds).",
                       epilog="example: python -m locoprop tune --profile paper --dataset fashion-mnist "
                              "--optimizer adam --finalists --dry-run")
    _add_many(p)
    _add_search(p)
    p.add_argument("--finalists", action="store_true",
                   help="after all trials, train each optimizer's best setting with the full protocol and --seeds")
    p.add_argument("--seeds", type=_int_list, default=[0, 1, 2], help="seeds of the finalists")
    p.add_argument("--dry-run", action="store_true", help="print the plan and its estimated time, train nothing")
    _add_common(p)

    p = sub.add_parser("protocol", help="the paper's whole protocol, resumable: tuning, seeds, T ablation, official setting",
                       description="Train what the paper's protocol still lacks (locoprop.experiments.protocol): every "
                                   "optimizer's successive halving and seeds 1 and 2 of its survivor, LocoProp-M first; "
                                   "right after LocoProp-M's, its T ablation and LocoProp at the official notebook's "
                                   "setting.  Finished runs are loaded; the same command continues where it stopped.",
                       epilog="example: python -m locoprop protocol --profile paper --dataset fashion-mnist --dry-run")
    p.add_argument("--optimizer", action="append", metavar="NAME[,NAME...]",
                   help="only these optimizers, in this order (default: all ten, LocoProp-M first)")
    p.add_argument("--profile", choices=tuple(PROFILES), default="paper", help="default: paper")
    p.add_argument("--dataset", choices=("digits", "mnist", "fashion-mnist"),
                   help="default: the profile's (fashion-mnist for paper)")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: the profile's)")
    p.add_argument("--results-dir", help="default: data/results of the checkout the command runs in")
    p.add_argument("--dry-run", action="store_true",
                   help="print every part, what the result files already hold of it and the time the rest takes")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    executors.add_arguments(p, processes=False)

    p = sub.add_parser("results", help="list or summarise result files",
                       description="List the runs found under the results folder, or summarise them.",
                       epilog="example: python -m locoprop results --profile smoke --summary")
    p.add_argument("--profile", help="only this profile")
    p.add_argument("--results-dir", help="default: data/results of the checkout the command runs in")
    p.add_argument("--summary", action="store_true",
                   help="best final train loss per optimizer with its hyper-parameters")

    sub.add_parser("bench", help="micro-benchmarks (arguments go to locoprop.experiments.bench)", add_help=False)
    sub.add_parser("reproduce", help="re-execute the notebooks (arguments go to locoprop.experiments.reproduce)",
                   add_help=False)
    return parser


def _base_config(args: argparse.Namespace, optimizer: str, seed: int):
    hparams = {k: parse_value(v) for k, v in args.hparam}
    if args.lr is not None:
        hparams["lr"] = args.lr
    return RunConfig(
        optimizer=optimizer, dataset=args.dataset, profile=args.profile, hparams=hparams, sizes=args.sizes,
        activation=args.activation, epochs=args.epochs, batch_size=args.batch_size,
        warmup_epochs=args.warmup_epochs, seed=seed, device=args.device, subset=args.subset,
        results_dir=args.results_dir, precision=args.precision,
    )


def _print_records(result) -> None:

    table = pd.DataFrame(result.records).set_index("epoch")
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.float_format", "{:.5g}".format):
        print(table.to_string())
    state = "found finished" if result.skipped else result.status
    extra = f" at epoch {result.diverged_epoch}" if result.diverged_epoch is not None else ""
    print(f"{result.run_id}: {state}{extra}; results in {result.path}")


def _print_frame(df) -> None:

    with pd.option_context("display.width", 250, "display.max_columns", 30, "display.max_colwidth", 80,
                           "display.float_format", "{:.5g}".format):
        print(df.to_string(index=False) if not df.empty else "(no results)")


def _cmd_run(args) -> int:
    result = run(_base_config(args, args.optimizer, args.seed), progress=not args.quiet)
    _print_records(result)
    return 0


def _optimizer_names(args) -> list[str]:
    names = [n.strip() for group in args.optimizer for n in group.split(",") if n.strip()]
    unknown = [n for n in names if n not in OPTIMIZERS]
    if unknown:
        raise ValueError(f"unknown optimizer(s) {', '.join(unknown)}: choose from {', '.join(OPTIMIZERS)}")
    if args.processes < 1:
        raise ValueError(f"--processes must be >= 1, got {args.processes}")
    return names


def _nats(value) -> str:
    """A loss as the book writes it: nats per image to two decimals ("diverged" for a non-finite one)."""
    return "not finite" if value is None else f"{value:.2f}"


def _report(results) -> None:
    for r in results:
        final = r.final
        print(f"{r.run_id} {r.status:9s} {json.dumps(r.config.hparams, sort_keys=True)} "
              f"final train loss {_nats(final['train_loss'])} test loss {_nats(final['test_loss'])}"
              + (" (found finished)" if r.skipped else ""))
    _print_frame(summary(frame(r.payload for r in results)))


def _cmd_sweep(args) -> int:
    names = _optimizer_names(args)
    axes = {key: [parse_value(v) for v in values.split(",")] for key, values in args.grid}
    bad = [k for k in axes if k in {"optimizer", "seed", "profile", "results_dir"}]
    if bad:
        raise ValueError(f"use --optimizer/--seeds/--profile/--results-dir instead of --grid {bad[0]}=...")
    configs = []
    for name in names:
        for seed in args.seeds:
            base = _base_config(args, name, seed)
            if args.tuned:
                base = dataclasses.replace(base, hparams={**tuned_setting(base, args.search), **base.hparams})
            configs += grid(base, **axes)
    if args.same_total_step:
        configs = [same_total_step(c, c.hparams.get("local_iters", 10)) for c in configs]
    _report(sweep(configs, progress=not args.quiet, executor=executors.from_arguments(args)))
    return 0


def _cmd_tune(args) -> int:
    """Every optimizer's trials first; then, with --finalists, the winners with the full protocol, seed by seed."""
    if args.search == "short" and args.profile in TRIAL_HORIZON and (args.epochs or args.warmup_epochs) is not None:
        epochs, warmup = TRIAL_HORIZON[args.profile]
        raise ValueError(f"--epochs/--warmup-epochs do not apply to the short search's trials on the {args.profile} "
                         f"profile ({epochs} epochs, {warmup} warm-up, locoprop.experiments.tuning.TRIAL_HORIZON): "
                         f"leave them out")
    bases = [_base_config(args, name, 0) for name in _optimizer_names(args)]
    print(tune_plan(bases, args.search, args.seeds if args.finalists else ()))
    if args.dry_run:
        return 0
    _report(tune(bases, args.seeds if args.finalists else (), progress=not args.quiet, search=args.search,
                 executor=executors.from_arguments(args)))
    return 0


def _cmd_protocol(args) -> int:
    names = ([n.strip() for group in args.optimizer for n in group.split(",") if n.strip()]
             if args.optimizer else list(protocol.ORDER))
    unknown = [n for n in names if n not in OPTIMIZERS]
    if unknown:
        raise ValueError(f"unknown optimizer(s) {', '.join(unknown)}: choose from {', '.join(OPTIMIZERS)}")
    runs = protocol.bases(list(dict.fromkeys(names)), profile=args.profile, dataset=args.dataset, device=args.device,
                          results_dir=args.results_dir)
    print(protocol.plan(runs))
    if args.dry_run:
        return 0
    _report(protocol.run(runs, executor=executors.from_arguments(args), progress=not args.quiet))
    return 0


def _cmd_results(args) -> int:
    root = Path(args.results_dir) if args.results_dir is not None else default_results_dir()
    if not root.is_dir():
        raise ValueError(f"the results folder {root} " + ("is not a folder" if root.exists() else "does not exist")
                         + ": pass the folder that holds the profiles' folders (smoke/, paper/) with --results-dir")
    df = load_results(root, args.profile)
    if args.summary:
        _print_frame(summary(df))
    else:
        cols = ["profile", "run_id", "status", "diverged_epoch", "hparams", "epoch", "train_loss", "test_loss",
                "train_time", "device"]
        _print_frame(df.sort_values("epoch").groupby("run_id").tail(1)[cols].sort_values(["profile", "run_id"]))
    return 0


def _cmd_bench(argv: list[str]) -> int:
    bench.main(argv)
    return 0


def _plain_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning as one plain line on stderr (no category, no source line)."""
    print(f"locoprop: warning: {message}", file=sys.stderr if file is None else file)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m locoprop``; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    warnings.showwarning = _plain_warning
    try:
        if argv[:1] == ["bench"]:
            return _cmd_bench(argv[1:])
        if argv[:1] == ["reproduce"]:
            return reproduce.main(argv[1:])
        args = _build_parser().parse_args(argv)
        return {"run": _cmd_run, "sweep": _cmd_sweep, "tune": _cmd_tune, "protocol": _cmd_protocol,
                "results": _cmd_results}[args.command](args)
    except (ValueError, DataError) as err:
        print(f"locoprop: error: {err}", file=sys.stderr)
        return 2
    except executors.ClusterError as err:  # tasks of a SLURM job array that ended without their result
        print(f"locoprop: error: {err}", file=sys.stderr)
        return 1
    except OSError as err:  # e.g. a results folder that cannot be written
        where = f": {err.filename}" if err.filename else ""
        print(f"locoprop: error: {err.strerror or err}{where} (check the path, its permissions and the free space "
              f"on its disk)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("locoprop: interrupted" + ("" if argv[:1] == ["bench"] else
                                         "; run the same command again to resume from the last checkpoint"),
              file=sys.stderr)
        return 130
