r"""The paper's protocol as one resumable command: ``python -m locoprop protocol`` (the benchmark notebook
runs the same at the paper profile).

Its parts, in the order they train, each optimizer's before the next one's so that what has finished
is useful on its own:

1. for every optimizer (:data:`ORDER`: LocoProp-M first, then its second-order rivals, LocoProp-S and
   the first-order methods): successive halving on the protocol's own horizon, whose survivor is the
   seed-0 final, then seeds 1 and 2 of the survivor (:func:`~locoprop.experiments.sweep.tune`);
2. right after LocoProp-M's: its **T ablation**, :math:`T \in` :data:`T_VALUES` local iterations at its
   tuned setting with the inner learning rate rescaled by the same-total-step rule
   (:func:`~locoprop.experiments.tuning.same_total_step`), seed 0;
3. and LocoProp-M and LocoProp-S at the **official notebook's setting**
   (:data:`~locoprop.experiments.config.OFFICIAL_HPARAMS`), seed 0.

:func:`cluster_plan` maps the protocol onto SLURM job arrays and prices it in CPU-hours from a
benchmark report (``python -m locoprop bench --tuned``).

Finished runs are loaded, not retrained, and an interrupted run resumes from its checkpoint, so the
same command continues where it stopped (on a cluster with ``--executor slurm``).  The benchmark of
the cost per epoch and the bfloat16 check are tied to a machine and stay commands of their own.
"""
from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pandas as pd

from ..optim.locoprop import LocoProp
from .config import OFFICIAL_HPARAMS, PROFILES, RunConfig
from .executors import Local, Slurm
from .records import RunResult, find_result
from .sweep import check_tuning, epoch_cost, plan_text, sweep, tune, tune_lines
from .tuning import BUDGET, RUNGS, halving, same_total_step

__all__ = ["ORDER", "SEEDS", "T_VALUES", "bases", "cluster_plan", "official", "plan", "run", "t_ablation"]

#: The optimizers in the order they train: the subject, its second-order rivals, LocoProp-S, the first-order methods.
ORDER = ("locoprop-m", "kfac", "shampoo", "locoprop-s", "adam", "rmsprop", "momentum", "nesterov", "adagrad", "sgd")
#: The seeds of every optimizer's final (seed 0 is its halving's survivor).
SEEDS = (0, 1, 2)
#: LocoProp-M's numbers of local iterations beside the default T = 10.
T_VALUES = (1, 2, 5)


def bases(optimizers: Iterable[str] = ORDER, **fields) -> dict[str, RunConfig]:
    """One float32 :class:`RunConfig` of the full protocol per optimizer (``fields``: profile, dataset, device,
    results_dir ...; the profile defaults to ``paper``)."""
    fields = {"profile": "paper", **fields}
    return {name: RunConfig(optimizer=name, **fields) for name in optimizers}


def t_ablation(base: RunConfig) -> list[RunConfig]:
    """LocoProp-M (``base``: its protocol run) at every T of :data:`T_VALUES`, at its halving's survivor with the
    same-total-step rule, seed 0; empty while its halving is not complete."""
    survivor = halving(dataclasses.replace(base, hparams={}, seed=0)).setting
    if survivor is None:
        return []
    tuned = dataclasses.replace(base, hparams=dict(survivor), seed=0)
    return [same_total_step(tuned, T) for T in T_VALUES]


def official(runs: Mapping[str, RunConfig]) -> dict[str, RunConfig]:
    """The runs at the official notebook's setting, seed 0, of the LocoProp variants among ``runs``' bases."""
    return {name: dataclasses.replace(runs[name], hparams=dict(hp), seed=0)
            for name, hp in OFFICIAL_HPARAMS.items() if name in runs}


def _after(name: str, runs: Mapping[str, RunConfig]) -> list[tuple[str, list[RunConfig]]]:
    """The parts that follow ``name``'s tuning: after LocoProp-M's, its T ablation and the official setting."""
    if name != "locoprop-m":
        return []
    return [("LocoProp-M's T ablation", t_ablation(runs[name])),
            ("LocoProp at the official setting", list(official(runs).values()))]


def run(runs: Mapping[str, RunConfig], executor: Local | Slurm | dict | None = None, progress: bool = True,
        report=print) -> list[RunResult]:
    """Train what the protocol of ``runs`` (optimizer -> base, see :func:`bases`) still lacks, part by part (see
    the module docstring); every configuration the tuning will train is checked first.  Returns the results of
    every part; ``report`` gets a line per finished part."""
    check_tuning(runs.values())
    results = []
    for name, base in runs.items():
        results += tune([base], SEEDS, progress=progress, report=report, executor=executor)
        for part, configs in _after(name, runs):
            if configs:
                results += sweep(configs, progress=progress, executor=executor)
                report(f"{part}: {len(configs)} run(s) finished")
    return results


def plan(runs: Mapping[str, RunConfig]) -> str:
    """What :func:`run` will train and what the result files already hold of it: the tuning's lines
    (:func:`~locoprop.experiments.sweep.tune_lines`), then the T ablation and the official setting, and the
    time the rest takes at the cost per epoch of the newest ``bench --tuned`` report (a run of the T ablation
    at the cost of T = 10: an upper bound)."""
    lines, hours = tune_lines(runs.values(), "halving", SEEDS)
    if "locoprop-m" in runs:
        base = runs["locoprop-m"].resolve()
        for part, configs in _after("locoprop-m", runs):
            waiting = not configs
            if waiting:  # the T ablation before LocoProp-M's halving has a survivor: priced at T = 10
                configs = [dataclasses.replace(base, hparams={"local_iters": T}, seed=0) for T in T_VALUES]
            left = configs if waiting else [c for c in configs if find_result(c) is None]
            epochs = sum(c.resolve().epochs for c in left)
            lines.append(f"  {part}: {len(configs)} run{'s' if len(configs) > 1 else ''} of {base.epochs} epochs" +
                         (" (waits for LocoProp-M's successive halving)" if waiting else
                          f"; recorded: {len(configs) - len(left)}") + f"; to go: {epochs} epochs")
            costs = [epoch_cost(c) for c in left]
            hours = None if hours is None or None in costs else hours + sum(
                c.resolve().epochs * cost for c, cost in zip(left, costs)) / 3600
    return plan_text(lines, hours)


def _local_iters_default() -> int:
    return int(inspect.signature(LocoProp).parameters["local_iters"].default)


def cluster_plan(report: dict[str, Any], finalists: Iterable[str] | None = None,
                 ablations: Iterable[RunConfig] | None = None, seeds: Sequence[int] = (1, 2),
                 profile: str = "paper") -> pd.DataFrame:
    """The paper's protocol as SLURM jobs, priced from a benchmark report.

    ``report``: a ``python -m locoprop bench --tuned`` report (its float32 ``rows`` give each
    optimizer's ``epoch_s``, its ``evaluation_s`` the evaluation after every epoch and its
    ``provenance.threads`` the CPUs they ran on).  Rows, one per part: each rung of the successive
    halving (one array per optimizer of the report: :data:`~locoprop.experiments.tuning.BUDGET`
    trials, halved at every rung, each training from the previous rung to this one; extensions beyond
    a grid's edge, 10 epochs each, are not counted), the extra ``seeds`` of the ``finalists`` (default:
    every optimizer of the report; one array of full runs), the ``ablations`` (one array; default: the
    protocol's T ablation and official setting for the LocoProp variants in the report, the part "T
    ablation and official setting"; LocoProp's cost per epoch scaled by its matrix products per step,
    3 + 2T for T local iterations), and the total.  Columns: ``part``, ``arrays``, ``jobs``, ``epochs`` (all jobs together) and
    ``CPU-hours`` (epochs x (epoch_s + evaluation_s) x threads, to a tenth of an hour).
    """
    rows = {r["optimizer"]: r for r in report["rows"] if r.get("precision", "fp32") == "fp32"}
    if not rows:
        raise ValueError("the benchmark report has no float32 rows: run `python -m locoprop bench --tuned` first")
    evaluation = float(report.get("evaluation_s", 0.0))
    threads = int(report.get("provenance", {}).get("threads") or report.get("settings", {}).get("threads") or 1)
    epochs_full = PROFILES[profile].epochs
    rungs = (0,) + tuple(r for r in RUNGS[profile] if r < epochs_full) + (epochs_full,)
    rungs = tuple(dict.fromkeys(rungs))

    def cpu_hours(pairs: Iterable[tuple[str, float, float]]) -> float:
        """(optimizer, epochs, training-cost factor) -> CPU-hours."""
        return sum(e * (rows[o]["epoch_s"] * f + evaluation) for o, e, f in pairs) * threads / 3600

    def unknown(names):
        missing = sorted(set(names) - set(rows))
        if missing:
            raise ValueError(f"the benchmark report has no float32 row of {', '.join(missing)}")

    plan = []
    for i, (start, end) in enumerate(zip(rungs, rungs[1:])):
        trials = max(1, BUDGET // 2 ** i)
        plan.append({"part": f"halving, rung {i + 1} (epochs {start + 1}-{end})", "arrays": len(rows),
                     "jobs": trials * len(rows), "epochs": trials * (end - start) * len(rows),
                     "CPU-hours": cpu_hours((o, trials * (end - start), 1.0) for o in rows)})
    finalists = list(rows) if finalists is None else list(dict.fromkeys(finalists))
    unknown(finalists)
    if seeds and finalists:
        jobs = len(finalists) * len(seeds)
        plan.append({"part": f"seeds {' and '.join(map(str, seeds))} of {len(finalists)} finalists", "arrays": 1,
                     "jobs": jobs, "epochs": jobs * epochs_full,
                     "CPU-hours": cpu_hours((o, epochs_full * len(seeds), 1.0) for o in finalists)})
    label = "ablations"
    if ablations is None:
        label = "T ablation and official setting"
        variants = bases((n for n in ("locoprop-m", "locoprop-s") if n in rows), profile=profile)
        ablations = [dataclasses.replace(variants["locoprop-m"], hparams={"local_iters": T})
                     for T in T_VALUES if "locoprop-m" in variants] + list(official(variants).values())
    distinct = {c.run_id: c.resolve() for c in ablations}
    if distinct:
        unknown(c.optimizer for c in distinct.values())
        default_t = _local_iters_default()

        def factor(c):
            return (3 + 2 * c.hparams.get("local_iters", default_t)) / (3 + 2 * default_t)

        plan.append({"part": label, "arrays": 1, "jobs": len(distinct),
                     "epochs": sum(c.epochs for c in distinct.values()),
                     "CPU-hours": cpu_hours((c.optimizer, c.epochs, factor(c)) for c in distinct.values())})
    plan.append({"part": "total", **{k: sum(p[k] for p in plan) for k in ("arrays", "jobs", "epochs", "CPU-hours")}})
    table = pd.DataFrame(plan, columns=["part", "arrays", "jobs", "epochs", "CPU-hours"])
    table["CPU-hours"] = table["CPU-hours"].round(1)
    return table
