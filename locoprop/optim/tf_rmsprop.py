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
"""
from __future__ import annotations

import torch

__all__ = ["TFRMSProp"]


class TFRMSProp(torch.optim.Optimizer):
    """RMSProp with TF1 semantics; see the module docstring for the update."""

    def __init__(self, params, lr: float = 1e-3, decay: float = 0.9, momentum: float = 0.999, eps: float = 1e-5):
        if not lr >= 0.0:
            raise ValueError(f"invalid learning rate lr={lr}: it must be >= 0")
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"invalid decay={decay}: it must lie in [0, 1)")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"invalid momentum={momentum}: it must lie in [0, 1)")
        if not eps >= 0.0:
            raise ValueError(f"invalid eps={eps}: it must be >= 0")
        super().__init__(params, dict(lr=lr, decay=decay, momentum=momentum, eps=eps))

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
            for p in params:
                if not self.state[p]:
                    self.state[p]["ms"] = torch.ones_like(p)
                    self.state[p]["mom"] = torch.zeros_like(p)
            grads = [p.grad for p in params]
            ms = [self.state[p]["ms"] for p in params]
            mom = [self.state[p]["mom"] for p in params]
            # multi-tensor (foreach) form of the three updates in the module docstring
            torch._foreach_mul_(ms, group["decay"])
            torch._foreach_addcmul_(ms, grads, grads, value=1.0 - group["decay"])
            denom = torch._foreach_add(ms, group["eps"])
            torch._foreach_sqrt_(denom)
            torch._foreach_mul_(mom, group["momentum"])
            torch._foreach_addcdiv_(mom, grads, denom, value=group["lr"])
            torch._foreach_sub_(params, mom)
        return loss
