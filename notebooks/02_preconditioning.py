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
# # LocoProp as a preconditioner
#
# For one layer with augmented input $\bar X = [X, 1]$, pre-activation $A$ and
# $G = \partial\mathcal L/\partial A$, LocoProp moves the weights $\bar W = [W, b]$ towards a local
# target by $T$ steps of a local optimiser. With the proximal term
# $\tfrac1{2\eta}\|\bar W - \bar W^t\|^2$ the LocoProp-S problem has the closed-form solution
#
# $$
# \Delta\bar W^\star_S = -\gamma\, G^\top\bar X\,\big(\bar X^\top\bar X + \eta^{-1} I\big)^{-1},
# $$
#
# the gradient $\nabla_{\bar W}\mathcal L = G^\top\bar X$ preconditioned by the damped second
# moment of the layer's input. In this layout (PyTorch's: one row per output unit) the input-side
# matrix $C = \bar X^\top\bar X + \eta^{-1}I$ acts on the gradient from the right, and $T$ steps of
# gradient descent with constant step $\nu$, started from rest at $\bar W^t$, give the truncated
# Neumann series
#
# $$
# \Delta\bar W_T = -\nu\gamma\,\nabla_{\bar W}\mathcal L\sum_{j<T}(I - \nu C)^j .
# $$
#
# The first step is BackProp, and the iterates move from the gradient direction to the
# preconditioned one as $T$ grows. LocoProp-M has no closed form; its exact (implicit) solution is
# the fixed point
#
# $$
# \begin{aligned}
# \Delta\bar W^\star_M = -\eta\,\big(&f(A + \bar X\Delta\bar W^{\star\top}_M)\\
# &- f(A) + \gamma G\big)^\top\bar X .
# \end{aligned}
# $$
#
# This notebook checks both statements on a real layer of the autoencoder, for one batch of data,
# using `locoprop.optim.locoprop.closed_form_s`, `implicit_m` and `local_iterates`. Both are
# statements about gradient descent started from rest; the last section shows what the inner
# optimizer that the benchmark runs (TensorFlow 1 RMSProp whose state persists across outer steps,
# no proximal term) does instead, with `replay_local_iterations`.
#
# :::{admonition} Run it yourself
# :class: tip
#
# This page is the jupytext notebook
# {download}`notebooks/02_preconditioning.py <02_preconditioning.py>`, executed with papermill into
# {download}`notebooks/02_preconditioning.ipynb <02_preconditioning.ipynb>` (also offered by the download button at
# the top of the page). From the repository root:
#
# ```bash
# python -m locoprop reproduce --profile smoke --notebook 02_preconditioning
# python -m locoprop reproduce --profile paper --dataset fashion-mnist --device cpu \
#     --notebook 02_preconditioning
# ```
#
# or with papermill itself: `jupytext --to ipynb -o - notebooks/02_preconditioning.py | papermill -
# out.ipynb --cwd notebooks -p profile paper -p dataset fashion-mnist`. Both profiles do the same
# computation on one batch of training images: the smoke profile on scikit-learn's digits (batch
# 100, the 64-128-64-32-8-32-64-128-64 autoencoder), about 20 seconds on a 2-core CPU; the paper
# profile on Fashion-MNIST or MNIST (`--dataset mnist`; the image file must be present or
# downloadable, see {doc}`../book/reproduce`) with batch 1000 and the paper's
# 784-1000-500-250-30-250-500-1000-784 autoencoder, about 4 minutes on a 2-core CPU (the notebook
# computes on one thread).
# :::

# %% tags=["parameters", "remove-cell"]
profile = "smoke"
dataset = "digits"
device = "cpu"

# %% tags=["hide-input"]
import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
import torch
import torch.nn.functional as F

from locoprop import make_optimizer, models
from locoprop.experiments import data
from locoprop.capture import LayerCapture
from locoprop.optim.locoprop import closed_form_s, implicit_m, local_iterates, replay_local_iterations
from locoprop.experiments.config import DEFAULT_SIZES, PROFILES

sns.set_theme(context="notebook", style="whitegrid", font_scale=1.35)
torch.manual_seed(0)
if device == "cpu":
    # Small problems: one thread is as fast, and the numbers do not depend on the core count.
    torch.set_num_threads(1)

# The analysis: one batch of the profile's size, the dataset's autoencoder (as the benchmark
# trains it), its third linear layer, the paper's gamma.  The proximal weight eta is set relative
# to the largest eigenvalue of the layer's input second moment (1/eta = damping * lambda_max), and
# the local step is nu = 1 / lambda_max(C), so that local gradient descent converges.
settings = dict(sizes=DEFAULT_SIZES[dataset], batch_size=PROFILES[profile].batch_size, layer=2, max_steps=1000)
gamma, damping = 10.0, 1e-2
print(f"profile={profile} dataset={dataset} device={device}")
print(f"autoencoder {'-'.join(map(str, settings['sizes']))}, batch {settings['batch_size']}, "
      f"gamma={gamma}, damping={damping}")

# %% [markdown]
# ## One batch through the autoencoder
#
# One forward and one backward pass of the reconstruction loss record, for every linear layer,
# its input $X$, pre-activation $A$ and $G$ (`locoprop.capture.LayerCapture`, the view LocoProp
# and K-FAC share).

# %%
x = data.load(dataset, "train", device=device, subset=settings["batch_size"])
model = models.deep_autoencoder(settings["sizes"], activation="tanh", seed=0).to(device)
capture = LayerCapture(model, output_activation="sigmoid")
loss = models.reconstruction_loss(model(x), x)
loss.backward()
layers = pd.DataFrame(
    [(k.index, k.module.in_features, k.module.out_features, k.transfer.name) for k in capture.layers],
    columns=["layer", "inputs", "outputs", "transfer"],
).set_index("layer")
print(f"batch of {x.shape[0]} images, loss {loss.item():.2f} nats/image")
layers


# %% [markdown]
# ## LocoProp-S and LocoProp-M iterates on one layer
#
# For the chosen layer we compute the exact LocoProp-S displacement, the exact (implicit)
# LocoProp-M displacement, the BackProp direction $-\nabla_{\bar W}\mathcal L$ read from the
# model's `.grad`, and the displacements after $T = 1, 2, \dots$ local gradient-descent steps of
# both variants. Everything is done in float64.

# %% tags=["hide-input"]
def augmented_gradient(layer):
    """The BackProp gradient of [W, b] as the model's .grad holds it."""
    return torch.cat([layer.module.weight.grad, layer.module.bias.grad[:, None]], dim=1).double()


def input_scale(layer):
    """lambda_max of the augmented input second moment [X, 1]^T [X, 1]."""
    inputs = layer.inputs.double()
    augmented = torch.cat([inputs, torch.ones_like(inputs[:, :1])], dim=1)
    return torch.linalg.matrix_norm(augmented, ord=2).item() ** 2


def compare(a, b):
    """Cosine similarity and relative distance ||a - b|| / ||b|| of two displacements."""
    a, b = a.flatten(), b.flatten()
    return F.cosine_similarity(a, b, dim=0).item(), ((a - b).norm() / b.norm()).item()


# %%
layer = capture.layers[settings["layer"]]
X, A, G = layer.inputs.double(), layer.preact.double(), layer.grad.double()
lam_max = input_scale(layer)
eta = 1.0 / (damping * lam_max)
nu = 1.0 / (lam_max + 1.0 / eta)
backprop = -augmented_gradient(layer)

exact = {
    "S": closed_form_s(X, G, gamma, eta),
    "M": implicit_m(layer.transfer, X, A, G, gamma, eta),
}
iterates = {
    variant: local_iterates(variant, layer.transfer, X, A, G, gamma, nu, settings["max_steps"], eta)
    for variant in ("S", "M")
}
print(f"layer {layer.index}: {layer.module.in_features} -> {layer.module.out_features}, {layer.transfer.name}; "
      f"lambda_max = {lam_max:.4g}, 1/eta = {1 / eta:.4g}, nu = {nu:.4g}")

rows = []
for variant in ("S", "M"):
    for T, step in enumerate(iterates[variant], start=1):
        cos_exact, dist_exact = compare(step, exact[variant])
        cos_bp, _ = compare(step, backprop)
        rows.append({"variant": f"LocoProp-{variant}", "T": T, "cosine to exact solution": cos_exact,
                     "relative distance to exact solution": dist_exact, "cosine to BackProp": cos_bp})
curves = pd.DataFrame(rows)

# %% tags=["hide-input"]
long = curves.melt(id_vars=["variant", "T"], var_name="measure", value_name="value")
grid = sns.relplot(
    data=long, x="T", y="value", hue="variant", col="measure", kind="line",
    height=3.6, aspect=1.1, linewidth=2.2, facet_kws={"sharey": False},
)
grid.set(xscale="log")
grid.set_titles("{col_name}")
grid.set_axis_labels("local iterations $T$", "")
grid.axes.flat[1].set_yscale("log")
sns.move_legend(grid, "upper center", bbox_to_anchor=(0.5, 0.0), ncol=2, title=None)
grid.figure.suptitle(f"Local iterates on layer {layer.index} ({layer.module.in_features}→"
                     f"{layer.module.out_features}, {layer.transfer.name}), {dataset}", y=1.04)
plt.show()

# %% [markdown]
# **Figure 1.** Displacement of the layer's weights after $T$ local gradient-descent steps (constant
# step $\nu$, started from rest, with the proximal term),
# compared with the exact solution of the local problem (left: cosine similarity; middle:
# relative distance $\|\Delta\bar W_T - \Delta\bar W^\star\|/\|\Delta\bar W^\star\|$, log scale) and
# with the BackProp direction $-\nabla_{\bar W}\mathcal L$ (right), for LocoProp-S (closed form)
# and LocoProp-M (implicit solution). At $T = 1$ both variants take exactly the BackProp step
# (cosine 1 on the right); as $T$ grows the iterates turn away from the gradient towards the
# preconditioned solution and converge to it.

# %% [markdown]
# ## The numbers
#
# Cosine similarities and relative distances at a few values of $T$ (rounded to 4 decimals;
# this table is checked when the notebook is re-run as a regression test).

# %%
checkpoints = [T for T in (1, 2, 5, 10, 100, 1000) if T <= settings["max_steps"]]
curves[curves["T"].isin(checkpoints)].set_index(["variant", "T"]).round(4)

# %% [markdown]
# ## Every layer: how far is the exact solution from the gradient?
#
# For every layer of the autoencoder (same batch, same relative damping), the cosine similarity
# of the exact LocoProp-S and LocoProp-M displacements with the BackProp direction and with each
# other.

# %%
rows = []
for k in capture.layers:
    Xk, Ak, Gk = k.inputs.double(), k.preact.double(), k.grad.double()
    eta_k = 1.0 / (damping * input_scale(k))
    s_k = closed_form_s(Xk, Gk, gamma, eta_k)
    m_k = implicit_m(k.transfer, Xk, Ak, Gk, gamma, eta_k)
    bp_k = -augmented_gradient(k)
    rows.append({
        "layer": k.index, "shape": f"{k.module.in_features}→{k.module.out_features}",
        "transfer": k.transfer.name,
        "cos(S*, BackProp)": compare(s_k, bp_k)[0],
        "cos(M*, BackProp)": compare(m_k, bp_k)[0],
        "cos(M*, S*)": compare(m_k, s_k)[0],
    })
per_layer = pd.DataFrame(rows).set_index("layer")
per_layer.round(4)

# %% [markdown]
# **Reading the table.** A cosine near 1 means the preconditioner barely changes the gradient's
# direction; small values mean that the exact local solution is far from a (rescaled) BackProp
# step. For the linear code layer the two variants coincide (identity transfer: LocoProp-M *is*
# LocoProp-S), which the last column confirms.

# %% [markdown]
# ## The inner optimizer that runs
#
# Everything above is about plain gradient descent with a constant step, started from rest at
# $\bar W^t$. The LocoProp of the benchmark (`make_optimizer("locoprop-m")` and `"locoprop-s"`,
# the official notebook's settings) solves the local problems differently: $T = 10$ steps of
# TensorFlow 1 RMSProp (decay 0.9, momentum 0.999, $\epsilon = 10^{-5}$, second moment started at
# one) with step sizes $\nu\max(1 - j/T, 1/4)$, $\nu = 10^{-5}$, $\gamma = 10$, no proximal term,
# and the optimizer's state (second moment and momentum buffer) carried from one outer step to the
# next. To see what that changes, each variant first trains the same autoencoder (same
# initialisation) for a few outer steps at constant $\nu$ on the following batches of the training
# split; then, on the batch above, `replay_local_iterations` replays the $T$ local iterations that
# the next outer step takes on the same layer, in three ways: with the state carried over (what
# `step()` does, checked below), with the same inner optimizer started from rest, and with gradient
# descent at the same step sizes.

# %%
warm_steps = 10
batch = settings["batch_size"]
x_warm = data.load(dataset, "train", device=device, subset=(warm_steps + 1) * batch)[batch:]
inner_runs, rows = {}, []
for variant in ("S", "M"):
    net = models.deep_autoencoder(settings["sizes"], activation="tanh", seed=0).to(device)
    opt = make_optimizer(f"locoprop-{variant.lower()}", net)  # the paper's settings
    for i in range(warm_steps):
        xb = x_warm[i * batch:(i + 1) * batch]
        opt.zero_grad()
        models.reconstruction_loss(net(xb), xb).backward()
        opt.step()
    opt.zero_grad()
    models.reconstruction_loss(net(x), x).backward()
    probe = opt.capture.layers[settings["layer"]]
    gradient = augmented_gradient(probe)
    runs = {
        "RMSProp, state carried over": replay_local_iterations(opt, settings["layer"]),
        "RMSProp from rest": replay_local_iterations(opt, settings["layer"], fresh_state=True),
        "gradient descent from rest": replay_local_iterations(opt, settings["layer"], inner="sgd"),
    }
    before = torch.cat([probe.module.weight, probe.module.bias[:, None]], dim=1).detach().clone()
    opt.step()
    after = torch.cat([probe.module.weight, probe.module.bias[:, None]], dim=1).detach()
    print(f"LocoProp-{variant}: the replay with the carried state reproduces step() exactly: "
          f"{torch.equal(after - before, runs['RMSProp, state carried over'][-1])}")
    sgd_step = opt.param_groups[settings["layer"]]["lr"] * opt.param_groups[settings["layer"]]["gamma"] * gradient.norm()
    for inner_name, steps in runs.items():
        for j, step in enumerate(steps, start=1):
            rows.append({"variant": f"LocoProp-{variant}", "inner optimizer": inner_name, "j": j,
                         "cosine to BackProp": compare(step.double(), -gradient)[0],
                         "size / one SGD step": (step.double().norm() / sgd_step.double()).item()})
inner_curves = pd.DataFrame(rows)

# %% tags=["hide-input"]
long = inner_curves.melt(id_vars=["variant", "inner optimizer", "j"], var_name="measure", value_name="value")
grid = sns.relplot(
    data=long, x="j", y="value", hue="inner optimizer", style="variant", col="measure", kind="line",
    markers=True, height=3.8, aspect=1.2, linewidth=2.2, facet_kws={"sharey": False},
)
grid.set_titles("{col_name}")
grid.set_axis_labels("local iteration $j$", "")
grid.axes.flat[1].set_yscale("log")
grid.axes.flat[0].set_ylim(0.0, 1.05)
sns.move_legend(grid, "upper center", bbox_to_anchor=(0.45, 0.0), ncol=2, title=None)
grid.figure.suptitle(f"The paper's inner optimizer on layer {probe.index}, after {warm_steps} outer steps, "
                     f"{dataset}", y=1.04)
plt.show()

# %% [markdown]
# **Figure 2.** Displacement of the layer's weights after local iteration $j$ of the next outer step,
# for the paper's settings, compared with the BackProp direction $-\nabla_{\bar W}\mathcal L$ of
# that step (left: cosine similarity) and with one SGD step of learning rate $\nu\gamma$ (right:
# norm ratio, log scale). Gradient descent from rest takes exactly the BackProp step at $j = 1$
# (cosine 1, ratio 1), as {prf:ref}`thm-first-step` says. RMSProp from rest divides the first
# gradient elementwise by $\sqrt{0.9 + 0.1\,g^2 + \epsilon}$: for small gradients that is a
# BackProp step about $1/\sqrt{0.9} \approx 1.05$ times longer, and its momentum (0.999) adds up
# the following steps. With the state carried over from earlier outer steps, as in the benchmark,
# the momentum buffer dominates: the first local step is not a BackProp step, neither in direction
# nor in size. The local problems of an outer step are still started from the current weights and
# their first local *gradient* is still $\gamma\nabla_{\bar W}\mathcal L$; what changes is the
# step the optimizer makes of it.

# %%
inner_curves[inner_curves["j"].isin([1, 2, 5, 10])].set_index(["variant", "inner optimizer", "j"]).round(4)
