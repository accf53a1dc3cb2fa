"""A private single-node SLURM cluster for the tests: Debian's slurmctld, slurmd and munge.

:func:`start` (as root) installs the packages with apt if they are missing, writes a ``slurm.conf``
into a folder of its own (the node is this machine with its CPUs, ``ProctrackType=proctrack/linuxproc``,
``TaskPlugin=task/none``, no accounting), starts a munged on a socket of its own and both SLURM
daemons on free ports, and waits until the node is idle.  Nothing under ``/etc`` is changed and a
cluster already on the machine is left alone: the clients find this one through ``SLURM_CONF``
(:attr:`Cluster.env`).  :meth:`Cluster.stop` cancels its jobs and stops the daemons by their pids.

:exc:`Unavailable` says why a cluster cannot be had here (not root, no apt, the packages would not
install); any other failure to start raises :exc:`RuntimeError` with the daemons' logs.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
DAEMONS = {"munged": "/usr/sbin/munged", "slurmctld": "/usr/sbin/slurmctld", "slurmd": "/usr/sbin/slurmd"}
START_TIMEOUT_S = 60


class Unavailable(Exception):
    """SLURM cannot be installed or started on this machine (the message says why)."""


@dataclass
class Cluster:
    """A running cluster: its folder, the environment its clients need, the pids of its daemons."""

    folder: Path
    env: dict[str, str]
    pids: dict[str, int] = field(default_factory=dict)

    def command(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """A SLURM client command (``squeue``, ``scancel`` ...) run against this cluster."""
        return subprocess.run(list(args), env={**os.environ, **self.env}, capture_output=True, text=True,
                              check=check, timeout=60)

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n" + p.read_text(errors="replace")[-2000:]
                         for p in sorted(self.folder.glob("*.log")))

    def stop(self) -> None:
        """Cancel every job of the cluster, then stop slurmd, slurmctld and munged (by pid) and wait for them."""
        if "slurmctld" in self.pids:
            self.command("scancel", "--full", "--user", str(os.getuid()), check=False)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and self.command("squeue", "--noheader", check=False).stdout.strip():
                time.sleep(0.5)
        for name in ("slurmd", "slurmctld", "munged"):
            pid = self.pids.pop(name, None)
            if pid is None:
                continue
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and _alive(pid):
                time.sleep(0.2)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (ended, not yet reaped by its parent) is gone too
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][:1] != "Z"
    except OSError:
        return False


def install() -> None:
    """Install :data:`PACKAGES` with apt unless the daemons are there (:exc:`Unavailable` if that cannot be done)."""
    if all(Path(p).exists() for p in DAEMONS.values()) and shutil.which("sbatch"):
        return
    if os.geteuid() != 0:
        raise Unavailable(f"SLURM is not installed and installing it ({', '.join(PACKAGES)}) needs root")
    if shutil.which("apt-get") is None:
        raise Unavailable(f"SLURM is not installed and there is no apt-get to install {', '.join(PACKAGES)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    command = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *PACKAGES]
    if subprocess.run(command, env=env, capture_output=True).returncode != 0:
        update = subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, text=True)
        proc = subprocess.run(command, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise Unavailable(f"apt-get could not install {', '.join(PACKAGES)}: "
                              f"{(proc.stderr or update.stderr).strip().splitlines()[-1:]}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _memory_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    return 1024


def write_config(folder: Path) -> Path:
    """``slurm.conf`` of a one-node cluster on this machine (all its CPUs, 90 % of its memory), everything under ``folder``."""
    host = socket.gethostname().split(".")[0]
    for sub in ("state", "spool"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    conf = folder / "slurm.conf"
    conf.write_text("\n".join([
        "ClusterName=locoprop-test",
        f"SlurmctldHost={host}(127.0.0.1)",
        f"SlurmctldPort={_free_port()}",
        f"SlurmdPort={_free_port()}",
        "SlurmUser=root",
        "SlurmdUser=root",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        f"AuthInfo=socket={folder / 'munge.socket'}",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "SchedulerType=sched/backfill",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core",
        f"StateSaveLocation={folder / 'state'}",
        f"SlurmdSpoolDir={folder / 'spool'}",
        f"SlurmctldPidFile={folder / 'slurmctld.pid'}",
        f"SlurmdPidFile={folder / 'slurmd.pid'}",
        "ReturnToService=2",
        "MpiDefault=none",
        "JobAcctGatherType=jobacct_gather/none",
        "KillWait=5",
        "MinJobAge=30",
        f"NodeName={host} NodeAddr=127.0.0.1 CPUs={os.cpu_count() or 1} RealMemory={int(_memory_mb() * 0.9)} State=UNKNOWN",
        f"PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP",
        "",
    ]))
    return conf


def start(folder: Path) -> Cluster:
    """Install if needed, configure and start the cluster under ``folder``; return it once its node is idle."""
    if os.geteuid() != 0:
        raise Unavailable("starting SLURM's daemons (slurmctld, slurmd, munged) needs root")
    install()
    folder.mkdir(parents=True, exist_ok=True)
    conf = write_config(folder)
    key = folder / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    cluster = Cluster(folder, {"SLURM_CONF": str(conf)})
    try:
        subprocess.run([DAEMONS["munged"], f"--socket={folder / 'munge.socket'}", f"--key-file={key}",
                        f"--pid-file={folder / 'munged.pid'}", f"--log-file={folder / 'munged.log'}",
                        f"--seed-file={folder / 'munged.seed'}", "--force"], check=True, capture_output=True, timeout=30)
        cluster.pids["munged"] = _read_pid(folder / "munged.pid")
        subprocess.run([DAEMONS["slurmctld"], "-f", str(conf), "-L", str(folder / "slurmctld.log")],
                       check=True, capture_output=True, timeout=30)
        cluster.pids["slurmctld"] = _read_pid(folder / "slurmctld.pid")
        subprocess.run([DAEMONS["slurmd"], "-f", str(conf), "-L", str(folder / "slurmd.log")],
                       check=True, capture_output=True, timeout=30)
        cluster.pids["slurmd"] = _read_pid(folder / "slurmd.pid")
        deadline = time.monotonic() + START_TIMEOUT_S
        state = ""
        while time.monotonic() < deadline:
            state = cluster.command("sinfo", "--noheader", "--format=%t", check=False).stdout.strip()
            if state == "idle":
                return cluster
            time.sleep(0.5)
        raise RuntimeError(f"the SLURM node is {state or 'not reported'} after {START_TIMEOUT_S} s, not idle")
    except BaseException as err:
        logs = cluster.logs()
        cluster.stop()
        if isinstance(err, subprocess.CalledProcessError):
            raise RuntimeError(f"{err.cmd[0]} did not start: {err.stderr.decode(errors='replace').strip()}\n{logs}") from None
        if isinstance(err, RuntimeError):
            raise RuntimeError(f"{err}\n{logs}") from None
        raise


def _read_pid(path: Path) -> int:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            return int(path.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            time.sleep(0.1)
    raise RuntimeError(f"no pid in {path}")
