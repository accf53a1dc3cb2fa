r"""Shampoo (Gupta, Koren & Singer 2018) with grafting (Anil et al. 2020), as a ``torch.optim`` optimizer.

For a matrix parameter :math:`W\in\mathbb R^{m\times n}` with gradient :math:`G_t` Shampoo keeps
left and right statistics

.. math::

    L_t = \sum_{s\le t} G_s G_s^\top, \quad R_t = \sum_{s\le t} G_s^\top G_s
    \qquad(\text{``adagrad''}), \quad\text{or}\quad
    L_t = \beta_2 L_{t-1} + (1-\beta_2) G_t G_t^\top \ \text{(``ema'', bias-corrected)},

and steps in the direction :math:`D_t = (L_t + \epsilon I)^{-1/p}\, G_t\, (R_t + \epsilon I)^{-1/p}`
with :math:`p` = ``exponent`` (4 by default, the rule :math:`p = 2k` for order-:math:`k` tensors).
Parameters with more than two dimensions are flattened to ``(shape[0], -1)``; vectors (biases)
keep diagonal statistics :math:`d_t = \sum_s g_s^2` and use :math:`(d_t + \epsilon)^{-2/p}`
(AdaGrad for :math:`p = 4`).  Dimensions larger than ``max_preconditioner_dim`` are split into
blocks, each with its own :math:`L, R`.  ``epsilon_mode="relative"`` uses
:math:`\epsilon\,\lambda_{\max}` of each statistic instead of :math:`\epsilon`.

**Grafting.**  Shampoo fixes the direction, a simple first-order method the step size: per block,
:math:`D_t \leftarrow D_t\,\|\Delta^{\rm graft}_t\| / \|D_t\|`, where :math:`\Delta^{\rm graft}_t`
is the grafted method's step (``sgd``: :math:`g`; ``adagrad``: :math:`g/(\sqrt{\sum g^2}+\epsilon_g)`;
``rmsprop``: :math:`g/(\sqrt{v}+\epsilon_g)` with :math:`v` an EMA of :math:`g^2`; ``adam``: the
same with bias-corrected :math:`v`, i.e. only Adam's second moment is grafted, momentum is applied
afterwards).  ``grafting="none"`` uses Shampoo's own scale.  Before
``start_preconditioning_step`` the grafted step is used alone.

**Update.**  With coupled weight decay :math:`g \leftarrow g + \eta w` (before the statistics),
momentum buffer :math:`b \leftarrow \mu b + D`, and :math:`w \leftarrow w - \text{lr}\,(b` or, with
Nesterov, :math:`D + \mu b)`.

**Inverse roots** are recomputed every ``precondition_frequency`` steps (from
``start_preconditioning_step`` on) by ``torch.linalg.eigh`` in float64 (rounded once to the
parameters' dtype: a float32 decomposition's eigenvalue errors are as large as a relative
:math:`\epsilon = 10^{-6}`, so the smallest directions' roots would swing with its rounding; see
:func:`locoprop.optim.linalg.inverse_root`), batched over all statistics of equal size across
parameters, with eigenvalues clamped at 0 and a pseudo-inverse where :math:`\lambda + \epsilon = 0`;
if a decomposition fails (or returns non-finite values) the previous root is kept (on the device, by
``torch.where``).

**Host reads** (what ``tests/test_syncs.py`` counts per step:
``Tensor.item``, ``bool``, ``float``, ``int``, ``tolist``, ``.cpu()``, ``.numpy()`` and the aten
operations whose output size depends on the data, each a synchronisation on CUDA): none, on every
step.  Root-update steps call ``torch.linalg.eigh`` once per statistic size (five for the paper's
autoencoder: 1000, 784, 500, 250, 30), and ``eigh`` checks its convergence on the host: one
synchronisation per call on CUDA, which the test counts separately.

"""
from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor

from .linalg import by_shape, inverse_root
from .validation import (COUNT, FLAG, FRACTION, NON_NEGATIVE, POSITIVE, SIGNATURE_KEY, Rule, check_hparams,
                         check_state_dict, guess_owner, nesterov_needs, one_of, signature)

__all__ = ["Shampoo", "DEFAULT_LR"]

DEFAULT_LR = 3e-3
GRAFTING_TYPES = ("none", "sgd", "adagrad", "rmsprop", "adam")


def _legacy_problem(state_dict: dict) -> str | None:
    """What shows that a state_dict without signature was not saved by :class:`Shampoo`, if anything."""
    for key, state in state_dict["state"].items():
        if not (isinstance(key, int) and isinstance(state, dict) and "step" in state
                and ({"L", "R", "L_root", "R_root"} <= state.keys() or "D" in state)):
            return f"this state_dict has no Shampoo statistics, so it is not Shampoo's (its structure suggests {guess_owner(state_dict)})"
    return None


def _block_sizes(n: int, max_dim: int) -> list[int]:
    return [min(max_dim, n - start) for start in range(0, n, max_dim)]


def _blocks(matrix: Tensor, row_sizes: list[int], col_sizes: list[int]) -> list[Tensor]:
    """The blocks of ``matrix`` in row-major order (views)."""
    return [blk for rows in matrix.split(row_sizes, 0) for blk in rows.split(col_sizes, 1)]


def _unblock(blocks: list[Tensor], n_row_blocks: int, n_col_blocks: int) -> Tensor:
    if len(blocks) == 1:
        return blocks[0]
    rows = [torch.cat(blocks[i * n_col_blocks:(i + 1) * n_col_blocks], 1) for i in range(n_row_blocks)]
    return torch.cat(rows, 0)


class Shampoo(torch.optim.Optimizer):
    r"""Shampoo with blocking, grafting, momentum and weight decay (see the module docstring).

    Args:
        params: parameters or parameter groups (every hyper-parameter can be set per group).
        lr: learning rate (> 0).
        momentum: heavy-ball momentum :math:`\mu \in [0, 1)`; ``nesterov`` uses Nesterov's form.
        weight_decay: coupled L2 coefficient :math:`\eta \ge 0`.
        epsilon: shift added to the statistics' eigenvalues (≥ 0); ``epsilon_mode`` "absolute" or
            "relative" (times each statistic's largest eigenvalue).
        statistics: "adagrad" (sums) or "ema" (EMA with ``beta2`` ∈ [0, 1), bias-corrected).
        exponent: root :math:`p > 0` of the matrix preconditioners (vectors use :math:`p/2`).
        max_preconditioner_dim: largest block side (≥ 1); larger dimensions are split.
        precondition_frequency: recompute inverse roots every this many steps (≥ 1).
        start_preconditioning_step: first step (≥ 1) that uses Shampoo's direction.
        grafting: "none", "sgd", "adagrad", "rmsprop" or "adam".
        grafting_beta2, grafting_epsilon: EMA decay ∈ [0, 1) and ε > 0 of the grafted method.
        retry_float64: retry failed float32 decompositions in float64.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict],
        lr: float = DEFAULT_LR,
        *,
        momentum: float = 0.9,
        nesterov: bool = False,
        weight_decay: float = 0.0,
        epsilon: float = 1e-6,
        epsilon_mode: str = "relative",
        statistics: str = "adagrad",
        beta2: float = 0.999,
        exponent: float = 4,
        max_preconditioner_dim: int = 1024,
        precondition_frequency: int = 10,
        start_preconditioning_step: int = 10,
        grafting: str = "adam",
        grafting_beta2: float = 0.999,
        grafting_epsilon: float = 1e-8,
        retry_float64: bool = True,
    ):
        defaults = dict(
            lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay, epsilon=epsilon,
            epsilon_mode=epsilon_mode, statistics=statistics, beta2=beta2, exponent=exponent,
            max_preconditioner_dim=max_preconditioner_dim, precondition_frequency=precondition_frequency,
            start_preconditioning_step=start_preconditioning_step, grafting=grafting,
            grafting_beta2=grafting_beta2, grafting_epsilon=grafting_epsilon, retry_float64=retry_float64,
        )
        self._validate(defaults)
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        self._validate(self.param_groups[-1])

    @staticmethod
    def _validate(g: dict) -> None:
        check_hparams("Shampoo", g, {
            "lr": POSITIVE,
            "momentum": FRACTION,
            "nesterov": nesterov_needs(g["momentum"]),
            "weight_decay": NON_NEGATIVE,
            "epsilon": NON_NEGATIVE,
            "epsilon_mode": one_of("absolute", "relative"),
            "statistics": one_of("adagrad", "ema"),
            "beta2": FRACTION,
            "exponent": POSITIVE,
            "max_preconditioner_dim": COUNT,
            "precondition_frequency": COUNT,
            "start_preconditioning_step": COUNT,
            "grafting": Rule(lambda v: v in GRAFTING_TYPES, f"one of {GRAFTING_TYPES}"),
            "grafting_beta2": FRACTION,
            "grafting_epsilon": POSITIVE,
            "retry_float64": FLAG,
        })

    # -- checkpoints ------------------------------------------------------------------------------

    def _signature(self) -> dict:
        return signature("Shampoo", (p for group in self.param_groups for p in group["params"]))

    def state_dict(self) -> dict:
        """torch.optim state dict plus the signature (parameter shapes) that :meth:`load_state_dict` checks."""
        state = super().state_dict()
        state[SIGNATURE_KEY] = self._signature()
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        """Load the state of a :class:`Shampoo` optimizer of the same parameters (``ValueError`` otherwise)."""
        check_state_dict("Shampoo", state_dict, self._signature(), _legacy_problem)
        super().load_state_dict(state_dict)

    # -- state ----------------------------------------------------------------------------------

    def _init_state(self, p: Tensor, group: dict) -> dict:
        state = self.state[p]
        state["step"] = 0
        if p.ndim >= 2:
            m, n = p.shape[0], p[0].numel()
            rows = _block_sizes(m, group["max_preconditioner_dim"])
            cols = _block_sizes(n, group["max_preconditioner_dim"])
            state["L"] = [p.new_zeros(r, r) for r in rows for _ in cols]
            state["R"] = [p.new_zeros(c, c) for _ in rows for c in cols]
            state["L_root"] = [torch.eye(r, dtype=p.dtype, device=p.device) for r in rows for _ in cols]
            state["R_root"] = [torch.eye(c, dtype=p.dtype, device=p.device) for _ in rows for c in cols]
        else:
            state["D"] = torch.zeros_like(p)
        if group["grafting"] in ("adagrad", "rmsprop", "adam"):
            state["graft_v"] = torch.zeros_like(p)
        if group["momentum"] > 0:
            state["momentum_buffer"] = torch.zeros_like(p)
        return state

    @staticmethod
    def _layout(p: Tensor, group: dict) -> tuple[list[int], list[int]]:
        max_dim = group["max_preconditioner_dim"]
        return _block_sizes(p.shape[0], max_dim), _block_sizes(p[0].numel(), max_dim)

    # -- step -----------------------------------------------------------------------------------

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        """One Shampoo step (``closure``, if given, re-evaluates the loss with gradients, as in torch.optim)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        work = []  # (param, group, state, effective gradient)
        root_jobs: list[tuple[Tensor, Tensor, dict]] = []  # (statistic, root to overwrite, group)
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p] if self.state[p] else self._init_state(p, group)
                state["step"] += 1
                t = state["step"]
                g = p.grad
                if group["weight_decay"] > 0:
                    g = g.add(p, alpha=group["weight_decay"])
                self._accumulate(state, g, group)
                start, freq = group["start_preconditioning_step"], group["precondition_frequency"]
                if p.ndim >= 2 and t >= start and (t - start) % freq == 0:
                    correction = self._stat_correction(group, t)
                    for key in ("L", "R"):
                        for stat, root in zip(state[key], state[key + "_root"]):
                            root_jobs.append((stat / correction if correction != 1.0 else stat, root, group))
                work.append((p, group, state, g))

        self._update_roots(root_jobs)

        for p, group, state, g in work:
            direction = self._direction(p, g, state, group)
            mu = group["momentum"]
            if mu > 0:
                buf = state["momentum_buffer"]
                buf.mul_(mu).add_(direction)
                direction = direction.add(buf, alpha=mu) if group["nesterov"] else buf
            p.add_(direction, alpha=-group["lr"])
        return loss

    @staticmethod
    def _stat_correction(group: dict, t: int) -> float:
        """Bias correction :math:`1-\\beta_2^t` of EMA statistics (1 for sums)."""
        return 1.0 - group["beta2"] ** t if group["statistics"] == "ema" else 1.0

    def _accumulate(self, state: dict, g: Tensor, group: dict) -> None:
        """Update the Shampoo statistics and the grafted method's second moment with gradient ``g``."""
        ema = group["statistics"] == "ema"
        beta2 = group["beta2"]
        if "D" in state:
            if ema:
                state["D"].mul_(beta2).addcmul_(g, g, value=1 - beta2)
            else:
                state["D"].addcmul_(g, g)
        else:
            rows, cols = self._layout(g, group)
            for blk, L, R in zip(_blocks(g.reshape(g.shape[0], -1), rows, cols), state["L"], state["R"]):
                if ema:
                    L.mul_(beta2).addmm_(blk, blk.T, alpha=1 - beta2)
                    R.mul_(beta2).addmm_(blk.T, blk, alpha=1 - beta2)
                else:
                    L.addmm_(blk, blk.T)
                    R.addmm_(blk.T, blk)
        graft = group["grafting"]
        if graft == "adagrad":
            state["graft_v"].addcmul_(g, g)
        elif graft in ("rmsprop", "adam"):
            b = group["grafting_beta2"]
            state["graft_v"].mul_(b).addcmul_(g, g, value=1 - b)

    @staticmethod
    def _graft_step(g: Tensor, state: dict, group: dict) -> Tensor:
        graft = group["grafting"]
        if graft in ("none", "sgd"):
            return g
        v = state["graft_v"]
        if graft == "adam":
            v = v / (1.0 - group["grafting_beta2"] ** state["step"])
        return g / (v.sqrt() + group["grafting_epsilon"])

    def _update_roots(self, jobs: list[tuple[Tensor, Tensor, dict]]) -> None:
        """Recompute the inverse roots of ``jobs``, one batched ``eigh`` per size and setting."""
        if not jobs:
            return
        stats = [job[0] for job in jobs]

        def setting(i):
            g = jobs[i][2]
            return g["exponent"], g["epsilon"], g["epsilon_mode"] == "relative", g["retry_float64"]

        for idx in by_shape(stats, setting):
            exponent, eps, relative, retry = setting(idx[0])
            roots = inverse_root(
                torch.stack([stats[i] for i in idx]), exponent, eps, relative,
                torch.stack([jobs[i][1] for i in idx]), retry,
            )
            for i, root in zip(idx, roots):
                jobs[i][1].copy_(root)

    def _direction(self, p: Tensor, g: Tensor, state: dict, group: dict) -> Tensor:
        """Shampoo's direction, grafted per block (the grafted step alone before preconditioning)."""
        graft = self._graft_step(g, state, group)
        if state["step"] < group["start_preconditioning_step"]:
            return graft
        correction = self._stat_correction(group, state["step"])
        eps = group["epsilon"]
        if "D" in state:
            d = state["D"] / correction
            d = d + (eps * d.amax() if group["epsilon_mode"] == "relative" else eps)
            scale = torch.where(d > 0, d, 1.0).pow(-2.0 / group["exponent"])
            direction = g * torch.where(d > 0, scale, 0.0)
            return self._graft_norm(direction, graft, group)
        rows, cols = self._layout(p, group)
        shape2d = (p.shape[0], -1)
        g_blocks = _blocks(g.reshape(shape2d), rows, cols)
        graft_blocks = _blocks(graft.reshape(shape2d), rows, cols)
        out = [
            self._graft_norm(Lr @ gb @ Rr, fb, group)
            for gb, fb, Lr, Rr in zip(g_blocks, graft_blocks, state["L_root"], state["R_root"])
        ]
        return _unblock(out, len(rows), len(cols)).reshape(p.shape)

    @staticmethod
    def _graft_norm(direction: Tensor, graft: Tensor, group: dict) -> Tensor:
        r""":math:`D\,\|\Delta^{\rm graft}\|/\|D\|` (0 where :math:`D = 0`), or ``D`` without grafting."""
        if group["grafting"] == "none":
            return direction
        norm = torch.linalg.vector_norm(direction)
        ratio = torch.linalg.vector_norm(graft) / torch.where(norm > 0, norm, 1.0)
        return direction * torch.where(norm > 0, ratio, 0.0)
