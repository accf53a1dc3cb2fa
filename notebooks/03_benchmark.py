# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # The deep-autoencoder benchmark
#
# The paper's benchmark: train the deep autoencoder with first-order optimizers (SGD, momentum,
# AdaGrad, RMSProp, Adam), with the second-order K-FAC and Shampoo, and with LocoProp-S and
# LocoProp-M, and compare the training loss (sigmoid cross-entropy, nats per image) against epochs
# and against wall-clock time. Every optimizer runs through the same training loop,
# `locoprop.runner`; each run writes a result file under `data/results/<profile>/`, and a run whose
# result file exists is loaded instead of retrained, so this notebook draws the committed results
# without training anything.
#
# * **smoke** profile: the bundled 8×8 digits, a scaled-down autoencoder, 10 epochs on a CPU
#   (minutes for all optimizers). A sanity check of the pipeline, not a reproduction of the paper.
# * **paper** profile: the paper's protocol (784-1000-500-250-30-250-500-1000-784, batch 1000,
#   100 epochs, 5 warm-up epochs), on a GPU.
#
# Where paper-profile results of this benchmark exist, the figures and the headline numbers below
# show them; otherwise they show the smoke-profile results, with a notice.

# %% tags=["parameters"]
profile = "smoke"
dataset = "digits"
device = "cpu"
seeds = [0]
results_dir = None

# %%
import json
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from IPython.display import Markdown, display
from myst_nb import glue

from locoprop.optim import FIRST_ORDER
from locoprop.plotting import LABELS, PALETTE, log_loss_axis
from locoprop.results import load_results, load_runs, summary, time_to_target
from locoprop.runner import PROFILES, RunConfig, default_results_dir, run, sweep
from locoprop.tuning import BUDGET, GRIDS

sns.set_theme(context="notebook", style="whitegrid")
OPTIMIZERS = ["sgd", "momentum", "adagrad", "rmsprop", "adam", "shampoo", "kfac", "locoprop-s", "locoprop-m"]


def benchmark_configs(profile, dataset, seeds):
    """One run per optimizer and seed, with the profile's default hyper-parameters."""
    return [RunConfig(optimizer=name, dataset=dataset, profile=profile, seed=seed, device=device,
                      results_dir=results_dir)
            for name in OPTIMIZERS for seed in seeds]


def records_of(configs):
    """The per-epoch records of those configurations that have a result file, in benchmark order."""
    df = load_runs(configs)
    df["optimizer"] = pd.Categorical(df["optimizer"].map(LABELS),
                                     [LABELS[name] for name in OPTIMIZERS], ordered=True)
    return df.sort_values(["optimizer", "seed", "epoch"]).reset_index(drop=True)


print(f"profile={profile} dataset={dataset} device={device} seeds={seeds}")

# %% [markdown]
# ## Run (or load) the benchmark at the requested profile

# %%
# NBVAL_IGNORE_OUTPUT
configs = benchmark_configs(profile, dataset, seeds)
results = sweep(configs, progress=False)
print(f"{len(results)} runs: {sum(not r.skipped for r in results)} trained now, "
      f"{sum(r.skipped for r in results)} loaded from their result files")

# %%
runs = records_of(configs)
shown_profile, shown_dataset = profile, dataset

# Paper-scale results are shown where they exist (MNIST preferred, as in the paper).
if profile != "paper":
    paper = load_results(results_dir, "paper")
    for candidate in ("mnist", "fashion-mnist"):
        paper_seeds = sorted(paper.loc[paper["dataset"] == candidate, "seed"].unique().tolist())
        found = records_of(benchmark_configs("paper", candidate, paper_seeds)) if paper_seeds else paper.iloc[:0]
        if found["optimizer"].nunique() >= 2 and "LocoProp-M" in set(found["optimizer"]):
            runs, shown_profile, shown_dataset = found, "paper", candidate
            break

prof = PROFILES[shown_profile]
if shown_profile == "smoke":
    display(Markdown(
        f"**Smoke-scale results.** No paper-scale results of this benchmark were found under "
        f"`data/results/paper/`, so what follows are the smoke-profile runs: {shown_dataset} "
        f"(8×8 images), a scaled-down autoencoder, {prof.epochs} epochs on a CPU. They check that "
        f"the pipeline works; they are not a reproduction of the paper's numbers."
    ))
else:
    display(Markdown(
        f"**Paper-scale results**: {shown_dataset}, the paper's autoencoder, batch {prof.batch_size}, "
        f"{runs['epoch'].max()} epochs."
    ))

# %% [markdown]
# ## Training loss against epochs and against time

# %%
fig, axes = plt.subplots(1, 2, figsize=(12, 4.4), sharey=True)
sns.lineplot(data=runs, x="epoch", y="train_loss", hue="optimizer", palette=PALETTE, ax=axes[0],
             errorbar=("pi", 100), legend=False)
sns.lineplot(data=runs[runs["epoch"] > 0], x="train_time", y="train_loss", hue="optimizer", palette=PALETTE,
             ax=axes[1], errorbar=None, estimator=None, units="seed", marker=".")
log_loss_axis(axes[0])
axes[0].set(xlabel="epoch", ylabel="train loss (nats / image)", title="against epochs")
axes[1].set(xscale="log", xlabel="training time (s, log scale; evaluation excluded)", title="against wall-clock time")
sns.move_legend(axes[1], "upper left", bbox_to_anchor=(1.02, 1.0), title=None, frameon=False)
fig.suptitle(f"Deep autoencoder, {shown_dataset} ({shown_profile} profile)")
fig.tight_layout()
plt.show()

# %% [markdown]
# **Figure 1.** Training loss of the deep autoencoder (sigmoid cross-entropy summed over pixels,
# nats per image, full training set after each epoch; epoch 0 is the untrained model) for every
# optimizer, against epochs (left, log scale; a band spans the seeds when there are several) and
# against the cumulated training time (right, log scale, one dot per epoch from epoch 1;
# evaluation excluded). Times depend on the machine the results were produced on and on what else
# ran on it (see the provenance table below); at the smoke scale every step is tiny, so fixed
# per-step overheads dominate and the times say little about the paper-scale costs.

# %%
fig, ax = plt.subplots(figsize=(7.5, 4.5))
sns.lineplot(data=runs, x="epoch", y="train_loss", hue="optimizer", palette=PALETTE, ax=ax,
             errorbar=("pi", 100))
log_loss_axis(ax)
ax.set(xlabel="epoch", ylabel="train loss (nats / image)",
       title=f"Deep autoencoder, {shown_dataset} ({shown_profile} profile)")
sns.move_legend(ax, "upper left", bbox_to_anchor=(1.02, 1.0), title=None, frameon=False)
fig.tight_layout()
Path("../book/figures").mkdir(parents=True, exist_ok=True)
fig.savefig("../book/figures/headline.png", dpi=150, metadata={"Software": None})
plt.close(fig)
print("saved book/figures/headline.png")

# %% [markdown]
# The same curves as the left panel of Figure 1 are saved as `book/figures/headline.png` for the
# landing page of the book.

# %% [markdown]
# ## Results table
#
# Final losses (after the last epoch, averaged over seeds), mean time per training epoch, the
# hyper-parameters of each run (the profile's defaults, `locoprop.runner.DEFAULT_HPARAMS`) and the
# seeds. This table is checked when the notebook is re-run as a regression test.

# %%
best = summary(runs.assign(optimizer=runs["optimizer"].astype(str)))
best["order"] = best["optimizer"].map({LABELS[name]: i for i, name in enumerate(OPTIMIZERS)})
seed_lists = runs.groupby("optimizer", observed=True)["seed"].unique().map(lambda s: ",".join(map(str, sorted(s))))
table = pd.DataFrame({
    "optimizer": best["optimizer"],
    "final train loss": best["final_train_loss"].map(lambda v: f"{v:.4g}"),
    "final test loss": best["final_test_loss"].map(lambda v: f"{v:.4g}"),
    "epochs": best["epochs"],
    "s / epoch": best["epoch_time"].map(lambda v: f"{v:.3g}"),
    "hyper-parameters": best["hparams"].map(lambda h: ", ".join(f"{k}={v}" for k, v in json.loads(h).items())),
    "seeds": best["optimizer"].map(seed_lists),
    "diverged runs": best["diverged"],
    "order": best["order"],
}).sort_values("order").drop(columns="order").set_index("optimizer")
table

# %% [markdown]
# ## Time to reach RMSProp's final loss
#
# For each optimizer (its best setting), the first epoch at which its training loss is at or below
# the final training loss of RMSProp, and the training time it took to get there (evaluation
# excluded), averaged over the seeds that reach it; the speed-up is RMSProp's time over the
# optimizer's. Empty cells: never reached within the run.

# %%
reach = time_to_target(runs.assign(optimizer=runs["optimizer"].astype(str)), reference="RMSProp")
pd.DataFrame({
    "optimizer": reach["optimizer"],
    "target (RMSProp's final loss)": reach["target"].map(lambda v: f"{v:.4g}"),
    "epochs to target": reach["epochs_to_target"].map(lambda v: "" if pd.isna(v) else f"{v:g}"),
    "seconds to target": reach["time_to_target"].map(lambda v: "" if pd.isna(v) else f"{v:.3g}"),
    "speed-up over RMSProp": reach["speedup"].map(lambda v: "" if pd.isna(v) else f"{v:.2f}x"),
    "seeds reaching it": reach["seeds_reaching"].astype(str) + " / " + reach["seeds"].astype(str),
}).set_index("optimizer")

# %% [markdown]
# ## Tuning grids for the paper-scale comparison
#
# At the paper scale every optimizer is tuned with the same budget of trials on the knobs its
# literature tunes (`locoprop.tuning.GRIDS`, run by `python -m locoprop tune`), and the setting
# with the lowest final training loss is rerun with three seeds. The smoke runs above use the
# fixed defaults of `locoprop.runner.DEFAULT_HPARAMS` instead.

# %%
pd.DataFrame([
    {"optimizer": LABELS[name], "trials": BUDGET,
     "grid": "; ".join(f"{knob} ∈ {{{', '.join(f'{v:g}' if isinstance(v, float) else str(v) for v in values)}}}"
                       for knob, values in grid.items())}
    for name, grid in GRIDS.items()
]).set_index("optimizer")

# %% [markdown]
# ## Cost per epoch on the paper's autoencoder
#
# `python -m locoprop bench` times every optimizer on the paper's autoencoder and batch size (its
# JSON reports are under `data/results/bench/`): the median time of a training epoch (evaluation
# excluded), its ratio to RMSProp's from the same run, the FLOPs of one step (counted by PyTorch's
# FLOP counter) and the throughput they imply. The latest report of each device is shown.

# %%
bench_root = (Path(results_dir) if results_dir else default_results_dir()) / "bench"
reports = {}
for path in sorted(bench_root.glob("*.json")):
    report = json.loads(path.read_text())
    reports[report["provenance"]["device_name"]] = report  # file names sort by time: the last one wins
for device_name, report in reports.items():
    display(Markdown(
        f"**{device_name}** (torch {report['provenance']['versions']['torch']}, "
        f"{report['provenance']['started'][:10]}; {report['rows'][0]['steps_per_epoch']} steps per timed epoch, "
        f"float32 matrix-multiply ceiling on LocoProp's shapes {report['matmul_ceiling_tflops']:.3g} TFLOP/s)"
    ))
    display(pd.DataFrame([{
        "optimizer": row["label"],
        "s / epoch": f"{row['epoch_s']:.3g}",
        "x RMSProp": f"{row['ratio_to_rmsprop']:.2f}",
        "GFLOP / step": f"{row['flops_per_step'] / 1e9:.1f}",
        "TFLOP/s": f"{row['tflops']:.3g}",
        "peak memory (MiB)": "n/a" if row["peak_memory_mib"] is None else f"{row['peak_memory_mib']:.0f}",
    } for row in report["rows"]]).set_index("optimizer"))
if not reports:
    print("no benchmark reports under data/results/bench/ yet")

# %% [markdown]
# ## Headline numbers
#
# The numbers quoted on the landing page of the book: LocoProp-M's final training loss and the
# best first-order optimizer's (SGD, momentum, AdaGrad, RMSProp, Adam).

# %%
final = best.set_index("optimizer")["final_train_loss"]
first_order = final[[LABELS[name] for name in FIRST_ORDER if LABELS[name] in final.index]]
best_first = first_order.idxmin()
headline = {
    "headline_dataset": shown_dataset,
    "headline_profile": shown_profile,
    "headline_best_locoprop": f"{final['LocoProp-M']:.2f}",
    "headline_best_first_order": f"{best_first} ({first_order[best_first]:.2f})",
}
for key, value in headline.items():
    glue(key, value, display=False)
pd.Series(headline, name="value").to_frame()

# %% [markdown]
# ## Do the stored results still reproduce?
#
# The figures above are drawn from stored result files. At the smoke profile this cell re-trains
# LocoProp-S and LocoProp-M from scratch into a temporary folder and compares their final training
# losses with the stored ones (to 0.1 %), so that re-running this notebook as a regression test
# also notices a change of the algorithms.

# %%
import tempfile

if profile == "smoke":
    with tempfile.TemporaryDirectory() as scratch:
        for name in ("locoprop-s", "locoprop-m"):
            stored = next(r for r in results if r.config.optimizer == name and r.config.seed == seeds[0])
            fresh = run(RunConfig(optimizer=name, dataset=dataset, profile=profile, seed=seeds[0],
                                  device=device, results_dir=scratch), progress=False)
            same = abs(fresh.final["train_loss"] - stored.final["train_loss"]) <= 1e-3 * abs(stored.final["train_loss"])
            print(f"{LABELS[name]}: stored final train loss {stored.final['train_loss']:.4g}; "
                  f"re-trained now: {'the same' if same else 'DIFFERENT (%.4g)' % fresh.final['train_loss']}")
else:
    print("skipped at the paper profile (it would re-train for hours)")

# %% [markdown]
# ## Provenance
#
# Where and from which commit each result file was produced.

# %%
runs.groupby("optimizer", observed=True).agg(
    runs=("run_id", "nunique"), status=("status", "last"), device=("device", "first"),
    commit=("git_commit", lambda c: str(c.iloc[0])[:10]),
)
