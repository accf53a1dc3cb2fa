r"""The experiment runner: one configuration in, per-epoch records and a result file out.

Every optimizer is trained by the same loop (batches drawn without replacement from a permutation
of the training set, the last incomplete batch dropped)::

    opt.zero_grad(set_to_none=True)
    loss = reconstruction_loss(model(x), x)
    loss.backward()
    opt.step(closure) if opt.needs_loss_closure else opt.step()
    scheduler.step()            # linear warm-up, then linear decay to zero

with the data on the device once and no host synchronisation inside an epoch.  Epoch 0 records
the untrained model; after every epoch the full train and test sets are evaluated under
``torch.no_grad()`` (not counted in the training time): sigmoid cross-entropy in nats per image
and per-pixel squared error of :math:`\sigma(\text{logits})`.

Files, under ``<results_dir>/<profile>/`` (default ``data/results/``):

* ``<run_id>.json``: the records plus provenance (config, git commit, versions, device, times,
  status).  A *finished* run (``completed``, ``diverged`` or ``abandoned``) is skipped when the
  same configuration runs again.  A run trained only up to a budget (``run(..., until=E)``: the
  rungs of successive halving) is ``stopped``: its file holds the records up to epoch ``E`` and its
  checkpoint stays, so a later call with a larger budget continues it;
* ``<run_id>.csv``: the per-epoch records;
* ``checkpoints/<run_id>.pt`` while a run is under way (written atomically after every epoch,
  removed once the result is written): running the same configuration again resumes from it and
  gives the same records as an uninterrupted run.  It is loaded as data only
  (``weights_only=True``) and only if it matches the SHA-256 in ``checkpoints/<run_id>.pt.sha256``.

Records are bit-exact for the same code, library versions, device and number of threads (the
provenance records the CPU model and the threads): a different thread count changes the order of
floating-point sums and so the last bits.

The run id is derived from everything that determines the records (dataset, optimizer,
hyper-parameters, seed, profile, sizes, activation, epochs, batch size, warm-up, subset,
divergence threshold), not from the device or the results folder.

A run *diverges* when an evaluated loss is not finite or the train loss exceeds
``divergence_factor`` times its value at epoch 0; it stops there and is recorded as diverged.
A run with ``exits`` (the tuning trials' early exits) is *abandoned* at the first epoch ``e``
with a rule ``(from_epoch, threshold)``, ``e >= from_epoch``, whose best train loss so far exceeds
``threshold``; ``diverged_epoch`` is the epoch at which a diverged or abandoned run stopped.

``precision`` names the arithmetic of the run and is part of its id: ``"fp32"`` (the reference) or
``"bf16"``: the training forward and backward passes under ``torch.autocast`` with bfloat16 matrix
products (float32 weights, gradients, optimizer state and loss), LocoProp's local products in
bfloat16 (:class:`~locoprop.optim.locoprop.LocoProp` ``products``); K-FAC's and Shampoo's statistics,
inverses and roots stay float32; evaluation is always float32.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import itertools
import json
import math
import multiprocessing
import os
import socket
import time
import warnings
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from . import data
from .models import ACTIVATIONS, PAPER_SIZES, deep_autoencoder, reconstruction_loss, squared_error
from .optim import OPTIMIZERS, default_lr, make_optimizer
from . import precision as bf16_check
from .precision import PRECISIONS
from .provenance import PROJECT_ROOT, atomic_write, now
from .provenance import provenance as make_provenance
from .schedules import warmup_linear_decay

__all__ = [
    "DEFAULT_HPARAMS",
    "DEFAULT_SIZES",
    "PROFILES",
    "RECORD_COLUMNS",
    "Profile",
    "RunConfig",
    "RunConflictError",
    "RunResult",
    "check",
    "default_results_dir",
    "products",
    "evaluate",
    "find_result",
    "FINISHED",
    "exit_epoch",
    "grid",
    "run",
    "sweep",
]

#: Statuses of a run that has ended; ``stopped`` (trained up to a budget, to be continued) is not one.
FINISHED = ("completed", "diverged", "abandoned")

RECORD_COLUMNS = (
    "epoch", "train_loss", "test_loss", "train_squared_error", "test_squared_error", "epoch_time", "train_time", "lr",
)
EVAL_CHUNK = 10_000


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


class RunConflictError(ValueError):
    """A result or checkpoint file under a run's name holds a different configuration."""


@dataclass(kw_only=True)
class RunConfig:
    """One training run.  ``None`` fields take the profile's (or dataset's) default.

    ``hparams`` go to :func:`locoprop.make_optimizer` (``lr`` included) on top of
    ``DEFAULT_HPARAMS[profile][optimizer]``.  ``subset`` keeps the first ``subset`` training images
    (the test set is always complete).  ``divergence_factor`` is the explosion threshold relative to
    the epoch-0 train loss.  ``precision``: one of :data:`PRECISIONS`.  ``exits``: early-exit rules
    ``(from_epoch, threshold)`` (see the module docstring).
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
        if self.sizes is not None and len(self.sizes) < 2:
            raise ValueError(f"sizes must list at least the input and output widths, got {list(self.sizes)} "
                             f"(leave them out for the dataset's default)")
        resolved = dataclasses.replace(
            self,
            dataset=dataset,
            hparams=hparams,
            sizes=tuple(_integer("sizes", s, 1) for s in (self.sizes or DEFAULT_SIZES[dataset])),
            epochs=_integer("epochs", prof.epochs if self.epochs is None else self.epochs, 1),
            batch_size=_integer("batch_size", prof.batch_size if self.batch_size is None else self.batch_size, 1),
            warmup_epochs=_integer("warmup_epochs",
                                   prof.warmup_epochs if self.warmup_epochs is None else self.warmup_epochs, 0),
            seed=_integer("seed", self.seed, 0),
            subset=None if self.subset is None else _integer("subset", self.subset, 1),
            device=_device(self.device or prof.device or ("cuda" if torch.cuda.is_available() else "cpu")),
            results_dir=str(Path(self.results_dir or default_results_dir()).expanduser().resolve()),
            divergence_factor=_number("divergence_factor", self.divergence_factor),
            exits=tuple((_integer("exits epoch", e, 0), _number("exits threshold", t)) for e, t in self.exits),
        )
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
        if resolved.device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"device {resolved.device!r} requested but CUDA is not available: use --device cpu")
        return resolved

    def identity(self) -> dict[str, Any]:
        """The fields that determine the records (of a resolved config), as JSON-ready values."""
        keys = ("dataset", "optimizer", "hparams", "seed", "profile", "sizes", "activation", "epochs",
                "batch_size", "warmup_epochs", "subset", "divergence_factor", "precision", "exits")
        return json.loads(json.dumps({k: getattr(self, k) for k in keys}))

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


@dataclass
class RunResult:
    """What a run produced: its records and the JSON payload written to ``path``.

    ``skipped`` is true when the result was found on disk instead of being computed.
    """

    run_id: str
    status: str
    diverged_epoch: int | None
    config: RunConfig
    records: list[dict[str, float]]
    provenance: dict[str, Any]
    path: Path
    skipped: bool = False

    @property
    def finished(self) -> bool:
        """Whether the run has ended (not ``stopped`` at a budget)."""
        return self.status in FINISHED

    @property
    def final(self) -> dict[str, float]:
        """The last epoch's record."""
        return self.records[-1]

    @property
    def payload(self) -> dict[str, Any]:
        """The JSON document of this result."""
        return {
            "run_id": self.run_id,
            "status": self.status,
            "diverged_epoch": self.diverged_epoch,
            "config": {**_config_json(self.config), "results_dir": None},  # the folder the file lies in
            "provenance": self.provenance,
            "records": self.records,
        }

    @classmethod
    def from_payload(cls, payload: dict[str, Any], path: Path, skipped: bool = True) -> RunResult:
        known = {f.name for f in dataclasses.fields(RunConfig)}
        config = {k: v for k, v in payload["config"].items() if k in known}
        config["sizes"] = tuple(config["sizes"])
        config["results_dir"] = str(Path(path).resolve().parent.parent)
        return cls(payload["run_id"], payload["status"], payload["diverged_epoch"], RunConfig(**config),
                   payload["records"], payload["provenance"], Path(path), skipped)

    def to_frame(self):
        """The records as a DataFrame with the columns of :func:`locoprop.results.load_results`."""
        from .results import frame

        return frame([self.payload])


# --------------------------------------------------------------------------- helpers
def default_results_dir() -> Path:
    """``data/results`` under the project root."""
    return PROJECT_ROOT / "data" / "results"


def _config_json(cfg: RunConfig) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def _integer(name: str, value: Any, minimum: int) -> int:
    """``value`` as an int >= ``minimum``; a fraction, a boolean or a string is refused, not truncated."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or \
            not float(value).is_integer() or value < minimum:
        raise ValueError(f"{name} must be a whole number >= {minimum}, got {value!r}")
    return int(value)


def _number(name: str, value: Any) -> float:
    """``value`` as a finite float (booleans and strings refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def _device(name: str) -> str:
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"unknown device {name!r}: use cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {name!r}: use cpu, cuda or cuda:N")
    return str(name)


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def products(precision: str, device: torch.device):
    """The context of a training forward pass: its matrix products in ``PRECISIONS[precision]``
    (``torch.autocast`` for bfloat16).

    Weights, gradients and optimizer state stay float32; the loss is taken in float32 from the
    logits; evaluation always runs in float32.
    """
    dtype = PRECISIONS[precision]
    return contextlib.nullcontext() if dtype == torch.float32 else torch.autocast(device.type, dtype=dtype)


def training_loss(model: torch.nn.Module, xb: torch.Tensor, precision: str, device: torch.device) -> torch.Tensor:
    """The reconstruction loss of a training batch, the forward pass in :func:`products`, the loss in float32."""
    with products(precision, device):
        logits = model(xb)
    return reconstruction_loss(logits.float(), xb)


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA), so that wall-clock timings are honest."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _progress_disabled(progress: bool) -> bool | None:
    """tqdm's ``disable``: True when asked or ``TQDM_DISABLE`` is set; None (= not a terminal) otherwise."""
    if not progress or os.environ.get("TQDM_DISABLE", "") not in ("", "0"):
        return True
    return None


@torch.no_grad()
def evaluate(model: torch.nn.Module, x: torch.Tensor, chunk: int = EVAL_CHUNK) -> tuple[float, float]:
    """(loss, squared error) of ``model`` on all of ``x``, in chunks; one host sync at the end."""
    loss = x.new_zeros(())
    se = x.new_zeros(())
    for start in range(0, x.shape[0], chunk):
        xb = x[start:start + chunk]
        logits = model(xb)
        loss += reconstruction_loss(logits, xb) * xb.shape[0]
        se += squared_error(logits, xb) * xb.shape[0]
    values = (torch.stack([loss, se]) / x.shape[0]).tolist()
    return values[0], values[1]


def _build(cfg: RunConfig, device: torch.device):
    """The model and optimizer of ``cfg`` (``ValueError`` for invalid hyper-parameters)."""
    model = deep_autoencoder(cfg.sizes, cfg.activation, seed=cfg.seed).to(device)
    hparams = dict(cfg.hparams)
    lr = hparams.pop("lr")
    try:
        opt = make_optimizer(cfg.optimizer, model, lr=lr, precision=cfg.precision, **hparams)
    except TypeError as err:
        raise ValueError(f"invalid hyper-parameters {cfg.hparams} for {cfg.optimizer}: {err}") from None
    return model, opt


def check(config: RunConfig) -> RunConfig:
    """``config`` resolved, after building its optimizer on a small model of the same depth and taking one step.

    An invalid hyper-parameter fails here with a ``ValueError``, before any data is loaded or any
    run trains; the global random state is left as it was.
    """
    cfg = config.resolve()
    hparams = dict(cfg.hparams)
    lr = hparams.pop("lr")
    with torch.random.fork_rng(devices=[]):
        try:
            model = deep_autoencoder(tuple(min(s, 4) for s in cfg.sizes), cfg.activation, seed=0)
            opt = make_optimizer(cfg.optimizer, model, lr=lr, precision=cfg.precision, **hparams)
            x = torch.rand(8, model[0].in_features, generator=torch.Generator().manual_seed(0))
            training_loss(model, x, cfg.precision, torch.device("cpu")).backward()
            opt.step((lambda: reconstruction_loss(model(x), x).detach()) if getattr(opt, "needs_loss_closure", False)
                     else None)
        except (TypeError, ValueError, RuntimeError) as err:
            raise ValueError(f"invalid hyper-parameters {json.dumps(cfg.hparams)} for {cfg.optimizer}: "
                             f"{str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
    return cfg


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise RunConflictError(f"cannot read the result file {path} ({err}); move it away to run again") from None


def find_result(config: RunConfig, stopped: bool = False) -> RunResult | None:
    """The finished result of ``config`` on disk, or None; with ``stopped``, also a run stopped at a budget.

    Raises :class:`RunConflictError` when the file under its name holds another configuration.
    """
    cfg = config.resolve()
    path = cfg.paths()["json"]
    if not path.exists():
        return None
    payload = _read_json(path)
    stored = RunResult.from_payload(payload, path).config
    if stored.identity() != cfg.identity():
        raise RunConflictError(
            f"{path} holds a different configuration ({stored.identity()}) than the one requested "
            f"({cfg.identity()}); it was not overwritten: move it away or use another results_dir"
        )
    result = RunResult.from_payload(payload, path, skipped=True)
    return result if stopped or result.finished else None


def exit_epoch(records: list[dict[str, Any]], exits, divergence_factor: float) -> tuple[str, int] | None:
    """``(status, epoch)`` of the first epoch at which a run with these records stops early, or None.

    ``diverged``: an evaluated loss is not finite (None in a result file) or the train loss exceeds
    ``divergence_factor`` times its epoch-0 value; ``abandoned``: an early-exit rule
    ``(from_epoch, threshold)`` with ``epoch >= from_epoch`` finds the best train loss so far above
    ``threshold``.  The runner stops by this rule, so the records of a run without ``exits`` also
    tell where the same run with them would have stopped.
    """
    best = math.inf
    for record in records[1:]:
        epoch, train, test = record["epoch"], record["train_loss"], record["test_loss"]
        if train is None or test is None or not (math.isfinite(train) and math.isfinite(test)) or \
                train > divergence_factor * records[0]["train_loss"]:
            return "diverged", epoch
        best = min(best, train)
        if any(epoch >= start and best > threshold for start, threshold in exits):
            return "abandoned", epoch
    return None


# --------------------------------------------------------------------------- one run
def run(
    config: RunConfig,
    progress: bool = True,
    callback: Callable[[int, dict[str, float]], None] | None = None,
    until: int | None = None,
) -> RunResult:
    """Train ``config`` to the end (or to divergence), write its result files, return the result.

    A finished result of the same configuration is returned without training; an existing
    checkpoint is resumed.  ``until``: train only up to that epoch (a budget; default: the run's
    ``epochs``); a run that reaches it unfinished is written as ``stopped`` and keeps its
    checkpoint, so that a later call with a larger budget continues it.  ``callback(epoch, record)``
    is called after each epoch's checkpoint is written (an exception it raises interrupts the run,
    which the next call resumes).
    """
    cfg = check(config)
    until = cfg.epochs if until is None else min(_integer("until", until, 1), cfg.epochs)
    done = find_result(cfg, stopped=True)
    if done is not None and (done.finished or done.final["epoch"] >= until):
        return done
    if cfg.precision == "bf16" and not bf16_check.bf16_offered(cfg.optimizer):
        measured = bf16_check.MEASURED.get(cfg.optimizer)
        warnings.warn(f"bf16 is not offered for {cfg.optimizer}: " + (
            "it has not been checked against fp32" if measured is None else
            f"its final training loss differed from fp32 by {measured:+.2%} in the check") +
            f" (limit {bf16_check.TOLERANCE:.1%}, see locoprop.precision); its results may differ from the fp32 reference",
            stacklevel=2)
    paths = cfg.paths()
    with _run_lock(paths["lock"]):
        done = find_result(cfg, stopped=True)  # advanced by another process while this one waited for the lock
        if done is not None and (done.finished or done.final["epoch"] >= until):
            result = done
        else:
            result = _train(cfg, paths, progress, callback, until, done)
    try:
        paths["lock"].parent.rmdir()  # only if no other run has a checkpoint or a lock there
    except OSError:
        pass
    return result


def _train(cfg: RunConfig, paths: dict[str, Path], progress: bool, callback, until: int,
           stopped: RunResult | None) -> RunResult:
    """The training of :func:`run` (under the run's lock), up to epoch ``until``.

    ``stopped``: the run's result file as far as it went, if it was stopped at an earlier budget;
    without its checkpoint the run trains again from the start, and a warning says if the records
    it gives differ from those in the file (another machine, or other library versions).
    """
    device = torch.device(cfg.device)

    torch.manual_seed(cfg.seed)  # before building: an optimizer may draw its own seed (K-FAC's sampler)
    model, opt = _build(cfg, device)
    train = data.load(cfg.dataset, "train", device=device, subset=cfg.subset)
    test = data.load(cfg.dataset, "test", device=device)
    if not cfg.sizes[0] == cfg.sizes[-1] == train.shape[1]:
        raise ValueError(f"sizes {cfg.sizes} must start and end with the {train.shape[1]} pixels of {cfg.dataset}")
    n, batch = train.shape[0], cfg.batch_size
    steps = n // batch
    if steps < 1:
        raise ValueError(f"batch_size {batch} exceeds the {n} training images of {cfg.dataset}")
    scheduler = warmup_linear_decay(opt, cfg.warmup_epochs * steps, cfg.epochs * steps)
    shuffle = torch.Generator(device=device).manual_seed(cfg.seed)
    needs_closure = getattr(opt, "needs_loss_closure", False)

    provenance: dict[str, Any]
    checkpoint = _load_checkpoint(paths["checkpoint"], cfg)
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        opt.load_state_dict(checkpoint["optimizer"])  # after building the scheduler, which resets lr
        scheduler.load_state_dict(checkpoint["scheduler"])
        shuffle.set_state(checkpoint["rng"]["shuffle"])
        torch.set_rng_state(checkpoint["rng"]["torch"])
        if device.type == "cuda" and checkpoint["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(checkpoint["rng"]["cuda"], device)
        records = checkpoint["records"]
        provenance = checkpoint["provenance"]
        provenance["resumed"] = provenance.get("resumed", []) + [{"at_epoch": checkpoint["epoch"], "time": now()}]
    else:
        train_loss, train_se = evaluate(model, train)
        test_loss, test_se = evaluate(model, test)
        records = [dict(epoch=0, train_loss=train_loss, test_loss=test_loss, train_squared_error=train_se,
                        test_squared_error=test_se, epoch_time=0.0, train_time=0.0, lr=opt.param_groups[0]["lr"])]
        provenance = make_provenance(device)

    status, diverged_epoch = "completed", None
    start_epoch = records[-1]["epoch"]

    def closure():
        with torch.no_grad():
            return reconstruction_loss(model(xb), xb)

    bar = tqdm(range(start_epoch + 1, until + 1), desc=paths["json"].stem, unit="epoch",
               initial=start_epoch, total=until, disable=_progress_disabled(progress), leave=False)
    for epoch in bar:
        sync(device)
        t0 = time.perf_counter()
        perm = torch.randperm(n, generator=shuffle, device=device)
        lr = opt.param_groups[0]["lr"]
        for i in range(steps):
            xb = train[perm[i * batch:(i + 1) * batch]]
            lr = opt.param_groups[0]["lr"]
            opt.zero_grad(set_to_none=True)
            loss = training_loss(model, xb, cfg.precision, device)
            loss.backward()
            if needs_closure:
                opt.step(closure)
            else:
                opt.step()
            scheduler.step()
        sync(device)
        epoch_time = time.perf_counter() - t0
        train_loss, train_se = evaluate(model, train)
        test_loss, test_se = evaluate(model, test)
        record = dict(epoch=epoch, train_loss=train_loss, test_loss=test_loss, train_squared_error=train_se,
                      test_squared_error=test_se, epoch_time=epoch_time,
                      train_time=records[-1]["train_time"] + epoch_time, lr=lr)
        records.append(record)
        bar.set_postfix(train=f"{train_loss:.3g}", test=f"{test_loss:.3g}")
        ended = exit_epoch(records, cfg.exits, cfg.divergence_factor)
        if ended is not None:
            status, diverged_epoch = ended
            break
        _save_checkpoint(paths["checkpoint"], cfg, model, opt, scheduler, shuffle, device, epoch, records, provenance)
        if callback is not None:
            callback(epoch, record)
    bar.close()

    if status == "completed" and records[-1]["epoch"] < cfg.epochs:
        status = "stopped"
        provenance["stopped"] = now()
    else:
        provenance["finished"] = now()
    result = RunResult(paths["json"].stem, status, diverged_epoch, cfg,
                       [{k: (_finite(v) if isinstance(v, float) else v) for k, v in r.items()} for r in records],
                       provenance, paths["json"])
    if stopped is not None and checkpoint is None:
        _warn_if_retrained_differently(stopped, result)
    _write_result(result, paths)
    if status != "stopped":
        paths["checkpoint"].unlink(missing_ok=True)
        _digest_path(paths["checkpoint"]).unlink(missing_ok=True)
    return result


def _warn_if_retrained_differently(before: RunResult, after: RunResult) -> None:
    """A warning when a run trained again from the start disagrees with the records it had when stopped."""
    keys = ("epoch", "train_loss", "test_loss")
    old = [tuple(r[k] for k in keys) for r in before.records]
    new = [tuple(r[k] for k in keys) for r in after.records[:len(old)]]
    if old != new:
        warnings.warn(f"{after.run_id}: its checkpoint was gone, so it trained again from the start, and its records "
                      f"differ from those it had when stopped at epoch {before.final['epoch']} (another machine or "
                      f"library versions); the new records replace them", stacklevel=3)


@contextlib.contextmanager
def _run_lock(path: Path):
    """Hold ``path`` (created exclusively, holding ``host pid``) while a run trains.

    A lock left by a process that no longer runs on this host is taken over; a live one raises
    :class:`RunConflictError` naming the process, so two identical runs never train twice.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    me = f"{socket.gethostname()} {os.getpid()}"
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                host, pid = path.read_text().split()
                alive = host != socket.gethostname() or _process_alive(int(pid))
            except (OSError, ValueError):  # unreadable or half-written: another process is starting
                host, pid, alive = "?", "?", True
            if alive:
                raise RunConflictError(
                    f"{path.stem} is being trained by process {pid} on {host} (lock file {path}); wait for "
                    f"it to finish, or delete the lock file if that process is gone") from None
            path.unlink(missing_ok=True)  # stale: its process has ended
            continue
        with os.fdopen(fd, "w") as handle:
            handle.write(me + "\n")
        break
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _save_checkpoint(path, cfg, model, opt, scheduler, shuffle, device, epoch, records, provenance) -> None:
    """The run's state after ``epoch``, atomically, with the SHA-256 of its bytes in ``<path>.sha256``."""
    state = {
        "identity": cfg.identity(),
        "epoch": epoch,
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": {"shuffle": shuffle.get_state(), "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None},
        "records": records,
        "provenance": provenance,
    }
    buffer = io.BytesIO()
    torch.save(state, buffer)
    blob = buffer.getvalue()
    atomic_write(_digest_path(path), lambda tmp: tmp.write_text(hashlib.sha256(blob).hexdigest() + "\n"))
    atomic_write(path, lambda tmp: tmp.write_bytes(blob))


def _digest_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _load_checkpoint(path: Path, cfg: RunConfig) -> dict[str, Any] | None:
    """The checkpoint's state, checked against its SHA-256 and loaded as data only (no code runs)."""
    if not path.exists():
        return None
    advice = "it was kept; move it (and its .sha256) away to start the run afresh"
    try:
        blob = path.read_bytes()
        expected = _digest_path(path).read_text().strip()
    except OSError as err:
        raise RunConflictError(f"cannot read the checkpoint {path} or its SHA-256 ({err}); {advice}") from None
    if hashlib.sha256(blob).hexdigest() != expected:
        raise RunConflictError(f"the checkpoint {path} does not match its SHA-256 (damaged or partly written); {advice}")
    try:
        state = torch.load(io.BytesIO(blob), map_location=cfg.device, weights_only=True)
    except Exception as err:
        raise RunConflictError(f"cannot read the checkpoint {path} ({err}); {advice}") from None
    if state.get("identity") != cfg.identity():
        raise RunConflictError(f"the checkpoint {path} belongs to a different configuration; move it away to run this one")
    state["rng"]["shuffle"] = state["rng"]["shuffle"].cpu()
    state["rng"]["torch"] = state["rng"]["torch"].cpu()
    if state["rng"].get("cuda") is not None:
        state["rng"]["cuda"] = state["rng"]["cuda"].cpu()
    return state


def _write_result(result: RunResult, paths: dict[str, Path]) -> None:
    """The CSV first, then the JSON (whose presence marks the run finished); both atomic."""
    import pandas as pd

    table = pd.DataFrame(result.records, columns=list(RECORD_COLUMNS))
    atomic_write(paths["csv"], lambda tmp: table.to_csv(tmp, index=False))
    text = json.dumps(result.payload, indent=1, allow_nan=False)
    atomic_write(paths["json"], lambda tmp: tmp.write_text(text + "\n"))


# --------------------------------------------------------------------------- many runs
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


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)
    os.environ["TQDM_DISABLE"] = "1"


def _run_quietly(config: RunConfig, until: int | None = None) -> RunResult:
    return run(config, progress=False, until=until)


def _reached(result: RunResult | None, until: int | None) -> bool:
    """Whether ``result`` needs no more training for the budget ``until`` (None: to the end)."""
    return result is not None and (result.finished or (until is not None and result.final["epoch"] >= until))


def sweep(configs: Iterable[RunConfig], processes: int = 1, progress: bool = True,
          until: int | None = None) -> list[RunResult]:
    """Run every configuration (finished ones are loaded, not rerun); results in input order.

    ``until``: train each only up to that epoch (see :func:`run`).  ``processes > 1`` runs them in
    that many spawned local processes, each with ``cpu_count // processes`` torch threads.  Diverged
    runs are results like any other; any other exception stops the sweep (finished runs stay on
    disk, so running it again continues).
    """
    configs = [check(c) for c in configs]  # every config is checked before anything runs
    ids = [c.run_id for c in configs]
    unique = {rid: cfg for rid, cfg in zip(ids, configs)}
    results: dict[str, RunResult] = {}
    for rid, cfg in unique.items():
        found = find_result(cfg, stopped=True)
        if _reached(found, None if until is None else min(until, cfg.epochs)):
            results[rid] = found
    todo = [cfg for rid, cfg in unique.items() if rid not in results]
    bar = tqdm(total=len(unique), initial=len(results), desc="sweep", unit="run", disable=_progress_disabled(progress))
    if processes <= 1 or len(todo) <= 1:
        for cfg in todo:
            results[cfg.run_id] = run(cfg, progress=progress, until=until)
            bar.update()
    else:
        threads = max(1, (os.cpu_count() or 1) // processes)
        with ProcessPoolExecutor(max_workers=processes, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_init_worker, initargs=(threads,)) as pool:
            futures = {pool.submit(_run_quietly, cfg, until): cfg.run_id for cfg in todo}
            try:
                for future in as_completed(futures):
                    results[futures[future]] = future.result()
                    bar.update()
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise
    bar.close()
    return [results[rid] for rid in ids]

