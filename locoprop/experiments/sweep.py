r"""Many runs: a list of configurations trained one after another or in local worker processes.

Finished runs are loaded, not retrained, so running the same sweep again continues where it
stopped.  ``until`` trains every run only up to that epoch (the rungs of successive halving, see
:mod:`locoprop.experiments.tuning`).
"""
from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed

import torch
from tqdm import tqdm

from .config import RunConfig
from .records import RunResult, find_result
from .train import check, progress_disabled, run, trainable
from .tuning import (SEARCHES, best_setting, edges, extension, finalist_configs, grid_configs, halving,
                     halving_grid, halving_trial, trial_config)

__all__ = ["sweep", "tune"]


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)
    os.environ["TQDM_DISABLE"] = "1"

def _run_quietly(config: RunConfig, until: int | None = None) -> RunResult:
    return run(config, progress=False, until=until)

def _reached(result: RunResult | None, until: int | None) -> bool:
    """Whether ``result`` needs no more training for the budget ``until`` (None: to the end)."""
    return result is not None and (result.finished or (until is not None and result.final["epoch"] >= until))

def sweep(configs: Iterable[RunConfig], processes: int = 1, progress: bool = True,
          until: int | None = None) -> list[RunResult]:
    """Run every configuration (finished ones are loaded, not rerun); results in input order.

    ``until``: train each only up to that epoch (see :func:`run`).  ``processes > 1`` runs them in
    that many spawned local processes, each with ``cpu_count // processes`` torch threads.  Diverged
    runs are results like any other; any other exception stops the sweep (finished runs stay on
    disk, so running it again continues).
    """
    configs = [check(c) for c in configs]  # every config is checked before anything runs
    ids = [c.run_id for c in configs]
    unique = {rid: cfg for rid, cfg in zip(ids, configs)}
    results: dict[str, RunResult] = {}
    for rid, cfg in unique.items():
        found = find_result(cfg, stopped=True)
        if _reached(found, None if until is None else min(until, cfg.epochs)):
            results[rid] = found
    todo = [trainable(cfg) for rid, cfg in unique.items() if rid not in results]
    bar = tqdm(total=len(unique), initial=len(results), desc="sweep", unit="run", disable=progress_disabled(progress))
    if processes <= 1 or len(todo) <= 1:
        for cfg in todo:
            results[cfg.run_id] = run(cfg, progress=progress, until=until)
            bar.update()
    else:
        threads = max(1, (os.cpu_count() or 1) // processes)
        with ProcessPoolExecutor(max_workers=processes, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_init_worker, initargs=(threads,)) as pool:
            futures = {pool.submit(_run_quietly, cfg, until): cfg.run_id for cfg in todo}
            try:
                for future in as_completed(futures):
                    results[futures[future]] = future.result()
                    bar.update()
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise
    bar.close()
    return [results[rid] for rid in ids]


def tune(bases, seeds=(), processes: int = 1, progress: bool = True, report=print, search: str = "halving") -> list:
    """Run the search of every base configuration in turn, then the winners with the full protocol, seed by seed.

    ``search``: ``"halving"`` (successive halving on the protocol's own horizon; its survivor is the
    seed-0 final) or ``"short"`` (the 5-epoch trials, grid then extensions; every finalist seed
    trains).  ``bases``: one float32 :class:`~locoprop.experiments.config.RunConfig` per optimizer (the full
    protocol: profile, dataset, device ...).  Every trial's configuration and every base is checked
    before anything trains (a finalist differs from its base only in tuned hyper-parameters and
    seed); finished runs are loaded, not retrained, so calling this again continues where it
    stopped.  ``report`` gets a line per optimizer naming its winner.  Returns the results of the
    trials (the halving's as they stood at their last rung) and of the finalists.
    """
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
    best, results = {}, []
    for base in bases:  # one optimizer's search to its end before the next one's
        if search == "halving":
            found = halving(base, advance=lambda configs, until: sweep(configs, processes=processes,
                                                                       progress=progress, until=until))
            results += [r for _, trials in found.rungs[-1:] for r in trials]
            best[base.optimizer], edge = found.setting, found.edge
            report(f"{base.optimizer}: survivor {found.setting} after {found.budget} epochs of trials"
                   + (f" (on the edge of its grid in {', '.join(edge)})" if edge else ""))
        else:
            runs = sweep(grid_configs(base), processes=processes, progress=progress)
            while (setting := extension(base.optimizer, runs)) is not None:
                runs.append(run(trial_config(base, setting), progress=progress))
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
        results += sweep(configs, processes=processes, progress=progress)
    return results
