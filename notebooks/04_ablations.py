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
# The smoke runs train in about a minute and a half on a 2-core CPU (86 s measured with no result
# files present); finished runs are loaded, not retrained. At paper scale the page trains
# {glue:text}`ablation_runs` runs of the full protocol (100 epochs each): about
# {glue:text}`ablation_hours` hours of training on the 2-core CPU of the paper-scale results,
# from their measured LocoProp epoch and a cost proportional to the matrix products of a step,
# $3 + 2T$ (evaluation not included). A GPU, or a subset of the ablations, is the practical way.
# :::

# %% tags=["parameters", "remove-cell"]
profile = "smoke"
dataset = "digits"
device = "cpu"
seeds = [0]
results_dir = None

# %% tags=["hide-input"]
import dataclasses
import json
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from IPython.display import Markdown, display
from myst_nb import glue

from locoprop.optim.locoprop import step_sum
from locoprop.experiments.plotting import LABELS, PALETTE, log_loss_axis, log_x_axis
from locoprop.experiments.results import load_results, load_runs
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
hours = sum(PROFILES["paper"].epochs * epoch_s[c.optimizer] * (3 + 2 * c.hparams.get("local_iters", 10)) / (3 + 2 * 10)
            for c in distinct.values() if c.optimizer in epoch_s) / 3600
glue("ablation_hours", f"{hours:.0f}" if len(epoch_s) == len(VARIANTS) else "(not measured yet)", display=False)

# %% tags=["hide-input"]
# NBVAL_IGNORE_OUTPUT
results = sweep([c for configs in ablations.values() for c in configs], progress=False)
print(f"{len(results)} runs: {sum(not r.skipped for r in results)} trained now, "
      f"{sum(r.skipped for r in results)} loaded from their result files")

# %% tags=["hide-input"]
def runs_of(configs):
    """Per-epoch records of ``configs`` (from their result files) with their hyper-parameters as columns."""
    df = load_runs(configs)
    hp = pd.DataFrame([json.loads(h) for h in df["hparams"]], index=df.index)
    df = df.join(hp[[k for k in ("local_iters", "gamma", "inner") if k in hp]].rename(columns=lambda k: f"hp_{k}"))
    df["lr_inner"] = hp["lr"]
    df["variant"] = df["optimizer"].map(VARIANTS)
    return df


def final(df, by):
    """Last epoch of each run, averaged over seeds, with the mean time per training epoch."""
    last = df.sort_values("epoch").groupby("run_id").tail(1)
    per_epoch = df[df["epoch"] > 0].groupby("run_id")["epoch_time"].mean().rename("s / epoch")
    last = last.join(per_epoch, on="run_id")
    out = last.groupby(by, as_index=False).agg(
        final_train_loss=("train_loss", "mean"), final_test_loss=("test_loss", "mean"),
        s_per_epoch=("s / epoch", "mean"), epochs=("epoch", "max"), diverged=("status", lambda s: int((s == "diverged").sum())),
    )
    return out


def show(table):
    """Losses to 4 significant digits, times to 3 (a regression-checked table)."""
    table = table.copy()
    for col in ("final_train_loss", "final_test_loss"):
        table[col] = table[col].map(lambda v: f"{v:.4g}")
    table["s_per_epoch"] = table["s_per_epoch"].map(lambda v: f"{v:.3g}")
    return table.rename(columns={"final_train_loss": "final train loss", "final_test_loss": "final test loss",
                                 "s_per_epoch": "s / epoch"})


# %% [markdown]
# ## 1. Number of local iterations $T$

# %% tags=["hide-input"]
t_runs = runs_of(ablations["local iterations T"])
t_final = final(t_runs, ["variant", "hp_local_iters"])
t_same = final(runs_of(ablations["local iterations T, same total step"]), ["variant", "hp_local_iters"])
both = pd.concat([t_final.assign(ν="fixed ν"), t_same.assign(ν="ν·Σ fixed")])
fig, axes = plt.subplots(1, 2, figsize=(12, 4.4))
sns.lineplot(data=both, x="hp_local_iters", y="final_train_loss", hue="variant", style="ν", marker="o", ax=axes[0],
             palette=VARIANT_COLORS)
sns.lineplot(data=t_runs[t_runs["variant"] == "LocoProp-M"], x="epoch", y="train_loss", hue="hp_local_iters",
             palette="viridis", ax=axes[1], errorbar=None, legend="full")
log_x_axis(axes[0], LOCAL_ITERS)
axes[0].set(xlabel="local iterations $T$", ylabel="final train loss (nats / image)", title="final train loss")
axes[0].legend(title=None)
log_loss_axis(axes[1])
axes[1].set(xlabel="epoch", ylabel="train loss (nats / image)", title="LocoProp-M, train loss per epoch")
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
# Each step costs one forward and one backward pass plus $T$ local iterations per layer (the time
# per epoch is in the table below).

# %% tags=["hide-input"]
show(both.rename(columns={"hp_local_iters": "T"}).set_index(["variant", "ν", "T"]).sort_index())

# %% [markdown]
# ## 2. Activation learning rate $\gamma$

# %% tags=["hide-input"]
g_runs = runs_of(ablations["activation learning rate γ"])
g_final = final(g_runs, ["variant", "hp_gamma"])
fig, ax = plt.subplots(figsize=(6, 4))
sns.lineplot(data=g_final, x="hp_gamma", y="final_train_loss", hue="variant", marker="o", ax=ax,
             palette=VARIANT_COLORS)
log_x_axis(ax, GAMMAS)
ax.set(xlabel="activation learning rate $\\gamma$", ylabel="final train loss (nats / image)",
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
show(g_final.rename(columns={"hp_gamma": "γ"}).set_index(["variant", "γ"]))

# %% [markdown]
# ## 3. Inner optimizer of LocoProp-M

# %% tags=["hide-input"]
i_runs = runs_of(ablations["inner optimizer"])
i_runs["inner optimizer"] = i_runs["hp_inner"].map(INNER_LABELS)
i_final = final(i_runs, ["inner optimizer", "lr_inner"])
best_lr = i_final.loc[i_final.groupby("inner optimizer")["final_train_loss"].idxmin(), ["inner optimizer", "lr_inner"]]
best_runs = i_runs.merge(best_lr, on=["inner optimizer", "lr_inner"])
fig, axes = plt.subplots(1, 2, figsize=(11, 4))
sns.lineplot(data=i_final, x="lr_inner", y="final_train_loss", hue="inner optimizer", marker="o", ax=axes[0],
             palette=INNER_COLORS)
sns.lineplot(data=best_runs, x="epoch", y="train_loss", hue="inner optimizer", ax=axes[1], errorbar=None,
             palette=INNER_COLORS)
axes[0].set(xscale="log", xlabel="inner learning rate $\\nu$", ylabel="final train loss (nats / image)",
            title="final train loss against $\\nu$")
log_loss_axis(axes[0])
# A diverged run (see the table) would squash the curves: cap the axis at twice the initial loss.
axes[0].set_ylim(top=min(axes[0].get_ylim()[1], 2 * i_runs.loc[i_runs["epoch"] == 0, "train_loss"].max()))
log_loss_axis(axes[1])
axes[1].set(xlabel="epoch", ylabel="train loss (nats / image)", title="best $\\nu$ of each, per epoch")
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
show(i_final.rename(columns={"lr_inner": "ν"}).set_index(["inner optimizer", "ν"]))

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
    sweep(configs, progress=False)
check = load_runs(configs)
if check.empty:
    print("no precision-check runs yet: `python -m locoprop sweep --tuned --profile paper --dataset fashion-mnist "
          f"--optimizer ... --epochs {CHECK['epochs']} --warmup-epochs {CHECK['warmup_epochs']} --grid precision=fp32,bf16`")
else:
    last = check.sort_values("epoch").groupby("run_id").tail(1)
    table = last.pivot_table(index="optimizer", columns="precision", values="train_loss")
    table.index = table.index.map(LABELS)
    rel = (table["bf16"] - table["fp32"]) / table["fp32"]
    display(pd.DataFrame({
        "fp32 final train loss": table["fp32"].map(lambda v: f"{v:.3f}"),
        "bf16 final train loss": table["bf16"].map(lambda v: f"{v:.3f}"),
        "relative difference": rel.map(lambda v: f"{v:+.3%}"),
        f"within {TOLERANCE:.1%}": rel.abs().map(lambda v: "yes" if v <= TOLERANCE else "no"),
    }))
    missing = "" if len(table) == len(OPTIMIZERS) else \
        "; an optimizer missing from the table has not been checked yet (its tuning is not finished)"
    display(Markdown(f"Seed {CHECK['seed']}, one run per precision, on {', '.join(sorted(set(check['device'])))}"
                     f"{missing}."))
    within = [name for name, v in rel.items() if abs(v) <= TOLERANCE]
    outside = [name for name, v in rel.items() if abs(v) > TOLERANCE]
    lines = [f"**bfloat16 is offered for** {', '.join(within) or 'none'}; **not for** {', '.join(outside) or 'none'}."]

    def biggest_rise(curve):
        """(epoch before, loss before, loss after) of the largest one-epoch rise of a training curve."""
        losses = curve.sort_values("epoch")["train_loss"].to_numpy()
        k = int((losses[1:] - losses[:-1]).argmax())
        return k, losses[k], losses[k + 1]

    for label in outside:  # a bf16 curve that rose (by more than 1% in an epoch) where the fp32 one did not
        name = {v: k for k, v in LABELS.items()}[label]
        curves = {p: c for p, c in check[(check["optimizer"] == name) & (check["epoch"] > 0)].groupby("precision")}
        (k, before, after), (_, b32, a32) = biggest_rise(curves["bf16"]), biggest_rise(curves["fp32"])
        if after > 1.01 * before and a32 <= 1.01 * b32:
            lines.append(f"The bfloat16 run of {label} rose from {before:.1f} after epoch {k + 1} to {after:.1f} after "
                         f"epoch {k + 2} and ended at {table.loc[label, 'bf16']:.1f}, while the float32 run did not rise "
                         f"by 1% in any epoch: at its tuned learning rate the method is near the edge of stability, and "
                         f"the other rounding tipped it over.")
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
both = None
for path in sorted(bench_root.glob("*.json")):  # file names sort by time: the last one wins
    report = json.loads(path.read_text())
    if {"fp32", "bf16"} <= {row.get("precision", "fp32") for row in report["rows"]} \
            and not report["settings"].get("tuned"):
        both = report
if both is None:
    print("no benchmark report with both precisions yet: `python -m locoprop bench --device cpu`")
else:
    rows = pd.DataFrame(both["rows"])
    rows["label"] = [LABELS[o] + label[len(o):] for o, label in zip(rows["optimizer"], rows["label"])]
    speed = rows.pivot_table(index="label", columns="precision", values="step_ms", sort=False)
    ceilings = both["matmul_ceilings_tflops"]
    display(pd.DataFrame({
        "float32 ms / step": speed["fp32"].map(lambda v: f"{v:.0f}"),
        "bfloat16 ms / step": speed["bf16"].map(lambda v: f"{v:.0f}"),
        "speed-up": (speed["fp32"] / speed["bf16"]).map(lambda v: f"{v:.2f}×"),
    }).rename_axis("optimizer (paper protocol, batch 1000)"))
    prov = both["provenance"]
    display(Markdown(
        f"Measured by `python -m locoprop bench` on {prov['device_name']}, torch {prov['versions']['torch']}, "
        f"{prov['started'][:10]}. Matrix-product ceilings on LocoProp's shapes: {ceilings['fp32']:.3f} TFLOP/s in "
        f"float32 and {ceilings['bf16']:.3f} in bfloat16, a ratio of {ceilings['bf16'] / ceilings['fp32']:.2f}: "
        "about what a step made only of matrix products gains."))
