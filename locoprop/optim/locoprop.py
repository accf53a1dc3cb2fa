r"""LocoProp: BackProp enhanced by local loss optimisation (Amid, Anil & Warmuth, AISTATS 2022).

One forward and one backward pass of the global loss :math:`\mathcal L` give every linear layer
:math:`k` its input :math:`X_{k-1}`, pre-activation :math:`A_k` and :math:`G_k = \partial\mathcal L/\partial A_k`
(see :mod:`locoprop.capture`).  Each layer then moves its weights :math:`\bar W_k = [W_k, b_k]` towards
a local target, independently of the other layers (parallel semantics), by :math:`T` steps of an
inner optimizer on its local loss

* LocoProp-S: :math:`\tfrac12\|\bar X\bar W^\top - \tilde A\|^2` with target :math:`\tilde A = A - \gamma G`;
* LocoProp-M: :math:`\sum_b D_F(\bar x_b\bar W^\top, a^\dagger_b)` (the matching loss of the layer's
  transfer function, :mod:`locoprop.transfer`) with target :math:`Y^\dagger = f(A) - \gamma G`;

plus, optionally, the proximal term :math:`\tfrac1{2\eta}\|\bar W - \bar W^t\|^2`.  Here
:math:`\bar X = [X, 1]`.  Local gradients are batch sums:
:math:`\nabla_{\bar W} = \delta^\top\bar X + \eta^{-1}(\bar W - \bar W^t)` with :math:`\delta = \hat A - \tilde A`
(S) or :math:`f(\hat A) - Y^\dagger` (M), so the first local gradient is exactly :math:`\gamma\nabla_{\bar W}\mathcal L`.
Local step :math:`j = 0..T-1` uses the learning rate :math:`\nu\max(1 - j/T, \text{lr\_floor})`.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..capture import CapturedLayer, LayerCapture
from ..transfer import Transfer
from .tf_rmsprop import TFRMSProp

__all__ = [
    "LocoProp",
    "VARIANTS",
    "local_target",
    "local_residual",
    "closed_form_s",
    "local_iterates",
    "implicit_m",
]

VARIANTS = ("M", "S")
INNER_OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "tf-rmsprop": TFRMSProp,
    "sgd": torch.optim.SGD,
    "adam": torch.optim.Adam,
    "rmsprop": torch.optim.RMSprop,
    "adagrad": torch.optim.Adagrad,
}


def local_target(variant: str, transfer: Transfer, preact: Tensor, grad: Tensor, gamma: float) -> Tensor:
    r"""The layer's target: :math:`A - \gamma G` (S) or :math:`f(A) - \gamma G` (M)."""
    base = preact if variant == "S" else transfer.f(preact)
    return base - gamma * grad


def local_residual(variant: str, transfer: Transfer, preact_hat: Tensor, target: Tensor) -> Tensor:
    r""":math:`\delta = \partial(\text{local loss})/\partial\hat A`: :math:`\hat A - \tilde A` (S), :math:`f(\hat A) - Y^\dagger` (M)."""
    return (preact_hat if variant == "S" else transfer.f(preact_hat)) - target


def _augment(inputs: Tensor) -> Tensor:
    return torch.cat([inputs, torch.ones_like(inputs[:, :1])], dim=1)


def closed_form_s(inputs: Tensor, grad: Tensor, gamma: float, eta: float) -> Tensor:
    r"""Exact LocoProp-S displacement of :math:`\bar W = [W, b]` (shape d_out × (d_in + 1)):

    :math:`\Delta\bar W = -\gamma\, G^\top\bar X(\bar X^\top\bar X + \eta^{-1}I)^{-1}`,
    the gradient :math:`G^\top\bar X` preconditioned by the damped input second moment.
    """
    x = _augment(inputs)
    gram = x.T @ x + torch.eye(x.shape[1], dtype=x.dtype, device=x.device) / eta
    return -gamma * torch.linalg.solve(gram, x.T @ grad).T


def local_iterates(
    variant: str,
    transfer: Transfer,
    inputs: Tensor,
    preact: Tensor,
    grad: Tensor,
    gamma: float,
    lr: float,
    steps: int,
    eta: float | None = None,
) -> list[Tensor]:
    r"""Displacements :math:`\bar W^{(j)} - \bar W^t`, :math:`j = 1..\text{steps}`, of plain local gradient descent.

    For LocoProp-S with constant step :math:`\nu` and :math:`C = \bar X^\top\bar X + \eta^{-1}I` this is the
    truncated Neumann series :math:`-\nu\gamma\sum_{i<j}(I-\nu C)^i\,\nabla\mathcal L`.
    """
    x = _augment(inputs)
    target = local_target(variant, transfer, preact, grad, gamma)
    displacement = torch.zeros(grad.shape[1], x.shape[1], dtype=x.dtype, device=x.device)
    out = []
    for _ in range(steps):
        delta = local_residual(variant, transfer, preact + x @ displacement.T, target)
        step = delta.T @ x
        if eta is not None:
            step = step + displacement / eta
        displacement = displacement - lr * step
        out.append(displacement)
    return out


def implicit_m(
    transfer: Transfer,
    inputs: Tensor,
    preact: Tensor,
    grad: Tensor,
    gamma: float,
    eta: float,
    max_iter: int = 500,
) -> Tensor:
    r"""Exact LocoProp-M displacement: the minimiser of the proximal local problem, i.e. the fixed point

    :math:`\Delta\bar W = -\eta\,\big(f(A + \bar X\Delta\bar W^\top) - f(A) + \gamma G\big)^\top\bar X`

    (an implicit update: the transfer function is evaluated at the new weights).  Solved by L-BFGS
    on the strictly convex objective :math:`\sum_b F(\hat a_b) - y^\dagger_b\cdot\hat a_b + \tfrac1{2\eta}\|\Delta\bar W\|^2`.
    """
    x = _augment(inputs).double()
    a, g = preact.double(), grad.double()
    target = local_target("M", transfer, a, g, gamma)
    displacement = torch.zeros(g.shape[1], x.shape[1], dtype=torch.float64, device=x.device, requires_grad=True)
    solver = torch.optim.LBFGS(
        [displacement], lr=1.0, max_iter=max_iter, tolerance_grad=1e-12, tolerance_change=1e-15,
        history_size=50, line_search_fn="strong_wolfe",
    )

    def objective():
        solver.zero_grad()
        a_hat = a + x @ displacement.T
        loss = transfer.local_loss(a_hat, target).sum() + displacement.square().sum() / (2 * eta)
        loss.backward()
        return loss

    with torch.enable_grad():
        solver.step(objective)
    return displacement.detach().to(preact.dtype)


class LocoProp(torch.optim.Optimizer):
    r"""LocoProp-M (``variant="M"``, default) or LocoProp-S for an ``nn.Sequential`` MLP.

    Use it like any optimizer: ``zero_grad()``, forward, ``loss.backward()``, ``step()``.

    Args:
        model: ``nn.Sequential`` of ``nn.Linear`` layers and activation modules.
        lr: inner learning rate :math:`\nu` (an lr scheduler may change it).
        variant: ``"M"`` (matching loss of each transfer function) or ``"S"`` (squared loss on
            pre-activations).
        gamma: activation learning rate :math:`\gamma` (step of the targets).
        local_iters: number :math:`T` of local iterations per step.
        inner: ``"tf-rmsprop"`` (:class:`TFRMSProp`, the paper's), ``"sgd"``, ``"adam"``,
            ``"rmsprop"``, ``"adagrad"`` (the ``torch.optim`` classes) or any ``torch.optim.Optimizer``
            class; its state (per parameter) is kept across steps.
        inner_kwargs: keyword arguments of the inner optimizer (other than ``lr``).
        eta: weight :math:`\eta` of the proximal term :math:`\tfrac1{2\eta}\|\bar W-\bar W^t\|^2`;
            None leaves it out (as the official code does).
        lr_floor: local step :math:`j` uses :math:`\nu\max(1 - j/T, \text{lr\_floor})`; 0.25 in the paper.
        output_activation: transfer function applied by the loss to the model's output (e.g.
            ``"sigmoid"`` for logits trained with sigmoid cross-entropy).

    Defaults reproduce the official notebook's LocoProp-M.
    """

    def __init__(
        self,
        model: nn.Module,
        lr: float = 1e-5,
        variant: str = "M",
        gamma: float = 10.0,
        local_iters: int = 10,
        inner: str | type[torch.optim.Optimizer] = "tf-rmsprop",
        inner_kwargs: dict[str, Any] | None = None,
        eta: float | None = None,
        lr_floor: float = 0.25,
        output_activation: str | None = None,
    ):
        if variant not in VARIANTS:
            raise ValueError(f"unknown variant {variant!r}: use 'M' (matching losses) or 'S' (squared loss)")
        if not lr >= 0.0:
            raise ValueError(f"invalid lr={lr}: the inner learning rate must be >= 0")
        if not gamma > 0.0:
            raise ValueError(f"invalid gamma={gamma}: the activation learning rate must be > 0")
        if isinstance(local_iters, bool) or not isinstance(local_iters, int) or local_iters < 1:
            raise ValueError(f"invalid local_iters={local_iters!r}: T must be an integer >= 1")
        if eta is not None and not eta > 0.0:
            raise ValueError(f"invalid eta={eta}: the proximal weight must be > 0, or None to leave it out")
        if not 0.0 <= lr_floor <= 1.0:
            raise ValueError(f"invalid lr_floor={lr_floor}: it must lie in [0, 1]")
        if isinstance(inner, str):
            if inner not in INNER_OPTIMIZERS:
                raise ValueError(f"unknown inner optimizer {inner!r}: use one of {sorted(INNER_OPTIMIZERS)} "
                                 "or a torch.optim.Optimizer class")
            inner = INNER_OPTIMIZERS[inner]
        if not (isinstance(inner, type) and issubclass(inner, torch.optim.Optimizer)):
            raise ValueError(f"invalid inner={inner!r}: use one of {sorted(INNER_OPTIMIZERS)} or a torch.optim.Optimizer class")
        self.variant = variant
        self.capture = LayerCapture(model, output_activation)
        groups = [{"params": layer.params} for layer in self.capture.layers]
        super().__init__(groups, dict(lr=lr, gamma=gamma, local_iters=local_iters, eta=eta, lr_floor=lr_floor))
        # one inner optimizer, one parameter group per layer; its state persists across steps
        self.inner = inner([{"params": layer.params} for layer in self.capture.layers], lr=lr, **(inner_kwargs or {}))

    @torch.no_grad()
    def step(self, closure=None):
        """One LocoProp step from the forward/backward pass just recorded."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.capture.require_backward()
        # Parallel semantics: every target comes from the recorded pass, before any layer moves.
        layers, groups = self.capture.layers, self.param_groups
        targets = [
            local_target(self.variant, layer.transfer, layer.preact, layer.grad, group["gamma"])
            for layer, group in zip(layers, groups)
        ]
        global_grads = [p.grad for p in self._params()]
        starts = [[p.detach().clone() for p in layer.params] if group["eta"] is not None else None
                  for layer, group in zip(layers, groups)]
        # Local iteration j of every layer, then one inner step over all layers (one multi-tensor
        # update instead of one per layer; the layers' problems stay independent).
        for j in range(max(group["local_iters"] for group in groups)):
            for layer, group, inner_group, target, start in zip(layers, groups, self.inner.param_groups, targets, starts):
                T = group["local_iters"]
                if j < T:
                    self._local_gradient(layer, target, start, group["eta"])
                else:  # this layer has done its T iterations
                    for p in layer.params:
                        p.grad = None
                inner_group["lr"] = group["lr"] * max(1.0 - j / T, group["lr_floor"])
            self.inner.step()
        for p, g in zip(self._params(), global_grads):
            p.grad = g
        self.capture.clear()
        return loss

    def _params(self) -> list[nn.Parameter]:
        return [p for layer in self.capture.layers for p in layer.params]

    def _local_gradient(self, layer: CapturedLayer, target: Tensor, start: list[Tensor] | None, eta: float | None) -> None:
        r"""Set ``.grad`` of the layer's weight and bias to :math:`\delta^\top\bar X + \eta^{-1}(\bar W - \bar W^t)`."""
        module, x = layer.module, layer.inputs
        delta = local_residual(self.variant, layer.transfer, nn.functional.linear(x, module.weight, module.bias), target)
        module.weight.grad = delta.T @ x
        if module.bias is not None:
            module.bias.grad = delta.sum(dim=0)
        if start is not None:
            for p, p0 in zip(layer.params, start):
                p.grad.add_(p - p0, alpha=1.0 / eta)

    def state_dict(self) -> dict[str, Any]:
        """The outer state plus the inner optimizer's state (one parameter group per layer)."""
        state = super().state_dict()
        state["inner"] = self.inner.state_dict()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        inner_state = state_dict.pop("inner", None)
        if inner_state is None:
            raise ValueError("this state_dict has no inner-optimizer state: was it saved by a LocoProp optimizer?")
        super().load_state_dict(state_dict)
        self.inner.load_state_dict(inner_state)
