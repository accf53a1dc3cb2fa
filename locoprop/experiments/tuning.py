"""The hyper-parameter searches of the paper-scale comparison: one equal budget for every optimizer.

Every optimizer is searched over a grid of :data:`BUDGET` = 8 points (:data:`GRIDS`) spent on the
knobs its own literature tunes: the learning rate for the first-order methods (a 1-2-5 series over
more than two decades), learning rate x damping for K-FAC, learning rate x relative epsilon for
Shampoo, learning rate x gamma for LocoProp.  Seed 0, float32.

**Early exits** (the official notebook's, "recorded for the hparam tuning setup"): a trial is
abandoned when its loss is not finite, when its best train loss exceeds 600 nats, or past epoch 10
when its best exceeds 350 (:data:`EXITS`).  On the 784-pixel datasets 600 lies above the initial
loss (about 543 = 784 ln 2) and 350 below the loss of predicting the mean image (about 384 on
Fashion-MNIST): a dead setting costs one epoch.

**Extension beyond an edge.**  A winner on the edge of a numeric axis of its grid (the smallest or
largest value tried) means the grid did not bracket the optimum, so the search goes one step beyond
it, by the same rule for every optimizer: the next trial is the winner with that value moved past
the edge by the axis's outermost ratio (e.g. 1e-4 after 3e-5 and 1e-4 gives 3.33e-4), at most
:data:`MAX_EXTENSIONS` (2) times.  A winner still on an edge is reported as such.

**Successive halving** (``search="halving"``, the default): the trials are the full protocol
itself (100 epochs, 5 warm-up, linear decay over the 100; the early exits throughout), stopped at
the rungs :data:`RUNGS` (10, 25, 50, 100 epochs).  Every grid point trains to the first rung, and
the extension rule adds its trials there.  At each rung the better half by training loss (4, 2, 1)
continues from its checkpoint to the next rung, so no epoch is trained twice; diverged and
abandoned trials never continue.  The survivor of the last rung has trained the whole protocol: it
is the optimizer's seed-0 final, and its setting the tuned one.  Budget: 8 x 10 + 4 x 15 + 2 x 25 +
1 x 50 = 240 epochs per optimizer, plus 10 per extension.  A finished run of the same configuration
without the exits (a final of the short search, or a plain ``sweep``) stands for the trial: the
exits only stop a run, so its records are the trial's up to the epoch where
:func:`~locoprop.experiments.records.exit_epoch` says the trial would have stopped.

**The short search** (``search="short"``, kept as evidence): every trial trains 5 epochs of the
protocol squeezed into 5 (:data:`TRIAL_HORIZON`: 1 warm-up epoch, then linear decay to zero), the
lowest final training loss wins (the paper's criterion), and the winner then trains the full
protocol as the optimizer's finalist.

``python -m locoprop tune --optimizer NAME[,NAME...] --profile paper --dataset fashion-mnist
[--search short] [--finalists --seeds 0,1,2]`` runs a search (resumable, finished runs skipped) and
then the finalists' seeds (:func:`locoprop.experiments.sweep.tune`).
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any

from ..optim import REVISIONS
from ..optim.locoprop import step_sum
from .config import PROFILES, grid
from .records import exit_epoch, find_result

__all__ = ["BUDGET", "EXITS", "GRIDS", "MAX_EXTENSIONS", "TRIAL_HORIZON", "Tuned", "best_setting", "edges", "extension",
           "Finals", "finalist_configs", "finals", "grid_configs", "halving", "halving_grid", "halving_trial", "observe", "rungs_of", "same_total_step", "trial_config", "tuned", "tuned_setting"]

BUDGET = 8
MAX_EXTENSIONS = 2

#: Trial length per profile: (epochs, warm-up epochs); a profile not listed uses its own protocol.
TRIAL_HORIZON: dict[str, tuple[int, int]] = {"paper": (5, 1)}

#: Early exits of the trials per profile, as :class:`locoprop.experiments.config.RunConfig` ``exits``:
#: (from epoch, best-train-loss threshold in nats per image).
EXITS: dict[str, tuple[tuple[int, float], ...]] = {"paper": ((1, 600.0), (11, 350.0))}


def _series(exponent: int, n: int = BUDGET) -> list[float]:
    """``n`` values of the 1-2-5 series from ``10**exponent``: 1, 2, 5, 10, 20, 50 ... times it."""
    return [float(f"{(1, 2, 5)[i % 3]}e{exponent + i // 3}") for i in range(n)]


GRIDS: dict[str, dict[str, list[Any]]] = {
    "sgd": {"lr": _series(-3)},
    "momentum": {"lr": _series(-4)},   # heavy ball 0.9: steps about 10 lr
    "nesterov": {"lr": _series(-4)},
    "adagrad": {"lr": _series(-3)},
    # TF1 RMSProp multiplies the lr into a momentum-0.999 buffer: its steps are about 1000 lr.
    "rmsprop": {"lr": _series(-7)},
    "adam": {"lr": _series(-4)},
    "kfac": {"lr": [0.03, 0.1, 0.3, 1.0], "damping": [3.0, 30.0]},
    "shampoo": {"lr": [3e-4, 1e-3, 3e-3, 1e-2], "epsilon": [1e-6, 1e-3]},
    "locoprop-s": {"lr": [3e-6, 1e-5, 3e-5, 1e-4], "gamma": [10.0, 100.0]},
    "locoprop-m": {"lr": [3e-6, 1e-5, 3e-5, 1e-4], "gamma": [10.0, 100.0]},
}


def _trial_base(base):
    """``base`` as its trials run: seed 0, on its profile's trial horizon, with the trials' early exits."""
    base = dataclasses.replace(base, seed=0)
    if base.profile not in TRIAL_HORIZON:
        return base
    epochs, warmup = TRIAL_HORIZON[base.profile]
    return dataclasses.replace(base, epochs=epochs, warmup_epochs=warmup, exits=EXITS.get(base.profile, ()))


def grid_configs(base):
    """The grid trials of ``base.optimizer``: ``base`` with each grid point, on the profile's trial horizon and exits."""
    if base.optimizer not in GRIDS:
        raise ValueError(f"no tuning grid for {base.optimizer!r}: choose one of {', '.join(GRIDS)}")
    return grid(_trial_base(base), **GRIDS[base.optimizer])


def trial_config(base, setting: dict[str, Any]):
    """The trial of ``base.optimizer`` with hyper-parameters ``setting`` (an extension of its grid)."""
    trial = _trial_base(base)
    return dataclasses.replace(trial, hparams={**trial.hparams, **setting})


#: Statuses of a trial still in the race: completed, or stopped at a rung (not diverged or abandoned).
ALIVE = ("completed", "stopped")


def best_setting(results) -> dict[str, Any]:
    """Hyper-parameters of the completed (or, at a rung, stopped) run with the lowest final training loss
    (the paper's criterion)."""
    finished = [r for r in results if r.status in ALIVE]
    if not finished:
        raise ValueError("every trial of the grid diverged or was abandoned: widen the grid towards smaller "
                         "learning rates")
    return min(finished, key=lambda r: r.final["train_loss"]).config.hparams


def _axes(optimizer: str, trials) -> dict[str, list[float]]:
    """The values tried so far on each numeric axis of ``optimizer``'s grid (grid and extensions)."""
    axes = {}
    for knob, values in GRIDS[optimizer].items():
        if len(values) > 1 and all(isinstance(v, float) for v in values):
            axes[knob] = sorted({*values, *(r.config.hparams[knob] for r in trials)})
    return axes


def edges(optimizer: str, setting: dict[str, Any], trials=()) -> list[str]:
    """The numeric hyper-parameters of ``setting`` at the smallest or largest value tried on their axis."""
    return [k for k, values in _axes(optimizer, trials).items() if setting.get(k) in (values[0], values[-1])]


def extension(optimizer: str, trials) -> dict[str, Any] | None:
    """The next trial beyond the edge of the grid, or None (winner inside the grid, or extensions spent).

    ``trials``: the finished trials so far (grid first, then extensions in order).  The winner's value
    on its first edge axis moves past the edge by the ratio of the axis's two outermost values there.
    """
    if len(trials) - _grid_size(optimizer) >= MAX_EXTENSIONS or not any(r.status in ALIVE for r in trials):
        return None
    best = best_setting(trials)
    axes = _axes(optimizer, trials)
    for knob in edges(optimizer, best, trials):
        values = axes[knob]
        beyond = values[0] ** 2 / values[1] if best[knob] == values[0] else values[-1] ** 2 / values[-2]
        return {**best, knob: float(f"{beyond:.3g}")}
    return None


def _grid_size(optimizer: str) -> int:
    return math.prod(len(values) for values in GRIDS[optimizer].values())


def finalist_configs(base, setting: dict[str, Any], seeds) -> list:
    """``base`` (the full protocol) with the tuned ``setting``, once per seed."""
    return [dataclasses.replace(base, hparams={**base.hparams, **setting}, seed=int(s)) for s in seeds]


@dataclass
class Tuned:
    """What the trials on disk say about one optimizer: its trials, the winner, and whether the search is done."""

    optimizer: str
    trials: list            # RunResult of every finished trial: the grid's, then the extensions
    pending: int            # trials of the search not finished yet (grid points, or the next extension)
    setting: dict[str, Any] | None  # the winner's hyper-parameters (None while the search is unfinished)
    edge: list[str]         # hyper-parameters of the winner still at the edge of their axis

    @property
    def complete(self) -> bool:
        return self.pending == 0

    @property
    def extensions(self) -> int:
        return max(0, len(self.trials) - _grid_size(self.optimizer))

    @property
    def revision(self) -> int | None:
        """The revision of the optimizer's arithmetic its trials ran with (None without trials)."""
        return self.trials[0].config.revision if self.trials else None


def tuned(base) -> Tuned:
    """The short search of ``base.optimizer`` as found on disk (nothing is trained).

    ``base``: any run of the optimizer on the profile and dataset (its seed and, on a profile with a
    trial horizon, its epochs do not matter).  The winner is only named once every trial of the
    search (the grid, then its extensions) has finished, since a missing trial could still win.
    Without a ``revision``, the newest revision of the optimizer's arithmetic whose search is
    complete is read (the short search on Fashion-MNIST predates revision 2 of Shampoo and LocoProp),
    else the current one's unfinished search.
    """
    if base.revision is not None:
        return _tuned(base)
    current = _tuned(dataclasses.replace(base, revision=REVISIONS[base.optimizer]))
    for revision in range(REVISIONS[base.optimizer] - 1, 0, -1):
        if current.complete:
            break
        older = _tuned(dataclasses.replace(base, revision=revision))
        if older.complete:
            return older
    return current


def _tuned(base) -> Tuned:
    found = [find_result(c) for c in grid_configs(base)]
    trials = [r for r in found if r is not None]
    pending = len(found) - len(trials)
    if pending == 0:
        while (setting := extension(base.optimizer, trials)) is not None:
            result = find_result(trial_config(base, setting))
            if result is None:
                pending = 1
                break
            trials.append(result)
    done = pending == 0 and any(r.status == "completed" for r in trials)
    setting = best_setting(trials) if done else None
    return Tuned(base.optimizer, trials, pending, setting, edges(base.optimizer, setting, trials) if setting else [])


def tuned_setting(base, search: str = "halving") -> dict[str, Any]:
    """The winning hyper-parameters of ``base.optimizer``'s finished ``search``; ValueError saying what to run if none.

    The search is the float32 one of ``base``'s run settings with the default hyper-parameters,
    whatever ``base``'s own seed, precision and hyper-parameters are (and, on a profile with a
    trial horizon, its epochs).
    """
    if search not in SEARCHES:
        raise ValueError(f"unknown search {search!r}: choose one of {', '.join(SEARCHES)}")
    plain = dataclasses.replace(base, precision="fp32", hparams={}, exits=())
    command = (f"`python -m locoprop tune --search {search} --optimizer {base.optimizer} --profile {base.profile} "
               f"--dataset {base.dataset or 'DATASET'}`")
    if search == "halving":
        found = halving(plain)
        if not found.complete:
            reached = found.rungs[-1][0] if found.rungs else 0
            raise ValueError(f"the successive halving of {base.optimizer} is not finished (last rung reached: epoch "
                             f"{reached}): run {command} first")
        return dict(found.setting)
    found = tuned(plain)
    if not found.complete:
        raise ValueError(f"the trials of {base.optimizer} are not finished ({len(found.trials)} done, "
                         f"{found.pending} to go): run {command} first")
    if found.setting is None:
        raise ValueError(f"every trial of {base.optimizer} diverged or was abandoned: widen its grid "
                         f"(locoprop.experiments.tuning.GRIDS) and run {command}")
    return dict(found.setting)


# --------------------------------------------------------------------------- successive halving
#: Rung ends (epochs) of successive halving per profile; the last is the profile's full horizon.
RUNGS: dict[str, tuple[int, ...]] = {"paper": (10, 25, 50, 100), "smoke": (2, 5, 10)}
SEARCHES = ("halving", "short")


def halving_trial(base, setting: dict[str, Any]):
    """The trial of ``setting``: ``base`` (the full protocol) with seed 0, float32 and the profile's early exits."""
    return dataclasses.replace(base, hparams={**base.hparams, **setting}, seed=0, precision="fp32",
                               exits=EXITS.get(base.profile, ()))


def rungs_of(base) -> tuple[int, ...]:
    """The rung ends of ``base``'s successive halving: its profile's :data:`RUNGS` below its horizon, then the horizon."""
    epochs = base.epochs if base.epochs is not None else PROFILES[base.profile].epochs
    rungs = tuple(r for r in RUNGS.get(base.profile, ()) if r < epochs) + (epochs,)
    return rungs


def observe(config, rung: int):
    """The trial ``config`` as it stood at epoch ``rung``: a RunResult whose records end there (or where the
    trial stopped early, status diverged or abandoned; ``stopped`` while alive before the end), or None if
    neither its own result file nor a finished twin without the exits reaches that far."""
    own = find_result(config, stopped=True)
    twin = find_result(dataclasses.replace(config, exits=())) if config.exits else None
    for result in (own, twin):
        if result is None:
            continue
        ended = exit_epoch(result.records, config.exits, config.divergence_factor)
        if ended is not None and ended[1] <= rung:
            status, epoch = ended
        elif result.final["epoch"] >= rung:
            status, epoch = ("completed" if rung >= config.resolve().epochs else "stopped"), rung
        else:
            continue
        return dataclasses.replace(result, status=status, diverged_epoch=epoch if status not in ALIVE else None,
                                   records=result.records[:epoch + 1])
    return None


@dataclass
class Halving:
    """Successive halving of one optimizer as far as it has gone.

    ``rungs``: per rung reached, ``(epoch, trials)`` with every trial of that rung as it stood there
    (:func:`observe`), best first among the alive; ``kept``: the settings continued from each rung.
    ``setting``/``final``: the survivor's setting and 100-epoch run once the search is complete.
    """

    optimizer: str
    rungs: list                  # [(epoch, [RunResult at that epoch, ranked])]
    kept: list                   # [[settings continued from that rung]]
    pending: int                 # trials of the current rung that have not reached it yet
    setting: dict[str, Any] | None
    final: Any                   # RunResult of the survivor's full run, or None
    extensions: int = 0
    partial: int = 0             # epochs the trials of the rung in progress have trained since the last rung reached

    @property
    def complete(self) -> bool:
        return self.setting is not None

    @property
    def recorded(self) -> int:
        """Epochs of trials the result files hold: :attr:`budget`, and the rung in progress as far as it went."""
        return self.budget + self.partial

    @property
    def budget(self) -> int:
        """Epochs the search trains: each trial up to the last rung it reached (or where it stopped early)."""
        reached: dict[str, int] = {}
        for _, trials in self.rungs:
            for r in trials:
                key = json.dumps(r.config.hparams, sort_keys=True)
                reached[key] = max(reached.get(key, 0), r.final["epoch"])
        return sum(reached.values())

    @property
    def edge(self) -> list[str]:
        if self.setting is None or not self.rungs:
            return []
        return edges(self.optimizer, self.setting, self.rungs[0][1])


def halving(base, advance=None) -> Halving:
    """Successive halving of ``base.optimizer`` (see above), synchronous: every trial of a rung reaches it
    before any continues.

    ``base``: the full protocol (profile, dataset, device ...).  ``advance(configs, until)`` trains
    the trials up to epoch ``until`` (e.g. ``lambda cs, e: sweep(cs, until=e)``); without it nothing
    trains and the search is read from the files on disk as far as they go.
    """
    if base.optimizer not in GRIDS:
        raise ValueError(f"no tuning grid for {base.optimizer!r}: choose one of {', '.join(GRIDS)}")
    points = [c.hparams for c in halving_grid(base)]
    population = [halving_trial(base, p) for p in points]
    rungs, kept, extensions = [], [], 0
    for index, rung in enumerate(rungs_of(base)):
        seen = _advanced(population, rung, advance)
        if index == 0:
            while None not in seen and (setting := extension(base.optimizer, seen)) is not None:
                population.append(halving_trial(base, setting))
                extensions += 1
                seen += _advanced(population[-1:], rung, advance)
        missing = sum(r is None for r in seen)
        if missing:
            return Halving(base.optimizer, rungs, kept, missing, None, None, extensions,
                           _partial(population, seen, rungs[-1][0] if rungs else 0, rung))
        ranked = sorted(seen, key=lambda r: (r.status not in ALIVE, r.final["train_loss"] if r.status in ALIVE else 0.0))
        rungs.append((rung, ranked))
        alive = [r for r in ranked if r.status in ALIVE]
        if not alive:
            raise ValueError(f"every trial of {base.optimizer} diverged or was abandoned by epoch {rung}: widen its grid "
                             f"towards smaller learning rates (locoprop.experiments.tuning.GRIDS)")
        survivors = alive[:max(1, BUDGET // 2 ** (index + 1))]
        kept.append([r.config.hparams for r in survivors])
        population = [halving_trial(base, {k: v for k, v in r.config.hparams.items()}) for r in survivors]
    winner = rungs[-1][1][0]
    setting = {k: winner.config.hparams[k] for k in GRIDS[base.optimizer]}
    trial = halving_trial(base, setting)
    final = find_result(trial) or find_result(dataclasses.replace(trial, exits=()))
    return Halving(base.optimizer, rungs, kept, 0, setting, final, extensions)


def _partial(configs, seen, start: int, rung: int) -> int:
    """Epochs that the trials ``configs`` of a rung in progress (``seen``: each at the rung, or None) have trained
    since the rung ``start``, from their result files (a trial stopped at ``start`` keeps that epoch)."""
    epochs = 0
    for config, at_rung in zip(configs, seen):
        own = at_rung or find_result(config, stopped=True)
        epochs += max(0, min(own.final["epoch"], rung) - start) if own is not None else 0
    return epochs


def _advanced(configs, rung: int, advance) -> list:
    """The trials ``configs`` at ``rung`` (:func:`observe`), after training those that have not reached it."""
    seen = [observe(c, rung) for c in configs]
    todo = [c for c, r in zip(configs, seen) if r is None]
    if todo and advance is not None:
        advance(todo, rung)
        seen = [observe(c, rung) for c in configs]
    return seen


def halving_grid(base):
    return grid(dataclasses.replace(base, hparams={}), **GRIDS[base.optimizer])


@dataclass
class Finals:
    """The full-protocol runs that stand for one optimizer: those of its halving's survivor once the halving is
    complete (the survivor is seed 0), else those of its short search's winner; ``results``: the seeds found."""

    optimizer: str
    search: str | None            # "halving", "short", or None while neither search has a winner
    setting: dict[str, Any] | None
    results: list                 # RunResult per seed found, in seed order


def finals(base, seeds, halved: Halving | None = None, short: Tuned | None = None) -> Finals:
    """The :class:`Finals` of ``base.optimizer`` as found on disk (nothing is trained); ``halved`` and ``short``
    (the two searches as read by :func:`halving` and :func:`tuned`) are read here when not given."""
    halved = halving(base) if halved is None else halved
    if halved.complete:
        others = finalist_configs(dataclasses.replace(base, exits=()), halved.setting, [s for s in seeds if s != 0])
        found = ([halved.final] if 0 in seeds else []) + [find_result(c) for c in others]
        return Finals(base.optimizer, "halving", dict(halved.setting), [r for r in found if r is not None])
    short = tuned(base) if short is None else short
    if short.setting is None:
        return Finals(base.optimizer, None, None, [])
    configs = finalist_configs(dataclasses.replace(base, revision=short.revision), short.setting, seeds)
    return Finals(base.optimizer, "short", dict(short.setting), [r for r in map(find_result, configs) if r is not None])


def same_total_step(config, local_iters: int, reference: int = 10):
    """LocoProp ``config`` with ``local_iters`` local iterations and its inner learning rate rescaled so that
    :math:`\\nu\\sum_{j<T}\\max(1 - j/T, \\text{lr\\_floor})` stays that of ``reference`` iterations (the
    official notebook's rule for comparing T; :func:`locoprop.optim.locoprop.step_sum`)."""
    if not config.optimizer.startswith("locoprop"):
        raise ValueError(f"local_iters applies to LocoProp, not to {config.optimizer}")
    cfg = config.resolve()
    floor = cfg.hparams.get("lr_floor", 0.25)
    lr = cfg.hparams["lr"] * step_sum(reference, floor) / step_sum(local_iters, floor)
    return dataclasses.replace(config, hparams={**config.hparams, "lr": float(f"{lr:.6g}"), "local_iters": local_iters})
