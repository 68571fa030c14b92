"""Helpers for the docker runtime's tests (real Docker, locally built images)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

DB_IMAGE = "claude-db-test/postgres:15"
SESSION_IMAGE = "claude-db-test/session:latest"
SETUP_HINT = "run ./dev test, or bash tests/images/build.sh (starts dockerd, builds the images)"


def docker(*args: str, check: bool = True, input: str | None = None,
           env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the docker CLI against the test daemon (the default socket)."""
    import os

    environment = {k: v for k, v in os.environ.items() if k != "DOCKER_HOST"}
    proc = subprocess.run(
        ["docker", *args], capture_output=True, text=True, input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
        env={**environment, **(env or {})}, timeout=180,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} failed ({proc.returncode}): {proc.stderr}")
    return proc


def inspect(name: str) -> Any:
    """``docker inspect``'s data of one object."""
    return json.loads(docker("inspect", name).stdout)[0]


def resources(name: str) -> dict[str, list[str]]:
    """Everything Docker holds for session ``name``: by label and by the names we give."""
    label = f"label=claude-db.session={name}"
    found = {
        "containers": docker("ps", "-a", "--filter", label, "--format", "{{.Names}}").stdout,
        "networks": docker("network", "ls", "--filter", label, "--format", "{{.Name}}").stdout,
        "volumes": docker("volume", "ls", "--filter", label, "--format", "{{.Name}}").stdout,
    }
    result = {kind: sorted(text.split()) for kind, text in found.items()}
    for kind, candidates in (("containers", [name, f"{name}-db"]),
                             ("networks", [f"{name}-net"]), ("volumes", [f"{name}-data"])):
        singular = kind[:-1]
        for candidate in candidates:
            if docker(singular, "inspect", candidate, check=False).returncode == 0:
                result[kind] = sorted({*result[kind], candidate})
    return result


NOTHING: dict[str, list[str]] = {"containers": [], "networks": [], "volumes": []}


def remove_everything(name: str) -> None:
    """Best-effort teardown of whatever a failed test left of session ``name``."""
    for label in (f"claude-db.session={name}", f"claude-db.kept-from={name}"):
        where = ("--filter", f"label={label}")
        if ids := docker("ps", "-aq", *where, check=False).stdout.split():
            docker("rm", "-f", "-v", *ids, check=False)
        if nets := docker("network", "ls", "-q", *where, check=False).stdout.split():
            docker("network", "rm", *nets, check=False)
        if vols := docker("volume", "ls", "-q", *where, check=False).stdout.split():
            docker("volume", "rm", "-f", *vols, check=False)


def session_workdir(tmp_path: Path, label: str) -> Path:
    path = tmp_path / label
    path.mkdir()
    return path


def read_dotenv(workdir: Path) -> dict[str, str]:
    from dotenv import dotenv_values

    return {k: v or "" for k, v in dotenv_values(workdir / ".env").items()}


def run_on_terminal(argv: list[str], *, cwd: Path, wait_for: bytes = b"",
                    lines: tuple[str, ...] = (), timeout: float = 180) -> tuple[int, str]:
    """Run ``argv`` with a pseudo-terminal as stdin, stdout and stderr, as a person would.

    Once the output shows ``wait_for``, ``lines`` are typed. Returns the exit code and
    everything the terminal showed (``\\r`` removed).
    """
    import os
    import pty
    import select
    import time

    master, slave = pty.openpty()
    proc = subprocess.Popen(argv, cwd=cwd, stdin=slave, stdout=slave, stderr=slave,
                            start_new_session=True)
    os.close(slave)
    shown, typed = b"", False
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if not typed and wait_for in shown:
                os.write(master, "".join(f"{line}\n" for line in lines).encode())
                typed = True
            ready, _, _ = select.select([master], [], [], 0.1)
            if not ready:
                continue
            try:
                data = os.read(master, 4096)
            except OSError:  # EIO: every process let go of the terminal
                break
            if not data:
                break
            shown += data
        code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    return code, shown.decode(errors="replace").replace("\r", "")
