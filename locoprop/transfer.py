r"""Transfer functions and their matching losses.

A transfer function :math:`f = \nabla F` is the gradient of a convex function :math:`F`, its
*convex integral*.  The matching loss of :math:`f` is the Bregman divergence of :math:`F`,

.. math::

    D_F(\hat a, a) = F(\hat a) - F(a) - f(a)^\top (\hat a - a)
                   = F(\hat a) + F^*(y) - y^\top \hat a, \qquad y = f(a),

which is convex in :math:`\hat a`, zero at :math:`\hat a = a`, and has gradient
:math:`\nabla_{\hat a} D_F = f(\hat a) - y`.  LocoProp-M minimises it over a layer's weights with
:math:`\hat a = XW` (linear in :math:`W`), so the local problem is convex in the weights.

=========  =========================  ==============================================================
name       :math:`F(a)`               :math:`D_F(\hat a, a)`
=========  =========================  ==============================================================
identity   :math:`\|a\|^2/2`          :math:`\|\hat a - a\|^2/2`
sigmoid    softplus :math:`a`         :math:`\mathrm{KL}(\mathrm{Bern}(y)\,\|\,\mathrm{Bern}(\sigma(\hat a)))`
tanh       :math:`\log\cosh a`        :math:`\mathrm{KL}(\mathrm{Bern}(\tfrac{1+y}{2})\,\|\,\mathrm{Bern}(\tfrac{1+\tanh\hat a}{2}))`
relu       :math:`\max(a,0)^2/2`      :math:`\tfrac12(\mathrm{relu}\,\hat a - y)^2 + y\,\mathrm{relu}(-\hat a)`
softmax    logsumexp :math:`a`        :math:`\mathrm{KL}(y\,\|\,\mathrm{softmax}\,\hat a)`
=========  =========================  ==============================================================

(The ReLU row holds for :math:`y \ge 0`.)  Every function here acts on the last dimension and
returns one value per row (example).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F_
from torch import Tensor, nn

__all__ = ["Transfer", "TRANSFERS", "get_transfer", "transfer_of_module", "matching_loss"]


def _sum(x: Tensor) -> Tensor:
    return x.sum(dim=-1)


@dataclass(frozen=True)
class Transfer:
    """A transfer function ``f``, its convex integral ``F`` and its derivative ``f'``.

    ``elementwise`` is False for softmax, whose Jacobian is not diagonal.
    """

    name: str
    f: Callable[[Tensor], Tensor]
    integral: Callable[[Tensor], Tensor]  # F, summed over the last dimension
    derivative: Callable[[Tensor], Tensor] | None  # f'(a), elementwise; None if not elementwise
    elementwise: bool = True

    def bregman(self, a_hat: Tensor, a: Tensor) -> Tensor:
        r"""Matching loss :math:`D_F(\hat a, a) = F(\hat a) - F(a) - f(a)^\top(\hat a - a)`, per row."""
        return self.integral(a_hat) - self.integral(a) - _sum(self.f(a) * (a_hat - a))

    def local_loss(self, a_hat: Tensor, y: Tensor) -> Tensor:
        r""":math:`F(\hat a) - y^\top\hat a` per row: the matching loss up to a term constant in
        :math:`\hat a`, defined for any target ``y`` (also outside the range of ``f``).
        Its gradient is :math:`f(\hat a) - y`."""
        return self.integral(a_hat) - _sum(y * a_hat)


def _tanh_derivative(a: Tensor) -> Tensor:
    return 1.0 - torch.tanh(a).square()


def _sigmoid_derivative(a: Tensor) -> Tensor:
    s = torch.sigmoid(a)
    return s * (1.0 - s)


TRANSFERS: dict[str, Transfer] = {
    "identity": Transfer("identity", lambda a: a, lambda a: 0.5 * _sum(a.square()), torch.ones_like),
    "sigmoid": Transfer("sigmoid", torch.sigmoid, lambda a: _sum(F_.softplus(a)), _sigmoid_derivative),
    # log cosh a = softplus(2a) - a - log 2, written so that it does not overflow.
    "tanh": Transfer(
        "tanh", torch.tanh, lambda a: _sum(F_.softplus(2 * a) - a - math.log(2.0)), _tanh_derivative
    ),
    "relu": Transfer(
        "relu", torch.relu, lambda a: 0.5 * _sum(torch.relu(a).square()), lambda a: (a > 0).to(a.dtype)
    ),
    "softmax": Transfer(
        "softmax", lambda a: torch.softmax(a, dim=-1), lambda a: torch.logsumexp(a, dim=-1), None, False
    ),
}

_MODULE_NAMES = {nn.Identity: "identity", nn.Sigmoid: "sigmoid", nn.Tanh: "tanh", nn.ReLU: "relu"}


def get_transfer(name: str) -> Transfer:
    """The transfer function called ``name`` (one of :data:`TRANSFERS`)."""
    try:
        return TRANSFERS[name]
    except KeyError:
        raise ValueError(
            f"unknown activation {name!r}: choose one of {sorted(TRANSFERS)}"
        ) from None


def transfer_of_module(module: nn.Module) -> Transfer | None:
    """The transfer function an activation module applies, or None if ``module`` is none we know."""
    if isinstance(module, nn.Softmax):
        if module.dim not in (-1, None, 1):
            raise ValueError(f"{module!r}: only softmax over the last dimension is supported")
        return TRANSFERS["softmax"]
    for cls, name in _MODULE_NAMES.items():
        if type(module) is cls:
            return TRANSFERS[name]
    return None


def matching_loss(name: str, a_hat: Tensor, a: Tensor) -> Tensor:
    """Matching loss of the transfer function ``name`` between ``a_hat`` and ``a``, per row."""
    return get_transfer(name).bregman(a_hat, a)
