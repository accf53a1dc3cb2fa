"""Bad input, damaged files and misuse of the runner, the CLI, the data loader and the reproduce driver.

Each test plants the fault a user could meet (a pickle that runs code, flipped bytes, a gzip damaged
in the middle, a read-only cache, a value that is not what it claims, a second identical run, a
notebook that fails) and checks the promise: a clear one-line error, and nothing lost or
silently overwritten.
"""
from __future__ import annotations

import gzip
import json
import os
import pickle
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from locoprop.experiments import data, reproduce
from locoprop.experiments.cli import main
from locoprop.experiments.config import RunConfig, RunConflictError
from locoprop.experiments.sweep import sweep
from locoprop.experiments.train import check, run

REPO = Path(__file__).resolve().parents[1]


def tiny(tmp_path, optimizer="adam", **kw) -> RunConfig:
    kw.setdefault("epochs", 3)
    return RunConfig(optimizer=optimizer, subset=200, results_dir=str(tmp_path), **kw)


def interrupted(cfg: RunConfig, at_epoch: int = 1) -> None:
    """Train ``cfg`` until its checkpoint after ``at_epoch`` is written, then stop as a Ctrl-C would."""
    def stop(epoch, record):
        if epoch == at_epoch:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(cfg, progress=False, callback=stop)
    assert cfg.paths()["checkpoint"].exists()


def exit_code(argv) -> int:
    try:
        return main(argv)
    except SystemExit as stop:
        return stop.code


class _Planted:
    """A pickle payload that would create a file when unpickled with ``weights_only=False``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


# --------------------------------------------------------------------------- checkpoints
def test_a_planted_pickle_checkpoint_runs_no_code(tmp_path):
    cfg = tiny(tmp_path)
    interrupted(cfg)
    marker = tmp_path / "code-ran"
    path = cfg.paths()["checkpoint"]
    with path.open("wb") as handle:
        pickle.dump({"identity": cfg.resolve().identity(), "x": _Planted(marker)}, handle)
    # Even with the digest forged to match, the file is read as data only.
    digest = path.with_name(path.name + ".sha256")
    import hashlib
    digest.write_text(hashlib.sha256(path.read_bytes()).hexdigest() + "\n")
    with pytest.raises(RunConflictError, match="cannot read the checkpoint"):
        run(cfg, progress=False)
    assert not marker.exists()
    assert path.exists()  # kept for inspection


def test_a_damaged_checkpoint_is_refused_and_kept(tmp_path):
    cfg = tiny(tmp_path)
    interrupted(cfg)
    path = cfg.paths()["checkpoint"]
    blob = bytearray(path.read_bytes())
    middle = len(blob) // 2
    for i in range(middle, middle + 50):  # 50 flipped bytes, inside a tensor's data
        blob[i] ^= 0xFF
    path.write_bytes(bytes(blob))
    with pytest.raises(RunConflictError, match="does not match its SHA-256"):
        run(cfg, progress=False)
    assert path.read_bytes() == bytes(blob) and not cfg.paths()["json"].exists()


def test_a_checkpoint_without_its_digest_is_refused(tmp_path):
    cfg = tiny(tmp_path)
    interrupted(cfg)
    path = cfg.paths()["checkpoint"]
    path.write_bytes(path.read_bytes().split(b"\n", 1)[1])  # the checkpoint's bytes without the digest heading them
    with pytest.raises(RunConflictError, match="SHA-256"):
        run(cfg, progress=False)
    assert path.exists()


def test_an_intact_checkpoint_still_resumes(tmp_path):
    cfg = tiny(tmp_path)
    interrupted(cfg)
    result = run(cfg, progress=False)
    assert result.status == "completed" and result.provenance["resumed"][0]["at_epoch"] == 1
    assert not list((tmp_path / "smoke" / "checkpoints").glob("*")) if (tmp_path / "smoke" / "checkpoints").exists() \
        else True


# --------------------------------------------------------------------------- a run at a time
def test_a_second_identical_run_is_refused_while_the_first_trains(tmp_path):
    cfg = tiny(tmp_path)
    lock = cfg.paths()["lock"]
    lock.parent.mkdir(parents=True)
    lock.write_text(f"{socket.gethostname()} {os.getpid()}\n")  # this (live) process holds it
    with pytest.raises(RunConflictError, match=f"process {os.getpid()}"):
        run(cfg, progress=False)
    assert not cfg.paths()["json"].exists() and lock.exists()


def test_a_stale_lock_is_taken_over(tmp_path):
    cfg = tiny(tmp_path)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    lock = cfg.paths()["lock"]
    lock.parent.mkdir(parents=True)
    lock.write_text(f"{socket.gethostname()} {dead.stdout.strip()}\n")
    assert run(cfg, progress=False).status == "completed"
    assert not lock.exists()


# --------------------------------------------------------------------------- early validation
def test_a_sweep_checks_every_configuration_before_training(tmp_path):
    configs = [tiny(tmp_path, name, hparams={"momentum": 0.5}) for name in ("sgd", "kfac", "adam")]
    with pytest.raises(ValueError, match="adam"):
        sweep(configs, progress=False)
    assert not list(tmp_path.rglob("*.json")) and not list(tmp_path.rglob("*.pt"))


def test_the_sweep_command_trains_nothing_when_one_setting_is_invalid(tmp_path, capsys):
    rc = exit_code(["sweep", "--optimizer", "sgd,kfac,adam", "--grid", "momentum=0.5", "--epochs", "2",
                    "--subset", "200", "--results-dir", str(tmp_path), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "adam" in err and len(err.strip().splitlines()) == 1
    assert not list(tmp_path.rglob("*.json"))


def test_check_leaves_the_random_state_alone():
    before = torch.get_rng_state()
    check(RunConfig(optimizer="kfac"))  # K-FAC draws its sampler's seed when built
    assert torch.equal(before, torch.get_rng_state())


@pytest.mark.parametrize("change, match", [
    ({"epochs": 2.9}, "epochs must be a whole number"),
    ({"seed": 1.7}, "seed must be a whole number"),
    ({"subset": 120.5}, "subset must be a whole number"),
    ({"epochs": True}, "epochs must be a whole number"),
    ({"sizes": ()}, "sizes must list"),
    ({"device": "foo"}, "unknown device 'foo'"),
    ({"activation": "gelu"}, "unknown activation"),
    ({"precision": "fp8"}, "unknown precision"),
    ({"divergence_factor": float("nan")}, "divergence_factor must be a finite number"),
    ({"epochs": 1}, "lower --warmup-epochs or raise --epochs"),
])
def test_nonsense_is_refused_not_truncated(change, match):
    with pytest.raises(ValueError, match=match):
        RunConfig(**{"optimizer": "adam", **change}).resolve()


@pytest.mark.parametrize("argv, message", [
    (["run", "--optimizer", "locoprop-m", "--hparam", "gamma={bad"], "cannot parse the value '{bad'"),
    (["run", "--optimizer", "adam", "--hparam", "lr=1e-3x"], "cannot parse the value '1e-3x'"),
    (["run", "--optimizer", "adam", "--device", "foo"], "unknown device 'foo'"),
    (["run", "--optimizer", "adam", "--sizes", ""], "got nothing"),
    (["run", "--optimizer", "adam", "--epochs", "1"], "--warmup-epochs"),
    (["sweep", "--optimizer", "adam", "--seeds", ""], "got nothing"),
])
def test_cli_errors_are_one_line(tmp_path, capsys, argv, message):
    rc = exit_code([*argv, "--results-dir", str(tmp_path), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_an_unwritable_results_folder_is_a_one_line_error(tmp_path, capsys):
    if os.geteuid() == 0:
        folder = tmp_path / "file-not-folder"
        folder.write_text("")  # root can write anywhere: a file in the way fails for everybody
    else:
        folder = tmp_path / "ro"
        folder.mkdir(mode=0o500)
    rc = exit_code(["run", "--optimizer", "adam", "--epochs", "2", "--subset", "200", "--results-dir",
                    str(folder / "results"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1


# --------------------------------------------------------------------------- data files
def _idx(images: np.ndarray) -> bytes:
    return bytes([0, 0, 0x08, images.ndim]) + np.array(images.shape, ">u4").tobytes() + images.tobytes()


def test_a_gzip_damaged_in_the_middle_is_a_data_error(tmp_path):
    images = (np.arange(50 * 28 * 28) % 97).astype(np.uint8).reshape(50, 28, 28)  # compressible, like images
    blob = bytearray(gzip.compress(_idx(images)))  # Huffman-coded: flipped bytes break the stream (zlib.error)
    for i in range(len(blob) // 2, len(blob) // 2 + 64):
        blob[i] ^= 0x5A
    path = tmp_path / "damaged.gz"
    path.write_bytes(bytes(blob))
    with pytest.raises(data.DataError, match="not a readable gzip file"):
        data.read_idx(path)


def test_a_read_only_cache_is_a_data_error(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    if os.geteuid() == 0:
        cache.write_text("")  # a file where the folder should be: not writable for anybody
    else:
        cache.mkdir(mode=0o500)
    monkeypatch.setattr(data, "cache_dir", lambda: cache)
    monkeypatch.delenv(data.ENV_VAR, raising=False)
    with pytest.raises(data.DataError, match="not writable"):
        data.load("mnist", "train")


def test_an_unreadable_data_file_is_a_data_error(tmp_path, monkeypatch):
    folder = tmp_path / "fashion-mnist" / "t10k-images-idx3-ubyte.gz"
    folder.mkdir(parents=True)  # a folder where the file should be: reading it fails
    monkeypatch.setattr(data, "find_file", lambda name, spec, data_dir=None: folder)
    with pytest.raises(data.DataError, match="cannot read"):
        data.load("fashion-mnist", "test")


# --------------------------------------------------------------------------- the reproduce driver
def test_reproduce_refuses_bad_parameters_before_starting_a_kernel(capsys):
    before = (REPO / "notebooks" / "01_local_losses.ipynb").read_bytes()
    with pytest.raises(SystemExit) as stop:
        reproduce.main(["--profile", "smoke", "--dataset", "cifar", "--notebook", "01"])
    assert stop.value.code == 2 and "unknown dataset 'cifar'" in capsys.readouterr().err
    assert (REPO / "notebooks" / "01_local_losses.ipynb").read_bytes() == before


def _fake_checkout(root: Path, notebook_code: str) -> None:
    """A checkout with its own ``locoprop`` package (a marker) and notebook 01 replaced."""
    (root / "locoprop").mkdir(parents=True)
    (root / "locoprop" / "__init__.py").write_text("CHECKOUT = __file__\n")
    (root / "notebooks").mkdir()
    header = (REPO / "notebooks" / "01_local_losses.py").read_text().split("# ---\n")[1]  # jupytext + kernelspec
    (root / "notebooks" / "01_local_losses.py").write_text(
        "# ---\n" + header + "# ---\n\n# %% tags=[\"parameters\"]\nprofile = 'smoke'\n\n# %%\n" + notebook_code + "\n")


def test_reproduce_runs_the_code_of_the_checkout_it_reproduces(tmp_path, monkeypatch):
    root = tmp_path / "second-checkout"
    monkeypatch.setenv("LOCOPROP_PROBE", "kept")
    _fake_checkout(root, "import os, locoprop\nprint('package at', locoprop.CHECKOUT, os.environ.get('LOCOPROP_PROBE'))")
    out = reproduce.execute("01_local_losses", {"profile": "smoke"}, root)
    import nbformat
    text = json.dumps(nbformat.read(out, as_version=4).cells[-1].outputs)
    assert str(root / "locoprop" / "__init__.py") in text
    assert "kept" in text  # the rest of the environment (e.g. LOCOPROP_DATA_DIR) reaches the kernel too


def test_a_failed_execution_leaves_the_executed_notebook_alone(tmp_path):
    root = tmp_path / "checkout"
    _fake_checkout(root, "raise RuntimeError('this cell fails')")
    executed = root / "notebooks" / "01_local_losses.ipynb"
    executed.write_text("the committed notebook\n")
    with pytest.raises(Exception, match="this cell fails"):
        reproduce.execute("01_local_losses", {"profile": "smoke"}, root)
    assert executed.read_text() == "the committed notebook\n"
    assert (root / "notebooks" / "01_local_losses.failed.ipynb").exists()


def test_reexecuting_an_unchanged_notebook_leaves_its_file_byte_identical(tmp_path):
    root = tmp_path / "checkout"
    _fake_checkout(root, "import time\nprint('stable output')\ntime.sleep(0.05)")
    first = reproduce.execute("01_local_losses", {"profile": "smoke"}, root).read_bytes()
    again = reproduce.execute("01_local_losses", {"profile": "smoke"}, root).read_bytes()
    assert again == first  # same outputs: the file, its cell ids and its execution times stay as they were
    _fake_checkout(tmp_path / "other", "print('another output')")
    (root / "notebooks" / "01_local_losses.py").write_text((tmp_path / "other" / "notebooks" / "01_local_losses.py").read_text())
    changed = reproduce.execute("01_local_losses", {"profile": "smoke"}, root).read_bytes()
    assert changed != first and b"another output" in changed


def test_a_figure_of_the_book_is_written_from_the_executed_notebook_only(tmp_path, monkeypatch):
    import base64

    root = tmp_path / "checkout"
    monkeypatch.setitem(reproduce.FIGURES, "01_local_losses", {"fig": "book/figures/f.png"})
    _fake_checkout(root, "import matplotlib.pyplot as plt\n"
                         "from myst_nb import glue\nfig, ax = plt.subplots()\nax.plot([1, 2])\n"
                         "glue('fig', fig, display=False)")
    out = reproduce.execute("01_local_losses", {"profile": "smoke"}, root)
    written = (root / "book" / "figures" / "f.png").read_bytes()
    glued = [o for c in json.loads(out.read_text())["cells"] for o in c.get("outputs", [])
             if o.get("metadata", {}).get("scrapbook", {}).get("name") == "fig"]
    png = next(v for k, v in glued[0]["data"].items() if k.endswith("image/png"))
    assert written.startswith(b"\x89PNG") and written == base64.b64decode(png)
    _fake_checkout(tmp_path / "failing", "raise RuntimeError('this cell fails')")
    (root / "notebooks" / "01_local_losses.py").write_text(
        (tmp_path / "failing" / "notebooks" / "01_local_losses.py").read_text())
    with pytest.raises(Exception, match="this cell fails"):
        reproduce.execute("01_local_losses", {"profile": "smoke"}, root)
    assert (root / "book" / "figures" / "f.png").read_bytes() == written  # a failed execution writes no figure


@pytest.mark.parametrize("name", reproduce.NOTEBOOKS)
def test_every_notebook_checks_its_parameters_first(name):
    """The first cell after the parameters calls check_parameters, which refuses a bad profile or seeds."""
    source = (REPO / "notebooks" / f"{name}.py").read_text()
    after = source.split('tags=["parameters"', 1)[1].split("# %%", 2)[1]
    assert "check_parameters(" in after
    with pytest.raises(ValueError, match="unknown profile 'huge'"):
        reproduce.check_parameters(profile="huge")
    with pytest.raises(ValueError, match="seeds"):
        reproduce.check_parameters(profile="smoke", seeds=[-1])
