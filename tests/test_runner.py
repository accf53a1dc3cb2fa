"""The experiment runner: determinism, resume, divergence, skipping, conflicts, sweeps, results."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math

import pandas as pd
import pytest
import torch

import locoprop

from locoprop.experiments import config, records, train
from locoprop.experiments.results import COLUMNS, ResultsError, load_results, summary
from locoprop.experiments.config import RunConfig, RunConflictError, grid
from locoprop.experiments.sweep import sweep
from locoprop.experiments.train import run

TIME_COLUMNS = ("epoch_time", "train_time")


def tiny(tmp_path, optimizer="adam", **kw) -> RunConfig:
    """Digits, 200 training images, batches of 100: two steps per epoch."""
    kw.setdefault("epochs", 3)
    return RunConfig(optimizer=optimizer, subset=200, results_dir=str(tmp_path), **kw)


def without_times(records):
    return [{k: v for k, v in r.items() if k not in TIME_COLUMNS} for r in records]


@pytest.mark.parametrize("optimizer", ["adam", "kfac"])
def test_same_seed_same_records(tmp_path, optimizer):
    a = run(tiny(tmp_path / "a", optimizer), progress=False)
    b = run(tiny(tmp_path / "b", optimizer), progress=False)
    c = run(tiny(tmp_path / "c", optimizer, seed=1), progress=False)
    assert a.status == "completed" and len(a.records) == 4
    assert [r["epoch"] for r in a.records] == [0, 1, 2, 3]
    assert without_times(a.records) == without_times(b.records)
    assert a.records[-1]["train_loss"] != c.records[-1]["train_loss"]
    assert a.records[-1]["train_loss"] < a.records[0]["train_loss"]
    assert a.records[0]["epoch_time"] == 0.0 and all(r["epoch_time"] > 0 for r in a.records[1:])
    assert a.records[-1]["train_time"] == pytest.approx(sum(r["epoch_time"] for r in a.records))


@pytest.mark.parametrize("optimizer", ["momentum", "kfac", "shampoo", "locoprop-m"])
def test_interrupted_run_resumes_to_the_same_records(tmp_path, optimizer):
    reference = run(tiny(tmp_path / "ref", optimizer, epochs=4), progress=False)

    def interrupt(epoch, record):
        if epoch == 2:
            raise KeyboardInterrupt

    cfg = tiny(tmp_path / "resumed", optimizer, epochs=4)
    with pytest.raises(KeyboardInterrupt):
        run(cfg, progress=False, callback=interrupt)
    paths = cfg.paths()
    assert paths["checkpoint"].exists() and not paths["json"].exists()
    resumed = run(cfg, progress=False)
    assert without_times(resumed.records) == without_times(reference.records)
    assert resumed.provenance["resumed"][0]["at_epoch"] == 2
    assert not paths["checkpoint"].exists() and paths["json"].exists()


def test_divergence_is_recorded_and_a_sweep_goes_on(tmp_path):
    exploding = tiny(tmp_path, "sgd", hparams={"lr": 1e3})
    fine = tiny(tmp_path, "adam")
    first, second = sweep([exploding, fine], progress=False)
    assert first.status == "diverged" and first.diverged_epoch == 1
    assert len(first.records) == 2
    last = first.records[-1]["train_loss"]
    assert last is None or not math.isfinite(last) or last > 10 * first.records[0]["train_loss"]
    assert second.status == "completed" and len(second.records) == 4
    stored = json.loads(exploding.paths()["json"].read_text())
    assert stored["status"] == "diverged" and stored["diverged_epoch"] == 1


@pytest.mark.parametrize("hparams", [{"lr": 1e38}, {"weight_decay": 1e30}])
def test_a_diverging_kfac_setting_is_recorded_and_the_sweep_goes_on(tmp_path, hparams):
    """Non-finite statistics (the sampled Fisher's Bernoulli probabilities among them) end the run as a
    divergence instead of an exception, and the next configuration still trains."""
    exploding = RunConfig(optimizer="kfac", hparams=hparams, epochs=2, results_dir=str(tmp_path))  # 15 steps an epoch
    fine = tiny(tmp_path, "kfac")
    first, second = sweep([exploding, fine], progress=False)
    assert first.status == "diverged" and first.diverged_epoch is not None
    assert second.status == "completed" and len(second.records) == 4


def test_finished_runs_are_skipped(tmp_path, monkeypatch):
    configs = grid(tiny(tmp_path, "adam", epochs=2), lr=[1e-3, 1e-2])
    first = sweep(configs, progress=False)
    assert [r.skipped for r in first] == [False, False]
    mtimes = [c.paths()["json"].stat().st_mtime_ns for c in configs]

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(train, "_build", no_training)
    again = sweep(configs, progress=False)
    assert [r.skipped for r in again] == [True, True]
    assert [r.records for r in again] == [r.records for r in first]
    assert [c.paths()["json"].stat().st_mtime_ns for c in configs] == mtimes
    assert run(configs[0]).skipped


def test_sweep_in_processes(tmp_path):
    configs = grid(tiny(tmp_path, "sgd", epochs=2), lr=[0.01, 0.1])
    results = sweep(configs, processes=2, progress=False)
    assert [r.config.hparams["lr"] for r in results] == [0.01, 0.1]
    assert all(r.status == "completed" for r in results)
    sequential = run(tiny(tmp_path / "seq", "sgd", epochs=2, hparams={"lr": 0.1}), progress=False)
    assert without_times(results[1].records) == without_times(sequential.records)


def test_a_finished_result_of_another_config_is_not_overwritten(tmp_path):
    cfg = tiny(tmp_path, "adam", epochs=2)
    run(cfg, progress=False)
    path = cfg.paths()["json"]
    doc = json.loads(path.read_text())
    doc["config"]["epochs"] = 7
    path.write_text(json.dumps(doc))
    before = path.read_bytes()
    with pytest.raises(RunConflictError, match="different configuration"):
        run(cfg, progress=False)
    assert path.read_bytes() == before


def test_run_id_and_defaults():
    base = RunConfig(optimizer="adam", hparams={"lr": 1})
    assert base.run_id == RunConfig(optimizer="adam", hparams={"lr": 1.0}, device="cpu").run_id
    assert base.run_id != RunConfig(optimizer="adam", hparams={"lr": 2}).run_id
    assert base.run_id != RunConfig(optimizer="adam", hparams={"lr": 1}, seed=1).run_id
    assert base.run_id.startswith("digits_adam_seed0_")
    r = RunConfig(optimizer="locoprop-m").resolve()
    assert (r.dataset, r.epochs, r.batch_size, r.warmup_epochs, r.device) == ("digits", 10, 100, 1, "cpu")
    assert r.hparams == config.DEFAULT_HPARAMS["smoke"]["locoprop-m"]
    p = RunConfig(optimizer="adam", profile="paper", device="cpu").resolve()
    assert (p.dataset, p.epochs, p.batch_size, p.warmup_epochs, p.sizes) == (
        "fashion-mnist", 100, 1000, 5, (784, 1000, 500, 250, 30, 250, 500, 1000, 784))
    assert set(config.DEFAULT_HPARAMS["smoke"]) == set(locoprop.OPTIMIZERS)


def documented_run_id(config: dict) -> str:
    """The run id as config.py documents it, computed here from a result file's configuration: SHA-256 of the
    identity JSON (sorted keys; numbers in hparams as floats; the revision when not 1; the kind of device when
    not the CPU), first 10 hex digits."""
    keys = ("dataset", "optimizer", "hparams", "seed", "profile", "sizes", "activation", "epochs", "batch_size",
            "warmup_epochs", "subset", "divergence_factor", "precision", "exits")
    ident = {k: config[k] for k in keys}
    ident["hparams"] = {k: float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v
                        for k, v in config["hparams"].items()}
    if config.get("revision", 1) != 1:
        ident["revision"] = config["revision"]
    if config["device"].split(":")[0] != "cpu":
        ident["device_type"] = config["device"].split(":")[0]
    digest = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:10]
    return f"{config['dataset']}_{config['optimizer']}_seed{config['seed']}_{digest}"


def test_cpu_run_ids_are_unchanged():
    """The id of a CPU configuration, computed by hand (the smoke profile's Adam), is the committed result file's."""
    smoke_adam = {"dataset": "digits", "optimizer": "adam", "hparams": {"lr": 0.03}, "seed": 0, "profile": "smoke",
                  "sizes": [64, 128, 64, 32, 8, 32, 64, 128, 64], "activation": "tanh", "epochs": 10, "batch_size": 100,
                  "warmup_epochs": 1, "subset": None, "divergence_factor": 10.0, "precision": "fp32", "exits": [],
                  "device": "cpu"}
    assert RunConfig(optimizer="adam").run_id == documented_run_id(smoke_adam) == "digits_adam_seed0_95b7fbca8f"
    assert (config.default_results_dir() / "smoke" / "digits_adam_seed0_95b7fbca8f.json").exists()


def test_every_committed_result_file_is_named_by_its_configuration():
    files = [p for p in config.default_results_dir().glob("*/*.json") if "config" in json.loads(p.read_text())]
    assert files
    for path in files:
        cfg = json.loads(path.read_text())["config"]
        # files written before revisions were recorded are of revision 1
        assert path.stem == documented_run_id(cfg) == RunConfig(**{"revision": 1, **cfg}).run_id, path


def test_cuda_runs_have_their_own_ids_and_files(tmp_path, monkeypatch):
    """A CUDA run never finds a CPU run's result or checkpoint (nor the reverse): the kind of device is part of
    the identity; the device's number is not."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # resolve() accepts "cuda" on this machine
    cpu = RunConfig(optimizer="locoprop-m", profile="paper", device="cpu", results_dir=str(tmp_path))
    cuda = dataclasses.replace(cpu, device="cuda")
    assert cuda.resolve().identity() == {**cpu.resolve().identity(), "device_type": "cuda"}
    assert cuda.run_id == documented_run_id(dataclasses.asdict(cuda.resolve())) != cpu.run_id
    assert not set(cuda.paths().values()) & set(cpu.paths().values())
    assert dataclasses.replace(cuda, device="cuda:1").run_id == cuda.run_id
    default = dataclasses.replace(cpu, device=None)  # the paper profile: CUDA where there is one
    assert default.resolve().device == "cuda" and default.run_id == cuda.run_id


@pytest.mark.parametrize("change, match", [
    ({"optimizer": "lbfgs"}, "unknown optimizer"),
    ({"dataset": "cifar"}, "unknown dataset"),
    ({"warmup_epochs": 3, "epochs": 3}, "warmup_epochs"),
    ({"subset": 50}, "at least one batch"),
])
def test_invalid_configs(change, match):
    with pytest.raises(ValueError, match=match):
        RunConfig(**{"optimizer": "adam", **change}).resolve()


def test_invalid_hyper_parameter_is_a_value_error(tmp_path):
    with pytest.raises(ValueError, match="bogus"):
        run(tiny(tmp_path, "adam", hparams={"bogus": 1}), progress=False)
    assert not list(tmp_path.rglob("*.json"))


def test_grid_splits_fields_and_hparams():
    configs = grid(RunConfig(optimizer="kfac", hparams={"momentum": 0.5}), lr=[0.1, 0.2], damping=[1, 2], seed=[0, 1, 2])
    assert len(configs) == 12
    assert {(c.hparams["lr"], c.hparams["damping"], c.seed) for c in configs} == {
        (lr, d, s) for lr in (0.1, 0.2) for d in (1, 2) for s in (0, 1, 2)}
    assert all(c.hparams["momentum"] == 0.5 and "seed" not in c.hparams for c in configs)


def test_load_results_and_summary(tmp_path):
    results = sweep(grid(tiny(tmp_path, "sgd", epochs=2), lr=[1e-4, 0.1]) + [tiny(tmp_path, "sgd", epochs=2, hparams={"lr": 1e3})],
                    progress=False)
    df = load_results(tmp_path, "smoke")
    assert set(COLUMNS) <= set(df.columns)
    assert len(df) == 3 + 3 + 2  # epochs 0..2 twice, epochs 0..1 for the diverged run
    assert set(df["status"]) == {"completed", "diverged"}
    assert json.loads(df["hparams"].iloc[0]).keys() == {"lr"}
    best = summary(df)
    assert len(best) == 1 and best["optimizer"].iloc[0] == "sgd"
    finals = {r.config.hparams["lr"]: r.final["train_loss"] for r in results if r.status == "completed"}
    winner = min(finals, key=finals.get)
    assert json.loads(best["hparams"].iloc[0]) == {"lr": winner}
    assert best["final_train_loss"].iloc[0] == pytest.approx(finals[winner])
    assert best["settings"].iloc[0] == 3 and best["diverged"].iloc[0] == 1
    csv = pd.read_csv(results[0].path.with_suffix(".csv"))
    assert list(csv.columns) == list(records.RECORD_COLUMNS) and len(csv) == 3
    assert load_results(tmp_path / "nothing").empty


def test_corrupt_result_file_is_named(tmp_path):
    folder = tmp_path / "smoke"
    folder.mkdir()
    (folder / "broken.json").write_text("{not json")
    with pytest.raises(ResultsError, match="broken.json"):
        load_results(tmp_path)
