r"""The paper's learning-rate schedule: linear warm-up, then linear decay to zero.

:math:`\nu_t = \nu_0\, t/t_w` for :math:`t < t_w` and :math:`\nu_0\,(t_{\max}-t)/(t_{\max}-t_w)`
afterwards (in optimizer steps).  The official notebook's version starts at :math:`\nu = 0` for the
whole first epoch and never reaches zero; here the warm-up starts at :math:`\nu_0/t_w` after the
first step and the last step uses :math:`\nu_0/(t_{\max}-t_w)`.
"""
from __future__ import annotations

import torch
from torch.optim.lr_scheduler import LambdaLR

__all__ = ["warmup_linear_decay_factor", "warmup_linear_decay"]


def warmup_linear_decay_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """Multiplier of the base learning rate for (0-based) optimizer step ``step``."""
    if warmup_steps < 0 or total_steps < 1 or warmup_steps >= total_steps:
        raise ValueError(
            f"need 0 <= warmup_steps < total_steps, got warmup_steps={warmup_steps}, total_steps={total_steps}"
        )
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return max(total_steps - step, 0) / (total_steps - warmup_steps)


def warmup_linear_decay(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int) -> LambdaLR:
    """A ``LambdaLR`` scheduler (call ``.step()`` after every optimizer step) for the schedule above."""
    warmup_linear_decay_factor(0, warmup_steps, total_steps)  # validate now, not at the first step
    return LambdaLR(optimizer, lambda step: warmup_linear_decay_factor(step, warmup_steps, total_steps))
