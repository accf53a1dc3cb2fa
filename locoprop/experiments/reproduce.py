"""Execute the companion's notebooks with papermill.

``python -m locoprop reproduce --profile smoke|paper [--dataset D] [--device cpu|cuda]
[--notebook NAME] [--reuse]``

For each notebook ``notebooks/NAME.py`` (jupytext ``py:percent``), in order, the driver reads the
text notebook, injects the parameters (``profile``, ``dataset``, ``device``) after its
``parameters`` cell and executes it with papermill in ``notebooks/``, writing the executed
``notebooks/NAME.ipynb`` next to it.  Experiments the notebooks run write their result files
under ``data/results/<profile>/``; a notebook that finds them loads them instead of training.

The executed notebook records, in ``metadata.locoprop``, the SHA-256 of the ``.py`` source and
the parameters it ran with, and, for the notebooks that draw stored results (03, 04), a digest of
the result files under ``data/results/``.  ``--reuse`` skips a notebook whose executed ``.ipynb``
carries the same source hash, parameters (and results digest) and finished without error: a
fresh clone, where every file has the same modification time, therefore reuses the committed
executed notebooks, and adding result files (e.g. paper-scale runs) re-executes 03 and 04.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

from .config import check_device
from .provenance import PROJECT_ROOT
from .data import NAMES

__all__ = [
    "NOTEBOOKS",
    "PROFILES",
    "DEFAULT_DATASETS",
    "repo_root",
    "notebook_parameters",
    "source_hash",
    "is_current",
    "results_digest",
    "kernel_environment",
    "execute",
    "main",
]

NOTEBOOKS = ("01_local_losses", "02_preconditioning", "03_benchmark", "04_ablations")
#: Notebooks whose outputs depend on the result files under data/results/.
READS_RESULTS = ("03_benchmark", "04_ablations")
PROFILES = ("smoke", "paper")
# MNIST train images cannot be shipped, so the paper profile defaults to Fashion-MNIST;
# ``--dataset mnist`` works wherever the MNIST files are available.
DEFAULT_DATASETS = {"smoke": "digits", "paper": "fashion-mnist"}
METADATA_KEY = "locoprop"


def repo_root() -> Path:
    """The repository root: the folder that holds ``notebooks/`` and ``locoprop/``."""
    return PROJECT_ROOT


def default_device(profile: str) -> str:
    """``cpu`` for the smoke profile (deterministic reference outputs); else CUDA when present."""
    if profile == "smoke":
        return "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def notebook_parameters(profile: str, dataset: str | None = None, device: str | None = None) -> dict:
    """The parameters every notebook receives, checked (``ValueError``) before any notebook starts."""

    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}: choose one of {', '.join(PROFILES)}")
    dataset = dataset or DEFAULT_DATASETS[profile]
    if dataset not in NAMES:
        raise ValueError(f"unknown dataset {dataset!r}: choose one of {', '.join(NAMES)}")
    device = check_device(device or default_device(profile))
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but CUDA is not available: use --device cpu")
    return {"profile": profile, "dataset": dataset, "device": device}


def kernel_environment(root: Path) -> dict[str, str]:
    """The environment of the notebook kernel: this process's, with ``root`` first on ``PYTHONPATH``.

    The kernel then imports the ``locoprop`` package of the checkout being reproduced, whatever
    checkout the environment's (editable) install points at.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(root).resolve())] + [p for p in env.get("PYTHONPATH", "").split(
        os.pathsep) if p])
    env.setdefault("TQDM_DISABLE", "1")  # quiet progress bars inside the kernel
    return env


def source_hash(path: Path) -> str:
    """SHA-256 of a notebook's text source (line endings normalised)."""
    text = Path(path).read_text(encoding="utf-8").replace("\r\n", "\n")
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def results_digest(root: Path | None = None) -> str:
    """SHA-256 over the result files (``*.json``, ``*.csv``) under ``data/results/``, checkpoints excluded."""
    root = Path(root) if root is not None else repo_root()
    folder = root / "data" / "results"
    digest = hashlib.sha256()
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in (".json", ".csv")
                   and "checkpoints" not in p.relative_to(folder).parts and not p.name.startswith("."))
    for path in files:
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def _notebook_paths(name: str, root: Path) -> tuple[Path, Path]:
    folder = root / "notebooks"
    return folder / f"{name}.py", folder / f"{name}.ipynb"


def is_current(name: str, parameters: dict, root: Path | None = None) -> bool:
    """True if ``notebooks/NAME.ipynb`` was executed from the current ``NAME.py`` with ``parameters``
    and finished without error."""
    import nbformat

    root = Path(root) if root is not None else repo_root()
    source, executed = _notebook_paths(name, root)
    if not executed.exists():
        return False
    try:
        nb = nbformat.read(executed, as_version=4)
    except Exception:  # an unreadable notebook is not current
        return False
    record = nb.metadata.get(METADATA_KEY, {})
    papermill_md = nb.metadata.get("papermill", {})
    return (
        record.get("source_sha256") == source_hash(source)
        and record.get("parameters") == parameters
        and (name not in READS_RESULTS or record.get("results_sha256") == results_digest(root))
        and not papermill_md.get("exception")
        and papermill_md.get("end_time") is not None
    )


def _finish(executed: Path, name: str, root: Path) -> None:
    """Tidy the executed notebook's metadata: relative paths, no copy of the input, results digest."""
    import nbformat

    nb = nbformat.read(executed, as_version=4)
    for cell in nb.cells:  # the values injected by papermill stay in the notebook, off the book's page
        tags = cell.get("metadata", {}).get("tags", [])
        if "injected-parameters" in tags and "remove-cell" not in tags:
            cell.metadata["tags"] = [*tags, "remove-cell"]
    papermill_md = nb.metadata.get("papermill", {})
    papermill_md["input_path"] = f"{name}.py"
    papermill_md["output_path"] = f"{name}.ipynb"
    papermill_md.pop("environment_variables", None)
    if name in READS_RESULTS:
        nb.metadata[METADATA_KEY]["results_sha256"] = results_digest(root)
    nbformat.write(nb, executed)


def execute(
    name: str,
    parameters: dict,
    root: Path | None = None,
    kernel_name: str = "python3",
    progress_bar: bool = False,
) -> Path:
    """Execute ``notebooks/NAME.py`` with ``parameters``; return the executed ``.ipynb`` path."""
    import jupytext
    import papermill

    root = Path(root) if root is not None else repo_root()
    source, executed = _notebook_paths(name, root)
    if not source.exists():
        raise FileNotFoundError(f"no notebook {source}")
    nb = jupytext.read(source)
    nb.metadata[METADATA_KEY] = {
        "source": source.name,
        "source_sha256": source_hash(source),
        "parameters": dict(parameters),
    }
    # Executed into a temporary file that replaces NAME.ipynb only on success: a failed execution
    # is kept as NAME.failed.ipynb for inspection and the committed notebook stays as it was.
    partial = executed.with_name(f".{name}.{os.getpid()}.ipynb")
    failed = executed.with_name(f"{name}.failed.ipynb")
    saved_env = dict(os.environ)
    kernel_env = kernel_environment(root)
    os.environ.clear()
    os.environ.update(kernel_env)  # the kernel inherits this process's environment
    try:
        papermill.execute_notebook(
            nb,
            str(partial),
            parameters=dict(parameters),
            kernel_name=kernel_name,
            cwd=str(source.parent),
            progress_bar=progress_bar,
        )
    except BaseException:
        if partial.exists():
            os.replace(partial, failed)
        raise
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
    _finish(partial, name, root)
    os.replace(partial, executed)
    failed.unlink(missing_ok=True)
    return executed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m locoprop reproduce",
        description="Execute the companion's notebooks with papermill (notebooks/NAME.py -> NAME.ipynb).",
    )
    parser.add_argument("--profile", choices=PROFILES, default="smoke",
                        help="smoke: CPU, digits, minutes; paper: the paper's protocol (GPU advised)")
    parser.add_argument("--dataset", default=None,
                        help="digits, mnist or fashion-mnist (default: digits for smoke, fashion-mnist for paper)")
    parser.add_argument("--device", default=None,
                        help="cpu or cuda (default: cpu for smoke; cuda when available for paper)")
    parser.add_argument("--notebook", action="append", default=None, metavar="NAME",
                        help="run only this notebook (e.g. 03_benchmark or 03); may be repeated")
    parser.add_argument("--reuse", action="store_true",
                        help="skip notebooks already executed from the same source with the same parameters")
    args = parser.parse_args(argv)

    try:
        parameters = notebook_parameters(args.profile, args.dataset, args.device)
    except ValueError as err:
        parser.error(str(err))
    names = list(NOTEBOOKS)
    if args.notebook:
        names = []
        for wanted in args.notebook:
            stem = Path(wanted).stem
            matches = [n for n in NOTEBOOKS if n == stem or n.split("_", 1)[0] == stem]
            if not matches:
                parser.error(f"unknown notebook {wanted!r}: choose one of {', '.join(NOTEBOOKS)}")
            names += [n for n in matches if n not in names]

    root = repo_root()
    print(f"parameters: {json.dumps(parameters)}", flush=True)
    executed: list[str] = []

    def run_one(name: str) -> bool:
        start = time.perf_counter()
        print(f"{name}: executing ...", flush=True)
        try:
            out = execute(name, parameters, root)
        except Exception as exc:
            print(f"{name}: FAILED after {time.perf_counter() - start:.1f} s (the executed notebook was kept as "
                  f"notebooks/{name}.failed.ipynb; notebooks/{name}.ipynb is unchanged): {exc}", file=sys.stderr)
            return False
        executed.append(name)
        print(f"{name}: wrote {out.relative_to(root)} in {time.perf_counter() - start:.1f} s", flush=True)
        return True

    for name in names:
        if args.reuse and is_current(name, parameters, root):
            print(f"{name}: up to date, reused", flush=True)
            continue
        if not run_one(name):
            return 1
    # A later notebook may have added result files (04 after 03).  Notebooks executed now draw
    # only their own runs, so they get the final digest; a reused one is executed again.
    for name in names:
        if name in READS_RESULTS and name not in executed and args.reuse and not is_current(name, parameters, root):
            if not run_one(name):
                return 1
    for name in executed:
        if name in READS_RESULTS:
            _finish(root / "notebooks" / f"{name}.ipynb", name, root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
