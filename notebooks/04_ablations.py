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
# # Ablations of LocoProp
#
# Three knobs of LocoProp on the deep-autoencoder benchmark, one at a time, the others at the
# paper's values ($T = 10$ local iterations, activation learning rate $\gamma = 10$, TF1-style
# RMSProp as the inner optimizer with base learning rate $10^{-5}$):
#
# 1. the number $T$ of local iterations per step, for LocoProp-S and LocoProp-M ($T = 1$ with plain
#    gradient descent as inner optimizer is BackProp);
# 2. the activation learning rate $\gamma$, the step that sets the layer targets
#    ($A - \gamma G$ for S, $f(A) - \gamma G$ for M);
# 3. the inner optimizer of LocoProp-M: TF1-style RMSProp (the paper's), plain gradient descent
#    (`torch.optim.SGD`) and Adam, each over a small grid of inner learning rates.
#
# All runs go through `locoprop.experiments.train`; finished runs are loaded from their result files under
# `data/results/<profile>/` rather than retrained.
#
# :::{admonition} Run it yourself
# :class: tip
#
# This page is the jupytext notebook {download}`notebooks/04_ablations.py <04_ablations.py>`, executed
# with papermill into {download}`notebooks/04_ablations.ipynb <04_ablations.ipynb>`. From the
# repository root:
#
# ```bash
# python -m locoprop reproduce --profile smoke --notebook 04_ablations
# python -m locoprop reproduce --profile paper --dataset fashion-mnist --notebook 04_ablations
# ```
#
# Its last execution took {{ exec_04_ablations_duration }} ({doc}`../book/status`); with no result
# files present it first trains every smoke run, and finished runs are loaded, not retrained. At
# paper scale the page trains
# {glue:text}`ablation_runs` runs of the full protocol (100 epochs each): about
# {glue:text}`ablation_hours` hours of training on the 2-core CPU of the paper-scale results,
# from their measured LocoProp epoch and a cost proportional to the matrix products of a step,
# $3N - N_1 + 2TN$ ({eq}`eq-cost-ratio`; evaluation not included). A GPU, or a subset of the
# ablations, is the practical way. The paper-scale runs of the number of local iterations $T$ are
# on the {doc}`03_benchmark` page.
# :::
#
# :::{admonition} At a glance
# :class: note
#
# * **Needs** the committed result files under `data/results/` (finished runs are loaded, missing
#   smoke runs trained); a CPU.
# * **Runs** in {{ exec_04_ablations_duration }} (its last execution, at the
#   {{ exec_04_ablations_profile }} profile; see {doc}`../book/status`).
# * **Finds** the settings with the lowest final loss for LocoProp-M at this profile
#   ($T =$ {glue:text}`best_local_iters_m`, $\gamma =$ {glue:text}`best_gamma_m`, inner optimizer
#   {glue:text}`best_inner`) and how far bfloat16 moves the tuned optimizers' final losses (at most
#   {glue:text}`bf16_max_difference`).
# * **Next**: {doc}`../book/reproduce` gives the commands to run everything yourself.
# :::

# %% tags=["parameters", "remove-cell"]
profile = "smoke"
dataset = "digits"
device = "cpu"
seeds = [0]
results_dir = None
executor = None

# %% tags=["remove-cell"]
from locoprop.experiments.reproduce import check_parameters

check_parameters(profile=profile, dataset=dataset, device=device, seeds=seeds)

# %% tags=["hide-input"]
import dataclasses
import json
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from IPython.display import Markdown, display
from myst_nb import glue

from locoprop.models import PAPER_SIZES
from locoprop.optim.locoprop import step_sum
from locoprop.experiments import report
from locoprop.experiments.plotting import PALETTE, log_loss_axis, log_x_axis
from locoprop.experiments.results import bench_report, load_results, load_runs
from locoprop.experiments.config import PROFILES, RunConfig, default_results_dir, grid
from locoprop.experiments.sweep import sweep

sns.set_theme(context="notebook", style="whitegrid")
VARIANTS = {"locoprop-s": "LocoProp-S", "locoprop-m": "LocoProp-M"}
LOCAL_ITERS = [1, 2, 5, 10, 20]
GAMMAS = [1.0, 3.0, 10.0, 30.0, 100.0]
INNER_LRS = {  # inner optimizer -> learning rates tried (the paper's TF1 RMSProp uses 1e-5)
    "tf-rmsprop": [3e-6, 1e-5, 3e-5, 1e-4],
    "sgd": [1e-3, 3e-3, 1e-2, 3e-2],
    "adam": [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2],
}
INNER_LABELS = {"tf-rmsprop": "TF1 RMSProp", "sgd": "gradient descent", "adam": "Adam"}
VARIANT_COLORS = {label: PALETTE[label] for label in VARIANTS.values()}  # as in the benchmark
INNER_COLORS = dict(zip(INNER_LABELS.values(), sns.color_palette("Set2", 3)))
base = {name: RunConfig(optimizer=name, dataset=dataset, profile=profile, device=device, results_dir=results_dir)
        for name in VARIANTS}

def same_total_step(name, T):
    """``base[name]`` with T local iterations and ν rescaled so that ν·Σ_j max(1 − j/T, 0.25) stays that of T = 10."""
    lr = base[name].resolve().hparams["lr"] * step_sum(10) / step_sum(T)
    return [dataclasses.replace(c, hparams={**c.hparams, "lr": lr}) for c in grid(base[name], local_iters=T, seed=seeds)]


ablations = {
    "local iterations T": [c for name in VARIANTS for c in grid(base[name], local_iters=LOCAL_ITERS, seed=seeds)],
    "local iterations T, same total step": [c for name in VARIANTS for T in LOCAL_ITERS for c in same_total_step(name, T)],
    "activation learning rate γ": [c for name in VARIANTS for c in grid(base[name], gamma=GAMMAS, seed=seeds)],
    "inner optimizer": [c for inner, lrs in INNER_LRS.items()
                        for c in grid(base["locoprop-m"], inner=inner, lr=lrs, seed=seeds)],
}
prof = PROFILES[profile]
distinct = {c.run_id: c for configs in ablations.values() for c in configs}
print(f"profile={profile} dataset={dataset} device={device} seeds={seeds}: "
      f"{len(distinct)} runs of {prof.epochs} epochs")
if profile == "smoke":
    display(Markdown(
        f"**Smoke-scale results**: {dataset}, a scaled-down autoencoder, {prof.epochs} epochs on a CPU. "
        f"Trends at this scale need not carry over to the paper's setting."
    ))

# %% tags=["remove-cell"]
# The cost of this page at paper scale (the run-it-yourself box): the median recorded training epoch of the
# paper-profile LocoProp runs on disk (T = 10), scaled by the matrix products of a step, 3 + 2T.
paper = load_results(results_dir, profile="paper")
paper = paper[paper["optimizer"].isin(list(VARIANTS)) & (paper["dataset"] == "fashion-mnist") & (paper["epoch"] > 0)
              & (paper["precision"] == "fp32") & paper["device"].astype(str).str.startswith("cpu")
              & paper["hparams"].map(lambda h: json.loads(h).get("local_iters", 10) == 10)]
epoch_s = paper.groupby("optimizer")["epoch_time"].median().to_dict()
glue("ablation_runs", str(len(distinct)), display=False)
_n = sum(a * b for a, b in zip(PAPER_SIZES[:-1], PAPER_SIZES[1:]))  # products per step, eq-cost-ratio


def step_cost(T):
    return 3 - PAPER_SIZES[0] * PAPER_SIZES[1] / _n + 2 * T


hours = sum(PROFILES["paper"].epochs * epoch_s[c.optimizer] * step_cost(c.hparams.get("local_iters", 10)) / step_cost(10)
            for c in distinct.values() if c.optimizer in epoch_s) / 3600
glue("ablation_hours", f"{hours:.0f}" if len(epoch_s) == len(VARIANTS) else "(not measured yet)", display=False)

# %% tags=["hide-input"]
# NBVAL_IGNORE_OUTPUT
results = sweep([c for configs in ablations.values() for c in configs], progress=False, executor=executor)
print(f"{len(results)} runs: {sum(not r.skipped for r in results)} trained now, "
      f"{sum(r.skipped for r in results)} loaded from their result files")

# %% tags=["hide-input"]
def runs_of(configs):
    """Per-epoch records of ``configs`` (from their result files) with their hyper-parameters as columns."""
    return report.ablation_runs(load_runs(configs), VARIANTS)


final, show = report.final_by, report.shown


# %% [markdown]
# ## 1. Number of local iterations $T$

# %% tags=["hide-input"]
t_runs = runs_of(ablations["local iterations T"])
t_final = final(t_runs, ["variant", "hp_local_iters"])
m_final = t_final[t_final["variant"] == "LocoProp-M"]
glue("best_local_iters_m", str(int(m_final.loc[m_final["final_train_loss"].idxmin(), "hp_local_iters"])), display=False)
t_same = final(runs_of(ablations["local iterations T, same total step"]), ["variant", "hp_local_iters"])
both = pd.concat([t_final.assign(ν="fixed ν"), t_same.assign(ν="ν·Σ fixed")])
fig, axes = plt.subplots(1, 2, figsize=(12, 4.4))
sns.lineplot(data=both, x="hp_local_iters", y="final_train_loss", hue="variant", style="ν", marker="o", ax=axes[0],
             palette=VARIANT_COLORS)
sns.lineplot(data=t_runs[t_runs["variant"] == "LocoProp-M"], x="epoch", y="train_loss", hue="hp_local_iters",
             palette="viridis", ax=axes[1], errorbar=None, legend="full")
log_x_axis(axes[0], LOCAL_ITERS)
axes[0].set(xlabel="local iterations $T$ (log scale)", ylabel="final train loss (nats / image)", title="final train loss")
axes[0].legend(title=None)
log_loss_axis(axes[1])
axes[1].set(xlabel="epoch", ylabel="train loss (nats / image, log scale)", title="LocoProp-M, train loss per epoch")
axes[1].legend(title="$T$", fontsize="small")
fig.tight_layout()
plt.show()

# %% [markdown]
# **Figure 1.** Left: final training loss (after the last epoch) against the number $T$ of local
# iterations per step (log scale), for LocoProp-S and LocoProp-M, one seed. Changing $T$ also
# changes the total step: local step $j$ uses $\nu\max(1 - j/T, 0.25)$, so a step moves the weights
# by about $\nu\sum_{j<T}\max(1 - j/T, 0.25)$ (1, 1.5, 3.05, 5.7, 11 for $T$ = 1, 2, 5, 10, 20) times
# the local gradient. Solid lines keep $\nu$ fixed (the two effects confounded); dashed lines rescale
# $\nu$ so that this sum stays that of $T = 10$, which isolates the effect of more local iterations
# at the same total step. Right: LocoProp-M's training loss per epoch for each $T$ at fixed $\nu$.
# Each step costs one forward and one backward pass plus $T$ local iterations per layer: about
# $(3 + 2T)/(3 + 20)$ of a $T = 10$ step in matrix products (the benchmark page measures the cost of
# each $T$ at paper scale on a quiet machine).

# %% tags=["hide-input"]
report.corner(show(both.rename(columns={"hp_local_iters": "T"}).set_index(["variant", "ν", "T"]).sort_index()))

# %% [markdown]
# ## 2. Activation learning rate $\gamma$

# %% tags=["hide-input"]
g_runs = runs_of(ablations["activation learning rate γ"])
g_final = final(g_runs, ["variant", "hp_gamma"])
gm_final = g_final[g_final["variant"] == "LocoProp-M"]
glue("best_gamma_m", f"{gm_final.loc[gm_final['final_train_loss'].idxmin(), 'hp_gamma']:g}", display=False)
fig, ax = plt.subplots(figsize=(6, 4))
sns.lineplot(data=g_final, x="hp_gamma", y="final_train_loss", hue="variant", marker="o", ax=ax,
             palette=VARIANT_COLORS)
log_x_axis(ax, GAMMAS)
ax.set(xlabel="activation learning rate $\\gamma$ (log scale)", ylabel="final train loss (nats / image)",
       title="final train loss against $\\gamma$")
ax.legend(title=None)
fig.tight_layout()
plt.show()

# %% [markdown]
# **Figure 2.** Final training loss against the activation learning rate $\gamma$ (log scale),
# the other settings at the paper's values. The first local gradient is $\gamma$ times the
# BackProp gradient, so with an adaptive inner optimizer $\gamma$ matters mostly through how far
# the targets move: for LocoProp-S through RMSProp's $\epsilon$ and initial state, for LocoProp-M
# also through the saturation of the transfer functions.

# %% tags=["hide-input"]
report.corner(show(g_final.rename(columns={"hp_gamma": "γ"}).set_index(["variant", "γ"])))

# %% [markdown]
# ## 3. Inner optimizer of LocoProp-M

# %% tags=["hide-input"]
i_runs = runs_of(ablations["inner optimizer"])
i_runs["inner optimizer"] = i_runs["hp_inner"].map(INNER_LABELS)
i_final = final(i_runs, ["inner optimizer", "lr_inner"])
glue("best_inner", str(i_final.loc[i_final["final_train_loss"].idxmin(), "inner optimizer"]), display=False)
best_lr = i_final.loc[i_final.groupby("inner optimizer")["final_train_loss"].idxmin(), ["inner optimizer", "lr_inner"]]
best_runs = i_runs.merge(best_lr, on=["inner optimizer", "lr_inner"])
fig, axes = plt.subplots(1, 2, figsize=(11, 4))
sns.lineplot(data=i_final, x="lr_inner", y="final_train_loss", hue="inner optimizer", marker="o", ax=axes[0],
             palette=INNER_COLORS)
sns.lineplot(data=best_runs, x="epoch", y="train_loss", hue="inner optimizer", ax=axes[1], errorbar=None,
             palette=INNER_COLORS)
axes[0].set(xscale="log", xlabel="inner learning rate $\\nu$ (log scale)", ylabel="final train loss (nats / image, log scale)",
            title="final train loss against $\\nu$")
log_loss_axis(axes[0])
# A diverged run (see the table) would squash the curves: cap the axis at twice the initial loss.
axes[0].set_ylim(top=min(axes[0].get_ylim()[1], 2 * i_runs.loc[i_runs["epoch"] == 0, "train_loss"].max()))
log_loss_axis(axes[1])
axes[1].set(xlabel="epoch", ylabel="train loss (nats / image, log scale)", title="best $\\nu$ of each, per epoch")
for ax in axes:
    ax.legend(title=None, fontsize="small")
fig.tight_layout()
plt.show()

# %% [markdown]
# **Figure 3.** LocoProp-M with three inner optimizers. Left: final training loss against the inner
# learning rate $\nu$ (both log scale; a run that diverged is cut off at twice the initial loss,
# its row in the table says so). Right: training loss per epoch at each inner optimizer's best
# $\nu$. The inner learning rates are not comparable across optimizers: gradient descent's step is
# $\nu$ times the (batch-summed) local gradient, Adam's and RMSProp's are normalised. Where an
# optimizer's best $\nu$ is the largest one tried, a larger one may do better still: the grids are
# small, to keep the ablation cheap.

# %% tags=["hide-input"]
report.corner(show(i_final.rename(columns={"lr_inner": "ν"}).set_index(["inner optimizer", "ν"])))

# %% [markdown]
# ## 4. Precision: bfloat16 against float32, at the paper's scale
#
# `--precision bf16` takes the matrix products of the forward and backward passes (and LocoProp's
# local products) in bfloat16, with float32 weights, optimizer state and accumulation. Does it change
# the curves? Each optimizer with its tuned setting trains 10 epochs of the paper protocol (1
# warm-up epoch, then linear decay; Fashion-MNIST, seed 0) once in float32 and once in bfloat16, and
# the relative difference of the final training loss is compared with 0.5 %, the limit under which
# this package offers bfloat16 for an optimizer (`locoprop.experiments.bf16_check`).

# %% tags=["hide-input"]
from locoprop.optim import OPTIMIZERS
from locoprop.experiments.bf16_check import CHECK, TOLERANCE, check_configs

check_dataset = dataset if profile == "paper" else "fashion-mnist"
configs = check_configs(check_dataset, device=device if profile == "paper" else "cpu", results_dir=results_dir)
if profile == "paper":
    sweep(configs, progress=False, executor=executor)
check = load_runs(configs)
if check.empty:
    glue("bf16_max_difference", "not measured yet", display=False)
    print("no precision-check runs yet: `python -m locoprop sweep --tuned --profile paper --dataset fashion-mnist "
          f"--optimizer ... --epochs {CHECK['epochs']} --warmup-epochs {CHECK['warmup_epochs']} --grid precision=fp32,bf16`")
else:
    table, rel, lines = report.precision_check(check, TOLERANCE)
    glue("bf16_max_difference", f"{rel.abs().max():.2%}", display=False)
    display(report.corner(table))
    missing = "" if len(table) == len(OPTIMIZERS) else \
        ("; an optimizer missing from the table has no check runs yet at its tuned setting and the current "
         "revision of its arithmetic (`locoprop.optim.REVISIONS`)")
    display(Markdown(f"Seed {CHECK['seed']}, one run per precision, on {', '.join(sorted(set(check['device'])))}"
                     f"{missing}."))
    display(Markdown("\n\n".join(lines)))

# %% [markdown]
# What bfloat16 buys on the machine of these results: the time per step of every optimizer in each
# precision, from the latest `python -m locoprop bench` report that timed both with the default settings
# (not `--tuned`: it times K-FAC and Shampoo with their inverses every step and every 5). Only the matrix
# products get faster, so an optimizer gains about the ratio of the two matrix-product ceilings when
# its step is all products, and less the more of its step is elementwise work (LocoProp's transfer
# functions, residuals and inner RMSProp) or float32 linear algebra (K-FAC's inverses, Shampoo's
# roots).

# %% tags=["hide-input"]
bench_root = (Path(results_dir) if results_dir else default_results_dir()) / "bench"
both = bench_report(bench_root, tuned=False, precisions=("fp32", "bf16"))
if both is None:
    print("no benchmark report with both precisions yet: `python -m locoprop bench --device cpu`")
else:
    ceilings = both["matmul_ceilings_tflops"]
    display(report.corner(report.precision_speed(both)))
    prov = both["provenance"]
    display(Markdown(
        f"Measured by `python -m locoprop bench` on {prov['device_name']}, torch {prov['versions']['torch']}, "
        f"{prov['started'][:10]}. Matrix-product ceilings on LocoProp's shapes: {ceilings['fp32']:.3f} TFLOP/s in "
        f"float32 and {ceilings['bf16']:.3f} in bfloat16, a ratio of {ceilings['bf16'] / ceilings['fp32']:.2f}: "
        "about what a step made only of matrix products gains."))
