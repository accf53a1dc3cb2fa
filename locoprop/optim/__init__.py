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
(:mod:`locoprop.capture`), so the loop needs nothing else: exactly one forward pass with
gradients and one ``loss.backward()`` per ``step()``.  They refuse gradient accumulation (several
backward passes, or one through several forward passes, between two steps) with a
``RuntimeError``; ``zero_grad()`` discards the gradients recorded so far.

Hyper-parameters are checked when an optimizer is built: a one-line ``ValueError`` names the
parameter, the value and what is expected (finite numbers, not strings or booleans; integers
where a count is meant).  See :mod:`locoprop.optim.validation`.

Checkpoints.  ``state_dict()`` of LocoProp, K-FAC, Shampoo and TF-RMSProp carries a
``"signature"`` (optimizer, variant, inner optimizer, parameter shapes) that their
``load_state_dict`` checks, so the state of another optimizer or of a model of other widths is
refused with a ``ValueError``; state_dicts saved without one are still loaded.  ``torch.optim``'s
own optimizers (``sgd``, ``momentum``, ``nesterov``, ``adagrad``, ``adam``) check nothing but the
parameter counts: they accept another optimizer's state and fail later, or not at all (SGD with
momentum takes Shampoo's ``momentum_buffer``).  Check
``locoprop.optim.validation.state_dict_owner(state)`` before loading a checkpoint into them.
"""
from .factory import DEFAULT_LR, FIRST_ORDER, LABELS, OPTIMIZERS, REVISIONS, default_lr, make_optimizer
from .locoprop import LocoProp
from .tf_rmsprop import TFRMSProp


def __getattr__(name):
    if name in ("KFAC", "Shampoo"):
        from .factory import _second_order

        return _second_order(name.lower())
    raise AttributeError(name)


__all__ = ["LocoProp", "TFRMSProp", "KFAC", "Shampoo", "make_optimizer", "default_lr", "OPTIMIZERS", "FIRST_ORDER", "DEFAULT_LR", "LABELS", "REVISIONS"]
