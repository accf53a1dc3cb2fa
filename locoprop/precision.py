"""bfloat16 against float32: the check that decides where ``precision="bf16"`` is offered.

``precision="bf16"`` (:func:`locoprop.runner.products`) takes the training matrix products in
bfloat16 with float32 weights, optimizer state and accumulation.  Whether that changes the result is
measured, per optimizer, on the paper's problem: its tuned setting (:mod:`locoprop.tuning`) trains
:data:`CHECK` (10 epochs of the paper protocol, 1 warm-up epoch, seed 0) once in each precision, and
bfloat16 is offered for the optimizer when the final training losses differ by at most
:data:`TOLERANCE` (0.5 %) relative.

``python -m locoprop sweep --tuned --profile paper --dataset fashion-mnist --optimizer NAME[,...]
--epochs 10 --warmup-epochs 1 --grid precision=fp32,bf16`` runs the check; the ablation notebook
draws it.
"""
from __future__ import annotations

import dataclasses

import torch

__all__ = ["CHECK", "MEASURED", "PRECISIONS", "TOLERANCE", "bf16_offered", "check_configs"]

#: A run's precision: the dtype of its training matrix products ("fp32" is the reference).
PRECISIONS: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16}

CHECK = {"epochs": 10, "warmup_epochs": 1, "seed": 0}
TOLERANCE = 0.005

#: The check's result per optimizer (Fashion-MNIST, float32 reference): the relative difference
#: (bf16 - fp32) / fp32 of the final training loss.  Filled in from the check's result files
#: under ``data/results/paper/``; an optimizer missing here has not been checked.
MEASURED: dict[str, float] = {
    # 10 epochs, tuned settings, seed 0, on a 2-core AMD EPYC, torch 2.13.0 (the first five with one
    # torch thread per run, the others with two): (bf16 - fp32) / fp32 of the final train loss
    "locoprop-m": 0.00256,   # fp32 205.68, bf16 206.21
    "locoprop-s": 0.00076,   # fp32 207.79, bf16 207.94
    "kfac": -0.00062,        # fp32 223.96, bf16 223.82
    "shampoo": 0.00145,      # fp32 212.15, bf16 212.46
    "adam": -0.00097,        # fp32 228.02, bf16 227.79
    "rmsprop": 0.01037,      # fp32 273.81, bf16 276.65: outside the limit
    "momentum": -0.00255,    # fp32 247.67, bf16 247.04
    "nesterov": 0.52628,     # fp32 251.81, bf16 384.33: the bf16 run fell to the mean-image loss in epoch 2
    "adagrad": -0.00066,     # fp32 243.75, bf16 243.59
    "sgd": -0.01077,         # fp32 260.51, bf16 257.70: outside the limit
}


def bf16_offered(optimizer: str) -> bool:
    """Whether the check found ``optimizer``'s bf16 final training loss within :data:`TOLERANCE` of float32."""
    return optimizer in MEASURED and abs(MEASURED[optimizer]) <= TOLERANCE


def check_configs(dataset: str = "fashion-mnist", device: str | None = None, results_dir: str | None = None) -> list:
    """The fp32 and bf16 check runs of every optimizer whose tuning on ``dataset`` is finished."""
    from .optim import OPTIMIZERS
    from .runner import RunConfig
    from .tuning import tuned

    configs = []
    for name in OPTIMIZERS:
        base = RunConfig(optimizer=name, profile="paper", dataset=dataset, device=device, results_dir=results_dir)
        setting = tuned(base).setting
        if setting is None:
            continue
        for precision in PRECISIONS:
            configs.append(dataclasses.replace(base, hparams=dict(setting), precision=precision, **CHECK))
    return configs
