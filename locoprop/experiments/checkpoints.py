r"""Checkpoints and locks of a run under way.

``checkpoints/<run_id>.pt`` (under the results folder of the run's profile) holds the run's whole
state after its last epoch: model, optimizer, scheduler, random generators, records, provenance.  It
is written atomically after every epoch and removed once the run has finished; running the same
configuration again resumes from it and gives the same records as an uninterrupted run.  Its first
line, ``LOCOPROP-CHECKPOINT sha256=<hex>``, holds the SHA-256 of the ``torch.save`` bytes that
follow, so that data and digest are replaced together by one atomic rename: a write that fails (a
full disk) leaves the previous checkpoint whole.  It is loaded as data only (``weights_only=True``)
and only if it matches that SHA-256.  A checkpoint of the earlier format (the bytes alone, their
SHA-256 in ``checkpoints/<run_id>.pt.sha256``) is still loaded.

``checkpoints/<run_id>.lock`` is held while a run trains, so that two processes never train the
same run: its holder has an exclusive ``flock`` on it (released by the kernel when the process ends,
however it ends) and writes ``host pid`` into it for people to read.  A lock file whose ``flock`` is
free is stale unless it names a live process of this host or another host (a holder that does not
``flock``); an empty or unreadable one (its writer ran out of disk, or died) is stale.

SIGINT and SIGTERM (Ctrl-C, ``scancel``) that arrive while a checkpoint is written are delivered
once it is written, so that an interrupted run never leaves a checkpoint that does not match its
SHA-256.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import os
import signal
import socket
import threading
import warnings
from pathlib import Path
from typing import Any

import torch

from .config import RunConfig, RunConflictError
from .provenance import atomic_write

__all__ = ["load_checkpoint", "remove_checkpoint", "run_lock", "save_checkpoint"]


@contextlib.contextmanager
def run_lock(path: Path):
    """Hold ``path`` (an exclusive ``flock``, and ``host pid`` written into it) while a run trains.

    A lock held by another process raises :class:`RunConflictError` naming the process, so two
    identical runs never train twice; a stale one (see the module docstring) is taken over.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # held: the holder may not have written its name yet
            owner = _owner(fd)
            os.close(fd)
            who = f"process {owner[1]} on {owner[0]}" if owner else "another process (starting)"
            raise RunConflictError(f"{path.stem} is being trained by {who} (lock file {path}); wait for it "
                                   f"to finish") from None
        try:
            current = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            current = False
        if current:
            break
        os.close(fd)  # its holder removed it as this process waited: take the new one
    try:
        owner = _owner(fd)
        if owner is not None and (owner[0] != socket.gethostname() or _process_alive(owner[1])):
            raise RunConflictError(
                f"{path.stem} is being trained by process {owner[1]} on {owner[0]} (lock file {path}); wait for "
                f"it to finish, or delete the lock file if that process is gone")
        try:  # the lock is this process's now (a stale one is overwritten in place)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{socket.gethostname()} {os.getpid()}\n".encode(), 0)
        except OSError as err:
            path.unlink(missing_ok=True)
            raise OSError(err.errno, err.strerror or str(err), str(path)) from err
    except BaseException:
        os.close(fd)
        raise
    try:
        yield
    finally:
        path.unlink(missing_ok=True)  # before letting go, so that a waiting process sees it gone
        os.close(fd)

def _owner(fd: int) -> tuple[str, int] | None:
    """``(host, pid)`` written in the lock file ``fd``, or None if it is empty or unreadable."""
    try:
        host, pid = os.pread(fd, 512, 0).decode("ascii").split()
        return host, int(pid)
    except (OSError, UnicodeDecodeError, ValueError):
        return None

def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

@contextlib.contextmanager
def _signals_deferred(signums=(signal.SIGINT, signal.SIGTERM)):
    """Hold back ``signums`` while the block runs (in the main thread, where Python handles signals), then deliver them."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = {s: signal.signal(s, lambda signum, frame: received.append(signum)) for s in signums}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, signal.SIG_DFL if handler is None else handler)
        for s in dict.fromkeys(received):
            signal.raise_signal(s)

def save_checkpoint(path, cfg, model, opt, scheduler, shuffle, device, epoch, records, provenance) -> None:
    """The run's state after ``epoch``, atomically, in one file headed by the SHA-256 of its bytes."""
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
    header = MAGIC + b"sha256=" + hashlib.sha256(blob).hexdigest().encode() + b"\n"
    with _signals_deferred():
        atomic_write(path, lambda tmp: tmp.write_bytes(header + blob))
        _digest_path(path).unlink(missing_ok=True)  # of the earlier format, if the run started with it

#: How a checkpoint file starts: ``MAGIC``, ``sha256=<64 hex digits>``, a newline, then the ``torch.save`` bytes.
MAGIC = b"LOCOPROP-CHECKPOINT "
_HEADER = len(MAGIC) + len(b"sha256=") + 64 + 1

def _digest_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")

def _contents(path: Path, advice: str) -> tuple[bytes, str]:
    """``(torch.save bytes, their expected SHA-256)`` of the checkpoint ``path``, in either format."""
    try:
        data = path.read_bytes()
        if data.startswith(MAGIC):
            header = data[:_HEADER]
            if not (header.startswith(MAGIC + b"sha256=") and header.endswith(b"\n")):
                raise RunConflictError(f"the checkpoint {path} has a damaged header; {advice}")
            return data[_HEADER:], header[len(MAGIC) + 7:-1].decode("ascii", "replace")
        return data, _digest_path(path).read_text().strip()  # the earlier format
    except OSError as err:
        raise RunConflictError(f"cannot read the checkpoint {path} or its SHA-256 ({err.strerror or err}: "
                               f"{err.filename}); {advice}") from None

def load_checkpoint(path: Path, cfg: RunConfig) -> dict[str, Any] | None:
    """The checkpoint's state, checked against its SHA-256 and loaded as data only (no code runs)."""
    if not path.exists():
        return None
    advice = "it was kept; move it (and any .sha256 beside it) away to start the run afresh"
    blob, expected = _contents(path, advice)
    if hashlib.sha256(blob).hexdigest() != expected:
        raise RunConflictError(f"the checkpoint {path} does not match its SHA-256 (damaged or partly written); {advice}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's remarks on the pickle protocol of a foreign file
            state = torch.load(io.BytesIO(blob), map_location=cfg.device, weights_only=True)
        if not isinstance(state, dict) or not {"identity", "rng", "records"} <= state.keys():
            raise ValueError("not a checkpoint of a run")
    except Exception as err:  # what torch refuses to unpickle as data is never loaded another way
        raise RunConflictError(f"cannot read the checkpoint {path}: it holds something other than a run's tensors "
                               f"and plain data ({type(err).__name__}), which is never loaded; {advice}") from None
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
