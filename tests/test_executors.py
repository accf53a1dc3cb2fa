"""Executors without a cluster: choosing one, the notebooks' parameter, submissions that cannot be
made, why a task failed, and interruptions while a checkpoint is written.

The runs on a real SLURM are in ``test_slurm.py``.
"""
from __future__ import annotations

import json
import signal
import stat
from pathlib import Path

import pytest

from locoprop.experiments import checkpoints, cli, executors
from locoprop.experiments.config import RunConfig
from locoprop.experiments.executors import Local, Slurm, from_parameter
from locoprop.experiments.train import run

SMALL = ["--optimizer", "sgd", "--subset", "300", "--epochs", "3", "--quiet"]


# --------------------------------------------------------------------------- choosing an executor
def test_the_notebook_parameter_round_trips_through_json():
    slurm = Slurm(partition="cpu", time_limit=30, cpus_per_task=4, gpus_per_task=1, mem_gb=8.0, account="lab")
    parameter = json.loads(json.dumps(slurm.parameter()))  # what papermill injects
    assert parameter["kind"] == "slurm" and parameter["partition"] == "cpu" and parameter["cpus_per_task"] == 4
    assert from_parameter(parameter) == slurm
    assert from_parameter(None) == Local(1) and from_parameter(None, processes=2) == Local(2)
    assert Local().parameter() is None
    assert from_parameter(slurm) is slurm


@pytest.mark.parametrize("value, message", [
    ({"kind": "pbs"}, "unknown executor kind 'pbs'"),
    ({"kind": "slurm", "queue": "x"}, "unknown option\\(s\\) queue of the slurm executor"),
    ({"kind": "slurm", "cpus_per_task": 0}, "cpus_per_task must be an integer >= 1"),
    ({"kind": "slurm", "mem_gb": -1}, "mem_gb must be a positive number"),
    ("slurm", "executor must be None, an executor or a dict"),
])
def test_a_bad_executor_parameter_is_a_value_error(value, message):
    with pytest.raises(ValueError, match=message):
        from_parameter(value)


def _main(argv, capsys):
    code = cli.main(argv)
    return code, capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    (["--partition", "cpu"], "--partition applies to --executor slurm only"),
    (["--executor", "slurm", "--processes", "2"], "--processes applies to --executor local only"),
    (["--executor", "slurm", "--cpus-per-task", "0"], "cpus_per_task must be an integer >= 1"),
])
def test_executor_options_that_do_not_fit_are_one_line_errors(extra, message, tmp_path, capsys):
    code, err = _main(["sweep", *SMALL, "--results-dir", str(tmp_path), *extra], capsys)
    assert code == 2 and message in err and err.count("\n") == 1
    assert not list(tmp_path.rglob("*.json"))


def test_the_cli_options_make_the_executor():
    parser = cli._build_parser()
    args = parser.parse_args(["tune", "--optimizer", "adam", "--executor", "slurm", "--partition", "cpu",
                              "--time-limit", "90", "--cpus-per-task", "4", "--gpus-per-task", "1", "--mem-gb", "6",
                              "--account", "lab", "--log-dir", "/shared/logs"])
    assert executors.from_arguments(args) == Slurm(partition="cpu", time_limit=90, cpus_per_task=4, gpus_per_task=1,
                                                   mem_gb=6.0, account="lab", log_dir="/shared/logs")
    assert executors.from_arguments(parser.parse_args(["sweep", "--optimizer", "adam", "--processes", "2"])) == Local(2)


def test_reproduce_passes_the_executor_as_one_unrecorded_parameter(monkeypatch, tmp_path):
    from locoprop.experiments import reproduce

    seen = []
    monkeypatch.setattr(reproduce, "execute", lambda name, parameters, root=None, **kw: seen.append(
        (name, parameters, kw.get("executor"))) or tmp_path / f"{name}.ipynb")
    monkeypatch.setattr(reproduce, "repo_root", lambda: tmp_path)
    assert reproduce.main(["--notebook", "01", "--executor", "slurm", "--partition", "cpu", "--cpus-per-task", "3"]) == 0
    assert reproduce.main(["--notebook", "01"]) == 0
    (name, parameters, slurm), (_, local_parameters, local) = seen
    assert name == "01_local_losses" and "executor" not in parameters and parameters == local_parameters
    assert from_parameter(slurm) == Slurm(partition="cpu", cpus_per_task=3) and local is None


def test_a_notebook_receives_the_executor_parameter(tmp_path):
    """papermill injects ``executor``; the notebook turns it back into the executor; the record omits it."""
    import nbformat

    from locoprop.experiments import reproduce

    (tmp_path / "notebooks").mkdir()
    (tmp_path / "notebooks" / "x.py").write_text(
        "# ---\n# jupyter:\n#   kernelspec:\n#     display_name: Python 3\n#     language: python\n"
        "#     name: python3\n# ---\n\n"
        '# %% tags=["parameters"]\nprofile = "smoke"\nexecutor = None\n\n'
        "# %%\nfrom locoprop.experiments.executors import from_parameter\nprint(repr(from_parameter(executor)))\n")
    slurm = Slurm(partition="cpu", cpus_per_task=3)
    executed = reproduce.execute("x", {"profile": "smoke"}, tmp_path, executor=slurm.parameter())
    nb = nbformat.read(executed, as_version=4)
    printed = "".join(out.get("text", "") for cell in nb.cells for out in cell.get("outputs", []))
    assert printed.strip() == repr(slurm)
    assert nb.metadata["locoprop"]["parameters"] == {"profile": "smoke"}


# --------------------------------------------------------------------------- submissions that cannot be made
def test_without_sbatch_a_slurm_sweep_is_a_one_line_error(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    code, err = _main(["sweep", *SMALL, "--results-dir", str(tmp_path), "--executor", "slurm"], capsys)
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("locoprop: error: cannot submit to SLURM: there is no `sbatch` on the PATH")
    assert not list(tmp_path.rglob("*.json"))


def test_a_refused_submission_is_a_one_line_error(monkeypatch, tmp_path, capsys):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    sbatch = bin_dir / "sbatch"  # what sbatch says when no controller answers
    sbatch.write_text("#!/bin/sh\necho 'sbatch: error: Batch job submission failed: Unable to contact slurm "
                      "controller (connect failure)' >&2\nexit 1\n")
    sbatch.chmod(sbatch.stat().st_mode | stat.S_IXUSR)
    srun = bin_dir / "srun"  # submitit looks for srun before it submits, whether or not SLURM is installed
    srun.write_text("#!/bin/sh\nexit 1\n")
    srun.chmod(srun.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    code, err = _main(["sweep", *SMALL, "--results-dir", str(tmp_path / "results"), "--executor", "slurm"], capsys)
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("locoprop: error: cannot submit to SLURM: sbatch: error: Batch job submission failed: "
                          "Unable to contact slurm controller")
    assert not list((tmp_path / "results").rglob("*.json"))


# --------------------------------------------------------------------------- why a task failed
class _FakeJob:
    """What ``_reason`` sees of a submitit job: the paths of its log and of its result pickle."""

    def __init__(self, folder: Path):
        self.paths = type("Paths", (), {"stderr": folder / "0_log.err", "result_pickle": folder / "0_result.pkl"})()


def test_why_a_task_failed_comes_from_its_log_and_its_result_pickle_is_never_loaded(tmp_path):
    import pickle

    from test_reliability import _Planted

    job, marker = _FakeJob(tmp_path), tmp_path / "planted"
    job.paths.result_pickle.write_bytes(pickle.dumps(("error", _Planted(marker))))
    job.paths.stderr.write_text(
        "submitit INFO (2026-12-04 10:00:00) - Starting with JobEnvironment(job_id=7_0)\n"
        "Traceback (most recent call last):\n  File \"x.py\", line 1, in <module>\nKeyError: 'first'\n\n"
        "During handling of the above exception, another exception occurred:\n\n"
        "Traceback (most recent call last):\n  File \"y.py\", line 2, in run\n    raise Interrupted(...)\n"
        "locoprop.experiments.executors.Interrupted: stopped by SIGTERM (cancelled)\n"
        "srun: error: node1: task 0: Exited with exit code 1\n")
    assert executors._reason(job) == "locoprop.experiments.executors.Interrupted: stopped by SIGTERM (cancelled)"
    assert not marker.exists()
    job.paths.stderr.write_text("submitit INFO (2026-12-04 10:00:00) - Exiting after successful completion\n")
    assert executors._reason(job) == "finished without its run's result file"
    job.paths.result_pickle.unlink()
    job.paths.stderr.unlink()
    assert executors._reason(job).startswith("left the queue without a result")
    assert not marker.exists()


# --------------------------------------------------------------------------- interruptions
def test_an_interruption_while_a_checkpoint_is_written_waits_for_it(monkeypatch, tmp_path):
    """SIGINT while the checkpoint is written (its bytes in the temporary file, not yet in place) is delivered
    after it is in place: the run resumes."""
    config = RunConfig(optimizer="adam", subset=300, epochs=3, results_dir=str(tmp_path / "a"))
    write = checkpoints.atomic_write
    sent = []

    def interrupted_write(path, fn):
        def then_interrupted(tmp):
            fn(tmp)
            if str(path).endswith(".pt") and not sent:
                sent.append(path)
                signal.raise_signal(signal.SIGINT)  # before the checkpoint is renamed into place

        write(path, then_interrupted)

    monkeypatch.setattr(checkpoints, "atomic_write", interrupted_write)
    with pytest.raises(KeyboardInterrupt):
        run(config, progress=False)
    monkeypatch.setattr(checkpoints, "atomic_write", write)
    assert sent and config.paths()["checkpoint"].exists()
    resumed = run(config, progress=False)  # the checkpoint matches its SHA-256
    assert [r["at_epoch"] for r in resumed.provenance["resumed"]] == [1]
    plain = run(RunConfig(optimizer="adam", subset=300, epochs=3, results_dir=str(tmp_path / "b")), progress=False)
    timing = ("epoch_time", "train_time")
    assert [{k: v for k, v in r.items() if k not in timing} for r in resumed.records] == \
           [{k: v for k, v in r.items() if k not in timing} for r in plain.records]
