"""The executed notebooks: present, executed from their current sources, and reproducible.

``notebooks/NAME.py`` (jupytext) is the source of each notebook; ``python -m locoprop reproduce``
executes it with papermill into ``notebooks/NAME.ipynb``, which is committed with its outputs.
Here we check that each executed notebook belongs to its source and finished without errors, and
re-run the smoke-profile ones with nbval, which compares every cell's fresh outputs with the stored
ones (after the substitutions of ``tests/nbval_sanitize.cfg``).  Notebooks 03 and 04 load the
committed result files under ``data/results/smoke/`` instead of re-training, so the whole nbval run
takes a minute or two on a CPU.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from locoprop.experiments import reproduce

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
SANITIZE = ROOT / "tests" / "nbval_sanitize.cfg"


def _executed(name: str) -> nbformat.NotebookNode:
    path = NOTEBOOK_DIR / f"{name}.ipynb"
    if not path.exists():
        pytest.fail(f"{path} is missing: run `python -m locoprop reproduce --profile smoke --notebook {name}`")
    return nbformat.read(path, as_version=4)


def nbval_command(paths: list[Path]) -> list[str]:
    """The nbval invocation (also usable by hand from the repository root)."""
    return [
        sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
        "--nbval", "--nbval-current-env", "--nbval-sanitize-with", str(SANITIZE.relative_to(ROOT)),
        *[str(p.relative_to(ROOT)) for p in paths],
    ]


@pytest.mark.parametrize("name", reproduce.NOTEBOOKS)
def test_executed_notebook_is_current(name):
    nb = _executed(name)
    record = nb.metadata.get("locoprop", {})
    assert record.get("source_sha256") == reproduce.source_hash(NOTEBOOK_DIR / f"{name}.py"), (
        f"notebooks/{name}.ipynb was not executed from the current notebooks/{name}.py: run "
        f"`python -m locoprop reproduce --profile smoke --notebook {name}`"
    )
    assert set(record.get("parameters", {})) >= {"profile", "dataset", "device"}
    assert not nb.metadata.get("papermill", {}).get("exception"), f"{name} raised an exception when executed"
    errors = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.get("outputs", [])
              if out.get("output_type") == "error"]
    assert not errors, f"{name}.ipynb holds error outputs: {[e.get('ename') for e in errors]}"
    code_cells = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert all(cell.get("execution_count") for cell in code_cells), f"{name}.ipynb has unexecuted cells"


def test_reproduce_parameters():
    assert reproduce.notebook_parameters("smoke") == {"profile": "smoke", "dataset": "digits", "device": "cpu"}
    assert reproduce.notebook_parameters("paper", device="cpu")["dataset"] == "fashion-mnist"
    assert reproduce.notebook_parameters("paper", "mnist", "cpu") == {
        "profile": "paper", "dataset": "mnist", "device": "cpu"}
    with pytest.raises(ValueError, match="unknown profile"):
        reproduce.notebook_parameters("huge")


def test_reuse_check(tmp_path):
    """``--reuse`` compares the stored source hash and parameters, not modification times."""
    (tmp_path / "notebooks").mkdir()
    source = tmp_path / "notebooks" / "x.py"
    source.write_text("# %%\nprint(1)\n")
    params = reproduce.notebook_parameters("smoke")
    assert not reproduce.is_current("x", params, tmp_path)  # not executed yet
    nb = nbformat.v4.new_notebook()
    nb.metadata["locoprop"] = {"source_sha256": reproduce.source_hash(source), "parameters": params}
    nb.metadata["papermill"] = {"exception": None, "end_time": "2026-01-01T00:00:00"}
    nbformat.write(nb, tmp_path / "notebooks" / "x.ipynb")
    assert reproduce.is_current("x", params, tmp_path)
    assert not reproduce.is_current("x", {**params, "dataset": "mnist"}, tmp_path)
    source.write_text("# %%\nprint(2)\n")
    assert not reproduce.is_current("x", params, tmp_path)


@pytest.mark.slow
def test_notebooks_reproduce_with_nbval():
    """Re-execute the smoke-profile notebooks and compare every output with the stored one."""
    paths = []
    for name in reproduce.NOTEBOOKS:
        params = _executed(name).metadata.get("locoprop", {}).get("parameters", {})
        if params.get("profile") == "smoke" and params.get("device") == "cpu":
            paths.append(NOTEBOOK_DIR / f"{name}.ipynb")
    if not paths:
        pytest.skip("no notebook was executed at the smoke profile on the CPU")
    env = {**os.environ, "TQDM_DISABLE": "1", "PYDEVD_DISABLE_FILE_VALIDATION": "1"}
    proc = subprocess.run(nbval_command(paths), cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, (
        "nbval found notebook outputs that changed (or failed):\n" + proc.stdout[-20000:] + proc.stderr[-5000:]
    )
