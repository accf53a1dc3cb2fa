"""The precisions a training run's matrix products can take: a name for each dtype.

``"fp32"`` is the reference; ``"bf16"`` takes the training forward and backward products in
bfloat16 with float32 weights, gradients and optimizer state (see
:func:`locoprop.make_optimizer`'s ``precision`` and :class:`locoprop.LocoProp`'s ``products``).
Whether bf16 changes an optimizer's result is measured by :mod:`locoprop.experiments.bf16_check`.
"""
from __future__ import annotations

import torch

__all__ = ["PRECISIONS"]

#: A run's precision: the dtype of its training matrix products ("fp32" is the reference).
PRECISIONS: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16}
