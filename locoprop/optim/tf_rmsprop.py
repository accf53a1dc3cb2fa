r"""RMSProp with TensorFlow 1 semantics (``tf.train.RMSPropOptimizer``), LocoProp's inner optimizer.

For every parameter :math:`w` with gradient :math:`g`:

.. math::

    s &\leftarrow \rho\, s + (1-\rho)\, g^2, \qquad s_0 = 1, \\
    m &\leftarrow \mu\, m + \nu\, g / \sqrt{s + \epsilon}, \qquad m_0 = 0, \\
    w &\leftarrow w - m .

It differs from ``torch.optim.RMSprop``: the second moment starts at one (not zero), :math:`\epsilon`
sits inside the square root, and the learning rate :math:`\nu` is multiplied into the momentum
buffer (so a learning rate that changes every step acts on new gradients only).  The defaults are
the official LocoProp notebook's: :math:`\rho = 0.9`, :math:`\mu = 0.999`, :math:`\epsilon = 10^{-5}`.

:func:`tf_rmsprop_update` is the update in multi-tensor (``torch._foreach_*``) form over any list of
parameters; :class:`LocoProp <locoprop.optim.locoprop.LocoProp>` calls it once per local iteration
for all layers, with one learning rate per parameter as a 0-dim tensor (so nothing in its step is a
Python number that changes from step to step).  The term :math:`\nu g/\sqrt{s+\epsilon}` is computed
as :math:`(\nu g)/\sqrt{s+\epsilon}` for a number :math:`\nu` (``addcdiv``) and for tensors alike, so the
two forms give the same bits.
"""
from __future__ import annotations

import torch

from .validation import FRACTION, NON_NEGATIVE, SIGNATURE_KEY, check_hparams, check_state_dict, guess_owner, signature

__all__ = ["TFRMSProp", "tf_rmsprop_update"]


class TFRMSProp(torch.optim.Optimizer):
    """RMSProp with TF1 semantics; see the module docstring for the update."""

    def __init__(self, params, lr: float = 1e-3, decay: float = 0.9, momentum: float = 0.999, eps: float = 1e-5):
        check_hparams("TFRMSProp", dict(lr=lr, decay=decay, momentum=momentum, eps=eps),
                      {"lr": NON_NEGATIVE, "decay": FRACTION, "momentum": FRACTION, "eps": NON_NEGATIVE})
        super().__init__(params, dict(lr=lr, decay=decay, momentum=momentum, eps=eps))

    def _signature(self) -> dict:
        return signature("TFRMSProp", (p for group in self.param_groups for p in group["params"]))

    def state_dict(self) -> dict:
        """torch.optim state dict plus the signature (parameter shapes) that :meth:`load_state_dict` checks."""
        state = super().state_dict()
        state[SIGNATURE_KEY] = self._signature()
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        """Load the state of a :class:`TFRMSProp` optimizer of the same parameters (``ValueError`` otherwise)."""
        check_state_dict("TFRMSProp", state_dict, self._signature(), _legacy_problem)
        super().load_state_dict(state_dict)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            states = [self.init_state(p) for p in params]
            tf_rmsprop_update(params, [p.grad for p in params], [st["ms"] for st in states],
                              [st["mom"] for st in states], group["lr"], group["decay"], group["momentum"], group["eps"])
        return loss

    def init_state(self, p: torch.Tensor) -> dict:
        """The state of parameter ``p``, created at rest (:math:`s = 1`, :math:`m = 0`) if it has none."""
        state = self.state[p]
        if not state:
            state["ms"] = torch.ones_like(p)
            state["mom"] = torch.zeros_like(p)
        return state


def tf_rmsprop_update(params: list[torch.Tensor], grads: list[torch.Tensor], ms: list[torch.Tensor],
                      mom: list[torch.Tensor], lr: float | list[torch.Tensor], decay: float, momentum: float,
                      eps: float) -> None:
    """The update of the module docstring, in place, in multi-tensor form over all of ``params``.

    ``lr``: one number for every parameter, or one 0-dim tensor per parameter (of the parameters' dtype).
    """
    torch._foreach_mul_(ms, decay)
    torch._foreach_addcmul_(ms, grads, grads, value=1.0 - decay)
    denom = torch._foreach_add(ms, eps)
    torch._foreach_sqrt_(denom)
    torch._foreach_mul_(mom, momentum)
    if isinstance(lr, list):
        step = torch._foreach_mul(grads, lr)  # (lr g) / denom, added: what addcdiv computes for a number
        torch._foreach_div_(step, denom)
        torch._foreach_add_(mom, step)
    else:
        torch._foreach_addcdiv_(mom, grads, denom, value=lr)
    torch._foreach_sub_(params, mom)


def _legacy_problem(state_dict: dict) -> str | None:
    """What shows that a state_dict without signature was not saved by :class:`TFRMSProp`, if anything."""
    for key, state in state_dict["state"].items():
        if not (isinstance(key, int) and isinstance(state, dict) and set(state) == {"ms", "mom"}):
            return f"its per-parameter state is not TF-RMSProp's ms and mom (its structure suggests {guess_owner(state_dict)})"
    return None
