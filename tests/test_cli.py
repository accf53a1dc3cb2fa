"""``python -m locoprop``: end to end on digits, and its error exits."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from locoprop.experiments import data
from locoprop.experiments.cli import main, parse_value
from locoprop.experiments.config import RunConfig

REPO = Path(__file__).resolve().parents[1]
TINY = ["--epochs", "2", "--subset", "200", "--quiet"]


def test_run_then_results_end_to_end(tmp_path):
    env = {**os.environ, "TQDM_DISABLE": "1"}
    cmd = [sys.executable, "-m", "locoprop", "run", "--optimizer", "adam", "--lr", "0.01", "--results-dir", str(tmp_path), *TINY]
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    files = list((tmp_path / "smoke").glob("*.json"))
    assert len(files) == 1
    doc = json.loads(files[0].read_text())
    assert doc["status"] == "completed" and doc["config"]["hparams"] == {"lr": 0.01}
    assert [r["epoch"] for r in doc["records"]] == [0, 1, 2]
    assert doc["run_id"] in out.stdout and "train_loss" in out.stdout

    again = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "found finished" in again.stdout

    listing = subprocess.run([sys.executable, "-m", "locoprop", "results", "--results-dir", str(tmp_path), "--summary"],
                             cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert listing.returncode == 0, listing.stderr
    assert "adam" in listing.stdout and '{"lr": 0.01}' in listing.stdout


def test_sweep_grid_and_seeds(tmp_path, capsys):
    rc = main(["sweep", "--optimizer", "sgd,momentum", "--grid", "lr=0.01,0.1", "--seeds", "0,1",
               "--results-dir", str(tmp_path), *TINY])
    out = capsys.readouterr().out
    assert rc == 0
    assert len(list((tmp_path / "smoke").glob("*.json"))) == 8
    assert "momentum" in out and "final_train_loss" in out
    assert main(["results", "--results-dir", str(tmp_path), "--profile", "smoke"]) == 0
    assert capsys.readouterr().out.count("completed") == 8


def test_hparam_values_are_typed(tmp_path):
    assert parse_value("10") == 10 and parse_value("1e-3") == 1e-3 and parse_value("true") is True
    assert parse_value("adam") == "adam" and parse_value("None") is None
    assert main(["run", "--optimizer", "locoprop-m", "--hparam", "local_iters=2", "--hparam", "gamma=5",
                 "--results-dir", str(tmp_path), *TINY]) == 0
    doc = json.loads(next((tmp_path / "smoke").glob("*.json")).read_text())
    assert doc["config"]["hparams"]["local_iters"] == 2 and doc["config"]["hparams"]["gamma"] == 5


@pytest.mark.parametrize("argv, message", [
    (["run", "--optimizer", "lbfgs"], "invalid choice: 'lbfgs'"),
    (["run"], "--optimizer"),
    (["run", "--optimizer", "adam", "--hparam", "bogus=1"], "bogus"),
    (["run", "--optimizer", "kfac", "--hparam", "damping=-1"], "damping"),
    (["run", "--optimizer", "adam", "--hparam", "lr"], "KEY=VALUE"),
    (["run", "--optimizer", "adam", "--epochs", "3", "--warmup-epochs", "3"], "warmup_epochs"),
    (["sweep", "--optimizer", "adam,nope"], "nope"),
    (["sweep", "--optimizer", "adam", "--seeds", "a,b"], "integers"),
    (["frobnicate"], "invalid choice"),
])
def test_errors_exit_nonzero_with_one_line(tmp_path, capsys, argv, message):
    rc = exit_code([*argv, "--results-dir", str(tmp_path), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def exit_code(argv) -> int:
    """``main``'s status, whether it returns it or argparse exits with it."""
    try:
        return main(argv)
    except SystemExit as stop:
        return stop.code


def test_missing_data_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(data, "cache_dir", lambda: tmp_path / "cache")
    (tmp_path / "empty").mkdir()  # a data folder without MNIST (a missing one is an error of its own)
    monkeypatch.setenv(data.ENV_VAR, str(tmp_path / "empty"))

    def offline(url, output_file, pooch):
        raise OSError("no network")

    monkeypatch.setattr(data, "_downloader", lambda url: offline)
    rc = main(["run", "--optimizer", "adam", "--dataset", "mnist", "--results-dir", str(tmp_path), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert "train-images-idx3-ubyte.gz" in err and str(tmp_path / "empty" / "mnist") in err and "https://" in err


@pytest.mark.parametrize("command", ["run", "sweep", "results"])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    assert "--results-dir" in capsys.readouterr().out


def test_bench_forwards_its_arguments(monkeypatch):
    from locoprop.experiments import bench

    seen = []
    monkeypatch.setattr(bench, "main", lambda argv: seen.append(argv) or 0)
    assert main(["bench", "--steps", "3", "--device", "cpu"]) == 0
    assert seen == [["--steps", "3", "--device", "cpu"]]


def test_version_and_defaults_in_help(capsys):
    import locoprop

    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.strip().endswith(locoprop.__version__)
    with pytest.raises(SystemExit):
        main(["sweep", "--help"])
    out = capsys.readouterr().out
    assert "(default: smoke)" in out and "(default: 0)" in out and "example: python -m locoprop sweep" in out


@pytest.mark.parametrize("command", ["run", "sweep", "tune", "results", "bench", "reproduce"])
def test_every_subcommand_has_an_example_and_spells_optimizer_alike(command, capsys):
    """Each subcommand's help ends with an example of itself; those that take optimizers call the option
    ``--optimizer`` (never ``--optimizers``), and every default that is a value is shown."""
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    out = " ".join(capsys.readouterr().out.split())  # help wraps lines
    assert info.value.code == 0 and f"example: python -m locoprop {command}" in out
    assert "--optimizers" not in out
    if command in ("run", "sweep", "tune", "bench"):
        assert "--optimizer" in out
    if command in ("sweep", "tune", "bench", "reproduce"):
        assert "(default: " in out


def test_tune_prints_its_plan_and_a_dry_run_trains_nothing(tmp_path, capsys):
    code = main(["tune", "--optimizer", "sgd,adam", "--finalists", "--seeds", "0,1", "--dry-run",
                 "--results-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0 and not list(tmp_path.rglob("*.json"))
    # smoke rungs 2, 5, 10: 8 x 2 + 4 x 3 + 2 x 5 = 38 epochs of trials, then seed 1: 10 epochs
    assert "sgd: successive halving (8 to epoch 2, 4 to epoch 5, 2 to epoch 10: 38 epochs" in out
    assert "then seeds 1 (10 epochs): 48 epochs" in out and "estimated time" in out


def test_the_plan_counts_what_the_result_files_hold(tmp_path, capsys):
    args = ["tune", "--optimizer", "sgd", "--finalists", "--seeds", "0,1", "--results-dir", str(tmp_path), "--quiet"]
    assert main([*args, "--dry-run"]) == 0
    assert "recorded: 0 epochs of trials, 0 of the seeds' 10; to go: 48 epochs" in capsys.readouterr().out
    # a rung in progress counts as far as it went: three of the eight trials at the first rung (epoch 2) ...
    from locoprop.experiments import sweep, tuning

    base = RunConfig(optimizer="sgd", results_dir=str(tmp_path))
    trials = [tuning.halving_trial(base, p.hparams) for p in tuning.halving_grid(base)]
    def on_file():  # the reference: the epochs that the trials' own result files record
        return sum(json.loads(p.read_text())["records"][-1]["epoch"] for p in tmp_path.rglob("*_seed0_*.json"))

    sweep.sweep(trials[:3], progress=False, until=2)
    assert main([*args, "--dry-run"]) == 0 and on_file() == 6  # 3 x 2 (none of them diverged)
    assert "recorded: 6 epochs of trials, 0 of the seeds' 10; to go: 42 epochs" in capsys.readouterr().out
    # ... then all eight there, and one of the four it keeps on to the second rung (epoch 5): 3 epochs more
    sweep.sweep(trials, progress=False, until=2)
    kept = tuning.halving(base).kept[0]
    sweep.sweep([tuning.halving_trial(base, kept[0])], progress=False, until=5)
    assert main([*args, "--dry-run"]) == 0 and on_file() == 19
    assert "recorded: 19 epochs of trials, 0 of the seeds' 10; to go: 29 epochs" in capsys.readouterr().out
    assert main(args) == 0
    capsys.readouterr()
    # the reference: the epochs that the run files themselves record, seed 0 (the trials) and seed 1
    runs = [json.loads(p.read_text()) for p in tmp_path.rglob("*.json") if "_seed" in p.name]
    trials = sum(r["records"][-1]["epoch"] for r in runs if r["config"]["seed"] == 0)
    seeds = sum(r["records"][-1]["epoch"] for r in runs if r["config"]["seed"] == 1)
    assert trials >= 38 and seeds == 10
    assert main([*args, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"recorded: {trials} epochs of trials (search complete), 10 of the seeds' 10; to go: 0 epochs" in out


@pytest.mark.parametrize("option", ["--epochs", "--warmup-epochs"])
def test_tune_refuses_epochs_that_the_short_trials_would_ignore(option, capsys):
    code = main(["tune", "--search", "short", "--profile", "paper", "--optimizer", "sgd", option, "3", "--dry-run"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "do not apply to the short search" in err


def test_losses_are_printed_to_two_decimals_and_warnings_are_one_plain_line(tmp_path, capsys, monkeypatch):
    from locoprop.experiments import bf16_check

    monkeypatch.setattr(bf16_check, "measured", lambda **_: {})
    code = main(["sweep", "--optimizer", "sgd", "--subset", "200", "--epochs", "2", "--precision", "bf16",
                 "--results-dir", str(tmp_path), "--quiet"])
    captured = capsys.readouterr()
    assert code == 0
    losses = re.findall(r"final train loss (\S+) test loss (\S+)", captured.out)
    assert losses and all(re.fullmatch(r"\d+\.\d\d", v) for pair in losses for v in pair)
    warned = [line for line in captured.err.splitlines() if "warning" in line]
    assert warned == [line for line in warned if line.startswith("locoprop: warning: bf16 is not offered for sgd")]
    assert warned and "UserWarning" not in captured.err


def test_an_interrupted_bench_does_not_promise_a_resume(monkeypatch, capsys):
    from locoprop.experiments import bench

    def interrupted(argv):
        raise KeyboardInterrupt

    monkeypatch.setattr(bench, "main", interrupted)
    assert main(["bench"]) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "resume" not in err


def test_the_official_setting_command_names_the_runs_the_benchmark_notebook_reads():
    """The command the book gives for LocoProp at the official notebook's setting (ν = 1e-5, γ = 10) trains
    the runs that notebook 03 looks up (the official hyper-parameters on the paper profile, seed 0)."""
    import dataclasses

    from locoprop.experiments import cli
    from locoprop.experiments.config import OFFICIAL_HPARAMS

    command = ("sweep --profile paper --dataset fashion-mnist --device cpu --quiet --optimizer locoprop-m,locoprop-s "
               "--hparam lr=1e-5 --hparam gamma=10").split()
    args = cli._build_parser().parse_args(command)
    assert set(OFFICIAL_HPARAMS) == {"locoprop-m", "locoprop-s"}
    for name, hparams in OFFICIAL_HPARAMS.items():
        assert hparams == {"lr": 1e-5, "gamma": 10}
        notebook = dataclasses.replace(RunConfig(optimizer=name, profile="paper", dataset="fashion-mnist", device="cpu"),
                                       hparams=dict(hparams))
        assert cli._base_config(args, name, 0).run_id == notebook.run_id
    book = (Path(__file__).resolve().parents[1] / "book" / "reproduce.md").read_text()
    assert "--optimizer locoprop-m,locoprop-s \\\n    --hparam lr=1e-5 --hparam gamma=10" in book


def test_a_run_shows_its_progress_within_an_epoch(tmp_path, capsys, monkeypatch):
    """Besides the bar over epochs, a bar over the steps of the current epoch (an epoch takes minutes at the
    paper scale); forced on here, since tqdm hides its bars when stderr is not a terminal."""
    from locoprop.experiments import train

    monkeypatch.setattr(train, "progress_disabled", lambda progress: not progress)
    # 300 images in batches of 100: 3 steps an epoch, 2 epochs
    train.run(RunConfig(optimizer="sgd", subset=300, epochs=2, batch_size=100, results_dir=str(tmp_path)))
    err = capsys.readouterr().err
    # each epoch's bar counts its 3 steps (it is cleared when the epoch ends); the outer bar counts 2 epochs
    assert re.search(r"epoch 1: +\d+%\|[^|]*\| [0-3]/3 \[", err) and re.search(r"epoch 2: +\d+%\|[^|]*\| [0-3]/3 \[", err)
    assert re.search(r"_seed0_\w+: +\d+%\|[^|]*\| [0-2]/2 \[", err)
