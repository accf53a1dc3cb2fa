"""The hyper-parameter grids of the paper-scale comparison: one equal budget for every optimizer.

Every optimizer gets the same number of trials (12), spent on the knobs its own literature tunes:
the learning rate for the first-order methods, learning rate x damping for K-FAC, learning rate x
epsilon x grafting for Shampoo, learning rate x gamma for LocoProp.  As in the paper, the setting
with the lowest final training loss wins; the finalists are then run with several seeds.
Learning rates are spaced by factors of about 2 to 3 over the range where the optimizer trains the
autoencoder at batch 1000 with the summed (per-image) cross-entropy, whose gradients are large.

``python -m locoprop tune --optimizer NAME[,NAME...] --profile paper --dataset fashion-mnist``
runs the grid (resumable, finished runs skipped); ``--finalists --seeds 0,1,2`` then reruns the best
setting of each optimizer with the given seeds.
"""
from __future__ import annotations

from typing import Any

__all__ = ["BUDGET", "GRIDS", "grid_configs", "best_setting"]

BUDGET = 12

_FIRST_ORDER_LRS = [1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 0.1, 0.2, 0.5]

GRIDS: dict[str, dict[str, list[Any]]] = {
    "sgd": {"lr": _FIRST_ORDER_LRS},
    "momentum": {"lr": [lr / 10 for lr in _FIRST_ORDER_LRS]},
    "nesterov": {"lr": [lr / 10 for lr in _FIRST_ORDER_LRS]},
    "adagrad": {"lr": _FIRST_ORDER_LRS},
    # TF1 RMSProp multiplies the lr into a momentum-0.999 buffer: its steps are ~1000 lr.
    "rmsprop": {"lr": [1e-7, 2e-7, 5e-7, 1e-6, 2e-6, 5e-6, 1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4]},
    "adam": {"lr": [1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2]},
    "kfac": {"lr": [0.01, 0.03, 0.1, 0.3], "damping": [0.1, 1.0, 10.0]},
    "shampoo": {"lr": [3e-4, 1e-3, 3e-3], "epsilon": [1e-6, 1e-4], "grafting": ["adam", "rmsprop"]},
    "locoprop-s": {"lr": [3e-6, 1e-5, 3e-5, 1e-4], "gamma": [1.0, 10.0, 100.0]},
    "locoprop-m": {"lr": [3e-6, 1e-5, 3e-5, 1e-4], "gamma": [1.0, 10.0, 100.0]},
}


def grid_configs(base):
    """The configurations of ``base.optimizer``'s grid: ``base`` with each grid point's hyper-parameters."""
    from .runner import grid

    if base.optimizer not in GRIDS:
        raise ValueError(f"no tuning grid for {base.optimizer!r}: choose one of {', '.join(GRIDS)}")
    return grid(base, **GRIDS[base.optimizer])


def best_setting(results) -> dict[str, Any]:
    """Hyper-parameters of the completed run with the lowest final training loss (the paper's criterion)."""
    finished = [r for r in results if r.status == "completed"]
    if not finished:
        raise ValueError("every run of the grid diverged: widen the grid towards smaller learning rates")
    return min(finished, key=lambda r: r.final["train_loss"]).config.hparams
