"""bfloat16 against float32: the check that decides where ``precision="bf16"`` is offered.

``precision="bf16"`` (:func:`locoprop.experiments.train.products`) takes the training matrix
products in bfloat16 with float32 weights, optimizer state and accumulation.  Whether that changes
the result is measured, per optimizer, on the paper's problem: the winner of its short search
(:mod:`locoprop.experiments.tuning`) trains :data:`CHECK` (10 epochs of the paper protocol, 1
warm-up epoch, seed 0) once in each precision, and bfloat16 is offered for the optimizer when the
final training losses differ by at most :data:`TOLERANCE` (0.5 %) relative.  The measured
differences are read from those result files (:func:`measured`), never typed in.

``python -m locoprop sweep --tuned --search short --profile paper --dataset fashion-mnist
--optimizer NAME[,...] --epochs 10 --warmup-epochs 1 --grid precision=fp32,bf16`` runs the check;
the ablation notebook draws it.
"""
from __future__ import annotations

import dataclasses
import functools

from ..optim import OPTIMIZERS
from ..precision import PRECISIONS
from .config import RunConfig
from .records import find_result
from .tuning import tuned

__all__ = ["CHECK", "TOLERANCE", "bf16_offered", "check_configs", "measured"]

CHECK = {"epochs": 10, "warmup_epochs": 1, "seed": 0}
TOLERANCE = 0.005


def check_configs(dataset: str = "fashion-mnist", device: str | None = None, results_dir: str | None = None) -> list:
    """The fp32 and bf16 check runs of every optimizer whose short search on ``dataset`` is finished."""
    configs = []
    for name in OPTIMIZERS:
        base = RunConfig(optimizer=name, profile="paper", dataset=dataset, device=device, results_dir=results_dir)
        setting = tuned(base).setting
        if setting is None:
            continue
        for precision in PRECISIONS:
            configs.append(dataclasses.replace(base, hparams=dict(setting), precision=precision, **CHECK))
    return configs


@functools.lru_cache(maxsize=8)
def measured(dataset: str = "fashion-mnist", device: str | None = "cpu", results_dir: str | None = None) -> dict[str, float]:
    """Per optimizer whose fp32 and bf16 check runs both completed: (bf16 - fp32) / fp32 of their final
    training loss, read from the result files (``device``: where the check ran)."""
    runs = {(c.optimizer, c.precision): find_result(c) for c in check_configs(dataset, device, results_dir)}
    out = {}
    for name in OPTIMIZERS:
        fp32, bf16 = runs.get((name, "fp32")), runs.get((name, "bf16"))
        if fp32 is not None and bf16 is not None and fp32.status == bf16.status == "completed":
            reference = fp32.final["train_loss"]
            out[name] = (bf16.final["train_loss"] - reference) / reference
    return out


def bf16_offered(optimizer: str, results_dir: str | None = None) -> bool:
    """Whether the check found ``optimizer``'s bf16 final training loss within :data:`TOLERANCE` of float32."""
    found = measured(results_dir=results_dir)
    return optimizer in found and abs(found[optimizer]) <= TOLERANCE
