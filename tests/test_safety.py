"""Nothing lost, nothing silently wrong: full disks, hand-edited files, data a run cannot use, a second checkout.

Each test plants what a user could meet (a disk that fills up during a write, a lock file left
empty, a benchmark report among the results, a sweep whose later settings do not fit the data, a
result file edited by hand, a number too large for the machine, a gzip that inflates to gigabytes,
a command run from inside another checkout) and checks the promise: a one-line error that names
what is wrong and how to fix it (exit status 2 on the command line), and nothing lost or
silently overwritten.
"""
from __future__ import annotations

import dataclasses
import errno
import gzip
import hashlib
import io
import json
import pickle
import shutil
import socket
import subprocess
import sys
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from locoprop.experiments import checkpoints, config, data, provenance, reproduce, results, train
from locoprop.experiments.cli import main
from locoprop.experiments.config import RunConfig, RunConflictError
from locoprop.experiments.records import find_result
from locoprop.experiments.sweep import sweep
from locoprop.experiments.train import run
from test_reliability import _Planted  # the pickle payload that would create a file when unpickled

REPO = Path(__file__).resolve().parents[1]
TIME_COLUMNS = ("epoch_time", "train_time")


def tiny(results_dir, optimizer="adam", **kw) -> RunConfig:
    """Digits, 200 training images, batches of 100, 3 epochs."""
    kw.setdefault("epochs", 3)
    kw.setdefault("subset", 200)
    return RunConfig(optimizer=optimizer, results_dir=str(results_dir), **kw)


def exit_code(argv) -> int:
    try:
        return main(argv)
    except SystemExit as stop:
        return stop.code


def one_line_error(capsys, argv) -> str:
    """The stderr of the command ``argv``, checked to be one line with exit status 2."""
    rc = exit_code(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


def without_times(records):
    return [{k: v for k, v in r.items() if k not in TIME_COLUMNS} for r in records]


def interrupted(cfg: RunConfig, at_epoch: int = 1) -> None:
    """Train ``cfg`` until its checkpoint after ``at_epoch`` is written, then stop as a Ctrl-C would."""
    def stop(epoch, record):
        if epoch == at_epoch:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(cfg, progress=False, callback=stop)
    assert cfg.paths()["checkpoint"].exists()


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> RunConfig:
    """A finished tiny run (its results folder holds only its two files)."""
    cfg = tiny(tmp_path_factory.mktemp("finished"))
    assert run(cfg, progress=False).status == "completed"
    return cfg


def copy_run(cfg: RunConfig, results_dir: Path) -> RunConfig:
    """The run ``cfg`` with its result files copied under ``results_dir``."""
    copy = tiny(results_dir)
    assert copy.run_id == cfg.run_id
    for key in ("json", "csv"):
        copy.paths()[key].parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(cfg.paths()[key], copy.paths()[key])
    return copy


# --------------------------------------------------------------------------- a disk that fills up
def test_a_checkpoint_write_that_fails_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    reference = run(tiny(tmp_path / "reference"), progress=False)  # uninterrupted
    cfg = tiny(tmp_path / "run")
    interrupted(cfg, at_epoch=1)
    real = checkpoints.atomic_write

    def full_disk(path, write):
        if Path(path).suffix == ".pt":  # the checkpoint's data: half written, then the disk is full
            tmp = Path(path).with_name(f".{Path(path).name}.partial")
            tmp.write_bytes(b"PK\x03\x04 half a checkpoint")
            tmp.unlink()
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, write)

    monkeypatch.setattr(checkpoints, "atomic_write", full_disk)
    with pytest.raises(OSError):
        run(cfg, progress=False)  # resumes at epoch 1, fails to save epoch 2
    monkeypatch.setattr(checkpoints, "atomic_write", real)
    state = checkpoints.load_checkpoint(cfg.paths()["checkpoint"], cfg.resolve())
    assert state is not None and state["epoch"] == 1
    result = run(cfg, progress=False)
    assert result.status == "completed" and [r["at_epoch"] for r in result.provenance["resumed"]] == [1]
    assert without_times(result.records) == without_times(reference.records)


def test_a_checkpoint_with_a_separate_digest_still_resumes(tmp_path):
    """The format of runs under way when the digest moved into the checkpoint: ``.pt`` plus ``.pt.sha256``."""
    reference = run(tiny(tmp_path / "reference"), progress=False)
    cfg = tiny(tmp_path / "run")
    interrupted(cfg, at_epoch=1)
    path = cfg.paths()["checkpoint"]
    state = checkpoints.load_checkpoint(path, cfg.resolve())
    buffer = io.BytesIO()
    torch.save(state, buffer)
    path.write_bytes(buffer.getvalue())
    path.with_name(path.name + ".sha256").write_text(hashlib.sha256(buffer.getvalue()).hexdigest() + "\n")
    result = run(cfg, progress=False)
    assert result.status == "completed" and result.provenance["resumed"][0]["at_epoch"] == 1
    assert without_times(result.records) == without_times(reference.records)
    assert not path.exists() and not path.with_name(path.name + ".sha256").exists()


def test_a_planted_pickle_checkpoint_is_refused_in_one_line(tmp_path, capsys):
    cfg = tiny(tmp_path)
    interrupted(cfg)
    marker = tmp_path / "code-ran"
    path = cfg.paths()["checkpoint"]
    path.write_bytes(pickle.dumps({"identity": cfg.resolve().identity(), "x": _Planted(marker)}))
    path.with_name(path.name + ".sha256").write_text(hashlib.sha256(path.read_bytes()).hexdigest() + "\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        err = one_line_error(capsys, ["run", "--optimizer", "adam", "--epochs", "3", "--subset", "200",
                                      "--results-dir", str(tmp_path), "--quiet"])
    assert str(path) in err and "weights_only" not in err and "trusted" not in err
    assert not [w for w in caught if "weights_only" in str(w.message) or "pickle" in str(w.message)]
    assert not marker.exists() and path.exists()


def test_an_empty_lock_left_by_a_full_disk_is_stale(tmp_path):
    cfg = tiny(tmp_path)
    lock = cfg.paths()["lock"]
    lock.parent.mkdir(parents=True)
    lock.write_bytes(b"")  # created, then the disk was full before the owner could be written
    assert run(cfg, progress=False).status == "completed"
    assert not lock.exists()


def test_an_unreadable_lock_is_stale(tmp_path):
    cfg = tiny(tmp_path)
    lock = cfg.paths()["lock"]
    lock.parent.mkdir(parents=True)
    lock.write_bytes(b"\xff\xfe\x00garbage")
    assert run(cfg, progress=False).status == "completed"


HOLD = """
import sys
from pathlib import Path
from locoprop.experiments.checkpoints import run_lock
with run_lock(Path(sys.argv[1])):
    print("held", flush=True)
    sys.stdin.readline()
"""

HOLD_BEFORE_WRITING = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_CREAT | os.O_RDWR, 0o644)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)  # the owner's name is not written yet
sys.stdin.readline()
"""


@pytest.mark.parametrize("holder", [HOLD, HOLD_BEFORE_WRITING], ids=["named", "not-named-yet"])
def test_a_lock_held_by_a_live_process_is_never_taken(tmp_path, holder):
    cfg = tiny(tmp_path)
    lock = cfg.paths()["lock"]
    lock.parent.mkdir(parents=True)
    proc = subprocess.Popen([sys.executable, "-c", holder, str(lock)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, cwd=REPO)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(RunConflictError, match="is being trained by"):
            run(cfg, progress=False)
        assert not cfg.paths()["json"].exists()
        if holder is HOLD:
            with pytest.raises(RunConflictError, match=f"process {proc.pid} on {socket.gethostname()}"):
                run(cfg, progress=False)
    finally:
        proc.communicate("\n", timeout=60)
    assert proc.returncode == 0
    assert run(cfg, progress=False).status == "completed"  # free once its holder has let go


def test_a_write_that_fails_names_the_file(tmp_path, capsys, monkeypatch):
    def full_disk(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")  # as a write() reports it: no file name

    monkeypatch.setattr(pd.DataFrame, "to_csv", full_disk)
    err = one_line_error(capsys, ["run", "--optimizer", "adam", "--epochs", "2", "--subset", "200",
                                  "--results-dir", str(tmp_path), "--quiet"])
    csv = tiny(tmp_path, epochs=2).paths()["csv"]
    assert "No space left on device" in err and str(csv) in err


# --------------------------------------------------------------------------- the results command
def test_results_reads_run_files_only(tmp_path, finished, capsys):
    copy_run(finished, tmp_path)
    bench = tmp_path / "bench"
    bench.mkdir()
    (bench / "cpu--x86-64--2-threads-20260101T000000.json").write_text(json.dumps({"settings": {}, "rows": []}))
    df = results.load_results(tmp_path)
    assert set(df["run_id"]) == {finished.run_id}
    assert exit_code(["results", "--results-dir", str(tmp_path)]) == 0
    assert finished.run_id in capsys.readouterr().out


@pytest.mark.parametrize("where, profile, message", [
    ("missing", None, "does not exist"),
    ("a-file", None, "not a folder"),
    ("ok", "nightly", "unknown profile 'nightly'"),
    ("ok", "../x", "unknown profile '../x'"),
])
def test_results_refuses_what_it_cannot_list(tmp_path, capsys, where, profile, message):
    (tmp_path / "ok").mkdir()
    (tmp_path / "a-file").write_text("")
    (tmp_path / "x").mkdir()
    argv = ["results", "--results-dir", str(tmp_path / where)] + (["--profile", profile] if profile else [])
    err = one_line_error(capsys, argv)
    assert message in err


# --------------------------------------------------------------------------- hand-edited result files
def _edit(doc, change):
    if change == "records-empty":
        doc["records"] = []
    elif change == "sizes-null":
        doc["config"]["sizes"] = None
    elif change == "list":
        doc = [doc]
    elif change == "record-text":
        doc["records"][1]["train_loss"] = "low"
    elif change == "no-config":
        del doc["config"]
    elif change == "status":
        doc["status"] = "great"
    return doc


EDITS = ["records-empty", "sizes-null", "list", "record-text", "no-config", "status"]


@pytest.mark.parametrize("change", EDITS)
def test_a_hand_edited_result_file_is_a_one_line_error(tmp_path, finished, capsys, change):
    cfg = copy_run(finished, tmp_path)
    path = cfg.paths()["json"]
    path.write_text(json.dumps(_edit(json.loads(path.read_text()), change)))
    edited = path.read_bytes()
    for argv in (["run", "--optimizer", "adam", "--epochs", "3", "--subset", "200", "--results-dir", str(tmp_path),
                  "--quiet"],
                 ["results", "--results-dir", str(tmp_path)]):
        err = one_line_error(capsys, argv)
        assert str(path) in err and "delete" not in err
    with pytest.raises(ValueError, match="not a valid result file"):
        find_result(cfg)
    assert path.read_bytes() == edited  # left as it was


def test_a_corrupt_result_file_is_never_to_be_deleted(tmp_path):
    folder = tmp_path / "smoke"
    folder.mkdir()
    (folder / "broken.json").write_text("{not json")
    with pytest.raises(results.ResultsError) as info:
        results.load_results(tmp_path)
    assert "broken.json" in str(info.value) and "delete" not in str(info.value)


# --------------------------------------------------------------------------- numbers the machine cannot hold
@pytest.mark.parametrize("argv, message", [
    (["--hparam", "lr=1" + "0" * 400], "lr"),
    (["--hparam", "lr=true"], "lr must be a number"),
    (["--hparam", "beta1=1" + "0" * 400], "beta1"),
    (["--seed", "1" + "0" * 30], "seed"),
    (["--sizes", "64,1000000000000,64"], "parameters"),
    (["--sizes", "64," + "1" * 300 + ",64"], "parameters"),
])
def test_a_number_out_of_range_is_a_one_line_error(tmp_path, capsys, argv, message):
    err = one_line_error(capsys, ["run", "--optimizer", "adam", "--epochs", "2", "--subset", "200", *argv,
                                  "--results-dir", str(tmp_path), "--quiet"])
    assert message in err
    assert not list(tmp_path.rglob("*.json"))


@pytest.mark.parametrize("change, match", [
    ({"seed": 2 ** 64}, "seed must be"),
    ({"hparams": {"lr": True}}, "lr must be a number"),
    ({"hparams": {"lr": 10 ** 400}}, "finite"),
    ({"hparams": {"betas": [0.9, 10 ** 400]}}, "finite"),
    ({"sizes": (64, 2 ** 40, 64)}, "parameters"),
])
def test_resolve_refuses_numbers_out_of_range(change, match):
    with pytest.raises(ValueError, match=match):
        RunConfig(**{"optimizer": "adam", **change}).resolve()


def test_the_largest_seed_torch_takes_is_accepted():
    assert RunConfig(optimizer="adam", seed=2 ** 64 - 1).resolve().seed == 2 ** 64 - 1
    torch.Generator().manual_seed(2 ** 64 - 1)  # the bound is torch's own


def test_the_ids_of_existing_configurations_are_unchanged():
    """Ids computed before the checks of this file were added: they name result files on disk."""
    assert RunConfig(optimizer="adam").run_id == "digits_adam_seed0_95b7fbca8f"
    assert RunConfig(optimizer="locoprop-m", profile="paper", device="cpu").run_id == \
        "fashion-mnist_locoprop-m_seed0_a220f9ac69"
    assert RunConfig(optimizer="kfac", hparams={"lr": 0.1, "damping": 1}, seed=3, sizes=(64, 32, 64),
                     subset=300).run_id == "digits_kfac_seed3_ee16cfcf74"
    assert RunConfig(optimizer="adam", seed=2 ** 64 - 1).run_id == "digits_adam_seed18446744073709551615_12c533d325"


# --------------------------------------------------------------------------- a sweep checks its data first
@pytest.fixture
def offline(tmp_path, monkeypatch):
    """An empty data folder and download cache, and no network."""
    empty = tmp_path / "no-data"
    empty.mkdir()
    monkeypatch.setenv(data.ENV_VAR, str(empty))
    monkeypatch.setattr(data, "cache_dir", lambda: tmp_path / "cache")

    def no_network(url, output_file, pooch):
        raise OSError(f"network unreachable for {url}\n  (a second line from the network library)")

    monkeypatch.setattr(data, "_downloader", lambda url: no_network)
    return empty


@pytest.mark.parametrize("axes, message", [
    ({"batch_size": [100, 5000]}, "batch_size 5000"),
    ({"subset": [200, 5000]}, "subset"),
    ({"sizes": [None, (784, 32, 784)]}, "784"),
    ({"dataset": ["digits", "mnist"]}, "mnist"),
])
def test_a_sweep_checks_every_configuration_against_its_data_first(tmp_path, offline, axes, message):
    base = tiny(tmp_path, epochs=2, subset=None)
    with pytest.raises((ValueError, data.DataError), match=message):
        sweep(config.grid(base, **axes), progress=False)
    assert not list(tmp_path.rglob("*.json")) and not list(tmp_path.rglob("*.pt"))


def test_the_sweep_command_refuses_a_batch_larger_than_the_data_before_training(tmp_path, capsys):
    err = one_line_error(capsys, ["sweep", "--optimizer", "adam", "--grid", "batch_size=100,5000", "--epochs", "2",
                                  "--results-dir", str(tmp_path), "--quiet"])
    assert "5000" in err and "1500" in err  # the digits' training images
    assert not list(tmp_path.rglob("*.json"))


def test_a_dataset_that_fails_verification_is_refused_before_training(tmp_path, monkeypatch):
    folder = tmp_path / "data" / "fashion-mnist"
    folder.mkdir(parents=True)
    for name, n in (("train-images-idx3-ubyte.gz", 60000), ("t10k-images-idx3-ubyte.gz", 10000)):
        (folder / name).write_bytes(gzip.compress(_idx(np.zeros((n, 28, 28), np.uint8))))  # the shape, not the images
    monkeypatch.setenv(data.ENV_VAR, str(tmp_path / "data"))
    base = tiny(tmp_path / "results", epochs=2, subset=None)
    with pytest.raises(data.DataError, match="checksum mismatch"):
        sweep(config.grid(base, dataset=["digits", "fashion-mnist"]), progress=False)
    assert not list((tmp_path / "results").rglob("*.json"))


def test_a_finished_run_is_loaded_without_its_data(tmp_path, finished, offline):
    """Reading stored results (the book does) needs no dataset file: here a finished MNIST run without MNIST."""
    cfg = tiny(tmp_path, dataset="mnist")
    doc = json.loads(finished.paths()["json"].read_text())
    doc["run_id"] = cfg.run_id
    doc["config"] = {**json.loads(json.dumps(dataclasses.asdict(cfg.resolve()))), "results_dir": None}
    cfg.paths()["json"].parent.mkdir(parents=True)
    cfg.paths()["json"].write_text(json.dumps(doc))
    assert sweep([cfg], progress=False)[0].skipped
    assert run(cfg, progress=False).skipped


def test_the_missing_mnist_error_is_one_line(tmp_path, offline, capsys):
    err = one_line_error(capsys, ["run", "--optimizer", "adam", "--dataset", "mnist", "--epochs", "2",
                                  "--results-dir", str(tmp_path), "--quiet"])
    assert "train-images-idx3-ubyte.gz" in err and data.ENV_VAR in err
    assert not list(tmp_path.rglob("*.json"))


# --------------------------------------------------------------------------- data a run is given
def test_data_that_is_not_finite_is_refused_before_training(tmp_path, monkeypatch):
    real = data.load

    def with_nan(name, split="train", **kw):
        x = real(name, split, **kw)
        x[3, 5] = float("nan")
        return x

    monkeypatch.setattr(train.data, "load", with_nan)
    with pytest.raises(ValueError, match="not finite"):
        run(tiny(tmp_path), progress=False)
    assert not list(tmp_path.rglob("*.json"))


def test_a_data_dir_that_is_not_a_folder_is_an_error(tmp_path, monkeypatch):
    tried = []
    monkeypatch.setattr(data, "_download", lambda *a, **k: tried.append(a))
    monkeypatch.setattr(data, "cache_dir", lambda: tmp_path / "cache")
    (tmp_path / "a-file").write_text("")
    for value in (tmp_path / "missing", tmp_path / "a-file"):
        monkeypatch.setenv(data.ENV_VAR, str(value))
        with pytest.raises(data.DataError, match=f"{data.ENV_VAR}={value}") as info:
            data.load("fashion-mnist", "test")
        assert len(str(info.value).splitlines()) == 1
    assert not tried


def _idx(images: np.ndarray) -> bytes:
    return bytes([0, 0, 0x08, images.ndim]) + np.array(images.shape, ">u4").tobytes() + images.tobytes()


def _gzip_stream(chunks) -> bytes:
    """A gzip file of the concatenated ``chunks``, built without holding them all in memory."""
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb") as handle:
        for chunk in chunks:
            handle.write(chunk)
    return out.getvalue()


def _bomb_folder(tmp_path, chunks) -> Path:
    folder = tmp_path / "data" / "fashion-mnist"
    folder.mkdir(parents=True)
    (folder / "t10k-images-idx3-ubyte.gz").write_bytes(_gzip_stream(chunks))
    return tmp_path / "data"


def _peak_while(action) -> int:
    tracemalloc.start()
    try:
        action()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


def test_a_gzip_that_inflates_past_its_declared_size_is_stopped_early(tmp_path):
    zeros = bytes(1 << 20)
    header = bytes([0, 0, 0x08, 3]) + np.array((10000, 28, 28), ">u4").tobytes()
    root = _bomb_folder(tmp_path, [header] + [zeros] * 300)  # 300 MiB of pixels where 7.5 MiB are declared
    assert (root / "fashion-mnist" / "t10k-images-idx3-ubyte.gz").stat().st_size < 1 << 20

    def load():
        with pytest.raises(data.DataError, match="more data than"):
            data.load("fashion-mnist", "test", data_dir=root)

    assert _peak_while(load) < 64 << 20


def test_an_idx_header_declaring_another_size_is_refused_before_inflating(tmp_path):
    zeros = bytes(1 << 20)
    header = bytes([0, 0, 0x08, 3]) + np.array((400000, 28, 28), ">u4").tobytes()
    root = _bomb_folder(tmp_path, [header] + [zeros] * 300)

    def load():
        with pytest.raises(data.DataError, match=r"declares shape \(400000, 28, 28\).*expected \(10000, 28, 28\)"):
            data.load("fashion-mnist", "test", data_dir=root)

    assert _peak_while(load) < 64 << 20


def test_read_idx_still_reads_what_it_is_given(tmp_path):
    images = (np.arange(7 * 5 * 3) % 251).astype(np.uint8).reshape(7, 5, 3)
    (tmp_path / "a.gz").write_bytes(gzip.compress(_idx(images)))
    (tmp_path / "a.idx").write_bytes(_idx(images))
    assert np.array_equal(data.read_idx(tmp_path / "a.gz"), images)
    assert np.array_equal(data.read_idx(tmp_path / "a.idx"), images)
    (tmp_path / "b.gz").write_bytes(gzip.compress(_idx(images) + b"extra"))
    with pytest.raises(data.DataError, match="more data than"):
        data.read_idx(tmp_path / "b.gz")


# --------------------------------------------------------------------------- a second checkout
def _second_checkout(root: Path, notebook_code: str = "print('hello')") -> Path:
    """A checkout of this project (its pyproject name, notebooks/, its own package marker) in ``root``."""
    (root / "locoprop").mkdir(parents=True)
    (root / "locoprop" / "__init__.py").write_text("CHECKOUT = __file__\n")
    (root / "pyproject.toml").write_text((REPO / "pyproject.toml").read_text())
    (root / "notebooks").mkdir()
    header = (REPO / "notebooks" / "01_local_losses.py").read_text().split("# ---\n")[1]
    (root / "notebooks" / "01_local_losses.py").write_text(
        "# ---\n" + header + "# ---\n\n# %% tags=[\"parameters\"]\nprofile = 'smoke'\n\n# %%\n" + notebook_code + "\n")
    (root / "book" / "deep").mkdir(parents=True)
    return root


def test_a_command_in_a_second_checkout_uses_its_results_folder(tmp_path, finished, monkeypatch, capsys):
    root = _second_checkout(tmp_path / "second")
    copy_run(finished, root / "data" / "results")
    monkeypatch.chdir(root / "book" / "deep")
    assert config.default_results_dir() == root / "data" / "results"
    assert reproduce.repo_root() == root
    assert exit_code(["results"]) == 0
    assert finished.run_id in capsys.readouterr().out


def test_a_folder_of_another_project_is_not_taken_for_a_checkout(tmp_path, monkeypatch):
    other = tmp_path / "other"
    (other / "notebooks").mkdir(parents=True)
    (other / "pyproject.toml").write_text('[project]\nname = "something-else"\n')
    monkeypatch.chdir(other / "notebooks")
    assert config.default_results_dir() == provenance.PROJECT_ROOT / "data" / "results"
    assert reproduce.repo_root() == provenance.PROJECT_ROOT


def test_reproduce_in_a_second_checkout_runs_its_notebooks_with_its_package(tmp_path, monkeypatch, capsys):
    root = _second_checkout(tmp_path / "second", "import locoprop\nprint('package at', locoprop.CHECKOUT)")
    monkeypatch.chdir(root / "book" / "deep")
    assert reproduce.repo_root() == root  # else the notebooks of another checkout would be executed
    assert reproduce.main(["--notebook", "01"]) == 0
    import nbformat
    text = json.dumps(nbformat.read(root / "notebooks" / "01_local_losses.ipynb", as_version=4).cells[-1].outputs)
    assert str(root / "locoprop" / "__init__.py") in text


def test_a_model_that_does_not_fit_in_memory_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    real = train.deep_autoencoder

    def no_memory(sizes, *args, **kwargs):
        if max(sizes) <= 4:  # the small model of the hyper-parameter check
            return real(sizes, *args, **kwargs)
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory: you tried "
                           "to allocate 8589934592 bytes.\nframe #0: ...")

    monkeypatch.setattr(train, "deep_autoencoder", no_memory)
    err = one_line_error(capsys, ["run", "--optimizer", "adam", "--epochs", "2", "--subset", "200",
                                  "--results-dir", str(tmp_path), "--quiet"])
    assert "does not fit in the memory" in err and "can't allocate memory" in err
