r"""Many runs: a list of configurations trained one after another, in local worker processes, or as
the tasks of a SLURM job array (:mod:`locoprop.experiments.executors`).

Finished runs are loaded, not retrained, so running the same sweep again continues where it
stopped.  ``until`` trains every run only up to that epoch (the rungs of successive halving, see
:mod:`locoprop.experiments.tuning`); with a SLURM executor every rung is one job array, and the
search waits for all its tasks before it ranks them.
"""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tqdm import tqdm

from .config import RunConfig
from .executors import Local, Slurm, from_parameter, reached
from .records import RunResult, find_result
from .results import bench_report
from .train import check, progress_disabled, trainable
from .tuning import (BUDGET, SEARCHES, TRIAL_HORIZON, best_setting, edges, extension, finalist_configs, grid_configs,
                     halving, halving_grid, halving_trial, rungs_of, trial_config, tuned)

__all__ = ["check_tuning", "epoch_cost", "plan_text", "sweep", "tune", "tune_lines", "tune_plan"]


def sweep(configs: Iterable[RunConfig], processes: int = 1, progress: bool = True,
          until: int | None = None, executor: Local | Slurm | dict | None = None) -> list[RunResult]:
    """Run every configuration (finished ones are loaded, not rerun); results in input order.

    ``until``: train each only up to that epoch (see :func:`run`).  ``processes > 1`` runs them in
    that many spawned local processes, each with ``cpu_count // processes`` torch threads.
    ``executor``: where the runs without a result train (an executor of
    :mod:`~locoprop.experiments.executors`, or the notebooks' ``executor`` parameter: None, the
    default, is local with ``processes``).  Diverged runs are results like any other; any other
    exception stops the sweep (finished runs stay on disk, so running it again continues).
    """
    executor = from_parameter(executor, processes)
    configs = [check(c) for c in configs]  # every config is checked before anything runs
    ids = [c.run_id for c in configs]
    unique = {rid: cfg for rid, cfg in zip(ids, configs)}
    results: dict[str, RunResult] = {}
    for rid, cfg in unique.items():
        found = find_result(cfg, stopped=True)
        if reached(found, None if until is None else min(until, cfg.epochs)):
            results[rid] = found
    todo = [trainable(cfg) for rid, cfg in unique.items() if rid not in results]
    bar = tqdm(total=len(unique), initial=len(results), desc="sweep", unit="run", disable=progress_disabled(progress))
    for cfg, result in executor.train(todo, until=until, progress=progress):
        results[cfg.run_id] = result
        bar.update()
    bar.close()
    return [results[rid] for rid in ids]


def check_tuning(bases, search: str = "halving") -> list[RunConfig]:
    """Check every trial's configuration and every base of a ``search`` (a finalist differs from its base only in
    tuned hyper-parameters and seed) before anything trains; returns the bases as a list."""
    if search not in SEARCHES:
        raise ValueError(f"unknown search {search!r}: choose one of {', '.join(SEARCHES)}")
    bases = list(bases)
    for base in bases:
        if base.precision != "fp32":
            raise ValueError(f"the tuning and its finalists run in float32, the reference (got precision "
                             f"{base.precision!r}): drop --precision, or compare precisions with "
                             f"`python -m locoprop sweep --tuned --grid precision=fp32,bf16`")
        for config in (grid_configs(base) if search == "short" else [halving_trial(base, c.hparams) for c in halving_grid(base)]):
            check(config)
        check(base)
    return bases


def tune(bases, seeds=(), processes: int = 1, progress: bool = True, report=print, search: str = "halving",
         executor: Local | Slurm | dict | None = None) -> list:
    """Run the search of every base configuration in turn, then the winners with the full protocol, seed by seed.

    ``search``: ``"halving"`` (successive halving on the protocol's own horizon; its survivor is the
    seed-0 final) or ``"short"`` (the 5-epoch trials, grid then extensions; every finalist seed
    trains).  ``bases``: one float32 :class:`~locoprop.experiments.config.RunConfig` per optimizer (the full
    protocol: profile, dataset, device ...).  Every trial's configuration and every base is checked
    before anything trains (:func:`check_tuning`); finished runs are loaded, not retrained, so calling
    this again continues where it stopped.  ``report`` gets a line per optimizer naming its winner.
    Returns the results of the trials (the halving's as they stood at their last rung) and of the
    finalists.  ``executor``: where the runs train (see :func:`sweep`); with SLURM, every rung of a
    halving, the grid and every extension of the short search, and the finalists of each seed are one
    job array each.
    """
    bases = check_tuning(bases, search)
    best, results = {}, []
    for base in bases:  # one optimizer's search to its end before the next one's
        if search == "halving":
            found = halving(base, advance=lambda configs, until: sweep(configs, processes=processes,
                                                                       progress=progress, until=until,
                                                                       executor=executor))
            results += [r for _, trials in found.rungs[-1:] for r in trials]
            best[base.optimizer], edge = found.setting, found.edge
            report(f"{base.optimizer}: survivor {found.setting} after {found.budget} epochs of trials"
                   + (f" (on the edge of its grid in {', '.join(edge)})" if edge else ""))
        else:
            runs = sweep(grid_configs(base), processes=processes, progress=progress, executor=executor)
            while (setting := extension(base.optimizer, runs)) is not None:
                runs += sweep([trial_config(base, setting)], processes=processes, progress=progress, executor=executor)
            results += runs
            best[base.optimizer], edge = best_setting(runs), edges(base.optimizer, best_setting(runs), runs)
            if seeds:
                report(f"{base.optimizer}: best trial {best[base.optimizer]}"
                       + (f" (still on the edge of its grid in {', '.join(edge)})" if edge else ""))
    if not seeds:
        return results
    for seed in seeds:
        if search == "halving" and seed == 0:
            continue  # the survivor of the halving is the seed-0 final
        configs = [c for base in bases for c in finalist_configs(base, best[base.optimizer], [seed])]
        results += sweep(configs, processes=processes, progress=progress, executor=executor)
    return results


def _recorded(base: RunConfig, search: str, seeds) -> tuple[int, bool, int]:
    """What the files on disk hold of :func:`tune`'s work for ``base``: epochs of trials recorded (for a halving,
    the rung in progress included), whether the search is complete, and epochs of its finalists' seeds."""
    if search == "halving":
        found = halving(base)
        trained, complete = found.recorded, found.complete
        seed_runs = [] if not complete else [c for c in finalist_configs(base, found.setting, seeds) if c.seed != 0]
    else:
        found = tuned(base)
        trained, complete = sum(r.final["epoch"] for r in found.trials), found.complete and found.setting is not None
        seed_runs = finalist_configs(base, found.setting, seeds) if complete else []
    return trained, complete, sum(c.resolve().epochs for c in seed_runs if find_result(c) is not None)


def epoch_cost(config: RunConfig) -> float | None:
    """Seconds per epoch (training and evaluation) of ``config.optimizer`` in the newest float32 ``bench --tuned``
    report of its dataset under its results folder; None without one."""
    cfg = config.resolve()
    report = bench_report(Path(cfg.results_dir) / "bench", tuned=True, dataset=cfg.dataset)
    rows = {} if report is None else {r["optimizer"]: r["epoch_s"] for r in report["rows"]
                                      if r.get("precision", "fp32") == "fp32"}
    return rows[cfg.optimizer] + report.get("evaluation_s", 0.0) if cfg.optimizer in rows else None


def plan_text(lines: list[str], hours: float | None) -> str:
    """A plan's lines and its estimated time (None: some part has no measured cost)."""
    estimate = (f"at most {hours:.1f} h for the epochs to go, at the cost per epoch measured by "
                f"`python -m locoprop bench --tuned` (evaluation included)" if hours is not None else
                "no estimate: no `python -m locoprop bench --tuned` report prices every optimizer on this dataset")
    return "plan:\n" + "\n".join(lines) + f"\nestimated time: {estimate}"


def tune_lines(bases, search: str = "halving", seeds=()) -> tuple[list[str], float | None]:
    """:func:`tune_plan`'s lines, two per optimizer, and the hours of the epochs to go (None if not all priced)."""
    lines, hours = [], 0.0
    for base in bases:
        cfg = base.resolve()
        if search == "halving":
            rungs = (0, *rungs_of(cfg))
            kept = [max(1, BUDGET // 2 ** i) for i in range(len(rungs) - 1)]
            trials = sum(k * (b - a) for k, a, b in zip(kept, rungs, rungs[1:]))
            what = (f"successive halving ({', '.join(f'{k} to epoch {b}' for k, b in zip(kept, rungs[1:]))}: "
                    f"{trials} epochs, +{rungs[1]} per trial beyond the grid)")
            extra = [s for s in seeds if s != 0]
        else:
            epochs, _ = TRIAL_HORIZON.get(cfg.profile, (cfg.epochs, cfg.warmup_epochs))
            trials = BUDGET * epochs
            what = f"short search ({BUDGET} trials of {epochs} epochs: {trials} epochs, +{epochs} per extension)"
            extra = list(seeds)
        finals = len(extra) * cfg.epochs
        trained, complete, seeds_done = _recorded(base, search, extra)
        left = (0 if complete else max(trials - trained, 0)) + finals - seeds_done
        lines.append(f"  {cfg.optimizer}: {what}" + (f", then seeds {', '.join(map(str, extra))} "
                                                      f"({finals} epochs)" if extra else "") + f": {trials + finals} epochs"
                     + f"\n    recorded: {trained} epochs of trials" + (" (search complete)" if complete else "")
                     + (f", {seeds_done} of the seeds' {finals}" if extra else "") + f"; to go: {left} epochs")
        cost = epoch_cost(cfg)
        hours = None if hours is None or cost is None else hours + left * cost / 3600
    return lines, hours


def tune_plan(bases, search: str = "halving", seeds=()) -> str:
    """What :func:`tune` will train, in epochs per optimizer, what of it the result files already hold, and how long
    the rest takes at the cost per epoch (training and evaluation) of the newest ``bench --tuned`` report of the
    dataset under the results folder, when there is one.  The search's trials are counted as planned until it
    is complete (a trial beyond the grid's edge adds epochs), so the time is an upper bound."""
    return plan_text(*tune_lines(bases, search, seeds))
