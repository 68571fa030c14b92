"""The machine, the sandbox the benchmark works in, and how it runs things in it."""

from __future__ import annotations

import contextlib
import os
import platform
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
#: the product's CLIs, installed beside the interpreter running the benchmark
BIN = Path(sys.executable).parent
SERVICE_USER = "postgres"  # the unprivileged user servers run as when we are root
OUR_VARIABLES = ("CLAUDE_", "DATABASE_URL", "DB_", "PG")


class CommandError(RuntimeError):
    pass


def run(argv: Sequence[str], *, env: Mapping[str, str] | None = None, cwd: Path | None = None,
        input: bytes | None = None, user: str | None = None, timeout: float = 600,
        check: bool = True) -> subprocess.CompletedProcess[bytes]:
    """Run a command to completion, capturing output; raise with its stderr if it fails."""
    proc = subprocess.run(
        list(argv), env=dict(env) if env is not None else None, cwd=cwd, input=input,
        stdin=None if input is not None else subprocess.DEVNULL, capture_output=True,
        timeout=timeout, **as_user(user),
    )
    if check and proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).decode(errors="replace").strip().splitlines()[-3:]
        raise CommandError(f"{' '.join(argv[:3])}... exited {proc.returncode}: {' | '.join(tail)}")
    return proc


def as_user(name: str | None) -> dict[str, Any]:
    """``subprocess`` arguments that run a child as ``name`` (nothing when we already are)."""
    if name is None:
        return {}
    entry = pwd.getpwnam(name)
    if entry.pw_uid == os.geteuid():
        return {}
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def service_user() -> str | None:
    """Who raw baselines run servers as: the product's service user when we are root."""
    return SERVICE_USER if os.geteuid() == 0 else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Workspace:
    """A private directory tree for one benchmark run: product state, raw clusters, files.

    Everything the run starts is found again through this root at the end, so nothing
    outlives the run even when a case fails half-way.
    """

    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root or tempfile.mkdtemp(prefix="claude-db-bench-"))
        self.root.mkdir(parents=True, exist_ok=True)
        _traversable(self.root)
        self.state = self.dir("state")
        self._counter = 0

    def dir(self, name: str, owner: str | None = None) -> Path:
        path = self.root / name
        path.mkdir(parents=True, exist_ok=True)
        os.chmod(path, 0o711)  # servers run as an unprivileged user and must reach their files
        if owner and os.geteuid() == 0:
            entry = pwd.getpwnam(owner)
            os.chown(path, entry.pw_uid, entry.pw_gid)
        return path

    def unique(self, prefix: str) -> str:
        self._counter += 1
        return f"{prefix}{self._counter}"

    def product_env(self, **extra: str) -> dict[str, str]:
        """The environment of the product's CLIs: ours, minus any session, plus our state."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(OUR_VARIABLES)}
        env["CLAUDE_DB_STATE_DIR"] = str(self.state)
        env.update(extra)
        return env

    def cli(self, program: str, *args: str, cwd: Path | None = None, check: bool = True,
            env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
        """Run ``claude-db``/``claude-session`` as a user does: a real process."""
        return run([str(BIN / program), *args], env=env or self.product_env(),
                   cwd=cwd or self.root, check=check)

    def cleanup(self) -> list[str]:
        """Delete every session, stop every server started under the root, remove it."""
        notes = []
        sessions = self.state / "sessions"
        if sessions.is_dir():
            for path in sorted(sessions.iterdir()):
                if (path / "session.json").exists():
                    proc = self.cli("claude-session", "delete", "--yes", path.name, check=False)
                    if proc.returncode != 0:
                        notes.append(f"could not delete session {path.name}: "
                                     f"{proc.stderr.decode(errors='replace').strip()}")
        leftovers = processes_under(self.root)
        for pid in leftovers:  # SIGINT: a server's fast shutdown, an ordinary program's end
            notes.append(f"stopped leftover process {pid}")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGINT)
        deadline = time.monotonic() + 10
        while leftovers and time.monotonic() < deadline:
            leftovers = [p for p in leftovers if Path(f"/proc/{p}").exists() and not _zombie(p)]
            time.sleep(0.05)
        for pid in leftovers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.root, ignore_errors=True)
        return notes


def _zombie(pid: int) -> bool:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


def _traversable(path: Path) -> None:
    """Let the service user reach ``path``: add search permission on our own parents."""
    os.chmod(path, 0o711)
    for parent in path.parents:
        with contextlib.suppress(OSError):
            ours = parent.stat().st_uid == os.geteuid()
            if ours and str(parent).startswith(tempfile.gettempdir()):
                os.chmod(parent, parent.stat().st_mode | 0o111)


def processes_under(root: Path) -> list[int]:
    """Pids whose command line mentions ``root`` (servers and tools we started there)."""
    mark = str(root).encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if mark in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
    return found


# -- processes and memory ---------------------------------------------------------------


def parent_pid(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


def process_identity(pid: int) -> dict[str, Any]:
    """Who runs ``pid`` and from which binary (to check both sides used the same)."""
    status = Path(f"/proc/{pid}/status").read_text()
    uid = int(re.search(r"^Uid:\s+(\d+)", status, re.M).group(1))  # type: ignore[union-attr]
    return {"exe": os.readlink(f"/proc/{pid}/exe"), "user": pwd.getpwuid(uid).pw_name}


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                if parent_pid(int(entry.name)) == pid:
                    found.append(int(entry.name))
    return found


def tree_memory(pid: int) -> dict[str, int]:
    """PSS and RSS (KiB) of a server and its child processes, from /proc."""
    pids = [pid, *children(pid)]
    pss = rss = 0
    for p in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                key, _, value = line.partition(":")
                if key == "Pss":
                    pss += int(value.split()[0])
                elif key == "Rss":
                    rss += int(value.split()[0])
    return {"pss_kib": pss, "rss_kib": rss, "processes": len(pids)}


def postmaster_of(datadir: Path) -> int:
    """The postmaster pid from a data directory's postmaster.pid."""
    return int((datadir / "postmaster.pid").read_text().split()[0])


# -- the machine ----------------------------------------------------------------------


def machine() -> dict[str, Any]:
    return {
        "cpu": _lscpu("Model name") or platform.processor(),
        "cores": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "kernel": platform.release(),
        "os": _os_name(),
        "python": platform.python_version(),
        "hypervisor": _lscpu("Hypervisor vendor"),
        "load_average": list(os.getloadavg()),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _lscpu(field: str) -> str | None:
    if not shutil.which("lscpu"):
        return None
    out = subprocess.run(["lscpu"], capture_output=True, text=True, env={"LC_ALL": "C"}).stdout
    match = re.search(rf"^{re.escape(field)}:\s+(.+)$", out, re.M)
    return match.group(1).strip() if match else None


def _os_name() -> str:
    with contextlib.suppress(OSError):
        text = Path("/etc/os-release").read_text()
        match = re.search(r'^PRETTY_NAME="?([^"\n]+)', text, re.M)
        if match:
            return match.group(1)
    return platform.system()
