"""LocoProp (Amid, Anil & Warmuth, AISTATS 2022) and its baselines in PyTorch."""
from . import data, models, results, runner, transfer
from .capture import LayerCapture
from .optim import OPTIMIZERS, LocoProp, TFRMSProp, make_optimizer
from .schedules import warmup_linear_decay

__version__ = "0.1.0"
__all__ = ["LocoProp", "KFAC", "Shampoo", "TFRMSProp", "LayerCapture", "make_optimizer", "OPTIMIZERS", "models", "transfer", "data", "runner", "results", "warmup_linear_decay"]


def __getattr__(name):
    if name in ("KFAC", "Shampoo"):
        from . import optim

        return getattr(optim, name)
    raise AttributeError(f"module 'locoprop' has no attribute {name!r}")
