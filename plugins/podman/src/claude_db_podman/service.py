"""Podman's Docker-compatible API service: where its socket is, whether it answers, starting it.

Rootful (as root) the socket is ``/run/podman/podman.sock``, rootless
``$XDG_RUNTIME_DIR/podman/podman.sock`` (what ``podman.socket`` units use);
``CLAUDE_DB_PODMAN_SOCKET`` names another. When nothing answers there and ``podman`` is
installed, claude-db starts ``podman system service --time=0 unix://SOCKET`` itself, in
its own session so that it outlives the command, and says so on stderr.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

from claude_db.errors import DockerUnavailableError
from claude_db.locks import hold
from claude_db.readiness import poll_until

SOCKET_ENV = "CLAUDE_DB_PODMAN_SOCKET"
ROOTFUL_SOCKET = Path("/run/podman/podman.sock")
PING_TIMEOUT = 2.0  # seconds: a service that answers at all answers a ping at once
START_TIMEOUT = 30.0  # seconds for a new service to answer (it migrates its store first)
LOG_NAME = "claude-db-podman-service.log"  # beside the socket: why a start failed


def rootless() -> bool:
    return os.geteuid() != 0


def socket_path() -> Path:
    if configured := os.environ.get(SOCKET_ENV):
        return Path(configured.removeprefix("unix://"))
    if not rootless():
        return ROOTFUL_SOCKET
    runtime_dir = os.environ.get("XDG_RUNTIME_DIR") or f"/run/user/{os.getuid()}"
    return Path(runtime_dir) / "podman" / "podman.sock"


def podman_cli() -> str | None:
    return shutil.which("podman")


def ping(path: Path) -> str | None:
    """``None`` if the API service answers at ``path``, else a short reason why not."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(PING_TIMEOUT)
            sock.connect(str(path))
            sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: podman\r\n\r\n")
            status = sock.recv(64).split(b"\r\n", 1)[0].decode(errors="replace")
    except FileNotFoundError:
        return "no such socket"
    except PermissionError:
        return "permission denied on its socket"
    except TimeoutError:
        return f"it does not answer ({PING_TIMEOUT:g} s)"
    except OSError as exc:
        return exc.strerror.lower() if exc.strerror else type(exc).__name__
    return None if " 200 " in f"{status} " else f"unexpected answer {status!r}"


def ensure_service(path: Path) -> None:
    """Make sure the API service answers at ``path``, starting it if need be."""
    if ping(path) is None:
        return
    cli = podman_cli()
    if cli is None:
        raise DockerUnavailableError(
            f"Podman's API service does not answer at unix://{path} ({ping(path)}) and "
            "podman is not installed here to start it"
        )
    path.parent.mkdir(mode=0o700 if rootless() else 0o755, parents=True, exist_ok=True)
    # one starter at a time: two services on one socket would take it from each other
    with hold(path.parent / ".claude-db-podman-service.lock", "Podman's API service to start"):
        if ping(path) is None:
            return  # another command started it meanwhile
        _start(cli, path)


def _start(cli: str, path: Path) -> None:
    log = path.parent / LOG_NAME
    argv = [cli, "system", "service", "--time=0", f"unix://{path}"]
    with open(log, "ab") as out:
        # it outlives this command, and its containers' conmon inherit its working
        # directory: "/" (a directory removed later broke every container it started:
        # "conmon: Failed to get working directory", "write child: broken pipe")
        service = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                   start_new_session=True, cwd="/")

    def answers() -> None:
        if reason := ping(path):
            raise ConnectionError(reason)

    def died() -> str | None:
        code = service.poll()
        return None if code is None else f"it exited with {code}: {_tail(log)}"

    poll_until(answers, timeout=START_TIMEOUT, failure=died,
               what=f"Podman's API service at unix://{path}")
    print(f"started Podman's API service (pid {service.pid}): {' '.join(argv[1:])}; "
          f"it keeps running for later commands (log: {log})", file=sys.stderr)


def _tail(log: Path) -> str:
    try:
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines()]
    except OSError:
        return "(no log)"
    return " | ".join([line for line in lines if line][-3:]) or "(empty log)"
