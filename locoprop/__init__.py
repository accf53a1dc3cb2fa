"""LocoProp (Amid, Anil & Warmuth, AISTATS 2022) and its baselines in PyTorch: the optimizer library.

``locoprop`` needs only torch: the optimizers (:mod:`locoprop.optim`), the layerwise capture they
share (:mod:`locoprop.capture`), the transfer functions and their matching losses
(:mod:`locoprop.transfer`), the deep autoencoder (:mod:`locoprop.models`) and the learning-rate
schedule (:mod:`locoprop.schedules`).  The harness that reproduces the paper lives in
:mod:`locoprop.experiments` (``python -m locoprop``), which imports this library and never the reverse.
"""
from . import models, transfer
from .capture import LayerCapture
from .optim import OPTIMIZERS, LocoProp, TFRMSProp, make_optimizer
from .schedules import warmup_linear_decay

__version__ = "0.1.0"
__all__ = ["LocoProp", "KFAC", "Shampoo", "TFRMSProp", "LayerCapture", "make_optimizer", "OPTIMIZERS", "models",
           "transfer", "warmup_linear_decay"]


def __getattr__(name):
    if name in ("KFAC", "Shampoo"):
        from . import optim

        return getattr(optim, name)
    raise AttributeError(f"module 'locoprop' has no attribute {name!r}")
