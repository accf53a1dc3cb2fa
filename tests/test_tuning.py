"""The tuning grids: equal budgets, valid settings, the selection rule and the extensions beyond an edge."""
import dataclasses
import json
import types

import pytest

import locoprop
from locoprop.experiments import tuning
from locoprop.experiments.cli import main
from locoprop.experiments.config import RunConfig
from locoprop.experiments.sweep import sweep
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


# --------------------------------------------------------------------------- successive halving
def _smoke_base(tmp_path, **changes):
    return RunConfig(optimizer="sgd", dataset="digits", profile="smoke", subset=300, results_dir=str(tmp_path), **changes)


def _loss_at(path_of, config, epoch):
    """The train loss of ``config``'s result file at ``epoch``, read from the file itself."""
    return json.loads(path_of(config).read_text())["records"][epoch]["train_loss"]


def test_successive_halving_keeps_the_better_half_at_each_rung_and_trains_no_epoch_twice(tmp_path, monkeypatch):
    lrs = [0.003, 0.01, 0.03, 0.1, 0.2, 0.3, 0.5, 1.0]
    monkeypatch.setitem(tuning.GRIDS, "sgd", {"lr": lrs})
    base = _smoke_base(tmp_path)
    found = tuning.halving(base, advance=lambda configs, until: sweep(configs, progress=False, until=until))
    rungs = tuning.RUNGS["smoke"]
    assert [epoch for epoch, _ in found.rungs] == list(rungs) and [len(t) for _, t in found.rungs] == [8, 4, 2]
    path_of = lambda c: c.paths()["json"]  # noqa: E731
    alive = [tuning.halving_trial(base, {"lr": lr}) for lr in lrs]
    for index, epoch in enumerate(rungs[:-1]):   # the kept half is the best half by the rung's loss, from the files
        by_loss = sorted(alive, key=lambda c: _loss_at(path_of, c, epoch))
        alive = by_loss[:len(alive) // 2]
        assert sorted(found.kept[index], key=lambda h: h["lr"]) == sorted((c.hparams for c in alive), key=lambda h: h["lr"])
    winner = min(alive, key=lambda c: _loss_at(path_of, c, rungs[-1]))
    assert found.setting == winner.hparams and found.final.status == "completed"
    assert found.budget == 8 * rungs[0] + 4 * (rungs[1] - rungs[0]) + 2 * (rungs[2] - rungs[1])
    # the survivor continued from its checkpoints at the rungs, and its records are an uninterrupted run's
    assert [r["at_epoch"] for r in found.final.provenance["resumed"]] == list(rungs[:-1])
    fresh = run(dataclasses.replace(winner, results_dir=str(tmp_path / "fresh")), progress=False)
    assert [r["train_loss"] for r in fresh.records] == [r["train_loss"] for r in found.final.records]
    # read back from the files alone, the search is the same; the finals of seed 0 are the survivor
    again = tuning.halving(base)
    assert again.complete and again.setting == found.setting and again.budget == found.budget
    finals = tuning.finals(base, [0, 1])
    assert finals.search == "halving" and [r.run_id for r in finals.results] == [found.final.run_id]


def test_a_finished_run_without_the_exits_stands_for_its_trial(tmp_path, monkeypatch):
    monkeypatch.setitem(tuning.GRIDS, "sgd", {"lr": [0.01, 0.1]})
    monkeypatch.setitem(tuning.EXITS, "smoke", ((1, 1e9),))      # exits that never fire: trials get their own ids
    base = _smoke_base(tmp_path)
    plain = run(dataclasses.replace(base, hparams={"lr": 0.1}), progress=False)  # a full run without the exits
    trained = []
    found = tuning.halving(base, advance=lambda configs, until: trained.extend(c.hparams["lr"] for c in configs)
                           or sweep(configs, progress=False, until=until))
    assert 0.1 not in trained and 0.01 in trained
    assert not tuning.halving_trial(base, {"lr": 0.1}).paths()["json"].exists()
    at_first = {r.config.hparams["lr"]: r for r in found.rungs[0][1]}
    assert at_first[0.1].records == plain.records[:tuning.RUNGS["smoke"][0] + 1]


def test_a_runs_records_tell_where_the_trial_with_exits_would_have_stopped(tmp_path, monkeypatch):
    base = _smoke_base(tmp_path, hparams={"lr": 0.1})
    plain = run(base, progress=False)
    best_by_2 = min(r["train_loss"] for r in plain.records[1:3])
    trial = dataclasses.replace(base, exits=((2, best_by_2 - 1e-3),))   # fires at epoch 2, not before
    seen = tuning.observe(trial, 5)
    assert seen.status == "abandoned" and seen.diverged_epoch == 2 and seen.records == plain.records[:3]
    assert tuning.observe(dataclasses.replace(base, exits=((2, best_by_2 + 1e-3),)), 5).status == "stopped"


def test_same_total_step_keeps_the_sum_of_the_local_steps():
    from locoprop.optim.locoprop import step_sum

    base = RunConfig(optimizer="locoprop-m", hparams={"lr": 1e-4, "gamma": 10.0})
    for T in (1, 2, 5, 20):
        c = tuning.same_total_step(base, T)
        assert c.hparams["local_iters"] == T and c.hparams["gamma"] == 10.0
        # the lr is written with 6 significant digits (a stable run id): relative error at most 5e-6
        assert c.hparams["lr"] * step_sum(T) == pytest.approx(1e-4 * step_sum(10), rel=5e-6)
    # step_sum(10) = 1 + .9 + .8 + .7 + .6 + .5 + .4 + .3 + .25 + .25 = 5.7 (the floor 0.25 from j = 8 on)
    assert tuning.same_total_step(base, 1).hparams["lr"] == pytest.approx(1e-4 * 5.7)
    with pytest.raises(ValueError, match="LocoProp"):
        tuning.same_total_step(RunConfig(optimizer="adam"), 2)
