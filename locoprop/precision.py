r"""The precisions a training run's matrix products can take: a name for each dtype.

``"fp32"`` is the reference; ``"bf16"`` takes the training forward and backward products in
bfloat16 with float32 weights, gradients and optimizer state (see
:func:`locoprop.make_optimizer`'s ``precision`` and :class:`locoprop.LocoProp`'s ``products``).
Whether bf16 changes an optimizer's result is measured by :mod:`locoprop.experiments.bf16_check`.

**Accumulation.**  A bfloat16 product rounds its factors to bfloat16 (8 significant bits), sums the
products in float32 and rounds the sum once to bfloat16.  On the CPU the sums are always float32.
CUDA's cuBLAS may instead add partial sums in bfloat16 unless
``torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction`` is False (it is True by
default), which makes the error of a length-:math:`B` sum grow like :math:`B\,2^{-8}` instead of
:math:`2^{-8} + B\,2^{-24}`; :func:`float32_accumulation` turns it off for the products it encloses
and restores the setting afterwards.
"""
from __future__ import annotations

import contextlib

import torch

__all__ = ["PRECISIONS", "float32_accumulation"]

#: A run's precision: the dtype of its training matrix products ("fp32" is the reference).
PRECISIONS: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16}


@contextlib.contextmanager
def float32_accumulation(device: torch.device | str, enabled: bool = True):
    """Reduced-precision products accumulate in float32 inside the context (CUDA's
    ``allow_bf16_reduced_precision_reduction`` False), the setting restored on exit; a no-op on the
    CPU, which always accumulates in float32, or when not ``enabled``."""
    if not enabled or torch.device(device).type != "cuda":
        yield
        return
    matmul = torch.backends.cuda.matmul
    before = matmul.allow_bf16_reduced_precision_reduction
    matmul.allow_bf16_reduced_precision_reduction = False
    try:
        yield
    finally:
        matmul.allow_bf16_reduced_precision_reduction = before
