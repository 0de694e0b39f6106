"""A real single-node Slurm cluster for the tests: Debian's slurm-wlm, started without systemd.

`SlurmCluster(root)` writes a slurm.conf under root (AuthType=auth/none, CPUs=2, free ports, all state
in root), starts slurmctld and slurmd directly, waits until the node is idle, and `stop()` kills exactly
the daemons it started, by the PIDs they wrote. Client commands find it through `env["SLURM_CONF"]`.

`python -m tests.slurm_cluster [ROOT]` starts one by hand and prints the SLURM_CONF to export; Ctrl-C
stops it. `ensure_installed()` installs slurm-wlm with apt-get when it is missing, this is root and
BMCA_INSTALL_SLURM=1 (or BMCA_REQUIRE_SLURM=1) asks for it; otherwise the tests skip, saying so.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

INSTALL_OPT_IN = ("BMCA_INSTALL_SLURM", "BMCA_REQUIRE_SLURM")  # either =1 lets ensure_installed run apt-get
DAEMONS = ("slurmctld", "slurmd")
CLIENTS = ("sbatch", "srun", "squeue", "scontrol", "scancel", "sacct", "sinfo")
NODE = socket.gethostname()  # node name = host name, as on real clusters: scripts resolve it
PARTITION = "debug"
GPUS = 2  # a GPU count without devices: the scripts' GPU arithmetic runs, torch still sees no CUDA


class SlurmUnavailable(RuntimeError):
    """Slurm is not installed and cannot be here; the message says why (the tests skip with it)."""


def _installed() -> bool:
    return all(shutil.which(name) or Path("/usr/sbin", name).exists() for name in DAEMONS + CLIENTS)


def install_refusal(env: Mapping[str, str] | None = None) -> str | None:
    """Why slurm-wlm may not be installed here, or None when it may. Installing is opt-in
    (BMCA_INSTALL_SLURM=1, or BMCA_REQUIRE_SLURM=1 as .ci/run sets): `make test` promises no network, and
    an apt-get install as root would change the machine behind the user's back. It needs apt-get and root."""
    env = os.environ if env is None else env
    if not any(env.get(name) == "1" for name in INSTALL_OPT_IN):
        return "Slurm is not installed; BMCA_INSTALL_SLURM=1 lets the tests install Debian's slurm-wlm (apt-get, root)"
    if not shutil.which("apt-get"):
        return "Slurm is not installed and there is no apt-get to install slurm-wlm"
    if os.geteuid() != 0:
        return "Slurm is not installed; installing slurm-wlm needs root (apt-get)"
    return None


def ensure_installed() -> None:
    """Install Debian's slurm-wlm when a daemon or client is missing and install_refusal() allows it;
    SlurmUnavailable (with the reason) otherwise."""
    if _installed():
        return
    if reason := install_refusal():
        raise SlurmUnavailable(reason)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "slurm-wlm"]
    if subprocess.run(install, env=env, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True)
        result = subprocess.run(install, env=env, capture_output=True, text=True)
        if result.returncode != 0:
            raise SlurmUnavailable(f"apt-get install slurm-wlm failed: {result.stderr.strip()[-500:]}")
    if not _installed():
        raise SlurmUnavailable("slurm-wlm was installed but its daemons or clients are not on PATH")


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _daemon(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


class SlurmCluster:
    def __init__(self, root: str | Path, cpus: int = 2):
        self.root = Path(root).resolve()
        self.cpus = cpus
        self.conf = self.root / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self.pids: dict[str, int] = {}

    # -- configuration --------------------------------------------------------------------------------
    def _write_conf(self) -> None:
        for sub in ("state", "spool", "log"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        ctld_port, slurmd_port = _free_ports(2)
        host = socket.gethostname()
        user = os.environ.get("USER") or "root"
        lines = {
            "ClusterName": "bmca",
            "SlurmctldHost": f"{host}(127.0.0.1)",
            "SlurmctldPort": ctld_port,
            "SlurmdPort": slurmd_port,
            "AuthType": "auth/none",
            "CredType": "cred/none",
            "SlurmUser": user,
            "SlurmdUser": user,
            "StateSaveLocation": self.root / "state",
            "SlurmdSpoolDir": self.root / "spool",
            "SlurmctldPidFile": self.root / "slurmctld.pid",
            "SlurmdPidFile": self.root / "slurmd.pid",
            "SlurmctldLogFile": self.root / "log" / "slurmctld.log",
            "SlurmdLogFile": self.root / "log" / "slurmd.log",
            "ProctrackType": "proctrack/linuxproc",
            "TaskPlugin": "task/none",
            "SelectType": "select/cons_tres",
            "SelectTypeParameters": "CR_CPU",
            "SchedulerType": "sched/builtin",
            "MpiDefault": "none",
            "SwitchType": "switch/none",
            "JobAcctGatherType": "jobacct_gather/none",
            "AccountingStorageType": "accounting_storage/none",
            "JobCompType": "jobcomp/none",
            "ReturnToService": 2,
            "GresTypes": "gpu",
            "SlurmctldTimeout": 30,
            "SlurmdTimeout": 30,
            "InactiveLimit": 0,
            "KillWait": 10,
            "MinJobAge": 600,
            "MaxArraySize": 1001,
            "SlurmdDebug": "debug",
        }
        text = "".join(f"{key}={value}\n" for key, value in lines.items())
        text += (
            f"NodeName={NODE} NodeAddr=127.0.0.1 CPUs={self.cpus} "
            f"Gres=gpu:{GPUS} State=UNKNOWN\n"
            f"PartitionName={PARTITION} Nodes={NODE} Default=YES MaxTime=INFINITE State=UP\n"
        )
        self.conf.write_text(text)
        # Slurm drops a GPU without a device file; empty files stand in for /dev/nvidia0 ...
        devices = [self.root / "dev" / f"gpu{i}" for i in range(GPUS)]
        (self.root / "dev").mkdir(exist_ok=True)
        for device in devices:
            try:  # a character device like /dev/null, as Slurm expects; a plain file works with a warning
                os.mknod(device, stat.S_IFCHR | 0o666, os.makedev(1, 3))
            except (OSError, PermissionError):
                device.touch()
        (self.root / "gres.conf").write_text(
            "".join(f"NodeName={NODE} Name=gpu File={device}\n" for device in devices)
        )

    # -- life cycle -----------------------------------------------------------------------------------
    def start(self, timeout: float = 60) -> SlurmCluster:
        ensure_installed()
        self._write_conf()
        for name, args in (("slurmctld", ["-i"]), ("slurmd", ["-N", NODE])):
            log = open(self.root / "log" / f"{name}.out", "ab")
            subprocess.run(
                [_daemon(name), *args], env=self.env, stdout=log, stderr=subprocess.STDOUT, check=False
            )
            self.pids[name] = self._read_pid(name)
        try:
            self.wait_idle(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _read_pid(self, name: str, timeout: float = 15) -> int:
        path = self.root / f"{name}.pid"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if path.is_file() and path.read_text().strip():
                return int(path.read_text().split()[0])
            time.sleep(0.1)
        raise SlurmUnavailable(f"{name} did not start; its log:\n{self.log_tail(name)}")

    def wait_idle(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            state = self.run("sinfo", "-h", "-N", "-o", "%T", check=False).stdout.strip()
            if state == "idle":
                return
            time.sleep(0.3)
        raise SlurmUnavailable(
            f"node {NODE} is {state or 'unknown'}, not idle, after {timeout:.0f} s; "
            f"slurmctld log:\n{self.log_tail('slurmctld')}\nslurmd log:\n{self.log_tail('slurmd')}"
        )

    def stop(self) -> None:
        """Cancel every job of this cluster, then kill the daemons this object started (and only them):
        SIGTERM, then SIGKILL after 10 s."""
        if self.pids:
            self.run("scancel", "--partition", PARTITION, check=False)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and self.run("squeue", "-h", check=False).stdout.strip():
                time.sleep(0.3)
        for pid in reversed(list(self.pids.values())):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and _alive(pid):
                time.sleep(0.1)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        self.pids.clear()

    def __enter__(self) -> SlurmCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- clients --------------------------------------------------------------------------------------
    def run(self, *cmd: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run(list(cmd), env=self.env, capture_output=True, text=True, check=check, **kwargs)

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.root / "log" / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.is_file() else ""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie of ours counts as gone
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


if __name__ == "__main__":
    cluster = SlurmCluster(sys.argv[1] if len(sys.argv) > 1 else "/tmp/bmca-slurm").start()
    print(f"export SLURM_CONF={cluster.conf}   # daemons: {cluster.pids}; Ctrl-C stops them", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        signal.pause()
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        cluster.stop()
