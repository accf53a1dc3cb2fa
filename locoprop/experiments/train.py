r"""The training loop: one configuration in, per-epoch records and a result file out.

Every optimizer is trained by the same loop (batches drawn without replacement from a permutation
of the training set, the last incomplete batch dropped)::

    opt.zero_grad(set_to_none=True)
    loss = reconstruction_loss(model(x), x)
    loss.backward()
    opt.step(closure) if opt.needs_loss_closure else opt.step()
    scheduler.step()            # linear warm-up, then linear decay to zero

with the data on the device once and no host synchronisation inside an epoch (the record's learning rate
is a copy taken at the epoch's last step and read after it: LocoProp's rates are tensors that the scheduler
updates in place).  A bf16 run on CUDA trains with cuBLAS's bfloat16 partial sums turned off
(:func:`locoprop.precision.float32_accumulation`), so its products sum in float32 as on the CPU.  The batches are
drawn from a CPU generator seeded with the run's seed, so they are the same on every device.  Epoch 0 records
the untrained model; after every epoch the full train and test sets are evaluated under
``torch.no_grad()`` (not counted in the training time): sigmoid cross-entropy in nats per image
and per-pixel squared error of :math:`\sigma(\text{logits})`.  The result files are described in
:mod:`locoprop.experiments.records`, the checkpoints in :mod:`locoprop.experiments.checkpoints`.

Records are bit-exact for the same code, library versions, device and number of threads (the
provenance records the CPU model and the threads): a different thread count changes the order of
floating-point sums and so the last bits.
"""
from __future__ import annotations

import contextlib
import json
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from ..models import deep_autoencoder, reconstruction_loss, squared_error
from ..optim import REVISIONS, make_optimizer
from ..precision import PRECISIONS, float32_accumulation
from ..schedules import warmup_linear_decay
from . import bf16_check, data
from .checkpoints import load_checkpoint, remove_checkpoint, run_lock, save_checkpoint
from .config import RunConfig, integer
from .provenance import now
from .provenance import provenance as make_provenance
from .records import RunResult, exit_epoch, find_result, stored, write_result

__all__ = ["EVAL_CHUNK", "check", "trainable", "evaluate", "products", "progress_disabled", "run", "sync", "training_loss"]


EVAL_CHUNK = 10_000

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

def progress_disabled(progress: bool) -> bool | None:
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
    """The model and optimizer of ``cfg`` (``ValueError`` for invalid hyper-parameters or a model that does not fit)."""
    try:
        model = deep_autoencoder(cfg.sizes, cfg.activation, seed=cfg.seed).to(device)
    except (MemoryError, RuntimeError) as err:  # torch.OutOfMemoryError is a RuntimeError
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if not isinstance(err, MemoryError) and "alloc" not in first.lower() and "out of memory" not in first.lower():
            raise
        raise ValueError(f"the model of sizes {list(cfg.sizes)} does not fit in the memory of {device} ({first}): "
                         f"choose smaller widths") from None
    hparams = dict(cfg.hparams)
    lr = hparams.pop("lr")
    try:
        opt = make_optimizer(cfg.optimizer, model, lr=lr, precision=cfg.precision, **hparams)
    except TypeError as err:
        raise ValueError(f"invalid hyper-parameters {cfg.hparams} for {cfg.optimizer}: {err}") from None
    return model, opt

def check(config: RunConfig) -> RunConfig:
    """``config`` resolved, after building its optimizer on a small model of the same depth and taking one
    step, and checking it against its data (unless its finished result is on disk, to be loaded).

    An invalid hyper-parameter fails here with a ``ValueError``, and a dataset that is missing or
    fails verification (:class:`~locoprop.experiments.data.DataError`), sizes that do not match its
    pixels, or a subset or batch larger than its training set with a ``ValueError``, before any run
    trains; the global random state is left as it was.
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
    if find_result(cfg) is None:  # a finished run is loaded, not trained: it needs no data
        _check_data(cfg)
    return cfg

def _check_data(cfg: RunConfig) -> None:
    """The dataset files of ``cfg`` present and verified (:func:`data.shape`), its sizes and batches fitting them."""
    n, pixels = data.shape(cfg.dataset, "train")
    data.shape(cfg.dataset, "test")
    if not cfg.sizes[0] == cfg.sizes[-1] == pixels:
        raise ValueError(f"sizes {list(cfg.sizes)} must start and end with the {pixels} pixels of {cfg.dataset} "
                         f"(leave --sizes out for its default)")
    if cfg.subset is not None and cfg.subset > n:
        raise ValueError(f"subset {cfg.subset} exceeds the {n} training images of {cfg.dataset}: lower --subset")
    images = n if cfg.subset is None else cfg.subset
    if cfg.batch_size > images:
        raise ValueError(f"batch_size {cfg.batch_size} exceeds the {images} training images of {cfg.dataset}"
                         f"{' kept by subset' if cfg.subset is not None else ''}: lower --batch-size")

def trainable(cfg: RunConfig) -> RunConfig:
    """``cfg`` (resolved) if this code can train it; a ``ValueError`` for an older revision of its optimizer's arithmetic."""
    if cfg.revision != REVISIONS[cfg.optimizer]:
        raise ValueError(f"{cfg.run_id} is of revision {cfg.revision} of {cfg.optimizer}'s arithmetic, which this code "
                         f"no longer computes (it is at revision {REVISIONS[cfg.optimizer]}, locoprop.optim.REVISIONS): "
                         f"its result files are kept as they were written, and only the current revision trains")
    return cfg


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
    until = cfg.epochs if until is None else min(integer("until", until, 1), cfg.epochs)
    done = find_result(cfg, stopped=True)
    if done is not None and (done.finished or done.final["epoch"] >= until):
        return done
    trainable(cfg)
    if cfg.precision == "bf16" and not bf16_check.bf16_offered(cfg.optimizer):
        found = bf16_check.measured().get(cfg.optimizer)
        warnings.warn(f"bf16 is not offered for {cfg.optimizer}: " + (
            "it has not been checked against fp32" if found is None else
            f"its final training loss differed from fp32 by {found:+.2%} in the check") +
            f" (limit {bf16_check.TOLERANCE:.1%}, see locoprop.experiments.bf16_check); its results may differ "
            f"from the fp32 reference", stacklevel=2)
    paths = cfg.paths()
    with run_lock(paths["lock"]):
        done = find_result(cfg, stopped=True)  # advanced by another process while this one waited for the lock
        if done is not None and (done.finished or done.final["epoch"] >= until):
            result = done
        else:
            with float32_accumulation(cfg.device, enabled=cfg.precision != "fp32"):  # CUDA: bf16 products sum in fp32
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
    for split, images in (("training", train), ("test", test)):  # once per run: one host sync each
        if not bool(torch.isfinite(images).all()):
            raise ValueError(f"the {split} images of {cfg.dataset} hold values that are not finite (NaN or inf), which "
                             f"would turn the weights into NaN: check the data the run is given")
    if not cfg.sizes[0] == cfg.sizes[-1] == train.shape[1]:
        raise ValueError(f"sizes {cfg.sizes} must start and end with the {train.shape[1]} pixels of {cfg.dataset}")
    n, batch = train.shape[0], cfg.batch_size
    steps = n // batch
    if steps < 1:
        raise ValueError(f"batch_size {batch} exceeds the {n} training images of {cfg.dataset}")
    scheduler = warmup_linear_decay(opt, cfg.warmup_epochs * steps, cfg.epochs * steps)
    shuffle = torch.Generator().manual_seed(cfg.seed)  # on the CPU: the same batches on every device
    needs_closure = getattr(opt, "needs_loss_closure", False)

    provenance: dict[str, Any]
    checkpoint = load_checkpoint(paths["checkpoint"], cfg)
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
                        test_squared_error=test_se, epoch_time=0.0, train_time=0.0, lr=float(opt.param_groups[0]["lr"]))]
        provenance = make_provenance(device)

    status, diverged_epoch = "completed", None
    start_epoch = records[-1]["epoch"]

    def closure():
        with torch.no_grad():
            return reconstruction_loss(model(xb), xb)

    bar = tqdm(range(start_epoch + 1, until + 1), desc=paths["json"].stem, unit="epoch",
               initial=start_epoch, total=until, disable=progress_disabled(progress), leave=False)
    for epoch in bar:
        sync(device)
        t0 = time.perf_counter()
        perm = torch.randperm(n, generator=shuffle).to(device)
        for i in tqdm(range(steps), desc=f"epoch {epoch}", unit="step", leave=False, position=1,
                      disable=progress_disabled(progress)):  # progress within an epoch (minutes at paper scale)
            xb = train[perm[i * batch:(i + 1) * batch]]
            if i == steps - 1:  # the record's lr, the epoch's last; a copy (a tensor lr changes in place)
                lr = _copy(opt.param_groups[0]["lr"])
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
                      train_time=records[-1]["train_time"] + epoch_time, lr=float(lr))
        records.append(record)
        bar.set_postfix(train=f"{train_loss:.3g}", test=f"{test_loss:.3g}")
        ended = exit_epoch(records, cfg.exits, cfg.divergence_factor)
        if ended is not None:
            status, diverged_epoch = ended
            break
        save_checkpoint(paths["checkpoint"], cfg, model, opt, scheduler, shuffle, device, epoch, records, provenance)
        if callback is not None:
            callback(epoch, record)
    bar.close()

    if status == "completed" and records[-1]["epoch"] < cfg.epochs:
        status = "stopped"
        provenance["stopped"] = now()
    else:
        provenance["finished"] = now()
    result = RunResult(paths["json"].stem, status, diverged_epoch, cfg,
                       stored(records),
                       provenance, paths["json"])
    if stopped is not None and checkpoint is None:
        _warn_if_retrained_differently(stopped, result)
    write_result(result, paths)
    if status != "stopped":
        remove_checkpoint(paths["checkpoint"])
    return result

def _copy(value):
    """A tensor's copy (without a host read), or the number itself."""
    return value.clone() if torch.is_tensor(value) else value

def _warn_if_retrained_differently(before: RunResult, after: RunResult) -> None:
    """A warning when a run trained again from the start disagrees with the records it had when stopped."""
    keys = ("epoch", "train_loss", "test_loss")
    old = [tuple(r[k] for k in keys) for r in before.records]
    new = [tuple(r[k] for k in keys) for r in after.records[:len(old)]]
    if old != new:
        warnings.warn(f"{after.run_id}: its checkpoint was gone, so it trained again from the start, and its records "
                      f"differ from those it had when stopped at epoch {before.final['epoch']} (another machine or "
                      f"library versions); the new records replace them", stacklevel=3)
