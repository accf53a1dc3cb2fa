"""The tuning grids: equal budgets, valid settings, the selection rule and the extensions beyond an edge."""
import dataclasses
import json
import types

import pytest

import locoprop
from locoprop.experiments import tuning
from locoprop.experiments.cli import main
from locoprop.experiments.config import RunConfig
from locoprop.experiments.train import run


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
    code = main(["tune", "--search", "short", "--optimizer", "sgd", "--finalists", "--seeds", "0,1", "--epochs", "2", "--subset", "200",
                 "--results-dir", str(tmp_path), "--quiet"])
    assert code == 0
    out = capsys.readouterr().out
    assert "found finished" in out  # the best setting's seed 0 is a trial already
    # two grid points, one trial beyond the winning edge (0.1 -> 10, which diverges), seed 1 of the best
    docs = [json.loads(p.read_text()) for p in (tmp_path / "smoke").glob("*.json")]
    assert sorted((d["config"]["hparams"]["lr"], d["config"]["seed"]) for d in docs) == \
        [(1e-3, 0), (0.1, 0), (0.1, 1), (10.0, 0)]
    found = tuning.tuned(RunConfig(optimizer="sgd", epochs=2, subset=200, results_dir=str(tmp_path)))
    assert found.complete and found.extensions == 1 and found.setting == {"lr": 0.1} and found.edge == []
    # the tuned setting serves any seed and precision of a sweep: seed 1 fp32 is the finalist already trained
    capsys.readouterr()
    assert main(["sweep", "--tuned", "--search", "short", "--optimizer", "sgd", "--seeds", "0,1", "--epochs", "2", "--subset", "200",
                 "--results-dir", str(tmp_path), "--quiet"]) == 0
    assert capsys.readouterr().out.count("(found finished)") == 2


def test_tuning_runs_in_float32_and_a_sweep_needs_finished_trials(tmp_path, capsys):
    args = ["--optimizer", "sgd", "--epochs", "2", "--subset", "200", "--results-dir", str(tmp_path), "--quiet"]
    assert main(["tune", "--precision", "bf16", *args]) == 2
    assert "float32" in capsys.readouterr().err
    assert main(["sweep", "--tuned", "--search", "short", *args]) == 2
    assert "not finished (0 done, 8 to go)" in capsys.readouterr().err
    assert not list(tmp_path.rglob("*.json"))


class Trial:
    """A finished trial as :func:`locoprop.experiments.tuning.extension` sees it."""

    def __init__(self, loss, status="completed", **hparams):
        self.status, self.final = status, {"train_loss": loss}
        self.config = types.SimpleNamespace(hparams=hparams)


def test_a_winner_inside_the_grid_needs_no_extension():
    trials = [Trial(250.0 - (lr == 2e-3) * 10, lr=lr) for lr in tuning.GRIDS["sgd"]["lr"]]
    assert tuning.extension("sgd", trials) is None


def test_a_winner_on_an_edge_is_extended_by_the_outermost_ratio_at_most_twice():
    lrs = tuning.GRIDS["sgd"]["lr"]                       # 1e-3 ... 0.2: the 1-2-5 series
    trials = [Trial(300.0 - 10 * i, lr=lr) for i, lr in enumerate(lrs)]  # the largest lr wins
    assert tuning.extension("sgd", trials) == {"lr": 0.4}  # 0.2 * (0.2 / 0.1)
    trials.append(Trial(200.0, lr=0.4))                   # wins again: the next one
    assert tuning.extension("sgd", trials) == {"lr": 0.8}
    trials.append(Trial(190.0, lr=0.8))
    assert tuning.extension("sgd", trials) is None        # the extensions are spent
    assert tuning.edges("sgd", {"lr": 0.8}, trials) == ["lr"]
    low = [Trial(200.0 + 10 * i, lr=lr) for i, lr in enumerate(lrs)]  # the smallest wins
    assert tuning.extension("sgd", low) == {"lr": 5e-4}


def test_two_axes_extend_the_first_edge_and_keep_the_other_value():
    grid = tuning.GRIDS["kfac"]                           # lr x damping
    trials = [Trial(240.0 + (lr != 0.1) + (d != grid["damping"][0]), lr=lr, damping=d)
              for lr in grid["lr"] for d in grid["damping"]]
    lo, hi = grid["damping"][0], grid["damping"][1]
    assert tuning.extension("kfac", trials) == {"lr": 0.1, "damping": float(f"{lo * lo / hi:.3g}")}


def test_failed_trials_do_not_win_and_an_all_failed_grid_is_not_extended():
    lrs = tuning.GRIDS["adam"]["lr"]
    trials = [Trial(float("nan"), status="abandoned", lr=lr) for lr in lrs]
    assert tuning.extension("adam", trials) is None
    trials[0] = Trial(230.0, lr=lrs[0])
    assert tuning.extension("adam", trials) == {"lr": float(f"{lrs[0] ** 2 / lrs[1]:.3g}")}
