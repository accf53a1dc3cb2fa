r"""Where the runs of a sweep train: in local processes, or as the tasks of a SLURM job array.

An executor trains a list of configurations that have no result yet (:func:`~locoprop.experiments.sweep.sweep`
decides which, from the result files) and yields each one's result as it is written:

* :class:`Local` (``--executor local``, the default): one after another in this process, or in
  ``processes`` spawned local processes with ``cpu_count // processes`` torch threads each;
* :class:`Slurm` (``--executor slurm``): every run is one task of a SLURM job array submitted with
  `submitit <https://github.com/facebookincubator/submitit>`_; the call returns once every task has
  ended.  Each task calls :func:`~locoprop.experiments.train.run` with as many torch threads as it
  has CPUs, so its records are those of a local run at that thread count.  A task learns nothing
  from the scheduler's accounting (``sacct``): a run is done when its result file says so, a task
  has ended when its result (submitit's pickle, never loaded here) is written or it has left the
  queue (``squeue``), and why it failed is read from the traceback at the end of its log.  A task
  stopped by SIGTERM (``scancel``, its time limit) stops at once, releasing its run's lock and
  keeping the checkpoint of its last epoch; a task preempted or timed out with submitit's warning
  signal is requeued and resumes there.  When tasks fail, the call raises :exc:`ClusterError`
  naming them once the others have ended; running the same command again submits only the runs
  without a result, and a killed run resumes from its checkpoint.  The results folder must lie on
  a filesystem that the nodes share; the tasks' logs go to ``<results folder>/slurm-logs/<job id>/``
  unless ``log_dir`` says otherwise.

A submission that cannot be made (no ``sbatch``, a controller that does not answer, an option the
cluster refuses) raises :exc:`SubmissionError`, a ``ValueError`` (``locoprop: error: ...``, exit 2).

The notebooks take their executor as one papermill parameter, ``executor``: None (local) or the
JSON-able dict of :meth:`Slurm.parameter`; :func:`from_parameter` turns it back into an executor.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import submitit
import torch

from .config import RunConfig
from .records import RunResult, find_result
from .train import run

__all__ = ["EXECUTORS", "ClusterError", "Local", "Slurm", "SubmissionError", "add_arguments", "from_arguments",
           "from_parameter", "reached"]

EXECUTORS = ("local", "slurm")
#: Folder of the SLURM tasks' logs under the results folder (git-ignored).
LOG_DIR = "slurm-logs"
#: Seconds without an answer from ``squeue`` after which waiting for a job array gives up.
QUEUE_PATIENCE_S = 600


class SubmissionError(ValueError):
    """A job array could not be submitted (no ``sbatch``, no controller, an option refused)."""


class ClusterError(RuntimeError):
    """Tasks of a job array ended without their run's result (failed, cancelled, killed)."""


def reached(result: RunResult | None, until: int | None) -> bool:
    """Whether ``result`` needs no more training for the budget ``until`` (None: to the end)."""
    return result is not None and (result.finished or (until is not None and result.final["epoch"] >= until))


def _budget(config: RunConfig, until: int | None) -> int | None:
    return None if until is None else min(until, config.resolve().epochs)


# --------------------------------------------------------------------------- local processes
def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)
    os.environ["TQDM_DISABLE"] = "1"


def _run_quietly(config: RunConfig, until: int | None = None) -> RunResult:
    return run(config, progress=False, until=until)


@dataclass
class Local:
    """Train in this process (``processes=1``) or in ``processes`` spawned local processes."""

    processes: int = 1

    def __post_init__(self):
        if not (isinstance(self.processes, int) and self.processes >= 1):
            raise ValueError(f"processes must be an integer >= 1, got {self.processes!r}")

    def train(self, configs: Sequence[RunConfig], until: int | None = None,
              progress: bool = True) -> Iterator[tuple[RunConfig, RunResult]]:
        """``(config, result)`` of every configuration, as each finishes; an exception stops them all."""
        if self.processes <= 1 or len(configs) <= 1:
            for cfg in configs:
                yield cfg, run(cfg, progress=progress, until=until)
            return
        threads = max(1, (os.cpu_count() or 1) // self.processes)
        with ProcessPoolExecutor(max_workers=self.processes, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_init_worker, initargs=(threads,)) as pool:
            futures = {pool.submit(_run_quietly, cfg, until): cfg for cfg in configs}
            try:
                for future in as_completed(futures):
                    yield futures[future], future.result()
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise

    def parameter(self) -> None:
        """The notebooks' ``executor`` parameter: None (local)."""
        return None


# --------------------------------------------------------------------------- SLURM job arrays
class Interrupted(RuntimeError):
    """A task stopped by SIGTERM."""


def _stop(signum, frame):
    raise Interrupted("stopped by SIGTERM (cancelled, or at its time limit); the checkpoint of its last epoch is "
                      "kept: run the same command again to resume it")


class _Task(submitit.helpers.Checkpointable):
    """One array task: ``run(config, until=until)`` with ``threads`` torch threads; returns the result file's path.

    Checkpointable: on submitit's warning signal (preemption, time limit) the task is requeued, and
    the run resumes from its checkpoint.
    """

    def __call__(self, config: RunConfig, until: int | None, threads: int) -> str:
        torch.set_num_threads(threads)
        os.environ["TQDM_DISABLE"] = "1"
        signal.signal(signal.SIGTERM, _stop)  # submitit ignores SIGTERM; a run stops at once and frees its lock
        return str(run(config, progress=False, until=until).path)


@dataclass
class Slurm:
    """Every run one task of a SLURM job array (see the module docstring).

    ``time_limit``: minutes per task; ``cpus_per_task``: also the task's torch threads;
    ``mem_gb``: memory per task (None: the partition's default); ``log_dir``: default
    ``<results folder>/slurm-logs``; ``poll_s``: seconds between looks at the queue (``squeue``).
    """

    partition: str | None = None
    time_limit: int = 240
    cpus_per_task: int = 2
    gpus_per_task: int = 0
    mem_gb: float | None = None
    account: str | None = None
    log_dir: str | None = None
    poll_s: float = 10.0

    def __post_init__(self):
        for name, minimum in (("time_limit", 1), ("cpus_per_task", 1), ("gpus_per_task", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
        if self.mem_gb is not None and not (isinstance(self.mem_gb, (int, float)) and self.mem_gb > 0):
            raise ValueError(f"mem_gb must be a positive number of GB, got {self.mem_gb!r}")
        if not (isinstance(self.poll_s, (int, float)) and self.poll_s > 0):
            raise ValueError(f"poll_s must be a positive number of seconds, got {self.poll_s!r}")
        #: ids of the job arrays this executor submitted, in order
        self.arrays: list[str] = []

    def parameter(self) -> dict[str, Any]:
        """The notebooks' ``executor`` parameter: ``{"kind": "slurm", <the fields>}``."""
        return {"kind": "slurm", **dataclasses.asdict(self)}

    def _executor(self, configs: Sequence[RunConfig]) -> submitit.SlurmExecutor:
        if shutil.which("sbatch") is None:
            raise SubmissionError("cannot submit to SLURM: there is no `sbatch` on the PATH (run on a machine with "
                                  "SLURM's client commands, or use --executor local)")
        root = Path(self.log_dir) if self.log_dir else configs[0].paths()["json"].parent.parent / LOG_DIR
        executor = submitit.SlurmExecutor(folder=root / "%j", max_num_timeout=3)
        options = dict(job_name="locoprop", time=self.time_limit, nodes=1, ntasks_per_node=1,
                       cpus_per_task=self.cpus_per_task, partition=self.partition, account=self.account,
                       gpus_per_task=self.gpus_per_task or None,
                       mem=None if self.mem_gb is None else f"{max(1, round(self.mem_gb * 1024))}M")
        executor.update_parameters(**{k: v for k, v in options.items() if v is not None})
        return executor

    def train(self, configs: Sequence[RunConfig], until: int | None = None,
              progress: bool = True) -> Iterator[tuple[RunConfig, RunResult]]:
        """Submit one array of ``configs``, then yield ``(config, result)`` as its tasks end.

        Raises :exc:`SubmissionError` if the array cannot be submitted and, once every task has
        ended, :exc:`ClusterError` naming the runs whose tasks ended without their result.  Interrupted
        while it waits (Ctrl-C), it cancels the tasks that have not ended.
        """
        configs = [c.resolve() for c in configs]
        if not configs:
            return
        executor = self._executor(configs)
        try:
            with contextlib.redirect_stderr(io.StringIO()):  # submitit prints sbatch's complaint; it is in the error
                jobs = executor.map_array(_Task(), configs, [until] * len(configs), [self.cpus_per_task] * len(configs))
        except (submitit.core.utils.FailedJobError, submitit.core.utils.FailedSubmissionError, OSError) as err:
            lines = [line for line in str(err).splitlines() if line.strip()]
            raise SubmissionError(f"cannot submit to SLURM: {lines[-1] if lines else type(err).__name__}") from None
        array = jobs[0].job_id.split("_")[0]
        self.arrays.append(array)
        print(f"submitted {len(jobs)} run(s) as SLURM job {array}; logs in {jobs[0].paths.folder.parent}",
              file=sys.stderr, flush=True)
        pending = dict(zip(jobs, configs))
        try:
            absent: dict[Any, int] = {}
            failures: list[str] = []
            asked, answered = -float("inf"), time.monotonic()
            while pending:
                queued = None
                if time.monotonic() - asked >= self.poll_s:  # the queue every poll_s, the result files every second
                    queued, asked = _queued(jobs), time.monotonic()
                    if queued is not None:
                        answered = asked
                    elif asked - answered > QUEUE_PATIENCE_S:
                        raise ClusterError(f"squeue has not answered for {QUEUE_PATIENCE_S // 60} minutes, so the end of "
                                           f"SLURM job {array} cannot be seen; its tasks may still run: run the same "
                                           f"command again once `squeue` works")
                for job in list(pending):
                    if not job.paths.result_pickle.exists():
                        if queued is None:
                            continue
                        if job.job_id in queued:
                            absent.pop(job, None)
                            continue
                        absent[job] = absent.get(job, 0) + 1
                        if absent[job] < 2:  # out of the queue: its result may be on its way on a shared filesystem
                            continue
                    cfg = pending.pop(job)
                    found = find_result(cfg, stopped=True)
                    if reached(found, _budget(cfg, until)):
                        yield cfg, dataclasses.replace(found, skipped=False)  # trained by this call
                    else:
                        failures.append(f"{cfg.run_id} (task {job.job_id}: {_reason(job)}; log {job.paths.stderr})")
                if pending:
                    time.sleep(min(1.0, self.poll_s))
        except BaseException as err:  # interrupted (Ctrl-C) or stopped: what this call submitted stops too
            if pending and not isinstance(err, ClusterError):
                subprocess.run(["scancel", *[job.job_id for job in pending]], capture_output=True, timeout=120)
            raise
        if failures:
            shown = "; ".join(failures[:3]) + (f"; and {len(failures) - 3} more" if len(failures) > 3 else "")
            raise ClusterError(f"{len(failures)} of {len(jobs)} run(s) of SLURM job {array} ended without their "
                               f"result: {shown}. Run the same command again to resubmit them (finished runs are "
                               f"kept; an interrupted run resumes from its checkpoint)")


def _queued(jobs) -> set[str] | None:
    """Ids (``<array>_<task>``) of the jobs still in SLURM's queue; None when ``squeue`` does not answer."""
    arrays = sorted({job.job_id.split("_")[0] for job in jobs})
    try:
        proc = subprocess.run(["squeue", "--noheader", "--array", "--format=%i", f"--jobs={','.join(arrays)}"],
                              capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0:
        return set() if "Invalid job id" in proc.stderr else None
    return set(proc.stdout.split())


def _reason(job) -> str:
    """Why a task ended without its result: its exception, from the traceback at the end of its log
    (the result pickle is never loaded: no file read here runs code), or that it was stopped from outside."""
    try:
        log = job.paths.stderr.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        log = []
    starts = [i for i, line in enumerate(log) if line.startswith("Traceback (most recent call last):")]
    if starts:
        exception = next((line for line in log[starts[-1] + 1:] if line.strip() and not line[0].isspace()), "")
        return exception.strip() or "failed"
    if job.paths.result_pickle.exists():
        return "finished without its run's result file"
    return "left the queue without a result: cancelled, killed, out of memory or past its time limit"


# --------------------------------------------------------------------------- choosing one
Executor = Local | Slurm


def from_parameter(value: dict[str, Any] | Local | Slurm | None, processes: int = 1) -> Local | Slurm:
    """The executor of the notebooks' ``executor`` parameter: None is :class:`Local` (``processes``), a dict
    ``{"kind": "slurm", ...}`` a :class:`Slurm` with those fields; an executor is returned as it is."""
    if value is None:
        return Local(processes)
    if isinstance(value, (Local, Slurm)):
        return value
    if not isinstance(value, dict):
        raise ValueError(f"executor must be None, an executor or a dict with a 'kind', got {value!r}")
    fields = dict(value)
    kind = fields.pop("kind", None)
    kinds = {"local": Local, "slurm": Slurm}
    if kind not in kinds:
        raise ValueError(f"unknown executor kind {kind!r}: choose one of {', '.join(EXECUTORS)}")
    known = {f.name for f in dataclasses.fields(kinds[kind])}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(unknown)} of the {kind} executor: choose from {', '.join(sorted(known))}")
    return kinds[kind](**fields)


def add_arguments(parser: argparse.ArgumentParser, processes: bool = True) -> None:
    """The command-line options of the executors (``--executor`` and SLURM's), with ``--processes`` if asked."""
    group = parser.add_argument_group("where the runs train")
    group.add_argument("--executor", choices=EXECUTORS, default="local",
                       help="local: this machine; slurm: one task of a SLURM job array per run (default: local)")
    if processes:
        group.add_argument("--processes", type=int, default=1, help="local worker processes (default: 1)")
    defaults = Slurm()
    group.add_argument("--partition", help="SLURM partition (default: the cluster's)")
    group.add_argument("--time-limit", type=int, metavar="MINUTES",
                       help=f"SLURM time limit per task in minutes (default: {defaults.time_limit})")
    group.add_argument("--cpus-per-task", type=int,
                       help=f"CPUs per SLURM task, also its torch threads (default: {defaults.cpus_per_task})")
    group.add_argument("--gpus-per-task", type=int, help="GPUs per SLURM task (default: 0)")
    group.add_argument("--mem-gb", type=float, metavar="GB", help="memory per SLURM task (default: the partition's)")
    group.add_argument("--account", help="SLURM account to charge (default: the user's)")
    group.add_argument("--log-dir", help=f"folder of the SLURM tasks' logs (default: <results folder>/{LOG_DIR})")


_SLURM_OPTIONS = {"partition": "partition", "time_limit": "time-limit", "cpus_per_task": "cpus-per-task",
                  "gpus_per_task": "gpus-per-task", "mem_gb": "mem-gb", "account": "account", "log_dir": "log-dir"}


def from_arguments(args: argparse.Namespace) -> Local | Slurm:
    """The executor that :func:`add_arguments`' options ask for (``ValueError`` for options of the other one)."""
    given = {field: getattr(args, field) for field in _SLURM_OPTIONS if getattr(args, field, None) is not None}
    processes = getattr(args, "processes", 1)
    if args.executor == "local":
        if given:
            raise ValueError(f"--{_SLURM_OPTIONS[next(iter(given))]} applies to --executor slurm only")
        return Local(processes)
    if processes != 1:
        raise ValueError("--processes applies to --executor local only (each SLURM task is one run)")
    return Slurm(**given)
