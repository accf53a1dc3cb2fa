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
# # The local losses induced by the transfer functions
#
# :::{admonition} At a glance
# :class: note
#
# * **Needs** the package only: no data, no training, a CPU.
# * **Runs** in {{ exec_01_local_losses_duration }} (its last execution, at the
#   {{ exec_01_local_losses_profile }} profile, kernel start included; see {doc}`../book/status`).
# * **Finds** that the matching losses of sigmoid and tanh are quadratic only near their target and
#   grow linearly away from it, so that their gradients stay bounded, while the squared loss's gradient
#   grows without bound; that ReLU's loss does not distinguish predictions below zero when the target is
#   negative; and that at zero logits the output layer's loss is $784 \ln 2 =$
#   {glue:text}`zero_logit_loss:.1f` nats per image.
# * **Next**: {doc}`02_preconditioning` runs the local iterations on these losses and shows how they
#   turn BackProp's step into a preconditioned one.
# :::
#
# LocoProp-M fits each layer's pre-activation $\hat a = XW$ to a target with the *matching loss*
# of the layer's transfer function $f = \nabla F$, the Bregman divergence
#
# $$
# \begin{aligned}
# D_F(\hat a, a) &= F(\hat a) - F(a) - f(a)\,(\hat a - a),\\
# \nabla_{\hat a} D_F(\hat a, a) &= f(\hat a) - f(a).
# \end{aligned}
# $$
#
# It is convex in $\hat a$, hence in $W$, and it is the squared loss $\tfrac12(\hat a - a)^2$ when
# $f$ is the identity (LocoProp-S). This notebook draws $D_F(\hat a, a)$ as a function of the
# prediction $\hat a$ for a few targets $a$, for the transfer functions of the autoencoder
# (tanh hidden layers, sigmoid output) and for ReLU, beside the squared loss. All losses come from
# `locoprop.transfer`.
#
# :::{admonition} Run it yourself
# :class: tip
#
# This page is the jupytext notebook
# {download}`notebooks/01_local_losses.py <01_local_losses.py>`, executed with papermill into
# {download}`notebooks/01_local_losses.ipynb <01_local_losses.ipynb>` (also offered by the download button at
# the top of the page). From the repository root:
#
# ```bash
# python -m locoprop reproduce --profile smoke --notebook 01_local_losses
# python -m locoprop reproduce --profile paper --notebook 01_local_losses
# ```
#
# or with papermill itself: `jupytext --to ipynb -o - notebooks/01_local_losses.py | papermill -
# out.ipynb --cwd notebooks -p profile smoke`. The notebook needs no data and trains nothing, so both
# profiles do the same computation.
# :::

# %% tags=["parameters", "remove-cell"]
profile = "smoke"
dataset = "digits"
device = "cpu"

# %% tags=["remove-cell"]
from locoprop.experiments.reproduce import check_parameters

check_parameters(profile=profile, dataset=dataset, device=device)

# %% tags=["hide-input"]
import math

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
import torch
from myst_nb import glue

from locoprop.models import reconstruction_loss
from locoprop.transfer import get_transfer

sns.set_theme(context="notebook", style="whitegrid", font_scale=1.35)
torch.set_default_dtype(torch.float64)
print(f"profile={profile}; this notebook needs no data and no training (dataset={dataset}, device={device} unused)")

# %%
names = {"identity": "squared loss (identity)", "sigmoid": "sigmoid", "tanh": "tanh", "relu": "ReLU"}
targets = [-2.0, -0.5, 0.5, 2.0]
a_hat = torch.linspace(-4.0, 4.0, 401)

rows = []
for name, label in names.items():
    transfer = get_transfer(name)
    for a in targets:
        a_vec = torch.full_like(a_hat, a)
        loss = transfer.bregman(a_hat[:, None], a_vec[:, None])
        grad = transfer.f(a_hat) - transfer.f(a_vec)
        rows.append(pd.DataFrame({
            "transfer": label, "target a": a, "prediction â": a_hat.numpy(),
            "matching loss": loss.numpy(), "gradient": grad.numpy(),
        }))
curves = pd.concat(rows, ignore_index=True)

# %% [markdown]
# ## The losses
#
# Each panel shows $D_F(\hat a, a)$ against $\hat a$, one curve per target $a$ (marked by a dot on
# the horizontal axis, where the loss is zero).

# %% tags=["hide-input"]
grid = sns.relplot(
    data=curves, x="prediction â", y="matching loss", hue="target a", col="transfer",
    kind="line", col_wrap=2, height=3.4, aspect=1.3, linewidth=2.2, palette="viridis",
    facet_kws={"sharey": False},
)
grid.set_axis_labels("prediction $\\hat a$", "matching loss $D_F(\\hat a, a)$")
grid.set_titles("{col_name}")
for ax in grid.axes.flat:
    ax.set_ylim(-0.2, 8.0)
    ax.scatter(targets, [0.0] * len(targets), c=sns.color_palette("viridis", len(targets)), zorder=3, s=18)
grid.figure.suptitle("Matching losses of the transfer functions", y=1.04)
plt.show()

# %% [markdown]
# **Figure 1.** The matching loss $D_F(\hat a, a)$ of each transfer function as a function of the
# prediction $\hat a$, for targets $a \in \{-2, -0.5, 0.5, 2\}$ (dots). The squared loss (identity
# transfer, LocoProp-S) is the same parabola around every target. The sigmoid and tanh losses are
# parabola-like only near the target and grow *linearly* away from it, with slopes set by how far
# $f(a)$ is from each end of the range of $f$ (for sigmoid: $\sigma(a)$ to the left, $1 - \sigma(a)$
# to the right). A prediction that overshoots a saturated target further into saturation is
# hardly penalised (the yellow curve, $a = 2$, is almost flat for $\hat a > 2$), because the
# loss measures the mismatch of the *outputs* $f(\hat a)$ and $f(a)$. The ReLU loss is zero for
# every $\hat a \le 0$ when the target is negative (all such predictions give the output 0, so the
# curves for $a = -2$ and $a = -0.5$ coincide) and grows linearly to the left of a positive target.

# %% [markdown]
# ## Their gradients
#
# The gradient $f(\hat a) - f(a)$ is what a local optimisation step back-propagates into the
# layer's weights.

# %% tags=["hide-input"]
grid = sns.relplot(
    data=curves, x="prediction â", y="gradient", hue="target a", col="transfer",
    kind="line", col_wrap=2, height=3.4, aspect=1.3, linewidth=2.2, palette="viridis",
    facet_kws={"sharey": False},
)
grid.set_axis_labels("prediction $\\hat a$", "gradient $f(\\hat a) - f(a)$")
grid.set_titles("{col_name}")
for ax in grid.axes.flat:
    ax.axhline(0.0, color="0.4", lw=0.8)
grid.figure.suptitle("Gradients of the matching losses", y=1.04)
plt.show()

# %% [markdown]
# **Figure 2.** The gradient of each matching loss with respect to the prediction,
# $f(\hat a) - f(a)$. For the squared loss it grows without bound; for sigmoid and tanh it is
# bounded by the width of the range of $f$ (1 for sigmoid, 2 for tanh), so the local problem of a
# saturating layer never produces huge steps; for ReLU it is the constant $-\max(a, 0)$ wherever
# $\hat a < 0$ (zero for a negative target).

# %% [markdown]
# ## A few values
#
# The table lists $D_F(\hat a, a)$ at a few points $(\hat a, a)$ (a regression check of
# `locoprop.transfer` when this notebook is re-run as a test).

# %%
check_points = [(-3.0, -2.0), (0.0, 0.5), (1.0, -0.5), (3.0, 2.0), (-1.0, 2.0)]
table = pd.DataFrame(
    {
        label: [
            float(get_transfer(name).bregman(torch.tensor([[ah]]), torch.tensor([[a]])))
            for ah, a in check_points
        ]
        for name, label in names.items()
    },
    index=[f"â={ah:+.1f}, a={a:+.1f}" for ah, a in check_points],
)
table.rename_axis(columns="point").round(6)  # the index's name in the header's corner: one header row

# %% [markdown]
# The output layer's matching loss is the sigmoid cross-entropy itself, and at zero logits
# ($\sigma(a) = 1/2$) it is $\ln 2$ per pixel whatever the image. For the $D = 784$ pixels of the
# paper's autoencoder that is the value below (nats per image), the scale of the initial losses in
# {doc}`../book/deviations`; computed with the package's loss, `locoprop.models.reconstruction_loss`.

# %%
pixels = 784
images = torch.rand(8, pixels, generator=torch.Generator().manual_seed(0))  # any images in [0, 1]
zero_logit_loss = reconstruction_loss(torch.zeros(8, pixels), images).item()
assert math.isclose(zero_logit_loss, pixels * math.log(2), rel_tol=1e-9)
glue("zero_logit_loss", zero_logit_loss, display=False)
print(f"sigmoid cross-entropy at zero logits, {pixels} pixels: {zero_logit_loss:.1f} nats per image "
      f"(= {pixels} ln 2)")
