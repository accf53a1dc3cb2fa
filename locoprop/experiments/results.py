"""Result files as tables: one row per run and epoch, and a per-optimizer summary.

The runner writes ``<results_dir>/<profile>/<run_id>.json`` (see :mod:`locoprop.experiments.records`);
:func:`load_results` reads them (the JSON files of the profiles' folders only: ``bench/`` and any
other folder are not run files) into a ``pandas.DataFrame`` with the columns :data:`COLUMNS`,
and :func:`summary` picks, per (profile, dataset, optimizer, precision, horizon), the
hyper-parameters with the best final train loss (averaged over seeds): runs of different precision
or length are never ranked against each other.
"""
from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from .config import PROFILES, default_results_dir
from .records import read_result_file

__all__ = ["COLUMNS", "bench_report", "SETTING_KEY", "ResultsError", "frame", "load_results", "load_runs", "summary", "time_to_target"]

RUN_COLUMNS = ("run_id", "profile", "dataset", "optimizer", "seed", "hparams", "status", "diverged_epoch",
               "device", "git_commit", "precision", "horizon")
RECORD_COLUMNS = ("epoch", "train_loss", "test_loss", "train_squared_error", "test_squared_error",
                  "epoch_time", "train_time", "lr")
COLUMNS = RUN_COLUMNS[:6] + RECORD_COLUMNS + RUN_COLUMNS[6:]
#: What makes runs comparable: :func:`summary` ranks hyper-parameters only within one such group.
SETTING_KEY = ("profile", "dataset", "optimizer", "precision", "horizon")


class ResultsError(ValueError):
    """A result file cannot be read or lacks what a result file holds."""


def frame(payloads: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """Rows (run x epoch) with :data:`COLUMNS` from result documents; ``hparams`` is a sorted-key JSON string."""
    rows = []
    for doc in payloads:
        cfg, prov = doc["config"], doc["provenance"]
        run = {
            "run_id": doc["run_id"], "profile": cfg["profile"], "dataset": cfg["dataset"],
            "optimizer": cfg["optimizer"], "seed": cfg["seed"], "hparams": json.dumps(cfg["hparams"], sort_keys=True),
            "status": doc["status"], "diverged_epoch": doc["diverged_epoch"],
            "device": prov.get("device_name", prov.get("device")), "git_commit": prov.get("git_commit"),
            "precision": cfg.get("precision", "fp32"), "horizon": cfg.get("epochs"),
        }
        rows.extend({**run, **{k: rec.get(k) for k in RECORD_COLUMNS}} for rec in doc["records"])
    df = pd.DataFrame(rows, columns=list(COLUMNS))
    for col in RECORD_COLUMNS[1:]:
        df[col] = df[col].astype(float)  # null (a non-finite value) -> NaN
    df["diverged_epoch"] = df["diverged_epoch"].astype("Int64")
    return df


def _read(path: Path) -> dict[str, Any]:
    return read_result_file(path, ResultsError)


def load_results(results_dir: str | Path | None = None, profile: str | None = None) -> pd.DataFrame:
    """All results under ``results_dir`` (default ``data/results``), of one ``profile`` or all of them.

    Returns an empty frame with :data:`COLUMNS` when there are none (or no ``results_dir``); an
    unknown ``profile`` or a ``results_dir`` that is a file raises :class:`ResultsError`.
    """
    root = Path(results_dir) if results_dir is not None else default_results_dir()
    if profile is not None and profile not in PROFILES:
        raise ResultsError(f"unknown profile {profile!r}: choose one of {', '.join(PROFILES)}")
    if root.exists() and not root.is_dir():
        raise ResultsError(f"the results folder {root} is not a folder: pass the folder holding "
                           f"{'/'.join(PROFILES)}/ (--results-dir)")
    folders = [root / name for name in ([profile] if profile is not None else PROFILES)]
    paths = sorted(p for folder in folders for p in folder.glob("*.json"))
    return frame(_read(p) for p in paths)


def load_runs(configs: Iterable[Any]) -> pd.DataFrame:
    """The records of those run configurations (:class:`locoprop.experiments.config.RunConfig`) that have a result file."""
    paths = [config.paths()["json"] for config in configs]
    return frame(_read(path) for path in paths if path.exists())


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """Per :data:`SETTING_KEY` (profile, dataset, optimizer, precision, horizon = the configured number
    of epochs): the hyper-parameters with the best final train loss.

    A setting's score is its final train loss averaged over seeds; settings with a diverged seed
    are ranked after all others.  Runs ``stopped`` at a budget (the rungs of successive halving)
    are left out.  Columns: the key, ``hparams``, ``seeds``, ``final_train_loss``,
    ``final_test_loss``, ``final_train_squared_error``, ``final_test_squared_error``, ``epochs``,
    ``epoch_time`` (mean seconds per training epoch), ``settings`` (number tried) and
    ``diverged`` (number of diverged runs of that optimizer).  Sorted by final train loss.
    """
    key = list(SETTING_KEY)
    out_cols = key + ["hparams", "seeds", "final_train_loss", "final_test_loss", "final_train_squared_error",
                      "final_test_squared_error", "epochs", "epoch_time", "settings", "diverged"]
    if df.empty:
        return pd.DataFrame(columns=out_cols)
    df = df[df["status"] != "stopped"]  # trained only up to a rung of successive halving: not a final
    last = df.sort_values("epoch").groupby("run_id", sort=False).tail(1)
    timing = df[df["epoch"] > 0].groupby("run_id")["epoch_time"].mean().rename("run_epoch_time")
    last = last.join(timing, on="run_id")
    settings = last.groupby(key + ["hparams"], as_index=False, dropna=False).agg(
        seeds=("seed", "nunique"),
        final_train_loss=("train_loss", "mean"),
        final_test_loss=("test_loss", "mean"),
        final_train_squared_error=("train_squared_error", "mean"),
        final_test_squared_error=("test_squared_error", "mean"),
        epochs=("epoch", "max"),
        epoch_time=("run_epoch_time", "mean"),
        n_diverged=("status", lambda s: int((s == "diverged").sum())),
    )
    settings["rank_key"] = settings["final_train_loss"].where(settings["n_diverged"] == 0, float("inf")).fillna(float("inf"))
    counts = settings.groupby(key, dropna=False).agg(settings=("hparams", "size"), diverged=("n_diverged", "sum"))
    best = settings.sort_values(["rank_key", "final_train_loss"]).groupby(key, as_index=False, dropna=False).head(1)
    best = best.join(counts, on=key)
    return best.sort_values(["profile", "dataset", "rank_key"])[out_cols].reset_index(drop=True)


def time_to_target(df: pd.DataFrame, reference: str = "rmsprop", target: float | None = None,
                   time_column: str = "train_time") -> pd.DataFrame:
    """Per :data:`SETTING_KEY`, the best setting's time to reach a training-loss target.

    The target is ``target`` when given, else the final train loss (mean over seeds) of the best
    setting of ``reference`` (by :func:`summary`) with the same profile, dataset, precision and
    horizon.  For every optimizer's best setting and seed, the first epoch whose train loss is at or
    below the target gives the epoch and the cumulative training time ``time_column`` (evaluation
    excluded); both are averaged over the seeds that reach it.  NaN where no seed reaches it.
    Columns: the key, ``target``, ``epochs_to_target``, ``time_to_target``, ``seeds_reaching``,
    ``seeds``, ``speedup`` (``reference``'s time over this optimizer's; NaN without a reference that
    reaches the target).
    """
    key = list(SETTING_KEY)
    group_key = [k for k in key if k != "optimizer"]
    cols = key + ["target", "epochs_to_target", "time_to_target", "seeds_reaching", "seeds", "speedup"]
    best = summary(df)
    rows = []
    for _, group in best.groupby(group_key, sort=False, dropna=False):
        ref = group[group["optimizer"] == reference]
        if target is None and ref.empty:
            continue
        level = float(ref["final_train_loss"].iloc[0]) if target is None else float(target)
        for _, row in group.iterrows():
            same = (df[key + ["hparams"]] == row[key + ["hparams"]]).all(axis=1)
            runs = df[same & (df["epoch"] > 0)]
            hits = runs[runs["train_loss"] <= level].sort_values("epoch").groupby("run_id").head(1)
            rows.append({**row[key].to_dict(), "target": level,
                         "epochs_to_target": hits["epoch"].mean() if len(hits) else float("nan"),
                         "time_to_target": hits[time_column].mean() if len(hits) else float("nan"),
                         "seeds_reaching": len(hits), "seeds": runs["run_id"].nunique()})
    out = pd.DataFrame(rows, columns=cols[:-1])
    ref_time = out[out["optimizer"] == reference].set_index(group_key)["time_to_target"]
    out["speedup"] = [ref_time.get(tuple(k), float("nan")) / t if t else float("nan")
                      for k, t in zip(out[group_key].itertuples(index=False), out["time_to_target"])]
    return out.sort_values(group_key[:2] + ["time_to_target"]).reset_index(drop=True)


def _read_bench_report(path: Path) -> dict:
    try:
        report = json.loads(path.read_text())
        problem = None if isinstance(report, dict) else f"it holds a {type(report).__name__}, not a report"
    except (OSError, ValueError) as err:
        problem = f"{type(err).__name__}: {err}"
    if problem is not None:
        raise ResultsError(f"cannot read the benchmark report {path} ({problem}): restore it (e.g. from git), "
                           f"or move it away and run `python -m locoprop bench` again")
    return report


def bench_report(folder: Path, *, tuned: bool | None = None, dataset: str | None = None,
                 precisions: Iterable[str] = (), local_iters: bool = False) -> dict | None:
    """The newest benchmark report under ``folder`` (by the start time in its provenance, then by file name:
    names begin with the device, so they sort by time only within one device) of the kind asked for:
    ``tuned`` (the ``--tuned`` report or not), its ``dataset``, rows in every one of ``precisions``, and
    LocoProp-M at other numbers of local iterations (``bench --local-iters``) or not (``local_iters``).
    A report that is not valid JSON raises :class:`ResultsError` naming the file."""
    found = None
    reports = [(_read_bench_report(path), path.name) for path in Path(folder).glob("*.json")]
    for report, _ in sorted(reports, key=lambda pair: (str(pair[0].get("provenance", {}).get("started", "")), pair[1])):
        settings = report.get("settings", {})
        if tuned is not None and bool(settings.get("tuned")) != tuned:
            continue
        if dataset is not None and settings.get("dataset") != dataset:
            continue
        if not set(precisions) <= {row.get("precision", "fp32") for row in report.get("rows", [])}:
            continue
        if bool(settings.get("local_iters")) != local_iters:
            continue
        found = report
    return found
