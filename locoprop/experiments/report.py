"""The tables of the benchmark and ablation notebooks, shaped from result files: tested here, drawn there.

Every function takes data (result frames from :mod:`~locoprop.experiments.results`, searches from
:mod:`~locoprop.experiments.tuning`, benchmark reports from :mod:`~locoprop.experiments.bench`) and
returns a ``pandas.DataFrame`` ready to display, or the numbers a sentence of the book quotes.
Optimizers appear under their display names (:data:`~locoprop.experiments.plotting.LABELS`) in the
book's order; losses are in nats per image.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from ..optim import LABELS, OPTIMIZERS
from .results import time_to_target

__all__ = ["NOT_REACHED", "ORDER", "ablation_runs", "best_trial_loss", "biggest_rise", "collapsed", "corner",
           "cost_table", "cut_text", "device_text", "epoch_costs", "final_by", "finals_table", "fmt",
           "halving_table", "hardware_text", "labelled", "lowest_losses", "official_table", "other_runs",
           "precision_check", "precision_speed", "provenance_table", "reach_table", "result_sets", "rose_text",
           "rung_points", "search_table", "searches_side_by_side", "setting_text", "shown", "spikes",
           "status_table", "t_frontier", "t_summary", "trial_points", "what_it_shows"]

#: The book's order of the optimizers (display names).
ORDER = [LABELS[name] for name in OPTIMIZERS]

#: What :func:`t_frontier` writes for a target that a run does not reach in its epochs.
NOT_REACHED = "not reached"


def fmt(value, digits: int = 4) -> str:
    """``value`` to ``digits`` significant digits; empty for NaN."""
    return "" if pd.isna(value) else f"{value:.{digits}g}"


def setting_text(hparams: Mapping[str, Any]) -> str:
    """``lr=0.0001, gamma=10``: hyper-parameters as the tables of this book write them."""
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in hparams.items())


def labelled(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with the optimizers' display names as an ordered categorical (only those present, so that a
    legend lists no optimizer without a curve)."""
    df = df.copy()
    df["optimizer"] = pd.Categorical(df["optimizer"].map(LABELS), ORDER, ordered=True).remove_unused_categories()
    return df


def cut_text(top: float, cut: Mapping[str, float]) -> str:
    """The caption's line for a loss axis cut at ``top`` (``cut``: the curves cut, with their highest value)."""
    return (f"Cut off above {top:.0f} (1.05 × the untrained loss): "
            + "; ".join(f"{name} (up to {peak:.1f})" for name, peak in cut.items()) + "."
            if cut else "No curve is cut off.")


def best_trial_loss(tuned) -> str:
    """The lowest final train loss of a short search's finished trials ("so far" while trials are missing)."""
    done = [r.final["train_loss"] for r in tuned.trials if r.status == "completed"]
    return "" if not done else f"{min(done):.1f}" + ("" if tuned.complete else " (so far)")


def search_table(grids: Mapping[str, Mapping[str, list]], tuning: Mapping[str, Any], budget: int,
                 horizon: tuple[int, int]) -> pd.DataFrame:
    """One row per optimizer of the short search: its grid, winner, best trial loss, extensions, edges."""
    epochs, warmup = horizon
    return pd.DataFrame([{
        "optimizer": LABELS[name], "trials": budget,
        "epochs per trial": f"{epochs} ({warmup} warm-up)",
        "grid": "; ".join(f"{knob} ∈ {{{', '.join(f'{v:g}' if isinstance(v, float) else str(v) for v in values)}}}"
                          for knob, values in grid.items()),
        "winner": "" if tuning[name].setting is None else setting_text(tuning[name].setting),
        f"best train loss after {epochs} epochs": best_trial_loss(tuning[name]),
        "trials beyond the grid": tuning[name].extensions,
        "still on the edge": ", ".join(tuning[name].edge),
    } for name, grid in grids.items()]).set_index("optimizer")


def trial_points(tuning: Mapping[str, Any]) -> pd.DataFrame:
    """Every trial of the short searches: optimizer, lr, the other knobs as text, final train loss (NaN unless
    completed), status."""
    rows = []
    for name, t in tuning.items():
        for r in t.trials:
            hp = dict(r.config.hparams)
            rows.append({"optimizer": LABELS[name], "lr": hp.pop("lr"),
                         "other": setting_text(dict(sorted(hp.items()))) or "—",
                         "final train loss": r.final["train_loss"] if r.status == "completed" else float("nan"),
                         "status": r.status})
    return pd.DataFrame(rows, columns=["optimizer", "lr", "other", "final train loss", "status"])


def epoch_costs(bench: dict | None, runs: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """(seconds per training epoch by display name, in the book's order, from the benchmark where it has the
    optimizer, else the runs' median recorded epoch; the runs' median recorded epoch)."""
    recorded = runs[runs["epoch"] > 0].groupby("optimizer", observed=True)["epoch_time"].median()
    measured = {} if bench is None else {row["optimizer"]: row["epoch_s"] for row in bench["rows"]
                                         if row.get("precision", "fp32") == "fp32"}
    per_epoch = pd.Series({LABELS[k]: v for k, v in measured.items()}, dtype=float).reindex(ORDER)
    return per_epoch.fillna(recorded.reindex(ORDER)), recorded


def lowest_losses(runs: pd.DataFrame) -> pd.DataFrame:
    """Per optimizer, the lowest train loss of its seed-mean curve and the epoch of it."""
    mean_curve = runs.groupby(["optimizer", "epoch"], observed=True)["train_loss"].mean().reset_index()
    at_lowest = mean_curve.groupby("optimizer", observed=True)["train_loss"].idxmin()
    return mean_curve.loc[at_lowest].set_index("optimizer")


def _range(values: pd.Series) -> str:
    """``min–max`` to 2 decimals; empty for one value."""
    return f"{values.min():.2f}–{values.max():.2f}" if len(values) > 1 else ""


def finals_table(runs: pd.DataFrame, per_epoch: pd.Series, bench: dict | None,
                 settings: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """The final-loss table of the 100-epoch runs (``runs``: :func:`labelled` records): train and test loss, each
    as the mean and range over seeds, the lowest train loss, the test − train gap, seeds, cost per epoch and per step, and the setting."""
    last = runs.sort_values("epoch").groupby("run_id", observed=True).tail(1)
    per_seed = last.groupby("optimizer", observed=True)
    lowest = lowest_losses(runs)
    bench_rows = {row["optimizer"]: row for row in bench["rows"] if row.get("precision", "fp32") == "fp32"} if bench else {}
    final = per_seed["train_loss"].mean()
    table = pd.DataFrame({
        "final train loss": final.map(lambda v: f"{v:.2f}"),
        "train range over seeds": per_seed["train_loss"].agg(_range),
        "lowest train loss (epoch)": lowest.apply(lambda r: f"{r.train_loss:.2f} ({int(r.epoch)})", axis=1),
        "final test loss": per_seed["test_loss"].mean().map(lambda v: f"{v:.2f}"),
        "test range over seeds": per_seed["test_loss"].agg(_range),
        "test − train": (per_seed["test_loss"].mean() - final).map(lambda v: f"{v:.2f}"),
        "seeds": per_seed["seed"].agg(lambda s: ",".join(map(str, sorted(s)))),
        "s / epoch": per_epoch.reindex(final.index).map(lambda v: fmt(v, 3)),
        "GFLOP / step": pd.Series({LABELS[k]: r["flops_per_step"] / 1e9 for k, r in bench_rows.items()},
                                  dtype=float).reindex(final.index).map(lambda v: fmt(v, 3)),
        "setting": pd.Series({LABELS[n]: setting_text(s) for n, s in settings.items() if s}, dtype=object),
    }).dropna(subset=["final train loss"])
    return table.reindex([o for o in ORDER if o in table.index])


def ties_text(runs: pd.DataFrame) -> str:
    """A note for the final-loss table: the optimizers whose mean final training losses print alike at two
    decimals, with the three decimals that tell them apart ("" when none tie)."""
    last = runs.sort_values("epoch").groupby("run_id", observed=True).tail(1)
    final = last.groupby("optimizer", observed=True)["train_loss"].mean()
    notes = []
    for shown_value, group in final.groupby(final.map(lambda v: f"{v:.2f}")):
        if len(group) > 1:
            names = [str(n) for n in group.index]
            notes.append(f"{', '.join(names[:-1])} and {names[-1]} {'both' if len(names) == 2 else 'all'} show {shown_value}: "
                         f"{' and '.join(f'{v:.3f}' for v in group)} to three decimals, different runs that end level.")
    return " ".join(notes)


def collapsed(loss: float, mean_image: float) -> bool:
    """Whether a final loss is the mean-image loss to within 1%: the model has collapsed to predicting the mean image."""
    return abs(loss - mean_image) <= 0.01 * mean_image


def rose_text(runs: pd.DataFrame, mean_image: float | None = None) -> str:
    """The sentence naming the runs (optimizer and seed) that ended more than 5% above their own lowest loss, and
    those of them that ended at ``mean_image`` (within 1%): collapsed to predicting the mean image. Empty if none."""
    named = []
    for name, group in runs.groupby("optimizer", observed=True):
        risen = []
        for _, curve in group.groupby("run_id", observed=True):
            end, low = curve.loc[curve["epoch"].idxmax()], curve.loc[curve["train_loss"].idxmin()]
            if end["train_loss"] > 1.05 * low["train_loss"]:
                at_mean = mean_image is not None and collapsed(end["train_loss"], mean_image)
                risen.append((int(end["seed"]), f"seed {int(end['seed'])} (final {end['train_loss']:.1f}, lowest "
                              f"{low['train_loss']:.1f} at epoch {int(low['epoch'])}"
                              + (", the mean-image loss)" if at_mean else ")")))
        if risen:
            named.append(f"{name} " + ", ".join(text for _, text in sorted(risen)))
    if not named:
        return ""
    return ("Ended more than 5% above their lowest loss: " + "; ".join(named) + ". A run that ends at the mean-image "
            "loss has collapsed to predicting the mean image. Each search ranks its trials by seed 0's loss over its "
            "trials' epochs, so a chosen setting can still be unstable later in the run or for another seed.")


def other_runs(every: pd.DataFrame, shown_ids: Iterable[str], settings: Mapping[str, Mapping[str, Any] | None],
               dataset: str, epochs: int) -> pd.DataFrame:
    """Full-protocol float32 runs (finished) of ``dataset`` that are not among ``shown_ids``: their setting beside
    the tuned one, status, final and lowest train loss."""
    others = every[(every["dataset"] == dataset) & (every["precision"] == "fp32") & (every["horizon"] == epochs)
                   & ~every["run_id"].isin(set(shown_ids)) & (every["status"] != "stopped")]
    rows = []
    for _, curve in others.groupby("run_id"):
        end, low = curve.loc[curve["epoch"].idxmax()], curve.loc[curve["train_loss"].idxmin()]
        rows.append({"optimizer": LABELS[end["optimizer"]], "setting": setting_text(json.loads(end["hparams"])),
                     "tuned setting": setting_text(settings.get(end["optimizer"]) or {}),
                     "seed": int(end["seed"]), "epochs": int(end["epoch"]), "status": end["status"],
                     "final train loss": f"{end['train_loss']:.2f}",
                     "lowest train loss (epoch)": f"{low['train_loss']:.2f} ({int(low['epoch'])})"})
    return pd.DataFrame(rows).set_index("optimizer") if rows else pd.DataFrame()


def reach_table(runs: pd.DataFrame, targets: Mapping[str, float], reference: str) -> pd.DataFrame:
    """Epochs and seconds (column ``time``) to each named target level, per optimizer (display names), the
    columns grouped by target."""
    plain = runs.assign(optimizer=runs["optimizer"].astype(str))
    columns = {}
    for name, level in targets.items():
        t = time_to_target(plain, reference=reference, target=level, time_column="time").set_index("optimizer")
        columns[(name, "target")] = t["target"].map(lambda v: f"{v:.1f}")
        columns[(name, "epochs")] = t["epochs_to_target"].map(lambda v: fmt(v, 3))
        columns[(name, "seconds")] = t["time_to_target"].map(lambda v: fmt(v, 3))
    present = set(plain["optimizer"])
    return pd.DataFrame(columns).reindex([o for o in ORDER if o in present])


def cost_table(bench: dict, recorded: pd.Series | None = None, per_epoch: pd.Series | None = None) -> pd.DataFrame:
    """Seconds per epoch, its ratio to SGD's in time and in FLOPs, and TFLOP/s of every benchmarked setting;
    with the full runs' median recorded epoch (``recorded``) beside the benchmark's (``per_epoch``)."""
    rows = {row["optimizer"]: row for row in bench["rows"] if row.get("precision", "fp32") == "fp32"}
    base = rows.get("sgd")
    cost = pd.DataFrame([{
        "optimizer": LABELS[name],
        "s / epoch": f"{row['epoch_s']:.3g}",
        "× SGD (time)": fmt(row["epoch_s"] / base["epoch_s"], 3) if base else "",
        "× SGD (FLOPs)": fmt(row["flops_per_step"] / base["flops_per_step"], 3) if base else "",
        "TFLOP/s": f"{row['tflops']:.3g}",
    } for name, row in rows.items()]).set_index("optimizer")
    cost = cost.reindex([o for o in ORDER if o in cost.index])
    if recorded is not None and per_epoch is not None:
        cost["s / epoch in the full runs (median)"] = recorded.reindex(cost.index).map(lambda v: fmt(v, 3))
        cost["full runs / bench"] = (recorded / per_epoch).reindex(cost.index).map(lambda v: fmt(v, 3))
    return cost


def device_text(provenance: Mapping[str, Any]) -> str:
    """The machine of a result, as a reader wants it: ``AMD EPYC CPU, 2 threads`` or the GPU's name."""
    if provenance.get("device", "cpu") == "cpu":
        n = provenance.get("threads")
        name = provenance.get("cpu")
        name = name and re.sub(r"\((R|TM)\)| Processor$| CPU$", "", name)  # "Intel(R) Xeon(R) Processor": Intel Xeon
        return (f"{name} CPU" if name else "CPU") + (f", {n} thread{'s' if n != 1 else ''}" if n else "")
    return str(provenance.get("device_name"))


def hardware_text(provenances: Iterable[Mapping[str, Any]]) -> str:
    """The machines of a set of results: the one :func:`device_text` they share, or each machine with its number
    of runs, most first, then the CPU threads' range (``AMD EPYC CPU (188 runs), Intel Xeon CPU (4 runs), 1–2
    threads``)."""
    provenances = list(provenances)
    texts = {device_text(p) for p in provenances}
    if len(texts) == 1:
        return texts.pop()
    machines = Counter(device_text({**p, "threads": None}) for p in provenances)
    threads = sorted({p["threads"] for p in provenances if p.get("device", "cpu") == "cpu" and p.get("threads")})
    text = ", ".join(f"{name} ({n} run{'s' if n != 1 else ''})" for name, n in machines.most_common())
    if threads:
        span = f"{threads[0]}–{threads[-1]}" if len(threads) > 1 else f"{threads[0]}"
        text += f", {span} thread{'s' if threads[-1] != 1 else ''}"
    return text


def corner(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with one header row: the row labels' name goes into the header's corner, further index levels
    become columns, and two-level column names are joined as "level 0: level 1"."""
    df = df.copy()
    if isinstance(df.columns, pd.MultiIndex):
        df.columns = [": ".join(str(p) for p in col if str(p)) for col in df.columns]
    if df.index.nlevels > 1:
        df = df.reset_index(level=list(range(1, df.index.nlevels)))
    return df.rename_axis(index=None, columns=df.index.name)


def provenance_table(docs: Mapping[str, dict], precision: str) -> pd.DataFrame:
    """Where and with what each run (``docs``: run id -> its result document) was produced; the commits and
    dates of every result set are in :func:`result_sets`."""
    prov = pd.DataFrame([{
        "optimizer": LABELS[doc["config"]["optimizer"]], "seed": doc["config"]["seed"], "run": rid,
        "device": device_text(p), "precision": precision, "torch": p["versions"]["torch"],
    } for rid, doc in docs.items() for p in [doc["provenance"]]])
    return corner(prov.sort_values(["optimizer", "seed"]).set_index("optimizer"))


def result_sets(root: Path) -> pd.DataFrame:
    """Every result file under ``root`` grouped by profile, dataset and precision: files, devices, torch
    versions, the number of commits and the dates (benchmark reports as the profile ``bench``)."""
    rows = []
    for path in sorted(Path(root).glob("*/*.json")):
        doc = json.loads(path.read_text())
        if "config" not in doc:
            continue
        p, cfg = doc["provenance"], doc["config"]
        rows.append({"profile": cfg["profile"], "dataset": cfg["dataset"], "precision": cfg.get("precision", "fp32"),
                     "device": device_text(p), "torch": p["versions"]["torch"],
                     "commit": str(p.get("git_commit"))[:10], "date": p.get("started", "")[:10]})
    for path in sorted((Path(root) / "bench").glob("*.json")):
        p = json.loads(path.read_text())["provenance"]
        rows.append({"profile": "bench", "dataset": "", "precision": "", "device": device_text(p),
                     "torch": p["versions"]["torch"], "commit": str(p.get("git_commit"))[:10],
                     "date": p.get("started", "")[:10]})
    table = pd.DataFrame(rows).groupby(["profile", "dataset", "precision"]).agg(
        files=("device", "size"),
        devices=("device", lambda s: "; ".join(sorted(set(s)))),
        torch=("torch", lambda s: ", ".join(sorted(set(s)))),
        commits=("commit", "nunique"),
        dates=("date", lambda s: f"{min(s)} to {max(s)}" if min(s) != max(s) else min(s)),
    )
    return corner(table.reset_index().set_index("profile"))


def spikes(runs: pd.DataFrame, rise: float = 0.05) -> pd.DataFrame:
    """Per run (``runs``: :func:`labelled` records with the ``lr`` column) whose training loss rose more than
    ``rise`` above its lowest value so far: its largest such rise, where it peaked, when it came back below
    that lowest value, and the learning rate then as a fraction of its maximum."""
    rows = []
    for _, curve in runs.groupby("run_id", observed=True):
        curve = curve.sort_values("epoch")
        loss, epoch, lr = (curve[c].to_numpy() for c in ("train_loss", "epoch", "lr"))
        lowest = pd.Series(loss).cummin().to_numpy()
        ratio = loss[1:] / lowest[:-1] - 1
        i = int(ratio.argmax())
        if ratio[i] <= rise:
            continue
        back = next((int(e) for e, v in zip(epoch[i + 2:], loss[i + 2:]) if v <= lowest[i]), None)
        rows.append({"optimizer": str(curve["optimizer"].iloc[0]), "seed": int(curve["seed"].iloc[0]),
                     "peak at epoch": int(epoch[i + 1]), "lowest before": f"{lowest[i]:.1f}",
                     "peak": f"{loss[i + 1]:.1f}", "rise": f"{ratio[i]:.1%}",
                     "back below at epoch": "" if back is None else str(back),
                     "learning rate / its maximum": f"{lr[i + 1] / lr.max():.2f}"})
    return pd.DataFrame(rows, columns=["optimizer", "seed", "peak at epoch", "lowest before", "peak", "rise",
                                       "back below at epoch", "learning rate / its maximum"])


def ablation_runs(df: pd.DataFrame, variants: Mapping[str, str]) -> pd.DataFrame:
    """Per-epoch records (:func:`~locoprop.experiments.results.load_runs`) with the ablated hyper-parameters as
    columns ``hp_local_iters``, ``hp_gamma``, ``hp_inner`` (where set), the inner learning rate ``lr_inner`` and
    the ``variant``'s display name."""
    hp = pd.DataFrame([json.loads(h) for h in df["hparams"]], index=df.index)
    df = df.join(hp[[k for k in ("local_iters", "gamma", "inner") if k in hp]].rename(columns=lambda k: f"hp_{k}"))
    df["lr_inner"] = hp["lr"]
    df["variant"] = df["optimizer"].map(variants)
    return df


def final_by(df: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Last epoch of each run per ``by``: the mean over seeds of the train and test loss, the lowest and highest
    train loss of the seeds, and the number of seeds.  No time per epoch: the runs' recorded epochs share the
    machine with whatever else ran, so their costs come from a quiet ``bench`` instead."""
    last = df.sort_values("epoch").groupby("run_id").tail(1)
    return last.groupby(by, as_index=False).agg(
        final_train_loss=("train_loss", "mean"), train_min=("train_loss", "min"), train_max=("train_loss", "max"),
        final_test_loss=("test_loss", "mean"), seeds=("seed", "nunique"), epochs=("epoch", "max"),
        diverged=("status", lambda s: int((s == "diverged").sum())),
    )


def shown(table: pd.DataFrame) -> pd.DataFrame:
    """A :func:`final_by` table for reading: losses to 4 significant digits (a regression-checked table), the
    train range over seeds where there are several."""
    table = table.copy()
    table.insert(table.columns.get_loc("train_min"), "train range over seeds",
                 [f"{lo:.4g}–{hi:.4g}" if n > 1 else "" for lo, hi, n in zip(table["train_min"], table["train_max"], table["seeds"])])
    table = table.drop(columns=["train_min", "train_max"])
    for col in ("final_train_loss", "final_test_loss"):
        table[col] = table[col].map(lambda v: f"{v:.4g}")
    return table.rename(columns={"final_train_loss": "final train loss", "final_test_loss": "final test loss"})


def precision_check(check: pd.DataFrame, tolerance: float) -> tuple[pd.DataFrame, pd.Series, list[str]]:
    """The bf16 check (``check``: records of the fp32 and bf16 check runs): its table, the relative differences
    (bf16 - fp32) / fp32 of the final train loss by display name, and the sentences that say where bf16 is
    offered and which bf16 curve rose where the fp32 one did not."""
    last = check.sort_values("epoch").groupby("run_id").tail(1)
    table = last.pivot_table(index="optimizer", columns="precision", values="train_loss")
    table.index = table.index.map(LABELS)
    rel = (table["bf16"] - table["fp32"]) / table["fp32"]
    shown_table = pd.DataFrame({
        "fp32 final train loss": table["fp32"].map(lambda v: f"{v:.3f}"),
        "bf16 final train loss": table["bf16"].map(lambda v: f"{v:.3f}"),
        "relative difference": rel.map(lambda v: f"{v:+.3%}"),
        f"within {tolerance:.1%}": rel.abs().map(lambda v: "yes" if v <= tolerance else "no"),
    })
    within = [name for name, v in rel.items() if abs(v) <= tolerance]
    outside = [name for name, v in rel.items() if abs(v) > tolerance]
    lines = [f"**bfloat16 is offered for** {', '.join(within) or 'none'}; **not for** {', '.join(outside) or 'none'}."]
    package = {v: k for k, v in LABELS.items()}
    for label in outside:  # a bf16 curve that rose (by more than 1% in an epoch) where the fp32 one did not
        curves = {p: c for p, c in check[(check["optimizer"] == package[label]) & (check["epoch"] > 0)].groupby("precision")}
        (k, before, after), (_, b32, a32) = biggest_rise(curves["bf16"]), biggest_rise(curves["fp32"])
        if after > 1.01 * before and a32 <= 1.01 * b32:
            lines.append(f"The bfloat16 run of {label} rose from {before:.1f} after epoch {k + 1} to {after:.1f} after "
                         f"epoch {k + 2} and ended at {table.loc[label, 'bf16']:.1f}, while the float32 run did not rise "
                         f"by 1% in any epoch: at its tuned learning rate the method is near the edge of stability, and "
                         f"the other rounding tipped it over.")
    return shown_table, rel, lines


def biggest_rise(curve: pd.DataFrame) -> tuple[int, float, float]:
    """(index k of the epoch before, loss before, loss after) of the largest one-epoch rise of a training curve
    (its records from epoch 1 on: k = 0 is the rise from epoch 1 to epoch 2)."""
    losses = curve.sort_values("epoch")["train_loss"].to_numpy()
    k = int((losses[1:] - losses[:-1]).argmax())
    return k, float(losses[k]), float(losses[k + 1])


def precision_speed(bench: dict) -> pd.DataFrame:
    """Milliseconds per step of every benchmarked setting in float32 and bfloat16, and the speed-up."""
    rows = pd.DataFrame(bench["rows"])
    rows["label"] = [LABELS[o] + label[len(o):] for o, label in zip(rows["optimizer"], rows["label"])]
    speed = rows.pivot_table(index="label", columns="precision", values="step_ms", sort=False)
    return pd.DataFrame({
        "float32 ms / step": speed["fp32"].map(lambda v: f"{v:.0f}"),
        "bfloat16 ms / step": speed["bf16"].map(lambda v: f"{v:.0f}"),
        "speed-up": (speed["fp32"] / speed["bf16"]).map(lambda v: f"{v:.2f}×"),
    }).rename_axis("optimizer (paper protocol, batch 1000)")


def status_table(searches: Mapping[str, tuple[Any, Any, Any]], rungs: Iterable[int]) -> pd.DataFrame:
    """Per optimizer (``searches``: name -> (short search, halving, finals)): how far each search has gone, the
    setting each chose, and the seeds of the full runs that stand for it."""
    last = max(rungs)
    rows = []
    for name, (short, halved, final) in searches.items():
        trials = f"{halved.pending} trial{'' if halved.pending == 1 else 's'}"
        if halved.complete:
            progress = f"complete ({halved.budget} epochs of trials)"
        elif halved.rungs:
            progress = f"rung {halved.rungs[-1][0]} of {last} reached, {trials} on the way to the next"
        else:
            progress = f"first rung: {trials} to go"
        rows.append({"optimizer": LABELS[name],
                     "short search": "" if short.setting is None else setting_text(short.setting),
                     "successive halving": progress,
                     "its survivor": "" if halved.setting is None else setting_text(halved.setting),
                     "full runs shown": "" if final.search is None else
                     f"{final.search}: seeds " + ",".join(str(r.config.seed) for r in final.results)})
    return pd.DataFrame(rows).set_index("optimizer")


def halving_table(halvings: Mapping[str, Any]) -> pd.DataFrame:
    """Per optimizer: the budget its successive halving has spent (epochs), its extensions beyond the grid,
    the best trial's train loss at every rung reached, the survivor and whether it sits on a grid edge."""
    rows = []
    for name, h in halvings.items():
        row = {"optimizer": LABELS[name], "epochs trained": h.budget, "trials beyond the grid": h.extensions}
        for epoch, trials in h.rungs:
            best = trials[0]
            row[f"best at epoch {epoch}"] = (f"{best.final['train_loss']:.1f} ({setting_text(best.config.hparams)})"
                                             if best.status in ("completed", "stopped") else "")
        row["survivor"] = "" if h.setting is None else setting_text(h.setting)
        row["on the edge"] = ", ".join(h.edge)
        rows.append(row)
    return pd.DataFrame(rows).set_index("optimizer")


def rung_points(halvings: Mapping[str, Any]) -> pd.DataFrame:
    """Every trial at every rung it reached: optimizer, setting, rung, train loss (NaN when it stopped early),
    status, and whether it continued past that rung."""
    rows = []
    for name, h in halvings.items():
        for index, (epoch, trials) in enumerate(h.rungs):
            kept = h.kept[index] if index < len(h.kept) else []
            for r in trials:
                alive = r.status in ("completed", "stopped")
                rows.append({"optimizer": LABELS[name], "setting": setting_text(r.config.hparams), "rung": epoch,
                             "train loss": r.final["train_loss"] if alive else float("nan"), "status": r.status,
                             "continued": r.config.hparams in kept and index < len(h.rungs) - 1})
    return pd.DataFrame(rows, columns=["optimizer", "setting", "rung", "train loss", "status", "continued"])


def searches_side_by_side(searches: Mapping[str, tuple[Any, Any, Any]], short_finals: Mapping[str, Any]) -> pd.DataFrame:
    """Per optimizer, the two searches' winners with their 100-epoch runs (seed 0; train and test loss at the
    end): the short search's (5-epoch trials) and successive halving's (trials on the protocol's own horizon)."""
    return _side_by_side({LABELS[name]: [("short search", short.setting, short_finals.get(name)),
                                         ("successive halving", halved.setting, halved.final if halved.complete else None)]
                          for name, (short, halved, final) in searches.items()}, "winner")


def official_table(official: Mapping[str, Mapping[str, Any]], runs: Mapping[str, Any],
                   finals: Mapping[str, Any]) -> pd.DataFrame:
    """Per LocoProp variant, its 100-epoch run (seed 0) at the official notebook's setting (``official``: name ->
    hyper-parameters; ``runs``: name -> its result, None while not run) beside its tuned final of seed 0
    (``finals``: name -> :class:`~locoprop.experiments.tuning.Finals`): setting, final train and test loss."""
    entries = {}
    for name, setting in official.items():
        final = finals.get(name)
        tuned_zero = next((r for r in final.results if r.config.seed == 0), None) if final is not None else None
        entries[LABELS[name]] = [("official notebook's setting", setting, runs.get(name)),
                                 ("tuned setting", final.setting if final is not None else None, tuned_zero)]
    return _side_by_side(entries, "setting", not_run="not run yet")


def _side_by_side(entries: Mapping[str, list], setting_column: str, not_run: str = "") -> pd.DataFrame:
    """One row per optimizer (display name -> ``[(group, setting, result or None)]``) and, per group, its setting
    and the final train and test loss of its result, as two-level columns; ``not_run`` where there is no result."""
    rows = []
    for optimizer, groups in entries.items():
        row = {"optimizer": optimizer}
        for label, setting, result in groups:
            row[(label, setting_column)] = setting_text(setting) if setting else ""
            row[(label, "final train")] = not_run if result is None else f"{result.final['train_loss']:.2f}"
            row[(label, "final test")] = "" if result is None else f"{result.final['test_loss']:.2f}"
        rows.append(row)
    table = pd.DataFrame(rows).set_index("optimizer")
    table.columns = pd.MultiIndex.from_tuples(table.columns)
    return table


def t_frontier(runs: pd.DataFrame, per_epoch: Mapping[int, float], targets: Mapping[str, float]) -> pd.DataFrame:
    """LocoProp-M at several numbers T of local iterations (``runs``: the records of one full run per T, with
    an ``hp_local_iters`` column, see :func:`ablation_runs`): per T its inner lr, final train and test loss,
    the seconds per training epoch (``per_epoch``: T -> seconds, from a quiet benchmark; NaN where not measured),
    and the epochs and seconds (epochs × seconds per epoch) to each target (:data:`NOT_REACHED` in the run's
    epochs)."""
    rows = []
    for T, curve in runs.groupby("hp_local_iters"):
        curve = curve.sort_values("epoch")
        end = curve.iloc[-1]
        seconds = per_epoch.get(int(T), float("nan"))
        row = {"T": int(T), "ν": f"{end['lr_inner']:.4g}", "final train loss": f"{end['train_loss']:.2f}",
               "final test loss": f"{end['test_loss']:.2f}", "epochs": int(end["epoch"]),
               "s / epoch": fmt(seconds, 3)}
        for name, level in targets.items():
            hit = curve[(curve["epoch"] > 0) & (curve["train_loss"] <= level)]
            if hit.empty:
                row[f"epochs to {name}"] = row[f"seconds to {name}"] = NOT_REACHED
                continue
            epoch = float(hit["epoch"].iloc[0])
            row[f"epochs to {name}"] = fmt(epoch, 3)
            row[f"seconds to {name}"] = fmt(epoch * seconds, 3)
        rows.append(row)
    return pd.DataFrame(rows).set_index("T") if rows else pd.DataFrame()


def t_summary(table: pd.DataFrame, target: str) -> str:
    """What the T frontier (:func:`t_frontier`'s ``table``) says at ``target``: the T that reaches it in the fewest
    seconds, against the paper's T = 10 in time and in final train and test loss, and the T that never reach it."""
    seconds = pd.to_numeric(table[f"seconds to {target}"], errors="coerce")
    if 10 not in table.index or seconds.dropna().empty:
        return ""
    best = int(seconds.idxmin())
    train, test = (pd.to_numeric(table[c]) for c in ("final train loss", "final test loss"))

    def versus(column: pd.Series, name: str) -> str:
        delta = column[best] - column[10]
        return (f"{abs(delta):.2f} nats {'above' if delta > 0 else 'below'} T = 10 in final {name} loss "
                f"({column[best]:.2f} against {column[10]:.2f})")

    reach = f"To reach {target}, "
    if best == 10:
        text = reach + f"the paper's T = 10 is the quickest ({seconds[10]:.0f} s)."
    else:
        against = (f" against {seconds[10]:.0f} s at the paper's T = 10 ({seconds[10] / seconds[best]:.1f}× sooner)"
                   if pd.notna(seconds[10]) else "")
        text = reach + (f"T = {best} is the quickest: {seconds[best]:.0f} s{against}, and it ends "
                        f"{versus(train, 'train')}, {versus(test, 'test')}.")
    never = [T for T in table.index if table.loc[T, f"seconds to {target}"] == NOT_REACHED]
    if never:
        text += (f" T = {', '.join(map(str, never))} never reach{'es' if len(never) == 1 else ''} it in "
                 f"{table.loc[never[0], 'epochs']} epochs.")
    return text + " One seed per T."


def _compare(a: pd.Series, b: pd.Series) -> str:
    """How the seeds ``a`` compare with ``b``: below or above when their ranges do not overlap, else level with."""
    if a.max() < b.min():
        return "below"
    if a.min() > b.max():
        return "above"
    return "level with"


def what_it_shows(last: pd.DataFrame, claims: pd.DataFrame, searches: Mapping[str, str | None], setting: str,
                  official: Mapping[str, tuple[float, float]] | None = None) -> str:
    """The landing page's paragraph "What this reproduction shows", from the final records of the full runs
    (``last``: one row per run with display names in ``optimizer``, ``seed``, ``train_loss``, ``test_loss``),
    the claims table, which search chose each optimizer's setting (display name -> "halving" or "short") and,
    where run, the final train loss at the official notebook's setting beside the tuned one, both of seed 0
    (``official``: display name -> (official, tuned))."""
    last = last.assign(optimizer=last["optimizer"].astype(str))
    by = {name: group for name, group in last.groupby("optimizer")}
    if "LocoProp-M" not in by:
        return "No paper-scale run of LocoProp-M yet."
    first = [LABELS[n] for n in ("sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam") if LABELS[n] in by]
    second = [n for n in ("K-FAC", "Shampoo") if n in by]
    mean = {n: g["train_loss"].mean() for n, g in by.items()}

    def loss(name, column="train_loss", digits=1):
        g = by[name][column]
        spread = f", range {g.min():.{digits}f}–{g.max():.{digits}f}" if len(g) > 1 else ""
        return f"{g.mean():.{digits}f} ({len(g)} seed{'s' if len(g) > 1 else ''}{spread})"

    m = by["LocoProp-M"]
    parts = [f"With the paper's protocol ({setting}), LocoProp-M ends at a training loss of {loss('LocoProp-M')}"]
    if first:
        best = min(first, key=mean.get)
        parts.append(f"the best first-order method, {best}, at {loss(best)}")
    if second:
        parts.append("; ".join(f"{n} at {loss(n)}" for n in second))
    text = ", ".join(parts[:2]) + ("; " + parts[2] if len(parts) > 2 else "") + "."
    verdicts = []
    for row in claims.itertuples():
        number, _, wording = row.claim.partition(". ")
        # "CPU (2 cores), LocoProp-M at T = 2 (beyond ...)" -> "CPU, LocoProp-M at T = 2 (beyond ...)": the device's
        # own note goes, what tells two rows of one device apart stays
        where = re.sub(r" \([^)]*\)", "", wording.split(" on one ", 1)[1], count=1) if " on one " in wording else ""
        verdicts.append(f"claim {number}" + (f" on one {where}" if where else "") + f": **{row.verdict}**")
    text += f" Against the paper's claims (see the table): {'; '.join(verdicts)}."
    rivals = ([min(first, key=mean.get)] if first else []) + second
    if rivals:
        relations = {n: _compare(m["test_loss"], by[n]["test_loss"]) for n in rivals}
        carries = ("carries over to unseen images" if set(relations.values()) == {"below"} else
                   "does not carry over to unseen images" if "below" not in relations.values() else
                   "carries over to unseen images only in part")
        # two decimals: test losses of different optimizers lie closer than the first decimal separates
        text += (" On the 10,000 test images LocoProp-M's loss, " + loss("LocoProp-M", "test_loss", 2) + ", is "
                 + "; ".join(f"{relations[n]} {n}'s {loss(n, 'test_loss', 2)}" for n in rivals)
                 + f" (seeds compared by their ranges): its test − train gap is "
                 f"{m['test_loss'].mean() - m['train_loss'].mean():.1f} nats, against "
                 + ", ".join(f"{by[n]['test_loss'].mean() - by[n]['train_loss'].mean():.1f} for {n}" for n in rivals)
                 + f", so its lower training loss {carries}.")
    chosen = {k: v for k, v in searches.items() if v}
    halved = [n for n, v in chosen.items() if v == "halving"]
    text += (f" The settings come from successive halving on the protocol's own horizon for {len(halved)} of the "
             f"{len(chosen)} optimizers shown" + (f" ({', '.join(halved)})" if 0 < len(halved) < len(chosen) else "")
             + ("; the others' from the 5-epoch search, until their halving is complete." if len(halved) < len(chosen)
                else "."))
    if official:
        text += (" At the official notebook's setting (ν = 1e-5, γ = 10) the final training loss of seed 0 is "
                 + "; ".join(f"{loss_o:.1f} for {n}, {_against(loss_o - loss_t)} its tuned setting's {loss_t:.1f}"
                             for n, (loss_o, loss_t) in official.items()) + ".")
    return text


def _against(difference: float) -> str:
    """"2.3 nats above" / "0.4 nats below" / "level with", for a difference of final losses (2 decimals shown)."""
    if round(difference, 2) == 0:
        return "level with"
    return f"{abs(difference):.1f} nats {'above' if difference > 0 else 'below'}"
