"""Execute the companion's notebooks with papermill.

``python -m locoprop reproduce --profile smoke|paper [--dataset D] [--device cpu|cuda]
[--notebook NAME] [--reuse] [--executor slurm --partition P ...]``

For each notebook ``notebooks/NAME.py`` (jupytext ``py:percent``), in order, the driver reads the
text notebook, injects the parameters (``profile``, ``dataset``, ``device``) after its
``parameters`` cell and executes it with papermill in ``notebooks/``, writing the executed
``notebooks/NAME.ipynb`` next to it.  Experiments the notebooks run write their result files
under ``data/results/<profile>/``; a notebook that finds them loads them instead of training.
The notebooks are those of the checkout the command runs in (:func:`repo_root`, found from the
current folder), executed with that checkout's ``locoprop`` package.
Where they train is the ``executor`` parameter (None: locally; with ``--executor slurm``, the
JSON-able dict of :meth:`locoprop.experiments.executors.Slurm.parameter`), which a notebook hands to
``sweep``/``tune``.  It is not one of the recorded parameters: a run's results do not depend on
where it trained.

The executed notebook records, in ``metadata.locoprop``, the SHA-256 of the ``.py`` source and
the parameters it ran with, and, for the notebooks that draw stored results (03, 04), a digest of
the result files under ``data/results/``.  ``--reuse`` skips a notebook whose executed ``.ipynb``
carries the same source hash, parameters (and results digest) and finished without error: a
fresh clone, where every file has the same modification time, therefore reuses the committed
executed notebooks, and adding result files (e.g. paper-scale runs) re-executes 03 and 04.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import time
from pathlib import Path

from . import executors
from .config import check_device
from .parsing import Parser
from .provenance import atomic_write, checkout
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
#: Figures of the book that a notebook glues (name -> path under the repository root), written by
#: :func:`execute` from the executed notebook once it has succeeded, never by the notebook itself.
FIGURES = {"03_benchmark": {"headline_figure": "book/figures/headline.png"}}
PROFILES = ("smoke", "paper")
# MNIST train images cannot be shipped, so the paper profile defaults to Fashion-MNIST;
# ``--dataset mnist`` works wherever the MNIST files are available.
DEFAULT_DATASETS = {"smoke": "digits", "paper": "fashion-mnist"}
METADATA_KEY = "locoprop"


def repo_root() -> Path:
    """The checkout the command runs in (:func:`~locoprop.experiments.provenance.checkout`): its ``notebooks/``
    are executed, with its ``locoprop`` package first on the kernel's ``PYTHONPATH``."""
    return checkout()


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


def check_parameters(profile: str, dataset: str | None = None, device: str | None = None, seeds=(0,), **_) -> None:
    """A notebook's first check of the parameters papermill gave it (``ValueError`` naming the bad one), so that
    a mistyped parameter stops the notebook before it computes, trains or shows anything."""
    notebook_parameters(profile, dataset, device)
    if not isinstance(seeds, (list, tuple)) or not seeds or \
            not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds):
        raise ValueError(f"seeds must be a non-empty list of whole numbers >= 0, got {seeds!r}")


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
    for index, cell in enumerate(nb.cells):  # ids from the position and the source: the same on every execution
        cell["id"] = f"c{index:03d}-" + hashlib.sha256(cell.source.encode()).hexdigest()[:8]
    nbformat.write(nb, executed)


def _without_timing(path: Path) -> dict | None:
    """The notebook at ``path`` as JSON with the times of its execution removed (None if there is none)."""
    if not path.exists():
        return None
    doc = json.loads(path.read_text())
    for key in ("start_time", "end_time", "duration"):
        doc.get("metadata", {}).get("papermill", {}).pop(key, None)
        for cell in doc.get("cells", []):
            cell.get("metadata", {}).get("papermill", {}).pop(key, None)
            cell.get("metadata", {}).get("execution", {}).clear()
    return doc


def _declares(nb, name: str) -> bool:
    """Whether the notebook's ``parameters`` cell assigns ``name`` (papermill warns about any other)."""
    return any("parameters" in cell.metadata.get("tags", []) and re.search(rf"^{name}\s*[:=]", cell.source, re.M)
               for cell in nb.cells if cell.cell_type == "code")


def execute(
    name: str,
    parameters: dict,
    root: Path | None = None,
    kernel_name: str = "python3",
    progress_bar: bool = False,
    executor: dict | None = None,
) -> Path:
    """Execute ``notebooks/NAME.py`` with ``parameters`` (and ``executor``, not recorded); return the executed ``.ipynb`` path."""
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
            parameters={**parameters, **({"executor": executor} if _declares(nb, "executor") else {})},
            kernel_name=kernel_name,
            cwd=str(source.parent),
            progress_bar=progress_bar,
            # the kernel is a local child process: keep its log (the TCP transport's warning) off the terminal
            extra_arguments=["--IPKernelApp.log_level=ERROR"],
        )
    except BaseException:
        if partial.exists():
            os.replace(partial, failed)
        raise
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
    _finish(partial, name, root)
    if _without_timing(partial) == _without_timing(executed):
        partial.unlink()  # the same outputs: the notebook and the times of the execution that made them stay
    else:
        os.replace(partial, executed)
    failed.unlink(missing_ok=True)
    write_figures(name, root)
    return executed


def write_figures(name: str, root: Path) -> list[Path]:
    """Write the book's figures that the executed notebook ``name`` glued (:data:`FIGURES`); a figure the notebook
    did not glue is a ``ValueError`` and leaves the committed file as it is."""
    import base64

    wanted = FIGURES.get(name, {})
    if not wanted:
        return []
    _, executed = _notebook_paths(name, root)
    found = {}
    for cell in json.loads(executed.read_text())["cells"]:
        for output in cell.get("outputs", []):
            key = output.get("metadata", {}).get("scrapbook", {}).get("name")
            png = [v for mime, v in output.get("data", {}).items() if mime.endswith("image/png")]  # glue may prefix
            if key in wanted and png:
                found[key] = base64.b64decode(png[0] if isinstance(png[0], str) else "".join(png[0]))
    missing = sorted(set(wanted) - set(found))
    if missing:
        raise ValueError(f"{executed} glues no image {', '.join(missing)}: its figure files were left as they were")
    paths = []
    for key, relative in wanted.items():
        path = Path(root) / relative
        atomic_write(path, lambda tmp, blob=found[key]: tmp.write_bytes(blob))
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = Parser(
        prog="python -m locoprop reproduce",
        description="Execute the companion's notebooks with papermill (notebooks/NAME.py -> NAME.ipynb).",
        epilog="example: python -m locoprop reproduce --profile smoke --notebook 03",
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
    executors.add_arguments(parser, processes=False)
    args = parser.parse_args(argv)

    try:
        parameters = notebook_parameters(args.profile, args.dataset, args.device)
        executor = executors.from_arguments(args).parameter()
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
    print(f"parameters: {json.dumps(parameters)}" + (f"; executor: {json.dumps(executor)}" if executor else ""), flush=True)
    executed: list[str] = []

    def run_one(name: str) -> bool:
        start = time.perf_counter()
        print(f"{name}: executing ...", flush=True)
        try:
            out = execute(name, parameters, root, executor=executor)
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
