"""The tuning grids: equal budgets, valid settings, and the selection rule."""
import dataclasses

import pytest

import locoprop
from locoprop import tuning
from locoprop.cli import main
from locoprop.runner import RunConfig, run


@pytest.mark.parametrize("name", locoprop.OPTIMIZERS)
def test_every_optimizer_has_a_grid_of_the_same_budget(name):
    configs = tuning.grid_configs(RunConfig(optimizer=name, profile="paper", dataset="fashion-mnist"))
    assert len(configs) == tuning.BUDGET
    assert len({tuple(sorted(c.hparams.items())) for c in configs}) == tuning.BUDGET


@pytest.mark.parametrize("name", locoprop.OPTIMIZERS)
def test_every_grid_point_builds_its_optimizer(name):
    model = locoprop.models.deep_autoencoder((8, 4, 8), seed=0)
    for config in tuning.grid_configs(RunConfig(optimizer=name)):
        locoprop.make_optimizer(name, model, **config.hparams)


def test_the_lowest_final_training_loss_wins_and_diverged_runs_are_ignored(tmp_path):
    base = RunConfig(optimizer="sgd", dataset="digits", profile="smoke", epochs=2, subset=300, results_dir=str(tmp_path))
    results = [run(dataclasses.replace(base, hparams={"lr": lr}), progress=False) for lr in (1e-3, 0.1, 1e3)]
    assert results[2].status == "diverged"
    finals = {r.config.hparams["lr"]: r.final["train_loss"] for r in results[:2]}
    assert tuning.best_setting(results) == {"lr": min(finals, key=finals.get)}
    with pytest.raises(ValueError, match="diverged"):
        tuning.best_setting(results[2:])


def test_tune_command_runs_the_grid_then_the_finalists(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(tuning.GRIDS, "sgd", {"lr": [1e-3, 0.1]})
    code = main(["tune", "--optimizer", "sgd", "--finalists", "--seeds", "0,1", "--epochs", "2", "--subset", "200",
                 "--results-dir", str(tmp_path), "--quiet"])
    assert code == 0
    out = capsys.readouterr().out
    assert "found finished" in out  # the best setting's seed 0 is a grid run already
    assert len(list((tmp_path / "smoke").glob("*.json"))) == 3  # two grid points + seed 1 of the best
