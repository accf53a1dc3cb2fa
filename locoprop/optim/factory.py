"""Every optimizer of the benchmark by name, built the same way.

``make_optimizer(name, model, lr=None, **hparams)`` returns a ``torch.optim.Optimizer`` for
``model``; ``lr=None`` takes the optimizer's default below.  The names:

============  ===============================================================
sgd           ``torch.optim.SGD``
momentum      ``torch.optim.SGD`` with heavy-ball momentum 0.9
nesterov      ``torch.optim.SGD`` with Nesterov momentum 0.9
adagrad       ``torch.optim.Adagrad``
rmsprop       :class:`~locoprop.optim.tf_rmsprop.TFRMSProp` (the notebook's BP baseline)
adam          ``torch.optim.Adam``
kfac          :class:`~locoprop.optim.kfac.KFAC`
shampoo       :class:`~locoprop.optim.shampoo.Shampoo`
locoprop-s    :class:`~locoprop.optim.locoprop.LocoProp` with ``variant="S"``
locoprop-m    :class:`~locoprop.optim.locoprop.LocoProp` with ``variant="M"``
============  ===============================================================
"""
from __future__ import annotations

import importlib
from typing import Any

import torch
from torch import nn

from ..precision import PRECISIONS
from .locoprop import LocoProp
from .tf_rmsprop import TFRMSProp

__all__ = ["OPTIMIZERS", "FIRST_ORDER", "DEFAULT_LR", "LABELS", "REVISIONS", "make_optimizer"]

FIRST_ORDER = ("sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam")
OPTIMIZERS = FIRST_ORDER + ("kfac", "shampoo", "locoprop-s", "locoprop-m")

#: The display name of every optimizer, as tables and figures write it.
LABELS: dict[str, str] = {"sgd": "SGD", "momentum": "Momentum", "nesterov": "Nesterov", "adagrad": "AdaGrad",
                          "rmsprop": "RMSProp", "adam": "Adam", "shampoo": "Shampoo", "kfac": "K-FAC",
                          "locoprop-s": "LocoProp-S", "locoprop-m": "LocoProp-M"}

# (class, fixed keyword arguments) of the first-order optimizers.
_FIRST_ORDER: dict[str, tuple[type[torch.optim.Optimizer], dict[str, Any]]] = {
    "sgd": (torch.optim.SGD, {}),
    "momentum": (torch.optim.SGD, {"momentum": 0.9}),
    "nesterov": (torch.optim.SGD, {"momentum": 0.9, "nesterov": True}),
    "adagrad": (torch.optim.Adagrad, {}),
    "rmsprop": (TFRMSProp, {}),
    "adam": (torch.optim.Adam, {}),
}

#: The revision of each optimizer's arithmetic, raised when a change of the code changes its results
#: (beyond the reordering of sums that the number of threads also causes); results record it.
#: shampoo 2: inverse roots from a float64 ``eigh`` (float32 before).  locoprop-s, locoprop-m 2: the
#: local pre-activations in the displacement form in every precision (recomputed in float32 before).
#: LocoProp-S's Gram form (reassociated products, the same sums in another order) keeps revision 2: on
#: 10,000 Fashion-MNIST images at its short-tuned setting, after 100 steps, it moves the train loss by
#: as much as the number of threads does (237.3 and 238.2 in the Gram form on 2 and 1 threads, 238.6
#: and 238.2 in the displacement form).
REVISIONS: dict[str, int] = {**{name: 1 for name in OPTIMIZERS}, "shampoo": 2, "locoprop-s": 2, "locoprop-m": 2}

DEFAULT_LR: dict[str, float] = {
    "sgd": 1e-2,
    "momentum": 1e-3,
    "nesterov": 1e-3,
    "adagrad": 1e-2,
    "rmsprop": 3e-4,
    "adam": 1e-3,
    "locoprop-s": 1e-5,
    "locoprop-m": 1e-5,
}


def _second_order(name: str) -> type[torch.optim.Optimizer]:
    module = importlib.import_module(f".{name}", __package__)
    return getattr(module, {"kfac": "KFAC", "shampoo": "Shampoo"}[name])


def default_lr(name: str) -> float:
    """The default learning rate of optimizer ``name``."""
    if name in DEFAULT_LR:
        return DEFAULT_LR[name]
    return importlib.import_module(f".{name}", __package__).DEFAULT_LR


def make_optimizer(
    name: str, model: nn.Module, lr: float | None = None, output_activation: str = "sigmoid",
    precision: str = "fp32", **hparams: Any
) -> torch.optim.Optimizer:
    """The optimizer called ``name`` for ``model`` (see the module docstring for the names).

    ``output_activation`` is the transfer function the loss applies to the model's output; the
    layerwise optimizers (LocoProp, K-FAC) use it for the last layer.  ``precision`` is the run's
    (``"fp32"`` or ``"bf16"``, see :mod:`locoprop.precision`): with ``"bf16"`` LocoProp takes its local
    products in bfloat16 too; the other optimizers keep their own arithmetic in float32.  Other
    keyword arguments go to the optimizer's constructor.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}: choose one of {', '.join(OPTIMIZERS)}")
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    lr = default_lr(name) if lr is None else lr
    if name in _FIRST_ORDER:
        cls, fixed = _FIRST_ORDER[name]
        return cls(model.parameters(), lr=lr, **{**fixed, **hparams})
    if name.startswith("locoprop"):
        variant = name[-1].upper()
        if precision == "bf16":
            hparams.setdefault("products", "bfloat16")
        return LocoProp(model, lr=lr, variant=variant, output_activation=output_activation, **hparams)
    if name == "kfac":
        return _second_order("kfac")(model, lr=lr, output_activation=output_activation, **hparams)
    return _second_order("shampoo")(model.parameters(), lr=lr, **hparams)
