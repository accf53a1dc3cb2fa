r"""Checkpoints and locks of a run under way.

``checkpoints/<run_id>.pt`` (under the results folder of the run's profile) holds the run's whole
state after its last epoch: model, optimizer, scheduler, random generators, records, provenance.  It
is written atomically after every epoch and removed once the run has finished; running the same
configuration again resumes from it and gives the same records as an uninterrupted run.  It is
loaded as data only (``weights_only=True``) and only if it matches the SHA-256 in
``checkpoints/<run_id>.pt.sha256``.

``checkpoints/<run_id>.lock`` (holding ``host pid``) is held while a run trains, so that two
processes never train the same run.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import os
import socket
from pathlib import Path
from typing import Any

import torch

from .config import RunConfig, RunConflictError
from .provenance import atomic_write

__all__ = ["load_checkpoint", "remove_checkpoint", "run_lock", "save_checkpoint"]


@contextlib.contextmanager
def run_lock(path: Path):
    """Hold ``path`` (created exclusively, holding ``host pid``) while a run trains.

    A lock left by a process that no longer runs on this host is taken over; a live one raises
    :class:`RunConflictError` naming the process, so two identical runs never train twice.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    me = f"{socket.gethostname()} {os.getpid()}"
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                host, pid = path.read_text().split()
                alive = host != socket.gethostname() or _process_alive(int(pid))
            except (OSError, ValueError):  # unreadable or half-written: another process is starting
                host, pid, alive = "?", "?", True
            if alive:
                raise RunConflictError(
                    f"{path.stem} is being trained by process {pid} on {host} (lock file {path}); wait for "
                    f"it to finish, or delete the lock file if that process is gone") from None
            path.unlink(missing_ok=True)  # stale: its process has ended
            continue
        with os.fdopen(fd, "w") as handle:
            handle.write(me + "\n")
        break
    try:
        yield
    finally:
        path.unlink(missing_ok=True)

def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

def save_checkpoint(path, cfg, model, opt, scheduler, shuffle, device, epoch, records, provenance) -> None:
    """The run's state after ``epoch``, atomically, with the SHA-256 of its bytes in ``<path>.sha256``."""
    state = {
        "identity": cfg.identity(),
        "epoch": epoch,
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": {"shuffle": shuffle.get_state(), "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None},
        "records": records,
        "provenance": provenance,
    }
    buffer = io.BytesIO()
    torch.save(state, buffer)
    blob = buffer.getvalue()
    atomic_write(_digest_path(path), lambda tmp: tmp.write_text(hashlib.sha256(blob).hexdigest() + "\n"))
    atomic_write(path, lambda tmp: tmp.write_bytes(blob))

def _digest_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")

def load_checkpoint(path: Path, cfg: RunConfig) -> dict[str, Any] | None:
    """The checkpoint's state, checked against its SHA-256 and loaded as data only (no code runs)."""
    if not path.exists():
        return None
    advice = "it was kept; move it (and its .sha256) away to start the run afresh"
    try:
        blob = path.read_bytes()
        expected = _digest_path(path).read_text().strip()
    except OSError as err:
        raise RunConflictError(f"cannot read the checkpoint {path} or its SHA-256 ({err}); {advice}") from None
    if hashlib.sha256(blob).hexdigest() != expected:
        raise RunConflictError(f"the checkpoint {path} does not match its SHA-256 (damaged or partly written); {advice}")
    try:
        state = torch.load(io.BytesIO(blob), map_location=cfg.device, weights_only=True)
    except Exception as err:
        raise RunConflictError(f"cannot read the checkpoint {path} ({err}); {advice}") from None
    if state.get("identity") != cfg.identity():
        raise RunConflictError(f"the checkpoint {path} belongs to a different configuration; move it away to run this one")
    state["rng"]["shuffle"] = state["rng"]["shuffle"].cpu()
    state["rng"]["torch"] = state["rng"]["torch"].cpu()
    if state["rng"].get("cuda") is not None:
        state["rng"]["cuda"] = state["rng"]["cuda"].cpu()
    return state


def remove_checkpoint(path: Path) -> None:
    """Delete the checkpoint ``path`` and its SHA-256 (a finished run's)."""
    path.unlink(missing_ok=True)
    _digest_path(path).unlink(missing_ok=True)
