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

**Displacement form.**  Every local iteration takes :math:`\hat A` as :math:`A + \bar X(\bar W - \bar W^t)^\top`:
the pre-activation :math:`A` recorded in the forward pass plus a product of the (small) displacement
only, never as :math:`\bar X\bar W^\top` afresh.  Recomputing :math:`\hat A` would bury the first
residual :math:`\gamma G` (about :math:`10^{-2}` of :math:`A` at the paper's settings) in the rounding noise
of the product: relative :math:`2^{-8}` in bfloat16, :math:`2^{-11}` under TF32 (CUDA's
``allow_tf32``, ``torch.set_float32_matmul_precision("high")``), :math:`2^{-24}` in float32.  With the
displacement form the first residual is exactly :math:`\gamma G` in every precision, and later ones
carry the product's rounding only on the displacement.

**Gram form.**  LocoProp-S's residual is affine in the displacement, :math:`\delta = R_0 + \bar X\Delta^\top`
with :math:`R_0 = A - \tilde A` and :math:`\Delta = \bar W - \bar W^t`, so its local gradient is
:math:`R_0^\top\bar X + \Delta\,\bar X^\top\bar X`: the step forms :math:`\bar X^\top\bar X` and
:math:`R_0^\top\bar X` once (:math:`B d_{in}(d_{in} + d_{out})` multiply-adds for a batch of :math:`B`)
and each local iteration costs one :math:`d_{out}\times d_{in}\times d_{in}` product instead of two
:math:`B\times d_{in}\times d_{out}` ones.  A layer takes the Gram form when that costs fewer
multiply-adds over its :math:`T` iterations (:func:`gram_pays`; at the paper's batch of 1000 every
layer of the deep autoencoder does, about half the local products' work) and the products are
float32.  The first local gradient is :math:`R_0^\top\bar X` in both forms, computed the same way;
later ones differ from the displacement form's only by the order of the sums in the products.
LocoProp-M's residual :math:`f(\hat A) - Y^\dagger` is not affine: it keeps the displacement form.

**Precision of the local products** (``products``).  ``"float32"`` or ``"bfloat16"``: the two products
of an iteration (the displacement's and the gradient's) in that dtype, with float32 accumulation
(under ``torch.autocast`` the recorded :math:`A` is the forward product's output, upcast once).
Weights, gradients, targets and the inner optimizer's state stay float32.  A bfloat16 product sums
in float32 and rounds its result once to bfloat16 (see :mod:`locoprop.precision`; on CUDA the step
turns cuBLAS's bfloat16 partial sums off around its products).

**The step as one program.**  With the paper's inner optimizer (TF1-RMSProp) a step has a fixed
sequence of tensor operations that reads no number from the device and no Python number that
changes from step to step, so it can be compiled whole (``torch.compile(type(opt).step, fullgraph=True)``
called with ``opt``: an lr scheduler wraps ``opt.step`` in a function that Dynamo does not trace) or
captured in a CUDA graph (float32 products: around bfloat16 ones the step sets a CUDA backend flag,
see above): each layer's learning rate :math:`\nu` is a float64 0-dim tensor in its
parameter group (an lr scheduler updates it in place; :math:`\nu\max(1 - j/T, \text{lr\_floor})` is
formed on the device and rounded once to the weights' dtype, the same number the float arithmetic
gives); the local gradients are written into buffers allocated with the optimizer (``.grad`` keeps
the BackProp gradient); the inner state (:math:`s = 1`, :math:`m = 0`) is created with the optimizer;
and each local iteration updates all layers with one multi-tensor call per operation of
:func:`~locoprop.optim.tf_rmsprop.tf_rmsprop_update`.  Other inner optimizers run through their
``torch.optim`` step, which takes the layers' learning rates as Python numbers: one host read per
step.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from ..capture import CapturedLayer, LayerCapture
from ..precision import float32_accumulation
from ..transfer import Transfer
from .tf_rmsprop import TFRMSProp, tf_rmsprop_update
from .validation import (COUNT, POSITIVE, SIGNATURE_KEY, Rule, check_hparams, check_state_dict, guess_owner, is_number,
                         number, signature)

__all__ = [
    "LocoProp",
    "VARIANTS",
    "local_target",
    "local_residual",
    "gram_pays",
    "closed_form_s",
    "local_iterates",
    "implicit_m",
    "replay_local_iterations",
    "step_sum",
]

VARIANTS = ("M", "S")
#: Precision of the local products -> the dtype they are taken in (None: the weights' own).
PRODUCTS: dict[str, torch.dtype | None] = {"float32": None, "bfloat16": torch.bfloat16}
INNER_OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "tf-rmsprop": TFRMSProp,
    "sgd": torch.optim.SGD,
    "adam": torch.optim.Adam,
    "rmsprop": torch.optim.RMSprop,
    "adagrad": torch.optim.Adagrad,
}


def step_sum(local_iters: int, lr_floor: float = 0.25) -> float:
    r""":math:`\sum_{j<T}\max(1 - j/T, \text{lr\_floor})`: the sum of a step's local learning-rate factors.

    With plain gradient descent and a small :math:`\nu`, a step moves the weights by about
    :math:`\nu\gamma\,\text{step\_sum}(T)` times the BackProp gradient, so changing :math:`T` also changes
    the total step size unless :math:`\nu` is rescaled by ``step_sum(T_0) / step_sum(T)``.
    """
    return float(sum(max(1.0 - j / local_iters, lr_floor) for j in range(local_iters)))


def local_target(variant: str, transfer: Transfer, preact: Tensor, grad: Tensor, gamma: float) -> Tensor:
    r"""The layer's target: :math:`A - \gamma G` (S) or :math:`f(A) - \gamma G` (M)."""
    base = preact if variant == "S" else transfer.f(preact)
    return base - gamma * grad


def local_residual(variant: str, transfer: Transfer, preact_hat: Tensor, target: Tensor) -> Tensor:
    r""":math:`\delta = \partial(\text{local loss})/\partial\hat A`: :math:`\hat A - \tilde A` (S), :math:`f(\hat A) - Y^\dagger` (M)."""
    return (preact_hat if variant == "S" else transfer.f(preact_hat)) - target


def gram_pays(batch: int, d_in: int, d_out: int, local_iters: int) -> bool:
    r"""Whether the Gram form (see the module docstring) takes fewer multiply-adds than the displacement form
    for ``local_iters`` iterations of a :math:`d_{in} \to d_{out}` layer on a batch of ``batch`` rows:
    :math:`B d_{in}(d_{in} + d_{out}) + T d_{out} d_{in}^2 < 2 T B d_{in} d_{out}`."""
    return batch * d_in * (d_in + d_out) + local_iters * d_out * d_in**2 < 2 * local_iters * batch * d_in * d_out


class _GramTerms(NamedTuple):
    r"""What the Gram form of one layer's local gradient needs, formed once per step: :math:`X^\top X`,
    :math:`X^\top 1`, :math:`R_0^\top X` and :math:`R_0^\top 1` (:math:`X` the layer inputs, :math:`R_0` the first
    residual), and the batch size."""

    gram: Tensor
    input_sums: Tensor
    weight_grad: Tensor
    bias_grad: Tensor
    batch: int


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
    truncated Neumann series :math:`-\nu\gamma\,\nabla\mathcal L\sum_{i<j}(I-\nu C)^i`, with the gradient
    :math:`\nabla\mathcal L = G^\top\bar X` in this layout (d_out × (d_in + 1)), so :math:`C` acts on it
    from the right.  Gradient descent starts from rest at :math:`\bar W^t` with a constant step; for the
    inner optimizer that :class:`LocoProp` actually runs see :func:`replay_local_iterations`.
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


def _jacobian_product(transfer: Transfer, a_hat: Tensor, u: Tensor) -> Tensor:
    r"""Each row's Jacobian of :math:`f` at :math:`\hat a_b` times :math:`u_b`: :math:`f'(\hat a)\odot u`, or for softmax
    :math:`s\odot u - s\,(s^\top u)` with :math:`s = \mathrm{softmax}\,\hat a`."""
    if transfer.elementwise:
        return transfer.derivative(a_hat) * u
    if transfer.name != "softmax":
        raise ValueError(f"implicit_m: no Jacobian for the transfer function {transfer.name!r}")
    s = transfer.f(a_hat)
    return s * (u - (s * u).sum(dim=-1, keepdim=True))


def _jacobian_diagonal(transfer: Transfer, a_hat: Tensor) -> Tensor:
    """The diagonal of each row's Jacobian of :math:`f`: :math:`f'(\\hat a)`, or :math:`s(1 - s)` for softmax."""
    if transfer.elementwise:
        return transfer.derivative(a_hat)
    s = transfer.f(a_hat)
    return s * (1.0 - s)


def _conjugate_gradient(operator, rhs: Tensor, diagonal: Tensor, rtol: float, max_iter: int) -> Tensor:
    r"""Jacobi-preconditioned conjugate gradients for :math:`M d = \text{rhs}` (:math:`M` symmetric positive
    definite, given as ``operator``; ``diagonal`` > 0 its diagonal), stopped at :math:`\|r\| \le \text{rtol}\,\|\text{rhs}\|`."""
    d = torch.zeros_like(rhs)
    r = rhs.clone()
    z = r / diagonal
    p = z.clone()
    rz = (r * z).sum()
    stop = rtol * rhs.norm()
    for _ in range(max_iter):
        if r.norm() <= stop:
            break
        q = operator(p)
        alpha = rz / (p * q).sum()
        d.add_(alpha * p)
        r.sub_(alpha * q)
        z = r / diagonal
        rz, rz_old = (r * z).sum(), rz
        p = z + (rz / rz_old) * p
    return d


def implicit_m(
    transfer: Transfer,
    inputs: Tensor,
    preact: Tensor,
    grad: Tensor,
    gamma: float,
    eta: float,
    max_iter: int = 100,
) -> Tensor:
    r"""Exact LocoProp-M displacement: the minimiser of the proximal local problem, i.e. the fixed point

    :math:`\Delta\bar W = -\eta\,\big(f(A + \bar X\Delta\bar W^\top) - f(A) + \gamma G\big)^\top\bar X`

    (an implicit update: the transfer function is evaluated at the new weights), to machine precision.

    It is the zero of :math:`R(\Delta\bar W) = \Delta\bar W + \eta\,(f(\hat A) - Y^\dagger)^\top\bar X`,
    :math:`\hat A = A + \bar X\Delta\bar W^\top`, which is :math:`\eta` times the gradient of the strictly
    convex :math:`\sum_b F(\hat a_b) - y^\dagger_b\cdot\hat a_b + \tfrac1{2\eta}\|\Delta\bar W\|^2`.  Newton's
    method in float64 with the exact Jacobian :math:`I + \eta\sum_b J_b\otimes\bar x_b\bar x_b^\top`
    (:math:`J_b` the Jacobian of :math:`f` at :math:`\hat a_b`, diagonal for elementwise :math:`f`): each Newton
    system is solved matrix-free by Jacobi-preconditioned conjugate gradients (the Jacobian is symmetric
    positive definite, eigenvalues :math:`\ge 1`), and each step is halved until :math:`\|R\|_F` decreases
    (the Newton direction is a descent direction of :math:`\|R\|_F^2`).  It stops when
    :math:`\max|R| \le 4(B + d_{in} + 1)\,\epsilon\,\max S`, with :math:`\epsilon` the float64 machine epsilon and
    :math:`S = |\Delta\bar W| + \eta\,(|f(\hat A)| + |Y^\dagger| + |A| + |\bar X||\Delta\bar W|^\top)^\top|\bar X|`
    the size of the terms of :math:`R` and of the rounding errors of :math:`\hat A` (:math:`|f'| \le 1` for
    every transfer function here), i.e. when :math:`R` is at the level of its own rounding errors.
    Raises ``RuntimeError`` if that is not reached within ``max_iter`` Newton steps.
    """
    x = _augment(inputs).double()
    a, g = preact.double(), grad.double()
    target = local_target("M", transfer, a, g, gamma)
    batch, n = x.shape
    tol = 4 * (batch + n) * torch.finfo(torch.float64).eps
    x_abs, x_sq = x.abs(), x.square()

    def residual(w: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        a_hat = a + x @ w.T
        f_hat = transfer.f(a_hat)
        r = w + eta * (f_hat - target).T @ x
        scale = w.abs() + eta * (f_hat.abs() + target.abs() + a.abs() + x_abs @ w.abs().T).T @ x_abs
        return a_hat, r, scale.max()

    w = torch.zeros(g.shape[1], n, dtype=torch.float64, device=x.device)
    a_hat, r, scale = residual(w)
    first = float(r.norm())
    for step in range(max_iter + 1):
        relative = float(r.abs().max() / scale) if scale > 0 else 0.0
        if relative <= tol:
            return w.to(preact.dtype)
        if step == max_iter:
            break
        norm = float(r.norm())

        def jacobian(v: Tensor, a_hat=a_hat) -> Tensor:
            return v + eta * _jacobian_product(transfer, a_hat, x @ v.T).T @ x

        diagonal = 1.0 + eta * _jacobian_diagonal(transfer, a_hat).T @ x_sq
        # inexact Newton: forcing term min(0.1, |R|/|R_0|) (superlinear), at least 1e-12
        direction = _conjugate_gradient(jacobian, r, diagonal, max(min(0.1, norm / first), 1e-12), 10 * n * g.shape[1])
        t = 1.0
        while True:
            candidate = w - t * direction
            a_new, r_new, scale_new = residual(candidate)
            if float(r_new.norm()) <= (1.0 - 1e-4 * t) * norm:
                break
            t *= 0.5
            if t < 2.0 ** -40:
                raise RuntimeError(
                    f"implicit_m did not converge: Newton's method stalled after {step} steps at relative "
                    f"residual {relative:.1e} (tolerance {tol:.1e})"
                )
        w, a_hat, r, scale = candidate, a_new, r_new, scale_new
    raise RuntimeError(
        f"implicit_m did not converge: relative residual {relative:.1e} after max_iter={max_iter} Newton steps "
        f"(tolerance {tol:.1e}); raise max_iter"
    )


class LocoProp(torch.optim.Optimizer):
    r"""LocoProp-M (``variant="M"``, default) or LocoProp-S for an ``nn.Sequential`` MLP.

    Use it like any optimizer: ``zero_grad()``, forward, ``loss.backward()``, ``step()``: exactly one
    forward pass with gradients and one backward pass per step (gradient accumulation raises, see
    :mod:`locoprop.capture`).
    A parameter with ``requires_grad=False`` is left where it is, and a layer whose parameters are all
    frozen runs no local iterations.

    Args:
        model: ``nn.Sequential`` of ``nn.Linear`` layers and activation modules.
        lr: inner learning rate :math:`\nu`, a number or a 0-dim tensor; each layer's parameter group
            holds its own copy as a float64 0-dim tensor on the parameters' device, which an lr
            scheduler updates in place.
        variant: ``"M"`` (matching loss of each transfer function) or ``"S"`` (squared loss on
            pre-activations).
        gamma: activation learning rate :math:`\gamma` (step of the targets).
        local_iters: number :math:`T` of local iterations per step.
        inner: ``"tf-rmsprop"`` (:class:`TFRMSProp`, the paper's), ``"sgd"``, ``"adam"``,
            ``"rmsprop"``, ``"adagrad"`` (the ``torch.optim`` classes) or any ``torch.optim.Optimizer``
            class; its state (per parameter) is kept across steps.
        inner_kwargs: keyword arguments of the inner optimizer (other than ``lr``).
        eta: :math:`\eta` of the proximal term :math:`\tfrac1{2\eta}\|\bar W-\bar W^t\|^2` (its weight is :math:`1/(2\eta)`);
            None leaves it out (as the official code does).
        lr_floor: local step :math:`j` uses :math:`\nu\max(1 - j/T, \text{lr\_floor})`; 0.25 in the paper.
        products: ``"float32"`` or ``"bfloat16"``: the precision of the local iterations' matrix
            products (see the module docstring).
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
        products: str = "float32",
    ):
        check_hparams("LocoProp", dict(variant=variant, lr=lr, gamma=gamma, local_iters=local_iters, eta=eta,
                                       lr_floor=lr_floor, products=products, inner=inner, inner_kwargs=inner_kwargs), {
            "variant": Rule(lambda v: v in VARIANTS, "'M' (matching losses) or 'S' (squared loss)"),
            "lr": Rule(_is_lr, "a finite number >= 0 or a 0-dim tensor holding one (the inner learning rate)"),
            "gamma": POSITIVE.about("the activation learning rate"),
            "local_iters": COUNT.about("the number T of local iterations"),
            "eta": POSITIVE.or_none(
                "a finite number > 0 (the proximal weight), or None to leave the proximal term out"),
            "lr_floor": number(lambda v: 0 <= v <= 1, "a number in [0, 1]"),
            "products": Rule(lambda v: v in PRODUCTS, f"one of {', '.join(PRODUCTS)}"),
            "inner": Rule(lambda v: v in INNER_OPTIMIZERS if isinstance(v, str) else
                          isinstance(v, type) and issubclass(v, torch.optim.Optimizer),
                          f"one of {sorted(INNER_OPTIMIZERS)} or a torch.optim.Optimizer class"),
            "inner_kwargs": Rule(lambda v: v is None or isinstance(v, dict), "a dict of keyword arguments or None"),
        })
        inner = INNER_OPTIMIZERS[inner] if isinstance(inner, str) else inner
        self.variant = variant
        self.products = products
        self.capture = LayerCapture(model, output_activation)
        groups = [{"params": layer.params} for layer in self.capture.layers]
        lr_number = float(lr)
        super().__init__(groups, dict(lr=lr_number, gamma=gamma, local_iters=local_iters, eta=eta, lr_floor=lr_floor))
        params = self._params()
        self._device = params[0].device
        for group in self.param_groups:
            group["lr"] = self._lr_tensor(lr)
        # one inner optimizer, one parameter group per layer; its state persists across steps
        try:
            self.inner = inner([{"params": layer.params} for layer in self.capture.layers], lr=lr_number,
                               **(inner_kwargs or {}))
        except Exception:
            self.capture.remove()  # leave no hooks on the model of an optimizer that was not built
            raise
        self._multi_tensor = type(self.inner) is TFRMSProp  # the step of the module docstring
        if self._multi_tensor:
            for p in params:
                self.inner.init_state(p)
        # per layer (by its index in the model): the local gradients, and the weights at the step's start
        self._local_grads = [[torch.zeros_like(p) for p in layer.params] for layer in self.capture.layers]
        self._starts = [[torch.zeros_like(p) for p in layer.params] for layer in self.capture.layers]
        self._factors: tuple[tuple, Tensor] | None = None  # (hyper-parameters, lr factors), see _lr_table
        self._lr_factors()  # on the device now, not in the first step

    @torch.no_grad()
    def step(self, closure=None):
        """One LocoProp step from the forward/backward pass just recorded."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.capture.require_backward("LocoProp")
        # Parallel semantics: every target comes from the recorded pass, before any layer moves.
        layers, groups = self.capture.layers, self.param_groups
        targets = [
            local_target(self.variant, layer.transfer, layer.preact, layer.grad, group["gamma"])
            for layer, group in zip(layers, groups)
        ]
        low = PRODUCTS[self.products]
        torch._foreach_copy_([p0 for layer in layers for p0 in self._starts[layer.index]], self._params())
        low_inputs = [layer.inputs.to(low) for layer in layers] if low else [layer.inputs for layer in layers]
        grams = [self._gram_terms(layer, target, group["local_iters"])
                 for layer, target, group in zip(layers, targets, groups)]
        with float32_accumulation(self._device, enabled=low is not None):
            if self._multi_tensor:
                self._multi_tensor_iterations(targets, low_inputs, grams)
            else:
                self._inner_optimizer_iterations(targets, low_inputs, grams)
        self.capture.clear()
        return loss

    def _multi_tensor_iterations(self, targets: list[Tensor], low_inputs: list[Tensor],
                                 grams: list[_GramTerms | None]) -> None:
        """The local iterations with TF1-RMSProp: iteration j of every layer, then one multi-tensor
        update of all layers (the layers' problems stay independent)."""
        layers, groups = self.capture.layers, self.param_groups
        iters = [group["local_iters"] for group in groups]
        lrs = self._lr_table()
        hyper = [(g["decay"], g["momentum"], g["eps"]) for g in self.inner.param_groups]
        for j in range(max(iters)):
            batches: dict[tuple, list[list]] = {}  # one update per inner setting (normally one)
            for k, (layer, group) in enumerate(zip(layers, groups)):
                if j >= iters[k] or not any(p.requires_grad for p in layer.params):  # T done, or a frozen layer
                    continue
                grads = self._local_grads[layer.index]
                self._local_gradient(layer, targets[k], self._starts[layer.index], group["eta"], low_inputs[k],
                                     grams[k], grads)
                batch = batches.setdefault(hyper[k], [[], [], [], [], []])
                for p, g in zip(layer.params, grads):
                    if not p.requires_grad:  # a frozen parameter stays where it is
                        continue
                    state = self.inner.init_state(p)
                    for items, item in zip(batch, (p, g, state["ms"], state["mom"], lrs[j * len(layers) + k])):
                        items.append(item)
            for (decay, momentum, eps), (params, grads, ms, mom, lr) in batches.items():
                tf_rmsprop_update(params, grads, ms, mom, lr, decay, momentum, eps)

    def _inner_optimizer_iterations(self, targets: list[Tensor], low_inputs: list[Tensor],
                                    grams: list[_GramTerms | None]) -> None:
        """The local iterations with a ``torch.optim`` inner optimizer: the local gradients in ``.grad``
        (the BackProp gradients are put back afterwards), one inner step per local iteration."""
        layers, groups = self.capture.layers, self.param_groups
        params = self._params()
        global_grads = [p.grad for p in params]
        for layer in layers:
            for p, g in zip(layer.params, self._local_grads[layer.index]):
                p.grad = g if p.requires_grad else None  # an inner optimizer skips a parameter without .grad
        base = torch.stack([group["lr"] for group in groups]).tolist()  # one host read for all layers
        for j in range(max(group["local_iters"] for group in groups)):
            for k, (layer, group, inner_group) in enumerate(zip(layers, groups, self.inner.param_groups)):
                T = group["local_iters"]
                if j < T and any(p.requires_grad for p in layer.params):
                    self._local_gradient(layer, targets[k], self._starts[layer.index], group["eta"], low_inputs[k],
                                         grams[k], self._local_grads[layer.index])
                else:  # this layer has done its T iterations
                    for p in layer.params:
                        p.grad = None
                inner_group["lr"] = base[k] * max(1.0 - j / T, group["lr_floor"])
            self.inner.step()
        for p, g in zip(params, global_grads):
            p.grad = g

    def _lr_table(self) -> list[Tensor]:
        r""":math:`\nu_k\max(1 - j/T_k, \text{lr\_floor}_k)` for local iteration j and layer k, as 0-dim
        tensors of the weights' dtype (entry ``j * layers + k``; 0 where :math:`j \ge T_k`).

        The factors are formed in Python (double precision, :meth:`_lr_factors`); the product with the
        float64 :math:`\nu_k` and its rounding are the float arithmetic's, so the tensors hold the numbers
        that ``float`` learning rates would give.
        """
        base = torch.stack([g["lr"] for g in self.param_groups])
        dtype = self._params()[0].dtype
        return list((self._lr_factors() * base).to(dtype).view(-1).unbind())

    def _lr_factors(self) -> Tensor:
        r"""The factors :math:`\max(1 - j/T_k, \text{lr\_floor}_k)` (0 where :math:`j \ge T_k`), a float64
        (max T) x (layers) tensor on the device, made again only when ``local_iters`` or ``lr_floor`` change."""
        key = tuple((g["local_iters"], g["lr_floor"]) for g in self.param_groups)
        if self._factors is None or self._factors[0] != key:
            rows = [[max(1.0 - j / T, floor) if j < T else 0.0 for T, floor in key] for j in range(max(T for T, _ in key))]
            self._factors = (key, torch.tensor(rows, dtype=torch.float64, device=self._device))
        return self._factors[1]

    def _lr_tensor(self, lr: float | Tensor) -> Tensor:
        """``lr`` as a float64 0-dim tensor of this optimizer's own, on the parameters' device."""
        if torch.is_tensor(lr):
            return lr.detach().reshape(()).to(device=self._device, dtype=torch.float64, copy=True)
        return torch.tensor(float(lr), dtype=torch.float64, device=self._device)

    def _params(self) -> list[nn.Parameter]:
        return [p for layer in self.capture.layers for p in layer.params]

    def _gram_terms(self, layer: CapturedLayer, target: Tensor, local_iters: int) -> _GramTerms | None:
        """The layer's :class:`_GramTerms` for LocoProp-S with products in the weights' dtype where :func:`gram_pays`, else None
        (the displacement form, or a frozen layer)."""
        x = layer.inputs
        own_precision = PRODUCTS[self.products] is None  # products in the weights' dtype, not bfloat16
        if not (self.variant == "S" and own_precision and any(p.requires_grad for p in layer.params)
                and gram_pays(x.shape[0], x.shape[1], layer.module.out_features, local_iters)):
            return None
        first = local_residual(self.variant, layer.transfer, layer.preact, target)
        return _GramTerms(x.T @ x, x.sum(dim=0), first.T @ x, first.sum(dim=0), x.shape[0])

    def _local_gradient(self, layer: CapturedLayer, target: Tensor, start: list[Tensor], eta: float | None,
                        x_low: Tensor, gram: _GramTerms | None, grads: list[Tensor]) -> None:
        r"""Write :math:`\delta^\top\bar X + \eta^{-1}(\bar W - \bar W^t)` into ``grads`` (weight, bias).

        Displacement form (``gram`` None): :math:`\hat A = A + \bar X(\bar W - \bar W^t)^\top` (``start`` holds
        :math:`\bar W^t`), the two products taken in the dtype of ``x_low`` (the layer inputs in the precision
        of ``products``).  Gram form: with :math:`\Delta W`, :math:`\Delta b` the displacements,
        :math:`R_0^\top X + \Delta W X^\top X + \Delta b\,(X^\top 1)^\top` and
        :math:`R_0^\top 1 + \Delta W X^\top 1 + B\Delta b`.
        """
        module, x = layer.module, layer.inputs
        has_bias = module.bias is not None
        if gram is not None:
            shift = module.weight - start[0]
            torch.addmm(gram.weight_grad, shift, gram.gram, out=grads[0])
            if has_bias:
                bias_shift = module.bias - start[1]
                grads[0].addr_(bias_shift, gram.input_sums)
                torch.addmv(gram.bias_grad, shift, gram.input_sums, out=grads[1])
                grads[1].add_(bias_shift, alpha=gram.batch)
        else:
            shift = (module.weight - start[0]).to(x_low.dtype)
            preact_hat = layer.preact + (x_low @ shift.T).to(x.dtype)
            if has_bias:
                preact_hat = preact_hat + (module.bias - start[1])
            delta = local_residual(self.variant, layer.transfer, preact_hat, target)
            if x_low.dtype == grads[0].dtype:
                torch.mm(delta.T, x_low, out=grads[0])
            else:
                grads[0].copy_(delta.to(x_low.dtype).T @ x_low)
            if has_bias:
                torch.sum(delta, dim=0, out=grads[1])
        if eta is not None:
            for g, p, p0 in zip(grads, layer.params, start):
                g.add_(p - p0, alpha=1.0 / eta)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """``torch.optim.Optimizer.zero_grad``; also forgets the layer gradients recorded so far (not the forward pass)."""
        super().zero_grad(set_to_none)
        self.capture.forget_gradients()

    def _signature(self) -> dict[str, Any]:
        return signature(f"LocoProp-{self.variant}", self._params(), inner=type(self.inner).__name__)

    def state_dict(self) -> dict[str, Any]:
        """The outer state (learning rates as float64 0-dim tensors), the inner optimizer's state (one parameter
        group per layer; with TF1-RMSProp the rates come from the outer groups, and the inner groups keep the
        one they were built with) and the signature (variant, inner optimizer, parameter shapes) that
        :meth:`load_state_dict` checks."""
        state = super().state_dict()
        for group in state["param_groups"]:  # copies: the live tensors change with every scheduler step
            group["lr"] = group["lr"].clone()
        state["inner"] = self.inner.state_dict()
        state[SIGNATURE_KEY] = self._signature()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a :class:`LocoProp` state of the same variant, inner optimizer and model (``ValueError`` otherwise);
        learning rates saved as numbers (states from before they were tensors) become tensors."""
        check_state_dict("LocoProp", state_dict, self._signature(), _legacy_problem)
        state_dict = dict(state_dict)
        inner_state = state_dict.pop("inner", None)
        if inner_state is None:
            raise ValueError("this state_dict has no inner-optimizer state: was it saved by a LocoProp optimizer?")
        super().load_state_dict(state_dict)
        for group in self.param_groups:  # a number in states saved before learning rates were tensors
            group["lr"] = self._lr_tensor(group["lr"])
        self.inner.load_state_dict(inner_state)


def _is_lr(value: Any) -> bool:
    """A learning rate: a finite number >= 0, or a 0-dim (one-element) real tensor holding one."""
    if torch.is_tensor(value):
        return value.numel() == 1 and value.is_floating_point() and is_number(float(value)) and float(value) >= 0
    return is_number(value) and value >= 0


def _legacy_problem(state_dict: dict) -> str | None:
    """What shows that a state_dict without signature was not saved by :class:`LocoProp`, if anything."""
    if "inner" not in state_dict:
        return f"this state_dict has no inner-optimizer state, so it is not LocoProp's (its structure suggests {guess_owner(state_dict)})"
    return None


@torch.no_grad()
def replay_local_iterations(
    opt: LocoProp,
    layer: int,
    fresh_state: bool = False,
    inner: str | type[torch.optim.Optimizer] | None = None,
    inner_kwargs: dict[str, Any] | None = None,
) -> list[Tensor]:
    r"""Displacements of layer ``layer``'s :math:`\bar W = [W, b]` after each of the :math:`T` local
    iterations that ``opt.step()`` would take now (a list of T tensors of shape d_out × (d_in + 1)).

    The local loop of :meth:`LocoProp.step` is run for that one layer on *copies* of its weights and of
    its inner-optimizer state: the same targets (from the recorded forward/backward pass, which must
    exist, as for ``step``), batch-sum local gradients, proximal term and within-step step sizes
    :math:`\nu\max(1 - j/T, \text{lr\_floor})`, and an optimizer of the same class with the same
    hyper-parameters.  Neither the model nor ``opt`` changes, so a following ``opt.step()`` moves the
    layer by the last displacement returned.

    Args:
        opt: a :class:`LocoProp` optimizer after ``loss.backward()``.
        layer: index of the linear layer (as in ``opt.capture.layers``).
        fresh_state: start the inner optimizer from rest (e.g. TF1 RMSProp's :math:`s = 1`,
            :math:`m = 0`) instead of the state that ``opt`` carries over from earlier outer steps.
        inner, inner_kwargs: run another inner optimizer instead (a name of ``LocoProp``'s ``inner``
            argument or an optimizer class, from rest), e.g. ``inner="sgd"`` for gradient descent
            with the same step sizes.
    """
    opt.capture.require_backward()
    captured = opt.capture.layers[layer]
    group = {**opt.param_groups[layer], "lr": float(opt.param_groups[layer]["lr"])}
    params = [p.detach().clone() for p in captured.params]
    start = [p.clone() for p in params]
    if inner is None:
        hyper = {k: v for k, v in opt.inner.param_groups[layer].items() if k != "params"}
        local = type(opt.inner)([{"params": params, **hyper}], lr=group["lr"])
        if not fresh_state:
            for p, q in zip(params, captured.params):
                local.state[p] = {k: v.clone() if torch.is_tensor(v) else v for k, v in opt.inner.state[q].items()}
    else:
        if isinstance(inner, str):
            if inner not in INNER_OPTIMIZERS:
                raise ValueError(f"unknown inner optimizer {inner!r}: use one of {sorted(INNER_OPTIMIZERS)} "
                                 "or a torch.optim.Optimizer class")
            inner = INNER_OPTIMIZERS[inner]
        local = inner(params, lr=group["lr"], **(inner_kwargs or {}))
    target = local_target(opt.variant, captured.transfer, captured.preact, captured.grad, group["gamma"])
    x, T, eta = captured.inputs, group["local_iters"], group["eta"]
    out = []
    for j in range(T):
        weight, bias = params[0], (params[1] if len(params) > 1 else None)
        delta = local_residual(opt.variant, captured.transfer, nn.functional.linear(x, weight, bias), target)
        weight.grad = delta.T @ x
        if bias is not None:
            bias.grad = delta.sum(dim=0)
        if eta is not None:
            for p, p0 in zip(params, start):
                p.grad.add_(p - p0, alpha=1.0 / eta)
        local.param_groups[0]["lr"] = group["lr"] * max(1.0 - j / T, group["lr_floor"])
        local.step()
        moved = [p - p0 for p, p0 in zip(params, start)]
        out.append(torch.cat([moved[0], moved[1][:, None]], dim=1) if len(moved) > 1 else moved[0].clone())
    return out
