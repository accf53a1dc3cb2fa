r"""K-FAC (Martens & Grosse 2015) for MLPs, as a ``torch.optim`` optimizer.

**Curvature.**  For linear layer :math:`k` with augmented input :math:`\bar a = (x, 1)` (the 1 for
the bias) and per-example pre-activation gradient :math:`g`, the Fisher block of
:math:`\bar W = [W, b]` is approximated by :math:`F_k \approx \bar A \otimes G` with

.. math::

    \bar A = \frac1B\sum_b \bar a_b \bar a_b^\top, \qquad G = \frac1B\sum_b g_b g_b^\top,

in the column-stacking convention :math:`\mathrm{vec}(g\bar a^\top) = \bar a \otimes g`.
**Scaling convention:** the training loss is a batch *mean*
:math:`\mathcal L = \frac1B\sum_b \ell_b`, so the recorded :math:`G_k = \partial\mathcal L/\partial A_k`
has rows :math:`\frac1B\,\partial\ell_b/\partial A_k`; the per-example gradient is
:math:`g_b = B\,G_k[b]` and :math:`\bar A\otimes G` is then the per-example Fisher of
:math:`\ell`, whose natural gradient step :math:`F^{-1}\nabla\mathcal L` is independent of B.
``fisher="mc"`` (default) draws labels :math:`y \sim p(y\mid f(A_K))` from the model's output
distribution (Bernoulli for a sigmoid output, unit Gaussian for identity, categorical for softmax)
and uses :math:`g = \partial\ell(y)/\partial A` (one extra backward pass without autograd,
:meth:`LayerCapture.backpropagate`); ``fisher="empirical"`` uses the training labels' gradients.
The labels come from the optimizer's own generator, seeded with ``seed`` and kept on the
parameters' device (its state is part of ``state_dict``): the same seed on the same device gives
the same labels, and the global random state is left alone.  They are not drawn from a CPU
generator and copied over: that would cost a transfer at every factor update and still not make a
CUDA run repeat a CPU run, since the probabilities :math:`f(A_K)` come from the model's output,
whose rounding differs between devices (a Bernoulli label flips wherever the uniform draw falls
between the two roundings of its probability).

**Factor averages.**  Every ``factor_update_freq`` steps,
:math:`\hat X \leftarrow \rho\hat X + (1-\rho)X_{\rm batch}` from zero, divided by the weight
:math:`1-\rho^n` of the average (a bias-corrected EMA: no identity initialisation).

**Damping and inverses**, recomputed every ``inverse_update_freq`` steps (and whenever λ changes
through adaptation, at the next such step):

* ``damping_mode="pi"`` (factored Tikhonov, MG15 §6.3):
  :math:`\Delta = (G + \tfrac{\sqrt\lambda}{\pi} I)^{-1}\,\nabla_{\bar W}\,(\bar A + \pi\sqrt\lambda I)^{-1}`,
  :math:`\pi = \sqrt{(\mathrm{tr}\,\bar A/\dim\bar A)/(\mathrm{tr}\,G/\dim G)}`.  The inverses come
  from damped Cholesky factorisations (``torch.linalg.cholesky_ex``), batched over all factors of
  equal size; a failed float32 factorisation is retried in float64, and if that fails too the
  previous inverse is kept (the identity before the first success).
* ``damping_mode="exact"``: :math:`\mathrm{vec}\,\Delta = (\bar A\otimes G + \lambda I)^{-1}\mathrm{vec}\,\nabla_{\bar W}`
  via :math:`\bar A = Q_A\,\mathrm{diag}(a)\,Q_A^\top`, :math:`G = Q_G\,\mathrm{diag}(\gamma)\,Q_G^\top`:
  :math:`\Delta = Q_G\,[(Q_G^\top\nabla_{\bar W}Q_A) \oslash (\gamma a^\top + \lambda)]\,Q_A^\top`.

**Update.**  :math:`\nabla_{\bar W}` includes coupled weight decay :math:`\eta\bar W`.  Optional KL
clipping scales :math:`\Delta` by :math:`\nu = \min(1, \sqrt{c/(\mathrm{lr}^2|\sum_k\langle\Delta_k,\nabla_k\rangle|)})`
(on the device).  Momentum :math:`v \leftarrow \mu v + \Delta`, step
:math:`\bar W \leftarrow \bar W - \mathrm{lr}\,v` (Nesterov: :math:`\Delta + \mu v`).  A parameter with
``requires_grad=False`` (a frozen weight or bias) is left where it is.

**Adaptive damping** (Levenberg–Marquardt, MG15 §6.5): every ``damping_adaptation_interval`` (T)
steps the reduction ratio :math:`\rho = (h(\theta+\delta) - h(\theta)) / (M(\delta) - M(0))` with
the quadratic model :math:`M(\delta)-M(0) = \nabla h^\top\delta + \tfrac12\delta^\top(\bar A\otimes G + \lambda I)\delta`
(layerwise, :math:`\delta^\top(\bar A\otimes G)\delta = \langle G\delta\bar A, \delta\rangle`) sets
:math:`\lambda \leftarrow \omega\lambda` if :math:`\rho > 3/4`, :math:`\lambda/\omega` if
:math:`\rho < 1/4` or not finite, with :math:`\omega` = ``damping_adaptation_decay``\ :sup:`T`
(MG15's :math:`\omega_1 = (19/20)^{T_1}`), clamped to [``min_damping``, ``max_damping``].  λ stays
on the device (``torch.where``); :math:`h` comes from ``step(closure)``, where ``closure()``
returns the batch loss at the current parameters (no backward): ``needs_loss_closure`` is True.

**Host reads** (what ``tests/test_syncs.py`` counts per step:
``Tensor.item``, ``bool``, ``float``, ``int``, ``tolist``, ``.cpu()``, ``.numpy()`` and the aten
operations whose output size depends on the data, each a synchronisation on CUDA): none on a step
without an inverse update; on an inverse-update step with ``damping_mode="pi"`` and
``retry_float64=True``, one (whether any float32 Cholesky factorisation of any factor failed, for
all factor sizes together, to decide on the float64 retry); none with ``retry_float64=False``.
Exact damping reads nothing itself (a failed decomposition is replaced on the device by
``torch.where``), but calls ``torch.linalg.eigh`` once per factor size on its inverse-update steps,
and ``eigh`` checks its convergence on the host: one synchronisation per call on CUDA, which the
test counts separately.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from ..capture import CapturedLayer, LayerCapture
from .linalg import by_shape, damped_cholesky_inverses, eigh_with_retry
from .validation import (COUNT, FLAG, FRACTION, NON_NEGATIVE, POSITIVE, SIGNATURE_KEY, check_hparam,
                         check_hparams, check_state_dict, guess_owner, is_integer, nesterov_needs, number, one_of, signature)

__all__ = ["KFAC", "DEFAULT_LR", "DEFAULT_DAMPING", "ADAPTIVE_INITIAL_DAMPING"]

DEFAULT_LR = 0.1
DEFAULT_DAMPING = 1.0
ADAPTIVE_INITIAL_DAMPING = 150.0
_SAMPLED_OUTPUTS = ("sigmoid", "identity", "softmax")


class KFAC(torch.optim.Optimizer):
    r"""K-FAC for an ``nn.Sequential`` MLP of ``nn.Linear`` layers (see the module docstring).

    Call ``step()`` after the ordinary ``loss.backward()``; the optimizer records each layer's
    inputs and pre-activation gradients itself (:class:`~locoprop.capture.LayerCapture`), so it needs
    exactly one forward pass with gradients and one backward pass per step (accumulation raises).

    Args:
        model: the MLP; all its trainable parameters must belong to its linear layers.
        lr: learning rate (> 0).
        output_activation: the function the loss applies to the model output ("sigmoid" for
            logits trained with sigmoid cross-entropy); defines the MC-Fisher's output distribution.
        damping: Tikhonov λ ≥ 0 (default 1.0, or 150 as the initial λ with ``adaptive_damping``).
        factor_decay: EMA decay of the factors, in [0, 1).
        factor_update_freq, inverse_update_freq: periods (≥ 1) of the factor and inverse updates.
        momentum: μ ∈ [0, 1); ``nesterov`` uses Nesterov's form.
        weight_decay: coupled L2 coefficient η ≥ 0.
        fisher: "mc" (sampled labels) or "empirical".
        damping_mode: "pi" (factored, Cholesky) or "exact" (eigendecomposition).
        adaptive_damping: Levenberg–Marquardt adaptation of λ (needs ``step(closure)``), with
            ``damping_adaptation_decay`` ∈ (0, 1), ``damping_adaptation_interval`` ≥ 1 and bounds
            0 ≤ ``min_damping`` ≤ ``max_damping``.
        kl_clip: KL-clipping constant c > 0, or None.
        retry_float64: retry failed float32 Cholesky factorisations in float64.
        seed: seed of the label sampler (None: drawn from torch's global generator).
    """

    def __init__(
        self,
        model: nn.Module,
        lr: float = DEFAULT_LR,
        output_activation: str | None = "sigmoid",
        *,
        damping: float | None = None,
        factor_decay: float = 0.95,
        factor_update_freq: int = 1,
        inverse_update_freq: int = 5,
        momentum: float = 0.9,
        nesterov: bool = False,
        weight_decay: float = 0.0,
        fisher: str = "mc",
        damping_mode: str = "pi",
        adaptive_damping: bool = False,
        damping_adaptation_decay: float = 0.95,
        damping_adaptation_interval: int = 5,
        min_damping: float = 1e-6,
        max_damping: float = 1e3,
        kl_clip: float | None = None,
        retry_float64: bool = True,
        seed: int | None = None,
    ):
        if damping is None:
            damping = ADAPTIVE_INITIAL_DAMPING if adaptive_damping else DEFAULT_DAMPING
        defaults = dict(
            lr=lr, damping=damping, factor_decay=factor_decay, factor_update_freq=factor_update_freq,
            inverse_update_freq=inverse_update_freq, momentum=momentum, nesterov=nesterov,
            weight_decay=weight_decay, fisher=fisher, damping_mode=damping_mode,
            adaptive_damping=adaptive_damping, damping_adaptation_decay=damping_adaptation_decay,
            damping_adaptation_interval=damping_adaptation_interval, min_damping=min_damping,
            max_damping=max_damping, kl_clip=kl_clip, retry_float64=retry_float64,
        )
        self._validate(defaults)
        check_hparam("KFAC", "seed", seed, lambda v: v is None or is_integer(v), "an integer or None")
        capture = LayerCapture(model, output_activation)
        if fisher == "mc" and capture.layers[-1].transfer.name not in _SAMPLED_OUTPUTS:
            capture.remove()
            raise ValueError(
                f"KFAC: invalid output_activation={output_activation!r} for fisher='mc'; "
                f"allowed: one of {_SAMPLED_OUTPUTS}"
            )
        params = [p for layer in capture.layers for p in layer.params]
        owned = {id(p) for p in params}
        stray = [name for name, p in model.named_parameters() if p.requires_grad and id(p) not in owned]
        if stray:
            capture.remove()
            raise ValueError(f"KFAC: parameters {stray} are not in an nn.Linear layer; K-FAC cannot train them")
        super().__init__(params, defaults)
        self.capture = capture
        self.needs_loss_closure = bool(adaptive_damping)
        device, dtype = params[0].device, params[0].dtype
        if seed is None:
            seed = int(torch.randint(0, 2**62, ()).item())
        self._generator = torch.Generator(device=device)
        self._generator.manual_seed(int(seed))
        self.state["kfac"] = {
            "step": 0,
            "factor_weight": 0.0,
            "damping": torch.tensor(float(damping), dtype=dtype, device=device),
        }

    @staticmethod
    def _validate(g: dict) -> None:
        check_hparams("KFAC", g, {
            "lr": POSITIVE,
            "damping": NON_NEGATIVE,
            "factor_decay": FRACTION,
            "factor_update_freq": COUNT,
            "inverse_update_freq": COUNT,
            "momentum": FRACTION,
            "nesterov": nesterov_needs(g["momentum"]),
            "weight_decay": NON_NEGATIVE,
            "fisher": one_of("mc", "empirical"),
            "damping_mode": one_of("pi", "exact"),
            "adaptive_damping": FLAG,
            "damping_adaptation_decay": number(lambda v: 0 < v < 1, "a number in (0, 1)"),
            "damping_adaptation_interval": COUNT,
            "min_damping": NON_NEGATIVE,
            "max_damping": number(lambda v: v >= g["min_damping"], "a finite number >= min_damping"),
            "kl_clip": POSITIVE.or_none("None or a finite number > 0"),
            "retry_float64": FLAG,
        })

    # -- public helpers ---------------------------------------------------------------------------

    @property
    def damping(self) -> Tensor | float:
        """The λ in use: the adapted device tensor with ``adaptive_damping``, else the group's value."""
        group = self.param_groups[0]
        return self.state["kfac"]["damping"] if group["adaptive_damping"] else group["damping"]

    def kronecker_factors(self) -> list[tuple[Tensor, Tensor]]:
        r"""The current averaged factors :math:`(\bar A, G)` of every layer (bias column last in :math:`\bar A`)."""
        w = self.state["kfac"]["factor_weight"]
        if w == 0:
            raise RuntimeError("KFAC.kronecker_factors: no factor update has happened yet")
        return [(self.state[l.module.weight]["A"] / w, self.state[l.module.weight]["G"] / w)
                for l in self.capture.layers]

    def zero_grad(self, set_to_none: bool = True) -> None:
        """``torch.optim.Optimizer.zero_grad``; also forgets the layer gradients recorded so far (not the forward pass)."""
        super().zero_grad(set_to_none)
        self.capture.forget_gradients()

    def _signature(self) -> dict:
        return signature("KFAC", (p for group in self.param_groups for p in group["params"]))

    def state_dict(self) -> dict:
        """torch.optim state dict, including factors, inverses, step counters, the sampler's RNG state
        and the signature (parameter shapes) that :meth:`load_state_dict` checks."""
        self.state["kfac"]["rng_state"] = self._generator.get_state()
        state = super().state_dict()
        state[SIGNATURE_KEY] = self._signature()
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        """Load the state of a :class:`KFAC` optimizer of the same model (``ValueError`` otherwise)."""
        check_state_dict("KFAC", state_dict, self._signature(), _legacy_problem)
        super().load_state_dict(state_dict)
        gs = dict(self.state["kfac"])
        device = self.param_groups[0]["params"][0].device
        gs["damping"] = gs["damping"].detach().clone().to(device)
        if gs.get("rng_state") is not None:
            self._generator.set_state(gs["rng_state"].cpu())
        self.state["kfac"] = gs

    # -- step ---------------------------------------------------------------------------------------

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        """One K-FAC step from the gradients and layer records of the last ``loss.backward()``.

        Returns the closure's loss at the pre-step parameters on damping-adaptation steps, else None.
        """
        group = self.param_groups[0]
        if group["adaptive_damping"] and closure is None:
            raise RuntimeError("KFAC with adaptive_damping=True needs step(closure), closure() -> batch loss")
        self.capture.require_backward("KFAC")
        gs = self.state["kfac"]
        gs["step"] += 1
        t = gs["step"]
        lam = self.damping
        layers = self.capture.layers

        if (t - 1) % group["factor_update_freq"] == 0:
            self._update_factors(group)
        inverse_key = "A_inv" if group["damping_mode"] == "pi" else "A_eigvecs"
        if (t - 1) % group["inverse_update_freq"] == 0 or inverse_key not in self.state[layers[0].module.weight]:
            self._update_inverses(group, lam)

        grads = [self._grad_matrix(layer, group["weight_decay"]) for layer in layers]
        steps = [self._precondition(self.state[l.module.weight], V, lam, group) for l, V in zip(layers, grads)]
        if group["kl_clip"] is not None:
            vg = sum((d * V).sum() for d, V in zip(steps, grads)).abs()
            nu = (group["kl_clip"] / (group["lr"] ** 2 * vg)).sqrt().clamp(max=1.0)
            steps = [d * nu for d in steps]

        mu = group["momentum"]
        updates = []
        for layer, d in zip(layers, steps):
            if mu > 0:
                state = self.state[layer.module.weight]
                buf = state.get("momentum_buffer")
                if buf is None:
                    buf = state["momentum_buffer"] = torch.zeros_like(d)
                buf.mul_(mu).add_(d)
                d = d.add(buf, alpha=mu) if group["nesterov"] else buf
            updates.append(d.mul(-group["lr"]))

        adapt = group["adaptive_damping"] and t % group["damping_adaptation_interval"] == 0
        loss_before = torch.as_tensor(closure()) if adapt else None
        for layer, delta in zip(layers, updates):
            self._apply(layer, delta)
        if adapt:
            self._adapt_damping(group, layers, grads, updates, loss_before, torch.as_tensor(closure()))
        self.capture.clear()
        return loss_before

    # -- pieces -------------------------------------------------------------------------------------

    @staticmethod
    def _augmented_inputs(layer: CapturedLayer) -> Tensor:
        x = layer.inputs
        if layer.module.bias is None:
            return x
        return torch.cat([x, x.new_ones(x.shape[0], 1)], dim=1)

    @staticmethod
    def _grad_matrix(layer: CapturedLayer, weight_decay: float) -> Tensor:
        r""":math:`\nabla_{\bar W} = [\nabla W, \nabla b] + \eta[W, b]` (d_out × (d_in + 1))."""
        w, b = layer.module.weight, layer.module.bias
        gw = w.grad if w.grad is not None else torch.zeros_like(w)
        V = gw if b is None else torch.cat([gw, (b.grad if b.grad is not None else torch.zeros_like(b))[:, None]], 1)
        if weight_decay > 0:
            V = V.add(_param_matrix(layer), alpha=weight_decay)
        return V

    @staticmethod
    def _apply(layer: CapturedLayer, delta: Tensor) -> None:
        w, b = layer.module.weight, layer.module.bias
        if w.requires_grad:  # a frozen parameter never moves
            w.add_(delta[:, : w.shape[1]])
        if b is not None and b.requires_grad:
            b.add_(delta[:, -1])

    def _sample_targets(self, preact: Tensor) -> Tensor:
        r"""Labels :math:`y \sim p(y \mid f(A_K))` from the model's output distribution."""
        name = self.capture.layers[-1].transfer.name
        # A non-finite output (a diverging run) samples from a uniform distribution instead of raising:
        # the step then spreads the non-finite values, and the run's evaluation records the divergence.
        if name == "sigmoid":
            return torch.bernoulli(torch.sigmoid(preact).nan_to_num(0.5), generator=self._generator)
        noise = torch.randn(preact.shape, generator=self._generator, dtype=preact.dtype, device=preact.device)
        if name == "identity":
            return preact + noise
        probs = torch.softmax(preact, -1)
        probs = torch.where(torch.isfinite(probs).all(-1, keepdim=True), probs, 1.0)
        index = torch.multinomial(probs, 1, generator=self._generator)
        return torch.zeros_like(preact).scatter_(1, index, 1.0)

    def _per_example_grads(self, group: dict) -> list[Tensor]:
        r"""Per-example pre-activation gradients :math:`g_b` of every layer (B × d_out)."""
        layers = self.capture.layers
        if group["fisher"] == "empirical":
            batch = layers[0].grad.shape[0]
            return [layer.grad * batch for layer in layers]
        out = layers[-1]
        y = self._sample_targets(out.preact)
        # For a matching (canonical-link) loss, d loss(y) / d A_K = f(A_K) - y per example.
        return self.capture.backpropagate(out.transfer.f(out.preact) - y)

    def _update_factors(self, group: dict) -> None:
        decay = group["factor_decay"]
        gs = self.state["kfac"]
        for layer, g in zip(self.capture.layers, self._per_example_grads(group)):
            a = self._augmented_inputs(layer)
            batch = a.shape[0]
            state = self.state[layer.module.weight]
            for key, x in (("A", a), ("G", g)):
                if key not in state:
                    state[key] = x.new_zeros(x.shape[1], x.shape[1])
                state[key].mul_(decay).addmm_(x.T, x, alpha=(1 - decay) / batch)
        gs["factor_weight"] = decay * gs["factor_weight"] + (1 - decay)

    def _update_inverses(self, group: dict, lam: Tensor | float) -> None:
        """Damped inverses (``pi``) or eigendecompositions (``exact``) of all factors, batched by size."""
        layers = self.capture.layers
        states = [self.state[l.module.weight] for l in layers]
        w = self.state["kfac"]["factor_weight"]
        mats = [m for s in states for m in (s["A"] / w, s["G"] / w)]
        if group["damping_mode"] == "pi":
            shifts = []
            for A, G in zip(mats[0::2], mats[1::2]):
                pi = ((torch.diagonal(A).mean() / torch.diagonal(G).mean())).sqrt()
                pi = torch.where(torch.isfinite(pi) & (pi > 0), pi, 1.0)
                shifts += [pi * lam ** 0.5, lam ** 0.5 / pi]
            groups = by_shape(mats)
            stacks = []
            for idx in groups:
                previous = [states[i // 2].get(("A_inv", "G_inv")[i % 2]) for i in idx]
                stacks.append((torch.stack([mats[i] for i in idx]), torch.stack([shifts[i] for i in idx]),
                               None if any(p is None for p in previous) else torch.stack(previous)))
            for idx, inv in zip(groups, damped_cholesky_inverses(stacks, group["retry_float64"])):
                for i, m in zip(idx, inv):
                    states[i // 2][("A_inv", "G_inv")[i % 2]] = m
        else:
            for idx in by_shape(mats):
                vals, vecs, ok = eigh_with_retry(torch.stack([mats[i] for i in idx]), group["retry_float64"])
                for j, i in enumerate(idx):  # a failed decomposition keeps the previous one (on the device)
                    key = ("A", "G")[i % 2]
                    state = states[i // 2]
                    old_vals = state.get(key + "_eigvals", torch.zeros_like(vals[j]))
                    old_vecs = state.get(key + "_eigvecs", torch.eye(vals.shape[-1], dtype=vals.dtype, device=vals.device))
                    state[key + "_eigvals"] = torch.where(ok[j], vals[j].clamp_min(0.0), old_vals)
                    state[key + "_eigvecs"] = torch.where(ok[j], vecs[j], old_vecs)

    @staticmethod
    def _precondition(state: dict, V: Tensor, lam: Tensor | float, group: dict) -> Tensor:
        r"""The K-FAC direction :math:`\Delta` for the gradient matrix ``V`` (see the module docstring)."""
        if group["damping_mode"] == "pi":
            return state["G_inv"] @ V @ state["A_inv"]
        QA, QG = state["A_eigvecs"], state["G_eigvecs"]
        denom = state["G_eigvals"][:, None] * state["A_eigvals"][None, :] + lam
        rotated = QG.T @ V @ QA
        rotated = torch.where(denom > 0, rotated / denom, 0.0)
        return QG @ rotated @ QA.T

    def _adapt_damping(self, group, layers, grads, updates, loss_before, loss_after) -> None:
        r"""Levenberg–Marquardt: rescale λ by the reduction ratio ρ, on the device."""
        gs = self.state["kfac"]
        lam = gs["damping"]
        factors = self.kronecker_factors()
        predicted = 0.0
        actual = (loss_after - loss_before).to(lam.dtype)
        eta = group["weight_decay"]
        for layer, V, delta, (A, G) in zip(layers, grads, updates, factors):
            predicted = predicted + (V * delta).sum() + 0.5 * ((G @ delta @ A) * delta).sum() \
                + 0.5 * lam * delta.square().sum()
            if eta > 0:  # the L2 term is part of the objective h
                new = _param_matrix(layer)
                actual = actual + 0.5 * eta * (new.square().sum() - (new - delta).square().sum())
        rho = actual / predicted
        omega = group["damping_adaptation_decay"] ** group["damping_adaptation_interval"]
        new_lam = torch.where(rho > 0.75, lam * omega, lam)
        new_lam = torch.where((rho < 0.25) | ~torch.isfinite(rho), lam / omega, new_lam)
        lam.copy_(new_lam.clamp(group["min_damping"], group["max_damping"]))
        gs["rho"] = rho.detach()


def _legacy_problem(state_dict: dict) -> str | None:
    """What shows that a state_dict without signature was not saved by :class:`KFAC`, if anything."""
    if "kfac" not in state_dict["state"]:
        return f"this state_dict has no 'kfac' entry, so it is not K-FAC's (its structure suggests {guess_owner(state_dict)})"
    return None


def _param_matrix(layer: CapturedLayer) -> Tensor:
    r"""The layer's parameters as one matrix :math:`\bar W = [W, b]`."""
    w, b = layer.module.weight, layer.module.bias
    return w if b is None else torch.cat([w, b[:, None]], 1)
