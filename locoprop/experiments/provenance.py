"""Where a result comes from: git commit, package versions, device, time; atomic file writes; the checkout.

Every result file of the project (runs, benchmarks) carries :func:`provenance`, and is written
with :func:`atomic_write` so that an interrupted write never leaves a half-written file behind.

:data:`PROJECT_ROOT` is the checkout the package was imported from; :func:`checkout` is the
checkout a command runs in (found from the current folder), whose ``data/results`` and
``notebooks`` the harness uses by default, whichever checkout an editable install points at.
"""
from __future__ import annotations

import os
import platform
import re
import subprocess
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["PROJECT_NAME", "PROJECT_ROOT", "atomic_write", "checkout", "atomic_write_text", "git_state", "cpu_model", "device_name", "now",
           "provenance"]

PROJECT_ROOT = Path(__file__).resolve().parents[2]
#: The distribution name in this project's ``pyproject.toml``: how :func:`checkout` recognises a checkout.
PROJECT_NAME = "locoprop-companion"


def checkout(start: str | os.PathLike | None = None) -> Path:
    """The checkout of this project holding ``start`` (default: the current folder), else :data:`PROJECT_ROOT`.

    A checkout is the nearest folder, from ``start`` upwards, with a ``notebooks/`` folder and a
    ``pyproject.toml`` whose ``[project]`` name is :data:`PROJECT_NAME`.
    """
    try:
        here = Path(start if start is not None else os.getcwd()).resolve()
    except OSError:  # the current folder was removed
        return PROJECT_ROOT
    for folder in (here, *here.parents):
        if (folder / "notebooks").is_dir() and _project_name(folder / "pyproject.toml") == PROJECT_NAME:
            return folder
    return PROJECT_ROOT


def _project_name(path: Path) -> str | None:
    """The ``[project]`` name of a ``pyproject.toml`` (None if it has none or cannot be read)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    try:
        import tomllib
    except ImportError:  # Python 3.10: the one line that matters
        found = re.search(r'^\[project\][^\[]*?^name\s*=\s*"([^"]*)"', text, re.MULTILINE | re.DOTALL)
        return found.group(1) if found else None
    try:
        project = tomllib.loads(text).get("project", {})
    except tomllib.TOMLDecodeError:
        return None
    return project.get("name") if isinstance(project, dict) else None


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """Write ``path`` through a temporary file in the same folder and ``os.replace``.

    An ``OSError`` (a full disk, a folder that cannot be written) names ``path``.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        os.replace(tmp, path)
    except OSError as err:
        raise OSError(err.errno, err.strerror or str(err), str(path)) from err
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (plus a final newline) to ``path`` atomically."""
    atomic_write(path, lambda tmp: tmp.write_text(text.rstrip("\n") + "\n"))


def git_state() -> tuple[str, bool | None]:
    """(commit, dirty) of the project checkout, ("unknown", None) outside git."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10,
                              check=True).stdout

    try:
        commit = git("rev-parse", "HEAD").strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown", None
    try:
        dirty = bool(git("status", "--porcelain", "--untracked-files=no").strip())
    except (OSError, subprocess.SubprocessError):
        dirty = None
    return commit, dirty


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux), else what :mod:`platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model with the number of threads torch uses."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({cpu_model()}, {torch.get_num_threads()} threads)"


def now() -> str:
    """The current UTC time, ISO 8601, to the second."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def provenance(device: torch.device | str) -> dict[str, Any]:
    """Git commit and dirty flag, package versions, device (CPU model, torch threads), platform, start time."""
    from .. import __version__

    device = torch.device(device)
    commit, dirty = git_state()
    return {
        "git_commit": commit,
        "git_dirty": dirty,
        "versions": {"python": platform.python_version(), "torch": str(torch.__version__),
                     "numpy": str(np.__version__), "locoprop": str(__version__)},
        "device": str(device),
        "device_name": device_name(device),
        "cpu": cpu_model(),
        "threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "started": now(),
    }
