"""A one-node Slurm cluster on this machine for the cluster tests: `slurmctld` and `slurmd`
(Debian's `slurmctld`/`slurmd` packages, Slurm 22.05) started from a config in a temporary
dir, one partition `cpu` of this machine's cores, stopped on exit.

    with LocalSlurm(tmp_path) as slurm:      # sets SLURM_CONF for the commands it runs
        slurm.run("sinfo")

No munge (`auth/none`: every process is on this host) and no cgroups (`proctrack/pgid`, which
is what `scancel` signals: the job's process group). Accounting goes to a job-completion text
file (`jobcomp/filetxt`), since `sacct` needs a slurmdbd and a database; `completions()` reads
it. Daemons run as the current user; both log into the temporary dir.
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

DAEMONS = ("slurmctld", "slurmd")


def available() -> str | None:
    """Why a local cluster cannot start here (None: it can)."""
    missing = [d for d in (*DAEMONS, "sbatch", "squeue") if shutil.which(d) is None]
    if missing:
        return f"Slurm is not installed ({', '.join(missing)} missing): apt-get install " \
               "slurmctld slurmd slurm-client"
    return None


def memory_mb() -> int:
    """This machine's memory in MB, less 1 GB for the daemons (jobs ask for memory by it)."""
    kib = int(next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal:")))
    return kib // 1024 - 1024


class LocalSlurm:
    def __init__(self, root: Path, cpus: int | None = None):
        self.root = Path(root)
        self.cpus = cpus or os.cpu_count()
        self.host = socket.gethostname()
        self.conf = self.root / "slurm.conf"
        self.env = dict(os.environ, SLURM_CONF=str(self.conf))
        self.daemons: list[subprocess.Popen] = []

    def __enter__(self):
        for sub in ("state", "spool", "log"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        user = getpass.getuser()
        self.conf.write_text("\n".join([
            "ClusterName=crescent-local",
            f"SlurmctldHost={self.host}",
            f"SlurmUser={user}", f"SlurmdUser={user}",
            "AuthType=auth/none", "CredType=cred/none",
            "ProctrackType=proctrack/pgid", "TaskPlugin=task/none",
            "SelectType=select/cons_tres", "SelectTypeParameters=CR_CPU",
            "MpiDefault=none", "SwitchType=switch/none", "ReturnToService=2",
            "JobAcctGatherType=jobacct_gather/none", "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/filetxt", f"JobCompLoc={self.root / 'log' / 'jobcomp.txt'}",
            f"StateSaveLocation={self.root / 'state'}", f"SlurmdSpoolDir={self.root / 'spool'}",
            f"SlurmctldPidFile={self.root / 'slurmctld.pid'}",
            f"SlurmdPidFile={self.root / 'slurmd.pid'}",
            f"SlurmctldLogFile={self.root / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={self.root / 'log' / 'slurmd.log'}",
            "SlurmctldPort=16817", "SlurmdPort=16818",
            "KillWait=5", "InactiveLimit=0", "MinJobAge=300",
            f"NodeName={self.host} CPUs={self.cpus} RealMemory={memory_mb()} State=UNKNOWN",
            f"PartitionName=cpu Nodes={self.host} Default=YES MaxTime=INFINITE State=UP",
        ]) + "\n")
        try:
            for daemon in DAEMONS:  # -D: in the foreground, so that we own the process
                self.daemons.append(subprocess.Popen(
                    [daemon, "-D", "-f", str(self.conf)], env=self.env,
                    stdout=subprocess.DEVNULL, stderr=open(self.root / "log" / f"{daemon}.err", "w")))
            self._wait_idle()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _wait_idle(self, timeout: float = 60) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            state = self.run("sinfo", "-h", "-o", "%T", check=False).stdout.strip()
            if state == "idle":
                return
            time.sleep(1)
        logs = "".join((self.root / "log" / f"{d}.log").read_text()[-1500:]
                       for d in DAEMONS if (self.root / "log" / f"{d}.log").exists())
        raise RuntimeError(f"the local Slurm node is not idle after {timeout:.0f} s:\n{logs}")

    def run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(cmd, env=self.env, capture_output=True, text=True, check=check,
                              timeout=60)

    def completions(self) -> list[dict]:
        """The job-completion records (JobId=... JobState=... one line each) as dicts."""
        path = self.root / "log" / "jobcomp.txt"
        if not path.exists():
            return []
        return [dict(field.split("=", 1) for field in line.split() if "=" in field)
                for line in path.read_text().splitlines()]

    def __exit__(self, *exc) -> None:
        if self.daemons:
            self.run("scancel", "--user", getpass.getuser(), check=False)
        for process in reversed(self.daemons):
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
        self.daemons = []
