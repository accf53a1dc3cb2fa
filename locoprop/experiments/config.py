r"""Run configurations: the profiles, their defaults, the checks of every field and a run's identity.

A :class:`RunConfig` names one training run of the deep autoencoder; :meth:`RunConfig.resolve`
fills in the profile's defaults and checks every field (one ``ValueError`` saying what is wrong).

The run id is derived from everything that determines the records (dataset, optimizer,
hyper-parameters, seed, profile, sizes, activation, epochs, batch size, warm-up, subset,
divergence threshold, precision, early exits, the revision of the optimizer's arithmetic and the
kind of device: a CUDA run never finds a CPU run's result or checkpoint, nor the reverse), not from
the results folder.  Its files lie under
``<results_dir>/<profile>/`` (default ``data/results/``, see :mod:`locoprop.experiments.records`).

``precision`` names the arithmetic of the run and is part of its id: ``"fp32"`` (the reference) or
``"bf16"``: the training forward and backward passes under ``torch.autocast`` with bfloat16 matrix
products (float32 weights, gradients, optimizer state and loss), LocoProp's local products in
bfloat16 (:class:`~locoprop.optim.locoprop.LocoProp` ``products``); K-FAC's and Shampoo's statistics,
inverses and roots stay float32; evaluation is always float32.

``exits`` are early-exit rules ``(from_epoch, threshold)`` (the tuning's, see
:func:`locoprop.experiments.records.exit_epoch`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..models import ACTIVATIONS, PAPER_SIZES
from ..optim import OPTIMIZERS, REVISIONS, default_lr
from ..precision import PRECISIONS
from .provenance import checkout

__all__ = ["DEFAULT_HPARAMS", "DEFAULT_SIZES", "PROFILES", "Profile", "RunConfig", "RunConflictError",
           "check_device", "default_results_dir", "grid", "integer", "number"]


@dataclass(frozen=True)
class Profile:
    """Defaults of a run scale; every field can be overridden in :class:`RunConfig`.

    ``device=None`` means CUDA when available, else CPU.
    """

    dataset: str
    epochs: int
    batch_size: int
    warmup_epochs: int
    device: str | None

PROFILES: dict[str, Profile] = {
    # Minutes on 2 CPU cores for all optimizers together; deterministic reference outputs.
    "smoke": Profile(dataset="digits", epochs=10, batch_size=100, warmup_epochs=1, device="cpu"),
    # The paper's protocol (DESIGN.md); MNIST train images need a download, so Fashion-MNIST is the default.
    "paper": Profile(dataset="fashion-mnist", epochs=100, batch_size=1000, warmup_epochs=5, device=None),
}

#: Autoencoder widths per dataset: the paper's for 784-pixel images, a scaled-down one (8-unit code)
#: for the 64-pixel digits.
DEFAULT_SIZES: dict[str, tuple[int, ...]] = {
    "digits": (64, 128, 64, 32, 8, 32, 64, 128, 64),
    "mnist": PAPER_SIZES,
    "fashion-mnist": PAPER_SIZES,
}

#: Hyper-parameters per profile and optimizer, merged under those of a :class:`RunConfig`
#: (the config's win).  A missing ``lr`` is the optimizer's own default (``locoprop.optim.default_lr``).
#:
#: smoke: chosen by a learning-rate scan on digits in the smoke profile (seed 0, 10 epochs, final
#: train loss; 4-7 learning rates roughly half a decade apart per optimizer, K-FAC also over damping
#: {0.01, 0.1, 1}).  Final train losses of the chosen values: locoprop-s 17.2, locoprop-m 18.8,
#: shampoo 20.1, adagrad 20.8, adam 21.3, sgd 21.6, kfac 22.5, nesterov 23.9, momentum 24.5,
#: rmsprop 27.3 (its momentum 0.999 barely leaves the mean-image plateau, about 27.2, in 150 steps).
#: paper: the optimizers' own defaults (the paper's LocoProp-M settings); the baselines are meant
#: to be swept (``grid``/``sweep``).
DEFAULT_HPARAMS: dict[str, dict[str, dict[str, Any]]] = {
    "smoke": {
        "sgd": {"lr": 0.1},
        "momentum": {"lr": 0.03},
        "nesterov": {"lr": 0.03},
        "adagrad": {"lr": 0.03},
        "rmsprop": {"lr": 1e-4},
        "adam": {"lr": 0.03},
        "kfac": {"lr": 0.1, "damping": 1.0},
        "shampoo": {"lr": 1e-3},
        "locoprop-s": {"lr": 1e-4},
        "locoprop-m": {"lr": 1e-5},
    },
    "paper": {name: {} for name in OPTIMIZERS},
}

#: The official notebook's settings of LocoProp (ν = 1e-5, γ = 10, and the default T = 10 local iterations),
#: against which the tuned settings are compared at the paper profile.
OFFICIAL_HPARAMS: dict[str, dict[str, Any]] = {"locoprop-m": {"lr": 1e-5, "gamma": 10.0},
                                               "locoprop-s": {"lr": 1e-5, "gamma": 10.0}}


class RunConflictError(ValueError):
    """A result or checkpoint file under a run's name holds a different configuration."""

@dataclass(kw_only=True)
class RunConfig:
    """One training run.  ``None`` fields take the profile's (or dataset's) default.

    ``hparams`` go to :func:`locoprop.make_optimizer` (``lr`` included) on top of
    ``DEFAULT_HPARAMS[profile][optimizer]``.  ``subset`` keeps the first ``subset`` training images
    (the test set is always complete).  ``divergence_factor`` is the explosion threshold relative to
    the epoch-0 train loss.  ``precision``: one of :data:`PRECISIONS`.  ``exits``: early-exit rules
    ``(from_epoch, threshold)`` (see the module docstring).  ``revision``: the revision of the
    optimizer's arithmetic (:data:`locoprop.optim.REVISIONS`; None: the current one); only the
    current one trains, older ones name the result files they produced.
    """

    optimizer: str
    dataset: str | None = None
    profile: str = "smoke"
    hparams: dict[str, Any] = field(default_factory=dict)
    sizes: tuple[int, ...] | None = None
    activation: str = "tanh"
    epochs: int | None = None
    batch_size: int | None = None
    warmup_epochs: int | None = None
    seed: int = 0
    device: str | None = None
    subset: int | None = None
    results_dir: str | None = None
    divergence_factor: float = 10.0
    precision: str = "fp32"
    exits: tuple[tuple[int, float], ...] = ()
    revision: int | None = None

    def resolve(self) -> RunConfig:
        """A copy with every default filled in and every field checked (``ValueError`` if invalid)."""
        if self.profile not in PROFILES:
            raise ValueError(f"unknown profile {self.profile!r}: choose one of {', '.join(PROFILES)}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}: choose one of {', '.join(OPTIMIZERS)}")
        prof = PROFILES[self.profile]
        dataset = self.dataset or prof.dataset
        if dataset not in DEFAULT_SIZES:
            raise ValueError(f"unknown dataset {dataset!r}: choose one of {', '.join(DEFAULT_SIZES)}")
        hparams = {**DEFAULT_HPARAMS[self.profile][self.optimizer], **dict(self.hparams)}
        if hparams.get("lr") is None:
            hparams["lr"] = default_lr(self.optimizer)
        try:
            json.dumps(hparams, allow_nan=False)
        except (TypeError, ValueError) as err:
            raise ValueError(f"hyper-parameters must be finite JSON values (numbers, strings, booleans): {err}") from None
        for key, value in hparams.items():
            _check_numbers(key, value)
        if isinstance(hparams["lr"], bool) or not isinstance(hparams["lr"], (int, float)):
            raise ValueError(f"lr must be a number, got {hparams['lr']!r} (e.g. --lr 1e-3)")
        if self.sizes is not None and len(self.sizes) < 2:
            raise ValueError(f"sizes must list at least the input and output widths, got {list(self.sizes)} "
                             f"(leave them out for the dataset's default)")
        resolved = dataclasses.replace(
            self,
            dataset=dataset,
            hparams=hparams,
            sizes=tuple(integer("sizes", s, 1) for s in (self.sizes or DEFAULT_SIZES[dataset])),
            epochs=integer("epochs", prof.epochs if self.epochs is None else self.epochs, 1),
            batch_size=integer("batch_size", prof.batch_size if self.batch_size is None else self.batch_size, 1),
            warmup_epochs=integer("warmup_epochs",
                                   prof.warmup_epochs if self.warmup_epochs is None else self.warmup_epochs, 0),
            seed=integer("seed", self.seed, 0),
            subset=None if self.subset is None else integer("subset", self.subset, 1),
            device=check_device(self.device or prof.device or ("cuda" if torch.cuda.is_available() else "cpu")),
            results_dir=str(Path(self.results_dir or default_results_dir()).expanduser().resolve()),
            divergence_factor=number("divergence_factor", self.divergence_factor),
            exits=tuple((integer("exits epoch", e, 0), number("exits threshold", t)) for e, t in self.exits),
            revision=REVISIONS[self.optimizer] if self.revision is None else integer("revision", self.revision, 1),
        )
        if resolved.seed > MAX_SEED:
            raise ValueError(f"seed must be at most 2**64 - 1 = {MAX_SEED} (the range of torch.manual_seed), "
                             f"got {_short(resolved.seed)}")
        parameters = sum(a * b + b for a, b in zip(resolved.sizes, resolved.sizes[1:]))
        if parameters > MAX_PARAMETERS:
            raise ValueError(f"sizes {_short(list(resolved.sizes), 60)} give a model of {_magnitude(parameters)} parameters: at most "
                             f"2**31 = {MAX_PARAMETERS:.3g} are allowed (8 GiB of float32 weights alone, before "
                             f"gradients and optimizer state); choose smaller widths")
        if not resolved.warmup_epochs < resolved.epochs:
            raise ValueError(f"the warm-up (warmup_epochs={resolved.warmup_epochs}) must be shorter than the run "
                             f"(epochs={resolved.epochs}): lower --warmup-epochs or raise --epochs")
        if resolved.subset is not None and resolved.subset < resolved.batch_size:
            raise ValueError(f"subset ({resolved.subset}) must hold at least one batch ({resolved.batch_size})")
        if not resolved.divergence_factor > 1.0:
            raise ValueError(f"divergence_factor must be > 1, got {resolved.divergence_factor}")
        if resolved.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {resolved.precision!r}: choose one of {', '.join(PRECISIONS)}")
        if resolved.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {resolved.activation!r}: choose one of {', '.join(ACTIVATIONS)}")
        if resolved.revision > REVISIONS[self.optimizer]:
            raise ValueError(f"revision {resolved.revision} of {self.optimizer}'s arithmetic does not exist: the "
                             f"current one is {REVISIONS[self.optimizer]} (leave revision out)")
        if resolved.device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"device {resolved.device!r} requested but CUDA is not available: use --device cpu")
        return resolved

    def identity(self) -> dict[str, Any]:
        """The fields that determine the records (of a resolved config), as JSON-ready values.

        The arithmetic's revision and the kind of device are part of it where they differ from the
        first revision and the CPU, so that the ids of CPU runs of revision 1 are those they always had.
        """
        keys = ("dataset", "optimizer", "hparams", "seed", "profile", "sizes", "activation", "epochs",
                "batch_size", "warmup_epochs", "subset", "divergence_factor", "precision", "exits")
        ident = json.loads(json.dumps({k: getattr(self, k) for k in keys}))
        if self.revision != 1:
            ident["revision"] = self.revision
        device_type = torch.device(self.device).type
        if device_type != "cpu":
            ident["device_type"] = device_type
        return ident

    @property
    def run_id(self) -> str:
        """``<dataset>_<optimizer>_seed<seed>_<hash>``; the hash covers :meth:`identity` (of the resolved config)."""
        cfg = self.resolve()

        def canonical(value):  # 1 and 1.0 are the same hyper-parameter value
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                return value
            return float(value)

        ident = cfg.identity()
        ident["hparams"] = {k: canonical(v) for k, v in ident["hparams"].items()}
        digest = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:10]
        return f"{cfg.dataset}_{cfg.optimizer}_seed{cfg.seed}_{digest}"

    def paths(self) -> dict[str, Path]:
        """The result JSON and CSV, the checkpoint and the lock file of this configuration."""
        cfg = self.resolve()
        folder = Path(cfg.results_dir) / cfg.profile
        rid = self.run_id
        return {"json": folder / f"{rid}.json", "csv": folder / f"{rid}.csv",
                "checkpoint": folder / "checkpoints" / f"{rid}.pt", "lock": folder / "checkpoints" / f"{rid}.lock"}

#: The largest seed: torch.manual_seed takes seeds below 2**64.
MAX_SEED = 2 ** 64 - 1
#: The most parameters a model may have: 2**31, 8 GiB of float32 weights alone (a run needs several
#: times that with gradients and optimizer state); the paper's autoencoder has 2.8 million.
MAX_PARAMETERS = 2 ** 31

def _short(value: Any, width: int = 24) -> str:
    text = str(value)
    return text if len(text) <= width else f"{text[:width]}... ({len(text)} characters)"

def _finite(x: int | float) -> bool:
    try:
        return math.isfinite(x)
    except OverflowError:  # an int beyond the floats
        return False

def _magnitude(n: int) -> str:
    return f"{n:.3g}" if n < 10 ** 300 else f"about 1e{len(str(n)) - 1}"

def _check_numbers(name: str, value: Any) -> None:
    """A ``ValueError`` unless every number in the hyper-parameter ``value`` is a finite float and
    every whole number fits in 64 bits (what the optimizers and torch can take)."""
    if isinstance(value, (list, tuple)):
        for item in value:
            _check_numbers(name, item)
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_numbers(f"{name}.{key}", item)
    elif isinstance(value, int) and not isinstance(value, bool) and not -2 ** 63 <= value < 2 ** 63:
        raise ValueError(f"hyper-parameter {name} = {_short(value)} is out of range: whole numbers must fit in 64 "
                         f"bits and numbers must be finite floats (below 1.8e308)")
    elif isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"hyper-parameter {name} = {value} must be a finite number")

def default_results_dir() -> Path:
    """``data/results`` of the checkout the command runs in (:func:`~locoprop.experiments.provenance.checkout`)."""
    return checkout() / "data" / "results"

def integer(name: str, value: Any, minimum: int) -> int:
    """``value`` as an int >= ``minimum``; a fraction, a boolean or a string is refused, not truncated."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or \
            not (isinstance(value, int) or float(value).is_integer()) or value < minimum:
        raise ValueError(f"{name} must be a whole number >= {minimum}, got {value!r}")
    return int(value)

def number(name: str, value: Any) -> float:
    """``value`` as a finite float (booleans and strings refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not _finite(value):
        raise ValueError(f"{name} must be a finite number, got {_short(value)}")
    return float(value)

def check_device(name: str) -> str:
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"unknown device {name!r}: use cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {name!r}: use cpu, cuda or cuda:N")
    return str(name)

def grid(base: RunConfig, **axes: Any) -> list[RunConfig]:
    """The Cartesian product of ``axes`` applied to ``base``, in order (the last axis varies fastest).

    An axis named like a :class:`RunConfig` field (``seed``, ``optimizer``, ``epochs`` ...) sets that
    field; any other name is a hyper-parameter (``lr``, ``damping`` ...).  A scalar is a 1-point axis.
    Example: ``grid(RunConfig(optimizer="adam"), lr=[1e-3, 1e-2], seed=[0, 1])`` gives 4 configs.
    """
    fields = {f.name for f in dataclasses.fields(RunConfig)} - {"hparams"}
    names = list(axes)
    values = [v if isinstance(v, (list, tuple, range)) else [v] for v in axes.values()]
    configs = []
    for point in itertools.product(*values):
        hparams = dict(base.hparams)
        changes = {}
        for name, value in zip(names, point):
            (changes if name in fields else hparams)[name] = value
        configs.append(dataclasses.replace(base, hparams=hparams, **changes))
    return configs
