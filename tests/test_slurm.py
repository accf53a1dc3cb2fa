"""Sweeps as SLURM job arrays, against a real single-node SLURM (``tests/slurm_cluster.py``).

A run trained as an array task writes the same records as the same run trained locally at the same
number of torch threads (only the timing fields differ); the same sweep again submits nothing; the
per-run lock stops a task from training a run that another process trains; a task cancelled with
``scancel`` after its first checkpoint fails with a one-line reason, and the same sweep again
submits only that run, which resumes from its checkpoint and ends with the records of an
uninterrupted run.

The cluster needs root (apt and the daemons): elsewhere these tests skip and say why; in CI
(``CI=true``) as root they must run, so a cluster that cannot be had fails them.
"""
from __future__ import annotations

import os
import threading
import time

import pytest
import torch

import slurm_cluster
from locoprop.experiments.checkpoints import load_checkpoint, run_lock
from locoprop.experiments.config import RunConfig
from locoprop.experiments.executors import ClusterError, Local, Slurm
from locoprop.experiments.sweep import sweep

pytestmark = pytest.mark.slow  # a minute or two: SLURM tasks start Python and torch afresh

TIMING = ("epoch_time", "train_time")
THREADS = 1  # CPUs per task, and the threads of the local runs they are compared with


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    """A running cluster, its clients pointed at it through ``SLURM_CONF`` for the session."""
    try:
        running = slurm_cluster.start(tmp_path_factory.mktemp("slurm"))
    except slurm_cluster.Unavailable as why:
        if os.environ.get("CI") == "true" and os.geteuid() == 0:
            pytest.fail(f"CI runs as root, so the SLURM tests must run, but: {why}")
        pytest.skip(f"no SLURM cluster: {why}")
    saved = os.environ.get("SLURM_CONF")
    os.environ.update(running.env)
    yield running
    running.stop()
    if saved is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = saved


def _records(result):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in result.records]


def _local(configs):
    """The same runs trained in this process at THREADS torch threads."""
    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        return sweep(configs, progress=False, executor=Local())
    finally:
        torch.set_num_threads(threads)


def _configs(results_dir, runs):
    return [RunConfig(results_dir=str(results_dir), **run) for run in runs]


SMALL = [dict(optimizer="sgd", subset=300, epochs=3), dict(optimizer="adam", subset=300, epochs=3),
         dict(optimizer="locoprop-m", subset=300, epochs=3)]


def test_job_array_writes_the_records_of_local_runs(cluster, tmp_path):
    slurm = Slurm(cpus_per_task=THREADS, poll_s=1)
    results = sweep(_configs(tmp_path / "slurm", SMALL), progress=False, executor=slurm)
    assert len(slurm.arrays) == 1  # the three runs: one array
    local = _local(_configs(tmp_path / "local", SMALL))
    for remote, here in zip(results, local):
        assert remote.status == here.status == "completed" and not remote.skipped
        assert remote.path.exists() and remote.path.parent.parent == tmp_path / "slurm"
        assert remote.provenance["threads"] == here.provenance["threads"] == THREADS
        assert _records(remote) == _records(here)
        assert [r["epoch"] for r in remote.records] == [0, 1, 2, 3]
    logs = list((tmp_path / "slurm" / "slurm-logs").glob(f"{slurm.arrays[0]}_*/*_log.out"))
    assert len(logs) == len(SMALL)

    again = sweep(_configs(tmp_path / "slurm", SMALL), progress=False, executor=slurm)
    assert len(slurm.arrays) == 1  # nothing was submitted
    assert all(r.skipped for r in again)
    assert [_records(r) for r in again] == [_records(r) for r in results]


def test_a_run_being_trained_elsewhere_is_not_trained_by_a_task(cluster, tmp_path):
    config, = _configs(tmp_path, SMALL[:1])
    lock = config.paths()["lock"]
    with run_lock(lock):  # this process trains it
        with pytest.raises(ClusterError, match=f"{config.run_id}.*being trained by process {os.getpid()}"):
            sweep([config], progress=False, executor=Slurm(cpus_per_task=THREADS, poll_s=1))
        assert lock.exists()  # still this process's
    assert not config.paths()["json"].exists()


def test_a_cancelled_task_resumes_from_its_checkpoint(cluster, tmp_path):
    long, short = _configs(tmp_path / "slurm", [dict(optimizer="locoprop-m", epochs=12), SMALL[0]])
    slurm = Slurm(cpus_per_task=THREADS, poll_s=1)
    failed = []

    def first_sweep():
        try:
            sweep([long, short], progress=False, executor=slurm)
        except ClusterError as err:
            failed.append(str(err))

    worker = threading.Thread(target=first_sweep)
    worker.start()
    checkpoint = long.paths()["checkpoint"]
    while worker.is_alive() and not checkpoint.exists():
        time.sleep(0.05)
    assert checkpoint.exists(), "the long run wrote no checkpoint"
    cluster.command("scancel", f"{slurm.arrays[0]}_0")  # its task: the first of the array
    worker.join()

    assert len(failed) == 1 and "\n" not in failed[0]
    assert f"1 of 2 run(s) of SLURM job {slurm.arrays[0]}" in failed[0]
    assert long.run_id in failed[0] and "SIGTERM" in failed[0] and short.run_id not in failed[0]
    stopped_at = load_checkpoint(checkpoint, long.resolve())["epoch"]
    assert 1 <= stopped_at < 12, "the long run was not cancelled mid-run"
    assert not long.paths()["json"].exists() and not long.paths()["lock"].exists()
    assert short.paths()["json"].exists()

    resumed, again = sweep([long, short], progress=False, executor=slurm)
    assert len(slurm.arrays) == 2 and again.skipped and not resumed.skipped
    tasks = list((tmp_path / "slurm" / "slurm-logs").glob(f"{slurm.arrays[1]}*/*_result.pkl"))
    assert len(tasks) == 1  # only the cancelled run was submitted
    assert resumed.status == "completed"
    assert [r["at_epoch"] for r in resumed.provenance["resumed"]] == [stopped_at]
    assert not checkpoint.exists()
    uninterrupted, = _local(_configs(tmp_path / "local", [dict(optimizer="locoprop-m", epochs=12)]))
    assert _records(resumed) == _records(uninterrupted)
