r"""The deep autoencoder of the paper and its losses.

The autoencoder (Hinton & Salakhutdinov 2006) as the official LocoProp notebook defines it:
784-1000-500-250-30-250-500-1000-784, tanh hidden layers, a **linear** 30-unit code layer, and an
output layer that emits logits (its sigmoid lives in the loss).  Weights *and* biases are drawn
Glorot-uniform as TensorFlow does: :math:`W \sim U(\pm\sqrt{6/(d_{in}+d_{out})})` and, since a 1-D
bias has fan-in = fan-out = :math:`d_{out}`, :math:`b \sim U(\pm\sqrt{3/d_{out}})`.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ACTIVATIONS", "PAPER_SIZES", "deep_autoencoder", "entropy_floor", "glorot_uniform_", "mean_image_loss", "mlp",
           "reconstruction_loss", "squared_error"]

PAPER_SIZES = (784, 1000, 500, 250, 30, 250, 500, 1000, 784)
_ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "sigmoid": nn.Sigmoid}
ACTIVATIONS = tuple(_ACTIVATIONS)  #: the hidden-layer transfer functions of :func:`mlp`


@torch.no_grad()
def glorot_uniform_(layer: nn.Linear, generator: torch.Generator | None = None) -> nn.Linear:
    """Glorot-uniform initialisation of a linear layer's weight and bias (TensorFlow's fans)."""
    d_out, d_in = layer.weight.shape
    layer.weight.uniform_(-math.sqrt(6.0 / (d_in + d_out)), math.sqrt(6.0 / (d_in + d_out)), generator=generator)
    if layer.bias is not None:
        layer.bias.uniform_(-math.sqrt(3.0 / d_out), math.sqrt(3.0 / d_out), generator=generator)
    return layer


def mlp(
    sizes: Sequence[int],
    activation: str = "tanh",
    linear_layers: Sequence[int] = (),
    seed: int | None = 0,
) -> nn.Sequential:
    """An ``nn.Sequential`` MLP with Glorot-uniform weights and biases.

    ``sizes`` lists the widths from input to output; every hidden layer is followed by
    ``activation`` except those whose index (0-based, counting linear layers) is in
    ``linear_layers``; the output layer has no activation (it emits logits).  ``seed`` makes
    the initialisation reproducible (None draws from the global generator).
    """
    if activation not in _ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}: choose one of {sorted(_ACTIVATIONS)}")
    if len(sizes) < 2 or any(int(d) < 1 for d in sizes):
        raise ValueError(f"sizes must list at least two positive widths, got {tuple(sizes)}")
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    modules: list[nn.Module] = []
    n_layers = len(sizes) - 1
    for k in range(n_layers):
        modules.append(glorot_uniform_(nn.Linear(sizes[k], sizes[k + 1]), generator))
        if k < n_layers - 1 and k not in linear_layers:
            modules.append(_ACTIVATIONS[activation]())
    return nn.Sequential(*modules)


def deep_autoencoder(
    sizes: Sequence[int] = PAPER_SIZES, activation: str = "tanh", seed: int | None = 0
) -> nn.Sequential:
    """The paper's autoencoder: ``activation`` on hidden layers, a linear code layer, logits out.

    The code layer is the narrowest hidden layer (30 units for the paper's sizes).
    """
    sizes = tuple(int(d) for d in sizes)
    hidden = sizes[1:-1]
    code_layer = hidden.index(min(hidden)) if hidden else -1
    return mlp(sizes, activation, linear_layers=(code_layer,), seed=seed)


def reconstruction_loss(logits: Tensor, x: Tensor) -> Tensor:
    r"""Sigmoid cross-entropy summed over pixels, averaged over the batch (nats per image).

    :math:`\mathcal L = \frac1B\sum_b\sum_i -x_{bi}\log\sigma(z_{bi}) - (1-x_{bi})\log(1-\sigma(z_{bi}))`.
    """
    return F.binary_cross_entropy_with_logits(logits, x, reduction="sum") / x.shape[0]


def squared_error(logits: Tensor, x: Tensor) -> Tensor:
    r"""Per-pixel squared error of the reconstruction :math:`\sigma(z)`: :math:`\mathrm{mean}\,(\sigma(z) - x)^2`."""
    return (torch.sigmoid(logits) - x).square().mean()


@torch.no_grad()
def entropy_floor(x: Tensor) -> float:
    r"""The lowest possible :func:`reconstruction_loss` on ``x``: the summed pixel entropy, in nats per image.

    :math:`\frac1B\sum_b\sum_i H(x_{bi})`, :math:`H(p) = -p\log p - (1-p)\log(1-p)` (:math:`0\log 0 = 0`),
    reached when :math:`\sigma(z) = x` exactly; computed in float64.
    """
    p = x.double()
    return float(-(torch.special.xlogy(p, p) + torch.special.xlogy(1 - p, 1 - p)).sum() / x.shape[0])


@torch.no_grad()
def mean_image_loss(x: Tensor, mean: Tensor | None = None) -> float:
    r""":func:`reconstruction_loss` of predicting the same image for every input, by default the mean image of ``x``.

    The best input-independent output: an autoencoder stuck here has learnt nothing about its input.
    Computed in float64 with the mean clamped to :math:`[10^{-12}, 1-10^{-12}]`.
    """
    p = x.double()
    m = (p.mean(dim=0) if mean is None else mean.double()).clamp(1e-12, 1 - 1e-12)
    return float(-(p * m.log() + (1 - p) * torch.log1p(-m)).sum() / x.shape[0])
