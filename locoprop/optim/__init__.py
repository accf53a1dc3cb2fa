"""Optimizers: LocoProp, its inner TF1-RMSProp, K-FAC, Shampoo, and the factory of all of them.

Training-loop protocol.  Every optimizer here follows ``torch.optim`` conventions and is driven by
the same loop::

    opt.zero_grad()
    loss = loss_fn(model(x), x)
    loss.backward()
    opt.step(closure if getattr(opt, "needs_loss_closure", False) else None)

An optimizer whose ``needs_loss_closure`` is true (K-FAC with adaptive damping) is given a
``closure()`` that returns the batch loss at the current parameters, evaluated under
``torch.no_grad()`` without a backward pass.  LocoProp and K-FAC read the layer inputs,
pre-activations and their gradients from the forward and backward pass just made
(:mod:`locoprop.capture`), so the loop needs nothing else.
"""
from .factory import DEFAULT_LR, FIRST_ORDER, OPTIMIZERS, default_lr, make_optimizer
from .locoprop import LocoProp
from .tf_rmsprop import TFRMSProp


def __getattr__(name):
    if name in ("KFAC", "Shampoo"):
        from .factory import _second_order

        return _second_order(name.lower())
    raise AttributeError(name)


__all__ = ["LocoProp", "TFRMSProp", "KFAC", "Shampoo", "make_optimizer", "default_lr", "OPTIMIZERS", "FIRST_ORDER", "DEFAULT_LR"]
